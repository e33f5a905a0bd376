//! The programs the tests run as processes: the examples and the `dataflow`
//! binary, each built once per test process by cargo, which reports where it
//! put the executable (`--message-format=json`), so no path under `target/`
//! is guessed and nothing is rebuilt per call as `cargo run` would check.
//!
//! Cargo hands integration tests `CARGO_BIN_EXE_<name>` only for their own
//! package's `[[bin]]`s. These are examples (the README runs them with
//! `cargo run --example`, and a `[[bin]]` on the same file makes cargo warn
//! on every build) and another package's binary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// `examples/<name>.rs`, built.
pub fn example(name: &str) -> PathBuf {
    built(name, &["--example", name])
}

/// The `dataflow` crate's standalone binary, built.
pub fn dataflow_bin() -> PathBuf {
    built("dataflow", &["-p", "dataflow", "--bin", "dataflow"])
}

fn built(name: &str, target: &[&str]) -> PathBuf {
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    // Held while building: a second test asking for the same program waits.
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    let key = target.join(" ");
    if let Some(path) = built.get(&key) {
        return path.clone();
    }
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "--message-format=json-render-diagnostics",
        ])
        .args(target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo build {key} failed");
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo build {key} reported no executable"));
    built.insert(key, path.clone());
    path
}
