#!/usr/bin/env bash
# Build the spotinfer nginx module (ngx_http_spotinfer_module.so) for
# Debian's nginx, against the sources of its nginx-dev package and the
# installed libspotinfer (found with pkg-config):
#
#   bash bindings/nginx/build.sh OUTDIR
#
# The sources are copied into OUTDIR/nginx-src (the package's tree stays
# untouched), configured with the package's own flags (so the module is
# binary compatible with /usr/sbin/nginx) and "make modules" is run; the
# module is OUTDIR/ngx_http_spotinfer_module.so, linked to libspotinfer with
# an rpath to its directory. A module built from the same sources against
# the same library directory is kept. Needs scripts/setup-nginx-deps.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:?usage: build.sh OUTDIR}
src=/usr/share/nginx/src

[[ -f $src/conf_flags ]] || { echo "build.sh: no $src: run scripts/setup-nginx-deps.sh" >&2; exit 1; }
pkg-config --exists spotinfer || { echo "build.sh: pkg-config finds no spotinfer (set PKG_CONFIG_PATH)" >&2; exit 1; }

mkdir -p "$out"
out=$(cd "$out" && pwd)
libdir=$(pkg-config --variable=libdir spotinfer)

# Built already from these sources against this library: nothing to do.
stamp="$out/ngx_http_spotinfer_module.stamp"
if [[ -f "$out/ngx_http_spotinfer_module.so" && "$(cat "$stamp" 2>/dev/null)" == "$libdir" ]] &&
    [[ -z $(find "$here" -newer "$out/ngx_http_spotinfer_module.so" -type f) ]]; then
  echo "$out/ngx_http_spotinfer_module.so"
  exit 0
fi
rm -f "$stamp"
rm -rf "$out/nginx-src"
cp -r "$src" "$out/nginx-src"

# conf_flags sets NGX_CONF_FLAGS, the flags Debian's nginx was built with.
# shellcheck disable=SC1091
source "$src/conf_flags"

cd "$out/nginx-src"
./configure "${NGX_CONF_FLAGS[@]}" \
  --with-cc-opt="$(pkg-config --cflags spotinfer) -g -O2 -fPIC -Wall -Wextra -Wno-unused-parameter" \
  --with-ld-opt="-L$libdir -Wl,-rpath,$libdir" \
  --add-dynamic-module="$here" >"$out/configure.log" 2>&1 ||
  { tail -20 "$out/configure.log" >&2; exit 1; }
make -j"${SPI_JOBS:-2}" -f objs/Makefile modules >"$out/make.log" 2>&1 ||
  { grep -B2 -A6 -E 'error|warning' "$out/make.log" >&2 || tail -30 "$out/make.log" >&2; exit 1; }
cp objs/ngx_http_spotinfer_module.so "$out/"
echo "$libdir" >"$stamp"
echo "$out/ngx_http_spotinfer_module.so"
