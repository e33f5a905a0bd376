//! The HTTP API (axum). Routes the options turn off are not routed: they
//! answer 404 `not_found` like any unknown path; a known path with another
//! method answers 405 `method_not_allowed`, both with the JSON error body.

use crate::channel::{
    error_body, http_error, http_failure, http_refusal, too_large, with_rate, Caller, Origin,
    Shared,
};
use crate::Registered;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dataflow::{Error, ErrorCode, RunError};
use serde_json::{json, Map, Value};
use std::net::{IpAddr, SocketAddr};

type AppState = Shared;

/// Where a request comes from: the client's address, from the
/// `ConnectInfo` the listeners attach to every request (absent when the
/// router is served by other means), and with auth on the identity its
/// credentials proved (the auth middleware attaches it).
pub(crate) struct ClientAddr(
    pub(crate) Option<IpAddr>,
    pub(crate) Option<crate::auth::Identity>,
);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            client_addr(&parts.extensions),
            parts.extensions.get::<crate::auth::Identity>().cloned(),
        ))
    }
}

/// The client address in a request's extensions.
pub(crate) fn client_addr(extensions: &axum::http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// The caller of an HTTP request: the context identity builds from its
/// headers, calling over a listener from its address.
fn caller(s: &Shared, headers: &HeaderMap, client: ClientAddr) -> Result<Caller, Error> {
    let context = crate::identity::from_request(
        "http",
        s.surface.trust_tenant_header,
        Some(headers),
        client.1.as_ref(),
    )?;
    let session = match headers.get(crate::sessions::HEADER) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|s| !s.is_empty() && s.len() <= 128)
                .ok_or_else(|| {
                    Error::new(
                        ErrorCode::Validation,
                        "the X-Session-Id header must be a session id (`nxs_...`)",
                    )
                    .with_field(crate::sessions::HEADER)
                })?
                .to_string(),
        ),
    };
    Ok(Caller::new(context, Origin::Remote(client.0)).with_session(session))
}

pub(crate) fn router(state: AppState, policy: crate::security::Policy) -> Router {
    let surface = state.surface;
    let mut api = Router::new()
        .route("/workflows/{name}/execute", post(run))
        .route("/runs/{id}", get(run_status))
        .route("/health", get(health))
        .route("/ready", get(ready));
    if surface.discovery {
        api = api
            .route("/workflows", get(list))
            .route("/workflows/{name}", get(describe))
            .route("/openapi.json", get(openapi));
    }
    if surface.metrics {
        api = api.route("/metrics", get(metrics));
    }
    if surface.events {
        api = api.route("/events", get(events));
    }
    if state.sessions.is_some() {
        api = api.route("/sessions", post(session_create)).route(
            "/sessions/{id}",
            get(session_get).patch(session_patch).delete(session_delete),
        );
    }
    let auth = state.auth.clone();
    if let Some(auth) = &auth {
        api = api.merge(crate::auth::oauth::routes(auth.clone(), ""));
    }
    let mut api = api
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .layer(DefaultBodyLimit::max(crate::channel::MAX_INPUT_BYTES))
        .with_state(state);
    if let Some(auth) = auth {
        api = api.layer(axum::middleware::from_fn_with_state(
            auth,
            crate::auth::middleware,
        ));
    }
    policy.apply(api)
}

/// Any path not routed, including the ones the options turn off.
pub(crate) async fn no_route(method: Method, uri: Uri) -> Response {
    http_error(&Error::new(
        ErrorCode::NotFound,
        format!("no route {method} {}", uri.path()),
    ))
}

/// A routed path with a method it does not serve (axum adds `Allow`).
async fn no_method(method: Method, uri: Uri) -> ApiError {
    ApiError::from(Error::new(
        ErrorCode::MethodNotAllowed,
        format!("{} does not answer {method}", uri.path()),
    ))
}

/// An error as a response: its status from the one mapping, its JSON body.
/// A handler's failure: an error, or a run that failed (with what completed).
struct ApiError(RunError);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e.into())
    }
}

impl From<RunError> for ApiError {
    fn from(e: RunError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        http_failure(&self.0)
    }
}

async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
    client: ClientAddr,
) -> Result<Json<Value>, ApiError> {
    let caller = caller(&s, &headers, client)?;
    let listed: Vec<Value> = s.visible(&caller).map(Registered::summary).collect();
    Ok(Json(json!({ "workflows": listed })))
}

async fn describe(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    client: ClientAddr,
) -> Result<Json<Value>, ApiError> {
    let caller = caller(&s, &headers, client)?;
    let w = s.lookup(&caller, &name)?;
    let mut v = w.summary();
    v["workflow"] = w.workflow.to_json();
    Ok(Json(v))
}

async fn run(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    client: ClientAddr,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let caller = caller(&s, &headers, client)?;
    let Json(body) = body.map_err(|e| {
        ApiError::from(if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large("request body")
        } else if let JsonRejection::BytesRejection(e) = &e {
            // The body stalled (header_read_timeout between reads) or broke off.
            Error::new(
                ErrorCode::Validation,
                format!("request body: not received in full: {}", e.body_text()),
            )
        } else {
            Error::new(
                ErrorCode::Validation,
                format!("request body: invalid JSON: {}", e.body_text()),
            )
        })
    })?;
    let (inputs, mode) = match body {
        Value::Object(mut m) => {
            if let Some(k) = m.keys().find(|k| *k != "inputs" && *k != "mode") {
                return Err(ApiError::from(
                    Error::new(
                        ErrorCode::Validation,
                        format!("unknown request field `{k}`; send {{\"inputs\": {{...}}}}"),
                    )
                    .with_field(k.clone()),
                ));
            }
            (
                m.remove("inputs").unwrap_or(Value::Object(Map::new())),
                m.remove("mode"),
            )
        }
        _ => {
            return Err(ApiError::from(Error::new(
                ErrorCode::Validation,
                "the request body must be an object: {\"inputs\": {...}}",
            )))
        }
    };
    let is_async = match mode.as_ref().and_then(Value::as_str) {
        None if mode.is_none() => false,
        Some("sync") => false,
        Some("async") => true,
        _ => {
            return Err(ApiError::from(
                Error::new(
                    ErrorCode::Validation,
                    "`mode` must be \"sync\" or \"async\"",
                )
                .with_field("mode"),
            ))
        }
    };
    let key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| crate::durable::bad_key())?
                .to_string(),
        ),
    };
    // Roles and rate limits before anything runs (or is accepted, or is
    // replayed).
    let admission = match s.admit(caller, &name, "http").await {
        Ok(admission) => admission,
        Err(refusal) => return Ok(http_refusal(&refusal)),
    };
    let rate = admission.rate.clone();
    let response = match key {
        Some(key) => keyed(s, admission, name, inputs, is_async, key).await,
        None if is_async => start_async(s, admission, name, inputs, None)
            .map(|body| (StatusCode::ACCEPTED, Json(body)).into_response())
            .map_err(ApiError::from),
        None => s
            .run(admission, inputs, "http", None, false)
            .await
            .map(|out| Json(out).into_response())
            .map_err(ApiError::from),
    };
    let response = response.unwrap_or_else(IntoResponse::into_response);
    Ok(with_rate(response, rate.as_ref()))
}

/// A JSON request body as a value (`null` when empty), with the errors
/// `run` gives for a malformed or oversized one.
fn json_body(body: &Result<axum::body::Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let body = match body {
        Ok(body) => body,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(too_large("request body").into())
        }
        Err(e) => {
            return Err(Error::new(
                ErrorCode::Validation,
                format!("request body: not received in full: {}", e.body_text()),
            )
            .into())
        }
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::from(Error::new(
            ErrorCode::Validation,
            format!("request body: invalid JSON: {e}"),
        ))
    })
}

/// `POST /sessions` with the initial data (an object, or no body): 201
/// `{"id", "data", "created", "expires"}`.
async fn session_create(
    State(s): State<AppState>,
    headers: HeaderMap,
    client: ClientAddr,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = caller(&s, &headers, client)?;
    let data = json_body(&body)?;
    let created = s.sessions()?.create(&caller, data).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn session_get(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    client: ClientAddr,
) -> Result<Json<Value>, ApiError> {
    let caller = caller(&s, &headers, client)?;
    Ok(Json(s.sessions()?.get(&caller, &id).await?))
}

/// `PATCH /sessions/{id}`: an RFC 7386 merge patch of the data.
async fn session_patch(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    client: ClientAddr,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = caller(&s, &headers, client)?;
    let patch = json_body(&body)?;
    Ok(Json(s.sessions()?.patch(&caller, &id, patch).await?))
}

async fn session_delete(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    client: ClientAddr,
) -> Result<StatusCode, ApiError> {
    let caller = caller(&s, &headers, client)?;
    s.sessions()?.delete(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The header an idempotent request carries its key in (the IETF draft's).
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A request with an `Idempotency-Key`: the first one with the key runs and
/// its answer is stored; a retry gets that answer byte for byte with
/// `Idempotent-Replayed: true`; a retry while the first runs is 409
/// `conflict` with `Retry-After`; the key with another request is 422
/// `idempotency_mismatch`.
async fn keyed(
    s: AppState,
    admission: crate::channel::Admission,
    name: String,
    inputs: Value,
    is_async: bool,
    key: String,
) -> Result<Response, ApiError> {
    let durable = s.durable_for_key()?.clone();
    crate::durable::check_key(&key)?;
    let fingerprint = crate::durable::fingerprint(&name, is_async, &inputs);
    let run_id = dataflow::new_run_id();
    let scope = admission.scope.clone();
    let (id, workflow) = (run_id.clone(), name.clone());
    let work = async move {
        if is_async {
            match start_async(s.clone(), admission, workflow, inputs, Some(id)) {
                Ok(body) => crate::durable::Stored {
                    status: 202,
                    body: body.to_string(),
                    replayed: false,
                },
                Err(e) => crate::durable::Stored::of_run(&Err(e)),
            }
        } else {
            let result = s.run(admission, inputs, "http", Some(id), false).await;
            crate::durable::Stored::of_run(&result)
        }
    };
    let answer = match durable
        .once(&scope, &key, &name, &fingerprint, &run_id, work)
        .await
    {
        Ok(answer) => answer,
        Err(e) if e.code() == ErrorCode::Conflict => {
            let mut r = http_error(&e);
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(crate::durable::IN_PROGRESS_RETRY_SECONDS),
            );
            return Ok(r);
        }
        Err(e) => return Err(e.into()),
    };
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        answer.body,
    )
        .into_response();
    if answer.replayed {
        response.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

/// `"mode": "async"`: the 202's body with the run id at once (the run goes
/// on); `GET /runs/{id}` reports it.
fn start_async(
    s: AppState,
    admission: crate::channel::Admission,
    name: String,
    inputs: Value,
    run_id: Option<String>,
) -> Result<Value, RunError> {
    // Inputs are checked before the 202, so an async request that would
    // fail validation is refused like a sync one.
    if let Some(w) = s.workflows.get(&name) {
        w.workflow.check_inputs(&inputs)?;
    }
    let run_id = run_id.unwrap_or_else(dataflow::new_run_id);
    let slot = s.runs.start(&run_id, &name)?;
    let id = run_id.clone();
    tokio::spawn(async move {
        let result = s
            .run(admission, inputs, "http", Some(id.clone()), true)
            .await;
        let status = crate::channel::run_status(&id, &name, &result);
        // Serializing a large result is CPU work: off the async workers.
        let runs = s.runs.clone();
        let _ = tokio::task::spawn_blocking(move || runs.finish(&id, status)).await;
        drop(slot);
    });
    Ok(json!({"run_id": run_id, "status": "running", "links": {"run": format!("/runs/{run_id}")}}))
}

/// A run's status: from the journal with durability on (any run, sync or
/// async, on any instance, after restarts; only to the caller who started
/// it, or an admin), else as this process kept its async outcome.
async fn run_status(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    client: ClientAddr,
) -> Response {
    if let Some(durable) = s.durable.clone() {
        let caller = match caller(&s, &headers, client) {
            Ok(c) => c,
            Err(e) => return http_error(&e),
        };
        return match durable.get(&id).await {
            Err(e) => http_error(&e),
            // Fail closed: another caller's run answers as if it did not exist.
            Ok(Some(run))
                if run.caller == crate::durable::scope(&caller)
                    || caller.context.system
                    || s.access.grants_all(&caller.context.roles) =>
            {
                Json(run.status).into_response()
            }
            Ok(_) => http_error(&Error::new(
                ErrorCode::NotFound,
                format!(
                    "no run `{}` of yours: it was never started, or its journal is past \
                     durability_retention",
                    Error::echo(&id)
                ),
            )),
        };
    }
    match s.runs.get(&id) {
        Some(status) => (
            [(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            )],
            status,
        )
            .into_response(),
        None => http_error(&Error::new(
            ErrorCode::NotFound,
            format!(
                "no run `{id}`: it was never started here, or its outcome is no longer kept \
                 (async outcomes are kept within async_store_max_runs, async_store_max_bytes \
                 and async_store_ttl)"
            ),
        )),
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.hub.metrics_text(),
    )
        .into_response()
}

/// Server-sent events: runs (`started`, `node_finished`, `finished` /
/// `failed`) and model changes (`created`, `updated`, `deleted`), as JSON,
/// in order, each with an `id`; `Last-Event-ID` replays what followed it
/// (see `events`). A caller sees only its own tenant's events, and once
/// roles are enforced only those of workflows it may run and models it may
/// read.
async fn events(
    State(s): State<AppState>,
    headers: HeaderMap,
    client: ClientAddr,
) -> Result<Response, ApiError> {
    use crate::events::{Event, Scope};
    use tokio_stream::StreamExt;
    let caller = caller(&s, &headers, client)?;
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (replay, receiver) = s.hub.events.subscribe(last.as_deref());
    let shutdown = s.hub.shutdown.clone().cancelled_owned();
    let visible = move |e: &Event| {
        if e.tenant != caller.context.tenant {
            return false;
        }
        if !s.access.enforced {
            return true;
        }
        match &e.scope {
            Scope::Run(workflow) => s
                .workflows
                .get(workflow)
                .is_some_and(|w| s.may_call(&caller, w)),
            Scope::Model(model) => s.access.may_read_model(&caller.context.roles, model),
        }
    };
    let live = tokio_stream::wrappers::BroadcastStream::new(receiver).filter_map(|e| e.ok());
    let stream = tokio_stream::iter(replay)
        .chain(live)
        .filter(move |e| visible(e))
        .map(|e| {
            Ok::<_, std::convert::Infallible>(
                axum::response::sse::Event::default()
                    .id(e.id.clone())
                    .data(e.data.clone()),
            )
        });
    // Ends at shutdown, so graceful shutdown does not wait on listeners.
    let stream = futures_util::StreamExt::take_until(stream, shutdown);
    Ok(axum::response::sse::Sse::new(stream)
        .keep_alive(axum::response::sse::KeepAlive::default())
        .into_response())
}

/// The `/sessions` operations, for `/openapi.json` with sessions on.
fn session_paths(paths: &mut Map<String, Value>) {
    let session = json!({"application/json": {"schema": {"type": "object", "required": ["id", "data", "created", "expires"], "properties": {
        "id": {"type": "string"}, "data": {"type": "object"},
        "created": {"type": "string", "format": "date-time"}, "expires": {"type": "string", "format": "date-time"}
    }}}});
    let error = |code: &str| {
        (
            code.to_string(),
            json!({"$ref": "#/components/responses/Error"}),
        )
    };
    let errors =
        |codes: &[&str]| -> Map<String, Value> { codes.iter().map(|c| error(c)).collect() };
    let with = |mut m: Map<String, Value>, code: &str, v: Value| {
        m.insert(code.to_string(), v);
        Value::Object(m)
    };
    let id = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
    let body = |what: &str, required: bool| json!({"required": required, "description": what, "content": {"application/json": {"schema": {"type": "object"}}}});
    paths.insert(
        "/sessions".into(),
        json!({"post": {
            "operationId": "session_create",
            "summary": "Make a session of the caller's with the initial data",
            "requestBody": body("the initial data (or no body)", false),
            "responses": with(errors(&["413", "422", "500"]), "201", json!({"description": "the session", "content": session})),
        }}),
    );
    paths.insert(
        "/sessions/{id}".into(),
        json!({
            "parameters": id,
            "get": {"operationId": "session_get", "summary": "Read a session of the caller's",
                "responses": with(errors(&["404", "500"]), "200", json!({"description": "the session", "content": session}))},
            "patch": {"operationId": "session_set", "summary": "Merge into a session's data (RFC 7386 merge patch)",
                "requestBody": body("the merge patch", true),
                "responses": with(errors(&["404", "409", "413", "422", "500"]), "200", json!({"description": "the session", "content": session}))},
            "delete": {"operationId": "session_delete", "summary": "Delete a session of the caller's",
                "responses": with(errors(&["404", "500"]), "204", json!({"description": "deleted"}))},
        }),
    );
}

/// Ready: the database answers and (with dataflow's monitoring on, the
/// default) no migration is blocked. 503 with the reason otherwise.
async fn ready(State(s): State<AppState>) -> Response {
    if !s.db.config().monitoring() {
        return match s.db.execute_ping().await {
            Ok(()) => Json(json!({"status": "ready"})).into_response(),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(error_body(&e))).into_response(),
        };
    }
    match s.db.health().await {
        Ok(h) if h.ready => Json(json!({"status": "ready"})).into_response(),
        Ok(h) => {
            let e = match (&h.database.error, &h.migrations.detail) {
                (Some(e), _) => Error::new(ErrorCode::Connection, e.message.clone()),
                (None, detail) => Error::new(
                    ErrorCode::Connection,
                    format!(
                        "a migration is blocked: {}",
                        detail
                            .as_deref()
                            .unwrap_or("the schema does not match the models")
                    ),
                ),
            };
            (StatusCode::SERVICE_UNAVAILABLE, Json(error_body(&e))).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(error_body(&e))).into_response(),
    }
}

/// `{"status": "ok"}` while the process serves; `?verbose` adds dataflow's
/// health report (`DataFlow::health`) as `report`, when monitoring is on
/// (nexus `enable_monitoring` and dataflow `monitoring`, both the default).
async fn health(
    State(s): State<AppState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let verbose = query.as_deref().is_some_and(|q| {
        q.split('&')
            .any(|p| p == "verbose" || p.starts_with("verbose="))
    });
    if !verbose {
        return Json(json!({"status": "ok"})).into_response();
    }
    if !s.surface.metrics {
        return http_error(&Error::new(
            ErrorCode::NotFound,
            "/health?verbose needs monitoring: enable_monitoring(true) (the default)",
        ));
    }
    match s.db.health().await {
        Ok(report) => {
            let status = if report.ready { "ok" } else { "degraded" };
            Json(json!({"status": status, "report": report})).into_response()
        }
        Err(e) => http_error(&e),
    }
}

async fn openapi(
    State(s): State<AppState>,
    headers: HeaderMap,
    client: ClientAddr,
) -> Result<Json<Value>, ApiError> {
    let caller = caller(&s, &headers, client)?;
    let mut paths = Map::new();
    for w in s.visible(&caller) {
        // Inside the document the dialect is the document's (OAS 3.1 base).
        let mut inputs = w.workflow.input_schema().clone();
        if let Some(m) = inputs.as_object_mut() {
            m.remove("$schema");
        }
        // `{}` stands for `{"inputs": {}}`: `inputs` is required exactly
        // when the empty inputs would be refused.
        let needs_inputs = dataflow::json_schema::check(&inputs, &json!({})).is_err();
        let body_required: &[&str] = if needs_inputs { &["inputs"] } else { &[] };
        paths.insert(
            format!("/workflows/{}/execute", w.name),
            json!({"post": {
                "operationId": format!("execute_{}", w.name.replace('-', "_")),
                "summary": w.description,
                "requestBody": {"required": true, "content": {"application/json": {"schema": {
                    "type": "object",
                    "properties": {
                        "inputs": inputs,
                        "mode": {"enum": ["sync", "async"], "description": "async: answer 202 with a run id at once; GET /runs/{id} reports the run"}
                    },
                    "required": body_required,
                    "additionalProperties": false
                }}}},
                "responses": {
                    "200": {"description": "the outputs of every node", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RunResult"}}}},
                    "202": {"description": "an async run was started", "content": {"application/json": {"schema": {"type": "object", "required": ["run_id"], "properties": {"run_id": {"type": "string"}}}}}},
                    "403": {"$ref": "#/components/responses/Error"},
                    "404": {"$ref": "#/components/responses/Error"},
                    "409": {"$ref": "#/components/responses/Error"},
                    "422": {"$ref": "#/components/responses/Error"},
                    "429": {"$ref": "#/components/responses/Error"},
                    "500": {"$ref": "#/components/responses/Error"}
                }
            }}),
        );
    }
    if s.sessions.is_some() {
        session_paths(&mut paths);
    }
    Ok(Json(json!({
        "openapi": "3.1.0",
        "info": {"title": "nexus workflows", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "schemas": {
                "RunResult": {"type": "object", "required": ["outputs", "run_id", "execution_time"], "properties": {
                    "outputs": {"type": "object"}, "run_id": {"type": "string"}, "execution_time": {"type": "number"}
                }},
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
                    "code": {"type": "string"}, "message": {"type": "string"}, "node": {"type": "string"}, "field": {"type": "string"}, "model": {"type": "string"}
                }}, "completed": {"type": "object", "description": "a failed run: the outputs of the nodes that finished before the failure, by node id (still written unless the workflow is transactional)"}}}
            },
            "responses": {"Error": {"description": "an error with a stable code", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}
        }
    })))
}
