//! The Aggregate node against the same `GROUP BY` SQL through raw diesel
//! (typed rows on a direct connection), side by side in one run, on a table
//! of 100,000 rows, SQLite and PostgreSQL. Target: node ≥ 0.9× raw.
//!
//! ```sh
//! cargo bench --bench aggregate   # full: 100k rows, SQLite + PostgreSQL, median of 7 rounds
//! cargo test --bench aggregate    # smoke: 2k rows, SQLite only, checks both paths agree
//! ```
//!
//! `DATAFLOW_BENCH_BACKENDS=sqlite` (or `postgres`) runs one backend.
//! PostgreSQL comes from the test harness (`tests/support/postgres.rs`: a
//! fresh database on a throwaway cluster); without it, it is skipped.

use std::error::Error as StdError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataflow::DataFlow;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Text};
use serde_json::{json, Value};

#[path = "../tests/support/postgres.rs"]
mod postgres;

type Res<T> = Result<T, Box<dyn StdError + Send + Sync>>;

#[dataflow::model(table = "bench_sales")]
pub struct BenchSale {
    pub id: String,
    pub region: String,
    pub user_id: String,
    pub amount: i64,
    pub price: f64,
}

const REGIONS: usize = 10;
const USERS: usize = 1_000;
const TARGET: f64 = 0.9;

/// One measured query: the node's input and the same SQL for diesel.
struct Line {
    name: &'static str,
    input: Value,
    sqlite: &'static str,
    postgres: &'static str,
}

/// `min_rows`: the `having` threshold (about half a user's rows).
fn lines(min_rows: i64) -> Vec<Line> {
    vec![
        Line {
            name: "10 groups: count, sum, avg over every row",
            input: json!({"group_by": "region", "aggregates": {
                "n": {"$count": "*"}, "total": {"$sum": "amount"}, "mean": {"$avg": "price"}}}),
            sqlite: r#"SELECT "region", AVG("price") AS a, COUNT(*) AS b, SUM("amount") AS c FROM "bench_sales" WHERE 1=1 GROUP BY "region" ORDER BY "region" ASC LIMIT 100"#,
            postgres: r#"SELECT "region", CAST(AVG("price") AS DOUBLE PRECISION) AS a, COUNT(*) AS b, CAST(SUM("amount") AS BIGINT) AS c FROM "bench_sales" WHERE 1=1 GROUP BY "region" ORDER BY "region" ASC LIMIT 100"#,
        },
        Line {
            name: "1,000 groups: filter, having, order by a sum, limit 20",
            input: json!({"filter": {"amount": {"$gte": 100}}, "group_by": "user_id",
                "aggregates": {"n": {"$count": "*"}, "total": {"$sum": "amount"}, "mean": {"$avg": "price"}},
                "having": {"n": {"$gte": min_rows}}, "order_by": "-total", "limit": 20}),
            sqlite: r#"SELECT "user_id", AVG("price") AS a, COUNT(*) AS b, SUM("amount") AS c FROM "bench_sales" WHERE ("amount" >= ?) GROUP BY "user_id" HAVING (COUNT(*) >= ?) ORDER BY c DESC NULLS LAST, "user_id" ASC LIMIT 20"#,
            postgres: r#"SELECT "user_id", CAST(AVG("price") AS DOUBLE PRECISION) AS a, COUNT(*) AS b, CAST(SUM("amount") AS BIGINT) AS c FROM "bench_sales" WHERE ("amount" >= $1) GROUP BY "user_id" HAVING (COUNT(*) >= $2) ORDER BY c DESC NULLS LAST, "user_id" ASC LIMIT 20"#,
        },
    ]
}

#[derive(QueryableByName, Debug, PartialEq)]
struct Group {
    #[diesel(sql_type = Text)]
    key: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<Double>)]
    a: Option<f64>,
    #[diesel(sql_type = BigInt)]
    b: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    c: Option<i64>,
}

/// The raw side: one diesel connection, used from `spawn_blocking` as the
/// node path uses its pool.
enum Raw {
    Sqlite(Arc<Mutex<SqliteConnection>>),
    Postgres(Arc<Mutex<PgConnection>>),
}

impl Raw {
    async fn run(&self, line: &Line, key: &str) -> Res<Vec<Group>> {
        let min_rows = line.input["having"]["n"]["$gte"].as_i64().unwrap_or(0);
        // The group column is named `key` in the typed row.
        let rename =
            |sql: &str| sql.replacen(&format!("\"{key}\","), &format!("\"{key}\" AS key,"), 1);
        let bind_filter = line.input.get("filter").is_some();
        Ok(match self {
            Raw::Sqlite(c) => {
                let (c, sql) = (c.clone(), rename(line.sqlite));
                tokio::task::spawn_blocking(move || {
                    let mut c = c.lock().expect("connection");
                    if bind_filter {
                        diesel::sql_query(sql)
                            .bind::<BigInt, _>(100i64)
                            .bind::<BigInt, _>(min_rows)
                            .load::<Group>(&mut *c)
                    } else {
                        diesel::sql_query(sql).load::<Group>(&mut *c)
                    }
                })
                .await??
            }
            Raw::Postgres(c) => {
                let (c, sql) = (c.clone(), rename(line.postgres));
                tokio::task::spawn_blocking(move || {
                    let mut c = c.lock().expect("connection");
                    if bind_filter {
                        diesel::sql_query(sql)
                            .bind::<BigInt, _>(100i64)
                            .bind::<BigInt, _>(min_rows)
                            .load::<Group>(&mut *c)
                    } else {
                        diesel::sql_query(sql).load::<Group>(&mut *c)
                    }
                })
                .await??
            }
        })
    }
}

async fn seed(db: &DataFlow, rows: usize) -> Res<()> {
    let mut i = 0;
    while i < rows {
        let n = (rows - i).min(10_000);
        let data: Vec<Value> = (i..i + n)
            .map(|k| {
                json!({
                    "region": format!("r{:02}", k % REGIONS),
                    "user_id": format!("u{:04}", (k * 7) % USERS),
                    "amount": (k * 37 % 1_000) as i64,
                    "price": (k % 100) as f64 / 4.0,
                })
            })
            .collect();
        db.execute("BenchSaleBulkCreateNode", json!({"data": data}))
            .await?;
        i += n;
    }
    Ok(())
}

/// The node's groups as the raw rows, to check both paths agree.
fn as_groups(out: &Value, key: &str) -> Vec<Group> {
    out["groups"]
        .as_array()
        .map(|g| {
            g.iter()
                .map(|g| Group {
                    key: g[key].as_str().unwrap_or_default().to_string(),
                    a: g["mean"].as_f64(),
                    b: g["n"].as_i64().unwrap_or(-1),
                    c: g["total"].as_i64(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Calls of one side in one round: `calls` of them, or fewer after `cap`.
async fn timed<F, Fut>(calls: usize, cap: Duration, mut f: F) -> Res<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Res<()>>,
{
    let started = Instant::now();
    let mut done = 0;
    while done < calls && (done == 0 || started.elapsed() < cap) {
        f().await?;
        done += 1;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let chosen = std::env::var("DATAFLOW_BENCH_BACKENDS")
        .unwrap_or_else(|_| "sqlite,postgres".into())
        .to_ascii_lowercase();
    let (rows, rounds, calls) = if full {
        (100_000, 7, 20)
    } else {
        (2_000, 1, 2)
    };
    let cap = Duration::from_secs(2);
    if full {
        println!(
            "Aggregate node vs the same GROUP BY through raw diesel (typed rows), {rows} rows, \
             median of {rounds} interleaved rounds of {calls} calls (or {cap:?}); ratio: median of per-round node/raw"
        );
        println!("command: cargo bench --bench aggregate");
        println!("target: node >= {TARGET:.2}x raw");
        println!("| backend | query | node calls/s | raw calls/s | node / raw |");
        println!("|---|---|---:|---:|---:|");
    }
    let mut verdicts = Vec::new();
    for backend in ["sqlite", "postgres"] {
        if !chosen.contains(backend) || (!full && backend == "postgres") {
            continue;
        }
        let url = if backend == "sqlite" {
            let path = std::env::temp_dir().join(format!(
                "dataflow-bench-aggregate-{}.db",
                std::process::id()
            ));
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            format!("sqlite://{}", path.display())
        } else {
            match postgres::fresh_database("bench_aggregate") {
                Some(url) => url,
                None => {
                    println!("| postgres | skipped (no PostgreSQL) | | | |");
                    continue;
                }
            }
        };
        let db = DataFlow::builder(&url)
            .enable_caching(false)
            .build()
            .await?;
        seed(&db, rows).await?;
        let raw = if backend == "sqlite" {
            let path = url.trim_start_matches("sqlite://").to_string();
            Raw::Sqlite(Arc::new(Mutex::new(SqliteConnection::establish(&path)?)))
        } else {
            Raw::Postgres(Arc::new(Mutex::new(PgConnection::establish(&url)?)))
        };
        if let Raw::Postgres(c) = &raw {
            diesel::sql_query("ANALYZE bench_sales")
                .execute(&mut *c.lock().expect("connection"))?;
        }
        for line in lines((rows / USERS / 2).max(1) as i64) {
            let key = line.input["group_by"].as_str().unwrap_or_default();
            // Both paths answer the same groups (smoke and full).
            let node_out = db
                .execute("BenchSaleAggregateNode", line.input.clone())
                .await?;
            let raw_out = raw.run(&line, key).await?;
            let node_groups = as_groups(&node_out, key);
            if node_groups != raw_out || node_groups.is_empty() {
                return Err(format!(
                    "{backend} {}: the node and raw diesel disagree:\nnode {node_groups:?}\nraw {raw_out:?}",
                    line.name
                )
                .into());
            }
            let (mut node_rates, mut raw_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..rounds {
                let node = || async {
                    db.execute("BenchSaleAggregateNode", line.input.clone())
                        .await
                        .map(drop)
                        .map_err(Into::into)
                };
                let rawf = || async { raw.run(&line, key).await.map(drop) };
                let (n, r) = if round % 2 == 0 {
                    let n = timed(calls, cap, node).await?;
                    (n, timed(calls, cap, rawf).await?)
                } else {
                    let r = timed(calls, cap, rawf).await?;
                    (timed(calls, cap, node).await?, r)
                };
                node_rates.push(n);
                raw_rates.push(r);
                ratios.push(n / r);
            }
            let ratio = median(ratios);
            if full {
                println!(
                    "| {backend} | {} | {:.1} | {:.1} | {ratio:.2} |",
                    line.name,
                    median(node_rates),
                    median(raw_rates)
                );
                verdicts.push(format!(
                    "{backend} {}: {ratio:.2}x raw ({})",
                    line.name,
                    if ratio >= TARGET { "met" } else { "MISSED" }
                ));
            }
        }
    }
    if full {
        for v in verdicts {
            println!("{v}");
        }
    } else {
        println!(
            "aggregate bench smoke (SQLite, {rows} rows): the node and raw diesel agree on every line; \
             run `cargo bench --bench aggregate` for numbers"
        );
    }
    Ok(())
}
