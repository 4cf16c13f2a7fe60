//! The policy in force, and the sources that feed it.
//!
//! ```text
//! FileSource (--policy FILE, polled)      ─┐
//! operator stream (--control-plane URL)  ─┴─> PolicyHandle::publish(EffectivePolicy)
//!                                              └─> compiled, swapped in atomically
//! request path: PolicyHandle::current() -> Arc<PolicyState> (lock-free read)
//! ```
//!
//! Fail closed: until a policy loads the state denies everything and is not ready; a policy
//! that fails to load leaves the last good one in force.
//!
//! Beside it: [`control`] (the operator's stream), [`counters`] (in the pod, or shared in Redis),
//! [`identity`] (who is calling, from a bearer token). This layer knows policies, counters and
//! callers, and no HTTP or JSON-RPC: the proxy asks it, it never asks the proxy.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tollgate_api::{DefaultAction, EffectivePolicy, PolicySet, PolicyUpdate};

pub mod control;
pub mod counters;
pub mod identity;
pub mod pins;
mod visibility;

pub use visibility::{Enforced, Visibility};

use crate::policy::identity::Verifier;
use crate::telemetry::metrics::Metrics;

/// What the proxy enforces right now.
pub struct PolicyState {
    pub set: Arc<Enforced>,
    /// False until a policy has loaded.
    pub ready: bool,
    /// Why the state is not ready, or why the last update was refused.
    pub last_error: Option<String>,
    /// The cluster's service-account token keys, when the operator sends them.
    pub cluster_keys: Option<Arc<Verifier>>,
}

/// Shared, atomically swapped policy state.
#[derive(Clone)]
pub struct PolicyHandle {
    state: Arc<ArcSwap<PolicyState>>,
    /// How the policy's source is, for `/readyz` (the control plane's stream).
    source: Arc<parking_lot::Mutex<Option<String>>>,
    metrics: Metrics,
}

impl PolicyHandle {
    /// A handle that denies everything until a policy is published.
    pub fn new(metrics: Metrics) -> Self {
        let reason = "No policy is loaded yet, so every call is denied";
        PolicyHandle {
            state: Arc::new(ArcSwap::from_pointee(PolicyState {
                set: Arc::new(Enforced::new(PolicySet::deny_all(reason))),
                ready: false,
                last_error: Some(reason.into()),
                cluster_keys: None,
            })),
            source: Arc::default(),
            metrics,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// One line for `/readyz` on the policy's source.
    pub fn source_status(&self) -> Option<String> {
        self.source.lock().clone()
    }

    pub fn set_source_status(&self, line: String) {
        *self.source.lock() = Some(line);
    }

    pub fn current(&self) -> Arc<PolicyState> {
        self.state.load_full()
    }

    /// Compiles and installs a policy; on failure the previous one stays and the error is
    /// returned (and counted).
    pub fn publish(&self, effective: &EffectivePolicy) -> Result<(), String> {
        let keys = self.current().cluster_keys.clone();
        self.install(effective, keys)
    }

    /// Installs what the operator's stream sent: the policy and the cluster's token keys.
    pub fn publish_update(&self, update: &PolicyUpdate) -> Result<(), String> {
        let keys = match &update.service_account_keys {
            None => None,
            // A cluster that publishes no key yet: nothing to verify with, nothing to report.
            Some(k) if k.jwks["keys"].as_array().is_none_or(Vec::is_empty) => None,
            Some(k) => match Verifier::from_jwks(
                &k.jwks.to_string(),
                Some(k.issuer.clone()),
                Some(k.audience.clone()),
            ) {
                Ok(v) => Some(Arc::new(v)),
                Err(e) => {
                    tracing::error!(error = %e, "the cluster's token keys are unusable; Kubernetes tokens will not verify");
                    None
                }
            },
        };
        self.install(&update.policy, keys)
    }

    fn install(
        &self,
        effective: &EffectivePolicy,
        cluster_keys: Option<Arc<Verifier>>,
    ) -> Result<(), String> {
        match effective.compile() {
            Ok(set) => {
                self.metrics.policy_loaded(set.revision);
                self.state.store(Arc::new(PolicyState {
                    set: Arc::new(Enforced::new(set)),
                    ready: true,
                    last_error: None,
                    cluster_keys,
                }));
                Ok(())
            }
            Err(problems) => Err(self.refuse(problems.to_string())),
        }
    }

    /// Records a policy that could not be loaded at all.
    pub fn refuse(&self, error: String) -> String {
        self.metrics.policy_failed();
        let old = self.current();
        let message = if old.ready {
            format!(
                "{error}\n(the previous policy, revision {}, stays in force)",
                old.set.revision
            )
        } else {
            format!("{error}\n(no policy is in force, so every call is denied)")
        };
        self.state.store(Arc::new(PolicyState {
            set: old.set.clone(),
            ready: old.ready,
            last_error: Some(message.clone()),
            cluster_keys: old.cluster_keys.clone(),
        }));
        message
    }
}

/// Reads a policy file now and whenever it changes.
pub struct FileSource {
    pub path: PathBuf,
    pub default_action: DefaultAction,
    /// The decision for callers no policy of the file governs.
    pub ungoverned: DefaultAction,
    pub interval: Duration,
}

impl FileSource {
    /// Loads the file once, synchronously (so the first state is known at start).
    pub fn load_once(&self, handle: &PolicyHandle, revision: u64) -> Result<Vec<u8>, String> {
        let bytes = std::fs::read(&self.path)
            .map_err(|e| format!("cannot read policy file {}: {e}", self.path.display()));
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => return Err(handle.refuse(e)),
        };
        let text = String::from_utf8_lossy(&bytes);
        let loaded = tollgate_api::load_file(&text, &self.path.display().to_string())
            .map_err(|e| handle.refuse(format!("policy file is invalid:\n{e}")))?;
        let effective = EffectivePolicy {
            revision,
            default_action: self.default_action,
            ungoverned_action: Some(self.ungoverned),
            policies: loaded.into_iter().map(|l| l.policy).collect(),
        };
        handle.publish(&effective)?;
        Ok(bytes)
    }

    /// Polls the file and reloads it when its content changes.
    pub async fn watch(self, handle: PolicyHandle, mut last: Option<Vec<u8>>) {
        let mut revision = 1;
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Ok(bytes) = std::fs::read(&self.path) else {
                if last.take().is_some() {
                    let e = handle.refuse(format!("policy file {} is gone", self.path.display()));
                    tracing::error!(error = %e, "policy reload failed");
                }
                continue;
            };
            if last.as_deref() == Some(&bytes[..]) {
                continue;
            }
            revision += 1;
            match self.load_once(&handle, revision) {
                Ok(_) => tracing::info!(path = %self.path.display(), revision, "policy reloaded"),
                Err(e) => tracing::error!(error = %e, "policy reload failed"),
            }
            last = Some(bytes);
        }
    }
}
