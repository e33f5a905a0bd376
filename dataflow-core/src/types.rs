//! What a field is: its storage type, who generates its value, and what
//! happens to it when the row it references is deleted.

/// The storage type of one field, independent of the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
pub enum FieldType {
    /// `String`
    String,
    /// `i16`
    I16,
    /// `i32`
    I32,
    /// `i64`
    I64,
    /// `f32`
    F32,
    /// `f64`
    F64,
    /// `bool`
    Bool,
    /// `chrono::DateTime<Utc>`
    DateTime,
    /// `chrono::NaiveDate`
    Date,
    /// `uuid::Uuid`
    Uuid,
    /// `serde_json::Value`
    Json,
    /// `Vec<u8>`
    Bytes,
}

impl FieldType {
    /// What a user must send, for error messages.
    pub fn expected(self) -> &'static str {
        match self {
            FieldType::String => "a string",
            FieldType::I16 => "an integer between -32768 and 32767",
            FieldType::I32 => "a 32-bit integer",
            FieldType::I64 => "a 64-bit integer",
            FieldType::F32 | FieldType::F64 => "a number",
            FieldType::Bool => "a boolean",
            FieldType::DateTime => "an RFC 3339 date-time string such as \"2026-01-31T12:00:00Z\"",
            FieldType::Date => "a date string such as \"2026-01-31\"",
            FieldType::Uuid => "a UUID string",
            FieldType::Json => "any JSON value",
            FieldType::Bytes => "an array of bytes (integers 0-255)",
        }
    }

    /// `i16`, `i32` or `i64`: the types an auto-increment key can have.
    pub fn is_integer(self) -> bool {
        matches!(self, FieldType::I16 | FieldType::I32 | FieldType::I64)
    }
}

/// `#[field(on_delete = "...")]`: the referential action of a foreign key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
pub enum OnDelete {
    /// `"cascade"`: delete the referencing rows too.
    Cascade,
    /// `"restrict"`: refuse the delete while rows reference it.
    Restrict,
    /// `"set_null"`: clear the reference (the field must be an `Option`).
    SetNull,
    /// `"no_action"`, the default: the database's deferred refusal.
    NoAction,
}

impl OnDelete {
    /// The SQL spelling, as in `ON DELETE SET NULL`.
    pub fn sql(self) -> &'static str {
        match self {
            OnDelete::Cascade => "CASCADE",
            OnDelete::Restrict => "RESTRICT",
            OnDelete::SetNull => "SET NULL",
            OnDelete::NoAction => "NO ACTION",
        }
    }
}

/// Who fills a field's value when the user does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
pub enum Generated {
    /// A value the user supplies.
    No,
    /// A UUID v7 primary key generated on create when absent.
    Uuid7,
    /// An auto-increment integer primary key.
    AutoIncrement,
    /// `created_at` (timestamps): set on create.
    CreatedAt,
    /// `updated_at` (timestamps): set on create and every update.
    UpdatedAt,
    /// `deleted_at` (soft delete): set by Delete.
    DeletedAt,
    /// `tenant_id` on tenant-scoped models: bound from the execution context.
    Tenant,
    /// `version` on versioned models: 1 on create, incremented by every update.
    Version,
}
