"""The Helm chart, with the real `helm` binary (built from helm.sh/helm/v4 by tests/cluster/build.sh):
lint, render for every documented switch, validate every object against Kubernetes' schemas
(oldest and newest supported), and assert on the parsed objects what the values asked for.
Installing it into a real API server is test_cluster.py's."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import tempfile
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from conftest import ROOT

CHART = ROOT / "charts" / "tollgate"
NAMESPACE = "tollgate-system"
OLDEST, NEWEST = "1.29.0", kubernetes_validate.latest_version()

# Every switch docs/install.md and values.yaml document, each rendered and validated on its own.
SWITCHES = {
    "defaults": {},
    "allow by default": {"defaultAction": "allow"},
    "audit mode": {"mode": "audit"},
    "no CRDs": {"crds": {"install": False}},
    "CRDs not kept": {"crds": {"keep": False}},
    "one replica": {"operator": {"replicas": 1}},
    "hyper reads sidecars' HTTP/1": {"sidecar": {"http1": "hyper"}},
    "injected namespaces": {"injection": {"namespaces": ["agents", "payments"]}},
    "no-privilege boundary": {"injection": {"boundary": "network-policy"}},
    "webhooks fail open": {"webhook": {"failurePolicy": "Ignore", "timeoutSeconds": 10}},
    "approvals webhook": {"approvals": {"webhook": "https://chat.example.com/hooks/tollgate", "retention": "24h"}},
    "counters in a Redis Cluster": {"counters": {"redis": {"url": "rediss://redis-0:6380,rediss://redis-1:6380", "cluster": True,
                                                            "timeout": "20ms", "passwordSecret": "redis/secret"}}},
    "cert-manager": {"certManager": {"enabled": True}},
    "cert-manager with an issuer": {"certManager": {"enabled": True, "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}},
    "traces": {"tracing": {"endpoint": "http://otel-collector.monitoring:4318", "samplingRatio": 0.1}},
    "monitoring": {"monitoring": {"podMonitors": {"enabled": True, "labels": {"release": "prometheus"}}, "rules": {"enabled": True},
                                  "dashboard": {"enabled": True, "annotations": {"grafana_folder": "Tollgate"}}}},
}


class HelmError(Exception):
    """helm refused: its message."""


@functools.cache
def helm_bin() -> Path:
    out = subprocess.run([str(ROOT / "tests" / "cluster" / "build.sh")], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip()) / "helm"


def helm(*args: str) -> str:
    with tempfile.TemporaryDirectory() as home:
        env = {"HELM_CACHE_HOME": home, "HELM_CONFIG_HOME": home, "HELM_DATA_HOME": home, "PATH": "/usr/bin:/bin"}
        out = subprocess.run([str(helm_bin()), *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise HelmError(out.stderr + out.stdout)
    return out.stdout


def render(values: dict | None = None) -> list[dict]:
    """`helm template` as `helm install` would render (NOTES aside), parsed."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(values or {}, f)
        f.flush()
        text = helm("template", "tollgate", str(CHART), "--namespace", NAMESPACE, "--values", f.name)
    return [o for o in yaml.safe_load_all(text) if o]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@functools.cache
def monitoring_crds() -> Path:
    """The directory of the Prometheus Operator's PodMonitor and PrometheusRule CRDs."""
    out = subprocess.run([str(ROOT / "tests" / "cluster" / "monitoring-crds.sh")], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


@functools.cache
def monitoring_crd_schema(kind: str) -> dict:
    """The Prometheus Operator's own CRD schema for `kind`, from its Go module (the version
    tests/cluster/versions.env pins)."""
    crd = yaml.safe_load((monitoring_crds() / f"monitoring.coreos.com_{kind.lower()}s.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def strictly(value, schema: dict, where: str) -> None:
    """jsonschema's check, and no field the schema does not name (the API server would prune it,
    silently: a misspelt field is a setting lost). The schema is not checked as a whole: its
    patterns are Go's, and only those of the fields given are read."""
    jsonschema.Draft4Validator(schema).validate(value)

    def walk(v, s, at):
        if isinstance(v, dict) and "properties" in s and not s.get("x-kubernetes-preserve-unknown-fields"):
            for k, child in v.items():
                assert k in s["properties"], f"{where}: {at}.{k} is not a field of the CRD"
                walk(child, s["properties"][k], f"{at}.{k}")
        elif isinstance(v, list) and "items" in s:
            for i, child in enumerate(v):
                walk(child, s["items"], f"{at}[{i}]")

    walk(value, schema, "spec")


def test_chart_lints_clean_for_the_oldest_and_newest_kubernetes():
    for version in (OLDEST, NEWEST):
        report = helm("lint", "--strict", "--namespace", NAMESPACE, "--kube-version", f"v{version}", str(CHART))
        assert "0 chart(s) failed" in report, report
        assert not re.search(r"\[(INFO|WARNING|ERROR)\]", report), report


@pytest.mark.parametrize("switch", SWITCHES)
@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_chart_renders_objects_kubernetes_accepts_strictly(switch, version):
    objects = render(SWITCHES[switch])
    assert objects
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            strictly(obj["spec"], monitoring_crd_schema(obj["kind"])["properties"]["spec"], where)
        elif obj["apiVersion"].startswith("cert-manager.io/"):
            # No schema for cert-manager's kinds ships offline: check the shape we rely on.
            assert obj["kind"] in ("Issuer", "Certificate") and obj["spec"], where
        else:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                raise AssertionError(f"{where} is invalid for Kubernetes {version}: {e.message} at {list(e.path)}") from None


def test_chart_crds_are_the_generated_ones_byte_for_byte_and_kept_on_uninstall():
    for name in ("mcppolicies.yaml", "mcpclusterpolicies.yaml", "mcpapprovals.yaml"):
        assert (CHART / "files" / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"charts/tollgate/files/crds/{name} drifted from crds/{name}: copy it again")
    rendered = {o["metadata"]["name"]: o for o in render() if o["kind"] == "CustomResourceDefinition"}
    for name in ("mcppolicies.yaml", "mcpclusterpolicies.yaml", "mcpapprovals.yaml"):
        generated = yaml.safe_load((ROOT / "crds" / name).read_text())
        crd = rendered[generated["metadata"]["name"]]
        assert crd["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
        assert crd == generated, "the chart renders the generated CRD unchanged"
    assert not [o for o in render({"crds": {"install": False}}) if o["kind"] == "CustomResourceDefinition"]
    kept = [o for o in render({"crds": {"keep": False}}) if o["kind"] == "CustomResourceDefinition"]
    assert kept and all("annotations" not in o["metadata"] for o in kept)


def test_chart_webhooks_fail_closed_and_skip_system_namespaces_tollgate_pods_and_only_the_operators_own_policy_writes():
    objects = render()
    mutating = one(objects, "MutatingWebhookConfiguration")["webhooks"]
    validating = one(objects, "ValidatingWebhookConfiguration")["webhooks"]
    [approvals] = [h for h in mutating if h["name"] == "approvals.tollgate.dev"]
    [pins] = [h for h in mutating if h["name"] == "pins.tollgate.dev"]
    mutating = [h for h in mutating if h is not approvals and h is not pins]
    for hook in mutating + validating:
        assert hook["failurePolicy"] == "Fail" and hook["timeoutSeconds"] == 5
        assert hook["admissionReviewVersions"] == ["v1"]
        [excluded] = hook["namespaceSelector"]["matchExpressions"]
        assert excluded["key"] == "kubernetes.io/metadata.name" and excluded["operator"] == "NotIn"
        assert set(excluded["values"]) == {"kube-system", "kube-node-lease", "kube-public", NAMESPACE}
        assert hook["clientConfig"]["service"]["namespace"] == NAMESPACE
    [inject] = mutating
    assert inject["objectSelector"]["matchExpressions"] == [{"key": "app.kubernetes.io/part-of", "operator": "NotIn", "values": ["tollgate"]}]
    # No label lets a policy skip its check: only the operator's own writes (the baseline) do.
    assert "objectSelector" not in validating[0]
    assert validating[0]["matchConditions"] == [{
        "name": "not-the-operator",
        "expression": f"request.userInfo.username != 'system:serviceaccount:{NAMESPACE}:tollgate-operator'"}]
    assert mutating[0]["clientConfig"]["service"]["path"] == "/mutate"
    # Injection with the network-policy boundary creates its NetworkPolicy first, never on a dry run.
    assert mutating[0]["sideEffects"] == "NoneOnDryRun" and validating[0]["sideEffects"] == "None"
    assert mutating[0]["reinvocationPolicy"] == "IfNeeded"
    assert mutating[0]["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}]
    assert validating[0]["clientConfig"]["service"]["path"] == "/validate"
    assert set(validating[0]["rules"][0]["resources"]) == {"mcppolicies", "mcpclusterpolicies"}
    deployment = one(objects, "Deployment")
    operator_pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert operator_pod_labels["app.kubernetes.io/part-of"] == "tollgate", "the operator's own pods are skipped"
    loose = render({"webhook": {"failurePolicy": "Ignore", "timeoutSeconds": 10}})
    assert {h["name"]: h["failurePolicy"] for h in one(loose, "MutatingWebhookConfiguration")["webhooks"]} == {
        "inject.tollgate.dev": "Ignore", "approvals.tollgate.dev": "Fail", "pins.tollgate.dev": "Fail"}, \
        "no decision is ever taken unchecked"
    # Decisions on approvals, in every namespace (an approval lives with its workload).
    assert approvals["clientConfig"]["service"]["path"] == "/approvals" and "namespaceSelector" not in approvals
    assert approvals["rules"] == [{"apiGroups": ["tollgate.dev"], "apiVersions": ["v1alpha1"], "operations": ["CREATE", "UPDATE"],
                                   "resources": ["mcpapprovals"], "scope": "Namespaced"}]
    # Acceptances of tool definitions, likewise.
    assert pins["clientConfig"]["service"]["path"] == "/pins" and "namespaceSelector" not in pins
    assert pins["failurePolicy"] == "Fail" and pins["sideEffects"] == "None"
    assert pins["rules"] == [{"apiGroups": ["tollgate.dev"], "apiVersions": ["v1alpha1"], "operations": ["CREATE", "UPDATE", "DELETE"],
                              "resources": ["mcptoolpins"], "scope": "Namespaced"}]
    approver = one(objects, "ClusterRole", "tollgate-approver")
    assert approver["rules"] == [{"apiGroups": ["tollgate.dev"], "resources": ["mcpapprovals"],
                                  "verbs": ["get", "list", "watch", "patch", "update", "approve"]}]
    reviewer = one(objects, "ClusterRole", "tollgate-pin-reviewer")
    assert reviewer["rules"] == [{"apiGroups": ["tollgate.dev"], "resources": ["mcptoolpins"],
                                  "verbs": ["get", "list", "watch", "patch", "update", "accept"]}], \
        "no delete: deleting a pin makes the next list pin the tool anew"


# What the operator does, verb by verb; anything else in the chart's RBAC is a defect.
NEEDED = {
    ("tollgate.dev", "mcppolicies"): {"get", "list", "watch"},
    # The baseline, applied at start (by name: see the test of the posture).
    ("tollgate.dev", "mcpclusterpolicies"): {"get", "list", "watch", "create", "patch"},
    ("tollgate.dev", "mcppolicies/status"): {"patch"},
    ("tollgate.dev", "mcpclusterpolicies/status"): {"patch"},
    ("", "pods"): {"list", "watch"},
    ("", "namespaces"): {"list", "watch", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("authentication.k8s.io", "tokenreviews"): {"create"},
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"): {"get", "patch"},
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations"): {"get", "patch"},
    ("coordination.k8s.io", "leases"): {"create", "get", "patch"},
    ("", "secrets"): {"create", "get", "patch"},
    # The network-policy boundary: what it keeps, and what could go around it.
    ("networking.k8s.io", "networkpolicies"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "services"): {"list", "watch"},
    ("policy.networking.k8s.io", "clusternetworkpolicies"): {"list", "create", "patch", "delete"},
    # Approvals: their phase and clean-up, and the check of who may decide one.
    ("tollgate.dev", "mcpapprovals"): {"get", "list", "watch", "create", "delete"},
    ("tollgate.dev", "mcpapprovals/status"): {"patch"},
    ("authorization.k8s.io", "subjectaccessreviews"): {"create"},
    # Tool pins: made on a sidecar's first use (the verb accept, which the webhook checks of the
    # operator as of anyone), and what the sidecars hold back.
    ("tollgate.dev", "mcptoolpins"): {"get", "list", "watch", "create", "patch", "accept"},
    ("tollgate.dev", "mcptoolpins/status"): {"patch"},
    ("apps", "replicasets"): {"get"},
    ("apps", "statefulsets"): {"get"},
    ("apps", "daemonsets"): {"get"},
    ("batch", "jobs"): {"get"},
}


def grants(role: dict) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule.get("resources", []), rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_chart_rbac_grants_only_what_the_operator_uses_and_secrets_only_in_its_namespace():
    objects = render({"injection": {"namespaces": ["agents"]}})
    cluster = grants(one(objects, "ClusterRole", "tollgate-operator"))
    local_role = one(objects, "Role")
    local = grants(local_role)
    assert local_role["metadata"]["namespace"] == NAMESPACE
    for key, verbs in {**cluster, **local}.items():
        assert key in NEEDED and verbs <= NEEDED[key], f"{key}: {verbs} is more than the operator uses"
    assert ("", "secrets") not in cluster and ("coordination.k8s.io", "leases") not in cluster
    assert local[("", "secrets")] == {"create", "get", "patch"}
    namespace_patch = [r for r in one(objects, "ClusterRole", "tollgate-operator")["rules"] if "patch" in r["verbs"] and r["resources"] == ["namespaces"]]
    assert namespace_patch and namespace_patch[0]["resourceNames"] == ["agents"], "only the namespaces it was asked to label"
    without = grants(one(render(), "ClusterRole", "tollgate-operator"))
    assert "patch" not in without[("", "namespaces")]
    binding = one(objects, "ClusterRoleBinding", "tollgate-operator-issuer-discovery")
    assert binding["roleRef"]["name"] == "system:service-account-issuer-discovery"
    cm_local = grants(one(render({"certManager": {"enabled": True}}), "Role"))
    assert ("", "secrets") not in cm_local, "with cert-manager the operator reads no Secret"


@pytest.mark.parametrize("action,mode", [("deny", "enforce"), ("allow", "enforce"), ("deny", "audit")])
def test_chart_posture_becomes_the_operators_default_and_the_baseline_it_applies_by_name_only(action, mode):
    objects = render({"defaultAction": action, "mode": mode})
    # No custom resource in the chart: Helm cannot create one in the install that creates its
    # CRD (it races discovery); the operator applies the baseline once the CRD is served.
    assert not [o for o in objects if o["apiVersion"].startswith("tollgate.dev/")]
    env = {e["name"]: e.get("value") for e in one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["TOLLGATE_DEFAULT_ACTION"], env["TOLLGATE_BASELINE"], env["TOLLGATE_BASELINE_MODE"]) == (action, "tollgate-baseline", mode)
    writes = [r for r in one(objects, "ClusterRole", "tollgate-operator")["rules"]
              if "mcpclusterpolicies" in r["resources"] and {"create", "patch", "update", "delete"} & set(r["verbs"])]
    assert writes == [{"apiGroups": ["tollgate.dev"], "resources": ["mcpclusterpolicies"],
                       "resourceNames": ["tollgate-baseline"], "verbs": ["create", "patch"]}], "only the baseline"


def test_chart_injection_namespaces_are_labelled_by_the_operator():
    env = {e["name"]: e.get("value") for e in one(render({"injection": {"namespaces": ["agents", "payments"]}}), "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TOLLGATE_INJECT_NAMESPACES"] == "agents,payments"


def test_chart_approvals_settings_reach_the_operator_and_a_webhook_must_be_a_url():
    env = {e["name"]: e.get("value") for e in one(render(SWITCHES["approvals webhook"]), "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["TOLLGATE_APPROVAL_WEBHOOK"], env["TOLLGATE_APPROVAL_RETENTION"]) == ("https://chat.example.com/hooks/tollgate", "24h")
    default = {e["name"]: e.get("value") for e in one(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "TOLLGATE_APPROVAL_WEBHOOK" not in default and default["TOLLGATE_APPROVAL_RETENTION"] == "1h"
    with pytest.raises(HelmError, match="approvals"):
        render({"approvals": {"webhook": "chat.example.com"}})


def test_chart_counters_settings_reach_the_operator_only_when_redis_is_named():
    env = {e["name"]: e.get("value") for e in one(render(SWITCHES["counters in a Redis Cluster"]), "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["TOLLGATE_SIDECAR_COUNTERS"], env["TOLLGATE_SIDECAR_COUNTERS_CLUSTER"], env["TOLLGATE_SIDECAR_COUNTERS_TIMEOUT"],
            env["TOLLGATE_SIDECAR_COUNTERS_PASSWORD_SECRET"]) == ("rediss://redis-0:6380,rediss://redis-1:6380", "true", "20ms", "redis/secret")
    default = {e["name"]: e.get("value") for e in one(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert not any(k.startswith("TOLLGATE_SIDECAR_COUNTERS") for k in default)
    with pytest.raises(HelmError, match="url"):
        render({"counters": {"redis": {"url": "redis-0:6379"}}})


def test_chart_tracing_reaches_the_operator_and_every_sidecar_it_injects_only_when_named():
    env = {e["name"]: e.get("value") for e in one(render(SWITCHES["traces"]), "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["OTEL_EXPORTER_OTLP_ENDPOINT"], env["OTEL_TRACES_SAMPLER_ARG"]) == ("http://otel-collector.monitoring:4318", "0.1")
    assert (env["TOLLGATE_SIDECAR_OTLP_ENDPOINT"], env["TOLLGATE_SIDECAR_TRACE_SAMPLING"]) == ("http://otel-collector.monitoring:4318", "0.1")
    default = {e["name"] for e in one(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert not [n for n in default if "OTLP" in n or "TRACE" in n]
    # The exporter speaks OTLP/HTTP in the clear to a collector beside it.
    for bad in ({"endpoint": "https://collector:4318"}, {"endpoint": "collector:4318"}, {"samplingRatio": 2},
                {"endpoint": "http://collector:4318?x=1"}, {"endpoint": "http://user:secret@collector:4318"}):
        with pytest.raises(HelmError, match="tracing"):
            render({"tracing": bad})


def test_chart_monitoring_ships_the_rules_and_dashboard_files_as_they_are_each_behind_its_switch():
    from monitoring import DASHBOARD, RULES

    objects = render(SWITCHES["monitoring"])
    rule = one(objects, "PrometheusRule", "tollgate-operator")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    board = one(objects, "ConfigMap", "tollgate-operator-dashboard")
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert board["metadata"]["annotations"] == {"grafana_folder": "Tollgate"}
    assert json.loads(board["data"]["tollgate.json"]) == json.loads(DASHBOARD.read_text())
    operator_pods = one(objects, "PodMonitor", "tollgate-operator")
    sidecars = one(objects, "PodMonitor", "tollgate-operator-sidecars")
    deployment = one(objects, "Deployment")
    assert operator_pods["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert {"name": "admin", "containerPort": 9090, "protocol": "TCP"} in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    # The sidecars' monitor selects what injection labels, on the port injection names.
    assert sidecars["spec"]["selector"]["matchLabels"] == {"tollgate.dev/injected": "true"}
    assert sidecars["spec"]["namespaceSelector"] == {"any": True}
    assert sidecars["spec"]["podMetricsEndpoints"][0]["port"] == "tollgate-admin"
    # The jobs the alerts read.
    jobs = {m["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["replacement"] for m in (operator_pods, sidecars)}
    assert jobs == {"tollgate-operator", "tollgate-sidecar"}
    assert 'job="tollgate-sidecar"' in RULES.read_text() and 'job="tollgate-operator"' in RULES.read_text()
    assert all(m["metadata"]["labels"]["release"] == "prometheus" for m in (operator_pods, sidecars))
    assert not [o for o in render() if o["apiVersion"].startswith("monitoring.coreos.com") or o["kind"] == "ConfigMap"]


def test_chart_alerts_pass_promtool_check_and_their_unit_tests():
    from monitoring import RULES, tools_dir

    promtool = tools_dir() / "promtool"
    check = subprocess.run([str(promtool), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS" in check.stdout, check.stdout + check.stderr
    tests = ROOT / "tests" / "monitoring" / "alerts.test.yaml"
    run = subprocess.run([str(promtool), "test", "rules", str(tests)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    # Every alert has a unit test, and says what it means and what to do.
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    tested = {t["alertname"] for case in yaml.safe_load(tests.read_text())["tests"] for t in case.get("alert_rule_test", [])}
    assert set(alerts) <= tested, f"alerts without a test: {set(alerts) - tested}"
    for name, r in alerts.items():
        assert r["labels"]["severity"] in ("critical", "warning", "info"), name
        assert r["annotations"]["summary"] and len(r["annotations"]["description"]) > 60, name


def test_chart_cert_manager_switch_uses_its_certificate_and_ca_injection():
    objects = render({"certManager": {"enabled": True}})
    serving = one(objects, "Certificate", "tollgate-operator")
    assert set(serving["spec"]["dnsNames"]) == {f"tollgate-operator.{NAMESPACE}.svc", f"tollgate-operator.{NAMESPACE}.svc.cluster.local"}
    assert serving["spec"]["issuerRef"] == {"name": "tollgate-operator-ca", "kind": "Issuer"}
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        assert one(objects, kind)["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/tollgate-operator"
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["TOLLGATE_TLS_DIR"] == "/tls" and "TOLLGATE_TLS_SECRET" not in env
    assert pod["volumes"][0]["secret"]["secretName"] == serving["spec"]["secretName"]
    own = render({"certManager": {"enabled": True, "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}})
    assert [o["kind"] for o in own if o["apiVersion"].startswith("cert-manager")] == ["Certificate"]
    assert one(own, "Certificate")["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer"}
    assert not [o for o in render() if o["apiVersion"].startswith("cert-manager")]


def test_chart_operator_runs_hardened_with_a_budget_when_replicated():
    objects = render()
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" and container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert one(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert not [o for o in render({"operator": {"replicas": 1}}) if o["kind"] == "PodDisruptionBudget"]


def test_chart_images_follow_the_app_version_which_is_the_workspace_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    assert chart["appVersion"] == workspace
    deployment = one(render(), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"ghcr.io/tollgate-dev/tollgate-operator:{workspace}"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TOLLGATE_SIDECAR_IMAGE"] == f"ghcr.io/tollgate-dev/tollgate:{workspace}"
    pinned = one(render({"operator": {"image": {"tag": "dev"}}, "sidecar": {"image": {"tag": "dev"}}}), "Deployment")
    assert pinned["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":dev")


def test_chart_sets_only_settings_the_operator_knows(operator_help):
    container = one(render({"certManager": {"enabled": True}}), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    container2 = one(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    names = {e["name"] for e in container["env"] + container2["env"]} - {"POD_NAME", "POD_NAMESPACE"}
    known = set(re.findall(r"env: (\w+)", operator_help)) | set(re.findall(r"\[env: (\w+)", operator_help))
    assert names <= known, f"the chart sets settings the operator does not read: {names - known}"


@pytest.fixture(scope="module")
def operator_help(debug_bins) -> str:
    return subprocess.run([str(debug_bins / "tollgate-operator"), "--help"], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("values,complaint", [
    ({"defaultAction": "maybe"}, "defaultAction"),
    ({"mode": "dry-run"}, "mode"),
    ({"operator": {"replica": 3}}, "replica"),
    ({"webhook": {"failurePolicy": "fail"}}, "failurePolicy"),
    ({"injection": {"namespaces": ["Not_A_Namespace"]}}, "namespaces"),
    ({"certManager": {"enabled": "yes"}}, "enabled"),
])
def test_chart_schema_rejects_unknown_keys_and_bad_values_naming_them(values, complaint):
    with pytest.raises(HelmError) as err:
        render(values)
    assert complaint in str(err.value), str(err.value)


def test_chart_images_are_built_by_dockerfiles_that_run_the_binaries_nonroot():
    # The sidecar's image also runs `tollgate init-redirect`, so it carries iptables (both back
    # ends); the operator's is distroless.
    for dockerfile, package, binary, base in [("sidecar/Dockerfile", "tollgate-sidecar", "tollgate", "install -y --no-install-recommends iptables"),
                                              ("operator/Dockerfile", "tollgate-operator", "tollgate-operator", "distroless")]:
        text = (ROOT / dockerfile).read_text()
        assert f"cargo build --release --locked -p {package} --bin {binary}" in text
        assert f'ENTRYPOINT ["/usr/local/bin/{binary}"]' in text
        assert base in text and "USER 65532:65532" in text
        crate = tomllib.loads((ROOT / dockerfile.split("/")[0] / "Cargo.toml").read_text())
        assert binary in {b["name"] for b in crate["bin"]}, "the image runs a binary its crate builds"
