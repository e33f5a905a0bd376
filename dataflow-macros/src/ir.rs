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

/// Checksums are persisted in every database's model registry, so the exact
/// values the macro produces for these models must never change.
#[cfg(test)]
mod pinned_checksums {
    use crate::parse::parse_model;
    use proc_macro2::TokenStream;
    use quote::quote;

    fn checksum(attr: TokenStream, item: TokenStream) -> u64 {
        parse_model(attr, syn::parse2(item).unwrap())
            .unwrap()
            .checksum()
    }

    /// Recorded from the macro as of f21bc8d, before the canonical form was
    /// written out explicitly; one per case below, in order.
    const PINNED: [u64; 5] = [
        0x253383a2fa0a991c,
        0x24f23001d95307ea,
        0x1f9c3be71ad07a00,
        0x08e0add0701248dc,
        0xa736d5a5fa37d27d,
    ];

    #[test]
    fn checksums_of_existing_models_never_change() {
        let cases = cases();
        assert_eq!(cases.len(), PINNED.len());
        for (i, ((attr, item), pinned)) in cases.into_iter().zip(PINNED).enumerate() {
            assert_eq!(checksum(attr, item), pinned, "case {i}");
        }
    }

    fn cases() -> Vec<(TokenStream, TokenStream)> {
        vec![
            (
                quote!(),
                quote! {
                    pub struct User {
                        pub id: String,
                        #[field(unique)]
                        pub email: String,
                        pub full_name: Option<String>,
                        #[field(default = true)]
                        pub active: bool,
                    }
                },
            ),
            (
                quote!(
                    table = "chat_sessions",
                    soft_delete,
                    timestamps = false,
                    cache_ttl = "30s"
                ),
                quote! {
                    pub struct Session {
                        pub id: i64,
                        #[field(references = "User", on_delete = "cascade", index)]
                        pub user_id: String,
                        #[field(max_length = 64, column = "session_token", renamed_from = "tok")]
                        pub token: String,
                        #[field(skip)]
                        pub scratch: Vec<String>,
                    }
                },
            ),
            (
                quote!(tenant_scoped, audit, append_only),
                quote! {
                    pub struct AllTypes {
                        #[field(primary_key)]
                        pub key: uuid::Uuid,
                        pub s: String,
                        pub a: i16,
                        pub b: i32,
                        pub c: i64,
                        pub d: f32,
                        pub e: f64,
                        pub f: bool,
                        pub g: chrono::DateTime<chrono::Utc>,
                        pub h: chrono::NaiveDate,
                        pub i: Uuid,
                        pub j: serde_json::Value,
                        pub k: Vec<u8>,
                        pub os: Option<String>,
                        pub oa: Option<i16>,
                        pub ob: Option<i32>,
                        pub oc: Option<i64>,
                        pub od: Option<f32>,
                        pub oe: Option<f64>,
                        pub of: Option<bool>,
                        pub og: Option<DateTime<Utc>>,
                        pub oh: Option<NaiveDate>,
                        pub oi: Option<Uuid>,
                        pub oj: Option<JsonValue>,
                        pub ok: Option<Vec<u8>>,
                    }
                },
            ),
            (
                quote!(timestamps = true, soft_delete = false),
                quote! {
                    pub struct Defaults {
                        pub id: i32,
                        #[field(default = 0)]
                        pub zero: i16,
                        #[field(default = -12)]
                        pub neg: i32,
                        #[field(default = 9223372036854775807)]
                        pub big: i64,
                        #[field(default = 1.5)]
                        pub half: f64,
                        #[field(default = -0.25)]
                        pub negf: f32,
                        #[field(default = 3)]
                        pub int_for_float: f64,
                        #[field(default = 1e20)]
                        pub huge: f64,
                        #[field(default = 1e-7)]
                        pub tiny: f64,
                        #[field(default = 2.0)]
                        pub two: f64,
                        #[field(default = false)]
                        pub off: bool,
                        #[field(default = "draft")]
                        pub status: String,
                        #[field(default = "say \"hi\"\\ \n\ttab 'q' é ü 日本 \u{7f} \u{301}x")]
                        pub escaped: String,
                        #[field(default = "")]
                        pub empty: Option<String>,
                        pub created_at: chrono::DateTime<Utc>,
                    }
                },
            ),
            (
                quote!(table = "line_items"),
                quote! {
                    pub struct OrderItem {
                        pub id: i64,
                        #[field(references = "Order", on_delete = "restrict")]
                        pub order_id: i64,
                        #[field(references = "Product", on_delete = "set_null")]
                        pub product_id: Option<i64>,
                        #[field(references = "Coupon", on_delete = "no_action", unique = true)]
                        pub coupon_id: Option<String>,
                        #[field(references = "Warehouse")]
                        pub warehouse_id: String,
                        #[field(index = false, unique = false, primary_key = false)]
                        pub plain: String,
                        #[field(renamed_from = "qty", column = "quantity_col")]
                        pub quantity: i32,
                        #[field(max_length = 255, unique, index)]
                        pub sku: Option<String>,
                    }
                },
            ),
        ]
    }
}
