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

# Debian starts the packaged server as a service where there is an init
# system; the tests never use it (they start their own on a port they pick).
bash "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh" --name setup-redis-deps "${packages[@]}"
