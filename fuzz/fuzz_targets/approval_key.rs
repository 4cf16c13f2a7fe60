//! The canonical form an approval binds arguments by: two JSON values share it exactly when
//! they are the same value as servers read them (keys in any order, `1` and `1.0` alike), so an
//! approval can never be stretched to other arguments; and it reads back as itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate_api::canonical;

/// The value as servers compare it: whole floats within i64 are those integers.
fn normal(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), normal(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(normal).collect()),
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Value::from(f as i64),
            _ => v.clone(),
        },
        other => other.clone(),
    }
}

fn canon(v: &Value) -> String {
    let mut out = String::new();
    canonical(v, &mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    // Two values, split at the first 0xff byte (never part of UTF-8 JSON).
    let split = data.iter().position(|b| *b == 0xff).unwrap_or(data.len());
    let (a, b) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    let Ok(a) = serde_json::from_slice::<Value>(a) else { return };
    let ca = canon(&a);
    let back: Value = serde_json::from_str(&ca).expect("the canonical form is JSON");
    assert_eq!(canon(&back), ca, "it reads back as itself");
    assert_eq!(normal(&back), normal(&a), "and as the same value");
    if let Ok(b) = serde_json::from_slice::<Value>(b) {
        assert_eq!(ca == canon(&b), normal(&a) == normal(&b), "{ca} / {}", canon(&b));
    }
});
