//! What every replica knows of the cluster: injected pods, namespaces and policies, kept by
//! reflectors, plus the cluster's service-account token keys.
//!
//! ```text
//! watch Pods (label tollgate.dev/injected=true, metadata only) ─┐
//! watch Namespaces (metadata only)                              ├─> Index ─ changed (watch) ─> controllers
//! watch McpPolicies, McpClusterPolicies, McpToolPins            ┘     └─ PodPolicies: one sender per pod ─> its streams
//! watch NetworkPolicies, Services ─> boundary_changed (watch) ─> the network-policy boundary
//! watch McpApprovals ─> approvals_changed (watch) ─> held calls waiting for a decision
//! GET /.well-known/openid-configuration, /openid/v1/jwks ─ every 5 min ─> service-account keys
//! ```
//!
//! Each pod's policy is kept by [`PodPolicies`] (pure, in [`pods`]), which recomputes only the
//! pods a change can concern and wakes only the streams whose policy it changed.
//!
//! Each kind is watched once, here. The leader's controllers are fed from these watches
//! ([`Index::policy_events`] and the like), not from watches of their own; and a pod or
//! namespace event names only the policies whose selection it changed
//! ([`Index::affected_policies`]): those that selected the object before the event and not
//! after, or after and not before. A relist, or a controller that fell behind, reconciles
//! everything ([`Index::resyncs`]). A watch that keeps failing shows in [`Health`].

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{broadcast, watch};
use tollgate_api::{
    DefaultAction, McpApproval, McpClusterPolicy, McpPolicy, McpToolPin, ServiceAccountKeys,
};

use crate::health::Health;
use tollgate_api::contract::TOKEN_AUDIENCE;
use tollgate_api::contract::annotations::INJECTED_LABEL;

pub mod pods;

pub use pods::{PodMeta, PodPolicies, PodPolicy};

/// The operator's view of the cluster, shared by the webhooks, the streams and the controllers.
pub struct Index {
    pub pods: Store<PodMeta>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    pub policies: Store<McpPolicy>,
    pub cluster_policies: Store<McpClusterPolicy>,
    pub network_policies: Store<NetworkPolicy>,
    pub services: Store<Service>,
    pub approvals: Store<McpApproval>,
    pub pins: Store<McpToolPin>,
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
    /// Each policy, cluster policy and approval as its watch applies it (for the controllers).
    policy_events: broadcast::Sender<Arc<McpPolicy>>,
    cluster_policy_events: broadcast::Sender<Arc<McpClusterPolicy>>,
    approval_events: broadcast::Sender<Arc<McpApproval>>,
    pin_events: broadcast::Sender<Arc<McpToolPin>>,
    /// The policies whose selection a pod or namespace event changed.
    affected_policies: broadcast::Sender<ObjectRef<McpPolicy>>,
    affected_cluster_policies: broadcast::Sender<ObjectRef<McpClusterPolicy>>,
    /// Ticks when every policy should be reconciled (a relist).
    resync: watch::Sender<u64>,
    /// Each injected pod's effective policy, with a sender per pod (what the streams follow).
    pod_policies: parking_lot::Mutex<PodPolicies>,
    /// True once every store has listed. (A store's own readiness wakes one waiter only, so
    /// the index waits on them once and everyone else on this.)
    listed: watch::Sender<bool>,
}

/// The policies that select one pod.
#[derive(Default)]
struct Selecting {
    policies: HashSet<ObjectRef<McpPolicy>>,
    cluster: HashSet<ObjectRef<McpClusterPolicy>>,
}

/// How many events a controller may fall behind before it reconciles everything instead.
const EVENTS_BUFFERED: usize = 1024;

impl Index {
    /// Starts the reflectors; the returned future drives them and never ends. Watches that
    /// keep failing are reported to `health`.
    pub fn start(
        client: Client,
        default_action: DefaultAction,
        health: Arc<Health>,
    ) -> (Arc<Index>, impl Future<Output = ()> + Send) {
        let (pods, pods_w) = reflector::store();
        let (namespaces, namespaces_w) = reflector::store();
        let (policies, policies_w) = reflector::store();
        let (cluster_policies, cluster_policies_w) = reflector::store();
        let (network_policies, network_policies_w) = reflector::store();
        let (services, services_w) = reflector::store();
        let (approvals, approvals_w) = reflector::store();
        let (pins, pins_w) = reflector::store();
        let index = Arc::new(Index {
            pods,
            namespaces,
            policies,
            cluster_policies,
            network_policies,
            services,
            approvals,
            pins,
            approvals_changed: watch::channel(0).0,
            keys: ArcSwapOption::empty(),
            changed: watch::channel(0).0,
            boundary_changed: watch::channel(0).0,
            boundary_findings: ArcSwap::default(),
            findings_changed: watch::channel(0).0,
            policy_events: broadcast::channel(EVENTS_BUFFERED).0,
            cluster_policy_events: broadcast::channel(EVENTS_BUFFERED).0,
            approval_events: broadcast::channel(EVENTS_BUFFERED).0,
            pin_events: broadcast::channel(EVENTS_BUFFERED).0,
            affected_policies: broadcast::channel(EVENTS_BUFFERED).0,
            affected_cluster_policies: broadcast::channel(EVENTS_BUFFERED).0,
            resync: watch::channel(0).0,
            pod_policies: parking_lot::Mutex::new(PodPolicies::new(default_action)),
            listed: watch::channel(false).0,
        });
        let injected = watcher::Config::default().labels(&format!("{INJECTED_LABEL}=true"));
        let (i, j) = (index.clone(), index.clone());
        let pods = watched(
            PODS_WATCH,
            watcher(Api::<PodMeta>::all(client.clone()), injected),
            pods_w,
            move |e| i.before_pod(e),
            move |e| {
                j.after_selection_change(e);
                j.pods_applied(e);
            },
        );
        let (i, j) = (index.clone(), index.clone());
        let namespaces = watched(
            "the watch of Namespaces",
            watcher(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                Default::default(),
            ),
            namespaces_w,
            move |e| i.before_namespace(e),
            move |e| {
                j.after_selection_change(e);
                j.namespaces_applied(e);
            },
        );
        let i = index.clone();
        let policies = watched(
            "the watch of McpPolicies",
            watcher(Api::<McpPolicy>::all(client.clone()), Default::default()),
            policies_w,
            |_| {},
            move |e| {
                applied(e, &i.policy_events);
                i.policies_applied(e);
            },
        );
        let i = index.clone();
        let cluster_policies = watched(
            "the watch of McpClusterPolicies",
            watcher(
                Api::<McpClusterPolicy>::all(client.clone()),
                Default::default(),
            ),
            cluster_policies_w,
            |_| {},
            move |e| {
                applied(e, &i.cluster_policy_events);
                i.cluster_policies_applied(e);
            },
        );
        let i = index.clone();
        let pins = watched(
            "the watch of McpToolPins",
            watcher(Api::<McpToolPin>::all(client.clone()), Default::default()),
            pins_w,
            |_| {},
            move |e| {
                applied(e, &i.pin_events);
                i.pins_applied(e);
            },
        );
        let streams =
            futures::stream::select_all([pods, namespaces, policies, cluster_policies, pins]);
        let boundary = futures::stream::select_all([
            watched(
                "the watch of NetworkPolicies",
                watcher(
                    Api::<NetworkPolicy>::all(client.clone()),
                    Default::default(),
                ),
                network_policies_w,
                |_| {},
                |_| {},
            ),
            watched(
                "the watch of Services",
                watcher(Api::<Service>::all(client.clone()), Default::default()),
                services_w,
                |_| {},
                |_| {},
            ),
        ]);
        let i = index.clone();
        let approvals = futures::stream::select_all([watched(
            "the watch of McpApprovals",
            watcher(Api::<McpApproval>::all(client.clone()), Default::default()),
            approvals_w,
            |_| {},
            move |e| applied(e, &i.approval_events),
        )]);
        // Policy inputs tick the policy channel, and pods the boundary's too (it reads pods,
        // NetworkPolicies and Services only: a policy change does not replan it); the
        // boundary's own inputs only its channel; approvals only theirs.
        let i = index.clone();
        let driver = drive(streams, health.clone(), move |watch| {
            i.changed.send_modify(|n| *n += 1);
            if watch == PODS_WATCH {
                i.boundary_changed.send_modify(|n| *n += 1);
            }
        });
        let i = index.clone();
        let boundary_driver = drive(boundary, health.clone(), move |_| {
            i.boundary_changed.send_modify(|n| *n += 1)
        });
        let i = index.clone();
        let approvals_driver = drive(approvals, health, move |_| {
            i.approvals_changed.send_modify(|n| *n += 1)
        });
        let keys = refresh_keys(index.clone(), client);
        let i = index.clone();
        let listed = async move {
            let _ = tokio::join!(
                i.pods.wait_until_ready(),
                i.namespaces.wait_until_ready(),
                i.policies.wait_until_ready(),
                i.cluster_policies.wait_until_ready(),
                i.network_policies.wait_until_ready(),
                i.services.wait_until_ready(),
                i.approvals.wait_until_ready(),
                i.pins.wait_until_ready(),
            );
            i.listed.send_replace(true);
        };
        (index, async move {
            tokio::join!(driver, boundary_driver, approvals_driver, keys, listed);
        })
    }

    /// Before the store takes a pod event: the policies whose selection it changes, from the
    /// pod as stored and the pod as it comes.
    fn before_pod(&self, event: &watcher::Event<PodMeta>) {
        let (watcher::Event::Apply(pod) | watcher::Event::Delete(pod)) = event else {
            return;
        };
        let ns = pod.namespace().unwrap_or_default();
        let ns_labels = self.namespace_labels(&ns);
        let (policies, cluster) = (self.policies.state(), self.cluster_policies.state());
        let select = |p: Option<&PodMeta>| {
            p.map(|p| selection(&policies, &cluster, &ns, &ns_labels, p.labels()))
                .unwrap_or_default()
        };
        let old = select(self.pods.get(&ObjectRef::from_obj(pod)).as_deref());
        let new = select(matches!(event, watcher::Event::Apply(_)).then_some(pod));
        let (policies, cluster) = changed(&old, &new);
        for r in policies {
            let _ = self.affected_policies.send(r);
        }
        for r in cluster {
            let _ = self.affected_cluster_policies.send(r);
        }
    }

    /// Before the store takes a namespace event: the cluster policies whose namespace selector
    /// it changes (namespaced policies select by pod labels alone).
    fn before_namespace(&self, event: &watcher::Event<PartialObjectMeta<Namespace>>) {
        let (watcher::Event::Apply(ns) | watcher::Event::Delete(ns)) = event else {
            return;
        };
        let empty = BTreeMap::new();
        let old = self.namespace_labels(&ns.name_any());
        let new = match event {
            watcher::Event::Apply(ns) => ns.labels(),
            _ => &empty,
        };
        for r in namespace_changed(&self.cluster_policies.state(), &old, new) {
            let _ = self.affected_cluster_policies.send(r);
        }
    }

    /// A pod event, into the pods' policies (a relist replaces them all).
    fn pods_applied(&self, event: &watcher::Event<PodMeta>) {
        let mut pods = self.pod_policies.lock();
        match event {
            watcher::Event::Apply(pod) => pods.apply_pod(pod),
            watcher::Event::Delete(pod) => {
                pods.delete_pod(&pod.namespace().unwrap_or_default(), &pod.name_any())
            }
            watcher::Event::InitDone => pods.reset_pods(self.pods.state().iter().map(|p| &**p)),
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }

    fn namespaces_applied(&self, event: &watcher::Event<PartialObjectMeta<Namespace>>) {
        let mut pods = self.pod_policies.lock();
        match event {
            watcher::Event::Apply(ns) => pods.apply_namespace(&ns.name_any(), ns.labels()),
            watcher::Event::Delete(ns) => pods.delete_namespace(&ns.name_any()),
            watcher::Event::InitDone => {
                let all = self.namespaces.state();
                let names: Vec<String> = all.iter().map(|ns| ns.name_any()).collect();
                pods.reset_namespaces(
                    names
                        .iter()
                        .map(String::as_str)
                        .zip(all.iter().map(|ns| ns.labels())),
                );
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }

    fn policies_applied(&self, event: &watcher::Event<McpPolicy>) {
        let mut pods = self.pod_policies.lock();
        match event {
            watcher::Event::Apply(p) => pods.apply_policy(Arc::new(p.clone())),
            watcher::Event::Delete(p) => {
                pods.delete_policy(&p.namespace().unwrap_or_default(), &p.name_any())
            }
            watcher::Event::InitDone => pods.reset_policies(self.policies.state()),
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }

    fn pins_applied(&self, event: &watcher::Event<McpToolPin>) {
        let mut pods = self.pod_policies.lock();
        match event {
            watcher::Event::Apply(p) => pods.apply_pin(p),
            watcher::Event::Delete(p) => {
                pods.delete_pin(&p.namespace().unwrap_or_default(), &p.name_any())
            }
            watcher::Event::InitDone => {
                let all = self.pins.state();
                pods.reset_pins(all.iter().map(|p| &**p));
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }

    fn cluster_policies_applied(&self, event: &watcher::Event<McpClusterPolicy>) {
        let mut pods = self.pod_policies.lock();
        match event {
            watcher::Event::Apply(p) => pods.apply_cluster_policy(Arc::new(p.clone())),
            watcher::Event::Delete(p) => pods.delete_cluster_policy(&p.name_any()),
            watcher::Event::InitDone => pods.reset_cluster_policies(self.cluster_policies.state()),
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }

    /// One pod's policy as it is now and as it changes, while that pod (with this uid, when
    /// given) exists.
    pub fn pod_policy(
        &self,
        namespace: &str,
        name: &str,
        uid: Option<&str>,
    ) -> Option<watch::Receiver<Arc<PodPolicy>>> {
        self.pod_policies.lock().subscribe(namespace, name, uid)
    }

    /// After a pod or namespace relist, every policy is reconciled: what was deleted while the
    /// watch was down is only seen as the store's contents changing.
    fn after_selection_change<K>(&self, event: &watcher::Event<K>) {
        if matches!(event, watcher::Event::InitDone) {
            self.resync.send_modify(|n| *n += 1);
        }
    }

    /// Every McpPolicy as its watch applies it, then as it changes. A subscriber that falls
    /// behind is resynced ([`Index::resyncs`]) and goes on from the newest.
    pub fn policy_events(self: &Arc<Self>) -> impl Stream<Item = Arc<McpPolicy>> + Send + 'static {
        self.follow(self.policy_events.subscribe())
    }

    pub fn cluster_policy_events(
        self: &Arc<Self>,
    ) -> impl Stream<Item = Arc<McpClusterPolicy>> + Send + 'static {
        self.follow(self.cluster_policy_events.subscribe())
    }

    pub fn approval_events(
        self: &Arc<Self>,
    ) -> impl Stream<Item = Arc<McpApproval>> + Send + 'static {
        self.follow(self.approval_events.subscribe())
    }

    pub fn pin_events(self: &Arc<Self>) -> impl Stream<Item = Arc<McpToolPin>> + Send + 'static {
        self.follow(self.pin_events.subscribe())
    }

    /// The McpPolicies whose selection of pods a pod or namespace event changed.
    pub fn affected_policies(
        self: &Arc<Self>,
    ) -> impl Stream<Item = ObjectRef<McpPolicy>> + Send + 'static {
        self.follow(self.affected_policies.subscribe())
    }

    pub fn affected_cluster_policies(
        self: &Arc<Self>,
    ) -> impl Stream<Item = ObjectRef<McpClusterPolicy>> + Send + 'static {
        self.follow(self.affected_cluster_policies.subscribe())
    }

    /// Ticks once at once, then whenever everything should be reconciled.
    pub fn resyncs(&self) -> impl Stream<Item = ()> + Send + 'static {
        futures::stream::once(async {}).chain(ticks(self.resync.subscribe()))
    }

    fn follow<T: Clone + Send + 'static>(
        self: &Arc<Self>,
        rx: broadcast::Receiver<T>,
    ) -> impl Stream<Item = T> + Send + 'static {
        let index = self.clone();
        futures::stream::unfold(rx, move |mut rx| {
            let index = index.clone();
            async move {
                loop {
                    match rx.recv().await {
                        Ok(item) => return Some((item, rx)),
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::warn!(
                                missed,
                                "a controller fell behind the watches; reconciling everything"
                            );
                            index.resync.send_modify(|n| *n += 1);
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        })
    }

    /// Resolves once every reflector has listed its resource (any number may wait).
    pub async fn ready(&self) {
        let _ = self.listed.subscribe().wait_for(|listed| *listed).await;
    }

    /// Resolves once the McpClusterPolicy `name` as the index holds it (or its absence)
    /// satisfies `wanted`.
    pub async fn cluster_policy_until(
        &self,
        name: &str,
        wanted: impl Fn(Option<&McpClusterPolicy>) -> bool,
    ) {
        let key = ObjectRef::new(name);
        let mut changed = self.subscribe();
        while !wanted(self.cluster_policies.get(&key).as_deref()) {
            if changed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
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

/// The policies among these that select a pod of `namespace` with these labels.
fn selection(
    policies: &[Arc<McpPolicy>],
    cluster: &[Arc<McpClusterPolicy>],
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> Selecting {
    Selecting {
        policies: policies
            .iter()
            .filter(|p| {
                p.namespace().as_deref() == Some(namespace)
                    && tollgate_api::selects(p.spec.selector.as_ref(), labels)
            })
            .map(|p| ObjectRef::from_obj(&**p))
            .collect(),
        cluster: cluster
            .iter()
            .filter(|p| {
                tollgate_api::selects(p.spec.namespace_selector.as_ref(), namespace_labels)
                    && tollgate_api::selects(p.spec.policy.selector.as_ref(), labels)
            })
            .map(|p| ObjectRef::from_obj(&**p))
            .collect(),
    }
}

/// The policies in one selection and not the other: those whose count of pods changed.
fn changed(
    old: &Selecting,
    new: &Selecting,
) -> (Vec<ObjectRef<McpPolicy>>, Vec<ObjectRef<McpClusterPolicy>>) {
    (
        old.policies
            .symmetric_difference(&new.policies)
            .cloned()
            .collect(),
        old.cluster
            .symmetric_difference(&new.cluster)
            .cloned()
            .collect(),
    )
}

/// The cluster policies whose namespace selector reads two label sets differently.
fn namespace_changed(
    cluster: &[Arc<McpClusterPolicy>],
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Vec<ObjectRef<McpClusterPolicy>> {
    cluster
        .iter()
        .filter(|p| {
            let sel = p.spec.namespace_selector.as_ref();
            tollgate_api::selects(sel, old) != tollgate_api::selects(sel, new)
        })
        .map(|p| ObjectRef::from_obj(&**p))
        .collect()
}

/// A tick for every change a watch channel sees.
pub fn ticks(rx: watch::Receiver<u64>) -> impl Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    })
}

type Touches =
    std::pin::Pin<Box<dyn Stream<Item = (&'static str, Result<(), watcher::Error>)> + Send>>;

/// The pods' watch, by name: what the boundary reads of the policy inputs.
const PODS_WATCH: &str = "the watch of injected Pods";

/// Drives watches into their stores, calling `tick` on every change they bring (with the
/// watch's name); a watch that fails (and retries with backoff) is reported until it works
/// again.
async fn drive(
    mut streams: futures::stream::SelectAll<Touches>,
    health: Arc<Health>,
    tick: impl Fn(&'static str),
) {
    while let Some((name, what)) = streams.next().await {
        match what {
            Ok(()) => {
                health.ok(name);
                tick(name);
            }
            Err(e) => {
                tracing::warn!(watch = name, error = %e, "watch failed; retrying with backoff");
                health.fail(name, &e);
            }
        }
    }
}

/// A watch into its store: `before` sees each event while the store still holds the old
/// object, `after` once the store has it.
fn watched<K, S>(
    name: &'static str,
    stream: S,
    mut writer: reflector::store::Writer<K>,
    mut before: impl FnMut(&watcher::Event<K>) + Send + 'static,
    mut after: impl FnMut(&watcher::Event<K>) + Send + 'static,
) -> Touches
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    K: kube::Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default + Send + Sync,
{
    Box::pin(stream.default_backoff().map(move |event| {
        let event = event.map(|e| {
            before(&e);
            writer.apply_watcher_event(&e);
            after(&e);
        });
        (name, event)
    }))
}

/// Sends each object a watch event applies.
fn applied<K>(event: &watcher::Event<K>, to: &broadcast::Sender<Arc<K>>)
where
    K: Clone,
{
    if let watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) = event {
        let _ = to.send(Arc::new(obj.clone()));
    }
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
                    let keys = Arc::new(keys);
                    index.keys.store(Some(keys.clone()));
                    index.pod_policies.lock().set_keys(Some(keys));
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// An McpPolicy of `ns` selecting `app` (every pod of `ns` without), listing `tools`.
    pub(super) fn policy(
        ns: &str,
        name: &str,
        app: Option<&str>,
        tools: &[&str],
    ) -> Arc<McpPolicy> {
        let selector = app.map(|a| json!({ "matchLabels": { "app": a } }));
        let tools: serde_json::Map<String, serde_json::Value> = tools
            .iter()
            .map(|t| (t.to_string(), json!({ "rules": [] })))
            .collect();
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "tollgate.dev/v1alpha1", "kind": "McpPolicy",
                "metadata": { "name": name, "namespace": ns },
                "spec": { "selector": selector, "tools": tools },
            }))
            .unwrap(),
        )
    }

    /// An McpClusterPolicy for namespaces labelled `team` (every namespace without).
    pub(super) fn cluster_policy(name: &str, team: Option<&str>) -> Arc<McpClusterPolicy> {
        let ns_selector = team.map(|t| json!({ "matchLabels": { "team": t } }));
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "tollgate.dev/v1alpha1", "kind": "McpClusterPolicy",
                "metadata": { "name": name },
                "spec": { "namespaceSelector": ns_selector, "policy": { "tools": {} } },
            }))
            .unwrap(),
        )
    }

    fn names<K: kube::Resource>(refs: Vec<ObjectRef<K>>) -> Vec<String>
    where
        K::DynamicType: Eq + std::hash::Hash + Clone,
    {
        let mut n: Vec<String> = refs.into_iter().map(|r| r.name).collect();
        n.sort();
        n
    }

    #[test]
    fn a_pod_whose_labels_change_affects_only_the_policies_that_selected_it_before_or_after() {
        let policies = [
            policy("shop", "for-a", Some("a"), &[]),
            policy("shop", "for-b", Some("b"), &[]),
            policy("shop", "for-all", None, &[]),
            policy("other", "elsewhere", Some("a"), &[]),
        ];
        let cluster = [cluster_policy("everywhere", None)];
        let ns = labels(&[]);
        let old = selection(&policies, &cluster, "shop", &ns, &labels(&[("app", "a")]));
        let new = selection(&policies, &cluster, "shop", &ns, &labels(&[("app", "b")]));
        let (p, c) = changed(&old, &new);
        assert_eq!(names(p), ["for-a", "for-b"]);
        assert!(
            c.is_empty(),
            "a policy that selects it either way counts it either way"
        );
        // A new pod, or one deleted: every policy that selects it.
        let (p, c) = changed(&Selecting::default(), &new);
        assert_eq!(names(p), ["for-all", "for-b"]);
        assert_eq!(names(c), ["everywhere"]);
    }

    #[test]
    fn a_namespace_relabelled_affects_only_the_cluster_policies_whose_namespace_selector_changes() {
        let cluster = [
            cluster_policy("payments", Some("payments")),
            cluster_policy("search", Some("search")),
            cluster_policy("everywhere", None),
        ];
        let old = labels(&[("team", "payments")]);
        let new = labels(&[("team", "search")]);
        assert_eq!(
            names(namespace_changed(&cluster, &old, &new)),
            ["payments", "search"]
        );
        assert!(namespace_changed(&cluster, &old, &old).is_empty());
    }
}
