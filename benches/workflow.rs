//! Workflow runtime overhead: a one-node workflow against calling the same
//! node directly, and a ten-node chain, side by side in one run.
//!
//! ```sh
//! cargo bench --bench workflow     # full: median of 5 rounds
//! cargo test --bench workflow      # smoke: a few runs, checks the results agree
//! ```
//!
//! Both paths read one record by id (`BenchItemReadNode`) on a SQLite file;
//! the ten-node chain reads it ten times, each read taking its id from the
//! previous node's output.

use dataflow::{DataFlow, Workflow, WorkflowBuilder, WorkflowRuntime};
use serde_json::{json, Value};
use std::time::Instant;

#[dataflow::model]
pub struct BenchItem {
    pub id: String,
    pub name: String,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

async fn ops_per_sec<F, Fut>(n: usize, mut f: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    let started = Instant::now();
    for _ in 0..n {
        std::hint::black_box(f().await);
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn chain(db: &DataFlow, len: usize) -> Workflow {
    let mut wf = WorkflowBuilder::new();
    wf.add_node("BenchItemReadNode", "n0", json!({"id": "{{id}}"}));
    for i in 1..len {
        wf.add_node("BenchItemReadNode", format!("n{i}"), json!({}));
        wf.add_connection(format!("n{}", i - 1), "id", format!("n{i}"), "id");
    }
    wf.build(db).expect("the chain builds")
}

/// One timed workflow run.
async fn run(rt: &WorkflowRuntime, wf: &Workflow, inputs: &Value) -> Value {
    let run = rt.execute(wf, inputs.clone()).await.unwrap();
    Value::from(run.results.len())
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    // Rounds alternate the three lines; ratios are taken per round (paired),
    // then the median, so drift on a shared machine cancels out.
    let (rounds, ops) = if full { (11, 30_000) } else { (1, 20) };
    let path =
        std::env::temp_dir().join(format!("dataflow-bench-workflow-{}.db", std::process::id()));
    let url = format!("sqlite://{}", path.display());
    // The query cache (on by default) would answer both sides from memory;
    // the runtime's overhead is measured against a real read.
    let db = DataFlow::builder(&url)
        .enable_caching(false)
        .build()
        .await
        .expect("boot");
    let item = db
        .execute("BenchItemCreateNode", json!({"name": "bench"}))
        .await
        .expect("create");
    let id = item["id"].clone();
    let one = chain(&db, 1);
    let ten = chain(&db, 10);
    let inputs = json!({"id": id});
    let rt = db.runtime();

    // The paths agree before anything is timed.
    let direct = db
        .execute("BenchItemReadNode", json!({"id": id}))
        .await
        .unwrap();
    assert_eq!(
        rt.execute(&one, inputs.clone()).await.unwrap().results["n0"],
        direct
    );
    assert_eq!(
        rt.execute(&ten, inputs.clone()).await.unwrap().results["n9"],
        direct
    );

    let (mut d, mut w1, mut w10) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        d.push(
            ops_per_sec(ops, || async {
                db.execute("BenchItemReadNode", json!({"id": id}))
                    .await
                    .unwrap()
            })
            .await,
        );
        w1.push(ops_per_sec(ops, || run(&rt, &one, &inputs)).await);
        w10.push(ops_per_sec(ops / 5, || run(&rt, &ten, &inputs)).await);
    }
    let r1 = median(w1.iter().zip(&d).map(|(w, d)| w / d).collect());
    let r10 = median(w10.iter().zip(&d).map(|(w, d)| w * 10.0 / d).collect());
    let (d, w1, w10) = (median(d), median(w1), median(w10));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    if !full {
        println!(
            "workflow bench smoke run passed (run `cargo bench --bench workflow` for numbers)"
        );
        return;
    }
    println!(
        "Workflow runtime overhead, SQLite file, medians of {rounds} alternating rounds ({ops} runs per round; ratios paired per round)"
    );
    println!("command: cargo bench --bench workflow\n");
    println!("| line | runs/s | node calls/s | vs direct node call |");
    println!("|---|---:|---:|---:|");
    println!("| direct `db.execute` (Read by id) | {d:.0} | {d:.0} | 1.00× |");
    println!("| one-node workflow | {w1:.0} | {w1:.0} | {r1:.2}× |");
    println!(
        "| ten-node chain | {w10:.0} | {:.0} | {r10:.2}× per node |",
        w10 * 10.0
    );
    println!(
        "\nrun overhead: {:.2} us per one-node run over the direct call",
        (1e6 / w1 - 1e6 / d).max(0.0)
    );
    println!("\ntarget: one-node workflow ≥ 0.90× the direct node call");
}
