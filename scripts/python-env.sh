#!/usr/bin/env bash
# Creates, when missing, the cached Python environment that provides libtorch (PyPI's torch, the
# build tch 0.26 links against) and the exporter's packages, then prints the exports that make
# cargo build tch against it. Lives outside the repository so clones and CI reuse one install.
#
#   eval "$(scripts/python-env.sh)"
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${SAESHARE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/saeshare}
venv=$cache/venv
reqs=$here/python/requirements.txt
nodeps=$here/python/requirements-nodeps.txt
# One stamp per requirements content: clones of different versions can share the cache (installs
# only add packages) without reinstalling each time the other one runs.
want=$(cat "$reqs" "$nodeps" | sha256sum | cut -d' ' -f1)
stamp=$venv/.installed/$want

if [ ! -x "$venv/bin/python" ] || [ ! -e "$stamp" ]; then
  echo "saeshare: installing the Python environment (torch 2.13.0, exporter packages) into $venv" >&2
  mkdir -p "$cache"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  # torch is a constraint too, so no later package can drag in another libtorch.
  "$venv/bin/python" -m pip install --quiet -r "$reqs" -c <(grep '^torch==' "$reqs") >&2
  "$venv/bin/python" -m pip install --quiet --no-deps -r "$nodeps" >&2
  mkdir -p "$venv/.installed" && touch "$stamp"
fi

libtorch=$("$venv/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
cat <<OUT
export SAESHARE_CACHE="$cache"
export SAESHARE_PYTHON="$venv/bin/python"
export LIBTORCH_USE_PYTORCH=1
export VIRTUAL_ENV="$venv"
export SAESHARE_LIBTORCH_LIB="$libtorch"
export PATH="$venv/bin:\$PATH"
export PYTHONPATH="$here/python\${PYTHONPATH:+:\$PYTHONPATH}"
OUT
