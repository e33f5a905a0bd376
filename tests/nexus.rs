//! Nexus end to end over real loopback sockets: one table of cases driven
//! through HTTP and through the CLI (the example server as a subprocess),
//! with the same result and the same error code on both.

mod support;

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use support::http::request;

/// Starts `examples/nexus_server` serving on a free port; killed on drop.
struct Server {
    child: std::process::Child,
    addr: SocketAddr,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn example() -> Command {
    let mut c = Command::new(env!("CARGO"));
    c.args(["run", "--quiet", "--example", "nexus_server", "--"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn server(url: &str) -> Server {
    // Build first so the timeout below measures start-up, not compilation.
    assert!(Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--example", "nexus_server"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap()
        .success());
    let (port, mcp_port) = (free_port(), free_port());
    let mut child = example()
        .env("NEXUS_DATABASE_URL", url)
        .env("NEXUS_API_PORT", port.to_string())
        .env("NEXUS_MCP_PORT", mcp_port.to_string())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mcp: SocketAddr = format!("127.0.0.1:{mcp_port}").parse().unwrap();
    let started = Instant::now();
    // HTTP and MCP both listen before the server counts as started.
    while std::net::TcpStream::connect(addr).is_err() || std::net::TcpStream::connect(mcp).is_err()
    {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the server exited before listening: {status}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Server {
        child,
        addr,
        url: url.to_string(),
    }
}

/// The CLI: `run <workflow> <flags> --json` → (exit code, JSON printed).
fn cli(url: &str, workflow: &str, flags: &[&str]) -> (i32, Value) {
    let out = example()
        .env("NEXUS_DATABASE_URL", url)
        .args(["run", workflow])
        .args(flags)
        .arg("--json")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "CLI printed no JSON: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

fn http(s: &Server, workflow: &str, inputs: Value) -> (u16, Value) {
    let r = request(
        s.addr,
        "POST",
        &format!("/workflows/{workflow}/execute"),
        Some(json!({"inputs": inputs}).to_string().as_bytes()),
    );
    (r.status, r.json())
}

#[test]
fn http_and_cli_agree_on_results_and_errors() {
    let mut urls = vec![support::sqlite_url("nexus")];
    urls.extend(support::postgres::fresh_database("nexus"));
    for url in urls {
        let s = server(&url);
        // Success, on each channel.
        let (status, created) = http(
            &s,
            "create_user",
            json!({"email": "h@x.io", "full_name": "Http"}),
        );
        assert_eq!(status, 200, "{created}");
        assert_eq!(created["outputs"]["create"]["email"], "h@x.io");
        assert!(created["run_id"].is_string() && created["execution_time"].is_number());
        let (code, via_cli) = cli(
            &s.url,
            "create_user",
            &["--email", "c@x.io", "--full_name", "Cli"],
        );
        assert_eq!(code, 0, "{via_cli}");
        assert_eq!(via_cli["outputs"]["create"]["full_name"], "Cli");
        let id = created["outputs"]["create"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let (status, got) = http(&s, "get_user", json!({"id": id}));
        let (code, got_cli) = cli(&s.url, "get_user", &["--id", &id]);
        assert_eq!((status, code), (200, 0));
        assert_eq!(
            got["outputs"], got_cli["outputs"],
            "the same output on both channels"
        );

        // The same errors: (HTTP inputs, CLI flags, code, HTTP status, CLI exit).
        let cases: Vec<(Value, Vec<&str>, &str, u16, i32)> = vec![
            (json!({}), vec![], "validation", 422, 2),
            (
                json!({"email": "h@x.io"}),
                vec!["--email", "h@x.io"],
                "unique_violation",
                409,
                5,
            ),
            (
                json!({"email": "z@x.io", "active": "yes"}),
                vec!["--email", "z@x.io", "--active", "yes"],
                "validation",
                422,
                3,
            ),
        ];
        for (inputs, flags, code, status, exit) in cases {
            let (st, body) = http(&s, "create_user", inputs.clone());
            assert_eq!(
                (st, body["error"]["code"].as_str()),
                (status, Some(code)),
                "{inputs}: {body}"
            );
            if exit == 2 {
                continue; // a missing required flag is a usage error on the command line
            }
            let (ex, out) = cli(&s.url, "create_user", &flags);
            assert_eq!(
                (ex, out["error"]["code"].as_str()),
                (exit, Some(code)),
                "{flags:?}: {out}"
            );
        }
        let (st, body) = http(&s, "get_user", json!({"id": "missing"}));
        let (ex, out) = cli(&s.url, "get_user", &["--id", "missing"]);
        assert_eq!((st, ex), (404, 4));
        assert_eq!(body["error"]["code"], "not_found");
        assert_eq!(
            body["error"], out["error"],
            "the same error on both channels"
        );
        let (st, body) = http(&s, "nope", json!({}));
        let (ex, out) = cli(&s.url, "nope", &[]);
        assert_eq!((st, ex), (404, 4));
        assert_eq!(body["error"]["code"], out["error"]["code"]);

        // HTTP-only bad input: malformed JSON, wrong shape, oversized bodies.
        let r = request(
            s.addr,
            "POST",
            "/workflows/create_user/execute",
            Some(b"{not json"),
        );
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str()),
            (422, Some("validation"))
        );
        let r = request(
            s.addr,
            "POST",
            "/workflows/create_user/execute",
            Some(br#"{"input": {}}"#),
        );
        assert_eq!(r.status, 422);
        let big = format!("{{\"inputs\": {{\"email\": \"{}\"}}}}", "x".repeat(2 << 20));
        let r = request(
            s.addr,
            "POST",
            "/workflows/create_user/execute",
            Some(big.as_bytes()),
        );
        assert_eq!(r.status, 422, "{}", r.body);
        assert_eq!(r.json()["error"]["code"], "validation");
    }
}

#[test]
fn discovery_health_and_openapi() {
    let s = server(&support::sqlite_url("nexus_meta"));
    let r = request(s.addr, "GET", "/health", None);
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
    let r = request(s.addr, "GET", "/ready", None);
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (200, Some("ready"))
    );
    let list = request(s.addr, "GET", "/workflows", None).json();
    let names: Vec<&str> = list["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "create_user",
            "get_user",
            "list_users",
            "start_conversation"
        ]
    );
    let create = &list["workflows"][0];
    assert_eq!(create["description"], "Create a user");
    assert_eq!(create["input_schema"]["required"], json!(["email"]));
    assert_eq!(
        create["input_schema"]["properties"]["active"]["type"],
        "boolean"
    );
    let one = request(s.addr, "GET", "/workflows/get_user", None).json();
    assert_eq!(one["workflow"]["nodes"][0]["type"], "UserReadNode");
    assert_eq!(request(s.addr, "GET", "/workflows/nope", None).status, 404);

    let api = request(s.addr, "GET", "/openapi.json", None).json();
    assert_eq!(api["openapi"], "3.1.0");
    let op = &api["paths"]["/workflows/create_user/execute"]["post"];
    assert_eq!(
        op["requestBody"]["content"]["application/json"]["schema"]["properties"]["inputs"],
        create["input_schema"]
    );
    assert!(op["responses"]["422"].is_object());
    assert_eq!(api["paths"].as_object().unwrap().len(), 4);

    let out = example()
        .args(["workflows", "--json"])
        .env("NEXUS_DATABASE_URL", &s.url)
        .output()
        .unwrap();
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed, list["workflows"],
        "the CLI lists the same workflows"
    );
    let help = example()
        .args(["run", "create_user", "--help"])
        .env("NEXUS_DATABASE_URL", &s.url)
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--email <STRING>")
            && help.contains("(required)")
            && help.contains("--active <BOOLEAN>"),
        "{help}"
    );
}

#[tokio::test]
async fn options_for_missing_features_fail_at_build() {
    #[dataflow::model]
    pub struct Probe {
        pub id: String,
    }
    let db = dataflow::DataFlow::builder("sqlite::memory:")
        .build()
        .await
        .unwrap();
    for b in [
        nexus::Nexus::builder().enable_auth(true),
        nexus::Nexus::builder().rate_limit(100),
        nexus::Nexus::builder().auto_discovery(true),
    ] {
        let e = b.build(db.clone()).err().expect("refused");
        assert_eq!(e.code(), "not_supported", "{e}");
    }
    let mut app = nexus::Nexus::builder().build(db.clone()).unwrap();
    let mut wf = dataflow::WorkflowBuilder::new();
    wf.add_node("ProbeCountNode", "count", json!({}));
    app.register("count", wf.build(&db).unwrap()).unwrap();
    let e = app.register("count", wf.build(&db).unwrap()).unwrap_err();
    assert!(e.message().contains("already registered"), "{e}");
    assert_eq!(
        app.workflows().count(),
        1,
        "a failed registration changes nothing"
    );
    assert_eq!(
        app.register("Bad Name", wf.build(&db).unwrap())
            .unwrap_err()
            .code(),
        "validation"
    );
}

#[test]
fn events_stream_in_order_and_metrics_count_requests() {
    use std::io::{Read, Write};
    let s = server(&support::sqlite_url("nexus_events"));
    let mut sse = std::net::TcpStream::connect(s.addr).unwrap();
    write!(
        sse,
        "GET /events HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        s.addr
    )
    .unwrap();
    sse.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Wait for the response head so the subscription exists before the run.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        sse.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&head).contains("text/event-stream"));

    let (status, _) = http(
        &s,
        "start_conversation",
        json!({"user_id": "nobody", "token": "t", "expires_at": "2030-01-01T00:00:00Z"}),
    );
    assert_eq!(status, 409, "fk_violation: the user does not exist");
    let (status, created) = http(&s, "create_user", json!({"email": "e@x.io"}));
    assert_eq!(status, 200);

    let mut text = String::new();
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    while text.matches("\"event\":\"finished\"").count() < 1 {
        let n = sse.read(&mut buf).unwrap();
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no finished event in {text}"
        );
    }
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["workflow"].as_str().unwrap(),
                e["event"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("start_conversation", "started"),
            ("start_conversation", "node_finished"),
            ("start_conversation", "failed"),
            ("create_user", "started"),
            ("create_user", "node_finished"),
            ("create_user", "finished"),
        ]
    );
    assert_eq!(events[2]["code"], "fk_violation");
    assert_eq!(events[5]["run_id"], created["run_id"]);

    let metrics = request(s.addr, "GET", "/metrics", None).body;
    assert!(
        metrics
            .contains(r#"nexus_requests_total{channel="http",code="ok",workflow="create_user"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"nexus_requests_total{channel="http",code="fk_violation",workflow="start_conversation"} 1"#), "{metrics}");
    assert!(
        metrics.contains("nexus_request_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"nexus_node_duration_seconds_count{node="create",workflow="create_user"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("nexus_db_pool_connections{state=\"open\"}"),
        "{metrics}"
    );
}

#[test]
fn async_runs_answer_202_and_report_through_runs() {
    let s = server(&support::sqlite_url("nexus_async"));
    let start = |inputs: Value| {
        let r = request(
            s.addr,
            "POST",
            "/workflows/create_user/execute",
            Some(
                json!({"inputs": inputs, "mode": "async"})
                    .to_string()
                    .as_bytes(),
            ),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        let body = r.json();
        assert_eq!(body["status"], "running");
        body["run_id"].as_str().unwrap().to_string()
    };
    let wait = |id: &str| -> Value {
        let started = Instant::now();
        loop {
            let r = request(s.addr, "GET", &format!("/runs/{id}"), None);
            assert_eq!(r.status, 200, "{}", r.body);
            let v = r.json();
            if v["status"] != "running" {
                return v;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the run never finished"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let id = start(json!({"email": "async@x.io"}));
    let done = wait(&id);
    assert_eq!(done["status"], "finished");
    assert_eq!(done["result"]["run_id"], id.as_str());
    assert_eq!(done["result"]["outputs"]["create"]["email"], "async@x.io");

    let failed = wait(&start(json!({"email": "async@x.io"})));
    assert_eq!(
        (failed["status"].as_str(), failed["error"]["code"].as_str()),
        (Some("failed"), Some("unique_violation"))
    );

    let r = request(s.addr, "GET", "/runs/nope", None);
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let r = request(
        s.addr,
        "POST",
        "/workflows/create_user/execute",
        Some(br#"{"inputs": {}, "mode": "later"}"#),
    );
    assert_eq!(
        (r.status, r.json()["error"]["field"].as_str()),
        (422, Some("mode"))
    );
    let r = request(
        s.addr,
        "POST",
        "/workflows/nope/execute",
        Some(br#"{"inputs": {}, "mode": "async"}"#),
    );
    assert_eq!(
        r.status, 404,
        "an unknown workflow fails at once, not in the run"
    );
}
