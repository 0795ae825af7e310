# The two commands of the README. Both do their own set-up on a fresh machine: the cached Python
# environment that provides libtorch (scripts/python-env.sh), then the build.
SHELL := /bin/bash
ENV := eval "$$(scripts/python-env.sh)" &&

.PHONY: demo test build lint

## The main job on the embedded default: the study pipelines/demo.toml (the emoji dataset and
## the real encoder packages are made where missing); a second run does only what changed.
demo:
	$(ENV) cargo build --release --locked && target/release/saeshare run pipelines/demo.toml

## Every test: formatting, lints, and the test suite.
test:
	$(ENV) scripts/test.sh

build:
	$(ENV) cargo build --release --locked
