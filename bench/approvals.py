"""What approvals cost: the memory of many held calls, and the latency an approval adds.

    bench/approvals.sh [--held 10000] [--calls 2000]

Starts bench-upstream (rmcp, JSON answers at once) and a release `tollgate proxy` in front of
it with approvals on, then measures, in one run:

- an allowed call through the proxy, and the same call to the upstream directly (the floor);
- a call admitted by an approval already given (the agent's retry after approval): the
  proxy's lookup and use of the approval, on top of an allowed call;
- a call held, and approved at once by a decider polling the approvals listener: the whole
  hold, decision and answer, beside the decider's own two API round trips;
- the proxy's RSS holding N calls at once (each on its own connection), against idle.

Prints a Markdown table and writes it to bench/results/approvals.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "target" / "release"
TOLLGATE = os.environ.get("TOLLGATE", str(RELEASE / "tollgate"))  # another binary, for an A/B

POLICY = """
apiVersion: tollgate.dev/v1alpha1
kind: McpPolicy
metadata: { name: approvals-bench, namespace: default }
spec:
  default: deny
  tools:
    tool_1: { rules: [] }
    tool_2:
      rules: [ { name: retry after approval, action: approve, approval: { timeout: 1ms, validFor: 1h } } ]
    tool_3:
      rules: [ { name: decided at once, action: approve, approval: { timeout: 30s } } ]
    tool_4:
      rules: [ { name: held, action: approve, approval: { timeout: 10m, validFor: 1h } } ]
"""

HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream",
           "mcp-protocol-version": "2025-06-18"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def call(n: int, tool: str) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": n, "method": "tools/call",
                       "params": {"name": tool, "arguments": {"n": n}}})


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def percentiles(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return s[len(s) // 2], s[min(len(s) - 1, int(len(s) * 0.99))]


def timed(client: httpx.Client, url: str, bodies) -> list[float]:
    out = []
    for body in bodies:
        t0 = time.perf_counter()
        r = client.post(url, headers=HEADERS, content=body)
        out.append((time.perf_counter() - t0) * 1e6)
        assert r.status_code == 200 and '"result"' in r.text, r.text
    return out


async def hold_many(port: int, n: int, api: httpx.Client, pid: int) -> int:
    """Opens n connections, each with one held call; returns the proxy's RSS once all are held."""
    writers = []
    for i in range(n):
        _, w = await asyncio.open_connection("127.0.0.1", port)
        body = call(100_000 + i, "tool_4").encode()
        w.write(b"POST /mcp HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
                b"accept: application/json, text/event-stream\r\nmcp-protocol-version: 2025-06-18\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        writers.append(w)
        if i % 500 == 0:
            await asyncio.sleep(0)
    deadline = time.monotonic() + 120
    while True:
        pending = sum(1 for a in api.get("/v1/approvals").json()["items"] if a["phase"] == "Pending")
        if pending >= n:
            break
        assert time.monotonic() < deadline, f"only {pending} of {n} calls were held"
        await asyncio.sleep(0.5)
    kib = rss_kib(pid)
    for w in writers:
        w.close()
    return kib


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--held", type=int, default=10_000)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "approvals.md"))
    a = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tollgate-approvals-bench-"))
    up_port, px_port, admin_port, api_port = (free_port() for _ in range(4))
    (tmp / "policy.yaml").write_text(POLICY)
    procs = []
    try:
        procs.append(subprocess.Popen([str(RELEASE / "bench-upstream"), "--listen", f"127.0.0.1:{up_port}", "--tools", "10"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(up_port)
        proxy = subprocess.Popen([TOLLGATE, "proxy", "--upstream", f"http://127.0.0.1:{up_port}",
                                  "--policy", str(tmp / "policy.yaml"), "--listen", f"127.0.0.1:{px_port}",
                                  "--metrics-listen", f"127.0.0.1:{admin_port}", "--workers", "1",
                                  "--approvals-token-file", str(tmp / "token"), "--approvals-listen", f"127.0.0.1:{api_port}",
                                  "--approval-retention", "2s", "--log", "warn"],
                                 stdout=subprocess.DEVNULL, stderr=open(tmp / "proxy.log", "w"))
        procs.append(proxy)
        wait_port(api_port)
        token = (tmp / "token").read_text().strip()
        api = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", headers={"authorization": f"Bearer {token}"})
        direct_url, proxy_url = f"http://127.0.0.1:{up_port}/mcp", f"http://127.0.0.1:{px_port}/mcp"
        n = a.calls
        with httpx.Client() as c:
            timed(c, proxy_url, (call(i, "tool_1") for i in range(200)))  # warm up
            timed(c, direct_url, (call(i, "tool_1") for i in range(200)))
            rows: dict[str, list[float]] = {"direct": [], "allowed": [], "admitted": []}
            # Interleaved, so a noisy machine slows each alike.
            for i in range(n):
                rows["direct"] += timed(c, direct_url, [call(i, "tool_1")])
                rows["allowed"] += timed(c, proxy_url, [call(i, "tool_1")])
                held = c.post(proxy_url, headers=HEADERS, content=call(i, "tool_2")).json()
                api.post(f"/v1/approvals/{held['error']['data']['approval']}/approve")
                rows["admitted"] += timed(c, proxy_url, [call(i, "tool_2")])

            decided, api_trips = [], []
            stop = threading.Event()

            def decider():
                while not stop.is_set():
                    t0 = time.perf_counter()
                    items = api.get("/v1/approvals").json()["items"]
                    for it in items:
                        if it["phase"] == "Pending" and it["tool"] == "tool_3":
                            api.post(f"/v1/approvals/{it['name']}/approve")
                            api_trips.append((time.perf_counter() - t0) * 1e6)

            t = threading.Thread(target=decider, daemon=True)
            t.start()
            for i in range(min(n, 500)):
                decided += timed(c, proxy_url, [call(10_000 + i, "tool_3")])
            stop.set()
            t.join()

        idle = rss_kib(proxy.pid)
        held_kib = asyncio.run(hold_many(px_port, a.held, api, proxy.pid))
    finally:
        for pr in procs:
            pr.terminate()
        for pr in procs:
            pr.wait(timeout=10)

    d50, d99 = percentiles(rows["direct"])
    a50, a99 = percentiles(rows["allowed"])
    m50, m99 = percentiles(rows["admitted"])
    h50, h99 = percentiles(decided)
    t50, t99 = percentiles(api_trips)
    cpu = os.cpu_count()
    out = [
        f"Approvals, on {cpu} cores (`bench/approvals.sh --held {a.held} --calls {n}`; client, proxy and upstream share them):",
        "",
        "| call | p50 µs | p99 µs | p50 vs direct |",
        "|---|---:|---:|---:|",
        f"| upstream directly | {d50:.0f} | {d99:.0f} | 1.00× |",
        f"| allowed, through the proxy | {a50:.0f} | {a99:.0f} | {a50 / d50:.2f}× |",
        f"| admitted by an approval given before (the retry) | {m50:.0f} | {m99:.0f} | {m50 / d50:.2f}× |",
        f"| held, approved at once by a polling decider | {h50:.0f} | {h99:.0f} | {h50 / d50:.2f}× |",
        f"| (the decider's GET list + POST approve) | {t50:.0f} | {t99:.0f} | |",
        "",
        f"The approval adds {m50 - a50:.0f} µs at p50 to the retry it admits. Held and approved at once, a call "
        f"takes {h50 - a50:.0f} µs more than an allowed one, of which the decider's own round trips are {t50:.0f} µs.",
        "",
        f"RSS holding {a.held:,} calls, each on its own connection: {held_kib / 1024:.1f} MiB "
        f"({idle / 1024:.1f} MiB idle before), {(held_kib - idle) / a.held:.1f} KiB per held call "
        "(the connection, the request, and its approval).",
    ]
    text = "\n".join(out) + "\n"
    Path(a.out).write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
