//! Reading policy files: Kubernetes YAML (several documents), PolicyLayer's `policy.json`, and
//! PolicyLayer Intercept's YAML, each with the meaning it has where it comes from.
//!
//! ```text
//! text ──split into documents──> apiVersion/kind?  -> McpPolicy | McpClusterPolicy
//!                                tools.*.rules?     -> Intercept  (default allow)
//!                                otherwise          -> PolicyLayer (default required)
//!      ──> [NamedPolicy { name, spec }]  or  every Problem, each with its document and field
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::problem::{Problem, Problems};
use crate::resources::{
    Action, ClusterPolicySpec, Condition, DefaultAction, Limit, Op, PolicySpec, Rule, Scope,
    ToolRules, Window,
};
use crate::validate::{counter_scope, path_key, validate_spec};

/// The formats a policy file can be in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Format {
    McpPolicy,
    McpClusterPolicy,
    PolicyLayer,
    Intercept,
}

/// One policy read from a file or the API, with the name it is known by in decisions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedPolicy {
    /// `mcppolicy/NAMESPACE/NAME`, `mcpclusterpolicy/NAME`, or `FORMAT/FILE` for files.
    pub name: String,
    pub spec: PolicySpec,
}

/// A loaded document with its format (so `import` can say what it converted).
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    pub format: Format,
    pub policy: NamedPolicy,
    /// `metadata.namespace` / `metadata.name` where the document had them.
    pub namespace: Option<String>,
    pub resource_name: Option<String>,
    pub namespace_selector: Option<crate::selector::LabelSelector>,
}

/// Loads every policy of a file. `origin` names the file in problems and policy names.
pub fn load_file(text: &str, origin: &str) -> Result<Vec<Loaded>, Problems> {
    let docs = split_documents(text).map_err(|e| Problems(vec![Problem::new(origin, e)]))?;
    let many = docs.len() > 1;
    let mut loaded = Vec::new();
    let mut problems = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let here = if many {
            format!("{origin} (document {})", i + 1)
        } else {
            origin.to_string()
        };
        match load_document(doc, origin) {
            Ok(l) => loaded.push(l),
            Err(ps) => problems.extend(ps.within(&here).0),
        }
    }
    if !problems.is_empty() {
        return Err(Problems(problems));
    }
    if loaded.is_empty() {
        return Err(Problems(vec![Problem::new(
            origin,
            "no policy found; the file is empty",
        )]));
    }
    Ok(loaded)
}

fn split_documents(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(de)
            .map_err(|e| format!("document {} is not valid YAML or JSON: {e}", i + 1))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

fn file_stem(origin: &str) -> &str {
    let base = origin.rsplit('/').next().unwrap_or(origin);
    base.split('.')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(base)
}

/// Reads one document in whichever format it is, and validates it: every problem at once,
/// each named by the field as the document spells it.
pub fn load_document(doc: Value, origin: &str) -> Result<Loaded, Problems> {
    let Value::Object(map) = &doc else {
        return Err(one("", "a policy must be a mapping (YAML object)"));
    };
    if map.contains_key("apiVersion") || map.contains_key("kind") {
        let loaded = load_resource(doc)?;
        let problems = validate_spec(&loaded.policy.spec);
        return match problems.is_empty() {
            true => Ok(loaded),
            false => Err(Problems(problems)),
        };
    }
    let is_intercept = map
        .get("tools")
        .and_then(Value::as_object)
        .is_some_and(|tools| {
            tools.values().any(|t| t.get("rules").is_some())
                || (tools.values().all(|t| t.get("limits").is_none())
                    && !map.contains_key("default"))
        });
    let stem = file_stem(origin);
    let (format, name, converted) = if is_intercept {
        let c = intercept::convert(doc)?;
        (Format::Intercept, format!("intercept/{stem}"), c)
    } else {
        let c = policylayer::convert(doc)?;
        (Format::PolicyLayer, format!("policylayer/{stem}"), c)
    };
    let Converted {
        spec,
        mut problems,
        origins,
        words,
    } = converted;
    // What the converted spec gets wrong is the file's problem too, found in the same pass and
    // named as the file spells it.
    problems.extend(validate_spec(&spec).into_iter().map(|p| {
        let message = words
            .iter()
            .fold(origins.file_paths_in(&p.message), |m, (ours, theirs)| {
                m.replace(ours, theirs)
            });
        Problem::new(origins.file_path(&p.path), message)
    }));
    if !problems.is_empty() {
        problems.sort_by(|a, b| a.path.cmp(&b.path));
        return Err(Problems(problems));
    }
    Ok(from_file(format, name, spec))
}

/// A file in another project's format, converted: the spec, the problems found converting it,
/// and where each rule came from.
struct Converted {
    spec: PolicySpec,
    problems: Vec<Problem>,
    origins: Origins,
    /// Tollgate's words in problems' messages, and the file's.
    words: &'static [(&'static str, &'static str)],
}

/// Where each converted rule came from in its file, so that a problem found in the converted
/// spec (`spec.tools.x.rules[2].rateLimit`) names the file's own field
/// (`tools.x.rules[3].rate_limit`).
#[derive(Default)]
struct Origins {
    /// `(tool, converted rule index)` -> its origin.
    rules: BTreeMap<(String, usize), RuleOrigin>,
}

struct RuleOrigin {
    /// The rule's path in the file, e.g. `tools.x.rules[3]` or `tools.x.limits[0]`.
    at: String,
    /// Each converted condition's path in the file.
    conditions: Vec<String>,
    /// The spec's field names and the file's, longest first (`limit.incrementFrom` before
    /// `limit`); an empty file name means the rule's own path.
    fields: &'static [(&'static str, &'static str)],
}

impl Origins {
    fn add(&mut self, tool: &str, index: usize, origin: RuleOrigin) {
        self.rules.insert((tool.to_string(), index), origin);
    }

    /// A message with every path of the converted spec in it (`spec.tools.x.rules[0]`) made
    /// the file's.
    fn file_paths_in(&self, message: &str) -> String {
        message
            .split(' ')
            .map(|word| {
                let Some(at) = word.find("spec.") else {
                    return word.to_string();
                };
                let end = word[at..]
                    .find([')', ';', ',', ':'])
                    .map_or(word.len(), |e| at + e);
                format!(
                    "{}{}{}",
                    &word[..at],
                    self.file_path(&word[at..end]),
                    &word[end..]
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The file's path for a path of the converted spec.
    fn file_path(&self, spec_path: &str) -> String {
        let Some(rest) = spec_path.strip_prefix("spec.") else {
            return spec_path.to_string();
        };
        for ((tool, index), origin) in &self.rules {
            let prefix = format!("tools.{}.rules[{index}]", path_key(tool));
            let Some(field) = rest.strip_prefix(&prefix) else {
                continue;
            };
            if !(field.is_empty() || field.starts_with('.') || field.starts_with('[')) {
                continue;
            }
            let field = field.strip_prefix('.').unwrap_or(field);
            if let Some(cond) = field.strip_prefix("conditions[")
                && let Some((j, tail)) = cond.split_once(']')
                && let Some(at) = j
                    .parse::<usize>()
                    .ok()
                    .and_then(|j| origin.conditions.get(j))
            {
                return format!("{at}{tail}");
            }
            for (ours, theirs) in origin.fields {
                let matched =
                    field == *ours || field.strip_prefix(ours).is_some_and(|t| t.starts_with('.'));
                if matched {
                    let tail = &field[ours.len()..];
                    return match theirs.is_empty() {
                        true => format!("{}{tail}", origin.at),
                        false => format!("{}.{theirs}{tail}", origin.at),
                    };
                }
            }
            return match field.is_empty() {
                true => origin.at.clone(),
                false => format!("{}.{field}", origin.at),
            };
        }
        rest.to_string()
    }
}

fn from_file(format: Format, name: String, spec: PolicySpec) -> Loaded {
    Loaded {
        format,
        policy: NamedPolicy { name, spec },
        namespace: None,
        resource_name: None,
        namespace_selector: None,
    }
}

/// A resource as a file holds it: what loading reads of its metadata, and its spec. (The
/// `McpPolicy` types themselves carry Kubernetes' whole `ObjectMeta`, and exist only with the
/// `kube` feature.)
#[derive(Deserialize)]
struct Manifest<S> {
    #[serde(default)]
    metadata: Metadata,
    spec: S,
}

#[derive(Deserialize, Default)]
struct Metadata {
    name: Option<String>,
    namespace: Option<String>,
}

fn load_resource(doc: Value) -> Result<Loaded, Problems> {
    let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
    let want = format!("{}/{}", crate::GROUP, crate::VERSION);
    if api_version != want {
        return Err(one(
            "apiVersion",
            format!("must be {want}, got {api_version:?}"),
        ));
    }
    match kind {
        "McpPolicy" => {
            let p: Manifest<PolicySpec> = from_value(doc)?;
            let ns = p
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let name = p.metadata.name.clone().unwrap_or_default();
            require_name(&name)?;
            Ok(Loaded {
                format: Format::McpPolicy,
                policy: NamedPolicy {
                    name: format!("mcppolicy/{ns}/{name}"),
                    spec: p.spec,
                },
                namespace: Some(ns),
                resource_name: Some(name),
                namespace_selector: None,
            })
        }
        "McpClusterPolicy" => {
            let p: Manifest<ClusterPolicySpec> = from_value(doc)?;
            let name = p.metadata.name.clone().unwrap_or_default();
            require_name(&name)?;
            if let Some(sel) = &p.spec.namespace_selector {
                let mut out = Vec::new();
                crate::validate::validate_selector("spec.namespaceSelector", sel, &mut out);
                if !out.is_empty() {
                    return Err(Problems(out));
                }
            }
            Ok(Loaded {
                format: Format::McpClusterPolicy,
                policy: NamedPolicy {
                    name: format!("mcpclusterpolicy/{name}"),
                    spec: p.spec.policy,
                },
                namespace: None,
                resource_name: Some(name),
                namespace_selector: p.spec.namespace_selector,
            })
        }
        other => Err(one(
            "kind",
            format!("must be McpPolicy or McpClusterPolicy, got {other:?}"),
        )),
    }
}

fn require_name(name: &str) -> Result<(), Problems> {
    if name.is_empty() {
        Err(one("metadata.name", "is required"))
    } else {
        Ok(())
    }
}

fn from_value<T: serde::de::DeserializeOwned>(doc: Value) -> Result<T, Problems> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        one(path, e.into_inner().to_string())
    })
}

fn one(path: impl Into<String>, message: impl Into<String>) -> Problems {
    Problems(vec![Problem::new(path, message)])
}

fn parse_op(at: &str, op: &str, problems: &mut Vec<Problem>) -> Option<Op> {
    Some(match op {
        "eq" => Op::Eq,
        "neq" => Op::Neq,
        "in" => Op::In,
        "not_in" | "notIn" => Op::NotIn,
        "lt" => Op::Lt,
        "lte" => Op::Lte,
        "gt" => Op::Gt,
        "gte" => Op::Gte,
        "regex" => Op::Regex,
        "contains" => Op::Contains,
        "exists" => Op::Exists,
        other => {
            problems.push(Problem::new(
                format!("{at}.op"),
                format!(
                    "unknown operator {other:?}; use one of eq, neq, in, not_in, lt, lte, gt, gte, regex, contains, exists"
                ),
            ));
            return None;
        }
    })
}

/// A condition as both PolicyLayer formats write it.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileCondition {
    path: String,
    op: String,
    #[serde(default)]
    value: Option<Value>,
}

fn convert_condition(at: &str, c: FileCondition, problems: &mut Vec<Problem>) -> Option<Condition> {
    let op = parse_op(at, &c.op, problems)?;
    Some(Condition {
        path: c.path,
        op,
        value: c.value,
    })
}

fn parse_window(at: &str, w: &str, problems: &mut Vec<Problem>) -> Option<Window> {
    let window = Window::parse(w);
    if window.is_none() {
        problems.push(Problem::new(
            at,
            format!("window must be \"minute\", \"hour\" or \"day\", got {w:?}"),
        ));
    }
    window
}

fn check_version(v: &Option<String>, problems: &mut Vec<Problem>) {
    if v.as_deref() != Some("1") {
        problems.push(Problem::new(
            "version",
            format!(
                "version must be \"1\", got {:?}",
                v.as_deref().unwrap_or("")
            ),
        ));
    }
}

fn parse_default(d: Option<&str>, problems: &mut Vec<Problem>) -> Option<DefaultAction> {
    match d {
        Some("allow") => Some(DefaultAction::Allow),
        Some("deny") => Some(DefaultAction::Deny),
        Some(other) => {
            problems.push(Problem::new(
                "default",
                format!("default must be \"allow\" or \"deny\", got {other:?}"),
            ));
            None
        }
        None => None,
    }
}

/// PolicyLayer Intercept's YAML (`POLICY.md` of PolicyLayer/Intercept).
mod intercept {
    use super::*;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct File {
        version: Option<String>,
        #[serde(default)]
        #[allow(dead_code)]
        description: Option<String>,
        default: Option<String>,
        #[serde(default)]
        hide: Vec<String>,
        #[serde(default)]
        tools: BTreeMap<String, Tool>,
    }

    #[derive(Deserialize, Debug, Default)]
    #[serde(deny_unknown_fields)]
    struct Tool {
        #[serde(default)]
        rules: Vec<FileRule>,
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct FileRule {
        #[serde(default)]
        name: String,
        #[serde(default)]
        action: Option<String>,
        #[serde(default)]
        rate_limit: Option<String>,
        #[serde(default)]
        conditions: Vec<FileCondition>,
        #[serde(default)]
        on_deny: Option<String>,
        #[serde(default)]
        state: Option<State>,
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct State {
        counter: String,
        window: String,
        #[serde(default)]
        increment: Option<u64>,
        #[serde(default)]
        increment_from: Option<String>,
    }

    /// Converts with Intercept's meaning: `default` absent is allow; `"*"` rules apply to every
    /// call and count under `_global`; a `state` block plus an `lte`/`lt` condition on its own
    /// counter is a limit reserved before the call and rolled back if the call fails.
    pub(super) fn convert(doc: Value) -> Result<Converted, Problems> {
        let file: File = from_value(doc)?;
        let mut problems = Vec::new();
        let mut origins = Origins::default();
        check_version(&file.version, &mut problems);
        let default =
            parse_default(file.default.as_deref(), &mut problems).unwrap_or(DefaultAction::Allow);
        let mut seen = std::collections::HashSet::new();
        for (i, h) in file.hide.iter().enumerate() {
            if !h.is_empty() && !seen.insert(h) {
                problems.push(Problem::new(
                    format!("hide[{i}]"),
                    format!("duplicate entry {h:?}; remove it"),
                ));
            }
        }
        let mut tools = BTreeMap::new();
        for (tool, def) in file.tools {
            let scope = counter_scope(&tool).to_string();
            let mut rules = Vec::new();
            for (i, r) in def.rules.into_iter().enumerate() {
                let at = format!("tools.{}.rules[{i}]", path_key(&tool));
                if let Some((rule, conditions)) = convert_rule(&at, &scope, r, &mut problems) {
                    origins.add(
                        &tool,
                        rules.len(),
                        RuleOrigin {
                            at,
                            conditions,
                            fields: FIELDS,
                        },
                    );
                    rules.push(rule);
                }
            }
            tools.insert(tool, ToolRules { rules });
        }
        Ok(Converted {
            spec: PolicySpec {
                default,
                hide: file.hide,
                tools,
                ..Default::default()
            },
            problems,
            origins,
            words: &[
                ("rateLimit", "rate_limit"),
                ("incrementFrom", "increment_from"),
                ("onDeny", "on_deny"),
                ("notIn", "not_in"),
                (
                    "add a limit with counter:",
                    "add a state block with counter:",
                ),
            ],
        })
    }

    /// Tollgate's rule fields as Intercept spells them.
    const FIELDS: &[(&str, &str)] = &[
        ("limit.incrementFrom", "state.increment_from"),
        ("limit.increment", "state.increment"),
        ("limit.counter", "state.counter"),
        ("limit.window", "state.window"),
        ("limit.max", "conditions"),
        ("limit", "state"),
        ("rateLimit", "rate_limit"),
        ("onDeny", "on_deny"),
    ];

    /// One rule, and the file path of each condition it kept.
    fn convert_rule(
        at: &str,
        scope: &str,
        r: FileRule,
        problems: &mut Vec<Problem>,
    ) -> Option<(Rule, Vec<String>)> {
        if r.name.is_empty() {
            problems.push(Problem::new(format!("{at}.name"), "rule must have a name"));
        }
        let deny = match r.action.as_deref() {
            None | Some("") | Some("evaluate") => false,
            Some("deny") => true,
            Some(other) => {
                problems.push(Problem::new(
                    format!("{at}.action"),
                    format!("action must be \"evaluate\" or \"deny\", got {other:?}"),
                ));
                return None;
            }
        };
        if deny {
            if !r.conditions.is_empty() {
                problems.push(Problem::new(
                    format!("{at}.conditions"),
                    "deny rules must not have conditions",
                ));
            }
            if r.rate_limit.is_some() {
                problems.push(Problem::new(
                    format!("{at}.rate_limit"),
                    "rate_limit cannot be used with action \"deny\"",
                ));
            }
            return Some((
                Rule {
                    name: r.name,
                    action: Some(Action::Deny),
                    on_deny: r.on_deny,
                    ..Default::default()
                },
                Vec::new(),
            ));
        }
        if let Some(rl) = r.rate_limit {
            if !r.conditions.is_empty() || r.state.is_some() {
                problems.push(Problem::new(
                    format!("{at}.rate_limit"),
                    "rate_limit cannot be combined with conditions or state",
                ));
            }
            return Some((
                Rule {
                    name: r.name,
                    rate_limit: Some(rl),
                    on_deny: r.on_deny,
                    ..Default::default()
                },
                Vec::new(),
            ));
        }
        if r.conditions.is_empty() {
            problems.push(Problem::new(
                format!("{at}.conditions"),
                "evaluate rules must have at least one condition",
            ));
        }
        let mut conditions = Vec::new();
        let mut limit = None;
        if let Some(state) = &r.state {
            if state.counter.is_empty() {
                problems.push(Problem::new(
                    format!("{at}.state.counter"),
                    "counter must not be empty",
                ));
            }
            let window = parse_window(&format!("{at}.state.window"), &state.window, problems);
            if let Some(from) = &state.increment_from
                && !from.starts_with("args.")
            {
                problems.push(Problem::new(
                    format!("{at}.state.increment_from"),
                    format!("increment_from must start with \"args.\", got {from:?}"),
                ));
            }
            if let Some(window) = window {
                limit = Some(Limit {
                    counter: state.counter.clone(),
                    window,
                    max: None,
                    increment: state
                        .increment_from
                        .is_none()
                        .then_some(state.increment.unwrap_or(1)),
                    increment_from: state.increment_from.clone(),
                    scope: Some(Scope::Global),
                });
            }
        }
        let own = r
            .state
            .as_ref()
            .map(|s| format!("state.{scope}.{}", s.counter));
        let mut kept = Vec::new();
        for (j, c) in r.conditions.into_iter().enumerate() {
            let cat = format!("{at}.conditions[{j}]");
            let Some(c) = convert_condition(&cat, c, problems) else {
                continue;
            };
            // `state.<tool>.<counter> lte N` on the rule's own counter is its limit.
            if let (Some(own), Some(limit)) = (&own, limit.as_mut())
                && c.path == *own
                && limit.max.is_none()
                && let Some(n) = c.value.as_ref().and_then(crate::decide::as_number)
                && matches!(c.op, Op::Lte | Op::Lt)
            {
                let max = if c.op == Op::Lt {
                    n.ceil() - 1.0
                } else {
                    n.floor()
                };
                if max >= 1.0 {
                    limit.max = Some(max as u64);
                    continue;
                }
            }
            conditions.push(c);
            kept.push(cat);
        }
        Some((
            Rule {
                name: r.name,
                conditions,
                limit,
                on_deny: r.on_deny,
                ..Default::default()
            },
            kept,
        ))
    }
}

/// PolicyLayer's hosted `policy.json`.
mod policylayer {
    use super::*;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct File {
        version: Option<String>,
        default: Option<String>,
        #[serde(default)]
        hide: Vec<String>,
        #[serde(default)]
        all_tools: Option<AllTools>,
        #[serde(default)]
        tools: BTreeMap<String, Tool>,
    }

    #[derive(Deserialize, Debug, Default)]
    #[serde(deny_unknown_fields)]
    struct AllTools {
        #[serde(default)]
        limits: Vec<FileLimit>,
    }

    #[derive(Deserialize, Debug, Default)]
    #[serde(deny_unknown_fields)]
    struct Tool {
        #[serde(default)]
        action: Option<String>,
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        require: Vec<FileCondition>,
        #[serde(default)]
        deny_if: Vec<FileCondition>,
        #[serde(default)]
        limits: Vec<FileLimit>,
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct FileLimit {
        counter: String,
        window: String,
        max: u64,
        #[serde(default)]
        scope: Option<String>,
        #[serde(default)]
        increment: Option<u64>,
        #[serde(default)]
        increment_from: Option<String>,
    }

    /// Converts with PolicyLayer's meaning: `default` is required; `action: deny` blocks with
    /// `reason`; `require` conditions must all hold; each `deny_if` condition that holds denies;
    /// `limits` (and `all_tools.limits`) are counters reserved on allowed calls.
    pub(super) fn convert(doc: Value) -> Result<Converted, Problems> {
        let file: File = from_value(doc)?;
        let mut problems = Vec::new();
        let mut origins = Origins::default();
        check_version(&file.version, &mut problems);
        let default = match file.default.as_deref() {
            None => {
                problems.push(Problem::new(
                    "default",
                    "is required in a PolicyLayer policy: \"allow\" or \"deny\"",
                ));
                DefaultAction::Deny
            }
            d => parse_default(d, &mut problems).unwrap_or(DefaultAction::Deny),
        };
        let mut tools = BTreeMap::new();
        if let Some(all) = file.all_tools {
            let mut rules = Vec::new();
            for (i, l) in all.limits.into_iter().enumerate() {
                let at = format!("all_tools.limits[{i}]");
                if let Some(r) = convert_limit(&at, l, &mut problems) {
                    origins.add("*", rules.len(), RuleOrigin::limit(at));
                    rules.push(r);
                }
            }
            tools.insert("*".to_string(), ToolRules { rules });
        }
        for (tool, def) in file.tools {
            let at = format!("tools.{}", path_key(&tool));
            let mut rules = Vec::new();
            let mut add = |rules: &mut Vec<Rule>, rule: Rule, origin: RuleOrigin| {
                origins.add(&tool, rules.len(), origin);
                rules.push(rule);
            };
            match def.action.as_deref() {
                None | Some("allow") => {}
                Some("deny") => add(
                    &mut rules,
                    Rule {
                        name: "deny".into(),
                        action: Some(Action::Deny),
                        on_deny: def.reason.clone(),
                        ..Default::default()
                    },
                    RuleOrigin::tool(&at, Vec::new()),
                ),
                Some(other) => problems.push(Problem::new(
                    format!("{at}.action"),
                    format!("action must be \"allow\" or \"deny\", got {other:?}"),
                )),
            }
            let mut require = Vec::new();
            let mut require_at = Vec::new();
            for (j, c) in def.require.into_iter().enumerate() {
                let cat = format!("{at}.require[{j}]");
                if let Some(c) = convert_condition(&cat, c, &mut problems) {
                    require.push(c);
                    require_at.push(cat);
                }
            }
            if !require.is_empty() {
                add(
                    &mut rules,
                    Rule {
                        name: "require".into(),
                        conditions: require,
                        on_deny: def.reason.clone(),
                        ..Default::default()
                    },
                    RuleOrigin::tool(&at, require_at),
                );
            }
            for (j, c) in def.deny_if.into_iter().enumerate() {
                let cat = format!("{at}.deny_if[{j}]");
                if let Some(c) = convert_condition(&cat, c, &mut problems) {
                    add(
                        &mut rules,
                        Rule {
                            name: format!("deny_if[{j}]"),
                            action: Some(Action::Deny),
                            conditions: vec![c],
                            on_deny: def.reason.clone(),
                            ..Default::default()
                        },
                        RuleOrigin::tool(&at, vec![cat]),
                    );
                }
            }
            for (j, l) in def.limits.into_iter().enumerate() {
                let lat = format!("{at}.limits[{j}]");
                if let Some(r) = convert_limit(&lat, l, &mut problems) {
                    add(&mut rules, r, RuleOrigin::limit(lat));
                }
            }
            tools.insert(tool, ToolRules { rules });
        }
        Ok(Converted {
            spec: PolicySpec {
                default,
                hide: file.hide,
                tools,
                ..Default::default()
            },
            problems,
            origins,
            words: &[
                ("incrementFrom", "increment_from"),
                ("notIn", "not_in"),
                ("rateLimit", "limits"),
            ],
        })
    }

    impl RuleOrigin {
        /// A rule made of a tool's own fields (`action`, `require`, `deny_if`).
        fn tool(at: &str, conditions: Vec<String>) -> Self {
            RuleOrigin {
                at: at.to_string(),
                conditions,
                fields: &[("onDeny", "reason")],
            }
        }

        /// A rule made of one entry of `limits`.
        fn limit(at: String) -> Self {
            RuleOrigin {
                at,
                conditions: Vec::new(),
                fields: &[
                    ("limit.incrementFrom", "increment_from"),
                    ("limit.increment", "increment"),
                    ("limit.counter", "counter"),
                    ("limit.window", "window"),
                    ("limit.max", "max"),
                    ("limit.scope", "scope"),
                    ("limit", ""),
                    ("name", "counter"),
                ],
            }
        }
    }

    fn convert_limit(at: &str, l: FileLimit, problems: &mut Vec<Problem>) -> Option<Rule> {
        let window = parse_window(&format!("{at}.window"), &l.window, problems)?;
        let scope = match l.scope.as_deref() {
            None | Some("global") => Scope::Global,
            Some("grant") => Scope::Grant,
            Some("identity") => Scope::Identity,
            Some("session") => Scope::Session,
            Some(other) => {
                problems.push(Problem::new(
                    format!("{at}.scope"),
                    format!("scope must be global, grant or session, got {other:?}"),
                ));
                return None;
            }
        };
        Some(Rule {
            name: l.counter.clone(),
            limit: Some(Limit {
                counter: l.counter.clone(),
                window,
                max: Some(l.max),
                increment: l.increment,
                increment_from: l.increment_from,
                scope: Some(scope),
            }),
            on_deny: Some(format!(
                "Limit {:?} of {} per {} reached. Try again later.",
                l.counter,
                l.max,
                window.as_str()
            )),
            ..Default::default()
        })
    }
}

/// Parses one YAML (or JSON) value; for tests and tools that build specs from text.
pub fn yaml_from_str<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_yaml::from_str(text).map_err(|e| e.to_string())
}
