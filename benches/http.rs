//! HTTP requests/s and latency of nexus against a hand-written axum handler
//! doing the same query on the same kind of pool, side by side in one run,
//! with `wrk` (Debian package `wrk`) as the bounded load generator.
//!
//! ```sh
//! cargo bench --bench http      # full: wrk -t2 -c32 -d10s --latency, each line
//! cargo bench --bench http -- durability   # only the durability lines
//! cargo test --bench http       # smoke: one request per endpoint, checks they agree
//! HTTP_BENCH=auth cargo bench --bench http   # only get_user: auth off, JWT, API key, rate limit,
//!                                            # in rounds (HTTP_BENCH_ROUNDS, default 5), medians
//! HTTP_BENCH=jwt cargo bench --bench http    # one line alone (off, jwt, key), e.g. under a profiler
//! HTTP_BENCH_SECONDS=3 cargo bench --bench http   # shorter wrk runs (default 10)
//! ```
//!
//! The durability lines: `create_user` with `enable_durability` off, on
//! without a key (journaled), on with a fresh `Idempotency-Key` per request,
//! and the replay of one stored key (SQLite only: this bench has no
//! PostgreSQL mode yet).

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use dataflow::{DataFlow, WorkflowBuilder};
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

#[dataflow::model]
pub struct HttpUser {
    pub id: String,
    #[field(unique)]
    pub email: String,
    pub full_name: Option<String>,
}

diesel::table! {
    http_users (id) {
        id -> Text,
        email -> Text,
        full_name -> Nullable<Text>,
        created_at -> Text,
        updated_at -> Text,
    }
}

#[derive(Queryable, Selectable, Insertable, serde::Serialize)]
#[diesel(table_name = http_users)]
struct Row {
    id: String,
    email: String,
    full_name: Option<String>,
    created_at: String,
    updated_at: String,
}

#[derive(Debug)]
struct Pragmas;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for Pragmas {
    fn on_acquire(&self, c: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        use diesel::connection::SimpleConnection;
        c.batch_execute(
            "PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -16384;",
        )
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

type RawPool = Pool<ConnectionManager<SqliteConnection>>;

static SEQ: AtomicU64 = AtomicU64::new(0);

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The hand-written baseline: the same two operations, typed diesel, JSON out.
fn raw_router(pool: RawPool) -> Router {
    // The same request as nexus gets: a POST with `{"inputs": {"id": ...}}`.
    async fn get_user(
        State(pool): State<RawPool>,
        Json(body): Json<Value>,
    ) -> Result<Json<Value>, (axum::http::StatusCode, String)> {
        let id = body["inputs"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        tokio::task::spawn_blocking(move || {
            let mut c = pool
                .get()
                .map_err(|e| (axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
            let r: Row = http_users::table
                .find(id)
                .select(Row::as_select())
                .get_result(&mut c)
                .map_err(|e| (axum::http::StatusCode::NOT_FOUND, e.to_string()))?;
            Ok(Json(json!({"outputs": {"user": r}})))
        })
        .await
        .unwrap()
    }
    async fn create_user(
        State(pool): State<RawPool>,
        Json(body): Json<Value>,
    ) -> Result<Json<Value>, (axum::http::StatusCode, String)> {
        tokio::task::spawn_blocking(move || {
            let mut c = pool
                .get()
                .map_err(|e| (axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
            let t = now();
            let row = Row {
                id: uuid::Uuid::now_v7().to_string(),
                email: body["inputs"]["email"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                full_name: None,
                created_at: t.clone(),
                updated_at: t,
            };
            let r: Row = diesel::insert_into(http_users::table)
                .values(&row)
                .returning(Row::as_returning())
                .get_result(&mut c)
                .map_err(|e| (axum::http::StatusCode::CONFLICT, e.to_string()))?;
            Ok(Json(json!({"outputs": {"create": r}})))
        })
        .await
        .unwrap()
    }
    Router::new()
        .route("/users/get", post(get_user))
        .route("/users", post(create_user))
        .with_state(pool)
}

/// [`serve`], handing each request the client's address as nexus' own
/// listener does (the failed sign-in limit keys on it).
async fn serve_with_peer(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });
    addr
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// wrk's Lua for a POST with a fresh email per request.
fn create_script(path: &str) -> String {
    format!(
        "counter = 0\nprefix = tostring({{}}):sub(8)\nrequest = function()\n  counter = counter + 1\n  local body = '{{\"inputs\": {{\"email\": \"' .. prefix .. '-' .. counter .. '@x.io\"}}}}'\n  return wrk.format('POST', '{path}', {{['Content-Type'] = 'application/json'}}, body)\nend\n"
    )
}

/// [`create_script`] with a fresh `Idempotency-Key` per request.
fn keyed_create_script(path: &str) -> String {
    format!(
        "counter = 0\nprefix = tostring({{}}):sub(8)\nrequest = function()\n  counter = counter + 1\n  local body = '{{\"inputs\": {{\"email\": \"k' .. prefix .. '-' .. counter .. '@x.io\"}}}}'\n  return wrk.format('POST', '{path}', {{['Content-Type'] = 'application/json', ['Idempotency-Key'] = 'k' .. prefix .. '-' .. counter}}, body)\nend\n"
    )
}

#[derive(Clone, Copy)]
struct WrkResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
}

/// Seconds each wrk run lasts: `HTTP_BENCH_SECONDS`, default 10.
fn seconds() -> u64 {
    std::env::var("HTTP_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|s| *s > 0)
        .unwrap_or(10)
}

fn wrk(url: &str, script: Option<&str>) -> WrkResult {
    wrk_for(url, script, seconds())
}

/// [`wrk`] for `seconds`.
fn wrk_for(url: &str, script: Option<&str>, seconds: u64) -> WrkResult {
    let dir = std::env::temp_dir();
    let mut cmd = Command::new("wrk");
    let duration = format!("-d{seconds}s");
    cmd.args(["-t2", "-c32", &duration, "--latency", url]);
    if let Some(s) = script {
        let path = dir.join(format!(
            "dataflow-wrk-{}.lua",
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, s).unwrap();
        cmd.arg("-s").arg(path);
    }
    let out = cmd.output().expect("wrk runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let num = |line_start: &str| -> Option<String> {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(line_start))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
    };
    let ms = |v: Option<String>| -> f64 {
        let v = v.unwrap_or_default();
        if let Some(x) = v.strip_suffix("ms") {
            x.parse().unwrap_or(f64::NAN)
        } else if let Some(x) = v.strip_suffix("us") {
            x.parse::<f64>().unwrap_or(f64::NAN) / 1e3
        } else if let Some(x) = v.strip_suffix('s') {
            x.parse::<f64>().unwrap_or(f64::NAN) * 1e3
        } else {
            f64::NAN
        }
    };
    WrkResult {
        rps: text
            .lines()
            .find(|l| l.starts_with("Requests/sec:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN),
        p50_ms: ms(num("50%")),
        p99_ms: ms(num("99%")),
        non_2xx: text
            .lines()
            .find(|l| l.contains("Non-2xx"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    }
}

/// The benchmarked application: `get_user` and `create_user` over one model.
async fn nexus_app(url: &str) -> (DataFlow, nexus::Nexus) {
    nexus_app_with(url, nexus::Nexus::builder()).await
}

/// The HS256 secret of the authenticated application.
const SECRET: &str = "a-bench-secret-of-at-least-thirty-two-bytes";
/// A per-caller limit no benchmark reaches (wrk sends ~200k requests a
/// minute): every request pays for the check, none is refused.
const UNREACHED_LIMIT: u32 = 1_000_000_000;

/// [`nexus_app`] with these options.
async fn nexus_app_with(url: &str, options: nexus::NexusBuilder) -> (DataFlow, nexus::Nexus) {
    // The query cache (on by default) is off: nexus is measured against a
    // hand-written handler that reads the database every time.
    let db = DataFlow::builder(url)
        .enable_caching(false)
        .build()
        .await
        .expect("boot");
    let mut app = options.build(db.clone()).unwrap();
    let mut get = WorkflowBuilder::new();
    get.add_node("HttpUserReadNode", "user", json!({"id": "{{id}}"}));
    app.register("get_user", get.build(&db).unwrap()).unwrap();
    let mut create = WorkflowBuilder::new();
    create.add_node(
        "HttpUserCreateNode",
        "create",
        json!({"email": "{{email}}"}),
    );
    app.register("create_user", create.build(&db).unwrap())
        .unwrap();
    (db, app)
}

/// Milliseconds from nothing to serving: boot on an existing database,
/// register, bind HTTP and MCP, until `GET /ready` answers 200 and the MCP
/// port accepts.
async fn boot_to_ready(url: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = std::time::Instant::now();
    let (_db, app) = nexus_app(url).await;
    let app = std::sync::Arc::new(app);
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http_addr, mcp_addr) = (http.local_addr().unwrap(), mcp.local_addr().unwrap());
    let servers = [
        tokio::spawn({
            let app = app.clone();
            async move { app.serve_http_on(http).await }
        }),
        tokio::spawn({
            let app = app.clone();
            async move { app.serve_mcp_on(mcp).await }
        }),
    ];
    let mut ready = String::new();
    let mut s = tokio::net::TcpStream::connect(http_addr).await.unwrap();
    s.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    s.read_to_string(&mut ready).await.unwrap();
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    tokio::net::TcpStream::connect(mcp_addr).await.unwrap();
    let ms = started.elapsed().as_secs_f64() * 1e3;
    for s in servers {
        s.abort();
    }
    ms
}

/// The durability lines: `create_user` off, on without a key, on with a
/// fresh key per request, and the replay of a stored key.
async fn durability(url: &str, full: bool) {
    let (_, off) = nexus_app(url).await;
    let (_, on) = nexus_app_with(url, nexus::Nexus::builder().enable_durability(true)).await;
    let (off_addr, on_addr) = (serve(off.router()).await, serve(on.router()).await);
    let path = "/workflows/create_user/execute";
    let replay_body = "{\"inputs\": {\"email\": \"replayed@x.io\"}}";
    // The stored response every replay answers; checked to be replayed.
    let check = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let send = || {
            let mut s = std::net::TcpStream::connect(on_addr).unwrap();
            write!(s, "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nIdempotency-Key: bench-replay\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{replay_body}", replay_body.len()).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let (first, again) = (send(), send());
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        assert!(
            again
                .to_ascii_lowercase()
                .contains("idempotent-replayed: true"),
            "{again}"
        );
    });
    check.await.unwrap();
    if !full {
        println!("http bench smoke: durability on answers and replays a stored key");
        return;
    }
    let replay_script = format!("wrk.method = 'POST'\nwrk.headers['Content-Type'] = 'application/json'\nwrk.headers['Idempotency-Key'] = 'bench-replay'\nwrk.body = '{replay_body}'\n");
    let lines = [
        (
            "durability off",
            wrk(
                &format!("http://{off_addr}{path}"),
                Some(&create_script(path)),
            ),
        ),
        (
            "on, no key (journaled)",
            wrk(
                &format!("http://{on_addr}{path}"),
                Some(&create_script(path)),
            ),
        ),
        (
            "on, a fresh key per request",
            wrk(
                &format!("http://{on_addr}{path}"),
                Some(&keyed_create_script(path)),
            ),
        ),
        (
            "on, replay of a stored key",
            wrk(&format!("http://{on_addr}{path}"), Some(&replay_script)),
        ),
    ];
    println!("\ncreate_user with durability, SQLite file, same run (wrk -t2 -c32 -d10s):\n");
    println!("| create_user | req/s | ratio to off | p50 / p99 ms |");
    println!("|---|---:|---:|---:|");
    let off_rps = lines[0].1.rps;
    for (what, r) in &lines {
        println!(
            "| {what} | {:.0} | {:.2} | {:.2} / {:.2} |",
            r.rps,
            r.rps / off_rps,
            r.p50_ms,
            r.p99_ms
        );
        if r.non_2xx > 0 {
            println!("  ({what}: non-2xx responses: {})", r.non_2xx);
        }
    }
    println!(
        "\nreplay / fresh key: {:.2} (target ≥ 2); on with key / off: {:.2} (target ≥ 0.7 on PostgreSQL)",
        lines[3].1.rps / lines[2].1.rps,
        lines[2].1.rps / off_rps
    );
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    if std::env::args().any(|a| a == "durability") {
        let path =
            std::env::temp_dir().join(format!("dataflow-bench-durable-{}.db", std::process::id()));
        durability(&format!("sqlite://{}", path.display()), full).await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        return;
    }
    let path = std::env::temp_dir().join(format!("dataflow-bench-http-{}.db", std::process::id()));
    let url = format!("sqlite://{}", path.display());
    let (db, app) = nexus_app(&url).await;
    let seed = db
        .execute("HttpUserCreateNode", json!({"email": "seed@x.io"}))
        .await
        .unwrap();
    let id = seed["id"].as_str().unwrap().to_string();
    let nexus_addr = serve(app.router()).await;
    // The same application with authentication on: a JWT and an API key.
    let (_, authed) = nexus_app_with(
        &url,
        nexus::Nexus::builder().auth(nexus::Auth::new().jwt_hs256(SECRET).api_keys(true)),
    )
    .await;
    let key = authed
        .create_api_key("bench", &["reader"], None, None)
        .await
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let exp = chrono::Utc::now().timestamp() + 3600;
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "bench", "exp": exp, "roles": ["reader"]}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    let authed_addr = serve_with_peer(authed.router()).await;
    // The same application with rate limiting on (served the same way: no
    // client address, so every request counts under one key).
    let (_, limited) =
        nexus_app_with(&url, nexus::Nexus::builder().rate_limit(UNREACHED_LIMIT)).await;
    let limited_addr = serve(limited.router()).await;

    let pool: RawPool = Pool::builder()
        .max_size(10)
        .test_on_check_out(false)
        .connection_customizer(Box::new(Pragmas))
        .build(ConnectionManager::new(path.display().to_string()))
        .unwrap();
    let raw_addr = serve(raw_router(pool)).await;

    // Both answer the same record before anything is measured.
    let nexus_get = format!("http://{nexus_addr}/workflows/get_user/execute");
    let check = tokio::task::spawn_blocking({
        let (id, raw_addr, nexus_addr) = (id.clone(), raw_addr, nexus_addr);
        let (jwt, key) = (jwt.clone(), key.clone());
        move || {
            let get_as = |addr: SocketAddr,
                          method: &str,
                          path: &str,
                          body: &str,
                          auth: &str|
             -> String {
                use std::io::{Read, Write};
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                write!(s, "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).unwrap();
                out
            };
            let get = |addr: SocketAddr, method: &str, path: &str, body: &str| -> String {
                get_as(addr, method, path, body, "")
            };
            let body = format!("{{\"inputs\": {{\"id\": \"{id}\"}}}}");
            for auth in [
                format!("Authorization: Bearer {jwt}\r\n"),
                format!("Authorization: Bearer {key}\r\n"),
            ] {
                let a = get_as(
                    authed_addr,
                    "POST",
                    "/workflows/get_user/execute",
                    &body,
                    &auth,
                );
                assert!(a.contains("seed@x.io"), "{a}");
            }
            let a = get(authed_addr, "POST", "/workflows/get_user/execute", &body);
            assert!(a.starts_with("HTTP/1.1 401"), "{a}");
            let a = get(
                nexus_addr,
                "POST",
                "/workflows/get_user/execute",
                &format!("{{\"inputs\": {{\"id\": \"{id}\"}}}}"),
            );
            let b = get(
                raw_addr,
                "POST",
                "/users/get",
                &format!("{{\"inputs\": {{\"id\": \"{id}\"}}}}"),
            );
            assert!(
                a.contains("seed@x.io") && b.contains("seed@x.io"),
                "{a}\n{b}"
            );
            let c = get(
                limited_addr,
                "POST",
                "/workflows/get_user/execute",
                &format!("{{\"inputs\": {{\"id\": \"{id}\"}}}}"),
            );
            assert!(
                c.contains("seed@x.io") && c.to_ascii_lowercase().contains("ratelimit: \"caller\""),
                "rate limited and answered: {c}"
            );
        }
    });
    check.await.unwrap();
    let boots: Vec<f64> = {
        let mut v = Vec::new();
        for _ in 0..if full { 21 } else { 1 } {
            v.push(boot_to_ready(&url).await);
        }
        v.sort_by(f64::total_cmp);
        v
    };
    println!(
        "nexus boot to ready (existing SQLite file, HTTP /ready 200 and MCP accepting, in process): median {:.1} ms over {} boots",
        boots[boots.len() / 2],
        boots.len()
    );
    if !full {
        println!("http bench smoke: nexus and the raw axum handler agree (run `cargo bench --bench http` for numbers)");
        durability(&url, false).await;
        return;
    }
    if Command::new("wrk").arg("--version").output().is_err() {
        println!("http bench: `wrk` is not installed (apt-get install wrk); nothing measured");
        return;
    }
    let get_body = format!("wrk.method = 'POST'\nwrk.headers['Content-Type'] = 'application/json'\nwrk.body = '{{\"inputs\": {{\"id\": \"{id}\"}}}}'\n");
    // `HTTP_BENCH=auth`: only the get_user lines of the auth table and the
    // rate limit (no raw handler, no create_user).
    let only = std::env::var("HTTP_BENCH").unwrap_or_default();
    let only_auth = only == "auth";
    let secs = seconds();
    let authed_get = format!("http://{authed_addr}/workflows/get_user/execute");
    let with_auth =
        |auth: &str| format!("{get_body}wrk.headers['Authorization'] = 'Bearer {auth}'\n");
    // `HTTP_BENCH=off|jwt|key`: that line alone (for a profiler).
    let alone = match only.as_str() {
        "off" => Some(("auth off", wrk(&nexus_get, Some(&get_body)))),
        "jwt" => Some(("JWT (HS256)", wrk(&authed_get, Some(&with_auth(&jwt))))),
        "key" => Some(("API key", wrk(&authed_get, Some(&with_auth(&key))))),
        _ => None,
    };
    if let Some((what, r)) = alone {
        println!(
            "| {what} | {:.0} req/s | p50 / p99 {:.2} / {:.2} ms | non-2xx {} |",
            r.rps, r.p50_ms, r.p99_ms, r.non_2xx
        );
        remove_db(&path);
        return;
    }
    // One second of the same load on every server first (not measured):
    // the first run after boot would otherwise pay the warm-up.
    for (url, script) in [
        (format!("http://{raw_addr}/users/get"), get_body.clone()),
        (
            format!("http://{limited_addr}/workflows/get_user/execute"),
            get_body.clone(),
        ),
        (nexus_get.clone(), get_body.clone()),
        (authed_get.clone(), with_auth(&jwt)),
        (authed_get.clone(), with_auth(&key)),
    ] {
        wrk_for(&url, Some(&script), 1);
    }
    if only_auth {
        auth_rounds(&[
            ("auth off", &nexus_get, &get_body),
            ("JWT (HS256)", &authed_get, &with_auth(&jwt)),
            (
                "API key (cached verification)",
                &authed_get,
                &with_auth(&key),
            ),
            (
                "rate limiting on",
                &format!("http://{limited_addr}/workflows/get_user/execute"),
                &get_body,
            ),
        ]);
        remove_db(&path);
        return;
    }
    let raw_get = wrk(&format!("http://{raw_addr}/users/get"), Some(&get_body));
    let limited_get = wrk(
        &format!("http://{limited_addr}/workflows/get_user/execute"),
        Some(&get_body),
    );
    let plain_get = wrk(&nexus_get, Some(&get_body));
    let rate_ratio = limited_get.rps / plain_get.rps;
    let auth_lines = [
        ("auth off", wrk(&nexus_get, Some(&get_body))),
        ("JWT (HS256)", wrk(&authed_get, Some(&with_auth(&jwt)))),
        (
            "API key (cached verification)",
            wrk(&authed_get, Some(&with_auth(&key))),
        ),
    ];
    {
        let lines = [
            ("get_user", plain_get, raw_get),
            ("get_user, rate_limit on", limited_get, raw_get),
            (
                "create_user",
                wrk(
                    &format!("http://{nexus_addr}/workflows/create_user/execute"),
                    Some(&create_script("/workflows/create_user/execute")),
                ),
                wrk(
                    &format!("http://{raw_addr}/users"),
                    Some(&create_script("/users")),
                ),
            ),
        ];
        println!("HTTP on loopback, SQLite file, wrk -t2 -c32 -d{secs}s --latency (load generator on the same 2 cores)");
        println!("command: cargo bench --bench http\n");
        println!("| workflow | nexus req/s | raw axum req/s | ratio | nexus p50 / p99 ms | raw p50 / p99 ms |");
        println!("|---|---:|---:|---:|---:|---:|");
        for (name, n, r) in &lines {
            println!(
                "| {name} | {:.0} | {:.0} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} |",
                n.rps,
                r.rps,
                n.rps / r.rps,
                n.p50_ms,
                n.p99_ms,
                r.p50_ms,
                r.p99_ms
            );
            if n.non_2xx + r.non_2xx > 0 {
                println!(
                    "  ({name}: non-2xx responses: nexus {}, raw {})",
                    n.non_2xx, r.non_2xx
                );
            }
        }
        println!("\ntargets: nexus ≥ 0.8× the hand-written handler; p99 < 10 ms at 32 connections");
    }
    println!(
        "\nget_user with rate limiting on / off: {rate_ratio:.2} (target ≥ 0.95); on {:.0} req/s, p50 / p99 {:.2} / {:.2} ms",
        limited_get.rps, limited_get.p50_ms, limited_get.p99_ms
    );
    println!("\nget_user with authentication, same run (wrk -t2 -c32 -d{secs}s):\n");
    println!("| get_user | req/s | ratio to auth off | p50 / p99 ms |");
    println!("|---|---:|---:|---:|");
    let off = auth_lines[0].1.rps;
    for (what, r) in &auth_lines {
        println!(
            "| {what} | {:.0} | {:.2} | {:.2} / {:.2} |",
            r.rps,
            r.rps / off,
            r.p50_ms,
            r.p99_ms
        );
        if r.non_2xx > 0 {
            println!("  ({what}: non-2xx responses: {})", r.non_2xx);
        }
    }
    println!("\ntargets: JWT ≥ 0.9× auth off; API key ≥ 0.85×");
    durability(&url, true).await;
    remove_db(&path);
}

/// `HTTP_BENCH=auth`: the lines `(name, url, wrk script)` in
/// `HTTP_BENCH_ROUNDS` rounds (default 5), each round in another order;
/// per line the median req/s, p50 and p99 over the rounds and the median
/// of its per-round ratios to the first line (measured in the same round,
/// so load that comes and goes on a shared machine hits both alike).
fn auth_rounds(lines: &[(&str, &String, &String)]) {
    let rounds: usize = std::env::var("HTTP_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(5);
    let mut results: Vec<Vec<WrkResult>> = vec![Vec::new(); lines.len()];
    for round in 0..rounds {
        for j in 0..lines.len() {
            let i = (j + round) % lines.len();
            let (_, url, script) = lines[i];
            results[i].push(wrk(url, Some(script)));
        }
    }
    let median = |mut v: Vec<f64>| -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "get_user with authentication and rate limiting: {rounds} rounds of wrk -t2 -c32 -d{}s --latency per line (order rotated each round); medians\n",
        seconds()
    );
    println!("| get_user | req/s | ratio to auth off | p50 / p99 ms | ratio per round |");
    println!("|---|---:|---:|---:|---|");
    for (i, (name, _, _)) in lines.iter().enumerate() {
        let r = &results[i];
        let ratios: Vec<f64> = r
            .iter()
            .zip(&results[0])
            .map(|(x, off)| x.rps / off.rps)
            .collect();
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} / {:.2} | {} |",
            median(r.iter().map(|x| x.rps).collect()),
            median(ratios.clone()),
            median(r.iter().map(|x| x.p50_ms).collect()),
            median(r.iter().map(|x| x.p99_ms).collect()),
            ratios
                .iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let non_2xx: u64 = r.iter().map(|x| x.non_2xx).sum();
        if non_2xx > 0 {
            println!("  ({name}: non-2xx responses: {non_2xx})");
        }
    }
    println!("\ntargets: JWT ≥ 0.9× auth off; API key ≥ 0.85×; rate limiting ≥ 0.95×");
}

/// Removes the benchmark's SQLite file.
fn remove_db(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
