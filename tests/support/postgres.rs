//! Real-PostgreSQL harness for integration tests.
//!
//! ```ignore
//! mod support;
//! use support::postgres::fresh_database;
//!
//! #[test]
//! fn works_on_postgres() {
//!     let Some(url) = fresh_database("works_on_postgres") else { return };
//!     // `url` names a new, empty database; connect to it with diesel's PgConnection etc.
//! }
//! ```
//!
//! Where the server comes from:
//! * `DATAFLOW_TEST_POSTGRES_URL` set (non-empty): databases are created on that server (the URL's
//!   user needs CREATEDB). A server given this way that does not work is a test failure.
//! * otherwise one throwaway cluster per test process is started lazily, from `initdb`/`pg_ctl`/
//!   `postgres` found on `PATH` or under `/usr/lib/postgresql/*/bin` (highest version). As root
//!   the binaries run as the `postgres` OS user (created if missing). A detached watchdog stops
//!   the cluster and deletes its directory once the test process is gone (exit, panic or kill).
//!
//! No PostgreSQL available: `fresh_database` prints `skipping PostgreSQL: <reason>` and returns
//! `None` — unless the env var `CI` is set, in which case it panics.

#![allow(dead_code)]

use std::env;
use std::fs::{self, File};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};

/// Env var naming an existing server to use instead of a throwaway cluster.
pub const URL_ENV: &str = "DATAFLOW_TEST_POSTGRES_URL";

/// How long the throwaway server may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `initdb` may take.
const INITDB_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of server log quoted in error messages.
const LOG_TAIL_LINES: usize = 30;

/// A URL (`postgres://...`) to a new, empty database on a real PostgreSQL server, unique per call
/// (name derived from `hint` plus pid and a counter, sanitized to `[a-z0-9_]`, max 63 chars).
///
/// Returns `None` when no PostgreSQL is available and the env var `CI` is unset (prints a one-line
/// `skipping PostgreSQL: <reason>` to stderr). When `CI` is set and PostgreSQL cannot be had,
/// panics: a missing PostgreSQL is a test failure in CI, not a skip.
pub fn fresh_database(hint: &str) -> Option<String> {
    let server = match server() {
        Ok(server) => server,
        Err(err) => {
            if ci() {
                panic!(
                    "PostgreSQL is required because CI is set, but it is unavailable: {}{}",
                    err.summary,
                    details_block(&err.details)
                );
            }
            eprintln!("skipping PostgreSQL: {}", err.summary);
            return None;
        }
    };
    match server.create_database(hint) {
        Ok(url) => Some(url),
        Err(msg) => panic!(
            "could not create a test database on PostgreSQL ({}): {msg}{}",
            server.origin,
            details_block(&server.log_tail())
        ),
    }
}

/// URL of a server address where nothing listens (for "server is down" tests):
/// `postgres://postgres@127.0.0.1:<free port>/x`.
pub fn unreachable_url() -> String {
    let port = free_port().unwrap_or_else(|e| panic!("unreachable_url: {e}"));
    format!("postgres://postgres@127.0.0.1:{port}/x")
}

/// The login role [`as_plain_role`] hands databases to.
pub const PLAIN_ROLE: &str = "dataflow_plain";

/// Hands `url`'s database (and its `public` schema) to [`PLAIN_ROLE`], a login role that is
/// neither superuser nor `BYPASSRLS`, and returns the URL that connects as it. PostgreSQL exempts
/// superusers (what the harness connects as) from every row-level security policy; tests of
/// policies connect as this role, which then owns the tables it creates, as applications do.
pub fn as_plain_role(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let (_, host_db) = rest.split_once('@').expect("a URL with a user");
    let db = host_db
        .rsplit('/')
        .next()
        .and_then(|d| d.split('?').next())
        .expect("a URL naming a database");
    let mut admin = PgConnection::establish(url).unwrap_or_else(|e| panic!("as_plain_role: {e}"));
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {PLAIN_ROLE} LOGIN PASSWORD '{PLAIN_ROLE}' NOSUPERUSER NOBYPASSRLS; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$; \
             ALTER DATABASE \"{db}\" OWNER TO {PLAIN_ROLE}; ALTER SCHEMA public OWNER TO {PLAIN_ROLE};"
        ))
        .unwrap_or_else(|e| panic!("as_plain_role: {e}"));
    format!("{scheme}://{PLAIN_ROLE}:{PLAIN_ROLE}@{host_db}")
}

// ---------------------------------------------------------------------------------------------

struct Unavailable {
    /// One line, used for the skip message.
    summary: String,
    /// Multi-line details (command output, server log tail), used in panics.
    details: String,
}

impl Unavailable {
    fn new(summary: impl Into<String>) -> Self {
        Unavailable {
            summary: summary.into(),
            details: String::new(),
        }
    }
    fn with_details(summary: impl Into<String>, details: impl Into<String>) -> Self {
        Unavailable {
            summary: summary.into(),
            details: details.into(),
        }
    }
}

struct Server {
    /// URL of a database on the server we may connect to and run CREATE DATABASE from.
    admin_url: String,
    /// Human-readable description, for error messages.
    origin: String,
    /// Our own cluster, if we started one.
    cluster: Option<Cluster>,
}

impl Server {
    fn log_tail(&self) -> String {
        self.cluster
            .as_ref()
            .map(Cluster::log_tail)
            .unwrap_or_default()
    }

    fn create_database(&self, hint: &str) -> Result<String, String> {
        let mut conn = connect_with_retry(&self.admin_url, Duration::from_secs(10))?;
        let mut last_error = String::new();
        for _ in 0..50 {
            let name = database_name(hint);
            match conn.batch_execute(&format!("CREATE DATABASE \"{name}\"")) {
                Ok(()) => return with_database(&self.admin_url, &name),
                Err(e) => {
                    last_error = format!("CREATE DATABASE \"{name}\": {e}");
                    let msg = e.to_string();
                    if msg.contains("already exists") {
                        // Left over from an earlier run on an external server: take the next name.
                        continue;
                    }
                    if msg.contains("being accessed by other users") {
                        // Someone is connected to template1; wait a little and retry.
                        sleep(Duration::from_millis(200));
                        continue;
                    }
                    return Err(last_error);
                }
            }
        }
        Err(last_error)
    }
}

fn server() -> Result<&'static Server, &'static Unavailable> {
    static SERVER: OnceLock<Result<Server, Unavailable>> = OnceLock::new();
    SERVER.get_or_init(init_server).as_ref()
}

fn init_server() -> Result<Server, Unavailable> {
    if let Some(url) = env::var(URL_ENV).ok().filter(|u| !u.trim().is_empty()) {
        let url = url.trim().to_string();
        // Validate the shape now so that a typo is reported clearly.
        if let Err(e) = with_database(&url, "x") {
            panic!("{URL_ENV} is not a usable postgres:// URL: {e}");
        }
        return Ok(Server {
            origin: format!("server from {URL_ENV}"),
            admin_url: url,
            cluster: None,
        });
    }
    let cluster = Cluster::start()?;
    let admin_url = format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port);
    if let Err(e) = connect_with_retry(&admin_url, Duration::from_secs(10)) {
        return Err(Unavailable::with_details(
            format!("throwaway PostgreSQL started but does not accept connections: {e}"),
            cluster.log_tail(),
        ));
    }
    eprintln!(
        "PostgreSQL test cluster ready: {admin_url} (data in {})",
        cluster.root.display()
    );
    Ok(Server {
        origin: format!("throwaway cluster at {admin_url}"),
        admin_url,
        cluster: Some(cluster),
    })
}

/// One throwaway cluster (data dir, socket and logs live in `root`).
struct Cluster {
    bin: PathBuf,
    root: PathBuf,
    /// Run the PostgreSQL binaries as the `postgres` OS user (we are root).
    as_postgres_user: bool,
    port: u16,
}

impl Cluster {
    fn start() -> Result<Cluster, Unavailable> {
        let bin = find_bin_dir().ok_or_else(|| {
            Unavailable::new(format!(
                "no initdb/pg_ctl/postgres found on PATH or under /usr/lib/postgresql/*/bin \
                 (install PostgreSQL, e.g. `apt-get install postgresql`, or set {URL_ENV})"
            ))
        })?;
        let as_postgres_user = effective_uid_is_root();
        if as_postgres_user {
            ensure_postgres_user()?;
        }
        let root = make_root_dir(as_postgres_user)?;
        let mut cluster = Cluster {
            bin,
            root,
            as_postgres_user,
            port: 0,
        };
        // Before anything else, so that whatever we leave behind is cleaned up.
        cluster.spawn_watchdog()?;
        cluster.initdb()?;

        let mut attempt = 0;
        loop {
            attempt += 1;
            cluster.port = free_port().map_err(Unavailable::new)?;
            match cluster.pg_ctl_start() {
                Ok(()) => return Ok(cluster),
                // Lost the race for the port to another process: try another one.
                Err(e) if attempt < 3 && cluster.log_mentions_bind_failure() => {
                    eprintln!(
                        "PostgreSQL test cluster: port {} taken, retrying ({})",
                        cluster.port, e.summary
                    );
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn starting_marker(&self) -> PathBuf {
        self.root.join("starting")
    }

    fn log_file(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    fn log_tail(&self) -> String {
        match fs::read_to_string(self.log_file()) {
            Ok(log) => {
                let lines: Vec<&str> = log.lines().collect();
                let start = lines.len().saturating_sub(LOG_TAIL_LINES);
                format!(
                    "server log tail ({}):\n{}",
                    self.log_file().display(),
                    lines[start..].join("\n")
                )
            }
            Err(e) => format!("(no server log at {}: {e})", self.log_file().display()),
        }
    }

    fn log_last_line(&self) -> Option<String> {
        fs::read_to_string(self.log_file())
            .ok()
            .and_then(|log| last_line(&log))
    }

    fn log_mentions_bind_failure(&self) -> bool {
        fs::read_to_string(self.log_file())
            .map(|log| log.contains("could not bind") || log.contains("already in use"))
            .unwrap_or(false)
    }

    /// A command running `program` from the PostgreSQL bin dir, as the right OS user.
    fn pg_command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        // The cwd may be unreadable for the postgres user (e.g. under /root); messages in English.
        cmd.current_dir(&self.root)
            .env("LC_ALL", "C")
            .env("LANG", "C");
        cmd
    }

    fn initdb(&self) -> Result<(), Unavailable> {
        let mut cmd = self.pg_command("initdb");
        cmd.arg("-D").arg(self.data_dir()).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        let out = self.root.join("initdb.out");
        match run_with_timeout(cmd, INITDB_TIMEOUT, &out) {
            Ok((status, _)) if status.success() => Ok(()),
            Ok((status, output)) => Err(Unavailable::with_details(
                format!("initdb failed ({status}): {}", first_line(&output)),
                format!("initdb output:\n{output}"),
            )),
            Err(e) => Err(e),
        }
    }

    fn pg_ctl_start(&self) -> Result<(), Unavailable> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200",
            self.port,
            sh_quote(&self.root.to_string_lossy()),
        );
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_file())
            .args([
                "-w",
                "-t",
                &START_TIMEOUT.as_secs().to_string(),
                "-o",
                &options,
                "start",
            ]);
        let out = self.root.join("pg_ctl-start.out");
        // Tells the watchdog that a start may be in flight (see spawn_watchdog).
        let _ = File::create(self.starting_marker());
        let result = run_with_timeout(cmd, START_TIMEOUT + Duration::from_secs(10), &out);
        let _ = fs::remove_file(self.starting_marker());
        match result {
            Ok((status, _)) if status.success() => Ok(()),
            Ok((status, output)) => Err(Unavailable::with_details(
                format!(
                    "PostgreSQL server failed to start (pg_ctl {status}, waited up to {}s): {}",
                    START_TIMEOUT.as_secs(),
                    self.log_last_line().unwrap_or_else(|| first_line(&output))
                ),
                format!("pg_ctl output:\n{output}\n{}", self.log_tail()),
            )),
            Err(e) => Err(Unavailable::with_details(
                format!(
                    "PostgreSQL server did not come up: {}{}",
                    e.summary,
                    self.log_last_line()
                        .map(|l| format!(" (server log: {l})"))
                        .unwrap_or_default()
                ),
                format!("{}\n{}", e.details, self.log_tail()),
            )),
        }
    }

    /// Detached process that waits for this test process to go away, then stops the cluster and
    /// removes its directory. Survives panics, aborts, SIGKILL and Ctrl-C of the test process.
    fn spawn_watchdog(&self) -> Result<(), Unavailable> {
        let pid = std::process::id();
        let runuser = if self.as_postgres_user {
            "runuser -u postgres -- "
        } else {
            ""
        };
        // If we died while `pg_ctl start` was in flight, the orphaned pg_ctl still launches the
        // postmaster: give it a moment to write postmaster.pid so that `stop` can find it.
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
             cd /; \
             if [ -e {starting} ]; then sleep 2; fi; \
             for attempt in 1 2 3; do \
               {runuser}{pg_ctl} -D {data} status >/dev/null 2>&1 || break; \
               {runuser}{pg_ctl} -D {data} -m immediate -w -t 20 stop >/dev/null 2>&1; \
             done; \
             rm -rf {root}",
            starting = sh_quote(&self.starting_marker().to_string_lossy()),
            pg_ctl = sh_quote(&self.bin.join("pg_ctl").to_string_lossy()),
            data = sh_quote(&self.data_dir().to_string_lossy()),
            root = sh_quote(&self.root.to_string_lossy()),
        );
        // `setsid` puts the watchdog in its own session, so Ctrl-C on the test run does not kill it
        // (pg_ctl detaches the postmaster the same way).
        let mut cmd = if find_on_path("setsid").is_some() {
            let mut c = Command::new("setsid");
            c.args(["sh", "-c", &script]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &script]);
            c
        };
        cmd.current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Not waited for: it outlives us by design.
        cmd.spawn().map(drop).map_err(|e| {
            Unavailable::new(format!("could not spawn the cleanup watchdog (sh): {e}"))
        })
    }
}

/// Runs `cmd` (in its own process group) with stdin closed and stdout+stderr going to `out`;
/// kills the whole group after `timeout`. Output goes to a file rather than a pipe so that a
/// daemon inheriting it can never block us.
fn run_with_timeout(
    mut cmd: Command,
    timeout: Duration,
    out: &Path,
) -> Result<(ExitStatus, String), Unavailable> {
    let name = Path::new(cmd.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let name = match (name.as_deref(), cmd.get_args().nth(3)) {
        (Some("runuser"), Some(program)) => Path::new(program)
            .file_name()
            .unwrap_or(program)
            .to_string_lossy()
            .into_owned(),
        (name, _) => name.unwrap_or("command").to_string(),
    };
    let describe = format!("{cmd:?}");
    let file = File::create(out)
        .map_err(|e| Unavailable::new(format!("creating {}: {e}", out.display())))?;
    let file2 = file
        .try_clone()
        .map_err(|e| Unavailable::new(e.to_string()))?;
    cmd.stdin(Stdio::null())
        .stdout(file)
        .stderr(file2)
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| {
        Unavailable::with_details(format!("could not run {name}: {e}"), describe.clone())
    })?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok((status, fs::read_to_string(out).unwrap_or_default())),
            Ok(None) if Instant::now() >= deadline => {
                // Kill the group: as root the direct child is `runuser`, not the PostgreSQL tool.
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", child.id())])
                    .stderr(Stdio::null())
                    .status();
                let _ = child.kill();
                let _ = child.wait();
                let output = fs::read_to_string(out).unwrap_or_default();
                return Err(Unavailable::with_details(
                    format!("{name} did not finish within {}s", timeout.as_secs()),
                    format!("command: {describe}\noutput:\n{output}"),
                ));
            }
            Ok(None) => sleep(Duration::from_millis(50)),
            Err(e) => return Err(Unavailable::new(format!("waiting for {name}: {e}"))),
        }
    }
}

fn connect_with_retry(url: &str, patience: Duration) -> Result<PgConnection, String> {
    let deadline = Instant::now() + patience;
    loop {
        match PgConnection::establish(url) {
            Ok(conn) => return Ok(conn),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("connecting to {url}: {}", e.to_string().trim()))
            }
            Err(_) => sleep(Duration::from_millis(200)),
        }
    }
}

/// `hint` sanitized to `[a-z0-9_]`, plus `_<pid>_<counter>`, at most 63 bytes.
fn database_name(hint: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let suffix = format!("_{}_{n}", std::process::id());
    let mut base: String = hint
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if base.trim_matches('_').is_empty() {
        base = "db".to_string();
    }
    base.truncate(63 - suffix.len());
    base + &suffix
}

/// `url` with its database (path) replaced by `db`, keeping user, host, port and query.
fn with_database(url: &str, db: &str) -> Result<String, String> {
    let rest_start = ["postgres://", "postgresql://"]
        .iter()
        .find(|scheme| url.starts_with(*scheme))
        .map(|scheme| scheme.len())
        .ok_or_else(|| format!("{url:?} does not start with postgres:// or postgresql://"))?;
    let authority_end = url[rest_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| rest_start + i);
    let after = &url[authority_end..];
    let tail_start = after.find(['?', '#']).unwrap_or(after.len());
    Ok(format!(
        "{}/{db}{}",
        &url[..authority_end],
        &after[tail_start..]
    ))
}

fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("binding 127.0.0.1:0: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn ci() -> bool {
    env::var("CI").is_ok_and(|v| {
        let v = v.trim().to_ascii_lowercase();
        !(v.is_empty() || v == "0" || v == "false" || v == "no")
    })
}

fn effective_uid_is_root() -> bool {
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
            // Uid: real effective saved fs
            if let Some(euid) = line.split_whitespace().nth(2) {
                return euid == "0";
            }
        }
    }
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn postgres_user_exists() -> bool {
    Command::new("id")
        .args(["-u", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// initdb/postgres refuse to run as root: make sure the `postgres` OS user exists.
fn ensure_postgres_user() -> Result<(), Unavailable> {
    if postgres_user_exists() {
        return Ok(());
    }
    let output = Command::new("useradd")
        .args(["--system", "postgres"])
        .output();
    // Re-check rather than trusting the exit status: another test process may have won the race.
    if postgres_user_exists() {
        return Ok(());
    }
    let why = match output {
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => e.to_string(),
    };
    Err(Unavailable::new(format!(
        "running as root and there is no `postgres` OS user to run PostgreSQL as; \
         `useradd --system postgres` failed: {why}"
    )))
}

/// A fresh directory owned by the user that will run PostgreSQL (and usable by it).
fn make_root_dir(as_postgres_user: bool) -> Result<PathBuf, Unavailable> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!(
        "dataflow-pg-{}-{:x}",
        std::process::id(),
        stamp % 0xffff_ffff
    );
    let mut candidates = vec![env::temp_dir()];
    if candidates[0] != Path::new("/tmp") {
        candidates.push(PathBuf::from("/tmp"));
    }
    let mut problems = Vec::new();
    for base in candidates {
        let dir = base.join(&name);
        // The unix socket path (dir + "/.s.PGSQL.NNNNN") must stay below ~107 bytes.
        if dir.as_os_str().len() > 80 {
            problems.push(format!(
                "{}: path too long for a unix socket",
                dir.display()
            ));
            continue;
        }
        if let Err(e) = fs::create_dir_all(&dir) {
            problems.push(format!("{}: {e}", dir.display()));
            continue;
        }
        if !as_postgres_user {
            return Ok(dir);
        }
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
        let chown = Command::new("chown").arg("postgres").arg(&dir).output();
        let usable = matches!(&chown, Ok(o) if o.status.success())
            && Command::new("runuser")
                .args(["-u", "postgres", "--", "test", "-w"])
                .arg(&dir)
                .current_dir("/")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        if usable {
            return Ok(dir);
        }
        problems.push(format!(
            "{}: not writable by the postgres user ({chown:?})",
            dir.display()
        ));
        let _ = fs::remove_dir_all(&dir);
    }
    Err(Unavailable::new(format!(
        "no usable temporary directory for the PostgreSQL cluster: {}",
        problems.join("; ")
    )))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

/// Directory holding `initdb`, `pg_ctl` and `postgres`.
fn find_bin_dir() -> Option<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|p| is_executable(&dir.join(p)))
    };
    if let Some(initdb) = find_on_path("initdb") {
        // Follow symlinks such as /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb.
        if let Some(real_dir) = fs::canonicalize(&initdb)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            if complete(&real_dir) {
                return Some(real_dir);
            }
        }
        if let Some(dir) = initdb.parent().filter(|d| complete(d)) {
            return Some(dir.to_path_buf());
        }
    }
    let mut versions: Vec<(Vec<u64>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version: Vec<u64> = name
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<_>>()?;
            let bin = entry.path().join("bin");
            complete(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("(no output)")
        .to_string()
}

fn last_line(s: &str) -> Option<String> {
    s.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(str::to_string)
}

fn details_block(details: &str) -> String {
    if details.trim().is_empty() {
        String::new()
    } else {
        format!("\n{details}")
    }
}

// ---------------------------------------------------------------------------------------------
// A cluster of a test's own, for tests that stop, restart or disturb the server.

/// A throwaway PostgreSQL cluster that belongs to one test, so that the test may stop, restart
/// or terminate the server's connections without disturbing the shared cluster other tests use
/// at the same time. Stopped and deleted when dropped (and by the watchdog if the process dies).
pub struct OwnCluster {
    cluster: Cluster,
    admin_url: String,
}

/// Starts a cluster of the caller's own (see [`OwnCluster`]). `None` (after a `skipping
/// PostgreSQL` line) when no PostgreSQL binaries are available and `CI` is unset; panics in CI.
pub fn own_cluster() -> Option<OwnCluster> {
    let started = Cluster::start().and_then(|cluster| {
        let admin_url = format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port);
        match connect_with_retry(&admin_url, Duration::from_secs(10)) {
            Ok(_) => Ok(OwnCluster { cluster, admin_url }),
            Err(e) => Err(Unavailable::with_details(
                format!("own PostgreSQL cluster started but does not accept connections: {e}"),
                cluster.log_tail(),
            )),
        }
    });
    match started {
        Ok(own) => Some(own),
        Err(err) if ci() => panic!(
            "PostgreSQL is required because CI is set, but an own cluster cannot start: {}{}",
            err.summary,
            details_block(&err.details)
        ),
        Err(err) => {
            eprintln!("skipping PostgreSQL: {}", err.summary);
            None
        }
    }
}

impl OwnCluster {
    /// A URL to a new, empty database on this cluster.
    pub fn fresh_database(&self, hint: &str) -> String {
        let server = Server {
            admin_url: self.admin_url.clone(),
            origin: "own cluster".into(),
            cluster: None,
        };
        server
            .create_database(hint)
            .unwrap_or_else(|e| panic!("creating a database on the own cluster: {e}"))
    }

    /// Terminates every server process connected to the database of `url` (the way an operator
    /// or a failover does), except the one asking. Returns how many were terminated.
    pub fn terminate_connections(&self, url: &str) -> usize {
        let db = url
            .rsplit('/')
            .next()
            .and_then(|tail| tail.split(['?', '#']).next())
            .unwrap_or_default();
        use diesel::RunQueryDsl;
        let mut conn = connect_with_retry(&self.admin_url, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("terminate_connections: {e}"));
        #[derive(diesel::QueryableByName)]
        struct Terminated {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let rows: Vec<Terminated> = diesel::sql_query(
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind::<diesel::sql_types::Text, _>(db)
        .load(&mut conn)
        .unwrap_or_else(|e| panic!("terminate_connections: {e}"));
        rows.first().map_or(0, |r| r.n as usize)
    }

    /// Stops the server (`pg_ctl stop -m fast`): every connection ends, new ones are refused.
    pub fn stop(&self) {
        self.pg_ctl(&["-m", "fast", "-w", "-t", "30", "stop"], "stop");
    }

    /// Starts the stopped server again, on the same port.
    pub fn start(&self) {
        if let Err(e) = self.cluster.pg_ctl_start() {
            panic!(
                "restarting the own cluster failed: {}{}",
                e.summary,
                details_block(&e.details)
            );
        }
    }

    /// `pg_ctl restart -m fast`: ends every connection and comes back on the same port.
    pub fn restart(&self) {
        self.pg_ctl(&["-m", "fast", "-w", "-t", "30", "restart"], "restart");
    }

    fn pg_ctl(&self, args: &[&str], what: &str) {
        let mut cmd = self.cluster.pg_command("pg_ctl");
        cmd.arg("-D")
            .arg(self.cluster.data_dir())
            .arg("-l")
            .arg(self.cluster.log_file())
            .args(args);
        let out = self.cluster.root.join(format!("pg_ctl-{what}.out"));
        match run_with_timeout(cmd, START_TIMEOUT + Duration::from_secs(10), &out) {
            Ok((status, _)) if status.success() => {}
            Ok((status, output)) => panic!(
                "pg_ctl {what} on the own cluster failed ({status}): {output}\n{}",
                self.cluster.log_tail()
            ),
            Err(e) => panic!("pg_ctl {what} on the own cluster: {}", e.summary),
        }
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let mut cmd = self.cluster.pg_command("pg_ctl");
        cmd.arg("-D").arg(self.cluster.data_dir()).args([
            "-m",
            "immediate",
            "-w",
            "-t",
            "20",
            "stop",
        ]);
        let out = self.cluster.root.join("pg_ctl-drop.out");
        let _ = run_with_timeout(cmd, Duration::from_secs(30), &out);
        let _ = fs::remove_dir_all(&self.cluster.root);
    }
}
