//! The cluster-wide baseline the chart asks for: one McpClusterPolicy, `default` and `mode`
//! from the chart's values, applied by the operator when it starts.
//!
//! ```text
//! --baseline NAME (the chart: <release>-baseline), --default-action, --baseline-mode
//!   ─ each replica, at start ─ server-side apply (field manager tollgate-operator, forced)
//!     of metadata.labels, spec.default and spec.mode, nothing else
//!   ─ refused (the CRD not served yet, RBAC, the API server away) ─> retried, with /readyz
//!     naming the baseline once it keeps failing past --failure-grace
//! ```
//!
//! Why the operator and not a Helm hook: a chart's own custom resource cannot be created in
//! the install that creates its CRD. Helm maps every object of the release before it creates
//! any, and a hook after the CRD races the API server's discovery (Helm refuses it with "no
//! matches for kind McpClusterPolicy ... ensure CRDs are installed first"). Argo CD and Flux
//! meet the same ordering. The operator retries until the CRD is served.
//!
//! Applying only the two fields the chart decides keeps what a platform team adds to the
//! baseline (tools, hidden tools, a namespace selector) across upgrades and restarts, where the
//! hook replaced the whole object on each upgrade. The object is labelled part of Tollgate, so
//! the validating webhook, which may be this very replica not yet serving, does not hold it.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tollgate_api::{DefaultAction, McpClusterPolicy, Mode};

use crate::health::Health;

/// The field manager of the fields the operator applies.
pub const FIELD_MANAGER: &str = "tollgate-operator";

/// What `/readyz` names while the baseline cannot be applied.
const PART: &str = "the baseline policy";

/// The baseline the chart asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct Baseline {
    pub name: String,
    pub default: DefaultAction,
    pub mode: Mode,
}

impl Baseline {
    /// The apply patch: only what the chart decides, so that a server-side apply owns those
    /// fields and no other.
    pub fn manifest(&self) -> Value {
        json!({
            "apiVersion": "tollgate.dev/v1alpha1",
            "kind": "McpClusterPolicy",
            "metadata": {
                "name": self.name,
                "labels": {
                    "app.kubernetes.io/part-of": "tollgate",
                    "app.kubernetes.io/managed-by": FIELD_MANAGER,
                },
            },
            "spec": {"default": self.default, "mode": self.mode},
        })
    }

    /// Applies the baseline, retrying until the API server takes it: on a first install the
    /// operator may start before its CRD is served.
    pub async fn apply(self, client: Client, health: Arc<Health>) {
        let api: Api<McpClusterPolicy> = Api::all(client);
        let patch = Patch::Apply(self.manifest());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mut wait = Duration::from_millis(250);
        loop {
            match api.patch(&self.name, &params, &patch).await {
                Ok(_) => {
                    health.ok(PART);
                    tracing::info!(name = %self.name, default = ?self.default, mode = ?self.mode, "applied the baseline policy");
                    return;
                }
                Err(e) => {
                    tracing::warn!(name = %self.name, error = %e, retry_in = ?wait, "cannot apply the baseline policy yet");
                    health.fail(PART, format!("McpClusterPolicy {}: {e}", self.name));
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(15));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_applies_default_mode_and_labels_and_no_other_field() {
        let b = Baseline {
            name: "tollgate-baseline".into(),
            default: DefaultAction::Deny,
            mode: Mode::Audit,
        };
        let m = b.manifest();
        assert_eq!(m["spec"], json!({"default": "deny", "mode": "audit"}));
        assert_eq!(
            m["metadata"]["labels"]["app.kubernetes.io/part-of"],
            "tollgate"
        );
        let keys: Vec<&String> = m["metadata"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["labels", "name"]);
        // What the API server would store: a valid McpClusterPolicy of that default and mode.
        let policy: McpClusterPolicy = serde_json::from_value(m).unwrap();
        assert_eq!(policy.spec.policy.default, DefaultAction::Deny);
        assert_eq!(policy.spec.policy.mode, Mode::Audit);
        assert!(policy.spec.policy.tools.is_empty());
        assert!(policy.spec.namespace_selector.is_none());
    }
}
