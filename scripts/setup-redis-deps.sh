#!/usr/bin/env bash
# Install what the optional Redis library (libspotinfer_redis) and its tests
# need (Debian 12): hiredis with its TLS part to build against, and
# redis-server for the `redis` stage of scripts/test.sh. Safe to run again:
# apt is not touched when everything is already installed. The server is
# never started here; the tests start their own on 127.0.0.1.
#
#   bash scripts/setup-redis-deps.sh
set -euo pipefail

packages=(
  libhiredis-dev   # hiredis + hiredis_ssl (headers, pkg-config files)
  libssl-dev       # what hiredis_ssl.pc requires
  redis-server     # redis-server and redis-cli for the tests
  openssl          # certificates for the TLS test
)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "setup-redis-deps: all ${#packages[@]} packages already installed"
  exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "setup-redis-deps: missing packages (${missing[*]}) and not root, no sudo" >&2
  exit 1
fi

echo "setup-redis-deps: installing ${missing[*]}"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
  --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}" >/dev/null
# Debian starts the packaged server as a service where there is an init
# system; the tests never use it (they start their own on a port they pick).
echo "setup-redis-deps: done"
