//! Breaker state, configuration and the handle.

use std::{
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::watch, time::Instant};

use super::window::{CountWindow, Counts, TimeWindow};

/// The state of a circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls pass; outcomes are recorded.
    Closed,
    /// Calls are rejected until the open period ends.
    Open,
    /// A limited number of probe calls pass to test the upstream.
    HalfOpen,
    /// Forced open through the handle: every call is rejected until released.
    ForcedOpen,
    /// Forced closed through the handle: every call passes and nothing trips it.
    ForcedClosed,
}

impl BreakerState {
    /// A short, stable, lowercase name for logs, metrics and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::ForcedOpen => "forced_open",
            Self::ForcedClosed => "forced_closed",
        }
    }
}

/// The sliding window failures accrue over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Window {
    /// The last `n` calls.
    Count(usize),
    /// The calls of the last duration (ten buckets of a tenth each).
    Time(Duration),
}

/// Circuit breaker settings. Built with consuming methods from the defaults:
/// a count window of 100 calls, at least 20 calls before tripping, 50% failure rate, slow-call
/// detection off, 30 s open growing ×2 per repeated trip up to 5 min with ±10% jitter, 3 probes.
#[derive(Clone, Debug)]
pub struct CircuitBreakerConfig {
    pub(crate) window: Window,
    pub(crate) minimum_calls: u32,
    pub(crate) failure_rate: f64,
    pub(crate) slow_call_duration: Option<Duration>,
    pub(crate) slow_call_rate: f64,
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) open_for: Duration,
    pub(crate) backoff_multiplier: f64,
    pub(crate) max_open_for: Duration,
    pub(crate) jitter: f64,
    pub(crate) half_open_probes: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            window: Window::Count(100),
            minimum_calls: 20,
            failure_rate: 0.5,
            slow_call_duration: None,
            slow_call_rate: 1.0,
            consecutive_failures: None,
            open_for: Duration::from_secs(30),
            backoff_multiplier: 2.0,
            max_open_for: Duration::from_secs(300),
            jitter: 0.1,
            half_open_probes: 3,
        }
    }
}

impl CircuitBreakerConfig {
    /// The sliding window.
    #[must_use]
    pub fn window(mut self, window: Window) -> Self {
        self.window = window;
        self
    }

    /// Calls needed in the window before the rates can trip the breaker.
    #[must_use]
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.minimum_calls = n.max(1);
        self
    }

    /// The failure rate (0.0 to 1.0) that trips the breaker.
    #[must_use]
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.failure_rate = rate.clamp(0.0, 1.0);
        self
    }

    /// Calls slower than `duration` count as slow; a slow-call rate of `rate` trips the breaker.
    #[must_use]
    pub fn slow_calls(mut self, duration: Duration, rate: f64) -> Self {
        self.slow_call_duration = Some(duration);
        self.slow_call_rate = rate.clamp(0.0, 1.0);
        self
    }

    /// Consecutive-failures mode: trip after `n` failures in a row (the rates are not used).
    #[must_use]
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = Some(n.max(1));
        self
    }

    /// How long the breaker stays open after its first trip.
    #[must_use]
    pub fn open_for(mut self, duration: Duration) -> Self {
        self.open_for = duration;
        self
    }

    /// How the open period grows when a probe fails (×`multiplier` per trip, up to `max`).
    #[must_use]
    pub fn backoff(mut self, multiplier: f64, max: Duration) -> Self {
        self.backoff_multiplier = multiplier.max(1.0);
        self.max_open_for = max;
        self
    }

    /// Random spread of each open period, as a fraction (0.1 = ±10%), so that many gateways do
    /// not probe a recovering upstream at the same instant.
    #[must_use]
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction.clamp(0.0, 1.0);
        self
    }

    /// How many probe calls half-open lets through; all must succeed to close.
    #[must_use]
    pub fn half_open_probes(mut self, n: u32) -> Self {
        self.half_open_probes = n.max(1);
        self
    }
}

/// Counters of what a breaker did, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerMetrics {
    /// Transitions to open (trips, including failed probes).
    pub opened: u64,
    /// Transitions to half-open.
    pub half_opened: u64,
    /// Transitions back to closed after successful probes.
    pub closed: u64,
    /// Calls rejected without reaching the upstream.
    pub rejected: u64,
}

// One per breaker, so the size difference between the variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Accrual {
    Count(CountWindow),
    Time(TimeWindow),
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    accrual: Accrual,
    consecutive_failures: u32,
    open_until: Instant,
    /// Trips since the breaker was last closed by successful probes.
    trips: u32,
    probes_in_flight: u32,
    probe_successes: u32,
    rng: u64,
    /// Bumped on every state change.
    generation: u64,
}

#[derive(Debug, Default)]
struct Counters {
    opened: AtomicU64,
    half_opened: AtomicU64,
    closed: AtomicU64,
    rejected: AtomicU64,
}

/// The shared breaker. One per upstream (or per endpoint); every service clone holds an `Arc`.
#[derive(Debug)]
pub(crate) struct Breaker {
    cfg: CircuitBreakerConfig,
    inner: Mutex<Inner>,
    transitions: watch::Sender<BreakerState>,
    counters: Counters,
}

/// What a permitted call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PermitKind {
    Normal,
    Probe,
}

/// Permission to make one call, tied to the breaker period (generation) it was given in: an
/// outcome that arrives after the state has changed belongs to a period that is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Permit {
    kind: PermitKind,
    generation: u64,
}

impl Breaker {
    pub(crate) fn new(cfg: CircuitBreakerConfig) -> Self {
        let accrual = match cfg.window {
            Window::Count(n) => Accrual::Count(CountWindow::new(n)),
            Window::Time(span) => Accrual::Time(TimeWindow::new(span)),
        };
        let (transitions, _) = watch::channel(BreakerState::Closed);
        Self {
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                accrual,
                consecutive_failures: 0,
                open_until: Instant::now(),
                trips: 0,
                probes_in_flight: 0,
                probe_successes: 0,
                rng: seed(),
                generation: 0,
            }),
            cfg,
            transitions,
            counters: Counters::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_state(&self, inner: &mut Inner, state: BreakerState) {
        if inner.state != state {
            inner.state = state;
            inner.generation += 1;
            self.transitions.send_replace(state);
        }
    }

    /// Asks to make a call: `Err(retry_after)` when the breaker rejects it.
    pub(crate) fn acquire(&self, now: Instant) -> Result<Permit, Duration> {
        let mut inner = self.lock();
        let result = match inner.state {
            BreakerState::Closed | BreakerState::ForcedClosed => Ok(PermitKind::Normal),
            BreakerState::ForcedOpen => Err(self.cfg.open_for),
            BreakerState::Open if now < inner.open_until => Err(inner.open_until - now),
            BreakerState::Open | BreakerState::HalfOpen => {
                if inner.state == BreakerState::Open {
                    inner.probes_in_flight = 0;
                    inner.probe_successes = 0;
                    self.set_state(&mut inner, BreakerState::HalfOpen);
                    self.counters.half_opened.fetch_add(1, Ordering::Relaxed);
                }
                if inner.probes_in_flight + inner.probe_successes < self.cfg.half_open_probes {
                    inner.probes_in_flight += 1;
                    Ok(PermitKind::Probe)
                } else {
                    Err(Duration::from_secs(1))
                }
            }
        };
        if result.is_err() {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
        }
        result.map(|kind| Permit {
            kind,
            generation: inner.generation,
        })
    }

    /// Records the outcome of a permitted call.
    pub(crate) fn record(&self, permit: Permit, failed: bool, elapsed: Duration, now: Instant) {
        let slow = self.cfg.slow_call_duration.is_some_and(|d| elapsed > d);
        let mut inner = self.lock();
        if permit.generation != inner.generation {
            // The state changed while the call was in flight (tripped, reopened, forced): its
            // outcome belongs to a period that is over.
            return;
        }
        match (permit.kind, inner.state) {
            (PermitKind::Normal, BreakerState::Closed | BreakerState::ForcedClosed) => {
                match &mut inner.accrual {
                    Accrual::Count(w) => w.push(failed, slow),
                    Accrual::Time(w) => w.push(now, failed, slow),
                }
                inner.consecutive_failures = if failed {
                    inner.consecutive_failures + 1
                } else {
                    0
                };
                if inner.state == BreakerState::Closed && self.should_trip(&mut inner, now) {
                    self.open(&mut inner, now);
                }
            }
            (PermitKind::Probe, BreakerState::HalfOpen) => {
                inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
                if failed || slow {
                    inner.trips += 1;
                    self.open(&mut inner, now);
                } else {
                    inner.probe_successes += 1;
                    if inner.probe_successes >= self.cfg.half_open_probes {
                        self.close(&mut inner);
                    }
                }
            }
            // The state changed while the call was in flight (tripped, forced): its outcome
            // belongs to a period that is over.
            _ => {}
        }
    }

    /// A permitted call ended without an outcome (cancelled): give the probe slot back.
    pub(crate) fn release(&self, permit: Permit) {
        if permit.kind == PermitKind::Probe {
            let mut inner = self.lock();
            if inner.state == BreakerState::HalfOpen && inner.generation == permit.generation {
                inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
            }
        }
    }

    fn should_trip(&self, inner: &mut Inner, now: Instant) -> bool {
        if let Some(n) = self.cfg.consecutive_failures {
            return inner.consecutive_failures >= n;
        }
        let Counts {
            calls,
            failures,
            slow,
        } = match &mut inner.accrual {
            Accrual::Count(w) => w.counts(),
            Accrual::Time(w) => w.counts(now),
        };
        if calls < self.cfg.minimum_calls {
            return false;
        }
        let calls = f64::from(calls);
        f64::from(failures) / calls >= self.cfg.failure_rate
            || (self.cfg.slow_call_duration.is_some()
                && f64::from(slow) / calls >= self.cfg.slow_call_rate)
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        let exponent = i32::try_from(inner.trips).unwrap_or(i32::MAX);
        let base = self.cfg.open_for.as_secs_f64() * self.cfg.backoff_multiplier.powi(exponent);
        let capped = base.min(
            self.cfg
                .max_open_for
                .as_secs_f64()
                .max(self.cfg.open_for.as_secs_f64()),
        );
        let spread = (next_unit(&mut inner.rng) * 2.0 - 1.0) * self.cfg.jitter;
        let period = Duration::from_secs_f64((capped * (1.0 + spread)).max(0.0));
        inner.open_until = now + period;
        inner.probes_in_flight = 0;
        inner.probe_successes = 0;
        self.set_state(inner, BreakerState::Open);
        self.counters.opened.fetch_add(1, Ordering::Relaxed);
    }

    fn close(&self, inner: &mut Inner) {
        inner.trips = 0;
        inner.consecutive_failures = 0;
        match &mut inner.accrual {
            Accrual::Count(w) => w.clear(),
            Accrual::Time(w) => w.clear(),
        }
        self.set_state(inner, BreakerState::Closed);
        self.counters.closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// A xorshift seed from the clock and the allocation address; jitter needs spread, not secrecy.
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let local = 0u8;
    (u64::from(nanos) ^ (&raw const local as u64)).max(1)
}

/// A uniform number in [0, 1).
fn next_unit(state: &mut u64) -> f64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Reads, watches and forces a circuit breaker. Cheap to clone; all clones see one breaker.
#[derive(Clone, Debug)]
pub struct CircuitBreakerHandle {
    pub(crate) breaker: Arc<Breaker>,
}

impl CircuitBreakerHandle {
    /// A breaker used without the tower layer (one per endpoint inside a balancer, say): ask
    /// [`try_acquire`](Self::try_acquire) before each call and record its outcome on the permit.
    pub fn new(config: CircuitBreakerConfig) -> Self {
        Self {
            breaker: Arc::new(Breaker::new(config)),
        }
    }

    /// Asks to make one call: a permit, or how long until the breaker may let calls through.
    pub fn try_acquire(&self) -> Result<CallPermit, Duration> {
        let now = Instant::now();
        self.breaker.acquire(now).map(|permit| CallPermit {
            breaker: self.breaker.clone(),
            permit,
            started: now,
            recorded: false,
        })
    }

    /// The current state. An open breaker whose period has ended reports `Open` until the next
    /// call turns it half-open.
    pub fn state(&self) -> BreakerState {
        self.breaker.lock().state
    }

    /// A receiver that sees every state change.
    pub fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.breaker.transitions.subscribe()
    }

    /// Rejects every call until [`reset`](Self::reset) (maintenance, a known-bad upstream).
    pub fn force_open(&self) {
        let mut inner = self.breaker.lock();
        self.breaker.set_state(&mut inner, BreakerState::ForcedOpen);
    }

    /// Lets every call through, never tripping, until [`reset`](Self::reset).
    pub fn force_closed(&self) {
        let mut inner = self.breaker.lock();
        self.breaker
            .set_state(&mut inner, BreakerState::ForcedClosed);
    }

    /// Back to closed with an empty window and no backoff.
    pub fn reset(&self) {
        let mut inner = self.breaker.lock();
        inner.trips = 0;
        inner.consecutive_failures = 0;
        match &mut inner.accrual {
            Accrual::Count(w) => w.clear(),
            Accrual::Time(w) => w.clear(),
        }
        self.breaker.set_state(&mut inner, BreakerState::Closed);
    }

    /// What the breaker has done so far.
    pub fn metrics(&self) -> BreakerMetrics {
        let c = &self.breaker.counters;
        BreakerMetrics {
            opened: c.opened.load(Ordering::Relaxed),
            half_opened: c.half_opened.load(Ordering::Relaxed),
            closed: c.closed.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
        }
    }
}

/// Permission for one call through a breaker; see [`CircuitBreakerHandle::try_acquire`].
///
/// Record the outcome with [`record`](Self::record); a permit dropped without it (a cancelled
/// call) gives its half-open probe slot back and records nothing.
#[derive(Debug)]
pub struct CallPermit {
    breaker: Arc<Breaker>,
    permit: Permit,
    started: Instant,
    recorded: bool,
}

impl CallPermit {
    /// Records the call's outcome; its duration counts towards the slow-call rate.
    pub fn record(mut self, failed: bool) {
        let now = Instant::now();
        self.breaker.record(
            self.permit,
            failed,
            now.saturating_duration_since(self.started),
            now,
        );
        self.recorded = true;
    }
}

impl Drop for CallPermit {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.release(self.permit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_spreads_within_bounds() {
        let mut rng = 12345;
        for _ in 0..1000 {
            let u = next_unit(&mut rng);
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn open_periods_grow_with_repeated_trips_and_respect_the_cap() {
        let b = Breaker::new(
            CircuitBreakerConfig::default()
                .consecutive_failures(1)
                .open_for(Duration::from_secs(10))
                .backoff(2.0, Duration::from_secs(30))
                .jitter(0.0)
                .half_open_probes(1),
        );
        let now = Instant::now();
        let permit = b.acquire(now).unwrap();
        b.record(permit, true, Duration::ZERO, now);
        assert_eq!(b.acquire(now), Err(Duration::from_secs(10)));
        // Each failed probe doubles the period: 20 s, then 40 s capped at 30 s.
        let mut t = now;
        for want in [20, 30, 30] {
            t += b.acquire(t).unwrap_err();
            let probe = b.acquire(t).unwrap();
            assert_eq!(probe.kind, PermitKind::Probe);
            b.record(probe, true, Duration::ZERO, t);
            assert_eq!(b.acquire(t), Err(Duration::from_secs(want)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_from_an_earlier_half_open_round_does_not_count_in_the_next() {
        let b = Breaker::new(
            CircuitBreakerConfig::default()
                .consecutive_failures(1)
                .open_for(Duration::from_secs(10))
                .jitter(0.0)
                .half_open_probes(2),
        );
        let t0 = Instant::now();
        let first = b.acquire(t0).unwrap();
        b.record(first, true, Duration::ZERO, t0);
        // Round 1: probe A stays in flight, probe B fails and reopens the breaker.
        let t1 = t0 + Duration::from_secs(10);
        let a = b.acquire(t1).unwrap();
        let probe_b = b.acquire(t1).unwrap();
        b.record(probe_b, true, Duration::ZERO, t1);
        // Round 2 starts after the (doubled) open period.
        let t2 = t1 + Duration::from_secs(20);
        let c = b.acquire(t2).unwrap();
        // A succeeds late: it must neither free a slot nor count towards closing.
        b.record(a, false, Duration::ZERO, t2);
        let d = b.acquire(t2).unwrap();
        assert!(b.acquire(t2).is_err(), "still only two probes in round 2");
        b.record(c, false, Duration::ZERO, t2);
        assert_eq!(b.lock().state, BreakerState::HalfOpen, "one success of two");
        b.record(d, false, Duration::ZERO, t2);
        assert_eq!(b.lock().state, BreakerState::Closed);
    }
}
