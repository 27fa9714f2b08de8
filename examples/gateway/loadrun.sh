#!/usr/bin/env bash
# The gateway's load run, on 127.0.0.1 only: three fake model servers, the
# gateway on the library and the same gateway with -balancer roundrobin (no
# library) in front of them, and loadgen driving the backends directly, the
# round-robin proxy and the gateway in alternating phases of one run.
# Prints JSON lines (one per phase, then a summary with the ratios).
#
#   bash examples/gateway/loadrun.sh            # 3 rounds of 3 s phases
#   bash examples/gateway/loadrun.sh --smoke    # 1 round of 1 s phases (CI)
#
# Extra arguments go to loadgen (e.g. -concurrency 32 -rounds 5).
# Needs Go and the library (found with pkg-config, else built into
# build-drill/ by libenv.sh).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
args=(-rounds 3 -phase 3s -concurrency 16)
if [[ "${1:-}" == "--smoke" ]]; then
  args=(-rounds 1 -phase 1s -concurrency 8)
  shift
fi
# shellcheck source=libenv.sh
source "$root/examples/gateway/libenv.sh"

work=$(mktemp -d "${TMPDIR:-/tmp}/spotinfer-loadrun.XXXXXX")
self=loadrun
track_cleanup

(cd "$root/examples/gateway" && go build -o "$work/gateway" . && go build -o "$work/loadgen" ./cmd/loadgen)
(cd "$root/examples/fakellm" && go build -o "$work/fakellm" .)

wait_file() {
  local i
  for i in $(seq 1 100); do
    [[ -s "$1" ]] && return 0
    sleep 0.1
  done
  echo "loadrun: $1 did not appear" >&2
  exit 1
}

# Backends that answer at once (no prefill time, no token pacing), so what
# is measured is the proxies' own work.
direct=()
for id in b1 b2 b3; do
  "$work/fakellm" -id "$id" -addr-file "$work/$id.addr" -ttft 0s -cached-ttft 0s \
    -token-rate 1e9 -answer-tokens 1000 -max-running 1024 -kv-tokens 1e12 >/dev/null 2>&1 &
  pids+=($!)
done
for id in b1 b2 b3; do
  wait_file "$work/$id.addr"
  direct+=("http://$(cat "$work/$id.addr")")
done
# All three in one spot pool, so the library spreads the load over the same
# backends round robin does: the run compares the proxies, not the pools.
{
  echo "["
  i=0
  for id in b1 b2 b3; do
    [[ $i -gt 0 ]] && echo ","
    echo "{\"id\":\"$id\",\"url\":\"${direct[$i]}\",\"pool\":\"spot\",\"zone\":\"z$i\",\"instance_type\":\"g5.xlarge\",\"usd_per_hour\":1.0,\"max_inflight\":256}"
    i=$((i + 1))
  done
  echo "]"
} >"$work/backends.json"
for bal in spotinfer roundrobin; do
  "$work/gateway" -balancer "$bal" -backends "$work/backends.json" -addr 127.0.0.1:0 \
    -addr-file "$work/$bal.addr" >"$work/$bal.out" 2>&1 &
  pids+=($!)
done
wait_file "$work/spotinfer.addr"
wait_file "$work/roundrobin.addr"

"$work/loadgen" -direct "$(IFS=,; echo "${direct[*]}")" \
  -roundrobin "http://$(cat "$work/roundrobin.addr")" -gateway "http://$(cat "$work/spotinfer.addr")" \
  "${args[@]}" "$@" &
loadgen_pid=$!
pids+=("$loadgen_pid")
wait_child "$loadgen_pid"
