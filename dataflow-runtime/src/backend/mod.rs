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
use std::time::Duration;

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
pub enum Target {
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
    pub fn parse(url: &str) -> Result<Target> {
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

    pub fn dialect(&self) -> Dialect {
        match self {
            Target::Sqlite { .. } => Dialect::Sqlite,
            Target::Postgres { .. } => Dialect::Postgres,
        }
    }

    /// Opens and prepares one connection.
    pub fn connect(&self, connect_timeout: Duration) -> Result<AnyConnection> {
        match self {
            Target::Sqlite { path, .. } => {
                let mut conn = SqliteConnection::establish(path)
                    .map_err(|e| connection_error(self, &e.to_string()))?;
                conn.batch_execute(&format!(
                    "PRAGMA busy_timeout = {}; PRAGMA foreign_keys = ON; PRAGMA case_sensitive_like = ON; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -16384; PRAGMA wal_autocheckpoint = 0;",
                    connect_timeout.as_millis().max(1000)
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
    pub fn display(&self) -> String {
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

/// r2d2 manager that opens connections through [`Target::connect`].
#[derive(Debug)]
pub struct Manager {
    pub target: Target,
    pub connect_timeout: Duration,
}

impl r2d2::ManageConnection for Manager {
    type Connection = AnyConnection;
    type Error = Error;

    fn connect(&self) -> Result<AnyConnection> {
        self.target.connect(self.connect_timeout)
    }

    fn is_valid(&self, conn: &mut AnyConnection) -> Result<()> {
        conn.batch_execute("SELECT 1")
            .map_err(|e| Error::new(ErrorCode::Connection, e.to_string()))
    }

    fn has_broken(&self, conn: &mut AnyConnection) -> bool {
        match conn {
            AnyConnection::Postgresql(c) => diesel::r2d2::R2D2Connection::is_broken(c),
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
                _ => ErrorCode::Database,
            };
            let mut err = Error::new(code, info.message().to_string());
            if let Some(c) = column {
                err = err.with_field(c);
            }
            err
        }
        DieselError::NotFound => Error::new(ErrorCode::NotFound, "no record matched"),
        DieselError::BrokenTransactionManager => Error::new(
            ErrorCode::Connection,
            "the connection's transaction state is broken",
        ),
        other => Error::new(ErrorCode::Database, other.to_string()),
    }
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
