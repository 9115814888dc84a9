//! Local buckets that lease tokens from Redis in batches.

use std::{
    collections::HashMap,
    fmt,
    hash::RandomState,
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
    /// Bumped by every refill, so a refund never lands in a newer lease.
    generation: u64,
    /// What Redis reported at the last refill, for headers.
    remaining: u64,
    reset_at: i64,
    /// Local clock (µs) before which Redis has said the shared bucket is empty (or a full lease
    /// is not free yet): requests the lease cannot cover are refused locally until then.
    blocked_until: i64,
    /// Set while a refill for this key is in flight; others wait for it instead of sending their
    /// own (single flight). A closed channel means the refill ended or was abandoned.
    refill: Option<watch::Receiver<()>>,
}

impl Lease {
    fn empty() -> Self {
        Self {
            tokens: 0,
            expires: i64::MIN,
            generation: 0,
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

    /// When eviction may drop it: never while a refill is in flight.
    fn evictable_after(&self) -> i64 {
        if self.refill_in_flight().is_some() {
            i64::MAX
        } else {
            self.expires.max(self.blocked_until)
        }
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
    /// This request refills the leases of `lacking`; the tokens of the others are reserved
    /// (spent, refunded to the same lease if the request is refused).
    Refill(Refill),
}

struct Refill {
    lacking: Vec<usize>,
    /// Reserved checks, with the generation of the lease their tokens came from.
    reserved: Vec<(usize, u64)>,
    done: watch::Sender<()>,
    marker: watch::Receiver<()>,
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
        check.hash_with(&self.0.seed)
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
        let mut lacking = Vec::new();
        let mut blocked = Vec::new();
        for (i, &h) in hashes.iter().enumerate() {
            let lease = guards[slot[i]].get(&h);
            if lease.map_or(0, |l| l.usable(now)) >= need_of(checks, hashes, h) {
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
                reserved.push((i, l.generation));
            }
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
        let (done, marker) = watch::channel(());
        for &i in &lacking {
            let map = &mut guards[slot[i]];
            self.make_room(map, hashes[i], now);
            let lease = map.entry(hashes[i]).or_insert_with(Lease::empty);
            lease.refill = Some(marker.clone());
        }
        Local::Refill(Refill {
            lacking,
            reserved,
            done,
            marker,
        })
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
            if evicted < excess && l.evictable_after() <= cutoff && l.evictable_after() != i64::MAX
            {
                evicted += 1;
                false
            } else {
                true
            }
        });
    }

    /// Gives reserved tokens back to the leases they came from (the request was refused or
    /// failed); a lease refilled since then does not get them.
    fn refund(&self, checks: &[Check], hashes: &[u64], reserved: &[(usize, u64)], now: i64) {
        let (mut guards, slot) = self.lock_all(hashes);
        for &(i, generation) in reserved {
            if let Some(l) = guards[slot[i]]
                .get_mut(&hashes[i])
                .filter(|l| l.generation == generation && l.expires > now)
            {
                l.tokens += u64::from(checks[i].cost.max(1));
            }
        }
    }

    /// Records a refill's answer; returns the request's outcomes. `started` is when the script
    /// was sent: leases expire `lease` after that, not after the reply.
    fn record(
        &self,
        checks: &[Check],
        hashes: &[u64],
        refill: &Refill,
        rows: &[Row],
        started: i64,
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
        for (&i, row) in refill.lacking.iter().zip(rows) {
            let h = hashes[i];
            let need = need_of(checks, hashes, h);
            let lease = guards[slot[i]].entry(h).or_insert_with(Lease::empty);
            if lease
                .refill
                .as_ref()
                .is_some_and(|m| m.same_channel(&refill.marker))
            {
                lease.refill = None;
            }
            lease.remaining = row.outcome.remaining;
            lease.reset_at = now.saturating_add(as_micros(row.outcome.reset));
            if charged {
                let valid_for = match checks[i].policy {
                    Policy::Rate { .. } => self.0.lease,
                    Policy::Quota(_) => row.outcome.reset,
                };
                // The remainder the request could not use is dropped rather than carried into
                // the new lease, so no token outlives the lease it came with.
                lease.tokens = row.granted.saturating_sub(need);
                lease.expires = started.saturating_add(as_micros(valid_for).max(1));
                lease.generation += 1;
                lease.blocked_until = row
                    .full_lease_in
                    .map_or(i64::MIN, |d| now.saturating_add(as_micros(d)));
                let mut o = row.outcome;
                o.remaining = o.remaining.saturating_add(lease.tokens).min(o.limit);
                outcomes[i] = o;
            } else {
                // Block the key locally only when the shared bucket is empty, and only until a
                // single token is free: a large request refused must not hold back small ones.
                if row.outcome.remaining == 0
                    && let Some(wait) = row.outcome.retry_after
                {
                    let one = match checks[i].policy {
                        Policy::Rate { rate, .. } => {
                            Duration::from_micros(rate.emission_interval_micros())
                        }
                        Policy::Quota(_) => wait,
                    };
                    lease.blocked_until = now.saturating_add(as_micros(wait.min(one)).max(1));
                }
                outcomes[i] = row.outcome;
            }
        }
        outcomes
    }

    fn record_abandoned(&self, hashes: &[u64], refill: &Refill) {
        let (mut guards, slot) = self.lock_all(hashes);
        for &i in &refill.lacking {
            if let Some(l) = guards[slot[i]].get_mut(&hashes[i])
                && l.refill
                    .as_ref()
                    .is_some_and(|m| m.same_channel(&refill.marker))
            {
                l.refill = None;
            }
        }
    }

    /// Sends a refill and records its answer. Runs as its own task, so a request that goes away
    /// mid-refill (a client disconnecting) never loses the tokens Redis granted.
    async fn refill(
        self,
        checks: Vec<Check>,
        hashes: Vec<u64>,
        refill: Refill,
    ) -> Result<Decision, super::StoreError> {
        // The script's `need` is everything this request asks of the key; `want` is a lease's
        // worth, at least that.
        let mut sent: Vec<Check> = Vec::with_capacity(refill.lacking.len());
        let mut want: Vec<u64> = Vec::with_capacity(refill.lacking.len());
        for &i in &refill.lacking {
            let need = need_of(&checks, &hashes, hashes[i]);
            let mut c = checks[i].clone();
            c.cost = u32::try_from(need).unwrap_or(u32::MAX);
            want.push(self.lease_size(&c.policy).max(u64::from(c.cost)));
            sent.push(c);
        }
        let call = ScriptCall::new(
            self.0.redis.prefix(),
            &sent,
            Duration::ZERO,
            self.0.redis.now_arg(),
            Some(&want),
        );
        let started = self.0.clock.now_micros();
        let answer = self.0.redis.run(call).await;
        let now = self.0.clock.now_micros();
        let result = match answer {
            Ok(Some((_, rows))) => {
                self.0.refills.fetch_add(1, Ordering::Relaxed);
                let decision = Decision {
                    outcomes: self.record(&checks, &hashes, &refill, &rows, started, now),
                };
                if !decision.allowed() {
                    self.refund(&checks, &hashes, &refill.reserved, now);
                }
                Ok(decision)
            }
            Ok(None) | Err(_) => {
                self.record_abandoned(&hashes, &refill);
                self.refund(&checks, &hashes, &refill.reserved, now);
                self.0.redis.fail(&checks, Duration::ZERO)
            }
        };
        // Wakes the requests that waited on this refill.
        drop(refill.done);
        result
    }

    async fn decide_async(
        self,
        checks: Vec<Check>,
        hashes: Vec<u64>,
        mut local: Local,
    ) -> Result<Decision, super::StoreError> {
        // Waiting on other requests' refills is bounded: after `MAX_WAITS` rounds or one Redis
        // timeout, this request is decided exactly (one script call of its own).
        let deadline = tokio::time::Instant::now() + self.0.redis.timeout();
        let mut waits = 0;
        loop {
            match local {
                Local::Admitted(outcomes) | Local::Refused(outcomes) => {
                    return Ok(Decision { outcomes });
                }
                Local::Refill(refill) => {
                    let task =
                        tokio::spawn(self.clone().refill(checks.clone(), hashes.clone(), refill));
                    return match task.await {
                        Ok(result) => result,
                        Err(e) => Err(super::StoreError::new(format!(
                            "hybrid refill task failed: {e}"
                        ))),
                    };
                }
                Local::Wait(mut rx) => {
                    waits += 1;
                    // Woken when the refill is recorded or abandoned.
                    let woke = waits <= MAX_WAITS
                        && tokio::time::timeout_at(deadline, rx.changed())
                            .await
                            .is_ok();
                    if !woke || self.0.redis.is_degraded() {
                        break;
                    }
                }
            }
            local = self.try_local(&checks, &hashes, self.0.clock.now_micros());
        }
        match self.0.redis.decide(&checks, Duration::ZERO) {
            Decided::Ready(r) => r,
            Decided::Pending(f) => f.await,
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
