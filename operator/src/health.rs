//! What the operator's `/readyz` answers from, and the supervision of what it runs.
//!
//! ```text
//! every long-running part (index, certificate rotation, lease, controllers, admin server)
//!   ─ Supervisor::spawn(name) ─ ends, fails or panics ─> the process exits non-zero
//!                                                        (Kubernetes restarts it)
//! a part that keeps failing while it retries (a watch, a certificate refresh, the lease)
//!   ─ Health::fail(part, why) ─ for longer than its grace ─> /readyz 503 naming it
//!   ─ Health::ok(part) ─> ready again
//! ```
//!
//! Nothing stops silently while `/readyz` stays green: a part either runs, says it is failing,
//! or takes the process down with it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::task::JoinSet;

/// How long a part may fail while it retries before the operator stops being ready, by
/// default (`--failure-grace`): a watch relisting or one refused certificate refresh is not
/// worth taking a replica out.
pub const GRACE: Duration = Duration::from_secs(30);

pub struct Health {
    grace: Duration,
    /// Whether the index has listed everything once (and holds what the replica waits for).
    listed: AtomicBool,
    /// What the replica waits for, once listed, before it is ready.
    waiting: Mutex<Option<String>>,
    /// Each part failing now: since when, and the last error.
    failing: Mutex<BTreeMap<String, (Instant, String)>>,
    /// Set at SIGTERM.
    stopping: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health::with_grace(GRACE)
    }
}

impl Health {
    pub fn with_grace(grace: Duration) -> Self {
        Health {
            grace,
            listed: AtomicBool::default(),
            waiting: Mutex::default(),
            failing: Mutex::default(),
            stopping: AtomicBool::default(),
        }
    }

    pub fn listed(&self) {
        *self.waiting.lock() = None;
        self.listed.store(true, Ordering::Relaxed);
    }

    /// Not ready until [`Health::listed`], saying why.
    pub fn waiting(&self, why: impl Into<String>) {
        *self.waiting.lock() = Some(why.into());
    }

    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// `part` failed (and retries); the first failure of a run is when it started failing.
    pub fn fail(&self, part: &str, why: impl std::fmt::Display) {
        let mut failing = self.failing.lock();
        let now = Instant::now();
        let entry = failing
            .entry(part.to_string())
            .or_insert_with(|| (now, String::new()));
        entry.1 = why.to_string();
    }

    /// `part` works again.
    pub fn ok(&self, part: &str) {
        if self.failing.lock().remove(part).is_some() {
            tracing::info!(part, "working again");
        }
    }

    /// (ready, the body of `/readyz`).
    pub fn readyz(&self) -> (bool, String) {
        self.readyz_at(Instant::now())
    }

    fn readyz_at(&self, now: Instant) -> (bool, String) {
        if self.stopping.load(Ordering::Relaxed) {
            return (false, "shutting down".into());
        }
        if !self.listed.load(Ordering::Relaxed) {
            let why = self.waiting.lock().clone();
            return (
                false,
                why.unwrap_or_else(|| {
                    "the operator has not listed pods, namespaces and policies yet".into()
                }),
            );
        }
        let failing = self.failing.lock();
        let over: Vec<String> = failing
            .iter()
            .filter(|(_, (since, _))| now.duration_since(*since) >= self.grace)
            .map(|(part, (since, why))| {
                format!(
                    "{part} failing for {}s: {why}",
                    now.duration_since(*since).as_secs()
                )
            })
            .collect();
        if over.is_empty() {
            let mut body = String::from("ready");
            for (part, (_, why)) in failing.iter() {
                body.push_str(&format!("\n{part} failing, retrying: {why}"));
            }
            (true, body)
        } else {
            (false, format!("not ready: {}", over.join("; ")))
        }
    }
}

/// Runs the operator's long-lived tasks; the first to end, for any reason, is reported.
#[derive(Default)]
pub struct Supervisor {
    tasks: JoinSet<&'static str>,
}

impl Supervisor {
    /// Runs `task`, which should never end.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(async move {
            task.await;
            name
        });
    }

    /// Resolves when a task ends: why, as an error to exit with.
    pub async fn stopped(&mut self) -> anyhow::Error {
        match self.tasks.join_next().await {
            None => std::future::pending().await,
            Some(Ok(name)) => anyhow::anyhow!("{name} stopped"),
            Some(Err(e)) if e.is_panic() => anyhow::anyhow!("a task panicked: {e}"),
            Some(Err(e)) => anyhow::anyhow!("a task was cancelled: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_failing_past_its_grace_makes_the_operator_not_ready_naming_it_until_it_works() {
        let h = Health::default();
        assert!(!h.readyz().0, "ready before listing");
        h.listed();
        assert_eq!(h.readyz(), (true, "ready".into()));
        h.fail("watch McpPolicy", "403 Forbidden");
        let (ready, body) = h.readyz();
        assert!(ready && body.contains("retrying: 403"), "{body}");
        let (ready, body) = h.readyz_at(Instant::now() + GRACE);
        assert!(
            !ready && body.contains("watch McpPolicy failing for 30s: 403"),
            "{body}"
        );
        // Failing again does not restart the clock.
        h.fail("watch McpPolicy", "still 403");
        assert!(!h.readyz_at(Instant::now() + GRACE).0);
        h.ok("watch McpPolicy");
        assert!(h.readyz_at(Instant::now() + GRACE).0);
        h.stopping();
        assert_eq!(h.readyz(), (false, "shutting down".into()));
    }

    #[test]
    fn a_replica_waiting_for_something_after_listing_is_not_ready_and_says_what() {
        let h = Health::default();
        h.waiting("the baseline McpClusterPolicy b is not in the cluster yet");
        assert_eq!(
            h.readyz(),
            (
                false,
                "the baseline McpClusterPolicy b is not in the cluster yet".into()
            )
        );
        h.listed();
        assert_eq!(h.readyz(), (true, "ready".into()));
    }

    #[tokio::test]
    async fn a_supervised_task_that_ends_or_panics_is_reported_by_name() {
        let mut s = Supervisor::default();
        s.spawn("forever", std::future::pending());
        s.spawn("the index", async {});
        assert_eq!(s.stopped().await.to_string(), "the index stopped");
        s.spawn("the controllers", async { panic!("boom") });
        assert!(s.stopped().await.to_string().contains("panicked"));
    }
}
