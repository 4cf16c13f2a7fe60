//! A validated spec made ready to decide: rules, conditions and limits compiled once, so that
//! deciding a call allocates only the counter keys it reserves.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use foldhash::fast::RandomState;
use regex::Regex;
use serde_json::Value;

use super::glob::{Glob, path_matches};
use super::types::{
    CounterName, DEFAULT_APPROVAL_TIMEOUT, DEFAULT_APPROVAL_VALID_FOR, Denial, Identity,
};
use crate::problem::{Problem, Problems};
use crate::resources::{Action, DefaultAction, DenyAs, Mode, Op, PinMode, PolicySpec, Scope};
use crate::validate::{self, counter_scope, parse_rate_limit, rate_limit_counter};

/// Every policy in force on one workload, compiled.
#[derive(Clone, Debug)]
pub struct PolicySet {
    /// Where this set came from: a file's revision or the operator's stream revision.
    pub revision: u64,
    /// The cluster-wide (or standalone) default for tools nothing lists.
    pub default_action: DefaultAction,
    /// The decision for a caller no policy of the set governs; `None`: the default's, as for
    /// a tool no policy lists.
    pub ungoverned: Option<DefaultAction>,
    pub policies: Vec<CompiledPolicy>,
    /// The policies' pinning, merged (`None` when no policy pins).
    pub pinning: Option<PinRules>,
}

/// The pinning in force on a workload, from every policy of its set: the strictest mode, trust
/// on first use if any policy asks for it, and every pin (a definition must match each pin of
/// its tool).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PinRules {
    pub mode: PinMode,
    pub trust_on_first_use: bool,
    pub pins: std::collections::BTreeMap<String, Vec<String>>,
}

impl PinRules {
    fn of<'a>(specs: impl IntoIterator<Item = &'a PolicySpec>) -> Option<PinRules> {
        let mut merged: Option<PinRules> = None;
        for p in specs.into_iter().filter_map(|s| s.pinning.as_ref()) {
            let m = merged.get_or_insert_with(|| PinRules {
                mode: PinMode::Off,
                ..Default::default()
            });
            m.mode = m.mode.max(p.mode);
            m.trust_on_first_use |= p.trust_on_first_use;
            for (tool, pin) in &p.tools {
                let pins = m.pins.entry(tool.clone()).or_default();
                if !pins.contains(pin) {
                    pins.push(pin.clone());
                }
            }
        }
        merged.filter(|m| m.mode != PinMode::Off)
    }
}

impl PolicySet {
    /// Compiles named specs; every problem of every policy is returned at once.
    pub fn compile<'a>(
        revision: u64,
        default_action: DefaultAction,
        specs: impl IntoIterator<Item = (&'a str, &'a PolicySpec)>,
    ) -> Result<PolicySet, Problems> {
        let mut policies = Vec::new();
        let mut problems = Vec::new();
        let mut pinning = Vec::new();
        for (name, spec) in specs {
            pinning.push(spec);
            match CompiledPolicy::compile(name, spec) {
                Ok(p) => policies.push(p),
                Err(Problems(ps)) => problems.extend(ps.into_iter().map(|p| Problem {
                    path: format!("{name}: {}", p.path),
                    message: p.message,
                })),
            }
        }
        if problems.is_empty() {
            Ok(PolicySet {
                revision,
                default_action,
                ungoverned: None,
                policies,
                pinning: PinRules::of(pinning),
            })
        } else {
            Err(Problems(problems))
        }
    }

    /// Whether a policy of the set names `path` as one whose request bodies are not MCP.
    pub fn passes_through(&self, path: &str) -> bool {
        self.policies.iter().any(|p| {
            p.passthrough_paths
                .iter()
                .any(|pat| path_matches(pat, path))
        })
    }

    /// A set that denies everything: what the sidecar enforces before any policy loads.
    pub fn deny_all(reason: &str) -> PolicySet {
        let spec = PolicySpec {
            hide: vec!["*".into()],
            ..Default::default()
        };
        let mut p = CompiledPolicy::compile("(no policy loaded)", &spec).expect("static policy");
        p.hidden_reason = Some(reason.to_string());
        PolicySet {
            revision: 0,
            default_action: DefaultAction::Deny,
            ungoverned: None,
            policies: vec![p],
            pinning: None,
        }
    }

    /// Whether any policy names entries of a kind (`resource:` for `resources/read` by URI,
    /// `prompt:` for `prompts/get` by name): only then are calls of that kind decided.
    pub fn names(&self, prefix: &str) -> bool {
        self.policies.iter().any(|p| p.prefixes.contains(&prefix))
    }

    /// The counters named `counter` of the entry counted as `entry` (`_global` for `"*"`), in
    /// every policy of the set: what a policy test's expectation of a counter reads.
    pub fn counters_named(&self, entry: &str, counter: &str) -> Vec<&CounterName> {
        let key = (entry.to_string(), counter.to_string());
        self.policies
            .iter()
            .filter_map(|p| p.counters.get(&key))
            .collect()
    }

    /// The argument paths the audit log keeps of this caller's calls: every path a policy
    /// governing it names (`spec.audit.arguments`).
    pub fn audited_arguments(&self, who: &Identity) -> Vec<String> {
        let mut paths: Vec<String> = self
            .policies
            .iter()
            .filter(|p| !p.audit_arguments.is_empty() && p.governs(who))
            .flat_map(|p| p.audit_arguments.iter().cloned())
            .collect();
        paths.sort();
        paths.dedup();
        paths
    }

    /// Whether any policy asks the audit log to keep arguments.
    pub fn audits_arguments(&self) -> bool {
        self.policies.iter().any(|p| !p.audit_arguments.is_empty())
    }

    /// What deciding a call of `tool` may read that a call's audit line does not always hold:
    /// the argument paths of its conditions and counted amounts, its callers' claims
    /// (`identity.claims.*`, and subjects by claim), and the tool's pinned annotations
    /// (`tool.annotations`, where a policy selects by them).
    pub fn reads(&self, tool: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.selects_by_annotation() {
            // The tool's pinned annotations, which no audit line holds.
            out.push("tool.annotations".to_string());
        }
        for p in &self.policies {
            if p.subjects.iter().any(|s| s.claim.is_some()) {
                out.push("identity.claims".to_string());
            }
            p.for_each_entry(tool, None, |entry, _| {
                for rule in &entry.rules {
                    for c in &rule.conditions {
                        if matches!(c.source, Source::Args(_) | Source::Identity(_))
                            && !c.path.starts_with("identity.sub")
                            && !c.path.starts_with("identity.serviceAccount")
                        {
                            out.push(c.path.clone());
                        }
                    }
                    if let Some((_, limit)) = &rule.limit
                        && let Amount::From { path, .. } = &limit.amount
                    {
                        out.push(path.clone());
                    }
                }
            });
        }
        out.sort();
        out.dedup();
        out
    }

    /// Whether any policy selects tools by their pinned annotations (`spec.annotated`): then
    /// a tool's visibility depends on its definition, not its name alone.
    pub fn selects_by_annotation(&self) -> bool {
        self.policies.iter().any(|p| !p.annotated.is_empty())
    }

    /// Whether any policy could list tools differently for different callers.
    pub fn varies_by_caller(&self) -> bool {
        self.policies.iter().any(|p| !p.subjects.is_empty())
    }
}

/// One policy, ready to decide calls.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    pub name: Arc<str>,
    pub default: DefaultAction,
    pub mode: Mode,
    pub deny_as: DenyAs,
    pub(super) hide: Vec<Glob>,
    pub(super) hidden_reason: Option<String>,
    pub(super) subjects: Vec<crate::resources::Subject>,
    pub(super) exact: HashMap<String, CompiledEntry, RandomState>,
    pub(super) globs: Vec<(Glob, CompiledEntry)>,
    pub(super) wildcard: Option<CompiledEntry>,
    /// `spec.annotated`: the hints each entry selects, and its rules.
    pub(super) annotated: Vec<(Vec<(String, bool)>, CompiledEntry)>,
    /// `(entry, counter)` -> the counter, for `state.` conditions.
    pub(super) counters: HashMap<(String, String), CounterName, RandomState>,
    /// The kinds of non-tool entries the policy names (`resource:`, `prompt:`).
    pub(super) prefixes: Vec<&'static str>,
    /// Paths whose request bodies are not MCP.
    pub(super) passthrough_paths: Vec<String>,
    /// Argument paths the audit log keeps (`spec.audit.arguments`).
    pub(super) audit_arguments: Vec<String>,
}

/// Entry-name prefixes for what is decided besides tools.
pub const KIND_PREFIXES: [&str; 2] = ["resource:", "prompt:"];

#[derive(Clone, Debug)]
pub(super) struct CompiledEntry {
    pub(super) rules: Vec<CompiledRule>,
}

#[derive(Clone, Debug)]
pub(super) struct CompiledRule {
    pub(super) name: String,
    pub(super) action: Action,
    pub(super) conditions: Vec<CompiledCondition>,
    /// The counter's name as the rule states it, and the limit.
    pub(super) limit: Option<(String, CompiledLimit)>,
    pub(super) on_deny: Option<String>,
    pub(super) approval_timeout: Duration,
    pub(super) approval_valid_for: Duration,
    pub(super) approval_show: Vec<String>,
}

#[derive(Clone, Debug)]
pub(super) struct CompiledCondition {
    pub(super) path: String,
    pub(super) source: Source,
    pub(super) op: Op,
    pub(super) value: Value,
    pub(super) regex: Option<Regex>,
}

#[derive(Clone, Debug)]
pub(super) enum Source {
    Args(Vec<String>),
    Identity(Vec<String>),
    State { scope: String, counter: String },
}

#[derive(Clone, Debug)]
pub(super) struct CompiledLimit {
    pub(super) name: CounterName,
    pub(super) on_full: Arc<Denial>,
    pub(super) max: Option<u64>,
    pub(super) amount: Amount,
}

#[derive(Clone, Debug)]
pub(super) enum Amount {
    Fixed(u64),
    From { path: String, segments: Vec<String> },
}

impl CompiledPolicy {
    /// Validates and compiles one spec.
    pub fn compile(name: &str, spec: &PolicySpec) -> Result<CompiledPolicy, Problems> {
        let problems = validate::validate_stored(spec);
        if !problems.is_empty() {
            return Err(Problems(problems));
        }
        let mut counters = HashMap::default();
        let mut exact = HashMap::default();
        let mut globs = Vec::new();
        let mut wildcard = None;
        for (key, tool) in &spec.tools {
            let scope = counter_scope(key).to_string();
            let mut rules = Vec::with_capacity(tool.rules.len());
            for (i, rule) in tool.rules.iter().enumerate() {
                let compiled = compile_rule(name, spec, &scope, i, rule);
                if let Some((counter, l)) = &compiled.limit {
                    counters.insert((scope.clone(), counter.clone()), l.name.clone());
                }
                rules.push(compiled);
            }
            let entry = CompiledEntry { rules };
            if key == "*" {
                wildcard = Some(entry);
            } else if Glob::is_glob(key) {
                globs.push((Glob::new(key), entry));
            } else {
                exact.insert(key.clone(), entry);
            }
        }
        let mut annotated = Vec::with_capacity(spec.annotated.len());
        for (n, entry) in spec.annotated.iter().enumerate() {
            let scope = validate::annotated_scope(n);
            let mut rules = Vec::with_capacity(entry.rules.len());
            for (i, rule) in entry.rules.iter().enumerate() {
                let compiled = compile_rule(name, spec, &scope, i, rule);
                if let Some((counter, l)) = &compiled.limit {
                    counters.insert((scope.clone(), counter.clone()), l.name.clone());
                }
                rules.push(compiled);
            }
            let selects = entry
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            annotated.push((selects, CompiledEntry { rules }));
        }
        Ok(CompiledPolicy {
            name: name.into(),
            default: spec.default,
            mode: spec.mode,
            deny_as: spec.deny_as.unwrap_or_default(),
            prefixes: KIND_PREFIXES
                .into_iter()
                .filter(|k| {
                    spec.tools
                        .keys()
                        .chain(&spec.hide)
                        .any(|name| name.starts_with(k))
                })
                .collect(),
            hide: spec.hide.iter().map(|h| Glob::new(h)).collect(),
            hidden_reason: None,
            subjects: spec.subjects.clone(),
            exact,
            globs,
            wildcard,
            annotated,
            counters,
            passthrough_paths: spec.passthrough_paths.clone(),
            audit_arguments: spec
                .audit
                .as_ref()
                .map(|a| a.arguments.clone())
                .unwrap_or_default(),
        })
    }

    /// How many tool entries the policy lists (the status' TOOLS column).
    pub fn tool_count(&self) -> usize {
        self.exact.len() + self.globs.len() + usize::from(self.wildcard.is_some())
    }
}

fn compile_rule(
    policy: &str,
    spec: &PolicySpec,
    scope: &str,
    i: usize,
    rule: &crate::resources::Rule,
) -> CompiledRule {
    let deny_as = spec.deny_as.unwrap_or_default();
    let name = if rule.name.is_empty() {
        format!("rules[{i}]")
    } else {
        rule.name.clone()
    };
    let on_deny = rule.on_deny.clone().or_else(|| {
        rule.rate_limit.as_deref().and_then(|rl| {
            let (max, window) = parse_rate_limit(rl).ok()?;
            Some(format!(
                "Rate limit of {max} per {} reached. Try again later.",
                window.as_str()
            ))
        })
    });
    // (counter, window, max, amount, scope) as the rule states them.
    let stated = if let Some(l) = &rule.limit {
        let amount = match &l.increment_from {
            Some(path) => Amount::From {
                path: path.clone(),
                segments: segments(path, "args"),
            },
            None => Amount::Fixed(l.increment.unwrap_or(1)),
        };
        Some((
            l.counter.clone(),
            l.window,
            l.max,
            amount,
            l.scope.unwrap_or_default(),
        ))
    } else if let Some(rl) = &rule.rate_limit {
        let (max, window) = parse_rate_limit(rl).expect("validated");
        let counter = rate_limit_counter(window.as_str());
        Some((counter, window, Some(max), Amount::Fixed(1), Scope::Global))
    } else {
        None
    };
    let limit = stated.map(|(counter, window, max, amount, how)| {
        let on_full = Arc::new(Denial {
            policy: policy.to_string(),
            rule: name.clone(),
            reason: on_deny.clone().unwrap_or_else(|| {
                format!(
                    "Limit {counter:?} of {} per {} reached. Try again later.",
                    max.unwrap_or(u64::MAX),
                    window.as_str()
                )
            }),
            deny_as,
        });
        let limit = CompiledLimit {
            name: CounterName::new(
                policy,
                scope,
                &counter,
                how,
                window,
                spec.counters_unavailable,
            ),
            on_full,
            max,
            amount,
        };
        (counter, limit)
    });
    CompiledRule {
        name,
        action: rule.action.unwrap_or_default(),
        conditions: rule.conditions.iter().map(compile_condition).collect(),
        limit,
        on_deny,
        approval_timeout: rule
            .approval
            .as_ref()
            .and_then(|a| a.timeout.as_deref())
            .and_then(validate::parse_duration)
            .unwrap_or(DEFAULT_APPROVAL_TIMEOUT),
        approval_valid_for: rule
            .approval
            .as_ref()
            .and_then(|a| a.valid_for.as_deref())
            .and_then(validate::parse_duration)
            .unwrap_or(DEFAULT_APPROVAL_VALID_FOR),
        approval_show: rule
            .approval
            .as_ref()
            .map(|a| a.show.clone())
            .unwrap_or_default(),
    }
}

fn compile_condition(c: &crate::resources::Condition) -> CompiledCondition {
    let source = if let Some(rest) = c.path.strip_prefix("state.") {
        let (scope, counter) = rest.split_once('.').expect("validated");
        Source::State {
            scope: scope.into(),
            counter: counter.into(),
        }
    } else if c.path.starts_with("identity.") {
        Source::Identity(segments(&c.path, "identity"))
    } else {
        Source::Args(segments(&c.path, "args"))
    };
    let value = match (c.op, &c.value) {
        (Op::Exists, None) => Value::Bool(true),
        (_, v) => v.clone().unwrap_or(Value::Null),
    };
    let regex = (c.op == Op::Regex).then(|| {
        regex::RegexBuilder::new(value.as_str().expect("validated"))
            .size_limit(validate::REGEX_SIZE_LIMIT)
            .build()
            .expect("validated")
    });
    CompiledCondition {
        path: c.path.clone(),
        source,
        op: c.op,
        value,
        regex,
    }
}

fn segments(path: &str, root: &str) -> Vec<String> {
    path[root.len() + 1..]
        .split('.')
        .map(str::to_string)
        .collect()
}
