//! JSON Schemas (draft 2020-12) of node inputs, generated from the model
//! schema. HTTP, CLI and MCP publish these, so they match what `run` accepts.

use super::read::{DEFAULT_LIMIT, MAX_LIMIT};
use super::row::DEFAULT_BATCH;
use super::{Input, Op};
use crate::filter::{FIELD_OPERATORS, LOGICAL_OPERATORS};
use crate::schema::{FieldSchema, FieldType, FieldTypeExt, Generated, ModelSchema};
use serde_json::{json, Map, Value};

fn nullable(f: &FieldSchema, mut s: Value) -> Value {
    if f.nullable {
        s = json!({"anyOf": [s, {"type": "null"}]});
    }
    s
}

fn field_schema(f: &FieldSchema) -> Value {
    let mut s = f.ty.json_schema();
    let indexed = (f.ty == FieldType::String && crate::value::is_indexed(f))
        .then_some(crate::MAX_INDEXED_TEXT_CHARS as u32);
    let max_length = match (f.max_length, indexed) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let (Some(n), Value::Object(m)) = (max_length, &mut s) {
        m.insert("maxLength".into(), n.into());
    }
    if let (Some(d), Value::Object(m)) = (f.default, &mut s) {
        m.insert("default".into(), d.to_json());
    }
    nullable(f, s)
}

/// The record fields a Create accepts, and which it requires.
fn record_schema(m: &ModelSchema) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    for f in m
        .fields
        .iter()
        .filter(|f| f.writable() || f.generated == Generated::AutoIncrement)
    {
        props.insert(f.name.into(), field_schema(f));
        if f.required_on_create() {
            required.push(f.name);
        }
    }
    json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
}

/// The fields an Update may change (never the primary key).
fn changes_schema(m: &ModelSchema) -> Value {
    let props: Map<String, Value> = m
        .fields
        .iter()
        .filter(|f| f.writable() && !f.primary_key)
        .map(|f| (f.name.to_string(), field_schema(f)))
        .collect();
    json!({"type": "object", "properties": props, "minProperties": 1, "additionalProperties": false})
}

fn filter_schema(m: &ModelSchema) -> Value {
    let mut props = Map::new();
    for f in m.fields {
        let ops: Map<String, Value> = FIELD_OPERATORS
            .iter()
            .map(|o| (o.to_string(), json!({})))
            .collect();
        props.insert(
            f.name.into(),
            json!({"anyOf": [field_schema(f), {"type": "object", "properties": ops, "additionalProperties": false}]}),
        );
    }
    for op in LOGICAL_OPERATORS {
        props.insert(
            op.into(),
            if op == "$not" {
                json!({"type": "object"})
            } else {
                json!({"type": "array", "items": {"type": "object"}})
            },
        );
    }
    json!({
        "type": "object",
        "description": format!("MongoDB-style filter on {} fields: implicit equality, {} and {}", m.name, FIELD_OPERATORS.join(" "), LOGICAL_OPERATORS.join(" ")),
        "properties": props,
        "additionalProperties": false
    })
}

/// The JSON Schema of the input of `{Model}{Op}Node`: Create takes the
/// record itself, every other op the object its parameter table describes.
pub fn input_schema(m: &ModelSchema, op: Op) -> Value {
    let mut schema = match super::input(op) {
        Input::Record => record_schema(m),
        Input::Params(params) => {
            let params = || params.iter().filter(|p| (p.applies)(m));
            let props: Map<String, Value> = params()
                .map(|p| (p.name.to_string(), (p.schema)(m)))
                .collect();
            let required: Vec<&str> = params().filter(|p| p.required).map(|p| p.name).collect();
            json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
        }
    };
    if matches!(op, Op::Read | Op::Update | Op::Delete) {
        // The record is named by `id` or by a filter (`Selector`).
        schema["anyOf"] = json!([{"required": ["id"]}, {"required": ["filter"]}]);
    }
    schema["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    schema["title"] = json!(crate::schema::node_name(m.name, op));
    schema
}

// Parameter schemas, named by the parameter tables of the ops (`Param::schema`).

pub(super) fn pk(m: &ModelSchema) -> Value {
    field_schema(m.primary_key())
}

pub(super) fn filter(m: &ModelSchema) -> Value {
    filter_schema(m)
}

pub(super) fn changes(m: &ModelSchema) -> Value {
    changes_schema(m)
}

/// Bulk `data`: an array of records as Create takes them.
pub(super) fn records(m: &ModelSchema) -> Value {
    json!({"type": "array", "items": record_schema(m)})
}

/// Upsert `create`: a record whose fields may also come from `where`, so none is required.
pub(super) fn upsert_create(m: &ModelSchema) -> Value {
    let mut create = record_schema(m);
    create["required"] = json!([]);
    create
}

pub(super) fn include_deleted(_: &ModelSchema) -> Value {
    json!({"type": "boolean", "default": false})
}

pub(super) fn confirmed(_: &ModelSchema) -> Value {
    json!({"type": "boolean", "default": false, "description": "required to act on every record with an empty filter"})
}

pub(super) fn conflict_on(_: &ModelSchema) -> Value {
    json!({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1}]})
}

pub(super) fn expected_version(_: &ModelSchema) -> Value {
    json!({"type": "integer", "minimum": 1, "description": "the record's `version` as the caller read it; a record changed since is a `conflict` and nothing is written"})
}

pub(super) fn batch_size(_: &ModelSchema) -> Value {
    json!({"type": "integer", "minimum": 1, "default": DEFAULT_BATCH})
}

pub(super) fn order_by(_: &ModelSchema) -> Value {
    json!({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}], "description": "field names; a leading '-' sorts descending"})
}

pub(super) fn limit(_: &ModelSchema) -> Value {
    json!({"type": "integer", "minimum": 0, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT})
}

pub(super) fn offset(_: &ModelSchema) -> Value {
    json!({"type": "integer", "minimum": 0})
}

pub(super) fn after(_: &ModelSchema) -> Value {
    json!({"type": ["string", "null"], "description": "the `next` cursor of the previous page"})
}

/// Aggregate `group_by`: field names.
pub(super) fn group_by(m: &ModelSchema) -> Value {
    let names: Vec<&str> = m
        .fields
        .iter()
        .filter(|f| f.ty != FieldType::Json)
        .map(|f| f.name)
        .collect();
    let name = json!({"type": "string", "enum": names});
    json!({"anyOf": [name.clone(), {"type": "array", "items": name, "uniqueItems": true}], "description": "the fields whose values form the groups"})
}

/// Aggregate `aggregates`: output name → one function over a field it accepts.
pub(super) fn aggregates(m: &ModelSchema) -> Value {
    use super::aggregate::{accepts, Func, FUNCTIONS};
    let functions: Vec<Value> = FUNCTIONS
        .iter()
        .map(|name| {
            let func = Func::named(name).expect("FUNCTIONS are named");
            let mut args: Vec<&str> = if func == Func::Count { vec!["*"] } else { Vec::new() };
            args.extend(m.fields.iter().filter(|f| accepts(func, f.ty).is_ok()).map(|f| f.name));
            json!({"type": "object", "properties": {*name: {"type": "string", "enum": args}}, "required": [name], "additionalProperties": false})
        })
        .collect();
    json!({
        "type": "object",
        "maxProperties": super::aggregate::MAX_AGGREGATES,
        "propertyNames": {"pattern": "^[^$]"},
        "additionalProperties": {"oneOf": functions},
        "description": "named aggregates, e.g. {\"n\": {\"$count\": \"*\"}, \"total\": {\"$sum\": \"amount\"}}: $count (a field or \"*\"), $count_distinct, $sum and $avg (numeric fields), $min and $max (numbers, strings, dates, timestamps)"
    })
}

/// Aggregate `having`: the filter grammar over the aggregate names.
pub(super) fn having(_: &ModelSchema) -> Value {
    json!({"type": "object", "description": "conditions on the aggregates by name, in the filter grammar: {\"n\": {\"$gte\": 2}}; $eq $ne $gt $gte $lt $lte $in $nin $null $not, and $and $or $not"})
}

/// Aggregate `order_by`: group fields or aggregate names.
pub(super) fn aggregate_order_by(_: &ModelSchema) -> Value {
    json!({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}], "description": "group fields or aggregate names; a leading '-' sorts descending"})
}

/// Bulk writes' `max_affected`: a guard on how many rows may change.
pub(super) fn max_affected(_: &ModelSchema) -> Value {
    json!({"type": "integer", "minimum": 0, "description": "the most rows this call may change; if more would, nothing changes and the error (`too_many_rows`) says how many"})
}
