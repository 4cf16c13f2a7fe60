//! The one function that decides a call.
//!
//! ```text
//! EffectivePolicy ── compile ──> PolicySet { default, [CompiledPolicy] }
//! PolicySet.decide(Call { tool, args, session }, Identity, Counters) -> Verdict
//!     applicable = policies whose subjects govern the caller
//!     hidden by any            -> Deny (hidden)
//!     a deny rule applies, a condition fails, a counter is full -> Deny (that rule)
//!     an approve rule applies  -> Approve
//!     listed by name or glob   -> Allow { reservations }
//!     else any default (or the cluster default) is deny -> Deny (default), else Allow
//! ```
//!
//! Policies in `audit` mode are evaluated as well, but only to report what they would have
//! denied ([`Verdict::audit`]). `tools/list` filtering is the same evaluation with the
//! arguments unknown ([`PolicySet::visible`]): a tool is listed unless it could never be called.
//!
//! - [`types`]: what deciding takes and gives (the caller, the call, counters and their keys,
//!   the decision);
//! - [`compile`]: a validated spec made ready to decide (regexes, globs and counter names
//!   resolved once);
//! - [`evaluate`]: a call decided against a compiled set;
//! - [`glob`]: the `*` patterns of tool names and paths.

pub mod compile;
pub mod evaluate;
pub mod glob;
pub mod types;

pub use compile::{CompiledPolicy, KIND_PREFIXES, PinRules, PolicySet};
pub use evaluate::{as_number, is_json_number};
pub use glob::{Glob, is_path_pattern, path_matches};
pub use types::{
    Call, CounterKey, CounterName, Counters, DEFAULT_APPROVAL_TIMEOUT, Decision, Denial, Identity,
    NoCounters, Reservation, Verdict,
};
