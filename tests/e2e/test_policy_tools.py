"""e2e: the tools people change policies with. `tollgate test` runs the project's own test
files and the examples' (exit codes and JUnit as a pipeline reads them), and `tollgate replay`
decides a real proxy's audit log again under a changed policy."""

import json
import re
import subprocess
import xml.etree.ElementTree as ET

from conftest import ROOT, SAMPLE_POLICY
from mcp_client import session


def run(tollgate_bin, *args, stdin=None):
    return subprocess.run([str(tollgate_bin), *args], capture_output=True, text=True, input=stdin, cwd=ROOT, timeout=60)


def test_tollgate_test_passes_the_examples_and_the_projects_own_test_files(tollgate_bin, tmp_path):
    junit = tmp_path / "junit.xml"
    r = run(tollgate_bin, "test", "examples", "tests/policy", "--junit", str(junit))
    assert r.returncode == 0, r.stdout + r.stderr
    files = [line for line in r.stdout.splitlines() if line.startswith("ok")]
    assert len(files) == 5, r.stdout
    root = ET.parse(junit).getroot()
    assert root.get("failures") == "0" and root.get("errors") == "0"
    cases = root.findall("./testsuite/testcase")
    assert len(cases) == int(root.get("tests")) >= 30
    assert all(c.find("failure") is None for c in cases)


def test_a_wrong_expectation_fails_with_exit_1_naming_the_step(tollgate_bin, tmp_path):
    (tmp_path / "p.yaml").write_text(SAMPLE_POLICY)
    (tmp_path / "limits.tollgate-test.yaml").write_text("""
policies: [p.yaml]
cases:
  - name: three issues an hour
    steps:
      - call: create_issue
        repeat: 4
        expect: {decision: allow}
  - name: reads are allowed
    steps:
      - call: read_file
        expect: {decision: allow}
""")
    junit = tmp_path / "junit.xml"
    r = run(tollgate_bin, "test", str(tmp_path), "--junit", str(junit), "-v")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "--- FAIL: limits.tollgate-test.yaml/three issues an hour" in r.stdout.replace(str(tmp_path) + "/", "")
    assert ("step 1 (4 of 4), call create_issue: want allow, got deny by rule \"hourly issue limit\""
            in r.stdout), r.stdout
    assert "--- PASS: " in r.stdout and "1 of 2 cases failed" in r.stdout
    failure = ET.parse(junit).getroot().find("./testsuite/testcase/failure")
    assert failure is not None and "4 of 4" in failure.get("message")


def test_a_file_that_cannot_run_exits_2_and_says_why(tollgate_bin, tmp_path):
    bad = tmp_path / "bad.tollgate-test.yaml"
    bad.write_text("policies: [missing.yaml]\ncases:\n  - name: x\n    steps: [{wait: 1s}]\n")
    r = run(tollgate_bin, "test", str(bad))
    assert r.returncode == 2 and "missing.yaml: cannot read" in r.stdout, r.stdout
    bad.write_text("policies: [missing.yaml]\ncases: []\n")
    r = run(tollgate_bin, "test", str(bad))
    assert r.returncode == 2 and "a test file has at least one case" in r.stdout, r.stdout
    # A filter that matches no case runs nothing, which a pipeline must not read as a pass.
    r = run(tollgate_bin, "test", "examples", "--run", "no such case")
    assert r.returncode == 2 and 'no case\'s name contains "no such case"' in r.stderr, r.stderr
    # A step that says a call's reason where its expectation goes would test nothing.
    bad.write_text("policies: [p.yaml]\ncases:\n  - name: x\n    steps:\n      - {call: a, reason: x}\n")
    r = run(tollgate_bin, "test", str(bad))
    assert r.returncode == 2 and "by and reason belong to an approval step" in r.stdout, r.stdout
    bad.write_text("policies: [p.yaml]\ncases:\n  - name: x\n    steps:\n      - {call: a, wait: 1m}\n")
    r = run(tollgate_bin, "test", str(bad))
    assert r.returncode == 2 and "cases[0].steps[0]: a step has exactly one of" in r.stdout, r.stdout
    bad.write_text("policies: [p.yaml]\ncases:\n  - name: x\n    stepz: []\n")
    r = run(tollgate_bin, "test", str(bad))
    assert r.returncode == 2 and "unknown field `stepz`" in r.stdout, r.stdout
    r = run(tollgate_bin, "test", str(tmp_path / "nothing-here"))
    assert r.returncode == 2


def logging(policy: str, paths: str) -> str:
    """The sample policy, asking the audit log to keep these argument paths."""
    return policy.replace("spec:\n", f"spec:\n  audit: {{arguments: [{paths}]}}\n", 1)


def test_replay_of_a_real_proxys_audit_log_shows_what_a_stricter_policy_changes(sample_server, proxy, tollgate_bin, tmp_path):
    srv = sample_server()
    px = proxy(srv.url, logging(SAMPLE_POLICY, "args.amount, args.currency"))
    session(f"{px.url}/mcp", "legacy", [
        ("create_issue", {"title": "a"}),
        ("create_issue", {"title": "b"}),
        ("create_issue", {"title": "c"}),
        ("create_charge", {"amount": 1200, "currency": "eur"}),
        ("create_charge", {"amount": 300, "currency": "usd"}),
        ("read_file", {"path": "/etc/motd"}),
        ("delete_repository", {"name": "prod"}),
        ("create_charge", {"amount": 100}),
    ])
    lines = px.audit()
    charges = [a for a in lines if a.get("tool") == "create_charge"]
    # Only the paths the policy names are kept; the others (title, path) never are, and a path
    # the call lacks is logged as absent, so a replay can tell it from one nobody logged.
    assert [a["arguments"] for a in charges] == [
        {"args.amount": 1200, "args.currency": "eur"}, {"args.amount": 300, "args.currency": "usd"},
        {"args.amount": 100}]
    assert charges[2]["absentArguments"] == ["args.currency"] and charges[2]["decision"] == "deny"
    assert all("arguments" in a for a in lines if a.get("kind") == "decision")
    assert all(set(a["arguments"]) <= {"args.amount", "args.currency"} for a in lines if "arguments" in a)
    log = tmp_path / "audit.log"
    # As `kubectl logs --prefix` writes it: text before each line.
    log.write_text("".join(f"[pod/mcp-0/tollgate-proxy] {json.dumps(a)}\n" for a in lines) + "not json\n")

    stricter = tmp_path / "stricter.yaml"
    stricter.write_text(SAMPLE_POLICY
                        .replace("rateLimit: 3/hour", "rateLimit: 2/hour")
                        .replace("max: 100000", "max: 1000")
                        .replace("read_file: { rules: [] }",
                                 "read_file: { rules: [ { name: no etc, action: deny, conditions: [ { path: args.path, op: contains, value: /etc } ] } ] }"))
    r = run(tollgate_bin, "replay", str(log), "--policy", str(stricter), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["calls"] == 8 and report["otherLines"] == 1, report
    changes = {(c["tool"], c["from"], c["to"], c["rule"]): c["calls"] for c in report["changes"]}
    assert changes == {
        ("create_issue", "allow", "deny", "hourly issue limit"): 1,
        ("create_charge", "allow", "deny", "daily spend cap"): 1,
    }, report
    # read_file's new rule reads args.path, which the log never held: not guessed.
    assert report["unknown"] == 1
    assert report["missing"] == [{"tool": "read_file", "paths": ["args.path"], "calls": 1}]
    assert report["unchanged"] == 5 and report["changed"] == 2

    table = run(tollgate_bin, "replay", "-", "--policy", str(stricter), stdin=log.read_text())
    assert table.returncode == 0, table.stderr
    assert "changed 2   unknown 1" in table.stdout and "assumed: each pod counts its own calls" in table.stdout
    assert re.search(r"create_issue +allow +deny +hourly issue limit +1", table.stdout), table.stdout
    assert re.search(r"read_file +args\.path +1", table.stdout), table.stdout

    # The same log under the policy it was made with changes nothing.
    same = tmp_path / "same.yaml"
    same.write_text(SAMPLE_POLICY)
    report = json.loads(run(tollgate_bin, "replay", str(log), "--policy", str(same), "--json").stdout)
    assert report["changed"] == 0 and report["unknown"] == 0 and report["unchanged"] == 8, report


def test_audit_arguments_args_logs_every_argument_and_an_argument_named_args_is_only_itself(sample_server, proxy, tollgate_bin, tmp_path):
    srv = sample_server()
    px = proxy(srv.url, logging(SAMPLE_POLICY, "args"))
    sneaky = {"amount": 70000, "currency": "usd", "args": {"amount": 1}}
    seen = session(f"{px.url}/mcp", "legacy", [("create_charge", sneaky)])
    assert seen["calls"][0][0] == "denied"
    [line] = [a for a in px.audit() if a.get("tool") == "create_charge"]
    assert line["arguments"] == {"args": sneaky}, line
    log = tmp_path / "audit.log"
    log.write_text("".join(json.dumps(a) + "\n" for a in px.audit()))
    same = tmp_path / "same.yaml"
    same.write_text(SAMPLE_POLICY)
    report = json.loads(run(tollgate_bin, "replay", str(log), "--policy", str(same), "--json").stdout)
    assert report["changed"] == 0 and report["unchanged"] == 1, report
