//! `McpToolPin`s: each workload's tool pins, kept for its sidecars, decided by people.
//!
//! ```text
//! sidecar (pod token) ─ POST /v1/pins {definition} ─> report: no pin of the tool yet ─> the
//!   operator makes one (source FirstUse): the first replica's definition is every replica's
//!                     ─ POST /v1/pins {definition, held} ─> status.held and an Event, once per
//!   held definition
//!   either way it answers the tool's pin as kept (a WorkloadPin)
//! POST /pins (mutating webhook, McpToolPin CREATE | UPDATE)
//!   workload or tool changed                                ─> refused
//!   a pin changed, or a rejection written ─ SubjectAccessReview (verb accept, mcptoolpins/NAME)
//!     ─ no ─> refused naming the verb
//!     ─ yes: an acceptance must be the definition the sidecars hold back (status.held), and
//!       a first-use pin is made once ─> acceptedBy, acceptedAt stamped
//! the index ─ every McpToolPin of a workload ─> the policy stream of each of its pods
//! ```
//!
//! A workload is a pod's controller, where a ReplicaSet stands for its Deployment (a rollout
//! keeps the pins: a new image is exactly when a definition may change), else the pod alone.
//! The pod's metadata says which; a report is taken only where the API server agrees (the
//! ReplicaSet exists with that uid, and that Deployment controls it), so a relabelled or
//! forged pod pins nothing of another workload's. Every definition reported or written is
//! checked against its digest ([`ToolDefinition::verify`]): the text a person reviews is the
//! text the pin holds.

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tollgate_api::contract::PinReport;
use tollgate_api::{
    HeldDefinition, McpToolPin, PinSource, ToolPinSpec, ToolPinStatus, WorkloadPin,
};

use crate::index::PodMeta;

/// The controllers whose pods share pins, by kind and API version; a pod of any other (or of
/// none) is a workload of its own (`Pod/NAME`): its pins are its own.
const CONTROLLERS: [(&str, &str); 4] = [
    ("ReplicaSet", "apps/v1"),
    ("StatefulSet", "apps/v1"),
    ("DaemonSet", "apps/v1"),
    ("Job", "batch/v1"),
];

/// The workload whose replicas share pins, as the pod's metadata says: a ReplicaSet of a
/// Deployment (the pod's `pod-template-hash` ends its name) is the Deployment; else one of
/// [`CONTROLLERS`]; else the pod alone.
pub fn workload_of(pod: &PodMeta) -> String {
    let Some(owner) = controller(pod) else {
        return format!("Pod/{}", pod.name_any());
    };
    let hash = pod.labels().get("pod-template-hash");
    match (owner.kind.as_str(), hash) {
        ("ReplicaSet", Some(hash)) => match owner.name.strip_suffix(&format!("-{hash}")) {
            Some(deployment) if !deployment.is_empty() => format!("Deployment/{deployment}"),
            _ => format!("ReplicaSet/{}", owner.name),
        },
        (kind, _) => format!("{kind}/{}", owner.name),
    }
}

/// The pod's controller, where it is one of [`CONTROLLERS`].
fn controller(
    pod: &PodMeta,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .filter(|o| {
            CONTROLLERS
                .iter()
                .any(|(kind, version)| o.kind == *kind && o.api_version == *version)
        })
}

/// [`workload_of`], where the API server agrees: the controller the pod names exists with the
/// uid it names (and for a ReplicaSet, the Deployment its labels imply controls it). A pod
/// that names one falsely, or whose labels were changed, pins nothing of another workload's.
/// (Who may create pods in a namespace may create one its controller really owns: Kubernetes
/// trusts them with its workloads, and so does this.)
pub async fn verified_workload(client: &Client, pod: &PodMeta) -> Result<String, String> {
    use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
    use k8s_openapi::api::batch::v1::Job;
    let claimed = workload_of(pod);
    let Some(owner) = controller(pod) else {
        return Ok(claimed);
    };
    let namespace = pod.namespace().unwrap_or_default();
    let meta = match owner.kind.as_str() {
        "ReplicaSet" => get_meta::<ReplicaSet>(client, &namespace, &owner.name).await,
        "StatefulSet" => get_meta::<StatefulSet>(client, &namespace, &owner.name).await,
        "DaemonSet" => get_meta::<DaemonSet>(client, &namespace, &owner.name).await,
        _ => get_meta::<Job>(client, &namespace, &owner.name).await,
    }?
    .filter(|m| m.uid.as_deref() == Some(owner.uid.as_str()))
    .ok_or_else(|| {
        format!(
            "the pod's {} {} does not exist with uid {}",
            owner.kind, owner.name, owner.uid
        )
    })?;
    let verified = match owner.kind.as_str() {
        "ReplicaSet" => meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| {
                o.controller == Some(true) && o.kind == "Deployment" && o.api_version == "apps/v1"
            })
            .map_or_else(
                || format!("ReplicaSet/{}", owner.name),
                |d| format!("Deployment/{}", d.name),
            ),
        kind => format!("{kind}/{}", owner.name),
    };
    if verified != claimed {
        return Err(format!(
            "the pod's labels make it {claimed}'s, but its {} is {verified}'s",
            owner.kind
        ));
    }
    Ok(verified)
}

async fn get_meta<K>(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>, String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .get_metadata_opt(name)
        .await
        .map(|m| m.map(|m| m.metadata))
        .map_err(|e| {
            format!(
                "cannot read {} {name}: {e}",
                K::kind(&K::DynamicType::default())
            )
        })
}

/// The operator's own user, as the API server knows it (a SelfSubjectReview); `None`, and a
/// warning, where it will not say: then no first-use pin is admitted, and tools wait for a
/// person.
pub async fn own_user(client: &Client) -> Option<String> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    match api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
    {
        Ok(review) => review
            .status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username),
        Err(e) => {
            tracing::warn!(error = %e, "cannot learn this operator's own user: no tool is pinned on first use");
            None
        }
    }
}

/// The most McpToolPins one workload may have: a server listing ever more tools makes the
/// operator keep no more (and the sidecar holds back what is not pinned).
pub const MAX_PINS_PER_WORKLOAD: usize = 512;

/// The name of a workload's pin of a tool: a digest of both (a tool's name need not be a valid
/// object name, and a server chooses it: a collision would have to break SHA-256).
pub fn pin_name(workload: &str, tool: &str) -> String {
    let key = format!("{}:{workload}\n{}:{tool}", workload.len(), tool.len());
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("pin-{hex}")
}

/// What a sidecar reported, applied to the workload's pin: the pin as kept afterwards.
pub async fn report(
    client: &Client,
    recorder: &Recorder,
    pins: &kube::runtime::reflector::Store<McpToolPin>,
    namespace: &str,
    workload: &str,
    pod: &str,
    report: &PinReport,
) -> Result<WorkloadPin, String> {
    report
        .definition
        .verify()
        .map_err(|e| format!("the reported definition does not hold together: {e}"))?;
    let tool = &report.definition.name;
    let name = pin_name(workload, tool);
    let api: Api<McpToolPin> = Api::namespaced(client.clone(), namespace);
    let failed = |e: kube::Error| format!("the API server refused: {e}");
    // Made or read, up to twice: a replica racing this one to make it wins, and this one reads
    // its pin.
    let mut pin = None;
    for _ in 0..2 {
        if let Some(found) = api.get_opt(&name).await.map_err(failed)? {
            pin = Some(found);
            break;
        }
        let kept = pins
            .state()
            .iter()
            .filter(|p| p.namespace().as_deref() == Some(namespace) && p.spec.workload == workload)
            .count();
        if kept >= MAX_PINS_PER_WORKLOAD {
            return Err(format!(
                "{workload} has {kept} tool pins, the most one workload may have; {tool:?} is not pinned"
            ));
        }
        let first_use = report.held.is_none();
        let made = McpToolPin::new(
            &name,
            ToolPinSpec {
                workload: workload.into(),
                tool: tool.clone(),
                definition: first_use.then(|| report.definition.clone()),
                source: PinSource::FirstUse,
                ..Default::default()
            },
        );
        match api.create(&PostParams::default(), &made).await {
            Ok(made) => {
                if first_use {
                    tracing::info!(namespace, workload, tool, digest = %report.definition.digest, pod, "tool pinned on first use");
                    publish(
                        recorder,
                        &made,
                        EventType::Normal,
                        "Pinned",
                        format!(
                            "{tool} pinned on first use to {} (listed by pod {pod})",
                            report.definition.digest
                        ),
                    )
                    .await;
                }
                pin = Some(made);
                break;
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(failed(e)),
        }
    }
    let Some(mut pin) = pin else {
        return Err(format!(
            "McpToolPin {name} is being made and remade; try again"
        ));
    };
    if pin.spec.workload != workload || pin.spec.tool != *tool {
        return Err(format!(
            "McpToolPin {name} is {}'s pin of {:?}, not {workload}'s of {tool:?}",
            pin.spec.workload, pin.spec.tool
        ));
    }
    match &report.held {
        // First use of a tool the workload keeps without a pin, where no definition waits
        // for a person (that is theirs to accept, not the next list's to pin).
        None if pin.spec.definition.is_none()
            && pin.spec.rejected.is_none()
            && pin.status.as_ref().is_none_or(|s| s.held.is_none()) =>
        {
            let patch = json!({
                "metadata": { "resourceVersion": pin.resource_version() },
                "spec": { "definition": report.definition, "source": PinSource::FirstUse },
            });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(p) => pin = p,
                // Another replica pinned it first: its pin stands.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    pin = api.get(&name).await.map_err(failed)?;
                }
                Err(e) => return Err(failed(e)),
            }
        }
        None => {}
        Some(held) => {
            let known = pin
                .status
                .as_ref()
                .and_then(|s| s.held.as_ref())
                .is_some_and(|h| h.definition.digest == report.definition.digest);
            let pinned = pin.spec.definition.as_ref().map(|d| d.digest.as_str());
            if !known && pinned != Some(report.definition.digest.as_str()) {
                let status = ToolPinStatus {
                    held: Some(HeldDefinition {
                        definition: report.definition.clone(),
                        why: held.why.clone(),
                        reason: held.reason.clone(),
                        changed: held.changed.clone(),
                        pod: pod.into(),
                        since: Timestamp::now().to_string(),
                    }),
                };
                api.patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "status": status })),
                )
                .await
                .map_err(failed)?;
                tracing::warn!(namespace, workload, tool, why = %held.why, digest = %report.definition.digest, pod, "tool definition held back");
                let rejected = pin.spec.rejected.as_deref() == Some(&report.definition.digest);
                if !rejected {
                    publish(
                        recorder,
                        &pin,
                        EventType::Warning,
                        "DefinitionHeld",
                        format!(
                            "{}. Held back on pod {pod}: review it, then kubectl tollgate pins accept {tool:?} --workload {workload} --digest {}",
                            held.reason, report.definition.digest
                        ),
                    )
                    .await;
                }
            }
        }
    }
    Ok(WorkloadPin::from(&pin.spec))
}

async fn publish(recorder: &Recorder, pin: &McpToolPin, type_: EventType, why: &str, note: String) {
    let event = Event {
        type_,
        reason: why.into(),
        note: Some(note),
        action: "Pin".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &pin.object_ref(&())).await {
        tracing::warn!(error = %e, "cannot publish an event");
    }
}

/// Announces people's decisions on pins, as Events on the McpToolPin (the leader's): an
/// acceptance, with who made it, and a rejection. What the sidecars hold back is announced when
/// they report it ([`report`]).
pub async fn announce(
    client: Client,
    index: std::sync::Arc<crate::index::Index>,
    reporter: kube::runtime::events::Reporter,
) {
    use futures::StreamExt;
    let recorder = Recorder::new(client, reporter);
    // What each pin was when last seen: its pinned digest and source, and its rejection.
    let mut seen: std::collections::HashMap<String, (Option<String>, PinSource, Option<String>)> =
        index
            .pins
            .state()
            .iter()
            .map(|p| (p.uid().unwrap_or_default(), decided(&p.spec)))
            .collect();
    let mut events = std::pin::pin!(index.pin_events());
    while let Some(pin) = events.next().await {
        let now = decided(&pin.spec);
        let Some(before) = seen.insert(pin.uid().unwrap_or_default(), now.clone()) else {
            continue;
        };
        let (tool, workload) = (&pin.spec.tool, &pin.spec.workload);
        if now.1 == PinSource::Accepted && now.0 != before.0 {
            let note = format!(
                "{} accepted {} for {workload}'s {tool:?}",
                pin.spec.accepted_by.as_deref().unwrap_or("?"),
                now.0.as_deref().unwrap_or("?")
            );
            publish(&recorder, &pin, EventType::Normal, "Accepted", note).await;
        }
        if let Some(rejected) = &now.2
            && now.2 != before.2
        {
            let note = format!("{rejected} rejected for {workload}'s {tool:?}: it stays held");
            publish(&recorder, &pin, EventType::Normal, "Rejected", note).await;
        }
    }
}

fn decided(spec: &ToolPinSpec) -> (Option<String>, PinSource, Option<String>) {
    (
        spec.definition.as_ref().map(|d| d.digest.clone()),
        spec.source,
        spec.rejected.clone(),
    )
}

/// The controllers that delete what a deleted namespace or owner leaves (with the controller
/// manager's service-account credentials, or its own).
const CLEANERS: [&str; 3] = [
    "system:serviceaccount:kube-system:namespace-controller",
    "system:serviceaccount:kube-system:generic-garbage-collector",
    "system:kube-controller-manager",
];

/// What the webhook makes of a change to an McpToolPin, before asking who may make it.
#[derive(Debug, PartialEq)]
pub enum Review {
    /// Nothing that pins changed.
    Allow,
    Refuse(String),
    /// A pin or a rejection is written, or a pin deleted: allowed if the user may `accept`; an
    /// acceptance is stamped.
    Decide {
        stamp: bool,
    },
}

/// The pure part of the webhook. `operator` is the operator's own user: first-use pins are its
/// alone to write (from what a sidecar listed).
pub fn review(req: &AdmissionRequest<DynamicObject>, operator: Option<&str>) -> Review {
    let read = |o: &Option<DynamicObject>| -> Result<McpToolPin, String> {
        let o = o.as_ref().ok_or("no object")?;
        serde_json::from_value(serde_json::to_value(o).map_err(|e| e.to_string())?)
            .map_err(|e| format!("not an McpToolPin: {e}"))
    };
    if req.operation == Operation::Delete {
        // A namespace going, or its owner: what Kubernetes deletes with it is no decision.
        if req
            .user_info
            .username
            .as_deref()
            .is_some_and(|u| CLEANERS.contains(&u))
        {
            return Review::Allow;
        }
        // The next list would pin the tool anew: as much a decision as an acceptance.
        return Review::Decide { stamp: false };
    }
    let new = match read(&req.object) {
        Ok(p) => p,
        Err(e) => return Review::Refuse(e),
    };
    let by_operator = operator.is_some_and(|o| req.user_info.username.as_deref() == Some(o));
    let pinned_well = |spec: &ToolPinSpec| match &spec.definition {
        Some(d) if d.name != spec.tool => Err(format!(
            "spec.definition is {:?}'s definition, not {:?}'s",
            d.name, spec.tool
        )),
        Some(d) => d
            .verify()
            .map_err(|e| format!("spec.definition does not hold together: {e}")),
        None => Ok(()),
    };
    match req.operation {
        Operation::Create => {
            let expected = pin_name(&new.spec.workload, &new.spec.tool);
            if req.name != expected {
                return Review::Refuse(format!(
                    "the McpToolPin of {}'s {:?} is named {expected}",
                    new.spec.workload, new.spec.tool
                ));
            }
            if let Err(e) = pinned_well(&new.spec) {
                return Review::Refuse(e);
            }
            if new.spec.source == PinSource::Accepted
                || new.spec.accepted_by.is_some()
                || new.spec.accepted_at.is_some()
            {
                return Review::Refuse(
                    "an McpToolPin is made by the operator when a sidecar lists the tool; accept a held definition with kubectl tollgate pins accept, or pin it in the policy's spec.pinning.tools"
                        .into(),
                );
            }
            match (&new.spec.definition, by_operator) {
                (Some(_), false) => Review::Refuse(
                    "a pin made on first use is the operator's to write, from what a sidecar listed".into(),
                ),
                (Some(_), true) => Review::Decide { stamp: false },
                (None, _) if new.spec.rejected.is_some() => Review::Decide { stamp: false },
                (None, _) => Review::Allow,
            }
        }
        Operation::Update => {
            let old = match read(&req.old_object) {
                Ok(p) => p,
                Err(e) => return Review::Refuse(e),
            };
            if old.spec.workload != new.spec.workload || old.spec.tool != new.spec.tool {
                return Review::Refuse("an McpToolPin's workload and tool cannot change".into());
            }
            if let Err(e) = pinned_well(&new.spec) {
                return Review::Refuse(e);
            }
            let pin_changed =
                old.spec.definition != new.spec.definition || old.spec.source != new.spec.source;
            let rejection_changed = old.spec.rejected != new.spec.rejected;
            let stamps_changed = old.spec.accepted_by != new.spec.accepted_by
                || old.spec.accepted_at != new.spec.accepted_at;
            if !pin_changed && !rejection_changed {
                return match stamps_changed {
                    true => Review::Refuse(
                        "acceptedBy and acceptedAt are stamped when a definition is accepted"
                            .into(),
                    ),
                    false => Review::Allow,
                };
            }
            let held = old
                .status
                .as_ref()
                .and_then(|s| s.held.as_ref())
                .map(|h| &h.definition);
            if pin_changed {
                match (new.spec.source, &new.spec.definition) {
                    (PinSource::Accepted, Some(d)) if held == Some(d) => {}
                    (PinSource::Accepted, _) => {
                        return Review::Refuse(format!(
                            "only the definition the sidecars hold back (status.held, {}) can be accepted",
                            held.map_or("none now", |d| d.digest.as_str())
                        ));
                    }
                    (PinSource::FirstUse, Some(_))
                        if old.spec.definition.is_none() && by_operator => {}
                    (PinSource::FirstUse, _) => {
                        return Review::Refuse(
                            "a pin made on first use is made once, by the operator from what a sidecar listed; accept a held definition (kubectl tollgate pins accept) instead"
                                .into(),
                        );
                    }
                }
            }
            if let Some(r) = &new.spec.rejected
                && rejection_changed
                && held.map(|d| &d.digest) != Some(r)
            {
                return Review::Refuse(format!(
                    "only the definition the sidecars hold back (status.held, {}) can be rejected",
                    held.map_or("none now", |d| d.digest.as_str())
                ));
            }
            let accepted = pin_changed && new.spec.source == PinSource::Accepted;
            if stamps_changed && !accepted {
                return Review::Refuse(
                    "acceptedBy and acceptedAt are stamped when a definition is accepted".into(),
                );
            }
            Review::Decide { stamp: accepted }
        }
        _ => Review::Allow,
    }
}

/// The webhook: [`review`], then the SubjectAccessReview and the stamp.
pub async fn admit(
    client: &Client,
    operator: Option<&str>,
    req: &AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    let stamp = match review(req, operator) {
        Review::Allow => return resp,
        Review::Refuse(message) => return resp.deny(message),
        Review::Decide { stamp } => stamp,
    };
    let username = req.user_info.username.clone().unwrap_or_default();
    let allowed = match crate::approvals::may(client, req, "mcptoolpins", "accept").await {
        Ok(allowed) => allowed,
        Err(e) => {
            return resp.deny(format!(
                "Tollgate cannot check whether {username} may accept tool definitions: {e}"
            ));
        }
    };
    if !allowed {
        return resp.deny(format!(
            "{username} may not pin tools: that takes the RBAC verb \"accept\" on \
             mcptoolpins.tollgate.dev in namespace {} (the chart's ClusterRole tollgate-pin-reviewer)",
            req.namespace.as_deref().unwrap_or_default()
        ));
    }
    if !stamp {
        return resp;
    }
    let patch = json!([
        { "op": "add", "path": "/spec/acceptedBy", "value": username },
        { "op": "add", "path": "/spec/acceptedAt", "value": Timestamp::now().to_string() },
    ]);
    tracing::info!(namespace = ?req.namespace, pin = %req.name, user = %username, "tool definition accepted");
    match resp.with_patch(serde_json::from_value(patch).expect("a JSON patch")) {
        Ok(r) => r,
        Err(e) => AdmissionResponse::invalid(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_api::ToolDefinition;

    const OPERATOR: &str = "system:serviceaccount:tollgate-system:tollgate-operator";

    fn def(description: &str) -> ToolDefinition {
        ToolDefinition::read(&json!({"name": "read_file", "description": description})).unwrap()
    }

    fn pin(
        definition: Option<ToolDefinition>,
        source: PinSource,
        held: Option<ToolDefinition>,
    ) -> serde_json::Value {
        let mut p = McpToolPin::new(
            &pin_name("Deployment/mcp", "read_file"),
            ToolPinSpec {
                workload: "Deployment/mcp".into(),
                tool: "read_file".into(),
                definition,
                source,
                ..Default::default()
            },
        );
        p.metadata.namespace = Some("shop".into());
        p.status = held.map(|definition| ToolPinStatus {
            held: Some(HeldDefinition {
                definition,
                why: "changed".into(),
                ..Default::default()
            }),
        });
        serde_json::to_value(p).unwrap()
    }

    fn request(
        op: &str,
        user: &str,
        old: Option<serde_json::Value>,
        new: Option<serde_json::Value>,
    ) -> AdmissionRequest<DynamicObject> {
        let review = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u", "kind": {"group": "tollgate.dev", "version": "v1alpha1", "kind": "McpToolPin"},
                "resource": {"group": "tollgate.dev", "version": "v1alpha1", "resource": "mcptoolpins"},
                "name": pin_name("Deployment/mcp", "read_file"), "namespace": "shop", "operation": op,
                "userInfo": {"username": user}, "object": new, "oldObject": old,
            }
        });
        let review: kube::core::admission::AdmissionReview<DynamicObject> =
            serde_json::from_value(review).unwrap();
        review.try_into().unwrap()
    }

    fn as_alice(op: &str, old: Option<serde_json::Value>, new: serde_json::Value) -> Review {
        review(&request(op, "alice", old, Some(new)), Some(OPERATOR))
    }

    fn refused(r: Review, words: &str) -> bool {
        matches!(r, Review::Refuse(m) if m.contains(words))
    }

    #[test]
    fn accepting_takes_the_held_definition_and_nothing_else() {
        let old = pin(Some(def("a")), PinSource::FirstUse, Some(def("b")));
        let ok = pin(Some(def("b")), PinSource::Accepted, Some(def("b")));
        assert_eq!(
            as_alice("UPDATE", Some(old.clone()), ok),
            Review::Decide { stamp: true }
        );
        let made_up = pin(Some(def("c")), PinSource::Accepted, Some(def("b")));
        assert!(refused(
            as_alice("UPDATE", Some(old.clone()), made_up),
            "hold back"
        ));
        // The held text swapped for harmless text under the same digest does not verify.
        let mut lying = pin(Some(def("b")), PinSource::Accepted, Some(def("b")));
        lying["spec"]["definition"]["fields"] = json!(def("a").fields);
        assert!(refused(
            as_alice("UPDATE", Some(old.clone()), lying),
            "does not hold together"
        ));
        // Status alone (the operator reporting what it holds) is no decision; stamps are not
        // anyone's to write.
        let status = pin(Some(def("a")), PinSource::FirstUse, Some(def("c")));
        assert_eq!(as_alice("UPDATE", Some(old.clone()), status), Review::Allow);
        let mut stamped = old.clone();
        stamped["spec"]["acceptedBy"] = json!("bob");
        assert!(refused(as_alice("UPDATE", Some(old), stamped), "stamped"));
    }

    #[test]
    fn a_first_use_pin_is_the_operators_to_make_once_and_an_accepted_pin_is_never_created() {
        let unpinned = pin(None, PinSource::FirstUse, None);
        let first = pin(Some(def("a")), PinSource::FirstUse, None);
        assert_eq!(
            review(
                &request(
                    "UPDATE",
                    OPERATOR,
                    Some(unpinned.clone()),
                    Some(first.clone())
                ),
                Some(OPERATOR)
            ),
            Review::Decide { stamp: false }
        );
        assert!(refused(
            as_alice("UPDATE", Some(unpinned), first.clone()),
            "the operator"
        ));
        let again = pin(Some(def("b")), PinSource::FirstUse, None);
        assert!(refused(
            review(
                &request("UPDATE", OPERATOR, Some(first.clone()), Some(again)),
                Some(OPERATOR)
            ),
            "made once"
        ));
        assert_eq!(
            review(
                &request("CREATE", OPERATOR, None, Some(first.clone())),
                Some(OPERATOR)
            ),
            Review::Decide { stamp: false }
        );
        assert!(refused(as_alice("CREATE", None, first), "the operator"));
        let outright = pin(Some(def("a")), PinSource::Accepted, None);
        assert!(refused(
            as_alice("CREATE", None, outright),
            "made by the operator"
        ));
        let mut misnamed = pin(None, PinSource::FirstUse, None);
        misnamed["spec"]["tool"] = json!("delete_all");
        assert!(refused(as_alice("CREATE", None, misnamed), "is named pin-"));
    }

    #[test]
    fn a_rejection_names_the_held_digest_a_deletion_is_a_decision_and_the_tool_is_fixed() {
        let old = pin(Some(def("a")), PinSource::FirstUse, Some(def("b")));
        let mut rejected = old.clone();
        rejected["spec"]["rejected"] = json!(def("b").digest);
        assert_eq!(
            as_alice("UPDATE", Some(old.clone()), rejected),
            Review::Decide { stamp: false }
        );
        let mut wrong = old.clone();
        wrong["spec"]["rejected"] = json!(def("c").digest);
        assert!(refused(
            as_alice("UPDATE", Some(old.clone()), wrong),
            "rejected"
        ));
        let mut moved = old.clone();
        moved["spec"]["tool"] = json!("delete_all");
        assert!(refused(
            as_alice("UPDATE", Some(old.clone()), moved),
            "cannot change"
        ));
        assert_eq!(
            review(
                &request("DELETE", "alice", Some(old.clone()), None),
                Some(OPERATOR)
            ),
            Review::Decide { stamp: false }
        );
        assert_eq!(
            review(
                &request(
                    "DELETE",
                    "system:serviceaccount:kube-system:namespace-controller",
                    Some(old),
                    None
                ),
                Some(OPERATOR)
            ),
            Review::Allow,
            "a namespace going takes its pins"
        );
    }

    #[test]
    fn a_deployments_replicas_share_one_workload_across_rollouts() {
        let pod = |owner: serde_json::Value, hash: &str| -> PodMeta {
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "mcp-7d9f-x", "labels": {"pod-template-hash": hash}, "ownerReferences": [owner]},
            }))
            .unwrap()
        };
        let rs = |name: &str| json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name, "uid": "u", "controller": true});
        assert_eq!(workload_of(&pod(rs("mcp-7d9f"), "7d9f")), "Deployment/mcp");
        assert_eq!(workload_of(&pod(rs("mcp-5c4b"), "5c4b")), "Deployment/mcp");
        assert_eq!(workload_of(&pod(rs("other"), "7d9f")), "ReplicaSet/other");
        let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "u", "controller": true});
        assert_eq!(workload_of(&pod(sts, "x")), "StatefulSet/db");
        // A kind that never owns pods, or one Tollgate does not know: the pod's own pins.
        let claimed = json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "victim", "uid": "u", "controller": true});
        assert_eq!(workload_of(&pod(claimed, "x")), "Pod/mcp-7d9f-x");
        assert_ne!(
            pin_name("Deployment/mcp", "a"),
            pin_name("Deployment/mcp", "b")
        );
        assert!(pin_name("Deployment/mcp", "a").len() <= 63);
    }
}
