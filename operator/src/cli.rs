//! The `tollgate-operator` command: flags, then wiring.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Client;
use kube::runtime::events::Reporter;
use tollgate_api::{DefaultAction, Mode};

use crate::health::{Health, Supervisor};
use crate::index::Index;
use crate::inject::{Boundary, InjectConfig};
use crate::server::Shared;
use crate::tls::CertSource;

#[derive(Clone, Copy, ValueEnum)]
enum DefaultFlag {
    Allow,
    Deny,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeFlag {
    Enforce,
    Audit,
}

/// Tollgate's operator: policy status, sidecar injection, apply-time validation, and the
/// policy stream to every sidecar.
#[derive(Parser)]
#[command(name = "tollgate-operator", version)]
struct Args {
    /// The operator's namespace (its Secret, Lease and Service live here).
    #[arg(long, env = "POD_NAMESPACE", default_value = "tollgate-system")]
    namespace: String,
    /// This replica's name, for the Lease and events.
    #[arg(long, env = "POD_NAME", default_value = "tollgate-operator")]
    pod_name: String,
    /// The Service in front of the operator: its DNS names go into the serving certificate.
    #[arg(long, env = "TOLLGATE_SERVICE", default_value = "tollgate-operator")]
    service_name: String,
    /// Where the webhooks and the policy stream are served (HTTPS); `[::]` is both families.
    #[arg(long, env = "TOLLGATE_LISTEN", default_value = "[::]:8443")]
    listen: SocketAddr,
    /// Where /healthz and /readyz are served (HTTP); `[::]` is both families.
    #[arg(long, env = "TOLLGATE_ADMIN_LISTEN", default_value = "[::]:9090")]
    admin_listen: SocketAddr,
    /// The cluster's default for tools no applicable policy lists.
    #[arg(
        long,
        env = "TOLLGATE_DEFAULT_ACTION",
        value_enum,
        default_value = "deny"
    )]
    default_action: DefaultFlag,
    /// An McpClusterPolicy of this name whose `default` (`--default-action`) and mode the
    /// leading replica keeps; no replica is ready before it exists (the chart's
    /// `<release>-baseline`). Empty: none.
    #[arg(long, env = "TOLLGATE_BASELINE", default_value = "")]
    baseline: String,
    /// The baseline's mode: `audit` only logs what it would deny.
    #[arg(
        long,
        env = "TOLLGATE_BASELINE_MODE",
        value_enum,
        default_value = "enforce"
    )]
    baseline_mode: ModeFlag,
    /// The sidecar image injected into MCP server pods.
    #[arg(long, env = "TOLLGATE_SIDECAR_IMAGE", default_value = concat!("ghcr.io/tollgate-dev/tollgate:", env!("CARGO_PKG_VERSION")))]
    sidecar_image: String,
    /// The sidecar's log level.
    #[arg(long, env = "TOLLGATE_SIDECAR_LOG", default_value = "info")]
    sidecar_log_level: String,
    /// Which HTTP/1 server injected sidecars read agents' requests with: Tollgate's own, or
    /// hyper's, should a fault be found in Tollgate's (`tollgate proxy --http1`).
    #[arg(long, env = "TOLLGATE_SIDECAR_HTTP1", default_value = "tollgate", value_parser = ["tollgate", "hyper"])]
    sidecar_http1: String,
    /// Where people approve held calls, passed to injected sidecars (their `--approval-url`):
    /// a 2026-07-28 agent that opens URLs is sent there. `{name}` becomes the McpApproval's
    /// name. Empty: agents wait, as before.
    #[arg(long, env = "TOLLGATE_SIDECAR_APPROVAL_URL", default_value = "")]
    sidecar_approval_url: String,
    /// Where injected sidecars export OpenTelemetry traces (their `--otlp-endpoint`: an
    /// OTLP/HTTP collector, `http://collector.monitoring:4318`). Empty: they trace nothing.
    #[arg(long, env = "TOLLGATE_SIDECAR_OTLP_ENDPOINT", default_value = "")]
    sidecar_otlp_endpoint: String,
    /// The share of requests injected sidecars trace when the agent sent no `traceparent`
    /// (their `--trace-sampling`), 0 to 1.
    #[arg(long, env = "TOLLGATE_SIDECAR_TRACE_SAMPLING", default_value_t = 1.0, value_parser = tollgate_sidecar::telemetry::trace::parse_ratio)]
    sidecar_trace_sampling: f64,
    /// The injected sidecar's CPU request. Empty for none.
    #[arg(long, env = "TOLLGATE_SIDECAR_CPU_REQUEST", default_value = "10m")]
    sidecar_cpu_request: String,
    /// The injected sidecar's memory request. Empty for none.
    #[arg(long, env = "TOLLGATE_SIDECAR_MEMORY_REQUEST", default_value = "32Mi")]
    sidecar_memory_request: String,
    /// The injected sidecar's CPU limit. Empty for none.
    #[arg(long, env = "TOLLGATE_SIDECAR_CPU_LIMIT", default_value = "")]
    sidecar_cpu_limit: String,
    /// The injected sidecar's memory limit. Empty for none.
    #[arg(long, env = "TOLLGATE_SIDECAR_MEMORY_LIMIT", default_value = "256Mi")]
    sidecar_memory_limit: String,
    /// How injected pods keep their boundary unless annotated tollgate.dev/boundary: redirect
    /// (an init container's iptables rules; needs NET_ADMIN) or network-policy (no privilege).
    #[arg(long, env = "TOLLGATE_BOUNDARY", default_value = "redirect", value_parser = parse_boundary)]
    boundary: Boundary,
    /// Redis for rate-limit counters shared by each workload's replicas, passed to injected
    /// sidecars: a redis:// or rediss:// URL, or a Redis Cluster's seed nodes (comma-separated)
    /// with --sidecar-counters-cluster. Empty: each pod counts alone.
    #[arg(long, env = "TOLLGATE_SIDECAR_COUNTERS", default_value = "")]
    sidecar_counters: String,
    /// --sidecar-counters names a Redis Cluster's seed nodes.
    #[arg(long, env = "TOLLGATE_SIDECAR_COUNTERS_CLUSTER")]
    sidecar_counters_cluster: bool,
    /// How long a sidecar's call waits for Redis before its policies' countersUnavailable
    /// decides.
    #[arg(
        long,
        env = "TOLLGATE_SIDECAR_COUNTERS_TIMEOUT",
        default_value = "50ms"
    )]
    sidecar_counters_timeout: String,
    /// A Secret holding Redis' password, mounted in every injected sidecar: it must exist in
    /// each namespace with injected pods (NAME, or NAME/KEY; the key defaults to password).
    #[arg(
        long,
        env = "TOLLGATE_SIDECAR_COUNTERS_PASSWORD_SECRET",
        default_value = ""
    )]
    sidecar_counters_password_secret: String,
    /// The sidecar's port for agents (a pod may choose another: tollgate.dev/proxy-port).
    #[arg(long, env = "TOLLGATE_SIDECAR_PORT", default_value_t = tollgate_api::contract::PROXY_PORT)]
    sidecar_port: u16,
    /// The sidecar's port for probes and metrics (tollgate.dev/admin-port).
    #[arg(long, env = "TOLLGATE_SIDECAR_ADMIN_PORT", default_value_t = tollgate_api::contract::ADMIN_PORT)]
    sidecar_admin_port: u16,
    /// The sidecar's UID: no app container may run as it (tollgate.dev/proxy-uid).
    #[arg(long, env = "TOLLGATE_SIDECAR_UID", default_value_t = tollgate_api::contract::PROXY_UID,
          value_parser = clap::value_parser!(u32).range(1..))]
    sidecar_uid: u32,
    /// The sidecar's GID: no app container may run as it (tollgate.dev/proxy-gid).
    #[arg(long, env = "TOLLGATE_SIDECAR_GID", default_value_t = tollgate_api::contract::PROXY_GID,
          value_parser = clap::value_parser!(u32).range(1..))]
    sidecar_gid: u32,
    /// The policy stream's URL as sidecars reach it (default: the Service's DNS name).
    #[arg(long, env = "TOLLGATE_CONTROL_PLANE_URL")]
    control_plane_url: Option<String>,
    /// The Secret holding the operator-managed CA and serving certificate.
    #[arg(
        long,
        env = "TOLLGATE_TLS_SECRET",
        default_value = "tollgate-operator-tls"
    )]
    tls_secret: String,
    /// Use cert-manager's certificate mounted here (tls.crt, tls.key, ca.crt) instead.
    #[arg(long, env = "TOLLGATE_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// More names for the serving certificate (repeatable).
    #[arg(long = "extra-san", env = "TOLLGATE_EXTRA_SANS", value_delimiter = ',')]
    extra_sans: Vec<String>,
    /// How long an operator-managed serving certificate lives; renewed at two thirds.
    #[arg(long, env = "TOLLGATE_CERT_LIFETIME", default_value = "2160h", value_parser = parse_duration)]
    cert_lifetime: Duration,
    /// How often the certificate is checked for renewal (or re-read from --tls-dir).
    #[arg(long, env = "TOLLGATE_CERT_CHECK", default_value = "10m", value_parser = parse_duration)]
    cert_check: Duration,
    /// The MutatingWebhookConfiguration whose caBundle the operator writes.
    #[arg(
        long,
        env = "TOLLGATE_MUTATING_WEBHOOK",
        default_value = "tollgate-inject"
    )]
    mutating_webhook: String,
    /// The ValidatingWebhookConfiguration whose caBundle the operator writes.
    #[arg(
        long,
        env = "TOLLGATE_VALIDATING_WEBHOOK",
        default_value = "tollgate-validate"
    )]
    validating_webhook: String,
    /// The Lease that elects the replica running the controllers.
    #[arg(long, env = "TOLLGATE_LEASE", default_value = "tollgate-operator")]
    lease_name: String,
    /// How long the leader's lease lasts without renewal (a follower takes over after it).
    #[arg(long, env = "TOLLGATE_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
    /// How long a NetworkPolicy of the network-policy boundary is kept once no pod needs it
    /// (a pod being admitted may not be listed yet).
    #[arg(long, env = "TOLLGATE_NETWORK_POLICY_GRACE", default_value = "60s", value_parser = parse_duration)]
    network_policy_grace: Duration,
    /// A URL that gets a JSON POST at each step of an McpApproval (pending, approved, denied,
    /// expired, used), for a chat bridge.
    #[arg(long, env = "TOLLGATE_APPROVAL_WEBHOOK")]
    approval_webhook: Option<http::Uri>,
    /// How long a decided, used or expired McpApproval is kept past its lifetime.
    #[arg(long, env = "TOLLGATE_APPROVAL_RETENTION", default_value = "1h", value_parser = parse_duration)]
    approval_retention: Duration,
    /// Namespaces the operator labels tollgate.dev/injection=enabled (comma-separated).
    #[arg(long, env = "TOLLGATE_INJECT_NAMESPACES", value_delimiter = ',')]
    inject_namespaces: Vec<String>,
    /// Log level.
    #[arg(long, env = "TOLLGATE_LOG", default_value = "info")]
    log: String,
    /// How long a part may keep failing (a watch, the certificate's rotation, the lease) before
    /// /readyz answers 503 naming it.
    #[arg(long, env = "TOLLGATE_FAILURE_GRACE", default_value = "30s", value_parser = parse_duration)]
    failure_grace: Duration,
    #[command(flatten)]
    tracing: tollgate_sidecar::telemetry::trace::TraceArgs,
}

/// What injected sidecars are told of tracing: checked here, so a bad URL stops the operator
/// rather than every pod it injects.
fn sidecar_tracing(args: &Args) -> anyhow::Result<Option<crate::inject::SidecarTracing>> {
    if args.sidecar_otlp_endpoint.is_empty() {
        return Ok(None);
    }
    tollgate_sidecar::telemetry::trace::TraceConfig::endpoint(&args.sidecar_otlp_endpoint)
        .map_err(|e| anyhow::anyhow!("--sidecar-otlp-endpoint: {e}"))?;
    Ok(Some(crate::inject::SidecarTracing {
        endpoint: args.sidecar_otlp_endpoint.clone(),
        sampling: args.sidecar_trace_sampling,
    }))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    tollgate_api::validate::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration; write e.g. 10m, 2160h"))
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: `kubectl logs` shows escape codes as text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "info".into()),
        )
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let resource = [
        ("k8s.pod.name", args.pod_name.clone()),
        ("k8s.namespace.name", args.namespace.clone()),
    ];
    crate::telemetry::set_tracer(args.tracing.tracer(
        "tollgate-operator",
        &resource,
        crate::telemetry::metrics().traces.clone(),
    )?);
    let client = Client::try_default()
        .await
        .context("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG)")?;

    let service = format!("{}.{}.svc", args.service_name, args.namespace);
    let mut sans = vec![service.clone(), format!("{service}.cluster.local")];
    sans.extend(args.extra_sans.iter().filter(|s| !s.is_empty()).cloned());
    let certs = match &args.tls_dir {
        Some(dir) => CertSource::Files { dir: dir.clone() },
        None => CertSource::Managed(Box::new(crate::tls::Managed {
            client: client.clone(),
            namespace: args.namespace.clone(),
            secret: args.tls_secret.clone(),
            sans,
            lifetime: args.cert_lifetime,
            mutating_webhook: Some(args.mutating_webhook.clone()),
            validating_webhook: Some(args.validating_webhook.clone()),
        })),
    };
    let serving = certs
        .load()
        .await
        .context("cannot load the serving certificate")?;
    // Every long-running part is supervised: one that ends takes the process down (and
    // Kubernetes restarts it); one that keeps failing turns /readyz to 503, naming it.
    let health = Arc::new(Health::with_grace(args.failure_grace));
    let mut supervisor = Supervisor::default();
    supervisor.spawn(
        "the serving certificate's rotation",
        certs.rotate(serving.clone(), args.cert_check, health.clone()),
    );

    let default_action = match args.default_action {
        DefaultFlag::Allow => DefaultAction::Allow,
        DefaultFlag::Deny => DefaultAction::Deny,
    };
    let baseline = (!args.baseline.is_empty()).then(|| crate::baseline::Baseline {
        name: args.baseline.clone(),
        default: default_action,
        mode: match args.baseline_mode {
            ModeFlag::Enforce => Mode::Enforce,
            ModeFlag::Audit => Mode::Audit,
        },
    });
    let (index, driver) = Index::start(client.clone(), default_action, health.clone());
    supervisor.spawn("the index's watches", driver);

    let admin = crate::server::bind(args.admin_listen, "--admin-listen").await?;
    supervisor.spawn(
        "the admin server",
        crate::server::serve_admin(admin, health.clone()),
    );

    // SIGTERM first stops leading (and releases the lease), then drains the servers.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    {
        let health = health.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            health.stopping();
            let _ = stopping_tx.send(true);
        });
    }
    let (leading_tx, leading) = tokio::sync::watch::channel(false);
    let election = tokio::spawn(crate::lease::elect(
        crate::lease::Candidate {
            client: client.clone(),
            namespace: args.namespace.clone(),
            name: args.lease_name.clone(),
            me: args.pod_name.clone(),
            duration: args.lease_duration,
        },
        leading_tx,
        stopping.clone(),
        health.clone(),
    ));
    {
        let client = client.clone();
        let index = index.clone();
        let reporter = Reporter {
            controller: "tollgate-operator".into(),
            instance: Some(args.pod_name.clone()),
        };
        let grace = args.network_policy_grace;
        let retention = args.approval_retention;
        let notifier = args
            .approval_webhook
            .clone()
            .map(tollgate_notify::Notifier::start)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--approval-webhook: {e}"))?;
        let label: Vec<String> = args
            .inject_namespaces
            .iter()
            .filter(|n| !n.is_empty())
            .cloned()
            .collect();
        let (baseline, health) = (baseline.clone(), health.clone());
        let lead = move || {
            let (client, index, reporter) = (client.clone(), index.clone(), reporter.clone());
            let (label, notifier) = (label.clone(), notifier.clone());
            let (baseline, health) = (baseline.clone(), health.clone());
            async move {
                // Statuses count pods: not before the index has listed them.
                index.ready().await;
                let baseline = {
                    let (client, index) = (client.clone(), index.clone());
                    async move {
                        match baseline {
                            Some(b) => b.keep(client, index, health).await,
                            None => std::future::pending().await,
                        }
                    }
                };
                tokio::join!(
                    baseline,
                    crate::controller::run(client.clone(), index.clone(), reporter.clone()),
                    crate::boundary::run(client.clone(), index.clone(), reporter.clone(), grace),
                    crate::approvals::run(
                        client.clone(),
                        index.clone(),
                        reporter.clone(),
                        retention,
                        notifier
                    ),
                    crate::pins::announce(client.clone(), index.clone(), reporter.clone()),
                    crate::controller::label_namespaces(client, index, label),
                );
            }
        };
        supervisor.spawn(
            "the leader's controllers",
            lead_while_elected(leading, lead),
        );
    }

    let listener = crate::server::bind(args.listen, "--listen").await?;
    tokio::select! {
        () = index.ready() => {}
        e = supervisor.stopped() => return Err(e),
    }
    // Not ready (so neither webhooks nor policy streams reach this replica through the
    // Service) before the cluster has its baseline: a pod annotated `default-action: allow`
    // would otherwise get allow where the baseline's deny wins.
    if let Some(b) = &baseline {
        health.waiting(format!(
            "the baseline McpClusterPolicy {} is not in the cluster yet (the leading replica applies it)",
            b.name
        ));
        tokio::select! {
            () = index.cluster_policy_until(&b.name, |p| p.is_some()) => {}
            e = supervisor.stopped() => return Err(e),
        }
    }
    health.listed();
    let control_plane_url = args
        .control_plane_url
        .clone()
        .unwrap_or_else(|| format!("https://{service}:{}", args.listen.port()));
    let q = |s: &str| (!s.is_empty()).then(|| Quantity(s.to_string()));
    let mut resources = ResourceRequirements::default();
    for (kind, name, value) in [
        ("requests", "cpu", &args.sidecar_cpu_request),
        ("requests", "memory", &args.sidecar_memory_request),
        ("limits", "cpu", &args.sidecar_cpu_limit),
        ("limits", "memory", &args.sidecar_memory_limit),
    ] {
        if let Some(v) = q(value) {
            let map = if kind == "requests" {
                resources.requests.get_or_insert_with(Default::default)
            } else {
                resources.limits.get_or_insert_with(Default::default)
            };
            map.insert(name.into(), v);
        }
    }
    let recorder = kube::runtime::events::Recorder::new(
        client.clone(),
        Reporter {
            controller: "tollgate-operator".into(),
            instance: Some(args.pod_name.clone()),
        },
    );
    let user = crate::pins::own_user(&client).await;
    let shared = Arc::new(Shared {
        client,
        recorder,
        user,
        index,
        inject: InjectConfig {
            image: args.sidecar_image.clone(),
            resources,
            log_level: args.sidecar_log_level.clone(),
            hyper_http1: args.sidecar_http1 == "hyper",
            control_plane_url,
            control_plane_ca: String::new(),
            proxy_port: args.sidecar_port,
            admin_port: args.sidecar_admin_port,
            proxy_uid: args.sidecar_uid,
            proxy_gid: args.sidecar_gid,
            boundary: args.boundary,
            counters: shared_counters(&args)?,
            approval_url: approval_url(&args.sidecar_approval_url)?,
            tracing: sidecar_tracing(&args)?,
        },
        serving,
    });
    tracing::info!(listen = %args.listen, admin = %args.admin_listen, "tollgate operator serving");
    let mut stopped = stopping.clone();
    let served = crate::server::serve_https(listener, shared, async move {
        let _ = stopped.wait_for(|s| *s).await;
    });
    let served = tokio::select! {
        served = served => served,
        e = supervisor.stopped() => {
            tracing::error!(error = %e, "exiting so that Kubernetes restarts the operator");
            Err(e)
        }
    };
    // The release is one GET and one PATCH; a slow API server only delays the successor.
    let _ = tokio::time::timeout(Duration::from_secs(3), election).await;
    served
}

/// The sidecars' shared counters, checked here so a typo fails the operator's start rather
/// than every injected pod's.
fn shared_counters(args: &Args) -> anyhow::Result<Option<crate::inject::SharedCounters>> {
    if args.sidecar_counters.is_empty() {
        return Ok(None);
    }
    let nodes: Vec<&str> = args.sidecar_counters.split(',').collect();
    for n in &nodes {
        anyhow::ensure!(
            n.starts_with("redis://") || n.starts_with("rediss://"),
            "--sidecar-counters: {n:?} is not a redis:// or rediss:// URL"
        );
    }
    anyhow::ensure!(
        args.sidecar_counters_cluster || nodes.len() == 1,
        "--sidecar-counters names {} servers; give one, or a Redis Cluster's seed nodes with --sidecar-counters-cluster",
        nodes.len()
    );
    anyhow::ensure!(
        tollgate_api::validate::parse_duration(&args.sidecar_counters_timeout).is_some(),
        "--sidecar-counters-timeout {:?} is not a duration; write e.g. 50ms",
        args.sidecar_counters_timeout
    );
    let password_secret = match args.sidecar_counters_password_secret.as_str() {
        "" => None,
        s => {
            let (name, key) = s.split_once('/').unwrap_or((s, "password"));
            anyhow::ensure!(
                !name.is_empty() && !key.is_empty(),
                "--sidecar-counters-password-secret {s:?}: write NAME or NAME/KEY"
            );
            Some((name.to_string(), key.to_string()))
        }
    };
    Ok(Some(crate::inject::SharedCounters {
        nodes: args.sidecar_counters.clone(),
        cluster: args.sidecar_counters_cluster,
        timeout: args.sidecar_counters_timeout.clone(),
        password_secret,
    }))
}

/// `--sidecar-approval-url`, checked here as the sidecar checks it, so a bad one stops the
/// operator rather than every injected pod.
fn approval_url(url: &str) -> anyhow::Result<Option<String>> {
    if url.is_empty() {
        return Ok(None);
    }
    tollgate_api::validate::approval_url(url)
        .map_err(|e| anyhow::anyhow!("--sidecar-approval-url: {e}"))?;
    Ok(Some(url.to_string()))
}

/// Runs the controllers while this replica leads; a controller that ends while leading is a
/// failure (this returns, and the supervisor takes the process down).
async fn lead_while_elected<F, Fut>(mut leading: tokio::sync::watch::Receiver<bool>, lead: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut controllers: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let lead_now = *leading.borrow_and_update();
        crate::telemetry::metrics().leader.set(i64::from(lead_now));
        match (lead_now, controllers.is_some()) {
            (true, false) => controllers = Some(tokio::spawn(lead())),
            (false, true) => {
                if let Some(c) = controllers.take() {
                    c.abort();
                }
                // What the boundary reports is the leader's to say.
                crate::telemetry::metrics().boundaries_open.set(0);
            }
            _ => {}
        }
        let ended = async {
            match controllers.as_mut() {
                Some(c) => c.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = leading.changed() => if changed.is_err() {
                // The election ended (SIGTERM): nothing more to lead.
                std::future::pending::<()>().await;
            },
            result = ended => {
                match result {
                    Err(e) if e.is_panic() => tracing::error!(error = %e, "a controller panicked"),
                    _ => tracing::error!("the controllers stopped while this replica leads"),
                }
                return;
            }
        }
    }
}

fn parse_boundary(s: &str) -> Result<Boundary, String> {
    Boundary::parse(s).ok_or_else(|| format!("{s:?} is neither redirect nor network-policy"))
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}
