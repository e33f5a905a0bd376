//! The command line: the registered workflows as subcommands with typed
//! flags derived from their input schemas.

use crate::channel::{cli_error, too_large, Caller, Origin, MAX_INPUT_BYTES};
use crate::{Nexus, Registered};
use clap::{Arg, ArgAction, ArgMatches, Command};
use dataflow::{Error, ErrorCode, RunError};
use serde_json::{Map, Value};
use std::ffi::OsString;

/// What the command line asked for.
pub(crate) enum Outcome {
    /// `serve` (the default): the HTTP API and MCP over HTTP.
    Serve,
    /// `mcp`: MCP over stdin/stdout, as the operator or (`--role`) as a
    /// caller with these roles.
    McpStdio(Vec<String>),
    /// A command that ran (or a usage error): the process exit code.
    Exit(u8),
}

/// The exit code of a usage error; `--help` and `--version` exit 0.
const USAGE: u8 = 2;

fn json_type(schema: &Value) -> &str {
    let t = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        _ => match schema
            .get("anyOf")
            .and_then(|a| a.get(0))
            .and_then(|s| s.get("type"))
        {
            Some(Value::String(t)) => t.as_str(),
            _ => "json",
        },
    };
    match t {
        "string" | "integer" | "number" | "boolean" => t,
        _ => "json",
    }
}

/// Flags every `run <workflow>` has; an input with one of these names is
/// set through `--inputs`.
const RESERVED: [&str; 9] = [
    "json",
    "inputs",
    "url",
    "tenant",
    "as",
    "token",
    "role",
    "session",
    "idempotency-key",
];

/// `run <workflow>`: one subcommand per workflow, one flag per input.
fn run_command(workflows: &[&Registered]) -> Command {
    let mut run = Command::new("run")
        .about("Run a workflow in this process (or on a server with --url)")
        .subcommand_required(true)
        .arg_required_else_help(true)
        // An unknown workflow is the same `not_found` error as on HTTP, not a usage error.
        .allow_external_subcommands(true);
    for w in workflows {
        let schema = w.workflow.input_schema();
        let required: Vec<&str> = dataflow::json_schema::required(schema).collect();
        let mut sub = Command::new(w.name.clone())
            .about(w.description.clone())
            .arg(
                Arg::new("json")
                    .long("json")
                    .action(ArgAction::SetTrue)
                    .help("Print the result (or error) as compact JSON"),
            )
            .arg(
                Arg::new("inputs")
                    .long("inputs")
                    .value_name("JSON|@FILE|-")
                    .help("All inputs as one JSON object (text, a file, or stdin); flags override its fields"),
            )
            .arg(
                Arg::new("url")
                    .long("url")
                    .value_name("URL")
                    .help("Run on the nexus server at URL (e.g. http://127.0.0.1:8000) instead of in this process"),
            )
            .arg(
                Arg::new("tenant")
                    .long("tenant")
                    .value_name("TENANT")
                    .help("Run as this tenant (with --url: sent as X-Tenant-ID, which the server honours only with trust_tenant_header)"),
            )
            .arg(
                Arg::new("token")
                    .long("token")
                    .value_name("TOKEN")
                    .help("With --url: the credentials (a JWT or an API key), sent as `Authorization: Bearer`; default: the NEXUS_TOKEN variable"),
            )
            .arg(
                Arg::new("idempotency-key")
                    .long("idempotency-key")
                    .value_name("KEY")
                    .help("Run at most once for this key: a retry with the same key and inputs prints the first run's result (needs enable_durability; with --url: sent as the Idempotency-Key header)"),
            )
            .arg(
                Arg::new("as")
                    .long("as")
                    .value_name("ACTOR")
                    .help("Run as this actor (recorded in audit rows and run events; in this process only)"),
            )
            .arg(
                Arg::new("role")
                    .long("role")
                    .value_name("ROLE")
                    .action(ArgAction::Append)
                    .help("Run with this role (repeatable) to try the app's roles; without it this process runs as the operator, whom roles do not restrict (in this process only)"),
            )
            .arg(
                Arg::new("session")
                    .long("session")
                    .value_name("ID")
                    .help("Run with this session (enable_sessions): templates read {{session.<key>}}; with --url sent as X-Session-Id"),
            );
        for (name, prop) in schema["properties"].as_object().into_iter().flatten() {
            if RESERVED.contains(&name.as_str()) {
                continue;
            }
            let ty = json_type(prop);
            // Required inputs are checked by the workflow, so a missing one is
            // the same `validation` error (naming the input) as on HTTP and MCP.
            let required = if required.contains(&name.as_str()) {
                " (required)"
            } else {
                ""
            };
            sub = sub.arg(
                Arg::new(name.clone())
                    .long(name.clone())
                    .value_name(ty.to_uppercase())
                    .help(format!("{ty}{required}")),
            );
        }
        run = run.subcommand(sub);
    }
    run
}

fn root(workflows: &[&Registered]) -> Command {
    Command::new("nexus")
        .about("Serve and run workflows over HTTP and the command line")
        .subcommand(
            Command::new("serve").about("Serve the HTTP API and MCP over HTTP (the default)"),
        )
        .subcommand(
            Command::new("mcp")
                .about("Serve MCP over stdin/stdout (for an agent that starts this program)")
                .arg(
                    Arg::new("role")
                        .long("role")
                        .value_name("ROLE")
                        .action(ArgAction::Append)
                        .help("Answer as a caller with this role (repeatable) to try the app's roles; without it the agent acts as the operator"),
                ),
        )
        .subcommand(
            Command::new("workflows")
                .about("List the registered workflows")
                .arg(Arg::new("json").long("json").action(ArgAction::SetTrue)),
        )
        .subcommand(run_command(workflows))
        .subcommand(keys_command())
        .subcommand(session_command())
        .subcommand(forwarded("models", "The models in the persisted registry"))
        .subcommand(forwarded(
            "migrate",
            "Plan, apply and undo schema changes (see `migrate --help`)",
        ))
        .subcommand(forwarded(
            "audit",
            "List or purge the audit log (see `audit --help`)",
        ))
        .subcommand(forwarded(
            "monitor",
            "A live view of the metrics; --url watches a running server (see `monitor --help`)",
        ))
}

/// `keys create | list | revoke`: the API keys of `Auth::api_keys(true)`.
fn keys_command() -> Command {
    let json = || {
        Arg::new("json")
            .long("json")
            .action(ArgAction::SetTrue)
            .help("Print the result as compact JSON")
    };
    Command::new("keys")
        .about("Create, list and revoke API keys and OAuth clients (Auth::api_keys(true))")
        .subcommand_required(true)
        .subcommand(
            Command::new("create")
                .about("Make a key and print it once (only its hash is stored)")
                .arg(
                    Arg::new("name")
                        .long("name")
                        .required(true)
                        .value_name("NAME"),
                )
                .arg(
                    Arg::new("role")
                        .long("role")
                        .value_name("ROLE")
                        .action(ArgAction::Append)
                        .help("A role of the key (repeat for several)"),
                )
                .arg(Arg::new("tenant").long("tenant").value_name("TENANT"))
                .arg(
                    Arg::new("expires")
                        .long("expires")
                        .value_name("AGE")
                        .help("Expire after 90s, 30m, 12h, 7d or 2w (default: never)"),
                )
                .arg(
                    Arg::new("client")
                        .long("client")
                        .action(ArgAction::SetTrue)
                        .help(
                            "An OAuth client: prints a client id and secret for POST /oauth/token",
                        ),
                )
                .arg(json()),
        )
        .subcommand(
            Command::new("list")
                .about("Every key, without secrets")
                .arg(json()),
        )
        .subcommand(
            Command::new("revoke")
                .about("Revoke a key by id")
                .arg(Arg::new("id").required(true).value_name("ID"))
                .arg(json()),
        )
}

/// `session create | get | set | delete` (enable_sessions), in this
/// process or (`--url`) on a server.
fn session_command() -> Command {
    let common = |c: Command| {
        c.arg(
            Arg::new("json")
                .long("json")
                .action(ArgAction::SetTrue)
                .help("Print the result as compact JSON"),
        )
        .arg(
            Arg::new("url")
                .long("url")
                .value_name("URL")
                .help("On the nexus server at URL instead of in this process"),
        )
        .arg(
            Arg::new("token")
                .long("token")
                .value_name("TOKEN")
                .help("With --url: the credentials; default: the NEXUS_TOKEN variable"),
        )
        .arg(
            Arg::new("tenant")
                .long("tenant")
                .value_name("TENANT")
                .help("As this tenant (with --url: sent as X-Tenant-ID)"),
        )
        .arg(
            Arg::new("as")
                .long("as")
                .value_name("ACTOR")
                .help("As this actor (in this process only; the session belongs to it)"),
        )
    };
    let id = || Arg::new("id").required(true).value_name("ID");
    let data = |required: bool| Arg::new("data").required(required).value_name("JSON");
    Command::new("session")
        .about("Create, read, change and delete sessions (enable_sessions)")
        .subcommand_required(true)
        .subcommand(common(
            Command::new("create")
                .about("Make a session (with initial data, a JSON object) and print it")
                .arg(data(false)),
        ))
        .subcommand(common(
            Command::new("get").about("Print a session").arg(id()),
        ))
        .subcommand(common(
            Command::new("set")
                .about("Merge JSON into a session's data (RFC 7386: null removes a key)")
                .arg(id())
                .arg(data(true)),
        ))
        .subcommand(common(
            Command::new("delete").about("Delete a session").arg(id()),
        ))
}

/// Runs a `session` command in this process or on `--url`.
async fn session(app: &Nexus, m: &ArgMatches) -> Outcome {
    let Some((cmd, sub)) = m.subcommand() else {
        return Outcome::Exit(USAGE);
    };
    let json_out = sub.get_flag("json");
    // Not every subcommand has both (`try_`: never a panic for one it lacks).
    let arg = |name: &str| sub.try_get_one::<String>(name).ok().flatten();
    let id = arg("id").cloned().unwrap_or_default();
    let data = match arg("data").map(|raw| inputs_document(raw)) {
        None => Value::Null,
        Some(Ok(v)) => v,
        Some(Err(e)) => return fail(e, json_out),
    };
    let tenant = sub.get_one::<String>("tenant");
    let result: Result<Value, RunError> = match sub.get_one::<String>("url") {
        Some(url) => {
            let token = sub
                .get_one::<String>("token")
                .cloned()
                .or_else(|| std::env::var("NEXUS_TOKEN").ok());
            let (method, path, body) = match cmd {
                "create" => (reqwest::Method::POST, "/sessions".to_string(), Some(data)),
                "get" => (reqwest::Method::GET, format!("/sessions/{id}"), None),
                "set" => (
                    reqwest::Method::PATCH,
                    format!("/sessions/{id}"),
                    Some(data),
                ),
                _ => (reqwest::Method::DELETE, format!("/sessions/{id}"), None),
            };
            let request = Remote {
                url,
                tenant,
                token,
                session: None,
                key: None,
            };
            request.send(method, &path, body).await.map(|v| {
                if cmd == "delete" {
                    serde_json::json!({"id": id, "deleted": true})
                } else {
                    v
                }
            })
        }
        None => {
            let context = match crate::identity::from_cli(
                tenant.map(String::as_str),
                sub.get_one::<String>("as").map(String::as_str),
                &[],
            ) {
                Ok(c) => c,
                Err(e) => return fail(e, json_out),
            };
            // The operator reaches every session; it makes them as
            // `--as` / `--tenant` say.
            let caller = Caller::new(context, Origin::Operator);
            match app.shared.sessions() {
                Err(e) => Err(e.into()),
                Ok(sessions) => match cmd {
                    "create" => sessions.create(&caller, data).await,
                    "get" => sessions.get(&caller, &id).await,
                    "set" => sessions.patch(&caller, &id, data).await,
                    _ => sessions
                        .delete(&caller, &id)
                        .await
                        .map(|()| serde_json::json!({"id": id, "deleted": true})),
                }
                .map_err(RunError::from),
            }
        }
    };
    match result {
        Ok(v) => {
            if json_out {
                println!("{v}");
            } else {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
            Outcome::Exit(0)
        }
        Err(e) => fail(e, json_out),
    }
}

/// A positive age flag (`--expires 90d`) through [`dataflow::cli::parse_age`].
fn parse_age(flag: &str, s: &str) -> Result<std::time::Duration, Error> {
    let age = dataflow::cli::parse_age(s).filter(|age| !age.is_zero());
    age.ok_or_else(|| {
        Error::new(
            ErrorCode::Validation,
            format!(
                "--{flag}: expected an age such as 90s, 30m, 12h, 7d or 2w, got `{}`",
                Error::echo(s)
            ),
        )
        .with_field(flag)
    })
}

/// Runs a `keys` command against the application's database.
async fn keys(app: &Nexus, m: &ArgMatches) -> Outcome {
    let (cmd, sub) = match m.subcommand() {
        Some(c) => c,
        None => return Outcome::Exit(USAGE),
    };
    let json_out = sub.get_flag("json");
    let store = match app.key_store() {
        Ok(store) => store,
        Err(e) => return fail(e, json_out),
    };
    let result = match cmd {
        "create" => {
            let expires = match sub.get_one::<String>("expires") {
                Some(raw) => match parse_age("expires", raw) {
                    Ok(d) => Some(d),
                    Err(e) => return fail(e, json_out),
                },
                None => None,
            };
            store
                .create(crate::auth::keys::NewKey {
                    name: sub.get_one::<String>("name").cloned().unwrap_or_default(),
                    roles: sub
                        .get_many::<String>("role")
                        .into_iter()
                        .flatten()
                        .cloned()
                        .collect(),
                    tenant: sub.get_one::<String>("tenant").cloned(),
                    expires_in: expires,
                    client: sub.get_flag("client"),
                })
                .await
        }
        "list" => store.list().await,
        "revoke" => {
            let id = sub.get_one::<String>("id").cloned().unwrap_or_default();
            store
                .revoke(&id)
                .await
                .map(|()| serde_json::json!({"id": id, "revoked": true}))
        }
        _ => return Outcome::Exit(USAGE),
    };
    match result {
        Err(e) => fail(e, json_out),
        Ok(v) if json_out => {
            println!("{v}");
            Outcome::Exit(0)
        }
        Ok(v) => {
            match cmd {
                "create" if v.get("client_id").is_some() => println!(
                    "OAuth client `{}` created (shown once; only its hash is stored):\nclient_id:     {}\nclient_secret: {}",
                    v["name"].as_str().unwrap_or_default(),
                    v["client_id"].as_str().unwrap_or_default(),
                    v["client_secret"].as_str().unwrap_or_default()
                ),
                "create" => println!(
                    "API key `{}` ({}) created (shown once; only its hash is stored):\n{}",
                    v["name"].as_str().unwrap_or_default(),
                    v["id"].as_str().unwrap_or_default(),
                    v["key"].as_str().unwrap_or_default()
                ),
                "list" => {
                    println!(
                        "{:<14} {:<22} {:<16} {:<20} {:<10} STATE",
                        "ID", "PREFIX", "NAME", "ROLES", "TENANT"
                    );
                    for k in v.as_array().into_iter().flatten() {
                        let state = if !k["revoked"].is_null() {
                            "revoked".to_string()
                        } else if let Some(e) = k["expires"].as_str() {
                            format!("expires {e}")
                        } else {
                            "active".to_string()
                        };
                        let roles: Vec<&str> = k["roles"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .collect();
                        println!(
                            "{:<14} {:<22} {:<16} {:<20} {:<10} {}{}",
                            k["id"].as_str().unwrap_or_default(),
                            k["prefix"].as_str().unwrap_or_default(),
                            k["name"].as_str().unwrap_or_default(),
                            roles.join(","),
                            k["tenant"].as_str().unwrap_or("-"),
                            state,
                            if k["client"] == true { " (client)" } else { "" }
                        );
                    }
                }
                _ => println!("revoked {}", v["id"].as_str().unwrap_or_default()),
            }
            Outcome::Exit(0)
        }
    }
}

/// A command handed whole to dataflow's own CLI (its arguments, `--help`
/// included, are parsed there).
fn forwarded(name: &'static str, about: &'static str) -> Command {
    Command::new(name).about(about).disable_help_flag(true).arg(
        Arg::new("rest")
            .num_args(0..)
            .trailing_var_arg(true)
            .allow_hyphen_values(true),
    )
}

/// A flag's text as the JSON value its schema asks for.
fn parse_value(name: &str, prop: &Value, raw: &str) -> Result<Value, Error> {
    let bad = |what: &str| {
        Error::new(
            ErrorCode::Validation,
            format!("--{name}: expected {what}, got `{raw}`"),
        )
        .with_field(name)
    };
    Ok(match json_type(prop) {
        "string" => Value::String(raw.to_string()),
        "integer" => raw
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| bad("an integer"))?,
        "number" => raw
            .parse::<f64>()
            .map(Value::from)
            .map_err(|_| bad("a number"))?,
        "boolean" => raw
            .parse::<bool>()
            .map(Value::from)
            .map_err(|_| bad("true or false"))?,
        _ => serde_json::from_str(raw).map_err(|_| bad("JSON"))?,
    })
}

/// The `--inputs` document: JSON text, `@file`, or `-` for stdin.
fn inputs_document(raw: &str) -> Result<Value, Error> {
    let text = match raw {
        "-" => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|e| {
                Error::new(
                    ErrorCode::Validation,
                    format!("--inputs -: cannot read stdin: {e}"),
                )
            })?;
            text
        }
        _ => match raw.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| Error::new(ErrorCode::Validation, format!("--inputs @{path}: {e}")))?,
            None => raw.to_string(),
        },
    };
    if text.len() > MAX_INPUT_BYTES {
        return Err(too_large("--inputs"));
    }
    serde_json::from_str(&text).map_err(|e| {
        Error::new(
            ErrorCode::Validation,
            format!("--inputs: invalid JSON: {e}"),
        )
    })
}

/// The inputs of a run: the `--inputs` document, then each typed flag.
/// A document that is not an object goes to the workflow as it is, which
/// refuses it with the same error as on the other channels.
fn inputs(w: &Registered, m: &ArgMatches) -> Result<Value, Error> {
    let mut out = match m
        .get_one::<String>("inputs")
        .map(|raw| inputs_document(raw))
    {
        Some(Ok(Value::Object(doc))) => doc,
        Some(Ok(other)) => return Ok(other),
        Some(Err(e)) => return Err(e),
        None => Map::new(),
    };
    let schema = w.workflow.input_schema();
    for (name, prop) in schema["properties"].as_object().into_iter().flatten() {
        if RESERVED.contains(&name.as_str()) {
            continue;
        }
        if let Some(raw) = m.get_one::<String>(name) {
            out.insert(name.clone(), parse_value(name, prop, raw)?);
        }
    }
    Ok(Value::Object(out))
}

/// A request to the nexus server at `url`, as the CLI's `--url` sends it.
struct Remote<'a> {
    url: &'a str,
    tenant: Option<&'a String>,
    token: Option<String>,
    session: Option<&'a String>,
    /// `--idempotency-key`, sent as `Idempotency-Key`.
    key: Option<&'a String>,
}

impl Remote<'_> {
    /// Sends `method path` with `body` as JSON: the answer, or its error.
    async fn send(
        self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, RunError> {
        let url = self.url;
        let endpoint = format!("{}{path}", url.trim_end_matches('/'));
        let unreachable = |e: reqwest::Error| {
            Error::new(
                ErrorCode::Connection,
                format!("cannot reach the nexus server at {url}: {e}"),
            )
        };
        let mut request = reqwest::Client::new().request(method, &endpoint);
        if let Some(body) = body.filter(|b| !b.is_null()) {
            request = request.json(&body);
        }
        if let Some(t) = self.tenant {
            request = request.header(crate::identity::TENANT_HEADER, t);
        }
        if let Some(s) = self.session {
            request = request.header(crate::sessions::HEADER, s);
        }
        if let Some(key) = self.key {
            request = request.header("idempotency-key", key);
        }
        if let Some(token) = self.token.filter(|t| !t.is_empty()) {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        answer(response, &endpoint, status).await
    }
}

/// Runs `name` on the nexus server at `url`: its answer, or its error.
async fn remote(
    url: &str,
    name: &str,
    inputs: Value,
    tenant: Option<&String>,
    token: Option<String>,
    session: Option<&String>,
    key: Option<&String>,
) -> Result<Value, RunError> {
    let request = Remote {
        url,
        tenant,
        token,
        session,
        key,
    };
    request
        .send(
            reqwest::Method::POST,
            &format!("/workflows/{name}/execute"),
            Some(serde_json::json!({"inputs": inputs})),
        )
        .await
}

/// A server's JSON answer, or the error its body carries.
async fn answer(
    response: reqwest::Response,
    endpoint: &str,
    status: reqwest::StatusCode,
) -> Result<Value, RunError> {
    let body: Value = response.json().await.map_err(|e| {
        Error::new(
            ErrorCode::Connection,
            format!("{endpoint} answered {status} without a JSON body: {e}"),
        )
    })?;
    if status.is_success() {
        return Ok(body);
    }
    let error = body
        .get("error")
        .and_then(Error::from_json)
        .unwrap_or_else(|| {
            Error::new(
                ErrorCode::Internal,
                format!("{endpoint} answered {status}: {body}"),
            )
        });
    let completed = body["completed"].as_object().cloned().unwrap_or_default();
    Err(RunError::new(error, completed))
}

/// Parses `args` (the first is the program name) and runs the command.
pub(crate) async fn dispatch(app: &Nexus, args: Vec<OsString>) -> Outcome {
    let workflows: Vec<&Registered> = app.workflows().collect();
    let matches = match root(&workflows).try_get_matches_from(&args) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return Outcome::Exit(if e.use_stderr() { USAGE } else { 0 });
        }
    };
    match matches.subcommand() {
        None | Some(("serve", _)) => Outcome::Serve,
        Some(("mcp", m)) => Outcome::McpStdio(
            m.get_many::<String>("role")
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
        ),
        Some(("workflows", m)) => {
            if m.get_flag("json") {
                println!(
                    "{}",
                    Value::Array(workflows.iter().map(|w| w.summary()).collect())
                );
            } else {
                for w in &workflows {
                    println!("{:<24} {}", w.name, w.description);
                }
            }
            Outcome::Exit(0)
        }
        Some(("run", m)) => {
            let Some((name, sub)) = m.subcommand() else {
                return Outcome::Exit(USAGE);
            };
            let Some(w) = workflows.iter().find(|w| w.name == name) else {
                let json_out = sub
                    .get_many::<OsString>("")
                    .into_iter()
                    .flatten()
                    .any(|a| a == "--json");
                let operator = Caller::new(dataflow::Context::new(), Origin::Operator);
                return fail(app.shared.unknown_workflow(&operator, name), json_out);
            };
            let json_out = sub.get_flag("json");
            let roles: Vec<String> = sub
                .get_many::<String>("role")
                .into_iter()
                .flatten()
                .cloned()
                .collect();
            let result = match (inputs(w, sub), sub.get_one::<String>("url")) {
                (Err(e), _) => Err(e.into()),
                (Ok(_), Some(_)) if !roles.is_empty() => Err(Error::new(
                    ErrorCode::Validation,
                    "--role tries roles in this process; a server takes the caller's roles from its credentials",
                )
                .with_field("role")
                .into()),
                (Ok(inputs), Some(url)) => {
                    let token = sub
                        .get_one::<String>("token")
                        .cloned()
                        .or_else(|| std::env::var("NEXUS_TOKEN").ok());
                    remote(
                        url,
                        name,
                        inputs,
                        sub.get_one::<String>("tenant"),
                        token,
                        sub.get_one::<String>("session"),
                        sub.get_one::<String>("idempotency-key"),
                    )
                    .await
                }
                (Ok(inputs), None) => match crate::identity::from_cli(
                    sub.get_one::<String>("tenant").map(String::as_str),
                    sub.get_one::<String>("as").map(String::as_str),
                    &roles,
                ) {
                    Ok(context) => {
                        // The operator, unless roles were asked for.
                        let origin = if roles.is_empty() {
                            Origin::Operator
                        } else {
                            Origin::InProcess
                        };
                        let caller = Caller::new(context, origin)
                            .with_session(sub.get_one::<String>("session").cloned());
                        let key = sub.get_one::<String>("idempotency-key").map(String::as_str);
                        app.shared
                            .execute_keyed(caller, name, inputs, "cli", key)
                            .await
                            .map(|(v, _)| v)
                    }
                    Err(e) => Err(e.into()),
                },
            };
            match result {
                Ok(v) => {
                    println!(
                        "{}",
                        if json_out {
                            v.to_string()
                        } else {
                            serde_json::to_string_pretty(&v).unwrap_or_default()
                        }
                    );
                    Outcome::Exit(0)
                }
                Err(e) => fail(e, json_out),
            }
        }
        Some(("keys", m)) => keys(app, m).await,
        Some(("session", m)) => session(app, m).await,
        Some((cmd @ ("models" | "migrate" | "audit" | "monitor"), m)) => {
            let mut argv = vec![args[0].clone(), cmd.into()];
            argv.extend(
                m.get_many::<String>("rest")
                    .into_iter()
                    .flatten()
                    .map(OsString::from),
            );
            let code = dataflow::cli::run_from(app.db(), argv).await;
            Outcome::Exit(u8::try_from(code).unwrap_or(1))
        }
        Some(_) => Outcome::Exit(USAGE),
    }
}

/// Prints an error the CLI way and exits with its code.
fn fail(e: impl Into<RunError>, json_out: bool) -> Outcome {
    Outcome::Exit(cli_error(&e.into(), json_out))
}
