"""The user's journey on a real node (tests/cluster/up.sh --node): Tollgate's own images, the
chart with its default values, an MCP server Deployment injected and running, an agent pod
calling it through its Service, the boundary on real pod networking, probes, and the faults a
cluster brings (a sidecar killed, the operator gone, an upgrade, an uninstall).

One cluster serves the module; the tests run in order, each a step of the journey, and each
asserts what the user sees. The module prints how long it took and what it started.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import threading
import time

import httpx
import pytest
import yaml
from cluster import NAMESPACE, RELEASE, eventually, policy
from conftest import ROOT, report
from node import MCP_PORT, Agent, Node, host_container, host_post, host_tools_spec, install, python, records
from rpc import call

pytestmark = pytest.mark.timeout(900)

NS = "shop"
AGENTS = "agents"
SERVER = "app=mcp"
OPERATOR = "app.kubernetes.io/name=tollgate-operator"
SERVICE = f"http://mcp.{NS}.svc.cluster.local"
STARTED: dict[str, float] = {}


def mcp_deployment(name: str = "mcp", replicas: int = 2, labels: dict | None = None, host_port: int | None = None,
                   helper: bool = False) -> dict:
    """The real Python SDK server (tests/e2e/recording_server.py), which writes down every tool
    it runs; its readiness probe on the MCP port, as servers in pods have them."""
    labels = labels or {"app": "mcp"}
    port = {"name": "mcp", "containerPort": MCP_PORT, **({"hostPort": host_port} if host_port else {})}
    server = host_container(
        "server",
        python("tests/e2e/recording_server.py", "--port", str(MCP_PORT), "--host", "::", "--record",
               "/record/runs.jsonl", "--stateless", "--json"),
        mounts=[{"name": "record", "mountPath": "/record"}],
        ports=[port],
        readinessProbe={"httpGet": {"path": "/health", "port": "mcp"}, "periodSeconds": 1, "failureThreshold": 2},
    )
    # Another container of the same pod, which tries the app's port on localhost.
    more = [host_container("helper", ["/usr/bin/sleep", "infinity"])] if helper else []
    spec = host_tools_spec(server, *more, volumes=[{"name": "record", "emptyDir": {}}])
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NS},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": spec}}}


POLICY = {
    "default": "deny",
    "hide": ["run_query"],
    "tools": {
        "read_file": {"rules": []},
        "delete_repository": {"rules": [{"name": "never", "action": "deny", "onDeny": "Repository deletion is not permitted"}]},
        "create_issue": {"rules": [{"name": "three an hour", "rateLimit": "3/hour", "onDeny": "Three issues an hour"}]},
        "create_charge": {"rules": [{"name": "a person decides", "action": "approve", "approval": {"timeout": "60s"}}]},
    },
}


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    t0 = time.monotonic()
    n = Node.start(tmp_path_factory.mktemp("node"))
    STARTED["node up"] = f"{time.monotonic() - t0:.0f} s"
    try:
        t0 = time.monotonic()
        n.images = n.import_images()
        STARTED["images built and imported"] = f"{time.monotonic() - t0:.0f} s"
        yield n
    finally:
        t0 = time.monotonic()
        n.stop()
        STARTED["node down"] = f"{time.monotonic() - t0:.0f} s"
        report("test_node", "a real node: " + ", ".join(f"{k} {v}" for k, v in STARTED.items())
               + "; started etcd, kube-apiserver, kube-controller-manager, containerd, kubelet, kube-proxy, "
                 "kube-scheduler, CoreDNS, and the pods: 2 operators, 2-3 MCP servers, an agent, Redis")


@pytest.fixture(scope="module")
def journey(node):
    """The chart installed with its defaults, an injection namespace with a policy and the MCP
    server Deployment, and an agent pod elsewhere."""
    t0 = time.monotonic()
    node.install_output = install(node)
    STARTED["helm install to operators Ready"] = f"{time.monotonic() - t0:.0f} s"
    node.namespace(NS, **{"tollgate.dev/injection": "enabled"})
    node.namespace(AGENTS)
    node.apply(policy("shop", POLICY, NS))
    node.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "mcp", "namespace": NS},
                "spec": {"selector": {"app": "mcp"}, "ports": [
                    {"name": "by-number", "port": 80, "targetPort": MCP_PORT},
                    {"name": "by-name", "port": 81, "targetPort": "mcp"}]}})
    t0 = time.monotonic()
    node.apply(mcp_deployment())
    node.kubectl("-n", NS, "rollout", "status", "deployment/mcp", "--timeout=180s")
    STARTED["MCP Deployment applied to Ready"] = f"{time.monotonic() - t0:.0f} s"
    node.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "agent", "namespace": AGENTS},
                "spec": host_tools_spec(host_container("main", ["/usr/bin/sleep", "infinity"]))})
    node.wait(AGENTS, "pod/agent")
    return node, Agent(node, AGENTS, "agent")


def test_node_helm_install_with_defaults_runs_the_operator_from_its_image_and_one_replica_leads(journey):
    node, _ = journey
    pods = node.ready_pods(NAMESPACE, OPERATOR)
    assert len(pods) == 2
    assert all(p["spec"]["containers"][0]["image"] == node.images[1] for p in pods)
    lease = node.get("-n", NAMESPACE, "lease", "tollgate-operator")
    assert lease["spec"]["holderIdentity"] in {p["metadata"]["name"] for p in pods}
    # The API server reaches the webhooks through the chart's Service, at the operators' pod IPs.
    slices = node.get("-n", NAMESPACE, "endpointslices", "-l", "kubernetes.io/service-name=tollgate-operator")["items"]
    addresses = {a for s in slices for e in s.get("endpoints", []) for a in e["addresses"]}
    assert addresses == {p["status"]["podIP"] for p in pods}
    assert all(a.startswith(node.env["TOLLGATE_CLUSTER_POD_CIDR"].rsplit(".", 1)[0]) for a in addresses)
    assert "warning" not in node.install_output.lower(), node.install_output
    # The CRDs came with this very install: the operators applied the baseline once served.
    baseline = eventually(lambda: node.kubectl("get", "mcpclusterpolicy", "tollgate-baseline", check=False).returncode == 0
                          and node.get("mcpclusterpolicy", "tollgate-baseline", "--show-managed-fields"),
                          what="the operators applied the baseline")
    assert baseline["spec"]["default"] == "deny"
    assert "tollgate-operator" in {f["manager"] for f in baseline["metadata"]["managedFields"]}
    # No replica logs a conflict over the webhooks' caBundle (they both write it at start).
    for p in node.pods(NAMESPACE, OPERATOR):
        log = node.kubectl("-n", NAMESPACE, "logs", p["metadata"]["name"]).stdout
        assert not re.search(r"(?<![\d.])409(?!\d)|[Cc]onflict", log), log[-3000:]
        assert "\x1b[" not in log, "no terminal colours in a pod's log"


def test_node_mcp_pods_run_injected_and_the_app_starts_only_once_the_sidecar_holds_its_policy(journey):
    node, _ = journey
    pods = node.ready_pods(NS, SERVER)
    assert len(pods) == 2
    for p in pods:
        init = {c["name"]: c for c in p["spec"]["initContainers"]}
        assert list(init) == ["tollgate-init", "tollgate-proxy"]
        assert init["tollgate-proxy"]["restartPolicy"] == "Always"
        assert init["tollgate-proxy"]["image"] == node.images[0]
        statuses = {s["name"]: s for s in p["status"]["initContainerStatuses"]}
        assert statuses["tollgate-init"]["state"]["terminated"]["exitCode"] == 0
        assert statuses["tollgate-proxy"]["ready"] is True
        # The kubelet started the app only after the sidecar's startup probe (its /readyz,
        # true only once it holds a policy) passed: the sidecar says so before the app ran.
        log = node.kubectl("-n", NS, "logs", p["metadata"]["name"], "-c", "tollgate-proxy").stdout
        assert "policy received" in log, log[-2000:]
        app = p["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
        proxy = statuses["tollgate-proxy"]["state"]["running"]["startedAt"]
        assert proxy <= app
        # No Tollgate container holds the app's API token: the API server mounted it into the
        # app alone (read from the pod it stored, and from inside the sidecar's filesystem).
        for name, c in init.items():
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert mounts.get("/var/run/secrets/kubernetes.io/serviceaccount") == "tollgate-no-api-token", (name, mounts)
        app_mounts = [m["name"] for m in p["spec"]["containers"][0]["volumeMounts"]]
        assert any(n.startswith("kube-api-access-") for n in app_mounts)


def test_node_an_agent_pod_through_the_service_is_allowed_denied_and_filtered_and_denials_never_run(journey):
    node, agent = journey
    seen = agent.session(f"{SERVICE}/mcp", [
        ("read_file", {"path": "README.md"}),
        ("delete_repository", {"name": "prod"}),
        ("run_query", {"sql": "select 1"}),
        ("slow_issue", {"title": "unlisted"}),
    ])
    # A tool whose every rule denies is filtered too: the agent may never call it.
    assert seen["tools"] == ["create_charge", "create_issue", "read_file"]
    calls = seen["calls"]
    assert calls[0] == ["ok", "contents of README.md"]
    assert calls[1][0] == "denied" and calls[1][2]["reason"] == "Repository deletion is not permitted"
    assert calls[2][0] == "denied" and calls[3][0] == "denied"
    ran = [r["tool"] for r in records(node, NS, SERVER)]
    assert ran == ["read_file"], "the server's own record: denied calls never reached it"


def test_node_a_call_held_for_approval_goes_on_once_kubectl_tollgate_approves_and_is_used_once(journey):
    node, agent = journey
    held: dict = {}
    t = threading.Thread(target=lambda: held.update(agent.session(f"{SERVICE}/mcp", [("create_charge", {"amount": 5, "currency": "eur"})])))
    t.start()
    waiting = eventually(lambda: [o for o in node.get("-n", NS, "mcpapprovals")["items"] if o.get("status", {}).get("phase") == "Pending"],
                         what="the held call's McpApproval", timeout=60)
    name = waiting[0]["metadata"]["name"]
    listed = node.plugin("list", "-n", NS).stdout
    assert name in listed
    node.plugin("approve", name, "-n", NS, "--reason", "journey")
    t.join(90)
    assert held["calls"] == [["ok", "charged 5.0 eur"]], held
    used = eventually(lambda: (o := node.get("-n", NS, "mcpapproval", name))["status"]["phase"] == "Used" and o, what="Used")
    assert used["spec"]["decision"]["decidedBy"] == "admin"
    # Its retry is not admitted by the used approval: a new one waits for a person.
    status, text = agent.raw(f"{SERVICE}/mcp", call(7, "create_charge", {"amount": 5, "currency": "eur"}), timeout=5)
    assert status in (0, 200), text
    assert [r["tool"] for r in records(node, NS, SERVER)].count("create_charge") == 1


def test_node_a_deployments_tool_pins_are_made_on_first_use_hold_a_changed_tool_and_kubectl_tollgate_accepts_it(journey):
    node, agent = journey
    ns = "pinned"
    node.namespace(ns, **{"tollgate.dev/injection": "enabled"})
    node.apply(policy("pinned", {"default": "deny", "pinning": {"trustOnFirstUse": True}, "passthroughPaths": ["/change/*"],
                                 "tools": {"read_file": {"rules": []}, "create_issue": {"rules": []}}}, ns))
    server = host_container("server", python("tests/e2e/rugpull_server.py", "--port", str(MCP_PORT), "--stateless", "--json"),
                            ports=[{"name": "mcp", "containerPort": MCP_PORT}])
    node.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "rugpull", "namespace": ns},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "rugpull"}},
                         "template": {"metadata": {"labels": {"app": "rugpull"}}, "spec": host_tools_spec(server)}}})
    node.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "rugpull", "namespace": ns},
                "spec": {"selector": {"app": "rugpull"}, "ports": [{"port": 80, "targetPort": "mcp"}]}})
    node.kubectl("-n", ns, "rollout", "status", "deployment/rugpull", "--timeout=180s")
    url = f"http://rugpull.{ns}.svc.cluster.local"
    first = eventually(lambda: agent.session(f"{url}/mcp", [("read_file", {"path": "/a"})]), what="a session", timeout=60)
    assert first["tools"] == ["create_issue", "read_file"] and first["calls"] == [["ok", "contents of /a"]], first
    pins = {p["spec"]["tool"]: p for p in node.get("-n", ns, "mcptoolpins")["items"]}
    assert {(p["spec"]["workload"], p["spec"]["source"]) for p in pins.values()} == {("Deployment/rugpull", "FirstUse")}

    status, text = agent.raw(f"{url}/change/description", {})
    assert status == 200 and "changed" in text, (status, text)
    after = agent.session(f"{url}/mcp", [("read_file", {"path": "/a"})])
    assert after["tools"] == ["create_issue"] and after["calls"][0][0] == "denied", after
    held = eventually(lambda: node.get("-n", ns, "mcptoolpin", pins["read_file"]["metadata"]["name"]).get("status", {}).get("held"),
                      what="the held definition on its McpToolPin")
    assert held["why"] == "changed" and held["changed"] == ["description"]
    events = [e for e in node.get("-n", ns, "events.events.k8s.io")["items"] if e.get("reason") == "DefinitionHeld"]
    assert events and "evil.example" not in events[0]["note"] and "kubectl tollgate pins accept" in events[0]["note"]
    listed = node.plugin("pins", "list", "-n", ns).stdout
    assert "evil.example" in listed and held["definition"]["digest"] in listed, listed
    node.plugin("pins", "accept", "read_file", "--workload", "Deployment/rugpull", "--digest", held["definition"]["digest"], "-n", ns)
    again = eventually(lambda: (s := agent.session(f"{url}/mcp", [("read_file", {"path": "/b"})]))["calls"] == [["ok", "contents of /b"]] and s,
                       what="the accepted definition called on the pod", timeout=30)
    assert again["tools"] == ["create_issue", "read_file"]
    # What the workload now trusts, as a policy to review and apply.
    starter = yaml.safe_load(node.plugin("pin", "--workload", "Deployment/rugpull", "-n", ns).stdout)
    assert starter["spec"]["selector"] == {"matchLabels": {"app": "rugpull"}}
    assert starter["spec"]["pinning"]["tools"]["read_file"] == held["definition"]["digest"], starter


SHOP_TESTS = """
cases:
  - name: reads are allowed, deletions never
    steps:
      - call: read_file
        args: {path: README.md}
        expect: {decision: allow}
      - call: delete_repository
        expect: {decision: deny, rule: never, policy: mcppolicy/shop/shop}
  - name: three issues an hour
    steps:
      - call: create_issue
        repeat: 3
        expect: {decision: allow}
      - call: create_issue
        expect: {decision: deny, reason: Three issues an hour}
  - name: charges wait for a person, and what no policy lists is refused
    steps:
      - call: create_charge
        expect: {decision: approve, rule: a person decides}
      - call: launch_rocket
        expect: {decision: deny, rule: (default deny)}
      - list: [read_file, run_query, create_issue, launch_rocket]
        expect: {shown: [read_file, create_issue], hidden: [run_query, launch_rocket]}
"""


def test_node_kubectl_tollgate_tests_a_pods_effective_policy_and_replays_its_sidecars_audit_lines(journey, tmp_path):
    node, _ = journey
    pods = node.get("-n", NS, "pods", "-l", SERVER)["items"]
    tests = tmp_path / "shop.tollgate-test.yaml"
    tests.write_text(SHOP_TESTS)
    junit = tmp_path / "junit.xml"
    out = node.plugin("test", "--pod", f"{NS}/{pods[0]['metadata']['name']}", str(tests), "--junit", str(junit))
    assert "ok  \t" in out.stdout and "3 cases" in out.stdout, out.stdout + out.stderr
    assert "mcppolicy/shop/shop" in out.stderr and 'failures="0"' in junit.read_text()
    # A pod no policy selects gets only the baseline (and the cluster's default): every case above fails.
    node.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare", "namespace": AGENTS},
                "spec": host_tools_spec(host_container("main", ["/usr/bin/sleep", "infinity"]))})
    bare = node.plugin("test", "--pod", f"{AGENTS}/bare", str(tests), check=False)
    assert bare.returncode == 1 and "3 of 3 cases failed" in bare.stdout, bare.stdout + bare.stderr
    node.kubectl("-n", AGENTS, "delete", "pod", "bare", "--wait=false")

    # The calls the journey made so far, decided again under a policy that refuses reads.
    stricter = {**POLICY, "tools": {**POLICY["tools"], "read_file": {"rules": [{"name": "no reads", "action": "deny"}]}}}
    new = tmp_path / "stricter.yaml"
    new.write_text(json.dumps(policy("shop", stricter, NS)))
    replayed = node.plugin("replay", "-n", NS, "-l", SERVER, "--policy", str(new), "--json")
    report = json.loads(replayed.stdout)
    assert report["changes"] == [{"tool": "read_file", "from": "allow", "to": "deny", "rule": "no reads", "calls": 1}], report
    assert report["unknown"] == 0 and report["unchanged"] >= 4 and report["calls"] == report["unchanged"] + 1, report
    same = tmp_path / "same.yaml"
    same.write_text(json.dumps(policy("shop", POLICY, NS)))
    report = json.loads(node.plugin("replay", "-n", NS, "-l", SERVER, "--policy", str(same), "--json").stdout)
    assert report["changed"] == 0 and report["calls"] >= 5, report


def pod_url(pod: dict, port: int = MCP_PORT) -> str:
    return f"http://{pod['status']['podIP']}:{port}/mcp"


def test_node_the_boundary_holds_on_pod_networking_by_pod_ip_of_both_families_service_number_and_name(journey):
    node, agent = journey
    before = len(records(node, NS, SERVER))
    pods = node.ready_pods(NS, SERVER)
    ways = {f"pod IP {pods[0]['status']['podIP']}:{MCP_PORT}": pod_url(pods[0]),
            "Service by number": f"http://mcp.{NS}.svc:80/mcp",
            "Service by port name": f"http://mcp.{NS}.svc:81/mcp"}
    for way, url in ways.items():
        status, text = agent.raw(url, call(1, "delete_repository", {"name": way}))
        assert status == 200, (way, text)
        answer = json.loads(text)
        assert answer["error"]["data"]["rule"] == "never", (way, answer)
    # From this machine (outside every pod), straight to the pod's IP, IPv4 and IPv6 (the
    # redirect covers both families, and the sidecar listens on both).
    assert host_post(pod_url(pods[1]), call(2, "delete_repository", {"name": "host"}))["error"]["data"]["rule"] == "never"
    [v6] = [a["ip"] for a in pods[1]["status"]["podIPs"] if ":" in a["ip"]]
    answer = host_post(f"http://[{v6}]:{MCP_PORT}/mcp", call(3, "delete_repository", {"name": "host v6"}))
    assert answer["error"]["data"]["rule"] == "never", answer
    assert "result" in host_post(f"http://[{v6}]:{MCP_PORT}/mcp", call(4, "read_file", {"path": "v6"}))
    before += 1
    # What a kubelet asks of an IPv6-only pod's sidecar: its probe port answers on IPv6 too.
    assert httpx.get(f"http://[{v6}]:15481/readyz", timeout=5).status_code == 200
    assert len(records(node, NS, SERVER)) == before, "no denied call reached a server"


def test_node_the_boundary_holds_through_a_host_port_and_from_another_container_of_the_pod(journey):
    node, _ = journey
    node.apply(mcp_deployment("mcp-edge", 1, {"app": "mcp-edge"}, host_port=18000, helper=True))
    node.kubectl("-n", NS, "rollout", "status", "deployment/mcp-edge", "--timeout=180s")
    [pod] = node.ready_pods(NS, "app=mcp-edge")
    answer = host_post(f"http://{node.node_ip}:18000/mcp", call(1, "delete_repository", {"name": "via hostPort"}))
    assert answer and answer["error"]["data"]["rule"] == "never", answer
    # The pod's other container dials the app's port on localhost: the sidecar answers.
    out = node.exec(NS, pod["metadata"]["name"], "/usr/bin/curl", "-s", "-H", "content-type: application/json",
                    "-H", "accept: application/json, text/event-stream", "--data",
                    json.dumps(call(2, "delete_repository", {"name": "from inside"})),
                    f"http://127.0.0.1:{MCP_PORT}/mcp", container="helper").stdout
    assert json.loads(out)["error"]["data"]["rule"] == "never", out
    # A root container that switches to the sidecar's UID (with another GID) is sent through
    # the sidecar too: the UID alone is not the key to the app.
    out = node.exec(NS, pod["metadata"]["name"], "/usr/bin/setpriv", "--reuid", "2417", "--regid", "1000",
                    "--clear-groups", "--", "/usr/bin/curl", "-s", "-H", "content-type: application/json",
                    "-H", "accept: application/json, text/event-stream", "--data",
                    json.dumps(call(3, "delete_repository", {"name": "as the sidecar's UID"})),
                    f"http://127.0.0.1:{MCP_PORT}/mcp", container="helper").stdout
    assert json.loads(out)["error"]["data"]["rule"] == "never", out
    assert records(node, NS, "app=mcp-edge") == []


def test_node_injection_refuses_a_container_running_as_the_sidecars_uid_or_on_the_nodes_network(journey):
    node, _ = journey
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "as-sidecar", "namespace": NS},
           "spec": host_tools_spec(host_container("server", ["/usr/bin/sleep", "infinity"],
                                                   ports=[{"name": "mcp", "containerPort": MCP_PORT}],
                                                   securityContext={"runAsUser": 2417}))}
    out = node.apply(pod, check=False)
    assert out.returncode != 0 and "runs as UID 2417, the sidecar's" in out.stderr, out.stderr
    pod["metadata"]["name"] = "on-the-node"
    pod["spec"]["containers"][0].pop("securityContext")
    pod["spec"]["hostNetwork"] = True
    out = node.apply(pod, check=False)
    assert out.returncode != 0 and "spec.hostNetwork" in out.stderr and 'tollgate.dev/inject: "false"' in out.stderr, out.stderr


def test_node_app_probes_are_answered_through_the_sidecar_and_the_pod_turns_not_ready_when_the_app_stops(journey):
    node, _ = journey
    pod = node.ready_pods(NS, SERVER)[0]
    probe = pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]
    assert probe["port"] == "tollgate-admin" or isinstance(probe["port"], int)
    assert probe["path"].startswith("/app-health/"), probe
    name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
    [app] = node.processes(uid, "python") or node.processes(uid, "python3.11")
    os.kill(app, signal.SIGSTOP)
    try:
        eventually(lambda: not any(c["type"] == "Ready" and c["status"] == "True"
                                   for c in node.get("-n", NS, "pod", name)["status"]["conditions"]),
                   what="the pod turns NotReady", timeout=30)
    finally:
        os.kill(app, signal.SIGCONT)
    node.wait(NS, f"pod/{name}", timeout=30)


def test_node_a_policy_change_reaches_running_sidecars_and_the_time_it_takes_is_printed(journey):
    node, _ = journey
    pods = node.ready_pods(NS, SERVER)
    times = []
    for i in range(6):
        allow = i % 2 == 1
        tools = {**POLICY["tools"], "read_file": {"rules": [] if allow else [{"name": f"closed {i}", "action": "deny"}]}}
        t0 = time.monotonic()
        node.apply(policy("shop", {**POLICY, "tools": tools}, NS))
        for p in pods:
            eventually(lambda: ("result" in (host_post(pod_url(p), call(i, "read_file", {"path": "x"})) or {})) == allow,
                       what=f"change {i} enforced in {p['metadata']['name']}", timeout=30)
        times.append(time.monotonic() - t0)
    times.sort()
    STARTED["policy change from kubectl apply to enforced in both replicas"] = (
        f"p50 {1000 * statistics.median(times):.0f} ms, p99 (the slowest of 6) {1000 * times[-1]:.0f} ms")


def kill_sidecar(node: Node, pod: dict) -> None:
    for pid in node.processes(pod["metadata"]["uid"], "tollgate"):
        os.kill(pid, signal.SIGKILL)


def test_node_a_killed_sidecar_is_restarted_and_meanwhile_calls_are_refused_never_reaching_the_app(journey):
    node, _ = journey
    pod = node.ready_pods(NS, SERVER)[0]
    url = pod_url(pod)
    before = len(records(node, NS, SERVER))
    restarts = {s["name"]: s["restartCount"] for s in pod["status"]["initContainerStatuses"]}["tollgate-proxy"]
    kill_sidecar(node, pod)
    refused = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer = host_post(url, call(1, "delete_repository", {"name": "while down"}), timeout=2)
        if answer is None:
            refused += 1
        elif "error" in answer and refused:
            break
        time.sleep(0.05)
    assert refused > 0, "calls while the sidecar was down were answered by something"
    stored = node.get("-n", NS, "pod", pod["metadata"]["name"])
    assert {s["name"]: s["restartCount"] for s in stored["status"]["initContainerStatuses"]}["tollgate-proxy"] == restarts + 1
    assert len(records(node, NS, SERVER)) == before


def decides(pod: dict, tool: str) -> bool | None:
    answer = host_post(pod_url(pod), call(1, tool, {"path": "x"} if tool == "read_file" else {"name": "x"}))
    return None if answer is None else "result" in answer


@pytest.mark.parametrize("round", range(4))
def test_node_sidecars_keep_their_policy_while_the_operator_is_gone_and_every_later_change_reaches_them(journey, round):
    """Both operator pods deleted, or the Deployment scaled to zero and back (as the stale-policy
    report did it); then a change applied a few seconds after the operator's return."""
    node, _ = journey
    pods = node.ready_pods(NS, SERVER)
    if round % 2 == 0:
        for p in node.pods(NAMESPACE, OPERATOR):
            node.kubectl("-n", NAMESPACE, "delete", "pod", p["metadata"]["name"], "--wait=false")
    else:
        node.kubectl("-n", NAMESPACE, "scale", "deployment/tollgate-operator", "--replicas=0")
        eventually(lambda: not node.pods(NAMESPACE, OPERATOR), what="no operator pod left", timeout=60)
        # Meanwhile the sidecars decide by the policy they hold.
        assert all(decides(p, "delete_repository") is False for p in pods)
        time.sleep(3)
        node.kubectl("-n", NAMESPACE, "scale", "deployment/tollgate-operator", "--replicas=2")
    assert all(decides(p, "delete_repository") is False for p in pods)
    eventually(lambda: len(node.ready_pods(NAMESPACE, OPERATOR)) == 2, what="the operator is back", timeout=120)
    time.sleep(3)
    allow = round % 2 == 0
    tools = {**POLICY["tools"], "read_file": {"rules": [] if allow else [{"name": f"closed {round}", "action": "deny"}]}}
    # The API server's calls to the validating webhook reach the new replicas once kube-proxy
    # has their endpoints (until then a call may time out, as in any cluster): apply until it
    # is admitted, as a person would.
    eventually(lambda: node.apply(policy("shop", {**POLICY, "tools": tools}, NS), check=False).returncode == 0,
               what="the policy change is admitted", timeout=60)
    for p in pods:
        # A sidecar that found no operator backs off (at most 30 s) before it tries again.
        eventually(lambda: decides(p, "read_file") == allow,
                   what=f"the change after the operator's return reached {p['metadata']['name']}", timeout=60)


def test_node_counters_in_redis_make_a_limit_exact_across_replicas(journey):
    node, _ = journey
    node.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "redis", "namespace": AGENTS, "labels": {"app": "redis"}},
                "spec": host_tools_spec(host_container(
                    "redis", ["/usr/bin/redis-server", "--port", "6379", "--protected-mode", "no", "--save", "", "--appendonly", "no"],
                    ports=[{"containerPort": 6379}]))})
    node.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "redis", "namespace": AGENTS},
                "spec": {"selector": {"app": "redis"}, "ports": [{"port": 6379}]}})
    node.wait(AGENTS, "pod/redis")
    node.helm("upgrade", RELEASE, str(ROOT / "charts" / "tollgate"), "-n", NAMESPACE, "--reuse-values", "--wait",
              "--set", f"counters.redis.url=redis://redis.{AGENTS}.svc.cluster.local:6379")
    node.kubectl("-n", NAMESPACE, "rollout", "status", "deployment/tollgate-operator", "--timeout=180s")
    node.kubectl("-n", NS, "rollout", "restart", "deployment/mcp")
    node.kubectl("-n", NS, "rollout", "status", "deployment/mcp", "--timeout=180s")
    pods = eventually(lambda: (r := node.ready_pods(NS, SERVER)) and len(r) == 2 and r, what="two new replicas")
    answers = [host_post(pod_url(pods[i % 2]), call(i, "create_issue", {"title": f"t{i}"})) for i in range(6)]
    assert ["result" in a for a in answers] == [True, True, True, False, False, False], answers
    assert answers[3]["error"]["data"]["reason"] == "Three issues an hour"
    assert len([r for r in records(node, NS, SERVER) if r["tool"] == "create_issue"]) == 3


def test_node_helm_upgrade_to_a_new_sidecar_image_reaches_new_pods_and_running_ones_keep_working(journey):
    node, _ = journey
    running = node.ready_pods(NS, SERVER)
    [new_image] = node.import_images("sidecar", tag="0.1.0-next")
    node.helm("upgrade", RELEASE, str(ROOT / "charts" / "tollgate"), "-n", NAMESPACE, "--reuse-values", "--wait",
              "--set", "sidecar.image.tag=0.1.0-next")
    node.kubectl("-n", NAMESPACE, "rollout", "status", "deployment/tollgate-operator", "--timeout=180s")
    assert all(decides(p, "delete_repository") is False and decides(p, "read_file") is not None for p in running)
    node.kubectl("-n", NS, "rollout", "restart", "deployment/mcp")
    node.kubectl("-n", NS, "rollout", "status", "deployment/mcp", "--timeout=180s")
    fresh = eventually(lambda: (r := node.ready_pods(NS, SERVER)) and len(r) == 2 and r, what="two new replicas")
    for p in fresh:
        proxy = next(c for c in p["spec"]["initContainers"] if c["name"] == "tollgate-proxy")
        assert proxy["image"] == new_image
        assert decides(p, "delete_repository") is False


def test_node_helm_uninstall_leaves_running_pods_enforcing_their_last_policy(journey):
    node, _ = journey
    pods = node.ready_pods(NS, SERVER)
    before = {p["metadata"]["name"]: decides(p, "read_file") for p in pods}
    node.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait")
    eventually(lambda: not node.pods(NAMESPACE, OPERATOR), what="the operator is gone", timeout=60)
    for p in pods:
        assert decides(p, "delete_repository") is False
        assert decides(p, "read_file") == before[p["metadata"]["name"]]
