//! Registry, versioned models and safe migrations on SQLite and PostgreSQL.
//! Each `vN` module is the same model `Person` at another point in its life;
//! `DataFlowBuilder::models` boots one version at a time.

mod support;

use dataflow::migrate::{MigrationStatus, RiskLevel};
use dataflow::{DataFlow, Model, ModelSchema};
use diesel::connection::SimpleConnection;
use serde_json::json;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use support::postgres;

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

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn sqlite_url(name: &str) -> String {
    let dir = std::env::temp_dir().join("dataflow-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let path = dir.join(format!("mig-{name}-{}-{n}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    format!("sqlite://{}", path.display())
}

async fn on_each_backend<F, Fut>(name: &str, body: F)
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut urls = vec![("sqlite", sqlite_url(name))];
    if let Some(url) = postgres::fresh_database(name) {
        urls.push(("postgres", url));
    }
    for (label, url) in urls {
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
        db.execute("PersonCreateNode", json!({"name": "Ann"})).await.unwrap();
        let history = db.migration_history().await.unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].status, MigrationStatus::Applied);
        assert!(history[0].up_sql.contains("CREATE TABLE"), "{}", history[0].up_sql);
        assert_eq!(history[0].risk, "safe");
        let models = db.registered_models().await.unwrap();
        assert_eq!(models.len(), 1);
        assert_eq!((models[0].name.as_str(), models[0].version, models[0].table.as_str()), ("Person", 1, "people"));
        assert_eq!(models[0].checksum, v1::Person::SCHEMA.checksum_hex());
        assert_eq!(models[0].schema["fields"][1]["name"], "name");
        drop(db);

        for _ in 0..3 {
            let db = boot(&url, schema::<v1::Person>()).await.unwrap();
            assert_eq!(db.migration_history().await.unwrap().len(), 1, "unchanged boots apply nothing");
            assert!(db.migration_plan().await.unwrap().is_empty());
            assert_eq!(db.execute("PersonCountNode", json!({})).await.unwrap()["count"], 1);
        }
    })
    .await;
}

#[tokio::test]
async fn a_nullable_field_is_added_at_boot_and_versioned() {
    on_each_backend("add_nullable", |url| async move {
        let db = boot(&url, schema::<v1::Person>()).await.unwrap();
        db.execute("PersonCreateNode", json!({"name": "Ann"})).await.unwrap();
        drop(db);
        let db = boot(&url, schema::<v2::Person>()).await.unwrap();
        let rec = db.execute("PersonReadNode", json!({"filter": {"name": "Ann"}})).await.unwrap();
        assert_eq!(rec["nickname"], serde_json::Value::Null, "existing rows keep their data");
        db.execute("PersonUpdateNode", json!({"id": rec["id"], "fields": {"nickname": "A"}})).await.unwrap();
        let models = db.registered_models().await.unwrap();
        assert_eq!(models[0].version, 2);
        let history = db.migration_history().await.unwrap();
        assert_eq!(history.len(), 2);
        let last = &history[1];
        assert_eq!(last.status, MigrationStatus::Applied);
        assert!(last.up_sql.contains("ADD COLUMN \"nickname\""), "{}", last.up_sql);
        assert!(last.down_sql.contains("DROP COLUMN \"nickname\""), "{}", last.down_sql);
        assert_eq!(last.risk, "safe");
        assert!(last.duration_ms.is_some());
        assert!(last.applied_at.is_some());
        assert!(db.migration_plan().await.unwrap().is_empty(), "applied plans re-plan to nothing");
    })
    .await;
}

#[tokio::test]
async fn risky_changes_stop_boot_until_approved() {
    on_each_backend("risky", |url| async move {
        let db = boot(&url, schema::<v2::Person>()).await.unwrap();
        db.execute("PersonCreateNode", json!({"name": "Ann", "nickname": "A"})).await.unwrap();
        drop(db);

        let e = boot(&url, schema::<v3::Person>()).await.unwrap_err();
        assert_eq!(e.code(), "migration_blocked");
        assert_eq!(e.model(), Some("Person"));
        assert!(e.message().contains("drop column people.name"), "{e}");
        assert!(e.message().contains("data_loss"), "{e}");
        assert!(e.message().contains("migrate apply --allow data_loss"), "{e}");
        assert!(e.message().contains("nothing was applied"), "{e}");

        for (v, rule) in [(schema::<v4::Person>(), "table_rewrite"), (schema::<v5::Person>(), "not_null_without_default"), (schema::<v6::Person>(), "breaking_rename")] {
            let e = boot(&url, v).await.unwrap_err();
            assert_eq!(e.code(), "migration_blocked", "{rule}: {e}");
            assert!(e.message().contains(rule), "{rule}: {e}");
        }

        // Nothing was applied: the old version still works.
        let db = boot(&url, schema::<v2::Person>()).await.unwrap();
        assert_eq!(db.migration_history().await.unwrap().len(), 1);
        drop(db);

        // The rename, approved with a reason, keeps the data.
        let db = DataFlow::builder(&url).models(&[schema::<v6::Person>()]).auto_migrate(false).build().await.unwrap();
        let plan = db.migration_plan().await.unwrap();
        assert_eq!(plan.risk(), RiskLevel::Medium);
        assert_eq!(plan.rules(), ["breaking_rename"]);
        let e = db.apply_migrations(vec![], Some("x".into())).await.unwrap_err();
        assert_eq!(e.code(), "migration_blocked");
        let e = db.apply_migrations(vec!["breaking_rename".into()], None).await.unwrap_err();
        assert!(e.message().contains("--reason"), "{e}");
        let applied = db.apply_migrations(vec!["breaking_rename".into()], Some("clients moved to full_name".into())).await.unwrap().unwrap();
        assert_eq!(applied.reason.as_deref(), Some("clients moved to full_name"));
        assert_eq!(applied.rules, "breaking_rename");
        let rec = db.execute("PersonReadNode", json!({"filter": {"full_name": "Ann"}})).await.unwrap();
        assert_eq!(rec["nickname"], "A");
        assert!(db.migration_plan().await.unwrap().is_empty());

        // Rollback undoes it; a data-losing down needs the override.
        let undone = db.rollback_migrations(None, 1, false).await.unwrap();
        assert_eq!(undone, [applied.version.clone()]);
        let history = db.migration_history().await.unwrap();
        assert_eq!(history.last().unwrap().status, MigrationStatus::RolledBack);
        let e = db.rollback_migrations(None, 1, false).await.unwrap_err();
        assert_eq!(e.code(), "migration_blocked", "the first migration's down drops the table: {e}");
        drop(db);
        let db = boot(&url, schema::<v2::Person>()).await.unwrap();
        assert_eq!(db.execute("PersonReadNode", json!({"filter": {"name": "Ann"}})).await.unwrap()["nickname"], "A");
    })
    .await;
}

#[tokio::test]
async fn indexes_uniques_and_defaults_are_planned_and_applied() {
    on_each_backend("indexes", |url| async move {
        let db = boot(&url, schema::<v2::Person>()).await.unwrap();
        db.execute("PersonCreateNode", json!({"name": "Ann", "nickname": "A"})).await.unwrap();
        drop(db);
        let db = DataFlow::builder(&url).models(&[schema::<v7::Person>()]).auto_migrate(false).build().await.unwrap();
        let plan = db.migration_plan().await.unwrap();
        let summaries: Vec<&str> = plan.operations.iter().map(|o| o.summary.as_str()).collect();
        assert!(!plan.is_empty());
        let allow: Vec<String> = plan.rules().iter().map(|r| r.to_string()).collect();
        db.apply_migrations(allow, Some("index and unique nickname".into())).await.unwrap().unwrap();
        assert!(db.migration_plan().await.unwrap().is_empty(), "re-plans to nothing after {summaries:?}");
        let e = db.execute("PersonCreateNode", json!({"name": "Bob", "nickname": "A"})).await.unwrap_err();
        assert_eq!(e.code(), "unique_violation");
        let rec = db.execute("PersonReadNode", json!({"filter": {"name": "Ann"}})).await.unwrap();
        assert_eq!(rec["active"], true, "the new column's default fills existing rows");
    })
    .await;
}

#[tokio::test]
async fn hand_made_columns_are_reported_as_drift() {
    on_each_backend("drift", |url| async move {
        let db = boot(&url, schema::<v1::Person>()).await.unwrap();
        let mut conn = db.connection().unwrap();
        conn.batch_execute("ALTER TABLE people ADD COLUMN legacy TEXT").unwrap();
        drop(conn);
        let plan = db.migration_plan().await.unwrap();
        assert_eq!(plan.drift.len(), 1);
        assert_eq!(plan.drift[0].column.as_deref(), Some("legacy"));
        assert!(plan.drift[0].message.contains("another tool"), "{}", plan.drift[0].message);
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
        let db = DataFlow::builder(&url).models(&[schema::<v1::Person>()]).skip_migration(true).build().await.unwrap();
        assert_eq!(db.execute("PersonCountNode", json!({})).await.unwrap_err().code(), "database");
        drop(db);
        // auto_migrate(false): planned, not applied.
        let db = DataFlow::builder(&url).models(&[schema::<v1::Person>()]).auto_migrate(false).build().await.unwrap();
        assert_eq!(db.execute("PersonCountNode", json!({})).await.unwrap_err().code(), "database");
        assert_eq!(db.migration_plan().await.unwrap().operations.len(), 1);
        drop(db);
        // Without the registry the schema is still migrated, nothing is persisted.
        let db = DataFlow::builder(&url).models(&[schema::<v1::Person>()]).enable_model_persistence(false).build().await.unwrap();
        assert_eq!(db.execute("PersonCountNode", json!({})).await.unwrap()["count"], 0);
        assert!(db.registered_models().await.unwrap().is_empty());
        drop(db);
        let db = DataFlow::builder(&url).models(&[schema::<v1::Person>()]).skip_registry(true).build().await.unwrap();
        assert!(db.registered_models().await.unwrap().is_empty());
        drop(db);
        let db = boot(&url, schema::<v1::Person>()).await.unwrap();
        assert_eq!(db.registered_models().await.unwrap().len(), 1);
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
        let history = db.migration_history().await.unwrap();
        assert_eq!(history.len(), 1, "{history:?}");
        assert_eq!(history[0].status, MigrationStatus::Applied);
        assert_eq!(db.registered_models().await.unwrap()[0].version, 1);
    })
    .await;
}
