//! Choosing an endpoint: balancing algorithms over endpoint state that active health checks,
//! outlier detection and the responses themselves keep up to date.
//!
//! An endpoint is *available* when its active health check (if any) passes, it is not ejected
//! by outlier detection, and it is not backing off after a `429` / `503` with `Retry-After`.
//! Algorithms choose among available endpoints. When fewer than the panic threshold (default
//! 50%) are available, they choose among all endpoints instead (Envoy's panic mode: better to
//! spread load over doubtful endpoints than to overload the few left); with a threshold of 0
//! and none available, the upstream answers `503` at once.
//!
//! ```
//! use gateway_lb::balance::{Balance, Balancer, SeqRng};
//! use std::sync::Arc;
//!
//! // Three endpoints, weights 5, 1, 1: smooth weighted round robin spreads the heavy one out.
//! let b = Balancer::new(Balance::WeightedRoundRobin, &[5, 1, 1], Arc::new(SeqRng::new(7)));
//! let order: Vec<usize> = (0..7).map(|_| b.pick(None, &[]).unwrap()).collect();
//! assert_eq!(order, [0, 0, 1, 0, 2, 0, 0]);
//! ```

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::HeaderName;

/// How an upstream picks an endpoint for a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// Smooth weighted round robin (nginx's): each endpoint in proportion to its weight,
    /// spread out rather than in bursts.
    WeightedRoundRobin,
    /// At random, in proportion to weight.
    Random,
    /// Power of two choices over requests in flight: two endpoints at random (by weight), the
    /// one with fewer requests waiting for an answer wins.
    LeastRequest,
    /// Power of two choices over peak-EWMA latency × (requests in flight + 1): latency-aware,
    /// quick to move away from an endpoint that slows down.
    PeakEwma,
    /// The fewest requests in flight per unit of weight, every endpoint compared.
    LeastConnections,
    /// Consistent hashing (Maglev) of a request key: one key keeps its endpoint while the set
    /// is stable, and an endpoint joining or leaving moves few keys. An unavailable endpoint's
    /// keys go to the next available entry of the table; the other keys stay put.
    Hash(HashOn),
}

/// Sticky sessions: the first answer to a client sets a cookie naming its endpoint (by an opaque
/// id, a hash of its address), and later requests carrying it go back there while it is
/// available, whatever the algorithm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StickyCookie {
    /// The cookie's name.
    pub name: String,
    /// Its `Max-Age`; a session cookie without it.
    pub max_age: Option<Duration>,
}

/// What a [`Balance::Hash`] keys on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    /// The client's address ([`gateway_core::ClientIp`]).
    ClientIp,
    /// A request header's value.
    Header(HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// The request path.
    Path,
}

impl HashOn {
    /// The request's key: `None` when it has none (no such header or cookie). The client IP
    /// is the resolved one ([`gateway_core::ClientIp`]), else the peer's.
    pub fn key(
        &self,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Option<u64> {
        match self {
            Self::ClientIp => {
                let ip = extensions
                    .get::<gateway_core::ClientIp>()
                    .map(gateway_core::ClientIp::ip)
                    .or_else(|| {
                        extensions
                            .get::<gateway_core::ConnectionInfo>()
                            .map(|c| c.peer.ip())
                    })?;
                Some(match ip.to_canonical() {
                    std::net::IpAddr::V4(v4) => stable_hash(&v4.octets()),
                    std::net::IpAddr::V6(v6) => stable_hash(&v6.octets()),
                })
            }
            Self::Header(name) => headers.get(name).map(|v| stable_hash(v.as_bytes())),
            Self::Cookie(name) => {
                gateway_core::cookie(headers, name).map(|v| stable_hash(v.as_bytes()))
            }
            Self::Path => Some(stable_hash(uri.path().as_bytes())),
        }
    }
}

/// Random numbers for balancing; injectable, so tests are deterministic.
pub trait BalanceRng: Send + Sync + fmt::Debug + 'static {
    /// The next number.
    fn next_u64(&self) -> u64;
}

/// The default generator: wyrand over an atomic counter (lock-free, shared by every thread).
#[derive(Debug)]
pub struct SeqRng(AtomicU64);

impl SeqRng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(AtomicU64::new(seed))
    }

    /// A generator seeded from the clock.
    pub fn from_clock() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        #[allow(clippy::cast_possible_truncation)] // the low bits are the varying ones
        Self::new(nanos as u64)
    }
}

impl BalanceRng for SeqRng {
    fn next_u64(&self) -> u64 {
        const INC: u64 = 0xa076_1d64_78bd_642f;
        let s = self.0.fetch_add(INC, Ordering::Relaxed).wrapping_add(INC);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        #[allow(clippy::cast_possible_truncation)]
        let folded = ((t >> 64) ^ t) as u64;
        folded
    }
}

/// A stable 64-bit hash (FNV-1a, then a finalizer): the same key picks the same endpoint in
/// every gateway process.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64's finalizer spreads FNV's weak low bits.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// One endpoint's live state.
#[derive(Debug)]
pub(crate) struct EndpointState {
    pub(crate) weight: u32,
    pub(crate) in_flight: AtomicU32,
    /// Peak-EWMA of the time to the response head, in microseconds (`f64` bits).
    ewma_us: AtomicU64,
    ewma_at_ms: AtomicU64,
    /// Active health: false after `unhealthy_threshold` failed checks in a row.
    pub(crate) healthy: AtomicBool,
    /// Clock ms until which the endpoint is ejected (0: not ejected).
    pub(crate) ejected_until: AtomicU64,
    pub(crate) ejections: AtomicU32,
    pub(crate) consecutive_5xx: AtomicU32,
    pub(crate) consecutive_gateway: AtomicU32,
    /// Clock ms until which the endpoint asked not to be sent requests (`Retry-After`).
    pub(crate) back_off_until: AtomicU64,
    /// Clock ms when the endpoint last became available again (for slow start; 0: never left).
    pub(crate) returned_at: AtomicU64,
    /// Requests and failures since the last success-rate sweep.
    pub(crate) window_requests: AtomicU32,
    pub(crate) window_failures: AtomicU32,
}

impl EndpointState {
    fn new(weight: u32) -> Self {
        Self {
            weight: weight.max(1),
            in_flight: AtomicU32::new(0),
            ewma_us: AtomicU64::new(0f64.to_bits()),
            ewma_at_ms: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            back_off_until: AtomicU64::new(0),
            returned_at: AtomicU64::new(0),
            window_requests: AtomicU32::new(0),
            window_failures: AtomicU32::new(0),
        }
    }

    pub(crate) fn available(&self, now_ms: u64) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && self.ejected_until.load(Ordering::Relaxed) <= now_ms
            && self.back_off_until.load(Ordering::Relaxed) <= now_ms
    }

    /// Peak-EWMA latency now, in microseconds, decayed since the last observation.
    pub(crate) fn ewma_us(&self) -> f64 {
        f64::from_bits(self.ewma_us.load(Ordering::Relaxed))
    }
}

/// One endpoint's state, as [`Balancer::status`] reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointStatus {
    /// Its weight.
    pub weight: u32,
    /// Whether it can be picked (healthy, not ejected, not backing off).
    pub available: bool,
    /// What its active health checks say (true without checks).
    pub healthy: bool,
    /// How much longer outlier detection keeps it out.
    pub ejected_for: Option<Duration>,
    /// How many times it was ejected (the multiplier of the next ejection).
    pub ejections: u32,
    /// How much longer it asked (`Retry-After`) not to get requests.
    pub backing_off_for: Option<Duration>,
    /// Requests waiting for its answer.
    pub in_flight: u32,
    /// Peak-EWMA of its time to answer, once measured.
    pub latency: Option<Duration>,
}

/// The time constant of the peak-EWMA decay.
const EWMA_DECAY: Duration = Duration::from_secs(10);
/// The latency assumed for an endpoint not yet measured (so new endpoints are not flooded).
const DEFAULT_RTT_US: f64 = 10_000.0;

/// Endpoints' state and the algorithm that picks among them. Shared by every clone of an
/// upstream, its health checker and its response futures.
pub struct Balancer {
    algorithm: Balance,
    pub(crate) endpoints: Box<[EndpointState]>,
    rng: Arc<dyn BalanceRng>,
    next: AtomicUsize,
    /// Smooth weighted round-robin order (endpoint indices), for `WeightedRoundRobin`.
    schedule: Box<[u32]>,
    /// Prefix sums of weights, for weighted random choice.
    cumulative: Box<[u64]>,
    /// The Maglev lookup table, for `Hash`.
    table: Box<[u32]>,
    panic_threshold: f64,
    /// The clock's origin: tokio's clock, so tests can pause time.
    base: tokio::time::Instant,
    /// Available endpoints, counted at most every 100ms (packed: count << 32 | clock ms / 64).
    available_cache: AtomicU64,
    /// Bit 0: every endpoint was available at the last count and nothing changed since (the
    /// pick needs no clock); the other bits count changes, so a count that raced a change
    /// cannot set it.
    quiet: AtomicU64,
    pub(crate) slow_start: Option<Duration>,
    pub(crate) outlier: Option<crate::health::OutlierDetection>,
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("algorithm", &self.algorithm)
            .field("endpoints", &self.endpoints.len())
            .field("panic_threshold", &self.panic_threshold)
            .finish_non_exhaustive()
    }
}

impl Balancer {
    /// A balancer over endpoints with these weights (0 counts as 1).
    pub fn new(algorithm: Balance, weights: &[u32], rng: Arc<dyn BalanceRng>) -> Self {
        Self::with_names(algorithm, weights, &[], rng)
    }

    /// Like [`Balancer::new`], with each endpoint's stable name (`host:port`) for the hash table,
    /// so that two processes with the same endpoints build the same table whatever their order.
    pub fn with_names(
        algorithm: Balance,
        weights: &[u32],
        names: &[&str],
        rng: Arc<dyn BalanceRng>,
    ) -> Self {
        let endpoints: Box<[EndpointState]> =
            weights.iter().map(|w| EndpointState::new(*w)).collect();
        let schedule = if algorithm == Balance::WeightedRoundRobin {
            smooth_schedule(&endpoints)
        } else {
            Box::default()
        };
        let mut total = 0u64;
        let cumulative = endpoints
            .iter()
            .map(|e| {
                total += u64::from(e.weight);
                total
            })
            .collect();
        let table = if matches!(algorithm, Balance::Hash(_)) {
            let owned: Vec<String> = (0..endpoints.len())
                .map(|i| {
                    names
                        .get(i)
                        .map_or_else(|| i.to_string(), |n| (*n).to_owned())
                })
                .collect();
            maglev(&owned)
        } else {
            Box::default()
        };
        Self {
            algorithm,
            endpoints,
            rng,
            next: AtomicUsize::new(0),
            schedule,
            cumulative,
            table,
            panic_threshold: 0.5,
            base: tokio::time::Instant::now(),
            available_cache: AtomicU64::new(0),
            quiet: AtomicU64::new(1),
            slow_start: None,
            outlier: None,
        }
    }

    /// Below this share of available endpoints, balance over all of them (default 0.5; 0
    /// turns panic mode off).
    #[must_use]
    pub fn panic_threshold(mut self, share: f64) -> Self {
        self.panic_threshold = share.clamp(0.0, 1.0);
        self
    }

    /// Endpoints that come back (from an ejection or a failed health check) get a share of
    /// traffic that grows linearly over `window`, from 10% of their weight.
    #[must_use]
    pub fn slow_start(mut self, window: Option<Duration>) -> Self {
        self.slow_start = window.filter(|w| !w.is_zero());
        self
    }

    /// Ejects endpoints that fail real requests (default off).
    #[must_use]
    pub fn outlier(mut self, outlier: Option<crate::health::OutlierDetection>) -> Self {
        self.outlier = outlier;
        self
    }

    /// The algorithm.
    pub fn algorithm(&self) -> &Balance {
        &self.algorithm
    }

    /// Milliseconds on the balancer's clock (tokio's, so paused time works).
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Forgets the cached count of available endpoints (after a health or ejection change).
    pub(crate) fn invalidate(&self) {
        self.available_cache.store(0, Ordering::Relaxed);
        let _ = self
            .quiet
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some(s.wrapping_add(2) & !1)
            });
    }

    fn available_count(&self, now_ms: u64) -> usize {
        let packed = self.available_cache.load(Ordering::Relaxed);
        let stamp = packed & 0xffff_ffff;
        // Stamps are in 64ms units, offset by one so that 0 means "stale".
        let now_stamp = (now_ms >> 6) + 1;
        if stamp != 0 && now_stamp.saturating_sub(stamp) < 2 {
            return usize::try_from(packed >> 32).unwrap_or(usize::MAX);
        }
        let before = self.quiet.load(Ordering::Relaxed);
        let count = self
            .endpoints
            .iter()
            .filter(|e| e.available(now_ms))
            .count();
        if count == self.endpoints.len() {
            // Everyone is back: picks skip the clock until the next change.
            let _ = self.quiet.compare_exchange(
                before,
                before | 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        self.available_cache.store(
            (u64::try_from(count).unwrap_or(0) << 32) | (now_stamp & 0xffff_ffff),
            Ordering::Relaxed,
        );
        count
    }

    /// Picks an endpoint for a request with this hash key (for [`Balance::Hash`]), skipping
    /// `excluded` (endpoints already tried, or whose breaker refused). `None`: nothing to pick.
    pub fn pick(&self, key: Option<u64>, excluded: &[usize]) -> Option<usize> {
        let n = self.endpoints.len();
        if n == 0 || excluded.len() >= n {
            return None;
        }
        let quiet = self.quiet.load(Ordering::Relaxed) & 1 == 1;
        // Reading the clock is most of a pick's cost: only when something is out, or for
        // slow start.
        let now = if quiet && self.slow_start.is_none() {
            0
        } else {
            self.now_ms()
        };
        let (available, panic) = if quiet {
            (n, false)
        } else {
            let available = self.available_count(now);
            #[allow(clippy::cast_precision_loss)]
            let panic = (available as f64) < self.panic_threshold * n as f64;
            (available, panic)
        };
        let ok = |i: usize| {
            !excluded.contains(&i) && (quiet || panic || self.endpoints[i].available(now))
        };
        if !panic && available == 0 {
            return None;
        }
        let start = || self.next.fetch_add(1, Ordering::Relaxed);
        let scan = |from: usize| (0..n).map(|k| (from + k) % n).find(|i| ok(*i));
        match &self.algorithm {
            Balance::RoundRobin => scan(start() % n),
            Balance::WeightedRoundRobin => {
                let len = self.schedule.len();
                let from = start() % len;
                (0..len)
                    .map(|k| self.schedule[(from + k) % len] as usize)
                    .find(|i| ok(*i))
            }
            Balance::Random => scan(self.weighted_random(now)),
            Balance::LeastRequest | Balance::PeakEwma => {
                let a = scan(self.weighted_random(now))?;
                let b = match scan(self.weighted_random(now)) {
                    Some(b) if b != a => b,
                    // The same one twice: the next usable one is the other candidate.
                    _ => match (1..n).map(|k| (a + k) % n).find(|i| ok(*i)) {
                        Some(b) => b,
                        None => return Some(a),
                    },
                };
                Some(if self.cost(b) < self.cost(a) { b } else { a })
            }
            Balance::LeastConnections => {
                let from = start() % n;
                (0..n)
                    .map(|k| (from + k) % n)
                    .filter(|i| ok(*i))
                    .min_by(|a, b| {
                        if self.slow_start.is_none() {
                            // in_flight_a / w_a against in_flight_b / w_b, in integers.
                            let (ea, eb) = (&self.endpoints[*a], &self.endpoints[*b]);
                            let la = u64::from(ea.in_flight.load(Ordering::Relaxed))
                                * u64::from(eb.weight);
                            let lb = u64::from(eb.in_flight.load(Ordering::Relaxed))
                                * u64::from(ea.weight);
                            return la.cmp(&lb);
                        }
                        self.load_per_weight(*a, now)
                            .total_cmp(&self.load_per_weight(*b, now))
                    })
            }
            Balance::Hash(_) => {
                let len = self.table.len();
                let from = usize::try_from(key.unwrap_or_else(|| self.rng.next_u64()) % len as u64)
                    .unwrap_or(0);
                (0..len)
                    .map(|k| self.table[(from + k) % len] as usize)
                    .find(|i| ok(*i))
            }
        }
    }

    /// An endpoint index chosen at random in proportion to (slow-start adjusted) weight.
    fn weighted_random(&self, now: u64) -> usize {
        let n = self.endpoints.len();
        let total = self.cumulative.last().copied().unwrap_or(0);
        if total == n as u64 && self.slow_start.is_none() {
            return usize::try_from(self.rng.next_u64() % n as u64).unwrap_or(0);
        }
        let r = self.rng.next_u64() % total.max(1);
        let i = self.cumulative.partition_point(|c| *c <= r).min(n - 1);
        // Slow start: an endpoint still ramping up is kept with probability = its ramp share.
        let share = self.ramp(i, now);
        if share < 1.0 {
            #[allow(clippy::cast_precision_loss)]
            let roll = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            if roll >= share {
                return (i + 1) % n;
            }
        }
        i
    }

    /// The share of its weight an endpoint gets now (slow start), in (0, 1].
    fn ramp(&self, i: usize, now: u64) -> f64 {
        let Some(window) = self.slow_start else {
            return 1.0;
        };
        let returned = self.endpoints[i].returned_at.load(Ordering::Relaxed);
        if returned == 0 {
            return 1.0;
        }
        #[allow(clippy::cast_precision_loss)]
        let elapsed = now.saturating_sub(returned) as f64;
        #[allow(clippy::cast_precision_loss)]
        let share = elapsed / window.as_millis() as f64;
        share.clamp(0.1, 1.0)
    }

    fn load_per_weight(&self, i: usize, now: u64) -> f64 {
        let e = &self.endpoints[i];
        f64::from(e.in_flight.load(Ordering::Relaxed)) / (f64::from(e.weight) * self.ramp(i, now))
    }

    fn cost(&self, i: usize) -> f64 {
        let e = &self.endpoints[i];
        let in_flight = f64::from(e.in_flight.load(Ordering::Relaxed));
        let base = match self.algorithm {
            Balance::PeakEwma => {
                let rtt = e.ewma_us();
                if rtt > 0.0 { rtt } else { DEFAULT_RTT_US }
            }
            _ => 1.0,
        };
        // Weights (and slow start) already shaped which two were drawn.
        base * (in_flight + 1.0)
    }

    /// Records the time an endpoint took to answer (peak-EWMA: a slower answer counts at once,
    /// faster ones pull the average down over [`EWMA_DECAY`]).
    pub(crate) fn observe_latency(&self, i: usize, rtt: Duration) {
        let e = &self.endpoints[i];
        let now = self.now_ms();
        #[allow(clippy::cast_precision_loss)]
        let rtt_us = rtt.as_micros() as f64;
        let prev = e.ewma_us();
        let last = e.ewma_at_ms.swap(now, Ordering::Relaxed);
        let next = if rtt_us > prev {
            rtt_us
        } else {
            #[allow(clippy::cast_precision_loss)]
            let elapsed = now.saturating_sub(last) as f64;
            #[allow(clippy::cast_precision_loss)]
            let w = (-elapsed / EWMA_DECAY.as_millis() as f64).exp();
            prev * w + rtt_us * (1.0 - w)
        };
        e.ewma_us.store(next.to_bits(), Ordering::Relaxed);
    }

    /// Every endpoint's state now, in endpoint order (for an admin view).
    pub fn status(&self) -> Vec<EndpointStatus> {
        let now = self.now_ms();
        let left = |until: u64| (until > now).then(|| Duration::from_millis(until - now));
        self.endpoints
            .iter()
            .map(|e| {
                let ewma = e.ewma_us();
                EndpointStatus {
                    weight: e.weight,
                    available: e.available(now),
                    healthy: e.healthy.load(Ordering::Relaxed),
                    ejected_for: left(e.ejected_until.load(Ordering::Relaxed)),
                    ejections: e.ejections.load(Ordering::Relaxed),
                    backing_off_for: left(e.back_off_until.load(Ordering::Relaxed)),
                    in_flight: e.in_flight.load(Ordering::Relaxed),
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    latency: (ewma > 0.0).then(|| Duration::from_micros(ewma as u64)),
                }
            })
            .collect()
    }

    /// Takes over what `old` knows of endpoints both have (`pairs` of (index here, index in
    /// `old`)): health, ejections and their multiplier, `Retry-After` back-off, slow-start
    /// progress and latency. For a rebuilt endpoint list (a reload, a discovery change), so an
    /// ejected or unhealthy endpoint does not come back just because the list changed. Health
    /// is taken over only `with_health` (when this balancer's endpoints are actively checked:
    /// without checks nothing would ever mark them healthy again).
    pub fn inherit(&self, old: &Balancer, pairs: &[(usize, usize)], with_health: bool) {
        // Both clocks count milliseconds from their own start; `old` started first.
        let shift = u64::try_from(self.base.saturating_duration_since(old.base).as_millis())
            .unwrap_or(u64::MAX);
        let moved = |v: u64| {
            if v == 0 {
                0
            } else {
                v.saturating_sub(shift).max(1)
            }
        };
        for &(new, was) in pairs {
            let (Some(e), Some(o)) = (self.endpoints.get(new), old.endpoints.get(was)) else {
                continue;
            };
            if with_health {
                e.healthy
                    .store(o.healthy.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            for (to, from) in [
                (&e.ejected_until, &o.ejected_until),
                (&e.back_off_until, &o.back_off_until),
                (&e.returned_at, &o.returned_at),
            ] {
                to.store(moved(from.load(Ordering::Relaxed)), Ordering::Relaxed);
            }
            e.ejections
                .store(o.ejections.load(Ordering::Relaxed), Ordering::Relaxed);
            e.ewma_us
                .store(o.ewma_us.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.invalidate();
    }

    /// Whether endpoint `i` can be picked now.
    pub(crate) fn usable(&self, i: usize) -> bool {
        self.quiet.load(Ordering::Relaxed) & 1 == 1
            || self
                .endpoints
                .get(i)
                .is_some_and(|e| e.available(self.now_ms()))
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether there are no endpoints.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

/// One request in flight to an endpoint: counted for least-request balancing until dropped;
/// [`InFlight::finish`] records its answer (latency, outlier counters, `Retry-After`).
pub(crate) struct InFlight {
    balancer: Arc<Balancer>,
    idx: usize,
    start: tokio::time::Instant,
}

impl InFlight {
    pub(crate) fn start(balancer: &Arc<Balancer>, idx: usize) -> Option<Self> {
        let e = balancer.endpoints.get(idx)?;
        e.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Self {
            balancer: balancer.clone(),
            idx,
            start: tokio::time::Instant::now(),
        })
    }

    pub(crate) fn finish<B>(self, res: &http::Response<B>) {
        let outcome = crate::health::outcome(res);
        self.balancer
            .observe_latency(self.idx, self.start.elapsed());
        self.balancer
            .record(self.idx, outcome, res.status(), res.headers());
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.balancer.endpoints[self.idx]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Smooth weighted round robin (nginx): each round, every endpoint gains its weight, the
/// largest current value is chosen and loses the total. One full cycle, precomputed.
fn smooth_schedule(endpoints: &[EndpointState]) -> Box<[u32]> {
    let gcd = endpoints.iter().map(|e| e.weight).fold(0, num_gcd).max(1);
    let weights: Vec<i64> = endpoints
        .iter()
        .map(|e| i64::from(e.weight / gcd))
        .collect();
    let total: i64 = weights.iter().sum();
    // Very long cycles are cut: the order repeats a prefix, still proportional on average.
    let len = usize::try_from(total).unwrap_or(0).min(1 << 16);
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(len);
    for _ in 0..len {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))
            .unwrap_or((0, &0));
        current[best] -= total;
        out.push(u32::try_from(best).unwrap_or(0));
    }
    out.into_boxed_slice()
}

fn num_gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { num_gcd(b, a % b) }
}

/// Maglev's lookup table (Eisenbud et al., NSDI 2016): each endpoint fills slots along its own
/// permutation of the table, in turn, until the table is full. The table size is a prime well
/// above the endpoint count, so shares stay within about 1% of even.
fn maglev(names: &[String]) -> Box<[u32]> {
    const PRIMES: &[u64] = &[
        251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131_071,
    ];
    let n = names.len();
    if n == 0 {
        return Box::default();
    }
    let size = *PRIMES
        .iter()
        .find(|p| **p >= 100 * n as u64)
        .unwrap_or(&131_071);
    let perms: Vec<(u64, u64)> = names
        .iter()
        .map(|name| {
            let offset = stable_hash(name.as_bytes()) % size;
            let skip = stable_hash(format!("{name}#skip").as_bytes()) % (size - 1) + 1;
            (offset, skip)
        })
        .collect();
    let size_usize = usize::try_from(size).unwrap_or(0);
    let mut table = vec![u32::MAX; size_usize];
    let mut next = vec![0u64; n];
    let mut filled = 0;
    'fill: loop {
        for (i, (offset, skip)) in perms.iter().enumerate() {
            let mut slot = (offset + next[i] * skip) % size;
            while table[usize::try_from(slot).unwrap_or(0)] != u32::MAX {
                next[i] += 1;
                slot = (offset + next[i] * skip) % size;
            }
            table[usize::try_from(slot).unwrap_or(0)] = u32::try_from(i).unwrap_or(0);
            next[i] += 1;
            filled += 1;
            if filled == size_usize {
                break 'fill;
            }
        }
    }
    table.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balancer(algorithm: Balance, weights: &[u32]) -> Balancer {
        Balancer::new(algorithm, weights, Arc::new(SeqRng::new(42)))
    }

    fn counts(b: &Balancer, picks: usize) -> Vec<usize> {
        let mut c = vec![0; b.len()];
        for _ in 0..picks {
            c[b.pick(None, &[]).unwrap()] += 1;
        }
        c
    }

    /// Within `tolerance` (a share, 0.02 = 2 points) of the weights' proportions.
    fn assert_proportional(c: &[usize], weights: &[u32], tolerance: f64) {
        let total: usize = c.iter().sum();
        let wsum: u32 = weights.iter().sum();
        for (i, (n, w)) in c.iter().zip(weights).enumerate() {
            #[allow(clippy::cast_precision_loss)]
            let got = *n as f64 / total as f64;
            let want = f64::from(*w) / f64::from(wsum);
            assert!(
                (got - want).abs() <= tolerance,
                "endpoint {i}: {got:.3} of picks, weight share {want:.3} ({c:?})"
            );
        }
    }

    #[test]
    fn round_robin_takes_each_in_turn() {
        let b = balancer(Balance::RoundRobin, &[1, 1, 1]);
        let order: Vec<usize> = (0..6).map(|_| b.pick(None, &[]).unwrap()).collect();
        assert_eq!(order, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn smooth_weighted_round_robin_is_exact_per_cycle_and_interleaved() {
        let b = balancer(Balance::WeightedRoundRobin, &[5, 1, 1]);
        let cycle: Vec<usize> = (0..7).map(|_| b.pick(None, &[]).unwrap()).collect();
        assert_eq!(cycle, [0, 0, 1, 0, 2, 0, 0], "nginx's smooth order");
        assert_proportional(&counts(&b, 7000), &[5, 1, 1], 0.0);
    }

    #[test]
    fn random_and_p2c_follow_weights_within_tolerance() {
        for algorithm in [Balance::Random, Balance::LeastRequest, Balance::PeakEwma] {
            let weights = [3, 1, 1, 5];
            let b = balancer(algorithm, &weights);
            // With nothing in flight, p2c keeps its first candidate, chosen by weight.
            assert_proportional(&counts(&b, 100_000), &weights, 0.01);
        }
    }

    #[test]
    fn least_connections_compares_load_per_unit_of_weight() {
        let b = balancer(Balance::LeastConnections, &[1, 4, 1]);
        b.endpoints[0].in_flight.store(2, Ordering::Relaxed);
        b.endpoints[1].in_flight.store(4, Ordering::Relaxed);
        b.endpoints[2].in_flight.store(3, Ordering::Relaxed);
        assert_eq!(b.pick(None, &[]), Some(1), "4 per 4 of weight is the least");
        assert_eq!(b.pick(None, &[1]), Some(0));
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let b = balancer(Balance::LeastRequest, &[1, 1]);
        b.endpoints[0].in_flight.store(10, Ordering::Relaxed);
        let c = counts(&b, 1000);
        assert_eq!(c, [0, 1000], "two choices out of two: always the idle one");
    }

    #[test]
    fn peak_ewma_moves_away_from_a_slow_endpoint() {
        let b = balancer(Balance::PeakEwma, &[1, 1, 1]);
        b.observe_latency(0, Duration::from_millis(200));
        b.observe_latency(1, Duration::from_millis(5));
        b.observe_latency(2, Duration::from_millis(5));
        let c = counts(&b, 3000);
        assert!(c[0] < 100, "{c:?}");
    }

    #[test]
    fn maglev_spreads_evenly_and_moves_few_keys_when_an_endpoint_leaves() {
        let names: Vec<String> = (0..10).map(|i| format!("10.0.0.{i}:80")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let hash = Balance::Hash(HashOn::Path);
        let rng = || Arc::new(SeqRng::new(1));
        let full = Balancer::with_names(hash.clone(), &[1; 10], &refs, rng());
        let mut share = [0usize; 10];
        let keys: Vec<u64> = (0..20_000u32)
            .map(|k| stable_hash(&k.to_le_bytes()))
            .collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| full.pick(Some(*k), &[]).unwrap())
            .collect();
        for i in &before {
            share[*i] += 1;
        }
        assert_proportional(&share, &[1; 10], 0.01);
        // Endpoint 3 leaves the set: only its keys should move (Maglev allows a little more).
        let names9: Vec<&str> = refs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 3)
            .map(|(_, n)| *n)
            .collect();
        let less = Balancer::with_names(hash, &[1; 9], &names9, rng());
        let moved = keys
            .iter()
            .zip(&before)
            .filter(|(k, was)| {
                let now = less.pick(Some(**k), &[]).unwrap();
                let now_name = names9[now];
                **was != 3 && now_name != refs[**was]
            })
            .count();
        #[allow(clippy::cast_precision_loss)]
        let moved_share = moved as f64 / keys.len() as f64;
        assert!(
            moved_share < 0.03,
            "{moved_share:.3} of the other keys moved"
        );
        // Same names, same table: another process agrees.
        let again = Balancer::with_names(Balance::Hash(HashOn::Path), &[1; 10], &refs, rng());
        assert!(
            keys.iter()
                .zip(&before)
                .all(|(k, i)| again.pick(Some(*k), &[]) == Some(*i))
        );
    }

    #[test]
    fn an_unavailable_endpoint_moves_only_its_own_hash_keys() {
        let b = balancer(Balance::Hash(HashOn::ClientIp), &[1, 1, 1, 1]);
        let keys: Vec<u64> = (0..4000u32)
            .map(|k| stable_hash(&k.to_le_bytes()))
            .collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| b.pick(Some(*k), &[]).unwrap())
            .collect();
        b.endpoints[2].healthy.store(false, Ordering::Relaxed);
        b.invalidate();
        for (k, was) in keys.iter().zip(&before) {
            let now = b.pick(Some(*k), &[]).unwrap();
            assert_ne!(now, 2);
            if *was != 2 {
                assert_eq!(now, *was, "a key of a healthy endpoint moved");
            }
        }
    }

    #[test]
    fn unavailable_endpoints_are_skipped_until_panic_mode_and_none_means_none() {
        let b = balancer(Balance::RoundRobin, &[1, 1, 1, 1]).panic_threshold(0.5);
        b.endpoints[0].healthy.store(false, Ordering::Relaxed);
        b.invalidate();
        assert_eq!(
            counts(&b, 300)[0],
            0,
            "3 of 4 available: the sick one is skipped"
        );
        for e in &b.endpoints[1..3] {
            e.healthy.store(false, Ordering::Relaxed);
        }
        b.invalidate();
        assert!(
            counts(&b, 400).iter().all(|c| *c == 100),
            "1 of 4: panic, all of them"
        );
        let strict = balancer(Balance::RoundRobin, &[1, 1]).panic_threshold(0.0);
        for e in strict.endpoints.iter() {
            e.healthy.store(false, Ordering::Relaxed);
        }
        strict.invalidate();
        assert_eq!(strict.pick(None, &[]), None);
        assert_eq!(strict.pick(None, &[0, 1]), None);
    }

    #[test]
    fn excluded_endpoints_are_not_picked() {
        let b = balancer(Balance::LeastRequest, &[1, 1, 1]);
        for _ in 0..100 {
            assert_eq!(b.pick(None, &[0, 2]), Some(1));
        }
    }
}
