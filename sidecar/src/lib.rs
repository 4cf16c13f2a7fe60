//! Tollgate's data plane: an MCP reverse proxy that decides every JSON-RPC message before the
//! server sees it, and the `tollgate` command's `check` and `import`.
//!
//! ```text
//! cli ─┬─ check / import ──────────────> tollgate_api (load, validate, decide)
//!      └─ proxy ─> server (listeners, shutdown) ─> conn ─> proxy (decide, forward) ─> upstream
//!                                                   │  (conn and upstream: own HTTP/1.1, their
//!                                                   │   framing in h1; hyper for HTTP/2)
//!                                                   ├─ jsonrpc, sse, inspect, tool_name (messages)
//!                                                   ├─ policy (file or control-plane stream, fail closed)
//!                                                   ├─ counters, identity
//!                                                   └─ audit, metrics
//! ```
#![forbid(unsafe_code)]

pub mod audit;
pub mod cli;
pub mod conn;
pub mod control;
pub mod counters;
pub mod deadline;
mod h1;
pub mod identity;
pub mod inspect;
pub mod jsonrpc;
pub mod media;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod server;
pub mod sse;
pub mod strict;
mod tool_name;
pub mod upstream;

/// What the fuzz targets (`fuzz/`) reach that the crate keeps to itself.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::tool_name::tool_name;
}

/// The error of a response body: whatever failed while it was read.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
