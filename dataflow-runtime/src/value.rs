//! JSON ⇄ typed values. Input JSON is checked against a field's declared
//! type here, once; the SQL layer only ever sees [`SqlValue`]s, which are
//! always sent as bound parameters.

use crate::error::{Error, Result};
use crate::schema::{FieldSchema, FieldType, ModelSchema};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde_json::Value;

/// A value ready to bind.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SqlValue {
    Null(FieldType),
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Text(String),
    DateTime(DateTime<Utc>),
    Date(NaiveDate),
    Uuid(uuid::Uuid),
    Json(Value),
    Bytes(Vec<u8>),
    /// A whole `$in` list as one parameter (PostgreSQL `= ANY($1)`); on
    /// SQLite [`Sql::bind`](crate::sql::Sql::bind) turns it into JSON text.
    Array(SqlArray),
}

/// The values of one `$in` list, all of the field's type, bound as one
/// array parameter so the list's length never meets a parameter limit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SqlArray {
    Bool(Vec<bool>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Text(Vec<String>),
    DateTime(Vec<DateTime<Utc>>),
    Date(Vec<NaiveDate>),
    Uuid(Vec<uuid::Uuid>),
    Bytes(Vec<Vec<u8>>),
}

impl SqlArray {
    /// Collects values already coerced to `ty` (never null, never JSON).
    pub(crate) fn collect(ty: FieldType, values: Vec<SqlValue>) -> SqlArray {
        macro_rules! gather {
            ($variant:ident) => {
                SqlArray::$variant(
                    values
                        .into_iter()
                        .filter_map(|v| match v {
                            SqlValue::$variant(x) => Some(x),
                            _ => None,
                        })
                        .collect(),
                )
            };
        }
        match ty {
            FieldType::Bool => gather!(Bool),
            FieldType::I16 => gather!(I16),
            FieldType::I32 => gather!(I32),
            FieldType::I64 => gather!(I64),
            FieldType::F32 => gather!(F32),
            FieldType::F64 => gather!(F64),
            FieldType::DateTime => gather!(DateTime),
            FieldType::Date => gather!(Date),
            FieldType::Uuid => gather!(Uuid),
            FieldType::Bytes => gather!(Bytes),
            FieldType::String | FieldType::Json => gather!(Text),
        }
    }

    /// SQLite's form: a JSON array of the values as SQLite stores them
    /// (booleans as 0/1, timestamps, dates and uuids as their text form,
    /// bytes as hex for `unhex`), read back with `json_each`.
    pub(crate) fn to_sqlite_json(&self) -> String {
        fn list<T>(items: &[T], f: impl Fn(&T) -> Value) -> String {
            Value::Array(items.iter().map(f).collect()).to_string()
        }
        match self {
            SqlArray::Bool(v) => list(v, |b| Value::from(u8::from(*b))),
            SqlArray::I16(v) => list(v, |x| Value::from(*x)),
            SqlArray::I32(v) => list(v, |x| Value::from(*x)),
            SqlArray::I64(v) => list(v, |x| Value::from(*x)),
            SqlArray::F32(v) => list(v, |x| Value::from(f64::from(*x))),
            SqlArray::F64(v) => list(v, |x| Value::from(*x)),
            SqlArray::Text(v) => list(v, |s| Value::from(s.as_str())),
            SqlArray::DateTime(v) => list(v, |d| Value::from(format_datetime(d))),
            SqlArray::Date(v) => list(v, |d| Value::from(d.format("%Y-%m-%d").to_string())),
            SqlArray::Uuid(v) => list(v, |u| Value::from(u.to_string())),
            SqlArray::Bytes(v) => list(v, |b| Value::from(hex(b))),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A value read back from a row, before the schema gives it its JSON form.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Null,
    Bool(bool),
    I64(i64),
    F64(f64),
    Text(String),
    Bytes(Vec<u8>),
    DateTime(DateTime<Utc>),
    Date(NaiveDate),
    Uuid(uuid::Uuid),
    Json(Value),
}

/// The one textual form of timestamps: fixed-width microseconds in UTC, so
/// that SQLite's text comparison orders them correctly.
pub(crate) fn format_datetime(dt: &DateTime<Utc>) -> String {
    dt.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The current time at the precision both backends store.
pub(crate) fn now() -> DateTime<Utc> {
    let now = Utc::now();
    let micros = now.timestamp_micros();
    DateTime::from_timestamp_micros(micros).unwrap_or(now)
}

fn type_error(model: &ModelSchema, field: &FieldSchema, got: &Value) -> Error {
    Error::invalid_field(
        model.name,
        field.name,
        format!("expected {}, got {}", field.ty.expected(), describe(got)),
    )
}

/// A short description of a JSON value for error messages (never the whole value).
/// `v` as an integer: a JSON integer, or a number with no fraction that
/// a double holds exactly (`3.0`), as JSON Schema's `integer` counts it.
pub(crate) fn as_integer(v: &Value) -> Option<i64> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() <= EXACT)
            .map(|f| f as i64)
    })
}

pub(crate) fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks `v` against the field's type and converts it. `null` is accepted
/// only for nullable fields.
pub(crate) fn coerce(model: &ModelSchema, field: &FieldSchema, v: &Value) -> Result<SqlValue> {
    if v.is_null() {
        return if field.nullable {
            Ok(SqlValue::Null(field.ty))
        } else {
            Err(Error::invalid_field(
                model.name,
                field.name,
                format!("cannot be null (expected {})", field.ty.expected()),
            ))
        };
    }
    coerce_non_null(model, field, field.ty, v)
}

/// [`coerce`] taking the value, so strings move instead of being copied.
pub(crate) fn coerce_owned(model: &ModelSchema, field: &FieldSchema, v: Value) -> Result<SqlValue> {
    match (field.ty, v) {
        (FieldType::String, Value::String(s))
            if field.max_length.is_none_or(|max| s.len() <= max as usize)
                && !(is_indexed(field) && s.len() > MAX_INDEXED_TEXT_CHARS)
                && !s.contains('\0') =>
        {
            Ok(SqlValue::Text(s))
        }
        (_, v) => coerce(model, field, &v),
    }
}

/// Like [`coerce`] for a given type (filters compare strings to `$like`
/// patterns whatever the field is).
pub(crate) fn coerce_non_null(
    model: &ModelSchema,
    field: &FieldSchema,
    ty: FieldType,
    v: &Value,
) -> Result<SqlValue> {
    let err = || type_error(model, field, v);
    let int = || as_integer(v).ok_or_else(err);
    Ok(match ty {
        FieldType::String => {
            let s = v.as_str().ok_or_else(err)?;
            if s.contains('\0') {
                return Err(nul_error(model, field));
            }
            if is_indexed(field) && s.len() > MAX_INDEXED_TEXT_CHARS {
                let len = s.chars().count();
                if len > MAX_INDEXED_TEXT_CHARS {
                    return Err(Error::invalid_field(
                        model.name,
                        field.name,
                        format!(
                            "is {len} characters long; an indexed text field (unique, index or \
                             primary key) holds at most {MAX_INDEXED_TEXT_CHARS}"
                        ),
                    ));
                }
            }
            if let Some(max) = field.max_length {
                let len = s.chars().count();
                if len > max as usize {
                    return Err(Error::invalid_field(
                        model.name,
                        field.name,
                        format!("is {len} characters long, at most {max} are allowed"),
                    ));
                }
            }
            SqlValue::Text(s.to_string())
        }
        FieldType::I16 => SqlValue::I16(i16::try_from(int()?).map_err(|_| err())?),
        FieldType::I32 => SqlValue::I32(i32::try_from(int()?).map_err(|_| err())?),
        FieldType::I64 => SqlValue::I64(int()?),
        FieldType::F32 => {
            let x = v.as_f64().ok_or_else(err)?;
            // `as f32` would turn 1e300 into infinity, stored and read back as null.
            if x.abs() > f64::from(f32::MAX) {
                return Err(Error::invalid_field(
                    model.name,
                    field.name,
                    format!(
                        "{x} is out of range for a 32-bit float (at most ±{:e})",
                        f32::MAX
                    ),
                ));
            }
            SqlValue::F32(x as f32)
        }
        FieldType::F64 => SqlValue::F64(v.as_f64().ok_or_else(err)?),
        FieldType::Bool => SqlValue::Bool(v.as_bool().ok_or_else(err)?),
        FieldType::DateTime => {
            let s = v.as_str().ok_or_else(err)?;
            let dt = DateTime::parse_from_rfc3339(s).map_err(|_| err())?;
            let dt = dt.with_timezone(&Utc);
            // Both backends store microseconds; truncate so the round trip is exact.
            SqlValue::DateTime(DateTime::from_timestamp_micros(dt.timestamp_micros()).unwrap_or(dt))
        }
        FieldType::Date => {
            let s = v.as_str().ok_or_else(err)?;
            SqlValue::Date(NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| err())?)
        }
        FieldType::Uuid => SqlValue::Uuid(v.as_str().and_then(|s| s.parse().ok()).ok_or_else(err)?),
        FieldType::Json => {
            if has_nul(v) {
                return Err(nul_error(model, field));
            }
            SqlValue::Json(v.clone())
        }
        FieldType::Bytes => {
            let arr = v.as_array().ok_or_else(err)?;
            let mut out = Vec::with_capacity(arr.len());
            for b in arr {
                out.push(
                    as_integer(b)
                        .and_then(|b| u8::try_from(b).ok())
                        .ok_or_else(err)?,
                );
            }
            SqlValue::Bytes(out)
        }
    })
}

/// The longest value, in characters, of a text field with an index
/// (`unique`, `index` or the primary key), on both backends: PostgreSQL's
/// B-tree refuses index entries over about 2,700 bytes (500 characters are
/// at most 2,000 bytes of UTF-8), so longer values are a validation error
/// everywhere instead of a database error there. Input schemas say it as
/// `maxLength`.
pub const MAX_INDEXED_TEXT_CHARS: usize = 500;

pub(crate) fn is_indexed(field: &FieldSchema) -> bool {
    field.unique || field.index || field.primary_key
}

/// Text with a NUL character: PostgreSQL cannot store it (in text or
/// jsonb), so neither backend does.
fn nul_error(model: &ModelSchema, field: &FieldSchema) -> Error {
    Error::invalid_field(
        model.name,
        field.name,
        "contains a NUL character (\\u0000), which text cannot store",
    )
}

/// Whether any string (or key) inside a JSON value contains a NUL character.
fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// The JSON form of a stored value, by the field's declared type.
pub(crate) fn cell_to_json(model: &ModelSchema, field: &FieldSchema, cell: Cell) -> Result<Value> {
    let bad = |what: &str| {
        Error::internal(format!(
            "{}.{}: the database returned {what} for a {:?} column; the table does not match the model",
            model.name, field.name, field.ty
        ))
    };
    Ok(match (field.ty, cell) {
        (_, Cell::Null) => Value::Null,
        (FieldType::Bool, Cell::Bool(b)) => Value::Bool(b),
        (FieldType::Bool, Cell::I64(i)) => Value::Bool(i != 0),
        (FieldType::I16 | FieldType::I32 | FieldType::I64, Cell::I64(i)) => Value::from(i),
        (FieldType::F32, Cell::F64(f)) => Value::from(f64::from(f as f32)),
        (FieldType::F64, Cell::F64(f)) => Value::from(f),
        (FieldType::F32 | FieldType::F64, Cell::I64(i)) => Value::from(i as f64),
        (FieldType::String, Cell::Text(s)) => Value::String(s),
        (FieldType::DateTime, Cell::DateTime(dt)) => Value::String(format_datetime(&dt)),
        (FieldType::DateTime, Cell::Text(s)) => Value::String(s),
        (FieldType::Date, Cell::Date(d)) => Value::String(d.format("%Y-%m-%d").to_string()),
        (FieldType::Date, Cell::Text(s)) => Value::String(s),
        (FieldType::Uuid, Cell::Uuid(u)) => Value::String(u.to_string()),
        (FieldType::Uuid, Cell::Text(s)) => Value::String(s),
        (FieldType::Json, Cell::Json(v)) => v,
        (FieldType::Json, Cell::Text(s)) => {
            serde_json::from_str(&s).map_err(|_| bad("text that is not JSON"))?
        }
        (FieldType::Bytes, Cell::Bytes(b)) => {
            Value::Array(b.into_iter().map(Value::from).collect())
        }
        (_, other) => return Err(bad(cell_kind(&other))),
    })
}

fn cell_kind(c: &Cell) -> &'static str {
    match c {
        Cell::Null => "NULL",
        Cell::Bool(_) => "a boolean",
        Cell::I64(_) => "an integer",
        Cell::F64(_) => "a float",
        Cell::Text(_) => "text",
        Cell::Bytes(_) => "bytes",
        Cell::DateTime(_) => "a timestamp",
        Cell::Date(_) => "a date",
        Cell::Uuid(_) => "a uuid",
        Cell::Json(_) => "json",
    }
}

/// "did you mean" for unknown names.
/// Whether `v` nests objects and arrays more than `limit` levels deep (a
/// scalar is 0 levels). Recursion stops at `limit`, so it stays shallow
/// however deep `v` is, and nothing is allocated.
pub(crate) fn deeper_than(v: &Value, limit: usize) -> bool {
    let children: &mut dyn Iterator<Item = &Value> = match v {
        Value::Array(a) => &mut a.iter(),
        Value::Object(m) => &mut m.values(),
        _ => return false,
    };
    let mut children = children.peekable();
    match limit {
        0 => children.peek().is_some(),
        _ => children.any(|c| deeper_than(c, limit - 1)),
    }
}

/// Drops `v` without recursion: dropping a value nested thousands of
/// levels deep the ordinary way overflows the stack.
pub(crate) fn dismantle(v: Value) {
    let mut stack = vec![v];
    while let Some(mut v) = stack.pop() {
        match &mut v {
            Value::Array(a) => stack.append(a),
            Value::Object(m) => {
                let m = std::mem::take(m);
                stack.extend(m.into_iter().map(|(_, x)| x));
            }
            _ => {}
        }
    }
}

/// A new UUID v7 (ids sort by creation time) as lower-case hyphenated
/// text, without going through `fmt`.
pub(crate) fn new_uuid7_text() -> String {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::now_v7()
        .hyphenated()
        .encode_lower(&mut buf)
        .to_string()
}

/// `" (did you mean `x`?)"` for the candidate closest to `name`, or nothing.
pub(crate) fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> String {
    hint(suggest(name, candidates))
}

/// `" (did you mean `x`?)"`, or nothing without a suggestion.
pub(crate) fn hint(suggestion: Option<&str>) -> String {
    suggestion
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default()
}

pub(crate) fn suggest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let close = |c: &str| 2.max(c.len() / 3);
    candidates
        .into_iter()
        // Lengths further apart than the allowed distance cannot be close
        // (and a 1 MB unknown name costs nothing).
        .filter(|c| name.len().abs_diff(c.len()) <= close(c) * 4)
        .map(|c| (levenshtein(name, c), c))
        .filter(|(d, c)| *d <= close(c))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(suggest("emial", ["email", "id"]), Some("email"));
        assert_eq!(suggest("zzzzzz", ["email", "id"]), None);
    }

    #[test]
    fn datetimes_format_with_fixed_width() {
        let dt = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(format_datetime(&dt), "2026-01-02T03:04:05.000000Z");
    }

    #[test]
    fn deeper_than_counts_levels_of_objects_and_arrays() {
        assert!(!deeper_than(&json!(1), 0));
        assert!(!deeper_than(&json!({}), 0));
        assert!(deeper_than(&json!({"a": 1}), 0));
        assert!(!deeper_than(&json!({"a": 1}), 1));
        let and = json!({"$and": [{"x": 1}]});
        assert!(deeper_than(&and, 2));
        assert!(!deeper_than(&and, 3));
        let mut deep = json!(1);
        for _ in 0..200 {
            deep = Value::Array(vec![deep]);
        }
        assert!(deeper_than(&deep, 64));
        assert!(!deeper_than(&deep, 200));
        dismantle(deep);
    }
}
