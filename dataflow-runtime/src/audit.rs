//! The audit log: who changed which record, how, from where, in the same
//! transaction as the change.
//!
//! Every write node of an audited model (`enable_audit_log(true)`, or the
//! model option `audit`) adds rows to `dataflow_audit` next to its own
//! statements, inside the transaction that holds them: a write that rolls
//! back leaves no audit row, a committed write always has its rows. Bulk
//! nodes capture the records they change with one statement per batch and
//! write their audit rows with multi-row INSERTs.
//!
//! What a row holds per operation (`op`):
//!
//! - `create`: `after` is the new record, `before` is null;
//! - `update`: `before` and `after` hold only the fields that changed
//!   (`updated_at` and `version` included);
//! - `delete`: `before` is the record as it was, `after` is null (soft
//!   deletes too);
//! - `purge`: one row per purge of the log itself (`record_id` null,
//!   `after` says how many rows went and the cutoff).
//!
//! Fields marked `#[field(sensitive)]` are recorded as `"***"`.
//!
//! The table is a built-in model (`dataflow_audit`), so the registry and
//! the migration machinery create it and version it like any model's table,
//! and [`AuditListNode`] reads it through the List node's code (filters,
//! keyset cursors), restricted to the caller's tenant.

use crate::backend::Conn;
use crate::error::{Error, ErrorCode, Result};
use crate::node::{Node, NodeContext, NodeFuture};
use crate::nodes::Ctx;
use crate::schema::{
    DefaultValue, FieldSchema, FieldType, Generated, ModelOptions, ModelSchema, Op,
};
use crate::sql::Sql;
use crate::value::{format_datetime, SqlValue};
use crate::DataFlow;
use serde_json::{json, Map, Value};

/// The table's name, also its model's name in the registry.
pub(crate) const TABLE: &str = "dataflow_audit";

/// The name of the built-in node that lists audit rows.
pub const AUDIT_LIST_NODE: &str = "AuditListNode";

const fn field(name: &'static str, ty: FieldType, nullable: bool) -> FieldSchema {
    FieldSchema {
        name,
        column: name,
        ty,
        nullable,
        primary_key: false,
        unique: false,
        index: false,
        default: None::<DefaultValue>,
        references: None,
        max_length: None,
        renamed_from: None,
        sensitive: false,
        generated: Generated::No,
    }
}

/// The audit table as a model: created, checked and versioned by the
/// registry and the migration planner like the application's models
/// (only when the audit log is on), never given nodes of its own.
pub(crate) static AUDIT: ModelSchema = ModelSchema {
    name: TABLE,
    table: TABLE,
    fields: &[
        FieldSchema {
            primary_key: true,
            generated: Generated::AutoIncrement,
            ..field("id", FieldType::I64, false)
        },
        // Not indexed: every index is one more page each audited write
        // touches; time ranges read the log newest first by `id`.
        field("at", FieldType::DateTime, false),
        field("actor", FieldType::String, true),
        field("tenant", FieldType::String, true),
        field("model", FieldType::String, false),
        field("op", FieldType::String, false),
        FieldSchema {
            index: true,
            ..field("record_id", FieldType::String, true)
        },
        // JSON text: cheaper to write than PostgreSQL's JSONB (cast it to
        // query it in SQL); the listing returns it as JSON.
        field("before", FieldType::String, true),
        field("after", FieldType::String, true),
        field("run_id", FieldType::String, true),
        field("node_id", FieldType::String, true),
        field("request_id", FieldType::String, true),
        field("channel", FieldType::String, true),
    ],
    options: ModelOptions {
        soft_delete: false,
        timestamps: false,
        tenant_scoped: false,
        audit: Some(false),
        cache_ttl_ms: None,
        append_only: true,
        versioned: false,
    },
    // `dataflow_core::checksum` of the fields above; a test keeps it in step.
    checksum: 0xc3b9_c4b0_4ad8_d554,
};

/// The columns of an audit row that are the same for every row a node run
/// writes, bound once per statement.
const RUN_COLUMNS: [&str; 8] = [
    "at",
    "actor",
    "tenant",
    "model",
    "run_id",
    "node_id",
    "request_id",
    "channel",
];

/// The columns that differ per row.
const ROW_COLUMNS: [&str; 4] = ["op", "record_id", "before", "after"];

/// What happened to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Create,
    Update,
    Delete,
}

impl Change {
    fn as_str(self) -> &'static str {
        match self {
            Change::Create => "create",
            Change::Update => "update",
            Change::Delete => "delete",
        }
    }
}

/// The `op` values a row can have.
const OPS: [&str; 4] = ["create", "update", "delete", "purge"];

/// One audit row to write: a record's change with its before and after
/// images as JSON text (already masked and, for updates, reduced to the
/// changed fields).
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) change: Change,
    pub(crate) record_id: String,
    pub(crate) before: Option<String>,
    pub(crate) after: Option<String>,
}

impl Entry {
    /// A created record.
    pub(crate) fn created(m: &ModelSchema, mut after: Value) -> Entry {
        mask(m, &mut after);
        Entry {
            change: Change::Create,
            record_id: record_id(m, &after),
            before: None,
            after: Some(after.to_string()),
        }
    }

    /// A created record whose masked JSON text is already written.
    pub(crate) fn created_text(record_id: String, after: String) -> Entry {
        Entry {
            change: Change::Create,
            record_id,
            before: None,
            after: Some(after),
        }
    }

    /// A deleted record, as it was.
    pub(crate) fn deleted(m: &ModelSchema, mut before: Value) -> Entry {
        mask(m, &mut before);
        Entry {
            change: Change::Delete,
            record_id: record_id(m, &before),
            before: Some(before.to_string()),
            after: None,
        }
    }

    /// An updated record: the fields whose values differ, before and after.
    pub(crate) fn updated(m: &ModelSchema, before: &Value, after: &Value) -> Entry {
        let (mut old, mut new) = (Map::new(), Map::new());
        if let (Some(b), Some(a)) = (before.as_object(), after.as_object()) {
            for (k, v) in a {
                let was = b.get(k).unwrap_or(&Value::Null);
                if was != v {
                    old.insert(k.clone(), was.clone());
                    new.insert(k.clone(), v.clone());
                }
            }
        }
        let (mut old, mut new) = (Value::Object(old), Value::Object(new));
        mask(m, &mut old);
        mask(m, &mut new);
        Entry {
            change: Change::Update,
            record_id: record_id(m, after),
            before: Some(old.to_string()),
            after: Some(new.to_string()),
        }
    }
}

/// The primary key of a record as the audit log stores it: text.
pub(crate) fn record_id(m: &ModelSchema, record: &Value) -> String {
    id_text(&record[m.primary_key().name])
}

/// A primary key value as the audit log stores it.
pub(crate) fn id_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Replaces the value of every `sensitive` field present in `record` by `"***"`.
pub(crate) fn mask(m: &ModelSchema, record: &mut Value) {
    let Some(obj) = record.as_object_mut() else {
        return;
    };
    for f in m.fields.iter().filter(|f| f.sensitive) {
        if let Some(v) = obj.get_mut(f.name) {
            *v = Value::String("***".into());
        }
    }
}

/// The values of [`RUN_COLUMNS`] for `ctx`'s node run.
fn run_values<C: Conn>(ctx: &Ctx) -> [SqlValue; 8] {
    let c = ctx.context;
    let text = |s: Option<&str>| match s {
        Some(s) => SqlValue::Text(s.to_string()),
        None => SqlValue::Null(FieldType::String),
    };
    [
        SqlValue::DateTime(crate::value::now()),
        text(c.actor.as_deref()),
        text(ctx.tenant.or(c.tenant.as_deref())),
        SqlValue::Text(ctx.model.name.to_string()),
        text(ctx.origin.run_id),
        text(Some(ctx.origin.node_id.unwrap_or(ctx.node))),
        text(c.request_id.as_deref()),
        text(c.channel.as_deref()),
    ]
}

/// `INSERT INTO dataflow_audit (<run columns>, <row columns>) SELECT `
/// followed by the run's values: what every audit INSERT starts with.
fn insert_head<C: Conn>(ctx: &Ctx) -> Sql {
    let mut sql = Sql::new(C::DIALECT);
    sql.push("INSERT INTO ")
        .ident(TABLE)
        .push(" ")
        .ident_list(RUN_COLUMNS.into_iter().chain(ROW_COLUMNS))
        .push(" SELECT ");
    let mut list = sql.separated(", ");
    for v in run_values::<C>(ctx) {
        list.item().bind(v);
    }
    sql
}

fn json_text(v: Option<String>) -> SqlValue {
    match v {
        Some(s) => SqlValue::Text(s),
        None => SqlValue::Null(FieldType::String),
    }
}

/// Writes `entries` as audit rows of `ctx`'s node run, inside the caller's
/// transaction: multi-row INSERTs that bind the run's values once and the
/// rest per row (`INSERT … SELECT <run values>, v.* FROM (VALUES …) v`), as
/// many rows per statement as the dialect's bind limit allows. Rows of
/// creates (all of a BulkCreate) bind two values each: the record id and
/// the after-image.
pub(crate) fn write<C: Conn>(conn: &mut C, ctx: &Ctx, entries: Vec<Entry>) -> Result<()> {
    let creates = entries
        .iter()
        .all(|e| e.change == Change::Create && e.before.is_none());
    let per_row = if creates { 2 } else { ROW_COLUMNS.len() };
    let per_statement = ((C::DIALECT.max_binds() - RUN_COLUMNS.len() - 1) / per_row).max(1);
    let mut entries = entries.into_iter().peekable();
    while entries.peek().is_some() {
        let mut sql = insert_head::<C>(ctx);
        let rows = entries.by_ref().take(per_statement);
        if creates {
            sql.push(", ")
                .bind(SqlValue::Text(Change::Create.as_str().into()))
                .push(", \"column1\", NULL, ");
            sql.push("\"column2\" FROM (")
                .values(rows.map(|e| [SqlValue::Text(e.record_id), json_text(e.after)]));
        } else {
            sql.push(", \"column1\", \"column2\", \"column3\", \"column4\" FROM (")
                .values(rows.map(|e| {
                    [
                        SqlValue::Text(e.change.as_str().into()),
                        SqlValue::Text(e.record_id),
                        json_text(e.before),
                        json_text(e.after),
                    ]
                }));
        }
        sql.push(") AS \"v\"");
        ctx.exec(conn, &sql)?;
    }
    Ok(())
}

/// On a dialect that [`writes_in_with`](crate::Dialect::writes_in_with):
/// `insert` (a one-row `INSERT` without `RETURNING`) and its audit row as
/// one statement that answers with the new record. `record_id` and `after`
/// (the masked JSON text) are known from the input, except a key the
/// database generates, which the statement adds from the inserted row.
pub(crate) fn insert_with_row<C: Conn>(
    ctx: &Ctx,
    insert: Sql,
    record_id: Option<String>,
    after: String,
) -> Sql {
    let pk = ctx.model.primary_key();
    let mut sql = Sql::new(C::DIALECT);
    sql.push("WITH \"inserted\" AS (").append(insert);
    ctx.returning(&mut sql);
    sql.push("), \"audited\" AS (")
        .append(insert_head::<C>(ctx));
    sql.push(", ")
        .bind(SqlValue::Text(Change::Create.as_str().into()))
        .push(", ");
    match record_id {
        Some(id) => {
            sql.bind(SqlValue::Text(id));
        }
        None => {
            sql.push("CAST(\"inserted\".")
                .ident(pk.column)
                .push(" AS TEXT)");
        }
    }
    sql.push(", NULL, ");
    if record_id_generated(ctx) {
        // `{"id":` || the new key || the rest of the record's text.
        let key = format!("{{{}:", Value::from(pk.name));
        let rest = match after.get(1..) {
            Some(r) if r != "}" => format!(",{r}"),
            _ => "}".to_string(),
        };
        sql.bind(SqlValue::Text(key))
            .push(" || CAST(\"inserted\".")
            .ident(pk.column)
            .push(" AS TEXT) || ")
            .bind(SqlValue::Text(rest));
    } else {
        sql.bind(SqlValue::Text(after));
    }
    sql.push(" FROM \"inserted\") SELECT ")
        .push(ctx.columns)
        .push(" FROM \"inserted\"");
    sql
}

fn record_id_generated(ctx: &Ctx) -> bool {
    ctx.model.primary_key().generated == Generated::AutoIncrement
}

// ------------------------------------------------------------------ reading

/// Lists audit rows (`AuditListNode`): filters by `model`, `record_id`,
/// `actor`, `op` and a time range (`since` inclusive, `until` exclusive),
/// newest first, `limit` per page and `after` (the previous page's `next`)
/// for the next one. Only rows of the caller's tenant: a context without
/// a tenant sees the rows written without one; [`Context::system`] sees
/// every tenant's, or the one its `tenant` parameter names.
///
/// [`Context::system`]: crate::Context::system
pub struct AuditListNode;

/// The parameters of `AuditListNode`.
const PARAMS: [&str; 9] = [
    "model",
    "record_id",
    "actor",
    "op",
    "since",
    "until",
    "limit",
    "after",
    "tenant",
];

impl Node for AuditListNode {
    fn name(&self) -> &'static str {
        AUDIT_LIST_NODE
    }

    fn input_schema(&self) -> Value {
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": AUDIT_LIST_NODE,
            "type": "object",
            "properties": {
                "model": {"type": "string", "description": "the model whose records changed"},
                "record_id": {"type": ["string", "integer"], "description": "the record's primary key"},
                "actor": {"type": "string", "description": "who made the change (Context::actor)"},
                "op": {"enum": OPS},
                "since": {"type": "string", "format": "date-time", "description": "changes at or after this time"},
                "until": {"type": "string", "format": "date-time", "description": "changes before this time"},
                "limit": {"type": "integer", "minimum": 0, "maximum": crate::nodes::MAX_LIST_LIMIT, "default": crate::nodes::DEFAULT_LIST_LIMIT},
                "after": {"type": ["string", "null"], "description": "the `next` cursor of the previous page"},
                "tenant": {"type": "string", "description": "system contexts only: the tenant whose rows to list"}
            },
            "additionalProperties": false
        })
    }

    fn run<'a>(&'a self, ctx: &'a NodeContext, input: Value) -> NodeFuture<'a> {
        Box::pin(async move { ctx.db.audit_list(input).await })
    }
}

fn invalid(field: &str, msg: impl Into<String>) -> Error {
    Error::validation(TABLE, Some(field), msg.into()).in_node(AUDIT_LIST_NODE)
}

/// An RFC 3339 time parameter, checked here so the message names it.
fn time_param(key: &str, v: &Value) -> Result<Value> {
    let s = v.as_str().ok_or_else(|| {
        invalid(
            key,
            format!("`{key}` must be an RFC 3339 time such as \"2026-01-31T12:00:00Z\""),
        )
    })?;
    let t = chrono::DateTime::parse_from_rfc3339(s).map_err(|_| {
        invalid(
            key,
            format!(
                "`{key}` must be an RFC 3339 time such as \"2026-01-31T12:00:00Z\", got {:?}",
                Error::echo(s)
            ),
        )
    })?;
    Ok(Value::String(format_datetime(
        &t.with_timezone(&chrono::Utc),
    )))
}

/// The List parameters on the audit model that an `AuditListNode` input
/// asks for, with the tenant condition of `context`.
pub(crate) fn list_params(context: &crate::Context, input: &Value) -> Result<Value> {
    let obj = input.as_object().ok_or_else(|| {
        Error::validation(TABLE, None, "parameters must be a JSON object".to_string())
            .in_node(AUDIT_LIST_NODE)
    })?;
    let mut filter = Map::new();
    let mut list = Map::new();
    let mut at = Map::new();
    for (k, v) in obj {
        if v.is_null() {
            continue;
        }
        match k.as_str() {
            "model" | "actor" => {
                if !v.is_string() {
                    return Err(invalid(k, format!("`{k}` must be a string")));
                }
                filter.insert(k.clone(), v.clone());
            }
            "record_id" => match v {
                Value::String(_) | Value::Number(_) => {
                    filter.insert(k.clone(), Value::String(id_text(v)));
                }
                _ => return Err(invalid(k, "`record_id` must be a string or an integer")),
            },
            "op" => match v.as_str() {
                Some(op) if OPS.contains(&op) => {
                    filter.insert(k.clone(), v.clone());
                }
                _ => {
                    return Err(invalid(
                        k,
                        format!("`op` must be one of {}", OPS.join(", ")),
                    ))
                }
            },
            "since" => {
                at.insert("$gte".into(), time_param(k, v)?);
            }
            "until" => {
                at.insert("$lt".into(), time_param(k, v)?);
            }
            "limit" | "after" => {
                list.insert(k.clone(), v.clone());
            }
            "tenant" => {
                if !context.system {
                    return Err(invalid(
                        k,
                        "only a system context (Context::system) may name the tenant; other callers see their own tenant's rows",
                    ));
                }
                if !v.is_string() {
                    return Err(invalid(k, "`tenant` must be a string"));
                }
                filter.insert(k.clone(), v.clone());
            }
            other => {
                let hint = crate::value::did_you_mean(other, PARAMS.iter().copied());
                return Err(invalid(
                    other,
                    format!(
                        "unknown parameter `{}`{hint}; expected one of: {}",
                        Error::echo(other),
                        PARAMS.join(", ")
                    ),
                ));
            }
        }
    }
    if !at.is_empty() {
        filter.insert("at".into(), Value::Object(at));
    }
    // The caller's tenant only; never every tenant unless the caller is the system.
    match (&context.tenant, context.system) {
        (Some(t), _) => {
            filter.insert("tenant".into(), Value::String(t.clone()));
        }
        (None, true) => {}
        (None, false) => {
            filter.insert("tenant".into(), json!({"$null": true}));
        }
    }
    list.insert("filter".into(), Value::Object(filter));
    list.insert("order_by".into(), json!(["-id"]));
    Ok(Value::Object(list))
}

/// Runs an audit listing on a connection.
pub(crate) fn list_on<C: Conn>(
    conn: &mut C,
    context: &crate::Context,
    echo: bool,
    params: Value,
) -> Result<Value> {
    let columns = crate::sql::columns(&AUDIT);
    let ctx = Ctx::new(&AUDIT, AUDIT_LIST_NODE, &columns, echo, context);
    let mut page = crate::nodes::run(conn, &ctx, Op::List, params)?;
    // `before` and `after` are stored as JSON text; callers get JSON.
    if let Some(records) = page.get_mut("records").and_then(Value::as_array_mut) {
        for r in records {
            for k in ["before", "after"] {
                if let Some(Value::String(text)) = r.get(k) {
                    r[k] = serde_json::from_str(text).map_err(|e| {
                        Error::internal(format!("an audit row's `{k}` is not JSON: {e}"))
                    })?;
                }
            }
        }
    }
    Ok(page)
}

/// Whether the audit table exists (a database whose audit log was never on has none).
pub(crate) fn exists<C: Conn>(conn: &mut C) -> Result<bool> {
    crate::migrate::table_exists(conn, TABLE)
}

/// The error for a database without an audit log.
pub(crate) fn not_enabled() -> Error {
    Error::new(
        ErrorCode::Config,
        "this database has no audit log (no `dataflow_audit` table): turn it on with \
         `enable_audit_log(true)` or `#[dataflow::model(audit)]` and boot the application once",
    )
}

/// Deletes the audit rows older than `cutoff` and records the purge (when
/// it deleted any) as an audit row of its own; returns how many rows went.
pub(crate) fn purge_on<C: Conn>(
    conn: &mut C,
    context: &crate::Context,
    echo: bool,
    cutoff: chrono::DateTime<chrono::Utc>,
) -> Result<u64> {
    if !exists(conn)? {
        return Err(not_enabled());
    }
    let columns = crate::sql::columns(&AUDIT);
    let ctx = Ctx::new(&AUDIT, "audit purge", &columns, echo, context);
    conn.write_transaction(|conn| {
        let older = |sql: &mut Sql| {
            sql.push(" FROM ")
                .ident(TABLE)
                .push(" WHERE ")
                .ident("at")
                .push(" < ")
                .bind(SqlValue::DateTime(cutoff));
        };
        let mut sql = Sql::new(C::DIALECT);
        sql.push("SELECT COUNT(*)");
        older(&mut sql);
        let n = match ctx
            .query(conn, &sql)?
            .pop()
            .and_then(|r| r.into_iter().next())
        {
            Some(crate::value::Cell::I64(n)) => n,
            other => return Err(Error::internal(format!("COUNT(*) returned {other:?}"))),
        };
        if n == 0 {
            return Ok(0);
        }
        // The purge's own row goes in first: younger than the cutoff, it is
        // the newest row and stays, so row ids are never handed out twice.
        let after = json!({"deleted": n, "older_than": format_datetime(&cutoff)});
        let mut sql = insert_head::<C>(&ctx);
        sql.push(", ")
            .bind(SqlValue::Text("purge".into()))
            .push(", NULL, NULL, ")
            .bind(SqlValue::Text(after.to_string()));
        ctx.exec(conn, &sql)?;
        let mut sql = Sql::new(C::DIALECT);
        sql.push("DELETE");
        older(&mut sql);
        let n = ctx.exec(conn, &sql)?;
        Ok(n as u64)
    })
}

impl DataFlow {
    /// Lists audit rows, as the built-in `AuditListNode` does (the same
    /// input and output; the caller's tenant only). Works on any database
    /// whose audit log was ever on, also one opened with
    /// [`open_for_tools`](Self::open_for_tools).
    pub async fn audit_list(&self, query: Value) -> Result<Value> {
        let params = list_params(self.context(), &query)?;
        self.blocking(move |db, conn| {
            crate::dataflow::on_conn!(conn, c => {
                if !exists(c)? {
                    return Err(not_enabled());
                }
                list_on(c, db.context(), db.config().echo, params)
            })
        })
        .await
    }

    /// Deletes audit rows older than `older_than`, or than the configured
    /// [`audit_retention`](crate::DataFlowBuilder::audit_retention) when
    /// `None`; returns how many were deleted. A purge that deleted rows is
    /// itself recorded as an audit row (`op: "purge"`). Run it from a
    /// scheduled job, or with `dataflow audit purge`.
    pub async fn purge_audit(&self, older_than: Option<std::time::Duration>) -> Result<u64> {
        let keep = older_than.or(self.config().audit_retention()).ok_or_else(|| {
            Error::new(
                ErrorCode::Config,
                "no audit retention is configured: set `audit_retention(..)` or give the age to purge (`--older-than 30d`)",
            )
        })?;
        let keep = chrono::Duration::from_std(keep)
            .map_err(|_| Error::new(ErrorCode::Config, "the audit retention is too long"))?;
        let cutoff = crate::value::now() - keep;
        self.exclusive(move |db, conn| {
            crate::dataflow::on_conn!(conn, c => purge_on(c, db.context(), db.config().echo, cutoff))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataflow_core::checksum::{self, DefaultShape, FieldShape, ModelShape};

    /// The constant checksum is the checksum of the schema as written, so a
    /// change to the table's fields is a new registry version.
    #[test]
    fn audit_schema_checksum_matches_its_fields() {
        let fields: Vec<FieldShape<'_>> = AUDIT
            .fields
            .iter()
            .map(|f| FieldShape {
                name: f.name,
                column: f.column,
                ty: f.ty,
                nullable: f.nullable,
                primary_key: f.primary_key,
                unique: f.unique,
                index: f.index,
                default: f.default.map(|d| match d {
                    DefaultValue::Bool(b) => DefaultShape::Bool(b),
                    DefaultValue::Int(i) => DefaultShape::Int(i),
                    DefaultValue::Float(x) => DefaultShape::Float(x),
                    DefaultValue::Str(s) => DefaultShape::Str(s),
                }),
                references: None,
                max_length: f.max_length,
                renamed_from: f.renamed_from,
                generated: f.generated,
            })
            .collect();
        let o = AUDIT.options;
        let sum = checksum::checksum(&ModelShape {
            name: AUDIT.name,
            table: AUDIT.table,
            soft_delete: o.soft_delete,
            timestamps: o.timestamps,
            tenant_scoped: o.tenant_scoped,
            audit: o.audit == Some(true),
            append_only: o.append_only,
            fields: &fields,
        });
        assert_eq!(AUDIT.checksum, sum, "set AUDIT.checksum to {sum:#x}");
    }

    #[test]
    fn updates_record_only_the_changed_fields_and_mask_secrets() {
        static M: ModelSchema = ModelSchema {
            name: "M",
            table: "m",
            fields: &[
                FieldSchema {
                    primary_key: true,
                    ..field("id", FieldType::I64, false)
                },
                field("a", FieldType::String, false),
                FieldSchema {
                    sensitive: true,
                    ..field("secret", FieldType::String, false)
                },
            ],
            options: AUDIT.options,
            checksum: 0,
        };
        let e = Entry::updated(
            &M,
            &json!({"id": 7, "a": "x", "secret": "s1"}),
            &json!({"id": 7, "a": "x", "secret": "s2"}),
        );
        assert_eq!(e.record_id, "7");
        let parse = |t: &Option<String>| {
            t.as_deref()
                .map(|t| serde_json::from_str::<Value>(t).unwrap())
        };
        assert_eq!(parse(&e.before), Some(json!({"secret": "***"})));
        assert_eq!(parse(&e.after), Some(json!({"secret": "***"})));
        let e = Entry::created(&M, json!({"id": 7, "a": "x", "secret": "s1"}));
        assert_eq!(
            parse(&e.after),
            Some(json!({"id": 7, "a": "x", "secret": "***"}))
        );
        assert_eq!(e.before, None);
    }

    #[test]
    fn listing_binds_the_callers_tenant() {
        let q = json!({"model": "User", "record_id": 5});
        let p = list_params(&crate::Context::new().tenant("a"), &q).unwrap();
        assert_eq!(
            p["filter"],
            json!({"model": "User", "record_id": "5", "tenant": "a"})
        );
        let p = list_params(&crate::Context::new(), &q).unwrap();
        assert_eq!(p["filter"]["tenant"], json!({"$null": true}));
        let p = list_params(&crate::Context::system(), &q).unwrap();
        assert!(p["filter"].get("tenant").is_none());
        let e = list_params(&crate::Context::new(), &json!({"tenant": "b"})).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Validation);
        let e = list_params(&crate::Context::new(), &json!({"op": "drop"})).unwrap_err();
        assert!(e.message().contains("create, update, delete, purge"), "{e}");
        let e = list_params(&crate::Context::new(), &json!({"since": "yesterday"})).unwrap_err();
        assert!(e.message().contains("RFC 3339"), "{e}");
    }
}
