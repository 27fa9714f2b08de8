#!/usr/bin/env bash
# Every test of libspotinfer, in one command:
#
#   bash scripts/test.sh
#
# Stages (each prints a header; the run goes on after a failed stage where it
# can and exits nonzero at the end if any stage failed):
#   deps      tests/scripts/test_apt_install.sh (scripts/apt-install.sh, the
#             setup scripts' apt step, on a made-up machine) and
#             tests/scripts/test_script_paths.sh (every file of the tree
#             this script names exists), then scripts/setup-deps.sh
#   length    scripts/check-length.py: no function in lib/ over 120 lines
#             unless a comment containing "length:" above it says why
#   docs      scripts/check-doc-links.py: every relative link of README.md,
#             CHANGELOG.md, docs/*.md and the bindings' READMEs resolves;
#             scripts/check-doc-blocks.py: every code block of those pages
#             is run by a test or marked as not a command (and its
#             --self-test on made-up pages); tests/bench/peers/aggregate.py
#             --self-test (what makes the peers' tables in
#             docs/performance.md, on made-up runs)
#   build     RelWithDebInfo build in build/, warnings as errors in the
#             library, examples and API tests; ctest
#   asan      ASan + UBSan build in build-asan/; ctest
#   tsan      ThreadSanitizer build in build-tsan/; ctest
#   portable  the library and its tests built with SPI_WIDE=OFF in
#             build-portable/ (no x86-64 vector loop: what an ARM or any
#             other CPU builds, with each wide entry point's stand-in); ctest
#   valgrind  every unit and api test program of build/ under memcheck
#   install   cmake --install into a temporary prefix; scripts/consumer-test.sh
#   docrun    the documentation's shell blocks marked `run` against that
#             prefix (scripts/check-doc-blocks.py --run), scripts/demo.sh,
#             and docs/sim.svg compared with the chart the demo draws
#   python    pip install ./bindings/python in a fresh venv (the wheel
#             carries the library, and libspotinfer_redis when hiredis is
#             there: tests/redis/test_python_redis.py through the package
#             alone, on a throwaway redis-server), mypy --strict on a
#             user's script and on
#             the package's source, the sdist, then bindings/python/tests
#             with pytest
#   go        go vet, go test, go test -race and a cgocheck2 run in
#             bindings/go, then its go-vs-C benchmarks, a module built
#             through the replace line of
#             docs/bindings.md (its Go program, run), and the metrics text
#             through Prometheus' parser and linter (tests/promlint)
#   gateway   examples/internal, examples/fakellm and examples/gateway: go
#             vet, go test (-race for the gateway) against the installed
#             library, then the
#             spot-interruption drill (examples/gateway/drill.sh) and a
#             short load run (examples/gateway/loadrun.sh --smoke)
#   redis     scripts/setup-redis-deps.sh, then a throwaway redis-server
#             (tests/redis/redis-server.sh: 127.0.0.1, a port it picks, AOF
#             with appendfsync always, a temp dir) for the tests labelled
#             `redis` of build/ (libspotinfer_redis: connection, the Redis
#             replay store, the replay-queue tests on it, several processes,
#             server killed / stopped), each also under valgrind, and the
#             replay-store benchmark (journal vs Redis, 1 and 4 processes)
#   litellm   the LiteLLM routing strategy (bindings/python/spotinfer/litellm.py)
#             with the real litellm package, pinned, in build/venv-litellm
#             (scripts/setup-litellm-deps.sh: uv, pinned) against examples/fakellm
#             backends: tests/litellm with pytest, then the Router with and
#             without the strategy (tests/litellm/bench.py --smoke)
#   nginx     scripts/setup-nginx-deps.sh, then the nginx module
#             (bindings/nginx) built against Debian's nginx-dev and loaded
#             by its nginx with fakellm backends: tests/nginx/run.sh (nginx
#             -t errors, affinity, streams and their output tokens,
#             400/429/503, pushed notices in every worker, fallbacks, metrics
#             through tests/promlint, one worker under valgrind), then
#             tests/nginx/bench.sh --smoke
#   fuzz      clang-14 libFuzzer build in build-fuzz/; each target runs for
#             SPI_FUZZ_SECONDS (default 20) over a copy of its corpus
#
# Environment knobs: SPI_WERROR=OFF keeps warnings non-fatal; SPI_JOBS sets
# build/test parallelism; SPI_FUZZ_SECONDS sets the time per fuzz target;
# SPI_SKIP="asan fuzz" skips stages by name (never used by CI).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

jobs=${SPI_JOBS:-$(nproc 2>/dev/null || echo 2)}
werror=${SPI_WERROR:-ON}
fuzz_seconds=${SPI_FUZZ_SECONDS:-20}
skip=" ${SPI_SKIP:-} "

install_prefix=$(mktemp -d "${TMPDIR:-/tmp}/spotinfer-install.XXXXXX")
trap 'rm -rf "$install_prefix"' EXIT

results=()
n_pass=0
n_fail=0
n_skip=0
build_ok=no
install_ok=no

header() {
  echo
  echo "=================================================================="
  echo "== $*"
  echo "=================================================================="
}

note() { echo "-- $*"; }

# run_stage <name> <description> <function>: runs the function in a subshell
# with errexit (outside any conditional, so errexit really applies) and
# records the outcome.
run_stage() {
  local name=$1 desc=$2 fn=$3 start rc
  header "$name: $desc"
  if [[ "$skip" == *" $name "* ]]; then
    note "skipped (SPI_SKIP)"
    results+=("SKIP  $name")
    n_skip=$((n_skip + 1))
    return 0
  fi
  start=$SECONDS
  set +e
  (
    set -euo pipefail
    "$fn"
  )
  rc=$?
  set -e
  local took=$((SECONDS - start))
  if [[ $rc -eq 0 ]]; then
    results+=("PASS  $name (${took}s)")
    n_pass=$((n_pass + 1))
  elif [[ $rc -eq 77 ]]; then
    results+=("SKIP  $name")
    n_skip=$((n_skip + 1))
  else
    results+=("FAIL  $name (exit $rc, ${took}s)")
    n_fail=$((n_fail + 1))
  fi
  return 0
}

skip_stage() { # <name> <why>
  header "$1"
  note "skipped: $2"
  results+=("SKIP  $1 ($2)")
  n_skip=$((n_skip + 1))
}

# A stage that exists but cannot run counts as failed.
fail_stage() { # <name> <why>
  header "$1"
  note "FAILED: $2"
  results+=("FAIL  $1 ($2)")
  n_fail=$((n_fail + 1))
}

# --------------------------------------------------------------- stages

stage_deps() {
  bash "$root/tests/scripts/test_apt_install.sh"
  bash "$root/tests/scripts/test_script_paths.sh"
  bash "$root/scripts/setup-deps.sh"
}

stage_length() {
  python3 "$root/scripts/check-length.py" --limit 120
  # The floor and the roof: lib/engine.c (configure, engine life) builds on
  # everything else, so no other file of lib/ may call what it defines.
  local fn bad=0
  for fn in $(grep -oE '^[a-z][a-z0-9_ *]*\b(spi_[a-z0-9_]+)\(' "$root/lib/engine.c" |
      grep -oE 'spi_[a-z0-9_]+'); do
    if grep -lw "$fn" "$root"/lib/*.c | grep -v '/engine\.c$' |
        xargs -r grep -Hnw "$fn" | grep -v '^[^:]*:[0-9]*: *\*'; then
      note "lib/ calls $fn, which lib/engine.c (the roof) defines"
      bad=1
    fi
  done
  return "$bad"
}

stage_docs() {
  python3 "$root/scripts/check-doc-links.py" "$root"
  python3 "$root/scripts/check-doc-blocks.py" --self-test
  python3 "$root/scripts/check-doc-blocks.py" "$root"
  python3 "$root/tests/bench/peers/aggregate.py" --self-test
}

# The documentation's commands against the installed library, the README's
# demo command as printed, and the chart it draws against docs/sim.svg.
stage_docrun() {
  python3 "$root/scripts/check-doc-blocks.py" --run --prefix "$install_prefix" \
    --build "$root/build" "$root"
  note "bash scripts/demo.sh (the README's first command)"
  bash "$root/scripts/demo.sh" >"$root/build/demo.log" 2>&1 || {
    tail -n 40 "$root/build/demo.log"; return 1; }
  tail -n 4 "$root/build/demo.log"
  if ! cmp -s "$root/build/sim.svg" "$root/docs/sim.svg"; then
    note "docs/sim.svg is not the chart the demo draws now; refresh it with"
    note "  bash scripts/demo.sh && cp build/sim.svg docs/sim.svg"
    return 1
  fi
  note "docs/sim.svg is the chart the demo draws"
}

# Build a tree and show the compiler warnings it printed, if any.
configure_and_build() { # <dir> <cmake args...>
  local dir=$1
  shift
  cmake -S "$root" -B "$dir" "$@"
  cmake --build "$dir" -j "$jobs" 2>&1 | tee "$dir/build.log"
  local warnings
  warnings=$(grep -c 'warning:' "$dir/build.log" || true)
  if [[ "$warnings" -gt 0 ]]; then
    note "$warnings compiler warning line(s) in $dir:"
    grep 'warning:' "$dir/build.log" | sort -u | head -n 50
  else
    note "no compiler warnings in $dir"
  fi
}

stage_build() {
  configure_and_build "$root/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DSPI_WERROR="$werror" -DSPI_SANITIZE=OFF -DSPI_SANITIZE_THREAD=OFF -DSPI_FUZZ=OFF \
    -DSPI_BUILD_TESTS=ON -DSPI_BUILD_EXAMPLES=ON -DSPI_BUILD_BENCH=ON
  ctest --test-dir "$root/build" --output-on-failure -j "$jobs" --timeout 600
}

stage_asan() {
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
  export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
  configure_and_build "$root/build-asan" -DCMAKE_BUILD_TYPE=Debug \
    -DSPI_WERROR=OFF -DSPI_SANITIZE=ON -DSPI_SANITIZE_THREAD=OFF -DSPI_FUZZ=OFF \
    -DSPI_BUILD_TESTS=ON -DSPI_BUILD_EXAMPLES=ON -DSPI_BUILD_BENCH=OFF
  ctest --test-dir "$root/build-asan" --output-on-failure -j "$jobs" --timeout 900
}

stage_tsan() {
  export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
  configure_and_build "$root/build-tsan" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DSPI_WERROR=OFF -DSPI_SANITIZE=OFF -DSPI_SANITIZE_THREAD=ON -DSPI_FUZZ=OFF \
    -DSPI_BUILD_TESTS=ON -DSPI_BUILD_EXAMPLES=OFF -DSPI_BUILD_BENCH=OFF
  ctest --test-dir "$root/build-tsan" --output-on-failure -j "$jobs" --timeout 900
}

stage_portable() {
  configure_and_build "$root/build-portable" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DSPI_WERROR="$werror" -DSPI_WIDE=OFF -DSPI_SANITIZE=OFF -DSPI_SANITIZE_THREAD=OFF \
    -DSPI_FUZZ=OFF -DSPI_BUILD_TESTS=ON -DSPI_BUILD_EXAMPLES=OFF -DSPI_BUILD_BENCH=OFF
  ctest --test-dir "$root/build-portable" --output-on-failure -j "$jobs" --timeout 600
}

# The unit and api test programs of build/, each under valgrind memcheck.
# Any error or definite/indirect leak fails the stage.
stage_valgrind() {
  local list="$root/build/valgrind-tests.txt" logdir="$root/build/valgrind"
  rm -rf "$logdir"
  mkdir -p "$logdir"
  ctest --test-dir "$root/build" --show-only=json-v1 >"$root/build/ctest.json"
  python3 - "$root/build/ctest.json" >"$list" <<'PY'
import json, sys
# One line per test: name, working directory, then the command, tab-separated.
for t in json.load(open(sys.argv[1]))["tests"]:
    props = {p["name"]: p["value"] for p in t.get("properties", [])}
    labels = props.get("LABELS", [])
    if not ({"unit", "api"} & set(labels)) or "command" not in t:
        continue
    print("\t".join([t["name"], props.get("WORKING_DIRECTORY", "")] + t["command"]))
PY
  if [[ ! -s "$list" ]]; then
    note "no unit or api test programs found"
    return 1
  fi
  local pass=0 fail=0 name wd cmd
  # valgrind runs a program's threads one at a time: the concurrency tests
  # get ten times their watchdog limits. Its default lock between threads
  # is not fair: a thread that keeps running (a router looping until told
  # to stop) can take it back again and again while the one that would
  # tell it (test_lock_order's main thread, in pthread_create) waits for
  # minutes. --fair-sched=yes hands it round in turn.
  export SPI_WATCHDOG_SCALE=10
  while IFS=$'\t' read -r -a fields; do
    name=${fields[0]}
    wd=${fields[1]:-$root/build/tests}
    cmd=("${fields[@]:2}")
    # Forked children (lock and crash tests) end with _exit() holding the
    # parent's heap by design; they are checked by their exit status.
    if (cd "$wd" && valgrind -q --fair-sched=yes --error-exitcode=1 --leak-check=full \
      --child-silent-after-fork=yes \
      --show-leak-kinds=definite,indirect \
      --errors-for-leak-kinds=definite,indirect \
      --log-file="$logdir/$name.log" "${cmd[@]}" \
      </dev/null >"$logdir/$name.out" 2>&1); then
      if [[ -s "$logdir/$name.log" ]]; then
        echo "FAIL $name: valgrind reported:"
        cat "$logdir/$name.log"
        fail=$((fail + 1))
      else
        echo "ok   $name"
        pass=$((pass + 1))
      fi
    else
      echo "FAIL $name:"
      cat "$logdir/$name.log" "$logdir/$name.out"
      fail=$((fail + 1))
    fi
  done <"$list"
  echo "valgrind: $pass passed, $fail failed"
  [[ $fail -eq 0 ]]
}

stage_install() {
  cmake --install "$root/build" --prefix "$install_prefix"
  bash "$root/scripts/consumer-test.sh" "$install_prefix"
}

# Where the installed library and .pc file are, for the bindings.
installed_libdir() {
  dirname "$(dirname "$(find "$install_prefix" -name spotinfer.pc | head -n 1)")"
}

stage_python() {
  local libdir venv="$root/build/venv" pkg="$root/bindings/python" out
  libdir=$(installed_libdir)
  # A fresh venv each run: the package must bring everything it needs.
  rm -rf "$venv"
  python3 -m venv "$venv"
  # Pinned: pytest runs the tests, prometheus_client parses the metrics
  # text, mypy checks a user's script, build makes the sdist.
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    pytest==8.3.4 prometheus_client==0.21.1 mypy==1.13.0 build==1.2.2
  note "pip install ./bindings/python (builds the C library into the wheel)"
  (cd "$root" && "$venv/bin/python" -m pip install -q \
    --disable-pip-version-check ./bindings/python)
  # Outside the source tree and with no library path, so that only the
  # installed package (and the library inside it) can answer.
  local away
  away=$(mktemp -d "${TMPDIR:-/tmp}/spotinfer-py.XXXXXX")
  cp "$pkg/tests/typing/user_script.py" "$away/"
  note "the installed package loads the library it carries"
  out=$(cd "$away" && env -u SPOTINFER_LIBRARY -u LD_LIBRARY_PATH \
    "$venv/bin/python" -c 'import os, spotinfer
p = spotinfer.lib.path
assert os.path.dirname(p) == os.path.dirname(spotinfer.__file__), p
print(p)')
  echo "$out"
  (cd "$away" && env -u SPOTINFER_LIBRARY -u LD_LIBRARY_PATH \
    "$venv/bin/python" user_script.py)
  python_redis "$venv/bin/python" "$away"
  note "mypy --strict on a user's script"
  (cd "$away" && "$venv/bin/mypy" --strict --no-incremental user_script.py)
  note "mypy --strict on the package's own source (litellm*.py aside: they import litellm)"
  local own=()
  mapfile -t own < <(find "$pkg/spotinfer" -maxdepth 1 -name '*.py' ! -name 'litellm*' | sort)
  (cd "$pkg" && "$venv/bin/mypy" --strict --no-incremental --cache-dir=/dev/null "${own[@]}")
  rm -rf "$away"
  note "sdist: the package and the C sources it builds"
  rm -rf "$root/build/sdist"
  bash "$root/scripts/python-sdist.sh" "$root/build/sdist" "$venv/bin/python"
  local listing
  listing=$(tar tzf "$root/build/sdist"/spotinfer-*.tar.gz)
  for f in pyproject.toml CMakeLists.txt LICENSE spotinfer/_native.py \
    csrc/CMakeLists.txt csrc/lib/spotinfer.map csrc/lib/route.c \
    csrc/include/spotinfer/spotinfer.h csrc/redis/CMakeLists.txt; do
    if ! grep -q "^spotinfer-[0-9.]*/$f\$" <<<"$listing"; then
      note "the sdist lacks $f"
      return 1
    fi
  done
  note "pytest (against the library installed by the install stage)"
  export SPOTINFER_LIBRARY="$libdir/libspotinfer.so.0"
  export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  local rc=0
  # Bounded: a hang fails the stage instead of the whole run.
  (cd "$pkg" && timeout 900 "$venv/bin/python" -m pytest -q tests) || rc=$?
  if [[ $rc -eq 5 ]]; then
    note "bindings/python/tests holds no tests"
    return 1
  fi
  return "$rc"
}

# With hiredis on the machine the wheel carries libspotinfer_redis beside
# libspotinfer, and "store": "redis" works from the installed package alone:
# tests/redis/test_python_redis.py against a throwaway server, with no
# library path, then which copy the process loaded.
python_redis() { # <python> <dir outside the source tree>
  local py=$1 away=$2 port dir pid rc=0
  if ! pkg-config --exists hiredis; then
    note "no hiredis: the wheel carries no libspotinfer_redis"
    return 0
  fi
  note "the wheel carries libspotinfer_redis: the Redis store from Python alone"
  read -r port dir pid < <(bash "$root/tests/redis/redis-server.sh")
  cp "$root/tests/redis/test_python_redis.py" "$away/"
  (cd "$away" && env -u SPOTINFER_LIBRARY -u LD_LIBRARY_PATH -u PYTHONPATH \
    SPI_REDIS_PORT="$port" "$py" -c 'import os, runpy, spotinfer
runpy.run_path("test_python_redis.py")
lib = os.path.dirname(spotinfer.lib.path)
maps = [l.split()[-1] for l in open("/proc/self/maps") if "libspotinfer_redis" in l]
assert maps and all(os.path.dirname(m) == lib for m in maps), (lib, maps)
print("libspotinfer_redis loaded from", maps[0])') || rc=1
  bash "$root/tests/redis/redis-server.sh" --stop "$dir"
  return "$rc"
}

stage_go() {
  local libdir
  libdir=$(installed_libdir)
  export PKG_CONFIG_PATH="$libdir/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export CGO_ENABLED=1
  # The .pc file is relocatable, so its text is the same for every install
  # prefix; naming the prefix in the cgo flags keeps Go's build cache from
  # linking against an earlier, since-deleted prefix.
  export CGO_LDFLAGS="-L$libdir${CGO_LDFLAGS:+ $CGO_LDFLAGS}"
  cd "$root/bindings/go"
  note "go vet"
  go vet ./...
  note "go test"
  go test -count=1 ./...
  note "go test -race"
  go test -count=1 -race ./...
  # The full cgo pointer checks. Go 1.21 turned GODEBUG=cgocheck=2 into a
  # build-time experiment (the runtime now refuses the GODEBUG form), and
  # bindings/go/go.mod requires Go >= 1.21.
  note "go test with GOEXPERIMENT=cgocheck2 (formerly GODEBUG=cgocheck=2)"
  GOEXPERIMENT=cgocheck2 go test -count=1 ./...
  note "benchmarks: each Go call next to the same call looped in C"
  go test -count=1 -run '^$' -bench . -benchtime=20000x ./...
  go_consumer
  # The metrics text through the Prometheus client library's parser and
  # linter (the checks of `promtool check metrics`), pinned in its go.sum.
  note "metrics text: Prometheus client parser and promlint"
  (cd "$root/tests/promlint" && go run .)
}

# The Go program of docs/bindings.md (the same as bindings/go/README.md's),
# in its own module whose go.mod has the require and replace lines printed
# there, with the checkout's path for /path/to/libspotinfer: it imports the
# binding by its published path, routes a body and reports the ticket.
go_consumer() {
  local mod="$root/build/go-consumer" out page
  rm -rf "$mod"
  mkdir -p "$mod"
  for page in docs/bindings.md bindings/go/README.md; do
    awk '/^```go$/{c=1; next} c&&/^```$/{exit} c{print}' "$root/$page" >"$mod/$(basename "$page").go.txt"
  done
  if ! cmp "$mod/bindings.md.go.txt" "$mod/README.md.go.txt"; then
    note "docs/bindings.md and bindings/go/README.md show different Go programs"
    return 1
  fi
  mv "$mod/bindings.md.go.txt" "$mod/main.go"
  rm "$mod/README.md.go.txt"
  { printf 'module example.com/consumer\n\ngo 1.21\n\n'
    grep -E '^(require|replace) github.com/libspotinfer/' "$root/docs/bindings.md" |
      sed "s#/path/to/libspotinfer#$root#"
  } >"$mod/go.mod"
  if [[ $(grep -c '^re' "$mod/go.mod") -ne 2 ]]; then
    note "docs/bindings.md does not show the require and replace lines"
    return 1
  fi
  note "the Go program of docs/bindings.md, in a module of its own"
  (cd "$mod" && gofmt -l . | { ! grep .; }) || { note "main.go is not gofmt'ed"; return 1; }
  out=$(cd "$mod" && go run .)
  echo "$out"
  [[ "$out" =~ ^gold\ key\ [0-9a-f]{32}\ -\>\ od-a\ \(.+\),\ \$0\.[0-9]{6}$ ]]
}

# The fake model server and the gateway example, built against the
# installed library the way a user builds them.
stage_gateway() {
  local libdir
  libdir=$(installed_libdir)
  export PKG_CONFIG_PATH="$libdir/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export CGO_ENABLED=1
  export CGO_LDFLAGS="-L$libdir${CGO_LDFLAGS:+ $CGO_LDFLAGS}"
  note "examples/internal (shared by both): go vet, go test"
  (cd "$root/examples/internal" && go vet ./... && go test -count=1 ./...)
  note "examples/fakellm: go vet, go test"
  (cd "$root/examples/fakellm" && go vet ./... && go test -count=1 ./...)
  note "examples/gateway: go vet, go test -race"
  (cd "$root/examples/gateway" && go vet ./... && go test -count=1 -race ./...)
  note "the spot-interruption drill (examples/gateway/drill.sh)"
  bash "$root/examples/gateway/drill.sh"
  note "the load run, short (examples/gateway/loadrun.sh --smoke)"
  bash "$root/examples/gateway/loadrun.sh" --smoke
}

# libspotinfer_redis against a real server the stage starts and stops.
stage_redis() {
  bash "$root/scripts/setup-redis-deps.sh"
  if [[ ! -e "$root/build/libspotinfer_redis.so" ]]; then
    note "build/ has no libspotinfer_redis (was hiredis installed before the build stage?)"
    return 1
  fi
  local port dir pid rc=0
  read -r port dir pid < <(bash "$root/tests/redis/redis-server.sh")
  note "redis-server pid $pid on 127.0.0.1:$port (data in $dir)"
  export SPI_REDIS_PORT=$port SPI_REDIS_DIR=$dir
  ctest --test-dir "$root/build" -L redis --output-on-failure --timeout 300 || rc=1
  if [[ $rc -eq 0 ]]; then
    note "the same programs under valgrind memcheck"
    bash "$root/tests/redis/valgrind-redis.sh" "$root/build" || rc=1
    note "replay store benchmark: journal vs Redis, 1 and 4 processes (JSON lines)"
    bash "$root/tests/redis/bench.sh" "$root/build/tests/redis/redis_worker" || rc=1
  fi
  bash "$root/tests/redis/redis-server.sh" --stop "$dir"
  return "$rc"
}

# The LiteLLM strategy against the installed library, the way the python
# stage runs the binding's tests.
stage_litellm() {
  local libdir venv="$root/build/venv-litellm" out="$root/build/litellm"
  libdir=$(installed_libdir)
  bash "$root/scripts/setup-litellm-deps.sh" "$venv"
  mkdir -p "$out"
  note "examples/fakellm: go build"
  (cd "$root/examples/fakellm" && go build -o "$out/fakellm" .)
  export SPOTINFER_LIBRARY="$libdir/libspotinfer.so.0"
  export SPI_FAKELLM="$out/fakellm"
  export LITELLM_LOCAL_MODEL_COST_MAP=True
  note "pytest tests/litellm"
  (cd "$root/tests/litellm" && timeout 900 "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    -W ignore::DeprecationWarning .)
  note "the Router with and without the strategy (tests/litellm/bench.py --smoke)"
  "$venv/bin/python" "$root/tests/litellm/bench.py" --smoke
}

# The nginx module against Debian's nginx, built against the installed
# library the way a user builds it.
stage_nginx() {
  local libdir
  bash "$root/scripts/setup-nginx-deps.sh"
  libdir=$(installed_libdir)
  export PKG_CONFIG_PATH="$libdir/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  bash "$root/tests/nginx/run.sh"
  note "nginx with the module vs its round robin, short (tests/nginx/bench.sh --smoke)"
  bash "$root/tests/nginx/bench.sh" --smoke
}

fuzz_toolchain_ok() {
  command -v clang-14 >/dev/null 2>&1 || return 1
  local probe
  probe=$(mktemp -d "${TMPDIR:-/tmp}/spotinfer-fuzzprobe.XXXXXX")
  printf '%s\n' '#include <stddef.h>' '#include <stdint.h>' \
    'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);' \
    'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }' \
    >"$probe/probe.c"
  local rc=0
  clang-14 -fsanitize=fuzzer,address,undefined "$probe/probe.c" \
    -o "$probe/probe" >/dev/null 2>&1 || rc=1
  rm -rf "$probe"
  return $rc
}

stage_fuzz() {
  local targets=() f
  for f in "$root"/tests/fuzz/fuzz_*.c; do
    [[ -e "$f" ]] && targets+=("$(basename "$f" .c)")
  done
  if [[ ${#targets[@]} -eq 0 ]]; then
    note "no fuzz targets (tests/fuzz/fuzz_*.c) yet"
    return 77
  fi
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
  export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
  CC=clang-14 cmake -S "$root" -B "$root/build-fuzz" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_COMPILER=clang-14 -DSPI_FUZZ=ON -DSPI_SANITIZE=ON -DSPI_SANITIZE_THREAD=OFF -DSPI_WERROR=OFF \
    -DSPI_BUILD_TESTS=ON -DSPI_BUILD_EXAMPLES=OFF -DSPI_BUILD_BENCH=OFF
  cmake --build "$root/build-fuzz" -j "$jobs" --target "${targets[@]}"

  local pass=0 fail=0 t seeds work art
  for t in "${targets[@]}"; do
    seeds="$root/tests/fuzz/corpus/$t"
    work="$root/build-fuzz/corpus/$t"
    art="$root/build-fuzz/artifacts/$t"
    mkdir -p "$work" "$art"
    local dirs=("$work")
    if [[ -d "$seeds" ]]; then
      dirs+=("$seeds")
    else
      note "$t has no seed corpus at tests/fuzz/corpus/$t"
    fi
    # New inputs go to the first directory (under build-fuzz/), never into
    # the seed corpus in the source tree.
    if "$root/build-fuzz/tests/$t" -max_total_time="$fuzz_seconds" \
      -runs=50000000 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$art/" "${dirs[@]}" \
      >"$root/build-fuzz/$t.log" 2>&1; then
      echo "ok   $t: $(grep -E '^stat::number_of_executed_units' "$root/build-fuzz/$t.log" | awk '{print $2}') runs in ${fuzz_seconds}s"
      pass=$((pass + 1))
    else
      echo "FAIL $t (artifacts in $art):"
      tail -n 60 "$root/build-fuzz/$t.log"
      fail=$((fail + 1))
    fi
  done
  echo "fuzz: $pass passed, $fail failed"
  [[ $fail -eq 0 ]]
}

# ----------------------------------------------------------------- main

overall_start=$SECONDS

run_stage deps "install build dependencies (scripts/setup-deps.sh)" stage_deps

run_stage length "function length in lib/ (scripts/check-length.py)" stage_length

run_stage docs "relative links of the documentation (scripts/check-doc-links.py)" stage_docs

run_stage build "RelWithDebInfo build in build/ + ctest" stage_build
if [[ "${results[-1]}" == PASS* ]]; then build_ok=yes; fi

run_stage asan "ASan + UBSan build in build-asan/ + ctest" stage_asan

run_stage tsan "ThreadSanitizer build in build-tsan/ + ctest" stage_tsan

run_stage portable "build without the vector loops in build-portable/ + ctest" stage_portable

if [[ $build_ok == yes ]]; then
  run_stage valgrind "unit and api tests under valgrind memcheck" stage_valgrind
else
  skip_stage valgrind "the normal build failed"
fi

if [[ $build_ok == yes ]]; then
  run_stage install "install to a temporary prefix + consumer builds" stage_install
  if [[ "${results[-1]}" == PASS* ]]; then install_ok=yes; fi
else
  skip_stage install "the normal build failed"
fi

if [[ $install_ok == yes ]]; then
  run_stage docrun "the documentation's commands, the demo, docs/sim.svg" stage_docrun
else
  fail_stage docrun "no installed library (install stage failed)"
fi

if [[ ! -d "$root/bindings/python/tests" ]]; then
  skip_stage python "bindings/python/tests does not exist yet"
elif [[ $install_ok != yes ]]; then
  fail_stage python "no installed library (install stage failed)"
else
  run_stage python "Python binding tests (pytest in build/venv)" stage_python
fi

if [[ ! -f "$root/bindings/go/go.mod" ]]; then
  skip_stage go "bindings/go/go.mod does not exist yet"
elif [[ $install_ok != yes ]]; then
  fail_stage go "no installed library (install stage failed)"
elif ! command -v go >/dev/null 2>&1; then
  fail_stage go "no go toolchain"
else
  run_stage go "Go binding tests (go test)" stage_go
fi

if [[ $install_ok != yes ]]; then
  fail_stage gateway "no installed library (install stage failed)"
elif ! command -v go >/dev/null 2>&1; then
  fail_stage gateway "no go toolchain"
else
  run_stage gateway "gateway example, fake model server, spot-interruption drill" stage_gateway
fi

if [[ $build_ok == yes ]]; then
  run_stage redis "libspotinfer_redis against a real redis-server" stage_redis
else
  skip_stage redis "the normal build failed"
fi

if [[ $install_ok != yes ]]; then
  fail_stage litellm "no installed library (install stage failed)"
elif ! command -v go >/dev/null 2>&1; then
  fail_stage litellm "no go toolchain"
else
  run_stage litellm "LiteLLM routing strategy with the real litellm (build/venv-litellm)" stage_litellm
fi

if [[ $install_ok != yes ]]; then
  fail_stage nginx "no installed library (install stage failed)"
elif ! command -v go >/dev/null 2>&1; then
  fail_stage nginx "no go toolchain"
else
  run_stage nginx "nginx module in Debian's nginx, fakellm backends, valgrind" stage_nginx
fi

if fuzz_toolchain_ok; then
  run_stage fuzz "libFuzzer targets, ${fuzz_seconds}s each (build-fuzz/)" stage_fuzz
else
  skip_stage fuzz "clang-14 with libFuzzer is not available"
fi

header "summary ($((SECONDS - overall_start))s)"
for r in "${results[@]}"; do
  echo "  $r"
done
echo "stages: $n_pass passed, $n_fail failed, $n_skip skipped"
[[ $n_fail -eq 0 ]]
