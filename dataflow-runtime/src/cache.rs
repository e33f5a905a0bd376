//! The query cache (on by default; `enable_caching(false)` turns it off):
//! Read, List, Count and Aggregate results per model, keyed by tenant, model and the
//! input JSON, bounded in bytes, never stale. Only answers likely to be
//! read again are stored (see [`Admission`]), so a workload that never
//! hits pays almost nothing.
//!
//! # Why it is never stale
//!
//! Every model has a generation counter. A read takes the generation before
//! it queries the database and stores its result only if the generation is
//! still the same afterwards; an entry is served only while its generation
//! is the model's current one. A write bumps its model's generation after
//! it committed and before its answer is returned, so:
//!
//! - a read that saw the database before the write stored (at most) an
//!   entry of an old generation, never served again;
//! - a read that began after the bump saw the committed write.
//!
//! Writes from elsewhere bump generations too: on PostgreSQL a
//! statement-level trigger on every model table sends
//! `pg_notify('dataflow_changes', table)`, which a dedicated `LISTEN`
//! connection per [`DataFlow`](crate::DataFlow) turns into a bump of that
//! model (while that connection is down the cache is bypassed, and once it
//! is back every model is bumped once); on SQLite `PRAGMA data_version` on a
//! dedicated connection changes when another connection commits, checked
//! before a hit at most every [`SQLITE_CHECK_EVERY`] (a change bumps every
//! model: SQLite does not say which table changed).

use crate::backend::{AnyConnection, Conn, Target};
use crate::context::Context;
use crate::error::{Error, ErrorCode, Result};
use crate::schema::{ModelSchema, Op};
use crate::sql::{Dialect, Sql};
use crate::value::Cell;
use moka::notification::RemovalCause;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// The default bound of the cache: 64 MiB of entries.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 64 << 20;

/// SQLite: a hit is served without asking `PRAGMA data_version` again when
/// it was asked less than this long ago; so another process's commit is
/// seen by this process's reads at most this long after it.
pub const SQLITE_CHECK_EVERY: Duration = Duration::from_millis(1);

/// The channel the PostgreSQL triggers notify on (payload: the table).
pub(crate) const CHANNEL: &str = "dataflow_changes";

/// The trigger function every change trigger calls.
const NOTIFY_FUNCTION: &str = "dataflow_notify_change";

/// PostgreSQL: the change trigger of `table` (and the function it calls):
/// one `pg_notify` per statement that writes the table, sent at commit
/// (and not at all on rollback), the same notification at most once per
/// transaction. The payload is `table:origin`, the origin being the
/// writing connection's `dataflow.origin` (a `DataFlow` with the cache sets
/// it on its connections; empty for anyone else).
pub(crate) fn trigger_up(table: &str) -> Vec<String> {
    vec![
        format!(
            "CREATE OR REPLACE FUNCTION {NOTIFY_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS \
             $$BEGIN PERFORM pg_notify('{CHANNEL}', TG_TABLE_NAME || ':' || \
             COALESCE(current_setting('dataflow.origin', true), '')); RETURN NULL; END$$"
        ),
        // Idempotent: two generated migration files that both add it (the
        // second generated before the first was applied) run in turn.
        format!(
            "DROP TRIGGER IF EXISTS {CHANNEL} ON {}",
            crate::sql::quote(table)
        ),
        format!(
            "CREATE TRIGGER {CHANNEL} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {} \
             FOR EACH STATEMENT EXECUTE FUNCTION {NOTIFY_FUNCTION}()",
            crate::sql::quote(table)
        ),
    ]
}

/// PostgreSQL: drops the change trigger of `table` (the function stays:
/// other tables' triggers may call it).
pub(crate) fn trigger_down(table: &str) -> Vec<String> {
    vec![format!(
        "DROP TRIGGER IF EXISTS {CHANNEL} ON {}",
        crate::sql::quote(table)
    )]
}

/// The query cache's counters at one moment, from
/// [`DataFlow::cache_stats`](crate::DataFlow::cache_stats). Cheap to read:
/// plain counters, and the cache's own size figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Reads answered from the cache.
    pub hits: u64,
    /// Cacheable reads that went to the database.
    pub misses: u64,
    /// Entries dropped to stay within `cache_max_bytes`.
    pub evictions: u64,
    /// Entries dropped because their TTL passed, as the cache's
    /// housekeeping finds them (its timer wheel works in steps of about a
    /// second); an expired entry is never served, whenever it is dropped.
    pub expirations: u64,
    /// Invalidations: a write through a node (one per write, for its model),
    /// a change notified by another connection, a detected foreign commit
    /// (SQLite: every model), a reconnected listener (every model), a clear.
    pub invalidations: u64,
    /// The approximate bytes of the entries held.
    pub bytes: u64,
    /// Entries held.
    pub entries: u64,
    /// Whether the cache serves hits now (PostgreSQL: `false` while its
    /// `LISTEN` connection is down, when every read goes to the database).
    pub available: bool,
}

/// One cached query: the model (its index), the op, who asks, and the
/// input. The input is kept as the caller's JSON value: its equality and
/// hash are serde_json's, which ignore object key order (and whitespace
/// never reaches a value), so two inputs share an entry exactly when they
/// are the same JSON; no canonical text is built.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    model: usize,
    op: u8,
    tenant: Option<Box<str>>,
    system: bool,
    query: Value,
}

#[derive(Clone)]
struct Entry {
    generation: u64,
    /// [`approx_bytes`] of the value, for the weigher.
    bytes: usize,
    value: Arc<Value>,
    ttl: Option<Duration>,
}

struct Ttl;

impl moka::Expiry<Key, Entry> for Ttl {
    fn expire_after_create(&self, _: &Key, value: &Entry, _: Instant) -> Option<Duration> {
        value.ttl
    }
}

/// The admission policy of one model: whether its answers are worth
/// storing. A generation (the time between two invalidations of the model)
/// in which answers were stored but none was ever served is wasted; after
/// [`WASTED_LIMIT`] wasted generations in a row the model is write-hot, and
/// its reads skip the cache altogether (no key, no lookup, no copy) except
/// one in [`PROBE_EVERY`], which takes the whole path. The first hit (a
/// probe's, once the writes calm down) makes it cacheable again. Only
/// whether an answer is stored depends on this: what is served is decided
/// by the generations alone, so this never makes a read stale.
#[derive(Default)]
struct Admission {
    /// An answer was stored in the current generation.
    stored: AtomicBool,
    /// An answer was served in the current generation.
    served: AtomicBool,
    /// Wasted generations in a row (up to [`WASTED_LIMIT`]).
    wasted: AtomicU32,
    /// Reads of the write-hot model, to pick the probes.
    skipped: AtomicU32,
}

/// Wasted generations in a row that make a model write-hot.
const WASTED_LIMIT: u32 = 4;

/// A write-hot model's reads: one in this many probes the cache.
const PROBE_EVERY: u32 = 32;

impl Admission {
    /// Whether a read of this model should skip the cache.
    fn skip(&self) -> bool {
        self.wasted.load(Ordering::Relaxed) >= WASTED_LIMIT
            && !self
                .skipped
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(PROBE_EVERY)
    }

    fn served(&self) {
        if !self.served.load(Ordering::Relaxed) {
            self.served.store(true, Ordering::Relaxed);
        }
        if self.wasted.load(Ordering::Relaxed) != 0 {
            self.wasted.store(0, Ordering::Relaxed);
        }
    }

    fn stored(&self) {
        if !self.stored.load(Ordering::Relaxed) {
            self.stored.store(true, Ordering::Relaxed);
        }
    }

    /// The generation ended: was it wasted?
    fn ended(&self) {
        let stored = self.stored.swap(false, Ordering::Relaxed);
        let served = self.served.swap(false, Ordering::Relaxed);
        if stored && !served {
            let w = self.wasted.load(Ordering::Relaxed);
            if w < WASTED_LIMIT {
                self.wasted.store(w + 1, Ordering::Relaxed);
            }
        }
    }
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    expirations: AtomicU64,
    invalidations: AtomicU64,
}

/// The cache of one booted database (shared by every handle of it).
pub(crate) struct QueryCache {
    entries: moka::sync::Cache<Key, Entry>,
    /// One generation per model, in registry order.
    generations: Box<[AtomicU64]>,
    /// Per model: whether its answers are worth storing.
    admission: Box<[Admission]>,
    /// Model (by address) → index.
    index: HashMap<usize, usize>,
    /// Table → index, for notifications.
    tables: HashMap<String, usize>,
    /// Per model: its `cache_ttl`, else the configured one.
    ttls: Box<[Option<Duration>]>,
    counters: Arc<Counters>,
    /// Serving hits (PostgreSQL: the listener is connected).
    available: AtomicBool,
    /// Per model: other connections' writes to its table are seen
    /// (PostgreSQL: its table has the change trigger, as the listener
    /// found; SQLite: always). A model without is never cached.
    tracked: Box<[AtomicBool]>,
    sqlite: Option<SqliteWatch>,
}

impl QueryCache {
    /// A cache for `models`; SQLite files get their `data_version` watch,
    /// PostgreSQL its listener thread (started by [`listen`]).
    pub(crate) fn new(
        models: &[&'static ModelSchema],
        max_bytes: u64,
        ttl: Option<Duration>,
        target: &Target,
        connect_timeout: Duration,
    ) -> Result<Arc<QueryCache>> {
        let counters = Arc::new(Counters::default());
        let listener_counters = counters.clone();
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &Key, v: &Entry| {
                let bytes = 96 + approx_bytes(&k.query) + v.bytes;
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .expire_after(Ttl)
            .eviction_listener(move |_, _, cause| match cause {
                RemovalCause::Size => {
                    listener_counters.evictions.fetch_add(1, Ordering::Relaxed);
                }
                RemovalCause::Expired => {
                    listener_counters
                        .expirations
                        .fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            })
            .support_invalidation_closures()
            .build();
        let sqlite = match target {
            // A shared in-memory database has no other process; this
            // process's writes all go through its nodes.
            Target::Sqlite { memory: true, .. } | Target::Postgres { .. } => None,
            Target::Sqlite { .. } => Some(SqliteWatch::open(target, connect_timeout)?),
        };
        Ok(Arc::new(QueryCache {
            entries,
            generations: models.iter().map(|_| AtomicU64::new(0)).collect(),
            admission: models.iter().map(|_| Admission::default()).collect(),
            index: models
                .iter()
                .enumerate()
                .map(|(i, m)| (address(m), i))
                .collect(),
            tables: models
                .iter()
                .enumerate()
                .map(|(i, m)| (m.table.to_string(), i))
                .collect(),
            ttls: models
                .iter()
                .map(|m| m.options.cache_ttl_ms.map(Duration::from_millis).or(ttl))
                .collect(),
            counters,
            available: AtomicBool::new(target.dialect() == Dialect::Sqlite),
            tracked: models
                .iter()
                .map(|_| AtomicBool::new(target.dialect() == Dialect::Sqlite))
                .collect(),
            sqlite,
        }))
    }

    /// The key of a cacheable read, or `None` when the cache does not
    /// serve it now (not a read, a model it does not know, the listener
    /// down) or the model is write-hot (see [`Admission`]; counted as a
    /// miss: the read goes to the database).
    pub(crate) fn key(
        &self,
        m: &'static ModelSchema,
        op: Op,
        context: &Context,
        params: &Value,
    ) -> Option<Key> {
        if op.writes() || !self.available() {
            return None;
        }
        let model = *self.index.get(&address(m))?;
        if !self.tracked[model].load(Ordering::Acquire) {
            return None;
        }
        if self.admission[model].skip() {
            self.counters.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Key {
            model,
            op: op as u8,
            tenant: context.tenant.as_deref().map(Into::into),
            system: context.system,
            query: params.clone(),
        })
    }

    fn available(&self) -> bool {
        self.available.load(Ordering::Acquire)
    }

    /// The model's generation now: taken before the read's query.
    pub(crate) fn generation(&self, key: &Key) -> u64 {
        self.generations[key.model].load(Ordering::Acquire)
    }

    /// The cached answer of `key`, if it is current.
    pub(crate) fn get(&self, key: &Key) -> Option<Value> {
        if let Some(watch) = &self.sqlite {
            watch.check(self);
        }
        let current = self.generation(key);
        match self.entries.get(key) {
            Some(e) if e.generation == current && self.available() => {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                self.admission[key.model].served();
                Some(Value::clone(&e.value))
            }
            // An entry of an old generation is left for the insert that
            // follows this miss to replace (or for eviction).
            _ => {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Stores a read's answer, unless its model changed (or the cache
    /// became unavailable) since `generation` was taken.
    pub(crate) fn put(&self, key: Key, generation: u64, value: &Value) {
        if self.generation(&key) != generation || !self.available() {
            return;
        }
        let ttl = self.ttls[key.model];
        self.admission[key.model].stored();
        self.entries.insert(
            key,
            Entry {
                generation,
                bytes: approx_bytes(value),
                value: Arc::new(value.clone()),
                ttl,
            },
        );
    }

    /// After a write to `m` (committed, or failed): its entries are stale.
    pub(crate) fn invalidate(&self, m: &'static ModelSchema) {
        if let Some(&i) = self.index.get(&address(m)) {
            self.bump(i);
            self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// After a node's write to `m`: its model, and on SQLite the
    /// `data_version` this write moved, asked now (and so every model's
    /// entries: SQLite cannot tell this write from another connection's
    /// that came just before it). Asking at once keeps the next reads from
    /// finding the change later and dropping what they cached meanwhile.
    pub(crate) fn invalidate_written(&self, m: &'static ModelSchema) {
        self.invalidate(m);
        if let Some(watch) = &self.sqlite {
            watch.check_now(self);
        }
    }

    /// A change to the model of `table` made elsewhere (a notification:
    /// `table:origin`; this instance's own are skipped).
    fn notified(&self, payload: &str, own: &str) {
        let (table, origin) = payload.rsplit_once(':').unwrap_or((payload, ""));
        if !own.is_empty() && origin == own {
            return;
        }
        if let Some(&i) = self.tables.get(table) {
            self.bump(i);
            self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// PostgreSQL: which models' tables have the change trigger now
    /// (`tables`: the tables that have it); `true` when all do. A model
    /// without it is not cached: nothing would tell this instance of other
    /// connections' writes to it (boot with `skip_migration`, or without
    /// the migration that adds it applied). One that gets it is bumped
    /// first: writes made before were not notified.
    fn track(&self, tables: &std::collections::HashSet<String>) -> bool {
        let mut all = true;
        for (table, &i) in &self.tables {
            let has = tables.contains(table);
            all &= has;
            if has && !self.tracked[i].load(Ordering::Acquire) {
                self.bump(i);
            }
            self.tracked[i].store(has, Ordering::Release);
        }
        all
    }

    /// Every model's entries are stale (counted as one invalidation).
    pub(crate) fn invalidate_all(&self) {
        for i in 0..self.generations.len() {
            self.bump(i);
        }
        self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    fn bump(&self, i: usize) {
        self.generations[i].fetch_add(1, Ordering::AcqRel);
        self.admission[i].ended();
    }

    /// Drops `m`'s entries (all models' with `None`) now.
    pub(crate) fn clear(&self, m: Option<&'static ModelSchema>) -> Result<()> {
        match m {
            None => {
                self.invalidate_all();
                self.entries.invalidate_all();
            }
            Some(m) => {
                let i = *self.index.get(&address(m)).ok_or_else(|| {
                    Error::new(
                        ErrorCode::NotFound,
                        format!("{} has no query cache entries", m.name),
                    )
                })?;
                self.invalidate(m);
                self.entries
                    .invalidate_entries_if(move |k, _| k.model == i)
                    .map_err(|e| Error::internal(format!("cache clear: {e}")))?;
            }
        }
        self.entries.run_pending_tasks();
        Ok(())
    }

    /// The counters and the cache's size (after its pending bookkeeping).
    pub(crate) fn stats(&self) -> CacheStats {
        self.entries.run_pending_tasks();
        let c = &self.counters;
        CacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            expirations: c.expirations.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
            bytes: self.entries.weighted_size(),
            entries: self.entries.entry_count(),
            available: self.available(),
        }
    }
}

fn address(m: &'static ModelSchema) -> usize {
    std::ptr::from_ref(m) as usize
}

/// About how many bytes a JSON value holds in memory.
fn approx_bytes(v: &Value) -> usize {
    // Without recursion: values can nest (up to the input depth limit).
    let mut total = 0;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        total += 32;
        match v {
            Value::String(s) => total += s.len(),
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                for (k, v) in map {
                    total += k.len() + 16;
                    stack.push(v);
                }
            }
            _ => {}
        }
    }
    total
}

/// SQLite: `PRAGMA data_version` on a connection of its own changes when
/// any other connection (of this process or another) committed.
struct SqliteWatch {
    state: Mutex<(diesel::SqliteConnection, Option<i64>)>,
    /// Microseconds after `start` of the last check.
    checked_at: AtomicU64,
    start: Instant,
}

impl SqliteWatch {
    fn open(target: &Target, connect_timeout: Duration) -> Result<SqliteWatch> {
        let AnyConnection::Sqlite(mut conn) = target.connect(connect_timeout)? else {
            return Err(Error::internal("the SQLite watch got another connection"));
        };
        let version = data_version(&mut conn).ok();
        Ok(SqliteWatch {
            state: Mutex::new((conn, version)),
            checked_at: AtomicU64::new(0),
            start: Instant::now(),
        })
    }

    /// Bumps every model when a commit happened since the last check;
    /// asks at most every [`SQLITE_CHECK_EVERY`].
    fn check(&self, cache: &QueryCache) {
        let now = self.start.elapsed().as_micros() as u64;
        let every = SQLITE_CHECK_EVERY.as_micros() as u64;
        if now.saturating_sub(self.checked_at.load(Ordering::Acquire)) < every {
            return;
        }
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Another caller checked while this one waited for the lock.
        if now < self.checked_at.load(Ordering::Acquire) {
            return;
        }
        self.ask(cache, state);
    }

    /// [`check`](Self::check) now, however recently it was asked.
    fn check_now(&self, cache: &QueryCache) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.ask(cache, state);
    }

    fn ask(
        &self,
        cache: &QueryCache,
        mut state: std::sync::MutexGuard<'_, (diesel::SqliteConnection, Option<i64>)>,
    ) {
        let asked_at = self.start.elapsed().as_micros() as u64;
        let (conn, last) = &mut *state;
        match data_version(conn) {
            Ok(v) if Some(v) == *last => {}
            // Changed, or unknown: fail closed.
            seen => {
                cache.invalidate_all();
                *last = seen.ok();
            }
        }
        self.checked_at.store(asked_at, Ordering::Release);
    }
}

fn data_version(conn: &mut diesel::SqliteConnection) -> Result<i64> {
    let mut sql = Sql::new(Dialect::Sqlite);
    sql.push("PRAGMA data_version");
    match conn.query(&sql)?.pop().and_then(|r| r.into_iter().next()) {
        Some(Cell::I64(v)) => Ok(v),
        other => Err(Error::internal(format!("data_version returned {other:?}"))),
    }
}

/// PostgreSQL: starts the `LISTEN` thread and waits (up to
/// `connect_timeout`) until it listens, so the cache serves from the start;
/// if it cannot connect the cache passes every read through until it can.
pub(crate) fn listen(
    cache: &Arc<QueryCache>,
    url: &str,
    origin: String,
    connect_timeout: Duration,
) -> Result<()> {
    let (ready, listening) = std::sync::mpsc::channel::<()>();
    let weak = Arc::downgrade(cache);
    let url = url.to_string();
    std::thread::Builder::new()
        .name("dataflow-cache-listen".into())
        .spawn(move || listener(&weak, &url, &origin, connect_timeout, ready))
        .map_err(|e| Error::internal(format!("cannot start the cache listener: {e}")))?;
    let _ = listening.recv_timeout(connect_timeout);
    Ok(())
}

/// How long the listener waits for a notification before it checks that
/// its `DataFlow` still exists.
const LISTEN_POLL: Duration = Duration::from_millis(200);

fn listener(
    cache: &Weak<QueryCache>,
    url: &str,
    origin: &str,
    connect_timeout: Duration,
    ready: std::sync::mpsc::Sender<()>,
) {
    let mut backoff = Duration::from_millis(20);
    loop {
        let client = url.parse::<postgres::Config>().and_then(|mut config| {
            config.connect_timeout(connect_timeout);
            config.application_name("dataflow-cache-listen");
            let mut client = config.connect(postgres::NoTls)?;
            // Which tables notify, asked before LISTEN: a trigger added in
            // between is found by the next check (and its model bumped).
            let triggered = triggered_tables(&mut client)?;
            client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
            Ok((client, triggered))
        });
        match client {
            Ok((mut client, triggered)) => {
                let Some(c) = cache.upgrade() else { return };
                let all = c.track(&triggered);
                // Changes made while nobody listened are unknown.
                c.invalidate_all();
                c.available.store(true, Ordering::Release);
                drop(c);
                let _ = ready.send(());
                backoff = Duration::from_millis(20);
                if !serve(cache, &mut client, origin, all) {
                    return;
                }
                if let Some(c) = cache.upgrade() {
                    c.available.store(false, Ordering::Release);
                }
            }
            Err(_) => {
                if cache.strong_count() == 0 {
                    return;
                }
            }
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// The tables of the current schema that have the change trigger.
fn triggered_tables(
    client: &mut postgres::Client,
) -> std::result::Result<std::collections::HashSet<String>, postgres::Error> {
    Ok(client
        .query(
            "SELECT c.relname::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = current_schema() AND t.tgname = $1 AND NOT t.tgisinternal",
            &[&CHANNEL],
        )?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect())
}

/// Turns notifications into invalidations until the connection drops
/// (`true`) or the cache is gone (`false`). While some model's table lacks
/// the change trigger (`all_tracked` false), asks again after every poll.
fn serve(
    cache: &Weak<QueryCache>,
    client: &mut postgres::Client,
    origin: &str,
    mut all_tracked: bool,
) -> bool {
    use postgres::fallible_iterator::FallibleIterator;
    loop {
        {
            let mut notifications = client.notifications();
            let mut batch = notifications.timeout_iter(LISTEN_POLL);
            loop {
                match batch.next() {
                    Ok(Some(n)) => match cache.upgrade() {
                        Some(c) => c.notified(n.payload(), origin),
                        None => return false,
                    },
                    Ok(None) => break,
                    Err(_) => return true,
                }
            }
        }
        if client.is_closed() {
            return true;
        }
        if !all_tracked {
            let Some(c) = cache.upgrade() else {
                return false;
            };
            match triggered_tables(client) {
                Ok(tables) => all_tracked = c.track(&tables),
                Err(_) => return true,
            }
        }
        if cache.strong_count() == 0 {
            return false;
        }
    }
}
