//! The bulk writes: BulkCreate in batches, BulkUpdate and BulkDelete by
//! filter (an empty filter needs `confirmed`). BulkUpsert is in `upsert`.

use super::params::{Param, Params};
use super::row::{
    assignments, batches, bulk_rows, insert_sql, rows_per_batch, take_array, update_sql,
    DEFAULT_BATCH,
};
use super::run::Ctx;
use super::schema as s;
use super::target::pk_index;
use super::write::soft_or_hard_delete;
use crate::backend::Conn;
use crate::error::{Error, ErrorCode, Result};
use crate::filter;
use crate::value::{cell_to_json, Cell, SqlValue};
use serde_json::{json, Map, Value};

/// BulkCreate: the records, inserted in batches.
pub(super) const BULK_CREATE: &[Param] = &[
    Param::required("data", s::records),
    Param::optional("batch_size", s::batch_size),
];

/// BulkUpdate: the `fields` to change on every record a filter matches.
pub(super) const BULK_UPDATE: &[Param] = &[
    Param::optional("filter", s::filter),
    Param::required("fields", s::changes),
    Param::optional("confirmed", s::confirmed),
];

/// BulkDelete: every record a filter matches.
pub(super) const BULK_DELETE: &[Param] = &[
    Param::optional("filter", s::filter),
    Param::optional("confirmed", s::confirmed),
];

pub(super) fn bulk_create<C: Conn>(conn: &mut C, ctx: &Ctx, mut params: Value) -> Result<Value> {
    let p = Params::new(ctx.model, ctx.node, &params, BULK_CREATE)?;
    let m = ctx.model;
    p.array("data")?;
    let batch = rows_per_batch::<C>(m, p.u64("batch_size", DEFAULT_BATCH, 1_000_000)?);
    let rows = bulk_rows::<C>(ctx, take_array(&mut params, "data"))?;
    if rows.is_empty() {
        return Ok(json!({"inserted": 0, "ids": []}));
    }
    let pk_index = pk_index(m);
    let pk = &m.fields[pk_index];
    let generated_ids = rows[0][pk_index].is_none();
    let inserted = rows.len();
    // Ids known before the insert are reported as given; generated ones come back.
    let mut ids: Vec<Value> = if generated_ids {
        Vec::with_capacity(inserted)
    } else {
        rows.iter()
            .map(|r| sql_value_json(r[pk_index].as_ref().expect("pk given")))
            .collect()
    };
    conn.write_transaction(|conn| {
        for chunk in batches(rows, batch) {
            let mut sql = insert_sql::<C>(m, chunk);
            if generated_ids {
                sql.push(" RETURNING ").ident(pk.column);
                for row in ctx.query(conn, &sql)? {
                    ids.push(cell_to_json(
                        m,
                        pk,
                        row.into_iter().next().unwrap_or(Cell::Null),
                    )?);
                }
            } else {
                ctx.exec(conn, &sql)?;
            }
        }
        Ok(())
    })?;
    let mut out = Map::new();
    out.insert("inserted".into(), inserted.into());
    out.insert("ids".into(), Value::Array(ids));
    Ok(Value::Object(out))
}

/// A given primary key as reported back in `ids`.
fn sql_value_json(v: &SqlValue) -> Value {
    match v {
        SqlValue::Text(s) => Value::String(s.clone()),
        SqlValue::Uuid(u) => Value::String(u.to_string()),
        SqlValue::I16(i) => Value::from(*i),
        SqlValue::I32(i) => Value::from(*i),
        SqlValue::I64(i) => Value::from(*i),
        other => Value::String(format!("{other:?}")),
    }
}

/// Refuses a whole-table change (a filter that matches everything, however
/// it is spelled) unless the caller confirmed it.
fn confirm_scope(p: &Params, f: &Value, what: &str) -> Result<()> {
    if filter::matches_everything(p.model, f) && !p.bool("confirmed")? {
        return Err(Error::new(
            ErrorCode::ConfirmationRequired,
            format!(
                "this filter matches every {} record (it is empty or always true), so it would {what} them all; pass \"confirmed\": true to do that on purpose",
                p.model.name
            ),
        )
        .with_model(p.model.name)
        .with_field("filter"));
    }
    Ok(())
}

pub(super) fn bulk_update<C: Conn>(conn: &mut C, ctx: &Ctx, params: &Value) -> Result<Value> {
    let p = Params::new(ctx.model, ctx.node, params, BULK_UPDATE)?;
    let m = ctx.model;
    let f = p.filter("filter")?;
    let sets = assignments(ctx, &p, "fields")?;
    confirm_scope(&p, f, "update")?;
    let mut sql = update_sql::<C>(m, &sets);
    sql.push(" WHERE ");
    filter::render(&mut sql, m, f)?;
    ctx.scope(&mut sql, false);
    let n = conn.write_transaction(|conn| ctx.exec(conn, &sql))?;
    Ok(json!({"updated": n}))
}

pub(super) fn bulk_delete<C: Conn>(conn: &mut C, ctx: &Ctx, params: &Value) -> Result<Value> {
    let p = Params::new(ctx.model, ctx.node, params, BULK_DELETE)?;
    let m = ctx.model;
    let f = p.filter("filter")?;
    confirm_scope(&p, f, "delete")?;
    let mut sql = soft_or_hard_delete::<C>(m);
    sql.push(" WHERE ");
    filter::render(&mut sql, m, f)?;
    ctx.scope(&mut sql, false);
    let n = conn.write_transaction(|conn| ctx.exec(conn, &sql))?;
    Ok(json!({"deleted": n}))
}
