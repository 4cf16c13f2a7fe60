//! `tollgate test` and `tollgate replay`: policies tested, and audit logs decided again, with the
//! proxy's own parts.
//!
//! ```text
//! PATH... ── discover (*tollgate-test.yaml) ── read (every step checked) ── file::TestFile
//!   policies ── load_set (any format, merged as the operator merges a pod's) ── PolicySet
//!   each case ── run::Run: fresh counters, approvals and a test clock, step by step ── failures
//!   ── report: text as `go test` prints it, JUnit; exit 0 | 1 | 2
//! audit logs ── replay: each call decided again under other policies ── what would change
//! ```
//!
//! The counters, windows, refunds and approvals are the proxy's own types, driven as its
//! request path drives them (`proxy::decide`), with a clock the test moves: a case reads what
//! the fourth call in an hour gets, not a second model of it. What a test cannot reach is the
//! HTTP around them (which answers mean "not run" is the proxy's, tested in `proxy::inspect`).

pub mod file;
pub mod replay;
pub mod report;
mod run;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tollgate_api::validate::parse_duration;
use tollgate_api::{DefaultAction, EffectivePolicy, PolicySet};

use file::{ApprovalStep, Caller, Step, TestFile};
use run::Run;

/// Where a test clock starts unless the file says: a fixed instant, so that a case meets
/// the same window boundaries on every run.
pub const DEFAULT_START: &str = "2026-01-05T00:00:00Z";

/// A test file's outcome.
pub struct Suite {
    pub path: PathBuf,
    pub name: String,
    /// Why the file could not be run (unreadable, invalid, a policy that does not load).
    pub error: Option<String>,
    pub cases: Vec<CaseResult>,
}

impl Suite {
    pub fn failed(&self) -> usize {
        self.cases.iter().filter(|c| !c.failures.is_empty()).count()
    }
}

pub struct CaseResult {
    pub name: String,
    /// Every expectation a step did not meet, in order; empty when the case passed.
    pub failures: Vec<String>,
    pub elapsed: Duration,
}

/// The test files under `paths`: a file named is read whatever its name; a directory is
/// searched recursively for `*tollgate-test.yaml` (or `.yml`), in name order.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut found = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if meta.is_dir() {
            walk(p, &mut found)?;
        } else {
            found.push(p.clone());
        }
    }
    Ok(found)
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> Result<(), String> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue;
        }
        if p.is_dir() {
            walk(&p, found)?;
        } else if name.ends_with("tollgate-test.yaml") || name.ends_with("tollgate-test.yml") {
            found.push(p);
        }
    }
    Ok(())
}

/// How `tollgate test` and `kubectl tollgate test` run and report.
pub struct Options {
    /// Test files, or directories searched for them.
    pub paths: Vec<PathBuf>,
    /// Only the cases whose name contains this.
    pub filter: Option<String>,
    /// Where to write JUnit XML.
    pub junit: Option<PathBuf>,
    /// Print passing cases too.
    pub verbose: bool,
}

/// Runs the test files of `opts.paths` (against `policy` instead of each file's own
/// `policies`, where given: a pod's effective policy), prints the results and writes JUnit.
/// Returns the exit code: 0 when every case passed, 1 when one failed, 2 when a file could
/// not be run (as `go test` and `kyverno test` tell a pipeline).
pub async fn run_and_report(opts: &Options, policy: Option<&PolicySet>) -> u8 {
    let files = match discover(&opts.paths) {
        Ok(f) if f.is_empty() => {
            eprintln!("no test files (*tollgate-test.yaml) under the paths given");
            return 2;
        }
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let mut suites = Vec::with_capacity(files.len());
    for f in &files {
        suites.push(run_file(f, opts.filter.as_deref(), policy).await);
    }
    print!("{}", report::text(&suites, opts.verbose));
    if let Some(path) = &opts.junit
        && let Err(e) = std::fs::write(path, report::junit(&suites))
    {
        eprintln!("{}: cannot write: {e}", path.display());
        return 2;
    }
    if suites
        .iter()
        .all(|s| s.cases.is_empty() && s.error.is_none())
    {
        match &opts.filter {
            Some(f) => eprintln!("no case's name contains {f:?}"),
            None => eprintln!("no cases in the test files"),
        }
        return 2;
    }
    if suites.iter().any(|s| s.error.is_some()) {
        2
    } else if suites.iter().any(|s| s.failed() > 0) {
        1
    } else {
        0
    }
}

/// Runs one test file's cases whose name contains `filter`, against `policy` where given
/// (else the file's `policies`).
pub async fn run_file(path: &Path, filter: Option<&str>, policy: Option<&PolicySet>) -> Suite {
    let mut suite = Suite {
        path: path.to_path_buf(),
        name: path.display().to_string(),
        error: None,
        cases: Vec::new(),
    };
    let file = match read(path) {
        Ok(f) => f,
        Err(e) => {
            suite.error = Some(e);
            return suite;
        }
    };
    if let Some(name) = &file.name {
        suite.name = name.clone();
    }
    let (set, start) = match prepare(path, &file, policy) {
        Ok(p) => p,
        Err(e) => {
            suite.error = Some(e);
            return suite;
        }
    };
    for case in &file.cases {
        if filter.is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        let t0 = Instant::now();
        let mut run = Run::new(set.clone(), start);
        for (i, step) in case.steps.iter().enumerate() {
            run.step(i + 1, step).await;
        }
        suite.cases.push(CaseResult {
            name: case.name.clone(),
            failures: run.failures,
            elapsed: t0.elapsed(),
        });
    }
    suite
}

fn read(path: &Path) -> Result<TestFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let file: TestFile =
        serde_yaml::from_str(&text).map_err(|e| format!("not a test file: {e}"))?;
    if file.cases.is_empty() {
        return Err("cases: a test file has at least one case".into());
    }
    for (c, case) in file.cases.iter().enumerate() {
        for (s, step) in case.steps.iter().enumerate() {
            check_step(step).map_err(|e| format!("cases[{c}].steps[{s}]: {e}"))?;
        }
    }
    Ok(file)
}

/// A step does one thing, and what it expects fits it.
fn check_step(step: &Step) -> Result<(), String> {
    let actions = [
        step.call.is_some(),
        step.list.is_some(),
        step.upstream.is_some(),
        step.approval.is_some(),
        step.wait.is_some(),
    ];
    if actions.iter().filter(|a| **a).count() != 1 {
        return Err("a step has exactly one of call, list, upstream, approval or wait".into());
    }
    for (field, value) in [("after", &step.after), ("wait", &step.wait)] {
        if let Some(v) = value
            && parse_duration(v).is_none()
        {
            return Err(format!(
                "{field}: {v:?} is not a duration; write e.g. 90s, 10m or 1h"
            ));
        }
    }
    if step.call.is_none() && step.args.is_some() {
        return Err("args belong to a call".into());
    }
    if step.call.is_none() && step.annotations.is_some() {
        return Err("annotations belong to a call (the called tool's pinned annotations)".into());
    }
    if let Some(a) = &step.annotations
        && !a.is_object()
    {
        return Err("annotations must be a mapping, as a tool's annotations are".into());
    }
    if step.approval.is_none() && (step.by.is_some() || step.reason.is_some()) {
        return Err(
            "by and reason belong to an approval step (a call's expected reason is expect.reason)"
                .into(),
        );
    }
    if let Some(Caller::Identity(f)) = &step.caller
        && f.subject.is_some()
        && f.service_account.is_some()
    {
        return Err(
            "as: give subject or serviceAccount, not both (a service account's subject is system:serviceaccount:NS:NAME)"
                .into(),
        );
    }
    if let Some(args) = &step.args
        && !args.is_object()
    {
        return Err("args must be a mapping (the call's arguments object)".into());
    }
    if step.approval == Some(ApprovalStep::Deny) && step.reason.is_none() {
        return Err("a denied approval needs a reason, as `tollgate approvals deny` does".into());
    }
    if let Some(e) = &step.expect {
        // A held call is answered when its approval is approved or denied, not when it expires.
        let decides = step.call.is_some()
            || matches!(
                step.approval,
                Some(ApprovalStep::Approve | ApprovalStep::Deny)
            );
        if !decides
            && (e.decision.is_some()
                || e.rule.is_some()
                || e.policy.is_some()
                || e.reason.is_some())
        {
            return Err(
                "decision, rule, policy and reason are expected of a call, or of an approval approved or denied"
                    .into(),
            );
        }
        if step.list.is_none() && (e.shown.is_some() || e.hidden.is_some()) {
            return Err("shown and hidden are expected of a list".into());
        }
    }
    if step.repeat == Some(0) {
        return Err("repeat must be at least 1".into());
    }
    Ok(())
}

/// The policy set of `files` (any format; several McpPolicy documents merged as the operator
/// merges a pod's, cluster policies first, each kind in name order), with the cluster default
/// and the decision for ungoverned callers (`None`: the default's, as on a cluster).
pub fn load_set(
    files: &[PathBuf],
    default_action: DefaultAction,
    ungoverned: Option<DefaultAction>,
) -> Result<PolicySet, String> {
    let mut policies = Vec::new();
    for at in files {
        let origin = at.display().to_string();
        let text = std::fs::read_to_string(at)
            .map_err(|e| format!("policy {origin}: cannot read: {e}"))?;
        let loaded = tollgate_api::load_file(&text, &origin)
            .map_err(|problems| format!("policy {origin} is invalid:\n{problems}"))?;
        policies.extend(loaded.into_iter().map(|l| l.policy));
    }
    // The operator's order (`EffectivePolicy::for_workload`), which decides whose rule a
    // denial names; files in other formats keep theirs, after.
    let rank = |name: &str| match name.split('/').next() {
        Some("mcpclusterpolicy") => 0,
        Some("mcppolicy") => 1,
        _ => 2,
    };
    policies.sort_by(|a, b| {
        let (ra, rb) = (rank(&a.name), rank(&b.name));
        ra.cmp(&rb).then_with(|| match ra {
            2 => std::cmp::Ordering::Equal,
            _ => a.name.cmp(&b.name),
        })
    });
    let effective = EffectivePolicy {
        revision: 1,
        default_action,
        ungoverned_action: ungoverned,
        policies,
    };
    effective
        .compile()
        .map_err(|problems| format!("the policies do not compile together:\n{problems}"))
}

/// The test's policy set and where its clock starts.
fn prepare(
    path: &Path,
    file: &TestFile,
    policy: Option<&PolicySet>,
) -> Result<(PolicySet, Duration), String> {
    let set = match policy {
        Some(set) => set.clone(),
        None => {
            let dir = path.parent().unwrap_or(Path::new("."));
            if file.policies.is_empty() {
                return Err("policies: name at least one policy file".into());
            }
            let files: Vec<PathBuf> = file.policies.iter().map(|p| dir.join(p)).collect();
            let action = |d: Option<file::Default>, or: DefaultAction| match d {
                Some(file::Default::Allow) => DefaultAction::Allow,
                Some(file::Default::Deny) => DefaultAction::Deny,
                None => or,
            };
            load_set(
                &files,
                action(file.default_action, DefaultAction::Allow),
                Some(action(file.ungoverned_callers, DefaultAction::Deny)),
            )?
        }
    };
    let start = file.clock.as_deref().unwrap_or(DEFAULT_START);
    let start = parse_utc(start).ok_or_else(|| {
        format!("clock: {start:?} is not an RFC 3339 UTC time such as {DEFAULT_START}")
    })?;
    Ok((set, start))
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` as time since the Unix epoch.
pub fn parse_utc(s: &str) -> Option<Duration> {
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (time, frac) = match time.split_once('.') {
        Some((t, f)) => (t, Some(f)),
        None => (time, None),
    };
    let mut t = time.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let nanos = match frac {
        Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) => {
            f.parse::<u32>().ok()? * 10u32.pow(9 - f.len() as u32)
        }
        Some(_) => return None,
        None => 0,
    };
    Some(Duration::new(
        days * 86_400 + hh * 3600 + mm * 60 + ss,
        nanos,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_read_as_the_audit_log_writes_them() {
        let t = parse_utc("2026-01-05T00:00:00Z").unwrap();
        assert_eq!(t.as_secs(), 1_767_571_200);
        assert_eq!(
            crate::telemetry::audit::format_second(t.as_secs()),
            "2026-01-05T00:00:00"
        );
        let t = parse_utc("2024-02-29T23:59:59.250Z").unwrap();
        assert_eq!(
            crate::telemetry::audit::format_second(t.as_secs()),
            "2024-02-29T23:59:59"
        );
        assert_eq!(t.subsec_millis(), 250);
        for bad in [
            "2026-13-01T00:00:00Z",
            "2026-01-01 00:00:00Z",
            "2026-01-01T00:00:00",
        ] {
            assert!(parse_utc(bad).is_none(), "{bad}");
        }
    }
}
