"""Drives the real Python MCP SDK 2.x client and reports what it saw, for the tests to assert on."""

from __future__ import annotations

from typing import Any

import anyio
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError


async def _session(url: str, mode: str, calls: list[tuple[str, dict]]) -> dict[str, Any]:
    seen: dict[str, Any] = {"calls": []}
    async with Client(url, mode=mode) as c:
        tools = await c.list_tools()
        seen["tools"] = sorted(t.name for t in tools.tools)
        for name, args in calls:
            try:
                r = await c.call_tool(name, args)
                text = r.content[0].text if r.content else ""
                seen["calls"].append(("error" if r.is_error else "ok", text))
            except MCPError as e:
                seen["calls"].append(("denied" if e.error.code == -32001 else f"rpc{e.error.code}", e.error.message, e.error.data))
    return seen


def session(url: str, mode: str, calls: list[tuple[str, dict]]) -> dict[str, Any]:
    """One client session: list tools, then make each call; returns what came back."""
    return anyio.run(_session, url, mode, calls)
