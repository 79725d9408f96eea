# crmflow: `make run` starts the main job on a local broker, `make test` runs every check.
SHELL := /bin/bash
# One target directory outside the clone, so repeated runs (and CI on the same machine) reuse builds.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/crmflow/target
export PATH := $(HOME)/.cargo/bin:$(PATH)
CRMFLOW := $(CARGO_TARGET_DIR)/debug/crmflow
# Set BROKERS=host:9092 to run against an existing Kafka cluster instead of the local one,
# or BROKER=mock for librdkafka's in-memory mock cluster (no Java needed; no real transactions).
BROKERS ?=
BROKER ?= kafka
# Events per second of the demo stream.
RATE ?= 20
# Where `make run`'s HTTP server (health, readiness, metrics, queries) listens.
HTTP_LISTEN ?= 127.0.0.1:8080
# Arguments of the end-to-end benchmark (`crmflow-bench --help`), e.g. BENCH_ARGS="--events 50000".
BENCH_ARGS ?=

# Every test binary except the Kafka suites (`kafka*.rs`), which need the real broker.
CHECK_TESTS := $(foreach t,$(filter-out kafka%,$(basename $(notdir $(wildcard crates/*/tests/*.rs)))),--test $(t))

.PHONY: all deps native-deps build lint unit check deploy-check test run simulate bench fmt fuzz fuzz-smoke

all: build

# System packages for the native builds (RocksDB, librdkafka), and Apache Kafka's broker jars
# (with Java and Maven) for the tests and `make run`.
deps:
	@deploy/scripts/install-deps.sh --kafka

# Only what the native builds need: `make check` starts no broker.
native-deps:
	@deploy/scripts/install-deps.sh

build: deps
	cargo build --workspace --all-targets

lint: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

unit: deps
	cargo test --workspace

# The Dockerfile, compose file, Kubernetes manifests, dashboard and alert rules against their
# schemas and against the metrics and configuration keys crmflow really has.
deploy-check:
	deploy/scripts/validate-deploy.sh

test: lint deploy-check unit

# The quick tier, no broker: formatting, clippy, and every unit, property and scenario test
# (the scenarios through the core and `crmflow simulate`).
check: native-deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace --lib --bins $(CHECK_TESTS)
	cargo test --workspace --doc

run: deps
	cargo build -p crmflow
	BROKERS=$(BROKERS) BROKER=$(BROKER) RATE=$(RATE) HTTP_LISTEN=$(HTTP_LISTEN) deploy/scripts/run-local.sh $(CRMFLOW)

simulate: deps
	cargo build -p crmflow
	$(CRMFLOW) simulate --input tests/scenarios/seed-walkthrough/input.jsonl

# The pure core (criterion), then end to end on Apache Kafka next to an rdkafka pass-through
# (crates/bench; optimized: the debug build runs RocksDB's C++ at -O0). Both go into the
# generated page docs/benchmarks.md.
bench: deps
	cargo bench -p crmflow-demo --bench pipeline
	cargo build --release -p crmflow -p crmflow-bench
	$(if $(BROKERS),BROKERS=$(BROKERS)) $(CARGO_TARGET_DIR)/release/crmflow-bench --output docs/benchmarks.md $(BENCH_ARGS)

fmt:
	cargo fmt --all

# Every decoder's cargo-fuzz target (fuzz/) for FUZZ_SECONDS each; fails on any crash.
FUZZ_SECONDS ?= 300
fuzz:
	deploy/scripts/fuzz.sh $(FUZZ_SECONDS)

fuzz-smoke:
	deploy/scripts/fuzz.sh 60
