#!/usr/bin/env bash
# What examples/spotinfer_sim reports when a run leaves work undone: the
# savings of a run that did not finish every request are withheld (n/a in
# the table, null in --json, with a line saying why) rather than set
# against the all-on-demand run's cost for all of them; a class with
# requests but none completed shows n/a latencies (null in --json), not 0;
# a trace line with more hash_ids than its input_length has tokens for is
# a bad line; requests the library does not take are route errors, shown
# in the table and --json, and not offered again for the whole horizon.
# Quick: a few hundred requests.
#
#   check_sim_report.sh <spotinfer_sim>
set -euo pipefail
sim=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# A spot zone that never comes up: bronze (spot only) never runs, so the
# library's run completes 193 of 300 requests and costs less than the
# all-on-demand run that completed all 300. Its saving (once 51.8 %, above
# the 50.7 % class-feasible maximum with no spot placement) is withheld.
python3 -c 'import json; print(json.dumps({"metadata": {"gap_seconds": 60}, "data": [0] * 200}))' \
  >"$tmp/down.json"
"$sim" --quiet --requests 300 --policies library --replicas 6 --on-demand 2 \
  --spot-trace "$tmp/down.json" --spot-start 0 --horizon 600 --json "$tmp/d.json" >"$tmp/d.txt" \
  || fail "the run with a zone that never comes up exited $?"
grep -Eq '^\| library \| [0-9.]+ \| [0-9.]+ \| n/a \|' "$tmp/d.txt" \
  || fail "library's savings not n/a: $(grep '^| library |' "$tmp/d.txt" | head -1)"
grep -q '^savings n/a for library: 107 of 300 requests unfinished' "$tmp/d.txt" \
  || fail "no line says why library's savings are n/a"
# The note after a later policy's row is set off from the table by a blank
# line (glued to it, Markdown reads it as a row).
"$sim" --quiet --requests 20000 --rate 200 --horizon 120 --policies library,consistent-hash \
  >"$tmp/two.txt" || fail "the two-policy run exited $?"
awk '/^savings n\/a for consistent-hash/ { exit prev == "" ? 0 : 1 } { prev = $0 } END { }' \
  "$tmp/two.txt" || fail "the note is glued to the table: $(grep -B1 '^savings n/a' "$tmp/two.txt")"
grep -q '^savings n/a for consistent-hash' "$tmp/two.txt" || fail "no note for consistent-hash"
grep -Eq '^\| library \| bronze \| 107 \| n/a \| n/a \|' "$tmp/d.txt" \
  || fail "bronze, none completed, not n/a: $(grep '^| library | bronze' "$tmp/d.txt")"
python3 - "$tmp/d.json" <<'PY' || fail "JSON of the unfinished run"
import json, sys
d = {p["name"]: p for p in json.load(open(sys.argv[1]))["policies"]}
lib, base = d["library"], d["all-on-demand"]
assert lib["savings_pct"] is None, lib["savings_pct"]
assert lib["unfinished"] == 107 and base["unfinished"] == 0, (lib["unfinished"], base["unfinished"])
assert base["savings_pct"] == 0, base["savings_pct"]
bronze = lib["classes"]["bronze"]
assert bronze["requests"] == 107, bronze
assert bronze["ttft_ms"] == [None] * 3 and bronze["completion_ms"] == [None] * 3, bronze
assert lib["classes"]["gold"]["ttft_ms"][0] > 0
assert lib["route_errors"] == 0
PY
# The chart says how much was left, not a saving.
"$sim" --quiet --requests 300 --policies library --replicas 6 --on-demand 2 \
  --spot-trace "$tmp/down.json" --spot-start 0 --horizon 600 --svg "$tmp/d.svg" >/dev/null \
  || fail "chart run exited $?"
grep -q '(35.7% unfinished)' "$tmp/d.svg" || fail "the chart does not say what was unfinished"

# A line with 300,000 hash_ids for an input of 1,000 tokens (at most 63 ids
# of 16 tokens) is a bad line, not a request the library refuses.
python3 - "$tmp/ids.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    f.write(json.dumps({"timestamp": 0, "input_length": 1000, "output_length": 5,
                        "hash_ids": list(range(300000))}) + "\n")
    for i in range(20):
        f.write(json.dumps({"timestamp": 100 * i, "input_length": 1000, "output_length": 5,
                            "hash_ids": [1, 2]}) + "\n")
PY
"$sim" --quiet --trace "$tmp/ids.jsonl" --policies library --json "$tmp/i.json" >"$tmp/i.txt" \
  || fail "the trace with too many hash_ids exited $?"
grep -q '20 requests.*1 bad lines skipped (first: line 1: more hash_ids than input_length' \
  "$tmp/i.txt" || fail "the line with too many ids not skipped: $(sed -n 3p "$tmp/i.txt")"
grep -q 'ROUTE ERRORS' "$tmp/i.txt" && fail "route errors on a trace the library takes"
# Requests the library does not take (a config allowing 4 token ids, the
# trace's have 8): route errors, shown, and not offered again.
printf '{"limits": {"max_token_ids": 4}}' >"$tmp/cfg.json"
"$sim" --quiet --trace "$tmp/ids.jsonl" --policies library --config "$tmp/cfg.json" \
  --json "$tmp/e.json" >"$tmp/e.txt" 2>"$tmp/e.err" || fail "the run with route errors exited $?"
grep -q '^library: 20 ROUTE ERRORS' "$tmp/e.txt" || fail "route errors not in the table"
grep -q 'request 0 not taken: .*token ids: 8 exceeds 4' "$tmp/e.err" \
  || fail "the first route error not on standard error: $(cat "$tmp/e.err")"
grep -q '"route_errors":20' "$tmp/e.json" || fail "route errors not in the JSON"
grep -q ' 0 requeues' "$tmp/e.txt" || fail "requests the library does not take were offered again"
echo "sim report checks passed"
