//! Configuration, with the names users of the Python framework know. Every
//! option exists as a builder method and as a serde field (file or env).

use crate::error::{Error, ErrorCode, Result};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The runtime configuration. `None` means "the default".
///
/// Build it with [`DataFlow::builder`](crate::DataFlow::builder), from a
/// file ([`Config::from_json_file`]) or the environment
/// ([`Config::from_env`]), or start from `Config::default()` and set
/// fields; it is `#[non_exhaustive]` so options can be added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// `sqlite://app.db`, `sqlite::memory:` or `postgres://user:pass@host/db`.
    pub database_url: String,
    /// A stable id for this application in the model registry.
    pub application_id: String,
    /// Neither read nor write the persisted model registry (default off).
    pub skip_registry: Option<bool>,
    /// Persist the model registry (default on); `false` is `skip_registry`.
    pub enable_model_persistence: Option<bool>,
    /// Apply safe and low-risk schema changes at boot (default on).
    pub auto_migrate: Option<bool>,
    /// Skip every schema step at boot.
    pub skip_migration: Option<bool>,
    /// Before applying at boot, trial the plan where it can be thrown away
    /// (as `migrate apply --staging` does).
    pub staging: Option<bool>,
    /// Schema discovery (not available yet: `true` fails boot).
    pub enable_schema_discovery: Option<bool>,
    /// The query cache of Read, List, Count and Aggregate results (default on; see
    /// the README's "Query cache"). On PostgreSQL it needs the change
    /// triggers its migrations create; `false` with `migrate apply` drops them.
    pub enable_caching: Option<bool>,
    /// The query cache's bound in bytes (default 64 MiB).
    pub cache_max_bytes: Option<u64>,
    /// How long a cached result is kept at most, in milliseconds (default:
    /// until a write invalidates it or it is evicted); a model's
    /// `cache_ttl` overrides it.
    pub cache_ttl_ms: Option<u64>,
    /// Query metrics (default on): per model × operation calls, errors,
    /// latency and rows, pool, writer, migration and slow-query families,
    /// as Prometheus text from `DataFlow::metrics` (and nexus `/metrics`).
    pub enable_metrics: Option<bool>,
    /// The most pooled connections (default 10; 1 for `sqlite::memory:`).
    pub connection_pool_size: u32,
    /// The audit log for every model (default off): each write records who
    /// changed what in `dataflow_audit`, in the write's transaction. A model
    /// opts out with `#[dataflow::model(audit = false)]`; the model option
    /// `audit` turns it on for that model alone.
    pub enable_audit_log: Option<bool>,
    /// How long audit rows are kept, in milliseconds: the purge
    /// (`DataFlow::purge_audit`, `dataflow audit purge`) deletes older ones.
    /// `None` keeps them until purged with an explicit age.
    pub audit_retention_ms: Option<u64>,
    /// Multi-tenancy: `tenant_scoped` models get a `tenant_id` column and
    /// every statement binds the context's tenant (default off; a
    /// `tenant_scoped` model without it fails boot).
    pub multi_tenant: Option<bool>,
    /// PostgreSQL only: row-level security policies on tenant-scoped tables
    /// as a second wall behind the statements' tenant filter (default off;
    /// needs `multi_tenant`).
    pub row_level_security: Option<bool>,
    /// Monitoring (default on): `DataFlow::health`, the report behind nexus
    /// `/ready` and `/health?verbose`; off, `health` answers `not_supported`.
    pub monitoring: Option<bool>,
    /// Seconds after which a statement counts as slow: a `tracing` WARN
    /// event (SQL shape, never values) and `dataflow_slow_queries_total`
    /// (default: none).
    pub slow_query_threshold: Option<f64>,
    /// A `tracing` event (target `dataflow::sql`, INFO) for every SQL
    /// statement: its shape and bind count, never its values.
    pub echo: bool,
    /// How long to wait for a connection, in milliseconds.
    pub connect_timeout_ms: u64,
    /// PostgreSQL only: how long a migration statement waits for a table
    /// lock (`SET LOCAL lock_timeout`) before the migration rolls back and
    /// retries, in milliseconds (default 5 s; 0 waits forever). A DDL
    /// statement queued behind a long transaction blocks every later query
    /// on the table while it waits, so the wait is kept short.
    pub migration_lock_timeout_ms: u64,
    /// PostgreSQL only: the longest one migration statement may run
    /// (`SET LOCAL statement_timeout`), in milliseconds (default 5 min; 0 is
    /// no limit).
    pub migration_statement_timeout_ms: u64,
    /// PostgreSQL only: how many more times a migration whose lock wait timed
    /// out is tried, from the start, before it fails (default 3).
    pub migration_lock_retries: u32,
    /// PostgreSQL only: the pause before the first retry after a lock
    /// timeout, doubled before each further one, in milliseconds (default 500).
    pub migration_retry_backoff_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database_url: "sqlite://dataflow.db".into(),
            application_id: "default".into(),
            skip_registry: None,
            enable_model_persistence: None,
            auto_migrate: None,
            skip_migration: None,
            staging: None,
            enable_schema_discovery: None,
            enable_caching: None,
            cache_max_bytes: None,
            cache_ttl_ms: None,
            enable_metrics: None,
            connection_pool_size: 10,
            enable_audit_log: None,
            audit_retention_ms: None,
            multi_tenant: None,
            row_level_security: None,
            monitoring: None,
            slow_query_threshold: None,
            echo: false,
            connect_timeout_ms: 5_000,
            migration_lock_timeout_ms: 5_000,
            migration_statement_timeout_ms: 300_000,
            migration_lock_retries: 3,
            migration_retry_backoff_ms: 500,
        }
    }
}

impl Config {
    /// Reads a JSON config file with the field names above.
    pub fn from_json_file(path: impl AsRef<std::path::Path>) -> Result<Config> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::new(
                ErrorCode::Config,
                format!("cannot read config {}: {e}", path.display()),
            )
            .with_source(e)
        })?;
        serde_json::from_str(&text).map_err(|e| {
            Error::new(
                ErrorCode::Config,
                format!("invalid config {}: {e}", path.display()),
            )
        })
    }

    /// Reads `DATAFLOW_<OPTION>` variables (e.g. `DATAFLOW_DATABASE_URL`,
    /// `DATAFLOW_CONNECTION_POOL_SIZE`) over the defaults.
    pub fn from_env() -> Result<Config> {
        let mut obj =
            serde_json::to_value(Config::default()).map_err(|e| Error::internal(e.to_string()))?;
        let map = obj.as_object_mut().expect("config is an object");
        let keys: Vec<String> = map.keys().cloned().collect();
        for key in keys {
            if let Ok(raw) = std::env::var(format!("DATAFLOW_{}", key.to_uppercase())) {
                let value = match raw.parse::<serde_json::Value>() {
                    Ok(v @ (serde_json::Value::Bool(_) | serde_json::Value::Number(_)))
                        if key != "database_url" && key != "application_id" =>
                    {
                        v
                    }
                    _ => serde_json::Value::String(raw),
                };
                map.insert(key, value);
            }
        }
        serde_json::from_value(obj).map_err(|e| {
            Error::new(
                ErrorCode::Config,
                format!("invalid DATAFLOW_* environment: {e}"),
            )
        })
    }

    /// How long to wait for a connection.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.max(1))
    }

    /// PostgreSQL: how long a migration statement waits for a table lock
    /// (zero: forever).
    pub fn migration_lock_timeout(&self) -> Duration {
        Duration::from_millis(self.migration_lock_timeout_ms)
    }

    /// PostgreSQL: the longest one migration statement may run (zero: no limit).
    pub fn migration_statement_timeout(&self) -> Duration {
        Duration::from_millis(self.migration_statement_timeout_ms)
    }

    /// PostgreSQL: the pause before the first retry after a lock timeout.
    pub fn migration_retry_backoff(&self) -> Duration {
        Duration::from_millis(self.migration_retry_backoff_ms)
    }

    /// Whether the query cache is on (it is unless turned off).
    pub fn caching(&self) -> bool {
        self.enable_caching != Some(false)
    }

    /// The query cache's bound in bytes.
    pub fn cache_max_bytes(&self) -> u64 {
        self.cache_max_bytes
            .unwrap_or(crate::cache::DEFAULT_CACHE_MAX_BYTES)
    }

    /// The query cache's TTL, when set.
    pub fn cache_ttl(&self) -> Option<Duration> {
        self.cache_ttl_ms.map(Duration::from_millis)
    }

    /// Whether `tenant_scoped` models are allowed (and enforced).
    pub fn multi_tenant(&self) -> bool {
        self.multi_tenant == Some(true)
    }

    /// Whether tenant-scoped tables get PostgreSQL row-level security.
    pub fn row_level_security(&self) -> bool {
        self.row_level_security == Some(true)
    }

    /// How long audit rows are kept, when set.
    pub fn audit_retention(&self) -> Option<Duration> {
        self.audit_retention_ms.map(Duration::from_millis)
    }

    /// Whether query metrics are recorded (default on).
    pub fn metrics(&self) -> bool {
        self.enable_metrics != Some(false)
    }

    /// Whether `DataFlow::health` reports (default on).
    pub fn monitoring(&self) -> bool {
        self.monitoring != Some(false)
    }

    /// The time after which a statement counts as slow, when set.
    pub fn slow_query_threshold(&self) -> Option<Duration> {
        self.slow_query_threshold.map(Duration::from_secs_f64)
    }

    /// Whether boot reads and writes the persisted model registry.
    pub fn uses_registry(&self) -> bool {
        !self.skip_registry.unwrap_or(false) && self.enable_model_persistence.unwrap_or(true)
    }

    /// Refuses options that ask for a feature this build does not have yet,
    /// so nothing is silently ignored.
    pub fn check_supported(&self) -> Result<()> {
        // Options whose features are not built yet: (asked for, option, feature).
        let pending = [(
            self.enable_schema_discovery == Some(true),
            "enable_schema_discovery = true",
            "schema discovery",
        )];
        let missing: Vec<String> = pending
            .iter()
            .filter(|(asked, ..)| *asked)
            .map(|(_, opt, feature)| format!("{opt} ({feature})"))
            .collect();
        if self.connection_pool_size == 0 {
            return Err(Error::new(
                ErrorCode::Config,
                "connection_pool_size must be at least 1",
            ));
        }
        // PostgreSQL keeps both timeouts as a 32-bit count of milliseconds.
        for (option, ms) in [
            ("migration_lock_timeout_ms", self.migration_lock_timeout_ms),
            (
                "migration_statement_timeout_ms",
                self.migration_statement_timeout_ms,
            ),
        ] {
            if ms > i32::MAX as u64 {
                return Err(Error::new(
                    ErrorCode::Config,
                    format!(
                        "{option} must be at most {} (about 24 days); 0 turns the timeout off",
                        i32::MAX
                    ),
                ));
            }
        }
        if let Some(t) = self.slow_query_threshold {
            if !(t.is_finite() && t >= 0.0) {
                return Err(Error::new(
                    ErrorCode::Config,
                    format!(
                        "slow_query_threshold must be a number of seconds, at least 0 (got {t})"
                    ),
                ));
            }
        }
        if self.row_level_security == Some(true) && self.multi_tenant != Some(true) {
            return Err(Error::new(
                ErrorCode::Config,
                "row_level_security = true needs multi_tenant = true: the policies guard tenant-scoped tables",
            ));
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorCode::NotSupported,
                format!(
                    "these options ask for features this version does not have yet: {}; remove them (see the README's configuration table)",
                    missing.join(", ")
                ),
            ))
        }
    }
}
