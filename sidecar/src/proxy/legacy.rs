//! The legacy HTTP+SSE transport's sessions: a GET stream announces the endpoint its session
//! posts to, and answers to those posts (the proxy's denials too) travel on that stream.
//! Sessions are found by the endpoint's path and query, and go with their stream.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::Uri;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::Proxy;
use crate::proxy::calls::Calls;

impl Proxy {
    pub(super) fn legacy_registry(&self) -> LegacyRegistry {
        LegacyRegistry(self.legacy.clone())
    }

    /// The legacy session a POST belongs to, by its path and query.
    pub(super) fn legacy_session(&self, uri: &Uri) -> Option<(String, LegacyHandle)> {
        let key = uri.path_and_query()?.as_str();
        let mut map = self.legacy.lock();
        let s = map.get(key)?;
        if s.events.is_closed() {
            map.remove(key);
            return None;
        }
        Some((
            key.to_string(),
            LegacyHandle {
                events: s.events.clone(),
                calls: s.calls.clone(),
            },
        ))
    }
}

/// A legacy HTTP+SSE session: where denials for it are delivered, and its calls in flight.
pub(super) struct LegacySession {
    pub(super) events: mpsc::UnboundedSender<Bytes>,
    pub(super) calls: Calls,
}

/// A handle to a legacy session's stream, usable without the registry lock.
pub(super) struct LegacyHandle {
    pub(super) events: mpsc::UnboundedSender<Bytes>,
    pub(super) calls: Calls,
}

/// Registers legacy sessions from inside an SSE body (which outlives the request borrow).
pub(super) struct LegacyRegistry(Arc<Mutex<HashMap<String, LegacySession>>>);

impl LegacyRegistry {
    pub(super) fn register(&self, key: String, session: LegacySession) {
        let mut map = self.0.lock();
        map.retain(|_, s| !s.events.is_closed());
        map.insert(key, session);
    }
}

/// The path+query a legacy endpoint event names, and the event data rewritten to a relative
/// URL when the server announced an absolute one on its own address.
pub(super) fn endpoint_key(data: &str, upstream_authority: &str) -> (String, Option<String>) {
    let data = data.trim();
    if let Some(rest) = data
        .strip_prefix("http://")
        .or_else(|| data.strip_prefix("https://"))
    {
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        let rewritten = (authority == upstream_authority).then(|| path.to_string());
        return (path.to_string(), rewritten);
    }
    (data.to_string(), None)
}
