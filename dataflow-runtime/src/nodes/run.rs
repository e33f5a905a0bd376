//! The dispatcher: one entry point from an [`Op`] to its operation, and the
//! context every operation shares (statement logging, rows as records, the
//! error wording that names the node and the model).

use super::Op;
use crate::backend::Conn;
use crate::error::{Error, ErrorCode, Result};
use crate::schema::{Generated, ModelSchema};
use crate::sql::Sql;
use crate::value::{cell_to_json, Cell, SqlValue};
use serde_json::{Map, Value};

/// Everything a node run needs besides the connection.
pub(crate) struct Ctx<'a> {
    pub(crate) model: &'static ModelSchema,
    pub(crate) node: &'a str,
    /// The model's quoted column list, computed once per model.
    pub(crate) columns: &'a str,
    /// A `tracing` event per statement (never its values).
    pub(crate) echo: bool,
    /// Times each statement against the slow-query threshold, when set.
    pub(crate) slow: Option<crate::metrics::SlowWatch<'a>>,
    /// The caller's context (its tenant scopes tenant-scoped models).
    pub(crate) context: &'a crate::Context,
    /// The tenant every statement binds, on a tenant-scoped model (set by
    /// [`run`] from the context; `None` elsewhere, and for a system
    /// context reading across tenants).
    pub(crate) tenant: Option<&'a str>,
    /// Writes record audit rows in their transaction.
    pub(crate) audited: bool,
    /// The workflow run and node this run belongs to, for audit rows.
    pub(crate) origin: Origin<'a>,
}

/// Where a node run comes from: its workflow run and the node's id in it
/// (both `None` for a direct call, whose audit rows name the node type).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Origin<'a> {
    pub(crate) run_id: Option<&'a str>,
    pub(crate) node_id: Option<&'a str>,
}

impl<'a> Ctx<'a> {
    /// A run of `node` on `model`, unaudited, outside any workflow.
    pub(crate) fn new(
        model: &'static ModelSchema,
        node: &'a str,
        columns: &'a str,
        echo: bool,
        context: &'a crate::Context,
    ) -> Self {
        Ctx {
            model,
            node,
            columns,
            echo,
            slow: None,
            context,
            tenant: None,
            audited: false,
            origin: Origin::default(),
        }
    }
}

/// Runs one node. Every error leaves with the node and model named.
pub(crate) fn run<C: Conn>(conn: &mut C, ctx: &Ctx, op: Op, params: Value) -> Result<Value> {
    let m = ctx.model;
    let tenant = if m.options.tenant_scoped {
        // An empty tenant names nobody: it counts as none (fail closed).
        match (
            ctx.context.tenant.as_deref().filter(|t| !t.is_empty()),
            ctx.context.system,
            op.writes(),
        ) {
            (Some(t), _, _) => Some(t),
            // A system context reads across tenants; it writes to one only.
            (None, true, false) => None,
            (None, system, _) => {
                let why = if system {
                    "a system context must name the tenant it writes for"
                } else {
                    "the call has no tenant in its context"
                };
                return Err(Error::new(
                    ErrorCode::TenantRequired,
                    format!("{} is tenant_scoped and {why}: set Context::tenant", m.name),
                )
                .with_model(m.name)
                .in_node(ctx.node));
            }
        }
    } else {
        None
    };
    let ctx = &Ctx { tenant, ..*ctx };
    if m.options.append_only && op.changes_existing() {
        return Err(Error::new(
            ErrorCode::NotAllowed,
            format!(
                "{} is append_only; records can be created and read, not changed or deleted",
                m.name
            ),
        )
        .with_model(m.name)
        .in_node(ctx.node));
    }
    let result = match op {
        Op::Create => super::write::create(conn, ctx, params),
        Op::Read => super::read::read(conn, ctx, &params),
        Op::Update => super::write::update(conn, ctx, &params),
        Op::Delete => super::write::delete(conn, ctx, &params),
        Op::List => super::read::list(conn, ctx, &params),
        Op::Count => super::read::count(conn, ctx, &params),
        Op::Upsert => super::upsert::upsert(conn, ctx, &params),
        Op::BulkCreate => super::bulk::bulk_create(conn, ctx, params),
        Op::BulkUpdate => super::bulk::bulk_update(conn, ctx, &params),
        Op::BulkDelete => super::bulk::bulk_delete(conn, ctx, &params),
        Op::BulkUpsert => super::upsert::bulk_upsert(conn, ctx, params),
        Op::Aggregate => super::aggregate::aggregate(conn, ctx, &params),
    };
    result.map_err(|e| contextualize(e, ctx))
}

/// Gives database errors the model's words (the field instead of the
/// column, a message that says what happened) and names the node and model.
fn contextualize(err: Error, ctx: &Ctx) -> Error {
    let m = ctx.model;
    let field = err.field().map(|c| {
        m.fields
            .iter()
            .find(|f| f.column == c)
            .map_or(c, |f| f.name)
            .to_string()
    });
    let err = match err.code() {
        ErrorCode::UniqueViolation => {
            let f = field.as_deref().unwrap_or("a unique field");
            err.reworded(format!(
                "a {} with this `{f}` already exists ({}.{f} is unique)",
                m.name, m.name
            ))
            .with_field_opt(field.as_deref())
        }
        ErrorCode::FkViolation => {
            let detail = match &field {
                Some(f) => format!("`{f}` must reference an existing record"),
                None => "the record is referenced by other records, or references one that does not exist".into(),
            };
            err.reworded(format!("foreign key violated on {}: {detail}", m.name))
                .with_field_opt(field.as_deref())
        }
        ErrorCode::Database | ErrorCode::Connection | ErrorCode::NotFound => {
            err.with_field_opt(field.as_deref())
        }
        _ => err,
    };
    let err = if err.model().is_none() {
        err.with_model(m.name)
    } else {
        err
    };
    err.in_node(ctx.node)
}

impl Ctx<'_> {
    /// Runs a statement, logging it first when `echo` is on.
    pub(crate) fn exec<C: Conn>(&self, conn: &mut C, sql: &Sql) -> Result<usize> {
        self.log(sql);
        match self.slow {
            None => conn.exec(sql),
            Some(w) => {
                let started = std::time::Instant::now();
                let out = conn.exec(sql);
                self.timed(&w, sql, started.elapsed());
                out
            }
        }
    }

    /// Runs a query, logging it first when `echo` is on.
    pub(crate) fn query<C: Conn>(&self, conn: &mut C, sql: &Sql) -> Result<Vec<Vec<Cell>>> {
        self.log(sql);
        match self.slow {
            None => conn.query(sql),
            Some(w) => {
                let started = std::time::Instant::now();
                let out = conn.query(sql);
                self.timed(&w, sql, started.elapsed());
                out
            }
        }
    }

    fn log(&self, sql: &Sql) {
        if self.echo {
            tracing::info!(
                target: "dataflow::sql",
                model = self.model.name,
                node = self.node,
                binds = sql.bind_count(),
                "{}",
                sql.display()
            );
        }
    }

    /// A statement over the threshold: a WARN event with its shape (bind
    /// marks, never values) and a count.
    fn timed(&self, w: &crate::metrics::SlowWatch<'_>, sql: &Sql, took: std::time::Duration) {
        if took < w.threshold {
            return;
        }
        w.metrics.slow_statement(self.model.name, w.op);
        tracing::warn!(
            target: "dataflow::slow_query",
            model = self.model.name,
            op = w.op,
            node = self.node,
            duration_ms = took.as_secs_f64() * 1e3,
            threshold_ms = w.threshold.as_secs_f64() * 1e3,
            sql = %sql.display(),
            "slow query"
        );
    }

    /// `SELECT <all columns> FROM <table>`: every read returns whole records.
    pub(super) fn select<C: Conn>(&self) -> Sql {
        let mut sql = Sql::new(C::DIALECT);
        sql.push("SELECT ")
            .push(self.columns)
            .push(" FROM ")
            .ident(self.model.table);
        sql
    }

    /// ` RETURNING <all columns>`, so writes answer with whole records.
    pub(crate) fn returning(&self, sql: &mut Sql) {
        sql.returning(self.columns);
    }

    /// A row in select-list order (all fields) as a JSON record.
    pub(super) fn record(&self, cells: Vec<Cell>) -> Result<Value> {
        let m = self.model;
        let mut map = Map::new();
        for (field, cell) in m.fields.iter().zip(cells) {
            map.insert(field.name.to_string(), cell_to_json(m, field, cell)?);
        }
        Ok(Value::Object(map))
    }

    /// Rows in select-list order as JSON records.
    pub(super) fn records(&self, rows: Vec<Vec<Cell>>) -> Result<Vec<Value>> {
        rows.into_iter().map(|r| self.record(r)).collect()
    }
}

impl Ctx<'_> {
    /// What every statement on existing rows appends to its `WHERE`: `AND
    /// deleted_at IS NULL` (soft delete, unless deleted records are wanted)
    /// and `AND tenant_id = ?` (a tenant-scoped model, bound from the context).
    pub(super) fn scope(&self, sql: &mut Sql, include_deleted: bool) {
        live_only(sql, self.model, include_deleted);
        if let (Some(t), Some(f)) = (self.tenant, self.model.field_with(Generated::Tenant)) {
            sql.push(" AND ")
                .ident(f.column)
                .push(" = ")
                .bind(SqlValue::Text(t.to_string()));
        }
    }
}

/// `AND deleted_at IS NULL` on soft-delete models unless deleted records are wanted.
fn live_only(sql: &mut Sql, m: &ModelSchema, include_deleted: bool) {
    if include_deleted {
        return;
    }
    if let Some(f) = m.field_with(Generated::DeletedAt) {
        sql.push(" AND ").ident(f.column).push(" IS NULL");
    }
}
