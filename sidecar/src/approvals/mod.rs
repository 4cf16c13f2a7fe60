//! Approvals: a person decides the calls a policy marks `approve`.
//!
//! ```text
//! call ─ approve rule ─> request(fingerprint) ─ an approved, unexpired, unused approval
//!                                              │  for exactly this call ─> Admit (it is Used)
//!                                              ├─ one pending for it ─> Hold on that one
//!                                              └─ none ─> a new Pending one ─> Hold
//! Hold ─ wait(hold time) ─> Approved: admitted (Used, exactly once)
//!                        ├─> Denied: the person's reason
//!                        └─> still Pending: "retry once approved" (-32003, name and expiry)
//! person ─ decide(name, approve | deny, by, reason) ─ only a Pending, unexpired one
//! sweeper ─ every second ─> Pending/Approved past expiry: Expired; ended ones dropped after
//!                           the retention time
//! ```
//!
//! A fingerprint is the tool, the arguments written canonically ([`canonical`]: keys sorted,
//! numbers by value), the caller's identity and the workload, compared whole: an approval
//! cannot be stretched to a call that differs in any of them. A timeout never approves.
//! Every step is an audit line (`kind: approval`), and an event for the webhook if one is set
//! ([`notify`]).

pub mod admin;
pub mod client;
pub mod cluster;
pub mod notify;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use tollgate_api::{ApprovalEvent, ApprovalVerdict, NotNow, call_key};

use crate::clock::Clock;
use crate::telemetry::audit::{AuditLog, Record, format_second, now_rfc3339};

/// Where an approval is in its life, and how it moves on: one state machine for both planes
/// ([`ApprovalPhase::next`]).
pub use tollgate_api::ApprovalPhase as Phase;

/// One call waiting for (or decided by) a person, as people and tools see it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    pub name: String,
    pub tool: String,
    pub identity: String,
    pub workload: String,
    pub policy: String,
    pub rule: String,
    /// Only the argument paths the rule's `approval.show` names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Value>,
    pub phase: Phase,
    /// RFC 3339, UTC.
    pub created: String,
    /// When it expires if nothing happens: undecided, from the call; approved, from the decision.
    pub expires: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Approval {
    /// What the agent is told of a call a person refused.
    pub fn denial_reason(&self) -> String {
        format!(
            "{} denied approval {}: {}",
            self.decided_by.as_deref().unwrap_or("a person"),
            self.name,
            self.reason.as_deref().unwrap_or("no reason given")
        )
    }
}

/// A call an `approve` rule applies to.
pub struct Asked<'a> {
    pub tool: &'a str,
    pub args: &'a Value,
    pub identity: &'a str,
    pub session: Option<&'a str>,
    pub policy: &'a str,
    pub rule: &'a str,
    pub valid_for: Duration,
    pub show: &'a [String],
}

/// What becomes of a call an `approve` rule applies to, at once.
pub enum Ticket {
    /// An approval of exactly this call was waiting: it is used now, and the call goes on.
    Admit(Box<Approval>),
    /// Hold the call on this approval.
    Hold(Hold),
}

/// A call held on an approval.
pub struct Hold {
    pub name: String,
    on: HoldOn,
}

enum HoldOn {
    /// This proxy's own store tells the holder when the phase changes.
    Local(watch::Receiver<Phase>),
    /// The operator keeps it: the approval as last heard of.
    Cluster(Box<Approval>),
}

/// Where approvals are kept: in this proxy (standalone), or as McpApprovals the operator keeps
/// for the pod.
#[derive(Clone)]
pub enum Backend {
    Local(Arc<Approvals>),
    Cluster(Arc<cluster::Cluster>),
}

/// A call an `approve` rule applies to, owned, for a backend that answers later.
#[derive(Clone, Debug)]
pub struct OwnedAsk {
    pub tool: String,
    pub args: Value,
    pub identity: String,
    pub policy: String,
    pub rule: String,
    pub valid_for: Duration,
    pub show: Vec<String>,
}

/// What a held call ends as.
#[derive(Debug, PartialEq)]
pub enum Waited {
    /// Approved in time: the approval is used by this call.
    Approved(Approval),
    /// A person refused it.
    Denied(Approval),
    /// Nobody decided in the hold time (or the approval expired): the agent is told to retry
    /// the same call once this approval is approved.
    Undecided(Approval),
    /// Nobody could be asked (the control plane did not answer): nothing admits the call.
    Failed(String),
}

/// Why a person's decision was not taken.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum DecideError {
    #[error("no approval is named {0:?}")]
    NotFound(String),
    #[error("approval {name} is {phase:?}: only a Pending approval can be decided")]
    Decided { name: String, phase: Phase },
    #[error("a denial needs a reason, for the agent and the audit log")]
    NoReason,
}

struct Entry {
    view: Approval,
    /// The call's fingerprint.
    key: Arc<str>,
    valid_for: Duration,
    expires_at: Instant,
    /// When it left Pending/Approved (for the retention time).
    ended_at: Option<Instant>,
    phase: watch::Sender<Phase>,
}

impl Entry {
    fn live(&self) -> bool {
        !self.view.phase.is_final()
    }
}

#[derive(Default)]
struct State {
    /// Boxed: a table keeps room for more entries than it holds, and an entry is large.
    by_name: HashMap<String, Box<Entry>>,
    /// The live (Pending or Approved) approval of each fingerprint.
    by_key: HashMap<Arc<str>, String>,
}

/// The approvals of one proxy.
pub struct Approvals {
    state: Mutex<State>,
    audit: AuditLog,
    notifier: Option<notify::Notifier>,
    workload: String,
    retention: Duration,
    serial: AtomicU64,
    seed: foldhash::fast::RandomState,
    clock: Clock,
}

impl Approvals {
    /// `workload`: what an approval is bound to besides the call and the caller (the pod, or
    /// the upstream standalone). `retention`: how long ended approvals stay listed.
    pub fn new(
        audit: AuditLog,
        notifier: Option<notify::Notifier>,
        workload: String,
        retention: Duration,
    ) -> Arc<Self> {
        Self::with_clock(audit, notifier, workload, retention, Clock::default())
    }

    /// The same, its approvals expiring by `clock` (a test's, for `tollgate test`).
    pub fn with_clock(
        audit: AuditLog,
        notifier: Option<notify::Notifier>,
        workload: String,
        retention: Duration,
        clock: Clock,
    ) -> Arc<Self> {
        Arc::new(Approvals {
            state: Mutex::default(),
            audit,
            notifier,
            workload,
            retention,
            serial: AtomicU64::new(0),
            seed: foldhash::fast::RandomState::default(),
            clock,
        })
    }

    /// Expires and forgets approvals once a second, for as long as the store lives.
    pub fn sweep_every_second(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { return };
                me.sweep(me.clock.instant());
            }
        });
    }

    /// A call an `approve` rule applies to: admitted by an approval waiting for it, or held.
    pub fn request(&self, asked: &Asked<'_>) -> Ticket {
        let key: Arc<str> = fingerprint(asked, &self.workload).into();
        let now = self.clock.instant();
        let mut state = self.state.lock();
        if let Some(name) = state.by_key.get(&key).cloned() {
            let entry = state
                .by_name
                .get_mut(&name)
                .expect("indexed approvals exist");
            if entry.expires_at <= now {
                let _ = self.step(entry, ApprovalEvent::Expire, now);
                state.by_key.remove(&key);
            } else if self.step(entry, ApprovalEvent::Use, now).is_ok() {
                let view = entry.view.clone();
                state.by_key.remove(&key);
                return Ticket::Admit(Box::new(view));
            } else {
                self.record(&entry.view, "held", asked.session);
                return Ticket::Hold(Hold {
                    name,
                    on: HoldOn::Local(entry.phase.subscribe()),
                });
            }
        }
        let name = self.name_for(asked.tool);
        let (phase, rx) = watch::channel(Phase::Pending);
        let view = Approval {
            name: name.clone(),
            tool: asked.tool.to_string(),
            identity: asked.identity.to_string(),
            workload: self.workload.clone(),
            policy: asked.policy.to_string(),
            rule: asked.rule.to_string(),
            arguments: shown(asked.args, asked.show),
            phase: Phase::Pending,
            created: rfc3339_millis(self.clock.unix()),
            expires: rfc3339_at(self.clock.unix() + asked.valid_for),
            decided_by: None,
            reason: None,
        };
        self.record(&view, "requested", asked.session);
        self.record(&view, "held", asked.session);
        state.by_key.insert(key.clone(), name.clone());
        state.by_name.insert(
            name.clone(),
            Box::new(Entry {
                view,
                key,
                valid_for: asked.valid_for,
                expires_at: now + asked.valid_for,
                ended_at: None,
                phase,
            }),
        );
        Ticket::Hold(Hold {
            name,
            on: HoldOn::Local(rx),
        })
    }

    /// Holds a call until its approval is decided or `hold` has passed. Approved, the call
    /// uses the approval (only one call can: a sibling held on it is told to retry).
    pub async fn wait(&self, hold: Hold, timeout: Duration) -> Waited {
        let HoldOn::Local(mut phase) = hold.on else {
            return Waited::Failed("a cluster approval held on the local store".into());
        };
        let _ =
            tokio::time::timeout(timeout, phase.wait_for(|phase| *phase != Phase::Pending)).await;
        let now = self.clock.instant();
        let mut state = self.state.lock();
        let Some(entry) = state.by_name.get_mut(&hold.name) else {
            // Forgotten: it ended long ago. Nothing admits the call.
            return Waited::Undecided(self.gone(&hold.name));
        };
        match entry.view.phase {
            Phase::Approved if entry.expires_at > now => {
                let _ = self.step(entry, ApprovalEvent::Use, now);
                let (view, key) = (entry.view.clone(), entry.key.clone());
                state.by_key.remove(&key);
                Waited::Approved(view)
            }
            Phase::Denied => Waited::Denied(entry.view.clone()),
            _ => Waited::Undecided(entry.view.clone()),
        }
    }

    /// A person's decision. `by` is who decided, as the caller of this function established it.
    pub fn decide(
        &self,
        name: &str,
        approve: bool,
        by: &str,
        reason: Option<&str>,
    ) -> Result<Approval, DecideError> {
        let reason = reason.map(str::trim).filter(|r| !r.is_empty());
        if !approve && reason.is_none() {
            return Err(DecideError::NoReason);
        }
        let now = self.clock.instant();
        let mut state = self.state.lock();
        let entry = state
            .by_name
            .get_mut(name)
            .ok_or_else(|| DecideError::NotFound(name.into()))?;
        if entry.view.phase == Phase::Pending && entry.expires_at <= now {
            let _ = self.step(entry, ApprovalEvent::Expire, now);
        }
        let verdict = match approve {
            true => ApprovalVerdict::Approve,
            false => ApprovalVerdict::Deny,
        };
        if entry
            .view
            .phase
            .next(ApprovalEvent::Decide(verdict))
            .is_err()
        {
            return Err(DecideError::Decided {
                name: name.into(),
                phase: entry.view.phase,
            });
        }
        entry.view.decided_by = Some(by.to_string());
        entry.view.reason = reason.map(str::to_string);
        if approve {
            // From now on the retry has the approval's whole lifetime to come.
            entry.expires_at = now + entry.valid_for;
            entry.view.expires = rfc3339_at(self.clock.unix() + entry.valid_for);
        }
        let _ = self.step(entry, ApprovalEvent::Decide(verdict), now);
        if !approve {
            let key = entry.key.clone();
            state.by_key.remove(&key);
        }
        Ok(state.by_name[name].view.clone())
    }

    /// When approval `name` expires if nothing happens, while it is Pending or Approved.
    pub fn expiry(&self, name: &str) -> Option<Instant> {
        let state = self.state.lock();
        let entry = state.by_name.get(name)?;
        entry.live().then_some(entry.expires_at)
    }

    pub fn get(&self, name: &str) -> Option<Approval> {
        self.state.lock().by_name.get(name).map(|e| e.view.clone())
    }

    /// Every approval still listed, oldest first.
    pub fn list(&self) -> Vec<Approval> {
        let mut all: Vec<Approval> = self
            .state
            .lock()
            .by_name
            .values()
            .map(|e| e.view.clone())
            .collect();
        all.sort_by(|a, b| (&a.created, &a.name).cmp(&(&b.created, &b.name)));
        all
    }

    /// Expires what is past its time, forgets what ended more than the retention time ago.
    pub fn sweep(&self, now: Instant) {
        let mut state = self.state.lock();
        let state = &mut *state;
        for entry in state.by_name.values_mut() {
            if entry.live() && entry.expires_at <= now {
                let _ = self.step(entry, ApprovalEvent::Expire, now);
                state.by_key.remove(&entry.key);
            }
        }
        let retention = self.retention;
        state
            .by_name
            .retain(|_, e| e.ended_at.is_none_or(|t| now.duration_since(t) < retention));
    }

    /// Moves an approval on by `event` ([`Phase::next`]), telling whoever is held on it and
    /// recording the step; an event that cannot happen now changes nothing.
    fn step(&self, entry: &mut Entry, event: ApprovalEvent, now: Instant) -> Result<Phase, NotNow> {
        let phase = entry.view.phase.next(event)?;
        entry.view.phase = phase;
        if phase.is_final() {
            entry.ended_at = Some(now);
        }
        entry.phase.send_replace(phase);
        self.record(&entry.view, phase.word(), None);
        Ok(phase)
    }

    fn gone(&self, name: &str) -> Approval {
        Approval {
            name: name.into(),
            tool: String::new(),
            identity: String::new(),
            workload: self.workload.clone(),
            policy: String::new(),
            rule: String::new(),
            arguments: None,
            phase: Phase::Expired,
            created: String::new(),
            expires: String::new(),
            decided_by: None,
            reason: None,
        }
    }

    /// A name people can type: the tool's, and a random suffix.
    fn name_for(&self, tool: &str) -> String {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        tollgate_api::approval_name(tool, self.seed.hash_one((serial, nanos)) as u32)
    }

    fn record(&self, a: &Approval, step: &'static str, session: Option<&str>) {
        match (&self.notifier, step) {
            (Some(n), "requested") => n.send("pending", a),
            (Some(n), step) if step != "held" => n.send(step, a),
            _ => {}
        }
        self.audit.write(Record {
            time: now_rfc3339(),
            kind: "approval",
            pod: self.audit.pod(),
            session,
            identity: &a.identity,
            method: "tools/call",
            tool: Some(&a.tool),
            decision: step,
            rule: Some(&a.rule),
            policy: Some(&a.policy),
            reason: a.reason.as_deref(),
            revision: 0,
            upstream_status: None,
            latency_ms: 0.0,
            arguments: a.arguments.as_ref(),
            absent_arguments: &[],
            approval: Some(&a.name),
            decided_by: a.decided_by.as_deref(),
            dropped_before: None,
        });
    }
}

/// RFC 3339 for `now + d`, to the second.
pub(crate) fn rfc3339_in(d: Duration) -> String {
    rfc3339_at(Clock::default().unix() + d)
}

/// RFC 3339 for a time since the Unix epoch, to the second.
fn rfc3339_at(at: Duration) -> String {
    format!("{}Z", format_second(at.as_secs()))
}

/// The same to the millisecond (what approvals are listed in order of).
fn rfc3339_millis(at: Duration) -> String {
    format!("{}.{:03}Z", format_second(at.as_secs()), at.subsec_millis())
}

/// What binds an approval to one call: every part written out whole, so no two calls that
/// differ in anything share it.
fn fingerprint(asked: &Asked<'_>, workload: &str) -> String {
    call_key(&[asked.tool, asked.identity, workload], asked.args)
}

/// The arguments a person is shown: only the paths the rule names (`args.a.b`), each by its
/// path; a path the call does not have is left out.
pub(crate) fn shown(args: &Value, paths: &[String]) -> Option<Value> {
    if paths.is_empty() {
        return None;
    }
    let out: serde_json::Map<String, Value> = paths
        .iter()
        .filter_map(|path| Some((path.clone(), at_path(args, path)?.clone())))
        .collect();
    Some(Value::Object(out))
}

/// The value at an argument path: `args` is the whole arguments object, `args.a.0.b` walks
/// into it (a numeric segment indexes an array).
pub(crate) fn at_path<'v>(args: &'v Value, path: &str) -> Option<&'v Value> {
    if path == "args" {
        return Some(args);
    }
    let mut v = args;
    for seg in path.strip_prefix("args.")?.split('.') {
        v = match v {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

impl Backend {
    /// A call an `approve` rule applies to: admitted by an approval waiting for it, or held.
    pub async fn request(&self, ask: &OwnedAsk, session: Option<&str>) -> Result<Ticket, String> {
        match self {
            Backend::Local(store) => Ok(store.request(&Asked {
                tool: &ask.tool,
                args: &ask.args,
                identity: &ask.identity,
                session,
                policy: &ask.policy,
                rule: &ask.rule,
                valid_for: ask.valid_for,
                show: &ask.show,
            })),
            // Boxed: the cluster's futures (an API request each) are several KiB, and every
            // held call's future would otherwise hold room for them.
            Backend::Cluster(c) => Box::pin(c.request(ask)).await,
        }
    }

    /// Holds a call until its approval is decided or `timeout` has passed.
    pub async fn wait(&self, hold: Hold, timeout: Duration) -> Waited {
        match self {
            Backend::Local(store) => store.wait(hold, timeout).await,
            Backend::Cluster(c) => match hold.on {
                HoldOn::Cluster(view) => Box::pin(c.wait(*view, timeout)).await,
                HoldOn::Local(_) => Waited::Failed("a local approval held on the cluster".into()),
            },
        }
    }
}

impl Hold {
    /// A hold on an approval the operator keeps.
    pub(crate) fn cluster(view: Approval) -> Hold {
        Hold {
            name: view.name.clone(),
            on: HoldOn::Cluster(Box::new(view)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tollgate_api::canonical;

    fn asked<'a>(tool: &'a str, args: &'a Value, identity: &'a str) -> Asked<'a> {
        Asked {
            tool,
            args,
            identity,
            session: None,
            policy: "p",
            rule: "a person decides",
            valid_for: Duration::from_secs(60),
            show: &[],
        }
    }

    fn hold(t: Ticket) -> Hold {
        match t {
            Ticket::Hold(h) => h,
            Ticket::Admit(a) => panic!("admitted: {a:?}"),
        }
    }

    fn store() -> Arc<Approvals> {
        Approvals::new(
            AuditLog::disabled(),
            None,
            "pod".into(),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn arguments_compare_canonically_whatever_their_order_spacing_or_number_spelling() {
        let canon = |s: &str| {
            let mut out = String::new();
            canonical(&serde_json::from_str(s).unwrap(), &mut out);
            out
        };
        assert_eq!(
            canon(r#"{"b": 1, "a": [1.0, {"y":2,"x":1e0}]}"#),
            r#"{"a":[1,{"x":1,"y":2}],"b":1}"#
        );
        assert_ne!(canon(r#"{"a": "1"}"#), canon(r#"{"a": 1}"#));
        assert_ne!(canon(r#"{"a": 1.5}"#), canon(r#"{"a": 1}"#));
        // Integers past 2^53 stay exact: no two share a spelling.
        assert_ne!(canon("9007199254740993"), canon("9007199254740992"));
        assert_eq!(canon("-0.0"), canon("0"));
    }

    #[tokio::test]
    async fn an_approval_admits_exactly_one_identical_call_then_a_new_one_is_needed() {
        let s = store();
        let args = json!({"bucket": "b", "n": 1});
        let h = hold(s.request(&asked("create_bucket", &args, "alice")));
        let waited = s.wait(h, Duration::from_millis(10)).await;
        let Waited::Undecided(a) = waited else {
            panic!("{waited:?}")
        };
        s.decide(&a.name, true, "bob", None).unwrap();

        let other_args = json!({"bucket": "c", "n": 1});
        for (what, args, who) in [
            ("other arguments", &other_args, "alice"),
            ("another caller", &args, "mallory"),
        ] {
            assert!(
                matches!(
                    s.request(&asked("create_bucket", args, who)),
                    Ticket::Hold(_)
                ),
                "{what}"
            );
        }
        assert!(matches!(
            s.request(&asked("delete_bucket", &args, "alice")),
            Ticket::Hold(_)
        ));

        let respelled = json!({"n": 1.0, "bucket": "b"});
        let Ticket::Admit(used) = s.request(&asked("create_bucket", &respelled, "alice")) else {
            panic!("the same call, written otherwise, is admitted")
        };
        assert_eq!(
            (used.phase, used.decided_by.as_deref()),
            (Phase::Used, Some("bob"))
        );
        assert!(
            matches!(
                s.request(&asked("create_bucket", &args, "alice")),
                Ticket::Hold(_)
            ),
            "used once"
        );
    }

    #[tokio::test]
    async fn a_call_held_when_it_is_approved_goes_on_and_a_denial_carries_the_reason() {
        let s = store();
        let args = json!({});
        let h = hold(s.request(&asked("t", &args, "alice")));
        let name = h.name.clone();
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.wait(h, Duration::from_secs(10)).await })
        };
        tokio::task::yield_now().await;
        s.decide(&name, true, "bob", Some("ok")).unwrap();
        let Waited::Approved(a) = waiter.await.unwrap() else {
            panic!()
        };
        assert_eq!(a.phase, Phase::Used);

        let h = hold(s.request(&asked("t", &args, "alice")));
        assert_eq!(
            s.decide(&h.name, false, "bob", None),
            Err(DecideError::NoReason)
        );
        s.decide(&h.name, false, "bob", Some("not today")).unwrap();
        let Waited::Denied(a) = s.wait(h, Duration::from_secs(10)).await else {
            panic!()
        };
        assert_eq!(a.reason.as_deref(), Some("not today"));
        assert!(matches!(
            s.decide(&a.name, true, "eve", None),
            Err(DecideError::Decided { .. })
        ));
    }

    #[tokio::test]
    async fn a_retry_while_pending_holds_on_the_same_approval_and_a_timeout_never_approves() {
        let s = store();
        let args = json!({"x": 1});
        let first = hold(s.request(&asked("t", &args, "alice")));
        let name = first.name.clone();
        assert!(matches!(
            s.wait(first, Duration::from_millis(5)).await,
            Waited::Undecided(_)
        ));
        let again = hold(s.request(&asked("t", &args, "alice")));
        assert_eq!(again.name, name, "no second approval for the same call");
        assert!(matches!(
            s.wait(again, Duration::from_millis(5)).await,
            Waited::Undecided(_)
        ));
        assert_eq!(s.get(&name).unwrap().phase, Phase::Pending);
        assert_eq!(s.list().len(), 1);
    }

    #[tokio::test]
    async fn an_approval_past_its_lifetime_expires_and_admits_nothing() {
        let s = store();
        let args = json!({});
        let mut short = asked("t", &args, "alice");
        short.valid_for = Duration::from_millis(1);
        let h = hold(s.request(&short));
        std::thread::sleep(Duration::from_millis(5));
        s.sweep(Instant::now());
        assert_eq!(s.get(&h.name).unwrap().phase, Phase::Expired);
        assert!(matches!(
            s.decide(&h.name, true, "bob", None),
            Err(DecideError::Decided {
                phase: Phase::Expired,
                ..
            })
        ));
        assert!(matches!(
            s.wait(h, Duration::from_secs(1)).await,
            Waited::Undecided(_)
        ));
        s.sweep(Instant::now() + Duration::from_secs(61));
        assert!(s.list().is_empty(), "forgotten after the retention time");
    }

    #[test]
    fn a_person_is_shown_only_the_paths_the_rule_names() {
        let args = json!({"bucket": "b", "secret": "s", "tags": [{"k": "v"}]});
        let paths = [
            "args.bucket".to_string(),
            "args.tags.0.k".to_string(),
            "args.none".to_string(),
        ];
        assert_eq!(
            shown(&args, &paths),
            Some(json!({"args.bucket": "b", "args.tags.0.k": "v"}))
        );
        assert_eq!(shown(&args, &[]), None);
        // `args` is every argument; an argument named `args` is only that argument.
        let sneaky = json!({"amount": 5000, "args": {"amount": 1}});
        assert_eq!(
            shown(&sneaky, &["args".to_string()]),
            Some(json!({"args": sneaky}))
        );
        assert_eq!(
            shown(&sneaky, &["args.args.amount".to_string()]),
            Some(json!({"args.args.amount": 1}))
        );
        assert_eq!(shown(&sneaky, &["argsx".to_string()]), Some(json!({})));
    }

    #[test]
    fn names_are_dns_safe_and_name_the_tool() {
        let s = store();
        let name = s.name_for("Create_Bucket!");
        assert!(name.starts_with("create-bucket-"), "{name}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert!(s.name_for("***").starts_with("call-"));
    }
}
