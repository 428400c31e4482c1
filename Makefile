# The two commands: `make run` and `make test`. Both install what is missing first.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never
# A clean clone builds once: incremental state would only add gigabytes to target/.
export CARGO_INCREMENTAL ?= 0

.PHONY: run test deps deps-run build lint test-rust test-str0m test-api test-browser bench bench-turn bench-workers pgo clean

run: deps-run
	$(CARGO) build --release --bin moien
	./target/release/moien serve --dev

test: deps lint test-rust test-str0m test-api test-browser

deps:
	@scripts/install-deps.sh test

deps-run:
	@scripts/install-deps.sh run

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test-rust:
	$(CARGO) test --workspace

# str0m's own unit tests on the patched copy in third_party/str0m.
test-str0m:
	scripts/test-str0m.sh

# The admin API against its OpenAPI description (schemathesis from PyPI, in a venv under target/).
test-api:
	$(CARGO) build --bin moien
	scripts/api-conformance.sh

# The binary the Rust tests built (same features: no second build of the dependencies).
test-browser:
	$(CARGO) test --workspace --no-run --quiet
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error
	cd tests/browser && MOIEN_BIN=$(CURDIR)/target/debug/moien node run.mjs

# Benchmarks: figures and their meaning in docs/PERFORMANCE.md.
bench: deps-run bench-turn
	loadtest/bench.sh

# The production build: release, profile-guided by a short loopback load (docs/OPERATIONS.md).
pgo: deps-run
	scripts/pgo-build.sh

# One media worker against two, each capped to a share of a core (needs root and cgroup v1 cpu).
bench-workers: deps-run
	$(CARGO) build --release -p moien -p moien-loadtest
	loadtest/workers.sh

bench-turn:
	$(CARGO) build --release -p moien-turn --bin turn-bench
	./target/release/turn-bench --seconds 10 --threads 1

clean:
	$(CARGO) clean
	rm -rf tests/browser/node_modules
