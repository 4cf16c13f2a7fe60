//! MCP's messages: JSON-RPC 2.0 read strictly (one reading or none), server-sent events split
//! and written, tool names read as servers read them.
//!
//! Pure functions over bytes and text: no sockets, no HTTP heads, no policy.

pub mod era;
pub mod jsonrpc;
pub mod sse;
pub mod strict;
pub mod tool_def;
pub(crate) mod tool_name;
