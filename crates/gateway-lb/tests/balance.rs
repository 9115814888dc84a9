//! Balancing, health checks and outlier detection with real upstreams on 127.0.0.1 that fail,
//! stop and come back.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use bytes::Bytes;
use gateway_core::{Rejection, ResponseFlags};
use gateway_lb::{
    Upstream,
    balance::{Balance, HashOn, SeqRng},
    health::{CheckKind, HealthCheck, OutlierDetection},
};
use gateway_test::TestUpstream;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;

fn builder(addrs: &[std::net::SocketAddr]) -> gateway_lb::UpstreamBuilder {
    Upstream::builder(addrs.iter().map(|a| a.to_string().parse().unwrap()))
        .rng(Arc::new(SeqRng::new(9)))
}

async fn get(upstream: &Upstream<Full<Bytes>>, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let mut req = Request::get("/x").header("host", "api");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = upstream
        .clone()
        .oneshot(req.body(Full::default()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Waits for the balancer to reach a state that background checks produce (bounded).
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for: {what}");
}

fn fast_http_check() -> HealthCheck {
    HealthCheck {
        kind: CheckKind::Http {
            path: "/healthz".into(),
            expect: vec![200..=299],
        },
        interval: Duration::from_millis(20),
        timeout: Duration::from_millis(500),
        healthy_threshold: 2,
        unhealthy_threshold: 2,
        jitter: 0.0,
    }
}

#[tokio::test]
async fn active_checks_take_a_failing_endpoint_out_and_bring_it_back() {
    let good = TestUpstream::fixed("good").await;
    let (flaky, status) = TestUpstream::switchable(200).await;
    let upstream = builder(&[good.addr(), flaky.addr()])
        .health_check(Some(fast_http_check()))
        .build::<Full<Bytes>>();
    let checks = upstream.spawn_health_checks().expect("checks configured");
    let balancer = upstream.balancer().clone();

    status.store(503, Ordering::SeqCst);
    until("the flaky endpoint fails its checks", || {
        !balancer.status()[1].healthy
    })
    .await;
    for _ in 0..10 {
        assert_eq!(get(&upstream, &[]).await.1, "good");
    }
    let checked = flaky
        .requests()
        .iter()
        .all(|r| r.uri == "/healthz" && r.headers["user-agent"] == "gateway-health-check");
    assert!(checked, "only health checks reached the unhealthy endpoint");

    status.store(200, Ordering::SeqCst);
    until("the flaky endpoint passes again", || {
        balancer.status()[1].healthy
    })
    .await;
    let mut bodies = Vec::new();
    for _ in 0..4 {
        bodies.push(get(&upstream, &[]).await.1);
    }
    assert!(
        bodies.iter().any(|b| b != "good"),
        "back in rotation: {bodies:?}"
    );
    drop(checks);
}

#[tokio::test]
async fn with_every_endpoint_down_and_no_panic_mode_the_answer_is_an_immediate_503() {
    // A port nothing listens on: TCP checks fail.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let upstream = builder(&[closed])
        .panic_threshold(0.0)
        .health_check(Some(HealthCheck {
            kind: CheckKind::Tcp,
            unhealthy_threshold: 1,
            ..fast_http_check()
        }))
        .build::<Full<Bytes>>();
    let _checks = upstream.spawn_health_checks();
    let balancer = upstream.balancer().clone();
    until("the endpoint is unhealthy", || {
        !balancer.status()[0].available
    })
    .await;
    let res = upstream
        .clone()
        .oneshot(Request::get("/").body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let flags = res.extensions().get::<Rejection>().unwrap().flags;
    assert!(flags.contains(ResponseFlags::NO_HEALTHY_UPSTREAM));
}

#[tokio::test]
async fn consecutive_errors_and_a_stopped_endpoint_are_ejected() {
    let good = TestUpstream::fixed("good").await;
    let (bad, status) = TestUpstream::switchable(500).await;
    let stopped = TestUpstream::fixed("gone").await;
    let stopped_addr = stopped.addr();
    drop(stopped);
    let upstream = builder(&[good.addr(), bad.addr(), stopped_addr])
        .panic_threshold(0.0)
        .outlier_detection(Some(OutlierDetection {
            consecutive_5xx: Some(2),
            consecutive_gateway_errors: Some(2),
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        }))
        .build::<Full<Bytes>>();
    // Round robin: each endpoint gets every third request until it is out.
    for _ in 0..6 {
        get(&upstream, &[]).await;
    }
    let status_now = upstream.balancer().status();
    assert!(status_now[1].ejected_for.is_some(), "two 500s in a row");
    assert!(
        status_now[2].ejected_for.is_some(),
        "two connect failures in a row"
    );
    assert_eq!(status_now[1].ejections, 1);
    let bad_seen = bad.requests().len();
    for _ in 0..10 {
        assert_eq!(get(&upstream, &[]).await.1, "good");
    }
    assert_eq!(
        bad.requests().len(),
        bad_seen,
        "an ejected endpoint gets nothing"
    );
    status.store(200, Ordering::SeqCst);
}

#[tokio::test]
async fn a_rate_limited_endpoint_is_backed_off_for_its_retry_after() {
    let good = TestUpstream::fixed("good").await;
    let limited = TestUpstream::start(|_req: Request<hyper::body::Incoming>| async {
        let mut res = http::Response::new(gateway_test::full("slow down"));
        *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        res.headers_mut()
            .insert("retry-after", http::HeaderValue::from_static("30"));
        res
    })
    .await;
    let upstream = builder(&[limited.addr(), good.addr()])
        .balance(Balance::PeakEwma)
        .build::<Full<Bytes>>();
    while limited.requests().is_empty() {
        get(&upstream, &[]).await;
    }
    // The 429 came fast, but the endpoint is out for 30s rather than favoured.
    for _ in 0..20 {
        assert_eq!(get(&upstream, &[]).await.1, "good");
    }
    assert_eq!(limited.requests().len(), 1);
    let backing_off = upstream.balancer().status()[0].backing_off_for.unwrap();
    assert!(backing_off > Duration::from_secs(25), "{backing_off:?}");
}

#[tokio::test]
async fn hashing_on_a_header_keeps_each_user_on_one_endpoint() {
    let a = TestUpstream::fixed("a").await;
    let b = TestUpstream::fixed("b").await;
    let c = TestUpstream::fixed("c").await;
    let upstream = builder(&[a.addr(), b.addr(), c.addr()])
        .balance(Balance::Hash(HashOn::Header(
            http::HeaderName::from_static("x-user"),
        )))
        .build::<Full<Bytes>>();
    let mut seen = std::collections::HashSet::new();
    for user in 0..30 {
        let user = user.to_string();
        let first = get(&upstream, &[("x-user", &user)]).await.1;
        for _ in 0..3 {
            assert_eq!(get(&upstream, &[("x-user", &user)]).await.1, first);
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 3, "users spread over every endpoint");
}

#[tokio::test]
async fn weights_shape_the_share_of_requests() {
    let heavy = TestUpstream::fixed("heavy").await;
    let light = TestUpstream::fixed("light").await;
    let b = builder(&[heavy.addr(), light.addr()])
        .balance(Balance::WeightedRoundRobin)
        .weights(vec![3, 1]);
    // Two workers' upstreams, built from clones of one builder: one shared schedule and state.
    let (one, two) = (b.clone().build::<Full<Bytes>>(), b.build::<Full<Bytes>>());
    for i in 0..40 {
        get(if i % 2 == 0 { &one } else { &two }, &[]).await;
    }
    assert_eq!((heavy.requests().len(), light.requests().len()), (30, 10));
    assert!(Arc::ptr_eq(one.balancer(), two.balancer()));
}

#[tokio::test]
async fn a_slowed_endpoint_loses_traffic_to_a_fast_one_under_peak_ewma() {
    let fast = TestUpstream::fixed("fast").await;
    // A real upstream that takes 40 ms to answer (its slowness, not a timing assertion here).
    let slow = TestUpstream::start(|_req: http::Request<hyper::body::Incoming>| async {
        tokio::time::sleep(Duration::from_millis(40)).await;
        http::Response::new(gateway_test::full("slow"))
    })
    .await;
    let upstream = builder(&[slow.addr(), fast.addr()])
        .balance(Balance::PeakEwma)
        .build::<Full<Bytes>>();
    for _ in 0..40 {
        assert_eq!(get(&upstream, &[]).await.0, StatusCode::OK);
    }
    // Once each has been measured, every pick compares the two latencies.
    assert!(
        slow.requests().len() <= 3,
        "slow {} / fast {}",
        slow.requests().len(),
        fast.requests().len()
    );
    let status = upstream.balancer().status();
    assert!(status[0].latency > status[1].latency, "{status:?}");
}

#[tokio::test]
async fn a_sticky_cookie_pins_a_client_until_its_endpoint_goes_away() {
    let a = TestUpstream::fixed("a").await;
    let (b, status) = TestUpstream::switchable(200).await;
    let upstream = builder(&[a.addr(), b.addr()])
        .panic_threshold(0.0)
        .outlier_detection(Some(OutlierDetection {
            consecutive_5xx: Some(1),
            max_ejection_percent: 50,
            ..OutlierDetection::default()
        }))
        .sticky_cookie(Some(gateway_lb::balance::StickyCookie {
            name: "gw".into(),
            max_age: Some(Duration::from_secs(3600)),
        }))
        .build::<Full<Bytes>>();
    let call = |cookie: Option<String>| {
        let upstream = upstream.clone();
        async move {
            let mut req = Request::get("/x").header("host", "api");
            if let Some(c) = cookie {
                req = req.header("cookie", format!("theme=dark; gw={c}"));
            }
            let res = upstream
                .oneshot(req.body(Full::default()).unwrap())
                .await
                .unwrap();
            let set = res
                .headers()
                .get("set-cookie")
                .map(|v| v.to_str().unwrap().to_owned());
            (res.status(), set)
        }
    };
    // Round robin sends the first request to `a`; the answer pins the client there.
    let (_, set) = call(None).await;
    let set = set.expect("a first answer sets the cookie");
    assert!(set.starts_with("gw=") && set.contains("Max-Age=3600") && set.contains("HttpOnly"));
    let id = set["gw=".len()..set.find(';').unwrap()].to_owned();
    assert!(
        !id.contains("127.0.0.1"),
        "the id does not reveal the address"
    );
    for _ in 0..6 {
        let (_, again) = call(Some(id.clone())).await;
        assert_eq!(again, None, "already pinned: no new cookie");
    }
    assert_eq!((a.requests().len(), b.requests().len()), (7, 0));
    // Pin another client to `b`, then `b` fails and is ejected: that client moves, with a new
    // cookie, and stays on `a`.
    let (_, to_b) = call(None).await;
    let b_id = to_b.unwrap()["gw=".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(b.requests().len(), 1);
    status.store(500, Ordering::SeqCst);
    call(Some(b_id.clone())).await;
    let (status_now, moved) = call(Some(b_id.clone())).await;
    assert_eq!(status_now, StatusCode::OK);
    let moved = moved.expect("re-pinned");
    assert!(moved.contains(&id), "{moved}");
    // An unknown or forged id is just a new client.
    let (_, fresh) = call(Some("not-an-endpoint".into())).await;
    assert!(fresh.is_some());
}
