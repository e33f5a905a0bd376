//! Shared helpers for the integration tests in `tests/*.rs`.
//!
//! Use from a test crate with `mod support;` and then `support::postgres::fresh_database(..)`,
//! or include a single helper directly: `#[path = "support/postgres.rs"] mod postgres;`.

#![allow(dead_code)]

pub mod http;
pub mod postgres;
pub mod programs;

use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A `sqlite://` URL of a new, empty database file in the temp dir.
pub fn sqlite_url(name: &str) -> String {
    let dir = std::env::temp_dir().join("dataflow-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let path = dir.join(format!("{name}-{}-{n}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    format!("sqlite://{}", path.display())
}

/// A fresh SQLite file and, when PostgreSQL is available, a fresh
/// PostgreSQL database: the backends every test body runs against.
pub fn backend_urls(name: &str) -> Vec<(&'static str, String)> {
    let mut urls = vec![("sqlite", sqlite_url(name))];
    if let Some(url) = postgres::fresh_database(name) {
        urls.push(("postgres", url));
    }
    urls
}
