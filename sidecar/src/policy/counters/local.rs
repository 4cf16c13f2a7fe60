//! Counters in this pod's memory: the default store, and the fallback of a shared one for
//! policies that choose to count locally while it is away.
//!
//! The lock is held only for the arithmetic, never across an await.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use parking_lot::Mutex;
use tollgate_api::{CounterKey, CounterName, Counters, Denial, Reservation, Window};

use super::{Taken, window_start};
use crate::clock::Clock;

#[derive(Default)]
pub struct LocalCounters {
    /// Keys can carry a caller's session id, so the hasher is seeded per process (foldhash's
    /// `RandomState`: a fraction of SipHash's cost on short keys, and not predictable).
    counters: Mutex<HashMap<CounterKey, Slot, RandomState>>,
    clock: Clock,
}

#[derive(Clone, Copy)]
struct Slot {
    window_start: u64,
    value: u64,
}

impl LocalCounters {
    /// Counters whose windows are read from `clock`.
    pub fn with_clock(clock: Clock) -> Self {
        LocalCounters {
            clock,
            ..Default::default()
        }
    }

    /// Reserves every counter or none: if one would pass its max, the ones before it are
    /// released and that counter's denial is returned.
    pub fn reserve_all(&self, reservations: &[Reservation]) -> Result<Vec<Taken>, Denial> {
        self.reserve_all_at(reservations, self.clock.unix_secs())
    }

    pub(super) fn reserve_all_at(
        &self,
        reservations: &[Reservation],
        now: u64,
    ) -> Result<Vec<Taken>, Denial> {
        if reservations.is_empty() {
            return Ok(Vec::new());
        }
        let mut map = self.counters.lock();
        let mut done = Vec::with_capacity(reservations.len());
        for r in reservations {
            let start = window_start(r.window, now);
            let fresh = Slot {
                window_start: start,
                value: 0,
            };
            // One lookup (the key is an `Arc`: its clone is a count).
            let slot = map.entry(r.key.clone()).or_insert(fresh);
            if slot.window_start != start {
                *slot = fresh;
            }
            let next = slot.value.saturating_add(r.amount);
            if r.max.is_some_and(|max| next > max) {
                for t in &done {
                    release(&mut map, t);
                }
                return Err((*r.on_full).clone());
            }
            slot.value = next;
            done.push(Taken {
                key: r.key.clone(),
                window: r.window,
                start,
                amount: r.amount,
            });
        }
        Ok(done)
    }

    /// Gives back what a failed call reserved (only within the same window).
    pub fn rollback(&self, taken: &[Taken]) {
        if taken.is_empty() {
            return;
        }
        let mut map = self.counters.lock();
        for t in taken {
            release(&mut map, t);
        }
    }

    /// Drops counters whose window has passed; called periodically so memory stays bounded
    /// by the live windows.
    pub fn sweep(&self) {
        let now = self.clock.unix_secs();
        // A slot is stale once a day has passed since its window began (the longest window).
        self.counters
            .lock()
            .retain(|_, s| now.saturating_sub(s.window_start) < Window::Day.seconds());
    }
}

fn release(map: &mut HashMap<CounterKey, Slot, RandomState>, t: &Taken) {
    if let Some(slot) = map.get_mut(&t.key)
        && slot.window_start == t.start
    {
        slot.value = slot.value.saturating_sub(t.amount);
    }
}

impl Counters for LocalCounters {
    fn current(&self, key: &CounterKey, counter: &CounterName) -> u64 {
        let start = window_start(counter.window, self.clock.unix_secs());
        self.counters
            .lock()
            .get(key)
            .filter(|s| s.window_start == start)
            .map_or(0, |s| s.value)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::res;
    use super::*;

    #[test]
    fn reservations_stop_at_max_and_name_the_full_counter() {
        let store = LocalCounters::default();
        let r = [res("a", 1, 2, Window::Minute)];
        assert!(store.reserve_all_at(&r, 60).is_ok());
        assert!(store.reserve_all_at(&r, 61).is_ok());
        let err = store.reserve_all_at(&r, 62).unwrap_err();
        assert_eq!(err.rule, "a");
    }

    #[test]
    fn a_full_counter_releases_the_others_it_reserved_with() {
        let store = LocalCounters::default();
        let both = [res("a", 1, 10, Window::Hour), res("b", 5, 4, Window::Hour)];
        assert!(store.reserve_all_at(&both, 0).is_err());
        let a = [res("a", 10, 10, Window::Hour)];
        assert!(store.reserve_all_at(&a, 0).is_ok(), "a was released");
    }

    #[test]
    fn rollback_returns_quota_within_the_window() {
        let store = LocalCounters::default();
        let r = [res("a", 3, 3, Window::Minute)];
        let taken = store.reserve_all_at(&r, 120).unwrap();
        store.rollback(&taken);
        assert!(store.reserve_all_at(&r, 121).is_ok());
    }

    #[test]
    fn windows_are_calendar_aligned() {
        let store = LocalCounters::default();
        let r = [res("a", 1, 1, Window::Minute)];
        assert!(store.reserve_all_at(&r, 119).is_ok());
        assert!(store.reserve_all_at(&r, 119).is_err());
        assert!(
            store.reserve_all_at(&r, 120).is_ok(),
            "a new minute begins at :00"
        );
        assert_eq!(window_start(Window::Day, 86_400 * 3 + 5), 86_400 * 3);
    }
}
