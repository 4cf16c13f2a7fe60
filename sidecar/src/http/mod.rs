//! HTTP for the proxy: the agents' side (an HTTP/1.1 server, hyper for HTTP/2), the MCP
//! server's side (an HTTP/1.1 client), the RFC 9112 head and framing both read, media types
//! and deadlines.
//!
//! This layer knows HTTP and nothing above it: no JSON-RPC, no policy. It is generic over the
//! body a handler answers with, and a request it refuses before any handler sees it gets the
//! body its [`server::Handler`] supplies. Nothing outside it parses HTTP.
//!
//! # Threat model
//!
//! Both HTTP/1.1 sides are Tollgate's own (about 3,200 lines, for speed and for one reading of
//! a message shared by both), and a fault here is a call smuggled past policy. What an attacker
//! controls, and what must hold:
//!
//! - **An agent's bytes** (`server.rs`). The request the policy decides must be the request the
//!   MCP server runs. So a request is read one way or refused before the policy sees it:
//!   framing by both `Transfer-Encoding` and `Content-Length`, codings other than `chunked`,
//!   lengths that disagree, no `Host` or two, folded lines; a body not read to its end closes
//!   the connection, so its rest is never read as a request. Heads are bounded (64 KiB, 128
//!   fields) and every wait has a deadline, so a slow client holds a socket and nothing more.
//! - **The MCP server's bytes** (`client.rs`): an answer is read one way or the call fails
//!   (502); the proxy never guesses where an answer ends, and never sends a POST twice.
//! - **Both sides read alike** (`head.rs`, `framing.rs`): `Content-Length`,
//!   `Transfer-Encoding` and `Connection` are each read in one place, so the two sides cannot
//!   disagree on a message.
//!
//! How it is held: hyper is the oracle. The suites send the same random and mutated bytes to
//! ours and to hyper's and require ours to read each exactly as hyper does, or refuse it
//! (`sidecar/tests/http_*_oracle.rs`); the fuzzer `fuzz/fuzz_targets/http_framing.rs` does
//! the same with coverage guidance, for a minute in every CI run (`tests/run.sh`). Should a
//! fault be found anyway, `tollgate proxy --http1 hyper` ([`server::Http1Server`]) reads
//! agents' requests with hyper's server instead, at the cost the benchmark shows (memory: hyper
//! keeps its buffers on an idle connection). hyper reads every message one way too, but it is
//! more lenient than Tollgate's server: it accepts a request with no `Host` or two, other
//! `Expect`s, `CONNECT` and `*` targets, where Tollgate's refuses them; what it reads is what
//! the policy decides and what is forwarded, so none of these passes a call around the policy.
//! Its own refusals have no JSON-RPC body, and a kept-alive connection closes after the head
//! deadline rather than the idle one.

pub mod client;
pub mod deadline;
pub(crate) mod framing;
pub(crate) mod head;
pub mod media;
pub mod server;

/// The error of a body: whatever failed while it was read.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body of any kind, boxed: what the proxy answers with and what the client streams out.
pub type BoxBody = http_body_util::combinators::BoxBody<bytes::Bytes, BoxError>;

/// A fixed-seed generator of numbers below a bound (xorshift), for tests that try many cases:
/// every run tries the same ones.
#[cfg(test)]
pub(crate) fn numbers(mut seed: u64) -> impl FnMut(usize) -> usize {
    move |below| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % below as u64) as usize
    }
}
