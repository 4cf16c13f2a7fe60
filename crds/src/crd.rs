//! The CustomResourceDefinitions, rendered from the Rust types.
//!
//! `cargo run -p tollgate-api --features kube --bin crdgen` rewrites `crds/*.yaml` (and the chart's copies); a
//! test fails when the checked-in files differ from what the types generate.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{McpApproval, McpClusterPolicy, McpPolicy, McpToolPin};

/// Every CRD Tollgate installs, with the file name it is kept under.
pub fn definitions() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("mcppolicies.yaml", kubernetes_formats(McpPolicy::crd())),
        (
            "mcpclusterpolicies.yaml",
            kubernetes_formats(McpClusterPolicy::crd()),
        ),
        ("mcpapprovals.yaml", kubernetes_formats(McpApproval::crd())),
        ("mcptoolpins.yaml", kubernetes_formats(McpToolPin::crd())),
    ]
}

/// The CRD with the integer formats schemars writes for unsigned fields (`uint32`, `uint64`)
/// named as Kubernetes knows them (`int32`, `int64`; the `minimum` beside them keeps them
/// unsigned). The API server warns "unrecognized format" on every apply of a CRD that keeps
/// them (found by installing the chart into a real one).
fn kubernetes_formats(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(f)) = map.get_mut("format") {
                    match f.as_str() {
                        "uint32" => *f = "int32".into(),
                        "uint64" => *f = "int64".into(),
                        _ => {}
                    }
                }
                map.values_mut().for_each(walk);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(crd).expect("a CRD always serialises");
    walk(&mut value);
    serde_json::from_value(value).expect("only formats were renamed")
}

/// A CRD as the YAML file checked in under `crds/`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> String {
    let body = serde_yaml::to_string(crd).expect("a CRD always serialises");
    format!(
        "# Generated from crds/src/resources.rs by `cargo run -p tollgate-api --features kube --bin crdgen`. Do not edit.\n{body}"
    )
}
