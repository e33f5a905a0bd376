//! Credentials verified once and remembered briefly: the same shape for
//! JWTs and API keys.
//!
//! An entry is found under the SHA-256 of the credential (never the
//! credential itself) and holds the identity it proved. It is used until the
//! earlier of two bounds: the cache's time to live, counted from the
//! verification, and the credential's own deadline (a JWT's `exp` plus the
//! leeway, an API key's `expires`), checked against the clock on every hit —
//! so a remembered credential is refused from the same second a fresh
//! verification would refuse it.
//!
//! Only successes are remembered. Concurrent first uses of one credential
//! are verified once ("single flight"): the first caller verifies, the others
//! wait for its outcome, success or refusal, and the next caller after a
//! refusal verifies again. [`Verified::clear`] forgets every entry and makes
//! a verification already under way not remember its outcome (a revocation
//! that raced it still wins).

use super::{Identity, Refusal};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::OnceCell;

/// The most credentials remembered at once.
const MAX_ENTRIES: usize = 10_000;

/// What a verification yields: the identity and, when the credential has
/// one, the Unix second from which it is no longer valid.
pub(super) type Proof = (Identity, Option<i64>);

/// A verification's outcome as its waiters share it.
type Outcome = Result<Identity, Refusal>;

/// Where an identity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Remembered, or the outcome of a verification another request ran.
    Remembered,
    /// Verified by this request.
    Verified,
}

struct Entry {
    identity: Identity,
    until: Instant,
    deadline: Option<i64>,
}

/// The cache of one kind of credential.
pub(super) struct Verified {
    ttl: Duration,
    entries: RwLock<HashMap<[u8; 32], Entry>>,
    inflight: Mutex<HashMap<[u8; 32], Arc<OnceCell<Outcome>>>>,
    generation: AtomicU64,
}

/// The current Unix second (as `jsonwebtoken` reads the clock).
pub(super) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The SHA-256 of a credential: its key in the cache.
pub(super) fn digest(credential: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(credential.as_bytes()).into()
}

impl Verified {
    /// A cache whose entries live at most `ttl` (zero: nothing is remembered,
    /// concurrent verifications are still shared).
    pub(super) fn new(ttl: Duration) -> Verified {
        Verified {
            ttl,
            entries: RwLock::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    /// The identity remembered under `digest`, if still valid.
    pub(super) fn get(&self, digest: &[u8; 32]) -> Option<Identity> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let e = entries.get(digest)?;
        (e.until > Instant::now() && e.deadline.is_none_or(|d| unix_now() < d))
            .then(|| e.identity.clone())
    }

    /// Remembers a verified identity, unless [`clear`](Self::clear) ran
    /// since the verification began (`generation` is from then).
    pub(super) fn insert(&self, digest: [u8; 32], proof: &Proof, generation: u64) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            let (now, unix) = (Instant::now(), unix_now());
            entries.retain(|_, e| e.until > now && e.deadline.is_none_or(|d| unix < d));
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            digest,
            Entry {
                identity: proof.0.clone(),
                until: Instant::now() + self.ttl,
                deadline: proof.1,
            },
        );
    }

    /// The counter [`insert`](Self::insert) compares: read it before
    /// verifying.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Forgets everything (a key was revoked, the JWKS changed).
    pub(super) fn clear(&self) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }

    /// The remembered identity under `digest`, else the outcome of `verify`
    /// — run once for all the callers that ask for `digest` meanwhile.
    pub(super) async fn get_or_verify<F, Fut>(
        &self,
        digest: [u8; 32],
        verify: F,
    ) -> Result<(Identity, Source), Refusal>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Proof, Refusal>>,
    {
        if let Some(hit) = self.get(&digest) {
            return Ok((hit, Source::Remembered));
        }
        let cell = super::lock(&self.inflight)
            .entry(digest)
            .or_default()
            .clone();
        let _leave = Leave {
            cache: self,
            digest,
            cell: &cell,
        };
        let ran = AtomicBool::new(false);
        let outcome = cell
            .get_or_init(|| async {
                // Remembered by a flight that ended while this one queued.
                if let Some(hit) = self.get(&digest) {
                    return Ok(hit);
                }
                ran.store(true, Ordering::Relaxed);
                let generation = self.generation();
                let proof = verify().await?;
                self.insert(digest, &proof, generation);
                Ok(proof.0)
            })
            .await
            .clone();
        let source = if ran.load(Ordering::Relaxed) {
            Source::Verified
        } else {
            Source::Remembered
        };
        outcome.map(|identity| (identity, source))
    }
}

/// Ends a caller's part in a flight: the flight is forgotten once it has an
/// outcome (later callers find the entry, or verify afresh after a refusal)
/// or when its last caller leaves (all of them cancelled).
struct Leave<'a> {
    cache: &'a Verified,
    digest: [u8; 32],
    cell: &'a Arc<OnceCell<Outcome>>,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut inflight = super::lock(&self.cache.inflight);
        if let Some(current) = inflight.get(&self.digest) {
            // Clones are made under this lock: 2 is the map's and ours.
            if Arc::ptr_eq(current, self.cell)
                && (self.cell.initialized() || Arc::strong_count(self.cell) <= 2)
            {
                inflight.remove(&self.digest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn who(actor: &str) -> Identity {
        Identity {
            actor: actor.into(),
            tenant: None,
            roles: vec!["reader".into()],
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_verification_serves_concurrent_callers_and_refusals_are_not_kept() {
        let cache = Arc::new(Verified::new(Duration::from_secs(30)));
        let runs = Arc::new(AtomicUsize::new(0));
        let calls = (0..16).map(|_| {
            let (cache, runs) = (cache.clone(), runs.clone());
            tokio::spawn(async move {
                cache
                    .get_or_verify(digest("k1"), || async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Ok((who("a"), None))
                    })
                    .await
            })
        });
        let mut verified = 0;
        for call in calls.collect::<Vec<_>>() {
            let (identity, source) = call.await.unwrap().unwrap();
            assert_eq!(identity.actor, "a");
            verified += usize::from(source == Source::Verified);
        }
        assert_eq!((runs.load(Ordering::SeqCst), verified), (1, 1));
        assert!(cache.inflight.lock().unwrap().is_empty());

        for round in 1..=2 {
            let r = cache
                .get_or_verify(digest("bad"), || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Err::<Proof, _>(super::super::invalid("no"))
                })
                .await;
            assert!(matches!(r, Err(Refusal::Invalid(_))));
            assert_eq!(runs.load(Ordering::SeqCst), 1 + round, "verified again");
        }
    }

    #[tokio::test]
    async fn entries_end_at_the_deadline_the_ttl_or_a_clear() {
        let cache = Verified::new(Duration::from_secs(30));
        let past = unix_now();
        cache.insert(digest("old"), &(who("old"), Some(past)), cache.generation());
        assert!(cache.get(&digest("old")).is_none(), "past its deadline");
        cache.insert(
            digest("ok"),
            &(who("ok"), Some(past + 60)),
            cache.generation(),
        );
        assert_eq!(cache.get(&digest("ok")).unwrap().actor, "ok");

        // A verification that began before a clear is not remembered.
        let before = cache.generation();
        cache.clear();
        assert!(cache.get(&digest("ok")).is_none());
        cache.insert(digest("raced"), &(who("raced"), None), before);
        assert!(cache.get(&digest("raced")).is_none());

        let short = Verified::new(Duration::from_millis(50));
        short.insert(digest("t"), &(who("t"), None), short.generation());
        assert!(short.get(&digest("t")).is_some());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(short.get(&digest("t")).is_none(), "past the TTL");
        let off = Verified::new(Duration::ZERO);
        off.insert(digest("z"), &(who("z"), None), off.generation());
        assert!(off.get(&digest("z")).is_none(), "a zero TTL keeps nothing");
    }
}
