//! The procedural macros of [`dataflow`](https://docs.rs/dataflow):
//! `#[model]`, `#[node]` and `embed_migrations!`. Use them through their
//! re-exports (`dataflow::model` and so on); the generated code names
//! `::dataflow` paths.
//!
//! Each entry point only converts token streams. A model goes through
//! `parse` (syntax → `ir::ModelIr`), then `check` (semantics, with errors
//! at the field or attribute at fault), then `expand` (one module per
//! generated artifact). The vocabulary shared with the runtime (field
//! types, operations, the checksum) comes from `dataflow-core`.

#![warn(missing_docs)]

mod check;
mod errors;
mod expand;
mod ir;
mod parse;

use proc_macro::TokenStream;

/// Declares a persisted model: one annotated struct becomes a table, a
/// constant schema and twelve nodes (eleven CRUD nodes and Aggregate).
///
/// ```ignore
/// #[dataflow::model(soft_delete)]
/// pub struct User {
///     pub id: String,
///     #[field(unique, max_length = 255)]
///     pub email: String,
///     pub full_name: Option<String>,
///     #[field(default = true)]
///     pub active: bool,
/// }
/// ```
///
/// The struct must have named fields and no generics. The macro:
///
/// - derives serde's `Serialize` and `Deserialize` (unless the struct
///   already derives them);
/// - implements `dataflow::Model` with `const SCHEMA: ModelSchema`, whose
///   `checksum` identifies the schema in the database's model registry;
/// - declares the node types `{Model}{Op}Node` (`UserCreateNode`,
///   `UserReadNode`, `UserUpdateNode`, `UserDeleteNode`, `UserListNode`,
///   `UserCountNode`, `UserUpsertNode`, `UserBulkCreateNode`,
///   `UserBulkUpdateNode`, `UserBulkDeleteNode`, `UserBulkUpsertNode`);
/// - adds one link-time registry entry. No code runs at start-up.
///
/// # Model options: `#[dataflow::model(...)]`
///
/// | option | meaning |
/// |---|---|
/// | `table = "app_users"` | table name; default: snake_case plural of the struct (`User` → `users`, `Category` → `categories`) |
/// | `timestamps = false` | by default `created_at` and `updated_at` (UTC timestamps) are added and maintained; a field you declare with either name is yours instead |
/// | `soft_delete` | adds `deleted_at`; Delete/BulkDelete set it, reads skip such records unless `include_deleted: true`. The struct must not declare `deleted_at` |
/// | `append_only` | Create and reads only: Update, Delete, Upsert and the bulk changes fail with `not_allowed` |
/// | `tenant_scoped` | adds a managed `tenant_id` column that leads every key (`PRIMARY KEY (tenant_id, id)`, `UNIQUE (tenant_id, email)`, composite foreign keys) and that every node binds from the context's tenant; needs `multi_tenant(true)` at boot |
/// | `audit` | every write of the model is recorded in the audit log (`dataflow_audit`), in the write's transaction; `audit = false` opts the model out of `enable_audit_log(true)` |
/// | `versioned` | adds `version` (1 on create, incremented by every update); Update, Upsert and BulkUpdate take `expected_version`, and a stale one is `conflict`. Declare `pub version: i64` (or `i32`) to read it in Rust |
/// | `cache_ttl = "30s"` | the query cache keeps this model's Read, List and Count results at most this long (`ms`, `s`, `m` or `h`; overrides the configured `cache_ttl`; no effect with the cache off) |
///
/// Flags accept `= true` / `= false` as well as the bare key.
///
/// # Field attributes: `#[field(...)]`
///
/// | attribute | meaning |
/// |---|---|
/// | `primary_key` | the key; default: the field named `id`. Exactly one per model, not an `Option`. `String`/`Uuid` keys get a UUID v7 when omitted, integer keys auto-increment |
/// | `unique`, `index` | a unique constraint / an index |
/// | `default = <literal>` | used when a create omits the field (also the column default); `true`/`false`, an integer (`-1`), a float, or a string, type- and range-checked at compile time |
/// | `references = "Model"` | foreign key to that model's primary key (checked at boot: the model must exist and the key types match) |
/// | `on_delete = "cascade" \| "restrict" \| "set_null" \| "no_action"` | with `references`: what deleting the referenced row does; default `no_action`. `set_null` needs an `Option` field |
/// | `max_length = N` | `String` fields only: checked on input; `VARCHAR(N)` on PostgreSQL |
/// | `column = "name"` | column name, when it differs from the field name (JSON uses the field name); no two fields may share a column |
/// | `renamed_from = "old"` | the column's previous name, for the migration planner |
/// | `sensitive` | the audit log records `"***"` instead of the value (never the primary key) |
/// | `skip` | not persisted (`#[serde(skip)]`; the type needs `Default`) |
///
/// # Field types
///
/// | Rust | JSON | SQLite | PostgreSQL |
/// |---|---|---|---|
/// | `String` | string | TEXT | TEXT / VARCHAR(n) |
/// | `i16`, `i32`, `i64` | integer (range-checked) | INTEGER | SMALLINT, INTEGER, BIGINT |
/// | `f32`, `f64` | number | REAL | REAL, DOUBLE PRECISION |
/// | `bool` | boolean | INTEGER 0/1 | BOOLEAN |
/// | `chrono::DateTime<Utc>` | RFC 3339 string | TEXT in a fixed, ordered form | TIMESTAMPTZ |
/// | `chrono::NaiveDate` | `"2026-01-31"` | TEXT | DATE |
/// | `uuid::Uuid` | string | TEXT | UUID |
/// | `serde_json::Value` | any JSON | TEXT | JSONB |
/// | `Vec<u8>` | array of bytes | BLOB | BYTEA |
/// | `Option<T>` | the same, or `null` | nullable | nullable |
///
/// # Errors
///
/// Unknown or duplicate keys, wrong value types, unsupported field types and
/// attributes that contradict each other are compile errors at the
/// offending field or attribute, each with a `help:` showing the right
/// syntax. Every mistake is reported in one compile, and the struct is still
/// emitted, so there is no cascade of follow-on errors.
#[proc_macro_attribute]
pub fn model(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::model(attr.into(), item.into()).into()
}

/// Registers a hand-written node: put it on `impl dataflow::Node for T`,
/// where `T` is a unit struct. Like models, registration is a link-time
/// table entry; nothing runs at start-up. Takes no options: the node's name
/// is what `fn name(&self)` returns.
///
/// ```ignore
/// use dataflow::{Node, NodeContext, NodeFuture};
/// use serde_json::{json, Value};
///
/// pub struct Greet;
///
/// #[dataflow::node]
/// impl Node for Greet {
///     fn name(&self) -> &'static str { "GreetNode" }
///     fn input_schema(&self) -> Value {
///         json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]})
///     }
///     fn run<'a>(&'a self, _ctx: &'a NodeContext, input: Value) -> NodeFuture<'a> {
///         Box::pin(async move { Ok(json!({"greeting": format!("hello {}", input["name"])})) })
///     }
/// }
/// ```
#[proc_macro_attribute]
pub fn node(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::node::expand(attr.into(), item.into()).into()
}

/// Embeds reviewed migration files (diesel's layout:
/// `<dir>/<version>_<name>/up.sql` and `down.sql`, default dir `migrations`
/// next to `Cargo.toml`) as `&'static [dataflow::migrate::EmbeddedMigration]`,
/// for `DataFlow::builder(url).migrations(...)`. Editing a file rebuilds the
/// crate.
///
/// ```ignore
/// let db = DataFlow::builder(url)
///     .migrations(dataflow::embed_migrations!("migrations"))
///     .build()
///     .await?;
/// ```
#[proc_macro]
pub fn embed_migrations(input: TokenStream) -> TokenStream {
    expand::migrations::expand(input.into()).into()
}
