//! The admission webhooks: `AdmissionReview` in, `AdmissionReview` out.
//!
//! ```text
//! POST /mutate   Pod          ─ inject_sidecar ─> JSON patch | unchanged | skipped (+ warning)
//! POST /validate McpPolicy    ─ validate_spec  ─> allowed | denied with every problem
//!                McpClusterPolicy
//! ```
//!
//! Both are pure over their inputs; the HTTPS server in [`crate::server`] feeds them bytes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::Status;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use tollgate_api::{ClusterPolicySpec, GROUP, PolicySpec, Problem};

use crate::inject::{InjectConfig, Injection, inject_sidecar};

/// Parses an `AdmissionReview` body; a body that is not one gets an error naming why.
pub fn parse_review(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, String> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not an admission.k8s.io/v1 AdmissionReview: {e}"))?;
    review
        .try_into()
        .map_err(|_| "the AdmissionReview carries no request".to_string())
}

/// What the mutating webhook answers, and what must exist before it may.
pub struct Mutation {
    pub response: AdmissionResponse,
    /// The pod is injected with the `network-policy` boundary: the NetworkPolicy for this port
    /// in its namespace, for a pod with these labels, must exist before the answer is sent.
    pub network_policy: Option<(i32, BTreeMap<String, String>)>,
}

/// The mutating webhook: injects the sidecar into pods that ask for it.
pub fn mutate(
    req: &AdmissionRequest<DynamicObject>,
    namespace_labels: &BTreeMap<String, String>,
    config: &InjectConfig,
) -> Mutation {
    let resp = AdmissionResponse::from(req);
    if req.kind.kind != "Pod" || req.operation != Operation::Create {
        return resp.into();
    }
    let Some(object) = &req.object else {
        return resp.into();
    };
    let pod: Pod = match serde_json::to_value(object).and_then(serde_json::from_value) {
        Ok(pod) => pod,
        Err(e) => return refuse(resp, format!("the pod cannot be read: {e}")).into(),
    };
    let network_policy =
        |port: Option<i32>| port.map(|p| (p, pod.metadata.labels.clone().unwrap_or_default()));
    let response = match inject_sidecar(&pod, namespace_labels, config) {
        Ok(Injection::Patch {
            patch,
            warnings,
            network_policy: port,
        }) => {
            let needs = network_policy(port);
            tracing::info!(namespace = ?req.namespace, pod = pod_name(&pod), "sidecar injected");
            let response = match resp.with_patch(patch) {
                Ok(mut resp) => {
                    if !warnings.is_empty() {
                        resp.warnings = Some(
                            warnings
                                .into_iter()
                                .map(|w| format!("Tollgate: {w}"))
                                .collect(),
                        );
                    }
                    resp
                }
                Err(e) => return AdmissionResponse::invalid(e).into(),
            };
            return Mutation {
                response,
                network_policy: needs,
            };
        }
        Ok(Injection::Unchanged) => resp,
        Ok(Injection::Skip { reason, warn }) => {
            tracing::debug!(namespace = ?req.namespace, pod = pod_name(&pod), %reason, "not injected");
            if warn {
                let mut resp = resp;
                resp.warnings = Some(vec![format!(
                    "Tollgate did not inject its sidecar: {reason}"
                )]);
                resp
            } else {
                resp
            }
        }
        Err(bad) => refuse(resp, format!("Tollgate cannot inject this pod: {bad}")),
    };
    response.into()
}

impl From<AdmissionResponse> for Mutation {
    fn from(response: AdmissionResponse) -> Mutation {
        Mutation {
            response,
            network_policy: None,
        }
    }
}

/// The pod cannot be admitted because the NetworkPolicy that keeps its port closed cannot be
/// made: it would start with its MCP port open.
pub fn refuse_without_network_policy(
    resp: AdmissionResponse,
    port: i32,
    error: &crate::boundary::EnsureError,
) -> AdmissionResponse {
    refuse(
        resp,
        format!(
            "Tollgate cannot create NetworkPolicy {} for this pod's MCP port {port} ({error}), and \
             without it the port would be open around the sidecar",
            crate::boundary::network_policy_name(port)
        ),
    )
}

/// The validating webhook: refuses a policy with every problem, field by field, from the same
/// validation `tollgate check` runs.
pub fn validate(req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    if req.kind.group != GROUP || req.operation == Operation::Delete {
        return resp;
    }
    let Some(object) = &req.object else {
        return resp;
    };
    let spec = object.data.get("spec").cloned().unwrap_or_default();
    let problems = match req.kind.kind.as_str() {
        "McpPolicy" => check_spec::<PolicySpec>(spec, tollgate_api::validate::validate_spec),
        "McpClusterPolicy" => check_spec::<ClusterPolicySpec>(spec, |s| {
            let mut out = Vec::new();
            if let Some(sel) = &s.namespace_selector {
                tollgate_api::validate::validate_selector("spec.namespaceSelector", sel, &mut out);
            }
            out.extend(tollgate_api::validate::validate_spec(&s.policy));
            out
        }),
        _ => return resp,
    };
    if problems.is_empty() {
        return resp;
    }
    let name = match &req.namespace {
        Some(ns) => format!("{} {ns}/{}", req.kind.kind, req.name),
        None => format!("{} {}", req.kind.kind, req.name),
    };
    let list: Vec<String> = problems.iter().map(|p| format!("- {p}")).collect();
    refuse(
        resp,
        format!(
            "{name} is invalid ({} problem{}):\n{}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            list.join("\n")
        ),
    )
}

fn check_spec<T: serde::de::DeserializeOwned>(
    spec: serde_json::Value,
    validate: impl FnOnce(&T) -> Vec<Problem>,
) -> Vec<Problem> {
    match serde_path_to_error::deserialize::<_, T>(spec) {
        Ok(spec) => validate(&spec),
        Err(e) => vec![Problem::new(
            format!("spec.{}", e.path()),
            e.inner().to_string(),
        )],
    }
}

fn refuse(resp: AdmissionResponse, message: String) -> AdmissionResponse {
    let mut resp = resp.deny(&message);
    resp.result = Status::failure(&message, "Invalid").with_code(422);
    resp
}

fn pod_name(pod: &Pod) -> &str {
    pod.metadata
        .name
        .as_deref()
        .or(pod.metadata.generate_name.as_deref())
        .unwrap_or("")
}

/// The review the API server reads back.
///
/// kube-core serialises `response.patch` as an array of numbers (kube-rs/kube#1781); the API
/// server reads Go's `[]byte`, which JSON carries as base64, and would fail the call. So the
/// patch is re-encoded here.
pub fn respond(resp: AdmissionResponse) -> Vec<u8> {
    use base64::Engine;
    let patch = resp.patch.clone();
    let mut review =
        serde_json::to_value(resp.into_review()).expect("an AdmissionReview serialises");
    if let Some(patch) = patch {
        review["response"]["patch"] = base64::engine::general_purpose::STANDARD
            .encode(patch)
            .into();
    }
    serde_json::to_vec(&review).expect("an AdmissionReview serialises")
}
