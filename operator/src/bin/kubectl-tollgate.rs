//! `kubectl tollgate`: decide the calls Tollgate holds for a person (a kubectl plugin: put the
//! binary on PATH).
//!
//! ```text
//! kubectl tollgate list [-n NS | -A]
//! kubectl tollgate approve NAME [-n NS] [--reason TEXT]
//! kubectl tollgate deny NAME [-n NS] --reason TEXT
//! ```
//!
//! A decision is a patch of `spec.decision`, made as the kubeconfig's user: the operator's
//! webhook lets it through only for a user with the RBAC verb `approve` on `mcpapprovals`, and
//! stamps that user as `decidedBy`.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tollgate_api::McpApproval;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("starting the runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
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
            return list(
                &api.list(&ListParams::default()).await?.items,
                all_namespaces,
            );
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
    Ok(())
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
    let skip = usize::from(!namespaces);
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .skip(skip)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    for a in items.iter().filter(|a| !a.spec.arguments.is_empty()) {
        println!("{}: arguments {:?}", a.name_any(), a.spec.arguments);
    }
    Ok(())
}
