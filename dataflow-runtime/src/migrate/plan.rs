//! The planner: compiled schemas against the live database → typed
//! operations, each with generated up/down SQL, a risk level and the rules
//! that set it.

use super::introspect::{normalize_default, LiveColumn, LiveSchema, LiveTable};
use crate::schema::{FieldSchema, FieldType, ModelSchema};
use crate::sql::{expects_index, index_name, quote, Dialect};
use serde::Serialize;

/// How risky an operation is. `auto_migrate` applies `Safe` and `Low` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskLevel {
    Safe,
    Low,
    Medium,
    High,
    Destructive,
}

impl RiskLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            RiskLevel::Safe => "safe",
            RiskLevel::Low => "low",
            RiskLevel::Medium => "medium",
            RiskLevel::High => "high",
            RiskLevel::Destructive => "destructive",
        }
    }

    pub fn parse(s: &str) -> Option<RiskLevel> {
        [
            RiskLevel::Safe,
            RiskLevel::Low,
            RiskLevel::Medium,
            RiskLevel::High,
            RiskLevel::Destructive,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// A risk rule that applies to an operation, with its one-line reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleHit {
    pub rule: &'static str,
    pub level: RiskLevel,
    pub reason: String,
}

/// The rules, their levels and what they mean.
pub const RULES: &[(&str, RiskLevel, &str)] = &[
    (
        "data_loss",
        RiskLevel::Destructive,
        "drops stored data that cannot be recovered",
    ),
    (
        "table_rewrite",
        RiskLevel::High,
        "rewrites the whole table (slow, locks it, needs disk)",
    ),
    (
        "narrowing_type_change",
        RiskLevel::Destructive,
        "the new type cannot hold every old value",
    ),
    (
        "not_null_without_default",
        RiskLevel::High,
        "a NOT NULL column without a default cannot be added to a table with rows",
    ),
    (
        "not_null_on_existing",
        RiskLevel::Medium,
        "fails if existing rows hold NULL",
    ),
    (
        "breaking_rename",
        RiskLevel::Medium,
        "clients still using the old column name break",
    ),
    (
        "index_without_concurrently",
        RiskLevel::Medium,
        "CREATE INDEX without CONCURRENTLY blocks writes while it builds",
    ),
    (
        "unique_lock",
        RiskLevel::Medium,
        "building a unique index locks the table and fails on duplicates",
    ),
    (
        "fk_without_not_valid",
        RiskLevel::Medium,
        "adding a foreign key without NOT VALID scans and locks both tables",
    ),
];

fn hit(rule: &'static str, detail: impl Into<String>) -> RuleHit {
    let (_, level, reason) = RULES
        .iter()
        .find(|(r, _, _)| *r == rule)
        .copied()
        .unwrap_or((rule, RiskLevel::High, ""));
    let detail = detail.into();
    RuleHit {
        rule,
        level,
        reason: if detail.is_empty() {
            reason.to_string()
        } else {
            format!("{reason}: {detail}")
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    CreateTable,
    AddColumn,
    DropColumn,
    RenameColumn,
    AlterColumnType,
    SetNotNull,
    DropNotNull,
    SetDefault,
    AddIndex,
    DropIndex,
    AddUnique,
    DropUnique,
    AddForeignKey,
    DropForeignKey,
    /// SQLite: recreate the table to change what `ALTER TABLE` cannot.
    RebuildTable,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Operation {
    pub model: String,
    pub table: String,
    pub kind: OpKind,
    pub column: Option<String>,
    /// One line for people: "add column users.nickname TEXT NULL".
    pub summary: String,
    pub up: Vec<String>,
    pub down: Vec<String>,
    pub risk: RiskLevel,
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
    pub table: String,
    pub column: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct MigrationPlan {
    pub operations: Vec<Operation>,
    pub drift: Vec<Drift>,
}

impl MigrationPlan {
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    pub fn risk(&self) -> RiskLevel {
        self.operations
            .iter()
            .map(|o| o.risk)
            .max()
            .unwrap_or(RiskLevel::Safe)
    }

    /// Every rule hit in the plan, once.
    pub fn rules(&self) -> Vec<&'static str> {
        let mut rules: Vec<&'static str> = self
            .operations
            .iter()
            .flat_map(|o| o.rules.iter().map(|r| r.rule))
            .collect();
        rules.sort_unstable();
        rules.dedup();
        rules
    }
}

/// The live type a field should have, as introspection reports it.
pub fn expected_type(d: Dialect, f: &FieldSchema) -> String {
    match d {
        Dialect::Sqlite => d.column_type(f).to_ascii_lowercase(),
        Dialect::Postgres => match f.ty {
            FieldType::String => f
                .max_length
                .map_or("text".into(), |n| format!("varchar({n})")),
            FieldType::I16 => "smallint".into(),
            FieldType::I32 => "integer".into(),
            FieldType::I64 => "bigint".into(),
            FieldType::F32 => "real".into(),
            FieldType::F64 => "double precision".into(),
            FieldType::Bool => "boolean".into(),
            FieldType::DateTime => "timestamptz".into(),
            FieldType::Date => "date".into(),
            FieldType::Uuid => "uuid".into(),
            FieldType::Json => "jsonb".into(),
            FieldType::Bytes => "bytea".into(),
        },
    }
}

fn expected_default(d: Dialect, f: &FieldSchema) -> Option<String> {
    f.default.map(|v| normalize_default(&d.default_literal(v)))
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

fn unique_name(table: &str, column: &str) -> String {
    format!("uq_{table}_{column}")
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
    let lookup = |name: &str| models.iter().copied().find(|m| m.name == name);
    let mut out = MigrationPlan::default();
    for m in creation_order(models) {
        match live.get(m.table) {
            None => {
                let up = d.create_table(m, lookup);
                out.operations.push(
                    Operation::new(
                        m,
                        OpKind::CreateTable,
                        None,
                        format!("create table {}", m.table),
                        up,
                        vec![format!("DROP TABLE {}", quote(m.table))],
                    )
                    .lossy_down(),
                );
            }
            Some(t) => plan_table(d, m, t, has_rows, known, lookup, &mut out),
        }
    }
    out
}

/// ADD COLUMN's definition. A unique constraint cannot be added in place
/// (SQLite), so it comes as a separate unique index.
fn column_def(
    d: Dialect,
    f: &FieldSchema,
    lookup: impl Fn(&str) -> Option<&'static ModelSchema>,
) -> String {
    d.column_def(
        &FieldSchema {
            unique: false,
            ..*f
        },
        lookup,
    )
}

/// Whether a table holds rows, asked at most once.
struct Populated {
    table: &'static str,
    known: Option<bool>,
}

impl Populated {
    fn check(&mut self, has_rows: &mut dyn FnMut(&str) -> bool) -> bool {
        *self.known.get_or_insert_with(|| has_rows(self.table))
    }
}

#[allow(clippy::too_many_arguments)]
fn plan_table(
    d: Dialect,
    m: &'static ModelSchema,
    t: &LiveTable,
    has_rows: &mut dyn FnMut(&str) -> bool,
    known: &dyn Fn(&str) -> Option<Vec<String>>,
    lookup: impl Fn(&str) -> Option<&'static ModelSchema> + Copy,
    out: &mut MigrationPlan,
) {
    let table = quote(m.table);
    let mut populated = Populated {
        table: m.table,
        known: None,
    };
    let mut ops: Vec<Operation> = Vec::new();
    // What SQLite's ALTER TABLE cannot do, collected into one rebuild.
    let mut rebuild: Vec<(String, Vec<RuleHit>)> = Vec::new();
    let mut renamed_sources: Vec<&str> = Vec::new();

    for f in m.fields {
        let Some(live) = t.column(f.column) else {
            if let Some(old) = f
                .renamed_from
                .filter(|old| t.column(old).is_some() && m.field(old).is_none())
            {
                renamed_sources.push(old);
                ops.push(
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
                    .rule(hit(
                        "breaking_rename",
                        format!("{}.{old} becomes {}", m.table, f.column),
                    )),
                );
                continue;
            }
            let needs_value = !f.nullable && f.default.is_none();
            let summary = format!(
                "add column {}.{} {}{}",
                m.table,
                f.column,
                d.column_type(f),
                if f.nullable { " NULL" } else { " NOT NULL" }
            );
            if needs_value && populated.check(has_rows) {
                ops.push(
                    Operation::new(
                        m,
                        OpKind::AddColumn,
                        Some(f.column),
                        summary,
                        vec![format!(
                            "ALTER TABLE {table} ADD COLUMN {}",
                            column_def(d, f, lookup)
                        )],
                        vec![format!(
                            "ALTER TABLE {table} DROP COLUMN {}",
                            quote(f.column)
                        )],
                    )
                    .rule(hit(
                        "not_null_without_default",
                        format!("{}.{} on a table with rows", m.table, f.column),
                    ))
                    .lossy_down(),
                );
                continue;
            }
            if d == Dialect::Sqlite && (needs_value || f.unique) {
                // SQLite cannot add NOT NULL-without-default or UNIQUE columns in place.
                rebuild.push((summary, Vec::new()));
                continue;
            }
            let mut up = vec![format!(
                "ALTER TABLE {table} ADD COLUMN {}",
                column_def(d, f, lookup)
            )];
            if f.unique {
                up.push(format!(
                    "CREATE UNIQUE INDEX {} ON {table} ({})",
                    quote(&unique_name(m.table, f.column)),
                    quote(f.column)
                ));
            }
            if expects_index(f) {
                up.push(format!(
                    "CREATE INDEX {} ON {table} ({})",
                    quote(&index_name(m.table, f.column)),
                    quote(f.column)
                ));
            }
            let mut down = Vec::new();
            if expects_index(f) {
                down.push(format!(
                    "DROP INDEX {}",
                    quote(&index_name(m.table, f.column))
                ));
            }
            if f.unique {
                down.push(format!(
                    "DROP INDEX {}",
                    quote(&unique_name(m.table, f.column))
                ));
            }
            down.push(format!(
                "ALTER TABLE {table} DROP COLUMN {}",
                quote(f.column)
            ));
            let op = Operation::new(m, OpKind::AddColumn, Some(f.column), summary, up, down)
                .lossy_down();
            ops.push(if needs_value { op.low() } else { op });
            continue;
        };
        if f.primary_key || live.primary_key {
            continue;
        }
        plan_column(
            d,
            m,
            f,
            live,
            t,
            &mut populated,
            has_rows,
            lookup,
            &mut ops,
            &mut rebuild,
        );
    }

    let known_columns = known(m.table);
    for live in &t.columns {
        if m.fields.iter().any(|f| f.column == live.name)
            || renamed_sources.contains(&live.name.as_str())
        {
            continue;
        }
        let explained = known_columns
            .as_ref()
            .is_some_and(|k| k.contains(&live.name));
        if !explained {
            out.drift.push(Drift {
                table: m.table.to_string(),
                column: Some(live.name.clone()),
                message: format!(
                    "{}.{} exists in the database but in neither the model {} nor the registry (changed by another tool?)",
                    m.table, live.name, m.name
                ),
            });
        }
        let constrained = live.unique
            || t.foreign_keys.iter().any(|fk| fk.column == live.name)
            || t.indexes.iter().any(|i| i.columns.contains(&live.name));
        let summary = format!("drop column {}.{}", m.table, live.name);
        if d == Dialect::Sqlite && constrained {
            rebuild.push((
                summary,
                vec![hit("data_loss", format!("{}.{}", m.table, live.name))],
            ));
            continue;
        }
        let mut add_back = format!(
            "ALTER TABLE {table} ADD COLUMN {} {}",
            quote(&live.name),
            live.ty.to_uppercase()
        );
        if let Some(def) = &live.default {
            add_back.push_str(&format!(" DEFAULT {def}"));
        }
        ops.push(
            Operation::new(
                m,
                OpKind::DropColumn,
                Some(&live.name),
                summary,
                vec![format!(
                    "ALTER TABLE {table} DROP COLUMN {}",
                    quote(&live.name)
                )],
                vec![add_back],
            )
            .rule(hit("data_loss", format!("{}.{}", m.table, live.name))),
        );
    }

    if !rebuild.is_empty() {
        let mut op = rebuild_table(d, m, t, lookup);
        op.summary = format!(
            "rebuild table {} ({})",
            m.table,
            rebuild
                .iter()
                .map(|(s, _)| s.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        );
        let mut rules: Vec<RuleHit> = rebuild.into_iter().flat_map(|(_, r)| r).collect();
        if populated.check(has_rows) {
            rules.push(hit(
                "table_rewrite",
                format!("{} is copied into a new table", m.table),
            ));
        }
        for r in rules {
            op = op.rule(r);
        }
        // The rebuild replaces the in-place operations of this table.
        ops.retain(|o| o.kind == OpKind::RenameColumn);
        ops.push(op.low());
    }
    out.operations.extend(ops);
}

#[allow(clippy::too_many_arguments)]
fn plan_column(
    d: Dialect,
    m: &'static ModelSchema,
    f: &FieldSchema,
    live: &LiveColumn,
    t: &LiveTable,
    populated: &mut Populated,
    has_rows: &mut dyn FnMut(&str) -> bool,
    lookup: impl Fn(&str) -> Option<&'static ModelSchema> + Copy,
    ops: &mut Vec<Operation>,
    rebuild: &mut Vec<(String, Vec<RuleHit>)>,
) {
    let table = quote(m.table);
    let col = quote(f.column);
    let name = format!("{}.{}", m.table, f.column);
    let want_ty = expected_type(d, f);
    if live.ty != want_ty {
        let mut rules = vec![hit(
            "table_rewrite",
            format!("{name}: {} → {want_ty}", live.ty),
        )];
        if narrowing(&live.ty, &want_ty) {
            rules.push(hit(
                "narrowing_type_change",
                format!("{name}: {} → {want_ty}", live.ty),
            ));
        }
        let summary = format!("change type of {name} from {} to {want_ty}", live.ty);
        if d == Dialect::Sqlite {
            rebuild.push((summary, rules));
        } else {
            let mut op =
                Operation::new(
                    m,
                    OpKind::AlterColumnType,
                    Some(f.column),
                    summary,
                    [alter_type(&table, &col, &d.column_type(f))]
                        .into_iter()
                        .chain(f.default.map(|v| {
                            format!(
                                "ALTER TABLE {table} ALTER COLUMN {col} SET DEFAULT {}",
                                d.default_literal(v)
                            )
                        }))
                        .collect(),
                    [alter_type(&table, &col, &live.ty.to_uppercase())]
                        .into_iter()
                        .chain(live.default.as_ref().map(|v| {
                            format!("ALTER TABLE {table} ALTER COLUMN {col} SET DEFAULT {v}")
                        }))
                        .collect(),
                );
            for r in rules {
                op = op.rule(r);
            }
            ops.push(op);
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
            rebuild.push((
                summary,
                if f.nullable {
                    vec![]
                } else {
                    vec![hit("not_null_on_existing", name.clone())]
                },
            ));
        } else if f.nullable {
            ops.push(Operation::new(
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
            ops.push(if populated.check(has_rows) {
                op.rule(hit("not_null_on_existing", name.clone()))
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
            rebuild.push((summary, Vec::new()));
        } else {
            let set = |v: &Option<String>| match v {
                Some(v) => format!("ALTER TABLE {table} ALTER COLUMN {col} SET DEFAULT {v}"),
                None => format!("ALTER TABLE {table} ALTER COLUMN {col} DROP DEFAULT"),
            };
            let want_sql = f.default.map(|v| d.default_literal(v));
            ops.push(Operation::new(
                m,
                OpKind::SetDefault,
                Some(f.column),
                summary,
                vec![set(&want_sql)],
                vec![set(&live.default)],
            ));
        }
    }
    if f.unique && !live.unique {
        let uq = quote(&unique_name(m.table, f.column));
        let op = Operation::new(
            m,
            OpKind::AddUnique,
            Some(f.column),
            format!("add unique constraint on {name}"),
            vec![format!("CREATE UNIQUE INDEX {uq} ON {table} ({col})")],
            vec![format!("DROP INDEX {uq}")],
        );
        ops.push(if populated.check(has_rows) {
            op.rule(hit("unique_lock", name.clone()))
        } else {
            op
        });
    } else if !f.unique && live.unique {
        let uq = unique_name(m.table, f.column);
        if let Some(idx) = t
            .indexes
            .iter()
            .find(|i| i.unique && i.columns == [f.column])
        {
            ops.push(
                Operation::new(
                    m,
                    OpKind::DropUnique,
                    Some(f.column),
                    format!("drop unique index on {name}"),
                    vec![format!("DROP INDEX {}", quote(&idx.name))],
                    vec![format!(
                        "CREATE UNIQUE INDEX {} ON {table} ({col})",
                        quote(&idx.name)
                    )],
                )
                .low(),
            );
        } else if d == Dialect::Sqlite {
            rebuild.push((format!("drop unique constraint on {name}"), Vec::new()));
        } else {
            ops.push(
                Operation::new(
                    m,
                    OpKind::DropUnique,
                    Some(f.column),
                    format!("drop unique constraint on {name}"),
                    vec![format!(
                        "ALTER TABLE {table} DROP CONSTRAINT {}",
                        quote(&format!("{}_{}_key", m.table, f.column))
                    )],
                    vec![format!(
                        "CREATE UNIQUE INDEX {} ON {table} ({col})",
                        quote(&uq)
                    )],
                )
                .low(),
            );
        }
    }
    let has_index = t
        .indexes
        .iter()
        .any(|i| !i.unique && i.columns == [f.column]);
    if expects_index(f) && !has_index {
        let idx = quote(&index_name(m.table, f.column));
        let op = Operation::new(
            m,
            OpKind::AddIndex,
            Some(f.column),
            format!("add index on {name}"),
            vec![format!("CREATE INDEX {idx} ON {table} ({col})")],
            vec![format!("DROP INDEX {idx}")],
        );
        ops.push(if d == Dialect::Postgres && populated.check(has_rows) {
            op.rule(hit("index_without_concurrently", name.clone()))
        } else {
            op
        });
    } else if !expects_index(f) && has_index {
        if let Some(idx) = t
            .indexes
            .iter()
            .find(|i| !i.unique && i.columns == [f.column])
        {
            ops.push(
                Operation::new(
                    m,
                    OpKind::DropIndex,
                    Some(f.column),
                    format!("drop index {}", idx.name),
                    vec![format!("DROP INDEX {}", quote(&idx.name))],
                    vec![format!(
                        "CREATE INDEX {} ON {table} ({col})",
                        quote(&idx.name)
                    )],
                )
                .low(),
            );
        }
    }
    let live_fk = t.foreign_keys.iter().find(|fk| fk.column == f.column);
    let want_fk = f
        .references
        .and_then(|fk| lookup(fk.model).map(|target| (target, fk)));
    let same = match (live_fk, want_fk) {
        (None, None) => true,
        (Some(l), Some((target, fk))) => {
            l.target_table == target.table
                && l.target_column == target.primary_key().column
                && l.on_delete == fk.on_delete.sql()
        }
        _ => false,
    };
    if !same {
        let constraint = quote(&format!("{}_{}_fkey", m.table, f.column));
        if d == Dialect::Sqlite {
            rebuild.push((format!("change foreign key of {name}"), Vec::new()));
            return;
        }
        if live_fk.is_some() {
            ops.push(
                Operation::new(
                    m,
                    OpKind::DropForeignKey,
                    Some(f.column),
                    format!("drop foreign key on {name}"),
                    vec![format!("ALTER TABLE {table} DROP CONSTRAINT {constraint}")],
                    vec![],
                )
                .low(),
            );
        }
        if let Some((target, fk)) = want_fk {
            let op = Operation::new(
                m,
                OpKind::AddForeignKey,
                Some(f.column),
                format!("add foreign key {name} → {}", target.table),
                vec![format!(
                    "ALTER TABLE {table} ADD CONSTRAINT {constraint} FOREIGN KEY ({col}) REFERENCES {} ({}) ON DELETE {}",
                    quote(target.table),
                    quote(target.primary_key().column),
                    fk.on_delete.sql()
                )],
                vec![format!("ALTER TABLE {table} DROP CONSTRAINT {constraint}")],
            );
            ops.push(if populated.check(has_rows) {
                op.rule(hit("fk_without_not_valid", name.clone()))
            } else {
                op
            });
        }
    }
}

/// PostgreSQL type change through text, which every scalar type casts to
/// and from (values that do not convert fail the migration, not corrupt it).
fn alter_type(table: &str, col: &str, ty: &str) -> String {
    format!("ALTER TABLE {table} ALTER COLUMN {col} DROP DEFAULT, ALTER COLUMN {col} TYPE {ty} USING {col}::text::{ty}")
}

/// SQLite's documented way to change what ALTER TABLE cannot: create the
/// new shape, copy the common columns, drop the old table, rename.
fn rebuild_table(
    d: Dialect,
    m: &'static ModelSchema,
    t: &LiveTable,
    lookup: impl Fn(&str) -> Option<&'static ModelSchema> + Copy,
) -> Operation {
    let tmp = format!("__dataflow_new_{}", m.table);
    let mut up: Vec<String> = d
        .create_table_as(m, &tmp, lookup)
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
    up.push(format!(
        "INSERT INTO {} ({new_cols}) SELECT {old_cols} FROM {}",
        quote(&tmp),
        quote(m.table)
    ));
    up.push(format!("DROP TABLE {}", quote(m.table)));
    up.push(format!(
        "ALTER TABLE {} RENAME TO {}",
        quote(&tmp),
        quote(m.table)
    ));
    up.extend(d.create_table(m, lookup).into_iter().skip(1));
    let mut down = Vec::new();
    if let Some(orig) = &t.create_sql {
        let back = format!("__dataflow_old_{}", m.table);
        if let Some(i) = orig.find('(') {
            down.push(format!("CREATE TABLE {} {}", quote(&back), &orig[i..]));
            let live_common: Vec<&(&str, &str)> = common.iter().collect();
            let cols_new = live_common
                .iter()
                .map(|(n, _)| quote(n))
                .collect::<Vec<_>>()
                .join(", ");
            let cols_old = live_common
                .iter()
                .map(|(_, o)| quote(o))
                .collect::<Vec<_>>()
                .join(", ");
            down.push(format!(
                "INSERT INTO {} ({cols_old}) SELECT {cols_new} FROM {}",
                quote(&back),
                quote(m.table)
            ));
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
