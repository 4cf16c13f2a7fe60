//! The app's probes, run for the kubelet on the admin port (redirect mode).
//!
//! ```text
//! kubelet ─ GET :ADMIN/app-health/server/readiness ─> sidecar ─ GET localhost:8000/health ─> app
//!         <─ 200 if the app answered 200..399, 503 with why otherwise ─┘   (the sidecar's own
//!                                                                          connections are not
//!                                                                          redirected)
//! ```
//!
//! Injection hands the original probes over in `TOLLGATE_APP_PROBES` ([`AppProbes`]); a probe
//! that is not there is a 404, so a typo never passes as healthy.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_api::contract::{AppProbe, AppProbes};

/// The most of an answer read to find its status line.
const MAX_HEAD: usize = 16 * 1024;

/// Reads `TOLLGATE_APP_PROBES`, naming what is wrong with it.
pub fn parse(text: &str) -> Result<AppProbes, String> {
    serde_json::from_str(text).map_err(|e| format!("not a JSON map of app probes: {e}"))
}

/// What one run of a probe found: healthy or not, and why, in words for the kubelet's events.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub healthy: bool,
    pub said: String,
}

fn outcome(healthy: bool, said: String) -> Outcome {
    Outcome { healthy, said }
}

/// Runs `probe` against the app on loopback.
pub async fn run(probe: &AppProbe) -> Outcome {
    let (port, timeout) = match probe {
        AppProbe::HttpGet {
            port,
            timeout_seconds,
            ..
        }
        | AppProbe::TcpSocket {
            port,
            timeout_seconds,
        } => (*port, Duration::from_secs((*timeout_seconds).max(1).into())),
    };
    let attempt = async {
        // Both loopbacks, as the proxy's upstream: the app may be bound to either family.
        let mut stream = crate::http::client::connect(&format!("localhost:{port}"))
            .await
            .map_err(|e| format!("cannot connect to the app on port {port}: {e}"))?;
        let AppProbe::HttpGet { path, headers, .. } = probe else {
            return Ok(outcome(
                true,
                format!("the app accepted a connection on port {port}"),
            ));
        };
        stream
            .write_all(&request(port, path, headers))
            .await
            .map_err(|e| format!("cannot send the probe to the app: {e}"))?;
        let status = read_status(&mut stream).await?;
        Ok(outcome(
            (200..400).contains(&status),
            format!("the app answered GET {path} with HTTP {status}"),
        ))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(found)) => found,
        Ok(Err(why)) => outcome(false, why),
        Err(_) => outcome(
            false,
            format!("the app did not answer within {}s", timeout.as_secs()),
        ),
    }
}

/// The request the kubelet would send (its own User-Agent and Accept unless the probe sets them).
fn request(port: u16, path: &str, headers: &[(String, String)]) -> Vec<u8> {
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut out = format!("GET {path} HTTP/1.1\r\n");
    if !has("host") {
        out.push_str(&format!("Host: localhost:{port}\r\n"));
    }
    if !has("user-agent") {
        out.push_str("User-Agent: kube-probe/tollgate\r\n");
    }
    if !has("accept") {
        out.push_str("Accept: */*\r\n");
    }
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

async fn read_status(stream: &mut TcpStream) -> Result<u16, String> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        // The status line is all a probe needs: httparse reports its code once it has it.
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut answer = httparse::Response::new(&mut headers);
        let parsed = answer.parse(&buf);
        match (answer.code, parsed) {
            (Some(code), _) => return Ok(code),
            (None, Ok(_)) => {}
            (None, Err(e)) => return Err(format!("the app's answer is not HTTP: {e}")),
        }
        if buf.len() >= MAX_HEAD {
            return Err(format!(
                "the app's answer has no status line in its first {MAX_HEAD} bytes"
            ));
        }
        let mut chunk = [0u8; 1024];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("cannot read the app's answer: {e}"))?;
        if n == 0 {
            return Err("the app closed the connection without answering".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn app(answer: &'static [u8]) -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = vec![0u8; 4096];
            let n = s.read(&mut got).await.unwrap();
            s.write_all(answer).await.unwrap();
            got.truncate(n);
            got
        });
        (port, task)
    }

    fn get(port: u16, path: &str) -> AppProbe {
        AppProbe::HttpGet {
            port,
            path: path.into(),
            headers: vec![("X-Probe".into(), "yes".into())],
            timeout_seconds: 1,
        }
    }

    #[tokio::test]
    async fn an_http_probe_passes_on_2xx_and_3xx_and_sends_the_probes_path_and_headers() {
        let (port, seen) = app(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        let found = run(&get(port, "/health?deep=1")).await;
        assert!(found.healthy, "{found:?}");
        let request = String::from_utf8(seen.await.unwrap()).unwrap();
        assert!(
            request.starts_with("GET /health?deep=1 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("X-Probe: yes\r\n"));
        let (port, _) = app(b"HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n").await;
        assert!(run(&get(port, "/")).await.healthy);
    }

    #[tokio::test]
    async fn an_http_probe_fails_on_4xx_5xx_garbage_silence_and_a_closed_port() {
        let (port, _) = app(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let found = run(&get(port, "/health")).await;
        assert!(
            !found.healthy && found.said.contains("HTTP 503"),
            "{found:?}"
        );
        let (port, _) = app(b"SSH-2.0-OpenSSH\r\n").await;
        assert!(!run(&get(port, "/")).await.healthy);
        let (port, _) = app(b"").await;
        assert!(!run(&get(port, "/")).await.healthy);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent = listener.local_addr().unwrap().port();
        let found = run(&get(silent, "/")).await;
        assert!(
            !found.healthy && found.said.contains("within 1s"),
            "{found:?}"
        );
        drop(listener);
        assert!(!run(&get(silent, "/")).await.healthy, "nothing listens");
    }

    #[tokio::test]
    async fn a_tcp_probe_passes_when_the_app_accepts_and_fails_when_nothing_listens() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let probe = AppProbe::TcpSocket {
            port,
            timeout_seconds: 1,
        };
        assert!(run(&probe).await.healthy);
        drop(listener);
        assert!(!run(&probe).await.healthy);
    }

    #[test]
    fn the_probes_are_read_from_their_json_and_a_bad_one_is_named() {
        let probes = parse(r#"{"server/readiness": {"httpGet": {"port": 8000, "path": "/health", "timeoutSeconds": 1}},
                                "server/liveness": {"tcpSocket": {"port": 8000, "timeoutSeconds": 2}}}"#)
        .unwrap();
        assert_eq!(
            probes["server/liveness"],
            AppProbe::TcpSocket {
                port: 8000,
                timeout_seconds: 2
            }
        );
        assert!(
            parse(r#"{"x": {"exec": {}}}"#)
                .unwrap_err()
                .contains("not a JSON map of app probes")
        );
    }
}
