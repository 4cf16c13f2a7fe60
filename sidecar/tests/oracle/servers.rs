//! The two servers the inbound oracle compares, each noting the requests its handler is handed:
//! Tollgate's (`server::serve` with [`Noting`]) and hyper's HTTP/1 server ([`serve_hyper`]).
//! Shared by `http_server_oracle` and the `http_framing` fuzz target.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tollgate_sidecar::http::BoxBody;
use tollgate_sidecar::http::server::{Handler, RequestBody};

/// A request as a handler was handed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    method: String,
    uri: String,
    version: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

pub type Log = Arc<Mutex<Vec<Seen>>>;

fn note(log: &Log, parts: http::request::Parts, body: Option<Bytes>) {
    // A body that could not be read whole is no request handed over.
    let Some(body) = body else { return };
    log.lock().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        version: format!("{:?}", parts.version),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect(),
        body: body.to_vec(),
    });
}

#[derive(Clone, Default)]
pub struct Noting(pub Log);

impl Handler for Noting {
    type Body = BoxBody;

    fn call(
        &self,
        req: Request<RequestBody>,
        _peer: SocketAddr,
    ) -> impl Future<Output = Response<BoxBody>> + Send + 'static + use<> {
        let log = self.0.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.ok().map(|c| c.to_bytes());
            note(&log, parts, body);
            Response::new(
                Full::new(Bytes::from_static(b"ok"))
                    .map_err(|never| match never {})
                    .boxed(),
            )
        }
    }
}

/// Serves one connection with hyper's HTTP/1 server, noting what its handler is handed.
pub async fn serve_hyper(stream: TcpStream, log: Log) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let log = log.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.ok().map(|c| c.to_bytes());
            note(&log, parts, body);
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
