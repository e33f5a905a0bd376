//! The health report (`monitoring`, on by default): what an operator asks
//! when a service is slow or not ready. [`DataFlow::health`] builds it on
//! demand (nothing is recorded for it on the hot path beyond the metrics);
//! nexus `/ready` decides from it and `/health?verbose` returns it as JSON.
//!
//! [`DataFlow::health`]: crate::DataFlow::health

use serde::Serialize;

/// The state of a database at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// The database answers and no migration is blocked: the instance can
    /// serve its models (nexus `/ready`).
    pub ready: bool,
    /// Whether the database answers.
    pub database: DatabaseHealth,
    /// The connection pool.
    pub pool: PoolHealth,
    /// Statements over `slow_query_threshold`.
    pub slow_queries: SlowQueryHealth,
    /// Statements waiting for a lock now: on PostgreSQL sessions of this
    /// database waiting for a lock (`pg_stat_activity`), on SQLite the
    /// writes queued for the write lock (the writer thread's queue).
    pub lock_waits: u64,
    /// The query cache; `None` while it is off (or not built in).
    pub cache: Option<CacheHealth>,
    /// Whether the schema matches the models.
    pub migrations: MigrationHealth,
    /// SQLite's writer thread (`None` on PostgreSQL).
    pub writer: Option<WriterHealth>,
}

/// Whether the database answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DatabaseHealth {
    /// `sqlite` or `postgres`.
    pub dialect: &'static str,
    /// A round trip succeeded (and on SQLite the file takes writes).
    pub answers: bool,
    /// Why not, as an error code and message (credentials redacted).
    pub error: Option<HealthError>,
}

/// An error in a health report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HealthError {
    /// The stable code (`connection`, ...).
    pub code: &'static str,
    /// What happened.
    pub message: String,
}

/// The connection pool.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PoolHealth {
    /// The most connections it opens (`connection_pool_size`).
    pub size: u32,
    /// Open connections.
    pub connections: u32,
    /// Open connections not in use.
    pub idle: u32,
    /// Connections in use.
    pub in_use: u32,
    /// Callers waiting for a connection now.
    pub waiting: u64,
    /// Waits that timed out since boot.
    pub timeouts: u64,
    /// `in_use / size`, from 0 to 1: at 1 callers start to wait.
    pub saturation: f64,
}

/// Statements over `slow_query_threshold`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct SlowQueryHealth {
    /// The threshold in milliseconds (`None`: slow statements are not watched).
    pub threshold_ms: Option<f64>,
    /// The window of `recent`, in seconds.
    pub window_seconds: u64,
    /// Slow statements within the window.
    pub recent: u64,
    /// Slow statements since boot.
    pub total: u64,
}

/// The query cache.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CacheHealth {
    /// Hits since boot.
    pub hits: u64,
    /// Misses since boot.
    pub misses: u64,
    /// `hits / (hits + misses)`; `None` before the first lookup.
    pub hit_ratio: Option<f64>,
    /// Entries held.
    pub entries: u64,
    /// Bytes held.
    pub bytes: u64,
}

/// Whether the schema matches the models.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MigrationHealth {
    /// See [`MigrationState`].
    pub state: MigrationState,
    /// Migrations this process applied (boot's automatic step and
    /// `migrations().apply`).
    pub applied: u64,
    /// What is blocked, and the command to review it.
    pub detail: Option<String>,
}

/// Whether the schema matches the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MigrationState {
    /// The persisted registry matches the compiled models (or the plan is empty).
    Current,
    /// The models need schema changes nobody applied (`auto_migrate` off,
    /// or a change above low risk another instance stopped at): not ready.
    Blocked,
    /// Not checked: the registry or the schema step is turned off.
    Unchecked,
    /// Not known: the database does not answer.
    Unknown,
}

/// SQLite's writer thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WriterHealth {
    /// Writes queued for the thread now.
    pub queue_depth: u64,
}
