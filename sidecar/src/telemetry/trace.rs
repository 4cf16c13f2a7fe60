//! OpenTelemetry traces, exported as OTLP/HTTP JSON to a collector: a span per request the
//! proxy serves, with what happened to it as children.
//!
//! ```text
//! request ─ Tracer::request(headers) ─ sampled? ─ no ─> None: nothing recorded, nothing sent
//!                                      │ (the agent's `traceparent` decides; else the ratio)
//!                                      yes
//!   RequestTrace, the request's task-local (`scope`), spans recorded as the stages finish:
//!     tools/call NAME (server)            the request, as MCP's conventions name it
//!       ├ EVALSHA (client)                 the counter store's round trip, as it is made
//!       ├ tollgate.decide (internal)       tool, decision, rule, policy, revision
//!       ├ tollgate.approval (internal)     a held call's wait for a person
//!       └ POST (client)                    the upstream call; its context goes on in
//!                                          `traceparent`, so the server's spans are children
//!   dropped (the last handle) ─ try_send ─> bounded queue ─> the exporter, on its own thread:
//!                                           batches of up to 512 spans, one POST at a time
//! ```
//!
//! Exporting never slows or blocks a request: a request's spans are handed over with
//! `try_send`, and a queue that is full (a collector slow or gone) drops them, counted in
//! `tollgate_trace_spans_dropped_total{reason}`. A batch the collector refuses or does not take
//! within [`EXPORT_TIMEOUT`] is dropped the same way; nothing is retried, as a trace is
//! evidence of nothing the audit log does not hold.
//!
//! Names follow OpenTelemetry's semantic conventions for MCP (`mcp.method.name`,
//! `gen_ai.tool.name`, `jsonrpc.request.id`, `mcp.session.id`), HTTP and Redis; what only
//! Tollgate knows is under `tollgate.`.

use std::borrow::Cow;
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::metrics::TraceMetrics;

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Most spans sent in one export.
pub const MAX_BATCH: usize = 512;
/// How long spans wait for a batch to fill before they are sent.
pub const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Most requests' spans waiting for the exporter; past it they are dropped.
pub const QUEUE: usize = 2_048;
/// Most spans waiting for the exporter, whatever the requests: with [`MAX_VALUE`], what a
/// collector that is slow or gone can cost in memory (a few MiB).
pub const MAX_QUEUED_SPANS: usize = 8_192;
/// Most child spans of one request (a batch decides a message each): the rest are counted in
/// the request span's `tollgate.spans.omitted`.
pub const MAX_CHILDREN: usize = 32;
/// How long the collector has to take one batch.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest span name or string attribute kept, in bytes: tool names and session ids come from
/// agents, and a request's spans wait in the queue.
pub const MAX_VALUE: usize = 512;

/// `s`, cut to [`MAX_VALUE`] bytes on a character boundary.
fn bounded(s: Cow<'static, str>) -> Cow<'static, str> {
    if s.len() <= MAX_VALUE {
        return s;
    }
    let mut end = MAX_VALUE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(s[..end].to_string())
}

fn bounded_attr(a: Attr) -> Attr {
    match a {
        Attr::Str(s) => Attr::Str(bounded(s)),
        other => other,
    }
}

/// Where and how much to trace (`--otlp-endpoint`, `--trace-sampling`).
#[derive(Clone, Debug)]
pub struct TraceConfig {
    /// The collector's OTLP/HTTP traces URL (`…/v1/traces`).
    pub endpoint: Uri,
    /// The share of traces begun here that are recorded, 0 to 1. A request carrying a
    /// `traceparent` follows the agent's decision instead (parent-based sampling).
    pub sampling: f64,
    /// The `service.name` of the spans.
    pub service: String,
    /// More resource attributes (`OTEL_RESOURCE_ATTRIBUTES`: the pod, its namespace).
    pub resource: Vec<(String, String)>,
}

impl TraceConfig {
    /// The traces URL from `--otlp-endpoint`, a base URL: OTLP/HTTP's `/v1/traces` is added to
    /// its path, as every SDK does with `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(base: &str) -> anyhow::Result<Uri> {
        let url = format!("{}/v1/traces", base.trim_end_matches('/'));
        Self::traces_endpoint(&url).map_err(|e| {
            anyhow::anyhow!(
                "{}",
                e.to_string()
                    .replace("--otlp-traces-endpoint", "--otlp-endpoint")
            )
        })
    }

    /// The traces URL from `--otlp-traces-endpoint`, used as it is (as
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is).
    pub fn traces_endpoint(url: &str) -> anyhow::Result<Uri> {
        let uri: Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("--otlp-traces-endpoint {url:?} is not a URL: {e}"))?;
        anyhow::ensure!(
            uri.scheme_str() == Some("http") && uri.authority().is_some() && uri.query().is_none(),
            "--otlp-traces-endpoint {url:?} must be an http:// URL of a collector (OTLP/HTTP, no \
             query; put a collector beside the pod to forward over TLS)"
        );
        Ok(uri)
    }

    /// `OTEL_RESOURCE_ATTRIBUTES`: `key=value` pairs separated by commas.
    pub fn resource_attributes(text: &str) -> Vec<(String, String)> {
        text.split(',')
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                let k = k.trim();
                (!k.is_empty()).then(|| (k.to_string(), v.trim().to_string()))
            })
            .collect()
    }
}

/// The flags that turn tracing on, the same for the sidecar and the operator. Their
/// environment variables are OpenTelemetry's own, as every SDK reads them.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TraceArgs {
    /// Export OpenTelemetry traces to this collector, over OTLP/HTTP with JSON
    /// (`http://collector:4318`; `/v1/traces` is added to a URL without a path). Off without
    /// it. A collector that is slow or gone costs dropped spans, counted in
    /// tollgate_trace_spans_dropped_total, never a request's time.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The collector's traces URL, used as it is (`http://collector:4318/v1/traces`): instead
    /// of --otlp-endpoint, as OpenTelemetry's signal-specific variable is.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    pub otlp_traces_endpoint: Option<String>,
    /// The share of requests whose trace begins here that are traced, 0 to 1. A request with a
    /// `traceparent` follows its sender's sampling decision instead.
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG", default_value_t = 1.0, value_parser = parse_ratio)]
    pub trace_sampling: f64,
    /// The spans' `service.name`.
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub trace_service_name: Option<String>,
    /// More attributes of the spans' resource, `key=value,...` (the pod and its namespace).
    #[arg(long, env = "OTEL_RESOURCE_ATTRIBUTES")]
    pub trace_resource_attributes: Option<String>,
}

/// A sampling ratio, 0 to 1 (`--trace-sampling`, the operator's `--sidecar-trace-sampling`).
pub fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a ratio from 0 to 1")),
    }
}

impl TraceArgs {
    /// The tracer these flags ask for: off without `--otlp-endpoint`. `defaults` are resource
    /// attributes (the pod) kept where the flags give none of that key.
    pub fn tracer(
        &self,
        service: &str,
        defaults: &[(&str, String)],
        metrics: TraceMetrics,
    ) -> anyhow::Result<Tracer> {
        let endpoint = match (&self.otlp_traces_endpoint, &self.otlp_endpoint) {
            (Some(url), _) => TraceConfig::traces_endpoint(url)?,
            (None, Some(base)) => TraceConfig::endpoint(base)?,
            (None, None) => return Ok(Tracer::off()),
        };
        let mut resource = self
            .trace_resource_attributes
            .as_deref()
            .map(TraceConfig::resource_attributes)
            .unwrap_or_default();
        for (key, value) in defaults {
            if !resource.iter().any(|(k, _)| k == key) {
                resource.push((key.to_string(), value.clone()));
            }
        }
        // OTEL_SERVICE_NAME, else a service.name among the resource attributes, as the SDKs
        // read them; else this binary's.
        let named = resource
            .iter()
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v.clone());
        let cfg = TraceConfig {
            endpoint,
            sampling: self.trace_sampling,
            service: self
                .trace_service_name
                .clone()
                .or(named)
                .unwrap_or_else(|| service.to_string()),
            resource,
        };
        tracing::info!(endpoint = %cfg.endpoint, sampling = cfg.sampling, "exporting traces");
        Ok(Tracer::start(cfg, metrics))
    }
}

/// Starts request traces and hands them to the exporter. Cheap to clone; off by default.
#[derive(Clone, Default)]
pub struct Tracer(Option<Arc<Export>>);

struct Export {
    /// A trace begun here is recorded when its id's low 64 bits are below this.
    threshold: u64,
    queue: mpsc::Sender<Vec<SpanData>>,
    /// Spans handed over and not yet taken by the exporter.
    queued: Arc<AtomicUsize>,
    metrics: TraceMetrics,
}

impl Tracer {
    /// No tracing: every request's trace is `None`.
    pub fn off() -> Tracer {
        Tracer(None)
    }

    /// Exports to `cfg.endpoint` from a thread of its own.
    pub fn start(cfg: TraceConfig, metrics: TraceMetrics) -> Tracer {
        let (tx, rx) = mpsc::channel(QUEUE);
        let sampling = cfg.sampling.clamp(0.0, 1.0);
        let threshold = if sampling >= 1.0 {
            u64::MAX
        } else {
            (sampling * u64::MAX as f64) as u64
        };
        let queued = Arc::new(AtomicUsize::new(0));
        // On a thread of its own: encoding and sending a batch never takes a request's worker.
        let (q, m) = (queued.clone(), metrics.clone());
        let spawned = std::thread::Builder::new()
            .name("tollgate-traces".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(export(cfg, rx, q, m)),
                    Err(e) => tracing::error!(error = %e, "cannot start the trace exporter"),
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the trace exporter");
        }
        Tracer(Some(Arc::new(Export {
            threshold,
            queue: tx,
            queued,
            metrics,
        })))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// The trace of a request arriving with `headers`, if it is to be recorded: the agent's
    /// `traceparent` says whether, else the sampling ratio does.
    pub fn request(&self, headers: &HeaderMap, kind: SpanKind) -> Option<Arc<RequestTrace>> {
        let export = self.0.as_ref()?;
        // Trace Context allows one `traceparent`: two are none.
        let mut all = headers.get_all(TRACEPARENT).iter();
        let parent = match (all.next(), all.next()) {
            (Some(v), None) => TraceParent::parse(v.as_bytes()),
            _ => None,
        };
        let (trace_id, parent_id) = match parent {
            Some(p) if !p.sampled => return None,
            Some(p) => (p.trace_id, Some(p.span_id)),
            None => {
                let id = random_trace_id();
                let low = u64::from_be_bytes(id[8..].try_into().expect("8 bytes"));
                if export.threshold != u64::MAX && low >= export.threshold {
                    return None;
                }
                (id, None)
            }
        };
        Some(Arc::new(RequestTrace {
            trace_id,
            root: random_span_id(),
            parent: parent_id,
            kind,
            started: Instant::now(),
            started_unix: unix_nanos(SystemTime::now()),
            state: Mutex::new(State {
                name: Cow::Borrowed("request"),
                attributes: Vec::new(),
                error: None,
                ended: None,
                children: Vec::new(),
                omitted: 0,
            }),
            export: export.clone(),
        }))
    }
}

/// A W3C `traceparent`: `00-<trace id>-<parent id>-<flags>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceParent {
    /// Reads a `traceparent` value; `None` for anything Trace Context says to ignore (a bad
    /// length, an all-zero id, version `ff`, upper-case hex). A later version is read by its
    /// first four fields, as the spec asks.
    pub fn parse(v: &[u8]) -> Option<TraceParent> {
        if v.len() < 55 || (v.len() > 55 && v[55] != b'-') {
            return None;
        }
        let version = hex::<1>(&v[0..2])?;
        if version[0] == 0xff || (version[0] == 0 && v.len() != 55) {
            return None;
        }
        if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let trace_id = hex::<16>(&v[3..35])?;
        let span_id = hex::<8>(&v[36..52])?;
        let flags = hex::<1>(&v[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            sampled: flags[0] & 1 == 1,
        })
    }

    pub fn header(&self) -> HeaderValue {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        push_hex(&mut s, &self.trace_id);
        s.push('-');
        push_hex(&mut s, &self.span_id);
        s.push_str(if self.sampled { "-01" } else { "-00" });
        HeaderValue::from_str(&s).expect("hex is a valid header value")
    }
}

fn hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn push_hex(s: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
}

fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

/// OTLP's span kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// An attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Str(Cow<'static, str>),
    Int(i64),
    Bool(bool),
}

impl From<&'static str> for Attr {
    fn from(s: &'static str) -> Self {
        Attr::Str(Cow::Borrowed(s))
    }
}

impl From<String> for Attr {
    fn from(s: String) -> Self {
        Attr::Str(Cow::Owned(s))
    }
}

impl From<i64> for Attr {
    fn from(n: i64) -> Self {
        Attr::Int(n)
    }
}

impl From<u64> for Attr {
    fn from(n: u64) -> Self {
        Attr::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<bool> for Attr {
    fn from(b: bool) -> Self {
        Attr::Bool(b)
    }
}

pub type Attributes = Vec<(&'static str, Attr)>;

/// One finished span.
#[derive(Clone, Debug)]
pub struct SpanData {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    pub start: u64,
    pub end: u64,
    pub attributes: Attributes,
    /// An error's description; `None` leaves the status unset.
    pub error: Option<String>,
}

/// One request's trace: its span, begun when the request arrived, and its children as they
/// finish. Exported when the last handle is dropped (the request answered, or its client gone).
pub struct RequestTrace {
    trace_id: [u8; 16],
    root: [u8; 8],
    parent: Option<[u8; 8]>,
    kind: SpanKind,
    started: Instant,
    started_unix: u64,
    state: Mutex<State>,
    export: Arc<Export>,
}

struct State {
    name: Cow<'static, str>,
    attributes: Attributes,
    error: Option<String>,
    ended: Option<Instant>,
    children: Vec<SpanData>,
    /// Children past [`MAX_CHILDREN`], not kept.
    omitted: u64,
}

/// A child span begun, to be ended with [`RequestTrace::end`]: its id is known at once, to go
/// on in a `traceparent`.
pub struct Begun {
    pub id: [u8; 8],
    pub parent: [u8; 8],
    started: Instant,
}

impl RequestTrace {
    pub fn trace_id(&self) -> String {
        to_hex(&self.trace_id)
    }

    /// Whether the trace was begun by the agent (its `traceparent`), not here.
    pub fn has_parent(&self) -> bool {
        self.parent.is_some()
    }

    /// Names the request's span (`tools/call get_weather`).
    pub fn name(&self, name: impl Into<Cow<'static, str>>) {
        self.state.lock().name = bounded(name.into());
    }

    /// Sets attributes of the request's span (a later value for a key replaces the earlier).
    pub fn set(&self, attributes: impl IntoIterator<Item = (&'static str, Attr)>) {
        let mut state = self.state.lock();
        for (k, v) in attributes {
            let v = bounded_attr(v);
            match state.attributes.iter_mut().find(|(key, _)| *key == k) {
                Some(slot) => slot.1 = v,
                None => state.attributes.push((k, v)),
            }
        }
    }

    /// Marks the request's span as failed.
    pub fn error(&self, description: impl Into<String>) {
        self.state.lock().error = Some(bounded(Cow::Owned(description.into())).into_owned());
    }

    /// Ends the request's span now (its spans are sent when the last handle goes).
    pub fn end_request(&self) {
        self.state.lock().ended.get_or_insert_with(Instant::now);
    }

    /// Begins a child of the request's span, or of `parent`.
    pub fn begin(&self, parent: Option<[u8; 8]>) -> Begun {
        Begun {
            id: random_span_id(),
            parent: parent.unwrap_or(self.root),
            started: Instant::now(),
        }
    }

    /// The `traceparent` a child's downstream call carries.
    pub fn traceparent(&self, child: &Begun) -> HeaderValue {
        TraceParent {
            trace_id: self.trace_id,
            span_id: child.id,
            sampled: true,
        }
        .header()
    }

    /// Ends a child begun with [`begin`](Self::begin).
    pub fn end(
        &self,
        begun: Begun,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        attributes: Attributes,
        error: Option<String>,
    ) {
        let span = SpanData {
            trace_id: self.trace_id,
            span_id: begun.id,
            parent: Some(begun.parent),
            name: bounded(name.into()),
            kind,
            start: self.unix(begun.started),
            end: self.unix(Instant::now()),
            attributes: attributes
                .into_iter()
                .map(|(k, v)| (k, bounded_attr(v)))
                .collect(),
            error: error.map(|e| bounded(Cow::Owned(e)).into_owned()),
        };
        let mut state = self.state.lock();
        if state.children.len() < MAX_CHILDREN {
            state.children.push(span);
        } else {
            state.omitted += 1;
        }
    }

    /// A child that ran from `started` to now.
    pub fn child(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        started: Instant,
        attributes: Attributes,
        error: Option<String>,
    ) -> [u8; 8] {
        let mut begun = self.begin(None);
        begun.started = started;
        let id = begun.id;
        self.end(begun, name, kind, attributes, error);
        id
    }

    fn unix(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.started);
        self.started_unix
            .saturating_add(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }
}

impl Drop for RequestTrace {
    fn drop(&mut self) {
        let state = std::mem::replace(
            self.state.get_mut(),
            State {
                name: Cow::Borrowed(""),
                attributes: Vec::new(),
                error: None,
                ended: None,
                children: Vec::new(),
                omitted: 0,
            },
        );
        let end = self.unix(state.ended.unwrap_or_else(Instant::now));
        let mut attributes = state.attributes;
        if state.omitted > 0 {
            attributes.push(("tollgate.spans.omitted", Attr::from(state.omitted)));
        }
        let mut spans = state.children;
        spans.push(SpanData {
            trace_id: self.trace_id,
            span_id: self.root,
            parent: self.parent,
            name: state.name,
            kind: self.kind,
            start: self.started_unix,
            end,
            attributes,
            error: state.error,
        });
        let n = spans.len();
        let export = &self.export;
        let queued = export.queued.fetch_add(n, Ordering::AcqRel) + n;
        let dropped = if queued > MAX_QUEUED_SPANS {
            Some(&export.metrics.dropped_queue_full)
        } else {
            match export.queue.try_send(spans) {
                Ok(()) => None,
                Err(mpsc::error::TrySendError::Full(_)) => Some(&export.metrics.dropped_queue_full),
                // The exporter is gone (its thread could not start).
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    Some(&export.metrics.dropped_export_failed)
                }
            }
        };
        if let Some(counter) = dropped {
            export.queued.fetch_sub(n, Ordering::AcqRel);
            counter.inc_by(n as u64);
        }
    }
}

tokio::task_local! {
    static CURRENT: Arc<RequestTrace>;
}

/// `fut`, run with `trace` as its task's current trace (what [`current`] finds).
pub fn scope<F: Future>(trace: Arc<RequestTrace>, fut: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(trace, fut)
}

/// `fut` with `trace` as its current trace, if there is one: what a task spawned for a
/// request runs, so its spans join the request's.
pub fn within<F>(trace: Option<Arc<RequestTrace>>, fut: F) -> impl Future<Output = F::Output>
where
    F: Future,
{
    match trace {
        Some(t) => futures_util::future::Either::Left(CURRENT.scope(t, fut)),
        None => futures_util::future::Either::Right(fut),
    }
}

/// The trace of the request this task serves, if it is recorded.
pub fn current() -> Option<Arc<RequestTrace>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// The exporter: batches what requests hand over and posts each batch to the collector.
async fn export(
    cfg: TraceConfig,
    mut rx: mpsc::Receiver<Vec<SpanData>>,
    queued: Arc<AtomicUsize>,
    metrics: TraceMetrics,
) {
    let resource = resource(&cfg);
    let mut collector = Collector::new(&cfg.endpoint);
    let mut batch: Vec<SpanData> = Vec::with_capacity(MAX_BATCH + MAX_CHILDREN + 1);
    loop {
        let Some(first) = rx.recv().await else { return };
        queued.fetch_sub(first.len(), Ordering::AcqRel);
        batch.extend(first);
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(more)) => {
                    queued.fetch_sub(more.len(), Ordering::AcqRel);
                    batch.extend(more);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let body = Bytes::from(encode(&resource, &batch));
        batch.clear();
        match collector.post(body).await {
            Ok(()) => {
                metrics.exported.inc_by(n);
            }
            Err(why) => {
                metrics.dropped_export_failed.inc_by(n);
                tracing::debug!(endpoint = %cfg.endpoint, spans = n, %why, "spans not exported");
            }
        }
    }
}

/// One HTTP/1.1 connection to the collector, kept between exports. An export that fails or
/// takes longer than [`EXPORT_TIMEOUT`] takes the connection down with it, and what it was
/// still sending: nothing outlives its export.
struct Collector {
    endpoint: Uri,
    address: String,
    conn: Option<(
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        tokio::task::JoinHandle<()>,
    )>,
}

impl Collector {
    fn new(endpoint: &Uri) -> Self {
        let authority = endpoint.authority().expect("checked when configured");
        let address = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        Collector {
            endpoint: endpoint.clone(),
            address,
            conn: None,
        }
    }

    async fn post(&mut self, body: Bytes) -> Result<(), String> {
        let outcome = tokio::time::timeout(EXPORT_TIMEOUT, self.exchange(body)).await;
        let failed = match outcome {
            Ok(Ok(status)) if status.is_success() => return Ok(()),
            Ok(Ok(status)) => format!("the collector answered {status}"),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {EXPORT_TIMEOUT:?}"),
        };
        self.close();
        Err(failed)
    }

    fn close(&mut self) {
        if let Some((_, driver)) = self.conn.take() {
            driver.abort();
        }
    }

    async fn exchange(&mut self, body: Bytes) -> Result<http::StatusCode, String> {
        if self.conn.as_ref().is_none_or(|(s, _)| s.is_closed()) {
            self.close();
            let tcp = tokio::net::TcpStream::connect(&self.address)
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", self.address))?;
            let _ = tcp.set_nodelay(true);
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
            let driver = tokio::spawn(async move {
                let _ = conn.await;
            });
            self.conn = Some((sender, driver));
        }
        let (sender, _) = self.conn.as_mut().expect("connected above");
        sender.ready().await.map_err(|e| e.to_string())?;
        let path = self
            .endpoint
            .path_and_query()
            .map_or("/v1/traces", |p| p.as_str());
        let req = Request::post(path)
            .header(
                http::header::HOST,
                self.endpoint.authority().expect("checked").as_str(),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        // Read to its end, so the connection is kept for the next batch.
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map_err(|e| e.to_string())?;
        Ok(status)
    }
}

fn resource(cfg: &TraceConfig) -> Value {
    let mut attributes = vec![
        kv("service.name", &Attr::Str(cfg.service.clone().into())),
        kv("service.version", &Attr::from(env!("CARGO_PKG_VERSION"))),
        kv("telemetry.sdk.name", &Attr::from("tollgate")),
        kv("telemetry.sdk.language", &Attr::from("rust")),
    ];
    for (k, v) in &cfg.resource {
        if k != "service.name" {
            attributes.push(json!({"key": k, "value": {"stringValue": v}}));
        }
    }
    json!({ "attributes": attributes })
}

fn kv(key: &str, value: &Attr) -> Value {
    let value = match value {
        Attr::Str(s) => json!({ "stringValue": s }),
        // OTLP JSON writes 64-bit integers as strings.
        Attr::Int(n) => json!({ "intValue": n.to_string() }),
        Attr::Bool(b) => json!({ "boolValue": b }),
    };
    json!({ "key": key, "value": value })
}

/// One export request in OTLP/HTTP's JSON encoding (ids in hex, times as decimal strings),
/// written straight out: `resource` is the encoded resource, the same for every export.
pub fn encode(resource: &Value, spans: &[SpanData]) -> Vec<u8> {
    let mut out = Vec::with_capacity(512 + 384 * spans.len());
    out.extend_from_slice(br#"{"resourceSpans":[{"resource":"#);
    serde_json::to_writer(&mut out, resource).expect("writing to a Vec cannot fail");
    out.extend_from_slice(br#","scopeSpans":[{"scope":{"name":"tollgate","version":"#);
    json_str(&mut out, env!("CARGO_PKG_VERSION"));
    out.extend_from_slice(br#"},"spans":["#);
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"traceId":""#);
        push_hex_bytes(&mut out, &s.trace_id);
        out.extend_from_slice(br#"","spanId":""#);
        push_hex_bytes(&mut out, &s.span_id);
        out.push(b'"');
        if let Some(parent) = s.parent {
            out.extend_from_slice(br#","parentSpanId":""#);
            push_hex_bytes(&mut out, &parent);
            out.push(b'"');
        }
        out.extend_from_slice(br#","name":"#);
        json_str(&mut out, &s.name);
        out.extend_from_slice(br#","kind":"#);
        out.extend_from_slice(itoa::Buffer::new().format(s.kind as u8).as_bytes());
        out.extend_from_slice(br#","startTimeUnixNano":""#);
        out.extend_from_slice(itoa::Buffer::new().format(s.start).as_bytes());
        out.extend_from_slice(br#"","endTimeUnixNano":""#);
        out.extend_from_slice(itoa::Buffer::new().format(s.end.max(s.start)).as_bytes());
        out.extend_from_slice(br#"","attributes":["#);
        for (j, (k, v)) in s.attributes.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            write_kv(&mut out, k, v);
        }
        out.push(b']');
        if let Some(e) = &s.error {
            out.extend_from_slice(br#","status":{"code":2,"message":"#);
            json_str(&mut out, e);
            out.push(b'}');
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}]}]}");
    out
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("writing to a Vec cannot fail");
}

fn push_hex_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize]);
        out.push(DIGITS[(b & 15) as usize]);
    }
}

fn write_kv(out: &mut Vec<u8>, key: &str, value: &Attr) {
    out.extend_from_slice(br#"{"key":"#);
    json_str(out, key);
    out.extend_from_slice(br#","value":{"#);
    match value {
        Attr::Str(s) => {
            out.extend_from_slice(br#""stringValue":"#);
            json_str(out, s);
        }
        // OTLP JSON writes 64-bit integers as strings.
        Attr::Int(n) => {
            out.extend_from_slice(br#""intValue":""#);
            out.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes());
            out.push(b'"');
        }
        Attr::Bool(b) => {
            out.extend_from_slice(if *b {
                br#""boolValue":true"#
            } else {
                br#""boolValue":false"#
            });
        }
    }
    out.extend_from_slice(b"}}");
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

thread_local! {
    /// splitmix64, seeded once per thread from the system's randomness: ids need to be
    /// unique, not secret, and a request must not pay for a system call.
    static RNG: Cell<u64> = Cell::new(seed());
}

static SEEDS: AtomicU64 = AtomicU64::new(0);

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    // Two threads seeded alike (no randomness to be had) still differ.
    u64::from_le_bytes(bytes) ^ SEEDS.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
}

fn next_u64() -> u64 {
    RNG.with(|state| {
        let s = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn random_trace_id() -> [u8; 16] {
    loop {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&next_u64().to_be_bytes());
        id[8..].copy_from_slice(&next_u64().to_be_bytes());
        if id != [0; 16] {
            return id;
        }
    }
}

fn random_span_id() -> [u8; 8] {
    loop {
        let id = next_u64().to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_is_read_as_trace_context_writes_it() {
        let p = TraceParent::parse(GOOD.as_bytes()).unwrap();
        assert!(p.sampled);
        assert_eq!(to_hex(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(to_hex(&p.span_id), "00f067aa0ba902b7");
        assert_eq!(p.header().to_str().unwrap(), GOOD);
        let unsampled = GOOD.replace("-01", "-00");
        assert!(!TraceParent::parse(unsampled.as_bytes()).unwrap().sampled);
    }

    #[test]
    fn a_traceparent_trace_context_says_to_ignore_is_not_read() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad:?}");
        }
        // A later version is read by the fields it shares with 00.
        let later = format!("{}-more", GOOD.replacen("00", "01", 1));
        assert!(TraceParent::parse(later.as_bytes()).is_some());
    }

    #[test]
    fn the_endpoint_gets_the_traces_path_and_the_traces_endpoint_is_used_as_it_is() {
        let e = |s| TraceConfig::endpoint(s).map(|u| u.to_string());
        assert_eq!(
            e("http://collector:4318").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            e("http://collector:4318/").unwrap(),
            "http://collector:4318/v1/traces"
        );
        // A path is a prefix, as in every SDK.
        assert_eq!(
            e("http://collector:4318/otlp").unwrap(),
            "http://collector:4318/otlp/v1/traces"
        );
        assert_eq!(
            TraceConfig::traces_endpoint("http://collector:4318/custom/traces")
                .unwrap()
                .to_string(),
            "http://collector:4318/custom/traces"
        );
        assert!(TraceConfig::traces_endpoint("https://collector:4318/v1/traces").is_err());
        assert!(e("https://collector:4318").is_err());
        assert!(e("collector:4318").is_err());
    }

    #[test]
    fn resource_attributes_are_read_as_the_sdks_read_them() {
        assert_eq!(
            TraceConfig::resource_attributes("k8s.pod.name=web-0, k8s.namespace.name = shop,,bad"),
            vec![
                ("k8s.pod.name".to_string(), "web-0".to_string()),
                ("k8s.namespace.name".to_string(), "shop".to_string()),
            ]
        );
    }

    fn tracer(sampling: f64) -> (Tracer, mpsc::Receiver<Vec<SpanData>>, TraceMetrics) {
        let (tx, rx) = mpsc::channel(2);
        let metrics = TraceMetrics::default();
        let threshold = if sampling >= 1.0 {
            u64::MAX
        } else {
            (sampling * u64::MAX as f64) as u64
        };
        let t = Tracer(Some(Arc::new(Export {
            threshold,
            queue: tx,
            queued: Arc::new(AtomicUsize::new(0)),
            metrics: metrics.clone(),
        })));
        (t, rx, metrics)
    }

    #[test]
    fn the_agents_sampling_decision_is_followed_and_the_ratio_decides_the_rest() {
        let (t, _rx, _) = tracer(0.0);
        let mut h = HeaderMap::new();
        assert!(t.request(&h, SpanKind::Server).is_none(), "ratio 0");
        h.insert(TRACEPARENT, HeaderValue::from_static(GOOD));
        let trace = t.request(&h, SpanKind::Server).expect("a sampled parent");
        assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        );
        assert!(
            t.request(&h, SpanKind::Server).is_none(),
            "unsampled parent"
        );
        let (t, _rx, _) = tracer(0.25);
        let sampled = (0..4000)
            .filter(|_| t.request(&HeaderMap::new(), SpanKind::Server).is_some())
            .count();
        assert!((800..1200).contains(&sampled), "{sampled} of 4000 at 0.25");
        assert!(Tracer::off().request(&h, SpanKind::Server).is_none());
    }

    #[test]
    fn a_requests_spans_are_handed_over_once_with_the_request_span_as_parent() {
        let (t, mut rx, _) = tracer(1.0);
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(GOOD));
        let trace = t.request(&h, SpanKind::Server).unwrap();
        trace.name("tools/call add");
        trace.set([("gen_ai.tool.name", Attr::from("add"))]);
        let up = trace.begin(None);
        let header = trace.traceparent(&up);
        let up_id = up.id;
        trace.end(up, "POST", SpanKind::Client, vec![], None);
        drop(trace);
        let spans = rx.try_recv().unwrap();
        assert_eq!(spans.len(), 2);
        let root = spans.last().unwrap();
        assert_eq!(root.name, "tools/call add");
        assert_eq!(to_hex(&root.parent.unwrap()), "00f067aa0ba902b7");
        assert_eq!(spans[0].parent, Some(root.span_id));
        let sent = TraceParent::parse(header.as_bytes()).unwrap();
        assert_eq!((sent.trace_id, sent.span_id), (root.trace_id, up_id));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_full_queue_drops_and_counts_rather_than_waits() {
        let (t, _rx, metrics) = tracer(1.0);
        for _ in 0..5 {
            let trace = t.request(&HeaderMap::new(), SpanKind::Server).unwrap();
            trace.child("x", SpanKind::Internal, Instant::now(), vec![], None);
        }
        // Two requests fit the queue; three did not, two spans each.
        assert_eq!(metrics.dropped_queue_full.get(), 6);
    }

    #[test]
    fn a_request_keeps_a_bounded_number_of_spans_and_says_how_many_it_left_out() {
        let (t, mut rx, _) = tracer(1.0);
        let trace = t.request(&HeaderMap::new(), SpanKind::Server).unwrap();
        for _ in 0..MAX_CHILDREN + 100 {
            trace.child(
                "tollgate.decide",
                SpanKind::Internal,
                Instant::now(),
                vec![],
                None,
            );
        }
        drop(trace);
        let spans = rx.try_recv().unwrap();
        assert_eq!(spans.len(), MAX_CHILDREN + 1);
        let root = spans.last().unwrap();
        assert!(
            root.attributes
                .contains(&("tollgate.spans.omitted", Attr::Int(100)))
        );
    }

    #[test]
    fn spans_waiting_for_the_exporter_are_bounded_by_count_not_by_requests() {
        let (tx, _rx) = mpsc::channel(QUEUE);
        let metrics = TraceMetrics::default();
        let export = Arc::new(Export {
            threshold: u64::MAX,
            queue: tx,
            queued: Arc::new(AtomicUsize::new(0)),
            metrics: metrics.clone(),
        });
        let t = Tracer(Some(export.clone()));
        let mut handed = 0;
        for _ in 0..QUEUE {
            let trace = t.request(&HeaderMap::new(), SpanKind::Server).unwrap();
            for _ in 0..MAX_CHILDREN {
                trace.child("x", SpanKind::Internal, Instant::now(), vec![], None);
            }
            handed += MAX_CHILDREN + 1;
        }
        let queued = export.queued.load(Ordering::Acquire);
        assert!(queued <= MAX_QUEUED_SPANS, "{queued}");
        assert_eq!(
            queued as u64 + metrics.dropped_queue_full.get(),
            handed as u64
        );
    }

    #[test]
    fn two_traceparents_are_none_as_trace_context_says() {
        let (t, _rx, _) = tracer(1.0);
        let mut h = HeaderMap::new();
        h.append(TRACEPARENT, HeaderValue::from_static(GOOD));
        h.append(
            TRACEPARENT,
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        let trace = t.request(&h, SpanKind::Server).unwrap();
        assert!(!trace.has_parent());
        assert_ne!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn names_and_values_from_agents_are_cut_to_a_bound() {
        let (t, mut rx, _) = tracer(1.0);
        let trace = t.request(&HeaderMap::new(), SpanKind::Server).unwrap();
        let long = "é".repeat(MAX_VALUE);
        trace.name(format!("tools/call {long}"));
        trace.set([("gen_ai.tool.name", Attr::from(long.clone()))]);
        trace.child(
            "x",
            SpanKind::Internal,
            Instant::now(),
            vec![("a", Attr::from(long))],
            Some("e".repeat(4096)),
        );
        drop(trace);
        for span in rx.try_recv().unwrap() {
            assert!(span.name.len() <= MAX_VALUE);
            assert!(span.error.as_ref().is_none_or(|e| e.len() <= MAX_VALUE));
            for (_, v) in &span.attributes {
                if let Attr::Str(s) = v {
                    assert!(s.len() <= MAX_VALUE && s.len() > MAX_VALUE - 4);
                }
            }
        }
    }

    #[test]
    fn spans_are_encoded_as_otlp_json() {
        let span = SpanData {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent: Some([3; 8]),
            name: "tools/call add".into(),
            kind: SpanKind::Server,
            start: 10,
            end: 20,
            attributes: vec![
                ("a", Attr::from("b")),
                ("n", Attr::Int(7)),
                ("t", Attr::Bool(true)),
            ],
            error: Some("denied".into()),
        };
        let v: Value = serde_json::from_slice(&encode(&json!({}), &[span])).unwrap();
        let s = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "01010101010101010101010101010101");
        assert_eq!(s["parentSpanId"], "0303030303030303");
        assert_eq!(s["kind"], 2);
        assert_eq!(s["startTimeUnixNano"], "10");
        assert_eq!(s["attributes"][1]["value"]["intValue"], "7");
        assert_eq!(s["status"]["code"], 2);
    }
}
