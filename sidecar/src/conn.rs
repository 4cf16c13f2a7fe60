//! One inbound connection, held at the cost of its socket while it idles.
//!
//! hyper keeps two 8 KiB buffers and its dispatcher for the whole life of an HTTP/1
//! connection, busy or idle: about 20 KiB for every agent that keeps a connection open. So an
//! HTTP/1 connection here is served by a hyper connection only while requests are on it. Once
//! every response has been handed to hyper and hyper waits, the hyper connection is ended
//! gracefully, which hyper does at once when idle and after flushing when still writing. It
//! ends without shutting the socket: `poll_without_shutdown` and `into_parts` (hyper's API for
//! upgrades) hand the socket back, with any bytes of a next request already read. The socket
//! then waits alone until it is readable again, as nginx frees its buffers on an idle
//! keep-alive connection.
//!
//! A response counts from the moment hyper calls the service until hyper drops its body, so
//! no response head can be written during the graceful end: no client sees
//! `Connection: close` because of it.
//!
//! HTTP/2 with prior knowledge is served by hyper for the connection's life.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::FutureExt;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// What a connection serves: a request and the peer's address in, a response out.
pub trait Handler: Clone + Send + Sync + Unpin + 'static {
    /// The response body.
    type Body: Body<Data = Bytes, Error = crate::BoxError> + Send + Unpin + 'static;
    /// Answers one request.
    fn call(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Self::Body>> + Send + 'static + use<Self>;
}

/// The HTTP/2 connection preface a prior-knowledge client opens with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How a connection was served.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// Served by hyper-util's HTTP/2-or-1 connection for its whole life.
    pub http2: bool,
    /// Times an idle HTTP/1 connection gave back hyper's state and waited alone.
    pub hand_offs: usize,
}

/// Serves `stream` until the peer closes it or it fails. When `stop` turns true, an idle
/// connection is closed at once and a busy one after its response (`Connection: close`).
pub async fn serve<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    handler: H,
    mut stop: watch::Receiver<bool>,
) -> Served {
    let mut first = [0u8; H2_PREFACE.len()];
    let n = tokio::select! {
        peeked = stream.peek(&mut first) => match peeked {
            Ok(n) if n > 0 => n,
            _ => return Served::default(),
        },
        _ = stop.wait_for(|s| *s) => return Served::default(),
    };
    if first[..n] == H2_PREFACE[..n] {
        // HTTP/2, or too few bytes to tell yet: hyper-util reads on and decides. Boxed, so
        // that HTTP/1 connections' tasks are not sized for hyper's HTTP/2 state.
        Box::pin(serve_auto(stream, peer, handler, stop)).await;
        Served {
            http2: true,
            hand_offs: 0,
        }
    } else {
        Served {
            http2: false,
            hand_offs: serve_http1(stream, peer, handler, stop).await,
        }
    }
}

async fn serve_auto<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    handler: H,
    mut stop: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        handler.call(req, peer).map(Ok::<_, Infallible>)
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
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

/// Returns the number of hand-offs.
async fn serve_http1<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    handler: H,
    mut stop: watch::Receiver<bool>,
) -> usize {
    let state = Arc::new(State::default());
    let mut io = HandOff {
        stream,
        replay: Bytes::new(),
    };
    let builder = http1::Builder::new();
    let mut hand_offs = 0;
    loop {
        // Idle: only this task and the socket. Bytes replayed from the last hyper connection
        // are an incomplete request (a complete one would have been served), so this waits
        // for more either way.
        tokio::select! {
            ready = io.stream.readable() => if ready.is_err() { return hand_offs },
            _ = stop.wait_for(|s| *s) => return hand_offs,
        }
        let service = Service {
            handler: handler.clone(),
            peer,
            state: state.clone(),
        };
        let mut conn = Box::new(builder.serve_connection(TokioIo::new(io), service));
        let mut handing_off = false;
        let ended = {
            let mut stopping = false;
            let mut stopped = std::pin::pin!(async {
                let _ = stop.wait_for(|s| *s).await;
            });
            std::future::poll_fn(|cx| {
                if !stopping && stopped.as_mut().poll(cx).is_ready() {
                    stopping = true;
                    Pin::new(&mut *conn).graceful_shutdown();
                }
                let polled = conn.poll_without_shutdown(cx);
                if polled.is_pending() && !stopping && !handing_off && state.idle() {
                    handing_off = true;
                    Pin::new(&mut *conn).graceful_shutdown();
                    return conn.poll_without_shutdown(cx);
                }
                polled
            })
            .await
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, "connection ended with an error");
            return hand_offs;
        }
        if !handing_off {
            // The peer closed, hyper answered `Connection: close`, or the proxy is stopping.
            return hand_offs;
        }
        hand_offs += 1;
        let parts = conn.into_parts();
        io = parts.io.into_inner();
        // A copy: `read_buf` shares hyper's whole read buffer, which is what to let go.
        io.replay = Bytes::copy_from_slice(&parts.read_buf);
    }
}

/// The responses of one connection not yet written.
#[derive(Default)]
struct State {
    outstanding: AtomicUsize,
}

impl State {
    /// hyper waits for the next request, or is flushing the last answer, which it finishes
    /// before a graceful end.
    fn idle(&self) -> bool {
        self.outstanding.load(Ordering::Relaxed) == 0
    }
}

/// One response being made or written; done when dropped.
struct Outstanding(Arc<State>);

impl Outstanding {
    fn new(state: &Arc<State>) -> Self {
        state.outstanding.fetch_add(1, Ordering::Relaxed);
        Outstanding(state.clone())
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The socket as hyper sees it: first the bytes an earlier hyper connection read past its
/// last request.
struct HandOff {
    stream: TcpStream,
    replay: Bytes,
}

impl AsyncRead for HandOff {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.replay.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let n = this.replay.len().min(buf.remaining());
        buf.put_slice(&this.replay[..n]);
        this.replay.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for HandOff {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// hyper's service on one HTTP/1 hyper connection: counts the responses not yet written.
struct Service<H> {
    handler: H,
    peer: SocketAddr,
    state: Arc<State>,
}

type ServiceFuture<B> = Pin<Box<dyn Future<Output = Result<Response<B>, Infallible>> + Send>>;

impl<H: Handler> hyper::service::Service<Request<Incoming>> for Service<H> {
    type Response = Response<Tracked<H::Body>>;
    type Error = Infallible;
    type Future = ServiceFuture<Tracked<H::Body>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let outstanding = Outstanding::new(&self.state);
        // `map`, not an async block: a block would hold the handler's future twice (as
        // captured, and as awaited), doubling the allocation every request makes.
        Box::pin(self.handler.call(req, self.peer).map(move |resp| {
            Ok(resp.map(|body| Tracked {
                body,
                _outstanding: outstanding,
            }))
        }))
    }
}

/// A response body, outstanding until hyper drops it (after its end, or on a broken
/// connection).
struct Tracked<B> {
    body: B,
    _outstanding: Outstanding,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
