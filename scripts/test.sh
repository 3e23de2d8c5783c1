#!/usr/bin/env bash
# The project's test command (README): unit, property, simulator and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
cargo test --workspace -- --test-threads=2
