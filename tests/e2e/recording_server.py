"""An MCP server (Python SDK 2.x) that writes down every tool run, with the arguments the tool
actually ran with (after the SDK parsed and validated them), one JSON line each:

    python tests/e2e/recording_server.py --port 8000 --record runs.jsonl [--transport sse] [--json] [--stateless] [--host ::] [--headers heads.jsonl]

The bypass suite reads the record to see what a server really ran, whatever the proxy said.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import time

import anyio
import uvicorn
from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.resolve import Elicit, Resolve
from mcp_types import ElicitRequest, ElicitRequestFormParams, InputRequiredResult
from pydantic import BaseModel
from mcp.shared.exceptions import MCPError
from starlette.requests import Request
from starlette.responses import PlainTextResponse

mcp = MCPServer("recording")
RECORD: str = ""


def record(tool: str, **args) -> None:
    def plain(v):
        # json.dumps writes NaN and Infinity as bare words: keep them readable as strings.
        return repr(v) if isinstance(v, float) and not math.isfinite(v) else v

    with open(RECORD, "a") as f:
        f.write(json.dumps({"tool": tool, "args": {k: plain(v) for k, v in args.items()}, "t": time.time()}) + "\n")


@mcp.custom_route("/health", methods=["GET"])
async def health(request: Request) -> PlainTextResponse:
    """What a kubelet probes (never a tool run, so never recorded)."""
    return PlainTextResponse("ok")


@mcp.tool()
def read_file(path: str) -> str:
    record("read_file", path=path)
    return f"contents of {path}"


@mcp.tool()
def delete_repository(name: str) -> str:
    record("delete_repository", name=name)
    return f"deleted {name}"


@mcp.tool()
def create_charge(amount: float, currency: str) -> str:
    record("create_charge", amount=amount, currency=currency)
    return f"charged {amount} {currency}"


@mcp.tool()
def run_query(sql: str) -> str:
    record("run_query", sql=sql)
    return f"ran {sql}"


@mcp.tool()
def create_issue(title: str) -> str:
    record("create_issue", title=title)
    return f"created {title}"


@mcp.tool()
def act_then_refuse(title: str) -> str:
    """Acts, then raises "invalid params" (-32602): the SDK passes a tool's own MCPError through,
    so the answer looks like a call refused before running."""
    record("act_then_refuse", title=title)
    raise MCPError(code=-32602, message=f"title {title!r} is not acceptable")


@mcp.tool()
def session_note(text: str) -> str:
    """A tool a policy limits per session."""
    record("session_note", text=text)
    return f"noted {text}"


@mcp.tool()
async def slow_issue(title: str, seconds: float = 0.5) -> str:
    """Runs first, then takes its time: a cancellation comes after the work is done."""
    record("slow_issue", title=title)
    await anyio.sleep(seconds)
    return f"created {title} slowly"


class Confirmation(BaseModel):
    ok: bool


def ask_to_confirm(env: str) -> Elicit[Confirmation]:
    """Asks the client before a deploy: in 2026-07-28 the SDK answers the call `input_required`
    and the client repeats it with the answer; before, it sends `elicitation/create` mid-call."""
    record("asked", env=env)
    return Elicit(f"Deploy to {env}?", Confirmation)


@mcp.tool()
def deploy(env: str, confirmation: Annotated[Confirmation, Resolve(ask_to_confirm)]) -> str:
    """Runs once a person confirmed (a multi-round-trip call)."""
    record("deploy", env=env, ok=confirmation.ok)
    return f"deployed to {env}" if confirmation.ok else f"not deployed to {env}"


@mcp.resource("secret://{name}")
def secret(name: str, ctx: Context) -> str | InputRequiredResult:
    """A resource read only once the reader confirms (a multi-round-trip read, 2026-07-28)."""
    if not ctx.input_responses:
        record("asked", name=name)
        schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
        return InputRequiredResult(
            input_requests={"confirm": ElicitRequest(params=ElicitRequestFormParams(message=f"Read {name}?", requested_schema=schema))},
            request_state=f"read:{name}",
        )
    record("resource:secret", name=name)
    return f"the secret {name}"


def heads_recorded(app, path: str):
    """The app, writing down each HTTP request's method, path, `traceparent` and `tracestate` first: what the
    trace suite reads of the context a proxy passed on."""

    async def recorded(scope, receive, send):
        if scope["type"] == "http":
            heads = dict(scope["headers"])
            tp, ts = heads.get(b"traceparent"), heads.get(b"tracestate")
            with open(path, "a") as f:
                f.write(json.dumps({"method": scope["method"], "path": scope["path"],
                                    "traceparent": tp.decode() if tp else None,
                                    "tracestate": ts.decode() if ts else None}) + "\n")
        await app(scope, receive, send)

    return recorded


def main() -> None:
    global RECORD
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    # `::` serves every address of both families, as a server in a pod does (and turns off the
    # SDK's DNS-rebinding check, which only guards loopback servers).
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--ipv6-only", action="store_true", help="with --host ::, IPv6 alone (as asyncio binds it)")
    p.add_argument("--record", required=True)
    p.add_argument("--transport", choices=["streamable-http", "sse"], default="streamable-http")
    p.add_argument("--json", action="store_true")
    p.add_argument("--stateless", action="store_true", help="no sessions: a lone tools/call runs")
    p.add_argument("--headers", help="write each request's method, path and traceparent to this file")
    a = p.parse_args()
    RECORD = a.record
    open(RECORD, "a").close()
    if a.transport == "sse":
        app = mcp.sse_app(host=a.host)
    else:
        app = mcp.streamable_http_app(json_response=a.json, stateless_http=a.stateless, host=a.host)
    if a.headers:
        app = heads_recorded(app, a.headers)
    if a.host != "::" or a.ipv6_only:
        uvicorn.run(app, host=a.host, port=a.port, log_level="warning")
        return
    # One dual-stack socket, as most servers in pods bind (asyncio would make it IPv6-only).
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", a.port))
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


if __name__ == "__main__":
    main()
