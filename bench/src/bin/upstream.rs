//! The benchmark's upstream: an rmcp streamable-HTTP MCP server that answers at once, so what
//! the benchmark sees is the proxies' cost, not the server's work.
//!
//! `bench-upstream --listen 127.0.0.1:PORT [--sse] [--tools 500]`: `tools/call` of any
//! `tool_N` echoes its arguments; `tools/list` lists N tools. JSON answers (stateless) by default;
//! with `--sse`, sessions and SSE answers.

use std::borrow::Cow;
use std::sync::Arc;

use clap::Parser;
use rmcp::ErrorData as McpError;
use rmcp::handler::server::ServerHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:18500")]
    listen: std::net::SocketAddr,
    /// Answer with SSE streams instead of JSON.
    #[arg(long)]
    sse: bool,
    /// How many tools `tools/list` returns.
    #[arg(long, default_value_t = 500)]
    tools: usize,
}

#[derive(Clone)]
struct Fast {
    tools: Arc<Vec<Tool>>,
}

impl ServerHandler for Fast {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(self.tools.to_vec()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = request
            .arguments
            .map(serde_json::Value::Object)
            .unwrap_or_default();
        Ok(CallToolResult::success(vec![ContentBlock::text(format!(
            "{}: {args}",
            request.name
        ))])
        .into())
    }
}

fn tools(n: usize) -> Vec<Tool> {
    let schema: serde_json::Map<String, serde_json::Value> =
        serde_json::from_value(serde_json::json!({
            "type": "object",
            "properties": { "amount": { "type": "integer" }, "note": { "type": "string" } }
        }))
        .expect("a static schema");
    let schema = Arc::new(schema);
    (0..n)
        .map(|i| {
            Tool::new(
                Cow::Owned(format!("tool_{i}")),
                Cow::Owned(format!("Benchmark tool number {i}")),
                schema.clone(),
            )
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let handler = Fast {
        tools: Arc::new(tools(args.tools)),
    };
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(args.sse)
        .with_json_response(!args.sse)
        .with_sse_keep_alive(None)
        .disable_allowed_hosts();
    let service = StreamableHttpService::new(
        move || Ok(handler.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let app = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    // Without TCP_NODELAY, multi-write SSE answers meet delayed ACKs (~40 ms per call).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}
