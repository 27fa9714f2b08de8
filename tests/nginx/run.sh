#!/usr/bin/env bash
# The nginx module against Debian's nginx, on 127.0.0.1 only:
#
#   bash tests/nginx/run.sh
#
# Builds bindings/nginx into build/nginx/, starts six fake model servers
# (examples/fakellm: spot-a, spot-b, od-1 behind upstream "llm", 3 tokens
# an event; hot, alone behind upstream "hot"; multi, alone behind upstream
# "tok", 4 tokens an event at 20 tokens/s), a stale one
# (tests/nginx/stale_backend.py, alone behind upstream "ka", kept alive)
# and a real nginx (its own prefix
# in a temporary directory, master process, two workers) that loads the
# module, then:
#   - checks that "nginx -t" rejects bad configurations with a clear message;
#   - runs tests/nginx/check.py (the official openai client, curl-like
#     requests, the access log) for affinity, streams, 400/429/503, pushed
#     notices across workers, proxy_next_upstream onto the fallbacks and
#     internal redirects (error_page with proxy_intercept_errors, a named
#     location, X-Accel-Redirect, try_files: upstream "edge", whose one
#     replica is a server of the same nginx in front of a fifth fakellm;
#     upstream "pair", whose spot and on-demand replicas are two more such
#     servers: the spot one answers 503, 404 or 403 where the other serves,
#     for a second pass after an error_page and for proxy_next_upstream
#     http_404 and http_403, each try after a failed one routed again with
#     a ticket of its own, or placed nowhere: 502),
#     a kept-alive connection the replica closed (upstream "ka": keepalive
#     to tests/nginx/stale_backend.py, which closes each connection on its
#     second request), which nginx retries on a new one, for a request and
#     for its post_action, and one where the replica never answers (a
#     second request to /hang/), which times out, and streams it stalls
#     or cuts short after their header (/stall/, /cut/),
#     a replica on a unix socket (upstream "sock"), a try whose connect()
#     fails at once after a 404 passed over (upstream "refused": a unix
#     socket bound and never listened on),
#     and the output tokens of streams with several tokens an event, with
#     and without the backend's usage (upstream "tok"): the tickets' output
#     tokens in the access log, their progress in the plans a notice logs;
#   - parses the metrics text with Prometheus' parser (tests/promlint);
#   - runs nginx once more with one worker under valgrind (master_process
#     off, daemon off), sends every kind of request, and fails on any
#     memory error or leak.
# Every port is picked by the OS or by a bind to port 0; everything started
# is stopped on exit.
#
# Needs: scripts/setup-nginx-deps.sh, scripts/setup-gateway-deps.sh (openai
# in build/venv-gateway), Go, and the library found with pkg-config
# (PKG_CONFIG_PATH) or else built and installed into build-drill/.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here="$root/tests/nginx"
python="$root/build/venv-gateway/bin/python"

die() { echo "nginx test: $*" >&2; exit 1; }
note() { echo "-- $*"; }

command -v nginx >/dev/null || die "no nginx: run scripts/setup-nginx-deps.sh"
command -v valgrind >/dev/null || die "no valgrind: run scripts/setup-deps.sh"
[[ -x "$python" ]] && "$python" -c 'import openai' 2>/dev/null ||
  die "no openai package in build/venv-gateway: run scripts/setup-deps.sh"

# shellcheck source=../../examples/gateway/libenv.sh
source "$root/examples/gateway/libenv.sh"

work=$(mktemp -d "${TMPDIR:-/tmp}/spotinfer-nginx.XXXXXX")
# nginx's workers (nobody, when the master runs as root) write bodies over
# client_body_buffer_size into the prefix's temporary directory.
chmod 755 "$work"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "$work"/prefix/logs/*.pid; do
    if [[ -s "$p" ]]; then kill -TERM "$(cat "$p")" 2>/dev/null || true; fi
  done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [[ ${keep:-yes} == yes ]]; then echo "nginx test: logs kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

note "building the module (bindings/nginx/build.sh)"
module=$(bash "$root/bindings/nginx/build.sh" "$root/build/nginx")
(cd "$root/examples/fakellm" && go build -o "$work/fakellm" .)

fake() { # <id> [flags...]
  local id=$1
  shift
  "$work/fakellm" -id "$id" -addr-file "$work/$id.addr" -log "$work/$id.jsonl" "$@" \
    >"$work/$id.out" 2>&1 &
  pids+=($!)
  echo $! >"$work/$id.pid"
}
# vLLM sends several tokens an event with a stream interval or speculative
# decoding: the module counts tokens, not events.
fake spot-a -token-rate 400 -tokens-per-event 3
fake spot-b -token-rate 400 -tokens-per-event 3
fake od-1 -token-rate 400 -tokens-per-event 3
# hot: a tiny KV cache, so one long request fills it (the shed check)
fake hot -token-rate 4 -kv-tokens 100 -answer-tokens 200
# edge: behind the replica server that fails or redirects on request
fake edge -token-rate 400
# multi: streams slow enough to hand in a notice while they run (the plans
# it logs show each ticket's progress)
fake multi -token-rate 20 -tokens-per-event 4
# stale: answers the first request of each connection, kept alive, and
# closes the connection on the second (a kept-alive connection gone stale),
# or leaves it unanswered when its path holds /hang/; /stall/ and /cut/
# get a stream's header and first event, then a stall or a close
"$python" "$here/stale_backend.py" "$work/stale.addr" 900 >"$work/stale.out" 2>&1 &
pids+=($!)
for id in spot-a spot-b od-1 hot edge multi stale; do
  for _ in $(seq 1 100); do [[ -s "$work/$id.addr" ]] && break; sleep 0.1; done
  [[ -s "$work/$id.addr" ]] || die "backend $id did not start"
done
# Four ports nothing listens on, distinct: the four sockets are bound at
# once, so the OS cannot hand the same port out twice (one bind, close and
# bind again at a time could, and two servers then met on one port).
free_ports() {
  "$python" -c 'import socket
s = [socket.socket() for _ in range(4)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))'
}
read -r port eport sport oport <<<"$(free_ports)"
# A unix socket bound and never listened on: connect() to it fails at once
# (ECONNREFUSED), as one to an unreachable network does.
"$python" -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$work/dead.sock"
chmod 666 "$work/dead.sock"

mkdir -p "$work/prefix/logs" "$work/prefix/conf"
# A stale load reading counts as saturated after 5 s (the fallback check
# needs a killed backend to look alive for a moment). The policy is the
# default one.
cat >"$work/prefix/conf/spotinfer.json" <<JSON
{"router": {"load_max_age_ms": 5000}}
JSON
# edge: one error opens the replica's breaker (so the metrics count each
# ticket finished as an error), and a millisecond later the next request
# is its probe.
cat >"$work/prefix/conf/edge.json" <<JSON
{"router": {"load_max_age_ms": 5000, "error_threshold": 1, "error_cooldown_ms": 1}}
JSON
# pair: one error opens a replica's breaker, so the metrics tell a ticket
# that ended as an error from one that ended OK
cat >"$work/prefix/conf/pair.json" <<JSON
{"router": {"load_max_age_ms": 5000, "error_threshold": 1, "error_cooldown_ms": 1}}
JSON

# conf <file> <workers> <master> <port> [extra upstream lines]; the edge
# replica's server listens on $eport, the pair replicas' on $sport (spot)
# and $oport (on-demand), the sock replica's and the first refused
# replica's on unix sockets of their own
conf() {
  local a b c h e m k u r
  a=$(cat "$work/spot-a.addr") b=$(cat "$work/spot-b.addr")
  c=$(cat "$work/od-1.addr") h=$(cat "$work/hot.addr") e=$(cat "$work/edge.addr")
  m=$(cat "$work/multi.addr") k=$(cat "$work/stale.addr")
  u="$work/${1%.conf}-sock.sock" r="$work/${1%.conf}-refused.sock"
  cat >"$work/prefix/conf/$1" <<CONF
load_module $module;
worker_processes $2;
master_process $3;
daemon $3;
pid $work/prefix/logs/${1%.conf}.pid;
error_log $work/prefix/logs/${1%.conf}-error.log info;
events { worker_connections 256; }
http {
  log_format spi '\$pid \$status "\$upstream_addr" \$request_uri "\$spotinfer_replica" '
                 '\$spotinfer_class \$spotinfer_reason \$spotinfer_blocks \$spotinfer_tokens';
  access_log $work/prefix/logs/${1%.conf}-access.log spi;
  client_body_temp_path $work/prefix/body;
  proxy_temp_path $work/prefix/proxy;

  upstream llm {
    spotinfer spotinfer.json scrape_interval=200ms;
    server $a;
    server $b;
    server $c;
    spotinfer_replica $a id=spot-a pool=spot zone=us-east-1a price=0.45 node=i-0000000000000000a;
    spotinfer_replica $b id=spot-b pool=spot zone=us-east-1b price=0.45 node=i-0000000000000000b;
    spotinfer_replica $c id=od-1 pool=on_demand zone=us-east-1a price=1.01 node=i-0000000000000000c;
    ${5:-}
  }
  upstream hot {
    spotinfer spotinfer.json scrape_interval=100ms;
    server $h;
    spotinfer_replica $h id=hot pool=spot zone=us-east-1a price=0.45 node=i-00000000000000ff0;
  }
  upstream tok {
    spotinfer spotinfer.json scrape_interval=100ms;
    server $m;
    spotinfer_replica $m id=multi pool=spot zone=us-east-1a price=0.45 node=i-00000000000000aa0;
  }
  upstream edge {
    spotinfer edge.json scrape_interval=100ms;
    server 127.0.0.1:$eport;
    spotinfer_replica 127.0.0.1:$eport id=edge pool=spot zone=us-east-1a price=0.45 node=i-00000000000000ed0;
  }
  # stale, alone, with kept-alive connections (after spotinfer)
  upstream ka {
    spotinfer edge.json scrape_interval=100ms;
    server $k;
    spotinfer_replica $k id=stale pool=spot zone=us-east-1a price=0.45 node=i-00000000000000ce0;
    keepalive 4;
  }
  # sock: one replica on a unix socket, a server of this nginx
  upstream sock {
    spotinfer spotinfer.json scrape_interval=100ms;
    server unix:$u;
    spotinfer_replica unix:$u id=sock pool=spot zone=us-east-1a price=0.45 node=i-00000000000000d30;
  }
  # refused: a replica on a unix socket that answers 404 to everything, and
  # one on the socket nobody listens on. Neither has a load reading, so
  # silver is served on the spot one with the on-demand one as its
  # fallback.
  upstream refused {
    spotinfer pair.json scrape_interval=100ms;
    server unix:$r;
    server unix:$work/dead.sock;
    spotinfer_replica unix:$r id=refused-404 pool=spot zone=us-east-1a price=0.45 node=i-00000000000000d10;
    spotinfer_replica unix:$work/dead.sock id=refused-dead pool=on_demand zone=us-east-1a price=1.01 node=i-00000000000000d20;
  }
  upstream pair {
    spotinfer pair.json scrape_interval=100ms;
    server 127.0.0.1:$sport;
    server 127.0.0.1:$oport;
    spotinfer_replica 127.0.0.1:$sport id=pair-spot pool=spot zone=us-east-1a price=0.45 node=i-00000000000000b10;
    spotinfer_replica 127.0.0.1:$oport id=pair-od pool=on_demand zone=us-east-1a price=1.01 node=i-00000000000000b20;
  }

  server {
    listen 127.0.0.1:$4;
    location /v1/ {
      spotinfer_route llm;
      proxy_pass http://llm;
      proxy_http_version 1.1;
      proxy_buffering off;
      proxy_next_upstream error timeout http_502 http_503 non_idempotent;
    }
    # a client_max_body_size far over the library's limits.max_body_bytes
    location /huge/ {
      spotinfer_route llm;
      proxy_pass http://llm/;
      client_max_body_size 128m;
    }
    location /hot/ {
      spotinfer_route hot;
      proxy_pass http://hot/;
      proxy_buffering off;
    }
    location /tok/ {
      spotinfer_route tok;
      proxy_pass http://tok/;
      proxy_buffering off;
      # reads of 160 bytes (the answer's header takes about 110): every
      # event of 230 bytes or more reaches the body filter cut in two or
      # three buffers
      proxy_buffer_size 160;
    }
    # The module's own 429 and 503 go to the error_page of the location.
    location /hot-fb/ {
      spotinfer_route hot;
      proxy_pass http://hot/;
      error_page 429 503 = @hot-fallback;
    }
    location @hot-fallback {
      default_type application/json;
      return 200 '{"fallback":true}';
    }
    location = /metrics { spotinfer_metrics llm; }
    location = /notice { spotinfer_notice llm; }
    location = /hot-notice { spotinfer_notice hot; }
    location = /tok-notice { spotinfer_notice tok; }
    location = /tok-metrics { spotinfer_metrics tok; }

    # Internal redirects once the replica answered: its 5xx to an error
    # page that answers 200, or to a named location that proxies again;
    # its X-Accel-Redirect to what this server serves instead. And one
    # before it got the request (try_files after the route).
    location /edge/ {
      spotinfer_route edge;
      proxy_pass http://edge/;
      proxy_intercept_errors on;
      error_page 500 502 503 504 =200 /edge-sorry;
    }
    location /edge-plain/ {
      spotinfer_route edge;
      proxy_pass http://edge/;
    }
    location /edge-named/ {
      spotinfer_route edge;
      proxy_pass http://edge/;
      proxy_intercept_errors on;
      error_page 500 502 503 504 = @edge-again;
    }
    location /edge-static/ {
      spotinfer_route edge;
      try_files /no-such-file /edge-sorry;
    }
    location @edge-again {
      spotinfer_route edge;
      proxy_pass http://edge;
    }
    location = /edge-sorry {
      internal;
      default_type application/json;
      return 200 '{"sorry":true}';
    }
    location /edge-cached/ {
      internal;
      default_type application/json;
      return 200 '{"cached":true}';
    }
    # Where the edge replica's /again/ hands a request back to: routed
    # through edge again, so back to the replica that handed it on.
    location /edge-accel-again/ {
      internal;
      spotinfer_route edge;
      proxy_pass http://edge/accel-ok/;
    }
    location = /edge-metrics { spotinfer_metrics edge; }

    # A second pass through the balancer after an error_page: the spot
    # replica's 503 goes to a named location that proxies again.
    location /pair-again/ {
      spotinfer_route pair;
      proxy_pass http://pair/;
      proxy_intercept_errors on;
      error_page 503 = @pair-again;
    }
    location @pair-again {
      spotinfer_route pair;
      proxy_pass http://pair;
    }
    # The spot replica fails /pair-handoff/ (a 503 nginx passes over), and
    # the on-demand one hands the request back (X-Accel-Redirect) to a
    # location routed through pair again: that second pass goes to the
    # replica that handed it on.
    location /pair-handoff/ {
      spotinfer_route pair;
      proxy_pass http://pair/handoff/;
      proxy_next_upstream error timeout http_503 non_idempotent;
    }
    location /pair-handed/ {
      internal;
      spotinfer_route pair;
      proxy_pass http://pair/handed/;
    }
    # A post_action that proxies to pair again, after the answer was sent:
    # it goes to the replica that served, unrouted, and leaves that try's
    # ticket to the log phase.
    location /pair-post/ {
      spotinfer_route pair;
      proxy_pass http://pair/;
      post_action @pair-post;
    }
    location @pair-post {
      spotinfer_route pair;
      # both pair replicas answer /down/ 503: the post_action's answer,
      # which must not end the served try's ticket as an error
      set \$pair_post /down/;
      proxy_pass http://pair\$pair_post;
    }
    # A post_action to a service that is no spotinfer upstream (a
    # notification or billing one; here the spot replica's server, whose
    # /down/ answers 503): its answer is not the served try's.
    location /pair-notify/ {
      spotinfer_route pair;
      proxy_pass http://pair/;
      post_action @pair-notify;
    }
    location @pair-notify {
      set \$pair_notify /down/;
      proxy_pass http://127.0.0.1:$sport\$pair_notify;
    }
    # Both pair replicas fail /pair-down/ (a 503 nginx passes over, then
    # the on-demand one's 503, which the client gets).
    location /pair-down/ {
      spotinfer_route pair;
      proxy_pass http://pair/down/;
      proxy_next_upstream error timeout http_503 non_idempotent;
    }
    # The spot replica answers /pair-late/ after 2 s, past the read
    # timeout; the check hands in a notice for the on-demand one's machine
    # meanwhile, so the next try finds no replica to route to.
    location /pair-late/ {
      spotinfer_route pair;
      proxy_pass http://pair/late/;
      proxy_read_timeout 1s;
      proxy_next_upstream error timeout non_idempotent;
    }
    location = /pair-notice { spotinfer_notice pair; }
    # The spot replica's 404 or 403, retried on the on-demand one.
    location /pair/ {
      spotinfer_route pair;
      proxy_pass http://pair/;
      proxy_buffering off;
      proxy_next_upstream error timeout http_404 http_403 non_idempotent;
    }
    location = /pair-metrics { spotinfer_metrics pair; }

    # The stale replica closes a kept-alive connection on its second
    # request: nginx retries such a cached connection on a new one.
    location /ka/ {
      spotinfer_route ka;
      proxy_pass http://ka/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream error timeout non_idempotent;
    }
    location = /ka-metrics { spotinfer_metrics ka; }
    # The same without non_idempotent: nginx does not send a POST again on
    # a new connection, and its 502 goes to an error page that proxies to
    # the edge fakellm, whose answer is not the stale replica's.
    location /ka-fb/ {
      spotinfer_route ka;
      proxy_pass http://ka/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      error_page 502 = @ka-fb;
    }
    location @ka-fb {
      # a URI in a named location's proxy_pass needs a variable
      set \$ka_fb /v1/chat/completions;
      proxy_pass http://$e\$ka_fb;
    }
    # A post_action back to ka after the answer: it goes to the replica that
    # served, on the connection the answer came on, now stale, and nginx
    # sends it again on a new one.
    location /ka-post/ {
      spotinfer_route ka;
      proxy_pass http://ka/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream error timeout non_idempotent;
      post_action @ka-post;
    }
    location @ka-post {
      spotinfer_route ka;
      proxy_pass http://ka;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream error timeout non_idempotent;
    }
    # The stale replica leaves a second request to /hang/ on a kept-alive
    # connection unanswered: the read times out, and nginx gives no try
    # back for a timeout.
    location /ka-hang/ {
      spotinfer_route ka;
      proxy_pass http://ka/hang/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_read_timeout 1s;
      proxy_next_upstream error timeout non_idempotent;
    }
    # The stale replica sends a stream's header and first event, then
    # stalls (/stall/: the read times out after 1 s) or closes the
    # connection (/cut/), without buffering and with it.
    location /ka-stall/ {
      spotinfer_route ka;
      proxy_pass http://ka/stall/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 1s;
      proxy_next_upstream error timeout non_idempotent;
    }
    location /ka-cut/ {
      spotinfer_route ka;
      proxy_pass http://ka/cut/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_next_upstream error timeout non_idempotent;
    }
    location /ka-cut-buffered/ {
      spotinfer_route ka;
      proxy_pass http://ka/cut/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream error timeout non_idempotent;
    }

    # The sock replica, whose /metrics the module reads over its unix
    # socket.
    location /sock/ {
      spotinfer_route sock;
      proxy_pass http://sock/;
    }
    location = /sock-metrics { spotinfer_metrics sock; }
    # The sock replica's /gz/ compresses what the client accepts: the
    # client's Accept-Encoding passed on (/sock-gz/), or not
    # (/sock-identity/, as docs/nginx.md says to write it).
    location /sock-gz/ {
      spotinfer_route sock;
      proxy_pass http://sock/gz/;
    }
    location /sock-identity/ {
      spotinfer_route sock;
      proxy_pass http://sock/gz/;
      proxy_set_header Accept-Encoding "";
    }
    # The first refused replica's 404, passed over; the next try's
    # connect() fails at once.
    location /refused/ {
      spotinfer_route refused;
      proxy_pass http://refused/;
      proxy_next_upstream error timeout http_404 non_idempotent;
    }
    location = /refused-metrics { spotinfer_metrics refused; }
  }

  # The edge replica: a fakellm, except that /fail/... answers 503 (not
  # 500, after which nginx's error page closes the client's connection)
  # and /accel/... hands the request back to the gateway
  # (X-Accel-Redirect). @edge-again sends the client's own URI, which the
  # fakellm answers.
  server {
    listen 127.0.0.1:$eport;
    access_log off;
    location / { proxy_pass http://$e; }
    location /fail/ { return 503 '{"error":"the replica failed"}'; }
    location /edge-named/fail/ { proxy_pass http://$e/; }
    location /accel/ {
      add_header X-Accel-Redirect /edge-cached/answer always;
      return 200 '{}';
    }
    location /again/ {
      add_header X-Accel-Redirect /edge-accel-again/answer always;
      return 200 '{}';
    }
    location /accel-ok/ { return 200 '{"again":true}'; }
  }

  # The pair replicas, in front of the edge fakellm: /fail/, /missing/,
  # /denied/ and /slow/ (as /pair-again/ and /pair/ send them) fail on the
  # spot one and are served by the on-demand one (/slow/ by multi, at 20
  # tokens/s); /down/ fails on both; /late/ is slow on the spot one.
  server {
    listen 127.0.0.1:$sport;
    access_log off;
    location / { proxy_pass http://$e; }
    location /fail/ { return 503 '{"error":"the spot replica failed"}'; }
    location /pair-again/fail/ { return 503 '{"error":"the spot replica failed"}'; }
    location /handoff/ { return 503 '{"error":"the spot replica failed"}'; }
    location /handed/ { return 200 '{"handed":"spot"}'; }
    location /down/ { return 503 '{"error":"the spot replica failed"}'; }
    location /late/ { proxy_pass http://$m/; }
    location /missing/ { return 404 '{"error":"not on the spot replica"}'; }
    location /slow/ { return 404 '{"error":"not on the spot replica"}'; }
    location /denied/ { return 403 '{"error":"denied on the spot replica"}'; }
  }
  # The sock replica: the edge fakellm, with a load reading of its own.
  server {
    listen unix:$u;
    access_log off;
    location / { proxy_pass http://$e; }
    # what the client accepts, compressed (nginx proxies with HTTP/1.0)
    location /gz/ {
      proxy_pass http://$e/;
      gzip on;
      gzip_min_length 1;
      gzip_proxied any;
      gzip_http_version 1.0;
      gzip_types application/json text/event-stream;
    }
    location = /metrics {
      default_type text/plain;
      return 200 'vllm:num_requests_running 0\nvllm:num_requests_waiting 0\nvllm:kv_cache_usage_perc 0.25\n';
    }
  }
  # The first refused replica.
  server {
    listen unix:$r;
    access_log off;
    location / { return 404 '{"error":"not on this replica"}'; }
  }
  server {
    listen 127.0.0.1:$oport;
    access_log off;
    location / { proxy_pass http://$e; }
    location /pair-again/fail/ { proxy_pass http://$e/; }
    location /missing/ { proxy_pass http://$e/; }
    location /denied/ { proxy_pass http://$e/; }
    location /handoff/ {
      add_header X-Accel-Redirect /pair-handed/answer always;
      return 200 '{}';
    }
    location /handed/ { return 200 '{"handed":"on-demand"}'; }
    location /down/ { return 503 '{"error":"the on-demand replica failed"}'; }
    location /late/ { proxy_pass http://$e/; }
    # a stream slow enough to read the metrics while it is served
    location /slow/ {
      proxy_pass http://$m/;
      proxy_buffering off;
    }
  }
}
CONF
}

# expect_t_fail <what> <text the message must hold>: nginx -t on nginx.conf
expect_t_fail() {
  local out
  if out=$(nginx -p "$work/prefix" -c conf/bad.conf -t 2>&1); then
    die "nginx -t accepted $1"
  fi
  grep -qF -- "$2" <<<"$out" || die "nginx -t on $1 said: $out"
  note "nginx -t rejects $1: $(grep -F -- "$2" <<<"$out" | head -n 1 | sed 's/^nginx: //')"
}

note "nginx -t on bad configurations"
conf bad.conf 1 on "$port" 'server 127.0.0.1:9;'
expect_t_fail "a server without spotinfer_replica" 'server "127.0.0.1:9" has no spotinfer_replica line'
conf bad.conf 1 on "$port" 'spotinfer_replica 127.0.0.1:9 pool=cloud price=1;'
expect_t_fail "an unknown pool" 'invalid parameter "pool=cloud"'
conf bad.conf 1 on "$port" 'spotinfer_replica 127.0.0.1:9 pool=spot price=1;'
expect_t_fail "a replica that is no server" 'spotinfer_replica "127.0.0.1:9" names no server'
cp "$work/prefix/conf/spotinfer.json" "$work/good.json"
echo '{"router": {"load_max_age_ms": 0}}' >"$work/prefix/conf/spotinfer.json"
conf bad.conf 1 on "$port"
expect_t_fail "a library configuration out of range" 'router.load_max_age_ms'
cp "$work/good.json" "$work/prefix/conf/spotinfer.json"
# nginx's zone copies round robin peers into shared memory, which a
# spotinfer upstream does not have
conf bad.conf 1 on "$port" 'zone llm_peers 64k;'
expect_t_fail "a zone in a spotinfer upstream" 'upstream "llm" cannot have a "zone"'
# A server line before "spotinfer" is read with nginx's parameters allowed:
# those that differ from nginx's defaults are refused (the balancer would
# ignore them, and route to a server marked down), the defaults written out
# pass.
early_server() { # <server parameters>
  conf bad.conf 1 on "$port" 'spotinfer_replica 127.0.0.1:9 id=early pool=on_demand price=1;'
  sed -i "s|^  upstream llm {|  upstream llm {\n    server 127.0.0.1:9 $1;|" "$work/prefix/conf/bad.conf"
}
for param in down weight=2 max_fails=3 fail_timeout=5s max_conns=4; do
  early_server "$param"
  expect_t_fail "\"server ... $param\" before spotinfer" "server \"127.0.0.1:9\" has \"${param%%=*}"
done
early_server "weight=1 max_fails=1 fail_timeout=10s max_conns=0"
nginx -p "$work/prefix" -c conf/bad.conf -t >/dev/null 2>&1 ||
  die "nginx -t refused a server before spotinfer with nginx's default parameters"
conf bad.conf 1 on "$port"
sed -i 's/spotinfer_route llm;/spotinfer_route nowhere;/' "$work/prefix/conf/bad.conf"
expect_t_fail "a route to an upstream without spotinfer" 'upstream "nowhere" is named by a spotinfer directive'

note "the README's nginx.conf, with the test's addresses and paths"
"$python" - "$root/README.md" "$work/prefix/conf/readme.conf" <<PY
import re, sys
text = open(sys.argv[1]).read()
block = re.search(r"## Linking it into nginx.*?<!-- doc-check: by tests/nginx/run.sh -->\n\`\`\`nginx\n(.*?)\`\`\`",
                  text, re.S).group(1)
for old, new in [("/usr/lib/nginx/modules/ngx_http_spotinfer_module.so", "$module"),
                 ("/etc/nginx/spotinfer.json", "$work/prefix/conf/spotinfer.json"),
                 ("10.0.1.10:8000", "$(cat "$work/spot-a.addr")"),
                 ("10.0.1.11:8000", "$(cat "$work/spot-b.addr")"),
                 ("10.0.2.10:8000", "$(cat "$work/od-1.addr")"),
                 ("listen 8080;", "listen 127.0.0.1:$port;"),
                 ("http {", "http {\n    access_log off;\n    client_body_temp_path $work/prefix/body;\n"
                            "    proxy_temp_path $work/prefix/proxy;")]:
    if old not in block:
        sys.exit(f"the README's nginx.conf has no {old!r}")
    block = block.replace(old, new)
open(sys.argv[2], "w").write(block)
PY
readme_nginx() {
  nginx -p "$work/prefix" -c conf/readme.conf \
    -g "pid $work/prefix/logs/readme.pid; error_log $work/prefix/logs/readme-error.log info;" "$@"
}
readme_nginx -t 2>&1 | sed 's/^/   /'
readme_nginx
code=0
for _ in $(seq 1 100); do
  code=$(curl -s -o "$work/readme.out" -w '%{http_code}' -H 'Content-Type: application/json' \
    -d '{"model":"fake-model","messages":[{"role":"user","content":"hello"}]}' \
    "http://127.0.0.1:$port/v1/chat/completions" || true)
  [[ $code == 200 ]] && break
  sleep 0.1
done
[[ $code == 200 ]] || die "the README's configuration answered $code: $(cat "$work/readme.out")"
mcode=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/metrics")
[[ $mcode == 403 ]] || die "the README's /metrics is open to 127.0.0.1 ($mcode)"
kill -QUIT "$(cat "$work/prefix/logs/readme.pid")"
for _ in $(seq 1 50); do [[ -f "$work/prefix/logs/readme.pid" ]] || break; sleep 0.1; done
note "README's nginx.conf: nginx -t passes, a chat completion is routed, /metrics is closed to others"

note "nginx with the module: master process, 2 workers, port $port"
conf nginx.conf 2 on "$port"
nginx -p "$work/prefix" -c conf/nginx.conf -t 2>&1 | sed 's/^/   /'
nginx -p "$work/prefix" -c conf/nginx.conf

ids="spot-a=$(cat "$work/spot-a.addr"),spot-b=$(cat "$work/spot-b.addr"),od-1=$(cat "$work/od-1.addr"),hot=$(cat "$work/hot.addr")"
ids+=",multi=$(cat "$work/multi.addr")"
pidlist="spot-a=$(cat "$work/spot-a.pid"),spot-b=$(cat "$work/spot-b.pid"),od-1=$(cat "$work/od-1.pid")"
timeout 120 "$python" "$here/check.py" --base "http://127.0.0.1:$port" --backends "$ids" \
  --pids "$pidlist" --access-log "$work/prefix/logs/nginx-access.log" \
  --error-log "$work/prefix/logs/nginx-error.log" --metrics-out "$work/metrics.txt" --workers 2

grep -q "a client request body is buffered to a temporary file" "$work/prefix/logs/nginx-error.log" ||
  die "the big body was not buffered in a file: the module's file path went untested"

note "metrics text: Prometheus parser and promlint (tests/promlint)"
(cd "$root/tests/promlint" && go run . "$work/metrics.txt")

note "nginx -s reload: new workers, new engines, the same shared zone"
nginx -p "$work/prefix" -c conf/nginx.conf -s reload
timeout 60 "$python" "$here/check.py" --base "http://127.0.0.1:$port" --backends "$ids" \
  --workers 2 --after-reload

grep -E '\[(alert|emerg|crit)\]|signal [0-9]+ .*exited|core dumped' "$work/prefix/logs/nginx-error.log" &&
  die "nginx logged a crash or an alert (above)"
kill -QUIT "$(cat "$work/prefix/logs/nginx.pid")"
for _ in $(seq 1 50); do [[ -f "$work/prefix/logs/nginx.pid" ]] || break; sleep 0.1; done

note "one worker under valgrind (master_process off, daemon off)"
read -r vport eport sport oport <<<"$(free_ports)"
conf valgrind.conf 1 off "$vport"
valgrind --quiet --leak-check=full --errors-for-leak-kinds=definite,indirect \
  --error-exitcode=99 --suppressions="$here/nginx.supp" --log-file="$work/valgrind.log" \
  nginx -p "$work/prefix" -c conf/valgrind.conf &
vg=$!
pids+=("$vg")
timeout 120 "$python" "$here/check.py" --base "http://127.0.0.1:$vport" --backends "$ids" \
  --valgrind-round
kill -QUIT "$(cat "$work/prefix/logs/valgrind.pid")"
set +e
wait "$vg"
rc=$?
set -e
if [[ $rc -ne 0 ]]; then
  cat "$work/valgrind.log" >&2
  die "valgrind: exit $rc"
fi
# The engines were freed (what is still reachable at exit is not a leak to
# valgrind, so the exit path is checked by its log line).
[[ $(grep -c 'engine freed' "$work/prefix/logs/valgrind-error.log") -eq 8 ]] ||
  die "the worker did not free its eight engines on exit"
note "valgrind: no memory error, no leak"
keep=no
