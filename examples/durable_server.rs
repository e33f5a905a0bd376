//! Durable requests: a nexus application with `enable_durability(true)`.
//! Every run is journaled in the database, a retried request with the same
//! `Idempotency-Key` runs once, and a run a crash cut off is resumed after
//! its last completed node when an instance starts (or another instance's
//! lease on it expires).
//!
//! ```sh
//! cargo run --example durable_server &
//! curl -X POST localhost:8000/workflows/onboard/execute -H 'Idempotency-Key: k1' \
//!      -d '{"inputs": {"email": "a@x.io", "pause_ms": 5000}}'
//! # kill -9 the server during the pause, start it again: the run finishes;
//! # the same request with the same key then answers the resumed run's result.
//! cargo run --example durable_server -- run onboard --email b@x.io --idempotency-key k2
//! ```
//!
//! `onboard` is three nodes: create an `Account`, pause (a hand-written node
//! that sleeps `pause_ms`), create its `Welcome`; `onboard_tx` is the same in
//! one transaction. Environment:
//! `NEXUS_DATABASE_URL` (default `sqlite://durable.db`), `NEXUS_API_PORT`
//! (8000), `NEXUS_MCP_PORT` (3001), `NEXUS_LEASE_MS` (the run lease, default
//! 30000), `NEXUS_ONBOARD_TEXT` (the welcome text: changing it changes the
//! workflow's definition, so runs started before are not resumed),
//! `NEXUS_RETENTION_MS` (how long keys are kept, default a day) and
//! `NEXUS_TRUST_TENANT_HEADER=1` (callers name their tenant in `X-Tenant-ID`:
//! behind a gateway only; keys and runs are per tenant).

use dataflow::{DataFlow, Node, NodeContext, NodeFuture, WorkflowBuilder};
use nexus::Nexus;
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::Duration;

#[dataflow::model]
pub struct Account {
    pub id: String,
    #[field(unique)]
    pub email: String,
}

#[dataflow::model]
pub struct Welcome {
    pub id: String,
    #[field(references = "Account", on_delete = "cascade")]
    pub account_id: String,
    pub text: String,
}

/// Sleeps `ms` milliseconds and passes `value` on.
pub struct Pause;

#[dataflow::node]
impl Node for Pause {
    fn name(&self) -> &'static str {
        "PauseNode"
    }
    fn input_schema(&self) -> Value {
        json!({"type": "object", "properties": {"ms": {"type": "integer"}, "value": {}}, "required": ["ms"]})
    }
    fn run<'a>(&'a self, _ctx: &'a NodeContext, input: Value) -> NodeFuture<'a> {
        Box::pin(async move {
            let ms = input["ms"].as_u64().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(json!({"value": input["value"], "slept_ms": ms}))
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match app().await {
        Ok(app) => app.run().await,
        Err(e) => nexus::print_error(&e),
    }
}

fn number(name: &str, default: u64) -> Result<u64, dataflow::Error> {
    match std::env::var(name) {
        Ok(text) => text.trim().parse().map_err(|_| {
            dataflow::Error::new(
                dataflow::ErrorCode::Config,
                format!("{name}=`{text}` is not a number"),
            )
        }),
        Err(_) => Ok(default),
    }
}

async fn app() -> Result<Nexus, dataflow::Error> {
    let url = std::env::var("NEXUS_DATABASE_URL").unwrap_or_else(|_| "sqlite://durable.db".into());
    let port = u16::try_from(number("NEXUS_API_PORT", 8000)?).unwrap_or(8000);
    let mcp_port = u16::try_from(number("NEXUS_MCP_PORT", 3001)?).unwrap_or(3001);
    let lease = Duration::from_millis(number("NEXUS_LEASE_MS", 30_000)?);
    let retention = Duration::from_millis(number("NEXUS_RETENTION_MS", 86_400_000)?);
    let trust_tenant = std::env::var("NEXUS_TRUST_TENANT_HEADER").as_deref() == Ok("1");
    let text = std::env::var("NEXUS_ONBOARD_TEXT").unwrap_or_else(|_| "welcome!".into());
    let db = DataFlow::builder(&url).build().await?;

    let mut onboard = WorkflowBuilder::new();
    onboard
        .description("Create an account, pause, then welcome it")
        .add_node(
            "AccountCreateNode",
            "account",
            json!({"email": "{{email}}"}),
        )
        .add_node("PauseNode", "pause", json!({"ms": "{{pause_ms}}"}))
        .add_node("WelcomeCreateNode", "welcome", json!({"text": text}))
        .add_connection("account", "id", "pause", "value")
        .add_connection("pause", "value", "welcome", "account_id");
    // The same, all or nothing: its journal entries commit with its writes.
    let mut onboard_tx = WorkflowBuilder::new();
    onboard_tx
        .description("onboard in one transaction")
        .add_node(
            "AccountCreateNode",
            "account",
            json!({"email": "{{email}}"}),
        )
        .add_node("PauseNode", "pause", json!({"ms": "{{pause_ms}}"}))
        .add_node("WelcomeCreateNode", "welcome", json!({"text": "welcome!"}))
        .add_connection("account", "id", "pause", "value")
        .add_connection("pause", "value", "welcome", "account_id")
        .transactional(true);
    let mut accounts = WorkflowBuilder::new();
    accounts.description("List accounts").add_node(
        "AccountListNode",
        "accounts",
        json!({"limit": 1000}),
    );
    let mut welcomes = WorkflowBuilder::new();
    welcomes.description("List welcomes").add_node(
        "WelcomeListNode",
        "welcomes",
        json!({"limit": 1000}),
    );
    let mut create = WorkflowBuilder::new();
    create.description("Create an account").add_node(
        "AccountCreateNode",
        "account",
        json!({"email": "{{email}}"}),
    );

    let mut app = Nexus::builder()
        .api_port(port)
        .mcp_port(mcp_port)
        .enable_durability(true)
        .durability_lease(lease)
        .durability_retention(retention)
        .trust_tenant_header(trust_tenant)
        .build(db.clone())?;
    app.register("onboard", onboard.build(&db)?)?;
    app.register("onboard_tx", onboard_tx.build(&db)?)?;
    app.register("create_account", create.build(&db)?)?;
    app.register("list_accounts", accounts.build(&db)?)?;
    app.register("list_welcomes", welcomes.build(&db)?)?;
    Ok(app)
}
