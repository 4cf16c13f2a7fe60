"""Tollgate on a real Kubernetes control plane (tests/cluster): `helm install` of the chart, the
CRDs the API server accepts and establishes, the operator authenticated as the chart's own
ServiceAccount (so the chart's RBAC is what is tested), and admission webhooks the API server
itself calls through the chart's Service.

One control plane serves the module, and one release of the chart; each test says what it adds.
"""

from __future__ import annotations

import json
import signal
import time

import httpx
import pytest
from cluster import (CHART, NAMESPACE, OPERATOR_PORT, RELEASE, ControlPlane, Operator, eventually, mcp_pod, policy,
                     sidecar, start_operator)  # noqa: F401 (sidecar is a fixture)
from test_chart import SWITCHES, monitoring_crds


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cp = ControlPlane.start(tmp_path_factory.mktemp("cluster"))
    yield cp
    cp.stop()


@pytest.fixture(scope="module")
def release(cluster):
    """The chart installed with its default values."""
    cluster.install_output = cluster.install()
    return cluster


# Every operator process the module started, stopped at its end.
RUNNING: list[Operator] = []


@pytest.fixture(scope="module")
def operator(release, debug_bins, tmp_path_factory):
    """One operator, the chart's Service routed to it."""
    release.route_service_to_host(NAMESPACE, "tollgate-operator", "https", OPERATOR_PORT)
    op = start_operator(release, debug_bins, tmp_path_factory.mktemp("operator"), "tollgate-operator-tests")
    RUNNING.append(op)
    yield release, op.log
    for o in RUNNING:
        o.stop()


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


def test_cluster_helm_lints_and_installs_the_chart_with_crds_established(release):
    release.helm("lint", "--strict", str(CHART))
    for crd in ["mcppolicies.tollgate.dev", "mcpclusterpolicies.tollgate.dev"]:
        release.crd_established(crd)
    # The API server warned of nothing (it warned "unrecognized format uint64" once).
    assert "warning" not in release.install_output.lower(), release.install_output
    assert release.get("-n", NAMESPACE, "deployment", "tollgate-operator")["spec"]["replicas"] == 2


def test_cluster_the_leader_keeps_the_charts_baseline_under_its_rbac_and_what_a_platform_team_adds(operator):
    cluster, _ = operator
    name = f"{RELEASE}-baseline"
    baseline = eventually(lambda: cluster.kubectl("get", "mcpclusterpolicy", name, check=False).returncode == 0
                          and cluster.get("mcpclusterpolicy", name, "--show-managed-fields"),
                          what="the operator applied the baseline")
    assert (baseline["spec"]["default"], baseline["spec"]["mode"]) == ("deny", "enforce")
    assert baseline["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tollgate", "not held by its own webhook"
    [applied] = [f for f in baseline["metadata"]["managedFields"] if f["manager"] == "tollgate-operator"]
    assert applied["operation"] == "Apply" and set(applied["fieldsV1"]["f:spec"]) == {"f:default", "f:mode"}
    # A platform team adds a tool to the baseline and loosens its default: the leader puts the
    # chart's default back and keeps the tool.
    cluster.kubectl("patch", "mcpclusterpolicy", name, "--type", "merge",
                    "-p", json.dumps({"spec": {"default": "allow", "tools": {"search": {"rules": []}}}}))
    eventually(lambda: cluster.get("mcpclusterpolicy", name)["spec"]["default"] == "deny",
               what="the leader applied the chart's default again")
    assert "search" in cluster.get("mcpclusterpolicy", name)["spec"]["tools"], "the team's tool is kept"
    # Their edits are checked as any policy's: the webhook skips the operator's writes, not the label.
    bad = {"spec": {"tools": {"t": {"rules": [{"name": "r", "conditions": [{"path": "args.a", "op": "eq"}]}]}}}}
    refused = cluster.kubectl("patch", "mcpclusterpolicy", name, "--type", "merge", "-p", json.dumps(bad), check=False)
    assert refused.returncode != 0 and 'admission webhook "validate.tollgate.dev" denied the request' in refused.stderr, refused.stderr
    labelled = policy("labelled", bad["spec"])
    labelled["metadata"]["labels"] = {"app.kubernetes.io/part-of": "tollgate"}
    refused = cluster.apply(labelled, check=False)
    assert refused.returncode != 0 and 'admission webhook "validate.tollgate.dev" denied the request' in refused.stderr \
        and "spec.tools.t.rules[0].conditions[0].value" in refused.stderr, refused.stderr
    # Deleted, it is back.
    cluster.kubectl("delete", "mcpclusterpolicy", name)
    eventually(lambda: cluster.kubectl("get", "mcpclusterpolicy", name, check=False).returncode == 0,
               what="the leader applied the deleted baseline again")
    assert cluster.get("mcpclusterpolicy", name)["spec"]["default"] == "deny"


def test_cluster_a_replica_is_not_ready_before_the_cluster_has_its_baseline(operator, debug_bins, tmp_path):
    cluster, _ = operator
    # A replica that does not lead, told of a baseline nobody applies (the leader keeps the
    # chart's; RBAC lets no replica write another): the Service must not route to it.
    waiting = start_operator(cluster, debug_bins, tmp_path, "tollgate-operator-waiting", OPERATOR_PORT + 3,
                             ready=False, TOLLGATE_BASELINE="not-yet")
    RUNNING.append(waiting)
    r = eventually(lambda: (r := httpx.get(f"{waiting.admin}/readyz")).status_code == 503 and "not-yet" in r.text and r,
                   what="not ready, naming the baseline")
    assert "the baseline McpClusterPolicy not-yet is not in the cluster yet" in r.text, r.text
    time.sleep(2)
    assert not waiting.ready(), "still waiting: nothing applies another name"
    try:
        cluster.apply({"apiVersion": "tollgate.dev/v1alpha1", "kind": "McpClusterPolicy", "metadata": {"name": "not-yet"},
                       "spec": {"default": "deny"}})
        eventually(waiting.ready, what="ready once the baseline exists")
    finally:
        waiting.stop()
        cluster.kubectl("delete", "mcpclusterpolicy", "not-yet", "--ignore-not-found")


def test_cluster_api_server_calls_the_validating_webhook_which_refuses_a_bad_policy_naming_the_field(operator):
    cluster, _ = operator
    bad = policy("bad", {"tools": {"t": {"rules": [{"name": "r", "conditions": [{"path": "args.a", "op": "eq"}]}]}}})
    out = cluster.apply(bad, check=False)
    assert out.returncode != 0
    assert 'admission webhook "validate.tollgate.dev" denied the request' in out.stderr
    assert "spec.tools.t.rules[0].conditions[0].value" in out.stderr


def test_cluster_a_good_policy_is_accepted_and_its_status_written_by_the_operator(operator):
    cluster, _ = operator
    good = policy("good", {"tools": {"search": {"rules": []}, "charge": {"rules": [{"name": "cap", "conditions": [{"path": "args.amount", "op": "lte", "value": 100}]}]}}})
    cluster.apply(good)

    def ready():
        status = cluster.get("-n", "default", "mcppolicy", "good").get("status", {})
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        return status.get("tools") == 2 and conditions.get("Ready") == "True" and status

    eventually(what="the policy's status says Ready with 2 tools", probe=ready)


def test_cluster_api_server_calls_the_mutating_webhook_which_injects_the_sidecar(operator):
    cluster, _ = operator
    cluster.namespace("team-a", **{"tollgate.dev/injection": "enabled"})
    cluster.apply(mcp_pod("mcp", "team-a", labels={"app": "mcp"}))
    created = cluster.get("-n", "team-a", "pod", "mcp")
    sidecars = [c for c in created["spec"].get("initContainers", []) if c["name"] == "tollgate-proxy"]
    assert sidecars and sidecars[0]["restartPolicy"] == "Always", created["spec"]
    assert "tollgate.dev/status" in created["metadata"]["annotations"]
    assert created["metadata"]["labels"]["tollgate.dev/injected"] == "true"
    # The API server kept the patch as the webhook wrote it: the app's port now has the
    # sidecar's name, so a Service targeting `mcp` by name reaches the proxy.
    server = next(c for c in created["spec"]["containers"] if c["name"] == "server")
    assert [p["name"] for p in server["ports"]] != ["mcp"]


# What the CRDs' CEL rules refuse, as the API server itself evaluates them (before any webhook).
CEL_CASES = [
    ({"tools": {"t": {"rules": [{"name": "r", "rateLimit": "5/hour", "limit": {"counter": "c", "window": "day", "max": 1}}]}}},
     "set rateLimit or limit, not both"),
    ({"tools": {"t": {"rules": [{"name": "r", "action": "deny", "rateLimit": "5/hour"}]}}},
     "deny and approve rules cannot carry a limit"),
    ({"tools": {"t": {"rules": [{"name": "r", "approval": {"timeout": "1m"}}]}}},
     "approval settings need action: approve"),
    ({"tools": {"t": {"rules": [{"name": "r", "limit": {"counter": "c", "window": "day", "increment": 2, "incrementFrom": "args.a"}}]}}},
     "set increment or incrementFrom, not both"),
    ({"subjects": [{"serviceAccount": "a/b", "subject": "x"}]}, "set exactly one of serviceAccount, claim or subject"),
    ({"hide": [""]}, "hide entries must not be empty"),
    ({"tools": {"": {"rules": []}}}, "tool names must not be empty"),
]


@pytest.mark.parametrize("spec,message", CEL_CASES, ids=[m for _, m in CEL_CASES])
def test_cluster_api_server_evaluates_the_crds_cel_rules(release, spec, message):
    out = release.apply(policy("cel", spec), check=False)
    assert out.returncode != 0, out.stdout
    assert message in out.stderr, out.stderr


def test_cluster_kubectl_prints_the_policy_columns_and_an_invalid_policy_is_refused_with_every_field_named(operator):
    cluster, _ = operator
    bad = policy("two-problems", {"tools": {"t": {"rules": [
        {"name": "a", "conditions": [{"path": "args.a", "op": "eq"}]},
        {"name": "b", "conditions": [{"path": "args.n", "op": "lte", "value": "many"}]},
    ]}}})
    out = cluster.apply(bad, check=False)
    assert out.stderr.strip() == (
        'The request is invalid: error when creating "STDIN": admission webhook "validate.tollgate.dev" '
        "denied the request: McpPolicy default/two-problems is invalid (2 problems):\n"
        "- spec.tools.t.rules[0].conditions[0].value: eq needs a value to compare with\n"
        "- spec.tools.t.rules[1].conditions[0].value: lte needs a number, e.g. 50000"
    ), out.stderr
    cluster.apply(policy("columns", {"tools": {"search": {"rules": []}}}))
    eventually(what="the policy is Ready", probe=lambda: "True" in cluster.kubectl("get", "-n", "default", "mcppolicy", "columns").stdout)
    table = cluster.kubectl("get", "-n", "default", "mcppolicy", "columns").stdout.splitlines()
    assert table[0].split() == ["NAME", "DEFAULT", "MODE", "TOOLS", "PODS", "READY", "AGE"]
    assert table[1].split()[:6] == ["columns", "deny", "enforce", "1", "0", "True"]


def test_cluster_a_pod_that_opts_out_is_stored_unchanged(operator):
    cluster, _ = operator
    cluster.namespace("team-b", **{"tollgate.dev/injection": "enabled"})
    cluster.apply(mcp_pod("mcp", "team-b", annotations={"tollgate.dev/inject": "false"}))
    stored = cluster.get("-n", "team-b", "pod", "mcp")
    assert "initContainers" not in stored["spec"]
    assert [c["name"] for c in stored["spec"]["containers"]] == ["server"]
    assert stored["spec"]["containers"][0]["ports"][0]["name"] == "mcp"
    assert "tollgate.dev/status" not in stored["metadata"].get("annotations", {})


def test_cluster_the_charts_rbac_covers_everything_the_operator_did(operator):
    _, log = operator
    refused = [line for line in log.read_text().splitlines() if "forbidden" in line.lower()]
    assert not refused, "\n".join(refused[:5])


def test_cluster_a_sidecar_with_a_token_bound_to_its_pod_follows_the_pods_policy_until_the_pod_is_gone(operator, sidecar):
    cluster, _ = operator
    ns = "team-c"
    cluster.namespace(ns, **{"tollgate.dev/injection": "enabled"})
    cluster.kubectl("-n", ns, "create", "serviceaccount", "github-mcp")
    # The pod and its policy both say allow for unlisted tools; the baseline's deny wins.
    cluster.apply(mcp_pod("github-mcp", ns, labels={"app": "github"}, service_account="github-mcp",
                          annotations={"tollgate.dev/default-action": "allow"}))
    cluster.apply(policy("github", {"selector": {"matchLabels": {"app": "github"}}, "default": "allow",
                                    "tools": {"read_file": {"rules": []},
                                              "create_issue": {"rules": [{"name": "no", "action": "deny"}]}}}, ns))
    token, ca = cluster.pod_token(ns, "github-mcp"), cluster.ca()
    side = sidecar(f"https://{cluster.host_ip}:{OPERATOR_PORT}", ca, token)
    eventually(lambda: not side.allows("create_issue"), what="the pod's policy reached the sidecar")
    assert side.allows("read_file")
    unlisted = side.call("delete_repository")
    assert f"{RELEASE}-baseline" in json.dumps(unlisted.get("error")), unlisted

    # A change reaches it over the same stream.
    cluster.apply(policy("github", {"selector": {"matchLabels": {"app": "github"}},
                                    "tools": {"create_issue": {"rules": []},
                                              "read_file": {"rules": [{"name": "no", "action": "deny"}]}}}, ns))
    eventually(lambda: side.allows("create_issue") and not side.allows("read_file"),
               what="the changed policy reached the sidecar")

    # The pod is deleted: its token no longer authenticates, and the stream refuses it.
    cluster.kubectl("-n", ns, "delete", "pod", "github-mcp", "--grace-period", "0", "--force")
    with RUNNING[0].client(ca) as c:
        def refusal():
            with c.stream("GET", "/v1/policy", headers={"authorization": f"Bearer {token}"}) as r:
                assert r.status_code != 200, "still streaming"
                r.read()
                return r
        refused = eventually(refusal, timeout=30, what="the stream refuses the deleted pod's token")
    # The API server itself says why: the pod the token was bound to is gone.
    assert refused.status_code == 403 and "invalidated" in refused.text, (refused.status_code, refused.text)
    # The sidecar keeps the last policy it had: a lost stream never turns a deny into an allow.
    assert not side.allows("read_file") and side.allows("create_issue")


def test_cluster_a_second_operator_follows_the_leader_through_the_lease_and_takes_over_when_it_dies_or_leaves(operator, debug_bins, tmp_path):
    cluster, _ = operator
    first = RUNNING[0]

    def lease():
        return cluster.get("-n", NAMESPACE, "lease", "tollgate-operator")["spec"]

    assert lease()["holderIdentity"] == first.name
    transitions = lease().get("leaseTransitions", 0)
    second = start_operator(cluster, debug_bins, tmp_path, "tollgate-operator-second", OPERATOR_PORT + 1)
    RUNNING.append(second)
    assert lease()["holderIdentity"] == first.name, "a follower does not take a held lease"
    with second.client(cluster.ca()) as c:
        assert c.post("/validate", content=b"x").status_code == 400, "a follower serves the webhooks too"

    first.stop(signal.SIGKILL)  # no goodbye: the lease must expire
    # The chart's Service now reaches the survivor, as the endpoint-slice controller would.
    cluster.route_service_to_host(NAMESPACE, "tollgate-operator", "https", second.port)
    eventually(lambda: lease()["holderIdentity"] == second.name, what="the survivor holds the lease", timeout=45)
    assert lease()["leaseTransitions"] == transitions + 1
    # It leads: it runs the controllers and writes status.
    cluster.apply(policy("after-handover", {"tools": {"a": {"rules": []}, "b": {"rules": []}}}))
    eventually(lambda: cluster.get("-n", "default", "mcppolicy", "after-handover").get("status", {}).get("tools") == 2,
               what="the new leader writes status")

    # A leader told to stop (a rolling update) gives the lease up before it exits, so its
    # successor need not wait for the lease to expire.
    third = start_operator(cluster, debug_bins, tmp_path, "tollgate-operator-third", OPERATOR_PORT + 2)
    RUNNING.append(third)
    second.stop(signal.SIGTERM)
    assert lease()["holderIdentity"] in ("", third.name), lease()
    assert "released the lease" in second.log.read_text()
    eventually(lambda: lease()["holderIdentity"] == third.name, what="the successor holds the released lease")
    cluster.route_service_to_host(NAMESPACE, "tollgate-operator", "https", third.port)


def test_cluster_helm_uninstall_keeps_the_crds_and_the_policies(operator):
    cluster, _ = operator
    kept = policy("kept", {"tools": {"search": {"rules": []}}})
    cluster.apply(kept)
    cluster.helm("uninstall", RELEASE, "-n", NAMESPACE)
    assert cluster.get("crd", "mcppolicies.tollgate.dev")
    assert cluster.get("crd", "mcpclusterpolicies.tollgate.dev")
    assert cluster.get("-n", "default", "mcppolicy", "kept")["metadata"]["name"] == "kept"
    gone = cluster.kubectl("get", "mutatingwebhookconfiguration", "tollgate-operator-inject", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


# cert-manager's switches need its CRDs (Issuer, Certificate), which no real API server has
# without cert-manager itself: test_chart.py renders and checks them.
INSTALLABLE = {name: values for name, values in SWITCHES.items() if not name.startswith("cert-manager")}


@pytest.mark.parametrize("switch", INSTALLABLE)
def test_cluster_helm_installs_and_uninstalls_the_chart_with_each_documented_switch(cluster, switch, tmp_path):
    # After the default release's uninstall its CRDs stayed, owned by that release name: a new
    # release of the same name takes them over (another name is refused, as on any cluster).
    chosen = INSTALLABLE[switch]
    cluster.helm("uninstall", RELEASE, "-n", NAMESPACE, "--ignore-not-found")
    monitoring = chosen.get("monitoring", {})
    if monitoring:
        # The Prometheus Operator's own CRDs, as a cluster running it serves them: the API
        # server validates the chart's PodMonitors and PrometheusRule against their schemas.
        for crd in sorted(monitoring_crds().glob("*.yaml")):
            cluster.kubectl("apply", "--server-side", "-f", str(crd))
        for name in ("podmonitors", "prometheusrules"):
            cluster.crd_established(f"{name}.monitoring.coreos.com")
    values = tmp_path / "values.yaml"
    values.write_text(json.dumps(chosen))
    cluster.helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace", "--values", str(values))
    try:
        # The operator applies the baseline from these (the test above); here no operator runs.
        env = cluster.deployment_env(NAMESPACE, "tollgate-operator")
        assert env["TOLLGATE_DEFAULT_ACTION"] == chosen.get("defaultAction", "deny")
        assert env["TOLLGATE_BASELINE_MODE"] == chosen.get("mode", "enforce")
        replicas = chosen.get("operator", {}).get("replicas", 2)
        assert cluster.get("-n", NAMESPACE, "deployment", "tollgate-operator")["spec"]["replicas"] == replicas
        webhook = cluster.get("validatingwebhookconfiguration", "tollgate-operator-validate")["webhooks"][0]
        assert webhook["failurePolicy"] == chosen.get("webhook", {}).get("failurePolicy", "Fail")
        if monitoring:
            monitors = cluster.get("-n", NAMESPACE, "podmonitors")["items"]
            assert sorted(m["metadata"]["name"] for m in monitors) == ["tollgate-operator", "tollgate-operator-sidecars"]
            rule = cluster.get("-n", NAMESPACE, "prometheusrule", "tollgate-operator")
            assert [g["name"] for g in rule["spec"]["groups"]] == ["tollgate-sidecar", "tollgate-operator"]
            assert "tollgate.json" in cluster.get("-n", NAMESPACE, "configmap", "tollgate-operator-dashboard")["data"]
    finally:
        cluster.helm("uninstall", RELEASE, "-n", NAMESPACE)
    crds = chosen.get("crds", {})
    if crds.get("keep", True) or not crds.get("install", True):
        crd = cluster.get("crd", "mcppolicies.tollgate.dev")
        assert "deletionTimestamp" not in crd["metadata"], "the CRD is kept"
    else:
        # Not kept: deleted (a CRD goes once the API server has removed its objects).
        cluster.kubectl("wait", "--for=delete", "crd/mcppolicies.tollgate.dev", "--timeout=60s")
