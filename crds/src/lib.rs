//! Tollgate's policy language.
//!
//! ```text
//! McpPolicy / McpClusterPolicy / policy.json / Intercept YAML
//!     -> load          -> NamedPolicy { name, spec: PolicySpec }
//!     -> validate      -> every Problem, with its field path and a fix
//!     -> compile       -> PolicySet (regexes, globs and limits resolved once)
//!     -> decide        -> Verdict { Decision, audit } + the counters to reserve
//! ```
//!
//! No I/O lives here: the sidecar, the operator and the `check` command wrap these functions.
#![forbid(unsafe_code)]

pub mod contract;
#[cfg(feature = "kube")]
pub mod crd;
pub mod decide;
pub mod effective;
pub mod load;
pub mod problem;
pub mod resources;
pub mod selector;
pub mod validate;

pub use decide::{
    Call, CounterKey, Counters, Decision, Denial, Identity, NoCounters, PolicySet, Reservation,
    Verdict,
};
pub use effective::{EffectivePolicy, PolicyUpdate, ServiceAccountKeys, Workload};
pub use load::{Format, Loaded, NamedPolicy, load_file};
pub use problem::{Problem, Problems};
pub use resources::*;
pub use selector::{LabelSelector, LabelSelectorRequirement, selects};
