//! Stage two: deciding each message of a request. A tool call (and a resource read or prompt
//! where a policy names them) is decided by the policy in force, and an allowed one has its
//! counters reserved and is put in flight in its session; a denied one is answered here and
//! written to the audit log at once. Allowed decisions are logged once the server answers.
//!
//! A call an `approve` rule applies to is admitted by an approval of exactly that call, or held
//! ([`Held`]): the request waits for a person ([`Proxy::settle_held`]) before anything of it is
//! forwarded, then the call goes on (its counters reserved then), or is answered with the
//! person's denial, or with the pending approval to retry on.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_api::{Call, Decision, Denial, DenyAs, Identity, PolicySet};

use super::Proxy;
use super::refusal::Refusal;
use super::resume::{self, Resume};
use crate::approvals::{self, Phase, Ticket, Waited};
use crate::mcp::jsonrpc::Message;
use crate::policy::counters::{Counted, Reserved};
use crate::proxy::calls::CallId;
use crate::proxy::inspect::{InFlight, Inspector};
use crate::telemetry::DecisionKind;
use crate::telemetry::audit::{Record, now_rfc3339};
use crate::telemetry::trace::{self, Attr, SpanKind};
use prometheus_client::metrics::gauge::Gauge;

/// Every message of a request, decided.
pub(super) struct Decided<'b> {
    /// Each message that goes on to the server, by its place in the request, in order.
    pub kept: Vec<(usize, Cow<'b, str>)>,
    /// The proxy's own answers to the messages it refused (none for a notification).
    pub answers: Vec<Value>,
    /// What is logged of the allowed calls once the server answers.
    pub audits: Vec<PendingAudit>,
    /// Calls waiting for a person.
    pub held: Vec<Held<'b>>,
}

/// A call held on an approval, with what it needs once decided.
pub(super) struct Held<'b> {
    /// Its place in the request, and its text.
    at: usize,
    raw: Cow<'b, str>,
    id: Value,
    call_id: Option<CallId>,
    ask: approvals::OwnedAsk,
    timeout: Duration,
    audit: PendingAudit,
    /// `params._meta.progressToken`: the client asked for progress.
    pub progress_token: Option<Value>,
    /// Whether the client opens the approval's page itself (`--approval-url`, a 2026-07-28
    /// client declaring URL elicitation), and whether this call repeats Tollgate's own
    /// `input_required` answer: the first is answered at once, the repeat waits the hold time.
    at_url: Option<AtUrl>,
    /// Its place among the calls held at once (given back when it is settled or dropped).
    _slot: HeldSlot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AtUrl {
    /// Not yet sent to the page: answered `input_required` at once (2026-07-28).
    First,
    /// Back from the page: waits for the decision as any held call does (2026-07-28).
    Repeat,
    /// Sent to the page by an `elicitation/create` on the call's own stream while it waits, and
    /// told `notifications/elicitation/complete` once approved (2025-11-25).
    Stream,
}

impl Held<'_> {
    /// Whether the client hears of this hold on the call's stream (so the request is answered
    /// with a stream at once).
    pub(super) fn tells_on_stream(&self) -> bool {
        self.at_url == Some(AtUrl::Stream)
    }
}

/// A message as it goes to the server: a repeat of Tollgate's own `input_required` answer
/// without the state the server never issued (see [`resume::without_our_state`]).
fn as_sent<'b>(m: &Message<'b>, asked: &Asked<'_>) -> Cow<'b, str> {
    let may_be_ours = asked.modern
        && m.params
            .is_some_and(|p| p.contains("requestState") || p.contains('\\'));
    match may_be_ours
        .then(|| resume::without_our_state(m.raw))
        .flatten()
    {
        Some(stripped) => Cow::Owned(stripped),
        None => Cow::Borrowed(m.raw),
    }
}

/// One of the `--max-held-calls` places; held calls are bounded, as each keeps its request.
/// The metric `tollgate_approvals_held` follows the count.
pub(super) struct HeldSlot(std::sync::Arc<std::sync::atomic::AtomicUsize>, Gauge);

impl HeldSlot {
    fn take(
        count: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
        max: usize,
        gauge: Gauge,
    ) -> Option<HeldSlot> {
        use std::sync::atomic::Ordering;
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| {
                gauge.inc();
                HeldSlot(count.clone(), gauge)
            })
    }
}

impl Drop for HeldSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.1.dec();
    }
}

/// What becomes of one message.
enum Admitted<'b> {
    Forward,
    /// Answered here (nothing, for a notification).
    Answer(Option<Refusal>),
    Hold(Box<Held<'b>>),
}

impl Decided<'_> {
    /// The same, owning its text, to outlive the request's body.
    pub fn into_owned(self) -> Decided<'static> {
        let own = |c: Cow<'_, str>| Cow::Owned(c.into_owned());
        Decided {
            kept: self
                .kept
                .into_iter()
                .map(|(at, raw)| (at, own(raw)))
                .collect(),
            answers: self.answers,
            audits: self.audits,
            held: self
                .held
                .into_iter()
                .map(|h| Held {
                    raw: own(h.raw),
                    ..h
                })
                .collect(),
        }
    }
}

impl Proxy {
    /// Decides the messages of one request in order.
    pub(super) async fn decide_all<'b>(
        &self,
        messages: &[Message<'b>],
        asked: &Asked<'_>,
        inspector: &mut Inspector,
    ) -> Decided<'b> {
        let mut decided = Decided {
            kept: Vec::with_capacity(messages.len()),
            answers: Vec::new(),
            audits: Vec::new(),
            held: Vec::new(),
        };
        for (at, m) in messages.iter().enumerate() {
            match self
                .admit_message(m, asked, inspector, &mut decided.audits)
                .await
            {
                Admitted::Forward => decided.kept.push((at, as_sent(m, asked))),
                Admitted::Answer(answer) => decided.answers.extend(answer.map(|r| r.message())),
                Admitted::Hold(mut held) => {
                    held.at = at;
                    decided.held.push(*held);
                }
            }
        }
        decided
    }

    /// Waits for the person deciding each held call (all at once, each for its hold time),
    /// then puts it with the messages that go on, or answers it. `progress` is called while
    /// they wait, with the notifications for the calls that asked for progress.
    pub(super) async fn settle_held<'b>(
        &self,
        held: Vec<Held<'b>>,
        asked: &Asked<'_>,
        inspector: &mut Inspector,
        decided: &mut Decided<'b>,
        progress: impl Fn(Value),
    ) {
        let Some(backend) = &self.approvals else {
            return;
        };
        // Who asked to hear how long they have been waiting, and on which approval (named once
        // the backend has answered).
        let names: Vec<parking_lot::Mutex<Option<String>>> =
            held.iter().map(|_| parking_lot::Mutex::new(None)).collect();
        let asking: Vec<(usize, Value, Duration)> = held
            .iter()
            .enumerate()
            .filter_map(|(i, h)| Some((i, h.progress_token.clone()?, h.timeout)))
            .collect();
        let session = asked.session;
        let names_ref = &names;
        let progress = &progress;
        let approval_url = self.cfg.approval_url.as_deref();
        let waits =
            futures_util::future::join_all(held.into_iter().enumerate().map(|(i, h)| async move {
                let began = Instant::now();
                let waited = match backend.request(&h.ask, session).await {
                    Ok(Ticket::Admit(a)) => Waited::Approved(*a),
                    Ok(Ticket::Hold(hold)) => {
                        *names_ref[i].lock() = Some(hold.name.clone());
                        let name = hold.name.clone();
                        let stream = h.at_url == Some(AtUrl::Stream);
                        if let (true, Some(url)) = (stream, approval_url) {
                            let rule = h.audit.rule.as_deref().unwrap_or_default();
                            progress(resume::elicit_approval(&name, &h.ask.tool, rule, url));
                        }
                        // A client that opens the approval's page is sent there at once.
                        let timeout = match h.at_url {
                            Some(AtUrl::First) => Duration::ZERO,
                            _ => h.timeout,
                        };
                        let waited = backend.wait(hold, timeout).await;
                        if stream && matches!(waited, Waited::Approved(_)) {
                            progress(resume::approval_complete(&name));
                        }
                        waited
                    }
                    Err(e) => Waited::Failed(e),
                };
                self.waited(&waited, &h, began, names_ref[i].lock().clone());
                (waited, h)
            }));
        let mut waits = std::pin::pin!(waits);
        let started = tokio::time::Instant::now();
        // A timer only where someone hears of the wait: each held call keeps what it holds.
        let mut ticks = (!asking.is_empty()).then(|| tokio::time::interval(PROGRESS_EVERY));
        let outcomes = loop {
            tokio::select! {
                done = &mut waits => break done,
                _ = tick(&mut ticks) => {
                    let waited = started.elapsed().as_secs();
                    for (i, token, timeout) in &asking {
                        let on = match names[*i].lock().as_deref() {
                            Some(name) => format!("approval {name}"),
                            None => "an approval".into(),
                        };
                        progress(json!({
                            "jsonrpc": "2.0",
                            "method": "notifications/progress",
                            "params": {
                                "progressToken": token,
                                "progress": waited,
                                "total": timeout.as_secs(),
                                "message": format!("Waiting for a person to decide {on} ({waited}s of {}s)", timeout.as_secs()),
                            },
                        }));
                    }
                }
            }
        };
        // Boxed, as it runs once the wait is over: held inline, it would be room every waiting
        // call keeps (see `handle_body`).
        Box::pin(self.settle_all(outcomes, asked, inspector, decided)).await;
    }

    /// The held calls' outcomes, each settled in turn, in the order the calls came.
    async fn settle_all<'b>(
        &self,
        outcomes: Vec<(Waited, Held<'b>)>,
        asked: &Asked<'_>,
        inspector: &mut Inspector,
        decided: &mut Decided<'b>,
    ) {
        for (waited, h) in outcomes {
            self.settle_one(waited, h, asked, inspector, decided).await;
        }
        decided.kept.sort_by_key(|(at, _)| *at);
    }

    /// What a held call's wait is known by: its metrics, and its span when traced.
    fn waited(&self, waited: &Waited, h: &Held<'_>, began: Instant, name: Option<String>) {
        let outcome = match waited {
            Waited::Approved(_) => "approved",
            Waited::Denied(_) => "denied",
            // Not waited for: the client was sent to the approval's page, and its repeat waits.
            Waited::Undecided(_) if h.at_url == Some(AtUrl::First) => "sent_to_page",
            Waited::Undecided(_) => "undecided",
            Waited::Failed(_) => "failed",
        };
        if outcome != "sent_to_page" {
            self.metrics
                .approval_settled(outcome, began.elapsed().as_secs_f64());
        }
        if !self.tracer.is_on() {
            return;
        }
        let Some(t) = trace::current() else { return };
        if matches!(outcome, "denied" | "undecided" | "failed") {
            // The request's span says how the held call ended.
            t.set([("tollgate.decision", Attr::from("deny"))]);
            t.set([("error.type", Attr::from("tollgate.denied"))]);
            t.error(format!("held for a person: {outcome}"));
        }
        let mut attrs = vec![
            ("gen_ai.tool.name", Attr::Str(h.ask.tool.clone().into())),
            ("tollgate.rule", Attr::Str(h.ask.rule.clone().into())),
            ("tollgate.policy", Attr::Str(h.ask.policy.clone().into())),
            ("tollgate.approval.outcome", Attr::from(outcome)),
        ];
        if let Some(name) = name {
            attrs.push(("tollgate.approval.name", Attr::Str(name.into())));
        }
        let error = matches!(waited, Waited::Failed(_)).then(|| "nobody could be asked".into());
        t.child("tollgate.approval", SpanKind::Internal, began, attrs, error);
    }

    /// An approved call, decided again as it goes on (see [`CounterStore::decide_approved`]):
    /// what it reserves, or the denial of whatever decides it now.
    ///
    /// [`CounterStore::decide_approved`]: crate::policy::counters::CounterStore::decide_approved
    async fn decide_again(
        &self,
        ask: &approvals::OwnedAsk,
        asked: &Asked<'_>,
    ) -> Result<Reserved, Denial> {
        let state = self.policy.current();
        // Held to its pin again as it goes on: the server may have changed the tool while a
        // person decided, and annotated rules read the pinned definition's hints now.
        let is_tool = !tollgate_api::decide::KIND_PREFIXES
            .iter()
            .any(|k| ask.tool.starts_with(k));
        let hints = match is_tool {
            true => self.pins.admit_call(&state.set, &ask.tool)?,
            false => None,
        };
        let call = Call {
            tool: &ask.tool,
            args: Some(&ask.args),
            session: asked.session,
            hints,
        };
        let counted = self
            .counters
            .decide_approved(&state.set, &call, asked.who)
            .await;
        match counted.verdict.decision {
            Decision::Deny(denial) => Err(denial),
            Decision::Allow { .. } | Decision::Approve { .. } => counted.reserved,
        }
    }

    async fn settle_one<'b>(
        &self,
        waited: Waited,
        h: Held<'b>,
        asked: &Asked<'_>,
        inspector: &mut Inspector,
        decided: &mut Decided<'b>,
    ) {
        let mut audit = h.audit;
        let refused = |audit: &mut PendingAudit, denial: &Denial, name: String| {
            audit.decision = DecisionKind::Deny;
            audit.rule = Some(denial.rule.clone());
            audit.policy = Some(denial.policy.clone());
            audit.reason = Some(denial.reason.clone());
            audit.approval = Some(name);
            Refusal::denied(h.id.clone(), denial.clone(), asked.modern)
        };
        let answer = match waited {
            Waited::Approved(a) => match self.decide_again(&h.ask, asked).await {
                Ok(reserved) => {
                    let begun = match h.call_id {
                        Some(id) => match inspector.begin(id.clone(), reserved) {
                            Ok(()) => {
                                // Its repeat with input needs no second approval.
                                if asked.modern {
                                    let resume = Resume::new(
                                        &h.ask.identity,
                                        audit.method,
                                        &h.ask.tool,
                                        &h.ask.args,
                                        self.policy.current().set.revision,
                                        audit.rule.clone(),
                                        audit.policy.clone(),
                                    );
                                    inspector.resumable(id, resume, &self.resumes);
                                }
                                Ok(())
                            }
                            Err(InFlight(r)) => {
                                self.counters.rollback(r);
                                Err(())
                            }
                        },
                        None => Ok(()),
                    };
                    if begun.is_ok() {
                        audit.decision = DecisionKind::Allow;
                        let by = a.decided_by.as_deref().unwrap_or("?");
                        audit.reason = Some(format!("approved by {by}"));
                        audit.approval = Some(a.name);
                        decided.kept.push((h.at, h.raw));
                        decided.audits.push(audit);
                        return;
                    }
                    Refusal::InFlight(h.id)
                }
                // Approved, but what decides the call says no now (a limit filled, a `state.`
                // condition no longer holds, the policy changed while it waited).
                Err(denial) => refused(&mut audit, &denial, a.name),
            },
            Waited::Denied(a) => {
                let denial = Denial {
                    reason: a.denial_reason(),
                    policy: a.policy.clone(),
                    rule: a.rule.clone(),
                    deny_as: DenyAs::Error,
                };
                refused(&mut audit, &denial, a.name)
            }
            Waited::Failed(why) => {
                let denial = Denial {
                    reason: format!("Nobody could be asked to approve this call: {why}"),
                    policy: audit.policy.clone().unwrap_or_default(),
                    rule: audit.rule.clone().unwrap_or_default(),
                    deny_as: DenyAs::Error,
                };
                refused(&mut audit, &denial, String::new())
            }
            Waited::Undecided(a) => {
                audit.approval = Some(a.name.clone());
                match (&self.cfg.approval_url, h.at_url, a.phase) {
                    (Some(url), Some(_), Phase::Pending) => {
                        audit.reason = Some(format!(
                            "undecided; the client was sent to approval {}'s page",
                            a.name
                        ));
                        self.write_audit(&audit, asked, None);
                        let answer = resume::approval_at_url(h.id, &a.tool, &a.name, &a.rule, url);
                        decided.answers.push(answer);
                        return;
                    }
                    _ => {
                        audit.reason = Some(format!(
                            "undecided in the hold time; approval {} is {:?}",
                            a.name, a.phase
                        ));
                        Refusal::Pending {
                            id: h.id,
                            approval: Box::new(a),
                        }
                    }
                }
            }
        };
        self.write_audit(&audit, asked, None);
        decided.answers.push(answer.message());
    }

    /// Decides one message of a request and, when it goes on to the server, puts it in flight
    /// in its session: `None` to forward it, or what the client gets instead (nothing, for a
    /// notification).
    async fn admit_message<'b>(
        &self,
        m: &Message<'b>,
        asked: &Asked<'_>,
        inspector: &mut Inspector,
        audits: &mut Vec<PendingAudit>,
    ) -> Admitted<'b> {
        if let Some(cancelled) = m.cancelled_request().and_then(CallId::of) {
            inspector.keep(&cancelled);
        }
        // The client's answer to Tollgate's own `elicitation/create` (an approval's page): the
        // server never asked, so it is not the server's to hear. The approval store decides.
        if m.is_response
            && m.id
                .is_some_and(|id| id.starts_with(resume::APPROVAL_ELICITATION_ID))
        {
            return Admitted::Answer(None);
        }
        // A request is in flight once per session: a second with its id could be given the
        // first one's answer, or the first one's refund.
        let call_id = m.id.filter(|_| m.method.is_some()).and_then(CallId::of);
        if call_id
            .as_ref()
            .is_some_and(|id| inspector.is_in_flight(id))
        {
            return Admitted::Answer(Some(Refusal::InFlight(m.id_value())));
        }
        match self.decide(m, asked, audits).await {
            Outcome::Refuse(answer) => Admitted::Answer(answer),
            Outcome::Hold(mut held) => {
                held.raw = as_sent(m, asked);
                held.call_id = call_id;
                Admitted::Hold(held)
            }
            Outcome::Forward(reserved, resume) => match call_id {
                // A notification or a response has no id to put in flight.
                None => Admitted::Forward,
                // Checked above, but another request of the session may have taken the id
                // since.
                Some(id) => match inspector.begin(id.clone(), reserved) {
                    Ok(()) => {
                        if let Some(resume) = resume {
                            inspector.resumable(id, *resume, &self.resumes);
                        }
                        Admitted::Forward
                    }
                    Err(InFlight(reserved)) => {
                        self.counters.rollback(reserved);
                        Admitted::Answer(Some(Refusal::InFlight(m.id_value())))
                    }
                },
            },
        }
    }

    /// Decides one message; an allowed call has its counters reserved.
    async fn decide<'b>(
        &self,
        m: &Message<'b>,
        asked: &Asked<'_>,
        audits: &mut Vec<PendingAudit>,
    ) -> Outcome<'b> {
        let Asked {
            set,
            who,
            session,
            modern,
            ..
        } = *asked;
        // Only what the policy governs is parsed: tool calls always, resources and prompts
        // where a policy names them.
        let method: &'static str = match m.method.as_deref() {
            Some("tools/call") => "tools/call",
            Some("resources/read") if set.names("resource:") => "resources/read",
            Some("prompts/get") if set.names("prompt:") => "prompts/get",
            _ => return Outcome::Forward(Reserved::default(), None),
        };
        let Some(call) = m.call() else {
            return Outcome::Forward(Reserved::default(), None);
        };
        let mut call = match call {
            Ok(c) => c,
            Err(message) => {
                let id = m.id_value();
                return Outcome::Refuse(m.id.map(|_| Refusal::InvalidParams { id, message }));
            }
        };
        let empty = Value::Object(Default::default());
        let args = call.arguments.as_ref().unwrap_or(&empty);
        // What the audit line keeps of the arguments: only what a policy asks for.
        let logged = match set.audits_arguments() {
            true => LoggedArguments::of(args, &set.audited_arguments(who)),
            false => None,
        };
        let t0 = Instant::now();
        // A 2026-07-28 call may be a repeat, with input, of a call the server asked input for:
        // it continues that call's decision (see `resume`).
        if modern
            && let Some(repeat) = resume::repeat(m.params)
            && let asked = Resume::new(
                who.key(),
                method,
                &call.name,
                args,
                set.revision,
                None,
                None,
            )
            && let Some(earlier) = self.resumes.take(&asked, repeat.state.as_deref())
            && self.audit.admits().is_ok()
            && (method != "tools/call" || self.pins.admit_call(set, &call.name).is_ok())
        {
            self.metrics
                .decision(&call.name, DecisionKind::Allow, t0.elapsed().as_secs_f64());
            audits.push(PendingAudit {
                method,
                tool: call.name,
                decision: DecisionKind::Allow,
                rule: earlier.rule.clone(),
                policy: earlier.policy.clone(),
                reason: Some(
                    "continues the call its server asked input for (input_required): counted and decided once"
                        .into(),
                ),
                approval: None,
                arguments: logged,
            });
            self.traced(t0, audits.last(), set.revision, false);
            return Outcome::Forward(Reserved::default(), Some(Box::new(earlier)));
        }
        let counted = match self.audit.admits() {
            // A call whose decision cannot be logged is not made.
            Err(reason) => Counted::denied(Denial {
                reason,
                policy: String::new(),
                rule: "(audit log)".into(),
                deny_as: DenyAs::Error,
            }),
            Ok(()) => {
                // A tool held back by its pin is not called, whatever the rules say; one
                // admitted comes with its pinned hints (tools only: a resource or prompt has
                // none).
                let pinned = match method == "tools/call" {
                    true => self.pins.admit_call(set, &call.name),
                    false => Ok(None),
                };
                match pinned {
                    Err(denial) => Counted::denied(denial),
                    Ok(hints) => {
                        let call = Call {
                            tool: &call.name,
                            args: Some(args),
                            session,
                            hints,
                        };
                        self.counters.decide(set, &call, who).await
                    }
                }
            }
        };
        let verdict = counted.verdict;
        let outcome = match verdict.decision {
            Decision::Allow { .. } => counted.reserved.map_err(|full| (DecisionKind::Deny, full)),
            Decision::Deny(d) => Err((DecisionKind::Deny, d)),
            Decision::Approve {
                policy,
                rule,
                timeout,
                valid_for,
                show,
                // Reserved when it goes on, decided again then.
                reservations: _,
            } => match &self.approvals {
                None => Err((
                    DecisionKind::Approve,
                    Denial {
                        reason: format!(
                            "Tool {:?} needs a person's approval (rule {rule:?}), and approvals are not enabled on this proxy",
                            call.name
                        ),
                        policy,
                        rule,
                        deny_as: DenyAs::Error,
                    },
                )),
                // A notification cannot be answered, so it cannot wait for a person.
                Some(_) if m.id.is_none() => Err((
                    DecisionKind::Approve,
                    Denial {
                        reason: format!(
                            "Tool {:?} needs a person's approval, and a notification cannot wait for one",
                            call.name
                        ),
                        policy,
                        rule,
                        deny_as: DenyAs::Error,
                    },
                )),
                // Held: the backend is asked (and may admit it at once) once the request's
                // messages are all decided, as a backend may have to ask the operator.
                Some(_) => match HeldSlot::take(
                    &self.held_now,
                    self.cfg.max_held_calls,
                    self.metrics.held(),
                ) {
                    None => Err((
                        DecisionKind::Approve,
                        Denial {
                            reason: format!(
                                "Tool {:?} needs a person's approval, and {} calls wait for one already; retry later",
                                call.name, self.cfg.max_held_calls
                            ),
                            policy,
                            rule,
                            deny_as: DenyAs::Error,
                        },
                    )),
                    Some(slot) => {
                        self.metrics.decision(
                            &call.name,
                            DecisionKind::Approve,
                            t0.elapsed().as_secs_f64(),
                        );
                        let held = Box::new(Held {
                            _slot: slot,
                            at: 0,
                            raw: Cow::Borrowed(""),
                            id: m.id_value(),
                            call_id: None,
                            ask: approvals::OwnedAsk {
                                tool: call.name.clone(),
                                // Moved, not copied: a held call keeps them while it waits.
                                args: call.arguments.take().unwrap_or(empty),
                                identity: who.key().to_string(),
                                policy: policy.clone(),
                                rule: rule.clone(),
                                valid_for,
                                show,
                            },
                            timeout,
                            audit: PendingAudit {
                                method,
                                tool: call.name.clone(),
                                decision: DecisionKind::Approve,
                                rule: Some(rule),
                                policy: Some(policy),
                                reason: None,
                                approval: None,
                                arguments: logged.clone(),
                            },
                            progress_token: progress_token(m),
                            at_url: match &self.cfg.approval_url {
                                Some(_) if modern && resume::opens_urls(m.params) => {
                                    match resume::repeat(m.params).is_some_and(|r| r.is_ours()) {
                                        true => Some(AtUrl::Repeat),
                                        false => Some(AtUrl::First),
                                    }
                                }
                                Some(_) if !modern && asked.session_opens_urls => {
                                    Some(AtUrl::Stream)
                                }
                                _ => None,
                            },
                        });
                        self.traced(t0, Some(&held.audit), set.revision, false);
                        return Outcome::Hold(held);
                    }
                },
            },
        };
        let seconds = t0.elapsed().as_secs_f64();
        match outcome {
            Ok(reserved) => {
                let audit = verdict.audit;
                let kind = match audit {
                    Some(_) => DecisionKind::Audit,
                    None => DecisionKind::Allow,
                };
                self.metrics.decision(&call.name, kind, seconds);
                let rule = audit.as_ref().map(|d| d.rule.clone());
                let policy = audit.as_ref().map(|d| d.policy.clone());
                // Only a decision that counted binds its repeat: any other is the same made
                // afresh.
                let resume = (modern && !reserved.is_empty()).then(|| {
                    let (rule, policy) = (rule.clone(), policy.clone());
                    Box::new(Resume::new(
                        who.key(),
                        method,
                        &call.name,
                        args,
                        set.revision,
                        rule,
                        policy,
                    ))
                });
                audits.push(PendingAudit {
                    method,
                    tool: call.name,
                    decision: kind,
                    rule,
                    policy,
                    reason: audit.map(|d| d.reason),
                    approval: None,
                    arguments: logged,
                });
                self.traced(t0, audits.last(), set.revision, false);
                Outcome::Forward(reserved, resume)
            }
            Err((kind, denial)) => {
                self.metrics.decision(&call.name, kind, seconds);
                let a = PendingAudit {
                    method,
                    tool: call.name.clone(),
                    decision: kind,
                    rule: Some(denial.rule.clone()),
                    policy: Some(denial.policy.clone()),
                    reason: Some(denial.reason.clone()),
                    approval: None,
                    arguments: logged,
                };
                self.write_audit(&a, asked, None);
                self.traced(t0, Some(&a), set.revision, true);
                Outcome::Refuse(m.id.map(|_| Refusal::denied(m.id_value(), denial, modern)))
            }
        }
    }

    /// The span of one decision, when the request is traced: from `t0` to now, with what the audit
    /// line says of it but its reason; `refused` when the call is answered here (a denial, or an
    /// approval that could not be asked for). The request's span carries the decision too.
    fn traced(&self, t0: Instant, a: Option<&PendingAudit>, revision: u64, refused: bool) {
        if !self.tracer.is_on() {
            return;
        }
        let (Some(t), Some(a)) = (trace::current(), a) else {
            return;
        };
        let mut attrs = vec![
            ("mcp.method.name", Attr::from(a.method)),
            ("tollgate.decision", Attr::from(a.decision.as_str())),
            ("tollgate.policy.revision", Attr::from(revision)),
        ];
        let target = match a.method {
            "tools/call" => "gen_ai.tool.name",
            "prompts/get" => "gen_ai.prompt.name",
            _ => "mcp.resource.uri",
        };
        attrs.push((target, Attr::Str(a.tool.clone().into())));
        if let Some(rule) = &a.rule {
            attrs.push(("tollgate.rule", Attr::Str(rule.clone().into())));
        }
        if let Some(policy) = &a.policy {
            attrs.push(("tollgate.policy", Attr::Str(policy.clone().into())));
        }
        // The reason is not sent: a condition's reason may quote the argument it read, and spans
        // go where the audit log's rule (only the arguments a policy names) does not reach. The
        // rule and policy say which reason it was.
        t.set(attrs.iter().skip(1).cloned().collect::<Vec<_>>());
        let error = refused.then(|| match (&a.rule, &a.policy) {
            (Some(rule), Some(policy)) => format!("denied by rule {rule:?} of {policy}"),
            _ => "denied".to_string(),
        });
        if let Some(e) = &error {
            t.set([("error.type", Attr::from("tollgate.denied"))]);
            t.error(e.clone());
        }
        t.child("tollgate.decide", SpanKind::Internal, t0, attrs, error);
    }

    /// The audit line of one decided call; `status` is the server's answer, for a call that
    /// went on.
    pub(super) fn write_audit(&self, a: &PendingAudit, asked: &Asked<'_>, status: Option<u16>) {
        let Asked {
            set,
            who,
            session,
            start,
            ..
        } = *asked;
        self.audit.write(Record {
            time: now_rfc3339(),
            kind: "decision",
            pod: self.audit.pod(),
            session,
            identity: who.key(),
            method: a.method,
            tool: Some(&a.tool),
            decision: a.decision.as_str(),
            rule: a.rule.as_deref(),
            policy: a.policy.as_deref(),
            reason: a.reason.as_deref(),
            revision: set.revision,
            upstream_status: status,
            latency_ms: start.elapsed().as_secs_f64() * 1e3,
            arguments: a.arguments.as_ref().map(|l| &l.values),
            absent_arguments: a.arguments.as_ref().map_or(&[], |l| &l.absent),
            approval: a.approval.as_deref(),
            decided_by: None,
            dropped_before: None,
        });
    }
}

/// What every message of one request is decided with.
#[derive(Clone, Copy)]
pub(super) struct Asked<'a> {
    pub set: &'a PolicySet,
    pub who: &'a Identity,
    /// The session the request belongs to, if any.
    pub session: Option<&'a str>,
    /// Whether it speaks the 2026-07-28 protocol (whose results name their type).
    pub modern: bool,
    /// Whether its session's client declared URL elicitation (2025-11-25): it can be sent to
    /// an approval's page mid-call.
    pub session_opens_urls: bool,
    pub start: Instant,
}

/// What becomes of one message of a request.
enum Outcome<'b> {
    /// Sent on to the server, with what it reserved, and what a repeat of it with input would
    /// continue (2026-07-28).
    Forward(Reserved, Option<Box<Resume>>),
    /// Refused here, with the answer for the client (none for a notification).
    Refuse(Option<Refusal>),
    /// Held for a person.
    Hold(Box<Held<'b>>),
}

/// How often a held call that asked for progress is told it is still waiting.
pub(super) const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// `params._meta.progressToken` of a request, if it gave one.
fn progress_token(m: &Message<'_>) -> Option<Value> {
    let params: Value = serde_json::from_str(m.params?).ok()?;
    params.get("_meta")?.get("progressToken").cloned()
}

/// What is logged once the upstream answers.
pub(super) struct PendingAudit {
    method: &'static str,
    tool: String,
    decision: DecisionKind,
    rule: Option<String>,
    policy: Option<String>,
    reason: Option<String>,
    approval: Option<String>,
    /// The argument values a policy asks the audit log to keep (`spec.audit.arguments`).
    arguments: Option<Box<LoggedArguments>>,
}

/// What the audit line of a call keeps of its arguments.
#[derive(Clone)]
pub(super) struct LoggedArguments {
    /// `{"args.amount": 1200}`: each path asked for that the call has, with its value.
    values: Value,
    /// The paths asked for that the call does not have.
    absent: Vec<String>,
}

impl LoggedArguments {
    fn of(args: &Value, paths: &[String]) -> Option<Box<Self>> {
        if paths.is_empty() {
            return None;
        }
        let mut values = serde_json::Map::new();
        let mut absent = Vec::new();
        for path in paths {
            match approvals::at_path(args, path) {
                Some(v) => {
                    values.insert(path.clone(), v.clone());
                }
                None => absent.push(path.clone()),
            }
        }
        Some(Box::new(LoggedArguments {
            values: Value::Object(values),
            absent,
        }))
    }
}

/// The next tick of a timer, or never without one.
async fn tick(ticks: &mut Option<tokio::time::Interval>) {
    match ticks {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}
