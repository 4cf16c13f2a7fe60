"""The operator's behaviour on a real control plane (tests/cluster): the chart installed by helm,
the operator run here as the chart's ServiceAccount (cluster.py), pods and policies created with
kubectl so the API server itself calls the webhooks, and real sidecars following the stream.

test_cluster.py proves the chart and the control plane; this module, what the operator does
with them. Each test starts its own operator on the port the chart's Service is routed to, and
stops it (SIGTERM: it hands the lease on) when it ends.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import json
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from cluster import (NAMESPACE, OPERATOR_PORT, ROOT, ControlPlane, Operator, admission_review, eventually, mcp_pod, policy, sidecar,  # noqa: F401
                     start_operator)
from conftest import free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from rpc import HEADERS, call
from test_traces import collector, otelcol  # noqa: F401 (fixtures)

INJECT = {"tollgate.dev/injection": "enabled"}
# The chart labels these for injection (injection.namespaces), and its RBAC lets the operator
# patch no other namespace.
LABELLED = ["labelled-a", "labelled-b"]


@pytest.fixture(scope="module")
def kube(tmp_path_factory):
    """A control plane with the chart installed (default values, plus namespaces to label) and
    its Service routed to OPERATOR_PORT here."""
    cp = ControlPlane.start(tmp_path_factory.mktemp("cluster"))
    try:
        cp.install("--set", "injection.namespaces={%s}" % ",".join(LABELLED))
        cp.route_service_to_host(NAMESPACE, "tollgate-operator", "https", OPERATOR_PORT)
        yield cp
    finally:
        cp.stop()


@pytest.fixture
def operator(kube, debug_bins, tmp_path):
    started: list[Operator] = []

    def start(name: str = "operator", *args: str, port: int = OPERATOR_PORT) -> Operator:
        op = start_operator(kube, debug_bins, tmp_path, name, port, *args)
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()


def create(kube: ControlPlane, manifest: dict) -> dict:
    """`kubectl create`, returning what the API server stored."""
    return json.loads(kube.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(manifest)).stdout)


# ---------------------------------------------------------------------------------------------
# Admission


def generated_pod(ns: str, **annotations: str) -> dict:
    """A pod as a Deployment's ReplicaSet creates it: a generated name, a probe on the named port."""
    pod = mcp_pod("ignored", ns, labels={"app": "github"}, annotations=annotations)
    del pod["metadata"]["name"]
    pod["metadata"]["generateName"] = "github-mcp-7d9f-"
    pod["spec"]["containers"][0]["readinessProbe"] = {"httpGet": {"path": "/health", "port": "mcp"}}
    return pod


def named(containers: list[dict], name: str) -> dict:
    return next(c for c in containers if c["name"] == name)


def test_operator_a_pod_created_in_an_enabled_namespace_is_stored_with_the_redirect_and_a_sidecar_that_trusts_the_operators_ca(kube, operator):
    kube.namespace("admit-on", **INJECT)
    op = operator()
    stored = create(kube, generated_pod("admit-on"))

    init = stored["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["tollgate-init", "tollgate-proxy"], "the redirect is in place before the sidecar starts"
    assert init[0]["args"] == ["init-redirect", "--port", "8000", "--proxy-port", "15480", "--proxy-uid", "2417", "--proxy-gid", "2417"]
    assert init[0]["securityContext"]["capabilities"] == {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
    sidecar = init[1]
    assert sidecar["restartPolicy"] == "Always"
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["TOLLGATE_CONTROL_PLANE_CA"] == kube.ca(), "sidecars trust the operator's CA"
    assert json.loads(env["TOLLGATE_APP_PROBES"]) == {
        "server/readiness": {"httpGet": {"port": 8000, "path": "/health", "timeoutSeconds": 1}}}
    app = stored["spec"]["containers"][0]
    assert app["readinessProbe"]["httpGet"] == {"path": "/app-health/server/readiness", "port": 15481, "scheme": "HTTP"}, \
        "the kubelet's probe would be redirected to the sidecar, so the sidecar runs it"
    assert stored["metadata"]["labels"]["tollgate.dev/injected"] == "true"

    # The API server re-invokes the webhook when a later one changed the pod: nothing changes.
    with op.client(kube.ca()) as c:
        again = c.post("/mutate", json=admission_review(stored)).json()["response"]
    assert again["allowed"] and "patch" not in again, again


def test_operator_where_pod_security_forbids_net_admin_a_pod_is_refused_saying_so_and_the_network_policy_boundary_is_admitted(kube, operator):
    kube.namespace("baseline", **INJECT, **{"pod-security.kubernetes.io/enforce": "baseline"})
    operator()
    refused = kube.kubectl("create", "-f", "-", input=json.dumps(generated_pod("baseline")), check=False)
    assert refused.returncode != 0
    assert 'denied the request: Tollgate cannot inject this pod: tollgate.dev/boundary: the namespace enforces Pod Security "baseline"' in refused.stderr, refused.stderr
    assert "annotate the pod tollgate.dev/boundary: network-policy" in refused.stderr

    # No privilege: the API server's own Pod Security admission accepts what injection made.
    stored = create(kube, generated_pod("baseline", **{"tollgate.dev/boundary": "network-policy"}))
    assert [c["name"] for c in stored["spec"]["initContainers"]] == ["tollgate-proxy"]
    assert named(stored["spec"]["initContainers"], "tollgate-proxy")["ports"][0]["name"] == "mcp", \
        "a Service targeting `mcp` by name reaches the sidecar"
    app = stored["spec"]["containers"][0]
    assert app["ports"][0]["name"] == "tollgate-app"
    assert app["readinessProbe"]["httpGet"]["port"] == "tollgate-app", "the app's probe follows its renamed port"
    assert stored["metadata"]["labels"]["tollgate.dev/app-port"] == "8000"
    assert kube.get("-n", "baseline", "networkpolicy", "tollgate-boundary-8000")["spec"]["podSelector"] == {
        "matchLabels": {"tollgate.dev/app-port": "8000"}}


def shaped(name: str, **spec) -> dict:
    """An MCP pod with more of what real pods bring."""
    pod = mcp_pod(name, "shapes")
    pod["metadata"]["annotations"] = spec.pop("annotations", {})
    pod["spec"].update(spec.pop("pod", {}))
    pod["spec"]["containers"][0].update(spec)
    return pod


# Istio's sidecar mode as its injector writes it: istio-init (root, NET_ADMIN and NET_RAW) and
# the native sidecar istio-proxy as UID 1337 on Istio's ports (15090 is its Prometheus port).
ISTIO_INIT = {"name": "istio-init", "image": "istio/proxyv2", "args": ["istio-iptables"],
              "securityContext": {"runAsUser": 0, "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}}}
ISTIO_PROXY = {"name": "istio-proxy", "image": "istio/proxyv2", "restartPolicy": "Always",
               "securityContext": {"runAsUser": 1337, "runAsGroup": 1337},
               "ports": [{"name": "http-envoy-prom", "containerPort": 15090, "protocol": "TCP"},
                         {"name": "health", "containerPort": 15021, "protocol": "TCP"}]}
MESH = {"initContainers": [{"name": "other-init", "image": "busybox", "args": ["true"]}, ISTIO_PROXY],
        "volumes": [{"name": "data", "emptyDir": {}}]}
HOOKED = {"lifecycle": {"preStop": {"httpGet": {"path": "/drain", "port": "mcp"}}},
          "startupProbe": {"tcpSocket": {"port": 8000}}, "livenessProbe": {"httpGet": {"path": "/live", "port": 8000}}}
SHAPES = {
    "another init container and a mesh's native sidecar on Istio's ports": (
        shaped("mesh", pod=MESH), ["tollgate-init", "tollgate-proxy", "other-init", "istio-proxy"]),
    "Istio's sidecar mode, with the network-policy boundary": (
        shaped("istio-np", annotations={"tollgate.dev/boundary": "network-policy"}, pod={"initContainers": [ISTIO_INIT, ISTIO_PROXY]}),
        ["tollgate-proxy", "istio-init", "istio-proxy"]),
    "Istio's ambient mode (nothing in the pod; ztunnel redirects)": (
        shaped("ambient", pod={}, annotations={"ambient.istio.io/redirection": "enabled"}), ["tollgate-init", "tollgate-proxy"]),
    "hooks and probes on the port, by name and number": (shaped("hooked", **HOOKED), ["tollgate-init", "tollgate-proxy"]),
    "a hostPort": (shaped("host-port", ports=[{"name": "mcp", "containerPort": 8000, "hostPort": 18000}]), ["tollgate-init", "tollgate-proxy"]),
    "a shared process namespace and a non-root app": (
        shaped("shared-pid", pod={"shareProcessNamespace": True, "securityContext": {"runAsUser": 1000, "runAsNonRoot": True}}),
        ["tollgate-init", "tollgate-proxy"]),
    "an unnamed port chosen by number": (
        shaped("by-number", annotations={"tollgate.dev/port": "8000"}, ports=[{"containerPort": 8000}]), ["tollgate-init", "tollgate-proxy"]),
    "hooks and probes with the port handoff": (
        shaped("handoff-hooked", annotations={"tollgate.dev/boundary": "network-policy"}, **HOOKED), ["tollgate-proxy"]),
}


@pytest.fixture(scope="module")
def shapes(kube):
    kube.namespace("shapes", **INJECT)


@pytest.mark.parametrize("shape", SHAPES)
def test_operator_the_api_server_stores_injected_pods_of_the_shapes_real_pods_bring(kube, shapes, operator, shape):
    operator()
    pod, init = SHAPES[shape]
    stored = create(kube, pod)
    assert [c["name"] for c in stored["spec"]["initContainers"]] == init
    for theirs in pod["spec"].get("initContainers", []):
        kept = named(stored["spec"]["initContainers"], theirs["name"])
        assert {k: kept[k] for k in theirs} == theirs, "their init containers are kept as they were"
    app = stored["spec"]["containers"][0]
    redirect = init[0] == "tollgate-init"
    for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
        if kind in pod["spec"]["containers"][0]:
            get = app[kind].get("httpGet", {})
            # Redirected, the kubelet would reach the sidecar: it asks the sidecar, which asks the app.
            assert (get.get("port") == 15481) == redirect, (kind, app[kind])
    if "lifecycle" in app:
        port = app["lifecycle"]["preStop"]["httpGet"]["port"]
        assert port == (15481 if redirect else "tollgate-app"), app["lifecycle"]


def test_operator_a_pod_that_would_collide_with_the_sidecar_is_refused_by_the_api_server_naming_the_field(kube, shapes, operator):
    operator()
    cases = [
        (shaped("on-proxy-port", ports=[{"name": "mcp", "containerPort": 8000}, {"name": "other", "containerPort": 15480}]),
         "spec.containers[0].ports[1].containerPort: 15480 is a port the sidecar listens on"),
        (shaped("as-proxy-uid", securityContext={"runAsUser": 2417}),
         "tollgate.dev/boundary: spec.containers[0] (server) runs as UID 2417, the sidecar's"),
        (shaped("as-proxy-gid", securityContext={"runAsUser": 1000, "runAsGroup": 2417}),
         "tollgate.dev/boundary: spec.containers[0] (server) runs as GID 2417, the sidecar's"),
        # Istio's init container could remove the redirect: the way out is named.
        (shaped("istio-redirect", pod={"initContainers": [ISTIO_INIT, ISTIO_PROXY]}),
         "tollgate.dev/boundary: spec.initContainers[0] (istio-init) adds the capability NET_ADMIN, so it could remove the "
         "redirect; use tollgate.dev/boundary: network-policy"),
    ]
    for pod, says in cases:
        out = kube.kubectl("create", "-f", "-", input=json.dumps(pod), check=False)
        assert out.returncode != 0 and f"Tollgate cannot inject this pod: {says}" in out.stderr, out.stderr


def test_operator_pods_that_opt_out_or_cannot_be_injected_are_stored_as_they_came_and_a_bad_annotation_is_refused(kube, operator):
    kube.namespace("admit-off")
    kube.namespace("admit-opt", **INJECT)
    operator()

    def unchanged(stored: dict) -> None:
        assert "initContainers" not in stored["spec"], stored["spec"]
        assert stored["spec"]["containers"][0]["ports"][0]["name"] == "mcp"
        assert "tollgate.dev/injected" not in stored["metadata"].get("labels", {})

    unchanged(create(kube, mcp_pod("plain", "admit-off")))
    unchanged(create(kube, mcp_pod("opted-out", "admit-opt", annotations={"tollgate.dev/inject": "false"})))

    # A pod that asked and cannot be protected is refused, naming the way out; never stored
    # unprotected (a ReplicaSet's pod would carry a warning nobody reads).
    host = mcp_pod("host", "admit-opt")
    host["spec"]["hostNetwork"] = True
    out = kube.kubectl("create", "-f", "-", input=json.dumps(host), check=False)
    assert out.returncode != 0 and "spec.hostNetwork: the pod uses the node's network" in out.stderr, out.stderr
    assert 'tollgate.dev/inject: "false"' in out.stderr
    port = mcp_pod("bad-port", "admit-opt", annotations={"tollgate.dev/port": "8080/TCP"})
    out = kube.kubectl("create", "-f", "-", input=json.dumps(port), check=False)
    assert out.returncode != 0 and 'tollgate.dev/port: no container has a port named "8080/TCP"' in out.stderr, out.stderr
    # Opted out explicitly, it is stored as it came.
    host["metadata"]["annotations"] = {"tollgate.dev/inject": "false"}
    unchanged(create(kube, host))

    bad = kube.kubectl("create", "-f", "-", input=json.dumps(mcp_pod("bad", "admit-opt", annotations={"tollgate.dev/inject": "yes"})),
                       check=False)
    assert bad.returncode != 0
    assert 'admission webhook "inject.tollgate.dev" denied the request' in bad.stderr
    assert "tollgate.dev/inject" in bad.stderr, bad.stderr
    assert kube.kubectl("-n", "admit-opt", "get", "pod", "bad", check=False).returncode != 0, "nothing was stored"


def test_operator_an_invalid_policy_is_refused_with_every_problem_in_the_words_tollgate_check_uses(kube, operator, tollgate_bin, tmp_path):
    kube.namespace("shop")
    operator()
    # Problems the CRD's schema cannot see (its pattern refuses a rateLimit like "5/fortnight"
    # before any webhook): a regex that does not compile, a bound that is not a number.
    bad = policy("broken", {"tools": {
        "run_query": {"rules": [{"name": "select only", "conditions": [{"path": "args.sql", "op": "regex", "value": "("}]}]},
        "create_issue": {"rules": [{"name": "small", "conditions": [{"path": "args.n", "op": "lte", "value": "many"}]}]},
    }}, "shop")
    out = kube.apply(bad, check=False)
    assert out.returncode != 0
    assert "McpPolicy shop/broken is invalid (2 problems)" in out.stderr, out.stderr
    assert "spec.tools.run_query.rules[0].conditions[0].value" in out.stderr
    assert "spec.tools.create_issue.rules[0].conditions[0].value" in out.stderr
    # `tollgate check` on the same policy says the same things.
    file = tmp_path / "broken.yaml"
    file.write_text(yaml.safe_dump(bad))
    check = subprocess.run([str(tollgate_bin), "check", "--policy", str(file)], capture_output=True, text=True)
    assert check.returncode != 0
    for line in check.stderr.splitlines()[:2]:
        assert line.split(": ", 1)[-1] in out.stderr, (line, out.stderr)

    kube.apply(policy("fine", {"tools": {"read_file": {"rules": []}}}, "shop"))


def test_operator_a_body_that_is_not_an_admission_review_gets_400_naming_why(kube, operator):
    op = operator()
    with op.client(kube.ca()) as c:
        r = c.post("/validate", content=b"{not json")
    assert r.status_code == 400 and "AdmissionReview" in r.text


# ---------------------------------------------------------------------------------------------
# Certificates


def served_certificate(op: Operator, ca: str) -> bytes:
    ctx = ssl.create_default_context(cadata=ca)
    with socket.create_connection((op.host, op.port)) as raw, ctx.wrap_socket(raw, server_hostname=op.host) as tls:
        return tls.getpeercert(binary_form=True)


def test_operator_issues_its_certificate_and_writes_the_ca_bundle_of_the_charts_webhooks(kube, operator):
    op = operator()
    ca = kube.ca()
    bundle = base64.b64encode(ca.encode()).decode()
    for kind in ["mutatingwebhookconfiguration/tollgate-operator-inject", "validatingwebhookconfiguration/tollgate-operator-validate"]:
        assert kube.get(kind)["webhooks"][0]["clientConfig"]["caBundle"] == bundle, kind
    served_certificate(op, ca)  # it chains to that CA, for the address sidecars here dial


def test_operator_rotates_its_serving_certificate_without_dropping_a_stream(kube, operator, sidecar):
    # A fresh Secret, so the first certificate is issued with the short lifetime.
    kube.kubectl("-n", NAMESPACE, "delete", "secret", "tollgate-operator-tls", "--ignore-not-found")
    kube.namespace("rotate", **INJECT)
    op = operator("operator-rotate", "--cert-lifetime", "6s", "--cert-check", "500ms")
    ca = kube.ca()
    create(kube, mcp_pod("mcp-0", "rotate"))
    side = sidecar(op.url, ca, kube.pod_token("rotate", "mcp-0"))

    first = served_certificate(op, ca)
    eventually(lambda: served_certificate(op, ca) != first, what="the serving certificate was rotated", timeout=15)
    assert kube.ca() == ca, "the CA stays"
    kube.apply(policy("p", {"default": "deny", "tools": {"read_file": {"rules": []}}}, "rotate"))
    eventually(lambda: side.allows("read_file"), what="a policy applied after rotation reached the sidecar")
    assert "stream failed" not in side.log.read_text(), "the stream was not dropped by rotation"


def issue(common_name: str, ip: str) -> dict[str, bytes]:
    """A CA and a serving certificate for `ip` signed by it, as cert-manager's Secret holds them."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)])).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return {
        "ca.crt": ca.public_bytes(pem),
        "tls.crt": cert.public_bytes(pem),
        "tls.key": key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    }


def test_operator_with_cert_manager_serves_the_mounted_certificate_and_follows_its_renewal(kube, operator, tmp_path):
    issued, renewed = issue("issuer-1", kube.host_ip), issue("issuer-2", kube.host_ip)
    mounted = tmp_path / "tls"
    mounted.mkdir()

    def mount(files: dict[str, bytes]) -> None:
        for name, data in files.items():
            (mounted / name).write_bytes(data)

    mount(issued)
    op = operator("operator-cm", "--tls-dir", str(mounted), "--cert-check", "300ms")

    def served_by(files) -> bool:
        try:
            with op.client(files["ca.crt"].decode()) as c:
                return c.post("/validate", content=b"x").status_code == 400
        except httpx.ConnectError:
            return False

    assert served_by(issued) and not served_by(renewed)
    mount(renewed)
    eventually(lambda: served_by(renewed), what="the renewed certificate is served")


# ---------------------------------------------------------------------------------------------
# Status


def condition(obj: dict, type_: str) -> dict:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


def test_operator_policy_status_reports_acceptance_readiness_and_selected_pods_and_a_policy_that_got_in_while_it_was_down(kube, operator):
    kube.namespace("status", **INJECT)
    op = operator()  # pods in an injection namespace are created through its webhook
    create(kube, mcp_pod("github-0", "status", labels={"app": "github"}))
    create(kube, mcp_pod("jira-0", "status", labels={"app": "jira"}))
    kube.apply(policy("github", {"selector": {"matchLabels": {"app": "github"}},
                                 "tools": {"read_file": {"rules": []}, "create_issue": {"rules": []}}}, "status"))

    def get():
        return kube.get("-n", "status", "mcppolicy", "github")

    p = eventually(lambda: get().get("status") and get(), what="status written")
    assert p["status"]["observedGeneration"] == 1
    assert p["status"]["selectedPods"] == 1 and p["status"]["tools"] == 2
    assert condition(p, "Accepted")["status"] == "True" and condition(p, "Ready")["status"] == "True"

    create(kube, mcp_pod("github-1", "status", labels={"app": "github"}))
    eventually(lambda: get()["status"]["selectedPods"] == 2, what="a new pod was counted")

    # The operator is down and the webhook set to `failurePolicy: Ignore` (a chart switch): a
    # bad spec gets in. When the operator is back it says so, and why.
    op.stop()
    hook = "validatingwebhookconfiguration/tollgate-operator-validate"
    kube.kubectl("patch", hook, "--type=json", "-p", '[{"op":"replace","path":"/webhooks/0/failurePolicy","value":"Ignore"}]')
    try:
        kube.kubectl("-n", "status", "patch", "mcppolicy", "github", "--type=merge", "-p", json.dumps(
            {"spec": {"tools": {"create_issue": {"rules": [{"name": "r", "conditions": [{"path": "args.t", "op": "regex", "value": "("}]}]}}}}))
    finally:
        kube.kubectl("patch", hook, "--type=json", "-p", '[{"op":"replace","path":"/webhooks/0/failurePolicy","value":"Fail"}]')
    operator("operator-back")
    p = eventually(lambda: get()["status"]["observedGeneration"] == 2 and get(), what="the new generation was reconciled")
    accepted = condition(p, "Accepted")
    assert accepted["status"] == "False" and "spec.tools.create_issue.rules[0].conditions[0].value" in accepted["message"]
    events = eventually(lambda: [e for e in kube.get("-n", "status", "events.events.k8s.io")["items"] if e.get("reason") == "Invalid"],
                        what="an Event says the policy is invalid")
    assert events[0]["regarding"]["name"] == "github" and events[0]["type"] == "Warning"
    # The webhook does not stand in the way of deleting a broken policy.
    kube.kubectl("-n", "status", "delete", "mcppolicy", "github")


def test_operator_status_is_written_only_when_it_changes(kube, operator):
    kube.namespace("quiet")
    operator()
    kube.apply(policy("p", {"tools": {}}, "quiet"))
    first = eventually(lambda: (o := kube.get("-n", "quiet", "mcppolicy", "p")).get("status") and o, what="status written")
    for i in range(5):  # every namespace event makes the controller look at the policies again
        kube.namespace(f"noise-{i}")
    time.sleep(1.0)
    assert kube.get("-n", "quiet", "mcppolicy", "p")["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]


# ---------------------------------------------------------------------------------------------
# The policy stream and the sidecar


def test_operator_a_policy_change_reaches_the_sidecar_which_outlives_the_operator_and_follows_its_successor(kube, operator, sidecar):
    kube.namespace("live", **INJECT)
    op = operator()
    kube.apply(policy("github", {"default": "deny", "tools": {"read_file": {"rules": []}, "create_issue": {"rules": []}}}, "live"))
    create(kube, mcp_pod("github-mcp", "live", labels={"app": "github"}))
    side = sidecar(op.url, kube.ca(), kube.pod_token("live", "github-mcp"))
    eventually(lambda: side.allows("create_issue") and side.allows("read_file"), what="the policy reached the sidecar")
    assert not side.allows("delete_repository"), "default: deny"

    kube.apply(policy("github", {"default": "deny", "tools": {"read_file": {"rules": []}, "create_issue": {
        "rules": [{"name": "frozen", "action": "deny", "onDeny": "Issues are frozen"}]}}}, "live"))
    eventually(lambda: not side.allows("create_issue"), what="the change reached the sidecar")
    assert "Issues are frozen" in json.dumps(side.call("create_issue"))

    op.stop(signal.SIGKILL)
    time.sleep(1.0)
    assert side.ready(), "the sidecar stays ready on its last policy"
    assert side.allows("read_file") and not side.allows("create_issue") and not side.allows("delete_repository")

    # The operator comes back (the same Service): the sidecar reconnects and follows again.
    operator("operator-restarted")
    kube.apply(policy("github", {"default": "deny", "tools": {"read_file": {"rules": []}, "create_issue": {"rules": []}}}, "live"))
    eventually(lambda: side.allows("create_issue"), timeout=40, what="the sidecar reconnected to the restarted operator")


def test_operator_namespace_and_pod_labels_change_which_policies_apply(kube, operator, sidecar):
    kube.namespace("labels", **INJECT)
    op = operator()
    kube.apply({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "McpClusterPolicy", "metadata": {"name": "payments-no-delete"},
        "spec": {"namespaceSelector": {"matchLabels": {"team": "payments"}},
                 "tools": {"delete_repository": {"rules": [{"name": "never", "action": "deny"}]}}},
    })
    kube.apply(policy("tools", {"tools": {"delete_repository": {"rules": []}, "create_issue": {"rules": []}}}, "labels"))
    kube.apply(policy("frozen", {"selector": {"matchLabels": {"frozen": "yes"}},
                                 "tools": {"create_issue": {"rules": [{"name": "frozen", "action": "deny"}]}}}, "labels"))
    create(kube, mcp_pod("mcp-0", "labels"))
    side = sidecar(op.url, kube.ca(), kube.pod_token("labels", "mcp-0"))
    eventually(lambda: side.allows("delete_repository") and side.allows("create_issue"), what="the namespace's policy applies")

    kube.kubectl("label", "namespace", "labels", "team=payments")
    eventually(lambda: not side.allows("delete_repository"), what="the namespace label brought the cluster policy in")
    kube.kubectl("-n", "labels", "label", "pod", "mcp-0", "frozen=yes")
    eventually(lambda: not side.allows("create_issue"), what="the pod label brought the namespaced policy in")
    kube.kubectl("-n", "labels", "label", "pod", "mcp-0", "frozen-")
    eventually(lambda: side.allows("create_issue"), what="removing the label took it out again")


def test_operator_a_sidecar_denies_everything_and_is_not_ready_until_its_first_policy(kube, sidecar):
    nobody = free_port()
    side = sidecar(f"https://127.0.0.1:{nobody}", issue("nobody", "127.0.0.1")["ca.crt"].decode(), "whatever", wait_ready=False)
    assert not side.ready()
    answer = side.call("read_file")
    assert "error" in answer and "No policy is loaded yet" in json.dumps(answer)


def test_operator_the_stream_refuses_tokens_that_are_not_bound_to_a_pod(kube, operator):
    op = operator()
    kube.kubectl("-n", "default", "create", "serviceaccount", "not-a-pod")
    unbound = kube.kubectl("-n", "default", "create", "token", "not-a-pod", "--audience", "tollgate").stdout.strip()
    with op.client(kube.ca()) as c:
        assert c.get("/v1/policy").status_code == 401
        assert c.get("/v1/policy", headers={"authorization": "Bearer forged"}).status_code == 403
        r = c.get("/v1/policy", headers={"authorization": f"Bearer {unbound}"})
        assert r.status_code == 403 and "projected" in r.text, r.text


def test_operator_agents_service_account_tokens_are_verified_offline_by_the_sidecar_and_match_subjects(kube, operator, sidecar):
    kube.namespace("sa", **INJECT)
    kube.namespace("agents")
    for account in ("report-bot", "intruder"):
        kube.kubectl("-n", "agents", "create", "serviceaccount", account)
    op = operator()
    kube.apply(policy("everyone", {"tools": {"read_file": {"rules": []}, "delete_repository": {"rules": []}}}, "sa"))
    kube.apply(policy("bot-only", {"subjects": [{"serviceAccount": "agents/report-bot"}], "tools": {
        "create_issue": {"rules": []},
        "delete_repository": {"rules": [{"name": "bots never delete", "action": "deny"}]}}}, "sa"))
    create(kube, mcp_pod("mcp-0", "sa"))
    side = sidecar(op.url, kube.ca(), kube.pod_token("sa", "mcp-0"))

    def token(account: str, audience: str = "tollgate") -> str:
        return kube.kubectl("-n", "agents", "create", "token", account, "--audience", audience).stdout.strip()

    bot, other = token("report-bot"), token("intruder")
    eventually(lambda: side.allows("create_issue", token=bot), what="the cluster's keys and the policies reached the sidecar")
    assert not side.allows("delete_repository", token=bot), "the bot's own policy denies it"
    assert side.allows("delete_repository", token=other), "another account is not governed by the bot's policy"
    assert not side.allows("create_issue", token=other), "nor given its allows"
    wrong_audience = httpx.post(f"{side.url}/mcp", headers={**HEADERS, "authorization": f"Bearer {token('report-bot', 'api')}"},
                                json=call(1, "create_issue", {"title": "x"}))
    assert wrong_audience.status_code == 401


def test_operator_labels_the_namespaces_the_chart_names_for_injection_and_no_other(kube, operator):
    kube.namespace(LABELLED[0])
    kube.namespace("not-named")
    operator()

    def injection(ns: str) -> str | None:
        return kube.get("namespace", ns)["metadata"]["labels"].get("tollgate.dev/injection")

    eventually(lambda: injection(LABELLED[0]) == "enabled", what="a named namespace is labelled")
    kube.namespace(LABELLED[1])
    eventually(lambda: injection(LABELLED[1]) == "enabled", what="a named namespace created later is labelled too")
    assert injection("not-named") is None


# ---------------------------------------------------------------------------------------------
# The network-policy boundary (no privilege): NetworkPolicies, and ClusterNetworkPolicies where
# the cluster serves them, made through the API server. No network enforces them here (no
# kubelet, no CNI): the namespace suite proves the redirect's enforcement, this one what the
# operator asks the network for and what it reports.

NP = {"tollgate.dev/boundary": "network-policy"}
ALL_BUT_8000 = [{"protocol": "TCP", "port": 1, "endPort": 7999}, {"protocol": "TCP", "port": 8001, "endPort": 65535},
                {"protocol": "UDP", "port": 1, "endPort": 65535}, {"protocol": "SCTP", "port": 1, "endPort": 65535}]


def np_pod(name: str, ns: str, port: int = 8000, host_port: bool = False) -> dict:
    pod = mcp_pod(name, ns, labels={"app": "github"}, annotations=NP)
    [p] = pod["spec"]["containers"][0]["ports"]
    p["containerPort"] = port
    if host_port:
        p["hostPort"] = port
    return pod


def events(kube: ControlPlane, ns: str, reason: str, regarding: str) -> list[dict]:
    return [e for e in kube.get("-n", ns, "events.events.k8s.io")["items"]
            if e.get("reason") == reason and e["regarding"]["name"] == regarding]


def test_operator_the_network_policy_boundary_exists_before_its_pod_is_stored_never_on_a_dry_run_and_goes_with_the_last_pod(kube, operator):
    kube.namespace("np-dry", **INJECT)
    kube.namespace("np-made", **INJECT)
    operator("operator", "--network-policy-grace=2s")

    dry = json.loads(kube.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                                  input=json.dumps(np_pod("dry", "np-dry"))).stdout)
    assert dry["metadata"]["labels"]["tollgate.dev/app-port"] == "8000", "the dry run was injected"
    assert kube.get("-n", "np-dry", "networkpolicies")["items"] == [], "and had no side effect"

    stored = create(kube, np_pod("github-0", "np-made"))
    # No waiting: the webhook made it before it let the pod be stored.
    np = kube.get("-n", "np-made", "networkpolicy", "tollgate-boundary-8000")
    assert np["metadata"]["creationTimestamp"] <= stored["metadata"]["creationTimestamp"]
    assert np["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "tollgate-operator", "tollgate.dev/app-port": "8000"}
    assert np["spec"] == {"podSelector": {"matchLabels": {"tollgate.dev/app-port": "8000"}}, "policyTypes": ["Ingress"],
                          "ingress": [{"ports": ALL_BUT_8000}]}, "every port of every protocol from anywhere, but the app's"
    create(kube, np_pod("github-1", "np-made"))
    assert len(kube.get("-n", "np-made", "networkpolicies")["items"]) == 1, "pods with the same port share it"

    kube.kubectl("-n", "np-made", "delete", "pod", "github-0")
    time.sleep(3)  # past the grace: one pod still needs it
    kube.get("-n", "np-made", "networkpolicy", "tollgate-boundary-8000")
    kube.kubectl("-n", "np-made", "delete", "pod", "github-1")
    eventually(lambda: kube.get("-n", "np-made", "networkpolicies")["items"] == [], what="collected once no pod needs it")

    # Someone deletes it while a pod needs it: the leader puts it back.
    create(kube, np_pod("github-2", "np-made"))
    kube.kubectl("-n", "np-made", "delete", "networkpolicy", "tollgate-boundary-8000")
    eventually(lambda: kube.get("-n", "np-made", "networkpolicy", "tollgate-boundary-8000")["spec"]["ingress"],
               what="the NetworkPolicy was made again")

    # Someone else's policy by that name is never overwritten: the pod is refused, saying why.
    kube.namespace("np-taken", **INJECT)
    kube.apply({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "tollgate-boundary-8000", "namespace": "np-taken"}, "spec": {"podSelector": {}}})
    refused = kube.kubectl("create", "-f", "-", input=json.dumps(np_pod("github-0", "np-taken")), check=False)
    assert refused.returncode != 0
    assert "NetworkPolicy tollgate-boundary-8000 exists and is not Tollgate's" in refused.stderr, refused.stderr
    assert kube.get("-n", "np-taken", "networkpolicy", "tollgate-boundary-8000")["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}


def test_operator_ways_around_the_network_policy_boundary_are_reported_in_pod_events_and_the_policy_status(kube, operator):
    ns = "np-open"
    kube.namespace(ns, **INJECT)
    operator("operator", "--network-policy-grace=2s")
    kube.apply(policy("github", {"selector": {"matchLabels": {"app": "github"}}, "tools": {}}, ns))
    create(kube, np_pod("github-0", ns))
    host = create(kube, np_pod("github-host", ns, host_port=True))
    # Its hostPort moved to the sidecar's port: the node's clients reach the sidecar, not the app.
    assert "hostPort" not in host["spec"]["containers"][0]["ports"][0]
    assert named(host["spec"]["initContainers"], "tollgate-proxy")["ports"][0]["hostPort"] == 8000
    kube.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "by-number", "namespace": ns},
                "spec": {"selector": {"app": "github"}, "ports": [{"port": 80, "targetPort": 8000}]}})
    kube.apply({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "allow-all", "namespace": ns},
                "spec": {"podSelector": {}, "ingress": [{}]}})

    def boundary() -> dict:
        return condition(kube.get("-n", ns, "mcppolicy", "github"), "Boundary")

    open_ = eventually(lambda: (b := boundary())["status"] == "False" and "allow-all" in b["message"] and b,
                       what="the policy's Boundary condition names the ways around")
    assert open_["reason"] == "Open"
    for finding in [
        f"{ns}/github-0: NetworkPolicy allow-all (spec.ingress[0]) admits port 8000 from anywhere",
        f"{ns}/github-0: Service by-number (spec.ports[0]) targets port 8000 by number",
    ]:
        assert finding in open_["message"], open_["message"]
    assert "hostPort" not in open_["message"], open_["message"]
    [warning] = eventually(lambda: [e for e in events(kube, ns, "BoundaryOpen", "github-0") if "allow-all" in e["note"]],
                           what="a Warning Event on the pod")
    assert warning["type"] == "Warning" and "Service by-number" in warning["note"]
    ours = kube.get("-n", ns, "networkpolicy", "tollgate-boundary-8000")
    assert not ours["spec"].get("ingress"), \
        "allow-all already isolates these pods, so Tollgate's admits nothing: admitting ports would widen it"

    kube.kubectl("-n", ns, "delete", "service", "by-number")
    kube.kubectl("-n", ns, "delete", "networkpolicy", "allow-all")
    eventually(lambda: events(kube, ns, "BoundaryClosed", "github-0"), what="a Normal Event once github-0 is closed")
    eventually(lambda: boundary()["status"] == "True", what="the condition follows: no way around is left")
    eventually(lambda: kube.get("-n", ns, "networkpolicy", "tollgate-boundary-8000")["spec"].get("ingress") == [{"ports": ALL_BUT_8000}],
               what="alone again, Tollgate's policy admits every other port")


def test_operator_where_the_cluster_serves_cluster_network_policies_an_admin_tier_one_denies_the_apps_port(kube, operator):
    crd = subprocess.run([str(ROOT / "tests" / "cluster" / "crds.sh")], capture_output=True, text=True, check=True).stdout.strip()
    kube.kubectl("create", "-f", crd)
    try:
        kube.crd_established("clusternetworkpolicies.policy.networking.k8s.io")
        eventually(lambda: "clusternetworkpolicies" in kube.kubectl("api-resources", "--api-group=policy.networking.k8s.io").stdout,
                   what="the API is served")
        kube.namespace("np-cluster", **INJECT)
        operator("operator", "--network-policy-grace=2s")
        create(kube, np_pod("github-0", "np-cluster", port=9100))
        # The API server checked it against the network-policy API's own schema and rules.
        cnp = eventually(lambda: kube.get("clusternetworkpolicy", "tollgate-boundary-9100"), what="the ClusterNetworkPolicy")
        assert cnp["spec"] == {
            "tier": "Admin", "priority": 0,
            "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"tollgate.dev/app-port": "9100"}}}},
            "ingress": [{"name": "around-the-tollgate-sidecar", "action": "Deny", "from": [{"namespaces": {}}],
                         "protocols": [{"tcp": {"destinationPort": {"number": 9100}}}]}],
        }, "decided before any namespace's NetworkPolicy, so none can admit the port"
        kube.kubectl("-n", "np-cluster", "delete", "pod", "github-0")
        eventually(lambda: kube.kubectl("get", "clusternetworkpolicy", "tollgate-boundary-9100", check=False).returncode != 0,
                   what="collected with the last pod on that port")
    finally:
        kube.kubectl("delete", "-f", crd, check=False)


# ---------------------------------------------------------------------------------------------
# Tool pins in a cluster: per workload, shared by its replicas, kept across restarts, accepted
# only by a user with the accept verb

RUGPULL = ROOT / "tests" / "e2e" / "rugpull_server.py"


def replica(kube: ControlPlane, ns: str, name: str, rs: dict) -> dict:
    """A pod of ReplicaSet `rs` (of Deployment `mcp`), as its controller would make it."""
    pod = mcp_pod(name, ns, labels={"app": "mcp", "pod-template-hash": "7d9f"})
    pod["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs["metadata"]["name"],
                                           "uid": rs["metadata"]["uid"], "controller": True}]
    return create(kube, pod)


def test_operator_tool_pins_are_one_per_workload_replicas_agree_a_restart_keeps_them_and_only_the_accept_verb_frees_a_tool(
        kube, operator, sidecar, debug_bins, tollgate_bin, tmp_path):
    ns = "pins"
    kube.namespace(ns, **INJECT)
    op = operator()
    kube.apply(policy("tools", {"default": "deny", "pinning": {"trustOnFirstUse": True}, "tools": {
        "read_file": {"rules": []}, "create_issue": {"rules": []}, "delete_repository": {"rules": []}}}, ns))
    # A Deployment, its ReplicaSet and three of its pods, as their controllers make them (none
    # runs here).
    template = {"metadata": {"labels": {"app": "mcp"}}, "spec": {"containers": [{"name": "server", "image": "example/mcp:1"}]}}
    deployment = create(kube, {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "mcp", "namespace": ns},
                               "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "mcp"}}, "template": template}})
    rs = create(kube, {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "mcp-7d9f", "namespace": ns, "ownerReferences": [
                           {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mcp", "uid": deployment["metadata"]["uid"], "controller": True}]},
                       "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "mcp"}},
                                "template": {"metadata": {"labels": {"app": "mcp", "pod-template-hash": "7d9f"}},
                                             "spec": {"containers": [{"name": "server", "image": "example/mcp:1"}]}}}})
    for name in ("mcp-7d9f-a", "mcp-7d9f-b", "mcp-7d9f-c"):
        replica(kube, ns, name, rs)
    # Replica a answers in JSON, b in SSE: a list waits for its first-use pins either way.
    a = sidecar(op.url, kube.ca(), kube.pod_token(ns, "mcp-7d9f-a"), server=RUGPULL)
    b = sidecar(op.url, kube.ca(), kube.pod_token(ns, "mcp-7d9f-b"), server=RUGPULL, server_args=("--stateless",))
    everything = ["create_issue", "delete_repository", "read_file"]
    assert a.tools() == everything, "pinned on first use, and shown in the same list"
    assert a.allows("read_file")

    def pins() -> dict[str, dict]:
        return {p["spec"]["tool"]: p for p in kube.get("-n", ns, "mcptoolpins")["items"]}

    made = pins()
    assert sorted(made) == everything and {p["spec"]["workload"] for p in made.values()} == {"Deployment/mcp"}
    assert {p["spec"]["source"] for p in made.values()} == {"FirstUse"}
    assert events(kube, ns, "Pinned", made["read_file"]["metadata"]["name"]), "an Event says it was pinned"
    assert b.tools() == everything and b.allows("read_file"), "the other replica holds the same definitions to the same pins"

    # Replica c's server changed read_file before c ever listed it: c does not pin its own.
    c = sidecar(op.url, kube.ca(), kube.pod_token(ns, "mcp-7d9f-c"), server=RUGPULL)
    httpx.post(f"http://127.0.0.1:{c.upstream_port}/change/description").raise_for_status()
    assert c.tools() == ["create_issue", "delete_repository"], "held back on the workload's pin"
    denied = json.dumps(c.call("read_file"))
    assert "changed since it was pinned: description" in denied, denied
    held = eventually(lambda: pins()["read_file"].get("status", {}).get("held"), what="the held definition on the McpToolPin")
    assert held["why"] == "changed" and held["changed"] == ["description"] and held["pod"] == "mcp-7d9f-c"
    assert "evil.example" in held["definition"]["fields"]["description"]
    pin_name = pins()["read_file"]["metadata"]["name"]
    warning = eventually(lambda: events(kube, ns, "DefinitionHeld", pin_name), what="a Warning Event")
    assert warning[0]["type"] == "Warning" and "kubectl tollgate pins accept" in warning[0]["note"]
    assert a.tools() == everything, "replicas whose servers did not change keep their tools"

    # mallory may edit pins but not accept them; alice has the chart's ClusterRole.
    for who in ("alice", "mallory"):
        kube.kubectl("-n", ns, "create", "serviceaccount", who)
    kube.kubectl("-n", ns, "create", "rolebinding", "alice-reviews", "--clusterrole=tollgate-pin-reviewer", f"--serviceaccount={ns}:alice")
    kube.kubectl("-n", ns, "create", "role", "pin-editor", "--verb=get,list,patch,update,delete", "--resource=mcptoolpins.tollgate.dev")
    kube.kubectl("-n", ns, "create", "rolebinding", "mallory-edits", "--role=pin-editor", f"--serviceaccount={ns}:mallory")
    configs = {who: kube.token_kubeconfig(ns, who, tmp_path / f"{who}.kubeconfig") for who in ("alice", "mallory")}

    def plugin(who: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(debug_bins / "kubectl-tollgate"), "pins", *args, "-n", ns], capture_output=True, text=True,
                              env={**os.environ, "KUBECONFIG": str(configs[who])})

    listed = plugin("alice", "list")
    assert listed.returncode == 0, listed.stderr
    digest = held["definition"]["digest"]
    assert "Deployment/mcp" in listed.stdout and digest in listed.stdout and "evil.example" in listed.stdout, listed.stdout
    wrong = plugin("alice", "accept", "read_file", "--workload", "Deployment/mcp", "--digest", "sha256:" + "0" * 64)
    assert wrong.returncode != 0 and "not the sha256:000" in wrong.stderr, wrong.stderr
    refused = plugin("mallory", "accept", "read_file", "--workload", "Deployment/mcp", "--digest", digest)
    assert refused.returncode != 0 and 'the RBAC verb "accept"' in refused.stderr, refused.stderr
    deleted = kube.kubectl("--kubeconfig", str(configs["mallory"]), "-n", ns, "delete", "mcptoolpin", pin_name, check=False)
    assert deleted.returncode != 0 and 'the RBAC verb "accept"' in deleted.stderr, \
        "deleting a pin makes the next list pin anew: a decision too\n" + deleted.stderr
    made_up = kube.kubectl("--kubeconfig", str(configs["alice"]), "-n", ns, "patch", "mcptoolpin", pin_name, "--type=merge", "-p",
                           json.dumps({"spec": {"source": "Accepted", "definition": {**held["definition"], "digest": "sha256:" + "1" * 64}}}),
                           check=False)
    assert made_up.returncode != 0 and "does not hold together" in made_up.stderr, made_up.stderr
    accepted = plugin("alice", "accept", "read_file", "--workload", "Deployment/mcp", "--digest", digest)
    assert accepted.returncode == 0 and f"accepted by system:serviceaccount:{ns}:alice" in accepted.stdout, accepted.stdout + accepted.stderr
    eventually(lambda: c.allows("read_file"), what="the acceptance reaches the sidecar, which calls it without listing again")
    announced = eventually(lambda: events(kube, ns, "Accepted", pin_name), what="an Event says who accepted it")
    assert f"system:serviceaccount:{ns}:alice accepted {digest}" in announced[0]["note"]
    assert c.tools() == everything
    # The workload's pin moved: a replica whose server still shows the old text holds it now.
    assert a.tools() == ["create_issue", "delete_repository"]

    # c restarts in front of the same server: its pins come back from the cluster, nothing is
    # pinned anew, and nothing is called before a list.
    c.proc.terminate()
    c.proc.wait(timeout=10)
    c2 = sidecar(op.url, kube.ca(), kube.pod_token(ns, "mcp-7d9f-c"), server=RUGPULL, upstream_port=c.upstream_port)
    assert "has not been listed since the proxy started" in json.dumps(c2.call("read_file"))
    assert c2.tools() == everything and c2.allows("read_file")
    assert sorted(pins()) == everything and pins()["read_file"]["spec"]["source"] == "Accepted"

    # A rejection keeps a held tool held, and says so.
    httpx.post(f"http://127.0.0.1:{b.upstream_port}/change/schema").raise_for_status()
    # (read_file too: b's server still shows the text the workload's pin moved from.)
    assert b.tools() == ["delete_repository"]
    issue = eventually(lambda: pins()["create_issue"].get("status", {}).get("held"), what="create_issue held")
    assert "inputSchema" in issue["changed"], issue
    rejected = plugin("alice", "reject", "create_issue", "--workload", "Deployment/mcp", "--digest", issue["definition"]["digest"])
    assert rejected.returncode == 0, rejected.stderr
    assert "rejected" in plugin("alice", "list").stdout
    eventually(lambda: events(kube, ns, "Rejected", pins()["create_issue"]["metadata"]["name"]), what="an Event says it was rejected")
    assert "create_issue" not in b.tools() and "result" not in b.call("create_issue")

    # kubectl tollgate pin: the workload's pins as a starter policy for a person to review. Each
    # definition in force is pinned, rules come from its annotations, the Deployment's pods are
    # selected, and what the sidecars hold back is said, not pinned.
    def kubectl_tollgate(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(debug_bins / "kubectl-tollgate"), *args, "-n", ns], capture_output=True, text=True,
                              env={**os.environ, "KUBECONFIG": kube.env["KUBECONFIG"]})

    made = kubectl_tollgate("pin", "--workload", "Deployment/mcp")
    assert made.returncode == 0, made.stderr
    starter = tmp_path / "starter.yaml"
    starter.write_text(made.stdout)
    checked = subprocess.run([str(tollgate_bin), "check", "--policy", str(starter)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr + made.stdout
    policy_doc = yaml.safe_load(made.stdout)
    assert policy_doc["metadata"] == {"name": "mcp-pinned", "namespace": ns}
    assert policy_doc["spec"]["selector"] == {"matchLabels": {"app": "mcp"}}, "the Deployment's own pods"
    in_force = {t: p["spec"]["definition"]["digest"] for t, p in pins().items()}
    assert policy_doc["spec"]["pinning"] == {"mode": "enforce", "tools": in_force}, made.stdout
    assert in_force["read_file"] == digest, "the definition alice accepted"
    rules = {t: e["rules"] for t, e in policy_doc["spec"]["tools"].items()}
    assert rules["read_file"] == [] and rules["delete_repository"][0]["action"] == "approve", made.stdout
    assert "rateLimit" in rules["create_issue"][0], made.stdout
    assert '# "create_issue": pod mcp-7d9f-b lists another definition (changed: inputSchema' in made.stdout, made.stdout
    assert "rejected; it stays held" in made.stdout, made.stdout
    assert f'# "read_file": pod mcp-7d9f-a lists another definition (changed: description), held back' in made.stdout, made.stdout
    none = kubectl_tollgate("pin", "--workload", "Deployment/other")
    assert none.returncode != 0 and "has no McpToolPins" in none.stderr, none.stderr
    named = kubectl_tollgate("pin", "--workload", "Deployment/mcp", "--selector", "app=mcp,tier=tools")
    assert yaml.safe_load(named.stdout)["spec"]["selector"] == {"matchLabels": {"app": "mcp", "tier": "tools"}}, named.stderr
    bad = kubectl_tollgate("pin", "--workload", "Deployment/mcp", "--selector", "app=mcp\u2028default: allow")
    assert bad.returncode != 0 and "is not a label" in bad.stderr, bad.stderr

    # A pod relabelled out of its Deployment gets no pins of its own: the API server's record
    # of its ReplicaSet says whose it is, and the operator takes no report the labels contradict.
    kube.kubectl("-n", ns, "label", "pod", "mcp-7d9f-a", "pod-template-hash=zzz", "--overwrite")
    eventually(lambda: a.tools() == [], what="its tools held: nothing is pinned for a workload the pod is not")
    assert "403" in a.log.read_text() or "labels make it" in a.log.read_text()
    assert sorted(pins()) == everything, "no pin made for ReplicaSet/mcp-7d9f"


# ---------------------------------------------------------------------------------------------
# Approvals in a cluster: who decides, and who is recorded (the API server's own user)


def approval(name: str, ns: str, **spec) -> dict:
    """An McpApproval as the operator makes one for a held call."""
    return {"apiVersion": "tollgate.dev/v1alpha1", "kind": "McpApproval", "metadata": {"name": name, "namespace": ns},
            "spec": {"tool": "create_bucket", "identity": "system:serviceaccount:agents:bot", "pod": "mcp-0",
                     "workload": "deployment/mcp", "policy": f"mcppolicy/{ns}/buckets", "rule": "a person decides",
                     "call": "sha256:0f1e", "arguments": {"args.bucket": '"logs"'}, "validForSeconds": 3600, **spec}}


def test_operator_only_a_user_with_the_approve_verb_decides_an_approval_and_the_api_servers_user_is_recorded(kube, operator, debug_bins, tmp_path, json_sink):
    ns = "decide"
    kube.namespace(ns)
    hook, heard = json_sink
    operator("operator", "--approval-webhook", hook)
    for who in ("alice", "mallory"):
        kube.kubectl("-n", ns, "create", "serviceaccount", who)
    # alice approves (the chart's ClusterRole); mallory may edit approvals but not decide them.
    kube.kubectl("-n", ns, "create", "rolebinding", "alice-approves", "--clusterrole=tollgate-approver", f"--serviceaccount={ns}:alice")
    kube.kubectl("-n", ns, "create", "role", "editor", "--verb=get,list,patch,update", "--resource=mcpapprovals.tollgate.dev")
    kube.kubectl("-n", ns, "create", "rolebinding", "mallory-edits", "--role=editor", f"--serviceaccount={ns}:mallory")
    configs = {who: kube.token_kubeconfig(ns, who, tmp_path / f"{who}.kubeconfig") for who in ("alice", "mallory")}

    def plugin(who: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(debug_bins / "kubectl-tollgate"), *args, "-n", ns], capture_output=True, text=True,
                              env={**os.environ, "KUBECONFIG": str(configs[who])})

    def as_user(who: str, *args: str) -> subprocess.CompletedProcess:
        return kube.kubectl("--kubeconfig", str(configs[who]), "-n", ns, *args, check=False)

    def stored(name: str) -> dict:
        return kube.get("-n", ns, "mcpapproval", name)

    refused = kube.kubectl("create", "-f", "-", check=False, input=json.dumps(
        approval("pre-decided", ns, decision={"verdict": "Approve"})))
    assert refused.returncode != 0 and "an McpApproval is made undecided" in refused.stderr, refused.stderr

    create(kube, approval("create-bucket-1", ns))
    pending = eventually(lambda: (a := stored("create-bucket-1")).get("status", {}).get("phase") == "Pending" and a,
                         what="the operator reports it Pending, with its expiry")
    assert pending["status"]["expires"].endswith("Z")
    listed = plugin("alice", "list")
    assert listed.returncode == 0 and "create-bucket-1" in listed.stdout and "Pending" in listed.stdout, listed.stderr

    no_verb = plugin("mallory", "approve", "create-bucket-1")
    assert no_verb.returncode != 0
    assert f'system:serviceaccount:{ns}:mallory may not decide McpApprovals: that takes the RBAC verb "approve"' in no_verb.stderr, no_verb.stderr
    assert "decision" not in stored("create-bucket-1")["spec"]

    # alice writes someone else's name: the webhook writes hers, from the API server's record.
    forged = as_user("alice", "patch", "mcpapproval", "create-bucket-1", "--type=merge", "-p", json.dumps(
        {"spec": {"decision": {"verdict": "Approve", "reason": "release day", "decidedBy": "the-ceo"}}}))
    assert forged.returncode == 0, forged.stderr
    decision = stored("create-bucket-1")["spec"]["decision"]
    assert decision["decidedBy"] == f"system:serviceaccount:{ns}:alice" and decision["reason"] == "release day"
    assert decision["decidedAt"].endswith("Z")

    again = plugin("alice", "deny", "create-bucket-1", "--reason", "changed my mind")
    assert again.returncode != 0 and "McpApproval create-bucket-1 is decided already" in again.stderr, again.stderr
    moved = as_user("alice", "patch", "mcpapproval", "create-bucket-1", "--type=merge", "-p", '{"spec":{"tool":"delete_bucket"}}')
    assert moved.returncode != 0 and "the call an McpApproval is for cannot change" in moved.stderr

    approved = eventually(lambda: (a := stored("create-bucket-1"))["status"]["phase"] == "Approved" and a, what="Approved")
    assert approved["status"]["expires"] >= decision["decidedAt"][:19]
    columns = kube.kubectl("-n", ns, "get", "mcpapprovals").stdout.splitlines()
    assert columns[0].split() == ["NAME", "TOOL", "IDENTITY", "POD", "PHASE", "AGE", "EXPIRES"], columns
    assert columns[1].split()[:5] == ["create-bucket-1", "create_bucket", "system:serviceaccount:agents:bot", "mcp-0", "Approved"]
    [event] = eventually(lambda: [e for e in kube.get("-n", ns, "events.events.k8s.io")["items"]
                                  if e.get("reason") == "Approved" and e["regarding"]["name"] == "create-bucket-1"], what="an Event")
    assert f"system:serviceaccount:{ns}:alice approved create_bucket" in event["note"]

    create(kube, approval("create-bucket-2", ns))
    silent = as_user("alice", "patch", "mcpapproval", "create-bucket-2", "--type=merge", "-p", '{"spec":{"decision":{"verdict":"Deny"}}}')
    assert silent.returncode != 0 and "a denial needs spec.decision.reason" in silent.stderr
    denied = plugin("alice", "deny", "create-bucket-2", "--reason", "not during the freeze")
    assert denied.returncode == 0 and denied.stdout.strip() == f"mcpapproval.tollgate.dev/create-bucket-2 denied by system:serviceaccount:{ns}:alice"
    eventually(lambda: stored("create-bucket-2")["status"]["phase"] == "Denied", what="Denied")

    create(kube, approval("short-lived", ns, validForSeconds=1))
    eventually(lambda: stored("short-lived").get("status", {}).get("phase") == "Expired", what="expired undecided")
    late = plugin("alice", "approve", "short-lived")
    assert late.returncode != 0 and "McpApproval short-lived is Expired: only a Pending one can be decided" in late.stderr

    # The webhook heard each step, in order, for each approval.
    def steps(name: str) -> list[str]:
        return [e["event"] for e in heard if e["approval"]["name"] == name]

    eventually(lambda: steps("short-lived") == ["pending", "expired"], what="the webhook heard the expiry")
    assert steps("create-bucket-1") == ["pending", "approved"] and steps("create-bucket-2") == ["pending", "denied"]
    approved = next(e for e in heard if e["approval"]["name"] == "create-bucket-1" and e["event"] == "approved")
    assert approved["approval"]["decision"]["decidedBy"] == f"system:serviceaccount:{ns}:alice"
    assert approved["approval"]["namespace"] == ns and approved["approval"]["arguments"] == {"args.bucket": '"logs"'}


def test_operator_a_held_call_becomes_an_mcp_approval_kubectl_tollgate_decides_and_one_replica_uses(kube, operator, sidecar, debug_bins, tmp_path, json_sink):
    from concurrent.futures import ThreadPoolExecutor

    ns = "held"
    kube.namespace(ns, **INJECT)
    hook, heard = json_sink
    op = operator("operator", "--approval-webhook", hook)
    kube.apply(policy("issues", {"tools": {
        "create_issue": {"rules": [{"name": "a person decides", "action": "approve",
                                    "approval": {"timeout": "1s", "validFor": "10m", "show": ["args.title"]}}]},
        "create_charge": {"rules": [{"name": "charges wait for a person", "action": "approve",
                                     "approval": {"timeout": "30s"}}]}}}, ns))
    # Two replicas of one workload: pods a ReplicaSet owns (made here, as its controller would,
    # which this control plane does not run), injected on the way in.
    template = mcp_pod("ignored", ns, labels={"app": "mcp"})
    rs = create(kube, {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "mcp", "namespace": ns},
                       "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "mcp"}},
                                "template": {"metadata": {"labels": {"app": "mcp"}}, "spec": template["spec"]}}})
    names = ["mcp-a1", "mcp-b2"]
    for n in names:
        pod = mcp_pod(n, ns, labels={"app": "mcp"})
        pod["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "mcp",
                                               "uid": rs["metadata"]["uid"], "controller": True}]
        create(kube, pod)
    a, b = (sidecar(op.url, kube.ca(), kube.pod_token(ns, n)) for n in names)
    eventually(lambda: "error" in a.call("create_issue", {"title": "warm"}) and "error" in b.call("create_issue", {"title": "warm"}),
               what="both sidecars hold the policy")
    kube.kubectl("-n", ns, "create", "serviceaccount", "alice")
    kube.kubectl("-n", ns, "create", "rolebinding", "alice-approves", "--clusterrole=tollgate-approver", f"--serviceaccount={ns}:alice")
    alice = kube.token_kubeconfig(ns, "alice", tmp_path / "alice.kubeconfig")

    held = a.call("create_issue", {"title": "launch"})
    assert held["error"]["code"] == -32003, held
    name = held["error"]["data"]["approval"]
    stored = kube.get("-n", ns, "mcpapproval", name)
    spec = stored["spec"]
    assert (spec["tool"], spec["identity"], spec["pod"], spec["workload"]) == ("create_issue", "anonymous", names[0], "ReplicaSet/mcp")
    assert spec["arguments"] == {"args.title": '"launch"'} and len(spec["call"]) == 64 and "decision" not in spec
    assert stored["metadata"]["labels"]["tollgate.dev/call"] == spec["call"][:63]
    # The other replica's identical call waits on the same approval.
    assert b.call("create_issue", {"title": "launch"})["error"]["data"]["approval"] == name

    decided = subprocess.run([str(debug_bins / "kubectl-tollgate"), "approve", name, "-n", ns, "--reason", "release day"],
                             capture_output=True, text=True, env={**os.environ, "KUBECONFIG": str(alice)})
    assert decided.returncode == 0, decided.stderr
    assert kube.get("-n", ns, "mcpapproval", name)["spec"]["decision"]["decidedBy"] == f"system:serviceaccount:{ns}:alice"

    # Both replicas retry at once: the approval admits exactly one.
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda s: s.call("create_issue", {"title": "launch"}), [a, b]))
    assert sorted("result" in m for m in answers) == [False, True], answers
    [refused] = [m for m in answers if "error" in m]
    assert refused["error"]["code"] == -32003
    used = eventually(lambda: (o := kube.get("-n", ns, "mcpapproval", name))["status"]["phase"] == "Used" and o, what="Used")
    assert used["status"]["usedBy"] in names
    eventually(lambda: [e["event"] for e in heard if e["approval"]["name"] == name] == ["pending", "approved", "used"],
               what="the webhook heard the use, once")
    # Other arguments are never admitted by it.
    other = a.call("create_issue", {"title": "something else"})
    assert other["error"]["code"] == -32003 and other["error"]["data"]["approval"] != name

    # Approved while the call is held: it goes on, and the agent gets its result.
    with ThreadPoolExecutor(1) as pool:
        charge = pool.submit(b.call, "create_charge", {"amount": 5, "currency": "eur"})
        waiting = eventually(lambda: [o for o in kube.get("-n", ns, "mcpapprovals")["items"] if o["spec"]["tool"] == "create_charge"],
                             what="the held charge's McpApproval")
        subprocess.run([str(debug_bins / "kubectl-tollgate"), "approve", waiting[0]["metadata"]["name"], "-n", ns],
                       check=True, capture_output=True, env={**os.environ, "KUBECONFIG": str(alice)})
        assert charge.result(timeout=30)["result"]["content"][0]["text"] == "charged 5 eur"


# ---------------------------------------------------------------------------------------------
# Supervision


def watches(kube: ControlPlane, kinds: tuple[str, ...]) -> dict[str, float]:
    """Open WATCH requests per resource, as the API server's own metrics count them."""
    out = dict.fromkeys(kinds, 0.0)
    for line in kube.kubectl("get", "--raw", "/metrics").stdout.splitlines():
        if line.startswith("apiserver_longrunning_requests{") and 'verb="WATCH"' in line:
            for k in kinds:
                if f'resource="{k}"' in line:
                    out[k] += float(line.rsplit(" ", 1)[1])
    return out


def test_operator_watches_each_kind_once_and_a_watch_that_keeps_failing_turns_readiness_off_naming_it(kube, operator):
    kinds = ("mcppolicies", "mcpclusterpolicies", "mcpapprovals")

    def settled():
        first = watches(kube, kinds)
        time.sleep(1)
        return first if watches(kube, kinds) == first else None

    before = eventually(settled, what="watches from earlier tests are gone")
    kube.namespace("supervised")
    op = operator("operator", "--failure-grace", "2s")
    kube.apply(policy("watched", {"tools": {"read_file": {"rules": []}}}, "supervised"))
    eventually(lambda: "status" in json.loads(kube.kubectl("-n", "supervised", "get", "mcppolicy", "watched", "-o", "json").stdout),
               what="the leader's controller writes the status")
    # The leader's controllers run on the index's watches: one more watch of each kind, not two.
    eventually(lambda: {k: v - before[k] for k, v in watches(kube, kinds).items()} == dict.fromkeys(kinds, 1.0),
               what="one watch per kind")
    # The McpApproval resource goes away: its watch fails, retries, and past the grace /readyz
    # says which part fails and why; when it is back, the operator is ready again.
    crd = (ROOT / "crds" / "mcpapprovals.yaml").read_text()
    kube.kubectl("delete", "crd", "mcpapprovals.tollgate.dev")
    try:
        r = eventually(lambda: (r := httpx.get(f"{op.admin}/readyz")).status_code == 503 and r, what="not ready")
        assert "the watch of McpApprovals failing for" in r.text, r.text
        assert op.proc.poll() is None, "a failing watch is retried, not fatal"
    finally:
        kube.apply(crd)
        kube.crd_established("mcpapprovals.tollgate.dev")
    eventually(op.ready, what="ready again once the watch works", timeout=60)


# ---------------------------------------------------------------------------------------------
# Monitoring: the chart's dashboard and alerts against what the operator and a sidecar expose


def test_operator_dashboard_and_alerts_read_only_metrics_the_operator_and_sidecars_expose(kube, operator, sidecar, procs, tmp_path):
    from monitoring import alert_queries, check_reads_what_is_exposed, dashboard_queries, start_prometheus

    kube.namespace("watched", **INJECT)
    op = operator()
    kube.apply(policy("github", {"default": "deny", "tools": {"read_file": {"rules": []}}}, "watched"))
    create(kube, mcp_pod("mcp-0", "watched", labels={"app": "github"}))
    side = sidecar(op.url, kube.ca(), kube.pod_token("watched", "mcp-0"))
    eventually(lambda: side.allows("read_file"), what="the policy reached the sidecar")
    assert not side.allows("delete_repository")

    prom = start_prometheus(procs, tmp_path, [
        (op.admin, {"job": "tollgate-operator", "namespace": NAMESPACE, "pod": op.name}),
        (side.admin, {"job": "tollgate-sidecar", "namespace": "watched", "pod": "mcp-0"}),
    ])
    for _ in range(3):
        side.allows("read_file")
        side.allows("delete_repository")
    time.sleep(2)
    check_reads_what_is_exposed(prom, dashboard_queries() + alert_queries())

    # What the panels show of this cluster, as Prometheus computes it.
    def value(expr: str) -> float:
        result = prom.query(expr)
        assert result, f"{expr} is empty"
        return float(result[0]["value"][1])

    eventually(lambda: value('sum(increase(tollgate_decisions_total{outcome="deny"}[1m]))') > 0, what="denials counted")
    assert value("sum(tollgate_operator_sidecars_connected)") == 1
    assert value("sum(tollgate_operator_ready)") == 1
    assert value('max by (namespace, pod) (tollgate_policy_ready{namespace="watched"})') == 1
    assert value('sum(tollgate_operator_admission_reviews_total{route="validate", allowed="true"})') >= 1
    assert value('sum(tollgate_operator_reconciles_total{kind="McpPolicy", result="ok"})') >= 1
    # All is well: no alert that fires at once (without a `for`) is pending or firing.
    quiet = {"TollgateAuditLinesDropped", "TollgatePolicyUpdatesIgnored", "TollgateApprovalsUndecided", "TollgateTraceSpansDropped",
             "TollgateSidecarWithoutPolicy", "TollgateSidecarDown", "TollgateOperatorDown", "TollgateBoundaryOpen"}
    active = [a["labels"]["alertname"] for a in prom.alerts()]
    assert not quiet & set(active), active


def test_operator_traces_its_webhook_calls_and_reconciles_to_a_real_collector(kube, operator, collector):
    kube.namespace("traced")
    op = operator("traced-operator", "--otlp-endpoint", collector.endpoint)
    kube.apply(policy("traced-policy", {"tools": {"read_file": {"rules": []}}}, "traced"))

    def spans(name: str) -> list[dict]:
        """This policy's spans (the operator reconciles every policy of the cluster)."""
        return [s for s in collector.spans() if s["name"] == name and s["attrs"].get("k8s.namespace.name") == "traced"
                and s["attrs"].get("tollgate.admission.name", "traced-policy") == "traced-policy"
                and s["attrs"].get("tollgate.policy", "traced-policy") == "traced-policy"]

    eventually(lambda: spans("POST /validate") and spans("reconcile McpPolicy"), timeout=30, what="the operator's spans arrived")
    review = spans("POST /validate")[0]
    a = review["attrs"]
    assert (a["tollgate.admission.kind"], a["tollgate.admission.name"], a["k8s.namespace.name"]) == ("McpPolicy", "traced-policy", "traced")
    assert a["tollgate.admission.allowed"] is True and a["http.response.status_code"] == "200" and review["kind"] == 2
    reconcile = spans("reconcile McpPolicy")[0]
    assert reconcile["attrs"]["tollgate.policy"] == "traced-policy" and reconcile["kind"] == 1
    assert "status" not in reconcile or reconcile["status"].get("code") != 2
    resource = review["resource"]
    assert (resource["service.name"], resource["k8s.pod.name"], resource["k8s.namespace.name"]) == ("tollgate-operator", op.name, NAMESPACE)
    text = httpx.get(f"{op.admin}/metrics").text
    assert "tollgate_trace_spans_exported_total" in text
