//! `tollgate replay`: the calls of audit logs decided again under other policies, and what
//! would change.
//!
//! ```text
//! audit lines (kind: decision) ── sorted by time ── each call: tool, identity, session, the
//!   arguments the policy logged (spec.audit.arguments)
//!   ── does the new policy read what the line lacks (an argument not logged, a claim)?
//!        yes ── unknown: counted and named, never guessed
//!        no  ── CounterStore::decide on a clock at the line's time ── allow | deny | approve | audit
//!               (an allowed call the server answered 4xx gives its count back, as the proxy does)
//!   ── against the line's own decision: changes by tool, rule and identity, and examples
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tollgate_api::{Call, Decision, Identity, PolicySet};

use super::parse_utc;
use crate::clock::Clock;
use crate::policy::counters::CounterStore;

/// One decision line of an audit log, as much of it as replaying reads.
#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
struct Line {
    time: String,
    kind: String,
    #[serde(default)]
    pod: Option<String>,
    #[serde(default)]
    session: Option<String>,
    identity: String,
    method: String,
    #[serde(default)]
    tool: Option<String>,
    decision: String,
    #[serde(default)]
    rule: Option<String>,
    #[serde(default)]
    upstream_status: Option<u16>,
    #[serde(default)]
    arguments: Option<Map<String, Value>>,
    /// Argument paths logged as absent from the call.
    #[serde(default)]
    absent_arguments: Vec<String>,
    /// The approval that admitted, held or refused the call.
    #[serde(default)]
    approval: Option<String>,
    /// Audit lines lost just before this one.
    #[serde(default)]
    dropped_before: Option<u64>,
}

/// What replaying found.
#[derive(Serialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Calls read from the logs.
    pub calls: usize,
    pub unchanged: usize,
    pub changed: usize,
    /// Calls the new policy decides on what their lines do not hold.
    pub unknown: usize,
    /// Lines that are not a call's decision (approvals, other output, text that is not JSON).
    pub other_lines: usize,
    /// Audit lines the proxies said they lost (`droppedBefore`): calls replay never saw.
    pub lost_lines: u64,
    /// Allowed calls whose answer (a 4xx, a 502 or 504) leaves open whether the proxy gave
    /// their count back; replay counts them, which can only make a limit fill sooner.
    pub uncertain_counts: usize,
    /// What replaying assumed that the logs cannot say.
    pub assumptions: Vec<String>,
    /// The first and last call's time.
    pub from: Option<String>,
    pub to: Option<String>,
    /// Changed calls by tool, old and new decision, and the new rule.
    pub changes: Vec<Change>,
    /// Changed calls by caller.
    pub by_identity: Vec<Count>,
    /// What the logs lack, by tool.
    pub missing: Vec<Missing>,
    pub examples: Vec<Example>,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub tool: String,
    pub from: String,
    pub to: String,
    /// The rule that decides now (for a denial, or what audit mode would deny by).
    pub rule: Option<String>,
    pub calls: usize,
}

#[derive(Serialize, Debug)]
pub struct Count {
    pub identity: String,
    pub calls: usize,
}

#[derive(Serialize, Debug)]
pub struct Missing {
    pub tool: String,
    /// What the new policy reads that the lines lack: argument paths, or `identity.claims`.
    pub paths: Vec<String>,
    pub calls: usize,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Example {
    pub time: String,
    pub identity: String,
    pub tool: String,
    pub from: String,
    pub to: String,
    pub rule: Option<String>,
    pub reason: Option<String>,
}

/// How counters were kept where the logs were written.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Counting {
    /// In each pod (the default): each pod's calls count apart.
    PerPod,
    /// Shared by every pod (the proxies had a Redis).
    Shared,
}

/// Replays the lines of `logs` (text of audit logs; any other line is counted and skipped)
/// under `set`, keeping up to `examples` examples of changed calls.
pub async fn replay(
    logs: &[String],
    set: &PolicySet,
    counting: Counting,
    examples: usize,
) -> Report {
    let mut report = Report::default();
    let mut lines: Vec<(Duration, Line)> = Vec::new();
    for text in logs {
        for raw in text.lines().filter(|l| !l.trim().is_empty()) {
            // `kubectl logs --prefix` and `--timestamps` put text before the JSON.
            let json = raw.find('{').map_or(raw, |at| &raw[at..]);
            match serde_json::from_str::<Line>(json) {
                Ok(l) if l.kind == "decision" && l.tool.is_some() => match parse_utc(&l.time) {
                    Some(at) => lines.push((at, l)),
                    None => report.other_lines += 1,
                },
                _ => report.other_lines += 1,
            }
        }
    }
    lines.sort_by_key(|(at, _)| *at);
    report.calls = lines.len();
    report.from = lines.first().map(|(_, l)| l.time.clone());
    report.to = lines.last().map(|(_, l)| l.time.clone());
    report.lost_lines = lines.iter().filter_map(|(_, l)| l.dropped_before).sum();
    let Some((start, first)) = lines.first() else {
        return report;
    };
    report.assumptions.push(format!(
        "counters start at zero at the first line ({}): a limit whose window began before it is under-counted",
        first.time
    ));
    report.assumptions.push(match counting {
        Counting::PerPod => "each pod counts its own calls, as without a shared store (--shared-counters if the proxies counted in Redis)".into(),
        Counting::Shared => "every pod's calls count together, as in Redis".into(),
    });
    let clock = Clock::manual(*start);
    // Each pod's counters, or one store for all.
    let mut stores: BTreeMap<Option<String>, CounterStore> = BTreeMap::new();
    let mut now = *start;
    let mut changes: BTreeMap<(String, String, String, Option<String>), usize> = BTreeMap::new();
    let mut by_identity: BTreeMap<String, usize> = BTreeMap::new();
    let mut missing: BTreeMap<(String, Vec<String>), usize> = BTreeMap::new();
    for (at, line) in &lines {
        clock.advance(at.saturating_sub(now));
        now = now.max(*at);
        let tool = line.tool.as_deref().unwrap_or_default();
        let key = match counting {
            Counting::PerPod => line.pod.clone(),
            Counting::Shared => None,
        };
        let counters = stores
            .entry(key)
            .or_insert_with(|| CounterStore::with_clock(clock.clone()));
        let Some((to, rule, reason)) = decide(set, line, tool, counters, &mut report).await else {
            report.unknown += 1;
            let lacks = lacking(&set.reads(tool), line);
            *missing.entry((tool.to_string(), lacks)).or_default() += 1;
            continue;
        };
        // A call a person decided (approved or denied) that an `approve` rule holds again is
        // unchanged: a person would be asked, as one was.
        let asked_again = line.approval.is_some() && to == "approve" && line.decision != "allow";
        let same = asked_again || (line.decision == to && (to != "deny" || line.rule == rule));
        if same {
            report.unchanged += 1;
            continue;
        }
        report.changed += 1;
        *changes
            .entry((
                tool.to_string(),
                line.decision.clone(),
                to.to_string(),
                rule.clone(),
            ))
            .or_default() += 1;
        *by_identity.entry(line.identity.clone()).or_default() += 1;
        if report.examples.len() < examples {
            report.examples.push(Example {
                time: line.time.clone(),
                identity: line.identity.clone(),
                tool: tool.to_string(),
                from: line.decision.clone(),
                to: to.to_string(),
                rule,
                reason,
            });
        }
    }
    report.changes = changes
        .into_iter()
        .map(|((tool, from, to, rule), calls)| Change {
            tool,
            from,
            to,
            rule,
            calls,
        })
        .collect();
    report.changes.sort_by_key(|c| std::cmp::Reverse(c.calls));
    report.by_identity = by_identity
        .into_iter()
        .map(|(identity, calls)| Count { identity, calls })
        .collect();
    report
        .by_identity
        .sort_by_key(|c| std::cmp::Reverse(c.calls));
    report.missing = missing
        .into_iter()
        .map(|((tool, paths), calls)| Missing { tool, paths, calls })
        .collect();
    report
}

/// A line's call decided again: (decision, rule, reason), or `None` when the line lacks what
/// deciding it would read.
async fn decide(
    set: &PolicySet,
    line: &Line,
    tool: &str,
    counters: &CounterStore,
    report: &mut Report,
) -> Option<(&'static str, Option<String>, Option<String>)> {
    // What the proxy decides at all: tool calls always, resources and prompts only where a
    // policy names them; the rest goes on undecided.
    let decided = match line.method.as_str() {
        "resources/read" => set.names("resource:"),
        "prompts/get" => set.names("prompt:"),
        _ => true,
    };
    if !decided {
        return Some(("allow", None, None));
    }
    if !lacking(&set.reads(tool), line).is_empty() {
        return None;
    }
    let args = rebuild(line.arguments.as_ref());
    let who = match line.identity.as_str() {
        "anonymous" => Identity::anonymous(),
        sub => Identity::subject(sub),
    };
    let call = Call {
        tool,
        args: Some(&args),
        session: line.session.as_deref(),
        hints: None,
    };
    let mut counted = counters.decide(set, &call, &who).await;
    // A call a person approved went on, decided again and counted as the proxy does
    // (`decide_approved`): a person would be asked again, as one was.
    let approved = line.approval.is_some() && line.decision == "allow";
    if approved && matches!(counted.verdict.decision, Decision::Approve { .. }) {
        counted = counters.decide_approved(set, &call, &who).await;
        if matches!(counted.verdict.decision, Decision::Approve { .. }) {
            counted.verdict.decision = Decision::Allow {
                reservations: Vec::new(),
            };
        }
    }
    Some(match (&counted.verdict.decision, counted.reserved) {
        (Decision::Deny(d), _) => ("deny", Some(d.rule.clone()), Some(d.reason.clone())),
        (Decision::Allow { .. }, Err(d)) => ("deny", Some(d.rule), Some(d.reason)),
        (Decision::Approve { rule, .. }, _) => ("approve", Some(rule.clone()), None),
        (Decision::Allow { .. }, Ok(reserved)) => {
            // Whether the proxy gave the count back is not in the line: a 4xx may or may not
            // have answered the call, a 502 may or may not have been sent. It stays counted,
            // and is said to be uncertain.
            let unsure = line
                .upstream_status
                .is_some_and(|s| (400..500).contains(&s) || s == 502 || s == 504);
            if unsure && !reserved.is_empty() {
                report.uncertain_counts += 1;
            }
            match &counted.verdict.audit {
                Some(d) => ("audit", Some(d.rule.clone()), Some(d.reason.clone())),
                None => ("allow", None, None),
            }
        }
    })
}

/// What of `reads` a line's logged arguments do not cover. A path logged (with its value, or
/// as absent) covers itself and what lies under it (`args` covers every argument); a claim is
/// never logged.
fn lacking(reads: &[String], line: &Line) -> Vec<String> {
    let logged = line
        .arguments
        .iter()
        .flat_map(|m| m.keys())
        .chain(&line.absent_arguments);
    let covers = |k: &String, path: &str| {
        k == "args"
            || path == k
            || path
                .strip_prefix(k.as_str())
                .is_some_and(|rest| rest.starts_with('.'))
    };
    reads
        .iter()
        .filter(|path| {
            path.starts_with("identity.")
                || path.starts_with("tool.")
                || !logged.clone().any(|k| covers(k, path))
        })
        .cloned()
        .collect()
}

/// The arguments object from the logged paths (`{"args.a.b": 1}` -> `{"a": {"b": 1}}`).
fn rebuild(logged: Option<&Map<String, Value>>) -> Value {
    let mut args = Value::Object(Map::new());
    let Some(logged) = logged else { return args };
    if let Some(all) = logged.get("args") {
        args = all.clone();
    }
    for (path, v) in logged {
        let Some(rest) = path.strip_prefix("args.") else {
            continue;
        };
        let segments: Vec<&str> = rest.split('.').collect();
        let mut at = &mut args;
        for (i, seg) in segments.iter().enumerate() {
            let Value::Object(map) = at else { break };
            if i + 1 == segments.len() {
                map.insert(seg.to_string(), v.clone());
                break;
            }
            at = map
                .entry(seg.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
        }
    }
    args
}

/// The report as a table.
pub fn text(r: &Report, policies: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let span = match (&r.from, &r.to) {
        (Some(a), Some(b)) => format!(" ({a} .. {b})"),
        _ => String::new(),
    };
    let _ = writeln!(out, "Replayed {} calls{span} under {policies}", r.calls);
    let _ = writeln!(
        out,
        "  unchanged {}   changed {}   unknown {}   other lines {}",
        r.unchanged, r.changed, r.unknown, r.other_lines
    );
    if r.lost_lines > 0 {
        let _ = writeln!(
            out,
            "  the proxies lost {} audit lines (droppedBefore): those calls are not here",
            r.lost_lines
        );
    }
    if r.uncertain_counts > 0 {
        let _ = writeln!(
            out,
            "  {} allowed calls were answered 4xx, 502 or 504: whether the proxy gave their count back is not logged; they count here",
            r.uncertain_counts
        );
    }
    for a in &r.assumptions {
        let _ = writeln!(out, "  assumed: {a}");
    }
    if !r.changes.is_empty() {
        let _ = writeln!(out, "\nWhat would change:");
        let rows: Vec<[String; 5]> = r
            .changes
            .iter()
            .map(|c| {
                [
                    c.tool.clone(),
                    c.from.clone(),
                    c.to.clone(),
                    c.rule.clone().unwrap_or_else(|| "-".into()),
                    c.calls.to_string(),
                ]
            })
            .collect();
        table(&mut out, ["TOOL", "WAS", "NOW", "RULE", "CALLS"], &rows);
        let _ = writeln!(out, "\nChanged calls by caller:");
        let rows: Vec<[String; 2]> = r
            .by_identity
            .iter()
            .map(|c| [c.identity.clone(), c.calls.to_string()])
            .collect();
        table(&mut out, ["IDENTITY", "CALLS"], &rows);
    }
    if !r.missing.is_empty() {
        let _ = writeln!(
            out,
            "\nNot decided: the new policy reads what these lines do not hold (log arguments with spec.audit.arguments; claims are never logged):"
        );
        let rows: Vec<[String; 3]> = r
            .missing
            .iter()
            .map(|m| [m.tool.clone(), m.paths.join(", "), m.calls.to_string()])
            .collect();
        table(&mut out, ["TOOL", "LACKS", "CALLS"], &rows);
    }
    if !r.examples.is_empty() {
        let _ = writeln!(out, "\nExamples:");
        for e in &r.examples {
            let _ = write!(
                out,
                "  {} {} {}: {} -> {}",
                e.time, e.identity, e.tool, e.from, e.to
            );
            if let Some(rule) = &e.rule {
                let _ = write!(out, " (rule {rule:?})");
            }
            if let Some(reason) = &e.reason {
                let _ = write!(out, ": {reason}");
            }
            out.push('\n');
        }
    }
    out
}

fn table<const N: usize>(out: &mut String, head: [&str; N], rows: &[[String; N]]) {
    use std::fmt::Write as _;
    let mut widths = head.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: Vec<&str>| {
        let mut s = String::from("  ");
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                s.push_str(cell);
            } else {
                let _ = write!(s, "{cell:<w$}  ");
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(out, head.to_vec());
    for row in rows {
        line(out, row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(arguments: Value, absent: &[&str]) -> Line {
        serde_json::from_value(json!({
            "time": "2026-01-05T00:00:00Z", "kind": "decision", "identity": "anonymous",
            "method": "tools/call", "tool": "t", "decision": "allow",
            "arguments": arguments, "absentArguments": absent,
        }))
        .unwrap()
    }

    #[test]
    fn logged_paths_cover_what_lies_under_them_and_claims_are_never_logged() {
        let logged = line(json!({"args.a": {"b": 1}, "args.c": 2}), &["args.e"]);
        let reads = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(lacking(&reads(&["args.a.b", "args.c", "args.e"]), &logged).is_empty());
        assert_eq!(
            lacking(&reads(&["args.ab", "args.d"]), &logged),
            ["args.ab", "args.d"]
        );
        assert_eq!(
            lacking(&reads(&["identity.claims.groups"]), &logged),
            ["identity.claims.groups"]
        );
        assert_eq!(
            lacking(&reads(&["args.x"]), &line(Value::Null, &[])),
            ["args.x"]
        );
        let all = line(json!({"args": {"x": 1}}), &[]);
        assert!(lacking(&reads(&["args.x.y"]), &all).is_empty());
    }

    #[test]
    fn arguments_are_rebuilt_from_their_logged_paths() {
        let logged = json!({"args.a.b": 1, "args.c": "x"});
        assert_eq!(
            rebuild(logged.as_object()),
            json!({"a": {"b": 1}, "c": "x"})
        );
        let whole = json!({"args": {"n": [1, 2]}});
        assert_eq!(rebuild(whole.as_object()), json!({"n": [1, 2]}));
    }
}
