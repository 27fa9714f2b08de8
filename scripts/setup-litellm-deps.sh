#!/usr/bin/env bash
# Install what the litellm stage runs, pinned: the litellm package (the
# version the spotinfer[litellm] extra pins, every dependency pinned by
# tests/litellm/constraints.txt), pytest and prometheus_client, in a venv at
# build/venv-litellm. pip's download cache is build/pip-cache, so a second
# set-up (a fresh venv) fetches nothing. Safe to run again: nothing is
# installed when the venv already holds exactly these pins.
#
#   bash scripts/setup-litellm-deps.sh [VENV]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${1:-$root/build/venv-litellm}
constraints="$root/tests/litellm/constraints.txt"
LITELLM_VERSION=$(sed -n 's/^litellm==//p' "$constraints")
TOOLS=(pytest==8.3.4 prometheus_client==0.21.1)

extra=$(grep -o '"litellm==[^"]*"' "$root/bindings/python/pyproject.toml" | tr -d '"')
if [[ "$extra" != "litellm==$LITELLM_VERSION" ]]; then
  echo "setup-litellm-deps: the extra pins '$extra', constraints.txt litellm==$LITELLM_VERSION" >&2
  exit 1
fi

stamp="$venv/.spotinfer-litellm.pins"
want=$(cat "$constraints" <(printf '%s\n' "${TOOLS[@]}") | sha256sum | cut -d' ' -f1)
if [[ -x "$venv/bin/python" && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
  echo "setup-litellm-deps: litellm $LITELLM_VERSION ready in $venv"
  exit 0
fi
echo "setup-litellm-deps: installing litellm==$LITELLM_VERSION into $venv"
rm -rf "$venv"
python3 -m venv "$venv"
PIP_CACHE_DIR="$root/build/pip-cache" "$venv/bin/python" -m pip install -q --no-compile \
  --disable-pip-version-check -c "$constraints" "litellm==$LITELLM_VERSION" "${TOOLS[@]}"
echo "$want" >"$stamp"
echo "setup-litellm-deps: litellm $LITELLM_VERSION ready in $venv"
