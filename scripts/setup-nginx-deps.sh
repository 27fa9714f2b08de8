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

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "setup-nginx-deps: all ${#packages[@]} packages already installed"
  exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "setup-nginx-deps: missing packages (${missing[*]}) and not root, no sudo" >&2
  exit 1
fi

# Installing nginx must not start the system's nginx on port 80: when
# nothing prevents it, a policy-rc.d that refuses service starts is put in
# place for the install only.
policy=/usr/sbin/policy-rc.d
placed=no
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
  "${sudo[@]}" chmod 755 "$policy"
  placed=yes
fi
cleanup() { if [[ $placed == yes ]]; then "${sudo[@]}" rm -f "$policy"; fi; }
trap cleanup EXIT

echo "setup-nginx-deps: installing ${missing[*]}"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
  -o DPkg::Lock::Timeout=600 --no-install-recommends -o Dpkg::Use-Pty=0 \
  "${missing[@]}" >/dev/null
echo "setup-nginx-deps: done"
