//! The node path (`db.execute("BenchUserCreateNode", json)`) against hand-written
//! diesel doing the same SQL on the same table, side by side in one run; and
//! the same node path on an audited copy of the model (`BenchAuditedUser`,
//! every write also recording its audit rows in the same transaction); and
//! last the multi-tenancy lines (`support/tenancy.rs`: a plain model, the
//! same model `tenant_scoped`, and on PostgreSQL behind row-level security).
//! Read by id also runs with metrics on (the default) against a second
//! handle on the same database booted with `enable_metrics(false)`.
//!
//! ```sh
//! cargo bench --bench nodes      # full: SQLite + PostgreSQL, median of 5 rounds
//! cargo test --bench nodes       # smoke: tiny, SQLite only, checks both paths agree
//! ```
//!
//! The query cache (`enable_caching`) is measured in the same run, after the
//! lines above: Read by id and List (filter, limit 20) with the cache on and
//! off, at 100 % hits (reads only, of queries read before), at a 90 % hit
//! workload (a write, then ten reads of the same query: one miss, nine hits)
//! and at 0 % (a write before every read); only the reads are timed.
//! `DATAFLOW_BENCH_ONLY_METRICS=1 cargo bench --bench nodes` runs only
//! Read by id with metrics on and off (SQLite, 15 interleaved rounds).
//! `DATAFLOW_BENCH_ONLY_CACHE=1` also works in smoke mode (with
//! `DATAFLOW_BENCH_OPS=N`: a short run to profile under callgrind).
//!
//! Knobs: `DATAFLOW_BENCH_BACKENDS=sqlite` (or `postgres`) runs one backend,
//! `DATAFLOW_BENCH_VERBOSE=1` prints every round, `DATAFLOW_BENCH_ONLY_CACHE=1` runs
//! only the query cache's lines, `DATAFLOW_BENCH_KEEP_DB=1`
//! keeps the SQLite file for inspection.
//!
//! PostgreSQL comes from `DATAFLOW_BENCH_POSTGRES_URL` (its `bench_users` table is
//! emptied), else from the test harness in `tests/support/postgres.rs` (a fresh
//! database on a throwaway cluster); without either it is skipped.
//!
//! The raw baseline runs in the same async setting as the node path: inside
//! tokio, `spawn_blocking` + an r2d2 checkout (same pool size, no test on
//! checkout, the same SQLite PRAGMAs) + a typed diesel query. Both paths build
//! their input inside the timed loop (JSON for the node, structs for diesel)
//! and both turn every returned row into their output (JSON / structs).

use std::error::Error as StdError;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use dataflow::DataFlow;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, R2D2Connection};
use serde_json::{json, Map, Value};

#[path = "../tests/support/postgres.rs"]
mod postgres;
#[path = "support/tenancy.rs"]
mod tenancy;

#[dataflow::model]
pub struct BenchUser {
    pub id: String,
    #[field(unique)]
    pub email: String,
    pub full_name: Option<String>,
    #[field(default = true)]
    pub active: bool,
    pub age: i32,
}

/// `BenchUser` with the audit log on: the same fields, every write also
/// records its audit rows (the `Audited` path).
#[dataflow::model(audit)]
pub struct BenchAuditedUser {
    pub id: String,
    #[field(unique)]
    pub email: String,
    pub full_name: Option<String>,
    #[field(default = true)]
    pub active: bool,
    pub age: i32,
}

type Res<T> = Result<T, Box<dyn StdError + Send + Sync>>;

/// The runtime's default pool size, set explicitly on both pools.
const POOL_SIZE: u32 = 10;
/// The runtime's default connect timeout (and so its SQLite busy_timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Columns of `bench_users`: 5 fields + created_at + updated_at.
const COLUMNS: usize = 7;
/// A timed round of single ops stops early after this long (slow lines).
const ROUND_CAP: Duration = Duration::from_secs(3);
const MIN_OPS: usize = 50;
const LIST_LIMIT: usize = 20;

const CREATE: &str = "BenchUserCreateNode";
const READ: &str = "BenchUserReadNode";
const LIST: &str = "BenchUserListNode";
const BULK: &str = "BenchUserBulkCreateNode";
const COUNT: &str = "BenchUserCountNode";
const CREATE_AUDITED: &str = "BenchAuditedUserCreateNode";
const READ_AUDITED: &str = "BenchAuditedUserReadNode";
const LIST_AUDITED: &str = "BenchAuditedUserListNode";
const BULK_AUDITED: &str = "BenchAuditedUserBulkCreateNode";
const COUNT_AUDITED: &str = "BenchAuditedUserCountNode";
/// Audit targets: audited / plain node path.
const AUDIT_SINGLE_TARGET: f64 = 0.7;
const AUDIT_BULK_TARGET: f64 = 0.5;

// ------------------------------------------------------------------ configuration

struct Cfg {
    full: bool,
    rounds: usize,
    /// Ops per round of a single-op line.
    ops: usize,
    bulk_rows: usize,
    warmup: usize,
}

impl Cfg {
    fn full() -> Cfg {
        Cfg {
            full: true,
            rounds: 5,
            ops: 5_000,
            bulk_rows: 100_000,
            warmup: 300,
        }
    }

    fn smoke() -> Cfg {
        Cfg {
            full: false,
            rounds: 1,
            // `DATAFLOW_BENCH_OPS` (profiling under callgrind).
            ops: std::env::var("DATAFLOW_BENCH_OPS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(20),
            bulk_rows: 1_000,
            warmup: 5,
        }
    }

    /// Whether a round that has done `done` ops should go on.
    fn more(&self, done: usize, start: Instant) -> bool {
        done < self.ops && !(self.full && done >= MIN_OPS && start.elapsed() > ROUND_CAP)
    }
}

// ------------------------------------------------------------------ input

/// One record's input, the same for both paths.
struct Input {
    email: String,
    full_name: Option<String>,
    active: bool,
    age: i32,
}

impl Input {
    fn new(tag: &str, i: usize) -> Input {
        Input {
            email: format!("{tag}-{i}@bench.io"),
            full_name: (!i.is_multiple_of(4)).then(|| format!("User {i}")),
            active: !i.is_multiple_of(3),
            age: 18 + (i % 80) as i32,
        }
    }

    fn into_json(self) -> Value {
        let mut m = Map::with_capacity(4);
        m.insert("email".into(), Value::String(self.email));
        m.insert(
            "full_name".into(),
            self.full_name.map_or(Value::Null, Value::String),
        );
        m.insert("active".into(), Value::Bool(self.active));
        m.insert("age".into(), Value::from(self.age));
        Value::Object(m)
    }
}

// ------------------------------------------------------------------ raw diesel

/// What the raw path needs from a backend: the typed diesel queries.
trait Raw: 'static {
    type Conn: R2D2Connection + Send + 'static;
    const NAME: &'static str;
    /// The runtime's bind limit for the dialect (`Dialect::max_binds`).
    const MAX_BINDS: usize;

    fn pool(url: &str) -> Pool<ConnectionManager<Self::Conn>>;
    /// INSERT … RETURNING every column; the new id.
    fn create(c: &mut Self::Conn, input: Input) -> QueryResult<String>;
    /// SELECT every column WHERE id = ? (the node adds `LIMIT 1`); the email.
    fn read(c: &mut Self::Conn, id: &str) -> QueryResult<String>;
    /// SELECT every column WHERE active = true ORDER BY id LIMIT 20; the ids.
    fn list(c: &mut Self::Conn) -> QueryResult<Vec<String>>;
    /// A variant of the raw query of `kind` worth measuring on this backend
    /// (a diagnostic printed under the table), and what it changes.
    fn alt(kind: Kind) -> Option<&'static str>;
    fn read_alt(c: &mut Self::Conn, id: &str) -> QueryResult<String>;
    fn list_alt(c: &mut Self::Conn) -> QueryResult<Vec<String>>;
    /// Multi-row INSERTs of `batch` rows in one transaction; the new ids.
    fn bulk(c: &mut Self::Conn, inputs: Vec<Input>, batch: usize) -> QueryResult<Vec<String>>;
    fn count_like(c: &mut Self::Conn, pattern: &str) -> QueryResult<i64>;
    fn count_all(c: &mut Self::Conn) -> QueryResult<i64>;
    fn clear(c: &mut Self::Conn) -> QueryResult<()>;
    /// Empties the audited model's table and the audit log.
    fn clear_audited(c: &mut Self::Conn) -> QueryResult<()>;
    /// Rows in the audit log.
    fn count_audit(c: &mut Self::Conn) -> QueryResult<i64>;
    /// (column, declared type, nullable) in table order, as the database reports them.
    fn columns(c: &mut Self::Conn) -> QueryResult<Vec<(String, String, bool)>>;
    /// The columns the raw structs below are written against.
    fn expected_columns() -> Vec<(&'static str, &'static str, bool)>;
    fn version(c: &mut Self::Conn) -> QueryResult<String>;
}

#[derive(QueryableByName)]
struct RowCount {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// `SELECT COUNT(*)` of a table, on either backend.
fn count_rows<C>(c: &mut C, table: &str) -> QueryResult<i64>
where
    C: diesel::Connection,
    diesel::query_builder::SqlQuery: diesel::query_dsl::LoadQuery<'static, C, RowCount>,
{
    let rows: Vec<RowCount> =
        diesel::sql_query(format!("SELECT COUNT(*) AS n FROM {table}")).load(c)?;
    Ok(rows.first().map_or(0, |r| r.n))
}

#[derive(QueryableByName)]
struct ColumnInfo {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    ty: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    nullable: bool,
}

mod sqlite_raw {
    use super::*;
    use diesel::sqlite::{Sqlite, SqliteConnection};

    diesel::table! {
        bench_users (id) {
            id -> Text,
            email -> Text,
            full_name -> Nullable<Text>,
            active -> Bool,
            age -> Integer,
            created_at -> Text,
            updated_at -> Text,
        }
    }

    /// `treat_none_as_default_value = false`: a `None` binds NULL (as the
    /// runtime does) instead of meaning DEFAULT. Without it diesel 2.3 wraps
    /// every field as "maybe DEFAULT", and on SQLite (no DEFAULT in VALUES) a
    /// slice of rows then runs as one INSERT per row instead of one multi-row INSERT.
    #[derive(Insertable)]
    #[diesel(table_name = bench_users, treat_none_as_default_value = false)]
    struct NewRow {
        id: String,
        email: String,
        full_name: Option<String>,
        active: bool,
        age: i32,
        created_at: String,
        updated_at: String,
    }

    #[allow(dead_code)]
    #[derive(Queryable, Selectable)]
    #[diesel(table_name = bench_users, check_for_backend(Sqlite))]
    struct Row {
        id: String,
        email: String,
        full_name: Option<String>,
        active: bool,
        age: i32,
        created_at: String,
        updated_at: String,
    }

    /// The runtime's text form of timestamps on SQLite.
    fn now() -> String {
        Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    fn new_row(i: Input, now: &str) -> NewRow {
        NewRow {
            id: uuid::Uuid::now_v7().to_string(),
            email: i.email,
            full_name: i.full_name,
            active: i.active,
            age: i.age,
            created_at: now.to_string(),
            updated_at: now.to_string(),
        }
    }

    /// The PRAGMAs `Target::connect` runs on every runtime connection.
    #[derive(Debug)]
    struct Pragmas;

    impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for Pragmas {
        fn on_acquire(&self, c: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
            use diesel::connection::SimpleConnection;
            c.batch_execute(&format!(
                "PRAGMA busy_timeout = {}; PRAGMA foreign_keys = ON; PRAGMA case_sensitive_like = ON; \
                 PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -16384;",
                CONNECT_TIMEOUT.as_millis()
            ))
            .map_err(diesel::r2d2::Error::QueryError)
        }
    }

    pub struct Backend;

    impl Raw for Backend {
        type Conn = SqliteConnection;
        const NAME: &'static str = "SQLite";
        const MAX_BINDS: usize = 32_766;

        fn pool(path: &str) -> Pool<ConnectionManager<SqliteConnection>> {
            Pool::builder()
                .max_size(POOL_SIZE)
                .min_idle(Some(0))
                .test_on_check_out(false)
                .connection_timeout(CONNECT_TIMEOUT)
                .connection_customizer(Box::new(Pragmas))
                .build_unchecked(ConnectionManager::new(path))
        }

        fn create(c: &mut SqliteConnection, input: Input) -> QueryResult<String> {
            let row = new_row(input, &now());
            // `get_results`, not `get_result`: stepping the statement to DONE is
            // what runs SQLite's WAL auto-checkpoint hook (as the node's query
            // does). `get_result` resets after the first row, so its commits never
            // checkpoint and leave that work to whichever connection steps to DONE.
            let mut rows: Vec<Row> = diesel::insert_into(bench_users::table)
                .values(&row)
                .returning(Row::as_returning())
                .get_results(c)?;
            rows.pop()
                .map(|r| r.id)
                .ok_or(diesel::result::Error::NotFound)
        }

        fn read(c: &mut SqliteConnection, id: &str) -> QueryResult<String> {
            // No LIMIT: the node's literal `LIMIT 1` has no typed-diesel spelling,
            // and diesel's bound `LIMIT ?` (`.first()`) costs a re-prepare per call
            // on SQLite >= 3.4x (see `read_alt`). On a primary key the plan is the same.
            let r: Row = bench_users::table
                .find(id)
                .select(Row::as_select())
                .get_result(c)?;
            Ok(r.email)
        }

        fn list(c: &mut SqliteConnection) -> QueryResult<Vec<String>> {
            // SQLite sorts NULLs first in ASC order anyway; the node's explicit
            // `ASC NULLS FIRST` has the same plan (index scan on the primary key).
            // Diesel binds the LIMIT, which on this SQLite means a re-prepare per
            // call; typed diesel has no literal LIMIT.
            let rows: Vec<Row> = bench_users::table
                .filter(bench_users::active.eq(true))
                .order(bench_users::id.asc())
                .limit(LIST_LIMIT as i64)
                .select(Row::as_select())
                .load(c)?;
            Ok(rows.into_iter().map(|r| r.id).collect())
        }

        fn alt(kind: Kind) -> Option<&'static str> {
            match kind {
                Kind::Read => Some("raw diesel with .first() (bound LIMIT ?: SQLite re-prepares the statement on every bind)"),
                _ => None,
            }
        }

        fn read_alt(c: &mut SqliteConnection, id: &str) -> QueryResult<String> {
            let r: Row = bench_users::table
                .find(id)
                .select(Row::as_select())
                .first(c)?;
            Ok(r.email)
        }

        fn list_alt(c: &mut SqliteConnection) -> QueryResult<Vec<String>> {
            Self::list(c)
        }

        fn bulk(
            c: &mut SqliteConnection,
            inputs: Vec<Input>,
            batch: usize,
        ) -> QueryResult<Vec<String>> {
            let now = now();
            let rows: Vec<NewRow> = inputs.into_iter().map(|i| new_row(i, &now)).collect();
            c.immediate_transaction(|c| {
                for chunk in rows.chunks(batch) {
                    diesel::insert_into(bench_users::table)
                        .values(chunk)
                        .execute(c)?;
                }
                QueryResult::Ok(())
            })?;
            Ok(rows.into_iter().map(|r| r.id).collect())
        }

        fn count_like(c: &mut SqliteConnection, pattern: &str) -> QueryResult<i64> {
            bench_users::table
                .filter(bench_users::email.like(pattern))
                .count()
                .get_result(c)
        }

        fn count_all(c: &mut SqliteConnection) -> QueryResult<i64> {
            bench_users::table.count().get_result(c)
        }

        fn clear(c: &mut SqliteConnection) -> QueryResult<()> {
            diesel::delete(bench_users::table).execute(c).map(drop)
        }

        fn clear_audited(c: &mut SqliteConnection) -> QueryResult<()> {
            use diesel::connection::SimpleConnection;
            c.batch_execute("DELETE FROM bench_audited_users; DELETE FROM dataflow_audit")
        }

        fn count_audit(c: &mut SqliteConnection) -> QueryResult<i64> {
            count_rows(c, "dataflow_audit")
        }

        fn columns(c: &mut SqliteConnection) -> QueryResult<Vec<(String, String, bool)>> {
            let cols: Vec<ColumnInfo> = diesel::sql_query(
                "SELECT name, type AS ty, (\"notnull\" = 0 AND pk = 0) AS nullable \
                 FROM pragma_table_info('bench_users') ORDER BY cid",
            )
            .load(c)?;
            Ok(cols
                .into_iter()
                .map(|c| (c.name, c.ty, c.nullable))
                .collect())
        }

        fn expected_columns() -> Vec<(&'static str, &'static str, bool)> {
            vec![
                ("id", "TEXT", false),
                ("email", "TEXT", false),
                ("full_name", "TEXT", true),
                ("active", "INTEGER", false),
                ("age", "INTEGER", false),
                ("created_at", "TEXT", false),
                ("updated_at", "TEXT", false),
            ]
        }

        fn version(c: &mut SqliteConnection) -> QueryResult<String> {
            let v: String = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
                "sqlite_version()",
            ))
            .get_result(c)?;
            Ok(format!("SQLite {v}"))
        }
    }
}

mod pg_raw {
    use super::*;
    use diesel::pg::{Pg, PgConnection};

    diesel::table! {
        bench_users (id) {
            id -> Text,
            email -> Text,
            full_name -> Nullable<Text>,
            active -> Bool,
            age -> Integer,
            created_at -> Timestamptz,
            updated_at -> Timestamptz,
        }
    }

    #[derive(Insertable)]
    #[diesel(table_name = bench_users, treat_none_as_default_value = false)]
    struct NewRow {
        id: String,
        email: String,
        full_name: Option<String>,
        active: bool,
        age: i32,
        created_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
    }

    #[allow(dead_code)]
    #[derive(Queryable, Selectable)]
    #[diesel(table_name = bench_users, check_for_backend(Pg))]
    struct Row {
        id: String,
        email: String,
        full_name: Option<String>,
        active: bool,
        age: i32,
        created_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
    }

    fn new_row(i: Input, now: DateTime<Utc>) -> NewRow {
        NewRow {
            id: uuid::Uuid::now_v7().to_string(),
            email: i.email,
            full_name: i.full_name,
            active: i.active,
            age: i.age,
            created_at: now,
            updated_at: now,
        }
    }

    pub struct Backend;

    impl Raw for Backend {
        type Conn = PgConnection;
        const NAME: &'static str = "PostgreSQL";
        const MAX_BINDS: usize = 65_535;

        fn pool(url: &str) -> Pool<ConnectionManager<PgConnection>> {
            Pool::builder()
                .max_size(POOL_SIZE)
                .min_idle(Some(0))
                .test_on_check_out(false)
                .connection_timeout(CONNECT_TIMEOUT)
                .build_unchecked(ConnectionManager::new(url))
        }

        fn create(c: &mut PgConnection, input: Input) -> QueryResult<String> {
            let row = new_row(input, Utc::now());
            let mut rows: Vec<Row> = diesel::insert_into(bench_users::table)
                .values(&row)
                .returning(Row::as_returning())
                .get_results(c)?;
            rows.pop()
                .map(|r| r.id)
                .ok_or(diesel::result::Error::NotFound)
        }

        fn read(c: &mut PgConnection, id: &str) -> QueryResult<String> {
            let r: Row = bench_users::table
                .find(id)
                .select(Row::as_select())
                .get_result(c)?;
            Ok(r.email)
        }

        fn list(c: &mut PgConnection) -> QueryResult<Vec<String>> {
            // The node's exact ORDER BY: `"id" ASC` (NULLS FIRST is only said
            // for nullable order fields).
            let rows: Vec<Row> = bench_users::table
                .filter(bench_users::active.eq(true))
                .order(bench_users::id.asc())
                .limit(LIST_LIMIT as i64)
                .select(Row::as_select())
                .load(c)?;
            Ok(rows.into_iter().map(|r| r.id).collect())
        }

        fn alt(kind: Kind) -> Option<&'static str> {
            match kind {
                Kind::List => Some("raw diesel with ORDER BY id ASC NULLS FIRST (PostgreSQL sorts instead of using the primary key index)"),
                _ => None,
            }
        }

        fn read_alt(c: &mut PgConnection, id: &str) -> QueryResult<String> {
            Self::read(c, id)
        }

        fn list_alt(c: &mut PgConnection) -> QueryResult<Vec<String>> {
            // What the node emitted before: the primary-key index cannot serve it.
            let rows: Vec<Row> = bench_users::table
                .filter(bench_users::active.eq(true))
                .order(bench_users::id.asc().nulls_first())
                .limit(LIST_LIMIT as i64)
                .select(Row::as_select())
                .load(c)?;
            Ok(rows.into_iter().map(|r| r.id).collect())
        }

        fn bulk(
            c: &mut PgConnection,
            inputs: Vec<Input>,
            batch: usize,
        ) -> QueryResult<Vec<String>> {
            let now = Utc::now();
            let rows: Vec<NewRow> = inputs.into_iter().map(|i| new_row(i, now)).collect();
            c.transaction(|c| {
                for chunk in rows.chunks(batch) {
                    diesel::insert_into(bench_users::table)
                        .values(chunk)
                        .execute(c)?;
                }
                QueryResult::Ok(())
            })?;
            Ok(rows.into_iter().map(|r| r.id).collect())
        }

        fn count_like(c: &mut PgConnection, pattern: &str) -> QueryResult<i64> {
            bench_users::table
                .filter(bench_users::email.like(pattern))
                .count()
                .get_result(c)
        }

        fn count_all(c: &mut PgConnection) -> QueryResult<i64> {
            bench_users::table.count().get_result(c)
        }

        fn clear(c: &mut PgConnection) -> QueryResult<()> {
            diesel::sql_query("TRUNCATE bench_users")
                .execute(c)
                .map(drop)
        }

        fn clear_audited(c: &mut PgConnection) -> QueryResult<()> {
            diesel::sql_query("TRUNCATE bench_audited_users, dataflow_audit")
                .execute(c)
                .map(drop)
        }

        fn count_audit(c: &mut PgConnection) -> QueryResult<i64> {
            count_rows(c, "dataflow_audit")
        }

        fn columns(c: &mut PgConnection) -> QueryResult<Vec<(String, String, bool)>> {
            let cols: Vec<ColumnInfo> = diesel::sql_query(
                "SELECT column_name::text AS name, data_type::text AS ty, is_nullable::text = 'YES' AS nullable \
                 FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = 'bench_users' \
                 ORDER BY ordinal_position",
            )
            .load(c)?;
            Ok(cols
                .into_iter()
                .map(|c| (c.name, c.ty, c.nullable))
                .collect())
        }

        fn expected_columns() -> Vec<(&'static str, &'static str, bool)> {
            vec![
                ("id", "text", false),
                ("email", "text", false),
                ("full_name", "text", true),
                ("active", "boolean", false),
                ("age", "integer", false),
                ("created_at", "timestamp with time zone", false),
                ("updated_at", "timestamp with time zone", false),
            ]
        }

        fn version(c: &mut PgConnection) -> QueryResult<String> {
            let v: String = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
                "current_setting('server_version')",
            ))
            .get_result(c)?;
            Ok(format!("PostgreSQL {v}"))
        }
    }
}

// ------------------------------------------------------------------ the benchmark

/// Who runs an op. `Node` and `Raw` make the table; the others are diagnostics
/// measured in the same interleaved rounds and printed under it.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Path {
    Node,
    Raw,
    /// A variant of the raw query (`Raw::alt`).
    RawAlt,
    /// `spawn_blocking` + pool checkout and no query: the fixed cost both paths pay.
    Floor,
    /// The node path on the audited copy of the model.
    Audited,
    /// The node path of a second handle on the same database booted with
    /// `enable_metrics(false)` (the default path has metrics on).
    MetricsOff,
}

impl Path {
    fn describe(self) -> &'static str {
        match self {
            Path::Node => "node path",
            Path::Raw => "raw diesel",
            Path::RawAlt => "a raw diesel variant (Raw::alt)",
            Path::Floor => "floor: spawn_blocking + pool checkout, no query",
            Path::Audited => "node path, audited model (BenchAuditedUser)",
            Path::MetricsOff => "node path, enable_metrics(false)",
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Create,
    Read,
    List,
}

struct Line {
    name: String,
    unit: &'static str,
    rates: Vec<(Path, Vec<f64>)>,
    /// What `Path::RawAlt` is on this line.
    alt: Option<&'static str>,
}

impl Line {
    fn new(name: impl Into<String>, unit: &'static str, paths: &[Path]) -> Line {
        Line {
            name: name.into(),
            unit,
            rates: paths.iter().map(|p| (*p, Vec::new())).collect(),
            alt: None,
        }
    }

    fn describe(&self, path: Path) -> &'static str {
        match (path, self.alt) {
            (Path::RawAlt, Some(alt)) => alt,
            _ => path.describe(),
        }
    }

    fn paths(&self) -> Vec<Path> {
        self.rates.iter().map(|(p, _)| *p).collect()
    }

    fn push(&mut self, path: Path, rate: f64) {
        if let Some((_, v)) = self.rates.iter_mut().find(|(p, _)| *p == path) {
            v.push(rate);
        }
    }

    fn rounds(&self, path: Path) -> &[f64] {
        self.rates
            .iter()
            .find(|(p, _)| *p == path)
            .map_or(&[], |(_, v)| v)
    }

    fn median(&self, path: Path) -> f64 {
        median(self.rounds(path))
    }

    fn ratio(&self) -> f64 {
        self.median(Path::Node) / self.median(Path::Raw)
    }
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The paths measured for `kind`: node and raw, plus the backend's raw
/// variant and, with `floor`, the fixed cost.
fn paths<B: Raw>(kind: Kind, floor: bool) -> Vec<Path> {
    let mut paths = vec![Path::Node, Path::Raw];
    if B::alt(kind).is_some() {
        paths.push(Path::RawAlt);
    }
    if floor {
        paths.push(Path::Floor);
    }
    paths.push(Path::Audited);
    if matches!(kind, Kind::Read) {
        paths.push(Path::MetricsOff);
    }
    paths
}

/// The paths of round `round` in running order, rotated every round so each
/// path runs first equally often and all see the same drift.
fn rotation(paths: &[Path], round: usize) -> Vec<Path> {
    let mut v = paths.to_vec();
    let n = v.len().max(1);
    v.rotate_left(round % n);
    v
}

/// `{"id": id}` without `json!`, which would clone the string once more.
fn id_params(id: String) -> Value {
    let mut m = Map::with_capacity(1);
    m.insert("id".into(), Value::String(id));
    Value::Object(m)
}

fn list_params() -> Value {
    json!({"filter": {"active": true}, "limit": LIST_LIMIT})
}

struct Bench<B: Raw> {
    db: DataFlow,
    /// The same database with `enable_metrics(false)` (the `MetricsOff` path).
    db_off: DataFlow,
    pool: Pool<ConnectionManager<B::Conn>>,
    /// Records of the audited model, read by the `Audited` path.
    audited_ids: Vec<String>,
}

impl<B: Raw> Bench<B> {
    /// The raw path's async wrapper: the same shape as `DataFlow::execute_op`.
    async fn raw<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut B::Conn) -> QueryResult<T> + Send + 'static,
    ) -> Res<T> {
        let pool = self.pool.clone();
        let out = tokio::task::spawn_blocking(move || -> Res<T> {
            let mut conn = pool.get()?;
            Ok(f(&mut conn)?)
        })
        .await??;
        Ok(out)
    }

    async fn node(&self, node: &str, params: Value) -> Res<Value> {
        Ok(self.db.execute(node, params).await?)
    }

    async fn node_count(&self, pattern: &str) -> Res<i64> {
        let out = self
            .node(COUNT, json!({"filter": {"email": {"$like": pattern}}}))
            .await?;
        out["count"]
            .as_i64()
            .ok_or_else(|| format!("{COUNT} returned {out}").into())
    }

    /// One timed op: input built, executed, output consumed. Creates return the new id.
    async fn op(
        &self,
        kind: Kind,
        path: Path,
        tag: &str,
        i: usize,
        ids: &[String],
    ) -> Res<Option<String>> {
        Ok(match (kind, path) {
            (_, Path::Floor) => {
                self.raw(|_| Ok(())).await?;
                None
            }
            (Kind::Create, Path::Node) => {
                let rec = self.node(CREATE, Input::new(tag, i).into_json()).await?;
                Some(id_of(&rec)?)
            }
            (Kind::Create, Path::Audited) => {
                let rec = self
                    .node(CREATE_AUDITED, Input::new(tag, i).into_json())
                    .await?;
                Some(id_of(&rec)?)
            }
            (Kind::Read, Path::Audited) => {
                let ids = &self.audited_ids;
                let rec = self
                    .node(READ_AUDITED, id_params(ids[i % ids.len()].clone()))
                    .await?;
                debug_assert!(rec["email"].is_string());
                None
            }
            (Kind::List, Path::Audited) => {
                // A full page once the Create line made enough records (the smoke run makes fewer).
                let page = self.node(LIST_AUDITED, list_params()).await?;
                debug_assert!(page["count"].as_u64() <= Some(LIST_LIMIT as u64));
                None
            }
            (Kind::Create, _) => {
                let input = Input::new(tag, i);
                Some(self.raw(move |c| B::create(c, input)).await?)
            }
            (Kind::Read, Path::MetricsOff) => {
                let rec = self
                    .db_off
                    .execute(READ, id_params(ids[i % ids.len()].clone()))
                    .await?;
                debug_assert!(rec["email"].is_string());
                None
            }
            (_, Path::MetricsOff) => return Err("MetricsOff is measured on Read by id".into()),
            (Kind::Read, Path::Node) => {
                let rec = self
                    .node(READ, id_params(ids[i % ids.len()].clone()))
                    .await?;
                debug_assert!(rec["email"].is_string());
                None
            }
            (Kind::Read, Path::RawAlt) => {
                let id = ids[i % ids.len()].clone();
                self.raw(move |c| B::read_alt(c, &id)).await?;
                None
            }
            (Kind::Read, _) => {
                let id = ids[i % ids.len()].clone();
                self.raw(move |c| B::read(c, &id)).await?;
                None
            }
            (Kind::List, Path::Node) => {
                let page = self.node(LIST, list_params()).await?;
                debug_assert_eq!(page["count"], LIST_LIMIT);
                None
            }
            (Kind::List, Path::Raw) => {
                self.raw(B::list).await?;
                None
            }
            (Kind::List, Path::RawAlt) => {
                self.raw(B::list_alt).await?;
                None
            }
        })
    }

    /// Interleaved rounds of single ops on every path of `line`; the ids created, by path.
    async fn single_ops(
        &self,
        cfg: &Cfg,
        kind: Kind,
        line: &mut Line,
        ids: &[String],
    ) -> Res<Vec<(Path, String)>> {
        let mut created = Vec::new();
        for r in 0..cfg.rounds {
            for path in rotation(&line.paths(), r) {
                let who = match path {
                    Path::Node => "node",
                    Path::Audited => "audited",
                    _ => "raw",
                };
                let tag = format!("{who}-{r}");
                let start = Instant::now();
                let mut done = 0;
                while cfg.more(done, start) {
                    if let Some(id) = self.op(kind, path, &tag, r * cfg.ops + done, ids).await? {
                        created.push((path, id));
                    }
                    done += 1;
                }
                line.push(path, done as f64 / start.elapsed().as_secs_f64());
            }
        }
        Ok(created)
    }
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Res<()> {
    if cond {
        Ok(())
    } else {
        Err(what().into())
    }
}

fn id_of(rec: &Value) -> Res<String> {
    rec["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("record without a string id: {rec}").into())
}

/// Boots both paths on `url`, checks the table, runs every line.
async fn run_backend<B: Raw>(cfg: &Cfg, url: &str, raw_target: &str) -> Res<(String, Vec<Line>)> {
    // Multi-tenant because the tenancy lines' tenant-scoped model is linked
    // into this program too; the plain and audited models are global. The
    // query cache (on by default) is off: these lines measure the node
    // path to the database (the cache has lines of its own).
    let db = DataFlow::builder(url)
        .multi_tenant(true)
        .connection_pool_size(POOL_SIZE)
        .connect_timeout(CONNECT_TIMEOUT)
        .enable_caching(false)
        .build()
        .await?;
    let db_off = DataFlow::builder(url)
        .multi_tenant(true)
        .connection_pool_size(POOL_SIZE)
        .connect_timeout(CONNECT_TIMEOUT)
        .enable_caching(false)
        .enable_metrics(false)
        .build()
        .await?;
    let mut bench = Bench::<B> {
        db,
        db_off,
        pool: B::pool(raw_target),
        audited_ids: Vec::new(),
    };
    let (version, columns) = bench.raw(|c| Ok((B::version(c)?, B::columns(c)?))).await?;
    let expected: Vec<(String, String, bool)> = B::expected_columns()
        .into_iter()
        .map(|(n, t, null)| (n.to_string(), t.to_string(), null))
        .collect();
    check(columns == expected, || {
        format!(
            "{}: the table dataflow created is not the one the raw baseline is written against\n  found:    {columns:?}\n  expected: {expected:?}",
            B::NAME
        )
    })?;
    bench.raw(B::clear).await?;
    bench.raw(B::clear_audited).await?;

    // Warm-up: opens the pool connections and fills both statement caches.
    for i in 0..cfg.warmup {
        let rec = bench
            .node(CREATE, Input::new("warm-node", i).into_json())
            .await?;
        bench.node(READ, json!({"id": id_of(&rec)?})).await?;
        bench
            .db_off
            .execute(READ, json!({"id": id_of(&rec)?}))
            .await?;
        bench.node(LIST, list_params()).await?;
        let input = Input::new("warm-raw", i);
        let id = bench.raw(move |c| B::create(c, input)).await?;
        bench.raw(move |c| B::read(c, &id)).await?;
        bench.raw(B::list).await?;
        bench.raw(B::list_alt).await?;
        let id = id_of(&rec)?;
        bench.raw(move |c| B::read_alt(c, &id)).await?;
        let rec = bench
            .node(CREATE_AUDITED, Input::new("warm-audited", i).into_json())
            .await?;
        bench
            .node(READ_AUDITED, json!({"id": id_of(&rec)?}))
            .await?;
        bench.node(LIST_AUDITED, list_params()).await?;
    }

    let mut lines = Vec::new();

    // -------- Create
    let mut line = Line::new(
        "Create (single)",
        "ops/s",
        &[Path::Node, Path::Raw, Path::Audited],
    );
    let created = bench.single_ops(cfg, Kind::Create, &mut line, &[]).await?;
    bench.audited_ids = created
        .iter()
        .filter(|(p, _)| *p == Path::Audited)
        .map(|(_, id)| id.clone())
        .collect();
    // Every audited create has its audit row (and the warm-up's theirs).
    let audited_rows = bench.node(COUNT_AUDITED, json!({})).await?["count"]
        .as_i64()
        .unwrap_or(-1);
    let audit_rows = bench.raw(B::count_audit).await?;
    check(
        audited_rows == (bench.audited_ids.len() + cfg.warmup) as i64 && audit_rows == audited_rows,
        || {
            format!(
                "Create (audited): {audited_rows} rows and {audit_rows} audit rows for {} creates",
                bench.audited_ids.len() + cfg.warmup
            )
        },
    )?;
    let node_ids: Vec<String> = created
        .iter()
        .filter(|(p, _)| *p == Path::Node)
        .map(|(_, id)| id.clone())
        .collect();
    let raw_ids: Vec<String> = created
        .iter()
        .filter(|(p, _)| *p == Path::Raw)
        .map(|(_, id)| id.clone())
        .collect();
    // Both paths wrote what they said they wrote.
    let node_rows = bench.node_count("node-%").await?;
    let raw_rows = bench.raw(|c| B::count_like(c, "raw-%")).await?;
    check(
        node_rows == node_ids.len() as i64 && raw_rows == raw_ids.len() as i64,
        || {
            format!(
                "Create: {node_rows} node rows for {} creates, {raw_rows} raw rows for {} creates",
                node_ids.len(),
                raw_ids.len()
            )
        },
    )?;
    if !cfg.full {
        check(node_rows == raw_rows, || {
            format!("Create: node wrote {node_rows} rows, raw {raw_rows}")
        })?;
    }
    lines.push(line);

    // -------- Read by id: the ids of both paths, the same sequence on every path
    let ids: Vec<String> = node_ids
        .iter()
        .zip(&raw_ids)
        .flat_map(|(a, b)| [a.clone(), b.clone()])
        .collect();
    for id in ids.iter().take(10) {
        let via_node = bench.node(READ, json!({"id": id})).await?;
        let id2 = id.clone();
        let (via_raw, via_alt) = bench
            .raw(move |c| Ok((B::read(c, &id2)?, B::read_alt(c, &id2)?)))
            .await?;
        // Rows written by either path read back alike through the node (timestamps
        // in the runtime's fixed-width form, `2026-01-02T03:04:05.000000Z`).
        let ts_ok = ["created_at", "updated_at"].iter().all(|k| {
            via_node[*k].as_str().is_some_and(|s| {
                s.len() == 27 && s.ends_with('Z') && DateTime::parse_from_rfc3339(s).is_ok()
            })
        });
        check(
            via_node["email"].as_str() == Some(via_raw.as_str())
                && via_alt == via_raw
                && ts_ok
                && via_node["active"].is_boolean()
                && via_node["age"].is_i64(),
            || format!("Read {id}: node gave {via_node}, raw gave email {via_raw}"),
        )?;
    }
    let mut line = Line::new("Read by id", "ops/s", &paths::<B>(Kind::Read, true));
    line.alt = B::alt(Kind::Read);
    bench.single_ops(cfg, Kind::Read, &mut line, &ids).await?;
    lines.push(line);

    // -------- List with a filter
    let page = bench.node(LIST, list_params()).await?;
    let page_ids: Vec<String> = page["records"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let raw_page = bench.raw(B::list).await?;
    let plain_page = bench.raw(B::list_alt).await?;
    check(
        page_ids.len() == LIST_LIMIT && page_ids == raw_page && page_ids == plain_page,
        || {
            format!("List: node returned {page_ids:?}, raw returned {raw_page:?}, raw variant {plain_page:?}")
        },
    )?;
    let mut line = Line::new(
        format!("List active=true, limit {LIST_LIMIT}"),
        "ops/s",
        &paths::<B>(Kind::List, false),
    );
    line.alt = B::alt(Kind::List);
    bench.single_ops(cfg, Kind::List, &mut line, &[]).await?;
    lines.push(line);

    // -------- BulkCreate: an empty table each round, input built before the clock starts
    let n = cfg.bulk_rows;
    let batch = (B::MAX_BINDS / COLUMNS).min(n);
    let mut line = Line::new(
        format!("BulkCreate {} rows", thousands(n as f64)),
        "rows/s",
        &[Path::Node, Path::Raw, Path::Audited],
    );
    for r in 0..cfg.rounds {
        for path in rotation(&line.paths(), r) {
            bench.raw(B::clear).await?;
            bench.raw(B::clear_audited).await?;
            let tag = format!("bulk-{r}");
            let elapsed = if matches!(path, Path::Node | Path::Audited) {
                let data: Vec<Value> = (0..n).map(|i| Input::new(&tag, i).into_json()).collect();
                let mut params = Map::new();
                params.insert("data".into(), Value::Array(data));
                // The runtime caps this at its bind limit: the same batches as raw.
                params.insert("batch_size".into(), Value::from(1_000_000u64));
                let params = Value::Object(params);
                let node = if path == Path::Node {
                    BULK
                } else {
                    BULK_AUDITED
                };
                let start = Instant::now();
                let out = bench.node(node, params).await?;
                let elapsed = start.elapsed();
                check(
                    out["inserted"].as_u64() == Some(n as u64)
                        && out["ids"].as_array().map(Vec::len) == Some(n),
                    || {
                        format!(
                            "BulkCreate (node): expected {n} rows, got inserted={} and {} ids",
                            out["inserted"],
                            out["ids"].as_array().map_or(0, Vec::len)
                        )
                    },
                )?;
                elapsed
            } else {
                let inputs: Vec<Input> = (0..n).map(|i| Input::new(&tag, i)).collect();
                let start = Instant::now();
                let ids = bench.raw(move |c| B::bulk(c, inputs, batch)).await?;
                let elapsed = start.elapsed();
                check(ids.len() == n, || {
                    format!("BulkCreate (raw): {} ids for {n} rows", ids.len())
                })?;
                elapsed
            };
            let rows = if path == Path::Audited {
                let audit = bench.raw(B::count_audit).await?;
                check(audit == n as i64, || {
                    format!("BulkCreate (audited): {audit} audit rows for {n} records")
                })?;
                bench.node(COUNT_AUDITED, json!({})).await?["count"]
                    .as_i64()
                    .unwrap_or(-1)
            } else {
                bench.raw(B::count_all).await?
            };
            check(rows == n as i64, || {
                format!("BulkCreate ({path:?}): {rows} rows in the table after inserting {n}")
            })?;
            line.push(path, n as f64 / elapsed.as_secs_f64());
        }
    }
    lines.push(line);
    bench.raw(B::clear).await?;
    bench.raw(B::clear_audited).await?;
    Ok((version, lines))
}

// ------------------------------------------------------------------ metrics only

/// Rounds of the metrics-only run (`DATAFLOW_BENCH_ONLY_METRICS=1`).
const METRICS_ROUNDS: usize = 15;

/// Read by id on SQLite with metrics on (the default) and off, two handles
/// on the same database (query cache off on both), in interleaved rounds
/// of `ops` reads that alternate which side goes first: reads/s per round,
/// (on, off).
async fn metrics_rounds(url: &str, rounds: usize, ops: usize) -> Res<(Vec<f64>, Vec<f64>)> {
    let boot = |metrics: bool| {
        DataFlow::builder(url)
            .multi_tenant(true)
            .connection_pool_size(POOL_SIZE)
            .connect_timeout(CONNECT_TIMEOUT)
            .enable_caching(false)
            .enable_metrics(metrics)
            .build()
    };
    let on = boot(true).await?;
    let off = boot(false).await?;
    let data: Vec<Value> = (0..200)
        .map(|i| Input::new("metrics", i).into_json())
        .collect();
    on.execute(BULK, json!({"data": data})).await?;
    let ids: Vec<String> = on.execute(LIST, json!({"limit": 200})).await?["records"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter_map(|r| r["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    check(ids.len() == 200, || {
        format!("metrics bench: {} records", ids.len())
    })?;
    let read = |db: &DataFlow, n: usize| {
        let db = db.clone();
        let ids = ids.clone();
        async move {
            let start = Instant::now();
            for i in 0..n {
                let rec = db
                    .execute(READ, id_params(ids[i % ids.len()].clone()))
                    .await?;
                check(rec["email"].is_string(), || {
                    "metrics bench: no record".into()
                })?;
            }
            Res::Ok(n as f64 / start.elapsed().as_secs_f64())
        }
    };
    read(&on, ops / 4 + 10).await?;
    read(&off, ops / 4 + 10).await?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        if r % 2 == 0 {
            a.push(read(&on, ops).await?);
            b.push(read(&off, ops).await?);
        } else {
            b.push(read(&off, ops).await?);
            a.push(read(&on, ops).await?);
        }
    }
    on.execute(
        "BenchUserBulkDeleteNode",
        json!({"filter": {}, "confirmed": true}),
    )
    .await?;
    Ok((a, b))
}

/// Prints the metrics-only table; the verdict line.
fn print_metrics_only(on: &[f64], off: &[f64]) -> String {
    let paired: Vec<f64> = on.iter().zip(off).map(|(a, b)| a / b).collect();
    let ratio = median(on) / median(off);
    println!(
        "\nmetrics on/off, Read by id (SQLite file), {} interleaved rounds (reads/s, median)",
        on.len()
    );
    println!("metrics on  | {:>10}", thousands(median(on)));
    println!("metrics off | {:>10}", thousands(median(off)));
    println!(
        "on/off      | {ratio:>10.3} (median of per-round ratios {:.3}; target >= {METRICS_TARGET})",
        median(&paired)
    );
    metrics_verdict("SQLite", &[("Read by id".to_string(), ratio)])
}

// ------------------------------------------------------------------ query cache

/// The read workloads of the cache lines.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    /// Only reads, of queries read before: every read a hit.
    Hot,
    /// A write, then ten reads of the same query: one miss, nine hits.
    Warm,
    /// A write before every read: every read a miss.
    Cold,
}

impl Workload {
    fn describe(self) -> &'static str {
        match self {
            Workload::Hot => "100 % hits",
            Workload::Warm => "90 % hits",
            Workload::Cold => "0 % hits",
        }
    }
}

/// One cache line: reads/s with the cache off and on, per round.
struct CacheLine {
    name: String,
    workload: Workload,
    list: bool,
    off: Vec<f64>,
    on: Vec<f64>,
    /// The hit rate the cache really had on this line.
    hit_rate: f64,
}

impl CacheLine {
    fn ratio(&self) -> f64 {
        median(&self.on) / median(&self.off)
    }

    /// The median of the per-round ratios (each round runs both sides).
    fn paired(&self) -> f64 {
        let r: Vec<f64> = self.on.iter().zip(&self.off).map(|(a, b)| a / b).collect();
        median(&r)
    }
}

/// Read by id and List, cache on and off, at 100 %, 90 % and 0 % hits.
/// Both handles are on the same database; rounds alternate which goes
/// first. Knobs (profiling): `DATAFLOW_BENCH_CACHE_LINES='Read by id, 0|List'`
/// runs the lines whose name contains one of the `|`-separated parts, `DATAFLOW_BENCH_CACHE_SIDE=on`
/// (or `off`) times only that side.
async fn cache_lines(cfg: &Cfg, url: &str) -> Res<Vec<CacheLine>> {
    let on = DataFlow::builder(url)
        .multi_tenant(true)
        .connection_pool_size(POOL_SIZE)
        .connect_timeout(CONNECT_TIMEOUT)
        .enable_caching(true)
        .build()
        .await?;
    let off = DataFlow::builder(url)
        .multi_tenant(true)
        .connection_pool_size(POOL_SIZE)
        .connect_timeout(CONNECT_TIMEOUT)
        .enable_caching(false)
        .build()
        .await?;
    let only = std::env::var("DATAFLOW_BENCH_CACHE_LINES").unwrap_or_default();
    let side = std::env::var("DATAFLOW_BENCH_CACHE_SIDE").unwrap_or_default();
    let data: Vec<Value> = (0..200)
        .map(|i| Input::new("cache", i).into_json())
        .collect();
    off.execute(BULK, json!({"data": data})).await?;
    let ids: Vec<String> = off.execute(LIST, json!({"limit": 200})).await?["records"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter_map(|r| r["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    check(ids.len() == 200, || {
        format!("cache bench: {} records seeded", ids.len())
    })?;
    let mut lines = Vec::new();
    for (kind, name) in [
        (Kind::Read, "Read by id"),
        (Kind::List, "List active=true, limit 20"),
    ] {
        for workload in [Workload::Hot, Workload::Warm, Workload::Cold] {
            let name = format!("{name}, {}", workload.describe());
            if !only.is_empty() && !only.split('|').any(|part| name.contains(part.trim())) {
                continue;
            }
            let mut line = CacheLine {
                name,
                workload,
                list: matches!(kind, Kind::List),
                off: Vec::new(),
                on: Vec::new(),
                hit_rate: 0.0,
            };
            let sides: Vec<bool> = match side.as_str() {
                "on" => vec![true],
                "off" => vec![false],
                _ => vec![false, true],
            };
            // A warm-up pass of each, untimed.
            for &cached in &sides {
                let db = if cached { &on } else { &off };
                cache_round(db, kind, workload, &ids, cfg.warmup.max(40)).await?;
            }
            let ops = if workload == Workload::Cold {
                cfg.ops.min(2_000)
            } else {
                cfg.ops
            };
            for r in 0..cfg.rounds {
                let mut order = sides.clone();
                if r % 2 == 1 {
                    order.reverse();
                }
                for cached in order {
                    let db = if cached { &on } else { &off };
                    let before = on.cache_stats();
                    let rate = cache_round(db, kind, workload, &ids, ops).await?;
                    if cached {
                        let after = on.cache_stats();
                        let lookups =
                            (after.hits + after.misses - before.hits - before.misses) as f64;
                        line.hit_rate = (after.hits - before.hits) as f64 / lookups.max(1.0);
                        line.on.push(rate);
                    } else {
                        line.off.push(rate);
                    }
                }
            }
            if line.on.is_empty() {
                line.on = line.off.clone();
            }
            if line.off.is_empty() {
                line.off = line.on.clone();
            }
            lines.push(line);
        }
    }
    off.execute(
        "BenchUserBulkDeleteNode",
        json!({"filter": {}, "confirmed": true}),
    )
    .await?;
    // PostgreSQL: the cache's change triggers go again (cache off + migrate).
    off.migrations()
        .apply(dataflow::migrate::ApplyRequest::new())
        .await?;
    Ok(lines)
}

/// `ops` timed reads: each after a write (cold), ten reads of the same
/// query after each write (warm), or reads only (hot: the ids cycle over
/// the first 20 records, and the one List query repeats). Reads per second
/// of read time.
async fn cache_round(
    db: &DataFlow,
    kind: Kind,
    workload: Workload,
    ids: &[String],
    ops: usize,
) -> Res<f64> {
    let reads_per_write = match workload {
        Workload::Hot => usize::MAX,
        Workload::Warm => 10,
        Workload::Cold => 1,
    };
    let node = if matches!(kind, Kind::List) {
        LIST
    } else {
        READ
    };
    let mut timed = Duration::ZERO;
    let mut done = 0;
    let mut block = 0usize;
    while done < ops {
        let id = &ids[block % ids.len()];
        if workload != Workload::Hot {
            let mut fields = Map::new();
            fields.insert("age".into(), Value::from((block % 80) as i64 + 18));
            db.execute(
                "BenchUserUpdateNode",
                json!({"id": id, "fields": Value::Object(fields)}),
            )
            .await?;
        }
        let mut n = 0;
        while n < reads_per_write && done < ops {
            let params = match kind {
                Kind::List => list_params(),
                _ if workload == Workload::Hot => id_params(ids[done % 20].clone()),
                _ => id_params(id.clone()),
            };
            let start = Instant::now();
            let out = db.execute(node, params).await?;
            timed += start.elapsed();
            check(!out.is_null(), || format!("{node}: no answer"))?;
            done += 1;
            n += 1;
        }
        block += 1;
    }
    Ok(done as f64 / timed.as_secs_f64())
}

fn print_cache_table(backend: &str, lines: &[CacheLine]) {
    println!(
        "
query cache on {backend} (reads/s, median; writes between reads untimed; paired: median of per-round on/off)"
    );
    let w = lines.iter().map(|l| l.name.len()).max().unwrap_or(4).max(4);
    println!(
        "{:<w$} | {:>16} | {:>16} | {:>8} | on/off | paired | target",
        "line", "cache off", "cache on", "hits"
    );
    for l in lines {
        let target = match l.workload {
            Workload::Cold => ">= 0.95".to_string(),
            Workload::Hot if l.list => ">= 10 (PostgreSQL)".to_string(),
            // One read in ten goes to the database: free hits give at
            // most 10x, and hits that cost h (in units of a miss) give
            // 10 / (1 + 9 h).
            Workload::Warm => "ceiling 10".to_string(),
            Workload::Hot => "-".to_string(),
        };
        println!(
            "{:<w$} | {:>16} | {:>16} | {:>7.0}% | {:>6.2} | {:>6.2} | {target}",
            l.name,
            thousands(median(&l.off)),
            thousands(median(&l.on)),
            l.hit_rate * 100.0,
            l.ratio(),
            l.paired(),
        );
    }
}

fn cache_verdict(backend: &str, lines: &[CacheLine], postgres: bool) -> String {
    let mut missed = Vec::new();
    for l in lines {
        if l.workload == Workload::Cold && l.ratio() < 0.95 {
            missed.push(format!("{}: {:.2} < 0.95", l.name, l.ratio()));
        }
        if postgres && l.workload == Workload::Hot && l.list && l.ratio() < 10.0 {
            missed.push(format!("{}: {:.2} < 10", l.name, l.ratio()));
        }
    }
    match missed.is_empty() {
        true => format!("{backend} query cache: targets met"),
        false => format!("{backend} query cache: MISSED {}", missed.join("; ")),
    }
}

// ------------------------------------------------------------------ output

fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn print_table(title: &str, lines: &[Line], verbose: bool) {
    println!("\n{title}");
    let w = lines.iter().map(|l| l.name.len()).max().unwrap_or(4).max(4);
    println!(
        "{:<w$} | {:>18} | {:>18} | ratio (node/raw)",
        "line", "node path", "raw diesel"
    );
    println!(
        "{}-+-{}-+-{}-+-{}",
        "-".repeat(w),
        "-".repeat(18),
        "-".repeat(18),
        "-".repeat(16)
    );
    for l in lines {
        println!(
            "{:<w$} | {:>18} | {:>18} | {:.2}",
            l.name,
            format!("{} {}", thousands(l.median(Path::Node)), l.unit),
            format!("{} {}", thousands(l.median(Path::Raw)), l.unit),
            l.ratio()
        );
    }
    // Per-op cost, and the diagnostics measured in the same rounds.
    for l in lines.iter().filter(|l| l.unit == "ops/s") {
        let us = |p: Path| 1e6 / l.median(p);
        let mut note = format!(
            "  {}: {:.1} us/op node, {:.1} us/op raw (node - raw = {:+.1} us)",
            l.name,
            us(Path::Node),
            us(Path::Raw),
            us(Path::Node) - us(Path::Raw)
        );
        for (p, _) in l
            .rates
            .iter()
            .filter(|(p, _)| !matches!(p, Path::Node | Path::Raw))
        {
            note.push_str(&format!(
                "\n    {}: {} ops/s = {:.1} us/op",
                l.describe(*p),
                thousands(l.median(*p)),
                us(*p)
            ));
        }
        println!("{note}");
    }
    if verbose {
        for l in lines {
            for (p, rounds) in &l.rates {
                let r: Vec<String> = rounds.iter().map(|x| thousands(*x)).collect();
                println!("  rounds {} / {}: {}", l.name, l.describe(*p), r.join(", "));
            }
        }
    }
}

/// The audited model against the plain one, per line (the same node path,
/// the same rounds).
fn print_audit_table(lines: &[Line]) {
    let w = lines.iter().map(|l| l.name.len()).max().unwrap_or(4).max(4);
    println!(
        "\n{:<w$} | {:>18} | {:>18} | audited/plain | target",
        "audit log", "plain model", "audited model"
    );
    for l in lines.iter().filter(|l| l.paths().contains(&Path::Audited)) {
        let ratio = l.median(Path::Audited) / l.median(Path::Node);
        println!(
            "{:<w$} | {:>18} | {:>18} | {:>13.2} | {}",
            l.name,
            format!("{} {}", thousands(l.median(Path::Node)), l.unit),
            format!("{} {}", thousands(l.median(Path::Audited)), l.unit),
            ratio,
            audit_target(l).map_or("(reads write no audit rows)".to_string(), |t| format!(
                ">= {t}x"
            )),
        );
    }
}

/// The metrics target: Read by id with metrics on >= this times off.
const METRICS_TARGET: f64 = 0.97;

/// Metrics on (the default) against off, on the lines that measured both.
fn print_metrics_table(lines: &[Line]) -> Vec<(String, f64)> {
    let mut ratios = Vec::new();
    for l in lines
        .iter()
        .filter(|l| l.paths().contains(&Path::MetricsOff))
    {
        let ratio = l.median(Path::Node) / l.median(Path::MetricsOff);
        println!(
            "\nmetrics {} | metrics on {} {} | metrics off {} {} | on/off {ratio:.3} | target >= {METRICS_TARGET}x",
            l.name,
            thousands(l.median(Path::Node)),
            l.unit,
            thousands(l.median(Path::MetricsOff)),
            l.unit,
        );
        ratios.push((l.name.clone(), ratio));
    }
    ratios
}

fn metrics_verdict(backend: &str, ratios: &[(String, f64)]) -> String {
    let parts: Vec<String> = ratios
        .iter()
        .map(|(name, r)| {
            let met = if *r >= METRICS_TARGET {
                "met"
            } else {
                "MISSED"
            };
            format!("{name} on/off {r:.3} ({met})")
        })
        .collect();
    format!(
        "{backend} metrics target (on >= {METRICS_TARGET}x off): {}",
        parts.join(", ")
    )
}

/// The audit target of a line: single writes and BulkCreate; reads have none.
fn audit_target(l: &Line) -> Option<f64> {
    if l.name.starts_with("BulkCreate") {
        Some(AUDIT_BULK_TARGET)
    } else if l.name.starts_with("Create") {
        Some(AUDIT_SINGLE_TARGET)
    } else {
        None
    }
}

/// The audit verdict of one backend, one line.
fn audit_verdict(backend: &str, lines: &[Line]) -> String {
    let misses: Vec<String> = lines
        .iter()
        .filter_map(|l| {
            let target = audit_target(l)?;
            let ratio = l.median(Path::Audited) / l.median(Path::Node);
            (ratio < target).then(|| format!("{} at {ratio:.2}x (target {target}x)", l.name))
        })
        .collect();
    if misses.is_empty() {
        format!("{backend} audit targets (audited >= {AUDIT_SINGLE_TARGET}x plain for single writes, >= {AUDIT_BULK_TARGET}x for BulkCreate): met")
    } else {
        format!("{backend} audit targets: MISSED on {}", misses.join(", "))
    }
}

/// The target verdicts of one backend, one line.
fn verdict(backend: &str, lines: &[Line], bulk_floor: Option<f64>) -> String {
    let misses: Vec<String> = lines
        .iter()
        .filter(|l| l.ratio() < 0.8)
        .map(|l| format!("{} at {:.3}x", l.name, l.ratio()))
        .collect();
    let ratio = if misses.is_empty() {
        "node >= 0.8x raw: met on every line".to_string()
    } else {
        format!("node >= 0.8x raw: MISSED on {}", misses.join(", "))
    };
    let bulk = match (bulk_floor, lines.last()) {
        (Some(floor), Some(l)) => {
            let got = l.median(Path::Node);
            let met = if got >= floor { "met" } else { "MISSED" };
            format!(
                "; BulkCreate >= {} rows/s: {met} ({} rows/s)",
                thousands(floor),
                thousands(got)
            )
        }
        _ => String::new(),
    };
    format!("{backend} targets: {ratio}{bulk}")
}

// ------------------------------------------------------------------ main

/// A temp SQLite database that removes itself (and its WAL files).
struct TempDb(std::path::PathBuf);

impl Drop for TempDb {
    fn drop(&mut self) {
        if std::env::var_os("DATAFLOW_BENCH_KEEP_DB").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

fn postgres_url() -> Result<String, String> {
    if let Some(url) = std::env::var("DATAFLOW_BENCH_POSTGRES_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
    {
        return Ok(url.trim().to_string());
    }
    match std::panic::catch_unwind(|| postgres::fresh_database("bench")) {
        Ok(Some(url)) => Ok(url),
        Ok(None) => Err(
            "no PostgreSQL server: set DATAFLOW_BENCH_POSTGRES_URL or install PostgreSQL".into(),
        ),
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the PostgreSQL harness panicked".into())
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()),
    }
}

#[tokio::main]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let cfg = if args.iter().any(|a| a == "--bench") {
        Cfg::full()
    } else {
        Cfg::smoke()
    };

    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let temp = TempDb(std::env::temp_dir().join(format!(
        "dataflow-bench-{}-{stamp:x}.db",
        std::process::id()
    )));
    let path = temp.0.to_string_lossy().into_owned();
    let sqlite_url = format!("sqlite://{path}");

    let only_cache = std::env::var_os("DATAFLOW_BENCH_ONLY_CACHE").is_some();
    if !cfg.full {
        let started = Instant::now();
        let lines = match only_cache {
            true => Vec::new(),
            false => {
                run_backend::<sqlite_raw::Backend>(&cfg, &sqlite_url, &path)
                    .await?
                    .1
            }
        };
        let cache = cache_lines(&cfg, &sqlite_url).await?;
        if only_cache {
            print_cache_table("SQLite", &cache);
        }
        let mut summary: Vec<String> = lines.iter().map(|l| l.name.clone()).collect();
        summary.extend(cache.iter().map(|l| format!("{} (cache)", l.name)));
        println!(
            "nodes bench smoke (SQLite, {} ops per line, {} bulk rows): node and raw paths agree on {} in {:.1?}; \
             run `cargo bench --bench nodes` for numbers",
            cfg.ops,
            cfg.bulk_rows,
            summary.join(", "),
            started.elapsed()
        );
        return Ok(());
    }

    // Knobs for profiling: which backends to run, and per-round numbers.
    let backends = std::env::var("DATAFLOW_BENCH_BACKENDS")
        .unwrap_or_else(|_| "sqlite,postgres".into())
        .to_ascii_lowercase();
    let verbose = std::env::var_os("DATAFLOW_BENCH_VERBOSE").is_some();

    println!(
        "dataflow node path vs raw diesel, median of {} rounds (node and raw rounds interleaved)",
        cfg.rounds
    );
    println!("command: cargo bench --bench nodes   ({})", args.join(" "));
    println!("targets: node >= 0.8x raw on every line; BulkCreate >= 200,000 rows/s on SQLite; Read by id with metrics on >= 0.97x off");
    println!(
        "setup: {} CPUs; pool size {POOL_SIZE} on both paths, one op at a time; single-op rounds: {} ops or {:?}; \
         bulk: {} rows into an empty table, batches of max_binds/{COLUMNS} rows in one transaction",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cfg.ops,
        ROUND_CAP,
        thousands(cfg.bulk_rows as f64),
    );

    println!(
        "load average at start: {} (other processes share these CPUs; rerun when it is high)",
        loadavg()
    );
    let mut verdicts = Vec::new();
    if std::env::var_os("DATAFLOW_BENCH_ONLY_METRICS").is_some() {
        let (on, off) = metrics_rounds(&sqlite_url, METRICS_ROUNDS, 20_000).await?;
        let v = print_metrics_only(&on, &off);
        println!("\nload average at end: {}", loadavg());
        println!("{v}");
        return Ok(());
    }
    if backends.contains("sqlite") && !only_cache {
        let (version, lines) = run_backend::<sqlite_raw::Backend>(&cfg, &sqlite_url, &path).await?;
        print_table(
            &format!("{version}: {path} (WAL, synchronous=NORMAL)"),
            &lines,
            verbose,
        );
        print_audit_table(&lines);
        let metrics = print_metrics_table(&lines);
        verdicts.push(verdict("SQLite", &lines, Some(200_000.0)));
        verdicts.push(audit_verdict("SQLite", &lines));
        verdicts.push(metrics_verdict("SQLite", &metrics));
    }
    if backends.contains("sqlite") {
        let cache = cache_lines(&cfg, &sqlite_url).await?;
        print_cache_table("SQLite", &cache);
        verdicts.push(cache_verdict("SQLite", &cache, false));
    }
    if backends.contains("postgres") {
        match postgres_url() {
            Ok(url) => {
                if !only_cache {
                    let (version, lines) = run_backend::<pg_raw::Backend>(&cfg, &url, &url).await?;
                    print_table(&format!("{version}: {}", redact(&url)), &lines, verbose);
                    print_audit_table(&lines);
                    let metrics = print_metrics_table(&lines);
                    verdicts.push(verdict("PostgreSQL", &lines, None));
                    verdicts.push(audit_verdict("PostgreSQL", &lines));
                    verdicts.push(metrics_verdict("PostgreSQL", &metrics));
                }
                let cache = cache_lines(&cfg, &url).await?;
                print_cache_table("PostgreSQL", &cache);
                verdicts.push(cache_verdict("PostgreSQL", &cache, true));
            }
            Err(why) => println!("\nPostgreSQL: skipped ({why})"),
        }
    }
    // The multi-tenancy lines: a plain model, the same model tenant_scoped
    // and (PostgreSQL) behind row-level security, in their own databases.
    let tenancy_backends: Vec<&str> = ["sqlite", "postgres"]
        .into_iter()
        .filter(|b| backends.contains(b))
        .collect();
    if !only_cache {
        tenancy::run(true, &tenancy_backends, "cargo bench --bench nodes").await?;
    }
    println!("\nload average at end: {}", loadavg());
    for v in verdicts {
        println!("{v}");
    }
    Ok(())
}

/// `/proc/loadavg`'s 1, 5 and 15 minute averages, where there is one.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let auth = &url[s + 3..at];
            match auth.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &auth[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
