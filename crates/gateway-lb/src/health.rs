//! Endpoint health: active checks (HTTP or TCP, on a timer) and passive outlier detection (from
//! the answers real requests get). Both feed the [`Balancer`] every
//! clone of an upstream shares, so every route and worker using the upstream sees the same
//! state.
//!
//! - An active check marks an endpoint unhealthy after `unhealthy_threshold` failures in a row
//!   and healthy again after `healthy_threshold` passes. Endpoints start healthy, so a gateway
//!   that starts while its first checks run does not refuse traffic.
//! - Outlier detection ejects an endpoint after `consecutive_5xx` answers `>= 500`, or after
//!   `consecutive_gateway_errors` `502`/`503`/`504` answers and connect failures or timeouts
//!   (the gateway's own `502`/`504`). The ejection lasts `base_ejection` × the number of times
//!   it was ejected (at most `max_ejection`; the count resets once the endpoint has stayed in
//!   for `max_ejection`). At most `max_ejection_percent` of the endpoints are ejected at once
//!   (at least one may be). With `success_rate`, a periodic sweep also ejects endpoints whose
//!   success rate is more than `stdev_factor` standard deviations below the mean.
//! - A `429` or `503` with `Retry-After` backs the endpoint off for that long (at most a minute):
//!   a rate-limited endpoint answers fast, but it must not look like the fastest.

use std::{ops::RangeInclusive, sync::atomic::Ordering, time::Duration};

use http::{HeaderMap, StatusCode, header};

use crate::balance::Balancer;

/// The longest `Retry-After` back-off honoured.
pub const MAX_BACK_OFF: Duration = Duration::from_secs(60);

/// An active health check.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthCheck {
    /// What is checked.
    pub kind: CheckKind,
    /// Between checks of one endpoint (default 5s).
    pub interval: Duration,
    /// A check slower than this failed (default 1s).
    pub timeout: Duration,
    /// Passes in a row that make an unhealthy endpoint healthy (default 2).
    pub healthy_threshold: u32,
    /// Failures in a row that make a healthy endpoint unhealthy (default 3).
    pub unhealthy_threshold: u32,
    /// Each interval varies by up to this share, so checks of many gateways spread out
    /// (default 0.1).
    pub jitter: f64,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            kind: CheckKind::Tcp,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            jitter: 0.1,
        }
    }
}

/// What an active check does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// `GET path` (with the endpoint as `Host`); passes on an expected status.
    Http {
        /// The path (and query) requested.
        path: String,
        /// Statuses that pass (default `200..=399`).
        expect: Vec<RangeInclusive<u16>>,
    },
    /// A connection (and, for `https://` endpoints, a TLS handshake) opens.
    Tcp,
}

/// Passive health: ejecting endpoints that fail real requests.
#[derive(Clone, Debug, PartialEq)]
pub struct OutlierDetection {
    /// Eject after this many answers `>= 500` in a row (default 5; `None`: off).
    pub consecutive_5xx: Option<u32>,
    /// Eject after this many `502`/`503`/`504`, connect failures and timeouts in a row
    /// (default 5; `None`: off).
    pub consecutive_gateway_errors: Option<u32>,
    /// The first ejection's length (default 30s).
    pub base_ejection: Duration,
    /// The longest ejection (default 300s).
    pub max_ejection: Duration,
    /// At most this share of the endpoints is ejected at once, in percent (default 10; at
    /// least one endpoint may always be ejected).
    pub max_ejection_percent: u8,
    /// Ejection by success rate (default off).
    pub success_rate: Option<SuccessRate>,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_5xx: Some(5),
            consecutive_gateway_errors: Some(5),
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 10,
            success_rate: None,
        }
    }
}

/// Success-rate ejection (Envoy's): every `interval`, among endpoints with at least
/// `min_requests` requests, when there are at least `min_endpoints` of them, eject those below
/// mean − `stdev_factor` × standard deviation.
#[derive(Clone, Debug, PartialEq)]
pub struct SuccessRate {
    /// Between sweeps (default 10s).
    pub interval: Duration,
    /// Requests an endpoint needs in the interval to count (default 100).
    pub min_requests: u32,
    /// Endpoints with enough requests needed for a sweep to eject (default 5).
    pub min_endpoints: usize,
    /// How far below the mean an outlier is, in standard deviations (default 1.9).
    pub stdev_factor: f64,
}

impl Default for SuccessRate {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            min_requests: 100,
            min_endpoints: 5,
            stdev_factor: 1.9,
        }
    }
}

/// How one answer counts for outlier detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    /// An answer `>= 500` from the endpoint.
    ServerError {
        gateway: bool,
    },
    /// The gateway's own failure to get an answer (connect, timeout, reset).
    LocalFailure,
}

impl Balancer {
    /// Records an answer from endpoint `i`: latency, outlier counters, `Retry-After`.
    pub(crate) fn record(
        &self,
        i: usize,
        outcome: Outcome,
        status: StatusCode,
        headers: &HeaderMap,
    ) {
        let Some(e) = self.endpoints.get(i) else {
            return;
        };
        let now = self.now_ms();
        if (status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE)
            && let Some(wait) = retry_after(headers)
        {
            let until = now + u64::try_from(wait.min(MAX_BACK_OFF).as_millis()).unwrap_or(0);
            e.back_off_until.store(until, Ordering::Relaxed);
            e.returned_at.store(until, Ordering::Relaxed);
            self.invalidate();
        }
        let Some(outlier) = &self.outlier else {
            return;
        };
        e.window_requests.fetch_add(1, Ordering::Relaxed);
        let (five, gateway) = match outcome {
            Outcome::Success => {
                e.consecutive_5xx.store(0, Ordering::Relaxed);
                e.consecutive_gateway.store(0, Ordering::Relaxed);
                return;
            }
            Outcome::ServerError { gateway } => (true, gateway),
            Outcome::LocalFailure => (false, true),
        };
        e.window_failures.fetch_add(1, Ordering::Relaxed);
        let fives = if five {
            e.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            0
        };
        let gateways = if gateway {
            e.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            e.consecutive_gateway.store(0, Ordering::Relaxed);
            0
        };
        let tripped = outlier.consecutive_5xx.is_some_and(|n| five && fives >= n)
            || outlier
                .consecutive_gateway_errors
                .is_some_and(|n| gateway && gateways >= n);
        if tripped {
            self.eject(i, now, outlier);
        }
    }

    /// Ejects endpoint `i` unless too many are out already; whether it did.
    pub(crate) fn eject(&self, i: usize, now: u64, outlier: &OutlierDetection) -> bool {
        let e = &self.endpoints[i];
        if e.ejected_until.load(Ordering::Relaxed) > now {
            return false;
        }
        let n = self.endpoints.len();
        let out = self
            .endpoints
            .iter()
            .filter(|e| e.ejected_until.load(Ordering::Relaxed) > now)
            .count();
        let cap = (n * usize::from(outlier.max_ejection_percent) / 100).max(1);
        if out + 1 > cap {
            return false;
        }
        let max = u64::try_from(outlier.max_ejection.as_millis()).unwrap_or(u64::MAX);
        // Back in long enough: the multiplier starts over.
        if now.saturating_sub(e.returned_at.load(Ordering::Relaxed)) > max {
            e.ejections.store(0, Ordering::Relaxed);
        }
        let times = e.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let base = u64::try_from(outlier.base_ejection.as_millis()).unwrap_or(u64::MAX);
        let until = now + base.saturating_mul(u64::from(times)).min(max);
        e.ejected_until.store(until, Ordering::Relaxed);
        e.returned_at.store(until, Ordering::Relaxed);
        e.consecutive_5xx.store(0, Ordering::Relaxed);
        e.consecutive_gateway.store(0, Ordering::Relaxed);
        self.invalidate();
        tracing::warn!(
            endpoint = i,
            for_ms = until - now,
            "upstream endpoint ejected"
        );
        true
    }

    /// One success-rate sweep: ejects outliers, then starts a new window.
    pub(crate) fn sweep_success_rate(&self, rule: &SuccessRate, outlier: &OutlierDetection) {
        let now = self.now_ms();
        let rates: Vec<(usize, f64)> = self
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let requests = e.window_requests.swap(0, Ordering::Relaxed);
                let failures = e.window_failures.swap(0, Ordering::Relaxed);
                (requests >= rule.min_requests && requests > 0)
                    .then(|| (i, 1.0 - f64::from(failures) / f64::from(requests)))
            })
            .collect();
        if rates.len() < rule.min_endpoints.max(1) {
            return;
        }
        #[allow(clippy::cast_precision_loss)]
        let count = rates.len() as f64;
        let mean = rates.iter().map(|(_, r)| r).sum::<f64>() / count;
        let variance = rates.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / count;
        let floor = mean - rule.stdev_factor * variance.sqrt();
        for (i, rate) in rates {
            if rate < floor {
                self.eject(i, now, outlier);
            }
        }
    }

    /// Applies one active check's result to endpoint `i`, given its run of results.
    pub(crate) fn checked(&self, i: usize, healthy: bool) {
        let e = &self.endpoints[i];
        let was = e.healthy.swap(healthy, Ordering::Relaxed);
        if was != healthy {
            if healthy {
                e.returned_at.store(self.now_ms(), Ordering::Relaxed);
                tracing::info!(endpoint = i, "upstream endpoint healthy again");
            } else {
                tracing::warn!(endpoint = i, "upstream endpoint failed its health checks");
            }
            self.invalidate();
        }
    }
}

/// `Retry-After` as a duration: delta-seconds, or an HTTP date from now.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Classifies an answer for outlier detection.
pub(crate) fn outcome<B>(res: &http::Response<B>) -> Outcome {
    let status = res.status();
    if let Some(rejection) = res.extensions().get::<gateway_core::Rejection>() {
        use gateway_core::RejectReason as R;
        return match rejection.reason {
            R::UpstreamConnect | R::UpstreamTimeout | R::UpstreamProtocol => Outcome::LocalFailure,
            // Refused before the endpoint was involved (a slow client, a body too large).
            _ => Outcome::Success,
        };
    }
    if status.is_server_error() {
        Outcome::ServerError {
            gateway: matches!(status.as_u16(), 502..=504),
        }
    } else {
        Outcome::Success
    }
}

/// The active checks and success-rate sweeps of one upstream, running until this is dropped.
#[derive(Debug)]
pub struct HealthTasks {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for HealthTasks {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl HealthTasks {
    pub(crate) fn new(tasks: Vec<tokio::task::JoinHandle<()>>) -> Self {
        Self { tasks }
    }
}

/// The wait before the next check: `interval` ± `jitter`.
pub(crate) fn jittered(interval: Duration, jitter: f64, roll: u64) -> Duration {
    #[allow(clippy::cast_precision_loss)]
    let unit = (roll >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
    let factor = 1.0 + jitter.clamp(0.0, 1.0) * (2.0 * unit - 1.0);
    interval.mul_f64(factor.max(0.0))
}

/// Whether `status` passes an HTTP check.
pub(crate) fn expected(expect: &[RangeInclusive<u16>], status: StatusCode) -> bool {
    if expect.is_empty() {
        return (200..=399).contains(&status.as_u16());
    }
    expect.iter().any(|r| r.contains(&status.as_u16()))
}

/// The run of results of one endpoint's checks, and the thresholds that flip it.
#[derive(Debug, Default)]
pub(crate) struct Streak {
    passes: u32,
    failures: u32,
}

impl Streak {
    /// Adds a result; `Some(healthy)` when the endpoint's state should become that.
    pub(crate) fn add(&mut self, passed: bool, check: &HealthCheck) -> Option<bool> {
        if passed {
            self.passes += 1;
            self.failures = 0;
            (self.passes >= check.healthy_threshold.max(1)).then_some(true)
        } else {
            self.failures += 1;
            self.passes = 0;
            (self.failures >= check.unhealthy_threshold.max(1)).then_some(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{Balance, SeqRng};
    use std::sync::Arc;

    fn balancer(n: usize, outlier: OutlierDetection) -> Balancer {
        let mut b = Balancer::new(Balance::RoundRobin, &vec![1; n], Arc::new(SeqRng::new(3)))
            .panic_threshold(0.0);
        b.outlier = Some(outlier);
        b
    }

    fn answer(b: &Balancer, i: usize, status: u16) {
        let res = http::Response::builder().status(status).body(()).unwrap();
        b.record(i, outcome(&res), res.status(), res.headers());
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_5xx_eject_for_a_time_that_grows_with_each_ejection() {
        let b = balancer(
            10,
            OutlierDetection {
                consecutive_5xx: Some(3),
                ..OutlierDetection::default()
            },
        );
        answer(&b, 0, 500);
        answer(&b, 0, 500);
        answer(&b, 0, 200);
        answer(&b, 0, 500);
        answer(&b, 0, 500);
        assert!(
            b.endpoints[0].available(b.now_ms()),
            "a success resets the count"
        );
        answer(&b, 0, 500);
        assert!(
            !b.endpoints[0].available(b.now_ms()),
            "three in a row: ejected"
        );
        assert!((0..100).all(|_| b.pick(None, &[]) != Some(0)));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(b.endpoints[0].available(b.now_ms()), "back after 30s");
        for _ in 0..3 {
            answer(&b, 0, 503);
        }
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(
            !b.endpoints[0].available(b.now_ms()),
            "the second ejection lasts 60s"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.endpoints[0].available(b.now_ms()));
    }

    #[tokio::test(start_paused = true)]
    async fn gateway_errors_count_separately_and_the_ejected_share_is_capped() {
        let b = balancer(
            4,
            OutlierDetection {
                consecutive_5xx: None,
                consecutive_gateway_errors: Some(2),
                max_ejection_percent: 25,
                ..OutlierDetection::default()
            },
        );
        // The gateway's own connect failure counts; a 500 does not (only 502-504 do).
        let refused: http::Response<String> = gateway_core::Problem::new(StatusCode::BAD_GATEWAY)
            .reason(
                gateway_core::RejectReason::UpstreamConnect,
                gateway_core::ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
            )
            .into_response();
        b.record(0, outcome(&refused), refused.status(), refused.headers());
        answer(&b, 0, 500);
        answer(&b, 0, 504);
        assert!(
            b.endpoints[0].available(b.now_ms()),
            "the 500 broke the run"
        );
        answer(&b, 0, 504);
        assert!(!b.endpoints[0].available(b.now_ms()));
        answer(&b, 1, 502);
        answer(&b, 1, 502);
        assert!(
            b.endpoints[1].available(b.now_ms()),
            "25% of 4: one endpoint out at a time"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_backs_an_endpoint_off_instead_of_favouring_it() {
        let b = balancer(2, OutlierDetection::default());
        let res = http::Response::builder()
            .status(429)
            .header("retry-after", "5")
            .body(())
            .unwrap();
        b.record(0, outcome(&res), res.status(), res.headers());
        assert!((0..20).all(|_| b.pick(None, &[]) == Some(1)));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!((0..20).any(|_| b.pick(None, &[]) == Some(0)));
        let endless = http::Response::builder()
            .status(503)
            .header("retry-after", "86400")
            .body(())
            .unwrap();
        b.record(0, outcome(&endless), endless.status(), endless.headers());
        tokio::time::advance(MAX_BACK_OFF).await;
        assert!(b.endpoints[0].available(b.now_ms()), "capped at a minute");
    }

    #[tokio::test(start_paused = true)]
    async fn success_rate_sweeps_eject_the_outlier() {
        let b = balancer(
            6,
            OutlierDetection {
                consecutive_5xx: None,
                consecutive_gateway_errors: None,
                max_ejection_percent: 50,
                ..OutlierDetection::default()
            },
        );
        for i in 0..6 {
            for k in 0..100 {
                // Endpoint 5 fails half of its requests; the others 1 in 100.
                let fail = if i == 5 { k % 2 == 0 } else { k == 0 };
                answer(&b, i, if fail { 500 } else { 200 });
            }
        }
        let rule = SuccessRate {
            min_requests: 50,
            ..SuccessRate::default()
        };
        b.sweep_success_rate(&rule, b.outlier.as_ref().unwrap());
        let now = b.now_ms();
        let out: Vec<bool> = (0..6).map(|i| !b.endpoints[i].available(now)).collect();
        assert_eq!(out, [false, false, false, false, false, true]);
    }

    #[test]
    fn streaks_flip_at_their_thresholds() {
        let check = HealthCheck::default();
        let mut s = Streak::default();
        assert_eq!(s.add(false, &check), None);
        assert_eq!(s.add(false, &check), None);
        assert_eq!(s.add(false, &check), Some(false));
        assert_eq!(s.add(true, &check), None);
        assert_eq!(s.add(true, &check), Some(true));
        assert!(expected(&[], StatusCode::NO_CONTENT));
        assert!(!expected(&[], StatusCode::SERVICE_UNAVAILABLE));
        assert!(expected(&[503..=503], StatusCode::SERVICE_UNAVAILABLE));
        let j = jittered(Duration::from_secs(10), 0.1, u64::MAX);
        assert!(j <= Duration::from_secs(11) && j >= Duration::from_secs(9));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rebuilt_balancer_keeps_what_was_learnt_about_the_endpoints_it_still_has() {
        let old = balancer(3, OutlierDetection::default());
        old.eject(1, old.now_ms(), old.outlier.as_ref().unwrap());
        old.checked(2, false);
        tokio::time::advance(Duration::from_secs(10)).await;
        // The list changes: endpoint 1 is now at index 0, endpoint 2 at index 1, one is new.
        let new = balancer(3, OutlierDetection::default());
        new.inherit(&old, &[(0, 1), (1, 2)], true);
        let s = new.status();
        let left = s[0].ejected_for.unwrap();
        assert!(
            left <= Duration::from_secs(20) && left > Duration::from_secs(19),
            "{left:?}"
        );
        assert_eq!(s[0].ejections, 1);
        assert!(!s[1].healthy);
        assert!(s[2].available, "a new endpoint starts available");
        let unchecked = balancer(2, OutlierDetection::default());
        unchecked.inherit(&old, &[(0, 2)], false);
        assert!(
            unchecked.status()[0].healthy,
            "no checks: nothing could bring it back"
        );
    }
}
