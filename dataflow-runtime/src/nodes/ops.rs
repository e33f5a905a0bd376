//! The node operations, written once over [`Conn`] and driven by the schema.

use super::params::Params;
use super::Op;
use crate::backend::Conn;
use crate::error::{Error, ErrorCode, Result};
use crate::filter;
use crate::schema::{FieldSchema, FieldType, Generated, ModelSchema};
use crate::sql::{Dialect, Sql};
use crate::value::{cell_to_json, coerce, coerce_owned, Cell, SqlValue};
use base64::Engine as _;
use serde_json::{json, Map, Value};

/// Everything a node run needs besides the connection.
pub struct Ctx<'a> {
    pub model: &'static ModelSchema,
    pub node: &'a str,
    /// The model's quoted column list, computed once per model.
    pub columns: &'a str,
    /// Log each statement (never its values) to stderr.
    pub echo: bool,
}

/// The largest `limit` a List accepts.
pub const MAX_LIMIT: u64 = 10_000;
const DEFAULT_LIMIT: u64 = 100;
const DEFAULT_BATCH: u64 = 1_000;

/// Runs one node. Every error leaves with the node and model named.
pub fn run<C: Conn>(conn: &mut C, ctx: &Ctx, op: Op, params: Value) -> Result<Value> {
    let m = ctx.model;
    if m.options.append_only && op.changes_existing() {
        return Err(Error::new(
            ErrorCode::NotAllowed,
            format!(
                "{}: {} is append_only; records can be created and read, not changed or deleted",
                ctx.node, m.name
            ),
        )
        .with_model(m.name)
        .with_node(ctx.node));
    }
    let result = match op {
        Op::Create => create(conn, ctx, params),
        Op::Read => read(conn, ctx, &params),
        Op::Update => update(conn, ctx, &params),
        Op::Delete => delete(conn, ctx, &params),
        Op::List => list(conn, ctx, &params),
        Op::Count => count(conn, ctx, &params),
        Op::Upsert => upsert(conn, ctx, &params),
        Op::BulkCreate => bulk_create(conn, ctx, params),
        Op::BulkUpdate => bulk_update(conn, ctx, &params),
        Op::BulkDelete => bulk_delete(conn, ctx, &params),
        Op::BulkUpsert => bulk_upsert(conn, ctx, params),
    };
    result.map_err(|e| contextualize(e, ctx))
}

/// Gives database errors the model's words: the field instead of the
/// column, and a message that says what happened.
fn contextualize(err: Error, ctx: &Ctx) -> Error {
    let m = ctx.model;
    let field = err.field().map(|c| {
        m.fields
            .iter()
            .find(|f| f.column == c)
            .map_or(c, |f| f.name)
            .to_string()
    });
    let err = match err.kind() {
        ErrorCode::UniqueViolation => {
            let f = field.as_deref().unwrap_or("a unique field");
            let e = Error::new(
                ErrorCode::UniqueViolation,
                format!(
                    "{}: a {} with this `{f}` already exists ({}.{f} is unique)",
                    ctx.node, m.name, m.name
                ),
            );
            match &field {
                Some(f) => e.with_field(f),
                None => e,
            }
        }
        ErrorCode::FkViolation => {
            let detail = match &field {
                Some(f) => format!("`{f}` must reference an existing record"),
                None => "the record is referenced by other records, or references one that does not exist".into(),
            };
            let e = Error::new(
                ErrorCode::FkViolation,
                format!("{}: foreign key violated on {}: {detail}", ctx.node, m.name),
            );
            match &field {
                Some(f) => e.with_field(f),
                None => e,
            }
        }
        ErrorCode::Database | ErrorCode::Connection | ErrorCode::NotFound
            if !err.message().starts_with(ctx.node) =>
        {
            let e = Error::new(err.kind(), format!("{}: {}", ctx.node, err.message()));
            match &field {
                Some(f) => e.with_field(f),
                None => e,
            }
        }
        _ => err,
    };
    let err = if err.model().is_none() {
        err.with_model(m.name)
    } else {
        err
    };
    if err.node().is_none() {
        err.with_node(ctx.node)
    } else {
        err
    }
}

fn exec<C: Conn>(conn: &mut C, ctx: &Ctx, sql: &Sql) -> Result<usize> {
    if ctx.echo {
        eprintln!("[dataflow] {} ({} binds)", sql.display(), sql.bind_count());
    }
    conn.exec(sql)
}

fn query<C: Conn>(conn: &mut C, ctx: &Ctx, sql: &Sql) -> Result<Vec<Vec<Cell>>> {
    if ctx.echo {
        eprintln!("[dataflow] {} ({} binds)", sql.display(), sql.bind_count());
    }
    conn.query(sql)
}

/// A row in select-list order (all fields) as a JSON record.
fn record(m: &ModelSchema, cells: Vec<Cell>) -> Result<Value> {
    let mut map = Map::new();
    for (field, cell) in m.fields.iter().zip(cells) {
        map.insert(field.name.to_string(), cell_to_json(m, field, cell)?);
    }
    Ok(Value::Object(map))
}

fn records(m: &ModelSchema, rows: Vec<Vec<Cell>>) -> Result<Vec<Value>> {
    rows.into_iter().map(|r| record(m, r)).collect()
}

fn select(sql: &mut Sql, ctx: &Ctx) {
    let m = ctx.model;
    sql.push("SELECT ")
        .push(ctx.columns)
        .push(" FROM ")
        .ident(m.table);
}

fn returning(sql: &mut Sql, ctx: &Ctx) {
    sql.push(" RETURNING ").push(ctx.columns);
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

/// How a single-record node finds its record: by `id` or by `filter`.
enum Target<'a> {
    Id(SqlValue),
    Filter(&'a Value),
}

fn target<'a>(p: &Params<'a>) -> Result<Target<'a>> {
    let m = p.model;
    match (p.get("id"), p.map.get("filter")) {
        (Some(_), Some(f)) if !f.is_null() => {
            Err(p.error(Some("id"), "give either `id` or `filter`, not both"))
        }
        (Some(id), _) => {
            let pk = m.primary_key();
            Ok(Target::Id(
                coerce(m, pk, id).map_err(|e| p.error(Some("id"), e.message()))?,
            ))
        }
        (None, Some(_)) => {
            let f = p.filter("filter")?;
            if filter::is_empty(f) {
                return Err(p.error(
                    Some("filter"),
                    "the filter is empty; give `id` or a filter that selects one record",
                ));
            }
            Ok(Target::Filter(f))
        }
        (None, None) => Err(p.error(
            Some("id"),
            format!("missing `id` (the {} primary key) or `filter`", m.name),
        )),
    }
}

fn where_target(sql: &mut Sql, m: &ModelSchema, t: &Target) -> Result<()> {
    match t {
        Target::Id(v) => {
            sql.ident(m.primary_key().column)
                .push(" = ")
                .bind(v.clone());
            Ok(())
        }
        Target::Filter(f) => filter::render(sql, m, f),
    }
}

fn not_found(ctx: &Ctx, t: &Target) -> Error {
    let what = match t {
        Target::Id(v) => format!("with {} = {}", ctx.model.primary_key().name, show_value(v)),
        Target::Filter(f) => format!("matching {f}"),
    };
    Error::new(
        ErrorCode::NotFound,
        format!("{}: no {} {what}", ctx.node, ctx.model.name),
    )
}

fn show_value(v: &SqlValue) -> String {
    match v {
        SqlValue::Text(s) => format!("{s:?}"),
        SqlValue::I16(i) => i.to_string(),
        SqlValue::I32(i) => i.to_string(),
        SqlValue::I64(i) => i.to_string(),
        SqlValue::Uuid(u) => u.to_string(),
        other => format!("{other:?}"),
    }
}

/// Finds the one record a node targets: `not_found` for none, a validation
/// error for more than one.
fn find_one<C: Conn>(
    conn: &mut C,
    ctx: &Ctx,
    t: &Target,
    include_deleted: bool,
    alternative: Op,
) -> Result<Vec<Cell>> {
    let m = ctx.model;
    let mut sql = Sql::new(C::DIALECT);
    select(&mut sql, ctx);
    sql.push(" WHERE ");
    where_target(&mut sql, m, t)?;
    live_only(&mut sql, m, include_deleted);
    sql.push(" LIMIT 2");
    let mut rows = query(conn, ctx, &sql)?;
    match rows.len() {
        0 => Err(not_found(ctx, t)),
        1 => Ok(rows.pop().expect("one row")),
        _ => Err(Error::validation(
            m.name,
            Some("filter"),
            format!(
                "{}: the filter matches more than one {}; narrow it, or use {}",
                ctx.node,
                m.name,
                crate::schema::node_name(m.name, alternative)
            ),
        )),
    }
}

// ---------------------------------------------------------------- writes

/// The values of one new record, one entry per field (`None`: let the
/// database generate it).
fn insert_row(
    ctx: &Ctx,
    data: Value,
    now: &SqlValue,
    at: Option<usize>,
) -> Result<Vec<Option<SqlValue>>> {
    let m = ctx.model;
    let prefix = |msg: String| match at {
        Some(i) => format!("{}: data[{i}]: {msg}", ctx.node),
        None => format!("{}: {msg}", ctx.node),
    };
    let err = |field: Option<&str>, msg: String| Error::validation(m.name, field, prefix(msg));
    let mut obj = match data {
        Value::Object(obj) => obj,
        other => {
            return Err(err(
                None,
                format!(
                    "a {} record must be a JSON object, got {}",
                    m.name,
                    crate::value::describe(&other)
                ),
            ))
        }
    };
    for key in obj.keys() {
        match m.field(key) {
            None => {
                let e = filter::field(m, key).expect_err("unknown field");
                return Err(err(Some(key), e.message().to_string()));
            }
            Some(f) if !f.writable() && f.generated != Generated::AutoIncrement => {
                return Err(err(
                    Some(key),
                    format!("{}.{key} is set by dataflow and cannot be written", m.name),
                ));
            }
            Some(_) => {}
        }
    }
    let mut row = Vec::with_capacity(m.fields.len());
    for f in m.fields {
        // Taken out of the input, so strings move instead of being copied.
        let given = obj.remove(f.name);
        let value = match f.generated {
            Generated::Uuid7 => match given {
                Some(v) if !v.is_null() => Some(
                    coerce_owned(m, f, v)
                        .map_err(|e| err(Some(f.name), e.message().to_string()))?,
                ),
                _ => Some(match f.ty {
                    FieldType::Uuid => SqlValue::Uuid(uuid::Uuid::now_v7()),
                    _ => SqlValue::Text(new_uuid_text()),
                }),
            },
            Generated::AutoIncrement => match given {
                Some(v) if !v.is_null() => Some(
                    coerce_owned(m, f, v)
                        .map_err(|e| err(Some(f.name), e.message().to_string()))?,
                ),
                _ => None,
            },
            Generated::CreatedAt | Generated::UpdatedAt => Some(now.clone()),
            Generated::DeletedAt => Some(SqlValue::Null(f.ty)),
            Generated::Tenant => {
                return Err(Error::new(
                    ErrorCode::NotSupported,
                    prefix(format!(
                        "{} is tenant_scoped, and multi-tenancy is not available yet",
                        m.name
                    )),
                ))
            }
            Generated::No => match given {
                Some(v) => Some(
                    coerce_owned(m, f, v)
                        .map_err(|e| err(Some(f.name), e.message().to_string()))?,
                ),
                None => match f.default {
                    Some(d) => Some(
                        coerce(m, f, &d.to_json())
                            .map_err(|e| err(Some(f.name), e.message().to_string()))?,
                    ),
                    None if f.nullable => Some(SqlValue::Null(f.ty)),
                    None => {
                        return Err(err(
                            Some(f.name),
                            format!(
                                "missing required field `{}` ({} expected)",
                                f.name,
                                f.ty.expected()
                            ),
                        ))
                    }
                },
            },
        };
        row.push(value);
    }
    Ok(row)
}

/// Validated `SET` assignments for Update-like nodes.
fn assignments(ctx: &Ctx, p: &Params, key: &str) -> Result<Vec<(&'static FieldSchema, SqlValue)>> {
    let m = ctx.model;
    let fields = p.object(key)?.ok_or_else(|| {
        p.error(
            Some(key),
            format!(
                "missing `{key}`: an object of the {} fields to change",
                m.name
            ),
        )
    })?;
    if fields.is_empty() {
        return Err(p.error(
            Some(key),
            format!("`{key}` is empty; name at least one field to change"),
        ));
    }
    let mut out = Vec::with_capacity(fields.len() + 1);
    for (name, v) in fields {
        let f = filter::field(m, name).map_err(|e| p.error(Some(name), e.message()))?;
        if f.primary_key {
            return Err(p.error(
                Some(name),
                format!("{}.{name} is the primary key and cannot be changed", m.name),
            ));
        }
        if !f.writable() {
            return Err(p.error(
                Some(name),
                format!("{}.{name} is set by dataflow and cannot be written", m.name),
            ));
        }
        out.push((
            f,
            coerce(m, f, v).map_err(|e| p.error(Some(name), e.message()))?,
        ));
    }
    if let Some(f) = m.field_with(Generated::UpdatedAt) {
        out.push((f, now_value()));
    }
    Ok(out)
}

fn now_value() -> SqlValue {
    SqlValue::DateTime(crate::value::now())
}

fn set_clause(sql: &mut Sql, sets: &[(&FieldSchema, SqlValue)]) {
    sql.push(" SET ");
    for (i, (f, v)) in sets.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.ident(f.column).push(" = ").bind(v.clone());
    }
}

/// `INSERT INTO t (present columns) VALUES (...), (...)`, taking the rows'
/// values (no copies: bulk inserts bind hundreds of thousands of them).
fn insert_sql<C: Conn>(m: &ModelSchema, rows: Vec<Vec<Option<SqlValue>>>) -> Sql {
    let mut sql = Sql::new(C::DIALECT);
    let Some(first) = rows.first() else {
        return sql;
    };
    sql.push("INSERT INTO ").ident(m.table).push(" (");
    let present = m.fields.iter().zip(first).filter(|(_, v)| v.is_some());
    for (k, (f, _)) in present.enumerate() {
        if k > 0 {
            sql.push(", ");
        }
        sql.ident(f.column);
    }
    sql.push(") VALUES ");
    for (r, row) in rows.into_iter().enumerate() {
        sql.push(if r == 0 { "(" } else { ", (" });
        for (k, v) in row.into_iter().flatten().enumerate() {
            if k > 0 {
                sql.push(", ");
            }
            sql.bind(v);
        }
        sql.push(")");
    }
    sql
}

/// Takes an array parameter out of the (already validated) parameters.
fn take_array(params: &mut Value, key: &str) -> Vec<Value> {
    match params.get_mut(key).map(Value::take) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    }
}

/// A new UUID v7 as text, without going through `fmt`.
fn new_uuid_text() -> String {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::now_v7()
        .hyphenated()
        .encode_lower(&mut buf)
        .to_string()
}

/// Consumes validated rows in batches of `size`.
fn batches(
    rows: Vec<Vec<Option<SqlValue>>>,
    size: usize,
) -> impl Iterator<Item = Vec<Vec<Option<SqlValue>>>> {
    let mut rows = rows.into_iter();
    std::iter::from_fn(move || {
        let chunk: Vec<_> = rows.by_ref().take(size).collect();
        (!chunk.is_empty()).then_some(chunk)
    })
}

fn create<C: Conn>(conn: &mut C, ctx: &Ctx, params: Value) -> Result<Value> {
    let row = insert_row(ctx, params, &now_value(), None)?;
    let mut sql = insert_sql::<C>(ctx.model, vec![row]);
    returning(&mut sql, ctx);
    let mut rows = query(conn, ctx, &sql)?;
    record(
        ctx.model,
        rows.pop()
            .ok_or_else(|| Error::internal("INSERT … RETURNING returned no row"))?,
    )
}

fn read<C: Conn>(conn: &mut C, ctx: &Ctx, params: &Value) -> Result<Value> {
    let p = Params::new(
        ctx.model,
        ctx.node,
        params,
        &["id", "filter", "include_deleted"],
    )?;
    let t = target(&p)?;
    let include_deleted = p.bool("include_deleted")?;
    let m = ctx.model;
    let mut sql = Sql::new(C::DIALECT);
    select(&mut sql, ctx);
    sql.push(" WHERE ");
    where_target(&mut sql, m, &t)?;
    live_only(&mut sql, m, include_deleted);
    if matches!(t, Target::Filter(_)) {
        sql.push(" ORDER BY ").ident(m.primary_key().column);
    }
    sql.push(" LIMIT 1");
    let mut rows = query(conn, ctx, &sql)?;
    match rows.pop() {
        Some(row) => record(m, row),
        None => Err(not_found(ctx, &t)),
    }
}

fn update<C: Conn>(conn: &mut C, ctx: &Ctx, params: &Value) -> Result<Value> {
    let p = Params::new(ctx.model, ctx.node, params, &["id", "filter", "fields"])?;
    let t = target(&p)?;
    let sets = assignments(ctx, &p, "fields")?;
    let m = ctx.model;
    let pk = m.primary_key();
    let update_by = |conn: &mut C, t: &Target| -> Result<Option<Value>> {
        let mut sql = Sql::new(C::DIALECT);
        sql.push("UPDATE ").ident(m.table);
        set_clause(&mut sql, &sets);
        sql.push(" WHERE ");
        where_target(&mut sql, m, t)?;
        live_only(&mut sql, m, false);
        returning(&mut sql, ctx);
        query(conn, ctx, &sql)?
            .pop()
            .map(|r| record(m, r))
            .transpose()
    };
    match t {
        Target::Id(_) => update_by(conn, &t)?.ok_or_else(|| not_found(ctx, &t)),
        Target::Filter(_) => conn.write_transaction(|conn| {
            let row = find_one(conn, ctx, &t, false, Op::BulkUpdate)?;
            let id = coerce(m, pk, &cell_to_json(m, pk, pk_cell(m, row))?)?;
            update_by(conn, &Target::Id(id))?.ok_or_else(|| not_found(ctx, &t))
        }),
    }
}

fn pk_cell(m: &ModelSchema, row: Vec<Cell>) -> Cell {
    let i = m.fields.iter().position(|f| f.primary_key).unwrap_or(0);
    row.into_iter().nth(i).unwrap_or(Cell::Null)
}

fn delete<C: Conn>(conn: &mut C, ctx: &Ctx, params: &Value) -> Result<Value> {
    let p = Params::new(ctx.model, ctx.node, params, &["id", "filter"])?;
    let t = target(&p)?;
    let m = ctx.model;
    let pk = m.primary_key();
    let delete_by = |conn: &mut C, t: &Target| -> Result<Option<Value>> {
        let mut sql = soft_or_hard_delete::<C>(m);
        sql.push(" WHERE ");
        where_target(&mut sql, m, t)?;
        live_only(&mut sql, m, false);
        sql.push(" RETURNING ").ident(pk.column);
        match query(conn, ctx, &sql)?.pop() {
            Some(row) => Ok(Some(cell_to_json(
                m,
                pk,
                row.into_iter().next().unwrap_or(Cell::Null),
            )?)),
            None => Ok(None),
        }
    };
    let id = match t {
        Target::Id(_) => delete_by(conn, &t)?.ok_or_else(|| not_found(ctx, &t))?,
        Target::Filter(_) => conn.write_transaction(|conn| {
            let row = find_one(conn, ctx, &t, false, Op::BulkDelete)?;
            let id = coerce(m, pk, &cell_to_json(m, pk, pk_cell(m, row))?)?;
            delete_by(conn, &Target::Id(id))?.ok_or_else(|| not_found(ctx, &t))
        })?,
    };
    Ok(json!({"id": id, "deleted": true}))
}

/// The start of every delete, single or bulk: `DELETE FROM <table>`, or on
/// soft-delete models the `UPDATE` that sets `deleted_at` (and `updated_at`,
/// when the model has timestamps, to the same instant). One function, so
/// Delete and BulkDelete cannot drift apart again.
fn soft_or_hard_delete<C: Conn>(m: &ModelSchema) -> Sql {
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

// ---------------------------------------------------------------- reads

/// One `order_by` entry.
struct Order {
    field: &'static FieldSchema,
    desc: bool,
}

fn order_by(p: &Params) -> Result<Vec<Order>> {
    let m = p.model;
    let items: Vec<&str> =
        match p.get("order_by") {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str().ok_or_else(|| {
                        p.error(
                            Some("order_by"),
                            "`order_by` items must be strings such as \"-created_at\"",
                        )
                    })
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(p.error(
                Some("order_by"),
                "`order_by` must be a field name or an array such as [\"-created_at\", \"email\"]",
            )),
        };
    let mut out: Vec<Order> = Vec::with_capacity(items.len() + 1);
    for item in items {
        let (desc, name) = match item.strip_prefix('-') {
            Some(n) => (true, n),
            None => (false, item.strip_prefix('+').unwrap_or(item)),
        };
        let field = filter::field(m, name).map_err(|e| p.error(Some("order_by"), e.message()))?;
        if matches!(field.ty, FieldType::Json | FieldType::Bytes) {
            return Err(p.error(
                Some("order_by"),
                format!("{}.{name} cannot be used for ordering", m.name),
            ));
        }
        if out.iter().any(|o| o.field.name == field.name) {
            return Err(p.error(
                Some("order_by"),
                format!("`{name}` appears twice in `order_by`"),
            ));
        }
        out.push(Order { field, desc });
    }
    // The primary key breaks ties, so pages never skip or repeat records.
    let pk = m.primary_key();
    if !out.iter().any(|o| o.field.primary_key) {
        out.push(Order {
            field: pk,
            desc: false,
        });
    }
    Ok(out)
}

fn encode_cursor(order: &[Order], record: &Value) -> String {
    let values: Vec<&Value> = order.iter().map(|o| &record[o.field.name]).collect();
    let keys: Vec<String> = order
        .iter()
        .map(|o| format!("{}{}", if o.desc { "-" } else { "" }, o.field.name))
        .collect();
    let raw = json!({"o": keys, "v": values}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// Appends the keyset condition "after this cursor" for `order`.
fn keyset(sql: &mut Sql, p: &Params, order: &[Order], cursor: &str) -> Result<()> {
    let m = p.model;
    let bad = || {
        p.error(Some("after"), "`after` is not a cursor of this listing; pass the `next` value of a previous page with the same order_by")
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let parsed: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let keys: Vec<String> = order
        .iter()
        .map(|o| format!("{}{}", if o.desc { "-" } else { "" }, o.field.name))
        .collect();
    if parsed["o"] != json!(keys) {
        return Err(bad());
    }
    let values = parsed["v"]
        .as_array()
        .filter(|v| v.len() == order.len())
        .ok_or_else(bad)?;
    if let Some(o) = order.iter().find(|o| o.field.nullable) {
        return Err(p.error(Some("after"), format!("keyset pagination needs non-nullable order_by fields, and {}.{} is nullable; use `offset`", m.name, o.field.name)));
    }
    let values: Vec<SqlValue> = order
        .iter()
        .zip(values)
        .map(|(o, v)| coerce(m, o.field, v).map_err(|_| bad()))
        .collect::<Result<_>>()?;
    sql.push(" AND (");
    for i in 0..order.len() {
        if i > 0 {
            sql.push(" OR ");
        }
        sql.push("(");
        for j in 0..i {
            sql.ident(order[j].field.column)
                .push(" = ")
                .bind(values[j].clone())
                .push(" AND ");
        }
        sql.ident(order[i].field.column)
            .push(if order[i].desc { " < " } else { " > " })
            .bind(values[i].clone());
        sql.push(")");
    }
    sql.push(")");
    Ok(())
}

fn list<C: Conn>(conn: &mut C, ctx: &Ctx, params: &Value) -> Result<Value> {
    let p = Params::new(
        ctx.model,
        ctx.node,
        params,
        &[
            "filter",
            "order_by",
            "limit",
            "offset",
            "after",
            "include_deleted",
        ],
    )?;
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
    let mut sql = Sql::new(C::DIALECT);
    select(&mut sql, ctx);
    sql.push(" WHERE ");
    filter::render(&mut sql, m, f)?;
    live_only(&mut sql, m, p.bool("include_deleted")?);
    if let Some(cursor) = after {
        keyset(&mut sql, &p, &order, cursor)?;
    }
    sql.push(" ORDER BY ");
    for (i, o) in order.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        // One NULL placement on both backends; only nullable fields need it
        // (on others it would keep PostgreSQL from using an index).
        sql.ident(o.field.column)
            .push(match (o.desc, o.field.nullable) {
                (false, false) => " ASC",
                (true, false) => " DESC",
                (false, true) => " ASC NULLS FIRST",
                (true, true) => " DESC NULLS LAST",
            });
    }
    sql.push(&format!(" LIMIT {limit}"));
    if offset > 0 {
        sql.push(&format!(" OFFSET {offset}"));
    }
    let recs = records(m, query(conn, ctx, &sql)?)?;
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

fn count<C: Conn>(conn: &mut C, ctx: &Ctx, params: &Value) -> Result<Value> {
    let p = Params::new(ctx.model, ctx.node, params, &["filter", "include_deleted"])?;
    let m = ctx.model;
    let mut sql = Sql::new(C::DIALECT);
    sql.push("SELECT COUNT(*) FROM ")
        .ident(m.table)
        .push(" WHERE ");
    filter::render(&mut sql, m, p.filter("filter")?)?;
    live_only(&mut sql, m, p.bool("include_deleted")?);
    let n = match query(conn, ctx, &sql)?
        .pop()
        .and_then(|r| r.into_iter().next())
    {
        Some(Cell::I64(n)) => n,
        other => return Err(Error::internal(format!("COUNT(*) returned {other:?}"))),
    };
    Ok(json!({"count": n}))
}

// ---------------------------------------------------------------- upserts

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
    let f = filter::field(m, name).map_err(|e| p.error(Some("conflict_on"), e.message()))?;
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

fn upsert<C: Conn>(conn: &mut C, ctx: &Ctx, params: &Value) -> Result<Value> {
    let p = Params::new(
        ctx.model,
        ctx.node,
        params,
        &["where", "create", "update", "conflict_on"],
    )?;
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

    conn.write_transaction(|conn| {
        for attempt in 0..2 {
            let existing =
                match find_one(conn, ctx, &Target::Filter(&lookup), false, Op::BulkUpsert) {
                    Ok(row) => Some(row),
                    Err(e) if e.kind() == ErrorCode::NotFound => None,
                    Err(e) => return Err(e),
                };
            if let Some(row) = existing {
                let rec = if sets.is_empty() {
                    record(m, row)?
                } else {
                    let pk = m.primary_key();
                    let id = coerce(m, pk, &cell_to_json(m, pk, pk_cell(m, row))?)?;
                    let mut sql = Sql::new(C::DIALECT);
                    sql.push("UPDATE ").ident(m.table);
                    set_clause(&mut sql, &sets);
                    sql.push(" WHERE ").ident(pk.column).push(" = ").bind(id);
                    returning(&mut sql, ctx);
                    let row = query(conn, ctx, &sql)?
                        .pop()
                        .ok_or_else(|| Error::internal("UPDATE … RETURNING returned no row"))?;
                    record(m, row)?
                };
                return Ok(json!({"action": "updated", "record": rec}));
            }
            // A concurrent insert of the same key loses the race with a unique
            // violation inside the savepoint; look again and update instead.
            let mut sql = insert_sql::<C>(m, vec![new_row.clone()]);
            returning(&mut sql, ctx);
            match conn.write_transaction(|conn| query(conn, ctx, &sql)) {
                Ok(mut rows) => {
                    let row = rows
                        .pop()
                        .ok_or_else(|| Error::internal("INSERT … RETURNING returned no row"))?;
                    return Ok(json!({"action": "created", "record": record(m, row)?}));
                }
                Err(e) if e.kind() == ErrorCode::UniqueViolation && attempt == 0 => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::internal("upsert did not settle after a retry"))
    })
}

// ---------------------------------------------------------------- bulk

/// Validates every record before anything is written: one bad record
/// fails the whole batch, naming its index.
fn bulk_rows<C: Conn>(ctx: &Ctx, data: Vec<Value>) -> Result<Vec<Vec<Option<SqlValue>>>> {
    // Rendered once: SQLite stores timestamps as text, and formatting one per
    // row and column costs more than the insert.
    let now = match C::DIALECT {
        Dialect::Sqlite => SqlValue::Text(crate::value::format_datetime(&crate::value::now())),
        Dialect::Postgres => now_value(),
    };
    let rows: Vec<_> = data
        .into_iter()
        .enumerate()
        .map(|(i, d)| insert_row(ctx, d, &now, Some(i)))
        .collect::<Result<_>>()?;
    if let Some(first) = rows.first() {
        let shape: Vec<bool> = first.iter().map(Option::is_some).collect();
        if let Some(i) = rows
            .iter()
            .position(|r| r.iter().map(Option::is_some).ne(shape.iter().copied()))
        {
            let pk = ctx.model.primary_key().name;
            return Err(Error::validation(
                ctx.model.name,
                Some(pk),
                format!(
                    "{}: data[{i}]: either every record gives `{pk}` or none does",
                    ctx.node
                ),
            ));
        }
    }
    Ok(rows)
}

fn rows_per_batch<C: Conn>(m: &ModelSchema, requested: u64) -> usize {
    let per_row = m.fields.len().max(1);
    (C::DIALECT.max_binds() / per_row).clamp(1, requested.max(1) as usize)
}

fn bulk_create<C: Conn>(conn: &mut C, ctx: &Ctx, mut params: Value) -> Result<Value> {
    let p = Params::new(ctx.model, ctx.node, &params, &["data", "batch_size"])?;
    let m = ctx.model;
    p.array("data")?;
    let batch = rows_per_batch::<C>(m, p.u64("batch_size", DEFAULT_BATCH, 1_000_000)?);
    let rows = bulk_rows::<C>(ctx, take_array(&mut params, "data"))?;
    if rows.is_empty() {
        return Ok(json!({"inserted": 0, "ids": []}));
    }
    let pk_index = m.fields.iter().position(|f| f.primary_key).unwrap_or(0);
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
                for row in query(conn, ctx, &sql)? {
                    ids.push(cell_to_json(
                        m,
                        pk,
                        row.into_iter().next().unwrap_or(Cell::Null),
                    )?);
                }
            } else {
                exec(conn, ctx, &sql)?;
            }
        }
        Ok(())
    })?;
    let mut out = Map::new();
    out.insert("inserted".into(), inserted.into());
    out.insert("ids".into(), Value::Array(ids));
    Ok(Value::Object(out))
}

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

/// Refuses a whole-table change unless the caller confirmed it.
fn confirm_scope(p: &Params, f: &Value, what: &str) -> Result<()> {
    if filter::is_empty(f) && !p.bool("confirmed")? {
        return Err(Error::new(
            ErrorCode::ConfirmationRequired,
            format!(
                "{}: an empty filter would {what} every {} record; pass \"confirmed\": true to do that on purpose",
                p.node, p.model.name
            ),
        )
        .with_model(p.model.name)
        .with_field("filter"));
    }
    Ok(())
}

fn bulk_update<C: Conn>(conn: &mut C, ctx: &Ctx, params: &Value) -> Result<Value> {
    let p = Params::new(
        ctx.model,
        ctx.node,
        params,
        &["filter", "fields", "confirmed"],
    )?;
    let m = ctx.model;
    let f = p.filter("filter")?;
    let sets = assignments(ctx, &p, "fields")?;
    confirm_scope(&p, f, "update")?;
    let mut sql = Sql::new(C::DIALECT);
    sql.push("UPDATE ").ident(m.table);
    set_clause(&mut sql, &sets);
    sql.push(" WHERE ");
    filter::render(&mut sql, m, f)?;
    live_only(&mut sql, m, false);
    let n = conn.write_transaction(|conn| exec(conn, ctx, &sql))?;
    Ok(json!({"updated": n}))
}

fn bulk_delete<C: Conn>(conn: &mut C, ctx: &Ctx, params: &Value) -> Result<Value> {
    let p = Params::new(ctx.model, ctx.node, params, &["filter", "confirmed"])?;
    let m = ctx.model;
    let f = p.filter("filter")?;
    confirm_scope(&p, f, "delete")?;
    let mut sql = soft_or_hard_delete::<C>(m);
    sql.push(" WHERE ");
    filter::render(&mut sql, m, f)?;
    live_only(&mut sql, m, false);
    let n = conn.write_transaction(|conn| exec(conn, ctx, &sql))?;
    Ok(json!({"deleted": n}))
}

fn bulk_upsert<C: Conn>(conn: &mut C, ctx: &Ctx, mut params: Value) -> Result<Value> {
    let m = ctx.model;
    // The parameters are read first; then `data` is taken out of them.
    let (key, batch) = {
        let p = Params::new(
            ctx.model,
            ctx.node,
            &params,
            &["data", "conflict_on", "batch_size"],
        )?;
        p.array("data")?;
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
                    format!(
                        "{}: data[{j}] and data[{i}] have the same `{}`",
                        ctx.node, key.name
                    ),
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
        .filter(|f| f.name != key.name && !f.primary_key && f.generated != Generated::CreatedAt)
        .collect();
    let (mut inserted, mut updated) = (0usize, 0usize);
    conn.write_transaction(|conn| {
        for chunk in batches(rows, batch) {
            let keys: Vec<SqlValue> = chunk
                .iter()
                .filter_map(|r| r[key_index].clone())
                .filter(|v| !matches!(v, SqlValue::Null(_)))
                .collect();
            let existing = if keys.is_empty() {
                0
            } else {
                let mut sql = Sql::new(C::DIALECT);
                sql.push("SELECT COUNT(*) FROM ")
                    .ident(m.table)
                    .push(" WHERE ")
                    .ident(key.column)
                    .push(" IN (");
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        sql.push(", ");
                    }
                    sql.bind(k);
                }
                sql.push(")");
                match query(conn, ctx, &sql)?
                    .pop()
                    .and_then(|r| r.into_iter().next())
                {
                    Some(Cell::I64(n)) => n as usize,
                    other => return Err(Error::internal(format!("COUNT(*) returned {other:?}"))),
                }
            };
            let n = chunk.len();
            let mut sql = insert_sql::<C>(m, chunk);
            sql.push(" ON CONFLICT (").ident(key.column).push(")");
            if updatable.is_empty() {
                sql.push(" DO NOTHING");
            } else {
                sql.push(" DO UPDATE SET ");
                for (i, f) in updatable.iter().enumerate() {
                    if i > 0 {
                        sql.push(", ");
                    }
                    sql.ident(f.column).push(" = excluded.").ident(f.column);
                }
            }
            exec(conn, ctx, &sql)?;
            inserted += n - existing;
            updated += existing;
        }
        Ok(())
    })?;
    Ok(json!({"inserted": inserted, "updated": updated}))
}
