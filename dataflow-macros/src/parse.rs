//! Attribute parsing: strict (unknown or duplicate keys are errors at the
//! key's span, with a `help:` showing the right syntax) and complete (every
//! problem in one pass, combined into one error).

use crate::ir::{DefaultLit, FieldIr, ModelIr, Options};
use dataflow_core::{default_table_name, FieldType, Generated, OnDelete};
use proc_macro2::{Span, TokenStream};
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Fields, GenericArgument, ItemStruct, Lit, LitStr, PathArguments, Type};

const MODEL_HELP: &str = "help: valid model options are `table = \"name\"`, `soft_delete`, \
`timestamps = false`, `tenant_scoped`, `audit`, `cache_ttl = \"30s\"`, `append_only`; \
e.g. #[dataflow::model(table = \"app_users\", soft_delete)]";

const FIELD_HELP: &str = "help: valid field attributes are `primary_key`, `unique`, `index`, \
`default = <literal>`, `references = \"Model\"`, `on_delete = \"cascade\" | \"restrict\" | \
\"set_null\"`, `max_length = N`, `column = \"name\"`, `renamed_from = \"old_name\"`, `skip`; \
e.g. #[field(unique, max_length = 255)]";

const TYPE_HELP: &str = "help: supported field types are String, i16, i32, i64, f32, f64, bool, \
chrono::DateTime<Utc>, chrono::NaiveDate, uuid::Uuid, serde_json::Value, Vec<u8>, and Option<T> \
of each";

/// Accumulates every error so one compile shows them all.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, err: syn::Error) {
        match &mut self.0 {
            Some(e) => e.combine(err),
            None => self.0 = Some(err),
        }
    }

    fn at(&mut self, span: Span, msg: impl std::fmt::Display) {
        self.push(syn::Error::new(span, msg));
    }

    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

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

fn parse_bool_flag(meta: &ParseNestedMeta) -> syn::Result<bool> {
    if meta.input.peek(syn::Token![=]) {
        let lit: syn::LitBool = meta.value()?.parse()?;
        Ok(lit.value)
    } else {
        Ok(true)
    }
}

pub fn parse_model(attr: TokenStream, item: ItemStruct) -> syn::Result<ModelIr> {
    let mut errors = Errors::default();
    let mut options = Options {
        timestamps: true,
        ..Options::default()
    };
    let mut seen = Seen::default();
    let parser = syn::meta::parser(|meta| {
        if !seen.first(&meta, &mut errors, MODEL_HELP) {
            // Consume a value, if any, so parsing continues after the duplicate.
            if meta.input.peek(syn::Token![=]) {
                let _: syn::Expr = meta.value()?.parse()?;
            }
            return Ok(());
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
            "audit" => options.audit = parse_bool_flag(&meta)?,
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
                if meta.input.peek(syn::Token![=]) {
                    let _: syn::Expr = meta.value()?.parse()?;
                }
            }
        }
        Ok(())
    });
    if let Err(e) = syn::parse::Parser::parse2(parser, attr) {
        errors.push(e);
    }

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

    let mut item = item;
    let mut fields = Vec::new();
    match &mut item.fields {
        Fields::Named(named) => {
            for field in named.named.iter_mut() {
                let attrs = std::mem::take(&mut field.attrs);
                let (ours, theirs): (Vec<_>, Vec<_>) =
                    attrs.into_iter().partition(|a| a.path().is_ident("field"));
                field.attrs = theirs;
                let ident = field.ident.clone().expect("named field");
                match parse_field(&ident, &field.ty, &ours, &mut errors) {
                    Some(ParsedField::Persisted(f)) => fields.push(f),
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

    // Exactly one primary key: `#[field(primary_key)]`, else the field named `id`.
    let explicit: Vec<usize> = (0..fields.len())
        .filter(|i| fields[*i].primary_key)
        .collect();
    if explicit.len() > 1 {
        errors.at(
            item.ident.span(),
            format!("model `{name}` marks more than one field `primary_key`\n\nhelp: composite primary keys are not supported; keep one and mark the others `unique`"),
        );
    } else if explicit.is_empty() {
        match fields.iter_mut().find(|f| f.name == "id") {
            Some(f) => f.primary_key = true,
            None if matches!(item.fields, Fields::Named(_)) => errors.at(
                item.ident.span(),
                format!("model `{name}` has no primary key\n\nhelp: add `pub id: String` (a UUID v7 is generated when a create omits it), `pub id: i64` (auto-increment), or mark a field #[field(primary_key)]"),
            ),
            None => {}
        }
    }
    for f in fields.iter_mut().filter(|f| f.primary_key) {
        let span = item.ident.span();
        if f.nullable {
            errors.at(
                span,
                format!("primary key `{}` of `{name}` cannot be an Option", f.name),
            );
        }
        f.generated = match f.ty {
            FieldType::String | FieldType::Uuid => Generated::Uuid7,
            t if t.is_integer() => Generated::AutoIncrement,
            _ => {
                errors.at(
                    span,
                    format!(
                        "primary key `{}` of `{name}` must be a String, an integer or a Uuid",
                        f.name
                    ),
                );
                Generated::No
            }
        };
    }

    let managed = |name: &str, ty, nullable, generated| FieldIr {
        name: name.to_string(),
        column: name.to_string(),
        ty,
        nullable,
        primary_key: false,
        unique: false,
        index: false,
        default: None,
        references: None,
        max_length: None,
        renamed_from: None,
        generated,
    };
    let declared =
        |fields: &[FieldIr], n: &str| fields.iter().any(|f| f.name == n || f.column == n);
    if options.tenant_scoped && !declared(&fields, "tenant_id") {
        let mut f = managed("tenant_id", FieldType::String, false, Generated::Tenant);
        f.index = true;
        fields.push(f);
    }
    if options.timestamps {
        for (n, g) in [
            ("created_at", Generated::CreatedAt),
            ("updated_at", Generated::UpdatedAt),
        ] {
            if !declared(&fields, n) {
                fields.push(managed(n, FieldType::DateTime, false, g));
            }
        }
    }
    if options.soft_delete {
        if declared(&fields, "deleted_at") {
            errors.at(item.ident.span(), format!("`soft_delete` manages a `deleted_at` column, but `{name}` declares one\n\nhelp: remove the field; soft-deleted records carry `deleted_at` in their JSON"));
        } else {
            fields.push(managed(
                "deleted_at",
                FieldType::DateTime,
                true,
                Generated::DeletedAt,
            ));
        }
    }
    for (i, f) in fields.iter().enumerate() {
        if fields[..i].iter().any(|g| g.column == f.column) {
            errors.at(
                item.ident.span(),
                format!("two fields of `{name}` map to the column `{}`", f.column),
            );
        }
    }

    let has_derive = |want: &str| {
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
    };
    let derive_serialize = !has_derive("Serialize");
    let derive_deserialize = !has_derive("Deserialize");

    errors.finish()?;
    Ok(ModelIr {
        ident: item.ident.clone(),
        name,
        table,
        options,
        fields,
        item,
        derive_serialize,
        derive_deserialize,
    })
}

enum ParsedField {
    Persisted(FieldIr),
    Skipped,
}

fn parse_field(
    ident: &syn::Ident,
    ty: &Type,
    attrs: &[syn::Attribute],
    errors: &mut Errors,
) -> Option<ParsedField> {
    let name = ident.to_string();
    let mut f = FieldIr {
        name: name.clone(),
        column: name.clone(),
        ty: FieldType::String,
        nullable: false,
        primary_key: false,
        unique: false,
        index: false,
        default: None,
        references: None,
        max_length: None,
        renamed_from: None,
        generated: Generated::No,
    };
    let mut skip = false;
    let mut on_delete: Option<(OnDelete, Span)> = None;
    let mut default_span = Span::call_site();
    let mut seen = Seen::default();
    for attr in attrs {
        let res = attr.parse_nested_meta(|meta| {
            if !seen.first(&meta, errors, FIELD_HELP) {
                if meta.input.peek(syn::Token![=]) {
                    let _: syn::Expr = meta.value()?.parse()?;
                }
                return Ok(());
            }
            let key = path_name(&meta.path);
            match key.as_str() {
                "primary_key" => f.primary_key = parse_bool_flag(&meta)?,
                "unique" => f.unique = parse_bool_flag(&meta)?,
                "index" => f.index = parse_bool_flag(&meta)?,
                "skip" => skip = parse_bool_flag(&meta)?,
                "default" => {
                    let expr: syn::Expr = meta.value()?.parse()?;
                    default_span = expr.span();
                    match default_literal(&expr) {
                        Some(d) => f.default = Some(d),
                        None => errors.at(
                            expr.span(),
                            "`default` must be a literal\n\nhelp: e.g. #[field(default = true)], #[field(default = 0)], #[field(default = \"draft\")]",
                        ),
                    }
                }
                "references" => {
                    let lit: LitStr = meta.value()?.parse()?;
                    if is_identifier(&lit.value()) {
                        f.references = Some((lit.value(), OnDelete::NoAction));
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
                        Some(a) => on_delete = Some((a, lit.span())),
                        None => errors.at(lit.span(), format!("unknown `on_delete` action `{}`\n\nhelp: use \"cascade\", \"restrict\" or \"set_null\"", lit.value())),
                    }
                }
                "max_length" => {
                    let lit: syn::LitInt = meta.value()?.parse()?;
                    match lit.base10_parse::<u32>() {
                        Ok(n) if n > 0 => f.max_length = Some(n),
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
                    if meta.input.peek(syn::Token![=]) {
                        let _: syn::Expr = meta.value()?.parse()?;
                    }
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
        }
        None => {
            errors.at(ty.span(), format!("unsupported type for field `{name}`\n\n{TYPE_HELP}; or mark the field #[field(skip)] to keep it out of the database"));
            return None;
        }
    }
    if let Some((action, span)) = on_delete {
        match &mut f.references {
            Some((_, a)) => *a = action,
            None => errors.at(span, "`on_delete` needs `references`\n\nhelp: e.g. #[field(references = \"User\", on_delete = \"cascade\")]"),
        }
        if action == OnDelete::SetNull && !f.nullable {
            errors.at(span, format!("`on_delete = \"set_null\"` needs a nullable field, but `{name}` is not an Option"));
        }
    }
    if f.max_length.is_some() && f.ty != FieldType::String {
        errors.at(
            ident.span(),
            format!("`max_length` applies to String fields, and `{name}` is not one"),
        );
    }
    if let Some(d) = &f.default {
        let ok = matches!(
            (f.ty, d),
            (FieldType::Bool, DefaultLit::Bool(_))
                | (
                    FieldType::I16 | FieldType::I32 | FieldType::I64,
                    DefaultLit::Int(_)
                )
                | (
                    FieldType::F32 | FieldType::F64,
                    DefaultLit::Int(_) | DefaultLit::Float(_)
                )
                | (FieldType::String, DefaultLit::Str(_))
        );
        if !ok {
            errors.at(default_span, format!("the default does not match the type of `{name}` ({:?})\n\nhelp: e.g. `default = true` for bool, `default = 0` for integers, `default = \"text\"` for String", f.ty));
        }
        if let (FieldType::I16, DefaultLit::Int(v)) = (f.ty, d) {
            if i16::try_from(*v).is_err() {
                errors.at(
                    default_span,
                    format!("default {v} does not fit `{name}` (i16)"),
                );
            }
        }
        if let (FieldType::I32, DefaultLit::Int(v)) = (f.ty, d) {
            if i32::try_from(*v).is_err() {
                errors.at(
                    default_span,
                    format!("default {v} does not fit `{name}` (i32)"),
                );
            }
        }
    }
    Some(ParsedField::Persisted(f))
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
