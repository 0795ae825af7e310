#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints (warnings are errors), every test, and
# the linking of the executables users and tests run.
# Expects the environment of scripts/python-env.sh (the Makefile's `test` target provides it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/chromium.sh

cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets
cargo test --locked --doc

mapfile -t executables < <(
  cargo test --locked --all-targets --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])'
)
scripts/check-linking.sh target/debug/saeshare "${executables[@]}"
