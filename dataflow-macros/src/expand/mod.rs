//! IR → generated code, one module per artifact.

mod nodes;
mod register;
mod schema;
mod tokens;

use crate::{ir::ModelIr, parse};
use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemStruct;

/// Expands `#[dataflow::model]`. On error the struct is re-emitted (without
/// its `#[field]` attributes) next to the error, so one mistake yields one
/// message rather than a cascade of "cannot find type" errors.
pub fn model(attr: TokenStream, item: TokenStream) -> TokenStream {
    let parsed: ItemStruct = match syn::parse2(item.clone()) {
        Ok(parsed) => parsed,
        Err(err) => {
            let mut out = err.to_compile_error();
            out.extend(item);
            return out;
        }
    };
    match parse::parse_model(attr, parsed.clone()) {
        Ok(ir) => expand(&ir),
        Err(err) => {
            let mut out = err.to_compile_error();
            out.extend(quote!(#[allow(dead_code)]));
            out.extend(strip_field_attrs(parsed));
            out
        }
    }
}

/// Everything one model expands to.
pub fn expand(ir: &ModelIr) -> TokenStream {
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

/// Expands `#[dataflow::node]` on `impl Node for T`: the impl, unchanged,
/// plus one `linkme` entry pointing at the unit struct `T`.
pub fn node(attr: TokenStream, item: TokenStream) -> TokenStream {
    let result = (|| -> syn::Result<TokenStream> {
        if !attr.is_empty() {
            return Err(syn::Error::new_spanned(
                &attr,
                "#[dataflow::node] takes no options\n\nhelp: the node's name comes from `fn name(&self)`",
            ));
        }
        let imp: syn::ItemImpl = syn::parse2(item.clone())?;
        let help = "#[dataflow::node] goes on `impl dataflow::Node for MyNode`, where `MyNode` is a unit struct\n\n\
                    help: e.g. `pub struct Greet;` and `#[dataflow::node] impl Node for Greet { ... }`";
        match &imp.trait_ {
            Some((None, path, _)) if path.segments.last().is_some_and(|s| s.ident == "Node") => {}
            _ => return Err(syn::Error::new_spanned(&imp.self_ty, help)),
        }
        let syn::Type::Path(ty) = &*imp.self_ty else {
            return Err(syn::Error::new_spanned(&imp.self_ty, help));
        };
        if !imp.generics.params.is_empty() {
            return Err(syn::Error::new_spanned(&imp.generics, "generic nodes cannot be registered\n\nhelp: register one unit struct per node type"));
        }
        let last = ty.path.segments.last().expect("a type path has a segment");
        let static_name = syn::Ident::new(
            &format!("__DATAFLOW_NODE_{}", last.ident.to_string().to_uppercase()),
            last.ident.span(),
        );
        Ok(quote! {
            #imp
            #[::dataflow::__private::linkme::distributed_slice(::dataflow::__private::NODES)]
            #[linkme(crate = ::dataflow::__private::linkme)]
            #[doc(hidden)]
            static #static_name: &'static dyn ::dataflow::Node = &#ty;
        })
    })();
    result.unwrap_or_else(|err| {
        let mut out = err.to_compile_error();
        out.extend(item);
        out
    })
}

/// Expands `embed_migrations!("dir")` by reading the directory at compile
/// time; `include_str!` makes edits to a file rebuild the crate.
pub fn embed_migrations(input: TokenStream) -> TokenStream {
    let result = (|| -> syn::Result<TokenStream> {
        let rel = if input.is_empty() {
            "migrations".to_string()
        } else {
            syn::parse2::<syn::LitStr>(input.clone())?.value()
        };
        let root = std::env::var("CARGO_MANIFEST_DIR")
            .map_err(|_| syn::Error::new_spanned(&input, "CARGO_MANIFEST_DIR is not set"))?;
        let dir = std::path::Path::new(&root).join(&rel);
        let entries = std::fs::read_dir(&dir).map_err(|e| {
            syn::Error::new(proc_macro2::Span::call_site(), format!("cannot read migrations directory {}: {e}\n\nhelp: create it with `migrate generate <name>`", dir.display()))
        })?;
        let mut dirs: Vec<std::path::PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        let mut items = Vec::new();
        for d in dirs {
            let name = d
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let up = d.join("up.sql");
            if !up.is_file() {
                return Err(syn::Error::new(
                    proc_macro2::Span::call_site(),
                    format!("migration {} has no up.sql", d.display()),
                ));
            }
            let up = up.display().to_string();
            let down = d.join("down.sql");
            let down = if down.is_file() {
                let p = down.display().to_string();
                quote!(::core::include_str!(#p))
            } else {
                quote!("")
            };
            items.push(quote! {
                ::dataflow::migrate::EmbeddedMigration { dir: #name, up: ::core::include_str!(#up), down: #down }
            });
        }
        Ok(quote!(&[#(#items),*]))
    })();
    result.unwrap_or_else(|e| e.to_compile_error())
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
        let a = parse::parse_model(
            quote!(),
            syn::parse_quote!(
                pub struct A {
                    pub id: String,
                }
            ),
        )
        .unwrap();
        let b = parse::parse_model(
            quote!(),
            syn::parse_quote!(
                pub struct A {
                    pub id: String,
                    pub x: Option<i32>,
                }
            ),
        )
        .unwrap();
        let a2 = parse::parse_model(
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
