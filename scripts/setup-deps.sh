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
  locales           # the locale tests' de_DE and ps_AF sources (localedef)
)

# Go comes with the machine image when present; Debian's is the fallback for
# the Go binding tests.
if ! command -v go >/dev/null 2>&1; then
  packages+=(golang-go)
fi

# The gateway drill's real components (pip and Go modules), once the
# Debian packages they need are in.
gateway_deps() {
  bash "$(dirname "${BASH_SOURCE[0]}")/setup-gateway-deps.sh"
  # hiredis before the build, so build/ has libspotinfer_redis
  bash "$(dirname "${BASH_SOURCE[0]}")/setup-redis-deps.sh"
}

bash "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh" --name setup-deps "${packages[@]}"
gateway_deps
