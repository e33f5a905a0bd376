//! Validating what nodes write: new records (one, or many in batches) and
//! the `SET` assignments of updates, checked against the schema before any
//! SQL runs.

use super::params::Params;
use super::run::Ctx;
use crate::backend::Conn;
use crate::error::{Error, ErrorCode, Result};
use crate::filter;
use crate::schema::{FieldSchema, FieldType, Generated, ModelSchema};
use crate::sql::{Dialect, Sql};
use crate::value::{coerce, coerce_owned, SqlValue};
use serde_json::Value;

/// The values of one new record, one entry per field in schema order
/// (`None`: the database generates it).
pub(super) type Row = Vec<Option<SqlValue>>;

/// An update's changes: each field with its new value.
pub(super) type Assignments = Vec<(&'static FieldSchema, SqlValue)>;

/// The `batch_size` of bulk writes that give none.
pub(super) const DEFAULT_BATCH: u64 = 1_000;

/// The current time as a bind value (timestamps are set by dataflow).
pub(super) fn now_value() -> SqlValue {
    SqlValue::DateTime(crate::value::now())
}

/// The values of one new record. `at` is the record's index in a bulk
/// input, named in errors.
pub(super) fn insert_row(ctx: &Ctx, data: Value, now: &SqlValue, at: Option<usize>) -> Result<Row> {
    let m = ctx.model;
    // Which record of a bulk input: the run adds the node.
    let located = |e: Error| match at {
        Some(i) => e.at_item(i),
        None => e,
    };
    let err = |field: Option<&str>, msg: String| located(Error::validation(m.name, field, msg));
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
    for (key, given) in &obj {
        match m.field(key) {
            None => {
                return Err(located(filter::field(m, key).expect_err("unknown field")));
            }
            Some(f) if !f.writable() && f.generated != Generated::AutoIncrement => {
                return Err(err(
                    Some(key),
                    format!("{}.{key} is set by dataflow and cannot be written", m.name),
                ));
            }
            // One sequence numbers every tenant's rows: a chosen id could
            // collide with another tenant's and so reveal that it exists.
            Some(f)
                if f.generated == Generated::AutoIncrement
                    && m.options.tenant_scoped
                    && !given.is_null() =>
            {
                return Err(err(
                    Some(key),
                    format!(
                        "{}.{key} is numbered by the database on a tenant_scoped model and cannot be written",
                        m.name
                    ),
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
            // An empty id means "generate one", as in the typed form.
            Generated::Uuid7 => match given {
                Some(v) if !v.is_null() && v.as_str() != Some("") => {
                    Some(coerce_owned(m, f, v).map_err(located)?)
                }
                _ => Some(match f.ty {
                    FieldType::Uuid => SqlValue::Uuid(uuid::Uuid::now_v7()),
                    _ => SqlValue::Text(new_uuid_text()),
                }),
            },
            Generated::AutoIncrement => match given {
                Some(v) if !v.is_null() => Some(coerce_owned(m, f, v).map_err(located)?),
                _ => None,
            },
            Generated::CreatedAt | Generated::UpdatedAt => Some(now.clone()),
            // Every record starts at version 1.
            Generated::Version => Some(coerce(m, f, &Value::from(1))?),
            Generated::DeletedAt => Some(SqlValue::Null(f.ty)),
            // `run` resolved it from the context: writes always have one.
            Generated::Tenant => match ctx.tenant {
                Some(t) => Some(SqlValue::Text(t.to_string())),
                None => {
                    return Err(Error::new(
                        ErrorCode::TenantRequired,
                        format!("{} is tenant_scoped: set Context::tenant", m.name),
                    ))
                }
            },
            Generated::No => match given {
                Some(v) => Some(coerce_owned(m, f, v).map_err(located)?),
                None => match f.default {
                    Some(d) => Some(coerce(m, f, &d.to_json()).map_err(located)?),
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

/// A new UUID v7 as text, without going through `fmt`.
fn new_uuid_text() -> String {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::now_v7()
        .hyphenated()
        .encode_lower(&mut buf)
        .to_string()
}

/// Validated `SET` assignments for Update-like nodes, from the object
/// parameter `key`; `updated_at` is added when the model has it.
pub(super) fn assignments(ctx: &Ctx, p: &Params, key: &str) -> Result<Assignments> {
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
        let f = filter::field(m, name)?;
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
        out.push((f, coerce(m, f, v)?));
    }
    if let Some(f) = m.field_with(Generated::UpdatedAt) {
        out.push((f, now_value()));
    }
    Ok(out)
}

/// `UPDATE <table> SET <assignments>`, the start of every update; on a
/// versioned model also `"version" = "version" + 1`.
pub(super) fn update_sql<C: Conn>(m: &ModelSchema, sets: &[(&FieldSchema, SqlValue)]) -> Sql {
    let mut sql = Sql::new(C::DIALECT);
    sql.push("UPDATE ")
        .ident(m.table)
        .set(sets.iter().map(|(f, v)| (f.column, v.clone())));
    if let Some(v) = m.field_with(Generated::Version) {
        sql.push(", ")
            .ident(v.column)
            .push(" = ")
            .ident(v.column)
            .push(" + 1");
    }
    sql
}

/// A new record's JSON text for the audit log, written straight from its
/// validated values (the same JSON as the record the database returns),
/// `sensitive` fields as `"***"`. A key the database generates (`None`) is
/// left out; the caller adds it once known.
pub(super) fn row_json_text(m: &ModelSchema, row: &Row) -> String {
    let mut out: Vec<u8> = Vec::with_capacity(32 * m.fields.len());
    out.push(b'{');
    let mut first = true;
    for (f, v) in m.fields.iter().zip(row) {
        let Some(v) = v else { continue };
        if !first {
            out.push(b',');
        }
        first = false;
        json_into(&mut out, f.name);
        out.push(b':');
        if f.sensitive {
            out.extend_from_slice(b"\"***\"");
        } else {
            sql_value_json_into(&mut out, v);
        }
    }
    out.push(b'}');
    String::from_utf8(out).unwrap_or_default()
}

/// Appends `v` as JSON (serde_json cannot fail writing into a `Vec`).
fn json_into<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    let _ = serde_json::to_writer(out, v);
}

/// Appends a bound value as JSON, as [`sql_value_json`] would give it.
fn sql_value_json_into(out: &mut Vec<u8>, v: &SqlValue) {
    match v {
        SqlValue::Null(_) => out.extend_from_slice(b"null"),
        SqlValue::Bool(b) => json_into(out, b),
        SqlValue::I16(i) => json_into(out, i),
        SqlValue::I32(i) => json_into(out, i),
        SqlValue::I64(i) => json_into(out, i),
        SqlValue::F32(x) => json_into(out, &f64::from(*x)),
        SqlValue::F64(x) => json_into(out, x),
        SqlValue::Text(s) => json_into(out, s.as_str()),
        SqlValue::DateTime(dt) => json_into(out, &crate::value::format_datetime(dt)),
        SqlValue::Date(d) => json_into(out, &d.format("%Y-%m-%d").to_string()),
        SqlValue::Uuid(u) => json_into(out, &u.to_string()),
        SqlValue::Json(j) => json_into(out, j),
        SqlValue::Bytes(b) => json_into(out, b),
        SqlValue::Array(_) => json_into(out, &sql_value_json(v)),
    }
}

/// A bound value's JSON form, the same as the stored value's
/// (`value::cell_to_json`).
pub(super) fn sql_value_json(v: &SqlValue) -> Value {
    match v {
        SqlValue::Null(_) => Value::Null,
        SqlValue::Bool(b) => Value::Bool(*b),
        SqlValue::I16(i) => Value::from(*i),
        SqlValue::I32(i) => Value::from(*i),
        SqlValue::I64(i) => Value::from(*i),
        SqlValue::F32(x) => Value::from(f64::from(*x)),
        SqlValue::F64(x) => Value::from(*x),
        SqlValue::Text(s) => Value::String(s.clone()),
        SqlValue::DateTime(dt) => Value::String(crate::value::format_datetime(dt)),
        SqlValue::Date(d) => Value::String(d.format("%Y-%m-%d").to_string()),
        SqlValue::Uuid(u) => Value::String(u.to_string()),
        SqlValue::Json(j) => j.clone(),
        SqlValue::Bytes(b) => Value::Array(b.iter().map(|x| Value::from(*x)).collect()),
        SqlValue::Array(a) => Value::String(a.to_sqlite_json()),
    }
}

/// `INSERT INTO t (present columns) VALUES (...), (...)`, taking the rows'
/// values (no copies: bulk inserts bind hundreds of thousands of them).
/// The first row decides the columns; [`bulk_rows`] makes all rows agree.
///
/// Of several rows, the columns dataflow fills with one value for the
/// whole input (the tenant, the timestamps, the first version, a live
/// `deleted_at`) go first and are bound once: the first row binds them,
/// and every other row names those parameters again (`?1` / `$1`), so a
/// tenant-scoped insert binds no more per row than a global one. The
/// statement must start here (nothing bound before it).
pub(super) fn insert_sql<C: Conn>(m: &ModelSchema, rows: Vec<Row>) -> Sql {
    let mut sql = Sql::new(C::DIALECT);
    let Some(first) = rows.first() else {
        return sql;
    };
    let shared: Vec<bool> = m
        .fields
        .iter()
        .map(|f| rows.len() > 1 && same_for_every_row(f))
        .collect();
    // Column positions: the shared ones first, then the rest, each only
    // where the first row has a value.
    let order: Vec<usize> = (0..m.fields.len())
        .filter(|&i| shared[i])
        .chain((0..m.fields.len()).filter(|&i| !shared[i]))
        .filter(|&i| first[i].is_some())
        .collect();
    let n_shared = order.iter().take_while(|&&i| shared[i]).count();
    sql.push("INSERT INTO ")
        .ident(m.table)
        .push(" ")
        .ident_list(order.iter().map(|&i| m.fields[i].column))
        .push(" VALUES ");
    for (r, mut row) in rows.into_iter().enumerate() {
        if r > 0 {
            sql.push(", ");
        }
        sql.push("(");
        for (k, &i) in order.iter().enumerate() {
            if k > 0 {
                sql.push(", ");
            }
            let value = row[i].take().unwrap_or(SqlValue::Null(m.fields[i].ty));
            if r > 0 && k < n_shared {
                sql.param_ref(k + 1);
            } else {
                sql.bind(value);
            }
        }
        sql.push(")");
    }
    sql
}

/// Whether [`insert_row`] gives `f` the same value in every row of one
/// input (so a multi-row insert can bind it once).
fn same_for_every_row(f: &FieldSchema) -> bool {
    matches!(
        f.generated,
        Generated::Tenant
            | Generated::CreatedAt
            | Generated::UpdatedAt
            | Generated::Version
            | Generated::DeletedAt
    )
}

/// Validates every record before anything is written: one bad record
/// fails the whole batch, naming its index.
pub(super) fn bulk_rows<C: Conn>(ctx: &Ctx, data: Vec<Value>) -> Result<Vec<Row>> {
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
                format!("either every record gives `{pk}` or none does"),
            )
            .at_item(i));
        }
    }
    Ok(rows)
}

/// Takes an array parameter out of the (already validated) parameters.
pub(super) fn take_array(params: &mut Value, key: &str) -> Vec<Value> {
    match params.get_mut(key).map(Value::take) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    }
}

/// How many rows one INSERT carries: the requested batch size, within the
/// dialect's limit on bind parameters.
pub(super) fn rows_per_batch<C: Conn>(m: &ModelSchema, requested: u64) -> usize {
    let per_row = m.fields.len().max(1);
    (C::DIALECT.max_binds() / per_row).clamp(1, requested.max(1) as usize)
}

/// Consumes validated rows in batches of `size`.
pub(super) fn batches(rows: Vec<Row>, size: usize) -> impl Iterator<Item = Vec<Row>> {
    let mut rows = rows.into_iter();
    std::iter::from_fn(move || {
        let chunk: Vec<_> = rows.by_ref().take(size).collect();
        (!chunk.is_empty()).then_some(chunk)
    })
}
