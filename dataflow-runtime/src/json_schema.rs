//! The subset of JSON Schema that node and workflow input schemas use, and
//! a checker for it: `type`, `anyOf`, `allOf`, `enum`, `minimum`, `maximum`,
//! `maxLength`, `items`, `properties`, `required` and
//! `additionalProperties: false`.
//!
//! A leaf module: node input checks, workflows and nexus all read schemas
//! through these functions, so the subset is written down once.

use serde_json::{Map, Value};
use std::fmt;

/// Where inside the checked value a [`SchemaError`] applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    /// A property of an object.
    Property(String),
    /// An item of an array.
    Item(usize),
}

/// What is wrong with a value, without where.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SchemaErrorKind {
    /// The value has none of the allowed types (`expected` lists them).
    Type {
        /// The allowed JSON types.
        expected: Vec<String>,
        /// What the value is, in words (`"a string"`, `"null"`, ...).
        got: &'static str,
    },
    /// The value is not one of the `enum` values.
    NotInEnum(Value),
    /// The number is below `minimum`.
    BelowMinimum(f64),
    /// The number is above `maximum`.
    AboveMaximum(f64),
    /// The string is longer than `maxLength` characters.
    TooLong(u64),
    /// A `required` property is absent.
    MissingProperty(String),
    /// A property a closed object does not have (`suggestion`: the closest known one).
    UnknownProperty {
        /// The property given.
        name: String,
        /// The closest property the schema knows, if any is close.
        suggestion: Option<String>,
    },
    /// No alternative of an `anyOf` matches; each alternative's error.
    NoAlternative(Vec<SchemaError>),
}

/// A value that does not match a schema: what is wrong, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaError {
    /// From the outermost segment to the innermost.
    pub path: Vec<PathSegment>,
    /// What is wrong there.
    pub kind: SchemaErrorKind,
}

impl SchemaError {
    fn new(kind: SchemaErrorKind) -> Self {
        SchemaError {
            path: Vec::new(),
            kind,
        }
    }

    fn under(mut self, seg: PathSegment) -> Self {
        self.path.insert(0, seg);
        self
    }
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for seg in &self.path {
            match seg {
                PathSegment::Property(k) => write!(f, "`{}`: ", crate::Error::echo(k))?,
                PathSegment::Item(i) => write!(f, "item {i}: ")?,
            }
        }
        match &self.kind {
            SchemaErrorKind::Type { expected, got } => {
                write!(f, "expected {}, got {got}", expected.join(" or "))
            }
            SchemaErrorKind::NotInEnum(values) => write!(f, "expected one of {values}"),
            SchemaErrorKind::BelowMinimum(min) => write!(f, "must be at least {min}"),
            SchemaErrorKind::AboveMaximum(max) => write!(f, "must be at most {max}"),
            SchemaErrorKind::TooLong(max) => write!(f, "must be at most {max} characters"),
            SchemaErrorKind::MissingProperty(p) => write!(f, "missing required property `{p}`"),
            SchemaErrorKind::UnknownProperty { name, suggestion } => {
                write!(f, "unknown property `{}`", crate::Error::echo(name))?;
                f.write_str(&crate::value::hint(suggestion.as_deref()))
            }
            SchemaErrorKind::NoAlternative(errs) => {
                for (i, e) in errs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", or ")?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for SchemaError {}

/// The `properties` of an object schema.
pub fn properties(schema: &Value) -> Option<&Map<String, Value>> {
    schema.get("properties").and_then(Value::as_object)
}

/// Whether an object schema refuses properties it does not list.
pub fn closed(schema: &Value) -> bool {
    schema.get("additionalProperties") == Some(&Value::Bool(false))
}

/// The names an object schema lists as `required`.
pub fn required(schema: &Value) -> impl Iterator<Item = &str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// The schema at `path` inside a node input schema, following
/// `properties`, `items` and the first alternative of `anyOf`.
pub fn schema_at<'a>(schema: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = schema;
    for seg in path {
        cur = if let Some(p) = properties(cur).and_then(|p| p.get(seg)) {
            p
        } else if let Some(items) = cur.get("items") {
            items
        } else if let Some(first) = cur.get("anyOf").and_then(|a| a.get(0)) {
            properties(first).and_then(|p| p.get(seg))?
        } else {
            return None;
        };
    }
    // A filter value is "the field's value, or an operator object": a
    // template there stands for the value.
    if let Some(any) = cur.get("anyOf").and_then(Value::as_array) {
        let is_ops = |s: &Value| {
            properties(s).is_some_and(|p| !p.is_empty() && p.keys().all(|k| k.starts_with('$')))
        };
        let values: Vec<&Value> = any.iter().filter(|s| !is_ops(s)).collect();
        if values.len() == 1 && any.len() > 1 {
            return Some(values[0]);
        }
    }
    Some(cur)
}

/// Checks `v` against `schema` (the subset above): the first problem found.
pub fn check(schema: &Value, v: &Value) -> Result<(), SchemaError> {
    for s in schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        check(s, v)?;
    }
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
        let errs: Vec<SchemaError> = any.iter().filter_map(|s| check(s, v).err()).collect();
        if errs.len() == any.len() {
            return Err(SchemaError::new(SchemaErrorKind::NoAlternative(errs)));
        }
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let fits = |t: &str| match t {
            "string" => v.is_string(),
            "integer" => v.is_u64() || crate::value::as_integer(v).is_some(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "array" => v.is_array(),
            "object" => v.is_object(),
            "null" => v.is_null(),
            _ => true,
        };
        if !types.is_empty() && !types.iter().any(|t| fits(t)) {
            return Err(SchemaError::new(SchemaErrorKind::Type {
                expected: types.iter().map(|t| t.to_string()).collect(),
                got: crate::value::describe(v),
            }));
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return Err(SchemaError::new(SchemaErrorKind::NotInEnum(Value::Array(
                e.clone(),
            ))));
        }
    }
    if let (Some(min), Some(x)) = (schema.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if x < min {
            return Err(SchemaError::new(SchemaErrorKind::BelowMinimum(min)));
        }
    }
    if let (Some(max), Some(x)) = (schema.get("maximum").and_then(Value::as_f64), v.as_f64()) {
        if x > max {
            return Err(SchemaError::new(SchemaErrorKind::AboveMaximum(max)));
        }
    }
    if let (Some(max), Some(s)) = (schema.get("maxLength").and_then(Value::as_u64), v.as_str()) {
        if s.chars().count() as u64 > max {
            return Err(SchemaError::new(SchemaErrorKind::TooLong(max)));
        }
    }
    if let Some(obj) = v.as_object() {
        let props = properties(schema);
        if let Some(req) = required(schema).find(|req| !obj.contains_key(*req)) {
            return Err(SchemaError::new(SchemaErrorKind::MissingProperty(
                req.to_string(),
            )));
        }
        for (k, item) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => check(s, item).map_err(|e| e.under(PathSegment::Property(k.clone())))?,
                None if closed(schema) => {
                    let known = props.into_iter().flat_map(|p| p.keys().map(String::as_str));
                    return Err(SchemaError::new(SchemaErrorKind::UnknownProperty {
                        name: k.clone(),
                        suggestion: crate::value::suggest(k, known).map(str::to_string),
                    }));
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(a)) = (schema.get("items"), v.as_array()) {
        for (i, item) in a.iter().enumerate() {
            check(items, item).map_err(|e| e.under(PathSegment::Item(i)))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_name_the_path_and_the_problem() {
        let schema = json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "maxLength": 3},
                "tags": {"type": "array", "items": {"type": "integer", "minimum": 0}}
            }
        });
        let err = check(&schema, &json!({"name": "abcd"})).unwrap_err();
        assert_eq!(err.kind, SchemaErrorKind::TooLong(3));
        assert_eq!(err.to_string(), "`name`: must be at most 3 characters");
        let err = check(&schema, &json!({"name": "a", "tags": [1, -1]})).unwrap_err();
        assert_eq!(
            err.path,
            vec![PathSegment::Property("tags".into()), PathSegment::Item(1)]
        );
        assert_eq!(err.to_string(), "`tags`: item 1: must be at least 0");
        let err = check(&schema, &json!({"nme": "a"})).unwrap_err();
        assert_eq!(err.to_string(), "missing required property `name`");
        let err = check(&schema, &json!({"name": "a", "nmae": 1})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown property `nmae` (did you mean `name`?)"
        );
        assert!(check(&schema, &json!({"name": "abc", "tags": [0]})).is_ok());
    }

    #[test]
    fn any_of_reports_every_alternative() {
        let schema = json!({"anyOf": [{"type": "string"}, {"type": "integer"}]});
        let err = check(&schema, &json!(true)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected string, got a boolean, or expected integer, got a boolean"
        );
    }
}
