#!/usr/bin/env bash
# Runs every cargo-fuzz target of cachem for SECONDS seconds each and prints
# executions and coverage per target. Installs what it needs (cargo-fuzz, a
# C++ compiler for libFuzzer) if missing. Used by `make fuzz SECONDS=60`.
#
#   fuzz/run.sh [SECONDS]            all targets (image, ops)
#   TARGETS="ops" fuzz/run.sh 600    some targets
#   SANITIZER=none fuzz/run.sh 60    without AddressSanitizer (faster)
#
# Only the stable toolchain is needed: RUSTC_BOOTSTRAP=1 lets it accept the
# nightly flags cargo-fuzz passes (-Zsanitizer, ...). A crash leaves its
# input in fuzz/artifacts/<target>/ and makes the script exit 1; to keep it
# as a regression test copy it to tests/fuzz_corpus/ (image target inputs).
set -euo pipefail

SECONDS_PER_TARGET="${1:-${SECONDS_PER_TARGET:-60}}"
TARGETS="${TARGETS:-image ops}"
SANITIZER="${SANITIZER:-address}"
export RUSTC_BOOTSTRAP=1
cd "$(dirname "$0")"


as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v c++ >/dev/null 2>&1; then
    echo "== installing a C++ compiler (libFuzzer is built from source)"
    as_root apt-get update -q && as_root apt-get install -y -q g++
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

# Build first; fall back to no sanitizer if this toolchain cannot do ASan.
if ! cargo fuzz build -s "$SANITIZER"; then
    if [ "$SANITIZER" = none ]; then exit 1; fi
    echo "== build with -s $SANITIZER failed; retrying without a sanitizer" >&2
    SANITIZER=none
    cargo fuzz build -s none
fi

mkdir -p corpus/image logs
cp -n ../tests/fuzz_corpus/* corpus/image/ 2>/dev/null || true

status=0
summary=""
for t in $TARGETS; do
    case "$t" in
        image) extra=(-max_len=12288) ;;
        *) extra=() ;;
    esac
    log="logs/$t.log"
    echo "== fuzzing $t for ${SECONDS_PER_TARGET}s (sanitizer: $SANITIZER, log: fuzz/$log)"
    set +e
    cargo fuzz run -s "$SANITIZER" "$t" -- -max_total_time="$SECONDS_PER_TARGET" -timeout=10 \
        -print_final_stats=1 "${extra[@]}" >"$log" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)
    cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.*ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.*corp: \([0-9]*\).*/\1/p' <<<"$last")
    rate=$(sed -n 's/.*exec\/s: \([0-9]*\).*/\1/p' <<<"$last")
    line="$t: execs=${execs:-?} cov=${cov:-?} ft=${ft:-?} corpus=${corp:-?} exec/s=${rate:-?}"
    if [ $rc -ne 0 ]; then
        status=1
        line="$line  FAILED (rc=$rc): see fuzz/$log"
        grep -E "panicked at|^SUMMARY|Test unit written to" "$log" | sed 's/^/    /' >&2 || true
    fi
    summary="$summary$line"$'\n'
done
echo "== summary (${SECONDS_PER_TARGET}s per target)"
printf '%s' "$summary"
exit $status
