//! The protocol versions the proxy and its server speak together, for the `-32022` answer to a
//! version Tollgate cannot read. MCP says that answer lists the versions "it does support":
//! behind a proxy, that is the versions both read, so the server is asked (`server/discover`
//! at the path the client used, one probe at a time, for at most 2 s) and what it answers is
//! kept for a minute per path; a probe that got no answer is not tried again for 10 s, and the
//! answer then lists every version Tollgate reads.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;

use super::{MCP_METHOD, MCP_PROTOCOL_VERSION, Proxy};
use crate::http::client::Outgoing;
use crate::mcp::era;

/// How long what the server said of its versions is believed.
const FRESH: Duration = Duration::from_secs(60);
/// How long a probe that got no answer is not tried again.
const FAILED: Duration = Duration::from_secs(10);
/// How long a probe may take: the client waits for it.
const PROBE: Duration = Duration::from_secs(2);
/// The most of the server's answer read.
const MAX_ANSWER: usize = 64 * 1024;
/// The most paths remembered.
const PATHS: usize = 16;

/// When the server was asked, and what it said (`None`: nothing).
type Heard = (Instant, Option<Vec<String>>);

/// What the server last said of its versions at each path, and when; `None` for a probe that
/// got no answer. One probe at a time.
#[derive(Default)]
pub struct ServerVersions {
    known: parking_lot::Mutex<HashMap<String, Heard>>,
    probing: tokio::sync::Mutex<()>,
}

impl ServerVersions {
    fn cached(&self, path: &str) -> Option<Option<Vec<String>>> {
        let known = self.known.lock();
        let (at, versions) = known.get(path)?;
        let fresh = match versions {
            Some(_) => FRESH,
            None => FAILED,
        };
        (at.elapsed() < fresh).then(|| versions.clone())
    }

    fn keep(&self, path: &str, versions: Option<Vec<String>>) {
        let mut known = self.known.lock();
        if known.len() >= PATHS && !known.contains_key(path) {
            known.clear();
        }
        known.insert(path.to_string(), (Instant::now(), versions));
    }
}

impl Proxy {
    /// The versions Tollgate reads that the server at `path` supports too; every version
    /// Tollgate reads when the server does not say. The probe carries the refused request's
    /// credential, as the server may want one.
    pub(super) async fn supported_versions(
        &self,
        path: &str,
        authorization: Option<&HeaderValue>,
    ) -> Vec<String> {
        let known = era::known_versions();
        let server = match self.server_versions.cached(path) {
            Some(v) => v,
            None => {
                let _one = self.server_versions.probing.lock().await;
                match self.server_versions.cached(path) {
                    Some(v) => v,
                    None => {
                        let timeout = PROBE.min(self.cfg.timeouts.upstream_head);
                        let asked =
                            tokio::time::timeout(timeout, self.discover(path, authorization))
                                .await
                                .ok()
                                .flatten();
                        self.server_versions.keep(path, asked.clone());
                        asked
                    }
                }
            }
        };
        match server {
            Some(server) => known
                .into_iter()
                .filter(|k| server.iter().any(|s| s == k))
                .map(str::to_string)
                .collect(),
            None => known.into_iter().map(str::to_string).collect(),
        }
    }

    /// Asks the server its `supportedVersions`.
    async fn discover(
        &self,
        path: &str,
        authorization: Option<&HeaderValue>,
    ) -> Option<Vec<String>> {
        let version = era::STATELESS_VERSIONS[0];
        let body = serde_json::json!({
            "jsonrpc": "2.0",
            "id": "tollgate-versions",
            "method": "server/discover",
            "params": { "_meta": {
                era::META_VERSION: version,
                "io.modelcontextprotocol/clientCapabilities": {},
            }},
        });
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, self.upstream_authority.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream")
            .header(MCP_PROTOCOL_VERSION, HeaderValue::from_static(version))
            .header(MCP_METHOD, "server/discover");
        if let Some(credential) = authorization {
            request = request.header(AUTHORIZATION, credential.clone());
        }
        let (parts, ()) = request.body(()).ok()?.into_parts();
        let resp = self
            .client
            .send(&parts, Outgoing::Full(Bytes::from(body.to_string())))
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .ok()?
            .to_bytes();
        supported_in(&bytes)
    }
}

/// `result.supportedVersions` of a `server/discover` answer, as JSON or as SSE events.
fn supported_in(bytes: &[u8]) -> Option<Vec<String>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let of = |json: &str| {
        let v: Value = serde_json::from_str(json).ok()?;
        let versions = v.get("result")?.get("supportedVersions")?.as_array()?;
        versions
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
    };
    of(text).or_else(|| {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .find_map(|data| of(data.trim()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_servers_versions_are_read_from_its_discover_answer_as_json_or_events() {
        let json = br#"{"jsonrpc":"2.0","id":"x","result":{"supportedVersions":["2026-07-28","2025-11-25"]}}"#;
        assert_eq!(
            supported_in(json),
            Some(vec!["2026-07-28".into(), "2025-11-25".into()])
        );
        let sse = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":\"x\",\"result\":{\"supportedVersions\":[\"2026-07-28\"]}}\n\n";
        assert_eq!(supported_in(sse), Some(vec!["2026-07-28".into()]));
        assert_eq!(supported_in(br#"{"error":{"code":-32601}}"#), None);
        assert_eq!(
            supported_in(br#"{"result":{"supportedVersions":[1]}}"#),
            None
        );
    }
}
