//! One inbound connection: Tollgate's own HTTP/1.1 server, and hyper for HTTP/2.
//!
//! ```text
//! idle: the socket alone, no buffer ──readable──> head read (httparse; ≤ 64 KiB, 30 s once begun)
//!   ──> checked by RFC 9112, strictly ──refused──> 4xx naming the problem, connection closed
//!   ──> Request<RequestBody> ──> Handler ──> Response
//!   ──> head and body written (one write when the body is ready with the head)
//!   ──> the next pipelined request in the buffer, idle again, or closed
//! ```
//!
//! This server is where a request could be smuggled past the proxy, so it reads a request one
//! way or not at all. A request framed both by `Transfer-Encoding` and `Content-Length`, with a
//! transfer coding other than `chunked`, with lengths that disagree or are not digits, with no
//! `Host` or two, or with folded header lines is refused with 400 (`CONNECT` 405, other
//! expectations 417, oversized heads 431, other codings before `chunked` 501) and its
//! connection closed, before the handler sees it. A connection whose request body was not read
//! to its end is closed after the answer, so the rest of that body is never read as a request;
//! the close lingers (reads and drops what still comes) so the answer is not lost to a reset.
//!
//! A request whose body arrived with its head (an MCP call, nearly always) is handed to the
//! handler as bytes. A body still arriving is read from the socket as the handler polls it:
//! the connection lends the handler its read side, and the body gives it back at its end.
//! While the handler works and while the answer is written, the connection watches its read
//! side: a client that closes abandons its request, as with hyper.
//!
//! Idle connections hold their socket and nothing else, as nginx frees its buffers on an idle
//! keep-alive connection. HTTP/2 with prior knowledge is served by hyper for the connection's
//! life.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulConnection;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

use crate::http::BoxError;
use crate::http::deadline::Timeouts;
use crate::http::framing::{Buffered, Framing, put_content_length};
use crate::http::head::{
    MAX_HEAD, MAX_HEADERS, Refusal, RequestHead as Head, read_request as parse_head, refusal,
};

/// How much a read for a request head asks the socket for: an MCP call's head and body
/// nearly always fit, and a buffer this small comes from the allocator's per-thread cache.
const HEAD_READ: usize = 1024;
/// How much a read of a body still arriving asks for.
const BODY_READ: usize = 16 * 1024;
/// Room reserved for an answer's head (and a small body gathered with it).
const ANSWER_ROOM: usize = 1024;
/// Pieces of an answer up to this size are copied together into one write; a larger piece is
/// written from where it is, beside what was gathered (one `writev`, no copy).
const COPY_MAX: usize = 4 * 1024;
/// Closing with a request's bytes unread, how long what the client still sends is read and
/// dropped first, so that the answer is not lost to a reset (nginx's lingering close).
const LINGER: Duration = Duration::from_secs(2);

/// What a connection serves: a request and the peer's address in, a response out.
pub trait Handler: Clone + Send + Sync + Unpin + 'static {
    /// The response body.
    type Body: Body<Data = Bytes, Error = BoxError> + Send + Unpin + 'static;
    /// Answers one request.
    fn call(
        &self,
        req: Request<RequestBody>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Self::Body>> + Send + 'static + use<Self>;

    /// How long each wait on the agent's connection may take.
    fn timeouts(&self) -> Timeouts {
        Timeouts::default()
    }

    /// Which HTTP/1 server reads agents' requests.
    fn http1(&self) -> Http1Server {
        Http1Server::Tollgate
    }

    /// The `Content-Type` and body of the answer to a request refused before [`Handler::call`]
    /// saw it (its status and why): plain text unless the handler speaks something else.
    fn refusal(&self, status: StatusCode, reason: &str) -> (HeaderValue, Bytes) {
        let _ = status;
        let body = format!("Bad request: {reason}\n");
        (
            HeaderValue::from_static("text/plain; charset=utf-8"),
            body.into(),
        )
    }
}

/// Which HTTP/1 server reads agents' requests: Tollgate's own (the default), or hyper's, so a
/// fault found in ours has an answer that is one flag (`--http1 hyper`) while it is fixed.
/// HTTP/2 is hyper's either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Http1Server {
    #[default]
    Tollgate,
    Hyper,
}

/// The HTTP/2 connection preface a prior-knowledge client opens with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How a connection was served.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// Served by hyper-util's HTTP/2-or-1 connection for its whole life.
    pub http2: bool,
    /// HTTP/1 requests answered.
    pub requests: usize,
    /// Times an HTTP/1 connection waited for its next request holding no buffer.
    pub idle_waits: usize,
}

/// Serves `stream` until the peer closes it or it fails. When `stop` turns true, an idle
/// connection is closed at once and a busy one after its response (`Connection: close`).
///
/// The first bytes decide the protocol, once: HTTP/2 only when the whole 24-byte preface has
/// come, HTTP/1.1 for anything else (Tollgate's own server, or hyper's with `--http1 hyper`). A connection that sends nothing within the
/// first-byte deadline, or stops inside the preface past the head deadline, is closed.
pub async fn serve<H: Handler>(
    mut stream: TcpStream,
    peer: SocketAddr,
    handler: H,
    mut stop: watch::Receiver<bool>,
) -> Served {
    let timeouts = handler.timeouts();
    let mut buf = BytesMut::new();
    let mut deadline = tokio::time::Instant::now() + timeouts.first_byte;
    loop {
        tokio::select! {
            ready = tokio::time::timeout_at(deadline, stream.readable()) => match ready {
                Ok(Ok(())) => {}
                _ => return Served::default(),
            },
            _ = stop.wait_for(|s| *s) => return Served::default(),
        }
        let first = buf.is_empty();
        if first {
            buf.reserve(HEAD_READ);
        }
        // A read through `poll_read`, not `try_read`: a short read clears the socket's
        // readiness, so the next wait for a request really waits.
        match stream.read_buf(&mut buf).now_or_never() {
            Some(Ok(0)) | Some(Err(_)) => return Served::default(),
            Some(Ok(_)) | None => {}
        }
        if first {
            // The rest of the preface, or of the head, is due within the head's deadline.
            deadline = tokio::time::Instant::now() + timeouts.head;
        }
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            if handler.http1() == Http1Server::Hyper {
                let io = Prefixed::new(buf, stream).with_write_deadline(timeouts.write);
                return Box::pin(serve_hyper_h1(io, peer, handler, stop, timeouts)).await;
            }
            // Owned here and lent to `serve`: an async fn taking `self` by value keeps it twice.
            let mut h1 = Http1::new(stream, buf, peer, handler, stop, timeouts);
            return h1.serve().await;
        }
        if buf.len() >= H2_PREFACE.len() {
            // Boxed, so that HTTP/1 connections' tasks are not sized for hyper's HTTP/2 state.
            Box::pin(serve_h2(Prefixed::new(buf, stream), peer, handler, stop)).await;
            return Served {
                http2: true,
                ..Served::default()
            };
        }
    }
}

/// HTTP/1 by hyper's server, chosen with `--http1 hyper`: requests as hyper reads them (the
/// oracle the suite holds Tollgate's own server to), the same handler, the head deadline (which
/// hyper also applies to a kept-alive connection waiting for its next request, so such a
/// connection closes after `--head-timeout`, not `--idle-timeout`), and the write deadline.
/// Requests hyper refuses get hyper's own empty answer, not a JSON-RPC error.
async fn serve_hyper_h1<H: Handler>(
    io: Prefixed,
    peer: SocketAddr,
    handler: H,
    stop: watch::Receiver<bool>,
    timeouts: Timeouts,
) -> Served {
    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = requests.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let req = req.map(|body| RequestBody(Inner::Hyper(body)));
        handler.call(req, peer).map(Ok::<_, Infallible>)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeouts.head)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD.max(8192));
    until_done(builder.serve_connection(TokioIo::new(io), service), stop).await;
    Served {
        requests: requests.load(std::sync::atomic::Ordering::Relaxed),
        ..Served::default()
    }
}

/// HTTP/2 with prior knowledge, by hyper's HTTP/2 server alone.
async fn serve_h2<H: Handler>(
    io: Prefixed,
    peer: SocketAddr,
    handler: H,
    stop: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let req = req.map(|body| RequestBody(Inner::Hyper(body)));
        handler.call(req, peer).map(Ok::<_, Infallible>)
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(MAX_HEAD as u32)
        .keep_alive_interval(Some(H2_PING))
        .keep_alive_timeout(H2_PING);
    until_done(builder.serve_connection(TokioIo::new(io), service), stop).await;
}

/// Drives one of hyper's connections to its end; when `stop` turns true it is shut down
/// gracefully (requests in flight finish, no new one is read).
async fn until_done<C>(conn: C, mut stop: watch::Receiver<bool>)
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut conn = std::pin::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// An HTTP/2 connection's streams at once.
const H2_MAX_STREAMS: u32 = 128;
/// How often an HTTP/2 connection is pinged, and how long the answer may take.
const H2_PING: Duration = Duration::from_secs(20);

/// The socket, with the bytes already read from it served first.
struct Prefixed {
    buf: BytesMut,
    io: TcpStream,
    /// How long a write may make no progress before the connection fails (hyper's HTTP/1
    /// server has no such deadline of its own; HTTP/2 pings its peer instead).
    write_limit: Option<Duration>,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Prefixed {
    fn new(buf: BytesMut, io: TcpStream) -> Self {
        Prefixed {
            buf,
            io,
            write_limit: None,
            stalled: None,
        }
    }

    /// An agent that stops reading is dropped after `limit` without progress, as Tollgate's
    /// own server drops it (`--write-timeout`).
    fn with_write_deadline(mut self, limit: Duration) -> Self {
        self.write_limit = Some(limit);
        self
    }

    /// A write's result, with the deadline applied: progress resets it, a write still pending
    /// past it fails.
    fn deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let Some(limit) = self.write_limit else {
            return polled;
        };
        match polled {
            Poll::Pending => {
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match stalled.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the agent took nothing for the write deadline",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl tokio::io::AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.buf.is_empty() {
            let n = this.buf.len().min(out.remaining());
            out.put_slice(&this.buf.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, out)
    }
}

impl tokio::io::AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, data);
        this.deadline(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.deadline(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A request's body: read with its head, still arriving on an HTTP/1 connection, or hyper's
/// (HTTP/2, and HTTP/1 with `--http1 hyper`).
pub struct RequestBody(Inner);

enum Inner {
    /// All of it, taken by the first poll.
    Full(Bytes),
    Http1(Http1Body),
    Hyper(Incoming),
}

impl RequestBody {
    /// A body that is all there.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        RequestBody(Inner::Full(bytes.into()))
    }

    /// The whole body when it is already in memory; the body itself when it is still to be
    /// read.
    pub fn into_bytes(self) -> Result<Bytes, Self> {
        match self.0 {
            Inner::Full(bytes) => Ok(bytes),
            other => Err(RequestBody(other)),
        }
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Inner::Full(b) => write!(f, "RequestBody::Full({} bytes)", b.len()),
            Inner::Http1(b) => write!(f, "RequestBody::Http1({:?})", b.framing),
            Inner::Hyper(_) => f.write_str("RequestBody::Hyper"),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Inner::Full(bytes) if bytes.is_empty() => Poll::Ready(None),
            Inner::Full(bytes) => Poll::Ready(Some(Ok(Frame::data(std::mem::take(bytes))))),
            Inner::Http1(body) => body.poll_frame(cx),
            Inner::Hyper(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Full(bytes) => bytes.is_empty(),
            Inner::Http1(body) => body.read.is_none() || body.framing.is_done(),
            Inner::Hyper(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Full(bytes) => SizeHint::with_exact(bytes.len() as u64),
            Inner::Http1(Http1Body {
                framing: Framing::Length(n),
                ..
            }) => SizeHint::with_exact(*n),
            Inner::Http1(_) => SizeHint::default(),
            Inner::Hyper(body) => body.size_hint(),
        }
    }
}

/// A connection's read side: the socket's and what was read from it but not yet used.
struct ReadSide {
    io: OwnedReadHalf,
    buf: BytesMut,
    /// The rest of a request body the handler did not read is still to come: nothing more is
    /// read from here as a request.
    unread: bool,
}

impl ReadSide {
    /// Reads what the socket has into the buffer, with room for at least `size` more when
    /// little is left; `Ok(0)` is the client's close.
    fn poll_read_more(&mut self, cx: &mut Context<'_>, size: usize) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < size / 8 {
            self.buf.reserve(size);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_more(cx, HEAD_READ)).await
    }
}

/// A body still arriving reads in larger pieces.
impl Buffered for ReadSide {
    fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.poll_read_more(cx, BODY_READ)
    }
}

/// Where a lent read side comes back to.
type Home = Arc<Mutex<Option<ReadSide>>>;

/// A request body still arriving: reads the connection it was lent, and gives it back at the
/// body's end. Dropped before its end, it gives it back marked `unread`: the connection closes
/// after its answer, lingering so the answer is not lost.
struct Http1Body {
    read: Option<ReadSide>,
    framing: Framing,
    home: Home,
}

impl Http1Body {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(r) = &mut self.read else {
            return Poll::Ready(None);
        };
        let closed_early = "the client closed the connection before the request body's end";
        match ready!(self.framing.poll_next(r, cx, closed_early)) {
            Ok(Some(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Ok(None) => {
                self.go_home();
                Poll::Ready(None)
            }
            Err(e) => {
                self.read = None;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn go_home(&mut self) {
        if let Some(r) = self.read.take() {
            *self.home.lock() = Some(r);
        }
    }
}

impl Drop for Http1Body {
    fn drop(&mut self) {
        if let Some(r) = &mut self.read {
            r.unread = !self.framing.is_done();
        }
        self.go_home();
    }
}

/// An HTTP/1 connection being served.
struct Http1<H> {
    /// The read side, while it is not lent to a request body.
    read: Option<ReadSide>,
    write: OwnedWriteHalf,
    /// Where a lent read side comes back.
    home: Home,
    /// The answer being written, gathered into as few writes as it can be.
    out: Vec<u8>,
    peer: SocketAddr,
    handler: H,
    stop: watch::Receiver<bool>,
    served: Served,
    timeouts: Timeouts,
}

/// How an answer's writing ended.
enum Written {
    /// Whole, and the connection may carry another request.
    KeepAlive,
    /// Whole, and the connection is to be closed.
    Close,
    /// The client closed the connection or the write failed.
    Gone,
}

impl<H: Handler> Http1<H> {
    /// A connection whose first bytes, `buf`, have been read.
    fn new(
        stream: TcpStream,
        buf: BytesMut,
        peer: SocketAddr,
        handler: H,
        stop: watch::Receiver<bool>,
        timeouts: Timeouts,
    ) -> Self {
        let (io, write) = stream.into_split();
        Http1 {
            read: Some(ReadSide {
                io,
                buf,
                unread: false,
            }),
            write,
            home: Home::default(),
            out: Vec::new(),
            peer,
            handler,
            stop,
            served: Served::default(),
            timeouts,
        }
    }

    async fn serve(&mut self) -> Served {
        loop {
            let Some(r) = &mut self.read else {
                return self.served;
            };
            if r.buf.is_empty() {
                // Idle: only the socket. A buffer left with a partial next head waits below.
                r.buf = BytesMut::new();
                self.out = Vec::new();
                if self.served.requests > 0 {
                    self.served.idle_waits += 1;
                }
                tokio::select! {
                    ready = tokio::time::timeout(self.timeouts.idle, r.io.readable()) => {
                        // Idle past its deadline, or failed: closed, as nginx's keepalive_timeout.
                        if !matches!(ready, Ok(Ok(()))) { return self.served }
                    }
                    _ = self.stop.wait_for(|s| *s) => return self.served,
                }
            }
            let head = match read_head(r, self.timeouts.head).await {
                Ok(Some(head)) => head,
                Ok(None) => return self.served,
                Err(refused) => {
                    // Boxed, as below: a future is as large as its largest stage.
                    Box::pin(self.refuse(&refused)).await;
                    return self.served;
                }
            };
            match self.exchange(head).await {
                Written::KeepAlive => {}
                Written::Close => {
                    self.close().await;
                    return self.served;
                }
                Written::Gone => return self.served,
            }
        }
    }

    /// Answers one request whose head has been read.
    ///
    /// An async block, not an async fn: an async fn keeps its arguments twice (as passed, and
    /// moved into its body; rust-lang/rust#62958), and a held call waits in this future.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice"
    )]
    fn exchange(&mut self, head: Head) -> impl Future<Output = Written> + '_ {
        async move {
            let r = self.read.as_mut().expect("a head was just read from it");
            let body = match head.body {
                Framing::Length(n) if r.buf.len() as u64 >= n => {
                    RequestBody::full(r.buf.split_to(n as usize).freeze())
                }
                framing => {
                    if head.expect_continue
                        && write_within(&mut self.write, CONTINUE, self.timeouts.write)
                            .await
                            .is_err()
                    {
                        return Written::Gone;
                    }
                    RequestBody(Inner::Http1(Http1Body {
                        read: self.read.take(),
                        framing,
                        home: self.home.clone(),
                    }))
                }
            };
            let version = head.parts.version;
            let head_request = head.parts.method == Method::HEAD;
            let respond = Box::pin(
                self.handler
                    .call(Request::from_parts(head.parts, body), self.peer),
            );
            let Some(resp) = self.unless_closed(respond).await else {
                return Written::Gone;
            };
            self.served.requests += 1;
            if self.read.is_none() {
                self.read = self.home.lock().take();
            }
            // A body not read to its end leaves its rest on the connection (or took the connection
            // with it, failing): close it after this.
            let keep_alive = !head.close
                && self.read.as_ref().is_some_and(|r| !r.unread)
                && !*self.stop.borrow();
            // Boxed: a connection's future is as large as its largest stage, and writing is larger
            // than waiting for the handler, which is where a held call spends its time.
            Box::pin(self.write_response(resp, version, head_request, keep_alive)).await
        }
    }

    /// Writes an answer: its head with the framing of its body, then the body as it comes,
    /// gathered into one write with the head when it is ready with it.
    async fn write_response(
        &mut self,
        resp: Response<H::Body>,
        version: Version,
        head_request: bool,
        mut keep_alive: bool,
    ) -> Written {
        let (parts, mut body) = resp.into_parts();
        let status = parts.status;
        let bodiless = head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let length = body.size_hint().exact();
        let chunked = !bodiless && length.is_none() && version == Version::HTTP_11;
        if !bodiless && length.is_none() && !chunked {
            keep_alive = false; // HTTP/1.0: the body ends with the connection
        }
        let out = &mut self.out;
        out.clear();
        out.reserve(ANSWER_ROOM);
        encode_head(out, &parts, bodiless, length, chunked, keep_alive, version);
        if bodiless {
            return self.flush_last(keep_alive).await;
        }
        let mut left = length;
        loop {
            // What the body has now goes out with what is gathered; only when it has nothing
            // ready is the gathered answer written and the body waited for.
            let polled = match body.frame().now_or_never() {
                Some(frame) => frame,
                None => {
                    if !self.out.is_empty() {
                        if write_within(&mut self.write, &self.out, self.timeouts.write)
                            .await
                            .is_err()
                        {
                            return Written::Gone;
                        }
                        self.out.clear();
                    }
                    match self.unless_closed(body.frame()).await {
                        Some(frame) => frame,
                        None => return Written::Gone,
                    }
                }
            };
            match polled {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers are not sent
                    };
                    if data.is_empty() {
                        continue;
                    }
                    if let Some(left) = &mut left {
                        let Some(rest) = left.checked_sub(data.len() as u64) else {
                            tracing::debug!("a response body is longer than its size said");
                            return Written::Gone;
                        };
                        *left = rest;
                    }
                    if self.put(&data, chunked).await.is_err() {
                        return Written::Gone;
                    }
                }
                Some(Err(e)) => {
                    // The client sees the connection close before the body's end.
                    tracing::debug!(error = %e, "a response body failed");
                    return Written::Gone;
                }
                None => {
                    if left.is_some_and(|n| n > 0) {
                        tracing::debug!("a response body ended before its size said");
                        return Written::Gone;
                    }
                    if chunked {
                        self.out.extend_from_slice(b"0\r\n\r\n");
                    }
                    return self.flush_last(keep_alive).await;
                }
            }
        }
    }

    /// Adds a piece of the body to the answer: a small one is gathered, a large one is written
    /// at once with what was gathered before it.
    async fn put(&mut self, data: &Bytes, chunked: bool) -> io::Result<()> {
        if chunked {
            use std::io::Write as _;
            let _ = write!(self.out, "{:x}\r\n", data.len());
        }
        if data.len() <= COPY_MAX {
            self.out.extend_from_slice(data);
        } else {
            tokio::time::timeout(
                self.timeouts.write,
                write_all_vectored(&mut self.write, &self.out, data),
            )
            .await
            .map_err(|_| stalled_write(self.timeouts.write))??;
            self.out.clear();
        }
        if chunked {
            self.out.extend_from_slice(b"\r\n");
        }
        Ok(())
    }

    async fn flush_last(&mut self, keep_alive: bool) -> Written {
        if write_within(&mut self.write, &self.out, self.timeouts.write)
            .await
            .is_err()
        {
            return Written::Gone;
        }
        self.out.clear();
        if keep_alive {
            Written::KeepAlive
        } else {
            Written::Close
        }
    }

    /// What `work` comes to, or `None` if the client closes the connection first.
    async fn unless_closed<F: Future + Unpin>(&mut self, mut work: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = Pin::new(&mut work).poll(cx) {
                return Poll::Ready(Some(out));
            }
            self.poll_closed(cx).map(|()| None)
        })
        .await
    }

    /// Whether the client closed the connection while its request is served. Bytes of a next
    /// request are kept (up to a head's worth); the read side is watched only while it is
    /// home.
    fn poll_closed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.read.is_none() {
            self.read = self.home.lock().take();
        }
        let Some(r) = self.read.as_mut().filter(|r| !r.unread) else {
            return Poll::Pending;
        };
        while r.buf.len() < MAX_HEAD {
            match ready!(r.poll_read_more(cx, HEAD_READ)) {
                Ok(0) | Err(_) => return Poll::Ready(()),
                Ok(_) => {}
            }
        }
        Poll::Pending
    }

    /// Answers a request refused before the handler saw it, and closes the connection.
    async fn refuse(&mut self, refused: &Refusal) {
        tracing::debug!(peer = %self.peer, status = %refused.status, reason = %refused.reason, "request refused");
        let (content_type, body) = self.handler.refusal(refused.status, &refused.reason);
        let mut resp = Response::new(());
        *resp.status_mut() = refused.status;
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
        let (parts, ()) = resp.into_parts();
        let out = &mut self.out;
        out.clear();
        encode_head(
            out,
            &parts,
            false,
            Some(body.len() as u64),
            false,
            false,
            Version::HTTP_11,
        );
        out.extend_from_slice(&body);
        if write_within(&mut self.write, &self.out, self.timeouts.write)
            .await
            .is_ok()
        {
            if let Some(r) = &mut self.read {
                r.unread = true; // whatever followed the refused head
            }
            self.close().await;
        }
    }

    /// Ends the connection after its last answer. When a request's bytes may still be coming,
    /// what arrives is read and dropped for a while first: closing a socket with unread bytes
    /// resets it, and a reset can discard the answer before the client has read it.
    async fn close(&mut self) {
        if self.write.shutdown().await.is_err() {
            return;
        }
        let Some(r) = self.read.as_mut().filter(|r| r.unread) else {
            return;
        };
        let _ = tokio::time::timeout(LINGER, async {
            loop {
                r.buf.clear();
                if matches!(r.fill().await, Ok(0) | Err(_)) {
                    return;
                }
            }
        })
        .await;
    }
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Writes `bytes` whole within `timeout`, or fails: an agent that stops reading holds its
/// connection, and the answer waiting for it, only that long.
async fn write_within(w: &mut OwnedWriteHalf, bytes: &[u8], timeout: Duration) -> io::Result<()> {
    tokio::time::timeout(timeout, w.write_all(bytes))
        .await
        .map_err(|_| stalled_write(timeout))?
}

fn stalled_write(timeout: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the agent read nothing for {} s", timeout.as_secs_f64()),
    )
}

/// Writes `first` then `second` whole, in as few system calls as the socket takes them.
async fn write_all_vectored(w: &mut OwnedWriteHalf, first: &[u8], second: &[u8]) -> io::Result<()> {
    let mut slices = [io::IoSlice::new(first), io::IoSlice::new(second)];
    let mut left = &mut slices[..];
    io::IoSlice::advance_slices(&mut left, 0);
    while !left.is_empty() {
        match w.write_vectored(left).await? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => io::IoSlice::advance_slices(&mut left, n),
        }
    }
    Ok(())
}

/// Reads the next request head; `None` when the client closed before a whole one arrived.
async fn read_head(r: &mut ReadSide, timeout: Duration) -> Result<Option<Head>, Refusal> {
    let mut deadline = None;
    loop {
        if !r.buf.is_empty() {
            match parse_head(&mut r.buf)? {
                Some(head) => return Ok(Some(head)),
                None if r.buf.len() >= MAX_HEAD => {
                    return Err(refusal(
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        format!("the request head is larger than {} KiB", MAX_HEAD / 1024),
                    ));
                }
                None => {}
            }
        }
        // A connection turns readable with its head nearly always there: a timer is set only
        // when the rest has to be waited for.
        let filled = match r.fill().now_or_never() {
            Some(filled) => filled,
            None => {
                let deadline =
                    *deadline.get_or_insert_with(|| tokio::time::Instant::now() + timeout);
                tokio::time::timeout_at(deadline, r.fill())
                    .await
                    .map_err(|_| {
                        refusal(
                            StatusCode::REQUEST_TIMEOUT,
                            format!(
                                "the request head did not arrive within {} s",
                                timeout.as_secs_f64()
                            ),
                        )
                    })?
            }
        };
        if matches!(filled, Ok(0) | Err(_)) {
            return Ok(None);
        }
    }
}

/// The head of an answer. Framing and connection fields are the server's to write; a
/// `Content-Length` is kept only where it describes a body not sent (HEAD, 304).
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    bodiless: bool,
    length: Option<u64>,
    chunked: bool,
    keep_alive: bool,
    version: Version,
) {
    let status = parts.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let keep_length = bodiless
        && status != StatusCode::NO_CONTENT
        && !status.is_informational()
        && parts.headers.contains_key(header::CONTENT_LENGTH);
    for (name, value) in &parts.headers {
        if name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || (name == header::CONTENT_LENGTH && !keep_length)
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !bodiless {
        if let Some(n) = length {
            put_content_length(out, n);
        } else if chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
    }
    if !parts.headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Today's `Date`, formatted once a second per thread.
fn http_date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_heads_state_their_own_framing() {
        let head = |status: u16, headers: &[(&str, &str)], bodiless, length, chunked, ka| {
            let mut resp = Response::builder().status(status);
            for (k, v) in headers {
                resp = resp.header(*k, *v);
            }
            let (parts, ()) = resp.body(()).unwrap().into_parts();
            let mut out = Vec::new();
            encode_head(
                &mut out,
                &parts,
                bodiless,
                length,
                chunked,
                ka,
                Version::HTTP_11,
            );
            String::from_utf8(out).unwrap()
        };
        let ok = head(
            200,
            &[
                ("content-length", "99"),
                ("transfer-encoding", "chunked"),
                ("connection", "x"),
                ("date", "d"),
            ],
            false,
            Some(5),
            false,
            true,
        );
        assert_eq!(
            ok,
            "HTTP/1.1 200 OK\r\ndate: d\r\ncontent-length: 5\r\n\r\n"
        );
        let stream = head(200, &[("date", "d")], false, None, true, false);
        assert_eq!(
            stream,
            "HTTP/1.1 200 OK\r\ndate: d\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        // HEAD keeps the length of the body it does not send; 204 states none.
        let for_head = head(
            200,
            &[("content-length", "7"), ("date", "d")],
            true,
            Some(0),
            false,
            true,
        );
        assert_eq!(
            for_head,
            "HTTP/1.1 200 OK\r\ncontent-length: 7\r\ndate: d\r\n\r\n"
        );
        let no_content = head(
            204,
            &[("content-length", "7"), ("date", "d")],
            true,
            Some(0),
            false,
            true,
        );
        assert_eq!(no_content, "HTTP/1.1 204 No Content\r\ndate: d\r\n\r\n");
        assert!(head(200, &[], false, Some(0), false, true).contains("\r\ndate: "));
    }
}
