//! What a caller asks of a migration step: [`ApplyRequest`] and
//! [`RollbackRequest`], taken by [`Migrations`](crate::migrate::Migrations).

use super::Rule;

/// What [`Migrations::apply`](crate::migrate::Migrations::apply) is allowed to do.
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
    /// The tenant that owns the existing rows of a table that becomes
    /// `tenant_scoped` (`--tenant`; needed with `tenant_backfill_required`).
    pub tenant: Option<String>,
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

    /// The tenant existing rows are assigned to when a model becomes
    /// `tenant_scoped`.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }
}

/// What [`Migrations::rollback`](crate::migrate::Migrations::rollback) undoes. The default undoes the last
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
