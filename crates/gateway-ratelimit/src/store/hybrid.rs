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

use tokio::sync::watch;

use super::{
    Check, Decided, Decision, RedisStore, Store,
    redis::{Row, ScriptCall},
};
use crate::{Policy, algorithm::Outcome, clock::Clock};

const SHARDS: usize = 64;
/// Rounds of waiting on other requests' refills before deciding exactly (each round is one
/// refill answered, which serves a lease's worth of waiters).
const MAX_WAITS: usize = 32;

/// Tokens this instance holds for one (limit, key).
#[derive(Clone, Debug)]
struct Lease {
    tokens: u64,
    /// Local clock (µs) after which unused tokens are dropped. Never extended for tokens already
    /// held: a refill replaces them.
    expires: i64,
    /// What Redis reported at the last refill, for headers.
    remaining: u64,
    reset_at: i64,
    /// Local clock (µs) before which Redis has said no tokens (or no full lease) are free:
    /// requests the lease cannot cover are refused locally until then.
    blocked_until: i64,
    /// Set while a refill for this key is in flight; others wait for it instead of sending their
    /// own (single flight). A closed channel means the refill was abandoned.
    refill: Option<watch::Receiver<()>>,
}

impl Lease {
    fn empty() -> Self {
        Self {
            tokens: 0,
            expires: i64::MIN,
            remaining: 0,
            reset_at: i64::MIN,
            blocked_until: i64::MIN,
            refill: None,
        }
    }

    fn usable(&self, now: i64) -> u64 {
        if self.expires > now { self.tokens } else { 0 }
    }

    fn refill_in_flight(&self) -> Option<watch::Receiver<()>> {
        self.refill
            .as_ref()
            .filter(|rx| rx.has_changed().is_ok())
            .cloned()
    }

    /// Whether the entry still holds anything an absent entry would not.
    fn live(&self, now: i64) -> bool {
        self.expires > now || self.blocked_until > now || self.refill_in_flight().is_some()
    }
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
/// Limits too slow to fill a batch lease one token at a time, which is exact mode. Only one
/// refill per key is in flight at a time; concurrent requests wait for it. When Redis can only
/// grant part of a lease, the instance spends what it got and then refuses locally until a full
/// lease is free again, so a saturated limit costs about one Redis call per lease, not one per
/// refused request.
///
/// Leased tokens are charged in Redis when leased, so instances never admit more than the
/// shared bucket granted; the cost is timing: tokens leased at `t` may be spent up to `lease`
/// later, so over any window the admitted count can exceed `rate × window + burst` by at most
/// `rate × lease` (0.5 % of a 10 s window with the default 50 ms), and tokens an instance leased
/// but did not spend before expiry are lost to the others (undershoot, bounded by one lease per
/// instance and key). Requests whose limits use throttling are decided exactly. Response headers
/// report the remaining count as of the last refill plus the local lease.
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

fn micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

fn as_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// What the local leases say about a request.
enum Local {
    /// Every limit's lease covered it (tokens spent).
    Admitted(Vec<Outcome>),
    /// A limit is blocked: Redis said nothing is free yet.
    Refused(Vec<Outcome>),
    /// Another request's refill for one of these keys is in flight.
    Wait(watch::Receiver<()>),
    /// Some leases must be refilled by this request (`lacking`); the others' tokens are
    /// reserved (spent, refunded if the request is refused).
    Refill {
        lacking: Vec<usize>,
        reserved: Vec<usize>,
        done: watch::Sender<()>,
    },
}

impl HybridStore {
    /// Leases `lease` worth of tokens at a time from `redis` (50 ms is a good start), holding
    /// leases for at most 100,000 keys.
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
                let (_, start, end) = q.window().bounds(0);
                let len = micros(end - start).as_secs_f64();
                ((q.limit() as f64 * secs / len) as u64).clamp(1, q.limit())
            }
        }
    }

    fn hash(&self, check: &Check) -> u64 {
        let mut h = self.0.seed.build_hasher();
        h.write(check.name.as_bytes());
        h.write_u8(match check.policy {
            Policy::Rate { .. } => 0xfe,
            Policy::Quota(_) => 0xff,
        });
        h.write(check.key.as_str().as_bytes());
        h.finish()
    }

    /// Locks the shards of `hashes` in index order; returns the guards and, per hash, its guard.
    fn lock_all(&self, hashes: &[u64]) -> (Vec<MutexGuard<'_, HashMap<u64, Lease>>>, Vec<usize>) {
        let mut idx: Vec<usize> = hashes.iter().map(|&h| h as usize % SHARDS).collect();
        idx.sort_unstable();
        idx.dedup();
        let slot = hashes
            .iter()
            .map(|&h| idx.binary_search(&(h as usize % SHARDS)).unwrap_or(0))
            .collect();
        (idx.iter().map(|&i| lock(&self.0.shards[i])).collect(), slot)
    }

    fn try_local(&self, checks: &[Check], hashes: &[u64], now: i64) -> Local {
        let (mut guards, slot) = self.lock_all(hashes);
        // What each distinct (limit, key) must cover (a request may name one twice).
        let mut need: HashMap<u64, u64> = HashMap::with_capacity(checks.len());
        for (c, &h) in checks.iter().zip(hashes) {
            *need.entry(h).or_default() += u64::from(c.cost.max(1));
        }
        let mut lacking = Vec::new();
        let mut blocked = Vec::new();
        for (i, &h) in hashes.iter().enumerate() {
            let lease = guards[slot[i]].get(&h);
            if lease.map_or(0, |l| l.usable(now)) >= need[&h] {
                continue;
            }
            if let Some(l) = lease {
                if l.blocked_until > now {
                    blocked.push((i, l.blocked_until));
                    continue;
                }
                if let Some(rx) = l.refill_in_flight() {
                    return Local::Wait(rx);
                }
            }
            if !lacking.iter().any(|&j| hashes[j] == h) {
                lacking.push(i);
            }
        }
        if !blocked.is_empty() {
            let mut outcomes: Vec<Outcome> = checks.iter().map(|c| placeholder(c, now)).collect();
            for (i, until) in blocked {
                outcomes[i].allowed = false;
                outcomes[i].retry_after = Some(micros(until - now));
                outcomes[i].reset = micros(until - now);
            }
            return Local::Refused(outcomes);
        }
        let lacking_hashes: Vec<u64> = lacking.iter().map(|&i| hashes[i]).collect();
        let mut reserved = Vec::new();
        for (i, (c, &h)) in checks.iter().zip(hashes).enumerate() {
            if lacking_hashes.contains(&h) {
                continue;
            }
            if let Some(l) = guards[slot[i]].get_mut(&h) {
                l.tokens = l.tokens.saturating_sub(u64::from(c.cost.max(1)));
            }
            reserved.push(i);
        }
        if lacking.is_empty() {
            let outcomes = checks
                .iter()
                .zip(hashes)
                .enumerate()
                .map(|(i, (c, h))| local_outcome(c, guards[slot[i]].get(h), now))
                .collect();
            return Local::Admitted(outcomes);
        }
        let (done, rx) = watch::channel(());
        for &i in &lacking {
            let map = &mut guards[slot[i]];
            self.make_room(map, hashes[i], now);
            let lease = map.entry(hashes[i]).or_insert_with(Lease::empty);
            // A remainder smaller than the request is dropped rather than carried into the new
            // lease, so no token outlives the lease it came with.
            lease.tokens = 0;
            lease.refill = Some(rx.clone());
        }
        Local::Refill {
            lacking,
            reserved,
            done,
        }
    }

    /// Keeps a full shard within its bound: expired entries first, then those closest to expiry.
    fn make_room(&self, map: &mut HashMap<u64, Lease>, incoming: u64, now: i64) {
        if map.len() < self.0.per_shard || map.contains_key(&incoming) {
            return;
        }
        map.retain(|_, l| l.live(now));
        let target = self.0.per_shard - self.0.per_shard / 8;
        if map.len() <= target {
            return;
        }
        let excess = map.len() - target;
        let mut ends: Vec<i64> = map
            .values()
            .map(|l| l.expires.max(l.blocked_until))
            .collect();
        let (_, &mut cutoff, _) = ends.select_nth_unstable(excess - 1);
        let mut evicted = 0;
        // Leases are only cached tokens: dropping them loses capacity, never safety.
        map.retain(|_, l| {
            if evicted < excess && l.expires.max(l.blocked_until) <= cutoff {
                evicted += 1;
                false
            } else {
                true
            }
        });
    }

    /// Gives reserved tokens back (the request was refused or failed).
    fn refund(&self, checks: &[Check], hashes: &[u64], reserved: &[usize], now: i64) {
        let (mut guards, slot) = self.lock_all(hashes);
        for &i in reserved {
            if let Some(l) = guards[slot[i]]
                .get_mut(&hashes[i])
                .filter(|l| l.expires > now)
            {
                l.tokens += u64::from(checks[i].cost.max(1));
            }
        }
    }

    /// Records a refill's answer; returns the request's outcomes.
    fn record(
        &self,
        checks: &[Check],
        hashes: &[u64],
        lacking: &[usize],
        rows: &[Row],
        now: i64,
    ) -> Vec<Outcome> {
        let charged = rows.iter().all(|r| r.outcome.allowed);
        let (mut guards, slot) = self.lock_all(hashes);
        let mut outcomes: Vec<Outcome> = checks
            .iter()
            .zip(hashes)
            .enumerate()
            .map(|(i, (c, h))| local_outcome(c, guards[slot[i]].get(h), now))
            .collect();
        for (&i, row) in lacking.iter().zip(rows) {
            let h = hashes[i];
            let need = need_of(checks, hashes, h);
            let lease = guards[slot[i]].entry(h).or_insert_with(Lease::empty);
            lease.refill = None;
            lease.remaining = row.outcome.remaining;
            lease.reset_at = now.saturating_add(as_micros(row.outcome.reset));
            if charged {
                let valid_for = match checks[i].policy {
                    Policy::Rate { .. } => self.0.lease,
                    Policy::Quota(_) => row.outcome.reset,
                };
                lease.tokens = row.granted.saturating_sub(need);
                lease.expires = now.saturating_add(as_micros(valid_for).max(1));
                lease.blocked_until = row
                    .full_lease_in
                    .map_or(i64::MIN, |d| now.saturating_add(as_micros(d)));
                let mut o = row.outcome;
                o.remaining = o.remaining.saturating_add(lease.tokens).min(o.limit);
                outcomes[i] = o;
            } else {
                if !row.outcome.allowed {
                    let wait = row.outcome.retry_after.unwrap_or(self.0.lease);
                    lease.blocked_until = now.saturating_add(as_micros(wait).max(1));
                }
                outcomes[i] = row.outcome;
            }
        }
        outcomes
    }

    async fn decide_async(
        self,
        checks: Vec<Check>,
        hashes: Vec<u64>,
        mut first: Local,
    ) -> Result<Decision, super::StoreError> {
        // Waiting on other requests' refills is bounded by one Redis timeout in all; past it the
        // failure policy decides, as it would for a call of our own.
        let deadline = tokio::time::Instant::now() + self.0.redis.timeout();
        for _ in 0..MAX_WAITS {
            match first {
                Local::Admitted(outcomes) | Local::Refused(outcomes) => {
                    return Ok(Decision { outcomes });
                }
                Local::Wait(mut rx) => {
                    // Woken when the refill is recorded or abandoned.
                    if tokio::time::timeout_at(deadline, rx.changed())
                        .await
                        .is_err()
                    {
                        return self.0.redis.fail(&checks, Duration::ZERO);
                    }
                }
                Local::Refill {
                    lacking,
                    reserved,
                    done,
                } => {
                    // The script's `need` is everything this request asks of the key; `want`
                    // is a lease's worth, at least that.
                    let mut refill: Vec<Check> = Vec::with_capacity(lacking.len());
                    let mut want: Vec<u64> = Vec::with_capacity(lacking.len());
                    for &i in &lacking {
                        let need = need_of(&checks, &hashes, hashes[i]);
                        let mut c = checks[i].clone();
                        c.cost = u32::try_from(need).unwrap_or(u32::MAX);
                        want.push(self.lease_size(&c.policy).max(need));
                        refill.push(c);
                    }
                    let call = ScriptCall::new(
                        self.0.redis.prefix(),
                        &refill,
                        Duration::ZERO,
                        self.0.redis.now_arg(),
                        Some(&want),
                    );
                    self.0.refills.fetch_add(1, Ordering::Relaxed);
                    let answer = self.0.redis.run(call).await;
                    let now = self.0.clock.now_micros();
                    let result = match answer {
                        Ok(Some((_, rows))) => {
                            let outcomes = self.record(&checks, &hashes, &lacking, &rows, now);
                            let decision = Decision { outcomes };
                            if !decision.allowed() {
                                self.refund(&checks, &hashes, &reserved, now);
                            }
                            Ok(decision)
                        }
                        Ok(None) | Err(_) => {
                            self.record_abandoned(&hashes, &lacking);
                            self.refund(&checks, &hashes, &reserved, now);
                            self.0.redis.fail(&checks, Duration::ZERO)
                        }
                    };
                    // Wakes the requests that waited on this refill.
                    drop(done);
                    return result;
                }
            }
            first = self.try_local(&checks, &hashes, self.0.clock.now_micros());
        }
        // Still contended after several refills: decide this one exactly.
        match self.0.redis.decide(&checks, Duration::ZERO) {
            Decided::Ready(r) => r,
            Decided::Pending(f) => f.await,
        }
    }

    fn record_abandoned(&self, hashes: &[u64], lacking: &[usize]) {
        let (mut guards, slot) = self.lock_all(hashes);
        for &i in lacking {
            if let Some(l) = guards[slot[i]].get_mut(&hashes[i]) {
                l.refill = None;
            }
        }
    }
}

/// The total cost a request puts on the (limit, key) with hash `h`.
fn need_of(checks: &[Check], hashes: &[u64], h: u64) -> u64 {
    checks
        .iter()
        .zip(hashes)
        .filter(|(_, hh)| **hh == h)
        .map(|(c, _)| u64::from(c.cost.max(1)))
        .sum()
}

/// An outcome for a limit that admits (beside the limits that refuse), shaped like its policy.
fn placeholder(c: &Check, now: i64) -> Outcome {
    let (limit, window) = c.policy.shape(now);
    Outcome {
        allowed: true,
        limit,
        window,
        remaining: 0,
        reset: Duration::ZERO,
        retry_after: None,
        delay: Duration::ZERO,
    }
}

/// An admitted limit's outcome as the local lease sees it.
fn local_outcome(c: &Check, lease: Option<&Lease>, now: i64) -> Outcome {
    let mut o = placeholder(c, now);
    if let Some(l) = lease {
        o.remaining = l.remaining.saturating_add(l.usable(now)).min(o.limit);
        o.reset = micros(l.reset_at.saturating_sub(now));
    }
    o
}

impl Store for HybridStore {
    fn decide(&self, checks: &[Check], max_wait: Duration) -> Decided {
        self.0.decisions.fetch_add(1, Ordering::Relaxed);
        if !max_wait.is_zero() || self.0.redis.is_degraded() {
            // Throttling needs an exact reservation; after a failure the Redis store applies
            // its failure policy and probes.
            return self.0.redis.decide(checks, max_wait);
        }
        let now = self.0.clock.now_micros();
        let hashes: Vec<u64> = checks.iter().map(|c| self.hash(c)).collect();
        match self.try_local(checks, &hashes, now) {
            Local::Admitted(outcomes) | Local::Refused(outcomes) => {
                Decided::Ready(Ok(Decision { outcomes }))
            }
            other => Decided::Pending(Box::pin(self.clone().decide_async(
                checks.to_vec(),
                hashes,
                other,
            ))),
        }
    }
}
