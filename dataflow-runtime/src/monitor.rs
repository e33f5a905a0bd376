//! `dataflow monitor`: a live terminal view of a database's metrics, the
//! way `pg_top` feels. It reads the Prometheus text of an in-process
//! database ([`DataFlow::metrics`]) or of a running nexus (`--url`, its
//! `/metrics`), samples it every interval and shows, per model ×
//! operation, the calls per second, p50 and p99 latency (from the
//! histogram buckets of the interval) and errors, with the pool and the
//! cache hit ratio. Plain ANSI redraw on the alternate screen; `q`, Esc or
//! Ctrl-C leave it and restore the terminal. `--once --json` prints one
//! interval as JSON for scripts.
//!
//! [`DataFlow::metrics`]: crate::DataFlow::metrics

use crate::error::{Error, ErrorCode, Result};
use crate::DataFlow;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

/// Where the metrics come from.
pub(crate) enum Source<'a> {
    /// This process's database.
    Local(&'a DataFlow),
    /// A running nexus: `GET {url}/metrics`.
    Remote {
        client: reqwest::Client,
        url: String,
        token: Option<String>,
    },
}

impl Source<'_> {
    /// A remote source at `url` (`http://host:port`).
    pub(crate) fn remote(url: &str, token: Option<String>) -> Result<Source<'static>> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::new(
                ErrorCode::Validation,
                format!(
                    "monitor --url takes a running nexus's address (http://host:port), got `{}`",
                    Error::echo(url)
                ),
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Error::internal(format!("HTTP client: {e}")))?;
        Ok(Source::Remote {
            client,
            url: url.trim_end_matches('/').to_string(),
            token,
        })
    }

    fn name(&self) -> String {
        match self {
            Source::Local(db) => db.target().display().to_string(),
            Source::Remote { url, .. } => url.clone(),
        }
    }

    async fn scrape(&self) -> Result<Scrape> {
        let text = match self {
            Source::Local(db) => db.metrics(),
            Source::Remote { client, url, token } => {
                let mut req = client.get(format!("{url}/metrics"));
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let unreachable = |e: reqwest::Error| {
                    Error::new(
                        ErrorCode::Connection,
                        format!("cannot read {url}/metrics: {e}"),
                    )
                };
                let resp = req.send().await.map_err(unreachable)?;
                let status = resp.status();
                let body = resp.text().await.map_err(unreachable)?;
                if !status.is_success() {
                    return Err(Error::new(
                        ErrorCode::Connection,
                        format!(
                            "{url}/metrics answered {status} (is monitoring on, and --token given when auth is?)"
                        ),
                    ));
                }
                body
            }
        };
        Ok(Scrape::parse(&text))
    }
}

/// One scrape: the values of the families the view uses.
#[derive(Debug, Default, Clone)]
struct Scrape {
    at: Option<Instant>,
    /// (model, op) → calls.
    calls: BTreeMap<(String, String), f64>,
    /// (model, op) → errors.
    errors: BTreeMap<(String, String), f64>,
    /// (model, op) → [(upper bound, cumulative count)].
    buckets: BTreeMap<(String, String), Vec<(f64, f64)>>,
    /// Unlabelled values by family name.
    plain: BTreeMap<String, f64>,
    /// Sum of each labelled family (nexus requests, slow queries).
    sums: BTreeMap<String, f64>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut s = Scrape {
            at: Some(Instant::now()),
            ..Scrape::default()
        };
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((head, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, labels_of(rest.trim_end_matches('}'))),
                None => (head, BTreeMap::new()),
            };
            let key = || {
                (
                    labels.get("model").cloned().unwrap_or_default(),
                    labels.get("op").cloned().unwrap_or_default(),
                )
            };
            match name {
                "dataflow_node_calls_total" => {
                    s.calls.insert(key(), value);
                }
                "dataflow_node_errors_total" => *s.errors.entry(key()).or_default() += value,
                "dataflow_node_duration_seconds_bucket" => {
                    let le = match labels.get("le").map(String::as_str) {
                        Some("+Inf") => f64::INFINITY,
                        Some(b) => b.parse().unwrap_or(f64::INFINITY),
                        None => continue,
                    };
                    s.buckets.entry(key()).or_default().push((le, value));
                }
                _ if labels.is_empty() => {
                    s.plain.insert(name.to_string(), value);
                }
                _ => *s.sums.entry(name.to_string()).or_default() += value,
            }
        }
        for b in s.buckets.values_mut() {
            b.sort_by(|x, y| x.0.total_cmp(&y.0));
        }
        s
    }

    fn plain(&self, name: &str) -> f64 {
        self.plain.get(name).copied().unwrap_or(0.0)
    }
}

/// `a="x",b="y"` → {a: x, b: y} (our label values never hold quotes).
fn labels_of(text: &str) -> BTreeMap<String, String> {
    text.split("\",")
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.to_string(), v.trim_matches('"').to_string()))
        })
        .collect()
}

/// One interval of the view (also the `--once --json` output).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct View {
    /// The database or nexus watched.
    pub(crate) source: String,
    /// The interval's length in seconds.
    pub(crate) interval_seconds: f64,
    /// Per model × operation, busiest first.
    pub(crate) ops: Vec<OpRow>,
    /// Workflow requests per second (nexus; 0 for an in-process database).
    pub(crate) requests_per_second: f64,
    pub(crate) pool: PoolView,
    pub(crate) cache: CacheView,
    /// Slow statements since boot.
    pub(crate) slow_queries: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct OpRow {
    pub(crate) model: String,
    pub(crate) op: String,
    pub(crate) ops_per_second: f64,
    /// `None` when the operation had no call in the interval.
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    /// Errors in the interval.
    pub(crate) errors: f64,
    /// Calls since boot.
    pub(crate) calls_total: f64,
    /// Errors since boot.
    pub(crate) errors_total: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct PoolView {
    pub(crate) size: f64,
    pub(crate) connections: f64,
    pub(crate) idle: f64,
    pub(crate) waiting: f64,
    pub(crate) timeouts: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct CacheView {
    pub(crate) hits: f64,
    pub(crate) misses: f64,
    /// `None` before the first lookup.
    pub(crate) hit_ratio: Option<f64>,
}

/// The `q`-th quantile (0..1) of the observations between two cumulative
/// bucket lists, interpolated inside its bucket, in milliseconds.
fn quantile(prev: &[(f64, f64)], cur: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> = cur
        .iter()
        .map(|(le, n)| {
            let before = prev.iter().find(|(l, _)| l == le).map_or(0.0, |(_, n)| *n);
            (*le, n - before)
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, n) in &delta {
        if n >= rank {
            if le.is_infinite() {
                return Some(lower.0 * 1e3);
            }
            let within = if n > lower.1 {
                (rank - lower.1) / (n - lower.1)
            } else {
                1.0
            };
            return Some((lower.0 + (le - lower.0) * within) * 1e3);
        }
        lower = (le, n);
    }
    None
}

fn view(source: String, prev: &Scrape, cur: &Scrape) -> View {
    let secs = match (prev.at, cur.at) {
        (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
        _ => 1.0,
    };
    let mut ops: Vec<OpRow> = cur
        .calls
        .iter()
        .filter(|(_, n)| **n > 0.0)
        .map(|(key, n)| {
            let before = prev.calls.get(key).copied().unwrap_or(0.0);
            let (e_now, e_before) = (
                cur.errors.get(key).copied().unwrap_or(0.0),
                prev.errors.get(key).copied().unwrap_or(0.0),
            );
            let empty = Vec::new();
            let (pb, cb) = (
                prev.buckets.get(key).unwrap_or(&empty),
                cur.buckets.get(key).unwrap_or(&empty),
            );
            OpRow {
                model: key.0.clone(),
                op: key.1.clone(),
                ops_per_second: (n - before).max(0.0) / secs,
                p50_ms: quantile(pb, cb, 0.5),
                p99_ms: quantile(pb, cb, 0.99),
                errors: (e_now - e_before).max(0.0),
                calls_total: *n,
                errors_total: e_now,
            }
        })
        .collect();
    ops.sort_by(|a, b| {
        b.ops_per_second
            .total_cmp(&a.ops_per_second)
            .then(b.calls_total.total_cmp(&a.calls_total))
    });
    let requests = |s: &Scrape| s.sums.get("nexus_requests_total").copied().unwrap_or(0.0);
    let (hits, misses) = (
        cur.plain("dataflow_cache_hits_total"),
        cur.plain("dataflow_cache_misses_total"),
    );
    View {
        source,
        interval_seconds: secs,
        ops,
        requests_per_second: (requests(cur) - requests(prev)).max(0.0) / secs,
        pool: PoolView {
            size: cur.plain("dataflow_pool_size"),
            connections: cur.plain("dataflow_pool_connections"),
            idle: cur.plain("dataflow_pool_idle"),
            waiting: cur.plain("dataflow_pool_waiting"),
            timeouts: cur.plain("dataflow_pool_timeouts_total"),
        },
        cache: CacheView {
            hits,
            misses,
            hit_ratio: (hits + misses > 0.0).then(|| hits / (hits + misses)),
        },
        slow_queries: cur
            .sums
            .get("dataflow_slow_queries_total")
            .copied()
            .unwrap_or(0.0),
    }
}

/// The view as text lines (no colour codes but bold headings).
fn render(v: &View, width: usize) -> Vec<String> {
    let ms = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}"));
    let mut lines = vec![
        format!(
            "\x1b[1mdataflow monitor\x1b[0m  {}  (every {:.1}s; q to quit)",
            v.source, v.interval_seconds
        ),
        format!(
            "requests/s {:.1}   pool {}/{} open, {} idle, {} waiting, {} timeouts   cache hit {}   slow queries {}",
            v.requests_per_second,
            v.pool.connections,
            v.pool.size,
            v.pool.idle,
            v.pool.waiting,
            v.pool.timeouts,
            v.cache
                .hit_ratio
                .map_or("-".to_string(), |r| format!("{:.1}%", r * 100.0)),
            v.slow_queries
        ),
        String::new(),
        format!(
            "\x1b[1m{:<24} {:<11} {:>9} {:>9} {:>9} {:>7} {:>10} {:>8}\x1b[0m",
            "MODEL", "OP", "OPS/S", "P50 MS", "P99 MS", "ERR", "CALLS", "ERRORS"
        ),
    ];
    for r in &v.ops {
        lines.push(format!(
            "{:<24} {:<11} {:>9.1} {:>9} {:>9} {:>7} {:>10} {:>8}",
            r.model,
            r.op,
            r.ops_per_second,
            ms(r.p50_ms),
            ms(r.p99_ms),
            r.errors,
            r.calls_total,
            r.errors_total
        ));
    }
    if v.ops.is_empty() {
        lines.push("(no model node calls yet)".into());
    }
    lines
        .into_iter()
        .map(|l| {
            // Cut to the terminal's width, counting visible characters only.
            let visible = l.replace("\x1b[1m", "").replace("\x1b[0m", "");
            if visible.chars().count() > width {
                visible.chars().take(width).collect()
            } else {
                l
            }
        })
        .collect()
}

/// Runs the monitor: one interval (`once`, printed as JSON with `json`)
/// or the live view until `q` / Ctrl-C.
pub(crate) async fn run(
    source: Source<'_>,
    interval: Duration,
    once: bool,
    json: bool,
) -> Result<String> {
    let interval = interval.max(Duration::from_millis(100));
    let name = source.name();
    let mut prev = source.scrape().await?;
    if once {
        tokio::time::sleep(interval).await;
        let cur = source.scrape().await?;
        let v = view(name, &prev, &cur);
        return Ok(match json {
            true => format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default()),
            false => render(&v, usize::MAX)
                .into_iter()
                .map(|l| l.replace("\x1b[1m", "").replace("\x1b[0m", "") + "\n")
                .collect(),
        });
    }
    if json {
        return Err(Error::new(
            ErrorCode::Validation,
            "monitor --json prints one interval: add --once",
        ));
    }
    use std::io::IsTerminal as _;
    if !std::io::stdout().is_terminal() {
        return Err(Error::new(
            ErrorCode::Validation,
            "monitor draws on a terminal; for scripts use `monitor --once --json`",
        ));
    }
    let _screen = Screen::enter()?;
    let (keys, mut quit) = tokio::sync::mpsc::channel::<()>(1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader_stop = stop.clone();
    std::thread::spawn(move || {
        use crossterm::event::{self, Event, KeyCode, KeyModifiers};
        while !reader_stop.load(std::sync::atomic::Ordering::Relaxed) {
            if !event::poll(Duration::from_millis(100)).unwrap_or(false) {
                continue;
            }
            if let Ok(Event::Key(k)) = event::read() {
                let ctrl_c =
                    k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                if ctrl_c
                    || matches!(
                        k.code,
                        KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc
                    )
                {
                    let _ = keys.blocking_send(());
                    break;
                }
            }
        }
    });
    let mut status = String::from("waiting for the first interval...");
    loop {
        let width = crossterm::terminal::size().map_or(120, |(w, _)| usize::from(w));
        let mut out = String::from("\x1b[H\x1b[2J");
        out.push_str(&status);
        let _ = std::io::stdout().write_all(out.as_bytes());
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = quit.recv() => break,
            _ = tokio::time::sleep(interval) => {}
        }
        status = match source.scrape().await {
            Ok(cur) => {
                let v = view(name.clone(), &prev, &cur);
                prev = cur;
                render(&v, width).join("\r\n")
            }
            Err(e) => format!(
                "error[{}]: {}\r\n(retrying; q to quit)",
                e.code(),
                e.message()
            ),
        };
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(String::new())
}

/// Raw mode on the alternate screen, restored when dropped (also on errors).
struct Screen;

impl Screen {
    fn enter() -> Result<Screen> {
        crossterm::terminal::enable_raw_mode()
            .map_err(|e| Error::internal(format!("cannot use the terminal: {e}")))?;
        // Alternate screen, cursor hidden.
        let _ = std::io::stdout().write_all(b"\x1b[?1049h\x1b[?25l");
        let _ = std::io::stdout().flush();
        Ok(Screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = std::io::stdout().write_all(b"\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_interval_buckets() {
        let prev = vec![(0.001, 0.0), (0.01, 0.0), (f64::INFINITY, 0.0)];
        let cur = vec![(0.001, 50.0), (0.01, 100.0), (f64::INFINITY, 100.0)];
        let p50 = quantile(&prev, &cur, 0.5).unwrap();
        assert!((p50 - 1.0).abs() < 1e-9, "{p50}");
        let p99 = quantile(&prev, &cur, 0.99).unwrap();
        assert!(p99 > 9.0 && p99 <= 10.0, "{p99}");
        assert_eq!(quantile(&cur, &cur, 0.5), None);
    }

    #[test]
    fn parses_the_exposition() {
        let s = Scrape::parse(
            "# TYPE x counter\n\
             dataflow_node_calls_total{model=\"User\",op=\"Read\"} 7\n\
             dataflow_node_errors_total{code=\"not_found\",model=\"User\",op=\"Read\"} 2\n\
             dataflow_node_duration_seconds_bucket{le=\"+Inf\",model=\"User\",op=\"Read\"} 7\n\
             dataflow_pool_size 10\n",
        );
        let k = ("User".to_string(), "Read".to_string());
        assert_eq!(s.calls[&k], 7.0);
        assert_eq!(s.errors[&k], 2.0);
        assert_eq!(s.buckets[&k], vec![(f64::INFINITY, 7.0)]);
        assert_eq!(s.plain("dataflow_pool_size"), 10.0);
    }
}
