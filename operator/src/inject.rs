//! Sidecar injection: a pod in, the JSON patch that puts Tollgate in front of its MCP port out.
//!
//! ```text
//! Pod ─ wants_injection (pod annotation, namespace label) ─ no ──> Skip { reason }
//!  │                                                       ─ already injected ─> Unchanged
//!  └─ find the MCP port (tollgate.dev/port | container port `mcp`)
//!       ─> boundary (tollgate.dev/boundary, else the operator's --boundary):
//!            redirect        add the init container `tollgate init-redirect` (NET_ADMIN, NET_RAW):
//!                            inbound TCP to the port goes to the sidecar, however it is dialled;
//!                            the app's probes on the port move to the sidecar's admin port,
//!                            which runs them against the app (TOLLGATE_APP_PROBES)
//!            network-policy  no privilege: label the pod tollgate.dev/app-port; the operator's
//!                            NetworkPolicy for that label admits every port but the app's
//!                            (crate::boundary)
//!          both hand the port's name to the sidecar (the app's port is renamed, probes that
//!          stay follow it), so a Service targeting it by name reaches the sidecar directly
//!       ─> add the native sidecar (init container, restartPolicy: Always) + its token volume
//!       ─> record what was done (annotation tollgate.dev/status, label tollgate.dev/injected)
//!  ─> json_patch::diff(before, after)
//! ```
//!
//! Pure: the admission handler, the tests and the docs all go through [`inject_sidecar`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, ObjectFieldSelector, Pod, PodSpec, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;
use tollgate_api::DefaultAction;

pub use tollgate_api::contract::annotations::{
    ADMIN_PORT as ADMIN_PORT_ANNOTATION, APP_PORT_LABEL, BOUNDARY as BOUNDARY_ANNOTATION,
    DEFAULT_ACTION as DEFAULT_ACTION_ANNOTATION, INJECT as INJECT_ANNOTATION, INJECTED_LABEL,
    LOG_LEVEL as LOG_LEVEL_ANNOTATION, NAMESPACE_LABEL, PORT as PORT_ANNOTATION,
    PROXY_GID as PROXY_GID_ANNOTATION, PROXY_IMAGE as IMAGE_ANNOTATION,
    PROXY_PORT as PROXY_PORT_ANNOTATION, PROXY_UID as PROXY_UID_ANNOTATION,
    RESOURCES as RESOURCE_ANNOTATIONS, STATUS as STATUS_ANNOTATION,
};
use tollgate_api::contract::{
    APP_HEALTH_PREFIX, AppProbe, AppProbes, TOKEN_FILE, env as sidecar_env,
};
pub use tollgate_api::contract::{TOKEN_AUDIENCE, TOKEN_DIR};

/// The sidecar's container name.
pub const SIDECAR_NAME: &str = "tollgate-proxy";
/// The init container that installs the redirect (redirect mode).
pub const INIT_NAME: &str = "tollgate-init";
/// The namespace label by which Pod Security admission enforces a level.
const POD_SECURITY_ENFORCE: &str = "pod-security.kubernetes.io/enforce";
/// The projected token volume, mounted into the sidecar only.
pub const TOKEN_VOLUME: &str = "tollgate-token";
/// An empty volume mounted where the API server's ServiceAccount admission would mount the
/// app's API token: it skips a container that already mounts that path, and after a mutating
/// webhook it runs again, so without this every Tollgate container would hold the app's
/// credentials.
pub const NO_API_TOKEN_VOLUME: &str = "tollgate-no-api-token";
/// Where the ServiceAccount admission plugin mounts a pod's API token.
pub const API_TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The app's MCP port is renamed to this when its name is handed to the sidecar.
pub const APP_PORT_NAME: &str = "tollgate-app";
/// The sidecar's admin port (probes, metrics).
pub const ADMIN_PORT_NAME: &str = "tollgate-admin";
const DEFAULT_PORT_NAME: &str = "mcp";

/// How the operator is configured to inject.
#[derive(Clone, Debug)]
pub struct InjectConfig {
    pub image: String,
    pub resources: ResourceRequirements,
    pub log_level: String,
    /// Where the sidecar connects for its policy.
    pub control_plane_url: String,
    /// The CA (PEM) the sidecar trusts for the policy stream.
    pub control_plane_ca: String,
    /// Where the sidecar listens for agents.
    pub proxy_port: u16,
    /// Where the sidecar serves /healthz, /readyz and /metrics.
    pub admin_port: u16,
    /// The sidecar's UID and GID (the redirect lets its own connections through by both).
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    /// The boundary of pods that do not choose one (tollgate.dev/boundary).
    pub boundary: Boundary,
    /// Redis for counters every replica of a workload shares; `None`: each pod counts alone.
    pub counters: Option<SharedCounters>,
}

/// Where injected sidecars keep counters shared by a workload's replicas.
#[derive(Clone, Debug, PartialEq)]
pub struct SharedCounters {
    /// One `redis://` or `rediss://` URL, or a Redis Cluster's seed nodes, comma-separated.
    pub nodes: String,
    pub cluster: bool,
    /// How long a call waits for Redis, as the sidecar's `--counters-timeout`.
    pub timeout: String,
    /// A Secret in the pod's namespace and its key holding Redis' password, mounted in the
    /// sidecar (a pod cannot mount a Secret of another namespace).
    pub password_secret: Option<(String, String)>,
}

/// The annotation that names whose counters a pod's calls count in (default: its namespace
/// and workload), to share them between workloads.
pub const COUNTERS_GROUP_ANNOTATION: &str = "tollgate.dev/counters-group";
/// The volume with Redis' password, and where the sidecar reads it.
pub const COUNTERS_PASSWORD_VOLUME: &str = "tollgate-counters-password";
const COUNTERS_PASSWORD_DIR: &str = "/var/run/tollgate/counters";

/// How nothing reaches the app around the sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boundary {
    /// An init container's iptables rules send inbound TCP for the MCP port to the sidecar.
    Redirect,
    /// No privilege: the MCP port's name moves to the sidecar, so a Service that targets it by
    /// name reaches the sidecar, and a NetworkPolicy the operator keeps (see
    /// [`crate::boundary`]) admits every port of the pod but the app's.
    NetworkPolicy,
}

impl Boundary {
    pub fn parse(s: &str) -> Option<Boundary> {
        match s {
            "redirect" => Some(Boundary::Redirect),
            "network-policy" => Some(Boundary::NetworkPolicy),
            _ => None,
        }
    }
}

/// What the webhook does with a pod.
#[derive(Debug, PartialEq)]
pub enum Injection {
    /// Inject: apply this patch, and tell the person who applied the pod `warnings`. With the
    /// `network-policy` boundary, `network_policy` is the app's port: the NetworkPolicy for it
    /// must exist before the pod is stored.
    Patch {
        patch: json_patch::Patch,
        warnings: Vec<String>,
        network_policy: Option<i32>,
    },
    /// Already injected (the webhook was re-invoked): nothing to change.
    Unchanged,
    /// Not injected. `warn` is set when the pod asked for injection, so the reason reaches the
    /// person who applied it as an admission warning.
    Skip { reason: String, warn: bool },
}

/// A pod that asked for something impossible, or that injection could not keep valid and
/// behind the sidecar: the admission is refused with this message. `at` names what to change:
/// an annotation, or a field of the pod.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("{at}: {message}")]
pub struct Refused {
    pub at: String,
    pub message: String,
}

/// Decides whether and how to inject `pod`, created in a namespace with `namespace_labels`.
pub fn inject_sidecar(
    pod: &Pod,
    namespace_labels: &BTreeMap<String, String>,
    config: &InjectConfig,
) -> Result<Injection, Refused> {
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let asked = match annotations.get(INJECT_ANNOTATION).map(String::as_str) {
        Some("false") => {
            return Ok(skip(
                format!("the pod is annotated {INJECT_ANNOTATION}: \"false\""),
                false,
            ));
        }
        Some("true") => true,
        Some(other) => {
            return Err(Refused {
                at: INJECT_ANNOTATION.into(),
                message: format!("{other:?} is neither \"true\" nor \"false\""),
            });
        }
        None => namespace_labels.get(NAMESPACE_LABEL).map(String::as_str) == Some("enabled"),
    };
    if !asked {
        return Ok(skip(
            format!(
                "neither the pod ({INJECT_ANNOTATION}) nor its namespace ({NAMESPACE_LABEL}=enabled) asks for injection"
            ),
            false,
        ));
    }
    let injected = spec
        .init_containers
        .iter()
        .flatten()
        .any(|c| c.name == SIDECAR_NAME);
    if injected {
        return Ok(Injection::Unchanged);
    }
    let config = &for_pod(&annotations, config)?;
    // A pod that asked for Tollgate and serves MCP is protected or refused, never admitted
    // without its boundary. One that serves no MCP port has nothing to protect.
    let way_out =
        format!("or annotate the pod {INJECT_ANNOTATION}: \"false\" to run it without Tollgate");
    default_action_override(&pod.metadata)?;
    let Some(target) = find_mcp_port(&spec.containers, annotations.get(PORT_ANNOTATION))? else {
        if let Some(name) = annotations.get(PORT_ANNOTATION) {
            return Err(Refused {
                at: PORT_ANNOTATION.into(),
                message: format!(
                    "no container has a port named {name:?}; give the MCP port's number or the name \
                     of a container port, {way_out}"
                ),
            });
        }
        return Ok(skip(
            format!(
                "no container port is named \"mcp\"; name the MCP server's port mcp or annotate the pod {PORT_ANNOTATION}"
            ),
            true,
        ));
    };
    if spec.host_network == Some(true) {
        return Err(Refused {
            at: "spec.hostNetwork".into(),
            message: format!(
                "the pod uses the node's network, where a sidecar cannot stand in front of port {} \
                 without standing in front of the node's; drop hostNetwork, {way_out}",
                target.number
            ),
        });
    }
    let os = spec.os.as_ref().map(|o| o.name.as_str());
    let node_os = spec
        .node_selector
        .as_ref()
        .and_then(|n| n.get("kubernetes.io/os"));
    if os == Some("windows") || node_os.map(String::as_str) == Some("windows") {
        return Err(Refused {
            at: if os.is_some() {
                "spec.os.name"
            } else {
                "spec.nodeSelector"
            }
            .into(),
            message: format!(
                "the pod runs on Windows nodes, and the sidecar's image is Linux only; {}",
                way_out.trim_start_matches("or ")
            ),
        });
    }

    fits(&spec, config, &target)?;
    token_stays_private(&spec, config)?;
    let boundary = boundary(&annotations, namespace_labels, config)?;
    if boundary == Boundary::Redirect {
        redirect_holds(&spec, config)?;
    }

    let mut after = pod.clone();
    // With the redirect, a hostPort on the MCP port is redirected in the pod like any other
    // inbound connection. With NetworkPolicies (which node ports may bypass), it moves to the
    // sidecar's port: the node's clients then reach the sidecar, never the app.
    let host_ports = match boundary {
        Boundary::Redirect => Vec::new(),
        Boundary::NetworkPolicy => move_host_ports(&mut after, &target),
    };
    let probes = match boundary {
        Boundary::Redirect => move_probes(&mut after, &target, config.admin_port),
        Boundary::NetworkPolicy => AppProbes::new(),
    };
    let sidecar_port_name = hand_off_port(&mut after, &target);
    let group = counters_group(pod, &annotations)?;
    let mut sidecar = sidecar_container(
        &annotations,
        config,
        &target,
        &sidecar_port_name,
        &probes,
        &group,
    )?;
    publish_on_node(&mut sidecar, &host_ports);
    let mut added = Vec::new();
    if boundary == Boundary::Redirect {
        added.push(init_container(&annotations, config, &target));
    }
    added.push(sidecar);
    let mut status = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "sidecar": SIDECAR_NAME,
        "upstreamPort": target.number,
        "proxyPort": config.proxy_port,
        "boundary": match (boundary, &sidecar_port_name) {
            (Boundary::Redirect, _) => format!(
                "redirect: inbound TCP to port {} goes to the sidecar ({INIT_NAME})", target.number
            ),
            (Boundary::NetworkPolicy, name) => format!(
                "network-policy: NetworkPolicy {} admits every port but {}; {}",
                crate::boundary::network_policy_name(target.number),
                target.number,
                match name {
                    Some(name) => format!("port {name:?} handed to the sidecar"),
                    None => format!("clients connect to port {}", config.proxy_port),
                }
            ),
        },
    });
    if !host_ports.is_empty() {
        status["hostPortsMoved"] =
            json!(host_ports.iter().map(|p| p.host_port).collect::<Vec<_>>());
    }
    let changed = after.spec.map(|s| s.containers).unwrap_or_default();
    let app_port = target.number.to_string();
    let mut labels = vec![(INJECTED_LABEL, "true")];
    if boundary == Boundary::NetworkPolicy {
        labels.push((APP_PORT_LABEL, &app_port));
    }
    let mut volumes = vec![token_volume(), no_api_token_volume()];
    if let Some((secret, key)) = config
        .counters
        .as_ref()
        .and_then(|c| c.password_secret.as_ref())
    {
        volumes.push(counters_password_volume(secret, key));
    }
    Ok(Injection::Patch {
        patch: patch(
            pod,
            &changed,
            &added,
            &volumes,
            &status.to_string(),
            &labels,
        ),
        warnings: Vec::new(),
        network_policy: (boundary == Boundary::NetworkPolicy).then_some(target.number),
    })
}

/// The operator's configuration as it applies to one pod: the sidecar's UID, GID and ports
/// from the pod's annotations where it sets them.
fn for_pod(
    annotations: &BTreeMap<String, String>,
    config: &InjectConfig,
) -> Result<InjectConfig, Refused> {
    let mut out = config.clone();
    let number =
        |annotation: &str, min: u64, max: u64, what: &str| -> Result<Option<u64>, Refused> {
            let Some(value) = annotations.get(annotation) else {
                return Ok(None);
            };
            match value.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(Refused {
                    at: annotation.into(),
                    message: format!("{value:?} is not {what} ({min} to {max})"),
                }),
            }
        };
    let id = "a UID or GID other than root's";
    if let Some(n) = number(PROXY_UID_ANNOTATION, 1, u32::MAX.into(), id)? {
        out.proxy_uid = n as u32;
    }
    if let Some(n) = number(PROXY_GID_ANNOTATION, 1, u32::MAX.into(), id)? {
        out.proxy_gid = n as u32;
    }
    if let Some(n) = number(PROXY_PORT_ANNOTATION, 1, 65535, "a port number")? {
        out.proxy_port = n as u16;
    }
    if let Some(n) = number(ADMIN_PORT_ANNOTATION, 1, 65535, "a port number")? {
        out.admin_port = n as u16;
    }
    if out.proxy_port == out.admin_port {
        return Err(Refused {
            at: ADMIN_PORT_ANNOTATION.into(),
            message: format!(
                "the sidecar's admin port and its proxy port are both {}; give them two ports",
                out.admin_port
            ),
        });
    }
    Ok(out)
}

/// The containers of a pod, with the name of their list for messages.
fn all_containers(spec: &PodSpec) -> impl Iterator<Item = (String, &Container)> {
    let init = spec.init_containers.as_deref().unwrap_or_default();
    spec.containers
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("spec.containers[{i}]"), c))
        .chain(
            init.iter()
                .enumerate()
                .map(|(i, c)| (format!("spec.initContainers[{i}]"), c)),
        )
}

/// What injection adds must fit beside what the pod has: the API server refuses two containers,
/// two volumes or two ports of a container with one name, and the sidecar cannot listen on a
/// port a container of the pod already serves (they share its network namespace).
fn fits(spec: &PodSpec, config: &InjectConfig, target: &McpPort) -> Result<(), Refused> {
    let refuse = |at: String, message: String| Err(Refused { at, message });
    let ours = [config.proxy_port, config.admin_port];
    if ours.iter().any(|p| i32::from(*p) == target.number) {
        return refuse(
            PORT_ANNOTATION.into(),
            format!(
                "the MCP port {} is one the sidecar listens on; the app must serve another",
                target.number
            ),
        );
    }
    for (at, c) in all_containers(spec) {
        if c.name == SIDECAR_NAME || c.name == INIT_NAME {
            return refuse(
                format!("{at}.name"),
                format!(
                    "{:?} is the name of a container Tollgate adds; rename this one",
                    c.name
                ),
            );
        }
        for (j, port) in c.ports.iter().flatten().enumerate() {
            if ours.iter().any(|p| i32::from(*p) == port.container_port) {
                return refuse(
                    format!("{at}.ports[{j}].containerPort"),
                    format!(
                        "{} is a port the sidecar listens on (the operator's --sidecar-port and --sidecar-admin-port); \
                         the container must serve another",
                        port.container_port
                    ),
                );
            }
            if let Some(name) = port.name.as_deref()
                && [APP_PORT_NAME, SIDECAR_NAME, ADMIN_PORT_NAME].contains(&name)
            {
                return refuse(
                    format!("{at}.ports[{j}].name"),
                    format!("{name:?} is a port name Tollgate gives; rename this one"),
                );
            }
        }
    }
    if let Some(k) = spec.volumes.iter().flatten().position(|v| {
        [TOKEN_VOLUME, NO_API_TOKEN_VOLUME, COUNTERS_PASSWORD_VOLUME].contains(&v.name.as_str())
    }) {
        return refuse(
            format!("spec.volumes[{k}].name"),
            format!(
                "{:?} is the name of a volume Tollgate adds; rename this one",
                spec.volumes.as_ref().expect("found")[k].name
            ),
        );
    }
    Ok(())
}

/// The UID a container runs as: its own, else the pod's.
fn uid(c: &Container, spec: &PodSpec) -> Option<i64> {
    let pod = spec.security_context.as_ref().and_then(|s| s.run_as_user);
    c.security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
        .or(pod)
}

/// The GID a container runs as: its own, else the pod's.
fn gid(c: &Container, spec: &PodSpec) -> Option<i64> {
    let pod = spec.security_context.as_ref().and_then(|s| s.run_as_group);
    c.security_context
        .as_ref()
        .and_then(|s| s.run_as_group)
        .or(pod)
}

/// Whether a container declares the sidecar's UID or GID, and which, in words.
fn as_sidecar(c: &Container, spec: &PodSpec, config: &InjectConfig) -> Option<String> {
    if uid(c, spec) == Some(config.proxy_uid.into()) {
        Some(format!("runs as UID {}, the sidecar's", config.proxy_uid))
    } else if gid(c, spec) == Some(config.proxy_gid.into()) {
        Some(format!("runs as GID {}, the sidecar's", config.proxy_gid))
    } else {
        None
    }
}

fn privileged(c: &Container) -> bool {
    c.security_context.as_ref().and_then(|s| s.privileged) == Some(true)
}

/// The capability `cap` (or ALL) among those the container adds.
fn adds(c: &Container, cap: &str) -> Option<String> {
    let added = c
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.as_ref());
    added
        .into_iter()
        .flatten()
        .find(|a| {
            let a = a.trim_start_matches("CAP_");
            a == cap || a == "ALL"
        })
        .cloned()
}

/// With a shared process namespace a container can read another's files through
/// `/proc/PID/root` if it may trace it: as the same UID, or with CAP_SYS_PTRACE (or privileged).
/// The sidecar's token proves its pod to the operator, so such a container is refused.
fn token_stays_private(spec: &PodSpec, config: &InjectConfig) -> Result<(), Refused> {
    if spec.share_process_namespace != Some(true) {
        return Ok(());
    }
    for (at, c) in all_containers(spec) {
        let sc = c.security_context.as_ref();
        let caps = sc
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|c| c.add.as_ref());
        let traces = caps.into_iter().flatten().any(|c| {
            let c = c.trim_start_matches("CAP_");
            c == "SYS_PTRACE" || c == "ALL"
        });
        let why = if let Some(why) = as_sidecar(c, spec, config) {
            why
        } else if sc.and_then(|s| s.privileged) == Some(true) {
            "is privileged".into()
        } else if traces {
            "adds the capability SYS_PTRACE".into()
        } else {
            continue;
        };
        return Err(Refused {
            at: format!("{at}.securityContext"),
            message: format!(
                "the pod shares its process namespace and {} ({}) {why}, so it could read the sidecar's token; \
                 drop that, or stop sharing the process namespace",
                at, c.name
            ),
        });
    }
    Ok(())
}

/// Network-policy mode: takes the MCP port's TCP `hostPort`s off the app's containers and
/// returns them, for the sidecar's port to publish instead.
fn move_host_ports(pod: &mut Pod, target: &McpPort) -> Vec<ContainerPort> {
    let mut moved = Vec::new();
    let Some(spec) = pod.spec.as_mut() else {
        return moved;
    };
    let containers = spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten());
    for port in containers.flat_map(|c| c.ports.iter_mut().flatten()) {
        let tcp = port.protocol.as_deref().unwrap_or("TCP") == "TCP";
        if port.container_port == target.number && tcp && port.host_port.is_some() {
            moved.push(ContainerPort {
                host_port: port.host_port.take(),
                host_ip: port.host_ip.take(),
                ..ContainerPort::default()
            });
        }
    }
    moved
}

/// Publishes the sidecar's proxy port (its first) at each of `host_ports`.
fn publish_on_node(sidecar: &mut Container, host_ports: &[ContainerPort]) {
    let ports = sidecar.ports.get_or_insert_with(Vec::new);
    let proxy = ports[0].clone();
    for (i, moved) in host_ports.iter().enumerate() {
        let with = ContainerPort {
            host_port: moved.host_port,
            host_ip: moved.host_ip.clone(),
            ..proxy.clone()
        };
        if i == 0 {
            ports[0] = with;
        } else {
            ports.push(ContainerPort { name: None, ..with });
        }
    }
}

/// The patch: only what injection adds or changes. Everything else stays exactly as the API
/// server sent it, fields newer than this operator's Kubernetes types included: the init
/// containers and the volume are inserted (the arrays are not rewritten), each app container is
/// compared with its changed self alone, and the annotation and label are added by key.
fn patch(
    pod: &Pod,
    containers: &[Container],
    init: &[Container],
    volumes: &[Volume],
    status: &str,
    labels: &[(&str, &str)],
) -> json_patch::Patch {
    fn value(v: &impl serde::Serialize) -> serde_json::Value {
        serde_json::to_value(v).expect("serialises")
    }
    let spec = pod.spec.as_ref();
    let mut ops = Vec::new();
    match spec.and_then(|s| s.init_containers.as_ref()) {
        Some(existing) if !existing.is_empty() => {
            for c in init.iter().rev() {
                ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": value(c)}));
            }
        }
        _ => ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": value(&init)})),
    }
    match spec.and_then(|s| s.volumes.as_ref()) {
        Some(_) => {
            for v in volumes {
                ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": value(v)}));
            }
        }
        None => ops.push(json!({"op": "add", "path": "/spec/volumes", "value": value(&volumes)})),
    }
    let before = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    for (i, (was, now)) in before.iter().zip(containers).enumerate() {
        let diff =
            serde_json::to_value(json_patch::diff(&value(was), &value(now))).expect("serialises");
        for mut op in diff.as_array().cloned().unwrap_or_default() {
            let path = op["path"].as_str().unwrap_or_default().to_owned();
            op["path"] = json!(format!("/spec/containers/{i}{path}"));
            ops.push(op);
        }
    }
    let meta = &pod.metadata;
    let mut add = |map: &str, present: bool, pairs: &[(&str, &str)]| {
        if present {
            for (key, v) in pairs {
                let key = key.replace('~', "~0").replace('/', "~1");
                ops.push(
                    json!({"op": "add", "path": format!("/metadata/{map}/{key}"), "value": v}),
                );
            }
        } else {
            let all: serde_json::Map<_, _> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            ops.push(json!({"op": "add", "path": format!("/metadata/{map}"), "value": all}));
        }
    };
    add(
        "annotations",
        meta.annotations.is_some(),
        &[(STATUS_ANNOTATION, status)],
    );
    add("labels", meta.labels.is_some(), labels);
    serde_json::from_value(serde_json::Value::Array(ops)).expect("a JSON patch")
}

/// The pod's boundary: its annotation, else the operator's default. Redirect mode needs an init
/// container with NET_ADMIN, which Pod Security's baseline and restricted levels refuse: such a
/// namespace gets a refusal that says so, never a pod that silently went without its boundary.
fn boundary(
    annotations: &BTreeMap<String, String>,
    namespace_labels: &BTreeMap<String, String>,
    config: &InjectConfig,
) -> Result<Boundary, Refused> {
    let chosen = match annotations.get(BOUNDARY_ANNOTATION) {
        None => config.boundary,
        Some(value) => Boundary::parse(value).ok_or_else(|| Refused {
            at: BOUNDARY_ANNOTATION.into(),
            message: format!("{value:?} is neither \"redirect\" nor \"network-policy\""),
        })?,
    };
    let level = namespace_labels
        .get(POD_SECURITY_ENFORCE)
        .map(String::as_str);
    if chosen == Boundary::Redirect && matches!(level, Some("baseline" | "restricted")) {
        return Err(Refused {
            at: BOUNDARY_ANNOTATION.into(),
            message: format!(
                "the namespace enforces Pod Security {:?} ({POD_SECURITY_ENFORCE}), which refuses the \
                 NET_ADMIN init container the redirect needs; annotate the pod {BOUNDARY_ANNOTATION}: \
                 network-policy, or let the namespace enforce \"privileged\"",
                level.unwrap_or_default()
            ),
        });
    }
    Ok(chosen)
}

/// In redirect mode the sidecar's UID is the one the rules let through, and a container that
/// can change the pod's network rules could remove them: a pod with either is refused.
fn redirect_holds(spec: &PodSpec, config: &InjectConfig) -> Result<(), Refused> {
    let refuse = |message: String| Refused {
        at: BOUNDARY_ANNOTATION.into(),
        message,
    };
    for (at, c) in all_containers(spec) {
        if let Some(why) = as_sidecar(c, spec, config) {
            return Err(refuse(format!(
                "{at} ({}) {why}: the redirect lets the sidecar's own connections reach the app \
                 directly; run it as another UID and GID, or give the sidecar others with \
                 {PROXY_UID_ANNOTATION} and {PROXY_GID_ANNOTATION}",
                c.name
            )));
        }
        if privileged(c) {
            return Err(refuse(format!(
                "{at} ({}) is privileged, so it could remove the redirect; \
                 use {BOUNDARY_ANNOTATION}: network-policy for this pod",
                c.name
            )));
        }
        if let Some(cap) = adds(c, "NET_ADMIN") {
            return Err(refuse(format!(
                "{at} ({}) adds the capability {cap}, so it could remove the redirect; \
                 use {BOUNDARY_ANNOTATION}: network-policy for this pod",
                c.name
            )));
        }
    }
    Ok(())
}

/// How long the sidecar gives the app to answer a lifecycle hook it runs for the kubelet (a hook
/// has no timeout of its own; a preStop hook is bounded by the pod's grace period anyway).
const HOOK_TIMEOUT_SECONDS: u32 = 30;

/// Redirect mode: every probe and lifecycle hook the kubelet would send to the MCP port (by
/// number, or by a name its container gives that port) would now reach the sidecar, so it is
/// pointed at the sidecar's admin port instead, and the original is returned for the sidecar to
/// run. Periods, thresholds and timeouts stay on the probe. gRPC, exec and sleep actions are left
/// as they are (they do not dial the port), and so are HTTPS probes (the proxy speaks HTTP to the
/// app, so such an app cannot be behind it anyway).
fn move_probes(pod: &mut Pod, target: &McpPort, admin_port: u16) -> AppProbes {
    let mut moved = AppProbes::new();
    let Some(spec) = pod.spec.as_mut() else {
        return moved;
    };
    let number = target.number as u16;
    let to_admin = |key: &str| HTTPGetAction {
        path: Some(format!("{APP_HEALTH_PREFIX}{key}")),
        port: IntOrString::Int(admin_port.into()),
        scheme: Some("HTTP".into()),
        ..HTTPGetAction::default()
    };
    let original = |get: &HTTPGetAction, timeout_seconds: u32| AppProbe::HttpGet {
        port: number,
        path: get.path.clone().unwrap_or_else(|| "/".into()),
        headers: get
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
        timeout_seconds,
    };
    for c in &mut spec.containers {
        let ports: Vec<(String, i32)> = c
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone()?, p.container_port)))
            .collect();
        let is_mcp = |port: &IntOrString| match port {
            IntOrString::Int(n) => *n == target.number,
            IntOrString::String(name) => ports
                .iter()
                .any(|(n, num)| n == name && *num == target.number),
        };
        let dials =
            |get: &HTTPGetAction| is_mcp(&get.port) && get.scheme.as_deref() != Some("HTTPS");
        for (kind, probe) in [
            ("liveness", &mut c.liveness_probe),
            ("readiness", &mut c.readiness_probe),
            ("startup", &mut c.startup_probe),
        ] {
            let Some(probe) = probe.as_mut() else {
                continue;
            };
            let timeout_seconds = probe.timeout_seconds.unwrap_or(1).max(1) as u32;
            let run = match (&probe.http_get, &probe.tcp_socket) {
                (Some(get), _) if dials(get) => original(get, timeout_seconds),
                (_, Some(tcp)) if is_mcp(&tcp.port) => AppProbe::TcpSocket {
                    port: number,
                    timeout_seconds,
                },
                _ => continue,
            };
            let key = format!("{}/{kind}", c.name);
            probe.http_get = Some(to_admin(&key));
            probe.tcp_socket = None;
            moved.insert(key, run);
        }
        let Some(lifecycle) = c.lifecycle.as_mut() else {
            continue;
        };
        for (kind, hook) in [
            ("postStart", &mut lifecycle.post_start),
            ("preStop", &mut lifecycle.pre_stop),
        ] {
            let Some(hook) = hook.as_mut() else { continue };
            let Some(get) = hook.http_get.as_ref().filter(|g| dials(g)) else {
                continue;
            };
            let key = format!("{}/{kind}", c.name);
            moved.insert(key.clone(), original(get, HOOK_TIMEOUT_SECONDS));
            hook.http_get = Some(to_admin(&key));
        }
    }
    moved
}

/// The sidecar's image, which also holds `tollgate init-redirect`: the pod's own, or the operator's.
fn image(annotations: &BTreeMap<String, String>, config: &InjectConfig) -> String {
    annotations
        .get(IMAGE_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| config.image.clone())
}

/// `tollgate init-redirect`, run before the sidecar: root with NET_ADMIN and NET_RAW, nothing
/// else, and done before any container of the app starts.
fn init_container(
    annotations: &BTreeMap<String, String>,
    config: &InjectConfig,
    target: &McpPort,
) -> Container {
    Container {
        name: INIT_NAME.into(),
        image: Some(image(annotations, config)),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(vec![
            "init-redirect".into(),
            "--port".into(),
            target.number.to_string(),
            "--proxy-port".into(),
            config.proxy_port.to_string(),
            "--proxy-uid".into(),
            config.proxy_uid.to_string(),
            "--proxy-gid".into(),
            config.proxy_gid.to_string(),
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("10m".into())),
                ("memory".into(), Quantity("16Mi".into())),
            ])),
            limits: Some(BTreeMap::from([("memory".into(), Quantity("64Mi".into()))])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            // iptables-legacy takes a lock file under /run; the container exits in a second.
            read_only_root_filesystem: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![no_api_token_mount()]),
        ..Container::default()
    }
}

/// The pod's own default for tools no policy lists, if it sets one.
pub fn default_action_override(meta: &ObjectMeta) -> Result<Option<DefaultAction>, Refused> {
    tollgate_api::contract::annotations::default_action(meta.annotations.iter().flatten()).map_err(
        |message| Refused {
            at: DEFAULT_ACTION_ANNOTATION.into(),
            message,
        },
    )
}

fn skip(reason: String, warn: bool) -> Injection {
    Injection::Skip { reason, warn }
}

/// The app's MCP port: which container declares it (if any), its number, and its name.
#[derive(Debug)]
struct McpPort {
    container: Option<usize>,
    number: i32,
    name: Option<String>,
}

fn find_mcp_port(
    containers: &[Container],
    annotation: Option<&String>,
) -> Result<Option<McpPort>, Refused> {
    let declared = || {
        containers.iter().enumerate().flat_map(|(i, c)| {
            c.ports
                .iter()
                .flatten()
                .map(move |p| (i, p.container_port, p.name.clone()))
        })
    };
    let wanted = annotation.map_or(DEFAULT_PORT_NAME, String::as_str);
    if let Ok(number) = wanted.parse::<i32>() {
        if !(1..=65535).contains(&number) {
            return Err(Refused {
                at: PORT_ANNOTATION.into(),
                message: format!("{number} is not a port number"),
            });
        }
        let found = declared().find(|(_, n, _)| *n == number);
        return Ok(Some(McpPort {
            container: found.as_ref().map(|(i, _, _)| *i),
            number,
            name: found.and_then(|(_, _, name)| name),
        }));
    }
    Ok(declared()
        .find(|(_, _, name)| name.as_deref() == Some(wanted))
        .map(|(i, number, name)| McpPort {
            container: Some(i),
            number,
            name,
        }))
}

/// The port handoff: the app's port gives its name to the sidecar, so a Service that targets the
/// port by name reaches the sidecar; the app's probes and hooks that still name the port follow
/// it (they must still reach the app).
/// Returns the name the sidecar's port takes.
fn hand_off_port(pod: &mut Pod, target: &McpPort) -> Option<String> {
    let (Some(index), Some(name)) = (target.container, target.name.clone()) else {
        return None;
    };
    let container = &mut pod.spec.as_mut()?.containers[index];
    for port in container.ports.iter_mut().flatten() {
        if port.name.as_deref() == Some(&name) {
            port.name = Some(APP_PORT_NAME.into());
        }
    }
    let renamed = IntOrString::String(APP_PORT_NAME.into());
    let old = IntOrString::String(name.clone());
    for probe in [
        &mut container.liveness_probe,
        &mut container.readiness_probe,
        &mut container.startup_probe,
    ]
    .into_iter()
    .flatten()
    {
        if let Some(get) = probe.http_get.as_mut()
            && get.port == old
        {
            get.port = renamed.clone();
        }
        if let Some(tcp) = probe.tcp_socket.as_mut()
            && tcp.port == old
        {
            tcp.port = renamed.clone();
        }
    }
    let hooks = container.lifecycle.as_mut().into_iter();
    for hook in hooks
        .flat_map(|l| [&mut l.post_start, &mut l.pre_stop])
        .flatten()
    {
        if let Some(get) = hook.http_get.as_mut()
            && get.port == old
        {
            get.port = renamed.clone();
        }
    }
    Some(name)
}

fn sidecar_container(
    annotations: &BTreeMap<String, String>,
    config: &InjectConfig,
    target: &McpPort,
    port_name: &Option<String>,
    probes: &AppProbes,
    counters_group: &str,
) -> Result<Container, Refused> {
    let env = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        ..EnvVar::default()
    };
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let admin_probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(config.admin_port.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    Ok(Container {
        name: SIDECAR_NAME.into(),
        image: Some(image(annotations, config)),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(vec!["proxy".into()]),
        restart_policy: Some("Always".into()),
        env: Some(
            vec![
                env(
                    sidecar_env::UPSTREAM,
                    // Both loopbacks: an app bound to `::` alone (IPv6 only, as Python's asyncio
                    // binds it) is reached on ::1, one bound to 0.0.0.0 on 127.0.0.1.
                    format!("http://localhost:{}", target.number),
                ),
                env(
                    sidecar_env::LISTEN,
                    // Both families, whatever the pod has (the sidecar falls back to IPv4
                    // where IPv6 is off): an IPv6-only pod's probes reach it too.
                    format!("[::]:{}", config.proxy_port),
                ),
                env(
                    sidecar_env::METRICS_LISTEN,
                    format!("[::]:{}", config.admin_port),
                ),
                env(sidecar_env::CONTROL_PLANE, config.control_plane_url.clone()),
                env(
                    sidecar_env::CONTROL_PLANE_CA,
                    config.control_plane_ca.clone(),
                ),
                env(sidecar_env::TOKEN_FILE, TOKEN_FILE.into()),
                env(
                    sidecar_env::LOG,
                    annotations
                        .get(LOG_LEVEL_ANNOTATION)
                        .cloned()
                        .unwrap_or_else(|| config.log_level.clone()),
                ),
                field(sidecar_env::POD_NAME, "metadata.name"),
                field(sidecar_env::POD_NAMESPACE, "metadata.namespace"),
            ]
            .into_iter()
            .chain((!probes.is_empty()).then(|| {
                env(
                    sidecar_env::APP_PROBES,
                    serde_json::to_string(probes).expect("probes serialise"),
                )
            }))
            .chain(config.counters.iter().flat_map(|c| {
                [
                    Some(env(sidecar_env::COUNTERS, c.nodes.clone())),
                    c.cluster
                        .then(|| env(sidecar_env::COUNTERS_CLUSTER, "true".into())),
                    Some(env(sidecar_env::COUNTERS_TIMEOUT, c.timeout.clone())),
                    Some(env(sidecar_env::COUNTERS_GROUP, counters_group.to_string())),
                    c.password_secret.as_ref().map(|_| {
                        env(
                            sidecar_env::COUNTERS_PASSWORD_FILE,
                            format!("{COUNTERS_PASSWORD_DIR}/password"),
                        )
                    }),
                ]
                .into_iter()
                .flatten()
            }))
            .collect(),
        ),
        ports: Some(vec![
            ContainerPort {
                name: Some(port_name.clone().unwrap_or_else(|| SIDECAR_NAME.into())),
                container_port: config.proxy_port.into(),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some(ADMIN_PORT_NAME.into()),
                container_port: config.admin_port.into(),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        // The app starts only once the sidecar holds a policy: until then it would deny
        // every call anyway. Five minutes of grace for a slow control plane.
        startup_probe: Some(admin_probe("/readyz", 1, 300)),
        readiness_probe: Some(admin_probe("/readyz", 5, 3)),
        liveness_probe: Some(admin_probe("/healthz", 10, 3)),
        resources: Some(resources(annotations, &config.resources)?),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(config.proxy_uid.into()),
            run_as_group: Some(config.proxy_gid.into()),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(
            [
                VolumeMount {
                    name: TOKEN_VOLUME.into(),
                    mount_path: TOKEN_DIR.into(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                },
                no_api_token_mount(),
            ]
            .into_iter()
            .chain(
                config
                    .counters
                    .as_ref()
                    .and_then(|c| c.password_secret.as_ref())
                    .map(|_| VolumeMount {
                        name: COUNTERS_PASSWORD_VOLUME.into(),
                        mount_path: COUNTERS_PASSWORD_DIR.into(),
                        read_only: Some(true),
                        ..VolumeMount::default()
                    }),
            )
            .collect(),
        ),
        ..Container::default()
    })
}

fn resources(
    annotations: &BTreeMap<String, String>,
    defaults: &ResourceRequirements,
) -> Result<ResourceRequirements, Refused> {
    let mut out = defaults.clone();
    for (annotation, kind, resource) in RESOURCE_ANNOTATIONS {
        let Some(value) = annotations.get(annotation) else {
            continue;
        };
        if !is_quantity(value) {
            return Err(Refused {
                at: annotation.into(),
                message: format!("{value:?} is not a quantity; write e.g. 100m or 64Mi"),
            });
        }
        let map = match kind {
            "requests" => out.requests.get_or_insert_with(BTreeMap::new),
            _ => out.limits.get_or_insert_with(BTreeMap::new),
        };
        map.insert(resource.into(), Quantity(value.clone()));
    }
    // A request above its limit: the API server would refuse the pod, with less to go on.
    for resource in ["cpu", "memory"] {
        let get = |m: &Option<BTreeMap<String, Quantity>>| {
            m.as_ref()?.get(resource).and_then(|q| quantity(&q.0))
        };
        if let (Some(request), Some(limit)) = (get(&out.requests), get(&out.limits))
            && request > limit
        {
            // Name the limit when the pod set it, else the request it set.
            let named = RESOURCE_ANNOTATIONS
                .iter()
                .rev()
                .filter(|(_, _, r)| *r == resource)
                .map(|(a, _, _)| *a)
                .find(|a| annotations.contains_key(*a))
                .unwrap_or("tollgate.dev/proxy-memory-limit");
            return Err(Refused {
                at: named.into(),
                message: format!(
                    "the sidecar's {resource} request is above its limit; the request must not exceed the limit"
                ),
            });
        }
    }
    Ok(out)
}

/// A quantity's value in its base unit (cores, bytes), for comparing two of one resource.
fn quantity(s: &str) -> Option<f64> {
    if !is_quantity(s) {
        return None;
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        binary => 1024f64.powi(
            ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
                .iter()
                .position(|b| *b == binary)? as i32
                + 1,
        ),
    };
    Some(number.parse::<f64>().ok()? * scale)
}

/// A Kubernetes quantity: a decimal number with an optional SI or binary suffix.
fn is_quantity(s: &str) -> bool {
    let suffixes = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    !number.is_empty() && number.parse::<f64>().is_ok() && suffixes.contains(&suffix)
}

/// Whose counters a pod's calls count in: `<namespace>/<Kind>/<name>` of its workload (a
/// ReplicaSet's pods count as its Deployment's, so a rollout keeps the counts), or the
/// `tollgate.dev/counters-group` annotation's value.
pub fn counters_group(
    pod: &Pod,
    annotations: &BTreeMap<String, String>,
) -> Result<String, Refused> {
    if let Some(group) = annotations.get(COUNTERS_GROUP_ANNOTATION) {
        if group.is_empty() || group.contains(['{', '}']) {
            return Err(Refused {
                at: COUNTERS_GROUP_ANNOTATION.into(),
                message: format!("{group:?}: give a non-empty name without braces"),
            });
        }
        return Ok(group.clone());
    }
    let meta = &pod.metadata;
    let namespace = meta.namespace.as_deref().unwrap_or("default");
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let (kind, name) = match owner {
        Some(o) => {
            let hash = meta
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash"));
            match hash.and_then(|h| o.name.strip_suffix(&format!("-{h}"))) {
                Some(deployment) if o.kind == "ReplicaSet" => {
                    ("Deployment", deployment.to_string())
                }
                _ => (o.kind.as_str(), o.name.clone()),
            }
        }
        None => (
            "Pod",
            meta.name
                .clone()
                .or_else(|| meta.generate_name.clone())
                .unwrap_or_default(),
        ),
    };
    Ok(format!("{namespace}/{kind}/{name}"))
}

fn counters_password_volume(secret: &str, key: &str) -> Volume {
    Volume {
        name: COUNTERS_PASSWORD_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: Some(vec![KeyToPath {
                key: key.into(),
                path: "password".into(),
                ..KeyToPath::default()
            }]),
            // The pod does not start without it: counting without the password would deny.
            optional: Some(false),
            // The sidecar runs as its own UID, without the pod's fsGroup; only it mounts the volume.
            default_mode: Some(0o444),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn no_api_token_volume() -> Volume {
    Volume {
        name: NO_API_TOKEN_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(Quantity("1Ki".into())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn no_api_token_mount() -> VolumeMount {
    VolumeMount {
        name: NO_API_TOKEN_VOLUME.into(),
        mount_path: API_TOKEN_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

fn token_volume() -> Volume {
    Volume {
        name: TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(TOKEN_AUDIENCE.into()),
                    expiration_seconds: Some(3600),
                    path: "token".into(),
                    ..ServiceAccountTokenProjection::default()
                }),
                ..VolumeProjection::default()
            }]),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}
