//! `tollgate approvals list | approve NAME | deny NAME` and `tollgate pins list | accept TOOL |
//! reject TOOL`: a client of a proxy's approvals listener ([`super::admin`]).

use std::path::Path;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

/// What to do.
pub enum Action<'a> {
    List,
    Decide {
        name: &'a str,
        approve: bool,
        reason: Option<&'a str>,
        by: &'a str,
    },
    /// The tools held back by their pin.
    Pins,
    /// A person accepts the held definition `digest` of a tool, or rejects the tool's.
    DecidePin {
        tool: &'a str,
        accept: Option<&'a str>,
        by: &'a str,
    },
}

/// Runs `action` against the listener at `url`; prints what it got (`json`: as JSON).
pub async fn run(
    url: &str,
    token_file: &Path,
    action: Action<'_>,
    json: bool,
) -> anyhow::Result<()> {
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("cannot read the approvals token {}", token_file.display()))?;
    let base = url.trim_end_matches('/');
    let (method, uri, body) = match &action {
        Action::List => ("GET", format!("{base}{}", super::admin::PREFIX), None),
        Action::Decide {
            name,
            approve,
            reason,
            by,
        } => (
            "POST",
            format!(
                "{base}{}/{name}/{}",
                super::admin::PREFIX,
                if *approve { "approve" } else { "deny" }
            ),
            Some(json!({ "reason": reason, "by": by })),
        ),
        Action::Pins => ("GET", format!("{base}{}", super::admin::PINS), None),
        Action::DecidePin { tool, accept, by } => (
            "POST",
            format!(
                "{base}{}/{}",
                super::admin::PINS,
                if accept.is_some() { "accept" } else { "reject" }
            ),
            Some(match accept {
                Some(digest) => json!({ "tool": tool, "digest": digest, "by": by }),
                None => json!({ "tool": tool, "by": by }),
            }),
        ),
    };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = http::Request::builder()
        .method(method)
        .uri(&uri)
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", token.trim()),
        )
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))?;
    let resp = client
        .request(req)
        .await
        .with_context(|| format!("cannot reach the approvals listener at {base}"))?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let answer: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{uri} answered {status} with a body that is not JSON"))?;
    if !status.is_success() {
        anyhow::bail!(
            "{}",
            answer["error"].as_str().unwrap_or(&answer.to_string())
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let items = answer["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    match action {
        Action::List => {
            print_table(
                items,
                &[
                    "name",
                    "tool",
                    "identity",
                    "phase",
                    "created",
                    "expires",
                    "decidedBy",
                ],
            );
            for a in items.iter().filter(|a| a.get("arguments").is_some()) {
                println!(
                    "{}: arguments {}",
                    a["name"].as_str().unwrap_or_default(),
                    a["arguments"]
                );
            }
        }
        Action::Decide { .. } => println!(
            "approval {} {}",
            answer["name"].as_str().unwrap_or_default(),
            answer["phase"].as_str().unwrap_or_default().to_lowercase()
        ),
        Action::Pins => {
            print_table(items, &["tool", "why", "changed", "since", "rejected"]);
            for h in items {
                // The server chose these words: printed as JSON strings, so no byte of them
                // reaches the terminal as a control.
                println!(
                    "\n{}: {}\n  definition {}",
                    json!(h["tool"]),
                    json!(h["reason"]),
                    h["digest"].as_str().unwrap_or_default()
                );
                for (field, text) in h["review"].as_object().into_iter().flatten() {
                    println!("  {field}: {}", json!(text));
                }
            }
        }
        Action::DecidePin { tool, accept, .. } => match accept {
            Some(digest) => println!("tool {tool} accepted: {digest} is its pin"),
            None => println!("tool {tool} rejected: it stays held back"),
        },
    }
    Ok(())
}

fn print_table(items: &[Value], columns: &[&str]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|a| {
            columns
                .iter()
                .map(|c| match &a[*c] {
                    Value::String(s) => s.clone(),
                    Value::Null => "-".into(),
                    Value::Array(items) => items
                        .iter()
                        .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                        .collect::<Vec<_>>()
                        .join(","),
                    other => other.to_string(),
                })
                .collect()
        })
        .collect();
    let header: Vec<String> = columns
        .iter()
        .map(|c| {
            if *c == "decidedBy" {
                "DECIDED BY".into()
            } else {
                c.to_uppercase()
            }
        })
        .collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}
