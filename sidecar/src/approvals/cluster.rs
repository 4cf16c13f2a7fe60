//! Approvals in a cluster: the operator keeps each as an `McpApproval` in the pod's namespace,
//! made on this sidecar's behalf over its authenticated connection (the pod's token; the
//! sidecar has no API permissions), and people decide with `kubectl tollgate`.
//!
//! ```text
//! request ─ POST /v1/approvals {tool, identity, call: sha256(tool, identity, canonical args),
//!           shown arguments, policy, rule, validFor} ─> admitted (an approval was waiting, now
//!           Used) | held on NAME
//! wait    ─ GET /v1/approvals/NAME?wait=S, until decided or the hold time is up
//!           Approved ─ POST …/NAME/use ─> admitted, or used by another replica first
//! ```
//!
//! The operator binds the approval to the pod's workload from the token, so a call is admitted
//! by an approval any replica of the workload asked for, exactly once.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tokio_rustls::TlsConnector;
use tollgate_api::contract::{APPROVALS_PATH, ApprovalAnswer, ApprovalAsk};

use super::{Approval, Hold, OwnedAsk, Phase, Ticket, Waited, rfc3339_in, shown};
use crate::policy::control::ControlPlane;
use tollgate_api::call_key;

/// The longest a single wait asks the operator to hold its answer.
const LONGEST_WAIT: Duration = Duration::from_secs(55);

pub struct Cluster {
    plane: ControlPlane,
    tls: TlsConnector,
}

impl Cluster {
    pub fn new(plane: ControlPlane) -> anyhow::Result<Cluster> {
        let tls = plane.tls()?;
        Ok(Cluster { plane, tls })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, ApprovalAnswer), String> {
        let (status, bytes) = self
            .plane
            .request(&self.tls, method, path, body, timeout)
            .await
            .map_err(|e| format!("{e:#}"))?;
        if !status.is_success() {
            return Err(format!(
                "the control plane answered {status}: {}",
                String::from_utf8_lossy(&bytes).trim()
            ));
        }
        serde_json::from_slice(&bytes)
            .map(|a| (status, a))
            .map_err(|e| format!("the control plane's answer is not an ApprovalAnswer: {e}"))
    }

    pub async fn request(&self, ask: &OwnedAsk) -> Result<Ticket, String> {
        // The workload is the operator's to add, from the pod's token.
        let text = call_key(&[&ask.tool, &ask.identity], &ask.args);
        let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        let call: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let arguments = shown(&ask.args, &ask.show)
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect();
        let body = ApprovalAsk {
            tool: ask.tool.clone(),
            identity: ask.identity.clone(),
            call,
            arguments,
            policy: ask.policy.clone(),
            rule: ask.rule.clone(),
            valid_for_seconds: u32::try_from(ask.valid_for.as_secs()).unwrap_or(u32::MAX),
        };
        let (_, answer) = self
            .call(
                Method::POST,
                APPROVALS_PATH,
                Some(serde_json::to_vec(&body).expect("an ApprovalAsk serialises")),
                Duration::from_secs(10),
            )
            .await?;
        let view = view_of(ask, &answer);
        Ok(if answer.admitted {
            Ticket::Admit(Box::new(view))
        } else {
            Ticket::Hold(Hold::cluster(view))
        })
    }

    pub async fn wait(&self, mut view: Approval, timeout: Duration) -> Waited {
        let deadline = Instant::now() + timeout;
        loop {
            match view.phase {
                Phase::Approved => {
                    let path = format!("{APPROVALS_PATH}/{}/use", view.name);
                    return match self
                        .call(Method::POST, &path, None, Duration::from_secs(10))
                        .await
                    {
                        Ok((_, used)) if used.admitted => Waited::Approved(update(view, &used)),
                        // Another replica's call used it first, or it expired just now.
                        _ => {
                            view.phase = Phase::Used;
                            Waited::Undecided(view)
                        }
                    };
                }
                Phase::Denied => return Waited::Denied(view),
                Phase::Expired | Phase::Used => return Waited::Undecided(view),
                Phase::Pending => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Waited::Undecided(view);
            }
            let wait = left.min(LONGEST_WAIT);
            let path = format!("{APPROVALS_PATH}/{}?wait={}", view.name, wait.as_secs());
            match self
                .call(Method::GET, &path, None, wait + Duration::from_secs(10))
                .await
            {
                Ok((_, answer)) => view = update(view, &answer),
                Err(e) => {
                    tracing::warn!(approval = %view.name, error = %e, "cannot hear of the approval; the call is not admitted");
                    return Waited::Undecided(view);
                }
            }
            if wait.as_secs() == 0 && view.phase == Phase::Pending {
                return Waited::Undecided(view);
            }
        }
    }
}

fn view_of(ask: &OwnedAsk, a: &ApprovalAnswer) -> Approval {
    Approval {
        name: a.name.clone(),
        tool: ask.tool.clone(),
        identity: ask.identity.clone(),
        workload: String::new(),
        policy: ask.policy.clone(),
        rule: ask.rule.clone(),
        arguments: shown(&ask.args, &ask.show),
        phase: a.phase,
        created: String::new(),
        expires: a
            .expires
            .clone()
            .unwrap_or_else(|| rfc3339_in(ask.valid_for)),
        decided_by: a.decided_by.clone(),
        reason: a.reason.clone(),
    }
}

fn update(mut view: Approval, a: &ApprovalAnswer) -> Approval {
    view.phase = a.phase;
    if let Some(e) = &a.expires {
        view.expires = e.clone();
    }
    view.decided_by = a.decided_by.clone();
    view.reason = a.reason.clone();
    view
}
