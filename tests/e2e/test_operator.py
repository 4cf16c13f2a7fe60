"""e2e: the real operator binary against a Kubernetes API (kmock's emulator, see kube.py), with real
sidecars following its policy stream and real AdmissionReviews posted to its webhooks over TLS."""

from __future__ import annotations

import base64
import json
import signal
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import jsonpatch
import jwt
import pytest
from conftest import ROOT, SAMPLE, free_port, wait_for_port
from cryptography.hazmat.primitives.asymmetric import rsa
from kube import ISSUER, ClusterThread
from rpc import HEADERS, call, messages

MERGE = {"content-type": "application/merge-patch+json"}
OPERATOR_NS = "tollgate-system"


# ---------------------------------------------------------------------------------------------
# The cluster and the binaries


@pytest.fixture(scope="session")
def operator_bin(debug_bins) -> Path:
    return debug_bins / "tollgate-operator"


class Kube:
    """kubectl, in a few lines of HTTP."""

    def __init__(self, thread: ClusterThread):
        self.thread = thread
        self.url = thread.url

    @staticmethod
    def path(kind: str, ns: str | None = None, name: str | None = None) -> str:
        group = {
            "pods": "api/v1", "namespaces": "api/v1", "secrets": "api/v1",
            "mcppolicies": "apis/tollgate.dev/v1alpha1", "mcpclusterpolicies": "apis/tollgate.dev/v1alpha1",
            "leases": "apis/coordination.k8s.io/v1", "events": "apis/events.k8s.io/v1",
            "mutatingwebhookconfigurations": "apis/admissionregistration.k8s.io/v1",
            "validatingwebhookconfigurations": "apis/admissionregistration.k8s.io/v1",
        }[kind]
        p = f"/{group}" + (f"/namespaces/{ns}" if ns else "") + f"/{kind}"
        return p + (f"/{name}" if name else "")

    def create(self, kind: str, obj: dict) -> dict:
        ns = obj["metadata"].get("namespace")
        r = httpx.post(self.url + self.path(kind, ns), json=obj)
        assert r.status_code < 300, r.text
        return r.json()

    def patch(self, kind: str, ns: str | None, name: str, patch: dict) -> dict:
        r = httpx.patch(self.url + self.path(kind, ns, name), headers=MERGE, json=patch)
        assert r.status_code < 300, r.text
        return r.json()

    def get(self, kind: str, ns: str | None, name: str) -> dict | None:
        r = httpx.get(self.url + self.path(kind, ns, name))
        return r.json() if r.status_code == 200 else None

    def list(self, kind: str, ns: str | None = None) -> list[dict]:
        return httpx.get(self.url + self.path(kind, ns)).json()["items"]

    def delete(self, kind: str, ns: str | None, name: str) -> None:
        httpx.delete(self.url + self.path(kind, ns, name))

    def namespace(self, name: str, **labels: str) -> None:
        self.create("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})

    def injected_pod(self, ns: str, name: str, **labels: str) -> dict:
        """A pod as the webhook leaves it (the operator's watch sees only injected pods)."""
        return self.create("pods", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"tollgate.dev/injected": "true", **labels}},
            "spec": {"containers": [{"name": "server", "image": "mcp"}]},
        })

    def token_for(self, pod: dict) -> str:
        """A projected service-account token bound to this pod, as the TokenReview API knows it."""
        token = f"pod-token-{uuid.uuid4().hex}"
        meta = pod["metadata"]
        self.thread.cluster.tokens[token] = {
            "username": f"system:serviceaccount:{meta['namespace']}:default",
            "uid": str(uuid.uuid4()),
            "groups": ["system:serviceaccounts"],
            "extra": {
                "authentication.kubernetes.io/pod-name": [meta["name"]],
                "authentication.kubernetes.io/pod-uid": [meta["uid"]],
            },
        }
        return token


@pytest.fixture(scope="module")
def kube():
    with ClusterThread() as thread:
        k = Kube(thread)
        k.namespace(OPERATOR_NS)
        for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
            name = "tollgate-inject" if kind.startswith("mutating") else "tollgate-validate"
            k.create(kind, {
                "apiVersion": "admissionregistration.k8s.io/v1", "metadata": {"name": name},
                "webhooks": [{"name": f"{name}.tollgate.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                              "clientConfig": {"service": {"name": "tollgate-operator", "namespace": OPERATOR_NS, "path": "/x"}}}],
            })
        yield k


def policy(ns: str, name: str, spec: dict) -> dict:
    return {"apiVersion": "tollgate.dev/v1alpha1", "kind": "McpPolicy", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def eventually(check, timeout: float = 15.0, what: str = "condition"):
    """Polls until check() returns something truthy (a correctness wait, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (AssertionError, KeyError, TypeError, IndexError, httpx.HTTPError) as e:
            last = e
        time.sleep(0.05)
    raise AssertionError(f"{what} did not hold within {timeout}s; last: {last!r}")


@dataclass
class Operator:
    url: str
    admin: str
    port: int
    proc: subprocess.Popen
    log: Path

    def ca(self, kube: Kube) -> str:
        secret = kube.get("secrets", OPERATOR_NS, "tollgate-operator-tls")
        return base64.b64decode(secret["data"]["ca.crt"]).decode()

    def client(self, kube: Kube) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=ssl.create_default_context(cadata=self.ca(kube)))

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def operator(kube, operator_bin, tmp_path):
    started: list[Operator] = []
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(kube.thread.kubeconfig())

    def start(name: str = "operator-0", *flags: str, port: int | None = None) -> Operator:
        port, admin = port or free_port(), free_port()
        log = tmp_path / f"{name}.log"
        proc = subprocess.Popen(
            [str(operator_bin), "--pod-name", name, "--namespace", OPERATOR_NS,
             "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
             "--extra-san", "127.0.0.1", "--control-plane-url", f"https://127.0.0.1:{port}", *flags],
            stdout=open(log, "ab"), stderr=subprocess.STDOUT,
            env={"KUBECONFIG": str(kubeconfig), "TOLLGATE_LOG": "info,kube=warn", "PATH": "/usr/bin:/bin"},
        )
        op = Operator(f"https://127.0.0.1:{port}", f"http://127.0.0.1:{admin}", port, proc, log)
        started.append(op)
        wait_for_port(admin, proc, log)
        eventually(lambda: httpx.get(f"{op.admin}/readyz").status_code == 200 or proc.poll() is not None, what="operator ready")
        assert proc.poll() is None, log.read_text()
        return op

    yield start
    for op in started:
        op.stop()


@dataclass
class Sidecar:
    url: str
    admin: str
    proc: subprocess.Popen
    log: Path

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
def sidecar(procs, operator_bin, tmp_path):
    """A real sample MCP server behind a real sidecar that follows the operator's stream."""

    def start(op_url: str, ca: str, token: str, wait_ready: bool = True) -> Sidecar:
        server_port = free_port()
        procs.start(f"server-{server_port}", [sys.executable, str(SAMPLE), "--port", str(server_port), "--stateless", "--json"], server_port)
        port, admin = free_port(), free_port()
        (tmp_path / "ca.pem").write_text(ca)
        token_file = tmp_path / f"token-{port}"
        token_file.write_text(token)
        p = procs.start(f"sidecar-{port}", [
            str(operator_bin.parent / "tollgate"), "proxy", "--upstream", f"http://127.0.0.1:{server_port}",
            "--control-plane", op_url, "--control-plane-ca", str(tmp_path / "ca.pem"), "--token-file", str(token_file),
            "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{admin}",
        ], port, env={"TOLLGATE_LOG": "info"})
        wait_for_port(admin, p.proc, p.log)
        s = Sidecar(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}", p.proc, p.log)
        if wait_ready:
            eventually(s.ready, what=f"sidecar ready\n{p.log.read_text()[-3000:]}")
        return s

    return start


def review(kind: dict, resource: dict, ns: str | None, obj: dict, operation: str = "CREATE") -> dict:
    """An AdmissionReview as the API server sends it."""
    request = {
        "uid": str(uuid.uuid4()), "kind": kind, "resource": resource, "requestKind": kind, "requestResource": resource,
        "operation": operation, "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]},
        "object": obj, "oldObject": None, "dryRun": False,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    }
    if ns:
        request["namespace"] = ns
    if obj.get("metadata", {}).get("name"):
        request["name"] = obj["metadata"]["name"]
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


POD_KIND = ({"group": "", "version": "v1", "kind": "Pod"}, {"group": "", "version": "v1", "resource": "pods"})
POLICY_KIND = ({"group": "tollgate.dev", "version": "v1alpha1", "kind": "McpPolicy"}, {"group": "tollgate.dev", "version": "v1alpha1", "resource": "mcppolicies"})


def mcp_pod(ns: str, **annotations: str) -> dict:
    """A pod from a Deployment (generateName, no name), serving MCP on a port named mcp."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "github-mcp-7d9f-", "namespace": ns, "labels": {"app": "github"}, "annotations": annotations},
        "spec": {"containers": [{"name": "server", "image": "github-mcp:1", "ports": [{"name": "mcp", "containerPort": 8000}],
                                 "readinessProbe": {"httpGet": {"path": "/health", "port": "mcp"}}}]},
    }


def admit(op: Operator, kube: Kube, path: str, body: dict) -> dict:
    with op.client(kube) as c:
        r = c.post(path, json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["kind"] == "AdmissionReview" and out["response"]["uid"] == body["request"]["uid"]
    return out["response"]


# ---------------------------------------------------------------------------------------------
# Admission


def test_admit_pods_in_an_enabled_namespace_get_the_sidecar_from_a_json_patch(kube, operator):
    kube.namespace("admit-on", **{"tollgate.dev/injection": "enabled"})
    op = operator()
    pod = mcp_pod("admit-on")
    resp = eventually(lambda: (r := admit(op, kube, "/mutate", review(*POD_KIND, "admit-on", pod))) and r.get("patch") and r,
                      what="the namespace label reached the operator")
    assert resp["allowed"] and resp["patchType"] == "JSONPatch"
    patched = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(resp["patch"])))
    sidecar = patched["spec"]["initContainers"][0]
    assert sidecar["name"] == "tollgate-proxy" and sidecar["restartPolicy"] == "Always"
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["TOLLGATE_CONTROL_PLANE_CA"] == op.ca(kube), "sidecars trust the operator's CA"
    assert patched["spec"]["containers"][0]["ports"][0]["name"] == "tollgate-app"
    assert patched["metadata"]["labels"]["tollgate.dev/injected"] == "true"

    again = admit(op, kube, "/mutate", review(*POD_KIND, "admit-on", patched))
    assert again["allowed"] and "patch" not in again, "a re-invoked webhook changes nothing"


def test_admit_pods_that_opt_out_or_cannot_be_injected_are_admitted_as_they_are(kube, operator):
    kube.namespace("admit-off")
    op = operator()
    cases = [
        (mcp_pod("admit-off"), None),
        (mcp_pod("admit-off", **{"tollgate.dev/inject": "false"}), None),
        ({**mcp_pod("admit-off", **{"tollgate.dev/inject": "true"}), "spec": {**mcp_pod("admit-off")["spec"], "hostNetwork": True}}, "hostNetwork"),
    ]
    for pod, warning in cases:
        resp = admit(op, kube, "/mutate", review(*POD_KIND, "admit-off", pod))
        assert resp["allowed"] and "patch" not in resp
        if warning:
            assert any(warning in w for w in resp["warnings"]), resp
    bad = admit(op, kube, "/mutate", review(*POD_KIND, "admit-off", mcp_pod("admit-off", **{"tollgate.dev/inject": "yes"})))
    assert not bad["allowed"] and "tollgate.dev/inject" in bad["status"]["message"]


def test_admit_an_invalid_policy_is_refused_with_every_problem_field_by_field(kube, operator, tollgate_bin):
    op = operator()
    bad = policy("shop", "broken", {"tools": {
        "run_query": {"rules": [{"name": "select only", "conditions": [{"path": "args.sql", "op": "regex", "value": "("}]}]},
        "create_issue": {"rules": [{"name": "hourly", "rateLimit": "5/fortnight"}]},
    }})
    resp = admit(op, kube, "/validate", review(*POLICY_KIND, "shop", bad))
    assert not resp["allowed"]
    message = resp["status"]["message"]
    assert "McpPolicy shop/broken is invalid (2 problems)" in message
    assert "spec.tools.run_query.rules[0].conditions[0].value" in message
    assert "spec.tools.create_issue.rules[0].rateLimit" in message
    # The same words as `tollgate check` prints for the same policy.
    import yaml
    file = Path(op.log).with_name("broken.yaml")
    file.write_text(yaml.safe_dump(bad))
    check = subprocess.run([str(tollgate_bin), "check", "--policy", str(file)], capture_output=True, text=True)
    for line in check.stderr.splitlines()[:2]:
        assert line.split(": ", 1)[-1] in message

    ok = admit(op, kube, "/validate", review(*POLICY_KIND, "shop", policy("shop", "fine", {"tools": {"read_file": {"rules": []}}})))
    assert ok["allowed"]
    gone = admit(op, kube, "/validate", review(*POLICY_KIND, "shop", bad, operation="DELETE"))
    assert gone["allowed"], "deleting a broken policy is always allowed"


def test_admit_a_body_that_is_not_an_admission_review_gets_400_naming_why(kube, operator):
    op = operator()
    with op.client(kube) as c:
        r = c.post("/validate", content=b"{not json")
    assert r.status_code == 400 and "AdmissionReview" in r.text


# ---------------------------------------------------------------------------------------------
# Certificates


def test_e2e_the_operator_issues_its_certificate_and_writes_the_ca_bundle(kube, operator):
    op = operator()
    ca = op.ca(kube)
    bundle = base64.b64encode(ca.encode()).decode()
    for kind, name in [("mutatingwebhookconfigurations", "tollgate-inject"), ("validatingwebhookconfigurations", "tollgate-validate")]:
        hooks = eventually(lambda: kube.get(kind, None, name)["webhooks"] if kube.get(kind, None, name)["webhooks"][0]["clientConfig"].get("caBundle") else None)
        assert hooks[0]["clientConfig"]["caBundle"] == bundle
    with op.client(kube) as c:
        assert c.post("/validate", content=b"x").status_code == 400, "the served certificate chains to the CA"


def test_e2e_the_serving_certificate_rotates_without_dropping_a_stream(kube, operator, sidecar):
    kube.namespace("rotate")
    op = operator("operator-rotate", "--tls-secret", "rotating-tls", "--cert-lifetime", "6s", "--cert-check", "500ms")
    secret = eventually(lambda: kube.get("secrets", OPERATOR_NS, "rotating-tls"))
    ca = base64.b64decode(secret["data"]["ca.crt"]).decode()
    pod = kube.injected_pod("rotate", "mcp-0")
    side = sidecar(op.url, ca, kube.token_for(pod))

    def served_cert() -> bytes:
        ctx = ssl.create_default_context(cadata=ca)
        import socket
        with socket.create_connection(("127.0.0.1", op.port)) as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.getpeercert(binary_form=True)

    first = served_cert()
    eventually(lambda: served_cert() != first, timeout=15, what="the serving certificate was rotated")
    assert base64.b64decode(kube.get("secrets", OPERATOR_NS, "rotating-tls")["data"]["ca.crt"]).decode() == ca, "the CA stays"
    kube.create("mcppolicies", policy("rotate", "p", {"default": "deny", "tools": {"read_file": {"rules": []}}}))
    eventually(lambda: not side.allows("create_issue"), what="a policy sent after rotation reached the sidecar")
    assert "stream failed" not in side.log.read_text(), "the stream was not dropped by rotation"


# ---------------------------------------------------------------------------------------------
# Status


def condition(obj: dict, type_: str) -> dict:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


def test_e2e_policy_status_reports_acceptance_readiness_and_selected_pods(kube, operator):
    kube.namespace("status")
    kube.injected_pod("status", "github-0", app="github")
    kube.injected_pod("status", "jira-0", app="jira")
    operator()
    kube.create("mcppolicies", policy("status", "github", {"selector": {"matchLabels": {"app": "github"}}, "tools": {"read_file": {"rules": []}, "create_issue": {"rules": []}}}))
    p = eventually(lambda: (o := kube.get("mcppolicies", "status", "github")).get("status") and o)
    assert p["status"]["observedGeneration"] == 1
    assert p["status"]["selectedPods"] == 1 and p["status"]["tools"] == 2
    assert condition(p, "Accepted")["status"] == "True" and condition(p, "Ready")["status"] == "True"

    kube.injected_pod("status", "github-1", app="github")
    eventually(lambda: kube.get("mcppolicies", "status", "github")["status"]["selectedPods"] == 2, what="a new pod was counted")

    # An invalid spec that got past the webhook (e.g. while it was down): not accepted, and why.
    kube.patch("mcppolicies", "status", "github", {"spec": {"tools": {"create_issue": {"rules": [{"name": "r", "rateLimit": "lots"}]}}}})
    p = eventually(lambda: (o := kube.get("mcppolicies", "status", "github"))["status"]["observedGeneration"] == 2 and o)
    accepted = condition(p, "Accepted")
    assert accepted["status"] == "False" and "spec.tools.create_issue.rules[0].rateLimit" in accepted["message"]
    events = eventually(lambda: [e for e in kube.list("events", "status") if e.get("reason") == "Invalid"])
    assert events[0]["regarding"]["name"] == "github" and events[0]["type"] == "Warning"


def test_e2e_status_is_written_only_when_it_changes(kube, operator):
    kube.namespace("quiet")
    operator()
    kube.create("mcppolicies", policy("quiet", "p", {"tools": {}}))
    first = eventually(lambda: (o := kube.get("mcppolicies", "quiet", "p")).get("status") and o)
    for i in range(5):  # every change in the cluster makes the controller look at every policy
        kube.namespace(f"noise-{i}")
    time.sleep(1.0)
    assert kube.get("mcppolicies", "quiet", "p")["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]


# ---------------------------------------------------------------------------------------------
# The policy stream and the sidecar


def test_e2e_a_policy_change_reaches_the_sidecar_and_outlives_the_operator(kube, operator, sidecar):
    kube.namespace("live")
    kube.create("mcppolicies", policy("live", "github", {"default": "deny", "tools": {"read_file": {"rules": []}, "create_issue": {"rules": []}}}))
    pod = kube.injected_pod("live", "github-mcp", app="github")
    op = operator()
    side = sidecar(op.url, op.ca(kube), kube.token_for(pod))
    assert side.allows("create_issue") and side.allows("read_file")
    assert not side.allows("delete_repository"), "default: deny"

    kube.patch("mcppolicies", "live", "github", {"spec": {"tools": {"create_issue": {"rules": [{"name": "frozen", "action": "deny", "onDeny": "Issues are frozen"}]}}}})
    t0 = time.monotonic()
    eventually(lambda: not side.allows("create_issue"), what="the change reached the sidecar")
    print(f"policy change enforced after {1000 * (time.monotonic() - t0):.0f} ms")
    assert "Issues are frozen" in json.dumps(side.call("create_issue"))

    op.stop(signal.SIGKILL)
    time.sleep(1.0)
    assert side.ready(), "the sidecar stays ready on its last policy"
    assert side.allows("read_file") and not side.allows("create_issue") and not side.allows("delete_repository")

    # The operator comes back (same address): the sidecar reconnects and follows again.
    operator("operator-restarted", port=op.port)
    kube.patch("mcppolicies", "live", "github", {"spec": {"tools": {"create_issue": {"rules": []}}}})
    eventually(lambda: side.allows("create_issue"), timeout=40, what="the sidecar reconnected to the restarted operator")


def test_e2e_namespace_and_pod_labels_change_what_applies(kube, operator, sidecar):
    kube.namespace("labels")
    kube.create("mcpclusterpolicies", {
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "McpClusterPolicy", "metadata": {"name": "payments-no-delete"},
        "spec": {"namespaceSelector": {"matchLabels": {"team": "payments"}}, "default": "allow",
                 "tools": {"delete_repository": {"rules": [{"name": "never", "action": "deny"}]}}},
    })
    kube.create("mcppolicies", policy("labels", "frozen", {"selector": {"matchLabels": {"frozen": "yes"}}, "default": "allow",
                                                           "tools": {"create_issue": {"rules": [{"name": "frozen", "action": "deny"}]}}}))
    pod = kube.injected_pod("labels", "mcp-0")
    op = operator("operator-labels", "--default-action", "allow")
    side = sidecar(op.url, op.ca(kube), kube.token_for(pod))
    assert side.allows("delete_repository") and side.allows("create_issue")
    kube.patch("namespaces", None, "labels", {"metadata": {"labels": {"team": "payments"}}})
    eventually(lambda: not side.allows("delete_repository"), what="the namespace label brought the cluster policy in")
    kube.patch("pods", "labels", "mcp-0", {"metadata": {"labels": {"frozen": "yes"}}})
    eventually(lambda: not side.allows("create_issue"), what="the pod label brought the namespaced policy in")


def test_e2e_a_sidecar_denies_everything_and_is_not_ready_until_its_first_policy(kube, operator, sidecar):
    op = operator()
    nobody = free_port()
    side = sidecar(f"https://127.0.0.1:{nobody}", op.ca(kube), "whatever", wait_ready=False)
    assert not side.ready()
    answer = side.call("read_file")
    assert "error" in answer and "No policy is loaded yet" in json.dumps(answer)


def test_e2e_the_stream_refuses_tokens_that_do_not_name_a_known_pod(kube, operator):
    op = operator()
    kube.thread.cluster.tokens["not-a-pod"] = {"username": "system:serviceaccount:x:y", "extra": {}}
    with op.client(kube) as c:
        assert c.get("/v1/policy").status_code == 401
        assert c.get("/v1/policy", headers={"authorization": "Bearer forged"}).status_code == 403
        r = c.get("/v1/policy", headers={"authorization": "Bearer not-a-pod"})
        assert r.status_code == 403 and "projected" in r.text


def test_e2e_agents_kubernetes_tokens_are_verified_offline_and_match_service_account_rules(kube, operator, sidecar):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "sa-key", "alg": "RS256", "use": "sig"})
    kube.thread.cluster.jwks = {"keys": [jwk]}
    kube.namespace("sa")
    kube.create("mcppolicies", policy("sa", "bot-only", {
        "subjects": [{"serviceAccount": "agents/report-bot"}], "default": "deny", "tools": {"create_issue": {"rules": []}}}))
    pod = kube.injected_pod("sa", "mcp-0")
    op = operator("operator-sa", "--default-action", "allow")
    side = sidecar(op.url, op.ca(kube), kube.token_for(pod))

    def sa_token(ns, name, aud="tollgate"):
        return jwt.encode({"iss": ISSUER, "aud": [aud], "sub": f"system:serviceaccount:{ns}:{name}", "exp": int(time.time()) + 600},
                          key, algorithm="RS256", headers={"kid": "sa-key"})

    bot, other = sa_token("agents", "report-bot"), sa_token("agents", "intruder")
    eventually(lambda: side.allows("create_issue", token=bot), what="the cluster's keys reached the sidecar")
    assert not side.allows("delete_repository", token=bot), "the bot is governed: default deny"
    assert side.allows("delete_repository", token=other), "another account is not governed by this policy"
    wrong_audience = httpx.post(f"{side.url}/mcp", headers={**HEADERS, "authorization": f"Bearer {sa_token('agents', 'report-bot', aud='api')}"},
                                json=call(1, "create_issue", {"title": "x"}))
    assert wrong_audience.status_code == 401


# ---------------------------------------------------------------------------------------------
# Several replicas


def test_e2e_one_replica_leads_and_another_takes_over_when_it_dies(kube, operator):
    a = operator("replica-a", "--lease-name", "failover", "--lease-duration", "3s")
    lease = eventually(lambda: kube.get("leases", OPERATOR_NS, "failover"))
    assert lease["spec"]["holderIdentity"] == "replica-a"
    b = operator("replica-b", "--lease-name", "failover", "--lease-duration", "3s")
    time.sleep(2.5)
    assert kube.get("leases", OPERATOR_NS, "failover")["spec"]["holderIdentity"] == "replica-a", "b follows while a renews"
    with b.client(kube) as c:
        assert c.post("/validate", content=b"x").status_code == 400, "followers serve webhooks too"
    a.stop(signal.SIGKILL)
    lease = eventually(lambda: (l := kube.get("leases", OPERATOR_NS, "failover"))["spec"]["holderIdentity"] == "replica-b" and l, timeout=30)
    assert lease["spec"]["leaseTransitions"] >= 1
    kube.namespace("after-failover")
    kube.create("mcppolicies", policy("after-failover", "p", {"tools": {}}))
    eventually(lambda: kube.get("mcppolicies", "after-failover", "p").get("status"), what="the new leader writes status")


def test_e2e_the_operator_labels_the_namespaces_it_is_told_to_inject(kube, operator):
    kube.namespace("team-a")
    operator("operator-labeller", "--inject-namespaces", "team-a,team-b")
    eventually(lambda: kube.get("namespaces", None, "team-a")["metadata"]["labels"].get("tollgate.dev/injection") == "enabled")
    kube.namespace("team-b")
    eventually(lambda: kube.get("namespaces", None, "team-b")["metadata"]["labels"].get("tollgate.dev/injection") == "enabled",
               what="a namespace created later is labelled too")


def test_e2e_with_cert_manager_the_operator_serves_the_mounted_certificate_and_follows_renewals(kube, operator, tmp_path):
    # cert-manager's Secret, as mounted: tls.crt, tls.key, ca.crt. Two certificates from two
    # CAs stand in for an issuance and a renewal (made by an operator-managed run).
    issuer = operator("issuer", "--tls-secret", "issued-1")
    first = eventually(lambda: kube.get("secrets", OPERATOR_NS, "issued-1"))["data"]
    issuer.stop()
    issuer = operator("issuer-2", "--tls-secret", "issued-2")
    second = eventually(lambda: kube.get("secrets", OPERATOR_NS, "issued-2"))["data"]
    issuer.stop()
    mounted = tmp_path / "tls"
    mounted.mkdir()

    def mount(data):
        for name in ("tls.crt", "tls.key", "ca.crt"):
            (mounted / name).write_bytes(base64.b64decode(data[name]))

    mount(first)
    op = operator("operator-cm", "--tls-dir", str(mounted), "--cert-check", "300ms")

    def served_by(data) -> bool:
        ca = base64.b64decode(data["ca.crt"]).decode()
        try:
            with httpx.Client(base_url=op.url, verify=ssl.create_default_context(cadata=ca)) as c:
                return c.post("/validate", content=b"x").status_code == 400
        except httpx.ConnectError:
            return False

    assert served_by(first) and not served_by(second)
    mount(second)
    eventually(lambda: served_by(second), what="the renewed certificate is served")
