//! A nexus application: the seed's three models and workflows over them,
//! served over HTTP, MCP and the command line from one registration.
//!
//! ```sh
//! cargo run --example nexus_server                       # HTTP on 127.0.0.1:8000, MCP on :3001/mcp
//! curl -X POST localhost:8000/workflows/create_user/execute -d '{"inputs": {"email": "a@x.io"}}'
//! cargo run --example nexus_server -- run create_user --email b@x.io --full_name Bo
//! cargo run --example nexus_server -- run create_user --inputs '{"email": "c@x.io"}' --json
//! cargo run --example nexus_server -- run get_user --id <id> --url http://127.0.0.1:8000
//! cargo run --example nexus_server -- run create_user --help
//! cargo run --example nexus_server -- workflows
//! cargo run --example nexus_server -- mcp                # MCP over stdio, for an agent
//! ```
//!
//! Environment: `NEXUS_DATABASE_URL` (default `sqlite://nexus.db`), `NEXUS_API_PORT`
//! (default 8000), `NEXUS_MCP_PORT` (default 3001; MCP at `http://127.0.0.1:3001/mcp`).
//! A port that is not a number is a configuration error (exit code 8).
//!
//! Authentication is on when a credential source is given:
//! `NEXUS_JWT_SECRET` (HS256, 32+ bytes), `NEXUS_JWT_PUBLIC_KEY` (a file with
//! an RS256 public key in PEM), `NEXUS_API_KEYS=1` (keys made with
//! `keys create`); `NEXUS_JWT_ISSUER` / `NEXUS_JWT_AUDIENCE` restrict tokens,
//! and `NEXUS_AUTH_FAILURES_PER_MINUTE` bounds failed sign-ins per address.
//! With auth on it declares roles: `reader` (get and list users), `editor`
//! (also create users and start conversations) and `admin` (everything).
//!
//! `NEXUS_SESSIONS=1` turns sessions on: `create_user` keeps the new user's
//! id in the caller's session (`user_id`), and `whoami` reads that user
//! through `{{session.user_id}}`.
//!
//! ```sh
//! NEXUS_SESSIONS=1 cargo run --example nexus_server -- session create --json   # {"id": "nxs_...", ...}
//! NEXUS_SESSIONS=1 cargo run --example nexus_server -- run create_user --email d@x.io --session nxs_...
//! NEXUS_SESSIONS=1 cargo run --example nexus_server -- run whoami --session nxs_...
//! ```
//!
//! ```sh
//! NEXUS_API_KEYS=1 cargo run --example nexus_server -- keys create --name ci --role reader
//! NEXUS_API_KEYS=1 cargo run --example nexus_server &
//! cargo run --example nexus_server -- run list_users --url http://127.0.0.1:8000 --token nxk_...
//! ```

use chrono::{DateTime, Utc};
use dataflow::{DataFlow, WorkflowBuilder};
use nexus::Nexus;
use serde_json::json;
use std::process::ExitCode;

#[dataflow::model]
pub struct User {
    pub id: String,
    #[field(unique)]
    pub email: String,
    pub full_name: Option<String>,
    #[field(default = true)]
    pub active: bool,
}

#[dataflow::model]
pub struct Session {
    pub id: String,
    #[field(references = "User", on_delete = "cascade")]
    pub user_id: String,
    #[field(unique)]
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

#[dataflow::model]
pub struct Conversation {
    pub id: String,
    #[field(references = "Session", on_delete = "cascade")]
    pub session_id: String,
    #[field(references = "User", on_delete = "cascade")]
    pub user_id: String,
    pub title: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    // dataflow's spans and events (slow queries, `echo`) under RUST_LOG,
    // e.g. `RUST_LOG=dataflow=info`; nothing is printed without it.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match app().await {
        Ok(app) => app.run().await,
        Err(e) => nexus::print_error(&e),
    }
}

/// Boots the database and registers the workflows.
async fn app() -> Result<Nexus, dataflow::Error> {
    let url = std::env::var("NEXUS_DATABASE_URL").unwrap_or_else(|_| "sqlite://nexus.db".into());
    let port = port_from_env("NEXUS_API_PORT", 8000)?;
    let mcp_port = port_from_env("NEXUS_MCP_PORT", 3001)?;
    let db = DataFlow::builder(&url).build().await?;

    let mut create = WorkflowBuilder::new();
    create.description("Create a user").add_node(
        "UserCreateNode",
        "create",
        json!({"email": "{{email}}", "full_name": "{{full_name}}", "active": "{{active}}"}),
    );
    let mut get = WorkflowBuilder::new();
    get.description("Read a user by id")
        .add_node("UserReadNode", "user", json!({"id": "{{id}}"}));
    let mut list = WorkflowBuilder::new();
    list.description("List users, newest first")
        .add_node("UserListNode", "users", json!({"filter": {"active": "{{active}}"}, "order_by": ["-created_at"], "limit": "{{limit}}"}));
    let mut start = WorkflowBuilder::new();
    start
        .description("Open a session and a conversation for a user")
        .add_node(
            "SessionCreateNode",
            "session",
            json!({"user_id": "{{user_id}}", "token": "{{token}}", "expires_at": "{{expires_at}}"}),
        )
        .add_node(
            "ConversationCreateNode",
            "conversation",
            json!({"user_id": "{{user_id}}", "title": "{{title}}"}),
        )
        .add_connection("session", "id", "conversation", "session_id")
        // It writes two models: both or neither.
        .transactional(true);

    let mut builder = Nexus::builder().api_port(port).mcp_port(mcp_port);
    if let Some(auth) = auth_from_env()? {
        // Who may run what, once callers prove who they are: readers read
        // users, editors also create users and conversations, admins run
        // everything (a token's `roles` claim, an API key's `--role`).
        builder = builder
            .auth(auth)
            .role("reader", |r| r.models_read(["User"]))
            .role("editor", |r| {
                r.models_read(["User", "Session", "Conversation"])
                    .models_write(["User", "Session", "Conversation"])
            })
            .role("admin", |r| r.all());
    }
    let sessions = std::env::var("NEXUS_SESSIONS").as_deref() == Ok("1");
    let mut app = builder.enable_sessions(sessions).build(db.clone())?;
    app.register("create_user", create.build(&db)?)?;
    app.register("get_user", get.build(&db)?)?;
    app.register("list_users", list.build(&db)?)?;
    app.register("start_conversation", start.build(&db)?)?;
    if sessions {
        // The session remembers who was created; `whoami` reads them back.
        app.session_output("create_user", "user_id", "create.id")?;
        let mut whoami = WorkflowBuilder::new();
        whoami
            .description("Read the user this session created")
            .add_node("UserReadNode", "user", json!({"id": "{{session.user_id}}"}));
        app.register("whoami", whoami.build(&db)?)?;
    }
    Ok(app)
}

/// The authentication the environment asks for (`None`: auth off).
fn auth_from_env() -> Result<Option<nexus::Auth>, dataflow::Error> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut auth = nexus::Auth::new();
    let mut any = false;
    if let Some(secret) = var("NEXUS_JWT_SECRET") {
        auth = auth.jwt_hs256(secret);
        any = true;
    }
    if let Some(path) = var("NEXUS_JWT_PUBLIC_KEY") {
        let pem = std::fs::read(&path).map_err(|e| {
            dataflow::Error::new(
                dataflow::ErrorCode::Config,
                format!("NEXUS_JWT_PUBLIC_KEY={path}: {e}"),
            )
        })?;
        auth = auth.jwt_rs256_pem(pem);
        any = true;
    }
    if var("NEXUS_API_KEYS").as_deref() == Some("1") {
        auth = auth.api_keys(true);
        any = true;
    }
    if let Some(iss) = var("NEXUS_JWT_ISSUER") {
        auth = auth.jwt_issuer(iss);
    }
    if let Some(aud) = var("NEXUS_JWT_AUDIENCE") {
        auth = auth.jwt_audience(aud);
    }
    if let Some(n) = var("NEXUS_AUTH_FAILURES_PER_MINUTE") {
        let n = n.parse().map_err(|_| {
            dataflow::Error::new(
                dataflow::ErrorCode::Config,
                format!("NEXUS_AUTH_FAILURES_PER_MINUTE=`{n}` is not a number"),
            )
        })?;
        auth = auth.failed_attempts_per_minute(n);
    }
    Ok(any.then_some(auth))
}

/// The port in the variable `name`, or `default` when it is unset; anything
/// else than a port number is a `config` error naming the variable.
fn port_from_env(name: &str, default: u16) -> Result<u16, dataflow::Error> {
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Ok(default),
        Ok(text) => text.trim().parse().map_err(|_| {
            dataflow::Error::new(
                dataflow::ErrorCode::Config,
                format!("{name}=`{text}` is not a port number (0 to 65535)"),
            )
        }),
        Err(std::env::VarError::NotUnicode(text)) => Err(dataflow::Error::new(
            dataflow::ErrorCode::Config,
            format!("{name}={text:?} is not a port number (0 to 65535)"),
        )),
    }
}
