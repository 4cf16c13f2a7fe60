//! The least an HTTP/1 proxy on tokio costs: `httparse` on both sides, `Content-Length`
//! bodies only, a thread per core, each with its own listener and pool of upstream sockets.
//!
//! A reference for the benchmark, not a proxy to run: no chunked bodies, no timeouts, no
//! header rewriting, no checks. Compared with `passthrough` (Tollgate's HTTP stack, which does
//! all of that), it shows what those cost over HTTP itself.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use anyhow::Context;
use clap::Parser;
use hyper::Uri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: SocketAddr,
    /// `http://HOST:PORT` of the server.
    #[arg(long)]
    upstream: Uri,
}

/// A worker's idle upstream connections.
type Pool = Rc<RefCell<Vec<TcpStream>>>;

const MAX_HEADERS: usize = 64;

fn content_length(headers: &[httparse::Header<'_>]) -> Option<usize> {
    match headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        None => Some(0),
        Some(h) => std::str::from_utf8(h.value).ok()?.trim().parse().ok(),
    }
}

/// Reads one message, head and `Content-Length` body, into `buf`; returns its length. `None`
/// when the peer closed, or sent what this reference does not read (e.g. a chunked body).
async fn read_message(s: &mut TcpStream, buf: &mut Vec<u8>, request: bool) -> Option<usize> {
    buf.clear();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let head = if request {
            let mut r = httparse::Request::new(&mut headers);
            match r.parse(buf).ok()? {
                httparse::Status::Complete(n) => Some((n, content_length(r.headers)?)),
                httparse::Status::Partial => None,
            }
        } else {
            let mut r = httparse::Response::new(&mut headers);
            match r.parse(buf).ok()? {
                httparse::Status::Complete(n) => Some((n, content_length(r.headers)?)),
                httparse::Status::Partial => None,
            }
        };
        if let Some((head, body)) = head {
            let total = head + body;
            buf.reserve(total.saturating_sub(buf.len()));
            while buf.len() < total {
                if s.read_buf(buf).await.ok()? == 0 {
                    return None;
                }
            }
            return Some(total);
        }
        buf.reserve(4096);
        if s.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

async fn serve(mut client: TcpStream, upstream: SocketAddr, pool: Pool) {
    let (mut request, mut response) = (Vec::new(), Vec::new());
    while let Some(n) = read_message(&mut client, &mut request, true).await {
        let pooled = pool.borrow_mut().pop();
        let mut up = match pooled {
            Some(up) => up,
            None => match TcpStream::connect(upstream).await {
                Ok(up) => {
                    let _ = up.set_nodelay(true);
                    up
                }
                Err(_) => return,
            },
        };
        if up.write_all(&request[..n]).await.is_err() {
            return;
        }
        let Some(m) = read_message(&mut up, &mut response, false).await else {
            return;
        };
        pool.borrow_mut().push(up);
        if client.write_all(&response[..m]).await.is_err() {
            return;
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let upstream: SocketAddr = args
        .upstream
        .authority()
        .context("--upstream needs HOST:PORT")?
        .as_str()
        .parse()
        .context("--upstream needs an IP address and port")?;
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let listeners = tollgate_sidecar::serve::bind_shared(args.listen, workers, "--listen")?;
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            std::thread::spawn(move || -> anyhow::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                tokio::task::LocalSet::new().block_on(&runtime, async move {
                    let listener = TcpListener::from_std(listener)?;
                    let pool = Pool::default();
                    loop {
                        let (stream, _) = listener.accept().await?;
                        let _ = stream.set_nodelay(true);
                        tokio::task::spawn_local(serve(stream, upstream, pool.clone()));
                    }
                })
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a worker panicked")?;
    }
    Ok(())
}
