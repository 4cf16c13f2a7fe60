"""e2e: the proxy's own behaviour over raw HTTP: batches, headers, bounds and errors, identity,
fail-closed policy loading and reloads, and draining on SIGTERM."""

import json
import signal
import threading
import time

import httpx
import jwt
import pytest
from conftest import SAMPLE_POLICY, free_port
from cryptography.hazmat.primitives.asymmetric import rsa

from rpc import HEADERS, call, messages, modern_call, open_session, rpc


def test_e2e_batch_messages_are_each_decided_on_their_own(sample_server, proxy):
    # Today's servers refuse batches (removed in 2025-06-18); the proxy still decides each
    # message, answers the denied ones itself and forwards the rest with the server's answer.
    srv = sample_server("--json")
    px = proxy(srv.url, SAMPLE_POLICY)
    h = open_session(f"{px.url}/mcp", "2025-03-26")
    r = httpx.post(f"{px.url}/mcp", headers=h, json=[call(1, "read_file", {"path": "x"}), call(2, "delete_repository", {"name": "x"}), rpc(3, "ping")])
    got = messages(r)
    denied = [m for m in got if m.get("id") == 2]
    assert denied and denied[0]["error"]["data"]["rule"] == "never", got
    server_said = [m for m in got if m.get("id") != 2]
    assert server_said, "the server's own answer to the forwarded part is kept"
    assert "delete_repository" not in srv.proc.log.read_text()


def test_e2e_a_batch_of_only_denied_calls_is_answered_without_the_server(sample_server, proxy):
    srv = sample_server()
    px = proxy(srv.url, SAMPLE_POLICY)
    r = httpx.post(f"{px.url}/mcp", headers=HEADERS, json=[call(1, "delete_repository"), call(2, "transfer_repository")])
    assert r.status_code == 200
    assert [m["error"]["data"]["rule"] for m in r.json()] == ["never", "(hidden)"]


def test_e2e_a_tools_call_sent_as_a_notification_is_refused_allowed_or_not(sample_server, proxy):
    srv = sample_server()
    px = proxy(srv.url, SAMPLE_POLICY)
    # MCP defines tools/call as a request: without an id it is no message Tollgate can place.
    for tool in ["delete_repository", "read_file"]:
        r = httpx.post(f"{px.url}/mcp", headers=HEADERS, json={"jsonrpc": "2.0", "method": "tools/call", "params": {"name": tool, "arguments": {"name": "x", "path": "x"}}})
        assert r.status_code == 400 and r.json()["error"]["code"] == -32601, r.text
        assert "tools/call is a request" in r.json()["error"]["message"]
    assert "deleted" not in srv.proc.log.read_text()


def test_e2e_deny_as_tool_result_answers_with_is_error(sample_server, proxy):
    srv = sample_server("--json")
    px = proxy(srv.url, "version: '1'\ndefault: allow\ntools: {}\n---\napiVersion: tollgate.dev/v1alpha1\nkind: McpPolicy\nmetadata: {name: p}\nspec:\n  default: allow\n  denyAs: toolResult\n  tools:\n    delete_repository: { rules: [ { name: never, action: deny, onDeny: no } ] }\n")
    h = open_session(f"{px.url}/mcp")
    [m] = messages(httpx.post(f"{px.url}/mcp", headers=h, json=call(7, "delete_repository", {"name": "x"})))
    assert m["id"] == 7 and m["result"]["isError"] is True
    assert m["result"]["content"][0]["text"] == "Denied by policy: no"
    assert "resultType" not in m["result"]
    body, modern = modern_call(8, "delete_repository", {"name": "x"})
    [m] = messages(httpx.post(f"{px.url}/mcp", headers=modern, json=body))
    assert m["result"]["resultType"] == "complete", "2026-07-28 results name their type"


NAMING_POLICY = """
apiVersion: tollgate.dev/v1alpha1
kind: McpPolicy
metadata: { name: kinds }
spec:
  default: allow
  tools:
    "resource:secret://*": { rules: [ { name: no secrets, action: deny } ] }
    "prompt:admin_*": { rules: [ { name: operators only, action: deny } ] }
"""


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
def test_e2e_resources_and_prompts_are_decided_when_a_policy_names_them(sample_server, proxy, mode):
    import anyio
    from mcp.client.client import Client
    from mcp.shared.exceptions import MCPError

    srv = sample_server()
    px = proxy(srv.url, NAMING_POLICY)

    async def run():
        out = {}
        async with Client(f"{px.url}/mcp", mode=mode) as c:
            out["config"] = (await c.read_resource("config://app")).contents[0].text
            out["summary"] = (await c.get_prompt("summarize", {"text": "hi"})).messages[0].content.text
            for key, fn in [("secret", lambda: c.read_resource("secret://database")), ("admin", lambda: c.get_prompt("admin_reset"))]:
                try:
                    await fn()
                    out[key] = None
                except MCPError as e:
                    out[key] = e.error.data["rule"]
        return out

    out = anyio.run(run)
    assert out == {"config": "debug=false", "summary": "Summarize: hi", "secret": "no secrets", "admin": "operators only"}
    assert {a["method"] for a in px.audit() if a["decision"] == "deny"} == {"resources/read", "prompts/get"}


def test_e2e_requests_without_json_rpc_pass_through_unchanged(sample_server, proxy):
    srv = sample_server()
    px = proxy(srv.url, SAMPLE_POLICY)
    direct = httpx.get(f"{srv.url}/.well-known/oauth-protected-resource")
    through = httpx.get(f"{px.url}/.well-known/oauth-protected-resource")
    assert through.status_code == direct.status_code
    assert through.content == direct.content

def test_e2e_a_body_that_is_not_json_rpc_passes_only_on_a_path_the_user_named(sample_server, proxy):
    srv = sample_server()
    form = {"content-type": "application/x-www-form-urlencoded"}
    px = proxy(srv.url, SAMPLE_POLICY)
    r = httpx.post(f"{px.url}/oauth/token", content=b"name=value", headers=form)
    assert (r.status_code, r.json()["error"]["code"]) == (400, -32700), r.text
    assert "one JSON-RPC message or batch" in r.json()["error"]["message"]
    px = proxy(srv.url, SAMPLE_POLICY, "--passthrough-paths", "/oauth/*,/exact")
    direct = httpx.post(f"{srv.url}/oauth/token", content=b"name=value", headers=form)
    for path in ["/oauth/token", "/exact"]:
        r = httpx.post(f"{px.url}{path}", content=b"name=value", headers=form)
        assert r.status_code == direct.status_code != 400, r.text
    r = httpx.post(f"{px.url}/exact/more", content=b"name=value", headers=form)
    assert r.status_code == 400, "an exact path names only itself"
    # A policy can name the path too, as the flag does.
    named = SAMPLE_POLICY.replace("spec:\n", "spec:\n  passthroughPaths: [/oauth/*]\n", 1)
    assert "passthroughPaths" in named
    px = proxy(srv.url, named)
    r = httpx.post(f"{px.url}/oauth/token", content=b"name=value", headers=form)
    assert r.status_code == direct.status_code != 400, r.text
    r = httpx.post(f"{px.url}/mcp", content=b"name=value", headers=form)
    assert r.status_code == 400, "other paths are still read as JSON-RPC"


def test_e2e_bad_input_gets_a_clear_json_rpc_error(sample_server, proxy):
    srv = sample_server()
    px = proxy(srv.url, SAMPLE_POLICY, "--max-body-bytes", "1024")
    url = f"{px.url}/mcp"
    r = httpx.post(url, headers=HEADERS, content=b"{not json")
    assert (r.status_code, r.json()["error"]["code"]) == (400, -32700)
    r = httpx.post(url, headers=HEADERS, json={"id": 1, "method": "tools/call"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, -32600)
    r = httpx.post(url, headers=HEADERS, json=[])
    assert (r.status_code, r.json()["error"]["code"]) == (400, -32600)
    r = httpx.post(url, headers=HEADERS, json=call(1, "read_file", {"path": "x" * 4096}))
    assert r.status_code == 413 and "1024 byte limit" in r.json()["error"]["message"]
    r = httpx.post(url, headers=HEADERS, json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"arguments": {}}})
    assert r.json()["error"]["code"] == -32602 and "name" in r.json()["error"]["message"]


def test_e2e_arguments_with_a_key_twice_are_refused_before_the_server_sees_them(sample_server, proxy):
    # Python's json (the SDK's) keeps the last copy; a first-wins server would charge 90000.
    srv = sample_server()
    px = proxy(srv.url, SAMPLE_POLICY)
    url = f"{px.url}/mcp"
    h = open_session(url)
    body = '{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"create_charge",' \
        '"arguments":{"amount":90000,"currency":"usd","amount":100}}}'
    r = httpx.post(url, headers=h, content=body.encode())
    assert r.status_code == 400
    answer = r.json()
    assert answer["error"]["code"] == -32600, answer
    assert 'the key "amount" appears twice' in answer["error"]["message"]
    # The same call written once is decided and run as usual.
    r = httpx.post(url, headers=h, json=call(6, "create_charge", {"amount": 100, "currency": "usd"}))
    (answer,) = messages(r)
    assert "result" in answer and not answer["result"].get("isError"), answer


def test_e2e_an_unreachable_upstream_gets_502_naming_it(proxy):
    dead = f"http://127.0.0.1:{free_port()}"
    px = proxy(dead, SAMPLE_POLICY)
    r = httpx.post(f"{px.url}/mcp", headers=HEADERS, json=call(1, "read_file", {"path": "x"}))
    assert r.status_code == 502
    assert dead.removeprefix("http://") in r.json()["error"]["message"]
    assert px.metric("tollgate_upstream_errors_total") >= 1


def test_e2e_host_is_rewritten_and_the_original_forwarded(sample_server, proxy):
    # The Python SDK refuses a foreign Host; through the proxy it must see its own.
    srv = sample_server()
    px = proxy(srv.url, SAMPLE_POLICY)
    r = httpx.post(f"{px.url}/mcp", headers={**HEADERS, "host": "mcp.example.com"}, json=rpc(0, "initialize", {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}))
    assert r.status_code == 200, r.text


def test_e2e_origins_outside_the_allow_list_get_403(sample_server, proxy):
    srv = sample_server()
    px = proxy(srv.url, SAMPLE_POLICY, "--allowed-origins", "https://agents.example.com")
    bad = httpx.post(f"{px.url}/mcp", headers={**HEADERS, "origin": "https://evil.example.com"}, json=rpc(1, "ping"))
    assert bad.status_code == 403 and "evil.example.com" in bad.json()["error"]["message"]
    # An Origin with a byte that is not ASCII is no absent Origin: the server may read it.
    odd = httpx.post(f"{px.url}/mcp", headers={**HEADERS, "origin": b"https://agents.example.com\xe9"}, json=rpc(1, "ping"))
    assert odd.status_code == 403, odd.text


def test_e2e_stateless_headers_that_contradict_the_body_are_refused(sample_server, proxy):
    srv = sample_server("--stateless", "--json")
    px = proxy(srv.url, SAMPLE_POLICY)
    body, h = modern_call(1, "delete_repository", {"name": "x"})
    r = httpx.post(f"{px.url}/mcp", headers={**h, "mcp-name": "read_file"}, json=body)
    assert r.status_code == 400 and "Mcp-Name header says \"read_file\"" in r.json()["error"]["message"]
    assert r.json()["error"]["code"] == -32020, "HeaderMismatch"
    body, h = modern_call(1, "read_file", {"path": "x"})
    r = httpx.post(f"{px.url}/mcp", headers={**h, "mcp-method": "tools/list"}, json=body)
    assert r.status_code == 400 and "Mcp-Method" in r.json()["error"]["message"]


@pytest.fixture
def keys(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "k1", "alg": "RS256", "use": "sig"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))

    def token(sub, **claims):
        return jwt.encode({"sub": sub, "aud": "tollgate", "iss": "https://issuer.test", "exp": int(time.time()) + 300, **claims}, key, algorithm="RS256", headers={"kid": "k1"})

    return path, token


def as_caller(url: str, token: str | None, msg: dict) -> dict:
    """One JSON-RPC message as the caller a bearer token names (anonymous without one)."""
    h = {**HEADERS, "mcp-protocol-version": "2025-06-18"}
    if token:
        h["authorization"] = f"Bearer {token}"
    return messages(httpx.post(url, headers=h, json=msg))[0]


SUBJECT_POLICY = """
apiVersion: tollgate.dev/v1alpha1
kind: McpPolicy
metadata: { name: admins }
spec:
  subjects: [ { claim: { name: groups, value: admins } }, { serviceAccount: agents/report-bot } ]
  default: deny
  tools:
    read_file: { rules: [] }
    create_issue: { rules: [ { name: per caller, limit: { counter: issues, window: hour, max: 1, scope: identity } } ] }
"""


def test_e2e_verified_tokens_feed_subjects_and_per_identity_counters(sample_server, proxy, keys):
    jwks, token = keys
    srv = sample_server("--stateless", "--json")
    px = proxy(srv.url, SUBJECT_POLICY, "--jwks", str(jwks), "--jwt-issuer", "https://issuer.test", "--jwt-audience", "tollgate",
               "--ungoverned-callers", "allow")
    url = f"{px.url}/mcp"

    def as_(tok, msg):
        return as_caller(url, tok, msg)

    alice = token("alice", groups=["admins"])
    bot = token("system:serviceaccount:agents:report-bot")
    assert "error" in as_(alice, call(1, "delete_repository", {"name": "x"})), "governed: default deny"
    assert "result" in as_(None, call(1, "delete_repository", {"name": "x"})), "anonymous is not governed, and allowed here"
    assert "result" in as_(alice, call(2, "create_issue", {"title": "a"}))
    assert "error" in as_(alice, call(3, "create_issue", {"title": "b"})), "alice's hour is spent"
    assert "result" in as_(bot, call(4, "create_issue", {"title": "c"})), "the bot counts separately"
    bad = httpx.post(url, headers={**HEADERS, "authorization": "Bearer not.a.token"}, json=rpc(1, "ping"))
    assert bad.status_code == 401 and bad.headers["www-authenticate"].startswith("Bearer error=\"invalid_token\"")
    wrong_aud = jwt.encode({"sub": "x", "aud": "other", "exp": int(time.time()) + 60}, "k" * 32, algorithm="HS256")
    assert httpx.post(url, headers={**HEADERS, "authorization": f"Bearer {wrong_aud}"}, json=rpc(1, "ping")).status_code == 401


def test_e2e_callers_no_policy_governs_are_denied_unless_the_proxy_is_told_otherwise(sample_server, proxy, keys):
    jwks, token = keys
    srv = sample_server("--stateless", "--json")
    # The file names whom it governs (default: deny for them) and nothing else: with no flag,
    # every other caller, anonymous included, is denied and sees no tool.
    px = proxy(srv.url, SUBJECT_POLICY, "--jwks", str(jwks), "--jwt-issuer", "https://issuer.test", "--jwt-audience", "tollgate")
    url = f"{px.url}/mcp"

    def as_(tok, msg):
        return as_caller(url, tok, msg)

    for who in [None, token("mallory"), token("eve", groups=["staff"])]:
        for tool in ["read_file", "delete_repository"]:
            m = as_(who, call(1, tool, {"path": "x", "name": "x"}))
            assert m["error"]["data"]["rule"] == "(ungoverned caller)", m
            assert "No policy governs this caller" in m["error"]["data"]["reason"]
        assert as_(who, rpc(2, "tools/list"))["result"]["tools"] == []
    assert "result" in as_(token("alice", groups=["admins"]), call(3, "read_file", {"path": "x"})), "a governed caller is served"
    assert px.audit()[-1]["decision"] == "allow"


def test_e2e_tokens_that_name_no_one_or_are_not_yet_valid_are_refused_saying_why(sample_server, proxy, keys):
    jwks, token = keys
    srv = sample_server("--stateless", "--json")
    px = proxy(srv.url, SUBJECT_POLICY, "--jwks", str(jwks), "--jwt-issuer", "https://issuer.test", "--jwt-audience", "tollgate",
               "--ungoverned-callers", "allow")
    hour = int(time.time()) + 3600
    for tok, why in [
        (token(None), "sub is not a string"),
        (token(""), "sub is empty"),
        (token(7), "sub is not a string (7)"),
        (token("alice", nbf=hour), "Immature"),
        (token("alice", iat=hour), "issued in the future"),
    ]:
        r = httpx.post(f"{px.url}/mcp", headers={**HEADERS, "mcp-protocol-version": "2025-06-18", "authorization": f"Bearer {tok}"},
                       json=call(1, "read_file", {"path": "x"}))
        assert r.status_code == 401, (why, r.status_code, r.text)
        assert why in r.text + r.headers.get("www-authenticate", ""), (why, r.text, r.headers)
    # Within the stated leeway (30 s) a clock that runs a little behind is forgiven.
    ok = token("alice", nbf=int(time.time()) + 10, iat=int(time.time()) + 10)
    r = httpx.post(f"{px.url}/mcp", headers={**HEADERS, "mcp-protocol-version": "2025-06-18", "authorization": f"Bearer {ok}"},
                   json=call(1, "read_file", {"path": "x"}))
    assert r.status_code == 200, r.text


def test_e2e_a_missing_policy_denies_everything_and_is_not_ready(sample_server, proxy):
    srv = sample_server("--json")
    px = proxy(srv.url, None)
    ready = httpx.get(f"{px.admin}/readyz")
    assert ready.status_code == 503 and "cannot read policy file" in ready.text
    [m] = messages(httpx.post(f"{px.url}/mcp", headers=HEADERS, json=call(1, "read_file", {"path": "x"})))
    assert m["error"]["code"] == -32001 and "No policy is loaded" in m["error"]["message"]
    px.policy_path.write_text(SAMPLE_POLICY)
    deadline = time.monotonic() + 5
    while httpx.get(f"{px.admin}/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_e2e_an_invalid_edit_keeps_the_last_good_policy(sample_server, proxy):
    srv = sample_server("--json")
    px = proxy(srv.url, SAMPLE_POLICY)
    h = open_session(f"{px.url}/mcp")
    px.policy_path.write_text(SAMPLE_POLICY.replace("rateLimit: 3/hour", "rateLimit: 3/fortnight"))
    deadline = time.monotonic() + 5
    while px.metric("tollgate_policy_reloads_total", result="failure") < 1:
        assert time.monotonic() < deadline, px.proc.log.read_text()
        time.sleep(0.05)
    assert "rateLimit window must be second, minute, hour or day" in px.proc.log.read_text()
    assert httpx.get(f"{px.admin}/readyz").status_code == 200
    [m] = messages(httpx.post(f"{px.url}/mcp", headers=h, json=call(1, "delete_repository", {"name": "x"})))
    assert m["error"]["data"]["rule"] == "never", "the last good policy still denies"


def test_e2e_policy_edits_take_effect_without_a_restart(sample_server, proxy):
    srv = sample_server("--json")
    px = proxy(srv.url, SAMPLE_POLICY)
    h = open_session(f"{px.url}/mcp")
    [m] = messages(httpx.post(f"{px.url}/mcp", headers=h, json=call(1, "read_file", {"path": "x"})))
    assert "result" in m
    px.policy_path.write_text(SAMPLE_POLICY.replace("read_file: { rules: [] }", "read_file: { rules: [ { name: closed, action: deny } ] }"))
    deadline = time.monotonic() + 5
    while True:
        [m] = messages(httpx.post(f"{px.url}/mcp", headers=h, json=call(2, "read_file", {"path": "x"})))
        if "error" in m:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert m["error"]["data"]["rule"] == "closed"


def test_e2e_sigterm_drains_in_flight_calls(sample_server, proxy):
    srv = sample_server("--json")
    px = proxy(srv.url, "version: '1'\ndefault: allow\ntools: {}\n")
    h = open_session(f"{px.url}/mcp")
    result = {}

    def slow_call():
        r = httpx.post(f"{px.url}/mcp", headers=h, json=call(9, "slow", {"seconds": 1.0}), timeout=10)
        result["msg"] = messages(r)[0]

    t = threading.Thread(target=slow_call)
    t.start()
    time.sleep(0.3)
    px.proc.proc.send_signal(signal.SIGTERM)
    t.join(10)
    assert result["msg"]["result"]["content"][0]["text"] == "slept 1.0s"
    assert px.proc.proc.wait(10) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{px.url}/mcp", headers=h, json=rpc(1, "ping"))


@pytest.mark.parametrize("workers", ["1", "3"])
def test_e2e_the_proxy_decides_the_same_on_one_thread_or_several(sample_server, proxy, workers):
    srv = sample_server("--json")
    px = proxy(srv.url, SAMPLE_POLICY, "--workers", workers)
    h = open_session(f"{px.url}/mcp")
    answers = [messages(httpx.post(f"{px.url}/mcp", headers=h, json=call(i, tool, {"path": "x", "name": "prod"})))[0]
               for i, tool in enumerate(["read_file", "delete_repository"])]
    assert "result" in answers[0] and answers[1]["error"]["data"]["rule"] == "never"


def test_e2e_rate_limits_hold_across_worker_threads(sample_server, proxy):
    # Each httpx.post opens its own connection, and the kernel spreads connections over the
    # workers' listeners: a limit kept per worker would let more than 3 through.
    srv = sample_server("--json")
    px = proxy(srv.url, SAMPLE_POLICY, "--workers", "3")
    h = open_session(f"{px.url}/mcp")
    answers = [messages(httpx.post(f"{px.url}/mcp", headers=h, json=call(i, "create_issue", {"title": f"t{i}"})))[0]
               for i in range(8)]
    assert ["result" in a for a in answers] == [True] * 3 + [False] * 5
