//! Async runs (`"mode": "async"`): how many run at once, and the outcomes
//! kept for `GET /runs/{id}`, bounded by count, bytes and age. In memory
//! (until durability moves them into the database; the bounds stay).
//!
//! An outcome is kept as its JSON text, so its size is what it costs. When a
//! bound is exceeded the oldest outcomes are forgotten first, and a forgotten
//! run answers `not_found` like one that never existed. An outcome larger
//! than the whole byte bound keeps its status without the result. Running
//! runs are never forgotten; they are bounded by the concurrency limit.

use axum::body::Bytes;
use dataflow::{Error, ErrorCode, Result};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The bounds of the async runs (the builder's `max_async_runs`,
/// `async_store_max_runs`, `async_store_max_bytes`, `async_store_ttl`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RunLimits {
    pub(crate) max_running: usize,
    pub(crate) max_kept: usize,
    pub(crate) max_bytes: usize,
    pub(crate) ttl: Duration,
}

/// The async runs of one application.
pub(crate) struct Runs {
    limits: RunLimits,
    running: Arc<Semaphore>,
    store: Mutex<Store>,
}

#[derive(Default)]
struct Store {
    /// Every run's latest status as JSON text, running or finished.
    by_id: HashMap<String, Bytes>,
    /// Finished runs, oldest first, with when they finished.
    finished: VecDeque<(String, Instant)>,
    /// The bytes of the finished runs' statuses.
    bytes: usize,
}

impl Runs {
    pub(crate) fn new(limits: RunLimits) -> Runs {
        Runs {
            limits,
            running: Arc::new(Semaphore::new(limits.max_running)),
            store: Mutex::default(),
        }
    }

    /// Records `run_id` as running and returns its slot (held until it
    /// finishes), or `overloaded` when `max_running` runs are in progress.
    pub(crate) fn start(&self, run_id: &str, workflow: &str) -> Result<OwnedSemaphorePermit> {
        let slot = self.running.clone().try_acquire_owned().map_err(|_| {
            Error::new(
                ErrorCode::Overloaded,
                format!(
                    "{} async runs are in progress, the most this server runs at once \
                     (max_async_runs); retry in a moment",
                    self.limits.max_running
                ),
            )
        })?;
        let status = json!({"run_id": run_id, "workflow": workflow, "status": "running"});
        self.lock()
            .by_id
            .insert(run_id.to_string(), Bytes::from(status.to_string()));
        Ok(slot)
    }

    /// Keeps a finished run's `status` (with its `result` or `error`),
    /// forgetting the oldest outcomes beyond the bounds.
    pub(crate) fn finish(&self, run_id: &str, mut status: Value) {
        let mut text = status.to_string();
        if text.len() > self.limits.max_bytes {
            let omitted = Error::new(
                ErrorCode::TooLarge,
                format!(
                    "the result is {} bytes, more than the {} bytes async outcomes are kept in \
                     (async_store_max_bytes); run the workflow synchronously to receive it",
                    text.len(),
                    self.limits.max_bytes
                ),
            );
            if let Some(m) = status.as_object_mut() {
                m.remove("result");
                m.insert("result_omitted".into(), omitted.to_json());
            }
            text = status.to_string();
        }
        drop(status);
        // Exactly its length: a serialized string's spare capacity would
        // cost up to as much again, uncounted.
        let text = Bytes::from(text.into_bytes().into_boxed_slice());
        let now = Instant::now();
        let mut store = self.lock();
        store.bytes += text.len();
        store.by_id.insert(run_id.to_string(), text);
        store.finished.push_back((run_id.to_string(), now));
        self.evict(&mut store, now);
    }

    /// A run's latest status as JSON text; `None` if unknown or forgotten.
    pub(crate) fn get(&self, run_id: &str) -> Option<Bytes> {
        let mut store = self.lock();
        self.evict(&mut store, Instant::now());
        store.by_id.get(run_id).cloned()
    }

    fn evict(&self, store: &mut Store, now: Instant) {
        let limits = &self.limits;
        while let Some((id, finished)) = store.finished.front() {
            let over = store.finished.len() > limits.max_kept
                || store.bytes > limits.max_bytes
                || now.duration_since(*finished) > limits.ttl;
            if !over {
                break;
            }
            if let Some(text) = store.by_id.remove(id) {
                store.bytes -= text.len();
            }
            store.finished.pop_front();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(max_running: usize, max_kept: usize, max_bytes: usize, ttl_ms: u64) -> Runs {
        Runs::new(RunLimits {
            max_running,
            max_kept,
            max_bytes,
            ttl: Duration::from_millis(ttl_ms),
        })
    }

    fn finished(id: &str, size: usize) -> Value {
        json!({"run_id": id, "status": "finished", "result": "x".repeat(size)})
    }

    #[test]
    fn the_oldest_outcomes_go_first_by_count_and_bytes() {
        let r = runs(8, 3, 10_000, 60_000);
        for id in ["a", "b", "c", "d"] {
            drop(r.start(id, "w").unwrap());
            r.finish(id, finished(id, 10));
        }
        assert!(r.get("a").is_none(), "count bound");
        assert!(r.get("b").is_some() && r.get("d").is_some());
        for id in ["e", "f"] {
            drop(r.start(id, "w").unwrap());
            r.finish(id, finished(id, 4_000));
        }
        let kept: Vec<bool> = ["b", "c", "d", "e", "f"]
            .iter()
            .map(|id| r.get(id).is_some())
            .collect();
        assert_eq!(kept, [false, false, true, true, true], "byte bound");
        assert!(r.lock().bytes <= 10_000);
    }

    #[test]
    fn outcomes_expire_and_running_runs_stay() {
        let r = runs(8, 100, 10_000, 30);
        let _slot = r.start("running", "w").unwrap();
        drop(r.start("done", "w").unwrap());
        r.finish("done", finished("done", 1));
        std::thread::sleep(Duration::from_millis(60));
        assert!(r.get("done").is_none(), "expired");
        assert!(r.get("running").is_some(), "running runs are kept");
    }

    #[test]
    fn concurrency_is_bounded_and_an_oversized_result_is_omitted() {
        let r = runs(2, 100, 1_000, 60_000);
        let a = r.start("a", "w").unwrap();
        let _b = r.start("b", "w").unwrap();
        let e = r.start("c", "w").unwrap_err();
        assert_eq!(e.code(), "overloaded");
        drop(a);
        r.finish("a", finished("a", 5_000));
        let kept: Value = serde_json::from_slice(&r.get("a").unwrap()).unwrap();
        assert_eq!(kept["status"], "finished");
        assert!(kept.get("result").is_none());
        assert_eq!(kept["result_omitted"]["code"], "too_large");
        assert!(r.start("c", "w").is_ok(), "a finished run frees its slot");
    }
}
