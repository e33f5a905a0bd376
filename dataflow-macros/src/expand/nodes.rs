//! The twelve `{Model}{Op}Node` types: aliases of the runtime's generic node
//! types, so a model adds no per-node code to compile.

use crate::ir::ModelIr;
use dataflow_core::{node_name, Op};
use proc_macro2::{Ident, TokenStream};
use quote::quote;

/// The twelve `{Model}{Op}Node` type aliases.
pub(super) fn expand(ir: &ModelIr) -> TokenStream {
    let ident = &ir.ident;
    let vis = &ir.item.vis;
    let aliases = Op::ALL.iter().map(|op| {
        let alias = Ident::new(&node_name(&ir.name, *op), ident.span());
        // The runtime's generic node type: `CreateNode<M>`.
        let generic = Ident::new(&format!("{op}Node"), ident.span());
        let doc = format!("The {op} node of [`{}`].", ir.name);
        quote! {
            #[doc = #doc]
            #[allow(dead_code)]
            #vis type #alias = ::dataflow::nodes::#generic<#ident>;
        }
    });
    quote!(#(#aliases)*)
}
