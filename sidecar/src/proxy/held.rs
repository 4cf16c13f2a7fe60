//! A request with a call held for a person, settled in the background when its client must
//! hear something before the person decides:
//!
//! ```text
//! streamable HTTP, a progressToken given:
//!   200 text/event-stream ─ progress, progress, … ─ decided ─ finish (forward what is allowed,
//!   merge the proxy's answers) ─ its answer relayed: SSE events as they come, a JSON answer as
//!   one event per message
//! legacy HTTP+SSE: 202 at once (answers travel on the session's stream anyway) ─ progress on
//!   that stream ─ decided ─ finish (answers on the stream, the rest forwarded)
//! ```

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use serde_json::Value;
use tokio::sync::mpsc;

use super::decide::Decided;
use super::refusal::Refusal;
use super::{Exchange, Proxy, Resp};
use crate::http::media::MediaType;
use crate::mcp::sse::message_event;

/// Whether the client takes an SSE answer (streamable HTTP clients send both types).
pub(super) fn accepts_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|v| MediaType::parse(v.trim()))
        .any(|m| m.is("text/event-stream"))
}

impl Proxy {
    /// Answers at once and settles the held calls behind it: a stream of progress then the
    /// request's answers, or (legacy) a 202, the answers going to the session's stream.
    pub(super) fn held_in_background(
        self: Arc<Self>,
        mut ex: Exchange,
        mut decided: Decided<'static>,
    ) -> Resp {
        let events = ex.route.legacy.as_ref().map(|l| l.events.clone());
        let legacy = events.is_some();
        // Bounded: progress that cannot be written is dropped (the next one says the same).
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        // The request's trace, if any, goes on in the task that settles it.
        let trace = crate::telemetry::trace::current();
        tokio::spawn(crate::telemetry::trace::within(trace, async move {
            let held = std::mem::take(&mut decided.held);
            {
                let progress = |n: Value| {
                    let event = message_event(&n.to_string());
                    match &events {
                        Some(events) => drop(events.send(event)),
                        None => drop(tx.try_send(event)),
                    }
                };
                let (asked, inspector) = ex.asked();
                self.settle_held(held, &asked, inspector, &mut decided, progress)
                    .await;
            }
            let resp = self.finish(ex, decided).await;
            // Legacy: the answers went to the session's stream; the server's 202 is no one's.
            if !legacy {
                relay(resp, &tx).await;
            }
        }));
        if legacy {
            return super::accepted();
        }
        let mut resp = Response::new(ChannelBody { rx }.boxed());
        *resp.status_mut() = StatusCode::OK;
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        resp
    }
}

/// The request's answer, onto the stream already begun: SSE events as they come; a JSON answer
/// (one message or a batch) as one event per message; anything else as an error the client can
/// read.
async fn relay(resp: Resp, tx: &mpsc::Sender<Bytes>) {
    let status = resp.status();
    let sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(MediaType::parse)
        .is_some_and(|m| m.is("text/event-stream"));
    let mut body = resp.into_body();
    if sse {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data()
                        && tx.send(data).await.is_err()
                    {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        return;
    }
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return,
    };
    if bytes.is_empty() {
        return;
    }
    let messages = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Array(items)) => items,
        Ok(one @ Value::Object(_)) => vec![one],
        _ => vec![Refusal::NotJsonRpcAnswer(status).message()],
    };
    for m in messages {
        if tx.send(message_event(&m.to_string())).await.is_err() {
            return;
        }
    }
}

/// A response body fed from a channel; it ends when every sender is gone.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = crate::http::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx.poll_recv(cx).map(|d| d.map(|d| Ok(Frame::data(d))))
    }
}
