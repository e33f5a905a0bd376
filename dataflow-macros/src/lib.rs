//! `#[dataflow::model]`: one annotated struct → a constant schema, eleven
//! node types and a zero-cost registration entry.
//!
//! The entry point only converts token streams; the work happens in
//! [`parse`] (attributes → [`ir::ModelIr`]) and [`expand`] (IR → code).

mod expand;
mod ir;
mod parse;

use proc_macro::TokenStream;

/// Declares a persisted model. See the `dataflow` crate for the options.
#[proc_macro_attribute]
pub fn model(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::model(attr.into(), item.into()).into()
}

/// Registers a hand-written node: put it on `impl dataflow::Node for T`,
/// where `T` is a unit struct. Like models, registration is a link-time
/// table entry; nothing runs at start-up.
#[proc_macro_attribute]
pub fn node(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::node(attr.into(), item.into()).into()
}

/// Embeds reviewed migration files (diesel's layout:
/// `<dir>/<version>_<name>/up.sql` and `down.sql`, default dir `migrations`
/// next to `Cargo.toml`) as `&'static [dataflow::migrate::EmbeddedMigration]`,
/// for `DataFlow::builder(url).migrations(...)`.
#[proc_macro]
pub fn embed_migrations(input: TokenStream) -> TokenStream {
    expand::embed_migrations(input.into()).into()
}
