//! Upserts: one record found by `where` (or its unique key) and updated,
//! else created; and BulkUpsert, one `INSERT … ON CONFLICT` per batch.

use super::params::{Param, Params};
use super::read::{count_sql, scalar_count};
use super::row::{
    assignments, batches, bulk_rows, insert_row, insert_sql, now_value, rows_per_batch, take_array,
    update_sql, Row, DEFAULT_BATCH,
};
use super::run::Ctx;
use super::schema as s;
use super::target::{find_one, Selector};
use super::write::check_version;
use super::Op;
use crate::audit::{self, Entry};
use crate::backend::Conn;
use crate::error::{Error, ErrorCode, Result};
use crate::filter;
use crate::schema::{FieldSchema, Generated};
use crate::sql::Sql;
use crate::value::{coerce, SqlValue};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// Upsert: the record `where` (or `conflict_on`) finds is updated, else created.
pub(super) const UPSERT: &[Param] = &[
    Param::optional("where", s::filter),
    Param::optional("create", s::upsert_create),
    Param::optional("update", s::changes),
    Param::optional("conflict_on", s::conflict_on),
    Param::versioned("expected_version", s::expected_version),
];

/// BulkUpsert: records inserted, or updated on a `conflict_on` clash.
pub(super) const BULK_UPSERT: &[Param] = &[
    Param::required("data", s::records),
    Param::optional("conflict_on", s::conflict_on),
    Param::optional("batch_size", s::batch_size),
    Param::optional("max_affected", s::max_affected),
];

/// The fields that identify a record for upserts: the primary key or one unique field.
fn conflict_field(p: &Params) -> Result<&'static FieldSchema> {
    let m = p.model;
    let name = match p.get("conflict_on") {
        None => return Ok(m.primary_key()),
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap_or_default(),
        Some(_) => {
            return Err(p.error(
                Some("conflict_on"),
                "`conflict_on` must name one field that is the primary key or unique, e.g. \"email\" or [\"email\"]",
            ))
        }
    };
    let f = filter::field(m, name).map_err(|e| e.for_param("conflict_on"))?;
    if !(f.primary_key || f.unique) {
        return Err(p.error(
            Some("conflict_on"),
            format!(
                "{}.{name} is neither the primary key nor unique, so it cannot identify a record",
                m.name
            ),
        ));
    }
    Ok(f)
}

pub(super) fn upsert<C: Conn>(conn: &mut C, ctx: &Ctx, params: &Value) -> Result<Value> {
    let p = Params::new(ctx.model, ctx.node, params, UPSERT)?;
    let m = ctx.model;
    let where_ = p.object("where")?;
    let create = p.object("create")?.cloned().unwrap_or_default();
    let conflict = if p.get("conflict_on").is_some() {
        Some(conflict_field(&p)?)
    } else {
        None
    };
    // Implicit equalities of `where` complete the record to create.
    let mut to_create = Map::new();
    if let Some(w) = where_ {
        for (k, v) in w {
            let operators = v
                .as_object()
                .is_some_and(|o| o.keys().any(|k| k.starts_with('$')));
            if !k.starts_with('$') && !operators {
                to_create.insert(k.clone(), v.clone());
            }
        }
    }
    to_create.extend(create);
    let lookup: Value = match (conflict, where_) {
        (Some(f), _) => {
            let v = to_create.get(f.name).ok_or_else(|| {
                p.error(
                    Some("conflict_on"),
                    format!(
                        "`create` (or `where`) must give `{}`, the conflict_on field",
                        f.name
                    ),
                )
            })?;
            json!({ f.name: v })
        }
        (None, Some(w)) if !w.is_empty() => Value::Object(w.clone()),
        _ => return Err(p.error(
            Some("where"),
            "missing `where`: a filter that identifies the record, e.g. {\"email\": \"a@x.io\"}",
        )),
    };
    let has_update = p.object("update")?.is_some_and(|u| !u.is_empty());
    let sets = if has_update {
        assignments(ctx, &p, "update")?
    } else {
        Vec::new()
    };
    let new_row = insert_row(ctx, Value::Object(to_create), &now_value(), None)?;
    let expected = p.expected_version()?;

    conn.write_transaction(|conn| {
        for attempt in 0..2 {
            let existing =
                match find_one(conn, ctx, &Selector::Filter(&lookup), false, Op::BulkUpsert) {
                    Ok(row) => Some(row),
                    Err(e) if e.code() == ErrorCode::NotFound => None,
                    Err(e) => return Err(e),
                };
            if let Some(row) = existing {
                let before = ctx.record(row)?;
                check_version(ctx, &before, expected)?;
                if sets.is_empty() {
                    return Ok(json!({"action": "updated", "record": before}));
                }
                let id = coerce(m, m.primary_key(), &before[m.primary_key().name])?;
                let mut sql = update_sql::<C>(m, &sets);
                sql.push(" WHERE ")
                    .ident(m.primary_key().column)
                    .push(" = ")
                    .bind(id);
                ctx.scope(&mut sql, true);
                ctx.returning(&mut sql);
                let row = ctx
                    .query(conn, &sql)?
                    .pop()
                    .ok_or_else(|| Error::internal("UPDATE … RETURNING returned no row"))?;
                let rec = ctx.record(row)?;
                if ctx.audited {
                    audit::write(conn, ctx, vec![Entry::updated(m, &before, &rec)])?;
                }
                return Ok(json!({"action": "updated", "record": rec}));
            }
            if let Some(v) = expected {
                // The caller expects a record at version `v`; there is none.
                return Err(Error::new(
                    ErrorCode::Conflict,
                    format!(
                        "expected_version {v} names a {} record that does not exist (any more); nothing was written (leave expected_version out to create it)",
                        m.name
                    ),
                )
                .with_field("expected_version"));
            }
            // A concurrent insert of the same key loses the race with a unique
            // violation inside the savepoint; look again and update instead.
            let mut sql = insert_sql::<C>(m, vec![new_row.clone()]);
            ctx.returning(&mut sql);
            match conn.write_transaction(|conn| ctx.query(conn, &sql)) {
                Ok(mut rows) => {
                    let row = rows
                        .pop()
                        .ok_or_else(|| Error::internal("INSERT … RETURNING returned no row"))?;
                    let rec = ctx.record(row)?;
                    if ctx.audited {
                        audit::write(conn, ctx, vec![Entry::created(m, rec.clone())])?;
                    }
                    return Ok(json!({"action": "created", "record": rec}));
                }
                Err(e) if e.code() == ErrorCode::UniqueViolation && attempt == 0 => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::internal("upsert did not settle after a retry"))
    })
}

pub(super) fn bulk_upsert<C: Conn>(conn: &mut C, ctx: &Ctx, mut params: Value) -> Result<Value> {
    let m = ctx.model;
    // The parameters are read first; then `data` is taken out of them.
    let (key, batch) = {
        let p = Params::new(ctx.model, ctx.node, &params, BULK_UPSERT)?;
        // Every record is inserted or updated: the count is known up front.
        let rows = p.array("data")?.len();
        super::bulk::within_max(&p, super::bulk::max_affected(&p)?, rows, "insert or update")?;
        let key = conflict_field(&p)?;
        let batch = rows_per_batch::<C>(m, p.u64("batch_size", DEFAULT_BATCH, 1_000_000)?);
        (key, batch)
    };
    let rows = bulk_rows::<C>(ctx, take_array(&mut params, "data"))?;
    if rows.is_empty() {
        return Ok(json!({"inserted": 0, "updated": 0}));
    }
    let key_index = m
        .fields
        .iter()
        .position(|f| f.name == key.name)
        .expect("conflict field");
    // Two records with one key would update the same row twice.
    let mut seen = std::collections::HashMap::new();
    for (i, row) in rows.iter().enumerate() {
        if let Some(v) = &row[key_index] {
            if matches!(v, SqlValue::Null(_)) {
                continue;
            }
            if let Some(j) = seen.insert(format!("{v:?}"), i) {
                return Err(Error::validation(
                    m.name,
                    Some(key.name),
                    format!("data[{j}] and data[{i}] have the same `{}`", key.name),
                ));
            }
        }
    }
    let updatable: Vec<&FieldSchema> = m
        .fields
        .iter()
        .zip(&rows[0])
        .filter(|(_, v)| v.is_some())
        .map(|(f, _)| f)
        .filter(|f| {
            f.name != key.name
                && !f.primary_key
                && !matches!(f.generated, Generated::CreatedAt | Generated::Version)
        })
        .collect();
    let (mut inserted, mut updated) = (0usize, 0usize);
    conn.write_transaction(|conn| {
        for chunk in batches(rows, batch) {
            let keys: Vec<SqlValue> = chunk
                .iter()
                .filter_map(|r| r[key_index].clone())
                .filter(|v| !matches!(v, SqlValue::Null(_)))
                .collect();
            let n = chunk.len();
            if ctx.audited {
                // Before-images of the records this batch updates (one
                // statement, locked), after-images from RETURNING.
                let before: HashMap<String, Value> = if keys.is_empty() {
                    HashMap::new()
                } else {
                    let mut sql = ctx.select::<C>();
                    sql.push(" WHERE ")
                        .ident(key.column)
                        .push(" IN ")
                        .in_list(keys);
                    ctx.scope(&mut sql, true);
                    sql.push(C::DIALECT.lock_rows());
                    ctx.records(ctx.query(conn, &sql)?)?
                        .into_iter()
                        .map(|r| (r[key.name].to_string(), r))
                        .collect()
                };
                let mut sql = bulk_upsert_sql::<C>(ctx, chunk, key, &updatable);
                ctx.returning(&mut sql);
                let entries = ctx
                    .records(ctx.query(conn, &sql)?)?
                    .into_iter()
                    .map(|after| match before.get(&after[key.name].to_string()) {
                        Some(b) => Entry::updated(m, b, &after),
                        None => Entry::created(m, after),
                    })
                    .collect();
                audit::write(conn, ctx, entries)?;
                inserted += n - before.len();
                updated += before.len();
                continue;
            }
            let existing = if keys.is_empty() {
                0
            } else {
                let mut sql = count_sql::<C>(ctx);
                sql.push(" WHERE ")
                    .ident(key.column)
                    .push(" IN ")
                    .in_list(keys);
                ctx.scope(&mut sql, true);
                scalar_count(ctx.query(conn, &sql)?)? as usize
            };
            let sql = bulk_upsert_sql::<C>(ctx, chunk, key, &updatable);
            ctx.exec(conn, &sql)?;
            inserted += n - existing;
            updated += existing;
        }
        Ok(())
    })?;
    Ok(json!({"inserted": inserted, "updated": updated}))
}

/// `INSERT … ON CONFLICT (key) DO UPDATE SET f = excluded.f, …` (or `DO
/// NOTHING` when only the key is given).
fn bulk_upsert_sql<C: Conn>(
    ctx: &Ctx,
    rows: Vec<Row>,
    key: &FieldSchema,
    updatable: &[&FieldSchema],
) -> Sql {
    let mut sql = insert_sql::<C>(ctx.model, rows);
    // On a tenant-scoped model keys are unique per tenant.
    match ctx.model.field_with(Generated::Tenant) {
        Some(t) => sql.push(" ON CONFLICT ").ident_list([t.column, key.column]),
        None => sql.push(" ON CONFLICT ").ident_list([key.column]),
    };
    if updatable.is_empty() {
        sql.push(" DO NOTHING");
    } else {
        sql.push(" DO UPDATE SET ");
        let mut list = sql.separated(", ");
        for f in updatable {
            list.item()
                .ident(f.column)
                .push(" = excluded.")
                .ident(f.column);
        }
        if let Some(v) = ctx.model.field_with(Generated::Version) {
            list.item()
                .ident(v.column)
                .push(" = ")
                .ident(ctx.model.table)
                .push(".")
                .ident(v.column)
                .push(" + 1");
        }
    }
    sql
}
