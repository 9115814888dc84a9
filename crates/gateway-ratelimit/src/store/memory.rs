use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher, RandomState},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use super::{Check, Decided, Decision, Store};
use crate::{
    Policy,
    algorithm::{self, Outcome},
    clock::Clock,
};

/// The state of one (limit, key): 24 bytes.
#[derive(Clone, Copy, Debug)]
enum Cell {
    /// GCRA theoretical arrival time.
    Tat(i64),
    /// Requests used in the quota window ending at `end` (the end identifies the window).
    Quota { end: i64, used: u64 },
}

impl Cell {
    /// When the cell holds nothing an absent cell would not: after that it can be evicted.
    fn expires(&self) -> i64 {
        match *self {
            Self::Tat(tat) => tat,
            Self::Quota { end, .. } => end,
        }
    }
}

/// The keys are already hashes (SipHash with a per-store random seed): pass them through.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard = HashMap<u64, Cell, BuildHasherDefault<IdentityHasher>>;

const SHARD_BITS: u32 = 6;

/// In-process limit state: sharded, bounded, with idle keys evicted.
///
/// State is one 24-byte cell per (limit, key), stored under a 64-bit SipHash of the limit's name,
/// kind and key with a per-store random seed (so clients cannot aim collisions; two keys
/// colliding by chance would share a bucket, with probability ~2⁻⁶⁴ per pair). Only the hash is
/// kept, never the key's text.
///
/// # Memory bound
/// The capacity is `max_keys` rounded down so that each of the 64 shards' hash tables is full at
/// its bucket count (7/8 of a power of two): the default 1,000,000 gives 917,504 keys. Each
/// bucket costs 33 bytes (8-byte hash, 24-byte cell, 1 control byte), so the default store
/// never exceeds ≈ 35 MB (16,384 buckets × 64 shards). A shard that is full
/// first drops every expired cell (a key whose bucket has refilled or whose quota window has
/// ended holds nothing an absent key would not); if that frees less than an eighth of the
/// shard, it also evicts the cells closest to expiry. Evicting a live cell forgets that key's
/// debt, so under a key-cardinality attack larger than `max_keys` the limit errs towards
/// admitting, never towards unbounded memory. [`evictions`](Self::evictions) counts such
/// evictions; size `max_keys` above the expected number of live keys.
///
/// Clones share the state.
#[derive(Clone, Debug)]
pub struct MemoryStore(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    seed: RandomState,
    clock: Clock,
    evictions: AtomicU64,
}

impl MemoryStore {
    /// A store with the default bound (1,000,000 keys) and tokio's clock. Must be called inside a
    /// tokio runtime (the clock anchors there).
    pub fn new() -> Self {
        Self::with_capacity(1_000_000)
    }

    /// A store holding at most `max_keys` cells.
    pub fn with_capacity(max_keys: usize) -> Self {
        Self::with_clock(max_keys, Clock::system())
    }

    /// A store with an explicit clock (tests, or sharing a clock with another store).
    pub fn with_clock(max_keys: usize, clock: Clock) -> Self {
        // 64 shards: contention is negligible on any core count we target.
        let shards = 1usize << SHARD_BITS;
        // The most a table of 2^k buckets holds without growing is 7/8 of 2^k: round the
        // per-shard cap down to that, so the bound is the table size, not twice it.
        let wanted = max_keys.div_ceil(shards).max(14);
        let buckets = (wanted * 8 / 7).next_power_of_two();
        let per_shard = if buckets / 8 * 7 >= wanted {
            wanted
        } else {
            buckets / 16 * 7
        };
        Self(Arc::new(Inner {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard,
            seed: RandomState::new(),
            clock,
            evictions: AtomicU64::new(0),
        }))
    }

    /// The store's clock.
    pub fn clock(&self) -> &Clock {
        &self.0.clock
    }

    /// Cells held now.
    pub fn len(&self) -> usize {
        self.0.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Whether no cell is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most cells this store holds.
    pub fn capacity(&self) -> usize {
        self.0.per_shard * self.0.shards.len()
    }

    /// Live cells evicted to stay within the bound (expired cells dropped are not counted).
    pub fn evictions(&self) -> u64 {
        self.0.evictions.load(Ordering::Relaxed)
    }

    fn hash(&self, check: &Check) -> u64 {
        check.hash_with(&self.0.seed)
    }

    fn shard_of(&self, hash: u64) -> usize {
        // Low bits: the tables use the top bits for their own probing filter.
        (hash & ((1 << SHARD_BITS) - 1)) as usize
    }

    /// Decides at an explicit instant (Unix µs); `decide` uses the store's clock.
    pub fn decide_at(&self, checks: &[Check], max_wait: Duration, now: i64) -> Decision {
        let max_wait = i64::try_from(max_wait.as_micros()).unwrap_or(i64::MAX);
        if let [check] = checks {
            // The common case, without the bookkeeping of several shards.
            let hash = self.hash(check);
            let mut map = lock(&self.0.shards[self.shard_of(hash)]);
            let (outcome, update) = evaluate(check, map.get(&hash).copied(), now, max_wait);
            if let Some(cell) = update {
                self.insert(&mut map, hash, cell, now);
            }
            return Decision::all_or_nothing(vec![outcome]);
        }
        let hashes: Vec<u64> = checks.iter().map(|c| self.hash(c)).collect();
        // Lock every shard involved, in index order (no deadlock between two requests).
        let mut idx: Vec<usize> = hashes.iter().map(|&h| self.shard_of(h)).collect();
        idx.sort_unstable();
        idx.dedup();
        let mut guards: Vec<MutexGuard<'_, Shard>> =
            idx.iter().map(|&i| lock(&self.0.shards[i])).collect();
        // For each check, the index of its shard's guard.
        let slot: Vec<usize> = hashes
            .iter()
            .map(|&h| idx.binary_search(&self.shard_of(h)).unwrap_or(0))
            .collect();

        let mut outcomes: Vec<Outcome> = Vec::with_capacity(checks.len());
        let mut updates: Vec<Option<Cell>> = Vec::with_capacity(checks.len());
        for ((check, &hash), &g) in checks.iter().zip(&hashes).zip(&slot) {
            let (outcome, update) = evaluate(check, guards[g].get(&hash).copied(), now, max_wait);
            outcomes.push(outcome);
            updates.push(update);
        }
        let decision = Decision::all_or_nothing(outcomes);
        if decision.allowed() {
            for ((&hash, update), &g) in hashes.iter().zip(updates).zip(&slot) {
                if let Some(cell) = update {
                    self.insert(&mut guards[g], hash, cell, now);
                }
            }
        }
        decision
    }

    /// Stores a cell, making room first when its shard is full.
    fn insert(&self, map: &mut Shard, hash: u64, cell: Cell, now: i64) {
        if map.len() >= self.0.per_shard && !map.contains_key(&hash) {
            let evicted = make_room(map, self.0.per_shard, now);
            self.0.evictions.fetch_add(evicted, Ordering::Relaxed);
        }
        map.insert(hash, cell);
    }
}

/// One limit's outcome against its stored cell, and the cell to store if the request is admitted.
fn evaluate(check: &Check, cell: Option<Cell>, now: i64, max_wait: i64) -> (Outcome, Option<Cell>) {
    let cost = u64::from(check.cost.max(1));
    match check.policy {
        Policy::Rate { rate, burst } => {
            let tat = match cell {
                Some(Cell::Tat(t)) => Some(t),
                _ => None,
            };
            let (o, new) = algorithm::gcra(tat, now, rate, burst, cost, max_wait);
            (o, new.map(Cell::Tat))
        }
        Policy::Quota(q) => {
            let state = match cell {
                Some(Cell::Quota { end, used }) => Some((end, used)),
                _ => None,
            };
            let (o, new) = algorithm::quota(state, now, q, cost);
            (o, new.map(|(end, used)| Cell::Quota { end, used }))
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic while holding the lock cannot leave a cell half-written (cells are Copy), so the
    // state is still valid.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Frees at least an eighth of a full shard: expired cells first, then the cells closest to
/// expiry. Returns how many live cells were evicted.
fn make_room(map: &mut Shard, cap: usize, now: i64) -> u64 {
    map.retain(|_, c| c.expires() > now);
    let target = cap - cap / 8;
    if map.len() <= target {
        return 0;
    }
    let excess = map.len() - target;
    let mut expiries: Vec<i64> = map.values().map(Cell::expires).collect();
    let (_, &mut cutoff, _) = expiries.select_nth_unstable(excess - 1);
    let mut evicted = 0u64;
    map.retain(|_, c| {
        if evicted < excess as u64 && c.expires() <= cutoff {
            evicted += 1;
            false
        } else {
            true
        }
    });
    evicted
}

impl Store for MemoryStore {
    fn decide(&self, checks: &[Check], max_wait: Duration) -> Decided {
        Decided::Ready(Ok(self.decide_at(
            checks,
            max_wait,
            self.0.clock.now_micros(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{Quota, Rate, RateLimitKey};

    fn check(name: &str, key: &str, policy: Policy) -> Check {
        Check {
            name: name.into(),
            key: RateLimitKey::new(key),
            policy,
            cost: 1,
        }
    }

    #[tokio::test]
    async fn a_refused_request_charges_no_limit() {
        let store = MemoryStore::with_clock(1000, Clock::manual(SystemTime::now()));
        let checks = [
            check("burst", "k", Policy::rate(Rate::per_second(1), 1)),
            check("daily", "k", Policy::Quota(Quota::per_day(10))),
        ];
        let now = store.clock().now_micros();
        let first = store.decide_at(&checks, Duration::ZERO, now);
        assert!(first.allowed());
        assert_eq!(first.outcomes[1].remaining, 9);
        for _ in 0..5 {
            let d = store.decide_at(&checks, Duration::ZERO, now);
            assert!(!d.allowed());
            assert_eq!(d.deciding(), Some(0));
        }
        let later = store.decide_at(&checks, Duration::ZERO, now + 1_000_000);
        assert!(later.allowed());
        assert_eq!(
            later.outcomes[1].remaining, 8,
            "refusals did not use the quota"
        );
    }

    #[tokio::test]
    async fn memory_stays_bounded_under_a_key_cardinality_attack() {
        let store = MemoryStore::with_clock(4096, Clock::manual(SystemTime::now()));
        let now = store.clock().now_micros();
        let policy = Policy::rate(Rate::per_minute(1), 1);
        for i in 0..100_000 {
            let d = store.decide_at(
                &[check("ip", &format!("k{i}"), policy)],
                Duration::ZERO,
                now,
            );
            assert!(d.allowed());
        }
        assert!(
            store.len() <= store.capacity(),
            "{} > {}",
            store.len(),
            store.capacity()
        );
        assert!(store.capacity() < 4096 + 64 * 8);
        assert!(store.evictions() > 90_000);
        // Expired cells are dropped before live ones: after a minute every cell has expired, and
        // the next wave of keys evicts nothing live.
        let before = store.evictions();
        for i in 0..2000 {
            store.decide_at(
                &[check("ip", &format!("n{i}"), policy)],
                Duration::ZERO,
                now + 61_000_000,
            );
        }
        assert_eq!(store.evictions(), before);
    }
}
