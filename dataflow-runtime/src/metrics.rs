//! Query metrics (`enable_metrics`, on by default) and the slow-query log.
//!
//! Every model node call counts once per model × operation: calls, errors
//! by code, a latency histogram (from the call to its answer, queueing
//! included) and a rows histogram. The handles of every registered model ×
//! operation are resolved at boot, so the hot path is a read-only map
//! lookup and a few atomic adds (prometheus' counters and histograms are
//! atomics); no lock is taken. Pool, writer-queue, migration and cache
//! values are read when scraped.
//!
//! The families are one [`Collector`]: [`DataFlow::metrics`] encodes them as
//! Prometheus text, and nexus registers the same collector in its own
//! registry, so one scrape of `/metrics` carries both and a family declared
//! twice fails at registration instead of being exported twice.
//!
//! [`DataFlow::metrics`]: crate::DataFlow::metrics

use crate::error::Result;
use crate::schema::{ModelSchema, Op};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, Metric, MetricFamily, MetricType};
use prometheus::{
    histogram_opts, opts, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge,
};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Latency buckets, in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Rows a call read or wrote.
const ROW_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 10000.0,
];

/// Writes per commit of the SQLite writer thread (at most `MAX_BATCH`).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// How far back [`Metrics::recent_slow`] looks by default (the health report).
pub(crate) const SLOW_WINDOW: Duration = Duration::from_secs(300);

/// The slow-query timestamps kept for the health report (the newest).
const SLOW_KEPT: usize = 4096;

/// Every metric family name dataflow exports (the dashboard test checks the
/// dashboard's queries against the live scrape, this list documents them).
pub const FAMILIES: &[&str] = &[
    "dataflow_node_calls_total",
    "dataflow_node_errors_total",
    "dataflow_node_duration_seconds",
    "dataflow_node_rows",
    "dataflow_slow_queries_total",
    "dataflow_pool_size",
    "dataflow_pool_connections",
    "dataflow_pool_idle",
    "dataflow_pool_waiting",
    "dataflow_pool_timeouts_total",
    "dataflow_writer_queue_depth",
    "dataflow_writer_batch_size",
    "dataflow_migrations_applied_total",
    "dataflow_migrations_blocked",
    "dataflow_cache_hits_total",
    "dataflow_cache_misses_total",
    "dataflow_cache_evictions_total",
    "dataflow_cache_invalidations_total",
    "dataflow_cache_bytes",
    "dataflow_cache_entries",
];

/// The handles of one model × operation, resolved at boot.
struct OpHandles {
    calls: IntCounter,
    duration: Histogram,
    rows: Histogram,
}

/// Values read when scraped, from the live database handle.
#[derive(Debug, Clone, Default)]
pub(crate) struct Live {
    pub(crate) pool_size: u32,
    pub(crate) connections: u32,
    pub(crate) idle: u32,
    /// SQLite: writes queued for the writer thread.
    pub(crate) writer_queue: Option<usize>,
    pub(crate) cache: CacheCounters,
}

/// The query cache's counters, exported as `dataflow_cache_*`: read from
/// `DataFlow::cache_stats` at scrape time (all zeros with the cache off).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CacheCounters {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) evictions: u64,
    pub(crate) invalidations: u64,
    pub(crate) bytes: u64,
    pub(crate) entries: u64,
}

type LiveFn = Box<dyn Fn() -> Live + Send + Sync>;

/// The metrics of one booted database (shared by its handles).
pub(crate) struct Metrics {
    enabled: bool,
    calls: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    rows: HistogramVec,
    slow: IntCounterVec,
    pub(crate) pool_waiting: IntGauge,
    pub(crate) pool_timeouts: IntCounter,
    pub(crate) writer_batch: Histogram,
    pub(crate) migrations_applied: IntCounter,
    pub(crate) migrations_blocked: IntGauge,
    handles: HashMap<&'static str, Vec<OpHandles>>,
    /// When recent slow statements happened (the health report's window).
    slow_log: Mutex<VecDeque<Instant>>,
    live: Mutex<Option<LiveFn>>,
    /// Descriptors of the scrape-time families.
    live_descs: Vec<Desc>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// The live families: (name, help, type).
const LIVE: &[(&str, &str, MetricType)] = &[
    (
        "dataflow_pool_size",
        "The most connections the pool opens",
        MetricType::GAUGE,
    ),
    (
        "dataflow_pool_connections",
        "Open pool connections, busy or idle",
        MetricType::GAUGE,
    ),
    (
        "dataflow_pool_idle",
        "Open pool connections not in use",
        MetricType::GAUGE,
    ),
    (
        "dataflow_writer_queue_depth",
        "SQLite: writes queued for the writer thread (0 on PostgreSQL)",
        MetricType::GAUGE,
    ),
    (
        "dataflow_cache_hits_total",
        "Query cache hits",
        MetricType::COUNTER,
    ),
    (
        "dataflow_cache_misses_total",
        "Query cache misses",
        MetricType::COUNTER,
    ),
    (
        "dataflow_cache_evictions_total",
        "Query cache entries evicted for room or age",
        MetricType::COUNTER,
    ),
    (
        "dataflow_cache_invalidations_total",
        "Query cache invalidations by writes",
        MetricType::COUNTER,
    ),
    (
        "dataflow_cache_bytes",
        "Bytes the query cache holds",
        MetricType::GAUGE,
    ),
    (
        "dataflow_cache_entries",
        "Entries the query cache holds",
        MetricType::GAUGE,
    ),
];

impl Metrics {
    /// The families, with handles for every model × operation of `models`.
    pub(crate) fn new(enabled: bool, models: &[&'static ModelSchema]) -> Metrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(opts!(name, help), labels).expect("valid metric")
        };
        let histogram = |name: &str, help: &str, buckets: &[f64], labels: &[&str]| {
            HistogramVec::new(histogram_opts!(name, help, buckets.to_vec()), labels)
                .expect("valid metric")
        };
        let calls = counter(
            "dataflow_node_calls_total",
            "Model node calls by model and operation",
            &["model", "op"],
        );
        let errors = counter(
            "dataflow_node_errors_total",
            "Model node calls that failed, by model, operation and error code",
            &["model", "op", "code"],
        );
        let duration = histogram(
            "dataflow_node_duration_seconds",
            "Model node call time (queueing included) by model and operation",
            LATENCY_BUCKETS,
            &["model", "op"],
        );
        let rows = histogram(
            "dataflow_node_rows",
            "Rows a successful model node call read or wrote, by model and operation",
            ROW_BUCKETS,
            &["model", "op"],
        );
        let slow = counter(
            "dataflow_slow_queries_total",
            "Statements slower than slow_query_threshold, by model and operation",
            &["model", "op"],
        );
        let handles = models
            .iter()
            .map(|m| {
                let per_op = Op::ALL
                    .iter()
                    .map(|op| {
                        let labels = [m.name, op.name()];
                        // Zero series up front, so a dashboard's rate() has
                        // something to read before the first slow statement.
                        slow.with_label_values(&labels);
                        OpHandles {
                            calls: calls.with_label_values(&labels),
                            duration: duration.with_label_values(&labels),
                            rows: rows.with_label_values(&labels),
                        }
                    })
                    .collect();
                (m.name, per_op)
            })
            .collect();
        let live_descs = LIVE
            .iter()
            .map(|(name, help, _)| {
                Desc::new(name.to_string(), help.to_string(), vec![], HashMap::new())
                    .expect("valid metric")
            })
            .collect();
        Metrics {
            enabled,
            calls,
            errors,
            duration,
            rows,
            slow,
            pool_waiting: IntGauge::new(
                "dataflow_pool_waiting",
                "Callers waiting for a pooled connection",
            )
            .expect("valid metric"),
            pool_timeouts: IntCounter::new(
                "dataflow_pool_timeouts_total",
                "Waits for a pooled connection that timed out",
            )
            .expect("valid metric"),
            writer_batch: Histogram::with_opts(histogram_opts!(
                "dataflow_writer_batch_size",
                "SQLite: writes per commit of the writer thread",
                BATCH_BUCKETS.to_vec()
            ))
            .expect("valid metric"),
            migrations_applied: IntCounter::new(
                "dataflow_migrations_applied_total",
                "Migrations this process applied (at boot or through migrations().apply)",
            )
            .expect("valid metric"),
            migrations_blocked: IntGauge::new(
                "dataflow_migrations_blocked",
                "1 when the models need schema changes that were not applied (see db.health())",
            )
            .expect("valid metric"),
            handles,
            slow_log: Mutex::new(VecDeque::new()),
            live: Mutex::new(None),
            live_descs,
        }
    }

    /// Sets where scrape-time values come from (the database handle, set
    /// once it exists).
    pub(crate) fn set_live(&self, live: LiveFn) {
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = Some(live);
    }

    fn live(&self) -> Live {
        match &*self.live.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(f) => f(),
            None => Live::default(),
        }
    }

    /// Records one model node call: its outcome, time and rows.
    pub(crate) fn record(
        &self,
        m: &'static ModelSchema,
        op: Op,
        took: Duration,
        outcome: &Result<Value>,
    ) {
        if !self.enabled {
            return;
        }
        let secs = took.as_secs_f64();
        match self.handles.get(m.name).and_then(|h| h.get(op as usize)) {
            Some(h) => {
                h.calls.inc();
                h.duration.observe(secs);
                if let Ok(v) = outcome {
                    h.rows.observe(rows_of(op, v) as f64);
                }
            }
            // A model the database was not booted with (a typed call
            // through a schema built by hand): the labelled lookup.
            None => {
                let labels = [m.name, op.name()];
                self.calls.with_label_values(&labels).inc();
                self.duration.with_label_values(&labels).observe(secs);
                if let Ok(v) = outcome {
                    self.rows
                        .with_label_values(&labels)
                        .observe(rows_of(op, v) as f64);
                }
            }
        }
        if let Err(e) = outcome {
            self.errors
                .with_label_values(&[m.name, op.name(), e.code().as_str()])
                .inc();
        }
    }

    /// Counts a slow statement of `model` × `op` (even with metrics off: the
    /// health report counts them).
    pub(crate) fn slow_statement(&self, model: &str, op: &str) {
        self.slow.with_label_values(&[model, op]).inc();
        let mut log = self.slow_log.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() == SLOW_KEPT {
            log.pop_front();
        }
        log.push_back(Instant::now());
    }

    /// Slow statements within `window` (up to the newest 4096 are kept).
    pub(crate) fn recent_slow(&self, window: Duration) -> u64 {
        let log = self.slow_log.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        log.iter()
            .rev()
            .take_while(|t| now.duration_since(**t) <= window)
            .count() as u64
    }

    /// Every slow statement counted since boot.
    pub(crate) fn slow_total(&self) -> u64 {
        self.slow
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    fn collectors(&self) -> [&dyn Collector; 10] {
        [
            &self.calls,
            &self.errors,
            &self.duration,
            &self.rows,
            &self.slow,
            &self.pool_waiting,
            &self.pool_timeouts,
            &self.writer_batch,
            &self.migrations_applied,
            &self.migrations_blocked,
        ]
    }

    fn live_families(&self) -> Vec<MetricFamily> {
        let live = self.live();
        let c = live.cache;
        let values = [
            f64::from(live.pool_size),
            f64::from(live.connections),
            f64::from(live.idle),
            live.writer_queue.unwrap_or(0) as f64,
            c.hits as f64,
            c.misses as f64,
            c.evictions as f64,
            c.invalidations as f64,
            c.bytes as f64,
            c.entries as f64,
        ];
        LIVE.iter()
            .zip(values)
            .map(|((name, help, kind), value)| family(name, help, *kind, value))
            .collect()
    }
}

/// One family of one unlabelled value.
fn family(name: &str, help: &str, kind: MetricType, value: f64) -> MetricFamily {
    let mut metric = Metric::default();
    match kind {
        MetricType::COUNTER => {
            let mut c = Counter::default();
            c.set_value(value);
            metric.set_counter(c);
        }
        _ => {
            let mut g = Gauge::default();
            g.set_value(value);
            metric.set_gauge(g);
        }
    }
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(vec![metric]);
    f
}

/// Rows a successful call read or wrote, from its output.
pub(crate) fn rows_of(op: Op, out: &Value) -> u64 {
    let n = |k: &str| out.get(k).and_then(Value::as_u64).unwrap_or(0);
    match op {
        Op::Create | Op::Read | Op::Update | Op::Upsert => u64::from(!out.is_null()),
        Op::Delete => u64::from(out.get("deleted") == Some(&Value::Bool(true))),
        Op::List => out
            .get("records")
            .and_then(Value::as_array)
            .map_or(0, |r| r.len() as u64),
        Op::Count => 1,
        Op::Aggregate => n("count"),
        Op::BulkCreate => n("inserted"),
        Op::BulkUpdate => n("updated"),
        Op::BulkDelete => n("deleted"),
        Op::BulkUpsert => n("inserted") + n("updated"),
    }
}

/// dataflow's metric families as one [`Collector`]: register it in a
/// `prometheus::Registry` to scrape them with other metrics (nexus does).
#[derive(Clone)]
pub struct MetricsCollector(pub(crate) Arc<Metrics>);

impl std::fmt::Debug for MetricsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MetricsCollector").finish()
    }
}

impl Collector for MetricsCollector {
    fn desc(&self) -> Vec<&Desc> {
        if !self.0.enabled {
            return vec![];
        }
        let mut descs: Vec<&Desc> = self
            .0
            .collectors()
            .into_iter()
            .flat_map(|c| c.desc())
            .collect();
        descs.extend(self.0.live_descs.iter());
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if !self.0.enabled {
            return vec![];
        }
        let mut families: Vec<MetricFamily> = self
            .0
            .collectors()
            .into_iter()
            .flat_map(|c| c.collect())
            .collect();
        families.extend(self.0.live_families());
        families
    }
}

impl MetricsCollector {
    /// The families as Prometheus text (version 0.0.4), sorted by name.
    pub(crate) fn text(&self) -> String {
        let mut families = self.collect();
        families.retain(|f| !f.get_metric().is_empty());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = String::new();
        let _ = prometheus::TextEncoder::new().encode_utf8(&families, &mut out);
        out
    }
}

/// What [`nodes::Ctx`](crate::nodes::Ctx) needs to time its statements.
#[derive(Clone, Copy)]
pub(crate) struct SlowWatch<'a> {
    pub(crate) threshold: Duration,
    pub(crate) metrics: &'a Metrics,
    pub(crate) op: &'static str,
}
