//! The app's probes on its MCP port: in redirect mode the kubelet's probes would be sent to
//! the sidecar, so they move to the sidecar's admin port, which runs them against the app.

use k8s_openapi::api::core::v1::{HTTPGetAction, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tollgate_api::contract::{APP_HEALTH_PREFIX, AppProbe, AppProbes};

use super::McpPort;

/// How long the sidecar gives the app to answer a lifecycle hook it runs for the kubelet (a hook
/// has no timeout of its own; a preStop hook is bounded by the pod's grace period anyway).
pub(super) const HOOK_TIMEOUT_SECONDS: u32 = 30;

/// Redirect mode: every probe and lifecycle hook the kubelet would send to the MCP port (by
/// number, or by a name its container gives that port) would now reach the sidecar, so it is
/// pointed at the sidecar's admin port instead, and the original is returned for the sidecar to
/// run. Periods, thresholds and timeouts stay on the probe. gRPC, exec and sleep actions are left
/// as they are (they do not dial the port), and so are HTTPS probes (the proxy speaks HTTP to the
/// app, so such an app cannot be behind it anyway).
pub(super) fn move_probes(pod: &mut Pod, target: &McpPort, admin_port: u16) -> AppProbes {
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
