//! Retry behaviour, with tokio's paused clock.

use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use gateway_breaker::{ReplayBody, RetryConfig, RetryCount, RetryLayer};
use gateway_core::{RejectReason, Rejection, ResponseFlags};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};

type Seen = Arc<Mutex<Vec<(Method, Bytes, Instant)>>>;

/// A fake upstream answering from a script (then 200), recording method, body and time.
fn upstream(
    script: &[Response<String>],
) -> (
    impl Service<Request<ReplayBody<Full<Bytes>>>, Response = Response<String>, Error = Infallible>
    + Clone
    + use<>,
    Seen,
) {
    let script = Arc::new(Mutex::new(
        script
            .iter()
            .map(|r| {
                let mut c = Response::new(r.body().clone());
                *c.status_mut() = r.status();
                *c.headers_mut() = r.headers().clone();
                if let Some(rej) = r.extensions().get::<Rejection>() {
                    c.extensions_mut().insert(*rej);
                }
                c
            })
            .collect::<VecDeque<_>>(),
    ));
    let seen: Seen = Arc::default();
    let svc = service_fn({
        let seen = seen.clone();
        move |req: Request<ReplayBody<Full<Bytes>>>| {
            let script = script.clone();
            let seen = seen.clone();
            async move {
                let method = req.method().clone();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                seen.lock().unwrap().push((method, body, Instant::now()));
                let next = script.lock().unwrap().pop_front();
                Ok::<_, Infallible>(next.unwrap_or_else(|| Response::new(String::from("ok"))))
            }
        }
    });
    (svc, seen)
}

/// Sends `req` through a retry layer with `config` in front of `svc`.
async fn retried<S>(config: RetryConfig, svc: S, req: Request<Full<Bytes>>) -> Response<String>
where
    S: Service<Request<ReplayBody<Full<Bytes>>>, Response = Response<String>, Error = Infallible>
        + Clone,
{
    RetryLayer::new(config)
        .layer(svc)
        .oneshot(req)
        .await
        .unwrap()
}

fn status(code: u16) -> Response<String> {
    let mut r = Response::new(String::new());
    *r.status_mut() = StatusCode::from_u16(code).unwrap();
    r
}

fn flagged(code: u16, flags: ResponseFlags) -> Response<String> {
    let mut r = status(code);
    r.extensions_mut().insert(Rejection {
        reason: RejectReason::UpstreamConnect,
        flags,
    });
    r
}

fn request(method: Method, body: &'static str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri("/")
        .header("content-length", body.len())
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn idempotent_requests_are_retried_with_their_body_until_success() {
    let (svc, seen) = upstream(&[status(503), status(502)]);
    let svc = RetryLayer::new(RetryConfig::default().attempts(3)).layer(svc);
    let res = svc
        .oneshot(request(Method::PUT, "same body"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.extensions().get::<RetryCount>(), Some(&RetryCount(2)));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|(_, body, _)| body == "same body"));
}

#[tokio::test(start_paused = true)]
async fn attempts_are_capped_and_the_last_answer_is_returned() {
    let (svc, seen) = upstream(&[status(503), status(503), status(503), status(503)]);
    let svc = RetryLayer::new(RetryConfig::default().attempts(2)).layer(svc);
    let res = svc.oneshot(request(Method::GET, "")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.extensions().get::<RetryCount>(), Some(&RetryCount(2)));
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn post_is_retried_only_when_the_connection_was_never_made() {
    let (svc, seen) = upstream(&[status(503)]);
    let res = retried(RetryConfig::default(), svc, request(Method::POST, "order")).await;
    assert_eq!(
        res.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a POST may have had effects"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);

    let (svc, seen) = upstream(&[flagged(502, ResponseFlags::UPSTREAM_CONNECTION_FAILURE)]);
    let res = retried(RetryConfig::default(), svc, request(Method::POST, "order")).await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "nothing was sent, so the POST is safe to retry"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].1, "order");
}

#[tokio::test(start_paused = true)]
async fn breaker_and_bulkhead_rejections_are_not_retried() {
    let (svc, seen) = upstream(&[flagged(503, ResponseFlags::UPSTREAM_OVERFLOW)]);
    let res = retried(RetryConfig::default(), svc, request(Method::GET, "")).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn bodies_over_the_replay_limit_stream_through_and_are_not_retried() {
    let (svc, seen) = upstream(&[status(503)]);
    let res = retried(
        RetryConfig::default().max_body_bytes(4),
        svc,
        request(Method::PUT, "too long to buffer"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(seen.lock().unwrap()[0].1, "too long to buffer");
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_up_to_the_cap() {
    let mut wait2 = status(503);
    wait2
        .headers_mut()
        .insert("retry-after", "2".parse().unwrap());
    let (svc, seen) = upstream(&[wait2]);
    let svc =
        RetryLayer::new(RetryConfig::default().retry_after_cap(Duration::from_secs(5))).layer(svc);
    let res = svc.oneshot(request(Method::GET, "")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let gap = {
        let seen = seen.lock().unwrap();
        seen[1].2 - seen[0].2
    };
    assert_eq!(gap, Duration::from_secs(2));

    let mut wait60 = status(503);
    wait60
        .headers_mut()
        .insert("retry-after", "60".parse().unwrap());
    let (svc, seen) = upstream(&[wait60]);
    let res = retried(RetryConfig::default(), svc, request(Method::GET, "")).await;
    assert_eq!(
        res.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "60 s is beyond the 1 s cap"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn backoff_stays_under_its_doubling_ceiling() {
    let (svc, seen) = upstream(&[status(503), status(503), status(503)]);
    let svc = RetryLayer::new(
        RetryConfig::default()
            .attempts(3)
            .backoff(Duration::from_millis(100), Duration::from_millis(250)),
    )
    .layer(svc);
    svc.oneshot(request(Method::GET, "")).await.unwrap();
    let seen = seen.lock().unwrap();
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].2 - w[0].2).collect();
    assert_eq!(gaps.len(), 3);
    for (gap, ceiling) in gaps.iter().zip([100, 200, 250]) {
        assert!(*gap <= Duration::from_millis(ceiling), "{gaps:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn no_retry_starts_after_the_deadline() {
    // The upstream asks for a 1 s pause; the deadline is 500 ms after arrival.
    let mut wait1 = status(503);
    wait1
        .headers_mut()
        .insert("retry-after", "1".parse().unwrap());
    let config = RetryConfig::default()
        .attempts(5)
        .retry_after_cap(Duration::from_secs(5));
    let (svc, seen) = upstream(std::slice::from_ref(&wait1));
    let res = retried(
        config.clone().deadline(Duration::from_millis(500)),
        svc,
        request(Method::GET, ""),
    )
    .await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen.lock().unwrap().len(), 1);
    // With room for the pause, the same exchange is retried.
    let (svc, seen) = upstream(&[wait1]);
    let res = retried(
        config.deadline(Duration::from_secs(2)),
        svc,
        request(Method::GET, ""),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_budget_caps_extra_load_under_total_failure() {
    let failing: Vec<Response<String>> = (0..1000).map(|_| status(503)).collect();
    let (svc, seen) = upstream(&failing);
    let layer = RetryLayer::new(RetryConfig::default().attempts(3).budget(
        0.2,
        0,
        Duration::from_secs(10),
    ));
    for _ in 0..100 {
        let res = layer
            .layer(svc.clone())
            .oneshot(request(Method::GET, ""))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let calls = seen.lock().unwrap().len();
    // 100 requests, 20% budget: at most 20 retries, though 3 per request were allowed.
    assert!(
        (101..=120).contains(&calls),
        "{calls} upstream calls for 100 requests"
    );
}

#[tokio::test(start_paused = true)]
async fn an_upstream_with_no_healthy_endpoint_is_not_retried() {
    let (svc, seen) = upstream(&[flagged(503, ResponseFlags::NO_HEALTHY_UPSTREAM)]);
    let res = retried(RetryConfig::default(), svc, request(Method::GET, "")).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_after_as_an_http_date_beyond_the_cap_ends_the_retries() {
    let mut later = status(503);
    let when = std::time::SystemTime::now() + Duration::from_secs(3600);
    later.headers_mut().insert(
        "retry-after",
        httpdate::fmt_http_date(when).parse().unwrap(),
    );
    let (svc, seen) = upstream(&[later]);
    let res = retried(RetryConfig::default(), svc, request(Method::GET, "")).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_body_longer_than_it_declared_is_refused_not_buffered() {
    let (svc, seen) = upstream(&[]);
    let lying = Request::put("/")
        .header("content-length", "4")
        .body(Full::new(Bytes::from_static(
            b"much longer than four bytes",
        )))
        .unwrap();
    let res = retried(RetryConfig::default().max_body_bytes(8), svc, lying).await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn every_final_answer_carries_its_retry_count() {
    let (svc, _) = upstream(&[]);
    let res = retried(
        RetryConfig::default().max_body_bytes(1),
        svc,
        request(Method::PUT, "streamed, not buffered"),
    )
    .await;
    assert_eq!(res.extensions().get::<RetryCount>(), Some(&RetryCount(0)));
}
