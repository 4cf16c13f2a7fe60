"""A real Kubernetes cluster with a real node (tests/cluster/up.sh --node): Tollgate's images
built from this workspace and imported into the node's containerd, the chart installed with its
default values, and pods that really run. The suites' peers run in pods too: the real Python
MCP SDK server and client, and Redis, from this machine's own files (the `tollgate.test/host`
image mounts this machine's /usr, the suites' Python and the repository, read-only).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
from cluster import NAMESPACE, RELEASE, ControlPlane, read_env
from conftest import ROOT
from rpc import messages

IMAGES = ROOT / "tests" / "cluster" / "images.sh"
HOST_IMAGE = "tollgate.test/host:1"
VENV_PYTHON = ROOT / "tests" / ".venv" / "bin" / "python"
# The interpreter the suites' virtualenv points at, mounted into pods at the same path.
PYTHON_HOME = Path(subprocess.run([str(VENV_PYTHON), "-c", "import sys; print(sys.base_prefix)"],
                                  capture_output=True, text=True, check=True).stdout.strip())
MCP_PORT = 8000


# This machine's tools, mounted read-only into the suites' pods at the paths they have here.
HOST_MOUNTS = [("usr", "/usr"), ("python", str(PYTHON_HOME)), ("repo", str(ROOT))]


def host_container(name: str, command: list[str], mounts: list[dict] | None = None, **fields) -> dict:
    """A container of the `tollgate.test/host` image running `command` with this machine's tools."""
    return {
        "name": name,
        "image": HOST_IMAGE,
        "imagePullPolicy": "Never",
        "command": command,
        "workingDir": str(ROOT),
        "env": [{"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}, {"name": "HOME", "value": "/tmp"}],
        "volumeMounts": [{"name": n, "mountPath": p, "readOnly": True} for n, p in HOST_MOUNTS] + (mounts or []),
        **fields,
    }


def host_tools_spec(*containers: dict, volumes: list[dict] | None = None) -> dict:
    """A pod spec of host-tools containers, with the host mounts they use."""
    return {
        "terminationGracePeriodSeconds": 2,
        "enableServiceLinks": False,
        "containers": list(containers),
        "volumes": [{"name": n, "hostPath": {"path": p, "type": "Directory"}} for n, p in HOST_MOUNTS] + (volumes or []),
    }


def python(*args: str) -> list[str]:
    return [str(VENV_PYTHON), *args]


class Node(ControlPlane):
    """The control plane with its node, and what a user does on it."""

    @classmethod
    def start(cls, dir: Path) -> "Node":  # type: ignore[override]
        out = subprocess.run([str(ROOT / "tests" / "cluster" / "up.sh"), str(dir), "--node"], capture_output=True, text=True)
        if out.returncode != 0:
            subprocess.run([str(ROOT / "tests" / "cluster" / "down.sh"), str(dir)], capture_output=True)
            raise RuntimeError(f"tests/cluster/up.sh --node failed:\n{out.stdout}\n{out.stderr}")
        return cls(dir, read_env(dir / "env"))

    @property
    def containerd(self) -> str:
        return self.env["TOLLGATE_CLUSTER_CONTAINERD"]

    @property
    def node_ip(self) -> str:
        return self.env["TOLLGATE_CLUSTER_API"].removeprefix("https://").rsplit(":", 1)[0]

    def import_images(self, *images: str, tag: str | None = None) -> list[str]:
        """tests/cluster/images.sh --import: Tollgate's images into the node's containerd."""
        env = {**os.environ, "TOLLGATE_CLUSTER_BIN": str(self.bin)}
        if tag:
            env["TOLLGATE_IMAGE_TAG"] = tag
        out = subprocess.run([str(IMAGES), "--import", self.containerd, *images], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        return [line.split()[1] for line in out.stdout.splitlines()]

    def ctr(self, *args: str) -> str:
        return subprocess.run(["ctr", "--address", self.containerd, "-n", "k8s.io", *args],
                              capture_output=True, text=True, check=True).stdout

    def plugin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """`kubectl tollgate ...`: kubectl finds the plugin the release built on its PATH."""
        plugin_dir = ROOT / "target" / "release"
        out = subprocess.run([str(self.bin / "kubectl"), "tollgate", *args], capture_output=True, text=True,
                             env={**os.environ, "KUBECONFIG": self.env["KUBECONFIG"],
                                  "PATH": f"{plugin_dir}:{os.environ['PATH']}"})
        if check and out.returncode != 0:
            raise RuntimeError(f"kubectl tollgate {' '.join(args)} failed:\n{out.stderr}{out.stdout}")
        return out

    def wait(self, ns: str, what: str, condition: str = "Ready", timeout: int = 120) -> None:
        self.kubectl("-n", ns, "wait", f"--for=condition={condition}", what, f"--timeout={timeout}s")

    def pods(self, ns: str, selector: str) -> list[dict]:
        return [p for p in self.get("-n", ns, "pods", "-l", selector)["items"] if not p["metadata"].get("deletionTimestamp")]

    def ready_pods(self, ns: str, selector: str) -> list[dict]:
        return [p for p in self.pods(ns, selector)
                if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]

    def exec(self, ns: str, pod: str, *command: str, container: str | None = None, check: bool = True,
             timeout: float = 120) -> subprocess.CompletedProcess:
        args = ["-n", ns, "exec", pod, *(["-c", container] if container else []), "--", *command]
        out = subprocess.run([str(self.bin / "kubectl"), *args], capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, "KUBECONFIG": self.env["KUBECONFIG"]})
        if check and out.returncode != 0:
            raise RuntimeError(f"kubectl exec {pod} {' '.join(command)} failed ({out.returncode}):\n{out.stderr}{out.stdout}")
        return out

    def processes(self, pod_uid: str, exe: str) -> list[int]:
        """PIDs on this machine of a pod's processes running `exe` (found by the pod's cgroup)."""
        out = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cgroup = (proc / "cgroup").read_text()
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"pod{pod_uid}" in cgroup and cmd and cmd[0].decode(errors="replace").endswith(exe):
                out.append(int(proc.name))
        return out


class Agent:
    """A pod running the real Python MCP SDK client against the cluster's Services and pods."""

    def __init__(self, node: Node, ns: str, name: str):
        self.node, self.ns, self.name = node, ns, name

    def session(self, url: str, calls: list[tuple[str, dict]], timeout: float = 120) -> dict:
        """One SDK client session from the agent pod: tools/list, then each call."""
        script = ("import json, sys; sys.path.insert(0, 'tests/e2e'); from mcp_client import session; "
                  "print(json.dumps(session(sys.argv[1], 'legacy', json.loads(sys.argv[2]))))")
        out = self.node.exec(self.ns, self.name, *python("-c", script, url, json.dumps(calls)), timeout=timeout)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def raw(self, url: str, body: dict, timeout: float = 30) -> tuple[int, str]:
        """One raw JSON-RPC POST from the agent pod: (status, body); status 0 when refused."""
        script = ("import sys, httpx\n"
                  "try:\n"
                  " r = httpx.post(sys.argv[1], content=sys.argv[2], timeout=float(sys.argv[3]), headers={"
                  "'content-type': 'application/json', 'accept': 'application/json, text/event-stream',"
                  "'mcp-protocol-version': '2025-06-18'})\n"
                  " print(r.status_code); print(r.text)\n"
                  "except httpx.HTTPError as e:\n"
                  " print(0); print(type(e).__name__, e)\n")
        out = self.node.exec(self.ns, self.name, *python("-c", script, url, json.dumps(body), str(timeout)),
                             timeout=timeout + 30).stdout
        status, _, text = out.partition("\n")
        return int(status), text


def install(node: Node, *args: str) -> str:
    out = node.helm("install", RELEASE, str(ROOT / "charts" / "tollgate"), "-n", NAMESPACE, "--create-namespace",
                    "--wait", "--timeout", "3m", *args)
    return out.stderr + out.stdout


def records(node: Node, ns: str, selector: str) -> list[dict]:
    """What the MCP servers of `selector` really ran: every pod's record, read in the pod."""
    out = []
    for pod in node.pods(ns, selector):
        text = node.exec(ns, pod["metadata"]["name"], "cat", "/record/runs.jsonl", container="server", check=False).stdout
        out += [json.loads(line) for line in text.splitlines() if line.strip()]
    return out


def host_post(url: str, body: dict, timeout: float = 10) -> dict | None:
    """A JSON-RPC POST from this machine (outside every pod); None when nothing answers."""
    try:
        r = httpx.post(url, json=body, timeout=timeout, headers={
            "content-type": "application/json", "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2025-06-18"})
    except httpx.HTTPError:
        return None
    return messages(r)[0]

