//! The policy stream: each sidecar's long-lived `GET /v1/policy`.
//!
//! ```text
//! sidecar ─ Bearer <projected token, audience tollgate> ─> TokenReview ─> pod (name, uid)
//!   <─ {"policy": EffectivePolicy, "serviceAccountKeys": …}\n   at once
//!   <─ the same, with a higher revision                         on every change that alters it
//!   <─ \n                                                       every 15 s, so dead peers show
//! ```
//!
//! A stream ends when the pod is gone or the sidecar hangs up; the sidecar reconnects.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::StreamBody;
use hyper::body::Frame;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;

use crate::index::{Index, PodPolicy};
use crate::respond::{Body, text};
use tollgate_api::contract::TOKEN_AUDIENCE;

pub use tollgate_api::contract::HEARTBEAT;

/// Who a token says is calling: one pod.
#[derive(Debug, PartialEq)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

/// Reads the pod out of a TokenReview's answer, or says why it cannot.
pub fn pod_of(review: &TokenReview) -> Result<PodIdentity, String> {
    let status = review.status.clone().unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(format!(
            "the token does not authenticate: {}",
            status.error.unwrap_or_else(|| "no reason given".into())
        ));
    }
    if !status
        .audiences
        .as_ref()
        .is_none_or(|a| a.iter().any(|a| a == TOKEN_AUDIENCE))
    {
        return Err(format!("the token's audience is not {TOKEN_AUDIENCE}"));
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let Some(rest) = username.strip_prefix("system:serviceaccount:") else {
        return Err(format!("{username} is not a service account"));
    };
    let namespace = rest.split(':').next().unwrap_or_default().to_string();
    let extra = user.extra.unwrap_or_default();
    let first = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
    let Some(name) = first("authentication.kubernetes.io/pod-name") else {
        return Err(
            "the token is not bound to a pod; mount a projected service-account token".into(),
        );
    };
    Ok(PodIdentity {
        namespace,
        name,
        uid: first("authentication.kubernetes.io/pod-uid"),
    })
}

/// The pod a sidecar's `Authorization` header proves it is (a TokenReview), or the answer
/// that says why not.
pub async fn authenticate(
    authorization: Option<&str>,
    client: Client,
) -> Result<PodIdentity, Response<Body>> {
    let Some(token) = authorization.and_then(|h| h.strip_prefix("Bearer ")) else {
        return Err(text(
            StatusCode::UNAUTHORIZED,
            "send the pod's projected service-account token (audience tollgate) as a Bearer token",
        ));
    };
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.trim().to_string(),
            audiences: Some(vec![TOKEN_AUDIENCE.into()]),
        },
        ..TokenReview::default()
    };
    let reviewed = Api::<TokenReview>::all(client)
        .create(&PostParams::default(), &review)
        .await;
    match reviewed {
        Ok(r) => pod_of(&r).map_err(|e| text(StatusCode::FORBIDDEN, &e)),
        Err(e) => {
            tracing::error!(error = %e, "TokenReview failed");
            Err(text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("cannot review the token: {e}"),
            ))
        }
    }
}

/// Serves one sidecar's stream.
pub async fn serve(
    authorization: Option<&str>,
    client: Client,
    index: Arc<Index>,
) -> Response<Body> {
    let who = match authenticate(authorization, client).await {
        Ok(w) => w,
        Err(resp) => return resp,
    };
    // Nothing is sent before every store has listed: a policy computed from half the cluster
    // (no pins yet, say) would be wrong, if briefly.
    if tokio::time::timeout(Duration::from_secs(30), index.ready())
        .await
        .is_err()
    {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the operator has not listed the cluster yet; try another replica",
        );
    }
    let Some(policy) = wait_for_pod(&index, &who).await else {
        return text(
            StatusCode::NOT_FOUND,
            &format!(
                "pod {}/{} is not an injected pod this operator knows",
                who.namespace, who.name
            ),
        );
    };
    tracing::info!(namespace = %who.namespace, pod = %who.name, "sidecar connected");
    let frames = futures::StreamExt::map(updates(who, policy), |b| {
        Ok::<_, Infallible>(Frame::data(b))
    });
    let mut resp = Response::new(http_body_util::BodyExt::boxed(StreamBody::new(frames)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(tollgate_api::contract::STREAM_MEDIA_TYPE),
    );
    resp
}

/// A pod connects as soon as its sidecar starts, possibly before this replica's watch has
/// seen it: wait a little. Its policy, as it is now and as it changes.
pub async fn wait_for_pod(
    index: &Index,
    who: &PodIdentity,
) -> Option<watch::Receiver<Arc<PodPolicy>>> {
    wait_for(index, || {
        index.pod_policy(&who.namespace, &who.name, who.uid.as_deref())
    })
    .await
}

/// Waits (a little, for this replica's watches) until `lookup` finds what it looks for in the
/// index.
pub async fn wait_for<T>(index: &Index, lookup: impl Fn() -> Option<T>) -> Option<T> {
    let mut changed = index.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(found) = lookup() {
            return Some(found);
        }
        if tokio::time::timeout_at(deadline, changed.changed())
            .await
            .is_err()
        {
            return None;
        }
    }
}

/// The pod's policy at once and each time it changes (the index wakes this stream only then),
/// a heartbeat between; ends when the pod is gone (its sender dropped), and is dropped when the
/// sidecar hangs up. Polled by the connection that writes it: no task or channel per sidecar
/// between the index and the socket, and each policy's line is the one the index wrote.
fn updates(
    who: PodIdentity,
    policy: watch::Receiver<Arc<PodPolicy>>,
) -> impl futures::Stream<Item = Bytes> + Send + 'static {
    /// A sidecar following, counted and logged however its stream ends.
    struct Following(PodIdentity, &'static crate::telemetry::Metrics);
    impl Drop for Following {
        fn drop(&mut self) {
            self.1.sidecars.dec();
            tracing::info!(namespace = %self.0.namespace, pod = %self.0.name, "sidecar disconnected");
        }
    }
    let metrics = crate::telemetry::metrics();
    metrics.sidecars.inc();
    let state = (policy, Following(who, metrics), true);
    futures::stream::unfold(state, |(mut policy, following, first)| async move {
        if !first {
            tokio::select! {
                changed = policy.changed() => {
                    if changed.is_err() {
                        let who = &following.0;
                        tracing::info!(namespace = %who.namespace, pod = %who.name, "pod is gone; stream closed");
                        return None;
                    }
                }
                _ = tokio::time::sleep(HEARTBEAT) => {
                    return Some((Bytes::from_static(b"\n"), (policy, following, false)));
                }
            }
        }
        let now = policy.borrow_and_update().clone();
        tracing::debug!(namespace = %following.0.namespace, pod = %following.0.name, revision = now.policy.revision, "policy sent");
        following.1.updates_sent.inc();
        Some((now.line.clone(), (policy, following, false)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reviewed(status: serde_json::Value) -> TokenReview {
        serde_json::from_value(serde_json::json!({ "spec": {}, "status": status })).unwrap()
    }

    #[test]
    fn a_pod_bound_token_names_its_pod() {
        let r = reviewed(serde_json::json!({
            "authenticated": true, "audiences": ["tollgate"],
            "user": { "username": "system:serviceaccount:shop:github-mcp", "extra": {
                "authentication.kubernetes.io/pod-name": ["github-mcp-0"],
                "authentication.kubernetes.io/pod-uid": ["u-1"] } },
        }));
        assert_eq!(
            pod_of(&r),
            Ok(PodIdentity {
                namespace: "shop".into(),
                name: "github-mcp-0".into(),
                uid: Some("u-1".into())
            })
        );
    }

    #[test]
    fn tokens_that_are_not_a_pods_are_refused_with_the_reason() {
        let cases = [
            (
                serde_json::json!({ "authenticated": false, "error": "expired" }),
                "expired",
            ),
            (
                serde_json::json!({ "authenticated": true, "audiences": ["api"], "user": { "username": "system:serviceaccount:a:b" } }),
                "audience",
            ),
            (
                serde_json::json!({ "authenticated": true, "user": { "username": "alice" } }),
                "not a service account",
            ),
            (
                serde_json::json!({ "authenticated": true, "user": { "username": "system:serviceaccount:a:b" } }),
                "projected",
            ),
        ];
        for (status, why) in cases {
            let err = pod_of(&reviewed(status.clone())).expect_err(&status.to_string());
            assert!(err.contains(why), "{err}");
        }
    }
}
