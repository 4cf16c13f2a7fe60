"""The control plane's costs: how long a policy change takes to reach the sidecars, with 1 and
with 100 of them connected, and how long the webhooks take per AdmissionReview.

    bench/control_plane.sh [--sidecars 1,100] [--changes 20] [--reviews 2000]

Runs the release operator against the Kubernetes emulator of the tests (tests/e2e/kube.py),
N release sidecars following its stream (one pod and token each), then:
  - propagation: PATCH an McpPolicy (toggling a deny), and read when each sidecar installed the
    new revision (its log line's timestamp, same clock): from then on every call sees it;
  - webhooks: POST AdmissionReviews over one kept-alive TLS connection, as the API server does,
    and time each round trip (measured from Python, so the client's own cost is included; the
    same client's round trip to a 404 route is shown as the floor).
Prints a table and writes bench/results/control-plane.md.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import os
import platform
import re
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import httpx  # noqa: E402
from conftest import free_port, wait_for_port  # noqa: E402
from kube import ClusterThread  # noqa: E402
from test_operator import OPERATOR_NS, POD_KIND, POLICY_KIND, Kube, mcp_pod, policy, review  # noqa: E402

RELEASE = ROOT / "target" / "release"
RECEIVED = re.compile(r"^(\S+Z)\s+INFO\s+tollgate_sidecar::control: policy received revision=(\d+)")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def received(log: Path) -> list[str]:
    """The sidecar's "policy received" lines so far."""
    return [line for line in log.read_text().splitlines() if RECEIVED.match(line)]


def stamp(line: str) -> float:
    return datetime.datetime.fromisoformat(line.replace("Z", "+00:00")).timestamp()


def propagation(kube: Kube, op_url: str, ca: str, n: int, changes: int, tmp: Path) -> list[float]:
    ns = f"bench-{n}"
    kube.namespace(ns)
    kube.create("mcppolicies", policy(ns, "p", {"default": "allow", "tools": {"create_issue": {"rules": []}}}))
    (tmp / "ca.pem").write_text(ca)
    sidecars = []
    for i in range(n):
        pod = kube.injected_pod(ns, f"mcp-{i}")
        token = tmp / f"token-{ns}-{i}"
        token.write_text(kube.token_for(pod))
        port, admin = free_port(), free_port()
        log = tmp / f"sidecar-{ns}-{i}.log"
        proc = subprocess.Popen(
            [str(RELEASE / "tollgate"), "proxy", "--upstream", "http://127.0.0.1:9", "--control-plane", op_url,
             "--control-plane-ca", str(tmp / "ca.pem"), "--token-file", str(token),
             "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{admin}"],
            stdout=subprocess.DEVNULL, stderr=open(log, "wb"), env={"TOLLGATE_LOG": "info", "PATH": os.environ["PATH"]},
        )
        sidecars.append((proc, log, admin))
    try:
        for proc, log, admin in sidecars:
            wait_for_port(admin, proc, log)
            deadline = time.monotonic() + 60
            while httpx.get(f"http://127.0.0.1:{admin}/readyz").status_code != 200:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.02)
        delays = []
        for c in range(changes):
            seen = [len(received(log)) for _, log, _ in sidecars]
            rule = [{"name": "frozen", "action": "deny"}] if c % 2 == 0 else []
            t0 = time.time()
            kube.patch("mcppolicies", ns, "p", {"spec": {"tools": {"create_issue": {"rules": rule}}}})
            for (proc, log, _), before in zip(sidecars, seen):
                deadline = time.monotonic() + 30
                while True:
                    lines = received(log)
                    if len(lines) > before:
                        delays.append(stamp(RECEIVED.match(lines[before]).group(1)) - t0)
                        break
                    assert time.monotonic() < deadline, f"sidecar never got change {c}:\n{log.read_text()[-2000:]}"
                    time.sleep(0.01)
            time.sleep(0.2)
        return delays
    finally:
        for proc, _, _ in sidecars:
            proc.send_signal(signal.SIGTERM)
        for proc, _, _ in sidecars:
            proc.wait(10)


def webhook(op_url: str, ca: str, reviews: int) -> dict[str, list[float]]:
    ctx = ssl.create_default_context(cadata=ca)
    out: dict[str, list[float]] = {"mutate (inject a pod)": [], "validate (a policy)": [], "floor (404 route)": []}
    pod = mcp_pod("bench-admission", **{"tollgate.dev/inject": "true"})
    good = policy("bench-admission", "p", {"tools": {"run_query": {"rules": [
        {"name": "select only", "conditions": [{"path": "args.sql", "op": "regex", "value": "^SELECT"}]},
        {"name": "rate", "rateLimit": "100/minute"}]}}})
    with httpx.Client(base_url=op_url, verify=ctx) as client:
        for _ in range(50):  # warm the connection and the allocator
            client.post("/mutate", json=review(*POD_KIND, "bench-admission", pod))
        for _ in range(reviews):
            for name, path, body in [
                ("mutate (inject a pod)", "/mutate", review(*POD_KIND, "bench-admission", pod)),
                ("validate (a policy)", "/validate", review(*POLICY_KIND, "bench-admission", good)),
                ("floor (404 route)", "/nothing", None),
            ]:
                t = time.perf_counter()
                r = client.post(path, json=body) if body else client.get(path)
                out[name].append(time.perf_counter() - t)
                assert r.status_code in (200, 404), r.text
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sidecars", default="1,100")
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--reviews", type=int, default=2000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "control-plane.md"))
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tollgate-cp-"))
    with ClusterThread() as thread:
        kube = Kube(thread)
        kube.namespace(OPERATOR_NS)
        kubeconfig = tmp / "kubeconfig"
        kubeconfig.write_text(thread.kubeconfig())
        port, admin = free_port(), free_port()
        log = tmp / "operator.log"
        op = subprocess.Popen(
            [str(RELEASE / "tollgate-operator"), "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
             "--extra-san", "127.0.0.1", "--control-plane-url", f"https://127.0.0.1:{port}", "--default-action", "allow"],
            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env={"KUBECONFIG": str(kubeconfig), "TOLLGATE_LOG": "warn", "PATH": os.environ["PATH"]},
        )
        try:
            wait_for_port(port, op, log, timeout=60)
            op_url = f"https://127.0.0.1:{port}"
            secret = kube.get("secrets", OPERATOR_NS, "tollgate-operator-tls")
            ca = base64.b64decode(secret["data"]["ca.crt"]).decode()
            rows = []
            for n in [int(x) for x in a.sidecars.split(",")]:
                d = [x * 1000 for x in propagation(kube, op_url, ca, n, a.changes, tmp)]
                rows.append(f"| policy change -> installed in sidecar, {n} sidecar(s) | {percentile(d, 50):.1f} ms | {percentile(d, 99):.1f} ms | {max(d):.1f} ms | {len(d)} |")
            for name, samples in webhook(op_url, ca, a.reviews).items():
                d = [x * 1000 for x in samples]
                rows.append(f"| webhook round trip: {name} | {percentile(d, 50):.2f} ms | {percentile(d, 99):.2f} ms | {max(d):.2f} ms | {len(d)} |")
        finally:
            op.send_signal(signal.SIGTERM)
            op.wait(10)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}"
    text = "\n".join([
        "# Control plane",
        "",
        f"Run {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {machine}: `bench/control_plane.sh`.",
        "The API server is the tests' Python emulator, so the propagation figures include its watch latency.",
        "",
        "| what | p50 | p99 | max | samples |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ])
    print(text)
    Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
