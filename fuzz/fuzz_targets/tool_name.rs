//! Tool-name reading, differential against serde_json: the name read from a tool's strictly
//! read JSON text is the one serde_json reads, and none only when serde finds no string `name`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate_sidecar::fuzzing::tool_name;

fuzz_target!(|data: &[u8]| {
    // tool_name reads a tool of a list the proxy has read strictly (`strict::read` of the
    // whole message): text that is one JSON value, with no key twice and every number exact.
    let Ok(text) = tollgate_sidecar::mcp::strict::read(data) else { return };
    let ours = tool_name(text.trim());
    let serde = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => m.get("name").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    };
    assert_eq!(ours.as_deref(), serde.as_deref(), "{text}");
});
