//! The contract between the operator and the sidecars it injects, defined once for both: the
//! environment an injected sidecar is configured by, the policy stream it reads, the token it
//! proves its pod with, and the annotations and labels a user or the operator puts on pods.
//!
//! ```text
//! operator ── injects env (env::*) and a projected token (TOKEN_FILE, TOKEN_AUDIENCE) ──> sidecar
//! sidecar ── GET STREAM_PATH, Bearer token ──> operator ── STREAM_MEDIA_TYPE: one policy per
//!            line, a heartbeat every HEARTBEAT ──> sidecar (reconnects after SILENCE)
//! sidecar ── POST APPROVALS_PATH ApprovalAsk, GET …/NAME?wait=, POST …/NAME/use, Bearer
//!            token ──> operator ── ApprovalAnswer (the McpApproval it keeps for the call)
//! sidecar ── POST PINS_PATH PinReport (a tool pinned on first use, or held back), Bearer
//!            token ──> operator ── WorkloadPin (the McpToolPin it keeps for the workload)
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
    /// The app's probes the sidecar runs for the kubelet: a JSON [`AppProbes`](super::AppProbes).
    pub const APP_PROBES: &str = "TOLLGATE_APP_PROBES";
    /// Redis for shared counters: one URL, or a cluster's seed nodes (comma-separated).
    pub const COUNTERS: &str = "TOLLGATE_COUNTERS";
    /// `true`: [`COUNTERS`] names a Redis Cluster.
    pub const COUNTERS_CLUSTER: &str = "TOLLGATE_COUNTERS_CLUSTER";
    /// A file holding Redis' password (injection mounts it from a Secret).
    pub const COUNTERS_PASSWORD_FILE: &str = "TOLLGATE_COUNTERS_PASSWORD_FILE";
    /// The CA a `rediss://` server's certificate must chain to.
    pub const COUNTERS_CA_FILE: &str = "TOLLGATE_COUNTERS_CA_FILE";
    /// How long a call waits for Redis.
    pub const COUNTERS_TIMEOUT: &str = "TOLLGATE_COUNTERS_TIMEOUT";
    /// Whose counters: the replicas of one workload share them (`<namespace>/<Kind>/<name>`).
    pub const COUNTERS_GROUP: &str = "TOLLGATE_COUNTERS_GROUP";
    /// Which HTTP/1 server reads agents' requests: `tollgate` (unset) or `hyper`.
    pub const HTTP1: &str = "TOLLGATE_HTTP1";
    /// Where a person approves a held call (`{name}`: the approval's), for 2026-07-28 clients
    /// that open URLs.
    pub const APPROVAL_URL: &str = "TOLLGATE_APPROVAL_URL";
    /// Where traces go (OTLP/HTTP), and the share of requests traced: OpenTelemetry's own
    /// variables, as every SDK reads them.
    pub const OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
    pub const TRACE_SAMPLING: &str = "OTEL_TRACES_SAMPLER_ARG";
    /// The spans' resource: the pod and its namespace.
    pub const TRACE_RESOURCE: &str = "OTEL_RESOURCE_ATTRIBUTES";
}

/// The sidecar's default UID and GID. In redirect mode its own connections to the app are the
/// only ones not sent through it (they must match both), so no app container may run as either.
/// Chosen, as Istio (1337) and Linkerd (2102) choose theirs, for being no image's default: not
/// distroless's `nonroot` (65532), `nobody`, or a distribution's first user. The operator's
/// `--sidecar-uid`/`--sidecar-gid` and the annotations [`annotations::PROXY_UID`] and
/// [`annotations::PROXY_GID`] choose others.
pub const PROXY_UID: u32 = 2417;
pub const PROXY_GID: u32 = 2417;

/// The sidecar's default ports: where agents reach it, and its admin port (probes, metrics).
/// Outside what meshes and agents take in a pod (Istio 15000-15090, Linkerd 4140-4191,
/// OSM 15000-15904, Dapr 3500/50001, Consul 20000+, Envoy's admin 9901).
pub const PROXY_PORT: u16 = 15480;
pub const ADMIN_PORT: u16 = 15481;

/// Where on the admin port the sidecar answers for one of the app's probes:
/// `/app-health/<container>/<liveness|readiness|startup>`.
pub const APP_HEALTH_PREFIX: &str = "/app-health/";

/// The app's probes, keyed by the tail of their [`APP_HEALTH_PREFIX`] path (`server/readiness`).
///
/// In redirect mode the kubelet's probes to the app's MCP port would reach the sidecar, not the
/// app, so injection points them at the sidecar's admin port and hands the originals over here;
/// the sidecar runs each against the app on loopback, as Istio's agent does.
pub type AppProbes = std::collections::BTreeMap<String, AppProbe>;

/// One probe as the kubelet would have run it against the app (the parts that reach the app;
/// periods and thresholds stay on the rewritten probe).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum AppProbe {
    /// GET `path` on the app's `port`; healthy when the status is 200 to 399.
    #[serde(rename_all = "camelCase")]
    HttpGet {
        port: u16,
        path: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        headers: Vec<(String, String)>,
        timeout_seconds: u32,
    },
    /// A TCP connection to the app's `port`; healthy when it is accepted.
    #[serde(rename_all = "camelCase")]
    TcpSocket { port: u16, timeout_seconds: u32 },
}

/// The path of the operator's policy stream.
pub const STREAM_PATH: &str = "/v1/policy";
/// The stream's media type: one JSON `PolicyUpdate` per line.
pub const STREAM_MEDIA_TYPE: &str = "application/x-ndjson";

/// Where a sidecar asks the operator for a person's decision, with its pod token:
/// `POST APPROVALS_PATH` an [`ApprovalAsk`], `GET APPROVALS_PATH/NAME?wait=SECONDS`, and
/// `POST APPROVALS_PATH/NAME/use`, each answered with an [`ApprovalAnswer`].
pub const APPROVALS_PATH: &str = "/v1/approvals";
/// The label an McpApproval carries with (the start of) its call's fingerprint.
pub const CALL_LABEL: &str = "tollgate.dev/call";

/// A held call, as the sidecar describes it. The operator adds the pod and its workload from
/// the token, never from the sidecar's word.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalAsk {
    pub tool: String,
    pub identity: String,
    /// The hex SHA-256 of the tool, the identity and the canonical arguments.
    pub call: String,
    /// The arguments the rule shows, each as JSON text.
    #[serde(default)]
    pub arguments: std::collections::BTreeMap<String, String>,
    pub policy: String,
    pub rule: String,
    pub valid_for_seconds: u32,
}

/// Where an approval stands, for the sidecar holding its call.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalAnswer {
    pub name: String,
    pub phase: crate::ApprovalPhase,
    /// This call used the approval: it goes to the server.
    #[serde(default)]
    pub admitted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
/// Where a sidecar reports a tool definition to its workload's pins, with its pod token:
/// `POST PINS_PATH` a [`PinReport`], answered with the tool's [`crate::WorkloadPin`] as it is
/// kept after the report.
pub const PINS_PATH: &str = "/v1/pins";

/// A definition one sidecar listed: one to pin on first use, or one it held back.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PinReport {
    pub definition: crate::ToolDefinition,
    /// Absent: pin it on first use, unless the workload has a pin of the tool already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<HeldReport>,
}

/// Why a sidecar held a definition back.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeldReport {
    pub why: String,
    pub reason: String,
    #[serde(default)]
    pub changed: Vec<String>,
}

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

/// How nothing reaches a pod's app around its sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BoundaryMode {
    /// An init container's iptables rules send inbound TCP for the MCP port to the sidecar.
    Redirect,
    /// No privilege: the MCP port's name moves to the sidecar, so a Service that targets it by
    /// name reaches the sidecar, and a NetworkPolicy the operator keeps admits every port of
    /// the pod but the app's.
    NetworkPolicy,
}

impl BoundaryMode {
    /// The annotation's and the chart's spelling.
    pub fn parse(s: &str) -> Option<BoundaryMode> {
        match s {
            "redirect" => Some(BoundaryMode::Redirect),
            "network-policy" => Some(BoundaryMode::NetworkPolicy),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BoundaryMode::Redirect => "redirect",
            BoundaryMode::NetworkPolicy => "network-policy",
        }
    }
}

/// The NetworkPolicy of the `network-policy` boundary for pods whose app serves on `port`.
pub fn network_policy_name(port: i32) -> String {
    format!("tollgate-boundary-{port}")
}

/// The name the app's MCP port takes in the `network-policy` boundary, once its own name has
/// moved to the sidecar.
pub const APP_PORT_NAME: &str = "tollgate-app";

/// What injection did to a pod: its [`annotations::STATUS`] annotation, written once by the
/// mutating webhook and read by whoever keeps the pod's boundary. `boundary` says it in words
/// for people reading the pod; `mode` says it for programs.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InjectedStatus {
    /// The operator's version that injected it.
    #[serde(default)]
    pub version: String,
    /// The sidecar's container name.
    #[serde(default)]
    pub sidecar: String,
    /// The app's MCP port.
    #[serde(default)]
    pub upstream_port: i32,
    /// The sidecar's port for agents.
    #[serde(default)]
    pub proxy_port: u16,
    /// How the boundary is kept. Absent on pods injected before it was written; see
    /// [`InjectedStatus::mode`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<BoundaryMode>,
    #[serde(default)]
    pub boundary: String,
    /// The `hostPort`s moved from the app's MCP port to the sidecar.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_ports_moved: Vec<i32>,
}

impl InjectedStatus {
    /// The annotation read, or `None` where it is absent or not one.
    pub fn of<'a>(
        annotations: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Option<InjectedStatus> {
        let (_, text) = annotations
            .into_iter()
            .find(|(k, _)| k.as_str() == annotations::STATUS)?;
        serde_json::from_str(text).ok()
    }

    /// How the pod's boundary is kept. A pod injected before `mode` was written has only the
    /// sentence, which began with the mode's name.
    pub fn mode(&self) -> Option<BoundaryMode> {
        self.mode.or_else(|| {
            let first = self.boundary.split(':').next()?;
            BoundaryMode::parse(first)
        })
    }
}

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
    /// Per-pod sidecar UID and GID (numbers): for a pod one of whose containers needs the
    /// cluster's default.
    pub const PROXY_UID: &str = "tollgate.dev/proxy-uid";
    pub const PROXY_GID: &str = "tollgate.dev/proxy-gid";
    /// Per-pod sidecar ports (numbers): for a pod one of whose containers serves the default.
    pub const PROXY_PORT: &str = "tollgate.dev/proxy-port";
    pub const ADMIN_PORT: &str = "tollgate.dev/admin-port";
    /// How the pod's boundary is kept: `redirect` (an init container's iptables rules send
    /// inbound TCP for the MCP port to the sidecar; needs NET_ADMIN) or `network-policy` (no
    /// privilege: a NetworkPolicy the operator keeps admits every port of the pod but the app's).
    pub const BOUNDARY: &str = "tollgate.dev/boundary";
    /// A label injection sets on pods with the `network-policy` boundary: the app's MCP port
    /// number, which the operator's NetworkPolicy for that port selects.
    pub const APP_PORT_LABEL: &str = "tollgate.dev/app-port";
    /// Per-pod sidecar resources, each a Kubernetes quantity: (annotation, requests or
    /// limits, resource).
    pub const RESOURCES: [(&str, &str, &str); 4] = [
        ("tollgate.dev/proxy-cpu-request", "requests", "cpu"),
        ("tollgate.dev/proxy-memory-request", "requests", "memory"),
        ("tollgate.dev/proxy-cpu-limit", "limits", "cpu"),
        ("tollgate.dev/proxy-memory-limit", "limits", "memory"),
    ];

    /// A pod's [`DEFAULT_ACTION`] annotation, read: `None` where it has none, an error naming
    /// the value where it is neither `allow` nor `deny`.
    pub fn default_action<'a>(
        annotations: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<Option<crate::DefaultAction>, String> {
        let value = annotations
            .into_iter()
            .find(|(k, _)| k.as_str() == DEFAULT_ACTION)
            .map(|(_, v)| v.as_str());
        match value {
            None => Ok(None),
            Some("allow") => Ok(Some(crate::DefaultAction::Allow)),
            Some("deny") => Ok(Some(crate::DefaultAction::Deny)),
            Some(other) => Err(format!("{other:?} is neither \"allow\" nor \"deny\"")),
        }
    }
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
