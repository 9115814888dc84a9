//! Circuit breaker behaviour, with tokio's paused clock.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use gateway_breaker::{BreakerState, CircuitBreakerConfig, CircuitBreakerLayer, Window};
use gateway_core::{FailureKind, Rejection, ResponseFlags};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt, service_fn};

/// A fake upstream whose status and latency the test sets.
#[derive(Clone, Default)]
struct Backend {
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    calls: Arc<AtomicUsize>,
}

impl Backend {
    fn new() -> Self {
        let b = Self::default();
        b.set(200);
        b
    }

    fn set(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn delay(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn service(
        &self,
    ) -> impl Service<Request<()>, Response = Response<String>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + use<> {
        let b = self.clone();
        service_fn(move |_req: Request<()>| {
            let b = b.clone();
            async move {
                b.calls.fetch_add(1, Ordering::SeqCst);
                let delay = b.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                let mut res = Response::new(String::from("upstream"));
                *res.status_mut() = StatusCode::from_u16(b.status.load(Ordering::SeqCst)).unwrap();
                Ok::<_, Infallible>(res)
            }
        })
    }
}

async fn call<S>(svc: &mut S) -> Response<String>
where
    S: Service<Request<()>, Response = Response<String>, Error = Infallible>,
{
    svc.ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap()
}

fn rate_config() -> CircuitBreakerConfig {
    CircuitBreakerConfig::default()
        .window(Window::Count(10))
        .minimum_calls(4)
        .failure_rate(0.5)
        .open_for(Duration::from_secs(10))
        .jitter(0.0)
        .half_open_probes(2)
}

#[tokio::test(start_paused = true)]
async fn trips_at_the_failure_rate_only_once_minimum_calls_are_in() {
    let backend = Backend::new();
    let layer = CircuitBreakerLayer::new(rate_config());
    let handle = layer.handle();
    let mut svc = layer.layer(backend.service());
    backend.set(500);
    call(&mut svc).await;
    call(&mut svc).await;
    backend.set(200);
    call(&mut svc).await;
    assert_eq!(
        handle.state(),
        BreakerState::Closed,
        "3 calls are below minimum_calls"
    );
    call(&mut svc).await;
    assert_eq!(
        handle.state(),
        BreakerState::Open,
        "2 failures in 4 calls is 50%"
    );
    assert_eq!(handle.metrics().opened, 1);
}

#[tokio::test(start_paused = true)]
async fn stays_closed_below_the_failure_rate() {
    let backend = Backend::new();
    let layer = CircuitBreakerLayer::new(rate_config());
    let handle = layer.handle();
    let mut svc = layer.layer(backend.service());
    for i in 0..20 {
        backend.set(if i % 4 == 0 { 503 } else { 200 });
        call(&mut svc).await;
    }
    assert_eq!(handle.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn open_answers_503_with_retry_after_and_never_calls_the_upstream() {
    let backend = Backend::new();
    let layer = CircuitBreakerLayer::new(rate_config());
    let handle = layer.handle();
    let mut svc = layer.layer(backend.service());
    backend.set(502);
    for _ in 0..4 {
        call(&mut svc).await;
    }
    let before = backend.calls();
    tokio::time::advance(Duration::from_millis(2_500)).await;
    let res = call(&mut svc).await;
    assert_eq!(backend.calls(), before);
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "8", "7.5 s left, rounded up");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let rejection = res.extensions().get::<Rejection>().unwrap();
    assert!(rejection.flags.contains(ResponseFlags::UPSTREAM_OVERFLOW));
    assert_eq!(handle.metrics().rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_limited_probes_and_closes_when_they_succeed() {
    let backend = Backend::new();
    let layer = CircuitBreakerLayer::new(rate_config());
    let handle = layer.handle();
    let mut transitions = handle.subscribe();
    let svc = layer.layer(backend.service());
    backend.set(500);
    for _ in 0..4 {
        call(&mut svc.clone()).await;
    }
    assert_eq!(*transitions.borrow_and_update(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    backend.set(200);
    backend.delay(1_000);
    // Two probes go through and take a second each; a third call meanwhile is rejected.
    let p1 = tokio::spawn(call_owned(svc.clone()));
    let p2 = tokio::spawn(call_owned(svc.clone()));
    tokio::task::yield_now().await;
    assert_eq!(handle.state(), BreakerState::HalfOpen);
    let third = call(&mut svc.clone()).await;
    assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(p1.await.unwrap().status(), StatusCode::OK);
    assert_eq!(p2.await.unwrap().status(), StatusCode::OK);
    assert_eq!(handle.state(), BreakerState::Closed);
    let m = handle.metrics();
    assert_eq!((m.opened, m.half_opened, m.closed), (1, 1, 1));
    transitions.changed().await.unwrap();
    assert_eq!(*transitions.borrow(), BreakerState::Closed);
}

async fn call_owned<S>(mut svc: S) -> Response<String>
where
    S: Service<Request<()>, Response = Response<String>, Error = Infallible>,
{
    call(&mut svc).await
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_for_longer() {
    let backend = Backend::new();
    let layer = CircuitBreakerLayer::new(rate_config().backoff(2.0, Duration::from_secs(60)));
    let handle = layer.handle();
    let mut svc = layer.layer(backend.service());
    backend.set(500);
    for _ in 0..4 {
        call(&mut svc).await;
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    let probe = call(&mut svc).await;
    assert_eq!(
        probe.status(),
        StatusCode::INTERNAL_SERVER_ERROR,
        "the probe reached the upstream"
    );
    assert_eq!(handle.state(), BreakerState::Open);
    let res = call(&mut svc).await;
    assert_eq!(res.headers()["retry-after"], "20");
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_mode_counts_only_failures_in_a_row() {
    let backend = Backend::new();
    let layer = CircuitBreakerLayer::new(CircuitBreakerConfig::default().consecutive_failures(3));
    let handle = layer.handle();
    let mut svc = layer.layer(backend.service());
    for status in [500, 500, 200, 500, 500] {
        backend.set(status);
        call(&mut svc).await;
    }
    assert_eq!(
        handle.state(),
        BreakerState::Closed,
        "a success resets the run"
    );
    call(&mut svc).await;
    assert_eq!(handle.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_the_breaker() {
    let backend = Backend::new();
    let layer = CircuitBreakerLayer::new(
        rate_config()
            .minimum_calls(2)
            .slow_calls(Duration::from_millis(500), 0.5),
    );
    let handle = layer.handle();
    let mut svc = layer.layer(backend.service());
    backend.delay(100);
    call(&mut svc).await;
    call(&mut svc).await;
    assert_eq!(handle.state(), BreakerState::Closed);
    backend.delay(600);
    call(&mut svc).await;
    assert_eq!(handle.state(), BreakerState::Closed, "1 slow call in 3");
    call(&mut svc).await;
    assert_eq!(
        handle.state(),
        BreakerState::Open,
        "2 slow calls in 4 is 50%"
    );
}

#[tokio::test(start_paused = true)]
async fn failures_older_than_the_time_window_do_not_count() {
    let backend = Backend::new();
    let layer = CircuitBreakerLayer::new(
        rate_config()
            .window(Window::Time(Duration::from_secs(10)))
            .minimum_calls(2),
    );
    let handle = layer.handle();
    let mut svc = layer.layer(backend.service());
    backend.set(500);
    call(&mut svc).await;
    tokio::time::advance(Duration::from_secs(11)).await;
    backend.set(200);
    call(&mut svc).await;
    assert_eq!(
        handle.state(),
        BreakerState::Closed,
        "the old failure left the window"
    );
    backend.set(500);
    call(&mut svc).await;
    // Within the window now: one success and one failure, 50%.
    assert_eq!(handle.state(), BreakerState::Open);
    let m = handle.metrics();
    assert_eq!(m.opened, 1);
}

#[tokio::test(start_paused = true)]
async fn an_old_failure_alone_does_not_reach_minimum_calls_again() {
    let backend = Backend::new();
    let layer = CircuitBreakerLayer::new(
        rate_config()
            .window(Window::Time(Duration::from_secs(10)))
            .minimum_calls(2),
    );
    let handle = layer.handle();
    let mut svc = layer.layer(backend.service());
    backend.set(500);
    call(&mut svc).await;
    tokio::time::advance(Duration::from_secs(11)).await;
    call(&mut svc).await;
    assert_eq!(
        handle.state(),
        BreakerState::Closed,
        "the first failure left the window"
    );
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_breaker() {
    let backend = Backend::new();
    let layer = CircuitBreakerLayer::new(CircuitBreakerConfig::default().consecutive_failures(2));
    let svc = layer.layer(backend.service());
    let mut a = svc.clone();
    let mut b = layer.layer(backend.service());
    backend.set(500);
    call(&mut a).await;
    call(&mut b).await;
    let before = backend.calls();
    let res = call(&mut svc.clone()).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(backend.calls(), before);
}

#[tokio::test(start_paused = true)]
async fn forcing_and_resetting() {
    let backend = Backend::new();
    let layer = CircuitBreakerLayer::new(CircuitBreakerConfig::default().consecutive_failures(1));
    let handle = layer.handle();
    let mut svc = layer.layer(backend.service());
    handle.force_open();
    assert_eq!(
        call(&mut svc).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(backend.calls(), 0);
    handle.force_closed();
    backend.set(500);
    for _ in 0..5 {
        assert_eq!(
            call(&mut svc).await.status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    assert_eq!(
        handle.state(),
        BreakerState::ForcedClosed,
        "forced closed never trips"
    );
    handle.reset();
    assert_eq!(handle.state(), BreakerState::Closed);
    call(&mut svc).await;
    assert_eq!(handle.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_gives_its_slot_back() {
    let backend = Backend::new();
    let layer = CircuitBreakerLayer::new(rate_config().half_open_probes(1).consecutive_failures(1));
    let handle = layer.handle();
    let mut svc = layer.layer(backend.service());
    backend.set(500);
    call(&mut svc).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    backend.set(200);
    backend.delay(1_000);
    let probe = svc.ready().await.unwrap().call(Request::new(()));
    drop(probe);
    backend.delay(0);
    let res = call(&mut svc).await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "the slot of the dropped probe was released"
    );
    assert_eq!(handle.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_fallback_replaces_the_503() {
    let backend = Backend::new();
    let layer = CircuitBreakerLayer::new(CircuitBreakerConfig::default().consecutive_failures(1))
        .fallback(
            StatusCode::OK,
            HeaderValue::from_static("application/json"),
            "{\"items\":[]}",
        );
    let mut svc = layer.layer(backend.service());
    backend.set(500);
    call(&mut svc).await;
    let res = call(&mut svc).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.body(), "{\"items\":[]}");
    assert_eq!(res.headers()["content-type"], "application/json");
    assert!(res.headers().contains_key("retry-after"));
    assert!(res.extensions().get::<Rejection>().is_some());
}

#[tokio::test(start_paused = true)]
async fn rate_limited_answers_are_not_failures_unless_classified_so() {
    let backend = Backend::new();
    let layer = CircuitBreakerLayer::new(CircuitBreakerConfig::default().consecutive_failures(2));
    let handle = layer.handle();
    let mut svc = layer.layer(backend.service());
    backend.set(429);
    for _ in 0..5 {
        call(&mut svc).await;
    }
    assert_eq!(handle.state(), BreakerState::Closed);

    let strict = CircuitBreakerLayer::new(CircuitBreakerConfig::default().consecutive_failures(2))
        .classifier(|status: StatusCode, _: &HeaderMap, _: &http::Extensions| {
            (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
                .then_some(FailureKind::RateLimited)
        });
    let strict_handle = strict.handle();
    let mut svc = strict.layer(backend.service());
    call(&mut svc).await;
    call(&mut svc).await;
    assert_eq!(strict_handle.state(), BreakerState::Open);
}
