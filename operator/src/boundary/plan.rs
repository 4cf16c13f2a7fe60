//! The boundary's decisions, pure functions of the index: the objects each namespace and port
//! needs, and what would still reach an app around its sidecar.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use serde_json::json;
use tollgate_api::contract::annotations::APP_PORT_LABEL;
use tollgate_api::contract::{APP_PORT_NAME, BoundaryMode, InjectedStatus};
use tollgate_api::selects;

use super::{CNP_GROUP, CNP_KIND, CNP_VERSION, MANAGED_BY, network_policy_name};
use crate::index::{Index, PodMeta};

pub(super) fn managed_labels(port: i32) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (APP_PORT_LABEL.to_string(), port.to_string()),
    ])
}

pub(super) fn is_ours(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY.0))
        .map(String::as_str)
        == Some(MANAGED_BY.1)
}

pub(super) fn app_selector(port: i32) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            APP_PORT_LABEL.to_string(),
            port.to_string(),
        )])),
        ..Default::default()
    }
}

/// Tollgate's NetworkPolicy for the pods of `namespace` whose MCP port is `port`.
///
/// It selects them for ingress, so they are isolated: only what some policy admits reaches
/// them. Where no other policy isolates them, it admits every port but `port` from anywhere,
/// so the pods stay as reachable as before except around the sidecar. Where another one already
/// does (`others_isolate`), admitting anything would widen that one, so it admits nothing.
pub fn network_policy(namespace: &str, port: i32, others_isolate: bool) -> NetworkPolicy {
    let range = |protocol: &str, from: i32, to: i32| NetworkPolicyPort {
        protocol: Some(protocol.into()),
        port: Some(IntOrString::Int(from)),
        end_port: Some(to),
    };
    let mut ports = Vec::new();
    if port > 1 {
        ports.push(range("TCP", 1, port - 1));
    }
    if port < 65535 {
        ports.push(range("TCP", port + 1, 65535));
    }
    ports.push(range("UDP", 1, 65535));
    ports.push(range("SCTP", 1, 65535));
    let ingress = if others_isolate {
        Vec::new()
    } else {
        vec![NetworkPolicyIngressRule {
            from: None,
            ports: Some(ports),
        }]
    };
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(network_policy_name(port)),
            namespace: Some(namespace.into()),
            labels: Some(managed_labels(port)),
            annotations: Some(BTreeMap::from([(
                "tollgate.dev/purpose".to_string(),
                format!(
                    "keeps port {port} of pods labelled {APP_PORT_LABEL}={port} behind their Tollgate sidecar"
                ),
            )])),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(app_selector(port)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            egress: None,
        }),
    }
}

/// Tollgate's ClusterNetworkPolicy for MCP port `port`, in every namespace: the Admin tier is
/// decided before any NetworkPolicy, so nothing a namespace writes admits the port.
pub fn cluster_network_policy(port: i32) -> serde_json::Value {
    json!({
        "apiVersion": format!("{CNP_GROUP}/{CNP_VERSION}"),
        "kind": CNP_KIND,
        "metadata": { "name": network_policy_name(port), "labels": managed_labels(port) },
        "spec": {
            "tier": "Admin",
            "priority": 0,
            "subject": { "pods": {
                "namespaceSelector": {},
                "podSelector": app_selector(port),
            }},
            "ingress": [{
                "name": "around-the-tollgate-sidecar",
                "action": "Deny",
                "from": [{ "namespaces": {} }],
                "protocols": [{ "tcp": { "destinationPort": { "number": port } } }],
            }],
        },
    })
}

/// The app's MCP port of a pod injected with the `network-policy` boundary.
pub fn app_port(pod: &PodMeta) -> Option<i32> {
    pod.labels().get(APP_PORT_LABEL)?.parse().ok()
}

/// What injection recorded of a pod (its `tollgate.dev/status` annotation).
pub(super) fn injected_status(pod: &PodMeta) -> Option<InjectedStatus> {
    InjectedStatus::of(pod.annotations())
}

pub(super) fn selects_for_ingress(np: &NetworkPolicy, labels: &BTreeMap<String, String>) -> bool {
    let Some(spec) = &np.spec else { return false };
    let ingress = match &spec.policy_types {
        Some(types) => types.iter().any(|t| t == "Ingress"),
        // Without policyTypes a policy isolates ingress (and egress only with egress rules).
        None => true,
    };
    ingress && kube_selects(spec.pod_selector.as_ref(), labels)
}

/// Kubernetes' own selector type, matched as Tollgate's policies match theirs.
pub(super) fn kube_selects(
    selector: Option<&LabelSelector>,
    labels: &BTreeMap<String, String>,
) -> bool {
    let selector = selector.map(|s| tollgate_api::LabelSelector {
        match_labels: s.match_labels.clone(),
        match_expressions: s.match_expressions.as_ref().map(|all| {
            all.iter()
                .map(|e| tollgate_api::LabelSelectorRequirement {
                    key: e.key.clone(),
                    operator: e.operator.clone(),
                    values: e.values.clone(),
                })
                .collect()
        }),
    });
    selects(selector.as_ref(), labels)
}

/// Whether a rule's port list admits TCP `port` of an app whose port is named `tollgate-app`.
pub(super) fn admits(ports: Option<&Vec<NetworkPolicyPort>>, port: i32) -> bool {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return true;
    };
    ports.iter().any(|p| {
        p.protocol.as_deref().unwrap_or("TCP") == "TCP"
            && match &p.port {
                None => true,
                Some(IntOrString::Int(n)) => (*n..=p.end_port.unwrap_or(*n)).contains(&port),
                Some(IntOrString::String(name)) => name == APP_PORT_NAME,
            }
    })
}

/// What a namespace holds that bears on the boundary.
#[derive(Default)]
pub struct Namespace<'a> {
    pub network_policies: Vec<&'a NetworkPolicy>,
    pub services: Vec<&'a Service>,
}

/// The desired state of one namespace and port, and what goes around it.
#[derive(Debug, PartialEq)]
pub struct Group {
    pub network_policy: NetworkPolicy,
    /// Per pod name: each way the app's port is still reached around the sidecar (or a port of
    /// the pod the boundary closed), as a sentence.
    pub findings: BTreeMap<String, Vec<String>>,
}

/// Decides the policy of pods `members` (all in `namespace`, all with MCP port `port`) and what
/// each would still let around the sidecar.
pub fn plan(namespace: &str, port: i32, members: &[&PodMeta], around: &Namespace) -> Group {
    let others: Vec<&NetworkPolicy> = around
        .network_policies
        .iter()
        .copied()
        .filter(|np| !is_ours(&np.metadata))
        .collect();
    let taken = others
        .iter()
        .any(|np| np.name_any() == network_policy_name(port));
    let others_isolate = members.iter().any(|pod| {
        others
            .iter()
            .any(|np| selects_for_ingress(np, pod.labels()))
    });
    let mut findings = BTreeMap::new();
    for pod in members {
        let labels = pod.labels();
        let mut found = Vec::new();
        for np in others.iter().filter(|np| selects_for_ingress(np, labels)) {
            let rules = np.spec.as_ref().and_then(|s| s.ingress.as_ref());
            for (i, rule) in rules.into_iter().flatten().enumerate() {
                if admits(rule.ports.as_ref(), port) {
                    let from = match &rule.from {
                        None => "anywhere".to_string(),
                        Some(peers) if peers.is_empty() => "anywhere".to_string(),
                        Some(_) => "the peers it lists".to_string(),
                    };
                    found.push(format!(
                        "NetworkPolicy {} (spec.ingress[{i}]) admits port {port} from {from}: \
                         that traffic reaches the app around the sidecar; admit the sidecar's \
                         port (by the name the MCP port had) instead",
                        np.name_any()
                    ));
                }
            }
        }
        if taken {
            found.push(format!(
                "{}, so Tollgate cannot keep port {port} closed",
                Taken(network_policy_name(port))
            ));
        }
        if others_isolate && !others.iter().any(|np| selects_for_ingress(np, labels)) {
            found.push(format!(
                "NetworkPolicy {} admits nothing to this pod, because other NetworkPolicies \
                 isolate pods with MCP port {port} and admitting ports would widen them; no \
                 other policy selects this pod, so nothing reaches it until one does",
                network_policy_name(port)
            ));
        }
        for svc in &around.services {
            let Some(spec) = &svc.spec else { continue };
            let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
                continue;
            };
            if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                continue;
            }
            for (i, p) in spec.ports.iter().flatten().enumerate() {
                let target = match &p.target_port {
                    Some(IntOrString::Int(n)) => Some(*n),
                    Some(IntOrString::String(_)) => None,
                    None => Some(p.port),
                };
                if target == Some(port) {
                    found.push(format!(
                        "Service {} (spec.ports[{i}]) targets port {port} by number: the \
                         NetworkPolicy refuses its clients, and where the network does not \
                         enforce NetworkPolicies they reach the app around the sidecar; target \
                         the port by its name",
                        svc.name_any()
                    ));
                }
            }
        }
        if !found.is_empty() {
            findings.insert(pod.name_any(), found);
        }
    }
    Group {
        network_policy: network_policy(namespace, port, others_isolate),
        findings,
    }
}

/// Pods injected with the `network-policy` boundary whose label was taken away: no policy
/// selects them any more.
pub(super) fn unlabelled(pod: &PodMeta) -> Option<String> {
    let mode = injected_status(pod).and_then(|s| s.mode());
    (mode == Some(BoundaryMode::NetworkPolicy) && app_port(pod).is_none()).then(|| {
        format!(
            "the pod was injected with the network-policy boundary but its {APP_PORT_LABEL} label \
             is gone, so no NetworkPolicy keeps its MCP port behind the sidecar; delete the pod \
             so it is injected again"
        )
    })
}

/// Everything the leader keeps, computed from the index.
#[derive(Debug, Default, PartialEq)]
pub struct Desired {
    /// (namespace, port) -> the NetworkPolicy.
    pub network_policies: BTreeMap<(String, i32), NetworkPolicy>,
    /// The MCP ports of every network-policy pod in the cluster.
    pub ports: BTreeSet<i32>,
    /// (namespace, pod) -> findings.
    pub findings: BTreeMap<(String, String), Vec<String>>,
}

pub fn desired(index: &Index) -> Desired {
    let pods = index.pods.state();
    let policies = index.network_policies.state();
    let services = index.services.state();
    let mut groups: BTreeMap<(String, i32), Vec<&PodMeta>> = BTreeMap::new();
    let mut out = Desired::default();
    for pod in pods.iter() {
        let ns = pod.namespace().unwrap_or_default();
        match app_port(pod) {
            Some(port) => groups.entry((ns, port)).or_default().push(pod),
            None => {
                if let Some(finding) = unlabelled(pod) {
                    out.findings.insert((ns, pod.name_any()), vec![finding]);
                }
            }
        }
    }
    // Only the namespaces with network-policy pods are looked into.
    let mut namespaces: BTreeMap<String, Namespace> = groups
        .keys()
        .map(|(ns, _)| (ns.clone(), Namespace::default()))
        .collect();
    for np in policies.iter() {
        if let Some(n) = namespaces.get_mut(np.namespace().as_deref().unwrap_or_default()) {
            n.network_policies.push(np);
        }
    }
    for svc in services.iter() {
        if let Some(n) = namespaces.get_mut(svc.namespace().as_deref().unwrap_or_default()) {
            n.services.push(svc);
        }
    }
    let empty = Namespace::default();
    for ((ns, port), members) in groups {
        let group = plan(&ns, port, &members, namespaces.get(&ns).unwrap_or(&empty));
        out.ports.insert(port);
        for (pod, found) in group.findings {
            out.findings.insert((ns.clone(), pod), found);
        }
        out.network_policies
            .insert((ns, port), group.network_policy);
    }
    out
}

/// The NetworkPolicy by the name Tollgate uses is someone else's: it is never overwritten.
#[derive(Debug, thiserror::Error)]
#[error(
    "NetworkPolicy {0} exists and is not Tollgate's (it lacks the label {managed}={by}); rename it",
    managed = MANAGED_BY.0,
    by = MANAGED_BY.1
)]
pub struct Taken(pub(super) String);

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use kube::api::PartialObjectMeta;
    use tollgate_api::contract::annotations::STATUS as STATUS_ANNOTATION;

    fn pod(name: &str, labels: &[(&str, &str)]) -> PodMeta {
        let mut pod = PartialObjectMeta::<k8s_openapi::api::core::v1::Pod>::default();
        pod.metadata.name = Some(name.into());
        pod.metadata.namespace = Some("team".into());
        pod.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        pod
    }

    fn app(name: &str) -> PodMeta {
        pod(name, &[("app", "mcp"), (APP_PORT_LABEL, "8080")])
    }

    fn user_policy(
        name: &str,
        selector: &[(&str, &str)],
        rules: serde_json::Value,
    ) -> NetworkPolicy {
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": "team" },
            "spec": {
                "podSelector": { "matchLabels": selector.iter().cloned().collect::<BTreeMap<_, _>>() },
                "ingress": rules,
            }
        }))
        .unwrap()
    }

    fn ports_of(np: &NetworkPolicy) -> Vec<(String, i32, i32)> {
        let rules = np.spec.as_ref().unwrap().ingress.clone().unwrap();
        rules
            .iter()
            .flat_map(|r| r.ports.clone().unwrap_or_default())
            .map(|p| {
                let IntOrString::Int(from) = p.port.unwrap() else {
                    panic!()
                };
                (p.protocol.unwrap(), from, p.end_port.unwrap())
            })
            .collect()
    }

    #[test]
    fn the_policy_admits_every_port_of_every_protocol_but_the_apps() {
        let np = network_policy("team", 8080, false);
        assert_eq!(
            ports_of(&np),
            [
                ("TCP".into(), 1, 8079),
                ("TCP".into(), 8081, 65535),
                ("UDP".into(), 1, 65535),
                ("SCTP".into(), 1, 65535),
            ]
        );
        let spec = np.spec.as_ref().unwrap();
        assert_eq!(
            spec.policy_types.as_deref(),
            Some(&["Ingress".to_string()][..])
        );
        assert!(
            spec.ingress.as_ref().unwrap()[0].from.is_none(),
            "from anywhere"
        );
        assert_eq!(
            spec.pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()[APP_PORT_LABEL],
            "8080"
        );
        for edge in [1, 65535] {
            let ports = ports_of(&network_policy("team", edge, false));
            assert!(
                ports
                    .iter()
                    .all(|(proto, from, to)| proto != "TCP" || !(*from..=*to).contains(&edge))
            );
            assert_eq!(ports.iter().filter(|p| p.0 == "TCP").count(), 1);
        }
    }

    #[test]
    fn pods_another_policy_isolates_get_a_policy_that_admits_nothing_so_it_widens_nothing() {
        let restrictive = user_policy(
            "only-agents",
            &[("app", "mcp")],
            json!([{ "from": [{ "namespaceSelector": { "matchLabels": { "role": "agents" } } }],
                     "ports": [{ "port": "mcp" }] }]),
        );
        let around = Namespace {
            network_policies: vec![&restrictive],
            services: vec![],
        };
        let a = app("a");
        let group = plan("team", 8080, &[&a], &around);
        assert_eq!(
            group.network_policy.spec.unwrap().ingress,
            Some(vec![]),
            "isolate only: the user's policy decides who reaches the sidecar's port"
        );
        assert!(group.findings.is_empty(), "{:?}", group.findings);
    }

    #[test]
    fn a_policy_that_admits_the_apps_port_is_reported_as_a_way_around() {
        let all = user_policy("allow-all", &[], json!([{}]));
        let by_number = user_policy(
            "by-number",
            &[("app", "mcp")],
            json!([{ "ports": [{ "port": 8080 }] }]),
        );
        let by_range = user_policy(
            "by-range",
            &[("app", "mcp")],
            json!([{ "ports": [{ "port": 8000, "endPort": 9000 }] }]),
        );
        let udp_only = user_policy(
            "udp",
            &[("app", "mcp")],
            json!([{ "ports": [{ "port": 8080, "protocol": "UDP" }] }]),
        );
        let sidecar_port = user_policy(
            "sidecar",
            &[("app", "mcp")],
            json!([{ "ports": [{ "port": "mcp" }] }]),
        );
        let other_pods = user_policy("others", &[("app", "web")], json!([{}]));
        let around = Namespace {
            network_policies: vec![
                &all,
                &by_number,
                &by_range,
                &udp_only,
                &sidecar_port,
                &other_pods,
            ],
            services: vec![],
        };
        let a = app("a");
        let group = plan("team", 8080, &[&a], &around);
        let found = &group.findings["a"];
        let named: Vec<&str> = [
            "allow-all",
            "by-number",
            "by-range",
            "udp",
            "sidecar",
            "others",
        ]
        .into_iter()
        .filter(|n| {
            found
                .iter()
                .any(|f| f.contains(&format!("NetworkPolicy {n} ")))
        })
        .collect();
        assert_eq!(named, ["allow-all", "by-number", "by-range"]);
        assert!(found[0].contains("from anywhere"), "{found:?}");
    }

    #[test]
    fn a_service_targeting_the_apps_port_by_number_is_reported_and_by_name_is_not() {
        let service = |name: &str, target: Option<IntOrString>, port: i32| Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("team".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(BTreeMap::from([("app".into(), "mcp".into())])),
                ports: Some(vec![ServicePort {
                    port,
                    target_port: target,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        };
        let by_number = service("by-number", Some(IntOrString::Int(8080)), 80);
        let implied = service("implied", None, 8080);
        let by_name = service("by-name", Some(IntOrString::String("mcp".into())), 80);
        let around = Namespace {
            network_policies: vec![],
            services: vec![&by_number, &implied, &by_name],
        };
        let a = app("a");
        let found = &plan("team", 8080, &[&a], &around).findings["a"];
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("Service by-number (spec.ports[0]) targets port 8080 by number")
        );
        assert!(found[1].starts_with("Service implied"));
    }

    #[test]
    fn a_network_policy_of_someone_else_by_tollgates_name_is_reported_not_overwritten() {
        let theirs = user_policy("tollgate-boundary-8080", &[("app", "web")], json!([{}]));
        let around = Namespace {
            network_policies: vec![&theirs],
            services: vec![],
        };
        let a = app("a");
        let found = &plan("team", 8080, &[&a], &around).findings["a"];
        assert!(
            found[0]
                .starts_with("NetworkPolicy tollgate-boundary-8080 exists and is not Tollgate's")
        );
    }

    #[test]
    fn a_pod_in_a_mixed_group_that_no_other_policy_selects_is_told_it_is_closed() {
        let restrictive = user_policy(
            "only-a",
            &[("name", "a")],
            json!([{ "ports": [{ "port": "mcp" }] }]),
        );
        let around = Namespace {
            network_policies: vec![&restrictive],
            services: vec![],
        };
        let mut a = app("a");
        a.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("name".into(), "a".into());
        let b = app("b");
        let group = plan("team", 8080, &[&a, &b], &around);
        assert!(!group.findings.contains_key("a"));
        assert!(group.findings["b"][0].contains("admits nothing to this pod"));
    }

    #[test]
    fn a_pod_whose_app_port_label_was_removed_is_reported_by_its_recorded_mode() {
        let status = |mode: Option<&str>, sentence: &str| {
            let mut v = json!({"version": "0.2.0", "sidecar": "tollgate-proxy", "upstreamPort": 8080,
                               "proxyPort": 15480, "boundary": sentence});
            if let Some(mode) = mode {
                v["mode"] = json!(mode);
            }
            BTreeMap::from([(STATUS_ANNOTATION.to_string(), v.to_string())])
        };
        let mut p = pod("a", &[("app", "mcp")]);
        for (mode, sentence, reported) in [
            (
                Some("network-policy"),
                "network-policy: NetworkPolicy …",
                true,
            ),
            (Some("redirect"), "redirect: …", false),
            // Injected before `mode` was recorded: the sentence began with it.
            (None, "network-policy: NetworkPolicy …", true),
            (None, "redirect: inbound TCP …", false),
        ] {
            p.metadata.annotations = Some(status(mode, sentence));
            assert_eq!(
                unlabelled(&p).is_some_and(|f| f.contains("label is gone")),
                reported,
                "{mode:?} {sentence}"
            );
        }
    }

    #[test]
    fn the_cluster_policy_denies_the_apps_port_from_every_namespace_in_the_admin_tier() {
        let cnp = cluster_network_policy(8080);
        assert_eq!(cnp["spec"]["tier"], "Admin");
        assert_eq!(cnp["spec"]["ingress"][0]["action"], "Deny");
        assert_eq!(
            cnp["spec"]["ingress"][0]["from"],
            json!([{ "namespaces": {} }])
        );
        assert_eq!(
            cnp["spec"]["ingress"][0]["protocols"],
            json!([{ "tcp": { "destinationPort": { "number": 8080 } } }])
        );
        assert_eq!(
            cnp["spec"]["subject"]["pods"]["podSelector"]["matchLabels"][APP_PORT_LABEL],
            "8080"
        );
    }
}
