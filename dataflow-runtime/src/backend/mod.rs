//! Connections, the pool and statement execution. This is the one place that
//! knows which database is on the other end.

mod pg;
mod sqlite;

use crate::error::{Error, ErrorCode, Result};
use crate::sql::{Dialect, Sql};
use crate::value::Cell;
use diesel::connection::SimpleConnection;
use diesel::query_builder::{Query, QueryFragment, QueryId};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::Untyped;
use diesel::{Connection, PgConnection, SqliteConnection};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The one connection type: diesel's `MultiConnection` over both backends.
#[derive(diesel::MultiConnection)]
pub enum AnyConnection {
    /// A PostgreSQL connection.
    Postgresql(PgConnection),
    /// A SQLite connection.
    Sqlite(SqliteConnection),
}

/// A borrowed backend connection: what [`AnyConnection`] holds, or what
/// the SQLite writer thread lends to a write.
pub(crate) enum ConnMut<'a> {
    Postgresql(&'a mut PgConnection),
    Sqlite(&'a mut SqliteConnection),
}

impl<'a> From<&'a mut AnyConnection> for ConnMut<'a> {
    fn from(c: &'a mut AnyConnection) -> Self {
        match c {
            AnyConnection::Postgresql(c) => ConnMut::Postgresql(c),
            AnyConnection::Sqlite(c) => ConnMut::Sqlite(c),
        }
    }
}

/// Where to connect, parsed from the database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A SQLite file path, or a shared in-memory database name.
    Sqlite {
        path: String,
        memory: bool,
    },
    Postgres {
        url: String,
    },
}

impl Target {
    /// Accepts `sqlite://rel.db`, `sqlite:///abs.db`, `sqlite::memory:`,
    /// `postgres://…` and `postgresql://…`.
    pub(crate) fn parse(url: &str) -> Result<Target> {
        let bad = |why: &str| {
            Error::new(
                ErrorCode::Config,
                format!(
                    "invalid database URL `{}`: {why}; expected sqlite://path.db, sqlite:///abs/path.db, sqlite::memory: or postgres://user:pass@host/db",
                    redact(url)
                ),
            )
        };
        if url == "sqlite::memory:" || url == "sqlite://:memory:" {
            let name = format!(
                "file:dataflow_mem_{}?mode=memory&cache=shared",
                uuid::Uuid::now_v7().simple()
            );
            return Ok(Target::Sqlite {
                path: name,
                memory: true,
            });
        }
        if let Some(rest) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if rest.is_empty() {
                return Err(bad("the SQLite path is empty"));
            }
            return Ok(Target::Sqlite {
                path: rest.to_string(),
                memory: false,
            });
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            if url.len() <= "postgres://".len() + 1 {
                return Err(bad("the PostgreSQL URL names no host"));
            }
            return Ok(Target::Postgres {
                url: url.to_string(),
            });
        }
        if url.starts_with("mysql://") {
            return Err(Error::new(
                ErrorCode::NotSupported,
                "MySQL is a planned backend and not available yet; use sqlite:// or postgres://",
            ));
        }
        Err(bad("unknown scheme"))
    }

    /// The SQLite database file (not for an in-memory database); a
    /// `file:` URI's path without its query.
    pub(crate) fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        let Target::Sqlite {
            path,
            memory: false,
        } = self
        else {
            return None;
        };
        let Some(uri) = path.strip_prefix("file:") else {
            return Some(path.into());
        };
        let uri = uri.split(['?', '#']).next().unwrap_or_default();
        // `file:///abs` and `file://localhost/abs` name `/abs`.
        let uri = match uri.strip_prefix("//") {
            Some(rest) => &rest[rest.find('/').unwrap_or(rest.len())..],
            None => uri,
        };
        (!uri.is_empty()).then(|| uri.into())
    }

    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            Target::Sqlite { .. } => Dialect::Sqlite,
            Target::Postgres { .. } => Dialect::Postgres,
        }
    }

    /// Opens and prepares one connection.
    pub(crate) fn connect(&self, connect_timeout: Duration) -> Result<AnyConnection> {
        match self {
            Target::Sqlite { path, .. } => {
                let mut conn = SqliteConnection::establish(path)
                    .map_err(|e| connection_error(self, &e.to_string()))?;
                conn.batch_execute(&format!(
                    "PRAGMA busy_timeout = {}; PRAGMA foreign_keys = ON; PRAGMA case_sensitive_like = ON; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -16384; PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = {};",
                    connect_timeout.as_millis().max(1000),
                    crate::writer::WAL_SIZE_LIMIT,
                ))
                .map_err(|e| connection_error(self, &e.to_string()))?;
                // Switching to WAL (once per file; it persists) can report "locked"
                // without waiting when several processes open a new file at once.
                let deadline = std::time::Instant::now() + connect_timeout;
                loop {
                    match conn.batch_execute("PRAGMA journal_mode = WAL") {
                        Ok(()) => break,
                        Err(e)
                            if e.to_string().contains("locked")
                                && std::time::Instant::now() < deadline =>
                        {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Err(e) => return Err(connection_error(self, &e.to_string())),
                    }
                }
                Ok(AnyConnection::Sqlite(conn))
            }
            Target::Postgres { url } => {
                let secs = connect_timeout.as_secs().max(1);
                let sep = if url.contains('?') { '&' } else { '?' };
                let url = if url.contains("connect_timeout=") {
                    url.clone()
                } else {
                    format!("{url}{sep}connect_timeout={secs}")
                };
                let conn = PgConnection::establish(&url)
                    .map_err(|e| connection_error(self, &e.to_string()))?;
                Ok(AnyConnection::Postgresql(conn))
            }
        }
    }

    /// The URL without its password, safe to show.
    pub(crate) fn display(&self) -> String {
        match self {
            Target::Sqlite { path, memory: true } => format!("sqlite::memory: ({path})"),
            Target::Sqlite { path, .. } => format!("sqlite://{path}"),
            Target::Postgres { url } => redact(url),
        }
    }
}

/// Replaces the password of a URL with `***`.
pub(crate) fn redact(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let auth_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..auth_end].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                return format!(
                    "{}://{}:***{}",
                    &url[..scheme_end],
                    &rest[..colon],
                    &rest[at..]
                );
            }
        }
    }
    url.to_string()
}

fn connection_error(target: &Target, detail: &str) -> Error {
    Error::new(
        ErrorCode::Connection,
        format!("cannot connect to {}: {}", target.display(), detail.trim()),
    )
}

/// How long a PostgreSQL connection may sit idle in the pool before it is
/// checked with a round trip when it is next handed out (HikariCP's
/// `aliveBypassWindowMs` is the same idea and value): a busy pool pays
/// nothing, a connection that waited through a restart is caught before use.
pub(crate) const IDLE_BEFORE_CHECK: Duration = Duration::from_millis(500);

/// A pooled connection and what the pool knows about it; derefs to the
/// [`AnyConnection`].
pub struct Pooled {
    conn: AnyConnection,
    /// A statement on it failed the way only a dead connection fails: it
    /// is closed when it goes back, never handed out again.
    lost: bool,
    /// When it last went back to the pool.
    returned: Instant,
    /// When it was last handed out: it was alive then, and may have died
    /// any time after (a connection in use when the server went away comes
    /// back after the loss was seen, and must still be checked).
    handed_out: Instant,
}

impl std::ops::Deref for Pooled {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.conn
    }
}

impl Pooled {
    /// Looks at the outcome of work done on this connection: an error that
    /// says the connection is dead marks it, so the pool closes it instead
    /// of handing it out again. Returns whether it did.
    pub(crate) fn note<T>(&mut self, outcome: &Result<T>) -> bool {
        if let Err(e) = outcome {
            if connection_lost(&self.conn, e) {
                self.lost = true;
            }
        }
        self.lost
    }
}

/// Whether `e`, raised by work on `conn`, means `conn` is dead. On
/// PostgreSQL every `connection` error raised while a connection is held is
/// taken as such (diesel's `ClosedConnection` and `UnableToSendCommand`, a
/// transaction state broken by them, a failed rollback): closing a live
/// connection by mistake costs one reconnect, keeping a dead one fails every
/// request it is handed to. A SQLite connection is a file handle; its
/// `connection` errors (locked, full, read-only) are about the file.
fn connection_lost(conn: &AnyConnection, e: &Error) -> bool {
    matches!(conn, AnyConnection::Postgresql(_)) && e.code() == ErrorCode::Connection
}

/// r2d2 manager that opens connections through [`Target::connect`], closes
/// the ones found dead and checks, before handing it out, a PostgreSQL
/// connection that sat idle or that may have died with another one.
#[derive(Debug)]
pub struct Manager {
    target: Target,
    connect_timeout: Duration,
    /// The pool's clock: `lost_at` counts from here.
    epoch: Instant,
    /// Nanoseconds after `epoch` when a connection of this pool was last
    /// found dead (0: never). A restart, failover or mass termination ends
    /// every connection at once, and the others are checked before use.
    lost_at: AtomicU64,
    /// PostgreSQL with the query cache: every connection sets
    /// `dataflow.origin` to this, which the change triggers put in their
    /// notifications, so this instance's listener skips its own writes
    /// (already invalidated when they answered).
    origin: Option<String>,
}

impl Manager {
    pub(crate) fn new(target: Target, connect_timeout: Duration) -> Manager {
        Manager {
            target,
            connect_timeout,
            epoch: Instant::now(),
            lost_at: AtomicU64::new(0),
            origin: None,
        }
    }

    /// Connections set `dataflow.origin` to `origin` (see [`Manager::origin`]).
    pub(crate) fn with_origin(mut self, origin: Option<String>) -> Manager {
        self.origin = origin;
        self
    }

    fn nanos(&self, at: Instant) -> u64 {
        // At least 1: 0 means "never".
        (at.saturating_duration_since(self.epoch).as_nanos() as u64).max(1)
    }

    /// Whether `conn` should be checked with a round trip before use.
    fn needs_check(&self, conn: &Pooled) -> bool {
        conn.returned.elapsed() >= IDLE_BEFORE_CHECK
            || self.nanos(conn.handed_out) <= self.lost_at.load(Ordering::Acquire)
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = Pooled;
    type Error = Error;

    fn connect(&self) -> Result<Pooled> {
        let mut conn = self.target.connect(self.connect_timeout)?;
        if let (Some(origin), AnyConnection::Postgresql(c)) = (&self.origin, &mut conn) {
            // A generated UUID: nothing to quote.
            c.batch_execute(&format!("SET dataflow.origin = '{origin}'"))
                .map_err(|e| connection_error(&self.target, &e.to_string()))?;
        }
        Ok(Pooled {
            conn,
            lost: false,
            returned: Instant::now(),
            handed_out: Instant::now(),
        })
    }

    /// Called on checkout (the pool is built with `test_on_check_out` for
    /// PostgreSQL): a round trip only for a connection that may be dead.
    /// A failure here drops it and r2d2 takes the next one, so nothing of
    /// the caller's was sent on it.
    fn is_valid(&self, conn: &mut Pooled) -> Result<()> {
        if conn.lost {
            return Err(Error::new(ErrorCode::Connection, "the connection was lost"));
        }
        let check = self.needs_check(conn);
        let valid = match &mut conn.conn {
            AnyConnection::Postgresql(c) if check => c.batch_execute("SELECT 1").map_err(|e| {
                self.lost_at
                    .fetch_max(self.nanos(Instant::now()), Ordering::AcqRel);
                Error::new(ErrorCode::Connection, e.to_string().trim().to_string())
            }),
            _ => Ok(()),
        };
        if valid.is_ok() {
            conn.handed_out = Instant::now();
        }
        valid
    }

    /// Called when a connection goes back to the pool.
    fn has_broken(&self, conn: &mut Pooled) -> bool {
        if conn.lost {
            self.lost_at
                .fetch_max(self.nanos(Instant::now()), Ordering::AcqRel);
            return true;
        }
        match &mut conn.conn {
            AnyConnection::Postgresql(c) => {
                // Only PostgreSQL connections are checked by idle time.
                conn.returned = Instant::now();
                diesel::r2d2::R2D2Connection::is_broken(c)
            }
            AnyConnection::Sqlite(c) => diesel::r2d2::R2D2Connection::is_broken(c),
        }
    }
}

pub(crate) type Pool = r2d2::Pool<Manager>;

/// What the node code needs from a connection, implemented once per backend.
pub(crate) trait Conn {
    const DIALECT: Dialect;
    /// Runs a statement, returning the affected row count.
    fn exec(&mut self, sql: &Sql) -> Result<usize>;
    /// Runs a query, returning its rows as cells in select-list order.
    fn query(&mut self, sql: &Sql) -> Result<Vec<Vec<Cell>>>;
    /// Runs `f` in a transaction that takes the write lock up front; inside
    /// an open transaction it becomes a savepoint.
    fn write_transaction<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T>;
    fn batch(&mut self, sql: &str) -> Result<()>;
}

/// A borrowed [`Sql`] as a diesel query (diesel's run methods take queries by value).
pub(crate) struct SqlRef<'a>(pub &'a Sql);

impl QueryId for SqlRef<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for SqlRef<'_> {
    type SqlType = Untyped;
}

impl<DB: diesel::backend::Backend> QueryFragment<DB> for SqlRef<'_>
where
    Sql: QueryFragment<DB>,
{
    fn walk_ast<'b>(
        &'b self,
        pass: diesel::query_builder::AstPass<'_, 'b, DB>,
    ) -> diesel::QueryResult<()> {
        self.0.walk_ast(pass)
    }
}

impl<C> diesel::RunQueryDsl<C> for SqlRef<'_> {}

/// Carries an application error out of a diesel transaction, which rolls back.
enum TxError {
    App(Error),
    Db(DieselError),
}

impl From<DieselError> for TxError {
    fn from(e: DieselError) -> Self {
        TxError::Db(e)
    }
}

/// Runs `f` through one of diesel's transaction entry points, keeping the
/// application's error type: `begin` is `Connection::transaction` (which
/// nests as a savepoint) or SQLite's `immediate_transaction`.
fn transaction_with<C, T>(
    conn: &mut C,
    f: impl FnOnce(&mut C) -> Result<T>,
    begin: impl FnOnce(&mut C, &mut dyn FnMut(&mut C) -> Result<(), TxError>) -> Result<(), TxError>,
) -> Result<T> {
    let mut f = Some(f);
    let mut out = None;
    let res = begin(conn, &mut |c| {
        let f = f.take().expect("transaction body runs once");
        out = Some(f(c).map_err(TxError::App)?);
        Ok(())
    });
    match res {
        Ok(()) => Ok(out.expect("transaction body ran")),
        Err(TxError::App(e)) => Err(e),
        Err(TxError::Db(e)) => Err(map_error(e)),
    }
}

/// A row read as cells; the schema turns cells into JSON afterwards.
pub(crate) struct Cells(pub Vec<Cell>);

/// Maps a diesel error to a dataflow error, which keeps it as its source.
/// Constraint failures become the user-facing codes; the table's model name
/// is added by the caller.
pub(crate) fn map_error(e: DieselError) -> Error {
    describe_diesel_error(&e).with_source(e)
}

fn describe_diesel_error(e: &DieselError) -> Error {
    match e {
        DieselError::DatabaseError(kind, info) => {
            let column = constraint_column(info.message(), info.details(), info.column_name())
                .or_else(|| named_column(info.constraint_name()?, info.table_name()?));
            let code = match kind {
                DatabaseErrorKind::UniqueViolation => ErrorCode::UniqueViolation,
                DatabaseErrorKind::ForeignKeyViolation => ErrorCode::FkViolation,
                DatabaseErrorKind::NotNullViolation | DatabaseErrorKind::CheckViolation => {
                    ErrorCode::Validation
                }
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand => {
                    ErrorCode::Connection
                }
                // diesel reports SQLite's foreign key failures as unknown errors.
                _ if info.message().contains("FOREIGN KEY constraint failed") => {
                    ErrorCode::FkViolation
                }
                _ if info.message().contains("database is locked") => ErrorCode::Connection,
                _ if sqlite_cannot_write(info.message()) => ErrorCode::Connection,
                _ => ErrorCode::Database,
            };
            // libpq's messages end with a newline.
            let mut err = Error::new(code, info.message().trim_end().to_string());
            if let Some(c) = column {
                err = err.with_field(c);
            }
            err
        }
        DieselError::NotFound => Error::new(ErrorCode::NotFound, "no record matched"),
        // The commit failed and so did the rollback: the commit's error
        // says why (a connection that died is `connection`).
        DieselError::RollbackErrorOnCommit { commit_error, .. } => {
            describe_diesel_error(commit_error)
        }
        DieselError::BrokenTransactionManager => Error::new(
            ErrorCode::Connection,
            "the connection's transaction state is broken",
        ),
        other => Error::new(ErrorCode::Database, other.to_string()),
    }
}

/// Whether SQLite's `message` says the database cannot take writes right
/// now: the disk (or the file's size limit) is full, the file or its
/// directory is read-only, or the disk failed. None of it is the caller's
/// doing, and a later attempt can succeed: `connection` (503), like a locked
/// database, not `database` (500).
pub(crate) fn sqlite_cannot_write(message: &str) -> bool {
    [
        "database or disk is full",
        "attempt to write a readonly database",
        "disk I/O error",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// The column a constraint error is about: SQLite says
/// `UNIQUE constraint failed: users.email`, PostgreSQL `Key (email)=(…)`.
/// Of a composite key the last column: the keys dataflow makes composite
/// lead with `tenant_id`, and the field is what follows it.
fn constraint_column(message: &str, details: Option<&str>, column: Option<&str>) -> Option<String> {
    if let Some(c) = column {
        return Some(c.to_string());
    }
    if let Some(rest) = message.split("constraint failed: ").nth(1) {
        let last = rest.split(',').next_back()?.trim();
        return last.rsplit('.').next().map(str::to_string);
    }
    let d = details?;
    let start = d.find("Key (")? + 5;
    let end = d[start..].find(')')? + start;
    Some(d[start..end].split(',').next_back()?.trim().to_string())
}

/// The column a constraint's name says it is about, for PostgreSQL errors
/// without key details (it leaves them out on tables behind row-level
/// security): `uq_<table>_<col>` (ours), `<table>_<col>_key` and
/// `<table>_<col>_fkey` (PostgreSQL's defaults, which ours follow).
fn named_column(constraint: &str, table: &str) -> Option<String> {
    if let Some(col) = constraint.strip_prefix(&format!("uq_{table}_")) {
        return Some(col.to_string());
    }
    let rest = constraint.strip_prefix(&format!("{table}_"))?;
    rest.strip_suffix("_fkey")
        .or_else(|| rest.strip_suffix("_key"))
        .map(str::to_string)
}

impl From<r2d2::Error> for Error {
    fn from(e: r2d2::Error) -> Self {
        Error::new(
            ErrorCode::Connection,
            format!("no database connection available: {e}"),
        )
        .with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_to_targets() {
        assert_eq!(
            Target::parse("sqlite://app.db").unwrap(),
            Target::Sqlite {
                path: "app.db".into(),
                memory: false
            }
        );
        assert_eq!(
            Target::parse("sqlite:///abs/app.db").unwrap(),
            Target::Sqlite {
                path: "/abs/app.db".into(),
                memory: false
            }
        );
        assert!(matches!(
            Target::parse("sqlite::memory:").unwrap(),
            Target::Sqlite { memory: true, .. }
        ));
        assert_eq!(
            Target::parse("postgresql://u@h/db").unwrap().dialect(),
            Dialect::Postgres
        );
        assert_eq!(Target::parse("nope").unwrap_err().code(), "config");
    }

    #[test]
    fn the_sqlite_file_of_paths_and_uris() {
        let file = |url: &str| Target::parse(url).unwrap().sqlite_file();
        assert_eq!(file("sqlite://app.db"), Some("app.db".into()));
        assert_eq!(file("sqlite:///abs/app.db"), Some("/abs/app.db".into()));
        assert_eq!(
            file("sqlite://file:/abs/app.db?mode=ro"),
            Some("/abs/app.db".into())
        );
        assert_eq!(
            file("sqlite://file:///abs/app.db?mode=ro"),
            Some("/abs/app.db".into())
        );
        assert_eq!(
            file("sqlite://file://localhost/abs/app.db"),
            Some("/abs/app.db".into())
        );
        assert_eq!(file("sqlite::memory:"), None);
        assert_eq!(file("postgres://u@h/db"), None);
    }

    #[test]
    fn sqlite_storage_errors_are_connection_errors() {
        for message in [
            "database or disk is full",
            "attempt to write a readonly database",
            "disk I/O error",
        ] {
            let e = describe_diesel_error(&DieselError::DatabaseError(
                DatabaseErrorKind::Unknown,
                Box::new(message.to_string()),
            ));
            assert_eq!(e.code(), ErrorCode::Connection, "{message}");
            assert_eq!(e.code().http_status(), 503);
        }
    }

    #[test]
    fn composite_key_errors_name_the_field_after_the_tenant() {
        let col = |m: &str, d: Option<&str>| constraint_column(m, d, None);
        assert_eq!(
            col(
                "UNIQUE constraint failed: users.tenant_id, users.email",
                None
            )
            .as_deref(),
            Some("email")
        );
        assert_eq!(
            col("x", Some("Key (tenant_id, email)=(a, b) already exists.")).as_deref(),
            Some("email")
        );
        assert_eq!(
            col("x", Some("Key (email)=(b) already exists.")).as_deref(),
            Some("email")
        );
        // Without key details (row-level security), the constraint's name.
        assert_eq!(
            named_column("uq_users_email", "users").as_deref(),
            Some("email")
        );
        assert_eq!(
            named_column("logins_account_id_fkey", "logins").as_deref(),
            Some("account_id")
        );
        assert_eq!(
            named_column("users_email_key", "users").as_deref(),
            Some("email")
        );
        assert_eq!(named_column("users_pkey", "users"), None);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
