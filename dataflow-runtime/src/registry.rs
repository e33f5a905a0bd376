//! The registry: which models and node types a [`DataFlow`] knows, checked
//! once at boot, and what every run of a model's nodes needs prepared.
//!
//! Sits between the nodes and the handle: `nodes → registry → dataflow →
//! workflow`. The workflow planner looks node types up here.
//!
//! [`DataFlow`]: crate::DataFlow

use crate::error::{Error, ErrorCode, Result};
use crate::node::{Node, BUILTINS, NODES};
use crate::nodes;
use crate::schema::{FieldSchema, FieldType, Generated, ModelSchema, Op};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

/// The compiled model registry, filled by `#[dataflow::model]` at link time.
#[linkme::distributed_slice]
pub static MODELS: [&'static ModelSchema];

/// A registered node type: a model's generated node or a hand-written one.
#[derive(Clone, Copy)]
pub(crate) enum NodeRef {
    Model(&'static ModelSchema, Op),
    Custom(&'static dyn Node),
}

impl NodeRef {
    pub(crate) fn input_schema(self) -> Value {
        match self {
            NodeRef::Model(m, op) => nodes::input_schema(m, op),
            NodeRef::Custom(n) => n.input_schema(),
        }
    }

    pub(crate) fn joins_any(self) -> bool {
        matches!(self, NodeRef::Custom(n) if n.joins_any())
    }
}

/// What every run of a model's nodes needs, built once at boot.
#[derive(Clone)]
pub(crate) struct Prepared {
    pub(crate) schema: &'static ModelSchema,
    /// Node type names, indexed by `Op as usize`.
    pub(crate) nodes: Vec<String>,
    pub(crate) columns: String,
}

impl Prepared {
    pub(crate) fn new(m: &'static ModelSchema) -> Self {
        Prepared {
            schema: m,
            nodes: m.node_names().map(|(n, _)| n).collect(),
            columns: crate::sql::columns(m),
        }
    }
}

/// The checked models, the node table and the prepared per-model data.
pub(crate) struct Registry {
    models: Vec<&'static ModelSchema>,
    nodes: HashMap<String, NodeRef>,
    prepared: HashMap<&'static str, Prepared>,
    /// The audit log is on for some model: its table is migrated with the
    /// models and `AuditListNode` is registered.
    audit: bool,
}

impl Registry {
    /// Checks `models` (every linked model when `None`) and builds the node
    /// table. `multi_tenant` is whether `tenant_scoped` models are allowed.
    pub(crate) fn new(
        models: Option<Vec<&'static ModelSchema>>,
        multi_tenant: bool,
    ) -> Result<Registry> {
        let models = validate(models.unwrap_or_else(|| MODELS.to_vec()), multi_tenant)?;
        let nodes = node_table(&models)?;
        let prepared = models.iter().map(|m| (m.name, Prepared::new(m))).collect();
        Ok(Registry {
            models,
            nodes,
            prepared,
            audit: false,
        })
    }

    /// Turns the audit log on when `enable_audit_log` or a model's `audit`
    /// option asks for it: registers `AuditListNode` and adds the audit
    /// table to what boot migrates.
    pub(crate) fn with_audit(mut self, enable_audit_log: bool) -> Result<Registry> {
        self.audit = enable_audit_log || self.models.iter().any(|m| m.options.audit == Some(true));
        if self.audit {
            let node: &'static dyn Node = &crate::audit::AuditListNode;
            if self
                .nodes
                .insert(node.name().to_string(), NodeRef::Custom(node))
                .is_some()
            {
                return Err(Error::new(
                    ErrorCode::Config,
                    format!("the node type `{}` is built in with the audit log; rename the hand-written node of that name", node.name()),
                ));
            }
        }
        Ok(self)
    }

    /// What boot and the migration commands bring the database to: the
    /// models, and the audit table when the audit log is on.
    pub(crate) fn schema_models(&self) -> Vec<&'static ModelSchema> {
        let mut all = self.models.clone();
        if self.audit {
            all.push(&crate::audit::AUDIT);
        }
        all
    }

    /// No models and no nodes: for tools that read the persisted registry only.
    pub(crate) fn empty() -> Registry {
        Registry {
            models: Vec::new(),
            nodes: HashMap::new(),
            prepared: HashMap::new(),
            audit: false,
        }
    }

    /// The registered models, sorted by name.
    pub(crate) fn models(&self) -> &[&'static ModelSchema] {
        &self.models
    }

    /// Every registered node type name, sorted.
    pub(crate) fn node_types(&self) -> Vec<String> {
        let mut names: Vec<String> = self.nodes.keys().cloned().collect();
        names.sort();
        names
    }

    /// The node type called `node`, or an `unknown_node` error with a suggestion.
    pub(crate) fn lookup(&self, node: &str) -> Result<NodeRef> {
        match self.nodes.get(node) {
            Some(r) => Ok(*r),
            None => {
                let hint = crate::value::did_you_mean(node, self.nodes.keys().map(String::as_str));
                Err(Error::new(
                    ErrorCode::UnknownNode,
                    format!("unknown node type `{}`{hint}", Error::echo(node)),
                )
                .with_node(node))
            }
        }
    }

    /// The names and column list of `m`, prepared at boot; a model this
    /// database was not booted with (a typed node of another model) gets
    /// them made on the spot.
    pub(crate) fn prepared(&self, m: &'static ModelSchema) -> Cow<'_, Prepared> {
        match self.prepared.get(m.name) {
            Some(p) if std::ptr::eq(p.schema, m) => Cow::Borrowed(p),
            _ => Cow::Owned(Prepared::new(m)),
        }
    }
}

/// What the macro guarantees, re-checked for schemas built by hand and
/// passed to `DataFlowBuilder::models`: fields, exactly one primary key,
/// unique field and column names.
fn check_schema(m: &ModelSchema) -> Result<()> {
    let bad = |why: String| {
        Err(Error::new(ErrorCode::Config, format!("model `{}` {why}", m.name)).with_model(m.name))
    };
    if m.fields.is_empty() {
        return bad("has no fields".into());
    }
    let keys: Vec<&str> = m
        .fields
        .iter()
        .filter(|f| f.primary_key)
        .map(|f| f.name)
        .collect();
    if keys.len() != 1 {
        return bad(format!(
            "must have exactly one primary key field, and has {}{}",
            keys.len(),
            if keys.is_empty() {
                String::new()
            } else {
                format!(" ({})", keys.join(", "))
            }
        ));
    }
    let (mut names, mut columns) = (HashSet::new(), HashSet::new());
    for f in m.fields {
        if !names.insert(f.name) {
            return bad(format!("has two fields named `{}`", f.name));
        }
        if !columns.insert(f.column) {
            return bad(format!(
                "has two fields stored in the column `{}`",
                f.column
            ));
        }
    }
    Ok(())
}

/// The models, checked: not empty, no duplicate names or tables, every
/// schema well formed (hand-built ones too), every reference known, and
/// tenancy consistent (see [`check_tenancy`]).
fn validate(
    mut models: Vec<&'static ModelSchema>,
    multi_tenant: bool,
) -> Result<Vec<&'static ModelSchema>> {
    if models.is_empty() {
        return Err(Error::new(
            ErrorCode::Config,
            "no models are registered: declare structs with #[dataflow::model], and if they live in another crate \
             that this binary never names, link it with `use my_models as _;`",
        ));
    }
    models.sort_by_key(|m| m.name);
    for pair in models.windows(2) {
        if pair[0].name == pair[1].name {
            return Err(Error::new(
                ErrorCode::Config,
                format!(
                    "two models are named `{}`; model names must be unique",
                    pair[0].name
                ),
            ));
        }
    }
    let mut tables: HashMap<&str, &str> = HashMap::new();
    for m in &models {
        if let Some(other) = tables.insert(m.table, m.name) {
            return Err(Error::new(
                ErrorCode::Config,
                format!("models `{other}` and `{}` both use the table `{}`; set #[dataflow::model(table = \"...\")]", m.name, m.table),
            ));
        }
        check_schema(m)?;
        check_tenancy(m, multi_tenant)?;
        for f in m.fields {
            if let Some(fk) = f.references {
                let Some(target) = models.iter().find(|t| t.name == fk.model) else {
                    return Err(Error::new(
                        ErrorCode::Config,
                        format!(
                            "{}.{} references `{}`, which is not a registered model",
                            m.name, f.name, fk.model
                        ),
                    ));
                };
                check_reference(m, f, target)?;
                let pk = target.primary_key();
                let compatible = pk.ty == f.ty || (pk.ty.is_integer() && f.ty.is_integer());
                if !compatible {
                    return Err(Error::new(
                        ErrorCode::Config,
                        format!(
                            "{}.{} is {:?} but references {}.{} which is {:?}",
                            m.name, f.name, f.ty, target.name, pk.name, pk.ty
                        ),
                    ));
                }
            }
        }
    }
    Ok(models)
}

/// A `tenant_scoped` model needs `multi_tenant(true)` (without it nothing
/// would bind the tenant: fail closed) and a managed `tenant_id` text
/// column (the macro adds it; hand-built schemas are checked).
fn check_tenancy(m: &ModelSchema, multi_tenant: bool) -> Result<()> {
    let tenant = m.field_with(Generated::Tenant);
    let bad = |why: String| Err(Error::new(ErrorCode::Config, why).with_model(m.name));
    if !m.options.tenant_scoped {
        return match tenant {
            Some(f) => bad(format!(
                "model `{}` has a tenant field `{}` but is not tenant_scoped",
                m.name, f.name
            )),
            None => Ok(()),
        };
    }
    if !multi_tenant {
        return bad(format!(
            "model `{}` is tenant_scoped, but multi-tenancy is off: turn it on with \
             DataFlow::builder(..).multi_tenant(true) (config `multi_tenant`, env \
             DATAFLOW_MULTI_TENANT=true), or remove tenant_scoped from the model",
            m.name
        ));
    }
    match tenant {
        Some(f) if f.ty == FieldType::String && !f.nullable && !f.primary_key => Ok(()),
        Some(f) => bad(format!(
            "model `{}`: the tenant field `{}` must be a non-optional String that is not the primary key",
            m.name, f.name
        )),
        None => bad(format!(
            "model `{}` is tenant_scoped but has no tenant field (Generated::Tenant); \
             #[dataflow::model(tenant_scoped)] adds `tenant_id`",
            m.name
        )),
    }
}

/// A reference must not cross out of a tenant: a global model cannot
/// reference a tenant-scoped one (its rows would point into any tenant).
fn check_reference(m: &ModelSchema, f: &FieldSchema, target: &ModelSchema) -> Result<()> {
    if target.options.tenant_scoped && !m.options.tenant_scoped {
        return Err(Error::new(
            ErrorCode::Config,
            format!(
                "{}.{} references `{}`, which is tenant_scoped, but `{}` is not: a global record \
                 could point into any tenant; make `{}` tenant_scoped too, or drop the reference",
                m.name, f.name, target.name, m.name, m.name
            ),
        )
        .with_model(m.name)
        .with_field(f.name));
    }
    Ok(())
}

/// Every node type by name: twelve per model, then the hand-written ones.
fn node_table(models: &[&'static ModelSchema]) -> Result<HashMap<String, NodeRef>> {
    let mut nodes = HashMap::with_capacity(models.len() * Op::ALL.len() + NODES.len());
    for m in models {
        for (name, op) in m.node_names() {
            nodes.insert(name, NodeRef::Model(m, op));
        }
    }
    for n in NODES.iter().chain(BUILTINS.iter()) {
        if nodes
            .insert(n.name().to_string(), NodeRef::Custom(*n))
            .is_some()
        {
            return Err(Error::new(
                ErrorCode::Config,
                format!("two node types are named `{}`; node names must be unique (model nodes are `<Model><Op>Node`)", n.name()),
            ));
        }
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{FieldSchema, FieldType, ForeignKey, ModelOptions, OnDelete};

    const fn field(name: &'static str, primary_key: bool) -> FieldSchema {
        FieldSchema {
            primary_key,
            ..crate::nodes::fixtures::field(name, FieldType::I64)
        }
    }

    const OPTIONS: ModelOptions = ModelOptions {
        soft_delete: false,
        timestamps: false,
        tenant_scoped: false,
        audit: None,
        cache_ttl_ms: None,
        append_only: false,
        versioned: false,
    };

    const fn model(name: &'static str, fields: &'static [FieldSchema]) -> ModelSchema {
        ModelSchema {
            name,
            table: name,
            fields,
            options: OPTIONS,
            checksum: 0,
        }
    }

    static NO_KEY: ModelSchema = model("NoKey", &[field("a", false)]);
    static TWO_KEYS: ModelSchema = model("TwoKeys", &[field("a", true), field("b", true)]);
    static NO_FIELDS: ModelSchema = model("NoFields", &[]);
    static SAME_COLUMN: ModelSchema = model(
        "SameColumn",
        &[
            field("id", true),
            FieldSchema {
                column: "id",
                ..field("other", false)
            },
        ],
    );
    static DANGLING: ModelSchema = model(
        "Dangling",
        &[
            field("id", true),
            FieldSchema {
                references: Some(ForeignKey {
                    model: "Missing",
                    on_delete: OnDelete::Cascade,
                }),
                ..field("parent", false)
            },
        ],
    );
    static GOOD: ModelSchema = model("Good", &[field("id", true)]);

    fn refused(m: &'static ModelSchema) -> Error {
        match Registry::new(Some(vec![m]), false) {
            Ok(_) => panic!("{} was accepted", m.name),
            Err(e) => e,
        }
    }

    #[test]
    fn hand_built_schemas_are_checked_like_macro_output() {
        let e = refused(&NO_KEY);
        assert_eq!(e.code(), ErrorCode::Config);
        assert!(
            e.message()
                .contains("exactly one primary key field, and has 0"),
            "{e}"
        );
        let e = refused(&TWO_KEYS);
        assert!(e.message().contains("has 2 (a, b)"), "{e}");
        assert!(refused(&NO_FIELDS).message().contains("has no fields"));
        assert!(refused(&SAME_COLUMN).message().contains("column `id`"));
        let e = refused(&DANGLING);
        assert!(e.message().contains("references `Missing`"), "{e}");
        let r = Registry::new(Some(vec![&GOOD]), false).unwrap();
        assert_eq!(r.models().len(), 1);
        assert_eq!(r.node_types().len(), Op::ALL.len() + BUILTINS.len());
        assert!(matches!(
            r.lookup("GoodReadNode"),
            Ok(NodeRef::Model(_, Op::Read))
        ));
        let e = r.lookup("GoodRaedNode").err().unwrap();
        assert_eq!(e.code(), ErrorCode::UnknownNode);
        assert!(e.message().contains("did you mean `GoodReadNode`"), "{e}");
    }
}
