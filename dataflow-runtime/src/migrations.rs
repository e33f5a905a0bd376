//! `db.migrations()`: what the CLI and applications do with migrations,
//! as one view of a booted [`DataFlow`] (sqlx's `Migrator` plays this role).
//! Every method runs on the blocking pool, or for the ones that write, as a
//! transaction of the SQLite writer; those take the migration lock.
//!
//! It sits above the handle (it runs through it); the migration engine in
//! `migrate/` sits below it.

use crate::dataflow::on_conn;
use crate::error::{Error, ErrorCode, Result};
use crate::migrate::{
    self, ApplyRequest, HistoryEntry, MigrationPlan, RegisteredModel, RollbackRequest,
    StagingReport,
};
use crate::DataFlow;

impl DataFlow {
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
}

/// The migrations of a booted database: returned by [`DataFlow::migrations`].
#[derive(Debug, Clone, Copy)]
pub struct Migrations<'a> {
    db: &'a DataFlow,
}

impl<'a> Migrations<'a> {
    pub(crate) fn new(db: &'a DataFlow) -> Self {
        Migrations { db }
    }

    /// The models and versions the persisted registry holds (no compiled
    /// models needed).
    pub async fn registered(&self) -> Result<Vec<RegisteredModel>> {
        self.db
            .blocking(|db, conn| {
                on_conn!(conn, c => migrate::history::registered(c, &db.config().application_id))
            })
            .await
    }

    /// What it would take to bring the database to the compiled models.
    pub async fn plan(&self) -> Result<MigrationPlan> {
        self.db
            .blocking(|db, conn| {
                let cfg = db.config();
                let timeouts = migrate::Timeouts::from_config(cfg);
                let schema = migrate::SchemaOptions::from_config(cfg);
                on_conn!(conn, c => migrate::plan_for(c, &db.schema_models(), &cfg.application_id, &timeouts, &schema))
            })
            .await
    }

    /// The migration history, oldest first.
    pub async fn history(&self) -> Result<Vec<HistoryEntry>> {
        self.db
            .blocking(|_, conn| on_conn!(conn, c => migrate::history::list(c)))
            .await
    }

    /// The plan as [`apply`](Self::apply) with `req` would make it: with
    /// `req.tenant` written into a tenant backfill.
    pub async fn plan_for(&self, req: &ApplyRequest) -> Result<MigrationPlan> {
        let tenant = backfill_tenant(req)?;
        self.db
            .blocking(move |db, conn| {
                let cfg = db.config();
                let timeouts = migrate::Timeouts::from_config(cfg);
                let schema = migrate::SchemaOptions {
                    backfill_tenant: tenant,
                    ..migrate::SchemaOptions::from_config(cfg)
                };
                on_conn!(conn, c => migrate::plan_for(c, db.models(), &cfg.application_id, &timeouts, &schema))
            })
            .await
    }

    /// Plans and applies under the migration lock. Operations above low risk
    /// need each rule they hit in `allow` and a `reason` (both recorded);
    /// turning `tenant_scoped` on for a table with rows also needs
    /// `req.tenant`, the tenant its rows are assigned to.
    /// Returns `None` when there was nothing to do.
    pub async fn apply(&self, req: ApplyRequest) -> Result<Option<HistoryEntry>> {
        let tenant = backfill_tenant(&req)?;
        self.db
            .exclusive(move |db, conn| {
                let cfg = db.config();
                let timeouts = migrate::Timeouts::from_config(cfg);
                let schema = migrate::SchemaOptions {
                    backfill_tenant: tenant,
                    ..migrate::SchemaOptions::from_config(cfg)
                };
                let out = on_conn!(conn, c => {
                    migrate::with_lock(c, db.target(), cfg.connect_timeout(), "migrate apply", |c| {
                        let plan = migrate::plan_for(c, &db.schema_models(), &cfg.application_id, &timeouts, &schema)?;
                        if plan.is_empty() {
                            return Ok(None);
                        }
                        let options = migrate::ApplyOptions {
                            app: &cfg.application_id,
                            applied_by: &migrate::applied_by(),
                            allow: &req.allow,
                            reason: req.reason.as_deref(),
                            tenant: schema.backfill_tenant.as_deref(),
                            name: "manual",
                            record_registry: cfg.uses_registry(),
                            timeouts: &timeouts,
                        };
                        migrate::apply(c, &db.schema_models(), &plan, options).map(Some)
                    })
                });
                // The schema changed: no cached result is trusted.
                db.invalidate_cache(None);
                out
            })
            .await
            .inspect(|applied| {
                if applied.is_some() {
                    let m = self.db.metrics_handle();
                    m.migrations_applied.inc();
                    m.migrations_blocked.set(0);
                }
            })
    }

    /// Undoes applied migrations, newest first: the last `steps`, or all
    /// after version `to`, recording who, when and why. Downs that drop
    /// data need `allow_data_loss` and a reason. Returns the versions undone.
    pub async fn rollback(&self, req: RollbackRequest) -> Result<Vec<String>> {
        if req.allow_data_loss && req.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
            return Err(Error::new(
                ErrorCode::MigrationBlocked,
                "--allow data_loss needs --reason \"...\"",
            ));
        }
        self.db
            .exclusive(move |db, conn| {
                let timeout = db.config().connect_timeout();
                let timeouts = migrate::Timeouts::from_config(db.config());
                let out = on_conn!(conn, c => migrate::with_lock(c, db.target(), timeout, "migrate rollback", |c| {
                    migrate::history::rollback(c, &req, &migrate::applied_by(), &timeouts)
                }));
                db.invalidate_cache(None);
                out
            })
            .await
    }

    /// `migrate apply --staging`: tries the current plan where it can be
    /// thrown away and verifies it and its down SQL.
    pub async fn stage(&self) -> Result<StagingReport> {
        self.stage_for(&ApplyRequest::new()).await
    }

    /// [`stage`](Self::stage) the plan as [`apply`](Self::apply) with `req`
    /// would make it (its backfill tenant).
    pub async fn stage_for(&self, req: &ApplyRequest) -> Result<StagingReport> {
        let tenant = backfill_tenant(req)?;
        self.db
            .blocking(move |db, conn| {
                let app = &db.config().application_id;
                let timeouts = migrate::Timeouts::from_config(db.config());
                let schema = migrate::SchemaOptions {
                    backfill_tenant: tenant,
                    ..migrate::SchemaOptions::from_config(db.config())
                };
                on_conn!(conn, c => {
                    let plan = migrate::plan_for(c, &db.schema_models(), app, &timeouts, &schema)?;
                    migrate::stage(c, db.target(), &db.schema_models(), &plan, app, &timeouts, &schema)
                })
            })
            .await
    }

    /// Removes a migration lock row left by a crashed process; returns how
    /// many there were.
    pub async fn unlock(&self) -> Result<usize> {
        self.db
            .exclusive(|_, conn| {
                on_conn!(conn, c => {
                    migrate::ensure_internal_tables(c)?;
                    migrate::lock::force_unlock(c)
                })
            })
            .await
    }
}

/// The backfill tenant of a request, checked: it is written into the
/// migration's SQL (the history keeps what ran), so it must be a plain,
/// printable string.
fn backfill_tenant(req: &ApplyRequest) -> Result<Option<String>> {
    let Some(t) = req.tenant.as_deref() else {
        return Ok(None);
    };
    if t.is_empty() || t.len() > 255 || t.chars().any(char::is_control) {
        return Err(Error::new(
            ErrorCode::Validation,
            "--tenant must be 1 to 255 bytes of printable text",
        ));
    }
    Ok(Some(t.to_string()))
}
