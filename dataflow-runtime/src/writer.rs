//! SQLite's single writer, as one thread with a queue (group commit).
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
//! When no other write is in progress, a single-row write runs at once on
//! the calling task instead (it takes tens of microseconds; the
//! hand-off to the thread and back would cost more than the write). Bulk
//! writes always go to the thread, so they never hold up an async worker.
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
use diesel::SqliteConnection;
use serde_json::Value;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, TryLockError};

/// The most writes committed together.
pub(crate) const MAX_BATCH: usize = 256;

/// How often the write-ahead log is checkpointed.
pub(crate) const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

type Write = Box<dyn FnOnce(&mut SqliteConnection) -> Result<Value> + Send>;

struct Job {
    write: Write,
    reply: tokio::sync::oneshot::Sender<Result<Value>>,
}

/// The queue in front of the writer thread; the thread ends when this drops.
pub(crate) struct Writer {
    queue: mpsc::Sender<Job>,
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

    /// Runs `write` in the writer's next batch, or at once when it is
    /// `short` (a single-row write) and the writer is idle; answers once it
    /// is committed.
    pub(crate) async fn write(
        &self,
        short: bool,
        write: impl FnOnce(&mut SqliteConnection) -> Result<Value> + Send + 'static,
    ) -> Result<Value> {
        let alone = self.shared.active.fetch_add(1, Ordering::AcqRel) == 0;
        let _active = Active(&self.shared.active);
        // Under concurrent writes everything queues, so batches form.
        if short && alone && self.shared.queued.load(Ordering::Acquire) == 0 {
            let turn = match self.shared.turn.try_lock() {
                Ok(guard) => Some(guard),
                Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            };
            if let (Some(_turn), Some(mut conn)) = (turn, self.pool.try_get()) {
                if let AnyConnection::Sqlite(c) = &mut *conn {
                    return guarded(Box::new(write), c);
                }
            }
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let stopped = || Error::new(ErrorCode::Internal, "the SQLite writer thread stopped");
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        self.queue
            .send(Job {
                write: Box::new(write),
                reply,
            })
            .map_err(|_| stopped())?;
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

fn serve(pool: &Pool, shared: &Shared, jobs: &mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let _turn = shared.turn.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        shared.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        let (writes, replies): (Vec<Write>, Vec<_>) =
            batch.into_iter().map(|j| (j.write, j.reply)).unzip();
        let results = commit(pool, writes);
        for (reply, result) in replies.into_iter().zip(results) {
            // A caller that stopped waiting (a cancelled request) is fine.
            let _ = reply.send(result);
        }
    }
}

/// Runs `writes` in one transaction, one savepoint each: their results, or
/// for all of them the error that kept the transaction from committing.
fn commit(pool: &Pool, writes: Vec<Write>) -> Vec<Result<Value>> {
    let n = writes.len();
    let mut results = Vec::with_capacity(n);
    let outcome = pool.get().map_err(Error::from).and_then(|mut conn| {
        let AnyConnection::Sqlite(c) = &mut *conn else {
            return Err(Error::new(
                ErrorCode::Internal,
                "the SQLite writer got a non-SQLite connection",
            ));
        };
        if n == 1 {
            // Alone: as it would run without the queue (its own statement or
            // transaction), with no savepoint and no outer transaction.
            results.extend(writes.into_iter().map(|w| guarded(w, c)));
            return Ok(());
        }
        c.write_transaction(|c| {
            for write in writes {
                // Nested: a savepoint, rolled back alone when this write fails.
                results.push(c.write_transaction(|c| guarded(write, c)));
            }
            Ok(())
        })
    });
    match outcome {
        Ok(()) => results,
        Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
    }
}

/// Runs `write`, turning a panic into an error.
fn guarded(write: Write, c: &mut SqliteConnection) -> Result<Value> {
    catch_unwind(AssertUnwindSafe(|| write(c)))
        .unwrap_or_else(|_| Err(Error::new(ErrorCode::Internal, "a write panicked")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Manager;
    use crate::value::Cell;
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
                w.write(false, move |c| {
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
            queued.push(tokio::spawn(
                async move { w.write(false, insert(value)).await },
            ));
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
                    assert_eq!(e.kind(), ErrorCode::UniqueViolation, "{e}");
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
            .write(false, |c| {
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
