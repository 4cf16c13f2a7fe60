//! Server-sent events, passed through event by event.
//!
//! ```text
//! upstream bytes ─> EventSplitter ─> raw event ─┬─ no JSON-RPC to change ─> same bytes out
//!                                               └─ data changed by Inspector ─> rewritten event
//! injected events (denials for this stream) ───────────────────────────────> out first
//! ```
//!
//! Nothing is held beyond the event being read, so streams stay live and keep-alive comments
//! reach the client as they are sent.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame};
use tokio::sync::mpsc;

use crate::BoxError;
use crate::inspect::Inspector;
use crate::upstream::UpstreamBody;

/// Splits a byte stream into complete SSE events (each ending with its blank line).
#[derive(Default)]
pub struct EventSplitter {
    buf: BytesMut,
    /// Where scanning resumes.
    scanned: usize,
    /// Whether the byte before `scanned` ended a line.
    after_newline: bool,
}

impl EventSplitter {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event, raw, including its terminating blank line.
    pub fn next_event(&mut self) -> Option<Bytes> {
        let b = &self.buf;
        let mut i = self.scanned;
        while i < b.len() {
            let (is_eol, len) = match b[i] {
                b'\n' => (true, 1),
                b'\r' => {
                    if i + 1 >= b.len() && !self.after_newline {
                        // A CR ending a data line may be the start of CRLF: wait for more. (A CR
                        // that ends the blank line completes the event either way; a LF after
                        // it reaches the client in the next event, bytes unchanged.)
                        self.scanned = i;
                        return None;
                    }
                    let crlf = i + 1 < b.len() && b[i + 1] == b'\n';
                    (true, if crlf { 2 } else { 1 })
                }
                _ => (false, 1),
            };
            if is_eol {
                if self.after_newline {
                    let end = i + len;
                    self.scanned = 0;
                    self.after_newline = false;
                    return Some(self.buf.split_to(end).freeze());
                }
                self.after_newline = true;
            } else {
                self.after_newline = false;
            }
            i += len;
        }
        self.scanned = i;
        None
    }

    /// Whatever is left when the stream ends (an unterminated last event).
    pub fn rest(&mut self) -> Option<Bytes> {
        (!self.buf.is_empty()).then(|| {
            self.scanned = 0;
            self.after_newline = false;
            self.buf.split().freeze()
        })
    }
}

/// The fields of one event.
pub struct Event<'a> {
    pub name: Option<&'a str>,
    pub data: String,
}

/// Reads an event's `event:` and joined `data:` lines.
pub fn parse_event(raw: &[u8]) -> Option<Event<'_>> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut name = None;
    let mut data: Option<String> = None;
    for line in text.split(['\n', '\r']) {
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => name = Some(value),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            },
            _ => {}
        }
    }
    Some(Event { name, data: data? })
}

/// A message's bytes as text: borrowed when valid UTF-8, replaced characters otherwise. std's
/// `from_utf8` checks first: `from_utf8_lossy`'s chunked walk was 6.6% of the proxy's CPU on a
/// 500-tool list (perf).
pub fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Rewrites an event with new data, keeping its other fields (`id`, `event`, `retry`).
pub fn rewrite_event(raw: &[u8], data: &str) -> Bytes {
    let text = text(raw);
    let mut out = String::with_capacity(raw.len() + data.len());
    let mut wrote_data = false;
    for line in text.split(['\n', '\r']).filter(|l| !l.is_empty()) {
        if line.starts_with("data:") || line == "data" {
            if !wrote_data {
                for d in data.split('\n') {
                    out.push_str("data: ");
                    out.push_str(d);
                    out.push('\n');
                }
                wrote_data = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push('\n');
    Bytes::from(out)
}

/// An SSE event carrying one JSON-RPC message.
pub fn message_event(json: &str) -> Bytes {
    Bytes::from(format!("event: message\ndata: {json}\n\n"))
}

/// What a legacy HTTP+SSE stream announces: the endpoint its session posts to.
pub type OnEndpoint = Box<dyn FnMut(&str) -> Option<String> + Send + Sync>;

/// A response body that passes SSE through event by event, letting the [`Inspector`] see and
/// change each JSON-RPC message, and interleaving events Tollgate injects.
pub struct SseBody {
    inner: UpstreamBody,
    splitter: EventSplitter,
    inspector: Inspector,
    pending: std::collections::VecDeque<Bytes>,
    inject: Option<mpsc::UnboundedReceiver<Bytes>>,
    on_endpoint: Option<OnEndpoint>,
    done: bool,
}

impl SseBody {
    pub fn new(inner: UpstreamBody, inspector: Inspector, first: Vec<Bytes>) -> Self {
        SseBody {
            inner,
            splitter: EventSplitter::default(),
            inspector,
            pending: first.into(),
            inject: None,
            on_endpoint: None,
            done: false,
        }
    }

    /// Events sent on `rx` are written to this stream as they come.
    pub fn with_injection(mut self, rx: mpsc::UnboundedReceiver<Bytes>) -> Self {
        self.inject = Some(rx);
        self
    }

    /// Called with the data of an `endpoint` event; may return replacement data.
    pub fn on_endpoint(mut self, f: OnEndpoint) -> Self {
        self.on_endpoint = Some(f);
        self
    }

    fn process(&mut self, raw: Bytes) {
        let Some(event) = parse_event(&raw) else {
            self.pending.push_back(raw);
            return;
        };
        if event.name == Some("endpoint") {
            let replaced = self.on_endpoint.as_mut().and_then(|f| f(&event.data));
            let out = match replaced {
                Some(data) => rewrite_event(&raw, &data),
                None => raw.clone(),
            };
            self.pending.push_back(out);
            return;
        }
        match self.inspector.inspect_text(&event.data) {
            Some(changed) => self.pending.push_back(rewrite_event(&raw, &changed)),
            None => self.pending.push_back(raw),
        }
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(out) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(rx) = &mut this.inject
                && let Poll::Ready(Some(ev)) = rx.poll_recv(cx)
            {
                this.pending.push_back(ev);
                continue;
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    if let Some(rest) = this.splitter.rest() {
                        this.process(rest);
                    }
                    this.inspector.finish();
                    this.done = true;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.splitter.push(&data);
                        while let Some(ev) = this.splitter.next_event() {
                            this.process(ev);
                        }
                    }
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&str]) -> Vec<String> {
        let mut s = EventSplitter::default();
        let mut out = vec![];
        for c in chunks {
            s.push(c.as_bytes());
            while let Some(e) = s.next_event() {
                out.push(String::from_utf8(e.to_vec()).unwrap());
            }
        }
        out
    }

    #[test]
    fn events_split_on_blank_lines_whatever_the_line_endings() {
        assert_eq!(
            split(&["data: a\n\ndata: b\n\n"]),
            ["data: a\n\n", "data: b\n\n"]
        );
        assert_eq!(split(&["data: a\r\n\r\n"]), ["data: a\r\n\r\n"]);
        assert_eq!(split(&["data: a\r\r"]), ["data: a\r\r"]);
        assert_eq!(split(&["da", "ta: a\r", "\n", "\r\n"]), ["data: a\r\n\r\n"]);
        assert_eq!(
            split(&[": ping\n\n"]),
            [": ping\n\n"],
            "keep-alive comments are events too"
        );
        assert!(split(&["data: partial\n"]).is_empty());
    }

    #[test]
    fn events_keep_their_fields_when_data_is_rewritten() {
        let raw = b"id: 7\nevent: message\ndata: {\"a\":1}\n\n";
        let ev = parse_event(raw).unwrap();
        assert_eq!((ev.name, ev.data.as_str()), (Some("message"), "{\"a\":1}"));
        assert_eq!(
            &rewrite_event(raw, "{}")[..],
            b"id: 7\nevent: message\ndata: {}\n\n"
        );
    }

    #[test]
    fn multi_line_data_is_joined() {
        let ev = parse_event(b"data: {\"a\":\ndata: 1}\n\n").unwrap();
        assert_eq!(ev.data, "{\"a\":\n1}");
    }
}
