"""How long the release `tollgate proxy` takes to load very large policies, and its RSS then:
one policy with 10,000 tools, and 1,000 policies applying to the pod. Time is from the process'
start until /readyz answers 200 (the policy compiled and in force); RSS is read once ready.
Prints a table and writes bench/results/policy-load.md. Run it with bench/policy_load.sh."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "target" / "release" / "tollgate"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ten_thousand_tools() -> str:
    tools = {f"tool_{i:05}": {"rules": [{"name": f"limit {i}", "rateLimit": "5/minute"},
                                        {"name": f"small {i}", "conditions": [{"path": "args.n", "op": "lte", "value": i}]}]}
             for i in range(10_000)}
    return json.dumps({"apiVersion": "tollgate.dev/v1alpha1", "kind": "McpPolicy", "metadata": {"name": "big"},
                       "spec": {"default": "deny", "tools": tools}})


def thousand_policies() -> str:
    docs = [{"apiVersion": "tollgate.dev/v1alpha1", "kind": "McpPolicy", "metadata": {"name": f"p{i:04}"},
             "spec": {"tools": {f"tool_{i}": {"rules": [{"name": f"cap {i}", "rateLimit": "5/minute"}]},
                                "read_file": {"rules": []}}}} for i in range(1000)]
    return "\n---\n".join(json.dumps(d) for d in docs)


def load(policy: Path) -> tuple[float, int]:
    port, admin = free_port(), free_port()
    t0 = time.monotonic()
    p = subprocess.Popen([str(BIN), "proxy", "--upstream", "http://127.0.0.1:9", "--policy", str(policy),
                          "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{admin}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1).status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() - t0 > 60:
                raise SystemExit(f"{policy.name}: not ready after 60 s")
            time.sleep(0.005)
        seconds = time.monotonic() - t0
        rss = next(int(l.split()[1]) for l in Path(f"/proc/{p.pid}/status").read_text().splitlines() if l.startswith("VmRSS:"))
        return seconds, rss
    finally:
        p.kill()
        p.wait()


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.yaml"
        empty.write_text(json.dumps({"apiVersion": "tollgate.dev/v1alpha1", "kind": "McpPolicy", "metadata": {"name": "e"},
                                     "spec": {"tools": {}}}))
        for name, text in [("an empty policy (baseline)", None), ("one policy, 10,000 tools (2 rules each)", ten_thousand_tools()),
                           ("1,000 policies", thousand_policies())]:
            path = empty
            if text is not None:
                path = Path(tmp) / "policy.yaml"
                path.write_text(text)
            runs = [load(path) for _ in range(rounds)]
            best = min(r[0] for r in runs)
            rss = max(r[1] for r in runs)
            rows.append(f"| {name} | {path.stat().st_size / 1e6:.1f} MB | {best * 1e3:.0f} ms | {rss / 1024:.1f} MiB |")
    table = "\n".join(["| policy | file | start to ready (best of %d) | RSS when ready |" % rounds, "|---|---:|---:|---:|", *rows])
    out = ROOT / "bench" / "results" / "policy-load.md"
    out.write_text("# Loading very large policies (release build)\n\n" + table + "\n")
    print(table)


if __name__ == "__main__":
    main()
