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
//! Pure: the admission handler, the tests and the docs all go through [`inject_sidecar`]. A
//! module per job:
//!
//! ```text
//! mod.rs       the plan: which pod, which port, which boundary, in which order (inject_sidecar)
//! refusals.rs  what a pod must not be for the boundary to hold: refused, naming the way out
//! probes.rs    the app's probes on its MCP port, moved to the sidecar's admin port
//! container.rs the sidecar and init containers, their resources and volumes
//! patch.rs     the pod before and after, as a JSON patch
//! ```

mod container;
mod patch;
mod probes;
mod refusals;

use container::{
    counters_password_volume, init_container, move_host_ports, no_api_token_volume,
    publish_on_node, sidecar_container, token_volume,
};
use patch::patch;
use probes::move_probes;
use refusals::{boundary, fits, redirect_holds, token_stays_private};

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tollgate_api::DefaultAction;

pub use tollgate_api::contract::annotations::{
    ADMIN_PORT as ADMIN_PORT_ANNOTATION, APP_PORT_LABEL, BOUNDARY as BOUNDARY_ANNOTATION,
    DEFAULT_ACTION as DEFAULT_ACTION_ANNOTATION, INJECT as INJECT_ANNOTATION, INJECTED_LABEL,
    LOG_LEVEL as LOG_LEVEL_ANNOTATION, NAMESPACE_LABEL, PORT as PORT_ANNOTATION,
    PROXY_GID as PROXY_GID_ANNOTATION, PROXY_IMAGE as IMAGE_ANNOTATION,
    PROXY_PORT as PROXY_PORT_ANNOTATION, PROXY_UID as PROXY_UID_ANNOTATION,
    RESOURCES as RESOURCE_ANNOTATIONS, STATUS as STATUS_ANNOTATION,
};
use tollgate_api::contract::{AppProbes, InjectedStatus, network_policy_name};
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
pub use tollgate_api::contract::APP_PORT_NAME;
/// The sidecar's admin port (probes, metrics).
pub const ADMIN_PORT_NAME: &str = "tollgate-admin";
const DEFAULT_PORT_NAME: &str = "mcp";

/// How the operator is configured to inject.
#[derive(Clone, Debug)]
pub struct InjectConfig {
    pub image: String,
    pub resources: ResourceRequirements,
    pub log_level: String,
    /// Serve agents' HTTP/1 with hyper's server (`--http1 hyper`) in every injected sidecar.
    pub hyper_http1: bool,
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
    /// Where people approve held calls (the sidecar's `--approval-url`); `None`: clients wait.
    pub approval_url: Option<String>,
    /// Where injected sidecars send traces; `None`: they trace nothing.
    pub tracing: Option<SidecarTracing>,
}

/// Where injected sidecars send their traces, and how many.
#[derive(Clone, Debug, PartialEq)]
pub struct SidecarTracing {
    /// The collector's OTLP/HTTP URL, as the sidecar's `--otlp-endpoint`.
    pub endpoint: String,
    /// The share of requests traced whose trace begins at the sidecar, as `--trace-sampling`.
    pub sampling: f64,
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

/// How nothing reaches the app around the sidecar (the network-policy boundary is kept by
/// [`crate::boundary`]).
pub use tollgate_api::contract::BoundaryMode as Boundary;

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
    let status = InjectedStatus {
        version: env!("CARGO_PKG_VERSION").into(),
        sidecar: SIDECAR_NAME.into(),
        upstream_port: target.number,
        proxy_port: config.proxy_port,
        mode: Some(boundary),
        boundary: match (boundary, &sidecar_port_name) {
            (Boundary::Redirect, _) => format!(
                "redirect: inbound TCP to port {} goes to the sidecar ({INIT_NAME})",
                target.number
            ),
            (Boundary::NetworkPolicy, name) => format!(
                "network-policy: NetworkPolicy {} admits every port but {}; {}",
                network_policy_name(target.number),
                target.number,
                match name {
                    Some(name) => format!("port {name:?} handed to the sidecar"),
                    None => format!("clients connect to port {}", config.proxy_port),
                }
            ),
        },
        host_ports_moved: host_ports.iter().filter_map(|p| p.host_port).collect(),
    };
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
            &serde_json::to_string(&status).expect("a status serialises"),
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
