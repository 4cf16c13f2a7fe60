//! The checked-in CRDs are what the types generate, and their CEL rules accept what they
//! should and refuse what they should (evaluated locally with kube's `cel` feature).

use kube::core::cel::Validator;
use serde_json::{Value, json};

fn checked_in(file: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn checked_in_crds_match_the_types() {
    for (file, crd) in tollgate_api::crd::definitions() {
        assert!(
            checked_in(file) == tollgate_api::crd::to_yaml(&crd),
            "crds/{file} is stale: run `cargo run -p tollgate-api --features kube --bin crdgen`"
        );
    }
}

#[test]
fn crds_are_structural_with_columns_short_names_and_status() {
    for (file, crd) in tollgate_api::crd::definitions() {
        let v = &crd.spec.versions[0];
        let columns: Vec<&str> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        let expected: &[&str] = match file {
            "mcpapprovals.yaml" => &["Tool", "Identity", "Pod", "Phase", "Age", "Expires"],
            "mcptoolpins.yaml" => &["Workload", "Tool", "Pinned", "Source", "Held", "Age"],
            _ => &["Default", "Mode", "Tools", "Pods", "Ready", "Age"],
        };
        assert_eq!(columns, expected, "{file}");
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{file}"
        );
        assert!(
            !crd.spec
                .names
                .short_names
                .clone()
                .unwrap_or_default()
                .is_empty(),
            "{file}"
        );
        let schema = serde_json::to_value(
            v.schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        assert_structural(&schema, file);
    }
}

/// Every node has a type, except where unknown fields are preserved on purpose.
fn assert_structural(node: &Value, at: &str) {
    let Some(obj) = node.as_object() else { return };
    for forbidden in ["$ref", "anyOf", "oneOf", "allOf"] {
        assert!(!obj.contains_key(forbidden), "{at} uses {forbidden}");
    }
    if !obj.contains_key("x-kubernetes-preserve-unknown-fields") {
        assert!(obj.contains_key("type"), "{at} has no type");
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            assert_structural(v, &format!("{at}.{k}"));
        }
    }
    for k in ["items", "additionalProperties"] {
        if let Some(v) = obj.get(k) {
            assert_structural(v, &format!("{at}.{k}"));
        }
    }
}

fn schema_of(file: &str) -> Value {
    let crd: Value = tollgate_api::load::yaml_from_str(&checked_in(file)).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn cel_errors(file: &str, spec: Value) -> Vec<String> {
    let object = json!({ "apiVersion": "tollgate.dev/v1alpha1", "kind": "McpPolicy", "metadata": { "name": "p" }, "spec": spec });
    match Validator::new().validate(&schema_of(file), &object, None) {
        Ok(()) => vec![],
        Err(errors) => errors.as_slice().iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn cel_rules_accept_valid_policies() {
    let spec = json!({
        "default": "deny",
        "hide": ["transfer_repository"],
        "subjects": [ { "serviceAccount": "agents/report-bot" }, { "claim": { "name": "groups", "value": "x" } } ],
        "tools": {
            "create_issue": { "rules": [ { "name": "r", "rateLimit": "5/hour", "onDeny": "no" } ] },
            "charge": { "rules": [
                { "name": "c", "conditions": [ { "path": "args.amount", "op": "lte", "value": 5 }, { "path": "args.x", "op": "exists" } ] },
                { "name": "s", "limit": { "counter": "spend", "window": "day", "max": 10, "incrementFrom": "args.amount" } }
            ] },
            "bucket": { "rules": [ { "name": "a", "action": "approve", "approval": { "timeout": "10m" } } ] }
        }
    });
    for file in ["mcppolicies.yaml", "mcpclusterpolicies.yaml"] {
        assert_eq!(
            cel_errors(file, spec.clone()),
            Vec::<String>::new(),
            "{file}"
        );
    }
}

#[test]
fn cel_rules_refuse_what_the_schema_alone_cannot() {
    let cases = [
        (
            json!({ "tools": { "t": { "rules": [ { "name": "r", "rateLimit": "5/hour", "limit": { "counter": "c", "window": "day", "max": 1 } } ] } } }),
            "set rateLimit or limit, not both",
        ),
        (
            json!({ "tools": { "t": { "rules": [ { "name": "r", "action": "deny", "rateLimit": "5/hour" } ] } } }),
            "deny and approve rules cannot carry a limit",
        ),
        (
            json!({ "tools": { "t": { "rules": [ { "name": "r", "approval": { "timeout": "1m" } } ] } } }),
            "approval settings need action: approve",
        ),
        (
            json!({ "tools": { "t": { "rules": [ { "name": "r", "limit": { "counter": "c", "window": "day", "increment": 2, "incrementFrom": "args.a" } } ] } } }),
            "set increment or incrementFrom, not both",
        ),
        (
            json!({ "subjects": [ { "serviceAccount": "a/b", "subject": "x" } ] }),
            "set exactly one of serviceAccount, claim or subject",
        ),
        (
            json!({ "subjects": [ {} ] }),
            "set exactly one of serviceAccount, claim or subject",
        ),
        (json!({ "hide": [""] }), "hide entries must not be empty"),
        (
            json!({ "tools": { "": { "rules": [] } } }),
            "tool names must not be empty",
        ),
    ];
    for (spec, want) in cases {
        let errors = cel_errors("mcppolicies.yaml", spec.clone());
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "{spec} should fail with {want:?}, got {errors:?}"
        );
    }
}
