//! End-to-end tests: a real upstream on 127.0.0.1, the real gateway, a real client.

mod support;

use std::time::Duration;

use bytes::Bytes;
use gateway_test::{TestUpstream, client, full, get, h2_client, raw_exchange, send};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use support::{addr, simple, start};

fn req(method: &str, url: String, body: &'static str) -> Request<gateway_test::TestBody> {
    Request::builder()
        .method(method)
        .uri(url)
        .body(full(body))
        .unwrap()
}

#[tokio::test]
async fn proxies_methods_headers_and_bodies() {
    let up = TestUpstream::echo().await;
    let gw = start(&simple(""), up.addr());
    let c = client();
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let mut r = req(
            method,
            format!("http://{}/items/1?q=a%20b", addr(&gw)),
            "payload",
        );
        r.headers_mut().insert("x-custom", "v".parse().unwrap());
        let res = send(&c, r).await;
        assert_eq!(res.status, StatusCode::OK, "{method}");
        assert_eq!(res.headers["x-echo-method"], method);
        assert_eq!(res.headers["x-echo-uri"], "/items/1?q=a%20b");
        assert_eq!(res.text(), "payload");
        let seen = up.last_request();
        assert_eq!(seen.headers["x-custom"], "v");
        assert_eq!(seen.headers["host"], addr(&gw).to_string());
    }
    // HEAD has no body in the answer.
    let res = send(&c, req("HEAD", format!("http://{}/", addr(&gw)), "")).await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res.body.is_empty());
}

#[tokio::test]
async fn serves_http2_prior_knowledge_clients() {
    let up = TestUpstream::echo().await;
    let gw = start(&simple(""), up.addr());
    let res = send(
        &h2_client(),
        req("POST", format!("http://{}/h2", addr(&gw)), "hi"),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.version, Version::HTTP_2);
    assert_eq!(res.text(), "hi");
    let seen = up.last_request();
    assert_eq!(
        seen.version,
        Version::HTTP_11,
        "upstream protocol is configured separately"
    );
    assert_eq!(seen.headers["via"], "2 gateway");
}

const MIB: usize = 1024 * 1024;

#[tokio::test]
async fn streams_a_50_mib_request_body_without_buffering_it() {
    let (first_tx, mut first_rx) = tokio::sync::mpsc::channel::<()>(1);
    let up = TestUpstream::start(move |req| {
        let first_tx = first_tx.clone();
        async move {
            let mut body = req.into_body();
            let mut total = 0usize;
            while let Some(frame) = body.frame().await {
                let frame = frame.expect("body frame");
                if let Some(data) = frame.data_ref() {
                    if total == 0 && !data.is_empty() {
                        let _ = first_tx.send(()).await;
                    }
                    total += data.len();
                }
            }
            Response::new(full(total.to_string()))
        }
    })
    .await;
    let gw = start(&simple("limits:\n  max_body_bytes: 64MiB\n"), up.addr());
    let (tx, body) = gateway_test::channel_body(4);
    let request = Request::post(format!("http://{}/upload", addr(&gw)))
        .body(body)
        .unwrap();
    let c = client();
    let pending = tokio::spawn(async move { send(&c, request).await });
    let chunk = Bytes::from(vec![b'x'; MIB]);
    tx.send(chunk.clone()).await.unwrap();
    // The upstream sees the first megabyte while 49 more are still to be written by the client.
    tokio::time::timeout(Duration::from_secs(10), first_rx.recv())
        .await
        .expect("upstream received the first chunk before the body was complete");
    for _ in 1..50 {
        tx.send(chunk.clone()).await.unwrap();
    }
    drop(tx);
    let res = pending.await.unwrap();
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.text(), (50 * MIB).to_string());
}

#[tokio::test]
async fn streams_a_50_mib_response_body_without_buffering_it() {
    let (tx, body) = gateway_test::channel_body(4);
    let body = std::sync::Mutex::new(Some(body));
    let up = TestUpstream::start(move |_req| {
        let body = body.lock().unwrap().take().expect("one request");
        async move { Response::new(body) }
    })
    .await;
    let gw = start(&simple(""), up.addr());
    let chunk = Bytes::from(vec![b'y'; MIB]);
    tx.send(chunk.clone()).await.unwrap();
    let res = client()
        .request(req("GET", format!("http://{}/download", addr(&gw)), ""))
        .await
        .unwrap();
    let mut body = res.into_body();
    let mut received = body
        .frame()
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap()
        .len();
    assert!(
        received > 0,
        "the client has data while the upstream still holds 49 MiB back"
    );
    let feeder = tokio::spawn(async move {
        for _ in 1..50 {
            tx.send(chunk.clone()).await.unwrap();
        }
    });
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().into_data().map_or(0, |d| d.len());
    }
    feeder.await.unwrap();
    assert_eq!(received, 50 * MIB);
}

#[tokio::test]
async fn strips_hop_by_hop_and_internal_headers_at_ingress() {
    let up = TestUpstream::echo().await;
    let gw = start(&simple(""), up.addr());
    let raw = "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close, x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=1\r\nTE: gzip\r\nUpgrade: h2c\r\nProxy-Authorization: Basic eDp5\r\nX-Gateway-Consumer: admin\r\nX-GATEWAY-ROLE: root\r\nX-Kept: yes\r\n\r\n";
    let out = raw_exchange(addr(&gw), raw.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let seen = up.last_request().headers;
    for name in [
        "x-hop",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "x-gateway-consumer",
        "x-gateway-role",
    ] {
        assert!(!seen.contains_key(name), "{name} reached the upstream");
    }
    assert_eq!(seen["x-kept"], "yes");
}

#[tokio::test]
async fn forwarded_headers_without_trusted_proxies_are_replaced() {
    let up = TestUpstream::echo().await;
    let gw = start(&simple(""), up.addr());
    let mut r = req("GET", format!("http://{}/", addr(&gw)), "");
    r.headers_mut()
        .insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
    r.headers_mut()
        .insert("x-forwarded-proto", "https".parse().unwrap());
    r.headers_mut()
        .insert("forwarded", "for=203.0.113.9".parse().unwrap());
    send(&client(), r).await;
    let seen = up.last_request().headers;
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert!(
        seen["forwarded"]
            .to_str()
            .unwrap()
            .starts_with("for=127.0.0.1;proto=http")
    );
}

#[tokio::test]
async fn forwarded_headers_from_a_trusted_proxy_are_kept_and_appended_to() {
    let up = TestUpstream::echo().await;
    let gw = start(&simple("trusted_proxies: [ 127.0.0.1 ]\n"), up.addr());
    let mut r = req("GET", format!("http://{}/", addr(&gw)), "");
    r.headers_mut().insert(
        "x-forwarded-for",
        "198.51.100.2, 203.0.113.9".parse().unwrap(),
    );
    r.headers_mut()
        .insert("x-forwarded-proto", "https".parse().unwrap());
    send(&client(), r).await;
    let seen = up.last_request().headers;
    assert_eq!(
        seen["x-forwarded-for"],
        "198.51.100.2, 203.0.113.9, 127.0.0.1"
    );
    assert_eq!(seen["x-forwarded-proto"], "https");
}

const ROUTES: &str = "listeners:\n  - bind: 127.0.0.1:0\nworkers: 1\nupstreams:\n  up:\n    endpoints: [\"{UPSTREAM}\"]\nroutes:
  - name: catch-all
    match: { path_prefix: / }
    upstream: up
  - name: api-prefix
    match: { path_prefix: /api }
    upstream: up
    strip_prefix: true
  - name: user-template
    match: { path_template: \"/api/users/{id}\" }
    upstream: up
    rewrite: \"/v1/users/{id}/profile\"
  - name: user-me
    match: { path: /api/users/me }
    upstream: up
  - name: post-only
    match: { path_prefix: /api/orders, methods: [POST] }
    upstream: up
    rewrite: /orders-writer
  - name: canary
    match: { path_prefix: /api/orders, headers: [ { name: x-canary, value: \"1\" } ] }
    upstream: up
  - name: v2-query
    match: { path_prefix: /api/orders, query: [ { name: v, value: \"2\" } ] }
    upstream: up
  - name: wildcard-host
    match: { host: \"*.example.com\", path_prefix: / }
    upstream: up
    rewrite: /wild
  - name: exact-host
    match: { host: api.example.com, path_prefix: / }
    upstream: up
    rewrite: /exact
";

#[tokio::test]
async fn routing_precedence_and_rewrites() {
    let up = TestUpstream::echo().await;
    let gw = start(ROUTES, up.addr());
    let c = client();
    let base = format!("http://{}", addr(&gw));
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        ("GET", "/anything", &[], "/anything"),
        ("GET", "/api/things", &[], "/things"),
        ("GET", "/api", &[], "/"),
        ("GET", "/api/users/42", &[], "/v1/users/42/profile"),
        ("GET", "/api/users/me", &[], "/api/users/me"),
        ("POST", "/api/orders/1", &[], "/orders-writer/1"),
        (
            "GET",
            "/api/orders/1",
            &[("x-canary", "1")],
            "/api/orders/1",
        ),
        ("GET", "/api/orders/1?v=2", &[], "/api/orders/1?v=2"),
        ("GET", "/api/orders/1", &[], "/orders/1"),
        (
            "GET",
            "/api/users/me",
            &[("host", "shop.example.com")],
            "/wild/api/users/me",
        ),
        (
            "GET",
            "/api/x",
            &[("host", "API.example.com:80")],
            "/exact/api/x",
        ),
        (
            "GET",
            "/api/x",
            &[("host", "a.api.example.com")],
            "/wild/api/x",
        ),
    ];
    for (method, path, headers, want_upstream_uri) in cases {
        let mut r = req(method, format!("{base}{path}"), "");
        for (k, v) in *headers {
            r.headers_mut().insert(*k, v.parse().unwrap());
        }
        let res = send(&c, r).await;
        assert_eq!(res.status, StatusCode::OK, "{method} {path}");
        assert_eq!(
            res.headers["x-echo-uri"], *want_upstream_uri,
            "{method} {path} {headers:?}"
        );
    }
    // Without a host route, `api-prefix` strips the prefix.
    let mut r = req("GET", format!("{base}/api/x"), "");
    r.headers_mut()
        .insert("host", "other.test".parse().unwrap());
    assert_eq!(send(&c, r).await.headers["x-echo-uri"], "/x");
}

#[tokio::test]
async fn no_route_is_404_problem_json() {
    let up = TestUpstream::echo().await;
    let yaml = "listeners:\n  - bind: 127.0.0.1:0\nworkers: 1\nupstreams:\n  up:\n    endpoints: [\"{UPSTREAM}\"]\nroutes:\n  - name: only\n    match: { path: /only, methods: [GET] }\n    upstream: up\n";
    let gw = start(yaml, up.addr());
    for path in ["/other", "/only/", "/healthz", "/routes"] {
        let res = get(addr(&gw), path).await;
        assert_eq!(res.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(res.headers["content-type"], "application/problem+json");
        assert!(res.text().contains("\"status\":404"), "{}", res.text());
    }
    let res = send(
        &client(),
        req("POST", format!("http://{}/only", addr(&gw)), ""),
    )
    .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn path_normalization_table() {
    let up = TestUpstream::echo().await;
    let gw = start(&simple(""), up.addr());
    let forwarded = [
        ("/a/../b", "/b"),
        ("//x", "/x"),
        ("/%2e%2e/etc/passwd", "/etc/passwd"),
        ("/a/%2E%2E/b", "/b"),
        ("/%61pi", "/api"),
        ("/a/./b/", "/a/b/"),
        ("/caf%c3%a9?x=%2F", "/caf%C3%A9?x=%2F"),
    ];
    for (sent, want) in forwarded {
        let out = raw_exchange(
            addr(&gw),
            format!("GET {sent} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 200"), "{sent}: {out}");
        assert_eq!(up.last_request().uri, want, "{sent}");
    }
    let before = up.requests().len();
    for sent in [
        "/a%2Fb",
        "/a%2fb",
        "/a%5Cb",
        "/a\\b",
        "/a%00b",
        "/a;x",
        "/admin;jsessionid=1/x",
        "/a%ff",
        "/a%zz",
    ] {
        let out = raw_exchange(
            addr(&gw),
            format!("GET {sent} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 400"), "{sent}: {out}");
        if out.contains("content-type: application/problem+json") {
            assert!(out.contains("\"status\":400"), "{sent}: {out}");
        }
    }
    assert_eq!(
        up.requests().len(),
        before,
        "rejected paths never reach the upstream"
    );
}

#[tokio::test]
async fn header_and_uri_limits_answer_431_and_414() {
    let up = TestUpstream::echo().await;
    let gw = start(
        &simple("limits:\n  max_headers: 10\n  max_header_bytes: 2KiB\n  max_uri_bytes: 256\n"),
        up.addr(),
    );
    let mut many = String::from("GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    for i in 0..12 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let out = raw_exchange(addr(&gw), many.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert!(out.contains("too many header fields"), "{out}");

    let big = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nx-big: {}\r\n\r\n",
        "v".repeat(3000)
    );
    let out = raw_exchange(addr(&gw), big.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");

    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        "a".repeat(300)
    );
    let out = raw_exchange(addr(&gw), long.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 414"), "{out}");
    assert!(out.contains("application/problem+json"), "{out}");

    // Far beyond the configured limits, hyper's own buffer limit answers without a body.
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nx-huge: {}\r\n\r\n",
        "v".repeat(200_000)
    );
    let out = raw_exchange(addr(&gw), huge.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn body_limit_answers_413_for_declared_and_streamed_bodies() {
    let up = TestUpstream::echo().await;
    let gw = start(&simple("limits:\n  max_body_bytes: 1KiB\n"), up.addr());
    let declared = format!(
        "POST / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 5000\r\n\r\n{}",
        "x".repeat(5000)
    );
    let out = raw_exchange(addr(&gw), declared.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(
        up.requests().is_empty(),
        "a declared oversize body is refused before the upstream"
    );

    let chunk = "x".repeat(600);
    let chunked = format!(
        "POST / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let out = raw_exchange(addr(&gw), chunked.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");

    let ok = format!(
        "POST / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 1024\r\n\r\n{}",
        "x".repeat(1024)
    );
    let out = raw_exchange(addr(&gw), ok.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[tokio::test]
async fn slowloris_headers_are_cut_off_by_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = TestUpstream::echo().await;
    let gw = start(
        &simple("limits:\n  header_read_timeout: 300ms\n"),
        up.addr(),
    );
    let mut s = tokio::net::TcpStream::connect(addr(&gw)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .await
        .unwrap();
    let mut out = Vec::new();
    // The gateway closes the connection; without the timeout this read would never end.
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "connection was not closed");
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn idle_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = TestUpstream::echo().await;
    let gw = start(
        &simple("limits:\n  idle_timeout: 300ms\n  header_read_timeout: 30s\n"),
        up.addr(),
    );
    // An HTTP/2 connection: the preface and a SETTINGS frame, then silence.
    let mut s = tokio::net::TcpStream::connect(addr(&gw)).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "idle HTTP/2 connection was not closed");
    // hyper answered with SETTINGS and, on the graceful close, a GOAWAY frame (type 0x7).
    assert!(out.windows(4).any(|w| w[3] == 0x07), "no GOAWAY in {out:?}");

    // An HTTP/1.1 keep-alive connection after one request, with the header timeout far away.
    let mut s = tokio::net::TcpStream::connect(addr(&gw)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "idle HTTP/1.1 connection was not closed");
    assert!(out.starts_with(b"HTTP/1.1 200"));
}

#[tokio::test]
async fn max_connections_closes_connections_beyond_the_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = TestUpstream::echo().await;
    // One worker accepts in kernel order, so the third connection is the one over the limit.
    let gw = start(
        &simple("limits:\n  max_connections: 2\n").replace("workers: 2", "workers: 1"),
        up.addr(),
    );
    let mut a = tokio::net::TcpStream::connect(addr(&gw)).await.unwrap();
    let _b = tokio::net::TcpStream::connect(addr(&gw)).await.unwrap();
    let mut c = tokio::net::TcpStream::connect(addr(&gw)).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
        .await
        .expect("closed at once");
    assert_eq!(
        n.unwrap_or(0),
        0,
        "the third connection is closed without a response"
    );
    // The first connection within the limit is served.
    a.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let n = a.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}

#[tokio::test]
async fn upstream_failures_are_502_and_504_with_flags() {
    let slow = TestUpstream::start(|_req| std::future::pending()).await;
    let gw = start(
        &simple("").replace("request: 2s", "request: 300ms"),
        slow.addr(),
    );
    let res = get(addr(&gw), "/").await;
    assert_eq!(res.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        res.text().contains("did not answer in time"),
        "{}",
        res.text()
    );

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = listener.local_addr().unwrap();
    drop(listener);
    let gw = start(&simple(""), dead);
    let res = get(addr(&gw), "/").await;
    assert_eq!(res.status, StatusCode::BAD_GATEWAY);
    assert_eq!(res.headers["content-type"], "application/problem+json");
}

#[tokio::test]
async fn graceful_shutdown_drains_in_flight_requests() {
    let (up, mut gate) = TestUpstream::gated().await;
    let gw = start(&simple("shutdown:\n  drain_timeout: 20s\n"), up.addr());
    let a = addr(&gw);
    let admin = gw.admin_addr().unwrap();
    assert_eq!(get(admin, "/readyz").await.status, StatusCode::OK);
    let in_flight = tokio::spawn(async move { get(a, "/slow").await });
    gate.arrived().await;

    gw.shutdown();
    // New connections are refused once the listeners close.
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(a).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "listener still accepting after shutdown");
    gate.open();
    let res = in_flight.await.unwrap();
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.text(), "done");
    gw.shutdown_and_wait().await;
}

#[tokio::test]
async fn admin_listener_serves_health_readiness_and_routes() {
    let up = TestUpstream::echo().await;
    let gw = start(
        ROUTES
            .replace("workers: 1\n", "workers: 1\nadmin:\n  bind: 127.0.0.1:0\n")
            .as_str(),
        up.addr(),
    );
    let admin = gw.admin_addr().unwrap();
    let health = get(admin, "/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(get(admin, "/readyz").await.status, StatusCode::OK);
    let routes: serde_json::Value =
        serde_json::from_slice(&get(admin, "/routes").await.body).unwrap();
    let names: Vec<&str> = routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names[0], "exact-host");
    assert_eq!(names[1], "wildcard-host");
    assert_eq!(*names.last().unwrap(), "catch-all");
    assert_eq!(routes[1]["host"], "*.example.com");
    let last = &routes.as_array().unwrap().last().unwrap()["stages"];
    assert_eq!(
        last.as_array().unwrap().last().unwrap()["stage"],
        "upstream"
    );
    assert_eq!(get(admin, "/nope").await.status, StatusCode::NOT_FOUND);
    // The public listener never serves admin endpoints: they are just paths to the upstream.
    let res = get(addr(&gw), "/routes").await;
    assert_eq!(res.headers["x-echo-uri"], "/routes");
}

#[test]
fn config_errors_name_file_line_and_field() {
    let dir = std::env::temp_dir().join(format!("gw-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    std::fs::write(&file, "listeners:\n  - bind: 127.0.0.1:0\nupstreams:\n  a:\n    endpoints: [\"127.0.0.1:1\"]\nroutes:\n  - name: r\n    upstream: missing\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--check")
        .arg(&file)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("bad.yaml:8:15: routes[0].upstream: unknown upstream `missing` (defined: a)"),
        "{stderr}"
    );

    std::fs::write(
        &file,
        "listeners:\n  - bind: 127.0.0.1:0\n    proxy_protocol: true\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--check")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("bad.yaml:3:5: listeners[0].proxy_protocol: unknown field `proxy_protocol`"),
        "{stderr}"
    );

    std::fs::write(&file, gateway::DEMO_CONFIG).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--check")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn the_routing_host_is_the_forwarded_host() {
    let up = TestUpstream::echo().await;
    let yaml = "listeners:\n  - bind: 127.0.0.1:0\nworkers: 1\nupstreams:\n  up:\n    endpoints: [\"{UPSTREAM}\"]\nroutes:\n  - name: public\n    match: { host: public.example }\n    upstream: up\n    rewrite: /public\n  - name: admin\n    match: { host: admin.example }\n    upstream: up\n    rewrite: /admin\n";
    let gw = start(yaml, up.addr());
    // Absolute-form: the target's authority decides, and replaces Host on the way upstream.
    let out = raw_exchange(
        addr(&gw),
        b"GET http://public.example/x HTTP/1.1\r\nHost: admin.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let seen = up.last_request();
    assert_eq!(seen.uri, "/public/x");
    assert_eq!(seen.headers["host"], "public.example");
    assert_eq!(seen.headers["x-forwarded-host"], "public.example");

    let before = up.requests().len();
    for (raw, why) in [
        (&b"GET /x HTTP/1.1\r\nHost: public.example\r\nHost: admin.example\r\nConnection: close\r\n\r\n"[..], "two Host fields"),
        (&b"GET http://u:p@public.example/x HTTP/1.1\r\nHost: public.example\r\nConnection: close\r\n\r\n"[..], "userinfo"),
        (&b"GET /x HTTP/1.1\r\nHost: bad host\r\nConnection: close\r\n\r\n"[..], "unparseable Host"),
        (&b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n"[..], "no Host"),
    ] {
        let out = raw_exchange(addr(&gw), raw).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{why}: {out}");
    }
    assert_eq!(
        up.requests().len(),
        before,
        "refused requests never reach the upstream"
    );

    // HTTP/2: a Host field that differs from :authority is refused.
    let mut r = req("GET", format!("http://{}/x", addr(&gw)), "");
    *r.uri_mut() = format!("http://public.example:{}/x", addr(&gw).port())
        .parse()
        .unwrap();
    r.headers_mut()
        .insert("host", "admin.example".parse().unwrap());
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build(gateway_test::resolve_to(addr(&gw)));
    let res = send(&h2, r).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn readiness_reports_draining_during_shutdown() {
    let (up, mut gate) = TestUpstream::gated().await;
    let gw = start(&simple(""), up.addr());
    let a = addr(&gw);
    let admin = gw.admin_addr().unwrap();
    let in_flight = tokio::spawn(async move { get(a, "/slow").await });
    gate.arrived().await;
    gw.shutdown();
    let ready = get(admin, "/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.text().contains("draining"), "{}", ready.text());
    assert_eq!(get(admin, "/healthz").await.status, StatusCode::OK);
    gate.open();
    assert_eq!(in_flight.await.unwrap().status, StatusCode::OK);
    gw.shutdown_and_wait().await;
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "admin stops after the drain"
    );
}

#[test]
fn misconfigurations_that_would_misbehave_are_refused() {
    let base =
        "listeners:\n  - bind: 127.0.0.1:0\nupstreams:\n  up:\n    endpoints: [\"127.0.0.1:1\"]\n";
    for (extra, want) in [
        (
            "limits:\n  idle_timeout: 0ms\n",
            "limits.idle_timeout: must be greater than zero",
        ),
        (
            "limits:\n  max_connections: 0\n",
            "limits.max_connections: must be at least 1",
        ),
        (
            "routes:\n  - name: q\n    match: { path_prefix: \"/a?b=1\" }\n    upstream: up\n",
            "a path cannot contain '?' or '#'",
        ),
        (
            "routes:\n  - name: t\n    match: { path_template: \"/a/../{id}\" }\n    upstream: up\n",
            "is not normalized",
        ),
        (
            "routes:\n  - name: r\n    match: { path_template: \"/u/{id}\" }\n    upstream: up\n    rewrite: \"/x/./{id}\"\n",
            "is not normalized",
        ),
    ] {
        let yaml = format!("{base}{extra}");
        let config = gateway::Config::parse(&yaml, "t.yaml").unwrap();
        let err = gateway::Compiled::new(&config, "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{extra}: {err}");
    }
    let err = gateway::Config::parse(
        &format!("{base}limits:\n  idle_timeout: 99999999999999999h\n"),
        "t.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("too large"), "{err}");
    let config = gateway::Config::parse(
        "listeners:\n  - bind: 127.0.0.1:0\nupstreams:\n  up:\n    endpoints: [\"http://user:secret@10.0.0.1:80\"]\n",
        "t.yaml",
    )
    .unwrap();
    let err = gateway::Compiled::new(&config, "t.yaml")
        .unwrap_err()
        .to_string();
    assert!(!err.contains("secret"), "{err}");
    assert!(err.contains("userinfo is not allowed"), "{err}");
}

#[tokio::test]
async fn a_failing_upstream_trips_its_breaker_and_the_admin_api_shows_and_resets_it() {
    let (up, status) = TestUpstream::switchable(500).await;
    let yaml = simple("").replace(
        "    timeouts: { connect: 1s, request: 2s }\n",
        "    timeouts: { connect: 1s, request: 2s }\n    breaker: { consecutive_failures: 3, open_for: 1h }\n",
    );
    let gw = start(&yaml, up.addr());
    let admin = gw.admin_addr().unwrap();
    for _ in 0..3 {
        assert_eq!(
            get(addr(&gw), "/").await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    // Open: answered by the gateway, the upstream is spared.
    let seen = up.requests().len();
    let res = get(addr(&gw), "/").await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers.contains_key("retry-after"));
    assert_eq!(res.headers["content-type"], "application/problem+json");
    assert_eq!(up.requests().len(), seen);

    let view: serde_json::Value =
        serde_json::from_slice(&get(admin, "/upstreams").await.body).unwrap();
    assert_eq!(view[0]["name"], "up");
    assert_eq!(view[0]["breaker"]["state"], "open");
    assert_eq!(view[0]["breaker"]["rejected"], 1);

    // The upstream recovers; an operator resets the breaker instead of waiting out the hour.
    status.store(200, std::sync::atomic::Ordering::SeqCst);
    let reset = Request::post(format!("http://{admin}/upstreams/up/breaker"))
        .header("content-type", "application/json")
        .body(full(r#"{"state":"reset"}"#))
        .unwrap();
    let res = send(&client(), reset).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(get(addr(&gw), "/").await.status, StatusCode::OK);

    let bad = Request::post(format!("http://{admin}/upstreams/nope/breaker"))
        .header("content-type", "application/json")
        .body(full(r#"{"state":"open"}"#))
        .unwrap();
    assert_eq!(send(&client(), bad).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn max_concurrent_sheds_the_excess_with_503() {
    let (up, mut gate) = TestUpstream::gated().await;
    let yaml = simple("").replace(
        "    timeouts: { connect: 1s, request: 2s }\n",
        "    timeouts: { connect: 1s, request: 10s }\n    max_concurrent: 1\n",
    );
    let gw = start(&yaml, up.addr());
    let a = addr(&gw);
    let first = tokio::spawn(async move { get(a, "/one").await });
    gate.arrived().await;
    let shed = get(addr(&gw), "/two").await;
    assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        shed.text().contains("too many concurrent requests"),
        "{}",
        shed.text()
    );
    assert_eq!(
        up.requests().len(),
        1,
        "the shed request never reached the upstream"
    );
    gate.open();
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    assert_eq!(get(addr(&gw), "/three").await.status, StatusCode::OK);
}

#[tokio::test]
async fn retries_spread_over_endpoints_replay_bodies_and_spare_non_idempotent_requests() {
    // Two endpoints: one always answers 503, the other echoes. Round robin sends the retry of a
    // request that hit the bad one to the good one.
    let bad = TestUpstream::status(503, "unavailable").await;
    let good = TestUpstream::echo().await;
    let yaml = format!(
        "listeners:\n  - bind: 127.0.0.1:0\nworkers: 1\nupstreams:\n  up:\n    endpoints: [\"{}\", \"{}\"]\n    retry: {{ attempts: 2, backoff: 1ms, max_backoff: 2ms }}\nroutes:\n  - name: all\n    upstream: up\n",
        bad.addr(),
        good.addr()
    );
    let gw = start(&yaml, bad.addr());
    let c = client();
    for i in 0..4 {
        let res = send(
            &c,
            req("PUT", format!("http://{}/item/{i}", addr(&gw)), "payload"),
        )
        .await;
        assert_eq!(res.status, StatusCode::OK, "PUT {i}");
        assert_eq!(
            res.text(),
            "payload",
            "the body was replayed to the second endpoint"
        );
    }
    assert!(
        !bad.requests().is_empty(),
        "round robin did send requests to the failing endpoint"
    );
    // A POST that reached the failing endpoint is not retried: it may have had effects.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(
            send(&c, req("POST", format!("http://{}/orders", addr(&gw)), "x"))
                .await
                .status,
        );
    }
    assert!(
        statuses.contains(&StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    assert!(statuses.contains(&StatusCode::OK), "{statuses:?}");
}

#[tokio::test]
async fn the_total_deadline_bounds_a_hanging_upstream_retries_included() {
    let up = TestUpstream::start(|_req| std::future::pending()).await;
    // Each attempt times out after 100 ms and is retried; the whole exchange gets 450 ms.
    let yaml = simple("").replace(
        "    timeouts: { connect: 1s, request: 2s }\n",
        "    timeouts: { connect: 1s, request: 100ms, total: 450ms }\n    retry: { attempts: 10, backoff: 1ms, max_backoff: 1ms, min_per_sec: 100 }\n",
    );
    let gw = start(&yaml, up.addr());
    let res = get(addr(&gw), "/").await;
    assert_eq!(res.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(res.text().contains("request deadline"), "{}", res.text());
    let attempts = up.requests().len();
    assert!(
        (2..=5).contains(&attempts),
        "{attempts} attempts: retries ran, the deadline cut them"
    );
}

#[tokio::test]
async fn a_hedge_rescues_a_request_stuck_on_a_hung_endpoint() {
    let hung = TestUpstream::start(|_req| std::future::pending()).await;
    let fast = TestUpstream::fixed("fast").await;
    let yaml = format!(
        "listeners:\n  - bind: 127.0.0.1:0\nworkers: 1\nupstreams:\n  up:\n    endpoints: [\"{}\", \"{}\"]\n    timeouts: {{ request: 30s }}\n    hedge: {{ after: 100ms, budget: 100%, min_per_sec: 100 }}\nroutes:\n  - name: all\n    upstream: up\n",
        hung.addr(),
        fast.addr()
    );
    let gw = start(&yaml, fast.addr());
    for _ in 0..2 {
        // Round robin sends each first attempt to the hung endpoint and each hedge to the fast
        // one; without the hedge the request would wait 30 s.
        let res = tokio::time::timeout(Duration::from_secs(10), get(addr(&gw), "/"))
            .await
            .expect("the hedge answered");
        assert_eq!(res.status, StatusCode::OK);
        assert_eq!(res.text(), "fast");
    }
    assert_eq!(hung.requests().len(), 2);
    assert_eq!(fast.requests().len(), 2);
}

#[tokio::test]
async fn per_endpoint_breakers_route_around_a_failing_endpoint() {
    let bad = TestUpstream::status(502, "broken").await;
    let good = TestUpstream::fixed("good").await;
    let yaml = format!(
        "listeners:\n  - bind: 127.0.0.1:0\nadmin:\n  bind: 127.0.0.1:0\nworkers: 1\nupstreams:\n  up:\n    endpoints: [\"{}\", \"{}\"]\n    breaker: {{ per_endpoint: true, consecutive_failures: 2, open_for: 1h }}\nroutes:\n  - name: all\n    upstream: up\n",
        bad.addr(),
        good.addr()
    );
    let gw = start(&yaml, good.addr());
    let mut ok = 0;
    for _ in 0..10 {
        if get(addr(&gw), "/").await.status == StatusCode::OK {
            ok += 1;
        }
    }
    assert_eq!(bad.requests().len(), 2);
    assert_eq!(ok, 8);
    let view: serde_json::Value =
        serde_json::from_slice(&get(gw.admin_addr().unwrap(), "/upstreams").await.body).unwrap();
    let states: Vec<&str> = view[0]["endpoint_breakers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["open", "closed"]);

    // An operator resets just the bad endpoint's breaker.
    let reset = Request::post(format!(
        "http://{}/upstreams/up/breaker",
        gw.admin_addr().unwrap()
    ))
    .header("content-type", "application/json")
    .body(full(format!(
        r#"{{"state":"reset","endpoint":"{}"}}"#,
        bad.addr()
    )))
    .unwrap();
    let res = send(&client(), reset).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.text(), r#"{"name":"up","states":["closed"]}"#);
}

#[tokio::test]
async fn under_total_failure_the_retry_budget_caps_the_extra_load() {
    let up = TestUpstream::status(503, "down").await;
    let yaml = simple("").replace(
        "    timeouts: { connect: 1s, request: 2s }\n",
        "    timeouts: { connect: 1s, request: 2s }\n    retry: { attempts: 3, budget: 20%, min_per_sec: 0, backoff: 1ms, max_backoff: 1ms }\n",
    );
    let gw = start(&yaml, up.addr());
    for _ in 0..100 {
        assert_eq!(
            get(addr(&gw), "/").await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    // 3 retries per request were allowed; the budget allowed 20% of the traffic.
    let calls = up.requests().len();
    assert!(
        (101..=120).contains(&calls),
        "{calls} upstream calls for 100 requests"
    );
}

#[tokio::test]
async fn the_breaker_recloses_by_itself_once_the_upstream_recovers() {
    let (up, status) = TestUpstream::switchable(500).await;
    let yaml = simple("").replace(
        "    timeouts: { connect: 1s, request: 2s }\n",
        "    timeouts: { connect: 1s, request: 2s }\n    breaker: { consecutive_failures: 2, open_for: 200ms, half_open_probes: 1 }\n",
    );
    let gw = start(&yaml, up.addr());
    let admin = gw.admin_addr().unwrap();
    for _ in 0..2 {
        get(addr(&gw), "/").await;
    }
    assert_eq!(
        get(addr(&gw), "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    status.store(200, std::sync::atomic::Ordering::SeqCst);
    // Keep asking: answers are immediate 503s until the open period ends and the probe passes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let res = get(addr(&gw), "/").await;
        if res.status == StatusCode::OK {
            break;
        }
        assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the breaker never closed"
        );
        tokio::task::yield_now().await;
    }
    let view: serde_json::Value =
        serde_json::from_slice(&get(admin, "/upstreams").await.body).unwrap();
    assert_eq!(view[0]["breaker"]["state"], "closed");
    assert_eq!(view[0]["breaker"]["half_opened"], 1);
}

#[test]
fn the_routes_command_prints_each_routes_stages_in_order() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["routes", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let private = table
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "private")
        .expect("the demo's private route");
    let stages: Vec<&str> = private["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["auth", "rate_limit", "upstream"]);
    let text = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["routes", "--config", "no-such-file.yaml"])
        .output()
        .unwrap();
    assert!(!text.status.success());
    assert!(String::from_utf8_lossy(&text.stderr).contains("no-such-file.yaml"));
}
