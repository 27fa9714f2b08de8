#!/usr/bin/env bash
# Checks of examples/spotinfer_sim: conservation (every request completes, or
# is reported lost, expired or still queued at the horizon, and none is
# lost), determinism (same seed, same bytes), the oracle bound (no policy's
# hit rate above the unlimited-cache oracle) on every generator family, the
# replay scenario and the shared traces; termination when spot zones never
# come back; node-count spot traces; spot-only and on-demand-only clusters;
# re-offers of refused requests bounded under overload;
# --config; classes with no requests; bad trace lines counted rather than
# fatal; a --cluster file (and bad ones refused); the run's window in the
# shared spot traces (drawn from the seed, or --spot-start: the capacity the
# traces have there); the shape of --speed's lines; the Mooncake trace over
# 32 replicas within a token-load imbalance of 1.3 (1.373 when a shared
# document's readers counted as one conversation; 1.188 now); the targets
# program's lines as tests/sim/targets_report.py reads them.
#
#   check_sim.sh <spotinfer_sim> <shared data dir>
set -euo pipefail
sim=$1
data=${2:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# The simulator exits 3 when a request is lost or conservation breaks.
"$sim" --quiet --requests 6000 --rate 200 --seed 7 --json "$tmp/a.json" --svg "$tmp/a.svg" >"$tmp/a.txt" \
  || fail "generator run exited $?"
"$sim" --quiet --requests 6000 --rate 200 --seed 7 --json "$tmp/b.json" >"$tmp/b.txt" \
  || fail "second generator run exited $?"
cmp -s "$tmp/a.txt" "$tmp/b.txt" || fail "same seed, different output"
cmp -s "$tmp/a.json" "$tmp/b.json" || fail "same seed, different JSON"
npol=8 # seven policies and the all-on-demand baseline
[[ $(grep -c 'conservation ok' "$tmp/a.txt") -eq $npol ]] || fail "conservation not ok for every policy"
grep -q 'BROKEN' "$tmp/a.txt" && fail "conservation broken"
grep -q '"lost":[1-9]' "$tmp/a.json" && fail "requests lost"
grep -q '"replays":[1-9]' "$tmp/a.json" || fail "no replay was exercised"
# The chart: well-formed XML, the four panels, cost labels that differ
# between policies (they once all read 0.01), and a timeline whose event
# lanes hold the library run's notices and replays (the JSON's totals).
python3 - "$tmp/a.svg" "$tmp/a.json" <<'PY' || fail "chart check failed"
import sys
import xml.etree.ElementTree as ET
ns = "{http://www.w3.org/2000/svg}"
root = ET.parse(sys.argv[1]).getroot()
panels = {g.get("id"): g for g in root.iter(ns + "g")}
want = ["panel-cost", "panel-hits", "panel-ttft", "panel-timeline"]
missing = [p for p in want if p not in panels]
assert not missing, f"missing panels: {missing}"
costs = [t.text for t in panels["panel-cost"].iter(ns + "text")
         if "cost" in (t.get("class") or "").split()]
assert len(costs) == 8, f"expected 8 cost labels, got {costs}"
assert len(set(c.split()[0] for c in costs)) > 1, f"cost labels all identical: {costs}"
import json
lib = next(p for p in json.load(open(sys.argv[2]))["policies"] if p["name"] == "library")
labels = [t.text or "" for t in panels["panel-timeline"].iter(ns + "text")]
for kind in ("notices", "replays"):
    shown = [int(l.split()[1]) for l in labels if l.startswith(kind + " ")]
    assert shown == [lib[kind]], f"timeline {kind} {shown}, library run {lib[kind]}"
assert lib["notices"] > 0, "no notice in the library run"
PY

# Every policy's hit rate is at most the oracle's (a class's may be above
# it: the oracle is over all the requests).
oracle_bound() {
  python3 - "$1" <<'PY' || fail "a hit rate above the oracle in $1"
import json, sys
d = json.load(open(sys.argv[1]))
oracle = d["ceilings"]["oracle_hit"]
bad = [(p["name"], p["hit"]) for p in d["policies"] if p["hit"] > oracle + 1e-9]
for name, hit in bad:
    print(f"{name}: hit rate {hit} above the oracle {oracle}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
}
oracle_bound "$tmp/a.json"

# tests/sim/targets_report.py on hand-made lines: a hit line below 95 % of
# the pooled ceiling counts as a miss and fails --strict; a baseline with
# more hits at no worse imbalance is a miss too; input that is not the
# targets program's exits 2.
report=$(dirname "${BASH_SOURCE[0]}")/targets_report.py
hit() { printf '{"target":"hit","trace":"t","policy":"%s","hit_pct":%s,"pooled_ceiling_pct":50,"hit_of_pooled_pct":%s,"token_imbalance":%s}\n' "$@"; }
{ hit library 48 96 1.1; hit greedy 47 94 1.0
  printf '{"target":"spot","trace":"t","window":"drawn","seed":3,"policy":"library","savings_of_max_pct":91,"savings_of_reachable_pct":95,"lost":0,"gold_p95_vs_calm":1.0}\n'
} >"$tmp/r1.jsonl"
{ hit library 46 92 1.1; hit sglang 49 98 1.3; } >"$tmp/r2.jsonl"
python3 "$report" --strict "$tmp/r1.jsonl" >"$tmp/r.txt" || fail "targets_report --strict on lines that meet the bars"
grep -q '^hit lines 1/1; spot lines (drawn) 1/1 of the class-feasible maximum, 1/1' "$tmp/r.txt" || fail "targets_report: $(cat "$tmp/r.txt")"
rc=0; python3 "$report" --strict "$tmp/r1.jsonl" "$tmp/r2.jsonl" >"$tmp/r.txt" || rc=$?
[[ $rc -eq 1 ]] && grep -q 'hit 1/2 (r2.jsonl:92.0@1.100)' "$tmp/r.txt" || fail "targets_report: a miss not reported ($rc): $(cat "$tmp/r.txt")"
{ hit library 48 96 1.2; hit epp 49 97 1.2; } >"$tmp/r3.jsonl"
# (Into a file, not a pipe: grep -q stops reading at its first match, and
# under pipefail the report's broken pipe would fail the check.)
python3 "$report" "$tmp/r3.jsonl" >"$tmp/r.txt" || fail "targets_report exited $?"
grep -q '^hit lines 0/1' "$tmp/r.txt" || fail "targets_report: a baseline ahead at no worse imbalance not a miss: $(cat "$tmp/r.txt")"
printf 'not json\n' >"$tmp/r4.jsonl"
rc=0; python3 "$report" "$tmp/r4.jsonl" 2>/dev/null || rc=$?
[[ $rc -eq 2 ]] || fail "targets_report on bad input exited $rc, not 2"

# A different seed gives a different run.
"$sim" --quiet --requests 2000 --seed 8 --policies library >"$tmp/c.txt" || fail "seed 8 run"
"$sim" --quiet --requests 2000 --seed 9 --policies library >"$tmp/d.txt" || fail "seed 9 run"
cmp -s "$tmp/c.txt" "$tmp/d.txt" && fail "different seeds, same output"

# Bad lines are counted and skipped.
printf '{"timestamp": 0, "input_length": 1024, "output_length": 8, "hash_ids": [1, 2]}\nnot json\n{"timestamp": 5}\n{"timestamp": 9, "input_length": 1024, "output_length": 8, "hash_ids": [1, 3]}\n' >"$tmp/bad.jsonl"
"$sim" --quiet --trace "$tmp/bad.jsonl" >"$tmp/bad.txt" || fail "run on a trace with bad lines"
grep -q '2 bad lines skipped' "$tmp/bad.txt" || fail "bad lines not reported"
# Traces shaped like ones ../shared/data lacks (tests/sim/make_trace.py):
# same seed, same bytes; read with no bad line; the chat shape, every
# prompt behind one global block, still has conversations of each class
# (read as one conversation it had a single class).
shapes=$(dirname "${BASH_SOURCE[0]}")/make_trace.py
for shape in chat agents; do
  python3 "$shapes" "$shape" --requests 800 --seconds 240 --seed 3 >"$tmp/$shape.jsonl" \
    || fail "make_trace.py $shape exited $?"
  python3 "$shapes" "$shape" --requests 800 --seconds 240 --seed 3 | cmp -s - "$tmp/$shape.jsonl" \
    || fail "make_trace.py $shape: same seed, different trace"
  "$sim" --quiet --trace "$tmp/$shape.jsonl" --replicas 8 --on-demand 8 --policies library \
    >"$tmp/$shape.txt" || fail "run on the $shape shape exited $?"
  grep -q 'bad lines' "$tmp/$shape.txt" && fail "$shape shape: bad lines"
  [[ $(grep -c 'conservation ok' "$tmp/$shape.txt") -eq 2 ]] || fail "$shape shape: conservation"
done
for c in gold silver bronze; do
  grep -Eq "^\| library \| $c \| [1-9]" "$tmp/chat.txt" || fail "chat shape: no $c requests"
done
printf 'not a spot trace' >"$tmp/bad_spot.json"
set +e
"$sim" --quiet --requests 100 --spot-trace "$tmp/bad_spot.json" >/dev/null 2>&1
rc=$?
set -e
[[ $rc -eq 1 ]] || fail "a malformed spot trace should be refused with status 1, got $rc"

# A cluster file: groups per pool, zone and instance type.
cluster=$(dirname "$0")/../../examples/sim/cluster.example.json
"$sim" --quiet --requests 6000 --rate 200 --seed 3 --cluster "$cluster" --json "$tmp/k1.json" >"$tmp/k1.txt" \
  || fail "cluster run exited $?"
"$sim" --quiet --requests 6000 --rate 200 --seed 3 --cluster "$cluster" --json "$tmp/k2.json" >"$tmp/k2.txt" \
  || fail "second cluster run exited $?"
cmp -s "$tmp/k1.txt" "$tmp/k2.txt" || fail "cluster run: same seed, different output"
cmp -s "$tmp/k1.json" "$tmp/k2.json" || fail "cluster run: same seed, different JSON"
[[ $(grep -c 'conservation ok' "$tmp/k1.txt") -eq $npol ]] || fail "cluster run: conservation"
grep -q '"lost":[1-9]' "$tmp/k1.json" && fail "cluster run: requests lost"
grep -q 'cluster: 40 replicas in 5 groups' "$tmp/k1.txt" || fail "cluster run: groups not reported"
oracle_bound "$tmp/k1.json"

# Bad cluster files are refused with status 2 and the key path.
bad_cluster() {
  local want=$1 body=$2
  printf '%s' "$body" >"$tmp/bad_cluster.json"
  set +e
  "$sim" --quiet --requests 100 --cluster "$tmp/bad_cluster.json" >/dev/null 2>"$tmp/bad_cluster.err"
  local rc=$?
  set -e
  [[ $rc -eq 2 ]] || fail "bad cluster ($want) should exit 2, got $rc"
  grep -q -- "$want" "$tmp/bad_cluster.err" || fail "bad cluster: no \"$want\" in: $(cat "$tmp/bad_cluster.err")"
}
g='"pool":"on_demand","zone":"z1","instance_type":"t","count":2,"usd_per_hour":1,"prefill_tokens_per_s":1000,"decode_tokens_per_s":50,"kv_blocks":64'
bad_cluster 'groups\[0\].colour: unknown key' "{\"groups\":[{$g,\"max_batch\":4,\"colour\":1}]}"
bad_cluster 'groups\[0\].max_batch: required' "{\"groups\":[{$g}]}"
bad_cluster 'groups\[0\].max_batch: must be a number' "{\"groups\":[{$g,\"max_batch\":\"4\"}]}"
bad_cluster 'groups\[0\].max_batch: must be an integer' "{\"groups\":[{$g,\"max_batch\":0}]}"
bad_cluster 'malformed JSON' '{"groups":['
bad_cluster 'groups\[0\].on_demand_usd_per_hour: required' '{"groups":[{"pool":"spot","zone":"z1","instance_type":"t","count":2,"usd_per_hour":1,"prefill_tokens_per_s":1000,"decode_tokens_per_s":50,"kv_blocks":64,"max_batch":4}]}'

# Every generator family and the replay scenario: conservation, no loss,
# determinism and the oracle bound hold on each.
for fam in mixed global-prompt tenants long-sessions agents bursts long-gen documents; do
  "$sim" --quiet --requests 2500 --rate 60 --seed 5 --family "$fam" --json "$tmp/f1.json" >"$tmp/f1.txt" \
    || fail "family $fam exited $?"
  "$sim" --quiet --requests 2500 --rate 60 --seed 5 --family "$fam" --json "$tmp/f2.json" >"$tmp/f2.txt" \
    || fail "family $fam second run exited $?"
  cmp -s "$tmp/f1.txt" "$tmp/f2.txt" || fail "family $fam: same seed, different output"
  [[ $(grep -c 'conservation ok' "$tmp/f1.txt") -eq $npol ]] || fail "family $fam: conservation"
  grep -q '"lost":[1-9]' "$tmp/f1.json" && fail "family $fam: requests lost"
  oracle_bound "$tmp/f1.json"
done
"$sim" --quiet --scenario replay --policies library,greedy --json "$tmp/r.json" >"$tmp/r.txt" \
  || fail "replay scenario exited $?"
[[ $(grep -c 'conservation ok' "$tmp/r.txt") -eq 3 ]] || fail "replay scenario: conservation"
grep -q '"lost":[1-9]' "$tmp/r.json" && fail "replay scenario: requests lost"
oracle_bound "$tmp/r.json"
# Replays happen (at least 100 replayed requests for the library) and their
# success is measured on them.
replayed=$(grep -o '"name":"library"[^{]*"replayed":[0-9]*' "$tmp/r.json" | grep -o '[0-9]*$')
[[ ${replayed:-0} -ge 100 ]] || fail "replay scenario: only ${replayed:-0} replayed requests"
grep -q '"name":"library".*"replay_success":[01]\.' "$tmp/r.json" || fail "replay success not measured"

# --no-interruptions: the same run with zones that never lose capacity: no
# notice, no replay.
"$sim" --quiet --scenario replay --policies library --no-interruptions --json "$tmp/calm.json" >"$tmp/calm.txt" \
  || fail "calm replay scenario exited $?"
grep -q '"notices":[1-9]' "$tmp/calm.json" && fail "--no-interruptions still sent notices"
grep -q '"replays":[1-9]' "$tmp/calm.json" && fail "--no-interruptions still replayed"

# Seed 103 of the replay scenario has every spot zone down at once for a
# while: silver falling back to on-demand takes only the spare part of its
# batches (policy.fallback_batch_share), so gold's p95 time to first token
# stays within 10 % of the calm run's (1.47x when it took whole batches).
"$sim" --quiet --scenario replay --seed 103 --policies library --json "$tmp/g.json" >/dev/null \
  || fail "replay scenario, seed 103, exited $?"
"$sim" --quiet --scenario replay --seed 103 --policies library --no-interruptions \
  --json "$tmp/gc.json" >/dev/null || fail "calm replay scenario, seed 103, exited $?"
python3 - "$tmp/g.json" "$tmp/gc.json" <<'PY' || fail "spot all down (seed 103): gold p95 TTFT"
import json, sys
g, calm = (json.load(open(f))["policies"][0]["classes"]["gold"]["ttft_ms"][1]
           for f in sys.argv[1:])
print(f"seed 103: gold p95 TTFT {g} ms against {calm} ms calm", file=sys.stderr)
sys.exit(g > 1.1 * calm)
PY

# The other end of the dial: at fallback_batch_share 0 the classes below
# gold never take on-demand while spot is gone, so gold's p95 stays the
# calm run's (within 2 %) even where both spot zones are down for most of
# the run (8 on-demand + 8 spot in two GCP zones, bursts, seed 101: 1.46x
# at the default share; docs/routing.md).
zones=$(dirname "$0")/../../examples/sim/cluster.gcp-zones.json
printf '{"policy": {"fallback_batch_share": 0}}' >"$tmp/share0.json"
for calm in "" --no-interruptions; do
  "$sim" --quiet --cluster "$zones" --family bursts --seed 101 --requests 5000 \
    --rate 20 --policies library --config "$tmp/share0.json" $calm \
    --json "$tmp/s0${calm:+c}.json" >/dev/null || fail "share 0 run ($calm) exited $?"
done
python3 - "$tmp/s0.json" "$tmp/s0c.json" <<'PY' || fail "share 0: gold p95 TTFT moved"
import json, sys
g, calm = (json.load(open(f))["policies"][0]["classes"]["gold"]["ttft_ms"][1]
           for f in sys.argv[1:])
print(f"share 0, both zones down: gold p95 TTFT {g} ms against {calm} ms calm",
      file=sys.stderr)
sys.exit(g > 1.02 * calm)
PY

# A pool that long generations keep full: a request there waits for a batch
# slot, and the TTFT model counts that wait (prefill_model.h), so requests
# go to the shorter queues. Gold's p95 TTFT is 11.4 s and silver's 13.2 s
# when a full batch reads as no wait; counted, over seeds 106-113 gold's
# is 3.1-4.9 s and silver's 4.3-6.2 s (3.1 and 4.4 s at this seed). The
# bars sit between the two, not at one seed's figure: at 4 and 6 s, four
# of those eight seeds failed, and so would any change of decisions that
# moved this seed's p95 as far as the seeds move it.
"$sim" --quiet --family long-gen --requests 5000 --rate 20 --replicas 8 --on-demand 8 \
  --seed 106 --policies library --json "$tmp/lg.json" >/dev/null || fail "long-gen run exited $?"
python3 - "$tmp/lg.json" <<'PY' || fail "full batches: gold or silver p95 TTFT"
import json, sys
c = json.load(open(sys.argv[1]))["policies"][0]["classes"]
g, s = c["gold"]["ttft_ms"][1], c["silver"]["ttft_ms"][1]
print(f"full batches: gold p95 TTFT {g} ms, silver {s} ms", file=sys.stderr)
sys.exit(g > 6500 or s > 8500)
PY
# The classes' hit rates are shares of the same blocks: each in [0, 1],
# and the run's hit rate, their weighted mean, between the least and most.
python3 - "$tmp/lg.json" <<'PY' || fail "per-class hit rates"
import json, sys
p = json.load(open(sys.argv[1]))["policies"][0]
h = [p["classes"][k]["hit"] for k in ("gold", "silver", "bronze")]
sys.exit(not (all(0 <= x <= 1 for x in h) and min(h) <= p["hit"] <= max(h)))
PY

# Spot zones that go away and never come back, on a spot-only cluster: the
# run ends at its horizon with the unplaceable traffic counted, not looping.
printf '{"metadata": {"gap_seconds": 30}, "data": [1, 1, 0]}' >"$tmp/never.json"
sed 's/\[1, 1, 0\]/[1, 1, '"$(printf '0, %.0s' {1..400})"'0]/' "$tmp/never.json" >"$tmp/never2.json"
timeout 600 "$sim" --quiet --requests 400 --rate 4 --replicas 6 --on-demand 0 --horizon 120 \
  --spot-start 0 --spot-trace "gcp:$tmp/never2.json" --policies library,round-robin --json "$tmp/n.json" >"$tmp/n.txt" \
  || fail "never-back run exited $? (or did not end)"
[[ $(grep -c 'conservation ok' "$tmp/n.txt") -eq 3 ]] || fail "never-back: conservation"
grep -q '"at_horizon":[1-9]' "$tmp/n.json" || fail "never-back: nothing reported still queued at the horizon"
grep -q 'still queued at the horizon' "$tmp/n.txt" || fail "never-back: table does not say what was left"

# A node-count trace: a zone of 4 replicas drops from 4 nodes to 1, so
# exactly 3 replicas get notices.
printf '{"metadata": {"gap_seconds": 60}, "data": [4, 4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]}' >"$tmp/nodes.json"
"$sim" --quiet --requests 2000 --rate 20 --replicas 5 --on-demand 1 --spot-start 0 \
  --spot-trace "aws:$tmp/nodes.json" \
  --policies library --json "$tmp/nc.json" >"$tmp/nc.txt" || fail "node-count run exited $?"
grep -q 'node counts' "$tmp/nc.txt" || fail "node-count trace not recognised"
[[ $(grep -o '"name":"library"[^{]*"notices":[0-9]*' "$tmp/nc.json" | grep -o '[0-9]*$') -eq 3 ]] \
  || fail "losing 3 of 4 nodes should notice 3 replicas: $(grep -o '"notices":[0-9]*' "$tmp/nc.json" | head -1)"

# On-demand-only: nothing on spot, nothing queued for spot that never comes.
"$sim" --quiet --requests 2000 --rate 40 --replicas 8 --on-demand 8 --json "$tmp/od.json" >"$tmp/od.txt" \
  || fail "on-demand-only run exited $?"
[[ $(grep -c 'conservation ok' "$tmp/od.txt") -eq $npol ]] || fail "on-demand-only: conservation"
grep -q '"at_horizon":[1-9]' "$tmp/od.json" && fail "on-demand-only: traffic left queued"
grep -q ' [1-9][0-9]* spot / ' "$tmp/od.txt" && fail "on-demand-only: spot placements"

# Overload: four replicas for traffic that needs many more. Requests shed
# are offered again with a client's backoff, so re-offers stay a few per
# request (a fixed 500 ms made 34 a request here, and an hour-long
# overloaded run did work in the square of its length).
"$sim" --quiet --family long-sessions --requests 4000 --rate 250 --replicas 4 --on-demand 4 \
  --policies library >"$tmp/ov.txt" || fail "overloaded run exited $?"
ov=$(grep '^library:' "$tmp/ov.txt" | grep -o '[0-9]* requeues' | grep -o '^[0-9]*')
[[ -n $ov && $ov -gt 0 ]] || fail "overloaded run: nothing was refused, the check checks nothing"
((ov <= 5 * 4000)) || fail "overloaded run: $ov re-offers for 4000 requests"

# A class with no requests shows n/a, not a passed SLO.
"$sim" --quiet --requests 1500 --mix 0,1,1 --policies library --json "$tmp/na.json" >"$tmp/na.txt" \
  || fail "no-gold run exited $?"
grep -q '| library | gold | 0 | n/a | n/a |' "$tmp/na.txt" || fail "empty class not shown as n/a"
grep -q '"gold_p95_ttft":null' "$tmp/na.json" || fail "empty class SLO not null in JSON"

# --config: a library config the runs start from; a bad one is refused
# with the key path.
printf '{"cost":{"spot_usd_per_gpu_hour":0.5,"on_demand_usd_per_gpu_hour":9}}' >"$tmp/cfg.json"
"$sim" --quiet --requests 1500 --policies library --config "$tmp/cfg.json" >"$tmp/cfg.txt" \
  || fail "--config run exited $?"
cmp -s "$tmp/cfg.txt" <("$sim" --quiet --requests 1500 --policies library) \
  && fail "--config changed nothing"
printf '{"router":{"no_such_key":1}}' >"$tmp/badcfg.json"
set +e
"$sim" --quiet --requests 100 --policies library --config "$tmp/badcfg.json" >/dev/null 2>"$tmp/badcfg.err"
rc=$?
set -e
[[ $rc -ne 0 ]] || fail "a bad --config was accepted"
grep -q 'no_such_key' "$tmp/badcfg.err" || fail "bad --config: no key path in: $(cat "$tmp/badcfg.err")"

# The shared traces, when present.
if [[ -n $data && -f $data/traces/mooncake_synthetic_trace.jsonl ]]; then
  "$sim" --quiet --trace "$data/traces/mooncake_synthetic_trace.jsonl" --limit 1500 \
    --spot-trace "$data/spot/gcp-c3-preemption-2023-04/us-central1-a_c3-88.json" \
    --spot-trace "$data/spot/aws-v100-availability-2023-02/us-east-2a_v100_1.json" \
    --json "$tmp/m.json" >"$tmp/m.txt" || fail "Mooncake run exited $?"
  oracle_bound "$tmp/m.json"
  # 32 replicas: a document many read is not one conversation (its readers
  # count alone once another went on from it), so the replica holding it
  # stays near its share; read as turns of one conversation, token-load
  # imbalance was 1.37-1.76 here.
  "$sim" --quiet --trace "$data/traces/mooncake_synthetic_trace.jsonl" --seed 1 \
    --replicas 32 --on-demand 32 --kv-blocks 1024 --policies library \
    --json "$tmp/m32.json" >/dev/null || fail "Mooncake 32-replica run exited $?"
  python3 -c '
import json, sys
lib = next(p for p in json.load(open(sys.argv[1]))["policies"] if p["name"] == "library")
sys.exit(0 if lib["imbalance"] <= 1.3 else 1)' "$tmp/m32.json" \
    || fail "Mooncake, 32 replicas: token-load imbalance of the library over 1.3"
  "$sim" --quiet --trace "$data/traces/azure_llm_code_2023.csv" --limit 1500 \
    --spot-trace "$data/spot/aws-v100-availability-2023-02/us-west-2b_v100_1.json" \
    --policies library,round-robin >"$tmp/z.txt" || fail "Azure run exited $?"
  [[ $(grep -c 'conservation ok' "$tmp/z.txt") -eq 3 ]] || fail "Azure conservation"
  # Any capacity series can stand for an Azure zone: Scheduled Events
  # Preempt notices with a 30 s lead (the start puts a take-away in range).
  "$sim" --quiet --requests 6000 --rate 200 --spot-start 2500 \
    --spot-trace "azure:$data/spot/aws-v100-availability-2023-02/us-east-2a_v100_1.json" \
    --json "$tmp/az.json" >"$tmp/az.txt" || fail "azure spot run exited $?"
  grep -q 'us-east-2a (azure, 30 s notice, ' "$tmp/az.txt" || fail "azure zone not reported"
  [[ $(grep -c 'conservation ok' "$tmp/az.txt") -eq $npol ]] || fail "azure run: conservation"
  grep -q '"lost":[1-9]' "$tmp/az.json" && fail "azure run: requests lost"
  grep -q '"notices":[1-9]' "$tmp/az.json" || fail "azure run: no notice was handled"
  # With a cluster file the traces drive its spot zones in order.
  "$sim" --quiet --requests 3000 --cluster "$cluster" \
    --spot-trace "aws:$data/spot/aws-v100-availability-2023-02/us-west-2b_v100_1.json" \
    --spot-trace "azure:$data/spot/aws-v100-availability-2023-02/us-east-2a_v100_1.json" \
    --spot-trace "gcp:$data/spot/gcp-c3-preemption-2023-04/us-central1-a_c3-88.json" \
    >"$tmp/kz.txt" || fail "cluster run on shared spot traces exited $?"
  grep -q 'us-west-2b (azure, 30 s notice, ' "$tmp/kz.txt" || fail "cluster zones not tied to traces in order"
  # Where a run sits in the spot traces: drawn from the seed alone (the
  # same seed, the same window and bytes; another seed, another window),
  # reported in the text and the JSON, with conservation, no loss and the
  # oracle bound on the drawn windows.
  spot_all=()
  for f in "$data"/spot/aws-*/*.json; do spot_all+=(--spot-trace "aws:$f"); done
  for f in "$data"/spot/gcp-*/*.json; do spot_all+=(--spot-trace "gcp:$f"); done
  run_w() {
    "$sim" --quiet --trace "$data/traces/mooncake_synthetic_trace.jsonl" --limit 1500 \
      --replicas 16 --on-demand 4 "${spot_all[@]}" "$@"
  }
  run_w --seed 4 --json "$tmp/w1.json" >"$tmp/w1.txt" || fail "drawn window run exited $?"
  run_w --seed 4 --json "$tmp/w2.json" >"$tmp/w2.txt" || fail "second drawn window run exited $?"
  cmp -s "$tmp/w1.txt" "$tmp/w2.txt" || fail "drawn window: same seed, different output"
  cmp -s "$tmp/w1.json" "$tmp/w2.json" || fail "drawn window: same seed, different JSON"
  [[ $(grep -c 'conservation ok' "$tmp/w1.txt") -eq $npol ]] || fail "drawn window: conservation"
  grep -q '"lost":[1-9]' "$tmp/w1.json" && fail "drawn window: requests lost"
  oracle_bound "$tmp/w1.json"
  grep -q 'into the spot traces (drawn from the seed)' "$tmp/w1.txt" || fail "drawn window not reported"
  run_w --seed 5 --policies library --json "$tmp/w3.json" >"$tmp/w3.txt" || fail "seed 5 window run"
  # The start is in [0, longest trace), and --spot-start S gives every zone
  # the capacity its trace has at S (a shorter trace wraps); S just before a
  # zone loses its capacity sends notices through the library.
  python3 - "$tmp" "$data" "${spot_all[@]}" <<'PY' >"$tmp/starts.txt" || fail "drawn window: start"
import json, sys
tmp, data, args = sys.argv[1], sys.argv[2], sys.argv[3:]
traces = []
for a in args[1::2]:
    d = json.load(open(a.split(":", 1)[1]))
    traces.append((d["metadata"]["gap_seconds"], d["data"]))
longest = max(g * len(v) for g, v in traces)
w1 = json.load(open(f"{tmp}/w1.json"))["spot_window"]
w3 = json.load(open(f"{tmp}/w3.json"))["spot_window"]
assert w1["drawn"] and w3["drawn"], (w1, w3)
assert 0 <= w1["start_s"] < longest and 0 <= w3["start_s"] < longest, (w1, w3, longest)
assert w1["start_s"] != w3["start_s"], "seeds 4 and 5 drew the same window"
def up(k, s):
    g, v = traces[k]
    return v[int(s // g) % len(v)] > 0
# A start where the first two zones differ, and one a minute before the
# second zone (195 s ticks) goes down while the others stay as they are.
g0, v0 = traces[0]
mixed = next(i for i in range(len(v0)) if v0[i] > 0 and traces[1][1][i] == 0)
_, v1 = traces[1]
drop = next(i for i in range(1, len(v1)) if v1[i - 1] > 0 and v1[i] == 0 and i * g0 > 3600)
for s in (mixed * g0 + 7, drop * g0 - 60):
    print(s, " ".join(str(int(up(k, s))) for k in range(len(traces))))
PY
  while read -r start want; do
    run_w --seed 4 --spot-start "$start" --policies library --json "$tmp/s.json" >"$tmp/s.txt" \
      || fail "--spot-start $start exited $?"
    grep -q "starts $start s .*(--spot-start)" "$tmp/s.txt" || fail "--spot-start $start not reported"
    got=$(python3 -c 'import json,sys; w=json.load(open(sys.argv[1]))["spot_window"]; print(" ".join(str(int(z["up_at_start"] > 0)) for z in w["zones"]))' "$tmp/s.json")
    [[ $got == "$want" ]] || fail "--spot-start $start: zones up $got, the traces say $want"
    [[ $(grep -c 'conservation ok' "$tmp/s.txt") -eq 2 ]] || fail "--spot-start $start: conservation"
    grep -q '"lost":[1-9]' "$tmp/s.json" && fail "--spot-start $start: requests lost"
  done <"$tmp/starts.txt"
  # The second start is a minute before a zone goes: its replicas get notices.
  grep -q '"name":"library".*"notices":[1-9]' "$tmp/s.json" || fail "no notice when a zone went down mid-run"
  # --speed: one benchmark line per trace and set-up (three for each trace,
  # two for the generator), each with a positive rate.
  "$sim" --speed "$data" --limit 300 --requests 300 >"$tmp/speed.txt" 2>&1 \
    || fail "--speed exited $?"
  python3 - "$tmp/speed.txt" "$(ls "$data/traces" | grep -c -E '\.(csv|jsonl)$')" <<'PY' || fail "--speed lines"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
assert len(rows) == 3 * int(sys.argv[2]) + 2, len(rows)
for r in rows:
    assert r["bench"] == "sim_speed" and r["requests"] > 0, r
    assert r["requests_per_loop_cpu_s"] >= r["requests_per_loop_cpu_s_median"] > 0, r
PY
  # The targets program, one family on a short run, read by
  # tests/sim/targets_report.py: every line counted where it belongs (600
  # requests are too few for the bars, so only the shape is checked here).
  "$sim" --targets "$data" --family long-gen --requests 600 --seed 2 >"$tmp/t.jsonl" \
    || fail "--targets exited $?"
  python3 "$report" "$tmp/t.jsonl" >"$tmp/t.txt" || fail "targets_report exited $?"
  grep -Eq '^hit lines [01]/1; spot lines \(drawn\) [01]/1 of the class-feasible maximum, [01]/1 of the reachable; replay 0/0$' \
    "$tmp/t.txt" || fail "targets_report: $(head -1 "$tmp/t.txt")"
  grep -q 'generator:long-gen \[trace-start\]' "$tmp/t.txt" || fail "targets_report: no trace-start row"
  # A traces directory with files the readers cannot use: each is skipped
  # with its reason in a "trace" line, the usable one still runs, and the
  # report lists the skipped ones.
  mkdir -p "$tmp/mixed/traces"
  ln -s "$(cd "$data/spot" && pwd)" "$tmp/mixed/spot"
  for i in 0 1 2 3 4 5; do
    echo "{\"timestamp\": $((i * 500)), \"input_length\": 1024, \"output_length\": 20, \"hash_ids\": [1, 2, $((10 + i))]}"
  done >"$tmp/mixed/traces/small.jsonl"
  printf 'when,prompt,answer\n1,2,3\n' >"$tmp/mixed/traces/garbage.csv"
  : >"$tmp/mixed/traces/empty.jsonl"
  "$sim" --targets "$tmp/mixed" --requests 200 --seed 1 >"$tmp/m.jsonl" 2>"$tmp/m.err" \
    || fail "--targets with unusable traces exited $?: $(cat "$tmp/m.err")"
  python3 - "$tmp/m.jsonl" <<'PY' || fail "--targets with unusable traces: trace lines"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
tr = {r["trace"]: r for r in rows if r["target"] == "trace"}
assert tr["small.jsonl"]["usable"] and tr["small.jsonl"]["requests"] == 6, tr
assert not tr["garbage.csv"]["usable"] and "no time column" in tr["garbage.csv"]["reason"], tr
assert not tr["empty.jsonl"]["usable"] and "no usable request" in tr["empty.jsonl"]["reason"], tr
assert any(r["target"] == "hit" and r["trace"] == "small.jsonl" for r in rows), "small.jsonl ran"
assert not any(r["target"] == "hit" and r["trace"] != "small.jsonl" and
               not r["trace"].startswith("generator:") for r in rows), "a skipped trace ran"
PY
  python3 "$report" "$tmp/m.jsonl" >"$tmp/m.txt" || fail "targets_report exited $?"
  grep -q '^  skip   garbage.csv ' "$tmp/m.txt" || fail "targets_report: skipped trace not listed"
  # Where the cluster's KV holds the traffic's working set (the hit set-up,
  # 16 x 1,024 blocks), what the prefix index says the chosen replica holds
  # is what it holds: the predicted hit rate within 2 points of the real.
  python3 - "$tmp/t.jsonl" <<'PY' || fail "predicted hit rate off where the KV holds everything"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
lib = [r for r in rows if r["target"] == "hit" and r["policy"] == "library"]
assert len(lib) == 1 and lib[0]["hit_pct"] > 0, lib
assert abs(lib[0]["predicted_hit_pct"] - lib[0]["hit_pct"]) <= 2, lib
assert all("predicted_hit_pct" in r for r in rows if r["target"] in ("hit", "spot")), rows
PY
else
  echo "shared data not found; the trace runs are skipped"
fi
echo "simulator checks passed"
