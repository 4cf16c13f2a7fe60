//! `McpApproval`: one tool call waiting for (or decided by) a person, in the namespace of the
//! workload that holds it. Like a CertificateSigningRequest, who may decide is RBAC (the
//! `approve` verb on `mcpapprovals`, checked by the operator's webhook with a
//! SubjectAccessReview), and who decided is stamped by that webhook from the API server's own
//! record of the request: nobody can write someone else's name.
//!
//! ```text
//! spec      the call (tool, identity, pod, workload, policy, rule, the arguments a person is
//!           shown, the call's fingerprint) ─ written once, by the operator
//! spec.decision   verdict Approve | Deny, reason ─ written once, by a person
//!                 (kubectl tollgate approve|deny, or an edit); decidedBy, decidedAt stamped
//! status    phase Pending | Approved | Denied | Expired | Used, expires, usedBy ─ the operator
//! ```

use std::collections::BTreeMap;

#[cfg(feature = "kube")]
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The call an approval is for, and the person's decision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "kube", derive(CustomResource, KubeSchema))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "tollgate.dev",
        version = "v1alpha1",
        kind = "McpApproval",
        namespaced,
        status = "ApprovalStatus",
        shortname = "mcpa",
        category = "tollgate",
        derive = "PartialEq",
        derive = "Default",
        doc = "McpApproval is one MCP tool call waiting for a person's decision.",
        printcolumn = r#"{"name":"Tool","type":"string","jsonPath":".spec.tool"}"#,
        printcolumn = r#"{"name":"Identity","type":"string","jsonPath":".spec.identity"}"#,
        printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".spec.pod"}"#,
        printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
        printcolumn = r#"{"name":"Expires","type":"date","jsonPath":".status.expires"}"#
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalSpec {
    /// The tool called.
    pub tool: String,
    /// Who called it (the token's subject, or `anonymous`).
    pub identity: String,
    /// The pod whose sidecar holds the call.
    pub pod: String,
    /// The workload the approval is bound to (the pod's owner).
    pub workload: String,
    /// The policy and rule that asked for a person.
    pub policy: String,
    pub rule: String,
    /// The call's fingerprint: a digest of its tool, canonical arguments, identity and
    /// workload, which the call admitted must match.
    pub call: String,
    /// The argument paths the rule's `approval.show` names, each as JSON text.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub arguments: BTreeMap<String, String>,
    /// How long the approval lasts, in seconds: undecided, from its creation; approved, from
    /// the decision.
    pub valid_for_seconds: u32,
    /// A person's decision, set once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<ApprovalDecision>,
}

/// What a person decided. `decidedBy` and `decidedAt` are stamped by the webhook.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[serde(rename_all = "camelCase")]
pub struct ApprovalDecision {
    pub verdict: ApprovalVerdict,
    /// Why: shown to the agent on a denial, and kept in the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The API server's user who decided (stamped; whatever a request writes here is replaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// RFC 3339 (stamped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
pub enum ApprovalVerdict {
    #[default]
    Approve,
    Deny,
}

/// Where an approval is in its life, as the operator reports it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[serde(rename_all = "camelCase")]
pub struct ApprovalStatus {
    #[serde(default)]
    pub phase: ApprovalPhase,
    /// RFC 3339: when it expires if nothing more happens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// The pod whose call used it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_by: Option<String>,
    /// RFC 3339: when it was used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_at: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
pub enum ApprovalPhase {
    #[default]
    Pending,
    Approved,
    Denied,
    Expired,
    Used,
}

/// A name people can type for an approval of `tool`: the tool's name made DNS-safe (at most 40
/// characters), and `suffix` (random) in hex.
pub fn approval_name(tool: &str, suffix: u32) -> String {
    let mut name: String = tool
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name.truncate(40);
    match name.trim_matches('-') {
        "" => format!("call-{suffix:08x}"),
        name => format!("{name}-{suffix:08x}"),
    }
}
