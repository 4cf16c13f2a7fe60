//! The reverse proxy: every JSON-RPC message is decided before the upstream sees it.
//!
//! ```text
//! client ─> Origin allowed? ─> identity (JWT) ─> POST with JSON-RPC? ─ no ─> forward as is
//!                                                  │ yes
//!                        each message: tools/call ─> PolicySet::decide ─> counters.reserve_all
//!                                      denied ─> answered here, never forwarded
//!                        allowed ─> upstream ─> JSON or SSE back through the Inspector
//!                                              (tools/list filtered, failed calls rolled back)
//! ```
//!
//! Bodies Tollgate does not change are forwarded byte for byte; SSE streams pass event by
//! event. Legacy HTTP+SSE sessions are tracked by the endpoint their stream announces, so a
//! denial posted to that endpoint is delivered on the session's stream, as the client expects.

pub mod inspect;
pub mod stream;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::Either;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body as _;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tollgate_api::{Call, Decision, Denial, DenyAs, Identity, PolicySet};

use crate::http::client::{Outgoing, Upstream};
use crate::http::deadline::{Progress, Timeouts};
use crate::http::media::{ContentType, field_once};
use crate::http::server::RequestBody;
use crate::mcp::jsonrpc::{self, Body as RpcBody, Message};
use crate::mcp::sse::message_event;
use crate::policy::PolicyHandle;
use crate::policy::counters::{CounterStore, Reserved};
use crate::policy::identity::{self, Verifier};
use crate::proxy::inspect::{CallId, Calls, InFlight, Inspector, Sessions};
use crate::proxy::stream::SseBody;
use crate::telemetry::audit::{AuditLog, Record, now_rfc3339};
use crate::telemetry::metrics::Metrics;

pub use crate::http::BoxBody as ProxyBody;

impl crate::http::server::Handler for Arc<Proxy> {
    type Body = ProxyBody;

    fn call(
        &self,
        req: Request<RequestBody>,
        peer: SocketAddr,
    ) -> impl Future<Output = Resp> + Send + 'static + use<> {
        self.clone().handle(req, peer)
    }

    fn timeouts(&self) -> Timeouts {
        self.cfg.timeouts
    }

    /// Agents speak JSON-RPC: a request refused before it was read gets a JSON-RPC error.
    fn refusal(&self, _: StatusCode, reason: &str) -> (HeaderValue, Bytes) {
        let message = format!("Bad request: {reason}");
        let body = jsonrpc::error_response(Value::Null, jsonrpc::INVALID_REQUEST, &message, None);
        (
            HeaderValue::from_static("application/json"),
            body.to_string().into(),
        )
    }
}

/// How the proxy is set up.
pub struct ProxyConfig {
    /// `http://HOST:PORT` of the MCP server.
    pub upstream: Uri,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Origins browsers may call from; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Verifies bearer tokens; `None` treats every caller as anonymous.
    pub verifier: Option<Verifier>,
    /// Paths whose request bodies are not MCP (an OAuth token endpoint, say) and are forwarded
    /// unread: exact paths, or prefixes ending in `*`. Every other body must be JSON-RPC.
    pub passthrough_paths: Vec<String>,
    /// How long each wait may take, on both sides.
    pub timeouts: Timeouts,
}

impl ProxyConfig {
    /// Whether bodies posted to `path` are forwarded without being read as JSON-RPC: the flag
    /// or a policy in force names it.
    fn passes_through(&self, set: &PolicySet, path: &str) -> bool {
        self.passthrough_paths
            .iter()
            .any(|p| tollgate_api::decide::path_matches(p, path))
            || set.passes_through(path)
    }
}

/// The proxy's shared state.
pub struct Proxy {
    cfg: Arc<ProxyConfig>,
    upstream_authority: HeaderValue,
    client: Arc<Upstream>,
    pub policy: PolicyHandle,
    pub counters: Arc<CounterStore>,
    audit: AuditLog,
    metrics: Metrics,
    legacy: Arc<Mutex<HashMap<String, LegacySession>>>,
    /// The calls in flight of each streamable HTTP session.
    sessions: Arc<Sessions>,
}

/// A legacy HTTP+SSE session: where denials for it are delivered, and its calls in flight.
struct LegacySession {
    events: mpsc::UnboundedSender<Bytes>,
    calls: Calls,
}

type Resp = Response<ProxyBody>;

fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn json_response(status: StatusCode, body: &Value) -> Resp {
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Largest answer the proxy reads into memory to inspect (a tool list, a batch's answers).
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// An answer whose body the proxy rewrote.
fn json_text_response(mut parts: http::response::Parts, body: String) -> Resp {
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, full(body))
}

/// What the client gets for an answer the proxy must read and cannot.
fn withheld(why: &str) -> Resp {
    let body = jsonrpc::error_response(
        Value::Null,
        jsonrpc::INTERNAL_ERROR,
        &format!("Tollgate cannot read the MCP server's answer, so it is withheld: {why}"),
        None,
    );
    json_response(StatusCode::BAD_GATEWAY, &body)
}

/// The server's answers to the forwarded part of a batch, with the proxy's own answers to the
/// part it refused: one array for the client.
fn merge_answers(server: &str, ours: Vec<Value>) -> String {
    let mut merged: Vec<Value> = match serde_json::from_str::<Value>(server) {
        Ok(Value::Array(items)) => items,
        Ok(v) => vec![v],
        Err(_) => vec![],
    };
    merged.extend(ours);
    Value::Array(merged).to_string()
}

/// Fields that belong to one hop, never forwarded; `Trailer` too, as trailers are not.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::TE,
    header::UPGRADE,
    header::TRAILER,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Nearly every message has none of them: one pass over the names, comparing without
    // hashing, finds that out (each removal below is a hash lookup).
    if !headers.keys().any(|n| HOP_BY_HOP.contains(n)) {
        return;
    }
    if let Some(named) = headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
    {
        let named: Vec<HeaderName> = named
            .split(',')
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
}

/// `X-Forwarded-For`'s value for `ip`. A connection's requests all come from one address, so
/// the last one formatted on this thread is kept and shared (a clone is a reference count).
fn forwarded_for(ip: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: RefCell<Option<(IpAddr, HeaderValue)>> = const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((seen, value)) if *seen == ip => value.clone(),
        _ => {
            let value = HeaderValue::from_str(&ip.to_string())
                .expect("an IP address is a valid header value");
            *last = Some((ip, value.clone()));
            value
        }
    })
}

/// MCP's and the forwarding headers, named once: a lookup by `&str` parses the name again.
const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
const MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// What every message of one request is decided with.
#[derive(Clone, Copy)]
struct Asked<'a> {
    set: &'a PolicySet,
    who: &'a Identity,
    /// The session the request belongs to, if any.
    session: Option<&'a str>,
    /// Whether it speaks the 2026-07-28 protocol (whose results name their type).
    modern: bool,
    start: Instant,
}

/// What becomes of one message of a request.
enum Outcome {
    /// Sent on to the server, with what it reserved.
    Forward(Reserved),
    /// Refused here, with the answer for the client (none for a notification).
    Refuse(Option<Value>),
}

/// What is logged once the upstream answers.
struct PendingAudit {
    method: &'static str,
    tool: String,
    decision: &'static str,
    rule: Option<String>,
    policy: Option<String>,
    reason: Option<String>,
}

impl Proxy {
    pub fn new(
        cfg: ProxyConfig,
        policy: PolicyHandle,
        audit: AuditLog,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            cfg.upstream.scheme_str() == Some("http"),
            "--upstream must be an http:// URL of the MCP server beside the proxy, got {}",
            cfg.upstream
        );
        let authority = cfg
            .upstream
            .authority()
            .ok_or_else(|| anyhow::anyhow!("--upstream {} has no host", cfg.upstream))?;
        let upstream_authority = HeaderValue::from_str(authority.as_str())?;
        Ok(Proxy {
            client: Upstream::with_timeouts(
                authority.as_str(),
                cfg.timeouts.upstream_head,
                cfg.timeouts.upstream_body,
            ),
            cfg: Arc::new(cfg),
            upstream_authority,
            policy,
            counters: Arc::default(),
            audit,
            metrics,
            legacy: Arc::default(),
            sessions: Arc::default(),
        })
    }

    /// The same proxy for another worker thread: everything shared (policy, counters, sessions,
    /// audit) but the upstream connection pool, so a worker's upstream connections are driven
    /// on its own thread and no request hops between threads.
    pub fn worker(&self) -> Proxy {
        Proxy {
            cfg: self.cfg.clone(),
            upstream_authority: self.upstream_authority.clone(),
            client: self.client.for_another_worker(),
            policy: self.policy.clone(),
            counters: self.counters.clone(),
            audit: self.audit.clone(),
            metrics: self.metrics.clone(),
            legacy: self.legacy.clone(),
            sessions: self.sessions.clone(),
        }
    }

    /// Serves one request.
    ///
    /// Not an `async fn`: the checks that need no I/O run here, and the future returned is
    /// only the one that does I/O. An `async fn` would hold the request twice (as argument and
    /// as local) on top of the inner future, and every request allocates its future.
    pub fn handle(
        self: Arc<Self>,
        req: Request<RequestBody>,
        peer: SocketAddr,
    ) -> impl Future<Output = Resp> + Send + 'static {
        let start = Instant::now();
        let (set, who) = match self.admit(&req) {
            Ok(admitted) => admitted,
            Err(refused) => return Either::Left(std::future::ready(refused)),
        };
        // Whatever the method, a request with a body is read before anything is forwarded;
        // only one without (a GET stream, a DELETE, a probe) goes on as it is.
        Either::Right(if req.body().is_end_stream() {
            let (parts, body) = req.into_parts();
            Either::Right(self.forward_stream(
                parts,
                Outgoing::streamed(body),
                set,
                who,
                peer,
                start,
            ))
        } else {
            Either::Left(self.handle_body(req, set, who, peer, start))
        })
    }

    /// The request's origin and caller, checked before its body is read: the policy it is
    /// decided by and who is calling, or the refusal.
    #[allow(clippy::result_large_err)]
    fn admit(&self, req: &Request<RequestBody>) -> Result<(Arc<PolicySet>, Arc<Identity>), Resp> {
        if !self.cfg.allowed_origins.is_empty()
            && let Some(origin) = req.headers().get(header::ORIGIN)
            && (unreadable_field(req.headers(), &header::ORIGIN)
                || !self
                    .cfg
                    .allowed_origins
                    .iter()
                    .any(|o| o.as_bytes() == origin.as_bytes() || o == "*"))
        {
            let origin = String::from_utf8_lossy(origin.as_bytes());
            let body = jsonrpc::error_response(
                Value::Null,
                jsonrpc::INVALID_REQUEST,
                &format!("Origin {origin} is not allowed; add it to --allowed-origins"),
                None,
            );
            return Err(json_response(StatusCode::FORBIDDEN, &body));
        }
        // A credential the proxy cannot read must not pass as no credential: the server may
        // read it.
        if unreadable_field(req.headers(), &header::AUTHORIZATION) {
            return Err(unauthorized(
                "the Authorization header must be one field of visible ASCII",
            ));
        }
        // One read of the policy state per request: who is calling and what is allowed come
        // from the same revision.
        let state = self.policy.current();
        let verifiers = [state.cluster_keys.as_deref(), self.cfg.verifier.as_ref()];
        let who = identity::identify(&verifiers, header_str(req.headers(), header::AUTHORIZATION))
            .map_err(|e| unauthorized(&e))?;
        Ok((state.set.clone(), Arc::new(who)))
    }

    /// A request with a body: read whole, then decided message by message.
    async fn handle_body(
        self: Arc<Self>,
        req: Request<RequestBody>,
        set: Arc<PolicySet>,
        who: Arc<Identity>,
        peer: SocketAddr,
        start: Instant,
    ) -> Resp {
        let (parts, body) = req.into_parts();
        let bytes = match self.read_body(&parts.headers, body).await {
            Ok(bytes) => bytes,
            Err(refused) => return refused,
        };
        if bytes.is_empty() {
            // Framed as having a body, but none came: nothing to decide.
            return self
                .forward_stream(parts, Outgoing::Full(bytes), set, who, peer, start)
                .await;
        }
        if self.cfg.passes_through(&set, parts.uri.path()) {
            // A path the user named as not MCP (an OAuth endpoint, say): forwarded as it is.
            return self
                .forward(
                    parts,
                    Outgoing::Full(bytes),
                    Vec::new(),
                    Inspector::passthrough(),
                    peer,
                    start,
                    "passthrough",
                )
                .await;
        }
        if let Some(why) = crate::http::media::not_utf8(&parts.headers) {
            let body = jsonrpc::error_response(
                Value::Null,
                jsonrpc::PARSE_ERROR,
                &format!("Parse error: {why}"),
                None,
            );
            return json_response(StatusCode::UNSUPPORTED_MEDIA_TYPE, &body);
        }
        let RpcBody { messages, batch } = match jsonrpc::parse_body(&bytes) {
            Ok(p) => p,
            Err(e) => {
                let body = jsonrpc::error_response(Value::Null, e.code, &e.message, None);
                return json_response(StatusCode::BAD_REQUEST, &body);
            }
        };
        if let Err(msg) = check_mcp_headers(&parts.headers, &messages, batch) {
            let id = messages
                .first()
                .map(Message::id_value)
                .unwrap_or(Value::Null);
            let body = jsonrpc::error_response(id, jsonrpc::INVALID_REQUEST, &msg, None);
            return json_response(StatusCode::BAD_REQUEST, &body);
        }

        let legacy = self.legacy_session(&parts.uri);
        let session = header_str(&parts.headers, MCP_SESSION_ID)
            .map(str::to_string)
            .or_else(|| legacy.as_ref().map(|(key, _)| key.clone()));
        let mut inspector = match (&legacy, session.as_deref()) {
            (Some((_, s)), _) => Inspector::for_legacy_post(
                set.clone(),
                who.clone(),
                self.counters.clone(),
                s.calls.clone(),
            ),
            (None, session) => Inspector::for_request(
                set.clone(),
                who.clone(),
                self.counters.clone(),
                session.map_or_else(Calls::default, |id| self.sessions.calls(id)),
            ),
        };
        // The answer must be read when it holds a tool list: on this request's own response,
        // unless the legacy transport answers on the session's stream (read there).
        if legacy.is_none()
            && messages
                .iter()
                .any(|m| m.method.as_deref() == Some("tools/list"))
        {
            inspector.expect_list();
        }
        let asked = Asked {
            set: &set,
            who: &who,
            session: session.as_deref(),
            modern: header_str(&parts.headers, MCP_PROTOCOL_VERSION)
                .is_some_and(|v| v >= "2026-07-28"),
            start,
        };
        let mut audits = Vec::new();
        let mut kept: Vec<&str> = Vec::with_capacity(messages.len());
        let mut answered_denials: Vec<Value> = Vec::new();
        for m in &messages {
            match self.admit_message(m, &asked, &mut inspector, &mut audits) {
                None => kept.push(m.raw),
                Some(answer) => answered_denials.extend(answer),
            }
        }
        let refused = messages.len() - kept.len();

        if let Some((_, session)) = &legacy {
            // Legacy transport: answers travel on the session's stream; the POST gets 202.
            for d in &answered_denials {
                let _ = session.events.send(message_event(&d.to_string()));
            }
            if refused == messages.len() {
                self.metrics
                    .request("denied", start.elapsed().as_secs_f64());
                return accepted();
            }
        }

        let body = if refused == 0 {
            Outgoing::Full(bytes.clone())
        } else if refused == messages.len() {
            self.metrics
                .request("denied", start.elapsed().as_secs_f64());
            return match (batch, answered_denials.len()) {
                (_, 0) => accepted(),
                (false, _) => json_response(StatusCode::OK, &answered_denials[0]),
                (true, _) => json_response(StatusCode::OK, &Value::Array(answered_denials)),
            };
        } else {
            Outgoing::Full(Bytes::from(format!("[{}]", kept.join(","))))
        };
        let extra = if legacy.is_some() {
            Vec::new()
        } else {
            answered_denials
        };
        let resp = self
            .forward(parts, body, extra, inspector, peer, start, "mcp")
            .await;
        let status = resp.status().as_u16();
        for a in audits {
            self.write_audit(
                &a,
                &who,
                session.as_deref(),
                set.revision,
                Some(status),
                start,
            );
        }
        resp
    }

    /// Decides one message of a request and, when it goes on to the server, puts it in flight
    /// in its session: `None` to forward it, or what the client gets instead (nothing, for a
    /// notification).
    fn admit_message(
        &self,
        m: &Message<'_>,
        asked: &Asked<'_>,
        inspector: &mut Inspector,
        audits: &mut Vec<PendingAudit>,
    ) -> Option<Option<Value>> {
        if let Some(cancelled) = m.cancelled_request().and_then(CallId::of) {
            inspector.keep(&cancelled);
        }
        // A request is in flight once per session: a second with its id could be given the
        // first one's answer, or the first one's refund.
        let call_id = m.id.filter(|_| m.method.is_some()).and_then(CallId::of);
        if call_id
            .as_ref()
            .is_some_and(|id| inspector.is_in_flight(id))
        {
            return Some(Some(in_flight(m)));
        }
        match self.decide(m, asked, audits) {
            Outcome::Refuse(answer) => Some(answer),
            Outcome::Forward(reserved) => match call_id {
                // A notification or a response has no id to put in flight.
                None => None,
                // Checked above, but another request of the session may have taken the id
                // since.
                Some(id) => inspector
                    .begin(id, reserved)
                    .err()
                    .map(|InFlight(reserved)| {
                        self.counters.rollback(reserved);
                        Some(in_flight(m))
                    }),
            },
        }
    }

    /// Decides one message; an allowed call has its counters reserved.
    fn decide(
        &self,
        m: &Message<'_>,
        asked: &Asked<'_>,
        audits: &mut Vec<PendingAudit>,
    ) -> Outcome {
        let Asked {
            set,
            who,
            session,
            modern,
            start,
        } = *asked;
        // Only what the policy governs is parsed: tool calls always, resources and prompts
        // where a policy names them.
        let method: &'static str = match m.method.as_deref() {
            Some("tools/call") => "tools/call",
            Some("resources/read") if set.names("resource:") => "resources/read",
            Some("prompts/get") if set.names("prompt:") => "prompts/get",
            _ => return Outcome::Forward(Reserved::default()),
        };
        let Some(call) = m.call() else {
            return Outcome::Forward(Reserved::default());
        };
        let call = match call {
            Ok(c) => c,
            Err(e) => {
                let answer =
                    m.id.map(|_| jsonrpc::error_response(m.id_value(), -32602, &e, None));
                return Outcome::Refuse(answer);
            }
        };
        let empty = Value::Object(Default::default());
        let args = call.arguments.as_ref().unwrap_or(&empty);
        let t0 = Instant::now();
        let verdict = set.decide(
            &Call {
                tool: &call.name,
                args: Some(args),
                session,
            },
            who,
            &*self.counters,
        );
        let outcome = match verdict.decision {
            Decision::Allow { reservations } => self
                .counters
                .reserve_all(&reservations)
                .map_err(|full| ("deny", full)),
            Decision::Deny(d) => Err(("deny", d)),
            Decision::Approve { policy, rule, .. } => Err((
                "approve",
                Denial {
                    reason: format!(
                        "Tool {:?} needs a person's approval (rule {rule:?}), and approvals are not enabled on this proxy",
                        call.name
                    ),
                    policy,
                    rule,
                    deny_as: DenyAs::Error,
                },
            )),
        };
        let seconds = t0.elapsed().as_secs_f64();
        match outcome {
            Ok(reserved) => {
                let audit = verdict.audit;
                self.metrics.decision(
                    &call.name,
                    if audit.is_some() {
                        "audit_deny"
                    } else {
                        "allow"
                    },
                    seconds,
                );
                audits.push(PendingAudit {
                    method,
                    tool: call.name,
                    decision: if audit.is_some() { "audit" } else { "allow" },
                    rule: audit.as_ref().map(|d| d.rule.clone()),
                    policy: audit.as_ref().map(|d| d.policy.clone()),
                    reason: audit.map(|d| d.reason),
                });
                Outcome::Forward(reserved)
            }
            Err((kind, denial)) => {
                self.metrics.decision(&call.name, kind, seconds);
                let a = PendingAudit {
                    method,
                    tool: call.name.clone(),
                    decision: kind,
                    rule: Some(denial.rule.clone()),
                    policy: Some(denial.policy.clone()),
                    reason: Some(denial.reason.clone()),
                };
                self.write_audit(&a, who, session, set.revision, None, start);
                Outcome::Refuse(m.id.map(|_| denial_message(m.id_value(), &denial, modern)))
            }
        }
    }

    /// A request's whole body, within `--max-body-bytes`, or the refusal.
    #[allow(clippy::result_large_err)]
    async fn read_body(&self, headers: &HeaderMap, body: RequestBody) -> Result<Bytes, Resp> {
        let declared = crate::http::head::content_length(headers);
        if declared.is_some_and(|n| n.is_ok_and(|n| n > self.cfg.max_body as u64)) {
            return Err(self.too_large());
        }
        let collected = match body.into_bytes() {
            // Read with its head (an MCP call, nearly always): its declared length was checked.
            Ok(bytes) => Ok(bytes),
            Err(body) => {
                let body = Progress::new(body, self.cfg.timeouts.body, "the request body");
                Limited::new(body, self.cfg.max_body)
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
            }
        };
        match collected {
            Ok(bytes) => Ok(bytes),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                Err(self.too_large())
            }
            Err(e) => {
                let body = jsonrpc::error_response(
                    Value::Null,
                    jsonrpc::PARSE_ERROR,
                    &format!("Could not read the request body: {e}"),
                    None,
                );
                Err(json_response(StatusCode::BAD_REQUEST, &body))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn write_audit(
        &self,
        a: &PendingAudit,
        who: &Identity,
        session: Option<&str>,
        revision: u64,
        status: Option<u16>,
        start: Instant,
    ) {
        self.audit.write(Record {
            time: now_rfc3339(),
            kind: "decision",
            pod: self.audit.pod(),
            session,
            identity: who.key(),
            method: a.method,
            tool: Some(&a.tool),
            decision: a.decision,
            rule: a.rule.as_deref(),
            policy: a.policy.as_deref(),
            reason: a.reason.as_deref(),
            revision,
            upstream_status: status,
            latency_ms: start.elapsed().as_secs_f64() * 1e3,
            arguments: None,
            dropped_before: None,
        });
    }

    fn too_large(&self) -> Resp {
        let body = jsonrpc::error_response(
            Value::Null,
            jsonrpc::TOO_LARGE,
            &format!(
                "Request body is larger than the {} byte limit (--max-body-bytes)",
                self.cfg.max_body
            ),
            None,
        );
        json_response(StatusCode::PAYLOAD_TOO_LARGE, &body)
    }

    /// The upstream request's head, from the client's: hop-by-hop fields dropped, the
    /// server's `Host`, and the forwarding fields. The path and query are the client's.
    fn upstream_head(
        &self,
        mut parts: http::request::Parts,
        peer: SocketAddr,
    ) -> http::request::Parts {
        let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(header::HOST, self.upstream_authority.clone());
        if let Some(host) = original_host {
            parts.headers.insert(X_FORWARDED_HOST, host);
        }
        if !parts.headers.contains_key(X_FORWARDED_PROTO) {
            parts
                .headers
                .insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        }
        parts
            .headers
            .append(X_FORWARDED_FOR, forwarded_for(peer.ip()));
        parts
    }

    /// Sends a request with its body read upstream and passes its answer back through the
    /// inspector.
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        parts: http::request::Parts,
        body: Outgoing,
        extra: Vec<Value>,
        mut inspector: Inspector,
        peer: SocketAddr,
        start: Instant,
        kind: &'static str,
    ) -> Resp {
        let up = self.upstream_head(parts, peer);
        let resp = match self.client.send(&up, body).await {
            Ok(r) => r,
            Err(e) => {
                if e.never_sent() {
                    inspector.refund_all();
                }
                return self.bad_gateway(&e, None);
            }
        };
        self.metrics.request(kind, start.elapsed().as_secs_f64());
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if parts.status.is_client_error() {
            // The server refused the request as a whole: nothing in it ran.
            inspector.refund_all();
        }
        let content = ContentType::of(&parts.headers);
        if content == ContentType::EventStream {
            parts.headers.remove(header::CONTENT_LENGTH);
            let first = extra
                .iter()
                .map(|v| message_event(&v.to_string()))
                .collect();
            return Response::from_parts(parts, SseBody::new(body, inspector, first).boxed());
        }
        if parts.status == StatusCode::ACCEPTED && !extra.is_empty() {
            // The forwarded part of a batch was only notifications: answer the denials.
            return json_response(StatusCode::OK, &Value::Array(extra));
        }
        let must_read = inspector.may_filter() && parts.status.is_success();
        let needs_look = !extra.is_empty()
            || must_read
            || (content == ContentType::Json && inspector.is_tracking());
        if !needs_look {
            return Response::from_parts(parts, body.boxed());
        }
        let bytes = match Limited::new(body, MAX_ANSWER).collect().await {
            Ok(c) => c.to_bytes(),
            // Cut off mid-answer: the calls keep their counts (they may have run).
            Err(e) => return self.bad_gateway(&e, None),
        };
        if must_read && content != ContentType::Json && !bytes.is_empty() {
            // A tool list in a form the proxy does not read: a client might read it anyway.
            let why = format!("its answer's Content-Type is {content:?}, not JSON or SSE");
            return withheld(&why);
        }
        let text = match std::str::from_utf8(&bytes) {
            Ok(text) => text,
            Err(_) => {
                return match inspector.unreadable(&bytes, "its answer is not UTF-8") {
                    Some(error) if extra.is_empty() => json_text_response(parts, error),
                    Some(_) => withheld("its answer is not UTF-8"),
                    None => Response::from_parts(parts, full(bytes)),
                };
            }
        };
        let mut out = inspector.inspect_text(text);
        if !extra.is_empty() {
            // Part of a batch was denied: the client gets every answer, ours and the server's.
            out = Some(merge_answers(out.as_deref().unwrap_or(text), extra));
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        inspector.finish();
        match out {
            Some(changed) => json_text_response(parts, changed),
            None => Response::from_parts(parts, full(bytes)),
        }
    }

    /// A request with no body (GET, DELETE, a probe): its answer streamed back, SSE inspected.
    async fn forward_stream(
        self: Arc<Self>,
        parts: http::request::Parts,
        body: Outgoing,
        set: Arc<PolicySet>,
        who: Arc<Identity>,
        peer: SocketAddr,
        start: Instant,
    ) -> Resp {
        let is_get = parts.method == Method::GET;
        let up = self.upstream_head(parts, peer);
        let resp = match self.client.send(&up, body).await {
            Ok(r) => r,
            Err(e) => return self.bad_gateway(&e, None),
        };
        self.metrics
            .request("passthrough", start.elapsed().as_secs_f64());
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if ContentType::of(&parts.headers) != ContentType::EventStream {
            return Response::from_parts(parts, body.boxed());
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        // Answers on a stream settle only the legacy session's calls, which it has if it
        // announces an endpoint.
        let calls = Calls::default();
        let inspector =
            Inspector::for_session_stream(set, who, self.counters.clone(), calls.clone());
        let mut sse = SseBody::new(body, inspector, Vec::new());
        if is_get {
            // A legacy HTTP+SSE stream announces where its session posts.
            let (tx, rx) = mpsc::unbounded_channel();
            let registry = self.legacy_registry();
            let authority = self.upstream_authority.to_str().unwrap_or("").to_string();
            sse = sse
                .with_injection(rx)
                .on_endpoint(Box::new(move |data: &str| {
                    let (key, rewritten) = endpoint_key(data, &authority);
                    registry.register(
                        key,
                        LegacySession {
                            events: tx.clone(),
                            calls: calls.clone(),
                        },
                    );
                    rewritten
                }));
        }
        Response::from_parts(parts, sse.boxed())
    }

    fn legacy_registry(&self) -> LegacyRegistry {
        LegacyRegistry(self.legacy.clone())
    }

    /// The legacy session a POST belongs to, by its path and query.
    fn legacy_session(&self, uri: &Uri) -> Option<(String, LegacyHandle)> {
        let key = uri.path_and_query()?.as_str();
        let mut map = self.legacy.lock();
        let s = map.get(key)?;
        if s.events.is_closed() {
            map.remove(key);
            return None;
        }
        Some((
            key.to_string(),
            LegacyHandle {
                events: s.events.clone(),
                calls: s.calls.clone(),
            },
        ))
    }

    fn bad_gateway(&self, e: &dyn std::fmt::Display, id: Option<Value>) -> Resp {
        self.metrics.upstream_error("unreachable");
        tracing::warn!(upstream = %self.cfg.upstream, error = %e, "upstream request failed");
        let body = jsonrpc::error_response(
            id.unwrap_or(Value::Null),
            jsonrpc::INTERNAL_ERROR,
            &format!(
                "The MCP server at {} could not be reached: {e}",
                self.cfg.upstream
            ),
            None,
        );
        json_response(StatusCode::BAD_GATEWAY, &body)
    }
}

/// A handle to a legacy session's stream, usable without the registry lock.
struct LegacyHandle {
    events: mpsc::UnboundedSender<Bytes>,
    calls: Calls,
}

/// Registers legacy sessions from inside an SSE body (which outlives the request borrow).
struct LegacyRegistry(Arc<Mutex<HashMap<String, LegacySession>>>);

impl LegacyRegistry {
    fn register(&self, key: String, session: LegacySession) {
        let mut map = self.0.lock();
        map.retain(|_, s| !s.events.is_closed());
        map.insert(key, session);
    }
}

/// The path+query a legacy endpoint event names, and the event data rewritten to a relative
/// URL when the server announced an absolute one on its own address.
fn endpoint_key(data: &str, upstream_authority: &str) -> (String, Option<String>) {
    let data = data.trim();
    if let Some(rest) = data
        .strip_prefix("http://")
        .or_else(|| data.strip_prefix("https://"))
    {
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        let rewritten = (authority == upstream_authority).then(|| path.to_string());
        return (path.to_string(), rewritten);
    }
    (data.to_string(), None)
}

/// The answer to a request whose id is in flight in its session already.
fn in_flight(m: &Message<'_>) -> Value {
    jsonrpc::error_response(
        m.id_value(),
        jsonrpc::INVALID_REQUEST,
        "Invalid Request: a request with this id is already in flight in this session; give each request its own id",
        None,
    )
}

fn accepted() -> Resp {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}

fn unauthorized(reason: &str) -> Resp {
    let body = jsonrpc::error_response(
        Value::Null,
        jsonrpc::INVALID_REQUEST,
        &format!("Unauthorized: {reason}"),
        None,
    );
    let mut r = json_response(StatusCode::UNAUTHORIZED, &body);
    let challenge = format!(
        "Bearer error=\"invalid_token\", error_description=\"{}\"",
        reason.replace('"', "'")
    );
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// The answer to a denied request: a JSON-RPC error, or an `isError` tool result.
pub fn denial_message(id: Value, d: &Denial, modern: bool) -> Value {
    let data = json!({ "reason": d.reason, "rule": d.rule, "policy": d.policy });
    match d.deny_as {
        DenyAs::Error => jsonrpc::error_response(
            id,
            jsonrpc::POLICY_DENIED,
            &format!("Denied by policy: {}", d.reason),
            Some(data),
        ),
        DenyAs::ToolResult => {
            let mut m = json!({
                "jsonrpc": "2.0",
                "id": id,
                "result": {
                    "content": [ { "type": "text", "text": format!("Denied by policy: {}", d.reason) } ],
                    "isError": true,
                    "_meta": { "tollgate.dev/denial": data },
                }
            });
            if modern {
                // 2026-07-28 results name their type.
                m["result"]["resultType"] = json!("complete");
            }
            m
        }
    }
}

/// Whether a field is present but cannot be read one way (see [`field_once`]).
fn unreadable_field(headers: &HeaderMap, name: &HeaderName) -> bool {
    field_once(headers, name).is_err()
}

/// Stateless MCP (2026-07-28) mirrors the method and name in headers; a request whose headers
/// say something its body does not is refused, so routing and policy can never disagree.
fn check_mcp_headers(
    headers: &HeaderMap,
    messages: &[Message<'_>],
    batch: bool,
) -> Result<(), String> {
    for name in [
        &MCP_SESSION_ID,
        &MCP_PROTOCOL_VERSION,
        &MCP_METHOD,
        &MCP_NAME,
    ] {
        if unreadable_field(headers, name) {
            return Err(format!(
                "The {name} header must be one field of visible ASCII: the server could read it otherwise than the proxy"
            ));
        }
    }
    let method = header_str(headers, MCP_METHOD);
    let name = header_str(headers, MCP_NAME);
    if method.is_none() && name.is_none() {
        return Ok(());
    }
    if batch {
        return Err("Mcp-Method and Mcp-Name headers cannot describe a batch".into());
    }
    let m = &messages[0];
    if let Some(method) = method
        && m.method.as_deref() != Some(method)
    {
        return Err(format!(
            "The Mcp-Method header says {method:?} but the body's method is {:?}",
            m.method.as_deref().unwrap_or("")
        ));
    }
    if let Some(name) = name {
        let body_name = m.params.and_then(|p| {
            serde_json::from_str::<Value>(p.get()).ok().and_then(|v| {
                v.get("name")
                    .or_else(|| v.get("uri"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
        });
        if body_name.as_deref() != Some(name) {
            return Err(format!(
                "The Mcp-Name header says {name:?} but the body names {:?}",
                body_name.unwrap_or_default()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(fields: &[(&str, &str)]) -> HeaderMap {
        fields
            .iter()
            .map(|(n, v)| {
                (
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        h.keys().map(HeaderName::as_str).collect()
    }

    #[test]
    fn hop_by_hop_fields_and_the_ones_connection_names_are_dropped_and_no_others() {
        let mut h = map(&[
            ("content-type", "application/json"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "close"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("upgrade", "h2c"),
            ("mcp-session-id", "s1"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["content-type", "mcp-session-id"]);

        let untouched = map(&[("content-type", "a"), ("accept", "b"), ("x-c", "c")]);
        let mut h = untouched.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, untouched);

        // Only `Trailer`: still found by the pass over the names.
        let mut h = map(&[("accept", "b"), ("trailer", "x")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["accept"]);
    }

    #[test]
    fn forwarded_for_names_each_peer_even_when_peers_alternate_on_a_thread() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let v6: IpAddr = "fd00::7".parse().unwrap();
        for ip in [v4, v4, v6, v4, v6, v6] {
            assert_eq!(forwarded_for(ip), ip.to_string().as_str());
        }
    }
}
