#!/usr/bin/env bash
# The demo: install dependencies, build, and run examples/spotinfer_demo.
#
#   bash scripts/demo.sh [arguments for spotinfer_demo]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

echo "== installing dependencies"
bash scripts/setup-deps.sh

if [[ ! -f examples/spotinfer_demo.c ]]; then
  echo "demo: examples/spotinfer_demo.c is missing; there is no demo to build" >&2
  exit 1
fi

echo "== building build/examples/spotinfer_demo"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPI_BUILD_EXAMPLES=ON >/dev/null
cmake --build build -j "$(nproc 2>/dev/null || echo 2)" --target spotinfer_demo

demo=build/examples/spotinfer_demo
if [[ ! -x "$demo" ]]; then
  echo "demo: $demo was not built (see the build output above)" >&2
  exit 1
fi

echo "== running $demo $*"
exec "$demo" "$@"
