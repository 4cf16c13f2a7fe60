//! Each injected pod's effective policy, kept as objects are applied and deleted, with one
//! watch sender per pod, as Linkerd's policy index keeps one per workload: a change recomputes
//! only the pods it can concern, and wakes only the streams of pods whose policy it changed.
//!
//! ```text
//! apply/delete Pod          ─> that pod
//! apply/delete Namespace    ─> the pods of that namespace, if its labels changed
//! apply/delete McpPolicy    ─> the pods of its namespace its old or new selector selects
//! apply/delete McpClusterPolicy ─> the pods its old or new selectors select
//! apply/delete McpToolPin   ─> the pods of its workload
//! service-account keys      ─> every pod (they travel with each policy)
//!                                  │ recompute: EffectivePolicy::for_workload
//!                                  └─> send_if_modified ─> the pod's streams, if it changed
//! ```
//!
//! A pod no stream follows is not computed: it is marked stale, and computed when a stream
//! subscribes (most injected pods have one sidecar connected, but a change should not cost the
//! pods whose sidecar is away).
//!
//! Pure: no client and no I/O. The index's watches feed it one object at a time, and a relist
//! replaces a kind whole ([`PodPolicies::reset_pods`] and the like); tests feed it directly.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::PartialObjectMeta;
use tokio::sync::watch;
use tollgate_api::{
    DefaultAction, EffectivePolicy, McpClusterPolicy, McpPolicy, McpToolPin, PinMode,
    ServiceAccountKeys, Workload, WorkloadPin, contract::annotations,
};

pub type PodMeta = PartialObjectMeta<Pod>;
type Labels = BTreeMap<String, String>;
/// A workload's tool pins, by tool.
pub type Pins = BTreeMap<String, WorkloadPin>;

/// What one pod's stream sends: its effective policy and the keys its sidecar verifies
/// agents' tokens with (and its workload's pins, where a policy pins tools), with the line the
/// stream writes of them. Made once per change for every pod it is the same for: pods selected
/// by the same policies share one, and its line is written once, however many sidecars follow.
#[derive(Debug)]
pub struct PodPolicy {
    /// Its revision is stamped when it is made: a pod is sent its policies in the order they
    /// were made, so each stream's revisions increase.
    pub policy: EffectivePolicy,
    pub keys: Option<Arc<ServiceAccountKeys>>,
    /// The pod's workload's tool pins, where a policy of the pod pins tools.
    pub pins: Option<Arc<Pins>>,
    /// The stream's line: the `PolicyUpdate` as JSON, and a newline.
    pub line: Bytes,
}

impl PodPolicy {
    pub fn new(
        mut policy: EffectivePolicy,
        keys: Option<Arc<ServiceAccountKeys>>,
        pins: Option<Arc<Pins>>,
    ) -> Self {
        policy.revision = next_revision();
        /// `PolicyUpdate` by reference: the same JSON, without copying the policy.
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Update<'a> {
            policy: &'a EffectivePolicy,
            #[serde(skip_serializing_if = "Option::is_none")]
            service_account_keys: Option<&'a ServiceAccountKeys>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pins: Option<&'a Pins>,
        }
        let mut line = serde_json::to_vec(&Update {
            policy: &policy,
            service_account_keys: keys.as_deref(),
            pins: pins.as_deref(),
        })
        .expect("a PolicyUpdate serialises");
        line.push(b'\n');
        PodPolicy {
            policy,
            keys,
            pins,
            line: line.into(),
        }
    }

    /// Whether `other` says the same, whatever their revisions.
    fn same(&self, other: &PodPolicy) -> bool {
        let (a, b) = (&self.policy, &other.policy);
        a.default_action == b.default_action
            && a.ungoverned_action == b.ungoverned_action
            && a.policies == b.policies
            && self.keys == other.keys
            && self.pins == other.pins
    }
}

/// Revisions increase across every pod policy this replica makes, and start from the clock
/// so a restarted or different replica continues above what a sidecar has seen.
fn next_revision() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = (prev + 1).max(now);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

/// The pods, the objects that decide their policies, and a sender per pod.
pub struct PodPolicies {
    default_action: DefaultAction,
    keys: Option<Arc<ServiceAccountKeys>>,
    namespaces: HashMap<String, Labels>,
    /// McpPolicies by namespace, then name.
    policies: HashMap<String, BTreeMap<String, Arc<McpPolicy>>>,
    cluster_policies: BTreeMap<String, Arc<McpClusterPolicy>>,
    /// Pods by namespace, then name.
    pods: HashMap<String, BTreeMap<String, PodEntry>>,
    /// McpToolPins by namespace, then workload (shared by its pods' policies), with the
    /// workload and tool each pin object is of, by name.
    pins: HashMap<String, HashMap<String, Arc<Pins>>>,
    pin_objects: HashMap<String, HashMap<String, (String, String)>>,
    /// How many pods' policies were computed, and how many of those changed (for tests and
    /// the benchmark's understanding of the cost of a change).
    pub recomputed: u64,
    /// Distinct policies made for them (pods selected alike share one).
    pub made: u64,
    pub sent: u64,
}

struct PodEntry {
    uid: Option<String>,
    /// Whose pins the pod's sidecar holds tools to (`crate::pins::workload_of`).
    workload: String,
    labels: Labels,
    /// The pod's own `tollgate.dev/default-action`, where it has a readable one.
    default_action: Option<DefaultAction>,
    tx: watch::Sender<Arc<PodPolicy>>,
    /// Whether `tx` holds the pod's policy as it is now (false while no stream followed it
    /// through a change).
    fresh: bool,
}

impl PodPolicies {
    pub fn new(default_action: DefaultAction) -> Self {
        PodPolicies {
            default_action,
            keys: None,
            namespaces: HashMap::new(),
            policies: HashMap::new(),
            cluster_policies: BTreeMap::new(),
            pods: HashMap::new(),
            pins: HashMap::new(),
            pin_objects: HashMap::new(),
            recomputed: 0,
            made: 0,
            sent: 0,
        }
    }

    /// A pod's policy as it is now and as it changes, while the pod with this name (and, when
    /// given, this uid) exists; `None` where it does not.
    pub fn subscribe(
        &mut self,
        namespace: &str,
        name: &str,
        uid: Option<&str>,
    ) -> Option<watch::Receiver<Arc<PodPolicy>>> {
        let entry = self.pods.get(namespace)?.get(name)?;
        if uid.is_some() && entry.uid.as_deref() != uid {
            return None;
        }
        let rx = entry.tx.subscribe();
        if !entry.fresh {
            self.compute(namespace, |n| n == name, true);
        }
        Some(rx)
    }

    /// A pod created or changed. A new uid under a known name is another pod: the old one's
    /// streams end.
    pub fn apply_pod(&mut self, pod: &PodMeta) {
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let uid = pod.uid();
        let labels = pod.labels().clone();
        let workload = crate::pins::workload_of(pod);
        let default_action = annotations::default_action(pod.annotations())
            .ok()
            .flatten();
        let pods = self.pods.entry(namespace.clone()).or_default();
        match pods.get_mut(&name) {
            Some(entry) if entry.uid == uid => {
                if entry.labels == labels
                    && entry.default_action == default_action
                    && entry.workload == workload
                {
                    return;
                }
                entry.labels = labels;
                entry.default_action = default_action;
                entry.workload = workload;
            }
            _ => {
                let (tx, _) = watch::channel(Arc::new(PodPolicy::new(
                    EffectivePolicy {
                        revision: 0,
                        default_action: self.default_action,
                        ungoverned_action: None,
                        policies: Vec::new(),
                    },
                    None,
                    None,
                )));
                pods.insert(
                    name.clone(),
                    PodEntry {
                        uid,
                        workload,
                        labels,
                        default_action,
                        tx,
                        fresh: false,
                    },
                );
            }
        }
        self.recompute(&namespace, |n| n == name);
    }

    /// A pod gone: its streams end.
    pub fn delete_pod(&mut self, namespace: &str, name: &str) {
        if let Some(pods) = self.pods.get_mut(namespace) {
            pods.remove(name);
            if pods.is_empty() {
                self.pods.remove(namespace);
            }
        }
    }

    /// Every pod, as a relist found them: the others are gone.
    pub fn reset_pods<'a>(&mut self, pods: impl IntoIterator<Item = &'a PodMeta>) {
        let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
        for pod in pods {
            seen.entry(pod.namespace().unwrap_or_default())
                .or_default()
                .insert(pod.name_any());
            self.apply_pod(pod);
        }
        let gone: Vec<(String, String)> = self
            .pods
            .iter()
            .flat_map(|(ns, pods)| pods.keys().map(move |n| (ns.clone(), n.clone())))
            .filter(|(ns, n)| !seen.get(ns).is_some_and(|names| names.contains(n)))
            .collect();
        for (ns, name) in gone {
            self.delete_pod(&ns, &name);
        }
    }

    /// A namespace's labels, as applied (a deleted namespace has none).
    pub fn apply_namespace(&mut self, name: &str, labels: &Labels) {
        if self.namespaces.get(name) == Some(labels) {
            return;
        }
        self.namespaces.insert(name.to_string(), labels.clone());
        self.recompute(name, |_| true);
    }

    pub fn delete_namespace(&mut self, name: &str) {
        if self.namespaces.remove(name).is_some() {
            self.recompute(name, |_| true);
        }
    }

    /// Every namespace, as a relist found them.
    pub fn reset_namespaces<'a>(&mut self, all: impl IntoIterator<Item = (&'a str, &'a Labels)>) {
        let all: HashMap<String, Labels> = all
            .into_iter()
            .map(|(n, l)| (n.to_string(), l.clone()))
            .collect();
        if all == self.namespaces {
            return;
        }
        self.namespaces = all;
        self.recompute_all();
    }

    pub fn apply_policy(&mut self, policy: Arc<McpPolicy>) {
        let namespace = policy.namespace().unwrap_or_default();
        let old = self
            .policies
            .entry(namespace.clone())
            .or_default()
            .insert(policy.name_any(), policy.clone());
        // A status write or a resync changes nothing any pod is decided by.
        if old.as_ref().is_some_and(|o| o.spec == policy.spec) {
            return;
        }
        self.recompute_policy_pods(&namespace, old.as_deref(), Some(&policy));
    }

    pub fn delete_policy(&mut self, namespace: &str, name: &str) {
        let old = self
            .policies
            .get_mut(namespace)
            .and_then(|p| p.remove(name));
        if let Some(old) = old {
            self.recompute_policy_pods(namespace, Some(&old), None);
        }
    }

    /// Every McpPolicy, as a relist found them.
    pub fn reset_policies(&mut self, all: impl IntoIterator<Item = Arc<McpPolicy>>) {
        let mut by_ns: HashMap<String, BTreeMap<String, Arc<McpPolicy>>> = HashMap::new();
        for p in all {
            by_ns
                .entry(p.namespace().unwrap_or_default())
                .or_default()
                .insert(p.name_any(), p);
        }
        self.policies = by_ns;
        self.recompute_all();
    }

    pub fn apply_cluster_policy(&mut self, policy: Arc<McpClusterPolicy>) {
        let old = self
            .cluster_policies
            .insert(policy.name_any(), policy.clone());
        if old.as_ref().is_some_and(|o| o.spec == policy.spec) {
            return;
        }
        self.recompute_cluster_policy_pods(old.as_deref(), Some(&policy));
    }

    pub fn delete_cluster_policy(&mut self, name: &str) {
        if let Some(old) = self.cluster_policies.remove(name) {
            self.recompute_cluster_policy_pods(Some(&old), None);
        }
    }

    /// Every McpClusterPolicy, as a relist found them.
    pub fn reset_cluster_policies(&mut self, all: impl IntoIterator<Item = Arc<McpClusterPolicy>>) {
        self.cluster_policies = all.into_iter().map(|p| (p.name_any(), p)).collect();
        self.recompute_all();
    }

    /// The cluster's service-account keys, which every pod's stream carries.
    /// An McpToolPin made or changed: the pods of its workload.
    pub fn apply_pin(&mut self, pin: &McpToolPin) {
        let namespace = pin.namespace().unwrap_or_default();
        let name = pin.name_any();
        let (workload, tool) = (pin.spec.workload.clone(), pin.spec.tool.clone());
        let now = WorkloadPin::from(&pin.spec);
        let before = self
            .pin_objects
            .entry(namespace.clone())
            .or_default()
            .insert(name, (workload.clone(), tool.clone()));
        let mut touched = vec![workload.clone()];
        if let Some((w, t)) = before
            && (w != workload || t != tool)
        {
            self.remove_pin(&namespace, &w, &t);
            touched.push(w);
        }
        let pins = self
            .pins
            .entry(namespace.clone())
            .or_default()
            .entry(workload)
            .or_default();
        // Unchanged, and no other workload lost it: nothing to send.
        if pins.get(&tool) == Some(&now) && touched.len() == 1 {
            return;
        }
        Arc::make_mut(pins).insert(tool, now);
        self.recompute_workloads(&namespace, &touched);
    }

    /// An McpToolPin deleted: its workload's sidecars pin the tool anew.
    pub fn delete_pin(&mut self, namespace: &str, name: &str) {
        let Some((workload, tool)) = self
            .pin_objects
            .get_mut(namespace)
            .and_then(|m| m.remove(name))
        else {
            return;
        };
        self.remove_pin(namespace, &workload, &tool);
        self.recompute_workloads(namespace, &[workload]);
    }

    /// Every McpToolPin, as a relist found them.
    pub fn reset_pins<'a>(&mut self, all: impl IntoIterator<Item = &'a McpToolPin>) {
        self.pins.clear();
        self.pin_objects.clear();
        for pin in all {
            let namespace = pin.namespace().unwrap_or_default();
            self.pin_objects
                .entry(namespace.clone())
                .or_default()
                .insert(
                    pin.name_any(),
                    (pin.spec.workload.clone(), pin.spec.tool.clone()),
                );
            Arc::make_mut(
                self.pins
                    .entry(namespace)
                    .or_default()
                    .entry(pin.spec.workload.clone())
                    .or_default(),
            )
            .insert(pin.spec.tool.clone(), WorkloadPin::from(&pin.spec));
        }
        self.recompute_all();
    }

    fn remove_pin(&mut self, namespace: &str, workload: &str, tool: &str) {
        if let Some(pins) = self
            .pins
            .get_mut(namespace)
            .and_then(|w| w.get_mut(workload))
        {
            Arc::make_mut(pins).remove(tool);
        }
    }

    fn recompute_workloads(&mut self, namespace: &str, workloads: &[String]) {
        let names: HashSet<String> = self
            .pods
            .get(namespace)
            .into_iter()
            .flatten()
            .filter(|(_, e)| workloads.contains(&e.workload))
            .map(|(n, _)| n.clone())
            .collect();
        self.recompute(namespace, |n| names.contains(n));
    }

    pub fn set_keys(&mut self, keys: Option<Arc<ServiceAccountKeys>>) {
        if self.keys == keys {
            return;
        }
        self.keys = keys;
        self.recompute_all();
    }

    /// The pods of `namespace` that an McpPolicy selected before or selects now.
    fn recompute_policy_pods(
        &mut self,
        namespace: &str,
        old: Option<&McpPolicy>,
        new: Option<&McpPolicy>,
    ) {
        let selected_by = |p: Option<&McpPolicy>, labels: &Labels| {
            p.is_some_and(|p| tollgate_api::selects(p.spec.selector.as_ref(), labels))
        };
        let names: HashSet<String> = self
            .pods
            .get(namespace)
            .into_iter()
            .flatten()
            .filter(|(_, e)| selected_by(old, &e.labels) || selected_by(new, &e.labels))
            .map(|(n, _)| n.clone())
            .collect();
        self.recompute(namespace, |n| names.contains(n));
    }

    /// The pods a cluster policy selected before or selects now.
    fn recompute_cluster_policy_pods(
        &mut self,
        old: Option<&McpClusterPolicy>,
        new: Option<&McpClusterPolicy>,
    ) {
        let selected_by = |p: Option<&McpClusterPolicy>, ns: &Labels, labels: &Labels| {
            p.is_some_and(|p| {
                tollgate_api::selects(p.spec.namespace_selector.as_ref(), ns)
                    && tollgate_api::selects(p.spec.policy.selector.as_ref(), labels)
            })
        };
        let empty = Labels::new();
        let mut targets: Vec<(String, HashSet<String>)> = Vec::new();
        for (ns, pods) in &self.pods {
            let ns_labels = self.namespaces.get(ns).unwrap_or(&empty);
            let names: HashSet<String> = pods
                .iter()
                .filter(|(_, e)| {
                    selected_by(old, ns_labels, &e.labels) || selected_by(new, ns_labels, &e.labels)
                })
                .map(|(n, _)| n.clone())
                .collect();
            if !names.is_empty() {
                targets.push((ns.clone(), names));
            }
        }
        for (ns, names) in targets {
            self.recompute(&ns, |n| names.contains(n));
        }
    }

    fn recompute_all(&mut self) {
        let namespaces: Vec<String> = self.pods.keys().cloned().collect();
        for ns in namespaces {
            self.recompute(&ns, |_| true);
        }
    }

    /// Computes the policy of the pods of `namespace` that `which` names, and sends each to its
    /// streams if it changed. Pods no stream follows are only marked stale.
    fn recompute(&mut self, namespace: &str, which: impl Fn(&str) -> bool) {
        self.compute(namespace, which, false);
    }

    fn compute(&mut self, namespace: &str, which: impl Fn(&str) -> bool, unfollowed_too: bool) {
        let Some(pods) = self.pods.get_mut(namespace) else {
            return;
        };
        let empty = Labels::new();
        let namespace_labels = self.namespaces.get(namespace).unwrap_or(&empty);
        let namespaced = self.policies.get(namespace);
        // Pods selected by the same policies, with the same default and pins, have the same
        // policy: it is validated, copied and written once per distinct selection in this
        // pass, however many pods share it (a policy selecting 1,000 replicas is one).
        let mut made: HashMap<Selection, Arc<PodPolicy>> = HashMap::new();
        for (name, entry) in pods.iter_mut().filter(|(n, _)| which(n)) {
            if !unfollowed_too && entry.tx.receiver_count() == 0 {
                entry.fresh = false;
                continue;
            }
            entry.fresh = true;
            self.recomputed += 1;
            // In name order, as `for_workload` orders them (the maps are by name).
            let cluster: Vec<&Arc<McpClusterPolicy>> = self
                .cluster_policies
                .values()
                .filter(|p| {
                    tollgate_api::selects(p.spec.namespace_selector.as_ref(), namespace_labels)
                        && tollgate_api::selects(p.spec.policy.selector.as_ref(), &entry.labels)
                })
                .collect();
            let local: Vec<&Arc<McpPolicy>> = namespaced
                .into_iter()
                .flat_map(|p| p.values())
                .filter(|p| tollgate_api::selects(p.spec.selector.as_ref(), &entry.labels))
                .collect();
            let default_action = entry.default_action.unwrap_or(self.default_action);
            let found = self
                .pins
                .get(namespace)
                .and_then(|w| w.get(&entry.workload));
            let selection = Selection {
                policies: cluster
                    .iter()
                    .map(|p| Arc::as_ptr(p) as usize)
                    .chain(local.iter().map(|p| Arc::as_ptr(p) as usize))
                    .collect(),
                default_action,
                // 0: the workload has none yet.
                pins: found.map_or(0, |p| Arc::as_ptr(p) as usize),
            };
            let now = made
                .entry(selection)
                .or_insert_with(|| {
                    self.made += 1;
                    let policy = EffectivePolicy::for_workload(
                        Workload {
                            namespace,
                            labels: &entry.labels,
                            namespace_labels,
                        },
                        cluster.iter().map(|p| &***p),
                        local.iter().map(|p| &***p),
                        default_action,
                    );
                    // Sent only where a policy pins tools, as it is in force: an invalid policy
                    // stands as a deny-all that pins nothing.
                    let pins_tools = policy.policies.iter().any(|p| {
                        p.spec
                            .pinning
                            .as_ref()
                            .is_some_and(|p| p.mode != PinMode::Off)
                    });
                    let pins = pins_tools.then(|| found.cloned().unwrap_or_default());
                    Arc::new(PodPolicy::new(policy, self.keys.clone(), pins))
                })
                .clone();
            let changed = entry.tx.send_if_modified(|cur| {
                if Arc::ptr_eq(cur, &now) || cur.same(&now) {
                    return false;
                }
                *cur = now;
                true
            });
            if changed {
                self.sent += 1;
                tracing::trace!(namespace, pod = %name, "pod policy changed");
            }
        }
    }
}

/// What a pod's policy is made of: the policies selecting it (by identity, in order), its
/// default, and its workload's pins.
#[derive(PartialEq, Eq, Hash)]
struct Selection {
    policies: Vec<usize>,
    default_action: DefaultAction,
    pins: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::tests::{cluster_policy, policy};
    use serde_json::json;

    fn pod(ns: &str, name: &str, uid: &str, labels: &[(&str, &str)]) -> PodMeta {
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "namespace": ns, "uid": uid, "labels": labels },
        }))
        .unwrap()
    }

    /// The names of the policies in force on a pod, as its stream would send them.
    fn names(rx: &mut watch::Receiver<Arc<PodPolicy>>) -> Vec<String> {
        rx.borrow_and_update()
            .policy
            .policies
            .iter()
            .map(|p| p.name.clone())
            .collect()
    }

    /// An index with pods a (app=a) and b (app=b) in `shop`, c (app=a) in `lab`.
    fn index() -> PodPolicies {
        let mut idx = PodPolicies::new(DefaultAction::Deny);
        idx.apply_namespace("shop", &Labels::from([("team".into(), "payments".into())]));
        idx.apply_namespace("lab", &Labels::new());
        idx.apply_pod(&pod("shop", "a", "u-a", &[("app", "a")]));
        idx.apply_pod(&pod("shop", "b", "u-b", &[("app", "b")]));
        idx.apply_pod(&pod("lab", "c", "u-c", &[("app", "a")]));
        idx
    }

    #[test]
    fn a_policy_change_wakes_only_the_pods_it_selected_or_selects() {
        let mut idx = index();
        let mut a = idx.subscribe("shop", "a", Some("u-a")).unwrap();
        let mut b = idx.subscribe("shop", "b", None).unwrap();
        let mut c = idx.subscribe("lab", "c", None).unwrap();
        for rx in [&mut a, &mut b, &mut c] {
            rx.mark_unchanged();
        }

        idx.apply_policy(policy("shop", "for-a", Some("a"), &["read"]));
        assert!(a.has_changed().unwrap());
        assert!(!b.has_changed().unwrap(), "b is not selected");
        assert!(
            !c.has_changed().unwrap(),
            "another namespace's pod with the same labels"
        );
        assert_eq!(names(&mut a), ["mcppolicy/shop/for-a"]);

        // Its selector moves from a to b: both change.
        idx.apply_policy(policy("shop", "for-a", Some("b"), &["read"]));
        assert_eq!(names(&mut a), Vec::<String>::new());
        assert_eq!(names(&mut b), ["mcppolicy/shop/for-a"]);

        // Applied again unchanged (a resync), or with only its status changed: nobody wakes.
        idx.apply_policy(policy("shop", "for-a", Some("b"), &["read"]));
        let mut written = (*policy("shop", "for-a", Some("b"), &["read"])).clone();
        written.status = Some(Default::default());
        idx.apply_policy(Arc::new(written));
        assert!(!a.has_changed().unwrap() && !b.has_changed().unwrap());

        idx.delete_policy("shop", "for-a");
        assert!(b.has_changed().unwrap());
        assert_eq!(names(&mut b), Vec::<String>::new());
        assert!(!a.has_changed().unwrap() && !c.has_changed().unwrap());
    }

    #[test]
    fn a_cluster_policy_reaches_the_pods_of_the_namespaces_it_selects_and_follows_their_labels() {
        let mut idx = index();
        let mut a = idx.subscribe("shop", "a", None).unwrap();
        let mut c = idx.subscribe("lab", "c", None).unwrap();
        idx.apply_cluster_policy(cluster_policy("payments", Some("payments")));
        assert_eq!(names(&mut a), ["mcpclusterpolicy/payments"]);
        assert!(!c.has_changed().unwrap());
        c.mark_unchanged();

        idx.apply_namespace("lab", &Labels::from([("team".into(), "payments".into())]));
        assert_eq!(names(&mut c), ["mcpclusterpolicy/payments"]);
        assert!(!a.has_changed().unwrap(), "shop's labels did not change");

        // A namespace event with the same labels (an annotation changed) wakes no one.
        idx.apply_namespace("lab", &Labels::from([("team".into(), "payments".into())]));
        assert!(!c.has_changed().unwrap());
    }

    #[test]
    fn a_pod_relabelled_gets_its_new_policy_and_a_pod_gone_or_replaced_ends_its_streams() {
        let mut idx = index();
        idx.apply_policy(policy("shop", "for-b", Some("b"), &["read"]));
        let mut a = idx.subscribe("shop", "a", Some("u-a")).unwrap();
        assert!(names(&mut a).is_empty());
        idx.apply_pod(&pod("shop", "a", "u-a", &[("app", "b")]));
        assert_eq!(names(&mut a), ["mcppolicy/shop/for-b"]);

        // The same name, another uid: another pod. The old one's stream ends, and a stream for
        // the old uid is not served.
        idx.apply_pod(&pod("shop", "a", "u-a2", &[("app", "b")]));
        assert!(a.has_changed().is_err(), "the replaced pod's stream ended");
        assert!(idx.subscribe("shop", "a", Some("u-a")).is_none());
        let mut a2 = idx.subscribe("shop", "a", Some("u-a2")).unwrap();
        assert_eq!(names(&mut a2), ["mcppolicy/shop/for-b"]);

        idx.delete_pod("shop", "a");
        assert!(a2.has_changed().is_err());
        assert!(idx.subscribe("shop", "a", None).is_none());
    }

    #[test]
    fn a_pods_default_action_annotation_and_the_cluster_keys_reach_its_stream() {
        let mut idx = index();
        let mut a = idx.subscribe("shop", "a", None).unwrap();
        assert_eq!(a.borrow().policy.default_action, DefaultAction::Deny);
        let mut annotated = pod("shop", "a", "u-a", &[("app", "a")]);
        annotated.metadata.annotations = Some(BTreeMap::from([(
            annotations::DEFAULT_ACTION.to_string(),
            "allow".to_string(),
        )]));
        idx.apply_pod(&annotated);
        assert!(a.has_changed().unwrap());
        assert_eq!(
            a.borrow_and_update().policy.default_action,
            DefaultAction::Allow
        );

        let keys = Arc::new(ServiceAccountKeys {
            issuer: "https://kubernetes.default.svc".into(),
            audience: "tollgate".into(),
            jwks: json!({"keys": []}),
        });
        idx.set_keys(Some(keys.clone()));
        assert_eq!(a.borrow_and_update().keys, Some(keys.clone()));
        idx.set_keys(Some(keys));
        assert!(!a.has_changed().unwrap(), "the same keys again wake no one");
    }

    #[test]
    fn a_relist_drops_what_is_gone_and_recomputes_only_what_changed() {
        let mut idx = index();
        idx.apply_policy(policy("shop", "for-a", Some("a"), &["read"]));
        let mut a = idx.subscribe("shop", "a", None).unwrap();
        let b = idx.subscribe("shop", "b", None).unwrap();
        a.mark_unchanged();
        // The watch was down while b was deleted and for-a changed its tools.
        idx.reset_pods(&[
            pod("shop", "a", "u-a", &[("app", "a")]),
            pod("lab", "c", "u-c", &[("app", "a")]),
        ]);
        assert!(b.has_changed().is_err(), "b is gone");
        idx.reset_policies([policy("shop", "for-a", Some("a"), &["write"])]);
        assert!(a.has_changed().unwrap());
        let tools: Vec<String> = a.borrow_and_update().policy.policies[0]
            .spec
            .tools
            .keys()
            .cloned()
            .collect();
        assert_eq!(tools, ["write"]);
    }

    #[test]
    fn with_a_thousand_pods_a_change_to_one_namespaces_policy_computes_only_its_pods() {
        let mut idx = PodPolicies::new(DefaultAction::Deny);
        let mut streams = Vec::new();
        for n in 0..1000 {
            let ns = format!("ns-{}", n % 100);
            idx.apply_pod(&pod(
                &ns,
                &format!("p-{n}"),
                &format!("u-{n}"),
                &[("app", "x")],
            ));
            streams.push(idx.subscribe(&ns, &format!("p-{n}"), None).unwrap());
        }
        let (computed, sent) = (idx.recomputed, idx.sent);
        idx.apply_policy(policy("ns-7", "only-here", None, &["read"]));
        assert_eq!(idx.recomputed - computed, 10, "the 10 pods of ns-7");
        assert_eq!(idx.sent - sent, 10);
        let (computed, sent) = (idx.recomputed, idx.sent);
        let made = idx.made;
        idx.apply_cluster_policy(cluster_policy("everywhere", None));
        assert_eq!(idx.recomputed - computed, 1000);
        assert_eq!(idx.sent - sent, 1000);
        // Made (validated, copied, written) once per namespace, not once per pod; each stream
        // is sent it with a revision above the last.
        assert_eq!(idx.made - made, 100);
        let (first, last) = (streams[0].borrow().clone(), streams[999].borrow().clone());
        assert!(
            Arc::ptr_eq(&first, &streams[100].borrow()),
            "ns-0's pods share one"
        );
        assert!(!Arc::ptr_eq(&first, &last));
        assert_eq!(first.line, streams[100].borrow().line);
        // The line is the `PolicyUpdate` a sidecar reads.
        let update: tollgate_api::PolicyUpdate = serde_json::from_slice(&first.line).unwrap();
        assert_eq!(update.policy, first.policy);
        assert_eq!(update.service_account_keys.as_ref(), first.keys.as_deref());
        assert_eq!(update.pins.as_ref(), first.pins.as_deref());
        assert!(first.line.ends_with(b"}\n"));
        idx.apply_cluster_policy(cluster_policy("everywhere", Some("x")));
        idx.apply_cluster_policy(cluster_policy("everywhere", None));
        assert!(streams[0].borrow().policy.revision > first.policy.revision);
        let (computed, sent) = (idx.recomputed, idx.sent);
        idx.apply_policy(policy("ns-7", "only-here", None, &["write"]));
        assert_eq!((idx.recomputed - computed, idx.sent - sent), (10, 10));

        // Pods whose sidecar is away cost nothing until one connects, which gets the policy in
        // force then.
        streams.truncate(1); // p-0, in ns-0
        let computed = idx.recomputed;
        idx.apply_cluster_policy(cluster_policy("second", None));
        assert_eq!(idx.recomputed - computed, 1);
        let mut late = idx.subscribe("ns-7", "p-7", None).unwrap();
        assert_eq!(
            names(&mut late),
            [
                "mcpclusterpolicy/everywhere",
                "mcpclusterpolicy/second",
                "mcppolicy/ns-7/only-here"
            ]
        );
    }

    #[test]
    fn a_workloads_pins_reach_only_its_pods_and_only_where_a_policy_pins() {
        let mut idx = index();
        let mut a = idx.subscribe("shop", "a", None).unwrap();
        let mut b = idx.subscribe("shop", "b", None).unwrap();
        let mut pinning = (*policy("shop", "pinned", None, &["t"])).clone();
        pinning.spec.pinning = Some(tollgate_api::Pinning {
            trust_on_first_use: true,
            ..Default::default()
        });
        idx.apply_policy(Arc::new(pinning));
        assert_eq!(a.borrow_and_update().pins.as_deref(), Some(&Pins::new()));
        let pin: McpToolPin = serde_json::from_value(json!({
            "apiVersion": "tollgate.dev/v1alpha1", "kind": "McpToolPin",
            "metadata": { "name": "pin-1", "namespace": "shop" },
            "spec": { "workload": "Pod/a", "tool": "t", "source": "FirstUse", "rejected": "sha256:x" },
        }))
        .unwrap();
        b.mark_unchanged();
        idx.apply_pin(&pin);
        let sent = a.borrow_and_update().pins.clone().unwrap();
        assert_eq!(sent["t"].rejected.as_deref(), Some("sha256:x"));
        assert!(
            !b.has_changed().unwrap(),
            "another workload's pod is not woken"
        );
        // The same pin moved to another workload (the webhook refuses it; the index follows).
        let mut moved = pin.clone();
        moved.spec.workload = "Pod/b".into();
        idx.apply_pin(&moved);
        assert!(a.borrow_and_update().pins.as_ref().unwrap().is_empty());
        assert!(
            b.borrow_and_update()
                .pins
                .as_ref()
                .unwrap()
                .contains_key("t")
        );
        idx.delete_pin("shop", "pin-1");
        assert!(b.borrow_and_update().pins.as_ref().unwrap().is_empty());
        // No policy pins: no pins are sent at all.
        idx.delete_policy("shop", "pinned");
        assert!(a.borrow_and_update().pins.is_none());
        // A policy that pins but is invalid stands as a deny-all that pins nothing.
        let mut invalid = (*policy("shop", "pinned", None, &["t"])).clone();
        invalid.spec.pinning = Some(tollgate_api::Pinning {
            trust_on_first_use: true,
            ..Default::default()
        });
        invalid
            .spec
            .tools
            .get_mut("t")
            .unwrap()
            .rules
            .push(tollgate_api::Rule {
                name: "bad".into(),
                rate_limit: Some("many/often".into()),
                ..Default::default()
            });
        idx.apply_policy(Arc::new(invalid));
        let now = a.borrow_and_update().clone();
        assert_eq!(now.policy.policies[0].spec.pinning, None, "the stand-in");
        assert!(now.pins.is_none());
    }
}
