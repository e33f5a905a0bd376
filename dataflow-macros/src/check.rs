//! Semantic checks, run after parsing: whether a model's attributes make
//! sense together (serde_derive's `check.rs`). Also completes the IR:
//! resolves the primary key and adds the managed fields, so expansion reads
//! a finished model. Errors point at the field or attribute at fault.

use crate::errors::Errors;
use crate::ir::{Attr, DefaultLit, FieldIr, ModelIr};
use dataflow_core::{FieldType, Generated, OnDelete};
use quote::ToTokens;
use syn::Fields;

/// Checks `ir` and completes it; every problem goes to `errors`.
pub(crate) fn check(ir: &mut ModelIr, errors: &mut Errors) {
    for f in &ir.fields {
        attributes_agree(f, errors);
    }
    primary_key(ir, errors);
    for f in ir.fields.iter().filter(|f| f.is_primary_key()) {
        if let Some(sensitive) = &f.sensitive {
            errors.push(sensitive.error(format!(
                "`{}` is the primary key, which the audit log records as the record id; it cannot be `sensitive`\n\nhelp: mark the secret fields `sensitive`, not the key",
                f.name
            )));
        }
    }
    managed_fields(ir, errors);
    column_clashes(ir, errors);
}

/// A field's attributes against each other and against its type.
fn attributes_agree(f: &FieldIr, errors: &mut Errors) {
    let name = &f.name;
    if let Some(on_delete) = &f.on_delete {
        if f.references.is_none() {
            errors.push(on_delete.error(
                "`on_delete` needs `references`\n\nhelp: e.g. #[field(references = \"User\", on_delete = \"cascade\")]",
            ));
        }
        if on_delete.value == OnDelete::SetNull && !f.nullable {
            errors.push(on_delete.error(format!(
                "`on_delete = \"set_null\"` needs a nullable field, but `{name}` is not an Option"
            )));
        }
    }
    if let Some(max_length) = &f.max_length {
        if f.ty != FieldType::String {
            errors.push(max_length.error(format!(
                "`max_length` applies to String fields, and `{name}` is not one"
            )));
        }
    }
    if let Some(default) = &f.default {
        default_fits(f, default, errors);
    }
}

/// `default = <literal>` must have the field's type and fit its range.
fn default_fits(f: &FieldIr, default: &Attr<DefaultLit>, errors: &mut Errors) {
    let name = &f.name;
    let ok = matches!(
        (f.ty, &default.value),
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
        errors.push(default.error(format!("the default does not match the type of `{name}` ({:?})\n\nhelp: e.g. `default = true` for bool, `default = 0` for integers, `default = \"text\"` for String", f.ty)));
    }
    let fits = match (f.ty, &default.value) {
        (FieldType::I16, DefaultLit::Int(v)) => i16::try_from(*v).is_ok(),
        (FieldType::I32, DefaultLit::Int(v)) => i32::try_from(*v).is_ok(),
        _ => true,
    };
    if !fits {
        if let DefaultLit::Int(v) = default.value {
            let ty = if f.ty == FieldType::I16 { "i16" } else { "i32" };
            errors.push(default.error(format!("default {v} does not fit `{name}` ({ty})")));
        }
    }
}

/// Exactly one primary key: `#[field(primary_key)]`, else the field named
/// `id`; it is a String or Uuid (UUID v7 generated) or an integer
/// (auto-increment), never an Option.
fn primary_key(ir: &mut ModelIr, errors: &mut Errors) {
    let model = &ir.name;
    let explicit: Vec<&FieldIr> = ir.fields.iter().filter(|f| f.is_primary_key()).collect();
    if let [first, rest @ ..] = explicit.as_slice() {
        for extra in rest {
            let key = extra.primary_key.as_ref().expect("filtered on primary_key");
            errors.push(key.error(format!(
                "model `{model}` marks more than one field `primary_key`: `{}` and `{}`\n\n\
                 help: composite primary keys are not supported; keep one and mark the others `unique`",
                first.name, extra.name
            )));
        }
    } else {
        match ir.fields.iter_mut().find(|f| f.name == "id") {
            Some(f) => {
                f.primary_key = Some(Attr {
                    tokens: syn::Ident::new("id", f.span).into_token_stream(),
                    value: (),
                })
            }
            None if matches!(ir.item.fields, Fields::Named(_)) => errors.at(
                ir.ident.span(),
                format!("model `{model}` has no primary key\n\nhelp: add `pub id: String` (a UUID v7 is generated when a create omits it), `pub id: i64` (auto-increment), or mark a field #[field(primary_key)]"),
            ),
            None => {}
        }
    }
    for f in ir.fields.iter_mut().filter(|f| f.is_primary_key()) {
        if f.nullable {
            errors.push(f.type_error(format!(
                "primary key `{}` of `{model}` cannot be an Option\n\nhelp: a primary key always has a value; use the inner type",
                f.name
            )));
        }
        f.generated = match f.ty {
            FieldType::String | FieldType::Uuid => Generated::Uuid7,
            t if t.is_integer() => Generated::AutoIncrement,
            _ => {
                errors.push(f.type_error(format!(
                    "primary key `{}` of `{model}` must be a String, an integer or a Uuid",
                    f.name
                )));
                Generated::No
            }
        };
    }
}

/// The columns the model options manage: `tenant_id`, `created_at` and
/// `updated_at` (unless declared), `deleted_at` (never declared), and
/// `version` (declared as an integer to read it in Rust, else added).
fn managed_fields(ir: &mut ModelIr, errors: &mut Errors) {
    let span = ir.ident.span();
    let o = &ir.options;
    let declared =
        |fields: &[FieldIr], n: &str| fields.iter().position(|f| f.name == n || f.column == n);
    let fields = &mut ir.fields;
    if o.tenant_scoped && declared(fields, "tenant_id").is_none() {
        fields.push(FieldIr {
            index: true,
            generated: Generated::Tenant,
            ..FieldIr::new("tenant_id", span)
        });
    }
    if o.timestamps {
        for (n, generated) in [
            ("created_at", Generated::CreatedAt),
            ("updated_at", Generated::UpdatedAt),
        ] {
            if declared(fields, n).is_none() {
                fields.push(FieldIr {
                    ty: FieldType::DateTime,
                    generated,
                    ..FieldIr::new(n, span)
                });
            }
        }
    }
    if o.versioned {
        version_field(fields, declared(fields, "version"), span, errors);
    }
    if o.soft_delete {
        match declared(fields, "deleted_at") {
            Some(i) => errors.push(fields[i].error(format!("`soft_delete` manages a `deleted_at` column, but `{}` declares one\n\nhelp: remove the field; soft-deleted records carry `deleted_at` in their JSON", ir.name))),
            None => fields.push(FieldIr {
                ty: FieldType::DateTime,
                nullable: true,
                generated: Generated::DeletedAt,
                ..FieldIr::new("deleted_at", span)
            }),
        }
    }
}

/// `versioned`: the `version` column, starting at 1 (also the column
/// default, so turning `versioned` on for a table with rows is safe). A
/// declared `version` must be a plain integer and gets no `default`.
fn version_field(
    fields: &mut Vec<FieldIr>,
    declared: Option<usize>,
    span: proc_macro2::Span,
    errors: &mut Errors,
) {
    let one = |span: proc_macro2::Span| {
        Some(Attr {
            tokens: syn::LitInt::new("1", span).into_token_stream(),
            value: DefaultLit::Int(1),
        })
    };
    match declared {
        Some(i) => {
            let f = &mut fields[i];
            if !f.ty.is_integer() || f.nullable || f.is_primary_key() {
                errors.push(f.type_error(format!(
                    "`versioned` manages `{}` as the record's version, so it must be a plain integer (i32 or i64)\n\nhelp: declare `pub version: i64`, or leave it out and read it from the JSON form",
                    f.name
                )));
            } else if let Some(d) = &f.default {
                errors.push(d.error(format!(
                    "`versioned` manages `{}`: it starts at 1 and cannot have a `default`",
                    f.name
                )));
            } else {
                f.generated = Generated::Version;
                f.default = one(f.span);
            }
        }
        None => fields.push(FieldIr {
            ty: FieldType::I64,
            generated: Generated::Version,
            default: one(span),
            ..FieldIr::new("version", span)
        }),
    }
}

/// No two fields may share a column.
fn column_clashes(ir: &ModelIr, errors: &mut Errors) {
    for (i, f) in ir.fields.iter().enumerate() {
        if let Some(first) = ir.fields[..i].iter().find(|g| g.column == f.column) {
            errors.push(f.error(format!(
                "two fields of `{}` map to the column `{}`: `{}` and `{}`\n\nhelp: rename one with #[field(column = \"other_name\")]",
                ir.name, f.column, first.name, f.name
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::expand::model_ir;
    use crate::ir::{DefaultLit, ModelIr};
    use dataflow_core::{FieldType, Generated};
    use proc_macro2::TokenStream;
    use quote::quote;

    fn ir(attr: TokenStream, item: TokenStream) -> syn::Result<ModelIr> {
        model_ir(attr, syn::parse2(item).unwrap())
    }

    fn generated(ir: &ModelIr) -> Vec<(&str, Generated)> {
        ir.fields
            .iter()
            .map(|f| (f.name.as_str(), f.generated))
            .collect()
    }

    #[test]
    fn the_id_field_is_the_key_unless_one_is_marked() {
        let by_name = ir(
            quote!(timestamps = false),
            quote!(
                struct A {
                    id: i64,
                    x: String,
                }
            ),
        )
        .unwrap();
        assert!(by_name.fields[0].is_primary_key());
        assert_eq!(by_name.fields[0].generated, Generated::AutoIncrement);

        let marked = ir(
            quote!(timestamps = false),
            quote!(
                struct A {
                    id: i64,
                    #[field(primary_key)]
                    code: uuid::Uuid,
                }
            ),
        )
        .unwrap();
        assert!(!marked.fields[0].is_primary_key());
        assert_eq!(
            generated(&marked),
            [("id", Generated::No), ("code", Generated::Uuid7)]
        );
    }

    #[test]
    fn options_add_managed_fields_after_the_declared_ones() {
        let m = ir(
            quote!(soft_delete, tenant_scoped),
            quote!(
                struct A {
                    id: String,
                    updated_at: chrono::DateTime<chrono::Utc>,
                }
            ),
        )
        .unwrap();
        assert_eq!(
            generated(&m),
            [
                ("id", Generated::Uuid7),
                ("updated_at", Generated::No),
                ("tenant_id", Generated::Tenant),
                ("created_at", Generated::CreatedAt),
                ("deleted_at", Generated::DeletedAt),
            ]
        );
        let deleted_at = m.fields.last().unwrap();
        assert!(deleted_at.nullable && deleted_at.ty == FieldType::DateTime);
    }

    #[test]
    fn versioned_adds_a_version_starting_at_one_or_takes_the_declared_one() {
        let m = ir(
            quote!(versioned, timestamps = false),
            quote!(
                struct A {
                    id: String,
                }
            ),
        )
        .unwrap();
        let v = m.fields.last().unwrap();
        assert_eq!(
            (v.name.as_str(), v.ty, v.generated, v.nullable),
            ("version", FieldType::I64, Generated::Version, false)
        );
        assert_eq!(
            v.default.as_ref().map(|d| &d.value),
            Some(&DefaultLit::Int(1))
        );
        let declared = ir(
            quote!(versioned, timestamps = false),
            quote!(
                struct A {
                    id: String,
                    version: i32,
                }
            ),
        )
        .unwrap();
        assert_eq!(
            generated(&declared),
            [("id", Generated::Uuid7), ("version", Generated::Version)]
        );
        assert_eq!(declared.fields[1].ty, FieldType::I32);
        // Without `versioned`, a field named `version` is the user's.
        let plain = ir(
            quote!(timestamps = false),
            quote!(
                struct A {
                    id: String,
                    version: i32,
                }
            ),
        )
        .unwrap();
        assert_eq!(plain.fields[1].generated, Generated::No);
        let err = ir(
            quote!(versioned),
            quote!(
                struct A {
                    id: String,
                    #[field(default = 3)]
                    version: i64,
                }
            ),
        )
        .unwrap_err();
        assert!(err.to_string().contains("cannot have a `default`"), "{err}");
    }

    #[test]
    fn audit_is_on_off_or_unset_and_opting_out_keeps_the_checksum() {
        let item = quote!(
            struct A {
                id: String,
                #[field(sensitive)]
                token: String,
            }
        );
        let unset = ir(quote!(), item.clone()).unwrap();
        let off = ir(quote!(audit = false), item.clone()).unwrap();
        let on = ir(quote!(audit), item).unwrap();
        assert_eq!(
            (unset.options.audit, off.options.audit, on.options.audit),
            (None, Some(false), Some(true))
        );
        assert_eq!(unset.checksum(), off.checksum());
        assert_ne!(unset.checksum(), on.checksum());
        assert!(unset.fields[1].sensitive.is_some());
    }

    #[test]
    fn every_semantic_error_is_reported_in_one_pass() {
        let err = ir(
            quote!(soft_delete),
            quote!(
                struct A {
                    #[field(primary_key)]
                    a: Option<String>,
                    #[field(primary_key, max_length = 3)]
                    b: i32,
                    #[field(column = "b", default = 70000)]
                    c: i16,
                    deleted_at: Option<String>,
                }
            ),
        )
        .unwrap_err();
        let messages: Vec<String> = err.into_iter().map(|e| e.to_string()).collect();
        let expected = [
            "`max_length` applies to String fields",
            "default 70000 does not fit `c` (i16)",
            "marks more than one field `primary_key`: `a` and `b`",
            "primary key `a` of `A` cannot be an Option",
            "`soft_delete` manages a `deleted_at` column",
            "two fields of `A` map to the column `b`",
        ];
        assert_eq!(messages.len(), expected.len(), "{messages:#?}");
        for (m, e) in messages.iter().zip(expected) {
            assert!(m.contains(e), "{m:?} should contain {e:?}");
        }
    }
}
