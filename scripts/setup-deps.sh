#!/usr/bin/env bash
# Install the Debian packages libspotinfer needs to build, test, fuzz and
# package itself (Debian 12). Safe to run again: packages already installed
# are left alone and apt is not touched at all when nothing is missing.
#
#   bash scripts/setup-deps.sh
set -euo pipefail

packages=(
  build-essential   # gcc, g++ (C++ header checks), make
  cmake             # 3.25 on Debian 12
  pkg-config
  libxxhash-dev
  libcjson-dev
  libcmocka-dev
  valgrind
  clang-14          # libFuzzer targets
  libclang-rt-14-dev  # sanitizer and libFuzzer runtimes for clang-14
  binutils          # nm, readelf for the ABI checks
  python3
  python3-venv
  python3-pip
)

# Go comes with the machine image when present; Debian's is the fallback for
# the Go binding tests.
if ! command -v go >/dev/null 2>&1; then
  packages+=(golang-go)
fi

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$p")
  fi
done

# The gateway drill's real components (pip and Go modules), once the
# Debian packages they need are in.
gateway_deps() {
  bash "$(dirname "${BASH_SOURCE[0]}")/setup-gateway-deps.sh"
  # hiredis before the build, so build/ has libspotinfer_redis
  bash "$(dirname "${BASH_SOURCE[0]}")/setup-redis-deps.sh"
}

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "setup-deps: all ${#packages[@]} packages already installed"
  gateway_deps
  exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "setup-deps: missing packages (${missing[*]}) and not root, no sudo" >&2
  exit 1
fi

echo "setup-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
  --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}" >/dev/null
echo "setup-deps: done"
gateway_deps
