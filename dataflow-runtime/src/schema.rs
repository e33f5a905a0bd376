//! Compile-time model descriptions.
//!
//! `#[dataflow::model]` expands every struct into one `const` [`ModelSchema`].
//! Everything the runtime does (validation, SQL, JSON Schemas) is driven by
//! these constants, so no per-model code runs at start-up.

use serde::Serialize;

pub use dataflow_core::{node_name, FieldType, Generated, OnDelete, Op};

/// The JSON Schema of a [`FieldType`]'s values; lives here rather than in
/// `dataflow-core` because that crate has no dependencies.
pub trait FieldTypeExt {
    /// The JSON Schema fragment describing values of this type.
    fn json_schema(self) -> serde_json::Value;
}

impl FieldTypeExt for FieldType {
    fn json_schema(self) -> serde_json::Value {
        use serde_json::json;
        match self {
            FieldType::String => json!({"type": "string"}),
            FieldType::I16 => json!({"type": "integer", "minimum": i16::MIN, "maximum": i16::MAX}),
            FieldType::I32 => json!({"type": "integer", "minimum": i32::MIN, "maximum": i32::MAX}),
            FieldType::I64 => json!({"type": "integer"}),
            FieldType::F32 | FieldType::F64 => json!({"type": "number"}),
            FieldType::Bool => json!({"type": "boolean"}),
            FieldType::DateTime => json!({"type": "string", "format": "date-time"}),
            FieldType::Date => json!({"type": "string", "format": "date"}),
            FieldType::Uuid => json!({"type": "string", "format": "uuid"}),
            FieldType::Json => json!({}),
            FieldType::Bytes => {
                json!({"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}})
            }
        }
    }
}

/// A literal from `#[field(default = ...)]`, type-checked by the macro.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(untagged)]
pub enum DefaultValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'static str),
}

impl DefaultValue {
    pub fn to_json(self) -> serde_json::Value {
        match self {
            DefaultValue::Bool(b) => b.into(),
            DefaultValue::Int(i) => i.into(),
            DefaultValue::Float(f) => serde_json::Number::from_f64(f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            DefaultValue::Str(s) => s.into(),
        }
    }
}

/// `#[field(references = "Model", on_delete = "...")]`: a foreign key to
/// that model's primary key, resolved against the registry at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ForeignKey {
    pub model: &'static str,
    pub on_delete: OnDelete,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FieldSchema {
    /// The name used in JSON and in Rust.
    pub name: &'static str,
    /// The column name (`#[field(column = "...")]`, default: the field name).
    pub column: &'static str,
    pub ty: FieldType,
    pub nullable: bool,
    pub primary_key: bool,
    pub unique: bool,
    pub index: bool,
    pub default: Option<DefaultValue>,
    pub references: Option<ForeignKey>,
    pub max_length: Option<u32>,
    pub renamed_from: Option<&'static str>,
    pub generated: Generated,
}

impl FieldSchema {
    /// Whether a Create must carry this field.
    pub fn required_on_create(&self) -> bool {
        !self.nullable && self.default.is_none() && self.generated == Generated::No
    }

    /// Whether users may set this field in Create/Update input.
    pub fn writable(&self) -> bool {
        matches!(self.generated, Generated::No | Generated::Uuid7)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ModelOptions {
    pub soft_delete: bool,
    pub timestamps: bool,
    pub tenant_scoped: bool,
    pub audit: bool,
    /// `cache_ttl = "30s"`, parsed by the macro.
    pub cache_ttl_ms: Option<u64>,
    pub append_only: bool,
}

/// Everything the runtime knows about one model, fixed at compile time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ModelSchema {
    pub name: &'static str,
    pub table: &'static str,
    /// Persisted fields in declaration order, including the managed ones
    /// (`created_at`, `updated_at`, `deleted_at`, `tenant_id`).
    pub fields: &'static [FieldSchema],
    pub options: ModelOptions,
    /// FNV-1a 64 over the canonical schema (`dataflow_core::checksum`),
    /// computed by the macro.
    pub checksum: u64,
}

impl ModelSchema {
    pub fn field(&self, name: &str) -> Option<&'static FieldSchema> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub fn primary_key(&self) -> &'static FieldSchema {
        // The macro guarantees exactly one primary key.
        self.fields
            .iter()
            .find(|f| f.primary_key)
            .unwrap_or(&self.fields[0])
    }

    pub fn field_with(&self, generated: Generated) -> Option<&'static FieldSchema> {
        self.fields.iter().find(|f| f.generated == generated)
    }

    /// The checksum as the fixed-width hex string stored in the registry.
    pub fn checksum_hex(&self) -> String {
        dataflow_core::checksum::to_hex(self.checksum)
    }

    /// The names of the eleven node types of this model.
    pub fn node_names(&self) -> impl Iterator<Item = (String, Op)> + '_ {
        Op::ALL
            .iter()
            .map(move |op| (node_name(self.name, *op), *op))
    }
}

/// A model type declared with `#[dataflow::model]`.
pub trait Model: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static {
    const SCHEMA: ModelSchema;
}
