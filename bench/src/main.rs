//! What the sidecar costs on every tool call.
//!
//! ```text
//! load clients (1 HTTP/1.1 connection each) ─┬─> upstream directly
//!                                            ├─> nginx (plain reverse proxy, upstream keep-alive)
//!                                            ├─> tollgate proxy (100-tool policy)
//!                                            ├─> tollgate proxy, the same policy pinning its tools (JSON)
//!                                            ├─> tollgate proxy tracing every request (JSON)
//!                                            ├─> passthrough (tollgate's HTTP stack, no policy)
//!                                            ├─> floor (least HTTP/1 proxy, httparse; JSON answers only)
//!                                            └─> mcp-proxy (crates.io peer)
//!                                                   └──> bench-upstream (rmcp, answers at once)
//! ```
//!
//! Every workload visits the targets in turn, round after round, so a noisy machine slows all
//! of them alike and the ratios hold. Run it with `bench/run.sh`, which installs the peers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    /// Rounds per workload; each round visits every target once.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Seconds each target is loaded per round.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Concurrency levels for tools/call.
    #[arg(long, value_delimiter = ',', default_value = "1,32,256")]
    concurrency: Vec<usize>,
    /// Idle sessions opened to measure the proxy's idle memory.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Where the table and chart are written.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// The mcp-proxy binary (skipped if absent).
    #[arg(long, default_value = "bench/.tools/bin/mcp-proxy")]
    mcp_proxy: PathBuf,
    /// Only run workloads whose label contains this, e.g. "JSON" or "c=1".
    #[arg(long)]
    only: Option<String>,
    /// Only measure memory (skip the latency workloads).
    #[arg(long)]
    memory_only: bool,
    /// The nginx binary (skipped if absent).
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
    /// A Redis (redis://HOST:PORT) to add a target whose counters are kept there
    /// ("tollgate+redis"), measured beside the one counting in its own memory.
    #[arg(long)]
    redis: Option<String>,
    /// Write the benchmark's policy to this file and exit (for `bench/instructions.sh`).
    #[arg(long)]
    write_policy: Option<PathBuf>,
}

/// A process the benchmark started; killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first, so nginx's master stops its workers; SIGKILL if it lingers.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A request that takes longer than this counts as an error (a stalled peer must not hang
/// the benchmark).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A trace collector that takes every OTLP export and keeps nothing, on a port of its own.
async fn trace_sink() -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async {
                    let _ = req.into_body().collect().await;
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(port)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn spawn(cmd: &mut Command, port: u16, name: &str) -> anyhow::Result<Proc> {
    spawn_to(cmd, port, name, Stdio::null())
}

/// Starts a process with its stdout sent where asked, and waits until it listens on `port`.
fn spawn_to(cmd: &mut Command, port: u16, name: &str, stdout: Stdio) -> anyhow::Result<Proc> {
    let child = cmd
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{name} did not listen on {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(proc)
}

/// One place a load can be sent.
#[derive(Clone)]
struct Target {
    name: &'static str,
    addr: SocketAddr,
    path: &'static str,
    /// Prefix mcp-proxy puts on tool names.
    tool_prefix: &'static str,
    /// Processes whose CPU and memory are this target's (not the upstream's).
    pids: Vec<u32>,
}

impl Target {
    /// A target on this machine's loopback.
    fn local(
        name: &'static str,
        port: u16,
        path: &'static str,
        tool_prefix: &'static str,
        pids: Vec<u32>,
    ) -> Self {
        Target {
            name,
            addr: ([127, 0, 0, 1], port).into(),
            path,
            tool_prefix,
            pids,
        }
    }
}

/// Kernel clock ticks of a process and its children, read from /proc.
fn cpu_ticks(pids: &[u32]) -> u64 {
    all_pids(pids)
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
            let f: Vec<&str> = after.split_whitespace().collect();
            f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
                + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        })
        .sum()
}

/// The processes and their children (nginx's workers).
fn all_pids(roots: &[u32]) -> Vec<u32> {
    let mut out: Vec<u32> = roots.to_vec();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
            let ppid = after
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u32>().ok());
            if ppid.is_some_and(|p| roots.contains(&p)) {
                out.push(pid);
            }
        }
    }
    out
}

/// Sum of a /proc status field (kB) over a process and its children.
fn status_kb(pids: &[u32], field: &str) -> u64 {
    all_pids(pids)
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

fn ticks_per_second() -> f64 {
    // Linux reports CPU time in USER_HZ, 100 on every architecture Rust targets here.
    100.0
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn post(
    sender: &mut Sender,
    t: &Target,
    session: Option<&str>,
    body: Bytes,
) -> anyhow::Result<(hyper::http::HeaderMap, Bytes)> {
    sender.ready().await?;
    let mut req = Request::post(t.path)
        .header("host", t.addr.to_string())
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18");
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    let resp = sender.send_request(req.body(Full::new(body))?).await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "{} answered {status}: {}",
            t.name,
            String::from_utf8_lossy(&body)
        );
    }
    Ok((headers, body))
}

/// Opens a connection with an MCP session (initialize + initialized).
async fn session(t: &Target) -> anyhow::Result<(Sender, Option<String>)> {
    tokio::time::timeout(REQUEST_TIMEOUT, session_inner(t))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "{} did not open a session within {REQUEST_TIMEOUT:?}",
                t.name
            )
        })?
}

async fn session_inner(t: &Target) -> anyhow::Result<(Sender, Option<String>)> {
    let mut s = connect(t.addr).await?;
    let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"tollgate-bench","version":"1"}}}"#;
    let (headers, _) = post(&mut s, t, None, Bytes::from_static(init.as_bytes())).await?;
    let id = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    post(
        &mut s,
        t,
        id.as_deref(),
        Bytes::from_static(note.as_bytes()),
    )
    .await?;
    Ok((s, id))
}

#[derive(Clone, Copy)]
enum Work {
    Call,
    List,
}

fn body(work: Work, t: &Target, n: u64) -> Bytes {
    match work {
        Work::Call => Bytes::from(format!(
            r#"{{"jsonrpc":"2.0","id":{n},"method":"tools/call","params":{{"name":"{}tool_7","arguments":{{"amount":250,"note":"benchmark call {n}"}}}}}}"#,
            t.tool_prefix
        )),
        Work::List => Bytes::from(format!(
            r#"{{"jsonrpc":"2.0","id":{n},"method":"tools/list","params":{{}}}}"#
        )),
    }
}

struct RoundResult {
    hist: Histogram<u64>,
    count: u64,
    errors: u64,
    seconds: f64,
    cpu_ticks: u64,
    upstream_ticks: u64,
}

async fn load(
    t: &Target,
    upstream: &[u32],
    work: Work,
    conc: usize,
    secs: f64,
) -> anyhow::Result<RoundResult> {
    // A target that cannot hold `conc` sessions runs with those it opened; the rest count as
    // errors in the table rather than stopping the benchmark.
    let (conns, opened) = open_sessions(t, conc).await;
    let failed_sessions = (conc - opened) as u64;
    if opened == 0 {
        bail!("{} opened no session", t.name);
    }
    let (cpu0, up0) = (cpu_ticks(&t.pids), cpu_ticks(upstream));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for (i, (mut s, id)) in conns.into_iter().enumerate() {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let (mut n, mut errors) = (i as u64 * 1_000_000_000, 0u64);
            while Instant::now() < deadline {
                n += 1;
                let b = body(work, &t, n);
                let t0 = Instant::now();
                match tokio::time::timeout(REQUEST_TIMEOUT, post(&mut s, &t, id.as_deref(), b))
                    .await
                {
                    Ok(Ok(_)) => hist.saturating_record(t0.elapsed().as_micros() as u64),
                    _ => {
                        errors += 1;
                        if let Ok(c) = connect(t.addr).await {
                            s = c;
                        }
                    }
                }
            }
            (hist, errors)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = failed_sessions;
    for task in tasks {
        let (h, e) = task.await?;
        hist.add(h)?;
        errors += e;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(RoundResult {
        count: hist.len(),
        hist,
        errors,
        seconds,
        cpu_ticks: cpu_ticks(&t.pids) - cpu0,
        upstream_ticks: cpu_ticks(upstream) - up0,
    })
}

/// The realistic policy: 100 listed tools, rate limits and argument conditions on each.
fn policy() -> String {
    let mut p = String::from(
        "apiVersion: tollgate.dev/v1alpha1\nkind: McpPolicy\nmetadata: { name: bench, namespace: default }\nspec:\n  default: deny\n  hide: [tool_99]\n  tools:\n    \"*\": { rules: [ { name: global rate, rateLimit: 100000000000/second } ] }\n",
    );
    for i in 0..100 {
        let _ = writeln!(
            p,
            "    tool_{i}:\n      rules:\n        - name: small amounts\n          conditions:\n            - {{ path: args.amount, op: lte, value: 1000000 }}\n            - {{ path: args.note, op: regex, value: \"^[a-z0-9 ]*$\" }}\n        - name: per minute\n          rateLimit: 100000000000/minute\n        - name: no admin\n          action: deny\n          conditions: [ {{ path: args.role, op: eq, value: admin }} ]"
        );
    }
    p
}

struct Cell {
    target: &'static str,
    rounds: Vec<RoundResult>,
}

impl Cell {
    fn merged(&self) -> (Histogram<u64>, u64, u64, f64, u64, u64) {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        let (mut n, mut e, mut s, mut c, mut u) = (0, 0, 0.0, 0, 0);
        for r in &self.rounds {
            h.add(&r.hist).expect("same bounds");
            n += r.count;
            e += r.errors;
            s += r.seconds;
            c += r.cpu_ticks;
            u += r.upstream_ticks;
        }
        (h, n, e, s, c, u)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(path) = &args.write_policy {
        std::fs::write(path, policy())?;
        return Ok(());
    }
    let root = std::env::current_dir()?;
    let release = root.join("target/release");
    let tmp = std::env::temp_dir().join(format!("tollgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;

    // Upstreams: JSON answers (stateless) and SSE answers (sessions).
    let (up_json, up_sse) = (free_port(), free_port());
    let _u1 = spawn(
        Command::new(release.join("bench-upstream"))
            .args(["--listen", &format!("127.0.0.1:{up_json}")]),
        up_json,
        "bench-upstream",
    )?;
    let _u2 = spawn(
        Command::new(release.join("bench-upstream")).args([
            "--listen",
            &format!("127.0.0.1:{up_sse}"),
            "--sse",
        ]),
        up_sse,
        "bench-upstream --sse",
    )?;
    let upstream_pids = vec![_u1.0.id(), _u2.0.id()];

    let mut procs: Vec<Proc> = Vec::new();
    // The Redis-backed proxies' admin ports, to count the calls they decided.
    let mut redis_admins: Vec<u16> = Vec::new();
    let mut targets: BTreeMap<&'static str, Vec<Target>> = BTreeMap::new(); // upstream kind -> targets
    for (kind, up) in [("json", up_json), ("sse", up_sse)] {
        let mut ts = vec![Target::local(
            "direct",
            up,
            "/mcp",
            "",
            upstream_pids.clone(),
        )];
        if args.nginx.exists() {
            let port = free_port();
            let dir = tmp.join(format!("nginx-{kind}"));
            std::fs::create_dir_all(dir.join("logs"))?;
            // nginx closes a keep-alive connection after 1,000 requests by default
            // (`keepalive_requests`, client and upstream side); the other targets never do, and
            // each close would count as a failed call and a reconnect, so the limit is lifted.
            std::fs::write(
                dir.join("nginx.conf"),
                format!(
                    "worker_processes auto;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nworker_rlimit_nofile 65536;\nevents {{ worker_connections 32768; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n  keepalive_requests 100000000; keepalive_timeout 600s;\n  upstream mcp {{ server 127.0.0.1:{up}; keepalive 1024; keepalive_requests 100000000; }}\n  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n    location / {{ proxy_pass http://mcp; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; }}\n  }}\n}}\n",
                    d = dir.display()
                ),
            )?;
            let p = spawn(
                Command::new(&args.nginx).args([
                    "-p",
                    &dir.display().to_string(),
                    "-c",
                    &dir.join("nginx.conf").display().to_string(),
                ]),
                port,
                "nginx",
            )?;
            ts.push(Target::local("nginx", port, "/mcp", "", vec![p.0.id()]));
            procs.push(p);
        }
        let port = free_port();
        let policy_path = tmp.join("policy.yaml");
        std::fs::write(&policy_path, policy())?;
        // `tollgate proxy` in front of this upstream, on `port`, with its admin on `admin`.
        let tollgate_with = |port: u16, admin: u16, policy: &std::path::Path| {
            let mut cmd = Command::new(release.join("tollgate"));
            cmd.args([
                "proxy",
                "--upstream",
                &format!("http://127.0.0.1:{up}"),
                "--policy",
                &policy.display().to_string(),
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--metrics-listen",
                &format!("127.0.0.1:{admin}"),
                "--log",
                "warn",
            ]);
            cmd
        };
        let tollgate = |port: u16, admin: u16| tollgate_with(port, admin, &policy_path);
        let audit = std::fs::File::create(tmp.join(format!("audit-{kind}.log")))?;
        let p = spawn_to(
            &mut tollgate(port, free_port()),
            port,
            "tollgate",
            audit.into(),
        )?;
        ts.push(Target::local("tollgate", port, "/mcp", "", vec![p.0.id()]));
        procs.push(p);
        // The same proxy with hyper reading agents' HTTP/1 (`--http1 hyper`, the way out should
        // a fault be found in Tollgate's own server): what the switch costs or saves.
        let port = free_port();
        let audit = std::fs::File::create(tmp.join(format!("audit-{kind}-hyper.log")))?;
        let p = spawn_to(
            tollgate(port, free_port()).args(["--http1", "hyper"]),
            port,
            "tollgate --http1 hyper",
            audit.into(),
        )?;
        ts.push(Target::local(
            "tollgate (hyper http1)",
            port,
            "/mcp",
            "",
            vec![p.0.id()],
        ));
        procs.push(p);
        // The same policy pinning every tool on first use: what holding each listed definition
        // to its pin costs a list (every tool read and digested) and a call (its pin looked up).
        if kind == "json" {
            let pinned_policy = tmp.join("policy-pinned.yaml");
            std::fs::write(
                &pinned_policy,
                format!("{}  pinning: {{ trustOnFirstUse: true }}\n", policy()),
            )?;
            let port = free_port();
            let audit = std::fs::File::create(tmp.join("audit-json-pinned.log"))?;
            let p = spawn_to(
                tollgate_with(port, free_port(), &pinned_policy)
                    .args(["--pins-file", &tmp.join("pins.json").display().to_string()]),
                port,
                "tollgate (pinned)",
                audit.into(),
            )?;
            let t = Target::local("tollgate (pinned)", port, "/mcp", "", vec![p.0.id()]);
            // Listed once, so its tools are pinned (on first use) and callable.
            let mut c = connect(t.addr).await?;
            post(&mut c, &t, None, body(Work::List, &t, 0)).await?;
            ts.push(t);
            procs.push(p);
        }
        // The same proxy tracing every request to a collector that takes each export: what
        // recording and exporting spans cost (the collector's own work is not the proxy's).
        if kind == "json" {
            let sink = trace_sink().await?;
            let port = free_port();
            let audit = std::fs::File::create(tmp.join("audit-json-traced.log"))?;
            let p = spawn_to(
                tollgate(port, free_port()).args([
                    "--otlp-endpoint",
                    &format!("http://127.0.0.1:{sink}"),
                    "--trace-sampling",
                    "1",
                ]),
                port,
                "tollgate (traced)",
                audit.into(),
            )?;
            ts.push(Target::local(
                "tollgate (traced)",
                port,
                "/mcp",
                "",
                vec![p.0.id()],
            ));
            procs.push(p);
        }
        if let Some(redis) = &args.redis {
            let port = free_port();
            let admin = free_port();
            let p = spawn(
                tollgate(port, admin).args([
                    "--counters",
                    redis,
                    "--counters-group",
                    &format!("bench-{kind}"),
                ]),
                port,
                "tollgate --counters",
            )?;
            ts.push(Target::local(
                "tollgate+redis",
                port,
                "/mcp",
                "",
                vec![p.0.id()],
            ));
            redis_admins.push(admin);
            procs.push(p);
        }
        // Measuring sticks, each `BINARY --listen ADDR --upstream URL`:
        // - passthrough: Tollgate's HTTP stack forwarding without deciding, so the rest of
        //   Tollgate's cost is the policy's;
        // - floor: the least an HTTP/1 proxy costs (httparse, Content-Length bodies only, so
        //   not for SSE answers): what HTTP itself costs, without the checks a real proxy makes.
        let sticks: &[(&'static str, &str)] = if kind == "json" {
            &[
                ("passthrough", "bench-passthrough"),
                ("floor", "bench-floor"),
            ]
        } else {
            &[("passthrough", "bench-passthrough")]
        };
        for &(name, binary) in sticks {
            let port = free_port();
            let p = spawn(
                Command::new(release.join(binary)).args([
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--upstream",
                    &format!("http://127.0.0.1:{up}"),
                ]),
                port,
                binary,
            )?;
            ts.push(Target::local(name, port, "/mcp", "", vec![p.0.id()]));
            procs.push(p);
        }
        if args.mcp_proxy.exists() {
            let port = free_port();
            let cfg = tmp.join(format!("mcp-proxy-{kind}.toml"));
            std::fs::write(
                &cfg,
                format!(
                    "[proxy]\nname = \"bench\"\nseparator = \"/\"\n\n[proxy.listen]\nhost = \"127.0.0.1\"\nport = {port}\n\n[[backends]]\nname = \"up\"\ntransport = \"http\"\nurl = \"http://127.0.0.1:{up}/mcp\"\n"
                ),
            )?;
            match spawn(
                Command::new(&args.mcp_proxy).args(["--config", &cfg.display().to_string()]),
                port,
                "mcp-proxy",
            ) {
                Ok(p) => {
                    ts.push(Target::local("mcp-proxy", port, "/", "up/", vec![p.0.id()]));
                    procs.push(p);
                }
                Err(e) => eprintln!("skipping mcp-proxy: {e:#}"),
            }
        }
        targets.insert(kind, ts);
    }

    // Workloads: (label, upstream kind, work, concurrency).
    let mut plan: Vec<(String, &'static str, Work, usize)> = Vec::new();
    for &c in &args.concurrency {
        plan.push((format!("tools/call JSON c={c}"), "json", Work::Call, c));
    }
    for &c in &args.concurrency {
        plan.push((format!("tools/call SSE c={c}"), "sse", Work::Call, c));
    }
    plan.push(("tools/list 500 tools c=1".into(), "json", Work::List, 1));
    plan.push(("tools/list 500 tools c=32".into(), "json", Work::List, 32));

    if let Some(redis) = &args.redis {
        redis_cli(redis, &["config", "resetstat"])?;
    }
    let mut results: Vec<(String, Vec<Cell>)> = Vec::new();
    let mut peaks: Vec<(usize, &'static str, u64)> = Vec::new(); // concurrency, target, KiB
    if args.memory_only {
        plan.clear();
    }
    if let Some(only) = &args.only {
        plan.retain(|(label, ..)| label.contains(only.as_str()));
    }
    for (label, kind, work, conc) in &plan {
        let ts = &targets[kind];
        let mut cells: Vec<Cell> = ts
            .iter()
            .map(|t| Cell {
                target: t.name,
                rounds: vec![],
            })
            .collect();
        eprintln!(
            "{label}: {} rounds x {} targets x {}s",
            args.rounds,
            ts.len(),
            args.seconds
        );
        // Warm-up round, not recorded.
        for t in ts {
            if let Err(e) = load(t, &upstream_pids, *work, *conc, 0.3).await {
                eprintln!("warming up {}: {e:#}", t.name);
            }
        }
        for round in 0..args.rounds {
            // Rotate the order each round so no target always goes first.
            for k in 0..ts.len() {
                let i = (k + round as usize) % ts.len();
                match load(&ts[i], &upstream_pids, *work, *conc, args.seconds).await {
                    Ok(r) => cells[i].rounds.push(r),
                    Err(e) => eprintln!("{label}, {}: {e:#}", ts[i].name),
                }
            }
        }
        results.push((label.clone(), cells));
        // Peak memory so far. Each upstream kind has its own proxies, and SSE's workloads run
        // by rising concurrency, so after each one this is that concurrency's peak.
        if *kind == "sse" {
            for t in ts.iter().filter(|t| t.name != "direct") {
                peaks.push((*conc, t.name, status_kb(&t.pids, "VmHWM:")));
            }
        }
    }

    // Memory: peak under load, then idle with many open sessions (SSE upstream keeps sessions).
    let mut memory = Vec::new();
    for t in &targets["sse"] {
        if t.name == "direct" {
            continue;
        }
        let peak = status_kb(&t.pids, "VmHWM:");
        memory.push((t.name, peak));
    }
    // And Tollgate with N sessions over 100 connections: a session is not a connection, and
    // the proxy keeps no per-session state.
    let tollgate = targets["sse"]
        .iter()
        .find(|t| t.name == "tollgate")
        .expect("tollgate runs");
    let before = status_kb(&tollgate.pids, "VmRSS:");
    let mut pooled = 0usize;
    let mut conns = Vec::new();
    for _ in 0..100 {
        if let Ok(c) = connect(tollgate.addr).await {
            conns.push(c);
        }
    }
    let per = args.sessions.div_ceil(conns.len().max(1));
    let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"tollgate-bench","version":"1"}}}"#;
    for c in conns.iter_mut() {
        for _ in 0..per {
            if post(c, tollgate, None, Bytes::from_static(init.as_bytes()))
                .await
                .is_ok()
            {
                pooled += 1;
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pooled_rss = status_kb(&tollgate.pids, "VmRSS:");
    drop(conns);
    // Idle memory: every proxy holding N sessions, each on its own open connection.
    let mut idle_rows = Vec::new();
    for t in &targets["sse"] {
        if t.name == "direct" {
            continue;
        }
        let before = status_kb(&t.pids, "VmRSS:");
        let (held, opened) = open_sessions(t, args.sessions).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = status_kb(&t.pids, "VmRSS:");
        drop(held);
        idle_rows.push((t.name, before, rss, opened));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let redis_per_call = match &args.redis {
        Some(redis) => Some(redis_commands_per_call(redis, &redis_admins).await?),
        None => None,
    };
    let mut report = render(
        &args,
        &results,
        &memory,
        &peaks,
        &idle_rows,
        (before, pooled_rss, pooled),
    );
    if let Some((commands, usec, decided)) = redis_per_call {
        let _ = writeln!(
            report,
            "\nRedis (tollgate+redis): {commands} script calls for {decided} decided calls, {:.3} per call (INFO commandstats: evalsha + eval; every other command is the script's own); Redis's own time per script {:.1} µs (commandstats usec / calls)",
            commands as f64 / decided.max(1) as f64,
            usec as f64 / commands.max(1) as f64,
        );
        // What counting in Redis adds to a call, beside what Redis itself spends on it.
        let _ = writeln!(
            report,
            "\n| workload | p50 counting in the pod | p50 counting in Redis | added by Redis | of which Redis's own script |\n|---|---:|---:|---:|---:|"
        );
        for (label, cells) in &results {
            let p50 = |name: &str| {
                cells
                    .iter()
                    .find(|c| c.target == name)
                    .map(|c| c.merged().0.value_at_quantile(0.5))
            };
            if let (Some(local), Some(redis)) = (p50("tollgate"), p50("tollgate+redis")) {
                let _ = writeln!(
                    report,
                    "| {label} | {local} | {redis} | {:+} | {:.1} |",
                    redis as i64 - local as i64,
                    usec as f64 / commands.max(1) as f64,
                );
            }
        }
    }
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("latest.md"), &report)?;
    std::fs::write(args.out.join("latency.svg"), svg(&results))?;
    println!("{report}");
    eprintln!(
        "wrote {} and {}",
        args.out.join("latest.md").display(),
        args.out.join("latency.svg").display()
    );
    drop(procs);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

fn redis_cli(url: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("redis-cli")
        .args(["-u", url])
        .args(args)
        .output()
        .context("running redis-cli")?;
    anyhow::ensure!(out.status.success(), "redis-cli {args:?} failed");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The scripts Redis ran and the µs it spent running them (from `INFO commandstats`), and the
/// calls the Redis-backed proxies decided (from their metrics), since the statistics were reset.
async fn redis_commands_per_call(url: &str, admins: &[u16]) -> anyhow::Result<(u64, u64, u64)> {
    let stats = redis_cli(url, &["info", "commandstats"])?;
    // `cmdstat_evalsha:calls=N,usec=N,usec_per_call=F,...`
    let calls = |name: &str, field: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:")))
            .and_then(|rest| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{field}=")))
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let mut decided = 0u64;
    for &port in admins {
        let mut s = connect(([127, 0, 0, 1], port).into()).await?;
        s.ready().await?;
        let req = Request::get("/metrics")
            .header("host", format!("127.0.0.1:{port}"))
            .body(Full::new(Bytes::new()))?;
        let body = s
            .send_request(req)
            .await?
            .into_body()
            .collect()
            .await?
            .to_bytes();
        for line in String::from_utf8_lossy(&body).lines() {
            if line.starts_with("tollgate_decisions_total{") {
                decided += line
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0) as u64;
            }
        }
    }
    Ok((
        calls("evalsha", "calls") + calls("eval", "calls"),
        calls("evalsha", "usec") + calls("eval", "usec"),
        decided,
    ))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024 / 1024);
    format!("{cores} cores ({cpu}), {mem} GiB")
}

/// Opens `n` sessions through a target, each on its own connection, and holds them open.
async fn open_sessions(t: &Target, n: usize) -> (Vec<(Sender, Option<String>)>, usize) {
    let mut held = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(200) {
        let k = (n - chunk * 200).min(200);
        let mut batch = Vec::new();
        for _ in 0..k {
            let t = t.clone();
            batch.push(tokio::spawn(async move { session(&t).await }));
        }
        for b in batch {
            if let Ok(Ok(s)) = b.await {
                held.push(s);
            }
        }
    }
    let opened = held.len();
    (held, opened)
}

fn render(
    args: &Args,
    results: &[(String, Vec<Cell>)],
    memory: &[(&str, u64)],
    peaks: &[(usize, &str, u64)],
    idle: &[(&str, u64, u64, usize)],
    pooled: (u64, u64, usize),
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Machine: {}. {} rounds x {}s per target, interleaved. Latency in µs; `+` is added over direct in the same run.\n",
        machine(),
        args.rounds,
        args.seconds
    );
    let _ = writeln!(
        out,
        "| workload | target | p50 | p99 | p99.9 | req/s | vs direct | +p50 | +p99 | CPU µs/call (proxy) | CPU µs/call (upstream) | errors |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (label, cells) in results {
        let direct = cells
            .iter()
            .find(|c| c.target == "direct")
            .map(Cell::merged);
        let (dp50, dp99, drps) = direct.as_ref().map_or((0, 0, 1.0), |(h, n, _, s, _, _)| {
            (
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                *n as f64 / s,
            )
        });
        for c in cells {
            let (h, n, e, s, cpu, up) = c.merged();
            let rps = n as f64 / s;
            let per_call = |ticks: u64| {
                if n == 0 {
                    0.0
                } else {
                    ticks as f64 / ticks_per_second() * 1e6 / n as f64
                }
            };
            let (p50, p99) = (h.value_at_quantile(0.5), h.value_at_quantile(0.99));
            let proxy_cpu = if c.target == "direct" {
                "—".to_string()
            } else {
                format!("{:.0}", per_call(cpu))
            };
            let added = |a: u64, b: u64| {
                if c.target == "direct" {
                    "—".to_string()
                } else {
                    format!("{:+}", a as i64 - b as i64)
                }
            };
            let _ = writeln!(
                out,
                "| {label} | {} | {p50} | {p99} | {} | {rps:.0} | {:.0}% | {} | {} | {proxy_cpu} | {:.0} | {e} |",
                c.target,
                h.value_at_quantile(0.999),
                rps / drps * 100.0,
                added(p50, dp50),
                added(p99, dp99),
                per_call(up),
            );
        }
    }
    // Tollgate's CPU split: its HTTP stack alone (the passthrough target) and the rest, which
    // is reading and deciding the messages.
    let cpu = |cells: &[Cell], target: &str| {
        cells
            .iter()
            .find(|c| c.target == target)
            .map(Cell::merged)
            .filter(|m| m.1 > 0)
            .map(|(_, n, _, _, cpu, _)| cpu as f64 / ticks_per_second() * 1e6 / n as f64)
    };
    let _ = writeln!(
        out,
        "\nWhere Tollgate's CPU goes, µs per call: its HTTP stack alone (`passthrough`: the same connection handling and upstream client, forwarding without reading), and deciding (the rest); `floor` is the least an HTTP/1 proxy costs (httparse, no checks, JSON answers only):\n"
    );
    let _ = writeln!(
        out,
        "| workload | nginx | floor | tollgate | HTTP stack | deciding |\n|---|---:|---:|---:|---:|---:|"
    );
    for (label, cells) in results {
        if let (Some(t), Some(p)) = (cpu(cells, "tollgate"), cpu(cells, "passthrough")) {
            let other = |name| cpu(cells, name).map_or("—".into(), |n| format!("{n:.0}"));
            let _ = writeln!(
                out,
                "| {label} | {} | {} | {t:.0} | {p:.0} | {:.0} |",
                other("nginx"),
                other("floor"),
                t - p
            );
        }
    }
    let _ = writeln!(
        out,
        "\nPeak RSS under load (SSE upstream run, process and children):\n"
    );
    for (name, kb) in memory {
        let _ = writeln!(out, "- {name}: {:.1} MiB", *kb as f64 / 1024.0);
    }
    let mut concs: Vec<usize> = peaks.iter().map(|p| p.0).collect();
    concs.dedup();
    if !concs.is_empty() {
        let _ = writeln!(
            out,
            "\nPeak RSS by concurrency, MiB (tools/call SSE; each column includes the ones before):\n"
        );
        let head: Vec<String> = concs.iter().map(|c| format!("c={c}")).collect();
        let _ = writeln!(out, "| target | {} |", head.join(" | "));
        let _ = writeln!(out, "|---|{}", "---:|".repeat(concs.len()));
        for (name, _) in memory {
            let cells: Vec<String> = concs
                .iter()
                .map(|c| {
                    peaks
                        .iter()
                        .find(|p| p.0 == *c && p.1 == *name)
                        .map_or("—".into(), |p| format!("{:.1}", p.2 as f64 / 1024.0))
                })
                .collect();
            let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
        }
    }
    let _ = writeln!(
        out,
        "\nIdle RSS holding {} sessions, each on its own open connection:\n",
        args.sessions
    );
    for (name, before, rss, opened) in idle {
        let _ = writeln!(
            out,
            "- {name}: {:.1} MiB with {opened} open ({:.1} MiB before; {:.1} KiB per connection)",
            *rss as f64 / 1024.0,
            *before as f64 / 1024.0,
            (rss.saturating_sub(*before)) as f64 / (*opened).max(1) as f64
        );
    }
    let _ = writeln!(
        out,
        "\nTollgate holding {} sessions over 100 connections: {:.1} MiB ({:.1} MiB before).",
        pooled.2,
        pooled.1 as f64 / 1024.0,
        pooled.0 as f64 / 1024.0
    );
    out
}

fn svg(results: &[(String, Vec<Cell>)]) -> String {
    let colors = [
        ("direct", "#4c78a8"),
        ("nginx", "#72b7b2"),
        ("tollgate", "#f58518"),
        ("tollgate (hyper http1)", "#ff9da6"),
        ("passthrough", "#bab0ac"),
        ("floor", "#54a24b"),
        ("mcp-proxy", "#e45756"),
    ];
    let panel_w = 300.0;
    let panel_h = 220.0;
    let cols = 4usize;
    let rows = results.len().div_ceil(cols);
    let (w, h) = (panel_w * cols as f64, panel_h * rows as f64 + 40.0);
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='11'>\n<rect width='100%' height='100%' fill='white'/>\n"
    );
    for (i, (name, c)) in colors.iter().enumerate() {
        let _ = writeln!(
            s,
            "<rect x='{}' y='10' width='12' height='12' fill='{c}'/><text x='{}' y='21'>{name}</text>",
            10.0 + i as f64 * 110.0,
            26.0 + i as f64 * 110.0
        );
    }
    for (k, (label, cells)) in results.iter().enumerate() {
        let (px, py) = (
            (k % cols) as f64 * panel_w,
            40.0 + (k / cols) as f64 * panel_h,
        );
        let stats: Vec<(&str, [u64; 3])> = cells
            .iter()
            .map(|c| {
                let (h, ..) = c.merged();
                (
                    c.target,
                    [
                        h.value_at_quantile(0.5),
                        h.value_at_quantile(0.99),
                        h.value_at_quantile(0.999),
                    ],
                )
            })
            .collect();
        let max = stats
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let _ = writeln!(
            s,
            "<text x='{}' y='{}' font-weight='bold'>{label} (µs, log)</text>",
            px + 10.0,
            py + 12.0
        );
        let plot_h = panel_h - 60.0;
        let scale = |v: u64| ((v.max(1) as f64).ln() / max.ln().max(1.0)) * plot_h;
        for (q, qname) in ["p50", "p99", "p99.9"].iter().enumerate() {
            let gx = px + 20.0 + q as f64 * 90.0;
            let _ = writeln!(
                s,
                "<text x='{}' y='{}'>{qname}</text>",
                gx + 20.0,
                py + panel_h - 25.0
            );
            for (j, (t, v)) in stats.iter().enumerate() {
                let color = colors
                    .iter()
                    .find(|(n, _)| n == t)
                    .map_or("#999", |(_, c)| c);
                let bh = scale(v[q]);
                // Up to six targets share a quantile's 90 px.
                let step = 84.0 / stats.len().max(1) as f64;
                let x = gx + j as f64 * step;
                let y = py + 20.0 + plot_h - bh;
                let _ = writeln!(
                    s,
                    "<rect x='{x:.1}' y='{y:.1}' width='{:.1}' height='{bh:.1}' fill='{color}'><title>{t} {qname}: {} µs</title></rect>",
                    step - 2.0,
                    v[q]
                );
            }
        }
    }
    s.push_str("</svg>\n");
    s
}
