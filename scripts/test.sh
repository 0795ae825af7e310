#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints (warnings are errors), every test.
# Expects the environment of scripts/python-env.sh (the Makefile's `test` target provides it).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets
# The rpath and libtorch_cuda checks run against the binary as a user gets it.
scripts/check-linking.sh target/debug/saeshare
