//! The migration history and the registry tables: what was applied, when,
//! by whom, how risky, and which model versions it produced.

use super::{cell_text, exec, opt_text, query, text, BootPolicy, RiskLevel, Rule, Timeouts};
use crate::backend::Conn;
use crate::error::{Error, ErrorCode, Result};
use crate::schema::ModelSchema;
use crate::sql::Dialect;
use crate::value::{format_datetime, now, Cell, SqlValue};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

/// Where a migration is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationStatus {
    /// Started and not finished; under the lock, a process that died mid-apply.
    Pending,
    /// Committed.
    Applied,
    /// Its transaction was rolled back; `error` says why.
    Failed,
    /// Undone by `migrate rollback`.
    RolledBack,
}

impl MigrationStatus {
    /// The status as persisted and printed: `pending`, `applied`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationStatus::Pending => "pending",
            MigrationStatus::Applied => "applied",
            MigrationStatus::Failed => "failed",
            MigrationStatus::RolledBack => "rolled_back",
        }
    }

    /// A status read back from `dataflow_migrations`; one this version
    /// does not know (a newer version's, or a hand edit) is an error rather
    /// than a guess: read as `pending`, it would be applied again.
    fn parse(s: &str) -> Result<MigrationStatus> {
        match s {
            "pending" => Ok(MigrationStatus::Pending),
            "applied" => Ok(MigrationStatus::Applied),
            "failed" => Ok(MigrationStatus::Failed),
            "rolled_back" => Ok(MigrationStatus::RolledBack),
            other => Err(Error::internal(format!(
                "dataflow_migrations holds an unknown status `{other}`"
            ))),
        }
    }
}

/// Where a migration's SQL came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationSource {
    /// Planned from the compiled models.
    Auto,
    /// A reviewed migration file (`embed_migrations!`).
    File,
}

impl MigrationSource {
    /// The source as persisted and printed: `auto` or `file`.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationSource::Auto => "auto",
            MigrationSource::File => "file",
        }
    }

    fn parse(s: &str) -> Result<MigrationSource> {
        match s {
            "auto" => Ok(MigrationSource::Auto),
            "file" => Ok(MigrationSource::File),
            other => Err(Error::internal(format!(
                "dataflow_migrations holds an unknown source `{other}`"
            ))),
        }
    }
}

impl std::fmt::Display for MigrationSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the history shows the risk of a reviewed file, which the planner
/// did not assess.
const REVIEWED: &str = "reviewed";

/// One row of the migration history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    /// Sortable: `YYYYmmddHHMMSSmmm` for planned migrations, the directory
    /// prefix for files.
    pub version: String,
    /// `auto`, `manual`, or the file's name.
    pub name: String,
    /// Planned from the models, or a reviewed file.
    pub source: MigrationSource,
    /// Of the up SQL; an applied file whose checksum changed is drift.
    pub checksum: String,
    /// The statements that were run, each ending in `;\n`.
    pub up_sql: String,
    /// The statements that undo them, newest first.
    pub down_sql: String,
    /// The plan's risk; `None` for a reviewed file (shown as `reviewed`).
    #[serde(serialize_with = "risk_text")]
    pub risk: Option<RiskLevel>,
    /// The rules the plan hit (shown comma-separated).
    #[serde(serialize_with = "rules_text")]
    pub rules: Vec<Rule>,
    /// Why it was approved (required above low risk).
    pub reason: Option<String>,
    /// Where it is in its life.
    pub status: MigrationStatus,
    /// When it started.
    pub started_at: String,
    /// When it committed.
    pub applied_at: Option<String>,
    /// `user@host (pid n)` of the process that applied it.
    pub applied_by: String,
    /// How long the apply took.
    pub duration_ms: Option<i64>,
    /// Why it failed (kept when a retry succeeds).
    pub error: Option<String>,
    /// Running its down SQL destroys data.
    pub down_loses_data: bool,
    /// When `migrate rollback` undid it.
    pub rolled_back_at: Option<String>,
    /// Who undid it.
    pub rolled_back_by: Option<String>,
    /// Why it was undone (`migrate rollback --reason`).
    pub rollback_reason: Option<String>,
}

impl HistoryEntry {
    /// The risk as persisted and printed: a level, or `reviewed`.
    pub fn risk_str(&self) -> &'static str {
        self.risk.map_or(REVIEWED, RiskLevel::as_str)
    }
}

fn risk_text<S: serde::Serializer>(
    risk: &Option<RiskLevel>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(risk.map_or(REVIEWED, RiskLevel::as_str))
}

fn rules_text<S: serde::Serializer>(rules: &[Rule], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&join_rules(rules))
}

fn join_rules(rules: &[Rule]) -> String {
    rules
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// A model as the registry knows it, readable without the user's binary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegisteredModel {
    /// The model's name.
    pub name: String,
    /// Starts at 1; every changed checksum is a new version.
    pub version: i64,
    /// Of the compiled schema.
    pub checksum: String,
    /// The table it lives in.
    pub table: String,
    /// When this application first booted with the model.
    pub first_seen: String,
    /// When it last booted with a changed model, or migrated.
    pub last_seen: String,
    /// The compiled schema as JSON.
    pub schema: serde_json::Value,
}

const COLUMNS: &str = "version, name, source, checksum, up_sql, down_sql, risk, rules, reason, status, started_at, applied_at, applied_by, duration_ms, error, down_loses_data, rolled_back_at, rolled_back_by, rollback_reason";

/// Columns added to `dataflow_migrations` after its first release, with
/// their types: [`upgrade`] adds them to tables created before.
pub(crate) const ADDED_COLUMNS: &[(&str, &str)] = &[
    ("rolled_back_at", "TEXT"),
    ("rolled_back_by", "TEXT"),
    ("rollback_reason", "TEXT"),
];

/// Adds [`ADDED_COLUMNS`] that an existing `dataflow_migrations` lacks.
pub(crate) fn upgrade<C: Conn>(conn: &mut C) -> Result<()> {
    let sql = match C::DIALECT {
        Dialect::Sqlite => "SELECT name FROM pragma_table_info('dataflow_migrations')",
        Dialect::Postgres => "SELECT column_name::text FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = 'dataflow_migrations'",
    };
    let have: Vec<String> = query(conn, sql, vec![])?
        .iter()
        .map(|r| cell_text(&r[0]))
        .collect();
    for (name, ty) in ADDED_COLUMNS {
        if !have.iter().any(|h| h == name) {
            exec(
                conn,
                &format!("ALTER TABLE dataflow_migrations ADD COLUMN {name} {ty}"),
                vec![],
            )?;
        }
    }
    Ok(())
}

fn to_entry(r: &[Cell]) -> Result<HistoryEntry> {
    let risk = match cell_text(&r[6]).as_str() {
        REVIEWED => None,
        level => Some(level.parse::<RiskLevel>()?),
    };
    let rules = cell_text(&r[7])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<Vec<Rule>>>()?;
    Ok(HistoryEntry {
        version: cell_text(&r[0]),
        name: cell_text(&r[1]),
        source: MigrationSource::parse(&cell_text(&r[2]))?,
        checksum: cell_text(&r[3]),
        up_sql: cell_text(&r[4]),
        down_sql: cell_text(&r[5]),
        risk,
        rules,
        reason: opt_text(&r[8]),
        status: MigrationStatus::parse(&cell_text(&r[9]))?,
        started_at: cell_text(&r[10]),
        applied_at: opt_text(&r[11]),
        applied_by: cell_text(&r[12]),
        duration_ms: match &r[13] {
            Cell::I64(i) => Some(*i),
            _ => None,
        },
        error: opt_text(&r[14]),
        down_loses_data: matches!(r[15], Cell::Bool(true) | Cell::I64(1)),
        rolled_back_at: opt_text(&r[16]),
        rolled_back_by: opt_text(&r[17]),
        rollback_reason: opt_text(&r[18]),
    })
}

/// The history, oldest first (empty before the first migration).
pub(crate) fn list<C: Conn>(conn: &mut C) -> Result<Vec<HistoryEntry>> {
    let select = format!("SELECT {COLUMNS} FROM dataflow_migrations ORDER BY version");
    let rows = match query(conn, &select, vec![]) {
        Ok(rows) => rows,
        Err(e) if e.code() == ErrorCode::Database => {
            if !super::table_exists(conn, "dataflow_migrations")? {
                return Ok(Vec::new());
            }
            // A history written by an older version: add the new columns.
            conn.write_transaction(upgrade)?;
            query(conn, &select, vec![])?
        }
        Err(e) => return Err(e),
    };
    rows.iter().map(|r| to_entry(r)).collect()
}

/// One migration by version.
pub(crate) fn entry<C: Conn>(conn: &mut C, version: &str) -> Result<HistoryEntry> {
    let row = query(
        conn,
        &format!("SELECT {COLUMNS} FROM dataflow_migrations WHERE version = ?"),
        vec![text(version)],
    )?;
    match row.first() {
        Some(r) => to_entry(r),
        None => Err(Error::new(
            ErrorCode::NotFound,
            format!("no migration with version {version}"),
        )),
    }
}

/// A history row about to be recorded as `pending`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewMigration<'a> {
    pub version: &'a str,
    pub name: &'a str,
    /// `application_id`.
    pub app: &'a str,
    pub source: MigrationSource,
    /// Statements joined by `;\n` (see [`joined`]).
    pub up_sql: &'a str,
    pub down_sql: &'a str,
    pub risk: Option<RiskLevel>,
    pub rules: &'a [Rule],
    pub reason: Option<&'a str>,
    pub applied_by: &'a str,
    pub down_loses_data: bool,
}

/// What the last digits of a version count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VersionUnit {
    /// `YYYYmmddHHMMSS`: migration files.
    Seconds,
    /// `YYYYmmddHHMMSSmmm`: planned migrations.
    Millis,
}

impl VersionUnit {
    fn format(self, t: chrono::NaiveDateTime) -> String {
        match self {
            VersionUnit::Seconds => t.format("%Y%m%d%H%M%S").to_string(),
            VersionUnit::Millis => t.format("%Y%m%d%H%M%S%3f").to_string(),
        }
    }

    fn step(self) -> chrono::Duration {
        match self {
            VersionUnit::Seconds => chrono::Duration::seconds(1),
            VersionUnit::Millis => chrono::Duration::milliseconds(1),
        }
    }
}

/// A new version for a migration: `now`, or when that does not sort after
/// every `existing` version (the history, the migration files), one unit
/// after the greatest of them. Versions are compared as the history orders
/// them, as text, so a file version (seconds) and a planned one
/// (milliseconds) of the same second still sort in time order.
pub(crate) fn next_version(
    now: chrono::DateTime<chrono::Utc>,
    unit: VersionUnit,
    existing: impl IntoIterator<Item = String>,
) -> Result<String> {
    let candidate = unit.format(now.naive_utc());
    let Some(greatest) = existing.into_iter().max() else {
        return Ok(candidate);
    };
    if candidate > greatest {
        return Ok(candidate);
    }
    // The greatest version as a time: seconds, then milliseconds if present.
    let digits: String = greatest.chars().take_while(char::is_ascii_digit).collect();
    let at = digits.get(..14).and_then(|s| {
        let t = chrono::NaiveDateTime::parse_from_str(s, "%Y%m%d%H%M%S").ok()?;
        let ms: i64 = digits.get(14..17).map_or(Some(0), |m| m.parse().ok())?;
        Some(t + chrono::Duration::milliseconds(ms))
    });
    match at.map(|t| unit.format(t + unit.step())) {
        Some(next) if next > greatest => Ok(next),
        _ => Err(Error::new(
            ErrorCode::Config,
            format!(
                "cannot choose a version after the existing migration version `{greatest}`, which is not a YYYYmmddHHMMSS time; versions must increase"
            ),
        )),
    }
}

/// Every version in the history (none before the first migration).
pub(crate) fn versions<C: Conn>(conn: &mut C) -> Result<Vec<String>> {
    if !super::table_exists(conn, "dataflow_migrations")? {
        return Ok(Vec::new());
    }
    Ok(
        query(conn, "SELECT version FROM dataflow_migrations", vec![])?
            .iter()
            .map(|r| cell_text(&r[0]))
            .collect(),
    )
}

/// The versions of the migration directories in `dir` (`<version>_<name>`;
/// none when `dir` does not exist yet).
pub(crate) fn file_versions(dir: &std::path::Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::new(
                ErrorCode::Config,
                format!("reading {}: {e}", dir.display()),
            ))
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        if !entry.path().is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let version = name.split_once('_').map_or(name.as_str(), |(v, _)| v);
        out.push(version.to_string());
    }
    Ok(out)
}

/// Statements as one text, each ending in `;\n`.
pub(crate) fn joined(sql: &[String]) -> String {
    sql.iter().map(|s| format!("{s};\n")).collect()
}

/// Records a migration as `pending` (committed on its own, so a crash
/// mid-apply leaves a trace that the next boot marks `failed`).
pub(crate) fn begin<C: Conn>(conn: &mut C, m: &NewMigration) -> Result<HistoryEntry> {
    insert(conn, m)?;
    entry(conn, m.version)
}

fn insert<C: Conn>(conn: &mut C, m: &NewMigration) -> Result<()> {
    let checksum =
        dataflow_core::checksum::to_hex(dataflow_core::checksum::fnv1a64(m.up_sql.as_bytes()));
    exec(
        conn,
        "INSERT INTO dataflow_migrations (version, name, application_id, source, checksum, up_sql, down_sql, risk, rules, reason, status, started_at, applied_by, down_loses_data) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
        vec![
            text(m.version),
            text(m.name),
            text(m.app),
            text(m.source.as_str()),
            text(checksum),
            text(m.up_sql),
            text(m.down_sql),
            text(m.risk.map_or(REVIEWED, RiskLevel::as_str)),
            text(join_rules(m.rules)),
            m.reason.map_or(SqlValue::Null(crate::schema::FieldType::String), text),
            text(format_datetime(&now())),
            text(m.applied_by),
            SqlValue::Bool(m.down_loses_data),
        ],
    )?;
    Ok(())
}

pub(crate) fn mark_applied<C: Conn>(conn: &mut C, version: &str, started: Instant) -> Result<()> {
    exec(
        conn,
        "UPDATE dataflow_migrations SET status = 'applied', applied_at = ?, duration_ms = ? WHERE version = ?",
        vec![text(format_datetime(&now())), SqlValue::I64(started.elapsed().as_millis() as i64), text(version)],
    )?;
    Ok(())
}

pub(crate) fn mark_failed<C: Conn>(conn: &mut C, version: &str, e: &Error) -> Result<()> {
    exec(
        conn,
        "UPDATE dataflow_migrations SET status = 'failed', error = ? WHERE version = ?",
        vec![text(e.message()), text(version)],
    )?;
    Ok(())
}

/// Under the lock, a `pending` row belongs to a process that died mid-apply;
/// its transaction was rolled back by the database, so it failed.
pub(crate) fn recover_interrupted<C: Conn>(conn: &mut C) -> Result<usize> {
    exec(
        conn,
        "UPDATE dataflow_migrations SET status = 'failed', error = 'interrupted: the applying process stopped before it committed' WHERE status = 'pending'",
        vec![],
    )
}

/// Runs `statements` and then `record` in one transaction. On SQLite,
/// foreign keys are switched off around it (table rebuilds need that) and
/// checked before commit.
///
/// On PostgreSQL the transaction starts with `timeouts`' `SET LOCAL
/// lock_timeout` and `statement_timeout`. When a statement's lock wait times
/// out, the whole transaction rolls back, and after a pause it is tried
/// again from the start, up to `timeouts.retries` more times; then it fails
/// with [`ErrorCode::Timeout`] naming the table. Nothing of a failed attempt
/// stays applied.
pub(crate) fn run_statements<C: Conn>(
    conn: &mut C,
    timeouts: &Timeouts,
    statements: &[String],
    mut record: impl FnMut(&mut C) -> Result<()>,
) -> Result<()> {
    let sqlite = C::DIALECT == Dialect::Sqlite;
    if sqlite {
        conn.batch("PRAGMA foreign_keys = OFF")?;
    }
    let settings = timeouts.settings(C::DIALECT);
    let started = Instant::now();
    let mut attempt = 1;
    let result = loop {
        let mut blocked = None;
        match attempt_statements(conn, &settings, statements, &mut record, &mut blocked) {
            Err(_) if blocked.is_some() && attempt <= timeouts.retries => {
                std::thread::sleep(timeouts.pause(attempt));
                attempt += 1;
            }
            Err(e) => match blocked {
                Some(i) => {
                    break Err(lock_timeout_error(
                        conn, timeouts, statements, i, attempt, started,
                    ))
                }
                None => break Err(e),
            },
            Ok(()) => break Ok(()),
        }
    };
    if sqlite {
        conn.batch("PRAGMA foreign_keys = ON")?;
    }
    result
}

/// One try of [`run_statements`]; `blocked` is set to the index of a
/// statement whose lock wait timed out.
fn attempt_statements<C: Conn>(
    conn: &mut C,
    settings: &[String],
    statements: &[String],
    record: &mut impl FnMut(&mut C) -> Result<()>,
    blocked: &mut Option<usize>,
) -> Result<()> {
    let total = statements.len();
    // Progress for people watching a long apply; quiet when piped (boot, tests, CI).
    let progress = total > 5 && std::io::IsTerminal::is_terminal(&std::io::stderr());
    conn.write_transaction(|c| {
        for s in settings {
            c.batch(s)?;
        }
        for (i, s) in statements.iter().enumerate() {
            if progress {
                eprintln!(
                    "[{}/{total}] {}",
                    i + 1,
                    s.lines().next().unwrap_or_default()
                );
            }
            c.batch(s).map_err(|e| {
                let timeout = match pg_timeout(C::DIALECT, &e) {
                    Some(PgTimeout::Lock) => {
                        *blocked = Some(i);
                        None
                    }
                    Some(PgTimeout::Statement) => Some(ErrorCode::Timeout),
                    None => None,
                };
                Error::new(
                    timeout.unwrap_or(e.code()),
                    format!(
                        "migration statement {} of {total} failed: {}{}\n  statement: {s}",
                        i + 1,
                        e.message(),
                        if timeout.is_some() {
                            " (it ran longer than the migration statement_timeout; nothing was applied)"
                        } else {
                            ""
                        }
                    ),
                )
            })?;
        }
        if C::DIALECT == Dialect::Sqlite {
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
    })
}

/// A PostgreSQL statement cancelled by one of the migration's timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PgTimeout {
    /// `lock_timeout` (SQLSTATE 55P03, lock_not_available).
    Lock,
    /// `statement_timeout` (SQLSTATE 57014, query_canceled).
    Statement,
}

/// Which timeout cancelled a statement, if one did. diesel does not expose
/// the SQLSTATE, so the server's message is read; it is English unless the
/// server translates messages (`lc_messages`), and then a lock timeout
/// still rolls the migration back whole, only without retries.
fn pg_timeout(d: Dialect, e: &Error) -> Option<PgTimeout> {
    if d != Dialect::Postgres {
        return None;
    }
    let m = e.message();
    if m.contains("canceling statement due to lock timeout") {
        Some(PgTimeout::Lock)
    } else if m.contains("canceling statement due to statement timeout") {
        Some(PgTimeout::Statement)
    } else {
        None
    }
}

/// The error after the last lock timeout: which table, how long, how often,
/// and what to do.
fn lock_timeout_error<C: Conn>(
    conn: &mut C,
    timeouts: &Timeouts,
    statements: &[String],
    index: usize,
    attempts: u32,
    started: Instant,
) -> Error {
    let statement = &statements[index];
    let mut tables = tables_in(statement);
    if tables.is_empty() {
        // `DROP INDEX` names the index: find its table.
        if let Some(index) = dropped_index(statement) {
            let found = query(
                conn,
                "SELECT tablename::text FROM pg_indexes WHERE schemaname = current_schema() AND indexname = ?",
                vec![text(index)],
            );
            tables.extend(found.unwrap_or_default().iter().map(|r| cell_text(&r[0])));
        }
    }
    let what = match tables.as_slice() {
        [] => "a table".to_string(),
        [t] => format!("table `{t}`"),
        ts => format!(
            "one of the tables {}",
            ts.iter()
                .map(|t| format!("`{t}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Error::new(
        ErrorCode::Timeout,
        format!(
            "could not lock {what} within the migration lock_timeout ({}) in {attempts} attempt(s) over {:.1} s: another transaction holds a conflicting lock on it; nothing was applied. Retry when that transaction has finished, or raise migration_lock_timeout / migration_lock_retries.\n  statement {} of {}: {statement}",
            super::ddl::pg_duration(timeouts.lock),
            started.elapsed().as_secs_f64(),
            index + 1,
            statements.len(),
        ),
    )
}

/// The tables a statement names after `ALTER TABLE`, `ON` (an index),
/// `REFERENCES`, `DROP TABLE` or `LOCK TABLE`, unquoted, in order.
fn tables_in(sql: &str) -> Vec<String> {
    let words = sql_words(sql);
    let mut out: Vec<String> = Vec::new();
    let skip = ["IF", "NOT", "EXISTS", "ONLY", "TABLE"];
    for (i, w) in words.iter().enumerate() {
        let upper = w.to_ascii_uppercase();
        let after = match upper.as_str() {
            "TABLE"
                if i > 0
                    && ["ALTER", "DROP", "LOCK"]
                        .contains(&words[i - 1].to_ascii_uppercase().as_str()) =>
            {
                i + 1
            }
            // Not `ON DELETE` / `ON UPDATE` of a foreign key.
            "ON" if words.get(i + 1).is_some_and(|n| {
                ["DELETE", "UPDATE"].contains(&n.to_ascii_uppercase().as_str())
            }) =>
            {
                continue
            }
            "ON" | "REFERENCES" => i + 1,
            _ => continue,
        };
        if let Some(name) = words
            .iter()
            .skip(after)
            .find(|w| !skip.contains(&w.to_ascii_uppercase().as_str()))
        {
            let name = unquote(name);
            if !name.is_empty() && !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// The index a `DROP INDEX` statement drops.
fn dropped_index(sql: &str) -> Option<String> {
    let words = sql_words(sql);
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    if upper.first().map(String::as_str) != Some("DROP")
        || upper.get(1).map(String::as_str) != Some("INDEX")
    {
        return None;
    }
    words
        .iter()
        .zip(&upper)
        .skip(2)
        .find(|(_, u)| !["IF", "EXISTS", "CONCURRENTLY"].contains(&u.as_str()))
        .map(|(w, _)| unquote(w))
}

/// Words of a statement: quoted identifiers whole, `(`, `)`, `,` and `;` apart.
fn sql_words(sql: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for ch in sql.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                word.push(ch);
            }
            c if !quoted && (c.is_whitespace() || "(),;".contains(c)) => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// `"people"` → `people`, `public."people"` → `public.people`.
fn unquote(name: &str) -> String {
    name.replace("\"\"", "\u{0}")
        .replace('"', "")
        .replace('\u{0}', "\"")
}

/// Writes the compiled models into the registry; a changed checksum is a
/// new version, and every version is kept in the history.
pub(crate) fn record_registry<C: Conn>(
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
pub(crate) fn registered<C: Conn>(conn: &mut C, app: &str) -> Result<Vec<RegisteredModel>> {
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
pub(crate) fn known_columns<C: Conn>(
    conn: &mut C,
    app: &str,
) -> Result<BTreeMap<String, Vec<String>>> {
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
pub(crate) fn run_embedded<C: Conn>(conn: &mut C, policy: &BootPolicy) -> Result<()> {
    if policy.embedded.is_empty() {
        return Ok(());
    }
    let applied: BTreeMap<String, HistoryEntry> = list(conn)?
        .into_iter()
        .map(|e| (e.version.clone(), e))
        .collect();
    let mut files: Vec<_> = policy.embedded.to_vec();
    files.sort_by(|a, b| (a.version(), a.dir).cmp(&(b.version(), b.dir)));
    // Two files of one version would run in name order and share one history row.
    if let Some(w) = files.windows(2).find(|w| w[0].version() == w[1].version()) {
        return Err(Error::new(
            ErrorCode::MigrationBlocked,
            format!(
                "migrations {} and {} have the same version {}; give the later one a greater version (rename its directory) so they run in a defined order",
                w[0].dir,
                w[1].dir,
                w[0].version()
            ),
        ));
    }
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
                apply_file(conn, &f, &policy.timeouts)?;
            }
            None => {
                insert(
                    conn,
                    &NewMigration {
                        version: f.version(),
                        name: f.name(),
                        app: &policy.app,
                        source: MigrationSource::File,
                        up_sql: f.up,
                        down_sql: f.down,
                        risk: None,
                        rules: &[],
                        reason: None,
                        applied_by: &policy.applied_by,
                        down_loses_data: true,
                    },
                )?;
                apply_file(conn, &f, &policy.timeouts)?;
            }
        }
    }
    Ok(())
}

fn apply_file<C: Conn>(
    conn: &mut C,
    f: &super::EmbeddedMigration,
    timeouts: &Timeouts,
) -> Result<()> {
    let statements = vec![f.up.to_string()];
    let started = Instant::now();
    let version = f.version();
    if let Err(e) = run_statements(conn, timeouts, &statements, |c| {
        mark_applied(c, version, started)
    }) {
        mark_failed(conn, version, &e)?;
        return Err(Error::new(
            e.code(),
            format!("migration file {}: {}", f.dir, e.message()),
        ));
    }
    Ok(())
}

/// Runs the down SQL of every applied migration after `to` (newest first),
/// refusing data-losing downs unless `allow_data_loss`.
pub(crate) fn rollback<C: Conn>(
    conn: &mut C,
    req: &super::RollbackRequest,
    by: &str,
    timeouts: &Timeouts,
) -> Result<Vec<String>> {
    let (to, steps, allow_data_loss) = (req.to.as_deref(), req.steps, req.allow_data_loss);
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
        run_statements(conn, timeouts, &statements, |c| {
            exec(
                c,
                "UPDATE dataflow_migrations SET status = 'rolled_back', rolled_back_at = ?, rolled_back_by = ?, rollback_reason = ? WHERE version = ?",
                vec![
                    text(format_datetime(&now())),
                    text(by),
                    req.reason.as_deref().map_or(SqlValue::Null(crate::schema::FieldType::String), text),
                    text(&version),
                ],
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
        chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.3f")
            .unwrap()
            .and_utc()
    }

    fn next(now: &str, unit: VersionUnit, existing: &[&str]) -> Result<String> {
        next_version(at(now), unit, existing.iter().map(|s| s.to_string()))
    }

    #[test]
    fn statuses_round_trip_and_unknown_ones_are_errors() {
        for status in [
            MigrationStatus::Pending,
            MigrationStatus::Applied,
            MigrationStatus::Failed,
            MigrationStatus::RolledBack,
        ] {
            assert_eq!(MigrationStatus::parse(status.as_str()).unwrap(), status);
        }
        let e = MigrationStatus::parse("archived").unwrap_err();
        assert!(e.message().contains("unknown status `archived`"), "{e}");
    }

    #[test]
    fn versions_are_the_time_when_it_sorts_last() {
        let now = "2026-11-30 12:00:05.250";
        assert_eq!(
            next(now, VersionUnit::Seconds, &[]).unwrap(),
            "20261130120005"
        );
        assert_eq!(
            next(now, VersionUnit::Millis, &[]).unwrap(),
            "20261130120005250"
        );
        assert_eq!(
            next(now, VersionUnit::Seconds, &["20261130120004", "0001"]).unwrap(),
            "20261130120005"
        );
    }

    #[test]
    fn versions_step_past_the_greatest_existing_one() {
        let now = "2026-11-30 12:00:05.250";
        // Generated twice in one second.
        assert_eq!(
            next(now, VersionUnit::Seconds, &["20261130120005"]).unwrap(),
            "20261130120006"
        );
        // A planned migration of this second sorts after the file version.
        assert_eq!(
            next(now, VersionUnit::Seconds, &["20261130120005250"]).unwrap(),
            "20261130120006"
        );
        // A minute boundary stays a valid time.
        assert_eq!(
            next(now, VersionUnit::Seconds, &["20261130120059"]).unwrap(),
            "20261130120100"
        );
        assert_eq!(
            next(now, VersionUnit::Millis, &["20261130120005250"]).unwrap(),
            "20261130120005251"
        );
        assert_eq!(
            next(now, VersionUnit::Millis, &["29991231235959"]).unwrap(),
            "29991231235959001"
        );
        let e = next(now, VersionUnit::Seconds, &["9_custom"]).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Config);
        assert!(e.message().contains("`9_custom`"), "{e}");
    }

    #[test]
    fn the_tables_a_statement_locks_are_named() {
        assert_eq!(
            tables_in("ALTER TABLE \"people\" ADD COLUMN IF NOT EXISTS \"x\" TEXT"),
            ["people"]
        );
        assert_eq!(
            tables_in("ALTER TABLE \"members\" ADD CONSTRAINT \"m_fkey\" FOREIGN KEY (\"team_id\") REFERENCES \"teams\" (\"id\") ON DELETE CASCADE"),
            ["members", "teams"]
        );
        assert_eq!(
            tables_in("CREATE UNIQUE INDEX IF NOT EXISTS \"uq\" ON \"people\" (\"name\")"),
            ["people"]
        );
        assert_eq!(
            tables_in("DROP TABLE IF EXISTS \"a\"; LOCK TABLE b"),
            ["a", "b"]
        );
        assert!(tables_in("CREATE TABLE IF NOT EXISTS \"t\" (\"id\" TEXT)").is_empty());
        assert_eq!(
            dropped_index("DROP INDEX IF EXISTS \"idx_people_name\"").as_deref(),
            Some("idx_people_name")
        );
        assert_eq!(dropped_index("DROP TABLE \"t\""), None);
    }
}
