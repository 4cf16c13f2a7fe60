//! The upstream client against a scripted server on a real socket: what it sends, how it
//! reads each kind of answer, and when it uses a connection again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate_sidecar::http::client::{Error, Outgoing, Upstream, UpstreamBody};

/// What the server does with the next request on a connection.
#[derive(Clone, Copy)]
enum Reply {
    /// Answers with these bytes and waits for the next request.
    Send(&'static str),
    /// Answers, then closes the connection.
    SendAndClose(&'static str),
    /// Closes the connection without answering.
    Close,
}

/// A server that answers the n-th connection by the n-th script, and records every request.
struct Scripted {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<(usize, String)>>>,
    accepted: Arc<Mutex<usize>>,
}

impl Scripted {
    async fn start(scripts: Vec<Vec<Reply>>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(Mutex::new(0));
        let (reqs, acc) = (requests.clone(), accepted.clone());
        tokio::spawn(async move {
            for (n, script) in scripts.into_iter().enumerate() {
                let (stream, _) = listener.accept().await.unwrap();
                *acc.lock() += 1;
                tokio::spawn(serve(n, stream, script, reqs.clone()));
            }
        });
        Scripted {
            addr,
            requests,
            accepted,
        }
    }

    fn client(&self) -> Arc<Upstream> {
        Upstream::new(&self.addr.to_string())
    }

    fn requests(&self) -> Vec<(usize, String)> {
        self.requests.lock().clone()
    }

    fn accepted(&self) -> usize {
        *self.accepted.lock()
    }
}

async fn serve(
    conn: usize,
    mut stream: TcpStream,
    script: Vec<Reply>,
    requests: Arc<Mutex<Vec<(usize, String)>>>,
) {
    let mut buf = Vec::new();
    for reply in script {
        let Some(request) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        requests.lock().push((conn, request));
        match reply {
            Reply::Send(bytes) => stream.write_all(bytes.as_bytes()).await.unwrap(),
            Reply::SendAndClose(bytes) => {
                stream.write_all(bytes.as_bytes()).await.unwrap();
                return;
            }
            Reply::Close => return,
        }
    }
    // Held open until the client lets go.
    let _ = stream.read_to_end(&mut buf).await;
}

/// One whole request (head, and a Content-Length or chunked body) off the stream.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(len) = request_len(buf) {
            let request = String::from_utf8(buf.drain(..len).collect()).unwrap();
            return Some(request);
        }
        let mut chunk = [0; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn request_len(buf: &[u8]) -> Option<usize> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut fields);
    let head = match req.parse(buf).unwrap() {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    let field = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    if field("transfer-encoding").is_some() {
        let end = buf[head..].windows(5).position(|w| w == b"0\r\n\r\n")?;
        return Some(head + end + 5);
    }
    let len: usize = field("content-length").map_or(0, |v| v.parse().unwrap());
    (buf.len() >= head + len).then_some(head + len)
}

fn get(path: &str) -> http::request::Parts {
    Request::get(path).body(()).unwrap().into_parts().0
}

fn post(path: &str) -> http::request::Parts {
    Request::post(path)
        .header("content-type", "application/json")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

/// A test that would wait forever (a body read past its end, a head never sent) fails.
async fn in_time<T>(what: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), what)
        .await
        .expect("no answer in 10 s")
}

async fn send(
    client: &Arc<Upstream>,
    parts: &http::request::Parts,
    body: Outgoing,
) -> Result<Response<UpstreamBody>, Error> {
    in_time(client.send(parts, body)).await
}

/// A GET without a body, answered.
async fn fetch(client: &Arc<Upstream>, path: &str) -> Response<UpstreamBody> {
    send(client, &get(path), Outgoing::Full(Bytes::new()))
        .await
        .unwrap()
}

async fn body_of(resp: Response<UpstreamBody>) -> String {
    let bytes = in_time(resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

const OK_HELLO: &str = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";

#[tokio::test]
async fn answers_with_a_length_are_read_and_their_connection_is_used_again() {
    let server = Scripted::start(vec![vec![Reply::Send(OK_HELLO), Reply::Send(OK_HELLO)]]).await;
    let client = server.client();
    for _ in 0..2 {
        let resp = send(
            &client,
            &post("/mcp"),
            Outgoing::Full(Bytes::from_static(b"{}")),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(body_of(resp).await, "hello");
        assert_eq!(client.idle_count(), 1);
    }
    assert_eq!(server.accepted(), 1);
    let (_, first) = &server.requests()[0];
    assert!(
        first.starts_with("POST /mcp HTTP/1.1\r\n"),
        "request line: {first:?}"
    );
    assert!(first.contains(&format!("host: {}\r\n", server.addr)));
    assert!(first.contains("content-length: 2\r\n"));
    assert!(first.ends_with("\r\n\r\n{}"));
}

#[tokio::test]
async fn chunked_answers_are_decoded_and_their_connection_is_used_again() {
    let chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/event-stream\r\n\r\n\
                   6;x=y\r\nevent:\r\n9\r\n message\n\r\n0\r\nx-trailer: t\r\n\r\n";
    let server = Scripted::start(vec![vec![Reply::Send(chunked), Reply::Send(OK_HELLO)]]).await;
    let client = server.client();
    let resp = fetch(&client, "/sse").await;
    assert_eq!(body_of(resp).await, "event: message\n");
    let resp = fetch(&client, "/").await;
    assert_eq!(body_of(resp).await, "hello");
    assert_eq!(server.accepted(), 1);
    let (_, first) = &server.requests()[0];
    assert!(
        !first.contains("content-length") && !first.contains("transfer-encoding"),
        "a GET without a body states no framing: {first:?}"
    );
}

#[tokio::test]
async fn interim_answers_are_skipped() {
    let answer = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
                  HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok";
    let server = Scripted::start(vec![vec![Reply::Send(answer)]]).await;
    let resp = send(
        &server.client(),
        &post("/"),
        Outgoing::Full(Bytes::from_static(b"x")),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 201);
    assert!(resp.headers().get("link").is_none());
    assert_eq!(body_of(resp).await, "ok");
}

#[tokio::test]
async fn head_204_and_304_answers_have_no_body_whatever_their_fields_say() {
    let server = Scripted::start(vec![vec![
        Reply::Send("HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n"),
        Reply::Send("HTTP/1.1 204 No Content\r\ncontent-length: 50\r\n\r\n"),
        Reply::Send("HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n"),
        Reply::Send(OK_HELLO),
    ]])
    .await;
    let client = server.client();
    let head = Request::head("/").body(()).unwrap().into_parts().0;
    let resp = send(&client, &head, Outgoing::Full(Bytes::new()))
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-length"], "50");
    assert_eq!(body_of(resp).await, "");
    for status in [204, 304] {
        let resp = fetch(&client, "/").await;
        assert_eq!(resp.status(), status);
        assert_eq!(body_of(resp).await, "");
    }
    // Had any of them been read as having a body, this answer would be lost in it.
    let resp = fetch(&client, "/").await;
    assert_eq!(body_of(resp).await, "hello");
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn an_answer_ended_by_close_is_read_to_the_close_and_its_connection_dropped() {
    let server = Scripted::start(vec![
        vec![Reply::SendAndClose("HTTP/1.1 200 OK\r\n\r\nuntil the end")],
        vec![Reply::Send(OK_HELLO)],
    ])
    .await;
    let client = server.client();
    let resp = fetch(&client, "/").await;
    assert_eq!(body_of(resp).await, "until the end");
    assert_eq!(client.idle_count(), 0);
    let resp = fetch(&client, "/").await;
    assert_eq!(body_of(resp).await, "hello");
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn connection_close_and_double_framing_keep_a_connection_out_of_the_pool() {
    let server = Scripted::start(vec![
        vec![Reply::Send(
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello",
        )],
        vec![Reply::Send(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )],
        vec![Reply::Send("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloEXTRA")],
        vec![Reply::Send(OK_HELLO)],
    ])
    .await;
    let client = server.client();
    for _ in 0..4 {
        let resp = fetch(&client, "/").await;
        assert_eq!(body_of(resp).await, "hello");
    }
    assert_eq!(
        server.accepted(),
        4,
        "each of the first three answers must leave its connection unused"
    );
    assert_eq!(client.idle_count(), 1);
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_not_used() {
    let server = Scripted::start(vec![
        vec![Reply::SendAndClose(OK_HELLO)],
        vec![Reply::Send(OK_HELLO)],
    ])
    .await;
    let client = server.client();
    let resp = send(
        &client,
        &post("/"),
        Outgoing::Full(Bytes::from_static(b"1")),
    )
    .await
    .unwrap();
    assert_eq!(body_of(resp).await, "hello");
    assert_eq!(client.idle_count(), 1, "the answer allowed keep-alive");
    // Let the close arrive.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let resp = send(
        &client,
        &post("/"),
        Outgoing::Full(Bytes::from_static(b"2")),
    )
    .await
    .unwrap();
    assert_eq!(body_of(resp).await, "hello");
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].0, 1,
        "the second request went on a new connection"
    );
}

#[tokio::test]
async fn a_post_is_never_sent_twice_but_a_get_is_retried_when_a_pooled_connection_dies_unanswered()
{
    let server = Scripted::start(vec![
        vec![Reply::Send(OK_HELLO), Reply::Close],
        vec![Reply::Send(OK_HELLO), Reply::Close],
        vec![Reply::Send(OK_HELLO)],
    ])
    .await;
    let client = server.client();
    let resp = fetch(&client, "/").await;
    body_of(resp).await;
    let err = send(
        &client,
        &post("/"),
        Outgoing::Full(Bytes::from_static(b"call")),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Closed), "{err}");

    let resp = fetch(&client, "/").await;
    body_of(resp).await;
    let resp = fetch(&client, "/again").await;
    assert_eq!(body_of(resp).await, "hello");

    let seen: Vec<(usize, String)> = server
        .requests()
        .into_iter()
        .map(|(conn, r)| (conn, r.lines().next().unwrap().to_string()))
        .collect();
    let line = |conn, l: &str| (conn, l.to_string());
    assert_eq!(
        seen,
        [
            line(0, "GET / HTTP/1.1"),
            line(0, "POST / HTTP/1.1"),
            line(1, "GET / HTTP/1.1"),
            line(1, "GET /again HTTP/1.1"),
            line(2, "GET /again HTTP/1.1"),
        ]
    );
}

#[tokio::test]
async fn malformed_answers_are_errors() {
    for answer in [
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "SSH-2.0-OpenSSH\r\n\r\n",
    ] {
        let server = Scripted::start(vec![vec![Reply::Send(answer)]]).await;
        let result = send(&server.client(), &get("/"), Outgoing::Full(Bytes::new())).await;
        assert!(
            matches!(result, Err(Error::Response(_))),
            "{answer:?} gave {:?}",
            result.map(|r| r.status())
        );
    }
}

#[tokio::test]
async fn a_body_cut_short_or_badly_chunked_is_an_error_not_a_shorter_body() {
    for answer in [
        Reply::SendAndClose("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello"),
        // The bad size line comes after good data: it must not be skipped.
        Reply::Send(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n5\r\nworld\r\n0\r\n\r\n",
        ),
    ] {
        let server = Scripted::start(vec![vec![answer]]).await;
        let client = server.client();
        let resp = fetch(&client, "/").await;
        assert!(in_time(resp.into_body().collect()).await.is_err());
        assert_eq!(client.idle_count(), 0);
    }
}

#[tokio::test]
async fn request_framing_is_the_clients_own_whatever_the_fields_said() {
    let server = Scripted::start(vec![vec![
        Reply::Send(OK_HELLO),
        Reply::Send(OK_HELLO),
        Reply::Send(OK_HELLO),
    ]])
    .await;
    let client = server.client();
    // Fields that lie about the body are replaced by the body's own framing.
    let lying = Request::post("/")
        .header("content-length", "999")
        .header("transfer-encoding", "chunked")
        .header("expect", "100-continue")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let resp = send(&client, &lying, Outgoing::Full(Bytes::from_static(b"abc")))
        .await
        .unwrap();
    body_of(resp).await;
    // A streamed body of unknown size goes chunked; one of known size with its length.
    let chunks = futures_util::stream::iter(
        ["ab", "", "cde"]
            .map(|c| Ok::<_, tollgate_sidecar::http::BoxError>(Frame::data(Bytes::from(c)))),
    );
    let stream = StreamBody::new(chunks).boxed();
    let resp = send(&client, &post("/"), Outgoing::Stream(stream))
        .await
        .unwrap();
    body_of(resp).await;
    let sized = http_body_util::Full::new(Bytes::from_static(b"0123456789"))
        .map_err(|never| match never {})
        .boxed();
    let resp = send(&client, &post("/"), Outgoing::Stream(sized))
        .await
        .unwrap();
    body_of(resp).await;

    let requests = server.requests();
    // The whole request, to the byte: a substring check once failed on the server's port
    // (`host: 127.0.0.1:42999` holds "999").
    assert_eq!(
        requests[0].1,
        format!(
            "POST / HTTP/1.1\r\nhost: {}\r\ncontent-length: 3\r\n\r\nabc",
            server.addr
        )
    );
    let second = &requests[1].1;
    assert!(
        second.contains("transfer-encoding: chunked\r\n"),
        "{second:?}"
    );
    assert!(
        second.ends_with("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"),
        "{second:?}"
    );
    let third = &requests[2].1;
    assert!(third.contains("content-length: 10\r\n") && third.ends_with("0123456789"));
}

#[tokio::test]
async fn an_unreachable_server_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let result = send(
        &Upstream::new(&addr.to_string()),
        &get("/"),
        Outgoing::Full(Bytes::new()),
    )
    .await;
    assert!(matches!(result, Err(Error::Connect(_))));
}

#[tokio::test]
async fn a_body_dropped_before_its_end_closes_its_connection() {
    let server = Scripted::start(vec![
        vec![Reply::Send(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )],
        vec![Reply::Send(OK_HELLO)],
    ])
    .await;
    let client = server.client();
    let resp = fetch(&client, "/stream").await;
    let mut body = resp.into_body();
    let first = in_time(body.frame())
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(&first[..], b"hello");
    drop(body);
    assert_eq!(client.idle_count(), 0);
    let resp = fetch(&client, "/").await;
    assert_eq!(body_of(resp).await, "hello");
    assert_eq!(server.accepted(), 2);
}
