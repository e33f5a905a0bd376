//! `embed_migrations!`: reviewed migration files compiled into the binary.

use proc_macro2::TokenStream;
use quote::quote;

/// Expands `embed_migrations!("dir")` by reading the directory at compile
/// time; `include_str!` makes edits to a file rebuild the crate.
pub(crate) fn expand(input: TokenStream) -> TokenStream {
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
