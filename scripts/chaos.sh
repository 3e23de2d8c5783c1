#!/usr/bin/env bash
# Randomized real-network fault schedules (issue 15; docs/testing.md "Chaos runs").
#
#   scripts/chaos.sh --runs N --seed S [--duration-s D] [--short] [--long-partitions] [--only KIND,...] [--defects]
#
# Builds walletd and walletd-chaos (release), then runs N schedules with seeds S..S+N-1 and
# prints a table and the command that repeats any failing run. --defects builds with the
# test-only feature `chaos-defects`; pick the defect with WALLETD_CHAOS_DEFECT (src/defects.rs).
# Needs root (network namespaces, mount) and libfaketime (Debian `faketime`).
set -euo pipefail
cd "$(dirname "$0")/.."
features=()
args=()
for a in "$@"; do
    if [ "$a" = "--defects" ]; then
        features=(--features chaos-defects)
    else
        args+=("$a")
    fi
done
target="${CARGO_TARGET_DIR:-target}"
cargo build --release "${features[@]}" --bin walletd --bin walletd-chaos >&2
exec "$target/release/walletd-chaos" --exe "$target/release/walletd" --out "$target/chaos" "${args[@]}"
