//! Workflows end to end: building, templating, connections, the concurrent
//! and transactional runtime, custom nodes, on SQLite and PostgreSQL.

mod support;

use chrono::{DateTime, Utc};
use dataflow::{DataFlow, Node, NodeContext, NodeFuture, Workflow, WorkflowBuilder};
use serde_json::{json, Value};
use std::future::Future;
use std::time::{Duration, Instant};
use support::sqlite_url;

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
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Writes through the handle it is given: not allowed inside a transactional run.
pub struct Enroll;

#[dataflow::node]
impl Node for Enroll {
    fn name(&self) -> &'static str {
        "EnrollNode"
    }
    fn input_schema(&self) -> Value {
        json!({"type": "object", "properties": {"email": {"type": "string"}}, "required": ["email"]})
    }
    fn run<'a>(&'a self, ctx: &'a NodeContext, input: Value) -> NodeFuture<'a> {
        Box::pin(async move {
            ctx.db
                .execute("UserCreateNode", json!({"email": input["email"]}))
                .await
        })
    }
}

pub struct Greet;

#[dataflow::node]
impl Node for Greet {
    fn name(&self) -> &'static str {
        "GreetNode"
    }
    fn input_schema(&self) -> Value {
        json!({"type": "object", "properties": {"name": {"type": "string"}, "punct": {"type": "string"}}, "required": ["name"], "additionalProperties": false})
    }
    fn run<'a>(&'a self, ctx: &'a NodeContext, input: Value) -> NodeFuture<'a> {
        Box::pin(async move {
            let punct = input["punct"].as_str().unwrap_or("!");
            Ok(
                json!({"greeting": format!("hello {}{punct}", input["name"].as_str().unwrap_or("?")), "node": ctx.node_id}),
            )
        })
    }
}

/// Answers with the context it runs in, seen two ways.
pub struct WhoAmI;

#[dataflow::node]
impl Node for WhoAmI {
    fn name(&self) -> &'static str {
        "WhoAmINode"
    }
    fn input_schema(&self) -> Value {
        json!({"type": "object"})
    }
    fn run<'a>(&'a self, ctx: &'a NodeContext, _input: Value) -> NodeFuture<'a> {
        Box::pin(async move {
            assert_eq!(ctx.context(), ctx.db.context());
            Ok(serde_json::to_value(ctx.context()).unwrap())
        })
    }
}

pub struct Sleep;

#[dataflow::node]
impl Node for Sleep {
    fn name(&self) -> &'static str {
        "SleepNode"
    }
    fn input_schema(&self) -> Value {
        json!({"type": "object", "properties": {"ms": {"type": "integer"}}, "required": ["ms"]})
    }
    fn run<'a>(&'a self, _ctx: &'a NodeContext, input: Value) -> NodeFuture<'a> {
        Box::pin(async move {
            let ms = input["ms"].as_u64().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(json!({"slept": ms}))
        })
    }
}

pub struct Boom;

#[dataflow::node]
impl Node for Boom {
    fn name(&self) -> &'static str {
        "BoomNode"
    }
    fn input_schema(&self) -> Value {
        json!({"type": "object"})
    }
    fn run<'a>(&'a self, _ctx: &'a NodeContext, _input: Value) -> NodeFuture<'a> {
        Box::pin(async move { panic!("boom went the node") })
    }
}

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
            .unwrap_or_else(|e| panic!("boot on {label}: {e}"));
        body(db).await;
    }
}

async fn sqlite_db(name: &str) -> DataFlow {
    DataFlow::builder(sqlite_url(name)).build().await.unwrap()
}

fn signup(db: &DataFlow) -> Workflow {
    let mut wf = WorkflowBuilder::new();
    wf.add_node(
        "UserCreateNode",
        "create",
        json!({"email": "{{email}}", "full_name": "{{full_name}}"}),
    );
    wf.add_node(
        "SessionCreateNode",
        "session",
        json!({"token": "{{token}}", "created_at": "{{now}}", "expires_at": "{{expires}}"}),
    );
    wf.add_connection("create", "id", "session", "user_id");
    wf.build(db).unwrap()
}

fn signup_inputs(email: &str) -> Value {
    json!({"email": email, "full_name": "Ann", "token": format!("t-{email}"), "now": "2026-01-01T00:00:00Z", "expires": "2026-01-02T00:00:00Z"})
}

async fn user_count(db: &DataFlow) -> i64 {
    db.execute("UserCountNode", json!({})).await.unwrap()["count"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn connections_feed_outputs_into_inputs() {
    on_each_backend("connections", |db| async move {
        let workflow = signup(&db);
        let run = db
            .runtime()
            .execute(&workflow, signup_inputs("a@x.io"))
            .await
            .unwrap();
        assert_eq!(
            run.results["session"]["user_id"],
            run.results["create"]["id"]
        );
        assert_eq!(run.results["create"]["full_name"], "Ann");
        assert_eq!(
            run.results["session"]["expires_at"],
            "2026-01-02T00:00:00.000000Z"
        );
        assert!(uuid::Uuid::parse_str(&run.run_id).is_ok());
        assert_eq!(
            run.timings.keys().collect::<Vec<_>>(),
            ["create", "session"]
        );
        let other = db
            .runtime()
            .execute(&workflow, signup_inputs("b@x.io"))
            .await
            .unwrap();
        assert_ne!(other.run_id, run.run_id);

        // Dotted paths into arrays.
        let mut wf = WorkflowBuilder::new();
        wf.add_node(
            "UserListNode",
            "list",
            json!({"order_by": "email", "limit": 1}),
        )
        .add_node("GreetNode", "greet", json!({}))
        .add_connection("list", "records.0.email", "greet", "name");
        let run = db
            .runtime()
            .execute(&wf.build(&db).unwrap(), json!({}))
            .await
            .unwrap();
        assert_eq!(run.results["greet"]["greeting"], "hello a@x.io!");
    })
    .await;
}

#[tokio::test]
async fn templates_keep_types_and_leave_other_text_alone() {
    let db = sqlite_db("templates").await;
    let mut wf = WorkflowBuilder::new();
    wf.add_node(
        "UserCreateNode",
        "create",
        json!({"email": "${email}", "active": "{{active}}", "full_name": "Dr. {{name}} ($1)"}),
    );
    let workflow = wf.build(&db).unwrap();
    let run = db
        .runtime()
        .execute(
            &workflow,
            json!({"email": "t@x.io", "active": false, "name": "Who"}),
        )
        .await
        .unwrap();
    assert_eq!(
        run.results["create"]["active"], false,
        "a whole-string template keeps the boolean"
    );
    assert_eq!(run.results["create"]["full_name"], "Dr. Who ($1)");

    // An optional parameter whose input is missing is omitted (default applies).
    let run = db
        .runtime()
        .execute(&workflow, json!({"email": "u@x.io", "name": "X"}))
        .await
        .unwrap();
    assert_eq!(run.results["create"]["active"], true);

    let e = db
        .runtime()
        .execute(&workflow, json!({"email": "v@x.io"}))
        .await
        .unwrap_err();
    assert_eq!((e.code().as_str(), e.field()), ("validation", Some("name")));
    assert!(
        e.message()
            .contains("missing required workflow input `name`"),
        "{e}"
    );
    assert_eq!(user_count(&db).await, 2);
}

#[tokio::test]
async fn input_schema_is_derived_from_templates_and_node_schemas() {
    let db = sqlite_db("input_schema").await;
    let workflow = signup(&db);
    let s = workflow.input_schema();
    assert_eq!(s["type"], "object");
    assert_eq!(s["additionalProperties"], false);
    assert_eq!(s["properties"]["email"]["type"], "string");
    assert_eq!(s["properties"]["full_name"]["anyOf"][1]["type"], "null");
    assert_eq!(s["properties"]["now"]["format"], "date-time");
    assert_eq!(
        s["required"],
        json!(["email", "expires", "now", "token"]),
        "full_name is optional"
    );

    let mut wf = WorkflowBuilder::new();
    wf.add_node(
        "UserListNode",
        "list",
        json!({"filter": {"email": "{{email}}", "active": "{{active}}"}, "limit": "{{limit}}"}),
    );
    let w = wf.build(&db).unwrap();
    let s = w.input_schema();
    assert_eq!(s["properties"]["email"]["type"], "string");
    assert_eq!(s["properties"]["active"]["type"], "boolean");
    assert_eq!(s["properties"]["limit"]["type"], "integer");
    assert_eq!(s["required"], json!(["active", "email"]));

    // Wrong types and unknown inputs are refused before anything runs.
    let e = db
        .runtime()
        .execute(
            &workflow,
            json!({"email": 5, "token": "t", "now": "x", "expires": "y"}),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (e.code().as_str(), e.field()),
        ("validation", Some("email"))
    );
    assert!(
        e.message().contains("expected string, got an integer"),
        "{e}"
    );
    let e = db
        .runtime()
        .execute(&workflow, json!({"emial": "a@x.io"}))
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "validation");
    assert!(e.message().contains("did you mean `email`"), "{e}");
    let e = db
        .runtime()
        .execute(&workflow, json!([1]))
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "validation");
    assert_eq!(user_count(&db).await, 0);
}

/// The input schema says what a run needs, exactly: a Read by `{{id}}`
/// requires `id` (the node takes `id` or `filter`); with both templated the
/// schema needs one of them; integral numbers (`3.0`) are integers, as
/// JSON Schema counts them, in the schema check and in the node alike.
#[tokio::test]
async fn input_schema_requires_what_the_run_needs() {
    let db = sqlite_db("input_schema_needs").await;
    let mut wf = WorkflowBuilder::new();
    wf.add_node("UserReadNode", "user", json!({"id": "{{id}}"}));
    let by_id = wf.build(&db).unwrap();
    assert_eq!(by_id.input_schema()["required"], json!(["id"]));
    let e = db.runtime().execute(&by_id, json!({})).await.unwrap_err();
    assert_eq!((e.code().as_str(), e.field()), ("validation", Some("id")));
    assert!(
        e.message().contains("missing required workflow input `id`"),
        "{e}"
    );
    assert!(by_id.check_inputs(&json!({})).is_err());
    assert!(by_id.check_inputs(&json!({"id": "x"})).is_ok());

    let mut wf = WorkflowBuilder::new();
    wf.add_node(
        "UserReadNode",
        "user",
        json!({"id": "{{id}}", "filter": "{{where}}"}),
    );
    let either = wf.build(&db).unwrap();
    let s = either.input_schema();
    assert_eq!(s["required"], json!([]));
    assert_eq!(
        s["anyOf"],
        json!([{"required": ["id"]}, {"required": ["where"]}])
    );
    let e = db.runtime().execute(&either, json!({})).await.unwrap_err();
    assert_eq!(e.code().as_str(), "validation");
    assert!(
        e.message().contains("needs the input `id` or `where`"),
        "{e}"
    );
    assert!(dataflow::json_schema::check(s, &json!({})).is_err());
    assert!(dataflow::json_schema::check(s, &json!({"where": {}})).is_ok());

    // A literal filter, or a connection, supplies what the node needs.
    let mut wf = WorkflowBuilder::new();
    wf.add_node(
        "UserReadNode",
        "user",
        json!({"id": "{{id}}", "filter": {"email": "a@x.io"}}),
    );
    assert_eq!(wf.build(&db).unwrap().input_schema()["required"], json!([]));
    // Nothing can supply it: a build error naming both.
    let mut wf = WorkflowBuilder::new();
    wf.add_node("UserReadNode", "user", json!({}));
    let e = wf.build(&db).unwrap_err();
    assert_eq!(e.code().as_str(), "validation");
    assert!(e.message().contains("needs `id` or `filter`"), "{e}");

    // 2.0 is an integer (JSON Schema's rule) in the workflow and in the node.
    ok_create(&db, "a@x.io").await;
    let mut wf = WorkflowBuilder::new();
    wf.add_node("UserListNode", "users", json!({"limit": "{{limit}}"}));
    let list = wf.build(&db).unwrap();
    let run = db
        .runtime()
        .execute(&list, json!({"limit": 2.0}))
        .await
        .unwrap();
    assert_eq!(
        run.results["users"]["records"].as_array().map(Vec::len),
        Some(1)
    );
    let e = db
        .runtime()
        .execute(&list, json!({"limit": 2.5}))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code().as_str(), e.field()),
        ("validation", Some("limit"))
    );
}

async fn ok_create(db: &DataFlow, email: &str) {
    db.execute("UserCreateNode", json!({"email": email}))
        .await
        .unwrap();
}

#[tokio::test]
async fn build_refuses_what_cannot_run() {
    let db = sqlite_db("build_errors").await;
    let build = |f: &dyn Fn(&mut WorkflowBuilder)| {
        let mut wf = WorkflowBuilder::new();
        f(&mut wf);
        wf.build(&db).unwrap_err()
    };
    let e = build(&|wf| {
        wf.add_node("UserCreatNode", "create", json!({"email": "x"}));
    });
    assert_eq!(
        (e.code().as_str(), e.node()),
        ("unknown_node", Some("create"))
    );
    assert!(e.message().contains("did you mean `UserCreateNode`"), "{e}");

    let e = build(&|wf| {
        wf.add_node("GreetNode", "a", json!({"name": "x"}))
            .add_node("GreetNode", "a", json!({"name": "y"}));
    });
    assert_eq!((e.code().as_str(), e.node()), ("validation", Some("a")));
    assert!(e.message().contains("two nodes have the id `a`"), "{e}");

    let e = build(&|wf| {
        wf.add_node("GreetNode", "a", json!({"name": "x"}))
            .add_connection("a", "greeting", "b", "name");
    });
    assert_eq!(e.node(), Some("b"));
    assert!(e.message().contains("not a node of this workflow"), "{e}");

    let e = build(&|wf| {
        wf.add_node("GreetNode", "a", json!({"name": "x"}))
            .add_node("GreetNode", "b", json!({}))
            .add_connection("a", "greeting", "b", "nmae");
    });
    assert_eq!((e.code().as_str(), e.node()), ("validation", Some("b")));
    assert!(
        e.message()
            .contains("has no input `nmae` (did you mean `name`?)"),
        "{e}"
    );

    let e = build(&|wf| {
        wf.add_node("GreetNode", "a", json!({}))
            .add_node("GreetNode", "b", json!({}))
            .add_connection("a", "greeting", "b", "name")
            .add_connection("b", "greeting", "a", "name");
    });
    assert!(e.message().contains("cycle"), "{e}");

    let e = build(&|wf| {
        wf.add_node(
            "SessionCreateNode",
            "s",
            json!({"token": "t", "created_at": "{{now}}", "expires_at": "{{now}}"}),
        );
    });
    assert_eq!(e.node(), Some("s"));
    assert!(e.message().contains("needs `user_id`"), "{e}");

    let e = build(&|wf| {
        wf.add_node("UserCreateNode", "c", json!({"email": "{{mail}}"}))
            .declare_input("email", json!({"type": "string"}));
    });
    assert_eq!(e.node(), Some("c"));
    assert!(
        e.message()
            .contains("declares no input `mail` (did you mean `email`?)"),
        "{e}"
    );

    let e = build(&|wf| {
        wf.add_node(
            "UserCreateNode",
            "c",
            json!({"email": "x", "nickname": "y"}),
        );
    });
    assert!(e.message().contains("has no input `nickname`"), "{e}");
    let e = build(&|wf| {
        wf.add_node("UserCreateNode", "c", json!(["not an object"]));
    });
    assert_eq!(e.code().as_str(), "validation");
    let e = build(&|_| {});
    assert_eq!(e.code().as_str(), "validation");
}

#[tokio::test]
async fn a_failed_node_stops_its_dependants_and_reports_completed_nodes() {
    on_each_backend("failure", |db| async move {
        db.execute("UserCreateNode", json!({"email": "taken@x.io"}))
            .await
            .unwrap();
        let mut wf = WorkflowBuilder::new();
        wf.add_node("GreetNode", "hello", json!({"name": "{{name}}"}))
            .add_node("UserCreateNode", "create", json!({"email": "{{email}}"}))
            .add_node("GreetNode", "after", json!({}))
            .add_connection("create", "email", "after", "name");
        let workflow = wf.build(&db).unwrap();
        let e = db
            .runtime()
            .execute(&workflow, json!({"name": "Ann", "email": "taken@x.io"}))
            .await
            .unwrap_err();
        assert_eq!(e.code().as_str(), "unique_violation");
        assert_eq!(e.node(), Some("create"));
        assert_eq!(e.field(), Some("email"));
        assert!(
            e.message()
                .contains("node `create` (UserCreateNode) failed"),
            "{e}"
        );
        let done = e.completed();
        assert_eq!(done["hello"]["greeting"], "hello Ann!");
        assert!(
            !done.contains_key("after"),
            "dependants of a failure do not run"
        );
        assert_eq!(user_count(&db).await, 1);
    })
    .await;
}

/// A transactional run holds SQLite's write lock for its whole length. On
/// SQLite it is one job of the writer thread, so single-row creates sent
/// meanwhile queue behind it instead of sleeping in SQLite's busy handler on
/// a tokio worker: every create succeeds, and the one worker keeps running
/// other tasks (a ticker's longest gap stays far below the run's length).
/// Before transactions went through the writer, a create ran on the worker,
/// slept in the busy handler, and starved the run's own timer: it hung.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_long_transactional_run_blocks_no_tokio_worker() {
    const HOLD_MS: u64 = 600;
    let db = sqlite_db("long-transaction").await;
    let mut wf = WorkflowBuilder::new();
    wf.add_node("UserCreateNode", "first", json!({"email": "tx@x.io"}))
        .add_node("SleepNode", "hold", json!({"ms": HOLD_MS}))
        .add_connection("first", "email", "hold", "after")
        .transactional(true);
    let workflow = wf.build(&db).unwrap();
    // Idle pooled connections, so that a write could run on the calling task.
    let warm: Vec<_> = (0..4)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move { db.execute("UserListNode", json!({})).await })
        })
        .collect();
    for w in warm {
        w.await.unwrap().unwrap();
    }

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut last = Instant::now();
            let mut longest = Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                longest = longest.max(last.elapsed());
                last = Instant::now();
            }
            longest
        }
    });
    let run = tokio::spawn({
        let (db, workflow) = (db.clone(), workflow.clone());
        async move { db.runtime().execute(&workflow, json!({})).await }
    });
    // The run has created its user and now holds the write lock.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let creates: Vec<_> = (0..16)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                let r = db
                    .execute("UserCreateNode", json!({"email": format!("c{i}@x.io")}))
                    .await;
                (r, Instant::now())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for c in creates {
        let (r, done) = c.await.unwrap();
        r.unwrap();
        slowest = slowest.max(done - started);
    }
    let run = run.await.unwrap().unwrap();
    assert_eq!(run.results["hold"]["slept"], HOLD_MS);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let longest_gap = ticker.await.unwrap();
    assert!(
        longest_gap < Duration::from_millis(HOLD_MS / 3),
        "a tokio worker was blocked for {longest_gap:?} while the transaction held the lock"
    );
    assert!(
        slowest < Duration::from_millis(HOLD_MS * 4),
        "the creates waited {slowest:?}"
    );
    assert_eq!(user_count(&db).await, 17);
}

/// A hand-written node's write through the handle would escape the run's
/// transaction (and on SQLite wait for it forever): refused, at once, the
/// same on both backends; outside a transactional run it works.
#[tokio::test]
async fn hand_written_nodes_cannot_write_around_a_transactional_run() {
    on_each_backend("enroll", |db| async move {
        let mut wf = WorkflowBuilder::new();
        wf.add_node("UserCreateNode", "first", json!({"email": "a@x.io"}))
            .add_node("EnrollNode", "enroll", json!({"email": "b@x.io"}))
            .add_connection("first", "email", "enroll", "after")
            .transactional(true);
        let workflow = wf.build(&db).unwrap();
        let started = Instant::now();
        let e = tokio::time::timeout(
            Duration::from_secs(20),
            db.runtime().execute(&workflow, json!({})),
        )
        .await
        .expect("the run answers instead of waiting for itself")
        .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            (e.code().as_str(), e.node()),
            ("not_allowed", Some("enroll"))
        );
        assert!(e.message().contains("add the write as a model node"), "{e}");
        assert_eq!(user_count(&db).await, 0, "the run rolled back");

        let mut plain = WorkflowBuilder::new();
        plain.add_node("EnrollNode", "enroll", json!({"email": "c@x.io"}));
        let plain = plain.build(&db).unwrap();
        let run = db.runtime().execute(&plain, json!({})).await.unwrap();
        assert_eq!(run.results["enroll"]["email"], "c@x.io");
        assert_eq!(user_count(&db).await, 1);
    })
    .await;
}

#[tokio::test]
async fn transactional_runs_commit_or_roll_back_together() {
    on_each_backend("transactional", |db| async move {
        let mut wf = WorkflowBuilder::new();
        wf.add_node("UserCreateNode", "first", json!({"email": "{{a}}"}))
            .add_node("UserCreateNode", "second", json!({"email": "{{b}}"}))
            .add_node(
                "UserUpdateNode",
                "rename",
                json!({"fields": {"full_name": "renamed"}}),
            )
            .add_connection("first", "id", "second", "full_name")
            .add_connection("first", "id", "rename", "id")
            .transactional(true);
        let workflow = wf.build(&db).unwrap();
        let run = db
            .runtime()
            .execute(&workflow, json!({"a": "1@x.io", "b": "2@x.io"}))
            .await
            .unwrap();
        assert_eq!(
            run.results["second"]["full_name"],
            run.results["first"]["id"]
        );
        assert_eq!(run.results["rename"]["full_name"], "renamed");
        assert_eq!(user_count(&db).await, 2);

        // The second create fails: the first is rolled back.
        let e = db
            .runtime()
            .execute(&workflow, json!({"a": "3@x.io", "b": "3@x.io"}))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code().as_str(), e.node()),
            ("unique_violation", Some("second"))
        );
        assert!(e.completed().contains_key("first"));
        assert_eq!(
            user_count(&db).await,
            2,
            "nothing of the failed run is committed"
        );

        // Without the transaction, the first create stays.
        let mut plain: Value = workflow.to_json();
        plain.as_object_mut().unwrap().remove("transactional");
        let plain = Workflow::from_json(&db, plain).unwrap();
        db.runtime()
            .execute(&plain, json!({"a": "4@x.io", "b": "4@x.io"}))
            .await
            .unwrap_err();
        assert_eq!(user_count(&db).await, 3);
    })
    .await;
}

#[tokio::test]
async fn independent_nodes_run_concurrently() {
    let db = sqlite_db("concurrent").await;
    let mut wf = WorkflowBuilder::new();
    for i in 0..4 {
        wf.add_node("SleepNode", format!("s{i}"), json!({"ms": 300}));
    }
    let workflow = wf.build(&db).unwrap();
    let started = Instant::now();
    let run = db.runtime().execute(&workflow, json!({})).await.unwrap();
    assert_eq!(run.results.len(), 4);
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "four 300 ms nodes took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_panicking_node_is_that_nodes_failure() {
    on_each_backend("panic", |db| async move {
        let mut wf = WorkflowBuilder::new();
        wf.add_node("BoomNode", "boom", json!({})).add_node(
            "GreetNode",
            "ok",
            json!({"name": "x"}),
        );
        let workflow = wf.build(&db).unwrap();
        let e = db
            .runtime()
            .execute(&workflow, json!({}))
            .await
            .unwrap_err();
        assert_eq!((e.code().as_str(), e.node()), ("internal", Some("boom")));
        assert!(e.message().contains("boom went the node"), "{e}");
        // The runtime keeps serving.
        let mut wf = WorkflowBuilder::new();
        wf.add_node("GreetNode", "ok", json!({"name": "again"}));
        let run = db
            .runtime()
            .execute(&wf.build(&db).unwrap(), json!({}))
            .await
            .unwrap();
        assert_eq!(run.results["ok"]["greeting"], "hello again!");

        let mut wf = WorkflowBuilder::new();
        wf.add_node("UserCreateNode", "c", json!({"email": "p@x.io"}))
            .add_node("BoomNode", "boom", json!({}))
            .transactional(true);
        wf.add_connection("c", "id", "boom", "x");
        let e = db
            .runtime()
            .execute(&wf.build(&db).unwrap(), json!({}))
            .await
            .unwrap_err();
        assert_eq!((e.code().as_str(), e.node()), ("internal", Some("boom")));
        assert_eq!(
            user_count(&db).await,
            0,
            "the transactional run rolled back"
        );
    })
    .await;
}

#[tokio::test]
async fn runs_over_their_timeout_fail_with_timeout() {
    let db = sqlite_db("timeout").await;
    let mut wf = WorkflowBuilder::new();
    wf.add_node("GreetNode", "fast", json!({"name": "x"}))
        .add_node("SleepNode", "slow", json!({"ms": 5_000}))
        .timeout(Duration::from_millis(200));
    let started = Instant::now();
    let e = db
        .runtime()
        .execute(&wf.build(&db).unwrap(), json!({}))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!((e.code().as_str(), e.node()), ("timeout", Some("slow")));
    assert!(e.completed().contains_key("fast"));
}

#[tokio::test]
async fn switch_routes_and_merge_joins() {
    let db = sqlite_db("switch").await;
    let mut wf = WorkflowBuilder::new();
    wf.add_node(
        "SwitchNode",
        "check",
        json!({"value": "{{name}}", "$eq": "admin"}),
    )
    .add_node("GreetNode", "admin", json!({"punct": "!!!"}))
    .add_node("GreetNode", "user", json!({"punct": "."}))
    .add_node("MergeNode", "join", json!({}))
    .add_connection("check", "true_output", "admin", "name")
    .add_connection("check", "false_output", "user", "name")
    .add_connection("admin", "greeting", "join", "a")
    .add_connection("user", "greeting", "join", "b");
    let workflow = wf.build(&db).unwrap();
    let run = db
        .runtime()
        .execute(&workflow, json!({"name": "admin"}))
        .await
        .unwrap();
    assert_eq!(
        run.results["join"]["merged"],
        json!({"a": "hello admin!!!"})
    );
    assert_eq!(run.skipped, ["user"]);
    let run = db
        .runtime()
        .execute(&workflow, json!({"name": "bob"}))
        .await
        .unwrap();
    assert_eq!(run.results["join"]["merged"], json!({"b": "hello bob."}));
    assert_eq!(run.skipped, ["admin"]);

    let e = db
        .execute("SwitchNode", json!({"value": 1, "$gt": "x"}))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code().as_str(), e.node()),
        ("validation", Some("SwitchNode"))
    );
    assert_eq!(
        db.execute("SwitchNode", json!({"value": 3, "$in": [1, 3]}))
            .await
            .unwrap()["branch"],
        true
    );
    assert_eq!(
        db.execute(
            "MergeNode",
            json!({"mode": "concat", "a": [1], "b": [2, 3]})
        )
        .await
        .unwrap()["merged"],
        json!([1, 2, 3])
    );
}

#[tokio::test]
async fn workflows_round_trip_through_json() {
    let db = sqlite_db("json").await;
    let workflow = signup(&db);
    let json = workflow.to_json();
    assert_eq!(json["version"], 1);
    assert_eq!(
        json["nodes"][0],
        json!({"id": "create", "type": "UserCreateNode", "params": {"email": "{{email}}", "full_name": "{{full_name}}"}})
    );
    assert_eq!(
        json["connections"][0],
        json!({"from": "create", "output": "id", "to": "session", "input": "user_id"})
    );
    let again = Workflow::from_json(&db, json.clone()).unwrap();
    assert_eq!(again.to_json(), json);
    assert_eq!(again.input_schema(), workflow.input_schema());
    let run = db
        .runtime()
        .execute(&again, signup_inputs("j@x.io"))
        .await
        .unwrap();
    assert_eq!(
        run.results["session"]["user_id"],
        run.results["create"]["id"]
    );

    let e = Workflow::from_json(&db, json!({"nodes": [], "bogus": 1})).unwrap_err();
    assert_eq!(e.code().as_str(), "validation");
    let e = Workflow::from_json(
        &db,
        json!({"version": 2, "nodes": [{"id": "a", "type": "GreetNode"}]}),
    )
    .unwrap_err();
    assert!(e.message().contains("version 2"), "{e}");
}

#[tokio::test]
async fn custom_nodes_run_alone_and_publish_their_schema() {
    let db = sqlite_db("custom").await;
    assert_eq!(
        db.execute("GreetNode", json!({"name": "Ann"}))
            .await
            .unwrap()["greeting"],
        "hello Ann!"
    );
    assert_eq!(
        db.node_schema("GreetNode").unwrap()["required"],
        json!(["name"])
    );
    assert!(db.node_types().contains(&"SleepNode".to_string()));
}

#[tokio::test]
async fn custom_node_input_is_checked_against_its_schema() {
    let db = sqlite_db("custom_input").await;
    let e = db.execute("GreetNode", json!({})).await.unwrap_err();
    assert_eq!(
        (e.code().as_str(), e.node()),
        ("validation", Some("GreetNode"))
    );
    assert!(
        e.message().contains("missing required property `name`"),
        "{e}"
    );
    let e = db
        .execute("GreetNode", json!({"name": 5}))
        .await
        .unwrap_err();
    assert!(e.message().contains("`name`: expected string"), "{e}");
    let e = db
        .execute("GreetNode", json!({"name": "a", "nmae": "b"}))
        .await
        .unwrap_err();
    assert!(e.message().contains("unknown property `nmae`"), "{e}");
}

/// `db.with_context(ctx)` is the same database with a context that every
/// node of a run sees (hand-written ones through `ctx.context()`), on the
/// concurrent and the transactional runtime, and that the run's events name.
#[tokio::test]
async fn the_context_reaches_every_node_and_event() {
    use dataflow::{Context, RunEvent};
    use std::sync::{Arc, Mutex};
    let db = sqlite_db("context").await;
    assert_eq!(db.context(), &Context::new());
    let ctx = Context::new()
        .actor("user:42")
        .tenant("acme")
        .roles(["editor", "viewer"])
        .request_id("req-1");
    let scoped = db.with_context(ctx.clone());
    assert_eq!(scoped.context(), &ctx);
    assert!(scoped.context().has_role("viewer") && !scoped.context().has_role("admin"));
    assert_eq!(
        db.context(),
        &Context::new(),
        "the original handle is unchanged"
    );
    let direct = scoped.execute("WhoAmINode", json!({})).await.unwrap();
    assert_eq!(
        direct,
        json!({"actor": "user:42", "tenant": "acme", "roles": ["editor", "viewer"], "request_id": "req-1", "channel": null, "system": false})
    );
    // Same database: a write through one handle is read through the other.
    scoped
        .execute("UserCreateNode", json!({"email": "ctx@x.io"}))
        .await
        .unwrap();
    assert_eq!(user_count(&db).await, 1);

    for transactional in [false, true] {
        let seen: Arc<Mutex<Vec<RunEvent>>> = Arc::default();
        let sink = seen.clone();
        let mut wf = WorkflowBuilder::new();
        wf.add_node("WhoAmINode", "who", json!({}))
            .add_node("UserCountNode", "count", json!({}))
            .transactional(transactional);
        let wf = wf.build(&db).unwrap();
        let run = scoped
            .runtime()
            .with_observer(Arc::new(move |e: &RunEvent| {
                sink.lock().unwrap().push(e.clone())
            }))
            .execute(&wf, json!({}))
            .await
            .unwrap();
        assert_eq!(run.results["who"], direct, "transactional: {transactional}");
        let events = seen.lock().unwrap().clone();
        assert_eq!(events.len(), 4, "{events:?}");
        for e in &events {
            let (actor, request) = match e {
                RunEvent::Started {
                    actor, request_id, ..
                }
                | RunEvent::NodeFinished {
                    actor, request_id, ..
                }
                | RunEvent::Finished {
                    actor, request_id, ..
                }
                | RunEvent::Failed {
                    actor, request_id, ..
                } => (actor, request_id),
            };
            assert_eq!(
                (actor.as_deref(), request.as_deref()),
                (Some("user:42"), Some("req-1")),
                "{e:?}"
            );
        }
    }
    let system = Context::system();
    assert!(system.system);
    assert_eq!(system.actor.as_deref(), Some("system"));
}

#[tokio::test]
async fn observers_see_every_run_event_in_order() {
    use dataflow::RunEvent;
    use std::sync::{Arc, Mutex};
    let db = sqlite_db("events").await;
    let seen: Arc<Mutex<Vec<RunEvent>>> = Arc::default();
    let sink = seen.clone();
    let rt = db.runtime().with_observer(Arc::new(move |e: &RunEvent| {
        sink.lock().unwrap().push(e.clone())
    }));
    let run = rt
        .execute(&signup(&db), signup_inputs("ev@x.io"))
        .await
        .unwrap();
    let events = seen.lock().unwrap().clone();
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(
        events[0],
        RunEvent::Started {
            run_id: run.run_id.clone(),
            actor: None,
            request_id: None,
        }
    );
    let nodes: Vec<&str> = events[1..3]
        .iter()
        .map(|e| match e {
            RunEvent::NodeFinished { node, ok: true, .. } => node.as_str(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(nodes, ["create", "session"]);
    assert!(matches!(&events[3], RunEvent::Finished { run_id, .. } if *run_id == run.run_id));

    seen.lock().unwrap().clear();
    rt.execute(&signup(&db), signup_inputs("ev@x.io"))
        .await
        .unwrap_err();
    let events = seen.lock().unwrap().clone();
    assert!(
        matches!(events.last(), Some(RunEvent::Failed { code, node: Some(n), .. }) if code == "unique_violation" && n == "create"),
        "{events:?}"
    );
    assert_eq!(
        serde_json::to_value(&events[0]).unwrap()["event"],
        "started"
    );
}

/// The twelfth node runs in a workflow like the others: a write, then an
/// Aggregate that sees it.
#[tokio::test]
async fn an_aggregate_node_runs_in_a_workflow() {
    on_each_backend("workflow_aggregate", |db| async move {
        let mut wf = WorkflowBuilder::new();
        wf.add_node("UserCreateNode", "create", json!({"email": "{{email}}"}));
        wf.add_node(
            "UserAggregateNode",
            "stats",
            json!({"group_by": "active", "aggregates": {"n": {"$count": "*"}, "named": {"$count": "full_name"}}}),
        );
        wf.add_connection("create", "id", "stats", "filter.id");
        let workflow = wf.build(&db).unwrap();
        // Not counted: the connection filters the Aggregate to the new user.
        db.execute("UserCreateNode", json!({"email": "other@x.io", "full_name": "O"}))
            .await
            .unwrap();
        let run = db
            .runtime()
            .execute(&workflow, json!({"email": "agg@x.io"}))
            .await
            .unwrap();
        assert_eq!(
            run.results["stats"],
            json!({"count": 1, "groups": [{"active": true, "n": 1, "named": 0}]})
        );
    })
    .await;
}
