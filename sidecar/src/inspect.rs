//! What the proxy does with the server's answers: filter `tools/list` results, and roll back
//! the counters of calls the server failed.
//!
//! ```text
//! server message ─> response to a reserved tools/call? ─ failed ─> rollback its counters
//!                └> a tools/list result?               ─> drop tools this caller may not call
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use tollgate_api::{Identity, PolicySet};

use parking_lot::Mutex;

use crate::counters::{CounterStore, Reserved};
use crate::jsonrpc;

/// Reservations of forwarded calls, by the compact JSON of their request id. Shared between a
/// legacy session's POSTs and its stream, where the answers arrive.
#[derive(Clone, Default)]
pub struct Tracker(Arc<Mutex<HashMap<String, Reserved>>>);

/// Inspects the server's messages for one client request or stream.
pub struct Inspector {
    policy: Option<Arc<PolicySet>>,
    who: Identity,
    counters: Arc<CounterStore>,
    reserved: Tracker,
    /// Whether the request asked for a tool list (so a JSON answer is worth reading).
    expect_list: bool,
}

impl Inspector {
    pub fn new(policy: Arc<PolicySet>, who: Identity, counters: Arc<CounterStore>) -> Self {
        Self::with_tracker(policy, who, counters, Tracker::default())
    }

    /// An inspector whose reservations live in a shared tracker.
    pub fn with_tracker(
        policy: Arc<PolicySet>,
        who: Identity,
        counters: Arc<CounterStore>,
        reserved: Tracker,
    ) -> Self {
        Inspector {
            policy: Some(policy),
            who,
            counters,
            reserved,
            expect_list: false,
        }
    }

    /// An inspector that changes nothing (for bodies that carry no JSON-RPC).
    pub fn passthrough() -> Self {
        Inspector {
            policy: None,
            who: Identity::anonymous(),
            counters: Arc::default(),
            reserved: Tracker::default(),
            expect_list: false,
        }
    }

    /// Marks that the request listed tools, so its JSON answer is read and filtered.
    pub fn expect_list(&mut self) {
        self.expect_list = true;
    }

    pub fn may_filter(&self) -> bool {
        self.expect_list
    }

    /// Remembers what a forwarded call reserved, to roll back if it fails.
    pub fn track(&mut self, id: String, reserved: Reserved) {
        if !reserved.is_empty() {
            self.reserved.0.lock().insert(id, reserved);
        }
    }

    pub fn is_tracking(&self) -> bool {
        !self.reserved.0.lock().is_empty()
    }

    /// The upstream failed outright (unreachable, non-2xx): every reservation is returned.
    pub fn fail_all(&mut self) {
        let drained: Vec<Reserved> = self.reserved.0.lock().drain().map(|(_, r)| r).collect();
        for r in drained {
            self.counters.rollback(r);
        }
    }

    /// The stream ended; calls never answered keep their reservation (they may have run).
    pub fn finish(&mut self) {
        // A legacy session's tracker outlives each stream read; only per-request ones clear.
        if Arc::strong_count(&self.reserved.0) == 1 {
            self.reserved.0.lock().clear();
        }
    }

    /// Inspects a message (or batch) as text; returns new text when it changed.
    pub fn inspect_text(&mut self, text: &str) -> Option<String> {
        // Fast path: nothing to roll back and no tool list in sight.
        self.policy.as_ref()?;
        if !self.is_tracking() && memchr::memmem::find(text.as_bytes(), b"\"tools\"").is_none() {
            return None;
        }
        let mut value: Value = serde_json::from_str(text).ok()?;
        let changed = match &mut value {
            Value::Array(items) => items.iter_mut().fold(false, |c, m| self.inspect(m) | c),
            m => self.inspect(m),
        };
        changed.then(|| value.to_string())
    }

    /// Inspects one message; returns whether it changed.
    pub fn inspect(&mut self, message: &mut Value) -> bool {
        if let Some(id) = jsonrpc::response_id(message)
            && let Some(reserved) = self.reserved.0.lock().remove(&id)
            && jsonrpc::is_failure(message)
        {
            self.counters.rollback(reserved);
        }
        self.filter_tools_list(message)
    }

    fn filter_tools_list(&self, message: &mut Value) -> bool {
        let Some(policy) = &self.policy else {
            return false;
        };
        let Some(result) = message.get_mut("result").and_then(Value::as_object_mut) else {
            return false;
        };
        let Some(Value::Array(tools)) = result.get_mut("tools") else {
            return false;
        };
        let before = tools.len();
        tools.retain(|t| {
            t.get("name")
                .and_then(Value::as_str)
                .is_none_or(|name| policy.visible(name, &self.who))
        });
        let filtered = tools.len() != before;
        if filtered && policy.varies_by_caller() {
            result.insert("cacheScope".into(), Value::String("private".into()));
        }
        filtered
    }
}
