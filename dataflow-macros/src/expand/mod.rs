//! IR → generated code, one module per artifact.

pub(crate) mod migrations;
pub(crate) mod node;
mod nodes;
mod register;
mod schema;
mod tokens;

use crate::errors::Errors;
use crate::{check, ir::ModelIr, parse};
use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemStruct;

/// Expands `#[dataflow::model]`. On error the struct is re-emitted (without
/// its `#[field]` attributes) next to the error, so one mistake yields one
/// message rather than a cascade of "cannot find type" errors.
pub(crate) fn model(attr: TokenStream, item: TokenStream) -> TokenStream {
    let parsed: ItemStruct = match syn::parse2(item.clone()) {
        Ok(parsed) => parsed,
        Err(err) => {
            let mut out = err.to_compile_error();
            out.extend(item);
            return out;
        }
    };
    match model_ir(attr, parsed.clone()) {
        Ok(ir) => expand(&ir),
        Err(err) => {
            let mut out = err.to_compile_error();
            out.extend(quote!(#[allow(dead_code)]));
            out.extend(strip_field_attrs(parsed));
            out
        }
    }
}

/// Parse, then check: the finished model, or every error found.
pub(crate) fn model_ir(attr: TokenStream, item: ItemStruct) -> syn::Result<ModelIr> {
    let mut errors = Errors::default();
    let mut ir = parse::parse_model(attr, item, &mut errors);
    check::check(&mut ir, &mut errors);
    errors.finish().map(|()| ir)
}

/// Everything one model expands to.
pub(crate) fn expand(ir: &ModelIr) -> TokenStream {
    let item = item_with_serde(ir);
    let schema = schema::expand(ir);
    let nodes = nodes::expand(ir);
    let register = register::expand(ir);
    quote! {
        #item
        #schema
        #nodes
        #register
    }
}

fn item_with_serde(ir: &ModelIr) -> TokenStream {
    let item = &ir.item;
    let mut derives = Vec::new();
    if ir.derive_serialize {
        derives.push(quote!(::dataflow::__private::serde::Serialize));
    }
    if ir.derive_deserialize {
        derives.push(quote!(::dataflow::__private::serde::Deserialize));
    }
    let derive = (!derives.is_empty()).then(|| {
        quote! {
            #[derive(#(#derives),*)]
            #[serde(crate = "::dataflow::__private::serde")]
        }
    });
    quote! {
        #derive
        #item
    }
}

fn strip_field_attrs(mut item: ItemStruct) -> TokenStream {
    for field in item.fields.iter_mut() {
        field.attrs.retain(|a| !a.path().is_ident("field"));
    }
    quote!(#item)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pretty(tokens: TokenStream) -> String {
        prettyplease::unparse(&syn::parse2(tokens).expect("expansion parses as a file"))
    }

    #[test]
    fn user_model_expansion() {
        let out = model(
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
        );
        insta::assert_snapshot!(pretty(out));
    }

    #[test]
    fn options_and_references_expansion() {
        let out = model(
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
        );
        insta::assert_snapshot!(pretty(out));
    }

    #[test]
    fn unknown_key_error_keeps_the_struct() {
        let out = model(
            quote!(),
            quote! {
                pub struct User { pub id: String, #[field(uniq)] pub email: String }
            },
        )
        .to_string();
        assert!(out.contains("unknown field attribute `uniq`"), "{out}");
        assert!(out.contains("help:"), "{out}");
        assert!(out.contains("struct User"), "{out}");
        assert!(!out.contains("field (uniq)"), "field attrs stripped: {out}");
    }

    #[test]
    fn checksum_changes_with_the_schema() {
        let a = model_ir(
            quote!(),
            syn::parse_quote!(
                pub struct A {
                    pub id: String,
                }
            ),
        )
        .unwrap();
        let b = model_ir(
            quote!(),
            syn::parse_quote!(
                pub struct A {
                    pub id: String,
                    pub x: Option<i32>,
                }
            ),
        )
        .unwrap();
        let a2 = model_ir(
            quote!(),
            syn::parse_quote!(
                pub struct A {
                    pub id: String,
                }
            ),
        )
        .unwrap();
        assert_ne!(a.checksum(), b.checksum());
        assert_eq!(a.checksum(), a2.checksum());
    }
}
