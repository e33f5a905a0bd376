//! How the `dataflow-core` enums appear in generated code.

use dataflow_core::{FieldType, Generated, OnDelete};
use proc_macro2::TokenStream;
use quote::{quote, ToTokens};

/// A `dataflow-core` value spelled as the absolute path generated code
/// names it by: `Path(FieldType::I64)` → `::dataflow::schema::FieldType::I64`.
/// A newtype because orphan rules forbid `impl ToTokens for FieldType` here.
pub(super) struct Path<T>(pub T);

impl ToTokens for Path<FieldType> {
    fn to_tokens(&self, out: &mut TokenStream) {
        let variant = match self.0 {
            FieldType::String => quote!(String),
            FieldType::I16 => quote!(I16),
            FieldType::I32 => quote!(I32),
            FieldType::I64 => quote!(I64),
            FieldType::F32 => quote!(F32),
            FieldType::F64 => quote!(F64),
            FieldType::Bool => quote!(Bool),
            FieldType::DateTime => quote!(DateTime),
            FieldType::Date => quote!(Date),
            FieldType::Uuid => quote!(Uuid),
            FieldType::Json => quote!(Json),
            FieldType::Bytes => quote!(Bytes),
        };
        out.extend(quote!(::dataflow::schema::FieldType::#variant));
    }
}

impl ToTokens for Path<OnDelete> {
    fn to_tokens(&self, out: &mut TokenStream) {
        let variant = match self.0 {
            OnDelete::Cascade => quote!(Cascade),
            OnDelete::Restrict => quote!(Restrict),
            OnDelete::SetNull => quote!(SetNull),
            OnDelete::NoAction => quote!(NoAction),
        };
        out.extend(quote!(::dataflow::schema::OnDelete::#variant));
    }
}

impl ToTokens for Path<Generated> {
    fn to_tokens(&self, out: &mut TokenStream) {
        let variant = match self.0 {
            Generated::No => quote!(No),
            Generated::Uuid7 => quote!(Uuid7),
            Generated::AutoIncrement => quote!(AutoIncrement),
            Generated::CreatedAt => quote!(CreatedAt),
            Generated::UpdatedAt => quote!(UpdatedAt),
            Generated::DeletedAt => quote!(DeletedAt),
            Generated::Tenant => quote!(Tenant),
            Generated::Version => quote!(Version),
        };
        out.extend(quote!(::dataflow::schema::Generated::#variant));
    }
}
