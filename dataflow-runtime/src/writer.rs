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
//! [`DataFlow`]: crate::DataFlow

use crate::backend::{AnyConnection, Conn, Pool};
use crate::error::{Error, ErrorCode, Result};
use diesel::SqliteConnection;
use serde_json::Value;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;

/// The most writes committed together.
pub(crate) const MAX_BATCH: usize = 256;

type Write = Box<dyn FnOnce(&mut SqliteConnection) -> Result<Value> + Send>;

struct Job {
    write: Write,
    reply: tokio::sync::oneshot::Sender<Result<Value>>,
}

/// The queue in front of the writer thread; the thread ends when this drops.
pub(crate) struct Writer {
    queue: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread; it takes a connection from `pool` per batch.
    pub(crate) fn start(pool: Pool) -> Result<Writer> {
        let (queue, jobs) = mpsc::channel();
        std::thread::Builder::new()
            .name("dataflow-sqlite-writer".into())
            .spawn(move || serve(&pool, &jobs))
            .map_err(|e| {
                Error::new(
                    ErrorCode::Internal,
                    format!("cannot start the SQLite writer thread: {e}"),
                )
            })?;
        Ok(Writer { queue })
    }

    /// Runs `write` in the writer's next batch; answers once it is committed.
    pub(crate) async fn write(
        &self,
        write: impl FnOnce(&mut SqliteConnection) -> Result<Value> + Send + 'static,
    ) -> Result<Value> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let stopped = || Error::new(ErrorCode::Internal, "the SQLite writer thread stopped");
        self.queue
            .send(Job {
                write: Box::new(write),
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn serve(pool: &Pool, jobs: &mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
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
        c.write_transaction(|c| {
            for write in writes {
                // Nested: a savepoint, rolled back alone when this write fails.
                results.push(c.write_transaction(|c| {
                    catch_unwind(AssertUnwindSafe(|| write(c))).unwrap_or_else(|_| {
                        Err(Error::new(ErrorCode::Internal, "a write panicked"))
                    })
                }));
            }
            Ok(())
        })
    });
    match outcome {
        Ok(()) => results,
        Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
    }
}
