//! Durable requests (`enable_durability(true)`): idempotency keys and the
//! run journal, both in the application's own database.
//!
//! - `nexus_idempotency`: one row per (caller, key). Claiming a key is one
//!   `INSERT ... ON CONFLICT DO NOTHING`: the instance whose insert changed a
//!   row runs the request, on SQLite and PostgreSQL alike, however many
//!   instances share the database. The row then keeps the response (status
//!   and body, byte for byte) until it expires.
//! - `nexus_runs` / `nexus_run_nodes`: every run, its inputs, context and
//!   the definition checksum of its workflow, and each node that finished
//!   with its output. A running run carries a lease (`lease_owner`,
//!   `lease_until`) its instance renews; a run whose lease expired (its
//!   instance died) is claimed by another instance (or the same one,
//!   restarted) with a compare-and-set `UPDATE` and resumed after its last
//!   journaled node.
//!
//! The tables are not models: migrations neither plan nor drop them. They
//! are created with `CREATE TABLE IF NOT EXISTS` (on PostgreSQL under a
//! transaction-scoped advisory lock, so two instances booting at once do not
//! race on the catalog). Times are Unix milliseconds from the instances'
//! clocks, which must roughly agree (leases are seconds long).

use crate::channel::{failure_body, Caller, Origin, Shared};
use dataflow::{Context, DataFlow, Error, ErrorCode, Result, RunError};
use serde_json::{json, Map, Value};
use sha2::Digest;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const TABLES: [&str; 5] = [
    "CREATE TABLE IF NOT EXISTS nexus_idempotency (\
        caller TEXT NOT NULL, \
        idempotency_key TEXT NOT NULL, \
        workflow TEXT NOT NULL, \
        fingerprint TEXT NOT NULL, \
        status TEXT NOT NULL, \
        run_id VARCHAR(64), \
        response_status BIGINT, \
        response_body TEXT, \
        created BIGINT NOT NULL, \
        expires BIGINT NOT NULL, \
        PRIMARY KEY (caller, idempotency_key))",
    "CREATE INDEX IF NOT EXISTS nexus_idempotency_run ON nexus_idempotency (run_id)",
    "CREATE TABLE IF NOT EXISTS nexus_runs (\
        run_id VARCHAR(64) PRIMARY KEY, \
        workflow TEXT NOT NULL, \
        checksum TEXT NOT NULL, \
        inputs TEXT NOT NULL, \
        context TEXT NOT NULL, \
        caller TEXT NOT NULL, \
        mode TEXT NOT NULL, \
        status TEXT NOT NULL, \
        outcome TEXT, \
        lease_owner TEXT, \
        lease_until BIGINT, \
        created BIGINT NOT NULL, \
        updated BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS nexus_runs_pending ON nexus_runs (status, lease_until)",
    "CREATE TABLE IF NOT EXISTS nexus_run_nodes (\
        run_id VARCHAR(64) NOT NULL, \
        node_id TEXT NOT NULL, \
        status TEXT NOT NULL, \
        output TEXT NOT NULL, \
        created BIGINT NOT NULL, \
        PRIMARY KEY (run_id, node_id))",
];

/// The advisory lock key the tables are created under on PostgreSQL
/// ("nexusdur" in ASCII).
const TABLES_LOCK: i64 = 0x6e65_7875_7364_7572;

/// The longest idempotency key accepted (the draft leaves it to servers;
/// Stripe allows 255).
pub(crate) const MAX_KEY_CHARS: usize = 255;

/// When a caller retrying a request still in progress should try again.
pub(crate) const IN_PROGRESS_RETRY_SECONDS: u64 = 1;

/// The durable state of one application.
pub(crate) struct Durable {
    db: DataFlow,
    /// How long a key's response is kept (and finished runs' journal).
    pub(crate) retention: Duration,
    /// How long a run's lease lasts without renewal.
    pub(crate) lease: Duration,
    /// This instance, as `lease_owner`.
    owner: String,
    ready: tokio::sync::OnceCell<()>,
    /// Whether the resume / purge loop runs.
    started: AtomicBool,
    /// Whether the lease renewal loop runs (from the first run on).
    renewing: AtomicBool,
}

/// What claiming an idempotency key gave.
pub(crate) enum Claim {
    /// The caller owns the key now: run, then store the response.
    Owned,
    /// The key's stored response.
    Replay { status: u16, body: String },
}

/// An answer as HTTP sends it: the status and the JSON body's text.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) status: u16,
    pub(crate) body: String,
    /// Whether it is a stored answer to an earlier request with the key.
    pub(crate) replayed: bool,
}

impl Stored {
    /// A run's outcome as HTTP answers it.
    pub(crate) fn of_run(result: &std::result::Result<Value, RunError>) -> Stored {
        match result {
            Ok(v) => Stored {
                status: 200,
                body: v.to_string(),
                replayed: false,
            },
            Err(e) => Stored {
                status: e.code().http_status(),
                body: failure_body(e).to_string(),
                replayed: false,
            },
        }
    }

    /// Back to a run's outcome, for the CLI and MCP (a body that is not
    /// JSON is a bug: `internal`).
    pub(crate) fn into_run(self) -> std::result::Result<Value, RunError> {
        let body: Value = serde_json::from_str(&self.body).map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("a stored idempotent response is not JSON: {e}"),
            )
        })?;
        if (200..300).contains(&self.status) {
            return Ok(body);
        }
        let error = body
            .get("error")
            .and_then(Error::from_json)
            .unwrap_or_else(|| Error::new(ErrorCode::Internal, "a stored error has no `error`"));
        let completed = body["completed"].as_object().cloned().unwrap_or_default();
        Err(RunError::new(error, completed))
    }
}

/// A run the journal holds: who started it and what it says now.
pub(crate) struct JournaledRun {
    pub(crate) caller: String,
    /// `{"run_id", "workflow", "status", ...}` as `GET /runs/{id}` answers.
    pub(crate) status: Value,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `value` as text with object keys sorted at every depth, whatever order
/// they arrived in: the same request always fingerprints the same.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The request fingerprint of a call: SHA-256 of the workflow, the mode and
/// the inputs (keys in any order).
pub(crate) fn fingerprint(workflow: &str, is_async: bool, inputs: &Value) -> String {
    let mut text = String::new();
    canonical(&json!([workflow, is_async, inputs]), &mut text);
    hex(&sha2::Sha256::digest(text.as_bytes()))
}

/// The checksum of a workflow's definition: a run journaled under one
/// checksum is not resumed under another.
pub(crate) fn checksum(workflow: &dataflow::Workflow) -> String {
    let mut text = String::new();
    canonical(&workflow.to_json(), &mut text);
    hex(&sha2::Sha256::digest(text.as_bytes()))
}

/// Whose keys and runs these are: the operator (in-process CLI, MCP over
/// stdio, `Nexus::execute`), else the caller's actor (or `anonymous`), with
/// its tenant. One caller never sees another's.
pub(crate) fn scope(caller: &Caller) -> String {
    let who = match (&caller.origin, &caller.context.actor) {
        (Origin::Operator, _) => "operator".to_string(),
        (_, Some(actor)) => format!("actor:{actor}"),
        (_, None) => "anonymous".to_string(),
    };
    json!([who, caller.context.tenant]).to_string()
}

/// Checks an `Idempotency-Key` (1 to 255 visible ASCII characters).
pub(crate) fn check_key(key: &str) -> Result<()> {
    if !key.is_empty() && key.len() <= MAX_KEY_CHARS && key.bytes().all(|b| b.is_ascii_graphic()) {
        return Ok(());
    }
    Err(bad_key())
}

/// The error for a malformed idempotency key.
pub(crate) fn bad_key() -> Error {
    Error::new(
        ErrorCode::Validation,
        format!("the idempotency key must be 1 to {MAX_KEY_CHARS} visible ASCII characters"),
    )
    .with_field("idempotency-key")
}

/// The context a run was started with, as the journal keeps it.
fn context_json(c: &Context) -> Value {
    json!({
        "actor": c.actor, "tenant": c.tenant, "roles": c.roles,
        "request_id": c.request_id, "channel": c.channel, "system": c.system,
    })
}

fn context_of(v: &Value) -> Context {
    let text = |k: &str| v[k].as_str().map(str::to_string);
    let mut c = if v["system"] == true {
        Context::system()
    } else {
        Context::new()
    };
    if let Some(a) = text("actor") {
        c = c.actor(a);
    }
    if let Some(t) = text("tenant") {
        c = c.tenant(t);
    }
    if let Some(r) = text("request_id") {
        c = c.request_id(r);
    }
    if let Some(ch) = text("channel") {
        c = c.channel(ch);
    }
    let roles: Vec<String> = v["roles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_string))
        .collect();
    c.roles(roles)
}

impl Durable {
    pub(crate) fn new(db: DataFlow, retention: Duration, lease: Duration) -> Durable {
        Durable {
            db,
            retention,
            lease,
            owner: dataflow::new_run_id(),
            ready: tokio::sync::OnceCell::new(),
            started: AtomicBool::new(false),
            renewing: AtomicBool::new(false),
        }
    }

    /// Creates the tables once per process (safe when several instances
    /// boot at once).
    pub(crate) async fn ensure_tables(&self) -> Result<()> {
        self.ready
            .get_or_try_init(|| async {
                match self.db.dialect() {
                    dataflow::Dialect::Postgres => {
                        // One statement, one transaction, under a lock every
                        // instance takes: concurrent `CREATE TABLE IF NOT
                        // EXISTS` can otherwise fail on the catalog's unique
                        // index.
                        let body: Vec<String> = TABLES.iter().map(|t| format!("{t};")).collect();
                        let block = format!(
                            "DO $$ BEGIN PERFORM pg_advisory_xact_lock({TABLES_LOCK}); {} END $$",
                            body.join(" ")
                        );
                        self.db.raw_execute(&block, vec![]).await.map(drop)
                    }
                    _ => {
                        for t in TABLES {
                            self.db.raw_execute(t, vec![]).await?;
                        }
                        Ok(())
                    }
                }
            })
            .await
            .map(drop)
    }

    // ---- idempotency keys ----

    /// Claims `key` for `scope`'s request (`fingerprint`, run `run_id`):
    /// [`Claim::Owned`] for exactly one of any number of concurrent
    /// claimers (on any instance); a stored response to replay; 409
    /// `conflict` while the first request runs; 422 `idempotency_mismatch`
    /// for the same key with another request.
    pub(crate) async fn claim(
        &self,
        scope: &str,
        key: &str,
        workflow: &str,
        fingerprint: &str,
        run_id: &str,
    ) -> Result<Claim> {
        self.ensure_tables().await?;
        for _ in 0..3 {
            let now = now_ms();
            let inserted = self
                .db
                .raw_execute(
                    "INSERT INTO nexus_idempotency (caller, idempotency_key, workflow, fingerprint, \
                     status, run_id, created, expires) VALUES (?, ?, ?, ?, 'running', ?, ?, ?) \
                     ON CONFLICT (caller, idempotency_key) DO NOTHING",
                    vec![
                        json!(scope),
                        json!(key),
                        json!(workflow),
                        json!(fingerprint),
                        json!(run_id),
                        json!(now),
                        json!(now.saturating_add(ms(self.retention))),
                    ],
                )
                .await?;
            if inserted == 1 {
                return Ok(Claim::Owned);
            }
            let rows = self
                .db
                .raw_query(
                    "SELECT fingerprint, status, response_status, response_body, expires, run_id, \
                     created FROM nexus_idempotency WHERE caller = ? AND idempotency_key = ?",
                    vec![json!(scope), json!(key)],
                )
                .await?;
            let Some(row) = rows.into_iter().next() else {
                // Released or purged between the two statements: claim again.
                continue;
            };
            let expires = row[4].as_i64().unwrap_or(0);
            if expires <= now {
                // Expired: forget it (if nobody else did) and claim again.
                self.db
                    .raw_execute(
                        "DELETE FROM nexus_idempotency WHERE caller = ? AND idempotency_key = ? \
                         AND expires <= ?",
                        vec![json!(scope), json!(key), json!(now)],
                    )
                    .await?;
                continue;
            }
            if row[0].as_str() != Some(fingerprint) {
                return Err(Error::new(
                    ErrorCode::IdempotencyMismatch,
                    "this idempotency key was already used with a different request (another \
                     workflow, mode or inputs); nothing ran: send the first request again, or \
                     use a new key",
                )
                .with_field("idempotency-key"));
            }
            if row[1].as_str() == Some("done") {
                return Ok(Claim::Replay {
                    status: row[2]
                        .as_i64()
                        .and_then(|s| u16::try_from(s).ok())
                        .unwrap_or(500),
                    body: row[3].as_str().unwrap_or("{}").to_string(),
                });
            }
            // Still running: unless its run was never journaled (its
            // instance died between the claim and the run) and the claim is
            // older than a lease, in which case this request takes it over.
            let stale_claim = row[6].as_i64().unwrap_or(now) < now - ms(self.lease);
            if stale_claim {
                if let Some(old) = row[5].as_str() {
                    if !self.run_exists(old).await? {
                        let taken = self
                            .db
                            .raw_execute(
                                "UPDATE nexus_idempotency SET run_id = ?, created = ? WHERE \
                                 caller = ? AND idempotency_key = ? AND run_id = ? AND status = 'running'",
                                vec![json!(run_id), json!(now), json!(scope), json!(key), json!(old)],
                            )
                            .await?;
                        if taken == 1 {
                            return Ok(Claim::Owned);
                        }
                    }
                }
            }
            return Err(Error::new(
                ErrorCode::Conflict,
                format!(
                    "a request with this idempotency key is still in progress; retry in \
                     {IN_PROGRESS_RETRY_SECONDS} s to receive its response"
                ),
            )
            .with_field("idempotency-key"));
        }
        Err(Error::new(
            ErrorCode::Conflict,
            "this idempotency key is being claimed and released concurrently; retry",
        )
        .with_field("idempotency-key"))
    }

    /// Stores the response of the request that owns `key`, or releases the
    /// key when the response is a server error (a 5xx: a transient failure
    /// the client may retry with the same key).
    pub(crate) async fn complete(&self, scope: &str, key: &str, answer: &Stored) -> Result<()> {
        if answer.status >= 500 {
            return self
                .db
                .raw_execute(
                    "DELETE FROM nexus_idempotency WHERE caller = ? AND idempotency_key = ? \
                     AND status = 'running'",
                    vec![json!(scope), json!(key)],
                )
                .await
                .map(drop);
        }
        self.db
            .raw_execute(
                "UPDATE nexus_idempotency SET status = 'done', response_status = ?, \
                 response_body = ? WHERE caller = ? AND idempotency_key = ? AND status = 'running'",
                vec![
                    json!(answer.status),
                    json!(answer.body),
                    json!(scope),
                    json!(key),
                ],
            )
            .await
            .map(drop)
    }

    /// Stores a resumed run's response under every key waiting on it.
    async fn complete_run_keys(&self, run_id: &str, answer: &Stored) -> Result<()> {
        if answer.status >= 500 {
            return self
                .db
                .raw_execute(
                    "DELETE FROM nexus_idempotency WHERE run_id = ? AND status = 'running'",
                    vec![json!(run_id)],
                )
                .await
                .map(drop);
        }
        self.db
            .raw_execute(
                "UPDATE nexus_idempotency SET status = 'done', response_status = ?, \
                 response_body = ? WHERE run_id = ? AND status = 'running'",
                vec![json!(answer.status), json!(answer.body), json!(run_id)],
            )
            .await
            .map(drop)
    }

    /// Runs `f` once for `key`: the first request runs it and its answer is
    /// stored; a retry gets the stored answer (`replayed`).
    pub(crate) async fn once<F>(
        self: &std::sync::Arc<Self>,
        scope: &str,
        key: &str,
        workflow: &str,
        fingerprint: &str,
        run_id: &str,
        f: F,
    ) -> Result<Stored>
    where
        F: std::future::Future<Output = Stored> + Send + 'static,
    {
        match self
            .claim(scope, key, workflow, fingerprint, run_id)
            .await?
        {
            Claim::Replay { status, body } => Ok(Stored {
                status,
                body,
                replayed: true,
            }),
            Claim::Owned => {
                // A task of its own: a caller that goes away (a dropped
                // connection) neither stops the run nor leaves the key
                // claimed for ever; its retry gets the answer.
                let (me, scope, key) = (self.clone(), scope.to_string(), key.to_string());
                let task = tokio::spawn(async move {
                    let answer = f.await;
                    me.complete(&scope, &key, &answer).await.map(|()| answer)
                });
                task.await.map_err(|e| {
                    Error::new(
                        ErrorCode::Internal,
                        format!("a keyed request's task failed: {e}"),
                    )
                })?
            }
        }
    }

    // ---- the run journal ----

    async fn run_exists(&self, run_id: &str) -> Result<bool> {
        let rows = self
            .db
            .raw_query(
                "SELECT run_id FROM nexus_runs WHERE run_id = ?",
                vec![json!(run_id)],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Journals a run about to start, leased to this instance (whose
    /// renewal loop starts with its first run, serving or not).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn begin(
        self: &std::sync::Arc<Self>,
        run_id: &str,
        workflow: &str,
        checksum: &str,
        inputs: &Value,
        context: &Context,
        scope: &str,
        mode: &str,
    ) -> Result<()> {
        self.ensure_tables().await?;
        self.renew_leases();
        let now = now_ms();
        self.db
            .raw_execute(
                "INSERT INTO nexus_runs (run_id, workflow, checksum, inputs, context, caller, mode, \
                 status, lease_owner, lease_until, created, updated) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)",
                vec![
                    json!(run_id),
                    json!(workflow),
                    json!(checksum),
                    json!(inputs.to_string()),
                    json!(context_json(context).to_string()),
                    json!(scope),
                    json!(mode),
                    json!(self.owner),
                    json!(now.saturating_add(ms(self.lease))),
                    json!(now),
                    json!(now),
                ],
            )
            .await
            .map(drop)
    }

    /// The statement journaling a node that finished (see
    /// [`dataflow::NodeJournal`]).
    pub(crate) fn node_journal() -> dataflow::NodeJournal {
        std::sync::Arc::new(|run_id: &str, node_id: &str, output: &Value| {
            (
                "INSERT INTO nexus_run_nodes (run_id, node_id, status, output, created) \
                 VALUES (?, ?, 'done', ?, ?) ON CONFLICT (run_id, node_id) DO NOTHING"
                    .to_string(),
                vec![
                    json!(run_id),
                    json!(node_id),
                    json!(output.to_string()),
                    json!(now_ms()),
                ],
            )
        })
    }

    /// Records a run's end: `status` is what `GET /runs/{id}` answers.
    pub(crate) async fn finish(&self, run_id: &str, status: &Value) -> Result<()> {
        let state = status["status"].as_str().unwrap_or("failed");
        self.db
            .raw_execute(
                "UPDATE nexus_runs SET status = ?, outcome = ?, lease_owner = NULL, \
                 lease_until = NULL, updated = ? WHERE run_id = ?",
                vec![
                    json!(state),
                    json!(status.to_string()),
                    json!(now_ms()),
                    json!(run_id),
                ],
            )
            .await
            .map(drop)
    }

    /// A journaled run, or `None`.
    pub(crate) async fn get(&self, run_id: &str) -> Result<Option<JournaledRun>> {
        self.ensure_tables().await?;
        let rows = self
            .db
            .raw_query(
                "SELECT caller, workflow, status, outcome FROM nexus_runs WHERE run_id = ?",
                vec![json!(run_id)],
            )
            .await?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let status = match row[3].as_str().map(serde_json::from_str::<Value>) {
            Some(Ok(v)) => v,
            _ => json!({"run_id": run_id, "workflow": row[1], "status": row[2]}),
        };
        Ok(Some(JournaledRun {
            caller: row[0].as_str().unwrap_or_default().to_string(),
            status,
        }))
    }

    /// Starts (once) the loop renewing this instance's leases every third
    /// of a lease; it ends with the application.
    fn renew_leases(self: &std::sync::Arc<Self>) {
        if self.renewing.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = std::sync::Arc::downgrade(self);
        let tick = (self.lease / 3).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                let Some(durable) = weak.upgrade() else {
                    return;
                };
                if let Err(e) = durable.renew().await {
                    tracing::warn!(error = %e, "nexus durability: cannot renew leases");
                }
            }
        });
    }

    /// Renews the leases of this instance's runs.
    async fn renew(&self) -> Result<()> {
        self.db
            .raw_execute(
                "UPDATE nexus_runs SET lease_until = ? WHERE lease_owner = ? AND status = 'running'",
                vec![
                    json!(now_ms().saturating_add(ms(self.lease))),
                    json!(self.owner),
                ],
            )
            .await
            .map(drop)
    }

    /// Claims runs whose lease expired: each with a compare-and-set
    /// `UPDATE` (only one instance's changes the row), so a run is resumed
    /// by one instance.
    async fn claim_expired(&self) -> Result<Vec<Vec<Value>>> {
        let now = now_ms();
        let candidates = self
            .db
            .raw_query(
                "SELECT run_id, lease_owner FROM nexus_runs WHERE status = 'running' \
                 AND lease_until < ? ORDER BY created LIMIT 16",
                vec![json!(now)],
            )
            .await?;
        let mut claimed = Vec::new();
        for row in candidates {
            let (Some(run_id), previous) = (row[0].as_str(), row[1].clone()) else {
                continue;
            };
            let (owner_test, mut params) = match previous.as_str() {
                Some(p) => ("lease_owner = ?", vec![json!(p)]),
                None => ("lease_owner IS NULL", vec![]),
            };
            let mut all = vec![
                json!(self.owner),
                json!(now.saturating_add(ms(self.lease))),
                json!(run_id),
                json!(now),
            ];
            all.append(&mut params);
            let taken = self
                .db
                .raw_execute(
                    &format!(
                        "UPDATE nexus_runs SET lease_owner = ?, lease_until = ? WHERE run_id = ? \
                         AND status = 'running' AND lease_until < ? AND {owner_test}"
                    ),
                    all,
                )
                .await?;
            if taken != 1 {
                continue;
            }
            let rows = self
                .db
                .raw_query(
                    "SELECT run_id, workflow, checksum, inputs, context, mode FROM nexus_runs \
                     WHERE run_id = ?",
                    vec![json!(run_id)],
                )
                .await?;
            claimed.extend(rows);
        }
        Ok(claimed)
    }

    /// The outputs of a run's journaled nodes.
    async fn completed_nodes(&self, run_id: &str) -> Result<Map<String, Value>> {
        let rows = self
            .db
            .raw_query(
                "SELECT node_id, output FROM nexus_run_nodes WHERE run_id = ?",
                vec![json!(run_id)],
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let id = r[0].as_str()?.to_string();
                let out = serde_json::from_str(r[1].as_str()?).ok()?;
                Some((id, out))
            })
            .collect())
    }

    /// Deletes expired keys and the journal of runs finished longer ago
    /// than the retention. Returns how many rows went.
    pub(crate) async fn purge(&self) -> Result<u64> {
        self.ensure_tables().await?;
        let now = now_ms();
        let before = now.saturating_sub(ms(self.retention));
        let keys = self
            .db
            .raw_execute(
                "DELETE FROM nexus_idempotency WHERE expires <= ?",
                vec![json!(now)],
            )
            .await?;
        let nodes = self
            .db
            .raw_execute(
                "DELETE FROM nexus_run_nodes WHERE run_id IN (SELECT run_id FROM nexus_runs \
                 WHERE status <> 'running' AND updated < ?)",
                vec![json!(before)],
            )
            .await?;
        let runs = self
            .db
            .raw_execute(
                "DELETE FROM nexus_runs WHERE status <> 'running' AND updated < ?",
                vec![json!(before)],
            )
            .await?;
        Ok(keys + nodes + runs)
    }

    /// Starts (once) the loop that resumes runs whose lease expired (at once, then every third of a lease) and
    /// purges expired rows (every minute), until shutdown.
    pub(crate) fn start(shared: &Shared) {
        let Some(durable) = shared.durable.clone() else {
            return;
        };
        if durable.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let shared = shared.clone();
        let shutdown = shared.hub.shutdown.clone();
        tokio::spawn(async move {
            let tick = (durable.lease / 3).max(Duration::from_millis(100));
            let mut last_purge: Option<std::time::Instant> = None;
            loop {
                if let Err(e) = durable.ensure_tables().await {
                    tracing::warn!(error = %e, "nexus durability: cannot create its tables");
                } else {
                    durable.renew_leases();
                    match durable.claim_expired().await {
                        Ok(rows) => {
                            for row in rows {
                                let s = shared.clone();
                                tokio::spawn(async move { resume(&s, row).await });
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "nexus durability: cannot claim runs")
                        }
                    }
                    if last_purge.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        last_purge = Some(std::time::Instant::now());
                        if let Err(e) = durable.purge().await {
                            tracing::warn!(error = %e, "nexus durability: cannot purge");
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(tick) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        });
    }
}

/// Resumes a claimed run after its last journaled node; a run whose
/// workflow is gone or changed fails with `conflict` instead.
async fn resume(shared: &Shared, row: Vec<Value>) {
    let Some(durable) = shared.durable.clone() else {
        return;
    };
    let text = |i: usize| row.get(i).and_then(Value::as_str).unwrap_or_default();
    let (run_id, name, sum) = (text(0), text(1), text(2));
    let inputs: Value = serde_json::from_str(text(3)).unwrap_or(Value::Null);
    let context = context_of(&serde_json::from_str(text(4)).unwrap_or(Value::Null));
    let is_async = text(5) == "async";
    let started = std::time::Instant::now();
    let result: std::result::Result<Value, RunError> = match shared.workflows.get(name) {
        None => Err(Error::new(
            ErrorCode::Conflict,
            format!(
                "run `{run_id}` of workflow `{name}` was not resumed: no workflow `{name}` is \
                 registered any more"
            ),
        )
        .into()),
        Some(w) if checksum(&w.workflow) != sum => Err(Error::new(
            ErrorCode::Conflict,
            format!(
                "run `{run_id}` of workflow `{name}` was not resumed: the workflow's definition \
                 changed since the run started (checksum {} then, {} now); start it anew",
                &sum[..sum.len().min(12)],
                &checksum(&w.workflow)[..12]
            ),
        )
        .into()),
        Some(w) => match durable.completed_nodes(run_id).await {
            Err(e) => {
                // Leave it: the lease expires and a later pass retries.
                tracing::warn!(error = %e, run_id, "nexus durability: cannot read the journal");
                return;
            }
            Ok(completed) => {
                tracing::info!(
                    run_id,
                    workflow = name,
                    done = completed.len(),
                    "nexus: resuming a run"
                );
                shared
                    .run_journaled(
                        context,
                        name,
                        &w.workflow,
                        inputs,
                        "resume",
                        run_id.to_string(),
                        completed,
                        started,
                        None,
                    )
                    .await
            }
        },
    };
    let status = crate::channel::run_status(run_id, name, &result);
    if let Err(e) = durable.finish(run_id, &status).await {
        tracing::warn!(error = %e, run_id, "nexus durability: cannot record a resumed run's end");
        return;
    }
    // A sync request's key waits for the run's response; an async one's
    // was stored when it was accepted.
    if !is_async {
        let answer = Stored::of_run(&result);
        if let Err(e) = durable.complete_run_keys(run_id, &answer).await {
            tracing::warn!(error = %e, run_id, "nexus durability: cannot store a resumed run's response");
        }
    }
}
