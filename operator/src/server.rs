//! The operator's two listeners.
//!
//! ```text
//! HTTPS :8443  POST /mutate     mutating webhook (AdmissionReview v1)
//!              POST /validate   validating webhook
//!              POST /approvals  McpApproval decisions (who may, who did)
//!              POST /pins       McpToolPin acceptances (who may, who did)
//!              GET  /v1/policy  policy stream (one per sidecar)
//!              /v1/approvals    held calls: ask, wait, use (crate::approvals)
//!              POST /v1/pins    a tool listed: pinned on first use, or held (crate::pins)
//! HTTP  :9090  GET  /healthz, /readyz
//! ```
//!
//! Every replica serves all of these; only the leader runs the controllers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use kube::Client;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admission;
use crate::health::Health;
use crate::index::Index;
use crate::inject::InjectConfig;
pub use crate::respond::{Body, full, text};
use crate::tls::ServingCert;

/// The largest AdmissionReview accepted (the API server's own request limit is 3 MiB).
const MAX_REVIEW_BYTES: usize = 4 * 1024 * 1024;

/// What the HTTPS handlers share.
pub struct Shared {
    pub client: Client,
    /// Events the HTTPS handlers publish (a tool pinned or held back).
    pub recorder: kube::runtime::events::Recorder,
    /// The operator's own user, as the API server knows it (its first-use pins are its
    /// alone to write); `None` where the API server would not say.
    pub user: Option<String>,
    pub index: Arc<Index>,
    pub inject: InjectConfig,
    pub serving: Arc<ServingCert>,
}

/// Binds `addr`. `[::]` serves both families (Linux's dual-stack default) where the pod has
/// IPv6, and falls back to `0.0.0.0` where it has none, so one default serves IPv4-only,
/// IPv6-only and dual-stack clusters, whose kubelets probe the pod's primary address.
pub async fn bind(addr: SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    let bound = match TcpListener::bind(addr).await {
        Err(e) if addr.is_ipv6() && addr.ip().is_unspecified() && no_ipv6(&e) => {
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            tracing::info!(%addr, fallback = %v4, error = %e, "no IPv6 here; listening on IPv4 alone");
            TcpListener::bind(v4).await
        }
        other => other,
    };
    bound.with_context(|| format!("cannot listen on {addr} ({flag})"))
}

/// Whether an error says this host (or pod) has no IPv6: EAFNOSUPPORT (the kernel has none) or
/// EADDRNOTAVAIL (it is disabled in this network namespace).
fn no_ipv6(e: &std::io::Error) -> bool {
    const NO_FAMILY: i32 = 97;
    e.kind() == std::io::ErrorKind::AddrNotAvailable || e.raw_os_error() == Some(NO_FAMILY)
}

/// Serves the webhooks and the policy stream until `shutdown` resolves.
pub async fn serve_https(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let acceptor = TlsAcceptor::from(Arc::new(shared.serving.server_config()?));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(observed(req, shared).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    // Webhook calls finish; streams are cut and their sidecars reconnect to another replica.
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
    Ok(())
}

/// A request, served with its metrics and, when traced, its span (a webhook call from the API
/// server carries its `traceparent` when the API server traces).
async fn observed(req: Request<Incoming>, shared: Arc<Shared>) -> Response<Body> {
    use tollgate_sidecar::telemetry::trace::{self, Attr, SpanKind};
    let started = std::time::Instant::now();
    let name = crate::telemetry::route_of(req.method(), req.uri().path());
    let traced = crate::telemetry::tracer().request(req.headers(), SpanKind::Server);
    let resp = match &traced {
        None => route(req, shared).await,
        Some(t) => {
            t.name(format!("{} {}", req.method(), req.uri().path()));
            t.set([
                (
                    "http.request.method",
                    Attr::Str(req.method().to_string().into()),
                ),
                ("url.path", Attr::Str(req.uri().path().to_string().into())),
                ("tollgate.route", Attr::from(name)),
            ]);
            trace::scope(t.clone(), route(req, shared)).await
        }
    };
    let code = resp.status().as_u16();
    if let Some(t) = traced {
        t.set([("http.response.status_code", Attr::from(u64::from(code)))]);
        if resp.status().is_server_error() {
            t.error(format!("answered {}", resp.status()));
        }
        t.end_request();
    }
    let m = crate::telemetry::metrics();
    m.requests
        .get_or_create(&crate::telemetry::RouteCode { route: name, code })
        .inc();
    m.request_seconds
        .get_or_create(&crate::telemetry::Route { route: name })
        .observe(started.elapsed().as_secs_f64());
    resp
}

async fn route(req: Request<Incoming>, shared: Arc<Shared>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/mutate") => {
            let request = match read_review(req).await {
                Ok(r) => r,
                Err(resp) => return resp,
            };
            let ns = request.namespace.clone().unwrap_or_default();
            let mut config = shared.inject.clone();
            config.control_plane_ca = shared.serving.ca_pem().to_string();
            let mutation =
                admission::mutate(&request, &shared.index.namespace_labels(&ns), &config);
            let mut response = mutation.response;
            // A dry run must have no side effects (the webhook says sideEffects: NoneOnDryRun).
            if let (Some((port, labels)), false) = (mutation.network_policy, request.dry_run) {
                let made = crate::boundary::ensure_for_admission(
                    &shared.client,
                    &shared.index,
                    &ns,
                    port,
                    &labels,
                )
                .await;
                if let Err(e) = made {
                    tracing::warn!(namespace = %ns, port, error = %e, "cannot create the NetworkPolicy; the pod is refused");
                    response = admission::refuse_without_network_policy(
                        kube::core::admission::AdmissionResponse::from(&request),
                        port,
                        &e,
                    );
                }
            }
            answer("mutate", response)
        }
        (&Method::POST, "/approvals") => match read_review(req).await {
            Ok(request) => answer(
                "approvals",
                crate::approvals::admit(&shared.client, &request).await,
            ),
            Err(resp) => resp,
        },
        (&Method::POST, "/pins") => match read_review(req).await {
            Ok(request) => answer(
                "pins",
                crate::pins::admit(&shared.client, shared.user.as_deref(), &request).await,
            ),
            Err(resp) => resp,
        },
        (&Method::POST, tollgate_api::contract::PINS_PATH) => pin_report(req, &shared).await,
        (&Method::POST, "/validate") => match read_review(req).await {
            Ok(request) => answer("validate", admission::validate(&request)),
            Err(resp) => resp,
        },
        (&Method::GET, tollgate_api::contract::STREAM_PATH) => {
            let auth = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            crate::stream::serve(auth, shared.client.clone(), shared.index.clone()).await
        }
        (_, path) if path.starts_with(tollgate_api::contract::APPROVALS_PATH) => {
            held_call(req, &shared).await
        }
        (_, path) => text(StatusCode::NOT_FOUND, &format!("no route for {path}")),
    }
}

/// A sidecar's report of a tool it listed: `POST /v1/pins` with the pod's token.
async fn pin_report(req: Request<Incoming>, shared: &Shared) -> Response<Body> {
    let (who, pod) = match calling_pod(&req, shared).await {
        Ok(found) => found,
        Err(resp) => return resp,
    };
    // A definition's fields are a server's text: bounded as an answer the sidecar reads is
    // not, by what one object may hold.
    let body = match Limited::new(req.into_body(), 1024 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("cannot read the body: {e}"),
            );
        }
    };
    let report: tollgate_api::contract::PinReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("the body is not a PinReport: {e}"),
            );
        }
    };
    let workload = match crate::pins::verified_workload(&shared.client, &pod).await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(namespace = %who.namespace, pod = %who.name, error = %e, "a pin report refused: the pod's workload is not what it seems");
            return text(
                StatusCode::FORBIDDEN,
                &format!("pod {}/{}: {e}", who.namespace, who.name),
            );
        }
    };
    match crate::pins::report(
        &shared.client,
        &shared.recorder,
        &shared.index.pins,
        &who.namespace,
        &workload,
        &who.name,
        &report,
    )
    .await
    {
        Ok(pin) => {
            let mut resp = Response::new(full(
                serde_json::to_vec(&pin).expect("a WorkloadPin serialises"),
            ));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => text(StatusCode::BAD_GATEWAY, &e),
    }
}

/// The injected pod a sidecar's request comes from, by its token.
async fn calling_pod(
    req: &Request<Incoming>,
    shared: &Shared,
) -> Result<(crate::stream::PodIdentity, Arc<crate::index::PodMeta>), Response<Body>> {
    let auth = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let who = crate::stream::authenticate(auth.as_deref(), shared.client.clone()).await?;
    let pod = crate::stream::wait_for(&shared.index, || {
        shared
            .index
            .pod(&who.namespace, &who.name)
            .filter(|p| who.uid.is_none() || kube::ResourceExt::uid(&**p) == who.uid)
    })
    .await;
    match pod {
        Some(pod) => Ok((who, pod)),
        None => Err(text(
            StatusCode::NOT_FOUND,
            &format!(
                "pod {}/{} is not an injected pod this operator knows",
                who.namespace, who.name
            ),
        )),
    }
}

/// A sidecar's held call: `POST /v1/approvals`, `GET /v1/approvals/NAME?wait=S`,
/// `POST /v1/approvals/NAME/use`, each with the pod's token.
async fn held_call(req: Request<Incoming>, shared: &Shared) -> Response<Body> {
    use crate::approvals::{Asker, ask, use_approval, wait, workload_of};
    let (who, pod) = match calling_pod(&req, shared).await {
        Ok(found) => found,
        Err(resp) => return resp,
    };
    let asker = Asker {
        namespace: who.namespace.clone(),
        pod: who.name.clone(),
        workload: workload_of(&pod),
    };
    let json = |value: &tollgate_api::contract::ApprovalAnswer| {
        let mut resp = Response::new(full(
            serde_json::to_vec(value).expect("an answer serialises"),
        ));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        resp
    };
    let path = req.uri().path().to_string();
    let rest = path
        .strip_prefix(tollgate_api::contract::APPROVALS_PATH)
        .unwrap_or_default();
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let failed = |e: kube::Error| {
        text(
            StatusCode::BAD_GATEWAY,
            &format!("the API server refused: {e}"),
        )
    };
    match (req.method().clone(), parts.as_slice()) {
        (Method::POST, []) => {
            let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("cannot read the body: {e}"),
                    );
                }
            };
            let asked: tollgate_api::contract::ApprovalAsk = match serde_json::from_slice(&body) {
                Ok(a) => a,
                Err(e) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        &format!("the body is not an ApprovalAsk: {e}"),
                    );
                }
            };
            match ask(&shared.client, &shared.index, &asker, &asked).await {
                Ok(answer) => json(&answer),
                Err(e) => failed(e),
            }
        }
        (Method::GET, [name]) => {
            let seconds = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("wait=")))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                .min(60);
            match wait(&shared.index, &asker, name, Duration::from_secs(seconds)).await {
                Some(answer) => json(&answer),
                None => text(
                    StatusCode::NOT_FOUND,
                    &format!("no approval {name} of this workload"),
                ),
            }
        }
        (Method::POST, [name, "use"]) => match use_approval(&shared.client, &asker, name).await {
            Ok(Some(answer)) => json(&answer),
            Ok(None) => text(
                StatusCode::CONFLICT,
                &format!("approval {name} cannot be used: not approved, expired, or used already"),
            ),
            Err(e) => failed(e),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            &format!("no route for {} {path}", req.method()),
        ),
    }
}

async fn read_review(
    req: Request<Incoming>,
) -> Result<kube::core::admission::AdmissionRequest<kube::core::DynamicObject>, Response<Body>> {
    let body = match Limited::new(req.into_body(), MAX_REVIEW_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Err(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("cannot read the AdmissionReview: {e}"),
            ));
        }
    };
    let review = admission::parse_review(&body).map_err(|e| text(StatusCode::BAD_REQUEST, &e))?;
    if let Some(t) = tollgate_sidecar::telemetry::trace::current() {
        use tollgate_sidecar::telemetry::trace::Attr;
        t.set([
            (
                "k8s.namespace.name",
                Attr::Str(review.namespace.clone().unwrap_or_default().into()),
            ),
            (
                "tollgate.admission.kind",
                Attr::Str(review.kind.kind.clone().into()),
            ),
            (
                "tollgate.admission.name",
                Attr::Str(review.name.clone().into()),
            ),
            (
                "tollgate.admission.operation",
                Attr::Str(format!("{:?}", review.operation).into()),
            ),
        ]);
    }
    Ok(review)
}

fn answer(
    route: &'static str,
    response: kube::core::admission::AdmissionResponse,
) -> Response<Body> {
    let allowed = if response.allowed { "true" } else { "false" };
    crate::telemetry::metrics()
        .reviews
        .get_or_create(&crate::telemetry::Review { route, allowed })
        .inc();
    if let Some(t) = tollgate_sidecar::telemetry::trace::current() {
        use tollgate_sidecar::telemetry::trace::Attr;
        t.set([("tollgate.admission.allowed", Attr::from(response.allowed))]);
        if let Some(result) = (!response.allowed).then_some(&response.result.message) {
            t.set([(
                "tollgate.admission.message",
                Attr::Str(result.clone().into()),
            )]);
        }
    }
    let mut resp = Response::new(full(admission::respond(response)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// `/healthz` answers while the process runs; `/readyz` once the index has listed everything,
/// while no part has failed past its grace ([`Health`]); `/metrics` the operator's metrics.
pub async fn serve_admin(listener: TcpListener, health: Arc<Health>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let health = health.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let health = health.clone();
                async move {
                    Ok::<_, Infallible>(match req.uri().path() {
                        "/healthz" => text(StatusCode::OK, "ok"),
                        "/metrics" => {
                            let m = crate::telemetry::metrics();
                            m.ready.set(i64::from(health.readyz().0));
                            let mut resp = Response::new(full(m.encode()));
                            resp.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static(
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                ),
                            );
                            resp
                        }
                        "/readyz" => match health.readyz() {
                            (true, body) => text(StatusCode::OK, &body),
                            (false, body) => text(StatusCode::SERVICE_UNAVAILABLE, &body),
                        },
                        path => text(StatusCode::NOT_FOUND, &format!("no route for {path}")),
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

#[cfg(test)]
mod bind_tests {
    use super::*;

    #[tokio::test]
    async fn the_default_address_serves_both_families() {
        let listener = bind("[::]:0".parse().unwrap(), "--listen").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        for peer in ["127.0.0.1", "::1"] {
            let ip: std::net::IpAddr = peer.parse().unwrap();
            let (accepted, connected) = tokio::join!(
                listener.accept(),
                tokio::net::TcpStream::connect((ip, port))
            );
            assert!(
                accepted.is_ok() && connected.is_ok(),
                "{peer} was not served"
            );
        }
    }
}
