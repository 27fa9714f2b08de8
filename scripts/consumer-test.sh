#!/usr/bin/env bash
# Build and run a tiny program against an INSTALLED libspotinfer, the ways a
# user would: pkg-config (shared and static) and find_package (shared and
# static targets). Nothing from the build tree is used.
#
#   bash scripts/consumer-test.sh <install-prefix>
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 <install-prefix>" >&2
  exit 2
fi
prefix=$(cd "$1" && pwd)
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src="$root/tests/consumer/main.c"
cc=${CC:-cc}

pc=$(find "$prefix" -name spotinfer.pc -path '*/pkgconfig/*' | head -n 1)
if [[ -z "$pc" ]]; then
  echo "consumer-test: no spotinfer.pc under $prefix" >&2
  exit 1
fi
pcdir=$(dirname "$pc")
libdir=$(dirname "$pcdir")
export PKG_CONFIG_PATH="$pcdir${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"

work=$(mktemp -d "${TMPDIR:-/tmp}/spotinfer-consumer.XXXXXX")
trap 'rm -rf "$work"' EXIT

fail=0
pass=0
expect="spotinfer $(pkg-config --modversion spotinfer) ok"

# run <name> <binary> <must-need-libspotinfer: yes|no>
run() {
  local name=$1 bin=$2 dynamic=$3 out
  local needs=no
  if readelf -d "$bin" | grep -q 'NEEDED.*\[libspotinfer\.so'; then
    needs=yes
  fi
  if [[ "$needs" != "$dynamic" ]]; then
    echo "FAIL $name: links libspotinfer.so dynamically: $needs (expected $dynamic)"
    fail=$((fail + 1))
    return
  fi
  if [[ "$dynamic" == yes ]]; then
    out=$(LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$bin" 2>&1) || {
      echo "FAIL $name: exit $?: $out"; fail=$((fail + 1)); return; }
  else
    # A static consumer must run with the installed .so out of reach.
    out=$(env -u LD_LIBRARY_PATH "$bin" 2>&1) || {
      echo "FAIL $name: exit $?: $out"; fail=$((fail + 1)); return; }
  fi
  if [[ "$out" != "$expect" ]]; then
    echo "FAIL $name: printed '$out', expected '$expect'"
    fail=$((fail + 1))
    return
  fi
  echo "ok   $name"
  pass=$((pass + 1))
}

echo "consumer-test: prefix $prefix ($(pkg-config --modversion spotinfer))"

# 1. pkg-config, shared library.
# shellcheck disable=SC2046
"$cc" -std=c99 -Wall -Wextra -Werror $(pkg-config --cflags spotinfer) \
  "$src" -o "$work/pc_shared" $(pkg-config --libs spotinfer)
run pkg-config-shared "$work/pc_shared" yes

# 2. pkg-config --static: the archive plus Requires.private / Libs.private.
# -Bstatic picks libspotinfer.a over the .so for that one library only.
static_libs=$(pkg-config --static --libs spotinfer)
static_libs=${static_libs/-lspotinfer/-Wl,-Bstatic -lspotinfer -Wl,-Bdynamic}
# shellcheck disable=SC2046,SC2086
"$cc" -std=c99 -Wall -Wextra -Werror -DSPI_STATIC \
  $(pkg-config --static --cflags spotinfer) "$src" -o "$work/pc_static" \
  $static_libs
run pkg-config-static "$work/pc_static" no

# 3 and 4. find_package(spotinfer): spotinfer::spotinfer and
# spotinfer::spotinfer_static.
cmake -S "$root/tests/consumer" -B "$work/cmake" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_C_COMPILER="$cc" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_C_FLAGS="-Wall -Wextra -Werror" >"$work/cmake.log" 2>&1 || {
  cat "$work/cmake.log"; echo "FAIL find_package: configure failed"; exit 1; }
cmake --build "$work/cmake" >>"$work/cmake.log" 2>&1 || {
  cat "$work/cmake.log"; echo "FAIL find_package: build failed"; exit 1; }
run find_package-shared "$work/cmake/consumer_shared" yes
run find_package-static "$work/cmake/consumer_static" no

echo "consumer-test: $pass passed, $fail failed"
[[ $fail -eq 0 ]]
