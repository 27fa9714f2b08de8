#!/usr/bin/env bash
# Start a throwaway redis-server for the tests of libspotinfer_redis:
# 127.0.0.1 only, on a free port it picks, with AOF and appendfsync always,
# in a temporary directory. Prints "PORT DIR PID" on stdout.
#
#   read -r port dir pid < <(bash tests/redis/redis-server.sh)
#   ... SPI_REDIS_PORT=$port ...
#   bash tests/redis/redis-server.sh --stop "$dir"
#
# --restart DIR starts a server again on the same port and data (the AOF
# written before), e.g. after a test killed it.
set -euo pipefail

start() { # <dir> <port>
  local dir=$1 port=$2
  redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" \
    --appendonly yes --appendfsync always --save '' \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
    --protected-mode yes >/dev/null
  for _ in $(seq 1 100); do
    if redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
      echo "$port" >"$dir/port"
      echo "$port $dir $(cat "$dir/redis.pid")"
      return 0
    fi
    sleep 0.05
  done
  echo "redis-server.sh: server on port $port did not answer" >&2
  cat "$dir/redis.log" >&2 || true
  return 1
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

case "${1:-}" in
--stop)
  dir=$2
  if [[ -f "$dir/redis.pid" ]]; then
    pid=$(cat "$dir/redis.pid")
    kill -CONT "$pid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
  ;;
--restart)
  dir=$2
  start "$dir" "$(cat "$dir/port")"
  ;;
*)
  dir=$(mktemp -d "${TMPDIR:-/tmp}/spotinfer-redis.XXXXXX")
  for _ in 1 2 3 4 5; do
    if start "$dir" "$(free_port)"; then exit 0; fi
  done
  exit 1
  ;;
esac
