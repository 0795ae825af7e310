#!/usr/bin/env bash
# Checks that executables run on libtorch as built: an rpath to libtorch's lib folder (no
# LD_LIBRARY_PATH needed) and, when that libtorch has CUDA, libtorch_cuda kept in DT_NEEDED
# (the linker's --as-needed drops it otherwise, and CUDA is then never available).
#   check-linking.sh EXECUTABLE...
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: check-linking.sh EXECUTABLE..." >&2; exit 2; }
lib=${SAESHARE_LIBTORCH_LIB:?run under scripts/python-env.sh}

for bin in "$@"; do
  dynamic=$(readelf -d "$bin")
  if ! grep -E '\((RUNPATH|RPATH)\)' <<<"$dynamic" | grep -qF "$lib"; then
    echo "FAIL: $bin has no rpath to $lib" >&2; exit 1
  fi
  if [ -e "$lib/libtorch_cuda.so" ] && ! grep -q 'NEEDED.*libtorch_cuda.so' <<<"$dynamic"; then
    echo "FAIL: $bin does not link libtorch_cuda.so although $lib has it" >&2; exit 1
  fi
done
env -u LD_LIBRARY_PATH "$1" --help >/dev/null
echo "linking: $# executable(s) have an rpath to libtorch and link libtorch_cuda; $1 runs without LD_LIBRARY_PATH"
