"""Counters shared in Redis: real `redis-server` processes started here (one server, and a
three-node Redis Cluster made with `redis-cli --cluster create`), two real proxies in front of
one recording MCP server, and what ran read from the server's own record, never from what the
proxies said."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import Proc, Procs, free_port
from test_bypass import TRANSPORTS, Channel, envelope, runs, server_flags

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def policy(unavailable: str = "deny") -> str:
    return f"""
apiVersion: tollgate.dev/v1alpha1
kind: McpPolicy
metadata: {{ name: shared, namespace: default }}
spec:
  default: deny
  countersUnavailable: {unavailable}
  tools:
    create_issue:
      rules:
        - name: twenty an hour
          limit: {{ counter: issues, window: hour, max: 20 }}
    create_charge:
      rules:
        - name: a hundred an hour each
          limit: {{ counter: spend, window: hour, max: 100, incrementFrom: args.amount, scope: identity }}
    delete_repository:
      rules:
        - name: while few issues
          conditions: [ {{ path: state.create_issue.issues, op: lt, value: 5 }} ]
    run_query:
      rules:
        - name: two a second
          limit: {{ counter: queries, window: second, max: 2 }}
    read_file: {{ rules: [] }}
"""


@dataclass
class Redis:
    """One redis-server of this test, on loopback."""

    port: int
    dir: Path
    args: list[str]
    procs: Procs
    proc: Proc | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> "Redis":
        self.proc = self.procs.start(f"redis-{self.port}", [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                                                              "--save", "", "--appendonly", "no", "--dir", str(self.dir), *self.args], self.port)
        return self

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.proc.kill()
        self.proc.proc.wait()

    def cli(self, *args: str) -> str:
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        return subprocess.run([REDIS_CLI, "-p", str(self.port), *auth, *args], capture_output=True, text=True, check=True).stdout.strip()

    def commands(self, name: str) -> int:
        """How many times `name` ran since the last CONFIG RESETSTAT (INFO commandstats)."""
        for line in self.cli("info", "commandstats").splitlines():
            if line.startswith(f"cmdstat_{name}:"):
                return int(line.split("calls=")[1].split(",")[0])
        return 0

    def counters(self) -> dict[str, int]:
        """The counters (every counter key holds a `|`; the workload's sequence and loss marker
        do not)."""
        keys = [k for k in self.cli("--scan", "--pattern", "tollgate:*").splitlines() if k and "|" in k]
        return {k: int(self.cli("get", k) or 0) for k in keys}

    def sequences(self) -> dict[str, int]:
        keys = [k for k in self.cli("--scan", "--pattern", "tollgate:*seq").splitlines() if k]
        return {k: int(self.cli("get", k) or 0) for k in keys}


@pytest.fixture
def redis(procs, tmp_path):
    """Starts redis-server processes: redis(*extra_args)."""

    def start(*args: str, password: str | None = None) -> Redis:
        port = free_port()
        d = tmp_path / f"redis-{port}"
        d.mkdir()
        extra = [*args, *(["--requirepass", password] if password else [])]
        return Redis(port, d, extra, procs, password=password).start()

    return start


@pytest.fixture
def redis_cluster(redis):
    """Three masters, no replicas, every slot assigned: their nodes."""
    # The bus port is given: by default it is the port + 10000, and free ports run higher.
    nodes = [redis("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
                   "--cluster-port", str(free_port())) for _ in range(3)]
    subprocess.run([REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes), "--cluster-replicas", "0",
                    "--cluster-yes"], capture_output=True, text=True, check=True)
    deadline = time.monotonic() + 20
    while not all("cluster_state:ok" in n.cli("cluster", "info") for n in nodes):
        assert time.monotonic() < deadline, [n.cli("cluster", "info") for n in nodes]
        time.sleep(0.1)
    return nodes


def away_from_the_hour() -> None:
    """Hour windows are calendar-aligned: a test counting in one must not straddle two."""
    left = 3600 - time.time() % 3600
    if left < 60:
        time.sleep(left + 0.5)


def calls(record: Path, tool: str) -> int:
    return sum(r["tool"] == tool for r in runs(record))


def hammer(channels: list[Channel], bodies: list[bytes], clients: int = 8) -> None:
    """Sends every body, from `clients` threads at once, each body to the next channel."""
    work = list(enumerate(bodies))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                if not work:
                    return
                i, body = work.pop()
            channels[i % len(channels)].post(body)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for ch in channels:
        ch.sync()


@pytest.fixture
def two_proxies(recorder, proxy):
    """Two proxies sharing `counters` flags in front of one recording server, and a channel
    to each over `transport`."""
    opened: list[Channel] = []

    def start(transport: str, counters: list[str], unavailable: str = "deny"):
        url, record = recorder(*server_flags(transport))
        pxs = [proxy(url, policy(unavailable), *counters) for _ in range(2)]
        chs = []
        for px in pxs:
            ch = Channel(px.url, transport, record, through_proxy=True).open()
            ch.proxy = px
            opened.append(ch)
            chs.append(ch)
        return pxs, chs, record

    yield start
    for ch in opened:
        ch.close()


def issue(i: int, tool: str = "create_issue", args: dict | None = None) -> bytes:
    return envelope(json.dumps(i), tool, json.dumps(args if args is not None else {"title": f"t{i}"})).encode()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_two_proxies_share_a_limit_exactly_under_concurrent_calls(redis, two_proxies, transport):
    away_from_the_hour()
    r = redis()
    pxs, chs, record = two_proxies(transport, ["--counters", r.url, "--counters-timeout", "2s"])
    r.cli("config", "resetstat")
    hammer(chs, [issue(100 + i) for i in range(60)])
    hammer(chs, [issue(300 + i, "create_charge", {"amount": 7, "currency": "EUR"}) for i in range(40)])
    # Exactly the limit ran, whichever proxy each call went through.
    assert calls(record, "create_issue") == 20
    assert calls(record, "create_charge") == 14, "100 // 7 charges of 7"
    assert sorted(r.counters().values()) == [20, 98]
    # One round trip per decided call: a script each, nothing else.
    assert r.commands("evalsha") == 100
    assert r.commands("eval") == 0
    denied = sum(px.metric("tollgate_decisions_total", outcome="deny") for px in pxs)
    assert denied == 40 + 26


def test_a_redis_cluster_holds_the_same_limits_in_one_slot_per_workload(redis_cluster, two_proxies):
    away_from_the_hour()
    seeds = ",".join(n.url for n in redis_cluster)
    pxs, chs, record = two_proxies("json", ["--counters", seeds, "--counters-cluster", "--counters-timeout", "2s"])
    hammer(chs, [issue(100 + i) for i in range(50)])
    hammer(chs, [issue(300 + i, "create_charge", {"amount": 30, "currency": "EUR"}) for i in range(10)])
    assert calls(record, "create_issue") == 20
    assert calls(record, "create_charge") == 3
    held = {n.port: n.counters() for n in redis_cluster}
    assert sum(bool(c) for c in held.values()) == 1, f"one workload's counters are in one slot: {held}"
    assert sorted(v for c in held.values() for v in c.values()) == [20, 90]


def test_a_state_condition_reads_what_the_other_proxy_counted(redis, two_proxies):
    away_from_the_hour()
    r = redis()
    (a, b), (cha, chb), record = two_proxies("json", ["--counters", r.url])
    for i in range(4):
        cha.post(issue(i))
    assert "result" in chb.post(issue(10, "delete_repository", {"name": "a"})).json()
    cha.post(issue(5))
    denied = chb.post(issue(11, "delete_repository", {"name": "b"})).json()
    assert "got 5" in denied["error"]["data"]["reason"], denied
    assert calls(record, "delete_repository") == 1


def test_a_call_the_server_refused_gives_its_quota_back_in_redis(redis, two_proxies):
    away_from_the_hour()
    r = redis()
    _, (cha, chb), record = two_proxies("json", ["--counters", r.url])
    # A session the server does not know: its transport answers 404 before any tool runs, so
    # the proxy gives the counts back.
    for i in range(3):
        assert cha.post(issue(i), headers={**cha.headers, "mcp-session-id": f"no-such-{i}"}).status_code == 404
    # The rollback is sent once the answer is read; it is in Redis before the next call.
    deadline = time.monotonic() + 5
    while r.counters() and max(r.counters().values()) != 0:
        assert time.monotonic() < deadline, r.counters()
        time.sleep(0.05)
    for i in range(20):
        (cha if i % 2 else chb).post(issue(10 + i))
    assert "twenty an hour" in chb.post(issue(99)).text
    assert calls(record, "create_issue") == 20


def test_counters_expire_with_their_window_in_redis(redis, two_proxies, tmp_path):
    r = redis(password="s3cret")
    secret = tmp_path / "redis-password"
    secret.write_text("s3cret\n")
    (a, b), (cha, chb), record = two_proxies("json", ["--counters", r.url, "--counters-password-file", str(secret)])
    for attempt in range(3):
        # Three calls inside one second: two run, whichever proxy they went through.
        time.sleep(1 - time.time() % 1 + 0.02)
        before = calls(record, "run_query")
        texts = [ch.post(issue(20 + i, "run_query", {"sql": "select 1"})).text for i, ch in enumerate([cha, chb, cha])]
        if time.time() % 1 > 0.9:
            continue  # the machine was too slow to keep them in one second; try again
        assert calls(record, "run_query") - before == 2, texts
        assert "two a second" in texts[2]
        break
    else:
        pytest.fail("three calls never fit in one second")
    key = next(k for k in r.counters() if "queries" in k)
    assert 0 < int(r.cli("pttl", key)) <= 1000, "the key expires when its second ends"
    time.sleep(1.1)
    assert r.cli("exists", key) == "0"
    assert "result" in chb.post(issue(30, "run_query", {"sql": "select 2"})).json()


@pytest.mark.parametrize("loss", ["flushall", "restart without persistence"])
def test_counts_the_store_loses_mid_window_refuse_that_window_until_it_ends(redis, two_proxies, loss):
    away_from_the_hour()
    r = redis()
    _, (cha, chb), record = two_proxies("json", ["--counters", r.url])
    for i in range(5):
        assert "result" in (cha if i % 2 else chb).post(issue(i)).json()
    assert list(r.sequences().values()) == [5], "every reservation bumps the workload's sequence"
    if loss == "flushall":
        r.cli("flushall")
    else:
        r.stop()
        r.start()
    # Counting again from zero would let 20 more run this hour: every call that counts in a
    # window the store lost is refused, from either proxy, until the window ends.
    def answer(ch, i: int) -> dict:
        # A restarted Redis breaks the proxies' connections: until they reconnect (within a
        # couple of seconds) a call is refused as "counters unavailable", which is not the point.
        deadline = time.monotonic() + 10
        while True:
            m = ch.post(issue(i)).json()
            if m.get("error", {}).get("data", {}).get("rule") != "(counters unavailable)" or time.monotonic() > deadline:
                return m
            time.sleep(0.2)

    for i in range(6):
        denied = answer(cha if i % 2 else chb, 10 + i)
        assert denied["error"]["data"]["rule"] == "(counters lost)", denied
        assert "lost counts of this hour" in denied["error"]["data"]["reason"]
    assert calls(record, "create_issue") == 5
    # A call that counts nothing is not affected, and a window that begins after the loss
    # counts again: run_query's second has rolled over.
    assert "result" in cha.post(issue(30, "read_file", {"path": "x"})).json()
    time.sleep(1.1)
    assert "result" in chb.post(issue(31, "run_query", {"sql": "select 1"})).json()
    assert cha.proxy.metric("tollgate_counter_store_errors_total", reason="lost_window") >= 1


def test_a_wrong_redis_password_denies_and_says_so(redis, proxy, recorder, tmp_path):
    r = redis(password="right")
    secret = tmp_path / "redis-password"
    secret.write_text("wrong")
    url, record = recorder("--json")
    px = proxy(url, policy(), "--counters", r.url, "--counters-password-file", str(secret))
    ch = Channel(px.url, "json", record, through_proxy=True).open()
    answer = ch.post(issue(1)).json()
    assert answer["error"]["data"]["rule"] == "(counters unavailable)", answer
    assert "unavailable" in httpx.get(f"{px.admin}/readyz").text
    assert calls(record, "create_issue") == 0
    ch.close()


@pytest.mark.parametrize("unavailable", ["deny", "local"])
def test_redis_stopped_and_restarted_mid_run(redis, two_proxies, unavailable):
    away_from_the_hour()
    r = redis()
    (a, b), (cha, chb), record = two_proxies("json", ["--counters", r.url, "--counters-timeout", "200ms"], unavailable)
    for i in range(3):
        assert "result" in cha.post(issue(i)).json()
    r.stop()
    answers = [ch.post(issue(10 + i)).json() for i, ch in enumerate([cha, chb, cha, chb])]
    # A call that needs no counter is not affected.
    assert "result" in cha.post(issue(50, "read_file", {"path": "/x"})).json()
    ready = httpx.get(f"{a.admin}/readyz")
    assert ready.status_code == 200 and "unavailable" in ready.text, ready.text
    if unavailable == "deny":
        assert all(x["error"]["data"]["rule"] == "(counters unavailable)" for x in answers), answers
        assert "denies the calls that need them" in answers[0]["error"]["data"]["reason"]
        assert calls(record, "create_issue") == 3
        assert a.metric("tollgate_counter_store_fallback_total", action="deny") >= 1
    else:
        assert all("result" in x for x in answers), answers
        assert calls(record, "create_issue") == 7
        assert a.metric("tollgate_counter_store_fallback_total", action="local") >= 1
    assert a.metric("tollgate_counter_store_up") == 0
    r.start()
    deadline = time.monotonic() + 10
    for px in (a, b):
        while "available" not in httpx.get(f"{px.admin}/readyz").text.split("counters:")[1] or \
                "unavailable" in httpx.get(f"{px.admin}/readyz").text:
            assert time.monotonic() < deadline, httpx.get(f"{px.admin}/readyz").text
            time.sleep(0.05)
        assert px.metric("tollgate_counter_store_up") == 1
    # Counting is in Redis again (which lost its counts with its memory: no persistence here).
    for i in range(2):
        assert "result" in chb.post(issue(60 + i)).json()
    assert list(r.counters().values()) == [2]


def test_a_redis_that_answers_too_slowly_times_out_and_the_policy_decides(redis, two_proxies):
    away_from_the_hour()
    r = redis("--enable-debug-command", "yes")
    (a, _), (cha, _), record = two_proxies("json", ["--counters", r.url, "--counters-timeout", "100ms"])
    assert "result" in cha.post(issue(1)).json()
    sleeper = threading.Thread(target=lambda: r.cli("debug", "sleep", "1.5"))
    sleeper.start()
    time.sleep(0.2)
    started = time.monotonic()
    answer = cha.post(issue(2)).json()
    waited = time.monotonic() - started
    assert "no answer within 100ms" in answer["error"]["data"]["reason"], answer
    assert waited < 1.0, "the call waited for the timeout, not for Redis"
    assert a.metric("tollgate_counter_store_errors_total", reason="timeout") == 1
    sleeper.join()
    deadline = time.monotonic() + 10
    while "unavailable" in httpx.get(f"{a.admin}/readyz").text:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "result" in cha.post(issue(3)).json()
    assert calls(record, "create_issue") == 2


def test_rediss_with_the_servers_own_ca_shares_the_limit(redis, two_proxies, tmp_path):
    away_from_the_hour()
    pki = tmp_path / "pki"
    pki.mkdir()
    openssl = lambda *a: subprocess.run(["openssl", *a], cwd=pki, capture_output=True, check=True)  # noqa: E731
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test redis CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "redis.key", "-out", "redis.csr", "-subj", "/CN=redis")
    (pki / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "redis.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "redis.pem",
            "-days", "1", "-extfile", "san.cnf")
    tls = free_port()
    r = redis("--tls-port", str(tls), "--tls-cert-file", str(pki / "redis.pem"), "--tls-key-file", str(pki / "redis.key"),
              "--tls-ca-cert-file", str(pki / "ca.pem"), "--tls-auth-clients", "no")
    pxs, chs, record = two_proxies("json", ["--counters", f"rediss://127.0.0.1:{tls}", "--counters-ca-file", str(pki / "ca.pem"),
                                            "--counters-timeout", "2s"])
    hammer(chs, [issue(100 + i) for i in range(30)], clients=4)
    assert calls(record, "create_issue") == 20
    assert list(r.counters().values()) == [20]
    # Without the CA, the server's certificate is not trusted: calls that need a counter are
    # denied, and nothing more is counted.
    _, (untrusted, _), _ = two_proxies("json", ["--counters", f"rediss://127.0.0.1:{tls}"])
    answer = untrusted.post(issue(1)).json()
    assert answer["error"]["data"]["rule"] == "(counters unavailable)", answer
    assert list(r.counters().values()) == [20]
