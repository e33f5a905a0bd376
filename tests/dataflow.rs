//! The core, end to end: every node on real SQLite files and a real
//! PostgreSQL server, through the same test bodies.

mod support;

use chrono::{DateTime, NaiveDate, Utc};
use dataflow::{DataFlow, Error, Model as _};
use serde_json::{json, Value};
use std::future::Future;
use std::time::{Duration, Instant};
use support::{postgres, sqlite_url};

#[dataflow::model]
pub struct User {
    pub id: String,
    #[field(unique)]
    pub email: String,
    pub full_name: Option<String>,
    #[field(default = true)]
    pub active: bool,
}

#[dataflow::model]
pub struct Session {
    pub id: String,
    #[field(references = "User", on_delete = "cascade")]
    pub user_id: String,
    #[field(unique)]
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

#[dataflow::model]
pub struct Conversation {
    pub id: String,
    #[field(references = "Session", on_delete = "cascade")]
    pub session_id: String,
    #[field(references = "User", on_delete = "restrict")]
    pub user_id: String,
    pub title: Option<String>,
}

/// Integer auto-increment key, soft delete, no timestamps, custom table and column.
#[dataflow::model(table = "docs", soft_delete, timestamps = false)]
pub struct Doc {
    pub id: i64,
    #[field(max_length = 20)]
    pub title: String,
    #[field(index)]
    pub rank: i32,
    #[field(column = "body_text")]
    pub body: Option<String>,
}

/// Soft delete with timestamps (`Doc` has none): deleting must move `updated_at`.
#[dataflow::model(soft_delete)]
pub struct Memo {
    pub id: String,
    pub text: String,
}

#[dataflow::model(append_only)]
pub struct AuditEntry {
    pub id: String,
    pub message: String,
}

/// One field of every supported type.
#[dataflow::model]
pub struct Sample {
    pub id: uuid::Uuid,
    pub small: i16,
    pub int: i32,
    pub big: i64,
    pub real: f32,
    pub double: f64,
    pub flag: bool,
    pub at: DateTime<Utc>,
    pub day: NaiveDate,
    pub uid: uuid::Uuid,
    pub doc: serde_json::Value,
    pub bytes: Vec<u8>,
    pub maybe: Option<i64>,
    pub maybe_at: Option<DateTime<Utc>>,
    #[field(skip)]
    pub scratch: Vec<String>,
}

/// For the Aggregate node: nullable group and value fields, integers and
/// floats, soft delete.
#[dataflow::model(soft_delete)]
pub struct Sale {
    pub id: String,
    pub region: Option<String>,
    pub user_id: String,
    pub amount: i64,
    pub price: f64,
    pub qty: Option<i32>,
}

/// Runs `body` against a fresh SQLite file and a fresh PostgreSQL database.
async fn on_each_backend<F, Fut>(name: &str, body: F)
where
    F: Fn(DataFlow) -> Fut,
    Fut: Future<Output = ()>,
{
    for (label, url) in support::backend_urls(name) {
        eprintln!("--- {name} on {label}");
        let db = DataFlow::builder(&url)
            .build()
            .await
            .unwrap_or_else(|e| panic!("{name}: boot on {label} failed: {e}"));
        body(db).await;
    }
}

async fn ok(db: &DataFlow, node: &str, params: Value) -> Value {
    db.execute(node, params.clone())
        .await
        .unwrap_or_else(|e| panic!("{node} {params} failed: {e}"))
}

async fn err(db: &DataFlow, node: &str, params: Value) -> Error {
    match db.execute(node, params.clone()).await {
        Ok(v) => panic!("{node} {params} should fail, returned {v}"),
        Err(e) => e,
    }
}

async fn count(db: &DataFlow, model: &str) -> i64 {
    ok(
        db,
        &format!("{model}CountNode"),
        json!({"include_deleted": true}),
    )
    .await["count"]
        .as_i64()
        .unwrap()
}

async fn seed_users(db: &DataFlow, n: usize) -> Vec<Value> {
    let data: Vec<Value> = (0..n)
        .map(|i| json!({"email": format!("u{i:02}@x.io"), "full_name": format!("User {i:02}"), "active": i % 2 == 0}))
        .collect();
    ok(db, "UserBulkCreateNode", json!({"data": data})).await;
    ok(db, "UserListNode", json!({"order_by": "email"})).await["records"]
        .as_array()
        .unwrap()
        .clone()
}

// ------------------------------------------------------------------ Create / Read

#[tokio::test]
async fn create_generates_id_and_applies_defaults() {
    on_each_backend("create_defaults", |db| async move {
        let rec = ok(&db, "UserCreateNode", json!({"email": "a@x.io"})).await;
        let id = rec["id"].as_str().unwrap();
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
        assert_eq!(rec["active"], true);
        assert_eq!(rec["full_name"], Value::Null);
        assert_eq!(rec["email"], "a@x.io");
        assert_eq!(rec["created_at"], rec["updated_at"]);
        assert!(DateTime::parse_from_rfc3339(rec["created_at"].as_str().unwrap()).is_ok());

        let given = ok(
            &db,
            "UserCreateNode",
            json!({"id": "my-id", "email": "b@x.io", "active": false}),
        )
        .await;
        assert_eq!(given["id"], "my-id");
        assert_eq!(given["active"], false);

        let doc = ok(&db, "DocCreateNode", json!({"title": "first", "rank": 1})).await;
        let doc2 = ok(
            &db,
            "DocCreateNode",
            json!({"title": "second", "rank": 2, "body": "text"}),
        )
        .await;
        assert_eq!(
            doc2["id"].as_i64().unwrap(),
            doc["id"].as_i64().unwrap() + 1
        );
        assert_eq!(doc2["body"], "text");
        assert_eq!(doc["deleted_at"], Value::Null);
        assert!(doc.get("created_at").is_none(), "timestamps = false");
    })
    .await;
}

#[tokio::test]
async fn read_by_id_and_filter() {
    on_each_backend("read", |db| async move {
        let users = seed_users(&db, 3).await;
        let id = &users[1]["id"];
        assert_eq!(ok(&db, "UserReadNode", json!({"id": id})).await, users[1]);
        assert_eq!(
            ok(
                &db,
                "UserReadNode",
                json!({"filter": {"email": "u02@x.io"}})
            )
            .await,
            users[2]
        );

        let e = err(&db, "UserReadNode", json!({"id": "nope"})).await;
        assert_eq!(e.code().as_str(), "not_found");
        assert!(
            e.message().contains("User") && e.message().contains("nope"),
            "{e}"
        );
        assert_eq!(e.node(), Some("UserReadNode"));
        let e = err(&db, "UserReadNode", json!({})).await;
        assert_eq!(e.code().as_str(), "validation");
        let e = err(
            &db,
            "UserReadNode",
            json!({"id": id, "filter": {"email": "x"}}),
        )
        .await;
        assert_eq!(e.code().as_str(), "validation");
    })
    .await;
}

// ------------------------------------------------------------------ Update / Delete

#[tokio::test]
async fn update_by_id_and_by_filter() {
    on_each_backend("update", |db| async move {
        let users = seed_users(&db, 3).await;
        let id = users[0]["id"].clone();
        let updated = ok(
            &db,
            "UserUpdateNode",
            json!({"id": id, "fields": {"full_name": "Zed", "active": false}}),
        )
        .await;
        assert_eq!(updated["full_name"], "Zed");
        assert_eq!(updated["active"], false);
        assert_eq!(updated["created_at"], users[0]["created_at"]);
        assert!(updated["updated_at"].as_str() >= users[0]["updated_at"].as_str());
        assert_eq!(ok(&db, "UserReadNode", json!({"id": id})).await, updated);

        let by_filter = ok(
            &db,
            "UserUpdateNode",
            json!({"filter": {"email": "u01@x.io"}, "fields": {"full_name": null}}),
        )
        .await;
        assert_eq!(by_filter["full_name"], Value::Null);

        let e = err(
            &db,
            "UserUpdateNode",
            json!({"id": "missing", "fields": {"active": true}}),
        )
        .await;
        assert_eq!(e.code().as_str(), "not_found");
        let e = err(
            &db,
            "UserUpdateNode",
            json!({"filter": {"email": {"$like": "%@x.io"}}, "fields": {"active": true}}),
        )
        .await;
        assert_eq!(e.code().as_str(), "validation");
        assert!(e.message().contains("more than one"), "{e}");
        let e = err(
            &db,
            "UserUpdateNode",
            json!({"id": id, "fields": {"id": "other"}}),
        )
        .await;
        assert_eq!((e.code().as_str(), e.field()), ("validation", Some("id")));
        let e = err(
            &db,
            "UserUpdateNode",
            json!({"id": id, "fields": {"created_at": "2020-01-01T00:00:00Z"}}),
        )
        .await;
        assert_eq!(
            (e.code().as_str(), e.field()),
            ("validation", Some("created_at"))
        );
        let e = err(&db, "UserUpdateNode", json!({"id": id, "fields": {}})).await;
        assert_eq!(e.code().as_str(), "validation");
        let e = err(
            &db,
            "UserUpdateNode",
            json!({"id": id, "fields": {"email": "u02@x.io"}}),
        )
        .await;
        assert_eq!(
            (e.code().as_str(), e.field()),
            ("unique_violation", Some("email"))
        );
        assert_eq!(
            ok(&db, "UserReadNode", json!({"id": id})).await["email"],
            "u00@x.io"
        );
    })
    .await;
}

#[tokio::test]
async fn delete_hard_and_soft() {
    on_each_backend("delete", |db| async move {
        let users = seed_users(&db, 2).await;
        let out = ok(&db, "UserDeleteNode", json!({"id": users[0]["id"]})).await;
        assert_eq!(out, json!({"id": users[0]["id"], "deleted": true}));
        assert_eq!(
            err(&db, "UserReadNode", json!({"id": users[0]["id"]}))
                .await
                .code(),
            "not_found"
        );
        assert_eq!(
            err(&db, "UserDeleteNode", json!({"id": users[0]["id"]}))
                .await
                .code(),
            "not_found"
        );
        assert_eq!(count(&db, "User").await, 1);

        let doc = ok(&db, "DocCreateNode", json!({"title": "t", "rank": 1})).await;
        let out = ok(&db, "DocDeleteNode", json!({"id": doc["id"]})).await;
        assert_eq!(out["deleted"], true);
        assert_eq!(
            err(&db, "DocReadNode", json!({"id": doc["id"]}))
                .await
                .code(),
            "not_found"
        );
        let kept = ok(
            &db,
            "DocReadNode",
            json!({"id": doc["id"], "include_deleted": true}),
        )
        .await;
        assert!(
            kept["deleted_at"].is_string(),
            "soft delete keeps the row: {kept}"
        );
        assert_eq!(ok(&db, "DocCountNode", json!({})).await["count"], 0);
        assert_eq!(
            ok(&db, "DocCountNode", json!({"include_deleted": true})).await["count"],
            1
        );
        assert_eq!(
            err(&db, "DocDeleteNode", json!({"id": doc["id"]}))
                .await
                .code(),
            "not_found"
        );
    })
    .await;
}

#[tokio::test]
async fn soft_delete_moves_updated_at_on_delete_and_bulk_delete() {
    on_each_backend("soft_delete_updated_at", |db| async move {
        let created = ok(
            &db,
            "MemoBulkCreateNode",
            json!({"data": [{"text": "one"}, {"text": "two"}]}),
        )
        .await;
        let ids = created["ids"].as_array().unwrap().clone();
        tokio::time::sleep(Duration::from_millis(5)).await;
        ok(&db, "MemoDeleteNode", json!({"id": ids[0]})).await;
        let out = ok(
            &db,
            "MemoBulkDeleteNode",
            json!({"filter": {"text": "two"}}),
        )
        .await;
        assert_eq!(out["deleted"], 1);
        let mut deleted = Vec::new();
        for (id, by) in ids.iter().zip(["Delete", "BulkDelete"]) {
            let rec = ok(
                &db,
                "MemoReadNode",
                json!({"id": id, "include_deleted": true}),
            )
            .await;
            deleted.push((by, rec));
        }
        let at = |rec: &Value, k: &str| {
            DateTime::parse_from_rfc3339(rec[k].as_str().unwrap_or_else(|| panic!("{k}: {rec}")))
                .unwrap()
        };
        for (by, rec) in &deleted {
            assert!(
                at(rec, "updated_at") > at(rec, "created_at"),
                "{by} moves updated_at: {rec}"
            );
        }
        for (by, rec) in &deleted {
            assert_eq!(
                rec["updated_at"], rec["deleted_at"],
                "{by} sets deleted_at and updated_at to one instant: {rec}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn foreign_keys_are_enforced() {
    on_each_backend("fk", |db| async move {
        let e = err(
            &db,
            "SessionCreateNode",
            json!({"user_id": "ghost", "token": "t", "expires_at": "2030-01-01T00:00:00Z"}),
        )
        .await;
        assert_eq!(e.code().as_str(), "fk_violation");
        assert!(e.message().contains("Session"), "{e}");
        assert_eq!(count(&db, "Session").await, 0);

        let user = ok(&db, "UserCreateNode", json!({"email": "fk@x.io"})).await;
        let session = ok(
            &db,
            "SessionCreateNode",
            json!({"user_id": user["id"], "token": "t", "expires_at": "2030-01-01T00:00:00Z"}),
        )
        .await;
        ok(
            &db,
            "ConversationCreateNode",
            json!({"session_id": session["id"], "user_id": user["id"]}),
        )
        .await;
        // Conversation.user_id restricts deleting its user.
        let e = err(&db, "UserDeleteNode", json!({"id": user["id"]})).await;
        assert_eq!(e.code().as_str(), "fk_violation");
        assert_eq!(count(&db, "User").await, 1);
        // Deleting the session cascades to its conversations; then the user can go.
        ok(&db, "SessionDeleteNode", json!({"id": session["id"]})).await;
        assert_eq!(count(&db, "Conversation").await, 0);
        ok(&db, "UserDeleteNode", json!({"id": user["id"]})).await;
    })
    .await;
}

// ------------------------------------------------------------------ List / Count

#[tokio::test]
async fn list_filters_orders_and_pages() {
    on_each_backend("list", |db| async move {
        let users = seed_users(&db, 25).await;
        let page = ok(
            &db,
            "UserListNode",
            json!({"filter": {"active": true}, "order_by": ["-email"], "limit": 5}),
        )
        .await;
        assert_eq!(page["count"], 5);
        assert_eq!(page["limit"], 5);
        let emails: Vec<&str> = page["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["email"].as_str().unwrap())
            .collect();
        assert_eq!(
            emails,
            ["u24@x.io", "u22@x.io", "u20@x.io", "u18@x.io", "u16@x.io"]
        );

        // Keyset pages cover every record once, in order.
        let mut seen = Vec::new();
        let mut after = Value::Null;
        loop {
            let page = ok(
                &db,
                "UserListNode",
                json!({"order_by": "email", "limit": 7, "after": after}),
            )
            .await;
            seen.extend(
                page["records"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["email"].as_str().unwrap().to_string()),
            );
            if page["next"].is_null() {
                break;
            }
            after = page["next"].clone();
        }
        let all: Vec<String> = users
            .iter()
            .map(|u| u["email"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(seen, all);

        let page = ok(
            &db,
            "UserListNode",
            json!({"order_by": "email", "limit": 3, "offset": 22}),
        )
        .await;
        assert_eq!(page["count"], 3);
        assert_eq!(page["records"][0]["email"], "u22@x.io");
        assert_eq!(ok(&db, "UserListNode", json!({})).await["count"], 25);
        assert_eq!(
            ok(&db, "UserListNode", json!({"limit": 0})).await["count"],
            0
        );

        let e = err(
            &db,
            "UserListNode",
            json!({"order_by": "email", "after": "garbage"}),
        )
        .await;
        assert_eq!(
            (e.code().as_str(), e.field()),
            ("validation", Some("after"))
        );
        let e = err(&db, "UserListNode", json!({"order_by": ["nope"]})).await;
        assert_eq!(e.code().as_str(), "validation");
        assert!(e.message().contains("nope"), "{e}");
        let e = err(&db, "UserListNode", json!({"limit": -1})).await;
        assert_eq!(
            (e.code().as_str(), e.field()),
            ("validation", Some("limit"))
        );
        let e = err(&db, "UserListNode", json!({"limti": 3})).await;
        assert!(e.message().contains("did you mean `limit`"), "{e}");

        assert_eq!(
            ok(&db, "UserCountNode", json!({"filter": {"active": false}})).await["count"],
            12
        );
        assert_eq!(ok(&db, "UserCountNode", json!({})).await["count"], 25);
    })
    .await;
}

#[tokio::test]
async fn filter_operators() {
    on_each_backend("filters", |db| async move {
        seed_users(&db, 10).await;
        ok(
            &db,
            "UserUpdateNode",
            json!({"filter": {"email": "u03@x.io"}, "fields": {"full_name": null}}),
        )
        .await;
        let n = |f: Value| {
            let db = db.clone();
            async move {
                ok(&db, "UserCountNode", json!({"filter": f})).await["count"]
                    .as_i64()
                    .unwrap()
            }
        };
        assert_eq!(n(json!({"email": "u01@x.io"})).await, 1);
        assert_eq!(n(json!({"email": {"$eq": "u01@x.io"}})).await, 1);
        assert_eq!(n(json!({"email": {"$ne": "u01@x.io"}})).await, 9);
        assert_eq!(n(json!({"email": {"$gt": "u07@x.io"}})).await, 2);
        assert_eq!(n(json!({"email": {"$gte": "u07@x.io"}})).await, 3);
        assert_eq!(n(json!({"email": {"$lt": "u02@x.io"}})).await, 2);
        assert_eq!(
            n(json!({"email": {"$lte": "u02@x.io", "$gt": "u00@x.io"}})).await,
            2
        );
        assert_eq!(
            n(json!({"email": {"$in": ["u01@x.io", "u02@x.io", "zz"]}})).await,
            2
        );
        assert_eq!(n(json!({"email": {"$in": []}})).await, 0);
        assert_eq!(n(json!({"email": {"$nin": ["u01@x.io"]}})).await, 9);
        assert_eq!(n(json!({"full_name": {"$like": "User 0%"}})).await, 9);
        assert_eq!(
            n(json!({"full_name": {"$like": "user 0%"}})).await,
            0,
            "$like is case-sensitive"
        );
        assert_eq!(n(json!({"full_name": {"$ilike": "user 0%"}})).await, 9);
        assert_eq!(n(json!({"full_name": {"$null": true}})).await, 1);
        assert_eq!(n(json!({"full_name": null})).await, 1);
        assert_eq!(n(json!({"full_name": {"$exists": true}})).await, 9);
        assert_eq!(
            n(json!({"full_name": {"$ne": "User 01"}})).await,
            9,
            "$ne matches missing values"
        );
        assert_eq!(
            n(json!({"$or": [{"email": "u01@x.io"}, {"email": "u02@x.io"}]})).await,
            2
        );
        assert_eq!(
            n(json!({"$and": [{"active": true}, {"email": {"$lt": "u05@x.io"}}]})).await,
            3
        );
        assert_eq!(n(json!({"$not": {"active": true}})).await, 5);
        assert_eq!(
            n(json!({"email": {"$not": {"$in": ["u01@x.io"]}}})).await,
            9
        );
        assert_eq!(
            n(json!({"active": true, "$or": [{"email": "u00@x.io"}, {"email": "u01@x.io"}]})).await,
            1
        );
        // A value that looks like SQL is just a value.
        assert_eq!(n(json!({"email": "x' OR '1'='1"})).await, 0);

        let bad = |f: Value| {
            let db = db.clone();
            async move { err(&db, "UserListNode", json!({"filter": f})).await }
        };
        let e = bad(json!({"email": {"$in": "u01@x.io"}})).await;
        assert_eq!(
            (e.code().as_str(), e.field()),
            ("validation", Some("email"))
        );
        assert!(
            e.message().contains("$in") && e.message().contains("array"),
            "{e}"
        );
        let e = bad(json!({"email": {"$regex": "x"}})).await;
        assert_eq!(
            (e.code().as_str(), e.field()),
            ("validation", Some("email"))
        );
        assert!(
            e.message().contains("unknown filter operator `$regex`"),
            "{e}"
        );
        let e = bad(json!({"emial": "x"})).await;
        assert_eq!(
            (e.code().as_str(), e.field()),
            ("validation", Some("emial"))
        );
        assert!(e.message().contains("did you mean `email`"), "{e}");
        let e = bad(json!({"$nor": []})).await;
        assert_eq!(e.code().as_str(), "validation");
        let e = bad(json!({"active": "yes"})).await;
        assert_eq!(
            (e.code().as_str(), e.field()),
            ("validation", Some("active"))
        );
        let e = bad(json!({"$or": {"email": "x"}})).await;
        assert_eq!(e.code().as_str(), "validation");
        let e = bad(json!("email = 1")).await;
        assert_eq!(e.code().as_str(), "validation");
    })
    .await;
}

// ------------------------------------------------------------------ Upsert

#[tokio::test]
async fn upsert_creates_then_updates() {
    on_each_backend("upsert", |db| async move {
        let params = json!({
            "where": {"email": "up@x.io"},
            "create": {"full_name": "New"},
            "update": {"full_name": "Again"},
        });
        let first = ok(&db, "UserUpsertNode", params.clone()).await;
        assert_eq!(first["action"], "created");
        assert_eq!(first["record"]["email"], "up@x.io");
        assert_eq!(first["record"]["full_name"], "New");
        let second = ok(&db, "UserUpsertNode", params).await;
        assert_eq!(second["action"], "updated");
        assert_eq!(second["record"]["id"], first["record"]["id"]);
        assert_eq!(second["record"]["full_name"], "Again");
        assert_eq!(count(&db, "User").await, 1);

        let by_key = ok(
            &db,
            "UserUpsertNode",
            json!({"create": {"email": "up@x.io", "full_name": "x"}, "update": {"active": false}, "conflict_on": "email"}),
        )
        .await;
        assert_eq!(by_key["action"], "updated");
        assert_eq!(by_key["record"]["active"], false);

        let e = err(&db, "UserUpsertNode", json!({"create": {"email": "z@x.io"}, "conflict_on": "full_name"})).await;
        assert_eq!((e.code().as_str(), e.field()), ("validation", Some("conflict_on")));
        let e = err(&db, "UserUpsertNode", json!({"create": {"email": "z@x.io"}})).await;
        assert_eq!((e.code().as_str(), e.field()), ("validation", Some("where")));
        assert_eq!(count(&db, "User").await, 1);
    })
    .await;
}

// ------------------------------------------------------------------ Bulk

#[tokio::test]
async fn bulk_create_returns_ids_and_spans_batches() {
    on_each_backend("bulk_create", |db| async move {
        let data: Vec<Value> = (0..2500)
            .map(|i| json!({"email": format!("b{i}@x.io")}))
            .collect();
        let out = ok(
            &db,
            "UserBulkCreateNode",
            json!({"data": data, "batch_size": 700}),
        )
        .await;
        assert_eq!(out["inserted"], 2500);
        let ids = out["ids"].as_array().unwrap();
        assert_eq!(ids.len(), 2500);
        let read = ok(&db, "UserReadNode", json!({"id": ids[1234]})).await;
        assert_eq!(read["email"], "b1234@x.io");

        // Integer keys come back from the database.
        let docs: Vec<Value> = (0..10)
            .map(|i| json!({"title": format!("d{i}"), "rank": i}))
            .collect();
        let out = ok(&db, "DocBulkCreateNode", json!({"data": docs})).await;
        let ids: Vec<i64> = out["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(ids.len(), 10);
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");

        // More rows than one statement can bind: 6 columns × 20,000 rows.
        let data: Vec<Value> = (0..20_000)
            .map(|i| json!({"email": format!("big{i}@x.io"), "full_name": "n"}))
            .collect();
        let out = ok(
            &db,
            "UserBulkCreateNode",
            json!({"data": data, "batch_size": 1_000_000}),
        )
        .await;
        assert_eq!(out["inserted"], 20_000);
        assert_eq!(count(&db, "User").await, 22_500);
        assert_eq!(
            ok(&db, "UserBulkCreateNode", json!({"data": []})).await,
            json!({"inserted": 0, "ids": []})
        );
    })
    .await;
}

#[tokio::test]
async fn bulk_create_with_one_bad_row_writes_nothing() {
    on_each_backend("bulk_atomic", |db| async move {
        let mut data: Vec<Value> = (0..50)
            .map(|i| json!({"email": format!("r{i}@x.io")}))
            .collect();
        data[37] = json!({"email": 42});
        let e = err(&db, "UserBulkCreateNode", json!({"data": data.clone()})).await;
        assert_eq!(
            (e.code().as_str(), e.field()),
            ("validation", Some("email"))
        );
        assert!(e.message().contains("data[37]"), "{e}");
        assert_eq!(count(&db, "User").await, 0);

        // A row the database refuses (duplicate unique value in a later batch).
        data[37] = json!({"email": "r0@x.io"});
        let e = err(
            &db,
            "UserBulkCreateNode",
            json!({"data": data, "batch_size": 10}),
        )
        .await;
        assert_eq!(e.code().as_str(), "unique_violation");
        assert_eq!(count(&db, "User").await, 0);

        let e = err(
            &db,
            "DocBulkCreateNode",
            json!({"data": [{"title": "a", "rank": 1}, {"id": 7, "title": "b", "rank": 2}]}),
        )
        .await;
        assert_eq!((e.code().as_str(), e.field()), ("validation", Some("id")));
        assert_eq!(count(&db, "Doc").await, 0);
        let e = err(
            &db,
            "UserBulkCreateNode",
            json!({"data": {"email": "a@x.io"}}),
        )
        .await;
        assert_eq!((e.code().as_str(), e.field()), ("validation", Some("data")));
        assert_eq!(count(&db, "User").await, 0);
    })
    .await;
}

#[tokio::test]
async fn bulk_update_and_delete() {
    on_each_backend("bulk_update_delete", |db| async move {
        seed_users(&db, 10).await;
        let out = ok(
            &db,
            "UserBulkUpdateNode",
            json!({"filter": {"active": false}, "fields": {"full_name": "off"}}),
        )
        .await;
        assert_eq!(out, json!({"updated": 5}));
        assert_eq!(
            ok(
                &db,
                "UserCountNode",
                json!({"filter": {"full_name": "off"}})
            )
            .await["count"],
            5
        );

        let e = err(&db, "UserBulkDeleteNode", json!({"filter": {}})).await;
        assert_eq!(e.code().as_str(), "confirmation_required");
        assert!(e.message().contains("confirmed"), "{e}");
        let e = err(&db, "UserBulkDeleteNode", json!({})).await;
        assert_eq!(e.code().as_str(), "confirmation_required");
        let e = err(
            &db,
            "UserBulkUpdateNode",
            json!({"fields": {"active": true}}),
        )
        .await;
        assert_eq!(e.code().as_str(), "confirmation_required");
        assert_eq!(count(&db, "User").await, 10);

        let out = ok(
            &db,
            "UserBulkDeleteNode",
            json!({"filter": {"full_name": "off"}}),
        )
        .await;
        assert_eq!(out, json!({"deleted": 5}));
        let out = ok(
            &db,
            "UserBulkDeleteNode",
            json!({"filter": {}, "confirmed": true}),
        )
        .await;
        assert_eq!(out, json!({"deleted": 5}));
        assert_eq!(count(&db, "User").await, 0);

        // Soft delete keeps rows.
        ok(
            &db,
            "DocBulkCreateNode",
            json!({"data": [{"title": "a", "rank": 1}, {"title": "b", "rank": 2}]}),
        )
        .await;
        assert_eq!(
            ok(
                &db,
                "DocBulkDeleteNode",
                json!({"filter": {"rank": {"$gte": 1}}})
            )
            .await["deleted"],
            2
        );
        assert_eq!(ok(&db, "DocCountNode", json!({})).await["count"], 0);
        assert_eq!(
            ok(&db, "DocCountNode", json!({"include_deleted": true})).await["count"],
            2
        );
    })
    .await;
}

#[tokio::test]
async fn bulk_upsert_counts_inserts_and_updates() {
    on_each_backend("bulk_upsert", |db| async move {
        seed_users(&db, 3).await;
        let out = ok(
            &db,
            "UserBulkUpsertNode",
            json!({"conflict_on": "email", "data": [
                {"email": "u00@x.io", "full_name": "changed"},
                {"email": "new1@x.io"},
                {"email": "new2@x.io", "active": false},
            ]}),
        )
        .await;
        assert_eq!(out, json!({"inserted": 2, "updated": 1}));
        assert_eq!(count(&db, "User").await, 5);
        let u = ok(
            &db,
            "UserReadNode",
            json!({"filter": {"email": "u00@x.io"}}),
        )
        .await;
        assert_eq!(u["full_name"], "changed");

        let e = err(
            &db,
            "UserBulkUpsertNode",
            json!({"conflict_on": "email", "data": [{"email": "d@x.io"}, {"email": "d@x.io"}]}),
        )
        .await;
        assert_eq!(e.code().as_str(), "validation");
        assert_eq!(count(&db, "User").await, 5);
        let e = err(
            &db,
            "UserBulkUpsertNode",
            json!({"conflict_on": "active", "data": [{"email": "d@x.io"}]}),
        )
        .await;
        assert_eq!(
            (e.code().as_str(), e.field()),
            ("validation", Some("conflict_on"))
        );
    })
    .await;
}

// ------------------------------------------------------------------ Bad input

#[tokio::test]
async fn bad_create_input_is_a_validation_error_and_writes_nothing() {
    on_each_backend("bad_input", |db| async move {
        let e = err(&db, "UserCreateNode", json!({"full_name": "no email"})).await;
        assert_eq!(
            (e.code().as_str(), e.model(), e.field()),
            ("validation", Some("User"), Some("email"))
        );
        assert!(
            e.message().contains("missing required field `email`"),
            "{e}"
        );

        let e = err(&db, "UserCreateNode", json!({"email": 5})).await;
        assert_eq!(
            (e.code().as_str(), e.field()),
            ("validation", Some("email"))
        );
        assert!(
            e.message()
                .contains("User.email: expected a string, got an integer"),
            "{e}"
        );

        let e = err(
            &db,
            "UserCreateNode",
            json!({"email": "a@x.io", "nickname": "A"}),
        )
        .await;
        assert_eq!(
            (e.code().as_str(), e.field()),
            ("validation", Some("nickname"))
        );
        assert!(e.message().contains("User has no field `nickname`"), "{e}");

        let e = err(&db, "UserCreateNode", json!({"email": null})).await;
        assert_eq!(e.code().as_str(), "validation");
        let e = err(&db, "UserCreateNode", json!(["not", "an", "object"])).await;
        assert_eq!(e.code().as_str(), "validation");
        let e = err(
            &db,
            "UserCreateNode",
            json!({"email": "a@x.io", "updated_at": "2020-01-01T00:00:00Z"}),
        )
        .await;
        assert_eq!(
            (e.code().as_str(), e.field()),
            ("validation", Some("updated_at"))
        );
        let e = err(
            &db,
            "DocCreateNode",
            json!({"title": "x".repeat(21), "rank": 1}),
        )
        .await;
        assert_eq!(
            (e.code().as_str(), e.field()),
            ("validation", Some("title"))
        );
        assert!(e.message().contains("at most 20"), "{e}");
        let e = err(
            &db,
            "DocCreateNode",
            json!({"title": "x", "rank": 3_000_000_000i64}),
        )
        .await;
        assert_eq!((e.code().as_str(), e.field()), ("validation", Some("rank")));
        let e = err(&db, "SampleCreateNode", json!({"day": "31/01/2026"})).await;
        assert_eq!(e.code().as_str(), "validation");
        assert_eq!(count(&db, "User").await, 0);
        assert_eq!(count(&db, "Doc").await, 0);

        ok(&db, "UserCreateNode", json!({"email": "dup@x.io"})).await;
        let e = err(&db, "UserCreateNode", json!({"email": "dup@x.io"})).await;
        assert_eq!(
            (e.code().as_str(), e.model(), e.field()),
            ("unique_violation", Some("User"), Some("email"))
        );
        assert!(
            !e.message().contains("dup@x.io"),
            "values stay out of messages: {e}"
        );
        assert_eq!(count(&db, "User").await, 1);

        let e = err(&db, "UserCreatNode", json!({})).await;
        assert_eq!(e.code().as_str(), "unknown_node");
        assert!(e.message().contains("did you mean `UserCreateNode`"), "{e}");

        let e = err(
            &db,
            "AuditEntryUpdateNode",
            json!({"id": "x", "fields": {"message": "m"}}),
        )
        .await;
        assert_eq!(e.code().as_str(), "not_allowed");
        let e = err(
            &db,
            "AuditEntryBulkDeleteNode",
            json!({"filter": {}, "confirmed": true}),
        )
        .await;
        assert_eq!(e.code().as_str(), "not_allowed");
        ok(&db, "AuditEntryCreateNode", json!({"message": "kept"})).await;
    })
    .await;
}

// ------------------------------------------------------------------ Types

#[tokio::test]
async fn every_type_round_trips() {
    on_each_backend("types", |db| async move {
        let input = json!({
            "small": -32768, "int": 2147483647, "big": 9007199254740993i64, "real": 1.5, "double": -2.25,
            "flag": true, "at": "2026-03-04T05:06:07.123456+02:00", "day": "2026-02-28",
            "uid": "67e55044-10b1-426f-9247-bb680e5fe0c8", "doc": {"a": [1, "two", null], "b": {"c": true}},
            "bytes": [0, 1, 254, 255], "maybe": null,
        });
        let rec = ok(&db, "SampleCreateNode", input).await;
        assert_eq!(uuid::Uuid::parse_str(rec["id"].as_str().unwrap()).unwrap().get_version_num(), 7);
        assert_eq!(rec["small"], -32768);
        assert_eq!(rec["int"], 2147483647);
        assert_eq!(rec["big"], 9007199254740993i64);
        assert_eq!(rec["real"], 1.5);
        assert_eq!(rec["double"], -2.25);
        assert_eq!(rec["flag"], true);
        assert_eq!(rec["at"], "2026-03-04T03:06:07.123456Z");
        assert_eq!(rec["day"], "2026-02-28");
        assert_eq!(rec["uid"], "67e55044-10b1-426f-9247-bb680e5fe0c8");
        assert_eq!(rec["doc"], json!({"a": [1, "two", null], "b": {"c": true}}));
        assert_eq!(rec["bytes"], json!([0, 1, 254, 255]));
        assert_eq!(rec["maybe"], Value::Null);
        assert_eq!(rec["maybe_at"], Value::Null);
        assert!(rec.get("scratch").is_none(), "skipped fields are not persisted");
        assert_eq!(ok(&db, "SampleReadNode", json!({"id": rec["id"]})).await, rec);

        // Typed values compare in filters on both backends.
        let n = |f: Value| {
            let db = db.clone();
            async move { ok(&db, "SampleCountNode", json!({"filter": f})).await["count"].as_i64().unwrap() }
        };
        assert_eq!(n(json!({"at": {"$gt": "2026-03-04T03:06:07Z"}})).await, 1);
        assert_eq!(n(json!({"at": {"$lt": "2026-03-04T03:06:07Z"}})).await, 0);
        assert_eq!(n(json!({"day": {"$gte": "2026-02-01", "$lt": "2026-03-01"}})).await, 1);
        assert_eq!(n(json!({"uid": "67e55044-10b1-426f-9247-bb680e5fe0c8"})).await, 1);
        assert_eq!(n(json!({"flag": false})).await, 0);
        assert_eq!(n(json!({"maybe": {"$null": true}})).await, 1);
        let e = err(&db, "SampleCountNode", json!({"filter": {"doc": {"$eq": 1}}})).await;
        assert_eq!((e.code().as_str(), e.field()), ("validation", Some("doc")));

        // The typed form reads the same record into the struct.
        let typed: Sample = SampleReadNode::run(&db, rec["id"].clone()).await.unwrap();
        assert_eq!(typed.small, -32768);
        assert_eq!(typed.day, NaiveDate::from_ymd_opt(2026, 2, 28).unwrap());
        assert_eq!(typed.bytes, vec![0, 1, 254, 255]);
        assert!(typed.scratch.is_empty());
    })
    .await;
}

#[tokio::test]
async fn typed_node_forms() {
    on_each_backend("typed", |db| async move {
        let ann = UserCreateNode::run(
            &db,
            &User {
                id: String::new(),
                email: "ann@x.io".into(),
                full_name: Some("Ann".into()),
                active: true,
            },
        )
        .await
        .unwrap();
        assert!(!ann.id.is_empty());
        let read: User = UserReadNode::run(&db, ann.id.clone()).await.unwrap();
        assert_eq!(read.email, "ann@x.io");
        let upd = UserUpdateNode::run(&db, ann.id.clone(), json!({"active": false}))
            .await
            .unwrap();
        assert!(!upd.active);
        let batch: Vec<User> = (0..3)
            .map(|i| User {
                id: format!("t{i}"),
                email: format!("t{i}@x.io"),
                full_name: None,
                active: true,
            })
            .collect();
        let created = UserBulkCreateNode::run(&db, &batch).await.unwrap();
        assert_eq!((created.inserted, created.ids.len()), (3, 3));
        assert_eq!(created.ids[0], "t0");
        let listed = UserListNode::run(
            &db,
            json!({"filter": {"active": true}, "order_by": "email"}),
        )
        .await
        .unwrap();
        assert_eq!(
            listed.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(),
            ["t0", "t1", "t2"]
        );
        assert_eq!(UserCountNode::run(&db, json!({})).await.unwrap(), 4);
        let (action, rec) = UserUpsertNode::run(&db, &batch[0], "email", json!({"full_name": "T"}))
            .await
            .unwrap();
        assert_eq!(action, dataflow::nodes::UpsertAction::Updated);
        assert_eq!(rec.full_name.as_deref(), Some("T"));
        assert_eq!(
            UserBulkUpdateNode::run(&db, json!({"active": true}), json!({"active": false}))
                .await
                .unwrap(),
            3
        );
        assert_eq!(
            UserBulkUpsertNode::run(&db, &batch, "id").await.unwrap(),
            (0, 3)
        );
        UserDeleteNode::run(&db, ann.id.clone()).await.unwrap();
        assert_eq!(
            UserReadNode::run(&db, ann.id)
                .await
                .err()
                .map(|e| e.code().as_str()),
            Some("not_found")
        );
        assert_eq!(
            UserBulkDeleteNode::run(&db, json!({}), false)
                .await
                .unwrap_err()
                .code(),
            "confirmation_required"
        );
        assert_eq!(
            UserBulkDeleteNode::run(&db, json!({}), true).await.unwrap(),
            3
        );
        assert_eq!(UserCreateNode::name(), "UserCreateNode");
    })
    .await;
}

// ------------------------------------------------------------------ Schemas, boot, config

#[tokio::test]
async fn node_input_schemas_describe_the_input() {
    let db = DataFlow::builder(sqlite_url("schemas"))
        .build()
        .await
        .unwrap();
    let s = db.node_schema("UserCreateNode").unwrap();
    assert_eq!(s["required"], json!(["email"]));
    assert_eq!(s["additionalProperties"], false);
    assert_eq!(s["properties"]["email"]["type"], "string");
    assert_eq!(s["properties"]["active"]["default"], true);
    assert!(s["properties"].get("created_at").is_none());
    assert_eq!(s["properties"]["full_name"]["anyOf"][1]["type"], "null");
    let s = db.node_schema("DocCreateNode").unwrap();
    assert_eq!(s["properties"]["title"]["maxLength"], 20);
    assert_eq!(s["properties"]["id"]["type"], "integer");
    let s = db.node_schema("UserListNode").unwrap();
    assert_eq!(s["properties"]["limit"]["maximum"], 10_000);
    assert!(s["properties"]["filter"]["properties"].get("$or").is_some());
    let s = db.node_schema("UserBulkDeleteNode").unwrap();
    assert_eq!(s["properties"]["confirmed"]["type"], "boolean");
    assert_eq!(
        UserUpdateNode::input_schema()["required"],
        json!(["fields"])
    );
    assert_eq!(db.node_schema("Nope").unwrap_err().code(), "unknown_node");
    assert_eq!(
        db.node_types().len(),
        12 * 12 + 3,
        "twelve per model plus SwitchNode, MergeNode and (audited models here) AuditListNode"
    );
}

/// The node input schemas are a public contract (OpenAPI, MCP tools): one
/// snapshot per model, every op, so any change to them shows up here.
#[tokio::test]
async fn node_input_schemas_are_stable() {
    let db = DataFlow::builder(sqlite_url("schema_snapshots"))
        .build()
        .await
        .unwrap();
    let ops = [
        "Create",
        "Read",
        "Update",
        "Delete",
        "List",
        "Count",
        "Upsert",
        "BulkCreate",
        "BulkUpdate",
        "BulkDelete",
        "BulkUpsert",
        "Aggregate",
    ];
    // A string key, a soft-delete auto-increment key, and every field type.
    for model in ["User", "Doc", "Sample"] {
        let schemas: serde_json::Map<String, Value> = ops
            .iter()
            .map(|op| {
                let node = format!("{model}{op}Node");
                let schema = db.node_schema(&node).unwrap();
                (node, schema)
            })
            .collect();
        insta::assert_snapshot!(
            format!("input_schemas_{model}"),
            serde_json::to_string_pretty(&schemas).unwrap()
        );
    }
}

#[tokio::test]
async fn invalid_database_urls_are_config_errors() {
    for url in [
        "",
        "dataflow.db",
        "sqlite://",
        "http://example.com/db",
        "postgres://",
    ] {
        let e = DataFlow::builder(url).build().await.unwrap_err();
        assert_eq!(e.code().as_str(), "config", "{url}: {e}");
        assert!(
            e.message().contains("sqlite://"),
            "names the accepted forms: {e}"
        );
    }
    let e = DataFlow::builder("mysql://u@h/db")
        .build()
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "not_supported");
    let e = DataFlow::builder("sqlite:///nonexistent-dir/x/y.db")
        .build()
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "connection");
}

#[tokio::test]
async fn unreachable_postgres_fails_fast() {
    let url = postgres::unreachable_url().replace("postgres@", "postgres:secret@");
    let started = Instant::now();
    let e = DataFlow::builder(&url)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "connection");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        !e.message().contains("secret"),
        "passwords are redacted: {e}"
    );
    assert!(e.message().contains("***"), "{e}");
}

#[tokio::test]
async fn options_for_missing_features_fail_boot() {
    let e = DataFlow::builder(sqlite_url("flags"))
        .enable_schema_discovery(true)
        .build()
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "not_supported");
    assert!(e.message().contains("enable_schema_discovery"), "{e}");
    let e = DataFlow::builder(sqlite_url("flags"))
        .connection_pool_size(0)
        .build()
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "config");
    // The options that exist work.
    let db = DataFlow::builder(sqlite_url("flags"))
        .connection_pool_size(2)
        .enable_caching(false)
        .echo(true)
        .build()
        .await
        .unwrap();
    ok(&db, "UserCountNode", json!({})).await;
}

#[tokio::test]
async fn skip_migration_creates_no_tables() {
    let url = sqlite_url("skip");
    let db = DataFlow::builder(&url)
        .skip_migration(true)
        .build()
        .await
        .unwrap();
    let e = err(&db, "UserCountNode", json!({})).await;
    assert_eq!(e.code().as_str(), "database");
    assert!(e.message().contains("users"), "{e}");
    let db = DataFlow::builder(&url).build().await.unwrap();
    assert_eq!(ok(&db, "UserCountNode", json!({})).await["count"], 0);
}

#[tokio::test]
async fn in_memory_sqlite_serves_concurrent_writers() {
    let db = DataFlow::builder("sqlite::memory:")
        .connection_pool_size(4)
        .build()
        .await
        .unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                db.execute("UserCreateNode", json!({"email": format!("m{i}@x.io")}))
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(ok(&db, "UserCountNode", json!({})).await["count"], 8);
}

#[tokio::test]
async fn concurrent_writers_on_one_sqlite_file() {
    let db = DataFlow::builder(sqlite_url("concurrent"))
        .connection_pool_size(8)
        .build()
        .await
        .unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                db.execute("UserCreateNode", json!({"email": format!("c{i}@x.io")}))
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(ok(&db, "UserCountNode", json!({})).await["count"], 64);
}

// ------------------------------------------------------------------ Examples

#[test]
fn quickstart_example_runs() {
    let mut urls = vec![sqlite_url("quickstart")];
    urls.extend(postgres::fresh_database("quickstart"));
    for url in urls {
        let out = std::process::Command::new(support::programs::example("quickstart"))
            .arg(&url)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{url}: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in [
            "Create",
            "Read",
            "Update",
            "BulkCreate",
            "List",
            "Count",
            "Upsert",
            "BulkUpdate",
            "BulkUpsert",
            "Delete",
            "BulkDelete",
        ] {
            assert!(
                stdout.lines().any(|l| l.starts_with(line)),
                "{url}: no {line} line in\n{stdout}"
            );
        }
        assert!(stdout.contains("unique_violation"), "{stdout}");
        let bulk_upsert = stdout
            .lines()
            .find_map(|l| l.strip_prefix("BulkUpsert "))
            .map(str::trim);
        assert_eq!(
            bulk_upsert,
            Some(r#"{"inserted":1,"updated":1}"#),
            "{stdout}"
        );
    }
}

/// Many writes at once (on SQLite, committed together by the writer
/// thread): each one fails alone, every answered write is committed and
/// visible, and a bulk write in the middle of them is all there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_fail_alone_and_are_visible_once_answered() {
    for (backend, url) in support::backend_urls("concurrent_writes") {
        let db = DataFlow::builder(&url).build().await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let email = if i % 10 == 5 {
                    "dup@x.io".to_string()
                } else {
                    format!("u{i}@x.io")
                };
                let r = db.execute("UserCreateNode", json!({"email": email})).await;
                if let Ok(created) = &r {
                    // Answered means committed: another connection sees it.
                    let read = db
                        .execute("UserReadNode", json!({"id": created["id"]}))
                        .await
                        .unwrap();
                    assert_eq!(read["email"], created["email"]);
                }
                r
            }));
        }
        let bulk: Vec<Value> = (0..1000)
            .map(|i| json!({"email": format!("bulk{i}@x.io")}))
            .collect();
        let bulk = db
            .execute("UserBulkCreateNode", json!({"data": bulk}))
            .await
            .unwrap();
        let mut ok = 0;
        let mut duplicates = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert_eq!(e.code().as_str(), "unique_violation", "{backend}: {e}");
                    assert_eq!(e.field(), Some("email"), "{backend}: {e}");
                    duplicates += 1;
                }
            }
        }
        assert_eq!((ok, duplicates), (181, 19), "{backend}: one dup@x.io wins");
        let count = db.execute("UserCountNode", json!({})).await.unwrap();
        assert_eq!(count["count"], 1181, "{backend}: {bulk}");
    }
}

/// Filters that mean "every record" or "no record", however they are spelled.
struct FilterGen(u64);

impl FilterGen {
    fn next(&mut self, n: u64) -> u64 {
        // xorshift64*: seeded, so a failure names a replayable filter.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }

    /// True or false depending on the record.
    fn depends(&mut self) -> Value {
        match self.next(3) {
            0 => json!({"active": true}),
            1 => json!({"email": {"$like": "a%"}}),
            _ => json!({"full_name": {"$null": true}}),
        }
    }

    fn always(&mut self, depth: u32) -> Value {
        let leaves = 5;
        let pick = if depth == 0 {
            self.next(leaves)
        } else {
            self.next(leaves + 5)
        };
        match pick {
            0 => json!({}),
            1 => json!({"id": {"$nin": []}}),
            2 => json!({"email": {"$null": false}}),
            3 => json!({"active": {"$exists": true}}),
            4 => json!({"email": {"$like": "%"}}),
            5 => json!({"$and": [self.always(depth - 1), self.always(depth - 1)]}),
            6 => {
                let mut items = vec![self.depends(), self.always(depth - 1)];
                if self.next(2) == 0 {
                    items.reverse();
                }
                json!({"$or": items})
            }
            7 => json!({"$not": self.never(depth - 1)}),
            8 => json!({"id": {"$not": {"$in": []}}}),
            _ => json!({"$and": [self.always(depth - 1)], "$or": [self.always(depth - 1)]}),
        }
    }

    fn never(&mut self, depth: u32) -> Value {
        let leaves = 3;
        let pick = if depth == 0 {
            self.next(leaves)
        } else {
            self.next(leaves + 3)
        };
        match pick {
            0 => json!({"id": {"$in": []}}),
            1 => json!({"email": {"$null": true}}),
            2 => json!({"active": {"$exists": false}}),
            3 => json!({"$not": self.always(depth - 1)}),
            4 => json!({"$and": [self.depends(), self.never(depth - 1)]}),
            _ => json!({"$or": [self.never(depth - 1), self.never(depth - 1)]}),
        }
    }
}

/// The whole-table guard decides on a filter's meaning, not its spelling:
/// every generated tautology needs `confirmed: true` on BulkDelete and
/// BulkUpdate (and really matches every record), every contradiction
/// matches none and needs no confirmation.
#[tokio::test]
async fn every_filter_that_matches_everything_needs_confirmation() {
    on_each_backend("tautologies", |db| async move {
        for i in 0..6 {
            let email = format!("{}{i}@x.io", if i % 2 == 0 { "a" } else { "b" });
            ok(
                &db,
                "UserCreateNode",
                json!({"email": email, "active": i % 3 == 0}),
            )
            .await;
        }
        let count_of = |filter: Value| {
            let db = db.clone();
            async move {
                ok(&db, "UserCountNode", json!({"filter": filter})).await["count"]
                    .as_i64()
                    .unwrap()
            }
        };
        let mut tautologies = vec![
            json!({"$or": [{}]}),
            json!({"$and": [{}]}),
            json!({"id": {"$nin": []}}),
            json!({"$not": {"$and": [{"$not": {}}]}}),
        ];
        let mut generator = FilterGen(0x5eed_f11e_7e57_0001);
        tautologies.extend((0..40).map(|_| generator.always(4)));
        for filter in tautologies {
            assert_eq!(
                count_of(filter.clone()).await,
                6,
                "{filter} matches everything"
            );
            let e = err(&db, "UserBulkDeleteNode", json!({"filter": filter})).await;
            assert_eq!(e.code().as_str(), "confirmation_required", "{filter}: {e}");
            let e = err(
                &db,
                "UserBulkUpdateNode",
                json!({"filter": filter, "fields": {"full_name": "x"}}),
            )
            .await;
            assert_eq!(e.code().as_str(), "confirmation_required", "{filter}: {e}");
        }
        assert_eq!(count(&db, "User").await, 6);
        assert_eq!(count_of(json!({"full_name": "x"})).await, 0);

        for _ in 0..20 {
            let filter = generator.never(4);
            assert_eq!(
                count_of(filter.clone()).await,
                0,
                "{filter} matches nothing"
            );
            let out = ok(&db, "UserBulkDeleteNode", json!({"filter": filter})).await;
            assert_eq!(out, json!({"deleted": 0}), "{filter}");
        }
        // A filter with always-true parts that still depends on the data is not refused.
        let out = ok(
            &db,
            "UserBulkUpdateNode",
            json!({"filter": {"$and": [{}, {"active": true}]}, "fields": {"full_name": "on"}}),
        )
        .await;
        assert_eq!(out, json!({"updated": 2}));
    })
    .await;
}

/// Values one backend would change or refuse get the same answer on both:
/// a NUL character in text or JSON and a float beyond `f32` are validation
/// errors naming the field (PostgreSQL answered 500, `f32` stored infinity
/// and read back null); an empty `id` on Create is generated, as in the
/// typed form.
#[tokio::test]
async fn values_a_backend_cannot_keep_are_refused_on_both() {
    on_each_backend("values", |db| async move {
        let e = err(&db, "UserCreateNode", json!({"email": "a\u{0}b@x.io"})).await;
        assert_eq!(
            (e.code().as_str(), e.field()),
            ("validation", Some("email"))
        );
        assert!(e.message().contains("NUL"), "{e}");
        let e = err(&db, "UserListNode", json!({"filter": {"email": "a\u{0}"}})).await;
        assert_eq!(
            (e.code().as_str(), e.field()),
            ("validation", Some("email"))
        );
        assert_eq!(count(&db, "User").await, 0);

        let sample = |real: Value, doc: Value| {
            json!({
                "small": 1, "int": 1, "big": 1, "real": real, "double": 1.0, "flag": true,
                "at": "2026-03-04T05:06:07Z", "day": "2026-02-28",
                "uid": "67e55044-10b1-426f-9247-bb680e5fe0c8", "doc": doc, "bytes": [],
            })
        };
        let e = err(&db, "SampleCreateNode", sample(json!(1e300), json!({}))).await;
        assert_eq!((e.code().as_str(), e.field()), ("validation", Some("real")));
        assert!(e.message().contains("out of range"), "{e}");
        let e = err(
            &db,
            "SampleCreateNode",
            sample(json!(1.5), json!({"k": ["a\u{0}"]})),
        )
        .await;
        assert_eq!((e.code().as_str(), e.field()), ("validation", Some("doc")));
        assert_eq!(count(&db, "Sample").await, 0);
        let rec = ok(
            &db,
            "SampleCreateNode",
            sample(json!(-3.0e38), json!({"k": "v"})),
        )
        .await;
        assert_eq!(
            rec["real"].as_f64().map(|x| x < -2.9e38),
            Some(true),
            "{rec}"
        );

        let rec = ok(&db, "UserCreateNode", json!({"id": "", "email": "e@x.io"})).await;
        assert_eq!(rec["id"].as_str().map(str::len), Some(36), "{rec}");
    })
    .await;
}

/// Input nested thousands of levels deep is a validation error naming the
/// limit on every model node, not a stack overflow that aborts the process.
/// (The test builds and clones the deep value on a thread with a large
/// stack; everything `dataflow` does with it runs on its ordinary threads.)
#[test]
fn deeply_nested_input_is_refused_not_a_crash() {
    let big_stack = std::thread::Builder::new().stack_size(256 << 20);
    let test = big_stack.spawn(|| {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(on_each_backend("deep-input", |db| async move {
                // Built by moving (`json!` would copy the whole value at every level).
                let mut filter = json!({"active": true});
                for _ in 0..5_000 {
                    let and = serde_json::Map::from_iter([(
                        "$and".to_string(),
                        Value::Array(vec![filter]),
                    )]);
                    filter = Value::Object(and);
                }
                for (node, params) in [
                    ("UserListNode", json!({"filter": filter})),
                    ("UserCountNode", json!({"filter": filter})),
                    ("UserBulkDeleteNode", json!({"filter": filter})),
                    (
                        "UserBulkUpdateNode",
                        json!({"filter": filter, "fields": {"active": false}}),
                    ),
                    (
                        "UserCreateNode",
                        json!({"email": "d@x.io", "full_name": filter}),
                    ),
                ] {
                    let e = err(&db, node, params).await;
                    assert_eq!(e.code().as_str(), "validation", "{node}");
                    assert!(e.message().contains("deeper than 64"), "{node}: {e}");
                    assert_eq!(e.node(), Some(node));
                }
                // Within the limit, nesting works.
                let mut filter = json!({"active": true});
                for _ in 0..20 {
                    filter = json!({"$and": [filter]});
                }
                assert_eq!(
                    ok(&db, "UserCountNode", json!({"filter": filter})).await["count"],
                    0
                );
                assert_eq!(count(&db, "User").await, 0);
            }))
    });
    test.unwrap().join().unwrap();
}

/// `$in`/`$nin` lists are one parameter whatever their length (beyond
/// SQLite's 32,766 and PostgreSQL's 65,535 parameters), on every type; and
/// filters beyond the documented limits are validation errors, not 500s.
#[tokio::test]
async fn large_in_lists_and_filter_limits() {
    on_each_backend("filter_limits", |db| async move {
        let users = seed_users(&db, 5).await;
        let n = |model: &'static str, f: Value| {
            let db = db.clone();
            async move {
                ok(&db, &format!("{model}CountNode"), json!({"filter": f})).await["count"]
                    .as_i64()
                    .unwrap()
            }
        };
        // 70,000 emails, two of which exist.
        let mut emails: Vec<Value> = (0..70_000)
            .map(|i| json!(format!("none{i}@x.io")))
            .collect();
        emails.push(users[1]["email"].clone());
        emails.push(users[3]["email"].clone());
        assert_eq!(
            n("User", json!({"email": {"$in": emails.clone()}})).await,
            2
        );
        assert_eq!(
            n("User", json!({"email": {"$nin": emails.clone()}})).await,
            3
        );
        let e = ok(
            &db,
            "UserBulkDeleteNode",
            json!({"filter": {"email": {"$in": emails}}}),
        )
        .await;
        assert_eq!(e["deleted"], 2, "{e}");
        assert_eq!(count(&db, "User").await, 3);

        // Every comparable type matches through the array form.
        let sample = ok(
            &db,
            "SampleCreateNode",
            json!({
                "small": -7, "int": 70000, "big": 9007199254740993i64, "real": 1.5, "double": -2.25,
                "flag": true, "at": "2026-03-04T05:06:07.123456+02:00", "day": "2026-02-28",
                "uid": "67e55044-10b1-426f-9247-bb680e5fe0c8", "doc": {}, "bytes": [0, 1, 254, 255],
            }),
        )
        .await;
        for (field, hit, miss) in [
            (
                "id",
                sample["id"].clone(),
                json!("0190a0f0-0000-7000-8000-000000000000"),
            ),
            ("small", json!(-7), json!(7)),
            ("int", json!(70000), json!(1)),
            (
                "big",
                json!(9007199254740993i64),
                json!(9007199254740992i64),
            ),
            ("real", json!(1.5), json!(1.25)),
            ("double", json!(-2.25), json!(2.25)),
            ("flag", json!(true), json!(false)),
            (
                "at",
                json!("2026-03-04T03:06:07.123456Z"),
                json!("2026-03-04T03:06:07Z"),
            ),
            ("day", json!("2026-02-28"), json!("2026-03-01")),
            (
                "uid",
                json!("67e55044-10b1-426f-9247-bb680e5fe0c8"),
                json!("67e55044-10b1-426f-9247-bb680e5fe0c9"),
            ),
            ("bytes", json!([0, 1, 254, 255]), json!([0, 1])),
        ] {
            assert_eq!(
                n(
                    "Sample",
                    json!({field: {"$in": [miss.clone(), hit.clone()]}})
                )
                .await,
                1,
                "{field} $in"
            );
            assert_eq!(
                n("Sample", json!({field: {"$in": [miss.clone()]}})).await,
                0,
                "{field} $in miss"
            );
            assert_eq!(
                n("Sample", json!({field: {"$nin": [hit]}})).await,
                0,
                "{field} $nin"
            );
            assert_eq!(
                n("Sample", json!({field: {"$nin": [miss]}})).await,
                1,
                "{field} $nin miss"
            );
        }

        // Conditions: the limit itself renders and runs (on SQLite, well under
        // its expression-depth limit); one more is a validation error.
        let branches = |k: usize| {
            let items: Vec<Value> = (0..k)
                .map(|i| json!({"email": format!("b{i}@x.io")}))
                .collect();
            json!({"$or": items})
        };
        // `$or` + k × `email`: 1 + k conditions.
        let at_limit = branches(dataflow::MAX_FILTER_CONDITIONS - 1);
        assert_eq!(n("User", at_limit).await, 0);
        for over in [branches(dataflow::MAX_FILTER_CONDITIONS), branches(5_000)] {
            let e = err(&db, "UserListNode", json!({"filter": over})).await;
            assert_eq!(e.code().as_str(), "validation", "{e}");
            assert!(e.message().contains("more than 500 conditions"), "{e}");
        }

        // `$like` patterns: at most MAX_LIKE_PATTERN_BYTES.
        let pattern = |len: usize| format!("{}%", "a".repeat(len - 1));
        assert_eq!(
            n(
                "User",
                json!({"email": {"$like": pattern(dataflow::MAX_LIKE_PATTERN_BYTES)}})
            )
            .await,
            0
        );
        for op in ["$like", "$ilike"] {
            let e = err(
                &db,
                "UserListNode",
                json!({"filter": {"email": {op: pattern(60_000)}}}),
            )
            .await;
            assert_eq!(
                (e.code().as_str(), e.field()),
                ("validation", Some("email")),
                "{e}"
            );
            assert!(e.message().contains("at most 10000"), "{e}");
        }

        // Indexed text: at most MAX_INDEXED_TEXT_CHARS characters, on both
        // backends (PostgreSQL's B-tree would refuse ~2,700 bytes with a
        // 500): the limit in 4-byte characters still fits there.
        let long = |chars: usize| format!("{}@x.io", "😀".repeat(chars - 5));
        let fits = long(dataflow::MAX_INDEXED_TEXT_CHARS);
        assert_eq!(fits.len(), 4 * 495 + 5);
        let rec = ok(&db, "UserCreateNode", json!({"email": fits})).await;
        assert_eq!(rec["email"], json!(fits));
        let ascii = "a".repeat(dataflow::MAX_INDEXED_TEXT_CHARS);
        ok(&db, "UserCreateNode", json!({"email": ascii})).await;
        for len in [dataflow::MAX_INDEXED_TEXT_CHARS + 1, 3_000, 1_000_000] {
            let e = err(&db, "UserCreateNode", json!({"email": long(len)})).await;
            assert_eq!(
                (e.code().as_str(), e.field()),
                ("validation", Some("email")),
                "{e}"
            );
            assert!(e.message().contains("holds at most 500"), "{e}");
        }
        let e = err(
            &db,
            "UserBulkCreateNode",
            json!({"data": [{"email": "ok@x.io"}, {"email": long(3_000)}]}),
        )
        .await;
        assert_eq!(e.code().as_str(), "validation", "{e}");
        assert_eq!(count(&db, "User").await, 5, "no partial write");
        // Unindexed text has no such limit.
        let rec = ok(
            &db,
            "UserCreateNode",
            json!({"email": "big@x.io", "full_name": "n".repeat(100_000)}),
        )
        .await;
        assert_eq!(rec["full_name"].as_str().map(str::len), Some(100_000));
    })
    .await;
}

/// Messages quote a caller's values only in part: a long id, an unknown
/// field name of a megabyte or a long filter come back as their start, `…`
/// and their length, never whole.
#[tokio::test]
async fn messages_quote_input_in_part() {
    on_each_backend("echo", |db| async move {
        let id = format!("secret-{}", "x".repeat(400));
        let e = err(&db, "UserReadNode", json!({"id": id})).await;
        assert_eq!(e.code().as_str(), "not_found");
        assert!(
            e.message().contains(&format!("… ({} bytes)", id.len())),
            "{e}"
        );
        assert!(!e.message().contains(&id[..100]), "{e}");

        let name = "f".repeat(1 << 20);
        let e = err(&db, "UserListNode", json!({"filter": {name.clone(): 1}})).await;
        assert_eq!(e.code().as_str(), "validation");
        assert!(e.message().len() < 400, "{}", e.message().len());
        assert!(
            e.field().is_some_and(|f| f.chars().count() <= 65),
            "{:?}",
            e.field().map(str::len)
        );
        let e = err(&db, "UserCreateNode", json!({name: 1, "email": "a@x.io"})).await;
        assert!(e.message().len() < 400, "{}", e.message().len());

        let filter = json!({"full_name": "y".repeat(1_500)});
        let e = err(
            &db,
            "UserUpdateNode",
            json!({"filter": filter, "fields": {"active": false}}),
        )
        .await;
        assert_eq!(e.code().as_str(), "not_found");
        assert!(e.message().len() < 300, "{e}");
        assert!(e.message().len() <= dataflow::Error::MAX_MESSAGE_CHARS * 4);
    })
    .await;
}

/// Issue 10, items 1 and 11: connections the server ended, a server that
/// restarts, and a SQLite database that cannot take writes.
mod hardening_pool {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    /// One request of a mixed load: a create, a read by id, a list, an
    /// update or a bulk create (a transaction), chosen by `n`.
    async fn request(db: &DataFlow, id: &str, n: usize) -> Result<(), Error> {
        let r = match n % 5 {
            4 => {
                let tag = uuid::Uuid::now_v7().simple();
                let data: Vec<Value> = (0..3)
                    .map(|i| json!({"email": format!("bulk-{n}-{i}-{tag}@x.io")}))
                    .collect();
                db.execute("UserBulkCreateNode", json!({"data": data}))
                    .await
            }
            0 => {
                let email = format!("load-{n}-{}@x.io", uuid::Uuid::now_v7().simple());
                db.execute("UserCreateNode", json!({"email": email})).await
            }
            1 => db.execute("UserReadNode", json!({"id": id})).await,
            2 => db.execute("UserListNode", json!({"limit": 3})).await,
            _ => {
                db.execute(
                    "UserUpdateNode",
                    json!({"id": id, "fields": {"full_name": format!("n{n}")}}),
                )
                .await
            }
        };
        r.map(drop)
    }

    /// Keeps `tasks` requests in flight until `stop` is set; returns how
    /// many failed, after checking that each failure is a `connection` error
    /// (503), never another code.
    fn load(
        db: &DataFlow,
        id: &str,
        tasks: usize,
        stop: &Arc<AtomicBool>,
    ) -> Vec<tokio::task::JoinHandle<usize>> {
        (0..tasks)
            .map(|t| {
                let (db, id, stop) = (db.clone(), id.to_string(), stop.clone());
                tokio::spawn(async move {
                    let mut failed = 0;
                    let mut n = t;
                    while !stop.load(Ordering::Acquire) {
                        if let Err(e) = request(&db, &id, n).await {
                            assert_eq!(e.code().as_str(), "connection", "{e}");
                            assert_eq!(e.code().http_status(), 503);
                            failed += 1;
                        }
                        n += tasks;
                    }
                    failed
                })
            })
            .collect()
    }

    /// Waits (at most `within`) until `needed` requests in a row succeed,
    /// then checks that the next 100, four at a time, all succeed too.
    async fn every_request_succeeds_again(db: &DataFlow, id: &str, within: Duration) -> Duration {
        let started = Instant::now();
        let (mut in_a_row, mut n, needed) = (0, 0, 50);
        let mut last = None;
        while in_a_row < needed {
            assert!(
                started.elapsed() < within,
                "no {needed} requests in a row succeeded within {within:?} ({in_a_row} did; last error: {last:?})"
            );
            match request(db, id, n).await {
                Ok(()) => in_a_row += 1,
                Err(e) => {
                    assert_eq!(e.code().as_str(), "connection", "{e}");
                    last = Some(e.to_string());
                    in_a_row = 0;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            n += 1;
        }
        let recovered = started.elapsed();
        let failures = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for t in 0..4 {
            let (db, id, failures) = (db.clone(), id.to_string(), failures.clone());
            tasks.push(tokio::spawn(async move {
                for n in (t..100).step_by(4) {
                    if let Err(e) = request(&db, &id, n).await {
                        eprintln!("request {n} failed after recovery: {e}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            failures.load(Ordering::Relaxed),
            0,
            "requests failed after recovery"
        );
        db.execute_ping()
            .await
            .expect("ready once every request succeeds");
        recovered
    }

    async fn seed(db: &DataFlow) -> String {
        let user = ok(db, "UserCreateNode", json!({"email": "seed@x.io"})).await;
        user["id"].as_str().unwrap().to_string()
    }

    /// Terminating the server's connections over and over, under load:
    /// requests fail with `connection` meanwhile, and once it stops every
    /// request succeeds again within seconds (dead connections are found and
    /// dropped, not handed out forever).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_recovers_from_terminated_connections() {
        let Some(cluster) = postgres::own_cluster() else {
            return;
        };
        let url = cluster.fresh_database("terminations");
        let db = DataFlow::builder(&url)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .await
            .unwrap();
        let id = seed(&db).await;
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = load(&db, &id, 4, &stop);
        let mut terminated = 0;
        let storm = Instant::now();
        while storm.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(300)).await;
            terminated += cluster.terminate_connections(&url);
        }
        stop.store(true, Ordering::Release);
        let mut failed = 0;
        for t in tasks {
            failed += t.await.unwrap();
        }
        eprintln!("terminated {terminated} connections; {failed} requests failed meanwhile");
        assert!(terminated > 0, "the storm terminated no connection");
        let took = every_request_succeeds_again(&db, &id, Duration::from_secs(5)).await;
        eprintln!("every request succeeded again after {took:?}");
    }

    /// A real server stop and `pg_ctl restart`: while the server is down
    /// requests and readiness fail with `connection`; once it is back,
    /// every request succeeds within seconds and readiness is Ok.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_recovers_from_a_server_restart() {
        let Some(cluster) = postgres::own_cluster() else {
            return;
        };
        let url = cluster.fresh_database("restart");
        let db = DataFlow::builder(&url)
            .connect_timeout(Duration::from_secs(1))
            .build()
            .await
            .unwrap();
        let id = seed(&db).await;
        // Several pooled connections, all about to die.
        let held: Vec<_> = (0..3).map(|_| db.connection().unwrap()).collect();
        drop(held);
        assert!(db.pool_state().connections >= 3, "{:?}", db.pool_state());
        every_request_succeeds_again(&db, &id, Duration::from_secs(5)).await;

        cluster.stop();
        let e = db.execute_ping().await.unwrap_err();
        assert_eq!(e.code().as_str(), "connection", "{e}");
        for n in 0..4 {
            let e = request(&db, &id, n).await.unwrap_err();
            assert_eq!(e.code().as_str(), "connection", "{e}");
        }
        cluster.start();
        let took = every_request_succeeds_again(&db, &id, Duration::from_secs(5)).await;
        eprintln!("after a stop and start: every request succeeded again after {took:?}");

        // `pg_ctl restart` between two requests: the pool's connections are
        // all dead, and nothing in the pool knows it yet.
        cluster.restart();
        let took = every_request_succeeds_again(&db, &id, Duration::from_secs(5)).await;
        eprintln!("after pg_ctl restart: every request succeeded again after {took:?}");
    }

    /// `GET /ready` of a nexus serving `db` on a loopback port of its own:
    /// (status, code of the error body or `None`).
    async fn ready_over_http(db: &DataFlow) -> (u16, Option<String>) {
        let app = Arc::new(nexus::Nexus::builder().build(db.clone()).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = tokio::spawn({
            let app = app.clone();
            async move { app.serve_http_on(listener).await }
        });
        let r = tokio::task::spawn_blocking(move || {
            support::http::request(addr, "GET", "/ready", None)
        })
        .await
        .unwrap();
        app.shutdown();
        served.await.unwrap().unwrap();
        let body = r.json();
        let code = body["error"]["code"]
            .as_str()
            .or(body["code"].as_str())
            .map(str::to_string);
        (r.status, code)
    }

    fn sqlite_path(url: &str) -> String {
        url.strip_prefix("sqlite://").unwrap().to_string()
    }

    /// A database opened read-only cannot take writes: readiness fails with
    /// `connection` (503 from nexus) while reads still work.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_ready_fails_when_the_database_is_read_only() {
        let url = sqlite_url("ready_read_only");
        let db = DataFlow::builder(&url).build().await.unwrap();
        let id = seed(&db).await;
        assert_eq!(ready_over_http(&db).await, (200, None));
        drop(db);

        // Opening read-only is how a test run as root gets a file it cannot
        // write (chmod does not stop root).
        let ro = format!("sqlite://file:{}?mode=ro", sqlite_path(&url));
        let db = DataFlow::builder(&ro).build().await.unwrap();
        ok(&db, "UserReadNode", json!({"id": id})).await;
        let e = db.execute_ping().await.unwrap_err();
        assert_eq!(e.code().as_str(), "connection", "{e}");
        assert!(e.message().contains("cannot take writes"), "{e}");
        assert!(e.message().contains("readonly"), "{e}");
        assert_eq!(
            ready_over_http(&db).await,
            (503, Some("connection".to_string()))
        );
        let e = err(&db, "UserCreateNode", json!({"email": "new@x.io"})).await;
        assert_eq!(e.code().as_str(), "connection", "{e}");
        assert_eq!(e.code().http_status(), 503);
    }

    /// The size of the database's write-ahead log on disk.
    fn wal_size(url: &str) -> u64 {
        std::fs::metadata(format!("{}-wal", sqlite_path(url))).map_or(0, |m| m.len())
    }

    /// A database that cannot grow (its page limit reached, as a full disk
    /// would): writes fail with `connection` and readiness fails; once there
    /// is room again readiness passes, writes succeed and the write-ahead
    /// log is truncated.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_recovers_after_the_database_was_full_and_truncates_its_log() {
        let url = sqlite_url("full_disk");
        // One pooled connection: the page limit set on it applies to every
        // write (the limit is a setting of the connection).
        let db = DataFlow::builder(&url)
            .connection_pool_size(1)
            .build()
            .await
            .unwrap();
        seed(&db).await;
        {
            use diesel::connection::SimpleConnection;
            let mut conn = db.connection().unwrap();
            // SQLite keeps the limit at the current size: the file cannot grow.
            conn.batch_execute("PRAGMA max_page_count = 1").unwrap();
        }
        let big: Vec<Value> = (0..50)
            .map(|i| json!({"email": format!("big{i}@x.io"), "full_name": "x".repeat(4000)}))
            .collect();
        let e = err(&db, "UserBulkCreateNode", json!({"data": big})).await;
        assert_eq!(e.code().as_str(), "connection", "{e}");
        assert!(e.message().contains("full"), "{e}");
        let e = db.execute_ping().await.unwrap_err();
        assert_eq!(e.code().as_str(), "connection", "{e}");
        assert!(e.message().contains("cannot take writes"), "{e}");
        assert_eq!(
            ready_over_http(&db).await,
            (503, Some("connection".to_string()))
        );

        // Room again.
        {
            use diesel::connection::SimpleConnection;
            let mut conn = db.connection().unwrap();
            conn.batch_execute("PRAGMA max_page_count = 1073741823")
                .unwrap();
        }
        db.execute_ping().await.expect("ready once there is room");
        let created = ok(&db, "UserBulkCreateNode", json!({"data": big})).await;
        assert_eq!(created["inserted"], 50);
        assert_eq!(count(&db, "User").await, 51);
        let started = Instant::now();
        while wal_size(&url) > 0 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the write-ahead log still has {} bytes",
                wal_size(&url)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(count(&db, "User").await, 51);
    }
}

// ---- audit

/// Audited by its own option (without `enable_audit_log`), versioned, with a secret.
#[dataflow::model(audit, versioned)]
pub struct Account {
    pub id: String,
    #[field(unique)]
    pub email: String,
    #[field(default = 0)]
    pub balance: i64,
    #[field(sensitive)]
    pub api_key: Option<String>,
}

/// Audited, with a key the database generates, soft delete and no timestamps.
#[dataflow::model(audit, soft_delete, timestamps = false)]
pub struct Ticket {
    pub id: i64,
    pub title: String,
}

/// Opts out of `enable_audit_log`.
#[dataflow::model(audit = false)]
pub struct Scratch {
    pub id: String,
    pub note: String,
}

/// A handle that sees every tenant's audit rows.
fn as_system(db: &DataFlow) -> DataFlow {
    db.with_context(dataflow::Context::system())
}

/// The audit rows `query` selects (as the system, up to 1,000), newest first.
async fn audit_rows(db: &DataFlow, mut query: Value) -> Vec<Value> {
    if query.get("limit").is_none() {
        query["limit"] = json!(1000);
    }
    ok(&as_system(db), "AuditListNode", query).await["records"]
        .as_array()
        .unwrap()
        .clone()
}

/// The fields that differ between two versions of a record, as an
/// update's audit row holds them.
fn changed(before: &Value, after: &Value) -> (Value, Value) {
    let (mut b, mut a) = (serde_json::Map::new(), serde_json::Map::new());
    for (k, v) in after.as_object().unwrap() {
        if before[k] != *v {
            b.insert(k.clone(), before[k].clone());
            a.insert(k.clone(), v.clone());
        }
    }
    (Value::Object(b), Value::Object(a))
}

fn masked(record: &Value) -> Value {
    let mut r = record.clone();
    if r.get("api_key").is_some() {
        r["api_key"] = json!("***");
    }
    r
}

/// Every record of `model` (or every audit row, for `"audit"`), in key
/// order, as text: "nothing changed" is this staying equal.
async fn dump(db: &DataFlow, model: &str) -> String {
    let rows = if model == "audit" {
        Value::Array(audit_rows(db, json!({"limit": 10_000})).await)
    } else {
        ok(
            db,
            &format!("{model}ListNode"),
            json!({"order_by": "id", "limit": 10_000, "include_deleted": true}),
        )
        .await["records"]
            .clone()
    };
    serde_json::to_string(&rows).unwrap()
}

#[tokio::test]
async fn every_write_node_records_its_changes_in_the_audit_log() {
    on_each_backend("audit_nodes", |db| async move {
        let db = db.with_context(
            dataflow::Context::new()
                .actor("user:7")
                .request_id("req-1")
                .channel("test"),
        );
        let rows_of = |op: &'static str, id: &str| {
            let db = db.clone();
            let id = id.to_string();
            async move { audit_rows(&db, json!({"model": "Account", "record_id": id, "op": op})).await }
        };

        // Create: the new record, the secret masked, the caller's context.
        let a = ok(&db, "AccountCreateNode", json!({"email": "a@x.io", "balance": 10, "api_key": "sk-1"})).await;
        let id_a = a["id"].as_str().unwrap().to_string();
        assert_eq!(a["version"], 1);
        let rows = rows_of("create", &id_a).await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        let r = &rows[0];
        assert_eq!(r["after"], masked(&a));
        assert_eq!(r["before"], Value::Null);
        assert_eq!(
            (&r["actor"], &r["request_id"], &r["channel"], &r["node_id"], &r["tenant"], &r["run_id"]),
            (&json!("user:7"), &json!("req-1"), &json!("test"), &json!("AccountCreateNode"), &Value::Null, &Value::Null)
        );
        assert_eq!((&r["model"], &r["record_id"]), (&json!("Account"), &json!(id_a)));
        assert!(r["at"].as_str().unwrap().ends_with('Z'), "{r}");

        // Update: only the fields that changed, before and after.
        let u = ok(&db, "AccountUpdateNode", json!({"id": id_a, "fields": {"balance": 25}})).await;
        assert_eq!(u["version"], 2);
        let rows = rows_of("update", &id_a).await;
        assert_eq!(rows.len(), 1);
        let (before, after) = changed(&a, &u);
        assert_eq!((&rows[0]["before"], &rows[0]["after"]), (&before, &after));
        assert_eq!(rows[0]["before"]["balance"], 10);
        assert_eq!(rows[0]["after"]["version"], 2);
        assert_eq!(rows[0]["node_id"], "AccountUpdateNode");

        // Upsert: an update of the match, then a create.
        let up = ok(&db, "AccountUpsertNode", json!({"where": {"email": "a@x.io"}, "update": {"balance": 30}})).await;
        assert_eq!(up["action"], "updated");
        let rows = rows_of("update", &id_a).await;
        assert_eq!(rows.len(), 2);
        let (before, after) = changed(&u, &up["record"]);
        assert_eq!((&rows[0]["before"], &rows[0]["after"]), (&before, &after));
        let b = ok(&db, "AccountUpsertNode", json!({"where": {"email": "b@x.io"}, "create": {"balance": 1}})).await;
        assert_eq!(b["action"], "created");
        let rows = rows_of("create", b["record"]["id"].as_str().unwrap()).await;
        assert_eq!(rows[0]["after"], masked(&b["record"]));

        // BulkCreate: one row per record.
        let out = ok(&db, "AccountBulkCreateNode", json!({"data": [
            {"email": "c@x.io", "api_key": "sk-c"}, {"email": "d@x.io"}, {"email": "e@x.io"}
        ], "batch_size": 2})).await;
        let ids: Vec<String> = out["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
        for id in &ids {
            let rows = rows_of("create", id).await;
            assert_eq!(rows.len(), 1, "{id}");
            let stored = ok(&db, "AccountReadNode", json!({"id": id})).await;
            assert_eq!(rows[0]["after"], masked(&stored));
            assert_eq!(rows[0]["node_id"], "AccountBulkCreateNode");
        }

        // BulkUpdate: one row per changed record, with its own before and after.
        let before_c = ok(&db, "AccountReadNode", json!({"id": ids[0]})).await;
        let n = ok(&db, "AccountBulkUpdateNode", json!({"filter": {"email": {"$in": ["c@x.io", "d@x.io"]}}, "fields": {"balance": 99}})).await;
        assert_eq!(n["updated"], 2);
        let after_c = ok(&db, "AccountReadNode", json!({"id": ids[0]})).await;
        let rows = rows_of("update", &ids[0]).await;
        assert_eq!(rows.len(), 1);
        let (before, after) = changed(&before_c, &after_c);
        assert_eq!((&rows[0]["before"], &rows[0]["after"]), (&before, &after));
        assert_eq!(rows_of("update", &ids[1]).await.len(), 1);
        assert_eq!(rows_of("update", &ids[2]).await.len(), 0);

        // BulkUpsert: an update of the existing record, a create of the new one.
        let n = ok(&db, "AccountBulkUpsertNode", json!({"data": [
            {"email": "c@x.io", "balance": 5}, {"email": "f@x.io", "balance": 6}
        ], "conflict_on": "email"})).await;
        assert_eq!((n["inserted"].as_u64(), n["updated"].as_u64()), (Some(1), Some(1)));
        let c2 = ok(&db, "AccountReadNode", json!({"id": ids[0]})).await;
        assert_eq!(c2["version"], 3, "BulkUpsert increments the version");
        let rows = rows_of("update", &ids[0]).await;
        assert_eq!(rows.len(), 2);
        // (BulkUpsert writes every column of the row: the omitted key is cleared.)
        let (before, after) = changed(&after_c, &c2);
        assert_eq!((&rows[0]["before"], &rows[0]["after"]), (&masked(&before), &masked(&after)));
        let f = ok(&db, "AccountReadNode", json!({"filter": {"email": "f@x.io"}})).await;
        assert_eq!(f["version"], 1);
        assert_eq!(rows_of("create", f["id"].as_str().unwrap()).await[0]["after"], masked(&f));

        // Delete and BulkDelete: the record as it was.
        let last_a = ok(&db, "AccountReadNode", json!({"id": id_a})).await;
        ok(&db, "AccountDeleteNode", json!({"id": id_a})).await;
        let rows = rows_of("delete", &id_a).await;
        assert_eq!((rows.len(), &rows[0]["before"], &rows[0]["after"]), (1, &masked(&last_a), &Value::Null));
        let d = ok(&db, "AccountReadNode", json!({"id": ids[1]})).await;
        let n = ok(&db, "AccountBulkDeleteNode", json!({"filter": {"email": {"$in": ["d@x.io", "e@x.io"]}}})).await;
        assert_eq!(n["deleted"], 2);
        assert_eq!(rows_of("delete", &ids[1]).await[0]["before"], masked(&d));
        assert_eq!(rows_of("delete", &ids[2]).await.len(), 1);

        // Totals: six creates, five updates, three deletes; nothing else.
        let all = audit_rows(&db, json!({"model": "Account"})).await;
        let count = |op: &str| all.iter().filter(|r| r["op"] == op).count();
        assert_eq!((count("create"), count("update"), count("delete"), all.len()), (6, 5, 3, 14));
        // Newest first.
        let ids_desc: Vec<i64> = all.iter().map(|r| r["id"].as_i64().unwrap()).collect();
        assert!(ids_desc.windows(2).all(|w| w[0] > w[1]), "{ids_desc:?}");

        // A generated integer key: the audit row names it; a soft delete is a delete.
        let one = ok(&db, "TicketCreateNode", json!({"title": "single"})).await;
        let rows = audit_rows(&db, json!({"model": "Ticket", "record_id": one["id"]})).await;
        assert_eq!((rows.len(), &rows[0]["after"]), (1, &one));
        assert_eq!(rows[0]["record_id"], json!(one["id"].to_string()));
        let t = ok(&db, "TicketBulkCreateNode", json!({"data": [{"title": "one"}, {"title": "two"}]})).await;
        let tid = t["ids"][1].as_i64().unwrap();
        let rows = audit_rows(&db, json!({"model": "Ticket", "record_id": tid})).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["after"], json!({"id": tid, "title": "two", "deleted_at": null}));
        assert_eq!(rows[0]["record_id"], json!(tid.to_string()));
        ok(&db, "TicketDeleteNode", json!({"id": tid})).await;
        let rows = audit_rows(&db, json!({"model": "Ticket", "record_id": tid.to_string(), "op": "delete"})).await;
        assert_eq!(rows[0]["before"]["title"], "two");
        // Reads write nothing.
        let before = audit_rows(&db, json!({})).await.len();
        ok(&db, "TicketListNode", json!({})).await;
        ok(&db, "AccountCountNode", json!({})).await;
        assert_eq!(audit_rows(&db, json!({})).await.len(), before);
    })
    .await;
}

#[tokio::test]
async fn failed_or_rolled_back_writes_leave_no_audit_rows() {
    on_each_backend("audit_rollback", |db| async move {
        ok(&db, "AccountCreateNode", json!({"email": "a@x.io"})).await;
        let accounts = dump(&db, "Account").await;
        let audit = dump(&db, "audit").await;

        // BulkCreate whose last batch violates the unique email: the earlier
        // batches (and their audit rows) were written, then rolled back.
        let data: Vec<Value> = ["b", "c", "d", "e", "a"].iter().map(|n| json!({"email": format!("{n}@x.io")})).collect();
        let e = err(&db, "AccountBulkCreateNode", json!({"data": data, "batch_size": 2})).await;
        assert_eq!(e.code(), "unique_violation");
        assert_eq!((dump(&db, "Account").await, dump(&db, "audit").await), (accounts.clone(), audit.clone()));

        // A transactional workflow whose second node fails: nothing of either node.
        let mut wf = dataflow::WorkflowBuilder::new();
        wf.add_node("AccountCreateNode", "first", json!({"email": "{{a}}"}))
            .add_node("AccountCreateNode", "second", json!({"email": "{{b}}"}))
            .transactional(true);
        let workflow = wf.build(&db).unwrap();
        let e = db.runtime().execute(&workflow, json!({"a": "x@x.io", "b": "a@x.io"})).await.unwrap_err();
        assert_eq!((e.code().as_str(), e.node()), ("unique_violation", Some("second")));
        assert!(e.completed().contains_key("first"));
        assert_eq!((dump(&db, "Account").await, dump(&db, "audit").await), (accounts.clone(), audit.clone()));

        // The same run, committed: each node's row names the run and the node.
        let run = db.runtime().execute(&workflow, json!({"a": "x@x.io", "b": "y@x.io"})).await.unwrap();
        for node in ["first", "second"] {
            let rows = audit_rows(&db, json!({"record_id": run.results[node]["id"]})).await;
            assert_eq!(rows.len(), 1, "{node}");
            assert_eq!((&rows[0]["run_id"], &rows[0]["node_id"]), (&json!(run.run_id), &json!(node)));
        }
        let accounts = dump(&db, "Account").await;
        let audit = dump(&db, "audit").await;

        // A failure after the data write, for every write node: with the
        // audit table out of the way, the audit INSERT fails after the
        // node's own statements, and the node's change is rolled back too.
        let id = ok(&db, "AccountReadNode", json!({"filter": {"email": "x@x.io"}})).await["id"].clone();
        let rename = |from: &str, to: &str| {
            use diesel::connection::SimpleConnection as _;
            db.connection().unwrap().batch_execute(&format!("ALTER TABLE \"{from}\" RENAME TO \"{to}\"")).unwrap();
        };
        rename("dataflow_audit", "dataflow_audit_away");
        let attempts = [
            ("AccountCreateNode", json!({"email": "new@x.io"})),
            ("AccountUpdateNode", json!({"id": id, "fields": {"balance": 5}})),
            ("AccountDeleteNode", json!({"id": id})),
            ("AccountUpsertNode", json!({"where": {"email": "x@x.io"}, "update": {"balance": 6}})),
            ("AccountUpsertNode", json!({"where": {"email": "n2@x.io"}})),
            ("AccountBulkCreateNode", json!({"data": [{"email": "n3@x.io"}, {"email": "n4@x.io"}]})),
            ("AccountBulkUpdateNode", json!({"filter": {}, "fields": {"balance": 7}, "confirmed": true})),
            ("AccountBulkDeleteNode", json!({"filter": {}, "confirmed": true})),
            ("AccountBulkUpsertNode", json!({"data": [{"email": "x@x.io", "balance": 8}, {"email": "n5@x.io"}], "conflict_on": "email"})),
        ];
        for (node, params) in attempts {
            let e = err(&db, node, params).await;
            assert_eq!(e.code(), "database", "{node}: {e}");
            assert_eq!(dump(&db, "Account").await, accounts, "{node} left a change without its audit row");
        }
        rename("dataflow_audit_away", "dataflow_audit");
        assert_eq!(dump(&db, "audit").await, audit);
        // And with the table back, every write has its row again.
        ok(&db, "AccountUpdateNode", json!({"id": id, "fields": {"balance": 5}})).await;
        assert_eq!(audit_rows(&db, json!({"record_id": id, "op": "update"})).await.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn audit_list_filters_pages_and_keeps_to_the_callers_tenant() {
    on_each_backend("audit_list", |db| async move {
        let alice = db.with_context(dataflow::Context::new().tenant("a").actor("alice"));
        let bob = db.with_context(dataflow::Context::new().tenant("b").actor("bob"));
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(
                ok(
                    &alice,
                    "AccountCreateNode",
                    json!({"email": format!("a{i}@x.io")}),
                )
                .await["id"]
                    .clone(),
            );
        }
        let mark = audit_rows(&db, json!({})).await[0]["at"].clone();
        for i in 0..2 {
            ok(
                &bob,
                "AccountCreateNode",
                json!({"email": format!("b{i}@x.io")}),
            )
            .await;
        }
        ok(&db, "AccountCreateNode", json!({"email": "nobody@x.io"})).await;
        ok(
            &alice,
            "AccountUpdateNode",
            json!({"id": ids[0], "fields": {"balance": 3}}),
        )
        .await;

        let list = |h: &DataFlow, q: Value| {
            let h = h.clone();
            async move { h.execute("AuditListNode", q).await }
        };
        let page = list(&alice, json!({})).await.unwrap();
        assert_eq!(page["count"], 4);
        assert!(page["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["tenant"] == "a" && r["actor"] == "alice"));
        assert_eq!(list(&bob, json!({})).await.unwrap()["count"], 2);
        // No tenant: the rows written without one, never another tenant's.
        let page = list(&db, json!({})).await.unwrap();
        assert_eq!(page["count"], 1);
        assert_eq!(page["records"][0]["tenant"], Value::Null);
        // The system sees every tenant, or the one it names.
        assert_eq!(audit_rows(&db, json!({})).await.len(), 7);
        assert_eq!(audit_rows(&db, json!({"tenant": "b"})).await.len(), 2);
        let e = list(&alice, json!({"tenant": "b"})).await.unwrap_err();
        assert_eq!(
            (e.code().as_str(), e.field()),
            ("validation", Some("tenant"))
        );

        // Filters.
        assert_eq!(audit_rows(&db, json!({"actor": "alice"})).await.len(), 4);
        assert_eq!(
            audit_rows(&db, json!({"actor": "alice", "op": "update"}))
                .await
                .len(),
            1
        );
        assert_eq!(
            list(&alice, json!({"record_id": ids[0]})).await.unwrap()["count"],
            2
        );
        assert_eq!(
            list(&bob, json!({"record_id": ids[0]})).await.unwrap()["count"],
            0
        );
        assert_eq!(audit_rows(&db, json!({"model": "Ticket"})).await.len(), 0);
        // `since` is inclusive, `until` exclusive: the mark is the third create.
        assert_eq!(audit_rows(&db, json!({"since": mark})).await.len(), 5);
        assert_eq!(audit_rows(&db, json!({"until": mark})).await.len(), 2);
        assert_eq!(
            audit_rows(
                &db,
                json!({"since": "2000-01-01T00:00:00Z", "until": "2000-01-02T00:00:00Z"})
            )
            .await
            .len(),
            0
        );
        for (bad, field) in [
            (json!({"op": "drop"}), "op"),
            (json!({"since": "yesterday"}), "since"),
            (json!({"modle": "Account"}), "modle"),
            (json!({"limit": -1}), "limit"),
        ] {
            let e = list(&alice, bad.clone()).await.unwrap_err();
            assert_eq!(e.code(), "validation", "{bad}: {e}");
            assert!(
                e.message().contains(field) && e.message().contains("AuditListNode"),
                "{bad}: {e}"
            );
        }

        // Keyset pages: newest first, every row once.
        let mut seen = Vec::new();
        let mut after = Value::Null;
        loop {
            let page = as_system(&db)
                .execute("AuditListNode", json!({"limit": 2, "after": after}))
                .await
                .unwrap();
            seen.extend(
                page["records"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["id"].as_i64().unwrap()),
            );
            after = page["next"].clone();
            if after.is_null() {
                break;
            }
        }
        let mut sorted = seen.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        sorted.dedup();
        assert_eq!((seen.len(), &seen), (7, &sorted));
        // A cursor from alice's listing shows bob nothing of alice's.
        let first = list(&alice, json!({"limit": 1})).await.unwrap();
        let page = list(&bob, json!({"after": first["next"]})).await.unwrap();
        assert!(page["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["tenant"] == "b"));

        // A workflow serves it, with the run's context.
        let mut wf = dataflow::WorkflowBuilder::new();
        wf.add_node("AuditListNode", "log", json!({"model": "Account"}));
        let workflow = wf.build(&db).unwrap();
        let run = alice.runtime().execute(&workflow, json!({})).await.unwrap();
        assert_eq!(run.results["log"]["count"], 4);
        // Its input schema is published like any node's.
        let schema = db.node_schema("AuditListNode").unwrap();
        assert!(schema["properties"]["record_id"].is_object(), "{schema}");
    })
    .await;
}

#[tokio::test]
async fn sensitive_fields_never_reach_the_audit_log() {
    on_each_backend("audit_sensitive", |db| async move {
        let a = ok(
            &db,
            "AccountCreateNode",
            json!({"email": "s@x.io", "api_key": "sk-live-1"}),
        )
        .await;
        assert_eq!(a["api_key"], "sk-live-1", "the record itself keeps it");
        ok(
            &db,
            "AccountUpdateNode",
            json!({"id": a["id"], "fields": {"api_key": "sk-live-2"}}),
        )
        .await;
        ok(
            &db,
            "AccountBulkCreateNode",
            json!({"data": [{"email": "t@x.io", "api_key": "sk-live-3"}]}),
        )
        .await;
        ok(
            &db,
            "AccountBulkUpsertNode",
            json!({"data": [{"email": "t@x.io", "api_key": "sk-live-4"}], "conflict_on": "email"}),
        )
        .await;
        ok(
            &db,
            "AccountBulkUpdateNode",
            json!({"filter": {"email": "s@x.io"}, "fields": {"api_key": "sk-live-5"}}),
        )
        .await;
        ok(&db, "AccountDeleteNode", json!({"id": a["id"]})).await;
        let rows = audit_rows(&db, json!({"model": "Account"})).await;
        assert_eq!(rows.len(), 6);
        let text = serde_json::to_string(&rows).unwrap();
        assert!(!text.contains("sk-live"), "{text}");
        // A change of the secret is recorded as a change, without the values.
        let update = rows
            .iter()
            .find(|r| r["op"] == "update" && r["node_id"] == "AccountUpdateNode")
            .unwrap();
        assert_eq!(
            (&update["before"]["api_key"], &update["after"]["api_key"]),
            (&json!("***"), &json!("***"))
        );
        // Nor in an error that quotes the caller's filter.
        let e = err(
            &db,
            "AccountReadNode",
            json!({"filter": {"$or": [{"api_key": "sk-live-9"}, {"email": "nobody@x.io"}]}}),
        )
        .await;
        assert_eq!(e.code(), "not_found");
        assert!(
            !e.message().contains("sk-live")
                && e.message().contains("***")
                && e.message().contains("nobody@x.io"),
            "{e}"
        );
    })
    .await;
}

#[tokio::test]
async fn enable_audit_log_covers_every_model_but_those_that_opt_out() {
    for (label, url) in support::backend_urls("audit_config") {
        eprintln!("--- on {label}");
        let boot = || {
            DataFlow::builder(&url)
                .enable_audit_log(true)
                .models(&[&User::SCHEMA, &Scratch::SCHEMA])
                .build()
        };
        let db = boot().await.unwrap();
        let u = ok(&db, "UserCreateNode", json!({"email": "u@x.io"})).await;
        ok(&db, "ScratchCreateNode", json!({"note": "not audited"})).await;
        let rows = audit_rows(&db, json!({})).await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(
            (&rows[0]["model"], &rows[0]["record_id"]),
            (&json!("User"), &u["id"])
        );
        // The table is versioned with the models: the next boot takes the
        // one-query path, and the planner finds nothing to do.
        let db = boot().await.unwrap();
        assert!(db.migrations().plan().await.unwrap().is_empty());
        let registered = db.migrations().registered().await.unwrap();
        assert!(
            registered
                .iter()
                .any(|m| m.name == "dataflow_audit" && m.table == "dataflow_audit"),
            "{registered:?}"
        );
        assert_eq!(audit_rows(&db, json!({})).await.len(), 1);

        // Without the audit log: no node, and the listing says why.
        let plain_url = match label {
            "sqlite" => sqlite_url("audit_off"),
            _ => postgres::fresh_database("audit_off").unwrap(),
        };
        let plain = DataFlow::builder(&plain_url)
            .models(&[&User::SCHEMA])
            .build()
            .await
            .unwrap();
        ok(&plain, "UserCreateNode", json!({"email": "u@x.io"})).await;
        assert_eq!(
            err(&plain, "AuditListNode", json!({})).await.code(),
            "unknown_node"
        );
        let e = plain.audit_list(json!({})).await.unwrap_err();
        assert_eq!(e.code(), "config");
        assert!(e.message().contains("enable_audit_log"), "{e}");
    }
}

#[tokio::test]
async fn audit_cli_lists_and_purges() {
    for (label, url) in support::backend_urls("audit_cli") {
        eprintln!("--- on {label}");
        let db = DataFlow::builder(&url).build().await.unwrap();
        let db = db.with_context(dataflow::Context::new().actor("cli-test"));
        let a = ok(&db, "AccountCreateNode", json!({"email": "a@x.io"})).await;
        ok(
            &db,
            "AccountUpdateNode",
            json!({"id": a["id"], "fields": {"balance": 2}}),
        )
        .await;
        ok(&db, "TicketCreateNode", json!({"title": "t"})).await;
        let bin = support::programs::dataflow_bin();
        let run = |args: &[&str]| {
            let o = std::process::Command::new(&bin)
                .arg("--url")
                .arg(&url)
                .args(args)
                .output()
                .unwrap();
            (
                o.status.code(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        };
        let json_of = |out: &str| -> Value {
            serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
        };

        let (code, out, errs) = run(&["audit", "--model", "Account", "--json"]);
        assert_eq!(code, Some(0), "{errs}");
        let page = json_of(&out);
        assert_eq!(page["count"], 2, "{page}");
        assert_eq!(page["records"][0]["op"], "update");
        let (code, out, _) = run(&[
            "audit",
            "--record",
            a["id"].as_str().unwrap(),
            "--actor",
            "cli-test",
            "--since",
            "1h",
        ]);
        assert_eq!(code, Some(0));
        assert!(
            out.contains("update") && out.contains("create") && out.contains("balance"),
            "{out}"
        );
        assert!(out.lines().next().unwrap().contains("actor"), "{out}");
        let (_, out, _) = run(&["audit", "--until", "2000-01-01T00:00:00Z", "--json"]);
        assert_eq!(json_of(&out)["count"], 0);
        let (_, out, _) = run(&["audit", "--limit", "1"]);
        assert!(out.contains("more: --after "), "{out}");
        let (code, _, errs) = run(&["audit", "--since", "last tuesday"]);
        assert_eq!(code, Some(3), "{errs}");

        // The embedded CLI is the same command.
        let cli = dataflow::cli::Cli {
            json: true,
            command: dataflow::cli::Command::Audit(dataflow::cli::AuditArgs {
                command: None,
                model: Some("Ticket".into()),
                record: None,
                actor: None,
                op: None,
                since: None,
                until: None,
                tenant: None,
                limit: 100,
                after: None,
            }),
        };
        let out = dataflow::cli::execute(&db, &cli).await.unwrap();
        assert_eq!(json_of(&out)["count"], 1);

        // Purging: the retention, or an explicit age; the purge is recorded.
        let (code, _, errs) = run(&["audit", "purge"]);
        assert_eq!(code, Some(8), "no retention configured: {errs}");
        let kept = DataFlow::builder(&url)
            .audit_retention(Duration::from_secs(3600))
            .build()
            .await
            .unwrap();
        assert_eq!(
            kept.purge_audit(None).await.unwrap(),
            0,
            "everything is younger than an hour"
        );
        let newest = audit_rows(&db, json!({"limit": 1})).await[0]["id"]
            .as_i64()
            .unwrap();
        let (code, out, errs) = run(&["audit", "purge", "--older-than", "0s"]);
        assert_eq!(code, Some(0), "{errs}");
        assert!(out.contains("Deleted 3"), "{out}");
        let (_, out, _) = run(&["audit", "--json"]);
        let page = json_of(&out);
        assert_eq!(page["count"], 1, "{page}");
        assert_eq!(
            (
                &page["records"][0]["op"],
                &page["records"][0]["after"]["deleted"]
            ),
            (&json!("purge"), &json!(3))
        );
        // Row ids keep growing after a purge of everything: none is reused.
        let purge_id = page["records"][0]["id"].as_i64().unwrap();
        ok(&db, "TicketCreateNode", json!({"title": "after"})).await;
        let latest = audit_rows(&db, json!({"limit": 1})).await[0]["id"]
            .as_i64()
            .unwrap();
        assert!(
            newest < purge_id && purge_id < latest,
            "{newest} {purge_id} {latest}"
        );
    }
    // A database that never had the audit log.
    let fresh = sqlite_url("audit_cli_none");
    let o = std::process::Command::new(support::programs::dataflow_bin())
        .args(["--url", fresh.as_str(), "audit"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(8));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no audit log"));
}

// ---- optimistic locking

/// Versioned and not audited; declares `version` to read it in Rust.
#[dataflow::model(versioned)]
#[derive(Debug)]
pub struct Counter {
    pub id: String,
    #[field(unique)]
    pub name: String,
    pub n: i64,
    pub version: i64,
}

#[tokio::test]
async fn versioned_records_refuse_stale_writes() {
    on_each_backend("versioned", |db| async move {
        let c = ok(&db, "CounterCreateNode", json!({"name": "c", "n": 0})).await;
        let id = c["id"].clone();
        assert_eq!(c["version"], 1);
        let c = ok(&db, "CounterUpdateNode", json!({"id": id, "fields": {"n": 1}})).await;
        assert_eq!(c["version"], 2, "every update increments it");

        // A stale expected_version: conflict (409, exit 5), nothing written.
        let e = err(&db, "CounterUpdateNode", json!({"id": id, "fields": {"n": 9}, "expected_version": 1})).await;
        assert_eq!((e.code().as_str(), e.code().http_status(), e.code().exit_code()), ("conflict", 409, 5));
        assert_eq!(e.field(), Some("expected_version"));
        assert!(e.message().contains("Counter") && e.message().contains("is 2"), "{e}");
        let now = ok(&db, "CounterReadNode", json!({"id": id})).await;
        assert_eq!((&now["n"], &now["version"]), (&json!(1), &json!(2)));
        let c = ok(&db, "CounterUpdateNode", json!({"filter": {"name": "c"}, "fields": {"n": 2}, "expected_version": 2})).await;
        assert_eq!((&c["n"], &c["version"]), (&json!(2), &json!(3)));
        // Another model's missing record is still not_found.
        let e = err(&db, "CounterUpdateNode", json!({"id": "nope", "fields": {"n": 1}, "expected_version": 1})).await;
        assert_eq!(e.code(), "not_found");

        // Upsert: the existing record must have the expected version; a
        // missing one is a conflict too (the caller expected it to exist).
        let up = ok(&db, "CounterUpsertNode", json!({"where": {"name": "c"}, "create": {"n": 0}, "update": {"n": 3}, "expected_version": 3})).await;
        assert_eq!((&up["action"], &up["record"]["version"]), (&json!("updated"), &json!(4)));
        let e = err(&db, "CounterUpsertNode", json!({"where": {"name": "c"}, "create": {"n": 0}, "update": {"n": 4}, "expected_version": 3})).await;
        assert_eq!(e.code(), "conflict");
        let e = err(&db, "CounterUpsertNode", json!({"where": {"name": "new"}, "create": {"n": 0}, "expected_version": 1})).await;
        assert_eq!(e.code(), "conflict");
        assert_eq!(count(&db, "Counter").await, 1);

        // BulkUpdate: every matched record must have it, else nothing changes.
        ok(&db, "CounterBulkCreateNode", json!({"data": [{"name": "x", "n": 0}, {"name": "y", "n": 0}]})).await;
        let before = dump(&db, "Counter").await;
        let e = err(&db, "CounterBulkUpdateNode", json!({"filter": {}, "fields": {"n": 7}, "confirmed": true, "expected_version": 1})).await;
        assert_eq!(e.code(), "conflict");
        assert_eq!(dump(&db, "Counter").await, before);
        let n = ok(&db, "CounterBulkUpdateNode", json!({"filter": {"name": {"$in": ["x", "y"]}}, "fields": {"n": 7}, "expected_version": 1})).await;
        assert_eq!(n["updated"], 2);
        let y = ok(&db, "CounterReadNode", json!({"filter": {"name": "y"}})).await;
        assert_eq!((&y["n"], &y["version"]), (&json!(7), &json!(2)));
        // BulkUpsert increments existing records' versions, starts new ones at 1.
        ok(&db, "CounterBulkUpsertNode", json!({"data": [{"name": "y", "n": 8}, {"name": "z", "n": 0}], "conflict_on": "name"})).await;
        let page = ok(&db, "CounterListNode", json!({"filter": {"name": {"$in": ["y", "z"]}}, "order_by": "name"})).await;
        assert_eq!((&page["records"][0]["version"], &page["records"][1]["version"]), (&json!(3), &json!(1)));

        // The version is dataflow's: not writable, and only versioned models take expected_version.
        for (node, params, field) in [
            ("CounterUpdateNode", json!({"id": id, "fields": {"version": 9}}), "version"),
            ("CounterCreateNode", json!({"name": "v", "n": 0, "version": 5}), "version"),
            ("CounterUpdateNode", json!({"id": id, "fields": {"n": 1}, "expected_version": "4"}), "expected_version"),
            ("UserUpdateNode", json!({"id": "u", "fields": {"active": true}, "expected_version": 1}), "expected_version"),
        ] {
            let e = err(&db, node, params.clone()).await;
            assert_eq!((e.code().as_str(), e.field()), ("validation", Some(field)), "{node} {params}: {e}");
        }
        let e = err(&db, "UserUpdateNode", json!({"id": "u", "fields": {"active": true}, "expected_version": 1})).await;
        assert!(e.message().contains("versioned"), "{e}");
        let schema = db.node_schema("CounterUpdateNode").unwrap();
        assert_eq!(schema["properties"]["expected_version"]["minimum"], 1);
        assert!(db.node_schema("UserUpdateNode").unwrap()["properties"].get("expected_version").is_none());
        assert!(db.node_schema("CounterCreateNode").unwrap()["properties"].get("version").is_none());

        // The typed form.
        let c = CounterCreateNode::run(&db, &Counter { id: String::new(), name: "typed".into(), n: 0, version: 0 }).await.unwrap();
        assert_eq!(c.version, 1);
        let e = CounterUpdateNode::run_if_version(&db, c.id.clone(), 2, json!({"n": 1})).await.unwrap_err();
        assert_eq!(e.code(), "conflict");
        let c = CounterUpdateNode::run_if_version(&db, c.id.clone(), 1, json!({"n": 1})).await.unwrap();
        assert_eq!((c.n, c.version), (1, 2));
        assert_eq!(CounterBulkUpdateNode::run_if_version(&db, json!({"name": "typed"}), 1, json!({"n": 2})).await.unwrap_err().code(), "conflict");
        assert_eq!(CounterBulkUpdateNode::run_if_version(&db, json!({"name": "typed"}), 2, json!({"n": 2})).await.unwrap(), 1);
        let (action, c) = CounterUpsertNode::run_if_version(&db, &c, "name", 3, json!({"n": 3})).await.unwrap();
        assert_eq!((action, c.n, c.version), (dataflow::nodes::UpsertAction::Updated, 3, 4));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_with_one_expected_version_exactly_one_wins() {
    on_each_backend("versioned_race", |db| async move {
        for model in ["Counter", "Account"] {
            let create = match model {
                "Counter" => json!({"name": "race", "n": 0}),
                _ => json!({"email": "race@x.io"}),
            };
            let field = if model == "Counter" { "n" } else { "balance" };
            let rec = ok(&db, &format!("{model}CreateNode"), create).await;
            let tasks: Vec<_> = (1..=8)
                .map(|i| {
                    let db = db.clone();
                    let params =
                        json!({"id": rec["id"], "fields": {field: i}, "expected_version": 1});
                    let node = format!("{model}UpdateNode");
                    tokio::spawn(async move { db.execute(&node, params).await })
                })
                .collect();
            let mut won = Vec::new();
            for t in tasks {
                match t.await.unwrap() {
                    Ok(v) => won.push(v),
                    Err(e) => assert_eq!(e.code(), "conflict", "{model}: {e}"),
                }
            }
            assert_eq!(won.len(), 1, "{model}: exactly one update wins");
            let now = ok(&db, &format!("{model}ReadNode"), json!({"id": rec["id"]})).await;
            assert_eq!(
                (&now["version"], &now[field]),
                (&json!(2), &won[0][field]),
                "{model}"
            );
            if model == "Account" {
                let rows = audit_rows(&db, json!({"record_id": rec["id"], "op": "update"})).await;
                assert_eq!(rows.len(), 1, "one audit row, for the winner");
                assert_eq!(rows[0]["after"][field], won[0][field]);
            }
        }
    })
    .await;
}

// ------------------------------------------------------------------ Query cache

/// A database with the query cache on, on each backend.
async fn on_each_backend_cached<F, Fut>(name: &str, body: F)
where
    F: Fn(&'static str, String, DataFlow) -> Fut,
    Fut: Future<Output = ()>,
{
    for (label, url) in support::backend_urls(name) {
        eprintln!("--- {name} on {label}");
        let db = DataFlow::builder(&url)
            .enable_caching(true)
            .build()
            .await
            .unwrap_or_else(|e| panic!("{name}: boot on {label} failed: {e}"));
        assert!(db.cache_stats().available, "{label}: the cache serves");
        body(label, url, db).await;
    }
}

/// Reads `node` twice: the second answer must be the cache's (a hit) and
/// the same as the first.
async fn cached(db: &DataFlow, node: &str, params: Value) -> Value {
    let first = ok(db, node, params.clone()).await;
    let hits = db.cache_stats().hits;
    let second = ok(db, node, params.clone()).await;
    assert_eq!(db.cache_stats().hits, hits + 1, "{node} {params}: a hit");
    assert_eq!(first, second, "{node} {params}");
    second
}

fn emails(page: &Value) -> Vec<String> {
    let mut out: Vec<String> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["email"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn cache_reads_your_writes_through_every_write_node() {
    on_each_backend_cached("cache_ryw", |label, _, db| async move {
        let all = json!({"order_by": "email"});
        let count = || json!({});
        // Create.
        assert_eq!(cached(&db, "UserCountNode", count()).await["count"], 0);
        cached(&db, "UserListNode", all.clone()).await;
        let ann = ok(&db, "UserCreateNode", json!({"email": "ann@x.io"})).await;
        assert_eq!(ok(&db, "UserCountNode", count()).await["count"], 1, "{label}");
        assert_eq!(emails(&ok(&db, "UserListNode", all.clone()).await), ["ann@x.io"]);
        // Update.
        let by_id = json!({"id": ann["id"]});
        assert_eq!(cached(&db, "UserReadNode", by_id.clone()).await["full_name"], Value::Null);
        ok(&db, "UserUpdateNode", json!({"id": ann["id"], "fields": {"full_name": "Ann"}})).await;
        assert_eq!(ok(&db, "UserReadNode", by_id.clone()).await["full_name"], "Ann", "{label}");
        // Upsert (an update of the existing record).
        cached(&db, "UserReadNode", by_id.clone()).await;
        ok(
            &db,
            "UserUpsertNode",
            json!({"where": {"email": "ann@x.io"}, "update": {"full_name": "Ann Lee"}, "create": {}}),
        )
        .await;
        assert_eq!(ok(&db, "UserReadNode", by_id.clone()).await["full_name"], "Ann Lee", "{label}");
        // BulkCreate.
        cached(&db, "UserCountNode", count()).await;
        ok(
            &db,
            "UserBulkCreateNode",
            json!({"data": [{"email": "bob@x.io"}, {"email": "eve@x.io", "active": false}]}),
        )
        .await;
        assert_eq!(ok(&db, "UserCountNode", count()).await["count"], 3, "{label}");
        // BulkUpdate.
        let inactive = json!({"filter": {"active": false}});
        assert_eq!(cached(&db, "UserCountNode", inactive.clone()).await["count"], 1);
        ok(&db, "UserBulkUpdateNode", json!({"filter": {"email": "bob@x.io"}, "fields": {"active": false}})).await;
        assert_eq!(ok(&db, "UserCountNode", inactive.clone()).await["count"], 2, "{label}");
        // BulkUpsert.
        cached(&db, "UserListNode", all.clone()).await;
        ok(
            &db,
            "UserBulkUpsertNode",
            json!({"conflict_on": "email", "data": [{"email": "bob@x.io", "full_name": "Bob"}, {"email": "cy@x.io"}]}),
        )
        .await;
        assert_eq!(
            emails(&ok(&db, "UserListNode", all.clone()).await),
            ["ann@x.io", "bob@x.io", "cy@x.io", "eve@x.io"],
            "{label}"
        );
        // Delete.
        cached(&db, "UserReadNode", by_id.clone()).await;
        ok(&db, "UserDeleteNode", json!({"id": ann["id"]})).await;
        assert_eq!(err(&db, "UserReadNode", by_id.clone()).await.code().as_str(), "not_found", "{label}");
        // BulkDelete.
        assert_eq!(cached(&db, "UserCountNode", count()).await["count"], 3);
        ok(
            &db,
            "UserBulkDeleteNode",
            json!({"filter": {"email": {"$in": ["bob@x.io", "eve@x.io"]}}, "confirmed": true}),
        )
        .await;
        assert_eq!(ok(&db, "UserCountNode", count()).await["count"], 1, "{label}");
        // A failed write leaves the cache right too (nothing changed).
        assert_eq!(cached(&db, "UserCountNode", count()).await["count"], 1);
        err(&db, "UserCreateNode", json!({"email": "cy@x.io"})).await;
        assert_eq!(ok(&db, "UserCountNode", count()).await["count"], 1, "{label}");
        // A transactional workflow's writes, too.
        cached(&db, "UserCountNode", count()).await;
        let mut wf = dataflow::WorkflowBuilder::new();
        wf.add_node("UserCreateNode", "make", json!({"email": "tx@x.io"}))
            .add_node("UserReadNode", "after", json!({}))
            .add_connection("make", "id", "after", "id")
            .transactional(true);
        let wf = wf.build(&db).unwrap();
        let run = db.runtime().execute(&wf, json!({})).await.unwrap();
        assert_eq!(run.results["after"]["email"], "tx@x.io", "{label}: the run reads its own write");
        assert_eq!(ok(&db, "UserCountNode", count()).await["count"], 2, "{label}");
    })
    .await;
}

/// A statement through another connection (diesel, outside the runtime)
/// and another process (the quickstart example, a second `DataFlow`) are
/// seen by cached reads within the documented bound.
#[tokio::test]
async fn cache_sees_writes_of_other_connections_and_processes() {
    use diesel::connection::SimpleConnection as _;
    use diesel::Connection as _;
    for (label, url) in support::backend_urls("cache_others") {
        eprintln!("--- on {label}");
        // Only the quickstart's User here: its boot adds its other models.
        let db = DataFlow::builder(&url)
            .enable_caching(true)
            .models(&[&User::SCHEMA])
            .build()
            .await
            .unwrap();
        ok(
            &db,
            "UserBulkCreateNode",
            json!({"data": [{"email": "a@x.io"}, {"email": "b@x.io"}]}),
        )
        .await;
        assert_eq!(cached(&db, "UserCountNode", json!({})).await["count"], 2);
        // A raw statement on a connection of its own.
        let raw = |sql: &str| match label {
            "sqlite" => diesel::SqliteConnection::establish(url.trim_start_matches("sqlite://"))
                .unwrap()
                .batch_execute(sql)
                .unwrap(),
            _ => diesel::PgConnection::establish(&url)
                .unwrap()
                .batch_execute(sql)
                .unwrap(),
        };
        raw("DELETE FROM users WHERE email = 'a@x.io'");
        let done = Instant::now();
        let mut seen = None;
        while done.elapsed() < Duration::from_secs(5) {
            if ok(&db, "UserCountNode", json!({})).await["count"] == 1 {
                seen = Some(done.elapsed());
                break;
            }
            tokio::task::yield_now().await;
        }
        let seen = seen.unwrap_or_else(|| panic!("{label}: the raw delete was never seen"));
        eprintln!("{label}: a raw write was seen after {seen:?}");
        assert!(
            seen < Duration::from_secs(1),
            "{label}: seen after {seen:?}"
        );

        // Another process: the quickstart example, a DataFlow of its own.
        assert_eq!(cached(&db, "UserCountNode", json!({})).await["count"], 1);
        let out = std::process::Command::new(support::programs::example("quickstart"))
            .arg(&url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let started = Instant::now();
        let users = loop {
            let page = ok(&db, "UserListNode", json!({})).await;
            let raw_count = ok(&db, "UserCountNode", json!({})).await["count"]
                .as_i64()
                .unwrap();
            if emails(&page).iter().any(|e| e.ends_with("@example.io"))
                && raw_count == page["count"].as_i64().unwrap()
            {
                break page;
            }
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{label}: the child's writes were not seen: {page}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        assert!(
            !emails(&users).contains(&"b@x.io".to_string()),
            "{label}: the child deleted b: {users}"
        );
    }
}

#[tokio::test]
async fn cache_keys_ignore_json_order_and_whitespace() {
    on_each_backend_cached("cache_keys", |_, _, db| async move {
        ok(
            &db,
            "UserCreateNode",
            json!({"email": "k@x.io", "active": true}),
        )
        .await;
        let a: Value =
            serde_json::from_str(r#"{"filter": {"active": true, "email": "k@x.io"}, "limit": 5}"#)
                .unwrap();
        let b: Value =
            serde_json::from_str(r#"{ "limit":5,"filter":{ "email":"k@x.io","active":true } }"#)
                .unwrap();
        ok(&db, "UserListNode", a).await;
        let before = db.cache_stats();
        ok(&db, "UserListNode", b).await;
        assert_eq!(db.cache_stats().hits, before.hits + 1);
    })
    .await;
}

#[tokio::test]
async fn cache_stats_are_exact_after_a_known_workload() {
    on_each_backend_cached("cache_stats", |label, _, db| async move {
        let base = db.cache_stats();
        let u = ok(&db, "UserCreateNode", json!({"email": "s@x.io"})).await;
        // The write's own invalidation (SQLite: and the data_version it
        // moved, asked at once); PostgreSQL skips its own notification.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..2 {
            ok(&db, "UserReadNode", json!({"id": u["id"]})).await;
            ok(
                &db,
                "UserListNode",
                json!({"filter": {"active": true}, "limit": 20}),
            )
            .await;
            ok(&db, "UserCountNode", json!({})).await;
        }
        ok(
            &db,
            "UserListNode",
            json!({"limit": 20, "filter": {"active": true}}),
        )
        .await;
        let other = db.with_context(dataflow::Context::new().tenant("other"));
        ok(&other, "UserCountNode", json!({})).await;
        let s = db.cache_stats();
        assert_eq!(s.hits - base.hits, 4, "{label}: {s:?}");
        assert_eq!(s.misses - base.misses, 4, "{label}: {s:?}");
        let writes = if label == "sqlite" { 2 } else { 1 };
        assert_eq!(
            s.invalidations - base.invalidations,
            writes,
            "{label}: {s:?}"
        );
        assert_eq!(s.entries, 4, "{label}: {s:?}");
        assert_eq!(s.evictions, 0, "{label}: {s:?}");
        assert!(s.bytes > 0 && s.bytes < 10_000, "{label}: {s:?}");
        // Clearing one model, then all.
        db.cache_clear(Some("Doc")).unwrap();
        assert_eq!(db.cache_stats().entries, 4);
        db.cache_clear(Some("User")).unwrap();
        assert_eq!(db.cache_stats().entries, 0);
        assert_eq!(
            db.cache_clear(Some("Nope")).unwrap_err().code().as_str(),
            "not_found"
        );
        ok(&db, "UserCountNode", json!({})).await;
        db.cache_clear(None).unwrap();
        let s = db.cache_stats();
        assert_eq!((s.entries, s.bytes), (0, 0), "{label}: {s:?}");
    })
    .await;
}

#[tokio::test]
async fn cache_entries_expire_after_the_ttl() {
    for (label, url) in support::backend_urls("cache_ttl") {
        let db = DataFlow::builder(&url)
            .enable_caching(true)
            .cache_ttl(Duration::from_millis(150))
            .build()
            .await
            .unwrap();
        ok(&db, "UserCountNode", json!({})).await;
        let s = db.cache_stats();
        ok(&db, "UserCountNode", json!({})).await;
        assert_eq!(db.cache_stats().hits, s.hits + 1, "{label}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = db.cache_stats();
        ok(&db, "UserCountNode", json!({})).await;
        let after = db.cache_stats();
        assert_eq!(after.hits, before.hits, "{label}: expired, not served");
        assert_eq!(after.misses, before.misses + 1, "{label}");
    }
}

#[tokio::test]
async fn cache_stays_within_its_byte_bound() {
    for (label, url) in support::backend_urls("cache_bound") {
        let db = DataFlow::builder(&url)
            .enable_caching(true)
            .cache_max_bytes(16 * 1024)
            .build()
            .await
            .unwrap();
        seed_users(&db, 20).await;
        for i in 0..200 {
            ok(&db, "UserListNode", json!({"limit": 20, "offset": i % 7, "filter": {"full_name": {"$ne": format!("x{i}")}}})).await;
        }
        let s = db.cache_stats();
        assert!(s.evictions > 0, "{label}: {s:?}");
        assert!(s.bytes <= 16 * 1024, "{label}: {s:?}");
        assert!(s.entries > 0 && s.entries < 200, "{label}: {s:?}");
    }
}

/// PostgreSQL: the LISTEN connection killed on the server; the cache passes
/// every read through until it is back, then invalidates everything once.
#[tokio::test]
async fn cache_passes_through_while_its_listen_connection_is_down() {
    use diesel::connection::SimpleConnection as _;
    use diesel::Connection as _;
    let Some(url) = postgres::fresh_database("cache_listen") else {
        return;
    };
    let db = DataFlow::builder(&url)
        .enable_caching(true)
        .build()
        .await
        .unwrap();
    ok(&db, "UserCreateNode", json!({"email": "l@x.io"})).await;
    cached(&db, "UserCountNode", json!({})).await;
    let mut admin = diesel::PgConnection::establish(&url).unwrap();
    admin
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query = 'LISTEN dataflow_changes'",
        )
        .unwrap();
    let started = Instant::now();
    while db.cache_stats().available {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the drop was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Down (or just back): nothing stale is ever served.
    let base = db.cache_stats();
    admin.batch_execute("INSERT INTO users (id, email, active, created_at, updated_at) VALUES ('raw', 'raw@x.io', true, now(), now())").unwrap();
    assert_eq!(ok(&db, "UserCountNode", json!({})).await["count"], 2);
    let started = Instant::now();
    while !db.cache_stats().available {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the listener never came back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let back = db.cache_stats();
    assert!(
        back.invalidations > base.invalidations,
        "invalidated on return: {back:?}"
    );
    assert_eq!(cached(&db, "UserCountNode", json!({})).await["count"], 2);
    admin
        .batch_execute("DELETE FROM users WHERE id = 'raw'")
        .unwrap();
    let started = Instant::now();
    while ok(&db, "UserCountNode", json!({})).await["count"] != 1 {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the new listener hears"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// PostgreSQL: the change triggers come with the cache's migrations, stay
/// when an instance without the cache boots, and go with
/// `enable_caching(false)` + `migrate apply`.
#[tokio::test]
async fn cache_change_triggers_are_migrated() {
    use diesel::Connection as _;
    use diesel::RunQueryDsl as _;
    let Some(url) = postgres::fresh_database("cache_triggers") else {
        return;
    };
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let triggers = || {
        let mut c = diesel::PgConnection::establish(&url).unwrap();
        diesel::sql_query("SELECT COUNT(*) AS n FROM pg_trigger WHERE tgname = 'dataflow_changes'")
            .get_result::<N>(&mut c)
            .unwrap()
            .n
    };
    let on = DataFlow::builder(&url)
        .enable_caching(true)
        .build()
        .await
        .unwrap();
    let models = on.models().len() as i64;
    assert_eq!(triggers(), models);
    // An unchanged boot with the cache stops at the fast check.
    DataFlow::builder(&url)
        .enable_caching(true)
        .build()
        .await
        .unwrap();
    let off = DataFlow::builder(&url)
        .enable_caching(false)
        .build()
        .await
        .unwrap();
    assert_eq!(triggers(), models, "boot without the cache leaves them");
    let applied = off
        .migrations()
        .apply(dataflow::migrate::ApplyRequest::new())
        .await
        .unwrap();
    assert!(applied.is_some());
    assert_eq!(triggers(), 0, "migrate apply without the cache drops them");
    drop(on);
}

// ---- Metrics, slow queries, health (issue 13, sections 2 and 3) ----

/// The value of one exposition line (`name{labels}` as printed), if present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_count_a_known_workload_exactly() {
    on_each_backend("metrics_workload", |db| async move {
        let before = db.metrics();
        assert_eq!(
            metric(&before, "dataflow_migrations_applied_total"),
            Some(1.0),
            "{before}"
        );
        assert_eq!(
            metric(
                &before,
                "dataflow_node_calls_total{model=\"User\",op=\"Create\"}"
            ),
            Some(0.0)
        );
        let mut ids = Vec::new();
        for i in 0..3 {
            let u = ok(
                &db,
                "UserCreateNode",
                json!({"email": format!("m{i}@x.io")}),
            )
            .await;
            ids.push(u["id"].clone());
        }
        let e = err(&db, "UserCreateNode", json!({"email": "m0@x.io"})).await;
        assert_eq!(e.code().as_str(), "unique_violation");
        ok(&db, "UserReadNode", json!({"id": ids[0]})).await;
        ok(&db, "UserReadNode", json!({"id": ids[1]})).await;
        err(&db, "UserReadNode", json!({"id": "missing"})).await;
        let page = ok(
            &db,
            "UserListNode",
            json!({"filter": {"email": {"$like": "m%"}}}),
        )
        .await;
        assert_eq!(page["records"].as_array().unwrap().len(), 3);
        ok(
            &db,
            "UserBulkCreateNode",
            json!({"data": [{"email": "b1@x.io"}, {"email": "b2@x.io"}]}),
        )
        .await;
        ok(
            &db,
            "UserBulkDeleteNode",
            json!({"filter": {"email": {"$like": "b%"}}}),
        )
        .await;

        let text = db.metrics();
        let v = |s: &str| metric(&text, s).unwrap_or_else(|| panic!("{s} in\n{text}"));
        for (series, want) in [
            (
                r#"dataflow_node_calls_total{model="User",op="Create"}"#,
                4.0,
            ),
            (
                r#"dataflow_node_errors_total{code="unique_violation",model="User",op="Create"}"#,
                1.0,
            ),
            (
                r#"dataflow_node_duration_seconds_count{model="User",op="Create"}"#,
                4.0,
            ),
            // Rows are observed for successful calls only.
            (r#"dataflow_node_rows_count{model="User",op="Create"}"#, 3.0),
            (r#"dataflow_node_rows_sum{model="User",op="Create"}"#, 3.0),
            (r#"dataflow_node_calls_total{model="User",op="Read"}"#, 3.0),
            (
                r#"dataflow_node_errors_total{code="not_found",model="User",op="Read"}"#,
                1.0,
            ),
            (r#"dataflow_node_rows_sum{model="User",op="Read"}"#, 2.0),
            (r#"dataflow_node_calls_total{model="User",op="List"}"#, 1.0),
            (r#"dataflow_node_rows_sum{model="User",op="List"}"#, 3.0),
            (
                r#"dataflow_node_rows_bucket{model="User",op="List",le="2"}"#,
                0.0,
            ),
            (
                r#"dataflow_node_rows_bucket{model="User",op="List",le="5"}"#,
                1.0,
            ),
            (
                r#"dataflow_node_rows_sum{model="User",op="BulkCreate"}"#,
                2.0,
            ),
            (
                r#"dataflow_node_rows_sum{model="User",op="BulkDelete"}"#,
                2.0,
            ),
            (
                r#"dataflow_node_calls_total{model="Session",op="Create"}"#,
                0.0,
            ),
            ("dataflow_pool_size", 10.0),
            ("dataflow_pool_waiting", 0.0),
            ("dataflow_pool_timeouts_total", 0.0),
            (
                r#"dataflow_slow_queries_total{model="User",op="Create"}"#,
                0.0,
            ),
            ("dataflow_migrations_blocked", 0.0),
            // The query cache is on by default: the four reads (one
            // failed) each looked it up once, and none repeated.
            ("dataflow_cache_hits_total", 0.0),
            ("dataflow_cache_misses_total", 4.0),
        ] {
            assert_eq!(v(series), want, "{series}");
        }
        assert_eq!(
            text.matches(r#"dataflow_node_errors_total{"#).count(),
            2,
            "only the two failing calls have error series:\n{text}"
        );
        assert!(v("dataflow_pool_connections") >= 1.0);
        if db.dialect() == dataflow::Dialect::Sqlite {
            // The bulk writes went through the writer thread, one per batch.
            assert!(v("dataflow_writer_batch_size_count") >= 2.0, "{text}");
            assert_eq!(v("dataflow_writer_queue_depth"), 0.0);
        }
    })
    .await;
}

#[tokio::test]
async fn metrics_off_export_nothing_and_pool_timeouts_count() {
    let db = DataFlow::builder(sqlite_url("metrics_off"))
        .enable_metrics(false)
        .build()
        .await
        .unwrap();
    ok(&db, "UserCountNode", json!({})).await;
    assert_eq!(db.metrics(), "");

    // One connection, held: the next call waits, times out and is counted.
    let db = DataFlow::builder(sqlite_url("pool_timeouts"))
        .connection_pool_size(1)
        .connect_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let held = db.connection().unwrap();
    let e = err(&db, "UserListNode", json!({})).await;
    assert_eq!(e.code().as_str(), "connection", "{e}");
    drop(held);
    let text = db.metrics();
    assert_eq!(
        metric(&text, "dataflow_pool_timeouts_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"dataflow_node_errors_total{code="connection",model="User",op="List"}"#
        ),
        Some(1.0),
        "{text}"
    );
    let h = db.health().await.unwrap();
    assert_eq!(h.pool.timeouts, 1);
    assert_eq!(h.pool.size, 1);
}

/// Captures what `tracing` events print, for the slow-query test.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn slow_queries_are_logged_with_bind_marks_never_values() {
    // Statements run on the blocking pool and the writer thread: a global
    // subscriber sees them (this is the only test of this binary that sets one;
    // slow events come only from databases with a threshold, so only this test's).
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    for (label, url) in support::backend_urls("slow_queries") {
        let db = DataFlow::builder(&url)
            .slow_query_threshold(Duration::ZERO)
            .build()
            .await
            .unwrap();
        let secret = format!("sk-live-{label}-4242@x.io");
        let u = ok(
            &db,
            "UserCreateNode",
            json!({"email": secret, "full_name": "Hidden Name"}),
        )
        .await;
        ok(&db, "UserListNode", json!({"filter": {"email": secret}})).await;
        ok(
            &db,
            "UserUpdateNode",
            json!({"id": u["id"], "fields": {"full_name": "Other Secret"}}),
        )
        .await;
        let text = captured.text();
        let events: Vec<&str> = text.lines().filter(|l| l.contains("slow query")).collect();
        assert!(events.len() >= 3, "{label}: {text}");
        for e in &events {
            assert!(e.contains("WARN"), "{e}");
            assert!(!e.contains("sk-live"), "{label}: a bound value leaked: {e}");
            assert!(
                !e.contains("Hidden Name") && !e.contains("Other Secret"),
                "{e}"
            );
        }
        let create = events
            .iter()
            .find(|e| e.contains("op=\"Create\"") && e.contains("INSERT INTO"))
            .unwrap_or_else(|| panic!("{label}: no Create event in {text}"));
        assert!(create.contains("model=\"User\""), "{create}");
        assert!(create.contains("duration_ms="), "{create}");
        assert!(
            create.contains('?') || create.contains("$1"),
            "bind marks: {create}"
        );
        let metrics = db.metrics();
        let creates = metric(
            &metrics,
            r#"dataflow_slow_queries_total{model="User",op="Create"}"#,
        )
        .unwrap();
        assert!(creates >= 1.0, "{metrics}");
        assert!(
            metric(
                &metrics,
                r#"dataflow_slow_queries_total{model="User",op="List"}"#
            )
            .unwrap()
                >= 1.0
        );
        let h = db.health().await.unwrap();
        assert!(
            h.slow_queries.recent >= 3 && h.slow_queries.total >= 3,
            "{h:?}"
        );
        assert_eq!(h.slow_queries.threshold_ms, Some(0.0));
        // A negative threshold is a configuration error, not a silent no-op.
        let mut config = db.config().clone();
        config.slow_query_threshold = Some(-1.0);
        let e = DataFlow::from_config(config).await.unwrap_err();
        assert_eq!(e.code().as_str(), "config", "{e}");
    }
}

#[tokio::test]
async fn health_reports_readiness_and_blocked_migrations() {
    on_each_backend("health_report", |db| async move {
        ok(&db, "UserCreateNode", json!({"email": "h@x.io"})).await;
        let h = db.health().await.unwrap();
        assert!(h.ready, "{h:?}");
        assert!(h.database.answers && h.database.error.is_none());
        assert_eq!(h.migrations.state, dataflow::MigrationState::Current);
        assert_eq!(h.migrations.applied, 1);
        assert_eq!(h.pool.size, 10);
        assert!(h.pool.saturation >= 0.0 && h.pool.saturation <= 1.0);
        let cache = h.cache.as_ref().expect("the cache is on by default");
        assert_eq!((cache.hits, cache.misses), (0, 0), "no reads yet: {h:?}");
        match db.dialect() {
            dataflow::Dialect::Sqlite => {
                assert_eq!(h.writer.as_ref().map(|w| w.queue_depth), Some(0))
            }
            dataflow::Dialect::Postgres => assert!(h.writer.is_none()),
        }
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["migrations"]["state"], "current");
        assert_eq!(json["ready"], true);
    })
    .await;

    for (label, url) in support::backend_urls("health_blocked") {
        // The models need tables nobody created: blocked, not ready.
        let db = DataFlow::builder(&url)
            .auto_migrate(false)
            .build()
            .await
            .unwrap();
        let h = db.health().await.unwrap();
        assert!(!h.ready, "{label}: {h:?}");
        assert!(h.database.answers, "{label}");
        assert_eq!(
            h.migrations.state,
            dataflow::MigrationState::Blocked,
            "{label}"
        );
        let detail = h.migrations.detail.unwrap();
        assert!(detail.contains("dataflow migrate plan"), "{detail}");
        assert_eq!(
            metric(&db.metrics(), "dataflow_migrations_blocked"),
            Some(1.0)
        );
        // Applying clears it.
        db.migrations().apply(Default::default()).await.unwrap();
        let h = db.health().await.unwrap();
        assert!(h.ready, "{label}: {h:?}");
        assert_eq!(h.migrations.applied, 1);
        let text = db.metrics();
        assert_eq!(metric(&text, "dataflow_migrations_blocked"), Some(0.0));
        assert_eq!(
            metric(&text, "dataflow_migrations_applied_total"),
            Some(1.0)
        );
    }

    let off = DataFlow::builder(sqlite_url("health_off"))
        .monitoring(false)
        .build()
        .await
        .unwrap();
    assert_eq!(
        off.health().await.unwrap_err().code().as_str(),
        "not_supported"
    );
}

#[tokio::test]
async fn monitor_once_json_reports_the_interval() {
    let url = sqlite_url("monitor_once");
    let db = DataFlow::builder(&url).build().await.unwrap();
    let cli = db.clone();
    let run = tokio::spawn(async move {
        dataflow::cli::execute(
            &cli,
            &dataflow::cli::Cli {
                json: true,
                command: dataflow::cli::Command::Monitor(dataflow::cli::MonitorArgs {
                    url: None,
                    token: None,
                    once: true,
                    interval_ms: 500,
                }),
            },
        )
        .await
    });
    // Traffic during the interval.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..5 {
        ok(
            &db,
            "UserCreateNode",
            json!({"email": format!("mon{i}@x.io")}),
        )
        .await;
    }
    let out = run.await.unwrap().unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    let row = v["ops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == "User" && r["op"] == "Create")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(row["calls_total"], 5.0);
    assert!(row["ops_per_second"].as_f64().unwrap() > 0.0, "{row}");
    assert!(
        row["p50_ms"].as_f64().is_some() && row["p99_ms"].as_f64().is_some(),
        "{row}"
    );
    assert_eq!(v["pool"]["size"], 10.0);
}

/// The query cache's counters reach the metrics and the health report:
/// after one miss and one hit, `dataflow_cache_hits_total` / `_misses_total`
/// say so and `health().cache` has the same numbers and a ratio of 0.5.
#[tokio::test]
async fn cache_counters_reach_metrics_and_health() {
    on_each_backend_cached("cache_metrics", |label, _, db| async move {
        ok(&db, "UserCreateNode", json!({"email": "m@x.io"})).await;
        let before = db.cache_stats();
        cached(&db, "UserCountNode", json!({})).await;
        let after = db.cache_stats();
        assert_eq!(
            (after.hits - before.hits, after.misses - before.misses),
            (1, 1),
            "{label}"
        );
        let text = db.metrics();
        assert_eq!(
            metric(&text, "dataflow_cache_hits_total"),
            Some(after.hits as f64),
            "{label}: {text}"
        );
        assert_eq!(
            metric(&text, "dataflow_cache_misses_total"),
            Some(after.misses as f64),
            "{label}"
        );
        assert!(
            metric(&text, "dataflow_cache_entries").unwrap() >= 1.0,
            "{label}"
        );
        let health = db.health().await.unwrap();
        let cache = health.cache.expect("the cache is on");
        assert_eq!(
            (cache.hits, cache.misses),
            (after.hits, after.misses),
            "{label}"
        );
        let ratio = after.hits as f64 / (after.hits + after.misses) as f64;
        assert_eq!(cache.hit_ratio, Some(ratio), "{label}");
    })
    .await;
}

/// The Aggregate node on both backends against hand-computed groups: NULL
/// groups and NULL values, every function, `having`, ordering by an
/// aggregate, empty results, soft delete, typed results that are the same
/// JSON on SQLite and PostgreSQL, and the mistakes it refuses.
#[tokio::test]
async fn aggregate_groups_match_hand_computed_results() {
    on_each_backend("aggregate", |db| async move {
        let rows = [
            (json!("north"), "u1", 10, 1.5, json!(2)),
            (json!("north"), "u1", 20, 2.5, json!(null)),
            (json!("north"), "u2", 30, 3.0, json!(4)),
            (json!("south"), "u2", 5, 0.5, json!(1)),
            (json!(null), "u3", 7, 1.0, json!(null)),
            (json!("south"), "u3", 100, 10.0, json!(5)),
        ];
        let mut ids = Vec::new();
        for (region, user, amount, price, qty) in rows {
            let rec = ok(
                &db,
                "SaleCreateNode",
                json!({"region": region, "user_id": user, "amount": amount, "price": price, "qty": qty}),
            )
            .await;
            ids.push(rec["id"].clone());
        }
        // The last one is soft-deleted: left out unless asked for.
        ok(&db, "SaleDeleteNode", json!({"id": ids[5]})).await;
        let every = json!({
            "n": {"$count": "*"},
            "total": {"$sum": "amount"},
            "mean": {"$avg": "amount"},
            "qty": {"$sum": "qty"},
            "qty_n": {"$count": "qty"},
            "users": {"$count_distinct": "user_id"},
            "lo": {"$min": "amount"},
            "hi": {"$max": "amount"},
            "revenue": {"$sum": "price"},
        });
        let out = ok(
            &db,
            "SaleAggregateNode",
            json!({"group_by": "region", "aggregates": every}),
        )
        .await;
        assert_eq!(
            out,
            json!({"count": 3, "groups": [
                {"region": null, "n": 1, "total": 7, "mean": 7.0, "qty": null, "qty_n": 0,
                 "users": 1, "lo": 7, "hi": 7, "revenue": 1.0},
                {"region": "north", "n": 3, "total": 60, "mean": 20.0, "qty": 6, "qty_n": 2,
                 "users": 2, "lo": 10, "hi": 30, "revenue": 7.0},
                {"region": "south", "n": 1, "total": 5, "mean": 5.0, "qty": 1, "qty_n": 1,
                 "users": 1, "lo": 5, "hi": 5, "revenue": 0.5},
            ]})
        );
        // Integer sums stay integers and averages are numbers, on both backends.
        assert!(out["groups"][1]["total"].is_i64() && out["groups"][1]["mean"].is_f64());

        // `having` on an aggregate, `order_by` an aggregate (descending).
        let n_total = json!({"n": {"$count": "*"}, "total": {"$sum": "amount"}});
        let out = ok(
            &db,
            "SaleAggregateNode",
            json!({"group_by": ["region"], "aggregates": n_total, "having": {"n": {"$gte": 2}}}),
        )
        .await;
        assert_eq!(out["groups"], json!([{"region": "north", "n": 3, "total": 60}]));
        let out = ok(
            &db,
            "SaleAggregateNode",
            json!({"group_by": "region", "aggregates": n_total, "order_by": "-total", "limit": 2}),
        )
        .await;
        assert_eq!(
            out["groups"],
            json!([{"region": "north", "n": 3, "total": 60}, {"region": null, "n": 1, "total": 7}])
        );
        let out = ok(
            &db,
            "SaleAggregateNode",
            json!({"group_by": "region", "aggregates": n_total, "order_by": "-total", "offset": 2}),
        )
        .await;
        assert_eq!(out["groups"], json!([{"region": "south", "n": 1, "total": 5}]));
        let out = ok(
            &db,
            "SaleAggregateNode",
            json!({"group_by": "region", "aggregates": n_total,
                   "having": {"$or": [{"total": {"$lt": 6}}, {"total": {"$in": [60]}}]}}),
        )
        .await;
        assert_eq!(
            out["groups"],
            json!([{"region": "north", "n": 3, "total": 60}, {"region": "south", "n": 1, "total": 5}])
        );

        // Two group fields; a filter; soft-deleted records on request.
        let out = ok(
            &db,
            "SaleAggregateNode",
            json!({"filter": {"region": {"$ne": null}}, "group_by": ["region", "user_id"],
                   "aggregates": {"n": {"$count": "*"}}, "include_deleted": true}),
        )
        .await;
        assert_eq!(
            out["groups"],
            json!([
                {"region": "north", "user_id": "u1", "n": 2},
                {"region": "north", "user_id": "u2", "n": 1},
                {"region": "south", "user_id": "u2", "n": 1},
                {"region": "south", "user_id": "u3", "n": 1},
            ])
        );

        // Nothing matches: no groups, or one all-table group of zero / null.
        let none = json!({"region": "west"});
        let out = ok(
            &db,
            "SaleAggregateNode",
            json!({"filter": none, "group_by": "region", "aggregates": n_total}),
        )
        .await;
        assert_eq!(out, json!({"count": 0, "groups": []}));
        let out = ok(
            &db,
            "SaleAggregateNode",
            json!({"filter": none, "aggregates": {"n": {"$count": "*"}, "total": {"$sum": "amount"}, "hi": {"$max": "price"}}}),
        )
        .await;
        assert_eq!(out, json!({"count": 1, "groups": [{"n": 0, "total": null, "hi": null}]}));

        // $min of a timestamp has the field's form.
        let first = ok(&db, "SaleReadNode", json!({"id": ids[0]})).await["created_at"].clone();
        let out = ok(
            &db,
            "SaleAggregateNode",
            json!({"filter": {"id": ids[0]}, "aggregates": {"first": {"$min": "created_at"}}}),
        )
        .await;
        assert_eq!(out["groups"][0]["first"], first);

        // The typed form.
        let groups = SaleAggregateNode::run(
            &db,
            json!({"group_by": "user_id", "aggregates": {"n": {"$count": "*"}}}),
        )
        .await
        .unwrap();
        let counts: Vec<(Value, Value)> = groups
            .iter()
            .map(|g| (g["user_id"].clone(), g["n"].clone()))
            .collect();
        assert_eq!(
            counts,
            vec![(json!("u1"), json!(2)), (json!("u2"), json!(2)), (json!("u3"), json!(1))]
        );

        // Mistakes: a validation error naming the node, the parameter and
        // the field, and nothing runs.
        let cases = [
            (json!({"aggregates": {"x": {"$sum": "region"}}}), "aggregates", "Sale.region"),
            (json!({"aggregates": {"x": {"$median": "amount"}}}), "aggregates", "$median"),
            (json!({"aggregates": {"x": {"$sum": "nope"}}}), "aggregates", "nope"),
            (json!({"aggregates": {"x": {"$min": "id", "$max": "id"}}}), "aggregates", "one function"),
            (json!({"aggregates": {"x": {"$count": "*"}}, "having": {"y": 1}}), "having", "`y`"),
            (json!({"aggregates": {"x": {"$count": "*"}}, "having": {"x": "many"}}), "having", "an integer"),
            (json!({"group_by": "region", "order_by": "total"}), "order_by", "`total`"),
            (json!({"group_by": ["region", "region"]}), "group_by", "twice"),
            (json!({"group_by": "region", "aggregates": {"region": {"$count": "*"}}}), "aggregates", "`region`"),
            (json!({}), "aggregates", "give `aggregates`"),
            (json!({"aggregates": {"x": {"$count": "*"}}, "limit": -1}), "limit", "limit"),
            (json!({"aggregates": {"x": {"$count": "*"}}, "groups": 1}), "groups", "unknown parameter"),
        ];
        for (input, param, says) in cases {
            let e = err(&db, "SaleAggregateNode", input.clone()).await;
            assert_eq!(e.code(), "validation", "{input}: {e}");
            assert_eq!(e.field(), Some(param), "{input}: {e}");
            assert!(e.message().contains(says), "{input}: {e}");
            assert!(e.to_string().contains("SaleAggregateNode"), "{input}: {e}");
        }
    })
    .await;
}

/// With the query cache on, an Aggregate answer is cached like a List and a
/// write through any node is seen by the next Aggregate (read your writes).
#[tokio::test]
async fn aggregate_answers_are_cached_and_never_stale() {
    for (label, url) in support::backend_urls("aggregate_cache") {
        let db = DataFlow::builder(&url)
            .enable_caching(true)
            .build()
            .await
            .unwrap();
        let query = json!({"group_by": "user_id", "aggregates": {"total": {"$sum": "amount"}}});
        let sale =
            |user: &str, amount: i64| json!({"user_id": user, "amount": amount, "price": 1.0});
        ok(&db, "SaleCreateNode", sale("u1", 5)).await;
        let first = ok(&db, "SaleAggregateNode", query.clone()).await;
        assert_eq!(
            first["groups"],
            json!([{"user_id": "u1", "total": 5}]),
            "{label}"
        );
        let hits = db.cache_stats().hits;
        assert_eq!(
            ok(&db, "SaleAggregateNode", query.clone()).await,
            first,
            "{label}"
        );
        assert_eq!(
            db.cache_stats().hits,
            hits + 1,
            "{label}: the second call is a hit"
        );
        ok(
            &db,
            "SaleBulkCreateNode",
            json!({"data": [sale("u1", 1), sale("u2", 2)]}),
        )
        .await;
        assert_eq!(
            ok(&db, "SaleAggregateNode", query).await["groups"],
            json!([{"user_id": "u1", "total": 6}, {"user_id": "u2", "total": 2}]),
            "{label}"
        );
    }
}

/// `max_affected` on BulkUpdate, BulkDelete and BulkUpsert, plain (Sale) and
/// audited (Ticket): over the limit the call is `too_many_rows` (422) saying
/// how many rows it would have changed, and nothing changes (no rows, no
/// audit rows); at the limit it runs.
#[tokio::test]
async fn max_affected_refuses_bulk_writes_over_the_limit_and_changes_nothing() {
    on_each_backend("max_affected", |db| async move {
        let sales: Vec<Value> = (0..5)
            .map(|i| json!({"user_id": format!("u{i}"), "amount": i, "price": 1.0}))
            .collect();
        ok(&db, "SaleBulkCreateNode", json!({"data": sales})).await;
        for i in 0..5 {
            ok(&db, "TicketCreateNode", json!({"title": format!("t{i}")})).await;
        }
        let audit_rows = |db: DataFlow| async move {
            ok(&as_system(&db), "AuditListNode", json!({"limit": 1000})).await["count"].clone()
        };
        let audited_before = audit_rows(db.clone()).await;
        let over = [
            ("SaleBulkUpdateNode", json!({"filter": {"amount": {"$gte": 2}}, "fields": {"price": 9.0}, "max_affected": 2}), "update 3 Sale"),
            ("SaleBulkDeleteNode", json!({"filter": {"amount": {"$gte": 2}}, "max_affected": 2}), "delete 3 Sale"),
            ("TicketBulkUpdateNode", json!({"filter": {"title": {"$like": "t%"}}, "fields": {"title": "x"}, "confirmed": true, "max_affected": 4}), "update 5 Ticket"),
            ("TicketBulkDeleteNode", json!({"filter": {"id": {"$gt": 0}}, "confirmed": true, "max_affected": 0}), "delete 5 Ticket"),
            ("SaleBulkUpsertNode", json!({"data": [{"id": "s1", "user_id": "a", "amount": 1, "price": 1.0}, {"id": "s2", "user_id": "b", "amount": 1, "price": 1.0}], "max_affected": 1}), "insert or update 2 Sale"),
        ];
        for (node, input, says) in over {
            let e = err(&db, node, input.clone()).await;
            assert_eq!(e.code(), "too_many_rows", "{node}: {e}");
            assert_eq!(e.code().http_status(), 422);
            assert_eq!(e.field(), Some("max_affected"), "{e}");
            assert!(e.message().contains(says), "{node}: {e}");
            assert!(e.message().contains("nothing was changed"), "{e}");
        }
        // Nothing changed: every sale and ticket is as created, no audit row.
        let untouched = ok(&db, "SaleCountNode", json!({"filter": {"price": 1.0}})).await;
        assert_eq!(untouched["count"], 5);
        assert_eq!(count(&db, "Ticket").await, 5);
        assert_eq!(
            ok(&db, "TicketCountNode", json!({"filter": {"title": {"$like": "t%"}}})).await["count"],
            5
        );
        assert_eq!(audit_rows(db.clone()).await, audited_before);
        // At the limit the writes run.
        let out = ok(&db, "SaleBulkUpdateNode", json!({"filter": {"amount": {"$gte": 2}}, "fields": {"price": 9.0}, "max_affected": 3})).await;
        assert_eq!(out["updated"], 3);
        let out = ok(&db, "TicketBulkDeleteNode", json!({"filter": {"id": {"$gt": 0}}, "confirmed": true, "max_affected": 5})).await;
        assert_eq!(out["deleted"], 5);
        let e = err(&db, "SaleBulkDeleteNode", json!({"filter": {}, "confirmed": true, "max_affected": -1})).await;
        assert_eq!(e.code(), "validation", "{e}");
        assert_eq!(e.field(), Some("max_affected"), "{e}");
    })
    .await;
}

// ---- Query cache: admission, untracked tables, on by default (issue 13) ----

/// The cache is on by default, and a model whose reads are always after a
/// write (write-hot) stops being stored — its reads still see every write
/// — until reads repeat again, when it is cached again.
#[tokio::test]
async fn cache_is_on_by_default_and_skips_write_hot_models() {
    for (label, url) in support::backend_urls("cache_write_hot") {
        eprintln!("--- on {label}");
        let db = DataFlow::builder(&url).build().await.unwrap();
        assert!(db.cache_stats().available, "{label}: on by default");
        let u = ok(&db, "UserCreateNode", json!({"email": "hot@x.io"})).await;
        // Every read right after a write of its model: stored, never served.
        for i in 0..8 {
            let name = format!("n{i}");
            ok(
                &db,
                "UserUpdateNode",
                json!({"id": u["id"], "fields": {"full_name": name}}),
            )
            .await;
            let read = ok(&db, "UserReadNode", json!({"id": u["id"]})).await;
            assert_eq!(read["full_name"], name.as_str(), "{label}: read your write");
        }
        // Write-hot now: reads of new queries are not stored (one in 32 probes).
        let before = db.cache_stats();
        for i in 0..20 {
            let name = format!("m{i}");
            ok(
                &db,
                "UserUpdateNode",
                json!({"id": u["id"], "fields": {"full_name": name}}),
            )
            .await;
            let page = ok(&db, "UserListNode", json!({"filter": {"full_name": name}})).await;
            assert_eq!(page["count"], 1, "{label}: read your write {i}");
        }
        let after = db.cache_stats();
        assert!(
            after.entries <= before.entries + 1,
            "{label}: a write-hot model stores (almost) nothing: {before:?} -> {after:?}"
        );
        assert_eq!(
            after.misses - before.misses,
            20,
            "{label}: skipped reads count as misses"
        );
        assert_eq!(after.hits, before.hits, "{label}");
        // The writes stop: a probe stores, the next probe is served, and the
        // model is cached again.
        let by_id = json!({"id": u["id"]});
        let mut reads = 0;
        while db.cache_stats().hits == after.hits {
            let read = ok(&db, "UserReadNode", by_id.clone()).await;
            assert_eq!(read["full_name"], "m19", "{label}");
            reads += 1;
            assert!(reads <= 100, "{label}: never cached again");
        }
        let count = cached(&db, "UserCountNode", json!({})).await;
        assert_eq!(count["count"], 1, "{label}");
    }
}

/// PostgreSQL: a model whose table lacks the change trigger (booted with
/// `skip_migration` on a database migrated without the cache) is never
/// served from the cache — another connection's write would go unseen —
/// and is cached once its trigger is there.
#[tokio::test]
async fn cache_skips_tables_without_the_change_trigger() {
    use diesel::connection::SimpleConnection as _;
    use diesel::Connection as _;
    let Some(url) = postgres::fresh_database("cache_untracked") else {
        return;
    };
    let plain = DataFlow::builder(&url)
        .enable_caching(false)
        .build()
        .await
        .unwrap();
    ok(&plain, "UserCreateNode", json!({"email": "u@x.io"})).await;
    let db = DataFlow::builder(&url)
        .skip_migration(true)
        .build()
        .await
        .unwrap();
    assert!(db.cache_stats().available);
    let base = db.cache_stats();
    for _ in 0..3 {
        assert_eq!(ok(&db, "UserCountNode", json!({})).await["count"], 1);
    }
    assert_eq!(db.cache_stats().hits, base.hits, "no trigger: never served");
    let mut raw = diesel::PgConnection::establish(&url).unwrap();
    raw.batch_execute("INSERT INTO users (id, email, active, created_at, updated_at) VALUES ('r1', 'r1@x.io', true, now(), now())")
        .unwrap();
    assert_eq!(
        ok(&db, "UserCountNode", json!({})).await["count"],
        2,
        "a raw write is seen at once"
    );
    // The trigger comes with this instance's migration (the cache is on).
    db.migrations()
        .apply(dataflow::migrate::ApplyRequest::new())
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let hits = db.cache_stats().hits;
        ok(&db, "UserCountNode", json!({})).await;
        ok(&db, "UserCountNode", json!({})).await;
        if db.cache_stats().hits > hits {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "cached once the trigger is there"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    raw.batch_execute("DELETE FROM users WHERE id = 'r1'")
        .unwrap();
    let started = Instant::now();
    while ok(&db, "UserCountNode", json!({})).await["count"] != 1 {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the raw delete is notified"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
