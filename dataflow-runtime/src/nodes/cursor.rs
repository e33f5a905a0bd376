//! List ordering and keyset pagination: `order_by` parsed against the
//! schema, and the opaque `next` cursor that encodes the order and the last
//! record's values, decoded into an "after this record" condition.

use super::params::Params;
use crate::error::Result;
use crate::filter;
use crate::schema::{FieldSchema, FieldType};
use crate::sql::Sql;
use crate::value::{coerce, SqlValue};
use base64::Engine as _;
use serde_json::{json, Value};

/// One `order_by` entry.
pub(super) struct Order {
    pub(super) field: &'static FieldSchema,
    pub(super) desc: bool,
}

/// The `order_by` parameter, with the primary key appended as the last
/// tie-breaker unless already present.
pub(super) fn order_by(p: &Params) -> Result<Vec<Order>> {
    let m = p.model;
    let items = p.names("order_by", "[\"-created_at\", \"email\"]")?;
    let mut out: Vec<Order> = Vec::with_capacity(items.len() + 1);
    for item in items {
        let (desc, name) = Params::direction(item);
        let field = filter::field(m, name).map_err(|e| e.for_param("order_by"))?;
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

/// ` ORDER BY a ASC, b DESC, ...` for `order`.
pub(super) fn order_clause(sql: &mut Sql, order: &[Order]) {
    sql.push(" ORDER BY ");
    let mut list = sql.separated(", ");
    for o in order {
        // One NULL placement on both backends; only nullable fields need it
        // (on others it would keep PostgreSQL from using an index).
        list.item()
            .ident(o.field.column)
            .push(direction_sql(o.desc, o.field.nullable));
    }
}

/// ` ASC` / ` DESC`, with one NULL placement on both backends (first
/// ascending, last descending) where the value can be NULL.
pub(super) fn direction_sql(desc: bool, nullable: bool) -> &'static str {
    match (desc, nullable) {
        (false, false) => " ASC",
        (true, false) => " DESC",
        (false, true) => " ASC NULLS FIRST",
        (true, true) => " DESC NULLS LAST",
    }
}

/// The order a cursor was made for, `-field` for descending. The encoder
/// writes it and [`keyset`] compares it, so both must build it here.
fn order_key(order: &[Order]) -> Vec<String> {
    order
        .iter()
        .map(|o| format!("{}{}", if o.desc { "-" } else { "" }, o.field.name))
        .collect()
}

/// The `next` cursor after `record`, the last record of a page.
pub(super) fn encode_cursor(order: &[Order], record: &Value) -> String {
    let values: Vec<&Value> = order.iter().map(|o| &record[o.field.name]).collect();
    let raw = json!({"o": order_key(order), "v": values}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// Appends the keyset condition "after this cursor" for `order`.
pub(super) fn keyset(sql: &mut Sql, p: &Params, order: &[Order], cursor: &str) -> Result<()> {
    let m = p.model;
    let bad = || {
        p.error(Some("after"), "`after` is not a cursor of this listing; pass the `next` value of a previous page with the same order_by")
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let parsed: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    if parsed["o"] != json!(order_key(order)) {
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
    // (a > x) OR (a = x AND b > y) OR ...: later keys only break ties.
    sql.push(" AND (");
    let mut alternatives = sql.separated(" OR ");
    for (i, last) in order.iter().enumerate() {
        let sql = alternatives.item();
        sql.push("(");
        let mut terms = sql.separated(" AND ");
        for (o, v) in order.iter().zip(&values).take(i) {
            terms
                .item()
                .ident(o.field.column)
                .push(" = ")
                .bind(v.clone());
        }
        terms
            .item()
            .ident(last.field.column)
            .push(if last.desc { " < " } else { " > " })
            .bind(values[i].clone());
        sql.push(")");
    }
    sql.push(")");
    Ok(())
}
