# rollcall — the two commands of the Quick start are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export PATH := $(HOME)/.cargo/bin:$(CURDIR)/npm/node_modules/.bin:$(PATH)

HOST ?= 127.0.0.1
PORT ?= 4000

.PHONY: help run test setup lint rust-test wasm-core npm-build npm-test www-vendor www-test

help:
	@echo "make run    build and start one rollcall node with the demo at http://$(HOST):$(PORT)"
	@echo "make test   install missing tools, then run every check and test"

## Build what is needed and start one node with the demo page.
run:
	@./scripts/setup.sh --build-only
	cd npm && npm run build
	$(MAKE) www-vendor
	cargo build --release -p rollcall-server
	./target/release/rollcall serve --host $(HOST) --port $(PORT)

## Install what is missing, then run every check and test. Nothing may be skipped here: a missing
## server binary, broker or browser fails the run (as it does whenever CI is set).
test: export ROLLCALL_REQUIRE_ALL := 1
test: setup lint rust-test wasm-core npm-test www-test
	@echo "make test: all checks passed"

setup:
	@./scripts/setup.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	python3 scripts/module_graph.py server/src >/dev/null
	cd npm && node_modules/.bin/biome check .

## Every wait in the tests has its own deadline; the whole run is bounded too, so a hang that
## slips past them fails in minutes instead of holding CI until its own limit.
RUST_TEST_TIMEOUT ?= 1800
rust-test:
	timeout --kill-after=30 $(RUST_TEST_TIMEOUT) cargo test --workspace

## The core crate must compile for the browser.
wasm-core:
	cargo build -p rollcall-core --target wasm32-unknown-unknown

## The npm package (wasm bindings + JS client) into npm/dist.
npm-build: setup
	cd npm && npm run build

npm-test: npm-build
	cargo build -p rollcall-server --bins --examples
	cd npm && npm run typecheck && npm test

## The demo page uses the npm package as a browser would: its browser build (three ES modules:
## the client, Presence, and Presence's WebAssembly chunk), copied next to it (git-ignored).
www-vendor:
	rm -rf www/vendor && mkdir -p www/vendor
	cp npm/dist/browser.js npm/dist/browser-presence.js npm/dist/browser-wasm.js www/vendor/

## The demo page in a real headless Chromium.
www-test: npm-build www-vendor
	cargo build -p rollcall-server --bins --examples
	node --test --test-timeout=300000 www/test/
