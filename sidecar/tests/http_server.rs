//! The inbound HTTP/1.1 server over raw sockets, so every byte is seen: keep-alive with idle
//! connections holding no buffer, pipelining, heads split across packets, slow readers of
//! large answers, `Connection: close`, HTTP/2, draining on shutdown; and what makes it a
//! boundary: requests that could be read two ways are refused before the handler sees them,
//! a body the handler does not read is never read as a request, a client that leaves abandons
//! its request.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tollgate_sidecar::http::BoxBody;
use tollgate_sidecar::http::BoxError;
use tollgate_sidecar::http::deadline::Timeouts;
use tollgate_sidecar::http::server::{self, Handler, RequestBody, Served};

/// Answers `METHOD PATH BODY`, and notes `METHOD PATH` of every request it is handed.
/// `/large` answers 4 MiB; `/wait` waits for `release`; `/ignore` answers without reading the
/// body; `/stream` answers in four pieces of unknown total length; `/forever` never answers
/// and notes when it is abandoned.
#[derive(Clone, Default)]
struct Echo {
    release: Arc<Notify>,
    seen: Arc<Mutex<Vec<String>>>,
    abandoned: Arc<AtomicBool>,
    /// Deadlines other than the defaults.
    timeouts: Option<Timeouts>,
}

const LARGE: usize = 4 << 20;

struct Abandoned(Arc<AtomicBool>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn full(bytes: impl Into<Bytes>) -> BoxBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

impl Handler for Echo {
    type Body = BoxBody;

    fn timeouts(&self) -> Timeouts {
        self.timeouts.unwrap_or_default()
    }

    fn call(
        &self,
        req: Request<RequestBody>,
        _peer: SocketAddr,
    ) -> impl Future<Output = Response<BoxBody>> + Send + 'static + use<> {
        let this = self.clone();
        async move {
            let (parts, body) = req.into_parts();
            let path = parts.uri.path().to_string();
            this.seen.lock().push(format!("{} {path}", parts.method));
            match path.as_str() {
                "/ignore" => return Response::new(full("ignored")),
                "/forever" => {
                    let _guard = Abandoned(this.abandoned.clone());
                    std::future::pending::<()>().await;
                }
                "/stream" => {
                    // Small pieces are gathered, a large one is written beside them.
                    let pieces = [&b"one "[..], b"two ", &[b'z'; 5000], b"three"]
                        .map(|p| Ok::<_, BoxError>(Frame::data(Bytes::copy_from_slice(p))));
                    let body = StreamBody::new(futures_util::stream::iter(pieces));
                    return Response::new(body.boxed());
                }
                _ => {}
            }
            let body = body.collect().await.expect("request body").to_bytes();
            let answer = match path.as_str() {
                "/large" => Bytes::from(vec![b'x'; LARGE]),
                _ => {
                    if path == "/wait" {
                        this.release.notified().await;
                    }
                    let body = String::from_utf8_lossy(&body);
                    Bytes::from(format!("{} {path} {body}", parts.method))
                }
            };
            let mut resp = Response::new(full(answer));
            if parts.method == Method::HEAD {
                resp.headers_mut()
                    .insert("content-length", "11".parse().unwrap());
            }
            resp
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
    server_with(Echo::default()).await
}

/// A server whose every deadline is `every`.
async fn impatient(every: Duration) -> Server {
    server_with(Echo {
        timeouts: Some(Timeouts {
            first_byte: every,
            head: every,
            body: every,
            idle: every,
            write: every,
            ..Timeouts::default()
        }),
        ..Echo::default()
    })
    .await
}

async fn server_with(handler: Echo) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopping) = watch::channel(false);
    let (tx, accepted) = tokio::sync::mpsc::unbounded_channel();
    let h = handler.clone();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let task = tokio::spawn(server::serve(stream, peer, h.clone(), stopping.clone()));
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

    fn seen(&self) -> Vec<String> {
        self.handler.seen.lock().clone()
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

async fn read_head(reader: &mut BufReader<TcpStream>) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).await.unwrap();
        assert!(n > 0, "connection closed before a full head: {head:?}");
        if line == "\r\n" {
            return head;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
}

/// Reads one response with a `content-length`.
async fn answer(reader: &mut BufReader<TcpStream>) -> Answer {
    let head = read_head(reader).await;
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

async fn send(c: &mut BufReader<TcpStream>, bytes: &[u8]) {
    c.get_mut().write_all(bytes).await.unwrap();
}

/// Everything until the server closes; `None` if it does not within 5 s.
async fn rest(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut rest = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut rest)).await {
        Ok(Ok(_)) => Some(rest),
        _ => None,
    }
}

async fn closed(reader: &mut BufReader<TcpStream>) -> bool {
    rest(reader).await.is_some_and(|r| r.is_empty())
}

#[tokio::test]
async fn an_idle_keep_alive_connection_holds_no_buffer_and_is_served_again() {
    let mut s = server().await;
    let mut c = connect(s.addr).await;
    for i in 0..3 {
        send(&mut c, &post("/mcp", &format!("call {i}"))).await;
        assert_eq!(text(&mut c).await, format!("POST /mcp call {i}"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(c);
    let served = s.served().await;
    assert_eq!(
        served,
        Served {
            http2: false,
            requests: 3,
            idle_waits: 3,
        }
    );
}

#[tokio::test]
async fn pipelined_requests_and_a_head_split_across_packets_are_each_answered_in_order() {
    let mut s = server().await;
    let mut c = connect(s.addr).await;
    let third = post("/third", "3");
    let mut burst = [post("/first", "1"), post("/second", "2")].concat();
    burst.extend_from_slice(&third[..20]);
    send(&mut c, &burst).await;
    assert_eq!(text(&mut c).await, "POST /first 1");
    assert_eq!(text(&mut c).await, "POST /second 2");
    // The third's head waits, half read.
    tokio::time::sleep(Duration::from_millis(100)).await;
    send(&mut c, &third[20..]).await;
    assert_eq!(text(&mut c).await, "POST /third 3");
    drop(c);
    assert_eq!(s.served().await.requests, 3);
}

#[tokio::test]
async fn a_slow_reader_gets_a_large_answer_whole_and_keeps_its_connection() {
    let mut s = server().await;
    let mut c = connect(s.addr).await;
    send(&mut c, &post("/large", "")).await;
    // Far more than the socket buffers hold: the server is still writing when it is done.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = answer(&mut c).await;
    assert_eq!(a.body.len(), LARGE);
    assert!(a.body.iter().all(|b| *b == b'x'));
    assert!(!a.head.contains("connection: close"), "{}", a.head);
    send(&mut c, &post("/mcp", "after")).await;
    assert_eq!(text(&mut c).await, "POST /mcp after");
    drop(c);
    assert_eq!(s.served().await.requests, 2);
}

#[tokio::test]
async fn a_client_that_asks_to_close_is_closed_after_its_answer() {
    let mut s = server().await;
    let mut c = connect(s.addr).await;
    send(
        &mut c,
        b"POST /mcp HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx",
    )
    .await;
    let a = answer(&mut c).await;
    assert!(a.head.contains("connection: close"), "{}", a.head);
    assert!(a.head.contains("\r\ndate: "), "{}", a.head);
    assert!(closed(&mut c).await, "the server closes the connection");
    assert_eq!(s.served().await.requests, 1);
}

#[tokio::test]
async fn http_1_0_closes_unless_asked_to_keep_alive() {
    let s = server().await;
    let mut c = connect(s.addr).await;
    send(
        &mut c,
        b"POST /a HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx",
    )
    .await;
    let a = answer(&mut c).await;
    assert!(a.head.contains("connection: keep-alive"), "{}", a.head);
    send(&mut c, b"GET /b HTTP/1.0\r\n\r\n").await;
    let a = answer(&mut c).await;
    assert_eq!(a.body, b"GET /b ");
    assert!(a.head.contains("connection: close"), "{}", a.head);
    assert!(closed(&mut c).await);
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
    send(&mut idle, &post("/mcp", "1")).await;
    assert_eq!(text(&mut idle).await, "POST /mcp 1");
    let idle_task = s.accepted.recv().await.unwrap();

    let mut busy = connect(s.addr).await;
    send(&mut busy, &post("/wait", "2")).await;
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

#[tokio::test]
async fn requests_that_could_be_smuggled_are_refused_before_the_handler_sees_them() {
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
    let cases = [
        (
            format!(
                "POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            "400",
            "both by Transfer-Encoding and by Content-Length",
        ),
        (
            format!(
                "POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
            "400",
            "Content-Length",
        ),
        (
            format!("POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n\r\n{smuggled}"),
            "400",
            "not chunked",
        ),
        (
            format!(
                "POST /a HTTP/1.1\r\nHost: t\r\nX: a\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            "400",
            "cannot be read",
        ),
    ];
    for (wire, status, reason) in cases {
        let s = server().await;
        let mut c = connect(s.addr).await;
        send(&mut c, wire.as_bytes()).await;
        let a = answer(&mut c).await;
        assert!(
            a.head.starts_with(&format!("http/1.1 {status}")),
            "{wire:?}: {}",
            a.head
        );
        let body = String::from_utf8(a.body).unwrap();
        assert!(body.contains(reason), "{wire:?}: {body}");
        // The handler supplies a refusal's body; this one keeps the default, plain text.
        assert!(body.starts_with("Bad request: "), "{body}");
        assert!(a.head.contains("content-type: text/plain"), "{}", a.head);
        assert!(closed(&mut c).await, "{wire:?}: the connection is closed");
        assert!(s.seen().is_empty(), "{wire:?} reached the handler");
    }
}

#[tokio::test]
async fn a_chunked_body_arriving_in_pieces_is_read_whole_after_100_continue() {
    let mut s = server().await;
    let mut c = connect(s.addr).await;
    send(
        &mut c,
        b"POST /mcp HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await;
    let interim = read_head(&mut c).await;
    assert_eq!(interim, "http/1.1 100 continue\r\n");
    for piece in [
        "5;ext=1\r\nhel",
        "lo\r\n",
        "6\r\n worl",
        "d\r\n0\r\nx-trailer: 1\r\n\r\n",
    ] {
        send(&mut c, piece.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(text(&mut c).await, "POST /mcp hello world");
    send(&mut c, &post("/next", "kept")).await;
    assert_eq!(text(&mut c).await, "POST /next kept");
    drop(c);
    assert_eq!(s.served().await.requests, 2);
}

#[tokio::test]
async fn a_body_the_handler_does_not_read_is_never_read_as_a_request() {
    let s = server().await;
    let mut c = connect(s.addr).await;
    let inner = "GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
    let body = format!("{inner}{}", " ".repeat(64));
    send(
        &mut c,
        format!(
            "POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    // The body arrives after the handler has answered without reading it.
    let a = answer(&mut c).await;
    assert_eq!(a.body, b"ignored");
    assert!(a.head.contains("connection: close"), "{}", a.head);
    let _ = c.get_mut().write_all(body.as_bytes()).await;
    let after = rest(&mut c).await.unwrap_or_default();
    assert!(after.is_empty(), "{}", String::from_utf8_lossy(&after));
    assert_eq!(s.seen(), ["POST /ignore"]);
}

#[tokio::test]
async fn a_client_that_leaves_abandons_its_request() {
    let s = server().await;
    let mut c = connect(s.addr).await;
    send(&mut c, b"GET /forever HTTP/1.1\r\nHost: t\r\n\r\n").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!s.handler.abandoned.load(Ordering::SeqCst));
    drop(c);
    for _ in 0..100 {
        if s.handler.abandoned.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the request was still being served 5 s after its client left");
}

#[tokio::test]
async fn an_answer_of_unknown_length_is_chunked_for_http_1_1_and_closed_for_http_1_0() {
    let s = server().await;
    let mut c = connect(s.addr).await;
    send(&mut c, b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let head = read_head(&mut c).await;
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let large = "z".repeat(5000);
    let want = format!("4\r\none \r\n4\r\ntwo \r\n1388\r\n{large}\r\n5\r\nthree\r\n0\r\n\r\n");
    let mut chunked = vec![0; want.len()];
    c.read_exact(&mut chunked).await.unwrap();
    assert_eq!(String::from_utf8(chunked).unwrap(), want);
    send(
        &mut c,
        b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    )
    .await;
    let head = read_head(&mut c).await;
    assert!(head.contains("connection: close"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert_eq!(
        String::from_utf8(rest(&mut c).await.unwrap()).unwrap(),
        format!("one two {large}three")
    );
}

#[tokio::test]
async fn a_head_request_is_told_the_length_but_sent_no_body() {
    let s = server().await;
    let mut c = connect(s.addr).await;
    send(&mut c, b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let head = read_head(&mut c).await;
    assert!(head.contains("content-length: 11"), "{head}");
    send(&mut c, &post("/next", "x")).await;
    // Had a body followed the HEAD answer, this would read it instead.
    assert_eq!(text(&mut c).await, "POST /next x");
}

#[tokio::test]
async fn an_answer_to_a_large_body_left_unread_reaches_a_client_that_sends_it_all_first() {
    let s = server().await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let size = 4 << 20;
    let mut request =
        format!("POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n").into_bytes();
    request.resize(request.len() + size, b'x');
    // As most clients do: the whole request, then the answer. The server answers without
    // reading the body and closes; closing with unread bytes resets the connection, and a
    // reset discards the answer the client has not read yet, unless the server lingers.
    let sent = c.write_all(&request).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(sent.is_ok(), "sending failed: {sent:?}");
    assert!(
        matches!(read, Ok(Ok(_))),
        "reading the answer failed: {read:?}"
    );
    assert!(got.ends_with("\r\n\r\nignored"), "{got}");
    assert!(got.contains("connection: close"), "{got}");
    assert_eq!(s.seen(), ["POST /ignore"]);
}

#[tokio::test(start_paused = true)]
async fn a_head_that_stops_arriving_is_answered_408_and_closed() {
    // The clock is paused and jumps ahead whenever every task waits, so the 30 s pass at once.
    let s = server().await;
    let mut c = connect(s.addr).await;
    send(&mut c, b"POST /mcp HTTP/1.1\r\nHost: t\r\nContent-Le").await;
    let a = tokio::time::timeout(Duration::from_secs(60), answer(&mut c))
        .await
        .expect("an answer within 60 s");
    assert!(a.head.starts_with("http/1.1 408"), "{}", a.head);
    let body = String::from_utf8(a.body).unwrap();
    assert!(body.contains("did not arrive within 30 s"), "{body}");
    assert!(closed(&mut c).await);
    assert!(s.seen().is_empty());
}

#[tokio::test]
async fn http1_that_starts_like_the_http2_preface_is_read_by_our_rules_alone() {
    let mut s = server().await;
    // One byte first: before, a `P` alone handed the connection to hyper's HTTP/1 server.
    for (request, why) in [
        (
            "POST /mcp HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
            "Content-Length",
        ),
        ("POST /mcp HTTP/1.1\r\nContent-Length: 1\r\n\r\na", "Host"),
        (
            "POST /mcp HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "both",
        ),
        ("PRI * HTTP/2.0\r\n\r\nXY\r\n\r\n", "cannot be read"),
    ] {
        let mut c = connect(s.addr).await;
        send(&mut c, &request.as_bytes()[..1]).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        send(&mut c, &request.as_bytes()[1..]).await;
        let a = answer(&mut c).await;
        assert!(
            a.head.starts_with("http/1.1 400"),
            "{request:?}: {}",
            a.head
        );
        assert!(
            String::from_utf8_lossy(&a.body).contains(why),
            "{request:?}"
        );
        assert!(!s.served().await.http2, "{request:?}");
    }
    assert!(s.seen().is_empty(), "the handler saw none of them");
}

#[tokio::test]
async fn http2_is_served_once_its_whole_preface_has_come_in_pieces() {
    let mut s = server().await;
    let mut c = connect(s.addr).await;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    for piece in preface.chunks(5) {
        send(&mut c, piece).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    send(&mut c, &[0, 0, 0, 4, 0, 0, 0, 0, 0]).await; // an empty SETTINGS frame
    let mut frame = [0u8; 9];
    c.read_exact(&mut frame).await.unwrap();
    assert_eq!(
        frame[3], 4,
        "the server answers with its SETTINGS frame: {frame:?}"
    );
    drop(c);
    assert!(s.served().await.http2);
}

#[tokio::test]
async fn connections_that_send_nothing_stop_inside_a_head_or_idle_are_closed_at_their_deadlines() {
    let every = Duration::from_millis(300);
    let mut s = impatient(every).await;
    for (sent, status) in [
        (&b""[..], None),
        (b"P", None),
        (b"PRI * HTTP/2.0\r\n", None),
        (
            b"POST /mcp HTTP/1.1\r\nHost: a\r\nContent-",
            Some("http/1.1 408"),
        ),
    ] {
        let started = std::time::Instant::now();
        let mut c = connect(s.addr).await;
        send(&mut c, sent).await;
        let rest = rest(&mut c).await.expect("closed by the server");
        assert!(started.elapsed() >= every, "{sent:?}");
        let rest = String::from_utf8_lossy(&rest).to_ascii_lowercase();
        match status {
            None => assert_eq!(rest, "", "{sent:?}"),
            Some(status) => assert!(rest.starts_with(status), "{sent:?}: {rest}"),
        }
        s.served().await;
    }
    // A kept-alive connection waits for its next request only as long as `idle`.
    let mut c = connect(s.addr).await;
    send(&mut c, &post("/mcp", "1")).await;
    assert_eq!(text(&mut c).await, "POST /mcp 1");
    let started = std::time::Instant::now();
    assert!(closed(&mut c).await);
    assert!(started.elapsed() >= every);
}

#[tokio::test]
async fn an_agent_that_stops_reading_loses_its_connection_at_the_write_deadline() {
    let mut s = impatient(Duration::from_millis(300)).await;
    let mut c = connect(s.addr).await;
    send(&mut c, b"GET /large HTTP/1.1\r\nHost: a\r\n\r\n").await;
    // Not reading: the server's write makes no progress once the socket buffers are full.
    tokio::time::timeout(Duration::from_secs(10), s.served())
        .await
        .expect("the server gave up on the connection");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got)).await;
    assert!(
        got.len() < LARGE,
        "the answer was cut off: {} bytes",
        got.len()
    );
}

#[tokio::test]
async fn the_http2_preface_method_and_targets_that_are_neither_paths_nor_absolute_uris_are_refused()
{
    // The fuzz target http_framing found `PRI * HTTP/1.0` handed to the handler, where hyper
    // refuses it: fuzz/artifacts/http_framing/crash-26696c7d84770f8e537d5be781e45dc7b6b0522d.
    let mut s = server().await;
    for request in [
        "PRI * HTTP/1.0\r\n\r\n",
        "PRI * HTTP/1.1\r\nHost: a\r\n\r\n",
        "PRI /mcp HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST * HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        // fuzz/artifacts/http_framing/crash-35a164fa95f096a46b9038f3683f08b5ce7ae492
        "PREEEE*EEI ~* HTTP/1.0\r\n\r\n",
        "GET ~* HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET host:80 HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        let mut c = connect(s.addr).await;
        send(&mut c, request.as_bytes()).await;
        let a = answer(&mut c).await;
        assert!(
            a.head.starts_with("http/1.1 400"),
            "{request:?}: {}",
            a.head
        );
        s.served().await;
    }
    let mut c = connect(s.addr).await;
    send(
        &mut c,
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(text(&mut c).await, "OPTIONS * ");
    assert_eq!(s.seen(), ["OPTIONS *"]);
}
