//! The observe stack around real tower services: bounded metric labels, values after a known
//! request mix, recording at body end, cancelled requests, and access log lines (redaction,
//! escaping, sampling, exclusion).

use std::{convert::Infallible, sync::mpsc, time::Duration};

use bytes::Bytes;
use gateway_core::{Problem, RejectReason, ResponseFlags, RouteId};
use gateway_observe::{
    AccessLog, AccessLogConfig, HttpMetrics, LogFormat, LogSink, MetricsConfig, ObserveLayer,
    Observer, RequestIds,
};
use http::{HeaderName, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};

type Body = Full<Bytes>;

/// A service: `/a...` is route `a` (200, or 429 when the method is POST), anything else has no
/// route (404).
async fn app(req: Request<Body>) -> Result<Response<Body>, Infallible> {
    if !req.uri().path().starts_with("/a") {
        let mut res: Response<Body> = Problem::new(StatusCode::NOT_FOUND)
            .reason(RejectReason::NoRoute, ResponseFlags::NO_ROUTE)
            .into_response();
        res.extensions_mut().insert(());
        return Ok(res);
    }
    let mut res: Response<Body> = if req.method() == Method::POST {
        Problem::new(StatusCode::TOO_MANY_REQUESTS)
            .detail("slow down")
            .reason(RejectReason::RateLimited, ResponseFlags::RATE_LIMITED)
            .into_response()
    } else {
        Response::new(Full::new(Bytes::from_static(b"hello")))
    };
    res.extensions_mut().insert(RouteId::new("a"));
    Ok(res)
}

fn observer() -> Observer {
    Observer::new(
        RequestIds::default(),
        HttpMetrics::new(&MetricsConfig::default()),
    )
}

async fn call(o: &Observer, method: Method, path: &str, headers: &[(&str, &str)]) -> StatusCode {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = ServiceBuilder::new()
        .layer(ObserveLayer::new(o.clone()))
        .service_fn(app)
        .oneshot(req.body(Body::default()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    res.into_body().collect().await.unwrap();
    status
}

fn series(text: &str, prefix: &str) -> usize {
    text.lines().filter(|l| l.starts_with(prefix)).count()
}

fn value(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .unwrap_or_else(|| panic!("no {line_prefix} in\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_hundred_thousand_random_paths_leave_the_series_count_constant() {
    let o = observer();
    call(&o, Method::GET, "/warmup", &[]).await;
    let before = o.metrics().encode().lines().count();
    let mut svc = ServiceBuilder::new()
        .layer(ObserveLayer::new(o.clone()))
        .service_fn(app);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..100_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let req = Request::get(format!("/scan/{x:x}/{}", x % 977))
            .body(Body::default())
            .unwrap();
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        res.into_body().collect().await.unwrap();
    }
    let text = o.metrics().encode();
    assert_eq!(text.lines().count(), before, "no new series");
    assert_eq!(
        value(
            &text,
            r#"http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="404",http_route="unmatched"}"#
        ),
        100_001.0
    );
    assert!(!text.contains("/scan/"));
}

#[tokio::test]
async fn metrics_after_a_known_mix() {
    let o = observer();
    for _ in 0..3 {
        assert_eq!(call(&o, Method::GET, "/a/1", &[]).await, 200);
    }
    for _ in 0..2 {
        assert_eq!(call(&o, Method::POST, "/a/1", &[]).await, 429);
    }
    let odd = Method::from_bytes(b"PURGE").unwrap();
    call(&o, odd, "/a/1", &[]).await;
    let text = o.metrics().encode();
    let count = |m: &str, s: &str| {
        value(
            &text,
            &format!(
                r#"http_server_request_duration_seconds_count{{http_request_method="{m}",http_response_status_code="{s}",http_route="a"}}"#
            ),
        )
    };
    assert_eq!(count("GET", "200"), 3.0);
    assert_eq!(count("POST", "429"), 2.0);
    assert_eq!(count("_OTHER", "200"), 1.0);
    assert_eq!(
        value(
            &text,
            r#"gateway_rejections_total{reason="rate_limited",http_route="a"}"#
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            r#"http_server_response_body_size_bytes_sum{http_request_method="GET",http_response_status_code="200",http_route="a"}"#
        ),
        15.0,
        "3 × 5 bytes"
    );
    assert_eq!(
        value(
            &text,
            r#"http_server_active_requests{http_request_method="GET"}"#
        ),
        0.0
    );
    assert_eq!(
        series(&text, "http_server_request_duration_seconds_bucket"),
        3 * 15
    );
    assert!(text.ends_with("# EOF\n"));
}

#[tokio::test]
async fn requests_are_recorded_when_the_body_ends_and_cancelled_ones_are_not_lost() {
    let o = observer();
    let res = ServiceBuilder::new()
        .layer(ObserveLayer::new(o.clone()))
        .service_fn(app)
        .oneshot(Request::get("/a").body(Body::default()).unwrap())
        .await
        .unwrap();
    let text = o.metrics().encode();
    assert_eq!(
        value(
            &text,
            r#"http_server_active_requests{http_request_method="GET"}"#
        ),
        1.0,
        "still streaming"
    );
    assert!(!text.contains("http_server_request_duration_seconds_count"));
    res.into_body().collect().await.unwrap();
    let text = o.metrics().encode();
    assert_eq!(
        series(&text, "http_server_request_duration_seconds_count"),
        1
    );

    // A request whose future is dropped (the client went away) is counted as 499.
    let slow = ServiceBuilder::new()
        .layer(ObserveLayer::new(o.clone()))
        .service_fn(|_req: Request<Body>| async {
            std::future::pending::<Result<Response<Body>, Infallible>>().await
        });
    let fut = slow.oneshot(Request::get("/a").body(Body::default()).unwrap());
    assert!(
        tokio::time::timeout(Duration::from_millis(1), fut)
            .await
            .is_err()
    );
    let text = o.metrics().encode();
    assert_eq!(
        value(
            &text,
            r#"http_server_active_requests{http_request_method="GET"}"#
        ),
        0.0
    );
    assert!(
        text.contains(r#"http_response_status_code="499""#),
        "{text}"
    );
}

fn log(config: AccessLogConfig) -> (Observer, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    let log = AccessLog::start(AccessLogConfig {
        sink: LogSink::Channel(tx),
        ..config
    })
    .unwrap();
    (observer().with_access_log(log), rx)
}

fn next(rx: &mpsc::Receiver<String>) -> String {
    rx.recv_timeout(Duration::from_secs(5)).expect("a log line")
}

#[tokio::test]
async fn access_log_lines_are_json_redacted_and_filtered() {
    let (o, rx) = log(AccessLogConfig {
        headers: vec![
            HeaderName::from_static("authorization"),
            HeaderName::from_static("user-agent"),
            HeaderName::from_static("x-tenant-secret"),
        ],
        redact: vec![HeaderName::from_static("x-tenant-secret")],
        exclude_routes: vec![String::from("health")],
        ..AccessLogConfig::default()
    });
    call(
        &o,
        Method::GET,
        "/a/b?token=hidden",
        &[
            ("authorization", "Bearer secret-token"),
            ("user-agent", "curl/8 \"quoted\"\t"),
            ("x-tenant-secret", "s3cr3t"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ],
    )
    .await;
    let line = next(&rx);
    assert!(
        !line.contains("secret-token") && !line.contains("s3cr3t"),
        "{line}"
    );
    assert!(!line.contains("hidden"), "no query string: {line}");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["route"], "a");
    assert_eq!(v["status"], 200);
    assert_eq!(v["path"], "/a/b");
    assert_eq!(v["bytes_out"], 5);
    assert_eq!(v["completed"], true);
    assert_eq!(v["header.authorization"], "[redacted]");
    assert_eq!(v["header.user-agent"], "curl/8 \"quoted\"\t");
    assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(v["request_id"].as_str().unwrap().len(), 32);
    call(&o, Method::POST, "/a", &[]).await;
    let v: serde_json::Value = serde_json::from_str(&next(&rx)).unwrap();
    assert_eq!(v["status"], 429);
    assert_eq!(v["flags"], "RL");
    assert_eq!(v["reason"], "rate_limited");
}

#[tokio::test]
async fn sampling_keeps_every_error_and_templates_escape() {
    let (o, rx) = log(AccessLogConfig {
        sample: 0.0,
        format: LogFormat::Template(String::from("{method} {path} {status} {header.user-agent}")),
        headers: vec![HeaderName::from_static("user-agent")],
        ..AccessLogConfig::default()
    });
    for _ in 0..20 {
        call(&o, Method::GET, "/a", &[]).await;
    }
    call(
        &o,
        Method::GET,
        "/missing",
        &[("user-agent", "x\" 200 \"forged")],
    )
    .await;
    let line = next(&rx);
    assert_eq!(line, "GET /missing 404 x\\x22 200 \\x22forged");
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "successes sampled out"
    );
}

#[tokio::test]
async fn a_status_floor_and_excluded_routes_filter_lines() {
    let (o, rx) = log(AccessLogConfig {
        min_status: 400,
        exclude_routes: vec![String::from("a")],
        ..AccessLogConfig::default()
    });
    call(&o, Method::GET, "/missing", &[]).await;
    call(&o, Method::POST, "/a", &[]).await; // 429 on an excluded route
    let v: serde_json::Value = serde_json::from_str(&next(&rx)).unwrap();
    assert_eq!(v["status"], 404);
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    let (o, rx) = log(AccessLogConfig {
        min_status: 400,
        ..AccessLogConfig::default()
    });
    call(&o, Method::GET, "/a", &[]).await;
    call(&o, Method::POST, "/a", &[]).await;
    let v: serde_json::Value = serde_json::from_str(&next(&rx)).unwrap();
    assert_eq!(v["status"], 429, "the 200 was below the floor");
}
