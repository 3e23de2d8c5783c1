#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/, libFuzzer) for SECONDS each (default 20) from the seed
# corpus in fuzz/seeds/, and prints libFuzzer's figures (runs, time, peak memory). Fails on a
# crash, a hang (an input over 10 s) or an allocation over 512 MB; the input is saved under
# fuzz/artifacts/<target>/. Installs the nightly toolchain and cargo-fuzz if missing.
#
#   scripts/fuzz.sh [SECONDS]              every target
#   TARGETS="wire policy" scripts/fuzz.sh 600
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-20}"
TARGETS="${TARGETS:-wire policy http_body storage_value}"
FUZZ_TARGET_DIR="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-target}/fuzz}"

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# Sanitizer "none": the crates are safe Rust (forbid(unsafe_code)); libFuzzer's coverage,
# crash, timeout and malloc limits still apply, and the build is far lighter.
cargo +nightly fuzz build --fuzz-dir fuzz --target-dir "$FUZZ_TARGET_DIR" -s none
for t in $TARGETS; do
    work="$(mktemp -d)"
    echo "== fuzz $t (${SECS} s)"
    cargo +nightly fuzz run --fuzz-dir fuzz --target-dir "$FUZZ_TARGET_DIR" -s none "$t" -- \
        -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 \
        -print_final_stats=1 "$work" "fuzz/seeds/$t" 2>"$work.log" || {
        tail -n 60 "$work.log"
        echo "fuzz $t FAILED (input in fuzz/artifacts/$t/)"
        exit 1
    }
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb|stat::new_units_added)' "$work.log" || true
    rm -rf "$work" "$work.log"
done
