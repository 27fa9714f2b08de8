#!/usr/bin/env bash
# nginx with the spotinfer module vs nginx with its own round robin, on
# the same three fakellm backends, in one nginx (two workers, keepalive to
# the backends in both): requests/s and latency p50/p99 measured with wrk,
# the two balancers taking turns, printed as JSON lines with the ratios
# (spotinfer / round robin) and the latency the module adds.
#
#   bash tests/nginx/bench.sh            # 3 turns of 8 s each per balancer
#   bash tests/nginx/bench.sh --smoke    # 1 turn of 2 s (the test stage)
#
# The backends answer at once (TTFT 1 ms, 8 tokens at 20,000 tokens/s)
# and have no prefix cache, so where a request lands does not change its
# time: what differs is the balancer's own cost. Sixteen prompts over four
# system prompts, 16 connections. Needs what tests/nginx/run.sh needs, and
# wrk (scripts/setup-nginx-deps.sh).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
turns=3
seconds=8
if [[ "${1:-}" == "--smoke" ]]; then turns=1; seconds=2; fi

die() { echo "nginx bench: $*" >&2; exit 1; }
command -v wrk >/dev/null || die "no wrk: run scripts/setup-nginx-deps.sh"
command -v nginx >/dev/null || die "no nginx: run scripts/setup-nginx-deps.sh"

# shellcheck source=../../examples/gateway/libenv.sh
source "$root/examples/gateway/libenv.sh"

work=$(mktemp -d "${TMPDIR:-/tmp}/spotinfer-nginx-bench.XXXXXX")
pids=()
cleanup() {
  local p
  if [[ -s "$work/prefix/logs/nginx.pid" ]]; then
    kill -TERM "$(cat "$work/prefix/logs/nginx.pid")" 2>/dev/null || true
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

module=$(bash "$root/bindings/nginx/build.sh" "$root/build/nginx")
(cd "$root/examples/fakellm" && go build -o "$work/fakellm" .)
for id in b1 b2 b3; do
  "$work/fakellm" -id "$id" -addr-file "$work/$id.addr" -token-rate 20000 -answer-tokens 8 \
    -ttft 1ms -cached-ttft 1ms -prefix-cache-blocks 0 -max-running 256 >"$work/$id.out" 2>&1 &
  pids+=($!)
done
for id in b1 b2 b3; do
  for _ in $(seq 1 100); do [[ -s "$work/$id.addr" ]] && break; sleep 0.1; done
  [[ -s "$work/$id.addr" ]] || die "fakellm $id did not start"
done
a=$(cat "$work/b1.addr") b=$(cat "$work/b2.addr") c=$(cat "$work/b3.addr")
# Two distinct free ports: both sockets bound at once, so the OS cannot
# hand the same port out twice.
read -r port rport <<<"$(python3 -c 'import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')"

mkdir -p "$work/prefix/logs" "$work/prefix/conf"
# A load reading counts as fresh for 5 s (1 s by default): on a machine
# this busy a scrape can be late, and a stale replica would get no work.
echo '{"router": {"load_max_age_ms": 5000}}' >"$work/prefix/conf/spotinfer.json"
cat >"$work/prefix/conf/nginx.conf" <<CONF
load_module $module;
worker_processes 2;
pid $work/prefix/logs/nginx.pid;
error_log $work/prefix/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/prefix/body;
  proxy_temp_path $work/prefix/proxy;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_buffering off;
  upstream routed {
    spotinfer spotinfer.json;
    server $a;
    server $b;
    server $c;
    spotinfer_replica $a id=b1 pool=spot zone=z1 price=0.45;
    spotinfer_replica $b id=b2 pool=spot zone=z2 price=0.45;
    spotinfer_replica $c id=b3 pool=on_demand zone=z1 price=1.01;
    keepalive 64;
  }
  upstream plain {
    server $a;
    server $b;
    server $c;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$port;
    location /v1/ { spotinfer_route routed; proxy_pass http://routed; }
  }
  server {
    listen 127.0.0.1:$rport;
    location /v1/ { proxy_pass http://plain; }
  }
}
CONF
nginx -p "$work/prefix" -c conf/nginx.conf

cat >"$work/post.lua" <<'LUA'
local bodies = {}
for i = 0, 15 do
  bodies[i + 1] = string.format('{"model":"fake-model","max_tokens":8,"messages":' ..
    '[{"role":"system","content":"%s"},{"role":"user","content":"question %d"}]}',
    string.rep("system prompt " .. (i % 4) .. " of the benchmark. ", 40), i)
end
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/v1/chat/completions",
                    {["Content-Type"] = "application/json"}, bodies[(n % #bodies) + 1])
end
LUA

ready=no
for _ in $(seq 1 100); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
    -d '{"model":"fake-model","messages":[{"role":"user","content":"ready?"}]}' \
    "http://127.0.0.1:$port/v1/chat/completions" || true)
  if [[ $code == 200 ]]; then ready=yes; break; fi
  sleep 0.1
done
[[ $ready == yes ]] || die "the module never routed a request"

run() { # <mode> <port> <turn>
  timeout $((seconds + 30)) wrk -t 2 -c 16 -d "${seconds}s" --latency -s "$work/post.lua" \
    "http://127.0.0.1:$2" >"$work/$1.$3.txt"
}
for turn in $(seq 1 "$turns"); do
  run roundrobin "$rport" "$turn"
  run spotinfer "$port" "$turn"
done

python3 - "$work" "$turns" <<'PY'
import json, re, sys
work, turns = sys.argv[1], int(sys.argv[2])
unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}

def parse(path):
    t = open(path).read()
    lat = {p: float(v) * unit[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)$", t, re.M)}
    reqs = int(re.search(r"(\d+) requests in", t).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    errs = re.search(r"Socket errors: .*", t)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1)),
            "p50_ms": lat["50"], "p99_ms": lat["99"], "requests": reqs,
            "non_2xx": int(bad.group(1)) if bad else 0, "socket_errors": errs.group(0) if errs else ""}

out = {}
for mode in ("roundrobin", "spotinfer"):
    runs = [parse(f"{work}/{mode}.{i}.txt") for i in range(1, turns + 1)]
    # the median turn of each number
    med = lambda k: sorted(r[k] for r in runs)[len(runs) // 2]
    out[mode] = {"rps": med("rps"), "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"),
                 "requests": sum(r["requests"] for r in runs),
                 "non_2xx": sum(r["non_2xx"] for r in runs)}
    print(json.dumps({"bench": "nginx", "balancer": mode, "turns": turns, **out[mode]}))
s, r = out["spotinfer"], out["roundrobin"]
print(json.dumps({"bench": "nginx", "ratio": "spotinfer/roundrobin",
                  "rps": round(s["rps"] / r["rps"], 3),
                  "p50": round(s["p50_ms"] / r["p50_ms"], 3), "p99": round(s["p99_ms"] / r["p99_ms"], 3),
                  "added_p50_ms": round(s["p50_ms"] - r["p50_ms"], 3),
                  "added_p99_ms": round(s["p99_ms"] - r["p99_ms"], 3)}))
if s["non_2xx"] or r["non_2xx"]:
    sys.exit(f"non-2xx answers: spotinfer {s['non_2xx']}, round robin {r['non_2xx']}")
PY
