#!/usr/bin/env bash
# Compile the locales the locale tests run in into DIR (for LOCPATH), from
# the source files of Debian's `locales` package: de_DE (a decimal comma)
# and ps_AF (a two-byte decimal separator, U+066B). A locale that cannot be
# made is left out; the tests skip when none is there.
#
#   bash tests/scripts/make_locales.sh DIR
set -u
dir=${1:?usage: make_locales.sh DIR}
mkdir -p "$dir"
for l in de_DE ps_AF; do
  [[ -d $dir/$l.UTF-8 ]] && continue
  localedef -i "$l" -f UTF-8 "$dir/$l.UTF-8" >/dev/null 2>&1 ||
    echo "make_locales: $l.UTF-8 not made (no locales data?)" >&2
done
exit 0
