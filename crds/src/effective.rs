//! The effective policy of one workload: its wire form, as the operator streams it to a
//! sidecar and as a standalone sidecar builds it from a file.
//!
//! ```text
//! McpPolicy (selects pod) ─┐
//! McpClusterPolicy (ns)   ─┼─> EffectivePolicy { revision, defaultAction, policies } ──JSON──> sidecar
//! cluster default         ─┘                                       └─ compile ─> PolicySet
//! ```

use serde::{Deserialize, Serialize};

use crate::decide::PolicySet;
use crate::load::NamedPolicy;
use crate::problem::Problems;
use crate::resources::DefaultAction;

/// Every policy in force on one pod, in the order they are evaluated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectivePolicy {
    /// Increases with every change the sidecar is sent.
    pub revision: u64,
    /// The cluster-wide default for tools no applicable policy lists.
    pub default_action: DefaultAction,
    pub policies: Vec<NamedPolicy>,
}

impl EffectivePolicy {
    /// Compiles the wire form into the set the decision function reads.
    pub fn compile(&self) -> Result<PolicySet, Problems> {
        PolicySet::compile(
            self.revision,
            self.default_action,
            self.policies.iter().map(|p| (p.name.as_str(), &p.spec)),
        )
    }
}
