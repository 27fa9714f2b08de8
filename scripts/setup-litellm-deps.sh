#!/usr/bin/env bash
# Install what the litellm stage runs, pinned: the litellm package (the
# version the spotinfer[litellm] extra pins, every dependency pinned by
# tests/litellm/constraints.txt), what its proxy needs
# (tests/litellm/proxy-requirements.txt), pytest and prometheus_client, in a venv at
# build/venv-litellm, with uv (pinned, from PyPI). Safe to run again:
# nothing is installed when the venv already holds exactly these pins.
#
#   bash scripts/setup-litellm-deps.sh [VENV]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${1:-$root/build/venv-litellm}
constraints="$root/tests/litellm/constraints.txt"
proxy_reqs="$root/tests/litellm/proxy-requirements.txt"
LITELLM_VERSION=$(sed -n 's/^litellm==//p' "$constraints")
TOOLS=(pytest==8.3.4 prometheus_client==0.21.1)
UV_VERSION=0.13.8

extra=$(grep -o '"litellm==[^"]*"' "$root/bindings/python/pyproject.toml" | tr -d '"')
if [[ "$extra" != "litellm==$LITELLM_VERSION" ]]; then
  echo "setup-litellm-deps: the extra pins '$extra', constraints.txt litellm==$LITELLM_VERSION" >&2
  exit 1
fi

stamp="$venv/.spotinfer-litellm.pins"
want=$(cat "$constraints" "$proxy_reqs" <(printf '%s\n' "${TOOLS[@]}" "uv==$UV_VERSION") | sha256sum | cut -d' ' -f1)
if [[ -x "$venv/bin/python" && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
  echo "setup-litellm-deps: litellm $LITELLM_VERSION ready in $venv"
  exit 0
fi
echo "setup-litellm-deps: installing litellm==$LITELLM_VERSION into $venv"
# uv (pinned, from PyPI, in a venv of its own) fetches the ~60 packages in
# parallel: seconds where pip takes minutes. Its cache is build/uv-cache.
uv_venv="$root/build/venv-uv"
if [[ "$("$uv_venv/bin/uv" --version 2>/dev/null)" != "uv $UV_VERSION"* ]]; then
  rm -rf "$uv_venv"
  python3 -m venv "$uv_venv"
  "$uv_venv/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
fi
# The certificate bundle pip is told to use, for uv too.
if [[ -n "${PIP_CERT:-}" && -z "${SSL_CERT_FILE:-}" ]]; then
  export SSL_CERT_FILE=$PIP_CERT
fi
export UV_CACHE_DIR="$root/build/uv-cache"
rm -rf "$venv"
"$uv_venv/bin/uv" venv -q --python "$(command -v python3)" "$venv"
"$uv_venv/bin/uv" pip install -q --python "$venv/bin/python" -c "$constraints" \
  "litellm==$LITELLM_VERSION" -r "$proxy_reqs" "${TOOLS[@]}"
echo "$want" >"$stamp"
echo "setup-litellm-deps: litellm $LITELLM_VERSION ready in $venv"
