//! The `tollgate` command: `proxy`, `approvals`, `check`, `test`, `replay`, `import` and
//! `init-redirect`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use tollgate_api::{Call, Decision, DefaultAction, EffectivePolicy, Identity, NoCounters};

use crate::http::server::Http1Server;
use crate::policy::identity::Verifier;
use crate::policy::{FileSource, PolicyHandle};
use crate::proxy::{Proxy, ProxyConfig};
use tollgate_api::contract;

use crate::telemetry::audit::{AuditLog, Overflow};
use crate::telemetry::metrics::Metrics;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Policy for AI agents' MCP tool calls"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy in front of an MCP server.
    Proxy(Box<ProxyArgs>),
    /// Validate a policy file, or decide one call against it.
    Check(CheckArgs),
    /// Run policy tests: cases of calls, lists, upstream outcomes, approvals and time passing,
    /// decided by the proxy's own counters and approvals on a test clock.
    Test(TestArgs),
    /// Decide the calls of audit logs again under other policies, and print what would change.
    Replay(ReplayArgs),
    /// Print the McpPolicy equivalent of a PolicyLayer policy.json or Intercept YAML file.
    Import(ImportArgs),
    /// List and decide the calls a proxy holds for a person (its --approvals-listen).
    Approvals(ApprovalsArgs),
    /// List the tools a proxy holds back because their definition is not their pin, and
    /// accept or reject each new definition (on its --approvals-listen).
    Pins(PinsArgs),
    /// Print a starter McpPolicy for a running MCP server: each tool pinned to its definition,
    /// with a rule proposed from its annotations, for a person to review.
    Pin(PinArgs),
    /// Redirect inbound TCP for the app's MCP ports to the proxy, in this network namespace
    /// (what the injected init container runs; needs NET_ADMIN and NET_RAW).
    InitRedirect(InitRedirectArgs),
}

#[derive(clap::Args)]
struct ApprovalsArgs {
    #[command(subcommand)]
    action: ApprovalsAction,
    /// The proxy's approvals listener.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_APPROVALS_URL",
        default_value = "http://127.0.0.1:9091"
    )]
    url: String,
    /// The file holding the proxy's approvals token (its --approvals-token-file).
    #[arg(long, global = true, env = "TOLLGATE_APPROVALS_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum ApprovalsAction {
    /// The approvals the proxy holds: pending, decided, used and expired.
    List,
    /// Approve: the call (or its retry) goes to the server, once.
    Approve {
        name: String,
        #[arg(long)]
        reason: Option<String>,
        /// Who decides, for the audit log (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// Deny: the agent is told why.
    Deny {
        name: String,
        #[arg(long)]
        reason: String,
        /// Who decides, for the audit log (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
}

#[derive(clap::Args)]
struct PinArgs {
    /// The MCP server's streamable HTTP endpoint, e.g. http://127.0.0.1:8000/mcp.
    url: String,
    /// The McpPolicy's name.
    #[arg(long, default_value = "pinned")]
    name: String,
    /// The McpPolicy's namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// A bearer token for the server, if it asks for one.
    #[arg(long, env = "TOLLGATE_PIN_TOKEN")]
    token: Option<String>,
}

#[derive(clap::Args)]
struct PinsArgs {
    #[command(subcommand)]
    action: PinsAction,
    /// The proxy's approvals listener.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_APPROVALS_URL",
        default_value = "http://127.0.0.1:9091"
    )]
    url: String,
    /// The file holding the proxy's approvals token (its --approvals-token-file).
    #[arg(long, global = true, env = "TOLLGATE_APPROVALS_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum PinsAction {
    /// The tools held back: what changed, since when.
    List,
    /// Accept a tool's new definition: it is the pin from now on, and the tool is shown again.
    Accept {
        tool: String,
        /// The definition you reviewed, as `tollgate pins list` shows it: refused if the
        /// server has shown another since.
        #[arg(long)]
        digest: String,
        /// Who decides, for the audit log (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// Reject it: the tool stays held back, and is not reported again.
    Reject {
        tool: String,
        /// Who decides, for the audit log (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
}

#[derive(clap::Args)]
struct InitRedirectArgs {
    /// The app's MCP port(s): inbound TCP to them goes to the proxy. Repeat, or comma-separate.
    #[arg(long = "port", required = true, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    ports: Vec<u16>,
    /// The proxy's listening port.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    proxy_port: u16,
    /// The proxy's UID: its own connections to the app (UID and GID both) are not redirected.
    #[arg(long)]
    proxy_uid: u32,
    /// The proxy's GID, matched too when given (an operator before 0.2 gives the UID alone).
    #[arg(long)]
    proxy_gid: Option<u32>,
    /// The iptables back end: auto (the one holding rules here, else nft if it works), nft, legacy.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendFlag,
    /// Which IP families: auto (IPv4, and IPv6 when it is on here), ipv4, ipv6, both.
    #[arg(long, value_enum, default_value = "auto")]
    families: FamiliesFlag,
    /// Print the rules and change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendFlag {
    Auto,
    Nft,
    Legacy,
}

#[derive(Clone, Copy, ValueEnum)]
enum FamiliesFlag {
    Auto,
    Ipv4,
    Ipv6,
    Both,
}

#[derive(Clone, Copy, ValueEnum)]
enum OverflowFlag {
    Deny,
    Drop,
}

#[derive(Clone, Copy, ValueEnum)]
enum DefaultFlag {
    Allow,
    Deny,
}

impl From<DefaultFlag> for DefaultAction {
    fn from(f: DefaultFlag) -> Self {
        match f {
            DefaultFlag::Allow => DefaultAction::Allow,
            DefaultFlag::Deny => DefaultAction::Deny,
        }
    }
}

#[derive(clap::Args)]
struct ProxyArgs {
    /// The MCP server, e.g. http://127.0.0.1:8000.
    #[arg(long, env = contract::env::UPSTREAM)]
    upstream: http::Uri,
    /// A policy file: McpPolicy/McpClusterPolicy YAML (several documents allowed), a
    /// PolicyLayer policy.json, or Intercept YAML. Reloaded when it changes.
    #[arg(
        long,
        env = "TOLLGATE_POLICY",
        required_unless_present = "control_plane",
        conflicts_with = "control_plane"
    )]
    policy: Option<PathBuf>,
    /// The operator's policy stream (e.g. https://tollgate-operator.tollgate-system.svc:8443),
    /// instead of a policy file.
    #[arg(long, env = contract::env::CONTROL_PLANE, requires = "control_plane_ca")]
    control_plane: Option<http::Uri>,
    /// The CA the control plane's certificate is signed by: PEM text, or a file holding it.
    #[arg(long, env = contract::env::CONTROL_PLANE_CA)]
    control_plane_ca: Option<String>,
    /// The pod's projected service-account token (audience tollgate), sent to the control plane.
    #[arg(
        long,
        env = contract::env::TOKEN_FILE,
        default_value = contract::TOKEN_FILE
    )]
    token_file: PathBuf,
    /// Where agents connect.
    #[arg(long, env = contract::env::LISTEN, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = contract::env::METRICS_LISTEN, default_value = "0.0.0.0:9090")]
    metrics_listen: SocketAddr,
    /// The app's probes to run for the kubelet under /app-health/ on the admin port, as JSON
    /// (injection sets it in redirect mode).
    #[arg(long, env = contract::env::APP_PROBES, value_parser = crate::app_probes::parse)]
    app_probes: Option<contract::AppProbes>,
    /// The decision for tools no policy lists. The policy file's own default applies first.
    #[arg(
        long,
        env = "TOLLGATE_DEFAULT_ACTION",
        value_enum,
        default_value = "allow"
    )]
    default_action: DefaultFlag,
    /// The decision for callers no policy governs (every policy names its `subjects`, and the
    /// caller is none of them): denied unless this says allow.
    #[arg(
        long,
        env = "TOLLGATE_UNGOVERNED_CALLERS",
        value_enum,
        default_value = "deny"
    )]
    ungoverned_callers: DefaultFlag,
    /// Largest request body accepted, in bytes (4 MiB); a larger one gets 413 with a JSON-RPC
    /// error.
    #[arg(long, env = "TOLLGATE_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Paths whose request bodies are not MCP and are forwarded unread (comma-separated; an
    /// exact path, or a prefix ending in `*`), e.g. `/oauth/token`. Every other request body
    /// must be one JSON-RPC message or batch, or it is refused.
    #[arg(long, env = "TOLLGATE_PASSTHROUGH_PATHS", value_delimiter = ',')]
    passthrough_paths: Vec<String>,
    /// Origins browsers may call from (comma-separated); others get 403, which protects a
    /// server on localhost from DNS rebinding. Empty allows any.
    #[arg(long, env = "TOLLGATE_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,
    /// A JWKS file (or http:// URL) to verify bearer tokens: an invalid token gets 401 with
    /// `WWW-Authenticate`. Without it callers are anonymous.
    #[arg(long, env = "TOLLGATE_JWKS")]
    jwks: Option<String>,
    /// The issuer tokens must name.
    #[arg(long, env = "TOLLGATE_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// The audience tokens must name.
    #[arg(long, env = "TOLLGATE_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// How often the policy file is checked for changes.
    #[arg(long, env = "TOLLGATE_POLICY_POLL", default_value = "1s", value_parser = parse_duration)]
    policy_poll: Duration,
    /// How long a new connection may take to send its first byte.
    #[arg(long, env = "TOLLGATE_FIRST_BYTE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    first_byte_timeout: Duration,
    /// How long a request head (or HTTP/2's preface) may take once its first byte has come.
    #[arg(long, env = "TOLLGATE_HEAD_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    head_timeout: Duration,
    /// How long a request body may go without a byte.
    #[arg(long, env = "TOLLGATE_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    body_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request.
    #[arg(long, env = "TOLLGATE_IDLE_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// How long a write to an agent that does not read may take.
    #[arg(long, env = "TOLLGATE_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    write_timeout: Duration,
    /// How long the MCP server may take to start answering (the head of its answer: a tool's
    /// run, for a JSON answer).
    #[arg(long, env = "TOLLGATE_UPSTREAM_HEAD_TIMEOUT", default_value = "300s", value_parser = parse_duration)]
    upstream_head_timeout: Duration,
    /// How long the MCP server's answer (an SSE stream) may go without a byte.
    #[arg(long, env = "TOLLGATE_UPSTREAM_BODY_TIMEOUT", default_value = "3600s", value_parser = parse_duration)]
    upstream_body_timeout: Duration,
    /// How long SIGTERM waits for in-flight requests.
    #[arg(long, env = "TOLLGATE_DRAIN", default_value = "30s", value_parser = parse_duration)]
    drain: Duration,
    /// How long, after SIGTERM, the proxy still accepts new connections while /readyz already
    /// answers 503 (for load balancers that take a while to notice).
    #[arg(long, env = "TOLLGATE_SHUTDOWN_DELAY", default_value = "0s", value_parser = parse_duration)]
    shutdown_delay: Duration,
    /// Which HTTP/1 server reads agents' requests: Tollgate's own, or hyper's (the oracle the
    /// suite holds Tollgate's to), should a fault be found in Tollgate's. HTTP/2 is hyper's
    /// either way.
    #[arg(long, env = "TOLLGATE_HTTP1", value_enum, default_value_t = Http1Server::Tollgate)]
    http1: Http1Server,
    /// How many bytes of audit lines may wait for stdout before `--audit-overflow` applies.
    #[arg(long, env = "TOLLGATE_AUDIT_BUFFER", default_value_t = crate::telemetry::audit::DEFAULT_BUFFER)]
    audit_buffer: usize,
    /// What happens when stdout stops taking audit lines and the buffer is full: `deny`
    /// refuses decided calls (and /readyz is 503) until it drains; `drop` lets them go on and
    /// counts the lines dropped.
    #[arg(
        long,
        env = "TOLLGATE_AUDIT_OVERFLOW",
        value_enum,
        default_value = "deny"
    )]
    audit_overflow: OverflowFlag,
    /// The pod name, for audit lines.
    #[arg(long, env = contract::env::POD_NAME)]
    pod: Option<String>,
    /// Threads that serve requests, each with its own event loop: 0 for one per core (within the
    /// cgroup's CPU quota).
    #[arg(long, env = "TOLLGATE_WORKERS", default_value_t = 0)]
    workers: usize,
    /// Hold the calls `approve` rules apply to for a person, who decides them on
    /// --approvals-listen with the bearer token in this file (made, readable by its owner
    /// only, if it does not exist; one other users may read or write stops the proxy, naming
    /// its mode, as ssh refuses such a key). Without it such calls are denied.
    #[arg(long, env = "TOLLGATE_APPROVALS_TOKEN_FILE")]
    approvals_token_file: Option<PathBuf>,
    /// Where people decide approvals (`tollgate approvals`).
    #[arg(
        long,
        env = "TOLLGATE_APPROVALS_LISTEN",
        default_value = "127.0.0.1:9091"
    )]
    approvals_listen: SocketAddr,
    /// A URL that gets a JSON POST when an approval is pending and at each step after
    /// (`{"event": "pending"|"approved"|"denied"|"expired"|"used", "approval": {...}}`).
    #[arg(
        long,
        env = "TOLLGATE_APPROVAL_WEBHOOK",
        requires = "approvals_token_file"
    )]
    approval_webhook: Option<http::Uri>,
    /// Where a person approves a held call, for clients that can open it: a 2026-07-28 client
    /// that declares URL elicitation gets an `input_required` result pointing there at once,
    /// instead of waiting silently, and its repeat waits for the decision. `{name}` becomes the
    /// approval's name (say `https://approvals.example.com/approvals/{name}`).
    #[arg(long, env = "TOLLGATE_APPROVAL_URL", value_parser = parse_approval_url)]
    approval_url: Option<String>,
    /// The most calls held for a person at once (each keeps its request, 12 KiB, and its
    /// connection); past
    /// it, calls an approve rule applies to are denied until some are decided.
    #[arg(long, env = "TOLLGATE_MAX_HELD_CALLS", default_value_t = 10_000)]
    max_held_calls: usize,
    /// How long decided, used and expired approvals stay listed.
    #[arg(long, env = "TOLLGATE_APPROVAL_RETENTION", default_value = "1h", value_parser = parse_duration)]
    approval_retention: Duration,
    /// Where tool pins made here (on first use, or accepted by a person) are kept across
    /// restarts. A policy's `pinning.trustOnFirstUse` pins nothing without it.
    #[arg(long, env = "TOLLGATE_PINS_FILE")]
    pins_file: Option<PathBuf>,
    /// Keep rate-limit counters in Redis, shared by every proxy that gives the same
    /// --counters-group: a redis:// or rediss:// URL, or with --counters-cluster a Redis
    /// Cluster's seed nodes (comma-separated). Without it counters are kept in this process.
    #[arg(long, env = contract::env::COUNTERS, value_delimiter = ',')]
    counters: Vec<String>,
    /// --counters names a Redis Cluster's seed nodes.
    #[arg(long, env = contract::env::COUNTERS_CLUSTER, requires = "counters")]
    counters_cluster: bool,
    /// A file holding Redis' password (it overrides one in the URL).
    #[arg(long, env = contract::env::COUNTERS_PASSWORD_FILE, requires = "counters")]
    counters_password_file: Option<PathBuf>,
    /// The CA (PEM file) a rediss:// server's certificate must chain to, instead of the
    /// system's roots.
    #[arg(long, env = contract::env::COUNTERS_CA_FILE, requires = "counters")]
    counters_ca_file: Option<PathBuf>,
    /// How long a call waits for Redis; past it, each policy's countersUnavailable decides.
    #[arg(long, env = contract::env::COUNTERS_TIMEOUT, default_value = "50ms", value_parser = parse_duration)]
    counters_timeout: Duration,
    /// Whose counters these are: every replica of a workload gives the same group (injection
    /// sets it to the pod's namespace and workload).
    #[arg(long, env = contract::env::COUNTERS_GROUP, default_value = "default")]
    counters_group: String,
    /// Log level for diagnostics on stderr (audit lines always go to stdout).
    #[arg(long, env = contract::env::LOG, default_value = "info")]
    log: String,
    #[command(flatten)]
    tracing: crate::telemetry::trace::TraceArgs,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// The policy file.
    #[arg(long)]
    policy: PathBuf,
    /// Decide a call to this tool.
    #[arg(long)]
    tool: Option<String>,
    /// The call's arguments, as JSON.
    #[arg(long, requires = "tool", default_value = "{}")]
    args: String,
    /// The caller's subject (e.g. system:serviceaccount:agents:bot); anonymous if absent.
    #[arg(long, requires = "tool")]
    identity: Option<String>,
    /// The default for tools no policy lists.
    #[arg(long, value_enum, default_value = "allow")]
    default_action: DefaultFlag,
    /// The decision for a caller no policy governs, as `tollgate proxy --ungoverned-callers`.
    #[arg(long, value_enum, default_value = "deny")]
    ungoverned_callers: DefaultFlag,
}

#[derive(clap::Args)]
struct TestArgs {
    /// Test files, or directories searched recursively for `*tollgate-test.yaml`.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Only the cases whose name contains this.
    #[arg(long)]
    run: Option<String>,
    /// Also write the results as JUnit XML to this file.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Print passing cases too.
    #[arg(short, long)]
    verbose: bool,
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// Audit logs (the proxy's stdout, `kubectl logs` of its container); `-` reads stdin.
    #[arg(required = true)]
    logs: Vec<PathBuf>,
    /// The policies to decide them under (repeat for several files).
    #[arg(long = "policy", required = true)]
    policies: Vec<PathBuf>,
    /// The default for tools no policy lists.
    #[arg(long, value_enum, default_value = "allow")]
    default_action: DefaultFlag,
    /// The decision for a caller no policy governs.
    #[arg(long, value_enum, default_value = "deny")]
    ungoverned_callers: DefaultFlag,
    /// The proxies counted in one shared store (Redis), so every log's calls count together;
    /// without it each pod (the lines' `pod`) counts its own.
    #[arg(long)]
    shared_counters: bool,
    /// How many changed calls to show as examples.
    #[arg(long, default_value_t = 10)]
    examples: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ImportArgs {
    /// A PolicyLayer policy.json or Intercept YAML file.
    file: PathBuf,
    /// The McpPolicy's name (default: the file's name).
    #[arg(long)]
    name: Option<String>,
    /// The McpPolicy's namespace.
    #[arg(long)]
    namespace: Option<String>,
}

/// `--passthrough-paths`, each checked as a policy's `passthroughPaths` entry is.
fn passthrough_paths(paths: &[String]) -> anyhow::Result<Vec<String>> {
    for p in paths {
        anyhow::ensure!(
            tollgate_api::decide::is_path_pattern(p),
            "--passthrough-paths: {p:?} is not a path; write one starting with /, with * only at its end (/oauth/*)"
        );
    }
    Ok(paths.to_vec())
}

/// An approval page's URL: absolute, http or https.
fn parse_approval_url(s: &str) -> Result<String, String> {
    tollgate_api::validate::approval_url(s).map(|()| s.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    tollgate_api::validate::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration; write e.g. 500ms, 1s, 2m"))
}

/// Runs the command line; the exit code says what happened.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => check(args),
        Command::Test(args) => test(args),
        Command::Replay(args) => match replay(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Import(args) => match import(args) {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Approvals(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("starting the runtime");
            match runtime.block_on(approvals(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Pin(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("starting the runtime");
            let listed =
                runtime.block_on(crate::starter::list_tools(&args.url, args.token.as_deref()));
            let header = crate::starter::Header {
                command: &format!("tollgate pin {}", args.url),
                pinned_to: "the definition the server lists now",
                name: &args.name,
                namespace: &args.namespace,
                selector: None,
                notes: &[],
            };
            match listed.and_then(|tools| crate::starter::render(&header, &tools)) {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Pins(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("starting the runtime");
            match runtime.block_on(pins(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::InitRedirect(args) => match init_redirect(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Proxy(args) => {
            // Thread per core, as nginx's workers: each thread runs its own event loop with its
            // own listener (SO_REUSEPORT) and upstream connections, so a call never waits for
            // another thread to wake up. This thread is worker 0 and also runs the policy
            // source and the admin port.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("starting the runtime");
            match runtime.block_on(proxy(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The approvals token file a decision is sent with, and who decides unless told ($USER).
fn decider(token_file: Option<PathBuf>) -> anyhow::Result<(PathBuf, String)> {
    let token_file = token_file.context("give --token-file, the proxy's --approvals-token-file")?;
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    Ok((token_file, user))
}

async fn approvals(args: ApprovalsArgs) -> anyhow::Result<()> {
    use crate::approvals::client::{Action, run};
    let (token_file, user) = decider(args.token_file)?;
    let action = match &args.action {
        ApprovalsAction::List => Action::List,
        ApprovalsAction::Approve { name, reason, by } => Action::Decide {
            name,
            approve: true,
            reason: reason.as_deref(),
            by: by.as_deref().unwrap_or(&user),
        },
        ApprovalsAction::Deny { name, reason, by } => Action::Decide {
            name,
            approve: false,
            reason: Some(reason),
            by: by.as_deref().unwrap_or(&user),
        },
    };
    run(&args.url, &token_file, action, args.json).await
}

async fn pins(args: PinsArgs) -> anyhow::Result<()> {
    use crate::approvals::client::{Action, run};
    let (token_file, user) = decider(args.token_file)?;
    let action = match &args.action {
        PinsAction::List => Action::Pins,
        PinsAction::Accept { tool, digest, by } => Action::DecidePin {
            tool,
            accept: Some(digest),
            by: by.as_deref().unwrap_or(&user),
        },
        PinsAction::Reject { tool, by } => Action::DecidePin {
            tool,
            accept: None,
            by: by.as_deref().unwrap_or(&user),
        },
    };
    run(&args.url, &token_file, action, args.json).await
}

fn init_redirect(args: InitRedirectArgs) -> anyhow::Result<()> {
    use crate::redirect::{self, Backend, Family, Plan};
    if args.ports.contains(&args.proxy_port) {
        anyhow::bail!(
            "--proxy-port {} is also a --port: the proxy's own port cannot be redirected to itself",
            args.proxy_port
        );
    }
    let backend = match args.backend {
        BackendFlag::Nft => Backend::Nft,
        BackendFlag::Legacy => Backend::Legacy,
        BackendFlag::Auto => redirect::detect_backend(),
    };
    let families: &[Family] = match args.families {
        FamiliesFlag::Ipv4 => &[Family::V4],
        FamiliesFlag::Ipv6 => &[Family::V6],
        FamiliesFlag::Both => &[Family::V4, Family::V6],
        FamiliesFlag::Auto if redirect::ipv6_enabled() => &[Family::V4, Family::V6],
        FamiliesFlag::Auto => &[Family::V4],
    };
    let steps = redirect::steps(&Plan {
        ports: args.ports,
        proxy_port: args.proxy_port,
        proxy_uid: args.proxy_uid,
        proxy_gid: args.proxy_gid,
    });
    for &family in families {
        let binary = backend.binary(family);
        if args.dry_run {
            for step in &steps {
                println!("{binary} {step}");
            }
            continue;
        }
        for line in redirect::install(binary, &steps)? {
            println!("installed: {line}");
        }
    }
    Ok(())
}

/// `tollgate replay`.
fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    use crate::policytest::{load_set, replay};
    let set = load_set(
        &args.policies,
        args.default_action.into(),
        Some(args.ungoverned_callers.into()),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let mut logs = Vec::new();
    for path in &args.logs {
        let text = if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading stdin")?
        } else {
            std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?
        };
        logs.push(text);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("starting the runtime");
    let counting = match args.shared_counters {
        true => replay::Counting::Shared,
        false => replay::Counting::PerPod,
    };
    let report = runtime.block_on(replay::replay(&logs, &set, counting, args.examples));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let names: Vec<String> = args
            .policies
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        print!("{}", replay::text(&report, &names.join(", ")));
    }
    Ok(())
}

/// `tollgate test`: see [`crate::policytest::run_and_report`] for its exit codes.
fn test(args: TestArgs) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("starting the runtime");
    let opts = crate::policytest::Options {
        paths: args.paths,
        filter: args.run,
        junit: args.junit,
        verbose: args.verbose,
    };
    ExitCode::from(runtime.block_on(crate::policytest::run_and_report(&opts, None)))
}

fn check(args: CheckArgs) -> ExitCode {
    let origin = args.policy.display().to_string();
    let text = match std::fs::read_to_string(&args.policy) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{origin}: cannot read: {e}");
            return ExitCode::from(2);
        }
    };
    let loaded = match tollgate_api::load_file(&text, &origin) {
        Ok(l) => l,
        Err(problems) => {
            for p in &problems.0 {
                eprintln!("{p}");
            }
            eprintln!(
                "{origin}: {} problem(s); the policy is invalid",
                problems.0.len()
            );
            return ExitCode::from(2);
        }
    };
    let names: Vec<String> = loaded.iter().map(|l| l.policy.name.clone()).collect();
    let effective = EffectivePolicy {
        revision: 1,
        default_action: args.default_action.into(),
        ungoverned_action: Some(args.ungoverned_callers.into()),
        policies: loaded.into_iter().map(|l| l.policy).collect(),
    };
    let set = match effective.compile() {
        Ok(s) => s,
        Err(problems) => {
            eprintln!("{problems}");
            return ExitCode::from(2);
        }
    };
    let Some(tool) = args.tool else {
        println!("{origin}: valid ({})", names.join(", "));
        return ExitCode::SUCCESS;
    };
    let call_args: Value = match serde_json::from_str(&args.args) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            eprintln!("--args must be a JSON object, e.g. '{{\"amount\": 5}}'");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("--args is not valid JSON: {e}");
            return ExitCode::from(2);
        }
    };
    let who = args.identity.map(Identity::subject).unwrap_or_default();
    let verdict = set.decide(&Call::new(&tool, &call_args), &who, &NoCounters);
    let (out, code) = match &verdict.decision {
        Decision::Allow { reservations } => (
            json!({ "decision": "allow", "rule": null, "reason": null, "reserve": reservations }),
            0,
        ),
        Decision::Deny(d) => (
            json!({ "decision": "deny", "rule": d.rule, "reason": d.reason, "policy": d.policy }),
            1,
        ),
        Decision::Approve {
            policy,
            rule,
            timeout,
            ..
        } => (
            json!({ "decision": "approve", "rule": rule, "reason": format!("held for a person's approval for up to {}s", timeout.as_secs()), "policy": policy }),
            1,
        ),
    };
    let mut out = out;
    if let Some(a) = &verdict.audit {
        out["audit"] =
            json!({ "wouldDeny": true, "rule": a.rule, "reason": a.reason, "policy": a.policy });
    }
    println!("{out}");
    ExitCode::from(code)
}

fn import(args: ImportArgs) -> anyhow::Result<String> {
    let origin = args.file.display().to_string();
    let text =
        std::fs::read_to_string(&args.file).with_context(|| format!("cannot read {origin}"))?;
    let loaded = tollgate_api::load_file(&text, &origin).map_err(|e| anyhow::anyhow!("{e}"))?;
    let stem = args
        .file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("imported")
        .to_ascii_lowercase()
        .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-");
    let mut out = String::new();
    let many = loaded.len() > 1;
    for (i, l) in loaded.into_iter().enumerate() {
        let mut name = args.name.clone().unwrap_or_else(|| stem.clone());
        if many {
            name = format!("{name}-{}", i + 1);
        }
        let mut metadata = json!({ "name": name });
        if let Some(ns) = args.namespace.clone().or(l.namespace) {
            metadata["namespace"] = json!(ns);
        }
        let doc = json!({
            "apiVersion": format!("{}/{}", tollgate_api::GROUP, tollgate_api::VERSION),
            "kind": "McpPolicy",
            "metadata": metadata,
            "spec": l.policy.spec,
        });
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&format!(
            "# Imported from {origin} ({:?} format) by tollgate import\n",
            l.format
        ));
        out.push_str(&serde_yaml::to_string(&doc)?);
    }
    Ok(out)
}

async fn proxy(args: ProxyArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "info".into()),
        )
        .init();
    let verifier = match &args.jwks {
        None => None,
        Some(src) => {
            let jwks = fetch_jwks(src).await?;
            Some(Verifier::from_jwks(
                &jwks,
                args.jwt_issuer.clone(),
                args.jwt_audience.clone(),
            )?)
        }
    };
    let metrics = Metrics::new();
    let handle = PolicyHandle::new(metrics.clone());
    let audit = AuditLog::stdout(
        args.pod.clone(),
        args.audit_buffer,
        match args.audit_overflow {
            OverflowFlag::Deny => Overflow::Deny,
            OverflowFlag::Drop => Overflow::Drop,
        },
        metrics.audit(),
    );
    let pins = crate::policy::pins::Pins::new(audit.clone(), metrics.clone());
    let mut pins = match (&args.pins_file, &args.control_plane) {
        (Some(_), Some(_)) => anyhow::bail!(
            "--pins-file is for a proxy on its own: in a cluster the operator keeps pins (McpToolPin)"
        ),
        (Some(file), None) => Arc::new(pins.kept_in(file.clone())?),
        (None, _) => Arc::new(pins),
    };
    let mut cluster = None;
    match (&args.policy, &args.control_plane) {
        (Some(path), _) => {
            let source = FileSource {
                path: path.clone(),
                default_action: args.default_action.into(),
                ungoverned: args.ungoverned_callers.into(),
                interval: args.policy_poll,
            };
            let first = match source.load_once(&handle, 1) {
                Ok(bytes) => {
                    tracing::info!(path = %path.display(), "policy loaded");
                    Some(bytes)
                }
                Err(e) => {
                    tracing::error!(error = %e, "policy not loaded: every call is denied until it is fixed");
                    None
                }
            };
            tokio::spawn(source.watch(handle.clone(), first));
        }
        (None, Some(url)) => {
            let ca = args.control_plane_ca.clone().unwrap_or_default();
            let ca_pem = if ca.trim_start().starts_with("-----BEGIN") {
                ca
            } else {
                std::fs::read_to_string(&ca)
                    .with_context(|| format!("cannot read --control-plane-ca {ca}"))?
            };
            let control = crate::policy::control::ControlPlane {
                url: url.clone(),
                ca_pem,
                token_file: args.token_file.clone(),
            };
            cluster = Some(control.clone());
            pins = Arc::new(
                Arc::into_inner(pins)
                    .expect("not shared yet")
                    .in_cluster(control.clone())?,
            );
            tokio::spawn(control.follow(handle.clone(), pins.clone()));
        }
        (None, None) => anyhow::bail!("give --policy FILE or --control-plane URL"),
    }
    let counters = Arc::new(counter_store(&args, &metrics).await?);
    let proxy = Arc::new(
        Proxy::new(
            ProxyConfig {
                upstream: args.upstream.clone(),
                max_body: args.max_body_bytes,
                allowed_origins: args.allowed_origins.clone(),
                verifier,
                passthrough_paths: passthrough_paths(&args.passthrough_paths)?,
                timeouts: crate::http::deadline::Timeouts {
                    first_byte: args.first_byte_timeout,
                    head: args.head_timeout,
                    body: args.body_timeout,
                    idle: args.idle_timeout,
                    write: args.write_timeout,
                    upstream_head: args.upstream_head_timeout,
                    upstream_body: args.upstream_body_timeout,
                },
                max_held_calls: args.max_held_calls,
                approval_url: args.approval_url.clone(),
                http1: args.http1,
            },
            handle.clone(),
            audit.clone(),
            metrics.clone(),
        )?
        .with_counters(counters.clone())
        .with_pins(pins)
        .with_tracer(
            args.tracing.tracer(
                "tollgate-sidecar",
                &args
                    .pod
                    .iter()
                    .map(|pod| ("k8s.pod.name", pod.clone()))
                    .collect::<Vec<_>>(),
                metrics.traces(),
            )?,
        ),
    );
    let proxy = match (&args.approvals_token_file, cluster) {
        // In a cluster the operator keeps approvals, as McpApprovals people decide with
        // kubectl tollgate.
        (_, Some(plane)) => {
            let backend = crate::approvals::cluster::Cluster::new(plane)?;
            Arc::new(
                Arc::into_inner(proxy)
                    .expect("not shared yet")
                    .with_approvals(crate::approvals::Backend::Cluster(Arc::new(backend))),
            )
        }
        (None, None) => proxy,
        (Some(file), None) => {
            let token = crate::approvals::admin::token(file)?;
            let workload = args
                .pod
                .clone()
                .unwrap_or_else(|| args.upstream.to_string());
            let notifier = args
                .approval_webhook
                .clone()
                .map(crate::approvals::notify::Notifier::start)
                .transpose()?;
            let store = crate::approvals::Approvals::new(
                audit.clone(),
                notifier,
                workload,
                args.approval_retention,
            );
            store.sweep_every_second();
            let listener = crate::serve::bind(args.approvals_listen, "--approvals-listen").await?;
            tracing::info!(listen = %args.approvals_listen, token = %file.display(), "approvals served");
            tokio::spawn(crate::approvals::admin::serve(
                listener,
                store.clone(),
                proxy.pins.clone(),
                token,
            ));
            Arc::new(
                Arc::into_inner(proxy)
                    .expect("not shared yet")
                    .with_approvals(crate::approvals::Backend::Local(store)),
            )
        }
    };
    let swept = counters.clone();
    tokio::spawn(async move {
        let mut t = tokio::time::interval(Duration::from_secs(60));
        loop {
            t.tick().await;
            swept.sweep();
        }
    });
    let workers = match args.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let mut listeners = crate::serve::bind_shared(args.listen, workers, "--listen")?.into_iter();
    let admin = crate::serve::bind(args.metrics_listen, "--metrics-listen").await?;
    tracing::info!(listen = %args.listen, upstream = %args.upstream, metrics = %args.metrics_listen, workers, "tollgate proxy started");
    let health = crate::serve::Health {
        policy: handle,
        counters,
        audit: audit.clone(),
        stopping: Arc::default(),
    };
    tokio::spawn(crate::serve::serve_admin(
        admin,
        health.clone(),
        metrics,
        Arc::new(args.app_probes.unwrap_or_default()),
    ));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut threads = Vec::new();
    let first = listeners.next().expect("at least one listener");
    for (i, listener) in listeners.enumerate() {
        let proxy = Arc::new(proxy.worker());
        let mut stopping = stopping.clone();
        let drain = args.drain;
        let thread = std::thread::Builder::new()
            .name(format!("tollgate-worker-{}", i + 1))
            .spawn(move || -> anyhow::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    let stop = async move {
                        let _ = stopping.wait_for(|s| *s).await;
                    };
                    crate::serve::serve(proxy, listener, drain, stop).await
                })
            })?;
        threads.push(thread);
    }
    let listener = tokio::net::TcpListener::from_std(first)?;
    let delay = args.shutdown_delay;
    let stop_all = async move {
        crate::serve::shutdown_signal().await;
        // Not ready first, so endpoints stop sending here; then no new connection.
        health
            .stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(?delay, "shutting down: /readyz answers 503");
        tokio::time::sleep(delay).await;
        let _ = stop.send(true);
    };
    let served = crate::serve::serve(proxy, listener, args.drain, stop_all).await;
    for thread in threads {
        match thread.join() {
            Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "a worker failed"),
            Err(_) => tracing::error!("a worker panicked"),
            Ok(Ok(())) => {}
        }
    }
    audit.flush();
    served
}

/// The counter store `--counters` names, or this process' own.
async fn counter_store(
    args: &ProxyArgs,
    metrics: &Metrics,
) -> anyhow::Result<crate::policy::counters::CounterStore> {
    use crate::policy::counters::{CounterStore, shared};
    if args.counters.is_empty() {
        return Ok(CounterStore::default());
    }
    let password = match &args.counters_password_file {
        None => None,
        Some(file) => Some(
            std::fs::read_to_string(file)
                .with_context(|| {
                    format!("cannot read --counters-password-file {}", file.display())
                })?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
        ),
    };
    let ca_pem = match &args.counters_ca_file {
        None => None,
        Some(file) => Some(
            std::fs::read(file)
                .with_context(|| format!("cannot read --counters-ca-file {}", file.display()))?,
        ),
    };
    let cfg = shared::SharedConfig {
        nodes: args.counters.clone(),
        cluster: args.counters_cluster,
        password,
        ca_pem,
        timeout: args.counters_timeout,
        group: args.counters_group.clone(),
    };
    Ok(CounterStore::shared(
        shared::Shared::start(cfg, metrics.clone()).await?,
    ))
}

async fn fetch_jwks(src: &str) -> anyhow::Result<String> {
    if !src.starts_with("http://") {
        return std::fs::read_to_string(src).with_context(|| format!("cannot read --jwks {src}"));
    }
    use http_body_util::{BodyExt, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let resp = client
        .get(src.parse()?)
        .await
        .with_context(|| format!("cannot fetch --jwks {src}"))?;
    anyhow::ensure!(
        resp.status().is_success(),
        "--jwks {src} answered {}",
        resp.status()
    );
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}
