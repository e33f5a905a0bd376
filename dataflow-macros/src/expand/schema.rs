//! `impl ::dataflow::Model` with the constant schema.

use super::tokens::Path;
use crate::ir::{DefaultLit, FieldIr, ModelIr};
use proc_macro2::TokenStream;
use quote::quote;

fn opt_str(v: &Option<String>) -> TokenStream {
    match v {
        Some(s) => quote!(::core::option::Option::Some(#s)),
        None => quote!(::core::option::Option::None),
    }
}

fn field(f: &FieldIr) -> TokenStream {
    let FieldIr {
        name,
        column,
        nullable,
        unique,
        index,
        ..
    } = f;
    let primary_key = f.is_primary_key();
    let ty = Path(f.ty);
    let generated = Path(f.generated);
    let default = match &f.default {
        None => quote!(::core::option::Option::None),
        Some(d) => {
            let v = match &d.value {
                DefaultLit::Bool(b) => quote!(Bool(#b)),
                DefaultLit::Int(i) => quote!(Int(#i)),
                DefaultLit::Float(x) => quote!(Float(#x)),
                DefaultLit::Str(s) => quote!(Str(#s)),
            };
            quote!(::core::option::Option::Some(::dataflow::schema::DefaultValue::#v))
        }
    };
    let references = match f.foreign_key() {
        None => quote!(::core::option::Option::None),
        Some((model, on_delete)) => {
            let on_delete = Path(on_delete);
            quote!(::core::option::Option::Some(::dataflow::schema::ForeignKey {
                model: #model,
                on_delete: #on_delete,
            }))
        }
    };
    let max_length = match f.max_length.as_ref().map(|m| m.value) {
        Some(n) => quote!(::core::option::Option::Some(#n)),
        None => quote!(::core::option::Option::None),
    };
    let renamed_from = opt_str(&f.renamed_from);
    let sensitive = f.sensitive.is_some();
    quote! {
        ::dataflow::schema::FieldSchema {
            name: #name,
            column: #column,
            ty: #ty,
            nullable: #nullable,
            primary_key: #primary_key,
            unique: #unique,
            index: #index,
            default: #default,
            references: #references,
            max_length: #max_length,
            renamed_from: #renamed_from,
            sensitive: #sensitive,
            generated: #generated,
        }
    }
}

/// `impl Model` with `const SCHEMA`.
pub(super) fn expand(ir: &ModelIr) -> TokenStream {
    let ident = &ir.ident;
    let name = &ir.name;
    let table = &ir.table;
    let fields = ir.fields.iter().map(field);
    let o = &ir.options;
    let (soft_delete, timestamps, tenant_scoped, append_only, versioned) = (
        o.soft_delete,
        o.timestamps,
        o.tenant_scoped,
        o.append_only,
        o.versioned,
    );
    let audit = match o.audit {
        Some(on) => quote!(::core::option::Option::Some(#on)),
        None => quote!(::core::option::Option::None),
    };
    let cache_ttl_ms = match o.cache_ttl_ms {
        Some(ms) => quote!(::core::option::Option::Some(#ms)),
        None => quote!(::core::option::Option::None),
    };
    let checksum = ir.checksum();
    quote! {
        impl ::dataflow::Model for #ident {
            const SCHEMA: ::dataflow::schema::ModelSchema = ::dataflow::schema::ModelSchema {
                name: #name,
                table: #table,
                fields: &[#(#fields),*],
                options: ::dataflow::schema::ModelOptions {
                    soft_delete: #soft_delete,
                    timestamps: #timestamps,
                    tenant_scoped: #tenant_scoped,
                    audit: #audit,
                    cache_ttl_ms: #cache_ttl_ms,
                    append_only: #append_only,
                    versioned: #versioned,
                },
                checksum: #checksum,
            };
        }
    }
}
