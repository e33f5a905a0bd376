//! Hand-written nodes: implement [`Node`] and register it with
//! `#[dataflow::node]`, the same zero-cost way models register. Workflows
//! mix them freely with the generated model nodes.

use crate::error::{Error, ErrorCode, Result};
use crate::DataFlow;
use serde_json::{json, Map, Value};
use std::future::Future;
use std::pin::Pin;

/// What [`Node::run`] returns.
pub type NodeFuture<'a> = Pin<Box<dyn Future<Output = Result<Value>> + Send + 'a>>;

/// A node type: a name, a JSON Schema for its input and an async body.
///
/// ```
/// use dataflow::{Node, NodeContext, NodeFuture};
/// use serde_json::{json, Value};
///
/// pub struct Greet;
///
/// #[dataflow::node]
/// impl Node for Greet {
///     fn name(&self) -> &'static str { "GreetNode" }
///     fn input_schema(&self) -> Value {
///         json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]})
///     }
///     fn run<'a>(&'a self, _ctx: &'a NodeContext, input: Value) -> NodeFuture<'a> {
///         Box::pin(async move { Ok(json!({"greeting": format!("hello {}", input["name"].as_str().unwrap_or("?"))})) })
///     }
/// }
/// ```
pub trait Node: Send + Sync + 'static {
    /// The type name workflows use, e.g. `"SendEmailNode"`.
    fn name(&self) -> &'static str;

    /// The JSON Schema of the input object.
    fn input_schema(&self) -> Value;

    /// Runs the node on `input` (already checked against [`input_schema`](Self::input_schema)).
    fn run<'a>(&'a self, ctx: &'a NodeContext, input: Value) -> NodeFuture<'a>;

    /// Whether the node runs when only some of its upstream nodes ran (a
    /// join after a [`SwitchNode`], like [`MergeNode`]). Default: it needs all.
    fn joins_any(&self) -> bool {
        false
    }
}

/// What a running node can reach.
pub struct NodeContext {
    /// The database the run uses.
    pub db: DataFlow,
    /// The run this node belongs to (a fresh id outside a workflow).
    pub run_id: String,
    /// The node's id within its workflow (its type name outside one).
    pub node_id: String,
}

impl NodeContext {
    /// The context of the call or run (tenant, actor, roles, request id);
    /// `ctx.db` carries it too, so model nodes run through it see the same.
    pub fn context(&self) -> &crate::Context {
        self.db.context()
    }
}

/// Hand-written nodes, filled by `#[dataflow::node]` at link time.
#[linkme::distributed_slice]
pub static NODES: [&'static dyn Node];

fn input_error(node: &str, msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::Validation, format!("{node}: {}", msg.into()))
}

/// Routes on a condition. Input: `{"value": X}` plus either `"condition"`
/// (a boolean) or an operator and operand: `{"value": X, "$gt": 5}` with
/// one of `$eq $ne $gt $gte $lt $lte $in $nin $null`. Output:
/// `{"branch": true, "true_output": X}` or `{"branch": false,
/// "false_output": X}`; nodes connected to the branch not taken are skipped.
pub struct SwitchNode;

const SWITCH_OPS: [&str; 9] = [
    "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$null",
];

impl Node for SwitchNode {
    fn name(&self) -> &'static str {
        "SwitchNode"
    }

    fn input_schema(&self) -> Value {
        let mut props = Map::new();
        props.insert(
            "value".into(),
            json!({"description": "the value routed to the branch taken"}),
        );
        props.insert("condition".into(), json!({"type": "boolean"}));
        for op in SWITCH_OPS {
            props.insert(op.into(), json!({}));
        }
        json!({"type": "object", "properties": props, "additionalProperties": false})
    }

    fn run<'a>(&'a self, ctx: &'a NodeContext, input: Value) -> NodeFuture<'a> {
        Box::pin(async move {
            let node = &ctx.node_id;
            let obj = input
                .as_object()
                .ok_or_else(|| input_error(node, "input must be an object"))?;
            let value = obj.get("value").cloned().unwrap_or(Value::Null);
            let tests: Vec<(&String, &Value)> = obj.iter().filter(|(k, _)| *k != "value").collect();
            let branch = match tests.as_slice() {
                [(k, Value::Bool(b))] if k.as_str() == "condition" => *b,
                [(k, operand)] if SWITCH_OPS.contains(&k.as_str()) => {
                    compare(node, k, &value, operand)?
                }
                _ => {
                    return Err(input_error(
                        node,
                        format!(
                            "give `value` and exactly one of `condition` (boolean) or {}",
                            SWITCH_OPS.join(" ")
                        ),
                    ))
                }
            };
            let key = if branch {
                "true_output"
            } else {
                "false_output"
            };
            Ok(json!({"branch": branch, key: value}))
        })
    }
}

fn compare(node: &str, op: &str, value: &Value, operand: &Value) -> Result<bool> {
    use std::cmp::Ordering;
    let order = || -> Result<Ordering> {
        match (value, operand) {
            (Value::Number(a), Value::Number(b)) => {
                let (a, b) = (
                    a.as_f64().unwrap_or(f64::NAN),
                    b.as_f64().unwrap_or(f64::NAN),
                );
                a.partial_cmp(&b)
                    .ok_or_else(|| input_error(node, "numbers cannot be compared"))
            }
            (Value::String(a), Value::String(b)) => Ok(a.cmp(b)),
            _ => Err(input_error(
                node,
                format!("`{op}` compares two numbers or two strings"),
            )),
        }
    };
    let list = || {
        operand
            .as_array()
            .ok_or_else(|| input_error(node, format!("`{op}` takes an array")))
    };
    Ok(match op {
        "$eq" => value == operand,
        "$ne" => value != operand,
        "$gt" => order()? == Ordering::Greater,
        "$gte" => order()? != Ordering::Less,
        "$lt" => order()? == Ordering::Less,
        "$lte" => order()? != Ordering::Greater,
        "$in" => list()?.contains(value),
        "$nin" => !list()?.contains(value),
        _ => {
            let want = operand
                .as_bool()
                .ok_or_else(|| input_error(node, "`$null` takes true or false"))?;
            value.is_null() == want
        }
    })
}

/// Joins branches. Input: any named values, plus `"mode"`: `"object"`
/// (default: shallow-merge the object inputs, in name order) or `"concat"`
/// (concatenate the array inputs, in name order). Output: `{"merged": ...}`.
/// It runs when at least one upstream node ran.
pub struct MergeNode;

impl Node for MergeNode {
    fn name(&self) -> &'static str {
        "MergeNode"
    }

    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {"mode": {"enum": ["object", "concat"], "default": "object"}},
            "additionalProperties": true
        })
    }

    fn joins_any(&self) -> bool {
        true
    }

    fn run<'a>(&'a self, ctx: &'a NodeContext, input: Value) -> NodeFuture<'a> {
        Box::pin(async move {
            let node = &ctx.node_id;
            let Value::Object(mut obj) = input else {
                return Err(input_error(node, "input must be an object"));
            };
            let mode = match obj.remove("mode") {
                None => "object".to_string(),
                Some(Value::String(m)) if m == "object" || m == "concat" => m,
                Some(other) => {
                    return Err(input_error(
                        node,
                        format!("`mode` must be \"object\" or \"concat\", got {other}"),
                    ))
                }
            };
            let mut names: Vec<&String> = obj.keys().collect();
            names.sort();
            let merged = if mode == "concat" {
                let mut out = Vec::new();
                for n in names {
                    match &obj[n] {
                        Value::Array(a) => out.extend(a.iter().cloned()),
                        Value::Null => {}
                        _ => {
                            return Err(input_error(
                                node,
                                format!("input `{n}` is not an array (mode \"concat\")"),
                            ))
                        }
                    }
                }
                Value::Array(out)
            } else {
                let mut out = Map::new();
                for n in names {
                    match &obj[n] {
                        Value::Object(o) => {
                            out.extend(o.iter().map(|(k, v)| (k.clone(), v.clone())))
                        }
                        Value::Null => {}
                        other => {
                            out.insert(n.clone(), other.clone());
                        }
                    }
                }
                Value::Object(out)
            };
            Ok(json!({"merged": merged}))
        })
    }
}

/// The built-in nodes, registered next to the linked ones.
pub(crate) const BUILTINS: [&dyn Node; 2] = [&SwitchNode, &MergeNode];
