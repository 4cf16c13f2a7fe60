//! Policy loading in all three formats (McpPolicy/McpClusterPolicy YAML, PolicyLayer's
//! policy.json, Intercept's YAML): any text loads or is refused with problems, never a panic,
//! and a policy that loads compiles and decides.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use tollgate_api::{Call, DefaultAction, Identity, NoCounters, PolicySet, load};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(loaded) = load::load_file(text, "fuzz.yaml") else { return };
    let specs: Vec<_> = loaded.iter().map(|l| (l.policy.name.as_str(), &l.policy.spec)).collect();
    let set = PolicySet::compile(1, DefaultAction::Deny, specs).expect("a loaded policy compiles");
    let args = json!({"amount": 5, "sql": "select 1", "path": "x"});
    for tool in ["read_file", "create_charge", "x", ""] {
        let _ = set.decide(&Call::new(tool, &args), &Identity::anonymous(), &NoCounters);
    }
});
