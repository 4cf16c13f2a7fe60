"""A real Kubernetes control plane for the cluster suites (tests/cluster/up.sh): etcd,
kube-apiserver and kube-controller-manager built from their own modules, in a network namespace
of their own; `kubectl` and `helm` from the same builds; and the operator run outside the
cluster, authenticated as the chart's ServiceAccount, reached by the API server through the
chart's Service and an EndpointSlice to the host end of the namespace's veth pair.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import ROOT

UP = ROOT / "tests" / "cluster" / "up.sh"
DOWN = ROOT / "tests" / "cluster" / "down.sh"
CHART = ROOT / "charts" / "tollgate"
NAMESPACE = "tollgate-system"
RELEASE = "tollgate"


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

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("helm", *args, check=check)

    def get(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", "-o", "json", *args).stdout)

    def apply(self, manifest: dict | str, check: bool = True) -> subprocess.CompletedProcess:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        return self.kubectl("apply", "-f", "-", input=text, check=check)

    def eventually(self, what: str, probe, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = probe()
                if last:
                    return last
            except (RuntimeError, KeyError, IndexError) as e:
                last = e
            time.sleep(0.2)
        raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")

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
