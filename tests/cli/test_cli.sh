#!/usr/bin/env bash
# Tests of the spotinfer command-line tool, run by ctest:
#   bash tests/cli/test_cli.sh <path to spotinfer> <source dir>
# Every subcommand: its answer (text and --json), invalid input (exit 1,
# message on stderr, {"ok": false} with --json), usage errors (exit 2) and
# --help (exit 0). Notice bodies come from the shared data set when it is
# beside the source tree, else from the fuzz corpora.
set -uo pipefail

bin=$1
src=$2
here="$src/tests/cli"
work=$(mktemp -d "${TMPDIR:-/tmp}/spotinfer-cli.XXXXXX")
trap 'rm -rf "$work"' EXIT
pass=0
fail=0

# run <want-status> <args...>: runs the tool; stdout in $out, stderr in $err.
run() {
  local want=$1
  shift
  "$bin" "$@" >"$work/out" 2>"$work/err"
  local got=$?
  out=$(cat "$work/out")
  err=$(cat "$work/err")
  if [[ $got -ne $want ]]; then
    echo "FAIL spotinfer $*: exit $got, expected $want"
    echo "  stdout: ${out:0:400}"
    echo "  stderr: ${err:0:400}"
    fail=$((fail + 1))
    return 1
  fi
  return 0
}

# A check is `run ... && [[ cond ]] && ok NAME || bad NAME`: a condition
# that does not hold counts as a failure (a run that exits otherwise is
# counted by run itself, and once more by bad).
ok() { echo "ok   $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1"; echo "  stdout: ${out:0:600}"; echo "  stderr: ${err:0:300}"; fail=$((fail + 1)); }

# has <name> <text>: the output holds the text (fixed string).
has() {
  if [[ "$out" == *"$2"* ]]; then ok "$1"; else bad "$1: no '$2'"; fi
}

# jq_eq <name> <python expression on j> : the --json output is one JSON
# object for which the expression holds.
jq_eq() {
  if python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); sys.exit(0 if eval(sys.argv[2]) else 1)' \
    "$work/out" "$2" 2>"$work/pyerr"; then
    ok "$1"
  else
    bad "$1: $2 $(cat "$work/pyerr")"
  fi
}

# ------------------------------------------------------------- top level
run 0 --help && has "help lists commands" "notice parse"
run 2 && has "no command is a usage error" "" && [[ "$err" == *Usage* ]] && ok "usage on stderr" || bad "usage on stderr"
run 2 frobnicate && [[ "$err" == *"unknown command"* ]] && ok "unknown command" || bad "unknown command"
run 0 version --json && jq_eq "version" 'j["version"].count(".") == 2'
run 2 version junk && [[ "$err" == *"unexpected argument"* ]] && ok "version takes no argument" || bad "version takes no argument"
run 0 version --help && has "version --help" "Usage: spotinfer version"
# Every option a subcommand takes (its *_OPTS table in tools/cli) is in the
# top-level --help's line for it, in its own --help and in the man page's
# synopsis, and those name no option the table lacks.
run 0 --help && top=$out
for cmd in "notice parse" route; do
  run 0 $cmd --help
  if python3 - "$src/tools/cli" "$cmd" "$top" "$out" "$src/tools/cli/spotinfer.1" <<'PY' 2>"$work/pyerr"; then
import glob, re, sys
srcdir, cmd, top, sub, man = sys.argv[1:6]
table = {"notice parse": "NOTICE_OPTS", "route": "ROUTE_OPTS"}[cmd]
text = "".join(open(f).read() for f in glob.glob(srcdir + "/*.c"))
m = re.search(r"\b%s\[\]\s*=\s*\{(.*?)\};" % table, text, re.S)
if not m:
    sys.exit("no %s table in %s" % (table, srcdir))
opts = set(re.findall(r'"(--[a-z-]+)"', m.group(1)))
assert opts, table
# The top-level entry: its first line starts with the command, and the
# lines indented further continue it.
entry, inside = [], False
for line in top.splitlines():
    if re.match(r"  \S", line):
        inside = line.startswith("  " + cmd + " ")
    if inside:
        entry.append(line)
# The man page's synopsis line: "\fBnotice parse\fR ...", "\fBroute ...".
synopsis = [l for l in open(man).read().replace("\\-", "-").splitlines()
            if "\\fB" + cmd + ("\\fR" if " " in cmd else " ") in l]
shown = {"top-level --help": "\n".join(entry), cmd + " --help": sub,
         "spotinfer.1 synopsis": "\n".join(synopsis)}
bad = []
for where, t in shown.items():
    found = set(re.findall(r"--[a-z][a-z-]*", t)) - {"--json", "--help"}
    if found != opts:
        bad.append("%s: lacks %s, has extra %s" % (where, sorted(opts - found), sorted(found - opts)))
if bad:
    sys.exit("\n".join(bad))
PY
    ok "help of $cmd lists every option it takes"
  else
    bad "help of $cmd lists every option it takes: $(cat "$work/pyerr")"
  fi
done
# Output that cannot be written is a failure, not success.
if [[ -w /dev/full ]]; then
  if "$bin" version >/dev/full 2>"$work/err"; then
    bad "a write error exits 0"
  else
    err=$(cat "$work/err")
    [[ "$err" == *"write error"* ]] && ok "a write error exits 1 and says so" || bad "a write error exits 1 and says so"
  fi
fi

# --json output is UTF-8 whatever bytes a file name, a flag value or the
# input carries (a non-UTF-8 byte becomes U+FFFD).
printf '{"action": "stop", "time": "2023-11-14T22:15:00Z"}' >"$work/s"$'\xfe'".json"
run 0 --json notice parse --cloud aws --node $'i-\xff' "$work/s"$'\xfe'".json" &&
  jq_eq "--json with non-UTF-8 node and file name" 'j["ok"] and j["notices"][0]["node"] == "i-\ufffd" and j["input"].endswith("s\ufffd.json")'
run 1 --json config check "$work/s"$'\xfe'".json" &&
  jq_eq "--json error with a non-UTF-8 file name" 'not j["ok"] and "\ufffd" in j["input"]'

# ---------------------------------------------------------- config check
printf '{"router": {"max_replicas": 0}}' >"$work/bad.json"
printf '{"cost": {"spot_usd_per_gpu_hour": 2.5}}' >"$work/good.json"
run 0 config check "$work/good.json" && has "config check prints the effective config" '"spot_usd_per_gpu_hour":2.5'
run 0 config check --json "$work/good.json" &&
  jq_eq "config check --json" 'j["ok"] and j["config"]["cost"]["spot_usd_per_gpu_hour"] == 2.5 and "router" in j["config"]'
run 1 config check "$work/bad.json" && [[ "$err" == *"router.max_replicas"* ]] && ok "config error names the key path" || bad "config error names the key path"
run 1 config check --json "$work/bad.json" &&
  jq_eq "config error --json" 'not j["ok"] and "router.max_replicas" in j["error"]'
printf '{"router": ' >"$work/trunc.json"
run 1 config check "$work/trunc.json" && ok "truncated config is invalid" || bad "truncated config is invalid"
printf '{"no_such_section": {}}' >"$work/unknown.json"
run 1 config check "$work/unknown.json" && [[ "$err" == *no_such_section* ]] && ok "unknown key named" || bad "unknown key named"
run 0 config check - <"$work/good.json" && ok "config from stdin" || bad "config from stdin"
run 1 config check "$work/missing.json" && [[ "$err" == *"missing.json"* ]] && ok "unreadable file is exit 1" || bad "unreadable file is exit 1"
# Why a file cannot be read is said once, on stderr and in --json.
run 1 --json config check "$work/missing.json" &&
  jq_eq "--json: a missing file says why" '"No such file or directory" in j["error"] and j["input"].endswith("missing.json")'
[[ $(grep -c . "$work/err") -eq 1 ]] && ok "a missing file: one message" || bad "a missing file: one message"
run 1 --json metrics parse "$work" && jq_eq "--json: a directory says why" '"Is a directory" in j["error"]'
run 1 route --config "$here/config.json" --replicas "$work" "$here/chat.json" && [[ "$err" == *"Is a directory"* ]] &&
  ok "route: a directory as the replicas file says why" || bad "route: a directory as the replicas file says why"
run 1 --json route --config "$work" --replicas "$here/replicas.json" "$here/chat.json" &&
  jq_eq "route --json: a directory as the config says why" '"Is a directory" in j["error"]'
run 1 route --config "$work" --replicas "$here/replicas.json" "$here/chat.json" && [[ "$err" == *"Is a directory"* ]] &&
  ok "route: a directory as the config file says why" || bad "route: a directory as the config file says why"
run 2 config check && ok "config check without FILE" || bad "config check without FILE"
run 2 config check a b && ok "config check with two FILEs" || bad "config check with two FILEs"
run 2 config check --bogus x && ok "config check unknown option" || bad "config check unknown option"
run 0 config check --help && has "config check --help" "key path"

# --------------------------------------------------------------- options
run 0 options && has "options lists router.max_replicas" "router.max_replicas"
run 0 options --json &&
  jq_eq "options --json: every option has path, type, default, doc" \
    'len(j["options"]) > 20 and all({"path","type","default","doc"} <= set(o) for o in j["options"]) and any(o["path"] == "router.max_replicas" and o["min"] >= 1 for o in j["options"])'
run 0 options --json cost. && jq_eq "options PREFIX filters" 'all(o["path"].startswith("cost.") for o in j["options"]) and j["options"]'
run 1 options no.such.prefix && ok "options with an unknown prefix is exit 1" || bad "options with an unknown prefix is exit 1"
run 2 options --bogus && ok "options unknown flag" || bad "options unknown flag"
run 0 options --help && has "options --help" "PREFIX"

# ---------------------------------------------------------- notice parse
data=$(cd "$src/.." && pwd)/shared/data/notices
if [[ ! -d "$data" ]]; then data=""; fi
now=1700000000000000000
if [[ -n "$data" ]]; then
  run 0 notice parse --node i-0abc --now-ns $now "$data/aws/imds_instance_action_terminate.json" &&
    has "aws instance-action: terminate" "notices.0.kind terminate"
  run 0 notice parse --json "$data/azure/scheduled_events_preempt.json" &&
    jq_eq "azure preempt from the body alone" 'j["format"] == "azure-scheduled" and j["notices"][0]["kind"] == "preempt"'
  run 0 notice parse --json --cloud aws "$data/aws/eventbridge_spot_interruption_warning.json" &&
    jq_eq "aws eventbridge" 'j["format"] == "aws-eventbridge" and j["found"] == 1 and j["notices"][0]["node"]'
  run 0 notice parse --json --cloud gcp --node vm-1 --now-ns $now "$data/gcp/preempted_true.txt" &&
    jq_eq "gcp preempted: deadline now + 30 s" 'j["notices"][0]["kind"] == "preempt" and j["notices"][0]["seconds_left"] == 30 and j["notices"][0]["deadline"] == "2023-11-14T22:13:50Z"'
  run 0 notice parse --json --cloud gcp "$data/gcp/maintenance_event_none.txt" &&
    jq_eq "gcp NONE: no notice" 'j["found"] == 0 and j["notices"] == []'
  run 1 notice parse --cloud aws "$data/malformed/aws_unknown_action.json" && [[ "$err" == *explode* ]] &&
    ok "unknown aws action is invalid"
  run 1 notice parse --json "$data/malformed/aws_bad_time.json" &&
    jq_eq "bad time --json" 'not j["ok"] and "time" in j["error"]'
else
  echo "note: /work/shared/data/notices is not beside the tree; notice bodies are written here"
fi
printf '{"action": "stop", "time": "2023-11-14T22:15:00Z"}' >"$work/stop.json"
run 0 notice parse --json --format aws-instance-action --node i-9 --now-ns $now "$work/stop.json" &&
  jq_eq "--format and seconds_left" 'j["notices"][0]["kind"] == "stop" and abs(j["notices"][0]["seconds_left"] - 100) < 1e-6 and j["notices"][0]["dedup_key"]'
run 0 notice parse --node i-9 - <"$work/stop.json" && has "notice from stdin" "kind stop"
python3 -c 'import json; print(json.dumps([{"Code": "instance-stop", "EventId": "instance-event-%d" % i, "State": "active", "NotBefore": "2 Feb 2019 07:00:00 GMT"} for i in range(70)]))' >"$work/ev70.json"
run 0 notice parse --json --format aws-scheduled --node i-9 "$work/ev70.json" &&
  jq_eq "70 scheduled events, all of them" 'j["found"] == 70 and len(j["notices"]) == 70' 
run 0 notice parse --json --status 404 --cloud aws --node i-9 "$work/stop.json" &&
  jq_eq "404 means no notice" 'j["found"] == 0'
# A 404 is no notice whatever its body (an HTML error page): no --cloud
# or --format is needed to say so; another non-2xx status is an error.
printf '<html>404 - Not Found</html>' >"$work/404.html"
run 0 --json notice parse --status 404 --node i-9 "$work/404.html" &&
  jq_eq "404 without --cloud: no notice" 'j["ok"] and j["found"] == 0 and j["notices"] == [] and j["format"] is None'
run 1 notice parse --status 503 --node i-9 "$work/404.html" && [[ "$err" == *"http status 503"* ]] &&
  ok "503 without --cloud names the status"
printf 'hello' >"$work/hello.txt"
run 1 notice parse "$work/hello.txt" && [[ "$err" == *"--cloud"* ]] && ok "unrecognisable body names --cloud" || bad "unrecognisable body names --cloud"
run 2 notice parse --cloud moon "$work/stop.json" && ok "unknown cloud is usage" || bad "unknown cloud is usage"
run 2 notice parse --format nope "$work/stop.json" && ok "unknown format is usage" || bad "unknown format is usage"
run 2 notice parse --status abc "$work/stop.json" && ok "bad status is usage" || bad "bad status is usage"
run 2 notice parse --status ' 404' "$work/stop.json" && ok "a status with a leading blank is usage" || bad "a status with a leading blank is usage"
# --now-ns is a usage error past the parser's range (the time a GCP
# deadline of now + 30 s can be added to), like any other bad value.
run 0 --json notice parse --format aws-instance-action --node i-9 --now-ns 9223372006854775807 "$work/stop.json" &&
  jq_eq "--now-ns at the top of its range" 'j["found"] == 1'
run 2 notice parse --format aws-instance-action --node i-9 --now-ns 9223372006854775808 "$work/stop.json" && [[ "$err" == *"--now-ns"* ]] &&
  ok "--now-ns past its range is usage" || bad "--now-ns past its range is usage"
run 2 notice parse --node i-9 --now-ns 9223372036854775807 "$work/stop.json" && ok "--now-ns INT64_MAX is usage" || bad "--now-ns INT64_MAX is usage"
run 2 notice parse && ok "notice parse without FILE" || bad "notice parse without FILE"
run 0 notice parse --help && has "notice parse --help" "azure-scheduled"

# --------------------------------------------------------- metrics parse
cat >"$work/vllm.txt" <<'PAGE'
# HELP vllm:num_requests_running Number of requests running.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="llama"} 3.0
vllm:num_requests_waiting{model_name="llama"} 1.0
vllm:gpu_cache_usage_perc{model_name="llama"} 0.42
PAGE
run 0 metrics parse "$work/vllm.txt" && has "metrics parse text" "running 3" && has "kv usage" "kv_usage 0.42"
run 0 metrics parse --json - <"$work/vllm.txt" &&
  jq_eq "metrics parse --json" 'j["running"] == 3 and j["waiting"] == 1 and j["kv_usage"] == 0.42 and j["samples"] == 3'
printf 'vllm:num_requests_running{model_name="x} 1\n' >"$work/badpage.txt"
run 1 metrics parse "$work/badpage.txt" && [[ "$err" == *"line 1"* ]] && ok "malformed page names the line" || bad "malformed page names the line"
printf 'other_metric 1\n' >"$work/nothing.txt"
run 1 metrics parse --json "$work/nothing.txt" && jq_eq "no load metric --json" 'not j["ok"]'
# Inputs up to 64 MiB are read; one byte more is refused. (A page of
# comments after one sample, to the size wanted.)
page_of() {
  python3 -c 'import sys
n = int(sys.argv[1]); head = b"vllm:num_requests_running 2\n"
sys.stdout.buffer.write(head + b"#" * (n - len(head) - 1) + b"\n")' "$1" >"$work/big.txt"
}
mib64=$((64 * 1024 * 1024))
for size in $((mib64 - 1)) $mib64; do
  page_of $size
  run 0 --json metrics parse "$work/big.txt" && jq_eq "an input of $size bytes is read" 'j["running"] == 2'
done
page_of $((mib64 + 1))
run 1 metrics parse "$work/big.txt" && [[ "$err" == *"larger than"* ]] && ok "an input over 64 MiB is refused" || bad "an input over 64 MiB is refused"
rm -f "$work/big.txt"
run 2 metrics parse && ok "metrics parse without FILE" || bad "metrics parse without FILE"
run 0 metrics parse --help && has "metrics parse --help" "SGLang"

# ----------------------------------------------------------------- route
cfg="$here/config.json"
reps="$here/replicas.json"
run 0 route --config "$cfg" --replicas "$reps" "$here/chat.json" &&
  has "route text" "replica od-a" && has "route class" "class gold"
run 0 route --json --config "$cfg" --replicas "$reps" "$here/chat.json" &&
  jq_eq "gold chat on on-demand" 'j["outcome"] == "serve" and j["class"] == "gold" and j["pool"] == "on_demand" and len(j["key"]) == 32 and j["price"]["spot"]["usd"] < j["price"]["on_demand"]["usd"]'
run 0 route --json --config "$cfg" --replicas "$reps" "$here/batch.json" &&
  jq_eq "flex batch on spot" 'j["class"] == "bronze" and j["pool"] == "spot" and j["replica"] == "spot-a" and j["reason_code"]'
printf '[{"id": "od-a", "pool": "on_demand", "usd_per_hour": 4.5, "max_inflight": 4, "load": {"running": 0, "waiting": 0, "kv_usage": 0.1}}]' >"$work/od.json"
run 0 route --json --config "$cfg" --replicas "$work/od.json" "$here/batch.json" &&
  jq_eq "batch without spot is queued" 'j["outcome"] == "queued" and j["pool"] == "queue" and j["replica"] == ""'
printf '[]' >"$work/none.json"
run 0 route --json --config "$cfg" --replicas "$work/none.json" "$here/chat.json" &&
  jq_eq "no replicas: no_capacity" 'j["outcome"] == "no_capacity" and j["class"] == "gold"'
printf '[{"id": "x", "pool": "moon", "usd_per_hour": 1, "max_inflight": 1}]' >"$work/r1.json"
run 1 route --config "$cfg" --replicas "$work/r1.json" "$here/chat.json" && [[ "$err" == *"replicas[0].pool"* ]] && ok "bad pool named" || bad "bad pool named"
printf '[{"id": "x", "pool": "spot", "usd_per_hour": 1, "max_inflight": 1, "colour": "red"}]' >"$work/r2.json"
run 1 route --json --config "$cfg" --replicas "$work/r2.json" "$here/chat.json" &&
  jq_eq "unknown replica key named" '"replicas[0].colour" in j["error"]'
printf '[{"id": "x", "pool": "spot", "max_inflight": 1}]' >"$work/r3.json"
run 1 route --config "$cfg" --replicas "$work/r3.json" "$here/chat.json" && [[ "$err" == *usd_per_hour* ]] && ok "missing usd_per_hour named" || bad "missing usd_per_hour named"
printf '[{"id": "x", "pool": "spot", "usd_per_hour": 1, "max_inflight": 1, "load": {"kv_usage": 2}}]' >"$work/r4.json"
run 1 route --config "$cfg" --replicas "$work/r4.json" "$here/chat.json" && ok "load out of range is invalid" || bad "load out of range is invalid"
# The replicas file is read strictly: one JSON value, "replicas" alone in
# the object form, and no id twice.
printf '[{"id": "a", "pool": "spot", "usd_per_hour": 1, "max_inflight": 1}]\n[]' >"$work/r5.json"
run 1 route --config "$cfg" --replicas "$work/r5.json" "$here/chat.json" && [[ "$err" == *"data after the JSON value"* ]] && ok "replicas file: trailing data" || bad "replicas file: trailing data"
printf '{"replicas": [], "extra": 1}' >"$work/r6.json"
run 1 route --config "$cfg" --replicas "$work/r6.json" "$here/chat.json" && ok "replicas file: another top-level key" || bad "replicas file: another top-level key"
printf '{"replicas": [{"id": "spot-a", "pool": "spot", "usd_per_hour": 1.8, "max_inflight": 4}]}' >"$work/r9.json"
run 0 --json route --config "$cfg" --replicas "$work/r9.json" "$here/batch.json" &&
  jq_eq "replicas file: the object form" 'j["replica"] == "spot-a"'
printf '{"replicas": [], "replicas": [{"id": "a", "pool": "spot", "usd_per_hour": 1, "max_inflight": 1}]}' >"$work/r8.json"
run 1 route --config "$cfg" --replicas "$work/r8.json" "$here/chat.json" && ok "replicas file: \"replicas\" twice"
printf '[{"id": "a", "pool": "spot", "usd_per_hour": 1, "max_inflight": 1}, {"id": "a", "pool": "on_demand", "usd_per_hour": 2, "max_inflight": 1}]' >"$work/r7.json"
run 1 route --config "$cfg" --replicas "$work/r7.json" "$here/chat.json" && [[ "$err" == *'id "a" is given twice'* ]] && ok "replicas file: an id twice" || bad "replicas file: an id twice"
printf '{"model": "llama", "messages": "hi"}' >"$work/badbody.json"
run 1 route --config "$cfg" --replicas "$reps" "$work/badbody.json" && [[ "$err" == *messages* ]] && ok "bad body names the field" || bad "bad body names the field"
run 1 route --config "$work/bad.json" --replicas "$reps" "$here/chat.json" && [[ "$err" == *max_replicas* ]] && ok "bad config in route" || bad "bad config in route"
run 0 route --config "$cfg" --replicas "$reps" - <"$here/chat.json" && ok "route body from stdin" || bad "route body from stdin"
run 0 route --config - --replicas "$reps" "$here/chat.json" <"$cfg" && has "route config from stdin" "class gold"
run 2 route --config - --replicas - "$here/chat.json" <"$cfg" && [[ "$err" == *"only one of"* ]] && ok "stdin for two inputs is a usage error" || bad "stdin for two inputs is a usage error"
run 2 route --replicas "$reps" "$here/chat.json" && [[ "$err" == *"--config"* ]] && ok "route without --config" || bad "route without --config"
run 2 route --config "$cfg" --replicas "$reps" && ok "route without BODY" || bad "route without BODY"
run 2 route --config "$cfg" --replicas "$reps" --pressure extreme "$here/chat.json" && ok "bad pressure" || bad "bad pressure"
run 0 route --json --pressure critical --config "$cfg" --replicas "$reps" "$here/batch.json" &&
  jq_eq "plan at critical pressure" 'j["plan"]["pressure"] == "critical" and j["plan"]["defer"] in (True, False)'

run 0 route --help && has "route --help" "max_inflight"

# ------------------------------------------------------------------ cost
run 0 cost per-million --usd-per-gpu-hour 3.5 --gpus 1 --tokens-per-s 1000 &&
  has "per-million text" "usd_per_million 0.972222222222222"
run 0 cost --json per-million --usd-per-gpu-hour 3.5 --gpus 1 --tokens-per-s 1000 &&
  jq_eq "per-million (docs/cost.md: 0.972)" 'abs(j["usd_per_million"] - 0.9722222222) < 1e-9'
run 0 cost --json spot --spot-hours 100 --spot-usd-per-hour 1.8 --on-demand-usd-per-hour 4.5 \
  --interruption-rate 0.05 --restart-overhead-hours 0.1 &&
  jq_eq "spot" 'j["spot_cost"] == 180 and j["expected_interruptions"] == 5 and abs(j["effective_hours"] - 99.5) < 1e-9'
run 0 cost --json break-even-tps --usd-per-gpu-hour 3.5 --gpus 1 --target-usd-per-million 0.9722222222222222 &&
  jq_eq "break-even-tps inverts per-million" 'abs(j["tokens_per_s"] - 1000) < 1e-6'
run 0 cost --json self-host --usd-per-gpu-hour 2 --gpus 8 --hours-per-month 730 --api-usd-per-million 10 &&
  jq_eq "self-host" 'abs(j["tokens_per_month"] - 2*8*730/10*1e6) < 1'
run 0 cost --json kv-bytes --layers 32 --kv-heads 8 --head-dim 128 --seq-len 4096 --bytes-per-element 2 &&
  jq_eq "kv-bytes" 'j["bytes"] == 2*32*8*128*4096*2'
run 0 cost --json max-sequences --gpu-memory-bytes 80e9 --model-bytes 16e9 --utilization 0.9 --kv-bytes-per-sequence 536870912 &&
  jq_eq "max-sequences" 'j["sequences"] == int((80e9-16e9)*0.9/536870912)'
# Integers are printed exactly, however large: in text and in --json (as
# JSON integers, not in exponent form).
run 0 cost max-sequences --gpu-memory-bytes 9007199254740994 --model-bytes 0 --utilization 1 --kv-bytes-per-sequence 1 &&
  has "max-sequences above 2^53, exactly" "sequences 9007199254740994"
run 0 cost --json max-sequences --gpu-memory-bytes 18446744073709549568 --model-bytes 0 --utilization 1 --kv-bytes-per-sequence 1 &&
  jq_eq "max-sequences near 2^64, exactly" 'j["sequences"] == 2**64 - 2048 and type(j["sequences"]) is int'
run 0 cost --json kv-bytes --layers 4294967295 --kv-heads 16777216 --head-dim 1 --seq-len 1 --bytes-per-element 1 &&
  jq_eq "kv-bytes above 1e17, exactly" 'j["bytes"] == 2 * 4294967295 * 16777216 and type(j["bytes"]) is int'
run 1 cost per-million --usd-per-gpu-hour -1 --gpus 1 --tokens-per-s 1000 && [[ "$err" == *range* ]] && ok "negative price is invalid" || bad "negative price is invalid"
run 1 cost --json per-million --usd-per-gpu-hour 3.5 --gpus 1.5 --tokens-per-s 1000 && jq_eq "fractional gpus --json" 'not j["ok"]'
run 2 cost per-million --usd-per-gpu-hour 3.5 --gpus 1 && [[ "$err" == *tokens-per-s* ]] && ok "missing flag named" || bad "missing flag named"
run 2 cost per-million --usd-per-gpu-hour abc --gpus 1 --tokens-per-s 1 && ok "non-number is usage" || bad "non-number is usage"
# A flag given twice is a usage error, not the last one silently winning.
run 2 cost per-million --usd-per-gpu-hour 3.5 --gpus 1 --gpus 2 --tokens-per-s 1000 &&
  [[ "$err" == *"--gpus"*"twice"* ]] && ok "cost: a flag twice" || bad "cost: a flag twice"
run 2 route --config "$cfg" --config "$work/bad.json" --replicas "$reps" "$here/chat.json" &&
  [[ "$err" == *"--config"*"twice"* ]] && ok "route: --config twice" || bad "route: --config twice"
run 2 notice parse --node a --node b "$work/stop.json" &&
  [[ "$err" == *"--node"*"twice"* ]] && ok "notice parse: --node twice" || bad "notice parse: --node twice"
# A value is a number as written: a tiny one that underflows is still a
# number (the formula then says whether it is in range), and leading blanks
# are refused as trailing ones are.
run 1 cost per-million --usd-per-gpu-hour 3.5 --gpus 1 --tokens-per-s 1e-320 && [[ "$err" == *range* ]] &&
  ok "an underflowing value is a number" || bad "an underflowing value is a number"
run 2 cost per-million --usd-per-gpu-hour ' 3.5' --gpus 1 --tokens-per-s 1000 && ok "a leading blank is not a number" || bad "a leading blank is not a number"
run 2 cost per-million --usd-per-gpu-hour 1e999 --gpus 1 --tokens-per-s 1000 && [[ "$err" == *finite* ]] &&
  ok "an overflowing value: not a finite number" || bad "an overflowing value: not a finite number"
run 2 cost warp-drive && ok "unknown formula" || bad "unknown formula"
run 2 cost && ok "cost without formula" || bad "cost without formula"
run 0 cost --help && has "cost --help lists formulas" "max-sequences"

echo "cli: $pass passed, $fail failed"
[[ $fail -eq 0 ]]
