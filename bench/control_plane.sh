#!/usr/bin/env bash
# The control plane's figures on a real one (tests/cluster): policy propagation to 1, 100 and
# 1,000 sidecars, the operator's RSS and CPU with 1,000 pods and 100 policies, webhook latency.
# Writes bench/results/control-plane.md. Needs root (the control plane's network namespace).
# Extra arguments go to bench/control_plane.py, e.g.
#   bench/control_plane.sh --sidecars 1,100 --changes 5 --reviews 200    # a quick look
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x tests/.venv/bin/python ]] || tests/setup.sh
tests/cluster/build.sh >/dev/null
cargo build --release -q -p tollgate-operator -p tollgate-sidecar
ulimit -n "$(ulimit -Hn)"
exec tests/.venv/bin/python bench/control_plane.py "$@"
