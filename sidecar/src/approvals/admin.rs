//! The approvals listener of a standalone proxy: loopback by default, every request with the
//! bearer token from `--approvals-token-file`.
//!
//! ```text
//! GET  /v1/approvals                     {"items": [Approval…]}
//! GET  /v1/approvals/NAME                Approval
//! POST /v1/approvals/NAME/approve        {"reason"?: "...", "by"?: "..."}  -> Approval
//! POST /v1/approvals/NAME/deny           {"reason": "...", "by"?: "..."}   -> Approval
//! GET  /v1/pins                          {"items": [Held…]}  the tools held back by their pin
//! POST /v1/pins/accept                   {"tool": ..., "digest": ..., "by"?: ...} -> Held
//!                                        (that definition, the one reviewed, is the pin)
//! POST /v1/pins/reject                   {"tool": ..., "by"?: ...} -> Held  (it stays held)
//!
//! A tool's name is the server's to choose, so it travels in the body, never in the path.
//! ```
//!
//! Whoever holds the token may decide; `by` is recorded as they give it (the cluster path
//! stamps the API server's own record of the user instead).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

use super::{Approvals, DecideError};
use crate::http::BoxBody;
use crate::policy::pins::{PinError, Pins};

/// The path every approvals route is under.
pub const PREFIX: &str = "/v1/approvals";
/// The path every pins route is under.
pub const PINS: &str = "/v1/pins";

/// The token in `path`, made (random, readable by its owner only) if the file does not exist.
pub fn token(path: &Path) -> anyhow::Result<String> {
    use anyhow::Context;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            // Whoever can read the file can approve; whoever can write it can choose the token.
            // As ssh does with a private key: a file other users may read or write is refused.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(path)
                    .with_context(|| format!("reading {}", path.display()))?
                    .permissions()
                    .mode();
                anyhow::ensure!(
                    mode & 0o077 == 0,
                    "{} is open to other users (mode {:04o}): anyone who reads it may approve calls; \
                     make it readable by its owner only (chmod 600 {})",
                    path.display(),
                    mode & 0o7777,
                    path.display()
                );
            }
            let token = text.trim().to_string();
            anyhow::ensure!(
                token.len() >= 16,
                "{} holds {} characters; an approvals token needs at least 16",
                path.display(),
                token.len()
            );
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut raw = [0u8; 32];
            std::io::Read::read_exact(
                &mut std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?,
                &mut raw,
            )
            .context("reading /dev/urandom")?;
            let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes())?;
            tracing::info!(file = %path.display(), "approvals token created");
            Ok(token)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Serves the approvals and pins API until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    approvals: Arc<Approvals>,
    pins: Arc<Pins>,
    token: String,
) {
    let token: Arc<str> = token.into();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (approvals, pins, token) = (approvals.clone(), pins.clone(), token.clone());
        let service = service_fn(move |req: Request<Incoming>| {
            let (approvals, pins, token) = (approvals.clone(), pins.clone(), token.clone());
            async move {
                Ok::<_, std::convert::Infallible>(handle(req, &approvals, &pins, &token).await)
            }
        });
        tokio::spawn(
            builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned(),
        );
    }
}

/// A person's decision on a held tool.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PinBody {
    tool: String,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    by: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecideBody {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    by: Option<String>,
}

async fn handle(
    req: Request<Incoming>,
    approvals: &Approvals,
    pins: &Pins,
    token: &str,
) -> Response<BoxBody> {
    if !authorized(req.headers(), token) {
        return answer(
            StatusCode::UNAUTHORIZED,
            &json!({ "error": "this needs the approvals token: Authorization: Bearer <token from --approvals-token-file>" }),
        );
    }
    let path = req.uri().path().to_string();
    if let Some(rest) = path.strip_prefix(PINS) {
        let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
        return match (req.method().clone(), parts.as_slice()) {
            (Method::GET, []) => answer(StatusCode::OK, &json!({ "items": pins.held() })),
            (Method::POST, [verb @ ("accept" | "reject")]) => {
                let accept = *verb == "accept";
                let shape = r#"{"tool": ..., "digest": ..., "by": ...}"#;
                let body: PinBody = match read_json(req, shape, None).await {
                    Ok(b) => b,
                    Err(resp) => return resp,
                };
                let by = body
                    .by
                    .as_deref()
                    .unwrap_or("holder of the approvals token");
                let done = match (accept, &body.digest) {
                    (true, Some(digest)) => pins.accept(&body.tool, digest, by),
                    (true, None) => {
                        return answer(
                            StatusCode::BAD_REQUEST,
                            &json!({ "error": "accepting needs the digest of the definition reviewed (tollgate pins list)" }),
                        );
                    }
                    (false, _) => pins.reject(&body.tool, by),
                };
                match done {
                    Ok(held) => answer(StatusCode::OK, &json!(held)),
                    Err(e @ PinError::NotHeld(_)) => {
                        answer(StatusCode::NOT_FOUND, &json!({ "error": e.to_string() }))
                    }
                    Err(e) => answer(StatusCode::CONFLICT, &json!({ "error": e.to_string() })),
                }
            }
            _ => answer(
                StatusCode::NOT_FOUND,
                &json!({ "error": format!("no route for {} {path}", req.method()) }),
            ),
        };
    }
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return answer(
            StatusCode::NOT_FOUND,
            &json!({ "error": format!("no route for {path}") }),
        );
    };
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    match (req.method().clone(), parts.as_slice()) {
        (Method::GET, []) => {
            #[derive(serde::Serialize)]
            struct Items {
                items: Vec<super::Approval>,
            }
            answer(
                StatusCode::OK,
                &Items {
                    items: approvals.list(),
                },
            )
        }
        (Method::GET, [name]) => match approvals.get(name) {
            Some(a) => answer(StatusCode::OK, &a),
            None => not_found(name),
        },
        (Method::POST, [name, verb @ ("approve" | "deny")]) => {
            let (name, approve) = (name.to_string(), *verb == "approve");
            let shape = r#"{"reason": ..., "by": ...}"#;
            let body = match read_json(req, shape, Some(DecideBody::default())).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            let by = body
                .by
                .as_deref()
                .unwrap_or("holder of the approvals token");
            match approvals.decide(&name, approve, by, body.reason.as_deref()) {
                Ok(a) => answer(StatusCode::OK, &json!(a)),
                Err(DecideError::NotFound(_)) => not_found(&name),
                Err(e @ DecideError::Decided { .. }) => {
                    answer(StatusCode::CONFLICT, &json!({ "error": e.to_string() }))
                }
                Err(e @ DecideError::NoReason) => {
                    answer(StatusCode::BAD_REQUEST, &json!({ "error": e.to_string() }))
                }
            }
        }
        _ => answer(
            StatusCode::NOT_FOUND,
            &json!({ "error": format!("no route for {} {path}", req.method()) }),
        ),
    }
}

/// A request's JSON body, read as `T`; `shape` says what it must be, in the error. An empty
/// body reads as `empty`, where one is given.
async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    shape: &str,
    empty: Option<T>,
) -> Result<T, Response<BoxBody>> {
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Err(answer(
                StatusCode::BAD_REQUEST,
                &json!({ "error": format!("cannot read the body: {e}") }),
            ));
        }
    };
    if body.is_empty()
        && let Some(empty) = empty
    {
        return Ok(empty);
    }
    serde_json::from_slice(&body).map_err(|e| {
        answer(
            StatusCode::BAD_REQUEST,
            &json!({ "error": format!("the body must be {shape}: {e}") }),
        )
    })
}

/// The bearer token, compared in time that does not depend on where it differs.
fn authorized(headers: &http::HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn not_found(name: &str) -> Response<BoxBody> {
    answer(
        StatusCode::NOT_FOUND,
        &json!({ "error": format!("no approval is named {name:?}") }),
    )
}

fn answer(status: StatusCode, body: &impl serde::Serialize) -> Response<BoxBody> {
    // Written straight from the value: a list of 10,000 approvals as a `Value` tree first
    // would take several times the memory of its text, at every poll of a decider.
    let text = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod token_file_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(mode: u32) -> (tempdir::Dir, std::path::PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("token");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "tollgate-token-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn a_token_file_other_users_may_read_or_write_is_refused_naming_its_mode() {
        for mode in [0o644, 0o640, 0o604, 0o622, 0o660] {
            let (_dir, path) = file(mode);
            let e = token(&path).expect_err(&format!("{mode:o}")).to_string();
            assert!(
                e.contains(&format!("mode {mode:04o}")) && e.contains("chmod 600"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_token_file_only_its_owner_may_read_is_taken() {
        for mode in [0o600, 0o400] {
            let (_dir, path) = file(mode);
            assert_eq!(token(&path).unwrap(), "0123456789abcdef0123");
        }
    }

    #[test]
    fn a_missing_token_file_is_made_readable_by_its_owner_only() {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("new-token");
        let made = token(&path).unwrap();
        assert_eq!(made.len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(token(&path).unwrap(), made, "read back as made");
    }
}
