//! Stage two: deciding each message of a request. A tool call (and a resource read or prompt
//! where a policy names them) is decided by the policy in force, and an allowed one has its
//! counters reserved and is put in flight in its session; a denied one is answered here and
//! written to the audit log at once. Allowed decisions are logged once the server answers.

use std::time::Instant;

use serde_json::{Value, json};
use tollgate_api::{Call, Decision, Denial, DenyAs, Identity, PolicySet};

use super::Proxy;
use crate::mcp::jsonrpc::{self, Message};
use crate::policy::counters::Reserved;
use crate::proxy::calls::CallId;
use crate::proxy::inspect::{InFlight, Inspector};
use crate::telemetry::audit::{Record, now_rfc3339};

/// Every message of a request, decided.
pub(super) struct Decided<'b> {
    /// The raw text of each message that goes on to the server, in the request's order.
    pub kept: Vec<&'b str>,
    /// The proxy's own answers to the messages it refused (none for a notification).
    pub answers: Vec<Value>,
    /// What is logged of the allowed calls once the server answers.
    pub audits: Vec<PendingAudit>,
}

impl Proxy {
    /// Decides the messages of one request in order.
    pub(super) fn decide_all<'b>(
        &self,
        messages: &[Message<'b>],
        asked: &Asked<'_>,
        inspector: &mut Inspector,
    ) -> Decided<'b> {
        let mut decided = Decided {
            kept: Vec::with_capacity(messages.len()),
            answers: Vec::new(),
            audits: Vec::new(),
        };
        for m in messages {
            match self.admit_message(m, asked, inspector, &mut decided.audits) {
                None => decided.kept.push(m.raw),
                Some(answer) => decided.answers.extend(answer),
            }
        }
        decided
    }
    /// Decides one message of a request and, when it goes on to the server, puts it in flight
    /// in its session: `None` to forward it, or what the client gets instead (nothing, for a
    /// notification).
    fn admit_message(
        &self,
        m: &Message<'_>,
        asked: &Asked<'_>,
        inspector: &mut Inspector,
        audits: &mut Vec<PendingAudit>,
    ) -> Option<Option<Value>> {
        if let Some(cancelled) = m.cancelled_request().and_then(CallId::of) {
            inspector.keep(&cancelled);
        }
        // A request is in flight once per session: a second with its id could be given the
        // first one's answer, or the first one's refund.
        let call_id = m.id.filter(|_| m.method.is_some()).and_then(CallId::of);
        if call_id
            .as_ref()
            .is_some_and(|id| inspector.is_in_flight(id))
        {
            return Some(Some(in_flight(m)));
        }
        match self.decide(m, asked, audits) {
            Outcome::Refuse(answer) => Some(answer),
            Outcome::Forward(reserved) => match call_id {
                // A notification or a response has no id to put in flight.
                None => None,
                // Checked above, but another request of the session may have taken the id
                // since.
                Some(id) => inspector
                    .begin(id, reserved)
                    .err()
                    .map(|InFlight(reserved)| {
                        self.counters.rollback(reserved);
                        Some(in_flight(m))
                    }),
            },
        }
    }

    /// Decides one message; an allowed call has its counters reserved.
    fn decide(
        &self,
        m: &Message<'_>,
        asked: &Asked<'_>,
        audits: &mut Vec<PendingAudit>,
    ) -> Outcome {
        let Asked {
            set,
            who,
            session,
            modern,
            start,
        } = *asked;
        // Only what the policy governs is parsed: tool calls always, resources and prompts
        // where a policy names them.
        let method: &'static str = match m.method.as_deref() {
            Some("tools/call") => "tools/call",
            Some("resources/read") if set.names("resource:") => "resources/read",
            Some("prompts/get") if set.names("prompt:") => "prompts/get",
            _ => return Outcome::Forward(Reserved::default()),
        };
        let Some(call) = m.call() else {
            return Outcome::Forward(Reserved::default());
        };
        let call = match call {
            Ok(c) => c,
            Err(e) => {
                let answer =
                    m.id.map(|_| jsonrpc::error_response(m.id_value(), -32602, &e, None));
                return Outcome::Refuse(answer);
            }
        };
        let empty = Value::Object(Default::default());
        let args = call.arguments.as_ref().unwrap_or(&empty);
        let t0 = Instant::now();
        let verdict = set.decide(
            &Call {
                tool: &call.name,
                args: Some(args),
                session,
            },
            who,
            &*self.counters,
        );
        let outcome = match verdict.decision {
            Decision::Allow { reservations } => self
                .counters
                .reserve_all(&reservations)
                .map_err(|full| ("deny", full)),
            Decision::Deny(d) => Err(("deny", d)),
            Decision::Approve { policy, rule, .. } => Err((
                "approve",
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
        };
        let seconds = t0.elapsed().as_secs_f64();
        match outcome {
            Ok(reserved) => {
                let audit = verdict.audit;
                self.metrics.decision(
                    &call.name,
                    if audit.is_some() {
                        "audit_deny"
                    } else {
                        "allow"
                    },
                    seconds,
                );
                audits.push(PendingAudit {
                    method,
                    tool: call.name,
                    decision: if audit.is_some() { "audit" } else { "allow" },
                    rule: audit.as_ref().map(|d| d.rule.clone()),
                    policy: audit.as_ref().map(|d| d.policy.clone()),
                    reason: audit.map(|d| d.reason),
                });
                Outcome::Forward(reserved)
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
                };
                self.write_audit(&a, who, session, set.revision, None, start);
                Outcome::Refuse(m.id.map(|_| denial_message(m.id_value(), &denial, modern)))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn write_audit(
        &self,
        a: &PendingAudit,
        who: &Identity,
        session: Option<&str>,
        revision: u64,
        status: Option<u16>,
        start: Instant,
    ) {
        self.audit.write(Record {
            time: now_rfc3339(),
            kind: "decision",
            pod: self.audit.pod(),
            session,
            identity: who.key(),
            method: a.method,
            tool: Some(&a.tool),
            decision: a.decision,
            rule: a.rule.as_deref(),
            policy: a.policy.as_deref(),
            reason: a.reason.as_deref(),
            revision,
            upstream_status: status,
            latency_ms: start.elapsed().as_secs_f64() * 1e3,
            arguments: None,
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
    pub start: Instant,
}

/// What becomes of one message of a request.
enum Outcome {
    /// Sent on to the server, with what it reserved.
    Forward(Reserved),
    /// Refused here, with the answer for the client (none for a notification).
    Refuse(Option<Value>),
}

/// What is logged once the upstream answers.
pub(super) struct PendingAudit {
    method: &'static str,
    tool: String,
    decision: &'static str,
    rule: Option<String>,
    policy: Option<String>,
    reason: Option<String>,
}

/// The answer to a request whose id is in flight in its session already.
fn in_flight(m: &Message<'_>) -> Value {
    jsonrpc::error_response(
        m.id_value(),
        jsonrpc::INVALID_REQUEST,
        "Invalid Request: a request with this id is already in flight in this session; give each request its own id",
        None,
    )
}

/// The answer to a denied request: a JSON-RPC error, or an `isError` tool result.
pub fn denial_message(id: Value, d: &Denial, modern: bool) -> Value {
    let data = json!({ "reason": d.reason, "rule": d.rule, "policy": d.policy });
    match d.deny_as {
        DenyAs::Error => jsonrpc::error_response(
            id,
            jsonrpc::POLICY_DENIED,
            &format!("Denied by policy: {}", d.reason),
            Some(data),
        ),
        DenyAs::ToolResult => {
            let mut m = json!({
                "jsonrpc": "2.0",
                "id": id,
                "result": {
                    "content": [ { "type": "text", "text": format!("Denied by policy: {}", d.reason) } ],
                    "isError": true,
                    "_meta": { "tollgate.dev/denial": data },
                }
            });
            if modern {
                // 2026-07-28 results name their type.
                m["result"]["resultType"] = json!("complete");
            }
            m
        }
    }
}
