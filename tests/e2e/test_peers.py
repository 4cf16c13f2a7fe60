"""e2e: npm @modelcontextprotocol/server-everything (streamable HTTP and SSE), the conformance
suite for 2025-11-25 and 2026-07-28, and the 1.x Python SDK (2025-11-25 wire), each through the
proxy."""

import json
import subprocess
from pathlib import Path

import anyio
import pytest
from conftest import CONFORMANCE, NODE, TESTS, report
from mcp_client import session

EVERYTHING_VERSION = json.loads((TESTS / "node_modules/@modelcontextprotocol/server-everything/package.json").read_text())["version"]
MCP_VERSION = __import__("importlib.metadata").metadata.version("mcp")

EVERYTHING_POLICY = """
apiVersion: tollgate.dev/v1alpha1
kind: McpPolicy
metadata: { name: everything, namespace: demo }
spec:
  default: allow
  hide: [get-env]
  tools:
    echo: { rules: [ { name: two per minute, rateLimit: 2/minute } ] }
    get-sum:
      rules:
        - name: small sums
          conditions: [ { path: args.a, op: lte, value: 100 } ]
          onDeny: Only small numbers may be added
    trigger-long-running-operation: { rules: [ { name: not here, action: deny } ] }
"""


def test_e2e_server_everything_over_streamable_http(everything_server, proxy):
    srv = everything_server("streamableHttp")
    px = proxy(srv.url, EVERYTHING_POLICY)
    seen = session(f"{px.url}/mcp", "legacy", [
        ("echo", {"message": "one"}),
        ("echo", {"message": "two"}),
        ("echo", {"message": "three"}),
        ("get-sum", {"a": 1, "b": 2}),
        ("get-sum", {"a": 1000, "b": 2}),
        ("get-env", {}),
        ("trigger-long-running-operation", {"duration": 1, "steps": 1}),
    ])
    assert "get-env" not in seen["tools"] and "trigger-long-running-operation" not in seen["tools"]
    assert "echo" in seen["tools"] and "get-sum" in seen["tools"]
    kinds = [c[0] for c in seen["calls"]]
    assert kinds == ["ok", "ok", "denied", "ok", "denied", "denied", "denied"], seen["calls"]
    assert "Echo: one" in seen["calls"][0][1]
    assert seen["calls"][4][1] == "Denied by policy: Only small numbers may be added"


def test_e2e_server_everything_over_legacy_sse(everything_server, proxy):
    from mcp.client.session import ClientSession
    from mcp.client.sse import sse_client
    from mcp.shared.exceptions import MCPError

    srv = everything_server("sse")
    px = proxy(srv.url, EVERYTHING_POLICY)

    async def run():
        async with sse_client(f"{px.url}/sse") as (r, w), ClientSession(r, w) as s:
            await s.initialize()
            tools = {t.name for t in (await s.list_tools()).tools}
            ok = await s.call_tool("get-sum", {"a": 2, "b": 3})
            try:
                await s.call_tool("get-sum", {"a": 500, "b": 3})
                denied = None
            except MCPError as e:
                denied = e.error.message
            return tools, ok.content[0].text, denied

    tools, ok, denied = anyio.run(run)
    assert "get-env" not in tools and "echo" in tools
    assert "5" in ok
    assert denied == "Denied by policy: Only small numbers may be added"


def run_conformance(url: str, out: Path, *flags: str) -> dict[str, str]:
    """Runs every server scenario (of the active suite, or as `flags` choose); returns
    scenario -> 'passed/failed' counts."""
    proc = subprocess.run(
        [str(NODE), str(CONFORMANCE), "server", "--url", url, "-o", str(out), *flags],
        capture_output=True, text=True, timeout=300, cwd=TESTS,
    )
    results = {}
    for line in proc.stdout.splitlines():
        if line[:1] in "✓✗" and ":" in line:
            name, _, counts = line[2:].partition(":")
            results[name.strip()] = counts.strip()
    assert results, proc.stdout + proc.stderr
    return results


def summary(results: dict[str, str]) -> str:
    passed = sum(int(c.split()[0]) for c in results.values())
    failed = sum(int(c.split(",")[1].split()[0]) for c in results.values())
    return f"{len(results)} scenarios, {passed} checks passed, {failed} failed"


def test_e2e_conformance_2025_11_25_scenarios_pass_through_the_proxy_as_they_pass_direct(everything_server, proxy, tmp_path):
    srv = everything_server("streamableHttp")
    px = proxy(srv.url, "version: '1'\ndefault: allow\ntools: {}\n")
    flags = ("--spec-version", "2025-11-25")
    direct = run_conformance(f"{srv.url}/mcp", tmp_path / "direct", *flags)
    through = run_conformance(f"{px.url}/mcp", tmp_path / "proxy", *flags)
    assert through == direct
    assert len(direct) >= 30, direct
    report("conformance", f"2025-11-25 against server-everything {EVERYTHING_VERSION}: direct {summary(direct)}; through the proxy the same")


def test_e2e_conformance_2026_07_28_scenarios_pass_through_the_proxy_as_they_pass_direct(recorder, proxy, tmp_path):
    # The Python SDK 2.x's server (the recording server, stateless): what the revision requires,
    # and its extensions. Scenarios that call tools it lacks fail alike both ways; what the
    # proxy must not change (headers checked as the spec says, input_required results, cache
    # hints, resources not found) passes through it as it passes direct.
    url, _ = recorder("--stateless")
    px = proxy(url, "version: '1'\ndefault: allow\ntools: {}\n")
    flags = ("--requirements", "2026-07-28")
    direct = run_conformance(f"{url}/mcp", tmp_path / "direct", *flags)
    through = run_conformance(f"{px.url}/mcp", tmp_path / "proxy", *flags)
    assert through == direct, {k: (direct.get(k), through.get(k)) for k in direct.keys() | through.keys() if direct.get(k) != through.get(k)}
    for scenario in ["http-header-validation", "caching", "sep-2164-resource-not-found", "dns-rebinding-protection", "input-required-result-unsupported-methods", "input-required-result-validate-input"]:
        assert direct[scenario].endswith(" 0 failed"), (scenario, direct[scenario])
    report("conformance", f"2026-07-28 against the Python SDK {MCP_VERSION}'s server: direct {summary(direct)}; through the proxy the same")


def test_e2e_the_proxy_adds_dns_rebinding_protection_the_server_lacks(everything_server, proxy, tmp_path):
    from conftest import free_port

    srv = everything_server("streamableHttp")
    port = free_port()
    # The scenario treats the URL's own origin as the good one and evil.example.com as the bad.
    guarded = proxy(srv.url, "version: '1'\ndefault: allow\ntools: {}\n", "--allowed-origins",
                    f"http://127.0.0.1:{port},http://localhost:{port}", port=port)
    direct = run_conformance(f"{srv.url}/mcp", tmp_path / "direct")
    assert direct["dns-rebinding-protection"].startswith("1 passed, 1 failed"), "server-everything lacks it"
    subprocess.run(
        [str(NODE), str(CONFORMANCE), "server", "--url", f"{guarded.url}/mcp", "--scenario", "dns-rebinding-protection", "-o", str(tmp_path / "g")],
        capture_output=True, text=True, timeout=120, cwd=TESTS,
    )
    checks = json.loads(next((tmp_path / "g").glob("*/checks.json")).read_text())
    assert {c["name"]: c["status"] for c in checks} == {"DNSRebindingRejected": "SUCCESS", "LocalhostHostAccepted": "SUCCESS"}


MCP1_SERVER = """
import sys
from mcp.server.fastmcp import FastMCP
app = FastMCP("v1", host="127.0.0.1", port=int(sys.argv[1]))
@app.tool()
def read_file(path: str) -> str:
    return "contents of " + path
@app.tool()
def delete_repository(name: str) -> str:
    return "deleted " + name
app.run(transport="streamable-http")
"""

MCP1_CLIENT = """
import sys, json, anyio
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError
async def main():
    async with streamablehttp_client(sys.argv[1]) as (r, w, _), ClientSession(r, w) as s:
        init = await s.initialize()
        tools = sorted(t.name for t in (await s.list_tools()).tools)
        ok = await s.call_tool("read_file", {"path": "x"})
        try:
            await s.call_tool("delete_repository", {"name": "x"})
            denied = None
        except McpError as e:
            denied = [e.error.code, e.error.message]
        print(json.dumps({"version": init.protocolVersion, "tools": tools, "ok": ok.content[0].text, "denied": denied}))
anyio.run(main)
"""


def test_e2e_python_sdk_1x_on_the_2025_11_25_wire(procs, proxy, tmp_path):
    from conftest import free_port

    py1 = TESTS / ".venv-mcp1" / "bin" / "python"
    port = free_port()
    server = tmp_path / "server1.py"
    server.write_text(MCP1_SERVER)
    procs.start("mcp1-server", [str(py1), str(server), str(port)], port)
    px = proxy(f"http://127.0.0.1:{port}", """
version: "1"
default: deny
tools:
  read_file: { rules: [] }
""")
    client = tmp_path / "client1.py"
    client.write_text(MCP1_CLIENT)
    out = subprocess.run([str(py1), str(client), f"{px.url}/mcp"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["version"] == "2025-11-25"
    assert seen["tools"] == ["read_file"]
    assert seen["ok"] == "contents of x"
    assert seen["denied"][0] == -32001 and "not permitted by policy" in seen["denied"][1]
