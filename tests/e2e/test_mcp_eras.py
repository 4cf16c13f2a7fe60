"""e2e: MCP 2026-07-28 read as it defines every message and header, beside the earlier era:
methods placed or refused, mirrored headers held to the body, and multi-round-trip calls
(`input_required`, then the client's repeat with its input) decided and counted once. The Python
SDK 2.x is both ends: its server asks for input with `Resolve(Elicit)`, its client answers and
repeats."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

import anyio
import httpx
import pytest
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError
from conftest import NODE, TESTS, free_port, report
from mcp_types import ElicitResult


def runs(record: Path) -> list[dict]:
    """The tools the server ran (a resolver's question is recorded as `asked`)."""
    if not record.exists():
        return []
    return [r for r in map(json.loads, record.read_text().splitlines()) if r["tool"] != "asked"]


MODERN = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}}}

POLICY = """
apiVersion: tollgate.dev/v1alpha1
kind: McpPolicy
metadata: { name: eras, namespace: default }
spec:
  default: allow
  tools:
    deploy:
      rules:
        - name: two deploys an hour
          rateLimit: 2/hour
          onDeny: Two deploys an hour
    delete_repository:
      rules:
        - { name: never, action: deny, onDeny: Repository deletion is not permitted }
"""


def headers(method: str | None, name: str | None = None, version: str = MODERN) -> dict:
    h = {"content-type": "application/json", "accept": "application/json, text/event-stream",
         "mcp-protocol-version": version}
    if method:
        h["mcp-method"] = method
    if name is not None:
        h["mcp-name"] = name
    return h


def call(id, tool: str, args: dict, **extra) -> dict:
    return {"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": tool, "arguments": args, "_meta": META, **extra}}


def post(px, body: dict, h: dict) -> tuple[int, dict]:
    r = httpx.post(f"{px.url}/mcp", headers=h, content=json.dumps(body), timeout=10)
    text = r.text
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        text = [l[5:].strip() for l in text.splitlines() if l.startswith("data:")][-1]
    return r.status_code, json.loads(text) if text else {}


def confirm(ok: bool = True):
    async def answer(context, params):
        return ElicitResult(action="accept", content={"ok": ok})
    return answer


@pytest.fixture
def guarded(recorder, proxy):
    def start(*server_flags: str, policy: str = POLICY):
        url, record = recorder("--stateless", *server_flags)
        return proxy(url, policy), record
    return start


@pytest.mark.parametrize("server_flags", [("--json",), ()], ids=["json", "sse"])
def test_a_call_the_server_asks_input_for_is_counted_once_with_its_repeat(guarded, server_flags):
    px, record = guarded(*server_flags)

    async def run():
        seen = []
        async with Client(f"{px.url}/mcp", mode=MODERN, elicitation_callback=confirm()) as c:
            for env in ["prod", "staging", "dev"]:
                try:
                    r = await c.call_tool("deploy", {"env": env})
                    seen.append(r.content[0].text)
                except MCPError as e:
                    seen.append(e.error.message)
        return seen

    seen = anyio.run(run)
    # Each deploy is two requests (input_required, then the repeat with the answer): the limit of
    # two holds for two deploys, not for one deploy's two rounds.
    assert seen == ["deployed to prod", "deployed to staging", "Denied by policy: Two deploys an hour"], seen
    assert [r["args"]["env"] for r in runs(record) if r["tool"] == "deploy"] == ["prod", "staging"]
    decisions = [a for a in px.audit() if a.get("tool") == "deploy"]
    continued = [a for a in decisions if "continues the call" in (a.get("reason") or "")]
    assert len(continued) == 2, decisions
    assert px.metric("tollgate_decisions_total", tool="deploy", outcome="deny") == 1


def test_a_repeat_continues_only_the_call_it_repeats_and_only_once(guarded):
    px, record = guarded("--json", policy=POLICY.replace("2/hour", "1/hour"))
    h = headers("tools/call", "deploy")
    status, first = post(px, call(1, "deploy", {"env": "prod"}), h)
    assert status == 200 and first["result"]["resultType"] == "input_required", first
    state = first["result"]["requestState"]
    answer = {key: {"action": "accept", "content": {"ok": True}} for key in first["result"]["inputRequests"]}

    def repeat(id, args, state):
        return post(px, call(id, "deploy", args, inputResponses=answer, requestState=state), h)[1]

    # The one deploy an hour is spent by the first round. A repeat with other arguments, or with
    # state the server never gave, is a new call, decided afresh: denied.
    for id, args, s in [(2, {"env": "dev"}, state), (3, {"env": "prod"}, state + "x"), (4, {"env": "prod"}, None)]:
        got = repeat(id, args, s)
        assert got["error"]["data"]["rule"] == "two deploys an hour", (args, s, got)
    # The repeat of the call it answers goes on, uncounted, and the server runs it.
    got = repeat(5, {"env": "prod"}, state)
    assert got["result"]["content"][0]["text"] == "deployed to prod", got
    # Used once: the same repeat again is decided afresh.
    got = repeat(6, {"env": "prod"}, state)
    assert got["error"]["data"]["rule"] == "two deploys an hour", got
    assert [r["args"] for r in runs(record) if r["tool"] == "deploy"] == [{"env": "prod", "ok": True}]


def test_a_resource_read_the_server_asks_input_for_is_counted_once_with_its_repeat(guarded):
    policy = POLICY + """    "resource:secret://*":
      rules:
        - { name: one read an hour, rateLimit: 1/hour, onDeny: One read an hour }
"""
    px, record = guarded("--json", policy=policy)

    def read(id, **extra):
        body = {"jsonrpc": "2.0", "id": id, "method": "resources/read", "params": {"uri": "secret://alpha", "_meta": META, **extra}}
        return post(px, body, headers("resources/read", "secret://alpha"))[1]

    first = read(1)
    assert first["result"]["resultType"] == "input_required", first
    answer = {"confirm": {"action": "accept", "content": {"ok": True}}}
    # The repeat carries other _meta, the state and the input: the same read, continued.
    got = read(2, inputResponses=answer, requestState=first["result"]["requestState"])
    assert got["result"]["contents"][0]["text"] == "the secret alpha", got
    # A new read is a new call: the hour's one is spent.
    assert read(3)["error"]["data"]["rule"] == "one read an hour"
    assert [r["args"] for r in runs(record)] == [{"name": "alpha"}]


def test_a_repeat_after_the_policy_changed_is_decided_by_the_new_policy(guarded):
    px, record = guarded("--json")
    h = headers("tools/call", "deploy")
    _, first = post(px, call(1, "deploy", {"env": "prod"}), h)
    state = first["result"]["requestState"]
    px.policy_path.write_text(POLICY.replace("rateLimit: 2/hour", "action: deny").replace("Two deploys an hour", "No more deploys"))
    deadline = time.monotonic() + 5
    while px.metric("tollgate_policy_revision") < 2:
        assert time.monotonic() < deadline, px.proc.log.read_text()
        time.sleep(0.05)
    answer = {key: {"action": "accept", "content": {"ok": True}} for key in first["result"]["inputRequests"]}
    _, got = post(px, call(2, "deploy", {"env": "prod"}, inputResponses=answer, requestState=state), h)
    assert got["error"]["data"]["reason"] == "No more deploys", got
    assert not [r for r in runs(record) if r["tool"] == "deploy"]


def test_methods_each_era_does_not_define_are_refused_and_never_forwarded(guarded):
    px, record = guarded("--json")
    # A method nobody defines, and one 2026-07-28 removed: 404 and -32601, as a server answers a
    # method it does not have.
    for method in ["tools/execute", "ping", "initialize", "resources/subscribe"]:
        status, got = post(px, {"jsonrpc": "2.0", "id": 1, "method": method, "params": {"_meta": META}}, headers(method))
        assert status == 404 and got["error"]["code"] == -32601, (method, got)
        assert method in got["error"]["message"], got
    # A client's response: 2026-07-28 clients send none.
    status, got = post(px, {"jsonrpc": "2.0", "id": 9, "result": {}}, headers(None))
    assert status == 400 and got["error"]["code"] == -32601, got
    # A batch: one message per request.
    status, got = post(px, [call(1, "read_file", {"path": "a"})], headers(None))
    assert status == 400 and "not a batch" in got["error"]["message"], got
    # The earlier era answers an unknown method as its servers do: a JSON-RPC error.
    status, got = post(px, {"jsonrpc": "2.0", "id": 1, "method": "tools/execute"}, headers(None, version="2025-06-18"))
    assert status == 200 and got["error"]["code"] == -32601, got
    # 2026-07-28's methods are not the earlier era's.
    status, got = post(px, {"jsonrpc": "2.0", "id": 1, "method": "server/discover"}, headers(None, version="2025-11-25"))
    assert got["error"]["code"] == -32601 and "not a method of MCP 2024-11-05 to 2025-11-25" in got["error"]["message"], got
    # A version nobody knows: -32022 with the versions Tollgate reads.
    status, got = post(px, call(1, "read_file", {"path": "a"}), headers("tools/call", "read_file", version="2027-03-30"))
    assert status == 400 and got["error"]["code"] == -32022, got
    assert got["error"]["data"]["requested"] == "2027-03-30" and MODERN in got["error"]["data"]["supported"], got
    # And server/discover, which 2026-07-28 defines, goes on.
    status, got = post(px, {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": META}}, headers("server/discover"))
    assert status == 200 and MODERN in got["result"]["supportedVersions"], got
    assert not runs(record)


def test_mirrored_headers_are_required_decoded_and_held_to_the_body(guarded):
    px, record = guarded("--json")
    body = call(1, "read_file", {"path": "/etc/motd"})
    for h, why in [
        (headers(None, "read_file"), "must name its method in the Mcp-Method header"),
        (headers("tools/call"), "must name its name in the Mcp-Name header"),
        (headers("tools/call", "delete_repository"), "Mcp-Name header says \"delete_repository\""),
        (headers("tools/call", "=?base64?" + base64.b64encode(b"delete_repository").decode() + "?="), "says \"delete_repository\""),
        (headers("tools/call", "=?base64?***?="), "not valid =?base64?"),
        (headers("tools/call", "read_file", version="2025-11-25"), "MCP-Protocol-Version header says \"2025-11-25\""),
    ]:
        status, got = post(px, body, h)
        assert status == 400 and got["error"]["code"] == -32020 and why in got["error"]["message"], (h, got)
    assert not runs(record)
    # A version in _meta that is not a string, or a _meta that is not an object, could be read
    # some other way: refused, whatever else the params hold.
    for meta in [{"io.modelcontextprotocol/protocolVersion": [MODERN]}, "2026-07-28"]:
        odd = {**body, "params": {**body["params"], "_meta": meta, "uri": 1}}
        status, got = post(px, odd, headers("tools/call", "read_file", version="2025-11-25"))
        assert status == 400 and got["error"]["code"] == -32020, (meta, got)
    # A body that names its version without the header's agreement is refused too.
    status, got = post(px, call(1, "read_file", {"path": "x"}), {**headers(None), "mcp-protocol-version": "2025-06-18"})
    assert status == 400 and got["error"]["code"] == -32020, got
    # Encoded as MCP says a name outside the safe set is: decoded, matched, decided.
    name = "=?base64?" + base64.b64encode(b"read_file").decode() + "?="
    status, got = post(px, body, headers("tools/call", name))
    assert status == 200 and got["result"]["content"][0]["text"] == "contents of /etc/motd", got
    denied = call(2, "delete_repository", {"name": "prod"})
    status, got = post(px, denied, headers("tools/call", "=?base64?" + base64.b64encode(b"delete_repository").decode() + "?="))
    assert got["error"]["data"]["rule"] == "never", got
    assert [r["tool"] for r in runs(record)] == ["read_file"]


APPROVED_DEPLOYS = """
apiVersion: tollgate.dev/v1alpha1
kind: McpPolicy
metadata: { name: eras, namespace: default }
spec:
  default: allow
  tools:
    deploy:
      rules:
        - name: a person decides
          action: approve
          approval: { timeout: 20s, validFor: 1m }
"""


def test_an_approved_call_the_server_asks_input_for_needs_no_second_approval(recorder, proxy, tollgate_bin, tmp_path):
    from test_approvals import Approver, first_pending

    url, record = recorder("--stateless")
    port = free_port()
    token = tmp_path / "approvals-token"
    px = proxy(url, APPROVED_DEPLOYS, "--approvals-token-file", str(token), "--approvals-listen", f"127.0.0.1:{port}")
    approver = Approver(tollgate_bin, f"http://127.0.0.1:{port}", token)
    answers: list = []

    async def main():
        async with anyio.create_task_group() as tg:
            async def agent():
                async with Client(f"{px.url}/mcp", mode=MODERN, elicitation_callback=confirm()) as c:
                    r = await c.call_tool("deploy", {"env": "prod"})
                    answers.append(r.content[0].text)
            tg.start_soon(agent)
            await anyio.to_thread.run_sync(lambda: approver.run("approve", first_pending(approver)["name"]))

    anyio.run(main)
    # Held, approved, asked for input by the server, repeated with the answer: one approval for
    # one deploy, not a second hold for the repeat.
    assert answers == ["deployed to prod"]
    [a] = approver.list()
    assert a["phase"] == "Used", a
    assert [r["args"]["env"] for r in runs(record) if r["tool"] == "deploy"] == ["prod"]
    audit = [(r["decision"], r.get("reason") or "") for r in px.audit() if r.get("tool") == "deploy"]
    assert any("continues the call" in why for _, why in audit), audit


def test_a_client_that_opens_urls_is_sent_to_the_approval_and_its_repeat_goes_on_once_approved(recorder, proxy, tollgate_bin, tmp_path):
    from test_approvals import Approver

    url, record = recorder("--stateless")
    port = free_port()
    token = tmp_path / "approvals-token"
    px = proxy(url, APPROVED_DEPLOYS.replace("20s", "5s"), "--approvals-token-file", str(token),
               "--approvals-listen", f"127.0.0.1:{port}", "--approval-url", "https://approvals.example.com/a/{name}")
    approver = Approver(tollgate_bin, f"http://127.0.0.1:{port}", token)
    asked: list = []

    async def person(context, params):
        page = getattr(params, "url", None)
        asked.append(("url" if page else "form", page))
        if page:
            # The agent's user opens the page; a person approves there (here: the CLI).
            name = page.rsplit("/", 1)[1]
            await anyio.to_thread.run_sync(lambda: approver.run("approve", name, "--by", "alice"))
            return ElicitResult(action="accept")
        return ElicitResult(action="accept", content={"ok": True})

    async def run():
        async with Client(f"{px.url}/mcp", mode=MODERN, elicitation_callback=person) as c:
            r = await c.call_tool("deploy", {"env": "prod"})
            return r.content[0].text

    t0 = time.monotonic()
    assert anyio.run(run) == "deployed to prod"
    # Sent to the page at once (not after the 5 s hold), then the server's own question.
    assert time.monotonic() - t0 < 4
    [a] = approver.list()
    assert asked == [("url", f"https://approvals.example.com/a/{a['name']}"), ("form", None)], asked
    assert (a["phase"], a["decidedBy"]) == ("Used", "alice"), a
    # The server never saw Tollgate's state, and ran the deploy once.
    assert [r["args"] for r in runs(record) if r["tool"] == "deploy"] == [{"env": "prod", "ok": True}]
    # One held call, approved: sending the client to the page is not a call left undecided.
    assert px.metric("tollgate_approvals_total", outcome="approved") == 1
    assert px.metric("tollgate_approvals_total", outcome="undecided") == 0
    assert px.metric("tollgate_approvals_held") == 0


def test_a_client_that_does_not_open_urls_waits_as_before(recorder, proxy, tollgate_bin, tmp_path):
    url, record = recorder("--stateless", "--json")
    port = free_port()
    token = tmp_path / "approvals-token"
    px = proxy(url, APPROVED_DEPLOYS.replace("20s", "1s"), "--approvals-token-file", str(token),
               "--approvals-listen", f"127.0.0.1:{port}", "--approval-url", "https://approvals.example.com/a/{name}")
    # Form elicitation only: no page to send anyone to, so the hold ends in -32003 as it always has.
    meta = {**META, "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}}}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "deploy", "arguments": {"env": "prod"}, "_meta": meta}}
    status, got = post(px, body, headers("tools/call", "deploy"))
    assert got["error"]["code"] == -32003, got
    # A made-up repeat of Tollgate's state admits nothing: the approval is still pending.
    body["id"] = 2
    body["params"].update(requestState="tollgate.dev/approval/" + got["error"]["data"]["approval"], inputResponses={})
    status, got = post(px, body, headers("tools/call", "deploy"))
    assert got["error"]["code"] == -32003, got
    assert not runs(record)


TS_PEER = Path(__file__).with_name("ts_peer.mjs")
TS_SDK = json.loads((TESTS / "node_modules/@modelcontextprotocol/server/package.json").read_text())["version"]
PY_SDK = __import__("importlib.metadata").metadata.version("mcp")


@pytest.fixture
def ts_server(procs, tmp_path):
    """The TypeScript SDK v2's server (2026-07-28, and stateless 2025 serving): (URL, record)."""
    def start() -> tuple[str, Path]:
        port = free_port()
        record = tmp_path / f"ts-runs-{port}.jsonl"
        procs.start(f"ts-server-{port}", [str(NODE), str(TS_PEER), "server", str(port), str(record)], port)
        return f"http://127.0.0.1:{port}", record
    return start


def ts_client(url: str, calls: list, era: str = "auto") -> dict:
    out = subprocess.run([str(NODE), str(TS_PEER), "client", url, json.dumps(calls), era],
                         capture_output=True, text=True, timeout=60, cwd=TESTS)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


DEPLOYS = [["read_file", {"path": "/etc/motd"}], ["delete_repository", {"name": "prod"}],
           ["deploy", {"env": "prod"}], ["deploy", {"env": "staging"}], ["deploy", {"env": "dev"}]]


@pytest.mark.parametrize("server", ["typescript", "python"])
def test_the_typescript_sdk_v2_client_speaks_2026_07_28_through_the_proxy(server, ts_server, recorder, proxy):
    url, record = ts_server() if server == "typescript" else recorder("--stateless")
    px = proxy(url, POLICY)
    seen = ts_client(f"{px.url}/mcp", DEPLOYS)
    assert seen["version"] == MODERN, seen
    assert seen["calls"][0] == ["ok", "contents of /etc/motd"]
    assert seen["calls"][1][0] == "denied" and "Repository deletion is not permitted" in seen["calls"][1][1], seen
    # Each deploy asks for a confirmation (two requests): two deploys an hour still means two.
    assert [c[0] for c in seen["calls"][2:]] == ["ok", "ok", "denied"], seen
    assert [r["args"]["env"] for r in runs(record) if r["tool"] == "deploy"] == ["prod", "staging"]
    assert not [r for r in runs(record) if r["tool"] == "delete_repository"]


def test_the_python_sdk_client_through_the_proxy_to_the_typescript_sdk_server(ts_server, proxy):
    url, record = ts_server()
    px = proxy(url, POLICY)

    async def run():
        seen = []
        async with Client(f"{px.url}/mcp", mode=MODERN, elicitation_callback=confirm()) as c:
            for env in ["prod", "staging", "dev"]:
                try:
                    seen.append((await c.call_tool("deploy", {"env": env})).content[0].text)
                except MCPError as e:
                    seen.append(e.error.message)
        return seen

    assert anyio.run(run) == ["deployed to prod", "deployed to staging", "Denied by policy: Two deploys an hour"]
    assert [r["args"]["env"] for r in runs(record) if r["tool"] == "deploy"] == ["prod", "staging"]
    report("mcp eras", f"2026-07-28 through the proxy: Python SDK {PY_SDK} and TypeScript SDK {TS_SDK}, each as client and server")


def test_the_typescript_sdk_in_the_2025_era_is_decided_as_before(ts_server, proxy):
    url, record = ts_server()
    px = proxy(url, POLICY)
    seen = ts_client(f"{px.url}/mcp", DEPLOYS[:2], era="legacy")
    assert seen["version"] != MODERN and seen["calls"][0] == ["ok", "contents of /etc/motd"], seen
    assert seen["calls"][1][0] == "denied", seen
    assert [r["tool"] for r in runs(record)] == ["read_file"]


def test_a_2025_client_that_opens_urls_is_sent_to_the_approval_mid_call(recorder, proxy, tollgate_bin, tmp_path):
    from test_approvals import Approver

    url, record = recorder()
    port = free_port()
    token = tmp_path / "approvals-token"
    px = proxy(url, APPROVED_DEPLOYS, "--approvals-token-file", str(token),
               "--approvals-listen", f"127.0.0.1:{port}", "--approval-url", "https://approvals.example.com/a/{name}")
    approver = Approver(tollgate_bin, f"http://127.0.0.1:{port}", token)
    asked: list = []

    async def person(context, params):
        page = getattr(params, "url", None)
        asked.append(("url", page) if page else ("form", None))
        if page:
            name = page.rsplit("/", 1)[1]
            await anyio.to_thread.run_sync(lambda: approver.run("approve", name, "--by", "alice"))
            return ElicitResult(action="accept")
        return ElicitResult(action="accept", content={"ok": True})

    async def run():
        async with Client(f"{px.url}/mcp", mode="legacy", elicitation_callback=person) as c:
            return (await c.call_tool("deploy", {"env": "prod"})).content[0].text

    # Held: the client hears elicitation/create (URL mode) on the call's stream, its person
    # approves, and the call goes on (the server then asks its own question, mid-call).
    assert anyio.run(run) == "deployed to prod"
    [a] = approver.list()
    assert asked == [("url", f"https://approvals.example.com/a/{a['name']}"), ("form", None)], asked
    assert (a["phase"], a["decidedBy"]) == ("Used", "alice"), a
    assert [r["args"] for r in runs(record) if r["tool"] == "deploy"] == [{"env": "prod", "ok": True}]
    # The client's answer to Tollgate's question never reached the server.
    assert "tollgate.dev/approval" not in px.proc.log.read_text() + (record.parent / f"recorder-{url.rsplit(':', 1)[1]}.log").read_text()


TASK_POLICY = """
apiVersion: tollgate.dev/v1alpha1
kind: McpPolicy
metadata: { name: tasks, namespace: default }
spec:
  default: allow
  tools:
    simulate-research-query:
      rules:
        - { name: one study an hour, rateLimit: 1/hour, onDeny: One study an hour }
"""


def test_a_call_made_as_a_task_is_decided_and_counted_once_when_the_task_is_made(everything_server, proxy):
    # server-everything's simulate-research-query runs as a 2025-11-25 task: the call answers at
    # once with a task, the client polls tasks/get and fetches tasks/result.
    from rpc import messages

    srv = everything_server("streamableHttp")
    px = proxy(srv.url, TASK_POLICY)
    h = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {"tasks": {}}, "clientInfo": {"name": "t", "version": "1"}}}
    r = httpx.post(f"{px.url}/mcp", headers=h, json=init)
    h = {**h, "mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    httpx.post(f"{px.url}/mcp", headers=h, json={"jsonrpc": "2.0", "method": "notifications/initialized"})

    def rpc(id, method, params):
        [*_, m] = messages(httpx.post(f"{px.url}/mcp", headers=h, json={"jsonrpc": "2.0", "id": id, "method": method, "params": params}, timeout=30))
        return m

    study = {"name": "simulate-research-query", "arguments": {"topic": "tolls"}, "task": {"ttl": 60000}}
    task = rpc(1, "tools/call", study)["result"]["task"]
    # Polling and fetching the result are the same call: neither decided nor counted again (a
    # limit of one would refuse a second count).
    deadline = time.monotonic() + 20
    while (status := rpc(2, "tasks/get", {"taskId": task["taskId"]})["result"]["status"]) != "completed":
        assert status == "working" and time.monotonic() < deadline, status
        time.sleep(0.5)
    result = rpc(3, "tasks/result", {"taskId": task["taskId"]})
    assert "Research Report: tolls" in result["result"]["content"][0]["text"], result
    # The task's count stayed: it ran. A second study is a new call, over the limit.
    denied = rpc(4, "tools/call", {**study, "arguments": {"topic": "again"}})
    assert denied["error"]["data"]["rule"] == "one study an hour", denied
    listed = rpc(5, "tasks/list", {})["result"]["tasks"]
    assert [t["taskId"] for t in listed] == [task["taskId"]], "the denied call made no task"
    assert px.metric("tollgate_decisions_total", tool="simulate-research-query", outcome="allow") == 1
