//! JSON Schemas (draft 2020-12) of node inputs, generated from the model
//! schema. HTTP, CLI and MCP publish these, so they match what `run` accepts.

use super::Op;
use crate::filter::{FIELD_OPERATORS, LOGICAL_OPERATORS};
use crate::schema::{FieldSchema, FieldTypeExt, Generated, ModelSchema};
use serde_json::{json, Map, Value};

fn nullable(f: &FieldSchema, mut s: Value) -> Value {
    if f.nullable {
        s = json!({"anyOf": [s, {"type": "null"}]});
    }
    s
}

fn field_schema(f: &FieldSchema) -> Value {
    let mut s = f.ty.json_schema();
    if let (Some(n), Value::Object(m)) = (f.max_length, &mut s) {
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

fn object(props: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
}

/// The JSON Schema of the input of `{Model}{Op}Node`.
pub fn input_schema(m: &ModelSchema, op: Op) -> Value {
    let pk = field_schema(m.primary_key());
    let filter = filter_schema(m);
    let include_deleted = json!({"type": "boolean", "default": false});
    let confirmed = json!({"type": "boolean", "default": false, "description": "required to act on every record with an empty filter"});
    let conflict_on = json!({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1}]});
    let batch_size = json!({"type": "integer", "minimum": 1, "default": 1000});
    let mut schema = match op {
        Op::Create => record_schema(m),
        Op::Read => object(
            json!({"id": pk, "filter": filter, "include_deleted": include_deleted}),
            &[],
        ),
        Op::Update => object(
            json!({"id": pk, "filter": filter, "fields": changes_schema(m)}),
            &["fields"],
        ),
        Op::Delete => object(json!({"id": pk, "filter": filter}), &[]),
        Op::List => object(
            json!({
                "filter": filter,
                "order_by": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}], "description": "field names; a leading '-' sorts descending"},
                "limit": {"type": "integer", "minimum": 0, "maximum": super::ops::MAX_LIMIT, "default": 100},
                "offset": {"type": "integer", "minimum": 0},
                "after": {"type": ["string", "null"], "description": "the `next` cursor of the previous page"},
                "include_deleted": include_deleted,
            }),
            &[],
        ),
        Op::Count => object(
            json!({"filter": filter, "include_deleted": include_deleted}),
            &[],
        ),
        Op::Upsert => {
            let mut create = record_schema(m);
            create["required"] = json!([]);
            object(
                json!({"where": filter, "create": create, "update": changes_schema(m), "conflict_on": conflict_on}),
                &[],
            )
        }
        Op::BulkCreate => object(
            json!({"data": {"type": "array", "items": record_schema(m)}, "batch_size": batch_size}),
            &["data"],
        ),
        Op::BulkUpdate => object(
            json!({"filter": filter, "fields": changes_schema(m), "confirmed": confirmed}),
            &["fields"],
        ),
        Op::BulkDelete => object(json!({"filter": filter, "confirmed": confirmed}), &[]),
        Op::BulkUpsert => object(
            json!({"data": {"type": "array", "items": record_schema(m)}, "conflict_on": conflict_on, "batch_size": batch_size}),
            &["data"],
        ),
    };
    schema["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    schema["title"] = json!(crate::schema::node_name(m.name, op));
    schema
}
