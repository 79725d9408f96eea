# crmflow: `make run` starts the main job on a local broker, `make test` runs every check.
SHELL := /bin/bash
# One target directory outside the clone, so repeated runs (and CI on the same machine) reuse builds.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/crmflow/target
export PATH := $(HOME)/.cargo/bin:$(PATH)
CRMFLOW := $(CARGO_TARGET_DIR)/debug/crmflow
# Set BROKERS=host:9092 to run against an existing Kafka cluster instead of the local one.
BROKERS ?=

.PHONY: all deps build test lint unit run simulate bench fmt

all: build

deps:
	@deploy/scripts/install-deps.sh

build: deps
	cargo build --workspace --all-targets

lint: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

unit: deps
	cargo test --workspace

test: lint unit

simulate: build
	$(CRMFLOW) simulate --input tests/scenarios/seed-walkthrough/input.jsonl

run: simulate

bench: deps
	cargo bench -p crmflow-demo --bench pipeline

fmt:
	cargo fmt --all
