//! MCP (Model Context Protocol) for AI agents, with the official `rmcp` SDK.
//!
//! Every registered workflow is one tool: its name, its description and the
//! workflow's own input JSON Schema. `tools/call` runs the workflow through
//! the path every channel shares (so its runs appear in `/events` and
//! `/metrics` with `channel="mcp"`) and answers
//! with the same JSON as HTTP: `{"outputs", "run_id", "execution_time"}` as
//! text and as structured content. A failed run is a tool error
//! (`isError: true`) whose content is the HTTP error body
//! `{"error": {"code", "message", ...}}`; an unknown tool is a protocol error
//! (`-32602` invalid params) whose `data` is that body with code `not_found`.
//!
//! Arguments over [`MAX_INPUT_BYTES`] are refused
//! with `validation`, as on HTTP and the CLI.
//!
//! With [`enable_discovery(false)`](crate::NexusBuilder::enable_discovery)
//! `tools/list` is empty (the server's instructions say so) and an unknown
//! tool's error names no others; a client that knows a tool's name still
//! calls it.
//!
//! Two transports: stdio ([`serve_stdio`]) and streamable HTTP at `/mcp`
//! ([`serve_http`], or [`router`] to mount it in an axum app). Get the
//! server of an application with [`Nexus::mcp_server`](crate::Nexus::mcp_server).

use crate::channel::{mcp_error, too_large, Shared, MAX_INPUT_BYTES};
use crate::Registered;
use dataflow::{Error, ErrorCode, Result};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, Implementation, JsonObject,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::Value;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The path the streamable HTTP transport is mounted at.
pub const MCP_PATH: &str = "/mcp";

/// Hosts always accepted in the `Host` header of streamable HTTP requests
/// (rmcp rejects others to prevent DNS rebinding).
pub const LOCAL_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The MCP server of an application: its registered workflows, one tool each.
#[derive(Clone)]
pub struct McpServer {
    shared: Shared,
}

impl McpServer {
    pub(crate) fn new(shared: Shared) -> Self {
        McpServer { shared }
    }

    /// The tool published for a registered workflow.
    pub fn tool(registered: &Registered) -> Tool {
        let schema = match registered.workflow.input_schema() {
            Value::Object(m) => m.clone(),
            // `input_schema` is always an object; keep the tool callable anyway.
            _ => {
                let mut m = JsonObject::new();
                m.insert("type".into(), "object".into());
                m
            }
        };
        Tool::new(
            registered.name.clone(),
            registered.description.clone(),
            Arc::new(schema),
        )
    }

    /// Every tool, in name order: what `tools/list` answers unless
    /// discovery is off.
    pub fn tools(&self) -> Vec<Tool> {
        self.shared.workflows.values().map(Self::tool).collect()
    }

    /// What `tools/list` answers: every tool, or none with discovery off.
    fn listed_tools(&self) -> Vec<Tool> {
        if self.shared.surface.discovery {
            self.tools()
        } else {
            Vec::new()
        }
    }

    /// A `tools/call`: the HTTP result, a tool error with the HTTP error
    /// body, or (unknown tool) an invalid-params protocol error.
    pub async fn call(
        &self,
        name: &str,
        arguments: Option<JsonObject>,
    ) -> std::result::Result<CallToolResult, ErrorData> {
        let known = self.shared.workflows.contains_key(name);
        let inputs = Value::Object(arguments.unwrap_or_default());
        let result = if known && inputs.to_string().len() > MAX_INPUT_BYTES {
            Err(too_large("tool arguments"))
        } else {
            self.shared.execute(name, inputs, "mcp", None).await
        };
        match result {
            Ok(result) => Ok(CallToolResult::structured(result)),
            Err(e) => mcp_error(&e, known),
        }
    }
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        let mut instructions = String::from(
            "Each tool runs one registered dataflow workflow. A result is {\"outputs\": {node: output}, \"run_id\", \
             \"execution_time\"}; a failure is a tool error {\"error\": {\"code\", \"message\", ...}}.",
        );
        if !self.shared.surface.discovery {
            instructions.push_str(
                " This server does not list its tools: call a tool by the name its operator gave you.",
            );
        }
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("nexus", env!("CARGO_PKG_VERSION")))
            .with_instructions(instructions)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> std::result::Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.listed_tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> std::result::Result<CallToolResponse, ErrorData> {
        self.call(&request.name, request.arguments)
            .await
            .map(CallToolResponse::from)
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.shared.workflows.get(name).map(Self::tool)
    }
}

/// Serves MCP over stdin/stdout until the client closes stdin.
pub async fn serve_stdio(server: McpServer) -> Result<()> {
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| Error::new(ErrorCode::Internal, format!("MCP stdio: {e}")))?;
    running
        .waiting()
        .await
        .map(|_| ())
        .map_err(|e| Error::new(ErrorCode::Internal, format!("MCP stdio: {e}")))
}

/// The streamable HTTP transport mounted at `/mcp`, as an axum router.
///
/// `allowed_hosts` are accepted in the `Host` header in addition to
/// [`LOCAL_HOSTS`]; an entry is a host (any port) or `host:port`, and `"*"`
/// accepts every host (only for deployments behind their own checks).
pub fn router(server: McpServer, allowed_hosts: Vec<String>) -> axum::Router {
    router_with(server, allowed_hosts, CancellationToken::new())
}

fn router_with(
    server: McpServer,
    allowed_hosts: Vec<String>,
    shutdown: CancellationToken,
) -> axum::Router {
    let config = StreamableHttpServerConfig::default().with_cancellation_token(shutdown);
    let config = if allowed_hosts.iter().any(|h| h == "*") {
        config.disable_allowed_hosts()
    } else {
        let mut hosts: Vec<String> = LOCAL_HOSTS.iter().map(|h| h.to_string()).collect();
        hosts.extend(allowed_hosts.into_iter().filter(|h| !h.is_empty()));
        hosts.dedup();
        config.with_allowed_hosts(hosts)
    };
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    axum::Router::new().nest_service(MCP_PATH, service)
}

/// Serves the streamable HTTP transport at `/mcp` on `listener` until
/// Ctrl-C / SIGTERM: open MCP sessions are closed, in-flight requests finish.
pub async fn serve_http(
    server: McpServer,
    listener: tokio::net::TcpListener,
    allowed_hosts: Vec<String>,
) -> Result<()> {
    serve_http_until(server, listener, allowed_hosts, CancellationToken::new()).await
}

/// [`serve_http`], also cancelling `shutdown` when the signal arrives.
pub(crate) async fn serve_http_until(
    server: McpServer,
    listener: tokio::net::TcpListener,
    allowed_hosts: Vec<String>,
    shutdown: CancellationToken,
) -> Result<()> {
    let app = router_with(server, allowed_hosts, shutdown.clone());
    axum::serve(listener, app)
        // Cancelling also ends the sessions' long-lived SSE streams.
        .with_graceful_shutdown(crate::until_shutdown(shutdown))
        .await
        .map_err(|e| Error::new(ErrorCode::Internal, format!("MCP HTTP server: {e}")))
}
