//! nexus over MCP: a real rmcp client against the streamable HTTP transport
//! on a loopback socket, and against the stdio transport of a child process.

mod support;

use dataflow::{DataFlow, WorkflowBuilder};
use nexus::Registered;
use rmcp::model::{CallToolRequestParams, CallToolResult, ErrorCode as RpcCode, JsonObject};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::ServiceExt;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use support::sqlite_url;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[dataflow::model]
pub struct User {
    pub id: String,
    #[field(unique)]
    pub email: String,
    pub full_name: Option<String>,
}

/// Set in the child process the stdio test spawns: the database URL it serves.
const STDIO_CHILD: &str = "NEXUS_MCP_STDIO_CHILD";

struct App {
    app: nexus::Nexus,
    workflows: Arc<BTreeMap<String, Registered>>,
}

async fn app(url: &str) -> App {
    let db = DataFlow::builder(url).build().await.unwrap();
    let mut wf = WorkflowBuilder::new();
    wf.add_node(
        "UserCreateNode",
        "create",
        json!({"email": "{{email}}", "full_name": "{{full_name}}"}),
    )
    .description("Creates a user account");
    let wf = wf.build(&db).unwrap();
    let mut app = nexus::Nexus::builder().build(db.clone()).unwrap();
    app.register("create_user", wf).unwrap();
    let workflows = app.workflows_map();
    App { app, workflows }
}

fn args(v: Value) -> JsonObject {
    match v {
        Value::Object(m) => m,
        other => panic!("arguments must be an object, got {other}"),
    }
}

async fn call(
    client: &RunningService<RoleClient, ()>,
    name: &str,
    arguments: Value,
) -> Result<CallToolResult, ServiceError> {
    client
        .call_tool(CallToolRequestParams::new(name.to_string()).with_arguments(args(arguments)))
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

/// Lists the tools, creates a user, and checks the error shapes: what both transports must do.
async fn exercise(
    client: &RunningService<RoleClient, ()>,
    workflows: &BTreeMap<String, Registered>,
) {
    let registered = &workflows["create_user"];
    let tools = client.list_all_tools().await.unwrap();
    assert_eq!(tools.len(), 1, "{tools:?}");
    let tool = &tools[0];
    assert_eq!(tool.name, "create_user");
    assert_eq!(
        tool.description.as_deref(),
        Some(registered.description.as_str())
    );
    assert_eq!(registered.description, "Creates a user account");
    assert_eq!(
        tool.schema_as_json_value(),
        *registered.workflow.input_schema()
    );
    assert_eq!(
        tool.input_schema["properties"]["email"]["type"], "string",
        "{:?}",
        tool.input_schema
    );

    // Success: the HTTP result shape.
    let ok = call(
        client,
        "create_user",
        json!({"email": "ann@x.io", "full_name": "Ann"}),
    )
    .await
    .unwrap();
    assert_eq!(ok.is_error, Some(false));
    let body = result_json(&ok);
    assert_eq!(body["outputs"]["create"]["email"], "ann@x.io");
    assert_eq!(body["outputs"]["create"]["full_name"], "Ann");
    assert!(body["run_id"].is_string(), "{body}");
    assert!(body["execution_time"].is_number(), "{body}");
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["execution_time", "outputs", "run_id"]);

    // Wrong type: a tool error carrying the HTTP error body.
    let bad = call(
        client,
        "create_user",
        json!({"email": 42, "full_name": "Bob"}),
    )
    .await
    .unwrap();
    assert_eq!(bad.is_error, Some(true));
    let body = result_json(&bad);
    assert_eq!(body["error"]["code"], "validation", "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");

    // Duplicate email.
    let dup = call(
        client,
        "create_user",
        json!({"email": "ann@x.io", "full_name": "Ann again"}),
    )
    .await
    .unwrap();
    assert_eq!(dup.is_error, Some(true));
    let body = result_json(&dup);
    assert_eq!(body["error"]["code"], "unique_violation", "{body}");
    assert_eq!(body["error"]["node"], "create", "{body}");

    // Unknown tool: a protocol error (invalid params) with code not_found in its data.
    match call(client, "no_such_tool", json!({})).await {
        Err(ServiceError::McpError(e)) => {
            assert_eq!(e.code, RpcCode::INVALID_PARAMS, "{e:?}");
            assert!(e.message.contains("not_found"), "{e:?}");
            let data = e.data.expect("error data");
            assert_eq!(data["error"]["code"], "not_found", "{data}");
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

/// Sends an `initialize` POST to `/mcp` with the `Host` header `host` and
/// returns the HTTP status.
async fn initialize_status(addr: std::net::SocketAddr, host: &str) -> u16 {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}})
    .to_string();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        let n = stream.read(&mut buf[read..]).await.unwrap();
        assert!(n > 0, "connection closed before a status line");
        read += n;
    }
    let head = String::from_utf8_lossy(&buf[..read]).to_string();
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamable_http_lists_and_calls_workflows() {
    let App { app, workflows } = app(&sqlite_url("nexus-mcp-http")).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(nexus::mcp::serve_http(
        app.db().clone(),
        workflows.clone(),
        listener,
        vec!["mcp.internal".into()],
    ));

    let transport = StreamableHttpClientTransport::from_uri(format!("http://{addr}/mcp"));
    let client = tokio::time::timeout(Duration::from_secs(30), ().serve(transport))
        .await
        .expect("initialize in time")
        .unwrap();
    let info = client.peer_info().expect("server info");
    assert_eq!(
        info.server_info.as_ref().map(|i| i.name.as_str()),
        Some("nexus")
    );
    assert!(info.capabilities.tools.is_some());

    tokio::time::timeout(Duration::from_secs(60), exercise(&client, &workflows))
        .await
        .expect("calls in time");

    // The same JSON as the HTTP channel: both go through `Nexus::execute`'s path.
    let mcp = call(&client, "create_user", json!({"email": 7}))
        .await
        .unwrap();
    let http = app
        .execute("create_user", json!({"email": 7}))
        .await
        .unwrap_err();
    assert_eq!(result_json(&mcp), nexus::error_body(&http));
    let mcp = call(&client, "create_user", json!({"email": "ann@x.io"}))
        .await
        .unwrap();
    let http = app
        .execute("create_user", json!({"email": "ann@x.io"}))
        .await
        .unwrap_err();
    assert_eq!(result_json(&mcp), nexus::error_body(&http));

    client.cancel().await.unwrap();

    // DNS-rebinding protection: loopback and configured hosts only.
    assert_eq!(
        initialize_status(addr, &format!("127.0.0.1:{}", addr.port())).await,
        200
    );
    assert_eq!(
        initialize_status(addr, &format!("localhost:{}", addr.port())).await,
        200
    );
    assert_eq!(initialize_status(addr, "mcp.internal").await, 200);
    assert_eq!(initialize_status(addr, "evil.example").await, 403);

    server.abort();
}

/// Not a test on its own: the MCP stdio server the stdio test spawns (this
/// same test binary, with `NEXUS_MCP_STDIO_CHILD` set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of stdio_lists_and_calls_workflows"]
async fn stdio_child() {
    let url = std::env::var(STDIO_CHILD).expect("run by the stdio test");
    let App { app, workflows } = app(&url).await;
    nexus::mcp::serve_stdio(app.db().clone(), workflows)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_lists_and_calls_workflows() {
    if std::env::var(STDIO_CHILD).is_ok() {
        return;
    }
    let url = sqlite_url("nexus-mcp-stdio");
    // Migrate here first so the child boots on an up-to-date file.
    let App { workflows, .. } = app(&url).await;

    let mut cmd = tokio::process::Command::new(std::env::current_exe().unwrap());
    // Quiet and multi-threaded so libtest writes nothing before a test ends;
    // the one line it writes first ("running 1 test") is not JSON and rmcp skips it.
    cmd.args([
        "stdio_child",
        "--exact",
        "--ignored",
        "--nocapture",
        "--quiet",
        "--test-threads=2",
    ])
    .env(STDIO_CHILD, &url);
    let transport = TokioChildProcess::new(cmd).unwrap();
    let client = tokio::time::timeout(Duration::from_secs(30), ().serve(transport))
        .await
        .expect("initialize in time")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), exercise(&client, &workflows))
        .await
        .expect("calls in time");
    client.cancel().await.unwrap();
}

/// Set in the child process the shutdown test spawns: the database URL it serves.
const HTTP_CHILD: &str = "NEXUS_MCP_HTTP_CHILD";

/// Not a test on its own: `serve_http` in a child process, for the shutdown test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of serve_http_stops_on_sigterm_with_open_sessions"]
async fn http_child() {
    let url = std::env::var(HTTP_CHILD).expect("run by the shutdown test");
    let App { app, workflows } = app(&url).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("NEXUS_MCP_ADDR={}", listener.local_addr().unwrap());
    nexus::mcp::serve_http(app.db().clone(), workflows, listener, vec![])
        .await
        .unwrap();
    println!("NEXUS_MCP_STOPPED");
}

/// SIGTERM stops `serve_http` even while a client holds an MCP session (and
/// its SSE stream) open.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_http_stops_on_sigterm_with_open_sessions() {
    use tokio::io::AsyncBufReadExt;
    if std::env::var(HTTP_CHILD).is_ok() {
        return;
    }
    let url = sqlite_url("nexus-mcp-sigterm");
    drop(app(&url).await);
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "http_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--quiet",
            "--test-threads=2",
        ])
        .env(HTTP_CHILD, &url)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(addr) = line.strip_prefix("NEXUS_MCP_ADDR=") {
                return addr.to_string();
            }
        }
        panic!("the child exited without serving");
    })
    .await
    .expect("child serves in time");

    let client = ()
        .serve(StreamableHttpClientTransport::from_uri(format!(
            "http://{addr}/mcp"
        )))
        .await
        .unwrap();
    assert_eq!(client.list_all_tools().await.unwrap().len(), 1);

    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the server stops in time")
        .unwrap();
    assert!(status.success(), "{status}");
    let mut rest = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        rest.push(line);
    }
    assert!(rest.iter().any(|l| l == "NEXUS_MCP_STOPPED"), "{rest:?}");
    drop(client);
}
