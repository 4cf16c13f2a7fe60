//! The `network-policy` boundary: for pods that may not have `NET_ADMIN`, the network keeps
//! their MCP port behind the sidecar.
//!
//! ```text
//! injection labels the pod tollgate.dev/app-port=N ─┐  (the webhook makes sure the policy
//!                                                   │   exists before the pod is stored)
//! Index (injected pods, NetworkPolicies, Services) ─┴─> per namespace and port N:
//!     NetworkPolicy tollgate-boundary-N   selects app-port=N, admits every port but N
//!                                         (or, where other policies already isolate those
//!                                         pods, admits nothing: it must never widen them)
//!     ClusterNetworkPolicy tollgate-boundary-N   where policy.networking.k8s.io is served:
//!                                         Admin tier, Deny TCP N to app-port=N pods from every
//!                                         namespace; no namespace policy can override it
//!     findings: what would still reach the app around the sidecar, per pod
//!         ─> a Warning Event on the pod, and the Boundary condition of the policies selecting it
//! ```
//!
//! NetworkPolicies add up: any one that admits port N to a pod opens it, whatever Tollgate's
//! says. So the operator looks for the ways around and reports them rather than pretend.
//!
//! One NetworkPolicy per namespace and port, not per workload: a pod is selected by its labels,
//! and at admission a pod does not know its workload's name (a ReplicaSet's pod names its
//! ReplicaSet, not the Deployment). Pods of the same namespace with the same MCP port need the
//! same policy, so they share it.
//!
//! The decisions are pure functions of the index ([`plan`]); [`run`] applies them (leader only).

//!
//! ```text
//! plan.rs    pure: the objects each namespace and port needs, and what goes around them
//! apply.rs   the leader's loop and the webhook's ensure: server-side apply, garbage, discovery
//! report.rs  the findings as Events on the pods they concern
//! ```

mod apply;
mod plan;
mod report;

use std::time::Duration;

pub use apply::{EnsureError, ensure_for_admission, run};
pub use plan::Taken;
pub use plan::{
    Desired, Group, Namespace, app_port, cluster_network_policy, desired, network_policy, plan,
};
pub use tollgate_api::contract::network_policy_name;

/// The label that marks the objects this module owns (and the only ones it deletes).
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "tollgate-operator");
/// The field manager of every server-side apply.
const FIELD_MANAGER: &str = "tollgate-operator";
/// How often whether the cluster serves ClusterNetworkPolicy is asked again.
const DISCOVERY_EVERY: Duration = Duration::from_secs(60);
/// The network-policy-api's cluster-scoped policy (sigs.k8s.io/network-policy-api v0.3).
const CNP_GROUP: &str = "policy.networking.k8s.io";
const CNP_VERSION: &str = "v1alpha2";
const CNP_KIND: &str = "ClusterNetworkPolicy";
