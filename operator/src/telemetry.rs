//! What the operator tells besides its logs: Prometheus metrics on the admin port (`/metrics`)
//! and, with `--otlp-endpoint`, OpenTelemetry traces of the requests it serves and the
//! reconciles it runs.
//!
//! ```text
//! tollgate_operator_ready                              1 while /readyz answers 200
//! tollgate_operator_leader                             1 while this replica holds the lease
//! tollgate_operator_requests_total{route, code}        webhook calls, streams, reports served
//! tollgate_operator_request_duration_seconds{route}    to the response's headers
//! tollgate_operator_admission_reviews_total{route, allowed}
//! tollgate_operator_reconciles_total{kind, result}     ok | error
//! tollgate_operator_sidecars_connected                 policy streams open now
//! tollgate_operator_policy_updates_sent_total          policies written to sidecars' streams
//! tollgate_operator_boundaries_open                    pods with a way around their sidecar
//! tollgate_trace_spans_exported_total, tollgate_trace_spans_dropped_total{reason}
//! ```
//!
//! Both are process-wide, as the log subscriber is: every part records into the one registry
//! without being handed it.

use std::sync::{LazyLock, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tollgate_sidecar::telemetry::metrics::TraceMetrics;
use tollgate_sidecar::telemetry::trace::Tracer;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteCode {
    pub route: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Review {
    pub route: &'static str,
    pub allowed: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reconcile {
    pub kind: &'static str,
    pub result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// The trace exporter's, named as the sidecar's are.
    plain: Registry,
    pub ready: Gauge,
    pub leader: Gauge,
    pub requests: Family<RouteCode, Counter>,
    pub request_seconds: Family<Route, Histogram>,
    pub reviews: Family<Review, Counter>,
    pub reconciles: Family<Reconcile, Counter>,
    pub sidecars: Gauge,
    pub updates_sent: Counter,
    pub boundaries_open: Gauge,
    pub traces: TraceMetrics,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
static TRACER: OnceLock<Tracer> = OnceLock::new();

/// The operator's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Sets the tracer (once, at start); without it nothing is traced.
pub fn set_tracer(tracer: Tracer) {
    let _ = TRACER.set(tracer);
}

/// The operator's tracer (off unless `--otlp-endpoint`).
pub fn tracer() -> Tracer {
    TRACER.get().cloned().unwrap_or_default()
}

impl Metrics {
    fn new() -> Self {
        let mut r = Registry::with_prefix("tollgate_operator");
        let ready = Gauge::default();
        r.register("ready", "1 while /readyz answers 200", ready.clone());
        let leader = Gauge::default();
        r.register(
            "leader",
            "1 while this replica holds the lease (writes status, Events, NetworkPolicies)",
            leader.clone(),
        );
        let requests = Family::<RouteCode, Counter>::default();
        r.register(
            "requests",
            "Requests served on the HTTPS port, by route and status code",
            requests.clone(),
        );
        let request_seconds = Family::<Route, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1e-4, 3.0, 12))
        });
        r.register(
            "request_duration_seconds",
            "Time to the response's headers, by route",
            request_seconds.clone(),
        );
        let reviews = Family::<Review, Counter>::default();
        r.register(
            "admission_reviews",
            "Admission reviews answered, by webhook and whether the object was allowed",
            reviews.clone(),
        );
        let reconciles = Family::<Reconcile, Counter>::default();
        r.register(
            "reconciles",
            "Policy reconciles (status written), by kind and result",
            reconciles.clone(),
        );
        let sidecars = Gauge::default();
        r.register(
            "sidecars_connected",
            "Sidecars following their policy on this replica's stream now",
            sidecars.clone(),
        );
        let updates_sent = Counter::default();
        r.register(
            "policy_updates_sent",
            "Policies written to sidecars' streams",
            updates_sent.clone(),
        );
        let boundaries_open = Gauge::default();
        r.register(
            "boundaries_open",
            "Injected pods with a way to their server around the sidecar (a BoundaryOpen Event each)",
            boundaries_open.clone(),
        );
        // Under the sidecar's names, without this registry's prefix: one dashboard panel and
        // one alert read both.
        let mut plain = Registry::with_prefix("tollgate");
        let traces = TraceMetrics::register(&mut plain);
        // Every series an alert or a panel reads exists from the start, at 0.
        for kind in ["McpPolicy", "McpClusterPolicy"] {
            for result in ["ok", "error"] {
                reconciles
                    .get_or_create(&Reconcile { kind, result })
                    .inc_by(0);
            }
        }
        for route in ["mutate", "validate", "approvals", "pins"] {
            for allowed in ["true", "false"] {
                reviews.get_or_create(&Review { route, allowed }).inc_by(0);
            }
        }
        Metrics {
            registry: r,
            plain,
            ready,
            leader,
            requests,
            request_seconds,
            reviews,
            reconciles,
            sidecars,
            updates_sent,
            boundaries_open,
            traces,
        }
    }

    /// The registry in Prometheus' text format.
    pub fn encode(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &self.plain))
            .and_then(|()| encode_eof(&mut out))
            .expect("writing to a String cannot fail");
        out
    }
}

/// The route label of a request to the HTTPS port (its path, from a known few).
pub fn route_of(method: &http::Method, path: &str) -> &'static str {
    use tollgate_api::contract;
    match (method, path) {
        (&http::Method::POST, "/mutate") => "mutate",
        (&http::Method::POST, "/validate") => "validate",
        (&http::Method::POST, "/approvals") => "approvals",
        (&http::Method::POST, "/pins") => "pins",
        (&http::Method::POST, p) if p == contract::PINS_PATH => "pin-report",
        (&http::Method::GET, p) if p == contract::STREAM_PATH => "stream",
        (_, p) if p.starts_with(contract::APPROVALS_PATH) => "held-call",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operators_metrics_are_prefixed_and_the_exporters_named_as_the_sidecars() {
        let m = Metrics::new();
        m.reconciles
            .get_or_create(&Reconcile {
                kind: "McpPolicy",
                result: "ok",
            })
            .inc();
        m.traces.dropped_export_failed.inc();
        let text = m.encode();
        assert!(
            text.contains("tollgate_operator_reconciles_total{kind=\"McpPolicy\",result=\"ok\"} 1")
        );
        assert!(text.contains("tollgate_trace_spans_dropped_total{reason=\"export_failed\"} 1"));
        assert!(text.contains("tollgate_operator_ready 0"));
        assert_eq!(text.matches("# EOF").count(), 1);
        assert!(text.ends_with("# EOF\n"));
    }
}
