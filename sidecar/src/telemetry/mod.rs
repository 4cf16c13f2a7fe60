//! What the sidecar tells: one JSON audit line per decision on stdout, Prometheus metrics on
//! the admin port, and OpenTelemetry traces to a collector when one is configured. It records what other layers decided and decides nothing.

pub mod audit;
pub mod metrics;
pub mod trace;

/// What was decided of one call: the one name each kind has, in the audit log's `decision`
/// and in the metrics' `outcome` alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecisionKind {
    /// Sent on to the server.
    Allow,
    /// Refused by a rule, a limit, or the proxy's own state (the audit log full, approvals off).
    Deny,
    /// Held for a person, or refused because it needed one and none could be asked.
    Approve,
    /// Sent on, though it would have been denied: its policy is in audit mode.
    Audit,
}

impl DecisionKind {
    pub const ALL: [DecisionKind; 4] = [Self::Allow, Self::Deny, Self::Approve, Self::Audit];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Approve => "approve",
            Self::Audit => "audit",
        }
    }
}
