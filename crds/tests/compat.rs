//! PolicyLayer's `policy.json` and Intercept's YAML load with the meaning they have there.
//!
//! Those projects' own files are not copied into this repository: they are read from
//! `../shared/compat` beside it (where CI has them), or from `TOLLGATE_COMPAT_DIR`. Where neither
//! exists the tests that need them say they were skipped, on stderr past the test harness'
//! capture. The project's own examples of each format (`examples/`) are tested always.

use std::io::Write;
use std::path::PathBuf;

use serde_json::json;
use tollgate_api::{
    Call, CounterKey, CounterName, Counters, Decision, DefaultAction, EffectivePolicy, Format,
    Identity, NoCounters, PolicySet, Window, load_file,
};

/// The other projects' files, or `None` (having said so) where they are absent.
fn compat_dir(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("TOLLGATE_COMPAT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/compat"));
    if dir.is_dir() {
        return Some(dir);
    }
    // CI has the files: there, their absence is a failure, not a skip.
    assert!(
        std::env::var_os("TOLLGATE_COMPAT_REQUIRED").is_none(),
        "{test}: no compat files at {} and TOLLGATE_COMPAT_REQUIRED is set",
        dir.display()
    );
    // Written to stderr itself, not through eprintln!, which the harness captures.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: no compat files at {} (set TOLLGATE_COMPAT_DIR)",
        dir.display()
    );
    None
}

fn example(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn compile(text: &str, origin: &str) -> (Format, PolicySet) {
    let loaded = load_file(text, origin).unwrap_or_else(|e| panic!("{origin}: {e}"));
    let format = loaded[0].format;
    let eff = EffectivePolicy {
        revision: 1,
        default_action: DefaultAction::Allow,
        ungoverned_action: None,
        policies: loaded.into_iter().map(|l| l.policy).collect(),
    };
    (format, eff.compile().expect("compiles"))
}

fn outcome(set: &PolicySet, tool: &str, args: serde_json::Value) -> String {
    match set
        .decide(&Call::new(tool, &args), &Identity::anonymous(), &NoCounters)
        .decision
    {
        Decision::Allow { .. } => "allow".into(),
        Decision::Deny(d) => format!("deny:{}", d.reason),
        Decision::Approve { rule, .. } => format!("approve:{rule}"),
    }
}

#[test]
fn every_intercept_file_in_shared_compat_loads() {
    let Some(dir) = compat_dir("every_intercept_file_in_shared_compat_loads") else {
        return;
    };
    let dir = dir.join("intercept");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("policies"))
        .expect("shared/compat/intercept/policies")
        .map(|e| e.unwrap().path())
        .collect();
    files.push(dir.join("examples-github.yaml"));
    files.push(dir.join("examples-stripe.yaml"));
    assert!(files.len() >= 55, "found {} files", files.len());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let (format, set) = compile(&text, &f.display().to_string());
        assert_eq!(format, Format::Intercept, "{}", f.display());
        // Every listed tool is allowed; the file's default (allow) keeps unlisted ones open.
        assert_eq!(
            outcome(&set, "some_unlisted_tool", json!({})),
            "allow",
            "{}",
            f.display()
        );
    }
}

#[test]
fn intercept_github_example_hides_limits_and_denies() {
    let Some(dir) = compat_dir("intercept_github_example_hides_limits_and_denies") else {
        return;
    };
    let text = std::fs::read_to_string(dir.join("intercept/examples-github.yaml")).unwrap();
    let (_, set) = compile(&text, "github.yaml");
    assert_eq!(
        outcome(&set, "transfer_repository", json!({})),
        "deny:Tool \"transfer_repository\" is hidden by policy"
    );
    assert!(!set.visible("list_webhooks", &Identity::anonymous()));
    assert_eq!(
        outcome(&set, "delete_repository", json!({})),
        "deny:Repository deletion is not permitted via AI agents"
    );
    let args = json!({});
    let Decision::Allow { reservations } = set
        .decide(
            &Call::new("create_issue", &args),
            &Identity::anonymous(),
            &NoCounters,
        )
        .decision
    else {
        panic!()
    };
    let got: Vec<(&str, Option<u64>)> = reservations
        .iter()
        .map(|r| (r.key.as_str(), r.max))
        .collect();
    assert_eq!(
        got,
        [
            ("intercept/github|create_issue|_rate_hour|g", Some(5)),
            ("intercept/github|_global|_rate_minute|g", Some(60))
        ],
        "the tool's own limit, then the wildcard's global one"
    );
}

struct At(&'static str, u64);
impl Counters for At {
    fn current(&self, key: &CounterKey, _: &CounterName) -> u64 {
        if key.0.contains(self.0) { self.1 } else { 0 }
    }
}

#[test]
fn intercept_stripe_example_caps_spend_with_increment_from() {
    let Some(dir) = compat_dir("intercept_stripe_example_caps_spend_with_increment_from") else {
        return;
    };
    let text = std::fs::read_to_string(dir.join("intercept/examples-stripe.yaml")).unwrap();
    let (_, set) = compile(&text, "stripe.yaml");
    assert_eq!(
        outcome(
            &set,
            "create_charge",
            json!({"amount": 60000, "currency": "usd"})
        ),
        "deny:Single charge cannot exceed $500.00"
    );
    assert_eq!(
        outcome(
            &set,
            "create_charge",
            json!({"amount": 100, "currency": "gbp"})
        ),
        "deny:Only USD and EUR charges are permitted"
    );
    assert_eq!(
        outcome(&set, "delete_customer", json!({})),
        "deny:Customer deletion is not permitted via AI agents"
    );
    let args = json!({"amount": 5000, "currency": "eur"});
    let Decision::Allow { reservations } = set
        .decide(
            &Call::new("create_charge", &args),
            &Identity::anonymous(),
            &NoCounters,
        )
        .decision
    else {
        panic!()
    };
    assert_eq!(
        reservations[0].amount, 5000,
        "daily_spend grows by args.amount"
    );
    assert_eq!(
        reservations[0].max,
        Some(1_000_000),
        "lte 1000000 on its own counter is the cap"
    );
    // Post-increment above the cap denies, as Intercept's reserve does.
    let nearly = At("daily_spend", 996_000);
    let d = set
        .decide(
            &Call::new("create_charge", &args),
            &Identity::anonymous(),
            &nearly,
        )
        .decision;
    assert!(
        matches!(d, Decision::Deny(ref d) if d.reason == "Daily spending cap of $10,000.00 reached"),
        "{d:?}"
    );
    // The wildcard's state counter is `_global`.
    let busy = At("_global|calls_per_minute", 60);
    let d = set
        .decide(
            &Call::new("list_customers", &json!({})),
            &Identity::anonymous(),
            &busy,
        )
        .decision;
    assert!(
        matches!(d, Decision::Deny(ref d) if d.reason == "Rate limit: maximum 60 tool calls per minute"),
        "{d:?}"
    );
}

#[test]
fn intercept_default_deny_refuses_unlisted_tools_even_with_wildcard_rules() {
    let (_, set) = compile(
        "version: \"1\"\ndefault: deny\ntools:\n  read_file: { rules: [] }\n  \"*\": { rules: [ { name: g, rate_limit: 60/minute } ] }\n",
        "strict.yaml",
    );
    assert_eq!(outcome(&set, "read_file", json!({})), "allow");
    assert!(
        outcome(&set, "write_file", json!({}))
            .starts_with("deny:Tool \"write_file\" is not permitted")
    );
}

#[test]
fn intercept_hide_star_hides_everything() {
    let (_, set) = compile(
        "version: \"1\"\nhide: [\"*\"]\ntools: { a: { rules: [] } }\n",
        "h.yaml",
    );
    assert!(!set.visible("a", &Identity::anonymous()));
}

#[test]
fn intercept_validation_errors_match_its_reference() {
    let bad = r#"
version: "2"
default: maybe
hide: [a, a]
tools:
  t:
    rules:
      - action: deny
        conditions: [ { path: args.x, op: eq, value: 1 } ]
      - name: empty
      - name: op
        conditions: [ { path: args.x, op: between, value: 1 } ]
      - name: rl
        rate_limit: 5/fortnight
"#;
    let err = load_file(bad, "bad.yaml").unwrap_err().to_string();
    for want in [
        "version must be \"1\", got \"2\"",
        "default must be \"allow\" or \"deny\", got \"maybe\"",
        "hide[1]: duplicate entry \"a\"",
        "tools.t.rules[0].name: rule must have a name",
        "tools.t.rules[0].conditions: deny rules must not have conditions",
        "tools.t.rules[1].conditions: evaluate rules must have at least one condition",
        "tools.t.rules[2].conditions[0].op: unknown operator \"between\"",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn intercept_problems_are_all_reported_at_once_in_its_own_spelling() {
    // The converter's problems and the converted spec's, in one pass: a rate limit of zero, a
    // bad window and a regex that does not compile beside an unknown operator.
    let bad = r#"
version: "1"
tools:
  t:
    rules:
      - name: op
        conditions: [ { path: args.x, op: between, value: 1 } ]
      - name: zero
        rate_limit: 0/hour
      - name: week
        rate_limit: 5/week
      - name: re
        conditions: [ { path: args.email, op: regex, value: "[x(" } ]
      - name: spend
        conditions: [ { path: args.n, op: lt, value: 10 } ]
        state: { counter: spend, window: day, increment_from: amount }
"#;
    let err = load_file(bad, "bad.yaml").unwrap_err().to_string();
    for want in [
        "tools.t.rules[0].conditions[0].op: unknown operator \"between\"",
        "tools.t.rules[1].rate_limit: rate_limit count must be a positive integer, got \"0\"",
        "tools.t.rules[2].rate_limit: rate_limit window must be",
        "tools.t.rules[3].conditions[0].value: regex \"[x(\" does not compile",
        "tools.t.rules[4].state.increment_from: increment_from must start with \"args.\"",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    for theirs_not in ["rateLimit", "spec.", "incrementFrom"] {
        assert!(!err.contains(theirs_not), "{theirs_not:?} in:\n{err}");
    }
}

#[test]
fn intercept_reference_invalid_schema_reports_every_problem() {
    let Some(dir) = compat_dir("intercept_reference_invalid_schema_reports_every_problem") else {
        return;
    };
    let text = std::fs::read_to_string(dir.join("intercept/suite/invalid_schema.yaml")).unwrap();
    let err = load_file(&text, "invalid_schema.yaml").unwrap_err();
    // Each path after the file's name.
    let at: Vec<&str> = err
        .0
        .iter()
        .map(|p| p.path.rsplit(": ").next().unwrap())
        .collect();
    // Intercept's own test expects one error per broken rule, each named by its field.
    for want in [
        "version",
        "tools.some_tool.rules[0].name",
        "tools.some_tool.rules[0].conditions[0].op",
        "tools.some_tool.rules[1].conditions[0].path",
        "tools.some_tool.rules[2].conditions[0].value",
        "tools.some_tool.rules[3].conditions[0].value",
        "tools.some_tool.rules[4].conditions[0].value",
        "tools.some_tool.rules[5].conditions",
        "tools.some_tool.rules[6].conditions",
        "tools.rate_limit_tool.rules[0].rate_limit",
        "tools.rate_limit_tool.rules[1].rate_limit",
        "tools.rate_limit_tool.rules[2].rate_limit",
        "tools.rate_limit_tool.rules[3].rate_limit",
        "tools.rate_limit_tool.rules[4].rate_limit",
        "tools.rate_limit_tool.rules[5].rate_limit",
    ] {
        assert!(at.contains(&want), "no problem at {want} in:\n{err}");
    }
}

#[test]
fn two_limits_on_one_counter_are_refused_naming_both() {
    let twice = r#"
version: "1"
tools:
  create_issue:
    rules:
      - { name: hourly, rate_limit: 5/hour }
      - { name: also hourly, rate_limit: 10/hour }
      - { name: daily, rate_limit: 20/day }
"#;
    let err = load_file(twice, "twice.yaml").unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    let p = &err.0[0];
    assert_eq!(p.path, "twice.yaml: tools.create_issue.rules[1].rate_limit");
    assert!(
        p.message
            .starts_with("this rule and rule \"hourly\" both count the hour rate limit"),
        "{p}"
    );
    // The same in Tollgate's own language: two limits on one counter of one tool.
    let ours = r#"
apiVersion: tollgate.dev/v1alpha1
kind: McpPolicy
metadata: { name: p }
spec:
  tools:
    pay:
      rules:
        - { name: a, limit: { counter: spend, window: day, max: 100, incrementFrom: args.n } }
        - { name: b, limit: { counter: spend, window: day, max: 50, incrementFrom: args.n } }
"#;
    let err = load_file(ours, "p.yaml").unwrap_err().to_string();
    assert!(
        err.contains("spec.tools.pay.rules[1].limit.counter: this rule and rule \"a\" both count counter \"spend\""),
        "{err}"
    );
    // Other scopes are other counters: each call counts once in each.
    let scopes = ours.replace(
        "max: 50, incrementFrom: args.n }",
        "max: 50, incrementFrom: args.n, scope: identity }",
    );
    assert!(load_file(&scopes, "p.yaml").is_ok());
    // A policy an older release admitted stays in force where it is stored (an upgrade never
    // turns it into one that denies every call); only its next change is refused.
    let doc: serde_json::Value = tollgate_api::load::yaml_from_str(ours).unwrap();
    let spec: tollgate_api::PolicySpec = serde_json::from_value(doc["spec"].clone()).unwrap();
    assert!(tollgate_api::validate::validate_stored(&spec).is_empty());
    assert!(!tollgate_api::validate::validate_spec(&spec).is_empty());
    let eff = EffectivePolicy {
        revision: 1,
        default_action: DefaultAction::Deny,
        ungoverned_action: None,
        policies: vec![tollgate_api::NamedPolicy {
            name: "mcppolicy/default/p".into(),
            spec,
        }],
    };
    assert!(eff.compile().is_ok(), "the sidecar still compiles it");
}

#[test]
fn a_spend_limit_without_its_argument_names_the_argument_not_on_deny() {
    let text = r#"
version: "1"
tools:
  transfer_funds:
    rules:
      - name: spend_limit
        conditions: [ { path: state.transfer_funds.daily_spend, op: lte, value: 1000 } ]
        state: { counter: daily_spend, window: day, increment_from: args.amount }
        on_deny: "Spend limit exceeded"
"#;
    let (_, set) = compile(text, "transfer.yaml");
    assert_eq!(
        outcome(&set, "transfer_funds", json!({"to": "x"})),
        "deny:Rule \"spend_limit\" counts args.amount, which the call does not have"
    );
    assert_eq!(
        outcome(&set, "transfer_funds", json!({"amount": "lots"})),
        "deny:Rule \"spend_limit\" counts args.amount, which must be a non-negative number (got \"lots\")"
    );
    assert_eq!(
        outcome(&set, "transfer_funds", json!({"amount": 5})),
        "allow"
    );
}

#[test]
fn policylayer_policy_json_limits_clones_per_grant_and_denies_the_rest() {
    let Some(dir) =
        compat_dir("policylayer_policy_json_limits_clones_per_grant_and_denies_the_rest")
    else {
        return;
    };
    let text = std::fs::read_to_string(dir.join("policylayer/clone-container-rate.json")).unwrap();
    let (format, set) = compile(&text, "clone-container-rate.json");
    assert_eq!(format, Format::PolicyLayer);
    assert!(
        outcome(&set, "DeleteCluster", json!({}))
            .starts_with("deny:Tool \"DeleteCluster\" is not permitted")
    );
    let args = json!({});
    let Decision::Allow { reservations } = set
        .decide(
            &Call::new("CloneContainerToECR", &args),
            &Identity::subject("grant-1"),
            &NoCounters,
        )
        .decision
    else {
        panic!()
    };
    assert_eq!(
        reservations[0].key.as_str(),
        "policylayer/clone-container-rate|CloneContainerToECR|clonecontainertoecr_rate|i:grant-1"
    );
    assert_eq!(
        (reservations[0].max, reservations[0].window),
        (Some(10), Window::Minute)
    );
    let full = At("clonecontainertoecr_rate", 10);
    let d = set
        .decide(
            &Call::new("CloneContainerToECR", &args),
            &Identity::subject("grant-1"),
            &full,
        )
        .decision;
    assert!(
        matches!(d, Decision::Deny(_)),
        "the 11th clone in a minute is refused"
    );
}

#[test]
fn policylayer_action_deny_uses_its_reason() {
    let (_, set) = compile(
        r#"{"version":"1","default":"allow","tools":{"DeleteCluster":{"action":"deny","reason":"Cluster deletion needs a ticket"},"refund":{"require":[{"path":"args.reason","op":"exists","value":true}],"deny_if":[{"path":"args.amount","op":"gt","value":10000}]}}}"#,
        "p.json",
    );
    assert_eq!(
        outcome(&set, "DeleteCluster", json!({})),
        "deny:Cluster deletion needs a ticket"
    );
    assert!(
        outcome(&set, "refund", json!({"amount": 5})).starts_with("deny:"),
        "require args.reason"
    );
    assert_eq!(
        outcome(&set, "refund", json!({"amount": 5, "reason": "dup"})),
        "allow"
    );
    assert!(
        outcome(&set, "refund", json!({"amount": 50000, "reason": "dup"})).starts_with("deny:")
    );
}

#[test]
fn policylayer_requires_a_default() {
    let err = load_file(r#"{"version":"1","tools":{"a":{"limits":[]}}}"#, "p.json").unwrap_err();
    assert!(err.to_string().contains("default: is required"), "{err}");
}

#[test]
fn own_intercept_example_reads_as_intercept_with_its_default_hide_conditions_and_limits() {
    let (format, set) = compile(&example("intercept.yaml"), "examples/intercept.yaml");
    assert_eq!(format, Format::Intercept);
    assert_eq!(
        outcome(&set, "run_query", json!({"sql": "DROP TABLE users"})),
        "deny:Only SELECT statements may run"
    );
    assert_eq!(
        outcome(&set, "run_query", json!({"sql": " select 1"})),
        "allow"
    );
    assert_eq!(
        outcome(&set, "insert_rows", json!({"rows": 500})),
        "deny:Insert at most 100 rows at a time"
    );
    assert_eq!(
        outcome(&set, "drop_table", json!({})),
        "deny:Tool \"drop_table\" is hidden by policy"
    );
    // `default: deny`: a tool the file does not list is refused though "*" has rules.
    assert!(outcome(&set, "create_user", json!({})).starts_with("deny:"));
}

#[test]
fn own_policylayer_example_reads_as_policylayer_with_its_limit_and_deny_reason() {
    let (format, set) = compile(&example("policylayer.json"), "examples/policylayer.json");
    assert_eq!(format, Format::PolicyLayer);
    assert_eq!(outcome(&set, "list_containers", json!({})), "allow");
    assert_eq!(outcome(&set, "clone_container", json!({})), "allow");
    assert_eq!(
        outcome(&set, "delete_container", json!({})),
        "deny:Containers are deleted by the platform team"
    );
    assert!(outcome(&set, "run_anything", json!({})).starts_with("deny:"));
}
