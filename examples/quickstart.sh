#!/usr/bin/env bash
# Tollgate's main job, no cluster needed: the sample MCP server behind `tollgate proxy` with
# examples/policy.yaml, then a real MCP client making an allowed, a denied and a rate-limited
# call. The proxy keeps running (Ctrl-C stops it) unless TOLLGATE_DEMO_EXIT=1.
set -euo pipefail
cd "$(dirname "$0")/.."
# The demo needs the Python MCP SDK and nothing else (no cluster, none of the suites' peers).
if [[ ! -f examples/.venv/.stamp || "$(cat examples/.venv/.stamp)" != "$(sha256sum < examples/requirements.txt)" ]]; then
  python3 -m venv examples/.venv
  examples/.venv/bin/pip install -q --disable-pip-version-check -r examples/requirements.txt
  sha256sum < examples/requirements.txt > examples/.venv/.stamp
fi
cargo build --release -q -p tollgate-sidecar
SERVER_PORT=${SERVER_PORT:-8000} PROXY_PORT=${PROXY_PORT:-8080} ADMIN_PORT=${ADMIN_PORT:-9090}
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
examples/.venv/bin/python examples/sample_server.py --port "$SERVER_PORT" &
pids+=($!)
target/release/tollgate proxy --upstream "http://127.0.0.1:$SERVER_PORT" --policy examples/policy.yaml \
  --listen "127.0.0.1:$PROXY_PORT" --metrics-listen "127.0.0.1:$ADMIN_PORT" > examples/.audit.log &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null && break; sleep 0.1; done
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$SERVER_PORT") 2>/dev/null && break; sleep 0.1; done
examples/.venv/bin/python examples/demo_client.py "http://127.0.0.1:$PROXY_PORT/mcp"
echo
echo "Audit log (one JSON line per decision):"
cat examples/.audit.log
echo
echo "Proxy: http://127.0.0.1:$PROXY_PORT/mcp   metrics: http://127.0.0.1:$ADMIN_PORT/metrics"
if [[ "${TOLLGATE_DEMO_EXIT:-0}" != 1 ]]; then
  echo "Edit examples/policy.yaml and it reloads. Ctrl-C to stop."
  wait
fi
