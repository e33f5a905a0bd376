//! # dataflow
//!
//! One annotated struct becomes a schema, twelve nodes (CRUD and Aggregate) and a table on
//! SQLite (embedded, the default) or PostgreSQL.
//!
//! ```
//! use dataflow::DataFlow;
//! use serde_json::json;
//!
//! #[dataflow::model]
//! pub struct Note {
//!     pub id: String,
//!     pub title: String,
//!     #[field(default = false)]
//!     pub done: bool,
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let db = DataFlow::builder("sqlite::memory:").build().await?;
//! let note = db.execute("NoteCreateNode", json!({"title": "write docs"})).await?;
//! assert_eq!(note["done"], false);
//! let page = db.execute("NoteListNode", json!({"filter": {"title": {"$like": "write%"}}})).await?;
//! assert_eq!(page["count"], 1);
//! # Ok::<(), dataflow::Error>(())
//! # }).unwrap();
//! ```

mod audit;
mod backend;
mod cache;
pub mod cli;
mod config;
mod context;
mod dataflow;
mod error;
mod filter;
mod health;
pub mod json_schema;
mod metrics;
pub mod migrate;
mod migrations;
mod monitor;
mod node;
pub mod nodes;
mod raw;
mod registry;
mod rls;
pub mod schema;
mod sql;
mod typed;
mod value;
mod workflow;
mod writer;

pub use crate::audit::{AuditListNode, AUDIT_LIST_NODE};
pub use crate::backend::AnyConnection;
pub use crate::cache::{CacheStats, DEFAULT_CACHE_MAX_BYTES, SQLITE_CHECK_EVERY};
pub use crate::config::Config;
pub use crate::context::{Context, SessionData};
pub use crate::dataflow::{DataFlow, DataFlowBuilder, PoolState, MAX_INPUT_DEPTH};
pub use crate::error::{Error, ErrorCode, Result};
pub use crate::filter::{MAX_FILTER_CONDITIONS, MAX_LIKE_PATTERN_BYTES};
pub use crate::health::{
    CacheHealth, DatabaseHealth, HealthError, HealthReport, MigrationHealth, MigrationState,
    PoolHealth, SlowQueryHealth, WriterHealth,
};
pub use crate::metrics::{MetricsCollector, FAMILIES as METRIC_FAMILIES};
pub use crate::node::{MergeNode, Node, NodeContext, NodeFuture, SwitchNode};
pub use crate::schema::{Model, ModelSchema};
pub use crate::sql::Dialect;
pub use crate::value::MAX_INDEXED_TEXT_CHARS;
pub use crate::workflow::{
    new_run_id, ConnectionSpec, NodeJournal, NodeSpec, Observer, Run, RunError, RunEvent, Workflow,
    WorkflowBuilder, WorkflowRuntime, WorkflowSpec,
};
#[doc(inline)]
pub use dataflow_macros::{embed_migrations, model, node};
/// The `prometheus` crate dataflow's [`MetricsCollector`] implements
/// `Collector` of (register it in a registry of the same version).
pub use prometheus;

/// Used by the code `#[dataflow::model]` generates; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::node::NODES;
    pub use crate::registry::MODELS;
    pub use linkme;
    pub use serde;
}
