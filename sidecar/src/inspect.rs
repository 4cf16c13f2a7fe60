//! What the proxy does with the server's answers: filter `tools/list` results, and roll back
//! the counters of calls the server failed.
//!
//! ```text
//! server message ─> response to a reserved tools/call? ─ failed ─> rollback its counters
//!                └> a tools/list result?               ─> drop tools this caller may not call
//! ```
//!
//! Messages are read with borrowed, typed views (no `Value` tree), and a filtered list is
//! written by splicing the kept tools' original bytes into the original message: what is not
//! filtered reaches the client byte for byte. A list that parsers could read two ways (a field
//! twice) is withheld, answered with an error, as filtering one reading would leave the other.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use foldhash::fast::RandomState;
use memchr::memmem::Finder;
use parking_lot::Mutex;
use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use tollgate_api::{Identity, PolicySet};

use crate::counters::{CounterStore, Reserved};
use crate::jsonrpc;
use crate::tool_name::{has_unicode_escape, tool_name};

/// Reservations of forwarded calls, by the compact JSON of their request id. Shared between a
/// legacy session's POSTs and its stream, where the answers arrive.
#[derive(Clone, Default)]
pub struct Tracker(Arc<Mutex<HashMap<String, Reserved, RandomState>>>);

/// Inspects the server's messages for one client request or stream.
pub struct Inspector {
    policy: Option<Arc<PolicySet>>,
    who: Arc<Identity>,
    counters: Arc<CounterStore>,
    reserved: Tracker,
    /// Whether the request asked for a tool list (so a JSON answer is worth reading).
    expect_list: bool,
}

/// A server message, viewed without copying, in one pass over its text.
#[derive(Deserialize)]
struct View<'a> {
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    method: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
    #[serde(default, borrow)]
    result: Option<ResultView<'a>>,
}

/// The parts of a result the proxy reads. A result that is not an object, or fields of
/// another type, read as absent: the message is still read, so its call is still settled.
#[derive(Default)]
struct ResultView<'a> {
    is_error: Option<bool>,
    tools: Option<Vec<&'a RawValue>>,
    /// Parsers differ on which of two `tools` counts: such a list is never forwarded.
    tools_twice: bool,
    cache_scope: Option<&'a RawValue>,
}

/// The result fields the proxy reads. Read as identifiers: other names are skipped without
/// being copied.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum ResultField {
    IsError,
    Tools,
    CacheScope,
    #[serde(other)]
    Other,
}

/// A visitor's answer to every JSON type but the one it wants: read through, as the default.
macro_rules! others_read_as_default {
    () => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
}

impl<'de: 'a, 'a> Deserialize<'de> for ResultView<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = ResultView<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON-RPC result")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut r = ResultView::default();
                while let Some(key) = map.next_key::<ResultField>()? {
                    match key {
                        ResultField::IsError => {
                            r.is_error = match map.next_value::<&RawValue>()?.get() {
                                "true" => Some(true),
                                "false" => Some(false),
                                _ => None,
                            }
                        }
                        ResultField::Tools => {
                            r.tools_twice |= r.tools.is_some();
                            r.tools = map.next_value::<Tools<'a>>()?.0;
                        }
                        ResultField::CacheScope => r.cache_scope = Some(map.next_value()?),
                        ResultField::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(r)
            }
            fn visit_seq<S: SeqAccess<'de>>(self, seq: S) -> Result<Self::Value, S::Error> {
                IgnoredAny.visit_seq(seq).map(|_| ResultView::default())
            }
            others_read_as_default!();
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// `tools`: each tool's raw text, or `None` when it is not an array.
#[derive(Default)]
struct Tools<'a>(Option<Vec<&'a RawValue>>);

impl<'de: 'a, 'a> Deserialize<'de> for Tools<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Tools<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of tools")
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
                let mut tools = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(t) = seq.next_element::<&'de RawValue>()? {
                    tools.push(t);
                }
                Ok(Tools(Some(tools)))
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Self::Value, M::Error> {
                IgnoredAny.visit_map(map).map(|_| Tools(None))
            }
            others_read_as_default!();
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// Whether a message may hold a tool list: it names `tools`, or has a `\u` escape, which can
/// spell the name (`"t\u006fols"`).
fn may_hold_tools(text: &str) -> bool {
    static TOOLS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"tools"));
    TOOLS.find(text.as_bytes()).is_some() || has_unicode_escape(text.as_bytes())
}

/// What the client gets instead of a tool list the proxy cannot read unambiguously.
fn unfilterable(id: Option<&RawValue>, why: &str) -> String {
    let message =
        format!("Tollgate cannot filter the MCP server's answer, so it is withheld: {why}");
    jsonrpc::error_response(
        jsonrpc::id_value(id),
        jsonrpc::INTERNAL_ERROR,
        &message,
        None,
    )
    .to_string()
}

/// Where `inner` lies within `outer` (both slices of one string).
fn span(outer: &str, inner: &str) -> std::ops::Range<usize> {
    let start = inner.as_ptr() as usize - outer.as_ptr() as usize;
    start..start + inner.len()
}

impl Inspector {
    pub fn new(policy: Arc<PolicySet>, who: Arc<Identity>, counters: Arc<CounterStore>) -> Self {
        Self::with_tracker(policy, who, counters, Tracker::default())
    }

    /// An inspector whose reservations live in a shared tracker.
    pub fn with_tracker(
        policy: Arc<PolicySet>,
        who: Arc<Identity>,
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
            who: Arc::default(),
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
        self.policy.as_ref()?;
        // Fast path: nothing to roll back and no tool list in sight.
        if !self.is_tracking() && !self.expect_list && !may_hold_tools(text) {
            return None;
        }
        let trimmed = text.trim_start();
        if trimmed.starts_with('[') {
            let items: Vec<&RawValue> = serde_json::from_str(text).ok()?;
            let mut changed = false;
            let parts: Vec<String> = items
                .iter()
                .map(|m| match self.inspect_one(m.get()) {
                    Some(new) => {
                        changed = true;
                        new
                    }
                    None => m.get().to_string(),
                })
                .collect();
            return changed.then(|| format!("[{}]", parts.join(",")));
        }
        self.inspect_one(text)
    }

    /// One message: settle its call's counters; filter it if it is a tool list.
    fn inspect_one(&mut self, text: &str) -> Option<String> {
        let view: View<'_> = match serde_json::from_str(text) {
            Ok(view) => view,
            // JSON that is not one JSON-RPC message (a field twice): parsers differ on which
            // copy counts, so a tool list in it cannot be filtered for all of them.
            Err(e)
                if (self.expect_list || may_hold_tools(text))
                    && serde_json::from_str::<IgnoredAny>(text).is_ok() =>
            {
                return Some(unfilterable(None, &e.to_string()));
            }
            // Not JSON at all: no client reads tools from it.
            Err(_) => return None,
        };
        if view.method.is_some() {
            return None; // a request or notification from the server
        }
        let result = view.result;
        if let Some(id) = view.id {
            let reserved = self.reserved.0.lock().remove(id.get());
            if let Some(reserved) = reserved {
                let failed = view.error.is_some()
                    || result.as_ref().is_some_and(|r| r.is_error == Some(true));
                if failed {
                    self.counters.rollback(reserved);
                }
            }
        }
        let result = result?;
        if result.tools_twice {
            return Some(unfilterable(view.id, "the result has two `tools` fields"));
        }
        self.filter_tools_list(text, result)
    }

    fn filter_tools_list(&self, text: &str, result: ResultView<'_>) -> Option<String> {
        let policy = self.policy.as_ref()?;
        let tools = result.tools?;
        let mut visibility = policy.visibility(&self.who);
        let kept: Vec<&RawValue> = tools
            .iter()
            .copied()
            // A tool whose name cannot be read (none, two, not a string) cannot be shown to be
            // visible: it is dropped.
            .filter(|t| tool_name(t.get()).is_some_and(|name| visibility.visible(&name)))
            .collect();
        drop(visibility);
        if kept.len() == tools.len() {
            return None;
        }
        // Splice the kept tools' bytes in place of the array.
        let first = tools.first().map(|t| span(text, t.get()).start)?;
        let last = tools.last().map(|t| span(text, t.get()).end)?;
        let mut out = String::with_capacity(text.len());
        out.push_str(&text[..first]);
        for (i, t) in kept.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(t.get());
        }
        out.push_str(&text[last..]);
        if !policy.varies_by_caller() {
            return Some(out);
        }
        // Filtered for this caller: the result must not be cached for others.
        let out = match result.cache_scope {
            Some(scope) => {
                let at = span(text, scope.get());
                let shift = out.len() as isize - text.len() as isize;
                let (s, e) = if at.start >= last {
                    (
                        (at.start as isize + shift) as usize,
                        (at.end as isize + shift) as usize,
                    )
                } else {
                    (at.start, at.end)
                };
                format!("{}\"private\"{}", &out[..s], &out[e..])
            }
            None => {
                // Rare (lists that vary by caller, without a cacheScope): read the result's
                // place once more.
                #[derive(Deserialize)]
                struct Raw<'a> {
                    #[serde(borrow)]
                    result: &'a RawValue,
                }
                let raw: Raw<'_> = serde_json::from_str(text).ok()?;
                let open = span(text, raw.result.get()).start + 1;
                format!(
                    "{}\"cacheScope\":\"private\",{}",
                    &out[..open],
                    &out[open..]
                )
            }
        };
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use tollgate_api::{DefaultAction, PolicySpec};

    fn set(spec: &str) -> Arc<PolicySet> {
        let spec: PolicySpec = tollgate_api::load::yaml_from_str(spec).unwrap();
        Arc::new(PolicySet::compile(1, DefaultAction::Allow, [("p", &spec)]).unwrap())
    }

    /// Reserves the quota of an anonymous call of tool `t`, if the policy allows it.
    fn reserve_t(s: &PolicySet, counters: &CounterStore) -> Option<Reserved> {
        let args = json!({});
        let call = tollgate_api::Call::new("t", &args);
        let tollgate_api::Decision::Allow { reservations } =
            s.decide(&call, &Identity::anonymous(), counters).decision
        else {
            return None;
        };
        counters.reserve_all(&reservations).ok()
    }

    fn names(text: &str) -> Vec<String> {
        let v: Value = serde_json::from_str(text).unwrap();
        v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn tool_lists_keep_only_visible_tools_and_every_other_byte() {
        let mut i = Inspector::new(
            set("default: allow\nhide: [b]\ntools: {}"),
            Arc::default(),
            Arc::default(),
        );
        let text = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a","x":1},{"name":"b"},{"name":"c"}],"nextCursor":"n2"}}"#;
        let out = i.inspect_text(text).unwrap();
        assert_eq!(
            out,
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a","x":1},{"name":"c"}],"nextCursor":"n2"}}"#
        );
        assert_eq!(
            i.inspect_text(r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"}]}}"#),
            None,
            "unfiltered lists are untouched"
        );
    }

    #[test]
    fn tools_whose_name_cannot_be_read_are_dropped_from_a_filtered_list() {
        let mut i = Inspector::new(
            set("default: allow\nhide: [b]\ntools: {}"),
            Arc::default(),
            Arc::default(),
        );
        let text = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"},{"name":"b"},{"title":"nameless"},{"name":"a","name":"b"},{"name":"a","n\u0061me":"b"},{"name":7},{"name":"c","inputSchema":{"properties":{"name":{"type":"string"}}}}]}}"#;
        assert_eq!(names(&i.inspect_text(text).unwrap()), ["a", "c"]);
    }

    #[test]
    fn a_list_that_parsers_could_read_differently_is_withheld_never_forwarded() {
        let hide_b = || {
            Inspector::new(
                set("default: allow\nhide: [b]\ntools: {}"),
                Arc::default(),
                Arc::default(),
            )
        };
        // An escaped key is still `tools`, on a stream that did not ask for a list too.
        let escaped =
            r#"{"jsonrpc":"2.0","id":1,"result":{"t\u006fols":[{"name":"a"},{"name":"b"}]}}"#;
        assert_eq!(names(&hide_b().inspect_text(escaped).unwrap()), ["a"]);
        // Two results, or two lists: which one counts depends on the client's parser.
        let withheld = |text: &str, id: Value, why: &str| {
            let mut i = hide_b();
            i.expect_list();
            let out: Value = serde_json::from_str(&i.inspect_text(text).unwrap()).unwrap();
            assert_eq!(out["id"], id, "{text}");
            assert_eq!(
                out["error"]["code"],
                json!(jsonrpc::INTERNAL_ERROR),
                "{text}"
            );
            let message = out["error"]["message"].as_str().unwrap();
            assert!(message.contains(why), "{message}");
        };
        withheld(
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"b"}]},"result":{"tools":[]}}"#,
            Value::Null,
            "duplicate field `result`",
        );
        withheld(
            r#"{"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"b"}],"tools":[{"name":"a"}]}}"#,
            json!(7),
            "two `tools` fields",
        );
        // What no client reads as JSON, and a call's answer with a field twice, pass as they are.
        let mut i = hide_b();
        i.expect_list();
        assert_eq!(i.inspect_text(r#"{"result":{"tools":[{"name":"b"}]"#), None);
        let s = set("tools: { t: { rules: [ { name: r, rateLimit: 1/hour } ] } }");
        let counters: Arc<CounterStore> = Arc::default();
        let mut i = Inspector::new(s.clone(), Arc::default(), counters.clone());
        i.track("1".into(), reserve_t(&s, &counters).unwrap());
        assert_eq!(i.inspect_text(r#"{"id":1,"id":1,"result":{}}"#), None);
    }

    #[test]
    fn lists_filtered_per_caller_are_marked_private() {
        let spec = "default: deny\nsubjects: [ { subject: bob } ]\ntools: { a: { rules: [] } }";
        let mut i = Inspector::new(
            set(spec),
            Arc::new(Identity::subject("bob")),
            Arc::default(),
        );
        let out = i
            .inspect_text(
                r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"},{"name":"b"}]}}"#,
            )
            .unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (names(&out), v["result"]["cacheScope"].clone()),
            (vec!["a".to_string()], json!("private"))
        );
        let out = i.inspect_text(r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"},{"name":"b"}],"cacheScope":"public","ttlMs":5}}"#).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (
                v["result"]["cacheScope"].clone(),
                v["result"]["ttlMs"].clone()
            ),
            (json!("private"), json!(5))
        );
    }

    #[test]
    fn failed_answers_roll_back_and_successful_ones_keep_their_reservation() {
        let counters: Arc<CounterStore> = Arc::default();
        let spec = "tools: { t: { rules: [ { name: r, rateLimit: 1/hour } ] } }";
        let s = set(spec);
        let reserve = || reserve_t(&s, &counters);
        let mut i = Inspector::new(s.clone(), Arc::default(), counters.clone());
        i.track("1".into(), reserve().unwrap());
        i.inspect_text(r#"{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":true}}"#);
        let again = reserve().expect("the failed call's quota came back");
        i.track("3".into(), again);
        i.inspect_text(r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32603,"message":"boom"}}"#);
        let again = reserve().expect("a JSON-RPC error gives the quota back too");
        i.track("2".into(), again);
        i.inspect_text(r#"{"jsonrpc":"2.0","id":2,"result":{"content":[]}}"#);
        assert!(reserve().is_none(), "a successful call spends its quota");
    }

    #[test]
    fn answers_of_any_shape_settle_their_call_and_odd_fields_read_as_absent() {
        let s = set("tools: { t: { rules: [ { name: r, rateLimit: 1/hour } ] } }");
        // Answers call "1" with `result`; returns whether the quota came back.
        let answer = |result: &str| {
            let counters: Arc<CounterStore> = Arc::default();
            let reserve = || reserve_t(&s, &counters);
            let mut i = Inspector::new(s.clone(), Arc::default(), counters.clone());
            i.track("1".into(), reserve().unwrap());
            let text = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{result}}}"#);
            assert_eq!(i.inspect_text(&text), None, "{result}: nothing to filter");
            assert!(!i.is_tracking(), "{result}: the call is settled");
            reserve().is_some()
        };
        assert!(
            answer(r#"{"tools":{"a":1},"isError":true}"#),
            "a failure rolls back"
        );
        for spent in [
            r#""text""#,
            "[1,2]",
            "7",
            "null",
            r#"{"isError":"yes","tools":3}"#,
        ] {
            assert!(!answer(spent), "{spent}: a success spends its quota");
        }
    }
}
