//! Reading a node's JSON parameters strictly: unknown keys and wrong types
//! are validation errors that name the node and the parameter.

use crate::error::{Error, Result};
use crate::schema::ModelSchema;
use crate::value::{describe, did_you_mean};
use serde_json::{Map, Value};

/// One parameter of a node op, declared once in the op's table: the
/// parser accepts exactly the names of the table, and the published JSON
/// Schema describes exactly its entries.
pub(crate) struct Param {
    pub(crate) name: &'static str,
    /// Its JSON Schema, built from the model.
    pub(crate) schema: fn(&ModelSchema) -> Value,
    /// Listed under `required` in the schema. The op checks presence where
    /// it reads the value, with a message about that parameter.
    pub(crate) required: bool,
    /// Whether models of this kind have the parameter (`expected_version`:
    /// versioned models only); elsewhere it is unknown and unpublished.
    pub(crate) applies: fn(&ModelSchema) -> bool,
}

fn always(_: &ModelSchema) -> bool {
    true
}

fn is_versioned(m: &ModelSchema) -> bool {
    m.options.versioned
}

impl Param {
    /// A parameter the schema does not list as required.
    pub(crate) const fn optional(name: &'static str, schema: fn(&ModelSchema) -> Value) -> Self {
        Param {
            name,
            schema,
            required: false,
            applies: always,
        }
    }

    /// An optional parameter of versioned models only.
    pub(crate) const fn versioned(name: &'static str, schema: fn(&ModelSchema) -> Value) -> Self {
        Param {
            name,
            schema,
            required: false,
            applies: is_versioned,
        }
    }

    /// A parameter the schema lists under `required`.
    pub(crate) const fn required(name: &'static str, schema: fn(&ModelSchema) -> Value) -> Self {
        Param {
            name,
            schema,
            required: true,
            applies: always,
        }
    }
}

pub(super) struct Params<'a> {
    pub model: &'static ModelSchema,
    pub node: &'a str,
    pub map: &'a Map<String, Value>,
}

impl<'a> Params<'a> {
    /// Node parameters must be an object whose keys are all in `allowed`,
    /// the op's parameter table.
    pub(super) fn new(
        model: &'static ModelSchema,
        node: &'a str,
        params: &'a Value,
        allowed: &[Param],
    ) -> Result<Self> {
        let map = params.as_object().ok_or_else(|| {
            Error::validation(
                model.name,
                None,
                format!("parameters must be a JSON object, got {}", describe(params)),
            )
            .in_node(node)
        })?;
        let p = Params { model, node, map };
        if !allowed.is_empty() {
            for key in map.keys() {
                if allowed.iter().any(|a| a.name == key && !(a.applies)(model)) {
                    return Err(p.error(
                        Some(key),
                        format!(
                            "`{key}` applies to versioned models, and {} is not one (#[dataflow::model(versioned)])",
                            model.name
                        ),
                    ));
                }
                if !allowed.iter().any(|a| a.name == key) {
                    let hint = did_you_mean(key, allowed.iter().map(|a| a.name));
                    return Err(p.error(
                        Some(key),
                        format!(
                            "unknown parameter `{}`{hint}; expected one of: {}",
                            Error::echo(key),
                            allowed
                                .iter()
                                .filter(|a| (a.applies)(model))
                                .map(|a| a.name)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(p)
    }

    pub(super) fn error(&self, field: Option<&str>, msg: impl std::fmt::Display) -> Error {
        Error::validation(self.model.name, field, msg.to_string()).in_node(self.node)
    }

    /// A present, non-null parameter.
    pub(super) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(super) fn bool(&self, key: &str) -> Result<bool> {
        match self.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.error(
                Some(key),
                format!("`{key}` must be true or false, got {}", describe(v)),
            )),
        }
    }

    /// `expected_version`: the version the caller last read, if given.
    pub(super) fn expected_version(&self) -> Result<Option<i64>> {
        match self.get("expected_version") {
            None => Ok(None),
            Some(v) => match crate::value::as_integer(v) {
                Some(n) if n >= 1 => Ok(Some(n)),
                _ => Err(self.error(
                    Some("expected_version"),
                    format!(
                        "`expected_version` must be the record's `version` as read (an integer from 1), got {}",
                        show(v)
                    ),
                )),
            },
        }
    }

    pub(super) fn u64(&self, key: &str, default: u64, max: u64) -> Result<u64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match crate::value::as_integer(v).and_then(|n| u64::try_from(n).ok()) {
                Some(n) if n <= max => Ok(n),
                _ => Err(self.error(
                    Some(key),
                    format!(
                        "`{key}` must be an integer from 0 to {max}, got {}",
                        show(v)
                    ),
                )),
            },
        }
    }

    pub(super) fn object(&self, key: &str) -> Result<Option<&'a Map<String, Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(v) => Err(self.error(
                Some(key),
                format!("`{key}` must be an object, got {}", describe(v)),
            )),
        }
    }

    pub(super) fn array(&self, key: &str) -> Result<&'a Vec<Value>> {
        match self.get(key) {
            Some(Value::Array(a)) => Ok(a),
            None => Err(self.error(
                Some(key),
                format!("missing required parameter `{key}` (an array of records)"),
            )),
            Some(v) => Err(self.error(
                Some(key),
                format!("`{key}` must be an array of records, got {}", describe(v)),
            )),
        }
    }

    /// A parameter that is one name or an array of names (`order_by`,
    /// `group_by`); absent is none. `example` shows the array form.
    pub(super) fn names(&self, key: &str, example: &str) -> Result<Vec<&'a str>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.as_str()]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str().ok_or_else(|| {
                        self.error(
                            Some(key),
                            format!("`{key}` items must be strings, as in {example}"),
                        )
                    })
                })
                .collect(),
            Some(v) => Err(self.error(
                Some(key),
                format!(
                    "`{key}` must be a name or an array such as {example}, got {}",
                    describe(v)
                ),
            )),
        }
    }

    /// An `order_by` entry: `"-name"` is descending, `"name"` or `"+name"` ascending.
    pub(super) fn direction(item: &str) -> (bool, &str) {
        match item.strip_prefix('-') {
            Some(n) => (true, n),
            None => (false, item.strip_prefix('+').unwrap_or(item)),
        }
    }

    /// The filter parameter: an object, or absent (everything).
    pub(super) fn filter(&self, key: &str) -> Result<&'a Value> {
        static EMPTY: Value = Value::Null;
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(&EMPTY),
            Some(v @ Value::Object(_)) => Ok(v),
            Some(v) => Err(self.error(
                Some(key),
                format!(
                    "`{key}` must be a filter object such as {{\"active\": true}}, got {}",
                    describe(v)
                ),
            )),
        }
    }
}

/// A parameter value for an error message, shortened.
fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(40).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s
    }
}
