//! Tollgate's HTTP stack with nothing on it: the sidecar's connection handling (`server::serve`,
//! a thread per core with its own listener) and its upstream client (`upstream::Upstream`),
//! forwarding every request as it is. The benchmark runs it next to `tollgate proxy` so the table splits
//! Tollgate's cost into what the HTTP stack costs and what deciding costs.
//!
//! Not a product: it checks nothing and exists only to be measured.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use http_body_util::BodyExt;
use hyper::{Request, Response, StatusCode, Uri};
use tollgate_sidecar::http::client::{Outgoing, Upstream};

type Body = tollgate_sidecar::http::BoxBody;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: SocketAddr,
    /// `http://HOST:PORT` of the server.
    #[arg(long)]
    upstream: Uri,
}

#[derive(Clone)]
struct Forward {
    client: Arc<Upstream>,
}

impl tollgate_sidecar::http::server::Handler for Forward {
    type Body = Body;

    fn call(
        &self,
        req: Request<tollgate_sidecar::http::server::RequestBody>,
        _peer: SocketAddr,
    ) -> impl Future<Output = Response<Body>> + Send + 'static + use<> {
        let this = self.clone();
        async move {
            let (mut parts, body) = req.into_parts();
            parts.headers.remove(hyper::header::CONNECTION);
            match this.client.send(&parts, Outgoing::streamed(body)).await {
                Ok(resp) => resp.map(BodyExt::boxed),
                Err(e) => {
                    let mut r = Response::new(
                        http_body_util::Full::new(Bytes::from(e.to_string()))
                            .map_err(|never| match never {})
                            .boxed(),
                    );
                    *r.status_mut() = StatusCode::BAD_GATEWAY;
                    r
                }
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let authority = args
        .upstream
        .authority()
        .ok_or_else(|| anyhow::anyhow!("--upstream has no host"))?
        .as_str();
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let listeners = tollgate_sidecar::serve::bind_shared(args.listen, workers, "--listen")?;
    // Never sent: the benchmark kills this process.
    let (_stop, stopping) = tokio::sync::watch::channel(false);
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            // The sidecar's own upstream client, one per worker as the sidecar makes them.
            let handler = Forward {
                client: Upstream::new(authority),
            };
            let stopping = stopping.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    loop {
                        let (stream, peer) = listener.accept().await?;
                        let _ = stream.set_nodelay(true);
                        let (handler, stopping) = (handler.clone(), stopping.clone());
                        tokio::spawn(tollgate_sidecar::http::server::serve(
                            stream, peer, handler, stopping,
                        ));
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
