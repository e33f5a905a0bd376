//! The single-record writes: Create, Update and Delete, and the one
//! soft-or-hard delete that Delete and BulkDelete share.

use super::params::{Param, Params};
use super::row::{
    assignments, insert_row, insert_sql, now_value, row_json_text, sql_value_json, update_sql,
};
use super::run::Ctx;
use super::schema as s;
use super::target::{find_one, pk_index, pk_value, Selector};
use super::Op;
use crate::audit::{self, Entry};
use crate::backend::Conn;
use crate::error::{Error, ErrorCode, Result};
use crate::schema::{Generated, ModelSchema};
use crate::sql::Sql;
use crate::value::{cell_to_json, coerce, Cell};
use serde_json::{json, Value};

/// Update: one record by `id` or `filter`, and the `fields` to change.
pub(super) const UPDATE: &[Param] = &[
    Param::optional("id", s::pk),
    Param::optional("filter", s::filter),
    Param::required("fields", s::changes),
    Param::versioned("expected_version", s::expected_version),
];

/// Delete: one record by `id` or `filter`.
pub(super) const DELETE: &[Param] = &[
    Param::optional("id", s::pk),
    Param::optional("filter", s::filter),
];

/// Create takes the record itself, so it has no parameter table.
pub(super) fn create<C: Conn>(conn: &mut C, ctx: &Ctx, params: Value) -> Result<Value> {
    let row = insert_row(ctx, params, &now_value(), None)?;
    if ctx.audited && C::DIALECT.writes_in_with() {
        // The insert and its audit row in one statement (one round trip).
        let pk = &row[pk_index(ctx.model)];
        let record_id = pk.as_ref().map(|v| audit::id_text(&sql_value_json(v)));
        let after = row_json_text(ctx.model, &row);
        let sql = audit::insert_with_row::<C>(
            ctx,
            insert_sql::<C>(ctx.model, vec![row]),
            record_id,
            after,
        );
        let mut rows = ctx.query(conn, &sql)?;
        return ctx.record(
            rows.pop()
                .ok_or_else(|| Error::internal("INSERT … RETURNING returned no row"))?,
        );
    }
    let mut sql = insert_sql::<C>(ctx.model, vec![row]);
    ctx.returning(&mut sql);
    let insert = |conn: &mut C| -> Result<Value> {
        let mut rows = ctx.query(conn, &sql)?;
        ctx.record(
            rows.pop()
                .ok_or_else(|| Error::internal("INSERT … RETURNING returned no row"))?,
        )
    };
    if !ctx.audited {
        return insert(conn);
    }
    conn.write_transaction(|conn| {
        let record = insert(conn)?;
        audit::write(conn, ctx, vec![Entry::created(ctx.model, record.clone())])?;
        Ok(record)
    })
}

pub(super) fn update<C: Conn>(conn: &mut C, ctx: &Ctx, params: &Value) -> Result<Value> {
    let p = Params::new(ctx.model, ctx.node, params, UPDATE)?;
    let sel = Selector::from_params(&p)?;
    let sets = assignments(ctx, &p, "fields")?;
    let expected = p.expected_version()?;
    let m = ctx.model;
    let update_by = |conn: &mut C, sel: &Selector| -> Result<Option<Value>> {
        let mut sql = update_sql::<C>(m, &sets);
        sql.push(" WHERE ");
        sel.render(&mut sql, m)?;
        ctx.scope(&mut sql, false);
        ctx.returning(&mut sql);
        ctx.query(conn, &sql)?
            .pop()
            .map(|r| ctx.record(r))
            .transpose()
    };
    if ctx.audited || expected.is_some() {
        // The record as it was (locked until the write commits): the audit
        // log's before-image and the version to check.
        return conn.write_transaction(|conn| {
            let before = ctx.record(find_one(conn, ctx, &sel, false, Op::BulkUpdate)?)?;
            check_version(ctx, &before, expected)?;
            let id = coerce(m, m.primary_key(), &before[m.primary_key().name])?;
            let after = update_by(conn, &Selector::Id(id))?.ok_or_else(|| sel.not_found(ctx))?;
            if ctx.audited {
                audit::write(conn, ctx, vec![Entry::updated(m, &before, &after)])?;
            }
            Ok(after)
        });
    }
    match sel {
        Selector::Id(_) => update_by(conn, &sel)?.ok_or_else(|| sel.not_found(ctx)),
        Selector::Filter(_) => conn.write_transaction(|conn| {
            let row = find_one(conn, ctx, &sel, false, Op::BulkUpdate)?;
            let id = pk_value(m, row)?;
            update_by(conn, &Selector::Id(id))?.ok_or_else(|| sel.not_found(ctx))
        }),
    }
}

/// Optimistic locking: `conflict` unless `record` has the version the
/// caller expects.
pub(super) fn check_version(ctx: &Ctx, record: &Value, expected: Option<i64>) -> Result<()> {
    let (Some(expected), Some(f)) = (expected, ctx.model.field_with(Generated::Version)) else {
        return Ok(());
    };
    let actual = record[f.name].as_i64();
    if actual == Some(expected) {
        return Ok(());
    }
    let m = ctx.model;
    Err(Error::new(
        ErrorCode::Conflict,
        format!(
            "the {} record {} changed since it was read: its `{}` is {}, not the expected_version {expected}; read it again and retry (nothing was written)",
            m.name,
            crate::audit::record_id(m, record),
            f.name,
            actual.map_or_else(|| "unknown".to_string(), |v| v.to_string()),
        ),
    )
    .with_field("expected_version"))
}

pub(super) fn delete<C: Conn>(conn: &mut C, ctx: &Ctx, params: &Value) -> Result<Value> {
    let p = Params::new(ctx.model, ctx.node, params, DELETE)?;
    let sel = Selector::from_params(&p)?;
    let m = ctx.model;
    let pk = m.primary_key();
    let delete_by = |conn: &mut C, sel: &Selector| -> Result<Option<Value>> {
        let mut sql = soft_or_hard_delete::<C>(m);
        sql.push(" WHERE ");
        sel.render(&mut sql, m)?;
        ctx.scope(&mut sql, false);
        sql.push(" RETURNING ").ident(pk.column);
        match ctx.query(conn, &sql)?.pop() {
            Some(row) => Ok(Some(cell_to_json(
                m,
                pk,
                row.into_iter().next().unwrap_or(Cell::Null),
            )?)),
            None => Ok(None),
        }
    };
    let id = match sel {
        _ if ctx.audited => conn.write_transaction(|conn| {
            let before = ctx.record(find_one(conn, ctx, &sel, false, Op::BulkDelete)?)?;
            let id = coerce(m, pk, &before[pk.name])?;
            let id = delete_by(conn, &Selector::Id(id))?.ok_or_else(|| sel.not_found(ctx))?;
            audit::write(conn, ctx, vec![Entry::deleted(m, before)])?;
            Ok(id)
        })?,
        Selector::Id(_) => delete_by(conn, &sel)?.ok_or_else(|| sel.not_found(ctx))?,
        Selector::Filter(_) => conn.write_transaction(|conn| {
            let row = find_one(conn, ctx, &sel, false, Op::BulkDelete)?;
            let id = pk_value(m, row)?;
            delete_by(conn, &Selector::Id(id))?.ok_or_else(|| sel.not_found(ctx))
        })?,
    };
    Ok(json!({"id": id, "deleted": true}))
}

/// The start of every delete, single or bulk: `DELETE FROM <table>`, or on
/// soft-delete models the `UPDATE` that sets `deleted_at` (and `updated_at`,
/// when the model has timestamps, to the same instant). One function, so
/// Delete and BulkDelete cannot drift apart again.
pub(super) fn soft_or_hard_delete<C: Conn>(m: &ModelSchema) -> Sql {
    let mut sql = Sql::new(C::DIALECT);
    match m.field_with(Generated::DeletedAt) {
        Some(deleted_at) => {
            let now = now_value();
            let updated_at = m
                .field_with(Generated::UpdatedAt)
                .map(|u| (u.column, now.clone()));
            sql.push("UPDATE ")
                .ident(m.table)
                .set(std::iter::once((deleted_at.column, now)).chain(updated_at));
        }
        None => {
            sql.push("DELETE FROM ").ident(m.table);
        }
    }
    sql
}
