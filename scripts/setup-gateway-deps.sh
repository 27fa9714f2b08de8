#!/usr/bin/env bash
# Install the real components the gateway drill runs against, pinned:
#   - the official openai Python package, in a venv at build/venv-gateway
#   - AWS's amazon-ec2-metadata-mock, built with `go install` through the Go
#     module proxy into build/tools/bin
# Called by scripts/setup-deps.sh; safe to run again (nothing is fetched
# when the pinned versions are already there).
#
#   bash scripts/setup-gateway-deps.sh
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OPENAI_VERSION=1.59.9
AEMM_MODULE=github.com/aws/amazon-ec2-metadata-mock
AEMM_VERSION=v1.13.0

venv="$root/build/venv-gateway"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
have=$("$venv/bin/python" -c 'import openai; print(openai.__version__)' 2>/dev/null || true)
if [[ "$have" != "$OPENAI_VERSION" ]]; then
  echo "setup-gateway-deps: installing openai==$OPENAI_VERSION into $venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "openai==$OPENAI_VERSION"
fi

if ! command -v go >/dev/null 2>&1; then
  echo "setup-gateway-deps: no go toolchain (setup-deps.sh installs golang-go)" >&2
  exit 1
fi
bin="$root/build/tools/bin"
mock="$bin/ec2-metadata-mock"
stamp="$bin/.ec2-metadata-mock.version"
if [[ ! -x "$mock" || "$(cat "$stamp" 2>/dev/null)" != "$AEMM_VERSION" ]]; then
  echo "setup-gateway-deps: go install $AEMM_MODULE/cmd/ec2-metadata-mock@$AEMM_VERSION"
  mkdir -p "$bin"
  GOBIN="$bin" GOFLAGS=-buildvcs=false go install "$AEMM_MODULE/cmd/ec2-metadata-mock@$AEMM_VERSION"
  echo "$AEMM_VERSION" >"$stamp"
fi
echo "setup-gateway-deps: openai $OPENAI_VERSION, ec2-metadata-mock $AEMM_VERSION ready"
