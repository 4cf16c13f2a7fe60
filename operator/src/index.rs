//! What every replica knows of the cluster: injected pods, namespaces and policies, kept by
//! reflectors, plus the cluster's service-account token keys.
//!
//! ```text
//! watch Pods (label tollgate.dev/injected=true, metadata only) ─┐
//! watch Namespaces (metadata only)                              ├─> Index ─ changed (watch) ─> streams, controllers
//! watch McpPolicies, McpClusterPolicies                         ┘     └─ effective_for(pod) -> EffectivePolicy
//! watch NetworkPolicies, Services ─> boundary_changed (watch) ─> the network-policy boundary
//! watch McpApprovals ─> approvals_changed (watch) ─> held calls waiting for a decision
//! GET /.well-known/openid-configuration, /openid/v1/jwks ─ every 5 min ─> service-account keys
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tollgate_api::{
    DefaultAction, EffectivePolicy, McpApproval, McpClusterPolicy, McpPolicy, ServiceAccountKeys,
    Workload,
};

use crate::inject::{INJECTED_LABEL, TOKEN_AUDIENCE, default_action_override};

pub type PodMeta = PartialObjectMeta<Pod>;

/// The operator's view of the cluster, shared by the webhooks, the streams and the controllers.
pub struct Index {
    pub pods: Store<PodMeta>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    pub policies: Store<McpPolicy>,
    pub cluster_policies: Store<McpClusterPolicy>,
    pub network_policies: Store<NetworkPolicy>,
    pub services: Store<Service>,
    pub approvals: Store<McpApproval>,
    /// Ticks on every change to an McpApproval (held calls wait on it).
    approvals_changed: watch::Sender<u64>,
    keys: ArcSwapOption<ServiceAccountKeys>,
    changed: watch::Sender<u64>,
    /// Ticks on changes that bear on the boundary only (pods too), so a Service or
    /// NetworkPolicy does not make every stream recompute its pod's policy.
    boundary_changed: watch::Sender<u64>,
    /// What goes around the sidecar, per (namespace, pod), as the boundary loop last found.
    boundary_findings: ArcSwap<BTreeMap<(String, String), Vec<String>>>,
    findings_changed: watch::Sender<u64>,
    default_action: DefaultAction,
}

impl Index {
    /// Starts the reflectors; the returned future drives them and never ends.
    pub fn start(
        client: Client,
        default_action: DefaultAction,
    ) -> (Arc<Index>, impl Future<Output = ()> + Send) {
        let (pods, pods_w) = reflector::store();
        let (namespaces, namespaces_w) = reflector::store();
        let (policies, policies_w) = reflector::store();
        let (cluster_policies, cluster_policies_w) = reflector::store();
        let (network_policies, network_policies_w) = reflector::store();
        let (services, services_w) = reflector::store();
        let (approvals, approvals_w) = reflector::store();
        let (approvals_changed, _) = watch::channel(0);
        let (changed, _) = watch::channel(0);
        let (boundary_changed, _) = watch::channel(0);
        let (findings_changed, _) = watch::channel(0);
        let index = Arc::new(Index {
            pods,
            namespaces,
            policies,
            cluster_policies,
            network_policies,
            services,
            approvals,
            approvals_changed,
            keys: ArcSwapOption::empty(),
            changed,
            boundary_changed,
            boundary_findings: ArcSwap::default(),
            findings_changed,
            default_action,
        });
        let injected = watcher::Config::default().labels(&format!("{INJECTED_LABEL}=true"));
        let streams = futures::stream::select_all([
            touched(watcher(Api::<PodMeta>::all(client.clone()), injected).reflect(pods_w)),
            touched(
                watcher(
                    Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                    Default::default(),
                )
                .reflect(namespaces_w),
            ),
            touched(
                watcher(Api::<McpPolicy>::all(client.clone()), Default::default())
                    .reflect(policies_w),
            ),
            touched(
                watcher(
                    Api::<McpClusterPolicy>::all(client.clone()),
                    Default::default(),
                )
                .reflect(cluster_policies_w),
            ),
        ]);
        let boundary = futures::stream::select_all([
            touched(
                watcher(
                    Api::<NetworkPolicy>::all(client.clone()),
                    Default::default(),
                )
                .reflect(network_policies_w),
            ),
            touched(
                watcher(Api::<Service>::all(client.clone()), Default::default())
                    .reflect(services_w),
            ),
        ]);
        let approvals = futures::stream::select_all([touched(
            watcher(Api::<McpApproval>::all(client.clone()), Default::default())
                .reflect(approvals_w),
        )]);
        // Policy inputs tick every channel but the approvals'; the boundary's own inputs only
        // its channel; approvals only theirs.
        let i = index.clone();
        let driver = drive(streams, move || {
            i.changed.send_modify(|n| *n += 1);
            i.boundary_changed.send_modify(|n| *n += 1);
        });
        let i = index.clone();
        let boundary_driver = drive(boundary, move || {
            i.boundary_changed.send_modify(|n| *n += 1)
        });
        let i = index.clone();
        let approvals_driver = drive(approvals, move || {
            i.approvals_changed.send_modify(|n| *n += 1)
        });
        let keys = refresh_keys(index.clone(), client);
        (index, async move {
            tokio::join!(driver, boundary_driver, approvals_driver, keys);
        })
    }

    /// Resolves once every reflector has listed its resource.
    pub async fn ready(&self) {
        let _ = tokio::join!(
            self.pods.wait_until_ready(),
            self.namespaces.wait_until_ready(),
            self.policies.wait_until_ready(),
            self.cluster_policies.wait_until_ready(),
            self.network_policies.wait_until_ready(),
            self.services.wait_until_ready(),
            self.approvals.wait_until_ready(),
        );
    }

    /// Ticks on every change to anything the index holds.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Ticks on every change to an McpApproval.
    pub fn subscribe_approvals(&self) -> watch::Receiver<u64> {
        self.approvals_changed.subscribe()
    }

    /// Ticks on every change that bears on the network-policy boundary.
    pub fn subscribe_boundary(&self) -> watch::Receiver<u64> {
        self.boundary_changed.subscribe()
    }

    /// Records what goes around the sidecar; the policy controllers report it.
    pub fn set_boundary_findings(&self, findings: BTreeMap<(String, String), Vec<String>>) {
        if **self.boundary_findings.load() != findings {
            self.boundary_findings.store(Arc::new(findings));
            self.findings_changed.send_modify(|n| *n += 1);
        }
    }

    pub fn boundary_findings(&self) -> Arc<BTreeMap<(String, String), Vec<String>>> {
        self.boundary_findings.load_full()
    }

    /// Ticks when the boundary's findings change.
    pub fn subscribe_findings(&self) -> watch::Receiver<u64> {
        self.findings_changed.subscribe()
    }

    pub fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.namespaces
            .get(&ObjectRef::new(namespace))
            .map(|ns| ns.labels().clone())
            .unwrap_or_default()
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<Arc<PodMeta>> {
        self.pods.get(&ObjectRef::new(name).within(namespace))
    }

    pub fn service_account_keys(&self) -> Option<Arc<ServiceAccountKeys>> {
        self.keys.load_full()
    }

    /// The policy in force on one injected pod (revision 0; the stream stamps it).
    pub fn effective_for(&self, pod: &PodMeta) -> EffectivePolicy {
        let namespace = pod.namespace().unwrap_or_default();
        let namespace_labels = self.namespace_labels(&namespace);
        let default_action = default_action_override(&pod.metadata)
            .ok()
            .flatten()
            .unwrap_or(self.default_action);
        let cluster = self.cluster_policies.state();
        let namespaced = self.policies.state();
        EffectivePolicy::for_workload(
            Workload {
                namespace: &namespace,
                labels: pod.labels(),
                namespace_labels: &namespace_labels,
            },
            cluster.iter().map(|p| &**p),
            namespaced.iter().map(|p| &**p),
            default_action,
        )
    }

    /// What goes around the sidecar of the injected pods a policy selects, each as
    /// `namespace/pod: finding`.
    pub fn around_selected(
        &self,
        selects: impl Fn(&str, &BTreeMap<String, String>, &BTreeMap<String, String>) -> bool,
    ) -> Vec<String> {
        let findings = self.boundary_findings();
        findings
            .iter()
            .filter(|((ns, name), _)| {
                self.pod(ns, name)
                    .is_some_and(|pod| selects(ns, &self.namespace_labels(ns), pod.labels()))
            })
            .flat_map(|((ns, name), found)| found.iter().map(move |f| format!("{ns}/{name}: {f}")))
            .collect()
    }

    /// How many injected pods a policy selects.
    pub fn count_selected(
        &self,
        selects: impl Fn(&str, &BTreeMap<String, String>, &BTreeMap<String, String>) -> bool,
    ) -> u32 {
        // Each namespace's labels are read once, not once per pod.
        let mut namespace_labels = std::collections::HashMap::new();
        self.pods
            .state()
            .iter()
            .filter(|pod| {
                let ns = pod.namespace().unwrap_or_default();
                let labels = namespace_labels
                    .entry(ns.clone())
                    .or_insert_with(|| self.namespace_labels(&ns));
                selects(&ns, labels, pod.labels())
            })
            .count() as u32
    }
}

type Touches = std::pin::Pin<Box<dyn Stream<Item = Result<(), watcher::Error>> + Send>>;

/// Drives watches into their stores, calling `tick` on every change they bring.
async fn drive(mut streams: futures::stream::SelectAll<Touches>, tick: impl Fn()) {
    while let Some(what) = streams.next().await {
        match what {
            Ok(()) => tick(),
            Err(e) => tracing::warn!(error = %e, "watch failed; retrying with backoff"),
        }
    }
}

fn touched<K, S>(stream: S) -> Touches
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    Box::pin(stream.default_backoff().map(|e| e.map(drop)))
}

/// Keeps the cluster's service-account token keys current. Without them (e.g. the operator may
/// not read them), sidecars treat callers' Kubernetes tokens as unverified and the callers as
/// anonymous, so rules naming a serviceAccount match no one.
async fn refresh_keys(index: Arc<Index>, client: Client) {
    loop {
        match fetch_keys(&client).await {
            Ok(keys) => {
                let changed = index.keys.load().as_deref() != Some(&keys);
                if changed {
                    tracing::info!(issuer = %keys.issuer, "service-account token keys loaded");
                    index.keys.store(Some(Arc::new(keys)));
                    index.changed.send_modify(|n| *n += 1);
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot read the cluster's service-account token keys; sidecars cannot verify agents' Kubernetes tokens")
            }
        }
        tokio::time::sleep(Duration::from_secs(300)).await;
    }
}

async fn fetch_keys(client: &Client) -> anyhow::Result<ServiceAccountKeys> {
    use anyhow::Context;
    let get = |path: &str| {
        http::Request::get(path)
            .body(Vec::new())
            .expect("a GET request builds")
    };
    let discovery: serde_json::Value = client
        .request(get("/.well-known/openid-configuration"))
        .await
        .context("GET /.well-known/openid-configuration")?;
    let issuer = discovery
        .get("issuer")
        .and_then(|v| v.as_str())
        .context("the OpenID configuration names no issuer")?
        .to_string();
    let jwks: serde_json::Value = client
        .request(get("/openid/v1/jwks"))
        .await
        .context("GET /openid/v1/jwks")?;
    Ok(ServiceAccountKeys {
        issuer,
        audience: TOKEN_AUDIENCE.into(),
        jwks,
    })
}
