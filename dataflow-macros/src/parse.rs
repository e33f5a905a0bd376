//! Attribute syntax: the struct, its `#[field]` attributes and the model
//! options become a [`ModelIr`]. Strict (unknown or duplicate keys are
//! errors at the key's span, with a `help:` showing the right syntax) and
//! complete (every problem in one pass). Whether the attributes make sense
//! together is [`crate::check`]'s job.

use crate::errors::Errors;
use crate::ir::{Attr, DefaultLit, FieldIr, ModelIr, Options};
use dataflow_core::{default_table_name, FieldType, OnDelete};
use proc_macro2::TokenStream;
use quote::quote;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Fields, GenericArgument, ItemStruct, Lit, LitStr, PathArguments, Type};

const MODEL_HELP: &str = "help: valid model options are `table = \"name\"`, `soft_delete`, \
`timestamps = false`, `tenant_scoped`, `audit` (or `audit = false`), `versioned`, \
`cache_ttl = \"30s\"`, `append_only`; \
e.g. #[dataflow::model(table = \"app_users\", soft_delete)]";

const FIELD_HELP: &str = "help: valid field attributes are `primary_key`, `unique`, `index`, \
`default = <literal>`, `references = \"Model\"`, `on_delete = \"cascade\" | \"restrict\" | \
\"set_null\" | \"no_action\"`, `max_length = N`, `column = \"name\"`, `renamed_from = \"old_name\"`, `sensitive`, `skip`; \
e.g. #[field(unique, max_length = 255)]";

const TYPE_HELP: &str = "help: supported field types are String, i16, i32, i64, f32, f64, bool, \
chrono::DateTime<Utc>, chrono::NaiveDate, uuid::Uuid, serde_json::Value, Vec<u8>, and Option<T> \
of each";

/// Tracks keys already seen so duplicates are refused.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    fn first(&mut self, meta: &ParseNestedMeta, errors: &mut Errors, help: &str) -> bool {
        let key = path_name(&meta.path);
        if self.0.contains(&key) {
            errors.at(meta.path.span(), format!("duplicate key `{key}`\n\n{help}"));
            false
        } else {
            self.0.push(key);
            true
        }
    }
}

fn path_name(path: &syn::Path) -> String {
    path.segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}

/// Consumes `= value`, if any, so parsing continues after a refused key.
fn skip_value(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        let _: syn::Expr = meta.value()?.parse()?;
    }
    Ok(())
}

/// `key = value` as written, for [`Attr`]: errors span from key to value.
fn attr_of<T>(meta: &ParseNestedMeta, value: &impl quote::ToTokens, parsed: T) -> Attr<T> {
    let key = &meta.path;
    Attr {
        tokens: quote!(#key #value),
        value: parsed,
    }
}

fn parse_bool_flag(meta: &ParseNestedMeta) -> syn::Result<bool> {
    if meta.input.peek(syn::Token![=]) {
        let lit: syn::LitBool = meta.value()?.parse()?;
        Ok(lit.value)
    } else {
        Ok(true)
    }
}

/// Parses the model options and the struct into a [`ModelIr`] holding the
/// declared fields only; every syntax error goes to `errors`.
pub(crate) fn parse_model(attr: TokenStream, mut item: ItemStruct, errors: &mut Errors) -> ModelIr {
    let options = parse_options(attr, errors);

    if !item.generics.params.is_empty() {
        errors.at(
            item.generics.span(),
            "models cannot be generic\n\nhelp: declare one struct per model, e.g. `pub struct User { ... }`",
        );
    }

    let name = item.ident.to_string();
    let table = options
        .table
        .clone()
        .unwrap_or_else(|| default_table_name(&name));

    let mut fields = Vec::new();
    match &mut item.fields {
        Fields::Named(named) => {
            for field in named.named.iter_mut() {
                let attrs = std::mem::take(&mut field.attrs);
                let (ours, theirs): (Vec<_>, Vec<_>) =
                    attrs.into_iter().partition(|a| a.path().is_ident("field"));
                field.attrs = theirs;
                let ident = field.ident.clone().expect("named field");
                match parse_field(&ident, &field.ty, &ours, errors) {
                    Some(ParsedField::Persisted(f)) => fields.push(*f),
                    Some(ParsedField::Skipped) => field.attrs.push(syn::parse_quote!(#[serde(skip)])),
                    None => {}
                }
            }
        }
        _ => errors.at(
            item.ident.span(),
            "models must be structs with named fields\n\nhelp: e.g. `pub struct User { pub id: String, pub email: String }`",
        ),
    }

    let derive_serialize = !has_derive(&item, "Serialize");
    let derive_deserialize = !has_derive(&item, "Deserialize");
    ModelIr {
        ident: item.ident.clone(),
        name,
        table,
        options,
        fields,
        item,
        derive_serialize,
        derive_deserialize,
    }
}

/// `#[dataflow::model(...)]`.
fn parse_options(attr: TokenStream, errors: &mut Errors) -> Options {
    let mut options = Options {
        timestamps: true,
        ..Options::default()
    };
    let mut seen = Seen::default();
    let parser = syn::meta::parser(|meta| {
        if !seen.first(&meta, errors, MODEL_HELP) {
            return skip_value(&meta);
        }
        let key = path_name(&meta.path);
        match key.as_str() {
            "table" => {
                let lit: LitStr = meta.value()?.parse()?;
                if is_identifier(&lit.value()) {
                    options.table = Some(lit.value());
                } else {
                    errors.at(
                        lit.span(),
                        "table names must be ASCII letters, digits and `_`, not starting with a digit\n\n\
                         help: e.g. #[dataflow::model(table = \"app_users\")]",
                    );
                }
            }
            "soft_delete" => options.soft_delete = parse_bool_flag(&meta)?,
            "timestamps" => options.timestamps = parse_bool_flag(&meta)?,
            "tenant_scoped" => options.tenant_scoped = parse_bool_flag(&meta)?,
            "audit" => options.audit = Some(parse_bool_flag(&meta)?),
            "versioned" => options.versioned = parse_bool_flag(&meta)?,
            "append_only" => options.append_only = parse_bool_flag(&meta)?,
            "cache_ttl" => {
                let lit: LitStr = meta.value()?.parse()?;
                match parse_duration_ms(&lit.value()) {
                    Some(ms) => options.cache_ttl_ms = Some(ms),
                    None => errors.at(
                        lit.span(),
                        format!(
                            "invalid duration `{}` for `cache_ttl`\n\n\
                             help: use a number with a unit: \"250ms\", \"30s\", \"5m\", \"1h\"",
                            lit.value()
                        ),
                    ),
                }
            }
            _ => {
                errors.at(
                    meta.path.span(),
                    format!("unknown model option `{key}`\n\n{MODEL_HELP}"),
                );
                skip_value(&meta)?;
            }
        }
        Ok(())
    });
    if let Err(e) = syn::parse::Parser::parse2(parser, attr) {
        errors.push(e);
    }
    options
}

/// Whether the struct already derives `want` (by last path segment).
fn has_derive(item: &ItemStruct, want: &str) -> bool {
    item.attrs.iter().any(|a| {
        a.path().is_ident("derive")
            && a.parse_args_with(
                syn::punctuated::Punctuated::<syn::Path, syn::Token![,]>::parse_terminated,
            )
            .map(|paths| {
                paths
                    .iter()
                    .any(|p| p.segments.last().is_some_and(|s| s.ident == want))
            })
            .unwrap_or(false)
    })
}

enum ParsedField {
    Persisted(Box<FieldIr>),
    Skipped,
}

/// One field's `#[field(...)]` attributes and Rust type; `None` when the
/// type is unsupported (already reported).
fn parse_field(
    ident: &syn::Ident,
    ty: &Type,
    attrs: &[syn::Attribute],
    errors: &mut Errors,
) -> Option<ParsedField> {
    let name = ident.to_string();
    let mut f = FieldIr::new(&name, ident.span());
    let mut skip = false;
    let mut seen = Seen::default();
    for attr in attrs {
        let res = attr.parse_nested_meta(|meta| {
            if !seen.first(&meta, errors, FIELD_HELP) {
                return skip_value(&meta);
            }
            let key = path_name(&meta.path);
            match key.as_str() {
                "primary_key" => {
                    let path = &meta.path;
                    f.primary_key = parse_bool_flag(&meta)?.then(|| Attr {
                        tokens: quote!(#path),
                        value: (),
                    });
                }
                "unique" => f.unique = parse_bool_flag(&meta)?,
                "index" => f.index = parse_bool_flag(&meta)?,
                "skip" => skip = parse_bool_flag(&meta)?,
                "sensitive" => {
                    let path = &meta.path;
                    f.sensitive = parse_bool_flag(&meta)?.then(|| Attr {
                        tokens: quote!(#path),
                        value: (),
                    });
                }
                "default" => {
                    let expr: syn::Expr = meta.value()?.parse()?;
                    match default_literal(&expr) {
                        Some(d) => f.default = Some(attr_of(&meta, &expr, d)),
                        None => errors.at(
                            expr.span(),
                            "`default` must be a literal\n\nhelp: e.g. #[field(default = true)], #[field(default = 0)], #[field(default = \"draft\")]",
                        ),
                    }
                }
                "references" => {
                    let lit: LitStr = meta.value()?.parse()?;
                    if is_identifier(&lit.value()) {
                        f.references = Some(attr_of(&meta, &lit, lit.value()));
                    } else {
                        errors.at(lit.span(), "`references` names a model\n\nhelp: e.g. #[field(references = \"User\")]");
                    }
                }
                "on_delete" => {
                    let lit: LitStr = meta.value()?.parse()?;
                    let action = match lit.value().as_str() {
                        "cascade" => Some(OnDelete::Cascade),
                        "restrict" => Some(OnDelete::Restrict),
                        "set_null" => Some(OnDelete::SetNull),
                        "no_action" => Some(OnDelete::NoAction),
                        _ => None,
                    };
                    match action {
                        Some(a) => f.on_delete = Some(attr_of(&meta, &lit, a)),
                        None => errors.at(lit.span(), format!("unknown `on_delete` action `{}`\n\nhelp: use \"cascade\", \"restrict\", \"set_null\" or \"no_action\"", lit.value())),
                    }
                }
                "max_length" => {
                    let lit: syn::LitInt = meta.value()?.parse()?;
                    match lit.base10_parse::<u32>() {
                        Ok(n) if n > 0 => f.max_length = Some(attr_of(&meta, &lit, n)),
                        _ => errors.at(lit.span(), "`max_length` must be a positive integer\n\nhelp: e.g. #[field(max_length = 255)]"),
                    }
                }
                "column" => {
                    let lit: LitStr = meta.value()?.parse()?;
                    if is_identifier(&lit.value()) {
                        f.column = lit.value();
                    } else {
                        errors.at(lit.span(), "column names must be ASCII letters, digits and `_`\n\nhelp: e.g. #[field(column = \"email_address\")]");
                    }
                }
                "renamed_from" => {
                    let lit: LitStr = meta.value()?.parse()?;
                    if is_identifier(&lit.value()) {
                        f.renamed_from = Some(lit.value());
                    } else {
                        errors.at(lit.span(), "`renamed_from` names the old column\n\nhelp: e.g. #[field(renamed_from = \"mail\")]");
                    }
                }
                _ => {
                    errors.at(meta.path.span(), format!("unknown field attribute `{key}`\n\n{FIELD_HELP}"));
                    skip_value(&meta)?;
                }
            }
            Ok(())
        });
        if let Err(e) = res {
            errors.push(e);
        }
    }
    if skip {
        return Some(ParsedField::Skipped);
    }
    match classify_type(ty) {
        Some((t, nullable)) => {
            f.ty = t;
            f.nullable = nullable;
            f.rust_ty = Some(ty.clone());
        }
        None => {
            errors.at(ty.span(), format!("unsupported type for field `{name}`\n\n{TYPE_HELP}; or mark the field #[field(skip)] to keep it out of the database"));
            return None;
        }
    }
    Some(ParsedField::Persisted(Box::new(f)))
}

fn default_literal(expr: &syn::Expr) -> Option<DefaultLit> {
    match expr {
        syn::Expr::Lit(l) => match &l.lit {
            Lit::Bool(b) => Some(DefaultLit::Bool(b.value)),
            Lit::Int(i) => i.base10_parse().ok().map(DefaultLit::Int),
            Lit::Float(f) => f.base10_parse().ok().map(DefaultLit::Float),
            Lit::Str(s) => Some(DefaultLit::Str(s.value())),
            _ => None,
        },
        syn::Expr::Unary(u) if matches!(u.op, syn::UnOp::Neg(_)) => match default_literal(&u.expr)?
        {
            DefaultLit::Int(i) => Some(DefaultLit::Int(-i)),
            DefaultLit::Float(f) => Some(DefaultLit::Float(-f)),
            _ => None,
        },
        _ => None,
    }
}

/// Maps a Rust type to a storage type; `Option<T>` is nullable.
fn classify_type(ty: &Type) -> Option<(FieldType, bool)> {
    let Type::Path(tp) = ty else { return None };
    if tp.qself.is_some() {
        return None;
    }
    let last = tp.path.segments.last()?;
    let ident = last.ident.to_string();
    let single_arg = || match &last.arguments {
        PathArguments::AngleBracketed(a) if a.args.len() == 1 => match &a.args[0] {
            GenericArgument::Type(t) => Some(t),
            _ => None,
        },
        _ => None,
    };
    if ident == "Option" {
        let (inner, nullable) = classify_type(single_arg()?)?;
        return (!nullable).then_some((inner, true));
    }
    let t = match ident.as_str() {
        "String" => FieldType::String,
        "i16" => FieldType::I16,
        "i32" => FieldType::I32,
        "i64" => FieldType::I64,
        "f32" => FieldType::F32,
        "f64" => FieldType::F64,
        "bool" => FieldType::Bool,
        "NaiveDate" => FieldType::Date,
        "Uuid" => FieldType::Uuid,
        "Value" | "JsonValue" => FieldType::Json,
        "DateTime" => {
            let Type::Path(arg) = single_arg()? else {
                return None;
            };
            if arg.path.segments.last()?.ident != "Utc" {
                return None;
            }
            FieldType::DateTime
        }
        "Vec" => {
            let Type::Path(arg) = single_arg()? else {
                return None;
            };
            if !arg.path.is_ident("u8") {
                return None;
            }
            FieldType::Bytes
        }
        _ => return None,
    };
    if !matches!(ident.as_str(), "DateTime" | "Vec")
        && !matches!(last.arguments, PathArguments::None)
    {
        return None;
    }
    Some((t, false))
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 63
}

/// `"250ms"`, `"30s"`, `"5m"`, `"1h"` → milliseconds.
fn parse_duration_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(mult)
}
