#!/usr/bin/env bash
# The control plane's figures: policy propagation to 1 and 100 sidecars, webhook latency.
# Writes bench/results/control-plane.md. Extra arguments go to bench/control_plane.py, e.g.
#   bench/control_plane.sh --sidecars 1 --changes 5 --reviews 200    # a quick look
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x tests/.venv/bin/python ]] || tests/setup.sh
cargo build --release -q -p tollgate-operator -p tollgate-sidecar
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec tests/.venv/bin/python bench/control_plane.py "$@"
