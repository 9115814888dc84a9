//! End-to-end tests of `Upstream` against real servers on 127.0.0.1.

use std::time::Duration;

use bytes::Bytes;
use gateway_core::{
    ClientIp, ConnectionInfo, PROBLEM_JSON, Rejection, ResponseFlags, TrustedProxies,
};
use gateway_lb::{HostHeader, Protocol, Upstream};
use gateway_test::{TestUpstream, full};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, Limited};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tower::ServiceExt;

fn upstream_for(addrs: &[std::net::SocketAddr]) -> gateway_lb::UpstreamBuilder {
    Upstream::builder(addrs.iter().map(|a| a.to_string().parse().unwrap()))
}

fn request(method: &str, uri: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "api.example.com")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// Sends `req` through a clone of `upstream` and collects the answer.
async fn call(
    upstream: &Upstream<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (http::response::Parts, String) {
    body_text(upstream.clone().oneshot(req).await.unwrap()).await
}

async fn body_text(res: Response<gateway_lb::ResponseBody>) -> (http::response::Parts, String) {
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn forwards_method_path_query_headers_and_body() {
    let backend = TestUpstream::echo().await;
    let upstream = upstream_for(&[backend.addr()]).build::<Full<Bytes>>();
    let mut req = request("PUT", "/orders/7?expand=items&x=%20y", "{\"qty\":3}");
    req.headers_mut()
        .insert("x-custom", "kept".parse().unwrap());
    let (parts, body) = body_text(upstream.oneshot(req).await.unwrap()).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body, "{\"qty\":3}");
    let seen = backend.last_request();
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.uri, "/orders/7?expand=items&x=%20y");
    assert_eq!(seen.headers["x-custom"], "kept");
    assert_eq!(seen.headers["host"], "api.example.com");
    assert_eq!(seen.version, Version::HTTP_11);
}

#[tokio::test]
async fn round_robin_spreads_requests_over_endpoints() {
    let a = TestUpstream::fixed("a").await;
    let b = TestUpstream::fixed("b").await;
    let upstream = upstream_for(&[a.addr(), b.addr()]).build::<Full<Bytes>>();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (_, body) = call(&upstream, request("GET", "/", "")).await;
        seen.push(body);
    }
    assert_eq!(seen, ["a", "b", "a", "b"]);
}

#[tokio::test]
async fn keeps_connections_alive_between_requests() {
    let backend = TestUpstream::fixed("ok").await;
    let upstream = upstream_for(&[backend.addr()]).build::<Full<Bytes>>();
    for _ in 0..5 {
        let (parts, _) = call(&upstream, request("GET", "/", "")).await;
        assert_eq!(parts.status, 200);
    }
    assert_eq!(backend.requests().len(), 5);
    assert_eq!(backend.connections(), 1);
}

#[tokio::test]
async fn strips_hop_by_hop_fields_in_both_directions() {
    let backend = TestUpstream::start(|_req| async {
        Response::builder()
            .header("connection", "x-upstream-hop")
            .header("x-upstream-hop", "secret")
            .header("keep-alive", "timeout=5")
            .header("x-end-to-end", "kept")
            .body(full("ok"))
            .unwrap()
    })
    .await;
    let upstream = upstream_for(&[backend.addr()]).build::<Full<Bytes>>();
    let mut req = request("GET", "/", "");
    let h = req.headers_mut();
    h.insert("connection", "x-client-hop, keep-alive".parse().unwrap());
    h.insert("x-client-hop", "secret".parse().unwrap());
    h.insert("keep-alive", "timeout=5".parse().unwrap());
    h.insert("proxy-connection", "keep-alive".parse().unwrap());
    h.insert("te", "gzip".parse().unwrap());
    h.insert("trailer", "x-checksum".parse().unwrap());
    h.insert("upgrade", "websocket".parse().unwrap());
    h.insert("proxy-authorization", "Basic Zm9vOmJhcg==".parse().unwrap());
    let (parts, _) = body_text(upstream.oneshot(req).await.unwrap()).await;
    let seen = backend.last_request().headers;
    for name in [
        "x-client-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
    ] {
        assert!(
            !seen.contains_key(name),
            "{name} reached the upstream: {seen:?}"
        );
    }
    assert!(!parts.headers.contains_key("x-upstream-hop"));
    assert!(!parts.headers.contains_key("keep-alive"));
    assert!(!parts.headers.contains_key("connection"));
    assert_eq!(parts.headers["x-end-to-end"], "kept");
}

fn with_peer(
    mut req: Request<Full<Bytes>>,
    peer: &str,
    trusted: &TrustedProxies,
) -> Request<Full<Bytes>> {
    let peer: std::net::SocketAddr = peer.parse().unwrap();
    req.extensions_mut().insert(ConnectionInfo::new(peer));
    let ip = trusted.resolve(peer.ip(), req.headers());
    req.extensions_mut().insert(ip);
    req
}

#[tokio::test]
async fn client_sent_forwarding_headers_are_replaced_from_untrusted_peers() {
    let backend = TestUpstream::echo().await;
    let upstream = upstream_for(&[backend.addr()]).build::<Full<Bytes>>();
    let mut req = request("GET", "/", "");
    req.headers_mut()
        .insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
    req.headers_mut()
        .insert("x-forwarded-proto", "https".parse().unwrap());
    req.headers_mut()
        .insert("x-forwarded-host", "evil.example".parse().unwrap());
    req.headers_mut()
        .insert("forwarded", "for=6.6.6.6".parse().unwrap());
    let req = with_peer(req, "203.0.113.5:5000", &TrustedProxies::none());
    upstream.oneshot(req).await.unwrap();
    let seen = backend.last_request().headers;
    assert_eq!(seen["x-forwarded-for"], "203.0.113.5");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "api.example.com");
    assert_eq!(
        seen["forwarded"],
        "for=203.0.113.5;proto=http;host=\"api.example.com\""
    );
    assert_eq!(seen["via"], "1.1 gateway");
}

#[tokio::test]
async fn forwarding_headers_from_trusted_proxies_are_appended_to() {
    let backend = TestUpstream::echo().await;
    let upstream = upstream_for(&[backend.addr()]).build::<Full<Bytes>>();
    let trusted: TrustedProxies = "10.0.0.0/8".parse().unwrap();
    let mut req = request("GET", "/", "");
    req.headers_mut()
        .insert("x-forwarded-for", "198.51.100.7".parse().unwrap());
    req.headers_mut()
        .insert("x-forwarded-proto", "https".parse().unwrap());
    let req = with_peer(req, "10.1.1.1:5000", &trusted);
    assert_eq!(
        req.extensions().get::<ClientIp>().unwrap().ip().to_string(),
        "198.51.100.7"
    );
    upstream.oneshot(req).await.unwrap();
    let seen = backend.last_request().headers;
    assert_eq!(seen["x-forwarded-for"], "198.51.100.7, 10.1.1.1");
    assert_eq!(seen["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn host_header_policies() {
    let backend = TestUpstream::echo().await;
    let endpoint = backend.addr().to_string();
    for (policy, want) in [
        (HostHeader::Preserve, "api.example.com".to_owned()),
        (HostHeader::Endpoint, endpoint.clone()),
        (
            HostHeader::Fixed("internal.svc".parse().unwrap()),
            "internal.svc".to_owned(),
        ),
    ] {
        let upstream = upstream_for(&[backend.addr()])
            .host(policy)
            .build::<Full<Bytes>>();
        upstream.oneshot(request("GET", "/", "")).await.unwrap();
        assert_eq!(backend.last_request().headers["host"], want.as_str());
    }
}

#[tokio::test]
async fn speaks_http2_prior_knowledge_to_the_upstream() {
    let backend = TestUpstream::echo().await;
    let upstream = upstream_for(&[backend.addr()])
        .protocol(Protocol::Http2)
        .build::<Full<Bytes>>();
    for _ in 0..3 {
        let (parts, body) = call(&upstream, request("POST", "/h2", "over h2")).await;
        assert_eq!(parts.status, 200);
        assert_eq!(body, "over h2");
    }
    assert_eq!(backend.last_request().version, Version::HTTP_2);
    assert_eq!(
        backend.connections(),
        1,
        "HTTP/2 multiplexes on one connection"
    );
}

async fn assert_problem(
    res: Response<gateway_lb::ResponseBody>,
    status: StatusCode,
    flag: ResponseFlags,
) {
    assert_eq!(res.status(), status);
    assert_eq!(res.headers()["content-type"], PROBLEM_JSON);
    let rejection = *res
        .extensions()
        .get::<Rejection>()
        .expect("rejection extension");
    assert!(rejection.flags.contains(flag), "{rejection:?}");
    let (_, body) = body_text(res).await;
    assert!(
        body.contains(&format!("\"status\":{}", status.as_u16())),
        "{body}"
    );
}

#[tokio::test]
async fn no_endpoints_is_503_no_healthy_upstream() {
    let upstream = Upstream::builder([]).build::<Full<Bytes>>();
    let res = upstream.oneshot(request("GET", "/", "")).await.unwrap();
    assert_problem(
        res,
        StatusCode::SERVICE_UNAVAILABLE,
        ResponseFlags::NO_HEALTHY_UPSTREAM,
    )
    .await;
}

#[tokio::test]
async fn refused_connection_is_502_connection_failure() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let upstream = upstream_for(&[addr]).build::<Full<Bytes>>();
    let res = upstream.oneshot(request("GET", "/", "")).await.unwrap();
    assert_problem(
        res,
        StatusCode::BAD_GATEWAY,
        ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
    )
    .await;
}

#[tokio::test]
async fn slow_upstream_is_504_timeout() {
    let backend = TestUpstream::start(|_req| std::future::pending()).await;
    let upstream = upstream_for(&[backend.addr()])
        .request_timeout(Some(Duration::from_millis(200)))
        .build::<Full<Bytes>>();
    let res = upstream.oneshot(request("GET", "/", "")).await.unwrap();
    assert_problem(
        res,
        StatusCode::GATEWAY_TIMEOUT,
        ResponseFlags::UPSTREAM_TIMEOUT,
    )
    .await;
}

#[tokio::test]
async fn oversized_limited_body_is_413() {
    let backend = TestUpstream::echo().await;
    let upstream = upstream_for(&[backend.addr()]).build::<Limited<Full<Bytes>>>();
    let req = request("POST", "/", "0123456789abcdef").map(|b| Limited::new(b, 8));
    let res = upstream.oneshot(req).await.unwrap();
    assert_problem(
        res,
        StatusCode::PAYLOAD_TOO_LARGE,
        ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
    )
    .await;
}

/// A raw server: the first connection answers garbage, later ones answer properly.
#[tokio::test]
async fn connection_with_protocol_error_is_not_reused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut accepted = 0usize;
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            accepted += 1;
            let first = accepted == 1;
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    let n = stream.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    let answer: &[u8] = if first {
                        b"NOT-HTTP garbage\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                    };
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let upstream = upstream_for(&[addr]).build::<Full<Bytes>>();
    let res = upstream
        .clone()
        .oneshot(request("GET", "/", ""))
        .await
        .unwrap();
    assert_problem(
        res,
        StatusCode::BAD_GATEWAY,
        ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
    )
    .await;
    // The poisoned connection was dropped: the next request gets a fresh one and succeeds.
    let (parts, body) = body_text(upstream.oneshot(request("GET", "/", "")).await.unwrap()).await;
    assert_eq!(parts.status, 200);
    assert_eq!(body, "ok");
    server.abort();
}

#[tokio::test]
async fn response_body_streams_before_the_upstream_finishes() {
    let (tx, body) = gateway_test::channel_body(1);
    let body = std::sync::Mutex::new(Some(body));
    let backend = TestUpstream::start(move |_req| {
        let body = body.lock().unwrap().take().expect("one request");
        async move { Response::new(body) }
    })
    .await;
    let upstream = upstream_for(&[backend.addr()]).build::<Full<Bytes>>();
    tx.send(Bytes::from_static(b"first")).await.unwrap();
    let res = upstream.oneshot(request("GET", "/", "")).await.unwrap();
    let mut body = res.into_body();
    // The first chunk arrives while the upstream is still holding the rest back.
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "first");
    tx.send(Bytes::from_static(b"second")).await.unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second");
}

#[test]
fn upstream_and_its_future_are_send_and_sync_where_it_matters() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Upstream<Full<Bytes>>>();
    send::<gateway_lb::ResponseFuture>();
    send::<gateway_lb::ResponseBody>();
}

#[tokio::test]
async fn a_connection_closed_by_the_upstream_while_idle_is_replaced_transparently() {
    // The upstream answers one request per connection and then closes it (keep-alive refused
    // after the fact): the pooled connection is dead when the next request comes, and the next
    // request must neither fail nor wait. (Whether the pool notices the close before checkout or
    // only when the unsent request comes back is up to timing; both paths end in a new
    // connection.)
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                if n > 0 {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                }
                // Close without `Connection: close`.
            });
        }
    });
    let upstream = upstream_for(&[addr]).build::<Full<Bytes>>();
    for _ in 0..3 {
        let (parts, body) = call(&upstream, request("GET", "/", "")).await;
        assert_eq!(parts.status, 200);
        assert_eq!(body, "ok");
        tokio::task::yield_now().await;
    }
    server.abort();
}

#[tokio::test]
async fn a_connection_still_uploading_after_an_early_answer_is_not_handed_out() {
    // The upstream answers a POST at once (401) without reading its body, then waits; the client
    // keeps its request body open. The connection is busy until the upload ends, so the next
    // request must get another connection instead of queueing behind the upload.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                loop {
                    let n = stream.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let answer: &[u8] = if seen.starts_with(b"POST") {
                    b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 6\r\n\r\ndenied"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                };
                let _ = stream.write_all(answer).await;
                // Keep the connection open and drain whatever comes.
                while stream.read(&mut buf).await.unwrap_or(0) > 0 {}
            });
        }
    });
    let upstream = Upstream::builder([addr.to_string().parse().unwrap()])
        .request_timeout(Some(Duration::from_secs(30)))
        .build::<gateway_test::TestBody>();
    let (tx, body) = gateway_test::channel_body(1);
    tx.send(Bytes::from_static(b"part of a long upload"))
        .await
        .unwrap();
    let post = Request::post("/upload")
        .header("host", "x")
        .header("content-length", "1000000")
        .body(body)
        .unwrap();
    let res = upstream.clone().oneshot(post).await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "denied"
    );
    let get = Request::get("/next")
        .header("host", "x")
        .body(gateway_test::full(""))
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), upstream.oneshot(get))
        .await
        .expect("the second request waited behind the unfinished upload")
        .unwrap();
    assert_eq!(res.status(), 200);
    drop(tx);
    server.abort();
}

#[tokio::test]
async fn a_stalled_response_body_is_aborted_by_the_body_timeout() {
    let (tx, body) = gateway_test::channel_body(1);
    let body = std::sync::Mutex::new(Some(body));
    let backend = TestUpstream::start(move |_req| {
        let body = body.lock().unwrap().take().expect("one request");
        async move { Response::new(body) }
    })
    .await;
    let upstream = upstream_for(&[backend.addr()])
        .body_timeout(Some(Duration::from_millis(200)))
        .build::<Full<Bytes>>();
    tx.send(Bytes::from_static(b"first")).await.unwrap();
    let res = upstream.oneshot(request("GET", "/", "")).await.unwrap();
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    // The upstream now says nothing (the sender stays open): the body ends in a timeout error
    // instead of waiting forever.
    let next = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the stalled body was not aborted");
    let err = next.expect("an error frame").unwrap_err();
    assert!(err.to_string().contains("idle timeout"), "{err}");
    drop(tx);
}

#[tokio::test]
async fn per_endpoint_breakers_take_a_failing_endpoint_out_of_rotation() {
    let bad = TestUpstream::status(500, "broken").await;
    let good = TestUpstream::fixed("good").await;
    let breaker = gateway_breaker::CircuitBreakerConfig::default()
        .consecutive_failures(2)
        .open_for(Duration::from_secs(3600));
    let upstream = upstream_for(&[bad.addr(), good.addr()])
        .endpoint_breakers(&breaker, gateway_core::DefaultClassifier::new())
        .build::<Full<Bytes>>();
    for _ in 0..10 {
        call(&upstream, request("GET", "/", "")).await;
    }
    assert_eq!(
        bad.requests().len(),
        2,
        "two failures opened the bad endpoint's breaker"
    );
    assert_eq!(good.requests().len(), 8);
    let states: Vec<_> = upstream
        .endpoint_breakers()
        .unwrap()
        .iter()
        .map(|b| b.state())
        .collect();
    assert_eq!(
        states,
        [
            gateway_breaker::BreakerState::Open,
            gateway_breaker::BreakerState::Closed
        ]
    );

    // With every endpoint's breaker open, the answer is 503 UH at once.
    upstream.endpoint_breakers().unwrap()[1].force_open();
    let res = upstream
        .clone()
        .oneshot(request("GET", "/", ""))
        .await
        .unwrap();
    assert_problem(
        res,
        StatusCode::SERVICE_UNAVAILABLE,
        ResponseFlags::NO_HEALTHY_UPSTREAM,
    )
    .await;
    assert_eq!(good.requests().len(), 8);
}

#[tokio::test]
async fn a_client_too_slow_to_send_its_body_gets_408_and_no_breaker_blame() {
    // The upstream reads the whole body before answering; the client sends one chunk and stalls.
    let backend = TestUpstream::start(|req: Request<hyper::body::Incoming>| async move {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Response::new(full(body))
    })
    .await;
    let breaker = gateway_breaker::CircuitBreakerConfig::default().consecutive_failures(1);
    let upstream = upstream_for(&[backend.addr()])
        .request_timeout(Some(Duration::from_millis(200)))
        .endpoint_breakers(&breaker, gateway_core::DefaultClassifier::new())
        .build::<gateway_test::TestBody>();
    let (tx, body) = gateway_test::channel_body(1);
    tx.send(Bytes::from_static(b"part")).await.unwrap();
    let req = Request::post("/").header("host", "x").body(body).unwrap();
    let res = upstream.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(
        upstream.endpoint_breakers().unwrap()[0].state(),
        gateway_breaker::BreakerState::Closed,
        "a slow client is not the upstream's failure"
    );
    drop(tx);

    // A slow upstream is: 504, and the breaker records it.
    let slow = TestUpstream::start(|_req| std::future::pending()).await;
    let upstream = upstream_for(&[slow.addr()])
        .request_timeout(Some(Duration::from_millis(200)))
        .endpoint_breakers(&breaker, gateway_core::DefaultClassifier::new())
        .build::<Full<Bytes>>();
    let res = upstream
        .clone()
        .oneshot(request("GET", "/", ""))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        upstream.endpoint_breakers().unwrap()[0].state(),
        gateway_breaker::BreakerState::Open
    );
}
