//! The `DataFlow` handle: boot, node lookup and execution.

use crate::backend::{AnyConnection, Conn, ConnMut, Manager, Pool, Target};
use crate::cache::{CacheStats, QueryCache};
use crate::config::Config;
use crate::context::Context;
use crate::error::{Error, ErrorCode, Result};
use crate::health::{
    CacheHealth, DatabaseHealth, HealthError, HealthReport, MigrationHealth, MigrationState,
    PoolHealth, SlowQueryHealth, WriterHealth,
};
use crate::metrics::{Metrics, MetricsCollector, SlowWatch};
use crate::migrate::{self, BootPolicy, EmbeddedMigration};
use crate::node::NodeContext;
use crate::nodes::{self, Op, Origin};
use crate::registry::{NodeRef, Registry};
use crate::rls;
use crate::schema::ModelSchema;
use crate::sql::Dialect;
use crate::writer::{self, WriteKind};
use serde_json::Value;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Runs `$body` with `$c` bound to the backend connection inside `$conn`
/// (a `&mut AnyConnection` or a [`ConnMut`]).
macro_rules! on_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $crate::backend::ConnMut::from($conn) {
            $crate::backend::ConnMut::Sqlite($c) => $body,
            $crate::backend::ConnMut::Postgresql($c) => $body,
        }
    };
}
pub(crate) use on_conn;

/// How deeply a model node's input may nest JSON objects and arrays: deeper
/// input is a validation error (taken apart without recursion) instead of a
/// stack overflow that aborts the process.
pub const MAX_INPUT_DEPTH: usize = 64;

tokio::task_local! {
    /// Set while a hand-written node of a transactional run executes: its
    /// writes through the handle are refused, the same on both backends.
    static INSIDE_TRANSACTIONAL_RUN: ();
}

/// A cheap, cloneable handle to a booted database, carrying the
/// [`Context`] its calls run with ([`with_context`](Self::with_context)).
#[derive(Clone)]
pub struct DataFlow {
    inner: Arc<Inner>,
    context: Arc<Context>,
}

struct Inner {
    config: Config,
    target: Target,
    pool: Pool,
    registry: Registry,
    /// SQLite has one writer at a time: every write (node writes,
    /// transactional runs, migrations) goes through this queue and its
    /// thread (first come, first served; group commit).
    sqlite_writer: Option<crate::writer::Writer>,
    /// Query metrics, the slow-query count and the pool's waits.
    metrics: Arc<Metrics>,
    /// Keeps a shared in-memory SQLite database alive.
    _keepalive: Option<Mutex<AnyConnection>>,
    /// The query cache (`enable_caching`).
    cache: Option<Arc<QueryCache>>,
}

impl std::fmt::Debug for DataFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataFlow")
            .field("database", &self.inner.target.display())
            .field("models", &self.inner.registry.models().len())
            .field("context", &self.context)
            .finish()
    }
}

/// The connection pool at one moment (for `/metrics` and health checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolState {
    /// Open connections, busy or idle.
    pub connections: u32,
    /// Open connections not in use.
    pub idle: u32,
}

/// Builds a [`DataFlow`]; every configuration option is a method.
#[derive(Debug, Clone)]
pub struct DataFlowBuilder {
    config: Config,
    migrations: &'static [EmbeddedMigration],
    models: Option<Vec<&'static ModelSchema>>,
}

macro_rules! flag_setters {
    ($($name:ident),*) => {$(
        #[doc = concat!("Sets `", stringify!($name), "`.")]
        pub fn $name(mut self, on: bool) -> Self {
            self.config.$name = Some(on);
            self
        }
    )*};
}

impl DataFlowBuilder {
    flag_setters!(
        skip_registry,
        enable_model_persistence,
        auto_migrate,
        skip_migration,
        staging,
        enable_schema_discovery,
        enable_caching,
        enable_metrics,
        enable_audit_log,
        multi_tenant,
        monitoring
    );

    /// The most pooled connections (default 10).
    pub fn connection_pool_size(mut self, n: u32) -> Self {
        self.config.connection_pool_size = n;
        self
    }

    /// PostgreSQL: a second wall behind the tenant filter every statement
    /// carries. Tenant-scoped tables get `ENABLE` and `FORCE ROW LEVEL
    /// SECURITY` and a policy on `current_setting('dataflow.tenant')`, which
    /// the runtime sets per transaction. Needs `multi_tenant(true)`; SQLite
    /// refuses it. See the README's "Multi-tenancy" section for its cost.
    pub fn row_level_security(mut self, on: bool) -> Self {
        self.config.row_level_security = Some(on);
        self
    }

    /// The query cache's bound in bytes (default 64 MiB): the least
    /// recently and least frequently used entries are evicted past it.
    pub fn cache_max_bytes(mut self, bytes: u64) -> Self {
        self.config.cache_max_bytes = Some(bytes);
        self
    }

    /// The longest the query cache keeps a result (default: until a write
    /// invalidates it or it is evicted); a model's `cache_ttl` overrides it.
    pub fn cache_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.config.cache_ttl_ms = Some(ttl.as_millis() as u64);
        self
    }

    /// A statement slower than `threshold` emits a `tracing` WARN event
    /// (target `dataflow::slow_query`: model, operation, the SQL with its
    /// bind marks, never the values, and the duration) and counts in
    /// `dataflow_slow_queries_total{model,op}`.
    pub fn slow_query_threshold(mut self, threshold: std::time::Duration) -> Self {
        self.config.slow_query_threshold = Some(threshold.as_secs_f64());
        self
    }

    /// How long audit rows are kept: [`DataFlow::purge_audit`] (and `dataflow
    /// audit purge`) deletes rows older than this.
    pub fn audit_retention(mut self, keep: std::time::Duration) -> Self {
        self.config.audit_retention_ms = Some(keep.as_millis() as u64);
        self
    }

    /// A `tracing` event for every SQL statement (target `dataflow::sql`,
    /// INFO): its shape and bind count, never its values. Printed only
    /// where a subscriber is installed (`tracing-subscriber`).
    pub fn echo(mut self, on: bool) -> Self {
        self.config.echo = on;
        self
    }

    /// This application's id in the persisted model registry (default `"default"`).
    pub fn application_id(mut self, id: impl Into<String>) -> Self {
        self.config.application_id = id.into();
        self
    }

    /// How long to wait for a connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.config.connect_timeout_ms = timeout.as_millis() as u64;
        self
    }

    /// PostgreSQL: how long a migration statement waits for a table lock
    /// before the migration rolls back and retries (default 5 s; zero waits
    /// forever). SQLite has no such setting and ignores it.
    pub fn migration_lock_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.config.migration_lock_timeout_ms = timeout.as_millis() as u64;
        self
    }

    /// PostgreSQL: the longest one migration statement may run (default
    /// 5 min; zero is no limit). SQLite ignores it.
    pub fn migration_statement_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.config.migration_statement_timeout_ms = timeout.as_millis() as u64;
        self
    }

    /// PostgreSQL: how many more times a migration whose lock wait timed out
    /// is tried before it fails (default 3). SQLite ignores it.
    pub fn migration_lock_retries(mut self, retries: u32) -> Self {
        self.config.migration_lock_retries = retries;
        self
    }

    /// PostgreSQL: the pause before the first retry after a lock timeout,
    /// doubled before each further one (default 500 ms). SQLite ignores it.
    pub fn migration_retry_backoff(mut self, backoff: std::time::Duration) -> Self {
        self.config.migration_retry_backoff_ms = backoff.as_millis() as u64;
        self
    }

    /// Reviewed migration files (from `dataflow::embed_migrations!`), run at
    /// boot before the automatic step, recorded in the same history.
    pub fn migrations(mut self, migrations: &'static [EmbeddedMigration]) -> Self {
        self.migrations = migrations;
        self
    }

    /// Boots with exactly these models instead of every linked one (several
    /// databases in one binary, or tests of schema changes).
    pub fn models(mut self, models: &[&'static ModelSchema]) -> Self {
        self.models = Some(models.to_vec());
        self
    }

    /// Checks the models, connects (failing fast when the database is
    /// down), migrates as configured and opens a lazy pool.
    pub async fn build(self) -> Result<DataFlow> {
        DataFlow::boot_with(self.config, self.migrations, self.models).await
    }
}

impl DataFlow {
    /// Starts configuring a database at `url` (`sqlite://app.db`,
    /// `sqlite::memory:`, `postgres://user:pass@host/db`).
    pub fn builder(url: impl Into<String>) -> DataFlowBuilder {
        DataFlowBuilder {
            config: Config {
                database_url: url.into(),
                ..Config::default()
            },
            migrations: &[],
            models: None,
        }
    }

    /// Boots from a [`Config`]: checks the registry, connects once (failing
    /// fast when the server is down), creates missing tables, and opens a lazy pool.
    pub async fn from_config(config: Config) -> Result<DataFlow> {
        Self::boot_with(config, &[], None).await
    }

    async fn boot_with(
        config: Config,
        embedded: &'static [EmbeddedMigration],
        models: Option<Vec<&'static ModelSchema>>,
    ) -> Result<DataFlow> {
        config.check_supported()?;
        let registry = Registry::new(models, config.multi_tenant())?
            .with_audit(config.enable_audit_log == Some(true))?;
        let target = Target::parse(&config.database_url)?;
        if config.row_level_security() && target.dialect() != Dialect::Postgres {
            return Err(Error::new(
                ErrorCode::NotSupported,
                "row_level_security = true needs PostgreSQL: SQLite has no row-level security \
                 (every statement is still scoped to the context's tenant); turn it off for SQLite",
            ));
        }
        tokio::task::spawn_blocking(move || boot(config, target, registry, embedded))
            .await
            .map_err(|e| Error::internal(format!("boot task failed: {e}")))?
    }

    /// A handle whose calls run with `context` (its tenant, actor, roles
    /// and request id): the same pool, writer and registry, only the
    /// context differs. `execute`, [`runtime`](Self::runtime), the typed
    /// node forms and hand-written nodes' `ctx.db` all carry it.
    pub fn with_context(&self, context: Context) -> DataFlow {
        DataFlow {
            inner: self.inner.clone(),
            context: Arc::new(context),
        }
    }

    /// The context this handle's calls run with (empty for the handle
    /// [`build`](DataFlowBuilder::build) returns).
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The configuration this database was booted with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// SQLite or PostgreSQL.
    pub fn dialect(&self) -> Dialect {
        self.inner.target.dialect()
    }

    /// The registered models.
    pub fn models(&self) -> &[&'static ModelSchema] {
        self.inner.registry.models()
    }

    /// The models boot and the migration commands bring the database to:
    /// the registered models and, with the audit log on, its table.
    pub(crate) fn schema_models(&self) -> Vec<&'static ModelSchema> {
        self.inner.registry.schema_models()
    }

    /// The names of every registered node type.
    pub fn node_types(&self) -> Vec<String> {
        self.inner.registry.node_types()
    }

    /// The JSON Schema of a node's input.
    pub fn node_schema(&self, node: &str) -> Result<Value> {
        Ok(self.lookup(node)?.input_schema())
    }

    pub(crate) fn lookup(&self, node: &str) -> Result<NodeRef> {
        self.inner.registry.lookup(node)
    }

    /// Runs a node by type name with JSON parameters and returns its JSON output.
    pub async fn execute(&self, node: &str, params: Value) -> Result<Value> {
        let r = self.lookup(node)?;
        self.execute_ref(r, node, params, None).await
    }

    pub(crate) async fn execute_ref(
        &self,
        r: NodeRef,
        node_id: &str,
        params: Value,
        run_id: Option<&str>,
    ) -> Result<Value> {
        match r {
            NodeRef::Model(m, op) => {
                // A workflow's node: its audit rows name the run and the node.
                let origin = run_id.map(|r| (r.to_string(), node_id.to_string()));
                self.execute_model(m, op, params, origin).await
            }
            NodeRef::Custom(n) => {
                // Hand-written nodes get input checked against their schema, like model nodes.
                crate::json_schema::check(&n.input_schema(), &params).map_err(|e| {
                    Error::new(
                        ErrorCode::Validation,
                        format!("{node_id} ({}): invalid input: {e}", n.name()),
                    )
                    .with_node(node_id)
                })?;
                let ctx = NodeContext {
                    db: self.clone(),
                    run_id: run_id.map_or_else(crate::value::new_uuid7_text, str::to_string),
                    node_id: node_id.to_string(),
                };
                n.run(&ctx, params).await.map_err(|e| {
                    if e.node().is_none() {
                        e.with_node(node_id)
                    } else {
                        e
                    }
                })
            }
        }
    }

    pub(crate) async fn execute_op(
        &self,
        m: &'static ModelSchema,
        op: Op,
        params: Value,
    ) -> Result<Value> {
        self.execute_model(m, op, params, None).await
    }

    /// A model node; `origin` is `(run id, node id)` inside a workflow run.
    /// Inside a span (`dataflow.node`) and counted in the metrics.
    async fn execute_model(
        &self,
        m: &'static ModelSchema,
        op: Op,
        params: Value,
        origin: Option<(String, String)>,
    ) -> Result<Value> {
        let span = self.node_span(
            m,
            op,
            origin.as_ref().map(|(r, n)| (r.as_str(), n.as_str())),
        );
        let started = Instant::now();
        let out = self
            .execute_model_unobserved(m, op, params, origin)
            .instrument(span)
            .await;
        self.inner.metrics.record(m, op, started.elapsed(), &out);
        out
    }

    /// The span of one model node call: model, operation, node, and the
    /// run, tenant and request it belongs to.
    pub(crate) fn node_span(
        &self,
        m: &'static ModelSchema,
        op: Op,
        origin: Option<(&str, &str)>,
    ) -> tracing::Span {
        let c = &*self.context;
        tracing::info_span!(
            "dataflow.node",
            model = m.name,
            op = op.name(),
            run_id = origin.map(|o| o.0),
            node_id = origin.map(|o| o.1),
            tenant = c.tenant.as_deref(),
            request_id = c.request_id.as_deref(),
        )
    }

    /// Records a model node call made on a connection the caller holds (a
    /// transactional run's node).
    pub(crate) fn record_call(
        &self,
        m: &'static ModelSchema,
        op: Op,
        took: Duration,
        out: &Result<Value>,
    ) {
        self.inner.metrics.record(m, op, took, out);
    }

    async fn execute_model_unobserved(
        &self,
        m: &'static ModelSchema,
        op: Op,
        params: Value,
        origin: Option<(String, String)>,
    ) -> Result<Value> {
        if crate::value::deeper_than(&params, MAX_INPUT_DEPTH) {
            crate::value::dismantle(params);
            return Err(Error::validation(
                m.name,
                None,
                format!(
                    "the input nests deeper than {MAX_INPUT_DEPTH} levels of objects and arrays"
                ),
            )
            .in_node(crate::schema::node_name(m.name, op)));
        }
        if WriteKind::of(op).is_some() && INSIDE_TRANSACTIONAL_RUN.try_with(|_| ()).is_ok() {
            return Err(Error::new(
                ErrorCode::NotAllowed,
                "a hand-written node of a transactional workflow run cannot write through the \
                 DataFlow handle: the write would be outside the run's transaction (and on \
                 SQLite would wait for it); add the write as a model node of the run",
            )
            .with_model(m.name)
            .with_node(crate::schema::node_name(m.name, op)));
        }
        let Some(cache) = self.inner.cache.clone() else {
            return self.dispatch_model(m, op, params, origin).await;
        };
        if WriteKind::of(op).is_some() {
            // Invalidated after the write answered (committed or failed) and
            // before the caller has the answer. The write runs as a task of
            // its own, so a caller that stops waiting (a dropped request)
            // cannot skip the invalidation of a write that still commits.
            let db = self.clone();
            let write = tokio::spawn(async move {
                let out = db.dispatch_model(m, op, params, origin).await;
                cache.invalidate_written(m);
                out
            });
            return write
                .await
                .map_err(|e| Error::internal(format!("node task failed: {e}")))?;
        }
        // Reads of a hand-written node inside a transactional run see the
        // run's writes only on its connection: never from the cache.
        let key = match INSIDE_TRANSACTIONAL_RUN.try_with(|_| ()) {
            Ok(()) => None,
            Err(_) => cache.key(m, op, &self.context, &params),
        };
        let Some(key) = key else {
            return self.dispatch_model(m, op, params, origin).await;
        };
        if let Some(hit) = cache.get(&key) {
            return Ok(hit);
        }
        let generation = cache.generation(&key);
        let out = self.dispatch_model(m, op, params, origin).await;
        if let Ok(v) = &out {
            cache.put(key, generation, v);
        }
        out
    }

    /// A model node on this process's connections, without the cache.
    async fn dispatch_model(
        &self,
        m: &'static ModelSchema,
        op: Op,
        params: Value,
        origin: Option<(String, String)>,
    ) -> Result<Value> {
        if let Some(writer) = &self.inner.sqlite_writer {
            if let Some(kind) = WriteKind::of(op) {
                let db = self.clone();
                return writer
                    .write(kind, move |c| {
                        db.run_model_on(c, m, op, params, origin_of(&origin))
                    })
                    .await;
            }
            // Reads that would wait for a connection go to a blocking thread.
            if writer::reads_inline(op) {
                if let Some(mut conn) = self.inner.pool.try_get() {
                    return self.run_model_on_any(&mut conn, m, op, params, origin_of(&origin));
                }
            }
        }
        let db = self.clone();
        tokio::task::spawn_blocking(move || {
            if WriteKind::of(op).is_none() && db.dialect() == Dialect::Postgres {
                // A read can run again: once more on another connection
                // when the server had ended this one (a restart, a failover).
                db.pooled(true, |c| {
                    db.run_model_on_any(c, m, op, params.clone(), origin_of(&origin))
                })
            } else {
                let mut params = Some(params);
                db.pooled(false, |c| {
                    let params = params.take().expect("runs once without retry");
                    db.run_model_on_any(c, m, op, params, origin_of(&origin))
                })
            }
        })
        .await
        .map_err(|e| Error::internal(format!("node task failed: {e}")))?
    }

    /// Runs `f` on a pooled connection on this thread. A connection that `f`
    /// found dead is closed instead of going back to the pool; with `retry`
    /// (only for work a second run cannot repeat: reads) `f` then runs once
    /// more, on another connection, which the pool checks before handing it
    /// out. A write is never retried: it may have been applied before the
    /// connection died, and nothing proves it was not.
    fn pooled<T>(
        &self,
        retry: bool,
        mut f: impl FnMut(&mut AnyConnection) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.checkout()?;
        let out = f(&mut conn);
        if !(conn.note(&out) && retry) {
            return out;
        }
        drop(conn);
        let mut conn = self.checkout()?;
        let out = f(&mut conn);
        conn.note(&out);
        out
    }

    /// A pooled connection, counted in the pool's waiting gauge while it
    /// is awaited and in its timeouts when none came in time.
    fn checkout(&self) -> Result<r2d2::PooledConnection<Manager>> {
        let metrics = &self.inner.metrics;
        metrics.pool_waiting.inc();
        let conn = self.inner.pool.get();
        metrics.pool_waiting.dec();
        conn.map_err(|e| {
            metrics.pool_timeouts.inc();
            Error::from(e)
        })
    }

    fn run_model_on_any(
        &self,
        conn: &mut AnyConnection,
        m: &'static ModelSchema,
        op: Op,
        params: Value,
        origin: Origin<'_>,
    ) -> Result<Value> {
        match conn {
            AnyConnection::Sqlite(c) => self.run_model_on(c, m, op, params, origin),
            AnyConnection::Postgresql(c) => self.run_model_on(c, m, op, params, origin),
        }
    }

    /// A model node on a backend connection the caller holds; `origin`
    /// names the workflow run and node it belongs to, if any.
    pub(crate) fn run_model_on<C: Conn>(
        &self,
        conn: &mut C,
        m: &'static ModelSchema,
        op: Op,
        params: Value,
        origin: Origin<'_>,
    ) -> Result<Value> {
        let prepared = self.inner.registry.prepared(m);
        let ctx = nodes::Ctx {
            audited: m.audited(self.inner.config.enable_audit_log == Some(true)),
            slow: self
                .inner
                .config
                .slow_query_threshold()
                .map(|threshold| SlowWatch {
                    threshold,
                    metrics: &self.inner.metrics,
                    op: op.name(),
                }),
            origin,
            ..nodes::Ctx::new(
                m,
                &prepared.nodes[op as usize],
                &prepared.columns,
                self.inner.config.echo,
                &self.context,
            )
        };
        if C::DIALECT == Dialect::Postgres
            && m.options.tenant_scoped
            && self.inner.config.row_level_security()
        {
            if let Some(scope) = rls::Scope::of(&self.context, op) {
                return conn.write_transaction(|c| {
                    rls::set(c, &scope)?;
                    nodes::run(c, &ctx, op, params)
                });
            }
        }
        nodes::run(conn, &ctx, op, params)
    }

    pub(crate) fn execute_ref_blocking_custom(
        &self,
        r: NodeRef,
        node_id: &str,
        params: &Value,
        run_id: &str,
    ) -> Result<Value> {
        let node = self.execute_ref(r, node_id, params.clone(), Some(run_id));
        tokio::runtime::Handle::try_current()
            .map_err(|_| Error::internal("hand-written nodes need a tokio runtime"))?
            .block_on(INSIDE_TRANSACTIONAL_RUN.scope((), node))
    }

    /// Runs `f` with this process's write access to the database: on SQLite
    /// as one [`WriteKind::Transaction`] of the writer thread (in queue
    /// order with every other write, so nothing waits in SQLite's busy
    /// handler), on PostgreSQL on a pooled connection on the blocking pool.
    /// `f` may drive hand-written nodes: the caller's tokio runtime is
    /// entered on the thread that runs it.
    pub(crate) async fn exclusive<T: Send + 'static>(
        &self,
        f: impl FnOnce(&DataFlow, ConnMut<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.clone();
        let runtime = tokio::runtime::Handle::current();
        match &self.inner.sqlite_writer {
            Some(writer) => {
                writer
                    .write(WriteKind::Transaction, move |c| {
                        let _entered = runtime.enter();
                        f(&db, ConnMut::Sqlite(c))
                    })
                    .await
            }
            None => self.blocking(move |db, conn| f(db, conn.into())).await,
        }
    }

    /// Runs `f` on a pooled connection on the blocking pool.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&DataFlow, &mut AnyConnection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut f = Some(f);
            db.pooled(false, |c| {
                f.take().expect("runs once without retry")(&db, c)
            })
        })
        .await
        .map_err(|e| Error::internal(format!("task failed: {e}")))?
    }

    /// The database this handle was booted on.
    pub(crate) fn target(&self) -> &Target {
        &self.inner.target
    }

    /// Opens a database for tools that work from the persisted registry
    /// alone (`dataflow models`, `dataflow migrate status`): no models
    /// needed, no schema step.
    pub async fn open_for_tools(url: &str) -> Result<DataFlow> {
        let config = Config {
            database_url: url.into(),
            skip_migration: Some(true),
            ..Config::default()
        };
        let target = Target::parse(&config.database_url)?;
        tokio::task::spawn_blocking(move || boot(config, target, Registry::empty(), &[]))
            .await
            .map_err(|e| Error::internal(format!("boot task failed: {e}")))?
    }

    /// The query metrics as Prometheus text (version 0.0.4): calls, errors
    /// by code, latency and rows per model × operation, the pool, the
    /// SQLite writer, migrations, slow queries and the query cache. Empty
    /// with `enable_metrics(false)`. See the README's "Metrics and
    /// monitoring" section for the families.
    pub fn metrics(&self) -> String {
        self.metrics_collector().text()
    }

    /// The same families as a `prometheus` collector, to register in an
    /// application's own registry (nexus does: one scrape of `/metrics`).
    pub fn metrics_collector(&self) -> MetricsCollector {
        MetricsCollector(self.inner.metrics.clone())
    }

    /// The health report (`monitoring`, on by default): whether the
    /// database answers, the pool's saturation, recent slow queries, lock
    /// waits, the cache's hit ratio, the migration state and the SQLite
    /// writer's queue. `ready` is what nexus `/ready` answers: the
    /// database answers and no migration is blocked. With
    /// `monitoring(false)` it fails with `not_supported`.
    pub async fn health(&self) -> Result<HealthReport> {
        let config = &self.inner.config;
        if !config.monitoring() {
            return Err(Error::new(
                ErrorCode::NotSupported,
                "monitoring is off: the health report needs monitoring(true) (the default)",
            ));
        }
        let ping = self.execute_ping().await;
        let (migrations, lock_waits) = match &ping {
            Ok(()) => {
                let db = self.clone();
                tokio::task::spawn_blocking(move || db.pooled(true, |c| db.probe(c)))
                    .await
                    .map_err(|e| Error::internal(format!("task failed: {e}")))??
            }
            Err(_) => (
                MigrationHealth {
                    state: MigrationState::Unknown,
                    applied: self.inner.metrics.migrations_applied.get(),
                    detail: None,
                },
                0,
            ),
        };
        let live = self.live();
        let metrics = &self.inner.metrics;
        let in_use = live.connections.saturating_sub(live.idle);
        let writer_queue = live.writer_queue.map(|d| d as u64);
        let report = HealthReport {
            ready: ping.is_ok() && migrations.state != MigrationState::Blocked,
            database: DatabaseHealth {
                dialect: match self.dialect() {
                    Dialect::Sqlite => "sqlite",
                    Dialect::Postgres => "postgres",
                },
                answers: ping.is_ok(),
                error: ping.err().map(|e| HealthError {
                    code: e.code().as_str(),
                    message: e.message().to_string(),
                }),
            },
            pool: PoolHealth {
                size: live.pool_size,
                connections: live.connections,
                idle: live.idle,
                in_use,
                waiting: metrics.pool_waiting.get().max(0) as u64,
                timeouts: metrics.pool_timeouts.get(),
                saturation: f64::from(in_use) / f64::from(live.pool_size.max(1)),
            },
            slow_queries: SlowQueryHealth {
                threshold_ms: config.slow_query_threshold().map(|t| t.as_secs_f64() * 1e3),
                window_seconds: crate::metrics::SLOW_WINDOW.as_secs(),
                recent: metrics.recent_slow(crate::metrics::SLOW_WINDOW),
                total: metrics.slow_total(),
            },
            lock_waits: lock_waits + writer_queue.unwrap_or(0),
            cache: self.cache_health(&live.cache),
            migrations,
            writer: writer_queue.map(|queue_depth| WriterHealth { queue_depth }),
        };
        Ok(report)
    }

    /// The health report's database side: the migration state and, on
    /// PostgreSQL, the sessions of this database waiting for a lock.
    fn probe(&self, conn: &mut AnyConnection) -> Result<(MigrationHealth, u64)> {
        let config = &self.inner.config;
        let applied = self.inner.metrics.migrations_applied.get();
        let models = self.schema_models();
        let checked = config.uses_registry() && !config.skip_migration.unwrap_or(false);
        let (state, detail) = if !checked {
            (MigrationState::Unchecked, None)
        } else {
            let schema = migrate::SchemaOptions::from_config(config);
            let app = &config.application_id;
            let matches =
                on_conn!(&mut *conn, c => migrate::registry_matches(c, app, &models, &schema))?;
            if matches {
                (MigrationState::Current, None)
            } else {
                let timeouts = migrate::Timeouts::from_config(config);
                let plan = on_conn!(&mut *conn, c => migrate::plan_for(c, &models, app, &timeouts, &schema))?;
                // Only what these models need blocks them: a column or index
                // they do not ask for (a newer version migrated during a
                // rolling deploy) leaves this instance able to serve.
                let needed: Vec<&str> = plan
                    .operations
                    .iter()
                    .filter(|o| blocks(o.kind))
                    .map(|o| o.summary.as_str())
                    .collect();
                match (needed.is_empty(), plan.is_empty()) {
                    (_, true) => (MigrationState::Current, None),
                    (true, false) => (
                        MigrationState::Current,
                        Some(format!(
                            "the database has {} difference(s) these models do not need (another \
                             version's schema?); `dataflow migrate plan` lists them",
                            plan.operations.len()
                        )),
                    ),
                    (false, false) => (
                        MigrationState::Blocked,
                        Some(format!(
                            "{} schema change(s) the models need are not applied ({}; highest risk \
                             of the plan: {}); review them with `dataflow migrate plan`, apply with \
                             `dataflow migrate apply`",
                            needed.len(),
                            needed.iter().take(3).copied().collect::<Vec<_>>().join("; "),
                            plan.risk().as_str()
                        )),
                    ),
                }
            }
        };
        self.inner
            .metrics
            .migrations_blocked
            .set(i64::from(state == MigrationState::Blocked));
        let lock_waits = match conn {
            AnyConnection::Postgresql(c) => {
                let rows = migrate::query(
                    c,
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    vec![],
                )?;
                match rows.first().and_then(|r| r.first()) {
                    Some(crate::value::Cell::I64(n)) => (*n).max(0) as u64,
                    _ => 0,
                }
            }
            AnyConnection::Sqlite(_) => 0,
        };
        Ok((
            MigrationHealth {
                state,
                applied,
                detail,
            },
            lock_waits,
        ))
    }

    /// Values read when metrics are scraped or health is asked.
    fn live(&self) -> crate::metrics::Live {
        live_of(&self.inner)
    }

    /// The cache part of the health report: `None` with the cache off.
    fn cache_health(&self, c: &crate::metrics::CacheCounters) -> Option<CacheHealth> {
        self.inner.cache.as_ref()?;
        let lookups = c.hits + c.misses;
        Some(CacheHealth {
            hits: c.hits,
            misses: c.misses,
            hit_ratio: (lookups > 0).then(|| c.hits as f64 / lookups as f64),
            entries: c.entries,
            bytes: c.bytes,
        })
    }

    /// The metrics of this database (for the migration commands).
    pub(crate) fn metrics_handle(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Connections the pool holds, and how many of them are idle.
    pub fn pool_state(&self) -> PoolState {
        let s = self.inner.pool.state();
        PoolState {
            connections: s.connections,
            idle: s.idle_connections,
        }
    }

    /// Whether the database can serve requests (`/ready`): a round trip on
    /// a pooled connection (one the server had ended is dropped and the
    /// round trip tried once more, so a pool that cannot reach the database
    /// fails and one that recovered passes), and on SQLite whether the
    /// database can take writes: not read-only, not full (its disk, or its
    /// page limit). Failures are `connection` errors (503 over HTTP).
    pub async fn execute_ping(&self) -> Result<()> {
        let db = self.clone();
        tokio::task::spawn_blocking(move || {
            db.pooled(true, |conn| {
                diesel::connection::SimpleConnection::batch_execute(conn, "SELECT 1").map_err(|e| {
                    Error::new(
                        ErrorCode::Connection,
                        format!("the database does not answer: {}", e.to_string().trim_end()),
                    )
                })
            })
        })
        .await
        .map_err(|e| Error::internal(format!("task failed: {e}")))??;
        match &self.inner.sqlite_writer {
            Some(writer) => writer.check_writable().await,
            None => Ok(()),
        }
    }

    /// The query cache's counters and size (all zero with the cache off).
    /// Cheap: counters, and the cache's pending bookkeeping done first so
    /// `bytes` and `entries` are current.
    pub fn cache_stats(&self) -> CacheStats {
        self.inner
            .cache
            .as_ref()
            .map_or_else(CacheStats::default, |c| c.stats())
    }

    /// Drops the query cache's entries of `model` (a model name, e.g.
    /// `"User"`), or every entry with `None`. An unknown model is
    /// `not_found`; with the cache off it does nothing.
    pub fn cache_clear(&self, model: Option<&str>) -> Result<()> {
        let Some(cache) = &self.inner.cache else {
            return Ok(());
        };
        let m = match model {
            None => None,
            Some(name) => Some(
                self.models()
                    .iter()
                    .copied()
                    .find(|m| m.name == name)
                    .ok_or_else(|| {
                        Error::new(ErrorCode::NotFound, format!("no model named `{name}`"))
                            .with_model(name)
                    })?,
            ),
        };
        cache.clear(m)
    }

    /// After a change this process made outside the model nodes (a
    /// transactional workflow run, a migration): `models`' cached results
    /// are stale (every model's with `None`). Called after the commit,
    /// before the change's answer is returned.
    pub(crate) fn invalidate_cache(&self, models: Option<&[&'static ModelSchema]>) {
        if let Some(cache) = &self.inner.cache {
            match models {
                None => cache.invalidate_all(),
                Some(ms) => ms.iter().for_each(|m| cache.invalidate(m)),
            }
        }
    }

    /// A pooled connection, for tools and tests that need raw SQL. An
    /// escape hatch: a write through it bypasses the SQLite writer (it may
    /// wait in SQLite's busy handler) and the registry.
    #[doc(hidden)]
    pub fn connection(&self) -> Result<r2d2::PooledConnection<Manager>> {
        Ok(self.inner.pool.get()?)
    }
}

/// The [`Origin`] of an owned `(run id, node id)`.
fn origin_of(origin: &Option<(String, String)>) -> Origin<'_> {
    match origin {
        Some((run, node)) => Origin {
            run_id: Some(run),
            node_id: Some(node),
        },
        None => Origin::default(),
    }
}

fn boot(
    config: Config,
    target: Target,
    registry: Registry,
    embedded: &'static [EmbeddedMigration],
) -> Result<DataFlow> {
    let schema_models = registry.schema_models();
    let models = schema_models.as_slice();
    let mut conn = target.connect(config.connect_timeout())?;
    if config.row_level_security() {
        on_conn!(&mut conn, c => rls::check_role(c))?;
    }
    let mut boot_outcome = migrate::BootOutcome::default();
    if !config.skip_migration.unwrap_or(false) {
        let policy = BootPolicy {
            app: config.application_id.clone(),
            registry: config.uses_registry(),
            auto_apply: config.auto_migrate.unwrap_or(true),
            staging: config.staging.unwrap_or(false),
            applied_by: migrate::applied_by(),
            embedded,
            timeouts: migrate::Timeouts::from_config(&config),
            schema: migrate::SchemaOptions::for_boot(&config),
        };
        // Nothing changed ⇒ this one query is the whole schema step.
        let unchanged = embedded.is_empty()
            && policy.registry
            && on_conn!(&mut conn, c => migrate::registry_matches(c, &policy.app, models, &policy.schema))?;
        if !unchanged {
            on_conn!(&mut conn, c => migrate::check_server(c, models))?;
            boot_outcome = on_conn!(&mut conn, c => migrate::boot_migrate(c, &target, config.connect_timeout(), models, &policy))?;
        }
    }
    let memory = matches!(target, Target::Sqlite { memory: true, .. });
    // PostgreSQL with the query cache: this instance's mark on its writes'
    // notifications.
    let origin = (config.caching() && target.dialect() == Dialect::Postgres)
        .then(crate::value::new_uuid7_text);
    let sqlite = target.dialect() == Dialect::Sqlite;
    let pool = r2d2::Pool::builder()
        // A shared-cache in-memory database locks whole tables between its
        // connections (SQLITE_LOCKED, which no busy timeout waits out): one
        // connection serializes its users instead.
        .max_size(if memory {
            1
        } else {
            config.connection_pool_size
        })
        .min_idle(Some(0))
        // PostgreSQL: `Manager::is_valid` checks only a connection that sat
        // idle or may have died with another one; a SQLite file has no
        // server to lose.
        .test_on_check_out(!sqlite)
        .connection_timeout(config.connect_timeout())
        .build_unchecked(
            Manager::new(target.clone(), config.connect_timeout()).with_origin(origin.clone()),
        );
    let metrics = Arc::new(Metrics::new(config.metrics(), registry.models()));
    metrics.migrations_applied.inc_by(boot_outcome.applied);
    metrics
        .migrations_blocked
        .set(i64::from(boot_outcome.pending));
    let sqlite_writer = match sqlite {
        true => {
            let writer =
                crate::writer::Writer::start(pool.clone(), &target, config.connect_timeout())?;
            if config.metrics() {
                writer.observe_batches(metrics.writer_batch.clone());
            }
            Some(writer)
        }
        false => None,
    };
    let cache = match config.caching() {
        true => {
            let cache = QueryCache::new(
                registry.models(),
                config.cache_max_bytes(),
                config.cache_ttl(),
                &target,
                config.connect_timeout(),
            )?;
            if target.dialect() == Dialect::Postgres {
                let origin = origin.clone().unwrap_or_default();
                crate::cache::listen(
                    &cache,
                    &config.database_url,
                    origin,
                    config.connect_timeout(),
                )?;
            }
            Some(cache)
        }
        false => None,
    };
    let inner = Arc::new(Inner {
        config,
        target,
        pool,
        sqlite_writer,
        registry,
        metrics,
        _keepalive: memory.then(|| Mutex::new(conn)),
        cache,
    });
    // Scrape-time values come from the handle; a weak reference, so the
    // metrics do not keep the database alive.
    let weak: Weak<Inner> = Arc::downgrade(&inner);
    inner.metrics.set_live(Box::new(move || {
        weak.upgrade().map(|i| live_of(&i)).unwrap_or_default()
    }));
    Ok(DataFlow {
        context: Arc::new(Context::new()),
        inner,
    })
}

/// Whether a planned operation is something the models need to work (a
/// table, a column, a type, a constraint they rely on), rather than
/// something the database has beyond them.
fn blocks(kind: migrate::OpKind) -> bool {
    use migrate::OpKind as K;
    matches!(
        kind,
        K::CreateTable
            | K::AddColumn
            | K::RenameColumn
            | K::AlterColumnType
            | K::AddUnique
            | K::AddForeignKey
            | K::RebuildTable
            | K::AlterPrimaryKey
            | K::EnableRowLevelSecurity
            | K::AddTrigger
    )
}

/// The pool, the writer queue and the cache, read now.
fn live_of(inner: &Inner) -> crate::metrics::Live {
    let state = inner.pool.state();
    crate::metrics::Live {
        pool_size: inner.pool.max_size(),
        connections: state.connections,
        idle: state.idle_connections,
        writer_queue: inner.sqlite_writer.as_ref().map(|w| w.queue_depth()),
        cache: inner
            .cache
            .as_ref()
            .map(|c| {
                let s = c.stats();
                crate::metrics::CacheCounters {
                    hits: s.hits,
                    misses: s.misses,
                    // Entries moka dropped: for room, and past their TTL.
                    evictions: s.evictions + s.expirations,
                    invalidations: s.invalidations,
                    bytes: s.bytes,
                    entries: s.entries,
                }
            })
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // This crate's own test binary declares no models.
    #[tokio::test]
    async fn boot_without_models_explains_how_to_link_them() {
        let err = DataFlow::builder("sqlite::memory:")
            .build()
            .await
            .unwrap_err();
        assert_eq!(err.code(), "config");
        assert!(err.message().contains("use my_models as _;"), "{err}");
    }
}
