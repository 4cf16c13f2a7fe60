//! What a pod must not be for its boundary to hold. Each is refused naming the field and the
//! way out, never admitted without its boundary.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec};

use super::{
    ADMIN_PORT_NAME, APP_PORT_NAME, BOUNDARY_ANNOTATION, Boundary, COUNTERS_PASSWORD_VOLUME,
    INIT_NAME, InjectConfig, McpPort, NO_API_TOKEN_VOLUME, POD_SECURITY_ENFORCE, PORT_ANNOTATION,
    PROXY_GID_ANNOTATION, PROXY_UID_ANNOTATION, Refused, SIDECAR_NAME, TOKEN_VOLUME,
    all_containers,
};

/// What injection adds must fit beside what the pod has: the API server refuses two containers,
/// two volumes or two ports of a container with one name, and the sidecar cannot listen on a
/// port a container of the pod already serves (they share its network namespace).
pub(super) fn fits(spec: &PodSpec, config: &InjectConfig, target: &McpPort) -> Result<(), Refused> {
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
pub(super) fn uid(c: &Container, spec: &PodSpec) -> Option<i64> {
    let pod = spec.security_context.as_ref().and_then(|s| s.run_as_user);
    c.security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
        .or(pod)
}

/// The GID a container runs as: its own, else the pod's.
pub(super) fn gid(c: &Container, spec: &PodSpec) -> Option<i64> {
    let pod = spec.security_context.as_ref().and_then(|s| s.run_as_group);
    c.security_context
        .as_ref()
        .and_then(|s| s.run_as_group)
        .or(pod)
}

/// Whether a container declares the sidecar's UID or GID, and which, in words.
pub(super) fn as_sidecar(c: &Container, spec: &PodSpec, config: &InjectConfig) -> Option<String> {
    if uid(c, spec) == Some(config.proxy_uid.into()) {
        Some(format!("runs as UID {}, the sidecar's", config.proxy_uid))
    } else if gid(c, spec) == Some(config.proxy_gid.into()) {
        Some(format!("runs as GID {}, the sidecar's", config.proxy_gid))
    } else {
        None
    }
}

pub(super) fn privileged(c: &Container) -> bool {
    c.security_context.as_ref().and_then(|s| s.privileged) == Some(true)
}

/// The capability `cap` (or ALL) among those the container adds.
pub(super) fn adds(c: &Container, cap: &str) -> Option<String> {
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
pub(super) fn token_stays_private(spec: &PodSpec, config: &InjectConfig) -> Result<(), Refused> {
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

/// The pod's boundary: its annotation, else the operator's default. Redirect mode needs an init
/// container with NET_ADMIN, which Pod Security's baseline and restricted levels refuse: such a
/// namespace gets a refusal that says so, never a pod that silently went without its boundary.
pub(super) fn boundary(
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
pub(super) fn redirect_holds(spec: &PodSpec, config: &InjectConfig) -> Result<(), Refused> {
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
