#!/usr/bin/env bash
# The side-by-side benchmark (issue 16): walletd (one and three regions) under wrk against
# PostgreSQL 15 under pgbench, on the same machine in one run. Not part of the test command:
# it takes about 5 minutes and its figures depend on the machine. See docs/performance.md.
#
#   scripts/bench-vs.sh [--seconds 10] [--clients 64] [--skip-remote]
#   scripts/bench-vs.sh --profile [--seconds 10]   # perf + flame graph of walletd under wrk
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql-15)
command -v pgbench >/dev/null || need+=(postgresql-client-15)
command -v wrk >/dev/null || need+=(wrk)
if [[ " $* " == *" --profile "* ]]; then
    command -v perf >/dev/null || need+=(linux-perf)
    command -v inferno-flamegraph >/dev/null || cargo install inferno --locked >&2
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# The Debian package starts its own cluster; the bench runs a private one on a free port.
cargo build --release --bin walletd >&2
exec python3 scripts/bench_vs.py "$@"
