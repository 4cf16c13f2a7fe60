//! Table tests for the one decision function: each combining rule of DESIGN.md, every operator,

//! globs, `"*"`, hide, default, audit mode and subjects.

use std::collections::HashMap;

use serde_json::{Value, json};
use tollgate_api::{
    Call, CounterKey, CounterName, Counters, Decision, DefaultAction, Hints, Identity, NoCounters,
    PolicySet, PolicySpec, Verdict, Window,
};

/// A set of policies from YAML specs, named p0, p1, …, with a cluster default.
fn set_with(default: DefaultAction, specs: &[&str]) -> PolicySet {
    let specs: Vec<(String, PolicySpec)> = specs
        .iter()
        .enumerate()
        .map(|(i, y)| {
            (
                format!("p{i}"),
                tollgate_api::load::yaml_from_str(y).expect("spec parses"),
            )
        })
        .collect();
    PolicySet::compile(1, default, specs.iter().map(|(n, s)| (n.as_str(), s))).expect("compiles")
}

fn set(specs: &[&str]) -> PolicySet {
    set_with(DefaultAction::Allow, specs)
}

fn decide(set: &PolicySet, tool: &str, args: Value) -> Verdict {
    set.decide(&Call::new(tool, &args), &Identity::anonymous(), &NoCounters)
}

fn decide_as(set: &PolicySet, who: &Identity, tool: &str, args: Value) -> Verdict {
    set.decide(&Call::new(tool, &args), who, &NoCounters)
}

/// "allow", "deny:<rule>", or "approve:<rule>".
fn outcome(v: &Verdict) -> String {
    match &v.decision {
        Decision::Allow { .. } => "allow".into(),
        Decision::Deny(d) => format!("deny:{}", d.rule),
        Decision::Approve { rule, .. } => format!("approve:{rule}"),
    }
}

struct Fixed(HashMap<String, u64>);
impl Counters for Fixed {
    fn current(&self, key: &CounterKey, _: &CounterName) -> u64 {
        self.0
            .iter()
            .find(|(k, _)| key.0.contains(k.as_str()))
            .map_or(0, |(_, v)| *v)
    }
}

#[test]
fn each_combining_rule_of_the_design_decides_as_written() {
    let listed = "default: deny\ntools: { read_file: { rules: [] } }";
    let allow_all = "default: allow\ntools: {}";
    let deny_rule = "default: allow\ntools: { delete_repo: { rules: [ { name: never, action: deny, onDeny: not here } ] } }";
    let approve = "default: allow\ntools: { create_bucket: { rules: [ { name: a person decides, action: approve } ] } }";
    let cases: &[(&str, &[&str], &str, &str)] = &[
        (
            "a listed tool with no rules is allowed",
            &[listed],
            "read_file",
            "allow",
        ),
        (
            "an unlisted tool under default deny is denied",
            &[listed],
            "write_file",
            "deny:(default deny)",
        ),
        (
            "an McpPolicy without default means deny",
            &["tools: { a: { rules: [] } }"],
            "b",
            "deny:(default deny)",
        ),
        (
            "allows add up across policies",
            &[
                listed,
                "default: deny\ntools: { write_file: { rules: [] } }",
            ],
            "write_file",
            "allow",
        ),
        (
            "a listing in one policy beats another's default deny",
            &[listed, allow_all],
            "read_file",
            "allow",
        ),
        (
            "any default deny wins for unlisted tools",
            &[listed, allow_all],
            "other",
            "deny:(default deny)",
        ),
        (
            "a deny rule wins over another policy's listing",
            &[
                listed,
                deny_rule,
                "default: deny\ntools: { delete_repo: { rules: [] } }",
            ],
            "delete_repo",
            "deny:never",
        ),
        (
            "an approve rule holds the call",
            &[approve],
            "create_bucket",
            "approve:a person decides",
        ),
        (
            "a denial wins over an approval",
            &[
                approve,
                "default: allow\ntools: { create_bucket: { rules: [ { name: no, action: deny } ] } }",
            ],
            "create_bucket",
            "deny:no",
        ),
        (
            "no applicable policy leaves the cluster default",
            &[],
            "anything",
            "allow",
        ),
    ];
    for (what, specs, tool, want) in cases {
        let got = outcome(&decide(&set(specs), tool, json!({})));
        assert_eq!(&got, want, "{what}");
    }
}

#[test]
fn a_cluster_default_deny_denies_what_no_policy_lists() {
    let s = set_with(
        DefaultAction::Deny,
        &["default: allow\ntools: { read: { rules: [] } }"],
    );
    assert_eq!(outcome(&decide(&s, "read", json!({}))), "allow");
    assert_eq!(
        outcome(&decide(&s, "write", json!({}))),
        "deny:(default deny)"
    );
    let empty = set_with(DefaultAction::Deny, &[]);
    let v = decide(&empty, "x", json!({}));
    let Decision::Deny(d) = v.decision else {
        panic!()
    };
    assert_eq!(d.policy, "(cluster default)");
}

#[test]
fn wildcard_rules_apply_to_every_call_but_list_no_tool() {
    let s = set(&[
        "default: deny\ntools: { read: { rules: [] }, \"*\": { rules: [ { name: no drops, action: deny, conditions: [ { path: args.sql, op: contains, value: DROP } ] } ] } }",
    ]);
    assert_eq!(
        outcome(&decide(&s, "read", json!({"sql": "SELECT"}))),
        "allow"
    );
    assert_eq!(
        outcome(&decide(&s, "read", json!({"sql": "DROP x"}))),
        "deny:no drops"
    );
    assert_eq!(
        outcome(&decide(&s, "write", json!({}))),
        "deny:(default deny)",
        "\"*\" does not list write"
    );
}

#[test]
fn globs_list_tools_and_add_their_rules() {
    let s = set(&[
        "default: deny\ntools: { \"get_*\": { rules: [] }, \"delete_?\": { rules: [ { name: careful, action: deny } ] } }",
    ]);
    assert_eq!(outcome(&decide(&s, "get_issue", json!({}))), "allow");
    assert_eq!(outcome(&decide(&s, "get_", json!({}))), "allow");
    assert_eq!(
        outcome(&decide(&s, "list_issue", json!({}))),
        "deny:(default deny)"
    );
    assert_eq!(outcome(&decide(&s, "delete_x", json!({}))), "deny:careful");
    assert_eq!(
        outcome(&decide(&s, "delete_xy", json!({}))),
        "deny:(default deny)"
    );
}

#[test]
fn hidden_tools_are_refused_and_not_listed() {
    let s = set(&[
        "default: allow\nhide: [transfer_repository, \"admin_*\"]\ntools: { transfer_repository: { rules: [] } }",
    ]);
    let v = decide(&s, "transfer_repository", json!({}));
    let Decision::Deny(d) = &v.decision else {
        panic!("{v:?}")
    };
    assert_eq!(d.rule, "(hidden)");
    assert_eq!(d.reason, "Tool \"transfer_repository\" is hidden by policy");
    assert_eq!(
        outcome(&decide(&s, "admin_reset", json!({}))),
        "deny:(hidden)"
    );
    assert!(!s.visible("transfer_repository", &Identity::anonymous()));
    assert!(s.visible("create_issue", &Identity::anonymous()));
}

#[test]
fn a_tool_hidden_by_any_applicable_policy_is_hidden() {
    let s = set(&[
        "default: allow\ntools: { x: { rules: [] } }",
        "default: allow\nhide: [x]",
    ]);
    assert_eq!(outcome(&decide(&s, "x", json!({}))), "deny:(hidden)");
}

#[test]
fn listing_hides_only_what_could_never_be_called() {
    let s = set(&[r#"
default: deny
tools:
  read: { rules: [] }
  charge: { rules: [ { name: cap, conditions: [ { path: args.amount, op: lte, value: 10 } ] } ] }
  drop: { rules: [ { name: never, action: deny } ] }
  maybe_drop: { rules: [ { name: not prod, action: deny, conditions: [ { path: args.env, op: eq, value: prod } ] } ] }
  bucket: { rules: [ { name: ask, action: approve } ] }
"#]);
    let who = Identity::anonymous();
    let tools = ["read", "charge", "drop", "maybe_drop", "bucket", "unlisted"];
    let shown: Vec<&str> = tools.into_iter().filter(|t| s.visible(t, &who)).collect();
    assert_eq!(shown, ["read", "charge", "maybe_drop", "bucket"]);
}

#[test]
fn every_operator_decides_as_documented() {
    let cases: &[(&str, Value, Value, bool)] = &[
        ("eq", json!("main"), json!({"v": "main"}), true),
        ("eq", json!("main"), json!({"v": "dev"}), false),
        ("eq", json!(5), json!({"v": "5"}), true),
        ("neq", json!("draft"), json!({"v": "final"}), true),
        ("neq", json!("draft"), json!({"v": "draft"}), false),
        ("in", json!(["usd", "eur"]), json!({"v": "eur"}), true),
        ("in", json!(["usd", "eur"]), json!({"v": "gbp"}), false),
        ("notIn", json!(["admin"]), json!({"v": "user"}), true),
        ("notIn", json!(["admin"]), json!({"v": "admin"}), false),
        ("lt", json!(100), json!({"v": 99}), true),
        ("lt", json!(100), json!({"v": 100}), false),
        ("lte", json!(100), json!({"v": 100}), true),
        ("lte", json!(100), json!({"v": 100.5}), false),
        ("gt", json!(0), json!({"v": 1}), true),
        ("gt", json!(0), json!({"v": 0}), false),
        ("gte", json!(1), json!({"v": 1}), true),
        ("gte", json!(1), json!({"v": "abc"}), false),
        ("regex", json!("^SELECT\\b"), json!({"v": "SELECT 1"}), true),
        ("regex", json!("^SELECT\\b"), json!({"v": "DELETE"}), false),
        ("regex", json!("^SELECT"), json!({"v": 5}), false),
        ("contains", json!("test"), json!({"v": "a test run"}), true),
        ("contains", json!("x"), json!({"v": ["x", "y"]}), true),
        ("contains", json!("z"), json!({"v": ["x", "y"]}), false),
        ("exists", json!(true), json!({"v": 0}), true),
        ("exists", json!(true), json!({}), false),
        ("exists", json!(false), json!({}), true),
        ("exists", json!(false), json!({"v": null}), true),
        ("eq", json!("main"), json!({}), false),
        ("notIn", json!(["admin"]), json!({}), false),
    ];
    for (op, value, args, passes) in cases {
        let spec = format!(
            "default: deny\ntools: {{ t: {{ rules: [ {{ name: r, conditions: [ {{ path: args.v, op: {op}, value: {value} }} ] }} ] }} }}"
        );
        let got = outcome(&decide(&set(&[&spec]), "t", args.clone()));
        let want = if *passes { "allow" } else { "deny:r" };
        assert_eq!(got, want, "{op} {value} on {args}");
    }
}

#[test]
fn only_finite_decimal_numbers_compare_numerically() {
    let spec = "default: deny\ntools: { t: { rules: [ { name: r, conditions: [ { path: args.v, op: lte, value: 100 } ] } ] } }";
    let lte_100 = set(&[spec]);
    for (v, passes) in [
        (json!("99"), true),
        (json!("-5.5e1"), true),
        (json!(-1e300), true),
        (json!("-Infinity"), false),
        (json!("-inf"), false),
        (json!("NaN"), false),
        (json!("nan"), false),
        (json!("-0x10"), false),
        (json!(" 5"), false),
        (json!("5 "), false),
        (json!("+5"), false),
        (json!("-1e400"), false),
        (json!("1_0"), false),
        (json!(".5"), false),
        (json!("5."), false),
        (json!("05"), false),
        (json!(""), false),
    ] {
        let got = outcome(&decide(&lte_100, "t", json!({ "v": v })));
        assert_eq!(got == "allow", passes, "lte 100 on {v}: {got}");
    }
    // Text that is not a number is never equal to a number, and not unequal as one either.
    let neq = "default: deny\ntools: { t: { rules: [ { name: r, action: deny, conditions: [ { path: args.v, op: eq, value: 0 } ] } ] } }";
    assert_eq!(
        outcome(&decide(&set(&[neq]), "t", json!({"v": "-0"}))),
        "deny:r"
    );
    assert_eq!(
        outcome(&decide(&set(&[neq]), "t", json!({"v": "NaN"}))),
        "allow"
    );
}

#[test]
fn a_count_taken_from_the_arguments_must_be_a_finite_non_negative_number() {
    let spec = "default: deny\ntools: { t: { rules: [ { name: spend, limit: { counter: c, window: day, max: 100, incrementFrom: args.n } } ] } }";
    let s = set(&[spec]);
    for n in [
        json!(-1),
        json!("-1"),
        json!("Infinity"),
        json!("1e400"),
        json!("NaN"),
    ] {
        assert_eq!(
            outcome(&decide(&s, "t", json!({ "n": n }))),
            "deny:spend",
            "{n}"
        );
    }
    assert_eq!(outcome(&decide(&s, "t", json!({ "n": "7" }))), "allow");
}

#[test]
fn conditions_reach_nested_arguments_and_list_items() {
    let s = set(&[r#"
tools:
  t: { rules: [ { name: r, conditions: [ { path: args.meta.key, op: eq, value: val }, { path: args.items.1, op: eq, value: b } ] } ] }
"#]);
    assert_eq!(
        outcome(&decide(
            &s,
            "t",
            json!({"meta": {"key": "val"}, "items": ["a", "b"]})
        )),
        "allow"
    );
    assert_eq!(
        outcome(&decide(
            &s,
            "t",
            json!({"meta": {"key": "val"}, "items": ["a"]})
        )),
        "deny:r"
    );
}

#[test]
fn a_failed_condition_says_what_was_required_unless_on_deny_says_otherwise() {
    let s = set(&[
        "tools: { c: { rules: [ { name: cap, conditions: [ { path: args.amount, op: lte, value: 50000 } ] } ] } }",
    ]);
    let Decision::Deny(d) = decide(&s, "c", json!({"amount": 70000})).decision else {
        panic!()
    };
    assert_eq!(
        d.reason,
        "Rule \"cap\" requires args.amount lte 50000 (got 70000)"
    );
    let s = set(&[
        "tools: { c: { rules: [ { name: cap, onDeny: too much, conditions: [ { path: args.amount, op: lte, value: 5 } ] } ] } }",
    ]);
    let Decision::Deny(d) = decide(&s, "c", json!({"amount": 7})).decision else {
        panic!()
    };
    assert_eq!(d.reason, "too much");
}

#[test]
fn rules_run_in_order_and_the_first_that_denies_is_reported() {
    let s = set(&[r#"
tools:
  t: { rules: [ { name: first, conditions: [ { path: args.a, op: eq, value: 1 } ] }, { name: second, action: deny } ] }
"#]);
    assert_eq!(outcome(&decide(&s, "t", json!({"a": 2}))), "deny:first");
    assert_eq!(outcome(&decide(&s, "t", json!({"a": 1}))), "deny:second");
}

#[test]
fn deny_and_approve_rules_apply_only_when_their_conditions_hold() {
    let s = set(&[r#"
default: allow
tools:
  charge: { rules: [ { name: big, action: approve, conditions: [ { path: args.amount, op: gt, value: 1000 } ] } ] }
  query: { rules: [ { name: no drop, action: deny, conditions: [ { path: args.sql, op: regex, value: "(?i)\\bdrop\\b" } ] } ] }
"#]);
    assert_eq!(
        outcome(&decide(&s, "charge", json!({"amount": 5}))),
        "allow"
    );
    assert_eq!(
        outcome(&decide(&s, "charge", json!({"amount": 5000}))),
        "approve:big"
    );
    assert_eq!(
        outcome(&decide(&s, "query", json!({"sql": "select 1"}))),
        "allow"
    );
    assert_eq!(
        outcome(&decide(&s, "query", json!({"sql": "Drop table x"}))),
        "deny:no drop"
    );
}

#[test]
fn limits_reserve_what_an_allowed_call_spends() {
    let s = set(&[r#"
tools:
  charge:
    rules:
      - { name: daily spend, limit: { counter: daily_spend, window: day, max: 1000, incrementFrom: args.amount, scope: identity } }
      - { name: per minute, rateLimit: 10/minute }
"#]);
    let v = decide_as(
        &s,
        &Identity::subject("alice"),
        "charge",
        json!({"amount": 250}),
    );
    let Decision::Allow { reservations } = &v.decision else {
        panic!("{v:?}")
    };
    let got: Vec<(String, u64, Option<u64>, Window)> = reservations
        .iter()
        .map(|r| (r.key.as_str().to_string(), r.amount, r.max, r.window))
        .collect();
    assert_eq!(
        got,
        [
            (
                "p0|charge|daily_spend|i:alice".into(),
                250,
                Some(1000),
                Window::Day
            ),
            (
                "p0|charge|_rate_minute|g".into(),
                1,
                Some(10),
                Window::Minute
            ),
        ]
    );
}

#[test]
fn a_full_counter_denies_with_its_rule() {
    let s = set(&[
        "tools: { create_issue: { rules: [ { name: hourly, rateLimit: 5/hour, onDeny: Hourly limit reached } ] } }",
    ]);
    let full = Fixed(HashMap::from([("_rate_hour".to_string(), 5)]));
    let args = json!({});
    let v = s.decide(
        &Call::new("create_issue", &args),
        &Identity::anonymous(),
        &full,
    );
    let Decision::Deny(d) = v.decision else {
        panic!()
    };
    assert_eq!(
        (d.rule.as_str(), d.reason.as_str()),
        ("hourly", "Hourly limit reached")
    );
    let room = Fixed(HashMap::from([("_rate_hour".to_string(), 4)]));
    assert!(
        s.decide(
            &Call::new("create_issue", &args),
            &Identity::anonymous(),
            &room
        )
        .decision
        .is_allow()
    );
}

#[test]
fn an_increment_from_argument_that_is_not_a_number_denies() {
    let s = set(&[
        "tools: { c: { rules: [ { name: spend, limit: { counter: s, window: day, max: 10, incrementFrom: args.amount } } ] } }",
    ]);
    for args in [json!({}), json!({"amount": "lots"}), json!({"amount": -5})] {
        assert_eq!(
            outcome(&decide(&s, "c", args.clone())),
            "deny:spend",
            "{args}"
        );
    }
}

#[test]
fn counter_scopes_key_by_workload_identity_or_session() {
    let s = set(&[r#"
tools:
  t:
    rules:
      - { name: g, limit: { counter: g, window: minute, max: 9 } }
      - { name: i, limit: { counter: i, window: minute, max: 9, scope: grant } }
      - { name: s, limit: { counter: s, window: minute, max: 9, scope: session } }
"#]);
    let args = json!({});
    let call = Call {
        tool: "t",
        args: Some(&args),
        session: Some("abc"),
        hints: None,
    };
    let Decision::Allow { reservations } = s
        .decide(&call, &Identity::subject("bob"), &NoCounters)
        .decision
    else {
        panic!()
    };
    let keys: Vec<&str> = reservations.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["p0|t|g|g", "p0|t|i|i:bob", "p0|t|s|s:abc"]);
}

#[test]
fn state_conditions_read_counters_as_intercept_does() {
    let s = set(&[r#"
tools:
  refund:
    rules:
      - { name: count, limit: { counter: daily_count, window: day } }
      - { name: few, conditions: [ { path: state.refund.daily_count, op: lt, value: 3 } ] }
"#]);
    let args = json!({});
    let some = Fixed(HashMap::from([("daily_count".to_string(), 2)]));
    assert!(
        s.decide(&Call::new("refund", &args), &Identity::anonymous(), &some)
            .decision
            .is_allow()
    );
    let many = Fixed(HashMap::from([("daily_count".to_string(), 3)]));
    assert_eq!(
        outcome(&s.decide(&Call::new("refund", &args), &Identity::anonymous(), &many)),
        "deny:few"
    );
}

#[test]
fn audit_mode_lets_calls_through_and_reports_what_it_would_deny() {
    let s = set(&[
        "default: allow\ntools: {}",
        "mode: audit\ndefault: deny\ntools: { read: { rules: [] }, drop: { rules: [ { name: never, action: deny } ] } }",
    ]);
    let v = decide(&s, "drop", json!({}));
    assert!(v.decision.is_allow());
    assert_eq!(v.audit.as_ref().map(|d| d.rule.as_str()), Some("never"));
    let v = decide(&s, "write", json!({}));
    assert!(v.decision.is_allow());
    assert_eq!(v.audit.map(|d| d.rule), Some("(default deny)".into()));
    assert_eq!(decide(&s, "read", json!({})).audit, None);
    assert!(
        s.visible("drop", &Identity::anonymous()),
        "audit mode hides nothing"
    );
}

#[test]
fn an_audit_policy_grants_nothing_either() {
    let s = set_with(
        DefaultAction::Deny,
        &["mode: audit\ndefault: allow\ntools: { read: { rules: [] } }"],
    );
    assert_eq!(
        outcome(&decide(&s, "read", json!({}))),
        "deny:(default deny)"
    );
}

#[test]
fn subjects_choose_which_callers_a_policy_governs() {
    let s = set(&[r#"
default: deny
subjects:
  - serviceAccount: agents/report-bot
  - claim: { name: groups, value: data-admins }
  - subject: alice@example.com
tools: { read: { rules: [] } }
"#]);
    let bot = Identity::subject("system:serviceaccount:agents:report-bot");
    let other_bot = Identity::subject("system:serviceaccount:agents:other");
    let mut admin = Identity::subject("carol");
    admin
        .claims
        .insert("groups".into(), json!(["staff", "data-admins"]));
    let alice = Identity::subject("alice@example.com");
    for (who, governed) in [
        (&bot, true),
        (&admin, true),
        (&alice, true),
        (&other_bot, false),
        (&Identity::anonymous(), false),
    ] {
        let want = if governed {
            "deny:(default deny)"
        } else {
            "allow"
        };
        assert_eq!(
            outcome(&decide_as(&s, who, "write", json!({}))),
            want,
            "{who:?}"
        );
    }
}

#[test]
fn a_caller_no_policy_governs_is_denied_where_the_set_says_so_whatever_the_tool() {
    let mut s =
        set(&["default: allow\nsubjects: [ { subject: alice } ]\ntools: { read: { rules: [] } }"]);
    s.ungoverned = Some(DefaultAction::Deny);
    let alice = Identity::subject("alice");
    assert_eq!(
        outcome(&decide_as(&s, &alice, "write", json!({}))),
        "allow",
        "governed: the policy's default"
    );
    for who in [Identity::anonymous(), Identity::subject("mallory")] {
        for tool in ["read", "write"] {
            let v = decide_as(&s, &who, tool, json!({}));
            assert_eq!(outcome(&v), "deny:(ungoverned caller)", "{who:?} {tool}");
            let Decision::Deny(d) = v.decision else {
                unreachable!()
            };
            assert!(
                d.reason.contains("No policy governs this caller"),
                "{}",
                d.reason
            );
        }
        assert!(
            !s.visible("read", &who),
            "nothing is listed to an ungoverned caller"
        );
    }
    // A set whose policies govern everyone has no ungoverned caller.
    let mut s = set(&["default: allow\ntools: { read: { rules: [] } }"]);
    s.ungoverned = Some(DefaultAction::Deny);
    assert_eq!(outcome(&decide(&s, "write", json!({}))), "allow");
}

#[test]
fn a_namespace_wide_service_account_subject_matches_every_account_there() {
    let s = set(&["default: deny\nsubjects: [ { serviceAccount: \"agents/*\" } ]\ntools: {}"]);
    let bot = Identity::subject("system:serviceaccount:agents:any");
    assert_eq!(
        outcome(&decide_as(&s, &bot, "x", json!({}))),
        "deny:(default deny)"
    );
    let stranger = Identity::subject("system:serviceaccount:other:any");
    assert_eq!(outcome(&decide_as(&s, &stranger, "x", json!({}))), "allow");
}

#[test]
fn conditions_can_match_on_identity() {
    let s = set(&[
        "tools: { t: { rules: [ { name: admins, conditions: [ { path: identity.claims.groups, op: contains, value: admins } ] } ] } }",
    ]);
    let mut admin = Identity::subject("a");
    admin.claims.insert("groups".into(), json!(["admins"]));
    assert_eq!(outcome(&decide_as(&s, &admin, "t", json!({}))), "allow");
    assert_eq!(
        outcome(&decide_as(&s, &Identity::subject("b"), "t", json!({}))),
        "deny:admins"
    );
}

#[test]
fn the_deny_all_set_refuses_everything_with_its_reason() {
    let s = PolicySet::deny_all("no policy is loaded yet");
    let Decision::Deny(d) = decide(&s, "anything", json!({})).decision else {
        panic!()
    };
    assert_eq!(d.reason, "no policy is loaded yet");
    assert!(!s.visible("anything", &Identity::anonymous()));
}

#[test]
fn resources_and_prompts_are_decided_only_where_a_policy_names_them() {
    let s = set(&[
        "default: deny\ntools: { \"resource:config://*\": { rules: [] }, read: { rules: [] } }",
    ]);
    assert!(s.names("resource:") && !s.names("prompt:"));
    assert_eq!(
        outcome(&decide(&s, "resource:config://app", json!({}))),
        "allow"
    );
    assert_eq!(
        outcome(&decide(&s, "resource:secret://db", json!({}))),
        "deny:(default deny)"
    );
    let hidden = set(&["default: allow\nhide: [\"prompt:admin_*\"]"]);
    assert!(hidden.names("prompt:"));
    assert_eq!(
        outcome(&decide(&hidden, "prompt:admin_reset", json!({}))),
        "deny:(hidden)"
    );
}

#[test]
fn a_path_named_by_any_policy_passes_through_exactly_or_by_prefix() {
    let s = set(&[
        "tools: {}",
        "passthroughPaths: [/oauth/token, /.well-known/*]",
    ]);
    for (path, passes) in [
        ("/oauth/token", true),
        ("/oauth/token/x", false),
        ("/OAUTH/token", false),
        ("/oauth%2Ftoken", false),
        ("/.well-known/openid-configuration", true),
        ("/.well-known", false),
        ("/mcp", false),
    ] {
        assert_eq!(s.passes_through(path), passes, "{path}");
    }
    assert!(!set(&["tools: {}"]).passes_through("/oauth/token"));
}

#[test]
fn a_session_scope_without_a_session_counts_per_caller_never_in_one_shared_bucket() {
    use tollgate_api::{CountersUnavailable, Scope};
    let name = CounterName::new(
        "p",
        "t",
        "notes",
        Scope::Session,
        Window::Hour,
        CountersUnavailable::Deny,
    );
    let args = json!({});
    let alice = Identity::subject("alice");
    let bob = Identity::subject("bob");
    let mut in_session = Call::new("t", &args);
    in_session.session = Some("s1");
    assert_eq!(name.key(&in_session, &alice).as_str(), "p|t|notes|s:s1");
    let alone = Call::new("t", &args);
    let (a, b) = (name.key(&alone, &alice), name.key(&alone, &bob));
    assert_ne!(a.as_str(), b.as_str(), "each caller its own");
    assert!(a.as_str().starts_with("p|t|notes|si:"), "{}", a.as_str());
    assert_ne!(
        a.as_str(),
        name.key(&in_session, &alice).as_str(),
        "never a session's key"
    );
}

#[test]
fn annotated_rules_apply_only_to_tools_with_pinned_hints_and_missing_hints_take_mcps_defaults() {
    let s = set_with(
        DefaultAction::Deny,
        &[r#"
default: deny
pinning: { trustOnFirstUse: true }
annotated:
  - annotations: { readOnlyHint: true }
    rules: []
  - annotations: { destructiveHint: true }
    rules: [ { name: a person decides, action: approve } ]
  - annotations: { destructiveHint: false, readOnlyHint: false }
    rules: [ { name: hourly, rateLimit: 2/hour } ]
"#],
    );
    let args = json!({});
    let with = |hints: Option<Hints>| {
        let call = Call {
            hints,
            ..Call::new("t", &args)
        };
        outcome(&s.decide(&call, &Identity::anonymous(), &NoCounters))
    };
    let read_only = Hints::of(Some(
        &json!({"readOnlyHint": true, "destructiveHint": false}),
    ));
    assert_eq!(with(Some(read_only)), "allow");
    assert_eq!(
        with(Some(Hints::of(None))),
        "approve:a person decides",
        "no annotations: MCP's default destructiveHint true"
    );
    assert_eq!(
        with(Some(Hints::of(Some(&json!({"destructiveHint": false}))))),
        "allow"
    );
    assert_eq!(
        with(None),
        "deny:(default deny)",
        "without pinned hints no annotated entry applies"
    );
    assert!(!s.visible("t", &Identity::anonymous()));
    assert!(s.visible_with("t", Some(read_only), &Identity::anonymous()));
}

#[test]
fn annotated_rules_need_enforced_pinning_and_name_mcps_hints() {
    let spec: PolicySpec = tollgate_api::load::yaml_from_str(
        r#"
annotated:
  - annotations: { readOnly: true }
    rules: []
  - annotations: {}
    rules: [ { name: r, rateLimit: 1/hour }, { name: r2, rateLimit: 2/hour } ]
"#,
    )
    .unwrap();
    let problems: Vec<String> = tollgate_api::validate::validate_spec(&spec)
        .iter()
        .map(|p| format!("{}: {}", p.path, p.message))
        .collect();
    let text = problems.join("\n");
    assert!(
        text.contains(
            "spec.annotated[0].annotations: selecting tools by annotations needs spec.pinning"
        ),
        "{text}"
    );
    assert!(text.contains("spec.annotated[0].annotations.readOnly: \"readOnly\" is not one of MCP's tool annotations"), "{text}");
    assert!(
        text.contains("spec.annotated[1].annotations: name at least one annotation"),
        "{text}"
    );
    assert!(
        text.contains("spec.annotated[1].rules[1].rateLimit: this rule and rule \"r\" both count"),
        "{text}"
    );
}
