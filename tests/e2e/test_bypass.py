"""bypass: an attacker's attempts to get a call the policy denies to the real server.

Every attempt goes through the release proxy to the Python SDK's server, which writes down
each tool it runs with the arguments it ran with (`recording_server.py`). Whatever the proxy
answers, the suite then reads the server's record: it must never hold a denied call, an
argument outside a condition, or more calls than a limit allows. Each attempt is made on every
transport: streamable HTTP with sessions (SSE and JSON answers), stateless 2026-07-28, the
legacy HTTP+SSE transport, and HTTP/2. The generative part sends random mutations of denied
calls both straight to a server and through the proxy, and fails if the proxy lets through
anything the server would run that the policy denies.
"""

from __future__ import annotations

import base64
import json
import math
import os
import queue
import random
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import free_port


POLICY = r"""
apiVersion: tollgate.dev/v1alpha1
kind: McpPolicy
metadata: { name: bypass }
spec:
  default: deny
  tools:
    read_file: { rules: [] }
    delete_repository: { rules: [ { name: never, action: deny, onDeny: never } ] }
    create_charge:
      rules:
        - name: cap
          conditions:
            - { path: args.amount, op: lte, value: 100 }
            - { path: args.currency, op: in, value: [usd, eur] }
    run_query:
      rules:
        - name: select only
          conditions: [ { path: args.sql, op: regex, value: "^select\\b" } ]
    create_issue: { rules: [ { name: three an hour, rateLimit: 3/hour } ] }
    slow_issue: { rules: [ { name: three an hour, rateLimit: 3/hour } ] }
    act_then_refuse: { rules: [ { name: two an hour, rateLimit: 2/hour } ] }
    session_note:
      rules: [ { name: two a session, limit: { counter: notes, window: hour, max: 2, scope: session } } ]
"""

LIMITED = {"create_issue": 3, "slow_issue": 3, "act_then_refuse": 2}


def allowed(run: dict) -> bool:
    """The policy above, on what the server ran (its own reading of the arguments)."""
    tool, args = run["tool"], run["args"]
    if tool in ("read_file", *LIMITED):
        return True
    if tool == "create_charge":
        amount = args["amount"]
        return (
            isinstance(amount, (int, float))
            and math.isfinite(amount)
            and amount <= 100
            and args["currency"] in ("usd", "eur")
        )
    if tool == "run_query":
        return re.match(r"^select\b", args["sql"]) is not None
    return False


def runs(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines() if line.strip()]


def assert_nothing_denied_ran(record: Path, what: str = "") -> list[dict]:
    ran = runs(record)
    denied = [r for r in ran if not allowed(r)]
    assert not denied, f"{what}: the server ran what the policy denies: {denied}"
    per_hour: dict[tuple[str, int], int] = {}
    for r in ran:
        if r["tool"] in LIMITED:
            key = (r["tool"], int(r["t"] // 3600))
            per_hour[key] = per_hour.get(key, 0) + 1
    over = {k: n for k, n in per_hour.items() if n > LIMITED[k[0]]}
    assert not over, f"{what}: more calls ran than the limit allows: {over}"
    return ran


HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
TRANSPORTS = ["session", "json", "modern", "legacy", "h2"]


def envelope(id, tool: str, args: str) -> str:
    return (
        f'{{"jsonrpc":"2.0","id":{id},"method":"tools/call",'
        f'"params":{{"name":"{tool}","arguments":{args}}}}}'
    )


@dataclass
class Channel:
    """One MCP conversation over one transport, sending raw bytes."""

    base: str
    transport: str
    record: Path
    through_proxy: bool
    headers: dict = field(default_factory=dict)
    endpoint: str = "/mcp"
    events: "queue.Queue[dict]" = field(default_factory=queue.Queue)
    client: httpx.Client | None = None
    # httpx's sync client shared by threads corrupts its HTTP/2 state (encode/httpx#908): it
    # takes a stream id and writes the HEADERS under different locks, so a higher id can go
    # first and the proxy rightly resets the lower one (RFC 9113 §5.1.1). Another thread posts
    # on an HTTP/2 connection of its own, in the same session.
    _opener: threading.Thread | None = None
    _threads: threading.local = field(default_factory=threading.local)
    _others: list = field(default_factory=list)

    def open(self) -> "Channel":
        h2 = self.transport == "h2" and self.through_proxy
        self.client = httpx.Client(http1=not h2, http2=h2, timeout=10)
        self._opener = threading.current_thread()
        if self.transport == "modern":
            self.headers = {**HEADERS, "mcp-protocol-version": "2026-07-28"}
            return self
        if self.transport == "legacy":
            self._open_legacy()
            self.headers = {"content-type": "application/json"}
            self.post(init_body(0).encode())
            self.post(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
            return self
        r = self.client.post(f"{self.base}/mcp", headers=HEADERS, content=init_body(0).encode())
        assert r.status_code == 200, r.text
        self.headers = {**HEADERS, "mcp-protocol-version": "2025-06-18"}
        if "mcp-session-id" in r.headers:
            self.headers["mcp-session-id"] = r.headers["mcp-session-id"]
        self.post(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
        return self

    def _open_legacy(self) -> None:
        found: "queue.Queue[str]" = queue.Queue()

        def read() -> None:
            try:
                with httpx.stream("GET", f"{self.base}/sse", timeout=None) as r:
                    event = None
                    for line in r.iter_lines():
                        if line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            data = line[5:].strip()
                            if event == "endpoint":
                                found.put(data)
                            else:
                                try:
                                    self.events.put(json.loads(data))
                                except ValueError:
                                    pass
                        elif not line:
                            event = None
            except httpx.HTTPError:
                pass

        threading.Thread(target=read, daemon=True).start()
        self.endpoint = found.get(timeout=10)

    def post(self, body: bytes, headers: dict | None = None, path: str | None = None, method: str = "POST") -> httpx.Response:
        assert self.client is not None
        headers = self.headers if headers is None else headers
        if self.transport == "modern":
            body, routing = stateless(body)
            headers = {**routing, **headers}
        r = self._client().request(
            method,
            f"{self.base}{path or self.endpoint}",
            headers=headers,
            content=body,
        )
        if r.status_code == 404 and "mcp-session-id" in self.headers:
            # An attempt ended the session (DELETE): the next ones get a new one.
            self.client.close()
            self.open()
        return r

    def _client(self) -> httpx.Client:
        assert self.client is not None
        if not (self.transport == "h2" and self.through_proxy) or threading.current_thread() is self._opener:
            return self.client
        mine = getattr(self._threads, "client", None)
        if mine is None:
            mine = self._threads.client = httpx.Client(http1=False, http2=True, timeout=10)
            self._others.append(mine)
        return mine

    def post_alone(self, body: bytes) -> httpx.Response:
        """Posts on a connection of its own, in the same session: HTTP/2 on one connection
        would serialise it behind a streaming answer in this client."""
        h2 = self.transport == "h2" and self.through_proxy
        with httpx.Client(http1=not h2, http2=h2, timeout=10) as c:
            return c.post(f"{self.base}{self.endpoint}", headers=self.headers, content=body)

    def sync(self) -> None:
        """Waits until the server has run everything sent before (legacy answers later)."""
        mark = f"sentinel-{uuid.uuid4()}"
        self.post(envelope(f'"{mark}"', "read_file", json.dumps({"path": mark})).encode())
        deadline = time.monotonic() + 10
        while mark not in self.record.read_text():
            assert time.monotonic() < deadline, f"the server never ran the sentinel on {self.transport}"
            time.sleep(0.02)
        time.sleep(0.2)

    def close(self) -> None:
        for c in self._others:
            c.close()
        if self.client:
            self.client.close()


MODERN_META = '"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}},'


def stateless(raw: bytes) -> tuple[bytes, dict]:
    """A body for the 2026-07-28 era, in the encoding it came in: the envelope in `_meta`, and
    the routing headers the server checks, with the method and name as the server reads them."""
    if raw.startswith(b"\xef\xbb\xbf"):
        codec = "utf-8-sig"
    elif raw.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        codec = "utf-32"
    elif raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        codec = "utf-16"
    elif len(raw) > 1 and raw[1] == 0:
        codec = "utf-16-le"
    elif raw[:1] == b"\x00":
        codec = "utf-16-be"
    else:
        codec = "utf-8"
    text = raw.decode(codec, errors="surrogateescape")
    text = text.replace('"params":{', '"params":{' + MODERN_META, 1)
    routing = {}
    try:
        m = json.loads(text)
        m = m[0] if isinstance(m, list) else m
        routing["mcp-method"] = m["method"]
        params = m.get("params") if isinstance(m.get("params"), dict) else {}
        named = params.get("uri") if m["method"] == "resources/read" else params.get("name")
        if isinstance(named, str):
            routing["mcp-name"] = named
    except (ValueError, KeyError, TypeError, IndexError):
        routing = {"mcp-method": "tools/call"}
    # As a client must: a value outside plain visible ASCII (or one that looks encoded) travels
    # as =?base64?…?= of its UTF-8.
    for k, v in routing.items():
        if not (v.isascii() and v.isprintable() and v == v.strip()) or (v.startswith("=?base64?") and v.endswith("?=")):
            routing[k] = "=?base64?" + base64.b64encode(v.encode("utf-8", errors="surrogatepass")).decode() + "?="
    try:
        return text.encode(codec, errors="surrogateescape"), routing
    except UnicodeEncodeError:
        return raw, routing


def init_body(id) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "attacker", "version": "1"}}})


def server_flags(transport: str) -> list[str]:
    return {"json": ["--json"], "legacy": ["--transport", "sse"]}.get(transport, [])


@pytest.fixture
def guarded(recorder, proxy):
    """A recording server behind the proxy, and a channel to it over `transport`."""
    opened: list[Channel] = []

    def start(transport: str, *proxy_flags: str) -> Channel:
        url, record = recorder(*server_flags(transport))
        px = proxy(url, POLICY, *proxy_flags)
        ch = Channel(px.url, transport, record, through_proxy=True).open()
        ch.proxy = px
        opened.append(ch)
        return ch

    yield start
    for ch in opened:
        ch.close()


@pytest.fixture
def bare(recorder):
    """A recording server with nothing in front of it: what an attempt does when undefended."""
    opened: list[Channel] = []

    def start(transport: str) -> Channel:
        url, record = recorder(*server_flags(transport))
        ch = Channel(url, transport, record, through_proxy=False).open()
        opened.append(ch)
        return ch

    yield start
    for ch in opened:
        ch.close()


# Each attempt: a name, and what to send (body, extra headers or None, path or None, method).
CHARGE = '{"amount":5000,"currency":"usd"}'
ATTEMPTS: list[tuple[str, bytes, dict | None, str | None, str]] = []


def attempt(name: str, body: str | bytes, headers: dict | None = None, path: str | None = None, method: str = "POST") -> None:
    ATTEMPTS.append((name, body.encode() if isinstance(body, str) else body, headers, path, method))


DELETE = envelope(1, "delete_repository", '{"name":"prod"}')
attempt("plain denied call", DELETE)
attempt("content type in capitals", DELETE, {"content-type": "Application/JSON"})
attempt("no content type", DELETE, {"content-type": ""})
attempt("text/plain body", DELETE, {"content-type": "text/plain"})
attempt("form content type", DELETE, {"content-type": "application/x-www-form-urlencoded"})
attempt("content type with a non-ASCII byte", DELETE, {"content-type": b"application/json\xe9"})
attempt("UTF-8 byte order mark", b"\xef\xbb\xbf" + DELETE.encode())
attempt("UTF-16 with a byte order mark", DELETE.encode("utf-16"))
attempt("UTF-16LE without one", DELETE.encode("utf-16-le"))
attempt("UTF-16BE declared", DELETE.encode("utf-16-be"), {"content-type": "application/json; charset=utf-16be"})
attempt("UTF-32", DELETE.encode("utf-32"))
attempt("invalid UTF-8 in the name", envelope(1, "delete_repository", '{"name":"prod"}').encode().replace(b"prod", b"pr\xffod"))
attempt("name written twice, denied last", envelope(1, 'read_file","name":"delete_repository', '{"name":"prod","path":"x"}'))
attempt("name written twice, denied first", envelope(1, 'delete_repository","name":"read_file', '{"name":"prod","path":"x"}'))
attempt("name twice through an escape", envelope(1, 'read_file","n\\u0061me":"delete_repository', '{"name":"prod","path":"x"}'))
attempt("params twice", '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"x"}},"params":{"name":"delete_repository","arguments":{"name":"prod"}}}')
attempt("method twice", '{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call","params":{"name":"delete_repository","arguments":{"name":"prod"}}}')
attempt("escaped tool name", envelope(1, "delete\\u005frepository", '{"name":"prod"}'))
attempt("escaped method", '{"jsonrpc":"2.0","id":1,"method":"tools\\/call","params":{"name":"delete_repository","arguments":{"name":"prod"}}}')
attempt("escaped key", '{"jsonrpc":"2.0","id":1,"method":"tools/call","par\\u0061ms":{"name":"delete_repository","arguments":{"name":"prod"}}}')
attempt("trailing data", DELETE + ' {"jsonrpc":"2.0","id":2,"method":"ping"}')
attempt("trailing garbage", DELETE + "x")
attempt("comment before", "/* hi */" + DELETE)
attempt("batch of allowed and denied", f"[{envelope(1, 'read_file', json.dumps({'path': 'x'}))},{envelope(2, 'delete_repository', json.dumps({'name': 'prod'}))}]")
attempt("nested batch", f"[[{DELETE}]]")
attempt("no jsonrpc member", DELETE.replace('"jsonrpc":"2.0",', ""))
attempt("jsonrpc 1.0", DELETE.replace('"2.0"', '"1.0"'))
attempt("id true", envelope("true", "delete_repository", '{"name":"prod"}'))
attempt("id an object", envelope('{"a":1}', "delete_repository", '{"name":"prod"}'))
attempt("a request and a response at once", DELETE[:-1] + ',"result":{}}')
attempt("name with a trailing space", envelope(1, "delete_repository ", '{"name":"prod"}'))
attempt("name in other case", envelope(1, "Delete_Repository", '{"name":"prod"}'))
attempt("arguments as a string", envelope(1, "delete_repository", json.dumps(json.dumps({"name": "prod"}))))
attempt("nested 200 deep", envelope(1, "delete_repository", '{"name":"prod","x":' + "[" * 200 + "]" * 200 + "}"))
attempt("sql in UTF-16", envelope(1, "run_query", '{"sql":"drop table users"}').encode("utf-16"))
attempt("charset utf-16 declared on UTF-8", DELETE, {"content-type": "application/json; charset=utf-16"})
attempt("PUT with a body", DELETE, method="PUT")
attempt("PATCH with a body", DELETE, method="PATCH")
attempt("DELETE with a body", DELETE, method="DELETE")
attempt("another path", DELETE, path="/mcp/")
attempt("a query", DELETE, path="/mcp?x=1")
attempt("Mcp-Method that says otherwise", DELETE, {"mcp-method": "ping"})
attempt("Mcp-Name that says otherwise", DELETE, {"mcp-name": "read_file"})
attempt("Mcp-Name with a non-ASCII byte", DELETE, {"mcp-name": b"delete_repository\xe9"})
for bad in ["NaN", "Infinity", "-Infinity", '"-Infinity"', '"-inf"', '"NaN"', "1e400", "-1e400", '"-1e400"', '"0x10"', '" 50"', "-99999999999999999999999", '"5e3"']:
    attempt(f"amount {bad}", envelope(1, "create_charge", f'{{"amount":{bad},"currency":"usd"}}'))
attempt("amount twice", envelope(1, "create_charge", '{"amount":1,"amount":5000,"currency":"usd"}'))
attempt("amount twice, deeper escape", envelope(1, "create_charge", '{"amount":1,"\\u0061mount":5000,"currency":"usd"}'))
attempt("currency with a lone surrogate", envelope(1, "create_charge", '{"amount":1,"currency":"usd\\ud800"}'))
attempt("currency twice", envelope(1, "create_charge", '{"amount":1,"currency":"usd","currency":"gbp"}'))
attempt("sql twice", envelope(1, "run_query", '{"sql":"select 1","sql":"drop table users"}'))
attempt("sql with a BOM inside", b"\xef\xbb\xbf" + envelope(1, "run_query", '{"sql":"drop table users"}').encode())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bypass_no_denied_call_reaches_the_server_by_any_attempt(guarded, transport):
    ch = guarded(transport)
    refused = 0
    for name, body, headers, path, method in ATTEMPTS:
        h = {**ch.headers, **(headers or {})}
        h = {k: v for k, v in h.items() if v != ""}
        r = ch.post(body, headers=h, path=path, method=method)
        if r.status_code >= 400 or "error" in r.text or "Denied" in r.text:
            refused += 1
    ch.sync()
    assert_nothing_denied_ran(ch.record, transport)
    assert len(ATTEMPTS) >= 60
    assert refused > 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bypass_with_hyper_serving_http1_no_denied_call_reaches_the_server(guarded, transport):
    """`--http1 hyper`, the way out should a fault be found in Tollgate's own HTTP/1 server,
    holds the same line: every attempt, on every transport."""
    ch = guarded(transport, "--http1", "hyper")
    for name, body, headers, path, method in ATTEMPTS:
        h = {**ch.headers, **(headers or {})}
        h = {k: v for k, v in h.items() if v != ""}
        ch.post(body, headers=h, path=path, method=method)
    ch.sync()  # an allowed call runs through it: the sentinel
    assert_nothing_denied_ran(ch.record, transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bypass_the_undefended_server_runs_some_of_these_attempts(bare, transport):
    # The same attempts straight to the server: had the proxy waved them through, the suite
    # above would see these runs. It shows the attempts are real, not ones no server runs.
    if transport == "h2":
        pytest.skip("the bare server speaks HTTP/1 only; HTTP/2 reaches it through the proxy")
    ch = bare(transport)
    for name, body, headers, path, method in ATTEMPTS:
        h = {**ch.headers, **(headers or {})}
        h = {k: v for k, v in h.items() if v != ""}
        try:
            ch.post(body, headers=h, path=path, method=method)
        except httpx.HTTPError:
            pass
    ch.sync()
    ran = [r for r in runs(ch.record) if not allowed(r)]
    assert ran, f"no attempt ran a denied call on the bare server over {transport}"


# The generative part: random mutations of denied calls.

BASES = [
    ("delete_repository", '{"name":"prod"}'),
    ("create_charge", CHARGE),
    ("run_query", '{"sql":"drop table users"}'),
]
NUMBERS = ["NaN", "Infinity", "-Infinity", '"-Infinity"', '"NaN"', '"Infinity"', "1e400", "-1e400", '"1e400"',
           '"0x10"', "1E2", "-5000", "100.00000000000001", "99999999999999999999999", '"-1e999"', "-0"]
CONTENT_TYPES = [None, "", "Application/JSON", "text/plain", "application/json; charset=utf-16",
                 "application/json;charset=UTF-8", "application/x-www-form-urlencoded", "application/json, text/plain"]


def mutate(rng: random.Random, tool: str, args: str) -> tuple[bytes, dict, str | None, str]:
    """One random attack on a denied call: some textual tricks, an encoding, a header, a path."""
    headers: dict = {}
    path = None
    method = "POST"
    name = tool
    text_args = args
    extra = ""
    for _ in range(rng.randint(1, 3)):
        trick = rng.randrange(12)
        if trick == 0:
            name = f'read_file","name":"{tool}' if rng.random() < 0.5 else f'{tool}","name":"read_file'
        elif trick == 1:
            i = rng.randrange(len(tool))
            name = tool[:i] + f"\\u{ord(tool[i]):04x}" + tool[i + 1:]
        elif trick == 2 and tool == "create_charge":
            text_args = f'{{"amount":{rng.choice(NUMBERS)},"currency":"usd"}}'
        elif trick == 3:
            key = args[2:args.index('"', 2)]
            text_args = args[:-1] + f',"{key}":' + json.dumps("x") + "}" if rng.random() < 0.5 else "{" + f'"{key}":"x",' + args[1:]
        elif trick == 4:
            extra = rng.choice([' {}', 'x', '\n[]', ',', ' //'])
        elif trick == 5:
            headers["content-type"] = rng.choice(CONTENT_TYPES)
        elif trick == 6:
            method = rng.choice(["PUT", "PATCH", "POST"])
        elif trick == 7:
            path = rng.choice(["/mcp/", "/mcp?a=b", "/MCP", None])
        elif trick == 8:
            text_args = text_args.replace(":", " : ").replace(",", " ,\n")
        elif trick == 9:
            extra = extra or ""
        elif trick == 10:
            headers["mcp-method"] = rng.choice(["ping", "tools/list", "tools/call"])
        elif trick == 11:
            text_args = text_args.replace('"usd"', rng.choice(['"us\\u0064"', '"usd\\ud800"', '"USD"', '"usd"']))
    body = envelope(rng.randrange(1, 10**6), name, text_args) + extra
    if rng.random() < 0.15:
        body = f"[{body}]"
    raw = body.encode()
    pick = rng.randrange(10)
    if pick == 0:
        raw = b"\xef\xbb\xbf" + raw
    elif pick == 1:
        raw = body.encode(rng.choice(["utf-16", "utf-16-le", "utf-16-be", "utf-32"]))
    elif pick == 2:
        raw = raw.replace(b'"prod"', b'"pr\xc0\xafod"')
    return raw, headers, path, method


GENERATED = int(os.environ.get("TOLLGATE_BYPASS_CASES", "120"))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bypass_random_mutations_of_denied_calls_never_run_through_the_proxy(guarded, bare, transport):
    seed = int(os.environ.get("TOLLGATE_BYPASS_SEED", "20261201")) + TRANSPORTS.index(transport)
    rng = random.Random(seed)
    through = guarded(transport)
    direct = bare("session" if transport == "h2" else transport)
    for _ in range(GENERATED):
        tool, args = rng.choice(BASES)
        raw, headers, path, method = mutate(rng, tool, args)
        for ch in (direct, through):
            h = {**ch.headers, **headers}
            h = {k: v for k, v in h.items() if v is not None}
            if h.get("content-type") == "":
                del h["content-type"]
            try:
                ch.post(raw, headers=h, path=path, method=method)
            except httpx.HTTPError:
                pass
    direct.sync()
    through.sync()
    assert_nothing_denied_ran(through.record, f"{transport}, seed {seed}")
    effective = [r for r in runs(direct.record) if not allowed(r)]
    # The mutations are real attacks: the undefended server ran some of them.
    assert effective, f"no mutation ran a denied call on the bare server ({transport}, seed {seed})"


# Limits: the quota cannot be exceeded or bought back.

def issue(id, title="t", tool="create_issue", args=None) -> bytes:
    return envelope(json.dumps(id), tool, json.dumps(args if args is not None else {"title": title})).encode()


def h2_streams(base: str, path: str, headers: dict, bodies: list[bytes]) -> list[int]:
    """POSTs every body at once as streams of one HTTP/2 connection (prior knowledge), with
    the `h2` library; returns each stream's status. A GOAWAY fails."""
    import socket
    from urllib.parse import urlsplit

    import h2.config
    import h2.connection
    import h2.events

    u = urlsplit(base)
    sock = socket.create_connection((u.hostname, u.port), timeout=15)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    streams = []
    for body in bodies:
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":authority", u.netloc), (":path", path),
                                *((k.lower(), v) for k, v in headers.items()), ("content-length", str(len(body)))])
        conn.send_data(sid, body, end_stream=True)
        streams.append(sid)
    sock.sendall(conn.data_to_send())
    status: dict[int, int] = {}
    ended: set[int] = set()
    try:
        while len(ended) < len(streams):
            data = sock.recv(65536)
            assert data, "the proxy closed the connection"
            for event in conn.receive_data(data):
                assert not isinstance(event, h2.events.ConnectionTerminated), f"the proxy sent GOAWAY: {event}"
                if isinstance(event, h2.events.ResponseReceived):
                    status[event.stream_id] = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    ended.add(event.stream_id)
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    return [status.get(sid, 0) for sid in streams]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bypass_concurrent_calls_never_exceed_a_limit(guarded, transport):
    ch = guarded(transport)
    results, failures = [], []

    def one(i: int) -> None:
        # A thread's exception would otherwise be a warning, not a failure: an HTTP/2
        # connection the proxy ended (GOAWAY) must fail the test.
        try:
            results.append(ch.post(issue(1000 + i, f"c{i}")).status_code)
        except Exception as e:  # noqa: BLE001
            failures.append(repr(e))

    if transport == "h2":
        # Twelve streams at once on one connection, written in order from one thread. (httpx's
        # sync client shared by threads takes a stream id and writes its HEADERS under
        # different locks, so a higher id can go first, or two streams get one id: RFC 9113
        # §5.1.1 makes that a connection error, and the proxy ended the connection with
        # PROTOCOL_ERROR, which this test once let pass as a thread's warning.)
        results = h2_streams(ch.base, ch.endpoint, ch.headers, [issue(1000 + i, f"c{i}") for i in range(12)])
    else:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not failures, failures
    assert len(results) == 12 and set(results) <= {200, 202}, results
    ch.sync()
    ran = assert_nothing_denied_ran(ch.record, transport)
    assert sum(r["tool"] == "create_issue" for r in ran) == 3


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bypass_failed_answers_to_other_requests_buy_no_quota_back(guarded, transport):
    ch = guarded(transport)
    # Spend the quota, each call answered by the server.
    for i in range(3):
        ch.post(issue(i + 1, f"spent{i}"))
    # Try to buy it back: requests reusing those ids, which the server refuses (-32602) or
    # cannot find, then fresh calls.
    for i in range(3):
        ch.post(issue(i + 1, tool="create_issue", args="not an object"))
        ch.post(f'{{"jsonrpc":"2.0","id":{i + 1},"method":"resources/read","params":{{"uri":"no://such"}}}}'.encode())
        ch.post(f'{{"jsonrpc":"2.0","id":{i + 1},"error":{{"code":-32602,"message":"x"}}}}'.encode())
        ch.post(f'{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{i + 1}}}}}'.encode())
    for i in range(3):
        ch.post(issue(100 + i, f"again{i}"))
    # A batch whose two calls share an id: the second is refused, so its failure cannot
    # settle the first.
    ch.post(b"[" + issue(500, "b1") + b"," + issue(500, args="bad") + b"]")
    ch.sync()
    ran = assert_nothing_denied_ran(ch.record, transport)
    assert sum(r["tool"] == "create_issue" for r in ran) == 3, ran


@pytest.mark.parametrize("transport", ["session", "json", "legacy", "h2"])
def test_bypass_an_id_in_flight_cannot_be_reused_to_settle_it(guarded, transport):
    ch = guarded(transport)
    answers = []

    def slow(i: int) -> None:
        try:
            r = ch.post_alone(issue(70 + i, tool="slow_issue", args={"title": f"slow{i}", "seconds": 1}))
            answers.append((i, r.status_code, r.text[:200]))
        except httpx.HTTPError as e:
            answers.append((i, repr(e)))

    for round in range(4):
        id = 70 + round
        t = threading.Thread(target=slow, args=(round,))
        t.start()
        if round < 3:
            # Until the server is running it (it records first, then takes a second): a fixed
            # sleep raced a loaded machine.
            deadline = time.monotonic() + 10
            while f'"slow{round}"' not in ch.record.read_text():
                assert time.monotonic() < deadline, f"slow{round} never ran on {transport}"
                time.sleep(0.02)
        else:
            time.sleep(0.3)  # the fourth is denied: it never runs
        # While it runs, the same id again: another call, and a method the server does not
        # have. Either answer, taken for the first call's, would settle it.
        for again in (issue(id, tool="slow_issue", args={"title": "again"}), f'{{"jsonrpc":"2.0","id":{id},"method":"resources/read","params":{{"uri":"no://such"}}}}'.encode()):
            r = ch.post(again)
            if transport != "legacy" and round < 3:  # the fourth is denied, so not in flight
                assert "already in flight" in r.text, r.text
        t.join()
        time.sleep(1)
    ch.sync()
    ran = assert_nothing_denied_ran(ch.record, transport)
    # Each slow call's HTTP status and the proxy's audit lines go with a failure: a count given
    # back for a call that ran (a 4xx, a connection error) would show there.
    audit = [a for a in ch.proxy.audit() if a.get("tool") == "slow_issue"]
    assert sum(r["tool"] == "slow_issue" for r in ran) == 3, (ran, answers, audit)


@pytest.mark.parametrize("transport", ["session", "json", "legacy", "h2"])
def test_bypass_cancelling_a_call_after_it_ran_keeps_its_count(guarded, transport):
    ch = guarded(transport)
    for i in range(5):
        done = threading.Thread(target=lambda i=i: ch.post_alone(issue(40 + i, tool="slow_issue", args={"title": f"x{i}", "seconds": 1})))
        done.start()
        time.sleep(0.3)  # it has run (it records first), and now it is cancelled
        ch.post(f'{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{40 + i},"reason":"changed my mind"}}}}'.encode())
        done.join()
    ch.sync()
    ran = assert_nothing_denied_ran(ch.record, transport)
    assert sum(r["tool"] == "slow_issue" for r in ran) == 3, ran


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bypass_a_tool_that_acts_then_raises_invalid_params_keeps_its_count(guarded, transport):
    # The SDK passes a tool's own error through: -32602 after the tool ran looks like a call
    # refused before running. No JSON-RPC answer gives a count back.
    ch = guarded(transport)
    for i in range(6):
        ch.post(issue(300 + i, tool="act_then_refuse", args={"title": f"t{i}"}))
    ch.sync()
    ran = assert_nothing_denied_ran(ch.record, transport)
    assert sum(r["tool"] == "act_then_refuse" for r in ran) == 2, ran


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bypass_a_session_scope_binds_only_to_sessions_the_server_issued(guarded, transport):
    # Every call with a session id of the client's own making: on the legacy transport the
    # session is its stream's; with a stateless server there is none (each counts per caller);
    # a stateful server refuses made-up ids. Either way at most two run, and no made-up id
    # becomes a counter of its own.
    ch = guarded(transport)
    for i in range(6):
        ch.post(issue(400 + i, tool="session_note", args={"text": f"n{i}"}),
                headers={**ch.headers, "mcp-session-id": f"made-up-{i}"})
    # And without any.
    for i in range(3):
        ch.post(issue(500 + i, tool="session_note", args={"text": f"m{i}"}), headers={
            k: v for k, v in ch.headers.items() if k != "mcp-session-id"})
    ch.sync()
    ran = [r for r in runs(ch.record) if r["tool"] == "session_note"]
    assert len(ran) <= 2, (transport, ran)
    # A stateless server has no session, yet its calls are limited (per caller); the legacy
    # stream's session is one.
    if transport in ("modern", "legacy"):
        assert len(ran) == 2, (transport, ran)
    assert not any("made-up" in str(a.get("session")) for a in ch.proxy.audit()), "no made-up id is a session"


def test_bypass_a_call_the_server_refused_before_running_gives_its_quota_back(guarded):
    # The other side of the rule: a refund when the proxy knows nothing ran, because the
    # server's transport refused the request (a session it does not know: 404) before any tool.
    ch = guarded("json")
    for i in range(3):
        r = ch.post(issue(i + 1), headers={**ch.headers, "mcp-session-id": f"no-such-session-{i}"})
        assert r.status_code == 404, r.text
    # What servers refuse before running, arguments that are not an object, the proxy refuses
    # itself, uncounted.
    r = ch.post(issue(9, args="not an object"))
    assert r.json()["error"]["code"] == -32602 and "arguments must be an object" in r.text, r.text
    for i in range(3):
        ch.post(issue(10 + i, f"real{i}"))
    r = ch.post(issue(20, "one too many"))
    assert "three an hour" in r.text, r.text
    ch.sync()
    ran = assert_nothing_denied_ran(ch.record)
    assert sum(r["tool"] == "create_issue" for r in ran) == 3


# The HTTP/1 framing: requests that could be read two ways.

def raw_exchange(port: int, data: bytes, pause_after: int | None = None) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        if pause_after is not None:
            s.sendall(data[:pause_after])
            time.sleep(0.05)
            s.sendall(data[pause_after:])
        else:
            s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        return out


@pytest.mark.parametrize("http1", ["tollgate", "hyper"])
def test_bypass_requests_framed_two_ways_never_smuggle_a_denied_call(guarded, http1):
    ch = guarded("json", "--http1", http1)
    port = ch.proxy.port
    sid = ch.headers.get("mcp-session-id", "")
    hidden = DELETE.encode()
    fields = f"Host: x\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: {sid}\r\nMcp-Protocol-Version: 2025-06-18\r\n"
    smuggled = b"POST /mcp HTTP/1.1\r\n" + fields.encode() + b"Content-Length: " + str(len(hidden)).encode() + b"\r\n\r\n" + hidden
    allowed_call = envelope(9, "read_file", '{"path":"x"}').encode()
    cases = [
        # CL.TE: the length covers the chunked terminator and the smuggled request.
        b"POST /mcp HTTP/1.1\r\n" + fields.encode() + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled,
        # TE.CL.
        b"POST /mcp HTTP/1.1\r\n" + fields.encode() + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n" + hex(len(smuggled))[2:].encode() + b"\r\n" + smuggled + b"\r\n0\r\n\r\n",
        b"POST /mcp HTTP/1.1\r\n" + fields.encode() + b"Content-Length: " + str(len(allowed_call)).encode() + b"\r\nContent-Length: 0\r\n\r\n" + allowed_call + smuggled,
        b"POST /mcp HTTP/1.1\r\n" + fields.encode() + b"Transfer-Encoding: chunked, identity\r\n\r\n" + smuggled,
        b"POST /mcp HTTP/1.1\r\n" + fields.encode() + b"Transfer-Encoding: xchunked\r\n\r\n" + smuggled,
        b"POST /mcp HTTP/1.1\r\n" + fields.encode() + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" + smuggled,
        b"POST /mcp HTTP/1.1\r\n" + fields.encode().replace(b"Host: x\r\n", b"") + b"Content-Length: " + str(len(hidden)).encode() + b"\r\n\r\n" + hidden,
        b"POST /mcp HTTP/1.1\r\n" + fields.encode() + b"Content-Length: +" + str(len(hidden)).encode() + b"\r\n\r\n" + hidden,
        b"GET /mcp HTTP/1.1\r\n" + fields.encode() + b"Content-Length: " + str(len(hidden)).encode() + b"\r\n\r\n" + hidden,
        # Pipelined: an allowed call, then a denied one, in one packet.
        b"POST /mcp HTTP/1.1\r\n" + fields.encode() + b"Content-Length: " + str(len(allowed_call)).encode() + b"\r\n\r\n" + allowed_call + smuggled,
    ]
    for i, data in enumerate(cases):
        raw_exchange(port, data)
        raw_exchange(port, data, pause_after=1)  # one byte first: `P` once chose another parser
    ch.sync()
    assert_nothing_denied_ran(ch.record, "HTTP/1 framing")


def test_bypass_a_slow_or_silent_client_does_not_stop_the_proxy_serving_others(guarded):
    # 1,000 connections send a byte every 10 s and 1,000 send only the `P` of HTTP/2's
    # preface; a normal client still gets answers, the proxy's memory stays bounded, and the
    # deadlines close the slow ones.
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 8192), hard), hard))
    ch = guarded("json", "--head-timeout", "25s", "--first-byte-timeout", "25s")
    port = ch.proxy.port
    pid = ch.proxy.proc.proc.pid

    def rss_kib() -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    before = rss_kib()
    slow, preface = [], []
    for i in range(1000):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /mcp HTTP/1.1\r\nHo")
        slow.append(s)
        p = socket.create_connection(("127.0.0.1", port))
        p.sendall(b"P")
        preface.append(p)
    started = time.monotonic()
    next_byte = started + 10
    answered = 0
    while time.monotonic() - started < 22:
        r = ch.post(envelope(answered + 1, "read_file", '{"path":"x"}').encode())
        assert r.status_code == 200 and "contents of x" in r.text, r.text
        answered += 1
        if time.monotonic() >= next_byte:
            next_byte += 10
            for s in slow:
                try:
                    s.send(b"s")
                except OSError:
                    pass
        time.sleep(0.2)
    during = rss_kib()
    assert answered > 50
    # Past the head deadline every slow connection has been closed by the proxy.
    time.sleep(6)
    closed = 0
    for s in slow + preface:
        s.settimeout(1)
        try:
            data = s.recv(4096)
            closed += data == b"" or data.startswith(b"HTTP/1.1 408")
        except ConnectionResetError:
            closed += 1
        except OSError:
            pass
        s.close()
    assert closed >= 1900, f"only {closed} of 2000 slow connections were closed"
    assert during - before < 64 * 1024, f"2,000 slow connections cost {during - before} KiB"
