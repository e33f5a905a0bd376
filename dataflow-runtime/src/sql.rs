//! SQL text with bound values, and what differs between the SQL dialects
//! in statements (DDL lives in `migrate/ddl.rs`). Identifiers only ever
//! come from compiled schemas; values only ever travel as bind parameters.

use crate::schema::ModelSchema;
use crate::value::{format_datetime, SqlValue};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The most bind parameters one statement may carry.
    pub fn max_binds(self) -> usize {
        match self {
            Dialect::Sqlite => 32_766,
            Dialect::Postgres => 65_535,
        }
    }

    /// `a IS DISTINCT FROM b`: inequality where NULL counts as a value.
    pub fn distinct_from(self) -> &'static str {
        match self {
            Dialect::Sqlite => " IS NOT ",
            Dialect::Postgres => " IS DISTINCT FROM ",
        }
    }
}

/// `"name"`, with embedded quotes doubled.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A statement: SQL text with bound values at marked byte offsets. Diesel
/// writes the placeholders, so the same statement serves `?` (SQLite) and
/// `$n` (PostgreSQL).
#[derive(Debug, Clone)]
pub struct Sql {
    pub(crate) dialect: Dialect,
    text: String,
    /// Where each bind goes in `text`.
    marks: Vec<usize>,
    binds: Vec<SqlValue>,
}

impl Sql {
    pub fn new(dialect: Dialect) -> Self {
        Sql {
            dialect,
            text: String::with_capacity(128),
            marks: Vec::new(),
            binds: Vec::new(),
        }
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }

    pub fn ident(&mut self, name: &str) -> &mut Self {
        self.text.push('"');
        if name.contains('"') {
            self.text.push_str(&name.replace('"', "\"\""));
        } else {
            self.text.push_str(name);
        }
        self.text.push('"');
        self
    }

    /// Appends a placeholder bound to `v`. SQLite has no native timestamp,
    /// date, uuid or json types: those are stored as text in one fixed form.
    pub fn bind(&mut self, v: SqlValue) -> &mut Self {
        let v = match (self.dialect, v) {
            (Dialect::Sqlite, SqlValue::DateTime(dt)) => SqlValue::Text(format_datetime(&dt)),
            (Dialect::Sqlite, SqlValue::Date(d)) => {
                SqlValue::Text(d.format("%Y-%m-%d").to_string())
            }
            (Dialect::Sqlite, SqlValue::Uuid(u)) => SqlValue::Text(u.to_string()),
            (Dialect::Sqlite, SqlValue::Json(j)) => SqlValue::Text(j.to_string()),
            (_, v) => v,
        };
        self.marks.push(self.text.len());
        self.binds.push(v);
        self
    }

    pub fn bind_count(&self) -> usize {
        self.binds.len()
    }

    /// The text between binds, each followed by its bind (the last by none).
    pub(crate) fn pieces(&self) -> impl Iterator<Item = (&str, Option<&SqlValue>)> {
        let ends = self
            .marks
            .iter()
            .copied()
            .chain(std::iter::once(self.text.len()));
        let mut start = 0;
        ends.enumerate().map(move |(i, end)| {
            let piece = &self.text[start..end];
            start = end;
            (piece, self.binds.get(i))
        })
    }

    /// The statement with `?` in place of values, for logs (values are never logged).
    pub fn display(&self) -> String {
        self.pieces()
            .map(|(p, b)| {
                if b.is_some() {
                    format!("{p}?")
                } else {
                    p.to_string()
                }
            })
            .collect()
    }
}

/// The select list of a model, in schema order.
pub fn columns(m: &ModelSchema) -> String {
    m.fields
        .iter()
        .map(|f| quote(f.column))
        .collect::<Vec<_>>()
        .join(", ")
}
