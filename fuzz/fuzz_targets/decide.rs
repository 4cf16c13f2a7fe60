//! The decision function on any call: never a panic, and what it allows keeps the policy's
//! promises, checked here independently of it: the denied tool is never allowed, a condition's
//! bound holds on what was allowed, an unlisted tool is refused.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate_api::{Call, Decision, DefaultAction, Identity, NoCounters, PolicySet, PolicySpec};

const POLICY: &str = r#"
default: deny
hide: [secret]
tools:
  never: { rules: [ { name: never, action: deny } ] }
  cap:
    rules:
      - name: cap
        conditions:
          - { path: args.amount, op: lte, value: 100 }
          - { path: args.currency, op: in, value: [usd, eur] }
  query: { rules: [ { name: select, conditions: [ { path: args.sql, op: regex, value: "^select\\b" } ] } ] }
  "get_*": { rules: [] }
  "*": { rules: [ { name: no drops, action: deny, conditions: [ { path: args.sql, op: contains, value: drop } ] } ] }
"#;

static SET: LazyLock<PolicySet> = LazyLock::new(|| {
    let spec: PolicySpec = tollgate_api::load::yaml_from_str(POLICY).unwrap();
    PolicySet::compile(1, DefaultAction::Deny, [("p", &spec)]).unwrap()
});

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let Ok(args) = serde_json::from_slice::<Value>(rest) else { return };
    let tools = ["never", "cap", "query", "get_x", "secret", "other", "Never", "cap "];
    let tool = tools[pick as usize % tools.len()];
    let allowed = matches!(
        SET.decide(&Call::new(tool, &args), &Identity::anonymous(), &NoCounters).decision,
        Decision::Allow { .. }
    );
    if !allowed {
        return;
    }
    let number = |v: Option<&Value>| match v {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.parse::<f64>().ok().filter(|_| tollgate_api::decide::is_json_number(s.as_bytes())),
        _ => None,
    };
    fn text(v: Option<&Value>) -> &str {
        v.and_then(Value::as_str).unwrap_or("")
    }
    assert!(!text(args.get("sql")).contains("drop"), "{tool} {args}");
    match tool {
        "cap" => {
            let amount = number(args.get("amount")).expect("an allowed amount is a number");
            assert!(amount.is_finite() && amount <= 100.0, "{args}");
            assert!(["usd", "eur"].contains(&text(args.get("currency"))), "{args}");
        }
        "query" => assert!(text(args.get("sql")).starts_with("select"), "{args}"),
        "get_x" => {}
        _ => panic!("{tool} was allowed: {args}"),
    }
});
