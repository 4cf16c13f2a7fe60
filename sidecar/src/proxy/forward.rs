//! Stages three and four: forwarding what was allowed to the MCP server, and passing its
//! answer back through the [`Inspector`] (tool lists filtered, calls settled), as JSON read
//! whole or as an SSE stream event by event. Hop-by-hop fields stay on their hop.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;
use tokio::sync::mpsc;
use tollgate_api::Identity;

use super::batch::merge_answers;
use super::legacy::{LegacySession, endpoint_key};
use super::refusal::Refusal;
use super::{Onward, Proxy, RequestKind, Resp, full, json_response};
use crate::http::client::Outgoing;
use crate::http::media::ContentType;
use crate::mcp::sse::message_event;
use crate::policy::Enforced;
use crate::proxy::calls::Calls;
use crate::proxy::inspect::Inspector;
use crate::proxy::stream::SseBody;
use crate::telemetry::trace::{self, Attr, Begun, RequestTrace, SpanKind};

const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// An upstream call on its way: when it left, and its span if traced.
struct Sent {
    at: Instant,
    traced: Option<(Arc<RequestTrace>, Begun)>,
}

impl Proxy {
    /// The upstream request's head, from the client's: hop-by-hop fields dropped, the
    /// server's `Host`, and the forwarding fields. The path and query are the client's.
    pub(super) fn upstream_head(
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

    /// The upstream call about to be sent: when it is traced, its span begun and its context in
    /// `traceparent` (the agent's `tracestate` goes on as it came).
    fn send_traced(&self, up: &mut http::request::Parts) -> Sent {
        let traced = self.tracer.is_on().then(trace::current).flatten().map(|t| {
            let begun = t.begin(None);
            up.headers.insert(trace::TRACEPARENT, t.traceparent(&begun));
            // A trace begun here has no vendor state to carry (Trace Context: a `tracestate`
            // without a valid `traceparent` is discarded).
            if !t.has_parent() {
                up.headers.remove(TRACESTATE);
            }
            (t, begun)
        });
        Sent {
            at: Instant::now(),
            traced,
        }
    }

    /// The upstream call answered (its head) or failed: its metric, and its span.
    fn sent<B>(
        &self,
        sent: Sent,
        up: &http::request::Parts,
        resp: &Result<Response<B>, crate::http::client::Error>,
    ) {
        // A request the server never answered is an upstream error, not a fast answer.
        if resp.is_ok() {
            self.metrics.upstream(sent.at.elapsed().as_secs_f64());
        }
        let Some((t, begun)) = sent.traced else {
            return;
        };
        // The server's host and port and the path: no credentials, no query (OpenTelemetry's
        // conventions redact them; `--upstream` may carry either).
        let host = self.cfg.upstream.host().unwrap_or_default();
        let port = self.cfg.upstream.port_u16().unwrap_or(80);
        let mut attrs = vec![
            (
                "http.request.method",
                Attr::Str(up.method.to_string().into()),
            ),
            (
                "url.full",
                Attr::Str(format!("http://{host}:{port}{}", up.uri.path()).into()),
            ),
            ("server.address", Attr::Str(host.to_string().into())),
            ("server.port", Attr::from(u64::from(port))),
        ];
        let error = match resp {
            Ok(r) => {
                attrs.push((
                    "http.response.status_code",
                    Attr::from(u64::from(r.status().as_u16())),
                ));
                r.status()
                    .is_server_error()
                    .then(|| format!("answered {}", r.status()))
            }
            Err(e) => {
                attrs.push(("error.type", Attr::from("unreachable")));
                Some(e.to_string())
            }
        };
        t.end(begun, up.method.to_string(), SpanKind::Client, attrs, error);
    }

    /// A session the server issued (its answer's `Mcp-Session-Id`) is one `scope: session`
    /// may count in.
    fn note_session(&self, parts: &http::response::Parts, declares_urls: bool) {
        if parts.status.is_success()
            && let Some(id) = super::header_str(&parts.headers, super::MCP_SESSION_ID)
        {
            self.bound.bind(id, declares_urls);
        }
    }

    /// Sends a request with its body read upstream and passes its answer back through the
    /// inspector; `extra` are the proxy's own answers to the messages it refused, merged in.
    pub(super) async fn forward(
        &self,
        onward: Onward,
        extra: Vec<Value>,
        mut inspector: Inspector,
    ) -> Resp {
        let Onward {
            parts,
            body,
            peer,
            start,
            kind,
            declares_urls,
        } = onward;
        let mut up = self.upstream_head(parts, peer);
        let sent = self.send_traced(&mut up);
        let resp = self.client.send(&up, body).await;
        self.sent(sent, &up, &resp);
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                if e.never_sent() {
                    inspector.refund_all();
                }
                return self.bad_gateway(&e);
            }
        };
        self.metrics
            .request(kind.as_str(), start.elapsed().as_secs_f64());
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        self.note_session(&parts, declares_urls);
        // A 4xx is the server refusing the request as a whole, before any tool ran, unless its
        // body answers a call: the Python SDK answers a tool's own error in the 2026-07-28 era
        // with a 400 carrying that error, after the tool ran. So a 4xx body is read, the calls
        // it answers keep their counts, and only the others are given back.
        let refused = parts.status.is_client_error();
        let content = ContentType::of(&parts.headers);
        if content == ContentType::EventStream && !refused {
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
        // Where tools are pinned, any answer may carry a list (a server can answer a list's id
        // on another request's response): every answer but SSE, read above, is read.
        let pinning = inspector.pins_lists() && content != ContentType::Absent;
        let needs_look = !extra.is_empty()
            || must_read
            || pinning
            || (refused && inspector.is_tracking())
            || (content == ContentType::Json && inspector.is_tracking());
        if !needs_look {
            return Response::from_parts(parts, body.boxed());
        }
        let bytes = match Limited::new(body, MAX_ANSWER).collect().await {
            Ok(c) => c.to_bytes(),
            // Cut off mid-answer: the calls keep their counts (they may have run).
            Err(e) => return self.bad_gateway(&e),
        };
        if content != ContentType::Json
            && !bytes.is_empty()
            && (must_read || inspector.may_hide_a_list(&bytes))
        {
            // A tool list in a form the proxy does not read: a client might read it anyway.
            let why = format!("its answer's Content-Type is {content:?}, not JSON or SSE");
            return Refusal::Withheld(why).into_response();
        }
        let text = match std::str::from_utf8(&bytes) {
            Ok(text) => text,
            Err(_) => {
                return match inspector.unreadable(&bytes, "its answer is not UTF-8") {
                    Some(error) if extra.is_empty() => json_text_response(parts, error),
                    Some(_) => Refusal::Withheld("its answer is not UTF-8".into()).into_response(),
                    None => Response::from_parts(parts, full(bytes)),
                };
            }
        };
        let mut out = inspector.inspect_text(text);
        if let Some(pinning) = inspector.first_use() {
            // Tools the cluster pins on first use: read the list again once it has.
            pinning.await;
            out = inspector.reread(text);
        }
        if !extra.is_empty() {
            // Part of a batch was denied: the client gets every answer, ours and the server's.
            out = Some(merge_answers(out.as_deref().unwrap_or(text), extra));
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        if refused {
            // Read whole: what it did not answer never ran.
            inspector.refund_all();
        }
        inspector.finish();
        match out {
            Some(changed) => json_text_response(parts, changed),
            None => Response::from_parts(parts, full(bytes)),
        }
    }

    /// A request with no body (GET, DELETE, a probe): its answer streamed back, SSE inspected.
    pub(super) async fn forward_stream(
        self: Arc<Self>,
        parts: http::request::Parts,
        body: Outgoing,
        set: Arc<Enforced>,
        who: Arc<Identity>,
        peer: SocketAddr,
        start: Instant,
    ) -> Resp {
        let is_get = parts.method == Method::GET;
        // A DELETE ends the session it names, once the server agrees.
        let ending = match parts.method {
            Method::DELETE => super::header_str(&parts.headers, super::MCP_SESSION_ID),
            _ => None,
        }
        .map(str::to_string);
        let mut up = self.upstream_head(parts, peer);
        let sent = self.send_traced(&mut up);
        let resp = self.client.send(&up, body).await;
        self.sent(sent, &up, &resp);
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return self.bad_gateway(&e),
        };
        self.metrics.request(
            RequestKind::Passthrough.as_str(),
            start.elapsed().as_secs_f64(),
        );
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        self.note_session(&parts, false);
        if let Some(id) = ending.filter(|_| parts.status.is_success()) {
            self.bound.end(&id);
        }
        let content = ContentType::of(&parts.headers);
        if content != ContentType::EventStream {
            let inspector = Inspector::for_session_stream(
                set,
                who,
                self.counters.clone(),
                self.pins.clone(),
                Calls::default(),
            );
            if !inspector.pins_lists() {
                return Response::from_parts(parts, body.boxed());
            }
            // Where tools are pinned, a stream the proxy cannot read as SSE may still carry a
            // list a client reads: it is read whole and withheld if it may.
            let bytes = match Limited::new(body, MAX_ANSWER).collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) => return self.bad_gateway(&e),
            };
            if inspector.may_hide_a_list(&bytes) {
                let why = format!("its answer's Content-Type is {content:?}, not SSE");
                return Refusal::Withheld(why).into_response();
            }
            return Response::from_parts(parts, full(bytes));
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        // Answers on a stream settle only the legacy session's calls, which it has if it
        // announces an endpoint.
        let calls = Calls::default();
        let inspector = Inspector::for_session_stream(
            set,
            who,
            self.counters.clone(),
            self.pins.clone(),
            calls.clone(),
        );
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

    /// The answer when the server could not be reached or its answer broke off: logged,
    /// counted, and a 502 naming the server.
    pub(super) fn bad_gateway(&self, e: &dyn std::fmt::Display) -> Resp {
        self.metrics.upstream_error("unreachable");
        tracing::warn!(upstream = %self.cfg.upstream, error = %e, "upstream request failed");
        Refusal::Unreachable {
            upstream: self.cfg.upstream.to_string(),
            error: e.to_string(),
        }
        .into_response()
    }
}

/// Largest answer the proxy reads into memory to inspect (a tool list, a batch's answers), and
/// largest event of a stream.
pub(super) const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// An answer whose body the proxy rewrote.
fn json_text_response(mut parts: http::response::Parts, body: String) -> Resp {
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, full(body))
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
    // Every field the `Connection` lines name (read as the head reader reads them) is this
    // hop's too.
    let named: Vec<HeaderName> = crate::http::head::list(headers, header::CONNECTION)
        .filter_map(|n| HeaderName::from_bytes(n).ok())
        .collect();
    for n in named {
        headers.remove(n);
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

const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

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

        // Each `Connection` line names fields, not only the first.
        let mut h = map(&[
            ("connection", "x-a"),
            ("connection", "x-b"),
            ("x-a", "1"),
            ("x-b", "2"),
            ("x-c", "3"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["x-c"]);

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
