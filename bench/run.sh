#!/usr/bin/env bash
# Runs the benchmark and prints the table (also written to bench/results/latest.md, with
# bench/results/latency.svg). Installs what it compares against: nginx (Debian) and
# mcp-proxy (crates.io, into bench/.tools). Extra arguments go to the harness, e.g.
#   bench/run.sh --rounds 1 --seconds 1      # a quick look
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null) \
    || (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null)
fi
if [[ ! -x bench/.tools/bin/mcp-proxy ]]; then
  cargo install mcp-proxy --version 0.6.0 --locked --no-default-features --root bench/.tools
fi
cargo build --release -q -p tollgate-sidecar -p tollgate-bench
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec target/release/tollgate-bench "$@"
