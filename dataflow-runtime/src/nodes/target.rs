//! Which record a single-record node acts on: by `id` or by a filter that
//! must match exactly one record, and the primary key of a row read back.

use super::params::Params;
use super::run::Ctx;
use super::Op;
use crate::backend::Conn;
use crate::error::{Error, ErrorCode, Result};
use crate::filter;
use crate::schema::{FieldType, ModelSchema};
use crate::sql::Sql;
use crate::value::{cell_to_json, coerce, Cell, SqlValue};
use serde_json::Value;

/// How a single-record node finds its record: by `id` or by `filter`.
/// (Not `Target`: that is a database URL in `backend`.)
pub(super) enum Selector<'a> {
    Id(SqlValue),
    Filter(&'a Value),
}

impl<'a> Selector<'a> {
    /// Reads `id` or `filter` (exactly one of them) from the parameters.
    pub(super) fn from_params(p: &Params<'a>) -> Result<Self> {
        let m = p.model;
        match (p.get("id"), p.map.get("filter")) {
            (Some(_), Some(f)) if !f.is_null() => {
                Err(p.error(Some("id"), "give either `id` or `filter`, not both"))
            }
            (Some(id), _) => {
                let pk = m.primary_key();
                Ok(Selector::Id(
                    coerce(m, pk, id).map_err(|e| e.for_param("id"))?,
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
                Ok(Selector::Filter(f))
            }
            (None, None) => Err(p.error(
                Some("id"),
                format!("missing `id` (the {} primary key) or `filter`", m.name),
            )),
        }
    }

    /// The condition after `WHERE`.
    pub(super) fn render(&self, sql: &mut Sql, m: &ModelSchema) -> Result<()> {
        match self {
            Selector::Id(v) => {
                sql.ident(m.primary_key().column)
                    .push(" = ")
                    .bind(v.clone());
                Ok(())
            }
            Selector::Filter(f) => filter::render(sql, m, f),
        }
    }

    pub(super) fn not_found(&self, ctx: &Ctx) -> Error {
        let what = match self {
            Selector::Id(v) => format!("with {} = {}", ctx.model.primary_key().name, show_value(v)),
            Selector::Filter(f) => format!(
                "matching {}",
                Error::echo(&masked_filter(ctx.model, f).to_string())
            ),
        };
        Error::new(ErrorCode::NotFound, format!("no {} {what}", ctx.model.name))
    }
}

/// A filter as an error message may quote it: the values compared with
/// `sensitive` fields replaced by `"***"`, however deep.
fn masked_filter(m: &ModelSchema, f: &Value) -> Value {
    match f {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if m.field(k).is_some_and(|f| f.sensitive) {
                        Value::String("***".into())
                    } else {
                        masked_filter(m, v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| masked_filter(m, v)).collect()),
        other => other.clone(),
    }
}

fn show_value(v: &SqlValue) -> String {
    match v {
        SqlValue::Text(s) => format!("{:?}", Error::echo(s)),
        SqlValue::I16(i) => i.to_string(),
        SqlValue::I32(i) => i.to_string(),
        SqlValue::I64(i) => i.to_string(),
        SqlValue::Uuid(u) => u.to_string(),
        other => format!("{other:?}"),
    }
}

/// Finds the one record a node targets: `not_found` for none, a validation
/// error for more than one, which suggests `alternative` (the bulk node).
/// On PostgreSQL the row stays locked until the caller's transaction ends.
pub(super) fn find_one<C: Conn>(
    conn: &mut C,
    ctx: &Ctx,
    s: &Selector,
    include_deleted: bool,
    alternative: Op,
) -> Result<Vec<Cell>> {
    let m = ctx.model;
    let mut sql = ctx.select::<C>();
    sql.push(" WHERE ");
    s.render(&mut sql, m)?;
    ctx.scope(&mut sql, include_deleted);
    // Every caller changes the record next: lock it until then.
    sql.push(" LIMIT 2").push(C::DIALECT.lock_rows());
    let mut rows = ctx.query(conn, &sql)?;
    match rows.len() {
        0 => Err(s.not_found(ctx)),
        1 => Ok(rows.pop().expect("one row")),
        _ => Err(Error::validation(
            m.name,
            Some("filter"),
            format!(
                "the filter matches more than one {}; narrow it, or use {}",
                m.name,
                crate::schema::node_name(m.name, alternative)
            ),
        )),
    }
}

/// Where the primary key sits in a model's fields, and so in a row read
/// with the full select list. (`ModelSchema::primary_key` gives the field;
/// rows need its position.)
pub(super) fn pk_index(m: &ModelSchema) -> usize {
    m.fields.iter().position(|f| f.primary_key).unwrap_or(0)
}

/// The primary key of a whole row, ready to bind: how a record found by a
/// filter is then changed by id. The common key types convert directly;
/// anything else goes through the record's JSON form, as input would.
pub(super) fn pk_value(m: &ModelSchema, row: Vec<Cell>) -> Result<SqlValue> {
    let i = pk_index(m);
    let pk = &m.fields[i];
    match (pk.ty, row.into_iter().nth(i).unwrap_or(Cell::Null)) {
        (FieldType::I64, Cell::I64(n)) => Ok(SqlValue::I64(n)),
        (FieldType::I32, Cell::I64(n)) if i32::try_from(n).is_ok() => Ok(SqlValue::I32(n as i32)),
        (FieldType::I16, Cell::I64(n)) if i16::try_from(n).is_ok() => Ok(SqlValue::I16(n as i16)),
        (FieldType::Uuid, Cell::Uuid(u)) => Ok(SqlValue::Uuid(u)),
        (FieldType::String, Cell::Text(s)) if pk.max_length.is_none() => Ok(SqlValue::Text(s)),
        (_, cell) => coerce(m, pk, &cell_to_json(m, pk, cell)?),
    }
}

#[cfg(test)]
mod tests {
    use super::{pk_index, pk_value};
    use crate::nodes::fixtures::{field, NOTE, TAG, USER};
    use crate::schema::{FieldSchema, FieldType, ModelSchema};
    use crate::value::{cell_to_json, coerce, Cell};

    /// A model of one field, its primary key.
    const fn keyed(name: &'static str, fields: &'static [FieldSchema]) -> ModelSchema {
        ModelSchema {
            name,
            table: name,
            fields,
            options: TAG.options,
            checksum: 0,
        }
    }

    static UUID_KEY: ModelSchema = keyed(
        "U",
        &[FieldSchema {
            primary_key: true,
            ..field("id", FieldType::Uuid)
        }],
    );
    static I32_KEY: ModelSchema = keyed(
        "I",
        &[FieldSchema {
            primary_key: true,
            ..field("id", FieldType::I32)
        }],
    );
    static I16_KEY: ModelSchema = keyed(
        "S",
        &[FieldSchema {
            primary_key: true,
            ..field("id", FieldType::I16)
        }],
    );

    /// `pk_value` gives what the JSON round trip it replaced gave, for
    /// values and for errors.
    #[test]
    fn pk_value_matches_the_json_round_trip() {
        let uuid = "01936b2e-8f4a-7c3b-9d2e-0123456789ab";
        let cases = [
            (&USER, Cell::Text("u1".into())),
            (&NOTE, Cell::I64(7)),
            (&TAG, Cell::Text("a".into())),
            (&UUID_KEY, Cell::Uuid(uuid.parse().unwrap())),
            (&UUID_KEY, Cell::Text(uuid.into())),
            (&UUID_KEY, Cell::Text("not a uuid".into())),
            (&I32_KEY, Cell::I64(70_000)),
            (&I16_KEY, Cell::I64(70_000)),
            (&NOTE, Cell::Text("7".into())),
            (&NOTE, Cell::Null),
        ];
        for (m, cell) in cases {
            let mut row = vec![Cell::Null; m.fields.len()];
            row[pk_index(m)] = cell.clone();
            let pk = m.primary_key();
            let old = cell_to_json(m, pk, cell.clone()).and_then(|json| coerce(m, pk, &json));
            let new = pk_value(m, row);
            assert_eq!(
                format!("{new:?}"),
                format!("{old:?}"),
                "{} key from {cell:?}",
                m.name
            );
        }
    }
}
