#!/usr/bin/env bash
# The redis-labelled test programs of a build tree under valgrind memcheck
# (each with the build tree on LD_LIBRARY_PATH, where a statically linked
# engine finds libspotinfer_redis, as ctest gives them; each bounded),
# against the server of the `redis` stage (SPI_REDIS_PORT): any error or
# definite/indirect leak fails. The replay-queue tests run on the Redis
# store, so the engine's dlopen()ed libspotinfer_redis is checked too.
#
#   bash tests/redis/valgrind-redis.sh build
set -euo pipefail

build=$1
: "${SPI_REDIS_PORT:?set by the redis stage of scripts/test.sh}"
# --fair-sched=yes: threads take turns (scripts/test.sh's valgrind stage
# says why).
vg=(valgrind --quiet --fair-sched=yes --error-exitcode=99 --leak-check=full
  --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect)
rc=0
run() { # <name> <command...> (the environment is this script's)
  local name=$1 log="$build/valgrind-redis.$1.log"
  shift
  # Bounded: a test that hangs (a child that cannot load the library and
  # a parent waiting for it) fails here instead of holding the stage.
  if timeout 600 "${vg[@]}" "$@" >"$log" 2>&1; then
    echo "ok   $name (valgrind)"
  else
    echo "FAIL $name (valgrind), log $log:"
    tail -n 40 "$log"
    rc=1
  fi
}
export SPI_REDIS_PORT
run test_redis_conn "$build/tests/redis/test_redis_conn"
LD_LIBRARY_PATH=$build run test_redis_bus "$build/tests/redis/test_redis_bus"
LD_LIBRARY_PATH=$build run test_redis_store "$build/tests/redis/test_redis_store"
LD_LIBRARY_PATH=$build run test_redis_fallback "$build/tests/redis/test_redis_fallback"
SPI_REPLAY_TEST_STORE=redis LD_LIBRARY_PATH=$build \
  run test_replay_on_redis "$build/tests/test_replay"
exit "$rc"
