//! The protocol versions the proxy and its server speak together, for the `-32022` answer to a
//! version Tollgate cannot read. MCP says that answer lists the versions "it does support":
//! behind a proxy, that is the versions both read, so the server is asked once
//! (`server/discover`) and what it answers is kept for a minute.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;

use super::{MCP_METHOD, MCP_PROTOCOL_VERSION, Proxy};
use crate::http::client::Outgoing;
use crate::mcp::era;

/// How long what the server said of its versions is believed.
const FRESH: Duration = Duration::from_secs(60);
/// The most of the server's answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// What the server last said of its versions, and when.
#[derive(Default)]
pub struct ServerVersions(parking_lot::Mutex<Option<(Instant, Vec<String>)>>);

impl Proxy {
    /// The versions Tollgate reads that the server at `path` supports too; every version
    /// Tollgate reads when the server does not say.
    pub(super) async fn supported_versions(&self, path: &str) -> Vec<String> {
        let known = era::known_versions();
        let cached = self
            .server_versions
            .0
            .lock()
            .as_ref()
            .filter(|(at, _)| at.elapsed() < FRESH)
            .map(|(_, v)| v.clone());
        let server = match cached {
            Some(v) => Some(v),
            None => {
                let asked =
                    tokio::time::timeout(self.cfg.timeouts.upstream_head, self.discover(path))
                        .await
                        .ok()
                        .flatten();
                if let Some(v) = &asked {
                    *self.server_versions.0.lock() = Some((Instant::now(), v.clone()));
                }
                asked
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
    async fn discover(&self, path: &str) -> Option<Vec<String>> {
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
        let (parts, ()) = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, self.upstream_authority.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream")
            .header(MCP_PROTOCOL_VERSION, HeaderValue::from_static(version))
            .header(MCP_METHOD, "server/discover")
            .body(())
            .ok()?
            .into_parts();
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
