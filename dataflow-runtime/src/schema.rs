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
            // Text cannot hold NUL (PostgreSQL refuses it): said as a pattern.
            FieldType::String => json!({"type": "string", "pattern": "^[^\\u0000]*$"}),
            FieldType::I16 => json!({"type": "integer", "minimum": i16::MIN, "maximum": i16::MAX}),
            FieldType::I32 => json!({"type": "integer", "minimum": i32::MIN, "maximum": i32::MAX}),
            FieldType::I64 => json!({"type": "integer"}),
            FieldType::F32 => {
                json!({"type": "number", "minimum": f64::from(f32::MIN), "maximum": f64::from(f32::MAX)})
            }
            FieldType::F64 => json!({"type": "number"}),
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
    /// `default = true`
    Bool(bool),
    /// `default = 42`
    Int(i64),
    /// `default = 1.5`
    Float(f64),
    /// `default = "text"`
    Str(&'static str),
}

impl DefaultValue {
    /// The default as JSON (a non-finite float becomes `null`).
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
    /// The referenced model's name.
    pub model: &'static str,
    /// What deleting the referenced record does to this one.
    pub on_delete: OnDelete,
}

/// One persisted field of a model, as the macro read it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FieldSchema {
    /// The name used in JSON and in Rust.
    pub name: &'static str,
    /// The column name (`#[field(column = "...")]`, default: the field name).
    pub column: &'static str,
    /// The storage type.
    pub ty: FieldType,
    /// `Option<T>` in Rust: the column accepts NULL.
    pub nullable: bool,
    /// The model's primary key (exactly one field has it).
    pub primary_key: bool,
    /// `#[field(unique)]`: a unique index.
    pub unique: bool,
    /// `#[field(index)]`: a plain index.
    pub index: bool,
    /// `#[field(default = ...)]`.
    pub default: Option<DefaultValue>,
    /// `#[field(references = "Model")]`: a foreign key.
    pub references: Option<ForeignKey>,
    /// `#[field(max_length = N)]` on a string.
    pub max_length: Option<u32>,
    /// `#[field(renamed_from = "old")]`: migrations rename instead of drop + add.
    pub renamed_from: Option<&'static str>,
    /// `#[field(sensitive)]`: the audit log records `"***"` instead of the value.
    pub sensitive: bool,
    /// Who fills the value when the user does not.
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

/// The model-level options of `#[dataflow::model(...)]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ModelOptions {
    /// `soft_delete`: Delete sets `deleted_at`; reads skip deleted records.
    pub soft_delete: bool,
    /// `timestamps` (default on): managed `created_at` / `updated_at`.
    pub timestamps: bool,
    /// `tenant_scoped`: a managed `tenant_id` that every statement binds
    /// from the context (boot needs `multi_tenant(true)`).
    pub tenant_scoped: bool,
    /// `audit` (`Some(true)`): every write is recorded in the audit log;
    /// `audit = false` (`Some(false)`) opts out of `enable_audit_log`;
    /// unset (`None`) follows `enable_audit_log`.
    pub audit: Option<bool>,
    /// `cache_ttl = "30s"`: how long the query cache keeps this model's
    /// results at most (overrides the configured `cache_ttl`).
    pub cache_ttl_ms: Option<u64>,
    /// `append_only`: records can be created and read, never changed or deleted.
    pub append_only: bool,
    /// `versioned`: a managed `version` column (1 on create, incremented by
    /// every update) and `expected_version` on updates (optimistic locking).
    pub versioned: bool,
}

/// Everything the runtime knows about one model, fixed at compile time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ModelSchema {
    /// The struct's name (`User`), which names its nodes (`UserCreateNode`).
    pub name: &'static str,
    /// The table (`#[dataflow::model(table = "...")]`, default the snake_case plural).
    pub table: &'static str,
    /// Persisted fields in declaration order, including the managed ones
    /// (`created_at`, `updated_at`, `deleted_at`, `tenant_id`).
    pub fields: &'static [FieldSchema],
    /// The model-level options.
    pub options: ModelOptions,
    /// FNV-1a 64 over the canonical schema (`dataflow_core::checksum`),
    /// computed by the macro.
    pub checksum: u64,
}

impl ModelSchema {
    /// The field named `name` (its JSON / Rust name, not its column).
    pub fn field(&self, name: &str) -> Option<&'static FieldSchema> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The primary key field.
    pub fn primary_key(&self) -> &'static FieldSchema {
        // The macro guarantees exactly one primary key, and boot re-checks
        // hand-built schemas (registry.rs).
        self.fields
            .iter()
            .find(|f| f.primary_key)
            .unwrap_or(&self.fields[0])
    }

    /// Whether writes to this model are recorded in the audit log, given
    /// the database's `enable_audit_log`.
    pub fn audited(&self, enable_audit_log: bool) -> bool {
        self.options.audit.unwrap_or(enable_audit_log)
    }

    /// The field that `generated` fills (`created_at`, `deleted_at`, ...), if the model has one.
    pub fn field_with(&self, generated: Generated) -> Option<&'static FieldSchema> {
        self.fields.iter().find(|f| f.generated == generated)
    }

    /// The checksum as the fixed-width hex string stored in the registry.
    pub fn checksum_hex(&self) -> String {
        dataflow_core::checksum::to_hex(self.checksum)
    }

    /// The names of the twelve node types of this model.
    pub fn node_names(&self) -> impl Iterator<Item = (String, Op)> + '_ {
        Op::ALL
            .iter()
            .map(move |op| (node_name(self.name, *op), *op))
    }
}

/// A model type declared with `#[dataflow::model]`.
pub trait Model: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static {
    /// The model's compile-time description.
    const SCHEMA: ModelSchema;
}
