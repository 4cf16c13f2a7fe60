"""Tollgate on a real Kubernetes control plane (tests/cluster): `helm install` of the chart, the
CRDs the API server accepts and establishes, the operator authenticated as the chart's own
ServiceAccount (so the chart's RBAC is what is tested), and admission webhooks the API server
itself calls through the chart's Service.

One control plane serves the module, and one release of the chart; each test says what it adds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import httpx
import pytest
from cluster import NAMESPACE, RELEASE, ControlPlane, CHART
from conftest import free_port, wait_for_port

OPERATOR_PORT = 8443


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cp = ControlPlane.start(tmp_path_factory.mktemp("cluster"))
    yield cp
    cp.stop()


@pytest.fixture(scope="module")
def release(cluster):
    """The chart installed with its default values."""
    cluster.helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace")
    return cluster


@pytest.fixture(scope="module")
def operator(release, debug_bins, tmp_path_factory):
    """The operator as the chart deploys it, but as a process here: the Deployment's own
    environment, a token the API server issued to the chart's ServiceAccount, and the chart's
    Service routed to this process."""
    tmp = tmp_path_factory.mktemp("operator")
    kubeconfig = release.token_kubeconfig(NAMESPACE, "tollgate-operator", tmp / "kubeconfig")
    release.route_service_to_host(NAMESPACE, "tollgate-operator", "https", OPERATOR_PORT)
    admin = free_port()
    env = {
        **release.deployment_env(NAMESPACE, "tollgate-operator"),
        "KUBECONFIG": str(kubeconfig),
        "POD_NAMESPACE": NAMESPACE,
        "POD_NAME": "tollgate-operator-tests",
        "TOLLGATE_LISTEN": f"{release.host_ip}:{OPERATOR_PORT}",
        "TOLLGATE_ADMIN_LISTEN": f"127.0.0.1:{admin}",
    }
    log = tmp / "operator.log"
    proc = subprocess.Popen([str(debug_bins / "tollgate-operator")], env={**os.environ, **env},
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    wait_for_port(admin, proc, log)
    release.eventually("the operator is ready", lambda: httpx.get(f"http://127.0.0.1:{admin}/readyz").status_code == 200)
    yield release, log
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_cluster_control_plane_reports_the_version_it_was_built_as(cluster):
    v = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert v["serverVersion"]["gitVersion"] == v["clientVersion"]["gitVersion"]
    assert v["serverVersion"]["gitVersion"].startswith("v1.3")
    assert v["serverVersion"]["major"] == "1"


def test_cluster_service_account_tokens_are_issued_and_reviewed(cluster, tmp_path):
    cluster.kubectl("-n", "default", "create", "serviceaccount", "probe")
    token = cluster.kubectl("-n", "default", "create", "token", "probe", "--audience", "tollgate").stdout.strip()
    review = cluster.kubectl(
        "create", "-o", "json", "-f", "-",
        input='{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":"%s","audiences":["tollgate"]}}' % token,
    ).stdout
    assert '"authenticated": true' in review
    assert "system:serviceaccount:default:probe" in review


def test_cluster_helm_lints_and_installs_the_chart_with_crds_established_and_the_baseline(release):
    release.helm("lint", "--strict", str(CHART))
    for crd in ["mcppolicies.tollgate.dev", "mcpclusterpolicies.tollgate.dev"]:
        release.kubectl("wait", "--for", "condition=Established", f"crd/{crd}", "--timeout", "30s")
    baseline = release.get("mcpclusterpolicy", f"{RELEASE}-baseline")
    assert baseline["spec"]["default"] == "deny"
    assert release.get("-n", NAMESPACE, "deployment", "tollgate-operator")["spec"]["replicas"] == 2


def test_cluster_api_server_calls_the_validating_webhook_which_refuses_a_bad_policy_naming_the_field(operator):
    cluster, _ = operator
    bad = {
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "McpPolicy",
        "metadata": {"name": "bad", "namespace": "default"},
        "spec": {"tools": {"t": {"rules": [{"name": "r", "conditions": [{"path": "args.a", "op": "eq"}]}]}}},
    }
    out = cluster.apply(bad, check=False)
    assert out.returncode != 0
    assert 'admission webhook "validate.tollgate.dev" denied the request' in out.stderr
    assert "spec.tools.t.rules[0].conditions[0].value" in out.stderr


def test_cluster_a_good_policy_is_accepted_and_its_status_written_by_the_operator(operator):
    cluster, _ = operator
    good = {
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "McpPolicy",
        "metadata": {"name": "good", "namespace": "default"},
        "spec": {"tools": {"search": {"rules": []}, "charge": {"rules": [{"name": "cap", "conditions": [{"path": "args.amount", "op": "lte", "value": 100}]}]}}},
    }
    cluster.apply(good)

    def ready():
        status = cluster.get("-n", "default", "mcppolicy", "good").get("status", {})
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        return status.get("tools") == 2 and conditions.get("Ready") == "True" and status

    cluster.eventually("the policy's status says Ready with 2 tools", ready)


def test_cluster_api_server_calls_the_mutating_webhook_which_injects_the_sidecar(operator):
    cluster, _ = operator
    cluster.kubectl("create", "namespace", "team-a")
    cluster.kubectl("label", "namespace", "team-a", "tollgate.dev/injection=enabled")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "mcp", "namespace": "team-a", "labels": {"app": "mcp"}},
        "spec": {"containers": [{"name": "server", "image": "example/mcp:1", "ports": [{"name": "mcp", "containerPort": 8000}]}]},
    }
    cluster.apply(pod)
    created = cluster.get("-n", "team-a", "pod", "mcp")
    sidecars = [c for c in created["spec"].get("initContainers", []) if c["name"] == "tollgate-proxy"]
    assert sidecars and sidecars[0]["restartPolicy"] == "Always", created["spec"]
    assert "tollgate.dev/status" in created["metadata"]["annotations"]
    assert created["metadata"]["labels"]["tollgate.dev/injected"] == "true"
    # The API server kept the patch as the webhook wrote it: the app's port now has the
    # sidecar's name, so a Service targeting `mcp` by name reaches the proxy.
    server = next(c for c in created["spec"]["containers"] if c["name"] == "server")
    assert [p["name"] for p in server["ports"]] != ["mcp"]


def test_cluster_helm_uninstall_keeps_the_crds_and_the_policies(operator):
    cluster, _ = operator
    kept = {
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "McpPolicy",
        "metadata": {"name": "kept", "namespace": "default"},
        "spec": {"tools": {"search": {"rules": []}}},
    }
    cluster.apply(kept)
    cluster.helm("uninstall", RELEASE, "-n", NAMESPACE)
    assert cluster.get("crd", "mcppolicies.tollgate.dev")
    assert cluster.get("crd", "mcpclusterpolicies.tollgate.dev")
    assert cluster.get("-n", "default", "mcppolicy", "kept")["metadata"]["name"] == "kept"
    gone = cluster.kubectl("get", "mutatingwebhookconfiguration", "tollgate-operator-inject", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
