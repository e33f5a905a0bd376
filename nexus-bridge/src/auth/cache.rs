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
                ran.store(true, Ordering::Relaxed);
                // Remembered by a flight that ended while this one queued.
                if let Some(hit) = self.get(&digest) {
                    return Ok(hit);
                }
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
