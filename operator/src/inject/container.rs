//! The containers injection adds (the sidecar, the redirect's init container), their
//! resources, and the volumes they mount.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, ObjectFieldSelector, Pod, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tollgate_api::contract::{AppProbes, TOKEN_FILE, env as sidecar_env};

use super::{
    ADMIN_PORT_NAME, API_TOKEN_DIR, COUNTERS_PASSWORD_DIR, COUNTERS_PASSWORD_VOLUME,
    IMAGE_ANNOTATION, INIT_NAME, InjectConfig, LOG_LEVEL_ANNOTATION, McpPort, NO_API_TOKEN_VOLUME,
    RESOURCE_ANNOTATIONS, Refused, SIDECAR_NAME, TOKEN_AUDIENCE, TOKEN_DIR, TOKEN_VOLUME,
};

/// Network-policy mode: takes the MCP port's TCP `hostPort`s off the app's containers and
/// returns them, for the sidecar's port to publish instead.
pub(super) fn move_host_ports(pod: &mut Pod, target: &McpPort) -> Vec<ContainerPort> {
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
pub(super) fn publish_on_node(sidecar: &mut Container, host_ports: &[ContainerPort]) {
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

/// The sidecar's image, which also holds `tollgate init-redirect`: the pod's own, or the operator's.
pub(super) fn image(annotations: &BTreeMap<String, String>, config: &InjectConfig) -> String {
    annotations
        .get(IMAGE_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| config.image.clone())
}

/// `tollgate init-redirect`, run before the sidecar: root with NET_ADMIN and NET_RAW, nothing
/// else, and done before any container of the app starts.
pub(super) fn init_container(
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

pub(super) fn sidecar_container(
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
            .chain(
                config
                    .hyper_http1
                    .then(|| env(sidecar_env::HTTP1, "hyper".into())),
            )
            .chain(
                config
                    .approval_url
                    .as_ref()
                    .map(|url| env(sidecar_env::APPROVAL_URL, url.clone())),
            )
            .chain(config.tracing.iter().flat_map(|t| {
                [
                    env(sidecar_env::OTLP_ENDPOINT, t.endpoint.clone()),
                    env(sidecar_env::TRACE_SAMPLING, t.sampling.to_string()),
                    // Kubernetes expands $(VAR) from the variables defined above.
                    env(
                        sidecar_env::TRACE_RESOURCE,
                        format!(
                            "k8s.pod.name=$({}),k8s.namespace.name=$({})",
                            sidecar_env::POD_NAME,
                            sidecar_env::POD_NAMESPACE
                        ),
                    ),
                ]
            }))
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

pub(super) fn resources(
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
pub(super) fn quantity(s: &str) -> Option<f64> {
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
pub(super) fn is_quantity(s: &str) -> bool {
    let suffixes = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    !number.is_empty() && number.parse::<f64>().is_ok() && suffixes.contains(&suffix)
}

pub(super) fn counters_password_volume(secret: &str, key: &str) -> Volume {
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

pub(super) fn no_api_token_volume() -> Volume {
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

pub(super) fn no_api_token_mount() -> VolumeMount {
    VolumeMount {
        name: NO_API_TOKEN_VOLUME.into(),
        mount_path: API_TOKEN_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

pub(super) fn token_volume() -> Volume {
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
