"""Raw JSON-RPC over streamable HTTP, for tests that look at the bytes."""

import json

import httpx

HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def rpc(id, method, params=None):
    m = {"jsonrpc": "2.0", "id": id, "method": method}
    if params is not None:
        m["params"] = params
    return m


def call(id, tool, args=None):
    return rpc(id, "tools/call", {"name": tool, "arguments": args or {}})


MODERN_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


def modern_call(id, tool, args=None) -> tuple[dict, dict]:
    """A 2026-07-28 `tools/call` as a client sends it: its body (with `_meta`) and headers."""
    body = rpc(id, "tools/call", {"name": tool, "arguments": args or {}, "_meta": MODERN_META})
    return body, {**HEADERS, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": tool}


def messages(resp: httpx.Response) -> list[dict]:
    """Every JSON-RPC message of a JSON or SSE answer."""
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        out = []
        for event in resp.text.replace("\r\n", "\n").split("\n\n"):
            data = "\n".join(l[5:].lstrip() for l in event.split("\n") if l.startswith("data:"))
            if data.strip():
                out.append(json.loads(data))
        return out
    body = resp.json()
    return body if isinstance(body, list) else [body]


def open_session(url: str, version: str = "2025-06-18") -> dict:
    r = httpx.post(url, headers=HEADERS, json=rpc(0, "initialize", {
        "protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}))
    assert r.status_code == 200, r.text
    h = {**HEADERS, "mcp-protocol-version": version}
    if "mcp-session-id" in r.headers:
        h["mcp-session-id"] = r.headers["mcp-session-id"]
    httpx.post(url, headers=h, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    return h
