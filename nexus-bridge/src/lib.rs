//! `nexus`: one registration of a dataflow workflow, served at once over an
//! HTTP API, a command line and MCP (for AI agents).
//!
//! ```no_run
//! # async fn f(db: dataflow::DataFlow, workflow: dataflow::Workflow) -> Result<(), dataflow::Error> {
//! let mut app = nexus::Nexus::builder().api_port(8000).build(db)?;
//! app.register("create_user", workflow)?;
//! // `serve` (default), `run <workflow> --input ...`, `workflows`, `mcp`;
//! // the exit code is the caller's to use (`main` returns it).
//! let code: std::process::ExitCode = app.run().await;
//! # Ok(()) }
//! ```
//!
//! Each error code has one HTTP status, one CLI exit code and one MCP shape:
//! [`ErrorCode::http_status`], [`ErrorCode::exit_code`], and a tool error
//! carrying [`error_body`].

mod access;
mod auth;
mod channel;
mod cli;
mod durable;
mod events;
mod http;
mod identity;
pub mod limits;
pub mod mcp;
mod runs;
mod security;
mod serve;
mod sessions;

pub use access::Role;
pub use auth::Auth;
pub use channel::{error_body, failure_body, MAX_INPUT_BYTES};
pub use dataflow;
pub use sessions::{MAX_SESSION_BYTES, MCP_META_KEY as SESSION_MCP_META_KEY};

use dataflow::{DataFlow, Error, ErrorCode, Result, Workflow};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// A workflow as every channel publishes it.
#[derive(Clone, Debug)]
pub struct Registered {
    /// The name it was registered under: the HTTP path segment, the CLI
    /// subcommand and the MCP tool name.
    pub name: String,
    /// What every channel shows (the registration's, else the workflow's own).
    pub description: String,
    /// The workflow that runs.
    pub workflow: Workflow,
    /// What a role needs to grant it besides its name (its nodes' models).
    pub(crate) needs: access::Needs,
    /// Session keys set from the run's outputs: (key, node id and path).
    pub(crate) session_outputs: Vec<(String, Vec<String>)>,
    /// Its model nodes that write: the sources of its change events.
    pub(crate) writes: Vec<events::Write>,
    /// The checksum of its definition (a journaled run resumes only under
    /// the same one).
    pub(crate) checksum: Arc<str>,
}

impl Registered {
    /// `{name, description, input_schema}`: what `GET /workflows` lists.
    pub fn summary(&self) -> Value {
        json!({"name": self.name, "description": self.description, "input_schema": self.workflow.input_schema()})
    }
}

/// The options of a [`Nexus`]; they keep the names users of the Python
/// framework know. Nothing is silently ignored: an option whose feature is
/// not built yet fails [`build`](Self::build) with `not_supported`.
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
    rate_limit_global: Option<u32>,
    rate_limit_workflows: Vec<(String, u32)>,
    rate_limit_store: Option<Arc<dyn limits::RateStore>>,
    roles: Vec<(String, Role)>,
    forbidden_as_not_found: bool,
    list_forbidden_workflows: bool,
    enable_durability: bool,
    durability_retention: Duration,
    durability_lease: Duration,
    enable_sessions: bool,
    session_ttl: Duration,
    event_buffer: usize,
    event_records: Vec<String>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
    max_async_runs: usize,
    async_store_max_runs: usize,
    async_store_max_bytes: usize,
    async_store_ttl: Duration,
    mcp_max_sessions: usize,
    mcp_session_idle: Duration,
    allowed_hosts: Option<Vec<String>>,
    cors: Option<Vec<String>>,
    trust_tenant_header: bool,
    auth: Option<Auth>,
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
            rate_limit_global: None,
            rate_limit_workflows: Vec::new(),
            rate_limit_store: None,
            roles: Vec::new(),
            forbidden_as_not_found: false,
            list_forbidden_workflows: false,
            enable_durability: false,
            durability_retention: Duration::from_secs(24 * 3600),
            durability_lease: Duration::from_secs(30),
            enable_sessions: false,
            session_ttl: Duration::from_secs(24 * 3600),
            event_buffer: 1024,
            event_records: Vec::new(),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 256,
            max_async_runs: 16,
            async_store_max_runs: 10_000,
            async_store_max_bytes: 64 << 20,
            async_store_ttl: Duration::from_secs(3600),
            mcp_max_sessions: 256,
            mcp_session_idle: Duration::from_secs(120),
            allowed_hosts: None,
            cors: None,
            trust_tenant_header: false,
            auth: None,
        }
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {$(
        $(#[$doc])*
        pub fn $name(mut self, v: $ty) -> Self {
            self.$name = v;
            self
        }
    )*};
}

impl NexusBuilder {
    setters! {
        /// The HTTP API's port (default 8000).
        api_port: u16;
        /// The port of MCP over streamable HTTP, at `/mcp` (default 3001).
        mcp_port: u16;
        /// Only `false` (the default): registration is explicit, never a
        /// scan of files or code; `true` fails `build` with `not_supported`.
        auto_discovery: bool;
        /// Whether `GET /metrics` is served (default on). Off, no metrics are
        /// recorded and `/metrics` answers 404.
        enable_monitoring: bool;
        /// Whether [`serve`](Nexus::serve) starts the HTTP API on `api_port`
        /// (default on). Off, `serve` serves MCP alone, the CLI and MCP over
        /// stdio work as before, and [`serve_http`](Nexus::serve_http) /
        /// [`serve_http_on`](Nexus::serve_http_on) refuse with `config`.
        enable_http_transport: bool;
        /// Whether `GET /events` (server-sent events of runs and model
        /// changes, filtered by the caller's tenant and roles) is served
        /// (default on). Off, `/events` answers 404 and no events are made.
        enable_sse_transport: bool;
        /// How many events each instance keeps for clients that reconnect
        /// with `Last-Event-ID` (default 1024).
        event_buffer: usize;
        /// Whether clients can enumerate the workflows (default on). Off,
        /// `GET /workflows`, `GET /workflows/{name}` and `/openapi.json`
        /// answer 404, MCP `tools/list` is empty, and an unknown-workflow
        /// error names no others; a caller who knows a name still runs it on
        /// every channel. The CLI is the operator's and still lists them.
        enable_discovery: bool;
        /// Whether every request must prove who it comes from (default
        /// off). On, it needs a credential source from
        /// [`auth`](Self::auth) (else `build` fails with `config`, never an
        /// open server); [`auth`](Self::auth) turns it on by itself. See
        /// [`Auth`] for what stays open and how identities become contexts.
        enable_auth: bool;
        /// A workflow the caller's roles do not grant answers as if it were
        /// not registered, 404 `not_found` (default off: 403 `forbidden`).
        /// On, a caller cannot tell a forbidden name from an unknown one; off,
        /// a caller who guesses a name learns it exists, and is told why it
        /// may not run it. Listings never show forbidden workflows either way
        /// (unless [`list_forbidden_workflows`](Self::list_forbidden_workflows)).
        forbidden_as_not_found: bool;
        /// Whether `GET /workflows`, `/openapi.json` and MCP `tools/list`
        /// show every workflow (default off: only those the caller's roles
        /// grant). Calling one is still refused.
        list_forbidden_workflows: bool;
        /// Durable requests (default off): `Idempotency-Key` on every
        /// channel (HTTP header, CLI `--idempotency-key`, MCP
        /// `_meta["idempotency-key"]`) answers a retried request once, and
        /// every run is journaled in the database (`nexus_runs`,
        /// `nexus_run_nodes`) so `GET /runs/{id}` survives restarts and a
        /// run cut off by a crash is resumed after its last completed node.
        /// See the README's "Durable requests".
        enable_durability: bool;
        /// Sessions (default off): JSON data in the app's database table
        /// `nexus_sessions`, made with `POST /sessions`, CLI `session create`
        /// or the MCP tool `session_create`, read by workflow templates as
        /// `{{session.<key>}}` and written by
        /// [`session_output`](Nexus::session_output); a call names one with
        /// `X-Session-Id`, `--session` or the MCP `_meta` key
        /// [`SESSION_MCP_META_KEY`]. Only the caller that made a session
        /// (same actor and tenant) may use it; others get `not_found`.
        enable_sessions: bool;
        /// How long an idempotency key's response is kept, and a finished
        /// run's journal (default 24 hours); expired rows are purged every
        /// minute while serving, and by [`Nexus::purge_durable`].
        durability_retention: Duration;
        /// How long a run's lease lasts (default 30 s): its instance renews
        /// it every third of it; once it has expired (the instance died)
        /// another instance, or this one restarted, resumes the run.
        durability_lease: Duration;
        /// How long a session lives after it is made (default 24 hours;
        /// use does not extend it). Expired sessions answer `not_found` and
        /// their rows are deleted.
        session_ttl: Duration;
        /// How long a client has to send a request's head (default 10 s):
        /// from accepting a new connection, or from the first byte of a
        /// kept-alive connection's next request; also the longest pause
        /// while a request body arrives. Then the connection is closed
        /// (silent sockets, slowloris). Both listeners.
        header_read_timeout: Duration;
        /// How long a kept-alive connection may wait for its next request
        /// (default 60 s) before it is closed. A connection with a request
        /// in progress (a long run, an event stream) is never idle. Both
        /// listeners.
        idle_timeout: Duration;
        /// The most connections each listener keeps open (default 256). At
        /// the limit, a new connection takes the place of the connection
        /// that has waited longest without a request in progress; when every
        /// connection has one, new connections wait in the listen backlog
        /// until one finishes.
        max_connections: usize;
        /// The most `"mode": "async"` runs in progress at once (default 16);
        /// beyond it a start is refused with 503 `overloaded` and
        /// `Retry-After`. Results in flight cost up to this many times a
        /// result's size, besides the outcomes kept.
        max_async_runs: usize;
        /// The most finished async runs whose outcome `GET /runs/{id}` keeps
        /// (default 10,000); the oldest are forgotten first.
        async_store_max_runs: usize;
        /// The most bytes of async outcomes kept, as JSON (default 64 MiB);
        /// the oldest are forgotten first, and an outcome larger than this
        /// keeps its status without its result.
        async_store_max_bytes: usize;
        /// How long an async run's outcome is kept after it finishes
        /// (default 1 hour).
        async_store_ttl: Duration;
        /// The most MCP sessions open at once over streamable HTTP (default
        /// 256); beyond it `initialize` is refused with 503 `overloaded` and
        /// `Retry-After`.
        mcp_max_sessions: usize;
        /// How long an MCP session may go without a message before it is
        /// closed (default 2 minutes); the client then initializes anew.
        mcp_session_idle: Duration;
    }

    /// The hosts clients reach this server under, accepted in the `Host`
    /// header and as the host of a browser's `Origin` on both listeners,
    /// besides `localhost`, `127.0.0.1` and `::1` (always) and the
    /// [`host`](Self::host) bound to (unless `0.0.0.0` / `::`). An entry is
    /// a host (any port) or `host:port`; `"*"` accepts every host (for a
    /// server behind a proxy that checks them). Other hosts and origins are
    /// refused with 403 `forbidden`: a web page cannot reach a local server
    /// by rebinding its own name to 127.0.0.1 (DNS rebinding).
    pub fn allowed_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allowed_hosts = Some(hosts.into_iter().map(Into::into).collect());
        self
    }

    /// Trust the `X-Tenant-ID` header as the caller's tenant (default
    /// off: the header is ignored). Only for deployments behind a gateway
    /// that authenticates callers and sets the header itself; anyone who
    /// reaches the server directly could otherwise name any tenant.
    pub fn trust_tenant_header(mut self, on: bool) -> Self {
        self.trust_tenant_header = on;
        self
    }

    /// Lets web pages on these origins (`https://app.example.com`,
    /// `http://localhost:5173`; `"*"` for any) call both listeners from a
    /// browser: CORS headers on their requests and answers to their
    /// preflights. Off by default: no CORS headers, and a request with an
    /// `Origin` that is not on an allowed host is refused.
    pub fn cors<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cors = Some(origins.into_iter().map(Into::into).collect());
        self
    }

    /// Model change events (`created`, `updated`, `deleted` on `/events`)
    /// of these models carry the record itself (default: none, only the
    /// model, record id, tenant and run id). Sensitive fields read
    /// `"***"`. A model the database does not have fails `build` with `config`.
    pub fn event_records<I, S>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.event_records = models.into_iter().map(Into::into).collect();
        self
    }

    /// The interface to listen on (default `127.0.0.1`).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// Authentication: the credential sources and rules (see [`Auth`]);
    /// turns [`enable_auth`](Self::enable_auth) on.
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = Some(auth);
        self.enable_auth = true;
        self
    }

    /// Declares role `name` and what it grants (see [`Role`]): workflows by
    /// name, every workflow, or reading / writing models through their
    /// generated nodes. Once any role is declared, every call over HTTP and
    /// MCP over HTTP (and [`Nexus::execute_in`], the CLI with `--role`) runs
    /// only what its context's roles grant; a role declared twice, or naming
    /// a model the database does not have, fails `build` with `config`, and
    /// one naming a workflow that is never registered fails serving.
    ///
    /// ```no_run
    /// # fn f(db: dataflow::DataFlow) -> dataflow::Result<()> {
    /// let app = nexus::Nexus::builder()
    ///     .role("reader", |r| r.workflows(["get_user", "list_users"]))
    ///     .role("editor", |r| r.models_read(["User"]).models_write(["User"]))
    ///     .role("admin", |r| r.all())
    ///     .build(db)?;
    /// # Ok(()) }
    /// ```
    pub fn role(mut self, name: impl Into<String>, grant: impl FnOnce(Role) -> Role) -> Self {
        self.roles.push((name.into(), grant(Role::default())));
        self
    }

    /// At most `per_minute` workflow calls per caller per minute (the
    /// caller is its actor, else its client address), in bursts of up to
    /// `per_minute`. Over it a call is refused with 429 `rate_limited`,
    /// `Retry-After` and the `RateLimit` headers. Counted per instance in
    /// memory unless [`rate_limit_store`](Self::rate_limit_store) says
    /// otherwise; only calls over a listener (HTTP API, MCP over HTTP) count.
    pub fn rate_limit(mut self, per_minute: u32) -> Self {
        self.rate_limit = Some(per_minute);
        self
    }

    /// At most `per_minute` workflow calls per minute for the whole
    /// instance, whoever calls.
    pub fn rate_limit_global(mut self, per_minute: u32) -> Self {
        self.rate_limit_global = Some(per_minute);
        self
    }

    /// At most `per_minute` calls of workflow `name` per caller per minute
    /// (besides [`rate_limit`](Self::rate_limit)), for workflows dearer
    /// than the rest.
    pub fn rate_limit_workflow(mut self, name: impl Into<String>, per_minute: u32) -> Self {
        self.rate_limit_workflows.push((name.into(), per_minute));
        self
    }

    /// Where rate-limit counters live (default: this process's memory,
    /// [`limits::MemoryStore`]); a shared store makes several instances
    /// count together.
    pub fn rate_limit_store(mut self, store: Arc<dyn limits::RateStore>) -> Self {
        self.rate_limit_store = Some(store);
        self
    }

    /// Checks the options: ones whose feature is not built yet fail here
    /// rather than being silently ignored.
    pub fn build(self, db: DataFlow) -> Result<Nexus> {
        let pending = [(
            self.auto_discovery,
            "auto_discovery(true) (registration never scans files; only false is supported)",
        )];
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
        self.check_bounds()?;
        let policy = security::Policy::new(
            &self.host,
            self.allowed_hosts.as_deref(),
            self.cors.as_deref(),
        )?;
        let access = access::Roles::new(
            &self.roles,
            &db,
            self.forbidden_as_not_found,
            self.list_forbidden_workflows,
        )?;
        let limits = limits::RateLimits::new(
            self.rate_limit,
            self.rate_limit_global,
            &self.rate_limit_workflows,
            self.rate_limit_store.clone(),
        )?;
        let surface = channel::Surface {
            metrics: self.enable_monitoring,
            events: self.enable_sse_transport,
            discovery: self.enable_discovery,
            trust_tenant_header: self.trust_tenant_header,
        };
        let auth = match self.enable_auth {
            true => Some(Arc::new(auth::Authenticator::new(self.auth.as_ref(), &db)?)),
            false => None,
        };
        let runs = runs::Runs::new(runs::RunLimits {
            max_running: self.max_async_runs,
            max_kept: self.async_store_max_runs,
            max_bytes: self.async_store_max_bytes,
            ttl: self.async_store_ttl,
        });
        if let Some(unknown) = self
            .event_records
            .iter()
            .find(|m| !db.models().iter().any(|s| s.name == m.as_str()))
        {
            return Err(Error::new(
                ErrorCode::Config,
                format!("event_records names model `{unknown}`, which this database does not have"),
            )
            .with_model(unknown.clone()));
        }
        let hub = Arc::new(channel::Hub::new(
            &db,
            self.event_buffer,
            self.event_records.iter().cloned().collect(),
        ));
        if let Some(auth) = &auth {
            auth.register(&hub.registry)?;
        }
        let sessions = self
            .enable_sessions
            .then(|| Arc::new(sessions::Sessions::new(db.clone(), self.session_ttl)));
        let durable = self.enable_durability.then(|| {
            Arc::new(durable::Durable::new(
                db.clone(),
                self.durability_retention,
                self.durability_lease,
            ))
        });
        Ok(Nexus {
            options: self,
            policy,
            shared: channel::Shared {
                db,
                workflows: Arc::new(BTreeMap::new()),
                surface,
                hub,
                runs: Arc::new(runs),
                auth,
                access: Arc::new(access),
                limits: Arc::new(limits),
                sessions,
                durable,
            },
        })
    }

    /// Every bound is at least one (a zero would refuse everything).
    fn check_bounds(&self) -> Result<()> {
        let counts = [
            ("max_connections", self.max_connections),
            ("max_async_runs", self.max_async_runs),
            ("async_store_max_runs", self.async_store_max_runs),
            ("async_store_max_bytes", self.async_store_max_bytes),
            ("mcp_max_sessions", self.mcp_max_sessions),
            ("event_buffer", self.event_buffer),
        ];
        let durations = [
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("async_store_ttl", self.async_store_ttl),
            ("durability_retention", self.durability_retention),
            ("durability_lease", self.durability_lease),
            ("mcp_session_idle", self.mcp_session_idle),
            ("session_ttl", self.session_ttl),
        ];
        let zero = counts
            .iter()
            .filter(|(_, n)| *n == 0)
            .map(|(name, _)| *name)
            .chain(
                durations
                    .iter()
                    .filter(|(_, d)| d.is_zero())
                    .map(|(name, _)| *name),
            )
            .next();
        match zero {
            Some(name) => Err(Error::new(
                ErrorCode::Config,
                format!("{name} must be more than zero"),
            )),
            None => Ok(()),
        }
    }

    /// The connection limits of each listener.
    pub(crate) fn limits(&self) -> serve::Limits {
        serve::Limits {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
        }
    }

    /// How MCP over streamable HTTP is served, under `policy`.
    pub(crate) fn mcp_options(&self, policy: security::Policy) -> mcp::HttpOptions {
        mcp::HttpOptions {
            policy,
            max_sessions: self.mcp_max_sessions,
            session_idle: self.mcp_session_idle,
            limits: self.limits(),
        }
    }
}

/// The application: a database and its registered workflows.
pub struct Nexus {
    options: NexusBuilder,
    /// The Host / Origin / CORS rule of both listeners.
    policy: security::Policy,
    pub(crate) shared: channel::Shared,
}

impl Nexus {
    /// The options, each at its default.
    pub fn builder() -> NexusBuilder {
        NexusBuilder::default()
    }

    /// The database the workflows run on.
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
        if self.shared.sessions.is_some() && sessions::TOOLS.contains(&name) {
            return Err(Error::new(
                ErrorCode::Validation,
                format!("workflow name `{name}` is taken by the sessions' MCP tool of that name (enable_sessions)"),
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
        let needs = access::Needs::of(&self.shared.db, &workflow);
        let writes = events::Write::of(&self.shared.db, &workflow);
        let checksum = durable::checksum(&workflow).into();
        let mut all = (*self.shared.workflows).clone();
        all.insert(
            name.to_string(),
            Registered {
                name: name.to_string(),
                description,
                workflow,
                needs,
                session_outputs: Vec::new(),
                writes,
                checksum,
            },
        );
        self.shared.workflows = Arc::new(all);
        Ok(())
    }

    /// After a successful run of `workflow` with a session, sets the
    /// session's `key` to the run's output at `output`: a node id and a
    /// dotted path into its output (`"create.id"`, `"users.records.0"`).
    /// Every output of one run is one merge into the session, after the
    /// run's writes (a failed run changes no session); a missing or `null`
    /// output removes the key. A run without a session writes none. Needs
    /// `enable_sessions(true)`; the workflow and node must exist.
    ///
    /// ```no_run
    /// # fn f(app: &mut nexus::Nexus) -> dataflow::Result<()> {
    /// // `create_user` creates with node `create`; later runs read
    /// // `{{session.user_id}}`.
    /// app.session_output("create_user", "user_id", "create.id")?;
    /// # Ok(()) }
    /// ```
    pub fn session_output(&mut self, workflow: &str, key: &str, output: &str) -> Result<()> {
        if self.shared.sessions.is_none() {
            return Err(Error::new(
                ErrorCode::Config,
                "session_output needs sessions: build the app with enable_sessions(true)",
            ));
        }
        let valid_key = !key.is_empty()
            && key.len() <= 128
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid_key {
            return Err(Error::new(
                ErrorCode::Config,
                format!("session key `{key}` must be letters, digits or `_`"),
            ));
        }
        let path: Vec<String> = output.split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            return Err(Error::new(
                ErrorCode::Config,
                format!("session output `{output}` is not a dotted path such as `create.id`"),
            ));
        }
        let mut all = (*self.shared.workflows).clone();
        let Some(w) = all.get_mut(workflow) else {
            return Err(Error::new(
                ErrorCode::Config,
                format!("session_output names workflow `{workflow}`, which is not registered"),
            ));
        };
        if !w.workflow.node_ids().any(|n| n == path[0]) {
            return Err(Error::new(
                ErrorCode::Config,
                format!(
                    "session output `{output}`: workflow `{workflow}` has no node `{}`",
                    path[0]
                ),
            )
            .with_node(path[0].clone()));
        }
        w.session_outputs.retain(|(k, _)| k != key);
        w.session_outputs.push((key.to_string(), path));
        self.shared.workflows = Arc::new(all);
        Ok(())
    }

    /// Makes an API key, as `keys create` does (needs
    /// [`Auth::api_keys`]): `{"id", "name", "roles", "tenant", "created",
    /// "expires", "key"}`, the key shown this once (only its hash is
    /// stored). `expires_in: None` never expires.
    pub async fn create_api_key(
        &self,
        name: &str,
        roles: &[&str],
        tenant: Option<&str>,
        expires_in: Option<Duration>,
    ) -> Result<Value> {
        self.key_store()?
            .create(auth::keys::NewKey {
                name: name.to_string(),
                roles: roles.iter().map(|r| r.to_string()).collect(),
                tenant: tenant.map(str::to_string),
                expires_in,
                client: false,
            })
            .await
    }

    /// Revokes the API key (or OAuth client) `id`, as `keys revoke` does;
    /// this process refuses it at once, others once their cache of it
    /// expires ([`Auth::api_key_cache_ttl`]).
    pub async fn revoke_api_key(&self, id: &str) -> Result<()> {
        self.key_store()?.revoke(id).await
    }

    pub(crate) fn key_store(&self) -> Result<&auth::keys::Keys> {
        self.shared
            .auth
            .as_ref()
            .and_then(|a| a.keys.as_ref())
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::Config,
                    "API keys are off: build the app with `.auth(nexus::Auth::new().api_keys(true))`",
                )
            })
    }

    /// The registered workflows, in name order.
    pub fn workflows(&self) -> impl Iterator<Item = &Registered> {
        self.shared.workflows.values()
    }

    /// The HTTP API as an axum router (what `serve` listens with), with the
    /// routes the options turn on, to mount in a server of your own
    /// (`enable_http_transport` only decides what nexus listens on itself).
    /// It applies the [`allowed_hosts`](NexusBuilder::allowed_hosts) and
    /// [`cors`](NexusBuilder::cors) policy and `nosniff`; the connection
    /// limits are the serving loop's and are not part of it.
    pub fn router(&self) -> axum::Router {
        http::router(self.shared.clone(), self.policy.clone())
    }

    /// The MCP server: one tool per registered workflow, sharing this
    /// application's event stream and metrics.
    pub fn mcp_server(&self) -> mcp::McpServer {
        mcp::McpServer::new(self.shared.clone())
    }

    /// Serves the HTTP API on `api_port` (unless
    /// [`enable_http_transport(false)`](NexusBuilder::enable_http_transport))
    /// and MCP (streamable HTTP, at `/mcp`) on `mcp_port` until Ctrl-C /
    /// SIGTERM or [`shutdown`](Self::shutdown); in-flight requests finish.
    /// MCP has no off switch, so there is always something to serve.
    pub async fn serve(&self) -> Result<()> {
        if self.options.enable_http_transport {
            tokio::try_join!(self.serve_http(), self.serve_mcp()).map(drop)
        } else {
            self.serve_mcp().await
        }
    }

    /// The HTTP API alone, on `api_port`.
    pub async fn serve_http(&self) -> Result<()> {
        self.http_enabled()?;
        let listener = self.listen(self.options.api_port, "HTTP API", "").await?;
        self.serve_http_on(listener).await
    }

    /// The HTTP API on a listener of the caller's (e.g. bound to port 0),
    /// with the connection timeouts and limit of the options.
    pub async fn serve_http_on(&self, listener: tokio::net::TcpListener) -> Result<()> {
        self.http_enabled()?;
        self.check_names()?;
        self.prepare_tables().await?;
        self.boot_durability().await?;
        let shutdown = self.shared.hub.shutdown.clone();
        serve::serve(listener, self.router(), self.options.limits(), shutdown).await;
        Ok(())
    }

    /// MCP over streamable HTTP at `http://host:mcp_port/mcp`.
    pub async fn serve_mcp(&self) -> Result<()> {
        let listener = self
            .listen(self.options.mcp_port, "MCP", mcp::MCP_PATH)
            .await?;
        self.serve_mcp_on(listener).await
    }

    /// MCP over streamable HTTP on a listener of the caller's, under the
    /// same Host / Origin rule and connection limits as the HTTP API.
    pub async fn serve_mcp_on(&self, listener: tokio::net::TcpListener) -> Result<()> {
        self.check_names()?;
        self.prepare_tables().await?;
        self.boot_durability().await?;
        mcp::serve_http_until(
            self.mcp_server(),
            listener,
            self.options.mcp_options(self.policy.clone()),
            self.shared.hub.shutdown.clone(),
        )
        .await;
        Ok(())
    }

    /// Stops every server of this application as Ctrl-C / SIGTERM would:
    /// no new connections; in-flight requests finish; event streams and MCP
    /// sessions close; the `serve*` futures then return.
    pub fn shutdown(&self) {
        self.shared.hub.shutdown.cancel();
    }

    /// MCP over stdin/stdout (nothing else may write to stdout in this mode).
    pub async fn serve_mcp_stdio(&self) -> Result<()> {
        self.check_names()?;
        self.boot_durability().await?;
        mcp::serve_stdio(self.mcp_server()).await
    }

    /// With durability on: creates its tables (a database that cannot is a
    /// boot error, not a first request's), then starts the loop that renews
    /// this instance's run leases, resumes runs whose lease expired (at
    /// once: the runs a crash cut off) and purges expired rows.
    async fn boot_durability(&self) -> Result<()> {
        if let Some(d) = &self.shared.durable {
            d.ensure_tables().await?;
            durable::Durable::start(&self.shared);
        }
        Ok(())
    }

    /// Deletes expired idempotency keys and the journal of runs finished
    /// longer ago than [`durability_retention`](NexusBuilder::durability_retention)
    /// (serving does it every minute); returns how many rows went. `config`
    /// without durability.
    pub async fn purge_durable(&self) -> Result<u64> {
        match &self.shared.durable {
            Some(d) => d.purge().await,
            None => Err(Error::new(
                ErrorCode::Config,
                "durability is off: build the app with `enable_durability(true)`",
            )),
        }
    }

    /// Refuses to serve (or run) when a role or a per-workflow rate limit
    /// names a workflow that is not registered: a typo that would silently
    /// grant or limit nothing.
    fn check_names(&self) -> Result<()> {
        let workflows = &self.shared.workflows;
        if let Some((role, name)) = self.shared.access.unregistered(workflows) {
            return Err(Error::new(
                ErrorCode::Config,
                format!("role `{role}` grants workflow `{name}`, which is not registered"),
            ));
        }
        if let Some(name) = self.shared.limits.unregistered(workflows) {
            return Err(Error::new(
                ErrorCode::Config,
                format!("rate_limit_workflow names workflow `{name}`, which is not registered"),
            ));
        }
        Ok(())
    }

    /// Before serving: creates nexus's own tables the options need
    /// (`nexus_sessions`), so a server that cannot is a boot error, and on
    /// PostgreSQL joins the other instances' event stream.
    async fn prepare_tables(&self) -> Result<()> {
        if let Some(sessions) = &self.shared.sessions {
            sessions.ensure_table().await?;
        }
        if self.options.enable_sse_transport {
            let hub = &self.shared.hub;
            hub.events.connect(&self.shared.db, &hub.shutdown)?;
        }
        Ok(())
    }

    /// Refuses to serve HTTP when the options say not to.
    fn http_enabled(&self) -> Result<()> {
        if self.options.enable_http_transport {
            return Ok(());
        }
        Err(Error::new(
            ErrorCode::Config,
            "the HTTP API is off (enable_http_transport(false)); serve MCP with `serve_mcp` or drop the option",
        ))
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

    /// Parses the process arguments and runs: `serve` (default), `mcp`
    /// (stdio), `workflows`, `run <workflow> --<input> <value>...`, `models`
    /// and `migrate ...` (the dataflow CLI). Returns the exit code for `main`
    /// to return: 0 on success, 2 for a usage error, else the error code's
    /// [`exit_code`](ErrorCode::exit_code) (a server that cannot start
    /// prints `error[code]: message` first, e.g. `config`, 8, for a port in use).
    pub async fn run(&self) -> ExitCode {
        self.run_from(std::env::args_os()).await
    }

    /// [`run`](Self::run) with explicit arguments (the first is the program name).
    pub async fn run_from<I, T>(&self, args: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        if let Err(e) = self.check_names() {
            return print_error(&e);
        }
        let served = match cli::dispatch(self, args.into_iter().map(Into::into).collect()).await {
            cli::Outcome::Serve => self.serve().await,
            cli::Outcome::McpStdio(roles) if roles.is_empty() => self.serve_mcp_stdio().await,
            cli::Outcome::McpStdio(roles) => match self.check_names() {
                Ok(()) => mcp::serve_stdio(self.mcp_server().with_roles(roles)).await,
                Err(e) => Err(e),
            },
            cli::Outcome::Exit(code) => return ExitCode::from(code),
        };
        match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => print_error(&e),
        }
    }

    /// Runs a registered workflow in this process as the operator (roles
    /// and rate limits do not apply), the path every channel takes (its
    /// metrics are labelled `channel="direct"`). A failed run's
    /// error reads as its [`Error`] and says which nodes
    /// completed before it ([`RunError::completed`](dataflow::RunError::completed)).
    pub async fn execute(
        &self,
        name: &str,
        inputs: Value,
    ) -> std::result::Result<Value, dataflow::RunError> {
        let caller = channel::Caller::new(
            dataflow::Context::new().channel("direct"),
            channel::Origin::Operator,
        );
        self.shared.execute(caller, name, inputs, "direct").await
    }

    /// [`execute`](Self::execute) with the caller's context (its tenant,
    /// actor, roles and request id reach every node of the run). Once roles
    /// are declared, the context's roles decide whether it may run `name`
    /// (`forbidden` otherwise), unless it is [`Context::system`]; rate limits
    /// do not apply in process.
    ///
    /// [`Context::system`]: dataflow::Context::system
    pub async fn execute_in(
        &self,
        context: dataflow::Context,
        name: &str,
        inputs: Value,
    ) -> std::result::Result<Value, dataflow::RunError> {
        let caller = channel::Caller::new(context, channel::Origin::InProcess);
        self.shared.execute(caller, name, inputs, "direct").await
    }
}

/// Prints `error[code]: message` to stderr, the way every nexus command
/// reports an error, and returns the code's exit code: for a `main` that
/// fails before [`Nexus::run`] (booting the database, registering).
pub fn print_error(e: &Error) -> ExitCode {
    ExitCode::from(channel::cli_error(&e.clone().into(), false))
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
