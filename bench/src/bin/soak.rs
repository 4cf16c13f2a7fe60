//! A soak: a steady rate of mixed calls through two `tollgate proxy` processes for a given
//! time, with their memory, file descriptors and audit lines watched.
//!
//! ```text
//! load (keep-alive connections, paced) ─┬─> tollgate ─> bench-upstream (JSON, stateless)
//!   allowed, denied and rate-limited     └─> tollgate ─> bench-upstream --sse (sessions)
//!   tools/call, and tools/list (filtered)
//! every second: RSS and open fds of each proxy      every minute: calls, errors, p50, p99
//! at the end: SIGTERM, then audit lines counted against the tools/call sent
//! ```
//!
//! `bench/soak.sh MINUTES` builds it and writes bench/results/soak/latest.md.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    /// How long to run.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Calls per second in all, spread over both proxies.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Connections per proxy.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    #[arg(long, default_value = "bench/results/soak")]
    out: PathBuf,
}

const POLICY: &str = r#"apiVersion: tollgate.dev/v1alpha1
kind: McpPolicy
metadata: { name: soak }
spec:
  default: allow
  hide: [tool_40, tool_41, tool_42]
  tools:
    tool_1: { rules: [] }
    tool_2:
      rules:
        - { name: fifty a second, rateLimit: 50/second }
    tool_3:
      rules:
        - { name: never, action: deny, onDeny: not in a soak }
"#;

/// What one request of the mix is, and what a right answer holds.
#[derive(Clone, Copy)]
enum Kind {
    Allowed,
    Denied,
    Limited,
    List,
}

const MIX: [Kind; 4] = [Kind::Allowed, Kind::Denied, Kind::Limited, Kind::List];

impl Kind {
    fn body(self, id: u64) -> String {
        let call = |tool: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{{"n":{id}}}}}}}"#
            )
        };
        match self {
            Kind::Allowed => call("tool_1"),
            Kind::Denied => call("tool_3"),
            Kind::Limited => call("tool_2"),
            Kind::List => format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#),
        }
    }

    /// Whether the answer is what the policy says it must be.
    fn right(self, body: &[u8]) -> bool {
        let has = |s: &str| memchr::memmem::find(body, s.as_bytes()).is_some();
        match self {
            Kind::Allowed => has("\"result\""),
            Kind::Denied => has("-32001") && has("not in a soak"),
            Kind::Limited => has("\"result\"") || has("fifty a second"),
            Kind::List => has("tool_39") && !has("\"tool_40\""),
        }
    }
}

/// A process started here; killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start(cmd: &mut Command, port: u16, stdout: Stdio) -> anyhow::Result<Proc> {
    let proc = Proc(cmd.stdout(stdout).stderr(Stdio::null()).spawn()?);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(proc)
}

/// Per minute, for the table.
#[derive(Default)]
struct Minute {
    calls: u64,
    errors: u64,
    /// Through the JSON proxy, the SSE one, and straight to each server (the baseline).
    latency: [Option<Histogram<u64>>; 4],
}

struct Shared {
    minutes: Mutex<Vec<Minute>>,
    start: Instant,
    /// Calls still answered after the run's end count in its last minute.
    last_minute: usize,
    stop: AtomicBool,
    next_id: AtomicU64,
    /// tools/call sent and answered (each has one audit line).
    calls: AtomicU64,
}

impl Shared {
    fn record(&self, path: usize, micros: u64, ok: bool) {
        let minute = ((self.start.elapsed().as_secs() / 60) as usize).min(self.last_minute);
        let mut minutes = self.minutes.lock();
        while minutes.len() <= minute {
            minutes.push(Minute::default());
        }
        let m = &mut minutes[minute];
        if path < 2 {
            m.calls += 1;
            if !ok {
                m.errors += 1;
            }
        }
        m.latency[path]
            .get_or_insert_with(|| {
                Histogram::new_with_bounds(1, 60_000_000, 3).expect("a histogram")
            })
            .saturating_record(micros);
    }
}

/// One keep-alive connection sending the mix at `per_second`: through a proxy, or (`direct`)
/// straight to its server, as the baseline.
async fn client(
    shared: Arc<Shared>,
    port: u16,
    sse: bool,
    direct: bool,
    per_second: f64,
    offset: usize,
) -> anyhow::Result<()> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let request = |body: String, session: Option<&str>| {
        let mut r = Request::post("/mcp")
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18");
        if let Some(s) = session {
            r = r.header("mcp-session-id", s);
        }
        r.body(Full::new(Bytes::from(body))).expect("a request")
    };
    let session = if sse {
        let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"soak","version":"1"}}}"#;
        let resp = send.send_request(request(init.into(), None)).await?;
        let id = resp
            .headers()
            .get("mcp-session-id")
            .context("no session id")?
            .to_str()?
            .to_string();
        resp.into_body().collect().await?;
        let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        send.send_request(request(note.into(), Some(&id)))
            .await?
            .into_body()
            .collect()
            .await?;
        Some(id)
    } else {
        None
    };
    let period = Duration::from_secs_f64(1.0 / per_second);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut i = offset;
    while !shared.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let kind = MIX[i % MIX.len()];
        i += 1;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let t0 = Instant::now();
        let answer = async {
            let resp = send
                .send_request(request(kind.body(id), session.as_deref()))
                .await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        let ok = match tokio::time::timeout(Duration::from_secs(10), answer).await {
            Ok(Ok((status, body))) => status.is_success() && (direct || kind.right(&body)),
            _ => false,
        };
        if !direct && !matches!(kind, Kind::List) {
            shared.calls.fetch_add(1, Ordering::Relaxed);
        }
        let path = usize::from(sse) + 2 * usize::from(direct);
        shared.record(path, t0.elapsed().as_micros() as u64, ok);
        if !ok && send.ready().await.is_err() {
            bail!("the connection to {port} broke");
        }
    }
    Ok(())
}

/// (RSS KiB, open fds) of a process.
fn sample(pid: u32) -> (u64, u64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    (rss, fds)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let release = std::env::current_exe()?
        .parent()
        .context("the binary's directory")?
        .to_path_buf();
    std::fs::create_dir_all(&args.out)?;
    // The policy and the audit lines (hundreds of MB) live only as long as the run.
    let work = std::env::temp_dir().join(format!("tollgate-soak-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let policy = work.join("policy.yaml");
    std::fs::write(&policy, POLICY)?;
    let mut procs = Vec::new();
    let mut proxies = Vec::new();
    for (name, sse) in [("JSON", false), ("SSE", true)] {
        let up = free_port();
        let mut cmd = Command::new(release.join("bench-upstream"));
        cmd.args(["--listen", &format!("127.0.0.1:{up}"), "--tools", "50"]);
        if sse {
            cmd.arg("--sse");
        }
        procs.push(start(&mut cmd, up, Stdio::null())?);
        let (port, admin) = (free_port(), free_port());
        let audit = args
            .out
            .join(format!("audit-{}.jsonl", name.to_lowercase()));
        let proxy = start(
            Command::new(release.join("tollgate")).args([
                "proxy",
                "--upstream",
                &format!("http://127.0.0.1:{up}"),
                "--policy",
                &policy.display().to_string(),
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--metrics-listen",
                &format!("127.0.0.1:{admin}"),
            ]),
            port,
            Stdio::from(std::fs::File::create(&audit)?),
        )?;
        proxies.push((name, sse, port, up, proxy, audit));
    }
    let shared = Arc::new(Shared {
        minutes: Mutex::default(),
        start: Instant::now(),
        last_minute: (args.minutes.ceil() as usize).max(1) - 1,
        stop: AtomicBool::new(false),
        next_id: AtomicU64::new(1),
        calls: AtomicU64::new(0),
    });
    let runtime = tokio::runtime::Runtime::new()?;
    let per_connection = args.rate as f64 / (2 * args.connections) as f64;
    let mut tasks = Vec::new();
    for &(_, sse, port, up, _, _) in &proxies {
        for c in 0..args.connections {
            tasks.push(runtime.spawn(client(shared.clone(), port, sse, false, per_connection, c)));
        }
        // One connection straight to the server, at one connection's rate: the baseline.
        tasks.push(runtime.spawn(client(shared.clone(), up, sse, true, per_connection, 0)));
    }
    // RSS and fds every second.
    let run = Duration::from_secs_f64(args.minutes * 60.0);
    let mut samples: Vec<Vec<(u64, u64)>> = vec![Vec::new(); proxies.len()];
    let begun = Instant::now();
    while begun.elapsed() < run {
        std::thread::sleep(Duration::from_secs(1));
        for (i, p) in proxies.iter().enumerate() {
            samples[i].push(sample(p.4.0.id()));
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    let mut broken = 0;
    for t in tasks {
        if !matches!(runtime.block_on(t), Ok(Ok(()))) {
            broken += 1;
        }
    }
    // SIGTERM: the proxies flush their audit lines and exit.
    for p in &mut proxies {
        let _ = Command::new("kill")
            .args(["-TERM", &p.4.0.id().to_string()])
            .status();
        let _ = p.4.0.wait();
    }
    let lines: u64 = proxies
        .iter()
        .map(|p| {
            std::fs::read_to_string(&p.5).map_or(0, |s| {
                s.lines()
                    .filter(|l| l.contains(r#""kind":"decision""#))
                    .count() as u64
            })
        })
        .sum();
    let dropped: u64 = proxies
        .iter()
        .map(|p| {
            std::fs::read_to_string(&p.5).map_or(0, |s| {
                s.lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .filter_map(|v| v["droppedBefore"].as_u64())
                    .sum::<u64>()
            })
        })
        .sum();
    let calls = shared.calls.load(Ordering::Relaxed);
    let minutes = shared.minutes.lock();
    let mut out = String::new();
    writeln!(
        out,
        "# Soak: {} min at {} calls/s ({} connections per proxy)\n",
        args.minutes, args.rate, args.connections
    )?;
    writeln!(
        out,
        "Mix, round robin on each connection: allowed `tools/call`, denied `tools/call`, rate-limited `tools/call` (50/s, about half denied), `tools/list` (3 of 50 tools hidden). Two proxies: one in front of a JSON server, one in front of an SSE server with sessions. Machine: {} cores.\n",
        std::thread::available_parallelism().map_or(0, usize::from)
    )?;
    writeln!(
        out,
        "| minute | calls | errors | JSON p50 / p99 µs | direct | SSE p50 / p99 µs | direct | RSS JSON proxy MiB | RSS SSE proxy MiB | fds JSON / SSE |"
    )?;
    writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    let per_minute = |i: usize, m: usize| -> (f64, u64) {
        let s: Vec<&(u64, u64)> = samples[i].iter().skip(m * 60).take(60).collect();
        let rss = s.iter().map(|x| x.0).sum::<u64>() as f64 / s.len().max(1) as f64 / 1024.0;
        let fds = s.iter().map(|x| x.1).max().unwrap_or(0);
        (rss, fds)
    };
    for (m, minute) in minutes.iter().enumerate() {
        let q = |i: usize, q: f64| {
            minute.latency[i]
                .as_ref()
                .map_or(0, |h| h.value_at_quantile(q))
        };
        let (rj, fj) = per_minute(0, m);
        let (rs, fs) = per_minute(1, m);
        writeln!(
            out,
            "| {} | {} | {} | {} / {} | {} / {} | {} / {} | {} / {} | {rj:.1} | {rs:.1} | {fj} / {fs} |",
            m + 1,
            minute.calls,
            minute.errors,
            q(0, 0.5),
            q(0, 0.99),
            q(2, 0.5),
            q(2, 0.99),
            q(1, 0.5),
            q(1, 0.99),
            q(3, 0.5),
            q(3, 0.99)
        )?;
    }
    let errors: u64 = minutes.iter().map(|m| m.errors).sum();
    let total: u64 = minutes.iter().map(|m| m.calls).sum();
    let last = samples[0].len().div_ceil(60).saturating_sub(1);
    let rss = |i: usize| (per_minute(i, 0).0, per_minute(i, last).0);
    let ((j0, j1), (s0, s1)) = (rss(0), rss(1));
    writeln!(
        out,
        "\n**{total} requests, {errors} errors; connections broken: {broken}.**\n\n\
         **RSS, mean of the first and last minute:** JSON proxy {j0:.1} → {j1:.1} MiB, SSE proxy {s0:.1} → {s1:.1} MiB.\n\n\
         **Audit:** {calls} `tools/call` answered, {lines} decision lines written, {dropped} reported dropped, \
         {} lost (calls without a line).",
        calls.saturating_sub(lines)
    )?;
    std::fs::write(args.out.join("latest.md"), &out)?;
    print!("{out}");
    drop(procs);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
