#!/usr/bin/env bash
# User-space instructions per tools/call, counted exactly (callgrind), for Tollgate and its
# HTTP stack alone. CPU time on a shared machine moves by a few µs between runs; instruction
# counts do not, so this is how a change to deciding is measured. Each target serves N calls
# of the benchmark's tools/call (its policy, one connection, in sequence) under callgrind,
# once with 300 and once with 1,300 calls; the difference / 1,000 is the cost per call, with
# start-up and policy loading cancelled out.
#   bench/instructions.sh                           # tollgate, passthrough, floor
#   TOLLGATE=/tmp/before/tollgate bench/instructions.sh   # another tollgate binary, for an A/B
#   SSE=1 bench/instructions.sh                     # the MCP server answers with SSE streams
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null) \
    || (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null)
fi
cargo build --release -q -p tollgate-sidecar -p tollgate-bench
R=target/release
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
$R/tollgate-bench --write-policy "$work/policy.yaml"
up=19301 port=19302
$R/bench-upstream --listen 127.0.0.1:$up ${SSE:+--sse} >/dev/null 2>&1 &

calls() { # PORT N: N tools/call requests on one keep-alive connection, after initialize
  python3 - "$@" <<'PY'
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
session = b""
def post(body, status=b"200"):
    s.sendall(b"POST /mcp HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
              b"Accept: application/json, text/event-stream\r\n%sContent-Length: %d\r\n\r\n"
              % (session, len(body)) + body)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, rest = buf.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 " + status), head
    fields = dict(l.lower().split(b": ", 1) for l in head.split(b"\r\n")[1:])
    if b"content-length" in fields:
        while len(rest) < int(fields[b"content-length"]):
            rest += s.recv(65536)
    else:  # an SSE stream, chunked: read to its last chunk
        assert fields.get(b"transfer-encoding") == b"chunked", head
        while not rest.endswith(b"0\r\n\r\n"):
            rest += s.recv(65536)
    return fields
fields = post(b'{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}')
if b"mcp-session-id" in fields:  # the SSE server keeps sessions
    session = b"mcp-session-id: %s\r\n" % fields[b"mcp-session-id"]
    post(b'{"jsonrpc":"2.0","method":"notifications/initialized"}', b"202")
for i in range(n):
    post(b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"tool_7","arguments":{"amount":250,"note":"benchmark call %d"}}}' % (i + 1, i))
PY
}

count() { # NAME ARGS...: instructions of the process after N calls, for N in 300 and 1300
  local name=$1; shift
  local total=()
  for n in 300 1300; do
    valgrind --tool=callgrind --callgrind-out-file="$work/$name-$n.out" "$@" >/dev/null 2>&1 &
    local pid=$!
    for _ in $(seq 150); do
      sleep 0.2
      python3 -c "import socket; socket.create_connection(('127.0.0.1', $port))" 2>/dev/null && break
    done
    calls $port $n
    callgrind_control -d $pid >/dev/null 2>&1
    kill -9 $pid; wait $pid 2>/dev/null || true
    total+=("$(grep -h '^summary:' "$work/$name-$n.out".* | awk '{print $2}')")
  done
  printf '| %s | %d |\n' "$name" $(( (total[1] - total[0]) / 1000 ))
}

echo "| target | instructions per tools/call |"
echo "|---|---:|"
count tollgate "${TOLLGATE:-$R/tollgate}" proxy --upstream http://127.0.0.1:$up --policy "$work/policy.yaml" \
  --listen 127.0.0.1:$port --metrics-listen 127.0.0.1:19303 --log warn
count passthrough $R/bench-passthrough --listen 127.0.0.1:$port --upstream http://127.0.0.1:$up
[ -n "${SSE:-}" ] || count floor $R/bench-floor --listen 127.0.0.1:$port --upstream http://127.0.0.1:$up
