//! Stage one: admitting a request. Its origin and caller are checked before its body is read,
//! its body is read within the size limit, and it must be one JSON-RPC message or batch whose
//! MCP headers agree with it. Whatever fails is a [`Refusal`] naming the problem; nothing is
//! forwarded.

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http::header::{self, HeaderMap, HeaderName};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;
use tollgate_api::Identity;

use super::refusal::Refusal;
use super::{MCP_METHOD, MCP_NAME, MCP_PROTOCOL_VERSION, MCP_SESSION_ID, Proxy, header_str};
use crate::http::deadline::Progress;
use crate::http::media::field_once;
use crate::http::server::RequestBody;
use crate::mcp::jsonrpc::{self, Body as RpcBody, Message};
use crate::policy::Enforced;
use crate::policy::identity;

/// A request body read as JSON-RPC: its messages, or the refusal. The body must be UTF-8
/// whatever its `Content-Type` says, strictly one reading of JSON-RPC 2.0, and agree with the
/// `Mcp-Method` and `Mcp-Name` headers.
pub(super) fn messages<'b>(headers: &HeaderMap, bytes: &'b Bytes) -> Result<RpcBody<'b>, Refusal> {
    if let Some(why) = crate::http::media::not_utf8(headers) {
        return Err(Refusal::NotUtf8(why.to_string()));
    }
    let rpc = jsonrpc::parse_body(bytes).map_err(|e| Refusal::NotJsonRpc {
        code: e.code,
        message: e.message,
    })?;
    if let Err(message) = check_mcp_headers(headers, &rpc.messages, rpc.batch) {
        let id = rpc
            .messages
            .first()
            .map(Message::id_value)
            .unwrap_or(Value::Null);
        return Err(Refusal::Headers { id, message });
    }
    Ok(rpc)
}

impl Proxy {
    /// The request's origin and caller, checked before its body is read: the policy it is
    /// decided by and who is calling, or the refusal.
    pub(super) fn admit(
        &self,
        req: &Request<RequestBody>,
    ) -> Result<(Arc<Enforced>, Arc<Identity>), Refusal> {
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
            return Err(Refusal::Origin(origin.into_owned()));
        }
        // A credential the proxy cannot read must not pass as no credential: the server may
        // read it.
        if unreadable_field(req.headers(), &header::AUTHORIZATION) {
            return Err(Refusal::Unauthorized(
                "the Authorization header must be one field of visible ASCII".into(),
            ));
        }
        // One read of the policy state per request: who is calling and what is allowed come
        // from the same revision.
        let state = self.policy.current();
        let verifiers = [state.cluster_keys.as_deref(), self.cfg.verifier.as_ref()];
        let who = identity::identify(&verifiers, header_str(req.headers(), header::AUTHORIZATION))
            .map_err(Refusal::Unauthorized)?;
        Ok((state.set.clone(), Arc::new(who)))
    }

    /// A request's whole body, within `--max-body-bytes`, or the refusal.
    pub(super) async fn read_body(
        &self,
        headers: &HeaderMap,
        body: RequestBody,
    ) -> Result<Bytes, Refusal> {
        let declared = crate::http::head::content_length(headers);
        if declared.is_some_and(|n| n.is_ok_and(|n| n > self.cfg.max_body as u64)) {
            return Err(Refusal::TooLarge(self.cfg.max_body));
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
                Err(Refusal::TooLarge(self.cfg.max_body))
            }
            Err(e) => Err(Refusal::UnreadableBody(e.to_string())),
        }
    }
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
