"""A real MCP client (Python SDK 2.x) calling the sample server through Tollgate."""

import sys

import anyio
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError


async def main(url: str) -> None:
    async with Client(url, mode="legacy") as c:
        tools = sorted(t.name for t in (await c.list_tools()).tools)
        print(f"tools/list shows {len(tools)} tools: {', '.join(tools)}")
        calls = [
            ("read_file", {"path": "/etc/motd"}),
            ("delete_repository", {"name": "prod"}),
            ("create_charge", {"amount": 90000, "currency": "usd"}),
        ] + [("create_issue", {"title": f"bug {i}"}) for i in range(1, 5)]
        for name, args in calls:
            try:
                r = await c.call_tool(name, args)
                print(f"  allowed  {name}{args}: {r.content[0].text}")
            except MCPError as e:
                print(f"  DENIED   {name}{args}: {e.error.message}")


anyio.run(main, sys.argv[1])
