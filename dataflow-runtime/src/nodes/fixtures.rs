//! Hand-built model schemas and a statement recorder, so the SQL that
//! filters and nodes generate can be snapshot-tested per dialect without a
//! database. The models mirror what `#[dataflow::model]` emits.

use crate::backend::Conn;
use crate::error::Result;
use crate::schema::{DefaultValue, FieldSchema, FieldType, Generated, ModelOptions, ModelSchema};
use crate::sql::{Dialect, Sql};
use crate::value::{Cell, SqlValue};
use std::collections::VecDeque;
use std::fmt::Write as _;

/// A plain required field; the statics override what differs.
pub(crate) const fn field(name: &'static str, ty: FieldType) -> FieldSchema {
    FieldSchema {
        name,
        column: name,
        ty,
        nullable: false,
        primary_key: false,
        unique: false,
        index: false,
        default: None,
        references: None,
        max_length: None,
        renamed_from: None,
        sensitive: false,
        generated: Generated::No,
    }
}

const OPTIONS: ModelOptions = ModelOptions {
    soft_delete: false,
    timestamps: true,
    tenant_scoped: false,
    audit: None,
    cache_ttl_ms: None,
    append_only: false,
    versioned: false,
};

/// `User`: a generated UUID-text key, a unique field, a nullable one, a
/// default, timestamps.
pub(crate) static USER: ModelSchema = ModelSchema {
    name: "User",
    table: "users",
    fields: &[
        FieldSchema {
            primary_key: true,
            generated: Generated::Uuid7,
            ..field("id", FieldType::String)
        },
        FieldSchema {
            unique: true,
            ..field("email", FieldType::String)
        },
        FieldSchema {
            nullable: true,
            ..field("full_name", FieldType::String)
        },
        FieldSchema {
            default: Some(DefaultValue::Bool(true)),
            ..field("active", FieldType::Bool)
        },
        field("age", FieldType::I32),
        FieldSchema {
            generated: Generated::CreatedAt,
            ..field("created_at", FieldType::DateTime)
        },
        FieldSchema {
            generated: Generated::UpdatedAt,
            ..field("updated_at", FieldType::DateTime)
        },
    ],
    options: OPTIONS,
    checksum: 0,
};

/// `Note`: an auto-increment key, a renamed column, soft delete with
/// timestamps.
pub(crate) static NOTE: ModelSchema = ModelSchema {
    name: "Note",
    table: "notes",
    fields: &[
        FieldSchema {
            primary_key: true,
            generated: Generated::AutoIncrement,
            ..field("id", FieldType::I64)
        },
        FieldSchema {
            max_length: Some(20),
            ..field("title", FieldType::String)
        },
        FieldSchema {
            nullable: true,
            column: "body_text",
            ..field("body", FieldType::String)
        },
        field("tags", FieldType::Json),
        FieldSchema {
            generated: Generated::CreatedAt,
            ..field("created_at", FieldType::DateTime)
        },
        FieldSchema {
            generated: Generated::UpdatedAt,
            ..field("updated_at", FieldType::DateTime)
        },
        FieldSchema {
            nullable: true,
            generated: Generated::DeletedAt,
            ..field("deleted_at", FieldType::DateTime)
        },
    ],
    options: ModelOptions {
        soft_delete: true,
        ..OPTIONS
    },
    checksum: 0,
};

/// `Tag`: nothing but a natural key, so a bulk upsert has nothing to update.
pub(crate) static TAG: ModelSchema = ModelSchema {
    name: "Tag",
    table: "tags",
    fields: &[FieldSchema {
        primary_key: true,
        ..field("name", FieldType::String)
    }],
    options: ModelOptions {
        timestamps: false,
        ..OPTIONS
    },
    checksum: 0,
};

/// A statement as a snapshot shows it: the text with the dialect's
/// placeholders, then the bound values (the current time redacted).
pub(crate) fn show(sql: &Sql) -> String {
    let mut text = String::new();
    let mut binds = Vec::new();
    for (piece, bind) in sql.pieces() {
        text.push_str(piece);
        if let Some(v) = bind {
            binds.push(redact(v));
            match sql.dialect() {
                Dialect::Sqlite => text.push('?'),
                Dialect::Postgres => {
                    let _ = write!(text, "${}", binds.len());
                }
            }
        }
    }
    format!("{text}\n  binds ({}): [{}]", binds.len(), binds.join(", "))
}

fn redact(v: &SqlValue) -> String {
    match v {
        SqlValue::DateTime(_) => "DateTime(<now>)".into(),
        SqlValue::Text(s) if chrono::DateTime::parse_from_rfc3339(s).is_ok() => {
            "Text(<now>)".into()
        }
        other => format!("{other:?}"),
    }
}

/// A [`Conn`] that records every statement and answers queries with the
/// rows queued in `replies` (none when the queue is empty).
pub(crate) struct Recorder<const PG: bool> {
    pub(crate) log: Vec<String>,
    pub(crate) replies: VecDeque<Vec<Vec<Cell>>>,
}

impl<const PG: bool> Recorder<PG> {
    pub(crate) fn new(replies: impl IntoIterator<Item = Vec<Vec<Cell>>>) -> Self {
        Recorder {
            log: Vec::new(),
            replies: replies.into_iter().collect(),
        }
    }
}

impl<const PG: bool> Conn for Recorder<PG> {
    const DIALECT: Dialect = if PG {
        Dialect::Postgres
    } else {
        Dialect::Sqlite
    };

    fn exec(&mut self, sql: &Sql) -> Result<usize> {
        self.log.push(show(sql));
        Ok(self.replies.pop_front().map_or(0, |rows| rows.len()))
    }

    fn query(&mut self, sql: &Sql) -> Result<Vec<Vec<Cell>>> {
        self.log.push(show(sql));
        Ok(self.replies.pop_front().unwrap_or_default())
    }

    fn write_transaction<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.log.push("BEGIN".into());
        let out = f(self);
        self.log
            .push(if out.is_ok() { "COMMIT" } else { "ROLLBACK" }.into());
        out
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        self.log.push(sql.into());
        Ok(())
    }
}

/// Runs one node of `model` on a [`Recorder`] of each dialect, and shows
/// the statements and the answer of each.
pub(crate) fn run_on_both(
    model: &'static ModelSchema,
    op: crate::schema::Op,
    params: serde_json::Value,
    replies: &[Vec<Vec<Cell>>],
) -> String {
    fn one<const PG: bool>(
        model: &'static ModelSchema,
        op: crate::schema::Op,
        params: serde_json::Value,
        replies: &[Vec<Vec<Cell>>],
    ) -> String {
        let columns = crate::sql::columns(model);
        let node = crate::schema::node_name(model.name, op);
        let context = crate::Context::new();
        let ctx = super::Ctx::new(model, &node, &columns, false, &context);
        let mut conn = Recorder::<PG>::new(replies.iter().cloned());
        let answer = match super::run(&mut conn, &ctx, op, params) {
            Ok(v) => v.to_string(),
            Err(e) => format!("error[{}]: {}", e.code(), e.message()),
        };
        let label = if PG { "postgres" } else { "sqlite" };
        format!("-- {label}\n{}\n=> {answer}\n", conn.log.join("\n"))
    }
    one::<false>(model, op, params.clone(), replies) + &one::<true>(model, op, params, replies)
}
