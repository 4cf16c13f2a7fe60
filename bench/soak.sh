#!/usr/bin/env bash
# A soak, not a test: a steady rate of mixed calls (JSON and SSE; allowed, denied, rate-limited,
# tools/list) through two tollgate proxies for MINUTES, with RSS and open fds sampled every
# second and audit lines counted against the calls. Writes bench/results/soak/latest.md.
#   bench/soak.sh 10                 # ten minutes at 1,000 calls/s
#   bench/soak.sh 1 --rate 2000      # extra arguments go to the harness
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:?usage: bench/soak.sh MINUTES [--rate N] [--connections N]}"
shift
cargo build --release -q -p tollgate-sidecar -p tollgate-bench
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec target/release/tollgate-soak --minutes "$minutes" "$@"
