"""The control plane's costs on a real one (tests/cluster): how long a policy change takes to be
in force in 1, 100 and 1,000 sidecars, what the operator costs with 1,000 pods and 100 policies,
and how long its webhooks take.

    bench/control_plane.sh [--sidecars 1,100,1000] [--changes 20] [--reviews 2000]

It starts etcd, kube-apiserver and kube-controller-manager (tests/cluster/up.sh), installs the
chart with helm, and runs the release operator here as the chart's ServiceAccount, the chart's
Service routed to it, as the cluster suites do. Then:
  - objects: 1,000 pods created through the API server (so through the mutating webhook) and
    100 McpPolicies each selecting 10 of them (through the validating webhook), plus one policy
    selecting them all, the one the propagation runs change;
  - operator: its RSS and CPU once those exist, idle, and at the end (peak RSS too);
  - propagation: release sidecars with a TokenRequest token bound to their pod follow the
    stream, 1, then 100, then 1,000 of them; each change is a PATCH to the API server (which
    calls the validating webhook), and a sidecar has the change in force when it logs the new
    revision (its log line's timestamp, the same clock): from then on every call sees it;
  - webhooks: AdmissionReviews POSTed over one kept-alive TLS connection, as the API server
    does, each round trip timed from Python (the client's own cost is in it; the same client's
    round trip to a 404 route is shown as the floor).
Prints a table and writes bench/results/control-plane.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
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
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import httpx  # noqa: E402
from cluster import NAMESPACE, OPERATOR_PORT, ControlPlane, admission_review, mcp_pod, policy, start_operator  # noqa: E402
from conftest import free_port  # noqa: E402

RELEASE = ROOT / "target" / "release"
RECEIVED = re.compile(r"^(\S+Z)\s+INFO\s+\S+: policy received revision=(\d+)")
NS = "bench"
PODS, POLICIES = 1000, 100
TICK = os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def stamp(line: str) -> float:
    return datetime.datetime.fromisoformat(RECEIVED.match(line).group(1).replace("Z", "+00:00")).timestamp()


class Api:
    """The API server as the admin, one kept-alive connection per thread."""

    def __init__(self, cp: ControlPlane):
        pki = cp.dir / "pki"
        self.url = cp.env["TOLLGATE_CLUSTER_API"]
        self.tls = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.tls.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self.local = threading.local()

    def client(self) -> httpx.Client:
        if not hasattr(self.local, "c"):
            self.local.c = httpx.Client(base_url=self.url, timeout=60, verify=self.tls)
        return self.local.c

    def send(self, method: str, path: str, body: dict, content_type: str = "application/json") -> dict:
        r = self.client().request(method, path, json=body, headers={"content-type": content_type})
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()


class Process:
    """A process's RSS and CPU time, from /proc."""

    def __init__(self, pid: int):
        self.pid = pid

    def rss_mib(self, field: str = "VmRSS") -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise KeyError(field)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK


def create_objects(api: Api, pool: concurrent.futures.Executor) -> dict[str, float]:
    api.send("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                             "metadata": {"name": NS, "labels": {"tollgate.dev/injection": "enabled"}}})
    while api.client().get(f"/api/v1/namespaces/{NS}/serviceaccounts/default").status_code != 200:
        time.sleep(0.1)
    took = {}
    t = time.monotonic()
    pods = [mcp_pod(f"mcp-{i}", NS, labels={"app": "mcp", "shard": str(i % POLICIES)}) for i in range(PODS)]
    stored = list(pool.map(lambda p: api.send("POST", f"/api/v1/namespaces/{NS}/pods", p), pods))
    assert all(s["metadata"]["labels"].get("tollgate.dev/injected") == "true" for s in stored), "every pod was injected"
    took["pods"] = time.monotonic() - t
    t = time.monotonic()
    policies = [policy(f"shard-{k}", {"selector": {"matchLabels": {"shard": str(k)}}, "default": "allow", "tools": {
        f"tool_{k}_{j}": {"rules": [{"name": "cap", "conditions": [{"path": "args.n", "op": "lte", "value": 100}]}]}
        for j in range(5)}}, NS) for k in range(POLICIES)]
    policies.append(policy("toggle", {"default": "allow", "tools": {"create_issue": {"rules": []}}}, NS))
    path = f"/apis/tollgate.dev/v1alpha1/namespaces/{NS}/mcppolicies"
    list(pool.map(lambda p: api.send("POST", path, p), policies))
    took["policies"] = time.monotonic() - t
    return took


def token(api: Api, i: int) -> str:
    pod = api.client().get(f"/api/v1/namespaces/{NS}/pods/mcp-{i}").json()
    review = api.send("POST", f"/api/v1/namespaces/{NS}/serviceaccounts/default/token", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": ["tollgate"], "expirationSeconds": 7200,
                 "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}},
    })
    return review["status"]["token"]


class Sidecars:
    """Release sidecars, each with its pod's token, following the operator's stream."""

    def __init__(self, api: Api, op_url: str, ca: str, tmp: Path, pool: concurrent.futures.Executor):
        self.api, self.op_url, self.tmp, self.pool = api, op_url, tmp, pool
        (tmp / "ca.pem").write_text(ca)
        self.running: list[tuple[subprocess.Popen, Path, int]] = []
        self.frozen = False  # the state of the policy every change flips

    def spawn(self, i: int) -> tuple[subprocess.Popen, Path, int]:
        admin = free_port()
        log = self.tmp / f"sidecar-{i}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [str(RELEASE / "tollgate"), "proxy", "--upstream", "http://127.0.0.1:9", "--control-plane", self.op_url,
                 "--control-plane-ca", str(self.tmp / "ca.pem"), "--token-file", str(self.tmp / f"token-{i}"),
                 "--listen", f"127.0.0.1:{free_port()}", "--metrics-listen", f"127.0.0.1:{admin}"],
                stdout=subprocess.DEVNULL, stderr=out, env={"TOLLGATE_LOG": "info", "PATH": os.environ["PATH"]},
            )
        return proc, log, admin

    def grow(self, n: int) -> None:
        new = range(len(self.running), n)
        tokens = list(self.pool.map(lambda i: token(self.api, i), new))
        for i, tok in zip(new, tokens):
            (self.tmp / f"token-{i}").write_text(tok)
            self.running.append(self.spawn(i))
        deadline = time.monotonic() + 300
        with httpx.Client(timeout=5) as c:
            for i in range(n):
                while True:
                    proc, log, admin = self.running[i]
                    if proc.poll() is not None:
                        # Two sidecars can be handed the same free port before either binds it.
                        assert "in use" in log.read_text(), log.read_text()[-2000:]
                        self.running[i] = self.spawn(i)
                        continue
                    try:
                        if c.get(f"http://127.0.0.1:{admin}/readyz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, f"sidecar not ready:\n{log.read_text()[-2000:]}"
                    time.sleep(0.05)

    def received(self) -> list[list[str]]:
        return [[line for line in log.read_text().splitlines() if RECEIVED.match(line)] for _, log, _ in self.running]

    def propagate(self, changes: int) -> list[float]:
        """Changes the policy every sidecar follows `changes` times; the delay of each change to
        each sidecar, in seconds."""
        delays = []
        for c in range(changes):
            before = [len(lines) for lines in self.received()]
            self.frozen = not self.frozen
            rules = [{"name": "frozen", "action": "deny"}] if self.frozen else []
            t0 = time.time()
            self.api.send("PATCH", f"/apis/tollgate.dev/v1alpha1/namespaces/{NS}/mcppolicies/toggle",
                          {"spec": {"tools": {"create_issue": {"rules": rules}}}}, "application/merge-patch+json")
            pending = dict(enumerate(before))
            deadline = time.monotonic() + 60
            while pending:
                assert time.monotonic() < deadline, f"{len(pending)} sidecars never got change {c}"
                for i, seen in list(pending.items()):
                    lines = [line for line in self.running[i][1].read_text().splitlines() if RECEIVED.match(line)]
                    if len(lines) > seen:
                        delays.append(stamp(lines[seen]) - t0)
                        del pending[i]
                time.sleep(0.02)
            time.sleep(0.3)
        return delays

    def stop(self) -> None:
        for proc, _, _ in self.running:
            proc.send_signal(signal.SIGTERM)
        for proc, _, _ in self.running:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def webhooks(op, ca: str, reviews: int) -> dict[str, list[float]]:
    pod = admission_review(mcp_pod("bench-admission", NS))
    good = admission_review(kind="McpPolicy", resource="mcppolicies", group="tollgate.dev", version="v1alpha1", obj=policy("p", {"tools": {"run_query": {"rules": [
        {"name": "select only", "conditions": [{"path": "args.sql", "op": "regex", "value": "^SELECT"}]},
        {"name": "rate", "rateLimit": "100/minute"}]}}}, NS))
    out: dict[str, list[float]] = {"mutate (inject a pod)": [], "validate (a policy)": [], "floor (404 route)": []}
    with op.client(ca) as client:
        for _ in range(50):  # warm the connection and the allocator
            client.post("/mutate", json=pod)
        for _ in range(reviews):
            for name, path, body in [("mutate (inject a pod)", "/mutate", pod), ("validate (a policy)", "/validate", good),
                                     ("floor (404 route)", "/nothing", None)]:
                t = time.perf_counter()
                r = client.post(path, json=body) if body else client.get(path)
                out[name].append(time.perf_counter() - t)
                assert r.status_code in (200, 404), r.text
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sidecars", default="1,100,1000")
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--reviews", type=int, default=2000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "control-plane.md"))
    a = ap.parse_args()
    counts = [int(x) for x in a.sidecars.split(",")]
    assert max(counts) <= PODS, f"at most {PODS} sidecars (one per pod)"
    tmp = Path(tempfile.mkdtemp(prefix="tollgate-cp-"))
    cp = ControlPlane.start(tmp / "cluster")
    rows, notes = [], []
    pool = concurrent.futures.ThreadPoolExecutor(8)
    sidecars = None
    try:
        cp.install()
        cp.route_service_to_host(NAMESPACE, "tollgate-operator", "https", OPERATOR_PORT)
        op = start_operator(cp, RELEASE, tmp, "tollgate-operator-bench", OPERATOR_PORT, TOLLGATE_LOG="warn")
        proc = Process(op.proc.pid)
        api = Api(cp)
        rss0, cpu0 = proc.rss_mib(), proc.cpu_seconds()
        took = create_objects(api, pool)
        notes.append(f"{PODS:,} pods created through the mutating webhook in {took['pods']:.1f} s, "
                     f"{POLICIES + 1} policies through the validating webhook in {took['policies']:.1f} s (8 clients).")
        time.sleep(5)  # the index has caught up with every watch event
        t, c = time.monotonic(), proc.cpu_seconds()
        time.sleep(10)
        idle = (proc.cpu_seconds() - c) / (time.monotonic() - t)
        rows.append(f"| operator RSS: started, no objects | {rss0:.1f} MiB | | | |")
        rows.append(f"| operator RSS: {PODS:,} pods, {POLICIES + 1} policies, no sidecar | {proc.rss_mib():.1f} MiB | | | |")
        rows.append(f"| operator CPU while the objects were created | {proc.cpu_seconds() - cpu0:.1f} s | | | |")
        rows.append(f"| operator CPU idle, {PODS:,} pods, {POLICIES + 1} policies | {100 * idle:.2f} % of a core | | | |")

        sidecars = Sidecars(api, op.url, cp.ca(), tmp, pool)
        for n in counts:
            c = proc.cpu_seconds()
            sidecars.grow(n)
            connect_cpu = proc.cpu_seconds() - c
            c, t = proc.cpu_seconds(), time.monotonic()
            d = [x * 1000 for x in sidecars.propagate(a.changes if n < 1000 else max(1, a.changes // 2))]
            per_change = (proc.cpu_seconds() - c) / (len(d) / n)
            rows.append(f"| policy change -> in force, {n:,} sidecar(s) | {percentile(d, 50):.0f} ms | {percentile(d, 99):.0f} ms | "
                        f"{max(d):.0f} ms | {len(d):,} |")
            notes.append(f"{n:,} sidecar(s): connecting took the operator {connect_cpu:.2f} s of CPU; each change "
                         f"{1000 * per_change:.0f} ms of CPU; its RSS then {proc.rss_mib():.1f} MiB.")
        t, c = time.monotonic(), proc.cpu_seconds()
        time.sleep(10)
        rows.append(f"| operator CPU idle, {max(counts):,} streams open | {100 * (proc.cpu_seconds() - c) / (time.monotonic() - t):.2f} % of a core | | | |")
        rows.append(f"| operator RSS: peak over the run | {proc.rss_mib('VmHWM'):.1f} MiB | | | |")
        sidecar_rss = statistics.median(Process(p.pid).rss_mib() for p, _, _ in sidecars.running)
        notes.append(f"A sidecar following the stream: {sidecar_rss:.1f} MiB RSS (median).")
        sidecars.stop()
        sidecars = None
        for name, samples in webhooks(op, cp.ca(), a.reviews).items():
            d = [x * 1000 for x in samples]
            rows.append(f"| webhook round trip: {name} | {percentile(d, 50):.2f} ms | {percentile(d, 99):.2f} ms | "
                        f"{max(d):.2f} ms | {len(d):,} |")
        op.stop()
    finally:
        if sidecars:
            sidecars.stop()
        pool.shutdown()
        cp.stop()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}"
    text = "\n".join([
        "# Control plane",
        "",
        f"Run {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {machine}: `bench/control_plane.sh {' '.join(sys.argv[1:])}`.",
        "A real kube-apiserver, etcd and kube-controller-manager (tests/cluster), the chart installed by helm, the release",
        "operator run as the chart's ServiceAccount, release sidecars. Everything shares the machine's cores.",
        "",
        "| what | value / p50 | p99 | max | samples |",
        "|---|---|---|---|---|",
        *rows,
        "",
        *[f"- {n}" for n in notes],
        "",
    ])
    print(text)
    Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
