# cachem — every target works on a fresh Debian machine with only the Rust
# toolchain; anything else a target needs it installs itself, idempotently.
CARGO ?= cargo
SECONDS ?= 60
KILLS ?= 5000

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
HEADER := crates/cachem-capi/include/cachem.h
CBINDGEN := cbindgen --quiet --config cbindgen.toml --crate cachem-capi

.PHONY: all demo test fmt-check clippy header-check unit bench bench-quick torture fuzz clean c-tools header capi install apache apache-deps bench-apache

all: test

## The README's "run it" command.
demo:
	$(CARGO) run --quiet --release --bin cachem -- demo

## The README's test command (and .ci/run): format, lints, every test.
test: fmt-check clippy header-check unit

fmt-check:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --all-targets --features failpoints -- -D warnings

unit: c-tools apache
	$(CARGO) test
	$(CARGO) test --release --features failpoints --test crash

## Tools of the C ABI's build and tests (Debian packages): cbindgen for
## cachem.h, a C and a C++ compiler with the sanitizer runtimes, pkg-config.
c-tools:
	@for p in cbindgen gcc g++ pkg-config; do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; fi

## Regenerates the committed C header from crates/cachem-capi/src/lib.rs.
header: c-tools
	cd crates/cachem-capi && $(CBINDGEN) --output include/cachem.h

## Fails if the committed header differs from a fresh generation.
header-check: c-tools
	@tmp=$$(mktemp) && (cd crates/cachem-capi && $(CBINDGEN) --output $$tmp) && \
	if ! diff -u $(HEADER) $$tmp; then rm -f $$tmp; \
	  echo "$(HEADER) is stale: run make header and commit it"; exit 1; fi; rm -f $$tmp

## The C libraries (panic = abort, see docs/c-api.md) and the header:
## built in target/capi/, copied to target/release/libcachem.{a,so} (as new
## files: cargo's own release build of the crate hard-links that path).
capi: header
	$(CARGO) build --profile capi -p cachem-capi
	mkdir -p target/release
	cp --remove-destination target/capi/libcachem.a target/capi/libcachem.so target/release/

## Installs libcachem, cachem.h, cachem.map and cachem.pc under PREFIX.
install: capi
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PREFIX)/share/cachem
	install -m 644 target/release/libcachem.a $(DESTDIR)$(LIBDIR)/libcachem.a
	install -m 755 target/release/libcachem.so $(DESTDIR)$(LIBDIR)/libcachem.so.0
	ln -sf libcachem.so.0 $(DESTDIR)$(LIBDIR)/libcachem.so
	install -m 644 $(HEADER) $(DESTDIR)$(INCLUDEDIR)/cachem.h
	install -m 644 crates/cachem-capi/cachem.map $(DESTDIR)$(PREFIX)/share/cachem/cachem.map
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' \
	  crates/cachem-capi/cachem.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/cachem.pc

## Benchmarks: criterion (engine, locked region, reap, id registry), the C
## ABI next to the Rust API (cachem-capi's abi bench), then
## the side-by-side comparison with LMDB, Redis and memcached, which
## installs the servers if missing and rewrites its section of
## docs/benchmarks.md.
bench: bench-apache
	sh crates/cachem-bench/setup.sh
	CACHEM_BENCH_CMD="make bench" $(CARGO) run --release -p cachem-bench
	$(CARGO) bench -p cachem-core --bench engine -- --noplot
	$(CARGO) bench -p cachem-core --bench region -- --noplot
	$(CARGO) bench -p cachem-ids --bench ids -- --warm-up-time 1 --measurement-time 5 --noplot
	$(CARGO) bench -p cachem-capi --bench abi

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

## mod_cachem for Apache httpd 2.4 (apache/): installs apache2, apache2-dev
## and apache2-utils if missing, builds the C ABI staticlib, then the two
## modules with apxs. Outputs: target/apache/mod_cachem.so and
## target/apache/mod_cachem_example.so (apxs works in a copy under
## target/apache/build, so the source tree stays clean).
APXS ?= apxs
APACHE_OUT := target/apache
APACHE_PKGS := apache2 apache2-dev apache2-utils gcc
CAPI_LIB := target/release/libcachem.a
CAPI_INCLUDE := crates/cachem-capi/include
APXS_CFLAGS := -Wc,-Wall -Wc,-Werror -Wc,-Wextra -Wc,-Wno-unused-parameter -Wc,-Wno-missing-field-initializers -Wc,-O2

apache: apache-deps
	$(CARGO) build --release -p cachem-capi
	$(MAKE) --no-print-directory $(APACHE_OUT)/mod_cachem.so $(APACHE_OUT)/mod_cachem_example.so

apache-deps:
	@for p in $(APACHE_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi

$(APACHE_OUT)/mod_cachem.so: apache/mod_cachem.c apache/mod_cachem.h apache/mod_cachem.map $(CAPI_LIB) $(CAPI_INCLUDE)/cachem.h
	rm -rf $(APACHE_OUT)/build/cachem && mkdir -p $(APACHE_OUT)/build/cachem
	cp apache/mod_cachem.c apache/mod_cachem.h $(APACHE_OUT)/build/cachem/
	cd $(APACHE_OUT)/build/cachem && $(APXS) -c $(APXS_CFLAGS) -I$(abspath $(CAPI_INCLUDE)) \
	  "-Wl,-Wl,--version-script=$(CURDIR)/apache/mod_cachem.map" mod_cachem.c $(abspath $(CAPI_LIB)) >build.log 2>&1 \
	  || { cat build.log; exit 1; }
	grep -E 'warning:|error:' $(APACHE_OUT)/build/cachem/build.log || true
	strip --strip-debug -o $@ $(APACHE_OUT)/build/cachem/.libs/mod_cachem.so

$(APACHE_OUT)/mod_cachem_example.so: apache/mod_cachem_example.c apache/mod_cachem.h
	rm -rf $(APACHE_OUT)/build/example && mkdir -p $(APACHE_OUT)/build/example
	cp apache/mod_cachem_example.c apache/mod_cachem.h $(APACHE_OUT)/build/example/
	cd $(APACHE_OUT)/build/example && $(APXS) -c $(APXS_CFLAGS) mod_cachem_example.c >build.log 2>&1 \
	  || { cat build.log; exit 1; }
	grep -E 'warning:|error:' $(APACHE_OUT)/build/example/build.log || true
	cp $(APACHE_OUT)/build/example/.libs/mod_cachem_example.so $@

## requests/s of the example module's URL against a static file (ab,
## prefork, 2 concurrent clients); rewrites its section of docs/apache.md.
bench-apache: apache
	$(CARGO) test --release --test apache -- --ignored --nocapture bench_apache

clean:
	$(CARGO) clean
