//! What the sidecar tells: one JSON audit line per decision on stdout, and Prometheus metrics
//! on the admin port. It records what other layers decided and decides nothing.

pub mod audit;
pub mod metrics;
