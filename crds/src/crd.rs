//! The CustomResourceDefinitions, rendered from the Rust types.
//!
//! `cargo run -p tollgate-api --features kube --bin crdgen` rewrites `crds/*.yaml` (and the chart's copies); a
//! test fails when the checked-in files differ from what the types generate.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{McpClusterPolicy, McpPolicy};

/// Every CRD Tollgate installs, with the file name it is kept under.
pub fn definitions() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("mcppolicies.yaml", McpPolicy::crd()),
        ("mcpclusterpolicies.yaml", McpClusterPolicy::crd()),
    ]
}

/// A CRD as the YAML file checked in under `crds/`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> String {
    let body = serde_yaml::to_string(crd).expect("a CRD always serialises");
    format!(
        "# Generated from crds/src/resources.rs by `cargo run -p tollgate-api --features kube --bin crdgen`. Do not edit.\n{body}"
    )
}
