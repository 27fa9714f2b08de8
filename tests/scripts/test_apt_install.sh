#!/usr/bin/env bash
# scripts/apt-install.sh on a made-up machine: fake dpkg-query, apt-get,
# sudo and id first on PATH, each writing what it was called with to a log,
# so the install branch (which only a fresh machine takes) is checked here
# without root, network or apt. Cases: everything installed; some missing as
# root; not root with sudo; not root without sudo; apt-get failing; usage.
#
#   bash tests/scripts/test_apt_install.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
helper="$here/../../scripts/apt-install.sh"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/spotinfer-apt.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
bin="$tmp/bin"
log="$tmp/calls"
mkdir -p "$bin"

# dpkg-query: "installed" for the packages named in $FAKE_INSTALLED.
cat >"$bin/dpkg-query" <<'SH'
#!/bin/bash
echo "dpkg-query ${*: -1}" >>"$FAKE_LOG"
for p in $FAKE_INSTALLED; do
  if [[ $p == "${*: -1}" ]]; then printf 'install ok installed'; exit 0; fi
done
echo "dpkg-query: no packages found matching ${*: -1}" >&2
exit 1
SH
# apt-get: logs its words and DEBIAN_FRONTEND; fails when asked to.
cat >"$bin/apt-get" <<'SH'
#!/bin/bash
pol=no
[[ -x $SPI_APT_POLICY_RC_D ]] && pol=yes
echo "apt-get $* [frontend=${DEBIAN_FRONTEND:-}] [user=$FAKE_USER] [policy=$pol]" >>"$FAKE_LOG"
[[ " $* " == *" ${FAKE_APT_FAIL:-none} "* ]] && exit 100
exit 0
SH
# id -u: $FAKE_UID.
cat >"$bin/id" <<'SH'
#!/bin/bash
echo "$FAKE_UID"
SH
# sudo: runs its command as "root" (FAKE_USER=root).
cat >"$bin/sudo" <<'SH'
#!/bin/bash
echo "sudo $*" >>"$FAKE_LOG"
FAKE_USER=root exec "$@"
SH
chmod +x "$bin"/*

fails=0
checks=0
# run <uid> <installed> <sudo yes|no> <args...>: runs the helper with only
# the fake bin and a bare system directory for env/tee/chmod/rm on PATH
# (and sudo only when asked); sets out, err, rc and calls.
run() {
  local uid=$1 installed=$2 with_sudo=$3
  shift 3
  : >"$log"
  local path="$bin"
  if [[ $with_sudo == no ]]; then
    path="$tmp/nosudo"
    rm -rf "$path"
    mkdir -p "$path"
    cp "$bin/dpkg-query" "$bin/apt-get" "$bin/id" "$path/"
  fi
  # The system directories, without any real sudo, apt-get or dpkg-query:
  # links to the few programs the helper runs besides the fakes.
  local sys="$tmp/sys"
  if [[ ! -d $sys ]]; then
    mkdir -p "$sys"
    local t
    for t in bash env cat tee chmod rm printf; do
      if command -v "$t" >/dev/null 2>&1 && [[ -x $(command -v "$t") ]]; then
        ln -s "$(command -v "$t")" "$sys/$t"
      fi
    done
  fi
  rc=0
  out=$(FAKE_LOG=$log FAKE_INSTALLED=$installed FAKE_UID=$uid FAKE_USER=$uid \
    SPI_APT_POLICY_RC_D="$tmp/policy-rc.d" PATH="$path:$sys" \
    "$sys/bash" "$helper" "$@" 2>"$tmp/err") || rc=$?
  err=$(cat "$tmp/err")
  calls=$(grep -v '^dpkg-query ' "$log" || true)
}

expect() { # <what> <condition...>
  local what=$1
  shift
  checks=$((checks + 1))
  if "$@"; then
    echo "ok   $what"
  else
    echo "FAIL $what"
    echo "     rc=$rc"
    echo "     stdout: $out"
    echo "     stderr: $err"
    echo "     calls:"
    sed 's/^/       /' <<<"$calls"
    fails=$((fails + 1))
  fi
}

count() { grep -c -- "$1" <<<"$calls" || true; }

# 1. Everything installed: dpkg-query asked about each, apt never run.
run 1000 "a b c" no --name setup-x a b c
expect "all installed: exit 0" test "$rc" -eq 0
expect "all installed: each package looked up" test "$(grep -c '^dpkg-query ' "$log")" -eq 3
expect "all installed: no apt-get, no sudo" test -z "$calls"
expect "all installed: says so" grep -q '^setup-x: all 3 packages already installed$' <<<"$out"

# 2. Some missing, as root: one update, one install of exactly the missing.
run 0 "a c" yes a b c d
expect "root: exit 0" test "$rc" -eq 0
expect "root: one update" test "$(count '^apt-get update')" -eq 1
expect "root: one install" test "$(count '^apt-get install')" -eq 1
expect "root: update first" grep -q '^apt-get update' <<<"$(grep '^apt-get' <<<"$calls" | head -n 1)"
expect "root: installs exactly b d, -y, no recommends" \
  grep -qE '^apt-get install -y .*--no-install-recommends .* b d \[' <<<"$calls"
expect "root: nothing installed twice" \
  test -z "$(grep '^apt-get install' <<<"$calls" | grep -wE 'a|c')"
expect "root: non-interactive" \
  test "$(count 'frontend=noninteractive')" -eq 2
expect "root: no sudo" test "$(count '^sudo ')" -eq 0
expect "root: services not held back unless asked" test "$(count 'policy=yes')" -eq 0
expect "root: names what it installs" grep -q '^apt-install: installing b d$' <<<"$out"

# 3. Not root, sudo there: both apt-get runs through sudo.
run 1000 "" yes x y
expect "sudo: exit 0" test "$rc" -eq 0
expect "sudo: update and install through sudo" test "$(count '^sudo env DEBIAN_FRONTEND=noninteractive apt-get')" -eq 2
expect "sudo: apt-get runs as root" test "$(count 'user=root')" -eq 2
expect "sudo: installs x y" grep -qE '^apt-get install -y .* x y \[' <<<"$calls"

# 4. Not root, no sudo: a clear error naming the packages, nonzero, no apt.
run 1000 "x" no --name setup-y x y z
expect "no sudo: exit 1" test "$rc" -eq 1
expect "no sudo: no apt-get" test -z "$calls"
expect "no sudo: says what is missing and why" \
  grep -q '^setup-y: missing packages (y z); run as root or install sudo$' <<<"$err"

# 5. apt-get failing: its status, and a message naming the step.
FAKE_APT_FAIL=update run 0 "" no p
expect "update fails: apt's status" test "$rc" -eq 100
expect "update fails: no install after it" test "$(count '^apt-get install')" -eq 0
expect "update fails: says so" grep -q 'apt-get update failed (exit 100)' <<<"$err"
FAKE_APT_FAIL=q run 0 "" no p q
expect "install fails: apt's status" test "$rc" -eq 100
expect "install fails: says so" grep -q 'apt-get install p q failed (exit 100)' <<<"$err"

# 6. --no-services: a policy-rc.d refusing starts while apt runs, removed
# after; one already there is left alone.
run 0 "" no --no-services n
expect "no-services: exit 0" test "$rc" -eq 0
expect "no-services: apt runs with the policy in place" test "$(count 'policy=yes')" -eq 2
expect "no-services: policy removed after" test ! -e "$tmp/policy-rc.d"
printf 'mine\n' >"$tmp/policy-rc.d"
run 0 "" no --no-services n
expect "no-services: an existing policy is kept" grep -qx mine "$tmp/policy-rc.d"
rm -f "$tmp/policy-rc.d"

# 7. Usage errors.
run 0 "" no
expect "no packages: exit 2" test "$rc" -eq 2
run 0 "" no --bogus a
expect "unknown option: exit 2" test "$rc" -eq 2

echo "apt-install: $((checks - fails)) of $checks checks passed"
[[ $fails -eq 0 ]]
