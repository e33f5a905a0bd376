//! MongoDB-style filters, identical on every channel: implicit equality,
//! `$eq $ne $gt $gte $lt $lte $in $nin $like $ilike $null $exists`, and
//! `$and $or $not`. Unknown fields and operators are validation errors.
//! Filters render straight into [`Sql`] with every value bound.

use crate::error::{Error, Result};
use crate::schema::{FieldSchema, FieldType, ModelSchema};
use crate::sql::{Dialect, Sql};
use crate::value::{coerce_non_null, describe, did_you_mean, SqlArray, SqlValue};
use serde_json::{Map, Value};

pub(crate) const FIELD_OPERATORS: [&str; 13] = [
    "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$like", "$ilike", "$null",
    "$exists", "$not",
];
pub(crate) const LOGICAL_OPERATORS: [&str; 3] = ["$and", "$or", "$not"];

/// How many conditions one filter may hold: every field name, operator and
/// `$and`/`$or`/`$not` counts once (the values of an `$in` list do not:
/// the list is one parameter, whatever its length). Beyond it the filter
/// is a validation error, well before SQLite's expression-depth limit.
pub const MAX_FILTER_CONDITIONS: usize = 500;

/// The longest `$like`/`$ilike` pattern, in bytes (SQLite refuses patterns
/// over 50,000 bytes; the limit is the same on both backends).
pub const MAX_LIKE_PATTERN_BYTES: usize = 10_000;

/// Appends the boolean SQL expression for `filter` (`1=1` when empty).
/// `filter` must be a JSON object (or null, meaning "everything"); its depth
/// is bounded by [`MAX_INPUT_DEPTH`](crate::MAX_INPUT_DEPTH), checked on entry.
pub(crate) fn render(sql: &mut Sql, model: &ModelSchema, filter: &Value) -> Result<()> {
    match filter {
        Value::Null => {
            sql.push("1=1");
            Ok(())
        }
        Value::Object(map) => {
            let conditions = conditions(filter, MAX_FILTER_CONDITIONS + 1);
            if conditions > MAX_FILTER_CONDITIONS {
                return Err(Error::validation(
                    model.name,
                    None,
                    format!(
                        "the filter holds more than {MAX_FILTER_CONDITIONS} conditions; \
                         match a list of values with one `$in` instead of many `$or` branches"
                    ),
                ));
            }
            render_object(sql, model, map)
        }
        other => Err(Error::validation(
            model.name,
            None,
            format!(
                "a filter must be an object such as {{\"email\": \"a@x.io\"}}, got {}",
                describe(other)
            ),
        )),
    }
}

/// The number of conditions in `filter` (field names, operators and
/// logical operators), counting up to `limit` at most. Depth is bounded on
/// node entry, so the recursion is too.
fn conditions(filter: &Value, limit: usize) -> usize {
    fn walk(v: &Value, n: &mut usize, limit: usize) {
        match v {
            Value::Object(map) => {
                for (key, value) in map {
                    *n += 1;
                    if *n >= limit {
                        return;
                    }
                    if key != "$in" && key != "$nin" {
                        walk(value, n, limit);
                    }
                }
            }
            Value::Array(items) => {
                for item in items {
                    if *n >= limit {
                        return;
                    }
                    walk(item, n, limit);
                }
            }
            _ => {}
        }
    }
    let mut n = 0;
    walk(filter, &mut n, limit);
    n
}

/// Whether a filter selects everything (`{}` or null).
pub(crate) fn is_empty(filter: &Value) -> bool {
    match filter {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

/// Whether `filter` matches every record, whatever the data: `{}`, and
/// anything that folds to "always true" (`{"$or": [{}]}`,
/// `{"id": {"$nin": []}}`, `$not` of something never true, `$null: false`
/// on a field that cannot be null, ...). Decided on meaning, not spelling,
/// so whole-table guards cannot be bypassed by rewriting `{}`. Unknown
/// parts count as "depends" (rendering reports them).
pub(crate) fn matches_everything(model: &ModelSchema, filter: &Value) -> bool {
    fold(model, filter, 0) == Truth::Always
}

/// A filter's value where it does not depend on the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Truth {
    Always,
    Never,
    Depends,
}

impl Truth {
    fn and(self, other: Truth) -> Truth {
        match (self, other) {
            (Truth::Never, _) | (_, Truth::Never) => Truth::Never,
            (Truth::Always, Truth::Always) => Truth::Always,
            _ => Truth::Depends,
        }
    }

    fn or(self, other: Truth) -> Truth {
        match (self, other) {
            (Truth::Always, _) | (_, Truth::Always) => Truth::Always,
            (Truth::Never, Truth::Never) => Truth::Never,
            _ => Truth::Depends,
        }
    }

    fn not(self) -> Truth {
        match self {
            Truth::Always => Truth::Never,
            Truth::Never => Truth::Always,
            Truth::Depends => Truth::Depends,
        }
    }
}

/// Deeper filters are not folded (they count as "depends").
const MAX_FOLD_DEPTH: usize = 64;

fn fold(model: &ModelSchema, filter: &Value, depth: usize) -> Truth {
    if depth > MAX_FOLD_DEPTH {
        return Truth::Depends;
    }
    match filter {
        Value::Null => Truth::Always,
        Value::Object(map) => map.iter().fold(Truth::Always, |t, (key, value)| {
            t.and(fold_key(model, key, value, depth))
        }),
        _ => Truth::Depends,
    }
}

fn fold_key(model: &ModelSchema, key: &str, value: &Value, depth: usize) -> Truth {
    let items = || value.as_array().filter(|a| !a.is_empty());
    match key {
        "$and" => items().map_or(Truth::Depends, |a| {
            a.iter()
                .fold(Truth::Always, |t, f| t.and(fold(model, f, depth + 1)))
        }),
        "$or" => items().map_or(Truth::Depends, |a| {
            a.iter()
                .fold(Truth::Never, |t, f| t.or(fold(model, f, depth + 1)))
        }),
        "$not" if value.is_object() => fold(model, value, depth + 1).not(),
        _ => match model.field(key) {
            Some(field) if is_operator_object(value) => fold_field(field, value, depth + 1),
            _ => Truth::Depends,
        },
    }
}

fn fold_field(field: &FieldSchema, ops: &Value, depth: usize) -> Truth {
    let Value::Object(ops) = ops else {
        return Truth::Depends;
    };
    if depth > MAX_FOLD_DEPTH {
        return Truth::Depends;
    }
    let never_null = !field.nullable;
    ops.iter().fold(Truth::Always, |t, (op, operand)| {
        t.and(match (op.as_str(), operand) {
            ("$in", Value::Array(a)) if a.is_empty() && field.ty != FieldType::Json => Truth::Never,
            ("$nin", Value::Array(a)) if a.is_empty() && field.ty != FieldType::Json => {
                Truth::Always
            }
            ("$null", Value::Bool(b)) if never_null => match b {
                true => Truth::Never,
                false => Truth::Always,
            },
            ("$exists", Value::Bool(b)) if never_null => match b {
                true => Truth::Always,
                false => Truth::Never,
            },
            ("$like" | "$ilike", Value::String(p))
                if never_null
                    && field.ty == FieldType::String
                    && !p.is_empty()
                    && p.chars().all(|c| c == '%') =>
            {
                Truth::Always
            }
            ("$not", inner) if is_operator_object(inner) => {
                fold_field(field, inner, depth + 1).not()
            }
            _ => Truth::Depends,
        })
    })
}

fn render_object(sql: &mut Sql, model: &ModelSchema, map: &Map<String, Value>) -> Result<()> {
    if map.is_empty() {
        sql.push("1=1");
        return Ok(());
    }
    sql.push("(");
    let mut terms = sql.separated(" AND ");
    for (key, value) in map {
        let sql = terms.item();
        match key.as_str() {
            "$and" | "$or" => {
                let items = value.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
                    Error::validation(model.name, None, format!("`{key}` takes a non-empty array of filters"))
                })?;
                let joiner = if key == "$and" { " AND " } else { " OR " };
                sql.push("(");
                let mut alternatives = sql.separated(joiner);
                for item in items {
                    match item {
                        Value::Object(m) => render_object(alternatives.item(), model, m)?,
                        other => {
                            return Err(Error::validation(
                                model.name,
                                None,
                                format!("each item of `{key}` must be a filter object, got {}", describe(other)),
                            ))
                        }
                    }
                }
                sql.push(")");
            }
            "$not" => {
                let Value::Object(m) = value else {
                    return Err(Error::validation(
                        model.name,
                        None,
                        format!("`$not` takes a filter object, got {}", describe(value)),
                    ));
                };
                sql.push("NOT ");
                render_object(sql, model, m)?;
            }
            k if k.starts_with('$') => {
                return Err(Error::validation(
                    model.name,
                    None,
                    format!(
                        "unknown filter operator `{}` at the top level{}; use a field name or one of $and, $or, $not",
                        Error::echo(k),
                        did_you_mean(k, LOGICAL_OPERATORS)
                    ),
                ))
            }
            name => {
                let field = field(model, name)?;
                render_field(sql, model, field, value)?;
            }
        }
    }
    sql.push(")");
    Ok(())
}

/// Looks a field up by its JSON name, with a "did you mean" on failure.
pub(crate) fn field(model: &ModelSchema, name: &str) -> Result<&'static FieldSchema> {
    model.field(name).ok_or_else(|| {
        Error::validation(
            model.name,
            Some(name),
            format!(
                "{} has no field `{}`{}; its fields are: {}",
                model.name,
                Error::echo(name),
                did_you_mean(name, model.fields.iter().map(|f| f.name)),
                model
                    .fields
                    .iter()
                    .map(|f| f.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })
}

fn is_operator_object(v: &Value) -> bool {
    matches!(v, Value::Object(m) if !m.is_empty() && m.keys().all(|k| k.starts_with('$')))
}

fn render_field(
    sql: &mut Sql,
    model: &ModelSchema,
    field: &FieldSchema,
    value: &Value,
) -> Result<()> {
    if !is_operator_object(value) {
        return compare(sql, model, field, "$eq", value);
    }
    let Value::Object(ops) = value else {
        unreachable!()
    };
    sql.push("(");
    let mut terms = sql.separated(" AND ");
    for (op, operand) in ops {
        let sql = terms.item();
        match op.as_str() {
            "$eq" | "$ne" | "$gt" | "$gte" | "$lt" | "$lte" => {
                compare(sql, model, field, op, operand)?
            }
            "$in" | "$nin" => in_list(sql, model, field, op == "$nin", operand)?,
            "$like" | "$ilike" => like(sql, model, field, op == "$ilike", operand)?,
            "$null" | "$exists" => {
                let b = operand.as_bool().ok_or_else(|| {
                    Error::invalid_field(
                        model.name,
                        field.name,
                        format!("`{op}` takes true or false, got {}", describe(operand)),
                    )
                })?;
                // Every column exists in SQL: `$exists: true` means "has a value".
                let is_null = if op == "$null" { b } else { !b };
                sql.ident(field.column)
                    .push(if is_null { " IS NULL" } else { " IS NOT NULL" });
            }
            "$not" => {
                if !is_operator_object(operand) {
                    return Err(Error::invalid_field(
                        model.name,
                        field.name,
                        "`$not` takes an operator object such as {\"$gt\": 5}".to_string(),
                    ));
                }
                sql.push("NOT ");
                render_field(sql, model, field, operand)?;
            }
            other => {
                return Err(Error::invalid_field(
                    model.name,
                    field.name,
                    format!(
                        "unknown filter operator `{}`{}; supported: {}",
                        Error::echo(other),
                        did_you_mean(other, FIELD_OPERATORS),
                        FIELD_OPERATORS.join(" ")
                    ),
                ))
            }
        }
    }
    sql.push(")");
    Ok(())
}

fn comparable(model: &ModelSchema, field: &FieldSchema, op: &str) -> Result<()> {
    if field.ty == FieldType::Json {
        return Err(Error::invalid_field(
            model.name,
            field.name,
            format!("JSON fields can only be filtered with $null or $exists, not `{op}`"),
        ));
    }
    Ok(())
}

fn compare(
    sql: &mut Sql,
    model: &ModelSchema,
    field: &FieldSchema,
    op: &str,
    operand: &Value,
) -> Result<()> {
    comparable(model, field, op)?;
    if operand.is_null() {
        return match op {
            "$eq" => {
                sql.ident(field.column).push(" IS NULL");
                Ok(())
            }
            "$ne" => {
                sql.ident(field.column).push(" IS NOT NULL");
                Ok(())
            }
            _ => Err(Error::invalid_field(
                model.name,
                field.name,
                format!("`{op}` cannot compare with null; use $null"),
            )),
        };
    }
    let value = coerce_non_null(model, field, field.ty, operand)?;
    sql.ident(field.column);
    let op_sql = match op {
        "$eq" => " = ",
        "$ne" => sql.dialect().distinct_from(),
        "$gt" => " > ",
        "$gte" => " >= ",
        "$lt" => " < ",
        _ => " <= ",
    };
    sql.push(op_sql).bind(value);
    Ok(())
}

fn in_list(
    sql: &mut Sql,
    model: &ModelSchema,
    field: &FieldSchema,
    negate: bool,
    operand: &Value,
) -> Result<()> {
    let op = if negate { "$nin" } else { "$in" };
    comparable(model, field, op)?;
    let items = operand.as_array().ok_or_else(|| {
        Error::invalid_field(
            model.name,
            field.name,
            format!("`{op}` takes an array of values, got {}", describe(operand)),
        )
    })?;
    let mut values = Vec::with_capacity(items.len());
    let mut has_null = false;
    for item in items {
        if item.is_null() {
            has_null = true;
        } else {
            values.push(coerce_non_null(model, field, field.ty, item)?);
        }
    }
    sql.push("(");
    if values.is_empty() {
        sql.push(if negate { "1=1" } else { "1=0" });
    } else {
        // The whole list is one parameter, so its length meets no
        // parameter limit (SQLite's 32,766, PostgreSQL's 65,535).
        let array = SqlValue::Array(SqlArray::collect(field.ty, values));
        sql.ident(field.column);
        match sql.dialect() {
            Dialect::Postgres => {
                sql.push(if negate { " <> ALL(" } else { " = ANY(" })
                    .bind(array)
                    .push(")");
            }
            Dialect::Sqlite => {
                let element = if field.ty == FieldType::Bytes {
                    "unhex(value)"
                } else {
                    "value"
                };
                sql.push(if negate {
                    " NOT IN (SELECT "
                } else {
                    " IN (SELECT "
                })
                .push(element)
                .push(" FROM json_each(")
                .bind(array)
                .push("))");
            }
        }
    }
    match (negate, has_null) {
        (false, true) => {
            sql.push(" OR ").ident(field.column).push(" IS NULL");
        }
        (true, true) => {
            sql.push(" AND ").ident(field.column).push(" IS NOT NULL");
        }
        (true, false) => {
            // Like `$ne`, `$nin` matches records where the field has no value.
            sql.push(" OR ").ident(field.column).push(" IS NULL");
        }
        (false, false) => {}
    }
    sql.push(")");
    Ok(())
}

fn like(
    sql: &mut Sql,
    model: &ModelSchema,
    field: &FieldSchema,
    insensitive: bool,
    operand: &Value,
) -> Result<()> {
    let op = if insensitive { "$ilike" } else { "$like" };
    if field.ty != FieldType::String {
        return Err(Error::invalid_field(
            model.name,
            field.name,
            format!("`{op}` applies to string fields only"),
        ));
    }
    let pattern = operand.as_str().ok_or_else(|| {
        Error::invalid_field(
            model.name,
            field.name,
            format!(
                "`{op}` takes a pattern string such as \"%@x.io\", got {}",
                describe(operand)
            ),
        )
    })?;
    if pattern.len() > MAX_LIKE_PATTERN_BYTES {
        return Err(Error::invalid_field(
            model.name,
            field.name,
            format!(
                "the `{op}` pattern is {} bytes long, at most {MAX_LIKE_PATTERN_BYTES} are allowed",
                pattern.len()
            ),
        ));
    }
    let pattern = SqlValue::Text(pattern.to_string());
    match (sql.dialect(), insensitive) {
        (_, false) => {
            sql.ident(field.column).push(" LIKE ").bind(pattern);
        }
        (Dialect::Postgres, true) => {
            sql.ident(field.column).push(" ILIKE ").bind(pattern);
        }
        (Dialect::Sqlite, true) => {
            // Connections run with case_sensitive_like on, so fold case here.
            sql.push("lower(")
                .ident(field.column)
                .push(") LIKE lower(")
                .bind(pattern)
                .push(")");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The SQL each filter renders, per dialect, without a database.

    use super::render;
    use crate::nodes::fixtures::{show, NOTE, USER};
    use crate::schema::ModelSchema;
    use crate::sql::{Dialect, Sql};
    use serde_json::{json, Value};

    /// `filter` rendered on SQLite and on PostgreSQL (or the error).
    fn both(model: &ModelSchema, filter: Value) -> String {
        [Dialect::Sqlite, Dialect::Postgres]
            .map(|d| {
                let mut sql = Sql::new(d);
                let out = match render(&mut sql, model, &filter) {
                    Ok(()) => show(&sql),
                    Err(e) => format!("error[{}]: {}", e.code(), e.message()),
                };
                format!("-- {d:?}\n{out}\n")
            })
            .concat()
    }

    #[test]
    fn empty_filters_select_everything() {
        insta::assert_snapshot!(both(&USER, Value::Null) + &both(&USER, json!({})));
    }

    #[test]
    fn implicit_equality_and_null() {
        insta::assert_snapshot!(both(
            &USER,
            json!({"email": "a@x.io", "full_name": null, "active": true})
        ));
    }

    #[test]
    fn comparison_operators() {
        insta::assert_snapshot!(both(
            &USER,
            json!({"age": {"$gt": 1, "$gte": 2, "$lt": 90, "$lte": 99}, "email": {"$ne": "a@x.io"}, "full_name": {"$eq": null}})
        ));
    }

    #[test]
    fn in_and_nin_with_and_without_null() {
        insta::assert_snapshot!(
            both(&USER, json!({"age": {"$in": [1, 2, 3]}}))
                + &both(&USER, json!({"full_name": {"$in": ["a", null]}}))
                + &both(&USER, json!({"age": {"$nin": [4, 5]}}))
                + &both(&USER, json!({"full_name": {"$nin": [null, "b"]}}))
                + &both(&USER, json!({"age": {"$in": []}, "email": {"$nin": []}}))
        );
    }

    #[test]
    fn null_and_exists() {
        insta::assert_snapshot!(both(
            &NOTE,
            json!({"body": {"$null": true}, "deleted_at": {"$exists": true}, "tags": {"$null": false}})
        ));
    }

    #[test]
    fn like_and_ilike_differ_by_dialect() {
        insta::assert_snapshot!(both(
            &USER,
            json!({"email": {"$like": "%@x.io"}, "full_name": {"$ilike": "ann%"}})
        ));
    }

    #[test]
    fn logical_operators_nest() {
        insta::assert_snapshot!(both(
            &USER,
            json!({
                "$or": [{"age": 1}, {"$and": [{"active": true}, {"email": {"$like": "%@x.io"}}]}],
                "$not": {"full_name": null},
                "age": {"$not": {"$gte": 65, "$lt": 70}}
            })
        ));
    }

    #[test]
    fn columns_are_the_schema_columns() {
        insta::assert_snapshot!(both(&NOTE, json!({"body": "b", "id": {"$in": [1, 2]}})));
    }

    #[test]
    fn mistakes_are_validation_errors() {
        insta::assert_snapshot!(
            both(&USER, json!({"emial": "a"}))
                + &both(&USER, json!({"age": {"$gtt": 1}}))
                + &both(&USER, json!({"$nor": []}))
                + &both(&USER, json!({"$or": []}))
                + &both(&USER, json!({"age": "old"}))
                + &both(&NOTE, json!({"tags": {"$eq": 1}}))
                + &both(&USER, json!([]))
        );
    }
}
