//! What multi-tenancy costs: the same nodes on a plain model, on the same
//! model `tenant_scoped`, and (PostgreSQL) behind row-level security, side by
//! side in one run. The same lines end `cargo bench --bench nodes`; this
//! program runs them alone.
//!
//! ```sh
//! cargo bench --bench tenancy    # full: SQLite + PostgreSQL, median of 5 rounds
//! cargo test --bench tenancy     # smoke: tiny, SQLite only, checks the paths agree
//! ```
//!
//! `DATAFLOW_BENCH_BACKENDS=sqlite` (or `postgres`) runs one backend.

#[path = "../tests/support/postgres.rs"]
mod postgres;
#[path = "support/tenancy.rs"]
mod tenancy;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> tenancy::Res<()> {
    let full = std::env::args().any(|a| a == "--bench");
    // `DATAFLOW_BENCH_BACKENDS=sqlite` (or `postgres`) runs one backend.
    let chosen = std::env::var("DATAFLOW_BENCH_BACKENDS")
        .unwrap_or_else(|_| "sqlite,postgres".into())
        .to_ascii_lowercase();
    let backends: Vec<&str> = ["sqlite", "postgres"]
        .into_iter()
        .filter(|b| chosen.contains(b) && (full || *b == "sqlite"))
        .collect();
    tenancy::run(full, &backends, "cargo bench --bench tenancy").await
}
