#!/usr/bin/env bash
# Every file or directory of the source tree that scripts/test.sh names
# ($root/...) is there, so no stage carries a branch for a file the tree
# does not have (such a branch is never taken, and reads as if it were).
# Paths under build*/ are made by the run itself and are not checked.
#
#   bash tests/scripts/test_script_paths.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
script="$root/scripts/test.sh"

checked=0
missing=0
while read -r rel; do
  case $rel in
  "" | build | build/* | build-*) continue ;;
  esac
  checked=$((checked + 1))
  if [[ ! -e "$root/$rel" ]]; then
    echo "scripts/test.sh names $rel, which is not in the tree"
    missing=$((missing + 1))
  fi
done < <(grep -o '\$root/[A-Za-z0-9_./-]*' "$script" | sed 's|^\$root/||' | sort -u)

# A pattern that stopped matching would pass anything: the script names
# dozens of files.
if [[ $checked -lt 10 ]]; then
  echo "only $checked paths found in scripts/test.sh: the pattern is stale"
  exit 1
fi
echo "test_script_paths: $checked paths, $missing missing"
[[ $missing -eq 0 ]]
