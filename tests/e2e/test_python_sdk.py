"""e2e: the Python MCP SDK 2.x, as server and as client, through the proxy: allowed, denied,
rate-limited and filtered calls, in every transport mode and both protocol eras."""

import pytest
from conftest import SAMPLE_POLICY
from mcp_client import session

VISIBLE = ["create_charge", "create_issue", "fail", "get_issue", "read_file", "run_query"]


@pytest.mark.parametrize("server_flags", [(), ("--json",), ("--stateless",), ("--stateless", "--json")], ids=["sse", "json", "stateless-sse", "stateless-json"])
@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
def test_e2e_allowed_denied_and_filtered_calls_through_the_proxy(sample_server, proxy, server_flags, mode):
    srv = sample_server(*server_flags)
    px = proxy(srv.url, SAMPLE_POLICY)
    seen = session(f"{px.url}/mcp", mode, [
        ("read_file", {"path": "/etc/motd"}),
        ("delete_repository", {"name": "prod"}),
        ("create_charge", {"amount": 70000, "currency": "usd"}),
        ("create_charge", {"amount": 1200, "currency": "eur"}),
        ("run_query", {"sql": "DROP TABLE users"}),
        ("run_query", {"sql": "select 1"}),
        ("transfer_repository", {"name": "a", "owner": "b"}),
        ("not_a_listed_tool", {}),
    ])
    assert seen["tools"] == VISIBLE, "hidden and never-allowed tools are filtered out of tools/list"
    calls = seen["calls"]
    assert calls[0] == ("ok", "contents of /etc/motd")
    assert calls[1][0] == "denied" and calls[1][2] == {
        "reason": "Repository deletion is not permitted", "rule": "never", "policy": "mcppolicy/default/sample"}
    assert calls[2][0] == "denied" and calls[2][2]["rule"] == "max single charge"
    assert calls[3] == ("ok", "charged 1200 eur")
    assert calls[4][0] == "denied" and "Only SELECT" in calls[4][1]
    assert calls[5] == ("ok", "ran: select 1")
    assert calls[6][0] == "denied" and calls[6][2]["rule"] == "(hidden)"
    assert calls[7][0] == "denied" and calls[7][2]["rule"] == "(default deny)"
    decisions = [(a["tool"], a["decision"]) for a in px.audit()]
    assert ("delete_repository", "deny") in decisions and ("read_file", "allow") in decisions


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
def test_e2e_rate_limit_denies_the_call_past_the_limit(sample_server, proxy, mode):
    srv = sample_server()
    px = proxy(srv.url, SAMPLE_POLICY)
    seen = session(f"{px.url}/mcp", mode, [("create_issue", {"title": f"t{i}"}) for i in range(4)])
    assert [c[0] for c in seen["calls"]] == ["ok", "ok", "ok", "denied"]
    assert seen["calls"][3][1] == "Denied by policy: Hourly limit of 3 new issues reached"
    assert px.metric("tollgate_decisions_total", tool="create_issue", outcome="deny") == 1


def test_e2e_a_tool_that_ran_and_failed_spends_its_quota(sample_server, proxy):
    srv = sample_server()
    px = proxy(srv.url, SAMPLE_POLICY)
    # `fail` allows 2 calls a minute. It runs, then raises: the SDK answers with an `isError`
    # result, so the tool ran and each call counts; the third is denied.
    seen = session(f"{px.url}/mcp", "legacy", [("fail", {"message": "boom"}) for _ in range(3)])
    assert [c[0] for c in seen["calls"]] == ["error", "error", "denied"], seen


def test_e2e_a_call_the_server_refused_before_running_spends_no_quota(sample_server, proxy):
    import httpx
    from rpc import messages, open_session

    srv = sample_server("--json")
    px = proxy(srv.url, SAMPLE_POLICY)
    h = open_session(f"{px.url}/mcp")
    # Params that are not a tools/call's (-32602): the proxy refuses them itself, uncounted (a
    # server's own -32602 could come from a tool that ran, so it would count).
    bad = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "fail", "arguments": "not an object"}}
    for i in range(4):
        [m] = messages(httpx.post(f"{px.url}/mcp", headers=h, json={**bad, "id": i + 1}))
        assert m["error"]["code"] == -32602, m
    seen = session(f"{px.url}/mcp", "legacy", [("fail", {"message": "boom"}) for _ in range(3)])
    assert [c[0] for c in seen["calls"]] == ["error", "error", "denied"], seen


def test_e2e_denied_calls_never_reach_the_server(sample_server, proxy):
    srv = sample_server()
    px = proxy(srv.url, SAMPLE_POLICY)
    session(f"{px.url}/mcp", "legacy", [("delete_repository", {"name": "prod"})])
    assert "delete_repository" not in srv.proc.log.read_text()
    assert "deleted prod" not in srv.proc.log.read_text()


def test_e2e_legacy_http_sse_transport_is_decided_too(sample_server, proxy):
    import anyio
    from mcp.client.session import ClientSession
    from mcp.client.sse import sse_client
    from mcp.shared.exceptions import MCPError

    srv = sample_server("--transport", "sse")
    px = proxy(srv.url, SAMPLE_POLICY)

    async def run():
        async with sse_client(f"{px.url}/sse") as (r, w), ClientSession(r, w) as s:
            await s.initialize()
            tools = sorted(t.name for t in (await s.list_tools()).tools)
            ok = await s.call_tool("read_file", {"path": "x"})
            try:
                await s.call_tool("delete_repository", {"name": "x"})
                denied = None
            except MCPError as e:
                denied = e.error.message
            return tools, ok.content[0].text, denied

    tools, ok, denied = anyio.run(run)
    assert tools == VISIBLE
    assert ok == "contents of x"
    assert denied == "Denied by policy: Repository deletion is not permitted"
