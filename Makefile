# The two commands of the README. Both do their own set-up on a fresh machine: the cached Python
# environment that provides libtorch (scripts/python-env.sh), then the build.
SHELL := /bin/bash
ENV := eval "$$(scripts/python-env.sh)" &&
RUN_DIR ?= runs/demo

.PHONY: demo test build lint

## The main job on the embedded default (scripts/demo.sh): emoji dataset, real encoders, SAEs,
## codes, and wMPPC both ways; each step skipped when its output exists.
demo:
	$(ENV) cargo build --release --locked && RUN_DIR=$(RUN_DIR) scripts/demo.sh

## Every test: formatting, lints, and the test suite.
test:
	$(ENV) scripts/test.sh

build:
	$(ENV) cargo build --release --locked
