"""Traces: the real `tollgate` binary exports OTLP to a real OpenTelemetry Collector (its OTLP
receiver, built from the collector's Go modules by tests/cluster/build.sh), which writes what it
received with its file exporter. The spans of real calls through the proxy, to a Python SDK
server, are read back from there: their names, attributes and parentage, and the `traceparent`
the server was given.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, free_port, wait_for_port
from rpc import HEADERS, call, messages, open_session
from test_approvals import Approver, first_pending
from test_counters_redis import redis  # noqa: F401 (a fixture)

AGENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
AGENT_SPAN = "00f067aa0ba902b7"

POLICY = """
apiVersion: tollgate.dev/v1alpha1
kind: McpPolicy
metadata: {name: traced, namespace: default}
spec:
  default: deny
  tools:
    read_file:
      rules:
        - name: ten a minute
          limit: {counter: reads, window: minute, max: 10}
    delete_repository:
      rules:
        - {name: never, action: deny, onDeny: Repositories are deleted by people}
    create_issue:
      rules:
        - name: a person decides
          action: approve
          approval: {timeout: 20s}
"""


@pytest.fixture(scope="module")
def otelcol() -> Path:
    out = subprocess.run(["bash", str(ROOT / "tests" / "cluster" / "build.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip()) / "otelcol"


class Collector:
    def __init__(self, endpoint: str, out: Path):
        self.endpoint, self.out = endpoint, out

    def spans(self) -> list[dict]:
        """Every span received so far, each with its resource's attributes as `resource`."""
        found = []
        if not self.out.exists():
            return found
        for line in self.out.read_text().splitlines():
            if not line.strip():
                continue
            for rs in json.loads(line).get("resourceSpans", []):
                resource = attrs(rs.get("resource", {}))
                for ss in rs.get("scopeSpans", []):
                    for s in ss.get("spans", []):
                        found.append({**s, "attrs": attrs(s), "resource": resource})
        return found

    def trace(self, trace_id: str, count: int, timeout: float = 15) -> list[dict]:
        """The spans of one trace, once `count` have arrived (the proxy batches for a second)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = [s for s in self.spans() if s["traceId"] == trace_id]
            if len(spans) >= count or time.monotonic() > deadline:
                return spans
            time.sleep(0.1)


def attrs(obj: dict) -> dict:
    out = {}
    for kv in obj.get("attributes", []):
        v = kv["value"]
        out[kv["key"]] = v.get("stringValue", v.get("intValue", v.get("boolValue")))
    return out


@pytest.fixture
def collector(otelcol, procs, tmp_path) -> Collector:
    port = free_port()
    out = tmp_path / "spans.jsonl"
    config = tmp_path / "otelcol.yaml"
    config.write_text(f"""
receivers:
  otlp:
    protocols:
      http: {{endpoint: "127.0.0.1:{port}"}}
exporters:
  file: {{path: "{out}", flush_interval: 100ms}}
service:
  telemetry: {{metrics: {{level: none}}}}
  pipelines:
    traces: {{receivers: [otlp], exporters: [file]}}
""")
    procs.start("otelcol", [str(otelcol), "--config", str(config)], port)
    return Collector(f"http://127.0.0.1:{port}", out)


def by_name(spans: list[dict], name: str) -> dict:
    found = [s for s in spans if s["name"] == name]
    assert len(found) == 1, (name, [s["name"] for s in spans])
    return found[0]


def heads(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []


@pytest.fixture
def traced(recorder, proxy, collector, redis, tollgate_bin, tmp_path):  # noqa: F811
    """A recording server behind a proxy tracing to the collector, counting in Redis: (proxy,
    collector, the server's record of request heads, an approver)."""

    def start(*flags: str):
        head_file = tmp_path / "heads.jsonl"
        url, _record = recorder("--headers", str(head_file))
        store = redis()
        token = tmp_path / "approvals-token"
        approvals = free_port()
        px = proxy(url + "/mcp", POLICY, "--otlp-endpoint", collector.endpoint, "--counters", store.url,
                   "--approvals-token-file", str(token), "--approvals-listen", f"127.0.0.1:{approvals}",
                   "--pod", "web-0", *flags)
        return px, head_file, Approver(tollgate_bin, f"http://127.0.0.1:{approvals}", token)

    return start


def test_traces_an_allowed_call_is_the_agents_child_with_its_decision_counters_and_server_call(traced, collector):
    px, head_file, _ = traced()
    h = open_session(f"{px.url}/mcp")
    parent = f"00-{AGENT_TRACE}-{AGENT_SPAN}-01"
    r = httpx.post(f"{px.url}/mcp", headers={**h, "traceparent": parent}, json=call(7, "read_file", {"path": "a"}))
    assert r.status_code == 200 and "result" in messages(r)[0], r.text

    spans = collector.trace(AGENT_TRACE, 4)
    root = by_name(spans, "tools/call read_file")
    assert root["parentSpanId"] == AGENT_SPAN and root["kind"] == 2
    a = root["attrs"]
    assert (a["mcp.method.name"], a["gen_ai.tool.name"], a["gen_ai.operation.name"]) == ("tools/call", "read_file", "execute_tool")
    assert a["jsonrpc.request.id"] == "7" and a["mcp.session.id"] == h["mcp-session-id"]
    assert a["tollgate.decision"] == "allow" and a["tollgate.policy.revision"] not in (None, "")
    assert a["http.response.status_code"] == "200"
    assert root["resource"]["service.name"] == "tollgate-sidecar" and root["resource"]["k8s.pod.name"] == "web-0"

    decide = by_name(spans, "tollgate.decide")
    counters = by_name(spans, "EVALSHA")
    upstream = by_name(spans, "POST")
    for child in (decide, counters, upstream):
        assert child["parentSpanId"] == root["spanId"], child["name"]
        assert int(root["startTimeUnixNano"]) <= int(child["startTimeUnixNano"]) <= int(child["endTimeUnixNano"])
    assert decide["attrs"]["tollgate.decision"] == "allow" and decide["attrs"]["gen_ai.tool.name"] == "read_file"
    assert counters["kind"] == 3 and counters["attrs"]["db.system.name"] == "redis"
    assert upstream["kind"] == 3 and upstream["attrs"]["http.response.status_code"] == "200"

    server_port = px.proc.proc.args[px.proc.proc.args.index("--upstream") + 1].split(":")[2].split("/")[0]
    assert upstream["attrs"]["url.full"] == f"http://127.0.0.1:{server_port}/mcp"

    # The server was given the proxy's upstream span as its parent, in the agent's trace.
    posted = [x for x in heads(head_file) if x["traceparent"] and AGENT_TRACE in x["traceparent"]]
    assert [x["traceparent"] for x in posted] == [f"00-{AGENT_TRACE}-{upstream['spanId']}-01"]


def test_traces_a_denied_call_says_by_which_rule_and_has_no_server_call(traced, collector):
    px, head_file, _ = traced()
    h = open_session(f"{px.url}/mcp")
    trace = "0af7651916cd43dd8448eb211c80319c"
    r = httpx.post(f"{px.url}/mcp", headers={**h, "traceparent": f"00-{trace}-b7ad6b7169203331-01"},
                   json=call(8, "delete_repository", {"name": "prod"}))
    assert "error" in messages(r)[0]

    spans = collector.trace(trace, 2)
    root = by_name(spans, "tools/call delete_repository")
    assert root["attrs"]["tollgate.decision"] == "deny"
    assert root["attrs"]["tollgate.policy"] == "mcppolicy/default/traced"
    assert root["attrs"]["error.type"] == "tollgate.denied"
    assert root["status"] == {"code": 2, "message": 'denied by rule "never" of mcppolicy/default/traced'}
    decide = by_name(spans, "tollgate.decide")
    assert decide["attrs"]["tollgate.rule"] == "never"
    # No reason text: a condition's reason may quote the argument it read.
    assert "tollgate.reason" not in decide["attrs"] and "people" not in json.dumps(spans)
    assert not [s for s in spans if s["name"] == "POST"], "a denied call never reaches the server"
    assert not [x for x in heads(head_file) if x["traceparent"] and trace in x["traceparent"]]


def test_traces_a_held_calls_wait_for_a_person_is_a_span_of_its_own(traced, collector):
    px, _, approver = traced()
    h = open_session(f"{px.url}/mcp")
    trace = "5b8aa5a2d2c872e8321cf37308d69df2"

    def decide():
        approver.run("approve", first_pending(approver)["name"], "--by", "alice")

    def held_now() -> None:
        deadline = time.monotonic() + 10
        while px.metric("tollgate_approvals_held") != 1:
            assert time.monotonic() < deadline, "the held call is counted while it waits"
            time.sleep(0.05)
        decide()

    t = threading.Thread(target=held_now)
    t.start()
    r = httpx.post(f"{px.url}/mcp", headers={**h, "traceparent": f"00-{trace}-051581bf3cb55c13-01"},
                   json=call(9, "create_issue", {"title": "t"}), timeout=30)
    t.join()
    assert "result" in messages(r)[0], r.text

    spans = collector.trace(trace, 4)
    root = by_name(spans, "tools/call create_issue")
    wait = by_name(spans, "tollgate.approval")
    assert wait["parentSpanId"] == root["spanId"]
    assert wait["attrs"]["tollgate.approval.outcome"] == "approved"
    assert wait["attrs"]["tollgate.rule"] == "a person decides" and wait["attrs"]["tollgate.approval.name"]
    assert by_name(spans, "POST")["parentSpanId"] == root["spanId"]
    assert by_name(spans, "tollgate.decide")["attrs"]["tollgate.decision"] == "approve"
    assert px.metric("tollgate_approvals_held") == 0
    assert px.metric("tollgate_approvals_total", outcome="approved") == 1
    assert px.metric("tollgate_approvals_total", outcome="undecided") == 0


def test_traces_an_unsampled_agent_is_not_traced_and_its_context_reaches_the_server_unchanged(traced, collector):
    px, head_file, _ = traced("--trace-sampling", "0")
    h = open_session(f"{px.url}/mcp")
    unsampled = "00-11111111111111111111111111111111-2222222222222222-00"
    httpx.post(f"{px.url}/mcp", headers={**h, "traceparent": unsampled}, json=call(1, "read_file", {"path": "a"}))
    # Ratio 0: a call without a parent is not traced either.
    httpx.post(f"{px.url}/mcp", headers=h, json=call(2, "read_file", {"path": "b"}))
    sampled = "00-33333333333333333333333333333333-4444444444444444-01"
    httpx.post(f"{px.url}/mcp", headers={**h, "traceparent": sampled}, json=call(3, "read_file", {"path": "c"}))
    assert collector.trace("33333333333333333333333333333333", 4), "a sampled parent is followed"
    traces = {s["traceId"] for s in collector.spans()}
    assert traces == {"33333333333333333333333333333333"}, traces
    assert unsampled in [x["traceparent"] for x in heads(head_file)]


def test_traces_a_trace_begun_at_the_proxy_drops_a_tracestate_that_came_without_its_traceparent(traced, collector):
    px, head_file, _ = traced()
    h = open_session(f"{px.url}/mcp")
    r = httpx.post(f"{px.url}/mcp", headers={**h, "tracestate": "vendor=orphan"}, json=call(4, "read_file", {"path": "a"}))
    assert "result" in messages(r)[0]
    posted = [x for x in heads(head_file) if x["method"] == "POST"][-1]
    assert posted["traceparent"] and posted["tracestate"] is None, posted
    # With its traceparent, the agent's tracestate goes on.
    parent = f"00-{AGENT_TRACE}-{AGENT_SPAN}-01"
    httpx.post(f"{px.url}/mcp", headers={**h, "traceparent": parent, "tracestate": "vendor=kept"}, json=call(5, "read_file", {"path": "a"}))
    posted = [x for x in heads(head_file) if x["method"] == "POST"][-1]
    assert AGENT_TRACE in posted["traceparent"] and posted["tracestate"] == "vendor=kept", posted


def test_traces_a_batch_of_many_calls_keeps_a_bounded_trace_saying_what_it_left_out(traced, collector):
    px, _, _ = traced()
    trace = "6e0c63257de34c926f9efcd03e5ce3f1"
    batch = [call(i + 1, "delete_repository", {"name": f"r{i}"}) for i in range(200)]
    r = httpx.post(f"{px.url}/mcp", headers={**HEADERS, "mcp-protocol-version": "2025-06-18", "traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
                   json=batch, timeout=30)
    assert len(messages(r)) == 200
    spans = collector.trace(trace, 33)
    root = by_name(spans, "batch")
    assert root["attrs"]["tollgate.batch.size"] == "200"
    assert len(spans) == 33 and root["attrs"]["tollgate.spans.omitted"] == "168"


def test_traces_a_collector_that_is_gone_costs_dropped_spans_counted_never_a_call(recorder, proxy):
    url, _ = recorder()
    gone = free_port()
    px = proxy(url + "/mcp", POLICY, "--otlp-endpoint", f"http://127.0.0.1:{gone}")
    h = open_session(f"{px.url}/mcp")
    for i in range(5):
        r = httpx.post(f"{px.url}/mcp", headers=h, json=call(i + 1, "read_file", {"path": "a"}))
        assert "result" in messages(r)[0]
    deadline = time.monotonic() + 15
    while px.metric("tollgate_trace_spans_dropped_total", reason="export_failed") == 0:
        assert time.monotonic() < deadline, "spans not sent are counted"
        time.sleep(0.2)


def test_traces_a_bad_endpoint_stops_the_proxy_naming_the_flag(tollgate_bin, tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    out = subprocess.run([str(tollgate_bin), "proxy", "--upstream", "http://127.0.0.1:1", "--policy", str(policy),
                          "--listen", f"127.0.0.1:{free_port()}", "--metrics-listen", f"127.0.0.1:{free_port()}",
                          "--otlp-endpoint", "https://collector:4318"], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "--otlp-endpoint" in out.stderr, out.stderr
