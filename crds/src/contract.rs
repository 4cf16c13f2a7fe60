//! The contract between the operator and the sidecars it injects, defined once for both: the
//! environment an injected sidecar is configured by, the policy stream it reads, the token it
//! proves its pod with, and the annotations and labels a user or the operator puts on pods.
//!
//! ```text
//! operator ── injects env (env::*) and a projected token (TOKEN_FILE, TOKEN_AUDIENCE) ──> sidecar
//! sidecar ── GET STREAM_PATH, Bearer token ──> operator ── STREAM_MEDIA_TYPE: one policy per
//!            line, a heartbeat every HEARTBEAT ──> sidecar (reconnects after SILENCE)
//! ```

use std::time::Duration;

/// The environment variables the operator sets on an injected sidecar, each read by the
/// `tollgate proxy` flag of the same meaning.
pub mod env {
    /// `http://127.0.0.1:PORT` of the MCP server in the pod.
    pub const UPSTREAM: &str = "TOLLGATE_UPSTREAM";
    /// Where the proxy listens.
    pub const LISTEN: &str = "TOLLGATE_LISTEN";
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub const METRICS_LISTEN: &str = "TOLLGATE_METRICS_LISTEN";
    /// The operator's policy stream, `https://…`.
    pub const CONTROL_PLANE: &str = "TOLLGATE_CONTROL_PLANE";
    /// The CA bundle the stream's certificate is checked against.
    pub const CONTROL_PLANE_CA: &str = "TOLLGATE_CONTROL_PLANE_CA";
    /// The pod's projected token.
    pub const TOKEN_FILE: &str = "TOLLGATE_TOKEN_FILE";
    /// The log filter.
    pub const LOG: &str = "TOLLGATE_LOG";
    /// The pod's name, from the downward API: audit lines name it.
    pub const POD_NAME: &str = "POD_NAME";
    /// The pod's namespace, from the downward API.
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
}

/// The path of the operator's policy stream.
pub const STREAM_PATH: &str = "/v1/policy";
/// The stream's media type: one JSON `PolicyUpdate` per line.
pub const STREAM_MEDIA_TYPE: &str = "application/x-ndjson";
/// How often the operator writes to an idle stream (an empty line).
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// A stream silent for this long (three heartbeats) is presumed dead, and the sidecar
/// reconnects; the last policy stays in force meanwhile.
pub const SILENCE: Duration = Duration::from_secs(45);

/// Where the sidecar's projected service-account token is mounted (the sidecar alone).
pub const TOKEN_DIR: &str = "/var/run/secrets/tollgate.dev";
/// The token file in [`TOKEN_DIR`].
pub const TOKEN_FILE: &str = "/var/run/secrets/tollgate.dev/token";
/// The audience of the sidecar's token: the policy stream accepts no other.
pub const TOKEN_AUDIENCE: &str = "tollgate";

/// Annotations and labels on pods and namespaces.
pub mod annotations {
    /// `"true"` injects a pod, `"false"` opts it out even in an enabled namespace.
    pub const INJECT: &str = "tollgate.dev/inject";
    /// A namespace label: `enabled` injects every pod of the namespace.
    pub const NAMESPACE_LABEL: &str = "tollgate.dev/injection";
    /// The MCP server's port: a number, or the name of a container port (default `mcp`).
    pub const PORT: &str = "tollgate.dev/port";
    /// What injection did, as JSON; also how a re-invoked webhook knows the pod is done.
    pub const STATUS: &str = "tollgate.dev/status";
    /// A label set on injected pods: the operator watches only these.
    pub const INJECTED_LABEL: &str = "tollgate.dev/injected";
    /// Per-pod override of the cluster's default for tools no policy lists.
    pub const DEFAULT_ACTION: &str = "tollgate.dev/default-action";
    /// Per-pod sidecar image.
    pub const PROXY_IMAGE: &str = "tollgate.dev/proxy-image";
    /// Per-pod sidecar log filter.
    pub const LOG_LEVEL: &str = "tollgate.dev/log-level";
    /// Per-pod sidecar resources, each a Kubernetes quantity: (annotation, requests or
    /// limits, resource).
    pub const RESOURCES: [(&str, &str, &str); 4] = [
        ("tollgate.dev/proxy-cpu-request", "requests", "cpu"),
        ("tollgate.dev/proxy-memory-request", "requests", "memory"),
        ("tollgate.dev/proxy-cpu-limit", "limits", "cpu"),
        ("tollgate.dev/proxy-memory-limit", "limits", "memory"),
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_file_is_in_the_token_dir_and_silence_outlasts_heartbeats() {
        assert_eq!(TOKEN_FILE, format!("{TOKEN_DIR}/token"));
        assert!(SILENCE >= 3 * HEARTBEAT);
    }
}
