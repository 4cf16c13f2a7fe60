"""The pod boundary in redirect mode, on real network namespaces: nothing reaches the MCP server
except through the sidecar.

A pod-like namespace holds a real MCP server (the recording one, serving every address of both
families on :8000, as a server in a pod does) and the real sidecar, run as its own UID; then
`tollgate init-redirect` installs the rules, as the injected init container does. A client in
another namespace, joined by a veth pair as a pod is to the rest of the cluster, calls the
pod's addresses. The record the server keeps says what really ran, whatever anyone answered.

Each test runs on both iptables back ends (nft and legacy) and both families. A machine that
cannot make namespaces fails here, saying why.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from cluster import eventually
from conftest import ROOT, TESTS

APP_PORT, PROXY_PORT, ADMIN_PORT = 8000, 15480, 15481
# The sidecar's UID and GID, as injection runs it (two numbers here, so a test shows both count).
PROXY_UID, PROXY_GID = 2417, 2418
APP_UID = 1000  # another container of the pod
PYTHON = TESTS / ".venv" / "bin" / "python"
POLICY = """\
apiVersion: tollgate.dev/v1alpha1
kind: McpPolicy
metadata: { name: boundary, namespace: default }
spec:
  default: deny
  tools:
    read_file: { rules: [] }
    create_issue: { rules: [] }
    delete_repository:
      rules:
        - { name: never, action: deny, onDeny: Repository deletion is not permitted }
"""
# The app's probes as injection hands them to the sidecar (redirect mode moves them).
APP_PROBES = {
    "server/readiness": {"httpGet": {"port": APP_PORT, "path": "/health", "timeoutSeconds": 1}},
    "server/liveness": {"tcpSocket": {"port": APP_PORT, "timeoutSeconds": 1}},
}
DENIED = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "delete_repository", "arguments": {"name": "prod"}}}


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr}{out.stdout}")
    return out


class Pod:
    """A pod's network namespace, a client's, and the veth pair between them."""

    def __init__(self, backend: str, tollgate: Path, ipv6_only: bool = False):
        n = random.randrange(1, 250)
        while Path(f"/run/netns/tgpod-{n}").exists():
            n = random.randrange(1, 250)
        self.ns, self.client, self.backend, self.tollgate = f"tgpod-{n}", f"tgcli-{n}", backend, tollgate
        self.ipv6_only = ipv6_only
        self.v4, self.v6 = f"10.213.{n}.2", f"fd00:213:{n}::2"
        # Readable by the sidecar's UID (pytest's own temporary directories are not).
        self.dir = Path(tempfile.mkdtemp(prefix="tollgate-pod-"))
        self.dir.chmod(0o755)
        self.record = self.dir / "runs.jsonl"
        self.procs: list[subprocess.Popen] = []
        try:
            sh("ip", "netns", "add", self.ns)
            sh("ip", "netns", "add", self.client)
        except RuntimeError as e:
            raise RuntimeError(f"this machine cannot make network namespaces (the boundary tests need root and ip netns): {e}")
        pod_if, client_if = f"tgp{n}", f"tgc{n}"
        sh("ip", "link", "add", pod_if, "type", "veth", "peer", "name", client_if)
        for ns, dev, last in [(self.ns, pod_if, 2), (self.client, client_if, 1)]:
            sh("ip", "link", "set", dev, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"10.213.{n}.{last}/24", "dev", dev)
            sh("ip", "-n", ns, "addr", "add", f"fd00:213:{n}::{last}/64", "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def start(self, name: str, *argv: str) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "ab")
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], stdout=log, stderr=log, cwd=ROOT)
        self.procs.append(proc)
        return proc

    def listening(self) -> set[int]:
        """The TCP ports something in the pod listens on (any address)."""
        out = sh("ip", "netns", "exec", self.ns, "ss", "-ltnH").stdout
        return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}

    def wait_for(self, port: int, proc: subprocess.Popen, name: str) -> None:
        deadline = time.monotonic() + 30
        while port not in self.listening():
            assert proc.poll() is None, (self.dir / f"{name}.log").read_text()
            assert time.monotonic() < deadline, f"{name} does not listen on {port}"
            time.sleep(0.1)

    def up(self) -> None:
        """The server, then the sidecar (as its own UID), then the rules: a pod's start order."""
        server = self.start("server", str(PYTHON), str(TESTS / "e2e" / "recording_server.py"), "--port", str(APP_PORT),
                            "--host", "::", "--json", "--stateless", "--record", str(self.record),
                            *(["--ipv6-only"] if self.ipv6_only else []))
        self.wait_for(APP_PORT, server, "server")
        policy = self.dir / "policy.yaml"
        policy.write_text(POLICY)
        policy.chmod(0o644)
        sidecar = self.start("sidecar", "setpriv", "--reuid", str(PROXY_UID), "--regid", str(PROXY_GID), "--clear-groups", "--",
                             str(self.tollgate), "proxy", "--upstream", f"http://localhost:{APP_PORT}", "--policy", str(policy),
                             "--listen", f"[::]:{PROXY_PORT}", "--metrics-listen", f"0.0.0.0:{ADMIN_PORT}",
                             "--app-probes", json.dumps(APP_PROBES))
        self.wait_for(ADMIN_PORT, sidecar, "sidecar")
        deadline = time.monotonic() + 30
        while sh("ip", "netns", "exec", self.ns, "curl", "-sf", f"http://127.0.0.1:{ADMIN_PORT}/readyz", check=False).returncode:
            assert time.monotonic() < deadline, (self.dir / "sidecar.log").read_text()
            time.sleep(0.1)
        print(self.redirect().stdout)

    def redirect(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.ns, str(self.tollgate), "init-redirect", "--port", str(APP_PORT),
                  "--proxy-port", str(PROXY_PORT), "--proxy-uid", str(PROXY_UID), "--proxy-gid", str(PROXY_GID),
                  "--backend", self.backend, *argv, check=check)

    def rules(self, family: str = "4") -> list[str]:
        save = f"ip{'' if family == '4' else '6'}tables-{self.backend}-save"
        return [line for line in sh("ip", "netns", "exec", self.ns, save).stdout.splitlines() if "TOLLGATE" in line]

    def delete_rules(self, chains=("TOLLGATE_INBOUND", "TOLLGATE_LOCAL", "TOLLGATE_GUARD")) -> None:
        for binary in (f"iptables-{self.backend}", f"ip6tables-{self.backend}"):
            for chain in chains:
                table = "filter" if chain == "TOLLGATE_GUARD" else "nat"
                sh("ip", "netns", "exec", self.ns, binary, "-t", table, "-F", chain)

    def post(self, host: str, port: int, body: dict, ns: str | None = None, uid: int | None = None,
             gid: int | None = None) -> tuple[int, str]:
        """A raw JSON-RPC POST with curl, from the client's namespace (or as `uid` and `gid`,
        default the UID, inside the pod); (0, why) when no connection was made."""
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/mcp"
        argv = ["ip", "netns", "exec", ns or self.client]
        if uid is not None:
            argv += ["setpriv", "--reuid", str(uid), "--regid", str(uid if gid is None else gid), "--clear-groups", "--"]
        argv += ["curl", "-s", "-m", "3", "-o", "-", "-w", "\n%{http_code}", "-X", "POST", url,
                 "-H", "content-type: application/json", "-H", "accept: application/json, text/event-stream",
                 "-H", "mcp-protocol-version: 2025-06-18", "--data-binary", json.dumps(body)]
        out = sh(*argv, check=False)
        text, _, code = out.stdout.rpartition("\n")
        return (int(code) if code.isdigit() else 0), text or out.stderr

    def ran(self, tool: str) -> list[dict]:
        """What the server really ran."""
        time.sleep(0.2)
        runs = [json.loads(line) for line in self.record.read_text().splitlines() if line.strip()]
        return [r for r in runs if r["tool"] == tool]

    def down(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        for ns in (self.ns, self.client):
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(params=["nft", "legacy"])
def pod(request, tollgate_bin):
    p = Pod(request.param, tollgate_bin)
    try:
        p.up()
        yield p
    finally:
        p.down()


@pytest.fixture
def ipv6_only_pod(tollgate_bin):
    """The app bound to `::` for IPv6 alone, as Python's asyncio binds it."""
    p = Pod("nft", tollgate_bin, ipv6_only=True)
    try:
        p.up()
        yield p
    finally:
        p.down()


# The Python SDK's client, run in the client's namespace: list tools, then call two.
SDK_CLIENT = (
    "import json, sys; sys.path.insert(0, %r); from mcp_client import session; "
    "print(json.dumps(session(sys.argv[1], '2026-07-28', [('read_file', {'path': 'a'}), ('delete_repository', {'name': 'prod'})])))"
) % str(TESTS / "e2e")


@pytest.mark.parametrize("family", ["4", "6"])
def test_boundary_a_client_calling_the_pods_mcp_port_gets_the_policys_decisions(pod, family):
    host = pod.v4 if family == "4" else pod.v6
    url = f"http://{'[' + host + ']' if family == '6' else host}:{APP_PORT}/mcp"
    out = sh("ip", "netns", "exec", pod.client, str(PYTHON), "-c", SDK_CLIENT, url, timeout=60)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["tools"] == ["create_issue", "read_file"], seen
    assert seen["calls"][0] == ["ok", "contents of a"]
    assert seen["calls"][1][0] == "denied" and "Repository deletion is not permitted" in seen["calls"][1][1], seen
    assert [r["args"] for r in pod.ran("read_file")] == [{"path": "a"}]
    assert pod.ran("delete_repository") == [], "the denied call never reached the server"


def test_boundary_no_port_of_the_pod_reaches_the_server_around_the_sidecar(pod):
    ports = pod.listening()
    assert {APP_PORT, PROXY_PORT, ADMIN_PORT} <= ports, ports
    for host in (pod.v4, pod.v6):
        for port in sorted(ports):
            status, text = pod.post(host, port, DENIED)
            assert "deleted prod" not in text, (host, port, status, text)
        status, text = pod.post(host, APP_PORT, DENIED)
        assert status == 200 and "Repository deletion is not permitted" in text, (host, status, text)
    # Another container of the pod (another UID) dialing the app on loopback or the pod's own
    # address is sent through the sidecar too.
    for host in ("127.0.0.1", "::1", pod.v4, pod.v6):
        status, text = pod.post(host, APP_PORT, DENIED, ns=pod.ns, uid=APP_UID)
        assert status == 200 and "Repository deletion is not permitted" in text, (host, status, text)
    assert pod.ran("delete_repository") == [], "nothing reached the server around the sidecar"


def test_boundary_the_sidecars_uid_alone_does_not_go_around_it_nor_its_gid_alone(pod):
    # Only a process with both the sidecar's UID and GID reaches the app directly: a container
    # whose image defaults to the UID (injection cannot see that) is still sent through it.
    for uid, gid in [(PROXY_UID, APP_UID), (APP_UID, PROXY_GID)]:
        for host in ("127.0.0.1", "::1", pod.v4):
            status, text = pod.post(host, APP_PORT, DENIED, ns=pod.ns, uid=uid, gid=gid)
            assert status == 200 and "Repository deletion is not permitted" in text, (uid, gid, host, status, text)
    assert pod.ran("delete_repository") == []
    # Both: the sidecar's own way to the app (what the exemption is for).
    status, text = pod.post("127.0.0.1", APP_PORT, DENIED, ns=pod.ns, uid=PROXY_UID, gid=PROXY_GID)
    assert "deleted prod" in text, (status, text)


UDP_SINK = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
with open(sys.argv[2], "ab", buffering=0) as out:
    while True:
        out.write(s.recvfrom(65535)[0] + b"\\n")
"""


def test_boundary_udp_to_the_mcp_port_from_outside_is_dropped_by_the_guard(pod):
    got = pod.dir / "udp.txt"
    got.touch()
    pod.procs.append(subprocess.Popen(["ip", "netns", "exec", pod.ns, str(PYTHON), "-c", UDP_SINK, str(APP_PORT), str(got)]))
    eventually(lambda: sh("ip", "netns", "exec", pod.ns, "ss", "-Huln", f"sport = :{APP_PORT}").stdout.strip(),
               what="the app's UDP socket is bound")

    def send(host: str, what: str) -> None:
        family = "socket.AF_INET6" if ":" in host else "socket.AF_INET"
        sh("ip", "netns", "exec", pod.client, str(PYTHON), "-c",
           f"import socket; socket.socket({family}, socket.SOCK_DGRAM).sendto(b{what!r}, ({host!r}, {APP_PORT}))")

    for host in (pod.v4, pod.v6):
        send(host, "around")
    time.sleep(0.5)
    assert got.read_text() == "", "no datagram reached the app's port from outside"
    # Without the guard, the same datagram arrives: the test proves something.
    pod.delete_rules(chains=("TOLLGATE_GUARD",))
    send(pod.v4, "unguarded")
    eventually(lambda: "unguarded" in got.read_text(), what="the unguarded datagram arrived")


def test_boundary_without_the_rules_the_same_call_reaches_the_server_so_the_tests_prove_something(pod):
    pod.delete_rules()
    status, text = pod.post(pod.v4, APP_PORT, DENIED)
    assert status == 200 and "deleted prod" in text, (status, text)
    assert len(pod.ran("delete_repository")) == 1, "with no rules the server is reachable: the other tests would fail"
    # The guard alone (the redirect gone) drops what would go around the sidecar.
    pod.redirect()
    pod.delete_rules(chains=("TOLLGATE_INBOUND",))
    for host in (pod.v4, pod.v6):
        status, _ = pod.post(host, APP_PORT, DENIED)
        assert status == 0, "dropped, not answered"
    assert len(pod.ran("delete_repository")) == 1


def test_boundary_init_redirect_is_idempotent_and_prints_what_it_installed(pod):
    first = {"4": pod.rules("4"), "6": pod.rules("6")}
    guard = [r for r in first["4"] if r.startswith("-A TOLLGATE_GUARD")]
    assert ["-p tcp" in guard[0], "-p udp" in guard[1]] == [True, True], guard
    # Three jumps, the inbound redirect, the sidecar's exemption and the local redirect, and the
    # guard for TCP, UDP and (where this kernel matches it) SCTP.
    sctp = any("-p sctp" in r for r in guard)
    assert len([r for r in first["4"] if r.startswith("-A ")]) == 8 + sctp, first["4"]
    out = pod.redirect()
    assert f"-t nat -A TOLLGATE_INBOUND -p tcp --dport {APP_PORT} -j REDIRECT --to-ports {PROXY_PORT}" in out.stdout
    assert f"ip6tables-{pod.backend}" in out.stdout, "IPv6 is on in the pod, so its rules are installed too"
    assert {"4": pod.rules("4"), "6": pod.rules("6")} == first, "a second run leaves one set"
    status, text = pod.post(pod.v4, APP_PORT, DENIED)
    assert "Repository deletion is not permitted" in text


def test_boundary_init_redirect_without_net_admin_fails_naming_the_capability(pod):
    out = sh("setpriv", "--bounding-set=-net_admin,-net_raw", "--", "ip", "netns", "exec", pod.ns, str(pod.tollgate),
             "init-redirect", "--port", "9000", "--proxy-port", str(PROXY_PORT), "--proxy-uid", str(PROXY_UID),
             "--proxy-gid", str(PROXY_GID),
             "--backend", pod.backend, check=False)
    assert out.returncode != 0
    assert "needs the NET_ADMIN and NET_RAW capabilities" in out.stderr, out.stderr
    assert not any("9000" in r for r in pod.rules("4")), "nothing was half-installed"


def test_boundary_the_kubelets_probes_reach_the_app_through_the_sidecars_admin_port(pod):
    def probe(kind: str) -> tuple[int, str]:
        out = sh("ip", "netns", "exec", pod.client, "curl", "-s", "-m", "3", "-w", "\n%{http_code}",
                 f"http://{pod.v4}:{ADMIN_PORT}/app-health/server/{kind}", check=False)
        text, _, code = out.stdout.rpartition("\n")
        return int(code or 0), text.strip()

    assert probe("readiness") == (200, "the app answered GET /health with HTTP 200"), "the sidecar's own UID reaches the app"
    assert probe("liveness")[0] == 200
    assert probe("startup")[0] == 404, "a probe injection did not hand over is not a pass"
    server = pod.procs[0]
    server.terminate()
    server.wait(10)
    status, text = probe("readiness")
    assert status == 503 and "cannot connect to the app on port 8000" in text, (status, text)
    assert probe("liveness")[0] == 503


def test_boundary_an_app_bound_for_ipv6_alone_is_reached_through_the_sidecar_from_either_family(ipv6_only_pod):
    pod = ipv6_only_pod
    allowed = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "read_file", "arguments": {"path": "a"}}}
    for host in (pod.v4, pod.v6):
        status, text = pod.post(host, APP_PORT, allowed)
        assert status == 200 and "contents of a" in text, (host, status, text)
        status, text = pod.post(host, APP_PORT, DENIED)
        assert "Repository deletion is not permitted" in text, (host, status, text)
    assert len(pod.ran("read_file")) == 2 and pod.ran("delete_repository") == []
