#!/usr/bin/env bash
# Counters in Redis beside counters in the pod: starts a redis-server on loopback (Debian's,
# installed if absent), then runs the harness's JSON tools/call workloads at c=1 and c=32 against
# the upstream directly, tollgate counting in its memory, and tollgate counting in that Redis
# (the benchmark's policy reserves two counters per call). Prints the table, with Redis' script
# calls per decided call from INFO commandstats; written to bench/results/counters/latest.md.
#   bench/counters.sh --rounds 1 --seconds 1      # a quick look
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null) \
    || (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null)
fi
cargo build --release -q -p tollgate-sidecar -p tollgate-bench
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" --daemonize yes --logfile "$dir/redis.log"
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
target/release/tollgate-bench --redis "redis://127.0.0.1:$port" --only JSON --concurrency 1,32 \
  --sessions 100 --nginx /nonexistent --mcp-proxy /nonexistent --out bench/results/counters "$@"
