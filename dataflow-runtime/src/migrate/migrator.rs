//! `db.migrations()`: what the CLI and applications do with migrations,
//! as one view of a booted [`DataFlow`] (sqlx's `Migrator` plays this role).
//! Every method runs on the blocking pool; the ones that write take the
//! migration lock.

use super::{HistoryEntry, MigrationPlan, RegisteredModel, Rule, StagingReport};
use crate::dataflow::on_conn;
use crate::error::{Error, ErrorCode, Result};
use crate::migrate;
use crate::DataFlow;

/// What [`Migrations::apply`] is allowed to do.
///
/// ```
/// use dataflow::migrate::{ApplyRequest, Rule};
/// let req = ApplyRequest::new()
///     .allow(Rule::DataLoss)
///     .reason("summary replaces body");
/// assert_eq!(req.allow, [Rule::DataLoss]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApplyRequest {
    /// The risk rules the operator approves (`--allow <rule>`): every rule
    /// an operation above low risk hits must be here.
    pub allow: Vec<Rule>,
    /// Why (required above low risk; recorded in the history).
    pub reason: Option<String>,
}

impl ApplyRequest {
    /// Applies safe and low-risk plans only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Approves one more rule.
    pub fn allow(mut self, rule: Rule) -> Self {
        self.allow.push(rule);
        self
    }

    /// Approves these rules as well.
    pub fn allow_all(mut self, rules: impl IntoIterator<Item = Rule>) -> Self {
        self.allow.extend(rules);
        self
    }

    /// Why the plan is applied.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

/// What [`Migrations::rollback`] undoes. The default undoes the last
/// applied migration.
///
/// ```
/// use dataflow::migrate::RollbackRequest;
/// let req = RollbackRequest::steps(2).allow_data_loss().reason("bad deploy");
/// assert_eq!((req.steps, req.allow_data_loss), (2, true));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RollbackRequest {
    /// Undo every applied migration after this version (then `steps` is ignored).
    pub to: Option<String>,
    /// How many applied migrations to undo, newest first.
    pub steps: usize,
    /// Permit downs that drop data (`--allow data_loss`); needs a reason.
    pub allow_data_loss: bool,
    /// Why (recorded in the history with who and when).
    pub reason: Option<String>,
}

impl Default for RollbackRequest {
    fn default() -> Self {
        RollbackRequest {
            to: None,
            steps: 1,
            allow_data_loss: false,
            reason: None,
        }
    }
}

impl RollbackRequest {
    /// Undoes the last `steps` applied migrations.
    pub fn steps(steps: usize) -> Self {
        RollbackRequest {
            steps,
            ..Self::default()
        }
    }

    /// Undoes every applied migration after `version`.
    pub fn to(version: impl Into<String>) -> Self {
        RollbackRequest {
            to: Some(version.into()),
            ..Self::default()
        }
    }

    /// Permits downs that drop data.
    pub fn allow_data_loss(mut self) -> Self {
        self.allow_data_loss = true;
        self
    }

    /// Why the migrations are undone.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
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
                on_conn!(conn, c => migrate::plan_for(c, db.models(), &db.config().application_id))
            })
            .await
    }

    /// The migration history, oldest first.
    pub async fn history(&self) -> Result<Vec<HistoryEntry>> {
        self.db
            .blocking(|_, conn| on_conn!(conn, c => migrate::history::list(c)))
            .await
    }

    /// Plans and applies under the migration lock. Operations above low risk
    /// need each rule they hit in `allow` and a `reason` (both recorded).
    /// Returns `None` when there was nothing to do.
    pub async fn apply(&self, req: ApplyRequest) -> Result<Option<HistoryEntry>> {
        self.db
            .exclusive(move |db, conn| {
                let cfg = db.config();
                on_conn!(conn, c => {
                    migrate::with_lock(c, db.target(), cfg.connect_timeout(), "migrate apply", |c| {
                        let plan = migrate::plan_for(c, db.models(), &cfg.application_id)?;
                        if plan.is_empty() {
                            return Ok(None);
                        }
                        let options = migrate::ApplyOptions {
                            app: &cfg.application_id,
                            applied_by: &migrate::applied_by(),
                            allow: &req.allow,
                            reason: req.reason.as_deref(),
                            name: "manual",
                            record_registry: cfg.uses_registry(),
                        };
                        migrate::apply(c, db.models(), &plan, options).map(Some)
                    })
                })
            })
            .await
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
                on_conn!(conn, c => migrate::with_lock(c, db.target(), timeout, "migrate rollback", |c| {
                    migrate::history::rollback(c, &req, &migrate::applied_by())
                }))
            })
            .await
    }

    /// `migrate apply --staging`: tries the current plan where it can be
    /// thrown away and verifies it and its down SQL.
    pub async fn stage(&self) -> Result<StagingReport> {
        self.db
            .blocking(|db, conn| {
                let app = &db.config().application_id;
                on_conn!(conn, c => {
                    let plan = migrate::plan_for(c, db.models(), app)?;
                    migrate::stage(c, db.target(), db.models(), &plan, app)
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
