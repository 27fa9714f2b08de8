#!/usr/bin/env bash
# TLS between libspotinfer_redis and a real server: a throwaway CA and a
# certificate for "localhost" (openssl), a TLS-only redis-server on
# 127.0.0.1 and a port it picks, in a temporary directory, then the TLS
# test of test_redis_conn (a trusted connection works; a wrong name, an
# untrusted CA and plain text to the TLS port fail with a message). Skipped
# (77) without redis-server or openssl.
#
#   bash tests/redis/tls.sh build/tests/redis/test_redis_conn
set -euo pipefail

prog=$(realpath "$1")
if ! command -v redis-server >/dev/null || ! command -v openssl >/dev/null; then
  echo "tls.sh: needs redis-server and openssl (scripts/setup-redis-deps.sh)"
  exit 77
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=$(mktemp -d "${TMPDIR:-/tmp}/spotinfer-tls.XXXXXX")
# The server writes its log as it shuts down: redis-server.sh --stop waits
# for it to exit before removing the directory (a kill then rm -rf raced
# with that last write and failed the test after it had passed).
trap 'bash "$here/redis-server.sh" --stop "$dir"' EXIT

cd "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=spotinfer test CA" \
  -keyout ca.key -out ca.pem >/dev/null 2>&1
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
  -keyout server.key -out server.csr >/dev/null 2>&1
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >ext.cnf
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
  -days 2 -extfile ext.cnf -out server.pem >/dev/null 2>&1
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
redis-server --bind 127.0.0.1 --port 0 --tls-port "$port" --dir "$dir" \
  --tls-cert-file server.pem --tls-key-file server.key --tls-ca-cert-file ca.pem \
  --tls-auth-clients no --save '' --appendonly no \
  --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null
for _ in $(seq 1 100); do
  [[ -s "$dir/redis.pid" ]] && grep -q "Ready to accept" "$dir/redis.log" && break
  sleep 0.05
done
SPI_REDIS_TLS_PORT=$port SPI_REDIS_TLS_CA="$dir/ca.pem" "$prog"
