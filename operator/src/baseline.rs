//! The cluster-wide baseline the chart asks for: one McpClusterPolicy whose `default` and
//! `mode` are the chart's values, kept by the operator.
//!
//! ```text
//! --baseline NAME (the chart: <release>-baseline), --default-action, --baseline-mode
//!   the leader, while it leads: the index's McpClusterPolicy NAME
//!     absent, or default, mode or the part-of label not the chart's
//!       ─ server-side apply (field manager tollgate-operator, forced) of those, nothing else
//!       ─ refused (the CRD not served yet, RBAC, the API server away) ─> retried, with
//!         /readyz naming the baseline once it keeps failing past --failure-grace
//!   every replica: not ready until its index holds NAME, so the webhooks and the policy
//!     stream (reached through the Service, at ready replicas only) never serve a cluster
//!     without its baseline
//! ```
//!
//! Why the operator and not a Helm hook: a chart's own custom resource cannot be created in
//! the install that creates its CRD. Helm maps every object of the release before it creates
//! any, and a hook after the CRD races the API server's discovery (Helm refuses it with "no
//! matches for kind McpClusterPolicy ... ensure CRDs are installed first"). Argo CD and Flux
//! meet the same ordering. The leader waits until the CRD is served.
//!
//! Only the leader writes, so a rollout converges on the new values once the new replicas
//! lead, and a replica of the old revision restarting meanwhile cannot leave its values behind
//! for good. Owning only the two fields the chart decides keeps what a platform team adds to
//! the baseline (tools, hidden tools, a namespace selector) across upgrades, where the hook
//! replaced the whole object. A hand-made `default: allow` goes back to the chart's value at
//! once: the chart's values are where the posture is changed. The validating webhook skips the
//! operator's own writes (the chart's `matchConditions`, by its ServiceAccount's name): no
//! replica is ready to answer it before the baseline exists. A person's edits are checked.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::time::Instant;
use tollgate_api::{DefaultAction, McpClusterPolicy, Mode};

use crate::health::Health;
use crate::index::Index;

/// The field manager of the fields the operator applies.
pub const FIELD_MANAGER: &str = "tollgate-operator";

/// What `/readyz` names while the baseline cannot be applied.
const PART: &str = "the baseline policy";

/// The label that says the baseline is Tollgate's.
const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "tollgate");

/// The least time between two applies of a baseline someone else keeps changing back: a
/// tool fighting the operator gets one write in this long, not a loop.
const PACE: Duration = Duration::from_secs(5);

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
                    PART_OF.0: PART_OF.1,
                    "app.kubernetes.io/managed-by": FIELD_MANAGER,
                },
            },
            "spec": {"default": self.default, "mode": self.mode},
        })
    }

    /// Whether `found` is the baseline as the chart asks for it.
    pub fn holds(&self, found: Option<&McpClusterPolicy>) -> bool {
        found.is_some_and(|p| {
            p.spec.policy.default == self.default
                && p.spec.policy.mode == self.mode
                && p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(PART_OF.0))
                    .is_some_and(|v| v == PART_OF.1)
        })
    }

    /// The leader's controller: applies the baseline whenever the index shows it absent or
    /// changed. Never ends.
    pub async fn keep(self, client: Client, index: Arc<Index>, health: Arc<Health>) {
        let api: Api<McpClusterPolicy> = Api::all(client);
        let mut applied: Option<Instant> = None;
        loop {
            index
                .cluster_policy_until(&self.name, |p| !self.holds(p))
                .await;
            if let Some(at) = applied {
                tracing::warn!(name = %self.name, "the baseline policy was deleted or changed; applying the chart's again");
                tokio::time::sleep_until(at + PACE).await;
            }
            self.apply(&api, &health).await;
            applied = Some(Instant::now());
            // Until the watch brings the write back, the index shows what was before.
            let seen = index.cluster_policy_until(&self.name, |p| self.holds(p));
            let _ = tokio::time::timeout(PACE, seen).await;
        }
    }

    /// Applies the baseline, retrying until the API server takes it: on a first install the
    /// CRD may not be served yet.
    async fn apply(&self, api: &Api<McpClusterPolicy>, health: &Health) {
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

    fn baseline() -> Baseline {
        Baseline {
            name: "tollgate-baseline".into(),
            default: DefaultAction::Deny,
            mode: Mode::Audit,
        }
    }

    #[test]
    fn the_baseline_applies_default_mode_and_labels_and_no_other_field() {
        let m = baseline().manifest();
        assert_eq!(m["spec"], json!({"default": "deny", "mode": "audit"}));
        assert_eq!(m["metadata"]["labels"][PART_OF.0], PART_OF.1);
        let keys: Vec<&String> = m["metadata"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["labels", "name"]);
        // What the API server would store: a valid McpClusterPolicy of that default and mode.
        let policy: McpClusterPolicy = serde_json::from_value(m).unwrap();
        assert_eq!(policy.spec.policy.default, DefaultAction::Deny);
        assert_eq!(policy.spec.policy.mode, Mode::Audit);
        assert!(policy.spec.policy.tools.is_empty());
        assert!(policy.spec.namespace_selector.is_none());
    }

    #[test]
    fn a_baseline_absent_loosened_or_unlabelled_is_applied_again_and_additions_are_not_a_change() {
        let b = baseline();
        let applied: McpClusterPolicy = serde_json::from_value(b.manifest()).unwrap();
        assert!(b.holds(Some(&applied)));
        assert!(!b.holds(None), "deleted");
        let mut added = applied.clone();
        added
            .spec
            .policy
            .tools
            .insert("search".into(), Default::default());
        assert!(b.holds(Some(&added)), "a team's tool is theirs");
        let mut loosened = applied.clone();
        loosened.spec.policy.default = DefaultAction::Allow;
        assert!(!b.holds(Some(&loosened)));
        let mut enforcing = applied.clone();
        enforcing.spec.policy.mode = Mode::Enforce;
        assert!(!b.holds(Some(&enforcing)), "the chart's mode, either way");
        let mut unlabelled = applied;
        unlabelled.metadata.labels = None;
        assert!(!b.holds(Some(&unlabelled)), "the label is the chart's too");
    }
}
