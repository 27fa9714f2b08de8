#!/usr/bin/env bash
# The spot-interruption drill, on 127.0.0.1 only:
#
#   bash examples/gateway/drill.sh            # the check (CI runs it)
#   bash examples/gateway/drill.sh --demo     # the same, telling what happens
#
# Starts three fake model servers (spot-a, spot-b: spot; od-1: on-demand)
# and a reference one, AWS's ec2-metadata-mock for spot-a's machine in its
# spot mode (notice after a configured delay, IMDSv2 only), and the gateway
# on the installed library. Real openai clients stream through the gateway;
# spot-a gets the notice mid-run and dies at its deadline. drill.py checks
# the outcome. Every server listens on a port the OS picks (port 0, read
# back from a file); every process is killed on exit.
#
# Needs: scripts/setup-deps.sh (openai in build/venv-gateway,
# ec2-metadata-mock in build/tools/bin) and the library, found with
# pkg-config (PKG_CONFIG_PATH) or else built and installed into
# build-drill/.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
demo=no
[[ "${1:-}" == "--demo" ]] && demo=yes

say() { if [[ $demo == yes ]]; then echo "drill: $*"; fi; }
die() { echo "drill: $*" >&2; exit 1; }

python="$root/build/venv-gateway/bin/python"
mock="$root/build/tools/bin/ec2-metadata-mock"
[[ -x "$python" ]] && "$python" -c 'import openai' 2>/dev/null ||
  die "no openai package in build/venv-gateway: run scripts/setup-deps.sh"
[[ -x "$mock" ]] || die "no $mock: run scripts/setup-deps.sh"
command -v go >/dev/null || die "no go toolchain: run scripts/setup-deps.sh"

# shellcheck source=libenv.sh
source "$root/examples/gateway/libenv.sh"

work=$(mktemp -d "${TMPDIR:-/tmp}/spotinfer-drill.XXXXXX")
self=drill
track_cleanup

say "building the gateway and the fake model server"
(cd "$root/examples/gateway" && go build -o "$work/gateway" .)
(cd "$root/examples/fakellm" && go build -o "$work/fakellm" .)

wait_file() { # <file> <what>
  local i
  for i in $(seq 1 100); do
    [[ -s "$1" ]] && return 0
    sleep 0.1
  done
  die "$2 did not start (no $1)"
}

# The timeline, in seconds from now: the notice shows at +notice_delay and
# the machine goes at +deadline. Streams last 120 tokens at 20 tokens/s (6 s):
# the clients' max_tokens, below the servers' 160-token answers, so that a
# continuation's cap shows in its text.
notice_delay=7
deadline_s=11

# The clients start first and wait for the word: importing openai takes a
# while on a busy machine, and the notice's timeline must not depend on it.
timeout 240 "$python" "$root/examples/gateway/drill.py" --go-file "$work/go" \
  --gateway "@$work/gateway.addr" --reference "@$work/reference.addr" \
  --events "$work/gateway.jsonl" \
  --backend-logs "$work/spot-a.jsonl,$work/spot-b.jsonl,$work/od-1.jsonl" --noticed spot-a \
  --report "$work/report.json" &
drill_pid=$!
pids+=("$drill_pid")
start=$(date +%s)
deadline=$(date -u -d "@$((start + deadline_s))" +%Y-%m-%dT%H:%M:%SZ)

fake() { # <id> [flags...]
  local id=$1
  shift
  "$work/fakellm" -id "$id" -addr-file "$work/$id.addr" -log "$work/$id.jsonl" \
    -answer-tokens 160 "$@" >"$work/$id.out" 2>&1 &
  pids+=($!)
}
# Several tokens an event, as vLLM sends them with a stream interval or
# speculative decoding: the streams cut on spot-a hold 4 tokens an event.
fake spot-a -token-rate 20 -tokens-per-event 4 -die-at "$deadline"
fake spot-b -token-rate 20 -tokens-per-event 2
fake od-1 -token-rate 20
fake reference -token-rate 2000
# ec2-metadata-mock takes a fixed port: the script picks a free one.
mock_port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$mock" spot -I -n 127.0.0.1 -p "$mock_port" -d "$notice_delay" -t "$deadline" >"$work/mock.out" 2>&1 &
pids+=($!)
for id in spot-a spot-b od-1 reference; do wait_file "$work/$id.addr" "$id"; done
up=no
for i in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$mock_port") 2>/dev/null; then up=yes; break; fi
  sleep 0.1
done
[[ $up == yes ]] || die "ec2-metadata-mock did not start: $(cat "$work/mock.out")"

cat >"$work/backends.json" <<EOF
[
 {"id": "spot-a", "url": "http://$(cat "$work/spot-a.addr")", "pool": "spot",
  "zone": "us-east-1a", "instance_type": "g5.xlarge", "usd_per_hour": 0.45,
  "metadata_url": "http://127.0.0.1:$mock_port", "node": "i-0a1b2c3d4e5f60001",
  "decode_tokens_per_s": 20},
 {"id": "spot-b", "url": "http://$(cat "$work/spot-b.addr")", "pool": "spot",
  "zone": "us-east-1b", "instance_type": "g5.xlarge", "usd_per_hour": 0.45,
  "decode_tokens_per_s": 20},
 {"id": "od-1", "url": "http://$(cat "$work/od-1.addr")", "pool": "on_demand",
  "zone": "us-east-1a", "instance_type": "g5.xlarge", "usd_per_hour": 1.01,
  "decode_tokens_per_s": 20}
]
EOF
# A stream drains where it is when its tokens left fit before the deadline
# minus 1 s; the rest are replayed at once. The drill's six system prompts
# are hot families (many requests each, not conversations) over two spot
# backends; the default share guard may spread one of them over both by
# design (it did in 1 of 3 runs), which the "stuck to one backend" check
# counts as a split, so the drill lets a warm backend keep its prompts up to
# twice its pool's mean load.
cat >"$work/spotinfer.json" <<EOF
{"router": {"drain_margin_ms": 1000, "decode_tokens_per_s": 20},
 "policy": {"load_share_cap": 2}}
EOF

"$work/gateway" -config "$work/spotinfer.json" -backends "$work/backends.json" \
  -addr 127.0.0.1:0 -addr-file "$work/gateway.addr" -events "$work/gateway.jsonl" \
  >"$work/gateway.out" 2>&1 &
pids+=($!)
wait_file "$work/gateway.addr" gateway
gw="http://$(cat "$work/gateway.addr")"
say "gateway on $gw; spot-a's notice at +${notice_delay}s, its deadline at $deadline"

keep=no
touch "$work/go"
rc=0
wait_child "$drill_pid" || rc=$?
if [[ $demo == yes ]]; then
  echo "drill: gateway events (notice and replays):"
  grep -E '"event":"(notice|replay_[a-z]+)"' "$work/gateway.jsonl" | head -n 40 || true
  echo "drill: the gateway's /metrics, notice and replay lines:"
  "$python" -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' \
    "$gw/metrics" 2>/dev/null | grep -E 'node_transitions|gateway_(notices|replays|replay_queue|streams_cut|rerouted)' || true
fi
if [[ $rc -ne 0 ]]; then
  keep=yes
  echo "drill: FAILED (exit $rc); last gateway output:" >&2
  tail -n 20 "$work/gateway.out" >&2 || true
fi
exit $rc
