//! Workflows: nodes chained by connections, with `{{input}}` templates,
//! validated when built and run by a concurrent runtime.

mod run;
mod template;

pub use run::{new_run_id, NodeJournal, Observer, Run, RunError, RunEvent, WorkflowRuntime};

use crate::error::{Error, ErrorCode, Result};
use crate::json_schema::{self, closed, properties, required, schema_at};
use crate::registry::NodeRef;
use crate::value::did_you_mean;
use crate::DataFlow;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use template::Tpl;

/// The stable, serializable form of a workflow (`"version": 1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    /// The format version; this build reads and writes 1.
    #[serde(default = "spec_version")]
    pub version: u32,
    /// What the workflow does (shown by nexus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The nodes, in the order they were added.
    pub nodes: Vec<NodeSpec>,
    /// Outputs fed into inputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connections: Vec<ConnectionSpec>,
    /// Declared run inputs (name → JSON Schema). When any are declared,
    /// templates may only name declared inputs.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub inputs: Map<String, Value>,
    /// Run every model node in one database transaction.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transactional: bool,
    /// A run's time limit in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

fn spec_version() -> u32 {
    1
}

/// One node of a workflow: which type, under which id, with which parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Unique in the workflow; names the node's output in `Run::results`.
    pub id: String,
    /// The registered node type (`"UserCreateNode"`), `"type"` in JSON.
    #[serde(rename = "type")]
    pub node_type: String,
    /// The parameters, with `{{input}}` templates.
    #[serde(default)]
    pub params: Value,
}

/// `from`'s output at path `output` becomes `to`'s input at path `input`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionSpec {
    /// The node whose output is read.
    pub from: String,
    /// A dotted path into that output (`"record.id"`).
    pub output: String,
    /// The node whose input is set.
    pub to: String,
    /// A dotted path into that input.
    pub input: String,
}

/// Builds a [`Workflow`]. Methods take `&mut self`, so both chained and
/// statement styles work.
#[derive(Debug, Clone)]
pub struct WorkflowBuilder {
    spec: WorkflowSpec,
}

impl Default for WorkflowBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkflowBuilder {
    /// An empty workflow.
    pub fn new() -> Self {
        WorkflowBuilder {
            spec: WorkflowSpec {
                version: 1,
                description: None,
                nodes: Vec::new(),
                connections: Vec::new(),
                inputs: Map::new(),
                transactional: false,
                timeout_ms: None,
            },
        }
    }

    /// Adds a node of type `node_type` (e.g. `"UserCreateNode"`) named `id`.
    pub fn add_node(
        &mut self,
        node_type: impl Into<String>,
        id: impl Into<String>,
        params: Value,
    ) -> &mut Self {
        self.spec.nodes.push(NodeSpec {
            id: id.into(),
            node_type: node_type.into(),
            params,
        });
        self
    }

    /// Feeds `from_node`'s output at `from_output` (a dotted path such as
    /// `"record.id"` or `"records.0.email"`) into `to_node`'s input at `to_input`.
    pub fn add_connection(
        &mut self,
        from_node: impl Into<String>,
        from_output: impl Into<String>,
        to_node: impl Into<String>,
        to_input: impl Into<String>,
    ) -> &mut Self {
        self.spec.connections.push(ConnectionSpec {
            from: from_node.into(),
            output: from_output.into(),
            to: to_node.into(),
            input: to_input.into(),
        });
        self
    }

    /// Declares a run input with its JSON Schema (optional: undeclared
    /// inputs are derived from the templates).
    pub fn declare_input(&mut self, name: impl Into<String>, schema: Value) -> &mut Self {
        self.spec.inputs.insert(name.into(), schema);
        self
    }

    /// What the workflow does (shown by nexus in listings, OpenAPI and MCP).
    pub fn description(&mut self, text: impl Into<String>) -> &mut Self {
        self.spec.description = Some(text.into());
        self
    }

    /// Runs all model nodes on one connection in one transaction: they
    /// commit or roll back together (nodes then run one at a time).
    pub fn transactional(&mut self, on: bool) -> &mut Self {
        self.spec.transactional = on;
        self
    }

    /// A time limit per run; a run over it fails with `timeout`.
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.spec.timeout_ms = Some(timeout.as_millis() as u64);
        self
    }

    /// Validates everything that can be checked before running.
    pub fn build(&self, db: &DataFlow) -> Result<Workflow> {
        Workflow::from_spec(db, self.spec.clone())
    }
}

/// One path segment: an object key or an array index.
pub(crate) type Path = Vec<String>;

fn parse_path(p: &str) -> Option<Path> {
    let segs: Path = p.split('.').map(str::to_string).collect();
    (!p.is_empty() && segs.iter().all(|s| !s.is_empty())).then_some(segs)
}

pub(crate) fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, seg| match cur {
        Value::Object(m) => m.get(seg),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

pub(crate) fn set_path(target: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        *target = value;
        return;
    };
    let mut cur = target;
    for seg in parents {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        cur = cur
            .as_object_mut()
            .expect("object")
            .entry(seg.clone())
            .or_insert(Value::Null);
    }
    if !cur.is_object() {
        *cur = Value::Object(Map::new());
    }
    cur.as_object_mut()
        .expect("object")
        .insert(last.clone(), value);
}

#[derive(Clone)]
pub(crate) struct Edge {
    pub from: usize,
    pub from_path: Path,
    pub to_path: Path,
}

pub(crate) struct PlanNode {
    pub id: String,
    pub node_type: String,
    pub kind: NodeRef,
    pub params: Tpl,
    /// Top-level parameters the node's schema does not require.
    pub optional: Vec<String>,
    pub incoming: Vec<Edge>,
    pub dependents: Vec<usize>,
    pub sources: usize,
}

pub(crate) struct Plan {
    pub spec: WorkflowSpec,
    pub nodes: Vec<PlanNode>,
    /// A topological order.
    pub order: Vec<usize>,
    pub input_schema: Value,
    pub timeout: Option<Duration>,
}

/// A validated workflow; cheap to clone and share.
#[derive(Clone)]
pub struct Workflow {
    pub(crate) plan: Arc<Plan>,
}

impl std::fmt::Debug for Workflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflow")
            .field("nodes", &self.plan.spec.nodes.len())
            .finish()
    }
}

fn build_error(node: &str, msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::Validation, msg.into()).with_node(node)
}

impl Workflow {
    /// Rebuilds a workflow from its JSON form, with the same validation.
    pub fn from_json(db: &DataFlow, json: Value) -> Result<Workflow> {
        let spec: WorkflowSpec = serde_json::from_value(json).map_err(|e| {
            Error::new(ErrorCode::Validation, format!("invalid workflow JSON: {e}"))
        })?;
        if spec.version != 1 {
            return Err(Error::new(
                ErrorCode::Validation,
                format!(
                    "unsupported workflow version {}; this build reads version 1",
                    spec.version
                ),
            ));
        }
        Workflow::from_spec(db, spec)
    }

    /// The JSON form (stable, `"version": 1`).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(&self.plan.spec).expect("a workflow spec serializes")
    }

    /// The serializable description this workflow was built from.
    pub fn spec(&self) -> &WorkflowSpec {
        &self.plan.spec
    }

    /// The JSON Schema of the run inputs, derived from the templates and the
    /// parameter schemas of the nodes they feed.
    pub fn input_schema(&self) -> &Value {
        &self.plan.input_schema
    }

    /// Checks run inputs as a run would before its first node, with the
    /// same error: for callers that answer before running (async runs).
    pub fn check_inputs(&self, inputs: &Value) -> Result<()> {
        run::validate_inputs(&self.plan, inputs.clone()).map(drop)
    }

    /// The node ids, in the order they were added.
    pub fn node_ids(&self) -> impl Iterator<Item = &str> {
        self.plan.nodes.iter().map(|n| n.id.as_str())
    }

    fn from_spec(db: &DataFlow, spec: WorkflowSpec) -> Result<Workflow> {
        if spec.nodes.is_empty() {
            return Err(Error::new(
                ErrorCode::Validation,
                "a workflow needs at least one node",
            ));
        }
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut nodes = Vec::with_capacity(spec.nodes.len());
        for (i, n) in spec.nodes.iter().enumerate() {
            if n.id.is_empty() || n.id.contains('.') {
                return Err(build_error(
                    &n.id,
                    format!("node id `{}` must be non-empty and contain no `.`", n.id),
                ));
            }
            if index.insert(&n.id, i).is_some() {
                return Err(build_error(
                    &n.id,
                    format!("two nodes have the id `{}`", n.id),
                ));
            }
            let kind = db.lookup(&n.node_type).map_err(|e| {
                Error::new(
                    ErrorCode::UnknownNode,
                    format!("node `{}`: {}", n.id, e.message()),
                )
                .with_node(&n.id)
            })?;
            let params = match &n.params {
                Value::Null => Value::Object(Map::new()),
                v @ Value::Object(_) => v.clone(),
                _ => {
                    return Err(build_error(
                        &n.id,
                        format!("node `{}`: params must be an object", n.id),
                    ))
                }
            };
            let schema = kind.input_schema();
            if closed(&schema) {
                let props = properties(&schema).cloned().unwrap_or_default();
                for key in params.as_object().expect("object").keys() {
                    if !props.contains_key(key) {
                        return Err(build_error(
                            &n.id,
                            format!(
                                "node `{}` ({}) has no input `{key}`{}",
                                n.id,
                                n.node_type,
                                did_you_mean(key, props.keys().map(String::as_str))
                            ),
                        ));
                    }
                }
            }
            let required: Vec<&str> = required(&schema).collect();
            let optional = properties(&schema)
                .map(|p| {
                    p.keys()
                        .filter(|k| !required.contains(&k.as_str()))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            nodes.push(PlanNode {
                id: n.id.clone(),
                node_type: n.node_type.clone(),
                kind,
                params: template::compile(&params),
                optional,
                incoming: Vec::new(),
                dependents: Vec::new(),
                sources: 0,
            });
        }

        for c in &spec.connections {
            let find = |id: &str, role: &str| {
                index.get(id).copied().ok_or_else(|| {
                    build_error(
                        id,
                        format!(
                            "a connection {role} `{id}`, which is not a node of this workflow{}",
                            did_you_mean(id, index.keys().copied())
                        ),
                    )
                })
            };
            let from = find(&c.from, "comes from")?;
            let to = find(&c.to, "goes to")?;
            if from == to {
                return Err(build_error(
                    &c.to,
                    format!("node `{}` is connected to itself", c.to),
                ));
            }
            let bad_path = |p: &str| {
                build_error(
                    &c.to,
                    format!(
                        "connection {} → {}: `{p}` is not a dotted path such as `record.id`",
                        c.from, c.to
                    ),
                )
            };
            let from_path = parse_path(&c.output).ok_or_else(|| bad_path(&c.output))?;
            let to_path = parse_path(&c.input).ok_or_else(|| bad_path(&c.input))?;
            let target = &nodes[to];
            let schema = target.kind.input_schema();
            if closed(&schema) {
                let props = properties(&schema).cloned().unwrap_or_default();
                if !props.contains_key(&to_path[0]) {
                    return Err(build_error(
                        &c.to,
                        format!(
                            "connection {} → {}: node `{}` ({}) has no input `{}`{}",
                            c.from,
                            c.to,
                            c.to,
                            target.node_type,
                            to_path[0],
                            did_you_mean(&to_path[0], props.keys().map(String::as_str))
                        ),
                    ));
                }
            }
            if target.incoming.iter().any(|e| e.to_path == to_path) {
                return Err(build_error(
                    &c.to,
                    format!("two connections feed `{}` of node `{}`", c.input, c.to),
                ));
            }
            nodes[to].incoming.push(Edge {
                from,
                from_path,
                to_path,
            });
        }
        for i in 0..nodes.len() {
            let mut sources: Vec<usize> = nodes[i].incoming.iter().map(|e| e.from).collect();
            sources.sort_unstable();
            sources.dedup();
            nodes[i].sources = sources.len();
            for s in sources {
                nodes[s].dependents.push(i);
            }
        }
        let order = topological_order(&nodes)?;

        // Every required input of every node must be supplied.
        for n in &nodes {
            let schema = n.kind.input_schema();
            let given: Vec<&str> = match &n.params {
                Tpl::Object(items) => items.iter().map(|(k, _)| k.as_str()).collect(),
                Tpl::Literal(Value::Object(m)) => m.keys().map(String::as_str).collect(),
                _ => Vec::new(),
            };
            for req in required(&schema) {
                if !given.contains(&req) && !n.incoming.iter().any(|e| e.to_path[0] == req) {
                    return Err(build_error(
                        &n.id,
                        format!("node `{}` ({}) needs `{req}`, but neither its params nor a connection supply it", n.id, n.node_type),
                    ));
                }
            }
        }

        let input_schema = derive_input_schema(&spec, &nodes)?;
        let timeout = spec.timeout_ms.map(Duration::from_millis);
        Ok(Workflow {
            plan: Arc::new(Plan {
                spec,
                nodes,
                order,
                input_schema,
                timeout,
            }),
        })
    }
}

fn topological_order(nodes: &[PlanNode]) -> Result<Vec<usize>> {
    let mut waiting: Vec<usize> = nodes.iter().map(|n| n.sources).collect();
    let mut ready: Vec<usize> = (0..nodes.len()).filter(|i| waiting[*i] == 0).collect();
    ready.reverse();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(i) = ready.pop() {
        order.push(i);
        for &d in &nodes[i].dependents {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                ready.push(d);
            }
        }
    }
    if order.len() < nodes.len() {
        let cycle: Vec<&str> = (0..nodes.len())
            .filter(|i| waiting[*i] > 0)
            .map(|i| nodes[i].id.as_str())
            .collect();
        return Err(build_error(
            cycle[0],
            format!(
                "the connections form a cycle through nodes {}",
                cycle.join(", ")
            ),
        ));
    }
    Ok(order)
}

/// Run inputs: each template's type comes from the parameter it fills; an
/// input is required unless every use is an optional top-level parameter.
fn derive_input_schema(spec: &WorkflowSpec, nodes: &[PlanNode]) -> Result<Value> {
    let mut props: BTreeMap<String, Value> = BTreeMap::new();
    let mut required: BTreeMap<String, bool> = BTreeMap::new();
    for n in nodes {
        let node_schema = n.kind.input_schema();
        // `{{session.*}}` reads the caller's session, not a run input.
        for r in n
            .params
            .refs()
            .into_iter()
            .filter(|r| !r.name.starts_with(template::SESSION))
        {
            if !spec.inputs.is_empty() && !spec.inputs.contains_key(&r.name) {
                return Err(build_error(
                    &n.id,
                    format!(
                        "node `{}` uses the template `{{{{{}}}}}`, but the workflow declares no input `{}`{}",
                        n.id,
                        r.name,
                        r.name,
                        did_you_mean(&r.name, spec.inputs.keys().map(String::as_str))
                    ),
                ));
            }
            let omittable = r.whole && r.path.len() == 1 && n.optional.contains(&r.path[0]);
            *required.entry(r.name.clone()).or_insert(false) |= !omittable;
            let schema = if r.whole {
                schema_at(&node_schema, &r.path)
                    .cloned()
                    .unwrap_or(json!({}))
            } else {
                json!({"type": ["string", "number", "integer", "boolean"]})
            };
            let schema = strip_default(schema);
            let entry = props.entry(r.name.clone()).or_insert(Value::Null);
            if entry.is_null() || entry == &json!({}) {
                *entry = schema;
            }
        }
    }
    for (name, schema) in &spec.inputs {
        props.insert(name.clone(), schema.clone());
        required.entry(name.clone()).or_insert(false);
    }
    let one_of_sets = alternatives_needed(nodes, &mut required)?;
    let required: Vec<&String> = required
        .iter()
        .filter(|(_, r)| **r)
        .map(|(k, _)| k)
        .collect();
    let mut schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": false
    });
    let any_of = |sets: &Vec<Vec<String>>| json!({"anyOf": sets.iter().map(|s| json!({"required": s})).collect::<Vec<_>>()});
    match one_of_sets.as_slice() {
        [] => {}
        [sets] => schema["anyOf"] = any_of(sets)["anyOf"].take(),
        many => schema["allOf"] = many.iter().map(any_of).collect(),
    }
    Ok(schema)
}

/// Nodes whose schema needs one of several parameters (`id` or `filter`:
/// an `anyOf` of `required` sets) where only omittable run inputs supply
/// them: the inputs one alternative needs become required when it is the
/// only one; with several, the run inputs need one of the sets (returned,
/// per node). A node no alternative can be supplied for is a build error.
fn alternatives_needed(
    nodes: &[PlanNode],
    required: &mut BTreeMap<String, bool>,
) -> Result<Vec<Vec<Vec<String>>>> {
    let mut out = Vec::new();
    for n in nodes {
        let schema = n.kind.input_schema();
        let Some(alternatives) = schema.get("anyOf").and_then(Value::as_array) else {
            continue;
        };
        let items: &[(String, Tpl)] = match &n.params {
            Tpl::Object(items) => items,
            _ => &[],
        };
        let literal: Vec<&str> = match &n.params {
            Tpl::Literal(Value::Object(m)) => m.keys().map(String::as_str).collect(),
            _ => Vec::new(),
        };
        // What supplies parameter `k`: always (a literal, a connection, a
        // required input), an omittable input (its name), or nothing.
        let supply = |k: &str| -> Option<Option<String>> {
            if literal.contains(&k) || n.incoming.iter().any(|e| e.to_path[0] == k) {
                return Some(None);
            }
            match items.iter().find(|(key, _)| key == k).map(|(_, t)| t) {
                None => None,
                Some(Tpl::Whole(name)) if !required.get(name).copied().unwrap_or(true) => {
                    Some(Some(name.clone()))
                }
                Some(_) => Some(None),
            }
        };
        let mut sets: Vec<Vec<String>> = Vec::new();
        let mut always = false;
        for alt in alternatives {
            let keys: Vec<&str> = json_schema::required(alt).collect();
            let supplied: Option<Vec<Option<String>>> = keys.iter().map(|k| supply(k)).collect();
            match supplied {
                Some(s) if s.iter().all(Option::is_none) => always = true,
                Some(s) => sets.push(s.into_iter().flatten().collect()),
                None => {}
            }
        }
        if always {
            continue;
        }
        match sets.len() {
            0 => {
                let names: Vec<String> = alternatives
                    .iter()
                    .map(|a| {
                        json_schema::required(a)
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(" and ")
                    })
                    .collect();
                return Err(build_error(
                    &n.id,
                    format!(
                        "node `{}` ({}) needs {}, but neither its params nor a connection supply it",
                        n.id,
                        n.node_type,
                        names.join(" or ")
                    ),
                ));
            }
            1 => {
                for name in sets.pop().expect("one set") {
                    required.insert(name, true);
                }
            }
            _ => out.push(sets),
        }
    }
    Ok(out)
}

fn strip_default(mut schema: Value) -> Value {
    if let Value::Object(m) = &mut schema {
        m.remove("default");
    }
    schema
}
