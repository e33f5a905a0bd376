//! The workflow runtime: independent nodes run concurrently, a failed node
//! stops its dependants, and a transactional run puts every model node on
//! one connection in one transaction.

use super::{get_path, set_path, Plan, Workflow};
use crate::backend::{Conn, ConnMut};
use crate::error::{Error, ErrorCode, Result};
use crate::json_schema::{check, required};
use crate::registry::NodeRef;
use crate::DataFlow;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// The outcome of a successful run.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// The run's id (a UUID v7), also on its events.
    pub run_id: String,
    /// Node id → output.
    pub results: Map<String, Value>,
    /// Node id → how long the node took.
    pub timings: BTreeMap<String, Duration>,
    /// Nodes not run because a switch routed around them.
    pub skipped: Vec<String>,
    /// How long the whole run took.
    pub duration: Duration,
}

/// What happens during a run, for event streams and metrics.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunEvent {
    /// A run began.
    Started {
        /// The run.
        run_id: String,
        /// Who started it ([`Context::actor`](crate::Context::actor)).
        actor: Option<String>,
        /// The request it belongs to.
        request_id: Option<String>,
    },
    /// A node finished, well or not.
    NodeFinished {
        /// The run.
        run_id: String,
        /// The node's id in the workflow.
        node: String,
        /// The node's type.
        node_type: String,
        /// Whether it succeeded.
        ok: bool,
        /// How long it took.
        duration_ms: f64,
        /// Who started the run.
        actor: Option<String>,
        /// The request the run belongs to.
        request_id: Option<String>,
    },
    /// A run succeeded.
    Finished {
        /// The run.
        run_id: String,
        /// How long it took.
        duration_ms: f64,
        /// Who started the run.
        actor: Option<String>,
        /// The request the run belongs to.
        request_id: Option<String>,
    },
    /// A run failed.
    Failed {
        /// The run.
        run_id: String,
        /// The error code (`"unique_violation"`, ...).
        code: String,
        /// The node that failed, if one did.
        node: Option<String>,
        /// The model the error is about, if any.
        model: Option<String>,
        /// The field, parameter or input the error is about, if any.
        field: Option<String>,
        /// Who started the run.
        actor: Option<String>,
        /// The request the run belongs to.
        request_id: Option<String>,
        // No message: events go to every listener, and messages may quote
        // a caller's input (a token in a not-found message).
    },
}

/// A failed workflow run: the error, and the outputs of the nodes that
/// completed before it (kept apart from [`Error`], which every part of the
/// crate shares).
#[derive(Debug, Clone)]
pub struct RunError {
    error: Error,
    completed: Map<String, Value>,
}

impl RunError {
    /// A run that failed with `error` after the nodes in `completed` (node
    /// id → output) finished: for channels that carry a failure elsewhere
    /// and back (nexus's CLI reading an HTTP error body).
    pub fn new(error: Error, completed: Map<String, Value>) -> Self {
        RunError { error, completed }
    }

    /// Why the run failed.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// Why the run failed, taken out.
    pub fn into_error(self) -> Error {
        self.error
    }

    /// The outputs of the nodes that completed before the failure, keyed by
    /// node id (rolled back in a transactional run, but reported).
    pub fn completed(&self) -> &Map<String, Value> {
        &self.completed
    }
}

/// A failed run reads as its [`Error`] (`e.code()`, `e.node()`, ...), with
/// [`completed`](RunError::completed) on top.
impl std::ops::Deref for RunError {
    type Target = Error;

    fn deref(&self) -> &Error {
        &self.error
    }
}

impl From<Error> for RunError {
    fn from(error: Error) -> Self {
        RunError::new(error, Map::new())
    }
}

impl From<RunError> for Error {
    fn from(e: RunError) -> Self {
        e.error
    }
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for RunError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Receives every [`RunEvent`] of the runs it observes.
pub type Observer = std::sync::Arc<dyn Fn(&RunEvent) + Send + Sync>;

/// Records a finished node in a journal of the caller's (nexus's run
/// journal): given the run id, the node id and its output, it returns one
/// SQL statement with `?` marks and its values (as
/// [`DataFlow::raw_execute`] takes them). The runtime runs it before any
/// node that depends on this one starts. In a transactional run it runs on
/// the run's connection, inside the run's transaction: the node's writes
/// and its journal entry commit together or not at all. Otherwise it runs
/// right after the node, in a transaction of its own.
pub type NodeJournal =
    std::sync::Arc<dyn Fn(&str, &str, &Value) -> (String, Vec<Value>) + Send + Sync>;

/// Runs workflows against a [`DataFlow`]; get one with `db.runtime()`.
#[derive(Clone)]
pub struct WorkflowRuntime {
    db: DataFlow,
    observer: Option<Observer>,
    journal: Option<NodeJournal>,
    /// Node id → output of nodes that already ran (a resumed run).
    completed: Map<String, Value>,
}

impl std::fmt::Debug for WorkflowRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowRuntime")
            .field("observed", &self.observer.is_some())
            .finish()
    }
}

impl DataFlow {
    /// The workflow runtime over this database.
    pub fn runtime(&self) -> WorkflowRuntime {
        WorkflowRuntime {
            db: self.clone(),
            observer: None,
            journal: None,
            completed: Map::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Status {
    Pending,
    Running,
    Done,
    Failed,
    /// Routed around by a switch.
    Skipped,
    /// An upstream node failed.
    Blocked,
}

/// What happens to a node whose upstream nodes have all settled.
enum Next {
    Run(Value),
    Skip,
    Fail(Error),
}

/// The bookkeeping shared by the concurrent and the transactional runner.
struct State<'p> {
    plan: &'p Plan,
    /// The run's context: its events name the actor and request.
    context: &'p crate::Context,
    observe: Option<(&'p Observer, &'p str)>,
    inputs: Map<String, Value>,
    status: Vec<Status>,
    outputs: Vec<Option<Value>>,
    timings: BTreeMap<String, Duration>,
    error: Option<Error>,
}

impl<'p> State<'p> {
    fn new(
        plan: &'p Plan,
        context: &'p crate::Context,
        inputs: Map<String, Value>,
        observe: Option<(&'p Observer, &'p str)>,
    ) -> Self {
        let n = plan.nodes.len();
        if let Some((o, run_id)) = observe {
            o(&RunEvent::Started {
                run_id: run_id.to_string(),
                actor: context.actor.clone(),
                request_id: context.request_id.clone(),
            });
        }
        State {
            plan,
            context,
            observe,
            inputs,
            status: vec![Status::Pending; n],
            outputs: vec![None; n],
            timings: BTreeMap::new(),
            error: None,
        }
    }

    /// Marks the nodes a resumed run already completed as done.
    fn preset(&mut self, completed: &Map<String, Value>) {
        for (i, node) in self.plan.nodes.iter().enumerate() {
            if let Some(out) = completed.get(&node.id) {
                self.status[i] = Status::Done;
                self.outputs[i] = Some(out.clone());
            }
        }
    }

    /// The input of node `i`: its rendered params plus its connections.
    fn next(&self, i: usize) -> Next {
        let node = &self.plan.nodes[i];
        if self.status[i] == Status::Blocked {
            return Next::Skip;
        }
        let joins_any = node.kind.joins_any();
        let session = self.context.session.as_ref().map(|s| s.data());
        let mut input = match node.params.render(&self.inputs, session, &|k| {
            node.optional.iter().any(|o| o == k)
        }) {
            Ok(v) => v,
            Err(name) => {
                let message = match (name.strip_prefix(super::template::SESSION), session) {
                    (None, _) => format!("node `{}`: the run input `{name}` is missing", node.id),
                    (Some(_), None) => format!(
                        "node `{}`: the template `{{{{{name}}}}}` reads the session, but the run has none (pass a session id)",
                        node.id
                    ),
                    (Some(path), Some(_)) => format!(
                        "node `{}`: the session has no `{path}` (template `{{{{{name}}}}}`)",
                        node.id
                    ),
                };
                return Next::Fail(Error::new(ErrorCode::Validation, message).with_field(name));
            }
        };
        let mut delivered = 0;
        for e in &node.incoming {
            let src = &self.plan.nodes[e.from];
            match (&self.status[e.from], &self.outputs[e.from]) {
                (Status::Done, Some(out)) => match get_path(out, &e.from_path) {
                    Some(v) => {
                        set_path(&mut input, &e.to_path, v.clone());
                        delivered += 1;
                    }
                    // The branch a switch did not take.
                    None if matches!(e.from_path[0].as_str(), "true_output" | "false_output")
                        && out.get("branch").is_some() =>
                    {
                        if !joins_any {
                            return Next::Skip;
                        }
                    }
                    None => {
                        return Next::Fail(Error::new(
                            ErrorCode::Validation,
                            format!(
                                "node `{}`: the output of `{}` ({}) has no `{}` to connect",
                                node.id,
                                src.id,
                                src.node_type,
                                e.from_path.join(".")
                            ),
                        ))
                    }
                },
                _ if !joins_any => return Next::Skip,
                _ => {}
            }
        }
        if joins_any && delivered == 0 && !node.incoming.is_empty() {
            return Next::Skip;
        }
        Next::Run(input)
    }

    fn finish(&mut self, i: usize, result: Result<Value>, took: Duration) {
        let node = &self.plan.nodes[i];
        self.timings.insert(node.id.clone(), took);
        if let Some((o, run_id)) = self.observe {
            o(&RunEvent::NodeFinished {
                run_id: run_id.to_string(),
                node: node.id.clone(),
                node_type: node.node_type.clone(),
                ok: result.is_ok(),
                duration_ms: took.as_secs_f64() * 1e3,
                actor: self.context.actor.clone(),
                request_id: self.context.request_id.clone(),
            });
        }
        match result {
            Ok(v) => {
                self.status[i] = Status::Done;
                self.outputs[i] = Some(v);
            }
            Err(e) => self.fail(i, e.in_step(&node.id, &node.node_type)),
        }
    }

    /// Records node `i`'s failure (the run's error if it is the first).
    fn fail(&mut self, i: usize, e: Error) {
        let node = &self.plan.nodes[i];
        self.status[i] = Status::Failed;
        if self.error.is_none() {
            self.error = Some(e);
        }
        // Everything downstream of a failure does not run.
        let mut stack = node.dependents.clone();
        while let Some(d) = stack.pop() {
            if self.status[d] == Status::Pending {
                self.status[d] = Status::Blocked;
                stack.extend(self.plan.nodes[d].dependents.iter().copied());
            }
        }
    }

    fn report_failure(&self, e: &Error) {
        if let Some((o, run_id)) = self.observe {
            o(&RunEvent::Failed {
                run_id: run_id.to_string(),
                code: e.code().to_string(),
                node: e.node().map(str::to_string),
                model: e.model().map(str::to_string),
                field: e.field().map(str::to_string),
                actor: self.context.actor.clone(),
                request_id: self.context.request_id.clone(),
            });
        }
    }

    fn results(&self) -> Map<String, Value> {
        self.plan
            .nodes
            .iter()
            .zip(&self.outputs)
            .filter_map(|(n, o)| o.as_ref().map(|v| (n.id.clone(), v.clone())))
            .collect()
    }

    fn into_run(mut self, run_id: String, started: Instant) -> Result<Run, RunError> {
        if let Some(e) = self.error.take() {
            self.report_failure(&e);
            return Err(RunError::new(e, self.results()));
        }
        let duration = started.elapsed();
        if let Some((o, _)) = self.observe {
            o(&RunEvent::Finished {
                run_id: run_id.clone(),
                duration_ms: duration.as_secs_f64() * 1e3,
                actor: self.context.actor.clone(),
                request_id: self.context.request_id.clone(),
            });
        }
        let plan = self.plan;
        let skipped = plan
            .nodes
            .iter()
            .zip(&self.status)
            .filter(|(_, s)| **s == Status::Skipped)
            .map(|(n, _)| n.id.clone())
            .collect();
        let results = plan
            .nodes
            .iter()
            .zip(self.outputs)
            .filter_map(|(n, o)| o.map(|v| (n.id.clone(), v)))
            .collect();
        Ok(Run {
            run_id,
            results,
            timings: self.timings,
            skipped,
            duration,
        })
    }
}

/// A new run id: a UUID v7 (ids sort by start time), lower-case hyphenated.
pub fn new_run_id() -> String {
    crate::value::new_uuid7_text()
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

impl WorkflowRuntime {
    /// Sends every event of the runs this runtime executes to `observer`.
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Records every node that finishes well through `journal` (see
    /// [`NodeJournal`]).
    pub fn with_journal(mut self, journal: NodeJournal) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Resumes a run: the nodes in `completed` (node id → output, as a
    /// journal recorded them) count as done with these outputs and do not
    /// run again; the rest run as usual, fed by them.
    pub fn with_completed(mut self, completed: Map<String, Value>) -> Self {
        self.completed = completed;
        self
    }

    /// Runs `workflow` with `inputs` (an object matching its input schema).
    pub async fn execute(&self, workflow: &Workflow, inputs: Value) -> Result<Run, RunError> {
        self.execute_with_id(workflow, inputs, new_run_id()).await
    }

    /// Like [`execute`](Self::execute) with a caller-chosen run id.
    pub async fn execute_with_id(
        &self,
        workflow: &Workflow,
        inputs: Value,
        run_id: String,
    ) -> Result<Run, RunError> {
        let plan = &workflow.plan;
        let inputs = validate_inputs(plan, inputs)?;
        let c = self.db.context();
        let span = tracing::info_span!(
            "dataflow.run",
            run_id = run_id.as_str(),
            transactional = plan.spec.transactional,
            tenant = c.tenant.as_deref(),
            request_id = c.request_id.as_deref(),
        );
        if plan.spec.transactional {
            self.run_transactional(workflow.clone(), inputs, run_id)
                .instrument(span)
                .await
        } else {
            self.run_concurrent(plan, inputs, run_id)
                .instrument(span)
                .await
        }
    }

    async fn run_concurrent(
        &self,
        plan: &Plan,
        inputs: Map<String, Value>,
        run_id: String,
    ) -> Result<Run, RunError> {
        let started = Instant::now();
        let deadline = plan.timeout.map(|t| tokio::time::Instant::now() + t);
        let rid = run_id.clone();
        let mut state = State::new(
            plan,
            self.db.context(),
            inputs,
            self.observer.as_ref().map(|o| (o, rid.as_str())),
        );
        state.preset(&self.completed);
        let mut waiting: Vec<usize> = plan.nodes.iter().map(|n| n.sources).collect();
        // Node futures are polled in this task (no task spawn per node): a
        // model node's database work already runs on the blocking pool, and
        // skipping the extra hop keeps a one-node run as fast as a direct call.
        let mut inflight: Vec<InFlight> = Vec::new();
        let mut ready: Vec<usize> = plan
            .order
            .iter()
            .copied()
            .filter(|i| waiting[*i] == 0)
            .collect();
        loop {
            while let Some(i) = ready.pop() {
                if state.status[i] == Status::Done {
                    // Completed before a resume: feeds its dependents as it is.
                    release(plan, &mut waiting, &mut ready, i);
                    continue;
                }
                match state.next(i) {
                    Next::Run(input) => {
                        state.status[i] = Status::Running;
                        let node = &plan.nodes[i];
                        // Borrows the plan and the run id: futures never outlive this call.
                        let fut: NodeFut<'_> = Box::pin(self.db.execute_ref(
                            node.kind,
                            &node.id,
                            input,
                            Some(rid.as_str()),
                        ));
                        inflight.push(InFlight {
                            node: i,
                            started: Instant::now(),
                            fut,
                        });
                    }
                    Next::Fail(e) => state.fail(i, e.with_node(&plan.nodes[i].id)),
                    Next::Skip => {
                        if state.status[i] == Status::Pending {
                            state.status[i] = Status::Skipped;
                        }
                        release(plan, &mut waiting, &mut ready, i);
                    }
                }
            }
            if inflight.is_empty() {
                break;
            }
            let next = std::future::poll_fn(|cx| poll_any(&mut inflight, cx));
            let (i, result, took) = match deadline {
                None => next.await,
                Some(d) => match tokio::time::timeout_at(d, next).await {
                    Ok(done) => done,
                    Err(_) => {
                        let ms = plan.timeout.unwrap_or_default().as_millis();
                        let running: Vec<&str> = inflight
                            .iter()
                            .map(|f| plan.nodes[f.node].id.as_str())
                            .collect();
                        let e = Error::new(ErrorCode::Timeout, format!("the workflow run exceeded its timeout of {ms} ms (still running: {})", running.join(", ")));
                        let e = match running.first() {
                            Some(n) => e.with_node(*n),
                            None => e,
                        };
                        state.report_failure(&e);
                        return Err(RunError::new(e, state.results()));
                    }
                },
            };
            let result = result.unwrap_or_else(|why| {
                Err(Error::new(ErrorCode::Internal, format!("panicked: {why}")))
            });
            state.finish(i, result, took);
            if state.status[i] == Status::Done {
                if let (Some(journal), Some(out)) = (&self.journal, &state.outputs[i]) {
                    let (statement, params) = journal(&rid, &plan.nodes[i].id, out);
                    if let Err(e) = self.db.raw_execute(&statement, params).await {
                        state.fail(i, e.with_node(&plan.nodes[i].id));
                        continue;
                    }
                }
                release(plan, &mut waiting, &mut ready, i);
            }
        }
        state.into_run(run_id, started)
    }

    async fn run_transactional(
        &self,
        workflow: Workflow,
        inputs: Map<String, Value>,
        run_id: String,
    ) -> Result<Run, RunError> {
        let observer = self.observer.clone();
        let journal = self.journal.clone();
        let completed = self.completed.clone();
        let started = Instant::now();
        // One transaction with this database's write access (on SQLite: one
        // job of the writer thread, so it never races the other writes).
        // The run's span, entered on the thread that runs the transaction.
        let span = tracing::Span::current();
        let run = self.db.exclusive(move |db, conn| {
            let _entered = span.enter();
            let plan = &*workflow.plan;
            let deadline = plan.timeout.map(|t| started + t);
            let rid = run_id.clone();
            let mut state = State::new(
                plan,
                db.context(),
                inputs,
                observer.as_ref().map(|o| (o, rid.as_str())),
            );
            state.preset(&completed);
            let journal = journal.as_ref();
            // Any failure rolls every model node back; `state` keeps what ran.
            let outcome = match conn {
                ConnMut::Sqlite(c) => c.write_transaction(|c| {
                    run_in_order(db, c, &mut state, &run_id, deadline, journal)
                }),
                ConnMut::Postgresql(c) => c.write_transaction(|c| {
                    run_in_order(db, c, &mut state, &run_id, deadline, journal)
                }),
            };
            // Committed (or rolled back): the query cache forgets what the
            // run's model nodes may have changed, before the run answers.
            let written: Vec<_> = plan
                .nodes
                .iter()
                .filter_map(|n| match n.kind {
                    NodeRef::Model(m, op) if op.writes() => Some(m),
                    _ => None,
                })
                .collect();
            db.invalidate_cache(Some(&written));
            Ok(match outcome {
                Ok(()) => state.into_run(run_id, started),
                Err(e) => {
                    let e = state.error.take().unwrap_or(e);
                    state.report_failure(&e);
                    Err(RunError::new(e, state.results()))
                }
            })
        });
        run.await?
    }
}

type NodeFut<'a> = Pin<Box<dyn Future<Output = Result<Value>> + Send + 'a>>;

struct InFlight<'a> {
    node: usize,
    started: Instant,
    fut: NodeFut<'a>,
}

/// Polls every in-flight node once; the first to finish is removed and
/// returned. A panic inside a node's future is caught as that node's result.
fn poll_any(
    inflight: &mut Vec<InFlight<'_>>,
    cx: &mut Context<'_>,
) -> Poll<(usize, std::result::Result<Result<Value>, String>, Duration)> {
    for k in 0..inflight.len() {
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            inflight[k].fut.as_mut().poll(cx)
        }));
        let outcome = match polled {
            Ok(Poll::Pending) => continue,
            Ok(Poll::Ready(r)) => Ok(r),
            Err(p) => Err(panic_message(&*p)),
        };
        let done = inflight.swap_remove(k);
        return Poll::Ready((done.node, outcome, done.started.elapsed()));
    }
    Poll::Pending
}

/// Marks node `i` settled for its dependents and queues those now ready.
fn release(plan: &Plan, waiting: &mut [usize], ready: &mut Vec<usize>, i: usize) {
    for &d in &plan.nodes[i].dependents {
        waiting[d] -= 1;
        if waiting[d] == 0 {
            ready.push(d);
        }
    }
}

/// The transactional body: nodes in topological order on one connection.
/// Returning an error rolls the transaction back.
fn run_in_order<C: Conn>(
    db: &DataFlow,
    conn: &mut C,
    state: &mut State,
    run_id: &str,
    deadline: Option<Instant>,
    journal: Option<&NodeJournal>,
) -> Result<()> {
    let plan = state.plan;
    for &i in &plan.order {
        if state.status[i] == Status::Done {
            // Completed before a resume.
            continue;
        }
        if let Some(d) = deadline {
            if Instant::now() > d {
                let ms = plan.timeout.unwrap_or_default().as_millis();
                let e = Error::new(
                    ErrorCode::Timeout,
                    format!(
                        "the workflow run exceeded its timeout of {ms} ms; nothing was committed"
                    ),
                )
                .with_node(&plan.nodes[i].id);
                state.error = Some(e.clone());
                return Err(e);
            }
        }
        match state.next(i) {
            Next::Run(input) => {
                let node = &plan.nodes[i];
                let t = Instant::now();
                let r =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match node.kind {
                        NodeRef::Model(m, op) => {
                            let span = db.node_span(m, op, Some((run_id, &node.id)));
                            let out = span.in_scope(|| {
                                db.run_model_on(
                                    conn,
                                    m,
                                    op,
                                    input,
                                    crate::nodes::Origin {
                                        run_id: Some(run_id),
                                        node_id: Some(&node.id),
                                    },
                                )
                            });
                            db.record_call(m, op, t.elapsed(), &out);
                            out
                        }
                        NodeRef::Custom(_) => {
                            db.execute_ref_blocking_custom(node.kind, &node.id, &input, run_id)
                        }
                    }))
                    .unwrap_or_else(|p| {
                        Err(Error::new(
                            ErrorCode::Internal,
                            format!("panicked: {}", panic_message(&*p)),
                        ))
                    });
                state.finish(i, r, t.elapsed());
                if let (Some(journal), Some(out)) = (journal, &state.outputs[i]) {
                    // In the run's transaction: committed with the node's writes.
                    let (statement, params) = journal(run_id, &node.id, out);
                    if let Err(e) = db
                        .raw_sql(&statement, params)
                        .and_then(|sql| conn.exec(&sql).map(drop))
                    {
                        state.fail(i, e.with_node(&node.id));
                    }
                }
            }
            Next::Fail(e) => state.fail(i, e.with_node(&plan.nodes[i].id)),
            Next::Skip => {
                if state.status[i] == Status::Pending {
                    state.status[i] = Status::Skipped;
                }
            }
        }
        if let Some(e) = &state.error {
            return Err(e.clone());
        }
    }
    Ok(())
}

/// Checks run inputs against the workflow's input schema.
pub(super) fn validate_inputs(plan: &Plan, inputs: Value) -> Result<Map<String, Value>> {
    let map = match inputs {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => {
            return Err(Error::new(
                ErrorCode::Validation,
                format!(
                    "workflow inputs must be an object, got {}",
                    crate::value::describe(&other)
                ),
            ))
        }
    };
    let schema = &plan.input_schema;
    let empty = Map::new();
    let props = schema["properties"].as_object().unwrap_or(&empty);
    for (k, v) in &map {
        let Some(s) = props.get(k) else {
            let hint = crate::value::did_you_mean(k, props.keys().map(String::as_str));
            return Err(Error::new(
                ErrorCode::Validation,
                format!(
                    "unknown workflow input `{}`{hint}; the inputs are: {}",
                    Error::echo(k),
                    props.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
            .with_field(k));
        };
        check(s, v).map_err(|e| {
            Error::new(ErrorCode::Validation, format!("workflow input `{k}`: {e}")).with_field(k)
        })?;
    }
    for req in required(schema) {
        if !map.contains_key(req) {
            return Err(Error::new(
                ErrorCode::Validation,
                format!("missing required workflow input `{req}`"),
            )
            .with_field(req));
        }
    }
    // Inputs of which one set is needed (a node's `id` or `filter`).
    let groups = schema
        .get("anyOf")
        .map(std::slice::from_ref)
        .into_iter()
        .flatten()
        .chain(
            schema
                .get("allOf")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|s| s.get("anyOf")),
        );
    for group in groups {
        let sets: Vec<Vec<&str>> = group
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| required(s).collect())
            .collect();
        if !sets
            .iter()
            .any(|set| set.iter().all(|k| map.contains_key(*k)))
        {
            let names: Vec<String> = sets
                .iter()
                .map(|s| {
                    s.iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                })
                .collect();
            return Err(Error::new(
                ErrorCode::Validation,
                format!("the workflow needs the input {}", names.join(" or ")),
            )
            .with_field_opt(sets.first().and_then(|s| s.first()).copied()));
        }
    }
    Ok(map)
}
