//! Local buckets that lease tokens from Redis in batches.

use std::{
    collections::HashMap,
    fmt,
    hash::{BuildHasher, Hasher, RandomState},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use super::{
    Check, Decided, Decision, RedisStore, Store,
    redis::{Row, ScriptCall},
};
use crate::{Policy, algorithm::Outcome, clock::Clock};

const SHARDS: usize = 64;

/// Tokens this instance holds for one (limit, key).
#[derive(Clone, Copy, Debug)]
struct Lease {
    tokens: u64,
    /// Local clock (µs) after which unused tokens are dropped.
    expires: i64,
    /// What Redis reported at the last refill, for headers.
    limit: u64,
    window: Duration,
    remaining: u64,
    reset_at: i64,
    /// Local clock (µs) before which Redis has said no tokens (or no full lease) are free:
    /// requests the lease cannot cover are refused locally until then.
    blocked_until: i64,
}

/// Counters of a [`HybridStore`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HybridStats {
    /// Decisions made.
    pub decisions: u64,
    /// Lease refills sent to Redis (one script call each).
    pub refills: u64,
}

/// Limit state shared through Redis at a fraction of the Redis calls: each instance leases
/// tokens in batches and spends them locally.
///
/// A lease for a rate is `rate × lease` tokens (at most the burst) and must be spent within
/// `lease`; a lease for a quota is `limit × lease / window` tokens, valid until the window ends.
/// Limits too slow to fill a batch lease one token at a time, which is exact mode. Leased tokens
/// are charged in Redis when leased, so instances never admit more than the shared bucket
/// granted; the cost is timing: tokens leased at `t` may be spent up to `lease` later, so over
/// any window the admitted count can exceed `rate × window + burst` by at most `rate × lease`
/// (0.5 % of a 10 s window with the default 50 ms), and tokens an instance leased but did not
/// spend before expiry are lost to the others (undershoot, bounded by one lease per instance and
/// key). Requests whose limits use throttling are decided exactly. Response headers report the
/// remaining count as of the last refill plus the local lease.
///
/// Clones share the leases.
#[derive(Clone)]
pub struct HybridStore(Arc<Inner>);

struct Inner {
    redis: RedisStore,
    lease: Duration,
    shards: Box<[Mutex<HashMap<u64, Lease>>]>,
    per_shard: usize,
    seed: RandomState,
    clock: Clock,
    decisions: AtomicU64,
    refills: AtomicU64,
}

impl fmt::Debug for HybridStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HybridStore")
            .field("redis", &self.0.redis)
            .field("lease", &self.0.lease)
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<HashMap<u64, Lease>>) -> MutexGuard<'_, HashMap<u64, Lease>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HybridStore {
    /// Leases `lease` worth of tokens at a time from `redis` (50 ms is a good start), holding
    /// leases for at most 100,000 keys. Must be called inside a tokio runtime.
    pub fn new(redis: RedisStore, lease: Duration) -> Self {
        Self::with_clock(redis, lease, Clock::system())
    }

    /// As [`new`](Self::new), with the clock that times lease expiry.
    pub fn with_clock(redis: RedisStore, lease: Duration, clock: Clock) -> Self {
        Self(Arc::new(Inner {
            redis,
            lease,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: 100_000 / SHARDS,
            seed: RandomState::new(),
            clock,
            decisions: AtomicU64::new(0),
            refills: AtomicU64::new(0),
        }))
    }

    /// The store's counters.
    pub fn stats(&self) -> HybridStats {
        HybridStats {
            decisions: self.0.decisions.load(Ordering::Relaxed),
            refills: self.0.refills.load(Ordering::Relaxed),
        }
    }

    /// The Redis store underneath.
    pub fn redis(&self) -> &RedisStore {
        &self.0.redis
    }

    fn lease_size(&self, policy: &Policy) -> u64 {
        let secs = self.0.lease.as_secs_f64();
        match *policy {
            Policy::Rate { rate, burst } => {
                ((rate.per_second_f64() * secs) as u64).clamp(1, u64::from(burst))
            }
            Policy::Quota(q) => {
                let len = q.window().bounds(0).2 - q.window().bounds(0).1;
                let len = Duration::from_micros(u64::try_from(len).unwrap_or(1)).as_secs_f64();
                ((q.limit() as f64 * secs / len) as u64).clamp(1, q.limit())
            }
        }
    }

    fn hash(&self, check: &Check) -> u64 {
        let mut h = self.0.seed.build_hasher();
        h.write(check.name.as_bytes());
        h.write_u8(0xff);
        h.write(check.key.as_str().as_bytes());
        h.finish()
    }

    /// Spends `cost` from every check's lease if all hold enough.
    fn try_local(&self, checks: &[Check], hashes: &[u64], now: i64) -> Local {
        let mut shards: Vec<usize> = hashes.iter().map(|&h| h as usize % SHARDS).collect();
        shards.sort_unstable();
        shards.dedup();
        let mut guards: Vec<_> = shards.iter().map(|&s| lock(&self.0.shards[s])).collect();
        let slot = |h: u64| shards.binary_search(&(h as usize % SHARDS)).unwrap_or(0);
        let mut lacking = Vec::new();
        let mut blocked = Vec::new();
        for (i, (c, h)) in checks.iter().zip(hashes).enumerate() {
            let lease = guards[slot(*h)].get(h);
            let have = lease.filter(|l| l.expires > now).map_or(0, |l| l.tokens);
            if have >= u64::from(c.cost.max(1)) {
                continue;
            }
            match lease.map(|l| l.blocked_until).filter(|&b| b > now) {
                Some(until) => blocked.push((i, until)),
                None => lacking.push(i),
            }
        }
        if !blocked.is_empty() {
            let mut outcomes: Vec<Outcome> = checks.iter().map(placeholder).collect();
            for (i, until) in blocked {
                outcomes[i].allowed = false;
                outcomes[i].retry_after = Some(micros(until - now));
                outcomes[i].reset = micros(until - now);
            }
            return Local::Refused(outcomes);
        }
        if !lacking.is_empty() {
            return Local::Lacking(lacking);
        }
        Local::Admitted(
            checks
                .iter()
                .zip(hashes)
                .map(|(c, h)| {
                    let lease = guards[slot(*h)].get_mut(h).expect("checked above");
                    lease.tokens -= u64::from(c.cost.max(1));
                    local_outcome(lease, now)
                })
                .collect(),
        )
    }

    /// Records a refill's answer in the leases.
    fn record(&self, checks: &[Check], hashes: &[u64], lacking: &[usize], rows: &[Row], now: i64) {
        let charged = rows.iter().all(|r| r.outcome.allowed);
        for (&i, row) in lacking.iter().zip(rows) {
            let h = hashes[i];
            let mut shard = lock(&self.0.shards[h as usize % SHARDS]);
            if shard.len() >= self.0.per_shard && !shard.contains_key(&h) {
                shard.retain(|_, l| l.expires > now || l.blocked_until > now);
                if shard.len() >= self.0.per_shard {
                    // Leases are only cached tokens: dropping them loses capacity, never safety.
                    shard.clear();
                }
            }
            let old = shard.get(&h).copied();
            let held = old.filter(|l| l.expires > now).map_or(0, |l| l.tokens);
            let lease = if charged {
                let valid_for = match checks[i].policy {
                    Policy::Rate { .. } => self.0.lease,
                    Policy::Quota(_) => row.outcome.reset,
                };
                Lease {
                    tokens: held + row.granted,
                    expires: now.saturating_add(as_micros(valid_for).max(1)),
                    limit: row.outcome.limit,
                    window: row.outcome.window,
                    remaining: row.outcome.remaining,
                    reset_at: now.saturating_add(as_micros(row.outcome.reset)),
                    blocked_until: row
                        .full_lease_in
                        .map_or(i64::MIN, |d| now.saturating_add(as_micros(d))),
                }
            } else if !row.outcome.allowed {
                let wait = row.outcome.retry_after.unwrap_or(self.0.lease);
                Lease {
                    tokens: held,
                    expires: old.map_or(now, |l| l.expires),
                    limit: row.outcome.limit,
                    window: row.outcome.window,
                    remaining: row.outcome.remaining,
                    reset_at: now.saturating_add(as_micros(row.outcome.reset)),
                    blocked_until: now.saturating_add(as_micros(wait).max(1)),
                }
            } else {
                // Admitted by this limit but refused by another: nothing was charged.
                continue;
            };
            shard.insert(h, lease);
        }
    }
}

enum Local {
    Admitted(Vec<Outcome>),
    Refused(Vec<Outcome>),
    Lacking(Vec<usize>),
}

fn micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

fn as_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// An outcome for a limit that admits (used beside the limits that refuse).
fn placeholder(c: &Check) -> Outcome {
    Outcome {
        allowed: true,
        limit: c.policy.capacity(),
        window: Duration::ZERO,
        remaining: 0,
        reset: Duration::ZERO,
        retry_after: None,
        delay: Duration::ZERO,
    }
}

fn local_outcome(lease: &Lease, now: i64) -> Outcome {
    Outcome {
        allowed: true,
        limit: lease.limit,
        window: lease.window,
        remaining: lease
            .remaining
            .saturating_add(lease.tokens)
            .min(lease.limit),
        reset: Duration::from_micros(u64::try_from(lease.reset_at - now).unwrap_or(0)),
        retry_after: None,
        delay: Duration::ZERO,
    }
}

impl Store for HybridStore {
    fn decide(&self, checks: &[Check], max_wait: Duration) -> Decided {
        self.0.decisions.fetch_add(1, Ordering::Relaxed);
        if !max_wait.is_zero() || self.0.redis.is_degraded() {
            // Throttling needs an exact reservation; a paused store goes to its failure policy.
            return self.0.redis.decide(checks, max_wait);
        }
        let now = self.0.clock.now_micros();
        let hashes: Vec<u64> = checks.iter().map(|c| self.hash(c)).collect();
        let lacking = match self.try_local(checks, &hashes, now) {
            Local::Admitted(outcomes) | Local::Refused(outcomes) => {
                return Decided::Ready(Ok(Decision { outcomes }));
            }
            Local::Lacking(lacking) => lacking,
        };
        // Refill what is lacking, in one script call.
        let refill: Vec<Check> = lacking.iter().map(|&i| checks[i].clone()).collect();
        let want: Vec<u64> = refill.iter().map(|c| self.lease_size(&c.policy)).collect();
        let call = ScriptCall::new(
            self.0.redis.prefix(),
            &refill,
            Duration::ZERO,
            self.0.redis.now_arg(),
            Some(&want),
        );
        let store = self.clone();
        let checks = checks.to_vec();
        Decided::Pending(Box::pin(async move {
            store.0.refills.fetch_add(1, Ordering::Relaxed);
            let Ok(Some((_, rows))) = store.0.redis.run(call).await else {
                return store.0.redis.fail(&checks, Duration::ZERO);
            };
            let now = store.0.clock.now_micros();
            store.record(&checks, &hashes, &lacking, &rows, now);
            if rows.iter().any(|r| !r.outcome.allowed) {
                let mut outcomes: Vec<Outcome> = checks.iter().map(placeholder).collect();
                for (&i, row) in lacking.iter().zip(&rows) {
                    outcomes[i] = row.outcome;
                }
                return Ok(Decision { outcomes });
            }
            match store.try_local(&checks, &hashes, now) {
                Local::Admitted(outcomes) | Local::Refused(outcomes) => Ok(Decision { outcomes }),
                // Concurrent requests spent the refill first: refuse briefly rather than overshoot.
                Local::Lacking(lacking) => {
                    let mut outcomes: Vec<Outcome> = checks.iter().map(placeholder).collect();
                    for i in lacking {
                        outcomes[i].allowed = false;
                        outcomes[i].retry_after = Some(store.0.lease);
                    }
                    Ok(Decision { outcomes })
                }
            }
        }))
    }
}
