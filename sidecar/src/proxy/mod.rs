//! The reverse proxy: every JSON-RPC message is decided before the upstream sees it, as a
//! short pipeline of stages, each in its own file:
//!
//! ```text
//! request ─> admit    origin, caller (bearer token), body within its limit, one strict
//!                     JSON-RPC message or batch whose Mcp-* headers agree ─ Refusal ─> error
//!         ─> decide   each message by the policy in force; allowed calls reserve counters and
//!                     go in flight in their session; denied ones are answered here (and batch
//!                     splits what goes on from what does not)
//!         ─> forward  what was allowed, to the MCP server (http::client), hop-by-hop fields
//!                     dropped and forwarding fields added
//!         ─> inspect  its answer: JSON read whole or SSE event by event (stream), tool lists
//!                     filtered, calls settled (inspect); the proxy's own answers merged in
//! ```
//!
//! One request with a body goes through them as an [`Exchange`]: what it is, who sent it,
//! the policy deciding it and where its answers go. Every answer the proxy gives in the
//! server's place is a [`Refusal`], rendered in one place ([`refusal`]), and every decision
//! has one name ([`DecisionKind`]) in the audit log and the metrics.
//!
//! A request without a body (a GET stream, a DELETE) is admitted and forwarded; its SSE
//! answer is inspected. Bodies Tollgate does not change are forwarded byte for byte. Legacy
//! HTTP+SSE sessions ([`legacy`]) are found by the endpoint their stream announces, so a
//! denial posted to that endpoint is delivered on the session's stream, as the client expects.

mod admit;
mod batch;
pub mod calls;
mod decide;
mod forward;
mod held;
pub mod inspect;
mod legacy;
pub mod refusal;
pub mod resume;
pub mod stream;
#[cfg(test)]
mod tests;
mod versions;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::Either;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use parking_lot::Mutex;
use serde_json::Value;
use tollgate_api::{Identity, PolicySet};

use crate::approvals::Backend;
use crate::http::client::{Outgoing, Upstream};
use crate::http::deadline::Timeouts;
use crate::http::server::RequestBody;
use crate::mcp::era::Era;
use crate::mcp::jsonrpc::Message;
use crate::mcp::sse::message_event;
use crate::policy::Enforced;
use crate::policy::PolicyHandle;
use crate::policy::counters::CounterStore;
use crate::policy::identity::Verifier;
use crate::policy::pins::Pins;
use crate::proxy::calls::{BoundSessions, Calls, Sessions};
use crate::proxy::inspect::Inspector;
use crate::telemetry::audit::AuditLog;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::trace::{self, Attr, RequestTrace, SpanKind, Tracer};
use decide::{Asked, Decided};
use legacy::{LegacyHandle, LegacySession};

pub use crate::http::BoxBody as ProxyBody;
#[cfg(doc)]
use crate::telemetry::DecisionKind;
pub use refusal::Refusal;

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

    fn http1(&self) -> crate::http::server::Http1Server {
        self.cfg.http1
    }

    /// Agents speak JSON-RPC: a request refused before it was read gets a JSON-RPC error.
    fn refusal(&self, _: StatusCode, reason: &str) -> (HeaderValue, Bytes) {
        let body = Refusal::BadHttp(reason.to_string()).message();
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
    /// The most calls held for a person at once (each keeps its request); past it, such calls
    /// are denied until some are settled.
    pub max_held_calls: usize,
    /// Where a person approves a held call (`{name}`: the approval's), for 2026-07-28 clients
    /// that open URLs (`--approval-url`).
    pub approval_url: Option<String>,
    /// Which HTTP/1 server reads agents' requests.
    pub http1: crate::http::server::Http1Server,
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
    /// The streamable HTTP sessions the server issued: what `scope: session` binds to.
    bound: Arc<BoundSessions>,
    /// Calls held for a person; `None`: an `approve` rule denies, saying approvals are off.
    approvals: Option<Backend>,
    /// How many calls are held now, across every worker.
    held_now: Arc<std::sync::atomic::AtomicUsize>,
    /// The workload's tool pins (`spec.pinning`).
    pub pins: Arc<Pins>,
    /// Calls whose server asked for input, waiting for the client's repeat (2026-07-28).
    resumes: Arc<resume::Resumes>,
    /// What the server last said of its protocol versions.
    server_versions: Arc<versions::ServerVersions>,
    /// Starts the traces of sampled requests (off unless `--otlp-endpoint`).
    tracer: Tracer,
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

/// What becomes of a request's answers (see [`Proxy::route`]).
struct Route {
    /// Its session, as the server bound it: a `Mcp-Session-Id` the server issued, or the
    /// legacy session's endpoint its stream announced. What counts `scope: session`.
    session: Option<String>,
    /// Whether that session's client declared URL elicitation (2025-11-25).
    opens_urls: bool,
    /// The legacy HTTP+SSE session it was posted to.
    legacy: Option<LegacyHandle>,
    inspector: Inspector,
}

/// One request with a body, as it goes through the stages once it was read: its head and
/// body, who sent it and from where, the policy deciding it, and where its answers go.
pub(super) struct Exchange {
    parts: http::request::Parts,
    /// The body as it came: what is forwarded of it is cut from these bytes.
    body: Bytes,
    /// Whether the body is a batch, and how many messages it holds.
    batch: bool,
    total: usize,
    set: Arc<Enforced>,
    who: Arc<Identity>,
    peer: SocketAddr,
    /// Whether it speaks the 2026-07-28 protocol (whose results name their type).
    modern: bool,
    /// Whether it is an `initialize` declaring URL elicitation (its session will be noted so).
    declares_urls: bool,
    start: Instant,
    route: Route,
}

/// A request on its way to the server, with what the metrics file it under.
pub(super) struct Onward {
    parts: http::request::Parts,
    body: Outgoing,
    peer: SocketAddr,
    start: Instant,
    kind: RequestKind,
    /// An `initialize` declaring URL elicitation: the session the server issues for it opens
    /// URLs.
    declares_urls: bool,
}

/// What kind of request the request-duration metric counts (its `kind` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RequestKind {
    /// JSON-RPC read and decided, some of it forwarded.
    Mcp,
    /// Forwarded unread: no body (a GET stream, a DELETE), or a path that is not MCP.
    Passthrough,
    /// Every message refused: nothing forwarded.
    Denied,
}

impl RequestKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            RequestKind::Mcp => "mcp",
            RequestKind::Passthrough => "passthrough",
            RequestKind::Denied => "denied",
        }
    }
}

/// MCP's headers, named once: a lookup by `&str` parses the name again.
const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
const MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");

fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
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
        let pins = Arc::new(Pins::new(audit.clone(), metrics.clone()));
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
            bound: Arc::default(),
            approvals: None,
            held_now: Arc::default(),
            pins,
            resumes: Arc::default(),
            server_versions: Arc::default(),
            tracer: Tracer::off(),
        })
    }

    /// Records the traces of sampled requests with `tracer`.
    pub fn with_tracer(mut self, tracer: Tracer) -> Self {
        self.tracer = tracer;
        self
    }

    /// Holds tool lists to `pins` (kept in a file, say) instead of its own.
    pub fn with_pins(mut self, pins: Arc<Pins>) -> Self {
        self.pins = pins;
        self
    }

    /// Keeps counters in `counters` (shared in Redis, say) instead of its own.
    pub fn with_counters(mut self, counters: Arc<CounterStore>) -> Self {
        self.counters = counters;
        self
    }

    /// Holds the calls `approve` rules apply to on `approvals`.
    pub fn with_approvals(mut self, approvals: Backend) -> Self {
        self.approvals = Some(approvals);
        self
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
            bound: self.bound.clone(),
            approvals: self.approvals.clone(),
            held_now: self.held_now.clone(),
            pins: self.pins.clone(),
            resumes: self.resumes.clone(),
            server_versions: self.server_versions.clone(),
            tracer: self.tracer.clone(),
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
        // Untraced, a request pays for this one branch. A traced one is boxed: held inline, the
        // traced future would make every request's future (which hyper moves) twice as large.
        match self.tracer.request(req.headers(), SpanKind::Server) {
            None => Either::Left(self.serve(req, peer)),
            Some(t) => {
                t.name(format!("{} {}", req.method(), req.uri().path()));
                t.set(request_attributes(&req, peer));
                let serving = self.serve(req, peer);
                Either::Right(Box::pin(trace::scope(t.clone(), async move {
                    let resp = serving.await;
                    answered(&t, &resp);
                    resp
                })))
            }
        }
    }

    /// Inlined into [`handle`](Self::handle), so its future is built where `handle`'s goes
    /// rather than moved there (a copy of a few KiB per request).
    #[inline(always)]
    fn serve(
        self: Arc<Self>,
        req: Request<RequestBody>,
        peer: SocketAddr,
    ) -> impl Future<Output = Resp> + Send + 'static {
        let start = Instant::now();
        let (set, who) = match self.admit(&req) {
            Ok(admitted) => admitted,
            Err(refused) => return Either::Left(std::future::ready(refused.into_response())),
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
            let (parts, body) = req.into_parts();
            Either::Left(self.handle_body(parts, body, set, who, peer, start))
        })
    }

    /// A request with a body, through the stages: read whole ([`admit`]), its messages decided
    /// ([`decide`]), what is allowed sent on and the answers inspected ([`forward`]).
    ///
    /// A future is as large as its largest stage, and a call held for a person keeps its
    /// request's future for as long as the person takes: the stages after deciding (and the
    /// rare ones) are boxed, so a held call keeps about 1.9 KiB here, not 5. It is an async
    /// block, not an async fn, which would keep its arguments twice (rust-lang/rust#62958).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice"
    )]
    fn handle_body(
        self: Arc<Self>,
        parts: http::request::Parts,
        body: RequestBody,
        set: Arc<Enforced>,
        who: Arc<Identity>,
        peer: SocketAddr,
        start: Instant,
    ) -> impl Future<Output = Resp> {
        async move {
            let bytes = match self.read_body(&parts.headers, body).await {
                Ok(bytes) => bytes,
                Err(refused) => return refused.into_response(),
            };
            if bytes.is_empty() {
                // Framed as having a body, but none came: nothing to decide.
                return Box::pin(self.forward_stream(
                    parts,
                    Outgoing::Full(bytes),
                    set,
                    who,
                    peer,
                    start,
                ))
                .await;
            }
            if self.cfg.passes_through(&set, parts.uri.path()) {
                // A path the user named as not MCP (an OAuth endpoint, say): forwarded as it is.
                let onward = Onward {
                    parts,
                    body: Outgoing::Full(bytes),
                    peer,
                    start,
                    kind: RequestKind::Passthrough,
                    declares_urls: false,
                };
                return Box::pin(self.forward(onward, Vec::new(), Inspector::passthrough())).await;
            }
            let (rpc, era) = match admit::messages(&parts.headers, &bytes) {
                Ok(read) => read,
                // The versions it lists are those the server supports too.
                Err(Refusal::Version(mut unknown)) => {
                    let credential = parts.headers.get(header::AUTHORIZATION);
                    unknown.supported =
                        Box::pin(self.supported_versions(parts.uri.path(), credential)).await;
                    return Refusal::Version(unknown).into_response();
                }
                Err(refused) => return refused.into_response(),
            };
            if self.tracer.is_on()
                && let Some(t) = trace::current()
            {
                describe(&t, &parts.headers, &rpc.messages, rpc.batch);
            }
            let route = self.route(&parts, &set, &who, &rpc.messages);
            let declares_urls = era == Era::Sessions
                && !rpc.batch
                && rpc.messages[0].method.as_deref() == Some("initialize")
                && resume::initialize_opens_urls(rpc.messages[0].params);
            let mut ex = Exchange {
                modern: era == Era::Stateless,
                declares_urls,
                parts,
                body: bytes.clone(),
                batch: rpc.batch,
                total: rpc.messages.len(),
                set,
                who,
                peer,
                start,
                route,
            };
            let mut decided = {
                let (asked, inspector) = ex.asked();
                self.decide_all(&rpc.messages, &asked, inspector).await
            };
            if !decided.held.is_empty() {
                let legacy = ex.route.legacy.is_some();
                let progress = decided
                    .held
                    .iter()
                    .any(|h| h.progress_token.is_some() || h.tells_on_stream());
                if legacy || (progress && held::accepts_sse(&ex.parts.headers)) {
                    // The legacy transport answers on the session's stream, so the POST is taken
                    // at once; a client asking for progress hears it on a stream begun now.
                    return self.held_in_background(ex, decided.into_owned());
                }
                let held = std::mem::take(&mut decided.held);
                let (asked, inspector) = ex.asked();
                self.settle_held(held, &asked, inspector, &mut decided, |_| {})
                    .await;
            }
            Box::pin(self.finish(ex, decided)).await
        }
    }

    /// The decided request, on: the proxy's answers merged in, what was allowed forwarded, the
    /// allowed calls logged once the server answered.
    async fn finish(&self, ex: Exchange, decided: Decided<'_>) -> Resp {
        let Decided {
            kept,
            answers,
            audits,
            ..
        } = decided;
        let answers = match &ex.route.legacy {
            // Legacy transport: answers travel on the session's stream; the POST gets 202.
            Some(legacy) => {
                for answer in &answers {
                    let _ = legacy.events.send(message_event(&answer.to_string()));
                }
                Vec::new()
            }
            None => answers,
        };
        let forwarded = batch::forwarded(
            &ex.body,
            kept.iter().map(|(_, raw)| raw.as_ref()),
            ex.total,
            ex.batch,
        );
        let Some(body) = forwarded else {
            self.metrics.request(
                RequestKind::Denied.as_str(),
                ex.start.elapsed().as_secs_f64(),
            );
            return batch::all_refused(ex.batch, answers);
        };
        let Exchange {
            parts,
            set,
            who,
            peer,
            modern,
            declares_urls,
            start,
            route,
            ..
        } = ex;
        let onward = Onward {
            parts,
            body: Outgoing::Full(body),
            peer,
            start,
            kind: RequestKind::Mcp,
            declares_urls,
        };
        let resp = self.forward(onward, answers, route.inspector).await;
        let status = resp.status().as_u16();
        let asked = Asked {
            set: &set,
            who: &who,
            session: route.session.as_deref(),
            modern,
            session_opens_urls: route.opens_urls,
            start,
        };
        for a in audits {
            self.write_audit(&a, &asked, Some(status));
        }
        resp
    }

    /// Where a request's answers travel and who settles its calls: the legacy session it was
    /// posted to, or its own response in its streamable HTTP session (or in no session).
    fn route(
        &self,
        parts: &http::request::Parts,
        set: &Arc<Enforced>,
        who: &Arc<Identity>,
        messages: &[Message<'_>],
    ) -> Route {
        let (set, who, counters, pins) = (
            set.clone(),
            who.clone(),
            self.counters.clone(),
            self.pins.clone(),
        );
        let header = header_str(&parts.headers, MCP_SESSION_ID);
        if let Some((key, legacy)) = self.legacy_session(&parts.uri) {
            // Answers arrive on the session's stream, and are read there. The session is the
            // stream's, whatever `Mcp-Session-Id` a client adds.
            // Its answers come on the stream (the POST's own is a 202); where tools are pinned,
            // a list a server answers on the POST itself is read there too (`pins_lists`).
            let inspector =
                Inspector::for_legacy_post(set, who, counters, pins, legacy.calls.clone());
            return Route {
                session: Some(key),
                opens_urls: false,
                legacy: Some(legacy),
                inspector,
            };
        }
        // Ids in flight are kept per session id sent (a made-up one gets a map of its own, gone
        // with its request); counting binds only to a session the server issued.
        let calls = header.map_or_else(Calls::default, |id| self.sessions.calls(id));
        let bound = header.and_then(|id| Some((id, self.bound.lookup(id)?)));
        let session = bound.map(|(id, _)| id.to_string());
        let mut inspector = Inspector::for_request(set, who, counters, pins, calls);
        // The answer must be read when it holds a tool list.
        if messages
            .iter()
            .any(|m| m.method.as_deref() == Some("tools/list"))
        {
            inspector.expect_list();
        }
        Route {
            session,
            opens_urls: bound.is_some_and(|(_, opens)| opens),
            legacy: None,
            inspector,
        }
    }
}

impl Exchange {
    /// What its messages are decided with, and the inspector their answers will pass through
    /// (borrowed apart, as deciding puts calls in flight in it).
    fn asked(&mut self) -> (Asked<'_>, &mut Inspector) {
        let asked = Asked {
            set: &self.set,
            who: &self.who,
            session: self.route.session.as_deref(),
            modern: self.modern,
            session_opens_urls: self.route.opens_urls,
            start: self.start,
        };
        (asked, &mut self.route.inspector)
    }
}

/// What a traced request's span says of its HTTP side, as it arrives.
fn request_attributes(req: &Request<RequestBody>, peer: SocketAddr) -> trace::Attributes {
    let version = match req.version() {
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_10 => "1.0",
        _ => "1.1",
    };
    vec![
        (
            "http.request.method",
            Attr::Str(req.method().to_string().into()),
        ),
        ("url.path", Attr::Str(req.uri().path().to_string().into())),
        ("client.address", Attr::Str(peer.ip().to_string().into())),
        ("network.protocol.name", Attr::from("http")),
        ("network.protocol.version", Attr::from(version)),
    ]
}

/// Names a traced request's span as MCP's conventions do (`tools/call get_weather`), once its
/// messages are read.
fn describe(t: &RequestTrace, headers: &HeaderMap, messages: &[Message<'_>], batch: bool) {
    let mut attrs: trace::Attributes = Vec::with_capacity(6);
    if let Some(v) = header_str(headers, MCP_PROTOCOL_VERSION) {
        attrs.push(("mcp.protocol.version", Attr::Str(v.to_string().into())));
    }
    if let Some(id) = header_str(headers, MCP_SESSION_ID) {
        attrs.push(("mcp.session.id", Attr::Str(id.to_string().into())));
    }
    match (batch, messages) {
        (false, [m]) => {
            let method = m.method.as_deref().unwrap_or("response");
            let target = match method {
                "tools/call" | "prompts/get" => m.params.and_then(crate::mcp::tool_name::tool_name),
                _ => None,
            };
            attrs.push(("mcp.method.name", Attr::Str(method.to_string().into())));
            if let Some(id) = m.id {
                attrs.push((
                    "jsonrpc.request.id",
                    Attr::Str(id.trim_matches('"').to_string().into()),
                ));
            }
            match (method, &target) {
                ("tools/call", Some(tool)) => {
                    attrs.push(("gen_ai.tool.name", Attr::Str(tool.to_string().into())));
                    attrs.push(("gen_ai.operation.name", Attr::from("execute_tool")));
                }
                ("prompts/get", Some(prompt)) => {
                    attrs.push(("gen_ai.prompt.name", Attr::Str(prompt.to_string().into())));
                }
                _ => {}
            }
            t.name(match target {
                Some(target) => format!("{method} {target}"),
                None => method.to_string(),
            });
        }
        _ => {
            attrs.push(("tollgate.batch.size", Attr::from(messages.len() as u64)));
            t.name("batch");
        }
    }
    t.set(attrs);
}

/// What a traced request's span says of its answer, as its headers leave.
fn answered(t: &RequestTrace, resp: &Resp) {
    let status = resp.status();
    t.set([(
        "http.response.status_code",
        Attr::from(u64::from(status.as_u16())),
    )]);
    // As HTTP's conventions have it for a server: a 4xx is the client's, only a 5xx fails.
    if status.is_server_error() {
        t.set([("error.type", Attr::Str(status.as_u16().to_string().into()))]);
        t.error(format!("answered {status}"));
    }
    t.end_request();
}

fn accepted() -> Resp {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}
