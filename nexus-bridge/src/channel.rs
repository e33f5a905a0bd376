//! What every channel shares: running a registered workflow, the output
//! shape, and the one mapping from error codes to HTTP statuses.

use crate::Registered;
use dataflow::{DataFlow, Error, ErrorCode, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Instant;

/// Runs `name` with `inputs`: `{"outputs": {node: output}, "run_id", "execution_time"}`.
pub(crate) async fn execute(
    db: &DataFlow,
    workflows: &BTreeMap<String, Registered>,
    name: &str,
    inputs: Value,
) -> Result<Value> {
    let Some(w) = workflows.get(name) else {
        let known: Vec<&str> = workflows.keys().map(String::as_str).collect();
        return Err(Error::new(
            ErrorCode::NotFound,
            format!(
                "no workflow named `{name}`; registered: {}",
                known.join(", ")
            ),
        ));
    };
    let started = Instant::now();
    let run = db.runtime().execute(&w.workflow, inputs).await?;
    Ok(json!({
        "outputs": Value::Object(run.results),
        "run_id": run.run_id,
        "execution_time": started.elapsed().as_secs_f64(),
    }))
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
            registry,
            requests,
            latency,
            nodes,
            pool,
        }
    }

    /// The Prometheus text exposition, with the pool's current state.
    pub fn metrics_text(&self, db: &DataFlow) -> String {
        let (all, idle) = db.pool_state();
        self.pool.with_label_values(&["open"]).set(i64::from(all));
        self.pool.with_label_values(&["idle"]).set(i64::from(idle));
        let mut out = String::new();
        let _ = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out);
        out
    }
}

/// A run id: a UUID v7, so ids sort by start time.
pub(crate) fn new_run_id() -> String {
    uuid::Uuid::now_v7().to_string()
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

/// [`execute`] with the run's events published and its metrics recorded.
pub(crate) async fn execute_observed(
    db: &DataFlow,
    workflows: &BTreeMap<String, Registered>,
    name: &str,
    inputs: Value,
    hub: &std::sync::Arc<Hub>,
    channel: &str,
    run_id: Option<String>,
) -> Result<Value> {
    let started = Instant::now();
    let result = match workflows.get(name) {
        None => execute(db, workflows, name, inputs).await,
        Some(w) => {
            let (h, wf) = (hub.clone(), name.to_string());
            let observer: dataflow::Observer =
                std::sync::Arc::new(move |e: &dataflow::RunEvent| {
                    if let dataflow::RunEvent::NodeFinished {
                        node, duration_ms, ..
                    } = e
                    {
                        h.nodes
                            .with_label_values(&[wf.as_str(), node.as_str()])
                            .observe(duration_ms / 1e3);
                    }
                    let mut v = serde_json::to_value(e).unwrap_or_default();
                    v["workflow"] = Value::String(wf.clone());
                    // No subscribers is fine: events are for whoever listens now.
                    let _ = h.events.send(v.to_string());
                });
            let run = db
                .runtime()
                .with_observer(observer)
                .execute_with_id(&w.workflow, inputs, run_id.unwrap_or_else(new_run_id))
                .await;
            run.map(|run| {
                json!({"outputs": Value::Object(run.results), "run_id": run.run_id, "execution_time": started.elapsed().as_secs_f64()})
            })
        }
    };
    let code = match &result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    hub.requests.with_label_values(&[name, channel, code]).inc();
    hub.latency
        .with_label_values(&[name, channel])
        .observe(started.elapsed().as_secs_f64());
    result
}
