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
//! with `too_large`, as on HTTP and the CLI.
//!
//! Over streamable HTTP the listener applies the HTTP API's rules: the
//! allowed `Host` and `Origin` (403 `forbidden` otherwise, as the MCP
//! specification asks against DNS rebinding), the CORS policy, `nosniff`,
//! the connection timeouts and limit, and JSON errors for unknown paths.
//! Sessions close after `mcp_session_idle` without a message, and at
//! `mcp_max_sessions` a new one is refused with 503 `overloaded` and
//! `Retry-After`.
//!
//! With [`enable_discovery(false)`](crate::NexusBuilder::enable_discovery)
//! `tools/list` is empty (the server's instructions say so) and an unknown
//! tool's error names no others; a client that knows a tool's name still
//! calls it.
//!
//! With [`enable_sessions(true)`](crate::NexusBuilder::enable_sessions)
//! four more tools manage sessions, answering like the HTTP API:
//! `session_create {data?}`, `session_get {id}`, `session_set {id, data}`
//! (an RFC 7386 merge patch) and `session_delete {id}`. A tool call runs its
//! workflow with a session named in the request's `_meta` under
//! [`MCP_META_KEY`](crate::SESSION_MCP_META_KEY) (`"nexus/session"`), or over
//! streamable HTTP in the `X-Session-Id` header.
//!
//! Two transports: stdio ([`serve_stdio`]) and streamable HTTP at `/mcp`
//! ([`serve_http`], or [`router`] to mount it in an axum app). Get the
//! server of an application with [`Nexus::mcp_server`](crate::Nexus::mcp_server).

use crate::channel::{
    http_error, mcp_error, too_large, too_large_over, Caller, Origin, Shared, MAX_INPUT_BYTES,
};
use crate::security::Policy;
use crate::Registered;
use axum::extract::State;
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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The path the streamable HTTP transport is mounted at.
pub const MCP_PATH: &str = "/mcp";

/// Hosts always accepted in the `Host` header of streamable HTTP requests
/// (others are refused with 403 `forbidden`, against DNS rebinding; the
/// HTTP API applies the same rule).
pub const LOCAL_HOSTS: [&str; 3] = crate::security::LOCAL_HOSTS;

/// The MCP server of an application: its registered workflows, one tool each.
#[derive(Clone)]
pub struct McpServer {
    shared: Shared,
    /// Served over streamable HTTP: callers are remote (roles and rate
    /// limits apply). Otherwise (stdio, direct calls) the operator calls.
    remote: bool,
    /// Not remote: answer as a caller with these roles (`mcp --role`).
    roles: Option<Vec<String>>,
}

impl McpServer {
    pub(crate) fn new(shared: Shared) -> Self {
        McpServer {
            shared,
            remote: false,
            roles: None,
        }
    }

    /// This server answering over stdio (or any stream) as a caller with
    /// `roles` instead of the operator: `tools/list` and every call are
    /// checked against them, as `myapp mcp --role reader` does, to try the
    /// app's roles. Over streamable HTTP the roles come from each request.
    pub fn with_roles<I, S>(mut self, roles: I) -> McpServer
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.roles = Some(roles.into_iter().map(Into::into).collect());
        self
    }

    /// The caller of an MCP request: over HTTP, the context identity builds
    /// from the request's head, from the client's address (no head at all
    /// is a caller without roles: fail closed); over stdio, the operator, or
    /// a caller with the roles of [`with_roles`](Self::with_roles).
    fn caller(&self, head: Option<&axum::http::request::Parts>) -> Result<Caller> {
        let context = crate::identity::from_request(
            "mcp",
            self.shared.surface.trust_tenant_header,
            head.map(|p| &p.headers),
            // Over streamable HTTP: the identity the auth middleware
            // verified for this very request.
            head.and_then(|p| p.extensions.get::<crate::auth::Identity>()),
        )?;
        Ok(match (&self.roles, self.remote) {
            (_, true) => Caller::new(
                context,
                Origin::Remote(head.and_then(|p| crate::http::client_addr(&p.extensions))),
            ),
            (Some(roles), false) => Caller::new(context.roles(roles.clone()), Origin::InProcess),
            (None, false) => Caller::new(context, Origin::Operator),
        })
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

    /// Every tool, in name order (the session tools last): what
    /// `tools/list` answers the operator unless discovery is off.
    pub fn tools(&self) -> Vec<Tool> {
        let mut tools: Vec<Tool> = self.shared.workflows.values().map(Self::tool).collect();
        tools.extend(self.session_tools());
        tools
    }

    /// The session tools, when sessions are on.
    fn session_tools(&self) -> Vec<Tool> {
        if self.shared.sessions.is_none() {
            return Vec::new();
        }
        let id = serde_json::json!({"type": "string", "description": "the session id (`nxs_...`)"});
        let data = |what: &str| serde_json::json!({"type": "object", "description": what});
        let schema = |props: Value, required: &[&str]| -> Arc<JsonObject> {
            let v = serde_json::json!({"type": "object", "properties": props, "required": required, "additionalProperties": false});
            Arc::new(v.as_object().cloned().unwrap_or_default())
        };
        vec![
            Tool::new(
                "session_create",
                "Create a session for this caller with optional initial data; returns {id, data, created, expires}",
                schema(serde_json::json!({"data": data("the initial data")}), &[]),
            ),
            Tool::new(
                "session_get",
                "Read a session of this caller: {id, data, created, expires}",
                schema(serde_json::json!({"id": id}), &["id"]),
            ),
            Tool::new(
                "session_set",
                "Merge data into a session (RFC 7386 merge patch: keys set, null removes)",
                schema(
                    serde_json::json!({"id": id, "data": data("the merge patch")}),
                    &["id", "data"],
                ),
            ),
            Tool::new(
                "session_delete",
                "Delete a session of this caller",
                schema(serde_json::json!({"id": id}), &["id"]),
            ),
        ]
    }

    /// A call of a session tool (`None`: `name` is not one, or sessions are off).
    async fn session_tool(
        &self,
        caller: &Caller,
        name: &str,
        arguments: &Value,
    ) -> Option<std::result::Result<Value, Error>> {
        let sessions = self.shared.sessions.as_deref()?;
        if !crate::sessions::TOOLS.contains(&name) {
            return None;
        }
        let id = arguments["id"].as_str().unwrap_or_default();
        let needs_id = name != "session_create";
        if needs_id && id.is_empty() {
            return Some(Err(Error::new(
                ErrorCode::Validation,
                format!("{name}: `id` (a session id) is required"),
            )
            .with_field("id")));
        }
        let data = arguments.get("data").cloned().unwrap_or(Value::Null);
        Some(match name {
            "session_create" => sessions.create(caller, data).await,
            "session_get" => sessions.get(caller, id).await,
            "session_set" => sessions.patch(caller, id, data).await,
            _ => sessions
                .delete(caller, id)
                .await
                .map(|()| serde_json::json!({"id": id, "deleted": true})),
        })
    }

    /// What `tools/list` answers `caller`: the tools it may call (or all,
    /// with `list_forbidden_workflows`), or none with discovery off.
    fn listed_tools(&self, caller: &Caller) -> Vec<Tool> {
        if self.shared.surface.discovery {
            let mut tools: Vec<Tool> = self.shared.visible(caller).map(Self::tool).collect();
            tools.extend(self.session_tools());
            tools
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
        self.call_with(None, None, name, arguments, None).await
    }

    /// [`call`](Self::call) for an MCP request over HTTP with this head
    /// (the caller's context and address come from it).
    async fn call_with(
        &self,
        head: Option<&axum::http::request::Parts>,
        session: Option<String>,
        name: &str,
        arguments: Option<JsonObject>,
        key: Option<std::result::Result<String, Error>>,
    ) -> std::result::Result<CallToolResult, ErrorData> {
        let inputs = Value::Object(arguments.unwrap_or_default());
        // The session: the `_meta` key, else (over HTTP) the header.
        let session = session.or_else(|| {
            head.and_then(|p| p.headers.get(crate::sessions::HEADER))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        });
        let caller = self.caller(head).map(|c| c.with_session(session));
        if let Ok(c) = &caller {
            if let Some(done) = self.session_tool(c, name, &inputs).await {
                return match done {
                    Ok(v) => Ok(CallToolResult::structured(v)),
                    Err(e) => mcp_error(&e.into(), true),
                };
            }
        }
        // A tool the caller may not see is "no such tool" only when a
        // forbidden workflow reads as unregistered (`forbidden_as_not_found`).
        let known = match (&caller, self.shared.workflows.get(name)) {
            (_, None) => false,
            (Ok(c), Some(w)) => !self.shared.access.hide_forbidden || self.shared.may_call(c, w),
            (Err(_), Some(_)) => true,
        };
        let result = match caller {
            Err(e) => Err(e.into()),
            Ok(_) if known && inputs.to_string().len() > MAX_INPUT_BYTES => {
                Err(too_large("tool arguments").into())
            }
            Ok(caller) => match key {
                None => self
                    .shared
                    .execute(caller, name, inputs, "mcp")
                    .await
                    .map(|v| (v, false)),
                Some(Err(e)) => Err(e.into()),
                Some(Ok(key)) => {
                    self.shared
                        .execute_keyed(caller, name, inputs, "mcp", Some(&key))
                        .await
                }
            },
        };
        match result {
            Ok((result, replayed)) => {
                let mut r = CallToolResult::structured(result);
                if replayed {
                    // The HTTP header's counterpart.
                    let mut meta = rmcp::model::MetaObject::default();
                    meta.0.insert(IDEMPOTENT_REPLAYED.into(), Value::Bool(true));
                    r.meta = Some(meta);
                }
                Ok(r)
            }
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
        context: RequestContext<RoleServer>,
    ) -> std::result::Result<ListToolsResult, ErrorData> {
        let head = context.extensions.get::<axum::http::request::Parts>();
        let caller = self.caller(head).map_err(|e| {
            ErrorData::invalid_params(e.to_string(), Some(crate::channel::error_body(&e)))
        })?;
        Ok(ListToolsResult::with_all_items(self.listed_tools(&caller)))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> std::result::Result<CallToolResponse, ErrorData> {
        // Over streamable HTTP, rmcp hands over the request's head.
        let head = context.extensions.get::<axum::http::request::Parts>();
        let session = request
            .meta
            .as_ref()
            .and_then(|m| m.0 .0.get(crate::sessions::MCP_META_KEY))
            .or_else(|| context.meta.0 .0.get(crate::sessions::MCP_META_KEY))
            .and_then(Value::as_str)
            .map(str::to_string);
        let key = idempotency_key(request.meta.as_ref().map(|m| &m.0 .0))
            .or_else(|| idempotency_key(Some(&context.meta.0 .0)));
        self.call_with(head, session, &request.name, request.arguments, key)
            .await
            .map(CallToolResponse::from)
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        // No caller here: what the operator sees (calls are checked in `call_tool`).
        self.shared
            .workflows
            .get(name)
            .map(Self::tool)
            .or_else(|| self.session_tools().into_iter().find(|t| t.name == name))
    }
}

/// The `_meta` key a `tools/call` carries its idempotency key under
/// (`{"_meta": {"idempotency-key": "..."}}`), as HTTP's `Idempotency-Key`.
pub const IDEMPOTENCY_META_KEY: &str = "idempotency-key";

/// The `_meta` key of a result replayed for an idempotency key (`true`).
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// The idempotency key in a request's `_meta`: `None` without one, an
/// error when it is not a string.
fn idempotency_key(meta: Option<&JsonObject>) -> Option<std::result::Result<String, Error>> {
    match meta?.get(IDEMPOTENCY_META_KEY)? {
        Value::String(k) => Some(Ok(k.clone())),
        _ => Some(Err(crate::durable::bad_key())),
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
/// `allowed_hosts` are accepted in the `Host` header (and as the host of an
/// `Origin`) in addition to [`LOCAL_HOSTS`]; an entry is a host (any port)
/// or `host:port`, and `"*"` accepts every host (only for deployments behind
/// their own checks); an entry that is neither matches nothing (the builder's
/// [`allowed_hosts`](crate::NexusBuilder::allowed_hosts) refuses it with
/// `config`). Sessions are bounded as [`Nexus::builder`](crate::Nexus::builder)'s
/// defaults say (`mcp_max_sessions`, `mcp_session_idle`).
pub fn router(server: McpServer, allowed_hosts: Vec<String>) -> axum::Router {
    let options = HttpOptions::defaults(&allowed_hosts);
    router_with(server, options, CancellationToken::new())
}

/// How MCP over streamable HTTP is served: the Host / Origin / CORS policy
/// and the bounds of its sessions.
#[derive(Clone, Debug)]
pub(crate) struct HttpOptions {
    pub(crate) policy: Policy,
    pub(crate) max_sessions: usize,
    pub(crate) session_idle: Duration,
    pub(crate) limits: crate::serve::Limits,
}

impl HttpOptions {
    /// The builder's defaults, with the loopback names and `allowed_hosts`.
    fn defaults(allowed_hosts: &[String]) -> HttpOptions {
        crate::NexusBuilder::default().mcp_options(Policy::hosts(allowed_hosts))
    }
}

fn router_with(
    mut server: McpServer,
    options: HttpOptions,
    shutdown: CancellationToken,
) -> axum::Router {
    server.remote = true;
    // The policy checks Host and Origin for every listener, so rmcp's own
    // host check (the same rule, with a plain-text answer) is off.
    let config = StreamableHttpServerConfig::default()
        .with_cancellation_token(shutdown)
        .with_max_request_body_bytes(MAX_BODY_BYTES)
        .disable_allowed_hosts();
    let mut manager = LocalSessionManager::default();
    manager.session_config.keep_alive = Some(options.session_idle);
    let manager = Arc::new(manager);
    let sessions = Arc::new(SessionCap {
        manager: manager.clone(),
        max: options.max_sessions,
        checking: tokio::sync::Mutex::new(()),
        opening: Arc::new(AtomicUsize::new(0)),
    });
    let auth = server.shared.auth.clone();
    let service = StreamableHttpService::new(move || Ok(server.clone()), manager, config);
    let mut app = axum::Router::new().nest_service(MCP_PATH, service);
    if let Some(auth) = &auth {
        app = app.merge(crate::auth::oauth::routes(auth.clone(), MCP_PATH));
    }
    let mut app = app
        .fallback(crate::http::no_route)
        .layer(axum::middleware::from_fn_with_state(sessions, cap_sessions))
        .layer(axum::middleware::from_fn(too_large_as_json));
    // Outside the session cap: an unauthenticated request opens nothing.
    if let Some(auth) = auth {
        app = app.layer(axum::middleware::from_fn_with_state(
            auth,
            crate::auth::middleware,
        ));
    }
    options.policy.apply(app)
}

/// The largest MCP request body the transport reads: room for tool
/// arguments of [`MAX_INPUT_BYTES`] in any JSON spelling, so that arguments
/// over it are answered in the protocol (a `too_large` tool error).
const MAX_BODY_BYTES: usize = 4 * MAX_INPUT_BYTES;

/// rmcp answers a body over [`MAX_BODY_BYTES`] with a plain-text 413: the
/// JSON `too_large` error instead, as the HTTP API answers.
async fn too_large_as_json(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let response = next.run(request).await;
    if response.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return http_error(&too_large_over("MCP request body", MAX_BODY_BYTES));
    }
    response
}

/// At most `max` MCP sessions: requests that may open one (a POST without
/// `Mcp-Session-Id`) count as opening until answered, so concurrent
/// `initialize`s never overshoot.
struct SessionCap {
    manager: Arc<LocalSessionManager>,
    max: usize,
    checking: tokio::sync::Mutex<()>,
    opening: Arc<AtomicUsize>,
}

/// One request that may open a session, counted until it is answered.
struct Opening(Arc<AtomicUsize>);

impl Drop for Opening {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn cap_sessions(
    State(cap): State<Arc<SessionCap>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if request.method() != axum::http::Method::POST
        || request.headers().contains_key("mcp-session-id")
    {
        return next.run(request).await;
    }
    let opening = {
        let _one_at_a_time = cap.checking.lock().await;
        let open = cap.manager.sessions.read().await.len();
        if open + cap.opening.load(Ordering::SeqCst) >= cap.max {
            return http_error(&Error::new(
                ErrorCode::Overloaded,
                format!(
                    "{} MCP sessions are open, the most this server keeps (mcp_max_sessions); \
                     idle ones close after a while, retry then",
                    cap.max
                ),
            ));
        }
        cap.opening.fetch_add(1, Ordering::SeqCst);
        Opening(cap.opening.clone())
    };
    let response = next.run(request).await;
    drop(opening);
    response
}

/// Serves the streamable HTTP transport at `/mcp` on `listener` until
/// Ctrl-C / SIGTERM: open MCP sessions are closed, in-flight requests
/// finish. The listener is bounded as [`Nexus::builder`](crate::Nexus::builder)'s
/// defaults say (timeouts, connections, sessions).
pub async fn serve_http(
    server: McpServer,
    listener: tokio::net::TcpListener,
    allowed_hosts: Vec<String>,
) -> Result<()> {
    let options = HttpOptions::defaults(&allowed_hosts);
    serve_http_until(server, listener, options, CancellationToken::new()).await;
    Ok(())
}

/// [`serve_http`] with the application's options, also cancelling
/// `shutdown` when the signal arrives.
pub(crate) async fn serve_http_until(
    server: McpServer,
    listener: tokio::net::TcpListener,
    options: HttpOptions,
    shutdown: CancellationToken,
) {
    let limits = options.limits;
    let app = router_with(server, options, shutdown.clone());
    // Cancelling also ends the sessions' long-lived SSE streams.
    crate::serve::serve(listener, app, limits, shutdown).await;
}
