//! The multi-tenancy lines: the same nodes on a plain model, on the same
//! model `tenant_scoped`, and (PostgreSQL) behind row-level security, side by
//! side in one run. Run by `cargo bench --bench nodes` after its own tables,
//! and alone by `cargo bench --bench tenancy`.
//!
//! PostgreSQL comes from the test harness (`tests/support/postgres.rs`): a
//! fresh database per variant on a throwaway cluster, owned by a plain role
//! (a superuser would bypass row-level security); without it, it is skipped.
//! On PostgreSQL every line starts from fresh planner statistics (`ANALYZE`).

use std::error::Error as StdError;
use std::time::{Duration, Instant};

use dataflow::{Context, DataFlow};
use serde_json::{json, Value};

use super::postgres;

#[dataflow::model(table = "bench_plain")]
pub struct Plain {
    pub id: String,
    #[field(unique)]
    pub email: String,
    pub full_name: Option<String>,
    pub age: i32,
}

#[dataflow::model(table = "bench_tenant", tenant_scoped)]
pub struct Scoped {
    pub id: String,
    #[field(unique)]
    pub email: String,
    pub full_name: Option<String>,
    pub age: i32,
}

pub type Res<T> = Result<T, Box<dyn StdError + Send + Sync>>;

/// Tenants the scoped rows are spread over; each line works in one of them.
const TENANTS: usize = 4;
const LIST_LIMIT: usize = 20;
/// The target: tenant-scoped / plain on every line.
const TARGET: f64 = 0.9;
/// A timed round of single ops stops early after this long.
const ROUND_CAP: Duration = Duration::from_secs(3);

struct Cfg {
    full: bool,
    rounds: usize,
    ops: usize,
    bulk_rows: usize,
    /// A timed round of single ops lasts at least this long.
    min_round: Duration,
}

/// One variant: a booted database and the model (and tenant) it runs.
struct Variant {
    name: &'static str,
    db: DataFlow,
    model: &'static str,
}

fn record(tag: &str, i: usize) -> Value {
    json!({
        "email": format!("{tag}-{i}@bench.io"),
        "full_name": (!i.is_multiple_of(4)).then(|| format!("User {i}")),
        "age": 18 + (i % 80) as i32,
    })
}

impl Variant {
    fn node(&self, op: &str) -> String {
        format!("{}{op}Node", self.model)
    }

    /// Fills every tenant (or the plain table) with `n` rows, returns ids of
    /// the rows this variant's lines use.
    async fn seed(&self, tag: &str, n: usize) -> Res<Vec<String>> {
        let data: Vec<Value> = (0..n).map(|i| record(tag, i)).collect();
        let out = self
            .db
            .execute(&self.node("BulkCreate"), json!({"data": data}))
            .await?;
        let ids: Vec<String> = out["ids"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if ids.len() != n {
            return Err(format!("{}: seeding answered {out}", self.name).into());
        }
        Ok(ids)
    }

    /// PostgreSQL: fresh planner statistics, as autovacuum keeps them on a
    /// table in use, so the lines time steady state rather than a table that
    /// grew from nothing since its last `ANALYZE` (the policy's filter makes
    /// the estimates of such a table worse; see the README). SQLite keeps no
    /// statistics unless asked, so it is left as it is.
    fn settle(&self) -> Res<()> {
        use diesel::connection::SimpleConnection;
        if self.db.dialect() == dataflow::Dialect::Postgres {
            self.db.connection()?.batch_execute("ANALYZE")?;
        }
        Ok(())
    }

    /// ops/s of `cfg.ops` calls of `op` (or fewer, within [`ROUND_CAP`]).
    async fn single(&self, cfg: &Cfg, op: &str, round: usize, ids: &[String]) -> Res<f64> {
        let node = self.node(op);
        let start = Instant::now();
        let mut done = 0;
        // At least `cfg.ops` calls and `cfg.min_round` (a round of fast
        // reads is otherwise a few milliseconds, all noise), at most ROUND_CAP (full runs: a smoke or profiling run does all its calls).
        while (done < cfg.ops || start.elapsed() < cfg.min_round)
            && !(done >= 50 && cfg.full && start.elapsed() > ROUND_CAP)
        {
            let params = match op {
                "Create" => record(&format!("r{round}"), done),
                "Read" => json!({"id": ids[done % ids.len()]}),
                _ => json!({"limit": LIST_LIMIT, "order_by": "email"}),
            };
            let out = self.db.execute(&node, params).await?;
            if op == "List" && out["records"].as_array().map_or(0, Vec::len) != LIST_LIMIT {
                return Err(format!("{}: List returned {out}", self.name).into());
            }
            done += 1;
        }
        Ok(done as f64 / start.elapsed().as_secs_f64())
    }

    /// rows/s of one BulkCreate of `cfg.bulk_rows` rows.
    async fn bulk(&self, cfg: &Cfg, round: usize) -> Res<f64> {
        let data: Vec<Value> = (0..cfg.bulk_rows)
            .map(|i| record(&format!("bulk{round}"), i))
            .collect();
        let start = Instant::now();
        let out = self
            .db
            .execute(&self.node("BulkCreate"), json!({"data": data}))
            .await?;
        let secs = start.elapsed().as_secs_f64();
        if out["inserted"] != json!(cfg.bulk_rows) {
            return Err(format!("{}: BulkCreate answered {}", self.name, out["inserted"]).into());
        }
        Ok(cfg.bulk_rows as f64 / secs)
    }
}

async fn boot(url: &str, rls: bool) -> Res<DataFlow> {
    // The query cache (on by default) is off: these lines measure the
    // tenant filter and row-level security on the database's path.
    Ok(DataFlow::builder(url)
        .multi_tenant(true)
        .row_level_security(rls)
        .enable_caching(false)
        .build()
        .await?)
}

/// The variants of one backend: plain, tenant-scoped, and on PostgreSQL
/// tenant-scoped behind row-level security.
async fn variants(backend: &str, cfg: &Cfg) -> Res<Vec<(Variant, Vec<String>)>> {
    let mut urls: Vec<(&'static str, String, bool)> = Vec::new();
    if backend == "sqlite" {
        let path =
            std::env::temp_dir().join(format!("dataflow-bench-tenancy-{}.db", std::process::id()));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let url = format!("sqlite://{}", path.display());
        urls.push(("plain", url.clone(), false));
        urls.push(("tenant_scoped", url, false));
    } else {
        let Some(url) = postgres::fresh_database("bench_tenancy") else {
            return Ok(Vec::new());
        };
        let url = postgres::as_plain_role(&url);
        let rls_url =
            postgres::fresh_database("bench_tenancy_rls").map(|u| postgres::as_plain_role(&u));
        urls.push(("plain", url.clone(), false));
        urls.push(("tenant_scoped", url, false));
        if let Some(u) = rls_url {
            urls.push(("tenant_scoped + RLS", u, true));
        }
    }
    let mut out = Vec::new();
    // Variants on the same database share one `DataFlow` (one pool, and on
    // SQLite one writer and its WAL checkpoints), as one app's models do:
    // two instances on one SQLite file would checkpoint each other's WAL
    // in the middle of the other's timed writes.
    let mut roots: Vec<(String, bool, DataFlow)> = Vec::new();
    // `DATAFLOW_BENCH_VARIANTS=tenant_scoped` runs some variants (profiling).
    let only = std::env::var("DATAFLOW_BENCH_VARIANTS").unwrap_or_default();
    for (name, url, rls) in urls {
        if !only.is_empty() && !only.split(',').any(|o| o == name) {
            continue;
        }
        let root = match roots.iter().find(|(u, r, _)| *u == url && *r == rls) {
            Some((_, _, db)) => db.clone(),
            None => {
                let db = boot(&url, rls).await?;
                roots.push((url.clone(), rls, db.clone()));
                db
            }
        };
        // The same number of rows in every table: the plain table gets as
        // many as all the tenants together, so each statement really filters.
        let scoped = name != "plain";
        let (model, db) = if scoped {
            ("Scoped", root.with_context(Context::new().tenant("t0")))
        } else {
            ("Plain", root.clone())
        };
        let n = cfg.ops.max(200);
        for t in 1..TENANTS {
            let v = Variant {
                name,
                db: if scoped {
                    root.with_context(Context::new().tenant(format!("t{t}")))
                } else {
                    root.clone()
                },
                model,
            };
            v.seed(&format!("seed{t}"), n).await?;
        }
        let v = Variant { name, db, model };
        let ids = v.seed("seed0", n).await?;
        out.push((v, ids));
    }
    Ok(out)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Runs the lines on `backends` ("sqlite", "postgres") and prints the
/// table (full) or a one-line smoke summary; `standalone` names the
/// command in the header.
pub async fn run(full: bool, backends: &[&str], command: &str) -> Res<()> {
    let cfg = if full {
        Cfg {
            full: true,
            rounds: 7,
            ops: 2_000,
            bulk_rows: 100_000,
            min_round: Duration::from_millis(300),
        }
    } else {
        Cfg {
            full: false,
            rounds: 1,
            // `DATAFLOW_BENCH_OPS` (profiling under callgrind).
            ops: std::env::var("DATAFLOW_BENCH_OPS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(20),
            // `DATAFLOW_BENCH_BULK_ROWS` (profiling under callgrind).
            bulk_rows: std::env::var("DATAFLOW_BENCH_BULK_ROWS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(500),
            min_round: Duration::ZERO,
        }
    };
    if full {
        println!(
            "multi-tenancy cost: plain model vs the same model tenant_scoped (rows in {TENANTS} tenants) \
             vs tenant_scoped behind PostgreSQL row-level security; median of {} rounds (ratios: median of per-round pairs), \
             single ops: {} per round or {ROUND_CAP:?}, BulkCreate: {} rows",
            cfg.rounds,
            cfg.ops,
            thousands(cfg.bulk_rows as f64)
        );
        println!("command: {command}");
        println!(
            "target: tenant_scoped >= {TARGET:.2}x the plain model on every line \
             (row-level security is an optional second wall: measured, no target)"
        );
    }
    for backend in backends {
        let variants = variants(backend, &cfg).await?;
        if variants.is_empty() {
            println!("{backend}: skipped (no PostgreSQL)");
            continue;
        }
        // `DATAFLOW_BENCH_LINES=List,Read` runs some lines (for profiling).
        let only = std::env::var("DATAFLOW_BENCH_LINES").unwrap_or_default();
        let lines: Vec<&str> = ["Create", "Read", "List", "BulkCreate"]
            .into_iter()
            .filter(|l| only.is_empty() || only.split(',').any(|o| o.eq_ignore_ascii_case(l)))
            .collect();
        // Per line: the median rate of each variant, and the median over
        // rounds of each variant's rate / the plain model's in the same
        // round (paired, so a burst of load on the machine hits both sides
        // of a ratio rather than one median).
        let mut table: Vec<Vec<f64>> = vec![Vec::new(); lines.len()];
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); lines.len()];
        for (li, line) in lines.iter().enumerate() {
            let mut per: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
            for (v, _) in &variants {
                v.settle()?;
            }
            for round in 0..cfg.rounds {
                // Interleaved, in turn first and last, so drift in the
                // machine's load and warm caches favour no variant.
                let mut order: Vec<usize> = (0..variants.len()).collect();
                if round % 2 == 1 {
                    order.reverse();
                }
                for vi in order {
                    let (v, ids) = &variants[vi];
                    let rate = match *line {
                        "BulkCreate" => v.bulk(&cfg, round).await?,
                        op => v.single(&cfg, op, round, ids).await?,
                    };
                    per[vi].push(rate);
                }
            }
            ratios[li] = per
                .iter()
                .map(|rates| median(rates.iter().zip(&per[0]).map(|(r, p)| r / p).collect()))
                .collect();
            table[li] = per.into_iter().map(median).collect();
        }
        if !full {
            println!(
                "tenancy bench smoke (SQLite, {} ops per line): plain and tenant_scoped ran every line; \
                 run `cargo bench --bench tenancy` for numbers",
                cfg.ops
            );
            continue;
        }
        println!("\n{backend}");
        let names: Vec<&str> = variants.iter().map(|(v, _)| v.name).collect();
        println!(
            "| line | {} |",
            names
                .iter()
                .map(|n| format!("{n} | ratio"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        println!("|---|{}", "---|---|".repeat(names.len()));
        for (li, line) in lines.iter().enumerate() {
            let unit = if *line == "BulkCreate" {
                "rows/s"
            } else {
                "ops/s"
            };
            let cells: Vec<String> = table[li]
                .iter()
                .zip(&ratios[li])
                .map(|(r, x)| format!("{} {unit} | {x:.2}x", thousands(*r)))
                .collect();
            println!("| {line} | {} |", cells.join(" | "));
        }
        let missed: Vec<String> = lines
            .iter()
            .zip(&ratios)
            .filter(|(_, x)| x.len() > 1 && x[1] < TARGET)
            .map(|(line, x)| format!("{line} {:.2}x", x[1]))
            .collect();
        if missed.is_empty() {
            println!("{backend} tenancy: met (tenant_scoped >= {TARGET:.2}x plain on every line)");
        } else {
            println!("{backend} tenancy: MISSED on {}", missed.join(", "));
        }
    }
    Ok(())
}
