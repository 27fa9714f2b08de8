#!/usr/bin/env bash
# spi_route next to three other routers' decision cores, on the same prompts
# and fleets (tests/bench/peers/README.md says what each harness runs):
#
#   bash scripts/bench-peers.sh            # 1/8/64 KiB x 8/64/512 replicas
#   bash scripts/bench-peers.sh --smoke    # 8 KiB x 64 replicas, one round
#
# Builds, all under build-peers/ (ignored by git):
#   - the library (cmake, Release) and tests/bench/peers/peer_spi.c
#   - tests/bench/peers/go: the Gateway API Inference Extension endpoint
#     picker, sigs.k8s.io/gateway-api-inference-extension v1.5.0 (go.mod and
#     go.sum pin every module)
#   - tests/bench/peers/rust: SGLang's cache-aware rule on kv-index 2.0.0 and
#     the dynamo-kv-router 1.6.1 core (Cargo.lock pins every crate; --locked)
# Needs Go >= 1.25 (older go >= 1.21 fetches it as a module when
# GOTOOLCHAIN=auto), Rust >= 1.85 with cargo, a C compiler, cmake, python3.
# A first build fetches and compiles a few hundred Go modules and Rust
# crates: about 10-15 minutes on 2 cores; later runs reuse build-peers/.
#
# For every case the peers take turns, SPI_PEERS_ROUNDS rounds (default 5,
# smoke 1) of SPI_PEERS_DECISIONS decisions a run (default 2000, smoke 500):
# in a round spi_route runs before and after each other peer, whose order
# rotates every round, so each peer's run has spi_route runs just before
# and just after it (aggregate.py's paired ratio).
# Each decision's request is finished at once, as in bench_route; with
# SPI_PEERS_IN_FLIGHT=64 the last 64 stay open (the oldest finished as each
# new one is routed), so loads and caches spread over the fleet.
# Prints JSON lines (one per peer and case, then a summary); the runs' raw
# samples and docs-ready table stay in build-peers/run-<date>/.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out="$root/build-peers"
peers_src="$root/tests/bench/peers"
jobs=${SPI_JOBS:-2}
in_flight=${SPI_PEERS_IN_FLIGHT:-0}
smoke=no
if [[ "${1:-}" == "--smoke" ]]; then
  smoke=yes
elif [[ $# -gt 0 ]]; then
  echo "usage: bash scripts/bench-peers.sh [--smoke]" >&2
  exit 2
fi
if [[ $smoke == yes ]]; then
  sizes=(8192) replicas=(64)
  rounds=${SPI_PEERS_ROUNDS:-1} decisions=${SPI_PEERS_DECISIONS:-500}
else
  sizes=(1024 8192 65536) replicas=(8 64 512)
  rounds=${SPI_PEERS_ROUNDS:-5} decisions=${SPI_PEERS_DECISIONS:-2000}
fi

say() { echo "bench-peers: $*" >&2; }
need() {
  command -v "$1" >/dev/null 2>&1 || { say "needs $1 ($2)"; exit 1; }
}
need cmake "apt-get install cmake"
need cc "apt-get install gcc"
need python3 "apt-get install python3"
need go "Go >= 1.25"
need cargo "Rust >= 1.85 with cargo"
mkdir -p "$out"

say "building the library (Release) in build-peers/c"
nice -n 10 cmake -S . -B "$out/c" -DCMAKE_BUILD_TYPE=Release -DSPI_WERROR=ON \
  -DSPI_BUILD_TESTS=OFF -DSPI_BUILD_EXAMPLES=OFF -DSPI_BUILD_BENCH=OFF \
  -DSPI_BUILD_TOOLS=OFF >"$out/c-config.log" 2>&1 ||
  { cat "$out/c-config.log" >&2; exit 1; }
nice -n 10 cmake --build "$out/c" -j"$jobs" --target spotinfer_static >"$out/c-build.log" 2>&1 ||
  { tail -40 "$out/c-build.log" >&2; exit 1; }
# shellcheck disable=SC2046
nice -n 10 cc -O2 -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror \
  -Iinclude "$peers_src/peer_spi.c" "$out/c/libspotinfer.a" \
  $(pkg-config --libs libcjson libxxhash) -pthread -lm -o "$out/peer_spi"

say "building the EPP harness (Go modules pinned by tests/bench/peers/go/go.sum)"
(cd "$peers_src/go" && nice -n 10 go build -mod=readonly -buildvcs=false -p "$jobs" -o "$out/peer-epp" .)

say "building the Rust harness (crates pinned by tests/bench/peers/rust/Cargo.lock)"
CARGO_TARGET_DIR="$out/cargo" nice -n 10 cargo build --release --locked -j "$jobs" \
  --manifest-path "$peers_src/rust/Cargo.toml" 2>"$out/cargo-build.log" ||
  { tail -40 "$out/cargo-build.log" >&2; exit 1; }

run_dir="$out/run-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$run_dir"
cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //' || echo unknown)
python3 - "$cpu" "$(nproc)" "$(go env GOVERSION)" "$(rustc --version)" \
  "$(cc --version | head -1)" "$smoke" "$rounds" "$decisions" "$in_flight" <<'EOF'
import json, sys, datetime
a = sys.argv[1:]
print(json.dumps({"bench": "peers_env",
                  "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  "cpu": a[0], "cpus": int(a[1]), "go": a[2], "rustc": a[3], "cc": a[4],
                  "smoke": a[5] == "yes", "rounds": int(a[6]), "decisions_per_run": int(a[7]), "in_flight": int(a[8]),
                  "gateway_api_inference_extension": "v1.5.0", "kv_index": "2.0.0",
                  "dynamo_kv_router": "1.6.1"}, separators=(",", ":")))
EOF

# One harness run; its JSON line goes to runs.jsonl with the round, its
# place in the case's sequence and the samples file added.
run_one() {
  local p=$1 size=$2 reps=$3 r=$4 seq=$5 cmd
  case "$p" in
    spi) cmd=("$out/peer_spi") ;;
    epp) cmd=("$out/peer-epp") ;;
    *) cmd=("$out/cargo/release/peer-rust" "$p") ;;
  esac
  local samples="$run_dir/$p-$size-$reps-$r-$seq.txt" line
  line=$(timeout 600 nice -n 10 "${cmd[@]}" "$size" "$reps" "$decisions" "$samples" "$in_flight")
  echo "${line%\}},\"round\":$r,\"seq\":$seq,\"samples\":\"$samples\"}" >>"$run_dir/runs.jsonl"
}

# A round runs spi_route before and after each other peer (spi, A, spi, B,
# spi, C, spi), the others' order rotated every round: each peer's run is
# compared with the spi_route runs just before and just after it, so a
# change of the host's speed between rounds moves both sides alike.
others=(epp sglang dynamo)
for size in "${sizes[@]}"; do
  for reps in "${replicas[@]}"; do
    say "case: $size-byte prompts, $reps replicas ($rounds rounds)"
    # The machine's speed when the case starts (aggregate.py shows it).
    speed=$(nice -n 10 "$out/peer_spi" --host-speed)
    echo "${speed%\}},\"prompt_bytes\":$size,\"replicas\":$reps}" >>"$run_dir/host.jsonl"
    seq=0
    for ((r = 0; r < rounds; r++)); do
      run_one spi "$size" "$reps" "$r" $((seq++))
      for ((k = 0; k < ${#others[@]}; k++)); do
        run_one "${others[$(((k + r) % ${#others[@]}))]}" "$size" "$reps" "$r" $((seq++))
        run_one spi "$size" "$reps" "$r" $((seq++))
      done
    done
  done
done
python3 "$peers_src/aggregate.py" "$run_dir" --markdown "$run_dir/table.md"
say "raw samples and the table for docs/performance.md: ${run_dir#"$root"/}"
