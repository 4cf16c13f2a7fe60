//! The effective policy of one workload: its wire form, as the operator streams it to a
//! sidecar and as a standalone sidecar builds it from a file.
//!
//! ```text
//! McpPolicy (selects pod) ─┐
//! McpClusterPolicy (ns)   ─┼─> EffectivePolicy { revision, defaultAction, policies } ──JSON──> sidecar
//! cluster default         ─┘                                       └─ compile ─> PolicySet
//! ```

use std::collections::BTreeMap;

#[cfg(feature = "kube")]
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::decide::PolicySet;
use crate::load::NamedPolicy;
use crate::problem::Problems;
use crate::resources::DefaultAction;
#[cfg(feature = "kube")]
use crate::resources::{Action, McpClusterPolicy, McpPolicy, PolicySpec, Rule, ToolRules};
#[cfg(feature = "kube")]
use crate::selector::selects;

/// Every policy in force on one pod, in the order they are evaluated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectivePolicy {
    /// Increases with every change the sidecar is sent.
    pub revision: u64,
    /// The cluster-wide default for tools no applicable policy lists.
    pub default_action: DefaultAction,
    /// The decision for a caller no policy governs (every policy's `subjects` leave it out);
    /// absent, `default_action`'s. The standalone proxy sets it (`--ungoverned-callers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ungoverned_action: Option<DefaultAction>,
    pub policies: Vec<NamedPolicy>,
}

impl EffectivePolicy {
    /// Compiles the wire form into the set the decision function reads.
    pub fn compile(&self) -> Result<PolicySet, Problems> {
        let mut set = PolicySet::compile(
            self.revision,
            self.default_action,
            self.policies.iter().map(|p| (p.name.as_str(), &p.spec)),
        )?;
        set.ungoverned = self.ungoverned_action;
        Ok(set)
    }
}

/// One message of the policy stream (operator -> sidecar, one JSON object per line).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyUpdate {
    pub policy: EffectivePolicy,
    /// How the sidecar verifies a calling agent's Kubernetes service-account token offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_keys: Option<ServiceAccountKeys>,
    /// The pod's workload's tool pins (`McpToolPin`s), by tool. Sent only where a policy of the
    /// pod pins tools; absent, the sidecar keeps no pins of the cluster's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pins: Option<std::collections::BTreeMap<String, crate::WorkloadPin>>,
}

/// The cluster's service-account token issuer and its public keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountKeys {
    /// The `iss` the cluster's tokens carry.
    pub issuer: String,
    /// The audience an agent's token must name to be accepted (`tollgate`).
    pub audience: String,
    /// The JWKS document the API server serves at `/openid/v1/jwks`.
    pub jwks: serde_json::Value,
}

/// What selectors are matched against for one pod.
#[derive(Clone, Copy, Debug)]
pub struct Workload<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub namespace_labels: &'a BTreeMap<String, String>,
}

impl EffectivePolicy {
    /// The policies in force on one pod: every cluster policy whose namespace and pod selectors
    /// match, then every policy of the pod's namespace whose selector matches, each in name
    /// order. `revision` is left 0 for the caller to stamp.
    ///
    /// A policy that does not validate (it can only exist if the validating webhook was
    /// bypassed) stands in as a policy that denies every call and says why: failing closed
    /// without holding back the other policies' updates.
    #[cfg(feature = "kube")]
    pub fn for_workload<'p>(
        pod: Workload<'_>,
        cluster: impl IntoIterator<Item = &'p McpClusterPolicy>,
        namespaced: impl IntoIterator<Item = &'p McpPolicy>,
        default_action: DefaultAction,
    ) -> EffectivePolicy {
        let mut policies = Vec::new();
        let mut cluster: Vec<_> = cluster
            .into_iter()
            .filter(|p| {
                selects(p.spec.namespace_selector.as_ref(), pod.namespace_labels)
                    && selects(p.spec.policy.selector.as_ref(), pod.labels)
            })
            .collect();
        cluster.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for p in cluster {
            let name = format!("mcpclusterpolicy/{}", p.name_any());
            policies.push(checked(name, &p.spec.policy));
        }
        let mut namespaced: Vec<_> = namespaced
            .into_iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(pod.namespace)
                    && selects(p.spec.selector.as_ref(), pod.labels)
            })
            .collect();
        namespaced.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for p in namespaced {
            let name = format!("mcppolicy/{}/{}", pod.namespace, p.name_any());
            policies.push(checked(name, &p.spec));
        }
        EffectivePolicy {
            ungoverned_action: None,
            revision: 0,
            default_action,
            policies,
        }
    }
}

#[cfg(feature = "kube")]
fn checked(name: String, spec: &PolicySpec) -> NamedPolicy {
    let problems = crate::validate::validate_stored(spec);
    if problems.is_empty() {
        return NamedPolicy {
            name,
            spec: spec.clone(),
        };
    }
    let reason = format!(
        "{name} is invalid, so every call is denied until it is fixed: {}",
        problems[0]
    );
    let deny_all = ToolRules {
        rules: vec![Rule {
            name: "policy is invalid".into(),
            action: Some(Action::Deny),
            on_deny: Some(reason),
            ..Rule::default()
        }],
    };
    NamedPolicy {
        name,
        spec: PolicySpec {
            default: DefaultAction::Deny,
            tools: BTreeMap::from([("*".to_string(), deny_all)]),
            ..PolicySpec::default()
        },
    }
}
