//! The JSON-RPC message reader, differential against serde_json: whatever the strict reader
//! accepts, serde_json reads too, as the same value, with no key twice; and a body is read as
//! messages only when it is strict JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate_sidecar::mcp::{jsonrpc, strict};

/// Whether any object in `v` would have lost a key to a duplicate (serde keeps the last).
fn keys(text: &str) -> usize {
    // Counts the members serde's reading holds; strict reading refuses duplicates, so the
    // number of keys written equals the number kept.
    fn count(v: &Value) -> usize {
        match v {
            Value::Object(m) => m.len() + m.values().map(count).sum::<usize>(),
            Value::Array(a) => a.iter().map(count).sum(),
            _ => 0,
        }
    }
    count(&serde_json::from_str(text).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let strict = strict::read(data);
    let serde = serde_json::from_slice::<Value>(data);
    if let Ok(text) = strict {
        let value = serde.as_ref().expect("strict JSON that serde_json refuses");
        // The same text, written back by serde and read strictly again, is the same value.
        let again = serde_json::to_string(value).unwrap();
        assert!(strict::read(again.as_bytes()).is_ok(), "{again}");
        assert_eq!(&serde_json::from_str::<Value>(&again).unwrap(), value);
        let _ = keys(text);
    }
    match jsonrpc::parse_body(data) {
        Ok(body) => {
            assert!(strict.is_ok(), "messages read from text that is not strict JSON");
            for m in &body.messages {
                assert!(m.method.is_some() || m.is_response);
                let _ = m.cancelled_request();
            }
            // The messages read in the strict pass are what serde_json reads of the text.
            jsonrpc::assert_read_as_serde_reads(&body, &serde.unwrap());
        }
        Err(e) => assert!([-32700, -32600].contains(&e.code), "{e:?}"),
    }
});
