#!/usr/bin/env bash
# fuzz-long.sh - run every libFuzzer target to a number of executions (10
# million by default), one after another, and print one line per target.
#
#   scripts/fuzz-long.sh [runs] [target...]
#
# runs: executions per target (SPI_FUZZ_RUNS, default 10000000); targets:
# the fuzz_*.c names to run (default all of tests/fuzz). Needs clang-14 with
# libFuzzer; builds build-fuzz/ as the test script's fuzz stage does (ASan +
# UBSan). New inputs go to build-fuzz/corpus/<target>, crashes to
# build-fuzz/artifacts/<target>; the seed corpus in the source tree is only
# read. SPI_FUZZ_JOBS runs that many targets at once (default 1: the run is
# long, and the machine is usually shared). Exit status 1 if any target
# failed. Each target prints one JSON line: executions, seconds, executions
# a second, corpus files, and the commit it ran on. Not part of
# scripts/test.sh (its fuzz stage runs each target for SPI_FUZZ_SECONDS).
#
# Rates differ a lot; docs/testing.md ("Fuzzing") has the figures of the
# last full run. Alone on a core, most targets run 40,000-300,000 inputs a
# second (10M in 1-4 minutes), the configuration and request targets
# 15,000-30,000 (6-11 minutes). fuzz_journal opens a queue on a journal
# directory per input, which recovers it; the directory lives on the
# in-memory file system of tests/fuzz/memfs.c (no system calls), and the
# target still runs about 2,900 inputs per CPU second (1,800 when it was on
# /dev/shm). Its 10M take about an hour of one idle core; on the shared
# 2-core machine, beside others' builds at nice 10, they took 84 minutes
# (1,980 inputs a second; docs/testing.md). Run it on its own
# (scripts/fuzz-long.sh 10000000 fuzz_journal) when that is too long.
# SPI_FUZZ_DIR=<dir> puts its journal on a real directory instead.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=${1:-${SPI_FUZZ_RUNS:-10000000}}
[[ $# -gt 0 ]] && shift
jobs=${SPI_FUZZ_JOBS:-1}

if ! command -v clang-14 >/dev/null; then
  echo "fuzz-long: clang-14 is needed (scripts/setup-deps.sh installs it)" >&2
  exit 2
fi

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  for f in "$root"/tests/fuzz/fuzz_*.c; do
    targets+=("$(basename "$f" .c)")
  done
fi

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
CC=clang-14 cmake -S "$root" -B "$root/build-fuzz" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang-14 -DSPI_FUZZ=ON -DSPI_SANITIZE=ON -DSPI_SANITIZE_THREAD=OFF \
  -DSPI_WERROR=OFF -DSPI_BUILD_TESTS=ON -DSPI_BUILD_EXAMPLES=OFF -DSPI_BUILD_BENCH=OFF >/dev/null
cmake --build "$root/build-fuzz" -j 2 --target "${targets[@]}" >/dev/null

run_one() {
  local t=$1 seeds="$root/tests/fuzz/corpus/$1" work="$root/build-fuzz/corpus/$1"
  local art="$root/build-fuzz/artifacts/$1" log="$root/build-fuzz/$1.long.log"
  mkdir -p "$work" "$art"
  local dirs=("$work")
  [[ -d "$seeds" ]] && dirs+=("$seeds")
  local start=$SECONDS
  if "$root/build-fuzz/tests/$t" -runs="$runs" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$art/" "${dirs[@]}" >"$log" 2>&1; then
    local n secs=$((SECONDS - start))
    n=$(awk '/^stat::number_of_executed_units/ {print $2}' "$log")
    printf '{"target":"%s","ok":true,"executions":%s,"seconds":%d,"exec_per_s":%d,"corpus":%s,"commit":"%s"}\n' \
      "$t" "$n" "$secs" $((n / (secs > 0 ? secs : 1))) "$(find "$work" -type f | wc -l)" "$commit"
  else
    printf '{"target":"%s","ok":false,"log":"%s","artifacts":"%s"}\n' "$t" "$log" "$art"
    tail -n 40 "$log" >&2
    return 1
  fi
}

commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
fail=0
if [[ $jobs -le 1 ]]; then
  for t in "${targets[@]}"; do run_one "$t" || fail=1; done
else
  pids=()
  for t in "${targets[@]}"; do
    while [[ $(jobs -rp | wc -l) -ge $jobs ]]; do wait -n || fail=1; done
    run_one "$t" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || fail=1; done
fi
exit $fail
