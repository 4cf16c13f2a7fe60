//! Multi-round-trip requests (MCP 2026-07-28): a server that needs input to finish a call
//! answers `resultType: "input_required"`, and the client repeats the call, as a new request
//! with a new id, carrying the input (`inputResponses`) and the server's `requestState`. The
//! repeat continues the call the proxy already decided: it is neither counted again nor held
//! for a second approval.
//!
//! ```text
//! tools/call #1 ─ decided: allow, 1 counted ─> server ─> input_required, requestState S
//!                                               └ recorded: (caller, tool, args, S) ─> the decision
//! tools/call #2 (same caller, tool, args; S; inputResponses)
//!   ├ recorded, same policy revision ─> forwarded, nothing counted; the record is used up
//!   └ anything else (other arguments, another caller, a made-up S, a new policy) ─> decided afresh
//! ```
//!
//! A repeat is bound to its decision by everything the decision read (who calls, which tool,
//! with what arguments) and by the server's own state; the server still verifies that state
//! itself. Records are kept for [`TTL`] and at most [`CAP`] at once: one that cannot be kept
//! only means its repeat is decided (and counted) afresh.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// How long a client has to repeat a call with its input: a person may be answering.
pub const TTL: Duration = Duration::from_secs(15 * 60);
/// How many calls may wait for their repeat at once.
pub const CAP: usize = 16_384;
/// How many of one caller's calls may wait for their repeat at once.
pub const PER_CALLER: usize = 256;
/// How long after its first decision a call may still be continued, however many rounds its
/// server asks for.
pub const SPAN: Duration = Duration::from_secs(60 * 60);

/// A decided call whose answer may ask for input: what its repeat must match.
#[derive(Clone, Debug)]
pub struct Resume {
    /// The digest of the caller, method, tool and arguments.
    base: [u8; 32],
    /// Whose call it is (a digest of the caller), so that one caller's records cannot crowd
    /// out another's.
    caller: u64,
    /// When the call was first decided: its repeats continue it for at most [`SPAN`].
    since: Instant,
    /// The policy revision that decided it.
    revision: u64,
    /// The rule and policy the decision named, for the repeat's audit line.
    pub rule: Option<String>,
    pub policy: Option<String>,
}

impl Resume {
    pub fn new(
        caller: &str,
        method: &str,
        tool: &str,
        args: &Value,
        revision: u64,
        rule: Option<String>,
        policy: Option<String>,
    ) -> Self {
        let mut d = ring::digest::Context::new(&ring::digest::SHA256);
        // Each part ends with a NUL, which none of them holds unescaped (arguments are
        // written as JSON, with sorted keys).
        for part in [caller, method, tool] {
            d.update(part.as_bytes());
            d.update(b"\0");
        }
        d.update(decided_arguments(method, args).to_string().as_bytes());
        let mut base = [0; 32];
        base.copy_from_slice(d.finish().as_ref());
        Resume {
            base,
            caller: foldhash::quality::FixedState::with_seed(0).hash_one(caller),
            since: Instant::now(),
            revision,
            rule,
            policy,
        }
    }

    fn key(&self, state: Option<&str>) -> [u8; 32] {
        let mut d = ring::digest::Context::new(&ring::digest::SHA256);
        d.update(&self.base);
        match state {
            Some(s) => {
                d.update(b"s");
                d.update(s.as_bytes());
            }
            None => d.update(b"-"),
        }
        let mut key = [0; 32];
        key.copy_from_slice(d.finish().as_ref());
        key
    }
}

/// What of a call's arguments a repeat must match: a `resources/read` is decided on its whole
/// params, of which `_meta`, `requestState` and `inputResponses` change between rounds.
fn decided_arguments<'a>(method: &str, args: &'a Value) -> std::borrow::Cow<'a, Value> {
    match (method, args) {
        ("resources/read", Value::Object(params))
            if ["_meta", "requestState", "inputResponses"]
                .iter()
                .any(|k| params.contains_key(*k)) =>
        {
            let mut params = params.clone();
            for k in ["_meta", "requestState", "inputResponses"] {
                params.remove(k);
            }
            std::borrow::Cow::Owned(Value::Object(params))
        }
        _ => std::borrow::Cow::Borrowed(args),
    }
}

struct Entry {
    expires: Instant,
    resume: Resume,
}

/// The records, with the order they were made in, overall and per caller.
#[derive(Default)]
struct Inner {
    map: HashMap<[u8; 32], Entry, RandomState>,
    /// Oldest first; may hold keys already taken (skipped, and pruned as it grows).
    order: VecDeque<[u8; 32]>,
    /// Each caller's keys, oldest first.
    by_caller: HashMap<u64, VecDeque<[u8; 32]>, RandomState>,
}

impl Inner {
    fn remove(&mut self, key: &[u8; 32]) -> Option<Entry> {
        let entry = self.map.remove(key)?;
        if let Some(keys) = self.by_caller.get_mut(&entry.resume.caller) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.by_caller.remove(&entry.resume.caller);
            }
        }
        Some(entry)
    }

    /// Makes room for one more record: the oldest goes.
    fn evict_oldest(&mut self) {
        while let Some(key) = self.order.pop_front() {
            if self.remove(&key).is_some() {
                return;
            }
        }
    }
}

/// The calls waiting for their repeat, proxy-wide. Bounded twice: [`CAP`] records, the oldest
/// making way for the newest, and [`PER_CALLER`] per caller, that caller's oldest making way,
/// so that no caller can crowd out another's repeats.
#[derive(Default)]
pub struct Resumes(Mutex<Inner>);

impl Resumes {
    /// The server asked for input to finish `resume`'s call, with `state`.
    pub fn record(&self, resume: Resume, state: Option<&str>) {
        let key = resume.key(state);
        let caller = resume.caller;
        let mut inner = self.0.lock();
        let inner = &mut *inner;
        inner.remove(&key);
        if inner
            .by_caller
            .get(&caller)
            .is_some_and(|keys| keys.len() >= PER_CALLER)
            && let Some(oldest) = inner
                .by_caller
                .get(&caller)
                .and_then(|k| k.front().copied())
        {
            inner.remove(&oldest);
        }
        if inner.map.len() >= CAP {
            inner.evict_oldest();
        }
        if inner.order.len() >= 2 * CAP {
            let map = &inner.map;
            inner.order.retain(|k| map.contains_key(k));
        }
        inner.map.insert(
            key,
            Entry {
                expires: Instant::now() + TTL,
                resume,
            },
        );
        inner.order.push_back(key);
        inner.by_caller.entry(caller).or_default().push_back(key);
    }

    /// The decision a repeat continues, used up; `None` when it continues none, under the
    /// policy in force, that the proxy knows of.
    pub fn take(&self, asked: &Resume, state: Option<&str>) -> Option<Resume> {
        let entry = self.0.lock().remove(&asked.key(state))?;
        (entry.expires > Instant::now()
            && entry.resume.since.elapsed() < SPAN
            && entry.resume.revision == asked.revision)
            .then_some(entry.resume)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().map.len()
    }
}

/// What a request's params say of a repeat: whether it carries input or state, and the state.
pub struct Repeat {
    pub state: Option<String>,
}

#[derive(Deserialize)]
struct RepeatView<'a> {
    #[serde(default, borrow, rename = "requestState")]
    request_state: Option<&'a RawValue>,
    #[serde(default, borrow, rename = "inputResponses")]
    input_responses: Option<&'a RawValue>,
}

/// The repeat a call's params make, if they carry `requestState` or `inputResponses`.
pub fn repeat(params: Option<&str>) -> Option<Repeat> {
    let p = params?;
    // Names spelled with escapes have a backslash.
    if !(p.contains("requestState") || p.contains("inputResponses") || p.contains('\\')) {
        return None;
    }
    let view: RepeatView<'_> = serde_json::from_str(p).ok()?;
    if view.request_state.is_none() && view.input_responses.is_none() {
        return None;
    }
    Some(Repeat {
        state: view.request_state.map(state_text),
    })
}

/// `requestState` as the text it carries (a string) or, for any other value, its JSON text
/// marked apart, so that `"1"` and `1` are different states.
pub fn state_text(raw: &RawValue) -> String {
    match serde_json::from_str::<String>(raw.get()) {
        Ok(s) => s,
        Err(_) => format!("\0json:{}", raw.get()),
    }
}

/// The `requestState` of Tollgate's own `input_required` result for a held call: the client's
/// repeat carries it back. It carries no authority (the approval store decides the repeat, as it
/// decides any call), so it needs no seal; it is taken off before the call goes on, as the
/// server never issued it.
pub const APPROVAL_STATE: &str = "tollgate.dev/approval/";
/// The key of Tollgate's input request in that result.
pub const APPROVAL_INPUT: &str = "tollgate.dev/approval";

impl Repeat {
    /// Whether it repeats a call Tollgate itself answered `input_required` (an approval).
    pub fn is_ours(&self) -> bool {
        self.state
            .as_deref()
            .is_some_and(|s| s.starts_with(APPROVAL_STATE))
    }
}

#[derive(Deserialize)]
struct CapabilitiesView<'a> {
    #[serde(default, borrow, rename = "_meta")]
    meta: Option<MetaView<'a>>,
}

#[derive(Deserialize)]
struct MetaView<'a> {
    #[serde(default, borrow, rename = "io.modelcontextprotocol/clientCapabilities")]
    capabilities: Option<Capabilities<'a>>,
}

#[derive(Deserialize)]
struct Capabilities<'a> {
    #[serde(default, borrow)]
    elicitation: Option<Elicitation<'a>>,
}

#[derive(Deserialize)]
struct Elicitation<'a> {
    #[serde(default, borrow)]
    url: Option<&'a RawValue>,
}

/// Whether a 2026-07-28 request's client declares URL elicitation (it can send a person to a
/// page and repeat the call after).
pub fn opens_urls(params: Option<&str>) -> bool {
    params
        .and_then(|p| serde_json::from_str::<CapabilitiesView<'_>>(p).ok())
        .and_then(|v| v.meta?.capabilities?.elicitation?.url)
        .is_some_and(|url| url.get().starts_with('{'))
}

/// A call repeated with Tollgate's own state, as it goes to the server: the same message without
/// `requestState` and `inputResponses`. `None` when it carries no state of Tollgate's.
pub fn without_our_state(raw: &str) -> Option<String> {
    let mut m: Value = serde_json::from_str(raw).ok()?;
    let params = m.get_mut("params")?.as_object_mut()?;
    let ours = params
        .get("requestState")
        .and_then(Value::as_str)
        .is_some_and(|s| s.starts_with(APPROVAL_STATE));
    if !ours {
        return None;
    }
    params.remove("requestState");
    params.remove("inputResponses");
    Some(m.to_string())
}

/// Tollgate's answer to a held call whose client opens URLs: `input_required`, asking it to send
/// a person to where approval `name` is decided, and to repeat the call after.
pub fn approval_at_url(id: Value, tool: &str, name: &str, rule: &str, url: &str) -> Value {
    let url = url.replace("{name}", name);
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "result": {
            "resultType": "input_required",
            "inputRequests": {
                APPROVAL_INPUT: {
                    "method": "elicitation/create",
                    "params": {
                        "mode": "url",
                        "message": format!(
                            "Tool {tool:?} needs a person's approval (rule {rule:?}). Approval {name} waits at {url}; repeat the call once it is approved."
                        ),
                        "url": url,
                    },
                },
            },
            "requestState": format!("{APPROVAL_STATE}{name}"),
        },
    })
}

/// How the id of Tollgate's own `elicitation/create` begins, as JSON text (2025-11-25).
pub const APPROVAL_ELICITATION_ID: &str = "\"tollgate.dev/approval/";

/// Whether an `initialize` declares URL elicitation (`capabilities.elicitation.url`).
pub fn initialize_opens_urls(params: Option<&str>) -> bool {
    #[derive(Deserialize)]
    struct Init<'a> {
        #[serde(default, borrow)]
        capabilities: Option<Capabilities<'a>>,
    }
    params
        .and_then(|p| serde_json::from_str::<Init<'_>>(p).ok())
        .and_then(|i| i.capabilities?.elicitation?.url)
        .is_some_and(|url| url.get().starts_with('{'))
}

/// Tollgate's `elicitation/create` in URL mode, sent on a held call's stream (2025-11-25): the
/// client sends its person to where approval `name` is decided.
pub fn elicit_approval(name: &str, tool: &str, rule: &str, url: &str) -> Value {
    let url = url.replace("{name}", name);
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": format!("{APPROVAL_STATE}{name}"),
        "method": "elicitation/create",
        "params": {
            "mode": "url",
            "elicitationId": name,
            "message": format!(
                "Tool {tool:?} needs a person's approval (rule {rule:?}). Approval {name} waits at {url}; the call goes on once it is approved."
            ),
            "url": url,
        },
    })
}

/// The notification that approval `name`'s page has done its work (2025-11-25).
pub fn approval_complete(name: &str) -> Value {
    serde_json::json!({
        "jsonrpc": "2.0",
        "method": "notifications/elicitation/complete",
        "params": { "elicitationId": name },
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn resume(args: Value, revision: u64) -> Resume {
        Resume::new("alice", "tools/call", "deploy", &args, revision, None, None)
    }

    #[test]
    fn a_repeat_continues_its_call_once_and_only_with_the_same_caller_tool_arguments_and_state() {
        let r = Resumes::default();
        r.record(resume(json!({"env": "prod"}), 1), Some("S1"));
        // Another state, other arguments, another caller, another revision: none continue.
        assert!(
            r.take(&resume(json!({"env": "prod"}), 1), Some("S2"))
                .is_none()
        );
        assert!(
            r.take(&resume(json!({"env": "dev"}), 1), Some("S1"))
                .is_none()
        );
        let bob = Resume::new(
            "bob",
            "tools/call",
            "deploy",
            &json!({"env": "prod"}),
            1,
            None,
            None,
        );
        assert!(r.take(&bob, Some("S1")).is_none());
        assert!(r.take(&resume(json!({"env": "prod"}), 1), None).is_none());
        assert!(
            r.take(&resume(json!({"env": "prod"}), 1), Some("S1"))
                .is_some()
        );
        assert!(
            r.take(&resume(json!({"env": "prod"}), 1), Some("S1"))
                .is_none(),
            "used once"
        );
        r.record(resume(json!({}), 1), None);
        assert!(
            r.take(&resume(json!({}), 2), None).is_none(),
            "a new policy decides afresh"
        );
    }

    #[test]
    fn arguments_match_whatever_order_their_keys_came_in() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":{"d":2,"c":3}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b":{"c":3,"d":2},"a":1}"#).unwrap();
        let r = Resumes::default();
        r.record(resume(a, 1), Some("s"));
        assert!(r.take(&resume(b, 1), Some("s")).is_some());
    }

    #[test]
    fn a_repeat_is_read_from_its_params_even_spelled_with_escapes() {
        assert!(repeat(Some(r#"{"name":"t","arguments":{}}"#)).is_none());
        let r = repeat(Some(r#"{"name":"t","requestState":"abc"}"#)).unwrap();
        assert_eq!(r.state.as_deref(), Some("abc"));
        let r = repeat(Some(r#"{"name":"t","request\u0053tate":"a\/b"}"#)).unwrap();
        assert_eq!(r.state.as_deref(), Some("a/b"));
        let r = repeat(Some(r#"{"name":"t","inputResponses":{"x":{}}}"#)).unwrap();
        assert_eq!(r.state, None);
        let n = repeat(Some(r#"{"requestState":1}"#)).unwrap();
        assert_ne!(n.state.as_deref(), Some("1"));
    }

    #[test]
    fn a_repeat_of_tollgates_own_answer_goes_on_without_its_state_and_only_that() {
        let ours = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"deploy","arguments":{"env":"prod"},"requestState":"tollgate.dev/approval/a1","inputResponses":{"tollgate.dev/approval":{"action":"accept"}}}}"#;
        let sent: Value = serde_json::from_str(&without_our_state(ours).unwrap()).unwrap();
        assert_eq!(
            sent["params"],
            json!({"name": "deploy", "arguments": {"env": "prod"}})
        );
        let servers = ours.replace("tollgate.dev/approval/a1", "v1.sealed");
        assert_eq!(
            without_our_state(&servers),
            None,
            "the server's state goes on"
        );
        let caps = |c: &str| {
            opens_urls(Some(&format!(
                r#"{{"_meta":{{"io.modelcontextprotocol/clientCapabilities":{c}}}}}"#
            )))
        };
        assert!(caps(r#"{"elicitation":{"form":{},"url":{}}}"#));
        assert!(!caps(r#"{"elicitation":{"form":{}}}"#));
        assert!(!caps(r#"{}"#));
        assert!(!caps(r#"{"elicitation":{"url":true}}"#));
    }

    #[test]
    fn a_2025_session_opens_urls_only_when_its_initialize_declares_url_elicitation() {
        let init = |caps: &str| {
            initialize_opens_urls(Some(&format!(
                r#"{{"protocolVersion":"2025-11-25","capabilities":{caps},"clientInfo":{{"name":"a","version":"1"}}}}"#
            )))
        };
        assert!(init(r#"{"elicitation":{"form":{},"url":{}}}"#));
        assert!(!init(r#"{"elicitation":{}}"#));
        assert!(!init(r#"{}"#));
        let asked = elicit_approval(
            "deploy-1",
            "deploy",
            "a person decides",
            "https://a.example/{name}",
        );
        assert_eq!(asked["id"], "tollgate.dev/approval/deploy-1");
        assert_eq!(asked["params"]["url"], "https://a.example/deploy-1");
        assert_eq!(asked["params"]["elicitationId"], "deploy-1");
        assert!(asked["id"].to_string().starts_with(APPROVAL_ELICITATION_ID));
    }

    #[test]
    fn the_oldest_records_make_way_and_no_caller_crowds_out_another() {
        let r = Resumes::default();
        let of = |who: &str, i: usize| {
            Resume::new(who, "tools/call", "t", &json!({ "i": i }), 1, None, None)
        };
        r.record(of("victim", 0), Some("v"));
        // One caller making records without end keeps only its newest PER_CALLER.
        for i in 0..PER_CALLER * 4 {
            r.record(of("flood", i), None);
        }
        assert_eq!(r.len(), PER_CALLER + 1);
        assert!(
            r.take(&of("flood", 0), None).is_none(),
            "its oldest made way"
        );
        assert!(r.take(&of("flood", PER_CALLER * 4 - 1), None).is_some());
        assert!(
            r.take(&of("victim", 0), Some("v")).is_some(),
            "untouched by the flood"
        );
        // Many callers: the store stays within CAP, the oldest making way.
        for i in 0..CAP + 10 {
            r.record(of(&format!("c{i}"), i), None);
        }
        assert_eq!(r.len(), CAP);
        assert!(r.take(&of("c0", 0), None).is_none());
        assert!(
            r.take(&of(&format!("c{}", CAP + 9), CAP + 9), None)
                .is_some()
        );
    }

    #[test]
    fn a_resource_read_repeat_matches_whatever_meta_state_and_input_it_carries() {
        let first = json!({"uri": "secret://a", "_meta": {"x": 1}});
        let again = json!({"uri": "secret://a", "_meta": {"x": 2}, "requestState": "S", "inputResponses": {}});
        let of = |p: &Value| {
            Resume::new(
                "a",
                "resources/read",
                "resource:secret://a",
                p,
                1,
                None,
                None,
            )
        };
        let r = Resumes::default();
        r.record(of(&first), Some("S"));
        assert!(r.take(&of(&again), Some("S")).is_some());
        // Other params still make another read.
        r.record(of(&first), Some("S"));
        assert!(
            r.take(&of(&json!({"uri": "secret://a", "mode": "x"})), Some("S"))
                .is_none()
        );
    }
}
