"""A small MCP server (Python SDK 2.x) with tools worth a policy: reads, writes, charges, deletes.

    python examples/sample_server.py --port 8000 [--transport streamable-http|sse] [--json] [--stateless]

Every tool answers at once, so a test or a demo sees the proxy's decisions, not the tools' work.
"""

from __future__ import annotations

import argparse

import uvicorn
from mcp.server.mcpserver import MCPServer

mcp = MCPServer("sample", instructions="A demo server for Tollgate's quick start.")


@mcp.tool()
def read_file(path: str) -> str:
    """Read a file (pretend)."""
    return f"contents of {path}"


@mcp.tool()
def get_issue(number: int) -> str:
    """Read an issue."""
    return f"issue #{number}: it works"


@mcp.tool()
def create_issue(title: str) -> str:
    """Open an issue."""
    return f"created issue {title!r}"


@mcp.tool()
def create_charge(amount: int, currency: str) -> str:
    """Charge a customer, in cents."""
    if amount <= 0:
        raise ValueError("amount must be positive")
    return f"charged {amount} {currency}"


@mcp.tool()
def run_query(sql: str) -> str:
    """Run SQL."""
    return f"ran: {sql}"


@mcp.tool()
def delete_repository(name: str) -> str:
    """Delete a repository. Never let an agent do this."""
    return f"deleted {name}"


@mcp.tool()
def transfer_repository(name: str, owner: str) -> str:
    """Hand a repository to someone else."""
    return f"transferred {name} to {owner}"


@mcp.tool()
async def slow(seconds: float) -> str:
    """Takes its time: for tests of draining on shutdown."""
    import anyio

    await anyio.sleep(seconds)
    return f"slept {seconds}s"


@mcp.tool()
def fail(message: str) -> str:
    """Always fails: for tests of counter rollback."""
    raise RuntimeError(message)


@mcp.resource("config://app")
def app_config() -> str:
    """The app's settings."""
    return "debug=false"


@mcp.resource("secret://database")
def database_password() -> str:
    """A secret no agent should read."""
    return "hunter2"


@mcp.prompt()
def summarize(text: str) -> str:
    """Summarize a text."""
    return f"Summarize: {text}"


@mcp.prompt()
def admin_reset() -> str:
    """A prompt for operators only."""
    return "Reset everything."


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--transport", choices=["streamable-http", "sse"], default="streamable-http")
    p.add_argument("--json", action="store_true", help="answer POSTs with JSON instead of SSE")
    p.add_argument("--stateless", action="store_true", help="no sessions")
    a = p.parse_args()
    if a.transport == "sse":
        app = mcp.sse_app(host=a.host)
    else:
        app = mcp.streamable_http_app(json_response=a.json, stateless_http=a.stateless, host=a.host)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
