//! The plain description of a model that parsing produces and every
//! expansion step reads.

use dataflow_core::checksum::{self, DefaultShape, FieldShape, ModelShape};
use dataflow_core::{FieldType, Generated, OnDelete};
use syn::{Ident, ItemStruct};

#[derive(Debug, Clone, PartialEq)]
pub enum DefaultLit {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
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
    /// The model as the checksum sees it: every property that changes the
    /// database shape or the node contract.
    fn with_shape<R>(&self, f: impl FnOnce(&ModelShape<'_>) -> R) -> R {
        let fields: Vec<FieldShape<'_>> = self.fields.iter().map(FieldIr::shape).collect();
        let o = &self.options;
        f(&ModelShape {
            name: &self.name,
            table: &self.table,
            soft_delete: o.soft_delete,
            timestamps: o.timestamps,
            tenant_scoped: o.tenant_scoped,
            audit: o.audit,
            append_only: o.append_only,
            fields: &fields,
        })
    }

    /// The checksum persisted with the model: see [`dataflow_core::checksum`].
    pub fn checksum(&self) -> u64 {
        self.with_shape(checksum::checksum)
    }
}

impl FieldIr {
    fn shape(&self) -> FieldShape<'_> {
        FieldShape {
            name: &self.name,
            column: &self.column,
            ty: self.ty,
            nullable: self.nullable,
            primary_key: self.primary_key,
            unique: self.unique,
            index: self.index,
            default: self.default.as_ref().map(|d| match d {
                DefaultLit::Bool(b) => DefaultShape::Bool(*b),
                DefaultLit::Int(i) => DefaultShape::Int(*i),
                DefaultLit::Float(x) => DefaultShape::Float(*x),
                DefaultLit::Str(s) => DefaultShape::Str(s),
            }),
            references: self.references.as_ref().map(|(m, a)| (m.as_str(), *a)),
            max_length: self.max_length,
            renamed_from: self.renamed_from.as_deref(),
            generated: self.generated,
        }
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
