//! The two decision rules, as pure functions of (stored state, now, policy, cost).
//!
//! The in-memory store calls these directly; the Redis store's Lua script is a line-by-line
//! transcription of them (see `store/redis.lua`), and a conformance test feeds both the same
//! sequence and asserts the same decisions. All times are integer Unix microseconds.

use std::time::Duration;

use crate::rate::{Quota, Rate};

/// Largest `burst × interval` (in µs) a rate may have: 2^50 µs (≈ 35 years), so that every
/// intermediate value stays exact in the Lua script's doubles (2^53).
pub(crate) const MAX_SPAN_MICROS: u64 = 1 << 50;

/// What one limit enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Policy {
    /// GCRA: a sustained `rate` with up to `burst` requests at once from an idle key.
    Rate {
        /// The sustained rate.
        rate: Rate,
        /// Requests allowed at once (the bucket size), at least 1.
        burst: u32,
    },
    /// A calendar quota (fixed UTC windows).
    Quota(Quota),
}

impl Policy {
    /// A GCRA policy; `burst` is clamped to at least 1. Panics if the rate is faster than one
    /// request per microsecond or `burst × interval` exceeds ≈ 35 years (configuration
    /// mistakes); [`try_rate`](Self::try_rate) returns an error instead.
    pub fn rate(rate: Rate, burst: u32) -> Self {
        Self::try_rate(rate, burst.max(1)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A GCRA policy, or an error when `burst` is zero, the rate is faster than one request per
    /// microsecond (the resolution), or `burst × interval` exceeds ≈ 35 years.
    pub fn try_rate(rate: Rate, burst: u32) -> Result<Self, String> {
        if burst == 0 {
            return Err(String::from("the burst must be at least 1"));
        }
        if rate.period().as_micros() < u128::from(rate.count()) {
            return Err(format!(
                "rate {rate} is faster than one request per microsecond"
            ));
        }
        if rate
            .emission_interval_micros()
            .saturating_mul(u64::from(burst))
            > MAX_SPAN_MICROS
        {
            return Err(format!(
                "rate {rate} with burst {burst} spans more than 2^50 µs"
            ));
        }
        Ok(Self::Rate { rate, burst })
    }

    /// The limit's size and window at `now` (as reported in [`Outcome::limit`] and
    /// [`Outcome::window`]).
    pub(crate) fn shape(&self, now: i64) -> (u64, Duration) {
        match self {
            Self::Rate { rate, burst } => (
                u64::from(*burst),
                Duration::from_micros(rate.emission_interval_micros() * u64::from(*burst)),
            ),
            Self::Quota(q) => {
                let (_, start, end) = q.window().bounds(now);
                (q.limit(), micros(end - start))
            }
        }
    }

    /// The most a single request may cost under this policy (a larger cost can never conform).
    pub fn capacity(&self) -> u64 {
        match self {
            Self::Rate { burst, .. } => u64::from(*burst),
            Self::Quota(q) => q.limit(),
        }
    }
}

/// The result of evaluating one limit for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Whether this limit admits the request (possibly after [`delay`](Self::delay)).
    pub allowed: bool,
    /// The limit's size: the burst for a rate, the count for a quota (`q` in `RateLimit-Policy`).
    pub limit: u64,
    /// The limit's window: `burst × interval` for a rate, the window length for a quota.
    pub window: Duration,
    /// Requests left (after this one, when admitted).
    pub remaining: u64,
    /// Time until the limit is fully replenished (rate) or the window ends (quota).
    pub reset: Duration,
    /// When refused: how long until the request would conform; `None` when it never can (its
    /// cost exceeds the limit's size).
    pub retry_after: Option<Duration>,
    /// When admitted with throttling: how long to hold the request before forwarding it.
    pub delay: Duration,
}

fn micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// GCRA. `tat` is the stored theoretical arrival time (absent for an idle key); returns the
/// outcome and, when admitted, the new TAT to store.
pub(crate) fn gcra(
    tat: Option<i64>,
    now: i64,
    rate: Rate,
    burst: u32,
    cost: u64,
    max_wait: i64,
) -> (Outcome, Option<i64>) {
    let t = rate.emission_interval_micros() as i64;
    let burst_n = i64::from(burst);
    let tau = t * burst_n;
    let cost_i = i64::try_from(cost).unwrap_or(i64::MAX).min(burst_n + 1);
    let tat0 = tat.map_or(now, |v| v.max(now));
    let new_tat = tat0 + t * cost_i;
    let wait = new_tat - tau - now;
    let mut out = Outcome {
        allowed: false,
        limit: u64::from(burst),
        window: micros(tau),
        remaining: u64::try_from((tau - (tat0 - now)) / t).unwrap_or(0),
        reset: micros(tat0 - now),
        retry_after: None,
        delay: Duration::ZERO,
    };
    if cost_i > burst_n {
        return (out, None);
    }
    if wait > max_wait {
        out.retry_after = Some(micros(wait));
        return (out, None);
    }
    out.allowed = true;
    out.delay = micros(wait);
    out.remaining = u64::try_from((tau - (new_tat - now)) / t).unwrap_or(0);
    out.reset = micros(new_tat - now);
    (out, Some(new_tat))
}

/// Fixed calendar window. `state` is the stored (window end, used): the end identifies the window.
/// Returns the outcome and, when admitted, the new state to store (valid until the window end).
pub(crate) fn quota(
    state: Option<(i64, u64)>,
    now: i64,
    quota: Quota,
    cost: u64,
) -> (Outcome, Option<(i64, u64)>) {
    let (_, start, end) = quota.window().bounds(now);
    let used = match state {
        Some((e, used)) if e == end => used,
        _ => 0,
    };
    let limit = quota.limit();
    let mut out = Outcome {
        allowed: false,
        limit,
        window: micros(end - start),
        remaining: limit.saturating_sub(used),
        reset: micros(end - now),
        retry_after: None,
        delay: Duration::ZERO,
    };
    if cost > limit {
        return (out, None);
    }
    if used.saturating_add(cost) > limit {
        out.retry_after = Some(micros(end - now));
        return (out, None);
    }
    out.allowed = true;
    out.remaining = limit - used - cost;
    (out, Some((end, used + cost)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_707_000_000_000;

    #[test]
    fn gcra_admits_exactly_the_burst_then_one_per_interval() {
        let rate = Rate::per_second(10); // T = 100 ms
        let mut tat = None;
        for i in 0..5 {
            let (o, new) = gcra(tat, NOW, rate, 5, 1, 0);
            assert!(o.allowed, "request {i}");
            assert_eq!(o.remaining, 4 - i);
            tat = new;
        }
        let (o, new) = gcra(tat, NOW, rate, 5, 1, 0);
        assert!(!o.allowed && new.is_none());
        assert_eq!(o.retry_after, Some(Duration::from_millis(100)));
        // One interval later exactly one more conforms.
        let (o, new) = gcra(tat, NOW + 100_000, rate, 5, 1, 0);
        assert!(o.allowed);
        let (o, _) = gcra(new, NOW + 100_000, rate, 5, 1, 0);
        assert!(!o.allowed);
        // 1 µs early is too early.
        let (o, _) = gcra(tat, NOW + 99_999, rate, 5, 1, 0);
        assert_eq!(o.retry_after, Some(Duration::from_micros(1)));
    }

    #[test]
    fn gcra_throttles_within_max_wait_and_reserves_the_slot() {
        let rate = Rate::per_second(10);
        let (_, tat) = gcra(None, NOW, rate, 1, 1, 0);
        let (o, tat2) = gcra(tat, NOW, rate, 1, 1, 250_000);
        assert!(o.allowed);
        assert_eq!(o.delay, Duration::from_millis(100));
        let (o, tat3) = gcra(tat2, NOW, rate, 1, 1, 250_000);
        assert_eq!(o.delay, Duration::from_millis(200));
        let (o, _) = gcra(tat3, NOW, rate, 1, 1, 250_000);
        assert!(!o.allowed, "300 ms is beyond the 250 ms wait");
        assert_eq!(o.retry_after, Some(Duration::from_millis(300)));
    }

    #[test]
    fn cost_above_burst_never_conforms() {
        let (o, new) = gcra(None, NOW, Rate::per_second(10), 5, 6, i64::MAX / 4);
        assert!(!o.allowed && new.is_none() && o.retry_after.is_none());
        let (o, new) = quota(None, NOW, Quota::per_day(5), 6);
        assert!(!o.allowed && new.is_none() && o.retry_after.is_none());
    }

    #[test]
    fn quota_resets_at_the_utc_boundary() {
        let q = Quota::per_day(2);
        let midnight = 1_795_737_600_000_000; // 2026-11-27T00:00:00Z
        let (o, s) = quota(None, midnight - 10, q, 1);
        assert!(o.allowed);
        let (o, s) = quota(s, midnight - 5, q, 1);
        assert_eq!((o.allowed, o.remaining), (true, 0));
        let (o, none) = quota(s, midnight - 1, q, 1);
        assert_eq!(
            (o.allowed, o.retry_after),
            (false, Some(Duration::from_micros(1)))
        );
        assert!(none.is_none());
        let (o, _) = quota(s, midnight, q, 1);
        assert_eq!((o.allowed, o.remaining), (true, 1));
    }
}
