//! Validation returns every problem at once, each with its field path and a fix.

use tollgate_api::load_file;

fn problems(yaml: &str) -> String {
    load_file(yaml, "p.yaml").expect_err("invalid").to_string()
}

const HEADER: &str = "apiVersion: tollgate.dev/v1alpha1\nkind: McpPolicy\nmetadata: { name: p, namespace: team-a }\n";

#[test]
fn every_problem_is_reported_at_once_with_its_field_path() {
    let text = format!(
        "{HEADER}spec:\n  tools:\n    create_issue:\n      rules:\n        - name: r\n          conditions:\n            - {{ path: args.title, op: exists }}\n            - {{ path: args.title, op: regex, value: \"(\" }}\n        - name: r\n          limit: {{ counter: c, window: minute, max: 0 }}\n        - name: l\n          rateLimit: 0/hour\n          limit: {{ counter: d, window: hour, max: 1 }}\n"
    );
    let err = problems(&text);
    for want in [
        "spec.tools.create_issue.rules[0].conditions[1].value: regex \"(\" does not compile:",
        "spec.tools.create_issue.rules[1].name: duplicate rule name \"r\" (also spec.tools.create_issue.rules[0])",
        "spec.tools.create_issue.rules[1].limit.max: max must be at least 1; to refuse every call use action: deny",
        "spec.tools.create_issue.rules[2]: set rateLimit or limit, not both",
        "spec.tools.create_issue.rules[2].rateLimit: rateLimit count must be a positive integer, got \"0\"",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert_eq!(err.lines().count(), 5, "{err}");
}

#[test]
fn operator_values_of_the_wrong_shape_are_named() {
    let text = format!(
        "{HEADER}spec:\n  tools:\n    t:\n      rules:\n        - name: r\n          conditions:\n            - {{ path: args.a, op: in, value: usd }}\n            - {{ path: args.a, op: lt, value: ten }}\n            - {{ path: args.a, op: exists, value: yes }}\n            - {{ path: amount, op: eq, value: 1 }}\n            - {{ path: args.a, op: eq }}\n"
    );
    let err = problems(&text);
    for want in [
        "conditions[0].value: in needs a list",
        "conditions[1].value: lt needs a number",
        "conditions[2].value: exists takes true or false",
        "conditions[3].path: path must start with args., state. or identity.",
        "conditions[4].value: eq needs a value to compare with",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn rule_shape_problems_name_the_fix() {
    let text = format!(
        "{HEADER}spec:\n  subjects: [ {{ serviceAccount: nobody }}, {{ subject: a, claim: {{ name: g, value: v }} }} ]\n  selector: {{ matchExpressions: [ {{ key: app, operator: In }} ] }}\n  tools:\n    t:\n      rules:\n        - {{ name: a, action: deny, rateLimit: 5/hour }}\n        - {{ name: b, approval: {{ timeout: soon }} }}\n        - {{ name: c, limit: {{ counter: x, window: day, max: 5, incrementFrom: amount }} }}\n        - {{ name: d, conditions: [ {{ path: state.t.nope, op: lt, value: 1 }} ] }}\n"
    );
    let err = problems(&text);
    for want in [
        "spec.selector.matchExpressions[0].values: operator In needs at least one value",
        "spec.subjects[0].serviceAccount: must be NAMESPACE/NAME",
        "spec.subjects[1]: set exactly one of serviceAccount, claim or subject",
        "rules[0]: deny and approve rules cannot carry a limit",
        "rules[1].approval: approval settings need action: approve",
        "rules[1].approval.timeout: \"soon\" is not a duration",
        "rules[2].limit.incrementFrom: must be an argument path such as args.amount",
        "rules[3].conditions[0].path: state.t.nope reads counter \"nope\" of \"t\", which no rule defines",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn bad_yaml_and_wrong_kinds_say_so() {
    assert!(problems("tools: [").contains("not valid YAML or JSON"));
    let err =
        problems("apiVersion: tollgate.dev/v1\nkind: McpPolicy\nmetadata: { name: p }\nspec: {}\n");
    assert!(
        err.contains("apiVersion: must be tollgate.dev/v1alpha1"),
        "{err}"
    );
    let err = problems("apiVersion: tollgate.dev/v1alpha1\nkind: Policy\nmetadata: { name: p }\n");
    assert!(
        err.contains("kind: must be McpPolicy or McpClusterPolicy"),
        "{err}"
    );
    let err = problems(&format!("{HEADER}spec:\n  default: maybe\n"));
    assert!(
        err.contains("spec.default: unknown variant `maybe`"),
        "{err}"
    );
    assert!(problems("").contains("no policy found"));
}

#[test]
fn problems_in_several_documents_name_their_document() {
    let text = format!(
        "{HEADER}spec: {{ default: allow }}\n---\n{HEADER}spec: {{ tools: {{ t: {{ rules: [ {{ name: r, rateLimit: 5/fortnight }} ] }} }} }}\n"
    );
    let err = problems(&text);
    assert!(
        err.starts_with("p.yaml (document 2): spec.tools.t.rules[0].rateLimit"),
        "{err}"
    );
}

#[test]
fn a_valid_multi_document_file_loads_every_policy() {
    let text = format!(
        "{HEADER}spec: {{ default: allow }}\n---\napiVersion: tollgate.dev/v1alpha1\nkind: McpClusterPolicy\nmetadata: {{ name: baseline }}\nspec: {{ namespaceSelector: {{ matchLabels: {{ env: prod }} }}, default: deny }}\n"
    );
    let loaded = load_file(&text, "p.yaml").unwrap();
    let names: Vec<&str> = loaded.iter().map(|l| l.policy.name.as_str()).collect();
    assert_eq!(names, ["mcppolicy/team-a/p", "mcpclusterpolicy/baseline"]);
}

#[test]
fn passthrough_paths_must_be_paths_with_a_star_only_at_their_end() {
    let problems = |paths: &str| {
        let spec: tollgate_api::PolicySpec =
            tollgate_api::load::yaml_from_str(&format!("passthroughPaths: {paths}")).unwrap();
        tollgate_api::validate::validate_spec(&spec)
            .into_iter()
            .map(|p| p.path)
            .collect::<Vec<_>>()
    };
    assert!(problems("[/oauth/token, /oauth/*, /]").is_empty());
    assert_eq!(
        problems("[oauth, /a*b, /ok, '*']"),
        [
            "spec.passthroughPaths[0]",
            "spec.passthroughPaths[1]",
            "spec.passthroughPaths[3]"
        ]
    );
}
