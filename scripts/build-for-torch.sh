#!/usr/bin/env bash
# Builds saeshare against the libtorch of another PyTorch release than the default (torch 2.13.0
# with tch 0.26), for machines whose PyTorch is that release: a lent GPU machine brings its own
# torch, and a binary must link the libtorch it will find there.
#
#   scripts/build-for-torch.sh VERSION [build|test]
#
# Everything lives in $SAESHARE_CACHE/torch-VERSION, never in the repository or its target folder:
#   venv/    PyPI's torch==VERSION (with its CUDA libraries) and the matching torchvision; every
#            other package of the exporter comes from the default environment (a .pth file), so
#            the parity tests run on this torch without a second 5 GB install;
#   src/     a copy of the working tree whose Cargo.toml asks for the matching tch release;
#   target/  its own target folder.
# `build` (the default) builds the release binary and prints its path on the last line; `test`
# runs the whole test suite (scripts/test.sh's cargo steps) against this torch.
set -euo pipefail

usage="usage: scripts/build-for-torch.sh VERSION [build|test]   (VERSION: 2.11.0)"
version=${1:?$usage}
mode=${2:-build}
# tch releases follow libtorch releases one to one; torchvision's C++ ops are built for one torch.
case $version in
  2.11.0) tch=0.24.0 torchvision=0.26.0 ;;
  2.13.0) echo "torch 2.13.0 is the default build: make build" >&2; exit 2 ;;
  *) echo "no tch release is known to match torch $version (known: 2.11.0); $usage" >&2; exit 2 ;;
esac
case $mode in build | test) ;; *) echo "$usage" >&2; exit 2 ;; esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The default environment first: the exporter's packages, shared below.
eval "$("$here/scripts/python-env.sh")"
root=$SAESHARE_CACHE/torch-$version
mkdir -p "$root"
# One build per release at a time: a second one would replace the copy the first is building.
exec 9>"$root/.lock"
flock -n 9 || { echo "saeshare: waiting for the other build for torch $version to finish" >&2; flock 9; }
venv=$root/venv
stamp=$venv/.installed-torch-$version-torchvision-$torchvision

if [ ! -x "$venv/bin/python" ] || [ ! -e "$stamp" ]; then
  echo "saeshare: installing torch $version and torchvision $torchvision into $venv" >&2
  mkdir -p "$root"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet "torch==$version" "torchvision==$torchvision" >&2
  # The default environment's site-packages come after this one's, so its torch is shadowed and
  # its pure-Python packages (transformers, timm, sae-lens...) are found.
  shared=$("$SAESHARE_PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  own=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$shared" >"$own/saeshare-default-environment.pth"
  touch "$stamp"
fi
found=$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')
[ "$found" = "$version" ] || { echo "FAIL: $venv has torch $found, not $version" >&2; exit 1; }

# The working tree as it is (tracked and untracked files, ignored ones left out), with file times
# kept so that cargo rebuilds only what changed since the last copy.
src=$root/src
rm -rf "$src.new"
mkdir -p "$src.new"
git -C "$here" ls-files -co --exclude-standard -z |
  (cd "$here" && tar --null --files-from=- -cf - 2>/dev/null) | tar -xpf - -C "$src.new"
manifest=$src.new/Cargo.toml
sed -i -E "s/^(tch|torch-sys) = \"[0-9.]+\"/\1 = \"=$tch\"/" "$manifest"
[ "$(grep -cE "^(tch|torch-sys) = \"=$tch\"" "$manifest")" = 2 ] ||
  { echo "FAIL: Cargo.toml no longer has the lines tch = \"...\" and torch-sys = \"...\" to rewrite" >&2; exit 1; }
# Keep the lock file cargo adjusted last time when the default one has not changed since.
if [ -e "$src/Cargo.lock" ] && [ -e "$src/Cargo.lock.default" ] &&
  cmp -s "$src/Cargo.lock.default" "$here/Cargo.lock"; then
  cp -p "$src/Cargo.lock" "$src.new/Cargo.lock"
fi
cp -p "$here/Cargo.lock" "$src.new/Cargo.lock.default"
# An unchanged manifest keeps its old time, so the package is not rebuilt for nothing.
if [ -e "$src/Cargo.toml" ] && cmp -s "$src/Cargo.toml" "$manifest"; then
  touch -r "$src/Cargo.toml" "$manifest"
fi
rm -rf "$src"
mv "$src.new" "$src"

export PATH="$venv/bin:$PATH" VIRTUAL_ENV="$venv"
export SAESHARE_PYTHON="$venv/bin/python"
SAESHARE_LIBTORCH_LIB=$("$venv/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export SAESHARE_LIBTORCH_LIB
export CARGO_TARGET_DIR=$root/target
# Only tch and torch-sys move: the rest of the lock stays as the default build has it.
(cd "$src" && cargo update --quiet -p tch -p torch-sys 2>/dev/null || cargo update --quiet -p tch -p torch-sys --precise "$tch")

cd "$src"
case $mode in
  build)
    cargo build --release
    "$CARGO_TARGET_DIR/release/saeshare" --version >&2
    echo "$CARGO_TARGET_DIR/release/saeshare"
    ;;
  test)
    cargo test --all-targets
    cargo test --doc
    scripts/check-linking.sh "$CARGO_TARGET_DIR/debug/saeshare"
    ;;
esac
