//! Registry, versioned models and safe migrations on SQLite and PostgreSQL.
//! Each `vN` module is the same model `Person` at another point in its life;
//! `DataFlowBuilder::models` boots one version at a time.

mod support;

use dataflow::migrate::{
    ApplyRequest, MigrationSource, MigrationStatus, RiskLevel, RollbackRequest, Rule,
};
use dataflow::{DataFlow, Model, ModelSchema};
use diesel::connection::SimpleConnection;
use serde_json::json;
use std::future::Future;
use support::{postgres, sqlite_url};

mod v1 {
    #[dataflow::model(table = "people")]
    pub struct Person {
        pub id: String,
        pub name: String,
    }
}

mod v2 {
    /// Adds a nullable field: safe.
    #[dataflow::model(table = "people")]
    pub struct Person {
        pub id: String,
        pub name: String,
        pub nickname: Option<String>,
    }
}

mod v3 {
    /// Drops `name`: data loss.
    #[dataflow::model(table = "people")]
    pub struct Person {
        pub id: String,
        pub nickname: Option<String>,
    }
}

mod v4 {
    /// Changes `name` to an integer: a table rewrite that narrows.
    #[dataflow::model(table = "people")]
    pub struct Person {
        pub id: String,
        pub name: i64,
        pub nickname: Option<String>,
    }
}

mod v5 {
    /// Adds a NOT NULL field without a default.
    #[dataflow::model(table = "people")]
    pub struct Person {
        pub id: String,
        pub name: String,
        pub nickname: Option<String>,
        pub age: i32,
    }
}

mod v6 {
    /// Renames `name` to `full_name`.
    #[dataflow::model(table = "people")]
    pub struct Person {
        pub id: String,
        #[field(renamed_from = "name")]
        pub full_name: String,
        pub nickname: Option<String>,
    }
}

mod v7 {
    /// Indexes and makes `nickname` unique, adds a defaulted flag.
    #[dataflow::model(table = "people")]
    pub struct Person {
        pub id: String,
        #[field(index)]
        pub name: String,
        #[field(unique)]
        pub nickname: Option<String>,
        #[field(default = true)]
        pub active: bool,
    }
}

fn schema<M: Model>() -> &'static ModelSchema {
    // Constants are promoted to 'static.
    Box::leak(Box::new(M::SCHEMA))
}

async fn on_each_backend<F, Fut>(name: &str, body: F)
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = ()>,
{
    for (label, url) in support::backend_urls(name) {
        eprintln!("--- {name} on {label}");
        body(url).await;
    }
}

async fn boot(url: &str, version: &'static ModelSchema) -> Result<DataFlow, dataflow::Error> {
    DataFlow::builder(url).models(&[version]).build().await
}

#[tokio::test]
async fn first_boot_creates_and_later_boots_change_nothing() {
    on_each_backend("first_boot", |url| async move {
        let db = boot(&url, schema::<v1::Person>()).await.unwrap();
        db.execute("PersonCreateNode", json!({"name": "Ann"}))
            .await
            .unwrap();
        let history = db.migrations().history().await.unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].status, MigrationStatus::Applied);
        assert!(
            history[0].up_sql.contains("CREATE TABLE"),
            "{}",
            history[0].up_sql
        );
        assert_eq!(history[0].risk, Some(RiskLevel::Safe));
        let models = db.migrations().registered().await.unwrap();
        assert_eq!(models.len(), 1);
        assert_eq!(
            (
                models[0].name.as_str(),
                models[0].version,
                models[0].table.as_str()
            ),
            ("Person", 1, "people")
        );
        assert_eq!(models[0].checksum, v1::Person::SCHEMA.checksum_hex());
        assert_eq!(models[0].schema["fields"][1]["name"], "name");
        drop(db);

        for _ in 0..3 {
            let db = boot(&url, schema::<v1::Person>()).await.unwrap();
            assert_eq!(
                db.migrations().history().await.unwrap().len(),
                1,
                "unchanged boots apply nothing"
            );
            assert!(db.migrations().plan().await.unwrap().is_empty());
            assert_eq!(
                db.execute("PersonCountNode", json!({})).await.unwrap()["count"],
                1
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_nullable_field_is_added_at_boot_and_versioned() {
    on_each_backend("add_nullable", |url| async move {
        let db = boot(&url, schema::<v1::Person>()).await.unwrap();
        db.execute("PersonCreateNode", json!({"name": "Ann"}))
            .await
            .unwrap();
        drop(db);
        let db = boot(&url, schema::<v2::Person>()).await.unwrap();
        let rec = db
            .execute("PersonReadNode", json!({"filter": {"name": "Ann"}}))
            .await
            .unwrap();
        assert_eq!(
            rec["nickname"],
            serde_json::Value::Null,
            "existing rows keep their data"
        );
        db.execute(
            "PersonUpdateNode",
            json!({"id": rec["id"], "fields": {"nickname": "A"}}),
        )
        .await
        .unwrap();
        let models = db.migrations().registered().await.unwrap();
        assert_eq!(models[0].version, 2);
        let history = db.migrations().history().await.unwrap();
        assert_eq!(history.len(), 2);
        let last = &history[1];
        assert_eq!(last.status, MigrationStatus::Applied);
        assert!(
            last.up_sql.contains("ADD COLUMN \"nickname\""),
            "{}",
            last.up_sql
        );
        assert!(
            last.down_sql.contains("DROP COLUMN \"nickname\""),
            "{}",
            last.down_sql
        );
        assert_eq!(last.risk, Some(RiskLevel::Safe));
        assert!(last.duration_ms.is_some());
        assert!(last.applied_at.is_some());
        assert!(
            db.migrations().plan().await.unwrap().is_empty(),
            "applied plans re-plan to nothing"
        );
    })
    .await;
}

#[tokio::test]
async fn risky_changes_stop_boot_until_approved() {
    on_each_backend("risky", |url| async move {
        let db = boot(&url, schema::<v2::Person>()).await.unwrap();
        db.execute("PersonCreateNode", json!({"name": "Ann", "nickname": "A"}))
            .await
            .unwrap();
        drop(db);

        let e = boot(&url, schema::<v3::Person>()).await.unwrap_err();
        assert_eq!(e.code().as_str(), "migration_blocked");
        assert_eq!(e.model(), Some("Person"));
        assert!(e.message().contains("drop column people.name"), "{e}");
        assert!(e.message().contains("data_loss"), "{e}");
        assert!(
            e.message().contains("migrate apply --allow data_loss"),
            "{e}"
        );
        assert!(e.message().contains("nothing was applied"), "{e}");

        for (v, rule) in [
            (schema::<v4::Person>(), "table_rewrite"),
            (schema::<v5::Person>(), "not_null_without_default"),
            (schema::<v6::Person>(), "breaking_rename"),
        ] {
            let e = boot(&url, v).await.unwrap_err();
            assert_eq!(e.code().as_str(), "migration_blocked", "{rule}: {e}");
            assert!(e.message().contains(rule), "{rule}: {e}");
        }

        // Nothing was applied: the old version still works.
        let db = boot(&url, schema::<v2::Person>()).await.unwrap();
        assert_eq!(db.migrations().history().await.unwrap().len(), 1);
        drop(db);

        // The rename, approved with a reason, keeps the data.
        let db = DataFlow::builder(&url)
            .models(&[schema::<v6::Person>()])
            .auto_migrate(false)
            .build()
            .await
            .unwrap();
        let plan = db.migrations().plan().await.unwrap();
        assert_eq!(plan.risk(), RiskLevel::Medium);
        assert_eq!(plan.rules(), [Rule::BreakingRename]);
        let e = db
            .migrations()
            .apply(ApplyRequest::new().reason("x"))
            .await
            .unwrap_err();
        assert_eq!(e.code().as_str(), "migration_blocked");
        let e = db
            .migrations()
            .apply(ApplyRequest::new().allow(Rule::BreakingRename))
            .await
            .unwrap_err();
        assert!(e.message().contains("--reason"), "{e}");
        let applied = db
            .migrations()
            .apply(
                ApplyRequest::new()
                    .allow(Rule::BreakingRename)
                    .reason("clients moved to full_name"),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            applied.reason.as_deref(),
            Some("clients moved to full_name")
        );
        assert_eq!(applied.rules, [Rule::BreakingRename]);
        let rec = db
            .execute("PersonReadNode", json!({"filter": {"full_name": "Ann"}}))
            .await
            .unwrap();
        assert_eq!(rec["nickname"], "A");
        assert!(db.migrations().plan().await.unwrap().is_empty());

        // Rollback undoes it; a data-losing down needs the override.
        let undone = db
            .migrations()
            .rollback(RollbackRequest::steps(1).reason("clients are not ready"))
            .await
            .unwrap();
        assert_eq!(undone, std::slice::from_ref(&applied.version));
        let history = db.migrations().history().await.unwrap();
        let undone = history.last().unwrap();
        assert_eq!(undone.status, MigrationStatus::RolledBack);
        assert_eq!(
            undone.rollback_reason.as_deref(),
            Some("clients are not ready"),
            "the reason is recorded"
        );
        assert!(undone.rolled_back_at.is_some() && undone.rolled_back_by.is_some());
        assert_eq!(
            undone.reason.as_deref(),
            Some("clients moved to full_name"),
            "the apply reason is kept"
        );
        let e = db
            .migrations()
            .rollback(RollbackRequest::default().allow_data_loss())
            .await
            .unwrap_err();
        assert_eq!(e.code(), "migration_blocked");
        assert!(e.message().contains("--reason"), "{e}");
        let e = db
            .migrations()
            .rollback(RollbackRequest::default())
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            "migration_blocked",
            "the first migration's down drops the table: {e}"
        );
        drop(db);
        let db = boot(&url, schema::<v2::Person>()).await.unwrap();
        assert_eq!(
            db.execute("PersonReadNode", json!({"filter": {"name": "Ann"}}))
                .await
                .unwrap()["nickname"],
            "A"
        );
    })
    .await;
}

#[tokio::test]
async fn a_history_from_before_rollback_reasons_gains_their_columns() {
    async fn drop_new_columns(db: &DataFlow) {
        let mut conn = db.connection().unwrap();
        for column in ["rolled_back_at", "rolled_back_by", "rollback_reason"] {
            conn.batch_execute(&format!(
                "ALTER TABLE dataflow_migrations DROP COLUMN {column}"
            ))
            .unwrap();
        }
    }
    on_each_backend("old_history", |url| async move {
        let db = boot(&url, schema::<v1::Person>()).await.unwrap();
        drop_new_columns(&db).await;
        drop(db);
        // Migrating adds them back (under the lock) ...
        let db = boot(&url, schema::<v2::Person>()).await.unwrap();
        let undone = db
            .migrations()
            .rollback(
                RollbackRequest::steps(1)
                    .allow_data_loss()
                    .reason("older history"),
            )
            .await
            .unwrap();
        let history = db.migrations().history().await.unwrap();
        assert_eq!(history.last().unwrap().version, undone[0]);
        assert_eq!(
            history.last().unwrap().rollback_reason.as_deref(),
            Some("older history")
        );
        // ... and so does reading the history.
        drop_new_columns(&db).await;
        let history = db.migrations().history().await.unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(history[1].status, MigrationStatus::RolledBack);
        assert_eq!(history[1].rollback_reason, None);
    })
    .await;
}

#[tokio::test]
async fn indexes_uniques_and_defaults_are_planned_and_applied() {
    on_each_backend("indexes", |url| async move {
        let db = boot(&url, schema::<v2::Person>()).await.unwrap();
        db.execute("PersonCreateNode", json!({"name": "Ann", "nickname": "A"}))
            .await
            .unwrap();
        drop(db);
        let db = DataFlow::builder(&url)
            .models(&[schema::<v7::Person>()])
            .auto_migrate(false)
            .build()
            .await
            .unwrap();
        let plan = db.migrations().plan().await.unwrap();
        let summaries: Vec<&str> = plan.operations.iter().map(|o| o.summary.as_str()).collect();
        assert!(!plan.is_empty());
        db.migrations()
            .apply(
                ApplyRequest::new()
                    .allow_all(plan.rules())
                    .reason("index and unique nickname"),
            )
            .await
            .unwrap()
            .unwrap();
        assert!(
            db.migrations().plan().await.unwrap().is_empty(),
            "re-plans to nothing after {summaries:?}"
        );
        let e = db
            .execute("PersonCreateNode", json!({"name": "Bob", "nickname": "A"}))
            .await
            .unwrap_err();
        assert_eq!(e.code().as_str(), "unique_violation");
        let rec = db
            .execute("PersonReadNode", json!({"filter": {"name": "Ann"}}))
            .await
            .unwrap();
        assert_eq!(
            rec["active"], true,
            "the new column's default fills existing rows"
        );
    })
    .await;
}

#[tokio::test]
async fn hand_made_columns_are_reported_as_drift() {
    on_each_backend("drift", |url| async move {
        let db = boot(&url, schema::<v1::Person>()).await.unwrap();
        let mut conn = db.connection().unwrap();
        conn.batch_execute("ALTER TABLE people ADD COLUMN legacy TEXT")
            .unwrap();
        drop(conn);
        let plan = db.migrations().plan().await.unwrap();
        assert_eq!(plan.drift.len(), 1);
        assert_eq!(plan.drift[0].column.as_deref(), Some("legacy"));
        assert!(
            plan.drift[0].message.contains("another tool"),
            "{}",
            plan.drift[0].message
        );
        let op = &plan.operations[0];
        assert_eq!(op.risk, RiskLevel::Destructive, "never silently dropped");
        drop(db);
        // A model change meanwhile stops at the drop, naming it.
        let e = boot(&url, schema::<v2::Person>()).await.unwrap_err();
        assert!(e.message().contains("drop column people.legacy"), "{e}");
    })
    .await;
}

#[tokio::test]
async fn configuration_switches_turn_steps_off() {
    on_each_backend("switches", |url| async move {
        // skip_migration: no schema step at all.
        let db = DataFlow::builder(&url)
            .models(&[schema::<v1::Person>()])
            .skip_migration(true)
            .build()
            .await
            .unwrap();
        assert_eq!(
            db.execute("PersonCountNode", json!({}))
                .await
                .unwrap_err()
                .code(),
            "database"
        );
        drop(db);
        // auto_migrate(false): planned, not applied.
        let db = DataFlow::builder(&url)
            .models(&[schema::<v1::Person>()])
            .auto_migrate(false)
            .build()
            .await
            .unwrap();
        assert_eq!(
            db.execute("PersonCountNode", json!({}))
                .await
                .unwrap_err()
                .code(),
            "database"
        );
        assert_eq!(db.migrations().plan().await.unwrap().operations.len(), 1);
        drop(db);
        // Without the registry the schema is still migrated, nothing is persisted.
        let db = DataFlow::builder(&url)
            .models(&[schema::<v1::Person>()])
            .enable_model_persistence(false)
            .build()
            .await
            .unwrap();
        assert_eq!(
            db.execute("PersonCountNode", json!({})).await.unwrap()["count"],
            0
        );
        assert!(db.migrations().registered().await.unwrap().is_empty());
        drop(db);
        let db = DataFlow::builder(&url)
            .models(&[schema::<v1::Person>()])
            .skip_registry(true)
            .build()
            .await
            .unwrap();
        assert!(db.migrations().registered().await.unwrap().is_empty());
        drop(db);
        let db = boot(&url, schema::<v1::Person>()).await.unwrap();
        assert_eq!(db.migrations().registered().await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn concurrent_boots_migrate_exactly_once() {
    on_each_backend("concurrent_boot", |url| async move {
        let boots: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { boot(&url, schema::<v2::Person>()).await.map(drop) })
            })
            .collect();
        for b in boots {
            b.await.unwrap().unwrap();
        }
        let db = boot(&url, schema::<v2::Person>()).await.unwrap();
        let history = db.migrations().history().await.unwrap();
        assert_eq!(history.len(), 1, "{history:?}");
        assert_eq!(history[0].status, MigrationStatus::Applied);
        assert_eq!(db.migrations().registered().await.unwrap()[0].version, 1);
    })
    .await;
}

// ------------------------------------------------------------------ files

/// Reviewed files embedded at compile time (tests/fixtures/migrations).
static FILES: &[dataflow::migrate::EmbeddedMigration] =
    dataflow::embed_migrations!("tests/fixtures/migrations");

#[tokio::test]
async fn embedded_migration_files_run_at_boot_once_and_edits_are_drift() {
    assert_eq!(FILES.len(), 2);
    assert_eq!(FILES[0].version(), "20260101000000");
    assert_eq!(FILES[1].name(), "add_note_tag");
    on_each_backend("files", |url| async move {
        let db = DataFlow::builder(&url)
            .models(&[schema::<v1::Person>()])
            .migrations(FILES)
            .build()
            .await
            .unwrap();
        let history = db.migrations().history().await.unwrap();
        let files: Vec<(&str, &str)> = history
            .iter()
            .filter(|e| e.source == MigrationSource::File)
            .map(|e| (e.version.as_str(), e.name.as_str()))
            .collect();
        assert_eq!(
            files,
            [
                ("20260101000000", "create_notes"),
                ("20260102000000", "add_note_tag")
            ]
        );
        assert!(history.iter().all(|e| e.status == MigrationStatus::Applied));
        let file = history
            .iter()
            .find(|e| e.source == MigrationSource::File)
            .unwrap();
        assert_eq!((file.risk, file.risk_str()), (None, "reviewed"));
        assert!(file.rules.is_empty());
        let mut conn = db.connection().unwrap();
        conn.batch_execute("INSERT INTO notes (id, body, tag) VALUES ('n1', 'hello', 't')")
            .unwrap();
        drop((conn, db));
        // Booting again applies nothing new.
        let db = DataFlow::builder(&url)
            .models(&[schema::<v1::Person>()])
            .migrations(FILES)
            .build()
            .await
            .unwrap();
        assert_eq!(db.migrations().history().await.unwrap().len(), 3);
        drop(db);
        // A file edited after it was applied stops boot.
        static EDITED: &[dataflow::migrate::EmbeddedMigration] =
            &[dataflow::migrate::EmbeddedMigration {
                dir: "20260101000000_create_notes",
                up: "CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT);\n",
                down: "DROP TABLE notes;\n",
            }];
        let e = DataFlow::builder(&url)
            .models(&[schema::<v1::Person>()])
            .migrations(EDITED)
            .build()
            .await
            .unwrap_err();
        assert_eq!(e.code().as_str(), "migration_blocked");
        assert!(
            e.message().contains("drift") && e.message().contains("20260101000000_create_notes"),
            "{e}"
        );
    })
    .await;
}

// ------------------------------------------------------------------ the CLI, as a subprocess

fn example(args: &[&str]) -> std::process::Output {
    std::process::Command::new(support::programs::example("schema_evolution"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn migrate_cli_plans_applies_stages_and_rolls_back() {
    let mut urls = vec![sqlite_url("cli")];
    urls.extend(postgres::fresh_database("cli"));
    for url in urls {
        let run = |schema: &str, rest: &[&str]| {
            let mut args = vec!["--url", url.as_str(), "--schema", schema];
            args.extend_from_slice(rest);
            example(&args)
        };
        let o = run("v1", &[]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

        let o = run("v2", &[]);
        assert_eq!(
            o.status.code(),
            Some(6),
            "a plain boot of v2 is blocked: {}",
            stdout(&o)
        );
        assert!(String::from_utf8_lossy(&o.stderr).contains("drop column articles.body"));

        let o = run("v2", &["migrate", "plan"]);
        let text = stdout(&o);
        assert!(o.status.success(), "{text}");
        assert!(
            text.contains("add column articles.summary") && text.contains("risk safe"),
            "{text}"
        );
        assert!(
            text.contains("drop column articles.body") && text.contains("risk destructive"),
            "{text}"
        );
        assert!(
            text.contains("migrate apply --allow data_loss --reason"),
            "{text}"
        );
        assert!(
            !text.contains("drift"),
            "the registry explains body: {text}"
        );

        let o = run("v2", &["migrate", "plan", "--json"]);
        let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(plan["operations"][1]["risk"], "destructive");
        assert_eq!(plan["operations"][1]["rules"][0]["rule"], "data_loss");

        let o = run("v2", &["migrate", "apply"]);
        assert_eq!(o.status.code(), Some(6), "needs --allow: {}", stdout(&o));

        let o = run(
            "v2",
            &[
                "migrate", "apply", "--allow", "data_los", "--reason", "typo",
            ],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "an unknown rule: {err}");
        assert!(
            err.contains("unknown risk rule `data_los` (did you mean `data_loss`?)")
                && err.contains("table_rewrite, narrowing_type_change"),
            "names the known rules: {err}"
        );

        let o = run(
            "v2",
            &[
                "migrate",
                "apply",
                "--allow",
                "data_loss",
                "--reason",
                "summary replaces body",
                "--staging",
            ],
        );
        let text = stdout(&o);
        assert!(
            o.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            text.contains("staging passed")
                && text.contains("restored the previous schema")
                && text.contains("Applied"),
            "{text}"
        );

        let o = run("v2", &["migrate", "status"]);
        let text = stdout(&o);
        assert_eq!(
            text.lines().filter(|l| l.contains("  applied  ")).count(),
            2,
            "{text}"
        );
        assert!(text.contains("The database matches the models."), "{text}");

        let o = run("v2", &["migrate", "rollback"]);
        assert_eq!(
            o.status.code(),
            Some(6),
            "the down drops summary: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let o = run(
            "v2",
            &[
                "migrate",
                "rollback",
                "--allow",
                "data_loss",
                "--reason",
                "undo",
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let o = run("v2", &["migrate", "status", "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(status["history"][1]["status"], "rolled_back");
        assert_eq!(status["history"][1]["rollback_reason"], "undo");
        assert_eq!(status["history"][1]["risk"], "destructive");
        assert_eq!(status["history"][1]["rules"], "data_loss");
        assert_eq!(status["history"][1]["source"], "auto");
        let text = stdout(&run("v2", &["migrate", "status"]));
        assert!(
            text.lines()
                .any(|l| l.contains(" rolled back at ") && l.ends_with(": undo")),
            "{text}"
        );
        assert_eq!(status["pending"]["operations"].as_array().unwrap().len(), 2);

        let dir = std::env::temp_dir().join(format!("dataflow-gen-{}", std::process::id()));
        let o = run(
            "v2",
            &[
                "migrate",
                "generate",
                "drop_body",
                "--dir",
                dir.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let made: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        let generated = made
            .iter()
            .find(|p| p.display().to_string().ends_with("_drop_body"))
            .expect("generated dir");
        let up = std::fs::read_to_string(generated.join("up.sql")).unwrap();
        assert!(
            up.contains("DROP COLUMN \"body\"")
                && up.contains("-- drop column articles.body [destructive: data_loss]"),
            "{up}"
        );
        assert!(std::fs::read_to_string(generated.join("down.sql"))
            .unwrap()
            .contains("ADD COLUMN \"body\""));
        let _ = std::fs::remove_dir_all(&dir);

        // The standalone binary reads the registry without the models.
        let o = std::process::Command::new(support::programs::dataflow_bin())
            .args(["--url", url.as_str(), "models"])
            .output()
            .unwrap();
        let text = stdout(&o);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(
            text.contains("Article") && text.contains("articles"),
            "{text}"
        );
    }
}

// ------------------------------------------------------------------ processes: concurrency and crashes

fn child(test: &str, url: &str) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            test,
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DATAFLOW_CHILD_URL", url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Run by `four_processes_booting_at_once_migrate_exactly_once`.
#[tokio::test]
#[ignore = "a child process of four_processes_booting_at_once_migrate_exactly_once"]
async fn child_boot_v2() {
    let url = std::env::var("DATAFLOW_CHILD_URL").expect("run by the parent test");
    boot(&url, schema::<v2::Person>()).await.unwrap();
}

#[test]
fn four_processes_booting_at_once_migrate_exactly_once() {
    let mut urls = vec![sqlite_url("four")];
    urls.extend(postgres::fresh_database("four"));
    for url in urls {
        let children: Vec<_> = (0..4).map(|_| child("child_boot_v2", &url)).collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{url}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let db = boot(&url, schema::<v2::Person>()).await.unwrap();
            let history = db.migrations().history().await.unwrap();
            assert_eq!(history.len(), 1, "{url}: {history:?}");
            assert_eq!(history[0].status, MigrationStatus::Applied);
        });
    }
}

/// A multi-statement migration that takes a while, to be killed halfway.
static SLOW: &[dataflow::migrate::EmbeddedMigration] = &[dataflow::migrate::EmbeddedMigration {
    dir: "20260301000000_slow",
    up: "CREATE TABLE kill_a (id INT);\nSELECT pg_sleep(3);\nCREATE TABLE kill_b (id INT);\n",
    down: "DROP TABLE kill_b;\nDROP TABLE kill_a;\n",
}];

/// Run by `a_migration_killed_halfway_is_failed_and_retried`.
#[tokio::test]
#[ignore = "a child process of a_migration_killed_halfway_is_failed_and_retried"]
async fn child_apply_slow_migration() {
    let url = std::env::var("DATAFLOW_CHILD_URL").expect("run by the parent test");
    DataFlow::builder(&url)
        .models(&[schema::<v1::Person>()])
        .migrations(SLOW)
        .build()
        .await
        .unwrap();
}

#[test]
fn a_migration_killed_halfway_is_failed_and_retried() {
    use diesel::{Connection, PgConnection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        status: String,
    }
    let Some(url) = postgres::fresh_database("kill") else {
        return;
    };
    let mut child = child("child_apply_slow_migration", &url);
    let mut pg = PgConnection::establish(&url).unwrap();
    let started = std::time::Instant::now();
    loop {
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT status FROM dataflow_migrations WHERE version = '20260301000000'",
        )
        .load(&mut pg)
        .unwrap_or_default();
        if rows.first().is_some_and(|r| r.status == "pending") {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the child never started the migration"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();

    let exists = |pg: &mut PgConnection, t: &str| {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let r: Vec<N> = diesel::sql_query(format!(
            "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_name = '{t}'"
        ))
        .load(pg)
        .unwrap();
        r[0].n == 1
    };
    assert!(
        !exists(&mut pg, "kill_a"),
        "nothing of the killed migration is applied"
    );
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT status FROM dataflow_migrations WHERE version = '20260301000000'",
    )
    .load(&mut pg)
    .unwrap();
    assert_eq!(
        rows[0].status, "pending",
        "the history never says applied for a half-run migration"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = DataFlow::builder(&url)
            .models(&[schema::<v1::Person>()])
            .migrations(SLOW)
            .build()
            .await
            .unwrap();
        let history = db.migrations().history().await.unwrap();
        let slow = history
            .iter()
            .find(|e| e.version == "20260301000000")
            .unwrap();
        assert_eq!(slow.status, MigrationStatus::Applied, "the retry succeeds");
        assert!(
            slow.error
                .as_deref()
                .unwrap_or_default()
                .contains("interrupted"),
            "the failed attempt is recorded: {slow:?}"
        );
    });
    assert!(exists(&mut pg, "kill_a") && exists(&mut pg, "kill_b"));
}

// ------------------------------------------------------------------ property: plans converge

mod other {
    /// Another model on Person's table.
    #[dataflow::model(table = "people")]
    pub struct Human {
        pub id: String,
    }
}

#[tokio::test]
async fn colliding_model_names_or_tables_fail_boot() {
    let url = sqlite_url("collide");
    let e = DataFlow::builder(&url)
        .models(&[schema::<v1::Person>(), schema::<v2::Person>()])
        .build()
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "config");
    assert!(e.message().contains("two models are named `Person`"), "{e}");
    let e = DataFlow::builder(&url)
        .models(&[schema::<v1::Person>(), schema::<other::Human>()])
        .build()
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "config");
    assert!(e.message().contains("both use the table `people`"), "{e}");
}

#[tokio::test]
async fn staging_at_boot_trials_the_plan_first() {
    on_each_backend("staging_boot", |url| async move {
        boot(&url, schema::<v1::Person>())
            .await
            .unwrap()
            .execute("PersonCreateNode", json!({"name": "Ann"}))
            .await
            .unwrap();
        let db = DataFlow::builder(&url)
            .models(&[schema::<v2::Person>()])
            .staging(true)
            .build()
            .await
            .unwrap();
        assert_eq!(
            db.execute("PersonCountNode", json!({})).await.unwrap()["count"],
            1
        );
        assert_eq!(db.migrations().history().await.unwrap().len(), 2);
    })
    .await;
}

/// xorshift64*: a small seeded generator, so a failing case can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// A random model named `Prop` on table `props`, built at run time.
fn random_model(rng: &mut Rng) -> &'static ModelSchema {
    use dataflow::schema::{DefaultValue, FieldSchema, FieldType, Generated, ModelOptions};
    const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
    const TYPES: [FieldType; 9] = [
        FieldType::String,
        FieldType::I32,
        FieldType::I64,
        FieldType::F64,
        FieldType::Bool,
        FieldType::DateTime,
        FieldType::Date,
        FieldType::Json,
        FieldType::Uuid,
    ];
    let base = FieldSchema {
        name: "id",
        column: "id",
        ty: FieldType::String,
        nullable: false,
        primary_key: true,
        unique: false,
        index: false,
        default: None,
        references: None,
        max_length: None,
        renamed_from: None,
        generated: Generated::Uuid7,
    };
    let mut fields = vec![base];
    for name in NAMES {
        if !rng.chance(60) {
            continue;
        }
        let ty = TYPES[rng.below(TYPES.len())];
        let keyable = matches!(ty, FieldType::String | FieldType::I32 | FieldType::I64);
        let default = match ty {
            FieldType::Bool if rng.chance(40) => Some(DefaultValue::Bool(rng.chance(50))),
            FieldType::I32 | FieldType::I64 if rng.chance(40) => {
                Some(DefaultValue::Int(rng.below(100) as i64))
            }
            FieldType::String if rng.chance(40) => Some(DefaultValue::Str("x")),
            _ => None,
        };
        let unique = keyable && rng.chance(25);
        fields.push(FieldSchema {
            name,
            column: name,
            ty,
            nullable: rng.chance(50),
            primary_key: false,
            unique,
            index: !unique && rng.chance(25),
            default,
            references: None,
            max_length: if ty == FieldType::String && rng.chance(30) {
                Some(10 + rng.below(50) as u32)
            } else {
                None
            },
            renamed_from: None,
            generated: Generated::No,
        });
    }
    Box::leak(Box::new(ModelSchema {
        name: "Prop",
        table: "props",
        fields: Box::leak(fields.into_boxed_slice()),
        options: ModelOptions {
            soft_delete: false,
            timestamps: false,
            tenant_scoped: false,
            audit: false,
            cache_ttl_ms: None,
            append_only: false,
        },
        checksum: rng.next(),
    }))
}

async fn converge(url: &str, m: &'static ModelSchema, seed: u64) {
    let db = DataFlow::builder(url)
        .models(&[m])
        .auto_migrate(false)
        .build()
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: boot: {e}"));
    let plan = db.migrations().plan().await.unwrap();
    db.migrations()
        .apply(
            ApplyRequest::new()
                .allow_all(plan.rules())
                .reason("property test"),
        )
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: apply {:#?}: {e}", plan.operations));
    let again = db.migrations().plan().await.unwrap();
    assert!(
        again.is_empty(),
        "seed {seed}: after applying\n{:#?}\nthe plan is still\n{:#?}",
        plan.operations,
        again.operations
    );
}

#[tokio::test]
async fn applied_plans_always_replan_to_nothing() {
    let seeds: Vec<u64> = match std::env::var("DATAFLOW_PROPERTY_SEED") {
        Ok(s) => vec![s.parse().unwrap()],
        Err(_) => (1..=12).map(|i| i * 7919).collect(),
    };
    for seed in seeds {
        on_each_backend(&format!("prop_{seed}"), |url| async move {
            let mut rng = Rng(seed);
            // From nothing to a random shape, then through two random changes.
            for _ in 0..3 {
                converge(&url, random_model(&mut rng), seed).await;
            }
        })
        .await;
    }
}
