//! Tool-name reading, differential against serde_json: the name read from a tool's JSON text
//! is the one serde_json reads, or none when serde finds no single string `name`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate_sidecar::fuzzing::tool_name;

fuzz_target!(|data: &[u8]| {
    // tool_name reads text already known to be one JSON value, as a tool list's item is.
    let Ok(text) = std::str::from_utf8(data) else { return };
    if serde_json::from_str::<&serde_json::value::RawValue>(text).is_err() {
        return;
    }
    let ours = tool_name(text.trim());
    let serde = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => m.get("name").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    };
    if let Some(name) = &ours {
        assert_eq!(Some(name.as_ref()), serde.as_deref(), "{text}");
    }
});
