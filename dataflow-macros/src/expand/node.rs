//! `#[dataflow::node]`: a hand-written node's `linkme` registration.

use proc_macro2::TokenStream;
use quote::quote;

/// Expands `#[dataflow::node]` on `impl Node for T`: the impl, unchanged,
/// plus one `linkme` entry pointing at the unit struct `T`.
pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
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
