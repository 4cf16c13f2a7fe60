//! Prometheus metrics, served on their own port.
//!
//! ```text
//! tollgate_decisions_total{tool, outcome}         allow | deny | approve | audit (DecisionKind)
//! tollgate_decision_duration_seconds              the decision function alone
//! tollgate_request_duration_seconds{kind}         proxy in to upstream response headers
//! tollgate_upstream_errors_total{reason}
//! tollgate_policy_reloads_total{result}           success | failure
//! tollgate_policy_revision, tollgate_policy_ready
//! tollgate_counter_store_up                       1 while the shared counters answer
//! tollgate_counter_store_errors_total{reason}     timeout | connection | server | answer | connect
//! tollgate_counter_store_fallback_total{action}   deny | local: calls decided without them
//! tollgate_counter_store_stale_total              decisions taken again on fresher values
//! tollgate_counter_store_rollbacks_lost_total
//! tollgate_audit_lines_total                      audit lines written to stdout
//! tollgate_audit_lines_dropped_total{reason}      full | write_error: lines not written
//! tollgate_audit_buffered_bytes                   lines waiting for stdout to take them
//! tollgate_policy_updates_ignored_total{reason}   unreadable | invalid | stale: stream lines not applied
//! tollgate_control_plane_connected                1 while the operator's stream is open
//! tollgate_upstream_duration_seconds              request sent to the server, to its answer's headers
//! tollgate_approvals_held                         calls waiting for a person now
//! tollgate_approvals_total{outcome}               approved | denied | undecided | failed
//! tollgate_approval_wait_seconds                  how long held calls waited
//! tollgate_trace_spans_exported_total             spans the collector took
//! tollgate_trace_spans_dropped_total{reason}      queue_full | export_failed: spans not sent
//! ```

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;

use super::DecisionKind;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub tool: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// `family`'s counter for `reason`, kept to count without a lookup. Its own statement: a
/// family's handle holds the family's lock until the statement that took it ends.
fn of_reason(family: &Family<ReasonLabels, Counter>, reason: &'static str) -> Counter {
    family.get_or_create(&ReasonLabels { reason }).clone()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Most distinct `tool` labels. Tool names come from callers: an agent calling made-up names
/// must not grow the sidecar's memory (or the metrics backend's series) without bound.
pub const TOOL_LABELS: usize = 1_000;
/// The `tool` label of calls past [`TOOL_LABELS`] distinct names.
pub const OTHER_TOOLS: &str = "(other)";

struct Inner {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    /// Counter handles by tool and outcome, so the hot path allocates no label set. At most
    /// [`TOOL_LABELS`] tools; calls of others count under [`OTHER_TOOLS`].
    decision_cache: parking_lot::RwLock<
        std::collections::HashMap<
            String,
            [Option<Counter>; DecisionKind::ALL.len()],
            foldhash::fast::RandomState,
        >,
    >,
    decision_seconds: Histogram,
    request_seconds: Family<KindLabels, Histogram>,
    upstream_errors: Family<ReasonLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    revision: Gauge<u64, AtomicU64>,
    ready: Gauge,
    store_up: Gauge,
    store_errors: Family<ReasonLabels, Counter>,
    store_fallbacks: Family<ActionLabels, Counter>,
    store_stale: Counter,
    store_rollbacks_lost: Counter,
    audit: AuditMetrics,
    updates_ignored: Family<ReasonLabels, Counter>,
    pin_changes: Family<OutcomeLabels, Counter>,
    control_plane_connected: Gauge,
    upstream_seconds: Histogram,
    held: Gauge,
    approvals: Family<OutcomeLabels, Counter>,
    approval_wait: Histogram,
    traces: TraceMetrics,
}

/// The trace exporter's counters, named alike in the sidecar's and the operator's metrics.
#[derive(Clone, Default)]
pub struct TraceMetrics {
    pub exported: Counter,
    pub dropped_queue_full: Counter,
    pub dropped_export_failed: Counter,
}

impl TraceMetrics {
    /// The counters, registered in `registry` (whose prefix should be `tollgate`).
    pub fn register(registry: &mut Registry) -> Self {
        let dropped = Family::<ReasonLabels, Counter>::default();
        let traces = TraceMetrics {
            exported: Counter::default(),
            dropped_queue_full: of_reason(&dropped, "queue_full"),
            dropped_export_failed: of_reason(&dropped, "export_failed"),
        };
        registry.register(
            "trace_spans_exported",
            "Spans the trace collector took",
            traces.exported.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans not sent: the exporter's queue was full (the collector slow or gone), or the collector did not take them",
            dropped,
        );
        traces
    }
}

/// The audit log's own counters, handed to its writer.
#[derive(Clone, Default)]
pub struct AuditMetrics {
    pub lines: Counter,
    pub dropped_full: Counter,
    pub dropped_write_error: Counter,
    pub buffered: Gauge,
}

/// Cheap to clone; every clone records into the same registry.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tollgate");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Decisions on JSON-RPC calls, by tool and outcome",
            decisions.clone(),
        );
        let decision_seconds = Histogram::new(exponential_buckets(1e-7, 4.0, 12));
        registry.register(
            "decision_duration_seconds",
            "Time to decide one call",
            decision_seconds.clone(),
        );
        let request_seconds = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(5e-5, 2.5, 14))
        });
        registry.register(
            "request_duration_seconds",
            "Time from a request arriving to the response headers leaving, by kind (mcp, denied, passthrough)",
            request_seconds.clone(),
        );
        let upstream_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Requests the upstream could not answer",
            upstream_errors.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register("policy_reloads", "Policy loads, by result", reloads.clone());
        let revision = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "policy_revision",
            "Revision of the policy in force",
            revision.clone(),
        );
        let ready = Gauge::default();
        registry.register("policy_ready", "1 once a policy is in force", ready.clone());
        let store_up = Gauge::default();
        store_up.set(1);
        registry.register(
            "counter_store_up",
            "1 while the counter store answers (always 1 for counters in the pod)",
            store_up.clone(),
        );
        let store_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "counter_store_errors",
            "Calls to the shared counter store that failed, by reason",
            store_errors.clone(),
        );
        let store_fallbacks = Family::<ActionLabels, Counter>::default();
        registry.register(
            "counter_store_fallback",
            "Calls that needed the shared counters while they were unavailable: denied, or counted in the pod",
            store_fallbacks.clone(),
        );
        let store_stale = Counter::default();
        registry.register(
            "counter_store_stale",
            "Decisions taken again because a counter they read changed before the store saw them",
            store_stale.clone(),
        );
        let store_rollbacks_lost = Counter::default();
        registry.register(
            "counter_store_rollbacks_lost",
            "Rollbacks the shared store could not be told of (the call stays counted)",
            store_rollbacks_lost.clone(),
        );
        let audit_dropped = Family::<ReasonLabels, Counter>::default();
        let audit = AuditMetrics {
            lines: Counter::default(),
            dropped_full: of_reason(&audit_dropped, "full"),
            dropped_write_error: of_reason(&audit_dropped, "write_error"),
            buffered: Gauge::default(),
        };
        registry.register(
            "audit_lines",
            "Audit lines written to stdout",
            audit.lines.clone(),
        );
        registry.register(
            "audit_lines_dropped",
            "Audit lines not written: the buffer was full (stdout not draining), or stdout refused the write",
            audit_dropped,
        );
        registry.register(
            "audit_buffered_bytes",
            "Audit bytes waiting for stdout to take them",
            audit.buffered.clone(),
        );
        let updates_ignored = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "policy_updates_ignored",
            "Policy updates from the control plane not applied, by reason: unreadable, invalid, stale (an older revision)",
            updates_ignored.clone(),
        );
        let pin_changes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "tool_definition_changes",
            "Tool definitions that did not match their pin (changed, unpinned, renamed, swapped), and what people decided (accepted, rejected)",
            pin_changes.clone(),
        );
        let control_plane_connected = Gauge::default();
        registry.register(
            "control_plane_connected",
            "1 while the operator's policy stream is open",
            control_plane_connected.clone(),
        );
        let upstream_seconds = Histogram::new(exponential_buckets(5e-5, 2.5, 14));
        registry.register(
            "upstream_duration_seconds",
            "Time from a request sent to the MCP server to its answer's headers",
            upstream_seconds.clone(),
        );
        let held = Gauge::default();
        registry.register(
            "approvals_held",
            "Calls waiting for a person's approval now",
            held.clone(),
        );
        let approvals = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "approvals",
            "Held calls settled, by outcome: approved, denied, undecided (nobody decided in the hold time), failed (nobody could be asked)",
            approvals.clone(),
        );
        let approval_wait = Histogram::new(exponential_buckets(0.1, 3.0, 10));
        registry.register(
            "approval_wait_seconds",
            "How long a held call waited for a person",
            approval_wait.clone(),
        );
        let traces = TraceMetrics::register(&mut registry);
        // Every series an alert or a panel reads exists from the start, at 0: `increase()` and
        // `rate()` see a first event only against an earlier sample.
        upstream_errors
            .get_or_create(&ReasonLabels {
                reason: "unreachable",
            })
            .inc_by(0);
        for result in ["success", "failure"] {
            reloads.get_or_create(&ResultLabels { result }).inc_by(0);
        }
        for reason in [
            "timeout",
            "connection",
            "server",
            "answer",
            "connect",
            "lost_window",
        ] {
            store_errors
                .get_or_create(&ReasonLabels { reason })
                .inc_by(0);
        }
        for action in ["deny", "local"] {
            store_fallbacks
                .get_or_create(&ActionLabels { action })
                .inc_by(0);
        }
        for reason in ["unreadable", "invalid", "stale"] {
            updates_ignored
                .get_or_create(&ReasonLabels { reason })
                .inc_by(0);
        }
        for outcome in ["approved", "denied", "undecided", "failed"] {
            approvals
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(0);
        }
        for outcome in [
            "changed", "unpinned", "renamed", "swapped", "accepted", "rejected",
        ] {
            pin_changes
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(0);
        }
        Metrics(Arc::new(Inner {
            registry,
            decisions,
            decision_cache: Default::default(),
            decision_seconds,
            request_seconds,
            upstream_errors,
            reloads,
            revision,
            ready,
            store_up,
            store_errors,
            store_fallbacks,
            store_stale,
            store_rollbacks_lost,
            audit,
            updates_ignored,
            pin_changes,
            control_plane_connected,
            upstream_seconds,
            held,
            approvals,
            approval_wait,
            traces,
        }))
    }

    /// A tool definition held back by its pin, or a person's decision on one (the tool is in
    /// the audit line; a server's names are not labels).
    pub fn pin_change(&self, _tool: &str, outcome: &'static str) {
        self.0
            .pin_changes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn decision(&self, tool: &str, outcome: DecisionKind, seconds: f64) {
        self.0.decision_seconds.observe(seconds);
        let slot = outcome as usize;
        if let Some(c) = self
            .0
            .decision_cache
            .read()
            .get(tool)
            .and_then(|cs| cs[slot].as_ref())
        {
            c.inc();
            return;
        }
        let mut cache = self.0.decision_cache.write();
        let tool = if cache.len() < TOOL_LABELS || cache.contains_key(tool) {
            tool
        } else {
            OTHER_TOOLS
        };
        let counter = cache.entry(tool.to_string()).or_default()[slot].get_or_insert_with(|| {
            self.0
                .decisions
                .get_or_create(&DecisionLabels {
                    tool: tool.to_string(),
                    outcome: outcome.as_str(),
                })
                .clone()
        });
        counter.inc();
    }

    pub fn request(&self, kind: &'static str, seconds: f64) {
        self.0
            .request_seconds
            .get_or_create(&KindLabels { kind })
            .observe(seconds);
    }

    pub fn upstream_error(&self, reason: &'static str) {
        self.0
            .upstream_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn policy_loaded(&self, revision: u64) {
        self.0
            .reloads
            .get_or_create(&ResultLabels { result: "success" })
            .inc();
        self.0.revision.set(revision);
        self.0.ready.set(1);
    }

    pub fn policy_failed(&self) {
        self.0
            .reloads
            .get_or_create(&ResultLabels { result: "failure" })
            .inc();
    }

    /// The audit log's counters.
    pub fn audit(&self) -> AuditMetrics {
        self.0.audit.clone()
    }

    /// A policy update from the control plane that was not applied.
    pub fn policy_update_ignored(&self, reason: &'static str) {
        self.0
            .updates_ignored
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn control_plane_connected(&self, connected: bool) {
        self.0.control_plane_connected.set(i64::from(connected));
    }

    pub fn counter_store_up(&self, up: bool) {
        self.0.store_up.set(i64::from(up));
    }

    pub fn counter_store_error(&self, reason: &'static str) {
        self.0
            .store_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn counter_store_fallback(&self, action: &'static str) {
        self.0
            .store_fallbacks
            .get_or_create(&ActionLabels { action })
            .inc();
    }

    pub fn counter_store_stale(&self) {
        self.0.store_stale.inc();
    }

    pub fn counter_store_rollback_lost(&self) {
        self.0.store_rollbacks_lost.inc();
    }

    /// The server answered a request's head after `seconds`.
    pub fn upstream(&self, seconds: f64) {
        self.0.upstream_seconds.observe(seconds);
    }

    /// The gauge of calls held for a person now.
    pub fn held(&self) -> Gauge {
        self.0.held.clone()
    }

    /// A held call settled: `outcome` after `seconds`.
    pub fn approval_settled(&self, outcome: &'static str, seconds: f64) {
        self.0
            .approvals
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.0.approval_wait.observe(seconds);
    }

    /// The trace exporter's counters.
    pub fn traces(&self) -> TraceMetrics {
        self.0.traces.clone()
    }

    /// The registry in Prometheus' text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.0.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_labels_stop_growing_at_the_limit_and_later_names_count_as_other() {
        let m = Metrics::new();
        for i in 0..TOOL_LABELS + 50 {
            m.decision(&format!("made_up_{i}"), DecisionKind::Deny, 1e-6);
        }
        m.decision("made_up_0", DecisionKind::Deny, 1e-6);
        m.decision("made_up_0", DecisionKind::Allow, 1e-6);
        let text = m.encode();
        let series = |tool: &str, outcome: &str| {
            let prefix =
                format!("tollgate_decisions_total{{tool=\"{tool}\",outcome=\"{outcome}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .map(|v| v.parse::<u64>().unwrap())
        };
        assert_eq!(
            series("made_up_0", "deny"),
            Some(2),
            "a known tool keeps its own series"
        );
        assert_eq!(
            series("made_up_0", "allow"),
            Some(1),
            "and gets new outcomes"
        );
        assert_eq!(series(OTHER_TOOLS, "deny"), Some(50));
        assert_eq!(series(&format!("made_up_{TOOL_LABELS}"), "deny"), None);
        let tools = text
            .lines()
            .filter(|l| l.starts_with("tollgate_decisions_total{"))
            .count();
        assert_eq!(tools, TOOL_LABELS + 2);
    }
}
