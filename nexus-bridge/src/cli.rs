//! The command line: the registered workflows as subcommands with typed
//! flags derived from their input schemas.

use crate::channel::{cli_error, too_large, MAX_INPUT_BYTES};
use crate::{Nexus, Registered};
use clap::{Arg, ArgAction, ArgMatches, Command};
use dataflow::{Error, ErrorCode, RunError};
use serde_json::{Map, Value};
use std::ffi::OsString;

/// What the command line asked for.
pub(crate) enum Outcome {
    /// `serve` (the default): the HTTP API and MCP over HTTP.
    Serve,
    /// `mcp`: MCP over stdin/stdout.
    McpStdio,
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
const RESERVED: [&str; 5] = ["json", "inputs", "url", "tenant", "as"];

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
                Arg::new("as")
                    .long("as")
                    .value_name("ACTOR")
                    .help("Run as this actor (recorded in audit rows and run events; in this process only)"),
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
                .about("Serve MCP over stdin/stdout (for an agent that starts this program)"),
        )
        .subcommand(
            Command::new("workflows")
                .about("List the registered workflows")
                .arg(Arg::new("json").long("json").action(ArgAction::SetTrue)),
        )
        .subcommand(run_command(workflows))
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

/// Runs `name` on the nexus server at `url`: its answer, or its error.
async fn remote(
    url: &str,
    name: &str,
    inputs: Value,
    tenant: Option<&String>,
) -> Result<Value, RunError> {
    let endpoint = format!("{}/workflows/{name}/execute", url.trim_end_matches('/'));
    let unreachable = |e: reqwest::Error| {
        Error::new(
            ErrorCode::Connection,
            format!("cannot reach the nexus server at {url}: {e}"),
        )
    };
    let mut request = reqwest::Client::new()
        .post(&endpoint)
        .json(&serde_json::json!({"inputs": inputs}));
    if let Some(t) = tenant {
        request = request.header(crate::identity::TENANT_HEADER, t);
    }
    let response = request.send().await.map_err(unreachable)?;
    let status = response.status();
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
        Some(("mcp", _)) => Outcome::McpStdio,
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
                return fail(app.shared.unknown_workflow(name), json_out);
            };
            let json_out = sub.get_flag("json");
            let result = match (inputs(w, sub), sub.get_one::<String>("url")) {
                (Err(e), _) => Err(e.into()),
                (Ok(inputs), Some(url)) => {
                    remote(url, name, inputs, sub.get_one::<String>("tenant")).await
                }
                (Ok(inputs), None) => match crate::identity::from_cli(
                    sub.get_one::<String>("tenant").map(String::as_str),
                    sub.get_one::<String>("as").map(String::as_str),
                ) {
                    Ok(context) => app.shared.execute(context, name, inputs, "cli", None).await,
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
