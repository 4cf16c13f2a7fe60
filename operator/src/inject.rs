//! Sidecar injection: a pod in, the JSON patch that puts Tollgate in front of its MCP port out.
//!
//! ```text
//! Pod ─ wants_injection (pod annotation, namespace label) ─ no ──> Skip { reason }
//!  │                                                       ─ already injected ─> Unchanged
//!  └─ find the MCP port (tollgate.dev/port | container port `mcp`)
//!       ─> boundary: hand the port's name to the sidecar (the app's port is renamed, probes
//!          follow it); the iptables redirect will be the other boundary mode
//!       ─> add the native sidecar (init container, restartPolicy: Always) + its token volume
//!       ─> record what was done (annotation tollgate.dev/status, label tollgate.dev/injected)
//!  ─> json_patch::diff(before, after)
//! ```
//!
//! Pure: the admission handler, the tests and the docs all go through [`inject_sidecar`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, Pod, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;
use tollgate_api::DefaultAction;

pub use tollgate_api::contract::annotations::{
    DEFAULT_ACTION as DEFAULT_ACTION_ANNOTATION, INJECT as INJECT_ANNOTATION, INJECTED_LABEL,
    LOG_LEVEL as LOG_LEVEL_ANNOTATION, NAMESPACE_LABEL, PORT as PORT_ANNOTATION,
    PROXY_IMAGE as IMAGE_ANNOTATION, RESOURCES as RESOURCE_ANNOTATIONS,
    STATUS as STATUS_ANNOTATION,
};
pub use tollgate_api::contract::{TOKEN_AUDIENCE, TOKEN_DIR};
use tollgate_api::contract::{TOKEN_FILE, env as sidecar_env};

/// The sidecar's container name.
pub const SIDECAR_NAME: &str = "tollgate-proxy";
/// The projected token volume, mounted into the sidecar only.
pub const TOKEN_VOLUME: &str = "tollgate-token";
/// The app's MCP port is renamed to this when its name is handed to the sidecar.
pub const APP_PORT_NAME: &str = "tollgate-app";
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
}

/// What the webhook does with a pod.
#[derive(Debug, PartialEq)]
pub enum Injection {
    /// Inject: apply this patch.
    Patch(json_patch::Patch),
    /// Already injected (the webhook was re-invoked): nothing to change.
    Unchanged,
    /// Not injected. `warn` is set when the pod asked for injection, so the reason reaches the
    /// person who applied it as an admission warning.
    Skip { reason: String, warn: bool },
}

/// A pod that asked for something impossible: the admission is refused with this message.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("{annotation}: {message}")]
pub struct BadAnnotation {
    pub annotation: &'static str,
    pub message: String,
}

/// Decides whether and how to inject `pod`, created in a namespace with `namespace_labels`.
pub fn inject_sidecar(
    pod: &Pod,
    namespace_labels: &BTreeMap<String, String>,
    config: &InjectConfig,
) -> Result<Injection, BadAnnotation> {
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
            return Err(BadAnnotation {
                annotation: INJECT_ANNOTATION,
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
    if spec.host_network == Some(true) {
        return Ok(skip(
            "the pod uses hostNetwork: a sidecar there would sit in front of the node's ports, so Tollgate leaves it alone".into(),
            true,
        ));
    }
    default_action_override(&pod.metadata)?;
    let Some(target) = find_mcp_port(&spec.containers, annotations.get(PORT_ANNOTATION))? else {
        let reason = match annotations.get(PORT_ANNOTATION) {
            Some(name) => format!("no container has a port named {name:?} ({PORT_ANNOTATION})"),
            None => format!(
                "no container port is named \"mcp\"; name the MCP server's port mcp or annotate the pod {PORT_ANNOTATION}"
            ),
        };
        return Ok(skip(reason, true));
    };

    let before = serde_json::to_value(pod).expect("a Pod serialises");
    let mut after = pod.clone();
    let sidecar_port_name = hand_off_port(&mut after, &target);
    let sidecar = sidecar_container(&annotations, config, &target, &sidecar_port_name)?;
    let spec = after.spec.get_or_insert_with(Default::default);
    spec.init_containers
        .get_or_insert_with(Vec::new)
        .insert(0, sidecar);
    spec.volumes
        .get_or_insert_with(Vec::new)
        .push(token_volume());
    let status = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "sidecar": SIDECAR_NAME,
        "upstreamPort": target.number,
        "proxyPort": config.proxy_port,
        "boundary": match &sidecar_port_name {
            Some(name) => format!("port {name:?} handed to the sidecar"),
            None => format!("none: clients must connect to port {}", config.proxy_port),
        },
    });
    after
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(STATUS_ANNOTATION.into(), status.to_string());
    after
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(INJECTED_LABEL.into(), "true".into());
    let after = serde_json::to_value(&after).expect("a Pod serialises");
    Ok(Injection::Patch(json_patch::diff(&before, &after)))
}

/// The pod's own default for tools no policy lists, if it sets one.
pub fn default_action_override(meta: &ObjectMeta) -> Result<Option<DefaultAction>, BadAnnotation> {
    let value = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEFAULT_ACTION_ANNOTATION));
    match value.map(String::as_str) {
        None => Ok(None),
        Some("allow") => Ok(Some(DefaultAction::Allow)),
        Some("deny") => Ok(Some(DefaultAction::Deny)),
        Some(other) => Err(BadAnnotation {
            annotation: DEFAULT_ACTION_ANNOTATION,
            message: format!("{other:?} is neither \"allow\" nor \"deny\""),
        }),
    }
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
) -> Result<Option<McpPort>, BadAnnotation> {
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
            return Err(BadAnnotation {
                annotation: PORT_ANNOTATION,
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

/// The boundary step. With the port handoff, the app's port gives its name to the sidecar, so
/// a Service that targets the port by name reaches the sidecar; the app's probes follow the
/// renamed port. Returns the name the sidecar's port takes.
///
/// The iptables redirect (a later boundary mode) belongs here too: it will add its init step
/// and leave the app's ports alone.
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
    Some(name)
}

fn sidecar_container(
    annotations: &BTreeMap<String, String>,
    config: &InjectConfig,
    target: &McpPort,
    port_name: &Option<String>,
) -> Result<Container, BadAnnotation> {
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
        image: Some(
            annotations
                .get(IMAGE_ANNOTATION)
                .cloned()
                .unwrap_or_else(|| config.image.clone()),
        ),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(vec!["proxy".into()]),
        restart_policy: Some("Always".into()),
        env: Some(vec![
            env(
                sidecar_env::UPSTREAM,
                format!("http://127.0.0.1:{}", target.number),
            ),
            env(
                sidecar_env::LISTEN,
                format!("0.0.0.0:{}", config.proxy_port),
            ),
            env(
                sidecar_env::METRICS_LISTEN,
                format!("0.0.0.0:{}", config.admin_port),
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
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some(port_name.clone().unwrap_or_else(|| SIDECAR_NAME.into())),
                container_port: config.proxy_port.into(),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("tollgate-admin".into()),
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
            run_as_user: Some(65532),
            run_as_group: Some(65532),
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
        volume_mounts: Some(vec![VolumeMount {
            name: TOKEN_VOLUME.into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    })
}

fn resources(
    annotations: &BTreeMap<String, String>,
    defaults: &ResourceRequirements,
) -> Result<ResourceRequirements, BadAnnotation> {
    let mut out = defaults.clone();
    for (annotation, kind, resource) in RESOURCE_ANNOTATIONS {
        let Some(value) = annotations.get(annotation) else {
            continue;
        };
        if !is_quantity(value) {
            return Err(BadAnnotation {
                annotation,
                message: format!("{value:?} is not a quantity; write e.g. 100m or 64Mi"),
            });
        }
        let map = match kind {
            "requests" => out.requests.get_or_insert_with(BTreeMap::new),
            _ => out.limits.get_or_insert_with(BTreeMap::new),
        };
        map.insert(resource.into(), Quantity(value.clone()));
    }
    Ok(out)
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
