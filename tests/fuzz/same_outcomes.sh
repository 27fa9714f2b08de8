#!/usr/bin/env bash
# same_outcomes.sh - the journal fuzz target gives the same outcome for every
# input whether its journal is on the in-memory file system (memfs.c, the
# default) or on a real directory (SPI_FUZZ_DIR).
#
#   same_outcomes.sh <fuzz_journal_replay> <corpus-dir>...
#
# Runs the replay driver over the corpus twice, each time with
# SPI_FUZZ_TRACE collecting one line per input (recovery figures, message,
# claims, files left and their sizes), and fails on the first inputs whose
# lines differ. The real directory is made under $TMPDIR (or /tmp), and is
# named relative to it as "ddd/spi-fuzz-journal-XXXXXX", 27 bytes like the
# memory one ("/spi-memfs/spi-fuzz-journal"): the queue's message, which
# names the directory, is cut at the library's message size, and so is cut
# at the same place on both.
set -euo pipefail

bin=$(realpath "$1")
shift
[[ $# -ge 1 ]] || { echo "usage: $0 <fuzz_journal_replay> <corpus-dir>..." >&2; exit 2; }
work=$(mktemp -d "${TMPDIR:-/tmp}/spi-same-outcomes.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/ddd"

for corpus in "$@"; do
  corpus=$(realpath "$corpus")
  rm -f "$work/mem.txt" "$work/disk.txt"
  SPI_FUZZ_TRACE="$work/mem.txt" "$bin" "$corpus"
  (cd "$work" && SPI_FUZZ_TRACE="$work/disk.txt" SPI_FUZZ_DIR=ddd "$bin" "$corpus")
  # The driver runs the files in sorted path order (byte order).
  find "$corpus" -type f ! -name '.*' | LC_ALL=C sort >"$work/files.txt"
  inputs=$(wc -l <"$work/files.txt")
  lines=$(wc -l <"$work/mem.txt")
  if [[ $lines -ne $inputs ]] || ! cmp -s "$work/mem.txt" "$work/disk.txt"; then
    echo "same_outcomes: $corpus: outcomes differ ($inputs inputs, $lines lines in memory)" >&2
    paste -d '\n' "$work/files.txt" "$work/mem.txt" "$work/disk.txt" |
      awk 'NR % 3 == 1 {f = $0} NR % 3 == 2 {m = $0} NR % 3 == 0 && m != $0 {
             print f; print "  memory: " m; print "  disk:   " $0; if (++n == 5) exit }' >&2
    exit 1
  fi
  echo "same_outcomes: $corpus: $inputs inputs, same outcome on both"
done
