"""e2e: the README's first command shows an allowed, a denied and a rate-limited call."""

import os
import subprocess

import pytest
from conftest import ROOT, free_port


@pytest.mark.timeout(1200)
def test_e2e_quickstart_shows_allowed_denied_and_rate_limited_calls():
    env = {**os.environ, "TOLLGATE_DEMO_EXIT": "1", "SERVER_PORT": str(free_port()),
           "PROXY_PORT": str(free_port()), "ADMIN_PORT": str(free_port())}
    out = subprocess.run([str(ROOT / "examples" / "quickstart.sh")], capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "allowed  read_file" in out.stdout
    assert "DENIED   delete_repository{'name': 'prod'}: Denied by policy: Repository deletion is not permitted" in out.stdout
    assert "DENIED   create_issue{'title': 'bug 4'}: Denied by policy: Hourly limit of 3 new issues reached" in out.stdout
    assert '"decision":"deny"' in out.stdout


def test_quickstart_installs_only_the_python_sdk_at_the_suites_version():
    """The demo needs no cluster: it must not run tests/setup.sh (which builds one), and its one
    peer is the SDK version the suites test against."""
    script = (ROOT / "examples" / "quickstart.sh").read_text()
    assert "tests/setup.sh" not in script
    pins = [
        {line.split("==")[0]: line.split("==")[1] for line in (ROOT / path).read_text().splitlines() if "==" in line}
        for path in ("examples/requirements.txt", "tests/requirements.txt")
    ]
    assert list(pins[0]) == ["mcp"], pins[0]
    assert pins[0]["mcp"] == pins[1]["mcp"], pins
