//! What every channel shares: running a registered workflow, the output
//! shape, and the one mapping from error codes to HTTP statuses.

use crate::Registered;
use dataflow::{DataFlow, Error, ErrorCode, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Instant;

/// Runs `name` with `inputs`: `{"outputs": {node: output}, "run_id", "execution_time"}`.
pub(crate) async fn execute(db: &DataFlow, workflows: &BTreeMap<String, Registered>, name: &str, inputs: Value) -> Result<Value> {
    let Some(w) = workflows.get(name) else {
        let known: Vec<&str> = workflows.keys().map(String::as_str).collect();
        return Err(Error::new(ErrorCode::NotFound, format!("no workflow named `{name}`; registered: {}", known.join(", "))));
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
        ErrorCode::UniqueViolation | ErrorCode::FkViolation | ErrorCode::NotAllowed | ErrorCode::MigrationBlocked => 409,
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
