//! Every wait has a deadline: how long each may take, and a body that fails when it stops
//! making progress.
//!
//! ```text
//! agent ─ first byte ─ head ─ body progress ─┐          ┌─ server's head ─ server's body progress
//!        (keep-alive idle between requests)  └─ proxy ──┘
//!        writes to the agent: each must progress
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::http::BoxError;

/// How long each wait may take. Every one has a flag (`tollgate proxy --help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From accepting a connection to its first byte.
    pub first_byte: Duration,
    /// From a request head's first byte to its end.
    pub head: Duration,
    /// Between two pieces of a request body.
    pub body: Duration,
    /// A kept-alive connection waiting for its next request.
    pub idle: Duration,
    /// A write to the agent that takes no bytes.
    pub write: Duration,
    /// From sending a request to the MCP server to the head of its answer (a tool's run).
    pub upstream_head: Duration,
    /// Between two pieces of the server's answer (an SSE stream's silence).
    pub upstream_body: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            first_byte: Duration::from_secs(10),
            head: Duration::from_secs(30),
            body: Duration::from_secs(30),
            idle: Duration::from_secs(120),
            write: Duration::from_secs(30),
            upstream_head: Duration::from_secs(300),
            upstream_body: Duration::from_secs(3600),
        }
    }
}

/// A deadline on silence: how long something may wait for its next piece, counted from when
/// it began to wait. The timer is made the first time it has to wait, then reused.
pub struct Stall {
    every: Duration,
    what: &'static str,
    /// The timer, and whether it is armed (the thing is waiting).
    sleep: Option<(Pin<Box<Sleep>>, bool)>,
}

impl Stall {
    /// `what` names the wait in the error (e.g. "the request body").
    pub fn new(every: Duration, what: &'static str) -> Self {
        Stall {
            every,
            what,
            sleep: None,
        }
    }

    /// A piece came: the next wait counts afresh.
    pub fn progressed(&mut self) {
        if let Some((_, armed)) = &mut self.sleep {
            *armed = false;
        }
    }

    /// The thing is waiting: ready with the error once it has waited too long.
    pub fn poll_waiting(&mut self, cx: &mut Context<'_>) -> Poll<Stalled> {
        let deadline = Instant::now() + self.every;
        let sleep = match &mut self.sleep {
            Some((sleep, armed)) => {
                if !*armed {
                    sleep.as_mut().reset(deadline);
                    *armed = true;
                }
                sleep
            }
            None => {
                &mut self
                    .sleep
                    .insert((Box::pin(tokio::time::sleep_until(deadline)), true))
                    .0
            }
        };
        sleep.as_mut().poll(cx).map(|()| Stalled {
            what: self.what,
            every: self.every,
        })
    }
}

/// A wait that passed its deadline.
#[derive(Debug, thiserror::Error)]
#[error("{what} made no progress for {} s", every.as_secs_f64())]
pub struct Stalled {
    pub what: &'static str,
    pub every: Duration,
}

/// A body that fails once it has produced nothing for its deadline.
pub struct Progress<B> {
    inner: B,
    stall: Stall,
}

impl<B> Progress<B> {
    /// `what` names the wait in the error (e.g. "the request body").
    pub fn new(inner: B, every: Duration, what: &'static str) -> Self {
        Progress {
            inner,
            stall: Stall::new(every, what),
        }
    }
}

impl<B> Body for Progress<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.stall.progressed();
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => this
                .stall
                .poll_waiting(cx)
                .map(|stalled| Some(Err(stalled.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use http_body_util::StreamBody;

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_fails_after_its_deadline_and_one_that_moves_does_not() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let stream = tokio_stream_from(rx);
        let mut body = Progress::new(StreamBody::new(stream), Duration::from_secs(5), "the body");
        let sender = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(tx);
        });
        for _ in 0..3 {
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "x");
        }
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "the body made no progress for 5 s");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        sender.abort();
    }

    fn tokio_stream_from<T>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
