//! Tollgate's policy language, and the contract between its two planes.
//!
//! ```text
//! McpPolicy / McpClusterPolicy / policy.json / Intercept YAML
//!     -> load          -> NamedPolicy { name, spec: PolicySpec }
//!     -> validate      -> every Problem, with its field path and a fix
//!     -> effective     -> EffectivePolicy (a pod's policies, as the operator streams them)
//!     -> decide        -> compile: PolicySet (regexes, globs, counter names resolved once)
//!                         evaluate: Verdict { Decision, audit } + the counters to reserve
//! ```
//!
//! `resources` is what a user writes; `selector` reads label selectors; `contract` is what the
//! operator and the sidecar agree on (environment, stream, token, annotations). No I/O lives
//! here: the sidecar, the operator and the `check` command wrap these functions.
//!
//! The Kubernetes types (`McpPolicy`, `McpClusterPolicy`, `PolicyStatus`, the CRDs in
//! `crd`) need the `kube` feature, which links kube, k8s-openapi and schemars; the operator
//! and `crdgen` enable it, the data plane does not. Without it, files in CRD form still load.
#![forbid(unsafe_code)]

pub mod approval;
pub mod contract;
#[cfg(feature = "kube")]
pub mod crd;
pub mod decide;
pub mod effective;
pub mod load;
pub mod pin;
pub mod problem;
pub mod resources;
pub mod selector;
pub mod validate;

pub use approval::*;
pub use decide::{
    Call, CounterKey, CounterName, Counters, Decision, Denial, Identity, NoCounters, PinRules,
    PolicySet, Reservation, Verdict,
};
pub use effective::{EffectivePolicy, PolicyUpdate, ServiceAccountKeys, Workload};
pub use load::{Format, Loaded, NamedPolicy, load_file};
pub use pin::*;
pub use problem::{Problem, Problems};
pub use resources::*;
pub use selector::{LabelSelector, LabelSelectorRequirement, selects};
