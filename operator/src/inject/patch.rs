//! The pod before and after injection, as the JSON patch the webhook answers with.

use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use serde_json::json;

use super::STATUS_ANNOTATION;

/// The patch: only what injection adds or changes. Everything else stays exactly as the API
/// server sent it, fields newer than this operator's Kubernetes types included: the init
/// containers and the volume are inserted (the arrays are not rewritten), each app container is
/// compared with its changed self alone, and the annotation and label are added by key.
pub(super) fn patch(
    pod: &Pod,
    containers: &[Container],
    init: &[Container],
    volumes: &[Volume],
    status: &str,
    labels: &[(&str, &str)],
) -> json_patch::Patch {
    fn value(v: &impl serde::Serialize) -> serde_json::Value {
        serde_json::to_value(v).expect("serialises")
    }
    let spec = pod.spec.as_ref();
    let mut ops = Vec::new();
    match spec.and_then(|s| s.init_containers.as_ref()) {
        Some(existing) if !existing.is_empty() => {
            for c in init.iter().rev() {
                ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": value(c)}));
            }
        }
        _ => ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": value(&init)})),
    }
    match spec.and_then(|s| s.volumes.as_ref()) {
        Some(_) => {
            for v in volumes {
                ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": value(v)}));
            }
        }
        None => ops.push(json!({"op": "add", "path": "/spec/volumes", "value": value(&volumes)})),
    }
    let before = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    for (i, (was, now)) in before.iter().zip(containers).enumerate() {
        let diff =
            serde_json::to_value(json_patch::diff(&value(was), &value(now))).expect("serialises");
        for mut op in diff.as_array().cloned().unwrap_or_default() {
            let path = op["path"].as_str().unwrap_or_default().to_owned();
            op["path"] = json!(format!("/spec/containers/{i}{path}"));
            ops.push(op);
        }
    }
    let meta = &pod.metadata;
    let mut add = |map: &str, present: bool, pairs: &[(&str, &str)]| {
        if present {
            for (key, v) in pairs {
                let key = key.replace('~', "~0").replace('/', "~1");
                ops.push(
                    json!({"op": "add", "path": format!("/metadata/{map}/{key}"), "value": v}),
                );
            }
        } else {
            let all: serde_json::Map<_, _> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            ops.push(json!({"op": "add", "path": format!("/metadata/{map}"), "value": all}));
        }
    };
    add(
        "annotations",
        meta.annotations.is_some(),
        &[(STATUS_ANNOTATION, status)],
    );
    add("labels", meta.labels.is_some(), labels);
    serde_json::from_value(serde_json::Value::Array(ops)).expect("a JSON patch")
}
