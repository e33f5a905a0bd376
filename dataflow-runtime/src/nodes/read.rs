//! The reading nodes: Read (one record), List (a page) and Count.

use super::cursor::{encode_cursor, keyset, order_by, order_clause};
use super::params::{Param, Params};
use super::run::Ctx;
use super::schema as s;
use super::target::Selector;
use crate::backend::Conn;
use crate::error::{Error, Result};
use crate::filter;
use crate::sql::Sql;
use crate::value::Cell;
use serde_json::{json, Map, Value};

/// The largest `limit` a List accepts.
pub(crate) const MAX_LIMIT: u64 = 10_000;
/// The `limit` of a List that gives none.
pub(crate) const DEFAULT_LIMIT: u64 = 100;

/// Read: one record by `id` or by a `filter` that matches one.
pub(super) const READ: &[Param] = &[
    Param::optional("id", s::pk),
    Param::optional("filter", s::filter),
    Param::optional("include_deleted", s::include_deleted),
];

/// List: a filtered, ordered page, by `offset` or after a cursor.
pub(super) const LIST: &[Param] = &[
    Param::optional("filter", s::filter),
    Param::optional("order_by", s::order_by),
    Param::optional("limit", s::limit),
    Param::optional("offset", s::offset),
    Param::optional("after", s::after),
    Param::optional("include_deleted", s::include_deleted),
];

/// Count: the records a filter matches.
pub(super) const COUNT: &[Param] = &[
    Param::optional("filter", s::filter),
    Param::optional("include_deleted", s::include_deleted),
];

pub(super) fn read<C: Conn>(conn: &mut C, ctx: &Ctx, params: &Value) -> Result<Value> {
    let p = Params::new(ctx.model, ctx.node, params, READ)?;
    let sel = Selector::from_params(&p)?;
    let include_deleted = p.bool("include_deleted")?;
    let m = ctx.model;
    let mut sql = ctx.select::<C>();
    sql.push(" WHERE ");
    sel.render(&mut sql, m)?;
    ctx.scope(&mut sql, include_deleted);
    if matches!(sel, Selector::Filter(_)) {
        sql.push(" ORDER BY ").ident(m.primary_key().column);
    }
    sql.push(" LIMIT 1");
    let mut rows = ctx.query(conn, &sql)?;
    match rows.pop() {
        Some(row) => ctx.record(row),
        None => Err(sel.not_found(ctx)),
    }
}

pub(super) fn list<C: Conn>(conn: &mut C, ctx: &Ctx, params: &Value) -> Result<Value> {
    let p = Params::new(ctx.model, ctx.node, params, LIST)?;
    let m = ctx.model;
    let f = p.filter("filter")?;
    let limit = p.u64("limit", DEFAULT_LIMIT, MAX_LIMIT)?;
    let offset = p.u64("offset", 0, i64::MAX as u64)?;
    let order = order_by(&p)?;
    let after = match p.get("after") {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => {
            return Err(p.error(
                Some("after"),
                "`after` must be the `next` string of a previous page",
            ))
        }
    };
    if after.is_some() && offset > 0 {
        return Err(p.error(Some("after"), "give either `after` or `offset`, not both"));
    }
    let mut sql = ctx.select::<C>();
    sql.push(" WHERE ");
    filter::render(&mut sql, m, f)?;
    ctx.scope(&mut sql, p.bool("include_deleted")?);
    if let Some(cursor) = after {
        keyset(&mut sql, &p, &order, cursor)?;
    }
    order_clause(&mut sql, &order);
    sql.push(&format!(" LIMIT {limit}"));
    if offset > 0 {
        sql.push(&format!(" OFFSET {offset}"));
    }
    let recs = ctx.records(ctx.query(conn, &sql)?)?;
    let next = match recs.last() {
        Some(last) if limit > 0 && recs.len() as u64 == limit => {
            Value::String(encode_cursor(&order, last))
        }
        _ => Value::Null,
    };
    // Built by moving: `json!` would deep-copy every record.
    let mut out = Map::new();
    out.insert("count".into(), recs.len().into());
    out.insert("limit".into(), limit.into());
    out.insert("next".into(), next);
    out.insert("records".into(), Value::Array(recs));
    Ok(Value::Object(out))
}

pub(super) fn count<C: Conn>(conn: &mut C, ctx: &Ctx, params: &Value) -> Result<Value> {
    let p = Params::new(ctx.model, ctx.node, params, COUNT)?;
    let m = ctx.model;
    let mut sql = count_sql::<C>(ctx);
    sql.push(" WHERE ");
    filter::render(&mut sql, m, p.filter("filter")?)?;
    ctx.scope(&mut sql, p.bool("include_deleted")?);
    let n = scalar_count(ctx.query(conn, &sql)?)?;
    Ok(json!({"count": n}))
}

/// `SELECT COUNT(*) FROM <table>`, for Count and for the keys BulkUpsert finds.
pub(super) fn count_sql<C: Conn>(ctx: &Ctx) -> Sql {
    let mut sql = Sql::new(C::DIALECT);
    sql.push("SELECT COUNT(*) FROM ").ident(ctx.model.table);
    sql
}

/// The number a `SELECT COUNT(*)` answered (one place reads that cell).
pub(super) fn scalar_count(mut rows: Vec<Vec<Cell>>) -> Result<i64> {
    match rows.pop().and_then(|r| r.into_iter().next()) {
        Some(Cell::I64(n)) => Ok(n),
        other => Err(Error::internal(format!("COUNT(*) returned {other:?}"))),
    }
}
