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

/// A peer tool installed by `.ci/run` (schemathesis, squawk, ...): its path
/// when it is on `PATH` or in the CI virtualenv (`$DATAFLOW_CI_VENV/bin`).
/// Missing, it fails the test under CI (`CI=true`) and skips it otherwise,
/// saying why: a green CI run has really run the tool.
pub fn peer_tool(name: &str) -> Option<std::path::PathBuf> {
    let venv =
        std::env::var_os("DATAFLOW_CI_VENV").map(|v| std::path::PathBuf::from(v).join("bin"));
    let dirs = venv.into_iter().chain(
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .collect::<Vec<_>>(),
    );
    for dir in dirs {
        let path = dir.join(name);
        if path.is_file() {
            return Some(path);
        }
    }
    let why = format!("`{name}` is not installed (.ci/run installs it into $DATAFLOW_CI_VENV)");
    // The same reading of CI as the PostgreSQL harness.
    let ci = std::env::var("CI").is_ok_and(|v| {
        !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no"
        )
    });
    if ci {
        panic!("{why}");
    }
    eprintln!("skipped: {why}");
    None
}
