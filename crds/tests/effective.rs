//! Table tests for the merge of policies into one pod's effective policy: which policies
//! select a pod, in what order, and how an invalid one fails closed.

use std::collections::BTreeMap;

use serde_json::json;
use tollgate_api::{
    Call, Decision, DefaultAction, EffectivePolicy, Identity, McpClusterPolicy, McpPolicy,
    NoCounters, Workload, selects,
};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn policy(ns: &str, name: &str, spec: serde_json::Value) -> McpPolicy {
    serde_json::from_value(json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "McpPolicy",
        "metadata": { "name": name, "namespace": ns }, "spec": spec,
    }))
    .expect("a valid McpPolicy")
}

fn cluster_policy(name: &str, spec: serde_json::Value) -> McpClusterPolicy {
    serde_json::from_value(json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "McpClusterPolicy",
        "metadata": { "name": name }, "spec": spec,
    }))
    .expect("a valid McpClusterPolicy")
}

fn names(e: &EffectivePolicy) -> Vec<&str> {
    e.policies.iter().map(|p| p.name.as_str()).collect()
}

#[test]
fn selectors_match_as_kubernetes_does() {
    let pod = labels(&[("app", "github"), ("tier", "mcp")]);
    let sel = |v: serde_json::Value| serde_json::from_value(v).unwrap();
    let cases = [
        (json!({}), true),
        (json!({"matchLabels": {"app": "github"}}), true),
        (json!({"matchLabels": {"app": "jira"}}), false),
        (
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["jira", "github"]}]}),
            true,
        ),
        (
            json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["github"]}]}),
            false,
        ),
        (
            json!({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}),
            true,
        ),
        (
            json!({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}),
            true,
        ),
        (
            json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}),
            false,
        ),
        (
            json!({"matchExpressions": [{"key": "tier", "operator": "Bogus"}]}),
            false,
        ),
        (
            json!({"matchLabels": {"app": "github"}, "matchExpressions": [{"key": "env", "operator": "Exists"}]}),
            false,
        ),
    ];
    for (s, want) in cases {
        assert_eq!(selects(Some(&sel(s.clone())), &pod), want, "{s}");
    }
    assert!(selects(None, &pod), "an absent selector selects everything");
}

#[test]
fn a_pod_gets_matching_cluster_policies_then_its_namespaces_policies_in_name_order() {
    let pod = labels(&[("app", "github")]);
    let ns = labels(&[("team", "payments")]);
    let cluster = [
        cluster_policy("z-baseline", json!({"default": "deny"})),
        cluster_policy(
            "a-payments",
            json!({"namespaceSelector": {"matchLabels": {"team": "payments"}}}),
        ),
        cluster_policy(
            "other-team",
            json!({"namespaceSelector": {"matchLabels": {"team": "search"}}}),
        ),
        cluster_policy(
            "other-app",
            json!({"selector": {"matchLabels": {"app": "jira"}}}),
        ),
    ];
    let namespaced = [
        policy(
            "shop",
            "github-b",
            json!({"selector": {"matchLabels": {"app": "github"}}}),
        ),
        policy("shop", "all-pods", json!({})),
        policy(
            "shop",
            "jira",
            json!({"selector": {"matchLabels": {"app": "jira"}}}),
        ),
        policy("elsewhere", "all-pods", json!({})),
    ];
    let pod = Workload {
        namespace: "shop",
        labels: &pod,
        namespace_labels: &ns,
    };
    let e = EffectivePolicy::for_workload(pod, &cluster, &namespaced, DefaultAction::Allow);
    assert_eq!(
        names(&e),
        [
            "mcpclusterpolicy/a-payments",
            "mcpclusterpolicy/z-baseline",
            "mcppolicy/shop/all-pods",
            "mcppolicy/shop/github-b",
        ]
    );
    assert_eq!(e.default_action, DefaultAction::Allow);
    assert_eq!(e.revision, 0, "the caller stamps the revision");
}

#[test]
fn an_invalid_policy_denies_every_call_and_says_which_field_to_fix() {
    let bad = policy(
        "shop",
        "broken",
        json!({"default": "allow", "tools": {"run_query": {"rules": [
            {"name": "select only", "conditions": [{"path": "args.sql", "op": "regex", "value": "("}]}
        ]}}}),
    );
    let empty = BTreeMap::new();
    let pod = Workload {
        namespace: "shop",
        labels: &empty,
        namespace_labels: &empty,
    };
    let e = EffectivePolicy::for_workload(pod, [], [&bad], DefaultAction::Allow);
    let set = e.compile().expect("the stand-in compiles");
    let verdict = set.decide(
        &Call::new("read_file", &json!({})),
        &Identity::anonymous(),
        &NoCounters,
    );
    let Decision::Deny(d) = verdict.decision else {
        panic!("an invalid policy must not allow: {:?}", verdict.decision)
    };
    assert!(
        d.reason.contains("mcppolicy/shop/broken is invalid"),
        "{}",
        d.reason
    );
    assert!(
        d.reason
            .contains("spec.tools.run_query.rules[0].conditions[0].value"),
        "{}",
        d.reason
    );
}

#[test]
fn the_same_inputs_give_the_same_effective_policy() {
    let a = [
        policy("shop", "b", json!({})),
        policy("shop", "a", json!({})),
    ];
    let b = [
        policy("shop", "a", json!({})),
        policy("shop", "b", json!({})),
    ];
    let empty = BTreeMap::new();
    let pod = Workload {
        namespace: "shop",
        labels: &empty,
        namespace_labels: &empty,
    };
    assert_eq!(
        EffectivePolicy::for_workload(pod, [], &a, DefaultAction::Deny),
        EffectivePolicy::for_workload(pod, [], &b, DefaultAction::Deny),
        "order of discovery must not read as a change"
    );
}
