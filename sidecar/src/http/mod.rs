//! HTTP for the proxy: the agents' side (an HTTP/1.1 server, hyper for HTTP/2), the MCP
//! server's side (an HTTP/1.1 client), the RFC 9112 head and framing both read, media types
//! and deadlines.
//!
//! This layer knows HTTP and nothing above it: no JSON-RPC, no policy. It is generic over the
//! body a handler answers with, and a request it refuses before any handler sees it gets the
//! body its [`server::Handler`] supplies.

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
