#!/usr/bin/env bash
# How long the release sidecar takes to load a 10,000-tool policy and 1,000 policies, and its
# RSS then. Writes bench/results/policy-load.md. Argument: rounds (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p tollgate-sidecar
exec python3 bench/policy_load.py "$@"
