//! Reading the JSON-RPC messages a client sends, and writing the ones Tollgate answers with.
//!
//! ```text
//! body bytes ── strict::read ── parse_body ──> Body { [Message { id, method, params }], batch }
//!                                          └─> Err(RpcError): not one JSON-RPC message or batch
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
/// Intercept's code for a call that waits for a person's approval.
pub const APPROVAL_PENDING: i64 = -32003;
/// JSON-RPC 2.0's code for parameters that cannot be read.
pub const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC 2.0's code for a method the receiver does not have (or, here, cannot place).
pub const METHOD_NOT_FOUND: i64 = -32601;
/// MCP 2026-07-28's `HeaderMismatch`: headers that disagree with the body, or are missing.
pub const HEADER_MISMATCH: i64 = -32020;
/// MCP 2026-07-28's `UnsupportedProtocolVersion`.
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

/// What kind of JSON value, in words.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

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

impl<'a> Message<'a> {
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
                    .map_err(|e| format!("tools/call params are not valid: {e}"))
                    .and_then(|call| match &call.arguments {
                        // MCP's CallToolRequest: arguments are an object, or absent. A server
                        // refuses anything else, with an error a tool could also raise after
                        // running: such a call is refused here, never counted.
                        None | Some(Value::Object(_)) => Ok(call),
                        Some(other) => Err(format!(
                            "tools/call arguments must be an object, not {}",
                            kind(other)
                        )),
                    }),
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
        let params: Value = match self.params.map(|p| serde_json::from_str(p.get())) {
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

    /// The id of the request a `notifications/cancelled` cancels.
    pub fn cancelled_request(&self) -> Option<&'a RawValue> {
        #[derive(Deserialize)]
        struct Cancelled<'a> {
            #[serde(rename = "requestId", borrow)]
            request_id: &'a RawValue,
        }
        if self.method.as_deref() != Some("notifications/cancelled") {
            return None;
        }
        serde_json::from_str::<Cancelled<'a>>(self.params?.get())
            .ok()
            .map(|c| c.request_id)
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
    /// Read from strictly read JSON ([`crate::mcp::strict`]): no key twice, every number exact.
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

/// What a request body holds: one message, or a batch of them.
#[derive(Debug)]
pub struct Body<'a> {
    pub messages: Vec<Message<'a>>,
    /// Whether the body was an array.
    pub batch: bool,
}

/// An error Tollgate answers itself.
#[derive(Debug, Clone)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    fn invalid(message: impl Into<String>) -> Self {
        RpcError {
            code: INVALID_REQUEST,
            message: message.into(),
        }
    }
}

/// Reads a request body: exactly one JSON-RPC 2.0 message or batch, in JSON that every reader
/// reads one way ([`crate::mcp::strict`]). Anything else is refused, never forwarded: a server may
/// read what the proxy could not.
pub fn parse_body(bytes: &[u8]) -> Result<Body<'_>, RpcError> {
    let text = crate::mcp::strict::read(bytes).map_err(|e| RpcError {
        code: if e.syntax {
            PARSE_ERROR
        } else {
            INVALID_REQUEST
        },
        message: format!(
            "{}: the body must be one JSON-RPC message or batch in plain UTF-8 JSON; {e}",
            if e.syntax {
                "Parse error"
            } else {
                "Invalid Request"
            }
        ),
    })?;
    if text.trim_start().starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(text)
            .map_err(|e| RpcError::invalid(format!("Invalid Request: {e}")))?;
        if items.is_empty() {
            return Err(RpcError::invalid("Invalid Request: an empty batch"));
        }
        let messages = items
            .into_iter()
            .map(|item| message(item.get()))
            .collect::<Result<_, _>>()?;
        return Ok(Body {
            messages,
            batch: true,
        });
    }
    Ok(Body {
        messages: vec![message(text)?],
        batch: false,
    })
}

/// One message of strictly read JSON: a request, a notification or a response, and nothing
/// that could be taken for another.
fn message(text: &str) -> Result<Message<'_>, RpcError> {
    let wire: Wire<'_> = serde_json::from_str(text).map_err(|e| {
        RpcError::invalid(format!(
            "Invalid Request: a JSON-RPC message must be an object with string jsonrpc and method: {e}"
        ))
    })?;
    if wire.jsonrpc != Some("2.0") {
        return Err(RpcError::invalid(
            "Invalid Request: every message needs \"jsonrpc\": \"2.0\"",
        ));
    }
    let is_response = wire.result.is_some() || wire.error.is_some();
    match (&wire.method, is_response) {
        (Some(_), true) => {
            return Err(RpcError::invalid(
                "Invalid Request: a message is a request or a response, not both",
            ));
        }
        (None, false) => {
            return Err(RpcError::invalid(
                "Invalid Request: a message needs a method, a result or an error",
            ));
        }
        _ => {}
    }
    let id = wire.id.filter(|id| id.get() != "null");
    if let Some(id) = id
        && !matches!(id.get().as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'))
    {
        return Err(RpcError::invalid(
            "Invalid Request: an id must be a string or a number",
        ));
    }
    Ok(Message {
        raw: text,
        id,
        method: wire.method,
        params: wire.params,
        is_response,
    })
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

    fn kinds(body: &str) -> String {
        match parse_body(body.as_bytes()) {
            Ok(Body { messages, batch }) => format!(
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
    fn bodies_are_messages_or_refused_whatever_they_look_like() {
        let cases = [
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#,
                "tools/call",
            ),
            (
                r#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","method":"b"}]"#,
                "batch:a,b",
            ),
            (r#"{"jsonrpc":"2.0","id":1,"result":{}}"#, "response"),
            (
                r#"{"jsonrpc":"2.0","id":"x","error":{"code":1}}"#,
                "response",
            ),
            (r#"{"hello":"world"}"#, "error -32600"),
            ("name=value", "error -32700"),
            ("{not json", "error -32700"),
            ("", "error -32700"),
            ("[]", "error -32600"),
            (r#"[1]"#, "error -32600"),
            (r#"[{"jsonrpc":"2.0","method":"a"},{}]"#, "error -32600"),
            (r#"{"id":1,"method":"tools/call"}"#, "error -32600"),
            (
                r#"{"jsonrpc":"1.0","id":1,"method":"tools/call"}"#,
                "error -32600",
            ),
            (r#"{"jsonrpc":"2.0","id":1,"method":7}"#, "error -32600"),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"a","result":{}}"#,
                "error -32600",
            ),
            (
                r#"{"jsonrpc":"2.0","id":{"a":1},"method":"a"}"#,
                "error -32600",
            ),
            (
                r#"{"jsonrpc":"2.0","id":true,"method":"a"}"#,
                "error -32600",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"a","method":"b"}"#,
                "error -32600",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"a","params":{"n":NaN}}"#,
                "error -32700",
            ),
            (
                "\u{feff}{\"jsonrpc\":\"2.0\",\"method\":\"a\"}",
                "error -32700",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(kinds(body), want, "{body}");
        }
    }

    #[test]
    fn a_tool_call_exposes_its_name_and_arguments() {
        let body = r#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"t","arguments":{"n":1}}}"#;
        let Ok(Body { messages, .. }) = parse_body(body.as_bytes()) else {
            panic!()
        };
        let call = messages[0].call().unwrap().unwrap();
        assert_eq!(
            (call.name.as_str(), call.arguments),
            ("t", Some(json!({"n": 1})))
        );
        assert_eq!(messages[0].id_value(), json!("a"));
    }

    /// What `message`'s `call()` says of a request with these params, or how the body is
    /// refused.
    fn call_of(method: &str, params: &str) -> Result<ToolCall, String> {
        let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{params}}}"#);
        let Body { messages, .. } =
            parse_body(body.as_bytes()).map_err(|e| format!("{} {}", e.code, e.message))?;
        messages[0].call().unwrap()
    }

    #[test]
    fn a_tool_call_whose_arguments_are_not_an_object_is_refused_naming_what_they_are() {
        for (args, what) in [
            (r#""not an object""#, "a string"),
            ("[1]", "an array"),
            ("7", "a number"),
            ("true", "a boolean"),
        ] {
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{args}}}}}"#
            );
            let Ok(Body { messages, .. }) = parse_body(body.as_bytes()) else {
                panic!("{body}")
            };
            let e = messages[0].call().unwrap().unwrap_err();
            assert_eq!(
                e,
                format!("tools/call arguments must be an object, not {what}")
            );
        }
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"}}"#;
        let Ok(Body { messages, .. }) = parse_body(body.as_bytes()) else {
            panic!()
        };
        assert!(
            messages[0].call().unwrap().is_ok(),
            "absent arguments are none"
        );
    }

    #[test]
    fn a_body_with_a_key_twice_is_refused_at_any_depth_naming_the_key() {
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
            ("tools/call", r#"{"name":"a","name":"b"}"#, "name"),
        ] {
            let e = call_of(method, params).unwrap_err();
            assert!(
                e.starts_with("-32600") && e.contains(&format!("the key {key:?} appears twice")),
                "{params}: {e}"
            );
        }
    }

    #[test]
    fn arguments_read_as_serde_json_reads_them() {
        let args = r#"{"big":9007199254740992,"neg":-9007199254740992,"f":1.5e300,"s":"\u00e9\n","n":null,"t":true,"l":[[],{},[1,{"a":{"a":"a"}}]],"same at two depths":{"same at two depths":0}}"#;
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
