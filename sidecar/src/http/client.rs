//! The client to the MCP server beside the proxy: HTTP/1.1 over a pool of kept-alive
//! connections, each driven by the request that holds it.
//!
//! hyper's client runs every connection as a task of its own and hands it requests, heads
//! and body chunks over channels: a call crosses tasks at least four times and each
//! connection keeps a channel block. Here the request's own future writes the request and
//! reads the head, and the response body reads the socket when it is polled. The peer is the
//! one server in the pod and every request is built by the proxy, so the client needs only
//! what RFC 9112 asks of a client reading responses:
//!
//! - framing by `Transfer-Encoding: chunked`, `Content-Length` or the connection's close,
//!   `Transfer-Encoding` winning over `Content-Length` (and the connection then dropped);
//! - no body after `HEAD`, `204` or `304`; interim `1xx` answers skipped;
//! - a connection goes back to the pool only when the answer allowed keep-alive and ended
//!   exactly where its framing said; a pooled connection the server closed while idle is
//!   noticed before it is used.
//!
//! Anything else (a malformed head, a bad `Content-Length`, a bad chunk) is an error that
//! drops the connection; the proxy answers 502.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self};
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::http::BoxBody;
use crate::http::BoxError;
use crate::http::framing::{Buffered, Framing, Step, put_content_length};
use crate::http::head::{MAX_HEAD, ResponseHead as Head, read_response, response_framing};

/// How much the first read of an answer asks the socket for: an MCP answer's head and body
/// nearly always fit, and a buffer this small comes from the allocator's per-thread cache.
const FIRST_READ: usize = 1024;
/// How much each later read asks for.
const READ_SIZE: usize = 8 * 1024;
/// Request bodies up to this size go out in the same write as the head.
const COALESCE: usize = 16 * 1024;

/// Why a call to the server failed. The proxy answers each with 502.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("it closed the connection without answering")]
    Closed,
    #[error("its answer is not valid HTTP/1.1: {0}")]
    Response(&'static str),
    #[error("the request body could not be read: {0}")]
    RequestBody(BoxError),
    #[error("it did not answer within {} s (--upstream-head-timeout)", .0.as_secs_f64())]
    HeadTimeout(Duration),
}

impl Error {
    /// Whether the request surely never reached the server (so nothing in it ran).
    pub fn never_sent(&self) -> bool {
        matches!(self, Error::Connect(_))
    }
}

/// A request body.
pub enum Outgoing {
    /// In memory: sent with its `Content-Length`, and sent again on a new connection if a
    /// pooled one turns out to have been closed by the server.
    Full(Bytes),
    /// Streamed from the client: `Content-Length` when its size is known, chunked when not.
    Stream(BoxBody),
}

impl Outgoing {
    /// A client's request body: sent from memory when it was read with its head, streamed
    /// on when it is still arriving.
    pub fn streamed(body: crate::http::server::RequestBody) -> Self {
        match body.into_bytes() {
            Ok(bytes) => Outgoing::Full(bytes),
            Err(body) if body.is_end_stream() => Outgoing::Full(Bytes::new()),
            Err(body) => Outgoing::Stream(body.boxed()),
        }
    }
}

/// Connects to `host:port`. `localhost` is both loopbacks, 127.0.0.1 then ::1, whatever the
/// resolver says (RFC 6761 lets applications treat the name as special; curl does): an app in a
/// pod may be bound to either family, and not every /etc/hosts names ::1.
pub async fn connect(authority: &str) -> std::io::Result<TcpStream> {
    let local = authority
        .rsplit_once(':')
        .filter(|(host, _)| host.eq_ignore_ascii_case("localhost"))
        .and_then(|(_, port)| port.parse::<u16>().ok());
    let Some(port) = local else {
        return TcpStream::connect(authority).await;
    };
    match TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port)).await {
        Ok(io) => Ok(io),
        Err(v4) => TcpStream::connect((std::net::Ipv6Addr::LOCALHOST, port))
            .await
            .map_err(|_| v4),
    }
}

/// The connections to one server, for one worker thread.
pub struct Upstream {
    /// `host:port`, for connecting and for a request that names no `Host`.
    authority: String,
    /// Idle connections, the most recently used last.
    idle: Mutex<VecDeque<Idle>>,
    idle_timeout: Duration,
    max_idle: usize,
    /// How long an answer's head may take once the request is sent.
    head_timeout: Duration,
    /// How long an answer's body may go without a byte.
    body_timeout: Duration,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// A connection and what has been read from it but not yet used.
struct Conn {
    io: TcpStream,
    buf: BytesMut,
}

impl Upstream {
    /// A client for the server at `authority` (`host:port`).
    pub fn new(authority: &str) -> Arc<Self> {
        let t = crate::http::deadline::Timeouts::default();
        Self::with_timeouts(authority, t.upstream_head, t.upstream_body)
    }

    /// A client whose answers' heads must come within `head` and whose bodies may go without a
    /// byte for at most `body`.
    pub fn with_timeouts(authority: &str, head: Duration, body: Duration) -> Arc<Self> {
        Arc::new(Upstream {
            authority: authority.to_string(),
            idle: Mutex::new(VecDeque::new()),
            idle_timeout: Duration::from_secs(90),
            max_idle: 1024,
            head_timeout: head,
            body_timeout: body,
        })
    }

    /// Sends a request and reads the head of its answer; the body is read as it is polled.
    ///
    /// `parts` must use origin-form (`uri` path and query); `Host` is set from the authority
    /// when absent. Framing headers of `parts` are replaced by the body's own.
    pub async fn send(
        self: &Arc<Self>,
        parts: &http::request::Parts,
        body: Outgoing,
    ) -> Result<Response<UpstreamBody>, Error> {
        tokio::time::timeout(self.head_timeout, self.exchange(parts, body))
            .await
            .map_err(|_| Error::HeadTimeout(self.head_timeout))?
    }

    async fn exchange(
        self: &Arc<Self>,
        parts: &http::request::Parts,
        mut body: Outgoing,
    ) -> Result<Response<UpstreamBody>, Error> {
        let wire = self.encode(parts, &body);
        let no_body = parts.method == Method::HEAD;
        if let Some(conn) = self.take_idle() {
            match conn.exchange(&wire, &mut body).await {
                Ok(answer) => return self.response(answer, no_body),
                // The server closed the connection as it was taken: nothing was answered, so
                // the request is sent again when that cannot run it twice.
                Err(Failed {
                    error: Error::Closed | Error::Io(_),
                    answered: false,
                    written,
                }) if matches!(body, Outgoing::Full(_))
                    && (!written || is_idempotent(&parts.method)) => {}
                Err(f) => return Err(f.error),
            }
        }
        let conn = self.connect().await?;
        let answer = conn.exchange(&wire, &mut body).await.map_err(|f| f.error)?;
        self.response(answer, no_body)
    }

    fn response(
        self: &Arc<Self>,
        answer: Answer,
        no_body: bool,
    ) -> Result<Response<UpstreamBody>, Error> {
        let Answer { conn, head } = answer;
        let (framing, keep_alive) = response_framing(&head, no_body).map_err(Error::Response)?;
        let mut body = UpstreamBody {
            read: Some(Reader {
                conn,
                framing,
                keep_alive,
                pool: self.clone(),
            }),
            error: None,
            stall: crate::http::deadline::Stall::new(self.body_timeout, "the MCP server's answer"),
        };
        body.settle();
        let mut resp = Response::new(body);
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        Ok(resp)
    }

    /// The request's head, and its body too when that is small and in memory: one write.
    fn encode(&self, parts: &http::request::Parts, body: &Outgoing) -> Vec<u8> {
        let mut head = Vec::with_capacity(512 + coalesced(body).map_or(0, <[u8]>::len));
        head.extend_from_slice(parts.method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(
            parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .as_bytes(),
        );
        head.extend_from_slice(b" HTTP/1.1\r\n");
        if !parts.headers.contains_key(header::HOST) {
            head.extend_from_slice(b"host: ");
            head.extend_from_slice(self.authority.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        for (name, value) in &parts.headers {
            // The body's framing is ours to state; the body is sent at once, unasked.
            if name == header::CONTENT_LENGTH
                || name == header::TRANSFER_ENCODING
                || name == header::EXPECT
            {
                continue;
            }
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        match body_length(body) {
            Some(0) if !expects_body(&parts.method) => {}
            Some(n) => put_content_length(&mut head, n),
            None => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
        head.extend_from_slice(b"\r\n");
        if let Some(bytes) = coalesced(body) {
            head.extend_from_slice(bytes);
        }
        head
    }

    async fn connect(&self) -> Result<Conn, Error> {
        let io = connect(&self.authority).await.map_err(Error::Connect)?;
        io.set_nodelay(true)?;
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        socket2::SockRef::from(&io).set_tcp_keepalive(&keepalive)?;
        Ok(Conn {
            io,
            buf: BytesMut::new(),
        })
    }

    /// The most recently used idle connection that is still open.
    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock();
        while let Some(Idle { mut conn, since }) = idle.pop_back() {
            if since.elapsed() >= self.idle_timeout {
                // The rest are older still.
                idle.clear();
                return None;
            }
            if conn.is_open() {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, mut conn: Conn) {
        // An idle connection keeps no buffer: the next answer may be read by another size.
        conn.buf = BytesMut::new();
        let mut idle = self.idle.lock();
        while idle
            .front()
            .is_some_and(|i| i.since.elapsed() >= self.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() >= self.max_idle {
            idle.pop_front();
        }
        idle.push_back(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Another client to the same server, with a pool of its own (one per worker thread).
    pub fn for_another_worker(&self) -> Arc<Self> {
        Upstream::with_timeouts(&self.authority, self.head_timeout, self.body_timeout)
    }

    /// Idle connections held, for tests.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().len()
    }
}

impl Buffered for Conn {
    fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Reads what the socket has into the buffer; `Ok(0)` is the server's close.
    ///
    /// Through `AsyncRead`, which notes a short read as the socket drained: the check before
    /// the connection's next use then costs no system call.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() == 0 {
            self.buf.reserve(FIRST_READ);
        } else if self.buf.capacity() - self.buf.len() < READ_SIZE / 8 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// A request written and the head of its answer read.
struct Answer {
    conn: Conn,
    head: Head,
}

/// A failed exchange, and how far it got.
struct Failed {
    error: Error,
    /// The request was written whole.
    written: bool,
    /// Some of an answer was read.
    answered: bool,
}

impl Conn {
    /// Writes `wire` (from [`Upstream::encode`]) and the rest of the body, and reads the
    /// head of the final answer.
    async fn exchange(mut self, wire: &[u8], body: &mut Outgoing) -> Result<Answer, Failed> {
        self.write_request(wire, body)
            .await
            .map_err(|error| Failed {
                error,
                written: false,
                answered: false,
            })?;
        loop {
            let head = self.read_head().await?;
            // Interim answers (100 Continue, 103 Early Hints) precede the real one.
            if head.status.is_informational() {
                if head.status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(Failed {
                        error: Error::Response("101 Switching Protocols was not asked for"),
                        written: true,
                        answered: true,
                    });
                }
                continue;
            }
            return Ok(Answer { conn: self, head });
        }
    }

    async fn write_request(&mut self, wire: &[u8], body: &mut Outgoing) -> Result<(), Error> {
        self.io.write_all(wire).await?;
        match body {
            Outgoing::Full(_) if coalesced(body).is_some() => Ok(()),
            Outgoing::Full(bytes) => Ok(self.io.write_all(bytes).await?),
            Outgoing::Stream(stream) => self.write_stream(stream).await,
        }
    }

    async fn write_stream(&mut self, body: &mut BoxBody) -> Result<(), Error> {
        let chunked = body.size_hint().exact().is_none();
        let mut left = body.size_hint().exact().unwrap_or(0);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(Error::RequestBody)?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers are not forwarded
            };
            if data.is_empty() {
                continue;
            }
            if chunked {
                let mut out = Vec::with_capacity(data.len() + 20);
                out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
                self.io.write_all(&out).await?;
            } else {
                left = left.checked_sub(data.len() as u64).ok_or_else(|| {
                    Error::RequestBody("the body is longer than its size said".into())
                })?;
                self.io.write_all(&data).await?;
            }
        }
        if chunked {
            self.io.write_all(b"0\r\n\r\n").await?;
        } else if left > 0 {
            return Err(Error::RequestBody(
                "the body ended before its size said".into(),
            ));
        }
        Ok(())
    }

    async fn read_head(&mut self) -> Result<Head, Failed> {
        let mut answered = false;
        loop {
            if !self.buf.is_empty() {
                answered = true;
                match read_response(&mut self.buf).map_err(Error::Response) {
                    Ok(Some(head)) => return Ok(head),
                    Ok(None) if self.buf.len() >= MAX_HEAD => {
                        return Err(Failed {
                            error: Error::Response("the head is larger than 64 KiB"),
                            written: true,
                            answered,
                        });
                    }
                    Ok(None) => {}
                    Err(error) => {
                        return Err(Failed {
                            error,
                            written: true,
                            answered,
                        });
                    }
                }
            }
            match std::future::poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) => {
                    return Err(Failed {
                        error: if answered {
                            Error::Response("the connection closed inside the head")
                        } else {
                            Error::Closed
                        },
                        written: true,
                        answered,
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(Failed {
                        error: e.into(),
                        written: true,
                        answered,
                    });
                }
            }
        }
    }

    /// Whether the server has neither closed the connection nor sent anything unasked
    /// since it was last used. Costs no system call when nothing arrived.
    fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => matches!(
                self.io.try_read_buf(&mut self.buf),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }
}

/// The body, when it is small and in memory and so is written with the head.
fn coalesced(body: &Outgoing) -> Option<&[u8]> {
    match body {
        Outgoing::Full(bytes) if bytes.len() <= COALESCE => Some(bytes),
        _ => None,
    }
}

fn body_length(body: &Outgoing) -> Option<u64> {
    match body {
        Outgoing::Full(bytes) => Some(bytes.len() as u64),
        Outgoing::Stream(stream) => stream.size_hint().exact(),
    }
}

/// Methods whose requests carry a body by their meaning: an empty one is stated.
fn expects_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// A response body, read from the connection as it is polled. Once read to its end the
/// connection goes back to the pool; dropped before that, the connection is closed.
pub struct UpstreamBody {
    read: Option<Reader>,
    /// An error found while moving past framing, for the next poll.
    error: Option<BoxError>,
    /// How long the body may go without a byte.
    stall: crate::http::deadline::Stall,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let framing = self.read.as_ref().map(|r| r.framing);
        f.debug_struct("UpstreamBody")
            .field("framing", &framing)
            .finish()
    }
}

struct Reader {
    conn: Conn,
    framing: Framing,
    keep_alive: bool,
    pool: Arc<Upstream>,
}

impl UpstreamBody {
    /// Moves past framing the buffer already holds; a body found at its end gives its
    /// connection back now, as the server may not be polled again.
    fn settle(&mut self) {
        let Some(r) = &mut self.read else { return };
        match r.framing.step(&mut r.conn.buf, false) {
            Ok(Step::End) => self.finish(),
            Ok(_) => {}
            Err(e) => {
                self.read = None;
                self.error = Some(e);
            }
        }
    }

    fn finish(&mut self) {
        if let Some(r) = self.read.take()
            && r.keep_alive
            && r.framing.is_done()
            && r.conn.buf.is_empty()
        {
            r.pool.put(r.conn);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(r) = &mut this.read else {
            return Poll::Ready(this.error.take().map(Err));
        };
        let closed_early = "the MCP server closed the connection before the body's end";
        let polled = r.framing.poll_next(&mut r.conn, cx, closed_early);
        if polled.is_pending() {
            let stalled = ready!(this.stall.poll_waiting(cx));
            this.read = None;
            return Poll::Ready(Some(Err(stalled.into())));
        }
        this.stall.progressed();
        match ready!(polled) {
            Ok(Some(data)) => {
                this.settle();
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Ok(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Err(e) => {
                this.read = None;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_none() && self.error.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.read {
            None if self.error.is_none() => SizeHint::with_exact(0),
            None => SizeHint::default(),
            Some(Reader {
                framing: Framing::Length(n),
                ..
            }) => SizeHint::with_exact(*n),
            Some(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn localhost_reaches_an_app_bound_to_either_loopback() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let listener = TcpListener::bind(addr).await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let io = connect(&format!("localhost:{port}")).await.unwrap();
            assert_eq!(io.peer_addr().unwrap(), listener.local_addr().unwrap());
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let refused = connect(&format!("localhost:{port}")).await.unwrap_err();
        assert_eq!(
            refused.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "the IPv4 error is the one told"
        );
    }
}
