"""An IPv6-first node (tests/cluster/up.sh DIR --ipv6-primary): the node's first address and
every pod's first address are IPv6, so the kubelet probes each pod over IPv6, as it does in an
IPv6-only cluster. Injected sidecars (their startup probe gates the app) and the operator's own
pods must answer there, or nothing starts; a sidecar that listened on IPv4 alone never got Ready.
"""

from __future__ import annotations

import ipaddress
import subprocess
import time

import pytest
from cluster import NAMESPACE, eventually, policy, read_env
from conftest import ROOT, report
from node import MCP_PORT, Node, host_post, install, records
from rpc import call
from test_node import NS, OPERATOR, POLICY, SERVER, mcp_deployment

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def node6(tmp_path_factory):
    t0 = time.monotonic()
    dir = tmp_path_factory.mktemp("node6")
    out = subprocess.run([str(ROOT / "tests" / "cluster" / "up.sh"), str(dir), "--ipv6-primary"], capture_output=True, text=True)
    if out.returncode != 0:
        subprocess.run([str(ROOT / "tests" / "cluster" / "down.sh"), str(dir)], capture_output=True)
        raise RuntimeError(f"tests/cluster/up.sh --ipv6-primary failed:\n{out.stdout}\n{out.stderr}")
    n = Node(dir, read_env(dir / "env"))
    try:
        n.import_images()
        yield n
    finally:
        n.stop()
        report("test_node_ipv6", f"an IPv6-first node, up to down in {time.monotonic() - t0:.0f} s")


def is_v6(ip: str) -> bool:
    return ipaddress.ip_address(ip).version == 6


def test_node_ipv6_first_pods_start_with_their_probes_answered_over_ipv6_by_the_sidecar_and_the_operator(node6):
    node = node6
    assert is_v6(node.get("nodes")["items"][0]["status"]["addresses"][0]["address"])
    install(node)
    operators = node.ready_pods(NAMESPACE, OPERATOR)
    assert len(operators) == 2 and all(is_v6(p["status"]["podIP"]) for p in operators), \
        "the operator's probes reached it over IPv6"
    node.namespace(NS, **{"tollgate.dev/injection": "enabled"})
    node.apply(policy("shop", POLICY, NS))
    node.apply(mcp_deployment(replicas=1))
    node.kubectl("-n", NS, "rollout", "status", "deployment/mcp", "--timeout=180s")
    [pod] = node.ready_pods(NS, SERVER)
    assert is_v6(pod["status"]["podIP"]), pod["status"]["podIPs"]
    proxy = {s["name"]: s for s in pod["status"]["initContainerStatuses"]}["tollgate-proxy"]
    assert proxy["ready"] and proxy["restartCount"] == 0, "its startup probe passed over IPv6 at once"
    # Decided at the pod's (IPv6) address, as before.
    url = f"http://[{pod['status']['podIP']}]:{MCP_PORT}/mcp"
    assert eventually(lambda: host_post(url, call(1, "delete_repository", {"name": "v6"})), what="an answer")["error"]["data"]["rule"] == "never"
    assert "result" in host_post(url, call(2, "read_file", {"path": "v6"}))
    assert [r["tool"] for r in records(node, NS, SERVER)] == ["read_file"]
