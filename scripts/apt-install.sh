#!/usr/bin/env bash
# Install Debian packages that are not installed yet, without questions:
#
#   bash scripts/apt-install.sh [--name WHO] [--no-services] PKG...
#
# Each PKG is looked up with dpkg-query; when all are installed, apt is not
# touched at all (so it is safe to run again, and needs neither root nor the
# network). Otherwise, as root or through sudo: one `apt-get update`, then
# one `apt-get install -y --no-install-recommends` of exactly the missing
# packages, with DEBIAN_FRONTEND=noninteractive. WHO (default apt-install)
# starts every message, so a setup script's output names the script.
# --no-services: the packages' maintainer scripts may not start services
# (nginx would take port 80): while apt runs, a policy-rc.d that refuses
# every start is in place, unless the machine already has one.
#
# Environment: SPI_APT_QUIET=0 shows apt's own output (default: quiet).
# Exit status: 0 when every package is installed at the end; 1 when some are
# missing and there is neither root nor sudo; 2 on a usage error; apt-get's
# status when it fails.
set -euo pipefail

who=apt-install
no_services=no
while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in
    --name)
      if [[ $# -lt 2 ]]; then
        echo "apt-install: --name needs a value" >&2
        exit 2
      fi
      who=$2
      shift 2
      ;;
    --no-services) no_services=yes; shift ;;
    *)
      echo "apt-install: unknown option $1" >&2
      exit 2
      ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "$who: usage: apt-install.sh [--name WHO] [--no-services] PKG..." >&2
  exit 2
fi

missing=()
for p in "$@"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "$who: all $# packages already installed"
  exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "$who: missing packages (${missing[*]}); run as root or install sudo" >&2
  exit 1
fi

quiet=(-qq)
out=/dev/null
if [[ ${SPI_APT_QUIET:-1} == 0 ]]; then
  quiet=()
  out=/dev/stdout
fi

# The policy file's path can be moved for the helper's own test.
policy=${SPI_APT_POLICY_RC_D:-/usr/sbin/policy-rc.d}
placed=no
if [[ $no_services == yes && ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
  "${sudo[@]}" chmod 755 "$policy"
  placed=yes
fi
cleanup() { if [[ $placed == yes ]]; then "${sudo[@]}" rm -f "$policy"; fi; }
trap cleanup EXIT

echo "$who: installing ${missing[*]}"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update "${quiet[@]}" || {
  rc=$?
  echo "$who: apt-get update failed (exit $rc)" >&2
  exit "$rc"
}
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${quiet[@]}" \
  -o DPkg::Lock::Timeout=600 --no-install-recommends -o Dpkg::Use-Pty=0 \
  "${missing[@]}" >"$out" || {
  rc=$?
  echo "$who: apt-get install ${missing[*]} failed (exit $rc)" >&2
  exit "$rc"
}
echo "$who: done"
