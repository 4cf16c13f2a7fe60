"""Approvals, standalone: the Python MCP SDK 2.x client calls a tool an `approve` rule applies to
through the real proxy (both protocol eras), and a person decides with `tollgate approvals`
on the proxy's approvals listener. What the agent gets, what reaches the server, and the audit
trail are asserted."""

from __future__ import annotations

import json
import queue
import subprocess
import time
from typing import Any

import anyio
import httpx
import pytest
from conftest import free_port
from mcp.client.client import Client
from mcp.client.sse import sse_client
from mcp.shared.exceptions import MCPError
from rpc import messages
from test_bypass import TRANSPORTS, Channel, envelope, server_flags

MODES = ["legacy", "2026-07-28"]


def approval_policy(timeout: str = "3s", valid_for: str = "1m") -> str:
    return f"""
apiVersion: tollgate.dev/v1alpha1
kind: McpPolicy
metadata: {{ name: approvals, namespace: default }}
spec:
  default: deny
  tools:
    read_file: {{ rules: [] }}
    create_issue:
      rules:
        - name: a person decides
          action: approve
          approval: {{ timeout: {timeout}, validFor: {valid_for}, show: [args.title] }}
"""


class Approver:
    """`tollgate approvals` against one proxy."""

    def __init__(self, tollgate_bin, url: str, token_file):
        self.bin, self.url, self.token_file = tollgate_bin, url, token_file

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run([str(self.bin), "approvals", *args, "--url", self.url, "--token-file", str(self.token_file)],
                             capture_output=True, text=True)
        if check and out.returncode != 0:
            raise AssertionError(f"tollgate approvals {' '.join(args)}: {out.stderr}")
        return out

    def list(self) -> list[dict]:
        return json.loads(self.run("list", "--json").stdout)["items"]

    def pending(self) -> list[dict]:
        return [a for a in self.list() if a["phase"] == "Pending"]


def ran(record) -> list[dict]:
    """What the server really ran (recording_server.py's record)."""
    return [json.loads(line) for line in record.read_text().splitlines() if line.strip()]


@pytest.fixture
def approving(recorder, proxy, tollgate_bin, tmp_path):
    """A recording MCP server behind a proxy that holds `create_issue` for a person: (its
    record, the proxy, an approver)."""

    def start(*flags: str, server: tuple = (), **policy) -> tuple[Any, Any, Approver]:
        url, record = recorder(*server)
        port = free_port()
        token = tmp_path / "approvals-token"
        px = proxy(url, approval_policy(**policy), "--approvals-token-file", str(token),
                   "--approvals-listen", f"127.0.0.1:{port}", *flags)
        return record, px, Approver(tollgate_bin, f"http://127.0.0.1:{port}", token)

    return start


async def call(url: str, mode: str, name: str, args: dict, progress: list | None = None) -> tuple:
    # The legacy HTTP+SSE transport: its stream at /sse, its POSTs taken with 202.
    server = sse_client(url) if url.endswith("/sse") else url
    async with Client(server, mode=mode) as c:
        async def on_progress(p: float, total: float | None, message: str | None) -> None:
            if progress is not None:
                progress.append((p, total, message))

        try:
            r = await c.call_tool(name, args, progress_callback=on_progress if progress is not None else None)
            return ("ok", r.content[0].text)
        except MCPError as e:
            return (e.error.code, e.error.message, e.error.data)


def first_pending(approver: Approver) -> dict:
    for _ in range(200):
        pending = approver.pending()
        if pending:
            return pending[0]
        time.sleep(0.05)
    raise AssertionError("no approval became pending")


def held_call(url: str, mode: str, args: dict, decide, progress: list | None = None) -> tuple:
    """Makes the call, and while it is held runs `decide()` in a thread; returns the answer."""
    result: list = []

    async def main():
        async with anyio.create_task_group() as tg:
            async def agent():
                result.append(await call(url, mode, "create_issue", args, progress))
            tg.start_soon(agent)
            await anyio.to_thread.run_sync(decide)

    anyio.run(main)
    return result[0]


@pytest.mark.parametrize("mode", MODES)
def test_approvals_a_call_approved_while_held_reaches_the_server_and_its_result_the_agent(approving, mode):
    record, px, approver = approving(timeout="20s")
    decided: dict = {}

    def decide():
        a = first_pending(approver)
        decided.update(a)
        assert a["tool"] == "create_issue" and a["arguments"] == {"args.title": "launch"}, a
        out = approver.run("approve", a["name"], "--reason", "release day", "--by", "alice")
        assert out.stdout.strip() == f"approval {a['name']} approved"

    assert held_call(f"{px.url}/mcp", mode, {"title": "launch"}, decide) == ("ok", "created launch")
    assert [(r["tool"], r["args"]) for r in ran(record)] == [("create_issue", {"title": "launch"})]
    [a] = approver.list()
    assert (a["name"], a["phase"], a["decidedBy"], a["reason"]) == (decided["name"], "Used", "alice", "release day")
    steps = [(r["kind"], r["decision"]) for r in px.audit() if r.get("approval") == a["name"]]
    assert steps == [("approval", "requested"), ("approval", "held"), ("approval", "approved"), ("approval", "used"),
                     ("decision", "allow")], steps
    approved = next(r for r in px.audit() if r.get("approval") == a["name"] and r["decision"] == "approved")
    assert (approved["decidedBy"], approved["reason"]) == ("alice", "release day")


@pytest.mark.parametrize("mode", MODES)
def test_approvals_a_held_call_hears_progress_while_it_waits(approving, mode):
    _, px, approver = approving(timeout="20s")
    progress: list = []

    def decide():
        a = first_pending(approver)
        time.sleep(5.5)  # the proxy tells a waiting client every 5 s, and at once
        approver.run("approve", a["name"])

    assert held_call(f"{px.url}/mcp", mode, {"title": "p"}, decide, progress) == ("ok", "created p")
    assert len(progress) >= 2, progress
    assert [p for p, _, _ in progress] == sorted(p for p, _, _ in progress), "progress only grows"
    assert all(total == 20 and "Waiting for a person to decide approval create-issue-" in msg for _, total, msg in progress), progress


def test_approvals_on_the_legacy_sse_transport_the_post_is_taken_at_once_and_progress_and_result_come_on_the_stream(approving):
    # The SDK's SSE client gives a POST 5 s: a call held longer must not hold the POST.
    record, px, approver = approving(server=("--transport", "sse"), timeout="30s")
    progress: list = []

    def decide():
        a = first_pending(approver)
        time.sleep(6)
        approver.run("approve", a["name"])

    assert held_call(f"{px.url}/sse", "legacy", {"title": "sse"}, decide, progress) == ("ok", "created sse")
    assert len(progress) >= 2, progress
    assert [r["args"] for r in ran(record)] == [{"title": "sse"}]


@pytest.mark.parametrize("mode", MODES)
def test_approvals_a_denied_call_gets_the_persons_reason_and_never_reaches_the_server(approving, mode):
    record, px, approver = approving(timeout="20s")

    def decide():
        a = first_pending(approver)
        refused = approver.run("deny", a["name"], "--reason", "", check=False)
        assert refused.returncode != 0 and "a denial needs a reason" in refused.stderr
        approver.run("deny", a["name"], "--reason", "not during the freeze", "--by", "bob")

    code, message, data = held_call(f"{px.url}/mcp", mode, {"title": "x"}, decide)
    assert code == -32001 and "bob denied approval create-issue-" in message and "not during the freeze" in message, message
    assert data["rule"] == "a person decides"
    assert ran(record) == [], "the server never saw it"


@pytest.mark.parametrize("mode", MODES)
def test_approvals_undecided_in_time_the_agent_is_told_to_retry_and_the_approval_admits_that_call_once(approving, mode):
    record, px, approver = approving(timeout="1s")
    url = f"{px.url}/mcp"

    def agent(args: dict) -> tuple:
        return anyio.run(call, url, mode, "create_issue", args)

    code, message, data = agent({"title": "retry me"})
    assert code == -32003, message
    name = data["approval"]
    assert "Retry the same call, with the same arguments, once it is approved" in message
    assert data["phase"] == "Pending" and data["expires"].endswith("Z")
    # A retry before anyone decides waits on the same approval: no second one.
    assert agent({"title": "retry me"})[2]["approval"] == name
    assert len(approver.list()) == 1
    approver.run("approve", name)

    other = agent({"title": "something else"})
    assert other[0] == -32003 and other[2]["approval"] != name, "other arguments are not admitted"
    assert agent({"title": "retry me"}) == ("ok", "created retry me"), "the approved call, once"
    again = agent({"title": "retry me"})
    assert again[0] == -32003 and again[2]["approval"] not in (name, other[2]["approval"]), "a second time needs a new approval"
    assert [r["args"] for r in ran(record)] == [{"title": "retry me"}], "the server ran the approved call alone"
    assert [a["phase"] for a in approver.list() if a["name"] == name] == ["Used"]


def test_approvals_an_approval_nobody_decided_in_its_lifetime_expires_and_admits_nothing(approving):
    record, px, approver = approving(timeout="500ms", valid_for="2s")
    url = f"{px.url}/mcp"
    _, _, data = anyio.run(call, url, "legacy", "create_issue", {"title": "late"})
    name = data["approval"]
    deadline = time.monotonic() + 10
    while [a["phase"] for a in approver.list() if a["name"] == name] != ["Expired"]:
        assert time.monotonic() < deadline, approver.list()
        time.sleep(0.1)
    late = approver.run("approve", name, check=False)
    assert late.returncode != 0 and f"approval {name} is Expired" in late.stderr
    again = anyio.run(call, url, "legacy", "create_issue", {"title": "late"})
    assert again[0] == -32003 and again[2]["approval"] != name
    assert ("approval", "expired") in [(r["kind"], r["decision"]) for r in px.audit() if r.get("approval") == name]
    assert ran(record) == []


def test_approvals_the_listener_needs_the_token_and_without_approvals_the_rule_denies(approving, proxy, recorder):
    _, px, approver = approving()
    url = approver.url
    assert httpx.get(f"{url}/v1/approvals").status_code == 401
    assert httpx.get(f"{url}/v1/approvals", headers={"authorization": "Bearer wrong"}).status_code == 401
    token = approver.token_file.read_text().strip()
    assert len(token) == 64 and oct(approver.token_file.stat().st_mode & 0o777) == "0o600"
    ok = httpx.get(f"{url}/v1/approvals", headers={"authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and ok.json() == {"items": []}
    missing = approver.run("approve", "no-such-approval", check=False)
    assert missing.returncode != 0 and 'no approval is named "no-such-approval"' in missing.stderr

    url, record = recorder()
    plain = proxy(url, approval_policy())
    code, message, _ = anyio.run(call, f"{plain.url}/mcp", "legacy", "create_issue", {"title": "x"})
    assert code == -32001 and "approvals are not enabled on this proxy" in message
    assert ran(record) == []


def test_approvals_the_webhook_hears_each_step_in_order(approving, json_sink):
    url, got = json_sink
    _, px, approver = approving("--approval-webhook", url, timeout="20s")

    def decide():
        approver.run("approve", first_pending(approver)["name"], "--by", "carol")

    assert held_call(f"{px.url}/mcp", "legacy", {"title": "hooked"}, decide)[0] == "ok"
    deadline = time.monotonic() + 10
    while len(got) < 3:
        assert time.monotonic() < deadline, got
        time.sleep(0.05)
    assert [e["event"] for e in got] == ["pending", "approved", "used"]
    assert got[1]["approval"]["decidedBy"] == "carol" and got[0]["approval"]["arguments"] == {"args.title": "hooked"}


def answer_to(ch: Channel, resp: httpx.Response, id: int) -> dict:
    """The answer to request `id`: in the response, or on the session's stream (legacy)."""
    if ch.transport != "legacy":
        return next(m for m in messages(resp) if m.get("id") == id)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            m = ch.events.get(timeout=0.2)
        except queue.Empty:
            continue
        if m.get("id") == id:
            return m
    raise AssertionError(f"no answer to {id} on the session's stream")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_approvals_on_every_transport_a_held_call_reaches_the_server_only_once_approved_and_once(recorder, proxy, tollgate_bin, tmp_path, transport):
    url, record = recorder(*server_flags(transport))
    port, token = free_port(), tmp_path / "token"
    px = proxy(url, approval_policy(timeout="1s"), "--approvals-token-file", str(token), "--approvals-listen", f"127.0.0.1:{port}")
    approver = Approver(tollgate_bin, f"http://127.0.0.1:{port}", token)
    ch = Channel(px.url, transport, record, through_proxy=True).open()
    try:
        call = envelope(7, "create_issue", '{"title": "t"}').encode()
        held = answer_to(ch, ch.post(call), 7)
        assert held["error"]["code"] == -32003, held
        name = held["error"]["data"]["approval"]
        ch.sync()
        assert [r["tool"] for r in ran(record) if r["tool"] != "read_file"] == [], "held, it never reached the server"
        approver.run("approve", name)
        # The same call, its keys in another order and its id another: admitted once.
        again = envelope(8, "create_issue", '{"title":"t"}').encode()
        done = answer_to(ch, ch.post(again), 8)
        assert "result" in done, done
        third = answer_to(ch, ch.post(envelope(9, "create_issue", '{"title": "t"}').encode()), 9)
        assert third["error"]["code"] == -32003 and third["error"]["data"]["approval"] != name
        ch.sync()
        assert [r["args"] for r in ran(record) if r["tool"] == "create_issue"] == [{"title": "t"}]
    finally:
        ch.close()


def test_approvals_held_calls_are_bounded_and_past_the_bound_a_call_is_denied_saying_so(approving):
    record, px, approver = approving("--max-held-calls", "1", timeout="20s")
    url = f"{px.url}/mcp"

    def decide():
        a = first_pending(approver)
        code, message, _ = anyio.run(call, url, "legacy", "create_issue", {"title": "second"})
        assert code == -32001 and "calls wait for one already; retry later" in message, message
        approver.run("approve", a["name"])

    assert held_call(url, "legacy", {"title": "first"}, decide) == ("ok", "created first")

    def approve_next():
        approver.run("approve", next(a for a in approver.pending() if a["arguments"] == {"args.title": "third"})["name"])

    def when_pending():
        for _ in range(200):
            if any(a["arguments"] == {"args.title": "third"} for a in approver.pending()):
                return approve_next()
            time.sleep(0.05)
        raise AssertionError("the third call was not held")

    assert held_call(url, "legacy", {"title": "third"}, when_pending) == ("ok", "created third"), "settled, its place is free again"
    assert [r["args"] for r in ran(record)] == [{"title": "first"}, {"title": "third"}]


def test_approvals_a_token_file_other_users_may_read_stops_the_proxy_saying_so(recorder, tollgate_bin, tmp_path):
    url, _ = recorder()
    token = tmp_path / "shared-token"
    token.write_text("0123456789abcdef0123456789abcdef\n")
    token.chmod(0o644)
    policy = tmp_path / "policy.yaml"
    policy.write_text(approval_policy())
    out = subprocess.run([str(tollgate_bin), "proxy", "--upstream", url, "--policy", str(policy),
                          "--listen", f"127.0.0.1:{free_port()}", "--metrics-listen", f"127.0.0.1:{free_port()}",
                          "--approvals-token-file", str(token), "--approvals-listen", f"127.0.0.1:{free_port()}"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert f"{token} is open to other users (mode 0644)" in out.stderr and "chmod 600" in out.stderr, out.stderr


CAPPED_POLICY = """
apiVersion: tollgate.dev/v1alpha1
kind: McpPolicy
metadata: { name: capped, namespace: default }
spec:
  default: deny
  tools:
    create_issue:
      rules:
        - name: twice at most
          conditions: [ { path: state.create_issue.uses, op: lt, value: 2 } ]
        - name: counted
          limit: { counter: uses, window: hour }
        - name: a person decides
          action: approve
          approval: { timeout: 20s }
"""


@pytest.mark.parametrize("store", ["pod", "redis"])
def test_approvals_an_approved_call_is_decided_again_as_it_goes_on_so_a_state_cap_holds(recorder, proxy, tollgate_bin, tmp_path, procs, store):
    from concurrent.futures import ThreadPoolExecutor

    from test_counters_redis import REDIS_SERVER, away_from_the_hour

    away_from_the_hour()
    flags = []
    if store == "redis":
        port = free_port()
        procs.start("redis", [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], port)
        flags = ["--counters", f"redis://127.0.0.1:{port}"]
    url, record = recorder()
    token, api = tmp_path / "approvals-token", free_port()
    px = proxy(url, CAPPED_POLICY, "--approvals-token-file", str(token), "--approvals-listen", f"127.0.0.1:{api}", *flags)
    approver = Approver(tollgate_bin, f"http://127.0.0.1:{api}", token)
    # Four different calls, each held while `uses` is 0: judged at hold time, all would pass.
    with ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(lambda i=i: anyio.run(call, f"{px.url}/mcp", "legacy", "create_issue", {"title": f"t{i}"}))
                   for i in range(4)]
        deadline = time.monotonic() + 20
        while len(approver.pending()) < 4:
            assert time.monotonic() < deadline, approver.list()
            time.sleep(0.05)
        for a in approver.pending():
            approver.run("approve", a["name"])
        results = [f.result(timeout=30) for f in answers]
    ok = [r for r in results if r[0] == "ok"]
    denied = [r for r in results if r[0] != "ok"]
    assert len(ok) == 2, results
    assert all(r[2]["rule"] == "twice at most" for r in denied), denied
    assert len([r for r in ran(record) if r["tool"] == "create_issue"]) == 2, "the server ran two, the cap"
