//! The `DataFlow` handle: boot, node lookup and execution.

use crate::backend::{AnyConnection, Conn, Manager, Pool, Target};
use crate::config::Config;
use crate::error::{Error, ErrorCode, Result};
use crate::migrate::{self, BootPolicy, EmbeddedMigration, Migrations};
use crate::node::{Node, NodeContext, BUILTINS, NODES};
use crate::nodes::{self, Op};
use crate::schema::ModelSchema;
use crate::sql::Dialect;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Runs `$body` with `$c` bound to the backend connection inside `$conn`.
macro_rules! on_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            AnyConnection::Sqlite($c) => $body,
            AnyConnection::Postgresql($c) => $body,
        }
    };
}
pub(crate) use on_conn;

/// The compiled model registry, filled by `#[dataflow::model]` at link time.
#[linkme::distributed_slice]
pub static MODELS: [&'static ModelSchema];

/// A registered node type: a model's generated node or a hand-written one.
#[derive(Clone, Copy)]
pub(crate) enum NodeRef {
    Model(&'static ModelSchema, Op),
    Custom(&'static dyn Node),
}

impl NodeRef {
    pub(crate) fn input_schema(self) -> Value {
        match self {
            NodeRef::Model(m, op) => nodes::input_schema(m, op),
            NodeRef::Custom(n) => n.input_schema(),
        }
    }

    pub(crate) fn joins_any(self) -> bool {
        matches!(self, NodeRef::Custom(n) if n.joins_any())
    }
}

/// What every run of a model's nodes needs, built once at boot.
struct Prepared {
    schema: &'static ModelSchema,
    /// Node type names, indexed by `Op as usize`.
    nodes: Vec<String>,
    columns: String,
}

impl Prepared {
    fn new(m: &'static ModelSchema) -> Self {
        Prepared {
            schema: m,
            nodes: m.node_names().map(|(n, _)| n).collect(),
            columns: crate::sql::columns(m),
        }
    }
}

/// A cheap, cloneable handle to a booted database.
#[derive(Clone)]
pub struct DataFlow {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    target: Target,
    pool: Pool,
    models: Vec<&'static ModelSchema>,
    nodes: HashMap<String, NodeRef>,
    prepared: HashMap<&'static str, Prepared>,
    /// SQLite has one writer at a time: every model write goes through this
    /// queue and its thread (first come, first served; group commit).
    sqlite_writer: Option<crate::writer::Writer>,
    /// Keeps a shared in-memory SQLite database alive.
    _keepalive: Option<Mutex<AnyConnection>>,
}

impl std::fmt::Debug for DataFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataFlow")
            .field("database", &self.inner.target.display())
            .field("models", &self.inner.models.len())
            .finish()
    }
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

    pub fn connection_pool_size(mut self, n: u32) -> Self {
        self.config.connection_pool_size = n;
        self
    }

    pub fn slow_query_threshold(mut self, seconds: f64) -> Self {
        self.config.slow_query_threshold = Some(seconds);
        self
    }

    pub fn echo(mut self, on: bool) -> Self {
        self.config.echo = on;
        self
    }

    pub fn application_id(mut self, id: impl Into<String>) -> Self {
        self.config.application_id = id.into();
        self
    }

    pub fn connect_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.config.connect_timeout_ms = timeout.as_millis() as u64;
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
        let models = registry(models.unwrap_or_else(|| MODELS.to_vec()))?;
        let target = Target::parse(&config.database_url)?;
        let nodes = node_table(&models)?;
        tokio::task::spawn_blocking(move || boot(config, target, models, nodes, embedded))
            .await
            .map_err(|e| Error::internal(format!("boot task failed: {e}")))?
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn dialect(&self) -> Dialect {
        self.inner.target.dialect()
    }

    /// The registered models.
    pub fn models(&self) -> &[&'static ModelSchema] {
        &self.inner.models
    }

    /// The names of every registered node type.
    pub fn node_types(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.nodes.keys().cloned().collect();
        names.sort();
        names
    }

    /// The JSON Schema of a node's input.
    pub fn node_schema(&self, node: &str) -> Result<Value> {
        Ok(self.lookup(node)?.input_schema())
    }

    pub(crate) fn lookup(&self, node: &str) -> Result<NodeRef> {
        match self.inner.nodes.get(node) {
            Some(r) => Ok(*r),
            None => {
                let hint =
                    crate::value::did_you_mean(node, self.inner.nodes.keys().map(String::as_str));
                Err(Error::new(
                    ErrorCode::UnknownNode,
                    format!("unknown node type `{node}`{hint}"),
                )
                .with_node(node))
            }
        }
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
            NodeRef::Model(m, op) => self.execute_op(m, op, params).await,
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
                    run_id: run_id.map_or_else(crate::workflow::new_run_id, str::to_string),
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
        let writes = !matches!(op, Op::Read | Op::List | Op::Count);
        if let Some(writer) = &self.inner.sqlite_writer {
            if writes {
                let db = self.clone();
                let short = matches!(op, Op::Create | Op::Update | Op::Upsert);
                return writer
                    .write(short, move |c| db.run_model_on(c, m, op, params))
                    .await;
            }
            // A read by id takes microseconds: with a pooled connection free
            // right now it runs here, saving the two thread hand-offs of a
            // blocking task. Lists and counts, which can run long, and reads
            // that would wait for a connection go to a blocking thread.
            if op == Op::Read {
                if let Some(mut conn) = self.inner.pool.try_get() {
                    return self.run_model_on_any(&mut conn, m, op, params);
                }
            }
        }
        let db = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = db.inner.pool.get()?;
            db.run_model_on_any(&mut conn, m, op, params)
        })
        .await
        .map_err(|e| Error::internal(format!("node task failed: {e}")))?
    }

    /// Runs a node synchronously on a connection the caller holds (the
    /// building block of transactional workflows). Call it from a blocking
    /// thread: hand-written nodes are driven on the current tokio runtime.
    pub fn execute_blocking(
        &self,
        conn: &mut AnyConnection,
        node: &str,
        params: &Value,
    ) -> Result<Value> {
        match self.lookup(node)? {
            NodeRef::Model(m, op) => self.run_model_on_any(conn, m, op, params.clone()),
            r @ NodeRef::Custom(_) => {
                self.execute_ref_blocking_custom(r, node, params, &crate::workflow::new_run_id())
            }
        }
    }

    fn run_model_on_any(
        &self,
        conn: &mut AnyConnection,
        m: &'static ModelSchema,
        op: Op,
        params: Value,
    ) -> Result<Value> {
        match conn {
            AnyConnection::Sqlite(c) => self.run_model_on(c, m, op, params),
            AnyConnection::Postgresql(c) => self.run_model_on(c, m, op, params),
        }
    }

    /// A model node on a backend connection the caller holds.
    pub(crate) fn run_model_on<C: Conn>(
        &self,
        conn: &mut C,
        m: &'static ModelSchema,
        op: Op,
        params: Value,
    ) -> Result<Value> {
        // Names and column lists are prepared at boot; a model this database
        // was not booted with (a typed node of another model) gets them made here.
        let made;
        let prepared = match self.inner.prepared.get(m.name) {
            Some(p) if std::ptr::eq(p.schema, m) => p,
            _ => {
                made = Prepared::new(m);
                &made
            }
        };
        let ctx = nodes::ops_ctx(
            m,
            &prepared.nodes[op as usize],
            &prepared.columns,
            self.inner.config.echo,
        );
        nodes::run(conn, &ctx, op, params)
    }

    pub(crate) fn execute_ref_blocking_custom(
        &self,
        r: NodeRef,
        node_id: &str,
        params: &Value,
        run_id: &str,
    ) -> Result<Value> {
        tokio::runtime::Handle::try_current()
            .map_err(|_| Error::internal("hand-written nodes need a tokio runtime"))?
            .block_on(self.execute_ref(r, node_id, params.clone(), Some(run_id)))
    }

    /// Runs `f` on a pooled connection on the blocking pool.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&DataFlow, &mut AnyConnection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = db.inner.pool.get()?;
            f(&db, &mut conn)
        })
        .await
        .map_err(|e| Error::internal(format!("task failed: {e}")))?
    }

    /// [`blocking`](Self::blocking) for work that writes outside the node
    /// paths (migrations); the one place to route it through the SQLite writer.
    pub(crate) async fn blocking_write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&DataFlow, &mut AnyConnection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.blocking(f).await
    }

    /// The database this handle was booted on.
    pub(crate) fn target(&self) -> &Target {
        &self.inner.target
    }

    /// Plan, apply, stage, roll back and inspect schema migrations.
    ///
    /// ```no_run
    /// # async fn f(db: dataflow::DataFlow) -> dataflow::Result<()> {
    /// use dataflow::migrate::{ApplyRequest, Rule};
    /// let plan = db.migrations().plan().await?;
    /// if !plan.is_empty() {
    ///     let req = ApplyRequest::new().allow_all(plan.rules()).reason("reviewed in PR 42");
    ///     db.migrations().apply(req).await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn migrations(&self) -> Migrations<'_> {
        Migrations::new(self)
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
        tokio::task::spawn_blocking(move || boot(config, target, Vec::new(), HashMap::new(), &[]))
            .await
            .map_err(|e| Error::internal(format!("boot task failed: {e}")))?
    }

    /// Connections the pool holds, and how many of them are idle.
    pub fn pool_state(&self) -> (u32, u32) {
        let s = self.inner.pool.state();
        (s.connections, s.idle_connections)
    }

    /// Whether the database answers (`/ready`): one pooled round trip.
    pub async fn execute_ping(&self) -> Result<()> {
        self.blocking(|_, conn| {
            diesel::connection::SimpleConnection::batch_execute(conn, "SELECT 1").map_err(|e| {
                Error::new(
                    ErrorCode::Connection,
                    format!("the database does not answer: {e}"),
                )
            })
        })
        .await
    }

    /// A pooled connection, for [`DataFlow::execute_blocking`].
    pub fn connection(&self) -> Result<r2d2::PooledConnection<Manager>> {
        Ok(self.inner.pool.get()?)
    }
}

/// The compiled registry, checked: not empty, no duplicate names or tables.
fn registry(mut models: Vec<&'static ModelSchema>) -> Result<Vec<&'static ModelSchema>> {
    if models.is_empty() {
        return Err(Error::new(
            ErrorCode::Config,
            "no models are registered: declare structs with #[dataflow::model], and if they live in another crate \
             that this binary never names, link it with `use my_models as _;`",
        ));
    }
    models.sort_by_key(|m| m.name);
    for pair in models.windows(2) {
        if pair[0].name == pair[1].name {
            return Err(Error::new(
                ErrorCode::Config,
                format!(
                    "two models are named `{}`; model names must be unique",
                    pair[0].name
                ),
            ));
        }
    }
    let mut tables: HashMap<&str, &str> = HashMap::new();
    for m in &models {
        if let Some(other) = tables.insert(m.table, m.name) {
            return Err(Error::new(
                ErrorCode::Config,
                format!("models `{other}` and `{}` both use the table `{}`; set #[dataflow::model(table = \"...\")]", m.name, m.table),
            ));
        }
        for f in m.fields {
            if let Some(fk) = f.references {
                let Some(target) = models.iter().find(|t| t.name == fk.model) else {
                    return Err(Error::new(
                        ErrorCode::Config,
                        format!(
                            "{}.{} references `{}`, which is not a registered model",
                            m.name, f.name, fk.model
                        ),
                    ));
                };
                let pk = target.primary_key();
                let compatible = pk.ty == f.ty || (pk.ty.is_integer() && f.ty.is_integer());
                if !compatible {
                    return Err(Error::new(
                        ErrorCode::Config,
                        format!(
                            "{}.{} is {:?} but references {}.{} which is {:?}",
                            m.name, f.name, f.ty, target.name, pk.name, pk.ty
                        ),
                    ));
                }
            }
        }
        let unsupported = [
            (m.options.tenant_scoped, "tenant_scoped (multi-tenancy)"),
            (m.options.audit, "audit (the audit log)"),
            (
                m.options.cache_ttl_ms.is_some(),
                "cache_ttl (the query cache)",
            ),
        ];
        if let Some((_, what)) = unsupported.iter().find(|(on, _)| *on) {
            return Err(Error::new(
                ErrorCode::NotSupported,
                format!(
                    "model `{}` sets {what}, a feature this version does not have yet",
                    m.name
                ),
            ));
        }
    }
    Ok(models)
}

/// Every node type by name: eleven per model, then the hand-written ones.
fn node_table(models: &[&'static ModelSchema]) -> Result<HashMap<String, NodeRef>> {
    let mut nodes = HashMap::with_capacity(models.len() * Op::ALL.len() + NODES.len());
    for m in models {
        for (name, op) in m.node_names() {
            nodes.insert(name, NodeRef::Model(m, op));
        }
    }
    for n in NODES.iter().chain(BUILTINS.iter()) {
        if nodes
            .insert(n.name().to_string(), NodeRef::Custom(*n))
            .is_some()
        {
            return Err(Error::new(
                ErrorCode::Config,
                format!("two node types are named `{}`; node names must be unique (model nodes are `<Model><Op>Node`)", n.name()),
            ));
        }
    }
    Ok(nodes)
}

fn boot(
    config: Config,
    target: Target,
    models: Vec<&'static ModelSchema>,
    nodes: HashMap<String, NodeRef>,
    embedded: &'static [EmbeddedMigration],
) -> Result<DataFlow> {
    let mut conn = target.connect(config.connect_timeout())?;
    if !config.skip_migration.unwrap_or(false) {
        let policy = BootPolicy {
            app: config.application_id.clone(),
            registry: config.uses_registry(),
            auto_apply: config.auto_migrate.unwrap_or(true),
            staging: config.staging.unwrap_or(false),
            applied_by: migrate::applied_by(),
            embedded,
        };
        // Nothing changed ⇒ this one query is the whole schema step.
        let unchanged = embedded.is_empty()
            && policy.registry
            && on_conn!(&mut conn, c => migrate::registry_matches(c, &policy.app, &models))?;
        if !unchanged {
            on_conn!(&mut conn, c => migrate::boot_migrate(c, &target, config.connect_timeout(), &models, &policy))?;
        }
    }
    let memory = matches!(target, Target::Sqlite { memory: true, .. });
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
        .test_on_check_out(false)
        .connection_timeout(config.connect_timeout())
        .build_unchecked(Manager {
            target: target.clone(),
            connect_timeout: config.connect_timeout(),
        });
    let sqlite_writer = match sqlite {
        true => Some(crate::writer::Writer::start(
            pool.clone(),
            &target,
            config.connect_timeout(),
        )?),
        false => None,
    };
    Ok(DataFlow {
        inner: Arc::new(Inner {
            config,
            target,
            pool,
            prepared: models.iter().map(|m| (m.name, Prepared::new(m))).collect(),
            sqlite_writer,
            models,
            nodes,
            _keepalive: memory.then(|| Mutex::new(conn)),
        }),
    })
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
    fn passwords_are_redacted() {
        assert_eq!(
            crate::backend::redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            crate::backend::redact("postgres://u@h/db"),
            "postgres://u@h/db"
        );
    }
}
