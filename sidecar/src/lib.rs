//! Tollgate's data plane: an MCP reverse proxy that decides every JSON-RPC message before the
//! server sees it, and the `tollgate` command's `check` and `import`.
//!
//! Each folder is a layer, and says in its module doc what it must not know:
//!
//! ```text
//! cli ─┬─ check / import ─────────────────────────────> tollgate_api (load, validate, decide)
//!      ├─ init-redirect ─> redirect (the pod's iptables rules, then exit)
//!      ├─ approvals list | approve | deny ─> a proxy's approvals listener
//!      └─ proxy ─> serve (listeners, admin port, shutdown)
//!
//! http/       HTTP/1.1 server and client, their RFC 9112 framing, media types, deadlines
//!             (no JSON-RPC, no policy)
//! mcp/        JSON-RPC messages read strictly, SSE events, tool names (no HTTP, no policy)
//! proxy/      the pipeline: admit ─> decide ─> forward ─> inspect the answers
//! policy/     the policy in force and its sources (file, operator stream), counters, callers
//! telemetry/  the audit log and metrics
//! approvals/  calls held for a person, their decisions, and the listener people decide on
//!             (no HTTP of the proxy's, no policy)
//! ```
//!
//! A call: `http::server` reads the request ─> `proxy::admit` (origin, caller, body, headers)
//! ─> `proxy::decide` (each message against `policy`, counters reserved) ─> `proxy::forward`
//! (`http::client` to the MCP server) ─> `proxy::inspect` (tool lists filtered, counters settled)
//! ─> `http::server` writes the answer.
#![forbid(unsafe_code)]

pub mod app_probes;
pub mod approvals;
pub mod cli;
pub mod clock;
pub mod http;
pub mod mcp;
pub mod policy;
pub mod policytest;
pub mod proxy;
pub mod redirect;
pub mod serve;
pub mod starter;
pub mod telemetry;

/// What the fuzz targets (`fuzz/`) reach that the crate keeps to itself.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::mcp::tool_name::tool_name;
}
