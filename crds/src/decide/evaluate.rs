//! A call decided against a compiled set: which policies govern the caller, what hides the
//! tool, which rules apply, whether their conditions hold and their counters have room.

use serde_json::Value;

use super::compile::{
    Amount, CompiledCondition, CompiledEntry, CompiledPolicy, CompiledRule, PolicySet, Source,
};
use super::types::{Call, Counters, Decision, Denial, Identity, NoCounters, Reservation, Verdict};
use crate::resources::{Action, DefaultAction, DenyAs, Mode, Op};
use crate::validate;

impl PolicySet {
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
    /// the arguments. Audit-mode policies hide nothing. The same answer for every caller unless
    /// [`PolicySet::varies_by_caller`], so a data plane may remember it by tool name.
    pub fn visible(&self, tool: &str, who: &Identity) -> bool {
        self.visible_with(tool, None, who)
    }

    /// Whether an enforcing policy governing this caller hides the tool (`spec.hide`).
    pub fn hidden(&self, tool: &str, who: &Identity) -> bool {
        self.policies
            .iter()
            .filter(|p| p.mode == Mode::Enforce && p.governs(who))
            .any(|p| p.hides(tool).is_some())
    }

    /// [`PolicySet::visible`] for a tool whose pinned definition has `hints`, which
    /// `spec.annotated` entries select by (not remembered by name: see
    /// [`PolicySet::selects_by_annotation`]).
    pub fn visible_with(&self, tool: &str, hints: Option<crate::Hints>, who: &Identity) -> bool {
        let call = Call {
            tool,
            args: None,
            session: None,
            hints,
        };
        !matches!(
            self.decide(&call, who, &NoCounters).decision,
            Decision::Deny(_)
        )
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
            p.for_each_entry(call.tool, call.hints, |entry, is_listing| {
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
                valid_for: rule.approval_valid_for,
                show: rule.approval_show.clone(),
                reservations,
            };
        }
        if listed {
            return Decision::Allow { reservations };
        }
        match (first, self.ungoverned) {
            (None, Some(DefaultAction::Allow)) => return Decision::Allow { reservations },
            (None, Some(DefaultAction::Deny)) => {
                return Decision::Deny(Denial {
                    policy: "(no policy governs the caller)".into(),
                    rule: "(ungoverned caller)".into(),
                    reason: "No policy governs this caller: every policy names whom it governs \
                         (subjects), and this caller is none of them"
                        .into(),
                    deny_as: DenyAs::default(),
                });
            }
            _ => {}
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

enum RuleOutcome {
    Pass,
    Reserve(Reservation),
    Approve,
    Deny(Denial),
}

impl CompiledPolicy {
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
    pub(super) fn for_each_entry<'s>(
        &'s self,
        tool: &str,
        hints: Option<crate::Hints>,
        mut f: impl FnMut(&'s CompiledEntry, bool),
    ) {
        if let Some(e) = self.exact.get(tool) {
            f(e, true);
        }
        for (g, e) in &self.globs {
            if g.matches(tool) {
                f(e, true);
            }
        }
        if let Some(hints) = hints {
            for (selects, e) in &self.annotated {
                if selects.iter().all(|(k, v)| hints.get(k) == Some(*v)) {
                    f(e, true);
                }
            }
        }
        if let Some(e) = &self.wildcard {
            f(e, false);
        }
    }
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
                let Some((_, limit)) = &self.limit else {
                    return RuleOutcome::Pass;
                };
                let amount = match &limit.amount {
                    Amount::Fixed(n) => *n,
                    Amount::From { path, segments } => {
                        // The reason names the argument, whatever the rule's `onDeny` says:
                        // that text is about a full counter, and this call never reached it.
                        let bad = |why: String| {
                            RuleOutcome::Deny(Denial {
                                policy: policy.name.to_string(),
                                rule: self.name.clone(),
                                reason: format!("Rule {:?} counts {path}, which {why}", self.name),
                                deny_as: policy.deny_as,
                            })
                        };
                        match lookup(args, segments) {
                            None | Some(Value::Null) => {
                                return bad("the call does not have".into());
                            }
                            Some(v) => match as_number(v) {
                                Some(n) if n >= 0.0 => n.ceil() as u64,
                                _ => {
                                    return bad(format!("must be a non-negative number (got {v})"));
                                }
                            },
                        }
                    }
                };
                let key = limit.name.key(call, who);
                if let Some(max) = limit.max
                    && !counters.fits(&key, &limit.name, amount, max)
                {
                    return RuleOutcome::Deny((*limit.on_full).clone());
                }
                RuleOutcome::Reserve(Reservation {
                    key,
                    window: limit.name.window,
                    amount,
                    max: limit.max,
                    on_full: limit.on_full.clone(),
                    unavailable: limit.name.unavailable,
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
                let name = policy.counters.get(&(scope.clone(), counter.clone()))?;
                Some(Value::from(counters.current(&name.key(call, who), name)))
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
