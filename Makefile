# cachem — every target works on a fresh Debian machine with only the Rust
# toolchain; anything else a target needs it installs itself, idempotently.
CARGO ?= cargo
SECONDS ?= 60
KILLS ?= 5000

.PHONY: all demo test fmt-check clippy unit bench bench-quick torture fuzz clean

all: test

## The README's "run it" command.
demo:
	$(CARGO) run --quiet --release --bin cachem -- demo

## The README's test command (and .ci/run): format, lints, every test.
test: fmt-check clippy unit

fmt-check:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --all-targets --features failpoints -- -D warnings

unit:
	$(CARGO) test
	$(CARGO) test --release --features failpoints --test crash

## Benchmarks: criterion (engine, locked region, reap, id registry), then
## the side-by-side comparison with LMDB, Redis and memcached, which
## installs the servers if missing and rewrites its section of
## docs/benchmarks.md.
bench:
	sh crates/cachem-bench/setup.sh
	CACHEM_BENCH_CMD="make bench" $(CARGO) run --release -p cachem-bench
	$(CARGO) bench -p cachem-core --bench engine -- --noplot
	$(CARGO) bench -p cachem-core --bench region -- --noplot
	$(CARGO) bench -p cachem-ids --bench ids -- --warm-up-time 1 --measurement-time 5 --noplot

bench-quick:
	sh crates/cachem-bench/setup.sh
	$(CARGO) run --release -p cachem-bench -- --quick

## Long crash soak: KILLS random SIGKILLs of stress workers.
torture:
	CACHEM_TORTURE_KILLS=$(KILLS) $(CARGO) test --release --features failpoints --test crash -- --ignored --nocapture torture_long

## Fuzz each cargo-fuzz target (fuzz/) for SECONDS seconds; installs
## cargo-fuzz if missing; exits non-zero on a finding.
fuzz:
	fuzz/run.sh $(SECONDS)

clean:
	$(CARGO) clean
