//! Calls in flight: a JSON-RPC id read as servers compare ids, and the calls each session has
//! in flight with what each reserved, so that an id is in flight once per session and an
//! answer settles exactly the call it answers.

use std::collections::HashMap;
use std::sync::Arc;

use foldhash::fast::RandomState;
use parking_lot::Mutex;

use crate::policy::counters::Reserved;

/// A JSON-RPC id as servers compare them: a string by its text once unescaped, a number by its
/// value (`1`, `1.0` and `1e0` are one id to Python's and JavaScript's servers alike).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CallId(Box<str>);

impl CallId {
    /// The id of a strictly read message (a string or a number); `None` for any other value.
    pub fn of(text: &str) -> Option<CallId> {
        // One allocation, of the exact size: ids are made twice per call.
        let tagged = |tag: u8, text: &str| {
            let mut id = String::with_capacity(1 + text.len());
            id.push(tag as char);
            id.push_str(text);
            CallId(id.into_boxed_str())
        };
        match text.as_bytes().first()? {
            b'"' => crate::mcp::jsonrpc::string_of(text).map(|s| tagged(b's', &s)),
            b'1'..=b'9' if text.bytes().all(|b| b.is_ascii_digit()) => Some(tagged(b'n', text)),
            b'-' | b'0'..=b'9' => {
                let n: f64 = text.parse().ok().filter(|n: &f64| n.is_finite())?;
                let n = if n == 0.0 { 0.0 } else { n }; // -0 is 0
                Some(CallId(format!("n{n}").into()))
            }
            _ => None,
        }
    }
}

type CallsMap = Mutex<HashMap<CallId, Reserved, RandomState>>;

/// The calls in flight in one session (or in one request, without a session), by id, with
/// what each reserved. Shared by the session's requests and, for the legacy transport, by the
/// stream its answers arrive on.
#[derive(Clone, Default)]
pub struct Calls(pub(super) Arc<CallsMap>);

impl Calls {
    /// Whether no call is in flight.
    pub fn is_empty(&self) -> bool {
        self.0.lock().is_empty()
    }
}

/// The calls in flight of each session, so that an id is in flight once per session whichever
/// request carries it. An entry goes with the last request or stream that holds it.
#[derive(Default)]
pub struct Sessions(pub(super) Mutex<HashMap<Box<str>, std::sync::Weak<CallsMap>, RandomState>>);

impl Sessions {
    /// The calls of `session`.
    pub fn calls(&self, session: &str) -> Calls {
        let mut map = self.0.lock();
        if let Some(live) = map.get(session).and_then(std::sync::Weak::upgrade) {
            return Calls(live);
        }
        // Sessions whose requests have all ended are dropped as the map doubles.
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, calls| calls.strong_count() > 0);
        }
        let calls = Calls::default();
        map.insert(session.into(), Arc::downgrade(&calls.0));
        calls
    }
}

/// The streamable HTTP sessions the server itself issued (its `Mcp-Session-Id` answers), so a
/// session scope binds only to those: an id a client makes up, or sends to a server that has
/// no sessions (the 2026-07-28 era's stateless requests), is no session. At most `CAP` are
/// remembered, the oldest forgotten first (its calls then count as sessionless: per caller),
/// so no client can grow it: only the server's answers add to it.
pub struct BoundSessions(Mutex<BoundInner>);

#[derive(Default)]
struct BoundInner {
    /// Each session, and whether its client declared URL elicitation in its `initialize`
    /// (2025-11-25): a call held for a person there sends the client to the approval's page.
    ids: std::collections::HashMap<Box<str>, bool, RandomState>,
    order: std::collections::VecDeque<Box<str>>,
}

impl BoundSessions {
    const CAP: usize = 65_536;

    /// The server issued `id`, to a client that opens URLs (`opens_urls`) or not.
    pub fn bind(&self, id: &str, opens_urls: bool) {
        let mut inner = self.0.lock();
        if let Some(opens) = inner.ids.get_mut(id) {
            *opens |= opens_urls;
            return;
        }
        if inner.order.len() >= Self::CAP
            && let Some(oldest) = inner.order.pop_front()
        {
            inner.ids.remove(&oldest);
        }
        inner.ids.insert(id.into(), opens_urls);
        inner.order.push_back(id.into());
    }

    /// The server ended `id` (its answer to a DELETE).
    pub fn end(&self, id: &str) {
        let mut inner = self.0.lock();
        if inner.ids.remove(id).is_some() {
            inner.order.retain(|x| &**x != id);
        }
    }

    /// Whether the server issued `id`: `Some`, with whether its client opens URLs.
    pub fn lookup(&self, id: &str) -> Option<bool> {
        self.0.lock().ids.get(id).copied()
    }

    #[cfg(test)]
    fn is_bound(&self, id: &str) -> bool {
        self.lookup(id).is_some()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().order.len()
    }
}

impl Default for BoundSessions {
    fn default() -> Self {
        BoundSessions(Mutex::new(BoundInner::default()))
    }
}

#[cfg(test)]
mod bound_tests {
    use super::*;

    #[test]
    fn only_what_the_server_issued_is_a_session_and_memory_stays_bounded() {
        let bound = BoundSessions::default();
        assert!(!bound.is_bound("made-up"));
        bound.bind("s1", false);
        assert!(bound.is_bound("s1"));
        bound.end("s1");
        assert!(!bound.is_bound("s1"));
        for i in 0..BoundSessions::CAP + 10 {
            bound.bind(&format!("s{i}"), false);
        }
        assert_eq!(bound.len(), BoundSessions::CAP);
        assert!(!bound.is_bound("s0"), "the oldest are forgotten first");
        assert!(bound.is_bound(&format!("s{}", BoundSessions::CAP + 9)));
    }
}
