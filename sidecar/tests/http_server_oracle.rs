//! hyper as the oracle for the inbound server: the same request bytes (pipelined requests,
//! well-formed, then mutated at random) go to both servers over real sockets, and each notes
//! the requests its handler is handed. Ours must hand over the same requests as hyper, field
//! for field and byte for byte, or stop earlier by refusing: it never reads a request hyper
//! would not, and never reads one differently. Stopping earlier is the strictness it is
//! built for (two Host fields, Content-Length lists, framing two ways).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate_sidecar::http::server;

mod oracle;
#[path = "oracle/servers.rs"]
mod servers;
use oracle::{Rng, env_or, mutate};
use servers::{Log, Noting, Seen, serve_hyper};

/// Sends `bytes` and reads until the server closes or goes quiet.
async fn exchange(addr: SocketAddr, bytes: &[u8]) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(bytes).await;
    let mut buf = [0; 4096];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(250), stream.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
    }
}

async fn ours(bytes: &[u8]) -> Vec<Seen> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Noting::default();
    let h = handler.clone();
    let server = tokio::spawn(async move {
        let (_stop, stopping) = tokio::sync::watch::channel(false);
        let (stream, peer) = listener.accept().await.unwrap();
        server::serve(stream, peer, h, stopping).await;
    });
    exchange(addr, bytes).await;
    server.abort();
    handler.0.lock().clone()
}

async fn hypers(bytes: &[u8]) -> Vec<Seen> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Log::default();
    let l = log.clone();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        serve_hyper(stream, l).await;
    });
    exchange(addr, bytes).await;
    server.abort();
    log.lock().clone()
}

/// A well-formed request of a random shape.
fn request(rng: &mut Rng) -> Vec<u8> {
    let body: Vec<u8> = (0..rng.below(200))
        .map(|_| b"abcdefghij{}\":, \n"[rng.below(16)])
        .collect();
    let method = rng.pick(&["POST", "POST", "GET", "DELETE", "PUT", "OPTIONS"]);
    let target = rng.pick(&["/mcp", "/", "/mcp?session=1&x=%20", "http://t/abs"]);
    let version = rng.pick(&["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]);
    let mut out = format!("{method} {target} {version}\r\n").into_bytes();
    if version == "HTTP/1.1" || rng.below(2) == 0 {
        out.extend_from_slice(rng.pick(&["Host: t\r\n", "host: t:80\r\n"]).as_bytes());
    }
    for _ in 0..rng.below(4) {
        let field = rng.pick(&[
            "Content-Type: application/json",
            "Accept: application/json, text/event-stream",
            "mcp-session-id: abc",
            "Mcp-Protocol-Version: 2025-06-18",
            "connection: keep-alive",
            "x-empty:",
            "x-tab:\tv\t",
            "expect: 100-continue",
        ]);
        out.extend_from_slice(format!("{field}\r\n").as_bytes());
    }
    match rng.below(4) {
        0 if version == "HTTP/1.1" => {
            let te = rng.pick(&["transfer-encoding: chunked", "Transfer-Encoding: Chunked"]);
            out.extend_from_slice(format!("{te}\r\n\r\n").as_bytes());
            let mut at = 0;
            while at < body.len() {
                let n = (1 + rng.below(60)).min(body.len() - at);
                let ext = rng.pick(&["", "", ";a=b", ";a=\"q\""]);
                out.extend_from_slice(format!("{n:x}{ext}\r\n").as_bytes());
                out.extend_from_slice(&body[at..at + n]);
                out.extend_from_slice(b"\r\n");
                at += n;
            }
            let trailer = rng.pick(&["", "", "x-t: 1\r\n"]);
            out.extend_from_slice(format!("0\r\n{trailer}\r\n").as_bytes());
        }
        0..=2 => {
            let name = rng.pick(&["content-length", "Content-Length", "CONTENT-LENGTH"]);
            out.extend_from_slice(format!("{name}: {}\r\n\r\n", body.len()).as_bytes());
            out.extend_from_slice(&body);
        }
        _ => out.extend_from_slice(b"\r\n"),
    }
    out
}

/// The last request of every case: whoever reads it closes the connection.
const LAST: &[u8] = b"GET /last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbound_server_never_reads_a_request_differently_from_hyper() {
    // More cases, and other seeds, for a longer search:
    // TOLLGATE_ORACLE_CASES=100000 TOLLGATE_ORACLE_SEED=7 cargo test --test http_server_oracle
    let cases: usize = env_or("TOLLGATE_ORACLE_CASES", 1500);
    let mut rng = Rng(env_or("TOLLGATE_ORACLE_SEED", 0x2545_f491_4f6c_dd1d));
    let wires: Vec<Vec<u8>> = (0..cases)
        .map(|case| {
            let mut wire = request(&mut rng);
            if rng.below(3) == 0 {
                wire.extend(request(&mut rng));
            }
            let mut wire = if case % 3 == 0 {
                wire
            } else {
                mutate(&mut rng, wire)
            };
            wire.extend_from_slice(LAST);
            wire
        })
        .collect();
    let results: Vec<(Vec<u8>, Vec<Seen>, Vec<Seen>)> =
        futures_util::stream::iter(wires.into_iter().map(|wire| async move {
            let (a, b) = tokio::join!(ours(&wire), hypers(&wire));
            (wire, a, b)
        }))
        .buffer_unordered(64)
        .collect()
        .await;
    let (mut agreed, mut stricter, mut requests) = (0, Vec::new(), 0);
    let mut lenient = Vec::new();
    for (wire, a, b) in results {
        requests += a.len();
        if a == b {
            agreed += 1;
        } else if a.len() < b.len() && b[..a.len()] == a[..] {
            stricter.push(String::from_utf8_lossy(&wire).into_owned());
        } else {
            lenient.push(format!(
                "{:?}\n  ours:  {a:?}\n  hyper: {b:?}",
                String::from_utf8_lossy(&wire)
            ));
        }
    }
    assert!(
        lenient.is_empty(),
        "read differently from hyper ({} cases):\n{}",
        lenient.len(),
        lenient[..lenient.len().min(6)].join("\n")
    );
    // Both sides of the comparison must have been exercised: most cases agree, and they
    // agree on requests actually handed over, not only on refusals.
    assert!(agreed > cases / 2, "agreed on only {agreed} of {cases}");
    assert!(requests > cases, "only {requests} requests handed over");
    eprintln!(
        "agreed on {agreed} of {cases} ({requests} requests handed over); refused {} that hyper read, e.g.:",
        stricter.len()
    );
    for wire in stricter.iter().take(20) {
        eprintln!("  {wire:?}");
    }
}
