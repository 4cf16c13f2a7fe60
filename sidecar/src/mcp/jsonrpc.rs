//! Reading the JSON-RPC messages a client sends, and writing the ones Tollgate answers with.
//!
//! ```text
//! body bytes ── strict::read_outline ── parse_body ──> Body { [Message { id, method, params }], batch }
//!                                                  └─> Err(RpcError): not one JSON-RPC message or batch
//! ```
//!
//! The body is read once: the pass that checks it is JSON every reader reads one way also
//! lists its messages' members (and their params' members), from which each message is
//! built without reading the text again. Everything borrows from the body: the proxy forwards
//! the original bytes when it changes nothing, and only a `tools/call`'s arguments are
//! materialised as a `Value`.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::mcp::strict::{self, Member};

/// What [`parse_body`] reads of each member it is shown (`strict::read_outline`'s tags).
mod tag {
    pub const OTHER: u8 = 0;
    pub const JSONRPC: u8 = 1;
    pub const ID: u8 = 2;
    pub const METHOD: u8 = 3;
    pub const PARAMS: u8 = 4;
    pub const RESULT: u8 = 5;
    pub const ERROR: u8 = 6;
    pub const NAME: u8 = 7;
    pub const ARGUMENTS: u8 = 8;

    /// A key as it decodes, to its tag: one table for both depths (a message's `name` is
    /// another member, never read; params' `id` neither).
    pub fn of(key: &str) -> u8 {
        match key {
            "jsonrpc" => JSONRPC,
            "id" => ID,
            "method" => METHOD,
            "params" => PARAMS,
            "result" => RESULT,
            "error" => ERROR,
            "name" => NAME,
            "arguments" => ARGUMENTS,
            _ => OTHER,
        }
    }
}

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

/// What kind of JSON value a (strictly read) text is, in words.
fn kind_of_text(text: &str) -> &'static str {
    match text.as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// The text of a (strictly read) JSON string, decoded; `None` when `raw` is not a string.
pub fn string_of(raw: &str) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
}

/// One client message, borrowing from the body.
#[derive(Debug)]
pub struct Message<'a> {
    /// The message's own JSON text.
    pub raw: &'a str,
    /// The `id`'s JSON text (absent for notifications and for responses without one).
    pub id: Option<&'a str>,
    pub method: Option<Cow<'a, str>>,
    /// The `params`' JSON text.
    pub params: Option<&'a str>,
    /// Whether the message is a response (`result` or `error`) the client sends to the server.
    pub is_response: bool,
    /// The JSON texts of `params.name` and `params.arguments`, where `params` is an object
    /// that has them: read in the same pass, for a `tools/call`.
    params_name: Option<&'a str>,
    params_arguments: Option<&'a str>,
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
            "tools/call" => Some(self.tool_call()),
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

    /// A `tools/call`'s name and arguments, from what the body's one reading found.
    fn tool_call(&self) -> Result<ToolCall, String> {
        let Some(params) = self.params else {
            return Err("tools/call needs params with a name".into());
        };
        if !params.starts_with('{') {
            return Err(format!(
                "tools/call params must be an object, not {}",
                kind_of_text(params)
            ));
        }
        let name = match self.params_name.map(string_of) {
            Some(Some(name)) => name.into_owned(),
            Some(None) => {
                return Err("tools/call params are not valid: name must be a string".into());
            }
            None => return Err("tools/call params are not valid: they need a name".into()),
        };
        let arguments = match self.params_arguments {
            None | Some("null") => None,
            Some(raw) if raw.starts_with('{') => Some(
                serde_json::from_str::<Value>(raw)
                    .map_err(|e| format!("tools/call arguments are not valid: {e}"))?,
            ),
            // MCP's CallToolRequest: arguments are an object, or absent. A server refuses
            // anything else, with an error a tool could also raise after running: such a
            // call is refused here, never counted.
            Some(other) => {
                return Err(format!(
                    "tools/call arguments must be an object, not {}",
                    kind_of_text(other)
                ));
            }
        };
        Ok(ToolCall { name, arguments })
    }

    fn named_params(&self, key: &str) -> Result<(String, Value), String> {
        let method = self.method.as_deref().unwrap_or("");
        let params: Value = match self.params.map(serde_json::from_str) {
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

    /// The id of the request a `notifications/cancelled` cancels, as JSON text.
    pub fn cancelled_request(&self) -> Option<&'a str> {
        #[derive(Deserialize)]
        struct Cancelled<'a> {
            #[serde(rename = "requestId", borrow)]
            request_id: &'a serde_json::value::RawValue,
        }
        if self.method.as_deref() != Some("notifications/cancelled") {
            return None;
        }
        serde_json::from_str::<Cancelled<'a>>(self.params?)
            .ok()
            .map(|c| c.request_id.get())
    }

    /// The raw id as JSON (`null` when absent), for building a response.
    pub fn id_value(&self) -> Value {
        id_value(self.id)
    }
}

/// An id's JSON text as JSON (`null` when absent), for building a response.
pub fn id_value(id: Option<&str>) -> Value {
    id.and_then(|id| serde_json::from_str(id).ok())
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
    let batch = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    // A batch's params are one level deeper than a single message's.
    let depth = if batch { 3 } else { 2 };
    let (text, members) = strict::read_outline(bytes, depth, tag::of).map_err(|e| RpcError {
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
    let mut messages = Vec::with_capacity(if batch { members.len() / 4 } else { 1 });
    if batch {
        // Items at depth 1, their members at 2, their params' members at 3; each item's
        // members are listed before it.
        let mut from = 0;
        for (i, item) in members.iter().enumerate() {
            if item.depth == 1 {
                messages.push(message(text, item.value(text), &members[from..i], 2)?);
                from = i + 1;
            }
        }
        if messages.is_empty() {
            return Err(RpcError::invalid("Invalid Request: an empty batch"));
        }
    } else {
        messages.push(message(text, text, &members, 1)?);
    }
    Ok(Body { messages, batch })
}

/// One message of strictly read JSON (`text`, in `body`), from its members at `depth` (and
/// its params' members one deeper): a request, a notification or a response, and nothing that
/// could be taken for another.
fn message<'a>(
    body: &'a str,
    text: &'a str,
    members: &[Member],
    depth: u8,
) -> Result<Message<'a>, RpcError> {
    if !text.starts_with('{') {
        return Err(RpcError::invalid(format!(
            "Invalid Request: a JSON-RPC message must be an object with string jsonrpc and method, not {}",
            kind_of_text(text)
        )));
    }
    let (mut jsonrpc, mut id, mut method, mut params) = (None, None, None, None);
    let (mut result, mut error) = (None, None);
    let (mut name, mut arguments) = (None, None);
    let (mut inner_name, mut inner_arguments) = (None, None);
    for m in members {
        let value = m.value(body);
        if m.depth > depth {
            // A member of one of this message's members: params' name and arguments are read
            // once params ends; any other member's are forgotten when it ends.
            match m.tag {
                tag::NAME => inner_name = Some(value),
                tag::ARGUMENTS => inner_arguments = Some(value),
                _ => {}
            }
            continue;
        }
        // As serde reads an optional member: `null` is absent.
        let value = (value != "null").then_some(value);
        match m.tag {
            tag::JSONRPC => jsonrpc = value,
            tag::ID => id = value,
            tag::METHOD => method = value,
            tag::PARAMS => {
                params = value;
                (name, arguments) = (inner_name, inner_arguments);
            }
            tag::RESULT => result = value,
            tag::ERROR => error = value,
            _ => {}
        }
        (inner_name, inner_arguments) = (None, None);
    }
    if jsonrpc != Some("\"2.0\"") {
        return Err(RpcError::invalid(
            "Invalid Request: every message needs \"jsonrpc\": \"2.0\"",
        ));
    }
    let method = match method.map(string_of) {
        None => None,
        Some(Some(method)) => Some(method),
        Some(None) => {
            return Err(RpcError::invalid(
                "Invalid Request: a JSON-RPC message must be an object with string jsonrpc and method",
            ));
        }
    };
    let is_response = result.is_some() || error.is_some();
    match (&method, is_response) {
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
    if let Some(id) = id
        && !matches!(id.as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'))
    {
        return Err(RpcError::invalid(
            "Invalid Request: an id must be a string or a number",
        ));
    }
    Ok(Message {
        raw: text,
        id,
        method,
        params,
        is_response,
        params_name: name,
        params_arguments: arguments,
    })
}

/// Panics unless `body` is what serde_json reads of the same text (`value`): each message's
/// members, and a `tools/call`'s name and arguments. The oracle of the unit tests and of the
/// `jsonrpc` fuzz target for the one-pass reading.
#[doc(hidden)]
pub fn assert_read_as_serde_reads(body: &Body<'_>, value: &Value) {
    let items: Vec<&Value> = match body.batch {
        true => value
            .as_array()
            .expect("a batch is an array")
            .iter()
            .collect(),
        false => vec![value],
    };
    assert_eq!(items.len(), body.messages.len());
    let json = |text: &str| serde_json::from_str::<Value>(text).expect("read strictly");
    for (m, v) in body.messages.iter().zip(items) {
        let o = v.as_object().expect("a message is an object");
        let member = |k: &str| o.get(k).filter(|v| !v.is_null());
        assert_eq!(&json(m.raw), v);
        assert_eq!(
            m.method.as_deref(),
            member("method").and_then(Value::as_str)
        );
        assert_eq!(m.id.map(json).as_ref(), member("id"));
        assert_eq!(m.params.map(json).as_ref(), member("params"));
        assert_eq!(
            m.is_response,
            member("result").is_some() || member("error").is_some()
        );
        if let Some(Ok(call)) = m
            .call()
            .filter(|_| m.method.as_deref() == Some("tools/call"))
        {
            let params = member("params").expect("a call has params");
            assert_eq!(
                Some(call.name.as_str()),
                params.get("name").and_then(Value::as_str)
            );
            assert_eq!(
                call.arguments.as_ref(),
                params.get("arguments").filter(|a| !a.is_null())
            );
        }
    }
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
    fn a_tool_call_is_read_from_its_params_object_only_whatever_the_shape_around_it() {
        // Params that are not an object are refused, never read by position.
        assert_eq!(
            call_of("tools/call", r#"["t",{}]"#).unwrap_err(),
            "tools/call params must be an object, not an array"
        );
        assert!(call_of("tools/call", r#"{"arguments":{}}"#).is_err());
        assert!(call_of("tools/call", r#"{"name":7}"#).is_err());
        // A name spelled with escapes, members in any order, other members around it.
        let call = call_of(
            "tools/call",
            r#"{"_meta":{"name":"not this","arguments":1},"arguments":{"k":[1]},"n\u0061me":"t\u00e9"}"#,
        )
        .unwrap();
        assert_eq!(
            (call.name.as_str(), call.arguments),
            ("té", Some(json!({"k": [1]})))
        );
        // A result's members are not a call's.
        let body = r#"[{"jsonrpc":"2.0","id":1,"result":{"name":"x"}},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"y","arguments":{"a":1}}},{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"arguments":{}}}]"#;
        let Body { messages, batch } = parse_body(body.as_bytes()).unwrap();
        assert!(batch && messages[0].is_response);
        let call = messages[1].call().unwrap().unwrap();
        assert_eq!(
            (call.name.as_str(), call.arguments),
            ("y", Some(json!({"a": 1})))
        );
        assert!(messages[2].call().unwrap().is_err(), "no name of its own");
        assert_eq!(
            messages[1].raw,
            &body[body.find(r#"{"jsonrpc":"2.0","id":2"#).unwrap()
                ..body.find(r#",{"jsonrpc":"2.0","id":3"#).unwrap()]
        );
    }

    #[test]
    fn messages_read_in_one_pass_are_what_serde_json_reads_of_any_message_shape() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as usize % n
        };
        let values = [
            "1",
            "-0",
            "1.5e3",
            "\"x\"",
            "\"\\u0074ools/call\"",
            "null",
            "true",
            "[]",
            "{}",
            "[1,{\"name\":\"in an array\"}]",
            "{\"name\":\"n\",\"arguments\":{\"a\":[1]}}",
        ];
        let keys = [
            "\"jsonrpc\"",
            "\"id\"",
            "\"method\"",
            "\"params\"",
            "\"result\"",
            "\"error\"",
            "\"name\"",
            "\"arguments\"",
            "\"_meta\"",
            "\"m\\u0065thod\"",
            "\"other\"",
            "\"p\\u0061rams\"",
            "\"n\\u0061me\"",
            "\"\\u0069d\"",
            "\"r\\u0065sult\"",
            "\"\\u0061rguments\"",
        ];
        // Whitespace wherever JSON allows it: the reading slices values without it.
        let spaces = ["", " ", "\n\t ", "\r\n"];
        let mut read = 0;
        for _ in 0..20_000 {
            let message = |next: &mut dyn FnMut(usize) -> usize| {
                let mut members = vec![r#""jsonrpc":"2.0""#.to_string()];
                match next(3) {
                    0 => members.push(r#""method":"tools/call""#.into()),
                    1 => members.push(format!(r#""method":{}"#, values[next(values.len())])),
                    _ => {}
                }
                for _ in 0..next(4) {
                    let key = keys[next(keys.len())];
                    let value = match next(3) {
                        0 => {
                            let inner: Vec<String> = (0..next(4))
                                .map(|_| {
                                    let s = spaces[next(spaces.len())];
                                    format!(
                                        "{s}{}{s}:{s}{}{s}",
                                        keys[next(keys.len())],
                                        values[next(values.len())]
                                    )
                                })
                                .collect();
                            format!("{{{}}}", inner.join(","))
                        }
                        _ => values[next(values.len())].to_string(),
                    };
                    let s = spaces[next(spaces.len())];
                    members.push(format!("{s}{key}{s}:{s}{value}{s}"));
                }
                let at = next(members.len());
                members.rotate_left(at);
                format!("{{{}}}", members.join(","))
            };
            let body = match next(4) {
                0 => format!(
                    "[{}]",
                    (0..1 + next(3))
                        .map(|_| message(&mut next))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                _ => message(&mut next),
            };
            if let Ok(parsed) = parse_body(body.as_bytes()) {
                read += 1;
                assert_read_as_serde_reads(&parsed, &serde_json::from_str(&body).unwrap());
            }
        }
        assert!(read > 2_000, "the generator reaches messages ({read})");
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
