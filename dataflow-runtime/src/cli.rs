//! The command line for models and migrations, as a binary (`dataflow`)
//! and embeddable in the user's own binary:
//!
//! ```no_run
//! # async fn f(db: dataflow::DataFlow) {
//! let code = dataflow::cli::run(&db).await;   // parses std::env::args()
//! std::process::exit(code);
//! # }
//! ```
//!
//! `models`, `migrate status|plan|apply|rollback|generate|unlock`, `audit`
//! (the audit log; `audit purge` applies the retention), `monitor` (a live
//! view of the metrics, of this database or of a nexus at `--url`). Output is
//! a readable table; `--json` prints JSON for machines. Exit codes come
//! from [`ErrorCode::exit_code`](crate::ErrorCode::exit_code).

use crate::error::{Error, Result};
use crate::migrate::{
    ApplyRequest, HistoryEntry, MigrationPlan, MigrationStatus, RiskLevel, RollbackRequest, Rule,
};
use crate::DataFlow;
use clap::{Parser, Subcommand};
use serde_json::json;
use std::path::PathBuf;

/// The `dataflow` command line: models and migrations.
#[derive(Debug, Parser)]
#[command(
    name = "dataflow",
    about = "Models and migrations of a dataflow database"
)]
pub struct Cli {
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The `dataflow` commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The models and versions in the persisted registry.
    Models,
    /// The audit log, newest first: who changed which record, and how.
    /// Filters combine; `audit purge` deletes old rows.
    Audit(AuditArgs),
    /// A live view of the metrics (ops/s, p50/p99 per model × operation,
    /// errors, pool, cache hit ratio), refreshed every second; `q` or Ctrl-C
    /// quits. `--url` watches a running nexus; `--once --json` prints one
    /// interval for scripts.
    Monitor(MonitorArgs),
    /// Plan, apply and undo schema changes.
    Migrate {
        /// Which migration step.
        #[command(subcommand)]
        command: MigrateCommand,
    },
}

/// `dataflow audit`: filters of the listing, or `purge`. The CLI is an
/// operator's tool: it sees every tenant's rows unless `--tenant` narrows them.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    /// `purge`, instead of listing.
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Changes of this model's records.
    #[arg(long)]
    pub model: Option<String>,
    /// Changes of the record with this primary key.
    #[arg(long = "record", value_name = "ID")]
    pub record: Option<String>,
    /// Changes by this actor (`Context::actor`).
    #[arg(long)]
    pub actor: Option<String>,
    /// `create`, `update`, `delete` or `purge`.
    #[arg(long)]
    pub op: Option<String>,
    /// Changes at or after this time: RFC 3339 (`2026-01-31T12:00:00Z`) or an
    /// age (`90s`, `30m`, `12h`, `7d`).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Changes before this time (RFC 3339 or an age).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only this tenant's rows.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Rows per page.
    #[arg(long, default_value_t = 100)]
    pub limit: u64,
    /// The `next` cursor a previous page printed.
    #[arg(long, value_name = "CURSOR")]
    pub after: Option<String>,
}

/// `dataflow monitor`.
#[derive(Debug, clap::Args)]
pub struct MonitorArgs {
    /// A running nexus (`http://host:port`) whose `/metrics` to watch
    /// (default: this program's own database).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// A bearer token for a nexus with auth on.
    #[arg(long)]
    pub token: Option<String>,
    /// Print one interval and exit (with `--json`: as JSON).
    #[arg(long)]
    pub once: bool,
    /// The refresh interval in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub interval_ms: u64,
}

/// The `dataflow audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Delete audit rows older than the retention (`audit_retention`) or `--older-than`.
    Purge {
        /// The age beyond which rows go: `30d`, `12h`, `90m`.
        #[arg(long, value_name = "AGE")]
        older_than: Option<String>,
    },
}

/// The `dataflow migrate` commands.
#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// The history of applied, failed and rolled-back migrations, and what is pending.
    Status,
    /// What it takes to bring the database to the compiled models, with risks and SQL.
    Plan,
    /// Apply the plan. Operations above low risk need `--allow <rule>` for each rule and `--reason`.
    Apply {
        /// A risk rule the plan may break (repeat for several).
        #[arg(long = "allow", value_name = "RULE")]
        allow: Vec<String>,
        /// Why, recorded in the history (needed above low risk).
        #[arg(long)]
        reason: Option<String>,
        /// First apply where it can be thrown away (a copy of the SQLite file, a
        /// rolled-back PostgreSQL transaction), verify it and its down SQL.
        #[arg(long)]
        staging: bool,
        /// The tenant that owns the existing rows of a table that becomes
        /// tenant_scoped (with `--allow tenant_backfill_required`).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Undo applied migrations, newest first.
    Rollback {
        /// Undo every migration after this version.
        #[arg(long)]
        to: Option<String>,
        /// How many to undo (without --to).
        #[arg(long, default_value_t = 1)]
        steps: usize,
        /// `--allow data_loss` permits downs that drop data.
        #[arg(long = "allow", value_name = "RULE")]
        allow: Vec<String>,
        /// Why, recorded in the history (needed with `--allow data_loss`).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Write the plan as reviewable files: `DIR/VERSION_NAME/up.sql` and `down.sql`.
    Generate {
        /// The migration's name (`add_tags`).
        name: String,
        /// The folder of migration files.
        #[arg(long, default_value = "migrations")]
        dir: PathBuf,
        /// The tenant a backfill assigns existing rows to (written into up.sql;
        /// without it the file carries psql's `:'tenant'` variable).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Remove a migration lock left by a crashed process (SQLite).
    Unlock,
}

/// Parses `std::env::args()` and runs the command; returns the exit code.
pub async fn run(db: &DataFlow) -> i32 {
    run_from(db, std::env::args()).await
}

/// Like [`run`] with explicit arguments (the first is the program name).
pub async fn run_from<I, T>(db: &DataFlow, args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match execute(db, &cli).await {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(e) => {
            if cli.json {
                println!("{}", json!({"error": e.to_json()}));
            } else {
                eprintln!("error[{}]: {}", e.code(), e.message());
            }
            i32::from(e.code().exit_code())
        }
    }
}

/// `dataflow monitor --url <nexus>` without a database of its own (the
/// standalone binary): `args` as for [`run_from`], starting with the
/// program name.
pub async fn monitor_from<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let out = match &cli.command {
        Command::Monitor(MonitorArgs {
            url: Some(url),
            token,
            once,
            interval_ms,
        }) => match crate::monitor::Source::remote(url, token.clone()) {
            Ok(source) => {
                crate::monitor::run(
                    source,
                    std::time::Duration::from_millis(*interval_ms),
                    *once,
                    cli.json,
                )
                .await
            }
            Err(e) => Err(e),
        },
        _ => Err(Error::new(
            crate::ErrorCode::Validation,
            "monitor without a database needs --url http://host:port (a running nexus)",
        )),
    };
    match out {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(e) => {
            if cli.json {
                println!("{}", json!({"error": e.to_json()}));
            } else {
                eprintln!("error[{}]: {}", e.code(), e.message());
            }
            i32::from(e.code().exit_code())
        }
    }
}

/// Runs a parsed command and returns what to print.
pub async fn execute(db: &DataFlow, cli: &Cli) -> Result<String> {
    let json_out = cli.json;
    let render = |v: serde_json::Value| {
        format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default())
    };
    match &cli.command {
        Command::Monitor(m) => {
            let source = match &m.url {
                Some(url) => crate::monitor::Source::remote(url, m.token.clone())?,
                None => crate::monitor::Source::Local(db),
            };
            crate::monitor::run(
                source,
                std::time::Duration::from_millis(m.interval_ms),
                m.once,
                json_out,
            )
            .await
        }
        Command::Models => {
            let models = db.migrations().registered().await?;
            if json_out {
                return Ok(render(serde_json::to_value(&models).unwrap_or_default()));
            }
            let rows: Vec<Vec<String>> = models
                .iter()
                .map(|m| {
                    vec![
                        m.name.clone(),
                        m.table.clone(),
                        m.version.to_string(),
                        m.checksum.clone(),
                        m.last_seen.clone(),
                    ]
                })
                .collect();
            Ok(table(
                &["model", "table", "version", "checksum", "last seen"],
                &rows,
            ))
        }
        Command::Audit(args) => audit(db, args, json_out).await,
        Command::Migrate { command } => match command {
            MigrateCommand::Status => {
                let history = db.migrations().history().await?;
                let plan = if db.models().is_empty() {
                    None
                } else {
                    Some(db.migrations().plan().await?)
                };
                if json_out {
                    return Ok(render(json!({"history": history, "pending": plan})));
                }
                let mut out = history_table(&history);
                match plan {
                    Some(p) if p.is_empty() => out.push_str("\nThe database matches the models.\n"),
                    Some(p) => out.push_str(&format!(
                        "\nPending: {} operation(s), risk {}; see `migrate plan`.\n",
                        p.operations.len(),
                        p.risk().as_str()
                    )),
                    None => {}
                }
                Ok(out)
            }
            MigrateCommand::Plan => {
                needs_models(db)?;
                let plan = db.migrations().plan().await?;
                if json_out {
                    return Ok(render(serde_json::to_value(&plan).unwrap_or_default()));
                }
                Ok(plan_text(&plan))
            }
            MigrateCommand::Apply {
                allow,
                reason,
                staging,
                tenant,
            } => {
                needs_models(db)?;
                let request = ApplyRequest {
                    allow: rules(allow)?,
                    reason: reason.clone(),
                    tenant: tenant.clone(),
                };
                let mut out = String::new();
                if *staging {
                    let report = db.migrations().stage_for(&request).await?;
                    out.push_str(&format!("staging passed in {}:\n", report.sandbox));
                    for s in &report.steps {
                        out.push_str(&format!("  - {s}\n"));
                    }
                }
                match db.migrations().apply(request).await? {
                    None => out.push_str("Nothing to apply: the database matches the models.\n"),
                    Some(entry) if json_out => {
                        return Ok(render(serde_json::to_value(&entry).unwrap_or_default()))
                    }
                    Some(entry) => out.push_str(&format!(
                        "Applied {} ({}, risk {}) in {} ms.\n",
                        entry.version,
                        entry.name,
                        entry.risk_str(),
                        entry.duration_ms.unwrap_or_default()
                    )),
                }
                Ok(out)
            }
            MigrateCommand::Rollback {
                to,
                steps,
                allow,
                reason,
            } => {
                let request = RollbackRequest {
                    to: to.clone(),
                    steps: *steps,
                    allow_data_loss: rules(allow)?.contains(&Rule::DataLoss),
                    reason: reason.clone(),
                };
                let undone = db.migrations().rollback(request).await?;
                if json_out {
                    return Ok(render(json!({"rolled_back": undone})));
                }
                Ok(format!("Rolled back {}.\n", undone.join(", ")))
            }
            MigrateCommand::Generate { name, dir, tenant } => {
                needs_models(db)?;
                let plan = db.migrations().plan_for(&tenant_request(tenant)).await?;
                if plan.is_empty() {
                    return Ok("Nothing to generate: the database matches the models.\n".into());
                }
                // The new version sorts after every file in `dir` and every applied migration.
                let applied: Vec<String> = db
                    .migrations()
                    .history()
                    .await?
                    .into_iter()
                    .map(|e| e.version)
                    .collect();
                let path = crate::migrate::write_files(dir, name, &plan, &applied)?;
                if json_out {
                    return Ok(render(json!({"path": path.display().to_string()})));
                }
                Ok(format!(
                    "Wrote {}/up.sql and down.sql ({} operations, risk {}).\n",
                    path.display(),
                    plan.operations.len(),
                    plan.risk().as_str()
                ))
            }
            MigrateCommand::Unlock => {
                let n = db.migrations().unlock().await?;
                Ok(format!("Removed {n} lock row(s).\n"))
            }
        },
    }
}

/// A request that carries only `--tenant`, for planning.
fn tenant_request(tenant: &Option<String>) -> ApplyRequest {
    ApplyRequest {
        tenant: tenant.clone(),
        ..ApplyRequest::new()
    }
}

/// `dataflow audit`: a page of the audit log, or a purge.
async fn audit(db: &DataFlow, args: &AuditArgs, json_out: bool) -> Result<String> {
    let mut context = crate::Context::system().channel("cli");
    if let Some(t) = &args.tenant {
        context = context.tenant(t);
    }
    let db = db.with_context(context);
    if let Some(AuditCommand::Purge { older_than }) = &args.command {
        let age = older_than.as_deref().map(age_arg).transpose()?;
        let n = db.purge_audit(age).await?;
        if json_out {
            return Ok(format!("{}\n", json!({"deleted": n})));
        }
        return Ok(format!("Deleted {n} audit row(s).\n"));
    }
    let mut query = serde_json::Map::new();
    let mut put = |k: &str, v: Option<serde_json::Value>| {
        if let Some(v) = v {
            query.insert(k.into(), v);
        }
    };
    put("model", args.model.clone().map(Into::into));
    put("record_id", args.record.clone().map(Into::into));
    put("actor", args.actor.clone().map(Into::into));
    put("op", args.op.clone().map(Into::into));
    put("since", args.since.as_deref().map(time_arg).transpose()?);
    put("until", args.until.as_deref().map(time_arg).transpose()?);
    put("limit", Some(args.limit.into()));
    put("after", args.after.clone().map(Into::into));
    let page = db.audit_list(serde_json::Value::Object(query)).await?;
    if json_out {
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&page).unwrap_or_default()
        ));
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = page["records"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            // The fields a change touched (an update records only those).
            let image = if r["after"].is_object() {
                &r["after"]
            } else {
                &r["before"]
            };
            let fields: Vec<&str> = image
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            vec![
                text(&r["id"]),
                text(&r["at"]),
                text(&r["actor"]),
                text(&r["tenant"]),
                text(&r["model"]),
                text(&r["op"]),
                text(&r["record_id"]),
                fields.join(", "),
                text(&r["node_id"]),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "id", "at", "actor", "tenant", "model", "op", "record", "fields", "node",
        ],
        &rows,
    );
    if let Some(next) = page["next"].as_str() {
        out.push_str(&format!("\nmore: --after {next}\n"));
    }
    Ok(out)
}

/// An RFC 3339 time, or an age before now (`30m`, `7d`).
fn time_arg(s: &str) -> Result<serde_json::Value> {
    if chrono::DateTime::parse_from_rfc3339(s).is_ok() {
        return Ok(s.into());
    }
    let age = age_arg(s)?;
    let age = chrono::Duration::from_std(age)
        .map_err(|_| Error::new(crate::ErrorCode::Validation, "the age is too large"))?;
    Ok(crate::value::format_datetime(&(crate::value::now() - age)).into())
}

/// `90s`, `30m`, `12h`, `7d`, `2w` as a duration: the ages the CLIs accept
/// (`audit --since`, `migrate history --older-than`, nexus `keys create
/// --expires`). `0s` is an age (purge everything); `None` for anything else,
/// including an overflowing age.
pub fn parse_age(s: &str) -> Option<std::time::Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return None,
    };
    n.checked_mul(unit).map(std::time::Duration::from_secs)
}

/// [`parse_age`], or a validation error that says what is accepted.
fn age_arg(s: &str) -> Result<std::time::Duration> {
    parse_age(s).ok_or_else(|| {
        Error::new(
            crate::ErrorCode::Validation,
            format!(
                "`{}` is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor an age such as 90s, 30m, 12h, 7d or 2w",
                Error::echo(s)
            ),
        )
    })
}

/// `--allow` values as rules; an unknown name is a validation error.
fn rules(allow: &[String]) -> Result<Vec<Rule>> {
    allow.iter().map(|a| a.parse()).collect()
}

/// Planning compares compiled models with the database, so it needs them.
fn needs_models(db: &DataFlow) -> Result<()> {
    if db.models().is_empty() {
        return Err(Error::new(
            crate::ErrorCode::Config,
            "this binary has no compiled models; plan, apply and generate run inside your application: call `dataflow::cli::run(&db)` from it",
        ));
    }
    Ok(())
}

fn plan_text(plan: &MigrationPlan) -> String {
    if plan.is_empty() && plan.drift.is_empty() {
        return "The database matches the models: nothing to do.\n".into();
    }
    let mut out = String::new();
    if !plan.settings.is_empty() && !plan.is_empty() {
        out.push_str("In one transaction that starts with:\n");
        for s in &plan.settings {
            out.push_str(&format!("     {s};\n"));
        }
    }
    for (i, op) in plan.operations.iter().enumerate() {
        out.push_str(&format!(
            "{}. {} — model {} — risk {}\n",
            i + 1,
            op.summary,
            op.model,
            op.risk.as_str()
        ));
        for r in &op.rules {
            out.push_str(&format!("     rule {}: {}\n", r.rule, r.reason));
        }
        for s in &op.up {
            out.push_str(&format!("     up:   {s};\n"));
        }
        for s in &op.down {
            out.push_str(&format!(
                "     down: {s};{}\n",
                if op.down_loses_data {
                    "  (loses data)"
                } else {
                    ""
                }
            ));
        }
    }
    for d in &plan.drift {
        out.push_str(&format!("drift: {}\n", d.message));
    }
    if plan.risk() > RiskLevel::Low {
        let allow: Vec<String> = plan
            .rules()
            .iter()
            .map(|r| format!("--allow {r}"))
            .collect();
        out.push_str(&format!(
            "\nTo apply: migrate apply {} --reason \"...\"\n",
            allow.join(" ")
        ));
    } else if !plan.is_empty() {
        out.push_str(
            "\nAll operations are safe: `migrate apply` (or the next boot) applies them.\n",
        );
    }
    out
}

fn history_table(history: &[HistoryEntry]) -> String {
    let rows: Vec<Vec<String>> = history
        .iter()
        .map(|e| {
            vec![
                e.version.clone(),
                e.name.clone(),
                e.source.to_string(),
                e.status.as_str().to_string(),
                e.risk_str().to_string(),
                e.applied_at.clone().unwrap_or_default(),
                e.duration_ms.map(|d| format!("{d} ms")).unwrap_or_default(),
                e.applied_by.clone(),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "version",
            "name",
            "source",
            "status",
            "risk",
            "applied at",
            "took",
            "by",
        ],
        &rows,
    );
    let rolled_back: Vec<&HistoryEntry> = history
        .iter()
        .filter(|e| e.status == MigrationStatus::RolledBack)
        .collect();
    if !rolled_back.is_empty() {
        out.push('\n');
    }
    for e in rolled_back {
        // Rolled back before reasons were recorded: the columns are empty.
        out.push_str(&format!(
            "{} rolled back at {} by {}: {}\n",
            e.version,
            e.rolled_back_at.as_deref().unwrap_or("?"),
            e.rolled_back_by.as_deref().unwrap_or("?"),
            e.rollback_reason.as_deref().unwrap_or("no reason given")
        ));
    }
    out
}

/// A plain-text table with aligned columns.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s: String = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}  "))
            .collect();
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(headers.to_vec());
    out.push_str(&line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    ));
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_age;
    use std::time::Duration;

    #[test]
    fn ages_parse_with_every_unit_and_nothing_else() {
        let cases = [
            ("0s", Some(0)),
            ("90s", Some(90)),
            ("30m", Some(1_800)),
            ("12h", Some(43_200)),
            ("7d", Some(604_800)),
            ("2w", Some(1_209_600)),
            ("", None),
            ("7", None),
            ("d", None),
            ("7y", None),
            ("-7d", None),
            ("7 d", None),
            ("99999999999999999999d", None),
            ("18446744073709551615w", None),
        ];
        for (input, secs) in cases {
            assert_eq!(parse_age(input), secs.map(Duration::from_secs), "{input:?}");
        }
    }
}
