//! hyper as the oracle for the upstream client: the same answer bytes, mutated at random,
//! go to both clients over real sockets. Wherever hyper reads an answer, ours reads the
//! same status and body or refuses it; ours never reads an answer hyper refuses.

use std::net::SocketAddr;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate_sidecar::http::client::{Outgoing, Upstream};

mod oracle;
use oracle::{Rng, env_or, mutate};

/// What a client made of an answer: its status and body, or that it refused it.
type Reading = Option<(u16, Vec<u8>)>;

/// A server that answers each connection's first request with the next bytes given, then
/// closes its side.
async fn serve_once(answer: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0; 1024];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        let _ = stream.write_all(&answer).await;
        let _ = stream.shutdown().await;
        // Whatever the client sends next is ignored until it closes.
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    addr
}

async fn ours(answer: Vec<u8>) -> Reading {
    let addr = serve_once(answer).await;
    let parts = Request::get("/").body(()).unwrap().into_parts().0;
    let resp = Upstream::new(&addr.to_string())
        .send(&parts, Outgoing::Full(Bytes::new()))
        .await
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, body.to_vec()))
}

async fn hypers(answer: Vec<u8>) -> Reading {
    let addr = serve_once(answer).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, body.to_vec()))
}

/// A well-formed answer of a random shape.
fn answer(rng: &mut Rng) -> Vec<u8> {
    let body: Vec<u8> = (0..rng.below(300))
        .map(|_| b"abcdefghij{}\":, \n"[rng.below(16)])
        .collect();
    let status = rng.pick(&[
        "200 OK",
        "201 Created",
        "204 No Content",
        "404 Not Found",
        "100 Continue\r\n\r\nHTTP/1.1 200 OK",
    ]);
    let version = rng.pick(&["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]);
    let mut out = format!("{version} {status}\r\n").into_bytes();
    for _ in 0..rng.below(3) {
        let field = rng.pick(&[
            "Content-Type: application/json",
            "mcp-session-id: abc",
            "connection: keep-alive",
            "connection: close",
            "x-empty:",
        ]);
        out.extend_from_slice(format!("{field}\r\n").as_bytes());
    }
    match rng.below(4) {
        0 => {
            let name = rng.pick(&["content-length", "Content-Length", "CONTENT-LENGTH"]);
            out.extend_from_slice(format!("{name}: {}\r\n\r\n", body.len()).as_bytes());
            out.extend_from_slice(&body);
        }
        1 | 2 => {
            let te = rng.pick(&[
                "transfer-encoding: chunked",
                "Transfer-Encoding: Chunked",
                "transfer-encoding: gzip, chunked",
            ]);
            out.extend_from_slice(format!("{te}\r\n\r\n").as_bytes());
            let mut at = 0;
            while at < body.len() {
                let n = (1 + rng.below(80)).min(body.len() - at);
                let ext = rng.pick(&["", "", ";a=b", ";a=\"q\"", " ;x"]);
                out.extend_from_slice(format!("{n:x}{ext}\r\n").as_bytes());
                out.extend_from_slice(&body[at..at + n]);
                out.extend_from_slice(b"\r\n");
                at += n;
            }
            let trailer = rng.pick(&["", "", "x-t: 1\r\n"]);
            out.extend_from_slice(format!("0\r\n{trailer}\r\n").as_bytes());
        }
        _ => {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&body);
        }
    }
    out
}

#[tokio::test]
async fn the_upstream_client_never_reads_an_answer_differently_from_hyper() {
    // More cases, and other seeds, for a longer search:
    // TOLLGATE_ORACLE_CASES=100000 TOLLGATE_ORACLE_SEED=7 cargo test --test http_client_oracle
    let cases: usize = env_or("TOLLGATE_ORACLE_CASES", 1500);
    let mut rng = Rng(env_or("TOLLGATE_ORACLE_SEED", 0x9e37_79b9_7f4a_7c15));
    let (mut agreed, mut stricter) = (0, Vec::new());
    let mut lenient = Vec::new();
    for case in 0..cases {
        let well_formed = answer(&mut rng);
        let bytes = if case % 3 == 0 {
            well_formed
        } else {
            mutate(&mut rng, well_formed)
        };
        let (a, b) = tokio::join!(ours(bytes.clone()), hypers(bytes.clone()));
        match (a, b) {
            (a, b) if a == b => agreed += 1,
            (None, Some(_)) => stricter.push(String::from_utf8_lossy(&bytes).into_owned()),
            (a, b) => lenient.push(format!(
                "{:?}\n  ours:  {a:?}\n  hyper: {b:?}",
                String::from_utf8_lossy(&bytes)
            )),
        }
    }
    assert!(
        lenient.is_empty(),
        "read differently from hyper ({} cases):\n{}",
        lenient.len(),
        lenient[..lenient.len().min(8)].join("\n")
    );
    // Both sides of the comparison must have been exercised.
    assert!(agreed > cases * 2 / 3, "agreed on only {agreed} of {cases}");
    eprintln!(
        "agreed on {agreed} of {cases}; refused {} that hyper read:",
        stricter.len()
    );
    for answer in &stricter {
        eprintln!("  {answer:?}");
    }
}
