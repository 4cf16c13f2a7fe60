//! Everything the OpenAPI schema cannot check, reported all at once.
//!
//! `validate_spec(spec) -> [Problem]` is the one validation: the `check` command, the sidecar's
//! loader and the operator's validating webhook all call it, so `kubectl apply` and
//! `tollgate check` refuse the same policies with the same words.

use std::collections::{BTreeMap, HashMap};

use crate::selector::LabelSelector;
use serde_json::Value;

use crate::problem::Problem;
use crate::resources::{Action, Condition, Limit, Op, PolicySpec, Rule, Subject};

/// Regexes in conditions are compiled with this size limit, so a policy cannot make the
/// sidecar build an enormous automaton.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The counter name the `rateLimit: N/window` shorthand uses (Intercept's convention).
pub fn rate_limit_counter(window: &str) -> String {
    format!("_rate_{window}")
}

/// Parses `N/window` into (max, window).
pub fn parse_rate_limit(s: &str) -> Result<(u64, crate::Window), String> {
    let Some((count, window)) = s.split_once('/') else {
        return Err(format!(
            "rateLimit {s:?} is not N/window; write e.g. \"5/hour\""
        ));
    };
    let count: u64 = match count.trim().parse() {
        Ok(n) if n > 0 => n,
        _ => {
            return Err(format!(
                "rateLimit count must be a positive integer, got {count:?}"
            ));
        }
    };
    let Some(window) = crate::Window::parse(window.trim()) else {
        return Err(format!(
            "rateLimit window must be second, minute, hour or day, got {window:?}"
        ));
    };
    Ok((count, window))
}

/// Checks where people approve held calls (`--approval-url`): an absolute `http(s)` URL with a
/// host, of visible ASCII; `{name}` stands for the approval's name.
pub fn approval_url(url: &str) -> Result<(), String> {
    let host = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
    match host {
        Some(host) if !host.is_empty() && url.bytes().all(|b| b.is_ascii_graphic()) => Ok(()),
        _ => Err(format!(
            "{url:?} is not an absolute http(s) URL (say https://approvals.example.com/approvals/{{name}})"
        )),
    }
}

/// Parses a duration such as `90s`, `10m`, `1h30m`, `500ms`.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let mut total = std::time::Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (std::time::Duration::from_millis(n), 2)
        } else if rest.starts_with('s') {
            (std::time::Duration::from_secs(n), 1)
        } else if rest.starts_with('m') {
            (std::time::Duration::from_secs(n.checked_mul(60)?), 1)
        } else if rest.starts_with('h') {
            (std::time::Duration::from_secs(n.checked_mul(3600)?), 1)
        } else {
            return None;
        };
        total = total.checked_add(unit)?;
        rest = &rest[len..];
    }
    Some(total)
}

/// The entry name counters of `spec.annotated[n]` are kept under (`state.annotated[0].hourly`).
pub fn annotated_scope(n: usize) -> String {
    format!("annotated[{n}]")
}

/// The entry name counters of a tool entry are kept under: the key itself, or `_global` for
/// `"*"` (Intercept's `state._global.<counter>`).
pub fn counter_scope(entry: &str) -> &str {
    if entry == "*" { "_global" } else { entry }
}

/// Validates a policy spec; an empty list means it compiles. What `kubectl apply`, `tollgate
/// check` and every policy file are held to.
pub fn validate_spec(spec: &PolicySpec) -> Vec<Problem> {
    validate(spec, Checks::All)
}

/// Validates a policy already stored in the cluster, which an older release admitted: every
/// check but those added since, so that an upgrade never turns a policy that was in force into
/// one that denies every call. (The webhook holds its next change to [`validate_spec`].)
///
/// Added since 0.1: two limits of one tool entry on one counter (they count every call twice).
pub fn validate_stored(spec: &PolicySpec) -> Vec<Problem> {
    validate(spec, Checks::SinceAdmitted)
}

#[derive(Clone, Copy, PartialEq)]
enum Checks {
    All,
    SinceAdmitted,
}

fn validate(spec: &PolicySpec, checks: Checks) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Some(sel) = &spec.selector {
        validate_selector("spec.selector", sel, &mut out);
    }
    for (i, h) in spec.hide.iter().enumerate() {
        if h.trim().is_empty() {
            out.push(Problem::new(
                format!("spec.hide[{i}]"),
                "entry must not be empty; remove it or name a tool",
            ));
        }
    }
    for (i, s) in spec.subjects.iter().enumerate() {
        validate_subject(&format!("spec.subjects[{i}]"), s, &mut out);
    }
    for (i, p) in spec.passthrough_paths.iter().enumerate() {
        if !crate::decide::is_path_pattern(p) {
            out.push(Problem::new(
                format!("spec.passthroughPaths[{i}]"),
                format!(
                    "{p:?} is not a path: write one starting with /, with * only at its end (/oauth/*)"
                ),
            ));
        }
    }

    for (i, path) in spec.audit.iter().flat_map(|a| &a.arguments).enumerate() {
        if path != "args" && !is_path_under(path, "args") {
            out.push(Problem::new(
                format!("spec.audit.arguments[{i}]"),
                format!("must be args or an argument path such as args.amount, got {path:?}"),
            ));
        }
    }

    for (tool, pin) in spec.pinning.iter().flat_map(|p| &p.tools) {
        let at = format!("spec.pinning.tools.{}", path_key(tool));
        if tool.trim().is_empty() {
            out.push(Problem::new(&at, "tool name must not be empty"));
        }
        if !is_digest(pin) {
            out.push(Problem::new(
                at,
                format!("{pin:?} is not a pin: write sha256: and 64 hex digits, as `tollgate pin` prints them"),
            ));
        }
    }

    let pinned = spec
        .pinning
        .as_ref()
        .is_some_and(|p| p.mode == crate::PinMode::Enforce);
    for (n, entry) in spec.annotated.iter().enumerate() {
        let at = format!("spec.annotated[{n}].annotations");
        if !pinned {
            out.push(Problem::new(
                &at,
                "selecting tools by annotations needs spec.pinning with mode enforce: a server's annotations are its own word until pinned",
            ));
        }
        if entry.annotations.is_empty() {
            out.push(Problem::new(
                &at,
                format!("name at least one annotation: {}", crate::HINTS.join(", ")),
            ));
        }
        for key in entry.annotations.keys() {
            if !crate::HINTS.contains(&key.as_str()) {
                out.push(Problem::new(
                    format!("{at}.{}", path_key(key)),
                    format!(
                        "{key:?} is not one of MCP's tool annotations: {}",
                        crate::HINTS.join(", ")
                    ),
                ));
            }
        }
    }

    // Every entry of rules: where it is written, the scope its counters are kept under, and
    // its rules.
    let entries: Vec<(String, String, &[Rule])> = spec
        .tools
        .iter()
        .map(|(tool, entry)| {
            (
                format!("spec.tools.{}", path_key(tool)),
                counter_scope(tool).to_string(),
                entry.rules.as_slice(),
            )
        })
        .chain(spec.annotated.iter().enumerate().map(|(n, entry)| {
            (
                format!("spec.annotated[{n}]"),
                annotated_scope(n),
                entry.rules.as_slice(),
            )
        }))
        .collect();
    for tool in spec.tools.keys() {
        if tool.trim().is_empty() {
            out.push(Problem::new(
                format!("spec.tools.{}", path_key(tool)),
                "tool name must not be empty; use a name, a glob such as get_*, or \"*\"",
            ));
        }
        if tool.starts_with("annotated[") && !spec.annotated.is_empty() {
            out.push(Problem::new(
                format!("spec.tools.{}", path_key(tool)),
                "names of the form annotated[N] are spec.annotated's counters; a policy with spec.annotated cannot list a tool so named",
            ));
        }
    }

    // Counters each entry defines: (entry scope, counter) -> (window, where).
    let mut counters: HashMap<(String, String), (crate::Window, String)> = HashMap::new();
    for (base, scope_key, rules) in &entries {
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        // Counters a rule of this entry reserves already: a second limit on one would count
        // every call twice.
        let mut reserved_here: HashMap<(String, String), (usize, crate::Window)> = HashMap::new();
        for (i, rule) in rules.iter().enumerate() {
            let at = format!("{base}.rules[{i}]");
            if !rule.name.is_empty()
                && let Some(first) = names.insert(&rule.name, i)
            {
                out.push(Problem::new(
                    format!("{at}.name"),
                    format!(
                        "duplicate rule name {:?} (also {base}.rules[{first}]); give each rule its own name",
                        rule.name
                    ),
                ));
            }
            if let Some((counter, window)) = rule_counter(rule) {
                // Two limits on one counter key (its name and scope) count every call twice.
                // Another window is another problem, reported below.
                let scope = rule
                    .limit
                    .as_ref()
                    .and_then(|l| l.scope)
                    .unwrap_or_default();
                let key = (counter.clone(), format!("{scope:?}"));
                if checks == Checks::All
                    && let Some((first, w)) = reserved_here.insert(key, (i, window))
                    && w == window
                {
                    let (field, what) = match &rule.limit {
                        Some(_) => ("limit.counter", format!("counter {counter:?}")),
                        None => ("rateLimit", format!("the {} rate limit", window.as_str())),
                    };
                    out.push(Problem::new(
                        format!("{at}.{field}"),
                        format!(
                            "this rule and rule {:?} both count {what}, so every call would count twice; keep one limit (the lower), or give one its own counter",
                            rules[first].name
                        ),
                    ));
                }
                let key = (scope_key.clone(), counter.clone());
                match counters.get(&key) {
                    Some((w, first)) if *w != window => out.push(Problem::new(
                        format!("{at}.limit.counter"),
                        format!(
                            "counter {counter:?} is already used with window {} by {first}; use another counter name",
                            w.as_str()
                        ),
                    )),
                    Some(_) => {}
                    None => {
                        counters.insert(key, (window, at.clone()));
                    }
                }
            }
            validate_rule(&at, rule, &mut out);
        }
    }

    // Conditions that read counters must name one some rule defines.
    for (base, _, rules) in &entries {
        for (i, rule) in rules.iter().enumerate() {
            for (j, c) in rule.conditions.iter().enumerate() {
                let Some(rest) = c.path.strip_prefix("state.") else {
                    continue;
                };
                let at = format!("{base}.rules[{i}].conditions[{j}].path");
                match rest.split_once('.') {
                    Some((scope, counter)) if !scope.is_empty() && !counter.is_empty() => {
                        if !counters.contains_key(&(scope.to_string(), counter.to_string())) {
                            out.push(Problem::new(
                                at,
                                format!(
                                    "{} reads counter {counter:?} of {scope:?}, which no rule defines; add a limit with counter: {counter} to a rule of that tool (\"_global\" means \"*\")",
                                    c.path
                                ),
                            ));
                        }
                    }
                    _ => out.push(Problem::new(
                        at,
                        format!(
                            "{:?} must be state.<tool>.<counter>, e.g. state.create_issue.hourly",
                            c.path
                        ),
                    )),
                }
            }
        }
    }
    out
}

/// The counter a rule reserves, if any, with its window.
pub(crate) fn rule_counter(rule: &Rule) -> Option<(String, crate::Window)> {
    if let Some(limit) = &rule.limit {
        return Some((limit.counter.clone(), limit.window));
    }
    let rl = rule.rate_limit.as_deref()?;
    let (_, window) = parse_rate_limit(rl).ok()?;
    Some((rate_limit_counter(window.as_str()), window))
}

fn validate_rule(at: &str, rule: &Rule, out: &mut Vec<Problem>) {
    let action = rule.action.unwrap_or_default();
    if rule.limit.is_some() && rule.rate_limit.is_some() {
        out.push(Problem::new(
            at,
            "set rateLimit or limit, not both; split them into two rules",
        ));
    }
    if action != Action::Allow && (rule.limit.is_some() || rule.rate_limit.is_some()) {
        out.push(Problem::new(
            at,
            "deny and approve rules cannot carry a limit; put the limit in an allow rule",
        ));
    }
    if rule.approval.is_some() && action != Action::Approve {
        out.push(Problem::new(
            format!("{at}.approval"),
            "approval settings need action: approve",
        ));
    }
    if let Some(timeout) = rule.approval.as_ref().and_then(|a| a.timeout.as_deref())
        && parse_duration(timeout).is_none_or(|d| d.is_zero())
    {
        out.push(Problem::new(
            format!("{at}.approval.timeout"),
            format!("{timeout:?} is not a duration; write e.g. 30s, 10m or 1h"),
        ));
    }
    if let Some(valid_for) = rule.approval.as_ref().and_then(|a| a.valid_for.as_deref())
        && parse_duration(valid_for).is_none_or(|d| d.is_zero())
    {
        out.push(Problem::new(
            format!("{at}.approval.validFor"),
            format!("{valid_for:?} is not a duration; write e.g. 10m, 1h or 24h"),
        ));
    }
    for (j, path) in rule.approval.iter().flat_map(|a| &a.show).enumerate() {
        if !is_path_under(path, "args") {
            out.push(Problem::new(
                format!("{at}.approval.show[{j}]"),
                format!(
                    "a shown path must start with args. and have no empty segment, got {path:?}"
                ),
            ));
        }
    }
    if let Some(rl) = &rule.rate_limit
        && let Err(e) = parse_rate_limit(rl)
    {
        out.push(Problem::new(format!("{at}.rateLimit"), e));
    }
    if let Some(limit) = &rule.limit {
        validate_limit(&format!("{at}.limit"), limit, out);
    }
    for (j, c) in rule.conditions.iter().enumerate() {
        validate_condition(&format!("{at}.conditions[{j}]"), c, out);
    }
}

fn validate_limit(at: &str, limit: &Limit, out: &mut Vec<Problem>) {
    if limit.counter.trim().is_empty() {
        out.push(Problem::new(
            format!("{at}.counter"),
            "counter must not be empty; name it, e.g. daily_spend",
        ));
    }
    if limit.max == Some(0) {
        out.push(Problem::new(
            format!("{at}.max"),
            "max must be at least 1; to refuse every call use action: deny",
        ));
    }
    if limit.increment.is_some() && limit.increment_from.is_some() {
        out.push(Problem::new(at, "set increment or incrementFrom, not both"));
    }
    if let Some(from) = &limit.increment_from
        && !is_path_under(from, "args")
    {
        out.push(Problem::new(
            format!("{at}.incrementFrom"),
            format!("must be an argument path such as args.amount, got {from:?}"),
        ));
    }
}

/// Whether `s` is a definition digest: `sha256:` and 64 lower-case hex digits.
pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn is_path_under(path: &str, root: &str) -> bool {
    path.strip_prefix(root)
        .and_then(|r| r.strip_prefix('.'))
        .is_some_and(|r| r.split('.').all(|seg| !seg.is_empty()))
}

fn validate_condition(at: &str, c: &Condition, out: &mut Vec<Problem>) {
    let path_ok = ["args", "state", "identity"]
        .iter()
        .any(|root| is_path_under(&c.path, root));
    if !path_ok {
        out.push(Problem::new(
            format!("{at}.path"),
            format!(
                "path must start with args., state. or identity. and have no empty segment, got {:?}",
                c.path
            ),
        ));
    }
    let value_at = format!("{at}.value");
    let value = c.value.as_ref();
    match c.op {
        Op::Exists => {
            if !matches!(value, None | Some(Value::Bool(_))) {
                out.push(Problem::new(
                    value_at,
                    "exists takes true or false (or no value, meaning true)",
                ));
            }
        }
        Op::In | Op::NotIn => {
            if !matches!(value, Some(Value::Array(_))) {
                out.push(Problem::new(
                    value_at,
                    format!("{} needs a list, e.g. [usd, eur]", op_name(c.op)),
                ));
            }
        }
        Op::Lt | Op::Lte | Op::Gt | Op::Gte => {
            if value.is_none_or(|v| crate::decide::as_number(v).is_none()) {
                out.push(Problem::new(
                    value_at,
                    format!("{} needs a number, e.g. 50000", op_name(c.op)),
                ));
            }
        }
        Op::Regex => match value {
            Some(Value::String(pattern)) => {
                if let Err(e) = regex::RegexBuilder::new(pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                {
                    let reason = e.to_string().replace('\n', " ");
                    out.push(Problem::new(
                        value_at,
                        format!("regex {pattern:?} does not compile: {reason}"),
                    ));
                }
            }
            _ => out.push(Problem::new(
                value_at,
                "regex needs a string pattern, e.g. \"^SELECT \"",
            )),
        },
        Op::Eq | Op::Neq | Op::Contains => {
            if value.is_none_or(Value::is_null) {
                out.push(Problem::new(
                    value_at,
                    format!("{} needs a value to compare with", op_name(c.op)),
                ));
            }
        }
    }
}

/// The operator as written in policies.
pub fn op_name(op: Op) -> &'static str {
    match op {
        Op::Eq => "eq",
        Op::Neq => "neq",
        Op::In => "in",
        Op::NotIn => "notIn",
        Op::Lt => "lt",
        Op::Lte => "lte",
        Op::Gt => "gt",
        Op::Gte => "gte",
        Op::Regex => "regex",
        Op::Contains => "contains",
        Op::Exists => "exists",
    }
}

fn validate_subject(at: &str, s: &Subject, out: &mut Vec<Problem>) {
    let set = [
        s.service_account.is_some(),
        s.claim.is_some(),
        s.subject.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set != 1 {
        out.push(Problem::new(
            at,
            "set exactly one of serviceAccount, claim or subject",
        ));
    }
    if let Some(sa) = &s.service_account {
        let ok = sa
            .split_once('/')
            .is_some_and(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'));
        if !ok {
            out.push(Problem::new(
                format!("{at}.serviceAccount"),
                format!("must be NAMESPACE/NAME (or NAMESPACE/*), got {sa:?}"),
            ));
        }
    }
    if let Some(claim) = &s.claim
        && claim.name.is_empty()
    {
        out.push(Problem::new(
            format!("{at}.claim.name"),
            "claim name must not be empty, e.g. groups",
        ));
    }
}

/// Checks a label selector the way the API server does.
pub fn validate_selector(at: &str, sel: &LabelSelector, out: &mut Vec<Problem>) {
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        let values = e.values.as_deref().unwrap_or_default();
        let here = format!("{at}.matchExpressions[{i}]");
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => out.push(Problem::new(
                format!("{here}.values"),
                format!("operator {} needs at least one value", e.operator),
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => out.push(Problem::new(
                format!("{here}.values"),
                format!("operator {} takes no values", e.operator),
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => out.push(Problem::new(
                format!("{here}.operator"),
                format!("unknown operator {other:?}; use In, NotIn, Exists or DoesNotExist"),
            )),
        }
    }
}

/// A map key as it appears in a field path: bare when it is a plain name, quoted otherwise.
pub fn path_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

#[cfg(test)]
mod approval_url_tests {
    use super::approval_url;

    #[test]
    fn an_approval_url_is_an_absolute_http_url_with_a_host() {
        for good in [
            "https://approvals.example.com/approvals/{name}",
            "http://10.0.0.1:8080/?a={name}",
            "https://a.example",
        ] {
            assert!(approval_url(good).is_ok(), "{good}");
        }
        for bad in [
            "approvals.example.com/{name}",
            "ftp://a/{name}",
            "https:///x",
            "https://a b/",
            "",
        ] {
            assert!(approval_url(bad).is_err(), "{bad}");
        }
    }
}
