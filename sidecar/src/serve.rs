//! Listeners: the proxy port, and the admin port (`/healthz`, `/readyz`, `/metrics`, and the
//! app's probes under `/app-health/`, see [`crate::app_probes`]).
//!
//! SIGTERM (or Ctrl-C) turns `/readyz` to 503 at once, stops accepting after
//! `--shutdown-delay`, lets in-flight requests finish for up to the drain time, then exits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tollgate_api::contract::{APP_HEALTH_PREFIX, AppProbe, AppProbes};

use crate::http::BoxBody;
use crate::policy::PolicyHandle;
use crate::policy::counters::CounterStore;
use crate::proxy::Proxy;
use crate::telemetry::audit::AuditLog;
use crate::telemetry::metrics::Metrics;

/// Serves the proxy until `shutdown` resolves, then drains.
pub async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    drain: Duration,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // Each connection holds a clone of `open`; `closed` resolves when the last one is gone.
    let (stop, stopping) = watch::channel(false);
    let (open, mut closed) = mpsc::channel::<()>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (proxy, stopping, open) = (proxy.clone(), stopping.clone(), open.clone());
                tokio::spawn(async move {
                    crate::http::server::serve(stream, peer, proxy, stopping).await;
                    drop(open);
                });
            }
            _ = &mut shutdown => {
                tracing::info!("shutting down: draining in-flight requests");
                break;
            }
        }
    }
    drop(listener);
    let _ = stop.send(true);
    drop(open);
    tokio::select! {
        _ = closed.recv() => tracing::info!("drained"),
        _ = tokio::time::sleep(drain) => tracing::warn!(?drain, "drain time passed; closing the remaining connections"),
    }
    Ok(())
}

/// SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// What `/readyz` answers from.
#[derive(Clone)]
pub struct Health {
    pub policy: PolicyHandle,
    pub counters: Arc<CounterStore>,
    pub audit: AuditLog,
    /// Set at SIGTERM.
    pub stopping: Arc<AtomicBool>,
}

impl Health {
    /// `/readyz`: ready when a policy is in force, the audit log takes lines, and the proxy is
    /// not shutting down; the body says why not, and how each part is.
    fn readyz(&self) -> (StatusCode, String) {
        let state = self.policy.current();
        let first = if self.stopping.load(Ordering::Relaxed) {
            Err("shutting down: in-flight calls finish, new ones go elsewhere".to_string())
        } else if !state.ready {
            Err(state.last_error.clone().unwrap_or_default())
        } else if let Err(why) = self.audit.admits() {
            Err(why)
        } else {
            Ok(format!("ready: policy revision {}", state.set.revision))
        };
        let mut body = match &first {
            Ok(line) => line.clone(),
            Err(why) => format!("not ready: {why}"),
        };
        let refused = state
            .ready
            .then(|| state.last_error.as_ref())
            .flatten()
            .map(|e| format!("last policy update refused: {}", e.replace('\n', " ")));
        for line in [
            refused,
            self.policy.source_status(),
            Some(self.counters.status()),
            Some(self.audit.status()),
        ]
        .into_iter()
        .flatten()
        {
            body.push('\n');
            body.push_str(&line);
        }
        body.push('\n');
        let status = match first {
            Ok(_) => StatusCode::OK,
            Err(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, body)
    }
}

/// Serves `/healthz`, `/readyz`, `/metrics`, and the app's probes under `/app-health/`.
pub async fn serve_admin(
    listener: TcpListener,
    health: Health,
    metrics: Metrics,
    probes: Arc<AppProbes>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let health = health.clone();
        let metrics = metrics.clone();
        let probes = probes.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let (health, metrics, probes) = (health.clone(), metrics.clone(), probes.clone());
            async move {
                let path = req.uri().path();
                let resp = match path.strip_prefix(APP_HEALTH_PREFIX) {
                    Some(name) => app_health(path, probes.get(name)).await,
                    None => admin(path, &health, &metrics),
                };
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(conn);
    }
}

fn text(status: StatusCode, body: String, ctype: &'static str) -> Response<BoxBody> {
    let mut r = Response::new(
        http_body_util::Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    r
}

/// One of the app's probes, run now (a probe injection did not hand over is a 404).
async fn app_health(path: &str, probe: Option<&AppProbe>) -> Response<BoxBody> {
    let Some(probe) = probe else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no app probe is configured at {path}\n"),
            "text/plain",
        );
    };
    let found = crate::app_probes::run(probe).await;
    let status = if found.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(status, format!("{}\n", found.said), "text/plain")
}

fn admin(path: &str, health: &Health, metrics: &Metrics) -> Response<BoxBody> {
    match path {
        "/healthz" | "/livez" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" => {
            let (status, body) = health.readyz();
            text(status, body, "text/plain")
        }
        "/metrics" => text(
            StatusCode::OK,
            metrics.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz or /metrics\n".into(),
            "text/plain",
        ),
    }
}

/// Binds an address with a message that names the flag.
pub async fn bind(addr: SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    let listener = listen(addr, false)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({flag}): {e}"))?;
    Ok(TcpListener::from_std(listener)?)
}

/// `n` listeners on one address (SO_REUSEPORT), one per worker thread: the kernel spreads new
/// connections across them, as it does for nginx's workers. Plain sockets (non-blocking, for
/// each worker's runtime to take), so no runtime is needed to make them.
pub fn bind_shared(
    addr: SocketAddr,
    n: usize,
    flag: &str,
) -> anyhow::Result<Vec<std::net::TcpListener>> {
    (0..n)
        .map(|_| {
            listen(addr, true).map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({flag}): {e}"))
        })
        .collect()
}

/// A listening socket. `[::]` means both families, whatever the pod has: one dual-stack socket
/// (IPv4 arrives mapped) where the kernel has IPv6, and `0.0.0.0` where it has none (a pod
/// whose IPv6 is disabled), so one injected address serves IPv4-only, IPv6-only and
/// dual-stack pods alike.
fn listen(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let open = |addr: SocketAddr| -> std::io::Result<std::net::TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            socket.set_only_v6(false)?;
        }
        socket.set_reuse_address(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        Ok(socket.into())
    };
    match open(addr) {
        Err(e) if addr.is_ipv6() && addr.ip().is_unspecified() && no_ipv6(&e) => {
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            tracing::info!(%addr, fallback = %v4, error = %e, "no IPv6 here; listening on IPv4 alone");
            open(v4)
        }
        other => other,
    }
}

/// Whether an error says this host (or pod) has no IPv6 at all.
fn no_ipv6(e: &std::io::Error) -> bool {
    /// Linux's EAFNOSUPPORT: the kernel was built without IPv6.
    const NO_FAMILY: i32 = 97;
    // Or EADDRNOTAVAIL: IPv6 is disabled in this network namespace.
    e.kind() == std::io::ErrorKind::AddrNotAvailable || e.raw_os_error() == Some(NO_FAMILY)
}

#[cfg(test)]
mod listen_tests {
    use super::*;

    #[tokio::test]
    async fn an_unspecified_ipv6_address_serves_both_families() {
        let listener = bind("[::]:0".parse().unwrap(), "--listen").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        for peer in ["127.0.0.1", "::1"] {
            let ip: std::net::IpAddr = peer.parse().unwrap();
            let accept = listener.accept();
            let connect = tokio::net::TcpStream::connect((ip, port));
            let (accepted, connected) = tokio::join!(accept, connect);
            assert!(
                accepted.is_ok() && connected.is_ok(),
                "{peer} was not served"
            );
        }
    }

    #[test]
    fn shared_listeners_on_both_families_take_one_port() {
        let first = bind_shared("[::]:0".parse().unwrap(), 1, "--listen").unwrap();
        let port = first[0].local_addr().unwrap().port();
        let more = bind_shared(SocketAddr::from(([0u16; 8], port)), 2, "--listen").unwrap();
        assert_eq!(more.len(), 2);
    }
}
