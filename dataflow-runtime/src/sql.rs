//! SQL text with bound values, and what differs between the SQL dialects
//! in statements (DDL lives in `migrate/ddl.rs`). Identifiers only ever
//! come from compiled schemas; values only ever travel as bind parameters.

use crate::schema::ModelSchema;
use crate::value::{format_datetime, SqlValue};

/// Which SQL a database speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// SQLite (the embedded default).
    Sqlite,
    /// PostgreSQL.
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

    /// What a `SELECT` of rows about to be changed ends with, so that no
    /// other transaction changes them in between (PostgreSQL's row locks;
    /// SQLite's single writer already holds the whole database).
    pub fn lock_rows(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// Whether a `WITH` clause may hold an `INSERT … RETURNING` whose rows
    /// feed another `INSERT` of the same statement (PostgreSQL's
    /// data-modifying CTEs): a write and its audit row in one round trip.
    pub fn writes_in_with(self) -> bool {
        matches!(self, Dialect::Postgres)
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
pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A statement: SQL text with bound values at marked byte offsets. Diesel
/// writes the placeholders, so the same statement serves `?` (SQLite) and
/// `$n` (PostgreSQL).
#[derive(Debug, Clone)]
pub(crate) struct Sql {
    pub(crate) dialect: Dialect,
    text: String,
    /// Where each bind goes in `text`.
    marks: Vec<usize>,
    binds: Vec<SqlValue>,
}

impl Sql {
    pub(crate) fn new(dialect: Dialect) -> Self {
        Sql {
            dialect,
            text: String::with_capacity(128),
            marks: Vec::new(),
            binds: Vec::new(),
        }
    }

    pub(crate) fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub(crate) fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }

    pub(crate) fn ident(&mut self, name: &str) -> &mut Self {
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
    pub(crate) fn bind(&mut self, v: SqlValue) -> &mut Self {
        let v = match (self.dialect, v) {
            (Dialect::Sqlite, SqlValue::DateTime(dt)) => SqlValue::Text(format_datetime(&dt)),
            (Dialect::Sqlite, SqlValue::Date(d)) => {
                SqlValue::Text(d.format("%Y-%m-%d").to_string())
            }
            (Dialect::Sqlite, SqlValue::Uuid(u)) => SqlValue::Text(u.to_string()),
            (Dialect::Sqlite, SqlValue::Json(j)) => SqlValue::Text(j.to_string()),
            (Dialect::Sqlite, SqlValue::Array(a)) => SqlValue::Text(a.to_sqlite_json()),
            (_, v) => v,
        };
        self.marks.push(self.text.len());
        self.binds.push(v);
        self
    }

    /// Appends another statement of the same dialect, its binds included.
    pub(crate) fn append(&mut self, other: Sql) -> &mut Self {
        let offset = self.text.len();
        self.text.push_str(&other.text);
        self.marks
            .extend(other.marks.into_iter().map(|m| m + offset));
        self.binds.extend(other.binds);
        self
    }

    /// Names the `n`th (from 1) parameter bound so far again, as `?n` on
    /// SQLite and `$n` on PostgreSQL, binding nothing new. Only for a
    /// statement that started with this `Sql` (an [`append`](Self::append)ed
    /// copy would name another statement's parameter).
    pub(crate) fn param_ref(&mut self, n: usize) -> &mut Self {
        debug_assert!(n >= 1 && n <= self.binds.len());
        let mark = match self.dialect {
            Dialect::Sqlite => '?',
            Dialect::Postgres => '$',
        };
        self.text.push(mark);
        self.text.push_str(&n.to_string());
        self
    }

    pub(crate) fn bind_count(&self) -> usize {
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
    pub(crate) fn display(&self) -> String {
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

    /// Starts a list whose items `sep` separates, like sqlx's
    /// `QueryBuilder::separated`: [`Separated::item`] writes the separator
    /// before every item but the first, so callers never count.
    pub(crate) fn separated(&mut self, sep: &'static str) -> Separated<'_> {
        Separated {
            sql: self,
            sep,
            first: true,
        }
    }

    /// `("a", "b")`: a parenthesised list of quoted identifiers (the
    /// columns of an INSERT, the key of an `ON CONFLICT`).
    pub(crate) fn ident_list<'n>(&mut self, names: impl IntoIterator<Item = &'n str>) -> &mut Self {
        self.push("(");
        let mut list = self.separated(", ");
        for name in names {
            list.item().ident(name);
        }
        self.push(")")
    }

    /// `(?, ?)`: a parenthesised list of bound values, for `IN` and for one
    /// row of `VALUES`. An empty list renders `()`, which SQL rejects:
    /// callers handle "no values" themselves.
    pub(crate) fn in_list(&mut self, values: impl IntoIterator<Item = SqlValue>) -> &mut Self {
        self.push("(");
        let mut list = self.separated(", ");
        for v in values {
            list.item().bind(v);
        }
        self.push(")")
    }

    /// ` VALUES (?, ?), (?, ?)`: the rows of a (multi-row) INSERT, taken by
    /// value so bulk inserts move their values instead of copying them.
    pub(crate) fn values<R>(&mut self, rows: impl IntoIterator<Item = R>) -> &mut Self
    where
        R: IntoIterator<Item = SqlValue>,
    {
        self.push(" VALUES ");
        let mut list = self.separated(", ");
        for row in rows {
            list.item().in_list(row);
        }
        self
    }

    /// ` SET "a" = ?, "b" = ?`: assignments of bound values to columns.
    pub(crate) fn set<'c>(
        &mut self,
        assignments: impl IntoIterator<Item = (&'c str, SqlValue)>,
    ) -> &mut Self {
        self.push(" SET ");
        let mut list = self.separated(", ");
        for (column, value) in assignments {
            list.item().ident(column).push(" = ").bind(value);
        }
        self
    }

    /// ` RETURNING <columns>`, where `columns` is a select list already
    /// quoted (see [`columns`]), so writes answer with whole records.
    pub(crate) fn returning(&mut self, columns: &str) -> &mut Self {
        self.push(" RETURNING ").push(columns)
    }
}

/// A list being written into a [`Sql`], from [`Sql::separated`].
pub(crate) struct Separated<'a> {
    sql: &'a mut Sql,
    sep: &'static str,
    first: bool,
}

impl Separated<'_> {
    /// The statement, positioned for the next item: after the separator,
    /// unless this is the first item.
    pub(crate) fn item(&mut self) -> &mut Sql {
        if self.first {
            self.first = false;
        } else {
            self.sql.push(self.sep);
        }
        self.sql
    }
}

/// The select list of a model, in schema order.
pub(crate) fn columns(m: &ModelSchema) -> String {
    m.fields
        .iter()
        .map(|f| quote(f.column))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binds of a statement, in order.
    fn binds(sql: &Sql) -> Vec<SqlValue> {
        sql.pieces().filter_map(|(_, b)| b.cloned()).collect()
    }

    #[test]
    fn separated_writes_the_separator_between_items_only() {
        let mut sql = Sql::new(Dialect::Sqlite);
        let mut list = sql.separated(" AND ");
        for c in ["a", "b", "c"] {
            list.item().ident(c).push(" IS NULL");
        }
        assert_eq!(
            sql.display(),
            r#""a" IS NULL AND "b" IS NULL AND "c" IS NULL"#
        );
    }

    #[test]
    fn separated_without_items_writes_nothing() {
        let mut sql = Sql::new(Dialect::Sqlite);
        sql.push("x");
        sql.separated(", ");
        assert_eq!(sql.display(), "x");
    }

    #[test]
    fn multi_row_insert_binds_every_value_in_row_order() {
        let mut sql = Sql::new(Dialect::Postgres);
        sql.push("INSERT INTO ")
            .ident("t")
            .push(" ")
            .ident_list(["a", "b"])
            .values([
                vec![SqlValue::I64(1), SqlValue::Text("x".into())],
                vec![SqlValue::I64(2), SqlValue::Text("y".into())],
            ]);
        assert_eq!(
            sql.display(),
            r#"INSERT INTO "t" ("a", "b") VALUES (?, ?), (?, ?)"#
        );
        assert_eq!(
            binds(&sql),
            [
                SqlValue::I64(1),
                SqlValue::Text("x".into()),
                SqlValue::I64(2),
                SqlValue::Text("y".into())
            ]
        );
    }

    #[test]
    fn set_assigns_bound_values_and_returning_lists_columns() {
        let mut sql = Sql::new(Dialect::Sqlite);
        sql.push("UPDATE ")
            .ident("t")
            .set([("a", SqlValue::Bool(true)), ("b\"c", SqlValue::I32(3))])
            .returning(r#""a", "b""#);
        assert_eq!(
            sql.display(),
            r#"UPDATE "t" SET "a" = ?, "b""c" = ? RETURNING "a", "b""#
        );
        assert_eq!(binds(&sql), [SqlValue::Bool(true), SqlValue::I32(3)]);
    }

    #[test]
    fn in_list_binds_each_value() {
        let mut sql = Sql::new(Dialect::Sqlite);
        sql.ident("id")
            .push(" IN ")
            .in_list((1..=3).map(SqlValue::I64));
        assert_eq!(sql.display(), r#""id" IN (?, ?, ?)"#);
        assert_eq!(sql.bind_count(), 3);
    }

    #[test]
    fn sqlite_binds_store_rich_types_as_text() {
        let id = uuid::Uuid::nil();
        let mut sql = Sql::new(Dialect::Sqlite);
        sql.in_list([
            SqlValue::Uuid(id),
            SqlValue::Json(serde_json::json!({"a": 1})),
        ]);
        assert_eq!(
            binds(&sql),
            [
                SqlValue::Text(id.to_string()),
                SqlValue::Text(r#"{"a":1}"#.into())
            ]
        );
        let mut sql = Sql::new(Dialect::Postgres);
        sql.in_list([SqlValue::Uuid(id)]);
        assert_eq!(binds(&sql), [SqlValue::Uuid(id)]);
    }
}
