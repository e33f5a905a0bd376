//! SQLite's single writer, as one thread with a queue (group commit), and
//! the rest of the SQLite concurrency policy: which node operations write,
//! which writes are short, and which reads may run on the calling task.
//!
//! SQLite lets one connection write at a time. Connections that wait for
//! the lock in SQLite's busy handler sleep with back-off, which puts tens to
//! hundreds of milliseconds on the tail latency of concurrent writes; a
//! mutex in front of the statement is better but not fair, so a write can
//! still wait behind many later ones. Here every write of a [`DataFlow`]
//! goes into one first-in-first-out queue, served by one thread: it takes
//! everything queued (up to [`MAX_BATCH`]), runs each write in its own
//! savepoint inside one `BEGIN IMMEDIATE` transaction, commits once, and only
//! then answers each caller. A failing write rolls back its own savepoint
//! and nothing else; a failing commit fails every write of the batch (none
//! of them happened).
//!
//! Every SQLite write of a [`DataFlow`] comes through here, as one of three
//! [`WriteKind`]s: node writes (single-row and bulk), transactional
//! workflow runs and migrations (whole transactions, run alone on the
//! thread in order with the rest). So no write of this process ever waits
//! in SQLite's sleeping busy handler behind another write of this process.
//!
//! When no other write is in progress, a single-row write runs at once on
//! the calling task instead (it takes tens of microseconds; the
//! hand-off to the thread and back would cost more than the write). "No
//! other write" includes transactions: they hold the same turn, so the
//! inline write never sleeps on a tokio worker. Bulk writes and
//! transactions always go to the thread, so they never hold up an async
//! worker.
//!
//! Checkpoints (copying the write-ahead log into the database file, with an
//! fsync) run on a thread of their own every [`CHECKPOINT_EVERY`] in
//! `PASSIVE` mode, which never blocks readers or writers; connections are
//! opened with `wal_autocheckpoint = 0`. With SQLite's automatic checkpoints
//! the commit that crosses the threshold does that work while every write
//! queued behind it waits: that was most of the writes' p99 under load.
//!
//! [`DataFlow`]: crate::DataFlow

use crate::backend::{AnyConnection, Conn, Pool, Target};
use crate::error::{Error, ErrorCode, Result};
use crate::schema::Op;
use diesel::SqliteConnection;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, TryLockError};

/// The most writes committed together.
pub(crate) const MAX_BATCH: usize = 256;

/// How often the write-ahead log is checkpointed.
pub(crate) const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// How a write goes through the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteKind {
    /// A single-row node write: runs at once when the writer is idle,
    /// otherwise joins the next batch.
    SingleRow,
    /// A node write of any number of rows: joins the next batch.
    Bulk,
    /// A whole transaction (a transactional workflow run, a migration):
    /// runs alone on the thread, with no outer transaction, in queue order.
    Transaction,
}

impl WriteKind {
    /// How a node operation writes, or `None` when it only reads.
    pub(crate) fn of(op: Op) -> Option<WriteKind> {
        match op {
            Op::Read | Op::List | Op::Count => None,
            Op::Create | Op::Update | Op::Upsert => Some(WriteKind::SingleRow),
            Op::Delete | Op::BulkCreate | Op::BulkUpdate | Op::BulkDelete | Op::BulkUpsert => {
                Some(WriteKind::Bulk)
            }
        }
    }
}

/// Whether a read may run on the calling task when a pooled connection is
/// free right now: a read by id takes microseconds, less than the two
/// thread hand-offs of a blocking task. Lists and counts can run long.
pub(crate) fn reads_inline(op: Op) -> bool {
    op == Op::Read
}

/// One queued write, type-erased: run it, then answer once the outcome of
/// its transaction is known.
trait Job: Send {
    fn kind(&self) -> WriteKind;
    /// Runs the write; `Err` (a copy of the write's error) rolls its savepoint back.
    fn run(&mut self, c: &mut SqliteConnection) -> Result<()>;
    /// Sends the write's result, or `failed` when its transaction did not commit.
    fn answer(self: Box<Self>, failed: Option<Error>);
}

struct Typed<T, F> {
    kind: WriteKind,
    write: Option<F>,
    result: Option<Result<T>>,
    reply: tokio::sync::oneshot::Sender<Result<T>>,
}

impl<T, F> Job for Typed<T, F>
where
    T: Send + 'static,
    F: FnOnce(&mut SqliteConnection) -> Result<T> + Send + 'static,
{
    fn kind(&self) -> WriteKind {
        self.kind
    }

    fn run(&mut self, c: &mut SqliteConnection) -> Result<()> {
        let result = match self.write.take() {
            Some(write) => guarded(write, c),
            None => Err(Error::internal("a write ran twice")),
        };
        let outcome = result.as_ref().map(drop).map_err(Clone::clone);
        self.result = Some(result);
        outcome
    }

    fn answer(self: Box<Self>, failed: Option<Error>) {
        let result = match (failed, self.result) {
            (Some(e), _) => Err(e),
            (None, Some(r)) => r,
            (None, None) => Err(Error::internal("a write was never run")),
        };
        // A caller that stopped waiting (a cancelled request) is fine.
        let _ = self.reply.send(result);
    }
}

/// The queue in front of the writer thread; the thread ends when this drops.
pub(crate) struct Writer {
    queue: mpsc::Sender<Box<dyn Job>>,
    pool: Pool,
    shared: Arc<Shared>,
    /// Dropping it stops the checkpoint thread.
    _checkpoints: Option<mpsc::Sender<()>>,
}

/// What the callers and the thread share.
#[derive(Default)]
struct Shared {
    /// Writes sent and not yet taken by the thread.
    queued: AtomicUsize,
    /// Writes in progress: called and not yet answered (or given up).
    active: AtomicUsize,
    /// Held while a batch or a write run at once is running.
    turn: Mutex<()>,
}

impl Writer {
    /// Starts the writer thread, which takes a connection from `pool` per
    /// batch, and for a database file the checkpoint thread, which opens its
    /// own connection to `target` when it first runs.
    pub(crate) fn start(
        pool: Pool,
        target: &Target,
        connect_timeout: std::time::Duration,
    ) -> Result<Writer> {
        let (queue, jobs) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let (thread_pool, thread_shared) = (pool.clone(), shared.clone());
        spawn("dataflow-sqlite-writer", move || {
            serve(&thread_pool, &thread_shared, &jobs)
        })?;
        let checkpoints = match target {
            Target::Sqlite { memory: false, .. } => {
                let (target, (stop, stopped)) = (target.clone(), mpsc::channel::<()>());
                spawn("dataflow-sqlite-checkpoint", move || {
                    let mut conn = None;
                    // Runs until the `DataFlow` (holding `stop`) is dropped.
                    while let Err(mpsc::RecvTimeoutError::Timeout) =
                        stopped.recv_timeout(CHECKPOINT_EVERY)
                    {
                        if conn.is_none() {
                            conn = target.connect(connect_timeout).ok();
                        }
                        if let Some(AnyConnection::Sqlite(c)) = &mut conn {
                            // Busy (another checkpoint, a reader on old pages) is
                            // fine: the next round continues where this one stopped.
                            let _ = c.batch("PRAGMA wal_checkpoint(PASSIVE)");
                        }
                    }
                })?;
                Some(stop)
            }
            _ => None,
        };
        Ok(Writer {
            queue,
            pool,
            shared,
            _checkpoints: checkpoints,
        })
    }

    /// Runs `write` as `kind` says (see [`WriteKind`]); answers once it is
    /// committed.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        kind: WriteKind,
        write: impl FnOnce(&mut SqliteConnection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if ON_WRITER_THREAD.get() {
            // A write from inside a running job (a hand-written node of a
            // transactional run) would queue behind the job it is part of.
            return Err(Error::new(
                ErrorCode::NotAllowed,
                "this write was made inside a transaction that holds SQLite's single writer \
                 (a hand-written node of a transactional workflow run), and would wait for \
                 itself; write through model nodes of the run instead",
            ));
        }
        let alone = self.shared.active.fetch_add(1, Ordering::AcqRel) == 0;
        let _active = Active(&self.shared.active);
        // Under concurrent writes everything queues, so batches form.
        if kind == WriteKind::SingleRow && alone && self.shared.queued.load(Ordering::Acquire) == 0
        {
            let turn = match self.shared.turn.try_lock() {
                Ok(guard) => Some(guard),
                Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            };
            if let (Some(_turn), Some(mut conn)) = (turn, self.pool.try_get()) {
                if let AnyConnection::Sqlite(c) = &mut *conn {
                    return guarded(write, c);
                }
            }
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let stopped = || Error::new(ErrorCode::Internal, "the SQLite writer thread stopped");
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        let job = Typed {
            kind,
            write: Some(write),
            result: None,
            reply,
        };
        self.queue.send(Box::new(job)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(drop)
        .map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("cannot start the thread {name}: {e}"),
            )
        })
}

/// Counts a write in progress until dropped.
struct Active<'a>(&'a AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

thread_local! {
    /// Set on the writer thread, where a write must not queue again.
    static ON_WRITER_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn serve(pool: &Pool, shared: &Shared, jobs: &mpsc::Receiver<Box<dyn Job>>) {
    ON_WRITER_THREAD.set(true);
    // A transaction taken while a batch was forming waits here for its turn.
    let mut next: Option<Box<dyn Job>> = None;
    while let Some(first) = next.take().or_else(|| jobs.recv().ok()) {
        let _turn = shared.turn.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = vec![first];
        // A transaction runs alone; node writes gather until a transaction.
        while batch[0].kind() != WriteKind::Transaction && batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) if job.kind() == WriteKind::Transaction => {
                    next = Some(job);
                    break;
                }
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // A transaction held back in `next` stays counted until it runs.
        shared.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        commit(pool, batch);
    }
}

/// Runs `jobs` in one transaction, one savepoint each, and answers each:
/// its result, or the error that kept the transaction from committing.
fn commit(pool: &Pool, mut jobs: Vec<Box<dyn Job>>) {
    let outcome = pool.get().map_err(Error::from).and_then(|mut conn| {
        let AnyConnection::Sqlite(c) = &mut *conn else {
            return Err(Error::new(
                ErrorCode::Internal,
                "the SQLite writer got a non-SQLite connection",
            ));
        };
        if let [job] = &mut jobs[..] {
            // Alone: as it would run without the queue (its own statement or
            // transaction), with no savepoint and no outer transaction.
            let _ = job.run(c);
            return Ok(());
        }
        c.write_transaction(|c| {
            for job in &mut jobs {
                // Nested: a savepoint, rolled back alone when this write fails.
                let _ = c.write_transaction(|c| job.run(c));
            }
            Ok(())
        })
    });
    let failed = outcome.err();
    for job in jobs {
        job.answer(failed.clone());
    }
}

/// Runs `write`, turning a panic into an error.
fn guarded<T>(
    write: impl FnOnce(&mut SqliteConnection) -> Result<T>,
    c: &mut SqliteConnection,
) -> Result<T> {
    catch_unwind(AssertUnwindSafe(|| write(c)))
        .unwrap_or_else(|_| Err(Error::new(ErrorCode::Internal, "a write panicked")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Manager;
    use crate::value::Cell;
    use serde_json::Value;
    use std::time::Duration;

    fn pool(name: &str) -> (Pool, Target) {
        let path =
            std::env::temp_dir().join(format!("dataflow-writer-{name}-{}.db", std::process::id()));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let target = Target::parse(&format!("sqlite://{}", path.display())).unwrap();
        let pool = r2d2::Pool::builder()
            .max_size(4)
            .build(Manager {
                target: target.clone(),
                connect_timeout: Duration::from_secs(5),
            })
            .unwrap();
        (pool, target)
    }

    fn on_sqlite<T>(pool: &Pool, f: impl FnOnce(&mut SqliteConnection) -> T) -> T {
        match &mut *pool.get().unwrap() {
            AnyConnection::Sqlite(c) => f(c),
            AnyConnection::Postgresql(_) => unreachable!("a SQLite pool"),
        }
    }

    fn insert(x: i64) -> impl FnOnce(&mut SqliteConnection) -> Result<Value> + Send + 'static {
        move |c| {
            c.batch(&format!("INSERT INTO t (x) VALUES ({x})"))?;
            Ok(Value::from(x))
        }
    }

    /// Writes queued behind a slow one are committed as one batch: the ones
    /// that fail roll back alone, the rest are committed before they answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_commits_together_and_its_failures_roll_back_alone() {
        let (pool, target) = pool("batch");
        on_sqlite(&pool, |c| {
            c.batch("CREATE TABLE t (x INTEGER NOT NULL UNIQUE)")
        })
        .unwrap();
        let writer =
            Arc::new(Writer::start(pool.clone(), &target, Duration::from_secs(5)).unwrap());
        // Holds the thread until the next writes are queued up behind it.
        let (release, held) = mpsc::channel::<()>();
        let (started, running) = mpsc::channel::<()>();
        let slow = tokio::spawn({
            let w = writer.clone();
            async move {
                w.write(WriteKind::Bulk, move |c| {
                    started.send(()).unwrap();
                    held.recv().unwrap();
                    insert(0)(c)
                })
                .await
            }
        });
        tokio::task::spawn_blocking(move || running.recv().unwrap())
            .await
            .unwrap();
        let mut queued = Vec::new();
        for x in 1..=20 {
            let w = writer.clone();
            // Every fifth write repeats 1: of the five writes of 1, whichever
            // runs first succeeds and the other four fail on the unique index.
            let value = if x % 5 == 0 { 1 } else { x };
            queued.push(tokio::spawn(async move {
                w.write(WriteKind::Bulk, insert(value)).await
            }));
        }
        // The slow write was taken (its own batch); all 20 are waiting.
        while writer.shared.queued.load(Ordering::Acquire) < 20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        release.send(()).unwrap();
        assert_eq!(slow.await.unwrap().unwrap(), 0);
        let mut failed = 0;
        for (i, q) in queued.into_iter().enumerate() {
            let x = i as i64 + 1;
            let value = if x % 5 == 0 { 1 } else { x };
            match q.await.unwrap() {
                Ok(v) => assert_eq!(v, Value::from(value)),
                Err(e) => {
                    assert_eq!(e.code(), ErrorCode::UniqueViolation, "{e}");
                    assert!(value == 1, "write {x} failed: {e}");
                    failed += 1;
                }
            }
        }
        assert_eq!(failed, 4);
        let mut sql = crate::sql::Sql::new(crate::sql::Dialect::Sqlite);
        sql.push("SELECT count(*), sum(x) FROM t");
        let rows = on_sqlite(&pool, |c| c.query(&sql)).unwrap();
        let sum: i64 = (1..=20).filter(|x| x % 5 != 0).sum();
        assert_eq!(
            rows,
            vec![vec![Cell::I64(17), Cell::I64(sum)]],
            "0, and the 16 values of 1..=20 that are no multiple of 5"
        );
    }

    /// With automatic checkpoints off, the checkpoint thread is what moves
    /// committed pages from the log into the database file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_checkpoint_thread_moves_the_log_into_the_database_file() {
        let (pool, target) = pool("checkpoint");
        let Target::Sqlite { path, .. } = &target else {
            unreachable!()
        };
        on_sqlite(&pool, |c| c.batch("CREATE TABLE big (body TEXT NOT NULL)")).unwrap();
        let size = || std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let before = size();
        let writer = Writer::start(pool.clone(), &target, Duration::from_secs(5)).unwrap();
        writer
            .write(WriteKind::Bulk, |c| {
                for _ in 0..500 {
                    c.batch(&format!(
                        "INSERT INTO big (body) VALUES ('{}')",
                        "x".repeat(1000)
                    ))?;
                }
                Ok(Value::Null)
            })
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while size() < before + 400_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "the database file stayed at {} bytes (from {before})",
                size()
            );
            tokio::time::sleep(CHECKPOINT_EVERY).await;
        }
    }
}
