//! One case as it runs: the proxy's own counters, approvals and `tools/list` filter on a test
//! clock, driven step by step as the proxy's request path drives them (`proxy::decide`).
//!
//! ```text
//! call      ── CounterStore::decide ── Allow: reserved ────────────────────> allow | audit
//!                                    ├─ a counter full / Deny ─────────────> deny
//!                                    └─ Approve ── Approvals::request ─ Admit ─ decide_approved
//!                                                                       └─ Hold ─> approve
//! upstream  ── not-run: CounterStore::rollback
//! approval  ── Approvals::decide ─ within the hold time: the held call answered
//!           └─ expire: the clock moved to its expiry, swept
//! list      ── Enforced::visibility
//! wait      ── the clock moves, approvals swept
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_api::validate::parse_duration;
use tollgate_api::{Call, Decision, Denial, Identity, PolicySet};

use super::file::{ApprovalStep, Caller, Expect, Kind, Step, Upstream};
use crate::approvals::{Approvals, Asked, Hold, Ticket, Waited};
use crate::clock::Clock;
use crate::policy::Enforced;
use crate::policy::counters::{CounterStore, Reserved};
use crate::telemetry::audit::AuditLog;

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
    /// The hints the call was made with (what its approval's call is decided again with).
    hints: Option<tollgate_api::Hints>,
}

/// One case as it runs.
pub(super) struct Run {
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
    /// The hints the last call's tool was pinned with (`annotations` on a call step), where
    /// the set pins and enforces as the proxy needs to select by them.
    hints: Option<tollgate_api::Hints>,
    pub(super) failures: Vec<String>,
}

impl Run {
    pub(super) fn new(set: PolicySet, start: Duration) -> Self {
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
            hints: None,
            failures: Vec::new(),
        }
    }

    fn pass_time(&self, by: Duration) {
        self.clock.advance(by);
        self.approvals.sweep(self.clock.instant());
    }

    pub(super) async fn step(&mut self, n: usize, step: &Step) {
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
            let pinned = self
                .set
                .pinning
                .as_ref()
                .is_some_and(|p| p.mode == tollgate_api::PinMode::Enforce);
            self.hints = step
                .annotations
                .as_ref()
                .filter(|_| pinned)
                .map(|a| tollgate_api::Hints::of(Some(a)));
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
            hints: self.hints,
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
                            hints: self.hints,
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
                    hints: held.hints,
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
            hints: None,
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
