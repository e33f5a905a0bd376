//! Reading the live schema back from the database: tables, columns, types,
//! nullability, defaults, primary keys, unique constraints, indexes and
//! foreign keys, in one normalized shape for both backends.

use super::{cell_text, opt_text, query as rows};
use crate::backend::Conn;
use crate::error::{Error, Result};
use crate::sql::Dialect;
use crate::value::Cell;
use std::collections::BTreeMap;

/// A column as the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveColumn {
    /// The column name.
    pub name: String,
    /// Normalized, lower-case type: `text`, `integer`, `varchar(20)`, `timestamptz`, ...
    pub ty: String,
    /// Whether it accepts NULL.
    pub nullable: bool,
    /// The default expression, normalized (`1`, `'draft'`, `true`).
    pub default: Option<String>,
    /// It is the (single-column) primary key.
    pub primary_key: bool,
    /// A single-column unique constraint or unique index covers it.
    pub unique: bool,
}

/// An index that is not the primary key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveIndex {
    /// The index name.
    pub name: String,
    /// The indexed columns, in order.
    pub columns: Vec<String>,
    /// A unique index.
    pub unique: bool,
}

/// A single-column foreign key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveForeignKey {
    /// The referencing column.
    pub column: String,
    /// The referenced table.
    pub target_table: String,
    /// The referenced column.
    pub target_column: String,
    /// `CASCADE`, `RESTRICT`, `SET NULL`, `NO ACTION`.
    pub on_delete: String,
}

/// A table as the database has it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LiveTable {
    /// The table name.
    pub name: String,
    /// Its columns, in table order.
    pub columns: Vec<LiveColumn>,
    /// Non-unique and unique indexes that are not the primary key.
    pub indexes: Vec<LiveIndex>,
    /// Its foreign keys.
    pub foreign_keys: Vec<LiveForeignKey>,
    /// SQLite's original `CREATE TABLE` text (used to rebuild it back).
    pub create_sql: Option<String>,
}

impl LiveTable {
    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<&LiveColumn> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Every user table (internal `dataflow_*` tables excluded), by name.
pub type LiveSchema = BTreeMap<String, LiveTable>;

fn int(c: &Cell) -> i64 {
    match c {
        Cell::I64(i) => *i,
        Cell::Bool(b) => i64::from(*b),
        _ => 0,
    }
}

/// Normalizes a default expression: drops casts (`'x'::text`), parentheses
/// and case differences so compiled and live defaults compare.
pub(crate) fn normalize_default(d: &str) -> String {
    let mut s = d.trim();
    while s.starts_with('(') && s.ends_with(')') {
        s = &s[1..s.len() - 1];
    }
    let s = match s.find("::") {
        Some(i) if !s[..i].is_empty() => &s[..i],
        _ => s,
    };
    match s.to_ascii_lowercase().as_str() {
        "true" => "true".into(),
        "false" => "false".into(),
        _ => s.to_string(),
    }
}

pub(crate) fn introspect<C: Conn>(conn: &mut C) -> Result<LiveSchema> {
    match C::DIALECT {
        Dialect::Sqlite => sqlite(conn),
        Dialect::Postgres => postgres(conn),
    }
}

fn sqlite<C: Conn>(conn: &mut C) -> Result<LiveSchema> {
    let mut out = LiveSchema::new();
    let tables = rows(
        conn,
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND (name NOT LIKE 'dataflow_%' OR name = 'dataflow_audit') ORDER BY name",
        vec![],
    )?;
    for t in tables {
        let mut it = t.into_iter();
        let name = cell_text(&it.next().unwrap_or(Cell::Null));
        let create_sql = it.next().as_ref().and_then(opt_text);
        let mut columns = Vec::new();
        for c in rows(
            conn,
            &format!(
                "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info({})",
                quote_lit(&name)
            ),
            vec![],
        )? {
            let [n, ty, notnull, dflt, pk]: [Cell; 5] = c
                .try_into()
                .map_err(|_| Error::internal("pragma_table_info shape"))?;
            let pk = int(&pk) > 0;
            let ty = cell_text(&ty).to_ascii_lowercase();
            columns.push(LiveColumn {
                name: cell_text(&n),
                ty,
                nullable: int(&notnull) == 0 && !pk,
                default: opt_text(&dflt).map(|d| normalize_default(&d)),
                primary_key: pk,
                unique: false,
            });
        }
        let mut indexes = Vec::new();
        for idx in rows(
            conn,
            &format!(
                "SELECT name, \"unique\", origin FROM pragma_index_list({})",
                quote_lit(&name)
            ),
            vec![],
        )? {
            let [iname, unique, origin]: [Cell; 3] = idx
                .try_into()
                .map_err(|_| Error::internal("pragma_index_list shape"))?;
            let (iname, unique, origin) =
                (cell_text(&iname), int(&unique) == 1, cell_text(&origin));
            if origin == "pk" {
                continue;
            }
            let cols: Vec<String> = rows(
                conn,
                &format!("SELECT name FROM pragma_index_info({})", quote_lit(&iname)),
                vec![],
            )?
            .into_iter()
            .map(|r| cell_text(&r.into_iter().next().unwrap_or(Cell::Null)))
            .collect();
            if unique && cols.len() == 1 {
                if let Some(c) = columns.iter_mut().find(|c| c.name == cols[0]) {
                    c.unique = true;
                }
            }
            // Constraint-backed indexes ("u") belong to the column definition.
            if origin == "c" {
                indexes.push(LiveIndex {
                    name: iname,
                    columns: cols,
                    unique,
                });
            }
        }
        let mut foreign_keys = Vec::new();
        for fk in rows(
            conn,
            &format!(
                "SELECT \"from\", \"table\", \"to\", on_delete FROM pragma_foreign_key_list({})",
                quote_lit(&name)
            ),
            vec![],
        )? {
            let [from, table, to, on_delete]: [Cell; 4] = fk
                .try_into()
                .map_err(|_| Error::internal("pragma_foreign_key_list shape"))?;
            foreign_keys.push(LiveForeignKey {
                column: cell_text(&from),
                target_table: cell_text(&table),
                target_column: cell_text(&to),
                on_delete: cell_text(&on_delete),
            });
        }
        out.insert(
            name.clone(),
            LiveTable {
                name,
                columns,
                indexes,
                foreign_keys,
                create_sql,
            },
        );
    }
    Ok(out)
}

/// A SQL string literal for SQLite's table-valued pragmas (names come from
/// `sqlite_master`, quoted here).
fn quote_lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn postgres<C: Conn>(conn: &mut C) -> Result<LiveSchema> {
    let mut out = LiveSchema::new();
    let cols = rows(
        conn,
        "SELECT c.table_name::text, c.column_name::text, c.data_type::text, c.character_maximum_length::bigint, \
                c.is_nullable = 'YES', c.column_default::text \
         FROM information_schema.columns c JOIN information_schema.tables t \
           ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
         WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' AND (c.table_name NOT LIKE 'dataflow\\_%' OR c.table_name = 'dataflow_audit') \
         ORDER BY c.table_name, c.ordinal_position",
        vec![],
    )?;
    for r in cols {
        let [table, name, ty, len, nullable, default]: [Cell; 6] =
            r.try_into().map_err(|_| Error::internal("columns shape"))?;
        let table = cell_text(&table);
        let ty = match (cell_text(&ty).as_str(), len) {
            ("character varying", Cell::I64(n)) => format!("varchar({n})"),
            ("character varying", _) => "varchar".into(),
            ("timestamp with time zone", _) => "timestamptz".into(),
            ("timestamp without time zone", _) => "timestamp".into(),
            (other, _) => other.to_string(),
        };
        let default = opt_text(&default)
            .filter(|d| !d.starts_with("nextval("))
            .map(|d| normalize_default(&d));
        out.entry(table.clone())
            .or_insert_with(|| LiveTable {
                name: table.clone(),
                ..LiveTable::default()
            })
            .columns
            .push(LiveColumn {
                name: cell_text(&name),
                ty,
                nullable: matches!(nullable, Cell::Bool(true)),
                default,
                primary_key: false,
                unique: false,
            });
    }
    // Indexes (including those behind PRIMARY KEY and UNIQUE constraints).
    let idx = rows(
        conn,
        "SELECT t.relname::text, i.relname::text, ix.indisunique, ix.indisprimary, \
                array_to_string(ARRAY(SELECT a.attname FROM unnest(ix.indkey) WITH ORDINALITY k(attnum, ord) \
                    JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum ORDER BY k.ord), ','), \
                EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.oid AND c.contype IN ('u', 'p')) \
         FROM pg_index ix JOIN pg_class t ON t.oid = ix.indrelid JOIN pg_class i ON i.oid = ix.indexrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE n.nspname = current_schema() AND (t.relname NOT LIKE 'dataflow\\_%' OR t.relname = 'dataflow_audit') ORDER BY t.relname, i.relname",
        vec![],
    )?;
    for r in idx {
        let [table, name, unique, primary, cols, constraint]: [Cell; 6] =
            r.try_into().map_err(|_| Error::internal("index shape"))?;
        let Some(t) = out.get_mut(&cell_text(&table)) else {
            continue;
        };
        let cols: Vec<String> = cell_text(&cols)
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let (unique, primary) = (
            matches!(unique, Cell::Bool(true)),
            matches!(primary, Cell::Bool(true)),
        );
        if cols.len() == 1 {
            if let Some(c) = t.columns.iter_mut().find(|c| c.name == cols[0]) {
                c.primary_key |= primary;
                c.unique |= unique && !primary;
            }
        }
        if !primary && !matches!(constraint, Cell::Bool(true)) {
            t.indexes.push(LiveIndex {
                name: cell_text(&name),
                columns: cols,
                unique,
            });
        }
    }
    let fks = rows(
        conn,
        "SELECT t.relname::text, a.attname::text, ft.relname::text, fa.attname::text, c.confdeltype::text \
         FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid JOIN pg_class ft ON ft.oid = c.confrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] \
         JOIN pg_attribute fa ON fa.attrelid = c.confrelid AND fa.attnum = c.confkey[1] \
         WHERE c.contype = 'f' AND n.nspname = current_schema() ORDER BY t.relname, a.attname",
        vec![],
    )?;
    for r in fks {
        let [table, column, target, target_column, action]: [Cell; 5] =
            r.try_into().map_err(|_| Error::internal("fk shape"))?;
        let Some(t) = out.get_mut(&cell_text(&table)) else {
            continue;
        };
        let on_delete = match cell_text(&action).as_str() {
            "c" => "CASCADE",
            "r" => "RESTRICT",
            "n" => "SET NULL",
            "d" => "SET DEFAULT",
            _ => "NO ACTION",
        };
        t.foreign_keys.push(LiveForeignKey {
            column: cell_text(&column),
            target_table: cell_text(&target),
            target_column: cell_text(&target_column),
            on_delete: on_delete.into(),
        });
    }
    for t in out.values_mut() {
        for c in t.columns.iter_mut().filter(|c| c.primary_key) {
            c.nullable = false;
        }
    }
    Ok(out)
}

/// Whether a table has at least one row (risk depends on it).
pub(crate) fn has_rows<C: Conn>(conn: &mut C, table: &str) -> Result<bool> {
    let r = rows(
        conn,
        &format!("SELECT EXISTS (SELECT 1 FROM {})", crate::sql::quote(table)),
        vec![],
    )?;
    Ok(r.first()
        .and_then(|r| r.first())
        .is_some_and(|c| int(c) == 1))
}
