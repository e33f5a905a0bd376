//! Quickstart on the embedded default: three models, every node type.
//!
//! ```sh
//! cargo run --example quickstart                 # sqlite://quickstart.db
//! cargo run --example quickstart -- postgres://user:pass@127.0.0.1/app
//! ```

use chrono::{DateTime, Duration, Utc};
use dataflow::DataFlow;
use serde_json::{json, Value};

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
    #[field(references = "User", on_delete = "cascade")]
    pub user_id: String,
    pub title: Option<String>,
}

fn show(label: &str, v: &Value) {
    println!("{label:<12} {v}");
}

#[tokio::main]
async fn main() -> Result<(), dataflow::Error> {
    // dataflow's spans and events (slow queries, `echo`) under RUST_LOG,
    // e.g. `RUST_LOG=dataflow=info`; nothing is printed without it.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "sqlite://quickstart.db".into());
    let db = DataFlow::builder(&url).build().await?;
    println!("booted {} models on {url}", db.models().len());

    // Start clean so the example can run again.
    db.execute(
        "UserBulkDeleteNode",
        json!({"filter": {}, "confirmed": true}),
    )
    .await?;

    let ann = db
        .execute(
            "UserCreateNode",
            json!({"email": "ann@example.io", "full_name": "Ann"}),
        )
        .await?;
    show("Create", &ann);
    let id = ann["id"].clone();
    show(
        "Read",
        &db.execute("UserReadNode", json!({"id": id})).await?,
    );
    show(
        "Update",
        &db.execute(
            "UserUpdateNode",
            json!({"id": id, "fields": {"full_name": "Ann Lee"}}),
        )
        .await?,
    );
    let bulk = db
        .execute(
            "UserBulkCreateNode",
            json!({"data": [
                {"email": "bob@example.io", "full_name": "Bob"},
                {"email": "cy@example.io", "active": false},
                {"email": "di@example.io", "full_name": "Di"},
            ]}),
        )
        .await?;
    show("BulkCreate", &bulk);
    let page = db
        .execute(
            "UserListNode",
            json!({"filter": {"active": true}, "order_by": ["-email"], "limit": 2}),
        )
        .await?;
    show("List", &page);
    show(
        "List next",
        &db.execute("UserListNode", json!({"filter": {"active": true}, "order_by": ["-email"], "limit": 2, "after": page["next"]}))
            .await?,
    );
    show(
        "Count",
        &db.execute(
            "UserCountNode",
            json!({"filter": {"email": {"$like": "%@example.io"}}}),
        )
        .await?,
    );
    show(
        "Upsert",
        &db.execute(
            "UserUpsertNode",
            json!({"where": {"email": "ann@example.io"}, "update": {"active": false}, "create": {"full_name": "Ann"}}),
        )
        .await?,
    );
    show(
        "BulkUpdate",
        &db.execute(
            "UserBulkUpdateNode",
            json!({"filter": {"active": false}, "fields": {"active": true}}),
        )
        .await?,
    );
    show(
        "BulkUpsert",
        &db.execute(
            "UserBulkUpsertNode",
            json!({"conflict_on": "email", "data": [
                {"email": "bob@example.io", "full_name": "Robert"},
                {"email": "eve@example.io", "full_name": "Eve"},
            ]}),
        )
        .await?,
    );

    let expires = (Utc::now() + Duration::days(1)).to_rfc3339();
    let session = db
        .execute(
            "SessionCreateNode",
            json!({"user_id": id, "token": "t-123", "expires_at": expires}),
        )
        .await?;
    show("Session", &session);
    let convo = db
        .execute(
            "ConversationCreateNode",
            json!({"session_id": session["id"], "user_id": id, "title": "hello"}),
        )
        .await?;
    show("Conversation", &convo);

    // A mistake gets a clear error with a stable code, and writes nothing.
    let err = db
        .execute("UserCreateNode", json!({"email": "ann@example.io"}))
        .await
        .expect_err("duplicate email");
    println!("{:<12} {} -> {}", "Error", err.code(), err);

    show(
        "Delete",
        &db.execute("UserDeleteNode", json!({"id": id})).await?,
    );
    show(
        "BulkDelete",
        &db.execute(
            "UserBulkDeleteNode",
            json!({"filter": {"email": {"$in": ["bob@example.io", "eve@example.io"]}}}),
        )
        .await?,
    );
    show(
        "Count",
        &db.execute("ConversationCountNode", json!({})).await?,
    );
    Ok(())
}
