#!/usr/bin/env bash
# The replay store benchmark: enqueues and claim + acks per second on the
# local journal and on Redis, in the same run, with 1 and 4 processes
# (tests/redis/redis_worker.c), as JSON lines, with the Redis/journal
# ratios. Both stores fsync every write (journal "fsync": "always"; the
# server the `redis` stage starts has appendfsync always). Four journal
# processes each have a directory of their own (a journal is not shared);
# four Redis processes share one queue. Bounded: BENCH_COUNT envelopes per
# process (default 200), and each phase is timed out by the worker.
#
#   SPI_REDIS_PORT=... bash tests/redis/bench.sh build/tests/redis/redis_worker
set -euo pipefail

worker=$1
port=${SPI_REDIS_PORT:?the redis stage of scripts/test.sh sets SPI_REDIS_PORT}
count=${BENCH_COUNT:-200}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/spotinfer-bench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

config() { # <store> <run> <process>
  if [[ $1 == journal ]]; then
    printf '{"store":"journal","dir":"%s/j-%s-%s","fsync":"always"}' "$tmp" "$2" "$3"
  else
    printf '{"store":"redis","store_config":{"address":"127.0.0.1:%s","key_prefix":"bench:%s:%s:"}}' \
      "$port" "$$" "$2"
  fi
}

# phase <store> <procs> <mode> [args]: run the workers at once; prints the
# aggregate rate (envelopes / the slowest worker's time), per second.
phase() {
  local store=$1 procs=$2 mode=$3 i pids=()
  shift 3
  for ((i = 0; i < procs; i++)); do
    "$worker" "$(config "$store" "$procs" "$i")" "$mode" "$@" >"$tmp/out.$store.$procs.$mode.$i" &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i"; done
  cat "$tmp/out.$store.$procs.$mode".* | python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin if l.strip()]
done = sum(r["done"] for r in rows)
ms = max(r["ms"] for r in rows)
print("%d %.1f" % (done, done / (ms / 1000.0) if ms > 0 else 0))'
}

for procs in 1 4; do
  declare -A enq=() cla=()
  for store in journal redis; do
    read -r n1 r1 <<<"$(phase "$store" "$procs" bench_enqueue "$count")"
    read -r n2 r2 <<<"$(phase "$store" "$procs" bench_claim)"
    if [[ $n1 -ne $((procs * count)) || $n2 -ne $n1 ]]; then
      echo "bench.sh: $store x$procs: enqueued $n1, claimed and acked $n2" >&2
      exit 1
    fi
    enq[$store]=$r1
    cla[$store]=$r2
    printf '{"bench":"replay_store","store":"%s","processes":%d,"envelopes":%d,"enqueue_per_s":%s,"claim_ack_per_s":%s}\n' \
      "$store" "$procs" "$n1" "$r1" "$r2"
  done
  python3 -c '
import sys
p, ej, er, cj, cr = sys.argv[1:]
print("{\"bench\":\"replay_store_ratio\",\"processes\":%s,\"enqueue_redis_over_journal\":%.3f,\"claim_ack_redis_over_journal\":%.3f}" % (p, float(er) / float(ej), float(cr) / float(cj)))' \
    "$procs" "${enq[journal]}" "${enq[redis]}" "${cla[journal]}" "${cla[redis]}"
  unset enq cla
done
