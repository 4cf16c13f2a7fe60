//! The boundary applied: the leader keeps the objects [`desired`] says (server-side apply, and
//! deletes only its own), and the webhook makes sure a pod's NetworkPolicy exists before the pod.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::events::Reporter;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::plan::{
    Taken, cluster_network_policy, desired, is_ours, network_policy, selects_for_ingress,
};
use super::report::report;
use super::{
    CNP_GROUP, CNP_KIND, CNP_VERSION, DISCOVERY_EVERY, FIELD_MANAGER, MANAGED_BY,
    network_policy_name,
};
use crate::index::Index;

#[derive(Debug, thiserror::Error)]
pub enum EnsureError {
    #[error(transparent)]
    Taken(#[from] Taken),
    #[error(transparent)]
    Api(#[from] kube::Error),
}

/// Makes sure the NetworkPolicy for a pod being admitted exists before the pod does, so no pod
/// starts with its MCP port open. The leader's loop keeps it right from then on.
pub async fn ensure_for_admission(
    client: &Client,
    index: &Index,
    namespace: &str,
    port: i32,
    labels: &BTreeMap<String, String>,
) -> Result<(), EnsureError> {
    let name = network_policy_name(port);
    let existing = index
        .network_policies
        .get(&kube::runtime::reflector::ObjectRef::new(&name).within(namespace));
    if existing.is_some_and(|np| is_ours(&np.metadata)) {
        return Ok(());
    }
    // Not in the cache (or not ours there): create, never overwrite. The cache may be behind
    // the API server, so what exists under the name is read back from it.
    let others_isolate = index.network_policies.state().iter().any(|np| {
        np.namespace().as_deref() == Some(namespace)
            && !is_ours(&np.metadata)
            && selects_for_ingress(np, labels)
    });
    let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), namespace);
    let np = network_policy(namespace, port, others_isolate);
    match api.create(&kube::api::PostParams::default(), &np).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let existing = api.get(&name).await?;
            if is_ours(&existing.metadata) {
                Ok(())
            } else {
                Err(Taken(name).into())
            }
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn apply_network_policy(
    client: &Client,
    np: &NetworkPolicy,
) -> Result<(), kube::Error> {
    let ns = np.metadata.namespace.as_deref().unwrap_or_default();
    let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    let mut object = serde_json::to_value(np).expect("a NetworkPolicy serialises");
    object["apiVersion"] = json!("networking.k8s.io/v1");
    object["kind"] = json!("NetworkPolicy");
    api.patch(
        &np.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map(drop)
}

pub(super) fn cnp_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(CNP_GROUP, CNP_VERSION, CNP_KIND),
        "clusternetworkpolicies",
    )
}

/// Whether the API server serves ClusterNetworkPolicy.
pub(super) async fn serves_cluster_network_policies(client: &Client) -> bool {
    match client
        .list_api_group_resources(&format!("{CNP_GROUP}/{CNP_VERSION}"))
        .await
    {
        Ok(list) => list.resources.iter().any(|r| r.kind == CNP_KIND),
        Err(_) => false,
    }
}

/// What the loop remembers between passes.
#[derive(Default)]
pub(super) struct Memory {
    /// Our objects no pod needs, and since when.
    unneeded: BTreeMap<String, Instant>,
    /// The findings last published per pod.
    pub(super) reported: BTreeMap<(String, String), Vec<String>>,
    cluster_policies: Option<(bool, Instant)>,
    grace: Duration,
}

/// Keeps the boundary's objects as [`desired`] says, until aborted (leadership lost).
///
/// `grace`: how long an object no pod needs is kept (a pod being admitted may not be in the
/// index yet).
pub async fn run(client: Client, index: Arc<Index>, reporter: Reporter, grace: Duration) {
    let mut changed = index.subscribe_boundary();
    let mut memory = Memory {
        grace,
        ..Memory::default()
    };
    loop {
        if let Err(e) = pass(&client, &index, &reporter, &mut memory).await {
            tracing::warn!(error = %e, "cannot keep the network-policy boundary; retrying");
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        }
        // Wake on a change, and at least every grace so unneeded objects are collected.
        let _ =
            tokio::time::timeout(memory.grace.max(Duration::from_secs(1)), changed.changed()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        changed.borrow_and_update();
    }
}

/// One pass over everything. An object the API server refuses does not hold up the others, nor
/// the report: the first error is returned once all were tried.
pub(super) async fn pass(
    client: &Client,
    index: &Index,
    reporter: &Reporter,
    memory: &mut Memory,
) -> Result<(), kube::Error> {
    let want = desired(index);
    let now = Instant::now();
    let mut failed = None;
    for np in want.network_policies.values() {
        let ns = np.metadata.namespace.as_deref().unwrap_or_default();
        let existing = index
            .network_policies
            .get(&kube::runtime::reflector::ObjectRef::new(&np.name_any()).within(ns));
        if existing.as_ref().is_some_and(|e| !is_ours(&e.metadata)) {
            // Reported by `desired` as a finding on each pod it leaves open.
            continue;
        }
        let same = existing
            .as_ref()
            .is_some_and(|e| e.spec == np.spec && e.metadata.labels == np.metadata.labels);
        if !same {
            match apply_network_policy(client, np).await {
                Ok(()) => {
                    tracing::info!(namespace = ns, name = %np.name_any(), "NetworkPolicy applied")
                }
                Err(e) => {
                    tracing::warn!(namespace = ns, name = %np.name_any(), error = %e, "cannot apply the NetworkPolicy");
                    failed.get_or_insert(e);
                }
            }
        }
    }
    let wanted: BTreeSet<String> = want
        .network_policies
        .keys()
        .map(|(ns, port)| format!("{ns}/{}", network_policy_name(*port)))
        .collect();
    for np in index.network_policies.state() {
        if !is_ours(&np.metadata) {
            continue;
        }
        let (ns, name) = (np.namespace().unwrap_or_default(), np.name_any());
        let key = format!("{ns}/{name}");
        if wanted.contains(&key) {
            memory.unneeded.remove(&key);
            continue;
        }
        let since = *memory.unneeded.entry(key.clone()).or_insert(now);
        if now.duration_since(since) < memory.grace {
            continue;
        }
        let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(namespace = %ns, %name, "NetworkPolicy no pod needs deleted");
                memory.unneeded.remove(&key);
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {
                memory.unneeded.remove(&key);
            }
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    if let Err(e) = keep_cluster_network_policies(client, &want.ports, memory, now).await {
        tracing::warn!(error = %e, "cannot keep the ClusterNetworkPolicies");
        // Ask again whether the API is served: it may have been removed.
        memory.cluster_policies = None;
        failed.get_or_insert(e);
    }
    report(client, index, reporter, &want.findings, memory).await;
    index.set_boundary_findings(want.findings);
    failed.map_or(Ok(()), Err)
}

pub(super) async fn keep_cluster_network_policies(
    client: &Client,
    ports: &BTreeSet<i32>,
    memory: &mut Memory,
    now: Instant,
) -> Result<(), kube::Error> {
    let served = match memory.cluster_policies {
        Some((served, at)) if now.duration_since(at) < DISCOVERY_EVERY => served,
        _ => {
            let served = serves_cluster_network_policies(client).await;
            if memory.cluster_policies.map(|(s, _)| s) != Some(served) {
                tracing::info!(served, "{CNP_GROUP}/{CNP_VERSION} {CNP_KIND}");
            }
            memory.cluster_policies = Some((served, now));
            served
        }
    };
    if !served {
        return Ok(());
    }
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &cnp_resource());
    let existing = api
        .list(
            &kube::api::ListParams::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1)),
        )
        .await?;
    for port in ports {
        let want = cluster_network_policy(*port);
        let name = network_policy_name(*port);
        let same = existing
            .items
            .iter()
            .any(|o| o.name_any() == name && o.data.get("spec") == want.get("spec"));
        if !same {
            api.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(want),
            )
            .await?;
            tracing::info!(%name, "ClusterNetworkPolicy applied");
        }
    }
    for object in &existing.items {
        let name = object.name_any();
        if ports.iter().any(|p| network_policy_name(*p) == name) {
            memory.unneeded.remove(&name);
            continue;
        }
        let since = *memory.unneeded.entry(name.clone()).or_insert(now);
        if now.duration_since(since) >= memory.grace {
            api.delete(&name, &DeleteParams::default()).await?;
            memory.unneeded.remove(&name);
        }
    }
    Ok(())
}
