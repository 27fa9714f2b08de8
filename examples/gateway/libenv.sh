# Sourced by drill.sh and loadrun.sh (with $root set): make the installed
# library visible to cgo and the loader. When pkg-config finds no
# spotinfer, the library is built and installed into build-drill/.
if ! pkg-config --exists spotinfer 2>/dev/null; then
  echo "building the library into build-drill/" >&2
  cmake -S "$root" -B "$root/build-drill" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DSPI_BUILD_TESTS=OFF -DSPI_BUILD_EXAMPLES=OFF -DSPI_BUILD_BENCH=OFF >/dev/null
  cmake --build "$root/build-drill" -j 2 >/dev/null
  cmake --install "$root/build-drill" --prefix "$root/build-drill/prefix" >/dev/null
  libdir=$(dirname "$(dirname "$(find "$root/build-drill/prefix" -name spotinfer.pc | head -n 1)")")
  export PKG_CONFIG_PATH="$libdir/pkgconfig"
  export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export CGO_LDFLAGS="-L$libdir"
fi
export CGO_ENABLED=1
