#!/usr/bin/env bash
# The demo: install dependencies, build, and run the simulator on its
# built-in traffic generator (no external data): seven routing policies and
# the all-on-demand baseline side by side on the same simulated spot +
# on-demand cluster, printed as a table and written as build/sim.json and
# build/sim.svg (docs/simulator.md explains both).
#
#   bash scripts/demo.sh [arguments for spotinfer_sim]
#
# examples/spotinfer_demo (the request-by-request walkthrough of classify,
# key and price) is built too: run build/examples/spotinfer_demo.
#
# The run is deterministic, and docs/sim.svg is its chart: the docrun stage
# of scripts/test.sh fails when they differ. Refresh it with
#   bash scripts/demo.sh && cp build/sim.svg docs/sim.svg
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

echo "== installing dependencies"
bash scripts/setup-deps.sh

echo "== building build/examples/spotinfer_sim and spotinfer_demo"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPI_BUILD_EXAMPLES=ON >/dev/null
cmake --build build -j "$(nproc 2>/dev/null || echo 2)" --target spotinfer_sim spotinfer_demo

sim=build/examples/spotinfer_sim
if [[ ! -x "$sim" ]]; then
  echo "demo: $sim was not built (see the build output above)" >&2
  exit 1
fi

echo "== running $sim --json build/sim.json --svg build/sim.svg $*"
"$sim" --json build/sim.json --svg build/sim.svg "$@"
echo
echo "The table and the chart are explained in docs/simulator.md."
echo "Chart: build/sim.svg (cost, prefix hits, gold TTFT, spot timeline; open it in a browser)"
echo "Numbers: build/sim.json"
