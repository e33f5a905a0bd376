//! The one `linkme` distributed-slice entry: no code runs at start-up.

use crate::ir::ModelIr;
use proc_macro2::{Ident, TokenStream};
use quote::quote;

/// The model's registry entry.
pub(super) fn expand(ir: &ModelIr) -> TokenStream {
    let ident = &ir.ident;
    let static_name = Ident::new(
        &format!("__DATAFLOW_MODEL_{}", ir.name.to_uppercase()),
        ident.span(),
    );
    quote! {
        #[::dataflow::__private::linkme::distributed_slice(::dataflow::__private::MODELS)]
        #[linkme(crate = ::dataflow::__private::linkme)]
        #[doc(hidden)]
        static #static_name: &'static ::dataflow::schema::ModelSchema =
            &<#ident as ::dataflow::Model>::SCHEMA;
    }
}
