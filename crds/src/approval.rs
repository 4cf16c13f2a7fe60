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

impl ApprovalPhase {
    /// Whether nothing more can happen to an approval in this phase.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ApprovalPhase::Denied | ApprovalPhase::Expired | ApprovalPhase::Used
        )
    }

    /// The phase in lower case, as audit lines and webhook events name it.
    pub fn word(self) -> &'static str {
        match self {
            ApprovalPhase::Pending => "pending",
            ApprovalPhase::Approved => "approved",
            ApprovalPhase::Denied => "denied",
            ApprovalPhase::Expired => "expired",
            ApprovalPhase::Used => "used",
        }
    }

    /// An approval's life, the one both planes follow:
    ///
    /// ```text
    /// Pending ─ decide(Approve) ─> Approved ─ use ─> Used
    ///    │    └ decide(Deny) ───> Denied        └─ its time ─> Expired
    ///    └ its time ─> Expired
    /// ```
    ///
    /// The phase `event` leads to, or why it cannot happen now.
    pub fn next(self, event: ApprovalEvent) -> Result<ApprovalPhase, NotNow> {
        use ApprovalEvent as E;
        use ApprovalPhase as P;
        match (self, event) {
            (P::Pending, E::Decide(ApprovalVerdict::Approve)) => Ok(P::Approved),
            (P::Pending, E::Decide(ApprovalVerdict::Deny)) => Ok(P::Denied),
            (P::Pending | P::Approved, E::Expire) => Ok(P::Expired),
            (P::Approved, E::Use) => Ok(P::Used),
            (P::Pending, E::Use) => Err(NotNow::Undecided),
            (P::Approved, E::Decide(_)) => Err(NotNow::Decided(P::Approved)),
            (phase, _) => Err(NotNow::Ended(phase)),
        }
    }

    /// The phase to act on at `now`: a final phase stays; otherwise the time has passed
    /// (`expires`: undecided, creation plus lifetime; decided, the decision plus lifetime) or the decision written (which counts as soon as it is written, before
    /// whoever keeps the phase has recorded it) decides.
    pub fn at<T: PartialOrd>(
        self,
        decision: Option<ApprovalVerdict>,
        expires: Option<T>,
        now: T,
    ) -> ApprovalPhase {
        if self.is_final() {
            return self;
        }
        if expires.is_some_and(|t| t <= now) {
            return ApprovalPhase::Expired;
        }
        match decision {
            Some(ApprovalVerdict::Approve) => ApprovalPhase::Approved,
            Some(ApprovalVerdict::Deny) => ApprovalPhase::Denied,
            None => ApprovalPhase::Pending,
        }
    }
}

/// What can happen to an approval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApprovalEvent {
    /// A person decided.
    Decide(ApprovalVerdict),
    /// The call it approves went on.
    Use,
    /// Its time passed.
    Expire,
}

/// Why an event cannot happen to an approval now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotNow {
    /// Used before anyone approved it.
    Undecided,
    /// Decided once already.
    Decided(ApprovalPhase),
    /// It ended in this phase.
    Ended(ApprovalPhase),
}

impl std::fmt::Display for NotNow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotNow::Undecided => f.write_str("nobody has approved it"),
            NotNow::Decided(p) | NotNow::Ended(p) => write!(f, "it is {} already", p.word()),
        }
    }
}

/// What binds an approval to one call: each part (the tool, the caller, and where a
/// workload keeps it, the workload) with its length so none can run into the next, then the
/// arguments written canonically ([`canonical`]). Two calls share it only if they are the same
/// call, whatever a retry's key order, spacing or number spelling.
pub fn call_key(parts: &[&str], args: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut key = String::new();
    for part in parts {
        let _ = writeln!(key, "{}:{part}", part.len());
    }
    canonical(args, &mut key);
    key
}

/// JSON written canonically: object keys sorted, no whitespace, a number by its value (`1`,
/// `1.0` and `1e0` are one number, as the servers reading them see it).
pub fn canonical(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    use std::fmt::Write;
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        // Integers exactly; a float that is a whole number within i64 as that integer (so `1.0`
        // is `1`, as servers compare them), any other float in exponent form (shortest
        // round-trip digits, so two floats share a spelling only if they are one number).
        Value::Number(n) if n.is_i64() || n.is_u64() => out.push_str(&n.to_string()),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => {
                let _ = write!(out, "{}", f as i64);
            }
            Some(f) => {
                let _ = write!(out, "{f:e}");
            }
            None => out.push_str(&n.to_string()),
        },
        other => out.push_str(&other.to_string()),
    }
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
