//! Nexus end to end over real loopback sockets, against the example server
//! (`examples/nexus_server.rs`) as a separate process: one table of cases
//! driven through HTTP, the CLI (a subprocess, in-process and with `--url`)
//! and MCP (a real rmcp client, over streamable HTTP and over stdio), with the
//! same result and the same error on every channel. The builder's options and
//! `run`'s exit codes are tested on applications served in this process.

mod support;

#[path = "support/openapi.rs"]
mod openapi;

use rmcp::model::{CallToolRequestParams, CallToolResult, ErrorCode as RpcCode, JsonObject};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::ServiceExt;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use support::http::{request, request_with};

fn example(url: &str) -> Command {
    let mut c = Command::new(support::programs::example("nexus_server"));
    c.env("NEXUS_DATABASE_URL", url);
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The example server serving HTTP and MCP on free ports; killed on drop.
struct Server {
    child: std::process::Child,
    addr: SocketAddr,
    mcp: SocketAddr,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn mcp_client(&self) -> RunningService<RoleClient, ()> {
        mcp_client_at(self.mcp).await
    }
}

fn server(url: &str) -> Server {
    server_with(url, &[], false)
}

/// [`server`] with more environment variables, and its output captured
/// (`piped`) for tests that read what it printed.
fn server_with(url: &str, env: &[(&str, &str)], piped: bool) -> Server {
    let (port, mcp_port) = (free_port(), free_port());
    let mut command = example(url);
    command
        .env("NEXUS_API_PORT", port.to_string())
        .env("NEXUS_MCP_PORT", mcp_port.to_string())
        .envs(env.iter().copied());
    if piped {
        command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
    }
    let mut child = command.spawn().unwrap();
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
        mcp,
        url: url.to_string(),
    }
}

/// An MCP client talking to `nexus_server mcp` over the child's stdin/stdout.
async fn mcp_stdio_client(url: &str) -> RunningService<RoleClient, ()> {
    let mut cmd = tokio::process::Command::new(support::programs::example("nexus_server"));
    cmd.arg("mcp").env("NEXUS_DATABASE_URL", url);
    let transport = TokioChildProcess::new(cmd).unwrap();
    tokio::time::timeout(Duration::from_secs(30), ().serve(transport))
        .await
        .expect("MCP stdio initialize in time")
        .unwrap()
}

/// `nexus_server run <workflow> <args> --json` → (exit code, the JSON printed).
async fn cli(url: &str, workflow: &str, args: &[&str]) -> (i32, Value) {
    let out = tokio::process::Command::from(example(url))
        .args(["run", workflow])
        .args(args)
        .arg("--json")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "`run {workflow} {args:?}` printed no JSON: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

async fn post(addr: SocketAddr, path: String, body: Vec<u8>) -> support::http::Response {
    tokio::task::spawn_blocking(move || request(addr, "POST", &path, Some(&body)))
        .await
        .unwrap()
}

async fn get(addr: SocketAddr, path: &str) -> support::http::Response {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || request(addr, "GET", &path, None))
        .await
        .unwrap()
}

async fn call(
    client: &RunningService<RoleClient, ()>,
    name: &str,
    arguments: &Value,
) -> Result<CallToolResult, ServiceError> {
    let arguments: JsonObject = match arguments {
        Value::Object(m) => m.clone(),
        other => panic!("tool arguments are an object, not {other}"),
    };
    client
        .call_tool(CallToolRequestParams::new(name.to_string()).with_arguments(arguments))
        .await
}

/// The JSON of a tool result: the text content, checked to equal the structured content.
fn result_json(r: &CallToolResult) -> Value {
    assert_eq!(r.content.len(), 1, "one text content: {r:?}");
    let text = &r.content[0].as_text().expect("text content").text;
    let parsed: Value = serde_json::from_str(text).unwrap();
    assert_eq!(
        Some(&parsed),
        r.structured_content.as_ref(),
        "text and structured content agree"
    );
    parsed
}

/// How a case's inputs are sent.
enum Inputs {
    /// The inputs object (HTTP `{"inputs": ..}`, CLI `--inputs`, MCP arguments).
    Json(Value),
    /// Text that is not valid JSON (HTTP body, CLI `--inputs`; an MCP client
    /// cannot send it: see `malformed_json_on_the_mcp_transport`).
    Malformed(&'static str),
}

/// What a channel answered: `Ok(outputs)` or `Err(error object)`, with the
/// channel's own status (HTTP status, exit code, MCP `isError`).
#[derive(Debug)]
struct Answer {
    channel: &'static str,
    status: i64,
    result: Result<Value, Value>,
}

fn answer(channel: &'static str, status: i64, body: Value) -> Answer {
    let result = match body.get("error") {
        Some(e) => Err(e.clone()),
        None => Ok(body["outputs"].clone()),
    };
    Answer {
        channel,
        status,
        result,
    }
}

async fn mcp_answer(
    channel: &'static str,
    client: &RunningService<RoleClient, ()>,
    workflow: &str,
    inputs: &Value,
) -> Answer {
    match call(client, workflow, inputs).await {
        Ok(r) => {
            let body = result_json(&r);
            let a = answer(channel, i64::from(r.is_error == Some(true)), body);
            assert_eq!(
                a.result.is_err(),
                a.status == 1,
                "isError matches the body: {a:?}"
            );
            a
        }
        // An unknown tool is a protocol error (invalid params) carrying the error body.
        Err(ServiceError::McpError(e)) => {
            assert_eq!(e.code, RpcCode::INVALID_PARAMS, "{e:?}");
            let data = e.data.expect("error data");
            answer(channel, -32602, data)
        }
        Err(other) => panic!("{channel}: {other}"),
    }
}

/// One row of the table: inputs to a workflow, and what every channel must answer.
struct Case {
    what: &'static str,
    workflow: &'static str,
    inputs: Inputs,
    /// `None` for success; else (code, HTTP status, CLI exit, the field
    /// named, when every backend names one).
    error: Option<(&'static str, u16, i32, Option<&'static str>)>,
    /// Whether the error message is the same text on every channel (it names
    /// the channel's own envelope for malformed and oversized input).
    same_message: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_channel_gives_the_same_answer() {
    let mut urls = vec![support::sqlite_url("nexus")];
    urls.extend(support::postgres::fresh_database("nexus"));
    for url in urls {
        let s = server(&url);
        let seed = post(
            s.addr,
            "/workflows/create_user/execute".into(),
            json!({"inputs": {"email": "seed@x.io", "full_name": "Seed"}})
                .to_string()
                .into_bytes(),
        )
        .await;
        assert_eq!(seed.status, 200, "{}", seed.body);
        let seed = seed.json();
        assert!(seed["run_id"].is_string() && seed["execution_time"].is_number());
        let id = seed["outputs"]["create"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let mcp_http = s.mcp_client().await;
        let mcp_stdio = mcp_stdio_client(&url).await;
        let big = "x".repeat(crate_max() + 1);
        let cases = vec![
            Case {
                what: "missing required input",
                workflow: "create_user",
                inputs: Inputs::Json(json!({})),
                error: Some(("validation", 422, 3, Some("email"))),
                same_message: true,
            },
            Case {
                what: "wrong type",
                workflow: "create_user",
                inputs: Inputs::Json(json!({"email": "z@x.io", "active": "yes"})),
                error: Some(("validation", 422, 3, Some("active"))),
                same_message: true,
            },
            Case {
                what: "unknown input",
                workflow: "create_user",
                inputs: Inputs::Json(json!({"email": "z@x.io", "emial": "z@x.io"})),
                error: Some(("validation", 422, 3, Some("emial"))),
                same_message: true,
            },
            Case {
                what: "duplicate unique value",
                workflow: "create_user",
                inputs: Inputs::Json(json!({"email": "seed@x.io"})),
                error: Some(("unique_violation", 409, 5, Some("email"))),
                same_message: true,
            },
            Case {
                what: "missing parent (foreign key)",
                workflow: "start_conversation",
                inputs: Inputs::Json(
                    json!({"user_id": "nobody", "token": "t", "expires_at": "2030-01-01T00:00:00Z"}),
                ),
                error: Some(("fk_violation", 409, 5, None)),
                same_message: true,
            },
            Case {
                what: "record not found",
                workflow: "get_user",
                inputs: Inputs::Json(json!({"id": "missing"})),
                error: Some(("not_found", 404, 4, None)),
                same_message: true,
            },
            Case {
                what: "unknown workflow",
                workflow: "nope",
                inputs: Inputs::Json(json!({})),
                error: Some(("not_found", 404, 4, None)),
                same_message: true,
            },
            Case {
                what: "malformed JSON",
                workflow: "create_user",
                inputs: Inputs::Malformed("{not json"),
                error: Some(("validation", 422, 3, None)),
                same_message: false,
            },
            Case {
                what: "inputs not an object",
                workflow: "create_user",
                inputs: Inputs::Json(json!([1])),
                error: Some(("validation", 422, 3, None)),
                same_message: true,
            },
            Case {
                what: "oversized inputs",
                workflow: "create_user",
                inputs: Inputs::Json(json!({"email": big})),
                error: Some(("too_large", 413, 3, None)),
                same_message: false,
            },
            Case {
                what: "success: read",
                workflow: "get_user",
                inputs: Inputs::Json(json!({"id": id})),
                error: None,
                same_message: true,
            },
            Case {
                what: "success: list (no failed case above wrote anything)",
                workflow: "list_users",
                inputs: Inputs::Json(json!({"active": true, "limit": 10})),
                error: None,
                same_message: true,
            },
        ];
        let big_file = std::env::temp_dir().join(format!("nexus-big-{}.json", std::process::id()));
        for case in &cases {
            let (body, cli_inputs) = match &case.inputs {
                Inputs::Json(v) => {
                    let text = v.to_string();
                    let arg = if text.len() > 4096 {
                        std::fs::write(&big_file, &text).unwrap();
                        format!("@{}", big_file.display())
                    } else {
                        text
                    };
                    (json!({"inputs": v}).to_string().into_bytes(), arg)
                }
                Inputs::Malformed(text) => (text.as_bytes().to_vec(), text.to_string()),
            };
            let path = format!("/workflows/{}/execute", case.workflow);
            let r = post(s.addr, path, body).await;
            let mut answers = vec![answer("http", i64::from(r.status), r.json())];
            let (exit, out) = cli(&s.url, case.workflow, &["--inputs", &cli_inputs]).await;
            answers.push(answer("cli", i64::from(exit), out));
            let base = s.base();
            let (exit, out) = cli(
                &s.url,
                case.workflow,
                &["--inputs", &cli_inputs, "--url", &base],
            )
            .await;
            answers.push(answer("cli --url", i64::from(exit), out));
            if let Inputs::Json(v) = &case.inputs {
                if v.is_object() {
                    answers.push(mcp_answer("mcp http", &mcp_http, case.workflow, v).await);
                    answers.push(mcp_answer("mcp stdio", &mcp_stdio, case.workflow, v).await);
                }
            }
            let first = &answers[0];
            for a in &answers {
                let expected_status = match (case.error, a.channel) {
                    (None, "http") => 200,
                    (None, _) => 0,
                    (Some((_, status, _, _)), "http") => i64::from(status),
                    (Some(("not_found", ..)), "mcp http" | "mcp stdio")
                        if case.workflow == "nope" =>
                    {
                        -32602
                    }
                    (Some(_), "mcp http" | "mcp stdio") => 1,
                    (Some((_, _, exit, _)), _) => i64::from(exit),
                };
                assert_eq!(a.status, expected_status, "{}: {a:?}", case.what);
                match (&a.result, case.error) {
                    (Ok(outputs), None) => {
                        assert_eq!(Ok(outputs), first.result.as_ref(), "{}: {a:?}", case.what)
                    }
                    (Err(e), Some((code, _, _, field))) => {
                        assert_eq!(e["code"], code, "{}: {a:?}", case.what);
                        if field.is_some() {
                            assert_eq!(e["field"].as_str(), field, "{}: {a:?}", case.what);
                        }
                        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
                        if case.same_message {
                            assert_eq!(Err(e), first.result.as_ref(), "{}: {a:?}", case.what);
                        }
                    }
                    _ => panic!("{}: {a:?}", case.what),
                }
            }
            if case.what.starts_with("success: list") {
                let users = first.result.as_ref().unwrap()["users"]["records"]
                    .as_array()
                    .unwrap();
                assert_eq!(users.len(), 1, "only the seed user exists: {users:?}");
            }
        }
        let _ = std::fs::remove_file(&big_file);

        // Typed flags: the same result and errors as the JSON inputs.
        let (exit, out) = cli(&s.url, "create_user", &[]).await;
        let r = post(
            s.addr,
            "/workflows/create_user/execute".into(),
            br#"{"inputs": {}}"#.to_vec(),
        )
        .await;
        assert_eq!(exit, 3);
        assert_eq!(
            out["error"],
            r.json()["error"],
            "a missing required flag is the workflow's own error"
        );
        let (exit, out) = cli(
            &s.url,
            "create_user",
            &["--email", "z@x.io", "--active", "yes"],
        )
        .await;
        assert_eq!(
            (
                exit,
                out["error"]["code"].as_str(),
                out["error"]["field"].as_str()
            ),
            (3, Some("validation"), Some("active")),
            "{out}"
        );
        let (exit, out) = cli(
            &s.url,
            "create_user",
            &[
                "--email",
                "flag@x.io",
                "--full_name",
                "Flag",
                "--active",
                "false",
            ],
        )
        .await;
        assert_eq!(exit, 0, "{out}");
        assert_eq!(out["outputs"]["create"]["active"], false);
        let pretty = example(&s.url)
            .args(["run", "get_user", "--id", &id])
            .output()
            .unwrap();
        assert!(pretty.status.success());
        let pretty: Value = serde_json::from_slice(&pretty.stdout).unwrap();
        assert_eq!(pretty["outputs"]["user"]["email"], "seed@x.io");

        // `--inputs -` reads the inputs from stdin.
        let mut child = example(&s.url)
            .args(["run", "get_user", "--inputs", "-", "--json"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(
            &mut child.stdin.take().unwrap(),
            json!({"id": id}).to_string().as_bytes(),
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let from_stdin: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(from_stdin["outputs"]["user"]["email"], "seed@x.io");

        // A server that is not there: a connection error, exit code 7.
        let gone = format!("http://127.0.0.1:{}", free_port());
        let (exit, out) = cli(&s.url, "get_user", &["--id", &id, "--url", &gone]).await;
        assert_eq!(
            (exit, out["error"]["code"].as_str()),
            (7, Some("connection")),
            "{out}"
        );

        // MCP runs are counted beside HTTP ones (the stdio server is another process).
        let metrics = get(s.addr, "/metrics").await.body;
        for line in [
            r#"nexus_requests_total{channel="mcp",code="ok",workflow="get_user"} 1"#,
            r#"nexus_requests_total{channel="http",code="ok",workflow="get_user"} 2"#,
            r#"nexus_requests_total{channel="mcp",code="unique_violation",workflow="create_user"} 1"#,
            r#"nexus_requests_total{channel="http",code="not_found",workflow="(unknown)"} 1"#,
            r#"nexus_requests_total{channel="mcp",code="not_found",workflow="(unknown)"} 1"#,
        ] {
            assert!(metrics.contains(line), "{line} in\n{metrics}");
        }
        mcp_http.cancel().await.unwrap();
        mcp_stdio.cancel().await.unwrap();
    }
}

fn crate_max() -> usize {
    nexus::MAX_INPUT_BYTES
}

/// The one thing an MCP client cannot send through a tool call: the
/// transport itself refuses malformed JSON with a client error, never a 500.
#[test]
fn malformed_json_on_the_mcp_transport() {
    let s = server(&support::sqlite_url("nexus_mcp_raw"));
    let r = request_with(
        s.mcp,
        "POST",
        "/mcp",
        &["Accept: application/json, text/event-stream"],
        Some(b"{not json"),
    );
    assert!((400..500).contains(&r.status), "{} {}", r.status, r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_health_openapi_and_tools() {
    let s = server(&support::sqlite_url("nexus_meta"));
    let r = get(s.addr, "/health").await;
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
    let r = get(s.addr, "/ready").await;
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (200, Some("ready"))
    );
    let list = get(s.addr, "/workflows").await.json();
    let workflows = list["workflows"].as_array().unwrap();
    let names: Vec<&str> = workflows
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
    let create = &workflows[0];
    assert_eq!(create["description"], "Create a user");
    assert_eq!(create["input_schema"]["required"], json!(["email"]));
    assert_eq!(
        create["input_schema"]["properties"]["active"]["type"],
        "boolean"
    );
    let one = get(s.addr, "/workflows/get_user").await.json();
    assert_eq!(one["workflow"]["nodes"][0]["type"], "UserReadNode");
    assert_eq!(get(s.addr, "/workflows/nope").await.status, 404);

    // OpenAPI: a valid 3.1 document with one operation per workflow.
    let api = get(s.addr, "/openapi.json").await.json();
    if let Err(errors) = openapi::validate(&api) {
        panic!(
            "/openapi.json is not valid OpenAPI 3.1:\n{}",
            errors.join("\n")
        );
    }
    assert_eq!(api["openapi"], "3.1.0");
    let op = &api["paths"]["/workflows/create_user/execute"]["post"];
    let mut inputs = create["input_schema"].clone();
    inputs.as_object_mut().unwrap().remove("$schema");
    assert_eq!(
        op["requestBody"]["content"]["application/json"]["schema"]["properties"]["inputs"], inputs,
        "the workflow's input schema, in the document's dialect"
    );
    assert!(op["responses"]["422"].is_object());
    assert_eq!(api["paths"].as_object().unwrap().len(), 4);

    // MCP lists the same workflows: names, descriptions, input schemas.
    let client = s.mcp_client().await;
    let tools = client.list_all_tools().await.unwrap();
    let info = client.peer_info().expect("server info");
    assert_eq!(
        info.server_info.as_ref().map(|i| i.name.as_str()),
        Some("nexus")
    );
    assert_eq!(tools.len(), workflows.len());
    for (tool, w) in tools.iter().zip(workflows) {
        assert_eq!(tool.name, w["name"].as_str().unwrap());
        assert_eq!(tool.description.as_deref(), w["description"].as_str());
        assert_eq!(tool.schema_as_json_value(), w["input_schema"]);
    }
    client.cancel().await.unwrap();

    // The CLI lists them too, and documents each input's type.
    let out = example(&s.url)
        .args(["workflows", "--json"])
        .output()
        .unwrap();
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed, list["workflows"],
        "the CLI lists the same workflows"
    );
    let help = example(&s.url)
        .args(["run", "create_user", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for text in [
        "--email <STRING>",
        "string (required)",
        "--active <BOOLEAN>",
        "--inputs <JSON|@FILE|->",
        "--url <URL>",
    ] {
        assert!(help.contains(text), "{text} in {help}");
    }
}

#[tokio::test]
async fn options_for_missing_features_fail_at_build() {
    let db = probe_db().await;
    let e = nexus::Nexus::builder()
        .auto_discovery(true)
        .build(db.clone())
        .err()
        .expect("refused");
    assert_eq!(e.code().as_str(), "not_supported", "{e}");
    let mut app = nexus::Nexus::builder().build(db.clone()).unwrap();
    let wf = probe_workflow(&db);
    app.register("count", wf.clone()).unwrap();
    let e = app.register("count", wf.clone()).unwrap_err();
    assert!(e.message().contains("already registered"), "{e}");
    assert_eq!(
        app.workflows().count(),
        1,
        "a failed registration changes nothing"
    );
    assert_eq!(
        app.register("Bad Name", wf).unwrap_err().code(),
        "validation"
    );
}

#[dataflow::model]
pub struct Probe {
    pub id: String,
}

/// Sleeps `ms` milliseconds: a request that is still running at shutdown.
pub struct Slow;

#[dataflow::node]
impl dataflow::Node for Slow {
    fn name(&self) -> &'static str {
        "SlowNode"
    }
    fn input_schema(&self) -> Value {
        json!({"type": "object", "properties": {"ms": {"type": "integer"}}, "required": ["ms"]})
    }
    fn run<'a>(
        &'a self,
        _ctx: &'a dataflow::NodeContext,
        input: Value,
    ) -> dataflow::NodeFuture<'a> {
        Box::pin(async move {
            let ms = input["ms"].as_u64().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(json!({"slept": ms}))
        })
    }
}

/// Answers with the caller's context; without a tenant it fails the way a
/// tenant-scoped model does (`tenant_required`).
pub struct Caller;

#[dataflow::node]
impl dataflow::Node for Caller {
    fn name(&self) -> &'static str {
        "CallerNode"
    }
    fn input_schema(&self) -> Value {
        json!({"type": "object"})
    }
    fn run<'a>(
        &'a self,
        ctx: &'a dataflow::NodeContext,
        _input: Value,
    ) -> dataflow::NodeFuture<'a> {
        Box::pin(async move {
            let c = ctx.context();
            if c.tenant.is_none() {
                return Err(dataflow::Error::new(
                    dataflow::ErrorCode::TenantRequired,
                    "no tenant",
                ));
            }
            Ok(json!({"tenant": c.tenant, "actor": c.actor, "request_id": c.request_id}))
        })
    }
}

/// Where a call's tenant comes from: `--tenant` / `--as` on the in-process
/// CLI, and `X-Tenant-ID` on HTTP and MCP only with `trust_tenant_header`
/// (ignored otherwise); `X-Request-ID` correlates on every channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_context_comes_only_from_trusted_places() {
    let register = |app: &mut nexus::Nexus, db: &dataflow::DataFlow| {
        let mut wf = dataflow::WorkflowBuilder::new();
        wf.add_node("CallerNode", "me", json!({}));
        app.register("whoami", wf.build(db).unwrap()).unwrap();
    };
    let whoami = |addr: SocketAddr, headers: &[&str]| {
        request_with(
            addr,
            "POST",
            "/workflows/whoami/execute",
            headers,
            Some(b"{}"),
        )
    };
    let mcp_with_tenant = |addr: SocketAddr| async move {
        let mut config =
            rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
                format!("http://{addr}/mcp"),
            );
        config
            .custom_headers
            .insert("x-tenant-id".parse().unwrap(), "acme".parse().unwrap());
        let transport = StreamableHttpClientTransport::from_config(config);
        ().serve(transport).await.unwrap()
    };

    let plain = InProcess::start_with(nexus::Nexus::builder(), register).await;
    let r = whoami(plain.http, &["X-Tenant-ID: acme"]);
    assert_eq!(
        r.status, 403,
        "the header is ignored unless trusted: {}",
        r.body
    );
    assert_eq!(r.json()["error"]["code"], "tenant_required");
    let client = mcp_with_tenant(plain.mcp).await;
    let r = call(&client, "whoami", &json!({})).await.unwrap();
    assert_eq!(r.is_error, Some(true));
    assert_eq!(result_json(&r)["error"]["code"], "tenant_required");
    client.cancel().await.unwrap();
    assert_eq!(
        plain.app.run_from(["app", "run", "whoami"]).await,
        std::process::ExitCode::from(5)
    );
    assert_eq!(
        plain
            .app
            .run_from(["app", "run", "whoami", "--tenant", "acme", "--as", "ops"])
            .await,
        std::process::ExitCode::SUCCESS
    );
    let e = plain.app.execute("whoami", json!({})).await.unwrap_err();
    assert_eq!(e.code().as_str(), "tenant_required");
    let ok = plain
        .app
        .execute_in(
            dataflow::Context::new().tenant("t1").actor("me"),
            "whoami",
            json!({}),
        )
        .await
        .unwrap();
    assert_eq!(ok["outputs"]["me"]["tenant"], "t1");

    let trusted =
        InProcess::start_with(nexus::Nexus::builder().trust_tenant_header(true), register).await;
    let r = whoami(trusted.http, &["X-Tenant-ID: acme", "X-Request-ID: req-42"]);
    assert_eq!(r.status, 200, "{}", r.body);
    let me = &r.json()["outputs"]["me"];
    assert_eq!(
        (me["tenant"].as_str(), me["request_id"].as_str()),
        (Some("acme"), Some("req-42"))
    );
    let r = whoami(trusted.http, &[]);
    assert_eq!(r.status, 403, "no header, no tenant: {}", r.body);
    let r = whoami(trusted.http, &["X-Tenant-ID: a b"]);
    assert_eq!(
        (r.status, r.json()["error"]["field"].as_str()),
        (422, Some("x-tenant-id"))
    );
    let r = whoami(trusted.http, &["X-Request-ID: "]);
    assert_eq!(
        (r.status, r.json()["error"]["field"].as_str()),
        (422, Some("x-request-id")),
        "a malformed request id is refused, not replaced"
    );
    let client = mcp_with_tenant(trusted.mcp).await;
    let r = call(&client, "whoami", &json!({})).await.unwrap();
    assert_ne!(r.is_error, Some(true), "{r:?}");
    assert_eq!(result_json(&r)["outputs"]["me"]["tenant"], "acme");
    client.cancel().await.unwrap();
}

/// Shutdown lets in-flight requests finish, then the server returns and
/// stops accepting connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish() {
    let db = probe_db().await;
    let mut wf = dataflow::WorkflowBuilder::new();
    wf.add_node("SlowNode", "slow", json!({"ms": "{{ms}}"}));
    let mut app = nexus::Nexus::builder().build(db.clone()).unwrap();
    app.register("slow", wf.build(&db).unwrap()).unwrap();
    let app = std::sync::Arc::new(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn({
        let app = app.clone();
        async move { app.serve_http_on(listener).await }
    });
    let in_flight = post(
        addr,
        "/workflows/slow/execute".into(),
        br#"{"inputs": {"ms": 600}}"#.to_vec(),
    );
    let stop = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        app.shutdown();
    };
    let (r, ()) = tokio::join!(in_flight, stop);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["outputs"]["slow"]["slept"], 600);
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops after the request")
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
}

async fn probe_db() -> dataflow::DataFlow {
    // Only `Probe`: `auth::Memo` is tenant-scoped and has its own database.
    dataflow::DataFlow::builder("sqlite::memory:")
        .models(&[&<Probe as dataflow::Model>::SCHEMA])
        .build()
        .await
        .unwrap()
}

fn probe_workflow(db: &dataflow::DataFlow) -> dataflow::Workflow {
    let mut wf = dataflow::WorkflowBuilder::new();
    wf.add_node("ProbeCountNode", "count", json!({}));
    wf.build(db).unwrap()
}

/// Sends an `initialize` POST to `/mcp` with the `Host` header `host` and
/// returns the HTTP status.
fn initialize_status(addr: SocketAddr, host: &str) -> u16 {
    use std::io::{Read, Write};
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}})
    .to_string();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head).to_string();
    head[9..12]
        .parse()
        .unwrap_or_else(|_| panic!("no status in {head:?}"))
}

/// rmcp refuses `Host` headers other than loopback names and the ones
/// configured (DNS-rebinding protection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_accepts_only_allowed_hosts() {
    let db = probe_db().await;
    let mut app = nexus::Nexus::builder().build(db.clone()).unwrap();
    app.register("count", probe_workflow(&db)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(nexus::mcp::serve_http(
        app.mcp_server(),
        listener,
        vec!["mcp.internal".into()],
    ));
    let port = addr.port();
    let statuses = tokio::task::spawn_blocking(move || {
        [
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            "mcp.internal".to_string(),
            "evil.example".to_string(),
        ]
        .map(|host| initialize_status(addr, &host))
    })
    .await
    .unwrap();
    assert_eq!(statuses, [200, 200, 200, 403]);
    server.abort();
}

/// schemathesis (a peer OpenAPI fuzzer, pinned by `.ci/run`) against the
/// example server on SQLite, every check on, a bounded budget: the OpenAPI
/// document and the server's behaviour agree (valid requests are accepted,
/// invalid ones refused with the documented error body, never a 500).
#[test]
fn schemathesis_finds_nothing() {
    let Some(st) = support::peer_tool("schemathesis") else {
        return;
    };
    let s = server(&support::sqlite_url("nexus_schemathesis"));
    let scratch =
        std::env::temp_dir().join(format!("dataflow-schemathesis-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let out = Command::new(st)
        .arg("run")
        .arg(format!("{}/openapi.json", s.base()))
        .args([
            "--checks",
            "all",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--no-color",
        ])
        // Its example database and reports go to a scratch directory.
        .current_dir(&scratch)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("No issues found"), "{text}");
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

    let run = |workflow: &str, inputs: Value| {
        let r = request(
            s.addr,
            "POST",
            &format!("/workflows/{workflow}/execute"),
            Some(json!({"inputs": inputs}).to_string().as_bytes()),
        );
        (r.status, r.json())
    };
    let (status, _) = run(
        "start_conversation",
        json!({"user_id": "nobody", "token": "t", "expires_at": "2030-01-01T00:00:00Z"}),
    );
    assert_eq!(status, 409, "fk_violation: the user does not exist");
    let (status, created) = run("create_user", json!({"email": "e@x.io"}));
    assert_eq!(status, 200);
    // A run over MCP is in the same stream.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let via_mcp = rt.block_on(async {
        let client = s.mcp_client().await;
        let r = call(
            &client,
            "get_user",
            &json!({"id": created["outputs"]["create"]["id"]}),
        )
        .await
        .unwrap();
        client.cancel().await.unwrap();
        result_json(&r)
    });
    // A failed run whose input holds a secret: the 404 quotes only the
    // start of it, and its `failed` event carries no input at all.
    let secret = format!("sk_live_{}", "9".repeat(400));
    let (status, body) = run("get_user", json!({"id": secret}));
    assert_eq!(status, 404, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.len() < 300, "{message}");
    assert!(message.contains("… (408 bytes)"), "{message}");

    let mut text = String::new();
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    while text.matches("\"event\":\"failed\"").count() < 2 {
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
            ("create_user", "created"),
            ("get_user", "started"),
            ("get_user", "node_finished"),
            ("get_user", "finished"),
            ("get_user", "started"),
            ("get_user", "node_finished"),
            ("get_user", "failed"),
        ]
    );
    assert_eq!(events[2]["code"], "fk_violation");
    assert_eq!(events[12]["code"], "not_found");
    assert_eq!(events[12]["node"], "user");
    assert_eq!(events[12]["model"], "User");
    // The model change, after the run that made it.
    assert_eq!(
        (
            &events[6]["model"],
            &events[6]["record_id"],
            &events[6]["run_id"]
        ),
        (
            &json!("User"),
            &created["outputs"]["create"]["id"],
            &created["run_id"]
        )
    );
    assert!(
        !text.contains("sk_live"),
        "events carry no input values: {text}"
    );
    assert!(events.iter().all(|e| e.get("message").is_none()));
    assert_eq!(events[5]["run_id"], created["run_id"]);
    assert_eq!(events[9]["run_id"], via_mcp["run_id"]);

    let metrics = request(s.addr, "GET", "/metrics", None).body;
    for line in [
        r#"nexus_requests_total{channel="http",code="ok",workflow="create_user"} 1"#,
        r#"nexus_requests_total{channel="http",code="fk_violation",workflow="start_conversation"} 1"#,
        r#"nexus_requests_total{channel="mcp",code="ok",workflow="get_user"} 1"#,
        r#"nexus_request_duration_seconds_bucket{channel="mcp","#,
        r#"nexus_node_duration_seconds_count{node="create",workflow="create_user"} 1"#,
        "dataflow_pool_connections ",
        r#"dataflow_node_calls_total{model="User",op="Create"} "#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
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
    for (body, status) in [
        (&br#"{"inputs": {}, "mode": "later"}"#[..], 422),
        (&br#"{"input": {}}"#[..], 422),
    ] {
        let r = request(s.addr, "POST", "/workflows/create_user/execute", Some(body));
        assert_eq!(r.status, status, "{}", r.body);
        assert_eq!(r.json()["error"]["code"], "validation");
    }
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

/// SIGTERM stops the server (HTTP and MCP) while a client holds an MCP
/// session and an SSE stream open, and it exits cleanly.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_with_open_sessions() {
    let mut s = server(&support::sqlite_url("nexus_sigterm"));
    let client = s.mcp_client().await;
    assert_eq!(client.list_all_tools().await.unwrap().len(), 4);
    let mut sse = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut sse,
        format!("GET /events HTTP/1.1\r\nHost: {}\r\n\r\n", s.addr).as_bytes(),
    )
    .await
    .unwrap();
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the server did not stop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    drop(client);
}

/// A run that fails after some nodes finished says which, with their
/// outputs, on every channel: HTTP (sync and async), MCP, the CLI (`--url`,
/// as a subprocess) and the Rust API. The workflow is not transactional,
/// so what `first` wrote stays written, and the body is how callers learn it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_says_what_completed_on_every_channel() {
    // Named `create_user` with an `email` input, so the example's CLI can
    // be this server's client over `--url`.
    let s = InProcess::start_with(nexus::Nexus::builder(), |app, db| {
        let mut wf = dataflow::WorkflowBuilder::new();
        wf.add_node("ProbeCreateNode", "first", json!({"id": "{{email}}"}))
            .add_node("ProbeCreateNode", "second", json!({}))
            .add_connection("first", "id", "second", "id");
        app.register("create_user", wf.build(db).unwrap()).unwrap();
    })
    .await;
    let check = |channel: &str, body: &Value, id: &str| {
        assert_eq!(
            body["error"]["code"], "unique_violation",
            "{channel}: {body}"
        );
        assert_eq!(body["error"]["node"], "second", "{channel}: {body}");
        assert_eq!(body["completed"]["first"]["id"], id, "{channel}: {body}");
        assert!(
            body["completed"].get("second").is_none(),
            "{channel}: {body}"
        );
    };

    let r = request(
        s.http,
        "POST",
        "/workflows/create_user/execute",
        Some(json!({"inputs": {"email": "k1"}}).to_string().as_bytes()),
    );
    assert_eq!(r.status, 409);
    check("http", &r.json(), "k1");

    let r = request(
        s.http,
        "POST",
        "/workflows/create_user/execute",
        Some(
            json!({"inputs": {"email": "k2"}, "mode": "async"})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let run = r.json()["links"]["run"].as_str().unwrap().to_string();
    let started = Instant::now();
    let status = loop {
        let status = request(s.http, "GET", &run, None).json();
        if status["status"] != "running" {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status["status"], "failed");
    check("http async", &status, "k2");

    let client = s.mcp_client().await;
    let r = call(&client, "create_user", &json!({"email": "k3"}))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(true));
    check("mcp", &result_json(&r), "k3");
    client.cancel().await.unwrap();

    let e = s
        .app
        .execute("create_user", json!({"email": "k4"}))
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "unique_violation");
    assert_eq!(e.completed()["first"]["id"], "k4");

    let out = example(&support::sqlite_url("nexus_completed_cli"))
        .args([
            "run",
            "create_user",
            "--email",
            "k5",
            "--url",
            &format!("http://{}", s.http),
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check(
        "cli --url",
        &serde_json::from_slice(&out.stdout).unwrap(),
        "k5",
    );
    let out = example(&support::sqlite_url("nexus_completed_cli"))
        .args([
            "run",
            "create_user",
            "--email",
            "k6",
            "--url",
            &format!("http://{}", s.http),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error[unique_violation]"), "{stderr}");
    assert!(
        stderr.contains(
            "completed before the failure (written unless the workflow is transactional): first"
        ),
        "{stderr}"
    );

    // What completed stays written: this run was not transactional.
    let n = s
        .app
        .db()
        .execute("ProbeCountNode", json!({}))
        .await
        .unwrap();
    assert_eq!(n["count"], 6);
}

// ------------------------------------------------------------------ the options

/// An application with one workflow, `count`, built with `options`, serving
/// its HTTP API and MCP in this process on loopback listeners of its own.
struct InProcess {
    app: std::sync::Arc<nexus::Nexus>,
    http: SocketAddr,
    mcp: SocketAddr,
}

impl InProcess {
    async fn start(options: nexus::NexusBuilder) -> InProcess {
        Self::start_with(options, |_, _| {}).await
    }

    /// [`start`](Self::start), with more workflows registered by `register`.
    async fn start_with(
        options: nexus::NexusBuilder,
        register: impl FnOnce(&mut nexus::Nexus, &dataflow::DataFlow),
    ) -> InProcess {
        let db = probe_db().await;
        let mut app = options.build(db.clone()).unwrap();
        app.register("count", probe_workflow(&db)).unwrap();
        register(&mut app, &db);
        let app = std::sync::Arc::new(app);
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (http_addr, mcp_addr) = (http.local_addr().unwrap(), mcp.local_addr().unwrap());
        let a = app.clone();
        tokio::spawn(async move { a.serve_http_on(http).await });
        let a = app.clone();
        tokio::spawn(async move { a.serve_mcp_on(mcp).await });
        InProcess {
            app,
            http: http_addr,
            mcp: mcp_addr,
        }
    }

    async fn mcp_client(&self) -> RunningService<RoleClient, ()> {
        mcp_client_at(self.mcp).await
    }

    /// `POST /workflows/{name}/execute` with no inputs: (status, body).
    async fn execute(&self, name: &str) -> (u16, Value) {
        let r = post(
            self.http,
            format!("/workflows/{name}/execute"),
            br#"{"inputs": {}}"#.to_vec(),
        )
        .await;
        (r.status, r.json())
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.app.shutdown();
    }
}

async fn mcp_client_at(addr: SocketAddr) -> RunningService<RoleClient, ()> {
    let transport = StreamableHttpClientTransport::from_uri(format!("http://{addr}/mcp"));
    tokio::time::timeout(Duration::from_secs(30), ().serve(transport))
        .await
        .expect("MCP initialize in time")
        .unwrap()
}

/// `GET path` answers 404 with the `not_found` error body.
async fn assert_not_served(addr: SocketAddr, path: &str) {
    let r = get(addr, path).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (404, Some("not_found")),
        "GET {path}: {}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_off_serves_no_metrics() {
    let on = InProcess::start(nexus::Nexus::builder()).await;
    assert_eq!(on.execute("count").await.0, 200);
    let metrics = get(on.http, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .body
        .contains(r#"nexus_requests_total{channel="http",code="ok",workflow="count"} 1"#));

    let off = InProcess::start(nexus::Nexus::builder().enable_monitoring(false)).await;
    let (status, body) = off.execute("count").await;
    assert_eq!(
        (status, &body["outputs"]["count"]["count"]),
        (200, &json!(0))
    );
    assert_not_served(off.http, "/metrics").await;
    // Everything else is still served.
    assert_eq!(get(off.http, "/workflows").await.status, 200);
    assert_eq!(get(off.http, "/health").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_off_serves_no_events() {
    let off = InProcess::start(nexus::Nexus::builder().enable_sse_transport(false)).await;
    assert_not_served(off.http, "/events").await;
    assert_eq!(off.execute("count").await.0, 200);
    assert_eq!(get(off.http, "/metrics").await.status, 200);

    // On (the default), `/events` answers with an event stream.
    let on = InProcess::start(nexus::Nexus::builder()).await;
    let head = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(on.http).unwrap();
        write!(s, "GET /events HTTP/1.1\r\nHost: {}\r\n\r\n", on.http).unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        String::from_utf8_lossy(&head).into_owned()
    })
    .await
    .unwrap();
    assert_eq!(head, "HTTP/1.1 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_off_lists_no_workflows_but_runs_a_known_name() {
    let s = InProcess::start(nexus::Nexus::builder().enable_discovery(false)).await;
    for path in ["/workflows", "/workflows/count", "/openapi.json"] {
        assert_not_served(s.http, path).await;
    }
    let (status, body) = s.execute("count").await;
    assert_eq!(
        (status, &body["outputs"]["count"]["count"]),
        (200, &json!(0))
    );
    let (status, body) = s.execute("nope").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(!message.contains("count"), "names no workflow: {message}");

    let client = s.mcp_client().await;
    assert_eq!(
        client.list_all_tools().await.unwrap().len(),
        0,
        "tools/list is empty"
    );
    let instructions = client
        .peer_info()
        .and_then(|i| i.instructions.clone())
        .unwrap_or_default();
    assert!(
        instructions.contains("does not list its tools"),
        "{instructions}"
    );
    let r = call(&client, "count", &json!({})).await.unwrap();
    assert_eq!(result_json(&r)["outputs"]["count"]["count"], 0);
    match call(&client, "nope", &json!({})).await {
        Err(ServiceError::McpError(e)) => {
            assert_eq!(e.code, RpcCode::INVALID_PARAMS);
            assert!(!e.message.contains("count"), "names no tool: {}", e.message);
        }
        other => panic!("an unknown tool is a protocol error: {other:?}"),
    }
    client.cancel().await.unwrap();

    // The CLI is the operator's: it still runs (and lists) the workflows.
    assert_eq!(
        s.app.run_from(["app", "run", "count", "--json"]).await,
        std::process::ExitCode::SUCCESS
    );

    // On (the default) the same application lists them.
    let on = InProcess::start(nexus::Nexus::builder()).await;
    let list = get(on.http, "/workflows").await.json();
    assert_eq!(list["workflows"][0]["name"], "count");
    let client = on.mcp_client().await;
    assert_eq!(client.list_all_tools().await.unwrap().len(), 1);
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_transport_off_serves_mcp_alone() {
    let db = probe_db().await;
    let (api_port, mcp_port) = (free_port(), free_port());
    let mut app = nexus::Nexus::builder()
        .api_port(api_port)
        .mcp_port(mcp_port)
        .enable_http_transport(false)
        .build(db.clone())
        .unwrap();
    app.register("count", probe_workflow(&db)).unwrap();
    let app = std::sync::Arc::new(app);
    let server = tokio::spawn({
        let app = app.clone();
        async move { app.serve().await }
    });
    let mcp: SocketAddr = format!("127.0.0.1:{mcp_port}").parse().unwrap();
    let started = Instant::now();
    while tokio::net::TcpStream::connect(mcp).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "MCP did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", api_port))
            .await
            .is_err(),
        "nothing listens on the API port"
    );
    let client = mcp_client_at(mcp).await;
    let r = call(&client, "count", &json!({})).await.unwrap();
    assert_eq!(result_json(&r)["outputs"]["count"]["count"], 0);
    client.cancel().await.unwrap();

    // Serving the HTTP API by hand is refused, not silently done.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = app.serve_http_on(listener).await.unwrap_err();
    assert_eq!(e.code(), "config", "{e}");
    assert!(e.message().contains("enable_http_transport(false)"), "{e}");
    assert_eq!(app.serve_http().await.unwrap_err().code(), "config");
    // The CLI still runs workflows in the process.
    assert_eq!(
        app.run_from(["app", "run", "count", "--json"]).await,
        std::process::ExitCode::SUCCESS
    );

    app.shutdown();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
}

/// `run` returns the exit code instead of exiting the process.
#[tokio::test]
async fn run_returns_the_exit_code() {
    let db = probe_db().await;
    let mut app = nexus::Nexus::builder().build(db.clone()).unwrap();
    app.register("count", probe_workflow(&db)).unwrap();
    use std::process::ExitCode;
    for (args, code) in [
        (&["app", "run", "count", "--json"][..], ExitCode::SUCCESS),
        (&["app", "workflows"][..], ExitCode::SUCCESS),
        (&["app", "--bogus"][..], ExitCode::from(2)),
        (&["app", "run", "nope", "--json"][..], ExitCode::from(4)),
        (
            &["app", "run", "count", "--inputs", "[1]"][..],
            ExitCode::from(3),
        ),
    ] {
        assert_eq!(app.run_from(args.iter().copied()).await, code, "{args:?}");
    }
    // A server that cannot start: its error's exit code (config, 8).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app = nexus::Nexus::builder()
        .api_port(taken.local_addr().unwrap().port())
        .mcp_port(free_port())
        .build(db)
        .unwrap();
    assert_eq!(app.run_from(["app", "serve"]).await, ExitCode::from(8));
}

// ------------------------------------------------------------------ hardening

/// Issue 10, items 2, 3, 9 and part of 12: the listeners' limits (timeouts,
/// connections, MCP sessions, async run store), the Host / Origin rule on
/// both listeners, JSON answers for unrouted requests, `nosniff`, CORS, and
/// configuration errors — each over real loopback sockets.
mod hardening {
    use super::*;
    use std::io::{Read, Write};

    /// Sends `head` (a request without its final blank line) and `body` on a
    /// new connection, `Connection: close`, and reads the whole answer.
    fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> support::http::Response {
        let head = format!(
            "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        support::http::send(addr, head.as_bytes(), body)
    }

    fn header<'a>(r: &'a support::http::Response, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The start of a body, for assertion messages (results can be megabytes).
    fn start(body: &str) -> &str {
        &body[..body.floor_char_boundary(300)]
    }

    /// (status, error code) of an answer that must be the JSON error object.
    fn error_of(r: &support::http::Response) -> (u16, String) {
        let body: Value = serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {}", r.status, start(&r.body)));
        let code = body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}: an error with a message: {}",
            r.status,
            start(&r.body)
        );
        (r.status, code)
    }

    const INITIALIZE: &str = r#"{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}"#;

    /// An MCP `initialize` POST with extra header lines.
    fn initialize(addr: SocketAddr, headers: &str) -> support::http::Response {
        exchange(
            addr,
            &format!(
                "POST /mcp HTTP/1.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n{headers}"
            ),
            INITIALIZE.as_bytes(),
        )
    }

    async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        tokio::task::spawn_blocking(f).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn foreign_hosts_and_origins_are_refused_on_both_listeners() {
        let s = InProcess::start(nexus::Nexus::builder()).await;
        let (http, mcp) = (s.http, s.mcp);
        let answers = blocking(move || {
            let run = |host: &str, origin: Option<&str>| {
                let origin = origin.map(|o| format!("\r\nOrigin: {o}")).unwrap_or_default();
                exchange(
                    http,
                    &format!("POST /workflows/count/execute HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json{origin}"),
                    br#"{"inputs": {}}"#,
                )
            };
            let port = http.port();
            let mcp_port = mcp.port();
            (
                run(&format!("127.0.0.1:{port}"), None),
                run(&format!("localhost:{port}"), Some(&format!("http://localhost:{port}"))),
                run("evil.com", None),
                run(&format!("evil.com:{port}"), None),
                run(&format!("127.0.0.1:{port}"), Some("http://evil.com")),
                initialize(mcp, &format!("Host: 127.0.0.1:{mcp_port}")),
                initialize(mcp, &format!("Host: localhost:{mcp_port}\r\nOrigin: http://localhost:5173")),
                initialize(mcp, &format!("Host: 127.0.0.1:{mcp_port}\r\nOrigin: http://evil.com")),
                initialize(mcp, &format!("Host: 127.0.0.1:{mcp_port}\r\nOrigin: null")),
                initialize(mcp, "Host: evil.com"),
            )
        })
        .await;
        assert_eq!(answers.0.status, 200, "{}", answers.0.body);
        assert_eq!(answers.1.status, 200, "{}", answers.1.body);
        for r in [&answers.2, &answers.3, &answers.4] {
            assert_eq!(error_of(r), (403, "forbidden".into()), "HTTP: {}", r.body);
        }
        assert_eq!(answers.5.status, 200, "{}", answers.5.body);
        assert_eq!(answers.6.status, 200, "{}", answers.6.body);
        for r in [&answers.7, &answers.8, &answers.9] {
            assert_eq!(error_of(r), (403, "forbidden".into()), "MCP: {}", r.body);
        }
        let message = answers.2.json()["error"]["message"].to_string();
        assert!(
            message.contains("evil.com") && message.contains("allowed_hosts"),
            "names the host and the option: {message}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unrouted_requests_answer_json_with_nosniff_and_no_cors() {
        let s = InProcess::start(nexus::Nexus::builder()).await;
        let (http, mcp) = (s.http, s.mcp);
        let answers = blocking(move || {
            let at = |addr: SocketAddr, method: &str, path: &str, extra: &str| {
                exchange(
                    addr,
                    &format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json{extra}"),
                    b"",
                )
            };
            vec![
                at(http, "GET", "/nope", ""),
                at(http, "DELETE", "/health", ""),
                at(http, "GET", "/workflows/count/execute", ""),
                at(mcp, "GET", "/nope", ""),
                at(http, "GET", "/health", &format!("\r\nOrigin: http://{http}")),
            ]
        })
        .await;
        assert_eq!(error_of(&answers[0]), (404, "not_found".into()));
        assert_eq!(error_of(&answers[1]), (405, "method_not_allowed".into()));
        assert_eq!(error_of(&answers[2]), (405, "method_not_allowed".into()));
        assert_eq!(error_of(&answers[3]), (404, "not_found".into()));
        assert_eq!(answers[4].status, 200);
        for r in &answers {
            assert_eq!(
                header(r, "x-content-type-options"),
                Some("nosniff"),
                "{:?}",
                r.headers
            );
            assert_eq!(
                header(r, "access-control-allow-origin"),
                None,
                "CORS is off by default"
            );
        }
        assert!(
            header(&answers[1], "allow").is_some_and(|a| a.contains("GET")),
            "a 405 says what is allowed: {:?}",
            answers[1].headers
        );
    }

    /// A malformed port in the example's environment is a configuration
    /// error naming the variable, not a silent fallback to the default port.
    #[test]
    fn a_bad_port_variable_is_a_config_error() {
        for var in ["NEXUS_API_PORT", "NEXUS_MCP_PORT"] {
            let mut child = example(&support::sqlite_url("nexus_bad_port"))
                .env("NEXUS_API_PORT", free_port().to_string())
                .env("NEXUS_MCP_PORT", free_port().to_string())
                .env(var, "abc")
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let started = Instant::now();
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                if started.elapsed() > Duration::from_secs(20) {
                    let _ = child.kill();
                    panic!("{var}=abc: the example served instead of exiting");
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            assert_eq!(status.code(), Some(8), "{var}=abc: {stderr}");
            assert!(
                stderr.contains("error[config]") && stderr.contains(var) && stderr.contains("abc"),
                "{stderr}"
            );
        }
    }

    /// The peak resident set of process `pid`, in MiB (Linux).
    fn peak_rss_mib(pid: u32) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024)
    }

    /// The issue's flood: records with ~900 KB names, then async
    /// `list_users` runs whose results are ~2.7 MB each (405 MB in all).
    /// Before the bounds every result stayed in memory: this test measured a
    /// peak RSS of 587 MiB (and the issue 1.5 GB for 480 runs). Now, with the
    /// default bounds (16 runs at once, 64 MiB of outcomes kept), starts
    /// beyond 16 are refused with `overloaded` and `Retry-After`, the oldest
    /// outcomes answer 404, the newest is kept, and the peak stays under 400
    /// MiB whatever the flood's length (measured: 230–330 MiB).
    #[cfg(target_os = "linux")]
    #[test]
    fn an_async_flood_stays_within_the_store_bound() {
        const RUNS: usize = 150;
        let s = server(&support::sqlite_url("nexus_async_flood"));
        for i in 0..3 {
            let name = format!("{i}").repeat(900_000);
            let r = request(
                s.addr,
                "POST",
                "/workflows/create_user/execute",
                Some(
                    json!({"inputs": {"email": format!("big{i}@x.io"), "full_name": name}})
                        .to_string()
                        .as_bytes(),
                ),
            );
            assert_eq!(r.status, 200, "{}", start(&r.body));
        }
        let body = json!({"inputs": {"active": true, "limit": 100}, "mode": "async"}).to_string();
        let started = Instant::now();
        let mut ids = Vec::new();
        let mut refused = 0;
        while ids.len() < RUNS {
            let r = request(
                s.addr,
                "POST",
                "/workflows/list_users/execute",
                Some(body.as_bytes()),
            );
            match r.status {
                202 => ids.push(r.json()["run_id"].as_str().unwrap().to_string()),
                503 => {
                    assert_eq!(error_of(&r), (503, "overloaded".into()));
                    assert!(header(&r, "retry-after").is_some(), "{:?}", r.headers);
                    refused += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => panic!("{other}: {}", r.body),
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the flood took too long"
            );
        }
        // The newest run finishes and is kept with its result.
        let last = ids.last().unwrap();
        let done = loop {
            let r = request(s.addr, "GET", &format!("/runs/{last}"), None);
            assert_eq!(r.status, 200, "{}", start(&r.body));
            let v = r.json();
            if v["status"] != "running" {
                break v;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "the last run never finished"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(done["status"], "finished");
        assert_eq!(done["result"]["outputs"]["users"]["count"], 3);
        let peak = peak_rss_mib(s.child.id()).expect("VmHWM");
        eprintln!("async flood: {RUNS} runs of ~2.7 MB, {refused} refused (overloaded), peak RSS {peak} MiB");
        // The oldest results were forgotten: a JSON `not_found`.
        let r = request(s.addr, "GET", &format!("/runs/{}", ids[0]), None);
        assert_eq!(error_of(&r), (404, "not_found".into()));
        assert!(peak < 400, "peak RSS {peak} MiB");
    }

    /// Registers `slow`: sleeps `ms` milliseconds (a request in progress).
    fn with_slow(app: &mut nexus::Nexus, db: &dataflow::DataFlow) {
        let mut wf = dataflow::WorkflowBuilder::new();
        wf.add_node("SlowNode", "slow", json!({"ms": "{{ms}}"}));
        app.register("slow", wf.build(db).unwrap()).unwrap();
    }

    /// Whether the server closes `s` within `limit` (EOF or reset; nothing
    /// is answered to a client that never sent a complete head).
    fn closed_within(mut s: &std::net::TcpStream, limit: Duration) -> bool {
        s.set_read_timeout(Some(limit.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(0) => true,
            Ok(n) => panic!("answered: {}", String::from_utf8_lossy(&buf[..n])),
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }

    /// A kept-alive request on `s`: (status, body); the body has a length.
    fn keep_alive_get(s: &mut std::net::TcpStream, addr: SocketAddr, path: &str) -> (u16, String) {
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .expect("a content length");
        let mut body = vec![0u8; length];
        s.read_exact(&mut body).unwrap();
        (
            head[9..12].parse().unwrap(),
            String::from_utf8(body).unwrap(),
        )
    }

    /// A bounded slow-client script on loopback: 200 silent sockets, 20 that
    /// send part of a head and stop, 10 that trickle a byte every 100 ms; all
    /// are closed by the header-read timeout while a legitimate request is
    /// answered at once. A kept-alive connection may idle longer than the
    /// header-read timeout, and is closed after the idle timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_and_idle_clients_are_closed_while_others_are_served() {
        let options = nexus::Nexus::builder()
            .header_read_timeout(Duration::from_millis(500))
            .idle_timeout(Duration::from_millis(2500))
            .max_connections(1000);
        let s = InProcess::start(options).await;
        let (http, mcp) = (s.http, s.mcp);
        blocking(move || {
            for addr in [http, mcp] {
                let opened = Instant::now();
                let silent: Vec<_> = (0..200)
                    .map(|_| std::net::TcpStream::connect(addr).unwrap())
                    .collect();
                let partial: Vec<_> = (0..20)
                    .map(|_| {
                        let mut s = std::net::TcpStream::connect(addr).unwrap();
                        write!(s, "GET /health HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ").unwrap();
                        s
                    })
                    .collect();
                let trickling: Vec<_> = (0..10)
                    .map(|_| {
                        let mut s = std::net::TcpStream::connect(addr).unwrap();
                        let reader = s.try_clone().unwrap();
                        let writer = std::thread::spawn(move || {
                            let started = Instant::now();
                            // A byte every 100 ms until the server hangs up (bounded: 10 s).
                            for b in "GET /health HTTP/1.1\r\nX-Slow: ".bytes().cycle() {
                                if s.write_all(&[b]).is_err()
                                    || started.elapsed() > Duration::from_secs(10)
                                {
                                    break;
                                }
                                std::thread::sleep(Duration::from_millis(100));
                            }
                        });
                        (reader, writer)
                    })
                    .collect();
                // Served at once meanwhile (the MCP listener's unknown path: a JSON 404).
                let asked = Instant::now();
                let r = request(addr, "GET", "/health", None);
                assert!(
                    asked.elapsed() < Duration::from_millis(400),
                    "answered in {:?}",
                    asked.elapsed()
                );
                assert!(
                    r.status == 200 || r.status == 404,
                    "{} {}",
                    r.status,
                    r.body
                );
                let limit = Duration::from_secs(6);
                let all_closed = silent
                    .iter()
                    .chain(&partial)
                    .all(|s| closed_within(s, limit.saturating_sub(opened.elapsed())));
                assert!(all_closed, "silent and partial sockets closed in {limit:?}");
                for (reader, writer) in trickling {
                    assert!(
                        closed_within(&reader, limit.saturating_sub(opened.elapsed())),
                        "a trickling head does not extend the timeout"
                    );
                    writer.join().unwrap();
                }
                assert!(
                    opened.elapsed() >= Duration::from_millis(450),
                    "not closed before the timeout: {:?}",
                    opened.elapsed()
                );
            }

            // Keep-alive: idle longer than the header-read timeout, then closed.
            let mut s = std::net::TcpStream::connect(http).unwrap();
            assert_eq!(keep_alive_get(&mut s, http, "/health").0, 200);
            std::thread::sleep(Duration::from_millis(1200));
            assert_eq!(
                keep_alive_get(&mut s, http, "/health").0,
                200,
                "idle 1.2 s, under idle_timeout: still open"
            );
            let idle = Instant::now();
            assert!(
                closed_within(&s, Duration::from_secs(8)),
                "closed when idle"
            );
            assert!(
                idle.elapsed() >= Duration::from_millis(2000),
                "closed by idle_timeout (2.5 s), not sooner: {:?}",
                idle.elapsed()
            );
        })
        .await;
    }

    /// At `max_connections`, a new connection takes the place of the one
    /// that has waited longest for a request; connections with a request in
    /// progress are never taken, and a new one then waits for one to finish.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_the_connection_limit_waiting_connections_make_room() {
        let options = nexus::Nexus::builder()
            .header_read_timeout(Duration::from_secs(30))
            .max_connections(8);
        let s = InProcess::start_with(options, with_slow).await;
        let http = s.http;
        blocking(move || {
            let silent: Vec<_> = (0..8)
                .map(|_| std::net::TcpStream::connect(http).unwrap())
                .collect();
            std::thread::sleep(Duration::from_millis(100));
            let asked = Instant::now();
            let r = request(http, "GET", "/health", None);
            assert_eq!(r.status, 200, "{}", r.body);
            assert!(
                asked.elapsed() < Duration::from_secs(5),
                "served long before the 30 s timeout: {:?}",
                asked.elapsed()
            );
            let closed = silent
                .iter()
                .filter(|s| closed_within(s, Duration::from_millis(200)))
                .count();
            assert!(closed >= 1, "a silent connection made room");
        })
        .await;

        // Every connection busy: the next one waits, nobody is cut off.
        let options = nexus::Nexus::builder().max_connections(2);
        let s = InProcess::start_with(options, with_slow).await;
        let slow = || {
            post(
                s.http,
                "/workflows/slow/execute".into(),
                br#"{"inputs": {"ms": 800}}"#.to_vec(),
            )
        };
        let started = Instant::now();
        let third = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let r = get(s.http, "/health").await;
            (r, started.elapsed())
        };
        let (a, b, (c, waited)) = tokio::join!(slow(), slow(), third);
        assert_eq!((a.status, b.status), (200, 200), "{} {}", a.body, b.body);
        assert_eq!(c.status, 200, "{}", c.body);
        assert!(
            waited >= Duration::from_millis(700),
            "the third connection waited for a slot: {waited:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn too_many_async_runs_are_refused_with_retry_after() {
        let s = InProcess::start_with(nexus::Nexus::builder().max_async_runs(2), with_slow).await;
        let start = || {
            post(
                s.http,
                "/workflows/slow/execute".into(),
                br#"{"inputs": {"ms": 600}, "mode": "async"}"#.to_vec(),
            )
        };
        let (a, b) = tokio::join!(start(), start());
        assert_eq!((a.status, b.status), (202, 202), "{} {}", a.body, b.body);
        let refused = start().await;
        assert_eq!(error_of(&refused), (503, "overloaded".into()));
        assert_eq!(header(&refused, "retry-after"), Some("1"));
        assert!(refused.body.contains("max_async_runs"), "{}", refused.body);
        // Once they finish there is room again.
        let id = a.json()["run_id"].as_str().unwrap().to_string();
        let started = Instant::now();
        while get(s.http, &format!("/runs/{id}")).await.json()["status"] == "running" {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the run never finished"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(start().await.status, 202);
    }

    /// At `mcp_max_sessions` a new session is refused with `overloaded` and
    /// `Retry-After`; sessions idle for `mcp_session_idle` close and make room.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mcp_sessions_are_capped_and_expire_when_idle() {
        let options = nexus::Nexus::builder()
            .mcp_max_sessions(3)
            .mcp_session_idle(Duration::from_millis(700));
        let s = InProcess::start(options).await;
        let mcp = s.mcp;
        blocking(move || {
            let host = format!("Host: {mcp}");
            let sessions: Vec<String> = (0..3)
                .map(|_| {
                    let r = initialize(mcp, &host);
                    assert_eq!(r.status, 200, "{}", r.body);
                    header(&r, "mcp-session-id").expect("a session").to_string()
                })
                .collect();
            let refused = initialize(mcp, &host);
            assert_eq!(error_of(&refused), (503, "overloaded".into()));
            assert_eq!(header(&refused, "retry-after"), Some("1"));
            assert!(refused.body.contains("mcp_max_sessions"), "{}", refused.body);
            // A request on an open session is not refused.
            let ping = exchange(
                mcp,
                &format!(
                    "POST /mcp HTTP/1.1\r\n{host}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: {}",
                    sessions[0]
                ),
                br#"{"jsonrpc": "2.0", "method": "notifications/initialized"}"#,
            );
            assert_eq!(ping.status, 202, "{}", ping.body);
            // Idle sessions close; then there is room.
            let started = Instant::now();
            loop {
                let r = initialize(mcp, &host);
                if r.status == 200 {
                    break;
                }
                assert_eq!(error_of(&r), (503, "overloaded".into()));
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "idle sessions never closed"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(started.elapsed() >= Duration::from_millis(400), "{:?}", started.elapsed());
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cors_and_allowed_hosts_when_configured() {
        let options = nexus::Nexus::builder()
            .cors(["https://app.example"])
            .allowed_hosts(["api.example", "mcp.example:3001"]);
        let s = InProcess::start(options).await;
        let (http, mcp) = (s.http, s.mcp);
        let answers = blocking(move || {
            let at = |addr: SocketAddr, method: &str, host: &str, extra: &str| {
                exchange(
                    addr,
                    &format!("{method} /health HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json{extra}"),
                    b"",
                )
            };
            vec![
                at(http, "GET", "api.example", "\r\nOrigin: https://app.example"),
                at(
                    http,
                    "OPTIONS",
                    &http.to_string(),
                    "\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type",
                ),
                at(http, "GET", "api.example:8080", "\r\nOrigin: https://other.example"),
                at(http, "GET", "mcp.example:3002", ""),
                initialize(mcp, "Host: mcp.example:3001\r\nOrigin: https://app.example"),
            ]
        })
        .await;
        assert_eq!(answers[0].status, 200, "{}", answers[0].body);
        assert_eq!(
            header(&answers[0], "access-control-allow-origin"),
            Some("https://app.example")
        );
        assert_eq!(
            answers[1].status, 200,
            "a preflight: {:?}",
            answers[1].headers
        );
        assert_eq!(
            header(&answers[1], "access-control-allow-origin"),
            Some("https://app.example")
        );
        assert!(
            header(&answers[1], "access-control-allow-methods").is_some_and(|m| m.contains("POST"))
        );
        assert_eq!(error_of(&answers[2]), (403, "forbidden".into()));
        assert_eq!(
            error_of(&answers[3]),
            (403, "forbidden".into()),
            "another port than the one listed"
        );
        assert_eq!(answers[4].status, 200, "{}", answers[4].body);
        assert_eq!(
            header(&answers[4], "access-control-allow-origin"),
            Some("https://app.example")
        );

        // `*` accepts every host.
        let any = InProcess::start(nexus::Nexus::builder().allowed_hosts(["*"])).await;
        let r = blocking(move || {
            exchange(
                any.http,
                "GET /health HTTP/1.1\r\nHost: anything.example",
                b"",
            )
        })
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }

    #[tokio::test]
    async fn malformed_hosts_origins_and_bounds_fail_at_build() {
        let db = probe_db().await;
        for (b, names) in [
            (
                nexus::Nexus::builder().allowed_hosts(["http://x/"]),
                "http://x/",
            ),
            (nexus::Nexus::builder().cors(["app.example"]), "app.example"),
            (
                nexus::Nexus::builder().max_connections(0),
                "max_connections",
            ),
            (
                nexus::Nexus::builder().mcp_session_idle(Duration::ZERO),
                "mcp_session_idle",
            ),
        ] {
            let e = b.build(db.clone()).err().expect("refused");
            assert_eq!(e.code(), "config", "{e}");
            assert!(e.message().contains(names), "{e}");
        }
    }

    /// A request body over the MCP transport's limit (4 MiB) is refused with
    /// the JSON `too_large` error like the HTTP API's (a tool call's
    /// arguments over 1 MiB are a `too_large` tool error: see the case table).
    #[test]
    fn an_oversized_mcp_body_is_413_too_large() {
        let s = server(&support::sqlite_url("nexus_mcp_big"));
        let mut stream = std::net::TcpStream::connect(s.mcp).unwrap();
        let body = format!(
            r#"{{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {{"name": "create_user", "arguments": {{"email": "{}"}}}}}}"#,
            "x".repeat(5 << 20)
        );
        let mut writer = stream.try_clone().unwrap();
        let head = format!(
            "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n",
            s.mcp,
            body.len()
        );
        // The server may answer before it has read it all: write on the side.
        let sending = std::thread::spawn(move || {
            let _ = writer.write_all(head.as_bytes());
            let _ = writer.write_all(body.as_bytes());
        });
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&raw).contains("}}") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&raw).into_owned();
        assert!(text.starts_with("HTTP/1.1 413"), "{}", start(&text));
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let error: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(error["error"]["code"], "too_large", "{body}");
        drop(stream);
        sending.join().unwrap();
    }
}

/// Authentication (`enable_auth`): the security table on HTTP, MCP and the
/// CLI with `--url`, API keys and OAuth client credentials on both
/// backends, the tenant of a token reaching a tenant-scoped model, the
/// failed sign-in limit, JWKS reload, and no secret in what the server
/// prints or answers.
mod auth {
    use super::*;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    const SECRET: &str = "a-test-secret-of-at-least-thirty-two-bytes";
    const ISSUER: &str = "https://id.test";
    const AUDIENCE: &str = "nexus-tests";

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/auth")
            .join(name)
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    /// Valid claims for `sub`, with `extra` merged over them.
    fn claims(extra: Value) -> Value {
        let mut c = json!({"sub": "user:1", "iss": ISSUER, "aud": AUDIENCE,
            "exp": now() + 600, "nbf": now() - 10, "roles": ["reader"]});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value, kid: Option<&str>) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn hs256(claims: &Value) -> String {
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
            claims,
            None,
        )
    }

    fn rs256(claims: &Value, kid: Option<&str>) -> String {
        let pem = std::fs::read(fixture("rsa_private.pem")).unwrap();
        sign(
            Algorithm::RS256,
            &EncodingKey::from_rsa_pem(&pem).unwrap(),
            claims,
            kid,
        )
    }

    /// `{"alg":"none","typ":"JWT"}`, base64url: an unsigned token's header.
    const NONE_HEADER: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";

    /// A token with `alg: none` and no signature, carrying valid claims.
    fn alg_none() -> String {
        let valid = hs256(&claims(json!({})));
        let payload = valid.split('.').nth(1).unwrap();
        format!("{NONE_HEADER}.{payload}.")
    }

    fn env_of<'a>(url_env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
        url_env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    /// The example server's variables for auth with every source.
    fn auth_env() -> Vec<(&'static str, String)> {
        vec![
            ("NEXUS_JWT_SECRET", SECRET.to_string()),
            (
                "NEXUS_JWT_PUBLIC_KEY",
                fixture("rsa_public.pem").display().to_string(),
            ),
            ("NEXUS_JWT_ISSUER", ISSUER.to_string()),
            ("NEXUS_JWT_AUDIENCE", AUDIENCE.to_string()),
            ("NEXUS_API_KEYS", "1".to_string()),
            ("NEXUS_AUTH_FAILURES_PER_MINUTE", "1000".to_string()),
        ]
    }

    /// `nexus_server keys <args> --json` on `url`: (exit code, JSON).
    async fn keys_cli(url: &str, args: &[&str]) -> (i32, Value) {
        let out = tokio::process::Command::from(example(url))
            .env("NEXUS_API_KEYS", "1")
            .arg("keys")
            .args(args)
            .arg("--json")
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
            panic!(
                "`keys {args:?}` printed no JSON: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), v)
    }

    /// `run list_users --url <server> --json`, with `--token` when given.
    async fn cli_remote(s: &Server, token: Option<&str>) -> (i32, Value) {
        let mut c = tokio::process::Command::from(example(&s.url));
        c.env_remove("NEXUS_TOKEN")
            .args(["run", "list_users", "--url", &s.base(), "--json"])
            .args(["--active", "true", "--limit", "10"]);
        if let Some(t) = token {
            c.args(["--token", t]);
        }
        let out = c.output().await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
            panic!(
                "run --url printed no JSON: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), v)
    }

    fn header<'a>(r: &'a support::http::Response, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `POST /workflows/list_users/execute` with these headers.
    async fn http_list(addr: SocketAddr, headers: Vec<String>) -> support::http::Response {
        tokio::task::spawn_blocking(move || {
            let h: Vec<&str> = headers.iter().map(String::as_str).collect();
            request_with(
                addr,
                "POST",
                "/workflows/list_users/execute",
                &h,
                Some(br#"{"inputs": {"active": true, "limit": 10}}"#),
            )
        })
        .await
        .unwrap()
    }

    /// An MCP `initialize` POST with these headers (what an MCP client sends first).
    async fn mcp_initialize(addr: SocketAddr, headers: Vec<String>) -> support::http::Response {
        tokio::task::spawn_blocking(move || {
            let mut h: Vec<&str> = headers.iter().map(String::as_str).collect();
            h.push("Accept: application/json, text/event-stream");
            let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}})
            .to_string();
            request_with(addr, "POST", "/mcp", &h, Some(body.as_bytes()))
        })
        .await
        .unwrap()
    }

    /// A real MCP client sending `Authorization: Bearer <token>` on every request.
    async fn mcp_client_with(addr: SocketAddr, token: &str) -> RunningService<RoleClient, ()> {
        let config =
            rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
                format!("http://{addr}/mcp"),
            )
            .auth_header(token.to_string());
        let transport = StreamableHttpClientTransport::from_config(config);
        tokio::time::timeout(Duration::from_secs(30), ().serve(transport))
            .await
            .expect("MCP initialize in time")
            .unwrap()
    }

    /// Every way to fail authentication, on HTTP, MCP over HTTP and the CLI
    /// with `--url`: 401 `unauthenticated` (exit code 9) with the same error
    /// object everywhere and the RFC 6750 challenge; valid JWTs (HS256,
    /// RS256) and API keys (either header) pass on every channel; `/metrics`
    /// needs the `metrics` role; nothing the server printed or answered
    /// holds a secret, a key or a token.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_security_table_is_the_same_on_every_channel() {
        let url = support::sqlite_url("auth-table");
        let (code, reader) = keys_cli(&url, &["create", "--name", "ci", "--role", "reader"]).await;
        assert_eq!(code, 0, "{reader}");
        let key = reader["key"].as_str().unwrap().to_string();
        assert!(key.starts_with("nxk_"), "{key}");
        let (_, revoked) = keys_cli(&url, &["create", "--name", "old", "--role", "reader"]).await;
        let (code, out) = keys_cli(&url, &["revoke", revoked["id"].as_str().unwrap()]).await;
        assert_eq!((code, &out["revoked"]), (0, &json!(true)), "{out}");
        let (code, again) = keys_cli(&url, &["revoke", revoked["id"].as_str().unwrap()]).await;
        assert_eq!(
            (code, again["error"]["code"].as_str()),
            (4, Some("not_found"))
        );
        let (_, expired) = keys_cli(&url, &["create", "--name", "brief", "--expires", "1s"]).await;
        let (code, bad) = keys_cli(&url, &["create", "--name", "x", "--expires", "soon"]).await;
        assert_eq!((code, bad["error"]["field"].as_str()), (3, Some("expires")));
        let env = auth_env();
        let s = server_with(&url, &env_of(&env), true);
        tokio::time::sleep(Duration::from_millis(2100)).await; // `brief` expires

        let unknown_key = format!("nxk_{}_{}", "0123456789abcdef", "f".repeat(64));
        let confusion = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(&std::fs::read(fixture("rsa_public.pem")).unwrap()).unwrap(),
            &claims(json!({})),
            None,
        );
        let cases: Vec<(&str, Option<String>, &str)> = vec![
            ("no token", None, "authentication required"),
            ("garbage", Some("not-a-token".into()), "not a JWT"),
            (
                "expired",
                Some(hs256(&claims(json!({"exp": now() - 3600})))),
                "has expired",
            ),
            (
                "not yet valid",
                Some(hs256(&claims(json!({"nbf": now() + 3600})))),
                "not valid yet",
            ),
            (
                "wrong signature",
                Some(sign(
                    Algorithm::HS256,
                    &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!!").unwrap(),
                    &claims(json!({})),
                    None,
                )),
                "signature does not verify",
            ),
            (
                "alg none",
                Some(alg_none()),
                "not a JWT with a supported algorithm",
            ),
            (
                "HS256 signed with the RSA public key",
                Some(confusion),
                "signature does not verify",
            ),
            (
                "wrong issuer",
                Some(hs256(&claims(json!({"iss": "https://evil.test"})))),
                "issuer",
            ),
            (
                "wrong audience",
                Some(rs256(&claims(json!({"aud": "other"})), None)),
                "audience",
            ),
            (
                "no subject",
                Some(hs256(
                    &json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now() + 60}),
                )),
                "`sub`",
            ),
            (
                "revoked key",
                Some(revoked["key"].as_str().unwrap().into()),
                "revoked",
            ),
            (
                "expired key",
                Some(expired["key"].as_str().unwrap().into()),
                "API key has expired",
            ),
            ("unknown key", Some(unknown_key), "unknown API key"),
        ];
        let mut presented = vec![SECRET.to_string(), key.clone()];
        for (what, token, says) in &cases {
            let headers: Vec<String> = token
                .iter()
                .map(|t| format!("Authorization: Bearer {t}"))
                .collect();
            presented.extend(token.iter().cloned());
            let http = http_list(s.addr, headers.clone()).await;
            assert_eq!(http.status, 401, "{what}: {}", http.body);
            let error = http.json()["error"].clone();
            assert_eq!(error["code"], "unauthenticated", "{what}: {error}");
            let message = error["message"].as_str().unwrap();
            assert!(message.contains(says), "{what}: {message}");
            if let Some(t) = token {
                assert!(
                    !http.body.contains(t.as_str()),
                    "{what}: the body echoes the credential"
                );
            }
            let challenge = header(&http, "www-authenticate").unwrap_or_default();
            assert!(
                challenge.starts_with("Bearer realm=\"nexus\""),
                "{what}: {challenge}"
            );
            assert_eq!(
                challenge.contains("error=\"invalid_token\""),
                token.is_some(),
                "{what}: {challenge}"
            );
            assert!(
                challenge.contains("resource_metadata=\"http://"),
                "{what}: {challenge}"
            );

            let mcp = mcp_initialize(s.mcp, headers).await;
            assert_eq!(mcp.status, 401, "{what} on MCP: {}", mcp.body);
            assert_eq!(
                mcp.json()["error"],
                error,
                "{what}: MCP answers the same error"
            );
            assert!(header(&mcp, "www-authenticate").is_some(), "{what}");

            let (exit, body) = cli_remote(&s, token.as_deref()).await;
            assert_eq!(exit, 9, "{what} on the CLI: {body}");
            assert_eq!(
                body["error"], error,
                "{what}: the CLI prints the same error"
            );
        }

        let good = [
            ("HS256", hs256(&claims(json!({})))),
            ("RS256", rs256(&claims(json!({})), None)),
            ("API key", key.clone()),
        ];
        for (what, token) in &good {
            presented.push(token.clone());
            let r = http_list(s.addr, vec![format!("Authorization: Bearer {token}")]).await;
            assert_eq!(r.status, 200, "{what}: {}", r.body);
            let (exit, body) = cli_remote(&s, Some(token)).await;
            assert_eq!(exit, 0, "{what} on the CLI: {body}");
            assert!(body["outputs"]["users"].is_object(), "{body}");
            let client = mcp_client_with(s.mcp, token).await;
            let tools = client.list_all_tools().await.unwrap();
            assert!(tools.iter().any(|t| t.name == "list_users"), "{what}");
            let r = call(&client, "list_users", &json!({"active": true, "limit": 10}))
                .await
                .unwrap();
            assert_ne!(r.is_error, Some(true), "{what}: {r:?}");
            client.cancel().await.unwrap();
        }
        let r = http_list(s.addr, vec![format!("X-API-Key: {key}")]).await;
        assert_eq!(r.status, 200, "X-API-Key: {}", r.body);
        let r = http_list(
            s.addr,
            vec![
                format!("X-API-Key: {key}"),
                format!("Authorization: Bearer {key}"),
            ],
        )
        .await;
        assert_eq!(r.status, 401, "one credential only: {}", r.body);

        // Open: health and readiness; closed: everything else, unknown paths too.
        for path in ["/health", "/ready"] {
            assert_eq!(get(s.addr, path).await.status, 200, "{path}");
        }
        for path in ["/workflows", "/openapi.json", "/no/such/path", "/metrics"] {
            assert_eq!(get(s.addr, path).await.status, 401, "{path}");
        }
        let metrics = |token: String| {
            let addr = s.addr;
            async move {
                tokio::task::spawn_blocking(move || {
                    request_with(
                        addr,
                        "GET",
                        "/metrics",
                        &[&format!("Authorization: Bearer {token}")],
                        None,
                    )
                })
                .await
                .unwrap()
            }
        };
        let r = metrics(hs256(&claims(json!({})))).await;
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "metrics needs its role: {}",
            r.body
        );
        let r = metrics(hs256(&claims(json!({"roles": ["metrics"]})))).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains("nexus_requests_total"), "{}", r.body);
        for secret in &presented {
            assert!(
                !r.body.contains(secret.as_str()),
                "/metrics holds a credential"
            );
        }

        // What the server printed holds no secret, key or token.
        use std::io::Read;
        let mut s = s;
        let _ = s.child.kill();
        let _ = s.child.wait();
        let mut printed = String::new();
        for pipe in [
            s.child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read>),
            s.child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read>),
        ]
        .into_iter()
        .flatten()
        {
            let mut pipe = pipe;
            let _ = pipe.read_to_string(&mut printed);
        }
        assert!(
            printed.contains("nexus: HTTP API on"),
            "captured: {printed}"
        );
        for secret in &presented {
            assert!(
                !printed.contains(secret.as_str()),
                "the server printed a credential"
            );
        }
    }

    /// API keys and OAuth client credentials on SQLite and PostgreSQL:
    /// `keys create --client` makes a client; `POST /oauth/token` (HTTP
    /// Basic or the form) issues a JWT the API and MCP accept; RFC 6749
    /// errors; the metadata on both listeners points at the token endpoint.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oauth_client_credentials_end_to_end() {
        for (backend, url) in support::backend_urls("auth-oauth") {
            let (code, client) = keys_cli(
                &url,
                &[
                    "create", "--name", "svc", "--role", "reader", "--tenant", "acme", "--client",
                ],
            )
            .await;
            assert_eq!(code, 0, "{backend}: {client}");
            let (id, secret) = (
                client["client_id"].as_str().unwrap().to_string(),
                client["client_secret"].as_str().unwrap().to_string(),
            );
            assert!(client.get("key").is_none(), "{client}");
            let (_, listed) = keys_cli(&url, &["list"]).await;
            let listed_text = listed.to_string();
            assert!(
                listed_text.contains(&id) && !listed_text.contains(&secret),
                "{backend}: {listed}"
            );
            assert_eq!(listed[0]["client"], true, "{listed}");
            assert_eq!(listed[0]["tenant"], "acme", "{listed}");

            let env = [
                ("NEXUS_API_KEYS", "1"),
                ("NEXUS_AUTH_FAILURES_PER_MINUTE", "1000"),
            ];
            let s = server_with(&url, &env, false);
            let token_request = |headers: Vec<String>, body: String| {
                let addr = s.addr;
                async move {
                    tokio::task::spawn_blocking(move || {
                        let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
                        let head = format!(
                            "POST /oauth/token HTTP/1.1\r\nHost: {addr}\r\n\
                             Content-Type: application/x-www-form-urlencoded\r\n{extra}\
                             Content-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        support::http::send(addr, head.as_bytes(), body.as_bytes())
                    })
                    .await
                    .unwrap()
                }
            };
            let basic = {
                use base64_for_tests::encode;
                format!(
                    "Authorization: Basic {}",
                    encode(format!("{id}:{secret}").as_bytes())
                )
            };
            let r =
                token_request(vec![basic.clone()], "grant_type=client_credentials".into()).await;
            assert_eq!(r.status, 200, "{backend}: {}", r.body);
            let t = r.json();
            assert_eq!(
                (t["token_type"].as_str(), t["expires_in"].as_u64()),
                (Some("Bearer"), Some(900))
            );
            assert_eq!(header(&r, "cache-control"), Some("no-store"));
            let access = t["access_token"].as_str().unwrap().to_string();
            assert_eq!(access.split('.').count(), 3, "a JWT");

            let r = http_list(s.addr, vec![format!("Authorization: Bearer {access}")]).await;
            assert_eq!(
                r.status, 200,
                "{backend}: the issued token works: {}",
                r.body
            );
            let client_mcp = mcp_client_with(s.mcp, &access).await;
            let r = call(
                &client_mcp,
                "list_users",
                &json!({"active": true, "limit": 10}),
            )
            .await
            .unwrap();
            assert_ne!(r.is_error, Some(true), "{r:?}");
            client_mcp.cancel().await.unwrap();

            let r = token_request(
                vec![],
                format!("grant_type=client_credentials&client_id={id}&client_secret={secret}"),
            )
            .await;
            assert_eq!(r.status, 200, "client_secret_post: {}", r.body);

            let r = token_request(
                vec![],
                format!("grant_type=client_credentials&client_id={id}&client_secret={secret}x"),
            )
            .await;
            assert_eq!(r.status, 401, "{}", r.body);
            assert_eq!(r.json()["error"], "invalid_client");
            assert!(r.json()["error_description"].is_string());
            assert!(!r.body.contains(&secret));
            let r = token_request(vec![basic.clone()], "grant_type=password".into()).await;
            assert_eq!(
                (r.status, r.json()["error"].as_str()),
                (400, Some("unsupported_grant_type"))
            );
            let r = token_request(vec![basic.clone()], "".into()).await;
            assert_eq!(
                (r.status, r.json()["error"].as_str()),
                (400, Some("invalid_request"))
            );
            let r = token_request(vec![], "grant_type=client_credentials".into()).await;
            assert_eq!(
                (r.status, r.json()["error"].as_str()),
                (401, Some("invalid_client"))
            );

            // A client secret is for the token endpoint, not an API key.
            let r = http_list(s.addr, vec![format!("Authorization: Bearer {secret}")]).await;
            assert_eq!(r.status, 401, "{}", r.body);

            for (addr, resource) in [(s.addr, ""), (s.mcp, "/mcp")] {
                let r = get(addr, "/.well-known/oauth-protected-resource").await;
                assert_eq!(r.status, 200, "{}", r.body);
                let m = r.json();
                assert_eq!(m["resource"], format!("http://{addr}{resource}"));
                let server = m["authorization_servers"][0].as_str().unwrap().to_string();
                let r = get(addr, "/.well-known/oauth-authorization-server").await;
                let meta = r.json();
                assert_eq!(meta["issuer"], server);
                assert_eq!(meta["token_endpoint"], format!("{server}/oauth/token"));
                assert_eq!(meta["grant_types_supported"], json!(["client_credentials"]));
            }

            // Revoked, the client gets no more tokens.
            let (code, _) = keys_cli(&url, &["revoke", &id]).await;
            assert_eq!(code, 0);
            let r = token_request(vec![basic], "grant_type=client_credentials".into()).await;
            assert_eq!(r.status, 401, "{backend}: revoked: {}", r.body);
        }
    }

    /// Base64 for HTTP Basic in the tests (the standard alphabet, padded).
    mod base64_for_tests {
        pub fn encode(bytes: &[u8]) -> String {
            const A: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let b = [
                    chunk[0],
                    *chunk.get(1).unwrap_or(&0),
                    *chunk.get(2).unwrap_or(&0),
                ];
                let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
                for i in 0..4 {
                    if i <= chunk.len() {
                        out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
                    } else {
                        out.push('=');
                    }
                }
            }
            out
        }
    }

    #[dataflow::model(tenant_scoped)]
    pub struct Memo {
        pub id: String,
        pub text: String,
    }

    /// An application on `db` served on free loopback ports in this process.
    async fn serve_app(
        app: nexus::Nexus,
    ) -> (std::sync::Arc<nexus::Nexus>, SocketAddr, SocketAddr) {
        let app = std::sync::Arc::new(app);
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (h, m) = (http.local_addr().unwrap(), mcp.local_addr().unwrap());
        let a = app.clone();
        tokio::spawn(async move { a.serve_http_on(http).await });
        let a = app.clone();
        tokio::spawn(async move { a.serve_mcp_on(mcp).await });
        (app, h, m)
    }

    /// The tenant claim is the call's tenant: a tenant-scoped model shows
    /// each token only its tenant's rows, on HTTP and MCP; `X-Tenant-ID`
    /// cannot override it; the actor is the token's `sub`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_tokens_tenant_scopes_the_data() {
        let db = dataflow::DataFlow::builder(support::sqlite_url("auth-tenant"))
            .models(&[&<Memo as dataflow::Model>::SCHEMA])
            .multi_tenant(true)
            .build()
            .await
            .unwrap();
        let mut app = nexus::Nexus::builder()
            .trust_tenant_header(true)
            .auth(nexus::Auth::new().jwt_hs256(SECRET).tenant_claim("org"))
            .build(db.clone())
            .unwrap();
        let mut add = dataflow::WorkflowBuilder::new();
        add.add_node("MemoCreateNode", "memo", json!({"text": "{{text}}"}));
        app.register("add_memo", add.build(&db).unwrap()).unwrap();
        let mut list = dataflow::WorkflowBuilder::new();
        list.add_node("MemoListNode", "memos", json!({}));
        app.register("list_memos", list.build(&db).unwrap())
            .unwrap();
        let mut me = dataflow::WorkflowBuilder::new();
        me.add_node("CallerNode", "me", json!({}));
        app.register("whoami", me.build(&db).unwrap()).unwrap();
        let (app, http, mcp) = serve_app(app).await;

        let token = |org: &str| {
            hs256(&json!({"sub": format!("user@{org}"), "org": org, "exp": now() + 600}))
        };
        let (acme, globex) = (token("acme"), token("globex"));
        let run = |name: &'static str, token: String, extra: Vec<String>, body: Value| async move {
            tokio::task::spawn_blocking(move || {
                let auth = format!("Authorization: Bearer {token}");
                let mut h = vec![auth.as_str()];
                h.extend(extra.iter().map(String::as_str));
                let body = json!({"inputs": body}).to_string();
                request_with(
                    http,
                    "POST",
                    &format!("/workflows/{name}/execute"),
                    &h,
                    Some(body.as_bytes()),
                )
            })
            .await
            .unwrap()
        };
        let r = run("add_memo", acme.clone(), vec![], json!({"text": "acme's"})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["outputs"]["memo"]["tenant_id"], "acme");
        let count = |r: support::http::Response| {
            assert_eq!(r.status, 200, "{}", r.body);
            r.json()["outputs"]["memos"]["count"].as_i64().unwrap()
        };
        assert_eq!(
            count(run("list_memos", acme.clone(), vec![], json!({})).await),
            1
        );
        assert_eq!(
            count(run("list_memos", globex.clone(), vec![], json!({})).await),
            0
        );
        let spoof = vec!["X-Tenant-ID: acme".to_string()];
        assert_eq!(
            count(run("list_memos", globex.clone(), spoof, json!({})).await),
            0,
            "the header never overrides the token's tenant"
        );
        let r = run("whoami", globex.clone(), vec![], json!({})).await;
        assert_eq!(
            r.json()["outputs"]["me"]["actor"],
            "user@globex",
            "{}",
            r.body
        );

        let client = mcp_client_with(mcp, &globex).await;
        let r = call(&client, "list_memos", &json!({})).await.unwrap();
        assert_eq!(result_json(&r)["outputs"]["memos"]["count"], 0);
        client.cancel().await.unwrap();
        let client = mcp_client_with(mcp, &acme).await;
        let r = call(&client, "list_memos", &json!({})).await.unwrap();
        assert_eq!(result_json(&r)["outputs"]["memos"]["count"], 1);
        let r = call(&client, "whoami", &json!({})).await.unwrap();
        assert_eq!(result_json(&r)["outputs"]["me"]["tenant"], "acme");
        client.cancel().await.unwrap();
        app.shutdown();
    }

    /// Roles from credentials decide on every channel: the example server
    /// (auth on, roles `reader` / `editor` / `admin`) with API keys and JWTs.
    /// A reader lists users but may not create one — 403 `forbidden` over
    /// HTTP, a tool error over MCP, exit code 5 from the CLI with `--url`,
    /// the same error object on each, and nothing written; an editor creates;
    /// an unknown role grants nothing; MCP `tools/list` shows each caller
    /// only what it may call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn roles_from_credentials_decide_on_every_channel() {
        let url = support::sqlite_url("auth-roles");
        let mut keys = std::collections::HashMap::new();
        for role in ["reader", "editor", "ghost"] {
            let (code, out) = keys_cli(&url, &["create", "--name", role, "--role", role]).await;
            assert_eq!(code, 0, "{out}");
            keys.insert(role, out["key"].as_str().unwrap().to_string());
        }
        let env = auth_env();
        let s = server_with(&url, &env_of(&env), false);
        let bearer = |t: &str| vec![format!("Authorization: Bearer {t}")];
        let create = |addr: SocketAddr, headers: Vec<String>, email: &'static str| async move {
            tokio::task::spawn_blocking(move || {
                let h: Vec<&str> = headers.iter().map(String::as_str).collect();
                let body = json!({"inputs": {"email": email, "full_name": "R", "active": true}})
                    .to_string();
                request_with(
                    addr,
                    "POST",
                    "/workflows/create_user/execute",
                    &h,
                    Some(body.as_bytes()),
                )
            })
            .await
            .unwrap()
        };

        // HTTP.
        let r = http_list(s.addr, bearer(&keys["reader"])).await;
        assert_eq!(r.status, 200, "a reader lists users: {}", r.body);
        let refused = create(s.addr, bearer(&keys["reader"]), "reader@x.io").await;
        assert_eq!(refused.status, 403, "{}", refused.body);
        let http_error = refused.json()["error"].clone();
        assert_eq!(http_error["code"], "forbidden", "{http_error}");
        assert!(
            http_error["message"]
                .as_str()
                .unwrap()
                .contains("create_user"),
            "{http_error}"
        );
        let r = http_list(s.addr, bearer(&keys["ghost"])).await;
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "an unknown role grants nothing: {}",
            r.body
        );
        let r = create(s.addr, bearer(&keys["editor"]), "editor@x.io").await;
        assert_eq!(r.status, 200, "an editor creates: {}", r.body);
        let admin = hs256(&claims(json!({"sub": "root", "roles": ["admin"]})));
        let r = create(s.addr, bearer(&admin), "admin@x.io").await;
        assert_eq!(r.status, 200, "an admin JWT creates: {}", r.body);
        let none = hs256(&claims(json!({"sub": "nobody", "roles": []})));
        let r = http_list(s.addr, bearer(&none)).await;
        assert_eq!(
            r.status, 403,
            "a token without roles runs nothing: {}",
            r.body
        );
        let listed = tokio::task::spawn_blocking({
            let (addr, h) = (s.addr, bearer(&keys["reader"]));
            move || {
                let h: Vec<&str> = h.iter().map(String::as_str).collect();
                request_with(addr, "GET", "/workflows", &h, None)
            }
        })
        .await
        .unwrap();
        let names: Vec<String> = listed.json()["workflows"]
            .as_array()
            .unwrap_or_else(|| panic!("{}", listed.body))
            .iter()
            .map(|w| w["name"].as_str().unwrap().to_string())
            .collect();
        assert!(
            names.contains(&"list_users".to_string())
                && !names.contains(&"create_user".to_string()),
            "a reader's /workflows: {names:?}"
        );

        // MCP over HTTP: tools/list by role, the same refusal as a tool error.
        let reader = mcp_client_with(s.mcp, &keys["reader"]).await;
        let tools: Vec<String> = reader
            .list_all_tools()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect();
        assert!(
            tools.contains(&"get_user".to_string()) && !tools.contains(&"create_user".to_string()),
            "a reader's tools: {tools:?}"
        );
        let r = call(
            &reader,
            "create_user",
            &json!({"email": "mcp@x.io", "full_name": "M", "active": true}),
        )
        .await
        .unwrap();
        assert_eq!(r.is_error, Some(true), "{r:?}");
        let mcp_error = result_json(&r)["error"].clone();
        assert_eq!(mcp_error, http_error, "the same error object on MCP");
        reader.cancel().await.unwrap();
        let editor = mcp_client_with(s.mcp, &keys["editor"]).await;
        let tools: Vec<String> = editor
            .list_all_tools()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect();
        assert!(tools.contains(&"create_user".to_string()), "{tools:?}");
        editor.cancel().await.unwrap();

        // The CLI with --url.
        let out = tokio::process::Command::from(example(&s.url))
            .env_remove("NEXUS_TOKEN")
            .args(["run", "create_user", "--url", &s.base(), "--json"])
            .args([
                "--email",
                "cli@x.io",
                "--full_name",
                "C",
                "--active",
                "true",
            ])
            .args(["--token", &keys["reader"]])
            .output()
            .await
            .unwrap();
        let printed: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(out.status.code(), Some(5), "{printed}");
        assert_eq!(
            printed["error"], http_error,
            "the same error object on the CLI"
        );

        // Refused calls wrote nothing: only the editor's and the admin's users.
        let r = http_list(s.addr, bearer(&admin)).await;
        let mut emails: Vec<String> = r.json()["outputs"]["users"]["records"]
            .as_array()
            .unwrap_or_else(|| panic!("{}", r.body))
            .iter()
            .map(|u| u["email"].as_str().unwrap().to_string())
            .collect();
        emails.sort();
        assert_eq!(emails, ["admin@x.io", "editor@x.io"]);
    }

    /// Failed sign-ins from one address: past the limit, 429 `rate_limited`
    /// with `Retry-After`, even for good credentials, until it may retry;
    /// `/health` stays open; a request without credentials is no attempt.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_sign_ins_are_limited_per_address() {
        let db = probe_db().await;
        let mut app = nexus::Nexus::builder()
            .auth(
                nexus::Auth::new()
                    .jwt_hs256(SECRET)
                    .failed_attempts_per_minute(3),
            )
            .build(db.clone())
            .unwrap();
        app.register("count", probe_workflow(&db)).unwrap();
        let (app, http, _) = serve_app(app).await;
        let exec = |token: Option<String>| async move {
            tokio::task::spawn_blocking(move || {
                let h: Vec<String> = token
                    .iter()
                    .map(|t| format!("Authorization: Bearer {t}"))
                    .collect();
                let h: Vec<&str> = h.iter().map(String::as_str).collect();
                request_with(http, "POST", "/workflows/count/execute", &h, Some(b"{}"))
            })
            .await
            .unwrap()
        };
        for _ in 0..5 {
            assert_eq!(
                exec(None).await.status,
                401,
                "no credentials: not an attempt"
            );
        }
        for i in 0..3 {
            assert_eq!(
                exec(Some(format!("guess-{i}"))).await.status,
                401,
                "attempt {i}"
            );
        }
        let r = exec(Some("guess-4".into())).await;
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str()),
            (429, Some("rate_limited")),
            "{}",
            r.body
        );
        let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        let good = hs256(&json!({"sub": "ops", "exp": now() + 60}));
        assert_eq!(
            exec(Some(good.clone())).await.status,
            429,
            "blocked while waiting"
        );
        assert_eq!(get(http, "/health").await.status, 200);
        // One attempt comes back every 20 s (3 a minute).
        tokio::time::sleep(Duration::from_secs(retry + 1)).await;
        let r = exec(Some(good)).await;
        assert_eq!(r.status, 200, "after Retry-After: {}", r.body);
        app.shutdown();
    }

    /// Options: auth on without a credential source, and keys that do not
    /// parse, are `config` errors at build (never an open server).
    #[tokio::test]
    async fn auth_without_credentials_is_a_boot_error() {
        let db = probe_db().await;
        for (what, b) in [
            (
                "enable_auth alone",
                nexus::Nexus::builder().enable_auth(true),
            ),
            (
                "no source",
                nexus::Nexus::builder().auth(nexus::Auth::new().jwt_issuer("x")),
            ),
            (
                "short secret",
                nexus::Nexus::builder().auth(nexus::Auth::new().jwt_hs256("short")),
            ),
            (
                "bad PEM",
                nexus::Nexus::builder().auth(nexus::Auth::new().jwt_rs256_pem("nope")),
            ),
            (
                "missing JWKS",
                nexus::Nexus::builder()
                    .auth(nexus::Auth::new().jwks_file("/nonexistent/jwks.json")),
            ),
        ] {
            let e = b
                .build(db.clone())
                .err()
                .unwrap_or_else(|| panic!("{what}: built"));
            assert_eq!(e.code().as_str(), "config", "{what}: {e}");
        }
        let debug = format!("{:?}", nexus::Auth::new().jwt_hs256(SECRET));
        assert!(!debug.contains(SECRET), "Debug redacts the secret: {debug}");
        let e = nexus::Nexus::builder().build(db.clone()).unwrap();
        assert_eq!(
            e.run_from(["app", "keys", "list"]).await,
            std::process::ExitCode::from(8),
            "keys without api_keys(true) is a config error"
        );
    }

    /// A JWKS file: keys are matched by `kid`, and a changed file is read
    /// again within a second, with no restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_changed_jwks_file_is_read_again() {
        let dir = std::env::temp_dir().join(format!("nexus-jwks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jwks.json");
        let jwks = std::fs::read_to_string(fixture("jwks.json")).unwrap();
        std::fs::write(&path, jwks.replace("\"rsa-1\"", "\"rsa-0\"")).unwrap();
        let db = probe_db().await;
        let mut app = nexus::Nexus::builder()
            .auth(nexus::Auth::new().jwks_file(&path))
            .build(db.clone())
            .unwrap();
        app.register("count", probe_workflow(&db)).unwrap();
        let (app, http, _) = serve_app(app).await;
        let token = rs256(&json!({"sub": "svc", "exp": now() + 600}), Some("rsa-1"));
        let exec = |token: String| async move {
            tokio::task::spawn_blocking(move || {
                request_with(
                    http,
                    "POST",
                    "/workflows/count/execute",
                    &[&format!("Authorization: Bearer {token}")],
                    Some(b"{}"),
                )
            })
            .await
            .unwrap()
        };
        let r = exec(token.clone()).await;
        assert_eq!(r.status, 401, "no key with this kid yet: {}", r.body);
        let r = exec(rs256(
            &json!({"sub": "svc", "exp": now() + 600}),
            Some("rsa-0"),
        ))
        .await;
        assert_eq!(r.status, 200, "the kid in the file: {}", r.body);
        std::fs::write(&path, &jwks).unwrap();
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let r = exec(token).await;
        assert_eq!(r.status, 200, "the new file's key: {}", r.body);
        app.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The app of the credential-cache tests: `count` behind a JWT secret
    /// (leeway 0) and API keys remembered for `ttl`, on the SQLite file
    /// `url` (another app on the same file is "another process").
    async fn cached_auth_app(
        url: &str,
        ttl: Duration,
    ) -> (std::sync::Arc<nexus::Nexus>, SocketAddr) {
        let db = dataflow::DataFlow::builder(url)
            .models(&[&<Probe as dataflow::Model>::SCHEMA])
            .build()
            .await
            .unwrap();
        let mut app = nexus::Nexus::builder()
            .auth(
                nexus::Auth::new()
                    .jwt_hs256(SECRET)
                    .jwt_leeway(Duration::ZERO)
                    .api_keys(true)
                    .api_key_cache_ttl(ttl)
                    .failed_attempts_per_minute(1000),
            )
            .build(db.clone())
            .unwrap();
        app.register("count", probe_workflow(&db)).unwrap();
        let (app, http, _) = serve_app(app).await;
        (app, http)
    }

    /// `POST /workflows/count/execute` with `Authorization: Bearer <credential>`.
    async fn count_as(addr: SocketAddr, credential: &str) -> support::http::Response {
        let auth = format!("Authorization: Bearer {credential}");
        tokio::task::spawn_blocking(move || {
            request_with(
                addr,
                "POST",
                "/workflows/count/execute",
                &[&auth],
                Some(b"{}"),
            )
        })
        .await
        .unwrap()
    }

    /// A JWT that may read `/metrics`.
    fn metrics_token() -> String {
        hs256(&json!({"sub": "prom", "exp": now() + 600, "roles": ["metrics"]}))
    }

    /// A sample of `/metrics` (read with `token`): its value, or 0.
    async fn auth_metric(addr: SocketAddr, token: &str, sample: &str) -> u64 {
        let auth = format!("Authorization: Bearer {token}");
        let r = tokio::task::spawn_blocking(move || {
            request_with(addr, "GET", "/metrics", &[&auth], None)
        })
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .map_or(0, |v| v.trim().parse().unwrap())
    }

    /// A verified JWT is remembered (its signature is not checked again),
    /// and still refused from the second after its `exp` (leeway 0), like a
    /// token never seen; a token not valid yet is not remembered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_remembered_jwt_is_refused_once_it_expires() {
        let url = support::sqlite_url("auth-jwt-cache");
        let (app, http) = cached_auth_app(&url, Duration::from_secs(30)).await;
        let prom = metrics_token();
        let exp = now() + 2;
        let token = hs256(&json!({"sub": "short", "exp": exp, "roles": ["reader"]}));
        let jwt = |outcome: &str| {
            format!("nexus_auth_checks_total{{credential=\"jwt\",outcome=\"{outcome}\"}}")
        };
        let r = count_as(http, &token).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = count_as(http, &token).await;
        assert_eq!(r.status, 200, "{}", r.body);
        // The first verified, the second remembered (the metrics token is
        // verified too: once, before it is read).
        assert_eq!(auth_metric(http, &prom, &jwt("remembered")).await, 1);
        assert_eq!(auth_metric(http, &prom, &jwt("verified")).await, 2);
        while now() <= exp {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = count_as(http, &token).await;
        assert_eq!(r.status, 401, "refused after exp: {}", r.body);
        assert!(r.body.contains("expired"), "{}", r.body);
        assert_eq!(auth_metric(http, &prom, &jwt("refused")).await, 1);

        // Not valid yet: refused every time (nothing was remembered).
        let early = hs256(&json!({"sub": "early", "exp": now() + 600, "nbf": now() + 600}));
        for _ in 0..2 {
            let r = count_as(http, &early).await;
            assert_eq!(r.status, 401, "{}", r.body);
        }
        assert_eq!(auth_metric(http, &prom, &jwt("refused")).await, 3);
        app.shutdown();
    }

    /// Many first requests at once with one API key pay Argon2id once: one
    /// verifies, the others share its outcome; a wrong key is refused to all
    /// of them and verified again next time (a refusal is not remembered).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_uses_of_a_key_verify_once() {
        const N: usize = 16;
        let url = support::sqlite_url("auth-single-flight");
        let (app, http) = cached_auth_app(&url, Duration::from_secs(30)).await;
        let prom = metrics_token();
        let key = app
            .create_api_key("burst", &["reader"], None, None)
            .await
            .unwrap()["key"]
            .as_str()
            .unwrap()
            .to_string();
        let argon2 = "nexus_auth_argon2_verifications_total";
        assert_eq!(auth_metric(http, &prom, argon2).await, 0);
        let burst = |key: String| {
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(N));
            (0..N)
                .map(|_| {
                    let (barrier, auth) = (barrier.clone(), format!("X-API-Key: {key}"));
                    tokio::task::spawn_blocking(move || {
                        barrier.wait();
                        request_with(
                            http,
                            "POST",
                            "/workflows/count/execute",
                            &[&auth],
                            Some(b"{}"),
                        )
                    })
                })
                .collect::<Vec<_>>()
        };
        for r in burst(key.clone()) {
            let r = r.await.unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
        }
        assert_eq!(
            auth_metric(http, &prom, argon2).await,
            1,
            "one Argon2id verification for {N} requests"
        );
        let key_metric = |outcome: &str| {
            format!("nexus_auth_checks_total{{credential=\"api_key\",outcome=\"{outcome}\"}}")
        };
        assert_eq!(auth_metric(http, &prom, &key_metric("verified")).await, 1);
        assert_eq!(
            auth_metric(http, &prom, &key_metric("remembered")).await,
            N as u64 - 1
        );

        // The right prefix with a wrong secret: all refused, verified again.
        let (prefix, secret) = key.rsplit_once('_').unwrap();
        let wrong = format!("{prefix}_{}", secret.chars().rev().collect::<String>());
        for r in burst(wrong.clone()) {
            let r = r.await.unwrap();
            assert_eq!(r.status, 401, "{}", r.body);
            assert!(!r.body.contains(&wrong));
        }
        let after_burst = auth_metric(http, &prom, argon2).await;
        assert!(
            (2..=1 + N as u64).contains(&after_burst),
            "a wrong key is verified, at most once per request: {after_burst}"
        );
        let r = count_as(http, &wrong).await;
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(
            auth_metric(http, &prom, argon2).await,
            after_burst + 1,
            "a refusal is not remembered"
        );
        assert_eq!(
            auth_metric(http, &prom, &key_metric("refused")).await,
            N as u64 + 1
        );
        app.shutdown();
    }

    /// A key revoked by another process (another app on the same database)
    /// works here until the cache's TTL, then never again; revoked here, it
    /// stops at once. Past the TTL a key is checked against its row again
    /// without a second Argon2id.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revoked_key_stops_within_the_cache_ttl() {
        let url = support::sqlite_url("auth-revoke-ttl");
        let ttl = Duration::from_secs(1);
        let (app, http) = cached_auth_app(&url, ttl).await;
        let (other, _) = cached_auth_app(&url, ttl).await;
        let made = app
            .create_api_key("soon-revoked", &["reader"], None, None)
            .await
            .unwrap();
        let key = made["key"].as_str().unwrap().to_string();
        let r = count_as(http, &key).await;
        assert_eq!(r.status, 200, "{}", r.body);
        // Past the TTL the row is read again, but a key that matched its
        // hash is not hashed again.
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        let r = count_as(http, &key).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let prom = metrics_token();
        let argon2 = "nexus_auth_argon2_verifications_total";
        assert_eq!(auth_metric(http, &prom, argon2).await, 1);
        let verified = "nexus_auth_checks_total{credential=\"api_key\",outcome=\"verified\"}";
        assert_eq!(auth_metric(http, &prom, verified).await, 2);
        let revoked_at = std::time::Instant::now();
        other
            .revoke_api_key(made["id"].as_str().unwrap())
            .await
            .unwrap();
        loop {
            let r = count_as(http, &key).await;
            if r.status == 401 {
                assert!(
                    r.body.contains("revoked") || r.body.contains("unknown API key"),
                    "{}",
                    r.body
                );
                break;
            }
            assert_eq!(r.status, 200, "{}", r.body);
            assert!(
                revoked_at.elapsed() < ttl + Duration::from_millis(500),
                "still accepted {:?} after the revocation",
                revoked_at.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for _ in 0..3 {
            assert_eq!(count_as(http, &key).await.status, 401);
        }

        // Revoked through this app: refused on the next request.
        let made = app
            .create_api_key("local", &["reader"], None, None)
            .await
            .unwrap();
        let key = made["key"].as_str().unwrap().to_string();
        assert_eq!(count_as(http, &key).await.status, 200);
        app.revoke_api_key(made["id"].as_str().unwrap())
            .await
            .unwrap();
        assert_eq!(count_as(http, &key).await.status, 401);
        app.shutdown();
        other.shutdown();
    }
}
/// The workflows the RBAC tests register besides `count` (ProbeCountNode,
/// reads Probe): `create` (writes Probe), `create_and_count` (writes and
/// reads Probe) and `slow` (a hand-written node: granted only by name).
fn register_rbac_workflows(app: &mut nexus::Nexus, db: &dataflow::DataFlow) {
    let mut create = dataflow::WorkflowBuilder::new();
    create.add_node("ProbeCreateNode", "create", json!({"id": "{{id}}"}));
    app.register("create", create.build(db).unwrap()).unwrap();
    let mut both = dataflow::WorkflowBuilder::new();
    both.add_node("ProbeCreateNode", "create", json!({"id": "{{id}}"}))
        .add_node("ProbeCountNode", "count", json!({}));
    app.register("create_and_count", both.build(db).unwrap())
        .unwrap();
    let mut slow = dataflow::WorkflowBuilder::new();
    slow.add_node("SlowNode", "slow", json!({"ms": 0}));
    app.register("slow", slow.build(db).unwrap()).unwrap();
}

fn rbac_roles() -> nexus::NexusBuilder {
    nexus::Nexus::builder()
        .role("counter", |r| r.workflows(["count"]))
        .role("reader", |r| r.models_read(["Probe"]))
        .role("writer", |r| r.models_write(["Probe"]))
        .role("nothing", |r| r)
        .role("admin", |r| r.all())
}

/// Roles decide what a context may run: by name, by model (read / write
/// through generated nodes), or all; unknown roles, roles without rules and
/// no roles grant nothing; the operator and `Context::system()` are exempt.
/// In process (`execute_in`) and on the in-process CLI with `--role`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_decide_what_a_context_may_run() {
    let s = InProcess::start_with(rbac_roles(), register_rbac_workflows).await;
    let app = &s.app;
    let as_roles = |roles: &[&str]| dataflow::Context::new().roles(roles.iter().copied());
    let mut n = 0;
    let mut inputs = |name: &str| {
        n += 1;
        match name {
            "create" | "create_and_count" => json!({"id": format!("p{n}")}),
            _ => json!({}),
        }
    };
    let cases: &[(&[&str], &str, bool)] = &[
        (&["counter"], "count", true),
        (&["counter"], "create", false),
        (&["counter"], "slow", false),
        (&["reader"], "count", true),
        (&["reader"], "create", false),
        (&["reader"], "slow", false),
        (&["writer"], "create", true),
        (&["writer"], "count", false),
        (&["writer"], "create_and_count", false),
        (&["reader", "writer"], "create_and_count", true),
        (&["nothing"], "count", false),
        (&["ghost"], "count", false),
        (&[], "count", false),
        (&["ghost", "admin"], "slow", true),
    ];
    for (roles, name, allowed) in cases {
        let result = app.execute_in(as_roles(roles), name, inputs(name)).await;
        match (allowed, result) {
            (true, Ok(out)) => assert!(out["run_id"].is_string()),
            (false, Err(e)) => {
                assert_eq!(e.code().as_str(), "forbidden", "{roles:?} {name}: {e}");
                assert_eq!(e.code().http_status(), 403);
                assert!(e.message().contains(name), "{e}");
            }
            (allowed, r) => panic!("{roles:?} {name}: expected allowed={allowed}, got {r:?}"),
        }
    }
    // Nothing ran for the refused writes: only the admitted creates wrote.
    let count = app.execute("count", json!({})).await.unwrap();
    assert_eq!(count["outputs"]["count"]["count"], 2);
    // The operator and the system context are not restricted by roles.
    app.execute("slow", json!({})).await.unwrap();
    app.execute_in(dataflow::Context::system(), "slow", json!({}))
        .await
        .unwrap();

    // The in-process CLI: the operator unless `--role` is given.
    let run = |args: &'static [&'static str]| async move {
        let mut argv = vec!["app", "run"];
        argv.extend_from_slice(args);
        argv.push("--json");
        app.run_from(argv).await
    };
    assert_eq!(run(&["slow"]).await, std::process::ExitCode::SUCCESS);
    assert_eq!(
        run(&["slow", "--role", "reader"]).await,
        std::process::ExitCode::from(5),
        "forbidden exits 5"
    );
    assert_eq!(
        run(&["slow", "--role", "reader", "--role", "admin"]).await,
        std::process::ExitCode::SUCCESS
    );
    assert_eq!(
        run(&["count", "--role", "reader"]).await,
        std::process::ExitCode::SUCCESS
    );
    assert_eq!(
        run(&["count", "--role", "ghost"]).await,
        std::process::ExitCode::from(5)
    );
    let url = format!("http://{}", s.http);
    let remote_role: Vec<&str> = vec!["app", "run", "count", "--role", "admin", "--url", &url];
    assert_eq!(
        app.run_from(remote_role).await,
        std::process::ExitCode::from(3),
        "--role is not sent to a server: a validation error"
    );
}

/// Over the listeners a caller's roles come from its credentials (the auth
/// issue); without any, a caller has no roles and so runs, sees and lists
/// nothing once roles are declared: 403 `forbidden` (or 404 with
/// `forbidden_as_not_found`), empty `/workflows`, `/openapi.json` and MCP
/// `tools/list` (all of them with `list_forbidden_workflows`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_roles_gets_nothing_over_http_and_mcp() {
    let s = InProcess::start_with(rbac_roles(), register_rbac_workflows).await;
    let (status, body) = s.execute("count").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (status, body) = s.execute("nope").await;
    assert_eq!(status, 404);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains("count"),
        "lists no forbidden name: {message}"
    );
    assert_eq!(
        get(s.http, "/workflows").await.json()["workflows"],
        json!([])
    );
    assert_eq!(
        get(s.http, "/openapi.json").await.json()["paths"],
        json!({})
    );
    let r = get(s.http, "/workflows/count").await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let client = s.mcp_client().await;
    assert!(
        client.list_all_tools().await.unwrap().is_empty(),
        "tools/list"
    );
    let r = call(&client, "count", &json!({})).await.unwrap();
    assert_eq!(r.is_error, Some(true));
    assert_eq!(result_json(&r)["error"]["code"], "forbidden");
    client.cancel().await.unwrap();
    // Nothing was written by the refused calls; the operator still runs all.
    let (status, _) = s.execute("create").await;
    assert_eq!(status, 403);
    let count = s.app.execute("count", json!({})).await.unwrap();
    assert_eq!(count["outputs"]["count"]["count"], 0);

    let hidden = InProcess::start_with(
        rbac_roles().forbidden_as_not_found(true),
        register_rbac_workflows,
    )
    .await;
    let (status, body) = hidden.execute("count").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    assert_eq!(
        hidden.execute("nope").await.1["error"]["message"]
            .as_str()
            .map(|m| m.replace("nope", "count")),
        body["error"]["message"].as_str().map(String::from),
        "a forbidden name reads like an unknown one"
    );
    let client = hidden.mcp_client().await;
    match call(&client, "count", &json!({})).await {
        Err(ServiceError::McpError(e)) => assert_eq!(e.code, RpcCode::INVALID_PARAMS),
        other => panic!("a hidden tool is no tool: {other:?}"),
    }
    client.cancel().await.unwrap();

    let listed = InProcess::start_with(
        rbac_roles().list_forbidden_workflows(true),
        register_rbac_workflows,
    )
    .await;
    assert_eq!(
        get(listed.http, "/workflows").await.json()["workflows"]
            .as_array()
            .map(Vec::len),
        Some(4)
    );
    let client = listed.mcp_client().await;
    assert_eq!(client.list_all_tools().await.unwrap().len(), 4);
    let r = call(&client, "count", &json!({})).await.unwrap();
    assert_eq!(
        result_json(&r)["error"]["code"],
        "forbidden",
        "listed, still refused"
    );
    client.cancel().await.unwrap();
}

/// Role mistakes are configuration errors: a duplicate role or an unknown
/// model at `build`, a workflow that is never registered when serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_mistakes_are_config_errors() {
    let db = probe_db().await;
    for b in [
        nexus::Nexus::builder()
            .role("a", |r| r)
            .role("a", |r| r.all()),
        nexus::Nexus::builder().role("a", |r| r.models_read(["Nope"])),
        nexus::Nexus::builder().role("a b", |r| r.all()),
        nexus::Nexus::builder().rate_limit(0),
    ] {
        let e = b.build(db.clone()).err().expect("refused");
        assert_eq!(e.code().as_str(), "config", "{e}");
    }
    let mut app = nexus::Nexus::builder()
        .role("a", |r| r.workflows(["typo"]))
        .build(db.clone())
        .unwrap();
    app.register("count", probe_workflow(&db)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = app.serve_http_on(listener).await.unwrap_err();
    assert_eq!(e.code().as_str(), "config");
    assert!(e.message().contains("typo"), "{e}");
    assert_eq!(
        app.run_from(["app", "run", "count"]).await,
        std::process::ExitCode::from(8)
    );
}

/// `POST path` with `body` from the local address `source` (another
/// loopback address is another client).
async fn post_from(
    source: &str,
    addr: SocketAddr,
    path: &str,
    body: &str,
) -> support::http::Response {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    support::http::Response {
        status,
        headers,
        body: body.to_string(),
    }
}

fn header<'a>(r: &'a support::http::Response, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `rate_limit(n)` per caller per minute: ten times the limit from one
/// client, in bounded time, never lets more than the burst plus what GCRA
/// refills meanwhile through; the refusals are 429 `rate_limited` with
/// `Retry-After` and the IETF `RateLimit-Policy` / `RateLimit` headers;
/// another client is unaffected; after `Retry-After` the first client
/// succeeds again. The same counters refuse it on MCP (a tool error) and
/// the CLI with `--url` (exit 7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_refuse_one_caller_and_spare_another() {
    // One call back every 6 s after the burst: the checks after the flood
    // run well within it, even on a loaded machine.
    const LIMIT: u32 = 10;
    let s = InProcess::start(nexus::Nexus::builder().rate_limit(LIMIT)).await;
    let path = "/workflows/count/execute";
    let started = Instant::now();
    let (mut ok, mut last_refusal) = (0u32, None);
    for _ in 0..LIMIT * 10 {
        let r = post_from("127.0.0.1", s.http, path, "{}").await;
        match r.status {
            200 => {
                ok += 1;
                assert_eq!(header(&r, "ratelimit-policy"), Some("\"caller\";q=10;w=60"));
                assert!(header(&r, "ratelimit").is_some_and(|v| v.starts_with("\"caller\";r=")));
            }
            429 => last_refusal = Some(r),
            other => panic!("only 200 or 429: {other} {}", r.body),
        }
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(30),
        "bounded in time: {elapsed:?}"
    );
    // GCRA refills one call every 60 / LIMIT seconds after the burst.
    let refilled = (elapsed.as_secs_f64() / (60.0 / f64::from(LIMIT))).ceil() as u32;
    assert!(ok >= LIMIT, "the burst goes through: {ok}");
    assert!(
        ok <= LIMIT + refilled,
        "{ok} > {LIMIT} + {refilled} in {elapsed:?}"
    );
    let refused = last_refusal.expect("some calls were refused");
    assert_eq!(
        refused.json()["error"]["code"],
        "rate_limited",
        "{}",
        refused.body
    );
    let retry: u64 = header(&refused, "retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=6).contains(&retry),
        "one call back within 60 / {LIMIT} s: {retry}"
    );
    assert_eq!(
        header(&refused, "ratelimit-policy"),
        Some("\"caller\";q=10;w=60")
    );
    assert_eq!(
        header(&refused, "ratelimit"),
        Some(format!("\"caller\";r=0;t={retry}").as_str())
    );

    // Another client has its own allowance.
    let other = post_from("127.0.0.2", s.http, path, "{}").await;
    assert_eq!(other.status, 200, "{}", other.body);
    // The same client is refused on MCP and on the CLI with --url.
    let client = s.mcp_client().await;
    let r = call(&client, "count", &json!({})).await.unwrap();
    assert_eq!(r.is_error, Some(true));
    assert_eq!(result_json(&r)["error"]["code"], "rate_limited");
    let url = format!("http://{}", s.http);
    let remote: Vec<&str> = vec!["app", "run", "count", "--url", &url, "--json"];
    assert_eq!(
        s.app.run_from(remote).await,
        std::process::ExitCode::from(7)
    );
    // In process nothing is limited.
    s.app.execute("count", json!({})).await.unwrap();

    // Retry-After is honoured: after it the client succeeds again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let again = post_from("127.0.0.1", s.http, path, "{}").await;
    assert_eq!(again.status, 200, "{}", again.body);
    client.cancel().await.unwrap();
}

/// A per-workflow limit counts each caller's calls of that workflow only;
/// the global limit counts every caller's calls together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_and_global_limits() {
    let s = InProcess::start_with(
        nexus::Nexus::builder().rate_limit_workflow("count", 2),
        register_rbac_workflows,
    )
    .await;
    let count = "/workflows/count/execute";
    for _ in 0..2 {
        assert_eq!(
            post_from("127.0.0.1", s.http, count, "{}").await.status,
            200
        );
    }
    let r = post_from("127.0.0.1", s.http, count, "{}").await;
    assert_eq!(
        (r.status, header(&r, "ratelimit-policy")),
        (429, Some("\"workflow:count\";q=2;w=60")),
        "{}",
        r.body
    );
    let slow = "/workflows/slow/execute";
    assert_eq!(
        post_from("127.0.0.1", s.http, slow, "{}").await.status,
        200,
        "another workflow"
    );
    assert_eq!(
        post_from("127.0.0.2", s.http, count, "{}").await.status,
        200,
        "another caller"
    );

    let g = InProcess::start(nexus::Nexus::builder().rate_limit_global(3).rate_limit(100)).await;
    let mut statuses = Vec::new();
    for source in [
        "127.0.0.1",
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
    ] {
        statuses.push(post_from(source, g.http, count, "{}").await.status);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 429],
        "three calls a minute in all"
    );
    let r = post_from("127.0.0.6", g.http, count, "{}").await;
    assert_eq!(
        header(&r, "ratelimit-policy"),
        Some("\"caller\";q=100;w=60, \"global\";q=3;w=60")
    );
    assert!(header(&r, "ratelimit").is_some_and(|v| v.starts_with("\"global\";r=0;t=")));
}

/// An MCP client talking to `server` (the stdio framing of `myapp mcp`)
/// over a loopback TCP connection.
async fn mcp_client_of(server: nexus::mcp::McpServer) -> RunningService<RoleClient, ()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let running = server.serve(stream).await.unwrap();
        let _ = running.waiting().await;
    });
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), ().serve(stream))
        .await
        .expect("MCP initialize in time")
        .unwrap()
}

/// MCP `tools/list` shows each caller the tools its roles grant, and calls
/// are checked the same way (`myapp mcp --role ...`, `McpServer::with_roles`);
/// without roles the stdio server is the operator's and lists everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_tools_list_differs_by_role() {
    let s = InProcess::start_with(rbac_roles(), register_rbac_workflows).await;
    let cases: &[(&[&str], &[&str])] = &[
        (&["counter"], &["count"]),
        (&["reader"], &["count"]),
        (&["writer"], &["create"]),
        (
            &["reader", "writer"],
            &["count", "create", "create_and_count"],
        ),
        (&["admin"], &["count", "create", "create_and_count", "slow"]),
        (&["ghost"], &[]),
        (&["nothing"], &[]),
    ];
    for (roles, tools) in cases {
        let client = mcp_client_of(s.app.mcp_server().with_roles(roles.iter().copied())).await;
        let listed: Vec<String> = client
            .list_all_tools()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect();
        assert_eq!(listed, *tools, "{roles:?}");
        let r = call(&client, "slow", &json!({})).await.unwrap();
        let allowed = tools.contains(&"slow");
        assert_eq!(r.is_error == Some(true), !allowed, "{roles:?}: {r:?}");
        if !allowed {
            assert_eq!(result_json(&r)["error"]["code"], "forbidden");
        }
        client.cancel().await.unwrap();
    }
    let operator = mcp_client_of(s.app.mcp_server()).await;
    assert_eq!(operator.list_all_tools().await.unwrap().len(), 4);
    let r = call(&operator, "slow", &json!({})).await.unwrap();
    assert_ne!(r.is_error, Some(true), "{r:?}");
    operator.cancel().await.unwrap();
}

// ---- Metrics, health and the monitor (issue 13) ----

/// Every `nexus_*` / `dataflow_*` name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut word = String::new();
    for c in expr.chars().chain([' ']) {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        if (word.starts_with("nexus_") || word.starts_with("dataflow_")) && !names.contains(&word) {
            names.push(word.clone());
        }
        word.clear();
    }
    names
}

/// Unique emails across calls of [`traffic`].
static DASH: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Some traffic on every channel family: creates, reads (one not found), lists.
fn traffic(addr: SocketAddr) {
    for i in 0..3 {
        let n = DASH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = format!(
            r#"{{"inputs": {{"email": "dash{i}-{n}@x.io", "full_name": "D", "active": true}}}}"#
        );
        let r = request(
            addr,
            "POST",
            "/workflows/create_user/execute",
            Some(body.as_bytes()),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = request(
        addr,
        "POST",
        "/workflows/get_user/execute",
        Some(br#"{"inputs": {"id": "nobody"}}"#),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let r = request(
        addr,
        "POST",
        "/workflows/list_users/execute",
        Some(br#"{"inputs": {"active": true, "limit": 10}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn dashboard_queries_name_exported_metrics() {
    let s = server(&support::sqlite_url("nexus_dashboard"));
    traffic(s.addr);
    let scrape = request(s.addr, "GET", "/metrics", None);
    assert_eq!(scrape.status, 200);
    let text = scrape.body;
    // One registry: each family is declared once.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        assert_eq!(
            text.matches(&format!("{line}\n")).count(),
            1,
            "{line} twice"
        );
    }
    let exported = |name: &str| {
        text.lines().any(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
    };
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/dashboards/dataflow-nexus.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut checked = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{}: {expr}", panel["title"]);
            for name in names {
                assert!(
                    exported(&name),
                    "panel {}: `{name}` is not exported:\n{text}",
                    panel["title"]
                );
                checked.push(name);
            }
        }
    }
    // The dashboard covers what the issue asks for.
    for family in [
        "nexus_requests_total",
        "nexus_request_duration_seconds_bucket",
        "dataflow_node_duration_seconds_bucket",
        "dataflow_node_errors_total",
        "dataflow_cache_hits_total",
        "dataflow_pool_waiting",
        "dataflow_slow_queries_total",
    ] {
        assert!(
            checked.iter().any(|n| n == family),
            "the dashboard has no {family}"
        );
    }
    // And the exporter's values follow the traffic exactly.
    for line in [
        r#"dataflow_node_calls_total{model="User",op="Create"} 3"#,
        r#"dataflow_node_errors_total{code="not_found",model="User",op="Read"} 1"#,
        r#"nexus_requests_total{channel="http",code="not_found",workflow="get_user"} 1"#,
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}

#[test]
fn ready_and_verbose_health_report_the_database() {
    let s = server(&support::sqlite_url("nexus_health"));
    traffic(s.addr);
    let plain = request(s.addr, "GET", "/health", None);
    assert_eq!((plain.status, plain.json()), (200, json!({"status": "ok"})));
    let ready = request(s.addr, "GET", "/ready", None);
    assert_eq!(
        (ready.status, ready.json()),
        (200, json!({"status": "ready"}))
    );
    let verbose = request(s.addr, "GET", "/health?verbose", None);
    assert_eq!(verbose.status, 200, "{}", verbose.body);
    let v = verbose.json();
    assert_eq!(v["status"], "ok");
    let report = &v["report"];
    assert_eq!(report["ready"], true);
    assert_eq!(report["database"]["answers"], true);
    assert_eq!(report["database"]["dialect"], "sqlite");
    assert_eq!(report["migrations"]["state"], "current");
    assert_eq!(report["pool"]["timeouts"], 0);
    assert!(report["pool"]["size"].as_u64().unwrap() >= 1);
    assert_eq!(report["writer"]["queue_depth"], 0);
    assert_eq!(report["slow_queries"]["recent"], 0);
    // The query cache is on by default.
    assert!(report["cache"]["hits"].is_u64(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_while_a_migration_is_blocked() {
    let url = support::sqlite_url("nexus_blocked");
    // The schema step is left to an operator: the tables do not exist.
    let db = dataflow::DataFlow::builder(&url)
        .models(&[&<Probe as dataflow::Model>::SCHEMA])
        .auto_migrate(false)
        .build()
        .await
        .unwrap();
    let app = std::sync::Arc::new(nexus::Nexus::builder().build(db.clone()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let a = app.clone();
    tokio::spawn(async move { a.serve_http_on(listener).await });
    let r = get(addr, "/ready").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "connection");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("blocked"),
        "{}",
        r.body
    );
    let v = get(addr, "/health?verbose").await.json();
    assert_eq!(v["status"], "degraded");
    assert_eq!(v["report"]["migrations"]["state"], "blocked");
    assert!(get(addr, "/metrics")
        .await
        .body
        .contains("dataflow_migrations_blocked 1"));
    db.migrations().apply(Default::default()).await.unwrap();
    assert_eq!(get(addr, "/ready").await.status, 200);
    assert!(get(addr, "/metrics")
        .await
        .body
        .contains("dataflow_migrations_applied_total 1"));
    app.shutdown();
}

/// A tmux server of this test's own (its own socket), killed on drop.
struct Tmux(String);

impl Tmux {
    fn new(name: &str) -> Tmux {
        Tmux(format!("dataflow-{name}-{}", std::process::id()))
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.0)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the pane shows `want` (or the test fails with what it shows).
    fn wait_for(&self, want: &str) -> String {
        let started = Instant::now();
        loop {
            let pane = self.run(&["capture-pane", "-p", "-t", "mon"]);
            if pane.contains(want) {
                return pane;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "`{want}` never shown:\n{pane}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

#[test]
fn monitor_draws_live_in_a_terminal_and_quits_on_q_or_ctrl_c() {
    if Command::new("tmux").arg("-V").output().is_err() {
        panic!("tmux is needed to test the monitor under a real terminal");
    }
    let s = server(&support::sqlite_url("nexus_monitor"));
    traffic(s.addr);
    let bin = support::programs::dataflow_bin();
    let dir = std::env::temp_dir().join(format!("dataflow-monitor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (key, label) in [("q", "q"), ("C-c", "ctrl_c")] {
        let exit_file = dir.join(format!("exit-{label}"));
        let _ = std::fs::remove_file(&exit_file);
        let tmux = Tmux::new(label);
        let command = format!(
            "{} monitor --url {} --interval-ms 300; echo $? > {}",
            bin.display(),
            s.base(),
            exit_file.display()
        );
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "mon",
            "-x",
            "150",
            "-y",
            "30",
            &command,
        ]);
        let pane = tmux.wait_for("Create");
        assert!(pane.contains("dataflow monitor"), "{pane}");
        assert!(pane.contains("OPS/S") && pane.contains("P99 MS"), "{pane}");
        assert!(pane.contains("User"), "{pane}");
        assert!(pane.contains("pool"), "{pane}");
        // New traffic shows as a rate in a later frame.
        traffic(s.addr);
        tmux.wait_for("Read");
        tmux.run(&["send-keys", "-t", "mon", key]);
        let started = Instant::now();
        let code = loop {
            if let Ok(code) = std::fs::read_to_string(&exit_file) {
                break code;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{label}: the monitor did not exit"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(code.trim(), "0", "{label}: exits cleanly");
    }
    // For scripts: one interval as JSON, without a terminal.
    let out = Command::new(&bin)
        .args([
            "monitor",
            "--url",
            &s.base(),
            "--once",
            "--json",
            "--interval-ms",
            "300",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let create = v["ops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == "User" && r["op"] == "Create")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(create["calls_total"], 9.0, "three rounds of traffic");
    assert_eq!(v["source"], s.base());
    // Without a terminal the live view refuses, with the way out.
    let out = Command::new(&bin)
        .args(["monitor", "--url", &s.base()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--once --json"));
    // A closed loopback port: a connection error, not a hang.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let out = Command::new(&bin)
        .args(["monitor", "--url", &closed, "--once", "--json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "connection", "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------ sessions and events

/// Sessions (`enable_sessions(true)`): made on one channel, used on every
/// other, by one caller only, for their TTL, on any instance of one
/// database; and the model-change events of `/events`.
mod sessions {
    use super::*;

    /// `nexus_server` with sessions and API keys on.
    const ENV: [(&str, &str); 2] = [("NEXUS_SESSIONS", "1"), ("NEXUS_API_KEYS", "1")];

    /// `nexus_server <args> --json` with sessions and keys on → (exit code, JSON printed).
    async fn cli_json(url: &str, args: &[&str]) -> (i32, Value) {
        let out = tokio::process::Command::from(example(url))
            .envs(ENV)
            .env_remove("NEXUS_TOKEN")
            .args(args)
            .arg("--json")
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
            panic!(
                "`{args:?}` printed no JSON: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), v)
    }

    /// A new API key with `role` (made by `keys create` in a subprocess).
    async fn key(url: &str, name: &str, role: &str) -> String {
        let (code, v) = cli_json(url, &["keys", "create", "--name", name, "--role", role]).await;
        assert_eq!(code, 0, "{v}");
        v["key"].as_str().unwrap().to_string()
    }

    /// `method path` with a bearer token, a session and a JSON body.
    async fn http(
        addr: SocketAddr,
        method: &'static str,
        path: &str,
        token: &str,
        session: Option<&str>,
        body: Option<Value>,
    ) -> support::http::Response {
        let path = path.to_string();
        let mut headers = vec![format!("Authorization: Bearer {token}")];
        if let Some(s) = session {
            headers.push(format!("X-Session-Id: {s}"));
        }
        tokio::task::spawn_blocking(move || {
            let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
            let body = body.map(|b| b.to_string().into_bytes());
            request_with(addr, method, &path, &headers, body.as_deref())
        })
        .await
        .unwrap()
    }

    async fn mcp_as(addr: SocketAddr, token: &str) -> RunningService<RoleClient, ()> {
        let config =
            rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
                format!("http://{addr}/mcp"),
            )
            .auth_header(token.to_string());
        let transport = StreamableHttpClientTransport::from_config(config);
        tokio::time::timeout(Duration::from_secs(30), ().serve(transport))
            .await
            .expect("MCP initialize in time")
            .unwrap()
    }

    /// A tool call with the session in `_meta` (`nexus/session`).
    async fn call_in_session(
        client: &RunningService<RoleClient, ()>,
        tool: &str,
        session: &str,
    ) -> CallToolResult {
        let mut meta = rmcp::model::RequestMetaObject::new();
        meta.0
             .0
            .insert(nexus::SESSION_MCP_META_KEY.into(), json!(session));
        let mut params = CallToolRequestParams::new(tool.to_string());
        params.meta = Some(meta);
        client.call_tool(params).await.unwrap()
    }

    /// Starts `n` servers on `url` at the same moment (so their boots race).
    fn servers_at_once(url: &str, n: usize) -> Vec<Server> {
        let starts: Vec<_> = (0..n)
            .map(|_| {
                let url = url.to_string();
                std::thread::spawn(move || server_with(&url, &ENV, false))
            })
            .collect();
        starts.into_iter().map(|t| t.join().unwrap()).collect()
    }

    /// The acceptance path of issue 14 §3: a session made over HTTP is
    /// written by a run (`session_output`), read by a workflow template on
    /// MCP and by the CLI over `--url`; another caller gets `not_found` on
    /// every channel; the session survives a restart, and on PostgreSQL two
    /// instances (booted at once on a fresh database) share it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_made_on_http_is_used_on_mcp_and_the_cli_by_its_owner_only() {
        for (backend, url) in support::backend_urls("sessions-channels") {
            let ann = key(&url, "ann", "admin").await;
            let bob = key(&url, "bob", "admin").await;
            let n = if backend == "postgres" { 2 } else { 1 };
            let mut servers = servers_at_once(&url, n);
            let a = &servers[0];

            let made = http(
                a.addr,
                "POST",
                "/sessions",
                &ann,
                None,
                Some(json!({"theme": "dark"})),
            )
            .await;
            assert_eq!(made.status, 201, "{backend}: {}", made.body);
            let id = made.json()["id"].as_str().unwrap().to_string();
            assert!(
                id.len() == 52
                    && id.starts_with("nxs_")
                    && id[4..].bytes().all(|b| b.is_ascii_hexdigit()),
                "{backend}: 192 random bits: {id}"
            );
            assert_eq!(made.json()["data"], json!({"theme": "dark"}));

            // A run with the session writes its output into it.
            let created = http(
                a.addr,
                "POST",
                "/workflows/create_user/execute",
                &ann,
                Some(&id),
                Some(json!({"inputs": {"email": format!("ann-{backend}@x.io")}})),
            )
            .await;
            assert_eq!(created.status, 200, "{backend}: {}", created.body);
            let user_id = created.json()["outputs"]["create"]["id"].clone();
            let read = http(a.addr, "GET", &format!("/sessions/{id}"), &ann, None, None).await;
            assert_eq!(read.status, 200, "{backend}: {}", read.body);
            assert_eq!(
                read.json()["data"],
                json!({"theme": "dark", "user_id": user_id})
            );

            // MCP: `whoami` reads `{{session.user_id}}`.
            let mcp = mcp_as(a.mcp, &ann).await;
            let r = call_in_session(&mcp, "whoami", &id).await;
            assert_ne!(r.is_error, Some(true), "{backend}: {r:?}");
            assert_eq!(result_json(&r)["outputs"]["user"]["id"], user_id);
            let tools = mcp.list_all_tools().await.unwrap();
            assert!(
                tools.iter().any(|t| t.name == "session_set"),
                "{backend}: session tools listed"
            );
            let set = call(
                &mcp,
                "session_set",
                &json!({"id": id, "data": {"theme": null, "lang": "de"}}),
            )
            .await
            .unwrap();
            assert_eq!(
                result_json(&set)["data"],
                json!({"lang": "de", "user_id": user_id})
            );
            mcp.cancel().await.unwrap();

            // The CLI over --url, as the same caller.
            let (code, v) = cli_json(
                &url,
                &["session", "get", &id, "--url", &a.base(), "--token", &ann],
            )
            .await;
            assert_eq!(
                (code, &v["data"]["user_id"]),
                (0, &user_id),
                "{backend}: {v}"
            );
            let (code, v) = cli_json(
                &url,
                &[
                    "run",
                    "whoami",
                    "--session",
                    &id,
                    "--url",
                    &a.base(),
                    "--token",
                    &ann,
                ],
            )
            .await;
            assert_eq!(
                (code, &v["outputs"]["user"]["id"]),
                (0, &user_id),
                "{backend}: {v}"
            );

            // Another caller: not_found everywhere, as for an id never made.
            let unknown = format!("nxs_{}", "0".repeat(48));
            for sid in [id.as_str(), unknown.as_str()] {
                let r = http(a.addr, "GET", &format!("/sessions/{sid}"), &bob, None, None).await;
                assert_eq!(
                    (r.status, r.json()["error"]["code"].as_str()),
                    (404, Some("not_found")),
                    "{backend}"
                );
                let r = http(
                    a.addr,
                    "PATCH",
                    &format!("/sessions/{sid}"),
                    &bob,
                    None,
                    Some(json!({"x": 1})),
                )
                .await;
                assert_eq!(r.status, 404, "{backend}: {}", r.body);
                let r = http(
                    a.addr,
                    "POST",
                    "/workflows/whoami/execute",
                    &bob,
                    Some(sid),
                    Some(json!({})),
                )
                .await;
                assert_eq!(r.status, 404, "{backend}: {}", r.body);
            }
            let mcp = mcp_as(a.mcp, &bob).await;
            let r = call_in_session(&mcp, "whoami", &id).await;
            assert_eq!(r.is_error, Some(true), "{backend}: {r:?}");
            assert_eq!(result_json(&r)["error"]["code"], "not_found");
            mcp.cancel().await.unwrap();
            let (code, v) = cli_json(
                &url,
                &["session", "get", &id, "--url", &a.base(), "--token", &bob],
            )
            .await;
            assert_eq!(
                (code, v["error"]["code"].as_str()),
                (4, Some("not_found")),
                "{backend}: {v}"
            );
            // The owner's data is untouched by the refused calls.
            let read = http(a.addr, "GET", &format!("/sessions/{id}"), &ann, None, None).await;
            assert_eq!(
                read.json()["data"],
                json!({"lang": "de", "user_id": user_id})
            );

            // The second instance on the same PostgreSQL database.
            if let Some(b) = servers.get(1) {
                let r = http(
                    b.addr,
                    "POST",
                    "/workflows/whoami/execute",
                    &ann,
                    Some(&id),
                    Some(json!({})),
                )
                .await;
                assert_eq!(r.status, 200, "{backend} B: {}", r.body);
                assert_eq!(r.json()["outputs"]["user"]["id"], user_id);
                let r = http(
                    b.addr,
                    "PATCH",
                    &format!("/sessions/{id}"),
                    &ann,
                    None,
                    Some(json!({"on": "b"})),
                )
                .await;
                assert_eq!(r.status, 200, "{backend} B: {}", r.body);
                let r = http(a.addr, "GET", &format!("/sessions/{id}"), &ann, None, None).await;
                assert_eq!(r.json()["data"]["on"], "b", "{backend}: A sees B's write");
            }

            // A restart: a new process on the same database still has it.
            servers.clear();
            let again = server_with(&url, &ENV, false);
            let r = http(
                again.addr,
                "GET",
                &format!("/sessions/{id}"),
                &ann,
                None,
                None,
            )
            .await;
            assert_eq!(r.status, 200, "{backend} after restart: {}", r.body);
            assert_eq!(r.json()["data"]["user_id"], user_id);
            // Deleted: gone for everyone.
            let r = http(
                again.addr,
                "DELETE",
                &format!("/sessions/{id}"),
                &ann,
                None,
                None,
            )
            .await;
            assert_eq!(r.status, 204, "{backend}: {}", r.body);
            let r = http(
                again.addr,
                "GET",
                &format!("/sessions/{id}"),
                &ann,
                None,
                None,
            )
            .await;
            assert_eq!(r.status, 404, "{backend}: {}", r.body);
            // The in-process CLI (the operator): create, run with, change, delete.
            let (code, made) = cli_json(
                &url,
                &[
                    "session",
                    "create",
                    "--as",
                    "ops",
                    &format!(r#"{{"user_id": {user_id}}}"#),
                ],
            )
            .await;
            assert_eq!(code, 0, "{backend}: {made}");
            let sid = made["id"].as_str().unwrap();
            let (code, v) = cli_json(&url, &["run", "whoami", "--session", sid]).await;
            assert_eq!(
                (code, &v["outputs"]["user"]["id"]),
                (0, &user_id),
                "{backend}: {v}"
            );
            let (code, v) = cli_json(
                &url,
                &["session", "set", sid, r#"{"user_id": null, "k": [1]}"#],
            )
            .await;
            assert_eq!(
                (code, &v["data"]),
                (0, &json!({"k": [1]})),
                "{backend}: {v}"
            );
            let (code, v) = cli_json(&url, &["run", "whoami", "--session", sid]).await;
            assert_eq!(
                (code, v["error"]["field"].as_str()),
                (3, Some("session.user_id")),
                "{backend}: {v}"
            );
            // Made as actor `ops`: not ann's.
            let r = http(
                again.addr,
                "GET",
                &format!("/sessions/{sid}"),
                &ann,
                None,
                None,
            )
            .await;
            assert_eq!(r.status, 404, "{backend}: {}", r.body);
            let (code, v) = cli_json(&url, &["session", "delete", sid]).await;
            assert_eq!((code, &v["deleted"]), (0, &json!(true)), "{backend}: {v}");
            let (code, v) = cli_json(&url, &["session", "get", sid]).await;
            assert_eq!(
                (code, v["error"]["code"].as_str()),
                (4, Some("not_found")),
                "{backend}: {v}"
            );
        }
    }

    #[dataflow::model]
    pub struct Note {
        pub id: String,
        pub text: String,
    }

    /// An in-process app on `url` with sessions (TTL `ttl`), the tenant
    /// header trusted, and `note_for_session` reading `{{session.note}}`.
    async fn session_app(url: &str, ttl: Duration) -> InProcess {
        let db = dataflow::DataFlow::builder(url)
            .models(&[&<Note as dataflow::Model>::SCHEMA])
            .build()
            .await
            .unwrap();
        let mut app = nexus::Nexus::builder()
            .enable_sessions(true)
            .session_ttl(ttl)
            .trust_tenant_header(true)
            .build(db.clone())
            .unwrap();
        let mut wf = dataflow::WorkflowBuilder::new();
        wf.add_node(
            "NoteCreateNode",
            "note",
            json!({"text": "{{session.note}} {{suffix}}"}),
        );
        app.register("note_for_session", wf.build(&db).unwrap())
            .unwrap();
        app.session_output("note_for_session", "last_note", "note.id")
            .unwrap();
        InProcess::serve(app).await
    }

    async fn as_tenant(
        addr: SocketAddr,
        method: &'static str,
        path: &str,
        tenant: &str,
        session: Option<&str>,
        body: Option<&str>,
    ) -> support::http::Response {
        let (path, body) = (path.to_string(), body.map(|b| b.as_bytes().to_vec()));
        let mut headers = vec![format!("X-Tenant-ID: {tenant}")];
        if let Some(s) = session {
            headers.push(format!("X-Session-Id: {s}"));
        }
        tokio::task::spawn_blocking(move || {
            let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
            request_with(addr, method, &path, &headers, body.as_deref())
        })
        .await
        .unwrap()
    }

    /// Expired sessions answer `not_found` and their rows are purged; a
    /// session of another tenant is `not_found`; bad input has its code.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sessions_expire_are_purged_and_stay_with_their_tenant() {
        for (backend, url) in support::backend_urls("sessions-expiry") {
            let app = session_app(&url, Duration::from_millis(700)).await;
            let made = as_tenant(
                app.http,
                "POST",
                "/sessions",
                "acme",
                None,
                Some(r#"{"note": "hi"}"#),
            )
            .await;
            assert_eq!(made.status, 201, "{backend}: {}", made.body);
            let id = made.json()["id"].as_str().unwrap().to_string();

            let run = as_tenant(
                app.http,
                "POST",
                "/workflows/note_for_session/execute",
                "acme",
                Some(&id),
                Some(r#"{"inputs": {"suffix": "there"}}"#),
            )
            .await;
            assert_eq!(run.status, 200, "{backend}: {}", run.body);
            assert_eq!(run.json()["outputs"]["note"]["text"], "hi there");
            let note_id = run.json()["outputs"]["note"]["id"].clone();
            let got = as_tenant(
                app.http,
                "GET",
                &format!("/sessions/{id}"),
                "acme",
                None,
                None,
            )
            .await;
            assert_eq!(
                got.json()["data"],
                json!({"note": "hi", "last_note": note_id}),
                "{backend}"
            );

            // Another tenant: not found; the run does not happen.
            let other = as_tenant(
                app.http,
                "GET",
                &format!("/sessions/{id}"),
                "globex",
                None,
                None,
            )
            .await;
            assert_eq!(
                (other.status, other.json()["error"]["code"].as_str()),
                (404, Some("not_found")),
                "{backend}"
            );
            let other = as_tenant(
                app.http,
                "POST",
                "/workflows/note_for_session/execute",
                "globex",
                Some(&id),
                Some(r#"{"inputs": {"suffix": "x"}}"#),
            )
            .await;
            assert_eq!(other.status, 404, "{backend}: {}", other.body);

            // Bad input: stable codes.
            let bad = as_tenant(
                app.http,
                "PATCH",
                &format!("/sessions/{id}"),
                "acme",
                None,
                Some("[1]"),
            )
            .await;
            assert_eq!(
                (bad.status, bad.json()["error"]["code"].as_str()),
                (422, Some("validation")),
                "{backend}"
            );
            let bad = as_tenant(
                app.http,
                "POST",
                "/sessions",
                "acme",
                None,
                Some("\"text\""),
            )
            .await;
            assert_eq!(bad.status, 422, "{backend}: {}", bad.body);
            let big = format!(r#"{{"blob": "{}"}}"#, "x".repeat(nexus::MAX_SESSION_BYTES));
            let bad = as_tenant(app.http, "POST", "/sessions", "acme", None, Some(&big)).await;
            assert_eq!(
                (bad.status, bad.json()["error"]["code"].as_str()),
                (413, Some("too_large")),
                "{backend}"
            );
            let none = as_tenant(
                app.http,
                "POST",
                "/workflows/note_for_session/execute",
                "acme",
                None,
                Some(r#"{"inputs": {"suffix": "x"}}"#),
            )
            .await;
            assert_eq!(
                (none.status, none.json()["error"]["field"].as_str()),
                (422, Some("session.note")),
                "{backend}: {}",
                none.body
            );

            // Expiry, then purge on the next create.
            tokio::time::sleep(Duration::from_millis(900)).await;
            let gone = as_tenant(
                app.http,
                "GET",
                &format!("/sessions/{id}"),
                "acme",
                None,
                None,
            )
            .await;
            assert_eq!(gone.status, 404, "{backend}: expired: {}", gone.body);
            let next = as_tenant(app.http, "POST", "/sessions", "acme", None, None).await;
            assert_eq!(next.status, 201, "{backend}: {}", next.body);
            let rows = app
                .app
                .db()
                .raw_query(
                    "SELECT COUNT(*) FROM nexus_sessions WHERE id = ?",
                    vec![json!(id)],
                )
                .await
                .unwrap();
            assert_eq!(rows[0][0], json!(0), "{backend}: the expired row is purged");
        }
    }

    impl InProcess {
        /// Serves `app` (its workflows registered) like [`InProcess::start`].
        async fn serve(app: nexus::Nexus) -> InProcess {
            let app = std::sync::Arc::new(app);
            let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let (http_addr, mcp_addr) = (http.local_addr().unwrap(), mcp.local_addr().unwrap());
            let a = app.clone();
            tokio::spawn(async move { a.serve_http_on(http).await });
            let a = app.clone();
            tokio::spawn(async move { a.serve_mcp_on(mcp).await });
            InProcess {
                app,
                http: http_addr,
                mcp: mcp_addr,
            }
        }
    }

    /// Sessions off: naming one is refused, not ignored; the names of the
    /// session tools are reserved once they are on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_on_an_app_without_sessions_is_refused() {
        let off = InProcess::start(nexus::Nexus::builder()).await;
        let r = tokio::task::spawn_blocking({
            let addr = off.http;
            move || {
                request_with(
                    addr,
                    "POST",
                    "/workflows/count/execute",
                    &["X-Session-Id: nxs_x"],
                    Some(b"{}"),
                )
            }
        })
        .await
        .unwrap();
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str()),
            (422, Some("validation")),
            "{}",
            r.body
        );
        assert_not_served(off.http, "/sessions/nxs_x").await;
        let db = probe_db().await;
        let mut app = nexus::Nexus::builder()
            .enable_sessions(true)
            .build(db.clone())
            .unwrap();
        let e = app
            .register("session_get", probe_workflow(&db))
            .unwrap_err();
        assert_eq!(e.code(), "validation");
        // With sessions on, /openapi.json documents them (and stays valid).
        let on = InProcess::start(nexus::Nexus::builder().enable_sessions(true)).await;
        let api = get(on.http, "/openapi.json").await.json();
        assert!(api["paths"]["/sessions/{id}"]["patch"].is_object());
        if let Err(errors) = openapi::validate(&api) {
            panic!("{errors:#?}");
        }
        let e = app.session_output("count", "k", "count.count").unwrap_err();
        assert_eq!(e.code(), "config", "an unregistered workflow");
        app.register("count", probe_workflow(&db)).unwrap();
        let e = app.session_output("count", "k", "nope.count").unwrap_err();
        assert_eq!(
            (e.code(), e.node()),
            (dataflow::ErrorCode::Config, Some("nope"))
        );
        let e = nexus::Nexus::builder()
            .session_ttl(Duration::ZERO)
            .build(db)
            .err()
            .expect("refused");
        assert_eq!(e.code(), "config");
    }

    /// A server-sent events client on a real loopback connection.
    struct Sse {
        stream: std::net::TcpStream,
        text: String,
        seen: usize,
    }

    impl Sse {
        /// `GET /events` with `headers`, once the response head arrived
        /// (so the subscription exists before anything runs).
        fn open(addr: SocketAddr, headers: &[String]) -> Sse {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
            write!(
                stream,
                "GET /events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{extra}\r\n"
            )
            .unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                stream.read_exact(&mut byte).unwrap();
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_string();
            assert!(
                head.contains("200 OK") && head.contains("text/event-stream"),
                "{head}"
            );
            Sse {
                stream,
                text: String::new(),
                seen: 0,
            }
        }

        /// Every complete event so far: (SSE id, JSON data).
        fn events(&self) -> Vec<(String, Value)> {
            let mut out = Vec::new();
            // Chunked framing aside, an event is its `id:` and `data:` lines.
            let mut id = String::new();
            for line in self.text.lines() {
                if let Some(i) = line.strip_prefix("id: ") {
                    id = i.trim().to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    if let Ok(v) = serde_json::from_str::<Value>(d.trim()) {
                        out.push((id.clone(), v));
                    }
                }
            }
            out
        }

        /// Reads until `done` holds for the events so far (10 s at most).
        fn until(
            &mut self,
            what: &str,
            done: impl Fn(&[(String, Value)]) -> bool,
        ) -> Vec<(String, Value)> {
            use std::io::Read;
            let started = Instant::now();
            let mut buf = [0u8; 8192];
            loop {
                let events = self.events();
                if done(&events) {
                    self.seen = events.len();
                    return events;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "{what}: not in {}",
                    self.text
                );
                let n = self.stream.read(&mut buf).unwrap_or(0);
                self.text.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    }

    /// Whether `events` hold the `kind` event of run `run_id`.
    fn has(events: &[(String, Value)], kind: &str, run_id: &Value) -> bool {
        events
            .iter()
            .any(|(_, e)| e["event"] == kind && &e["run_id"] == run_id)
    }

    /// An app on `url` with API keys, a tenant-less model `Note`, and two
    /// roles: `writer` (reads and writes notes) and `runner` (may run
    /// `create_note` by name, but not read notes).
    async fn events_app(url: &str) -> (InProcess, [String; 3]) {
        let db = dataflow::DataFlow::builder(url)
            .models(&[&<Note as dataflow::Model>::SCHEMA])
            .build()
            .await
            .unwrap();
        let mut app = nexus::Nexus::builder()
            .auth(nexus::Auth::new().api_keys(true))
            .role("writer", |r| r.models_read(["Note"]).models_write(["Note"]))
            .role("runner", |r| r.workflows(["create_note"]))
            .event_records(["Note"])
            .build(db.clone())
            .unwrap();
        let mut wf = dataflow::WorkflowBuilder::new();
        wf.add_node("NoteCreateNode", "note", json!({"text": "{{text}}"}));
        app.register("create_note", wf.build(&db).unwrap()).unwrap();
        let mut keys = Vec::new();
        for (name, role, tenant) in [
            ("aw", "writer", "a"),
            ("ar", "runner", "a"),
            ("bw", "writer", "b"),
        ] {
            let k = app
                .create_api_key(name, &[role], Some(tenant), None)
                .await
                .unwrap();
            keys.push(k["key"].as_str().unwrap().to_string());
        }
        (InProcess::serve(app).await, keys.try_into().unwrap())
    }

    /// Issue 14 §4: a Create through a workflow is a `created` event with
    /// its model, record id, tenant and run id on a real SSE client; tenant
    /// B never sees tenant A's events; a role without the model sees the
    /// run but not the change; `Last-Event-ID` replays what followed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn model_changes_reach_their_tenant_and_roles_and_replay() {
        for (backend, url) in support::backend_urls("events-filter") {
            let (app, [aw, ar, bw]) = events_app(&url).await;
            let bearer = |k: &str| vec![format!("Authorization: Bearer {k}")];
            let addr = app.http;
            let (mut sa, mut sr, mut sb) = tokio::task::block_in_place(|| {
                (
                    Sse::open(addr, &bearer(&aw)),
                    Sse::open(addr, &bearer(&ar)),
                    Sse::open(addr, &bearer(&bw)),
                )
            });
            let mut runs = Vec::new();
            for (key, text) in [(&aw, "a1"), (&bw, "b1"), (&aw, "a2"), (&bw, "b2")] {
                let r = http(
                    addr,
                    "POST",
                    "/workflows/create_note/execute",
                    key,
                    None,
                    Some(json!({"inputs": {"text": text}})),
                )
                .await;
                assert_eq!(r.status, 200, "{backend}: {}", r.body);
                runs.push(r.json());
            }
            let run_id = |i: usize| runs[i]["run_id"].clone();
            let note_id = |i: usize| runs[i]["outputs"]["note"]["id"].clone();

            let (a, r, b) = tokio::task::block_in_place(|| {
                (
                    sa.until("a2 created", |e| has(e, "created", &run_id(2))),
                    sr.until("a2 finished", |e| {
                        e.iter()
                            .any(|(_, v)| v["event"] == "finished" && v["run_id"] == run_id(2))
                    }),
                    sb.until("b2 created", |e| has(e, "created", &run_id(3))),
                )
            });
            // The writer of tenant a: its runs and changes, with the record.
            let created: Vec<&Value> = a
                .iter()
                .map(|(_, e)| e)
                .filter(|e| e["event"] == "created")
                .collect();
            assert_eq!(created.len(), 2, "{backend}: {a:?}");
            assert_eq!(
                (
                    &created[0]["model"],
                    &created[0]["record_id"],
                    &created[0]["tenant"],
                    &created[0]["run_id"]
                ),
                (&json!("Note"), &note_id(0), &json!("a"), &run_id(0)),
                "{backend}"
            );
            assert_eq!(
                created[0]["record"]["text"], "a1",
                "{backend}: records are on for Note"
            );
            assert!(
                a.iter().all(|(_, e)| e["tenant"] == "a"),
                "{backend}: only tenant a: {a:?}"
            );
            assert!(
                a.iter()
                    .all(|(id, e)| !id.is_empty() && e["id"] == json!(id)),
                "{backend}: every event has its id"
            );
            // Tenant b's writer: only b.
            assert!(
                b.iter().all(|(_, e)| e["tenant"] == "b"),
                "{backend}: {b:?}"
            );
            assert!(
                has(&b, "created", &run_id(1)) && !has(&b, "started", &run_id(0)),
                "{backend}"
            );
            // A role that may run the workflow but not read the model.
            assert!(
                has(&r, "started", &run_id(0)),
                "{backend}: runs are visible"
            );
            assert!(
                r.iter().all(|(_, e)| e["event"] != "created"),
                "{backend}: no model changes: {r:?}"
            );
            assert!(r.iter().all(|(_, e)| e["tenant"] == "a"), "{backend}");

            // Reconnect after a1's change: a2's events are replayed, not a1's nor b's.
            let after = a
                .iter()
                .find(|(_, e)| e["event"] == "created" && e["run_id"] == run_id(0))
                .unwrap()
                .0
                .clone();
            let mut headers = bearer(&aw);
            headers.push(format!("Last-Event-ID: {after}"));
            let replayed = tokio::task::block_in_place(|| {
                Sse::open(addr, &headers).until("replay of a2", |e| has(e, "created", &run_id(2)))
            });
            let kinds: Vec<(&str, &Value)> = replayed
                .iter()
                .map(|(_, e)| (e["event"].as_str().unwrap(), &e["run_id"]))
                .collect();
            assert_eq!(
                kinds,
                [
                    ("started", &run_id(2)),
                    ("node_finished", &run_id(2)),
                    ("finished", &run_id(2)),
                    ("created", &run_id(2))
                ],
                "{backend}"
            );
            drop(app);
        }
    }

    /// Issue 14 §5 for events: two instances on one PostgreSQL database; a
    /// run on A reaches a subscriber of B, its change included.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_from_one_instance_reach_anothers_subscribers_on_postgres() {
        let Some(url) = support::postgres::fresh_database("events-instances") else {
            eprintln!("skipped: PostgreSQL is not available");
            return;
        };
        let (a, b) = (server(&url), server(&url));
        let addr_b = b.addr;
        let mut sse = tokio::task::block_in_place(|| Sse::open(addr_b, &[]));
        let r = post(
            a.addr,
            "/workflows/create_user/execute".into(),
            json!({"inputs": {"email": "both@x.io"}})
                .to_string()
                .into_bytes(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let run = r.json();
        let events = tokio::task::block_in_place(|| {
            sse.until("A's change on B", |e| has(e, "created", &run["run_id"]))
        });
        let change = events
            .iter()
            .map(|(_, e)| e)
            .find(|e| e["event"] == "created")
            .unwrap();
        assert_eq!(
            (
                &change["model"],
                &change["record_id"],
                &change["tenant"],
                &change["workflow"]
            ),
            (
                &json!("User"),
                &run["outputs"]["create"]["id"],
                &Value::Null,
                &json!("create_user")
            )
        );
        assert!(change.get("record").is_none(), "records are opt-in");
        assert!(
            has(&events, "started", &run["run_id"]),
            "the run's own events too"
        );
        // B's ids are B's own: a client of B can resume with them.
        let ids: Vec<&str> = events.iter().map(|(id, _)| id.as_str()).collect();
        let prefix = ids[0].split('-').next().unwrap();
        assert!(ids.iter().all(|id| id.starts_with(prefix)), "{ids:?}");
    }
}

/// Durable requests (`enable_durability(true)`), against the
/// `durable_server` example as a child process on both backends:
/// idempotency keys on every channel, the run journal behind `GET
/// /runs/{id}`, and runs resumed after a real `kill -9`.
mod durability {
    use super::*;

    /// The `durable_server` example on `url` with free ports; killed on drop.
    fn spawn(url: &str, env: &[(&str, &str)]) -> Server {
        let (port, mcp_port) = (free_port(), free_port());
        let mut child = Command::new(support::programs::example("durable_server"))
            .env("NEXUS_DATABASE_URL", url)
            .env("NEXUS_API_PORT", port.to_string())
            .env("NEXUS_MCP_PORT", mcp_port.to_string())
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mcp: SocketAddr = format!("127.0.0.1:{mcp_port}").parse().unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err()
            || std::net::TcpStream::connect(mcp).is_err()
        {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the server exited before listening: {status}");
            }
            assert!(started.elapsed() < Duration::from_secs(60), "not started");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            child,
            addr,
            mcp,
            url: url.to_string(),
        }
    }

    /// `POST /workflows/{workflow}/execute` with `body` and these headers.
    async fn post_with(
        addr: SocketAddr,
        workflow: &str,
        headers: &[&str],
        body: Value,
    ) -> support::http::Response {
        let path = format!("/workflows/{workflow}/execute");
        let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
            request_with(
                addr,
                "POST",
                &path,
                &headers,
                Some(body.to_string().as_bytes()),
            )
        })
        .await
        .unwrap()
    }

    async fn get_with(addr: SocketAddr, path: &str, headers: &[&str]) -> support::http::Response {
        let path = path.to_string();
        let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
            request_with(addr, "GET", &path, &headers, None)
        })
        .await
        .unwrap()
    }

    /// The records a list workflow answers.
    async fn records(addr: SocketAddr, workflow: &str) -> Vec<Value> {
        let r = post_with(addr, workflow, &[], json!({})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        let node = v["outputs"].as_object().unwrap().values().next().unwrap();
        node["records"].as_array().unwrap().clone()
    }

    /// `durable_server run <args> --json`: (exit code, JSON printed).
    async fn cli_run(url: &str, args: &[&str]) -> (i32, Value) {
        let out = tokio::process::Command::new(support::programs::example("durable_server"))
            .env("NEXUS_DATABASE_URL", url)
            .arg("run")
            .args(args)
            .arg("--json")
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
            panic!(
                "`run {args:?}` printed no JSON: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), v)
    }

    /// The semantics of the IETF draft and Stripe, per backend: the first
    /// request runs and its answer is stored; a retry gets it byte for byte
    /// with `Idempotent-Replayed: true` (inputs in another key order are the
    /// same request); another request under the key is 422
    /// `idempotency_mismatch` and runs nothing; a retry while the first
    /// runs is 409 `conflict` with `Retry-After`; errors are stored and
    /// replayed; keys are per caller (another tenant's same key runs anew,
    /// and cannot read the other's run); without a key nothing is
    /// deduplicated; an expired key runs anew.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idempotency_keys_answer_once_per_caller() {
        for (backend, url) in support::backend_urls("durable_keys") {
            let s = spawn(
                &url,
                &[
                    ("NEXUS_TRUST_TENANT_HEADER", "1"),
                    ("NEXUS_RETENTION_MS", "4000"),
                ],
            );
            let a = ["Idempotency-Key: k1", "X-Tenant-ID: a"];
            let body = json!({"inputs": {"email": "a@x.io", "pause_ms": 0}});
            let first = post_with(s.addr, "onboard", &a, body.clone()).await;
            assert_eq!(first.status, 200, "{backend}: {}", first.body);
            assert_eq!(header(&first, "idempotent-replayed"), None);
            let reordered = json!({"inputs": {"pause_ms": 0, "email": "a@x.io"}});
            let again = post_with(s.addr, "onboard", &a, reordered).await;
            assert_eq!(again.status, 200, "{backend}");
            assert_eq!(again.body, first.body, "{backend}: byte for byte");
            assert_eq!(header(&again, "idempotent-replayed"), Some("true"));
            let run_id = first.json()["run_id"].as_str().unwrap().to_string();

            let other = json!({"inputs": {"email": "b@x.io", "pause_ms": 0}});
            let mismatch = post_with(s.addr, "onboard", &a, other).await;
            assert_eq!(mismatch.status, 422, "{backend}: {}", mismatch.body);
            assert_eq!(mismatch.json()["error"]["code"], "idempotency_mismatch");
            assert_eq!(
                records(s.addr, "list_accounts").await.len(),
                1,
                "nothing ran"
            );

            // Another caller (tenant b) with the same key: its own request.
            let b = ["Idempotency-Key: k1", "X-Tenant-ID: b"];
            let theirs = json!({"inputs": {"email": "b@x.io", "pause_ms": 0}});
            let r = post_with(s.addr, "onboard", &b, theirs).await;
            assert_eq!(r.status, 200, "{backend}: {}", r.body);
            assert_eq!(header(&r, "idempotent-replayed"), None);
            // Runs are journaled and shown only to whoever started them.
            let mine = get_with(s.addr, &format!("/runs/{run_id}"), &["X-Tenant-ID: a"]).await;
            assert_eq!(mine.status, 200, "{backend}: {}", mine.body);
            assert_eq!(mine.json()["status"], "finished");
            assert_eq!(mine.json()["workflow"], "onboard");
            let not_theirs =
                get_with(s.addr, &format!("/runs/{run_id}"), &["X-Tenant-ID: b"]).await;
            assert_eq!(not_theirs.status, 404, "{backend}: fail closed");
            let anonymous = get_with(s.addr, &format!("/runs/{run_id}"), &[]).await;
            assert_eq!(anonymous.status, 404, "{backend}");

            // A retry while the first request runs: 409 with Retry-After.
            let slow = json!({"inputs": {"email": "c@x.io", "pause_ms": 1500}});
            let k2: &'static [&'static str] = &["Idempotency-Key: k2", "X-Tenant-ID: a"];
            let running = tokio::spawn(post_with(s.addr, "onboard", k2, slow.clone()));
            tokio::time::sleep(Duration::from_millis(500)).await;
            let busy = post_with(s.addr, "onboard", k2, slow.clone()).await;
            assert_eq!(busy.status, 409, "{backend}: {}", busy.body);
            assert_eq!(busy.json()["error"]["code"], "conflict");
            assert_eq!(header(&busy, "retry-after"), Some("1"));
            let done = running.await.unwrap();
            assert_eq!(done.status, 200, "{backend}: {}", done.body);
            let after = post_with(s.addr, "onboard", k2, slow).await;
            assert_eq!(after.body, done.body, "{backend}");

            // Errors are stored and replayed (the email is taken).
            let k3 = ["Idempotency-Key: k3", "X-Tenant-ID: a"];
            let taken = json!({"inputs": {"email": "a@x.io", "pause_ms": 0}});
            let e1 = post_with(s.addr, "onboard", &k3, taken.clone()).await;
            assert_eq!(e1.status, 409, "{backend}: {}", e1.body);
            assert_eq!(e1.json()["error"]["code"], "unique_violation");
            let e2 = post_with(s.addr, "onboard", &k3, taken).await;
            assert_eq!((e2.status, &e2.body), (409, &e1.body), "{backend}");
            assert_eq!(header(&e2, "idempotent-replayed"), Some("true"));

            // Without a key nothing is deduplicated: the same create twice
            // runs twice (the second meets the unique email).
            let plain = json!({"inputs": {"email": "d@x.io"}});
            let p1 = post_with(s.addr, "create_account", &[], plain.clone()).await;
            let p2 = post_with(s.addr, "create_account", &[], plain).await;
            assert_eq!((p1.status, p2.status), (200, 409), "{backend}: {}", p2.body);

            // A malformed key is refused before anything runs.
            let long = format!("Idempotency-Key: {}", "k".repeat(256));
            let bad = post_with(
                s.addr,
                "create_account",
                &[&long],
                json!({"inputs": {"email": "e@x.io"}}),
            )
            .await;
            assert_eq!(bad.status, 422, "{backend}: {}", bad.body);

            // Past the retention the key is free again: it runs anew.
            tokio::time::sleep(Duration::from_millis(4200)).await;
            let fresh = post_with(
                s.addr,
                "onboard",
                &k3,
                json!({"inputs": {"email": "f@x.io", "pause_ms": 0}}),
            )
            .await;
            assert_eq!(fresh.status, 200, "{backend}: expired: {}", fresh.body);
            assert_eq!(header(&fresh, "idempotent-replayed"), None);
        }
    }

    /// The same key on the CLI (in process and with `--url`) and on MCP
    /// (`_meta["idempotency-key"]`, over streamable HTTP) answers once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cli_and_mcp_take_keys_too() {
        for (backend, url) in support::backend_urls("durable_channels") {
            // In process: the operator's keys.
            let args = [
                "create_account",
                "--email",
                "cli@x.io",
                "--idempotency-key",
                "c1",
            ];
            let (code, first) = cli_run(&url, &args).await;
            assert_eq!(code, 0, "{backend}: {first}");
            let (code, again) = cli_run(&url, &args).await;
            assert_eq!((code, &again), (0, &first), "{backend}: replayed");
            let other = [
                "create_account",
                "--email",
                "x@x.io",
                "--idempotency-key",
                "c1",
            ];
            let (code, mismatch) = cli_run(&url, &other).await;
            assert_eq!(code, 3, "{backend}: {mismatch}");
            assert_eq!(mismatch["error"]["code"], "idempotency_mismatch");

            let s = spawn(&url, &[]);
            let base = s.base();
            let remote = [
                "create_account",
                "--email",
                "url@x.io",
                "--idempotency-key",
                "u1",
                "--url",
                &base,
            ];
            let (code, first) = cli_run(&url, &remote).await;
            assert_eq!(code, 0, "{backend}: {first}");
            let (code, again) = cli_run(&url, &remote).await;
            assert_eq!(
                (code, &again),
                (0, &first),
                "{backend}: replayed over --url"
            );

            let client = s.mcp_client().await;
            let keyed = || {
                let mut p = CallToolRequestParams::new("create_account")
                    .with_arguments(json!({"email": "mcp@x.io"}).as_object().unwrap().clone());
                p.meta = Some(rmcp::model::RequestMetaObject::from(
                    json!({"idempotency-key": "m1"})
                        .as_object()
                        .unwrap()
                        .clone(),
                ));
                p
            };
            let r1 = client.call_tool(keyed()).await.unwrap();
            assert_ne!(r1.is_error, Some(true), "{backend}: {r1:?}");
            let r2 = client.call_tool(keyed()).await.unwrap();
            assert_eq!(result_json(&r2), result_json(&r1), "{backend}: replayed");
            assert_eq!(
                r2.meta
                    .as_ref()
                    .and_then(|m| m.0.get("idempotent-replayed")),
                Some(&json!(true)),
                "{backend}"
            );
            assert!(
                r1.meta.is_none(),
                "{backend}: the first answer is not a replay"
            );
            let accounts = records(s.addr, "list_accounts").await;
            assert_eq!(accounts.len(), 3, "{backend}: one each: {accounts:?}");
            client.cancel().await.unwrap();
        }
    }

    /// Without durability a key is refused (`not_supported`), never
    /// silently ignored.
    #[tokio::test]
    async fn a_key_without_durability_is_refused() {
        let url = support::sqlite_url("durable_off");
        let s = super::server(&url);
        let r = post_with(
            s.addr,
            "create_user",
            &["Idempotency-Key: k"],
            json!({"inputs": {"email": "a@x.io"}}),
        )
        .await;
        assert_eq!(r.status, 501, "{}", r.body);
        assert_eq!(r.json()["error"]["code"], "not_supported");
    }

    /// The crash test, on both backends: `onboard` (create an account,
    /// pause, create its welcome) is killed with SIGKILL during the pause,
    /// sync with an idempotency key and async. The restarted server resumes
    /// both after their last journaled node (and a transactional run, which
    /// committed nothing, whole): the account exists once, each
    /// welcome was written once, `GET /runs/{id}` says `finished`, and the
    /// retried key answers the resumed run's response.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_run_resumes_after_its_last_node() {
        for (backend, url) in support::backend_urls("durable_crash") {
            let env = [("NEXUS_LEASE_MS", "1000")];
            let mut s = spawn(&url, &env);
            let key: &'static [&'static str] = &["Idempotency-Key: crash-1"];
            let sync = json!({"inputs": {"email": "sync@x.io", "pause_ms": 3000}});
            let pending = tokio::spawn(post_with(s.addr, "onboard", key, sync.clone()));
            let started = post_with(
                s.addr,
                "onboard",
                &[],
                json!({"inputs": {"email": "async@x.io", "pause_ms": 3000}, "mode": "async"}),
            )
            .await;
            assert_eq!(started.status, 202, "{backend}: {}", started.body);
            let async_id = started.json()["run_id"].as_str().unwrap().to_string();
            // And a transactional run: nothing of it is committed at the
            // kill, so it runs whole again, once.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let tx = json!({"inputs": {"email": "tx@x.io", "pause_ms": 2000}});
            let tx_pending = tokio::spawn(post_with(s.addr, "onboard_tx", &[], tx));
            tokio::time::sleep(Duration::from_millis(900)).await;
            s.child.kill().unwrap(); // SIGKILL
            s.child.wait().unwrap();
            let cut = pending.await.unwrap();
            assert_eq!(
                cut.status, 0,
                "{backend}: the connection died with the server"
            );
            assert_eq!(tx_pending.await.unwrap().status, 0, "{backend}");

            let s = spawn(&url, &env);
            // The key's request resumes: 409 while it runs, then its answer.
            let deadline = Instant::now() + Duration::from_secs(30);
            let answer = loop {
                let r = post_with(s.addr, "onboard", key, sync.clone()).await;
                if r.status != 409 {
                    break r;
                }
                assert_eq!(header(&r, "retry-after"), Some("1"), "{backend}");
                assert!(Instant::now() < deadline, "{backend}: never resumed");
                tokio::time::sleep(Duration::from_millis(300)).await;
            };
            assert_eq!(answer.status, 200, "{backend}: {}", answer.body);
            assert_eq!(header(&answer, "idempotent-replayed"), Some("true"));
            let out = answer.json();
            let run_id = out["run_id"].as_str().unwrap().to_string();
            let account_id = out["outputs"]["account"]["id"].clone();
            assert_eq!(out["outputs"]["welcome"]["account_id"], account_id);
            let status = get(s.addr, &format!("/runs/{run_id}")).await;
            assert_eq!(
                status.json()["status"],
                "finished",
                "{backend}: {}",
                status.body
            );
            // The async run, too.
            let async_status = loop {
                let r = get(s.addr, &format!("/runs/{async_id}")).await;
                assert_eq!(r.status, 200, "{backend}: {}", r.body);
                if r.json()["status"] != "running" {
                    break r.json();
                }
                assert!(Instant::now() < deadline, "{backend}: async never resumed");
                tokio::time::sleep(Duration::from_millis(300)).await;
            };
            assert_eq!(
                async_status["status"], "finished",
                "{backend}: {async_status}"
            );

            // The transactional run (resumed without a key to wait on).
            let accounts = loop {
                let accounts = records(s.addr, "list_accounts").await;
                if accounts.iter().any(|a| a["email"] == "tx@x.io") {
                    break accounts;
                }
                assert!(Instant::now() < deadline, "{backend}: tx never resumed");
                tokio::time::sleep(Duration::from_millis(300)).await;
            };
            let welcomes = loop {
                let welcomes = records(s.addr, "list_welcomes").await;
                if welcomes.len() >= 3 {
                    break welcomes;
                }
                assert!(Instant::now() < deadline, "{backend}: tx never finished");
                tokio::time::sleep(Duration::from_millis(300)).await;
            };
            let emails: Vec<&str> = accounts
                .iter()
                .filter_map(|a| a["email"].as_str())
                .collect();
            assert_eq!(
                emails.iter().filter(|e| **e == "sync@x.io").count(),
                1,
                "{backend}"
            );
            assert_eq!(
                emails.iter().filter(|e| **e == "async@x.io").count(),
                1,
                "{backend}"
            );
            assert_eq!(
                emails.iter().filter(|e| **e == "tx@x.io").count(),
                1,
                "{backend}"
            );
            assert_eq!(
                welcomes.len(),
                3,
                "{backend}: node 3 ran once per run: {welcomes:?}"
            );
            assert!(welcomes.iter().any(|w| w["account_id"] == account_id));
        }
    }

    /// A run whose workflow changed while it was cut off is not resumed: it
    /// fails with `conflict` saying so, and its key answers that.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_changed_workflow_is_not_resumed() {
        for (backend, url) in support::backend_urls("durable_changed") {
            let mut s = spawn(&url, &[("NEXUS_LEASE_MS", "1000")]);
            let key: &'static [&'static str] = &["Idempotency-Key: changed-1"];
            let body = json!({"inputs": {"email": "v1@x.io", "pause_ms": 3000}});
            let pending = tokio::spawn(post_with(s.addr, "onboard", key, body.clone()));
            tokio::time::sleep(Duration::from_millis(1000)).await;
            s.child.kill().unwrap();
            s.child.wait().unwrap();
            let _ = pending.await;
            let s = spawn(
                &url,
                &[
                    ("NEXUS_LEASE_MS", "1000"),
                    ("NEXUS_ONBOARD_TEXT", "hello v2"),
                ],
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            let r = loop {
                let r = post_with(s.addr, "onboard", key, body.clone()).await;
                if r.status != 409 || r.json()["error"]["field"] != "idempotency-key" {
                    break r;
                }
                assert!(Instant::now() < deadline, "{backend}: never settled");
                tokio::time::sleep(Duration::from_millis(300)).await;
            };
            assert_eq!(r.status, 409, "{backend}: {}", r.body);
            let e = &r.json()["error"];
            assert_eq!(e["code"], "conflict", "{backend}: {e}");
            assert!(
                e["message"]
                    .as_str()
                    .unwrap()
                    .contains("definition changed"),
                "{backend}: {e}"
            );
            assert!(
                records(s.addr, "list_welcomes").await.is_empty(),
                "{backend}"
            );
        }
    }

    /// Retention: `purge_durable` deletes expired keys and the journal of
    /// runs finished before the retention; the purged key then runs anew.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn purge_forgets_expired_keys_and_runs() {
        for (backend, url) in support::backend_urls("durable_purge") {
            let db = dataflow::DataFlow::builder(&url)
                .models(&[&<Probe as dataflow::Model>::SCHEMA])
                .build()
                .await
                .unwrap();
            let mut app = nexus::Nexus::builder()
                .enable_durability(true)
                .durability_retention(Duration::from_millis(300))
                .build(db.clone())
                .unwrap();
            app.register("count", probe_workflow(&db)).unwrap();
            let app = std::sync::Arc::new(app);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let a = app.clone();
            tokio::spawn(async move { a.serve_http_on(listener).await });
            let key = ["Idempotency-Key: p1"];
            let first = post_with(addr, "count", &key, json!({})).await;
            assert_eq!(first.status, 200, "{backend}: {}", first.body);
            let again = post_with(addr, "count", &key, json!({})).await;
            assert_eq!(header(&again, "idempotent-replayed"), Some("true"));
            assert_eq!(
                app.purge_durable().await.unwrap(),
                0,
                "{backend}: nothing expired"
            );
            tokio::time::sleep(Duration::from_millis(400)).await;
            // The key, the two runs' journal (one node each).
            let purged = app.purge_durable().await.unwrap();
            assert!(purged >= 3, "{backend}: {purged} rows");
            let fresh = post_with(addr, "count", &key, json!({})).await;
            assert_eq!(fresh.status, 200, "{backend}");
            assert_eq!(header(&fresh, "idempotent-replayed"), None, "{backend}");
            app.shutdown();
        }
    }

    /// Two instances on one database (two processes): concurrent requests
    /// with one key, sent to both, run once; the rest wait (409) and then
    /// replay the one answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_instances_run_a_key_once() {
        for (backend, url) in support::backend_urls("durable_two") {
            let (a, b) = (spawn(&url, &[]), spawn(&url, &[]));
            let key: &'static [&'static str] = &["Idempotency-Key: shared-1"];
            let body = json!({"inputs": {"email": "two@x.io", "pause_ms": 800}});
            let sends: Vec<_> = (0..8)
                .map(|i| {
                    let addr = if i % 2 == 0 { a.addr } else { b.addr };
                    tokio::spawn(post_with(addr, "onboard", key, body.clone()))
                })
                .collect();
            let mut statuses = Vec::new();
            for s in sends {
                statuses.push(s.await.unwrap().status);
            }
            assert_eq!(
                statuses.iter().filter(|s| **s == 200).count(),
                1,
                "{backend}: one runs, the others are told to wait: {statuses:?}"
            );
            assert!(
                statuses.iter().all(|s| *s == 200 || *s == 409),
                "{backend}: {statuses:?}"
            );
            let replay = post_with(b.addr, "onboard", key, body.clone()).await;
            assert_eq!(
                header(&replay, "idempotent-replayed"),
                Some("true"),
                "{backend}"
            );
            let again = post_with(a.addr, "onboard", key, body).await;
            assert_eq!(again.body, replay.body, "{backend}: one answer on both");
            let accounts = records(a.addr, "list_accounts").await;
            assert_eq!(accounts.len(), 1, "{backend}: {accounts:?}");
        }
    }
}
