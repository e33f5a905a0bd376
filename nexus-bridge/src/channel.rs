//! What every channel shares: running a registered workflow, the output
//! shape, and the one mapping from error codes to HTTP statuses.

use crate::Registered;
use dataflow::{DataFlow, Error, ErrorCode, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// What the channels of one application share: the database, the
/// registered workflows, and the event stream and metrics.
#[derive(Clone)]
pub(crate) struct Shared {
    pub db: DataFlow,
    pub workflows: Arc<BTreeMap<String, Registered>>,
    pub hub: Arc<Hub>,
}

/// The largest inputs accepted, on every channel: an HTTP request body, a
/// CLI `--inputs` document, an MCP tool call's arguments.
pub const MAX_INPUT_BYTES: usize = 1 << 20;

/// The error for inputs over [`MAX_INPUT_BYTES`].
pub(crate) fn too_large(what: &str) -> Error {
    Error::new(
        ErrorCode::Validation,
        format!("{what}: payload too large: the limit is {MAX_INPUT_BYTES} bytes (1 MiB)"),
    )
}

/// The error for a workflow name nobody registered.
pub(crate) fn unknown_workflow(workflows: &BTreeMap<String, Registered>, name: &str) -> Error {
    let known: Vec<&str> = workflows.keys().map(String::as_str).collect();
    Error::new(
        ErrorCode::NotFound,
        format!(
            "no workflow named `{name}`; registered: {}",
            known.join(", ")
        ),
    )
}

/// The HTTP status of each error code: a user's mistake is never a 500,
/// and an error is never a 200.
pub fn http_status(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::Validation | ErrorCode::ConfirmationRequired => 422,
        ErrorCode::NotFound | ErrorCode::UnknownNode => 404,
        ErrorCode::UniqueViolation
        | ErrorCode::FkViolation
        | ErrorCode::NotAllowed
        | ErrorCode::MigrationBlocked => 409,
        ErrorCode::Timeout => 504,
        ErrorCode::Connection => 503,
        ErrorCode::Config | ErrorCode::NotSupported => 501,
        ErrorCode::Database | ErrorCode::Internal => 500,
        _ => 500,
    }
}

/// `{"error": {"code", "message", "node", "field", "model"}}`.
pub fn error_body(e: &Error) -> Value {
    json!({"error": e.to_json()})
}

/// Shared by the channels of one process: the event stream and the metrics.
pub(crate) struct Hub {
    pub events: tokio::sync::broadcast::Sender<String>,
    /// Runs started with `"mode": "async"`, by run id (newest kept; in memory
    /// until durability lands).
    pub runs: std::sync::Mutex<std::collections::BTreeMap<String, Value>>,
    /// Cancelled when the servers shut down: ends long-lived streams (SSE,
    /// MCP sessions) so graceful shutdown does not wait on them.
    pub shutdown: tokio_util::sync::CancellationToken,
    registry: prometheus::Registry,
    requests: prometheus::IntCounterVec,
    latency: prometheus::HistogramVec,
    nodes: prometheus::HistogramVec,
    pool: prometheus::IntGaugeVec,
}

impl Hub {
    pub fn new() -> Hub {
        use prometheus::{histogram_opts, opts, HistogramVec, IntCounterVec, IntGaugeVec};
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
        let pool = IntGaugeVec::new(
            opts!(
                "nexus_db_pool_connections",
                "Database pool connections by state"
            ),
            &["state"],
        )
        .expect("valid metric");
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(nodes.clone()),
            Box::new(pool.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        Hub {
            events: tokio::sync::broadcast::channel(1024).0,
            runs: Default::default(),
            shutdown: Default::default(),
            registry,
            requests,
            latency,
            nodes,
            pool,
        }
    }

    /// The Prometheus text exposition, with the pool's current state.
    pub fn metrics_text(&self, db: &DataFlow) -> String {
        let dataflow::PoolState {
            connections: all,
            idle,
            ..
        } = db.pool_state();
        self.pool.with_label_values(&["open"]).set(i64::from(all));
        self.pool.with_label_values(&["idle"]).set(i64::from(idle));
        let mut out = String::new();
        let _ = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out);
        out
    }
}

/// The most async runs whose status is kept.
pub(crate) const KEPT_RUNS: usize = 10_000;

impl Hub {
    /// Records an async run's status, forgetting the oldest beyond [`KEPT_RUNS`].
    pub fn set_run(&self, run_id: &str, status: Value) {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.insert(run_id.to_string(), status);
        while runs.len() > KEPT_RUNS {
            runs.pop_first();
        }
    }

    pub fn run(&self, run_id: &str) -> Option<Value> {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(run_id)
            .cloned()
    }
}

impl Shared {
    /// Runs `name` with `inputs`, the one path every channel takes:
    /// `{"outputs": {node: output}, "run_id", "execution_time"}`. The run's
    /// events are published and its metrics recorded under `channel`.
    pub async fn execute(
        &self,
        name: &str,
        inputs: Value,
        channel: &str,
        run_id: Option<String>,
    ) -> Result<Value> {
        let started = Instant::now();
        let registered = self.workflows.get(name);
        let result = match registered {
            None => Err(unknown_workflow(&self.workflows, name)),
            Some(w) => {
                let (h, wf) = (self.hub.clone(), name.to_string());
                let observer: dataflow::Observer = Arc::new(move |e: &dataflow::RunEvent| {
                    if let dataflow::RunEvent::NodeFinished {
                        node, duration_ms, ..
                    } = e
                    {
                        h.nodes
                            .with_label_values(&[wf.as_str(), node.as_str()])
                            .observe(duration_ms / 1e3);
                    }
                    // Events are for whoever listens now; with nobody listening
                    // none are built.
                    if h.events.receiver_count() > 0 {
                        let mut v = serde_json::to_value(e).unwrap_or_default();
                        v["workflow"] = Value::String(wf.clone());
                        let _ = h.events.send(v.to_string());
                    }
                });
                let run = self
                    .db
                    .runtime()
                    .with_observer(observer)
                    .execute_with_id(
                        &w.workflow,
                        inputs,
                        run_id.unwrap_or_else(dataflow::new_run_id),
                    )
                    .await;
                run.map(|run| {
                    json!({"outputs": Value::Object(run.results), "run_id": run.run_id, "execution_time": started.elapsed().as_secs_f64()})
                })
                .map_err(dataflow::RunError::into_error)
            }
        };
        let code = match &result {
            Ok(_) => "ok",
            Err(e) => e.code().as_str(),
        };
        // Unknown names share one label: a label per typo would grow without bound.
        let label = if registered.is_some() {
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
        result
    }
}
