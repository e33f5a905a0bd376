//! Boot-to-ready wall time of a whole process, for 1, 10 and 100 models.
//!
//! ```sh
//! cargo bench --bench boot     # builds the generated crates, boots them, prints the table
//! cargo test --bench boot      # smoke: prints one line and exits (builds nothing)
//! ```
//!
//! The program generates three small binary crates, `models_1`, `models_10` and
//! `models_100`, under `<target>/boot-bench/`. Each declares that many models with
//! `#[dataflow::model]` and boots `DataFlow` on the URL and in the mode given on its
//! command line ("full": the defaults; "minimal": every boot step switched off), then
//! prints a `ready {json}` line. All three are built in release mode into one shared
//! target dir, `<target>/boot-bench/target`, so their dependencies compile once.
//!
//! A measurement is the wall time from spawning the binary to reading its `ready`
//! line: exec, dynamic loading, the tokio runtime, `DataFlow::build()` and the first
//! write to stdout. Each binary also reports where its time went (see the second
//! table). Per (backend, model count) and per run:
//!
//! * database A, fresh: first boot "full" (creates the tables), then second boots on
//!   it, "full" and "minimal" in alternating order, [`SECOND_BOOTS_PER_RUN`] of each
//!   (they are cheap, and more samples steady the medians on a busy machine);
//! * database B, fresh: first boot "minimal".
//!
//! So both second boots see the same, fully created database. SQLite uses a new
//! file per fresh database; PostgreSQL a new database, on the server named by
//! `DATAFLOW_BENCH_POSTGRES_URL` or else from the test harness
//! (`tests/support/postgres.rs`: a throwaway cluster, or `DATAFLOW_TEST_POSTGRES_URL`).
//! Without PostgreSQL the table has SQLite rows only.
//!
//! It also reports the release build time of the 100-model crate once its
//! dependencies are built (its source touched, then `cargo build --release`).

#[path = "../tests/support/postgres.rs"]
mod postgres;

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};

/// The command that produces the table (printed with it).
const COMMAND: &str = "cargo bench --bench boot";
/// Model counts, one generated crate each.
const MODEL_COUNTS: [usize; 3] = [1, 10, 100];
/// Runs per cell, each on fresh databases: the first-boot medians are over this many.
const RUNS: usize = 5;
/// Second boots of each mode per run: the second-boot medians are over `RUNS` times this.
const SECOND_BOOTS_PER_RUN: usize = 3;
/// Env var the bench sets on each boot: wall-clock nanoseconds since the Unix epoch
/// just before the spawn, so the child can tell how long it took to reach `main`.
const SPAWNED_AT_ENV: &str = "DATAFLOW_BOOT_BENCH_SPAWNED_AT_NS";
/// Env var naming a PostgreSQL server (its user needs CREATEDB) to use instead of the test harness.
const BENCH_PG_ENV: &str = "DATAFLOW_BENCH_POSTGRES_URL";

/// Second-boot targets for the "full" configuration, in milliseconds, by model count.
const SECOND_BOOT_TARGET_MS: [(usize, f64); 2] = [(10, 50.0), (100, 150.0)];
/// Target for the ratio full / minimal on second boot.
const RATIO_TARGET: f64 = 1.2;

fn main() {
    // `cargo test --all-targets` runs this program without `--bench`: do nothing there,
    // since building the generated crates would take minutes.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "boot benchmark: smoke mode, nothing built or measured (run `{COMMAND}` for the table)"
        );
        return;
    }

    let paths = Paths::discover();
    let crates: Vec<GeneratedCrate> = MODEL_COUNTS
        .iter()
        .map(|&n| GeneratedCrate::write(&paths, n))
        .collect();
    eprintln!(
        "boot bench: building {} generated crates into {}",
        crates.len(),
        paths.target_dir.display()
    );
    for c in &crates {
        c.build(&paths);
    }
    let biggest = crates.last().expect("at least one crate");
    let build_time = biggest.timed_rebuild(&paths);

    let scratch = Scratch::new();
    let mut backends = vec![Backend::Sqlite];
    let pg = PgSource::discover();
    if pg.is_some() {
        backends.push(Backend::Postgres);
    }

    let mut results = Results::default();
    for &backend in &backends {
        for c in &crates {
            eprintln!("boot bench: {} models on {}", c.models, backend.name());
            let fresh = || match backend {
                Backend::Sqlite => scratch.fresh_sqlite(),
                Backend::Postgres => pg.as_ref().expect("PostgreSQL source").fresh(),
            };
            measure(&mut results, backend, c, fresh);
        }
    }

    print_report(&results, &backends, &crates, build_time, pg.as_ref());
}

// ---------------------------------------------------------------------------------------------
// Where things live

struct Paths {
    /// The workspace root (this package is the root package).
    workspace: PathBuf,
    /// `<target>/boot-bench`: the generated crates.
    bench_dir: PathBuf,
    /// `<target>/boot-bench/target`: the one target dir all generated crates share.
    target_dir: PathBuf,
}

impl Paths {
    fn discover() -> Paths {
        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        // A relative CARGO_TARGET_DIR is relative to where cargo ran; cargo runs benches
        // from the package root, which is the workspace root here.
        let target = match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
            Some(dir) => std::env::current_dir().expect("current dir").join(dir),
            None => workspace.join("target"),
        };
        let bench_dir = target.join("boot-bench");
        let target_dir = bench_dir.join("target");
        Paths {
            workspace,
            bench_dir,
            target_dir,
        }
    }

    /// `cargo` with the shared target dir for the generated crates.
    fn cargo(&self) -> Command {
        let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.env_remove("CARGO_BUILD_TARGET_DIR")
            .env("CARGO_TARGET_DIR", &self.target_dir);
        cmd
    }
}

// ---------------------------------------------------------------------------------------------
// The generated crates

struct GeneratedCrate {
    models: usize,
    dir: PathBuf,
    binary: PathBuf,
}

impl GeneratedCrate {
    /// Writes `models_<n>` (only the files whose content changed, so cargo's
    /// fingerprints stay fresh between runs of this bench).
    fn write(paths: &Paths, n: usize) -> GeneratedCrate {
        let name = format!("models_{n}");
        let dir = paths.bench_dir.join(&name);
        let runtime = paths.workspace.join("dataflow-runtime");
        let manifest = format!(
            r#"# Generated by benches/boot.rs in the dataflow workspace: rewritten by every `{COMMAND}`.
[package]
name = "{name}"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
dataflow = {{ path = "{runtime}" }}
tokio = {{ version = "1", features = ["rt-multi-thread", "macros"] }}
serde_json = "1"

# A workspace of its own: it is not part of the workspace whose target dir holds it.
[workspace]
"#,
            runtime = toml_escape(&runtime.to_string_lossy()),
        );
        write_if_changed(&dir.join("Cargo.toml"), &manifest);
        write_if_changed(&dir.join("src/main.rs"), &main_source(n));
        // The workspace's lock file pins the same versions the workspace builds and tests
        // with (and lets cargo build without touching the index); cargo drops what is unused.
        let lock = fs::read_to_string(paths.workspace.join("Cargo.lock")).expect("read Cargo.lock");
        write_if_changed(&dir.join("Cargo.lock"), &lock);
        let binary = paths.target_dir.join("release").join(&name);
        GeneratedCrate {
            models: n,
            dir,
            binary,
        }
    }

    /// `cargo build --release` of this crate, cargo's output shown as it goes.
    fn build(&self, paths: &Paths) {
        let status = self.cargo_build(paths).status().expect("run cargo");
        assert!(
            status.success(),
            "building {} failed ({status})",
            self.dir.display()
        );
    }

    fn cargo_build(&self, paths: &Paths) -> Command {
        let mut cmd = paths.cargo();
        cmd.args(["build", "--release", "--manifest-path"])
            .arg(self.dir.join("Cargo.toml"));
        cmd
    }

    /// Release build time of this crate alone, its dependencies already built:
    /// touch its source, then time `cargo build --release`. Other people may edit
    /// `dataflow-runtime` meanwhile; a build that recompiled anything else is not
    /// counted and is timed again (up to three tries; the note says what else compiled).
    fn timed_rebuild(&self, paths: &Paths) -> BuildTime {
        let main = self.dir.join("src/main.rs");
        let mut tries = 0;
        loop {
            tries += 1;
            fs::File::options()
                .write(true)
                .open(&main)
                .and_then(|f| f.set_modified(SystemTime::now()))
                .unwrap_or_else(|e| panic!("touch {}: {e}", main.display()));
            eprintln!(
                "boot bench: timing a release build of {} (source touched)",
                self.dir.display()
            );
            let started = Instant::now();
            let output = self
                .cargo_build(paths)
                .stderr(Stdio::piped())
                .output()
                .expect("run cargo");
            let elapsed = started.elapsed();
            let log = String::from_utf8_lossy(&output.stderr);
            eprint!("{log}");
            assert!(
                output.status.success(),
                "building {} failed ({})",
                self.dir.display(),
                output.status
            );
            let own = format!("models_{} ", self.models);
            let others: Vec<String> = log
                .lines()
                .filter_map(|l| l.trim().strip_prefix("Compiling "))
                .filter(|c| !c.starts_with(&own))
                .map(|c| c.split(' ').next().unwrap_or(c).to_string())
                .collect();
            if others.is_empty() || tries == 3 {
                return BuildTime {
                    elapsed,
                    also_compiled: others,
                };
            }
            // The next try starts from up-to-date dependencies.
            eprintln!(
                "boot bench: that build also compiled {} (changed meanwhile); timing it again",
                others.join(", ")
            );
        }
    }
}

/// The timed release build of one generated crate.
struct BuildTime {
    elapsed: Duration,
    /// Other crates that build had to compile too (empty when it measured the crate alone).
    also_compiled: Vec<String>,
}

/// `src/main.rs` of a generated crate: `n` models and a main that boots and prints `ready`.
fn main_source(n: usize) -> String {
    let mut s = format!(
        r#"//! Generated by benches/boot.rs in the dataflow workspace: rewritten by every `{COMMAND}`.
//!
//! Usage: models_{n} <database-url> <full|minimal>. Boots DataFlow with {n} model(s), prints
//! `ready {{json}}` (timings in ms) on stdout and exits.

use dataflow::DataFlow;
use std::time::{{Instant, SystemTime, UNIX_EPOCH}};

"#
    );
    for i in 0..n {
        s.push_str(&model_source(i));
        s.push('\n');
    }
    s.push_str(&format!(
        r#"fn main() {{
    let main_entered = Instant::now();
    let main_entered_wall = SystemTime::now();
    let args: Vec<String> = std::env::args().collect();
    let [_, url, mode] = args.as_slice() else {{
        eprintln!("usage: models_{n} <database-url> <full|minimal>");
        std::process::exit(2);
    }};
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let runtime_ms = ms(main_entered.elapsed());
    let build_started = Instant::now();
    let booted = runtime.block_on(async {{
        match mode.as_str() {{
            // ==== FULL CONFIGURATION ================================================
            // The defaults are the full configuration. When the model registry,
            // persistence and auto-migration become default-on, this line stays as is;
            // adjust it here if "full" ever needs explicit options.
            "full" => DataFlow::builder(url.as_str()).build().await,
            // ========================================================================
            "minimal" => {{
                DataFlow::builder(url.as_str())
                    .skip_migration(true)
                    .skip_registry(true)
                    .enable_model_persistence(false)
                    .auto_migrate(false)
                    .build()
                    .await
            }}
            other => {{
                eprintln!("unknown mode {{other:?}}: expected full or minimal");
                std::process::exit(2);
            }}
        }}
    }});
    let db = match booted {{
        Ok(db) => db,
        Err(e) => {{
            eprintln!("boot failed: {{e}}");
            std::process::exit(1);
        }}
    }};
    let build_ms = ms(build_started.elapsed());
    let main_ms = ms(main_entered.elapsed());
    // Time from the bench's spawn to `main`, when the bench says when it spawned us.
    let pre_main_ms = std::env::var("{SPAWNED_AT_ENV}")
        .ok()
        .and_then(|v| v.parse::<u128>().ok())
        .and_then(|at| {{
            let entered = main_entered_wall.duration_since(UNIX_EPOCH).ok()?.as_nanos();
            Some(entered.saturating_sub(at) as f64 / 1e6)
        }});
    println!(
        "ready {{}}",
        serde_json::json!({{
            "models": db.models().len(),
            "pre_main_ms": pre_main_ms,
            "runtime_ms": runtime_ms,
            "build_ms": build_ms,
            "main_to_ready_ms": main_ms,
        }})
    );
}}

fn ms(d: std::time::Duration) -> f64 {{
    d.as_secs_f64() * 1e3
}}
"#
    ));
    s
}

/// One model with a mix of field kinds; some reference an earlier model.
fn model_source(i: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "#[dataflow::model]");
    let _ = writeln!(s, "pub struct Model{i} {{");
    let _ = writeln!(s, "    pub id: String,");
    let _ = writeln!(s, "    #[field(unique)]");
    let _ = writeln!(s, "    pub email: String,");
    let _ = writeln!(s, "    pub name: String,");
    let _ = writeln!(s, "    pub note: Option<String>,");
    let _ = writeln!(s, "    pub rank: i32,");
    let _ = writeln!(s, "    #[field(default = true)]");
    let _ = writeln!(s, "    pub active: bool,");
    if i % 2 == 1 {
        let _ = writeln!(
            s,
            "    #[field(references = \"Model0\", on_delete = \"cascade\")]"
        );
        let _ = writeln!(s, "    pub owner_id: String,");
    }
    if i % 4 == 2 {
        let _ = writeln!(
            s,
            "    #[field(references = \"Model{}\", on_delete = \"cascade\")]",
            i - 1
        );
        let _ = writeln!(s, "    pub parent_id: Option<String>,");
    }
    if i.is_multiple_of(3) {
        let _ = writeln!(s, "    #[field(index)]");
        let _ = writeln!(s, "    pub code: Option<String>,");
    }
    let _ = writeln!(s, "}}");
    s
}

fn toml_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn write_if_changed(path: &Path, content: &str) {
    if fs::read_to_string(path).is_ok_and(|old| old == content) {
        return;
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    }
    fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------------------------
// Databases

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

/// A temp directory for the SQLite files, removed when the bench ends (or panics).
struct Scratch {
    dir: PathBuf,
    next: std::cell::Cell<usize>,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("dataflow-boot-bench-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        Scratch {
            dir,
            next: std::cell::Cell::new(0),
        }
    }

    /// A URL to a SQLite file that does not exist yet.
    fn fresh_sqlite(&self) -> String {
        let k = self.next.get();
        self.next.set(k + 1);
        format!(
            "sqlite://{}",
            self.dir.join(format!("boot-{k}.db")).display()
        )
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Where fresh PostgreSQL databases come from.
enum PgSource {
    /// `DATAFLOW_BENCH_POSTGRES_URL`: we create (and afterwards drop) the databases.
    Server {
        admin_url: String,
        created: std::cell::RefCell<Vec<String>>,
    },
    /// The test harness; the first database was made while probing for a server.
    Harness {
        first: std::cell::RefCell<Option<String>>,
    },
}

impl PgSource {
    /// `None` (after printing why) when there is no PostgreSQL to benchmark.
    fn discover() -> Option<PgSource> {
        if let Some(url) = std::env::var(BENCH_PG_ENV)
            .ok()
            .filter(|u| !u.trim().is_empty())
        {
            return Some(PgSource::Server {
                admin_url: url.trim().to_string(),
                created: Default::default(),
            });
        }
        match postgres::fresh_database("boot") {
            Some(url) => Some(PgSource::Harness {
                first: std::cell::RefCell::new(Some(url)),
            }),
            None => {
                eprintln!("boot bench: no PostgreSQL (set {BENCH_PG_ENV} or install PostgreSQL); SQLite only");
                None
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            PgSource::Server { .. } => format!("server from {BENCH_PG_ENV}"),
            PgSource::Harness { .. } => "test harness (tests/support/postgres.rs)".to_string(),
        }
    }

    /// A URL to a new, empty database.
    fn fresh(&self) -> String {
        match self {
            PgSource::Harness { first } => first
                .borrow_mut()
                .take()
                .or_else(|| postgres::fresh_database("boot"))
                .expect("PostgreSQL went away"),
            PgSource::Server { admin_url, created } => {
                let name = format!(
                    "dataflow_boot_bench_{}_{}",
                    std::process::id(),
                    created.borrow().len()
                );
                let mut conn = PgConnection::establish(admin_url)
                    .unwrap_or_else(|e| panic!("{BENCH_PG_ENV}: connecting: {e}"));
                conn.batch_execute(&format!("CREATE DATABASE \"{name}\""))
                    .unwrap_or_else(|e| panic!("{BENCH_PG_ENV}: CREATE DATABASE {name}: {e}"));
                created.borrow_mut().push(name.clone());
                with_database(admin_url, &name)
            }
        }
    }
}

impl Drop for PgSource {
    fn drop(&mut self) {
        if let PgSource::Server { admin_url, created } = self {
            let Ok(mut conn) = PgConnection::establish(admin_url) else {
                return;
            };
            for name in created.borrow().iter() {
                let _ = conn.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\""));
            }
        }
    }
}

/// `url` with its database (path) replaced by `db`, keeping user, host, port and query.
fn with_database(url: &str, db: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| scheme_end + i);
    let after = &url[authority_end..];
    let query = &after[after.find(['?', '#']).unwrap_or(after.len())..];
    format!("{}/{db}{query}", &url[..authority_end])
}

// ---------------------------------------------------------------------------------------------
// Measuring

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Phase {
    /// Empty database.
    First,
    /// Same database, unchanged models.
    Second,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    Full,
    Minimal,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Minimal => "minimal",
        }
    }
}

/// One boot: the bench's wall time plus the child's own account of it.
struct Sample {
    /// Spawn to the `ready` line, measured here.
    wall_ms: f64,
    /// The child's `ready` JSON: pre_main_ms, runtime_ms, build_ms, main_to_ready_ms.
    report: Value,
}

type Key = (Backend, usize, Phase, Mode);

#[derive(Default)]
struct Results {
    samples: BTreeMap<Key, Vec<Sample>>,
}

impl Results {
    fn push(&mut self, key: Key, sample: Sample) {
        self.samples.entry(key).or_default().push(sample);
    }

    /// Median of the wall times, if measured.
    fn wall(&self, key: Key) -> Option<f64> {
        self.samples
            .get(&key)
            .map(|s| median(s.iter().map(|s| s.wall_ms).collect()))
    }

    /// Median of one of the child's timings.
    fn reported(&self, key: Key, field: &str) -> Option<f64> {
        let values: Vec<f64> = self
            .samples
            .get(&key)?
            .iter()
            .filter_map(|s| s.report[field].as_f64())
            .collect();
        (!values.is_empty()).then(|| median(values))
    }
}

/// All runs for one backend and one crate (see the module docs for the schedule).
fn measure(
    results: &mut Results,
    backend: Backend,
    c: &GeneratedCrate,
    mut fresh: impl FnMut() -> String,
) {
    // Warm-up, not recorded: pages the binary in and wakes the database server.
    boot(c, &fresh(), Mode::Full);
    for run in 0..RUNS {
        let a = fresh();
        results.push(
            (backend, c.models, Phase::First, Mode::Full),
            boot(c, &a, Mode::Full),
        );
        for round in 0..SECOND_BOOTS_PER_RUN {
            let order = if (run + round) % 2 == 0 {
                [Mode::Full, Mode::Minimal]
            } else {
                [Mode::Minimal, Mode::Full]
            };
            for mode in order {
                results.push((backend, c.models, Phase::Second, mode), boot(c, &a, mode));
            }
        }
        let b = fresh();
        results.push(
            (backend, c.models, Phase::First, Mode::Minimal),
            boot(c, &b, Mode::Minimal),
        );
    }
}

/// Spawns the crate's binary and times it from spawn to its `ready` line.
fn boot(c: &GeneratedCrate, url: &str, mode: Mode) -> Sample {
    let spawned_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let started = Instant::now();
    let mut child = Command::new(&c.binary)
        .arg(url)
        .arg(mode.arg())
        .env(SPAWNED_AT_ENV, spawned_at.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", c.binary.display()));
    // Drained on its own thread so a chatty child cannot fill the pipe and stall.
    let mut stderr_pipe = child.stderr.take().expect("piped stderr");
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let mut ready = None;
    for line in BufReader::new(child.stdout.take().expect("piped stdout")).lines() {
        let line = line.expect("read the child's stdout");
        if let (None, Some(json)) = (&ready, line.strip_prefix("ready ")) {
            ready = Some((started.elapsed(), json.to_string()));
        }
    }
    let stderr = stderr_reader.join().unwrap_or_default();
    let status = child.wait().expect("wait for the child");
    let what = format!("{} {mode:?} on {url}", c.binary.display());
    let Some((elapsed, json)) = ready.filter(|_| status.success()) else {
        panic!("{what}: no `ready` line ({status}); stderr:\n{stderr}");
    };
    let report: Value = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("{what}: bad ready line {json:?}: {e}"));
    assert_eq!(
        report["models"], c.models,
        "{what}: wrong number of models registered"
    );
    Sample {
        wall_ms: elapsed.as_secs_f64() * 1e3,
        report,
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    if xs.len().is_multiple_of(2) {
        (xs[mid - 1] + xs[mid]) / 2.0
    } else {
        xs[mid]
    }
}

// ---------------------------------------------------------------------------------------------
// Report

fn print_report(
    results: &Results,
    backends: &[Backend],
    crates: &[GeneratedCrate],
    build_time: BuildTime,
    pg: Option<&PgSource>,
) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut failures = Vec::new();
    let mut out = String::new();
    let _ = writeln!(out, "\n## Boot to ready, whole process (medians, ms)\n");
    let _ = writeln!(
        out,
        "First boot: {RUNS} runs, a fresh database each. Second boot: {} runs on the databases of those first boots.\n",
        RUNS * SECOND_BOOTS_PER_RUN
    );
    let _ = writeln!(
        out,
        "| backend | models | boot | full | minimal | full / minimal | targets (second boot) |"
    );
    let _ = writeln!(out, "|---|---:|---|---:|---:|---:|---|");
    for &backend in backends {
        for c in crates {
            for phase in [Phase::First, Phase::Second] {
                let full = results.wall((backend, c.models, phase, Mode::Full));
                let minimal = results.wall((backend, c.models, phase, Mode::Minimal));
                let (Some(full), Some(minimal)) = (full, minimal) else {
                    continue;
                };
                let ratio = full / minimal;
                let mut targets = Vec::new();
                if phase == Phase::Second {
                    if let Some(&(_, limit)) =
                        SECOND_BOOT_TARGET_MS.iter().find(|(n, _)| *n == c.models)
                    {
                        let ok = full <= limit;
                        targets.push(format!("full ≤ {limit:.0} ms: {}", verdict(ok)));
                        if !ok {
                            failures.push(format!(
                                "{} {} models: second boot full {full:.1} ms > {limit:.0} ms",
                                backend.name(),
                                c.models
                            ));
                        }
                    }
                    let ok = ratio <= RATIO_TARGET;
                    targets.push(format!("≤ {RATIO_TARGET}× minimal: {}", verdict(ok)));
                    if !ok {
                        failures.push(format!(
                            "{} {} models: second boot full/minimal {ratio:.2} > {RATIO_TARGET}",
                            backend.name(),
                            c.models
                        ));
                    }
                }
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {full:.1} | {minimal:.1} | {ratio:.2} | {} |",
                    backend.name(),
                    c.models,
                    if phase == Phase::First {
                        "first (empty db)"
                    } else {
                        "second (same db)"
                    },
                    if targets.is_empty() {
                        "—".to_string()
                    } else {
                        targets.join("; ")
                    },
                );
            }
        }
    }
    let _ = writeln!(out);
    if failures.is_empty() {
        let _ = writeln!(out, "Targets: all met (second boot full ≤ 50 ms at 10 models, ≤ 150 ms at 100, ≤ {RATIO_TARGET}× minimal).");
    } else {
        let _ = writeln!(out, "Targets missed:");
        for f in &failures {
            let _ = writeln!(out, "- {f}");
        }
    }

    let _ = writeln!(
        out,
        "\n### Where the time goes (medians as reported by the booted process, ms)\n"
    );
    let _ = writeln!(out, "| backend | models | boot | mode | spawn → main | tokio runtime | `build()` | spawn → ready |");
    let _ = writeln!(out, "|---|---:|---|---|---:|---:|---:|---:|");
    for &backend in backends {
        for c in crates {
            for phase in [Phase::First, Phase::Second] {
                for mode in [Mode::Full, Mode::Minimal] {
                    let key = (backend, c.models, phase, mode);
                    let Some(wall) = results.wall(key) else {
                        continue;
                    };
                    let cell = |field: &str| {
                        results
                            .reported(key, field)
                            .map_or("?".to_string(), |v| format!("{v:.1}"))
                    };
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {} | {} | {} | {} | {wall:.1} |",
                        backend.name(),
                        c.models,
                        if phase == Phase::First {
                            "first"
                        } else {
                            "second"
                        },
                        mode.arg(),
                        cell("pre_main_ms"),
                        cell("runtime_ms"),
                        cell("build_ms"),
                    );
                }
            }
        }
    }

    let _ = writeln!(
        out,
        "\n\"spawn → main\" is exec, dynamic linking (the binary links libpq and its ~20 shared \
         libraries whatever the backend) and Rust's start-up; \"`build()`\" is `DataFlow::builder(..).build().await`."
    );

    let _ = writeln!(out, "\n### Build\n");
    let biggest = crates.last().expect("crates");
    let size = fs::metadata(&biggest.binary).map_or(0, |m| m.len());
    let _ = writeln!(
        out,
        "Release build of the {}-model crate alone (dependencies built, source touched, `cargo build --release`): {:.1} s; binary {:.1} MB.",
        biggest.models,
        build_time.elapsed.as_secs_f64(),
        size as f64 / 1e6
    );
    if !build_time.also_compiled.is_empty() {
        let _ = writeln!(
            out,
            "(Not the crate alone: its dependencies kept changing, and the timed build also compiled {}.)",
            build_time.also_compiled.join(", ")
        );
    }

    let _ = writeln!(out, "\n### Setup\n");
    let _ = writeln!(out, "- command: `{COMMAND}`");
    let _ = writeln!(
        out,
        "- {cores} cores; generated crates and their target dir under `{}`",
        biggest
            .dir
            .parent()
            .map_or(String::new(), |p| p.display().to_string())
    );
    let _ = writeln!(out, "- full = `DataFlow::builder(url).build()`; minimal = `.skip_migration(true).skip_registry(true).enable_model_persistence(false).auto_migrate(false)`");
    let _ = writeln!(out, "- first boot: a fresh database per run; second boot: the database of that run's first full boot (full and minimal alternate)");
    let _ = writeln!(
        out,
        "- PostgreSQL: {}",
        pg.map_or_else(|| "not available, skipped".to_string(), PgSource::describe)
    );
    print!("{out}");
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}
