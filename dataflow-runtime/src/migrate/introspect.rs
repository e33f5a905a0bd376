//! Reading the live schema back from the database: tables, columns, types,
//! nullability, defaults, primary keys, unique constraints, indexes,
//! foreign keys (composite ones too) and, on PostgreSQL, row-level
//! security, in one normalized shape for both backends.

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
    /// It is (part of) the primary key.
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

/// A foreign key, of one column or several (`(tenant_id, user_id)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveForeignKey {
    /// The constraint's name (PostgreSQL; SQLite's are not kept).
    pub name: Option<String>,
    /// The referencing columns, in key order.
    pub columns: Vec<String>,
    /// The referenced table.
    pub target_table: String,
    /// The referenced columns, in key order.
    pub target_columns: Vec<String>,
    /// `CASCADE`, `RESTRICT`, `SET NULL`, `NO ACTION`.
    pub on_delete: String,
}

/// A trigger on a table (SQLite; dataflow makes them for `set_null`
/// between tenant-scoped models).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveTrigger {
    /// The trigger's name.
    pub name: String,
    /// Its `CREATE TRIGGER` text (a table rebuild makes it again).
    pub sql: String,
}

/// A table as the database has it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LiveTable {
    /// The table name.
    pub name: String,
    /// Its columns, in table order.
    pub columns: Vec<LiveColumn>,
    /// The primary key's columns, in key order.
    pub primary_key: Vec<String>,
    /// The primary key constraint's name (PostgreSQL).
    pub primary_key_name: Option<String>,
    /// Indexes made with `CREATE INDEX` (plain and unique), not the ones
    /// behind constraints.
    pub indexes: Vec<LiveIndex>,
    /// `UNIQUE` constraints (of one column or several), with their names.
    pub unique_constraints: Vec<LiveIndex>,
    /// Its foreign keys.
    pub foreign_keys: Vec<LiveForeignKey>,
    /// SQLite's original `CREATE TABLE` text (used to rebuild it back).
    pub create_sql: Option<String>,
    /// PostgreSQL: row-level security is enabled and forced.
    pub row_level_security: bool,
    /// PostgreSQL: the names of the table's row-level security policies.
    pub policies: Vec<String>,
    /// PostgreSQL: the query cache's change trigger (`dataflow_changes`,
    /// which notifies other processes of every write) is on the table.
    pub change_trigger: bool,
    /// SQLite: the triggers on the table.
    pub triggers: Vec<LiveTrigger>,
}

impl LiveTable {
    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<&LiveColumn> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The unique constraint or unique index on exactly `columns`, and
    /// whether it is a constraint.
    pub(crate) fn unique_on(&self, columns: &[&str]) -> Option<(&LiveIndex, bool)> {
        let same = |i: &&LiveIndex| {
            i.columns
                .iter()
                .map(String::as_str)
                .eq(columns.iter().copied())
        };
        self.unique_constraints
            .iter()
            .find(same)
            .map(|i| (i, true))
            .or_else(|| {
                self.indexes
                    .iter()
                    .filter(|i| i.unique)
                    .find(same)
                    .map(|i| (i, false))
            })
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
        let mut key: Vec<(i64, String)> = Vec::new();
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
            if int(&pk) > 0 {
                key.push((int(&pk), cell_text(&n)));
            }
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
        key.sort();
        let primary_key: Vec<String> = key.into_iter().map(|(_, c)| c).collect();
        let mut indexes = Vec::new();
        let mut unique_constraints = Vec::new();
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
            let index = LiveIndex {
                name: iname,
                columns: cols,
                unique,
            };
            match origin.as_str() {
                "c" => indexes.push(index),
                // Constraint-backed: rebuilt with the table, never dropped alone.
                _ => unique_constraints.push(index),
            }
        }
        let mut foreign_keys: Vec<(i64, LiveForeignKey)> = Vec::new();
        for fk in rows(
            conn,
            &format!(
                "SELECT id, \"from\", \"table\", \"to\", on_delete FROM pragma_foreign_key_list({}) ORDER BY id, seq",
                quote_lit(&name)
            ),
            vec![],
        )? {
            let [id, from, table, to, on_delete]: [Cell; 5] = fk
                .try_into()
                .map_err(|_| Error::internal("pragma_foreign_key_list shape"))?;
            // One row per column of the key, in key order.
            match foreign_keys.last_mut() {
                Some((last, k)) if *last == int(&id) => {
                    k.columns.push(cell_text(&from));
                    k.target_columns.push(cell_text(&to));
                }
                _ => foreign_keys.push((
                    int(&id),
                    LiveForeignKey {
                        name: None,
                        columns: vec![cell_text(&from)],
                        target_table: cell_text(&table),
                        target_columns: vec![cell_text(&to)],
                        on_delete: cell_text(&on_delete),
                    },
                )),
            }
        }
        let foreign_keys = foreign_keys.into_iter().map(|(_, k)| k).collect();
        let mut triggers = Vec::new();
        for r in rows(
            conn,
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? ORDER BY name",
            vec![super::text(name.as_str())],
        )? {
            let [n, sql]: [Cell; 2] = r
                .try_into()
                .map_err(|_| Error::internal("sqlite_master trigger shape"))?;
            triggers.push(LiveTrigger {
                name: cell_text(&n),
                sql: cell_text(&sql),
            });
        }
        out.insert(
            name.clone(),
            LiveTable {
                name,
                columns,
                primary_key,
                primary_key_name: None,
                indexes,
                unique_constraints,
                foreign_keys,
                create_sql,
                row_level_security: false,
                policies: Vec::new(),
                change_trigger: false,
                triggers,
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
                c.unique |= unique && !primary;
            }
        }
        let index = LiveIndex {
            name: cell_text(&name),
            columns: cols,
            unique,
        };
        if primary {
            for c in t.columns.iter_mut() {
                c.primary_key |= index.columns.contains(&c.name);
            }
            // A constraint's index has the constraint's name.
            t.primary_key_name = Some(index.name.clone());
            t.primary_key = index.columns;
        } else if matches!(constraint, Cell::Bool(true)) {
            t.unique_constraints.push(index);
        } else {
            t.indexes.push(index);
        }
    }
    let fks = rows(
        conn,
        "SELECT t.relname::text, c.conname::text, \
                array_to_string(ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(attnum, ord) \
                    JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum ORDER BY k.ord), ','), \
                ft.relname::text, \
                array_to_string(ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(attnum, ord) \
                    JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum ORDER BY k.ord), ','), \
                c.confdeltype::text, pg_get_constraintdef(c.oid) \
         FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid JOIN pg_class ft ON ft.oid = c.confrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE c.contype = 'f' AND n.nspname = current_schema() ORDER BY t.relname, c.conname",
        vec![],
    )?;
    let list = |c: &Cell| -> Vec<String> {
        cell_text(c)
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    for r in fks {
        let [table, name, columns, target, target_columns, action, def]: [Cell; 7] =
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
        // PostgreSQL 15's `SET NULL (col)` clears only some of the columns.
        let def = cell_text(&def);
        let on_delete = match def.split_once("ON DELETE SET NULL (") {
            Some((_, rest)) if on_delete == "SET NULL" => {
                format!("SET NULL ({})", rest.split(')').next().unwrap_or_default())
            }
            _ => on_delete.to_string(),
        };
        t.foreign_keys.push(LiveForeignKey {
            name: Some(cell_text(&name)),
            columns: list(&columns),
            target_table: cell_text(&target),
            target_columns: list(&target_columns),
            on_delete: on_delete.replace('"', ""),
        });
    }
    let rls = rows(
        conn,
        "SELECT t.relname::text, t.relrowsecurity AND t.relforcerowsecurity, \
                COALESCE((SELECT string_agg(p.polname::text, ',' ORDER BY p.polname) FROM pg_policy p WHERE p.polrelid = t.oid), '') \
         FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE n.nspname = current_schema() AND t.relkind = 'r' AND (t.relrowsecurity OR t.relforcerowsecurity \
            OR EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = t.oid))",
        vec![],
    )?;
    for r in rls {
        let [table, on, policies]: [Cell; 3] =
            r.try_into().map_err(|_| Error::internal("rls shape"))?;
        if let Some(t) = out.get_mut(&cell_text(&table)) {
            t.row_level_security = matches!(on, Cell::Bool(true));
            t.policies = list(&policies);
        }
    }
    let changes = rows(
        conn,
        "SELECT c.relname::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND t.tgname = 'dataflow_changes' AND NOT t.tgisinternal",
        vec![],
    )?;
    for r in changes {
        if let Some(t) = r.first().and_then(|c| out.get_mut(&cell_text(c))) {
            t.change_trigger = true;
        }
    }
    for t in out.values_mut() {
        for c in t.columns.iter_mut().filter(|c| c.primary_key) {
            c.nullable = false;
        }
    }
    Ok(out)
}

/// Whether a table has at least one row (risk depends on it). On
/// PostgreSQL the question is asked as a system read across tenants, so a
/// table behind row-level security answers for all its rows.
pub(crate) fn has_rows<C: Conn>(conn: &mut C, table: &str) -> Result<bool> {
    let sql = format!("SELECT EXISTS (SELECT 1 FROM {})", crate::sql::quote(table));
    let r = match C::DIALECT {
        Dialect::Sqlite => rows(conn, &sql, vec![])?,
        Dialect::Postgres => conn.write_transaction(|c| {
            crate::rls::set(c, &crate::rls::Scope::AllTenantsRead)?;
            rows(c, &sql, vec![])
        })?,
    };
    Ok(r.first()
        .and_then(|r| r.first())
        .is_some_and(|c| int(c) == 1))
}
