//! Stage one: admitting a request. Its origin and caller are checked before its body is read,
//! its body is read within the size limit, and it must be one JSON-RPC message or batch whose
//! MCP headers agree with it. Whatever fails is a [`Refusal`] naming the problem; nothing is
//! forwarded.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use memchr::memmem::Finder;
use serde_json::Value;
use serde_json::value::RawValue;
use tollgate_api::Identity;

use super::refusal::{Refusal, UnknownVersion};
use super::{MCP_METHOD, MCP_NAME, MCP_PROTOCOL_VERSION, MCP_SESSION_ID, Proxy, header_str};
use crate::http::deadline::Progress;
use crate::http::media::field_once;
use crate::http::server::RequestBody;
use crate::mcp::era::{self, Era};
use crate::mcp::jsonrpc::{self, Body as RpcBody, Message};
use crate::policy::Enforced;
use crate::policy::identity;

/// A request body read as JSON-RPC in the MCP era its `MCP-Protocol-Version` names: its
/// messages, or the refusal. The body must be UTF-8 whatever its `Content-Type` says, strictly
/// one reading of JSON-RPC 2.0, every message one its era defines (see [`era`]), and agree with
/// the headers that mirror it.
pub(super) fn messages<'b>(
    headers: &HeaderMap,
    bytes: &'b Bytes,
) -> Result<(RpcBody<'b>, Era), Refusal> {
    if let Some(why) = crate::http::media::not_utf8(headers) {
        return Err(Refusal::NotUtf8(why.to_string()));
    }
    let rpc = jsonrpc::parse_body(bytes).map_err(|e| Refusal::NotJsonRpc {
        code: e.code,
        message: e.message,
    })?;
    // Every refusal from here on answers the request's id.
    let first_id = || {
        rpc.messages
            .first()
            .map(Message::id_value)
            .unwrap_or(Value::Null)
    };
    for name in [
        &MCP_SESSION_ID,
        &MCP_PROTOCOL_VERSION,
        &MCP_METHOD,
        &MCP_NAME,
    ] {
        if unreadable_field(headers, name) {
            return Err(Refusal::Headers {
                id: first_id(),
                message: format!(
                    "The {name} header must be one field of visible ASCII: the server could read it otherwise than the proxy"
                ),
            });
        }
    }
    let version = header_str(headers, MCP_PROTOCOL_VERSION);
    let era = Era::of(version).ok_or_else(|| {
        Refusal::Version(Box::new(UnknownVersion {
            id: first_id(),
            requested: version.unwrap_or_default().to_string(),
            supported: era::known_versions()
                .into_iter()
                .map(String::from)
                .collect(),
        }))
    })?;
    if rpc.batch && era == Era::Stateless {
        return Err(Refusal::NotJsonRpc {
            code: jsonrpc::INVALID_REQUEST,
            message: "Invalid Request: a 2026-07-28 request is one JSON-RPC message, not a batch"
                .into(),
        });
    }
    for m in &rpc.messages {
        if let Err(message) = era::place(era, m.method.as_deref(), m.is_request()) {
            // As MCP's servers answer a method they do not implement: 404 in 2026-07-28, a
            // JSON-RPC error otherwise.
            let status = match (era, m.is_request() && !rpc.batch) {
                (Era::Stateless, true) => StatusCode::NOT_FOUND,
                (Era::Sessions, true) => StatusCode::OK,
                _ => StatusCode::BAD_REQUEST,
            };
            return Err(Refusal::Unplaceable {
                id: m.id_value(),
                message,
                status,
            });
        }
    }
    if let Err(message) = check_mcp_headers(headers, era, &rpc.messages, rpc.batch) {
        return Err(Refusal::Headers {
            id: first_id(),
            message,
        });
    }
    Ok((rpc, era))
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

/// The fields of a request's params that headers mirror: `name` and `uri` where they are
/// strings, and the protocol version `_meta` names.
#[derive(Default)]
struct Mirrored<'a> {
    name: Option<Cow<'a, str>>,
    uri: Option<Cow<'a, str>>,
    version: Option<Cow<'a, str>>,
}

/// What a message's params say of what headers mirror. Each field is looked up on its own, so
/// that one of an unexpected type hides no other; a `_meta` that is not an object, or a version
/// in it that is not a string, is refused (a server could read the version some other way).
fn mirrored<'a>(m: &Message<'a>) -> Result<Mirrored<'a>, String> {
    type Fields<'a> = std::collections::BTreeMap<Cow<'a, str>, &'a RawValue>;
    let Some(params) = m.params else {
        return Ok(Mirrored::default());
    };
    // Params that are not an object name nothing; the server refuses them.
    let Ok(fields) = serde_json::from_str::<Fields<'a>>(params) else {
        return Ok(Mirrored::default());
    };
    let text = |key: &str| {
        fields
            .get(key)
            .and_then(|v| serde_json::from_str::<Cow<'a, str>>(v.get()).ok())
    };
    let version = match fields.get("_meta") {
        None => None,
        Some(meta) => {
            let meta: Fields<'a> = serde_json::from_str(meta.get())
                .map_err(|_| "The body's _meta must be an object".to_string())?;
            match meta.get(era::META_VERSION) {
                None => None,
                Some(v) => Some(serde_json::from_str::<Cow<'a, str>>(v.get()).map_err(|_| {
                    format!("The body's _meta[{:?}] must be a string", era::META_VERSION)
                })?),
            }
        }
    };
    Ok(Mirrored {
        name: text("name"),
        uri: text("uri"),
        version,
    })
}

static PROTOCOL_VERSION_KEY: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"protocolVersion"));

/// MCP mirrors a request's method and name in headers (required in 2026-07-28, where
/// intermediaries route on them), and its protocol version in both the header and `_meta`. A
/// request whose headers say something its body does not is refused, so routing, the server
/// and policy can never read two different requests.
fn check_mcp_headers(
    headers: &HeaderMap,
    era: Era,
    messages: &[Message<'_>],
    batch: bool,
) -> Result<(), String> {
    let method = header_str(headers, MCP_METHOD);
    let name = header_str(headers, MCP_NAME);
    let version = header_str(headers, MCP_PROTOCOL_VERSION);
    if batch && (method.is_some() || name.is_some()) {
        return Err("Mcp-Method and Mcp-Name headers cannot describe a batch".into());
    }
    for m in messages {
        let stateless_request = era == Era::Stateless && m.is_request();
        let named = m.method.as_deref().and_then(era::named_by);
        // Parsed only where something is compared: a key spelled with escapes has a backslash.
        let read = stateless_request
            || (!batch && (method.is_some() || name.is_some()))
            || m.params.is_some_and(|p| {
                p.contains('\\') || PROTOCOL_VERSION_KEY.find(p.as_bytes()).is_some()
            });
        if !read {
            continue;
        }
        let body = mirrored(m)?;
        let body_version = body.version.as_deref();
        match (body_version, version) {
            (Some(b), Some(h)) if b == h => {}
            // A request without its version in `_meta` is the server's to refuse (-32602, as
            // the specification's servers do); read as its header's era, it is decided as any.
            (None, _) => {}
            (b, h) => {
                return Err(format!(
                    "The MCP-Protocol-Version header says {:?} but the body's _meta[{:?}] says {:?}",
                    h.unwrap_or(""),
                    era::META_VERSION,
                    b.unwrap_or("")
                ));
            }
        }
        if stateless_request && method.is_none() {
            return Err(format!(
                "A 2026-07-28 request must name its method in the Mcp-Method header ({:?})",
                m.method.as_deref().unwrap_or("")
            ));
        }
        if let Some(method) = method
            && m.method.as_deref() != Some(method)
        {
            return Err(format!(
                "The Mcp-Method header says {method:?} but the body's method is {:?}",
                m.method.as_deref().unwrap_or("")
            ));
        }
        let body_name = match named {
            Some("uri") => body.uri.as_deref(),
            Some(_) => body.name.as_deref(),
            None => body.name.as_deref().or(body.uri.as_deref()),
        };
        match name {
            None if stateless_request && named.is_some() => {
                return Err(format!(
                    "A 2026-07-28 {} request must name its {} in the Mcp-Name header ({:?})",
                    m.method.as_deref().unwrap_or(""),
                    named.unwrap_or("name"),
                    body_name.unwrap_or("")
                ));
            }
            None => {}
            Some(raw) => {
                let Some(said) = era::header_value(raw) else {
                    return Err(format!(
                        "The Mcp-Name header {raw:?} is not valid =?base64?…?= of UTF-8 text"
                    ));
                };
                if body_name != Some(&*said) {
                    return Err(format!(
                        "The Mcp-Name header says {said:?} but the body names {:?}",
                        body_name.unwrap_or("")
                    ));
                }
            }
        }
    }
    Ok(())
}
