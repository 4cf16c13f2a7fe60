//! What deciding takes and gives: the caller, the call, counters, and the decision.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::resources::{CountersUnavailable, DenyAs, Scope, Window};

/// How long an `approve` rule holds a call when the policy does not say: under the 60 s most MCP
/// clients wait for an answer, so the agent hears the approval's name rather than a timeout.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an approval lasts when the policy does not say.
pub const DEFAULT_APPROVAL_VALID_FOR: Duration = Duration::from_secs(3600);

/// Who is calling, as the sidecar established it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Identity {
    /// The verified token's `sub`, if any.
    pub subject: Option<String>,
    /// `NAMESPACE/NAME` for a Kubernetes service account token.
    pub service_account: Option<String>,
    /// The verified token's claims.
    pub claims: serde_json::Map<String, Value>,
}

impl Identity {
    /// A caller that presented no token.
    pub fn anonymous() -> Self {
        Identity::default()
    }

    /// A caller known by subject only (the `check` command's `--identity`).
    pub fn subject(sub: impl Into<String>) -> Self {
        let sub = sub.into();
        let service_account = sub
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
            .map(|(ns, name)| format!("{ns}/{name}"));
        Identity {
            subject: Some(sub),
            service_account,
            claims: Default::default(),
        }
    }

    /// The key `scope: identity` counts under.
    pub fn key(&self) -> &str {
        self.subject.as_deref().unwrap_or("anonymous")
    }
}

/// One call to decide. `args: None` asks whether the tool could be called at all (listing).
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    pub tool: &'a str,
    pub args: Option<&'a Value>,
    pub session: Option<&'a str>,
    /// The hints of the tool's pinned definition, where it is pinned and listed matching its
    /// pin: what `spec.annotated` selects by. `None`: no annotated entry applies.
    pub hints: Option<crate::Hints>,
}

impl<'a> Call<'a> {
    pub fn new(tool: &'a str, args: &'a Value) -> Self {
        Call {
            tool,
            args: Some(args),
            session: None,
            hints: None,
        }
    }
}

/// Reads counters' current values; the sidecar's stores implement it, the `check` command
/// uses [`NoCounters`].
///
/// Deciding asks in two ways, so that a store which only has a recent copy of its values (a
/// shared one, read in the same round trip that reserves) can check afterwards what each
/// answer was used for: a `state.` condition's value, or whether a limit has room.
pub trait Counters {
    /// The value of `counter`'s `key` in its current window (a `state.` condition).
    fn current(&self, key: &CounterKey, counter: &CounterName) -> u64;

    /// Whether `amount` more keeps `key` within `max` (a limit, before it reserves).
    fn fits(&self, key: &CounterKey, counter: &CounterName, amount: u64, max: u64) -> bool {
        self.current(key, counter).saturating_add(amount) <= max
    }
}

/// Every counter at zero.
pub struct NoCounters;

impl Counters for NoCounters {
    fn current(&self, _: &CounterKey, _: &CounterName) -> u64 {
        0
    }
}

/// Identifies one counter's value for one caller or session: built by [`CounterName::key`]
/// alone, so a limit and a `state.` condition on the same counter read one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CounterKey(pub Arc<str>);

impl CounterKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One counter of one policy: the policy, the tool entry it counts for, its name, and how it
/// is counted. The one constructor of [`CounterKey`]s: `policy|entry|counter|` and then `g`,
/// `i:<who>` or `s:<session>` by its scope.
#[derive(Clone, Debug)]
pub struct CounterName {
    /// The key without its scope part.
    prefix: Arc<str>,
    /// The whole key for `scope: global`, shared by every call.
    global: CounterKey,
    pub scope: Scope,
    pub window: Window,
    /// The policy it belongs to, and what its calls get while a shared store cannot answer.
    pub policy: Arc<str>,
    pub unavailable: CountersUnavailable,
}

impl CounterName {
    pub fn new(
        policy: &str,
        entry: &str,
        counter: &str,
        scope: Scope,
        window: Window,
        unavailable: CountersUnavailable,
    ) -> Self {
        let prefix = format!("{policy}|{entry}|{counter}|");
        CounterName {
            global: CounterKey(format!("{prefix}g").into()),
            prefix: prefix.into(),
            scope,
            window,
            policy: policy.into(),
            unavailable,
        }
    }

    /// The key this call counts under.
    pub fn key(&self, call: &Call<'_>, who: &Identity) -> CounterKey {
        let (tag, whose) = match self.scope {
            Scope::Global => return self.global.clone(),
            Scope::Identity | Scope::Grant => ("i:", who.key()),
            // A call in no session the server bound (a stateless server, the 2026-07-28 era,
            // an id the server never issued) counts per caller: never looser than a session.
            Scope::Session => match call.session {
                Some(session) => ("s:", session),
                None => ("si:", who.key()),
            },
        };
        let mut key = String::with_capacity(self.prefix.len() + tag.len() + whose.len());
        key.push_str(&self.prefix);
        key.push_str(tag);
        key.push_str(whose);
        CounterKey(key.into())
    }
}

/// What an allowed call adds to a counter.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    pub key: CounterKey,
    pub window: Window,
    pub amount: u64,
    /// `None`: the counter only counts.
    pub max: Option<u64>,
    /// The denial to give if the counter turns out full when reserving (built once, at compile).
    pub on_full: Arc<Denial>,
    /// What the call gets while a shared store cannot answer (its policy's choice).
    #[serde(skip)]
    pub unavailable: CountersUnavailable,
}

/// Why a call is refused.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Denial {
    /// The policy that refused, e.g. `mcppolicy/team-a/github`.
    pub policy: String,
    /// The rule that refused, or `(hidden)` / `(default deny)`.
    pub rule: String,
    /// What the agent is told.
    pub reason: String,
    #[serde(skip)]
    pub deny_as: DenyAs,
}

/// The outcome for one call.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "decision", rename_all = "camelCase")]
pub enum Decision {
    Allow {
        reservations: Vec<Reservation>,
    },
    Deny(Denial),
    /// Hold for a person; reserve when it is approved.
    Approve {
        policy: String,
        rule: String,
        /// How long the call is held.
        #[serde(with = "duration_secs")]
        timeout: Duration,
        /// How long the approval lasts (undecided: from the call; approved: from the decision).
        #[serde(with = "duration_secs")]
        valid_for: Duration,
        /// The argument paths the person deciding is shown.
        show: Vec<String>,
        reservations: Vec<Reservation>,
    },
}

mod duration_secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// The decision plus what audit-mode policies would have refused.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub decision: Decision,
    /// Set when a policy in audit mode would have denied a call that is let through.
    pub audit: Option<Denial>,
}
