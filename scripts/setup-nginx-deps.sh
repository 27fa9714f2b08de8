#!/usr/bin/env bash
# Install what the nginx module needs to build and be tested (Debian 12):
# Debian's nginx (1.22) and nginx-dev (its sources and build flags, for
# dynamic modules), and wrk for the load comparison. Safe to run again:
# apt is not touched when everything is installed. Called by
# scripts/setup-deps.sh.
#
#   bash scripts/setup-nginx-deps.sh
set -euo pipefail

packages=(
  nginx-core  # /usr/sbin/nginx, built --with-compat
  nginx-dev   # /usr/share/nginx/src: headers, configure, conf_flags
  wrk         # tests/nginx/bench.sh
)

# Installing nginx must not start the system's nginx on port 80: apt runs
# with a policy-rc.d that refuses service starts (--no-services).
bash "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh" --name setup-nginx-deps --no-services \
  "${packages[@]}"
