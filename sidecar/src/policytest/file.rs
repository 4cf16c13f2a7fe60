//! What a policy test file says, as written: its policies, and cases of ordered steps, each
//! with what it expects.
//!
//! ```yaml
//! name: stripe                  # optional; the file's name otherwise
//! policies: [../policy.yaml]    # relative to this file; any format `tollgate proxy` reads
//! defaultAction: allow          # the cluster default (as --default-action)
//! ungovernedCallers: deny       # as --ungoverned-callers
//! clock: 2026-01-05T09:00:00Z   # where the test clock starts (default: this instant)
//! cases:
//!   - name: the sixth issue in an hour is refused
//!     steps:
//!       - call: create_issue
//!         args: {title: a}
//!         as: alice              # or {subject, serviceAccount, claims}
//!         repeat: 5
//!         expect: {decision: allow}
//!       - call: create_issue
//!         expect: {decision: deny, rule: hourly issue limit, reason: "5 new issues"}
//!       - wait: 1h
//!       - upstream: not-run      # the last call that went on: refunded
//!       - approval: approve      # the last held call's approval
//!       - list: [a, b]
//!         expect: {shown: [a], hidden: [b]}
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// One test file.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TestFile {
    #[serde(default)]
    pub name: Option<String>,
    /// Policy files, relative to the test file (`kubectl tollgate test --pod` uses the pod's
    /// effective policy instead).
    #[serde(default)]
    pub policies: Vec<String>,
    #[serde(default)]
    pub default_action: Option<Default>,
    #[serde(default)]
    pub ungoverned_callers: Option<Default>,
    /// RFC 3339, UTC: where the test clock starts.
    #[serde(default)]
    pub clock: Option<String>,
    pub cases: Vec<Case>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Default {
    Allow,
    Deny,
}

/// One case: steps run in order against fresh counters, approvals and clock.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub steps: Vec<Step>,
}

/// One step: exactly one of `call`, `list`, `upstream`, `approval` or `wait`, with what it
/// expects.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Step {
    /// A `tools/call` of this tool.
    #[serde(default)]
    pub call: Option<String>,
    /// A `tools/list` answered with these tools.
    #[serde(default)]
    pub list: Option<Vec<String>>,
    /// What became of the last call that went on to the server.
    #[serde(default)]
    pub upstream: Option<Upstream>,
    /// A person decides the last held call's approval, or it expires.
    #[serde(default)]
    pub approval: Option<ApprovalStep>,
    /// Time passes on the test clock (`90s`, `1h30m`).
    #[serde(default)]
    pub wait: Option<String>,

    /// The call's arguments (default `{}`).
    #[serde(default)]
    pub args: Option<Value>,
    /// The `annotations` of the called tool's pinned definition, which `spec.annotated`
    /// selects by (default: none known, so no annotated entry applies).
    #[serde(default)]
    pub annotations: Option<Value>,
    /// Who calls (default: anonymous).
    #[serde(default, rename = "as")]
    pub caller: Option<Caller>,
    /// The session the server bound the call to (default: none). On another step, whose
    /// counters `expect.counters` reads (default: the last call's caller and session).
    #[serde(default)]
    pub session: Option<String>,
    /// Time that passes before this step.
    #[serde(default)]
    pub after: Option<String>,
    /// Run the step this many times, each expecting the same (default 1).
    #[serde(default)]
    pub repeat: Option<u32>,
    /// Who decides an approval (default `tollgate-test`).
    #[serde(default)]
    pub by: Option<String>,
    /// Why a person decides so (a denial needs one).
    #[serde(default)]
    pub reason: Option<String>,

    #[serde(default)]
    pub expect: Option<Expect>,
}

/// Who calls: a subject, or the whole identity.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Caller {
    Subject(String),
    Identity(IdentityFile),
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IdentityFile {
    #[serde(default)]
    pub subject: Option<String>,
    /// `NAMESPACE/NAME`: a Kubernetes service account's token.
    #[serde(default)]
    pub service_account: Option<String>,
    #[serde(default)]
    pub claims: serde_json::Map<String, Value>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub enum Upstream {
    /// The tool ran (what happens unless a step says otherwise).
    Ran,
    /// The tool ran and failed (a JSON-RPC error or `isError`): it still counts.
    Failed,
    /// The server refused the call before running it, or could not be reached: its counters
    /// are given back.
    NotRun,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalStep {
    Approve,
    Deny,
    /// Nobody decides: the test clock moves to its expiry.
    Expire,
}

/// What a step expects; what it does not name is not checked.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Expect {
    /// `allow`, `deny`, `approve` (held for a person) or `audit` (let through; a policy in
    /// audit mode would deny it).
    #[serde(default)]
    pub decision: Option<Kind>,
    /// The rule that decided (or that audit mode would have denied by).
    #[serde(default)]
    pub rule: Option<String>,
    /// The policy that decided.
    #[serde(default)]
    pub policy: Option<String>,
    /// Words the reason contains.
    #[serde(default)]
    pub reason: Option<String>,
    /// Counters after the step, for this step's caller and session: `TOOL.COUNTER` (the
    /// `state.` path without `state.`; `_global` for `"*"`, `_rate_hour` for `rate_limit:
    /// N/hour`), with `@POLICY` where several policies name it.
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
    /// Of a `list`: the tools the agent sees, and those it does not.
    #[serde(default)]
    pub shown: Option<Vec<String>>,
    #[serde(default)]
    pub hidden: Option<Vec<String>>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Allow,
    Deny,
    Approve,
    Audit,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Allow => "allow",
            Kind::Deny => "deny",
            Kind::Approve => "approve",
            Kind::Audit => "audit",
        }
    }
}
