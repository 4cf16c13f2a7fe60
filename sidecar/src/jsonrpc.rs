//! Reading the JSON-RPC messages a client sends, and writing the ones Tollgate answers with.
//!
//! ```text
//! body bytes ── parse_body ──> Body::Messages([Message { id, method, tool call? }], batch?)
//!                          └─> Body::NotJsonRpc (pass through)   └─> Err(RpcError) (refuse)
//! ```
//!
//! Parsing borrows from the body: the proxy forwards the original bytes when it changes
//! nothing, and only a `tools/call`'s arguments are materialised as a `Value`.

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

/// JSON-RPC's parse error.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC's invalid request.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC's internal error (used for an unreachable upstream).
pub const INTERNAL_ERROR: i64 = -32603;
/// Tollgate's code for a call refused by policy (in the implementation-defined server range).
pub const POLICY_DENIED: i64 = -32001;
/// Tollgate's code for a request body over the size limit.
pub const TOO_LARGE: i64 = -32002;

/// One client message, borrowing from the body.
#[derive(Debug)]
pub struct Message<'a> {
    /// The message's own JSON text.
    pub raw: &'a str,
    /// The raw `id` (absent for notifications and for responses without one).
    pub id: Option<&'a RawValue>,
    pub method: Option<String>,
    pub params: Option<&'a RawValue>,
    /// Whether the message is a response (`result` or `error`) the client sends to the server.
    pub is_response: bool,
}

impl Message<'_> {
    pub fn is_request(&self) -> bool {
        self.method.is_some() && self.id.is_some()
    }

    /// What this message asks for, as policy names it: a `tools/call` by tool name, a
    /// `resources/read` as `resource:<uri>` (its params as the arguments), a `prompts/get` as
    /// `prompt:<name>`. `None` for every other message.
    pub fn call(&self) -> Option<Result<ToolCall, String>> {
        match self.method.as_deref()? {
            "tools/call" => Some(match self.params {
                None => Err("tools/call needs params with a name".into()),
                Some(params) => serde_json::from_str::<ToolCall>(params.get())
                    .map_err(|e| format!("tools/call params are not valid: {e}")),
            }),
            "resources/read" => Some(self.named_params("uri").map(|(uri, params)| ToolCall {
                name: format!("resource:{uri}"),
                arguments: Some(params),
            })),
            "prompts/get" => Some(self.named_params("name").map(|(name, params)| ToolCall {
                name: format!("prompt:{name}"),
                arguments: params.get("arguments").cloned(),
            })),
            _ => None,
        }
    }

    fn named_params(&self, key: &str) -> Result<(String, Value), String> {
        let method = self.method.as_deref().unwrap_or("");
        let Unambiguous(params) = match self.params.map(|p| serde_json::from_str(p.get())) {
            Some(Ok(params)) => params,
            Some(Err(e)) => return Err(format!("{method} params are not valid: {e}")),
            None => return Err(format!("{method} needs params with {key}")),
        };
        let named = params
            .get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{method} params need a string {key}"))?
            .to_string();
        Ok((named, params))
    }

    /// The raw id as JSON (`null` when absent), for building a response.
    pub fn id_value(&self) -> Value {
        id_value(self.id)
    }
}

/// A raw id as JSON (`null` when absent), for building a response.
pub fn id_value(id: Option<&RawValue>) -> Value {
    id.and_then(|id| serde_json::from_str(id.get()).ok())
        .unwrap_or(Value::Null)
}

/// `tools/call` params.
#[derive(Debug, Deserialize)]
pub struct ToolCall {
    pub name: String,
    #[serde(default, deserialize_with = "unambiguous")]
    pub arguments: Option<Value>,
}

/// A JSON value, read as [`Value`] reads it but refusing an object with a key twice. Servers
/// differ on which copy counts (most the last, some the first, some refuse), so arguments with
/// one cannot be decided for all of them: `{"amount": 90000, "amount": 1}` is refused, rather
/// than decided on one copy while the server runs the other.
struct Unambiguous(Value);

fn unambiguous<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Option::<Unambiguous>::deserialize(d).map(|v| v.map(|Unambiguous(v)| v))
}

impl<'de> Deserialize<'de> for Unambiguous {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
                Ok(v.into())
            }
            fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
                Ok(v.into())
            }
            fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
                Ok(v.into())
            }
            fn visit_str<E>(self, v: &str) -> Result<Value, E> {
                Ok(Value::String(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Value, E> {
                Ok(Value::String(v))
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Value, S::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(Unambiguous(v)) = seq.next_element()? {
                    items.push(v);
                }
                Ok(Value::Array(items))
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Value, M::Error> {
                let mut object = Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    let Unambiguous(v) = map.next_value()?;
                    match object.entry(key) {
                        Entry::Vacant(e) => {
                            e.insert(v);
                        }
                        Entry::Occupied(e) => {
                            return Err(de::Error::custom(format_args!(
                                "the key {:?} appears twice in one object",
                                e.key()
                            )));
                        }
                    }
                }
                Ok(Value::Object(object))
            }
        }
        d.deserialize_any(V).map(Unambiguous)
    }
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(default)]
    jsonrpc: Option<&'a str>,
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
    #[serde(default, borrow)]
    result: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

/// What a request body holds.
#[derive(Debug)]
pub enum Body<'a> {
    /// JSON-RPC messages; `batch` when the body was an array.
    Messages {
        messages: Vec<Message<'a>>,
        batch: bool,
    },
    /// Not JSON-RPC: forwarded unchanged.
    NotJsonRpc,
}

/// An error Tollgate answers itself.
#[derive(Debug, Clone)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

/// Classifies a POST body. `json_declared` is whether the request said `application/json`.
pub fn parse_body(bytes: &[u8], json_declared: bool) -> Result<Body<'_>, RpcError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if !matches!(first, Some(b'{') | Some(b'[')) {
        return if json_declared {
            Err(RpcError {
                code: PARSE_ERROR,
                message: "Parse error: the body is not a JSON object or array".into(),
            })
        } else {
            Ok(Body::NotJsonRpc)
        };
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(_) if !json_declared => return Ok(Body::NotJsonRpc),
        Err(_) => {
            return Err(RpcError {
                code: PARSE_ERROR,
                message: "Parse error: the body is not UTF-8".into(),
            });
        }
    };
    let parse_error = |e: serde_json::Error| RpcError {
        code: PARSE_ERROR,
        message: format!("Parse error: {e}"),
    };
    if first == Some(b'[') {
        let items: Vec<&RawValue> = match serde_json::from_str(text) {
            Ok(items) => items,
            Err(_) if !json_declared => return Ok(Body::NotJsonRpc),
            Err(e) => return Err(parse_error(e)),
        };
        if items.is_empty() {
            return Err(RpcError {
                code: INVALID_REQUEST,
                message: "Invalid Request: an empty batch".into(),
            });
        }
        let mut messages = Vec::with_capacity(items.len());
        for item in items {
            match message(item.get())? {
                Some(m) => messages.push(m),
                None => {
                    return Err(RpcError {
                        code: INVALID_REQUEST,
                        message: "Invalid Request: every batch element must be a JSON-RPC message"
                            .into(),
                    });
                }
            }
        }
        return Ok(Body::Messages {
            messages,
            batch: true,
        });
    }
    match message(text) {
        Ok(Some(m)) => Ok(Body::Messages {
            messages: vec![m],
            batch: false,
        }),
        Ok(None) => Ok(Body::NotJsonRpc),
        Err(_) if !json_declared && serde_json::from_str::<&RawValue>(text).is_err() => {
            Ok(Body::NotJsonRpc)
        }
        Err(e) => Err(e),
    }
}

/// One message; `None` when the object is plainly not JSON-RPC (no `jsonrpc`, no `method`).
fn message(text: &str) -> Result<Option<Message<'_>>, RpcError> {
    let wire: Wire<'_> = serde_json::from_str(text).map_err(|e| RpcError {
        code: if e.is_syntax() || e.is_eof() {
            PARSE_ERROR
        } else {
            INVALID_REQUEST
        },
        message: format!("Invalid Request: {e}"),
    })?;
    if wire.jsonrpc.is_none() && wire.method.is_none() {
        return Ok(None);
    }
    // Anything with a method is decided, whatever else it claims to be: a lenient server must
    // not be reachable with a message the proxy waved through.
    if wire.jsonrpc != Some("2.0") {
        return Err(RpcError {
            code: INVALID_REQUEST,
            message: "Invalid Request: jsonrpc must be \"2.0\"".into(),
        });
    }
    Ok(Some(Message {
        raw: text,
        id: wire.id.filter(|id| id.get() != "null"),
        method: wire.method,
        params: wire.params,
        is_response: wire.result.is_some() || wire.error.is_some(),
    }))
}

/// A JSON-RPC error response.
pub fn error_response(id: Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = json!({ "code": code, "message": message });
    if let Some(data) = data {
        error["data"] = data;
    }
    json!({ "jsonrpc": "2.0", "id": id, "error": error })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(body: &str, json: bool) -> String {
        match parse_body(body.as_bytes(), json) {
            Ok(Body::NotJsonRpc) => "pass".into(),
            Ok(Body::Messages { messages, batch }) => format!(
                "{}{}",
                if batch { "batch:" } else { "" },
                messages
                    .iter()
                    .map(|m| m.method.clone().unwrap_or_else(|| "response".into()))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Err(e) => format!("error {}", e.code),
        }
    }

    #[test]
    fn bodies_are_classified_as_messages_pass_through_or_errors() {
        let cases = [
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#,
                true,
                "tools/call",
            ),
            (
                r#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","method":"b"}]"#,
                true,
                "batch:a,b",
            ),
            (r#"{"jsonrpc":"2.0","id":1,"result":{}}"#, true, "response"),
            (r#"{"hello":"world"}"#, true, "pass"),
            ("name=value", false, "pass"),
            ("{not json", false, "pass"),
            ("{not json", true, "error -32700"),
            ("", true, "error -32700"),
            ("[]", true, "error -32600"),
            (r#"[1]"#, true, "error -32600"),
            (r#"{"id":1,"method":"tools/call"}"#, true, "error -32600"),
            (
                r#"{"jsonrpc":"1.0","id":1,"method":"tools/call"}"#,
                false,
                "error -32600",
            ),
        ];
        for (body, json, want) in cases {
            assert_eq!(kinds(body, json), want, "{body}");
        }
    }

    #[test]
    fn a_tool_call_exposes_its_name_and_arguments() {
        let body = r#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"t","arguments":{"n":1}}}"#;
        let Ok(Body::Messages { messages, .. }) = parse_body(body.as_bytes(), true) else {
            panic!()
        };
        let call = messages[0].call().unwrap().unwrap();
        assert_eq!(
            (call.name.as_str(), call.arguments),
            ("t", Some(json!({"n": 1})))
        );
        assert_eq!(messages[0].id_value(), json!("a"));
    }

    /// What `message`'s `call()` says of a request with these params.
    fn call_of(method: &str, params: &str) -> Result<ToolCall, String> {
        let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{params}}}"#);
        let Ok(Body::Messages { messages, .. }) = parse_body(body.as_bytes(), true) else {
            panic!("{body}")
        };
        messages[0].call().unwrap()
    }

    #[test]
    fn arguments_with_a_key_twice_are_refused_at_any_depth_naming_the_key() {
        for (method, params, key) in [
            (
                "tools/call",
                r#"{"name":"t","arguments":{"amount":1,"amount":9}}"#,
                "amount",
            ),
            (
                "tools/call",
                r#"{"name":"t","arguments":{"a":[{"b":1,"b":2}]}}"#,
                "b",
            ),
            (
                "tools/call",
                r#"{"name":"t","arguments":{"x\u0079":1,"xy":2}}"#,
                "xy",
            ),
            (
                "resources/read",
                r#"{"uri":"file:///a","uri":"file:///etc/shadow"}"#,
                "uri",
            ),
            (
                "prompts/get",
                r#"{"name":"p","arguments":{"k":1,"k":2}}"#,
                "k",
            ),
        ] {
            let e = call_of(method, params).unwrap_err();
            assert!(
                e.contains(&format!("the key {key:?} appears twice")),
                "{params}: {e}"
            );
        }
        let e = call_of("tools/call", r#"{"name":"a","name":"b"}"#).unwrap_err();
        assert!(e.contains("duplicate field `name`"), "{e}");
    }

    #[test]
    fn arguments_without_a_key_twice_read_as_serde_json_reads_them() {
        let args = r#"{"big":18446744073709551615,"neg":-9223372036854775808,"f":1.5e300,"s":"\u00e9\n","n":null,"t":true,"l":[[],{},[1,{"a":{"a":"a"}}]],"same at two depths":{"same at two depths":0}}"#;
        let call = call_of(
            "tools/call",
            &format!(r#"{{"name":"t","arguments":{args}}}"#),
        )
        .unwrap();
        assert_eq!(
            call.arguments,
            Some(serde_json::from_str::<Value>(args).unwrap())
        );
        let call = call_of("tools/call", r#"{"name":"t","arguments":null}"#).unwrap();
        assert_eq!(call.arguments, None);
    }
}
