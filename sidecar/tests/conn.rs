//! An inbound connection gives hyper's state back while it idles, and loses nothing doing so:
//! keep-alive, pipelining, heads split across packets, slow readers of large answers,
//! `Connection: close`, HTTP/2, and draining on shutdown. Raw sockets, so every byte is seen.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tollgate_sidecar::conn::{self, Handler, Served};
use tollgate_sidecar::proxy::ProxyBody;

/// Answers `METHOD PATH BODY`; `/large` answers 4 MiB; `/wait` waits for `release`.
#[derive(Clone, Default)]
struct Echo {
    release: Arc<Notify>,
}

const LARGE: usize = 4 << 20;

impl Handler for Echo {
    type Body = ProxyBody;

    fn call(
        &self,
        req: Request<Incoming>,
        _peer: SocketAddr,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static + use<> {
        let release = self.release.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.expect("request body").to_bytes();
            let answer = match parts.uri.path() {
                "/large" => Bytes::from(vec![b'x'; LARGE]),
                path => {
                    if path == "/wait" {
                        release.notified().await;
                    }
                    let body = String::from_utf8_lossy(&body);
                    Bytes::from(format!("{} {path} {body}", parts.method))
                }
            };
            Response::new(Full::new(answer).map_err(|never| match never {}).boxed())
        }
    }
}

struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    handler: Echo,
    accepted: tokio::sync::mpsc::UnboundedReceiver<JoinHandle<Served>>,
}

async fn server() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopping) = watch::channel(false);
    let handler = Echo::default();
    let (tx, accepted) = tokio::sync::mpsc::unbounded_channel();
    let h = handler.clone();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let task = tokio::spawn(conn::serve(stream, peer, h.clone(), stopping.clone()));
            if tx.send(task).is_err() {
                return;
            }
        }
    });
    Server {
        addr,
        stop,
        handler,
        accepted,
    }
}

impl Server {
    /// How the next accepted connection was served, once it has ended.
    async fn served(&mut self) -> Served {
        let task = self.accepted.recv().await.expect("a connection");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the connection ends")
            .expect("the connection task")
    }
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

struct Answer {
    head: String,
    body: Vec<u8>,
}

/// Reads one response with a `content-length`.
async fn answer(reader: &mut BufReader<TcpStream>) -> Answer {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).await.unwrap();
        assert!(n > 0, "connection closed before a full head: {head:?}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("content-length")
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0; len];
    reader.read_exact(&mut body).await.unwrap();
    Answer { head, body }
}

async fn text(reader: &mut BufReader<TcpStream>) -> String {
    let a = answer(reader).await;
    assert!(a.head.starts_with("http/1.1 200"), "{}", a.head);
    String::from_utf8(a.body).unwrap()
}

async fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    BufReader::new(TcpStream::connect(addr).await.unwrap())
}

async fn closed(reader: &mut BufReader<TcpStream>) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut rest)).await,
        Ok(Ok(0))
    )
}

#[tokio::test]
async fn an_idle_keep_alive_connection_gives_back_hyper_and_is_served_again() {
    let mut s = server().await;
    let mut c = connect(s.addr).await;
    for i in 0..3 {
        c.get_mut()
            .write_all(&post("/mcp", &format!("call {i}")))
            .await
            .unwrap();
        assert_eq!(text(&mut c).await, format!("POST /mcp call {i}"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(c);
    let served = s.served().await;
    assert_eq!(
        served,
        Served {
            http2: false,
            hand_offs: 3
        }
    );
}

#[tokio::test]
async fn pipelined_requests_and_a_head_split_across_packets_survive_the_hand_off() {
    let mut s = server().await;
    let mut c = connect(s.addr).await;
    let third = post("/third", "3");
    let mut burst = [post("/first", "1"), post("/second", "2")].concat();
    burst.extend_from_slice(&third[..20]);
    c.get_mut().write_all(&burst).await.unwrap();
    assert_eq!(text(&mut c).await, "POST /first 1");
    assert_eq!(text(&mut c).await, "POST /second 2");
    // The third's head waits, half read, across a hand-off.
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.get_mut().write_all(&third[20..]).await.unwrap();
    assert_eq!(text(&mut c).await, "POST /third 3");
    drop(c);
    assert!(s.served().await.hand_offs >= 2);
}

#[tokio::test]
async fn a_slow_reader_gets_a_large_answer_whole_and_keeps_its_connection() {
    let mut s = server().await;
    let mut c = connect(s.addr).await;
    c.get_mut().write_all(&post("/large", "")).await.unwrap();
    // Far more than the socket buffers hold: hyper is still writing when the body is done.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = answer(&mut c).await;
    assert_eq!(a.body.len(), LARGE);
    assert!(a.body.iter().all(|b| *b == b'x'));
    assert!(!a.head.contains("connection: close"), "{}", a.head);
    c.get_mut().write_all(&post("/mcp", "after")).await.unwrap();
    assert_eq!(text(&mut c).await, "POST /mcp after");
    drop(c);
    assert_eq!(s.served().await.hand_offs, 2);
}

#[tokio::test]
async fn a_client_that_asks_to_close_is_closed_after_its_answer() {
    let mut s = server().await;
    let mut c = connect(s.addr).await;
    c.get_mut()
        .write_all(
            b"POST /mcp HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx",
        )
        .await
        .unwrap();
    let a = answer(&mut c).await;
    assert!(a.head.contains("connection: close"), "{}", a.head);
    assert!(closed(&mut c).await, "the server closes the connection");
    assert_eq!(s.served().await.hand_offs, 0);
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_still_served() {
    let mut s = server().await;
    let stream = TcpStream::connect(s.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(conn);
    let req = Request::post("http://test/mcp")
        .body(Full::new(Bytes::from_static(b"h2")))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"POST /mcp h2");
    drop(send);
    let _ = driver.await;
    assert!(s.served().await.http2);
}

#[tokio::test]
async fn stopping_closes_idle_connections_at_once_and_lets_a_busy_one_answer() {
    let mut s = server().await;
    let mut idle = connect(s.addr).await;
    idle.get_mut().write_all(&post("/mcp", "1")).await.unwrap();
    assert_eq!(text(&mut idle).await, "POST /mcp 1");
    let idle_task = s.accepted.recv().await.unwrap();

    let mut busy = connect(s.addr).await;
    busy.get_mut().write_all(&post("/wait", "2")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.stop.send(true).unwrap();

    assert!(closed(&mut idle).await, "the idle connection is closed");
    let _ = idle_task.await;
    s.handler.release.notify_one();
    let a = answer(&mut busy).await;
    assert_eq!(a.body, b"POST /wait 2");
    assert!(a.head.contains("connection: close"), "{}", a.head);
    assert!(
        closed(&mut busy).await,
        "the busy connection closes after its answer"
    );
}
