#!/usr/bin/env bash
# Whether two run folders hold the same tables, byte for byte: every Parquet file (the study's
# wmppc, mppc and sharedness tables, each pair's tables, codes and cached activations) present
# in both, with the same bytes. A refactoring that must leave outputs unchanged is checked by
# running one study before and after it and comparing the two folders with this script.
#
#   scripts/same-run.sh RUN_A RUN_B      exit 0: identical; 1: a difference, listed
set -euo pipefail
if [[ $# -ne 2 || ! -d $1 || ! -d $2 ]]; then
  echo "usage: $0 RUN_A RUN_B (two run folders)" >&2
  exit 2
fi
tables() { (cd "$1" && find . -name '*.parquet' -not -path './emoji/*' | LC_ALL=C sort); }
a=$(tables "$1")
b=$(tables "$2")
status=0
if [[ "$a" != "$b" ]]; then
  echo "the two folders hold different tables:"
  diff <(echo "$a") <(echo "$b") | grep "^[<>]" | head -20 || true
  status=1
fi
same=0
while read -r file; do
  [[ -z $file || ! -f "$2/$file" ]] && continue
  if cmp -s "$1/$file" "$2/$file"; then
    same=$((same + 1))
  else
    echo "differs: ${file#./}"
    status=1
  fi
done <<< "$a"
echo "$same table(s) identical"
exit $status
