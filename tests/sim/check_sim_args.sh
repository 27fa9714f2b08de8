#!/usr/bin/env bash
# examples/spotinfer_sim refuses bad options with status 2 and a message
# naming the option (or the bad value), before any run: numbers with
# trailing junk or a sign, a --requests or --rate outside its bounds,
# unknown --policies names, a cluster whose KV cache the simulator cannot
# hold; a run longer than the simulator keeps (status 1, with the
# reason); and output files it cannot write (status 1, with the reason).
# Quick: every run here is refused or tiny.
#
#   check_sim_args.sh <spotinfer_sim>
set -euo pipefail
sim=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# refused <status> <text the message holds> <argument>...
refused() {
  local want_rc=$1 want=$2 rc
  shift 2
  set +e
  timeout 60 "$sim" --quiet "$@" >/dev/null 2>"$tmp/err"
  rc=$?
  set -e
  [[ $rc -eq $want_rc ]] || fail "$* should exit $want_rc, got $rc ($(cat "$tmp/err"))"
  grep -qF -- "$want" "$tmp/err" || fail "$*: no \"$want\" in: $(cat "$tmp/err")"
}

# Whole numbers: no sign, no junk, --requests at most 10,000,000.
refused 2 'bad value for --requests: -5' --requests -5
refused 2 'bad value for --requests: 20000000' --requests 20000000
refused 2 'bad value for --requests' --requests 10x
refused 2 'bad value for --limit: -1' --limit -1
refused 2 'bad value for --seed: -3' --seed -3
refused 2 'bad value for --seed' --seed ' 3'
# Numbers with nothing after them.
refused 2 'bad value for --rate: 10x' --rate 10x
refused 2 'bad value for --horizon: 5abc' --horizon 5abc
refused 2 'bad value for --mix: 1,1,1junk' --mix 1,1,1junk
refused 2 'bad value for --mix' --mix 1,1
refused 2 'bad value for --mix' --mix 1,1,1,1
refused 2 'bad value for --mix' --mix 0,0,0
# --rate from 0.01 to 1e6 a second: 1e-300 once overflowed the spot
# capacity's allocation, 1e-9 took all memory.
refused 2 'bad value for --rate: 1e-300' --rate 1e-300
refused 2 'bad value for --rate: 1e-9' --rate 1e-9
refused 2 'bad value for --rate: inf' --rate inf
# Every --policies name is checked.
refused 2 'unknown policy "bogus"' --policies bogus
refused 2 'unknown policy ""' --policies library,,greedy
refused 2 'unknown policy "sglan"' --policies library,sglan
refused 2 'unknown policy ""' --policies library,
# The whole cluster's KV blocks are bounded: 11 x 1e8 once looped forever
# sizing the pooled cache, 10 x 1e8 aborted without a word.
refused 2 'more than the 16777216 the simulator holds' --requests 10 --policies library \
  --replicas 11 --on-demand 11 --kv-blocks 100000000
refused 2 'more than the 16777216 the simulator holds' --requests 10 --policies library \
  --replicas 10 --on-demand 10 --kv-blocks 100000000
g='"zone":"z1","instance_type":"t","usd_per_hour":1,"prefill_tokens_per_s":1000,"decode_tokens_per_s":50,"max_batch":4'
printf '{"groups":[{"pool":"on_demand",%s,"count":20,"kv_blocks":100000000}]}' "$g" >"$tmp/big.json"
refused 2 'groups[0].kv_blocks: the cluster would exceed 16777216 KV blocks' --requests 10 \
  --policies library --cluster "$tmp/big.json"
# A run is at most 2e7 simulated seconds: a trace of two requests ten
# years apart once took all memory for its spot capacity.
printf 'timestamp,input_tokens,output_tokens\n2010-01-01 00:00:00,100,10\n2020-01-01 00:00:00,100,10\n' \
  >"$tmp/decade.csv"
refused 1 'more than the 20000000 the simulator runs' --trace "$tmp/decade.csv" --policies library
refused 1 'more than the 20000000 the simulator runs' --requests 1000000 --rate 0.01 \
  --policies library

# Output files that cannot be written: the reason, and status 1.
refused 1 'spotinfer_sim: --json /dev/full: No space left on device' --requests 20 --policies library \
  --json /dev/full
refused 1 'spotinfer_sim: --svg /dev/full: No space left on device' --requests 20 --policies library \
  --svg /dev/full
refused 1 "spotinfer_sim: --json $tmp/no/such/dir.json: No such file or directory" --requests 20 \
  --policies library --json "$tmp/no/such/dir.json"
refused 1 "spotinfer_sim: --svg $tmp/no/such/dir.svg: No such file or directory" --requests 20 \
  --policies library --svg "$tmp/no/such/dir.svg"
set +e
"$sim" --quiet --requests 20 --policies library >/dev/full 2>"$tmp/err"
rc=$?
set -e
[[ $rc -eq 1 ]] || fail "tables to /dev/full should exit 1, got $rc"
grep -qF 'standard output' "$tmp/err" || fail "tables to /dev/full: $(cat "$tmp/err")"

# A good run still goes.
"$sim" --quiet --requests 50 --policies library,greedy >/dev/null || fail "a small run exited $?"
echo "sim argument checks passed"
