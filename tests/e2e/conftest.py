"""Shared fixtures: the real `tollgate` binary, real MCP servers, free ports, clean teardown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
NODE = TESTS / "node_modules" / ".bin" / "node"
EVERYTHING = TESTS / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
CONFORMANCE = TESTS / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
SAMPLE = ROOT / "examples" / "sample_server.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout}s:\n{log.read_text()[-4000:]}")


@dataclass
class Proc:
    proc: subprocess.Popen
    log: Path
    out: Path | None = None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Procs:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.all: list[Proc] = []

    def start(self, name: str, argv: list[str], port: int, env: dict | None = None, stdout: bool = False) -> Proc:
        log = self.tmp / f"{name}.log"
        out = self.tmp / f"{name}.out" if stdout else None
        proc = subprocess.Popen(
            argv,
            stdout=open(out, "wb") if out else open(log, "ab"),
            stderr=open(log, "ab"),
            env={**os.environ, **(env or {})},
            cwd=ROOT,
        )
        p = Proc(proc, log, out)
        self.all.append(p)
        wait_for_port(port, proc, log)
        return p

    def stop_all(self) -> None:
        for p in reversed(self.all):
            p.stop()


@pytest.fixture(scope="session")
def debug_bins() -> Path:
    """The real binaries (the sidecar's `tollgate` and `tollgate-operator`), built once per run.

    Every suite builds this one package selection: cargo unifies features per selection, so a
    second selection would compile the dependency tree again, in time and in disk."""
    subprocess.run(["cargo", "build", "-q", "-p", "tollgate-operator", "-p", "tollgate-sidecar"], cwd=ROOT, check=True)
    return ROOT / "target" / "debug"


@pytest.fixture(scope="session")
def tollgate_bin(debug_bins) -> Path:
    # TOLLGATE_BIN runs the suites against another build (an older release, say).
    return Path(os.environ.get("TOLLGATE_BIN") or debug_bins / "tollgate")


@pytest.fixture
def procs(tmp_path):
    p = Procs(tmp_path)
    yield p
    p.stop_all()


@dataclass
class Server:
    url: str  # base URL, e.g. http://127.0.0.1:PORT
    port: int
    proc: Proc


@pytest.fixture
def sample_server(procs):
    """Starts the Python SDK 2.x sample server: sample_server('--json'), ('--transport', 'sse'), …"""

    def start(*flags: str) -> Server:
        port = free_port()
        p = procs.start(f"sample-{port}", [sys.executable, str(SAMPLE), "--port", str(port), *flags], port)
        return Server(f"http://127.0.0.1:{port}", port, p)

    return start


@pytest.fixture
def everything_server(procs):
    """Starts @modelcontextprotocol/server-everything: everything_server('streamableHttp' | 'sse')."""

    def start(transport: str = "streamableHttp") -> Server:
        port = free_port()
        p = procs.start(f"everything-{port}", [str(NODE), str(EVERYTHING), transport], port, env={"PORT": str(port)})
        return Server(f"http://127.0.0.1:{port}", port, p)

    return start


@dataclass
class Proxy:
    url: str
    admin: str
    port: int
    policy_path: Path
    proc: Proc

    def audit(self) -> list[dict]:
        """Audit lines written so far (the proxy writes them within a few milliseconds)."""
        time.sleep(0.1)
        text = self.proc.out.read_text() if self.proc.out and self.proc.out.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.admin}/metrics").text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total


@pytest.fixture
def proxy(procs, tollgate_bin, tmp_path):
    """Starts `tollgate proxy` in front of an upstream with a policy given as text."""

    def start(upstream: str, policy: str | None, *flags: str, wait_ready: bool = True, port: int | None = None) -> Proxy:
        port, admin = port or free_port(), free_port()
        policy_path = tmp_path / f"policy-{port}.yaml"
        if policy is not None:
            policy_path.write_text(policy)
        argv = [
            str(tollgate_bin), "proxy", "--upstream", upstream, "--policy", str(policy_path),
            "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{admin}",
            "--policy-poll", "100ms", *flags,
        ]
        p = procs.start(f"proxy-{port}", argv, port, stdout=True)
        wait_for_port(admin, p.proc, p.log)
        px = Proxy(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}", port, policy_path, p)
        if wait_ready and policy is not None:
            deadline = time.monotonic() + 10
            while httpx.get(f"{px.admin}/readyz").status_code != 200:
                assert time.monotonic() < deadline, p.log.read_text()
                time.sleep(0.05)
        return px

    return start


SAMPLE_POLICY = (ROOT / "examples" / "policy.yaml").read_text()
RECORDER = ROOT / "tests" / "e2e" / "recording_server.py"


@pytest.fixture
def recorder(procs, tmp_path):
    """Starts recording_server.py: (its URL, the file it writes each tool run to)."""

    def start(*flags: str) -> tuple[str, Path]:
        port = free_port()
        record = tmp_path / f"runs-{port}.jsonl"
        procs.start(f"recorder-{port}", [sys.executable, str(RECORDER), "--port", str(port), "--record", str(record), *flags], port)
        return f"http://127.0.0.1:{port}", record

    return start


@pytest.fixture
def json_sink():
    """An HTTP server here that keeps every JSON body POSTed to it (a webhook's receiver):
    yields (its URL, the list of bodies)."""
    import http.server
    import threading

    got: list[dict] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", got
    finally:
        server.shutdown()


# What suites say of themselves (how long a cluster took, what it started), printed at the end.
REPORTS: list[tuple[str, str]] = []


def report(suite: str, line: str) -> None:
    REPORTS.append((suite, line))


def pytest_terminal_summary(terminalreporter):
    for suite, line in REPORTS:
        terminalreporter.write_line(f"{suite}: {line}")
