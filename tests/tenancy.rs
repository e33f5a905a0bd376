//! Multi-tenancy in the database itself: `tenant_scoped` models get
//! `(tenant_id, ..)` keys, per-tenant uniques and composite foreign keys on
//! SQLite and PostgreSQL, and on PostgreSQL optionally row-level security.
//!
//! Its own test binary: the tenant-scoped models here are linked into
//! every boot of the binary, and a `tenant_scoped` model without
//! `multi_tenant(true)` fails boot by design, which `tests/dataflow.rs`'s
//! boots do not turn on.

mod support;

use dataflow::{Context, DataFlow, Error};
use diesel::{Connection, PgConnection, RunQueryDsl};
use serde_json::{json, Value};
use std::future::Future;

#[dataflow::model(tenant_scoped)]
pub struct Account {
    pub id: String,
    #[field(unique)]
    pub email: String,
    pub name: String,
}

#[dataflow::model(tenant_scoped)]
pub struct Login {
    pub id: String,
    #[field(references = "Account", on_delete = "cascade")]
    pub account_id: String,
    #[field(index)]
    pub device: String,
}

/// `set_null` between tenant-scoped models: the reference is cleared, the
/// tenant kept.
#[dataflow::model(tenant_scoped)]
pub struct Note {
    pub id: String,
    #[field(references = "Account", on_delete = "set_null")]
    pub account_id: Option<String>,
}

/// An auto-increment key on a tenant-scoped model.
#[dataflow::model(tenant_scoped)]
pub struct Counter {
    pub id: i64,
    pub label: String,
}

/// Runs `body` on a fresh SQLite file, a fresh PostgreSQL database and a
/// fresh PostgreSQL database with row-level security.
async fn on_each_backend<F, Fut>(name: &str, body: F)
where
    F: Fn(&'static str, DataFlow) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut urls = support::backend_urls(name);
    if let Some(url) = support::postgres::fresh_database(&format!("{name}_rls")) {
        urls.push(("postgres+rls", support::postgres::as_plain_role(&url)));
    }
    for (label, url) in urls {
        eprintln!("--- {name} on {label}");
        let db = DataFlow::builder(&url)
            .multi_tenant(true)
            .row_level_security(label == "postgres+rls")
            .build()
            .await
            .unwrap_or_else(|e| panic!("{name}: boot on {label} failed: {e}"));
        body(label, db).await;
    }
}

fn tenant(db: &DataFlow, t: &str) -> DataFlow {
    db.with_context(Context::new().tenant(t))
}

async fn ok(db: &DataFlow, node: &str, params: Value) -> Value {
    db.execute(node, params.clone())
        .await
        .unwrap_or_else(|e| panic!("{node} {params} as {:?} failed: {e}", db.context().tenant))
}

async fn err(db: &DataFlow, node: &str, params: Value) -> Error {
    match db.execute(node, params.clone()).await {
        Ok(v) => panic!("{node} {params} should fail, returned {v}"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn the_same_unique_email_in_two_tenants_is_no_conflict() {
    on_each_backend("tenancy_unique", |_, db| async move {
        let (a, b) = (tenant(&db, "acme"), tenant(&db, "zeta"));
        let record = json!({"email": "ann@x.io", "name": "Ann"});
        let in_a = ok(&a, "AccountCreateNode", record.clone()).await;
        let in_b = ok(&b, "AccountCreateNode", record.clone()).await;
        assert_eq!(
            (&in_a["tenant_id"], &in_b["tenant_id"]),
            (&json!("acme"), &json!("zeta"))
        );
        // Within one tenant the field is still unique.
        let e = err(&a, "AccountCreateNode", record).await;
        assert_eq!(e.code().as_str(), "unique_violation", "{e}");
        assert_eq!(e.field(), Some("email"));
    })
    .await;
}

#[tokio::test]
async fn the_same_id_in_two_tenants_is_no_conflict_and_each_reads_its_own() {
    on_each_backend("tenancy_same_id", |_, db| async move {
        let (a, b) = (tenant(&db, "acme"), tenant(&db, "zeta"));
        ok(
            &a,
            "AccountCreateNode",
            json!({"id": "u1", "email": "a@x.io", "name": "A"}),
        )
        .await;
        ok(
            &b,
            "AccountCreateNode",
            json!({"id": "u1", "email": "b@x.io", "name": "B"}),
        )
        .await;
        assert_eq!(
            ok(&a, "AccountReadNode", json!({"id": "u1"})).await["name"],
            "A"
        );
        assert_eq!(
            ok(&b, "AccountReadNode", json!({"id": "u1"})).await["name"],
            "B"
        );
        // Deleting one tenant's record (and, by the composite foreign key, its
        // logins) leaves the other's alone.
        ok(
            &a,
            "LoginCreateNode",
            json!({"id": "l1", "account_id": "u1", "device": "phone"}),
        )
        .await;
        ok(
            &b,
            "LoginCreateNode",
            json!({"id": "l1", "account_id": "u1", "device": "laptop"}),
        )
        .await;
        ok(&a, "AccountDeleteNode", json!({"id": "u1"})).await;
        assert_eq!(
            err(&a, "LoginReadNode", json!({"id": "l1"}))
                .await
                .code()
                .as_str(),
            "not_found"
        );
        assert_eq!(
            ok(&b, "LoginReadNode", json!({"id": "l1"})).await["device"],
            "laptop"
        );
        assert_eq!(
            ok(&b, "AccountReadNode", json!({"id": "u1"})).await["name"],
            "B"
        );
        // A rebooted schema plans no changes.
        assert!(db.migrations().plan().await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_reference_into_another_tenant_is_refused_like_a_missing_parent() {
    on_each_backend("tenancy_cross_ref", |_, db| async move {
        let (a, b) = (tenant(&db, "acme"), tenant(&db, "zeta"));
        let user = ok(&a, "AccountCreateNode", json!({"email": "a@x.io", "name": "A"})).await;
        let id = user["id"].as_str().unwrap();
        // Tenant B knows A's id, and the database refuses the reference ...
        let cross = err(&b, "LoginCreateNode", json!({"id": "l1", "account_id": id, "device": "x"})).await;
        assert_eq!(cross.code().as_str(), "fk_violation", "{cross}");
        // ... exactly as it refuses a reference to nothing.
        let missing = err(
            &b,
            "LoginCreateNode",
            json!({"id": "l1", "account_id": "0190d2a0-0000-7000-8000-000000000000", "device": "x"}),
        )
        .await;
        assert_eq!(
            (cross.code(), cross.message(), cross.field(), cross.model(), cross.node()),
            (missing.code(), missing.message(), missing.field(), missing.model(), missing.node())
        );
        // Nothing was written; A's own reference works.
        assert_eq!(ok(&b, "LoginCountNode", json!({})).await["count"], 0);
        ok(&a, "LoginCreateNode", json!({"id": "l1", "account_id": id, "device": "x"})).await;
        // Moving A's login to B's account by update is refused the same way.
        let other = ok(&b, "AccountCreateNode", json!({"email": "b@x.io", "name": "B"})).await;
        let e = err(
            &a,
            "LoginUpdateNode",
            json!({"id": "l1", "fields": {"account_id": other["id"]}}),
        )
        .await;
        assert_eq!(e.code().as_str(), "fk_violation", "{e}");
        assert_eq!(ok(&a, "LoginReadNode", json!({"id": "l1"})).await["account_id"], json!(id));
    })
    .await;
}

#[tokio::test]
async fn auto_increment_keys_of_tenant_scoped_models_are_not_writable() {
    on_each_backend("tenancy_autoinc", |_, db| async move {
        let (a, b) = (tenant(&db, "acme"), tenant(&db, "zeta"));
        let e = err(&a, "CounterCreateNode", json!({"id": 7, "label": "x"})).await;
        assert_eq!(e.code().as_str(), "validation", "{e}");
        assert_eq!(e.field(), Some("id"));
        let e = err(
            &a,
            "CounterBulkCreateNode",
            json!({"data": [{"label": "x"}, {"id": 7, "label": "y"}]}),
        )
        .await;
        assert_eq!(e.code().as_str(), "validation", "{e}");
        assert_eq!(ok(&a, "CounterCountNode", json!({})).await["count"], 0);
        let first = ok(&a, "CounterCreateNode", json!({"label": "a", "id": null})).await;
        let second = ok(&b, "CounterCreateNode", json!({"label": "b"})).await;
        assert_ne!(first["id"], second["id"], "one sequence for every tenant");
        assert_eq!(
            err(&b, "CounterReadNode", json!({"id": first["id"]}))
                .await
                .code()
                .as_str(),
            "not_found"
        );
    })
    .await;
}

/// Rows of `sql` (one text column, `v`) on a connection of its own.
fn raw_texts(conn: &mut PgConnection, sql: &str) -> Result<Vec<String>, diesel::result::Error> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        v: String,
    }
    Ok(diesel::sql_query(sql)
        .load::<Row>(conn)?
        .into_iter()
        .map(|r| r.v)
        .collect())
}

#[tokio::test]
async fn row_level_security_shows_a_raw_connection_only_its_tenant() {
    let Some(admin_url) = support::postgres::fresh_database("tenancy_rls_raw") else {
        return;
    };
    // A superuser bypasses every policy: boot refuses it with row-level security.
    let e = DataFlow::builder(&admin_url)
        .multi_tenant(true)
        .row_level_security(true)
        .build()
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "config");
    assert!(e.message().contains("BYPASSRLS"), "{e}");
    let url = support::postgres::as_plain_role(&admin_url);
    let db = DataFlow::builder(&url)
        .multi_tenant(true)
        .row_level_security(true)
        .build()
        .await
        .unwrap();
    let (a, b) = (tenant(&db, "A"), tenant(&db, "B"));
    ok(
        &a,
        "AccountBulkCreateNode",
        json!({"data": [
            {"email": "a1@x.io", "name": "A1"}, {"email": "a2@x.io", "name": "A2"}
        ]}),
    )
    .await;
    ok(
        &b,
        "AccountCreateNode",
        json!({"email": "b1@x.io", "name": "B1"}),
    )
    .await;
    let emails = "SELECT email AS v FROM accounts ORDER BY email";
    // The connecting role owns the tables; FORCE makes the policy apply to it.
    let mut raw = PgConnection::establish(&url).unwrap();
    assert_eq!(
        raw_texts(&mut raw, emails).unwrap(),
        Vec::<String>::new(),
        "no tenant, no rows"
    );
    raw_texts(
        &mut raw,
        "SELECT set_config('dataflow.tenant', 'B', false) AS v",
    )
    .unwrap();
    assert_eq!(raw_texts(&mut raw, emails).unwrap(), ["b1@x.io"]);
    // Writing into another tenant fails the policy's check.
    let e = diesel::sql_query(
        "INSERT INTO accounts (id, email, name, tenant_id, created_at, updated_at) \
         VALUES ('x', 'x@x.io', 'X', 'A', now(), now())",
    )
    .execute(&mut raw)
    .unwrap_err();
    assert!(e.to_string().contains("row-level security"), "{e}");
    let n = diesel::sql_query("UPDATE accounts SET name = 'mine' WHERE tenant_id = 'A'")
        .execute(&mut raw)
        .unwrap();
    assert_eq!(n, 0, "A's rows are invisible to an UPDATE as B");
    // The runtime's own settings are transaction-local: nothing leaks into
    // the pool, and every node still sees its own tenant.
    assert_eq!(ok(&a, "AccountCountNode", json!({})).await["count"], 2);
    ok(&a, "AccountUpdateNode", json!({"id": ok(&a, "AccountListNode", json!({"limit": 1})).await["records"][0]["id"], "fields": {"name": "A0"}})).await;
    ok(&b, "AccountUpsertNode", json!({"conflict_on": "email", "create": {"email": "b1@x.io", "name": "B2"}, "update": {"name": "B2"}})).await;
    ok(
        &a,
        "AccountBulkUpdateNode",
        json!({"filter": {}, "fields": {"name": "AA"}, "confirmed": true}),
    )
    .await;
    let pool = db.connection().unwrap();
    drop(pool);
    // A system context reads across tenants and must name one to write.
    let system = db.with_context(Context::system());
    assert_eq!(ok(&system, "AccountCountNode", json!({})).await["count"], 3);
    let e = err(
        &system,
        "AccountCreateNode",
        json!({"email": "s@x.io", "name": "S"}),
    )
    .await;
    assert_eq!(e.code().as_str(), "tenant_required");
    let names = ok(&system, "AccountListNode", json!({"order_by": "email"})).await;
    let names: Vec<&str> = names["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["AA", "AA", "B2"]);
    ok(
        &b,
        "AccountBulkDeleteNode",
        json!({"filter": {}, "confirmed": true}),
    )
    .await;
    assert_eq!(ok(&system, "AccountCountNode", json!({})).await["count"], 2);
}

#[tokio::test]
async fn a_transactional_workflow_writes_within_its_tenant_and_rolls_back_whole() {
    use dataflow::WorkflowBuilder;
    on_each_backend("tenancy_workflow", |_, db| async move {
        let mut wf = WorkflowBuilder::new();
        wf.add_node(
            "AccountCreateNode",
            "account",
            json!({"email": "{{email}}", "name": "{{name}}"}),
        );
        wf.add_node(
            "LoginCreateNode",
            "login",
            json!({"id": "{{login}}", "device": "phone"}),
        );
        wf.add_connection("account", "id", "login", "account_id");
        wf.transactional(true);
        let workflow = wf.build(&db).unwrap();
        let (a, b) = (tenant(&db, "acme"), tenant(&db, "zeta"));
        let inputs =
            |email: &str, login: &str| json!({"email": email, "name": "N", "login": login});
        let run = a
            .runtime()
            .execute(&workflow, inputs("a@x.io", "l1"))
            .await
            .unwrap();
        assert_eq!(run.results["login"]["tenant_id"], "acme");
        assert_eq!(
            run.results["login"]["account_id"],
            run.results["account"]["id"]
        );
        // The second node fails (its id is taken in this tenant): nothing stays.
        let e = a
            .runtime()
            .execute(&workflow, inputs("b@x.io", "l1"))
            .await
            .unwrap_err();
        assert_eq!(e.code().as_str(), "unique_violation", "{e}");
        assert_eq!(ok(&a, "AccountCountNode", json!({})).await["count"], 1);
        // The same login id in another tenant is its own.
        b.runtime()
            .execute(&workflow, inputs("a@x.io", "l1"))
            .await
            .unwrap();
        assert_eq!(ok(&b, "LoginCountNode", json!({})).await["count"], 1);
        assert_eq!(ok(&a, "LoginCountNode", json!({})).await["count"], 1);
    })
    .await;
}

#[tokio::test]
async fn set_null_between_tenant_scoped_models_clears_the_reference_in_one_tenant() {
    on_each_backend("tenancy_set_null", |_, db| async move {
        let (a, b) = (tenant(&db, "acme"), tenant(&db, "zeta"));
        for t in [&a, &b] {
            ok(
                t,
                "AccountCreateNode",
                json!({"id": "u1", "email": "u@x.io", "name": "U"}),
            )
            .await;
            ok(t, "NoteCreateNode", json!({"id": "n1", "account_id": "u1"})).await;
        }
        ok(&a, "AccountDeleteNode", json!({"id": "u1"})).await;
        let note = ok(&a, "NoteReadNode", json!({"id": "n1"})).await;
        assert_eq!(
            (&note["account_id"], &note["tenant_id"]),
            (&Value::Null, &json!("acme"))
        );
        assert_eq!(
            ok(&b, "NoteReadNode", json!({"id": "n1"})).await["account_id"],
            "u1"
        );
        // A reference into another tenant is refused here too.
        let e = err(
            &b,
            "NoteUpdateNode",
            json!({"id": "n1", "fields": {"account_id": "gone"}}),
        )
        .await;
        assert_eq!(e.code().as_str(), "fk_violation", "{e}");
        assert!(db.migrations().plan().await.unwrap().is_empty());
    })
    .await;
}

/// The boot check that finds nothing changed (registry `last_seen` stays)
/// also covers the policies, so switching row-level security is noticed.
#[tokio::test]
async fn an_unchanged_boot_with_row_level_security_stops_at_the_fast_check() {
    let Some(admin_url) = support::postgres::fresh_database("tenancy_rls_fast") else {
        return;
    };
    let url = support::postgres::as_plain_role(&admin_url);
    let boot = || {
        DataFlow::builder(&url)
            .multi_tenant(true)
            .row_level_security(true)
            .build()
    };
    boot().await.unwrap();
    let mut raw = PgConnection::establish(&url).unwrap();
    let seen = "SELECT string_agg(last_seen, ',' ORDER BY model) AS v FROM dataflow_registry";
    let before = raw_texts(&mut raw, seen).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    boot().await.unwrap();
    let after = raw_texts(&mut raw, seen).unwrap();
    assert_eq!(
        before, after,
        "the second boot migrated nothing, recorded nothing"
    );
    // Without RLS the policies go: a change, noticed.
    DataFlow::builder(&url)
        .multi_tenant(true)
        .build()
        .await
        .unwrap();
    let off = raw_texts(&mut raw, seen).unwrap();
    assert_ne!(after, off);
}

/// Tenant-scoped models for the adversarial tenancy table (booted with
/// `.models(..)`, so the other tests' databases do not carry them).
#[dataflow::model(tenant_scoped, table = "t_users")]
pub struct TUser {
    pub id: String,
    #[field(unique)]
    pub email: String,
    pub name: Option<String>,
}

#[dataflow::model(tenant_scoped, table = "t_notes")]
pub struct TNote {
    pub id: String,
    #[field(references = "TUser", on_delete = "cascade")]
    pub user_id: String,
    pub body: String,
}

/// Every node, tried by tenant B against tenant A's records, by id, by
/// filter, by A's cursor, by Upsert on A's unique value and id, by
/// confirmed whole-table bulk writes, by a workflow input carrying A's id
/// and by a reference to A's user: each attempt is `not_found` (the same
/// error as for a record that does not exist) or acts on B's own records
/// only, and A's rows are byte-identical afterwards.
#[tokio::test]
async fn tenant_b_cannot_see_or_touch_tenant_a() {
    on_each_backend("tenancy_adversarial", |_label, db| async move {
        let a = db.with_context(Context::new().tenant("a").actor("alice"));
        let b = db.with_context(Context::new().tenant("b").actor("bob"));
        let system = db.with_context(Context::system());

        let u1 = ok(
            &a,
            "TUserCreateNode",
            json!({"email": "x@a.io", "name": "A1"}),
        )
        .await;
        assert_eq!(u1["tenant_id"], "a", "outputs carry the tenant: {u1}");
        let u1_id = u1["id"].as_str().unwrap().to_string();
        ok(&a, "TUserCreateNode", json!({"email": "y@a.io"})).await;
        ok(
            &a,
            "TNoteCreateNode",
            json!({"user_id": u1_id, "body": "secret"}),
        )
        .await;
        let page = ok(
            &a,
            "TUserListNode",
            json!({"order_by": ["email"], "limit": 1}),
        )
        .await;
        let a_cursor = page["next"].clone();
        assert!(a_cursor.is_string(), "{page}");

        let dump = |db: DataFlow| async move {
            let mut out = Vec::new();
            for node in ["TUserListNode", "TNoteListNode"] {
                let l = ok(
                    &db,
                    node,
                    json!({"filter": {"tenant_id": "a"}, "order_by": ["id"], "limit": 1000}),
                )
                .await;
                out.push(l["records"].clone());
            }
            serde_json::to_string(&out).unwrap()
        };
        let before = dump(system.clone()).await;
        assert!(before.contains("secret"));

        // The not-found error for A's id reads exactly like the one for an id nobody has.
        let same_as_missing = |e: Error, missing: Error, real: &str| {
            let e = e.to_json().to_string().replace(real, "<id>");
            let m = missing.to_json().to_string().replace("no-such-id", "<id>");
            assert_eq!(e, m, "another tenant's record must read as missing");
        };
        for (node, params) in [
            ("TUserReadNode", json!({"id": u1_id})),
            (
                "TUserUpdateNode",
                json!({"id": u1_id, "fields": {"name": "B"}}),
            ),
            ("TUserDeleteNode", json!({"id": u1_id})),
        ] {
            let e = err(&b, node, params.clone()).await;
            assert_eq!(e.code().as_str(), "not_found", "{node}: {e}");
            let mut missing = params.clone();
            missing["id"] = json!("no-such-id");
            same_as_missing(e, err(&b, node, missing).await, &u1_id);
        }
        for (node, params) in [
            ("TUserReadNode", json!({"filter": {"email": "x@a.io"}})),
            (
                "TUserUpdateNode",
                json!({"filter": {"email": "x@a.io"}, "fields": {"name": "B"}}),
            ),
            ("TUserDeleteNode", json!({"filter": {"email": "x@a.io"}})),
        ] {
            let e = err(&b, node, params).await;
            assert_eq!(e.code().as_str(), "not_found", "{node}: {e}");
        }
        let listed = ok(&b, "TUserListNode", json!({})).await;
        assert_eq!(listed["records"], json!([]), "{listed}");
        let listed = ok(
            &b,
            "TUserListNode",
            json!({"order_by": ["email"], "after": a_cursor}),
        )
        .await;
        assert_eq!(
            listed["records"],
            json!([]),
            "A's cursor shows B nothing: {listed}"
        );
        assert_eq!(ok(&b, "TUserCountNode", json!({})).await["count"], 0);
        assert_eq!(
            ok(&b, "TUserCountNode", json!({"filter": {"tenant_id": "a"}})).await["count"],
            0
        );

        // A's unique value and A's id are B's to use: no conflict, no oracle.
        let up = ok(
            &b,
            "TUserUpsertNode",
            json!({"where": {"email": "x@a.io"}, "update": {"name": "B1"}}),
        )
        .await;
        assert_eq!(up["action"], "created", "{up}");
        assert_eq!(up["record"]["tenant_id"], "b");
        let same_id = ok(
            &b,
            "TUserCreateNode",
            json!({"id": u1_id, "email": "z@b.io"}),
        )
        .await;
        assert_eq!(
            (same_id["id"].as_str(), same_id["tenant_id"].as_str()),
            (Some(u1_id.as_str()), Some("b"))
        );
        let bulk = ok(
            &b,
            "TUserBulkCreateNode",
            json!({"data": [{"email": "y@a.io"}]}),
        )
        .await;
        assert_eq!(
            bulk["created"]
                .as_i64()
                .or(bulk["count"].as_i64())
                .unwrap_or(1),
            1,
            "{bulk}"
        );
        let bu = ok(
            &b,
            "TUserBulkUpsertNode",
            json!({"data": [{"id": u1_id, "email": "z@b.io", "name": "B2"}]}),
        )
        .await;
        assert_eq!(
            bu,
            json!({"inserted": 0, "updated": 1}),
            "B's own record, not A's"
        );
        let b_count = ok(&b, "TUserCountNode", json!({})).await["count"]
            .as_i64()
            .unwrap();
        assert_eq!(b_count, 3);
        let n = ok(
            &b,
            "TUserBulkUpdateNode",
            json!({"filter": {}, "fields": {"name": "all of B"}, "confirmed": true}),
        )
        .await;
        assert_eq!(n["updated"], b_count, "{n}");

        // A reference to A's user is refused like one to nobody.
        let e = err(
            &b,
            "TNoteCreateNode",
            json!({"user_id": "u-of-nobody", "body": "x"}),
        )
        .await;
        assert_eq!(e.code().as_str(), "fk_violation", "{e}");
        let e2 = err(
            &b,
            "TNoteCreateNode",
            json!({"user_id": "zzz", "body": "x"}),
        )
        .await;
        assert_eq!(e.to_json(), e2.to_json());
        // B has a user with A's u1 id of its own, so reference A's other user.
        let a_other = ok(&a, "TUserReadNode", json!({"filter": {"email": "y@a.io"}})).await;
        let e3 = err(
            &b,
            "TNoteCreateNode",
            json!({"user_id": a_other["id"], "body": "x"}),
        )
        .await;
        assert_eq!(
            (e3.code().as_str(), e3.to_json()),
            ("fk_violation", e.to_json())
        );

        // A workflow input carrying A's id into B's run.
        let mut wf = dataflow::WorkflowBuilder::new();
        wf.add_node("TUserReadNode", "user", json!({"id": "{{id}}"}));
        let wf = wf.build(&db).unwrap();
        let e = b
            .runtime()
            .execute(&wf, json!({"id": a_other["id"]}))
            .await
            .unwrap_err();
        assert_eq!(e.code().as_str(), "not_found");
        assert!(a
            .runtime()
            .execute(&wf, json!({"id": a_other["id"]}))
            .await
            .is_ok());

        // B deletes everything it has: A keeps everything.
        let n = ok(
            &b,
            "TUserBulkDeleteNode",
            json!({"filter": {}, "confirmed": true}),
        )
        .await;
        assert_eq!(n["deleted"], b_count);
        assert_eq!(
            dump(system.clone()).await,
            before,
            "A's rows are byte-identical"
        );

        // No tenant: never "all tenants", and nothing written.
        for (node, params) in [
            ("TUserListNode", json!({})),
            ("TUserReadNode", json!({"id": u1_id})),
            ("TUserCreateNode", json!({"email": "n@x.io"})),
            (
                "TUserBulkDeleteNode",
                json!({"filter": {}, "confirmed": true}),
            ),
        ] {
            let e = err(&db, node, params).await;
            assert_eq!(e.code().as_str(), "tenant_required", "{node}: {e}");
            assert_eq!(e.code().http_status(), 403);
        }
        let empty = db.with_context(Context::new().tenant(""));
        let e = err(&empty, "TUserListNode", json!({})).await;
        assert_eq!(
            e.code().as_str(),
            "tenant_required",
            "an empty tenant names nobody"
        );
        let e = err(&system, "TUserCreateNode", json!({"email": "s@x.io"})).await;
        assert_eq!(
            e.code().as_str(),
            "tenant_required",
            "system writes name a tenant"
        );
        let all = ok(&system, "TUserCountNode", json!({})).await["count"]
            .as_i64()
            .unwrap();
        assert_eq!(all, 2, "a system context reads across tenants");
        let e = err(
            &a,
            "TUserCreateNode",
            json!({"email": "t@a.io", "tenant_id": "b"}),
        )
        .await;
        assert_eq!(
            (e.code().as_str(), e.field()),
            ("validation", Some("tenant_id")),
            "{e}"
        );
        assert_eq!(dump(system.clone()).await, before);
    })
    .await;
}

/// The query cache keys on the tenant: what tenant A read (and cached) is
/// never served to B, for the same query, by id, filter or count; a system
/// context's cross-tenant read is an entry of its own.
#[tokio::test]
async fn the_query_cache_never_serves_one_tenant_anothers_entry() {
    let mut urls = support::backend_urls("tenancy_cache");
    if let Some(url) = support::postgres::fresh_database("tenancy_cache_rls") {
        urls.push(("postgres+rls", support::postgres::as_plain_role(&url)));
    }
    for (label, url) in urls {
        eprintln!("--- on {label}");
        let db = DataFlow::builder(&url)
            .multi_tenant(true)
            .row_level_security(label == "postgres+rls")
            .enable_caching(true)
            .build()
            .await
            .unwrap();
        let (a, b) = (tenant(&db, "a"), tenant(&db, "b"));
        let same_id = json!({"id": "acc-1", "email": "x@x.io", "name": "A's"});
        ok(&a, "AccountCreateNode", same_id).await;
        ok(
            &b,
            "AccountCreateNode",
            json!({"id": "acc-1", "email": "x@x.io", "name": "B's"}),
        )
        .await;
        ok(
            &a,
            "AccountCreateNode",
            json!({"email": "y@x.io", "name": "A2"}),
        )
        .await;
        for _ in 0..2 {
            assert_eq!(
                ok(&a, "AccountReadNode", json!({"id": "acc-1"})).await["name"],
                "A's",
                "{label}"
            );
            assert_eq!(
                ok(&a, "AccountCountNode", json!({})).await["count"],
                2,
                "{label}"
            );
            assert_eq!(
                ok(
                    &a,
                    "AccountListNode",
                    json!({"filter": {"email": "x@x.io"}})
                )
                .await["records"][0]["name"],
                "A's"
            );
        }
        let before = db.cache_stats();
        assert_eq!(
            ok(&b, "AccountReadNode", json!({"id": "acc-1"})).await["name"],
            "B's",
            "{label}"
        );
        assert_eq!(
            ok(&b, "AccountCountNode", json!({})).await["count"],
            1,
            "{label}"
        );
        assert_eq!(
            ok(
                &b,
                "AccountListNode",
                json!({"filter": {"email": "x@x.io"}})
            )
            .await["records"][0]["name"],
            "B's"
        );
        let after = db.cache_stats();
        assert_eq!(
            after.hits, before.hits,
            "{label}: B got none of A's entries"
        );
        assert_eq!(after.misses, before.misses + 3, "{label}");
        // No tenant: refused, not answered from anyone's entry.
        assert_eq!(
            err(&db, "AccountCountNode", json!({}))
                .await
                .code()
                .as_str(),
            "tenant_required"
        );
        let system = db.with_context(Context::system());
        assert_eq!(
            ok(&system, "AccountCountNode", json!({})).await["count"],
            3,
            "{label}"
        );
        assert_eq!(
            ok(&a, "AccountCountNode", json!({})).await["count"],
            2,
            "{label}"
        );
    }
}

/// Aggregate obeys the tenant like every read: a tenant's groups count its
/// records only, a call without a tenant is refused, and a system context
/// aggregates across tenants.
#[tokio::test]
async fn aggregates_count_only_the_callers_tenant() {
    on_each_backend("tenancy_aggregate", |label, db| async move {
        let (a, b) = (tenant(&db, "a"), tenant(&db, "b"));
        for (who, email, name) in [
            (&a, "1@x.io", "x"),
            (&a, "2@x.io", "y"),
            (&b, "1@x.io", "x"),
        ] {
            ok(
                who,
                "AccountCreateNode",
                json!({"email": email, "name": name}),
            )
            .await;
        }
        let query = json!({"group_by": "name", "aggregates": {"n": {"$count": "*"}}});
        let groups = |out: Value| out["groups"].clone();
        assert_eq!(
            groups(ok(&a, "AccountAggregateNode", query.clone()).await),
            json!([{"name": "x", "n": 1}, {"name": "y", "n": 1}]),
            "{label}"
        );
        assert_eq!(
            groups(ok(&b, "AccountAggregateNode", query.clone()).await),
            json!([{"name": "x", "n": 1}]),
            "{label}"
        );
        let e = err(&db, "AccountAggregateNode", query.clone()).await;
        assert_eq!(e.code(), "tenant_required", "{label}: {e}");
        let system = db.with_context(Context::system());
        assert_eq!(
            groups(ok(&system, "AccountAggregateNode", query).await),
            json!([{"name": "x", "n": 2}, {"name": "y", "n": 1}]),
            "{label}"
        );
    })
    .await;
}
