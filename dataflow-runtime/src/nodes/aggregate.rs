//! Aggregate, the twelfth node: `GROUP BY` with named aggregates, compiled
//! to one statement.
//!
//! ```json
//! {"filter": {"status": "paid"}, "group_by": ["user_id"],
//!  "aggregates": {"n": {"$count": "*"}, "total": {"$sum": "amount"}},
//!  "having": {"n": {"$gte": 2}}, "order_by": ["-total"], "limit": 10}
//! ```
//!
//! Every identifier comes from the schema (group columns, aggregated
//! columns) or from a fixed pool of aliases (`agg_0`, `agg_1`, ...); the
//! caller's aggregate names only name output keys. Values are bound.
//! Results are typed the same on both backends: counts and sums of integer
//! fields are integers, averages and sums of float fields are numbers,
//! `$min`/`$max` have the field's type. `having` is the filter grammar over
//! the aggregate names, rendered on the aggregate expressions (PostgreSQL
//! cannot name output columns in `HAVING`).

use super::cursor::direction_sql;
use super::params::{Param, Params};
use super::read::{DEFAULT_LIMIT, MAX_LIMIT};
use super::run::Ctx;
use super::schema as s;
use crate::backend::Conn;
use crate::error::{Error, Result};
use crate::filter;
use crate::schema::{FieldSchema, FieldType};
use crate::sql::{Dialect, Sql};
use crate::value::{cell_to_json, coerce_non_null, describe, did_you_mean, Cell, SqlValue};
use serde_json::{Map, Value};

/// The most aggregates one call may name.
pub(crate) const MAX_AGGREGATES: usize = 32;

/// The aggregate functions, as the input names them.
pub(crate) const FUNCTIONS: [&str; 6] =
    ["$count", "$count_distinct", "$sum", "$avg", "$min", "$max"];

/// Output column aliases: compiled identifiers, never the caller's names.
const ALIASES: [&str; MAX_AGGREGATES] = [
    "agg_0", "agg_1", "agg_2", "agg_3", "agg_4", "agg_5", "agg_6", "agg_7", "agg_8", "agg_9",
    "agg_10", "agg_11", "agg_12", "agg_13", "agg_14", "agg_15", "agg_16", "agg_17", "agg_18",
    "agg_19", "agg_20", "agg_21", "agg_22", "agg_23", "agg_24", "agg_25", "agg_26", "agg_27",
    "agg_28", "agg_29", "agg_30", "agg_31",
];

/// The longest `$in`/`$nin` list in `having` (it compares a handful of
/// groups' aggregates, not a table's keys).
const MAX_HAVING_LIST: usize = 1_000;

/// Aggregate: groups of the records a filter matches, with named aggregates.
pub(super) const AGGREGATE: &[Param] = &[
    Param::optional("filter", s::filter),
    Param::optional("group_by", s::group_by),
    Param::optional("aggregates", s::aggregates),
    Param::optional("having", s::having),
    Param::optional("order_by", s::aggregate_order_by),
    Param::optional("limit", s::limit),
    Param::optional("offset", s::offset),
    Param::optional("include_deleted", s::include_deleted),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Func {
    Count,
    CountDistinct,
    Sum,
    Avg,
    Min,
    Max,
}

impl Func {
    /// The function an input name (one of [`FUNCTIONS`]) means.
    pub(super) fn named(name: &str) -> Option<Func> {
        Some(match name {
            "$count" => Func::Count,
            "$count_distinct" => Func::CountDistinct,
            "$sum" => Func::Sum,
            "$avg" => Func::Avg,
            "$min" => Func::Min,
            "$max" => Func::Max,
            _ => return None,
        })
    }
}

/// Whether `func` can aggregate a field of type `ty` (the same answer on
/// both backends), and why not. The input schema lists what it accepts.
pub(super) fn accepts(func: Func, ty: FieldType) -> std::result::Result<(), &'static str> {
    let numeric = is_integer(ty) || is_float(ty);
    match func {
        Func::Count => Ok(()),
        Func::CountDistinct if ty == FieldType::Json => {
            Err("JSON values have no equality both backends agree on")
        }
        Func::CountDistinct => Ok(()),
        Func::Sum | Func::Avg if numeric => Ok(()),
        Func::Sum | Func::Avg => Err("it takes a numeric field"),
        Func::Min | Func::Max
            if numeric
                || matches!(
                    ty,
                    FieldType::String | FieldType::DateTime | FieldType::Date
                ) =>
        {
            Ok(())
        }
        Func::Min | Func::Max => Err("it takes a number, string, date or timestamp field"),
    }
}

/// What an aggregate's values are, in JSON.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Integer,
    Number,
    /// The field's own type (`$min`, `$max`).
    Field(&'static FieldSchema),
}

struct Aggregate<'p> {
    name: &'p str,
    func: Func,
    /// `None` for `$count: "*"`.
    field: Option<&'static FieldSchema>,
    kind: Kind,
    alias: &'static str,
}

fn is_integer(ty: FieldType) -> bool {
    matches!(ty, FieldType::I16 | FieldType::I32 | FieldType::I64)
}

fn is_float(ty: FieldType) -> bool {
    matches!(ty, FieldType::F32 | FieldType::F64)
}

impl Aggregate<'_> {
    /// The SQL expression, typed alike on both backends.
    fn render(&self, sql: &mut Sql) {
        let pg = sql.dialect() == Dialect::Postgres;
        let column = self.field.map(|f| f.column);
        let (open, close) = match (self.func, pg) {
            // PostgreSQL sums integers as NUMERIC and averages as NUMERIC:
            // cast back so the JSON is the same as SQLite's.
            (Func::Sum, true) if matches!(self.kind, Kind::Integer) => {
                ("CAST(SUM(", ") AS BIGINT)")
            }
            (Func::Sum, true) => ("CAST(SUM(", ") AS DOUBLE PRECISION)"),
            (Func::Avg, true) => ("CAST(AVG(", ") AS DOUBLE PRECISION)"),
            (Func::Sum, false) => ("SUM(", ")"),
            (Func::Avg, false) => ("AVG(", ")"),
            (Func::Count, _) => ("COUNT(", ")"),
            (Func::CountDistinct, _) => ("COUNT(DISTINCT ", ")"),
            (Func::Min, _) => ("MIN(", ")"),
            (Func::Max, _) => ("MAX(", ")"),
        };
        sql.push(open);
        match column {
            Some(c) => sql.ident(c),
            None => sql.push("*"),
        };
        sql.push(close);
    }

    /// A result cell as JSON.
    fn json(&self, p: &Params, cell: Cell) -> Result<Value> {
        Ok(match (self.kind, cell) {
            (_, Cell::Null) => Value::Null,
            (Kind::Integer, Cell::I64(n)) => n.into(),
            (Kind::Number, Cell::F64(f)) => Value::from(f),
            (Kind::Number, Cell::I64(n)) => Value::from(n as f64),
            (Kind::Field(f), cell) => cell_to_json(p.model, f, cell)?,
            (_, other) => {
                return Err(Error::internal(format!(
                    "{}: aggregate `{}` returned {other:?}",
                    p.model.name, self.name
                )))
            }
        })
    }

    /// A `having` operand, as the aggregate's values are typed.
    fn operand(&self, p: &Params, v: &Value) -> Result<SqlValue> {
        match self.kind {
            Kind::Field(f) => coerce_non_null(p.model, f, f.ty, v)
                .map_err(|_| self.bad_operand(p, v, &format!("a {:?} value", f.ty))),
            Kind::Integer => crate::value::as_integer(v)
                .map(SqlValue::I64)
                .ok_or_else(|| self.bad_operand(p, v, "an integer")),
            Kind::Number => v
                .as_f64()
                .map(SqlValue::F64)
                .ok_or_else(|| self.bad_operand(p, v, "a number")),
        }
    }

    fn bad_operand(&self, p: &Params, v: &Value, want: &str) -> Error {
        p.error(
            Some("having"),
            format!(
                "`having.{}` compares with {want}, got {}",
                self.name,
                describe(v)
            ),
        )
    }
}

/// `aggregates`: each name maps to one `{"$fn": "field"}`.
fn aggregates<'p>(p: &Params<'p>) -> Result<Vec<Aggregate<'p>>> {
    let m = p.model;
    let Some(map) = p.object("aggregates")? else {
        return Ok(Vec::new());
    };
    if map.len() > MAX_AGGREGATES {
        return Err(p.error(
            Some("aggregates"),
            format!(
                "{} aggregates asked for; at most {MAX_AGGREGATES} per call",
                map.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(map.len());
    for ((name, spec), alias) in map.iter().zip(ALIASES) {
        let bad = |msg: String| {
            p.error(
                Some("aggregates"),
                format!("`aggregates.{}`: {msg}", Error::echo(name)),
            )
        };
        if name.is_empty() || name.starts_with('$') {
            return Err(bad(
                "an aggregate name must be a plain name such as \"total\"".into(),
            ));
        }
        let (func_name, arg) = match spec {
            Value::Object(o) if o.len() == 1 => o.iter().next().expect("one entry"),
            other => {
                return Err(bad(format!(
                    "must be one function such as {{\"$sum\": \"amount\"}}, got {}",
                    describe(other)
                )))
            }
        };
        let Some(func) = Func::named(func_name) else {
            return Err(bad(format!(
                "unknown function `{}`{}; supported: {}",
                Error::echo(func_name),
                did_you_mean(func_name, FUNCTIONS),
                FUNCTIONS.join(" ")
            )));
        };
        let field = match arg {
            Value::String(s) if s == "*" && func == Func::Count => None,
            Value::String(s) => Some(filter::field(m, s).map_err(|e| e.for_param("aggregates"))?),
            other => {
                return Err(bad(format!(
                    "`{func_name}` takes a field name{}, got {}",
                    if func == Func::Count { " or \"*\"" } else { "" },
                    describe(other)
                )))
            }
        };
        let kind = match field {
            None => Kind::Integer,
            Some(f) => {
                if let Err(why) = accepts(func, f.ty) {
                    return Err(bad(format!(
                        "`{func_name}` cannot aggregate {}.{} ({:?}): {why}",
                        m.name, f.name, f.ty
                    )));
                }
                match func {
                    Func::Count | Func::CountDistinct => Kind::Integer,
                    Func::Sum if is_integer(f.ty) => Kind::Integer,
                    Func::Sum | Func::Avg => Kind::Number,
                    Func::Min | Func::Max => Kind::Field(f),
                }
            }
        };
        out.push(Aggregate {
            name,
            func,
            field,
            kind,
            alias,
        });
    }
    Ok(out)
}

/// `group_by`: a field name or an array of them, each once.
fn group_by(p: &Params) -> Result<Vec<&'static FieldSchema>> {
    let names = p.names("group_by", "[\"region\", \"user_id\"]")?;
    let mut out: Vec<&'static FieldSchema> = Vec::with_capacity(names.len());
    for name in names {
        let f = filter::field(p.model, name).map_err(|e| e.for_param("group_by"))?;
        if f.ty == FieldType::Json {
            return Err(p.error(
                Some("group_by"),
                format!("{}.{name} is JSON and cannot be grouped by", p.model.name),
            ));
        }
        if out.iter().any(|g| g.name == f.name) {
            return Err(p.error(
                Some("group_by"),
                format!("`{name}` appears twice in `group_by`"),
            ));
        }
        out.push(f);
    }
    Ok(out)
}

/// One `order_by` entry: a group field or an aggregate.
enum Key<'a, 'p> {
    Group(&'static FieldSchema),
    Agg(&'a Aggregate<'p>),
}

fn order_by<'a, 'p>(
    p: &Params,
    groups: &[&'static FieldSchema],
    aggs: &'a [Aggregate<'p>],
) -> Result<Vec<(Key<'a, 'p>, bool)>> {
    let items = p.names("order_by", "[\"-total\", \"user_id\"]")?;
    let mut out = Vec::with_capacity(items.len() + groups.len());
    let mut seen: Vec<&str> = Vec::new();
    for item in items {
        let (desc, name) = Params::direction(item);
        if seen.contains(&name) {
            return Err(p.error(
                Some("order_by"),
                format!("`{}` appears twice in `order_by`", Error::echo(name)),
            ));
        }
        seen.push(name);
        let key = if let Some(a) = aggs.iter().find(|a| a.name == name) {
            Key::Agg(a)
        } else if let Some(g) = groups.iter().find(|g| g.name == name) {
            Key::Group(g)
        } else {
            let names = groups
                .iter()
                .map(|g| g.name)
                .chain(aggs.iter().map(|a| a.name));
            return Err(p.error(
                Some("order_by"),
                format!(
                    "`{}` is neither a `group_by` field nor an aggregate name{}; order by one of: {}",
                    Error::echo(name),
                    did_you_mean(name, names.clone()),
                    names.collect::<Vec<_>>().join(", ")
                ),
            ));
        };
        out.push((key, desc));
    }
    // The group fields break ties, so pages are stable.
    for g in groups {
        if !seen.contains(&g.name) {
            out.push((Key::Group(g), false));
        }
    }
    Ok(out)
}

/// `having`: the filter grammar over aggregate names.
fn having(sql: &mut Sql, p: &Params, aggs: &[Aggregate], map: &Map<String, Value>) -> Result<()> {
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
                    p.error(
                        Some("having"),
                        format!("`{key}` takes a non-empty array of conditions"),
                    )
                })?;
                sql.push("(");
                let mut alternatives = sql.separated(if key == "$and" { " AND " } else { " OR " });
                for item in items {
                    let Value::Object(m) = item else {
                        return Err(p.error(
                            Some("having"),
                            format!(
                                "each item of `{key}` must be an object, got {}",
                                describe(item)
                            ),
                        ));
                    };
                    having(alternatives.item(), p, aggs, m)?;
                }
                sql.push(")");
            }
            "$not" => {
                let Value::Object(m) = value else {
                    return Err(p.error(
                        Some("having"),
                        format!("`$not` takes an object, got {}", describe(value)),
                    ));
                };
                sql.push("NOT ");
                having(sql, p, aggs, m)?;
            }
            name => {
                let agg = aggs.iter().find(|a| a.name == name).ok_or_else(|| {
                    p.error(
                        Some("having"),
                        format!(
                            "`having` names aggregates, and `{}` is none{}; the aggregates are: {}",
                            Error::echo(name),
                            did_you_mean(name, aggs.iter().map(|a| a.name)),
                            aggs.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
                        ),
                    )
                })?;
                condition(sql, p, agg, value)?;
            }
        }
    }
    sql.push(")");
    Ok(())
}

/// One aggregate's condition: a value (equality) or an operator object.
fn condition(sql: &mut Sql, p: &Params, agg: &Aggregate, value: &Value) -> Result<()> {
    let ops = match value {
        Value::Object(ops) if !ops.is_empty() && ops.keys().all(|k| k.starts_with('$')) => ops,
        _ => return compare(sql, p, agg, "$eq", value),
    };
    sql.push("(");
    let mut terms = sql.separated(" AND ");
    for (op, operand) in ops {
        let sql = terms.item();
        match op.as_str() {
            "$eq" | "$ne" | "$gt" | "$gte" | "$lt" | "$lte" => compare(sql, p, agg, op, operand)?,
            "$in" | "$nin" => {
                let items = operand
                    .as_array()
                    .filter(|a| a.len() <= MAX_HAVING_LIST)
                    .ok_or_else(|| {
                        p.error(
                            Some("having"),
                            format!(
                                "`having.{}.{op}` takes an array of at most {MAX_HAVING_LIST} values",
                                agg.name
                            ),
                        )
                    })?;
                let values = items
                    .iter()
                    .map(|v| agg.operand(p, v))
                    .collect::<Result<Vec<_>>>()?;
                let negate = op == "$nin";
                if values.is_empty() {
                    sql.push(if negate { "1=1" } else { "1=0" });
                } else {
                    agg.render(sql);
                    sql.push(if negate { " NOT IN " } else { " IN " })
                        .in_list(values);
                }
            }
            "$null" => {
                let b = operand.as_bool().ok_or_else(|| {
                    p.error(
                        Some("having"),
                        format!("`having.{}.$null` takes true or false", agg.name),
                    )
                })?;
                agg.render(sql);
                sql.push(if b { " IS NULL" } else { " IS NOT NULL" });
            }
            "$not" => {
                sql.push("NOT ");
                condition(sql, p, agg, operand)?;
            }
            other => {
                const OPS: [&str; 10] = [
                    "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$null", "$not",
                ];
                return Err(p.error(
                    Some("having"),
                    format!(
                        "unknown operator `{}` in `having.{}`{}; supported: {}",
                        Error::echo(other),
                        agg.name,
                        did_you_mean(other, OPS),
                        OPS.join(" ")
                    ),
                ));
            }
        }
    }
    sql.push(")");
    Ok(())
}

fn compare(sql: &mut Sql, p: &Params, agg: &Aggregate, op: &str, operand: &Value) -> Result<()> {
    if operand.is_null() {
        let test = match op {
            "$eq" => " IS NULL",
            "$ne" => " IS NOT NULL",
            _ => {
                return Err(p.error(
                    Some("having"),
                    format!(
                        "`having.{}.{op}` cannot compare with null; use $null",
                        agg.name
                    ),
                ))
            }
        };
        agg.render(sql);
        sql.push(test);
        return Ok(());
    }
    let value = agg.operand(p, operand)?;
    agg.render(sql);
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

pub(super) fn aggregate<C: Conn>(conn: &mut C, ctx: &Ctx, params: &Value) -> Result<Value> {
    let p = Params::new(ctx.model, ctx.node, params, AGGREGATE)?;
    let m = ctx.model;
    let groups = group_by(&p)?;
    let aggs = aggregates(&p)?;
    if groups.is_empty() && aggs.is_empty() {
        return Err(p.error(
            Some("aggregates"),
            "give `aggregates` (such as {\"n\": {\"$count\": \"*\"}}), `group_by`, or both",
        ));
    }
    if let Some(a) = aggs
        .iter()
        .find(|a| groups.iter().any(|g| g.name == a.name))
    {
        return Err(p.error(
            Some("aggregates"),
            format!(
                "the aggregate `{}` has the name of a `group_by` field; each output key names one thing",
                a.name
            ),
        ));
    }
    let limit = p.u64("limit", DEFAULT_LIMIT, MAX_LIMIT)?;
    let offset = p.u64("offset", 0, i64::MAX as u64)?;
    let order = order_by(&p, &groups, &aggs)?;
    let mut sql = Sql::new(C::DIALECT);
    sql.push("SELECT ");
    {
        let mut list = sql.separated(", ");
        for g in &groups {
            list.item().ident(g.column);
        }
        for a in &aggs {
            let item = list.item();
            a.render(item);
            item.push(" AS ").ident(a.alias);
        }
    }
    sql.push(" FROM ").ident(m.table).push(" WHERE ");
    filter::render(&mut sql, m, p.filter("filter")?).map_err(|e| e.for_param("filter"))?;
    ctx.scope(&mut sql, p.bool("include_deleted")?);
    if !groups.is_empty() {
        sql.push(" GROUP BY ");
        let mut list = sql.separated(", ");
        for g in &groups {
            list.item().ident(g.column);
        }
    }
    if let Some(h) = p.object("having")? {
        if !h.is_empty() {
            sql.push(" HAVING ");
            having(&mut sql, &p, &aggs, h)?;
        }
    }
    if !order.is_empty() {
        sql.push(" ORDER BY ");
        let mut list = sql.separated(", ");
        for (key, desc) in &order {
            let (item, nullable) = match key {
                Key::Group(g) => (list.item().ident(g.column), g.nullable),
                // Counts are never NULL; the others are NULL over no values.
                Key::Agg(a) => (
                    list.item().ident(a.alias),
                    !matches!(a.func, Func::Count | Func::CountDistinct),
                ),
            };
            item.push(direction_sql(*desc, nullable));
        }
    }
    sql.push(&format!(" LIMIT {limit}"));
    if offset > 0 {
        sql.push(&format!(" OFFSET {offset}"));
    }
    let rows = ctx.query(conn, &sql)?;
    let mut out_groups = Vec::with_capacity(rows.len());
    for row in rows {
        let mut cells = row.into_iter();
        let mut group = Map::new();
        for g in &groups {
            let cell = cells.next().unwrap_or(Cell::Null);
            group.insert(g.name.to_string(), cell_to_json(m, g, cell)?);
        }
        for a in &aggs {
            let cell = cells.next().unwrap_or(Cell::Null);
            group.insert(a.name.to_string(), a.json(&p, cell)?);
        }
        out_groups.push(Value::Object(group));
    }
    let mut out = Map::new();
    out.insert("count".into(), out_groups.len().into());
    out.insert("groups".into(), Value::Array(out_groups));
    Ok(Value::Object(out))
}
