//! `tollgate test`: policy tests, run with the proxy's own parts.
//!
//! ```text
//! test file ── policies (any format, merged as the operator merges a pod's) ── PolicySet
//!   case ── fresh CounterStore, Approvals and Clock (a test clock: time moves only by steps)
//!     call      ── CounterStore::decide ── Allow: reserved ──────────────────> allow | audit
//!                                        ├─ a counter full / Deny ───────────> deny
//!                                        └─ Approve ── Approvals::request ─ Admit ─ decide_approved
//!                                                                           └─ Hold ─> approve
//!     upstream  ── not-run: CounterStore::rollback (what the proxy does on a 4xx or no server)
//!     approval  ── Approvals::decide | the clock moved to its expiry, swept
//!     list      ── Enforced::visibility (what filters a tools/list answer)
//!     wait      ── the clock moves, approvals swept
//! ```
//!
//! The counters, windows, refunds and approvals are the proxy's own types, driven as its
//! request path drives them (`proxy::decide`), with a clock the test moves: a case reads what
//! the fourth call in an hour gets, not a second model of it. What a test cannot reach is the
//! HTTP around them (which answers mean "not run" is the proxy's, tested in `proxy::inspect`).

pub mod file;
pub mod replay;
pub mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_api::validate::parse_duration;
use tollgate_api::{Call, Decision, DefaultAction, Denial, EffectivePolicy, Identity, PolicySet};

use crate::approvals::{Approvals, Asked, Hold, Ticket, Waited};
use crate::clock::Clock;
use crate::policy::Enforced;
use crate::policy::counters::{CounterStore, Reserved};
use crate::telemetry::audit::AuditLog;
use file::{ApprovalStep, Caller, Expect, Kind, Step, TestFile, Upstream};

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

/// What a call came to.
struct Outcome {
    kind: Kind,
    rule: Option<String>,
    policy: Option<String>,
    reason: Option<String>,
}

impl Outcome {
    fn denied(d: Denial) -> Self {
        Outcome {
            kind: Kind::Deny,
            rule: Some(d.rule),
            policy: Some(d.policy),
            reason: Some(d.reason),
        }
    }

    fn allowed(kind: Kind, audit: Option<Denial>, reason: Option<String>) -> Self {
        match audit {
            Some(d) => Outcome {
                kind,
                rule: Some(d.rule),
                policy: Some(d.policy),
                reason: Some(d.reason),
            },
            None => Outcome {
                kind,
                rule: None,
                policy: None,
                reason,
            },
        }
    }

    fn describe(&self) -> String {
        let mut out = self.kind.as_str().to_string();
        if let Some(rule) = &self.rule {
            out.push_str(&format!(" by rule {rule:?}"));
        }
        if let Some(policy) = &self.policy {
            out.push_str(&format!(" of {policy}"));
        }
        if let Some(reason) = &self.reason {
            out.push_str(&format!(": {reason}"));
        }
        out
    }
}

/// A call held for a person, as the proxy holds it: answered when the person decides within
/// the hold time, else told to retry once its approval is approved.
struct HeldCall {
    name: String,
    hold: Option<Hold>,
    until: Instant,
    tool: String,
    args: Value,
    who: Identity,
    session: Option<String>,
}

/// One case as it runs.
struct Run {
    set: Arc<Enforced>,
    clock: Clock,
    counters: CounterStore,
    approvals: Arc<Approvals>,
    /// What the last call that went on reserved, until an `upstream` step settles it.
    went_on: Option<Reserved>,
    /// The last held call: its approval, and until its hold time passes, the call waiting.
    held: Option<HeldCall>,
    /// The last call's caller and session: whose counters a later step reads unless it says.
    last: (Identity, Option<String>),
    failures: Vec<String>,
}

impl Run {
    fn new(set: PolicySet, start: Duration) -> Self {
        let clock = Clock::manual(start);
        Run {
            set: Arc::new(Enforced::new(set)),
            counters: CounterStore::with_clock(clock.clone()),
            approvals: Approvals::with_clock(
                AuditLog::disabled(),
                None,
                "tollgate-test".into(),
                Duration::from_secs(24 * 3600),
                clock.clone(),
            ),
            clock,
            went_on: None,
            held: None,
            last: (Identity::anonymous(), None),
            failures: Vec::new(),
        }
    }

    fn pass_time(&self, by: Duration) {
        self.clock.advance(by);
        self.approvals.sweep(self.clock.instant());
    }

    async fn step(&mut self, n: usize, step: &Step) {
        if let Some(after) = step.after.as_deref().and_then(parse_duration) {
            self.pass_time(after);
        }
        let times = step.repeat.unwrap_or(1);
        for i in 1..=times {
            let what = match times {
                1 => format!("step {n}"),
                _ => format!("step {n} ({i} of {times})"),
            };
            if let Err(e) = self.once(step).await {
                self.failures.push(format!("{what}, {}: {e}", label(step)));
                // A repeated step that went wrong once says so once.
                break;
            }
        }
    }

    async fn once(&mut self, step: &Step) -> Result<(), String> {
        // A call names its caller (anonymous unless `as` says); any other step reads the last
        // call's counters unless it names a caller or session itself.
        let (who, session) = match (&step.call, &step.caller) {
            (Some(_), caller) => (identity(caller.as_ref()), step.session.clone()),
            (None, Some(caller)) => (identity(Some(caller)), step.session.clone()),
            (None, None) => (
                self.last.0.clone(),
                step.session.clone().or_else(|| self.last.1.clone()),
            ),
        };
        if step.call.is_some() {
            self.last = (who.clone(), session.clone());
        }
        let expect = step.expect.clone().unwrap_or_default();
        let mut wrong = Vec::new();
        if let Some(tool) = &step.call {
            let args = step
                .args
                .clone()
                .unwrap_or_else(|| Value::Object(Default::default()));
            let outcome = self.call(tool, &args, &who, session.as_deref()).await;
            check_outcome(&expect, &outcome, &mut wrong);
        } else if let Some(tools) = &step.list {
            let mut visibility = self.set.visibility(&who);
            let (shown, hidden): (Vec<&String>, Vec<&String>) =
                tools.iter().partition(|t| visibility.visible(t));
            drop(visibility);
            check_set("shown", expect.shown.as_deref(), &shown, &mut wrong);
            check_set("hidden", expect.hidden.as_deref(), &hidden, &mut wrong);
        } else if let Some(upstream) = step.upstream {
            let reserved = self
                .went_on
                .take()
                .ok_or("no call went on to the server since the last upstream step")?;
            if upstream == Upstream::NotRun {
                self.counters.rollback(reserved);
            }
        } else if let Some(approval) = step.approval {
            let held = self
                .held
                .as_mut()
                .ok_or("no call has been held for a person")?;
            let name = held.name.clone();
            let by = step.by.as_deref().unwrap_or("tollgate-test");
            match approval {
                ApprovalStep::Approve | ApprovalStep::Deny => {
                    let approve = approval == ApprovalStep::Approve;
                    self.approvals
                        .decide(&name, approve, by, step.reason.as_deref())
                        .map_err(|e| e.to_string())?;
                    // Decided within its hold time, the held call hears it at once.
                    let waiting = match self.clock.instant() < held.until {
                        true => held.hold.take(),
                        false => None,
                    };
                    match waiting {
                        Some(hold) => {
                            let outcome = self.settle(hold).await;
                            check_outcome(&expect, &outcome, &mut wrong);
                        }
                        None if expect.decision.is_some()
                            || expect.reason.is_some()
                            || expect.rule.is_some()
                            || expect.policy.is_some() =>
                        {
                            wrong.push(format!(
                                "the call held on approval {name} was answered when its hold time passed; its retry is a call step"
                            ));
                        }
                        None => {}
                    }
                }
                ApprovalStep::Expire => {
                    let at = self
                        .approvals
                        .expiry(&name)
                        .ok_or_else(|| format!("approval {name} has ended already"))?;
                    let left = at.saturating_duration_since(self.clock.instant());
                    self.pass_time(left + Duration::from_millis(1));
                }
            }
        } else if let Some(wait) = step.wait.as_deref().and_then(parse_duration) {
            self.pass_time(wait);
        }
        self.check_counters(&expect, &who, session.as_deref(), &mut wrong);
        match wrong.is_empty() {
            true => Ok(()),
            false => Err(wrong.join("; ")),
        }
    }

    /// Decides a call as the proxy's request path does (`proxy::decide`), and keeps what it
    /// reserved for the `upstream` step after it.
    async fn call(
        &mut self,
        tool: &str,
        args: &Value,
        who: &Identity,
        session: Option<&str>,
    ) -> Outcome {
        let call = Call {
            tool,
            args: Some(args),
            session,
        };
        let counted = self.counters.decide(&self.set, &call, who).await;
        let audit = counted.verdict.audit;
        let kind = match audit {
            Some(_) => Kind::Audit,
            None => Kind::Allow,
        };
        match counted.verdict.decision {
            Decision::Deny(d) => Outcome::denied(d),
            Decision::Allow { .. } => match counted.reserved {
                Ok(reserved) => {
                    self.went_on = Some(reserved);
                    Outcome::allowed(kind, audit, None)
                }
                Err(full) => Outcome::denied(full),
            },
            Decision::Approve {
                policy,
                rule,
                timeout,
                valid_for,
                show,
                ..
            } => {
                let asked = Asked {
                    tool,
                    args,
                    identity: who.key(),
                    session,
                    policy: &policy,
                    rule: &rule,
                    valid_for,
                    show: &show,
                };
                match self.approvals.request(&asked) {
                    Ticket::Hold(hold) => {
                        let reason = format!("held for a person on approval {}", hold.name);
                        self.held = Some(HeldCall {
                            name: hold.name.clone(),
                            hold: Some(hold),
                            until: self.clock.instant() + timeout,
                            tool: tool.to_string(),
                            args: args.clone(),
                            who: who.clone(),
                            session: session.map(str::to_string),
                        });
                        Outcome {
                            kind: Kind::Approve,
                            rule: Some(rule),
                            policy: Some(policy),
                            reason: Some(reason),
                        }
                    }
                    Ticket::Admit(approval) => self.go_on_approved(&call, who, &approval).await,
                }
            }
        }
    }

    /// An approved call, decided again as it goes on (as `proxy::decide`'s `decide_again`).
    async fn go_on_approved(
        &mut self,
        call: &Call<'_>,
        who: &Identity,
        approval: &crate::approvals::Approval,
    ) -> Outcome {
        let again = self.counters.decide_approved(&self.set, call, who).await;
        match (again.verdict.decision, again.reserved) {
            (Decision::Deny(d), _) | (_, Err(d)) => Outcome::denied(d),
            (_, Ok(reserved)) => {
                self.went_on = Some(reserved);
                let by = approval.decided_by.as_deref().unwrap_or("?");
                Outcome::allowed(
                    Kind::Allow,
                    None,
                    Some(format!("approved by {by} (approval {})", approval.name)),
                )
            }
        }
    }

    /// What a call still held gets once its approval is decided.
    async fn settle(&mut self, hold: Hold) -> Outcome {
        let waited = self.approvals.wait(hold, Duration::ZERO).await;
        let held = self.held.take().expect("a call is held");
        match waited {
            Waited::Approved(a) => {
                let call = Call {
                    tool: &held.tool,
                    args: Some(&held.args),
                    session: held.session.as_deref(),
                };
                let outcome = self.go_on_approved(&call, &held.who, &a).await;
                self.held = Some(HeldCall { hold: None, ..held });
                outcome
            }
            Waited::Denied(a) => Outcome::denied(Denial {
                reason: a.denial_reason(),
                policy: a.policy.clone(),
                rule: a.rule.clone(),
                ..Default::default()
            }),
            Waited::Undecided(a) => Outcome {
                kind: Kind::Approve,
                rule: Some(a.rule.clone()),
                policy: Some(a.policy.clone()),
                reason: Some(format!("approval {} is {:?}", a.name, a.phase)),
            },
            Waited::Failed(why) => Outcome::denied(Denial {
                reason: why,
                ..Default::default()
            }),
        }
    }

    fn check_counters(
        &self,
        expect: &Expect,
        who: &Identity,
        session: Option<&str>,
        wrong: &mut Vec<String>,
    ) {
        for (name, want) in &expect.counters {
            match self.counter(name, who, session) {
                Ok(got) if got == *want => {}
                Ok(got) => wrong.push(format!("counter {name}: want {want}, got {got}")),
                Err(e) => wrong.push(format!("counter {name}: {e}")),
            }
        }
    }

    /// `TOOL.COUNTER[@POLICY]` for this caller and session.
    fn counter(&self, name: &str, who: &Identity, session: Option<&str>) -> Result<u64, String> {
        let (path, policy) = match name.rsplit_once('@') {
            Some((path, policy)) => (path, Some(policy)),
            None => (name, None),
        };
        let (entry, counter) = path
            .rsplit_once('.')
            .ok_or("name it TOOL.COUNTER, e.g. create_issue._rate_hour")?;
        let named: Vec<_> = self
            .set
            .counters_named(entry, counter)
            .into_iter()
            .filter(|c| policy.is_none_or(|p| *c.policy == *p))
            .collect();
        let one = match named.as_slice() {
            [one] => one,
            [] => return Err("no policy of the test counts it".into()),
            many => {
                let policies: Vec<&str> = many.iter().map(|c| &*c.policy).collect();
                return Err(format!(
                    "several policies count it ({}); add @POLICY",
                    policies.join(", ")
                ));
            }
        };
        let call = Call {
            tool: entry,
            args: None,
            session,
        };
        Ok(self.counters.current(&one.key(&call, who), one))
    }
}

fn check_outcome(expect: &Expect, got: &Outcome, wrong: &mut Vec<String>) {
    let mut off = false;
    if let Some(want) = expect.decision {
        off |= want != got.kind;
    }
    let field = |want: &Option<String>, got: &Option<String>, exact: bool| match (want, got) {
        (None, _) => false,
        (Some(w), Some(g)) if exact => w != g,
        (Some(w), Some(g)) => !g.contains(w.as_str()),
        (Some(_), None) => true,
    };
    off |= field(&expect.rule, &got.rule, true);
    off |= field(&expect.policy, &got.policy, true);
    off |= field(&expect.reason, &got.reason, false);
    if !off {
        return;
    }
    let mut want = Vec::new();
    if let Some(d) = expect.decision {
        want.push(d.as_str().to_string());
    }
    if let Some(r) = &expect.rule {
        want.push(format!("rule {r:?}"));
    }
    if let Some(p) = &expect.policy {
        want.push(format!("policy {p}"));
    }
    if let Some(r) = &expect.reason {
        want.push(format!("a reason with {r:?}"));
    }
    wrong.push(format!("want {}, got {}", want.join(", "), got.describe()));
}

fn check_set(what: &str, want: Option<&[String]>, got: &[&String], wrong: &mut Vec<String>) {
    let Some(want) = want else { return };
    let mut want: Vec<&str> = want.iter().map(String::as_str).collect();
    let mut got: Vec<&str> = got.iter().map(|s| s.as_str()).collect();
    want.sort_unstable();
    got.sort_unstable();
    if want != got {
        wrong.push(format!("{what}: want {want:?}, got {got:?}"));
    }
}

fn label(step: &Step) -> String {
    if let Some(tool) = &step.call {
        return format!("call {tool}");
    }
    if step.list.is_some() {
        return "list".into();
    }
    if let Some(u) = step.upstream {
        return format!("upstream {u:?}").to_lowercase();
    }
    if let Some(a) = step.approval {
        return format!("approval {a:?}").to_lowercase();
    }
    format!("wait {}", step.wait.as_deref().unwrap_or(""))
}

fn identity(caller: Option<&Caller>) -> Identity {
    match caller {
        None => Identity::anonymous(),
        Some(Caller::Subject(s)) => Identity::subject(s.clone()),
        Some(Caller::Identity(f)) => {
            let subject = f.subject.clone().or_else(|| {
                let (ns, name) = f.service_account.as_deref()?.split_once('/')?;
                Some(format!("system:serviceaccount:{ns}:{name}"))
            });
            let mut who = subject.map(Identity::subject).unwrap_or_default();
            if f.service_account.is_some() {
                who.service_account = f.service_account.clone();
            }
            who.claims = f.claims.clone();
            who
        }
    }
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
