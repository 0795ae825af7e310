# The two commands of the README. Both do their own set-up on a fresh machine: the cached Python
# environment that provides libtorch (scripts/python-env.sh), then the build.
SHELL := /bin/bash
ENV := eval "$$(scripts/python-env.sh)" &&
RUN_DIR ?= runs/demo

.PHONY: demo test build lint

## The main job on the embedded default: build the emoji dataset (when missing) and inspect it.
demo:
	$(ENV) cargo build --release --locked
	@if [ ! -d $(RUN_DIR)/emoji ]; then target/release/saeshare dataset build-emoji --out $(RUN_DIR)/emoji; fi
	target/release/saeshare dataset inspect $(RUN_DIR)/emoji

## Every test: formatting, lints, and the test suite.
test:
	$(ENV) scripts/test.sh

build:
	$(ENV) cargo build --release --locked
