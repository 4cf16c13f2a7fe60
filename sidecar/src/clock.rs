//! The time that counters' windows and approvals' lifetimes are read from: the system's, or a
//! test's, which moves only when told (`tollgate test`'s steps say how much time passes).
//!
//! A test clock gives wall time from the start it was given, and monotonic time from the
//! instant it was made, each advanced by the same amount: the two agree as the system's do.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The system's clock (the default), or a test's.
#[derive(Clone, Default)]
pub struct Clock(Option<Arc<Manual>>);

struct Manual {
    /// The wall time it started at, since the Unix epoch.
    start: Duration,
    /// The monotonic instant it started at.
    base: Instant,
    /// How far it has been moved, in nanoseconds.
    moved: AtomicU64,
}

impl Clock {
    /// A clock that stands at `start` (since the Unix epoch) until [`Clock::advance`]d.
    pub fn manual(start: Duration) -> Clock {
        Clock(Some(Arc::new(Manual {
            start,
            base: Instant::now(),
            moved: AtomicU64::new(0),
        })))
    }

    /// Moves a test clock on; the system's cannot be moved, and is left alone.
    pub fn advance(&self, by: Duration) {
        if let Some(m) = &self.0 {
            let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
            m.moved.fetch_add(nanos, Ordering::Relaxed);
        }
    }

    /// Wall time since the Unix epoch.
    pub fn unix(&self) -> Duration {
        match &self.0 {
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO),
            Some(m) => m.start + m.moved(),
        }
    }

    /// Whole seconds since the Unix epoch (what counters' windows are aligned on).
    pub fn unix_secs(&self) -> u64 {
        self.unix().as_secs()
    }

    /// Monotonic time (what approvals expire by).
    pub fn instant(&self) -> Instant {
        match &self.0 {
            None => Instant::now(),
            Some(m) => m.base + m.moved(),
        }
    }
}

impl Manual {
    fn moved(&self) -> Duration {
        Duration::from_nanos(self.moved.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_clock_moves_only_when_told_and_both_times_together() {
        let clock = Clock::manual(Duration::from_secs(1_000));
        let (wall, mono) = (clock.unix(), clock.instant());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.unix(), wall);
        assert_eq!(clock.instant(), mono);
        clock.advance(Duration::from_secs(61));
        assert_eq!(clock.unix_secs(), 1_061);
        assert_eq!(clock.instant() - mono, Duration::from_secs(61));
    }
}
