# Sourced by drill.sh and loadrun.sh (with $root set). First: make the installed
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

# Process cleanup, for a script that sets $work (its temporary directory)
# and $self (its name in messages) and then calls track_cleanup. Every
# process it starts in the background goes into pids (pids+=($!)); on any
# exit, INT and TERM included, each is killed and reaped, then $work is
# removed, or kept and named when the script has set keep=yes. A command
# that may run long is started in the background and waited for with
# wait_child, so a signal does not wait for it to end (bash runs a trap only
# once the foreground command has ended) and it is killed with the rest.
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [[ ${keep:-no} == yes ]]; then
    echo "$self: logs kept in $work" >&2
  else
    rm -rf "$work"
  fi
}
track_cleanup() {
  trap cleanup EXIT
  trap 'exit 130' INT TERM
}
wait_child() { # <pid>: waits for a tracked child; returns its exit status
  local rc=0 p kept=()
  wait "$1" || rc=$?
  for p in "${pids[@]}"; do [[ $p == "$1" ]] || kept+=("$p"); done
  pids=("${kept[@]}")
  return "$rc"
}
