"""A real Kubernetes control plane for the cluster suites (tests/cluster/up.sh): etcd,
kube-apiserver and kube-controller-manager built from their own modules, in a network namespace
of their own; `kubectl` and `helm` from the same builds; and the operator run outside the
cluster, authenticated as the chart's ServiceAccount, reached by the API server through the
chart's Service and an EndpointSlice to the host end of the namespace's veth pair.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import ROOT, SAMPLE, free_port, wait_for_port
from rpc import HEADERS, call, messages

UP = ROOT / "tests" / "cluster" / "up.sh"
DOWN = ROOT / "tests" / "cluster" / "down.sh"
CHART = ROOT / "charts" / "tollgate"
NAMESPACE = "tollgate-system"
RELEASE = "tollgate"
# The port the chart's Service is routed to (on this side of the veth pair).
OPERATOR_PORT = 8443


def eventually(probe, what: str = "condition", timeout: float = 30.0):
    """Polls until probe() returns something truthy (a correctness wait, not a timing
    assertion); a probe that raises has not held yet."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except (AssertionError, RuntimeError, KeyError, TypeError, IndexError, httpx.HTTPError) as e:
            last = e
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    return env


@dataclass
class ControlPlane:
    dir: Path
    env: dict[str, str]
    install_output: str = ""

    @classmethod
    def start(cls, dir: Path) -> "ControlPlane":
        out = subprocess.run([str(UP), str(dir)], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"tests/cluster/up.sh failed:\n{out.stdout}\n{out.stderr}")
        return cls(dir, read_env(dir / "env"))

    def stop(self) -> None:
        subprocess.run([str(DOWN), str(self.dir)], capture_output=True)

    @property
    def bin(self) -> Path:
        return Path(self.env["TOLLGATE_CLUSTER_BIN"])

    @property
    def host_ip(self) -> str:
        return self.env["TOLLGATE_CLUSTER_HOST_IP"]

    def run(self, tool: str, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(
            [str(self.bin / tool), *args],
            input=input,
            capture_output=True,
            text=True,
            env={**os.environ, "KUBECONFIG": self.env["KUBECONFIG"], "HELM_CACHE_HOME": str(self.dir / "helm")},
            cwd=ROOT,
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({out.returncode}):\n{out.stderr}{out.stdout}")
        return out

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("kubectl", *args, input=input, check=check)

    def crd_established(self, name: str, timeout: float = 30) -> None:
        """Waits until CRD `name` is Established. (`kubectl wait` fails outright, rather than
        waiting, when it reads the CRD before the API server has written any condition.)"""
        deadline = time.monotonic() + timeout
        query = '{.status.conditions[?(@.type=="Established")].status}'
        while self.kubectl("get", f"crd/{name}", "-o", f"jsonpath={query}", check=False).stdout.strip() != "True":
            assert time.monotonic() < deadline, f"CRD {name} not Established after {timeout}s"
            time.sleep(0.1)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("helm", *args, check=check)

    def get(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", "-o", "json", *args).stdout)

    def apply(self, manifest: dict | str, check: bool = True) -> subprocess.CompletedProcess:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        return self.kubectl("apply", "-f", "-", input=text, check=check)

    def install(self, *args: str) -> str:
        """`helm install` of the chart, its output returned."""
        out = self.helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace", *args)
        return out.stderr + out.stdout

    def namespace(self, name: str, **labels: str) -> None:
        """A namespace whose `default` ServiceAccount exists (a pod cannot be created before)."""
        self.kubectl("create", "namespace", name)
        if labels:
            self.kubectl("label", "namespace", name, *(f"{k}={v}" for k, v in labels.items()))
        eventually(lambda: self.kubectl("-n", name, "get", "serviceaccount", "default", check=False).returncode == 0,
                   what=f"the service-account controller made {name}/default")

    def ca(self) -> str:
        """The CA the operator's serving certificate chains to (its Secret's ca.crt)."""
        secret = self.get("-n", NAMESPACE, "secret", "tollgate-operator-tls")
        return base64.b64decode(secret["data"]["ca.crt"]).decode()

    def pod_token(self, namespace: str, pod: str) -> str:
        """The token a kubelet projects into the sidecar: bound to the pod, audience tollgate."""
        stored = self.get("-n", namespace, "pod", pod)
        return self.kubectl(
            "-n", namespace, "create", "token", stored["spec"].get("serviceAccountName", "default"),
            "--audience", "tollgate", "--bound-object-kind", "Pod", "--bound-object-name", pod,
            "--bound-object-uid", stored["metadata"]["uid"],
        ).stdout.strip()

    def token_kubeconfig(self, namespace: str, service_account: str, path: Path) -> Path:
        """A kubeconfig holding a token the API server issues to a ServiceAccount: a process
        using it has exactly that account's RBAC."""
        token = self.kubectl("-n", namespace, "create", "token", service_account, "--duration", "2h").stdout.strip()
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "c",
                            "cluster": {
                                "server": self.env["TOLLGATE_CLUSTER_API"],
                                "certificate-authority": str(self.dir / "pki" / "ca.crt"),
                            },
                        }
                    ],
                    "users": [{"name": "u", "user": {"token": token}}],
                    "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "c",
                }
            )
        )
        return path

    def route_service_to_host(self, namespace: str, service: str, port_name: str, port: int) -> None:
        """Points a Service at this side of the veth pair, as the endpoint-slice controller points
        it at a pod's IP: the API server then calls the Service the way it does in a cluster."""
        self.apply(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{service}-tests",
                    "namespace": namespace,
                    "labels": {
                        "kubernetes.io/service-name": service,
                        "endpointslice.kubernetes.io/managed-by": "tollgate-tests",
                    },
                },
                "addressType": "IPv4",
                "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
                "endpoints": [{"addresses": [self.host_ip], "conditions": {"ready": True}}],
            }
        )

    def deployment_env(self, namespace: str, name: str) -> dict[str, str]:
        """The environment the chart gives a Deployment's first container (literal values)."""
        deploy = self.get("-n", namespace, "deployment", name)
        container = deploy["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def policy(name: str, spec: dict, namespace: str = "default") -> dict:
    return {"apiVersion": "tollgate.dev/v1alpha1", "kind": "McpPolicy", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def admission_review(obj: dict, resource: str = "pods", kind: str = "Pod", group: str = "", version: str = "v1") -> dict:
    """An AdmissionReview of a CREATE of `obj`, as the API server sends it."""
    gvk, gvr = {"group": group, "version": version, "kind": kind}, {"group": group, "version": version, "resource": resource}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()), "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
        "namespace": obj["metadata"]["namespace"], "operation": "CREATE", "userInfo": {"username": "kubernetes-admin"},
        "object": obj, "oldObject": None, "dryRun": False,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    }}


def mcp_pod(name: str, ns: str, labels: dict | None = None, annotations: dict | None = None,
            service_account: str | None = None) -> dict:
    """A pod serving MCP on a container port named `mcp`."""
    spec: dict = {"containers": [{"name": "server", "image": "example/mcp:1", "ports": [{"name": "mcp", "containerPort": 8000}]}]}
    if service_account:
        spec["serviceAccountName"] = service_account
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}, "annotations": annotations or {}},
        "spec": spec,
    }


# ---------------------------------------------------------------------------------------------
# The operator, run here as the chart runs it in the cluster


@dataclass
class Operator:
    name: str
    port: int
    host: str
    admin: str
    proc: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def client(self, ca: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=ssl.create_default_context(cadata=ca), timeout=10)

    def ready(self) -> bool:
        return httpx.get(f"{self.admin}/readyz").status_code == 200

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait()


def start_operator(cluster: ControlPlane, bins: Path, tmp: Path, name: str, port: int = OPERATOR_PORT,
                   *args: str, ready: bool = True, **env: str) -> Operator:
    """The operator as the chart deploys it, but as a process here: the Deployment's own
    environment, a token the API server issued to the chart's ServiceAccount (so the chart's
    RBAC is all it may do), and `name` as its pod name (its identity in the Lease). Returned
    once ready, or with `ready=False` once it serves /readyz."""
    kubeconfig = cluster.token_kubeconfig(NAMESPACE, "tollgate-operator", tmp / f"{name}.kubeconfig")
    admin = free_port()
    env = {
        **cluster.deployment_env(NAMESPACE, "tollgate-operator"),
        "KUBECONFIG": str(kubeconfig),
        "POD_NAMESPACE": NAMESPACE,
        "POD_NAME": name,
        "TOLLGATE_LISTEN": f"{cluster.host_ip}:{port}",
        "TOLLGATE_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        # Sidecars here reach the stream by this address, not the Service's DNS name.
        "TOLLGATE_EXTRA_SANS": cluster.host_ip,
        **env,
    }
    log = tmp / f"{name}.log"
    proc = subprocess.Popen([str(bins / "tollgate-operator"), *args], env={**os.environ, **env},
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    op = Operator(name, port, cluster.host_ip, f"http://127.0.0.1:{admin}", proc, log)
    try:
        wait_for_port(admin, proc, log)
        eventually(lambda: not ready or op.ready() or proc.poll() is not None, what=f"{name} is ready")
        assert proc.poll() is None, log.read_text()[-4000:]
    except BaseException:
        op.stop(signal.SIGKILL)
        raise
    return op


# ---------------------------------------------------------------------------------------------
# A sidecar, run here as injection runs it in the pod


@dataclass
class Sidecar:
    url: str
    admin: str
    proc: subprocess.Popen
    log: Path
    upstream_port: int = 0

    def tools(self) -> list[str]:
        """The names of the tools a tools/list through the sidecar shows."""
        h = {**HEADERS, "mcp-protocol-version": "2025-06-18"}
        answer = messages(httpx.post(f"{self.url}/mcp", headers=h, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))[0]
        assert "result" in answer, answer
        return sorted(t["name"] for t in answer["result"]["tools"])

    def call(self, tool: str, args: dict | None = None, token: str | None = None) -> dict:
        h = {**HEADERS, "mcp-protocol-version": "2025-06-18"}
        if token:
            h["authorization"] = f"Bearer {token}"
        return messages(httpx.post(f"{self.url}/mcp", headers=h, json=call(1, tool, args or {"title": "t", "path": "README.md", "name": "x"})))[0]

    def allows(self, tool: str, **kw) -> bool:
        return "result" in self.call(tool, **kw)

    def ready(self) -> bool:
        return httpx.get(f"{self.admin}/readyz").status_code == 200


@pytest.fixture
def sidecar(procs, debug_bins, tmp_path):
    """A real sample MCP server behind a real sidecar that follows the operator's stream."""

    def start(op_url: str, ca: str, token: str, wait_ready: bool = True, server: Path = SAMPLE,
              server_args: tuple[str, ...] = ("--stateless", "--json"), upstream_port: int | None = None) -> Sidecar:
        """`server` run with `server_args` as its MCP server, or the one already on `upstream_port`."""
        server_port = upstream_port or free_port()
        if not upstream_port:
            procs.start(f"server-{server_port}", [sys.executable, str(server), "--port", str(server_port), *server_args], server_port)
        port, admin = free_port(), free_port()
        (tmp_path / "ca.pem").write_text(ca)
        token_file = tmp_path / f"token-{port}"
        token_file.write_text(token)
        p = procs.start(f"sidecar-{port}", [
            str(debug_bins / "tollgate"), "proxy", "--upstream", f"http://127.0.0.1:{server_port}",
            "--control-plane", op_url, "--control-plane-ca", str(tmp_path / "ca.pem"), "--token-file", str(token_file),
            "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{admin}",
        ], port, env={"TOLLGATE_LOG": "info"})
        wait_for_port(admin, p.proc, p.log)
        s = Sidecar(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}", p.proc, p.log, server_port)
        if wait_ready:
            eventually(s.ready, what=f"sidecar ready\n{p.log.read_text()[-3000:]}")
        return s

    return start
