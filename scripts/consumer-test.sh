#!/usr/bin/env bash
# Build and run a tiny program against an INSTALLED libspotinfer, the ways a
# user would: pkg-config (shared and static), find_package (shared and
# static targets), the first program of docs/install.md, the README's
# short example and the longer one of docs/example.md. Nothing from the build
# tree is used, and no program is given LD_LIBRARY_PATH.
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
  # grep reads all of readelf's output (no -q, which stops at the first
  # match): under pipefail, readelf cut off by a closed pipe would fail it.
  if readelf -d "$bin" | grep 'NEEDED.*\[libspotinfer\.so' >/dev/null; then
    needs=yes
  fi
  if [[ "$needs" != "$dynamic" ]]; then
    echo "FAIL $name: links libspotinfer.so dynamically: $needs (expected $dynamic)"
    fail=$((fail + 1))
    return
  fi
  # Every program runs with LD_LIBRARY_PATH unset: a shared consumer finds
  # the installed library through its rpath, a static one needs no .so.
  out=$(env -u LD_LIBRARY_PATH "$bin" 2>&1) || {
    echo "FAIL $name: exit $?: $out"; fail=$((fail + 1)); return; }
  if [[ "$out" != "$expect" ]]; then
    echo "FAIL $name: printed '$out', expected '$expect'"
    fail=$((fail + 1))
    return
  fi
  echo "ok   $name"
  pass=$((pass + 1))
}

echo "consumer-test: prefix $prefix ($(pkg-config --modversion spotinfer))"

# 1. pkg-config, shared library, with the rpath the README spells out.
rpath="-Wl,-rpath,$(pkg-config --variable=libdir spotinfer)"
# shellcheck disable=SC2046
"$cc" -std=c99 -Wall -Wextra -Werror $(pkg-config --cflags spotinfer) \
  "$src" -o "$work/pc_shared" $(pkg-config --libs spotinfer) "$rpath"
run pkg-config-shared "$work/pc_shared" yes

# 1b. The first program of docs/install.md (its first C block), built with
# the command line printed there.
awk '/^```c$/{c=1; next} c&&/^```$/{exit} c{print}' \
  "$root/docs/install.md" >"$work/hello.c"
if [[ ! -s "$work/hello.c" ]]; then
  echo "FAIL readme-hello: no C block in docs/install.md"
  fail=$((fail + 1))
else
  # shellcheck disable=SC2046
  (cd "$work" && "$cc" hello.c $(pkg-config --cflags --libs spotinfer) \
    -Wl,-rpath,"$(pkg-config --variable=libdir spotinfer)" -o hello)
  run readme-hello "$work/hello" yes
fi

# 1c. The README's short example (the C block of "## A short example"): it
# routes a body over two replicas and reports the ticket.
awk '/^## A short example/{s=1; next} s&&/^## /{exit} s&&/^```c$/{c=1; next}
     c&&/^```$/{exit} c{print}' "$root/README.md" >"$work/demo.c"
# shellcheck disable=SC2046
if "$cc" -std=c99 -Wall -Wextra -Werror "$work/demo.c" -o "$work/demo" \
  $(pkg-config --cflags --libs spotinfer) "$rpath" 2>"$work/demo.log"; then
  if out=$(env -u LD_LIBRARY_PATH "$work/demo" 2>&1) &&
    [[ "$out" =~ ^gold\ key\ [0-9a-f]{32}\ -\>\ od-a\ \(.+\),\ \$0\.[0-9]{6}$ ]]; then
    echo "ok   readme-example: $out"
    pass=$((pass + 1))
  else
    echo "FAIL readme-example: printed '$out'"
    fail=$((fail + 1))
  fi
else
  cat "$work/demo.log"
  echo "FAIL readme-example: does not compile"
  fail=$((fail + 1))
fi
# Its error path: the same program with a body that is not JSON exits 1 and
# says why on standard error.
sed 's/\\"stream\\":true,/\\"stream\\":tru,/' "$work/demo.c" >"$work/demo_bad.c"
# shellcheck disable=SC2046
if ! cmp -s "$work/demo.c" "$work/demo_bad.c" &&
  "$cc" -std=c99 -Wall -Wextra -Werror "$work/demo_bad.c" -o "$work/demo_bad" \
    $(pkg-config --cflags --libs spotinfer) "$rpath" &&
  ! out=$(env -u LD_LIBRARY_PATH "$work/demo_bad" 2>&1) &&
  [[ "$out" == "malformed input: body: malformed JSON at byte offset "* ]]; then
  echo "ok   readme-example-error: $out"
  pass=$((pass + 1))
else
  echo "FAIL readme-example-error: printed '${out:-}'"
  fail=$((fail + 1))
fi

# 1d. The longer example of docs/example.md: three bodies, a 200, a 200 and
# a 400.
awk '/^```c$/{c=1; next} c&&/^```$/{exit} c{print}' \
  "$root/docs/example.md" >"$work/example.c"
want='^gold key [0-9a-f]{32} -> od-a \(.+\), \$0\.[0-9]{6}
HTTP 200
bronze key [0-9a-f]{32} -> spot-a \(.+\), \$0\.[0-9]{6}
HTTP 200
HTTP 400$'
# shellcheck disable=SC2046
if "$cc" -std=c99 -Wall -Wextra -Werror "$work/example.c" -o "$work/example" \
  $(pkg-config --cflags --libs spotinfer) "$rpath" 2>"$work/example.log" &&
  out=$(env -u LD_LIBRARY_PATH "$work/example" 2>/dev/null) &&
  [[ "$out" =~ $want ]]; then
  echo "ok   docs-example: $(wc -l <<<"$out") lines"
  pass=$((pass + 1))
else
  cat "$work/example.log"
  echo "FAIL docs-example: printed '${out:-}'"
  fail=$((fail + 1))
fi

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

# The installed command-line tool runs with no LD_LIBRARY_PATH (its rpath is
# relative to its own directory) and its man page is installed.
cli="$prefix/bin/spotinfer"
if [[ ! -x "$cli" ]]; then
  echo "FAIL spotinfer: $cli is not installed"
  fail=$((fail + 1))
elif out=$(env -u LD_LIBRARY_PATH "$cli" --json version 2>&1) &&
  [[ "$out" == *"\"version\":"*"\"$(pkg-config --modversion spotinfer)\""* ]] &&
  env -u LD_LIBRARY_PATH "$cli" cost per-million --usd-per-gpu-hour 3.5 \
    --gpus 1 --tokens-per-s 1000 >/dev/null; then
  echo "ok   spotinfer (installed, runpath $(readelf -d "$cli" | sed -n 's/.*runpath: \[\(.*\)\]/\1/p'))"
  pass=$((pass + 1))
else
  echo "FAIL spotinfer: installed tool does not run: $out"
  fail=$((fail + 1))
fi
if [[ -f "$prefix/share/man/man1/spotinfer.1" ]]; then
  echo "ok   man page"
  pass=$((pass + 1))
else
  echo "FAIL man page: $prefix/share/man/man1/spotinfer.1 is not installed"
  fail=$((fail + 1))
fi

# The licence travels with the install and with both binding packages.
for f in "$prefix/share/doc/spotinfer/LICENSE" "$root/bindings/python/LICENSE" \
  "$root/bindings/go/LICENSE"; do
  if cmp -s "$root/LICENSE" "$f"; then
    echo "ok   licence $f"
    pass=$((pass + 1))
  else
    echo "FAIL licence: $f is missing or differs from LICENSE"
    fail=$((fail + 1))
  fi
done

echo "consumer-test: $pass passed, $fail failed"
[[ $fail -eq 0 ]]
