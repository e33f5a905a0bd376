//! The migration history and the registry tables: what was applied, when,
//! by whom, how risky, and which model versions it produced.

use super::{cell_text, exec, query, text, BootPolicy, MigrationPlan};
use crate::backend::Conn;
use crate::error::{Error, ErrorCode, Result};
use crate::schema::ModelSchema;
use crate::sql::Dialect;
use crate::value::{format_datetime, now, Cell, SqlValue};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationStatus {
    Pending,
    Applied,
    Failed,
    RolledBack,
}

impl MigrationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationStatus::Pending => "pending",
            MigrationStatus::Applied => "applied",
            MigrationStatus::Failed => "failed",
            MigrationStatus::RolledBack => "rolled_back",
        }
    }

    fn parse(s: &str) -> MigrationStatus {
        match s {
            "applied" => MigrationStatus::Applied,
            "failed" => MigrationStatus::Failed,
            "rolled_back" => MigrationStatus::RolledBack,
            _ => MigrationStatus::Pending,
        }
    }
}

/// One row of the migration history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    pub version: String,
    pub name: String,
    /// `auto` (planned from the models) or `file` (a reviewed migration file).
    pub source: String,
    pub checksum: String,
    pub up_sql: String,
    pub down_sql: String,
    pub risk: String,
    pub rules: String,
    pub reason: Option<String>,
    pub status: MigrationStatus,
    pub started_at: String,
    pub applied_at: Option<String>,
    pub applied_by: String,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
    pub down_loses_data: bool,
}

/// A model as the registry knows it, readable without the user's binary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegisteredModel {
    pub name: String,
    pub version: i64,
    pub checksum: String,
    pub table: String,
    pub first_seen: String,
    pub last_seen: String,
    pub schema: serde_json::Value,
}

const COLUMNS: &str = "version, name, source, checksum, up_sql, down_sql, risk, rules, reason, status, started_at, applied_at, applied_by, duration_ms, error, down_loses_data";

fn opt(c: &Cell) -> Option<String> {
    match c {
        Cell::Null => None,
        c => Some(cell_text(c)),
    }
}

fn to_entry(r: &[Cell]) -> HistoryEntry {
    HistoryEntry {
        version: cell_text(&r[0]),
        name: cell_text(&r[1]),
        source: cell_text(&r[2]),
        checksum: cell_text(&r[3]),
        up_sql: cell_text(&r[4]),
        down_sql: cell_text(&r[5]),
        risk: cell_text(&r[6]),
        rules: cell_text(&r[7]),
        reason: opt(&r[8]),
        status: MigrationStatus::parse(&cell_text(&r[9])),
        started_at: cell_text(&r[10]),
        applied_at: opt(&r[11]),
        applied_by: cell_text(&r[12]),
        duration_ms: match &r[13] {
            Cell::I64(i) => Some(*i),
            _ => None,
        },
        error: opt(&r[14]),
        down_loses_data: matches!(r[15], Cell::Bool(true) | Cell::I64(1)),
    }
}

/// The history, oldest first (empty before the first migration).
pub fn list<C: Conn>(conn: &mut C) -> Result<Vec<HistoryEntry>> {
    match query(
        conn,
        &format!("SELECT {COLUMNS} FROM dataflow_migrations ORDER BY version"),
        vec![],
    ) {
        Ok(rows) => Ok(rows.iter().map(|r| to_entry(r)).collect()),
        Err(e)
            if e.kind() == ErrorCode::Database
                && !super::table_exists(conn, "dataflow_migrations")? =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

pub fn entry<C: Conn>(conn: &mut C, version: &str) -> Result<HistoryEntry> {
    query(
        conn,
        &format!("SELECT {COLUMNS} FROM dataflow_migrations WHERE version = ?"),
        vec![text(version)],
    )?
    .first()
    .map(|r| to_entry(r))
    .ok_or_else(|| {
        Error::new(
            ErrorCode::NotFound,
            format!("no migration with version {version}"),
        )
    })
}

fn new_version() -> String {
    let t = now();
    format!(
        "{}{:03}",
        t.format("%Y%m%d%H%M%S"),
        t.timestamp_subsec_millis()
    )
}

fn joined(sql: &[String]) -> String {
    sql.iter().map(|s| format!("{s};\n")).collect()
}

/// Records a migration as `pending` (committed on its own, so a crash
/// mid-apply leaves a trace that the next boot marks `failed`).
#[allow(clippy::too_many_arguments)]
pub fn begin<C: Conn>(
    conn: &mut C,
    app: &str,
    name: &str,
    source: &str,
    up: &[String],
    down: &[String],
    plan: &MigrationPlan,
    reason: Option<&str>,
    applied_by: &str,
) -> Result<HistoryEntry> {
    let version = new_version();
    let up_sql = joined(up);
    let rules = plan.rules().join(",");
    insert(
        conn,
        &version,
        name,
        app,
        source,
        &up_sql,
        &joined(down),
        plan.risk().as_str(),
        &rules,
        reason,
        applied_by,
        plan.operations.iter().any(|o| o.down_loses_data),
    )?;
    entry(conn, &version)
}

#[allow(clippy::too_many_arguments)]
fn insert<C: Conn>(
    conn: &mut C,
    version: &str,
    name: &str,
    app: &str,
    source: &str,
    up_sql: &str,
    down_sql: &str,
    risk: &str,
    rules: &str,
    reason: Option<&str>,
    applied_by: &str,
    down_loses_data: bool,
) -> Result<()> {
    let checksum = format!("{:016x}", super::fnv1a64(up_sql.as_bytes()));
    exec(
        conn,
        "INSERT INTO dataflow_migrations (version, name, application_id, source, checksum, up_sql, down_sql, risk, rules, reason, status, started_at, applied_by, down_loses_data) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
        vec![
            text(version),
            text(name),
            text(app),
            text(source),
            text(checksum),
            text(up_sql),
            text(down_sql),
            text(risk),
            text(rules),
            reason.map_or(SqlValue::Null(crate::schema::FieldType::String), text),
            text(format_datetime(&now())),
            text(applied_by),
            SqlValue::Bool(down_loses_data),
        ],
    )?;
    Ok(())
}

pub fn mark_applied<C: Conn>(conn: &mut C, version: &str, started: Instant) -> Result<()> {
    exec(
        conn,
        "UPDATE dataflow_migrations SET status = 'applied', applied_at = ?, duration_ms = ? WHERE version = ?",
        vec![text(format_datetime(&now())), SqlValue::I64(started.elapsed().as_millis() as i64), text(version)],
    )?;
    Ok(())
}

pub fn mark_failed<C: Conn>(conn: &mut C, version: &str, e: &Error) -> Result<()> {
    exec(
        conn,
        "UPDATE dataflow_migrations SET status = 'failed', error = ? WHERE version = ?",
        vec![text(e.message()), text(version)],
    )?;
    Ok(())
}

/// Under the lock, a `pending` row belongs to a process that died mid-apply;
/// its transaction was rolled back by the database, so it failed.
pub fn recover_interrupted<C: Conn>(conn: &mut C) -> Result<usize> {
    exec(
        conn,
        "UPDATE dataflow_migrations SET status = 'failed', error = 'interrupted: the applying process stopped before it committed' WHERE status = 'pending'",
        vec![],
    )
}

/// Runs `statements` and then `record` in one transaction. On SQLite,
/// foreign keys are switched off around it (table rebuilds need that) and
/// checked before commit.
pub fn run_statements<C: Conn>(
    conn: &mut C,
    statements: &[String],
    record: impl FnOnce(&mut C) -> Result<()>,
) -> Result<()> {
    let sqlite = C::DIALECT == Dialect::Sqlite;
    if sqlite {
        conn.batch("PRAGMA foreign_keys = OFF")?;
    }
    let total = statements.len();
    // Progress for people watching a long apply; quiet when piped (boot, tests, CI).
    let progress = total > 5 && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let result = conn.write_transaction(|c| {
        for (i, s) in statements.iter().enumerate() {
            if progress {
                eprintln!(
                    "[{}/{total}] {}",
                    i + 1,
                    s.lines().next().unwrap_or_default()
                );
            }
            c.batch(s).map_err(|e| {
                Error::new(
                    e.kind(),
                    format!(
                        "migration statement {} of {total} failed: {}\n  statement: {s}",
                        i + 1,
                        e.message()
                    ),
                )
            })?;
        }
        if sqlite {
            let broken = query(
                c,
                "SELECT \"table\", parent FROM pragma_foreign_key_check",
                vec![],
            )?;
            if let Some(r) = broken.first() {
                return Err(Error::new(
                    ErrorCode::FkViolation,
                    format!(
                        "the migration leaves rows of {} referencing missing {} rows",
                        cell_text(&r[0]),
                        cell_text(&r[1])
                    ),
                ));
            }
        }
        record(c)
    });
    if sqlite {
        conn.batch("PRAGMA foreign_keys = ON")?;
    }
    result
}

/// Writes the compiled models into the registry; a changed checksum is a
/// new version, and every version is kept in the history.
pub fn record_registry<C: Conn>(
    conn: &mut C,
    app: &str,
    models: &[&'static ModelSchema],
    migration: Option<&str>,
) -> Result<()> {
    let existing: BTreeMap<String, (i64, String)> = query(
        conn,
        "SELECT model, version, checksum FROM dataflow_registry WHERE application_id = ?",
        vec![text(app)],
    )?
    .iter()
    .map(|r| {
        (
            cell_text(&r[0]),
            (
                if let Cell::I64(v) = r[1] { v } else { 0 },
                cell_text(&r[2]),
            ),
        )
    })
    .collect();
    let stamp = format_datetime(&now());
    for m in models {
        let checksum = m.checksum_hex();
        let schema = serde_json::to_string(m).map_err(|e| Error::internal(e.to_string()))?;
        match existing.get(m.name) {
            Some((_, c)) if *c == checksum => {
                exec(conn, "UPDATE dataflow_registry SET last_seen = ? WHERE application_id = ? AND model = ?", vec![text(&stamp), text(app), text(m.name)])?;
                continue;
            }
            Some((v, _)) => {
                exec(
                    conn,
                    "UPDATE dataflow_registry SET version = ?, checksum = ?, table_name = ?, schema_json = ?, last_seen = ? WHERE application_id = ? AND model = ?",
                    vec![SqlValue::I64(v + 1), text(&checksum), text(m.table), text(&schema), text(&stamp), text(app), text(m.name)],
                )?;
            }
            None => {
                exec(
                    conn,
                    "INSERT INTO dataflow_registry (application_id, model, version, checksum, table_name, schema_json, first_seen, last_seen) VALUES (?, ?, 1, ?, ?, ?, ?, ?)",
                    vec![text(app), text(m.name), text(&checksum), text(m.table), text(&schema), text(&stamp), text(&stamp)],
                )?;
            }
        }
        let version = existing.get(m.name).map_or(1, |(v, _)| v + 1);
        exec(
            conn,
            "INSERT INTO dataflow_registry_history (application_id, model, version, checksum, schema_json, recorded_at, migration) VALUES (?, ?, ?, ?, ?, ?, ?)",
            vec![
                text(app),
                text(m.name),
                SqlValue::I64(version),
                text(&checksum),
                text(&schema),
                text(&stamp),
                migration.map_or(SqlValue::Null(crate::schema::FieldType::String), text),
            ],
        )?;
    }
    Ok(())
}

/// The models in the registry, from the database alone.
pub fn registered<C: Conn>(conn: &mut C, app: &str) -> Result<Vec<RegisteredModel>> {
    if !super::table_exists(conn, "dataflow_registry")? {
        return Ok(Vec::new());
    }
    let rows = query(
        conn,
        "SELECT model, version, checksum, table_name, first_seen, last_seen, schema_json FROM dataflow_registry WHERE application_id = ? ORDER BY model",
        vec![text(app)],
    )?;
    Ok(rows
        .iter()
        .map(|r| RegisteredModel {
            name: cell_text(&r[0]),
            version: if let Cell::I64(v) = r[1] { v } else { 0 },
            checksum: cell_text(&r[2]),
            table: cell_text(&r[3]),
            first_seen: cell_text(&r[4]),
            last_seen: cell_text(&r[5]),
            schema: serde_json::from_str(&cell_text(&r[6])).unwrap_or(serde_json::Value::Null),
        })
        .collect())
}

/// Columns the registry recorded per table: a live column they include is
/// ours (left over), one they do not is drift.
pub fn known_columns<C: Conn>(conn: &mut C, app: &str) -> Result<BTreeMap<String, Vec<String>>> {
    let rows = query(
        conn,
        "SELECT schema_json FROM dataflow_registry_history WHERE application_id = ?",
        vec![text(app)],
    )?;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rows {
        let schema: serde_json::Value = serde_json::from_str(&cell_text(&r[0])).unwrap_or_default();
        let cols = out
            .entry(schema["table"].as_str().unwrap_or_default().to_string())
            .or_default();
        for f in schema["fields"].as_array().into_iter().flatten() {
            if let Some(c) = f["column"].as_str() {
                cols.push(c.to_string());
            }
        }
    }
    Ok(out)
}

/// Runs the reviewed migration files that are not applied yet, in version
/// order, refusing to go on when an applied file changed since (drift).
pub fn run_embedded<C: Conn>(conn: &mut C, policy: &BootPolicy) -> Result<()> {
    if policy.embedded.is_empty() {
        return Ok(());
    }
    let applied: BTreeMap<String, HistoryEntry> = list(conn)?
        .into_iter()
        .map(|e| (e.version.clone(), e))
        .collect();
    let mut files: Vec<_> = policy.embedded.to_vec();
    files.sort_by(|a, b| a.dir.cmp(b.dir));
    for f in files {
        match applied.get(f.version()) {
            Some(e) if e.status == MigrationStatus::Applied => {
                if e.checksum != f.checksum() {
                    return Err(Error::new(
                        ErrorCode::MigrationBlocked,
                        format!(
                            "drift: migration {} was applied with checksum {}, but its file now has {}; restore the file or write a new migration",
                            f.dir, e.checksum, f.checksum()
                        ),
                    ));
                }
            }
            Some(e) if e.status == MigrationStatus::Pending => {
                return Err(Error::new(
                    ErrorCode::MigrationBlocked,
                    format!("migration {} is still pending", f.dir),
                ));
            }
            Some(_) => {
                // A failed or rolled-back attempt is retried under the same version;
                // its `error` stays as the record of what happened before.
                exec(
                    conn,
                    "UPDATE dataflow_migrations SET status = 'pending', started_at = ?, applied_by = ? WHERE version = ?",
                    vec![text(format_datetime(&now())), text(&policy.applied_by), text(f.version())],
                )?;
                apply_file(conn, &f)?;
            }
            None => {
                insert(
                    conn,
                    f.version(),
                    f.name(),
                    &policy.app,
                    "file",
                    f.up,
                    f.down,
                    "reviewed",
                    "",
                    None,
                    &policy.applied_by,
                    true,
                )?;
                apply_file(conn, &f)?;
            }
        }
    }
    Ok(())
}

fn apply_file<C: Conn>(conn: &mut C, f: &super::EmbeddedMigration) -> Result<()> {
    let statements = vec![f.up.to_string()];
    {
        {
            let started = Instant::now();
            let version = f.version().to_string();
            if let Err(e) =
                run_statements(conn, &statements, |c| mark_applied(c, &version, started))
            {
                mark_failed(conn, &version, &e)?;
                return Err(Error::new(
                    e.kind(),
                    format!("migration file {}: {}", f.dir, e.message()),
                ));
            }
        }
    }
    Ok(())
}

/// Runs the down SQL of every applied migration after `to` (newest first),
/// refusing data-losing downs unless `allow_data_loss`.
pub fn rollback<C: Conn>(
    conn: &mut C,
    to: Option<&str>,
    steps: usize,
    allow_data_loss: bool,
) -> Result<Vec<String>> {
    let applied: Vec<HistoryEntry> = list(conn)?
        .into_iter()
        .filter(|e| e.status == MigrationStatus::Applied)
        .collect();
    let targets: Vec<&HistoryEntry> = match to {
        Some(v) => applied
            .iter()
            .rev()
            .take_while(|e| e.version.as_str() > v)
            .collect(),
        None => applied.iter().rev().take(steps).collect(),
    };
    if targets.is_empty() {
        return Err(Error::new(ErrorCode::NotFound, "nothing to roll back"));
    }
    if let Some(e) = targets
        .iter()
        .find(|e| e.down_loses_data && !allow_data_loss)
    {
        return Err(Error::new(
            ErrorCode::MigrationBlocked,
            format!("rolling back {} ({}) drops data it created; pass --allow data_loss with --reason to do it anyway", e.version, e.name),
        ));
    }
    let mut done = Vec::new();
    for e in targets {
        let statements: Vec<String> = e
            .down_sql
            .split(";\n")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let version = e.version.clone();
        run_statements(conn, &statements, |c| {
            exec(
                c,
                "UPDATE dataflow_migrations SET status = 'rolled_back' WHERE version = ?",
                vec![text(&version)],
            )?;
            // The models no longer match the database: the next boot or apply re-plans.
            exec(
                c,
                "UPDATE dataflow_registry SET checksum = 'rolled_back' WHERE application_id = \
                 (SELECT application_id FROM dataflow_migrations WHERE version = ?)",
                vec![text(&version)],
            )?;
            Ok(())
        })?;
        done.push(e.version.clone());
    }
    Ok(done)
}
