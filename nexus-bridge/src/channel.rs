//! What every channel shares: running a registered workflow, the output
//! shape, and how each channel reports an error.

use crate::limits::{Decision, Limit};
use crate::Registered;
use dataflow::{Context, DataFlow, Error, ErrorCode, RunError, Workflow};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// What the channels of one application share: the database, the
/// registered workflows, what is published, and the event stream and metrics.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) db: DataFlow,
    pub(crate) workflows: Arc<BTreeMap<String, Registered>>,
    pub(crate) surface: Surface,
    pub(crate) hub: Arc<Hub>,
    /// Runs started with `"mode": "async"`.
    pub(crate) runs: Arc<crate::runs::Runs>,
    /// With `enable_auth(true)`: who may call, checked on both listeners.
    pub(crate) auth: Option<Arc<crate::auth::Authenticator>>,
    /// Who may call which workflow.
    pub(crate) access: Arc<crate::access::Roles>,
    /// The rate limits calls over a listener are checked against.
    pub(crate) limits: Arc<crate::limits::RateLimits>,
    /// With `enable_sessions(true)`: the sessions in the database.
    pub(crate) sessions: Option<Arc<crate::sessions::Sessions>>,
    /// With `enable_durability(true)`: idempotency keys and the run journal.
    pub(crate) durable: Option<Arc<crate::durable::Durable>>,
}

/// Where a call comes from, which decides what is checked before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Whoever runs the program: the in-process CLI without `--role`, MCP
    /// over stdio, `Nexus::execute`. Neither roles nor rate limits apply.
    Operator,
    /// A context of its own in this process (`Nexus::execute_in`, the CLI
    /// with `--role`): its roles decide; no rate limits.
    InProcess,
    /// Over a listener (the HTTP API, MCP over HTTP), from this address when
    /// known: its roles decide, and rate limits apply.
    Remote(Option<IpAddr>),
}

/// Who is calling: the context identity built, and where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) context: Context,
    pub(crate) origin: Origin,
    /// The session the call names (`X-Session-Id`, `--session`, MCP `_meta`).
    pub(crate) session: Option<String>,
}

impl Caller {
    pub(crate) fn new(context: Context, origin: Origin) -> Caller {
        Caller {
            context,
            origin,
            session: None,
        }
    }

    /// This caller, naming session `id` for its run.
    pub(crate) fn with_session(mut self, id: Option<String>) -> Caller {
        self.session = id;
        self
    }

    /// Whether roles decide: not for the operator, nor for the explicit
    /// `Context::system()` escape hatch.
    fn checked(&self) -> bool {
        self.origin != Origin::Operator && !self.context.system
    }

    /// The key its rate limits count under: the actor, else the client's
    /// address; callers with neither share one key. `None`: not limited.
    fn rate_key(&self) -> Option<String> {
        let Origin::Remote(address) = self.origin else {
            return None;
        };
        Some(match (&self.context.actor, address) {
            (Some(actor), _) => format!("actor:{actor}"),
            (None, Some(ip)) => format!("ip:{ip}"),
            (None, None) => "anonymous".to_string(),
        })
    }
}

/// A call that passed the gate ([`Shared::admit`]): the only way to run a
/// workflow, so no channel can skip the checks.
pub(crate) struct Admission {
    context: Context,
    name: String,
    workflow: Workflow,
    /// The session the run reads (in its context) and writes back to.
    session: Option<String>,
    /// The checksum of the workflow's definition (the run journal's).
    checksum: Arc<str>,
    /// Whose call it is ([`crate::durable::scope`]): idempotency keys and
    /// journaled runs belong to it.
    pub(crate) scope: String,
    /// The rate limits' state after this call, for the `RateLimit` headers.
    pub(crate) rate: Option<RateState>,
}

/// A call the gate refused, with the rate limits' state when a limit did.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) error: Error,
    pub(crate) rate: Option<RateState>,
}

impl From<Error> for Refusal {
    fn from(error: Error) -> Self {
        Refusal { error, rate: None }
    }
}

/// The IETF `RateLimit-Policy` / `RateLimit` headers of a call, and
/// `Retry-After` when it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RateState {
    pub(crate) policy: String,
    pub(crate) state: String,
    pub(crate) retry_after: Option<u64>,
}

impl RateState {
    /// The headers after these checks: every limit applied in the policy,
    /// the one with the least room (or the one that refused) in `RateLimit`.
    fn of(applied: &[(&Limit, Decision)]) -> Option<RateState> {
        let (limit, decision) = applied.iter().min_by_key(|(_, d)| match d {
            Decision::Limited { .. } => None,
            d => Some(d.remaining()),
        })?;
        let policy: Vec<String> = applied.iter().map(|(l, _)| l.policy_header()).collect();
        Some(RateState {
            policy: policy.join(", "),
            state: decision.header(limit),
            retry_after: match decision {
                Decision::Limited { retry_after } => {
                    Some(crate::limits::whole_seconds(*retry_after).max(1))
                }
                Decision::Allowed { .. } => None,
            },
        })
    }
}

/// What the servers publish besides running workflows (the builder's
/// `enable_monitoring`, `enable_sse_transport` and `enable_discovery`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Surface {
    /// `GET /metrics`, and recording the metrics at all.
    pub(crate) metrics: bool,
    /// `GET /events`.
    pub(crate) events: bool,
    /// Listing the workflows: `GET /workflows[/{name}]`, `/openapi.json`,
    /// MCP `tools/list`, and the names in an unknown-workflow error.
    pub(crate) discovery: bool,
    /// `trust_tenant_header(true)`: `X-Tenant-ID` names the caller's tenant.
    pub(crate) trust_tenant_header: bool,
}

/// The largest inputs accepted, on every channel: an HTTP request body, a
/// CLI `--inputs` document, an MCP tool call's arguments.
pub const MAX_INPUT_BYTES: usize = 1 << 20;

/// The error for inputs over [`MAX_INPUT_BYTES`]: `too_large` on every channel.
pub(crate) fn too_large(what: &str) -> Error {
    too_large_over(what, MAX_INPUT_BYTES)
}

/// The error for `what` over `limit` bytes.
pub(crate) fn too_large_over(what: &str, limit: usize) -> Error {
    Error::new(
        ErrorCode::TooLarge,
        format!(
            "{what}: payload too large: the limit is {limit} bytes ({} MiB)",
            limit >> 20
        ),
    )
}

impl Shared {
    /// The sessions, or `validation` when the app has them off (a caller
    /// naming a session must not be silently ignored).
    pub(crate) fn sessions(&self) -> Result<&crate::sessions::Sessions, Error> {
        self.sessions.as_deref().ok_or_else(|| {
            Error::new(
                ErrorCode::Validation,
                "this server has no sessions (the app is built without enable_sessions(true))",
            )
            .with_field("session")
        })
    }

    /// The error for a workflow name nobody registered: it lists the names
    /// `caller` may see unless discovery is off.
    pub(crate) fn unknown_workflow(&self, caller: &Caller, name: &str) -> Error {
        let message = if self.surface.discovery {
            let known: Vec<&str> = self.visible(caller).map(|w| w.name.as_str()).collect();
            format!(
                "no workflow named `{name}`; registered: {}",
                known.join(", ")
            )
        } else {
            format!("no workflow named `{}`", Error::echo(name))
        };
        Error::new(ErrorCode::NotFound, message)
    }

    /// Whether `caller` may run `w` (always, while no roles are enforced).
    pub(crate) fn may_call(&self, caller: &Caller, w: &Registered) -> bool {
        !self.access.enforced
            || !caller.checked()
            || self.access.grants(&caller.context.roles, &w.name, &w.needs)
    }

    /// The workflows listings show `caller` (`GET /workflows`,
    /// `/openapi.json`, MCP `tools/list`): the ones it may run, or all of
    /// them with `list_forbidden_workflows(true)`.
    pub(crate) fn visible<'a>(
        &'a self,
        caller: &'a Caller,
    ) -> impl Iterator<Item = &'a Registered> + 'a {
        self.workflows
            .values()
            .filter(move |w| self.access.list_all || self.may_call(caller, w))
    }

    /// Workflow `name` as `caller` may use it: `not_found` when nobody
    /// registered it, `forbidden` when the caller's roles do not grant it
    /// (`not_found`, as if unregistered, with `forbidden_as_not_found`).
    pub(crate) fn lookup(&self, caller: &Caller, name: &str) -> Result<&Registered, Error> {
        match self.workflows.get(name) {
            Some(w) if self.may_call(caller, w) => Ok(w),
            Some(_) if !self.access.hide_forbidden => {
                let roles = if caller.context.roles.is_empty() {
                    "the caller has no roles".to_string()
                } else {
                    format!("the caller's roles ({})", caller.context.roles.join(", "))
                };
                Err(Error::new(
                    ErrorCode::Forbidden,
                    format!("{roles}: none of them may run workflow `{name}`"),
                ))
            }
            _ => Err(self.unknown_workflow(caller, name)),
        }
    }

    /// The gate every call passes before any node runs, on every channel:
    /// the workflow exists and the caller's roles grant it, then its rate
    /// limits (per workflow, per caller, for the instance) have room. A
    /// refusal is counted in the metrics like a failed run.
    pub(crate) async fn admit(
        &self,
        caller: Caller,
        name: &str,
        channel: &str,
    ) -> Result<Admission, Refusal> {
        let started = Instant::now();
        let admitted: Result<Admission, Refusal> = async {
            let registered = self.lookup(&caller, name)?;
            let (workflow, checksum) = (registered.workflow.clone(), registered.checksum.clone());
            let rate = self.rate_limit(&caller, name).await?;
            let mut context = caller.context.clone();
            if let Some(id) = &caller.session {
                let data = self.sessions()?.data(&caller, id).await?;
                context = context.session(data);
            }
            let scope = match self.durable {
                Some(_) => crate::durable::scope(&caller),
                None => String::new(),
            };
            Ok(Admission {
                context,
                name: name.to_string(),
                workflow,
                session: caller.session,
                checksum,
                scope,
                rate,
            })
        }
        .await;
        if let Err(refusal) = &admitted {
            self.record(name, channel, refusal.error.code().as_str(), started);
        }
        admitted
    }

    /// Counts `caller`'s call of `name` against the limits that apply.
    async fn rate_limit(&self, caller: &Caller, name: &str) -> Result<Option<RateState>, Refusal> {
        let Some(key) = caller.rate_key().filter(|_| !self.limits.is_empty()) else {
            return Ok(None);
        };
        let mut applied = Vec::with_capacity(3);
        for (limiter, key) in self.limits.for_call(name, &key) {
            let decision = limiter.check(key).await?;
            applied.push((limiter.limit(), decision));
            if let Decision::Limited { retry_after } = decision {
                let limit = limiter.limit();
                let error = Error::new(
                    ErrorCode::RateLimited,
                    format!(
                        "rate limit `{}` ({} calls a minute) reached calling workflow `{name}`; retry in {} s",
                        limit.name(),
                        limit.calls_per_minute(),
                        crate::limits::whole_seconds(retry_after).max(1)
                    ),
                );
                return Err(Refusal {
                    error,
                    rate: RateState::of(&applied),
                });
            }
        }
        Ok(RateState::of(&applied))
    }
}

/// A run's status as `GET /runs/{id}` answers it: `finished` with its
/// `result`, or `failed` with the [`failure_body`].
pub(crate) fn run_status(
    run_id: &str,
    workflow: &str,
    result: &std::result::Result<Value, RunError>,
) -> Value {
    match result {
        Ok(out) => {
            json!({"run_id": run_id, "workflow": workflow, "status": "finished", "result": out})
        }
        Err(e) => {
            let mut status = failure_body(e);
            status["run_id"] = json!(run_id);
            status["workflow"] = json!(workflow);
            status["status"] = json!("failed");
            status
        }
    }
}

/// `{"error": {"code", "message", "node", "field", "model"}}`: the error
/// object every channel answers with (HTTP body, CLI `--json`, MCP content).
pub fn error_body(e: &Error) -> Value {
    json!({"error": e.to_json()})
}

/// A failed run's body: [`error_body`] plus, when nodes finished before
/// the failure, `"completed": {"<node id>": <output>}` — what a
/// non-transactional run left written (a transactional one rolled it
/// back). The same on HTTP, CLI `--json` and MCP.
pub fn failure_body(e: &RunError) -> Value {
    let mut body = error_body(e);
    if !e.completed().is_empty() {
        body["completed"] = Value::Object(e.completed().clone());
    }
    body
}

// How each channel reports an error, in one place. The code's HTTP status and
// exit code come from one table, `ErrorCode::http_status` / `exit_code`.

/// An HTTP error response: the code's status and [`error_body`]; an
/// `overloaded` one says when to retry (`Retry-After`, in seconds).
pub(crate) fn http_error(e: &Error) -> axum::response::Response {
    http_answer(e, error_body(e))
}

/// A failed run over HTTP: the code's status and [`failure_body`].
pub(crate) fn http_failure(e: &RunError) -> axum::response::Response {
    http_answer(e, failure_body(e))
}

fn http_answer(e: &Error, body: Value) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status = axum::http::StatusCode::from_u16(e.code().http_status())
        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(body)).into_response();
    let retry = match e.code() {
        ErrorCode::Overloaded => Some(RETRY_AFTER_SECONDS),
        ErrorCode::RateLimited => Some(RATE_LIMITED_RETRY_SECONDS),
        _ => None,
    };
    if let Some(seconds) = retry {
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static(seconds),
        );
    }
    response
}

/// A refused call over HTTP: its error, with the rate limits' headers
/// (`Retry-After` from the limit that refused).
pub(crate) fn http_refusal(refusal: &Refusal) -> axum::response::Response {
    with_rate(http_error(&refusal.error), refusal.rate.as_ref())
}

/// `response` with the IETF `RateLimit-Policy` / `RateLimit` headers of
/// `rate` (and its `Retry-After`), when rate limits applied.
pub(crate) fn with_rate(
    mut response: axum::response::Response,
    rate: Option<&RateState>,
) -> axum::response::Response {
    let Some(rate) = rate else {
        return response;
    };
    let headers = response.headers_mut();
    let values = [
        ("ratelimit-policy", Some(rate.policy.clone())),
        ("ratelimit", Some(rate.state.clone())),
        ("retry-after", rate.retry_after.map(|s| s.to_string())),
    ];
    for (name, value) in values {
        if let Some(Ok(v)) = value.map(axum::http::HeaderValue::try_from) {
            headers.insert(name, v);
        }
    }
    response
}

/// When an `overloaded` caller should try again: capacity frees as runs
/// finish and sessions expire, so soon.
const RETRY_AFTER_SECONDS: &str = "1";

/// `Retry-After` of a `rate_limited` error that does not say when (the
/// gate's refusals always do): a whole window.
const RATE_LIMITED_RETRY_SECONDS: &str = "60";

/// Prints an error the CLI way (`error[code]: message` on stderr, or with
/// `--json` the [`failure_body`] on stdout) and returns its exit code. A
/// run that failed after some nodes finished says which, both ways.
pub(crate) fn cli_error(e: &RunError, json: bool) -> u8 {
    if json {
        println!("{}", failure_body(e));
    } else {
        eprintln!("error[{}]: {}", e.code(), e.message());
        if !e.completed().is_empty() {
            let nodes: Vec<&str> = e.completed().keys().map(String::as_str).collect();
            eprintln!(
                "completed before the failure (written unless the workflow is transactional): {}",
                nodes.join(", ")
            );
        }
    }
    e.code().exit_code()
}

/// A failed MCP `tools/call`: a tool error (`isError: true`) whose content is
/// the [`error_body`]; when no such tool exists, an invalid-params protocol
/// error (-32602) whose `data` is that body.
pub(crate) fn mcp_error(
    e: &RunError,
    tool_exists: bool,
) -> std::result::Result<rmcp::model::CallToolResult, rmcp::ErrorData> {
    if tool_exists {
        Ok(rmcp::model::CallToolResult::structured_error(failure_body(
            e,
        )))
    } else {
        Err(rmcp::ErrorData::invalid_params(
            e.to_string(),
            Some(error_body(e)),
        ))
    }
}

/// Shared by the channels of one process: the event stream, the metrics and
/// the shutdown signal.
pub(crate) struct Hub {
    pub(crate) events: Arc<crate::events::Events>,
    /// Models whose change events carry the record (`event_records`).
    pub(crate) event_records: std::collections::BTreeSet<String>,
    /// Cancelled when the servers shut down: ends long-lived streams (SSE,
    /// MCP sessions) so graceful shutdown does not wait on them.
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
    pub(crate) registry: prometheus::Registry,
    requests: prometheus::IntCounterVec,
    latency: prometheus::HistogramVec,
    nodes: prometheus::HistogramVec,
}

impl Hub {
    /// The hub of a server on `db`: one registry holds nexus's families and
    /// dataflow's (its query, pool, writer, migration and cache metrics),
    /// so `/metrics` is one scrape and a family declared twice fails here.
    pub(crate) fn new(
        db: &DataFlow,
        event_buffer: usize,
        event_records: std::collections::BTreeSet<String>,
    ) -> Hub {
        use prometheus::{histogram_opts, opts, HistogramVec, IntCounterVec};
        let registry = prometheus::Registry::new();
        let requests = IntCounterVec::new(
            opts!(
                "nexus_requests_total",
                "Workflow executions by workflow, channel and outcome code"
            ),
            &["workflow", "channel", "code"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            histogram_opts!(
                "nexus_request_duration_seconds",
                "Workflow execution time by workflow and channel"
            ),
            &["workflow", "channel"],
        )
        .expect("valid metric");
        let nodes = HistogramVec::new(
            histogram_opts!(
                "nexus_node_duration_seconds",
                "Node execution time by workflow and node"
            ),
            &["workflow", "node"],
        )
        .expect("valid metric");
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(nodes.clone()),
            Box::new(db.metrics_collector()),
        ] {
            registry.register(m).expect("unique metric");
        }
        Hub {
            events: Arc::new(crate::events::Events::new(event_buffer)),
            event_records,
            shutdown: Default::default(),
            registry,
            requests,
            latency,
            nodes,
        }
    }

    /// The Prometheus text exposition: nexus's families and dataflow's.
    pub(crate) fn metrics_text(&self) -> String {
        let mut out = String::new();
        let _ = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out);
        out
    }
}

impl Shared {
    /// Admits `caller`'s call of `name` ([`admit`](Self::admit)) and runs it
    /// ([`run`](Self::run)): for channels without rate-limit headers.
    pub(crate) async fn execute(
        &self,
        caller: Caller,
        name: &str,
        inputs: Value,
        channel: &str,
    ) -> std::result::Result<Value, RunError> {
        self.execute_keyed(caller, name, inputs, channel, None)
            .await
            .map(|(v, _)| v)
    }

    /// [`execute`](Self::execute) with an idempotency key (durability on):
    /// the first call with `key` runs, a retry answers what it answered
    /// (and says so: `true`). Without durability a key is refused with
    /// `not_supported` rather than silently not deduplicating.
    pub(crate) async fn execute_keyed(
        &self,
        caller: Caller,
        name: &str,
        inputs: Value,
        channel: &str,
        key: Option<&str>,
    ) -> std::result::Result<(Value, bool), RunError> {
        let admission = match self.admit(caller, name, channel).await {
            Ok(admission) => admission,
            Err(refusal) => return Err(refusal.error.into()),
        };
        let Some(key) = key else {
            return self
                .run(admission, inputs, channel, None, false)
                .await
                .map(|v| (v, false));
        };
        let durable = self.durable_for_key()?;
        crate::durable::check_key(key)?;
        let fingerprint = crate::durable::fingerprint(name, false, &inputs);
        let run_id = dataflow::new_run_id();
        let scope = admission.scope.clone();
        let (this, id, channel_name) = (self.clone(), run_id.clone(), channel.to_string());
        let answer = durable
            .once(&scope, key, name, &fingerprint, &run_id, async move {
                let result = this
                    .run(admission, inputs, &channel_name, Some(id), false)
                    .await;
                crate::durable::Stored::of_run(&result)
            })
            .await?;
        let replayed = answer.replayed;
        answer.into_run().map(|v| (v, replayed))
    }

    /// The durable store an idempotency key needs: `not_supported` while
    /// durability is off, so a key is never silently ignored.
    pub(crate) fn durable_for_key(&self) -> Result<&Arc<crate::durable::Durable>, Error> {
        self.durable.as_ref().ok_or_else(|| {
            Error::new(
                ErrorCode::NotSupported,
                "an idempotency key needs durability: build the app with \
                 `enable_durability(true)`; without it requests are not deduplicated",
            )
            .with_field("idempotency-key")
        })
    }

    /// Runs an admitted call with `inputs`, the one path every channel
    /// takes: `{"outputs": {node: output}, "run_id", "execution_time"}`.
    /// The run's events are published and its metrics recorded under
    /// `channel` (unless monitoring is off: then none are recorded).
    pub(crate) async fn run(
        &self,
        admission: Admission,
        inputs: Value,
        channel: &str,
        run_id: Option<String>,
        is_async: bool,
    ) -> std::result::Result<Value, RunError> {
        let started = Instant::now();
        let Admission {
            context,
            name,
            workflow,
            session,
            checksum,
            scope,
            ..
        } = admission;
        let run_id = run_id.unwrap_or_else(dataflow::new_run_id);
        let Some(durable) = &self.durable else {
            return self
                .run_journaled(
                    context,
                    &name,
                    &workflow,
                    inputs,
                    channel,
                    run_id,
                    serde_json::Map::new(),
                    started,
                    session,
                )
                .await;
        };
        // A task of its own: a journaled run goes on to its end when the
        // caller goes away (a dropped connection), as it would be resumed.
        let (this, durable, channel) = (self.clone(), durable.clone(), channel.to_string());
        let task = tokio::spawn(async move {
            // Journaled before any node runs: a crash from here on is resumed.
            let mode = if is_async { "async" } else { "sync" };
            if let Err(e) = durable
                .begin(&run_id, &name, &checksum, &inputs, &context, &scope, mode)
                .await
            {
                this.record(&name, &channel, e.code().as_str(), started);
                return Err(e.into());
            }
            let result = this
                .run_journaled(
                    context,
                    &name,
                    &workflow,
                    inputs,
                    &channel,
                    run_id.clone(),
                    serde_json::Map::new(),
                    started,
                    session,
                )
                .await;
            if let Err(e) = durable
                .finish(&run_id, &run_status(&run_id, &name, &result))
                .await
            {
                // Its lease lapses once this instance stops; another pass
                // then finds every node journaled and records the end.
                tracing::warn!(error = %e, run_id, "nexus durability: cannot record a run's end");
            }
            result
        });
        task.await.unwrap_or_else(|e| {
            Err(Error::new(
                ErrorCode::Internal,
                format!("a journaled run's task failed: {e}"),
            )
            .into())
        })
    }

    /// Runs `workflow` as `run_id` (journaled when durability is on), the
    /// nodes in `completed` counting as done (a resumed run); publishes its
    /// events and writes its session outputs back to `session`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run_journaled(
        &self,
        context: Context,
        name: &str,
        workflow: &Workflow,
        inputs: Value,
        channel: &str,
        run_id: String,
        completed: serde_json::Map<String, Value>,
        started: Instant,
        session: Option<String>,
    ) -> std::result::Result<Value, RunError> {
        let name = name.to_string();
        let caller_context = context.clone();
        let events = self.surface.events;
        let tenant = Value::from(context.tenant.clone());
        let (h, wf, metrics) = (self.hub.clone(), name.clone(), self.surface.metrics);
        let observer: dataflow::Observer = Arc::new(move |e: &dataflow::RunEvent| {
            match e {
                dataflow::RunEvent::NodeFinished {
                    node, duration_ms, ..
                } if metrics => h
                    .nodes
                    .with_label_values(&[wf.as_str(), node.as_str()])
                    .observe(duration_ms / 1e3),
                _ => {}
            }
            // Kept for replay (`Last-Event-ID`) even with nobody listening.
            if events {
                if let Ok(Value::Object(mut v)) = serde_json::to_value(e) {
                    v.insert("workflow".into(), Value::String(wf.clone()));
                    v.insert("tenant".into(), tenant.clone());
                    h.events.publish(v);
                }
            }
        });
        let mut runtime = self
            .db
            .with_context(context)
            .runtime()
            .with_observer(observer);
        if self.durable.is_some() {
            runtime = runtime
                .with_journal(crate::durable::Durable::node_journal())
                .with_completed(completed);
        }
        let result = runtime
            .execute_with_id(workflow, inputs, run_id.clone())
            .instrument(tracing::info_span!(
                "nexus.request",
                workflow = name.as_str(),
                channel = channel
            ))
            .await
            .map(|run| {
                json!({"outputs": Value::Object(run.results), "run_id": run.run_id, "execution_time": started.elapsed().as_secs_f64()})
            });
        if events {
            self.publish_changes(&caller_context, &name, &run_id, &result);
        }
        let result = match (result, session) {
            (Ok(out), Some(id)) => self
                .write_session(&caller_context, &name, &id, &out)
                .await
                .map(|()| out),
            (result, _) => result,
        };
        let code = match &result {
            Ok(_) => "ok",
            Err(e) => e.code().as_str(),
        };
        self.record(&name, channel, code, started);
        result
    }

    /// The model change events of a run: its write nodes' outputs (those
    /// that completed, when a non-transactional run failed).
    fn publish_changes(
        &self,
        context: &Context,
        name: &str,
        run_id: &str,
        result: &std::result::Result<Value, RunError>,
    ) {
        let Some(w) = self.workflows.get(name) else {
            return;
        };
        if w.writes.is_empty() {
            return;
        }
        let outputs = match result {
            Ok(out) => match out["outputs"].as_object() {
                Some(o) => o,
                None => return,
            },
            // A transactional run that failed wrote nothing.
            Err(_) if w.workflow.spec().transactional => return,
            Err(e) => e.completed(),
        };
        for write in &w.writes {
            let Some(out) = outputs.get(&write.node) else {
                continue;
            };
            let records = self.hub.event_records.contains(write.model.name);
            for change in crate::events::changes(write, out, records) {
                let mut body = change;
                body.insert("workflow".into(), Value::from(name));
                body.insert("tenant".into(), Value::from(context.tenant.clone()));
                body.insert("run_id".into(), Value::from(run_id));
                self.hub.events.publish(body);
            }
        }
    }

    /// After a successful run with a session: the workflow's
    /// [`session_output`](crate::Nexus::session_output)s, merged into the
    /// session. A failure says the run's writes happened.
    async fn write_session(
        &self,
        context: &Context,
        name: &str,
        id: &str,
        out: &Value,
    ) -> std::result::Result<(), RunError> {
        let Some(w) = self.workflows.get(name) else {
            return Ok(());
        };
        if w.session_outputs.is_empty() {
            return Ok(());
        }
        let mut patch = serde_json::Map::new();
        for (key, path) in &w.session_outputs {
            let value = path
                .iter()
                .try_fold(&out["outputs"], |cur, seg| match cur {
                    Value::Object(m) => m.get(seg),
                    Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
                    _ => None,
                })
                .cloned()
                .unwrap_or(Value::Null);
            patch.insert(key.clone(), value);
        }
        let caller = Caller::new(context.clone(), Origin::Operator);
        let written = match self.sessions() {
            Ok(s) => s.patch(&caller, id, Value::Object(patch)).await,
            Err(e) => Err(e),
        };
        written.map(drop).map_err(|e| {
            let e = Error::new(
                e.code(),
                format!(
                    "the run finished, but writing its session outputs failed: {}",
                    e.message()
                ),
            );
            RunError::new(e, out["outputs"].as_object().cloned().unwrap_or_default())
        })
    }

    /// Counts a call in the metrics (unless monitoring is off).
    fn record(&self, name: &str, channel: &str, code: &str, started: Instant) {
        if !self.surface.metrics {
            return;
        }
        // Unknown names share one label: a label per typo would grow without bound.
        let label = if self.workflows.contains_key(name) {
            name
        } else {
            "(unknown)"
        };
        self.hub
            .requests
            .with_label_values(&[label, channel, code])
            .inc();
        self.hub
            .latency
            .with_label_values(&[label, channel])
            .observe(started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's error table: every code's HTTP status and CLI exit code.
    const TABLE: [(&str, u16, u8); 24] = [
        ("validation", 422, 3),
        ("not_found", 404, 4),
        ("unique_violation", 409, 5),
        ("fk_violation", 409, 5),
        ("confirmation_required", 422, 3),
        ("connection", 503, 7),
        ("config", 501, 8),
        ("unknown_node", 404, 4),
        ("not_allowed", 409, 5),
        ("not_supported", 501, 8),
        ("database", 500, 1),
        ("timeout", 504, 7),
        ("migration_blocked", 409, 6),
        ("internal", 500, 1),
        ("tenant_required", 403, 5),
        ("too_large", 413, 3),
        ("forbidden", 403, 5),
        ("overloaded", 503, 7),
        ("method_not_allowed", 405, 4),
        ("conflict", 409, 5),
        ("unauthenticated", 401, 9),
        ("rate_limited", 429, 7),
        ("too_many_rows", 422, 3),
        ("idempotency_mismatch", 422, 3),
    ];

    #[test]
    fn every_code_has_one_status_and_exit_code() {
        let mapped: Vec<(&str, u16, u8)> = ErrorCode::ALL
            .into_iter()
            .map(|c| (c.as_str(), c.http_status(), c.exit_code()))
            .collect();
        assert_eq!(mapped, TABLE);
        for (code, status, exit) in TABLE {
            assert!(
                (400..600).contains(&status),
                "{code}: an error is never a 2xx"
            );
            assert!(exit != 0 && exit != 2, "{code}: 0 is success, 2 is usage");
        }
    }

    #[test]
    fn a_callers_mistake_is_never_a_server_error() {
        for code in [
            ErrorCode::Validation,
            ErrorCode::NotFound,
            ErrorCode::UniqueViolation,
            ErrorCode::FkViolation,
            ErrorCode::ConfirmationRequired,
            ErrorCode::UnknownNode,
            ErrorCode::NotAllowed,
            ErrorCode::MigrationBlocked,
            ErrorCode::TooLarge,
            ErrorCode::Forbidden,
            ErrorCode::MethodNotAllowed,
            ErrorCode::Unauthenticated,
            ErrorCode::RateLimited,
            ErrorCode::TooManyRows,
            ErrorCode::IdempotencyMismatch,
        ] {
            assert!((400..500).contains(&code.http_status()), "{code}");
        }
    }

    #[test]
    fn mcp_errors_carry_the_error_body() {
        for code in ErrorCode::ALL {
            let e: RunError = Error::new(code, "m").with_field("f").into();
            let tool = mcp_error(&e, true).expect("a failed run is a tool error");
            assert_eq!(tool.is_error, Some(true), "{code}");
            assert_eq!(tool.structured_content, Some(error_body(&e)), "{code}");
            let protocol = mcp_error(&e, false).expect_err("no such tool: a protocol error");
            assert_eq!(protocol.code, rmcp::model::ErrorCode::INVALID_PARAMS);
            assert_eq!(protocol.data, Some(error_body(&e)), "{code}");
        }
    }

    #[tokio::test]
    async fn http_errors_answer_the_codes_status_with_the_error_body() {
        for code in ErrorCode::ALL {
            let e = Error::new(code, "m");
            let r = http_error(&e);
            assert_eq!(r.status().as_u16(), code.http_status(), "{code}");
            assert_eq!(
                r.headers().get("retry-after").is_some(),
                code == ErrorCode::Overloaded || code == ErrorCode::RateLimited,
                "{code}: only overloaded and rate_limited say when to retry"
            );
            let body = axum::body::to_bytes(r.into_body(), usize::MAX)
                .await
                .unwrap();
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body, error_body(&e), "{code}");
        }
    }
}
