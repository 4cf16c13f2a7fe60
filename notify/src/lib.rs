//! JSON events POSTed to a webhook (a chat bridge, a pager), for the approvals of the sidecar
//! (standalone) and of the operator (in a cluster). Apart from `tollgate-api`, the policy
//! language, which does no I/O.
//!
//! Delivery is in order, from one task, each POST with a 10 s timeout and up to three tries a
//! second apart; what still fails is logged. A slow webhook never holds up a call or a decision.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::sync::mpsc;

/// Sends JSON events to a webhook.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::UnboundedSender<Value>,
}

impl Notifier {
    /// Starts delivering to `url` (http:// or https://, trusting the system's roots).
    pub fn start(url: http::Uri) -> Result<Notifier, String> {
        if !matches!(url.scheme_str(), Some("http" | "https")) {
            return Err(format!(
                "the webhook must be an http:// or https:// URL, got {url}"
            ));
        }
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| format!("cannot load the system's trust roots: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build::<_, Full<Bytes>>(https);
        let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let body = Bytes::from(event.to_string());
                let mut last = String::new();
                for attempt in 0..3 {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    let req = http::Request::post(url.clone())
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(Full::new(body.clone()))
                        .expect("a POST builds");
                    match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
                        Ok(Ok(resp)) if resp.status().is_success() => {
                            let _ = resp.into_body().collect().await;
                            last.clear();
                            break;
                        }
                        Ok(Ok(resp)) => last = format!("it answered {}", resp.status()),
                        Ok(Err(e)) => last = e.to_string(),
                        Err(_) => last = "no answer in 10 s".into(),
                    }
                }
                if !last.is_empty() {
                    tracing::warn!(%url, error = %last, event = %event["event"], "the webhook did not take an event");
                }
            }
        });
        Ok(Notifier { tx })
    }

    /// Queues `event` for delivery.
    pub fn send(&self, event: Value) {
        let _ = self.tx.send(event);
    }
}
