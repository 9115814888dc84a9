//! Hedging behaviour, with tokio's paused clock.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use gateway_breaker::{HedgeLayer, Hedged, ReplayBody};
use http::{Method, Request, Response};
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt};

/// An upstream whose n-th call takes `latencies[n]` milliseconds and answers `200`, and the
/// counter of its calls (the last latency repeats).
fn upstream(latencies: &'static [u64]) -> (Upstream, Arc<AtomicUsize>) {
    scripted(latencies, &[200])
}

/// Like [`upstream`], with the n-th call answering `statuses[n]` (the last status repeats).
fn scripted(latencies: &'static [u64], statuses: &'static [u16]) -> (Upstream, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    (
        Upstream {
            latencies,
            statuses,
            calls: calls.clone(),
        },
        calls,
    )
}

#[derive(Clone)]
struct Upstream {
    latencies: &'static [u64],
    statuses: &'static [u16],
    calls: Arc<AtomicUsize>,
}

impl Service<Request<ReplayBody<Full<Bytes>>>> for Upstream {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<String>, Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<ReplayBody<Full<Bytes>>>) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let wait = self.latencies[n.min(self.latencies.len() - 1)];
        let status = self.statuses[n.min(self.statuses.len() - 1)];
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let mut res = Response::new(format!("call {n}"));
            *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
            Ok(res)
        })
    }
}

fn buffered(method: Method) -> Request<ReplayBody<Full<Bytes>>> {
    Request::builder()
        .method(method)
        .uri("/")
        .body(ReplayBody::buffered(Bytes::from_static(b"body")))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_fast_answer_needs_no_hedge() {
    let (svc, calls) = upstream(&[10]);
    let res = HedgeLayer::new(Duration::from_millis(50))
        .layer(svc)
        .oneshot(buffered(Method::GET))
        .await
        .unwrap();
    assert_eq!(res.body(), "call 0");
    assert!(res.extensions().get::<Hedged>().is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_slow_answer_is_raced_by_a_hedge_and_the_first_wins() {
    let (svc, calls) = upstream(&[1_000, 20]);
    let started = tokio::time::Instant::now();
    let res = HedgeLayer::new(Duration::from_millis(50))
        .layer(svc)
        .oneshot(buffered(Method::GET))
        .await
        .unwrap();
    assert_eq!(res.body(), "call 1");
    assert!(res.extensions().get::<Hedged>().is_some());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(70),
        "50 ms delay + 20 ms hedge"
    );
}

#[tokio::test(start_paused = true)]
async fn non_idempotent_and_streaming_requests_are_never_hedged() {
    let (svc, calls) = upstream(&[200]);
    let layer = HedgeLayer::new(Duration::from_millis(50));
    let res = layer
        .layer(svc.clone())
        .oneshot(buffered(Method::POST))
        .await
        .unwrap();
    assert_eq!(res.body(), "call 0");
    let streaming = Request::get("/")
        .body(ReplayBody::streaming(Full::new(Bytes::from_static(b"x"))))
        .unwrap();
    let res = layer.layer(svc).oneshot(streaming).await.unwrap();
    assert_eq!(res.body(), "call 1");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one call each, no hedges");
}

#[tokio::test(start_paused = true)]
async fn hedges_are_drawn_from_the_budget() {
    let (svc, calls) = upstream(&[200]);
    // No share of traffic and no reserve: the budget never allows a hedge.
    let layer = HedgeLayer::new(Duration::from_millis(50)).budget(0.0, 0, Duration::from_secs(10));
    let seen = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..5 {
        let res = layer
            .layer(svc.clone())
            .oneshot(buffered(Method::GET))
            .await
            .unwrap();
        seen.lock()
            .unwrap()
            .push(res.extensions().get::<Hedged>().is_some());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    assert!(seen.lock().unwrap().iter().all(|h| !h));
}

#[tokio::test(start_paused = true)]
async fn a_failed_hedge_does_not_beat_a_good_slow_answer() {
    // The first call answers 200 after 200 ms; the hedge fails at once with 503.
    let (svc, calls) = scripted(&[200, 0], &[200, 503]);
    let res = HedgeLayer::new(Duration::from_millis(50))
        .layer(svc)
        .oneshot(buffered(Method::GET))
        .await
        .unwrap();
    assert_eq!(res.body(), "call 0");
    assert!(res.extensions().get::<Hedged>().is_none());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the hedge was sent and lost"
    );
}

#[tokio::test(start_paused = true)]
async fn the_hedge_waits_for_the_inner_service_to_be_ready() {
    // A concurrency limit of one: the hedge may only be sent once the primary is done, and
    // calling it without poll_ready would panic.
    let (svc, calls) = upstream(&[200, 10]);
    let limited = tower::limit::ConcurrencyLimit::new(svc, 1);
    let res = HedgeLayer::new(Duration::from_millis(50))
        .layer(limited)
        .oneshot(buffered(Method::GET))
        .await
        .unwrap();
    assert_eq!(res.body(), "call 0");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no slot was free for a hedge"
    );
}
