"""Faults: what the real `tollgate proxy` does when the server dies mid-answer, stalls or floods,
when stdout stops taking the audit log, when it is told to stop, when the control plane's
stream misbehaves, and when a policy is very large. Each test breaks one thing for real (a
killed process, a pipe nobody reads, a socket nobody drains) and looks at what the agent, the
server's own record, the audit lines, /readyz and /metrics say."""

from __future__ import annotations

import json
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import httpx
import pytest
from conftest import SAMPLE, free_port, wait_for_port
from rpc import HEADERS, call, messages, open_session, rpc

LIMITED = """
apiVersion: tollgate.dev/v1alpha1
kind: McpPolicy
metadata: { name: limited }
spec:
  default: allow
  tools:
    slow: { rules: [ { name: two a minute, rateLimit: 2/minute } ] }
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def wait_until(what: str, f, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        got = f()
        if got:
            return got
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def in_flight(url: str, headers: dict, body: dict) -> tuple[threading.Thread, dict]:
    """Sends one request on a thread of its own; its response lands in the dict, under "r"."""
    got: dict = {}
    t = threading.Thread(target=lambda: got.setdefault("r", httpx.post(url, headers=headers, json=body, timeout=10)))
    t.start()
    return t, got


def received(port: int) -> int:
    """Bytes the kernel has taken in on the server's side of every connection to `port`."""
    out = subprocess.run(["ss", "-Htni", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(n) for n in re.findall(r"bytes_received:(\d+)", out))


def restart(procs, srv, *flags: str) -> None:
    """The sample server again, on the port it had."""
    procs.start("sample-again", [sys.executable, str(SAMPLE), "--port", str(srv.port), *flags], srv.port)


# --- the server dies mid-answer ------------------------------------------------------------


def test_faults_a_server_killed_mid_stream_breaks_the_agents_stream_keeps_the_calls_count_and_hangs_nothing(
        sample_server, proxy, procs):
    srv = sample_server()  # SSE answers: the slow tool's stream is open while it runs
    px = proxy(srv.url, LIMITED)
    h = open_session(f"{px.url}/mcp")
    t0 = time.monotonic()
    with httpx.Client(timeout=10) as c:
        with c.stream("POST", f"{px.url}/mcp", headers=h, json=call(1, "slow", {"seconds": 30})) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            srv.proc.proc.kill()
            with pytest.raises(httpx.HTTPError):
                for _ in r.iter_bytes():
                    pass
    assert time.monotonic() - t0 < 10, "the agent waited for an answer that could not come"
    # While the server is gone every call gets 502 naming it, and the proxy stays ready.
    gone = httpx.post(f"{px.url}/mcp", headers=h, json=call(2, "slow", {"seconds": 0}))
    assert gone.status_code == 502 and srv.url.split("//")[1] in gone.text, gone.text
    assert httpx.get(f"{px.admin}/readyz").status_code == 200
    # The server back on its port: the killed call counted (it may have run), the unreachable
    # one did not, so one more runs and the next is over the limit.
    restart(procs, srv)
    h = open_session(f"{px.url}/mcp")
    answers = [messages(httpx.post(f"{px.url}/mcp", headers=h, json=call(i, "slow", {"seconds": 0})))[0]
               for i in (3, 4)]
    assert "result" in answers[0], answers[0]
    assert answers[1]["error"]["data"]["rule"] == "two a minute", answers[1]


def test_faults_a_json_server_killed_mid_call_gets_the_agent_a_502_and_the_call_keeps_its_count(sample_server, proxy, procs):
    srv = sample_server("--json")
    px = proxy(srv.url, LIMITED)
    h = open_session(f"{px.url}/mcp")
    before = received(srv.port)
    t, got = in_flight(f"{px.url}/mcp", h, call(1, "slow", {"seconds": 30}))
    # Killed once the call has reached the server, not before the proxy sent it.
    wait_until("the call reaches the server", lambda: received(srv.port) > before)
    srv.proc.proc.kill()
    t.join(10)
    r = got["r"]
    assert r.status_code == 502 and r.json()["error"]["code"] == -32603, r.text
    restart(procs, srv, "--json")
    h = open_session(f"{px.url}/mcp")
    answers = [messages(httpx.post(f"{px.url}/mcp", headers=h, json=call(i, "slow", {"seconds": 0})))[0] for i in (2, 3)]
    assert "result" in answers[0] and answers[1]["error"]["data"]["rule"] == "two a minute", answers


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
def test_faults_the_sdk_client_gets_an_error_not_a_hang_when_the_server_dies_mid_call(sample_server, proxy, mode):
    from mcp.client.client import Client
    from mcp.shared.exceptions import MCPError

    srv = sample_server()
    px = proxy(srv.url, LIMITED)

    async def run():
        async with Client(f"{px.url}/mcp", mode=mode) as c:
            async with anyio.create_task_group() as tg:
                async def kill_soon():
                    await anyio.sleep(0.5)
                    srv.proc.proc.kill()
                tg.start_soon(kill_soon)
                with anyio.fail_after(15):
                    with pytest.raises(MCPError):
                        await c.call_tool("slow", {"seconds": 30})

    anyio.run(run)


# --- the server stalls, or floods an agent that does not read --------------------------------


def test_faults_a_server_that_takes_the_request_and_never_answers_times_out_with_a_502(proxy):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    held = []
    threading.Thread(target=lambda: [held.append(silent.accept()) for _ in range(4)], daemon=True).start()
    px = proxy(f"http://127.0.0.1:{silent.getsockname()[1]}", LIMITED, "--upstream-head-timeout", "1s")
    t0 = time.monotonic()
    r = httpx.post(f"{px.url}/mcp", headers=HEADERS, json=call(1, "slow", {"seconds": 1}), timeout=10)
    assert r.status_code == 502 and "within 1 s" in r.text, r.text
    assert time.monotonic() - t0 < 5
    assert px.metric("tollgate_upstream_errors_total") >= 1


def flood_server() -> tuple[int, dict]:
    """A server that answers every request with an endless SSE stream, as fast as it can send."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    seen = {"sent": 0, "closed": threading.Event()}
    event = b"event: message\ndata: " + b"x" * 65536 + b"\n\n"

    def serve():
        conn, _ = srv.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (len(event), event)
        try:
            while True:
                conn.sendall(chunk)
                seen["sent"] += len(event)
        except OSError:
            seen["closed"].set()

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1], seen


@pytest.mark.parametrize("http1", ["tollgate", "hyper"])
def test_faults_an_agent_that_stops_reading_a_flood_is_cut_off_and_the_proxy_holds_no_more_than_a_few_mib(proxy, http1):
    port, seen = flood_server()
    px = proxy(f"http://127.0.0.1:{port}", LIMITED, "--write-timeout", "2s", "--http1", http1)
    before = rss_kib(px.proc.proc.pid)
    agent = socket.create_connection(("127.0.0.1", px.port))
    agent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    body = json.dumps(rpc(1, "ping")).encode()
    agent.sendall(b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"accept: application/json, text/event-stream\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    assert agent.recv(100).startswith(b"HTTP/1.1 200")
    peak = before
    for _ in range(20):  # the agent reads nothing more for 4 s
        peak = max(peak, rss_kib(px.proc.proc.pid))
        time.sleep(0.2)
    # Back-pressure: the server could send only what the sockets and one event's buffer hold,
    # then the write timeout cut the agent off, and the server's stream with it.
    assert seen["closed"].wait(10), "the server's stream was never closed"
    assert seen["sent"] < 64 << 20, seen["sent"]
    assert peak - before < 32 << 10, f"RSS grew from {before} KiB to {peak} KiB"
    agent.settimeout(5)
    try:
        while agent.recv(1 << 20):
            pass
    except OSError:
        pass  # reset: the proxy gave up on this agent
    agent.close()
    assert httpx.get(f"{px.admin}/readyz").status_code == 200


# --- the audit log stops draining -----------------------------------------------------------


def start_unread(tollgate_bin: Path, upstream: str, policy: Path, tmp: Path, *flags: str):
    """A proxy whose stdout is a pipe the test reads only when it chooses to."""
    port, admin = free_port(), free_port()
    log = tmp / f"proxy-{port}.log"
    p = subprocess.Popen([str(tollgate_bin), "proxy", "--upstream", upstream, "--policy", str(policy),
                          "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{admin}", *flags],
                         stdout=subprocess.PIPE, stderr=open(log, "ab"))
    wait_for_port(port, p, log)
    wait_for_port(admin, p, log)
    return p, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"


def metric(admin: str, name: str, **labels) -> float:
    total = 0.0
    for line in httpx.get(f"{admin}/metrics").text.splitlines():
        head, _, value = line.rpartition(" ")
        if line.startswith(name) and all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


@pytest.mark.parametrize("overflow", ["deny", "drop"])
def test_faults_a_blocked_stdout_loses_no_decision_silently(recorder, tollgate_bin, tmp_path, overflow):
    url, record = recorder("--json")
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: '1'\ndefault: allow\ntools: {}\n")
    p, px, admin = start_unread(tollgate_bin, url, policy, tmp_path, "--audit-buffer", "16384",
                                "--audit-overflow", overflow)
    try:
        wait_until("ready", lambda: httpx.get(f"{admin}/readyz").status_code == 200)
        sent, allowed, refused = 0, 0, []
        with httpx.Client(headers=open_session(f"{px}/mcp"), timeout=10) as c:
            # The pipe takes 64 KiB, the buffer 16 KiB more: then the overflow policy applies.
            while sent < 3000 and (overflow == "drop" or not refused):
                a = messages(c.post(f"{px}/mcp", json=call(sent, "read_file", {"path": f"f{sent}"})))[0]
                sent += 1
                if "result" in a:
                    allowed += 1
                else:
                    refused.append(a)
            ready = httpx.get(f"{admin}/readyz")
            if overflow == "deny":
                assert refused and refused[0]["error"]["data"]["rule"] == "(audit log)", refused[:1]
                assert "audit log" in refused[0]["error"]["message"]
                assert ready.status_code == 503 and "not draining" in ready.text, ready.text
                assert metric(admin, "tollgate_decisions_total", outcome="deny") == len(refused)
            else:
                assert not refused and sent == 3000
                assert ready.status_code == 200 and "lines are dropped" in ready.text, ready.text
                assert metric(admin, "tollgate_audit_lines_dropped_total", reason="full") > 0
            # What the server ran is what the proxy let through.
            assert len(record.read_text().splitlines()) == allowed
            # Stdout drains again: the proxy is ready, calls run, and every decision is in a
            # line or counted in a later line's droppedBefore.
            lines: list[dict] = []
            reader = threading.Thread(target=lambda: lines.extend(json.loads(l) for l in p.stdout), daemon=True)
            reader.start()
            wait_until("ready again", lambda: httpx.get(f"{admin}/readyz").status_code == 200)
            a = messages(c.post(f"{px}/mcp", json=call(sent, "read_file", {"path": "last"})))[0]
            assert "result" in a, a
            sent += 1
            allowed += 1
        wait_until("the last line", lambda: any(l.get("tool") == "read_file" and l["decision"] == "allow"
                                                 and metric(admin, "tollgate_audit_buffered_bytes") == 0 for l in lines[-1:]))
        decisions = [l for l in lines if l.get("kind") == "decision"]
        dropped = sum(l.get("droppedBefore", 0) for l in lines)
        assert len(decisions) + dropped == sent, (len(decisions), dropped, sent)
        assert dropped == metric(admin, "tollgate_audit_lines_dropped_total")
        assert metric(admin, "tollgate_audit_lines_total") == len(lines)
        allowed_lines = sum(1 for l in decisions if l["decision"] == "allow")
        if overflow == "deny":
            # Only refusals may go unwritten: every call the server ran has its line.
            assert allowed_lines == allowed
    finally:
        p.kill()
        p.wait()


# --- SIGTERM -------------------------------------------------------------------------------


def test_faults_sigterm_turns_readiness_off_first_then_refuses_new_connections_while_calls_in_flight_finish(sample_server, proxy):
    srv = sample_server("--json")
    px = proxy(srv.url, "version: '1'\ndefault: allow\ntools: {}\n", "--shutdown-delay", "1500ms")
    h = open_session(f"{px.url}/mcp")
    t, result = in_flight(f"{px.url}/mcp", h, call(9, "slow", {"seconds": 3.0}))
    time.sleep(0.3)
    px.proc.proc.send_signal(signal.SIGTERM)
    ready = wait_until("readiness off", lambda: (r := httpx.get(f"{px.admin}/readyz")).status_code == 503 and r, 1.0)
    assert "shutting down" in ready.text, ready.text
    # Within the delay the proxy still takes calls, for endpoints that have not caught up.
    assert "result" in messages(httpx.post(f"{px.url}/mcp", headers=h, json=call(10, "read_file", {"path": "x"})))[0]
    time.sleep(1.5)
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{px.url}/mcp", headers=h, json=rpc(1, "ping"))
    t.join(10)
    assert messages(result["r"])[0]["result"]["content"][0]["text"] == "slept 3.0s"
    assert px.proc.proc.wait(10) == 0


# --- the control plane's stream misbehaves --------------------------------------------------


class FakePlane:
    """The operator's stream as the sidecar sees it (TLS, GET /v1/policy, a JSON line per
    update), sending what the test puts on `lines`. Faults an operator could show, on demand."""

    def __init__(self, tmp: Path):
        pki = tmp / "pki"
        pki.mkdir()
        openssl = lambda *a: subprocess.run(["openssl", *a], cwd=pki, capture_output=True, check=True)  # noqa: E731
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
                "-subj", "/CN=test operator CA")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out", "cert.csr", "-subj", "/CN=operator")
        (pki / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", "cert.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "cert.pem",
                "-days", "1", "-extfile", "san.cnf")
        self.ca = pki / "ca.pem"
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(pki / "cert.pem", pki / "key.pem")
        self.port = free_port()
        self.lines: queue.Queue[bytes] = queue.Queue()
        self.connects: list[float] = []
        self.refuse = False
        self.sock: socket.socket | None = None

    def up(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen()
        self.sock = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def down(self):
        if self.sock:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread in accept()
            self.sock.close()
            self.sock = None

    def _accept(self, s):
        while True:
            try:
                raw, _ = s.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw, s), daemon=True).start()

    def _serve(self, raw, listener):
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
            conn.recv(65536)
            self.connects.append(time.monotonic())
            if self.refuse:
                conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 8\r\nconnection: close\r\n\r\nnot yet\n")
                conn.close()
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n")
            while listener.fileno() != -1:
                try:
                    line = self.lines.get(timeout=0.1)
                except queue.Empty:
                    continue
                conn.sendall(line)
            conn.close()
        except OSError:
            pass

    def send(self, revision: int, tools: dict, default: str = "allow", raw: bytes | None = None):
        if raw is not None:
            self.lines.put(raw)
            return
        update = {"policy": {"revision": revision, "defaultAction": "allow", "policies": [
            {"name": "mcppolicy/default/test", "spec": {"default": default, "tools": tools}}]}}
        self.lines.put(json.dumps(update).encode() + b"\n")


def test_faults_the_control_planes_stream_bad_lines_and_older_revisions_are_ignored_and_counted(recorder, tollgate_bin, procs, tmp_path):
    url, record = recorder("--json")
    plane = FakePlane(tmp_path)
    token = tmp_path / "token"
    token.write_text("a-token\n")
    plane.refuse = True
    plane.up()
    port, admin = free_port(), free_port()
    px = procs.start("proxy", [str(tollgate_bin), "proxy", "--upstream", url,
                               "--control-plane", f"https://127.0.0.1:{plane.port}", "--control-plane-ca", str(plane.ca),
                               "--token-file", str(token), "--listen", f"127.0.0.1:{port}",
                               "--metrics-listen", f"127.0.0.1:{admin}"], port, stdout=True)
    base, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"

    h = open_session(f"{base}/mcp")

    def verdict(tool: str) -> str:
        a = messages(httpx.post(f"{base}/mcp", headers=h, json=call(1, tool, {"path": "x", "name": "r"})))[0]
        return "allow" if "result" in a else a["error"]["data"]["rule"]

    # The operator refuses at first (503): every call is denied, the proxy is not ready and
    # says why, and it retries with growing waits.
    r = httpx.get(f"{admin}/readyz")
    assert r.status_code == 503 and "control plane: " in r.text, r.text
    assert verdict("read_file") != "allow"
    wait_until("four attempts", lambda: len(plane.connects) >= 4, 15)
    gaps = [b - a for a, b in zip(plane.connects, plane.connects[1:])]
    assert gaps[2] > 1.5 * gaps[0], gaps
    plane.refuse = False
    plane.send(1000, {"read_file": {"rules": []}, "delete_repository": {"rules": [{"name": "never", "action": "deny"}]}})
    wait_until("ready", lambda: httpx.get(f"{admin}/readyz").status_code == 200, 40)
    assert verdict("read_file") == "allow" and verdict("delete_repository") == "never"
    # A line that is not a policy, a policy that does not compile, and an older revision:
    # each ignored and counted, the policy of revision 1000 stays.
    plane.send(0, {}, raw=b'{"policy": "not a policy"}\n')
    plane.send(1001, {"run_query": {"rules": [{"name": "bad", "conditions": [{"path": "args.sql", "op": "regex", "value": "("}]}]}})
    plane.send(999, {"delete_repository": {"rules": []}})
    wait_until("three ignored", lambda: metric(admin, "tollgate_policy_updates_ignored_total") == 3)
    for reason in ("unreadable", "invalid", "stale"):
        assert metric(admin, "tollgate_policy_updates_ignored_total", reason=reason) == 1, reason
    assert verdict("delete_repository") == "never"
    r = httpx.get(f"{admin}/readyz")
    assert r.status_code == 200 and "revision 1000" in r.text and "refused" in r.text, r.text
    # A newer revision applies.
    plane.send(1002, {"read_file": {"rules": [{"name": "closed", "action": "deny"}]}})
    wait_until("revision 1002", lambda: verdict("read_file") == "closed")
    # The operator goes away: the last policy stays in force and readiness says so.
    plane.down()
    plane.send(0, {}, raw=b"\n")  # wake the stream's writer, which sees the listener gone
    wait_until("disconnected", lambda: metric(admin, "tollgate_control_plane_connected") == 0, 15)
    r = httpx.get(f"{admin}/readyz")
    assert r.status_code == 200 and "disconnected" in r.text and "revision 1002 stays in force" in r.text, r.text
    assert verdict("read_file") == "closed" and verdict("delete_repository") == "allow"
    # Another replica with a slower clock answers the reconnect: a new stream may start lower.
    plane.connects.clear()
    plane.up()
    plane.send(500, {"read_file": {"rules": []}})
    wait_until("revision 500 from the new stream", lambda: verdict("read_file") == "allow", 40)
    assert metric(admin, "tollgate_control_plane_connected") == 1
    runs = [json.loads(l)["tool"] for l in record.read_text().splitlines()]
    assert "delete_repository" in runs and runs.count("read_file") == 2 and px.proc.poll() is None


# --- very large policies --------------------------------------------------------------------

# Bounds for the debug build the suite runs (a release build loads them several times faster;
# bench/policy_load.sh prints its figures).
LOAD_SECONDS = 10
LOAD_RSS_MIB = 256


def load(tollgate_bin: Path, recorder_url: str, policy: Path, tmp: Path) -> tuple[float, int, str, str]:
    port, admin = free_port(), free_port()
    log = tmp / f"load-{port}.log"
    t0 = time.monotonic()
    p = subprocess.Popen([str(tollgate_bin), "proxy", "--upstream", recorder_url, "--policy", str(policy),
                          "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{admin}"],
                         stdout=subprocess.DEVNULL, stderr=open(log, "ab"))
    try:
        wait_for_port(admin, p, log, timeout=LOAD_SECONDS * 2)
        wait_until("ready", lambda: httpx.get(f"http://127.0.0.1:{admin}/readyz").status_code == 200, LOAD_SECONDS * 2)
        seconds = time.monotonic() - t0
        return seconds, rss_kib(p.pid) >> 10, f"http://127.0.0.1:{port}", p
    except BaseException:
        p.kill()
        raise


@pytest.mark.parametrize("shape", ["10000 tools", "1000 policies"])
def test_faults_a_very_large_policy_loads_within_its_bounds_and_decides_right(recorder, tollgate_bin, tmp_path, shape):
    url, record = recorder("--json")
    policy = tmp_path / "big.yaml"
    if shape == "10000 tools":
        tools = {f"tool_{i:05}": {"rules": [{"name": f"limit {i}", "rateLimit": "5/minute"}]} for i in range(10_000)}
        tools["delete_repository"] = {"rules": [{"name": "never", "action": "deny"}]}
        tools["read_file"] = {"rules": []}
        policy.write_text(json.dumps({"apiVersion": "tollgate.dev/v1alpha1", "kind": "McpPolicy",
                                      "metadata": {"name": "big"}, "spec": {"default": "deny", "tools": tools}}))
    else:
        docs = [{"apiVersion": "tollgate.dev/v1alpha1", "kind": "McpPolicy", "metadata": {"name": f"p{i:04}"},
                 "spec": {"tools": {f"tool_{i}": {"rules": [{"name": f"cap {i}", "rateLimit": "5/minute"}]},
                                    "read_file": {"rules": []}}}} for i in range(999)]
        docs.append({"apiVersion": "tollgate.dev/v1alpha1", "kind": "McpPolicy", "metadata": {"name": "p0999"},
                     "spec": {"tools": {"delete_repository": {"rules": [{"name": "never", "action": "deny"}]}}}})
        policy.write_text("\n---\n".join(json.dumps(d) for d in docs))
    seconds, rss_mib, px, p = load(tollgate_bin, url, policy, tmp_path)
    try:
        assert seconds < LOAD_SECONDS, f"{shape}: ready after {seconds:.1f}s"
        assert rss_mib < LOAD_RSS_MIB, f"{shape}: {rss_mib} MiB"
        h = open_session(f"{px}/mcp")
        read = messages(httpx.post(f"{px}/mcp", headers=h, json=call(1, "read_file", {"path": "x"})))[0]
        delete = messages(httpx.post(f"{px}/mcp", headers=h, json=call(2, "delete_repository", {"name": "r"})))[0]
        assert "result" in read and delete["error"]["data"]["rule"] == "never", (read, delete)
        assert [json.loads(l)["tool"] for l in record.read_text().splitlines()] == ["read_file"]
    finally:
        p.kill()
        p.wait()
