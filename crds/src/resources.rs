//! The custom resources a platform team writes.
//!
//! ```text
//! McpPolicy (namespaced)        ─┐
//! McpClusterPolicy (cluster)    ─┴─ PolicySpec ── tools: { name | glob | "*" -> ToolRules }
//!                                                  ToolRules ── rules: [Rule]
//!                                                  Rule ── action, conditions: [Condition],
//!                                                          limit | rateLimit, approval, onDeny
//! ```
//!
//! These types are the API: they (de)serialise exactly what `kubectl apply` sends, and the CRD
//! YAML under `crds/` is generated from them. Their meaning lives in [`crate::decide`]; what the
//! OpenAPI schema cannot say lives in [`crate::validate`] and in the CEL rules below.

use std::collections::BTreeMap;

#[cfg(feature = "kube")]
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition as StatusCondition;
#[cfg(feature = "kube")]
use kube::{CustomResource, KubeSchema};
#[cfg(feature = "kube")]
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::selector::LabelSelector;

/// The API group of every Tollgate resource.
pub const GROUP: &str = "tollgate.dev";
/// The version of the policy resources.
pub const VERSION: &str = "v1alpha1";

/// Which tool calls the agents may make on the MCP server pods this policy selects.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "kube", derive(CustomResource, KubeSchema))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "tollgate.dev",
        version = "v1alpha1",
        kind = "McpPolicy",
        namespaced,
        status = "PolicyStatus",
        shortname = "mcpp",
        category = "tollgate",
        derive = "PartialEq",
        derive = "Default",
        doc = "McpPolicy says which MCP tool calls agents may make on the pods it selects in its namespace.",
        printcolumn = r#"{"name":"Default","type":"string","jsonPath":".spec.default"}"#,
        printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
        printcolumn = r#"{"name":"Tools","type":"integer","jsonPath":".status.tools"}"#,
        printcolumn = r#"{"name":"Pods","type":"integer","jsonPath":".status.selectedPods"}"#,
        printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    /// Pods (in the policy's namespace) this policy applies to. Empty or absent selects every
    /// injected pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,

    /// What happens to a tool no applicable policy lists: `deny` (the default) or `allow`.
    #[serde(default)]
    pub default: DefaultAction,

    /// `enforce` (the default) denies; `audit` logs what would be denied and lets it through.
    #[serde(default)]
    pub mode: Mode,

    /// Tools (names or globs) removed from `tools/list` and refused on `tools/call`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kube", x_kube(validation = kube::core::cel::Rule::new("self.all(t, size(t) > 0)").message("hide entries must not be empty")))]
    #[cfg_attr(feature = "kube", schemars(length(max = 1024)))]
    pub hide: Vec<String>,

    /// Whom this policy governs. Absent or empty: every caller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kube", schemars(length(max = 256)))]
    pub subjects: Vec<Subject>,

    /// Rules per tool: a tool name, a glob (`get_*`), or `"*"` for rules that apply to every
    /// call in addition to its own.
    #[serde(default)]
    #[cfg_attr(feature = "kube", x_kube(validation = kube::core::cel::Rule::new("self.all(t, size(t) > 0)").message("tool names must not be empty")))]
    #[cfg_attr(feature = "kube", schemars(extend("maxProperties" = 4096)))]
    pub tools: BTreeMap<String, ToolRules>,

    /// How a denial reaches the agent: a JSON-RPC `error` (the default) or a tool result with
    /// `isError: true`, which some agents read more readily.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_as: Option<DenyAs>,

    /// Paths of the MCP server whose request bodies are not MCP (an OAuth token endpoint, say)
    /// and go through unread: an exact path (`/oauth/token`) or a prefix ending in `*`
    /// (`/oauth/*`). Every other request body must be one JSON-RPC message or batch, or it is
    /// refused. A path named by any policy applying to the pod passes, whoever calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kube", x_kube(validation = kube::core::cel::Rule::new("self.all(p, p.startsWith('/'))").message("passthroughPaths entries must start with /")))]
    #[cfg_attr(feature = "kube", schemars(length(max = 64)))]
    pub passthrough_paths: Vec<String>,

    /// What a call that needs this policy's counters gets while the shared counter store
    /// (Redis) cannot answer in time: `deny` (the default) refuses it; `local` counts it in the
    /// pod, as without a shared store, until the store is back. Without a shared store it
    /// changes nothing.
    #[serde(default)]
    pub counters_unavailable: CountersUnavailable,

    /// What the audit log keeps of the calls this policy governs, besides the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditSpec>,

    /// Tool pinning: a tool whose definition (name, title, description, schemas, annotations)
    /// differs from its pin is dropped from `tools/list` and its calls are denied until a
    /// person accepts the new definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinning: Option<Pinning>,

    /// Rules for the tools whose pinned definition has these annotations (MCP's `readOnlyHint`,
    /// `destructiveHint`, `idempotentHint`, `openWorldHint`), besides those listed by name.
    /// Needs `pinning` (enforce): a server's annotations are its own word until pinned, and a
    /// tool whose annotations change is a changed definition, held back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kube", schemars(length(max = 64)))]
    pub annotated: Vec<AnnotatedRules>,
}

/// Rules for the tools a set of annotations selects.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[serde(rename_all = "camelCase")]
pub struct AnnotatedRules {
    /// Each annotation the tool's pinned definition must have, and its value. One the
    /// definition leaves out counts as MCP's default: `destructiveHint` and `openWorldHint`
    /// true, `readOnlyHint` and `idempotentHint` false.
    pub annotations: BTreeMap<String, bool>,
    /// Evaluated in order; every one must pass.
    #[serde(default)]
    #[cfg_attr(feature = "kube", schemars(length(max = 64)))]
    pub rules: Vec<crate::resources::Rule>,
}

/// Which tool definitions the workload's server may show agents.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[serde(rename_all = "camelCase")]
pub struct Pinning {
    /// `enforce` (the default): a changed or unpinned tool is held back; `audit`: it is
    /// logged and shown; `off`.
    #[serde(default)]
    pub mode: PinMode,
    /// A tool with no pin is pinned to the definition this workload first lists for it.
    #[serde(default)]
    pub trust_on_first_use: bool,
    /// Pins: each tool's definition digest (`sha256:<64 hex>`), as `tollgate pin` writes them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "kube", schemars(extend("maxProperties" = 4096)))]
    pub tools: BTreeMap<String, String>,
}

/// How pins are kept.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "kube", derive(JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum PinMode {
    Off,
    Audit,
    #[default]
    Enforce,
}

/// What the audit log keeps of a call.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[serde(rename_all = "camelCase")]
pub struct AuditSpec {
    /// Argument paths whose values each decision line carries (`args.amount`, or `args` for
    /// every argument): what `tollgate replay` needs to decide the call again under another
    /// policy. None by default, as arguments may hold secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kube", schemars(length(max = 64)))]
    pub arguments: Vec<String>,
}

/// A cluster-wide policy: the same language as [`McpPolicy`], plus which namespaces it reaches.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "kube", derive(CustomResource, KubeSchema))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "tollgate.dev",
        version = "v1alpha1",
        kind = "McpClusterPolicy",
        status = "PolicyStatus",
        shortname = "mcpcp",
        category = "tollgate",
        derive = "PartialEq",
        derive = "Default",
        doc = "McpClusterPolicy applies one policy to MCP server pods across namespaces: the platform team's baseline.",
        printcolumn = r#"{"name":"Default","type":"string","jsonPath":".spec.default"}"#,
        printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
        printcolumn = r#"{"name":"Tools","type":"integer","jsonPath":".status.tools"}"#,
        printcolumn = r#"{"name":"Pods","type":"integer","jsonPath":".status.selectedPods"}"#,
        printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPolicySpec {
    /// Namespaces whose pods this policy reaches. Empty or absent: every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// The policy itself.
    #[serde(flatten)]
    pub policy: PolicySpec,
}

/// The posture for tools no applicable policy lists.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "kube", derive(JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum DefaultAction {
    Allow,
    #[default]
    Deny,
}

/// Whether a policy's denials are enforced or only logged.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "kube", derive(JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

/// What a policy's calls get while the shared counter store cannot answer.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "kube", derive(JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum CountersUnavailable {
    /// Calls that need a counter are denied, saying why (fail closed).
    #[default]
    Deny,
    /// Counted in the pod until the store is back; the pod's counts are not merged back.
    Local,
}

/// How a denied `tools/call` is answered.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "kube", derive(JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum DenyAs {
    /// A JSON-RPC error with the request's id.
    #[default]
    Error,
    /// A `CallToolResult` with `isError: true` and the reason as text.
    ToolResult,
}

/// One caller a policy governs. Exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "kube", x_kube(validation = kube::core::cel::Rule::new(
    "(has(self.serviceAccount) ? 1 : 0) + (has(self.claim) ? 1 : 0) + (has(self.subject) ? 1 : 0) == 1"
).message("set exactly one of serviceAccount, claim or subject")))]
pub struct Subject {
    /// A Kubernetes service account, `NAMESPACE/NAME` (`NAMESPACE/*` for all in a namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "kube",
        schemars(regex(
            pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/(\*|[a-z0-9]([-a-z0-9.]*[a-z0-9])?)$"
        ))
    )]
    pub service_account: Option<String>,

    /// A claim of the caller's verified token; matches when the claim equals the value or, for
    /// a list claim such as `groups`, contains it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<ClaimMatch>,

    /// The token's `sub` claim, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// `{ name: groups, value: data-admins }`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
pub struct ClaimMatch {
    #[cfg_attr(feature = "kube", schemars(length(min = 1)))]
    pub name: String,
    pub value: String,
}

/// The rules of one tool entry. A listed tool with no rules is allowed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[serde(rename_all = "camelCase")]
pub struct ToolRules {
    /// Evaluated in order; every one must pass.
    #[serde(default)]
    #[cfg_attr(feature = "kube", schemars(length(max = 64)))]
    pub rules: Vec<crate::resources::Rule>,
}

/// One rule. `allow` rules (the default) pass when all their conditions hold and their limit
/// has room; `deny` and `approve` rules apply when all their conditions hold (always, without
/// conditions).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "kube", x_kube(validation = kube::core::cel::Rule::new("!(has(self.rateLimit) && has(self.limit))")
    .message("set rateLimit or limit, not both")))]
#[cfg_attr(feature = "kube", x_kube(validation = kube::core::cel::Rule::new(
    "!has(self.action) || self.action == 'allow' || (!has(self.rateLimit) && !has(self.limit))"
).message("deny and approve rules cannot carry a limit: put the limit in an allow rule")))]
#[cfg_attr(feature = "kube", x_kube(validation = kube::core::cel::Rule::new(
    "!has(self.approval) || (has(self.action) && self.action == 'approve')"
).message("approval settings need action: approve")))]
pub struct Rule {
    /// A name for audit logs and denials; unique within the tool.
    #[serde(default)]
    #[cfg_attr(feature = "kube", schemars(length(max = 253)))]
    pub name: String,

    /// `allow` (the default), `deny`, or `approve` (hold for a person).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,

    /// All must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kube", schemars(length(max = 32)))]
    pub conditions: Vec<Condition>,

    /// A counter this rule reserves on every allowed call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<Limit>,

    /// Shorthand for a limit: `N/second|minute|hour|day`, counted per tool entry and workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "kube",
        schemars(regex(pattern = r"^[1-9][0-9]{0,17}/(second|minute|hour|day)$"))
    )]
    pub rate_limit: Option<String>,

    /// Settings for `action: approve`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,

    /// The message the agent sees when this rule denies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(length(max = 1024)))]
    pub on_deny: Option<String>,
}

/// What a rule does when it applies.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "kube", derive(JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum Action {
    #[default]
    Allow,
    Deny,
    Approve,
}

/// A test on the call. `path` reads `args.<field>[.<field>…]`, `identity.sub`,
/// `identity.serviceAccount`, `identity.claims.<name>`, or `state.<tool>.<counter>`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[serde(rename_all = "camelCase")]
// No CEL rule can say "value is required but for exists": `value` has no type (it holds any
// JSON), and the API server's CEL sees no field without one ("undefined field 'value'", which
// it answers by refusing the whole CRD; found by installing the chart into a real API server).
// The validating webhook and every loader check it instead (`validate::validate_spec`).
pub struct Condition {
    #[cfg_attr(
        feature = "kube",
        schemars(regex(pattern = r"^(args|state|identity)\..+$"), length(max = 512))
    )]
    pub path: String,
    pub op: Op,
    /// A string, number, boolean or list, as the operator needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(schema_with = "any_value"))]
    pub value: Option<serde_json::Value>,
}

/// Comparison operators.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum Op {
    Eq,
    Neq,
    In,
    NotIn,
    Lt,
    Lte,
    Gt,
    Gte,
    Regex,
    Contains,
    Exists,
}

/// A counter over a calendar-aligned UTC window.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "kube", x_kube(validation = kube::core::cel::Rule::new("!(has(self.increment) && has(self.incrementFrom))")
    .message("set increment or incrementFrom, not both")))]
pub struct Limit {
    /// The counter's name; rules naming the same counter in one tool entry share it.
    #[cfg_attr(feature = "kube", schemars(length(min = 1, max = 253)))]
    pub counter: String,
    pub window: Window,
    /// The most the counter may reach in one window. Absent: the rule only counts (for
    /// conditions that read `state.<tool>.<counter>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(range(min = 1)))]
    pub max: Option<u64>,
    /// Added on each allowed call (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(range(min = 0)))]
    pub increment: Option<u64>,
    /// Add this argument's value instead, e.g. `args.amount`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(regex(pattern = r"^args\..+$")))]
    pub increment_from: Option<String>,
    /// Whose calls share the counter: the workload (`global`, the default), each caller
    /// (`identity`, alias `grant`), or each MCP session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
}

/// Counter windows, calendar-aligned in UTC.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "kube", derive(JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum Window {
    Second,
    Minute,
    Hour,
    Day,
}

impl Window {
    /// The window's length in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            Window::Second => 1,
            Window::Minute => 60,
            Window::Hour => 3_600,
            Window::Day => 86_400,
        }
    }

    /// The window's name, as a policy writes it.
    pub fn name(self) -> &'static str {
        match self {
            Window::Second => "second",
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
        }
    }

    /// Parses `second|minute|hour|day`.
    pub fn parse(s: &str) -> Option<Window> {
        match s {
            "second" => Some(Window::Second),
            "minute" => Some(Window::Minute),
            "hour" => Some(Window::Hour),
            "day" => Some(Window::Day),
            _ => None,
        }
    }

    /// The window's name as written in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Second => "second",
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
        }
    }
}

/// Whose calls share a counter.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "kube", derive(JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum Scope {
    #[default]
    Global,
    Identity,
    /// PolicyLayer's name for `identity`.
    Grant,
    Session,
}

/// How a call waits for a person, and what the person is shown.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// How long the sidecar holds the call waiting for a decision, e.g. `20s`, `2m` (default
    /// `30s`, under the 60 s most MCP clients wait for an answer). Undecided by then, the agent
    /// is told to retry the same call once it is approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$")))]
    pub timeout: Option<String>,
    /// How long an approval lasts: undecided, it expires this long after the call; approved,
    /// the retry must come this long after the decision (default `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$")))]
    pub valid_for: Option<String>,
    /// The argument paths a person deciding is shown (e.g. `args.bucket`); none by default, as
    /// arguments may hold secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub show: Vec<String>,
}

/// What the operator reports about a policy.
#[cfg(feature = "kube")]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` (the policy compiles) and `Ready` (it is in force on the pods it selects).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<StatusCondition>,
    /// How many pods the policy selects.
    #[serde(default)]
    pub selected_pods: u32,
    /// How many tool entries the policy lists.
    #[serde(default)]
    pub tools: u32,
}

#[cfg(feature = "kube")]
fn any_value(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}
