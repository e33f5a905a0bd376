//! The planner: compiled schemas against the live database → typed
//! operations, each with generated up/down SQL, a risk level and the rules
//! that set it.

use super::ddl;
use super::introspect::{normalize_default, LiveColumn, LiveSchema, LiveTable};
use crate::error::{Error, ErrorCode};
use crate::schema::{FieldSchema, Generated, ModelSchema};
use crate::sql::{quote, Dialect};
use crate::value::did_you_mean;
use serde::Serialize;

/// How risky an operation is. `auto_migrate` applies `Safe` and `Low` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskLevel {
    /// Nothing can go wrong: a new table, a nullable column.
    Safe,
    /// Cheap and reversible, applied at boot: dropping an index, a SQLite rebuild of an empty table.
    Low,
    /// Can fail or block writers on a table with rows; needs approval.
    Medium,
    /// Rewrites or locks a table with rows; needs approval.
    High,
    /// Loses data; needs approval.
    Destructive,
}

impl RiskLevel {
    /// The level as persisted and printed: `safe`, `low`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            RiskLevel::Safe => "safe",
            RiskLevel::Low => "low",
            RiskLevel::Medium => "medium",
            RiskLevel::High => "high",
            RiskLevel::Destructive => "destructive",
        }
    }
}

impl std::fmt::Display for RiskLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RiskLevel {
    type Err = Error;

    fn from_str(s: &str) -> Result<RiskLevel, Error> {
        const ALL: [RiskLevel; 5] = [
            RiskLevel::Safe,
            RiskLevel::Low,
            RiskLevel::Medium,
            RiskLevel::High,
            RiskLevel::Destructive,
        ];
        ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            Error::new(
                ErrorCode::Validation,
                format!(
                    "unknown risk level `{s}`; the levels are safe, low, medium, high, destructive"
                ),
            )
        })
    }
}

/// A named reason why an operation is riskier than `low`. Operators approve
/// the rules a plan hits with `--allow <rule>`; the names are persisted in
/// the history, so they never change; new rules may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Rule {
    /// Drops stored data (a column, or a table on rollback).
    DataLoss,
    /// Rewrites the whole table.
    TableRewrite,
    /// A type change the new type cannot hold every old value of.
    NarrowingTypeChange,
    /// A NOT NULL column without a default, on a table with rows.
    NotNullWithoutDefault,
    /// Forbidding NULL in a column that may hold NULL.
    NotNullOnExisting,
    /// A renamed column: clients using the old name break.
    BreakingRename,
    /// A PostgreSQL index built without `CONCURRENTLY` on a table with rows.
    IndexWithoutConcurrently,
    /// A unique index on a table with rows.
    UniqueLock,
    /// A PostgreSQL foreign key added without `NOT VALID` on a table with rows.
    FkWithoutNotValid,
    /// `tenant_scoped` turned on for a table with rows: every existing row
    /// is assigned to one tenant, given with `--tenant`.
    TenantBackfillRequired,
}

impl Rule {
    /// Every rule, in the order the README's table lists them.
    pub const ALL: [Rule; 10] = [
        Rule::DataLoss,
        Rule::TableRewrite,
        Rule::NarrowingTypeChange,
        Rule::NotNullWithoutDefault,
        Rule::NotNullOnExisting,
        Rule::BreakingRename,
        Rule::IndexWithoutConcurrently,
        Rule::UniqueLock,
        Rule::FkWithoutNotValid,
        Rule::TenantBackfillRequired,
    ];

    /// The name used by `--allow` and in the history: `data_loss`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::DataLoss => "data_loss",
            Rule::TableRewrite => "table_rewrite",
            Rule::NarrowingTypeChange => "narrowing_type_change",
            Rule::NotNullWithoutDefault => "not_null_without_default",
            Rule::NotNullOnExisting => "not_null_on_existing",
            Rule::BreakingRename => "breaking_rename",
            Rule::IndexWithoutConcurrently => "index_without_concurrently",
            Rule::UniqueLock => "unique_lock",
            Rule::FkWithoutNotValid => "fk_without_not_valid",
            Rule::TenantBackfillRequired => "tenant_backfill_required",
        }
    }

    /// The risk an operation that hits this rule has at least.
    pub fn level(self) -> RiskLevel {
        match self {
            Rule::DataLoss | Rule::NarrowingTypeChange => RiskLevel::Destructive,
            Rule::TableRewrite | Rule::NotNullWithoutDefault | Rule::TenantBackfillRequired => {
                RiskLevel::High
            }
            Rule::NotNullOnExisting
            | Rule::BreakingRename
            | Rule::IndexWithoutConcurrently
            | Rule::UniqueLock
            | Rule::FkWithoutNotValid => RiskLevel::Medium,
        }
    }

    /// What the rule means, in one line.
    pub fn reason(self) -> &'static str {
        match self {
            Rule::DataLoss => "drops stored data that cannot be recovered",
            Rule::TableRewrite => "rewrites the whole table (slow, locks it, needs disk)",
            Rule::NarrowingTypeChange => "the new type cannot hold every old value",
            Rule::NotNullWithoutDefault => {
                "a NOT NULL column without a default cannot be added to a table with rows"
            }
            Rule::NotNullOnExisting => "fails if existing rows hold NULL",
            Rule::BreakingRename => "clients still using the old column name break",
            Rule::IndexWithoutConcurrently => {
                "CREATE INDEX without CONCURRENTLY blocks writes while it builds"
            }
            Rule::UniqueLock => "building a unique index locks the table and fails on duplicates",
            Rule::FkWithoutNotValid => {
                "adding a foreign key without NOT VALID scans and locks both tables"
            }
            Rule::TenantBackfillRequired => {
                "the table becomes tenant_scoped and its existing rows need a tenant (`--tenant`)"
            }
        }
    }

    /// This rule hit by an operation, with `detail` naming what it hit.
    fn hit(self, detail: impl Into<String>) -> RuleHit {
        let detail = detail.into();
        RuleHit {
            rule: self,
            level: self.level(),
            reason: if detail.is_empty() {
                self.reason().to_string()
            } else {
                format!("{}: {detail}", self.reason())
            },
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Rule {
    type Err = Error;

    /// A rule by its name; an unknown name is a validation error that lists
    /// the known ones.
    fn from_str(s: &str) -> Result<Rule, Error> {
        Rule::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let names = Rule::ALL.map(Rule::as_str);
                Error::new(
                    ErrorCode::Validation,
                    format!(
                        "unknown risk rule `{s}`{}; the rules are {}",
                        did_you_mean(s, names),
                        names.join(", ")
                    ),
                )
            })
    }
}

/// A risk rule that applies to an operation, with its one-line reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleHit {
    /// Which rule.
    pub rule: Rule,
    /// Its level ([`Rule::level`]).
    pub level: RiskLevel,
    /// What the rule means, and what in this operation hit it.
    pub reason: String,
}

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// A model without a table.
    CreateTable,
    /// A field without a column.
    AddColumn,
    /// A column without a field.
    DropColumn,
    /// `#[field(renamed_from = "old")]`.
    RenameColumn,
    /// A field whose type changed (PostgreSQL).
    AlterColumnType,
    /// A field that became required (PostgreSQL).
    SetNotNull,
    /// A field that became optional (PostgreSQL).
    DropNotNull,
    /// A changed default (PostgreSQL).
    SetDefault,
    /// `#[field(index)]` or a foreign key without its index.
    AddIndex,
    /// An index the model no longer asks for.
    DropIndex,
    /// `#[field(unique)]` without a unique index.
    AddUnique,
    /// A unique index the model no longer asks for.
    DropUnique,
    /// A reference without its foreign key (PostgreSQL).
    AddForeignKey,
    /// A foreign key the model no longer has (PostgreSQL).
    DropForeignKey,
    /// SQLite: recreate the table to change what `ALTER TABLE` cannot.
    RebuildTable,
    /// A primary key of other columns (`(tenant_id, id)` on a tenant-scoped model; PostgreSQL).
    AlterPrimaryKey,
    /// `row_level_security`: the policy on a tenant-scoped table (PostgreSQL).
    EnableRowLevelSecurity,
    /// Row-level security the configuration no longer asks for (PostgreSQL).
    DisableRowLevelSecurity,
    /// SQLite: the trigger that does `set_null` between tenant-scoped models.
    AddTrigger,
    /// SQLite: a `set_null` trigger the models no longer ask for.
    DropTrigger,
    /// PostgreSQL: the query cache's change trigger (`enable_caching`),
    /// which notifies every instance of a write to the table.
    AddChangeTrigger,
    /// PostgreSQL: a change trigger the configuration no longer asks for
    /// (`enable_caching(false)` and `migrate apply`).
    DropChangeTrigger,
}

/// One planned change, with the SQL that makes and undoes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Operation {
    /// The model it serves.
    pub model: String,
    /// The model's table.
    pub table: String,
    /// What it does.
    pub kind: OpKind,
    /// The column it changes, if it is about one.
    pub column: Option<String>,
    /// One line for people: "add column users.nickname TEXT NULL".
    pub summary: String,
    /// The statements that make the change.
    pub up: Vec<String>,
    /// The statements that undo it, in order.
    pub down: Vec<String>,
    /// The highest level of its rules (at least `low` for some kinds).
    pub risk: RiskLevel,
    /// Why it is riskier than `safe`.
    pub rules: Vec<RuleHit>,
    /// Running `down` destroys data that `up` created or kept.
    pub down_loses_data: bool,
}

impl Operation {
    fn new(
        m: &ModelSchema,
        kind: OpKind,
        column: Option<&str>,
        summary: String,
        up: Vec<String>,
        down: Vec<String>,
    ) -> Self {
        Operation {
            model: m.name.to_string(),
            table: m.table.to_string(),
            kind,
            column: column.map(str::to_string),
            summary,
            up,
            down,
            risk: RiskLevel::Safe,
            rules: Vec::new(),
            down_loses_data: false,
        }
    }

    fn rule(mut self, h: RuleHit) -> Self {
        self.risk = self.risk.max(h.level);
        self.rules.push(h);
        self
    }

    fn low(mut self) -> Self {
        self.risk = self.risk.max(RiskLevel::Low);
        self
    }

    fn lossy_down(mut self) -> Self {
        self.down_loses_data = true;
        self
    }
}

/// Something in the database that neither the models nor the registry explain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// The table it is in.
    pub table: String,
    /// The unexplained column.
    pub column: Option<String>,
    /// What was found, for people.
    pub message: String,
}

/// What it takes to bring the database to the compiled models.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct MigrationPlan {
    /// The changes, in the order they run.
    pub operations: Vec<Operation>,
    /// What the database has that nothing explains (reported, never dropped silently).
    pub drift: Vec<Drift>,
    /// The statements the migration's transaction starts with, before the
    /// operations: on PostgreSQL `SET LOCAL lock_timeout` and `SET LOCAL
    /// statement_timeout` from the configuration; empty on SQLite.
    pub settings: Vec<String>,
}

impl MigrationPlan {
    /// Nothing to do (drift aside).
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// The highest risk of its operations (`safe` when empty).
    pub fn risk(&self) -> RiskLevel {
        self.operations
            .iter()
            .map(|o| o.risk)
            .max()
            .unwrap_or(RiskLevel::Safe)
    }

    /// The up SQL of every operation, in order, and the down SQL that undoes
    /// them (newest first).
    pub(crate) fn statements(&self) -> (Vec<String>, Vec<String>) {
        let up = self
            .operations
            .iter()
            .flat_map(|o| o.up.iter().cloned())
            .collect();
        let down = self
            .operations
            .iter()
            .rev()
            .flat_map(|o| o.down.iter().cloned())
            .collect();
        (up, down)
    }

    /// Every rule hit in the plan, once, by name.
    pub fn rules(&self) -> Vec<Rule> {
        let mut rules: Vec<Rule> = self
            .operations
            .iter()
            .flat_map(|o| o.rules.iter().map(|r| r.rule))
            .collect();
        rules.sort_unstable_by_key(|r| r.as_str());
        rules.dedup();
        rules
    }
}

fn expected_default(d: Dialect, f: &FieldSchema) -> Option<String> {
    f.default
        .map(|v| normalize_default(&ddl::default_literal(d, v)))
}

/// Whether a change from `old` to `new` type can lose values.
fn narrowing(old: &str, new: &str) -> bool {
    let rank = |t: &str| match t {
        "smallint" => Some(1),
        "integer" => Some(2),
        "bigint" => Some(3),
        "real" => Some(4),
        "double precision" => Some(5),
        _ => None,
    };
    match (rank(old), rank(new)) {
        (Some(a), Some(b)) => b < a || (a <= 3 && b == 4 && a == 3),
        _ => {
            let len = |t: &str| {
                t.strip_prefix("varchar(")
                    .and_then(|r| r.strip_suffix(')'))
                    .and_then(|n| n.parse::<u32>().ok())
            };
            match (old, len(old), len(new)) {
                (_, Some(a), Some(b)) => b < a,
                ("text", None, Some(_)) => true,
                _ => old != new && !(len(old).is_some() && new == "text"),
            }
        }
    }
}

/// What the schema holds beyond the models, and what a change needs from
/// the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SchemaOptions {
    /// PostgreSQL row-level security on tenant-scoped tables (`row_level_security`).
    pub row_level_security: bool,
    /// The tenant that existing rows are assigned to when a model becomes
    /// tenant-scoped (`migrate apply --tenant`).
    pub backfill_tenant: Option<String>,
    /// PostgreSQL: the query cache's change triggers on the model tables:
    /// wanted (`Some(true)`), to be dropped (`Some(false)`), or left as
    /// they are (`None`: boot with the cache off, so an instance without
    /// the cache never takes them from one with it).
    pub change_triggers: Option<bool>,
}

impl SchemaOptions {
    /// What the migration commands bring the schema to.
    pub(crate) fn from_config(c: &crate::Config) -> Self {
        SchemaOptions {
            row_level_security: c.row_level_security(),
            backfill_tenant: None,
            change_triggers: Some(c.caching()),
        }
    }

    /// What boot brings the schema to: change triggers are added with the
    /// cache on, and never dropped.
    pub(crate) fn for_boot(c: &crate::Config) -> Self {
        SchemaOptions {
            change_triggers: c.caching().then_some(true),
            ..Self::from_config(c)
        }
    }
}

/// Whether `m`'s table gets the query cache's change trigger.
fn change_trigger_wanted(d: Dialect, m: &ModelSchema, opts: &SchemaOptions) -> Option<bool> {
    let model = !std::ptr::eq(m, &crate::audit::AUDIT);
    opts.change_triggers
        .filter(|_| d == Dialect::Postgres && model)
}

/// The tenant a backfill writes, as a SQL literal. Without one the SQL
/// carries psql's `:'tenant'` variable: reviewable, runnable with
/// `psql -v tenant=...`, and a syntax error anywhere else (dataflow
/// refuses to apply it).
fn tenant_literal(tenant: Option<&str>) -> String {
    match tenant {
        Some(t) => format!("'{}'", t.replace('\'', "''")),
        None => ":'tenant'".into(),
    }
}

/// Plans the changes that bring `live` to the compiled `models`.
/// `has_rows(table)` tells whether a table holds data (risk depends on it);
/// `known` lists columns the registry recorded per table (to tell drift).
pub fn plan(
    d: Dialect,
    models: &[&'static ModelSchema],
    live: &LiveSchema,
    has_rows: &mut dyn FnMut(&str) -> bool,
    known: &dyn Fn(&str) -> Option<Vec<String>>,
) -> MigrationPlan {
    plan_with(d, models, live, has_rows, known, &SchemaOptions::default())
}

/// [`plan`] with the configuration's and the operator's [`SchemaOptions`].
pub(crate) fn plan_with(
    d: Dialect,
    models: &[&'static ModelSchema],
    live: &LiveSchema,
    has_rows: &mut dyn FnMut(&str) -> bool,
    known: &dyn Fn(&str) -> Option<Vec<String>>,
    opts: &SchemaOptions,
) -> MigrationPlan {
    let lookup = |name: &str| models.iter().copied().find(|m| m.name == name);
    let mut out = MigrationPlan::default();
    for m in creation_order(models) {
        match live.get(m.table) {
            None => {
                let mut up = ddl::create_table(d, m, lookup);
                if let Some(tenant) = rls_wanted(d, m, opts) {
                    up.extend(crate::rls::enable(m.table, tenant));
                }
                if change_trigger_wanted(d, m, opts) == Some(true) {
                    up.extend(crate::cache::trigger_up(m.table));
                }
                out.operations.push(
                    Operation::new(
                        m,
                        OpKind::CreateTable,
                        None,
                        format!("create table {}", m.table),
                        up,
                        vec![ddl::drop_table(d, &quote(m.table))],
                    )
                    .lossy_down(),
                );
            }
            Some(t) => {
                let ops = TablePlanner::new(d, m, t, &mut *has_rows, &lookup, opts, live)
                    .plan(known, &mut out.drift);
                out.operations.extend(ops);
            }
        }
    }
    // Foreign keys go first and come back last: a key they depend on (a
    // primary key becoming `(tenant_id, id)`) can change in between, in any
    // table, whatever the order of the tables.
    let (drops, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut out.operations)
        .into_iter()
        .partition(|o| o.kind == OpKind::DropForeignKey);
    let (adds, rest): (Vec<_>, Vec<_>) = rest
        .into_iter()
        .partition(|o| o.kind == OpKind::AddForeignKey);
    out.operations = drops.into_iter().chain(rest).chain(adds).collect();
    out
}

/// The tenant column, when `m`'s table should be behind row-level security.
fn rls_wanted(d: Dialect, m: &ModelSchema, opts: &SchemaOptions) -> Option<&'static str> {
    let on = d == Dialect::Postgres && opts.row_level_security;
    ddl::tenant_column(m).filter(|_| on)
}

/// Plans the changes to one existing table.
struct TablePlanner<'a> {
    d: Dialect,
    m: &'static ModelSchema,
    /// The live table.
    t: &'a LiveTable,
    /// `m.table`, quoted.
    table: String,
    has_rows: &'a mut dyn FnMut(&str) -> bool,
    /// Whether the table holds rows, asked at most once.
    populated: Option<bool>,
    lookup: &'a dyn Fn(&str) -> Option<&'static ModelSchema>,
    opts: &'a SchemaOptions,
    /// Every live table (a `set_null` trigger is on the referenced one).
    live: &'a LiveSchema,
    ops: Vec<Operation>,
    /// What SQLite's ALTER TABLE cannot do, collected into one rebuild.
    rebuild: Vec<(String, Vec<RuleHit>)>,
    /// Columns a rebuild fills with a literal (the backfilled tenant).
    fill: Vec<(&'static str, String)>,
    /// Live columns that renamed fields take over.
    renamed_sources: Vec<&'static str>,
}

impl<'a> TablePlanner<'a> {
    fn new(
        d: Dialect,
        m: &'static ModelSchema,
        t: &'a LiveTable,
        has_rows: &'a mut dyn FnMut(&str) -> bool,
        lookup: &'a dyn Fn(&str) -> Option<&'static ModelSchema>,
        opts: &'a SchemaOptions,
        live: &'a LiveSchema,
    ) -> Self {
        TablePlanner {
            d,
            m,
            t,
            table: quote(m.table),
            has_rows,
            populated: None,
            lookup,
            opts,
            live,
            ops: Vec::new(),
            rebuild: Vec::new(),
            fill: Vec::new(),
            renamed_sources: Vec::new(),
        }
    }

    fn populated(&mut self) -> bool {
        let table = self.m.table;
        let has_rows = &mut self.has_rows;
        *self.populated.get_or_insert_with(|| has_rows(table))
    }

    /// ADD COLUMN's definition. A unique constraint cannot be added in place
    /// (SQLite), so it comes as a separate unique index.
    fn add_column_def(&self, f: &FieldSchema) -> String {
        ddl::column_def(
            self.d,
            self.m,
            &FieldSchema {
                unique: false,
                ..*f
            },
            self.lookup,
        )
    }

    /// The tenant column the model has, or the one it had (`tenant_id`):
    /// keys of either shape belong to the field they end with.
    fn tenant_name(&self) -> &'static str {
        ddl::tenant_column(self.m).unwrap_or("tenant_id")
    }

    /// Whether live key columns are `col`'s, in either shape: `(col)` or
    /// `(tenant, col)`.
    fn of_field(&self, cols: &[String], col: &str) -> bool {
        match cols {
            [c] => c == col,
            [t, c] => t == self.tenant_name() && c == col,
            _ => false,
        }
    }

    /// The table's operations; drift (columns nobody explains) goes to `drift`.
    fn plan(
        mut self,
        known: &dyn Fn(&str) -> Option<Vec<String>>,
        drift: &mut Vec<Drift>,
    ) -> Vec<Operation> {
        self.row_security(false);
        // The tenant column first: the composite keys of the others need it.
        let tenant_first = self
            .m
            .fields
            .iter()
            .filter(|f| f.generated == Generated::Tenant)
            .chain(
                self.m
                    .fields
                    .iter()
                    .filter(|f| f.generated != Generated::Tenant),
            );
        for f in tenant_first {
            match self.t.column(f.column) {
                None => self.missing_column(f),
                Some(live) if f.primary_key || live.primary_key => {}
                Some(live) => {
                    self.column(f, live);
                    self.keys_of(f);
                }
            }
        }
        self.table_keys();
        let known_columns = known(self.m.table);
        for live in &self.t.columns {
            self.unmodelled_column(live, known_columns.as_deref(), drift);
        }
        self.row_security(true);
        self.change_trigger();
        self.finish()
    }

    /// PostgreSQL: the query cache's change trigger, added or dropped as
    /// the configuration says (boot never drops it).
    fn change_trigger(&mut self) {
        let (d, m, t) = (self.d, self.m, self.t);
        match (change_trigger_wanted(d, m, self.opts), t.change_trigger) {
            (Some(true), false) => self.ops.push(
                Operation::new(
                    m,
                    OpKind::AddChangeTrigger,
                    None,
                    format!("add the query cache's change trigger on {}", m.table),
                    crate::cache::trigger_up(m.table),
                    crate::cache::trigger_down(m.table),
                )
                .low(),
            ),
            (Some(false), true) => self.ops.push(
                Operation::new(
                    m,
                    OpKind::DropChangeTrigger,
                    None,
                    format!("drop the query cache's change trigger on {}", m.table),
                    crate::cache::trigger_down(m.table),
                    crate::cache::trigger_up(m.table),
                )
                .low(),
            ),
            _ => {}
        }
    }

    /// PostgreSQL row-level security: taken down first (before the tenant
    /// column it names can go), put up last (after the column exists).
    fn row_security(&mut self, up: bool) {
        let (d, m, t) = (self.d, self.m, self.t);
        if d != Dialect::Postgres {
            return;
        }
        let has_policy = t.policies.iter().any(|p| p == crate::rls::POLICY);
        match (rls_wanted(d, m, self.opts), up) {
            (Some(tenant), true) if !(has_policy && t.row_level_security) => {
                let mut stmts = crate::rls::enable(m.table, tenant);
                if has_policy {
                    stmts.pop();
                }
                self.ops.push(
                    Operation::new(
                        m,
                        OpKind::EnableRowLevelSecurity,
                        None,
                        format!("enable row-level security on {}", m.table),
                        stmts,
                        crate::rls::disable(m.table),
                    )
                    .low(),
                );
            }
            (None, false) if has_policy => {
                self.ops.push(
                    Operation::new(
                        m,
                        OpKind::DisableRowLevelSecurity,
                        None,
                        format!("disable row-level security on {}", m.table),
                        crate::rls::disable(m.table),
                        crate::rls::enable(m.table, self.tenant_name()),
                    )
                    .low(),
                );
            }
            _ => {}
        }
    }

    /// A field without a live column: renamed, or added.
    fn missing_column(&mut self, f: &'static FieldSchema) {
        let (d, m, t) = (self.d, self.m, self.t);
        let table = self.table.clone();
        if let Some(old) = f
            .renamed_from
            .filter(|old| t.column(old).is_some() && m.field(old).is_none())
        {
            self.renamed_sources.push(old);
            self.ops.push(
                Operation::new(
                    m,
                    OpKind::RenameColumn,
                    Some(f.column),
                    format!("rename column {}.{old} to {}", m.table, f.column),
                    vec![format!(
                        "ALTER TABLE {table} RENAME COLUMN {} TO {}",
                        quote(old),
                        quote(f.column)
                    )],
                    vec![format!(
                        "ALTER TABLE {table} RENAME COLUMN {} TO {}",
                        quote(f.column),
                        quote(old)
                    )],
                )
                .rule(Rule::BreakingRename.hit(format!("{}.{old} becomes {}", m.table, f.column))),
            );
            return;
        }
        let needs_value = !f.nullable && f.default.is_none();
        let summary = format!(
            "add column {}.{} {}{}",
            m.table,
            f.column,
            ddl::column_type(d, f),
            if f.nullable { " NULL" } else { " NOT NULL" }
        );
        if f.generated == Generated::Tenant && self.populated() {
            self.backfill_tenant(f, summary);
            return;
        }
        if needs_value && self.populated() {
            self.ops.push(
                Operation::new(
                    m,
                    OpKind::AddColumn,
                    Some(f.column),
                    summary,
                    vec![ddl::add_column(d, &table, &self.add_column_def(f))],
                    vec![ddl::drop_column(d, &table, &quote(f.column))],
                )
                .rule(
                    Rule::NotNullWithoutDefault
                        .hit(format!("{}.{} on a table with rows", m.table, f.column)),
                )
                .lossy_down(),
            );
            return;
        }
        let composite_fk = ddl::foreign_key(d, m, f, self.lookup).filter(|fk| fk.composite());
        if d == Dialect::Sqlite && (needs_value || f.unique || composite_fk.is_some()) {
            // SQLite cannot add NOT NULL-without-default, UNIQUE or
            // table-constraint columns in place.
            self.rebuild.push((summary, Vec::new()));
            return;
        }
        let mut up = vec![ddl::add_column(d, &table, &self.add_column_def(f))];
        if f.unique {
            up.push(format!(
                "CREATE UNIQUE INDEX {} ON {table} ({})",
                quote(&ddl::unique_name(m.table, f.column)),
                ddl::quote_list(&ddl::keyed(m, f.column))
            ));
        }
        if ddl::expects_index(m, f) {
            up.push(format!(
                "CREATE INDEX {} ON {table} ({})",
                quote(&ddl::index_name(m.table, f.column)),
                ddl::quote_list(&ddl::index_columns(m, f, self.lookup))
            ));
        }
        let mut down = Vec::new();
        if ddl::expects_index(m, f) {
            down.push(ddl::drop_index(
                d,
                &quote(&ddl::index_name(m.table, f.column)),
            ));
        }
        if f.unique {
            down.push(ddl::drop_index(
                d,
                &quote(&ddl::unique_name(m.table, f.column)),
            ));
        }
        down.push(ddl::drop_column(d, &table, &quote(f.column)));
        let op =
            Operation::new(m, OpKind::AddColumn, Some(f.column), summary, up, down).lossy_down();
        self.ops.push(if needs_value { op.low() } else { op });
        if let Some(fk) = composite_fk {
            self.add_foreign_key(f, &fk);
        }
    }

    /// `tenant_scoped` turned on for a table with rows: every existing row
    /// goes to the operator's `--tenant`.
    fn backfill_tenant(&mut self, f: &'static FieldSchema, summary: String) {
        let (d, m) = (self.d, self.m);
        let tenant = self.opts.backfill_tenant.as_deref();
        let literal = tenant_literal(tenant);
        let hit = Rule::TenantBackfillRequired.hit(format!(
            "every row of {} is assigned to tenant {}",
            m.table,
            tenant.map_or_else(|| "<--tenant>".to_string(), |t| format!("`{t}`"))
        ));
        if d == Dialect::Sqlite {
            self.fill.push((f.column, literal));
            self.rebuild
                .push((format!("{summary}, backfilled with the tenant"), vec![hit]));
            return;
        }
        let table = self.table.clone();
        let col = quote(f.column);
        self.ops.push(
            Operation::new(
                m,
                OpKind::AddColumn,
                Some(f.column),
                format!("{summary}, backfilled with the tenant"),
                vec![
                    ddl::add_column(
                        d,
                        &table,
                        &format!("{} DEFAULT {literal}", self.add_column_def(f)),
                    ),
                    format!("ALTER TABLE {table} ALTER COLUMN {col} DROP DEFAULT"),
                ],
                vec![ddl::drop_column(d, &table, &col)],
            )
            .rule(hit)
            .lossy_down(),
        );
    }

    /// A live column no field has: drift unless the registry knew it, and
    /// dropped (data loss) unless a renamed field took it over.
    fn unmodelled_column(
        &mut self,
        live: &LiveColumn,
        known_columns: Option<&[String]>,
        drift: &mut Vec<Drift>,
    ) {
        let (d, m, t) = (self.d, self.m, self.t);
        let table = self.table.clone();
        if m.fields.iter().any(|f| f.column == live.name)
            || self.renamed_sources.contains(&live.name.as_str())
        {
            return;
        }
        if !known_columns.is_some_and(|k| k.contains(&live.name)) {
            drift.push(Drift {
                table: m.table.to_string(),
                column: Some(live.name.clone()),
                message: format!(
                    "{}.{} exists in the database but in neither the model {} nor the registry (changed by another tool?)",
                    m.table, live.name, m.name
                ),
            });
        }
        let constrained = live.unique
            || live.primary_key
            || t.foreign_keys
                .iter()
                .any(|fk| fk.columns.contains(&live.name))
            || t.unique_constraints
                .iter()
                .any(|i| i.columns.contains(&live.name))
            || t.indexes.iter().any(|i| i.columns.contains(&live.name));
        let summary = format!("drop column {}.{}", m.table, live.name);
        if d == Dialect::Sqlite && constrained {
            self.rebuild.push((
                summary,
                vec![Rule::DataLoss.hit(format!("{}.{}", m.table, live.name))],
            ));
            return;
        }
        let mut add_back = ddl::add_column(
            d,
            &table,
            &format!("{} {}", quote(&live.name), live.ty.to_uppercase()),
        );
        if let Some(def) = &live.default {
            add_back.push_str(&format!(" DEFAULT {def}"));
        }
        self.ops.push(
            Operation::new(
                m,
                OpKind::DropColumn,
                Some(&live.name),
                summary,
                vec![ddl::drop_column(d, &table, &quote(&live.name))],
                vec![add_back],
            )
            .rule(Rule::DataLoss.hit(format!("{}.{}", m.table, live.name))),
        );
    }

    /// The in-place operations, or, when SQLite cannot do some of them, one
    /// rebuild instead (renames stay in place).
    fn finish(mut self) -> Vec<Operation> {
        let (d, m, t) = (self.d, self.m, self.t);
        if !self.rebuild.is_empty() {
            let mut op = rebuild_table(d, m, t, self.live, self.lookup, &self.fill);
            op.summary = format!(
                "rebuild table {} ({})",
                m.table,
                self.rebuild
                    .iter()
                    .map(|(s, _)| s.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            let mut rules: Vec<RuleHit> = std::mem::take(&mut self.rebuild)
                .into_iter()
                .flat_map(|(_, r)| r)
                .collect();
            if self.populated() {
                rules.push(
                    Rule::TableRewrite.hit(format!("{} is copied into a new table", m.table)),
                );
            }
            for r in rules {
                op = op.rule(r);
            }
            // The rebuild replaces the in-place operations of this table; it
            // also makes the table's `set_null` triggers (on other tables)
            // again, so only dropping an unwanted one stays.
            self.ops
                .retain(|o| matches!(o.kind, OpKind::RenameColumn | OpKind::DropTrigger));
            self.ops.push(op.low());
        }
        self.ops
    }

    /// The changes to one field that exists in the table as `live`: type,
    /// nullability and default.
    fn column(&mut self, f: &FieldSchema, live: &LiveColumn) {
        let (d, m) = (self.d, self.m);
        let table = self.table.clone();
        let col = quote(f.column);
        let name = format!("{}.{}", m.table, f.column);
        let want_ty = ddl::expected_type(d, f);
        if live.ty != want_ty {
            let mut rules =
                vec![Rule::TableRewrite.hit(format!("{name}: {} → {want_ty}", live.ty))];
            if narrowing(&live.ty, &want_ty) {
                rules.push(
                    Rule::NarrowingTypeChange.hit(format!("{name}: {} → {want_ty}", live.ty)),
                );
            }
            let summary = format!("change type of {name} from {} to {want_ty}", live.ty);
            if d == Dialect::Sqlite {
                self.rebuild.push((summary, rules));
            } else {
                let mut op = Operation::new(
                    m,
                    OpKind::AlterColumnType,
                    Some(f.column),
                    summary,
                    [ddl::alter_type(&table, &col, &ddl::column_type(d, f))]
                        .into_iter()
                        .chain(f.default.map(|v| {
                            format!(
                                "ALTER TABLE {table} ALTER COLUMN {col} SET DEFAULT {}",
                                ddl::default_literal(d, v)
                            )
                        }))
                        .collect(),
                    [ddl::alter_type(&table, &col, &live.ty.to_uppercase())]
                        .into_iter()
                        .chain(live.default.as_ref().map(|v| {
                            format!("ALTER TABLE {table} ALTER COLUMN {col} SET DEFAULT {v}")
                        }))
                        .collect(),
                );
                for r in rules {
                    op = op.rule(r);
                }
                self.ops.push(op);
            }
        }
        if live.nullable != f.nullable {
            let summary = format!(
                "{} {name}",
                if f.nullable {
                    "allow NULL in"
                } else {
                    "forbid NULL in"
                }
            );
            if d == Dialect::Sqlite {
                self.rebuild.push((
                    summary,
                    if f.nullable {
                        vec![]
                    } else {
                        vec![Rule::NotNullOnExisting.hit(name.clone())]
                    },
                ));
            } else if f.nullable {
                self.ops.push(Operation::new(
                    m,
                    OpKind::DropNotNull,
                    Some(f.column),
                    summary,
                    vec![format!(
                        "ALTER TABLE {table} ALTER COLUMN {col} DROP NOT NULL"
                    )],
                    vec![format!(
                        "ALTER TABLE {table} ALTER COLUMN {col} SET NOT NULL"
                    )],
                ));
            } else {
                let op = Operation::new(
                    m,
                    OpKind::SetNotNull,
                    Some(f.column),
                    summary,
                    vec![format!(
                        "ALTER TABLE {table} ALTER COLUMN {col} SET NOT NULL"
                    )],
                    vec![format!(
                        "ALTER TABLE {table} ALTER COLUMN {col} DROP NOT NULL"
                    )],
                );
                let hit = self.populated();
                self.ops.push(if hit {
                    op.rule(Rule::NotNullOnExisting.hit(name.clone()))
                } else {
                    op
                });
            }
        }
        let want_default = expected_default(d, f);
        // A PostgreSQL type change re-sets the default itself.
        let retyped = d == Dialect::Postgres && live.ty != want_ty;
        if live.default != want_default && !retyped {
            let summary = format!(
                "set default of {name} to {}",
                want_default.as_deref().unwrap_or("none")
            );
            if d == Dialect::Sqlite {
                self.rebuild.push((summary, Vec::new()));
            } else {
                let set = |v: &Option<String>| match v {
                    Some(v) => format!("ALTER TABLE {table} ALTER COLUMN {col} SET DEFAULT {v}"),
                    None => format!("ALTER TABLE {table} ALTER COLUMN {col} DROP DEFAULT"),
                };
                let want_sql = f.default.map(|v| ddl::default_literal(d, v));
                self.ops.push(Operation::new(
                    m,
                    OpKind::SetDefault,
                    Some(f.column),
                    summary,
                    vec![set(&want_sql)],
                    vec![set(&live.default)],
                ));
            }
        }
    }

    /// The table-level keys: the primary key (`(tenant_id, id)` on a
    /// tenant-scoped model) and the `(tenant_id, id)` unique of an
    /// auto-increment key.
    fn table_keys(&mut self) {
        let (d, m, t) = (self.d, self.m, self.t);
        let table = self.table.clone();
        let want = ddl::primary_key(m);
        let pk_changed = !t
            .primary_key
            .iter()
            .map(String::as_str)
            .eq(want.iter().copied());
        if pk_changed {
            let summary = format!(
                "change the primary key of {} from ({}) to ({})",
                m.table,
                t.primary_key.join(", "),
                want.join(", ")
            );
            if d == Dialect::Sqlite {
                self.rebuild.push((summary, Vec::new()));
            } else {
                let name = quote(&format!("{}_pkey", m.table));
                let live_name = t.primary_key_name.as_deref().map_or(name.clone(), quote);
                let mut down = vec![format!(
                    "ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}"
                )];
                if !t.primary_key.is_empty() {
                    down[0].push_str(&format!(
                        ", ADD CONSTRAINT {live_name} PRIMARY KEY ({})",
                        ddl::quote_list(&t.primary_key)
                    ));
                }
                let op = Operation::new(
                    m,
                    OpKind::AlterPrimaryKey,
                    None,
                    summary,
                    vec![format!(
                        "ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {live_name}, ADD CONSTRAINT {name} PRIMARY KEY ({})",
                        ddl::quote_list(&want)
                    )],
                    down,
                );
                let hit = self.populated();
                self.ops.push(if hit {
                    op.rule(Rule::UniqueLock.hit(format!("{} ({})", m.table, want.join(", "))))
                } else {
                    op
                });
            }
        }
        let pk = m.primary_key().column;
        match ddl::tenant_key_unique(m) {
            Some(cols) if t.unique_on(&cols).is_none() => self.add_unique(pk, &cols),
            Some(_) => {}
            None => {
                let old = [self.tenant_name(), pk];
                if let Some((index, constraint)) = t.unique_on(&old) {
                    let name = index.name.clone();
                    if constraint && d == Dialect::Sqlite {
                        self.rebuild.push((
                            format!("drop unique constraint on {}.{pk} per tenant", m.table),
                            Vec::new(),
                        ));
                    } else if constraint {
                        self.drop_unique_constraint(pk, &name, &old);
                    } else {
                        self.drop_unique(pk, &name, &old);
                    }
                }
            }
        }
    }

    /// A field's unique constraint, plain index and foreign key, each
    /// `(tenant_id, col)` on a tenant-scoped model and `(col)` elsewhere.
    fn keys_of(&mut self, f: &'static FieldSchema) {
        let (d, m, t, lookup) = (self.d, self.m, self.t, self.lookup);
        let table = self.table.clone();
        let cols = ddl::keyed(m, f.column);
        // The unique constraint.
        let exact = t.unique_on(&cols).is_some();
        let other: Vec<(String, bool, Vec<String>)> = t
            .unique_constraints
            .iter()
            .map(|i| (i, true))
            .chain(t.indexes.iter().filter(|i| i.unique).map(|i| (i, false)))
            .filter(|(i, _)| self.of_field(&i.columns, f.column))
            .filter(|(i, _)| {
                !i.columns
                    .iter()
                    .map(String::as_str)
                    .eq(cols.iter().copied())
                    || !f.unique
            })
            .map(|(i, c)| (i.name.clone(), c, i.columns.clone()))
            .collect();
        for (name, constraint, live_cols) in other {
            let live_cols: Vec<&str> = live_cols.iter().map(String::as_str).collect();
            if constraint && d == Dialect::Sqlite {
                self.rebuild.push((
                    format!("drop unique constraint on {}.{}", m.table, f.column),
                    Vec::new(),
                ));
            } else if constraint {
                self.drop_unique_constraint(f.column, &name, &live_cols);
            } else {
                self.drop_unique(f.column, &name, &live_cols);
            }
        }
        if f.unique && !exact {
            self.add_unique(f.column, &cols);
        }
        // The plain index.
        let want_index = ddl::expects_index(m, f);
        let cols = ddl::index_columns(m, f, lookup);
        let mut has_index = false;
        let indexes: Vec<(String, Vec<String>)> = t
            .indexes
            .iter()
            .filter(|i| !i.unique && self.of_field(&i.columns, f.column))
            .map(|i| (i.name.clone(), i.columns.clone()))
            .collect();
        for (name, live_cols) in indexes {
            if want_index
                && live_cols
                    .iter()
                    .map(String::as_str)
                    .eq(cols.iter().copied())
            {
                has_index = true;
                continue;
            }
            let idx = quote(&name);
            self.ops.push(
                Operation::new(
                    m,
                    OpKind::DropIndex,
                    Some(f.column),
                    format!("drop index {name}"),
                    vec![ddl::drop_index(d, &idx)],
                    vec![format!(
                        "CREATE INDEX {idx} ON {table} ({})",
                        ddl::quote_list(&live_cols)
                    )],
                )
                .low(),
            );
        }
        if want_index && !has_index {
            let name = format!("{}.{}", m.table, f.column);
            let idx = quote(&ddl::index_name(m.table, f.column));
            let op = Operation::new(
                m,
                OpKind::AddIndex,
                Some(f.column),
                format!("add index on {name}"),
                vec![format!(
                    "CREATE INDEX {idx} ON {table} ({})",
                    ddl::quote_list(&cols)
                )],
                vec![ddl::drop_index(d, &idx)],
            );
            let hit = d == Dialect::Postgres && self.populated();
            self.ops.push(if hit {
                op.rule(Rule::IndexWithoutConcurrently.hit(name))
            } else {
                op
            });
        }
        // The foreign key.
        let live_fk = t
            .foreign_keys
            .iter()
            .find(|fk| self.of_field(&fk.columns, f.column));
        let want_fk = ddl::foreign_key(d, m, f, lookup);
        self.set_null_trigger(f, want_fk.as_ref().and_then(|w| w.trigger.as_ref()));
        let same = match (live_fk, &want_fk) {
            (None, None) => true,
            (Some(l), Some(w)) => {
                l.target_table == w.target_table
                    && l.columns
                        .iter()
                        .map(String::as_str)
                        .eq(w.columns.iter().copied())
                    && l.target_columns
                        .iter()
                        .map(String::as_str)
                        .eq(w.target_columns.iter().copied())
                    && l.on_delete == ddl::action_text(&w.on_delete)
            }
            _ => false,
        };
        if same {
            return;
        }
        let name = format!("{}.{}", m.table, f.column);
        if d == Dialect::Sqlite {
            self.rebuild
                .push((format!("change foreign key of {name}"), Vec::new()));
            return;
        }
        if let Some(l) = live_fk {
            let constraint = quote(
                l.name
                    .as_deref()
                    .unwrap_or(&format!("{}_{}_fkey", m.table, f.column)),
            );
            self.ops.push(
                Operation::new(
                    m,
                    OpKind::DropForeignKey,
                    Some(f.column),
                    format!("drop foreign key on {name}"),
                    vec![ddl::drop_constraint(&table, &constraint)],
                    vec![format!(
                        "ALTER TABLE {table} ADD CONSTRAINT {constraint} FOREIGN KEY ({}) REFERENCES {} ({}) ON DELETE {}",
                        ddl::quote_list(&l.columns),
                        quote(&l.target_table),
                        ddl::quote_list(&l.target_columns),
                        l.on_delete
                    )],
                )
                .low(),
            );
        }
        if let Some(w) = want_fk {
            self.add_foreign_key(f, &w);
        }
    }

    /// SQLite: the trigger that clears `f` when its tenant-scoped target is
    /// deleted, made or dropped as the model asks.
    fn set_null_trigger(&mut self, f: &FieldSchema, want: Option<&ddl::SetNullTrigger>) {
        let m = self.m;
        let name = format!("dataflow_set_null_{}_{}", m.table, f.column);
        let live = self.live.values().find_map(|t| {
            t.triggers
                .iter()
                .find(|tr| tr.name == name)
                .map(|tr| (t.name.as_str(), tr))
        });
        let drop = format!("DROP TRIGGER IF EXISTS {}", quote(&name));
        match (want, live) {
            (Some(w), Some((table, _))) if table == w.table => {}
            (Some(w), _) => self.ops.push(Operation::new(
                m,
                OpKind::AddTrigger,
                Some(f.column),
                format!(
                    "add the set_null trigger of {}.{} on {}",
                    m.table, f.column, w.table
                ),
                vec![drop.clone(), w.sql.clone()],
                match live {
                    Some((_, old)) => vec![drop, old.sql.clone()],
                    None => vec![drop],
                },
            )),
            (None, Some((table, old))) => self.ops.push(
                Operation::new(
                    m,
                    OpKind::DropTrigger,
                    Some(f.column),
                    format!(
                        "drop the set_null trigger of {}.{} on {table}",
                        m.table, f.column
                    ),
                    vec![drop],
                    vec![old.sql.clone()],
                )
                .low(),
            ),
            (None, None) => {}
        }
    }

    /// `ALTER TABLE .. ADD CONSTRAINT .. FOREIGN KEY` (PostgreSQL).
    fn add_foreign_key(&mut self, f: &FieldSchema, fk: &ddl::ForeignKeyShape) {
        let m = self.m;
        let table = self.table.clone();
        let constraint = quote(&fk.name);
        let name = format!("{}.{}", m.table, f.column);
        let op = Operation::new(
            m,
            OpKind::AddForeignKey,
            Some(f.column),
            format!("add foreign key {name} → {}", fk.target_table),
            vec![format!("ALTER TABLE {table} ADD {}", fk.constraint())],
            vec![ddl::drop_constraint(&table, &constraint)],
        );
        let hit = self.populated();
        self.ops.push(if hit {
            op.rule(Rule::FkWithoutNotValid.hit(name))
        } else {
            op
        });
    }

    /// `CREATE UNIQUE INDEX uq_<table>_<column> ON .. (cols)`.
    fn add_unique(&mut self, column: &str, cols: &[&str]) {
        let (d, m) = (self.d, self.m);
        let table = self.table.clone();
        let name = format!("{}.{}", m.table, column);
        let uq = quote(&ddl::unique_name(m.table, column));
        let op = Operation::new(
            m,
            OpKind::AddUnique,
            Some(column),
            format!("add unique constraint on {name}{}", per_tenant(cols)),
            vec![format!(
                "CREATE UNIQUE INDEX {uq} ON {table} ({})",
                ddl::quote_list(cols)
            )],
            vec![ddl::drop_index(d, &uq)],
        );
        let hit = self.populated();
        self.ops.push(if hit {
            op.rule(Rule::UniqueLock.hit(name))
        } else {
            op
        });
    }

    /// Drops the unique constraint `name` (on `cols`) of `column` (PostgreSQL;
    /// SQLite rebuilds the table instead).
    fn drop_unique_constraint(&mut self, column: &str, name: &str, cols: &[&str]) {
        let m = self.m;
        let table = self.table.clone();
        self.ops.push(
            Operation::new(
                m,
                OpKind::DropUnique,
                Some(column),
                format!(
                    "drop unique constraint on {}.{column}{}",
                    m.table,
                    per_tenant(cols)
                ),
                vec![ddl::drop_constraint(&table, &quote(name))],
                vec![format!(
                    "ALTER TABLE {table} ADD CONSTRAINT {} UNIQUE ({})",
                    quote(name),
                    ddl::quote_list(cols)
                )],
            )
            .low(),
        );
    }

    /// Drops the unique index `index` (on `cols`) of `column`.
    fn drop_unique(&mut self, column: &str, index: &str, cols: &[&str]) {
        let (d, m) = (self.d, self.m);
        let table = self.table.clone();
        self.ops.push(
            Operation::new(
                m,
                OpKind::DropUnique,
                Some(column),
                format!(
                    "drop unique index on {}.{column}{}",
                    m.table,
                    per_tenant(cols)
                ),
                vec![ddl::drop_index(d, &quote(index))],
                vec![format!(
                    "CREATE UNIQUE INDEX {} ON {table} ({})",
                    quote(index),
                    ddl::quote_list(cols)
                )],
            )
            .low(),
        );
    }
}

/// `" per tenant"` for a composite key.
fn per_tenant(cols: &[&str]) -> &'static str {
    if cols.len() > 1 {
        " per tenant"
    } else {
        ""
    }
}

/// SQLite's documented way to change what ALTER TABLE cannot: create the
/// new shape, copy the common columns (and `fill` new ones with a
/// literal), drop the old table, rename. Triggers go and come back around
/// it: SQLite's rename re-reads every trigger, and one that names a table
/// missing at that moment (the `set_null` triggers of this table's
/// references, which sit on other tables) fails it.
fn rebuild_table(
    d: Dialect,
    m: &'static ModelSchema,
    t: &LiveTable,
    live: &LiveSchema,
    lookup: &dyn Fn(&str) -> Option<&'static ModelSchema>,
    fill: &[(&'static str, String)],
) -> Operation {
    // This table's own `set_null` triggers: named after it, on other tables.
    let own = format!("dataflow_set_null_{}_", m.table);
    let referring: Vec<&super::LiveTrigger> = live
        .values()
        .flat_map(|lt| lt.triggers.iter())
        .filter(|tr| tr.name.starts_with(&own))
        .collect();
    let drop_trigger = |name: &str| format!("DROP TRIGGER IF EXISTS {}", quote(name));
    let tmp = format!("__dataflow_new_{}", m.table);
    let mut up: Vec<String> = ddl::create_table_as(d, m, &tmp, lookup)
        .into_iter()
        .take(1)
        .collect();
    let common: Vec<(&str, &str)> = m
        .fields
        .iter()
        .filter_map(|f| {
            if t.column(f.column).is_some() {
                Some((f.column, f.column))
            } else {
                f.renamed_from
                    .filter(|o| t.column(o).is_some())
                    .map(|o| (f.column, o))
            }
        })
        .collect();
    let new_cols = common
        .iter()
        .map(|(n, _)| quote(n))
        .collect::<Vec<_>>()
        .join(", ");
    let old_cols = common
        .iter()
        .map(|(_, o)| quote(o))
        .collect::<Vec<_>>()
        .join(", ");
    let (mut into, mut from) = (new_cols.clone(), old_cols.clone());
    for (col, literal) in fill {
        into.push_str(&format!(", {}", quote(col)));
        from.push_str(&format!(", {literal}"));
    }
    up.push(format!(
        "INSERT INTO {} ({into}) SELECT {from} FROM {}",
        quote(&tmp),
        quote(m.table)
    ));
    up.extend(referring.iter().map(|tr| drop_trigger(&tr.name)));
    up.push(format!("DROP TABLE {}", quote(m.table)));
    up.push(format!(
        "ALTER TABLE {} RENAME TO {}",
        quote(&tmp),
        quote(m.table)
    ));
    // Dropping the table dropped the triggers on it: the ones other models
    // own come back as they were; this model's own come with its new shape
    // (with its indexes), if it still wants them.
    up.extend(
        t.triggers
            .iter()
            .filter(|tr| !tr.name.starts_with(&own))
            .map(|tr| tr.sql.clone()),
    );
    let rest: Vec<String> = ddl::create_table(d, m, lookup)
        .into_iter()
        .skip(1)
        .collect();
    let made: Vec<String> = m
        .fields
        .iter()
        .filter_map(|f| ddl::foreign_key(d, m, f, lookup)?.trigger)
        .map(|tr| tr.name)
        .collect();
    up.extend(rest);
    let mut down = Vec::new();
    if let Some(orig) = &t.create_sql {
        let back = format!("__dataflow_old_{}", m.table);
        if let Some(i) = orig.find('(') {
            down.push(format!("CREATE TABLE {} {}", quote(&back), &orig[i..]));
            down.push(format!(
                "INSERT INTO {} ({old_cols}) SELECT {new_cols} FROM {}",
                quote(&back),
                quote(m.table)
            ));
            down.extend(made.iter().map(|name| drop_trigger(name)));
            down.push(format!("DROP TABLE {}", quote(m.table)));
            down.push(format!(
                "ALTER TABLE {} RENAME TO {}",
                quote(&back),
                quote(m.table)
            ));
            for idx in &t.indexes {
                let cols = idx
                    .columns
                    .iter()
                    .map(|c| quote(c))
                    .collect::<Vec<_>>()
                    .join(", ");
                down.push(format!(
                    "CREATE {}INDEX {} ON {} ({cols})",
                    if idx.unique { "UNIQUE " } else { "" },
                    quote(&idx.name),
                    quote(m.table)
                ));
            }
            let mut again: Vec<&super::LiveTrigger> = t.triggers.iter().collect();
            again.extend(referring.iter().filter(|tr| !t.triggers.contains(tr)));
            down.extend(again.into_iter().map(|tr| tr.sql.clone()));
        }
    }
    Operation::new(m, OpKind::RebuildTable, None, String::new(), up, down)
}

/// Models ordered so every foreign-key target comes before its referrers.
pub(crate) fn creation_order(models: &[&'static ModelSchema]) -> Vec<&'static ModelSchema> {
    let mut done: Vec<&'static ModelSchema> = Vec::with_capacity(models.len());
    let mut pending: Vec<&'static ModelSchema> = models.to_vec();
    while !pending.is_empty() {
        let before = pending.len();
        pending.retain(|m| {
            let ready = m
                .fields
                .iter()
                .filter_map(|f| f.references)
                .all(|fk| fk.model == m.name || done.iter().any(|d| d.name == fk.model));
            if ready {
                done.push(m);
            }
            !ready
        });
        if pending.len() == before {
            // A reference cycle: create the rest in any order (SQLite and
            // PostgreSQL both accept it when the tables come in one transaction
            // on SQLite; on PostgreSQL the cycle must be broken by a nullable FK).
            done.append(&mut pending);
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::ddl::tests::{AUTHOR, POST};
    use crate::migrate::introspect::LiveIndex;
    use std::str::FromStr;

    /// `posts` as an older version left it: `title` unconstrained text, no
    /// `body` or `author_id`, no default on `published`, no index on
    /// `status`, and a `legacy` column nobody knows.
    fn old_posts(d: Dialect) -> LiveTable {
        let col = |name: &str, f: Option<&FieldSchema>| LiveColumn {
            name: name.into(),
            ty: f.map_or("text".into(), |f| ddl::expected_type(d, f)),
            nullable: f.is_none_or(|f| f.nullable),
            default: f.and_then(|f| expected_default(d, f)),
            primary_key: name == "id",
            unique: false,
        };
        let field = |name: &str| POST.field(name);
        LiveTable {
            name: "posts".into(),
            columns: vec![
                col("id", field("id")),
                LiveColumn {
                    nullable: false,
                    ..col("title", None)
                },
                LiveColumn {
                    default: None,
                    ..col("published", field("published"))
                },
                col("status", field("status")),
                col("score", field("score")),
                col("published_at", field("published_at")),
                col("legacy", None),
            ],
            indexes: vec![LiveIndex {
                name: "idx_posts_legacy".into(),
                columns: vec!["legacy".into()],
                unique: false,
            }],
            foreign_keys: Vec::new(),
            create_sql: Some("CREATE TABLE posts (id TEXT PRIMARY KEY, title TEXT NOT NULL, published INTEGER NOT NULL, status TEXT NOT NULL DEFAULT 'it''s new', score REAL NOT NULL, published_at TEXT NOT NULL, legacy TEXT)".into()),
            primary_key: vec!["id".into()],
            primary_key_name: None,
            unique_constraints: Vec::new(),
            row_level_security: false,
            policies: Vec::new(),
            change_trigger: false,
            triggers: Vec::new(),
        }
    }

    fn plan_text(d: Dialect) -> String {
        let mut live = LiveSchema::new();
        live.insert("posts".into(), old_posts(d));
        let plan = plan(d, &[&AUTHOR, &POST], &live, &mut |_| true, &|_| None);
        let mut out = String::new();
        for op in &plan.operations {
            let rules: Vec<&str> = op.rules.iter().map(|r| r.rule.as_str()).collect();
            out.push_str(&format!(
                "{:?} {} [{}: {}]\n",
                op.kind,
                op.summary,
                op.risk,
                rules.join(", ")
            ));
            for s in &op.up {
                out.push_str(&format!("  up:   {s}\n"));
            }
            for s in &op.down {
                out.push_str(&format!("  down: {s}\n"));
            }
        }
        for drift in &plan.drift {
            out.push_str(&format!("drift: {}\n", drift.message));
        }
        out
    }

    #[test]
    fn changes_to_a_populated_table_on_postgres() {
        insta::assert_snapshot!(plan_text(Dialect::Postgres));
    }

    #[test]
    fn changes_to_a_populated_table_on_sqlite_are_one_rebuild() {
        insta::assert_snapshot!(plan_text(Dialect::Sqlite));
    }

    #[test]
    fn rules_round_trip_by_name() {
        for r in Rule::ALL {
            assert_eq!(Rule::from_str(r.as_str()).unwrap(), r);
            assert!(!r.reason().is_empty());
            assert!(r.level() > RiskLevel::Low, "{r} needs approval");
        }
    }

    #[test]
    fn an_unknown_rule_name_is_a_validation_error_naming_the_rules() {
        let e = Rule::from_str("data_los").unwrap_err();
        assert_eq!(e.code(), ErrorCode::Validation);
        assert!(
            e.message()
                .starts_with("unknown risk rule `data_los` (did you mean `data_loss`?)"),
            "{e}"
        );
        for r in Rule::ALL {
            assert!(e.message().contains(r.as_str()), "{e}");
        }
        assert!(Rule::from_str("").is_err());
        assert!("High".parse::<RiskLevel>().is_err());
        assert_eq!("high".parse::<RiskLevel>().unwrap(), RiskLevel::High);
    }

    #[test]
    fn narrowing_changes_are_recognized() {
        assert!(narrowing("bigint", "integer"));
        assert!(!narrowing("integer", "bigint"));
        assert!(narrowing("varchar(50)", "varchar(20)"));
        assert!(!narrowing("varchar(20)", "text"));
        assert!(narrowing("text", "varchar(20)"));
        assert!(narrowing("text", "integer"));
    }
}
