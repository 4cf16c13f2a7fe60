//! The pipeline in process: a real [`Proxy`] with a policy, its counters, audit log and
//! approvals, in front of an upstream double (hyper's HTTP/1 server on a real socket) that
//! records every JSON-RPC message it is sent. Each test asserts what the client got and what
//! the server saw.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tollgate_api::{DefaultAction, EffectivePolicy, load_file};

use super::{Proxy, ProxyConfig};
use crate::approvals::{Approvals, Backend, Phase};
use crate::http::deadline::Timeouts;
use crate::http::server::RequestBody;
use crate::policy::PolicyHandle;
use crate::telemetry::audit::{AuditLog, Overflow};
use crate::telemetry::metrics::Metrics;

const POLICY: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: McpPolicy
metadata: { name: shop, namespace: test }
spec:
  default: deny
  tools:
    read: { rules: [] }
    slow: { rules: [] }
    delete:
      rules: [ { name: never, action: deny, onDeny: Deletion is not permitted } ]
    once:
      rules: [ { name: one a minute, rateLimit: 1/minute, onDeny: Once a minute } ]
    rejected:
      rules: [ { name: one a minute, rateLimit: 1/minute, onDeny: Once a minute } ]
    fails:
      rules: [ { name: one a minute, rateLimit: 1/minute, onDeny: Once a minute } ]
    bucket:
      rules:
        - name: a person decides
          action: approve
          approval: { timeout: 10s, validFor: 1m }
"#;

/// What the upstream double does with a `tools/call`, by tool name.
#[derive(Default)]
struct Upstream {
    /// Every message it was sent, as `method` or `method tool`.
    seen: Mutex<Vec<String>>,
    /// Held until notified: a call to `slow`.
    release: Notify,
}

impl Upstream {
    async fn start() -> (Arc<Upstream>, SocketAddr) {
        let up = Arc::new(Upstream::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let up = serving.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let up = up.clone();
                        async move { Ok::<_, std::convert::Infallible>(up.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (up, addr)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().clone()
    }

    async fn answer(&self, req: Request<hyper::body::Incoming>) -> http::Response<Full<Bytes>> {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let parsed: Value = serde_json::from_slice(&body).unwrap();
        let (batch, messages) = match parsed {
            Value::Array(items) => (true, items),
            one => (false, vec![one]),
        };
        let mut answers = Vec::new();
        let mut status = StatusCode::OK;
        for m in &messages {
            let method = m["method"].as_str().unwrap_or("").to_string();
            let tool = m["params"]["name"].as_str().unwrap_or("").to_string();
            self.seen
                .lock()
                .push(format!("{method} {tool}").trim().into());
            if m.get("id").is_none() {
                continue;
            }
            if tool == "slow" {
                self.release.notified().await;
            }
            answers.push(match tool.as_str() {
                // A server refusing the request as a whole, before any tool ran.
                "rejected" => {
                    status = StatusCode::BAD_REQUEST;
                    continue;
                }
                "fails" => json!({"jsonrpc": "2.0", "id": m["id"], "error": {"code": -32000, "message": "the tool failed"}}),
                _ => json!({"jsonrpc": "2.0", "id": m["id"], "result": {"content": [{"type": "text", "text": format!("ran {tool}")}]}}),
            });
        }
        let body = match (status, batch, answers.len()) {
            (StatusCode::BAD_REQUEST, ..) => r#"{"error":"bad request"}"#.to_string(),
            (_, _, 0) => {
                return http::Response::builder()
                    .status(StatusCode::ACCEPTED)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
            }
            (_, true, _) => Value::Array(answers).to_string(),
            (_, false, _) => answers.remove(0).to_string(),
        };
        http::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    }
}

fn proxy_to(upstream: SocketAddr, audit: AuditLog) -> Proxy {
    let metrics = Metrics::new();
    let policy = PolicyHandle::new(metrics.clone());
    let loaded = load_file(POLICY, "test").unwrap();
    policy
        .publish(&EffectivePolicy {
            revision: 1,
            default_action: DefaultAction::Deny,
            ungoverned_action: None,
            policies: loaded.into_iter().map(|l| l.policy).collect(),
        })
        .unwrap();
    let cfg = ProxyConfig {
        upstream: format!("http://{upstream}").parse().unwrap(),
        max_body: 1 << 20,
        allowed_origins: Vec::new(),
        verifier: None,
        passthrough_paths: Vec::new(),
        timeouts: Timeouts::default(),
        max_held_calls: 16,
        approval_url: None,
        http1: Default::default(),
    };
    Proxy::new(cfg, policy, audit, metrics).unwrap()
}

fn call(id: u64, tool: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": {}}})
}

/// Posts `body` through the proxy, as session `session` if given: the status and the JSON
/// answer (`Null` for none).
async fn post(proxy: &Arc<Proxy>, body: &Value, session: Option<&str>) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri("/mcp")
        .header("host", "tollgate.test")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(id) = session {
        req = req.header("mcp-session-id", id);
    }
    let req = req.body(RequestBody::full(body.to_string())).unwrap();
    let resp = proxy
        .clone()
        .handle(req, "127.0.0.1:50000".parse().unwrap())
        .await;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, value)
}

fn text(answer: &Value) -> &str {
    answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or("")
}

#[tokio::test]
async fn a_batch_sends_on_only_its_allowed_messages_and_answers_the_refused_ones_beside_the_servers()
 {
    let (up, addr) = Upstream::start().await;
    let proxy = Arc::new(proxy_to(addr, AuditLog::disabled()));
    let batch = json!([
        call(1, "read"),
        call(2, "delete"),
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}},
        call(3, "unlisted"),
        call(4, "read"),
    ]);
    let (status, answer) = post(&proxy, &batch, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        up.seen(),
        [
            "tools/call read",
            "notifications/progress",
            "tools/call read"
        ]
    );
    let by_id = |id: u64| {
        answer
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id)
            .unwrap_or_else(|| panic!("no answer for {id} in {answer}"))
            .clone()
    };
    assert_eq!(answer.as_array().unwrap().len(), 4, "{answer}");
    assert_eq!(text(&by_id(1)), "ran read");
    assert_eq!(
        by_id(2)["error"]["message"],
        "Denied by policy: Deletion is not permitted"
    );
    assert_eq!(
        by_id(3)["error"]["code"],
        crate::mcp::jsonrpc::POLICY_DENIED
    );
    assert_eq!(text(&by_id(4)), "ran read");

    // Refused whole: nothing reaches the server, and the client is answered as it asked.
    let (status, answer) = post(&proxy, &json!([call(5, "delete")]), None).await;
    assert_eq!(
        (status, answer[0]["id"].clone()),
        (StatusCode::OK, json!(5))
    );
    assert_eq!(up.seen().len(), 3);
}

#[tokio::test]
async fn an_id_already_in_flight_in_its_session_is_refused_and_the_first_call_keeps_its_answer() {
    let (up, addr) = Upstream::start().await;
    let proxy = Arc::new(proxy_to(addr, AuditLog::disabled()));
    let first = tokio::spawn({
        let proxy = proxy.clone();
        async move { post(&proxy, &call(7, "slow"), Some("s1")).await }
    });
    for _ in 0..1000 {
        if !up.seen().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        up.seen(),
        ["tools/call slow"],
        "the first call never reached the server"
    );
    // The same id in the same session while the first is running: refused here.
    let (status, again) = post(&proxy, &call(7, "read"), Some("s1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["id"], 7);
    assert!(
        again["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already in flight"),
        "{again}"
    );
    // Another session may use the id.
    let (_, other) = post(&proxy, &call(7, "read"), Some("s2")).await;
    assert_eq!(text(&other), "ran read");
    assert_eq!(up.seen(), ["tools/call slow", "tools/call read"]);

    up.release.notify_one();
    let (_, answer) = first.await.unwrap();
    assert_eq!(text(&answer), "ran slow");
    // Answered, it is no longer in flight.
    let (_, after) = post(&proxy, &call(7, "read"), Some("s1")).await;
    assert_eq!(text(&after), "ran read");
}

/// Waits for the store to hold a pending approval, and names it.
async fn pending(store: &Approvals) -> String {
    for _ in 0..400 {
        if let Some(a) = store.list().into_iter().find(|a| a.phase == Phase::Pending) {
            return a.name;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no approval became pending");
}

#[tokio::test]
async fn a_held_call_goes_on_once_a_person_approves_it_and_is_refused_with_the_reason_when_denied()
{
    let (up, addr) = Upstream::start().await;
    let store = Approvals::new(
        AuditLog::disabled(),
        None,
        "test".into(),
        Duration::from_secs(60),
    );
    let proxy = Arc::new(
        proxy_to(addr, AuditLog::disabled()).with_approvals(Backend::Local(store.clone())),
    );

    let held = tokio::spawn({
        let proxy = proxy.clone();
        async move { post(&proxy, &call(1, "bucket"), None).await }
    });
    let name = pending(&store).await;
    assert!(
        up.seen().is_empty(),
        "a held call reached the server: {:?}",
        up.seen()
    );
    store.decide(&name, true, "alice", None).unwrap();
    let (status, answer) = held.await.unwrap();
    assert_eq!((status, text(&answer)), (StatusCode::OK, "ran bucket"));
    assert_eq!(up.seen(), ["tools/call bucket"]);

    let held = tokio::spawn({
        let proxy = proxy.clone();
        // Other arguments: another approval.
        let mut c = call(2, "bucket");
        c["params"]["arguments"] = json!({"name": "other"});
        async move { post(&proxy, &c, None).await }
    });
    let name = pending(&store).await;
    store
        .decide(&name, false, "bob", Some("not this quarter"))
        .unwrap();
    let (_, answer) = held.await.unwrap();
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("bob denied approval") && message.contains("not this quarter"),
        "{message}"
    );
    assert_eq!(
        up.seen(),
        ["tools/call bucket"],
        "a denied call reached the server"
    );
}

/// A writer that takes nothing until it is opened: stdout that nobody reads.
struct Gate(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl std::io::Write for Gate {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (open, cv) = &*self.0;
        let mut open = open.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_full_audit_log_refuses_decided_calls_until_it_drains_and_the_server_sees_only_logged_ones()
 {
    let (up, addr) = Upstream::start().await;
    let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let writer = gate.clone();
    let audit = AuditLog::to(
        move || Gate(writer.clone()),
        None,
        64,
        Overflow::Deny,
        Metrics::new().audit(),
    );
    let proxy = Arc::new(proxy_to(addr, audit));
    let mut allowed = 0;
    let mut refused = None;
    for id in 0..50 {
        let (_, answer) = post(&proxy, &call(id, "read"), None).await;
        if answer["error"]["data"]["rule"] == "(audit log)" {
            refused = Some(answer);
            break;
        }
        allowed += 1;
        // Lets the log's writer take what waits (and block on the gate).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = refused.expect("the audit log never filled");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot write its audit log")
    );
    assert_eq!(
        up.seen().len(),
        allowed,
        "a call whose line could not be kept reached the server"
    );

    // Drained, calls go on again.
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    for _ in 0..200 {
        let (_, answer) = post(&proxy, &call(100, "read"), None).await;
        if text(&answer) == "ran read" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("calls stayed refused once the log drained");
}

#[tokio::test]
async fn a_calls_count_is_given_back_only_when_it_cannot_have_run() {
    let (up, addr) = Upstream::start().await;
    let proxy = Arc::new(proxy_to(addr, AuditLog::disabled()));

    // The server refused the request whole (a 400 whose body answers no call): the call never
    // ran, so its count is given back and the next one goes on.
    let (status, _) = post(&proxy, &call(1, "rejected"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = post(&proxy, &call(2, "rejected"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(up.seen(), ["tools/call rejected", "tools/call rejected"]);

    // The tool ran and failed (a JSON-RPC error): it keeps its count.
    let (_, answer) = post(&proxy, &call(3, "fails"), None).await;
    assert_eq!(answer["error"]["message"], "the tool failed");
    let (_, answer) = post(&proxy, &call(4, "fails"), None).await;
    assert_eq!(
        answer["error"]["message"],
        "Denied by policy: Once a minute"
    );
    assert_eq!(up.seen().len(), 3);

    // An unreachable server: the call was never sent, so its count is given back. The counters
    // are shared with a proxy in front of port 1, where nothing listens (and which no test can
    // be handed, as an ephemeral port released here could be).
    let closed: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let dead =
        Arc::new(proxy_to(closed, AuditLog::disabled()).with_counters(proxy.counters.clone()));
    let (status, answer) = post(&dead, &call(5, "once"), None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("could not be reached")
    );
    let (_, answer) = post(&proxy, &call(6, "once"), None).await;
    assert_eq!(text(&answer), "ran once", "the unsent call kept its count");
    let (_, answer) = post(&proxy, &call(7, "once"), None).await;
    assert_eq!(
        answer["error"]["message"],
        "Denied by policy: Once a minute"
    );
}
