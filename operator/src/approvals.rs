//! `McpApproval`s: made for the sidecars' held calls, who may decide one, who did, and what
//! phase it is in.
//!
//! ```text
//! sidecar (pod token) ─ POST /v1/approvals ─> ask: the one for this call and workload,
//!   used at once if approved; else the pending one; else a new one
//!                     ─ GET /v1/approvals/NAME?wait=S ─> wait: until decided or S passed
//!                     ─ POST /v1/approvals/NAME/use ─> use_approval: Used exactly once (a
//!                       status write conditional on the resourceVersion read)
//! POST /approvals (mutating webhook, McpApproval CREATE | UPDATE)
//!   CREATE with a decision                        ─> refused: decide it after it is made
//!   UPDATE changing the call (spec but decision)  ─> refused: the call is fixed
//!   UPDATE changing a decision already made       ─> refused: decided once
//!   UPDATE adding a decision ─ SubjectAccessReview (verb approve, mcpapprovals/NAME, the
//!     request's user) ─ no ─> refused naming the verb
//!                       yes ─> decidedBy, decidedAt stamped from the API server's userInfo
//! controller (leader): a decision ─> status.phase Approved | Denied;
//!   past its lifetime undecided (or approved, unused) ─> Expired;
//!   each step announced (an Event, and the webhook's POST); ended longer than the retention
//!   ─> deleted
//! ```
//!
//! As for CertificateSigningRequests, the `approve` verb is checked by the webhook, so RBAC
//! says who decides: `update` alone lets nobody approve.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tollgate_api::contract::{ApprovalAnswer, ApprovalAsk, CALL_LABEL};
use tollgate_api::{
    ApprovalDecision, ApprovalEvent, ApprovalPhase, ApprovalSpec, ApprovalStatus, ApprovalVerdict,
    McpApproval,
};

/// What the webhook makes of a change to an McpApproval, before asking who may decide.
#[derive(Debug, PartialEq)]
pub enum Review {
    /// Nothing a person decides changed.
    Allow,
    Refuse(String),
    /// A decision is being made: allowed if the user may `approve`, then stamped.
    Decide(ApprovalVerdict),
}

/// The pure part of the webhook.
pub fn review(req: &AdmissionRequest<DynamicObject>) -> Review {
    let spec = |o: &Option<DynamicObject>| -> Result<ApprovalSpec, String> {
        let value = o
            .as_ref()
            .and_then(|o| o.data.get("spec"))
            .cloned()
            .unwrap_or_default();
        serde_json::from_value(value).map_err(|e| format!("spec is not an McpApproval's: {e}"))
    };
    let new = match spec(&req.object) {
        Ok(s) => s,
        Err(e) => return Review::Refuse(e),
    };
    match req.operation {
        Operation::Create if new.decision.is_some() => Review::Refuse(
            "an McpApproval is made undecided; decide it after it exists (kubectl tollgate approve)"
                .into(),
        ),
        Operation::Update => {
            let old = match spec(&req.old_object) {
                Ok(s) => s,
                Err(e) => return Review::Refuse(e),
            };
            let call = |s: &ApprovalSpec| ApprovalSpec {
                decision: None,
                ..s.clone()
            };
            if call(&old) != call(&new) {
                return Review::Refuse(
                    "the call an McpApproval is for cannot change; only spec.decision may be set"
                        .into(),
                );
            }
            match (&old.decision, &new.decision) {
                (None, None) => Review::Allow,
                (None, Some(d)) => {
                    let phase = req
                        .old_object
                        .as_ref()
                        .and_then(|o| o.data.get("status"))
                        .and_then(|s| serde_json::from_value::<ApprovalStatus>(s.clone()).ok())
                        .map(|s| s.phase)
                        .unwrap_or_default();
                    if phase != ApprovalPhase::Pending {
                        return Review::Refuse(format!(
                            "McpApproval {} is {phase:?}: only a Pending one can be decided",
                            req.name
                        ));
                    }
                    if d.verdict == ApprovalVerdict::Deny
                        && d.reason.as_deref().is_none_or(|r| r.trim().is_empty())
                    {
                        return Review::Refuse(
                            "a denial needs spec.decision.reason, for the agent and the audit log"
                                .into(),
                        );
                    }
                    Review::Decide(d.verdict)
                }
                (Some(a), Some(b)) if a == b => Review::Allow,
                (Some(_), _) => Review::Refuse(format!(
                    "McpApproval {} is decided already; a decision is made once",
                    req.name
                )),
            }
        }
        _ => Review::Allow,
    }
}

/// The webhook: [`review`], then the SubjectAccessReview and the stamp.
pub async fn admit(client: &Client, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    let verdict = match review(req) {
        Review::Allow => return resp,
        Review::Refuse(message) => return resp.deny(message),
        Review::Decide(v) => v,
    };
    let username = req.user_info.username.clone().unwrap_or_default();
    let allowed = match may(client, req, "mcpapprovals", "approve").await {
        Ok(allowed) => allowed,
        // Fail closed: no decision is taken that nobody could check.
        Err(e) => {
            return resp.deny(format!(
                "Tollgate cannot check whether {username} may approve McpApprovals: {e}"
            ));
        }
    };
    if !allowed {
        return resp.deny(format!(
            "{username} may not decide McpApprovals: that takes the RBAC verb \"approve\" on \
             mcpapprovals.tollgate.dev in namespace {} (the chart's ClusterRole tollgate-approver)",
            req.namespace.as_deref().unwrap_or_default()
        ));
    }
    let stamp = json!([
        { "op": "add", "path": "/spec/decision/decidedBy", "value": username },
        { "op": "add", "path": "/spec/decision/decidedAt", "value": Timestamp::now().to_string() },
    ]);
    tracing::info!(namespace = ?req.namespace, approval = %req.name, user = %username, ?verdict, "approval decided");
    match resp.with_patch(serde_json::from_value(stamp).expect("a JSON patch")) {
        Ok(r) => r,
        Err(e) => AdmissionResponse::invalid(e),
    }
}

/// Whether the user of an admission request may `verb` the object it concerns (`resource` of
/// Tollgate's group, in its namespace), by a SubjectAccessReview: how the webhooks check the
/// verbs RBAC grants for decisions (`approve`, `accept`).
pub async fn may(
    client: &Client,
    req: &AdmissionRequest<DynamicObject>,
    resource: &str,
    verb: &str,
) -> Result<bool, kube::Error> {
    let user = &req.user_info;
    let sar = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: user.username.clone(),
            uid: user.uid.clone(),
            groups: user.groups.clone(),
            extra: user.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some(tollgate_api::GROUP.into()),
                resource: Some(resource.into()),
                verb: Some(verb.into()),
                namespace: req.namespace.clone(),
                name: Some(req.name.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &sar)
        .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// The status an approval should have now, or `None` when it is right.
pub fn desired_status(a: &McpApproval, now: Timestamp) -> Option<ApprovalStatus> {
    let old = a.status.clone().unwrap_or_default();
    let lifetime =
        k8s_openapi::jiff::SignedDuration::from_secs(i64::from(a.spec.valid_for_seconds));
    let created = a
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now);
    let decided_at = a
        .spec
        .decision
        .as_ref()
        .and_then(|d| d.decided_at.as_deref())
        .and_then(|t| t.parse::<Timestamp>().ok());
    let mut new = old.clone();
    // The life is tollgate-api's (ApprovalPhase::next): a decision moves a pending approval
    // on, its time expires a pending or approved one; what cannot happen now changes nothing.
    match (old.phase, &a.spec.decision) {
        (ApprovalPhase::Pending, Some(ApprovalDecision { verdict, .. })) => {
            if let Ok(phase) = old.phase.next(ApprovalEvent::Decide(*verdict)) {
                new.phase = phase;
            }
            new.expires = Some(
                (decided_at.unwrap_or(now) + lifetime)
                    .round(k8s_openapi::jiff::Unit::Second)
                    .unwrap_or(now)
                    .to_string(),
            );
        }
        (ApprovalPhase::Pending, None) => {
            let expires = created + lifetime;
            new.expires = Some(expires.to_string());
            if expires <= now
                && let Ok(phase) = old.phase.next(ApprovalEvent::Expire)
            {
                new.phase = phase;
            }
        }
        (ApprovalPhase::Approved, _) => {
            let expires = new
                .expires
                .as_deref()
                .and_then(|t| t.parse::<Timestamp>().ok())
                .unwrap_or(now);
            if expires <= now
                && let Ok(phase) = old.phase.next(ApprovalEvent::Expire)
            {
                new.phase = phase;
            }
        }
        _ => {}
    }
    (new != old).then_some(new)
}

struct Context {
    client: Client,
    recorder: Recorder,
    retention: Duration,
    notifier: Option<tollgate_notify::Notifier>,
    /// The approvals whose use this leader announced (a use is written by whichever replica
    /// served it; the leader announces it once).
    announced_use: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Keeps every McpApproval's status, and deletes ended ones after `retention`.
///
/// Each step is announced: an Event on the approval, and a JSON POST to `notifier`'s webhook
/// (`{"event": "pending"|"approved"|"denied"|"expired"|"used", "approval": {...}}`).
pub async fn run(
    client: Client,
    index: Arc<crate::index::Index>,
    reporter: Reporter,
    retention: Duration,
    notifier: Option<tollgate_notify::Notifier>,
) {
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        retention,
        notifier,
        announced_use: Default::default(),
    });
    Controller::for_shared_stream(index.approval_events(), index.approvals.clone())
        .reconcile_all_on(index.resyncs())
        .run(
            reconcile,
            |_, e, _| {
                tracing::warn!(error = %e, "approval status write failed; retrying");
                Action::requeue(Duration::from_secs(5))
            },
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

/// An Event on the approval, and the webhook's POST, for a step it took.
async fn announce(ctx: &Context, a: &McpApproval, phase: ApprovalPhase) {
    let decision = a.spec.decision.as_ref();
    let by = decision
        .and_then(|d| d.decided_by.as_deref())
        .unwrap_or("?");
    let reason = decision
        .and_then(|d| d.reason.as_deref())
        .unwrap_or("no reason given");
    let (tool, identity) = (&a.spec.tool, &a.spec.identity);
    let (type_, why, note) = match phase {
        ApprovalPhase::Approved => (
            EventType::Normal,
            "Approved",
            format!("{by} approved {tool} for {identity}: {reason}"),
        ),
        ApprovalPhase::Denied => (
            EventType::Normal,
            "Denied",
            format!("{by} denied {tool} for {identity}: {reason}"),
        ),
        ApprovalPhase::Expired => (
            EventType::Warning,
            "Expired",
            format!("{tool} for {identity} expired undecided or unused"),
        ),
        ApprovalPhase::Used => (
            EventType::Normal,
            "Used",
            format!(
                "{tool} for {identity} ran on pod {}",
                a.status
                    .as_ref()
                    .and_then(|s| s.used_by.as_deref())
                    .unwrap_or("?")
            ),
        ),
        ApprovalPhase::Pending => (
            EventType::Normal,
            "Pending",
            format!(
                "{tool} called by {identity} on pod {} waits for a person (kubectl tollgate approve {})",
                a.spec.pod,
                a.name_any()
            ),
        ),
    };
    let event = Event {
        type_,
        reason: why.into(),
        note: Some(note),
        action: "Decide".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &a.object_ref(&())).await {
        tracing::warn!(error = %e, "cannot publish an event");
    }
    if let Some(n) = &ctx.notifier {
        let mut approval = serde_json::to_value(&a.spec).unwrap_or_default();
        approval["name"] = json!(a.name_any());
        approval["namespace"] = json!(a.namespace());
        approval["phase"] = json!(phase);
        n.send(json!({ "event": why.to_lowercase(), "approval": approval }));
    }
}

async fn reconcile(a: Arc<McpApproval>, ctx: Arc<Context>) -> Result<Action, kube::Error> {
    let ns = a.namespace().unwrap_or_default();
    let api: Api<McpApproval> = Api::namespaced(ctx.client.clone(), &ns);
    let now = Timestamp::now();
    let phase = a.status.as_ref().map(|s| s.phase).unwrap_or_default();
    if matches!(
        phase,
        ApprovalPhase::Denied | ApprovalPhase::Expired | ApprovalPhase::Used
    ) {
        let used_at = a.status.as_ref().and_then(|s| s.used_at.as_deref());
        let recent = used_at
            .and_then(|t| t.parse::<Timestamp>().ok())
            .is_some_and(|t| now.duration_since(t).unsigned_abs() < Duration::from_secs(60));
        if phase == ApprovalPhase::Used
            && recent
            && ctx
                .announced_use
                .lock()
                .map(|mut set| set.insert(a.uid().unwrap_or_default()))
                .unwrap_or(false)
        {
            announce(&ctx, &a, ApprovalPhase::Used).await;
        }
        let since = a
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(now);
        let age = now.duration_since(since).unsigned_abs();
        let lifetime = Duration::from_secs(u64::from(a.spec.valid_for_seconds));
        if age >= lifetime + ctx.retention {
            api.delete(&a.name_any(), &DeleteParams::default()).await?;
            return Ok(Action::await_change());
        }
        return Ok(Action::requeue(
            lifetime + ctx.retention - age.min(lifetime + ctx.retention),
        ));
    }
    if let Some(status) = desired_status(&a, now) {
        api.patch_status(
            &a.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await?;
        announce(&ctx, &a, status.phase).await;
    }
    // Come back when it may expire.
    Ok(Action::requeue(Duration::from_secs(
        u64::from(a.spec.valid_for_seconds).clamp(1, 60),
    )))
}

// ---------------------------------------------------------------------------------------------
// The sidecars' side: a held call becomes an McpApproval, made by the operator on the pod's
// behalf (no sidecar has API permissions), bound to the pod's workload as its token proves it.

/// The workload a pod belongs to: its controller owner (`ReplicaSet/web-7d9f`), else the pod.
pub fn workload_of(pod: &crate::index::PodMeta) -> String {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| format!("{}/{}", o.kind, o.name))
        .unwrap_or_else(|| format!("Pod/{}", pod.name_any()))
}

/// When an approval expires: undecided, its creation plus its lifetime; approved, the decision
/// plus its lifetime.
fn expires_at(a: &McpApproval) -> Option<Timestamp> {
    let lifetime =
        k8s_openapi::jiff::SignedDuration::from_secs(i64::from(a.spec.valid_for_seconds));
    let from = match &a.spec.decision {
        Some(d) => d.decided_at.as_deref()?.parse::<Timestamp>().ok()?,
        None => a.metadata.creation_timestamp.as_ref()?.0,
    };
    Some(from + lifetime)
}

/// The phase a sidecar should act on: the decision counts as soon as it is written (the
/// leader's status follows), and the clock as soon as it has passed.
fn effective_phase(a: &McpApproval, now: Timestamp) -> ApprovalPhase {
    let recorded = a.status.as_ref().map(|s| s.phase).unwrap_or_default();
    recorded.at(
        a.spec.decision.as_ref().map(|d| d.verdict),
        expires_at(a),
        now,
    )
}

fn answer_of(a: &McpApproval, admitted: bool, now: Timestamp) -> ApprovalAnswer {
    let decision = a.spec.decision.as_ref();
    ApprovalAnswer {
        name: a.name_any(),
        phase: if admitted {
            ApprovalPhase::Used
        } else {
            effective_phase(a, now)
        },
        admitted,
        expires: expires_at(a).map(|t| t.to_string()),
        decided_by: decision.and_then(|d| d.decided_by.clone()),
        reason: decision.and_then(|d| d.reason.clone()),
    }
}

/// A name people can type: the tool's, and a random suffix.
fn name_for(tool: &str) -> String {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new();
    tollgate_api::approval_name(
        tool,
        random.hash_one(Timestamp::now().as_nanosecond()) as u32,
    )
}

/// Who is asking, as the token and the index say.
pub struct Asker {
    pub namespace: String,
    pub pod: String,
    pub workload: String,
}

/// `POST /v1/approvals`: the approval waiting for exactly this call, used at once if it was
/// approved; else the one pending for it; else a new one.
pub async fn ask(
    client: &Client,
    index: &crate::index::Index,
    who: &Asker,
    ask: &ApprovalAsk,
) -> Result<ApprovalAnswer, kube::Error> {
    let now = Timestamp::now();
    let label = &ask.call[..ask.call.len().min(63)];
    let same_call = |a: &McpApproval| {
        a.namespace().as_deref() == Some(&who.namespace)
            && a.spec.call == ask.call
            && a.spec.tool == ask.tool
            && a.spec.identity == ask.identity
            && a.spec.workload == who.workload
    };
    let mut found: Vec<Arc<McpApproval>> = index
        .approvals
        .state()
        .into_iter()
        .filter(|a| same_call(a))
        .collect();
    found.sort_by_key(|a| a.metadata.creation_timestamp.as_ref().map(|t| t.0));
    for a in &found {
        match effective_phase(a, now) {
            ApprovalPhase::Approved => {
                if let Some(used) = use_approval(client, who, &a.name_any()).await? {
                    return Ok(used);
                }
            }
            ApprovalPhase::Pending => return Ok(answer_of(a, false, now)),
            _ => {}
        }
    }
    let approval = McpApproval {
        metadata: kube::api::ObjectMeta {
            name: Some(name_for(&ask.tool)),
            namespace: Some(who.namespace.clone()),
            labels: Some([(CALL_LABEL.to_string(), label.to_string())].into()),
            ..Default::default()
        },
        spec: ApprovalSpec {
            tool: ask.tool.clone(),
            identity: ask.identity.clone(),
            pod: who.pod.clone(),
            workload: who.workload.clone(),
            policy: ask.policy.clone(),
            rule: ask.rule.clone(),
            call: ask.call.clone(),
            arguments: ask.arguments.clone(),
            valid_for_seconds: ask.valid_for_seconds,
            decision: None,
        },
        status: None,
    };
    let api: Api<McpApproval> = Api::namespaced(client.clone(), &who.namespace);
    let made = api.create(&PostParams::default(), &approval).await?;
    tracing::info!(namespace = %who.namespace, approval = %made.name_any(), tool = %ask.tool, pod = %who.pod, "approval requested");
    Ok(answer_of(&made, false, now))
}

/// `GET /v1/approvals/NAME?wait=S`: where the approval stands, once it is decided or ended, or
/// after `wait` undecided. Only the workload that asked may read it.
pub async fn wait(
    index: &crate::index::Index,
    who: &Asker,
    name: &str,
    wait: Duration,
) -> Option<ApprovalAnswer> {
    let mut changed = index.subscribe_approvals();
    let deadline = tokio::time::Instant::now() + wait;
    let key = kube::runtime::reflector::ObjectRef::new(name).within(&who.namespace);
    loop {
        // Just made by `ask`, it may not have reached this replica's watch yet: wait for it.
        let found = index
            .approvals
            .get(&key)
            .filter(|a| a.spec.workload == who.workload);
        let now = Timestamp::now();
        let settled = found
            .as_ref()
            .is_some_and(|a| effective_phase(a, now) != ApprovalPhase::Pending);
        if settled
            || tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
        {
            return found.map(|a| answer_of(&a, false, now));
        }
    }
}

/// `POST /v1/approvals/NAME/use`: marks an approved approval Used, exactly once however many
/// replicas ask at once (a status write conditional on the version read). `None`: it cannot be
/// used (not approved, expired, or used already).
pub async fn use_approval(
    client: &Client,
    who: &Asker,
    name: &str,
) -> Result<Option<ApprovalAnswer>, kube::Error> {
    let api: Api<McpApproval> = Api::namespaced(client.clone(), &who.namespace);
    for _ in 0..5 {
        let a = api.get(name).await?;
        let now = Timestamp::now();
        if a.spec.workload != who.workload || effective_phase(&a, now) != ApprovalPhase::Approved {
            return Ok(None);
        }
        let patch = json!({
            "metadata": { "resourceVersion": a.resource_version() },
            "status": { "phase": ApprovalPhase::Used, "usedBy": who.pod, "usedAt": now.to_string(),
                        "expires": expires_at(&a).map(|t| t.to_string()) },
        });
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(used) => {
                tracing::info!(namespace = %who.namespace, approval = %name, pod = %who.pod, "approval used");
                return Ok(Some(answer_of(&used, true, now)));
            }
            // Someone wrote it since it was read (the leader's status, another replica's use):
            // read it again and decide again.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(decision: serde_json::Value) -> serde_json::Value {
        let mut s = json!({"tool": "t", "identity": "i", "pod": "p", "workload": "w", "policy": "pol",
                           "rule": "r", "call": "c", "validForSeconds": 60});
        if !decision.is_null() {
            s["decision"] = decision;
        }
        s
    }

    fn request(
        op: &str,
        old: Option<serde_json::Value>,
        new: serde_json::Value,
    ) -> AdmissionRequest<DynamicObject> {
        let object = |spec: serde_json::Value, phase: &str| {
            json!({
            "apiVersion": "tollgate.dev/v1alpha1", "kind": "McpApproval",
            "metadata": {"name": "a", "namespace": "n"}, "spec": spec, "status": {"phase": phase}})
        };
        let mut req = json!({
            "uid": "1", "kind": {"group": "tollgate.dev", "version": "v1alpha1", "kind": "McpApproval"},
            "resource": {"group": "tollgate.dev", "version": "v1alpha1", "resource": "mcpapprovals"},
            "name": "a", "namespace": "n", "operation": op, "userInfo": {"username": "alice"},
            "object": object(new, "Pending"),
        });
        if let Some(old) = old {
            req["oldObject"] = object(old, "Pending");
        }
        let review =
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req});
        crate::admission::parse_review(review.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn a_decision_is_added_once_to_a_call_that_does_not_change() {
        let approve = json!({"verdict": "Approve"});
        assert_eq!(
            review(&request("CREATE", None, spec(json!(null)))),
            Review::Allow
        );
        assert!(matches!(
            review(&request("CREATE", None, spec(approve.clone()))),
            Review::Refuse(_)
        ));
        assert_eq!(
            review(&request(
                "UPDATE",
                Some(spec(json!(null))),
                spec(approve.clone())
            )),
            Review::Decide(ApprovalVerdict::Approve)
        );
        assert_eq!(
            review(&request(
                "UPDATE",
                Some(spec(approve.clone())),
                spec(approve.clone())
            )),
            Review::Allow
        );
        let changed = review(&request(
            "UPDATE",
            Some(spec(approve.clone())),
            spec(json!({"verdict": "Deny", "reason": "x"})),
        ));
        assert!(matches!(changed, Review::Refuse(m) if m.contains("decided already")));
        let mut other_tool = spec(json!(null));
        other_tool["tool"] = json!("u");
        let moved = review(&request("UPDATE", Some(spec(json!(null))), other_tool));
        assert!(matches!(moved, Review::Refuse(m) if m.contains("cannot change")));
        let silent = review(&request(
            "UPDATE",
            Some(spec(json!(null))),
            spec(json!({"verdict": "Deny"})),
        ));
        assert!(matches!(silent, Review::Refuse(m) if m.contains("needs spec.decision.reason")));
    }

    #[test]
    fn the_phase_follows_the_decision_and_the_clock() {
        let mut a: McpApproval = serde_json::from_value(json!({
            "apiVersion": "tollgate.dev/v1alpha1", "kind": "McpApproval",
            "metadata": {"name": "a", "namespace": "n", "creationTimestamp": "2026-12-02T09:00:00Z"},
            "spec": spec(json!(null)),
        }))
        .unwrap();
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let pending = desired_status(&a, at("2026-12-02T09:00:30Z")).unwrap();
        assert_eq!(
            (pending.phase, pending.expires.as_deref()),
            (ApprovalPhase::Pending, Some("2026-12-02T09:01:00Z"))
        );
        a.status = Some(pending);
        assert_eq!(
            desired_status(&a, at("2026-12-02T09:00:31Z")),
            None,
            "nothing to write"
        );
        assert_eq!(
            desired_status(&a, at("2026-12-02T09:01:00Z"))
                .unwrap()
                .phase,
            ApprovalPhase::Expired
        );
        a.spec.decision = Some(ApprovalDecision {
            verdict: ApprovalVerdict::Approve,
            decided_at: Some("2026-12-02T09:00:40Z".into()),
            ..Default::default()
        });
        let approved = desired_status(&a, at("2026-12-02T09:00:41Z")).unwrap();
        assert_eq!(
            (approved.phase, approved.expires.as_deref()),
            (ApprovalPhase::Approved, Some("2026-12-02T09:01:40Z"))
        );
        a.status = Some(approved);
        assert_eq!(
            desired_status(&a, at("2026-12-02T09:01:40Z"))
                .unwrap()
                .phase,
            ApprovalPhase::Expired,
            "unused in its lifetime"
        );
    }
}
