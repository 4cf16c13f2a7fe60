#!/usr/bin/env bash
# What approvals cost: RSS holding 10,000 calls, and the latency an approval adds (see
# bench/approvals.py). Writes bench/results/approvals.md. Extra arguments go to the script, e.g.
#   bench/approvals.sh --held 1000 --calls 200      # a quick look
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x tests/.venv/bin/python ]] || tests/setup.sh
cargo build --release -q -p tollgate-sidecar -p tollgate-bench
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec tests/.venv/bin/python bench/approvals.py "$@"
