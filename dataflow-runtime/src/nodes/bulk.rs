//! The bulk writes: BulkCreate in batches, BulkUpdate and BulkDelete by
//! filter (an empty filter needs `confirmed`). BulkUpsert is in `upsert`.

use super::params::{Param, Params};
use super::row::{
    assignments, batches, bulk_rows, insert_sql, row_json_text, rows_per_batch, sql_value_json,
    take_array, update_sql, DEFAULT_BATCH,
};
use super::run::Ctx;
use super::schema as s;
use super::target::pk_index;
use super::write::{check_version, soft_or_hard_delete};
use crate::audit::{self, Entry};
use crate::backend::Conn;
use crate::error::{Error, ErrorCode, Result};
use crate::filter;
use crate::schema::ModelSchema;
use crate::value::{cell_to_json, Cell};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// BulkCreate: the records, inserted in batches.
pub(super) const BULK_CREATE: &[Param] = &[
    Param::required("data", s::records),
    Param::optional("batch_size", s::batch_size),
];

/// BulkUpdate: the `fields` to change on every record a filter matches
/// (on a versioned model, only if each still has `expected_version`).
pub(super) const BULK_UPDATE: &[Param] = &[
    Param::optional("filter", s::filter),
    Param::required("fields", s::changes),
    Param::optional("confirmed", s::confirmed),
    Param::versioned("expected_version", s::expected_version),
    Param::optional("max_affected", s::max_affected),
];

/// BulkDelete: every record a filter matches.
pub(super) const BULK_DELETE: &[Param] = &[
    Param::optional("filter", s::filter),
    Param::optional("confirmed", s::confirmed),
    Param::optional("max_affected", s::max_affected),
];

/// `max_affected`: the most rows a bulk write may change; absent, no limit.
pub(super) fn max_affected(p: &Params) -> Result<Option<u64>> {
    match p.get("max_affected") {
        None => Ok(None),
        Some(_) => p.u64("max_affected", 0, i64::MAX as u64).map(Some),
    }
}

/// Refuses a bulk write that changes `n` rows when `max` allows fewer: the
/// caller returns the error inside the write's transaction, so nothing stays.
pub(super) fn within_max(p: &Params, max: Option<u64>, n: usize, verb: &str) -> Result<()> {
    match max {
        Some(max) if n as u64 > max => Err(Error::new(
            ErrorCode::TooManyRows,
            format!(
                "{} would {verb} {n} {} records, more than max_affected ({max}); nothing was changed",
                p.node, p.model.name
            ),
        )
        .with_model(p.model.name)
        .with_field("max_affected")),
        _ => Ok(()),
    }
}

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
    let mut done = 0;
    conn.write_transaction(|conn| {
        for chunk in batches(rows, batch) {
            // The audit log's after-images, written from the values about
            // to be inserted (no reading back).
            let records: Vec<String> = if ctx.audited {
                chunk.iter().map(|r| row_json_text(m, r)).collect()
            } else {
                Vec::new()
            };
            let first = done;
            done += chunk.len();
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
            if ctx.audited {
                let entries = records
                    .into_iter()
                    .zip(&ids[first..])
                    .map(|(text, id)| {
                        let text = if generated_ids {
                            with_key(&text, pk.name, id)
                        } else {
                            text
                        };
                        Entry::created_text(audit::id_text(id), text)
                    })
                    .collect();
                audit::write(conn, ctx, entries)?;
            }
        }
        Ok(())
    })?;
    let mut out = Map::new();
    out.insert("inserted".into(), inserted.into());
    out.insert("ids".into(), Value::Array(ids));
    Ok(Value::Object(out))
}

/// A record's JSON text with its generated key added in front.
fn with_key(text: &str, key: &str, id: &Value) -> String {
    let mut out = String::with_capacity(text.len() + key.len() + 24);
    out.push('{');
    out.push_str(&Value::from(key).to_string());
    out.push(':');
    out.push_str(&id.to_string());
    if text.len() > 2 {
        out.push(',');
    }
    out.push_str(text.get(1..).unwrap_or("}"));
    out
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
    let expected = p.expected_version()?;
    let max = max_affected(&p)?;
    confirm_scope(&p, f, "update")?;
    if ctx.audited || expected.is_some() {
        return conn.write_transaction(|conn| {
            let before = matching_records(conn, ctx, f)?;
            let stale: Vec<Error> = before
                .iter()
                .filter_map(|r| check_version(ctx, r, expected).err())
                .collect();
            match stale.len() {
                0 => {}
                1 => return Err(stale.into_iter().next().expect("one")),
                n => {
                    return Err(stale.into_iter().next().expect("one").reworded(format!(
                        "{n} of the {} {} records the filter matches changed since they were read (their `version` is not the expected_version {}); nothing was written",
                        before.len(),
                        m.name,
                        expected.unwrap_or_default()
                    )))
                }
            }
            if before.is_empty() {
                return Ok(json!({"updated": 0}));
            }
            within_max(&p, max, before.len(), "update")?;
            let mut sql = update_sql::<C>(m, &sets);
            sql.push(" WHERE ");
            by_keys(&mut sql, m, &before)?;
            ctx.scope(&mut sql, false);
            let n = if ctx.audited {
                ctx.returning(&mut sql);
                let after = ctx.records(ctx.query(conn, &sql)?)?;
                let old = by_id(m, &before);
                let entries = after
                    .iter()
                    .filter_map(|a| {
                        old.get(&audit::record_id(m, a))
                            .map(|b| Entry::updated(m, b, a))
                    })
                    .collect();
                audit::write(conn, ctx, entries)?;
                after.len()
            } else {
                ctx.exec(conn, &sql)?
            };
            Ok(json!({"updated": n}))
        });
    }
    let mut sql = update_sql::<C>(m, &sets);
    sql.push(" WHERE ");
    filter::render(&mut sql, m, f)?;
    ctx.scope(&mut sql, false);
    let n = conn.write_transaction(|conn| {
        let n = ctx.exec(conn, &sql)?;
        within_max(&p, max, n, "update")?;
        Ok(n)
    })?;
    Ok(json!({"updated": n}))
}

pub(super) fn bulk_delete<C: Conn>(conn: &mut C, ctx: &Ctx, params: &Value) -> Result<Value> {
    let p = Params::new(ctx.model, ctx.node, params, BULK_DELETE)?;
    let m = ctx.model;
    let f = p.filter("filter")?;
    let max = max_affected(&p)?;
    confirm_scope(&p, f, "delete")?;
    if ctx.audited {
        return conn.write_transaction(|conn| {
            let before = matching_records(conn, ctx, f)?;
            if before.is_empty() {
                return Ok(json!({"deleted": 0}));
            }
            within_max(&p, max, before.len(), "delete")?;
            let mut sql = soft_or_hard_delete::<C>(m);
            sql.push(" WHERE ");
            by_keys(&mut sql, m, &before)?;
            ctx.scope(&mut sql, false);
            let n = ctx.exec(conn, &sql)?;
            let entries = before.into_iter().map(|b| Entry::deleted(m, b)).collect();
            audit::write(conn, ctx, entries)?;
            Ok(json!({"deleted": n}))
        });
    }
    let mut sql = soft_or_hard_delete::<C>(m);
    sql.push(" WHERE ");
    filter::render(&mut sql, m, f)?;
    ctx.scope(&mut sql, false);
    let n = conn.write_transaction(|conn| {
        let n = ctx.exec(conn, &sql)?;
        within_max(&p, max, n, "delete")?;
        Ok(n)
    })?;
    Ok(json!({"deleted": n}))
}

/// The live records a bulk filter matches, locked until the write commits:
/// the before-images of an audited bulk change, in one statement.
fn matching_records<C: Conn>(conn: &mut C, ctx: &Ctx, f: &Value) -> Result<Vec<Value>> {
    let mut sql = ctx.select::<C>();
    sql.push(" WHERE ");
    filter::render(&mut sql, ctx.model, f)?;
    ctx.scope(&mut sql, false);
    sql.push(C::DIALECT.lock_rows());
    ctx.records(ctx.query(conn, &sql)?)
}

/// `pk IN (…)` for exactly these records (one bound array, whatever their
/// number), so the change touches the rows whose before-images were taken.
pub(super) fn by_keys(sql: &mut crate::sql::Sql, m: &ModelSchema, records: &[Value]) -> Result<()> {
    let pk = m.primary_key().name;
    let keys: Vec<Value> = records.iter().map(|r| r[pk].clone()).collect();
    filter::render(sql, m, &json!({ pk: {"$in": keys} }))
}

/// Records by their audit record id.
pub(super) fn by_id<'r>(m: &ModelSchema, records: &'r [Value]) -> HashMap<String, &'r Value> {
    records
        .iter()
        .map(|r| (audit::record_id(m, r), r))
        .collect()
}
