//! Stage one: admitting a request. Its origin and caller are checked before its body is read,
//! its body is read within the size limit, and it must be one JSON-RPC message or batch whose
//! MCP headers agree with it. Whatever fails is answered here with a JSON-RPC error naming the
//! problem; nothing is forwarded.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;
use tollgate_api::Identity;

use super::{
    MCP_METHOD, MCP_NAME, MCP_PROTOCOL_VERSION, MCP_SESSION_ID, Proxy, Resp, header_str,
    json_response,
};
use crate::http::deadline::Progress;
use crate::http::media::field_once;
use crate::http::server::RequestBody;
use crate::mcp::jsonrpc::{self, Body as RpcBody, Message};
use crate::policy::Enforced;
use crate::policy::identity;

/// A request body read as JSON-RPC: its messages, or the refusal. The body must be UTF-8
/// whatever its `Content-Type` says, strictly one reading of JSON-RPC 2.0, and agree with the
/// `Mcp-Method` and `Mcp-Name` headers.
#[allow(clippy::result_large_err)]
pub(super) fn messages<'b>(headers: &HeaderMap, bytes: &'b Bytes) -> Result<RpcBody<'b>, Resp> {
    if let Some(why) = crate::http::media::not_utf8(headers) {
        let message = format!("Parse error: {why}");
        let body = jsonrpc::error_response(Value::Null, jsonrpc::PARSE_ERROR, &message, None);
        return Err(json_response(StatusCode::UNSUPPORTED_MEDIA_TYPE, &body));
    }
    let rpc = jsonrpc::parse_body(bytes).map_err(|e| {
        let body = jsonrpc::error_response(Value::Null, e.code, &e.message, None);
        json_response(StatusCode::BAD_REQUEST, &body)
    })?;
    if let Err(msg) = check_mcp_headers(headers, &rpc.messages, rpc.batch) {
        let id = rpc
            .messages
            .first()
            .map(Message::id_value)
            .unwrap_or(Value::Null);
        let body = jsonrpc::error_response(id, jsonrpc::INVALID_REQUEST, &msg, None);
        return Err(json_response(StatusCode::BAD_REQUEST, &body));
    }
    Ok(rpc)
}

impl Proxy {
    /// The request's origin and caller, checked before its body is read: the policy it is
    /// decided by and who is calling, or the refusal.
    #[allow(clippy::result_large_err)]
    pub(super) fn admit(
        &self,
        req: &Request<RequestBody>,
    ) -> Result<(Arc<Enforced>, Arc<Identity>), Resp> {
        if !self.cfg.allowed_origins.is_empty()
            && let Some(origin) = req.headers().get(header::ORIGIN)
            && (unreadable_field(req.headers(), &header::ORIGIN)
                || !self
                    .cfg
                    .allowed_origins
                    .iter()
                    .any(|o| o.as_bytes() == origin.as_bytes() || o == "*"))
        {
            let origin = String::from_utf8_lossy(origin.as_bytes());
            let body = jsonrpc::error_response(
                Value::Null,
                jsonrpc::INVALID_REQUEST,
                &format!("Origin {origin} is not allowed; add it to --allowed-origins"),
                None,
            );
            return Err(json_response(StatusCode::FORBIDDEN, &body));
        }
        // A credential the proxy cannot read must not pass as no credential: the server may
        // read it.
        if unreadable_field(req.headers(), &header::AUTHORIZATION) {
            return Err(unauthorized(
                "the Authorization header must be one field of visible ASCII",
            ));
        }
        // One read of the policy state per request: who is calling and what is allowed come
        // from the same revision.
        let state = self.policy.current();
        let verifiers = [state.cluster_keys.as_deref(), self.cfg.verifier.as_ref()];
        let who = identity::identify(&verifiers, header_str(req.headers(), header::AUTHORIZATION))
            .map_err(|e| unauthorized(&e))?;
        Ok((state.set.clone(), Arc::new(who)))
    }

    /// A request's whole body, within `--max-body-bytes`, or the refusal.
    #[allow(clippy::result_large_err)]
    pub(super) async fn read_body(
        &self,
        headers: &HeaderMap,
        body: RequestBody,
    ) -> Result<Bytes, Resp> {
        let declared = crate::http::head::content_length(headers);
        if declared.is_some_and(|n| n.is_ok_and(|n| n > self.cfg.max_body as u64)) {
            return Err(self.too_large());
        }
        let collected = match body.into_bytes() {
            // Read with its head (an MCP call, nearly always): its declared length was checked.
            Ok(bytes) => Ok(bytes),
            Err(body) => {
                let body = Progress::new(body, self.cfg.timeouts.body, "the request body");
                Limited::new(body, self.cfg.max_body)
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
            }
        };
        match collected {
            Ok(bytes) => Ok(bytes),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                Err(self.too_large())
            }
            Err(e) => {
                let body = jsonrpc::error_response(
                    Value::Null,
                    jsonrpc::PARSE_ERROR,
                    &format!("Could not read the request body: {e}"),
                    None,
                );
                Err(json_response(StatusCode::BAD_REQUEST, &body))
            }
        }
    }

    pub(super) fn too_large(&self) -> Resp {
        let body = jsonrpc::error_response(
            Value::Null,
            jsonrpc::TOO_LARGE,
            &format!(
                "Request body is larger than the {} byte limit (--max-body-bytes)",
                self.cfg.max_body
            ),
            None,
        );
        json_response(StatusCode::PAYLOAD_TOO_LARGE, &body)
    }
}

fn unauthorized(reason: &str) -> Resp {
    let body = jsonrpc::error_response(
        Value::Null,
        jsonrpc::INVALID_REQUEST,
        &format!("Unauthorized: {reason}"),
        None,
    );
    let mut r = json_response(StatusCode::UNAUTHORIZED, &body);
    let challenge = format!(
        "Bearer error=\"invalid_token\", error_description=\"{}\"",
        reason.replace('"', "'")
    );
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// Whether a field is present but cannot be read one way (see [`field_once`]).
fn unreadable_field(headers: &HeaderMap, name: &HeaderName) -> bool {
    field_once(headers, name).is_err()
}

/// Stateless MCP (2026-07-28) mirrors the method and name in headers; a request whose headers
/// say something its body does not is refused, so routing and policy can never disagree.
fn check_mcp_headers(
    headers: &HeaderMap,
    messages: &[Message<'_>],
    batch: bool,
) -> Result<(), String> {
    for name in [
        &MCP_SESSION_ID,
        &MCP_PROTOCOL_VERSION,
        &MCP_METHOD,
        &MCP_NAME,
    ] {
        if unreadable_field(headers, name) {
            return Err(format!(
                "The {name} header must be one field of visible ASCII: the server could read it otherwise than the proxy"
            ));
        }
    }
    let method = header_str(headers, MCP_METHOD);
    let name = header_str(headers, MCP_NAME);
    if method.is_none() && name.is_none() {
        return Ok(());
    }
    if batch {
        return Err("Mcp-Method and Mcp-Name headers cannot describe a batch".into());
    }
    let m = &messages[0];
    if let Some(method) = method
        && m.method.as_deref() != Some(method)
    {
        return Err(format!(
            "The Mcp-Method header says {method:?} but the body's method is {:?}",
            m.method.as_deref().unwrap_or("")
        ));
    }
    if let Some(name) = name {
        let body_name = m.params.and_then(|p| {
            serde_json::from_str::<Value>(p.get()).ok().and_then(|v| {
                v.get("name")
                    .or_else(|| v.get("uri"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
        });
        if body_name.as_deref() != Some(name) {
            return Err(format!(
                "The Mcp-Name header says {name:?} but the body names {:?}",
                body_name.unwrap_or_default()
            ));
        }
    }
    Ok(())
}
