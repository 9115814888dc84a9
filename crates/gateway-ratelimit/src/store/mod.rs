//! Where limit state lives: [`MemoryStore`] (one process) or, with the `redis` feature,
//! `RedisStore` / `HybridStore` (shared by every gateway instance).

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use crate::{Policy, algorithm::Outcome, key::RateLimitKey};

#[cfg(feature = "redis")]
mod hybrid;
mod memory;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "redis")]
pub use hybrid::{HybridStats, HybridStore};
pub use memory::MemoryStore;
#[cfg(feature = "redis")]
pub use redis::{FailurePolicy, RedisStore, RedisStoreBuilder, StoreStats, TimeSource};

/// One limit to evaluate for one request.
#[derive(Clone, Debug)]
pub struct Check {
    /// The limit's name, unique per store (a key is counted per name).
    pub name: Arc<str>,
    /// The partition the request is counted in.
    pub key: RateLimitKey,
    /// What the limit enforces.
    pub policy: Policy,
    /// The request's cost (weight), at least 1.
    pub cost: u32,
}

impl Check {
    /// The identity of this check's state: a seeded 64-bit hash of the limit's name, its kind
    /// (a rate and a quota under one name keep separate state) and the key.
    pub(crate) fn hash_with(&self, seed: &std::hash::RandomState) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = seed.build_hasher();
        h.write(self.name.as_bytes());
        h.write_u8(match self.policy {
            Policy::Rate { .. } => 0xfe,
            Policy::Quota(_) => 0xff,
        });
        h.write(self.key.as_str().as_bytes());
        h.finish()
    }
}

/// The outcome of all of a request's limits.
///
/// A request is admitted only when every limit admits it, and then every limit is charged; a
/// refused request charges none of them (an all-or-nothing decision, so a request refused by its
/// per-second rate does not use up its daily quota).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// One outcome per check, in order.
    pub outcomes: Vec<Outcome>,
}

impl Decision {
    /// Whether every limit admits the request.
    pub fn allowed(&self) -> bool {
        self.outcomes.iter().all(|o| o.allowed)
    }

    /// How long to hold an admitted request (the longest throttling delay).
    pub fn delay(&self) -> Duration {
        self.outcomes
            .iter()
            .map(|o| o.delay)
            .max()
            .unwrap_or_default()
    }

    /// The index of the outcome to report: for a refusal, the refusing limit that frees up last
    /// (a limit that can never admit the request wins); for an admission, the limit with the
    /// fewest requests remaining.
    pub fn deciding(&self) -> Option<usize> {
        let refused = |o: &Outcome| !o.allowed;
        if self.outcomes.iter().any(refused) {
            self.outcomes
                .iter()
                .enumerate()
                .filter(|(_, o)| refused(o))
                .max_by_key(|(_, o)| o.retry_after.unwrap_or(Duration::MAX))
                .map(|(i, _)| i)
        } else {
            self.outcomes
                .iter()
                .enumerate()
                .min_by_key(|(_, o)| (o.remaining, std::cmp::Reverse(o.reset)))
                .map(|(i, _)| i)
        }
    }

    /// Evaluates all checks against read-only state and returns the outcomes; the caller commits
    /// only when all are allowed. Shared by the stores.
    pub(crate) fn all_or_nothing(outcomes: Vec<Outcome>) -> Self {
        Self { outcomes }
    }
}

/// A store failed to decide (Redis unreachable or too slow, a script error).
#[derive(Debug)]
pub struct StoreError(pub(crate) String);

impl StoreError {
    /// A store error with a message (for custom stores).
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate-limit store: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

/// A decision that is either ready now (in-memory) or needs I/O (Redis).
pub enum Decided {
    /// Decided without waiting.
    Ready(Result<Decision, StoreError>),
    /// Waiting on I/O.
    Pending(Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>),
}

impl fmt::Debug for Decided {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready(r) => f.debug_tuple("Ready").field(r).finish(),
            Self::Pending(_) => f.write_str("Pending(..)"),
        }
    }
}

/// Limit state: decides a request's checks atomically (all admitted and charged, or none).
///
/// `max_wait` is the throttling allowance: a rate limit may admit a request that conforms within
/// `max_wait`, reserving its slot and reporting the wait as [`Outcome::delay`]. Quotas never
/// throttle.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Decides `checks` (never empty).
    fn decide(&self, checks: &[Check], max_wait: Duration) -> Decided;
}

impl<S: Store + ?Sized> Store for Arc<S> {
    fn decide(&self, checks: &[Check], max_wait: Duration) -> Decided {
        (**self).decide(checks, max_wait)
    }
}
