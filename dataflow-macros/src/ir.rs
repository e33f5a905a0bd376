//! The plain description of a model that parsing produces, the checks
//! complete and every expansion step reads. It keeps the spans of fields and
//! attribute values, so a check run after parsing still points at the
//! user's tokens.

use dataflow_core::checksum::{self, DefaultShape, FieldShape, ModelShape};
use dataflow_core::{FieldType, Generated, OnDelete};
use proc_macro2::{Span, TokenStream};
use syn::{Ident, ItemStruct};

/// A value set by an attribute key, with the tokens it came from (`key` or
/// `key = value`), so a later check can point at exactly that attribute, as
/// serde's `Attr` and axum's `(K, T)` do.
#[derive(Debug, Clone)]
pub(crate) struct Attr<T> {
    /// The key and value as written.
    pub tokens: TokenStream,
    /// The parsed value.
    pub value: T,
}

impl<T> Attr<T> {
    /// An error spanning the attribute, from its key to its value.
    pub(crate) fn error(&self, msg: impl std::fmt::Display) -> syn::Error {
        syn::Error::new_spanned(&self.tokens, msg)
    }
}

/// A `default = <literal>` value, type-checked against the field.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum DefaultLit {
    /// `true` / `false`
    Bool(bool),
    /// An integer, sign included.
    Int(i64),
    /// A float, sign included.
    Float(f64),
    /// A string's value.
    Str(String),
}

/// One persisted field.
#[derive(Debug, Clone)]
pub(crate) struct FieldIr {
    /// Where errors about the field point: its name, or for a managed
    /// field the model it was added to.
    pub span: Span,
    /// The field's Rust type as written; `None` for managed fields.
    pub rust_ty: Option<syn::Type>,
    /// The Rust and JSON name.
    pub name: String,
    /// The column name (`column = "..."`, default: `name`).
    pub column: String,
    /// The storage type.
    pub ty: FieldType,
    /// Whether the Rust type is an `Option`.
    pub nullable: bool,
    /// `#[field(primary_key)]`, or the `id` field the check chose.
    pub primary_key: Option<Attr<()>>,
    /// `unique`
    pub unique: bool,
    /// `index`
    pub index: bool,
    /// `default = <literal>`
    pub default: Option<Attr<DefaultLit>>,
    /// `references = "Model"`
    pub references: Option<Attr<String>>,
    /// `on_delete = "..."`; see [`FieldIr::foreign_key`].
    pub on_delete: Option<Attr<OnDelete>>,
    /// `max_length = N`
    pub max_length: Option<Attr<u32>>,
    /// `renamed_from = "old"`
    pub renamed_from: Option<String>,
    /// `sensitive`: recorded as `"***"` in the audit log.
    pub sensitive: Option<Attr<()>>,
    /// Who fills the value; set by the checks for keys and managed fields.
    pub generated: Generated,
}

impl FieldIr {
    /// A plain, user-supplied `String` field named `name`; parsing and the
    /// managed-field rules fill in the rest.
    pub(crate) fn new(name: &str, span: Span) -> Self {
        FieldIr {
            span,
            rust_ty: None,
            name: name.to_string(),
            column: name.to_string(),
            ty: FieldType::String,
            nullable: false,
            primary_key: None,
            unique: false,
            index: false,
            default: None,
            references: None,
            on_delete: None,
            max_length: None,
            renamed_from: None,
            sensitive: None,
            generated: Generated::No,
        }
    }

    /// Whether this is the model's primary key.
    pub(crate) fn is_primary_key(&self) -> bool {
        self.primary_key.is_some()
    }

    /// The foreign key: the referenced model and the `on_delete` action
    /// (`no_action` unless set).
    pub(crate) fn foreign_key(&self) -> Option<(&str, OnDelete)> {
        let action = self
            .on_delete
            .as_ref()
            .map_or(OnDelete::NoAction, |a| a.value);
        self.references.as_ref().map(|r| (r.value.as_str(), action))
    }

    /// An error pointing at the field.
    pub(crate) fn error(&self, msg: impl std::fmt::Display) -> syn::Error {
        syn::Error::new(self.span, msg)
    }

    /// The field as the checksum sees it.
    fn shape(&self) -> FieldShape<'_> {
        FieldShape {
            name: &self.name,
            column: &self.column,
            ty: self.ty,
            nullable: self.nullable,
            primary_key: self.is_primary_key(),
            unique: self.unique,
            index: self.index,
            default: self.default.as_ref().map(|d| match &d.value {
                DefaultLit::Bool(b) => DefaultShape::Bool(*b),
                DefaultLit::Int(i) => DefaultShape::Int(*i),
                DefaultLit::Float(x) => DefaultShape::Float(*x),
                DefaultLit::Str(s) => DefaultShape::Str(s),
            }),
            references: self.foreign_key(),
            max_length: self.max_length.as_ref().map(|m| m.value),
            renamed_from: self.renamed_from.as_deref(),
            generated: self.generated,
        }
    }

    /// An error pointing at the field's Rust type, else at the field.
    pub(crate) fn type_error(&self, msg: impl std::fmt::Display) -> syn::Error {
        match &self.rust_ty {
            Some(ty) => syn::Error::new_spanned(ty, msg),
            None => self.error(msg),
        }
    }
}

/// `#[dataflow::model(...)]`, as written.
#[derive(Debug, Clone, Default)]
pub(crate) struct Options {
    /// `table = "..."`
    pub table: Option<String>,
    /// `soft_delete`
    pub soft_delete: bool,
    /// `timestamps` (on unless `= false`)
    pub timestamps: bool,
    /// `tenant_scoped`
    pub tenant_scoped: bool,
    /// `audit` (`Some(true)`), `audit = false` (`Some(false)`: opts out of
    /// `enable_audit_log`), or unset.
    pub audit: Option<bool>,
    /// `cache_ttl = "30s"`, in milliseconds.
    pub cache_ttl_ms: Option<u64>,
    /// `append_only`
    pub append_only: bool,
    /// `versioned`: a managed `version` column for optimistic locking.
    pub versioned: bool,
}

/// One model: what every expansion step reads.
#[derive(Debug)]
pub(crate) struct ModelIr {
    /// The struct's name token.
    pub ident: Ident,
    /// The struct's name.
    pub name: String,
    /// The table: `table = "..."` or the default name.
    pub table: String,
    /// The model options.
    pub options: Options,
    /// Persisted fields, user-declared first, then the managed ones.
    pub fields: Vec<FieldIr>,
    /// The user's struct with the `#[field]` attributes removed.
    pub item: ItemStruct,
    /// Which serde derives the macro must add (the user may derive them).
    pub derive_serialize: bool,
    /// Likewise for `Deserialize`.
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
            // Opting out (`audit = false`) is the default's checksum.
            audit: o.audit == Some(true),
            append_only: o.append_only,
            fields: &fields,
        })
    }

    /// The checksum persisted with the model: see [`dataflow_core::checksum`].
    pub(crate) fn checksum(&self) -> u64 {
        self.with_shape(checksum::checksum)
    }
}

/// Checksums are persisted in every database's model registry, so the exact
/// values the macro produces for these models must never change.
#[cfg(test)]
mod pinned_checksums {
    use crate::expand::model_ir;
    use proc_macro2::TokenStream;
    use quote::quote;

    fn checksum(attr: TokenStream, item: TokenStream) -> u64 {
        model_ir(attr, syn::parse2(item).unwrap())
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
