#!/usr/bin/env bash
# Checks that a binary runs on libtorch as built: an rpath to libtorch's lib folder (no
# LD_LIBRARY_PATH needed) and, when that libtorch has CUDA, libtorch_cuda kept in DT_NEEDED
# (the linker's --as-needed drops it otherwise and CUDA is then never available).
set -euo pipefail
bin=${1:?usage: check-linking.sh BINARY}
lib=${SAESHARE_LIBTORCH_LIB:?run under scripts/python-env.sh}
dynamic=$(readelf -d "$bin")

if ! grep -E '\((RUNPATH|RPATH)\)' <<<"$dynamic" | grep -qF "$lib"; then
  echo "FAIL: $bin has no rpath to $lib" >&2; exit 1
fi
if [ -e "$lib/libtorch_cuda.so" ] && ! grep -q 'NEEDED.*libtorch_cuda.so' <<<"$dynamic"; then
  echo "FAIL: $bin does not link libtorch_cuda.so although $lib has it" >&2; exit 1
fi
env -u LD_LIBRARY_PATH "$bin" info >/dev/null
echo "linking: rpath to libtorch and libtorch_cuda present in $bin; it runs without LD_LIBRARY_PATH"
