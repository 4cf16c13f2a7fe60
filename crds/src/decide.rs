//! The one function that decides a call.
//!
//! ```text
//! EffectivePolicy ── compile ──> PolicySet { default, [CompiledPolicy] }
//! PolicySet.decide(Call { tool, args, session }, Identity, Counters) -> Verdict
//!     applicable = policies whose subjects govern the caller
//!     hidden by any            -> Deny (hidden)
//!     a deny rule applies, a condition fails, a counter is full -> Deny (that rule)
//!     an approve rule applies  -> Approve
//!     listed by name or glob   -> Allow { reservations }
//!     else any default (or the cluster default) is deny -> Deny (default), else Allow
//! ```
//!
//! Policies in `audit` mode are evaluated as well, but only to report what they would have
//! denied ([`Verdict::audit`]). `tools/list` filtering is the same evaluation with the
//! arguments unknown ([`PolicySet::visible`]): a tool is listed unless it could never be called.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use foldhash::fast::RandomState;
use regex::Regex;
use serde::Serialize;
use serde_json::Value;

use crate::problem::{Problem, Problems};
use crate::resources::{Action, DefaultAction, DenyAs, Mode, Op, PolicySpec, Scope, Window};
use crate::validate::{self, counter_scope, parse_rate_limit, rate_limit_counter};

/// How long an `approve` rule holds a call when the policy does not say.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(300);

/// Who is calling, as the sidecar established it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Identity {
    /// The verified token's `sub`, if any.
    pub subject: Option<String>,
    /// `NAMESPACE/NAME` for a Kubernetes service account token.
    pub service_account: Option<String>,
    /// The verified token's claims.
    pub claims: serde_json::Map<String, Value>,
}

impl Identity {
    /// A caller that presented no token.
    pub fn anonymous() -> Self {
        Identity::default()
    }

    /// A caller known by subject only (the `check` command's `--identity`).
    pub fn subject(sub: impl Into<String>) -> Self {
        let sub = sub.into();
        let service_account = sub
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
            .map(|(ns, name)| format!("{ns}/{name}"));
        Identity {
            subject: Some(sub),
            service_account,
            claims: Default::default(),
        }
    }

    /// The key `scope: identity` counts under.
    pub fn key(&self) -> &str {
        self.subject.as_deref().unwrap_or("anonymous")
    }
}

/// One call to decide. `args: None` asks whether the tool could be called at all (listing).
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    pub tool: &'a str,
    pub args: Option<&'a Value>,
    pub session: Option<&'a str>,
}

impl<'a> Call<'a> {
    pub fn new(tool: &'a str, args: &'a Value) -> Self {
        Call {
            tool,
            args: Some(args),
            session: None,
        }
    }
}

/// Reads counters' current values; the sidecar's store implements it, the `check` command
/// uses [`NoCounters`].
pub trait Counters {
    /// The value of `key` in the current `window`.
    fn current(&self, key: &CounterKey, window: Window) -> u64;
}

/// Every counter at zero.
pub struct NoCounters;

impl Counters for NoCounters {
    fn current(&self, _: &CounterKey, _: Window) -> u64 {
        0
    }
}

/// Identifies one counter: policy, tool entry, counter name and scope (`g`, `i:<who>`,
/// `s:<session>`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CounterKey(pub Arc<str>);

impl CounterKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What an allowed call adds to a counter.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    pub key: CounterKey,
    pub window: Window,
    pub amount: u64,
    /// `None`: the counter only counts.
    pub max: Option<u64>,
    /// The denial to give if the counter turns out full when reserving (built once, at compile).
    pub on_full: Arc<Denial>,
}

/// Why a call is refused.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Denial {
    /// The policy that refused, e.g. `mcppolicy/team-a/github`.
    pub policy: String,
    /// The rule that refused, or `(hidden)` / `(default deny)`.
    pub rule: String,
    /// What the agent is told.
    pub reason: String,
    #[serde(skip)]
    pub deny_as: DenyAs,
}

/// The outcome for one call.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "decision", rename_all = "camelCase")]
pub enum Decision {
    Allow {
        reservations: Vec<Reservation>,
    },
    Deny(Denial),
    /// Hold for a person; reserve when it is approved.
    Approve {
        policy: String,
        rule: String,
        #[serde(with = "duration_secs")]
        timeout: Duration,
        reservations: Vec<Reservation>,
    },
}

mod duration_secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// The decision plus what audit-mode policies would have refused.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub decision: Decision,
    /// Set when a policy in audit mode would have denied a call that is let through.
    pub audit: Option<Denial>,
}

/// Every policy in force on one workload, compiled.
#[derive(Clone, Debug)]
pub struct PolicySet {
    /// Where this set came from: a file's revision or the operator's stream revision.
    pub revision: u64,
    /// The cluster-wide (or standalone) default for tools nothing lists.
    pub default_action: DefaultAction,
    pub policies: Vec<CompiledPolicy>,
    /// `visible()` answers by tool name, when no policy depends on the caller.
    visible_memo: Arc<RwLock<HashMap<String, bool, RandomState>>>,
}

/// [`PolicySet::visible`] for many tools: see [`PolicySet::visibility`]. Answers decided
/// rather than remembered join the memo when it is dropped. It holds the memo's read lock, so
/// a thread holds one at a time and drops it before asking [`PolicySet::visible`].
pub struct Visibility<'s> {
    set: &'s PolicySet,
    who: &'s Identity,
    /// `None` when answers depend on the caller (or the lock was poisoned): nothing is
    /// remembered.
    memo: Option<RwLockReadGuard<'s, HashMap<String, bool, RandomState>>>,
    learned: Vec<(String, bool)>,
}

impl Visibility<'_> {
    pub fn visible(&mut self, tool: &str) -> bool {
        let Some(memo) = &self.memo else {
            return self.set.decide_visible(tool, self.who);
        };
        if let Some(&v) = memo.get(tool) {
            return v;
        }
        let v = self.set.decide_visible(tool, self.who);
        self.learned.push((tool.to_string(), v));
        v
    }
}

impl Drop for Visibility<'_> {
    fn drop(&mut self) {
        // The read lock goes first: the write lock below would wait for it forever.
        let Some(read) = self.memo.take() else { return };
        drop(read);
        if self.learned.is_empty() {
            return;
        }
        if let Ok(mut memo) = self.set.visible_memo.write() {
            for (tool, v) in self.learned.drain(..) {
                if memo.len() >= VISIBLE_MEMO_LIMIT {
                    break;
                }
                memo.insert(tool, v);
            }
        }
    }
}

/// Tool names remembered by `visible()`; past this the memo stops growing.
const VISIBLE_MEMO_LIMIT: usize = 16_384;

impl PolicySet {
    /// Compiles named specs; every problem of every policy is returned at once.
    pub fn compile<'a>(
        revision: u64,
        default_action: DefaultAction,
        specs: impl IntoIterator<Item = (&'a str, &'a PolicySpec)>,
    ) -> Result<PolicySet, Problems> {
        let mut policies = Vec::new();
        let mut problems = Vec::new();
        for (name, spec) in specs {
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
                policies,
                visible_memo: Arc::default(),
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
            policies: vec![p],
            visible_memo: Arc::default(),
        }
    }

    /// Decides one call.
    pub fn decide(&self, call: &Call<'_>, who: &Identity, counters: &dyn Counters) -> Verdict {
        let any_audit = self
            .policies
            .iter()
            .any(|p| p.mode == Mode::Audit && p.governs(who));
        let enforced = self
            .policies
            .iter()
            .filter(|p| p.mode == Mode::Enforce && p.governs(who));
        let decision = self.evaluate(enforced, call, who, counters);
        let audit = if any_audit && !matches!(decision, Decision::Deny(_)) {
            let all = self.policies.iter().filter(|p| p.governs(who));
            match self.evaluate(all, call, who, counters) {
                Decision::Deny(d) => Some(d),
                _ => None,
            }
        } else {
            None
        };
        Verdict { decision, audit }
    }

    /// Whether `tools/list` shows this tool to this caller: not hidden, not refused whatever
    /// the arguments. Audit-mode policies hide nothing.
    pub fn visible(&self, tool: &str, who: &Identity) -> bool {
        self.visibility(who).visible(tool)
    }

    /// Answers [`PolicySet::visible`] for the tools of one list, reading the memo under one
    /// lock rather than one per tool (its reader count is a cache line both workers write).
    pub fn visibility<'s>(&'s self, who: &'s Identity) -> Visibility<'s> {
        let memo = match self.varies_by_caller() {
            true => None,
            false => self.visible_memo.read().ok(),
        };
        Visibility {
            set: self,
            who,
            memo,
            learned: Vec::new(),
        }
    }

    fn decide_visible(&self, tool: &str, who: &Identity) -> bool {
        let call = Call {
            tool,
            args: None,
            session: None,
        };
        !matches!(
            self.decide(&call, who, &NoCounters).decision,
            Decision::Deny(_)
        )
    }

    /// Whether any policy names entries of a kind (`resource:` for `resources/read` by URI,
    /// `prompt:` for `prompts/get` by name): only then are calls of that kind decided.
    pub fn names(&self, prefix: &str) -> bool {
        self.policies.iter().any(|p| p.prefixes.contains(&prefix))
    }

    /// Whether any policy could list tools differently for different callers.
    pub fn varies_by_caller(&self) -> bool {
        self.policies.iter().any(|p| !p.subjects.is_empty())
    }

    fn evaluate<'p>(
        &self,
        policies: impl Iterator<Item = &'p CompiledPolicy> + Clone,
        call: &Call<'_>,
        who: &Identity,
        counters: &dyn Counters,
    ) -> Decision {
        for p in policies.clone() {
            if let Some(denial) = p.hides(call.tool) {
                return Decision::Deny(denial);
            }
        }
        let mut listed = false;
        let mut approve: Option<(&CompiledPolicy, &CompiledRule)> = None;
        let mut reservations = Vec::new();
        let mut default_deny: Option<&CompiledPolicy> = None;
        let mut first: Option<&CompiledPolicy> = None;
        for p in policies {
            first.get_or_insert(p);
            if p.default == DefaultAction::Deny && default_deny.is_none() {
                default_deny = Some(p);
            }
            let mut outcome = Ok(());
            p.for_each_entry(call.tool, |entry, is_listing| {
                listed |= is_listing;
                if outcome.is_err() {
                    return;
                }
                for rule in &entry.rules {
                    match rule.check(p, call, who, counters) {
                        RuleOutcome::Pass => {}
                        RuleOutcome::Reserve(r) => reservations.push(r),
                        RuleOutcome::Approve => {
                            approve.get_or_insert((p, rule));
                        }
                        RuleOutcome::Deny(d) => {
                            outcome = Err(d);
                            return;
                        }
                    }
                }
            });
            if let Err(denial) = outcome {
                return Decision::Deny(denial);
            }
        }
        if let Some((p, rule)) = approve {
            return Decision::Approve {
                policy: p.name.to_string(),
                rule: rule.name.clone(),
                timeout: rule.approval_timeout,
                reservations,
            };
        }
        if listed {
            return Decision::Allow { reservations };
        }
        let default_from = default_deny
            .map(|p| (p.name.to_string(), p.deny_as))
            .or((self.default_action == DefaultAction::Deny).then(|| {
                (
                    "(cluster default)".to_string(),
                    first.map(|p| p.deny_as).unwrap_or_default(),
                )
            }));
        match default_from {
            Some((policy, deny_as)) => Decision::Deny(Denial {
                policy,
                rule: "(default deny)".into(),
                reason: format!(
                    "Tool {:?} is not permitted by policy: no policy lists it and the default is deny",
                    call.tool
                ),
                deny_as,
            }),
            None => Decision::Allow { reservations },
        }
    }
}

/// One policy, ready to decide calls.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    pub name: Arc<str>,
    pub default: DefaultAction,
    pub mode: Mode,
    pub deny_as: DenyAs,
    hide: Vec<Glob>,
    hidden_reason: Option<String>,
    subjects: Vec<crate::resources::Subject>,
    exact: HashMap<String, CompiledEntry, RandomState>,
    globs: Vec<(Glob, CompiledEntry)>,
    wildcard: Option<CompiledEntry>,
    /// `(entry scope, counter)` -> how it is counted, for `state.` conditions.
    counters: HashMap<(String, String), (Window, Scope), RandomState>,
    /// The kinds of non-tool entries the policy names (`resource:`, `prompt:`).
    prefixes: Vec<&'static str>,
    /// Paths whose request bodies are not MCP.
    passthrough_paths: Vec<String>,
}

/// Entry-name prefixes for what is decided besides tools.
pub const KIND_PREFIXES: [&str; 2] = ["resource:", "prompt:"];

#[derive(Clone, Debug)]
struct CompiledEntry {
    rules: Vec<CompiledRule>,
}

#[derive(Clone, Debug)]
struct CompiledRule {
    name: String,
    action: Action,
    conditions: Vec<CompiledCondition>,
    limit: Option<CompiledLimit>,
    on_deny: Option<String>,
    approval_timeout: Duration,
}

#[derive(Clone, Debug)]
struct CompiledCondition {
    path: String,
    source: Source,
    op: Op,
    value: Value,
    regex: Option<Regex>,
}

#[derive(Clone, Debug)]
enum Source {
    Args(Vec<String>),
    Identity(Vec<String>),
    State { scope: String, counter: String },
}

#[derive(Clone, Debug)]
struct CompiledLimit {
    /// `policy|entry|counter|`: the key without its scope.
    key_prefix: Arc<str>,
    /// The whole key for `scope: global`, shared by every call.
    global_key: CounterKey,
    on_full: Arc<Denial>,
    counter: String,
    window: Window,
    max: Option<u64>,
    amount: Amount,
    scope: Scope,
}

#[derive(Clone, Debug)]
enum Amount {
    Fixed(u64),
    From { path: String, segments: Vec<String> },
}

enum RuleOutcome {
    Pass,
    Reserve(Reservation),
    Approve,
    Deny(Denial),
}

impl CompiledPolicy {
    /// Validates and compiles one spec.
    pub fn compile(name: &str, spec: &PolicySpec) -> Result<CompiledPolicy, Problems> {
        let problems = validate::validate_spec(spec);
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
                let compiled =
                    compile_rule(name, spec.deny_as.unwrap_or_default(), &scope, i, rule);
                if let Some(l) = &compiled.limit {
                    counters.insert((scope.clone(), l.counter.clone()), (l.window, l.scope));
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
            counters,
            passthrough_paths: spec.passthrough_paths.clone(),
        })
    }

    /// Whether this policy governs the caller.
    pub fn governs(&self, who: &Identity) -> bool {
        self.subjects.is_empty()
            || self.subjects.iter().any(|s| {
                if let Some(sa) = &s.service_account {
                    let Some(theirs) = &who.service_account else {
                        return false;
                    };
                    return match sa.strip_suffix("/*") {
                        Some(ns) => theirs.split_once('/').is_some_and(|(n, _)| n == ns),
                        None => sa == theirs,
                    };
                }
                if let Some(c) = &s.claim {
                    return match who.claims.get(&c.name) {
                        Some(Value::String(v)) => *v == c.value,
                        Some(Value::Array(vs)) => vs.iter().any(|v| v.as_str() == Some(&c.value)),
                        Some(other) => scalar_text(other).is_some_and(|t| t == c.value),
                        None => false,
                    };
                }
                if let Some(sub) = &s.subject {
                    return who.subject.as_deref() == Some(sub.as_str());
                }
                false
            })
    }

    fn hides(&self, tool: &str) -> Option<Denial> {
        self.hide.iter().any(|g| g.matches(tool)).then(|| Denial {
            policy: self.name.to_string(),
            rule: "(hidden)".into(),
            reason: self
                .hidden_reason
                .clone()
                .unwrap_or_else(|| format!("Tool {tool:?} is hidden by policy")),
            deny_as: self.deny_as,
        })
    }

    /// Calls `f` with every entry whose rules apply to `tool`, and whether the entry lists it.
    fn for_each_entry<'s>(&'s self, tool: &str, mut f: impl FnMut(&'s CompiledEntry, bool)) {
        if let Some(e) = self.exact.get(tool) {
            f(e, true);
        }
        for (g, e) in &self.globs {
            if g.matches(tool) {
                f(e, true);
            }
        }
        if let Some(e) = &self.wildcard {
            f(e, false);
        }
    }

    /// How many tool entries the policy lists (the status' TOOLS column).
    pub fn tool_count(&self) -> usize {
        self.exact.len() + self.globs.len() + usize::from(self.wildcard.is_some())
    }

    fn counter_key(
        &self,
        scope: &str,
        counter: &str,
        how: Scope,
        call: &Call<'_>,
        who: &Identity,
    ) -> CounterKey {
        let whose = match how {
            Scope::Global => "g".to_string(),
            Scope::Identity | Scope::Grant => format!("i:{}", who.key()),
            Scope::Session => format!("s:{}", call.session.unwrap_or("")),
        };
        CounterKey(format!("{}|{scope}|{counter}|{whose}", self.name).into())
    }
}

fn compile_rule(
    policy: &str,
    deny_as: DenyAs,
    scope: &str,
    i: usize,
    rule: &crate::resources::Rule,
) -> CompiledRule {
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
    let limit = if let Some(l) = &rule.limit {
        Some(CompiledLimit {
            key_prefix: "".into(),
            global_key: CounterKey("".into()),
            on_full: Arc::new(Denial::default()),
            counter: l.counter.clone(),
            window: l.window,
            max: l.max,
            amount: match &l.increment_from {
                Some(path) => Amount::From {
                    path: path.clone(),
                    segments: segments(path, "args"),
                },
                None => Amount::Fixed(l.increment.unwrap_or(1)),
            },
            scope: l.scope.unwrap_or_default(),
        })
    } else if let Some(rl) = &rule.rate_limit {
        let (max, window) = parse_rate_limit(rl).expect("validated");
        Some(CompiledLimit {
            key_prefix: "".into(),
            global_key: CounterKey("".into()),
            on_full: Arc::new(Denial::default()),
            counter: rate_limit_counter(window.as_str()),
            window,
            max: Some(max),
            amount: Amount::Fixed(1),
            scope: Scope::Global,
        })
    } else {
        None
    };
    let limit = limit.map(|mut l| {
        let prefix = format!("{policy}|{scope}|{}|", l.counter);
        l.global_key = CounterKey(format!("{prefix}g").into());
        l.key_prefix = prefix.into();
        l.on_full = Arc::new(Denial {
            policy: policy.to_string(),
            rule: name.clone(),
            reason: on_deny.clone().unwrap_or_else(|| {
                format!(
                    "Limit {:?} of {} per {} reached. Try again later.",
                    l.counter,
                    l.max.unwrap_or(u64::MAX),
                    l.window.as_str()
                )
            }),
            deny_as,
        });
        l
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

impl CompiledRule {
    fn check(
        &self,
        policy: &CompiledPolicy,
        call: &Call<'_>,
        who: &Identity,
        counters: &dyn Counters,
    ) -> RuleOutcome {
        let deny = |reason: String| {
            RuleOutcome::Deny(Denial {
                policy: policy.name.to_string(),
                rule: self.name.clone(),
                reason: self.on_deny.clone().unwrap_or(reason),
                deny_as: policy.deny_as,
            })
        };
        // Listing: only what holds whatever the arguments.
        let Some(args) = call.args else {
            return match self.action {
                Action::Deny if self.conditions.is_empty() => deny(format!(
                    "Tool {:?} is denied by rule {:?}",
                    call.tool, self.name
                )),
                _ => RuleOutcome::Pass,
            };
        };
        let failed = self
            .conditions
            .iter()
            .find(|c| !c.holds(policy, call, args, who, counters));
        match self.action {
            Action::Deny => match failed {
                Some(_) => RuleOutcome::Pass,
                None => deny(format!(
                    "Tool {:?} is denied by rule {:?}",
                    call.tool, self.name
                )),
            },
            Action::Approve => match failed {
                Some(_) => RuleOutcome::Pass,
                None => RuleOutcome::Approve,
            },
            Action::Allow => {
                if let Some(c) = failed {
                    let got = c.resolve(policy, call, args, who, counters);
                    return deny(format!(
                        "Rule {:?} requires {} {} {} (got {})",
                        self.name,
                        c.path,
                        validate::op_name(c.op),
                        c.value,
                        got.map_or_else(|| "nothing".to_string(), |v| v.to_string())
                    ));
                }
                let Some(limit) = &self.limit else {
                    return RuleOutcome::Pass;
                };
                let amount = match &limit.amount {
                    Amount::Fixed(n) => *n,
                    Amount::From { path, segments } => {
                        match lookup(args, segments).and_then(as_number) {
                            Some(n) if n >= 0.0 && n.is_finite() => n.ceil() as u64,
                            _ => {
                                return deny(format!(
                                    "Rule {:?} counts {path}, which must be a non-negative number",
                                    self.name
                                ));
                            }
                        }
                    }
                };
                let key = match limit.scope {
                    Scope::Global => limit.global_key.clone(),
                    Scope::Identity | Scope::Grant => {
                        CounterKey(format!("{}i:{}", limit.key_prefix, who.key()).into())
                    }
                    Scope::Session => CounterKey(
                        format!("{}s:{}", limit.key_prefix, call.session.unwrap_or("")).into(),
                    ),
                };
                if let Some(max) = limit.max {
                    let now = counters.current(&key, limit.window);
                    if now.saturating_add(amount) > max {
                        return RuleOutcome::Deny((*limit.on_full).clone());
                    }
                }
                RuleOutcome::Reserve(Reservation {
                    key,
                    window: limit.window,
                    amount,
                    max: limit.max,
                    on_full: limit.on_full.clone(),
                })
            }
        }
    }
}

impl CompiledCondition {
    fn resolve(
        &self,
        policy: &CompiledPolicy,
        call: &Call<'_>,
        args: &Value,
        who: &Identity,
        counters: &dyn Counters,
    ) -> Option<Value> {
        match &self.source {
            Source::Args(segs) => lookup(args, segs).cloned(),
            Source::Identity(segs) => match segs.first().map(String::as_str) {
                Some("sub") if segs.len() == 1 => who.subject.clone().map(Value::String),
                Some("serviceAccount") if segs.len() == 1 => {
                    who.service_account.clone().map(Value::String)
                }
                Some("claims") if segs.len() > 1 => {
                    let claim = who.claims.get(&segs[1])?;
                    lookup(claim, &segs[2..]).cloned()
                }
                _ => None,
            },
            Source::State { scope, counter } => {
                let (window, how) = policy.counters.get(&(scope.clone(), counter.clone()))?;
                let key = policy.counter_key(scope, counter, *how, call, who);
                Some(Value::from(counters.current(&key, *window)))
            }
        }
    }

    fn holds(
        &self,
        policy: &CompiledPolicy,
        call: &Call<'_>,
        args: &Value,
        who: &Identity,
        counters: &dyn Counters,
    ) -> bool {
        let actual = self.resolve(policy, call, args, who, counters);
        if self.op == Op::Exists {
            let present = actual.as_ref().is_some_and(|v| !v.is_null());
            return Some(present) == self.value.as_bool();
        }
        let Some(actual) = actual else {
            return false;
        };
        let expected = &self.value;
        match self.op {
            Op::Eq => loosely_equal(&actual, expected),
            Op::Neq => !loosely_equal(&actual, expected),
            Op::In => expected
                .as_array()
                .is_some_and(|l| l.iter().any(|e| loosely_equal(&actual, e))),
            Op::NotIn => expected
                .as_array()
                .is_some_and(|l| !l.iter().any(|e| loosely_equal(&actual, e))),
            Op::Lt | Op::Lte | Op::Gt | Op::Gte => {
                let (Some(a), Some(e)) = (as_number(&actual), as_number(expected)) else {
                    return false;
                };
                match self.op {
                    Op::Lt => a < e,
                    Op::Lte => a <= e,
                    Op::Gt => a > e,
                    _ => a >= e,
                }
            }
            Op::Regex => actual
                .as_str()
                .is_some_and(|s| self.regex.as_ref().is_some_and(|r| r.is_match(s))),
            Op::Contains => match &actual {
                Value::String(s) => expected.as_str().is_some_and(|e| s.contains(e)),
                Value::Array(items) => items.iter().any(|i| loosely_equal(i, expected)),
                _ => false,
            },
            Op::Exists => unreachable!("handled above"),
        }
    }
}

/// Walks `segments` into a JSON value; a numeric segment indexes an array.
fn lookup<'v>(mut v: &'v Value, segments: &[String]) -> Option<&'v Value> {
    for seg in segments {
        v = match v {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// A number, or a string that reads as one (as Intercept coerces). Only finite decimal
/// numbers count: a string is a number when it is written as a JSON number would be
/// (`-12`, `0.5`, `1e3`), so `"Infinity"`, `"NaN"`, `"0x10"`, `" 5"` and `"1e400"` are text,
/// and every numeric operator fails on them.
pub fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64().filter(|n| n.is_finite()),
        Value::String(s) if is_json_number(s.as_bytes()) => {
            s.parse::<f64>().ok().filter(|n| n.is_finite())
        }
        _ => None,
    }
}

/// Whether `s` is written as RFC 8259 writes a number: `-? (0 | [1-9][0-9]*) (. [0-9]+)?
/// ([eE] [+-]? [0-9]+)?`.
pub fn is_json_number(s: &[u8]) -> bool {
    let digits = |s: &[u8], at: usize| s[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    let mut at = usize::from(s.first() == Some(&b'-'));
    match s.get(at) {
        Some(b'0') => at += 1,
        Some(b'1'..=b'9') => at += digits(s, at),
        _ => return false,
    }
    if s.get(at) == Some(&b'.') {
        let n = digits(s, at + 1);
        if n == 0 {
            return false;
        }
        at += 1 + n;
    }
    if matches!(s.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(s.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        let n = digits(s, at);
        if n == 0 {
            return false;
        }
        at += n;
    }
    at == s.len()
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Intercept's equality: numerically when both read as numbers, else by text, else exactly.
fn loosely_equal(a: &Value, b: &Value) -> bool {
    if let (Some(x), Some(y)) = (as_number(a), as_number(b)) {
        return x == y;
    }
    match (scalar_text(a), scalar_text(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Whether `pattern` can name passthrough paths: it starts with `/`, and has `*` only at its end.
pub fn is_path_pattern(pattern: &str) -> bool {
    pattern.starts_with('/') && pattern.find('*').is_none_or(|at| at == pattern.len() - 1)
}

/// Whether a passthrough path pattern names `path`: the same path, or, for a pattern ending in
/// `*`, any path that starts with what comes before it. Compared as written: no decoding, no
/// case folding, so `/oauth/token` does not name `/OAUTH/token` or `/oauth%2Ftoken`.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
    }
}

/// A tool-name pattern: `*` matches any run of characters, `?` any one.
#[derive(Clone, Debug)]
pub struct Glob {
    pattern: String,
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob {
            pattern: pattern.to_string(),
        }
    }

    pub fn is_glob(s: &str) -> bool {
        s.contains(['*', '?'])
    }

    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.pattern.as_bytes(), name.as_bytes())
    }
}

fn glob_match(p: &[u8], s: &[u8]) -> bool {
    // Iterative matcher with single-star backtracking: linear in practice, no recursion.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}
