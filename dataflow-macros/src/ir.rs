//! The plain description of a model that parsing produces and every
//! expansion step reads.

use syn::{Ident, ItemStruct};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    String,
    I16,
    I32,
    I64,
    F32,
    F64,
    Bool,
    DateTime,
    Date,
    Uuid,
    Json,
    Bytes,
}

impl FieldType {
    pub fn variant(self) -> &'static str {
        match self {
            FieldType::String => "String",
            FieldType::I16 => "I16",
            FieldType::I32 => "I32",
            FieldType::I64 => "I64",
            FieldType::F32 => "F32",
            FieldType::F64 => "F64",
            FieldType::Bool => "Bool",
            FieldType::DateTime => "DateTime",
            FieldType::Date => "Date",
            FieldType::Uuid => "Uuid",
            FieldType::Json => "Json",
            FieldType::Bytes => "Bytes",
        }
    }

    pub fn is_integer(self) -> bool {
        matches!(self, FieldType::I16 | FieldType::I32 | FieldType::I64)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum DefaultLit {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDelete {
    Cascade,
    Restrict,
    SetNull,
    NoAction,
}

impl OnDelete {
    pub fn variant(self) -> &'static str {
        match self {
            OnDelete::Cascade => "Cascade",
            OnDelete::Restrict => "Restrict",
            OnDelete::SetNull => "SetNull",
            OnDelete::NoAction => "NoAction",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generated {
    No,
    Uuid7,
    AutoIncrement,
    CreatedAt,
    UpdatedAt,
    DeletedAt,
    Tenant,
}

impl Generated {
    pub fn variant(self) -> &'static str {
        match self {
            Generated::No => "No",
            Generated::Uuid7 => "Uuid7",
            Generated::AutoIncrement => "AutoIncrement",
            Generated::CreatedAt => "CreatedAt",
            Generated::UpdatedAt => "UpdatedAt",
            Generated::DeletedAt => "DeletedAt",
            Generated::Tenant => "Tenant",
        }
    }
}

#[derive(Debug, Clone)]
pub struct FieldIr {
    pub name: String,
    pub column: String,
    pub ty: FieldType,
    pub nullable: bool,
    pub primary_key: bool,
    pub unique: bool,
    pub index: bool,
    pub default: Option<DefaultLit>,
    pub references: Option<(String, OnDelete)>,
    pub max_length: Option<u32>,
    pub renamed_from: Option<String>,
    pub generated: Generated,
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub table: Option<String>,
    pub soft_delete: bool,
    pub timestamps: bool,
    pub tenant_scoped: bool,
    pub audit: bool,
    pub cache_ttl_ms: Option<u64>,
    pub append_only: bool,
}

#[derive(Debug)]
pub struct ModelIr {
    pub ident: Ident,
    pub name: String,
    pub table: String,
    pub options: Options,
    /// Persisted fields, user-declared first, then the managed ones.
    pub fields: Vec<FieldIr>,
    /// The user's struct with the `#[field]` attributes removed.
    pub item: ItemStruct,
    /// Which serde derives the macro must add (the user may derive them).
    pub derive_serialize: bool,
    pub derive_deserialize: bool,
}

impl ModelIr {
    /// The canonical text the checksum is computed over: every property that
    /// changes the database shape or the node contract.
    pub fn canonical(&self) -> String {
        let o = &self.options;
        let mut s = format!(
            "model={};table={};soft_delete={};timestamps={};tenant={};audit={};append_only={};",
            self.name,
            self.table,
            o.soft_delete,
            o.timestamps,
            o.tenant_scoped,
            o.audit,
            o.append_only
        );
        for f in &self.fields {
            s.push_str(&format!(
                "field={}:{}:{:?}:n{}:pk{}:u{}:i{}:d{:?}:r{:?}:m{:?}:rf{:?}:g{:?};",
                f.name,
                f.column,
                f.ty,
                f.nullable,
                f.primary_key,
                f.unique,
                f.index,
                f.default,
                f.references,
                f.max_length,
                f.renamed_from,
                f.generated
            ));
        }
        s
    }

    pub fn checksum(&self) -> u64 {
        fnv1a64(self.canonical().as_bytes())
    }
}

pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// `User` → `users`, `Category` → `categories`, `Address` → `addresses`.
pub fn default_table_name(struct_name: &str) -> String {
    let mut snake = String::new();
    for (i, c) in struct_name.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                snake.push('_');
            }
            snake.extend(c.to_lowercase());
        } else {
            snake.push(c);
        }
    }
    let bytes = snake.as_bytes();
    let n = bytes.len();
    if snake.ends_with('s')
        || snake.ends_with('x')
        || snake.ends_with('z')
        || snake.ends_with("ch")
        || snake.ends_with("sh")
    {
        snake.push_str("es");
    } else if n >= 2 && bytes[n - 1] == b'y' && !b"aeiou".contains(&bytes[n - 2]) {
        snake.pop();
        snake.push_str("ies");
    } else {
        snake.push('s');
    }
    snake
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_snake_case_plurals() {
        assert_eq!(default_table_name("User"), "users");
        assert_eq!(default_table_name("Category"), "categories");
        assert_eq!(default_table_name("Address"), "addresses");
        assert_eq!(default_table_name("OrderItem"), "order_items");
        assert_eq!(default_table_name("Day"), "days");
        assert_eq!(default_table_name("Box"), "boxes");
    }
}
