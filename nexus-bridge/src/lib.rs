//! `nexus`: one registration of a dataflow workflow, served at once over an
//! HTTP API, a command line and MCP (for AI agents).
//!
//! ```no_run
//! # async fn f(db: dataflow::DataFlow, workflow: dataflow::Workflow) -> Result<(), dataflow::Error> {
//! let mut app = nexus::Nexus::builder().api_port(8000).build(db)?;
//! app.register("create_user", workflow)?;
//! app.run().await   // `serve` (default), `run <workflow> --input ...`, `workflows`, `mcp`
//! # }
//! ```

mod channel;
mod cli;
mod http;
pub mod mcp;

pub use channel::{error_body, http_status, MAX_INPUT_BYTES};
pub use dataflow;

use dataflow::{DataFlow, Error, ErrorCode, Result, Workflow};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A workflow as every channel publishes it.
#[derive(Clone, Debug)]
pub struct Registered {
    pub name: String,
    pub description: String,
    pub workflow: Workflow,
}

impl Registered {
    /// `{name, description, input_schema}`: what `GET /workflows` lists.
    pub fn summary(&self) -> Value {
        json!({"name": self.name, "description": self.description, "input_schema": self.workflow.input_schema()})
    }
}

/// Builder options keep the names users of the Python framework know.
#[derive(Debug, Clone)]
pub struct NexusBuilder {
    api_port: u16,
    mcp_port: u16,
    host: String,
    auto_discovery: bool,
    enable_monitoring: bool,
    enable_http_transport: bool,
    enable_sse_transport: bool,
    enable_discovery: bool,
    enable_auth: bool,
    rate_limit: Option<u32>,
    enable_durability: bool,
    enable_sessions: bool,
}

impl Default for NexusBuilder {
    fn default() -> Self {
        NexusBuilder {
            api_port: 8000,
            mcp_port: 3001,
            host: "127.0.0.1".into(),
            auto_discovery: false,
            enable_monitoring: true,
            enable_http_transport: true,
            enable_sse_transport: true,
            enable_discovery: true,
            enable_auth: false,
            rate_limit: None,
            enable_durability: false,
            enable_sessions: false,
        }
    }
}

macro_rules! setters {
    ($($name:ident: $ty:ty),*) => {$(
        #[doc = concat!("Sets `", stringify!($name), "`.")]
        pub fn $name(mut self, v: $ty) -> Self {
            self.$name = v;
            self
        }
    )*};
}

impl NexusBuilder {
    setters!(api_port: u16, mcp_port: u16, auto_discovery: bool, enable_monitoring: bool, enable_http_transport: bool,
        enable_sse_transport: bool, enable_discovery: bool, enable_auth: bool, enable_durability: bool, enable_sessions: bool);

    /// The interface to listen on (default `127.0.0.1`).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// Requests per second per caller.
    pub fn rate_limit(mut self, per_second: u32) -> Self {
        self.rate_limit = Some(per_second);
        self
    }

    /// Checks the options: ones whose feature is not built yet fail here
    /// rather than being silently ignored.
    pub fn build(self, db: DataFlow) -> Result<Nexus> {
        let pending = [
            (
                self.auto_discovery,
                "auto_discovery(true) (registration never scans files; only false is supported)",
            ),
            (self.enable_auth, "enable_auth(true) (auth and RBAC)"),
            (self.rate_limit.is_some(), "rate_limit (rate limiting)"),
            (
                self.enable_durability,
                "enable_durability(true) (idempotency keys and the run journal)",
            ),
            (self.enable_sessions, "enable_sessions(true) (sessions)"),
        ];
        let missing: Vec<&str> = pending
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, what)| *what)
            .collect();
        if !missing.is_empty() {
            return Err(Error::new(
                ErrorCode::NotSupported,
                format!(
                    "these nexus options ask for features this version does not have yet: {}",
                    missing.join(", ")
                ),
            ));
        }
        Ok(Nexus {
            options: self,
            shared: channel::Shared {
                db,
                workflows: Arc::new(BTreeMap::new()),
                hub: Arc::new(channel::Hub::new()),
            },
        })
    }
}

/// The application: a database and its registered workflows.
pub struct Nexus {
    options: NexusBuilder,
    pub(crate) shared: channel::Shared,
}

impl Nexus {
    pub fn builder() -> NexusBuilder {
        NexusBuilder::default()
    }

    pub fn db(&self) -> &DataFlow {
        &self.shared.db
    }

    /// Registers `workflow` under `name` for every channel. Names are
    /// `[a-z0-9_-]`; a duplicate is an error and changes nothing.
    pub fn register(&mut self, name: &str, workflow: Workflow) -> Result<()> {
        self.register_with(name, workflow, "")
    }

    /// [`register`](Self::register) with a description shown to every channel.
    pub fn register_with(
        &mut self,
        name: &str,
        workflow: Workflow,
        description: &str,
    ) -> Result<()> {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !valid {
            return Err(Error::new(
                ErrorCode::Validation,
                format!("workflow name `{name}` must be lower-case letters, digits, `_` or `-`"),
            ));
        }
        if self.shared.workflows.contains_key(name) {
            return Err(Error::new(
                ErrorCode::Validation,
                format!("a workflow named `{name}` is already registered"),
            ));
        }
        let description = if description.is_empty() {
            workflow
                .spec()
                .description
                .clone()
                .unwrap_or_else(|| format!("Runs the `{name}` workflow"))
        } else {
            description.to_string()
        };
        let mut all = (*self.shared.workflows).clone();
        all.insert(
            name.to_string(),
            Registered {
                name: name.to_string(),
                description,
                workflow,
            },
        );
        self.shared.workflows = Arc::new(all);
        Ok(())
    }

    pub fn workflows(&self) -> impl Iterator<Item = &Registered> {
        self.shared.workflows.values()
    }

    /// The HTTP API as an axum router (what `serve` listens with).
    pub fn router(&self) -> axum::Router {
        http::router(self.shared.clone())
    }

    /// The MCP server: one tool per registered workflow, sharing this
    /// application's event stream and metrics.
    pub fn mcp_server(&self) -> mcp::McpServer {
        mcp::McpServer::new(self.shared.clone())
    }

    /// Serves the HTTP API on `api_port` and MCP (streamable HTTP, at
    /// `/mcp`) on `mcp_port` until Ctrl-C / SIGTERM; in-flight requests finish.
    pub async fn serve(&self) -> Result<()> {
        let http = self.serve_http();
        let mcp = self.serve_mcp();
        tokio::try_join!(http, mcp).map(drop)
    }

    /// The HTTP API alone, on `api_port`.
    pub async fn serve_http(&self) -> Result<()> {
        let listener = self.listen(self.options.api_port, "HTTP API", "").await?;
        self.serve_http_on(listener).await
    }

    /// The HTTP API on a listener of the caller's (e.g. bound to port 0).
    pub async fn serve_http_on(&self, listener: tokio::net::TcpListener) -> Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(until_shutdown(self.shared.hub.shutdown.clone()))
            .await
            .map_err(|e| Error::new(ErrorCode::Internal, format!("HTTP server: {e}")))
    }

    /// MCP over streamable HTTP at `http://host:mcp_port/mcp`.
    pub async fn serve_mcp(&self) -> Result<()> {
        let listener = self
            .listen(self.options.mcp_port, "MCP", mcp::MCP_PATH)
            .await?;
        self.serve_mcp_on(listener).await
    }

    /// MCP over streamable HTTP on a listener of the caller's; the `Host`
    /// header must be a loopback name or the configured `host`.
    pub async fn serve_mcp_on(&self, listener: tokio::net::TcpListener) -> Result<()> {
        mcp::serve_http_until(
            self.mcp_server(),
            listener,
            vec![self.options.host.clone()],
            self.shared.hub.shutdown.clone(),
        )
        .await
    }

    /// Stops every server of this application as Ctrl-C / SIGTERM would:
    /// no new connections; in-flight requests finish; event streams and MCP
    /// sessions close; the `serve*` futures then return.
    pub fn shutdown(&self) {
        self.shared.hub.shutdown.cancel();
    }

    /// MCP over stdin/stdout (nothing else may write to stdout in this mode).
    pub async fn serve_mcp_stdio(&self) -> Result<()> {
        mcp::serve_stdio(self.mcp_server()).await
    }

    /// Binds `host:port` and says where `what` is served.
    async fn listen(&self, port: u16, what: &str, path: &str) -> Result<tokio::net::TcpListener> {
        let addr = format!("{}:{port}", self.options.host);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| Error::new(ErrorCode::Config, format!("cannot listen on {addr}: {e}")))?;
        let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr);
        eprintln!("nexus: {what} on http://{bound}{path}");
        Ok(listener)
    }

    /// Parses the process arguments and runs: `serve` (default),
    /// `workflows`, `run <workflow> --<input> <value>...`, `models` and
    /// `migrate ...` (the dataflow CLI). Exits the process with the
    /// command's exit code when it is not `serve`.
    pub async fn run(&self) -> Result<()> {
        let args: Vec<String> = std::env::args().collect();
        match cli::dispatch(self, args).await {
            cli::Outcome::Serve => self.serve().await,
            cli::Outcome::McpStdio => self.serve_mcp_stdio().await,
            cli::Outcome::Exit(code) => std::process::exit(code),
        }
    }

    /// Runs a registered workflow in this process, the path every channel
    /// takes (its metrics are labelled `channel="direct"`).
    pub async fn execute(&self, name: &str, inputs: Value) -> Result<Value> {
        self.shared.execute(name, inputs, "direct", None).await
    }
}

/// Waits for Ctrl-C / SIGTERM or `token`, then cancels `token`: every
/// server of the application stops, and long-lived streams end.
pub(crate) async fn until_shutdown(token: tokio_util::sync::CancellationToken) {
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = token.cancelled() => {}
    }
    token.cancel();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
