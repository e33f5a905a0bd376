//! Rate limits: how many calls a key (a caller, a workflow's caller, the
//! whole instance) may make per minute, with GCRA (the `governor` crate).
//!
//! A [`Limit`] is a named quota; a [`Limiter`] checks keys against one
//! limit in a [`RateStore`], the trait that holds the counters. The default
//! store, [`MemoryStore`], keeps them in this process: each nexus instance
//! counts on its own, so N instances behind a load balancer allow up to N
//! times a limit. A shared store (a database table, Redis) implements the
//! same trait; its calls are futures so it can make a round trip.
//!
//! Nexus checks its configured limits in one place before a workflow runs
//! (`channel::Shared::admit`); the API is public so other checks (failed
//! logins per source address, say) can use the same limiter:
//!
//! ```
//! # async fn f() -> dataflow::Result<()> {
//! use nexus::limits::{Decision, Limit, Limiter, MemoryStore};
//! let logins = Limiter::new(Limit::per_minute("login", 10)?, MemoryStore::shared());
//! match logins.check("ip:127.0.0.1").await? {
//!     Decision::Allowed { remaining, .. } => assert_eq!(remaining, 9),
//!     Decision::Limited { retry_after } => println!("retry in {retry_after:?}"),
//! }
//! # Ok(()) }
//! ```

use dataflow::{Error, ErrorCode, Result};
use futures_util::future::BoxFuture;
use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// A named quota: `per_minute` calls per key per minute, with bursts of up
/// to `per_minute` calls at once (a minute's allowance; GCRA then spaces
/// calls `60 / per_minute` seconds apart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    name: String,
    per_minute: NonZeroU32,
}

impl Limit {
    /// `per_minute` calls per key per minute under `name`, which names the
    /// limit in the `RateLimit-Policy` header and its counters in a store.
    /// Zero is a `config` error (it would refuse everything).
    pub fn per_minute(name: impl Into<String>, per_minute: u32) -> Result<Limit> {
        let name = name.into();
        let per_minute = NonZeroU32::new(per_minute).ok_or_else(|| {
            Error::new(
                ErrorCode::Config,
                format!("rate limit `{name}`: the calls per minute must be more than zero"),
            )
        })?;
        Ok(Limit { name, per_minute })
    }

    /// The limit's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Calls per key per minute.
    pub fn calls_per_minute(&self) -> u32 {
        self.per_minute.get()
    }

    /// The `RateLimit-Policy` item of this limit (IETF
    /// draft-ietf-httpapi-ratelimit-headers): `"name";q=100;w=60`.
    pub fn policy_header(&self) -> String {
        format!("\"{}\";q={};w=60", self.name, self.per_minute)
    }

    fn quota(&self) -> governor::Quota {
        governor::Quota::per_minute(self.per_minute)
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The call may go ahead.
    Allowed {
        /// Calls the key may still make at once.
        remaining: u32,
        /// Until the key's whole allowance is back.
        reset: Duration,
    },
    /// The key is over its limit.
    Limited {
        /// When one call will be allowed again.
        retry_after: Duration,
    },
}

impl Decision {
    /// The `RateLimit` header item for `limit` (IETF
    /// draft-ietf-httpapi-ratelimit-headers): `"name";r=<remaining>;t=<seconds>`.
    pub fn header(&self, limit: &Limit) -> String {
        let (remaining, seconds) = match *self {
            Decision::Allowed { remaining, reset } => (remaining, whole_seconds(reset)),
            Decision::Limited { retry_after } => (0, whole_seconds(retry_after)),
        };
        format!("\"{}\";r={remaining};t={seconds}", limit.name)
    }

    /// Calls still allowed at once (0 when limited).
    pub fn remaining(&self) -> u32 {
        match *self {
            Decision::Allowed { remaining, .. } => remaining,
            Decision::Limited { .. } => 0,
        }
    }
}

/// `d` in whole seconds, rounded up (a client that waits that long succeeds).
pub fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Where the counters live. One call takes one unit of `key`'s allowance
/// under `limit`, or says when one will be free; the counters of a limit
/// are identified by its name.
pub trait RateStore: Send + Sync + std::fmt::Debug {
    /// Checks `key` against `limit` and, when allowed, counts the call.
    fn check<'a>(&'a self, limit: &'a Limit, key: &'a str) -> BoxFuture<'a, Result<Decision>>;
}

type Keyed = governor::RateLimiter<
    String,
    governor::state::keyed::DefaultKeyedStateStore<String>,
    governor::clock::DefaultClock,
    StateInformationMiddleware,
>;

/// The in-memory store: GCRA counters per limit and key in this process
/// (lost on restart, not shared between instances). Keys idle for a whole
/// window are dropped now and then, so memory follows the active callers.
#[derive(Default)]
pub struct MemoryStore {
    limiters: RwLock<HashMap<String, Arc<Keyed>>>,
    checks: AtomicU64,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let limits = self.limiters.read().map(|l| l.len()).unwrap_or(0);
        f.debug_struct("MemoryStore")
            .field("limits", &limits)
            .finish()
    }
}

/// How many checks pass between sweeps of idle keys.
const SWEEP_EVERY: u64 = 4096;

impl MemoryStore {
    /// A new store, shareable between limiters.
    pub fn shared() -> Arc<dyn RateStore> {
        Arc::new(MemoryStore::default())
    }

    fn limiter(&self, limit: &Limit) -> Arc<Keyed> {
        let read = self.limiters.read().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = read.get(&limit.name) {
            return l.clone();
        }
        drop(read);
        let mut write = self.limiters.write().unwrap_or_else(|p| p.into_inner());
        write
            .entry(limit.name.clone())
            .or_insert_with(|| {
                Arc::new(
                    governor::RateLimiter::keyed(limit.quota())
                        .with_middleware::<StateInformationMiddleware>(),
                )
            })
            .clone()
    }

    /// The decision, without the future (the store never waits).
    fn decide(&self, limit: &Limit, key: &str) -> Decision {
        let limiter = self.limiter(limit);
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
        }
        let interval = limit.quota().replenish_interval();
        match limiter.check_key(&key.to_string()) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                let used = limit.per_minute.get().saturating_sub(remaining);
                Decision::Allowed {
                    remaining,
                    reset: interval * used,
                }
            }
            Err(not_until) => Decision::Limited {
                retry_after: not_until.wait_time_from(limiter.clock().now()),
            },
        }
    }
}

impl RateStore for MemoryStore {
    fn check<'a>(&'a self, limit: &'a Limit, key: &'a str) -> BoxFuture<'a, Result<Decision>> {
        Box::pin(std::future::ready(Ok(self.decide(limit, key))))
    }
}

/// One limit over a store: what nexus checks per caller, per workflow and
/// for the instance, and what other checks can reuse.
#[derive(Debug, Clone)]
pub struct Limiter {
    limit: Limit,
    store: Arc<dyn RateStore>,
}

impl Limiter {
    /// Checks keys against `limit`, counting in `store`.
    pub fn new(limit: Limit, store: Arc<dyn RateStore>) -> Limiter {
        Limiter { limit, store }
    }

    /// The limit checked.
    pub fn limit(&self) -> &Limit {
        &self.limit
    }

    /// Counts one call of `key`, or says when it may call again.
    pub async fn check(&self, key: &str) -> Result<Decision> {
        self.store.check(&self.limit, key).await
    }
}

/// The limits of an application (the builder's `rate_limit`,
/// `rate_limit_global`, `rate_limit_workflow`), over one store.
#[derive(Debug, Default)]
pub(crate) struct RateLimits {
    caller: Option<Limiter>,
    global: Option<Limiter>,
    workflows: HashMap<String, Limiter>,
}

/// The key the instance-wide limit counts every call under.
const GLOBAL_KEY: &str = "*";

impl RateLimits {
    pub(crate) fn new(
        caller: Option<u32>,
        global: Option<u32>,
        workflows: &[(String, u32)],
        store: Option<Arc<dyn RateStore>>,
    ) -> Result<RateLimits> {
        let store = store.unwrap_or_else(MemoryStore::shared);
        let limiter = |name: String, n: u32| -> Result<Limiter> {
            Ok(Limiter::new(Limit::per_minute(name, n)?, store.clone()))
        };
        let mut by_workflow = HashMap::new();
        for (name, n) in workflows {
            let l = limiter(format!("workflow:{name}"), *n)?;
            if by_workflow.insert(name.clone(), l).is_some() {
                return Err(Error::new(
                    ErrorCode::Config,
                    format!("rate_limit_workflow(\"{name}\", ..) is set twice; set it once"),
                ));
            }
        }
        Ok(RateLimits {
            caller: caller.map(|n| limiter("caller".into(), n)).transpose()?,
            global: global.map(|n| limiter("global".into(), n)).transpose()?,
            workflows: by_workflow,
        })
    }

    /// No limit is configured.
    pub(crate) fn is_empty(&self) -> bool {
        self.caller.is_none() && self.global.is_none() && self.workflows.is_empty()
    }

    /// The checks of one call of workflow `name` by the caller keyed
    /// `caller`: the workflow's limit, the caller's, then the instance's.
    pub(crate) fn for_call<'a>(
        &'a self,
        name: &str,
        caller: &'a str,
    ) -> impl Iterator<Item = (&'a Limiter, &'a str)> + 'a {
        let workflow = self.workflows.get(name).map(|l| (l, caller));
        workflow
            .into_iter()
            .chain(self.caller.as_ref().map(|l| (l, caller)))
            .chain(self.global.as_ref().map(|l| (l, GLOBAL_KEY)))
    }

    /// A per-workflow limit on a name that is not registered (a typo).
    pub(crate) fn unregistered<'a>(
        &'a self,
        registered: &std::collections::BTreeMap<String, crate::Registered>,
    ) -> Option<&'a str> {
        self.workflows
            .keys()
            .find(|w| !registered.contains_key(w.as_str()))
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_gets_its_burst_then_waits_and_others_are_apart() {
        let limiter = Limiter::new(Limit::per_minute("t", 3).unwrap(), MemoryStore::shared());
        let mut allowed = 0;
        for _ in 0..30 {
            if let Decision::Allowed { .. } = limiter.check("a").await.unwrap() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 3, "a minute's allowance at once, then nothing");
        match limiter.check("a").await.unwrap() {
            Decision::Limited { retry_after } => {
                assert!(retry_after <= Duration::from_secs(20), "{retry_after:?}");
                assert!(retry_after > Duration::from_secs(15), "{retry_after:?}");
            }
            d => panic!("still limited: {d:?}"),
        }
        assert_eq!(
            limiter.check("b").await.unwrap().remaining(),
            2,
            "another key has its own allowance"
        );
    }

    #[test]
    fn headers_follow_the_ietf_draft() {
        let limit = Limit::per_minute("caller", 100).unwrap();
        assert_eq!(limit.policy_header(), "\"caller\";q=100;w=60");
        let d = Decision::Limited {
            retry_after: Duration::from_millis(1200),
        };
        assert_eq!(d.header(&limit), "\"caller\";r=0;t=2");
        assert_eq!(
            Limit::per_minute("x", 0).unwrap_err().code(),
            ErrorCode::Config
        );
    }
}
