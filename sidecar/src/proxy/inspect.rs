//! What the proxy does with the server's answers: filter `tools/list` results, and settle the
//! counters of the calls they answer.
//!
//! ```text
//! request ─ begin(id) ─> Calls (one per session): an id in flight once; a second is refused
//! server message ─> the answer to a call this request began? ─ the server refused it
//!                │                                              before running it ─> refund
//!                │                                           └─ anything else ─> it counts
//!                └> a tools/list result? ─> drop tools this caller may not call
//! ```
//!
//! A counter goes back only when the proxy knows the tool did not run: the server answered the
//! request with a 4xx status whose body answers no call of it (its transport refused it before
//! any tool was dispatched; in the 2026-07-28 era the Python SDK answers a tool's own error
//! with a 400 that carries it), or could not be reached at all. No JSON-RPC answer proves it: the Python and TypeScript SDKs pass a
//! tool's own error through with whatever code the tool raised, so a tool that acted and then
//! raised "invalid params" (-32602) looks exactly like a call refused before running. A result
//! (`isError` too), any error, a 5xx, an answer that cannot be read, a stream that ends first
//! and a client's cancellation all keep the count: the tool may have run. (What servers refuse
//! before running, arguments that are not an object, the proxy refuses itself, uncounted.)
//!
//! Messages are read with borrowed, typed views (no `Value` tree), and a filtered list is
//! written by splicing the kept tools' original bytes into the original message: what is not
//! filtered reaches the client byte for byte. A list that parsers could read two ways (a field
//! twice, text that is not strictly JSON) is withheld, answered with an error, as filtering one
//! reading would leave the other.

use std::sync::{Arc, LazyLock};

use memchr::memmem::Finder;
use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use tollgate_api::Identity;

use super::calls::{CallId, Calls};
use super::refusal::Refusal;
use super::resume::{Resume, Resumes};
use crate::mcp::jsonrpc;
use crate::mcp::tool_name::{has_unicode_escape, tool_name};
use crate::policy::Enforced;
use crate::policy::counters::{CounterStore, Reserved};
use crate::policy::pins::{Listed, Pins};

/// Where the answers to the calls an inspector sees travel.
enum Answers {
    /// On this request's own response: only the calls it began are settled by them, and
    /// those it began end with it.
    Own(Vec<CallId>),
    /// On this stream, for every call of the session (the legacy transport's stream).
    Session,
    /// Elsewhere (a legacy POST, answered on the session's stream): nothing is settled here.
    Elsewhere,
}

/// Inspects the server's messages for one client request or stream.
pub struct Inspector {
    policy: Option<Arc<Enforced>>,
    who: Arc<Identity>,
    counters: Arc<CounterStore>,
    /// The workload's tool pins, which a tool list is held to when a policy pins.
    pins: Arc<Pins>,
    calls: Calls,
    answers: Answers,
    /// Whether a call this request began reserved a counter (so its answer is worth reading).
    reserving: bool,
    /// Whether the request asked for a tool list (so a JSON answer is worth reading).
    expect_list: bool,
    /// Tools of a list read that the cluster would pin on first use: the list waits for it
    /// ([`Inspector::first_use`]) and is read again.
    first_use: Vec<crate::mcp::tool_def::Definition>,
    /// Reading a list again once its first uses are pinned: only the list is looked at (its
    /// call was settled the first time).
    rereading: bool,
    /// Calls this request began whose answer may ask for input (2026-07-28), and where their
    /// repeat is awaited.
    resumable: Vec<(CallId, Resume)>,
    resumes: Option<Arc<Resumes>>,
}

/// What a refused `begin` hands back: the call's id is already in flight in its session.
#[derive(Debug)]
pub struct InFlight(pub Reserved);

/// A server message, viewed without copying, in one pass over its text.
#[derive(Deserialize)]
struct View<'a> {
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    method: Option<&'a RawValue>,
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
    /// `resultType` and `requestState` (2026-07-28): an answer that asks for input.
    result_type: Option<&'a RawValue>,
    request_state: Option<&'a RawValue>,
}

impl ResultView<'_> {
    fn asks_for_input(&self) -> bool {
        self.result_type
            .and_then(|t| jsonrpc::string_of(t.get()))
            .is_some_and(|t| t == "input_required")
    }
}

/// The result fields the proxy reads. Read as identifiers: other names are skipped without
/// being copied.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum ResultField {
    IsError,
    Tools,
    CacheScope,
    ResultType,
    RequestState,
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
                        ResultField::ResultType => r.result_type = Some(map.next_value()?),
                        ResultField::RequestState => r.request_state = Some(map.next_value()?),
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
fn may_hold_tools(text: impl AsRef<[u8]>) -> bool {
    static TOOLS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"tools"));
    let text = text.as_ref();
    TOOLS.find(text).is_some() || has_unicode_escape(text)
}

/// What the client gets instead of a tool list the proxy cannot read unambiguously.
fn unfilterable(id: Option<&RawValue>, why: &str) -> String {
    Refusal::Unfilterable {
        id: jsonrpc::id_value(id.map(RawValue::get)),
        why: why.to_string(),
    }
    .message()
    .to_string()
}

/// Where `inner` lies within `outer` (both slices of one string).
fn span(outer: &str, inner: &str) -> std::ops::Range<usize> {
    let start = inner.as_ptr() as usize - outer.as_ptr() as usize;
    start..start + inner.len()
}

impl Inspector {
    /// An inspector for a request whose answers come on its own response; `calls` are its
    /// session's (or its own, without a session).
    pub fn for_request(
        policy: Arc<Enforced>,
        who: Arc<Identity>,
        counters: Arc<CounterStore>,
        pins: Arc<Pins>,
        calls: Calls,
    ) -> Self {
        Self::with(policy, who, counters, pins, calls, Answers::Own(Vec::new()))
    }

    /// An inspector for a legacy session's stream, where every call of the session is answered.
    pub fn for_session_stream(
        policy: Arc<Enforced>,
        who: Arc<Identity>,
        counters: Arc<CounterStore>,
        pins: Arc<Pins>,
        calls: Calls,
    ) -> Self {
        Self::with(policy, who, counters, pins, calls, Answers::Session)
    }

    /// An inspector for a legacy POST: its calls are the session's, answered on its stream.
    pub fn for_legacy_post(
        policy: Arc<Enforced>,
        who: Arc<Identity>,
        counters: Arc<CounterStore>,
        pins: Arc<Pins>,
        calls: Calls,
    ) -> Self {
        Self::with(policy, who, counters, pins, calls, Answers::Elsewhere)
    }

    fn with(
        policy: Arc<Enforced>,
        who: Arc<Identity>,
        counters: Arc<CounterStore>,
        pins: Arc<Pins>,
        calls: Calls,
        answers: Answers,
    ) -> Self {
        Inspector {
            policy: Some(policy),
            who,
            counters,
            pins,
            calls,
            answers,
            reserving: false,
            expect_list: false,
            first_use: Vec::new(),
            rereading: false,
            resumable: Vec::new(),
            resumes: None,
        }
    }

    /// An inspector that changes nothing (for bodies on paths that carry no JSON-RPC).
    pub fn passthrough() -> Self {
        Inspector {
            policy: None,
            who: Arc::default(),
            counters: Arc::default(),
            pins: Arc::default(),
            calls: Calls::default(),
            answers: Answers::Elsewhere,
            reserving: false,
            expect_list: false,
            first_use: Vec::new(),
            rereading: false,
            resumable: Vec::new(),
            resumes: None,
        }
    }

    /// Marks that the request listed tools, so its JSON answer is read and filtered.
    pub fn expect_list(&mut self) {
        self.expect_list = true;
    }

    pub fn may_filter(&self) -> bool {
        self.expect_list
    }

    /// Whether a policy pins tools: then every answer that may hold a tool list is read, on
    /// whichever request or stream it comes, as a server may answer a list anywhere.
    pub fn pins_lists(&self) -> bool {
        self.policy.as_ref().is_some_and(|p| p.pinning.is_some())
    }

    /// Whether bytes the proxy cannot read as JSON or SSE may carry a tool list: then, where
    /// tools are pinned, they are withheld.
    pub fn may_hide_a_list(&self, bytes: &[u8]) -> bool {
        self.pins_lists() && may_hold_tools(bytes)
    }

    /// Puts a call in flight with what it reserved; refused, handing the reservation back,
    /// when its id is in flight in the session already.
    pub fn begin(&mut self, id: CallId, reserved: Reserved) -> Result<(), InFlight> {
        let mut calls = self.calls.0.lock();
        if calls.contains_key(&id) {
            return Err(InFlight(reserved));
        }
        self.reserving |= !reserved.is_empty();
        if let Answers::Own(mine) = &mut self.answers {
            mine.push(id.clone());
        }
        calls.insert(id, reserved);
        Ok(())
    }

    /// The call `id` (begun) continues, or may be continued by, a repeat with input: an
    /// `input_required` answer to it is recorded in `resumes` for the repeat.
    pub fn resumable(&mut self, id: CallId, resume: Resume, resumes: &Arc<Resumes>) {
        if let Answers::Own(_) = self.answers {
            self.resumes.get_or_insert_with(|| resumes.clone());
            self.resumable.push((id, resume));
        }
    }

    /// Whether a call with this id is in flight in the session.
    pub fn is_in_flight(&self, id: &CallId) -> bool {
        self.calls.0.lock().contains_key(id)
    }

    /// The client cancelled the call `id`: whatever the server answers now, it keeps its
    /// count (the tool may have run).
    pub fn keep(&self, id: &CallId) {
        if let Some(reserved) = self.calls.0.lock().get_mut(id) {
            drop(std::mem::take(reserved));
        }
    }

    /// Whether an answer may settle a reserved call, so answers are worth reading.
    pub fn is_tracking(&self) -> bool {
        match &self.answers {
            Answers::Own(mine) => {
                (self.reserving && !mine.is_empty()) || !self.resumable.is_empty()
            }
            Answers::Session => !self.calls.is_empty(),
            Answers::Elsewhere => false,
        }
    }

    /// The server was never reached, or refused the whole request (a 4xx answer, read whole):
    /// every call this request began that no answer settled gets its reservation back.
    pub fn refund_all(&mut self) {
        let Answers::Own(mine) = &mut self.answers else {
            return;
        };
        let refunds: Vec<Reserved> = {
            let mut calls = self.calls.0.lock();
            mine.drain(..).filter_map(|id| calls.remove(&id)).collect()
        };
        for r in refunds {
            self.counters.rollback(r);
        }
    }

    /// The answers have ended: calls not answered keep their reservation (they may have run)
    /// and are no longer in flight.
    pub fn finish(&mut self) {
        match &mut self.answers {
            Answers::Own(mine) if !mine.is_empty() => {
                let mut calls = self.calls.0.lock();
                for id in mine.drain(..) {
                    calls.remove(&id);
                }
            }
            // The legacy stream is the session: when it ends, so do its calls.
            Answers::Session => self.calls.0.lock().clear(),
            _ => {}
        }
    }

    /// What the client gets instead of a server message the proxy could not read, when the
    /// message may carry something it must look at (a tool list); `None` lets it pass.
    pub fn unreadable(&self, raw: &[u8], why: &str) -> Option<String> {
        self.policy.as_ref()?;
        let interested =
            self.expect_list || may_hold_tools(raw) || std::str::from_utf8(raw).is_err();
        interested.then(|| unfilterable(None, why))
    }

    /// Inspects a message (or batch) as text; returns new text when it changed.
    pub fn inspect_text(&mut self, text: &str) -> Option<String> {
        self.policy.as_ref()?;
        // Fast path: nothing to settle and no tool list in sight.
        if !self.is_tracking() && !self.expect_list && !may_hold_tools(text) {
            return None;
        }
        // A list in text some reader could read another way cannot be filtered for every
        // reader. (An answer that only settles a call needs no such care: what serde's typed
        // view cannot read refunds nothing.)
        if (self.expect_list || may_hold_tools(text))
            && let Err(e) = crate::mcp::strict::read(text.as_bytes())
        {
            return Some(unfilterable(
                None,
                &format!("its answer is not strictly JSON: {e}"),
            ));
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
            // Strict JSON that is not one JSON-RPC message (a field of the wrong type): a
            // tool list in it cannot be filtered for every reader.
            Err(e) if self.expect_list || may_hold_tools(text) => {
                return Some(unfilterable(None, &e.to_string()));
            }
            Err(_) => return None,
        };
        if view.method.is_some() {
            // A request or notification from the server; one that also carries a tool list
            // (a `method` that is not a string reads to clients as an answer) is never passed.
            if view.result.as_ref().is_some_and(|r| r.tools.is_some()) {
                return Some(unfilterable(
                    view.id,
                    "a message with both a method and a result",
                ));
            }
            return None;
        }
        let result = view.result;
        if let Some(id) = view.id.map(RawValue::get).and_then(CallId::of)
            && !self.rereading
        {
            self.settle(&id);
            if let Some(r) = &result
                && r.asks_for_input()
            {
                self.await_repeat(&id, r.request_state);
            }
        }
        let result = result?;
        if result.tools_twice {
            return Some(unfilterable(view.id, "the result has two `tools` fields"));
        }
        self.filter_tools_list(text, result)
    }

    /// The answer to call `id` arrived: it is no longer in flight, and its reservation stays
    /// spent (no answer proves the tool did not run; see the module's doc).
    fn settle(&mut self, id: &CallId) {
        match &mut self.answers {
            Answers::Own(mine) => match mine.iter().position(|m| m == id) {
                Some(at) => {
                    mine.swap_remove(at);
                }
                None => return, // not this request's call: its own answer settles it
            },
            Answers::Session => {}
            Answers::Elsewhere => return,
        }
        self.calls.0.lock().remove(id);
    }

    /// The server asked for input to finish call `id`: its repeat continues its decision.
    fn await_repeat(&mut self, id: &CallId, state: Option<&RawValue>) {
        let Some(at) = self.resumable.iter().position(|(r, _)| r == id) else {
            return;
        };
        let (_, resume) = self.resumable.swap_remove(at);
        if let Some(resumes) = &self.resumes {
            let state = state.map(super::resume::state_text);
            resumes.record(resume, state.as_deref());
        }
    }

    /// What the list just read waits for, if anything: the cluster pinning its tools on first
    /// use. Once it is done, read the same text again.
    pub fn first_use(&mut self) -> Option<impl Future<Output = ()> + Send + 'static> {
        if self.first_use.is_empty() {
            return None;
        }
        let defs = std::mem::take(&mut self.first_use);
        Some(self.pins.clone().pin_first_use(defs))
    }

    /// Reads a message again once what its list waited for ([`Inspector::first_use`]) is
    /// done: its tool list filtered, nothing settled twice, nothing asked again (what would be
    /// is held).
    pub fn reread(&mut self, text: &str) -> Option<String> {
        self.rereading = true;
        let out = self.inspect_text(text);
        self.rereading = false;
        self.first_use.clear();
        out
    }

    fn filter_tools_list(&mut self, text: &str, result: ResultView<'_>) -> Option<String> {
        let policy = self.policy.as_ref()?;
        let tools = result.tools?;
        // Rules that select tools by annotations decide visibility from the pinned definition,
        // below, not the name alone.
        let by_hints = policy.selects_by_annotation()
            && policy
                .pinning
                .as_ref()
                .is_some_and(|r| r.mode == tollgate_api::PinMode::Enforce);
        let mut visibility = policy.visibility(&self.who);
        let kept: Vec<&RawValue> = tools
            .iter()
            .copied()
            // A tool whose name cannot be read (none, two, not a string) cannot be shown to be
            // visible: it is dropped.
            .filter(|t| {
                tool_name(t.get()).is_some_and(|name| match by_hints {
                    // Not pinned, nor reported, nor counted against the caps: hidden.
                    true => !policy.hidden(&name, &self.who),
                    false => visibility.visible(&name),
                })
            })
            .collect();
        drop(visibility);
        // Pinned: a tool whose definition is not its pin is held back (one that cannot be
        // read as a definition cannot be shown to be pinned).
        let kept: Vec<&RawValue> = match &policy.pinning {
            None => kept,
            Some(rules) => kept
                .into_iter()
                .filter(|t| {
                    let Some(def) = self.pins.definition(t.get()) else {
                        return false;
                    };
                    match self.pins.listed(rules, &def) {
                        Listed::Shown if by_hints => {
                            policy.visible_with(&def.name, Some(def.hints()), &self.who)
                        }
                        Listed::Shown => true,
                        Listed::Held => false,
                        Listed::AskFirstUse => {
                            self.first_use.push((*def).clone());
                            false
                        }
                    }
                })
                .collect(),
        };
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

impl Drop for Inspector {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::calls::Sessions;
    use serde_json::{Value, json};
    use tollgate_api::{DefaultAction, PolicySpec};

    fn request_inspector(
        policy: Arc<Enforced>,
        who: Arc<Identity>,
        counters: Arc<CounterStore>,
    ) -> Inspector {
        Inspector::for_request(policy, who, counters, Arc::default(), Calls::default())
    }

    fn id(raw: &str) -> CallId {
        CallId::of(raw).unwrap()
    }

    fn set(spec: &str) -> Arc<Enforced> {
        let spec: PolicySpec = tollgate_api::load::yaml_from_str(spec).unwrap();
        Arc::new(Enforced::new(
            tollgate_api::PolicySet::compile(1, DefaultAction::Allow, [("p", &spec)]).unwrap(),
        ))
    }

    /// Reserves the quota of an anonymous call of tool `t`, if the policy allows it.
    fn reserve_t(s: &tollgate_api::PolicySet, counters: &CounterStore) -> Option<Reserved> {
        use futures_util::FutureExt;
        let args = json!({});
        let call = tollgate_api::Call::new("t", &args);
        // The pod's own store answers without waiting.
        let counted = counters
            .decide(s, &call, &Identity::anonymous())
            .now_or_never()
            .expect("local counters do not wait");
        match counted.verdict.decision {
            tollgate_api::Decision::Allow { .. } => counted.reserved.ok(),
            _ => None,
        }
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
        let mut i = request_inspector(
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
        let mut i = request_inspector(
            set("default: allow\nhide: [b]\ntools: {}"),
            Arc::default(),
            Arc::default(),
        );
        let text = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"},{"name":"b"},{"title":"nameless"},{"name":7},{"name":"c","inputSchema":{"properties":{"name":{"type":"string"}}}}]}}"#;
        assert_eq!(names(&i.inspect_text(text).unwrap()), ["a", "c"]);
    }

    #[test]
    fn a_list_that_parsers_could_read_differently_is_withheld_never_forwarded() {
        let hide_b = || {
            request_inspector(
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
            "the key \"result\" appears twice",
        );
        withheld(
            r#"{"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"b"}],"tools":[{"name":"a"}]}}"#,
            Value::Null,
            "the key \"tools\" appears twice",
        );
        // Text that is not strictly JSON: some reader might still find the list in it.
        for text in [
            r#"{"result":{"tools":[{"name":"b"}]"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"b","n":NaN}]}}"#,
            "\u{feff}{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"b\"}]}}",
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"b"}]}} {}"#,
        ] {
            let mut i = hide_b();
            i.expect_list();
            let out: Value = serde_json::from_str(&i.inspect_text(text).unwrap()).unwrap();
            assert!(
                out["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("not strictly JSON"),
                "{text}: {out}"
            );
        }
        // A call's answer with a field twice passes as it is, and its call keeps its count.
        let s = set("tools: { t: { rules: [ { name: r, rateLimit: 1/hour } ] } }");
        let counters: Arc<CounterStore> = Arc::default();
        let mut i = request_inspector(s.clone(), Arc::default(), counters.clone());
        i.begin(id("1"), reserve_t(&s, &counters).unwrap()).unwrap();
        assert_eq!(
            i.inspect_text(r#"{"id":1,"id":1,"error":{"code":-32602}}"#),
            None
        );
        drop(i);
        assert!(
            reserve_t(&s, &counters).is_none(),
            "an unreadable answer refunds nothing"
        );
    }

    #[test]
    fn lists_filtered_per_caller_are_marked_private() {
        let spec = "default: deny\nsubjects: [ { subject: bob } ]\ntools: { a: { rules: [] } }";
        let mut i = request_inspector(
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
    fn no_answer_gives_a_count_back_not_even_an_error_a_server_gives_before_running() {
        let s = set("tools: { t: { rules: [ { name: r, rateLimit: 1/hour } ] } }");
        // Answers call "1" with `answer`; returns whether the quota came back.
        let refunded = |answer: &str| {
            let counters: Arc<CounterStore> = Arc::default();
            let mut i = request_inspector(s.clone(), Arc::default(), counters.clone());
            i.begin(id("1"), reserve_t(&s, &counters).unwrap()).unwrap();
            let text = format!(r#"{{"jsonrpc":"2.0","id":1,{answer}}}"#);
            assert_eq!(i.inspect_text(&text), None, "{answer}: nothing to filter");
            assert!(!i.is_tracking(), "{answer}: the call is settled");
            drop(i);
            reserve_t(&s, &counters).is_some()
        };
        // The SDKs pass a tool's own error through with the code it raised: a tool that acted
        // and then raised any of these is indistinguishable from a refusal before running.
        for code in [-32700, -32600, -32601, -32602] {
            let answer = format!(r#""error":{{"code":{code},"message":"no"}}"#);
            assert!(!refunded(&answer), "{answer}: a tool may have raised it");
        }
        for ran in [
            r#""result":{"content":[],"isError":true}"#,
            r#""result":{"tools":{"a":1},"isError":true}"#,
            r#""result":{"content":[]}"#,
            r#""result":"text""#,
            r#""result":[1,2]"#,
            r#""result":null"#,
            r#""result":{"isError":"yes","tools":3}"#,
            r#""error":{"code":-32603,"message":"boom"}"#,
            r#""error":{"code":0,"message":"Request cancelled"}"#,
            r#""error":{"code":-32602.5}"#,
            r#""error":{"code":"-32602"}"#,
            r#""error":"-32602""#,
        ] {
            assert!(!refunded(ran), "{ran}: the tool may have run, so it counts");
        }
    }

    #[test]
    fn only_the_answer_to_the_calls_a_request_began_settles_them() {
        let s = set("tools: { t: { rules: [ { name: r, rateLimit: 1/hour } ] } }");
        let counters: Arc<CounterStore> = Arc::default();
        let session = Calls::default();
        let mut first = Inspector::for_request(
            s.clone(),
            Arc::default(),
            counters.clone(),
            Arc::default(),
            session.clone(),
        );
        first
            .begin(id("7"), reserve_t(&s, &counters).unwrap())
            .unwrap();
        // A second request of the session may not reuse the id while it is in flight, in any
        // spelling a server reads as the same id.
        let mut second = Inspector::for_request(
            s.clone(),
            Arc::default(),
            counters.clone(),
            Arc::default(),
            session.clone(),
        );
        for same in ["7", "7.0", "7e0", "70e-1"] {
            assert!(second.is_in_flight(&id(same)), "{same}");
            assert!(
                second.begin(id(same), Reserved::default()).is_err(),
                "{same}"
            );
        }
        assert!(
            !second.is_in_flight(&id(r#""7""#)),
            "a string is another id"
        );
        // An error on another request's stream with that id settles nothing.
        second.begin(id("8"), Reserved::default()).unwrap();
        second.inspect_text(r#"{"jsonrpc":"2.0","id":7,"error":{"code":-32602}}"#);
        drop(second);
        assert!(first.is_in_flight(&id("7")));
        assert!(
            reserve_t(&s, &counters).is_none(),
            "the quota is still spent"
        );
        // The answer on its own response does settle it, and the count stays spent.
        first.inspect_text(r#"{"jsonrpc":"2.0","id":7.0,"error":{"code":-32602}}"#);
        assert!(!first.is_in_flight(&id("7")));
        assert!(reserve_t(&s, &counters).is_none(), "answered, so counted");
    }

    #[test]
    fn a_cancelled_call_keeps_its_count_whatever_the_server_answers() {
        let s = set("tools: { t: { rules: [ { name: r, rateLimit: 1/hour } ] } }");
        let counters: Arc<CounterStore> = Arc::default();
        let mut i = request_inspector(s.clone(), Arc::default(), counters.clone());
        i.begin(id(r#""a""#), reserve_t(&s, &counters).unwrap())
            .unwrap();
        i.keep(&id(r#""\u0061""#));
        i.inspect_text(r#"{"jsonrpc":"2.0","id":"a","error":{"code":-32602}}"#);
        assert!(reserve_t(&s, &counters).is_none());
    }

    #[test]
    fn calls_never_answered_end_with_their_request_and_keep_their_count() {
        let s = set("tools: { t: { rules: [ { name: r, rateLimit: 1/hour } ] } }");
        let counters: Arc<CounterStore> = Arc::default();
        let session = Calls::default();
        let mut i = Inspector::for_request(
            s.clone(),
            Arc::default(),
            counters.clone(),
            Arc::default(),
            session.clone(),
        );
        i.begin(id("1"), reserve_t(&s, &counters).unwrap()).unwrap();
        drop(i);
        assert!(session.is_empty(), "no longer in flight");
        assert!(reserve_t(&s, &counters).is_none(), "and still counted");
        // A 4xx or an unreachable server refunds every call the request began.
        let mut i = Inspector::for_request(
            s.clone(),
            Arc::default(),
            counters.clone(),
            Arc::default(),
            session.clone(),
        );
        let counters2: Arc<CounterStore> = Arc::default();
        let mut j = Inspector::for_request(
            s.clone(),
            Arc::default(),
            counters2.clone(),
            Arc::default(),
            Calls::default(),
        );
        j.begin(id("2"), reserve_t(&s, &counters2).unwrap())
            .unwrap();
        j.refund_all();
        assert!(reserve_t(&s, &counters2).is_some());
        i.finish();
    }

    #[test]
    fn sessions_share_their_calls_and_are_forgotten_when_nothing_holds_them() {
        let sessions = Sessions::default();
        let a = sessions.calls("a");
        let s = set("tools: {}");
        let mut i = Inspector::for_request(
            s.clone(),
            Arc::default(),
            Arc::default(),
            Arc::default(),
            a.clone(),
        );
        i.begin(id("1"), Reserved::default()).unwrap();
        let j = Inspector::for_request(
            s.clone(),
            Arc::default(),
            Arc::default(),
            Arc::default(),
            sessions.calls("a"),
        );
        assert!(j.is_in_flight(&id("1")));
        assert!(
            !Inspector::for_request(
                s,
                Arc::default(),
                Arc::default(),
                Arc::default(),
                sessions.calls("b")
            )
            .is_in_flight(&id("1"))
        );
        drop((i, j, a));
        for n in 0..1000 {
            drop(sessions.calls(&format!("s{n}")));
        }
        assert!(
            sessions.0.lock().len() <= 128,
            "{}",
            sessions.0.lock().len()
        );
    }
}
