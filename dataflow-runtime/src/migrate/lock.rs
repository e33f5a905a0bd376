//! The migration lock: concurrent boots migrate exactly once. PostgreSQL
//! uses an advisory lock on a dedicated connection (released when that
//! connection closes, so a crashed holder frees it); SQLite a lock row with
//! an expiry (a crashed holder's row expires).

use super::{cell_text, exec, query, text};
use crate::backend::{Conn, Target};
use crate::error::{Error, ErrorCode, Result};
use crate::sql::Dialect;
use crate::value::{format_datetime, now};
use diesel::connection::SimpleConnection;
use std::time::{Duration, Instant};

/// The advisory lock key: "dataflow" in ASCII.
const PG_KEY: i64 = 0x6461_7461_666c_6f77;
/// How long a SQLite lock row stays valid without its holder.
const SQLITE_TTL: chrono::Duration = chrono::Duration::seconds(120);

/// Runs `f` while holding the migration lock.
pub(crate) fn with_lock<C: Conn, T>(
    conn: &mut C,
    target: &Target,
    timeout: Duration,
    who: &str,
    f: impl FnOnce(&mut C) -> Result<T>,
) -> Result<T> {
    match C::DIALECT {
        Dialect::Postgres => {
            let mut lock_conn = target.connect(timeout)?;
            lock_conn
                .batch_execute(&format!("SELECT pg_advisory_lock({PG_KEY})"))
                .map_err(|e| {
                    Error::new(
                        ErrorCode::Connection,
                        format!("taking the migration lock: {e}"),
                    )
                })?;
            // The internal tables are created under the lock: concurrent
            // CREATE TABLE IF NOT EXISTS races on PostgreSQL's catalog.
            let result = super::ensure_internal_tables(conn).and_then(|()| f(conn));
            // Closing the connection releases the lock even if this fails.
            let _ = lock_conn.batch_execute(&format!("SELECT pg_advisory_unlock({PG_KEY})"));
            result
        }
        Dialect::Sqlite => {
            // SQLite serializes DDL under its write lock, so this cannot race.
            super::ensure_internal_tables(conn)?;
            let holder = format!("{who} {}", uuid::Uuid::now_v7());
            let deadline = Instant::now() + timeout.max(Duration::from_secs(30));
            loop {
                let stamp = now();
                let got = conn.write_transaction(|c| {
                    exec(c, "DELETE FROM dataflow_migration_lock WHERE expires_at < ?", vec![text(format_datetime(&stamp))])?;
                    exec(
                        c,
                        "INSERT INTO dataflow_migration_lock (id, holder, acquired_at, expires_at) VALUES (1, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                        vec![text(holder.as_str()), text(format_datetime(&stamp)), text(format_datetime(&(stamp + SQLITE_TTL)))],
                    )?;
                    query(c, "SELECT holder, expires_at FROM dataflow_migration_lock WHERE id = 1", vec![])
                })?;
                match got.first().map(|r| (cell_text(&r[0]), cell_text(&r[1]))) {
                    Some((h, _)) if h == holder => break,
                    Some((h, expires)) if Instant::now() > deadline => {
                        return Err(Error::new(
                            ErrorCode::MigrationBlocked,
                            format!("the migration lock is held by `{h}` until {expires}; if that process died, wait for the expiry or run `migrate unlock`"),
                        ))
                    }
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
            let result = f(conn);
            exec(
                conn,
                "DELETE FROM dataflow_migration_lock WHERE id = 1 AND holder = ?",
                vec![text(holder.as_str())],
            )?;
            result
        }
    }
}

/// Removes a SQLite lock row left by a crashed process.
pub(crate) fn force_unlock<C: Conn>(conn: &mut C) -> Result<usize> {
    exec(conn, "DELETE FROM dataflow_migration_lock", vec![])
}
