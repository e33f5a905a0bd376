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
//! The same thread keeps the log from growing without end: a `PASSIVE`
//! checkpoint never shrinks the file, and while readers keep using the log
//! it cannot even start over, so a storm left a log many times the size of
//! the database, and after a disk-full the space freed went to checkpoints
//! while the log stayed. The log is truncated (`wal_checkpoint(TRUNCATE)`)
//! when no commit was seen for [`TRUNCATE_WHEN_IDLE_FOR`], soon after a
//! write failed for lack of space or a disk error, and when it outgrows
//! [`WAL_SIZE_LIMIT`] at the first lull (a checkpoint round without a
//! commit) — or at once past [`WAL_FORCE_FACTOR`] times the limit, when
//! writes never pause. A truncation blocks writers while it copies the log
//! (tens of milliseconds for a large one: forcing it at the limit under a
//! steady write load took the p99 of creates from 4 ms to 30–50 ms), at
//! most once per [`TRUNCATE_AT_MOST_EVERY`]. Connections also set `journal_size_limit`, so
//! a log that starts over is cut back to the limit.
//!
//! [`DataFlow`]: crate::DataFlow

use crate::backend::{sqlite_cannot_write, AnyConnection, Conn, Pool, Target};
use crate::error::{Error, ErrorCode, Result};
use crate::schema::Op;
use crate::sql::{Dialect, Sql};
use crate::value::Cell;
use diesel::SqliteConnection;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

/// The most writes committed together.
pub(crate) const MAX_BATCH: usize = 256;

/// How often the write-ahead log is checkpointed.
pub(crate) const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// The write-ahead log is truncated once no commit was seen for this long.
pub(crate) const TRUNCATE_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);

/// A log larger than this is truncated at the first lull in the writes (and
/// it is every connection's `journal_size_limit`).
pub(crate) const WAL_SIZE_LIMIT: u64 = 64 << 20;

/// A log this many times its limit is truncated even while writes go on
/// (1 GiB at the default limit): the bound when there is never a lull.
const WAL_FORCE_FACTOR: u64 = 16;

/// Truncations hold writes back while they wait for readers: at most one
/// attempt this often.
pub(crate) const TRUNCATE_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// How long a truncation waits for the writer and the readers (the
/// checkpoint connection's busy timeout) before it gives up until later.
const TRUNCATE_PATIENCE_MS: u32 = 100;

/// Less free space than this on the disk of the database file, and it
/// cannot count on taking writes: a commit appends to the log, a checkpoint
/// grows the file.
pub(crate) const MIN_FREE_BYTES: u64 = 1 << 20;

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
            Op::Read | Op::List | Op::Count | Op::Aggregate => None,
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
    /// The database file, for the free space check (none in memory).
    file: Option<PathBuf>,
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
    /// A write failed for lack of space or a disk error: the checkpoint
    /// thread truncates the log as soon as it can.
    truncate_wanted: AtomicBool,
    /// Writes per commit of the thread, when metrics are on.
    batches: std::sync::OnceLock<prometheus::Histogram>,
}

impl Writer {
    /// Starts the writer thread, which takes a connection from `pool` per
    /// batch, and for a database file the checkpoint thread, which opens its
    /// own connection to `target` when it first runs.
    pub(crate) fn start(pool: Pool, target: &Target, connect_timeout: Duration) -> Result<Writer> {
        Self::start_with_limit(pool, target, connect_timeout, WAL_SIZE_LIMIT)
    }

    /// [`start`](Self::start) with another bound on the log's size (tests).
    pub(crate) fn start_with_limit(
        pool: Pool,
        target: &Target,
        connect_timeout: Duration,
        wal_limit: u64,
    ) -> Result<Writer> {
        let (queue, jobs) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let (thread_pool, thread_shared) = (pool.clone(), shared.clone());
        spawn("dataflow-sqlite-writer", move || {
            serve(&thread_pool, &thread_shared, &jobs)
        })?;
        let file = target.sqlite_file();
        let checkpoints = match &file {
            Some(file) => {
                let (stop, stopped) = mpsc::channel::<()>();
                let mut checkpointer = Checkpointer {
                    target: target.clone(),
                    connect_timeout,
                    wal: PathBuf::from(format!("{}-wal", file.display())),
                    wal_limit,
                    shared: shared.clone(),
                    conn: None,
                    version: None,
                    quiet_since: Instant::now(),
                    next_truncate: Instant::now(),
                };
                spawn("dataflow-sqlite-checkpoint", move || {
                    // Runs until the `DataFlow` (holding `stop`) is dropped.
                    while let Err(mpsc::RecvTimeoutError::Timeout) =
                        stopped.recv_timeout(CHECKPOINT_EVERY)
                    {
                        checkpointer.round();
                    }
                })?;
                Some(stop)
            }
            None => None,
        };
        Ok(Writer {
            queue,
            pool,
            shared,
            file,
            _checkpoints: checkpoints,
        })
    }

    /// Records the size of every batch the thread commits in `histogram`.
    pub(crate) fn observe_batches(&self, histogram: prometheus::Histogram) {
        let _ = self.shared.batches.set(histogram);
    }

    /// Writes sent to the thread and not yet taken by it.
    pub(crate) fn queue_depth(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }

    /// Whether the database can take writes (for readiness), checked in
    /// turn with the writes, so never waiting on this process's own: the
    /// write lock can be taken, a write is accepted (a read-only file or
    /// connection refuses it; it is rolled back, nothing reaches the disk),
    /// the file is below its page limit, and the disk has space left.
    pub(crate) async fn check_writable(&self) -> Result<()> {
        self.write(WriteKind::Transaction, writable).await?;
        match &self.file {
            Some(file) => disk_has_room(file),
            None => Ok(()),
        }
    }

    /// Runs `write` as `kind` says (see [`WriteKind`]); answers once it is
    /// committed.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        kind: WriteKind,
        write: impl FnOnce(&mut SqliteConnection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let out = self.write_unwatched(kind, write).await;
        if let Err(e) = &out {
            if storage_failure(e) {
                self.shared.truncate_wanted.store(true, Ordering::Release);
            }
        }
        out
    }

    async fn write_unwatched<T: Send + 'static>(
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
                if let AnyConnection::Sqlite(c) = &mut **conn {
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
        if let Some(h) = shared.batches.get() {
            h.observe(batch.len() as f64);
        }
        commit(pool, batch);
    }
}

/// Runs `jobs` in one transaction, one savepoint each, and answers each:
/// its result, or the error that kept the transaction from committing.
fn commit(pool: &Pool, mut jobs: Vec<Box<dyn Job>>) {
    let outcome = pool.get().map_err(Error::from).and_then(|mut conn| {
        let AnyConnection::Sqlite(c) = &mut **conn else {
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

/// Whether a write failed because the database cannot take writes (full
/// disk or file, read-only, disk error), rather than because of its input.
fn storage_failure(e: &Error) -> bool {
    e.code() == ErrorCode::Connection && sqlite_cannot_write(&e.message())
}

/// The write side of the readiness check, on the writer's connection.
fn writable(c: &mut SqliteConnection) -> Result<()> {
    let not_writable = |e: Error| {
        Error::new(
            ErrorCode::Connection,
            format!("the database cannot take writes: {}", e.detail()),
        )
    };
    c.write_transaction(|c| {
        let cells = c.query(&one(
            Dialect::Sqlite,
            "SELECT user_version, page_count, max_page_count, freelist_count \
             FROM pragma_user_version(), pragma_page_count(), pragma_max_page_count(), \
             pragma_freelist_count()",
        ))?;
        let n = |i: usize| match cells.first().and_then(|row| row.get(i)) {
            Some(Cell::I64(n)) => *n,
            _ => 0,
        };
        // Rewrites the header with the value it has: refused on a read-only
        // database; rolled back below, so nothing reaches the log.
        c.batch(&format!("PRAGMA user_version = {}", n(0)))?;
        if n(1) >= n(2) && n(3) == 0 {
            return Err(Error::new(
                ErrorCode::Connection,
                format!(
                    "database or disk is full: the file is at its page limit \
                     (max_page_count = {})",
                    n(2)
                ),
            ));
        }
        Err(Error::new(ErrorCode::Internal, ROLLED_BACK))
    })
    .or_else(|e| match e.detail() == ROLLED_BACK {
        true => Ok(()),
        false => Err(not_writable(e)),
    })
}

/// Ends the readiness probe's transaction: it must change nothing.
const ROLLED_BACK: &str = "the readiness probe rolls back";

/// A statement without parameters.
fn one(dialect: Dialect, text: &str) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push(text);
    sql
}

/// Whether the disk holding `file` has [`MIN_FREE_BYTES`] left (for this
/// process: a root process may use the blocks reserved for root).
fn disk_has_room(file: &Path) -> Result<()> {
    let Ok(fs) = rustix::fs::statvfs(file) else {
        // No answer (the file is gone, say): the write probe has spoken.
        return Ok(());
    };
    let blocks = match rustix::process::geteuid().is_root() {
        true => fs.f_bfree,
        false => fs.f_bavail,
    };
    let free = blocks.saturating_mul(fs.f_frsize);
    match free >= MIN_FREE_BYTES {
        true => Ok(()),
        false => Err(Error::new(
            ErrorCode::Connection,
            format!(
                "the database cannot take writes: database or disk is full ({free} bytes free on the disk of {})",
                file.display()
            ),
        )),
    }
}

/// What the checkpoint thread keeps between rounds.
struct Checkpointer {
    target: Target,
    connect_timeout: Duration,
    /// The log file.
    wal: PathBuf,
    wal_limit: u64,
    shared: Arc<Shared>,
    /// Its own connection, opened at the first round.
    conn: Option<SqliteConnection>,
    /// `PRAGMA data_version` at the last round: it changes with every
    /// commit of another connection.
    version: Option<i64>,
    /// Since when no commit was seen.
    quiet_since: Instant,
    /// No truncation attempt before this.
    next_truncate: Instant,
}

impl Checkpointer {
    fn round(&mut self) {
        if self.conn.is_none() {
            self.conn = match self.target.connect(self.connect_timeout) {
                Ok(AnyConnection::Sqlite(mut c)) => c
                    .batch(&format!("PRAGMA busy_timeout = {TRUNCATE_PATIENCE_MS}"))
                    .ok()
                    .map(|()| c),
                _ => None,
            };
        }
        let Some(c) = &mut self.conn else { return };
        // Busy (another checkpoint, a reader on old pages) is fine: the next
        // round continues where this one stopped.
        let _ = c.batch("PRAGMA wal_checkpoint(PASSIVE)");
        let version = match c.query(&one(Dialect::Sqlite, "PRAGMA data_version")) {
            Ok(rows) => match rows.first().and_then(|r| r.first()) {
                Some(Cell::I64(v)) => Some(*v),
                _ => None,
            },
            Err(_) => None,
        };
        let now = Instant::now();
        if version != self.version {
            self.version = version;
            self.quiet_since = now;
        }
        let size = std::fs::metadata(&self.wal).map_or(0, |m| m.len());
        if size == 0 || now < self.next_truncate {
            return;
        }
        let after_error = self.shared.truncate_wanted.load(Ordering::Acquire);
        let idle = now.duration_since(self.quiet_since) >= TRUNCATE_WHEN_IDLE_FOR;
        // A truncation blocks writers while it copies the whole log, so a
        // log past its limit waits for a lull (no commit since the last
        // round), unless it grew far past it: then it goes at once. (After
        // each reset `journal_size_limit` keeps the file at the limit.)
        let lull = self.quiet_since < now;
        let over =
            size > self.wal_limit && lull || size > self.wal_limit.saturating_mul(WAL_FORCE_FACTOR);
        if after_error || idle || over {
            self.next_truncate = now + TRUNCATE_AT_MOST_EVERY;
            let done = c
                .query(&one(Dialect::Sqlite, "PRAGMA wal_checkpoint(TRUNCATE)"))
                .is_ok_and(|rows| {
                    matches!(rows.first().and_then(|r| r.first()), Some(Cell::I64(0)))
                });
            if done {
                self.shared.truncate_wanted.store(false, Ordering::Release);
            }
        }
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
            .build(Manager::new(target.clone(), Duration::from_secs(5)))
            .unwrap();
        (pool, target)
    }

    fn on_sqlite<T>(pool: &Pool, f: impl FnOnce(&mut SqliteConnection) -> T) -> T {
        match &mut **pool.get().unwrap() {
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

    fn wal_size(target: &Target) -> u64 {
        let file = target.sqlite_file().unwrap();
        std::fs::metadata(format!("{}-wal", file.display())).map_or(0, |m| m.len())
    }

    /// Once no commit was seen for a while, the log is truncated to nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_log_is_truncated() {
        let (pool, target) = pool("idle");
        on_sqlite(&pool, |c| c.batch("CREATE TABLE t (x INTEGER NOT NULL)")).unwrap();
        let writer = Writer::start(pool.clone(), &target, Duration::from_secs(5)).unwrap();
        for x in 0..50 {
            writer.write(WriteKind::Bulk, insert(x)).await.unwrap();
        }
        assert!(wal_size(&target) > 0, "the writes went to the log");
        let started = std::time::Instant::now();
        while wal_size(&target) > 0 {
            assert!(
                started.elapsed() < TRUNCATE_WHEN_IDLE_FOR + Duration::from_secs(3),
                "the idle log still has {} bytes",
                wal_size(&target)
            );
            tokio::time::sleep(CHECKPOINT_EVERY).await;
        }
    }

    /// Readers that always overlap keep the log from starting over, so
    /// without truncation it grows with everything written; past its limit
    /// it is truncated while the writes go on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_past_its_limit_is_truncated_under_load() {
        let (pool, target) = pool("limit");
        on_sqlite(&pool, |c| c.batch("CREATE TABLE big (body TEXT NOT NULL)")).unwrap();
        let limit = 256 << 10;
        let writer =
            Writer::start_with_limit(pool.clone(), &target, Duration::from_secs(5), limit).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2u64)
            .map(|i| {
                let (target, stop) = (target.clone(), stop.clone());
                std::thread::spawn(move || {
                    let Ok(AnyConnection::Sqlite(mut c)) = target.connect(Duration::from_secs(5))
                    else {
                        panic!("a reader cannot connect")
                    };
                    let mut count = crate::sql::Sql::new(Dialect::Sqlite);
                    count.push("SELECT count(*) FROM big");
                    std::thread::sleep(Duration::from_millis(15 * i));
                    while !stop.load(Ordering::Acquire) {
                        c.batch("BEGIN").unwrap();
                        c.query(&count).unwrap();
                        std::thread::sleep(Duration::from_millis(30));
                        c.batch("COMMIT").unwrap();
                    }
                })
            })
            .collect();
        let (mut written, mut largest, mut last, mut shrank) = (0u64, 0u64, 0u64, 0);
        let started = std::time::Instant::now();
        // Truncations are at most one a second: long enough for several.
        while started.elapsed() < Duration::from_secs(4) {
            writer
                .write(WriteKind::Transaction, |c| {
                    c.write_transaction(|c| {
                        for _ in 0..20 {
                            c.batch(&format!(
                                "INSERT INTO big (body) VALUES ('{}')",
                                "x".repeat(1000)
                            ))?;
                        }
                        Ok(())
                    })
                })
                .await
                .unwrap();
            written += 20 * 1000;
            let size = wal_size(&target);
            // Only a truncation makes the file smaller at these sizes.
            if size < last {
                shrank += 1;
            }
            (largest, last) = (largest.max(size), size);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.store(true, Ordering::Release);
        for r in readers {
            r.join().unwrap();
        }
        eprintln!(
            "the log reached {largest} bytes for {written} bytes written, shrank {shrank} times"
        );
        // Without truncation: no shrinking, and a log larger than the data.
        assert!(
            shrank > 0,
            "the log was never truncated (it reached {largest} bytes)"
        );
        assert!(
            largest < written,
            "the log reached {largest} bytes for {written} bytes written (limit {limit})"
        );
    }
}
