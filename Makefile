# The two commands: `make run` and `make test`. Both install what is missing first.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: run test deps deps-run build lint test-rust test-browser bench clean

run: deps-run
	$(CARGO) build --release --bin moien
	./target/release/moien serve --dev

test: deps lint test-rust test-browser

deps:
	@scripts/install-deps.sh test

deps-run:
	@scripts/install-deps.sh run

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test-rust:
	$(CARGO) test --workspace

test-browser:
	$(CARGO) build --bin moien
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error
	cd tests/browser && MOIEN_BIN=$(CURDIR)/target/debug/moien node run.mjs

clean:
	$(CARGO) clean
	rm -rf tests/browser/node_modules
