//! The schema checksum: FNV-1a 64 over a canonical text of the model.
//!
//! Databases store the checksum of every model they were migrated to, so the
//! canonical text is a persisted format. It is written out here token by
//! token, never derived from `Debug` output or variant names: renaming a
//! Rust type must not change any checksum. The pinned-value tests in this
//! module and in `dataflow-macros` guard it.
//!
//! The text is `model=..;table=..;` and the model options, then one
//! `field=name:column:type:n..:pk..:u..:i..:d..:r..:m..:rf..:g..;` per
//! persisted field. Optional values are written `None` / `Some(..)`,
//! strings quoted and escaped as Rust string literals, floats in their
//! shortest round-trip form: the spelling the first checksums were computed
//! with.

use crate::{FieldType, Generated, OnDelete};
use std::fmt::Write;

/// Everything about a model that changes the database shape or the node
/// contract, as the checksum sees it.
#[derive(Debug, Clone, Copy)]
pub struct ModelShape<'a> {
    /// The model (struct) name.
    pub name: &'a str,
    /// The table name.
    pub table: &'a str,
    /// `soft_delete`
    pub soft_delete: bool,
    /// `timestamps`
    pub timestamps: bool,
    /// `tenant_scoped`
    pub tenant_scoped: bool,
    /// `audit`
    pub audit: bool,
    /// `append_only`
    pub append_only: bool,
    /// Persisted fields in schema order, managed ones included.
    pub fields: &'a [FieldShape<'a>],
}

/// One persisted field, as the checksum sees it.
#[derive(Debug, Clone, Copy)]
pub struct FieldShape<'a> {
    /// The field name (JSON and Rust).
    pub name: &'a str,
    /// The column name.
    pub column: &'a str,
    /// The storage type.
    pub ty: FieldType,
    /// Whether the field is an `Option`.
    pub nullable: bool,
    /// Whether the field is the primary key.
    pub primary_key: bool,
    /// `unique`
    pub unique: bool,
    /// `index`
    pub index: bool,
    /// `default = <literal>`
    pub default: Option<DefaultShape<'a>>,
    /// `references = "Model"` with its `on_delete` action.
    pub references: Option<(&'a str, OnDelete)>,
    /// `max_length = N`
    pub max_length: Option<u32>,
    /// `renamed_from = "old"`
    pub renamed_from: Option<&'a str>,
    /// Who fills the value.
    pub generated: Generated,
}

/// A `default = <literal>` value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DefaultShape<'a> {
    /// `true` / `false`
    Bool(bool),
    /// An integer literal, sign included.
    Int(i64),
    /// A float literal, sign included.
    Float(f64),
    /// A string literal's value.
    Str(&'a str),
}

/// The canonical text of a model; [`checksum`] hashes it.
pub fn canonical(model: &ModelShape<'_>) -> String {
    let mut s = String::new();
    let m = model;
    // `write!` into a String cannot fail.
    let _ = write!(
        s,
        "model={};table={};soft_delete={};timestamps={};tenant={};audit={};append_only={};",
        m.name, m.table, m.soft_delete, m.timestamps, m.tenant_scoped, m.audit, m.append_only
    );
    for f in m.fields {
        let _ = write!(
            s,
            "field={}:{}:{}:n{}:pk{}:u{}:i{}:d",
            f.name,
            f.column,
            field_type(f.ty),
            f.nullable,
            f.primary_key,
            f.unique,
            f.index
        );
        option(&mut s, f.default, |s, d| match d {
            DefaultShape::Bool(b) => {
                let _ = write!(s, "Bool({b})");
            }
            DefaultShape::Int(i) => {
                let _ = write!(s, "Int({i})");
            }
            DefaultShape::Float(x) => {
                s.push_str("Float(");
                float(s, x);
                s.push(')');
            }
            DefaultShape::Str(v) => {
                s.push_str("Str(");
                string(s, v);
                s.push(')');
            }
        });
        s.push_str(":r");
        option(&mut s, f.references, |s, (model, action)| {
            s.push('(');
            string(s, model);
            s.push_str(", ");
            s.push_str(on_delete(action));
            s.push(')');
        });
        s.push_str(":m");
        option(&mut s, f.max_length, |s, n| {
            let _ = write!(s, "{n}");
        });
        s.push_str(":rf");
        option(&mut s, f.renamed_from, string);
        s.push_str(":g");
        s.push_str(generated(f.generated));
        s.push(';');
    }
    s
}

/// The checksum of a model: [`fnv1a64`] of its [`canonical`] text.
pub fn checksum(model: &ModelShape<'_>) -> u64 {
    fnv1a64(canonical(model).as_bytes())
}

/// FNV-1a, 64 bit: tiny, dependency-free and stable across platforms and
/// Rust versions (unlike `std`'s `DefaultHasher`). Also hashes migration
/// files.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A checksum as the fixed-width lowercase hex text databases store.
pub fn to_hex(checksum: u64) -> String {
    format!("{checksum:016x}")
}

fn option<T>(s: &mut String, v: Option<T>, some: impl FnOnce(&mut String, T)) {
    match v {
        None => s.push_str("None"),
        Some(v) => {
            s.push_str("Some(");
            some(s, v);
            s.push(')');
        }
    }
}

/// A Rust string literal: `"`, `\` and non-printable characters escaped.
fn string(s: &mut String, v: &str) {
    s.push('"');
    for c in v.chars() {
        match c {
            '\'' => s.push('\''),
            c => s.extend(c.escape_debug()),
        }
    }
    s.push('"');
}

/// The shortest text that reads back as `x`, with a `.0` on whole numbers
/// and exponent notation outside `1e-4 <= |x| < 1e16`.
fn float(s: &mut String, x: f64) {
    let abs = x.abs();
    if !x.is_finite() {
        let _ = write!(s, "{x}");
    } else if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
        let _ = write!(s, "{x:e}");
    } else {
        let start = s.len();
        let _ = write!(s, "{x}");
        if !s[start..].contains('.') {
            s.push_str(".0");
        }
    }
}

fn field_type(t: FieldType) -> &'static str {
    match t {
        FieldType::String => "String",
        FieldType::I16 => "I16",
        FieldType::I32 => "I32",
        FieldType::I64 => "I64",
        FieldType::F32 => "F32",
        FieldType::F64 => "F64",
        FieldType::Bool => "Bool",
        FieldType::DateTime => "DateTime",
        FieldType::Date => "Date",
        FieldType::Uuid => "Uuid",
        FieldType::Json => "Json",
        FieldType::Bytes => "Bytes",
    }
}

fn on_delete(a: OnDelete) -> &'static str {
    match a {
        OnDelete::Cascade => "Cascade",
        OnDelete::Restrict => "Restrict",
        OnDelete::SetNull => "SetNull",
        OnDelete::NoAction => "NoAction",
    }
}

fn generated(g: Generated) -> &'static str {
    match g {
        Generated::No => "No",
        Generated::Uuid7 => "Uuid7",
        Generated::AutoIncrement => "AutoIncrement",
        Generated::CreatedAt => "CreatedAt",
        Generated::UpdatedAt => "UpdatedAt",
        Generated::DeletedAt => "DeletedAt",
        Generated::Tenant => "Tenant",
        Generated::Version => "Version",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str) -> FieldShape<'_> {
        FieldShape {
            name,
            column: name,
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
        }
    }

    #[test]
    fn canonical_text_is_pinned() {
        let fields = [
            FieldShape {
                primary_key: true,
                generated: Generated::Uuid7,
                ..field("id")
            },
            FieldShape {
                column: "owner",
                ty: FieldType::I64,
                nullable: true,
                index: true,
                references: Some(("User", OnDelete::SetNull)),
                renamed_from: Some("user"),
                ..field("owner_id")
            },
            FieldShape {
                unique: true,
                max_length: Some(64),
                default: Some(DefaultShape::Str("a \"b\"\n")),
                ..field("slug")
            },
            FieldShape {
                ty: FieldType::F64,
                default: Some(DefaultShape::Float(-1e20)),
                ..field("score")
            },
        ];
        let model = ModelShape {
            name: "Post",
            table: "posts",
            soft_delete: true,
            timestamps: false,
            tenant_scoped: false,
            audit: true,
            append_only: false,
            fields: &fields,
        };
        assert_eq!(
            canonical(&model),
            "model=Post;table=posts;soft_delete=true;timestamps=false;tenant=false;audit=true;append_only=false;\
             field=id:id:String:nfalse:pktrue:ufalse:ifalse:dNone:rNone:mNone:rfNone:gUuid7;\
             field=owner_id:owner:I64:ntrue:pkfalse:ufalse:itrue:dNone:rSome((\"User\", SetNull)):mNone:rfSome(\"user\"):gNo;\
             field=slug:slug:String:nfalse:pkfalse:utrue:ifalse:dSome(Str(\"a \\\"b\\\"\\n\")):rNone:mSome(64):rfNone:gNo;\
             field=score:score:F64:nfalse:pkfalse:ufalse:ifalse:dSome(Float(-1e20)):rNone:mNone:rfNone:gNo;"
        );
        assert_eq!(checksum(&model), 0x964e_5da8_b819_f977);
        assert_eq!(to_hex(0xab), "00000000000000ab");
    }

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// The first checksums were computed over `{:?}` output; the explicit
    /// spelling must agree with it for every value a literal can produce.
    #[test]
    fn strings_are_spelled_as_the_first_checksums_spelled_them() {
        for c in (0..=0x10_FFFF).filter_map(char::from_u32) {
            let one = c.to_string();
            let mut s = String::new();
            string(&mut s, &one);
            assert_eq!(s, format!("{one:?}"), "U+{:04X}", c as u32);
        }
        let mut s = String::new();
        let mixed = "e\u{301} 'q' \"d\" \\ \t\r\n\0 日本 \u{7f}\u{200b}";
        string(&mut s, mixed);
        assert_eq!(s, format!("{mixed:?}"));
    }

    #[test]
    fn floats_are_spelled_as_the_first_checksums_spelled_them() {
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            -2.0,
            0.5,
            1.5,
            0.1,
            1e-4,
            9.999e-5,
            1e15,
            9_999_999_999_999_998.0,
            1e16,
            1e20,
            1e-7,
            123_456.789,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        let mut x = 1.234_567_891_234_5e-30;
        while x < 1e30 {
            values.push(x);
            values.push(-x);
            x *= 7.3;
        }
        for v in values {
            let mut s = String::new();
            float(&mut s, v);
            assert_eq!(s, format!("{v:?}"));
        }
    }
}
