#!/usr/bin/env bash
# Build the Python package's source distribution: bindings/python plus the
# C sources it compiles (in csrc/), so that `pip install spotinfer-X.tar.gz`
# builds the library into the wheel with nothing else at hand.
#
#   bash scripts/python-sdist.sh <outdir> [python]
#
# python (default python3) must have `build` installed; the build backend
# (scikit-build-core, pinned in pyproject.toml) is fetched by it.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
  echo "usage: $0 <outdir> [python]" >&2
  exit 2
fi
mkdir -p "$1"
out=$(cd "$1" && pwd)
py=${2:-python3}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
stage=$(mktemp -d "${TMPDIR:-/tmp}/spotinfer-sdist.XXXXXX")
trap 'rm -rf "$stage"' EXIT

# The files git tracks (as they are in the working tree): the package, and
# what the library's CMake build reads.
copy() { # <dest> <paths...>
  local dest=$1
  shift
  (cd "$root" && git ls-files -z -- "$@") | (cd "$root" && xargs -0 cp --parents -t "$dest")
}
mkdir -p "$stage/pkg/csrc"
(cd "$root/bindings/python" && git ls-files -z) |
  (cd "$root/bindings/python" && xargs -0 cp --parents -t "$stage/pkg")
copy "$stage/pkg/csrc" CMakeLists.txt LICENSE CHANGELOG.md include lib cmake pkgconfig redis

"$py" -m build --sdist --outdir "$out" "$stage/pkg"
