//! The layer end to end over tower services, with paused time for exact boundaries.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use gateway_core::{AuthMethod, ClientIp, Principal, RejectReason, Rejection, RouteId};
use gateway_ratelimit::{
    Check, Clock, Decided, HeaderStyle, KeyBy, Limit, MemoryStore, Policy, Quota, Rate,
    RateLimitLayer, RateLimitReport, Store, StoreError,
};
use http::{Request, Response, StatusCode};
use tower::{Service, ServiceExt, service_fn, util::BoxCloneService};

type Svc = BoxCloneService<Request<()>, Response<String>, Infallible>;

fn service(layer: RateLimitLayer, hits: Arc<AtomicUsize>) -> Svc {
    BoxCloneService::new(
        tower::ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(move |_req: Request<()>| {
                let hits = hits.clone();
                async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Infallible>(Response::new(String::from("ok")))
                }
            })),
    )
}

fn from(ip: [u8; 4]) -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut().insert(ClientIp::direct(ip.into()));
    req
}

async fn status(svc: &mut Svc, req: Request<()>) -> Response<String> {
    svc.ready().await.unwrap().call(req).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn rate_admits_burst_then_exactly_one_per_interval() {
    let hits = Arc::new(AtomicUsize::new(0));
    let mut svc = service(RateLimitLayer::per_second(10).burst(3), hits.clone());
    for _ in 0..3 {
        assert_eq!(status(&mut svc, from([192, 0, 2, 1])).await.status(), 200);
    }
    let refused = status(&mut svc, from([192, 0, 2, 1])).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused.headers()["retry-after"],
        "1",
        "100 ms rounds up to 1 s"
    );
    assert_eq!(
        refused.extensions().get::<Rejection>().unwrap().reason,
        RejectReason::RateLimited
    );
    let body: serde_json::Value = serde_json::from_str(refused.body()).unwrap();
    assert_eq!(body["status"], 429);
    assert_eq!(body["limit"], "default");
    // Another client has its own bucket.
    assert_eq!(status(&mut svc, from([192, 0, 2, 2])).await.status(), 200);
    // 99.999 ms later: still refused; at 100 ms exactly one more.
    tokio::time::advance(Duration::from_micros(99_999)).await;
    assert_eq!(status(&mut svc, from([192, 0, 2, 1])).await.status(), 429);
    tokio::time::advance(Duration::from_micros(1)).await;
    assert_eq!(status(&mut svc, from([192, 0, 2, 1])).await.status(), 200);
    assert_eq!(status(&mut svc, from([192, 0, 2, 1])).await.status(), 429);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        5,
        "refused requests never reach the service"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rate_of_100_per_second_admits_100_per_second_over_a_minute() {
    let hits = Arc::new(AtomicUsize::new(0));
    let mut svc = service(
        RateLimitLayer::new(Limit::rate("r", "100/s".parse().unwrap()).burst(1)),
        hits.clone(),
    );
    // Offer 1000 requests per second (one per ms) for 60 s.
    for _ in 0..60_000 {
        let _ = status(&mut svc, from([192, 0, 2, 1])).await;
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    assert_eq!(hits.load(Ordering::SeqCst), 6000);
}

#[tokio::test(start_paused = true)]
async fn quota_resets_at_utc_midnight() {
    // 2026-11-26T23:59:58Z on tokio's paused clock.
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_737_598);
    let store = MemoryStore::with_clock(1000, Clock::starting_at(wall));
    let layer = RateLimitLayer::new(Limit::quota("daily", Quota::per_day(2)))
        .store(store)
        .headers(HeaderStyle::Legacy);
    let hits = Arc::new(AtomicUsize::new(0));
    let mut svc = service(layer, hits);
    let first = status(&mut svc, from([192, 0, 2, 1])).await;
    assert_eq!(first.headers()["x-ratelimit-limit"], "2");
    assert_eq!(first.headers()["x-ratelimit-remaining"], "1");
    assert_eq!(first.headers()["x-ratelimit-reset"], "2");
    assert_eq!(status(&mut svc, from([192, 0, 2, 1])).await.status(), 200);
    let refused = status(&mut svc, from([192, 0, 2, 1])).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "2");
    tokio::time::advance(Duration::from_millis(1999)).await;
    assert_eq!(status(&mut svc, from([192, 0, 2, 1])).await.status(), 429);
    tokio::time::advance(Duration::from_millis(1)).await;
    let next_day = status(&mut svc, from([192, 0, 2, 1])).await;
    assert_eq!(next_day.status(), 200);
    assert_eq!(next_day.headers()["x-ratelimit-remaining"], "1");
}

#[tokio::test(start_paused = true)]
async fn the_tightest_limit_decides_and_is_reported() {
    let layer = RateLimitLayer::new(Limit::rate("per-ip", Rate::per_second(100)))
        .limit(Limit::quota("daily", Quota::per_day(3)));
    let mut svc = service(layer, Arc::default());
    let res = status(&mut svc, from([192, 0, 2, 1])).await;
    assert_eq!(
        res.headers()["ratelimit-policy"],
        "\"per-ip\";q=100;w=1, \"daily\";q=3;w=86400"
    );
    assert!(
        res.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"daily\";r=2;t=")
    );
    let report = res.extensions().get::<RateLimitReport>().unwrap();
    assert_eq!(
        (&*report.limit, report.allowed, report.remaining),
        ("daily", true, 2)
    );
    for _ in 0..2 {
        status(&mut svc, from([192, 0, 2, 1])).await;
    }
    let refused = status(&mut svc, from([192, 0, 2, 1])).await;
    assert_eq!(refused.status(), 429);
    let body: serde_json::Value = serde_json::from_str(refused.body()).unwrap();
    assert_eq!(body["limit"], "daily");
}

#[tokio::test(start_paused = true)]
async fn cost_weighs_requests() {
    let layer = RateLimitLayer::new(Limit::quota("q", Quota::per_day(10))).cost(4);
    let mut svc = service(layer, Arc::default());
    assert_eq!(status(&mut svc, from([192, 0, 2, 1])).await.status(), 200);
    assert_eq!(status(&mut svc, from([192, 0, 2, 1])).await.status(), 200);
    let refused = status(&mut svc, from([192, 0, 2, 1])).await;
    assert_eq!(refused.status(), 429, "8 used, 4 more would exceed 10");
    // A request costing more than the whole limit can never pass, and says so.
    let mut svc = service(
        RateLimitLayer::new(Limit::quota("q", Quota::per_day(3))).cost(4),
        Arc::default(),
    );
    let refused = status(&mut svc, from([192, 0, 2, 1])).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().get("retry-after").is_none());
}

#[tokio::test(start_paused = true)]
async fn throttling_holds_requests_in_order_then_refuses_beyond_the_wait() {
    let hits = Arc::new(AtomicUsize::new(0));
    let layer = RateLimitLayer::per_second(10)
        .burst(1)
        .throttle(Duration::from_millis(250));
    let svc = service(layer, hits.clone());
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let res = status(&mut svc, from([192, 0, 2, 1])).await;
            (res.status(), start.elapsed())
        }));
        tokio::task::yield_now().await;
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(
        results,
        vec![
            (StatusCode::OK, Duration::ZERO),
            (StatusCode::OK, Duration::from_millis(100)),
            (StatusCode::OK, Duration::from_millis(200)),
            (StatusCode::TOO_MANY_REQUESTS, Duration::ZERO),
        ]
    );
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn shadow_mode_reports_but_never_refuses() {
    let hits = Arc::new(AtomicUsize::new(0));
    let mut svc = service(RateLimitLayer::per_second(1).shadow(true), hits.clone());
    let first = status(&mut svc, from([192, 0, 2, 1])).await;
    assert!(
        !first
            .extensions()
            .get::<RateLimitReport>()
            .unwrap()
            .shadow_refused
    );
    for _ in 0..3 {
        let res = status(&mut svc, from([192, 0, 2, 1])).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["ratelimit"], "\"default\";r=0;t=1");
        assert!(
            res.extensions()
                .get::<RateLimitReport>()
                .unwrap()
                .shadow_refused
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn header_styles() {
    let mut none = service(
        RateLimitLayer::per_second(1).headers(HeaderStyle::None),
        Arc::default(),
    );
    let ok = status(&mut none, from([192, 0, 2, 1])).await;
    assert!(ok.headers().is_empty());
    let refused = status(&mut none, from([192, 0, 2, 1])).await;
    assert_eq!(
        refused.headers()["retry-after"],
        "1",
        "Retry-After is always sent"
    );
    // A limit name cannot break the structured field.
    let mut ietf = service(
        RateLimitLayer::new(Limit::rate("a\"b\\c\u{e9}", Rate::per_minute(6))),
        Arc::default(),
    );
    let res = status(&mut ietf, from([192, 0, 2, 1])).await;
    assert_eq!(
        res.headers()["ratelimit-policy"],
        "\"a\\\"b\\\\c_\";q=6;w=60"
    );
}

#[tokio::test(start_paused = true)]
async fn tiers_choose_the_policy_and_count_per_consumer() {
    let tiers = [
        (String::from("gold"), Policy::rate(Rate::per_second(100), 5)),
        (String::from("free"), Policy::rate(Rate::per_second(1), 1)),
    ];
    let layer = RateLimitLayer::new(Limit::tiered(
        "tier",
        tiers,
        Some(Policy::rate(Rate::per_minute(2), 2)),
    ));
    let mut svc = service(layer, Arc::default());
    let as_consumer = |consumer: &str, tier: &str| {
        let mut req = from([192, 0, 2, 1]);
        req.extensions_mut().insert(
            Principal::new(consumer, AuthMethod::ApiKey)
                .with_consumer(consumer)
                .with_tier(tier),
        );
        req
    };
    let admitted = |svc: &mut Svc, make: &dyn Fn() -> Request<()>| {
        let mut svc = svc.clone();
        let reqs: Vec<Request<()>> = (0..10).map(|_| make()).collect();
        async move {
            let mut n = 0;
            for req in reqs {
                n += usize::from(status(&mut svc, req).await.status() == 200);
            }
            n
        }
    };
    assert_eq!(admitted(&mut svc, &|| as_consumer("acme", "gold")).await, 5);
    assert_eq!(admitted(&mut svc, &|| as_consumer("bob", "free")).await, 1);
    assert_eq!(
        admitted(&mut svc, &|| as_consumer("carol", "free")).await,
        1,
        "per consumer"
    );
    // Unknown tier and anonymous callers get the default policy (anonymous: per client IP).
    assert_eq!(
        admitted(&mut svc, &|| as_consumer("dave", "platinum")).await,
        2
    );
    assert_eq!(admitted(&mut svc, &|| from([192, 0, 2, 9])).await, 2);
}

#[tokio::test(start_paused = true)]
async fn route_key_shares_one_bucket_across_path_spellings() {
    let layer = RateLimitLayer::new(Limit::rate("route", Rate::per_minute(3)).key(KeyBy::route()));
    let mut svc = service(layer, Arc::default());
    let mut codes = Vec::new();
    for (i, path) in [
        "/api/orders",
        "/API/Orders/",
        "/api//%6frders",
        "/api/x/../orders",
    ]
    .into_iter()
    .enumerate()
    {
        let mut req = Request::get(path).body(()).unwrap();
        req.extensions_mut()
            .insert(ClientIp::direct([192, 0, 2, i as u8].into()));
        codes.push(status(&mut svc, req).await.status().as_u16());
    }
    assert_eq!(codes, [200, 200, 200, 429]);
    // With a matched route, the route name is the key.
    let mut req = Request::get("/other").body(()).unwrap();
    req.extensions_mut().insert(RouteId::new("orders"));
    assert_eq!(status(&mut svc, req).await.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn requests_without_a_key_are_not_limited_by_that_limit() {
    let layer = RateLimitLayer::new(
        Limit::rate("per-key", Rate::per_minute(1))
            .key(KeyBy::header(http::HeaderName::from_static("x-api-key"))),
    );
    let mut svc = service(layer, Arc::default());
    for _ in 0..3 {
        let res = status(&mut svc, Request::new(())).await;
        assert_eq!(res.status(), 200);
        assert!(res.headers().get("ratelimit").is_none());
    }
    let keyed = || {
        Request::builder()
            .header("x-api-key", "k")
            .body(())
            .unwrap()
    };
    assert_eq!(status(&mut svc, keyed()).await.status(), 200);
    assert_eq!(status(&mut svc, keyed()).await.status(), 429);
}

#[tokio::test(start_paused = true)]
async fn rate_policies_are_advertised_per_second_or_longer() {
    // 100/s with burst 1 is 100 per second, not 1.
    let mut svc = service(
        RateLimitLayer::new(Limit::rate("r", Rate::per_second(100)).burst(1)),
        Arc::default(),
    );
    let res = status(&mut svc, from([192, 0, 2, 1])).await;
    assert_eq!(res.headers()["ratelimit-policy"], "\"r\";q=100;w=1");
    // On a refusal `t` is the Retry-After moment.
    let mut svc = service(
        RateLimitLayer::new(Limit::rate("r", Rate::per_minute(2))),
        Arc::default(),
    );
    status(&mut svc, from([192, 0, 2, 1])).await;
    status(&mut svc, from([192, 0, 2, 1])).await;
    let refused = status(&mut svc, from([192, 0, 2, 1])).await;
    assert_eq!(refused.headers()["retry-after"], "30");
    assert_eq!(refused.headers()["ratelimit"], "\"r\";r=0;t=30");
}

#[test]
#[should_panic(expected = "duplicate rate limit name `default`")]
fn duplicate_limit_names_are_refused() {
    let _ = RateLimitLayer::per_second(1).limit(Limit::quota("default", Quota::per_day(1)));
}

#[derive(Debug)]
struct BrokenStore;

impl Store for BrokenStore {
    fn decide(&self, _checks: &[Check], _max_wait: Duration) -> Decided {
        Decided::Pending(Box::pin(async { Err(StoreError::new("down")) }))
    }
}

#[tokio::test]
async fn a_store_error_reaching_the_layer_is_a_503_problem() {
    let hits = Arc::new(AtomicUsize::new(0));
    let mut svc = service(
        RateLimitLayer::per_second(1).store(BrokenStore),
        hits.clone(),
    );
    let res = status(&mut svc, from([192, 0, 2, 1])).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert_eq!(
        res.extensions().get::<Rejection>().unwrap().reason,
        RejectReason::DependencyFailed
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn shadow_mode_forwards_when_the_store_fails() {
    let hits = Arc::new(AtomicUsize::new(0));
    let mut svc = service(
        RateLimitLayer::per_second(1)
            .store(BrokenStore)
            .shadow(true),
        hits.clone(),
    );
    assert_eq!(status(&mut svc, from([192, 0, 2, 1])).await.status(), 200);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_against_a_limit_of_100_admit_exactly_100() {
    let hits = Arc::new(AtomicUsize::new(0));
    let layer = RateLimitLayer::new(Limit::rate("r", Rate::per_hour(100)).key(KeyBy::global()));
    let svc = service(layer, hits.clone());
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let mut svc = svc.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                status(&mut svc, from([10, 0, (i / 256) as u8, i as u8]))
                    .await
                    .status()
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap() == StatusCode::OK);
    }
    assert_eq!(ok, 100);
    assert_eq!(hits.load(Ordering::SeqCst), 100);
}
