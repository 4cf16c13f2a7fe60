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
use serde_json::value::RawValue;
use serde_json::{Value, json};

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
        let params: Value = self
            .params
            .and_then(|p| serde_json::from_str(p.get()).ok())
            .ok_or_else(|| format!("{method} needs params with {key}"))?;
        let named = params
            .get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{method} params need a string {key}"))?
            .to_string();
        Ok((named, params))
    }

    /// The raw id as JSON (`null` when absent), for building a response.
    pub fn id_value(&self) -> Value {
        self.id
            .and_then(|id| serde_json::from_str(id.get()).ok())
            .unwrap_or(Value::Null)
    }
}

/// `tools/call` params.
#[derive(Debug, Deserialize)]
pub struct ToolCall {
    pub name: String,
    #[serde(default)]
    pub arguments: Option<Value>,
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
}
