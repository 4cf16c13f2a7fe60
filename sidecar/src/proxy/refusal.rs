//! Every answer the proxy gives in the server's place, in one type and rendered in one place:
//! a whole request refused (with its HTTP status), or one message of a request answered here
//! (a denial, an id already in flight), which travels in a 200 or among the server's answers.
//!
//! Each is a JSON-RPC error the agent's SDK can read and a person can act on: it names what was
//! wrong and, where there is one, the way out.

use http::StatusCode;
use http::header::{self, HeaderValue};
use serde_json::{Value, json};
use tollgate_api::{Denial, DenyAs};

use super::{Resp, json_response};
use crate::approvals::{Approval, Phase};
use crate::mcp::jsonrpc;

/// Why the proxy answers instead of the server.
#[derive(Debug)]
pub enum Refusal {
    // A whole request.
    /// The HTTP server would not read the request one way (its reason).
    BadHttp(String),
    /// A browser's `Origin` not in `--allowed-origins`.
    Origin(String),
    /// A credential that is unreadable or invalid.
    Unauthorized(String),
    /// A body over `--max-body-bytes` (the limit).
    TooLarge(usize),
    /// A body that could not be read to its end.
    UnreadableBody(String),
    /// A body whose `Content-Type` names a charset other than UTF-8.
    NotUtf8(String),
    /// A body that is not exactly one JSON-RPC message or batch.
    NotJsonRpc { code: i64, message: String },
    /// MCP headers that disagree with the body (or cannot be read one way, or are missing).
    Headers { id: Value, message: String },
    /// An `MCP-Protocol-Version` Tollgate does not know (rare: boxed, so that every other
    /// refusal, and every decision holding one, stays small).
    Version(Box<UnknownVersion>),
    /// A message its era does not define, so Tollgate cannot decide it: refused with the
    /// status MCP's servers give a method they do not have.
    Unplaceable {
        id: Value,
        message: String,
        status: StatusCode,
    },
    /// The server could not be reached, or its answer broke off.
    Unreachable { upstream: String, error: String },
    /// An answer the proxy must read (it may hold a tool list) and cannot.
    Withheld(String),
    /// An answer, relayed on a stream already begun, that is not JSON-RPC.
    NotJsonRpcAnswer(StatusCode),

    // One message.
    /// Denied by policy (or by the proxy's own state: the audit log, approvals off).
    Denied {
        id: Value,
        denial: Box<Denial>,
        /// Whether the request speaks 2026-07-28, whose results name their type.
        modern: bool,
    },
    /// A request whose id is in flight in its session already.
    InFlight(Value),
    /// A call whose parameters cannot be read.
    InvalidParams { id: Value, message: String },
    /// A call held on an approval nobody decided in its hold time.
    Pending { id: Value, approval: Box<Approval> },
    /// A message of the server's that may hold a tool list the proxy cannot read one way.
    Unfilterable { id: Value, why: String },
}

/// A request naming a protocol version Tollgate does not know.
#[derive(Debug)]
pub struct UnknownVersion {
    pub id: Value,
    pub requested: String,
    /// The versions the proxy and its server both speak.
    pub supported: Vec<String>,
}

impl Refusal {
    pub fn denied(id: Value, denial: Denial, modern: bool) -> Self {
        Refusal::Denied {
            id,
            denial: Box::new(denial),
            modern,
        }
    }

    /// The HTTP status a whole request refused this way gets; a message's own answer travels
    /// in a 200.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadHttp(_) | Refusal::UnreadableBody(_) => StatusCode::BAD_REQUEST,
            Refusal::NotJsonRpc { .. } | Refusal::Headers { .. } | Refusal::Version(_) => {
                StatusCode::BAD_REQUEST
            }
            Refusal::Unplaceable { status, .. } => *status,
            Refusal::Origin(_) => StatusCode::FORBIDDEN,
            Refusal::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Refusal::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::NotUtf8(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::Unreachable { .. } | Refusal::Withheld(_) => StatusCode::BAD_GATEWAY,
            Refusal::NotJsonRpcAnswer(_)
            | Refusal::Denied { .. }
            | Refusal::InFlight(_)
            | Refusal::InvalidParams { .. }
            | Refusal::Pending { .. }
            | Refusal::Unfilterable { .. } => StatusCode::OK,
        }
    }

    /// The JSON-RPC message the client gets.
    pub fn message(&self) -> Value {
        let error = |id: &Value, code, message: &str| {
            jsonrpc::error_response(id.clone(), code, message, None)
        };
        let null = &Value::Null;
        match self {
            Refusal::BadHttp(reason) => error(
                null,
                jsonrpc::INVALID_REQUEST,
                &format!("Bad request: {reason}"),
            ),
            Refusal::Origin(origin) => error(
                null,
                jsonrpc::INVALID_REQUEST,
                &format!("Origin {origin} is not allowed; add it to --allowed-origins"),
            ),
            Refusal::Unauthorized(reason) => error(
                null,
                jsonrpc::INVALID_REQUEST,
                &format!("Unauthorized: {reason}"),
            ),
            Refusal::TooLarge(limit) => error(
                null,
                jsonrpc::TOO_LARGE,
                &format!("Request body is larger than the {limit} byte limit (--max-body-bytes)"),
            ),
            Refusal::UnreadableBody(e) => error(
                null,
                jsonrpc::PARSE_ERROR,
                &format!("Could not read the request body: {e}"),
            ),
            Refusal::NotUtf8(why) => {
                error(null, jsonrpc::PARSE_ERROR, &format!("Parse error: {why}"))
            }
            Refusal::NotJsonRpc { code, message } => error(null, *code, message),
            Refusal::Headers { id, message } => error(id, jsonrpc::HEADER_MISMATCH, message),
            Refusal::Version(v) => jsonrpc::error_response(
                v.id.clone(),
                jsonrpc::UNSUPPORTED_PROTOCOL_VERSION,
                &crate::mcp::era::unknown_version(&v.requested),
                Some(json!({
                    "requested": v.requested,
                    "supported": v.supported,
                })),
            ),
            Refusal::Unplaceable { id, message, .. } => {
                error(id, jsonrpc::METHOD_NOT_FOUND, message)
            }
            Refusal::Unreachable { upstream, error: e } => error(
                null,
                jsonrpc::INTERNAL_ERROR,
                &format!("The MCP server at {upstream} could not be reached: {e}"),
            ),
            Refusal::Withheld(why) => error(
                null,
                jsonrpc::INTERNAL_ERROR,
                &format!("Tollgate cannot read the MCP server's answer, so it is withheld: {why}"),
            ),
            Refusal::NotJsonRpcAnswer(status) => error(
                null,
                jsonrpc::INTERNAL_ERROR,
                &format!("The MCP server answered HTTP {status} with a body that is not JSON-RPC"),
            ),
            Refusal::Denied { id, denial, modern } => denial_message(id.clone(), denial, *modern),
            Refusal::InFlight(id) => error(
                id,
                jsonrpc::INVALID_REQUEST,
                "Invalid Request: a request with this id is already in flight in this session; give each request its own id",
            ),
            Refusal::InvalidParams { id, message } => error(id, jsonrpc::INVALID_PARAMS, message),
            Refusal::Pending { id, approval } => pending_message(id.clone(), approval),
            Refusal::Unfilterable { id, why } => error(
                id,
                jsonrpc::INTERNAL_ERROR,
                &format!(
                    "Tollgate cannot filter the MCP server's answer, so it is withheld: {why}"
                ),
            ),
        }
    }

    /// The whole HTTP answer: [`status`](Self::status), the message as JSON, and for a bad
    /// credential the challenge RFC 6750 asks for.
    pub fn into_response(self) -> Resp {
        let mut r = json_response(self.status(), &self.message());
        if let Refusal::Unauthorized(reason) = &self {
            let challenge = format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                reason.replace('"', "'")
            );
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        r
    }
}

impl From<Refusal> for Resp {
    fn from(r: Refusal) -> Resp {
        r.into_response()
    }
}

/// The answer to a denied call: a JSON-RPC error, or an `isError` tool result where the policy
/// says `denyAs: toolResult`.
fn denial_message(id: Value, d: &Denial, modern: bool) -> Value {
    let data = json!({ "reason": d.reason, "rule": d.rule, "policy": d.policy });
    match d.deny_as {
        DenyAs::Error => jsonrpc::error_response(
            id,
            jsonrpc::POLICY_DENIED,
            &format!("Denied by policy: {}", d.reason),
            Some(data),
        ),
        DenyAs::ToolResult => {
            let mut m = json!({
                "jsonrpc": "2.0",
                "id": id,
                "result": {
                    "content": [ { "type": "text", "text": format!("Denied by policy: {}", d.reason) } ],
                    "isError": true,
                    "_meta": { "tollgate.dev/denial": data },
                }
            });
            if modern {
                // 2026-07-28 results name their type.
                m["result"]["resultType"] = json!("complete");
            }
            m
        }
    }
}

/// The answer to a call still waiting: Intercept's `-32003`, the approval's name and expiry in
/// `data`.
fn pending_message(id: Value, a: &Approval) -> Value {
    let state = match a.phase {
        Phase::Expired => "expired before anyone approved it; retry the call to ask again".into(),
        Phase::Used => "was used by an identical call; retry the call to ask again".into(),
        _ => format!(
            "is pending until {}. Retry the same call, with the same arguments, once it is approved",
            a.expires
        ),
    };
    jsonrpc::error_response(
        id,
        jsonrpc::APPROVAL_PENDING,
        &format!(
            "Tool {:?} needs a person's approval: approval {} {state}",
            a.tool, a.name
        ),
        Some(json!({
            "approval": a.name,
            "phase": a.phase,
            "expires": a.expires,
            "policy": a.policy,
            "rule": a.rule,
        })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn answer(r: Refusal) -> (StatusCode, Option<String>, Value) {
        let resp = r.into_response();
        let status = resp.status();
        let challenge = resp
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap().to_string());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, challenge, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn a_whole_request_refusal_is_its_status_and_a_json_rpc_error_naming_the_way_out() {
        let (status, _, body) = answer(Refusal::Origin("https://evil.example".into())).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["error"]["code"], jsonrpc::INVALID_REQUEST);
        assert_eq!(
            body["error"]["message"],
            "Origin https://evil.example is not allowed; add it to --allowed-origins"
        );
        assert_eq!(body["id"], Value::Null);

        let (status, _, body) = answer(Refusal::TooLarge(4096)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["error"]["code"], jsonrpc::TOO_LARGE);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--max-body-bytes")
        );

        let (status, _, body) = answer(Refusal::Headers {
            id: json!(7),
            message: "The Mcp-Name header says \"a\" but the body names \"b\"".into(),
        })
        .await;
        assert_eq!((status, &body["id"]), (StatusCode::BAD_REQUEST, &json!(7)));
    }

    #[tokio::test]
    async fn an_unauthorized_caller_gets_a_bearer_challenge_without_breaking_its_quotes() {
        let (status, challenge, body) =
            answer(Refusal::Unauthorized("token \"x\" expired".into())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            challenge.as_deref(),
            Some("Bearer error=\"invalid_token\", error_description=\"token 'x' expired\"")
        );
        assert_eq!(
            body["error"]["message"],
            "Unauthorized: token \"x\" expired"
        );
    }

    #[test]
    fn a_denial_is_an_error_or_a_tool_result_as_the_policy_says_and_names_its_rule() {
        let denial = |deny_as| Denial {
            reason: "Charges are capped".into(),
            policy: "mcppolicy/shop/pay".into(),
            rule: "cap".into(),
            deny_as,
        };
        let m = Refusal::denied(json!(1), denial(DenyAs::Error), false).message();
        assert_eq!(m["error"]["code"], jsonrpc::POLICY_DENIED);
        assert_eq!(
            m["error"]["message"],
            "Denied by policy: Charges are capped"
        );
        assert_eq!(m["error"]["data"]["rule"], "cap");

        let m = Refusal::denied(json!(1), denial(DenyAs::ToolResult), true).message();
        assert_eq!(m["result"]["isError"], true);
        assert_eq!(m["result"]["resultType"], "complete");
        assert_eq!(
            m["result"]["_meta"]["tollgate.dev/denial"]["policy"],
            "mcppolicy/shop/pay"
        );
        let m = Refusal::denied(json!(1), denial(DenyAs::ToolResult), false).message();
        assert!(m["result"].get("resultType").is_none());
    }

    #[test]
    fn a_message_refusal_travels_in_a_200_with_its_request_id() {
        for r in [
            Refusal::InFlight(json!("a")),
            Refusal::InvalidParams {
                id: json!("a"),
                message: "arguments must be an object".into(),
            },
            Refusal::Unfilterable {
                id: json!("a"),
                why: "a duplicate key".into(),
            },
        ] {
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.message()["id"], "a", "{r:?}");
        }
    }
}
