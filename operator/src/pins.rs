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

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
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

/// The workload whose replicas share pins: a ReplicaSet of a Deployment (the pod's
/// `pod-template-hash` ends its name) is the Deployment; else the controller; else the pod.
pub fn workload_of(pod: &PodMeta) -> String {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let Some(owner) = owner else {
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
    namespace: &str,
    workload: &str,
    pod: &str,
    report: &PinReport,
) -> Result<WorkloadPin, String> {
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
        // First use of a tool the workload keeps without a pin (one held for a person): the
        // pin is made once, where none is.
        None if pin.spec.definition.is_none() && pin.spec.rejected.is_none() => {
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

/// What the webhook makes of a change to an McpToolPin, before asking who may make it.
#[derive(Debug, PartialEq)]
pub enum Review {
    /// Nothing that pins changed.
    Allow,
    Refuse(String),
    /// A pin or a rejection is written: allowed if the user may `accept`; an acceptance is
    /// stamped.
    Decide {
        stamp: bool,
    },
}

/// The pure part of the webhook.
pub fn review(req: &AdmissionRequest<DynamicObject>) -> Review {
    let read = |o: &Option<DynamicObject>| -> Result<McpToolPin, String> {
        let o = o.as_ref().ok_or("no object")?;
        serde_json::from_value(serde_json::to_value(o).map_err(|e| e.to_string())?)
            .map_err(|e| format!("not an McpToolPin: {e}"))
    };
    let new = match read(&req.object) {
        Ok(p) => p,
        Err(e) => return Review::Refuse(e),
    };
    let pinned_well = |spec: &ToolPinSpec| match &spec.definition {
        Some(d) if d.name != spec.tool => Err(format!(
            "spec.definition is {:?}'s definition, not {:?}'s",
            d.name, spec.tool
        )),
        Some(d) if !tollgate_api::validate::is_digest(&d.digest) => Err(format!(
            "spec.definition.digest {:?} is not sha256: and 64 hex digits",
            d.digest
        )),
        _ => Ok(()),
    };
    match req.operation {
        Operation::Create => {
            if let Err(e) = pinned_well(&new.spec) {
                return Review::Refuse(e);
            }
            if new.spec.source == PinSource::Accepted {
                return Review::Refuse(
                    "an McpToolPin is made by the operator when a sidecar lists the tool; accept a held definition with kubectl tollgate pins accept, or pin it in the policy's spec.pinning.tools"
                        .into(),
                );
            }
            if new.spec.definition.is_some() || new.spec.rejected.is_some() {
                Review::Decide { stamp: false }
            } else {
                Review::Allow
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
            let pin_changed =
                old.spec.definition != new.spec.definition || old.spec.source != new.spec.source;
            let rejection_changed = old.spec.rejected != new.spec.rejected;
            if !pin_changed && !rejection_changed {
                return Review::Allow;
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
                    (PinSource::FirstUse, Some(_)) if old.spec.definition.is_none() => {}
                    (PinSource::FirstUse, _) => {
                        return Review::Refuse(
                            "a pin made on first use is made once; accept a new definition (kubectl tollgate pins accept) or delete the McpToolPin to pin anew"
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
            Review::Decide {
                stamp: pin_changed && new.spec.source == PinSource::Accepted,
            }
        }
        _ => Review::Allow,
    }
}

/// The webhook: [`review`], then the SubjectAccessReview and the stamp.
pub async fn admit(client: &Client, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    let stamp = match review(req) {
        Review::Allow => return resp,
        Review::Refuse(message) => return resp.deny(message),
        Review::Decide { stamp } => stamp,
    };
    let user = &req.user_info;
    let username = user.username.clone().unwrap_or_default();
    let sar = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: user.username.clone(),
            uid: user.uid.clone(),
            groups: user.groups.clone(),
            extra: user.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some(tollgate_api::GROUP.into()),
                resource: Some("mcptoolpins".into()),
                verb: Some("accept".into()),
                namespace: req.namespace.clone(),
                name: Some(req.name.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let allowed = match api.create(&PostParams::default(), &sar).await {
        Ok(answer) => answer.status.is_some_and(|s| s.allowed),
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

    fn def(digest_char: char) -> ToolDefinition {
        ToolDefinition {
            name: "read_file".into(),
            digest: format!("sha256:{}", digest_char.to_string().repeat(64)),
            body: format!("sha256:{}", "0".repeat(64)),
            fields: [("description".to_string(), format!("\"{digest_char}\""))].into(),
        }
    }

    fn pin(
        definition: Option<ToolDefinition>,
        source: PinSource,
        held: Option<ToolDefinition>,
    ) -> serde_json::Value {
        let mut p = McpToolPin::new(
            "pin-x",
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
        old: Option<serde_json::Value>,
        new: serde_json::Value,
    ) -> AdmissionRequest<DynamicObject> {
        let review = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u", "kind": {"group": "tollgate.dev", "version": "v1alpha1", "kind": "McpToolPin"},
                "resource": {"group": "tollgate.dev", "version": "v1alpha1", "resource": "mcptoolpins"},
                "name": "pin-x", "namespace": "shop", "operation": op,
                "userInfo": {"username": "alice"}, "object": new, "oldObject": old,
            }
        });
        let review: kube::core::admission::AdmissionReview<DynamicObject> =
            serde_json::from_value(review).unwrap();
        review.try_into().unwrap()
    }

    #[test]
    fn accepting_takes_the_held_definition_and_nothing_else() {
        let old = pin(Some(def('a')), PinSource::FirstUse, Some(def('b')));
        let ok = pin(Some(def('b')), PinSource::Accepted, Some(def('b')));
        assert_eq!(
            review(&request("UPDATE", Some(old.clone()), ok)),
            Review::Decide { stamp: true }
        );
        let made_up = pin(Some(def('c')), PinSource::Accepted, Some(def('b')));
        assert!(
            matches!(review(&request("UPDATE", Some(old.clone()), made_up)), Review::Refuse(m) if m.contains("hold back"))
        );
        // Status alone (the operator reporting what it holds) is no decision.
        let status = pin(Some(def('a')), PinSource::FirstUse, Some(def('c')));
        assert_eq!(review(&request("UPDATE", Some(old), status)), Review::Allow);
    }

    #[test]
    fn a_first_use_pin_is_made_once_and_an_accepted_pin_is_never_created_outright() {
        let unpinned = pin(None, PinSource::FirstUse, None);
        let first = pin(Some(def('a')), PinSource::FirstUse, None);
        assert_eq!(
            review(&request("UPDATE", Some(unpinned), first.clone())),
            Review::Decide { stamp: false }
        );
        let again = pin(Some(def('b')), PinSource::FirstUse, None);
        assert!(
            matches!(review(&request("UPDATE", Some(first.clone()), again)), Review::Refuse(m) if m.contains("made once"))
        );
        assert_eq!(
            review(&request("CREATE", None, first)),
            Review::Decide { stamp: false }
        );
        let outright = pin(Some(def('a')), PinSource::Accepted, None);
        assert!(matches!(
            review(&request("CREATE", None, outright)),
            Review::Refuse(_)
        ));
    }

    #[test]
    fn a_rejection_names_the_held_digest_and_the_tool_and_workload_are_fixed() {
        let old = pin(Some(def('a')), PinSource::FirstUse, Some(def('b')));
        let mut rejected = old.clone();
        rejected["spec"]["rejected"] = json!(def('b').digest);
        assert_eq!(
            review(&request("UPDATE", Some(old.clone()), rejected)),
            Review::Decide { stamp: false }
        );
        let mut wrong = old.clone();
        wrong["spec"]["rejected"] = json!(def('c').digest);
        assert!(matches!(
            review(&request("UPDATE", Some(old.clone()), wrong)),
            Review::Refuse(_)
        ));
        let mut moved = old.clone();
        moved["spec"]["tool"] = json!("delete_all");
        assert!(
            matches!(review(&request("UPDATE", Some(old), moved)), Review::Refuse(m) if m.contains("cannot change"))
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
        assert_ne!(
            pin_name("Deployment/mcp", "a"),
            pin_name("Deployment/mcp", "b")
        );
        assert!(pin_name("Deployment/mcp", "a").len() <= 63);
    }
}
