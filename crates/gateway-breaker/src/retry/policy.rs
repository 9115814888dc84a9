use std::{sync::Arc, time::Duration};

use gateway_core::{Rejection, ResponseFlags};
use http::{Method, Request, Response, StatusCode, header::RETRY_AFTER};
use tokio::time::{Instant, Sleep};
use tower::retry::{
    Policy,
    budget::{Budget, TpsBudget},
};

use super::ReplayBody;

/// How many retries a response took, in its extensions (0 when the first attempt was final).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryCount(pub u32);

/// Retry settings, built with consuming methods from the defaults: at most 2 retries; a budget of
/// 20% of recent requests (10 s) plus 10 retries per second; backoff from 25 ms doubling to 1 s
/// with full jitter; retried on 502, 503, 504, timeouts and resets (idempotent methods) and on
/// connect failures (any method); `Retry-After` honoured up to 1 s; bodies up to 64 KiB
/// replayed; no deadline.
#[derive(Clone, Debug)]
pub struct RetryConfig {
    pub(crate) attempts: u32,
    pub(crate) budget_ratio: f32,
    pub(crate) budget_min_per_sec: u32,
    pub(crate) budget_ttl: Duration,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) statuses: Vec<StatusCode>,
    pub(crate) on_timeout: bool,
    pub(crate) on_reset: bool,
    pub(crate) retry_after_cap: Duration,
    pub(crate) max_body_bytes: u64,
    pub(crate) deadline: Option<Duration>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 2,
            budget_ratio: 0.2,
            budget_min_per_sec: 10,
            budget_ttl: Duration::from_secs(10),
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_secs(1),
            statuses: vec![
                StatusCode::BAD_GATEWAY,
                StatusCode::SERVICE_UNAVAILABLE,
                StatusCode::GATEWAY_TIMEOUT,
            ],
            on_timeout: true,
            on_reset: true,
            retry_after_cap: Duration::from_secs(1),
            max_body_bytes: 64 * 1024,
            deadline: None,
        }
    }
}

impl RetryConfig {
    /// At most this many retries after the first attempt.
    #[must_use]
    pub fn attempts(mut self, retries: u32) -> Self {
        self.attempts = retries;
        self
    }

    /// The budget: retries may add at most `ratio` (0.2 = 20%) of the requests of the last `ttl`
    /// (1 to 60 s), plus `min_per_sec` retries per second.
    #[must_use]
    pub fn budget(mut self, ratio: f32, min_per_sec: u32, ttl: Duration) -> Self {
        self.budget_ratio = ratio.clamp(0.0, 10.0);
        self.budget_min_per_sec = min_per_sec;
        self.budget_ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        self
    }

    /// Exponential backoff: the n-th retry waits a random time up to `base × 2ⁿ`, at most `max`.
    #[must_use]
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max.max(base);
        self
    }

    /// The response statuses retried (for idempotent methods).
    #[must_use]
    pub fn on_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.statuses = statuses.into_iter().collect();
        self
    }

    /// Whether upstream timeouts (flag `UT`) and resets or protocol errors (`UC`, `UPE`) are
    /// retried (for idempotent methods).
    #[must_use]
    pub fn on_timeouts_and_resets(mut self, timeouts: bool, resets: bool) -> Self {
        self.on_timeout = timeouts;
        self.on_reset = resets;
        self
    }

    /// The longest `Retry-After` waited for; a longer one ends the retries.
    #[must_use]
    pub fn retry_after_cap(mut self, cap: Duration) -> Self {
        self.retry_after_cap = cap;
        self
    }

    /// Request bodies up to this size (known from `Content-Length`) are buffered for replay.
    #[must_use]
    pub fn max_body_bytes(mut self, max: u64) -> Self {
        self.max_body_bytes = max;
        self
    }

    /// No retry starts later than this after the request arrived.
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    pub(crate) fn budget_instance(&self) -> TpsBudget {
        TpsBudget::new(self.budget_ttl, self.budget_min_per_sec, self.budget_ratio)
    }
}

/// The per-request retry state; a clone of it rides with every request.
#[derive(Clone, Debug)]
pub(crate) struct RetryPolicy {
    pub(crate) cfg: Arc<RetryConfig>,
    pub(crate) budget: Arc<TpsBudget>,
    pub(crate) retries: u32,
    pub(crate) started: Instant,
    pub(crate) rng: u64,
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

pub(crate) fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Why an outcome may be retried, and how long the upstream asked us to wait.
enum Verdict {
    No,
    Yes(Option<Duration>),
}

impl RetryPolicy {
    fn verdict<B, E>(&self, method: &Method, result: &Result<Response<B>, E>) -> Verdict {
        let Ok(res) = result else {
            // An error instead of a response: retried like a reset, for idempotent methods only.
            return if idempotent(method) {
                Verdict::Yes(None)
            } else {
                Verdict::No
            };
        };
        let flags = res
            .extensions()
            .get::<Rejection>()
            .map_or(ResponseFlags::empty(), |r| r.flags);
        if flags.contains(ResponseFlags::UPSTREAM_OVERFLOW)
            || flags.contains(ResponseFlags::NO_HEALTHY_UPSTREAM)
        {
            // A breaker, a bulkhead or every endpoint's breaker said no: retrying only spends
            // budget on an upstream known to be unavailable.
            return Verdict::No;
        }
        if flags.contains(ResponseFlags::UPSTREAM_CONNECTION_FAILURE) {
            // The connection was never made: nothing was sent, any method is safe.
            return Verdict::Yes(None);
        }
        if !idempotent(method) {
            return Verdict::No;
        }
        let wanted = (self.cfg.on_timeout && flags.contains(ResponseFlags::UPSTREAM_TIMEOUT))
            || (self.cfg.on_reset
                && (flags.contains(ResponseFlags::UPSTREAM_CONNECTION_TERMINATION)
                    || flags.contains(ResponseFlags::UPSTREAM_PROTOCOL_ERROR)))
            || self.cfg.statuses.contains(&res.status());
        if !wanted {
            return Verdict::No;
        }
        let retry_after = res
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        match retry_after {
            Some(wait) if wait > self.cfg.retry_after_cap => Verdict::No,
            wait => Verdict::Yes(wait),
        }
    }

    fn backoff(&mut self) -> Duration {
        let exp = self
            .cfg
            .backoff_base
            .saturating_mul(1u32 << self.retries.min(20));
        let ceiling = exp.min(self.cfg.backoff_max);
        // xorshift; full jitter: uniform in [0, ceiling].
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        ceiling.mul_f64((x >> 11) as f64 / (1u64 << 53) as f64)
    }
}

impl<B, ResBody, E> Policy<Request<ReplayBody<B>>, Response<ResBody>, E> for RetryPolicy {
    type Future = Sleep;

    fn retry(
        &mut self,
        req: &mut Request<ReplayBody<B>>,
        result: &mut Result<Response<ResBody>, E>,
    ) -> Option<Self::Future> {
        let give_up = |result: &mut Result<Response<ResBody>, E>, retries| {
            if let Ok(res) = result {
                res.extensions_mut().insert(RetryCount(retries));
            }
        };
        let wait = match self.verdict(req.method(), result) {
            Verdict::No => {
                give_up(result, self.retries);
                return None;
            }
            Verdict::Yes(wait) => wait,
        };
        if self.retries >= self.cfg.attempts {
            give_up(result, self.retries);
            return None;
        }
        let delay = wait.unwrap_or_else(|| self.backoff());
        let at = Instant::now() + delay;
        // The budget is spent last, only on a retry that will really be made.
        if self.cfg.deadline.is_some_and(|d| at > self.started + d) || !self.budget.withdraw() {
            give_up(result, self.retries);
            return None;
        }
        self.retries += 1;
        Some(tokio::time::sleep_until(at))
    }

    fn clone_request(&mut self, req: &Request<ReplayBody<B>>) -> Option<Request<ReplayBody<B>>> {
        super::body::clone_request(req)
    }
}
