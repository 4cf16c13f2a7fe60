//! Rate-limit counters: calendar-aligned UTC windows, reserved when a call is allowed and
//! rolled back when the server answers that it did not run it. In this pod's memory
//! ([`local`], the default), or shared by every replica in Redis ([`shared`]) with the same
//! semantics.
//!
//! ```text
//! CounterStore::decide(set, call, who)
//!   local:  set.decide(.., &local) ── Allow ── local.reserve_all ── Ok(Reserved) | Err(full)
//!   shared: set.decide(.., &Recorder) ─ what it read, what it allows ─> one script in Redis:
//!             the values read still hold? ── no ──> decide again on the values it sent back
//!             └─ yes: reserve all or none ── Ok(Reserved) | Err(full)
//!           Redis away or too slow: each policy's `countersUnavailable`: deny | local
//! ```
//!
//! A decision reads counters in two ways (see [`Counters`]): a `state.` condition's value,
//! and whether a limit has room. The shared store answers both from the values its last
//! replies carried, then has Redis check, in the round trip that reserves, that each answer
//! still holds; a limit that had room and is reserved in the same step needs no check, as the
//! reservation itself refuses a full counter. So a call costs one round trip, and a second only
//! when a value it read changed meanwhile.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tollgate_api::{
    Call, CounterKey, CounterName, Counters, Decision, Denial, DenyAs, Identity, PolicySet,
    Reservation, Verdict, Window,
};

pub mod local;
pub mod shared;

use local::LocalCounters;
use shared::{Check, Read, Reply, Shared};

/// Counters for this workload.
#[derive(Default)]
pub struct CounterStore {
    local: LocalCounters,
    shared: Option<Arc<Shared>>,
}

/// One counter a call took from, to give back if the call fails.
#[derive(Debug, Clone)]
pub struct Taken {
    pub key: CounterKey,
    pub window: Window,
    /// The window it was taken in (seconds since the epoch, by the store's clock).
    pub start: u64,
    pub amount: u64,
}

/// What was reserved for one call, to roll back if the call fails.
#[derive(Debug, Default)]
pub struct Reserved {
    taken: Vec<Taken>,
    /// In the shared store (else in this pod's).
    shared: bool,
}

impl Reserved {
    pub fn is_empty(&self) -> bool {
        self.taken.is_empty()
    }
}

/// A call decided, and what its decision reserved.
/// Whether a person approved the call being decided.
#[derive(Clone, Copy, PartialEq)]
enum Approved {
    No,
    Yes,
}

impl Approved {
    /// What a decision reserves: an allowed call's counters, and an approved one's.
    fn reserves(self, decision: &Decision) -> &[Reservation] {
        match decision {
            Decision::Allow { reservations } => reservations,
            Decision::Approve { reservations, .. } if self == Approved::Yes => reservations,
            _ => &[],
        }
    }
}

pub struct Counted {
    pub verdict: Verdict,
    /// For an allowed call: what it reserved, or the denial of the counter that was full.
    /// Empty for any other decision.
    pub reserved: Result<Reserved, Denial>,
}

impl Counted {
    /// A call denied before any counter was asked.
    pub fn denied(denial: Denial) -> Self {
        Counted {
            verdict: denied(denial),
            reserved: Ok(Reserved::default()),
        }
    }
}

/// How many times a call is decided again when the values it read changed before Redis saw
/// them; past it, the call is denied (a counter changing that fast is not read with certainty).
const ATTEMPTS: usize = 5;

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn window_start(window: Window, now: u64) -> u64 {
    now - now % window.seconds()
}

impl CounterStore {
    /// Counters in this pod, their windows read from `clock` (a test's, for `tollgate test`).
    pub fn with_clock(clock: crate::clock::Clock) -> Self {
        CounterStore {
            local: LocalCounters::with_clock(clock),
            shared: None,
        }
    }

    /// Counters shared in Redis (see [`Shared`]); the pod's own store is kept for the policies
    /// that count locally while Redis is away.
    pub fn shared(shared: Arc<Shared>) -> Self {
        CounterStore {
            local: LocalCounters::default(),
            shared: Some(shared),
        }
    }

    /// Decides `call` and reserves what the decision allows.
    pub async fn decide(&self, set: &PolicySet, call: &Call<'_>, who: &Identity) -> Counted {
        self.decide_as(set, call, who, Approved::No).await
    }

    /// Decides again a call a person approved, as it goes on: the policy in force now, the
    /// conditions that read counters and the limits, checked and reserved at once (in Redis, in
    /// one script), as for any call. An `approve` rule that still applies counts as allowed
    /// (the person decided it); anything that denies now denies.
    pub async fn decide_approved(
        &self,
        set: &PolicySet,
        call: &Call<'_>,
        who: &Identity,
    ) -> Counted {
        self.decide_as(set, call, who, Approved::Yes).await
    }

    async fn decide_as(
        &self,
        set: &PolicySet,
        call: &Call<'_>,
        who: &Identity,
        approved: Approved,
    ) -> Counted {
        match &self.shared {
            None => self.decide_locally(set, call, who, approved),
            // Boxed: the Redis round trip's state stays out of every request's future when
            // counters are in the pod.
            Some(shared) => Box::pin(self.decide_shared(shared, set, call, who, approved)).await,
        }
    }

    async fn decide_shared(
        &self,
        shared: &Arc<Shared>,
        set: &PolicySet,
        call: &Call<'_>,
        who: &Identity,
        approved: Approved,
    ) -> Counted {
        let mut fresh: Vec<(CounterKey, u64)> = Vec::new();
        for _ in 0..ATTEMPTS {
            let recorder = Recorder {
                shared,
                fresh: &fresh,
                reads: RefCell::new(Vec::new()),
            };
            let verdict = set.decide(call, who, &recorder);
            let mut reads = recorder.reads.into_inner();
            let reservations = approved.reserves(&verdict.decision);
            // A limit that had room needs no check when it is reserved now: the reservation
            // refuses a full counter itself (and brings its new value back).
            reads.retain(|read| {
                !(matches!(read.check, Check::Fits { .. })
                    && reservations.iter().any(|r| r.key == read.key))
            });
            if reads.is_empty() && reservations.is_empty() {
                return Counted {
                    verdict,
                    reserved: Ok(Reserved::default()),
                };
            }
            match shared.run(&reads, reservations).await {
                Ok(Reply::Reserved(taken)) => {
                    return Counted {
                        verdict,
                        reserved: Ok(Reserved {
                            taken,
                            shared: true,
                        }),
                    };
                }
                Ok(Reply::Full(at)) => {
                    let full = (*reservations[at].on_full).clone();
                    return Counted {
                        verdict,
                        reserved: Err(full),
                    };
                }
                Ok(Reply::Stale(values)) => {
                    fresh = reads.into_iter().map(|r| r.key).zip(values).collect();
                }
                Ok(Reply::Lost(denial)) => return Counted::denied(denial),
                Err(why) => {
                    let policies = reads
                        .iter()
                        .map(|r| (r.unavailable, r.policy.as_ref()))
                        .chain(
                            reservations
                                .iter()
                                .map(|r| (r.unavailable, r.on_full.policy.as_str())),
                        );
                    return match shared.without_store(policies, &why) {
                        Some(denial) => Counted::denied(denial),
                        None => self.decide_locally(set, call, who, approved),
                    };
                }
            }
        }
        Counted::denied(Denial {
            policy: String::new(),
            rule: "(counters)".into(),
            reason: format!(
                "The counters this call reads changed {ATTEMPTS} times while it was decided; retry"
            ),
            deny_as: DenyAs::Error,
        })
    }

    fn decide_locally(
        &self,
        set: &PolicySet,
        call: &Call<'_>,
        who: &Identity,
        approved: Approved,
    ) -> Counted {
        let verdict = set.decide(call, who, &self.local);
        let reserved = match approved.reserves(&verdict.decision) {
            [] => Ok(Reserved::default()),
            reservations => self.local.reserve_all(reservations).map(|taken| Reserved {
                taken,
                shared: false,
            }),
        };
        Counted { verdict, reserved }
    }

    /// Gives back what a failed call reserved (only within the window it was taken in). A
    /// shared store is told in the background; if it cannot be, the call stays counted.
    pub fn rollback(&self, reserved: Reserved) {
        if reserved.taken.is_empty() {
            return;
        }
        match (&self.shared, reserved.shared) {
            (Some(shared), true) => shared.rollback(reserved.taken),
            _ => self.local.rollback(&reserved.taken),
        }
    }

    /// Drops what has expired; called periodically so memory stays bounded by the live
    /// windows.
    pub fn sweep(&self) {
        self.local.sweep();
        if let Some(shared) = &self.shared {
            shared.sweep();
        }
    }

    /// The value of `counter`'s `key` in its current window, in this pod's store.
    pub fn current(&self, key: &CounterKey, counter: &CounterName) -> u64 {
        self.local.current(key, counter)
    }

    /// One line for `/readyz`: where counters are kept, and whether that store answers.
    pub fn status(&self) -> String {
        match &self.shared {
            None => "counters: in this pod".into(),
            Some(shared) => shared.status(),
        }
    }
}

fn denied(d: Denial) -> Verdict {
    Verdict {
        decision: Decision::Deny(d),
        audit: None,
    }
}

/// Reads counters for one decision from the values Redis sent last, and notes each read and
/// what it was used for, for Redis to check.
struct Recorder<'a> {
    shared: &'a Shared,
    /// The values the last reply carried, for a decision taken again.
    fresh: &'a [(CounterKey, u64)],
    reads: RefCell<Vec<Read>>,
}

impl Recorder<'_> {
    fn value(&self, key: &CounterKey, counter: &CounterName) -> u64 {
        self.fresh
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
            .or_else(|| self.shared.cached(key, counter.window))
            .unwrap_or(0)
    }

    fn note(&self, key: &CounterKey, counter: &CounterName, check: Check) {
        self.reads.borrow_mut().push(Read {
            key: key.clone(),
            window: counter.window,
            check,
            unavailable: counter.unavailable,
            policy: counter.policy.clone(),
        });
    }
}

impl Counters for Recorder<'_> {
    fn current(&self, key: &CounterKey, counter: &CounterName) -> u64 {
        let value = self.value(key, counter);
        self.note(key, counter, Check::Value(value));
        value
    }

    fn fits(&self, key: &CounterKey, counter: &CounterName, amount: u64, max: u64) -> bool {
        let fits = self.value(key, counter).saturating_add(amount) <= max;
        let check = if fits {
            Check::Fits { amount, max }
        } else {
            Check::Full { amount, max }
        };
        self.note(key, counter, check);
        fits
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tollgate_api::CountersUnavailable;

    pub(crate) fn res(key: &str, amount: u64, max: u64, window: Window) -> Reservation {
        Reservation {
            key: CounterKey(key.into()),
            window,
            amount,
            max: Some(max),
            on_full: std::sync::Arc::new(Denial {
                policy: "p".into(),
                rule: key.into(),
                reason: format!("{key} full"),
                deny_as: DenyAs::Error,
            }),
            unavailable: CountersUnavailable::Deny,
        }
    }
}
