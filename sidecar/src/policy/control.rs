//! The operator's policy stream, as the sidecar follows it.
//!
//! ```text
//! read token file ─> TLS (trust: the operator's CA) ─> GET /v1/policy, Bearer token
//!   line: PolicyUpdate ─> Pins::follow_cluster (the workload's McpToolPins), then
//!                         PolicyHandle::publish_update (compile, swap)
//!   line: empty        ─> heartbeat
//!   silence > 45 s, an error, or the end ─> reconnect with backoff (0.25 s .. 30 s)
//! ```
//!
//! The last policy received stays in force across disconnects; until the first arrives the
//! handle denies everything and /readyz says so. A line that cannot be read, a policy that
//! does not compile, and a revision no newer than one the same stream sent already are
//! ignored: the last good policy stays, and `tollgate_policy_updates_ignored_total{reason}`
//! counts them. (A new stream may start lower: it may be another operator replica, whose
//! clock stamps its revisions.)

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::{Buf, BytesMut};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tollgate_api::PolicyUpdate;

use crate::policy::PolicyHandle;
use crate::policy::pins::Pins;

use tollgate_api::contract::{SILENCE, STREAM_PATH};
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where the policy comes from, and how the sidecar proves which pod it is.
#[derive(Clone)]
pub struct ControlPlane {
    pub url: Uri,
    /// The CA (PEM) that signed the operator's certificate.
    pub ca_pem: String,
    /// The pod's projected service-account token (re-read on every connect: kubelet rotates it).
    pub token_file: PathBuf,
}

impl ControlPlane {
    /// Follows the stream forever.
    pub async fn follow(self, handle: PolicyHandle, pins: Arc<Pins>) {
        let tls = match self.tls() {
            Ok(t) => t,
            Err(e) => {
                let e = handle.refuse(format!("cannot reach the control plane: {e:#}"));
                tracing::error!(error = %e, "policy stream not started");
                return;
            }
        };
        let mut backoff = Duration::from_millis(250);
        handle.set_source_status(format!("control plane: connecting to {}", self.url));
        loop {
            let ended = self.once(&tls, &handle, &pins).await;
            handle.metrics().control_plane_connected(false);
            let why = match ended {
                Ok(received) => {
                    tracing::warn!(url = %self.url, "policy stream ended; reconnecting");
                    if received {
                        backoff = Duration::from_millis(250);
                    }
                    "the stream ended".to_string()
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    tracing::warn!(url = %self.url, error = %e, retry_in = ?backoff, "policy stream failed");
                    e
                }
            };
            let kept = match handle.current() {
                s if s.ready => format!("policy revision {} stays in force", s.set.revision),
                _ => "no policy yet, so every call is denied".into(),
            };
            handle.set_source_status(format!(
                "control plane: disconnected from {} since {} ({why}); {kept}; retrying in {backoff:?}",
                self.url,
                crate::telemetry::audit::now_rfc3339(),
            ));
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    pub(crate) fn tls(&self) -> anyhow::Result<TlsConnector> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots
                .add(cert.context("the control-plane CA is not PEM")?)
                .context("the control-plane CA is not a usable certificate")?;
        }
        anyhow::ensure!(
            !roots.is_empty(),
            "the control-plane CA holds no certificate"
        );
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(TlsConnector::from(Arc::new(config)))
    }

    /// A connection to the control plane, HTTP/1 over TLS, and the token to present on it
    /// (re-read each time: kubelet rotates it).
    async fn connect<B>(
        &self,
        tls: &TlsConnector,
    ) -> anyhow::Result<(hyper::client::conn::http1::SendRequest<B>, String, String)>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let token = std::fs::read_to_string(&self.token_file)
            .with_context(|| format!("cannot read the token {}", self.token_file.display()))?;
        let host = self
            .url
            .host()
            .context("the control-plane URL has no host")?
            .to_string();
        let port = self.url.port_u16().unwrap_or(443);
        let tcp = tokio::time::timeout(
            Duration::from_secs(5),
            TcpStream::connect((host.as_str(), port)),
        )
        .await
        .context("connecting timed out")?
        .with_context(|| format!("cannot connect to {host}:{port}"))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
            .context("the control-plane host is not a valid server name")?;
        let stream = tls.connect(name, tcp).await.context("TLS handshake")?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok((sender, host, format!("Bearer {}", token.trim())))
    }

    /// One request on a connection of its own, with the pod's token: (status, body). For the
    /// rare calls beside the stream (a held call's approval).
    pub(crate) async fn request(
        &self,
        tls: &TlsConnector,
        method: http::Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> anyhow::Result<(StatusCode, bytes::Bytes)> {
        let exchange = async {
            let (mut sender, host, bearer) = self.connect(tls).await?;
            let req = Request::builder()
                .method(method)
                .uri(path_and_query)
                .header(http::header::HOST, host)
                .header(http::header::AUTHORIZATION, bearer)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    body.unwrap_or_default(),
                )))?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .context("the control plane did not answer in time")?
    }

    /// One connection; returns whether any policy arrived on it.
    async fn once(
        &self,
        tls: &TlsConnector,
        handle: &PolicyHandle,
        pins: &Pins,
    ) -> anyhow::Result<bool> {
        let (mut sender, host, bearer) = self.connect(tls).await?;
        let path = match self.url.path() {
            "" | "/" => STREAM_PATH,
            p => p,
        };
        let req = Request::get(path)
            .header(http::header::HOST, host)
            .header(http::header::AUTHORIZATION, bearer)
            .body(Empty::<bytes::Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if status != StatusCode::OK {
            let text = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            anyhow::bail!(
                "the control plane answered {status}: {}",
                String::from_utf8_lossy(&text).trim()
            );
        }
        handle.metrics().control_plane_connected(true);
        handle.set_source_status(format!("control plane: connected to {}", self.url));
        let mut buf = BytesMut::new();
        let mut received = false;
        // The newest revision this stream has sent.
        let mut newest: Option<u64> = None;
        loop {
            let frame = match tokio::time::timeout(SILENCE, body.frame()).await {
                Err(_) => anyhow::bail!("no word from the control plane for {SILENCE:?}"),
                Ok(None) => return Ok(received),
                Ok(Some(f)) => f?,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                let line = buf.split_to(end + 1);
                let line = &line[..end];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match serde_json::from_slice::<PolicyUpdate>(line) {
                    Ok(update) if newest.is_some_and(|n| update.policy.revision <= n) => {
                        handle.metrics().policy_update_ignored("stale");
                        tracing::warn!(
                            revision = update.policy.revision,
                            newest,
                            "the control plane sent an older revision; ignored"
                        );
                    }
                    Ok(update) => {
                        let revision = update.policy.revision;
                        // The workload's pins first: the policy that pins by them follows.
                        if let Some(kept) = &update.pins {
                            pins.follow_cluster(kept);
                        }
                        match handle.publish_update(&update) {
                            Ok(()) => {
                                received = true;
                                newest = Some(revision);
                                tracing::info!(
                                    revision,
                                    policies = update.policy.policies.len(),
                                    "policy received"
                                );
                            }
                            Err(e) => {
                                handle.metrics().policy_update_ignored("invalid");
                                tracing::error!(revision, error = %e, "policy from the control plane refused")
                            }
                        }
                    }
                    Err(e) => {
                        handle.metrics().policy_update_ignored("unreadable");
                        let e = handle
                            .refuse(format!("the control plane sent an unreadable policy: {e}"));
                        tracing::error!(error = %e, "policy refused");
                    }
                }
            }
            if buf.remaining() > 64 * 1024 * 1024 {
                anyhow::bail!("the control plane sent a line over 64 MiB");
            }
        }
    }
}
