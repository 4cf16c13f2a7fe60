//! The SSE answer stage: a server's event stream passed to the agent event by event, each
//! message shown to the [`Inspector`] on the way.
//!
//! ```text
//! upstream bytes ─> EventSplitter ─> raw event ─┬─ no JSON-RPC to change ─> same bytes out
//!                                               └─ data changed by Inspector ─> rewritten event
//! injected events (denials for this stream) ───────────────────────────────> out first
//! ```
//!
//! Nothing is held beyond the event being read, so streams stay live and keep-alive comments
//! reach the client as they are sent. The one wait: a tool list whose tools the cluster pins
//! on first use waits for it (once per tool and workload), and is then read again.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame};
use tokio::sync::mpsc;

use crate::http::BoxError;
use crate::http::client::UpstreamBody;
use crate::mcp::sse::{
    EventSplitter, event_fields, message_event, only_known_fields, parse_event, rewrite_event,
};
use crate::proxy::forward::MAX_ANSWER;
use crate::proxy::inspect::Inspector;

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
    /// Whether an event of the stream has been read (only the first may open with a BOM).
    began: bool,
    /// An event whose tool list waits for the cluster to pin tools on first use, and the wait.
    waiting: Option<Waiting>,
    /// The upstream ended: once what is buffered is read, so does this stream.
    ended: bool,
}

/// An event read once, waiting for the cluster to pin its list's tools on first use.
struct Waiting {
    raw: Bytes,
    /// Whether it is the stream's first event (which may open with a BOM).
    first: bool,
    /// Spawned, so the body stays `Sync` (and the pin is made even if the client leaves).
    pinning: tokio::task::JoinHandle<()>,
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
            began: false,
            waiting: None,
            ended: false,
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
        let first = !std::mem::replace(&mut self.began, true);
        self.read(raw, first, false);
    }

    /// Reads one event; `again` once the cluster has pinned what its list waited for.
    fn read(&mut self, raw: Bytes, first: bool, again: bool) {
        let fields = event_fields(&raw, first);
        let Some(event) = parse_event(&fields) else {
            // No data the proxy can read (a comment, a keep-alive, or bytes that are not
            // UTF-8 or not fields): passed on unless a reader could find a message in it.
            let why = "an event in its stream cannot be read";
            match self.inspector.unreadable(&raw, why) {
                Some(error) if !only_known_fields(&fields) => {
                    self.pending.push_back(message_event(&error));
                }
                _ => self.pending.push_back(raw),
            }
            return;
        };
        if event.name == Some("endpoint") {
            let replaced = self.on_endpoint.as_mut().and_then(|f| f(&event.data));
            let out = match replaced {
                Some(data) => rewrite_event(&fields, &data),
                None => raw.clone(),
            };
            self.pending.push_back(out);
            return;
        }
        if event.data.trim_ascii().is_empty() {
            // No message (a resumable stream's priming event): nothing any client reads.
            self.pending.push_back(raw);
            return;
        }
        let out = match again {
            true => self.inspector.reread(&event.data),
            false => self.inspector.inspect_text(&event.data),
        };
        match self.inspector.first_use() {
            Some(pinning) if !again => {
                self.waiting = Some(Waiting {
                    raw,
                    first,
                    pinning: tokio::spawn(pinning),
                });
                return;
            }
            _ => {}
        }
        match out {
            Some(changed) => self.pending.push_back(rewrite_event(&fields, &changed)),
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
            if let Some(waiting) = &mut this.waiting {
                if Pin::new(&mut waiting.pinning).poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let Waiting { raw, first, .. } = this.waiting.take().expect("waiting");
                this.read(raw, first, true);
                continue;
            }
            if this.done {
                return Poll::Ready(None);
            }
            // Events read but not yet passed on (the reading stopped for a wait).
            if let Some(ev) = this.splitter.next_event() {
                this.process(ev);
                continue;
            }
            if this.ended {
                if let Some(rest) = this.splitter.rest() {
                    this.process(rest);
                    continue;
                }
                this.inspector.finish();
                this.done = true;
                continue;
            }
            if let Some(rx) = &mut this.inject
                && let Poll::Ready(Some(ev)) = rx.poll_recv(cx)
            {
                this.pending.push_back(ev);
                continue;
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.ended = true,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.splitter.push(&data);
                        while this.waiting.is_none()
                            && let Some(ev) = this.splitter.next_event()
                        {
                            this.process(ev);
                        }
                        // (While a list waits, what follows it is held unread: one frame more.)
                        if this.waiting.is_none() && this.splitter.pending() > MAX_ANSWER {
                            // An event the proxy cannot hold cannot be read, so it is not
                            // passed on: the stream breaks (its calls keep their counts).
                            this.done = true;
                            this.pending.clear();
                            return Poll::Ready(Some(Err(format!(
                                "an event of the MCP server's stream is over {} MiB",
                                MAX_ANSWER >> 20
                            )
                            .into())));
                        }
                    }
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
            }
        }
    }
}
