#!/usr/bin/env bash
# Several proxy processes on one Redis replay queue (tests/redis/
# redis_worker.c), against the server the `redis` stage of scripts/test.sh
# started (SPI_REDIS_PORT, SPI_REDIS_DIR; without them: skipped, 77):
#   1. three processes share a queue; one holding leases is SIGKILLed: the
#      others claim and finish every envelope after the lease, each acked
#      exactly once, the killed one's with one failed attempt counted
#   2. Redis SIGKILLed and restarted (AOF, appendfsync always) during
#      enqueues: every enqueue that returned SPI_OK is there
#   3. Redis SIGSTOPped longer than the client timeout: every enqueue
#      returns SPI_OK within the timeout (into the fallback journal), and
#      after SIGCONT each envelope is in Redis exactly once
#   4. the same with the process SIGKILLed while Redis is stopped: the
#      next process on that fallback journal moves everything over, once
#   5. AUTH with a wrong password: spi_replay_open fails, saying so
# Every wait is bounded; every process started here is stopped by its id.
#
#   bash tests/redis/processes.sh build/tests/redis/redis_worker
set -euo pipefail

worker=$1
if [[ -z "${SPI_REDIS_PORT:-}" || -z "${SPI_REDIS_DIR:-}" ]]; then
  echo "processes.sh: needs SPI_REDIS_PORT and SPI_REDIS_DIR (the redis stage of scripts/test.sh)"
  exit 77
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
port=$SPI_REDIS_PORT
rdir=$SPI_REDIS_DIR
tmp=$(mktemp -d "${TMPDIR:-/tmp}/spotinfer-procs.XXXXXX")
started=()

cleanup() {
  local p
  for p in "${started[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${started[@]}"; do wait "$p" 2>/dev/null || true; done
  kill -CONT "$(cat "$rdir/redis.pid")" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

cli() { redis-cli -h 127.0.0.1 -p "$port" "$@"; }
fail() {
  echo "FAIL: $*"
  exit 1
}
note() { echo "-- $*"; }
redis_pid() { cat "$rdir/redis.pid"; }

# wait_for <seconds> <command...>: until the command succeeds.
wait_for() {
  local t=$1 i
  shift
  for ((i = 0; i < t * 20; i++)); do
    if "$@"; then return 0; fi
    sleep 0.05
  done
  return 1
}
count() { grep -c "^$1 " "$2" 2>/dev/null || true; }
at_least() { [[ $(count "$1" "$2") -ge $3 ]]; }

# config <prefix> <store_config extra> <replay extra>
config() {
  printf '{"store":"redis","store_config":{"address":"127.0.0.1:%s","key_prefix":"%s"%s}%s}' \
    "$port" "$1" "$2" "$3"
}
fast=',"timeout_ms":200,"connect_timeout_ms":200,"reconnect_min_ms":50,"reconnect_max_ms":200'

# ------------------------------------------------------------------ 1
note "1. three processes, one SIGKILLed while it holds leases"
p="procs:$$:1:"
c=$(config "$p" "" ',"lease_ms":1500')
"$worker" "$c" enqueue 0 300 >"$tmp/enq1" || fail "enqueue: $(tail -n 3 "$tmp/enq1")"
[[ $(count ok "$tmp/enq1") -eq 300 ]] || fail "300 enqueues"
"$worker" "$c" hold 20 1500 >"$tmp/hold" &
holder=$!
started+=("$holder")
wait_for 20 at_least claimed "$tmp/hold" 20 || fail "the holder did not claim 20"
"$worker" "$c" consume 1500 3000 >"$tmp/c2" &
c2=$!
started+=("$c2")
"$worker" "$c" consume 1500 3000 >"$tmp/c3" &
c3=$!
started+=("$c3")
kill -9 "$holder"
wait "$c2" || fail "consumer 2: $(tail -n 3 "$tmp/c2")"
wait "$c3" || fail "consumer 3: $(tail -n 3 "$tmp/c3")"
cat "$tmp/c2" "$tmp/c3" | awk '$1 == "acked" {print $2}' | sort >"$tmp/acked"
n=$(wc -l <"$tmp/acked")
u=$(sort -u "$tmp/acked" | wc -l)
[[ $n -eq 300 && $u -eq 300 ]] || fail "acked $n times, $u keys (want 300 and 300)"
for k in $(awk '$1 == "claimed" {print $2}' "$tmp/hold"); do
  grep -q "^acked $k 1\$" "$tmp/c2" "$tmp/c3" -h ||
    fail "$k (held by the killed process) not acked with 1 attempt"
done
[[ $(count acked "$tmp/c2") -gt 0 && $(count acked "$tmp/c3") -gt 0 ]] ||
  fail "one consumer did everything"
[[ $(cli HLEN "${p}keys") -eq 0 && $(cli ZCARD "${p}leases") -eq 0 ]] ||
  fail "keys or leases left in Redis"
note "ok: 300 acked once each ($(count acked "$tmp/c2") + $(count acked "$tmp/c3")), the 20 held ones after their lease"

# ------------------------------------------------------------------ 2
note "2. Redis SIGKILLed and restarted during enqueues"
p="procs:$$:2:"
c=$(config "$p" "$fast" "")
"$worker" "$c" enqueue 0 150 10 >"$tmp/enq2" &
w=$!
started+=("$w")
wait_for 30 at_least ok "$tmp/enq2" 40 || fail "no enqueues"
kill -9 "$(redis_pid)"
sleep 0.5
bash "$here/redis-server.sh" --restart "$rdir" >/dev/null
wait "$w" || fail "enqueuer: $(tail -n 3 "$tmp/enq2")"
[[ $(count ok "$tmp/enq2") -eq 150 ]] || fail "150 enqueues"
[[ $(count err "$tmp/enq2") -gt 0 ]] || fail "the outage was not seen"
missing=0
for k in $(awk '$1 == "ok" {print $2}' "$tmp/enq2"); do
  [[ $(cli HEXISTS "${p}keys" "$k") -eq 1 ]] || missing=$((missing + 1))
done
[[ $missing -eq 0 ]] || fail "$missing acknowledged enqueues lost"
[[ $(cli XLEN "${p}lane:2") -eq 150 ]] || fail "lane holds $(cli XLEN "${p}lane:2"), want 150"
note "ok: 150 acknowledged, all there after the restart ($(count err "$tmp/enq2") calls failed during the outage)"

# ------------------------------------------------------------------ 3
note "3. Redis SIGSTOPped longer than the timeout, fallback journal"
p="procs:$$:3:"
c=$(config "$p" "$fast" ",\"fallback\":\"journal\",\"dir\":\"$tmp/fb3\",\"fsync\":\"always\"")
"$worker" "$c" enqueue 0 100 10 >"$tmp/enq3" &
w=$!
started+=("$w")
wait_for 30 at_least ok "$tmp/enq3" 20 || fail "no enqueues"
kill -STOP "$(redis_pid)"
before=$(count ok "$tmp/enq3")
sleep 2.5
during=$(($(count ok "$tmp/enq3") - before))
held=$(du -sb "$tmp/fb3" | cut -f1)
kill -CONT "$(redis_pid)"
wait "$w" || fail "enqueuer: $(tail -n 3 "$tmp/enq3")"
[[ $(count ok "$tmp/enq3") -eq 100 && $(count err "$tmp/enq3") -eq 0 ]] ||
  fail "every enqueue should succeed: $(grep -m 3 '^err' "$tmp/enq3")"
[[ $during -gt 5 ]] || fail "only $during enqueues while Redis was stopped"
slowest=$(awk '$1 == "ok" {if ($3 > m) m = $3} END {printf "%d", m}' "$tmp/enq3")
# Bounded by the 200 ms timeout plus the fallback journal's fsync; the
# bound is loose so a loaded machine's fsync cannot fail it, and still far
# below the 2.5 s a call without a timeout would wait for SIGCONT.
[[ $slowest -le 1200 ]] || fail "an enqueue took $slowest ms (timeout 200 ms)"
"$worker" "$c" drain 100 >"$tmp/drain3" || fail "drain: $(cat "$tmp/drain3")"
[[ $(cli HLEN "${p}keys") -eq 100 && $(cli XLEN "${p}lane:2") -eq 100 ]] ||
  fail "Redis holds $(cli XLEN "${p}lane:2") entries for $(cli HLEN "${p}keys") keys, want 100 and 100"
note "ok: $during enqueues while stopped (slowest call $slowest ms, fallback dir $held bytes), 100 in Redis once each"

# ------------------------------------------------------------------ 4
note "4. the process SIGKILLed while Redis is stopped"
p="procs:$$:4:"
c=$(config "$p" "$fast" ",\"fallback\":\"journal\",\"dir\":\"$tmp/fb4\",\"fsync\":\"always\"")
kill -STOP "$(redis_pid)"
"$worker" "$c" enqueue 0 30 >"$tmp/enq4" &
w=$!
started+=("$w")
wait_for 30 at_least ok "$tmp/enq4" 30 || fail "enqueues while stopped: $(tail -n 2 "$tmp/enq4")"
kill -9 "$w" 2>/dev/null || true
wait "$w" 2>/dev/null || true
kill -CONT "$(redis_pid)"
"$worker" "$c" drain 30 >"$tmp/drain4" || fail "drain: $(cat "$tmp/drain4")"
[[ $(cli HLEN "${p}keys") -eq 30 && $(cli XLEN "${p}lane:2") -eq 30 ]] ||
  fail "Redis holds $(cli XLEN "${p}lane:2") for $(cli HLEN "${p}keys") keys, want 30"
note "ok: 30 kept by the fallback journal across SIGKILL, in Redis once each"

# ------------------------------------------------------------------ 5
note "5. AUTH with a wrong password"
cli ACL SETUSER "procs$$" on ">right-secret" "~*" "+@all" >/dev/null
c=$(config "procs:$$:5:" ",\"username\":\"procs$$\",\"password\":\"wrong-secret\"" "")
out=$("$worker" "$c" open)
cli ACL DELUSER "procs$$" >/dev/null
[[ "$out" == "open -1 "*"AUTH refused"*"WRONGPASS"* ]] || fail "open said: $out"
[[ "$out" != *wrong-secret* ]] || fail "the password is in the message"
note "ok: $out"
echo "processes.sh: all passed"
