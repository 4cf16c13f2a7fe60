//! `kubectl tollgate`: decide the calls Tollgate holds for a person, and test and replay policies
//! against what is in the cluster (a kubectl plugin: put the binary on PATH).
//!
//! ```text
//! kubectl tollgate list [-n NS | -A]
//! kubectl tollgate approve NAME [-n NS] [--reason TEXT]
//! kubectl tollgate deny NAME [-n NS] --reason TEXT
//! kubectl tollgate test --pod NAME [-n NS] PATH...           the pod's effective policy
//! kubectl tollgate replay (-l SELECTOR | --pod NAME) [-n NS] --policy FILE...
//! kubectl tollgate pins list [-n NS | -A] [--workload KIND/NAME]   what each workload's tools are held to
//! kubectl tollgate pins accept TOOL --workload KIND/NAME --digest D [-n NS]
//! kubectl tollgate pins reject TOOL --workload KIND/NAME --digest D [-n NS]
//! kubectl tollgate pin --workload KIND/NAME [-n NS] [--name N]   a starter policy of its pins
//! ```
//!
//! A decision is a patch of `spec.decision`, made as the kubeconfig's user: the operator's
//! webhook lets it through only for a user with the RBAC verb `approve` on `mcpapprovals`, and
//! stamps that user as `decidedBy`. `test` computes a pod's effective policy from the
//! policies, namespace and pod the kubeconfig's user can read, with the very function the
//! operator streams it with; `replay` reads the audit lines of the pods' sidecars. `pins accept`
//! pins the definition the sidecars hold back (the one you reviewed: `--digest`), which takes the
//! RBAC verb `accept` on `mcptoolpins`, and is stamped `acceptedBy`. `pin` writes a starter
//! McpPolicy for a person to review from a workload's pins, as `tollgate pin URL` does from a
//! running server: each tool pinned to its definition, with a rule proposed from its annotations.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ListParams, LogParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tollgate_api::contract::annotations;
use tollgate_api::{
    DefaultAction, EffectivePolicy, McpApproval, McpClusterPolicy, McpPolicy, McpToolPin,
    PinSource, PolicySet, Workload,
};
use tollgate_operator::inject::SIDECAR_NAME;
use tollgate_sidecar::policytest::{self, replay};

#[derive(Parser)]
#[command(
    name = "kubectl-tollgate",
    version,
    about = "Decide the MCP tool calls Tollgate holds for a person"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The namespace (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// The approvals: pending, decided, used and expired.
    List {
        /// In every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Approve: the call (or its retry) goes to the server, once.
    Approve {
        name: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny: the agent is told why.
    Deny {
        name: String,
        #[arg(long)]
        reason: String,
    },
    /// Run policy test files against a pod's effective policy, as the operator computes it
    /// (the files' own `policies` are not read).
    Test {
        /// The pod (NAME, or NAMESPACE/NAME).
        #[arg(long)]
        pod: String,
        /// The cluster default for tools no policy lists, as the chart's `defaultAction`
        /// (the pod's `tollgate.dev/default-action` annotation comes first).
        #[arg(long, default_value = "deny", value_parser = ["allow", "deny"])]
        default_action: String,
        /// Test files, or directories searched recursively for `*tollgate-test.yaml`.
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
        /// Only the cases whose name contains this.
        #[arg(long)]
        run: Option<String>,
        /// Also write the results as JUnit XML to this file.
        #[arg(long)]
        junit: Option<std::path::PathBuf>,
        /// Print passing cases too.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Tool pins: what each workload's tools are held to, and the definitions held back.
    Pins {
        #[command(subcommand)]
        action: PinsAction,
    },
    /// Print a starter McpPolicy from a workload's pins, for a person to review: each tool
    /// pinned to the definition its sidecars hold it to, with a rule proposed from its
    /// annotations, selecting the workload's pods.
    Pin {
        /// The workload (`Deployment/mcp`), as `pins list` shows it.
        #[arg(long)]
        workload: String,
        /// The McpPolicy's name (default: the workload's name and `-pinned`).
        #[arg(long)]
        name: Option<String>,
        /// The pods the policy selects, as `KEY=VALUE,...` (default: the workload's own pod
        /// selector; needed for a workload whose selector cannot be read, such as a bare Pod).
        #[arg(long)]
        selector: Option<String>,
    },
    /// Decide the calls in the audit logs of pods' sidecars again under other policies.
    Replay {
        /// The pods, by label selector.
        #[arg(
            short = 'l',
            long,
            conflicts_with = "pod",
            required_unless_present = "pod"
        )]
        selector: Option<String>,
        /// One pod, by name.
        #[arg(long)]
        pod: Option<String>,
        /// The policies to decide the calls under (repeat for several files).
        #[arg(long = "policy", required = true)]
        policies: Vec<std::path::PathBuf>,
        /// Only log lines newer than this many seconds.
        #[arg(long)]
        since_seconds: Option<i64>,
        /// The default for tools no policy lists.
        #[arg(long, default_value = "deny", value_parser = ["allow", "deny"])]
        default_action: String,
        /// The sidecars counted in one shared store (the chart's Redis), so every pod's calls
        /// count together; without it each pod counts its own.
        #[arg(long)]
        shared_counters: bool,
        /// How many changed calls to show as examples.
        #[arg(long, default_value_t = 10)]
        examples: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PinsAction {
    /// Each pin, and the definition held back beside it with what changed.
    List {
        /// In every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Only this workload's (`Deployment/mcp`).
        #[arg(long)]
        workload: Option<String>,
    },
    /// Pin the definition the sidecars hold back: the tool is shown and callable again.
    Accept {
        tool: String,
        /// The workload (`Deployment/mcp`), as `pins list` shows it.
        #[arg(long)]
        workload: String,
        /// The held definition you reviewed, as `pins list` shows it: refused if the sidecars
        /// now hold back another.
        #[arg(long)]
        digest: String,
    },
    /// Refuse the definition held back: the tool stays held, and is not reported again.
    Reject {
        tool: String,
        /// The workload (`Deployment/mcp`), as `pins list` shows it.
        #[arg(long)]
        workload: String,
        /// The held definition you refuse, as `pins list` shows it.
        #[arg(long)]
        digest: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("starting the runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            // `test` and `replay` say 2 for what kept them from running, as `tollgate` does.
            ExitCode::from(2)
        }
    }
}

fn action(word: &str) -> DefaultAction {
    match word {
        "allow" => DefaultAction::Allow,
        _ => DefaultAction::Deny,
    }
}

/// A pod's effective policy, computed as the operator computes it for the pod's sidecar.
async fn pod_policy(
    client: &Client,
    namespace: &str,
    pod: &str,
    default_action: DefaultAction,
) -> anyhow::Result<PolicySet> {
    let (namespace, name) = pod.split_once('/').unwrap_or((namespace, pod));
    let pod: Pod = Api::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .with_context(|| format!("pod {namespace}/{name}"))?;
    let ns: Namespace = Api::all(client.clone())
        .get(namespace)
        .await
        .with_context(|| format!("namespace {namespace}"))?;
    let policies: Vec<McpPolicy> = Api::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .context("listing McpPolicies")?
        .items;
    let cluster: Vec<McpClusterPolicy> = Api::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing McpClusterPolicies")?
        .items;
    let default_action = annotations::default_action(pod.annotations())
        .map_err(|e| anyhow::anyhow!("pod {namespace}/{name}: {e}"))?
        .unwrap_or(default_action);
    let effective = EffectivePolicy::for_workload(
        Workload {
            namespace,
            labels: pod.labels(),
            namespace_labels: ns.labels(),
        },
        &cluster,
        &policies,
        default_action,
    );
    let names: Vec<&str> = effective.policies.iter().map(|p| p.name.as_str()).collect();
    eprintln!(
        "pod {namespace}/{name}: {} (default {})",
        match names.is_empty() {
            true => "no policy selects it".to_string(),
            false => names.join(", "),
        },
        match default_action {
            DefaultAction::Allow => "allow",
            DefaultAction::Deny => "deny",
        }
    );
    effective
        .compile()
        .map_err(|problems| anyhow::anyhow!("the pod's policies do not compile:\n{problems}"))
}

/// The audit lines of the sidecars of the pods named.
async fn sidecar_logs(
    client: &Client,
    namespace: &str,
    selector: Option<&str>,
    pod: Option<&str>,
    since_seconds: Option<i64>,
) -> anyhow::Result<Vec<String>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let names: Vec<String> = match (pod, selector) {
        (Some(pod), _) => vec![pod.to_string()],
        (None, selector) => api
            .list(&ListParams {
                label_selector: selector.map(str::to_string),
                ..ListParams::default()
            })
            .await?
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect(),
    };
    anyhow::ensure!(!names.is_empty(), "no pod in {namespace} matches");
    let mut logs = Vec::with_capacity(names.len());
    for name in names {
        let params = LogParams {
            container: Some(SIDECAR_NAME.to_string()),
            since_seconds,
            ..LogParams::default()
        };
        let text = api
            .logs(&name, &params)
            .await
            .with_context(|| format!("the {SIDECAR_NAME} logs of pod {namespace}/{name}"))?;
        eprintln!("pod {namespace}/{name}: {} lines", text.lines().count());
        logs.push(text);
    }
    Ok(logs)
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let config = kube::Config::infer().await.context("no kubeconfig")?;
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config)?;
    let (name, verdict, reason) = match cli.command {
        Command::List { all_namespaces } => {
            let api: Api<McpApproval> = if all_namespaces {
                Api::all(client)
            } else {
                Api::namespaced(client, &namespace)
            };
            list(
                &api.list(&ListParams::default()).await?.items,
                all_namespaces,
            )?;
            return Ok(0);
        }
        Command::Test {
            pod,
            default_action,
            paths,
            run,
            junit,
            verbose,
        } => {
            let set = pod_policy(&client, &namespace, &pod, action(&default_action)).await?;
            let opts = policytest::Options {
                paths,
                filter: run,
                junit,
                verbose,
            };
            return Ok(policytest::run_and_report(&opts, Some(&set)).await);
        }
        Command::Replay {
            selector,
            pod,
            policies,
            since_seconds,
            default_action,
            shared_counters,
            examples,
            json,
        } => {
            // A caller no policy governs gets the default, as the operator streams it.
            let set = policytest::load_set(&policies, action(&default_action), None)
                .map_err(|e| anyhow::anyhow!(e))?;
            let counting = match shared_counters {
                true => replay::Counting::Shared,
                false => replay::Counting::PerPod,
            };
            let logs = sidecar_logs(
                &client,
                &namespace,
                selector.as_deref(),
                pod.as_deref(),
                since_seconds,
            )
            .await?;
            let report = replay::replay(&logs, &set, counting, examples).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                let names: Vec<String> = policies.iter().map(|p| p.display().to_string()).collect();
                print!("{}", replay::text(&report, &names.join(", ")));
            }
            return Ok(0);
        }
        Command::Pins { action } => {
            pins(client, &namespace, action).await?;
            return Ok(0);
        }
        Command::Pin {
            workload,
            name,
            selector,
        } => {
            let selector = selector.as_deref().map(match_labels).transpose()?;
            print!(
                "{}",
                starter(client, &namespace, &workload, name, selector).await?
            );
            return Ok(0);
        }
        Command::Approve { name, reason } => (name, "Approve", reason),
        Command::Deny { name, reason } => (name, "Deny", Some(reason)),
    };
    let api: Api<McpApproval> = Api::namespaced(client, &namespace);
    let patch = json!({ "spec": { "decision": { "verdict": verdict, "reason": reason } } });
    let done = api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) => anyhow::anyhow!("{}", s.message),
            e => e.into(),
        })?;
    let by = done
        .spec
        .decision
        .as_ref()
        .and_then(|d| d.decided_by.clone())
        .unwrap_or_default();
    println!(
        "mcpapproval.tollgate.dev/{} {} by {by}",
        done.name_any(),
        if verdict == "Approve" {
            "approved"
        } else {
            "denied"
        }
    );
    Ok(0)
}

async fn pins(client: Client, namespace: &str, action: PinsAction) -> anyhow::Result<()> {
    let api: Api<McpToolPin> = Api::namespaced(client.clone(), namespace);
    let api_error = |e: kube::Error| match e {
        kube::Error::Api(s) => anyhow::anyhow!("{}", s.message),
        e => e.into(),
    };
    let (tool, workload, digest, accept) = match action {
        PinsAction::List {
            all_namespaces,
            workload,
        } => {
            let api: Api<McpToolPin> = match all_namespaces {
                true => Api::all(client),
                false => api,
            };
            let mut items = api.list(&ListParams::default()).await?.items;
            items.retain(|p| workload.as_ref().is_none_or(|w| *w == p.spec.workload));
            items.sort_by(|a, b| {
                (&a.spec.workload, &a.spec.tool).cmp(&(&b.spec.workload, &b.spec.tool))
            });
            print_pins(&items, all_namespaces);
            return Ok(());
        }
        PinsAction::Accept {
            tool,
            workload,
            digest,
        } => (tool, workload, digest, true),
        PinsAction::Reject {
            tool,
            workload,
            digest,
        } => (tool, workload, digest, false),
    };
    let name = tollgate_operator::pins::pin_name(&workload, &tool);
    let pin = api
        .get_opt(&name)
        .await?
        .with_context(|| format!("{workload} has no pin of {tool:?} in {namespace}"))?;
    let held = pin
        .status
        .as_ref()
        .and_then(|s| s.held.as_ref())
        .with_context(|| format!("{workload}'s {tool:?} has nothing held back"))?;
    anyhow::ensure!(
        held.definition.digest == digest,
        "the sidecars now hold back {}, not the {digest} you reviewed: list the pins again and review it",
        held.definition.digest
    );
    // Bound to what was read: a change in between fails, and is reviewed again.
    let patch = match accept {
        true => json!({
            "metadata": { "resourceVersion": pin.resource_version() },
            "spec": { "definition": held.definition, "source": PinSource::Accepted, "rejected": null },
        }),
        false => json!({
            "metadata": { "resourceVersion": pin.resource_version() },
            "spec": { "rejected": digest },
        }),
    };
    let done = api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api_error)?;
    match accept {
        true => println!(
            "{workload} {tool}: {digest} accepted by {}",
            done.spec.accepted_by.unwrap_or_default()
        ),
        false => println!("{workload} {tool}: {digest} rejected; it stays held"),
    }
    Ok(())
}

/// A starter McpPolicy of `workload`'s pins: every tool with a definition pinned, a note for
/// each definition its sidecars hold back, and the workload's own pod selector.
async fn starter(
    client: Client,
    namespace: &str,
    workload: &str,
    name: Option<String>,
    selector: Option<serde_json::Value>,
) -> anyhow::Result<String> {
    let (kind, workload_name) = workload
        .split_once('/')
        .with_context(|| format!("{workload:?} is not KIND/NAME, as `pins list` shows it"))?;
    let api: Api<McpToolPin> = Api::namespaced(client.clone(), namespace);
    let mut pins = api.list(&ListParams::default()).await?.items;
    pins.retain(|p| p.spec.workload == workload);
    pins.sort_by(|a, b| a.spec.tool.cmp(&b.spec.tool));
    anyhow::ensure!(
        !pins.is_empty(),
        "{workload} has no McpToolPins in {namespace}: they are made when its sidecars first list \
         its tools under `pinning.trustOnFirstUse`; for a server without them, run \
         `tollgate pin URL` through `kubectl port-forward`"
    );
    let mut tools = Vec::new();
    let mut notes = Vec::new();
    for pin in &pins {
        let tool = &pin.spec.tool;
        match &pin.spec.definition {
            Some(def) => {
                // The sidecars hold a tool to the pin by the pin's tool, and the policy would
                // pin it by the definition's name: they must be one.
                anyhow::ensure!(
                    def.name == *tool,
                    "{workload}'s pin of {tool:?} holds the definition of {:?}: review it with `kubectl tollgate pins list`",
                    def.name
                );
                tools.push(
                    def.tool()
                        .map_err(|e| anyhow::anyhow!("{workload}'s pin of {tool:?}: {e}"))?,
                )
            }
            None => notes.push(format!(
                "{tool:?} is left out: nothing is pinned yet, and its definition waits for a person (kubectl tollgate pins list)"
            )),
        }
        let held = pin.status.as_ref().and_then(|s| s.held.as_ref());
        if let Some(h) = held.filter(|h| pin.spec.definition.as_ref() != Some(&h.definition)) {
            let rejected = pin.spec.rejected.as_ref() == Some(&h.definition.digest);
            notes.push(format!(
                "{tool:?}: pod {} lists another definition ({}{}), {}",
                h.pod,
                h.why,
                match h.changed.is_empty() {
                    true => String::new(),
                    false => format!(": {}", h.changed.join(", ")),
                },
                match rejected {
                    true => "rejected; it stays held".to_string(),
                    false => format!(
                        "held back for review, not the one pinned here ({})",
                        h.definition.digest
                    ),
                }
            ));
        }
    }
    // A policy without a selector governs every pod of the namespace: rather none than that.
    let selector = match selector {
        Some(given) => given,
        None => pod_selector(client, namespace, kind, workload_name)
            .await
            .map_err(|why| anyhow::anyhow!("{why}; name the pods with --selector KEY=VALUE"))?,
    };
    let name = name.unwrap_or_else(|| format!("{workload_name}-pinned"));
    let command = format!("kubectl tollgate pin --workload {workload} -n {namespace}");
    let header = tollgate_sidecar::starter::Header {
        command: &command,
        pinned_to: "the definition its sidecars hold it to (its McpToolPin)",
        name: &name,
        namespace,
        selector: Some(&selector),
        notes: &notes,
    };
    tollgate_sidecar::starter::render(&header, &tools)
}

/// `KEY=VALUE,...` as a label selector's `matchLabels`.
fn match_labels(text: &str) -> anyhow::Result<serde_json::Value> {
    let mut labels = serde_json::Map::new();
    for pair in text.split(',') {
        let (key, value) = pair
            .split_once('=')
            .filter(|(k, _)| !k.trim().is_empty())
            .with_context(|| format!("--selector {text:?}: {pair:?} is not KEY=VALUE"))?;
        let (key, value) = (key.trim(), value.trim());
        // Label text only: the selector is written into the policy as it is.
        let label = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
        };
        anyhow::ensure!(
            label(key) && label(value),
            "--selector {text:?}: {pair:?} is not a label (letters, digits, . _ - /)"
        );
        labels.insert(key.into(), value.into());
    }
    Ok(json!({ "matchLabels": labels }))
}

/// The label selector of a workload's pods, as its controller has it; else why not.
async fn pod_selector(
    client: Client,
    namespace: &str,
    kind: &str,
    name: &str,
) -> Result<serde_json::Value, String> {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
    async fn selector_of<K>(
        client: Client,
        namespace: &str,
        name: &str,
        get: fn(&K) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    ) -> Result<Option<serde_json::Value>, kube::Error>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let found = Api::<K>::namespaced(client, namespace)
            .get_opt(name)
            .await?;
        Ok(found.and_then(|k| serde_json::to_value(get(&k)).ok()))
    }
    let found = match kind {
        "Deployment" => {
            selector_of::<Deployment>(client, namespace, name, |d| &d.spec.selector).await
        }
        "StatefulSet" => {
            selector_of::<StatefulSet>(client, namespace, name, |d| &d.spec.selector).await
        }
        "DaemonSet" => {
            selector_of::<DaemonSet>(client, namespace, name, |d| &d.spec.selector).await
        }
        "ReplicaSet" => {
            selector_of::<ReplicaSet>(client, namespace, name, |d| &d.spec.selector).await
        }
        _ => Ok(None),
    };
    match found {
        Ok(Some(selector)) => Ok(selector),
        Ok(None) => Err(format!(
            "no pod selector of {kind}/{name} was found in {namespace}"
        )),
        Err(e) => Err(format!(
            "{kind}/{name}'s pod selector could not be read ({e})"
        )),
    }
}

fn print_pins(items: &[McpToolPin], namespaces: bool) {
    let mut rows = vec![
        [
            "NAMESPACE",
            "WORKLOAD",
            "TOOL",
            "PINNED",
            "SOURCE",
            "HELD",
            "HELD DIGEST",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for p in items {
        let held = p.status.as_ref().and_then(|s| s.held.as_ref());
        let live = held.filter(|h| p.spec.definition.as_ref() != Some(&h.definition));
        let rejected = live.is_some_and(|h| p.spec.rejected.as_ref() == Some(&h.definition.digest));
        rows.push(vec![
            p.namespace().unwrap_or_default(),
            p.spec.workload.clone(),
            p.spec.tool.clone(),
            p.spec
                .definition
                .as_ref()
                .map_or("-".into(), |d| d.digest.clone()),
            match (&p.spec.definition, p.spec.source) {
                (None, _) => "-".into(),
                (Some(_), PinSource::FirstUse) => "first use".into(),
                (Some(_), PinSource::Accepted) => format!(
                    "accepted by {}",
                    p.spec.accepted_by.as_deref().unwrap_or("?")
                ),
            },
            match live {
                None => "-".into(),
                Some(h) if rejected => format!("{} (rejected)", h.why),
                Some(h) => h.why.clone(),
            },
            live.map_or("-".into(), |h| h.definition.digest.clone()),
        ]);
    }
    table(&rows, usize::from(!namespaces));
    for p in items {
        let Some(h) = p.status.as_ref().and_then(|s| s.held.as_ref()) else {
            continue;
        };
        if p.spec.definition.as_ref() == Some(&h.definition) {
            continue;
        }
        println!();
        println!(
            "{} {} (pod {}, {}): {}",
            p.spec.workload, p.spec.tool, h.pod, h.since, h.reason
        );
        let changed: Vec<&str> = h.changed.iter().map(String::as_str).collect();
        for (field, text) in &h.definition.fields {
            if changed.is_empty() || changed.contains(&field.as_str()) {
                println!("  {field}: {text}");
            }
        }
    }
}

fn table(rows: &[Vec<String>], skip: usize) {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .skip(skip)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

fn list(items: &[McpApproval], namespaces: bool) -> anyhow::Result<()> {
    let mut rows = vec![
        vec![
            "NAMESPACE",
            "NAME",
            "TOOL",
            "IDENTITY",
            "POD",
            "PHASE",
            "EXPIRES",
            "DECIDED BY",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>(),
    ];
    for a in items {
        let status = a.status.clone().unwrap_or_default();
        rows.push(vec![
            a.namespace().unwrap_or_default(),
            a.name_any(),
            a.spec.tool.clone(),
            a.spec.identity.clone(),
            a.spec.pod.clone(),
            format!("{:?}", status.phase),
            status.expires.unwrap_or_else(|| "-".into()),
            a.spec
                .decision
                .as_ref()
                .and_then(|d| d.decided_by.clone())
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    table(&rows, usize::from(!namespaces));
    for a in items.iter().filter(|a| !a.spec.arguments.is_empty()) {
        println!("{}: arguments {:?}", a.name_any(), a.spec.arguments);
    }
    Ok(())
}
