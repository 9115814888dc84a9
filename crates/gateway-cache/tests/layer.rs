//! The cache layer in front of a scripted origin: hits and misses, §3.5 `Authorization`,
//! `Set-Cookie`, `Vary`, revalidation with `304`, `stale-if-error`, invalidation by unsafe
//! methods, `HEAD` from `GET`, the body cap and `only-if-cached`.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use gateway_cache::{CacheBody, CacheLayer, MemoryStore};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt, service_fn};

/// What the origin saw and answers: per request, a function of the request.
#[derive(Clone, Default)]
struct Origin {
    seen: Arc<Mutex<Vec<(Method, String, HeaderMap)>>>,
}

type Answer = fn(&Request<Full<Bytes>>, usize) -> Response<Full<Bytes>>;

#[allow(clippy::type_complexity)] // the impl Service type, spelled once
fn cache(
    answer: Answer,
) -> (
    impl Service<Request<Full<Bytes>>, Response = Response<CacheBody<Full<Bytes>>>, Error = Infallible>
    + Clone,
    Origin,
) {
    let origin = Origin::default();
    let seen = origin.seen.clone();
    let svc = service_fn(move |req: Request<Full<Bytes>>| {
        let n = {
            let mut s = seen.lock().unwrap();
            s.push((
                req.method().clone(),
                req.uri().to_string(),
                req.headers().clone(),
            ));
            s.len()
        };
        let res = answer(&req, n);
        async move { Ok::<_, Infallible>(res) }
    });
    (
        CacheLayer::new(MemoryStore::new(1 << 20))
            .max_body(1024)
            .layer(svc),
        origin,
    )
}

fn ok(cc: &str, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .header("cache-control", cc)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

async fn send<S>(
    svc: &mut S,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes)
where
    S: Service<
            Request<Full<Bytes>>,
            Response = Response<CacheBody<Full<Bytes>>>,
            Error = Infallible,
        >,
{
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://example.com{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(b.body(Full::default()).unwrap())
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

fn calls(o: &Origin) -> usize {
    o.seen.lock().unwrap().len()
}

#[tokio::test]
async fn a_fresh_response_is_served_from_the_cache_with_age_and_cache_status() {
    let (mut svc, origin) = cache(|_, n| ok("max-age=60", if n == 1 { "first" } else { "second" }));
    let (_, h, body) = send(&mut svc, Method::GET, "/a", &[]).await;
    assert_eq!(body, "first");
    assert_eq!(h["cache-status"], "gateway; fwd=miss; stored");
    let (_, h, body) = send(&mut svc, Method::GET, "/a", &[]).await;
    assert_eq!(body, "first");
    assert_eq!(h["cache-status"], "gateway; hit");
    assert!(h.contains_key("age"));
    // HEAD is answered from the stored GET.
    let (status, _, body) = send(&mut svc, Method::HEAD, "/a", &[]).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    assert_eq!(calls(&origin), 1);
    // Another path is another entry; the query is part of the key.
    send(&mut svc, Method::GET, "/a?x=1", &[]).await;
    assert_eq!(calls(&origin), 2);
}

#[tokio::test]
async fn requests_with_authorization_share_only_what_the_origin_allows() {
    let (mut svc, origin) = cache(|req, _| {
        if req.uri().path() == "/public" {
            ok("public, max-age=60", "shared")
        } else {
            ok("max-age=60", "alice's")
        }
    });
    let bearer = [("authorization", "Bearer alice")];
    send(&mut svc, Method::GET, "/mine", &bearer).await;
    let (_, h, _) = send(&mut svc, Method::GET, "/mine", &[]).await;
    assert!(
        h["cache-status"].to_str().unwrap().contains("fwd=miss"),
        "never stored"
    );
    assert_eq!(calls(&origin), 2);
    send(&mut svc, Method::GET, "/public", &bearer).await;
    let (_, h, _) = send(&mut svc, Method::GET, "/public", &[]).await;
    assert_eq!(h["cache-status"], "gateway; hit");
}

#[tokio::test]
async fn cookies_private_and_vary_star_are_never_stored() {
    let (mut svc, origin) = cache(|req, _| match req.uri().path() {
        "/cookie" => Response::builder()
            .header("cache-control", "max-age=60")
            .header("set-cookie", "session=secret")
            .body(Full::default())
            .unwrap(),
        "/account/x.css" => ok("private, max-age=60", "your account"),
        _ => Response::builder()
            .header("cache-control", "max-age=60")
            .header("vary", "*")
            .body(Full::default())
            .unwrap(),
    });
    for path in ["/cookie", "/account/x.css", "/star"] {
        send(&mut svc, Method::GET, path, &[]).await;
        let (_, h, _) = send(&mut svc, Method::GET, path, &[]).await;
        assert!(
            h["cache-status"].to_str().unwrap().contains("fwd=miss"),
            "{path}"
        );
    }
    assert_eq!(calls(&origin), 6);
}

#[tokio::test]
async fn vary_keeps_a_variant_per_normalized_header_value() {
    let (mut svc, origin) = cache(|req, _| {
        let enc = req
            .headers()
            .get("accept-encoding")
            .map_or("none", |v| v.to_str().unwrap())
            .to_owned();
        Response::builder()
            .header("cache-control", "max-age=60")
            .header("vary", "Accept-Encoding")
            .body(Full::new(Bytes::from(enc)))
            .unwrap()
    });
    let (_, _, gzip) = send(
        &mut svc,
        Method::GET,
        "/v",
        &[("accept-encoding", "gzip, br")],
    )
    .await;
    let (_, _, none) = send(&mut svc, Method::GET, "/v", &[]).await;
    assert_eq!(
        (gzip.as_ref(), none.as_ref()),
        (&b"gzip, br"[..], &b"none"[..])
    );
    // Whitespace differences are the same variant.
    let (_, h, body) = send(
        &mut svc,
        Method::GET,
        "/v",
        &[("accept-encoding", "gzip,br")],
    )
    .await;
    assert_eq!(h["cache-status"], "gateway; hit");
    assert_eq!(body, "gzip, br");
    let (_, h, _) = send(&mut svc, Method::GET, "/v", &[]).await;
    assert_eq!(h["cache-status"], "gateway; hit");
    assert_eq!(calls(&origin), 2);
}

#[tokio::test]
async fn stale_entries_are_revalidated_and_served_on_errors_when_allowed() {
    let (mut svc, origin) = cache(|req, n| match (req.uri().path(), n) {
        ("/etag", _)
            if req
                .headers()
                .get("if-none-match")
                .is_some_and(|v| v == "\"v1\"") =>
        {
            Response::builder()
                .status(304)
                .header("etag", "\"v1\"")
                .header("cache-control", "max-age=0")
                .body(Full::default())
                .unwrap()
        }
        ("/etag", _) => Response::builder()
            .header("etag", "\"v1\"")
            .header("cache-control", "max-age=0")
            .body(Full::new(Bytes::from_static(b"body v1")))
            .unwrap(),
        ("/sie", _) if req.headers().contains_key("x-first") => {
            ok("max-age=0, stale-if-error=600", "kept")
        }
        ("/sie", _) => Response::builder()
            .status(503)
            .body(Full::default())
            .unwrap(),
        _ => ok("max-age=0, must-revalidate, stale-if-error=600", "strict"),
    });
    send(&mut svc, Method::GET, "/etag", &[]).await;
    let (status, h, body) = send(&mut svc, Method::GET, "/etag", &[]).await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, &b"body v1"[..]));
    assert!(
        h["cache-status"]
            .to_str()
            .unwrap()
            .contains("fwd-status=304")
    );
    let seen = origin.seen.lock().unwrap().clone();
    assert_eq!(
        seen[1].2["if-none-match"], "\"v1\"",
        "a conditional request"
    );

    send(&mut svc, Method::GET, "/sie", &[("x-first", "1")]).await;
    let (status, h, body) = send(&mut svc, Method::GET, "/sie", &[]).await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, &b"kept"[..]));
    assert!(
        h["cache-status"]
            .to_str()
            .unwrap()
            .contains("stale-if-error")
    );
}

#[tokio::test]
async fn unsafe_methods_invalidate_the_target_and_its_location() {
    let (mut svc, origin) = cache(|req, _| {
        if req.method() == Method::POST {
            Response::builder()
                .status(201)
                .header("location", "/items/2")
                .body(Full::default())
                .unwrap()
        } else {
            ok("max-age=60", "item")
        }
    });
    send(&mut svc, Method::GET, "/items", &[]).await;
    send(&mut svc, Method::GET, "/items/2", &[]).await;
    send(&mut svc, Method::POST, "/items", &[]).await;
    let (_, h, _) = send(&mut svc, Method::GET, "/items", &[]).await;
    assert!(h["cache-status"].to_str().unwrap().contains("fwd=miss"));
    let (_, h, _) = send(&mut svc, Method::GET, "/items/2", &[]).await;
    assert!(
        h["cache-status"].to_str().unwrap().contains("fwd=miss"),
        "the Location too"
    );
    assert_eq!(calls(&origin), 5);
}

#[tokio::test]
async fn large_bodies_pass_through_and_only_if_cached_never_reaches_the_origin() {
    let (mut svc, origin) = cache(|_, _| {
        ok(
            "max-age=60",
            std::str::from_utf8(&[b'x'; 2048])
                .unwrap()
                .to_owned()
                .leak(),
        )
    });
    let (_, _, body) = send(&mut svc, Method::GET, "/big", &[]).await;
    assert_eq!(body.len(), 2048, "served whole");
    let (_, h, _) = send(&mut svc, Method::GET, "/big", &[]).await;
    assert!(
        h["cache-status"].to_str().unwrap().contains("fwd=miss"),
        "over the cap: not stored"
    );
    let (status, _, _) = send(
        &mut svc,
        Method::GET,
        "/absent",
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(calls(&origin), 2);
}

#[tokio::test]
async fn purges_by_key_prefix_and_tag() {
    let store = std::sync::Arc::new(MemoryStore::new(1 << 20));
    let origin = service_fn(|req: Request<Full<Bytes>>| async move {
        let tag = if req.uri().path().starts_with("/products") {
            "products"
        } else {
            "other"
        };
        Ok::<_, Infallible>(
            Response::builder()
                .header("cache-control", "max-age=60")
                .header("surrogate-key", format!("all {tag}"))
                .body(Full::new(Bytes::from_static(b"x")))
                .unwrap(),
        )
    });
    let mut svc = CacheLayer::shared(store.clone()).layer(origin);
    for p in ["/products/1", "/products/2", "/users/1", "/users/2"] {
        send(&mut svc, Method::GET, p, &[]).await;
    }
    assert_eq!(store.purge_tag("products"), 2);
    assert_eq!(store.purge_prefix("http://example.com/users/1"), 1);
    let (_, h, _) = send(&mut svc, Method::GET, "/users/2", &[]).await;
    assert_eq!(h["cache-status"], "gateway; hit", "untouched");
    let (_, h, _) = send(&mut svc, Method::GET, "/products/1", &[]).await;
    assert!(h["cache-status"].to_str().unwrap().contains("fwd=miss"));
    assert_eq!(store.purge_tag("all"), 2);
}

#[tokio::test]
async fn concurrent_misses_for_one_key_make_one_origin_request() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (g, c) = (gate.clone(), calls.clone());
    let origin = service_fn(move |_req: Request<Full<Bytes>>| {
        let (g, c) = (g.clone(), c.clone());
        async move {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            g.notified().await;
            Ok::<_, Infallible>(ok("max-age=60", "once"))
        }
    });
    let svc = CacheLayer::new(MemoryStore::new(1 << 20)).layer(origin);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            send(&mut svc, Method::GET, "/hot", &[]).await
        }));
    }
    // Let every request reach the cache, then let the origin answer.
    while calls.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    gate.notify_waiters();
    let mut coalesced = 0;
    for t in tasks {
        let (status, h, body) = t.await.unwrap();
        assert_eq!((status, body.as_ref()), (StatusCode::OK, &b"once"[..]));
        coalesced += usize::from(h["cache-status"].to_str().unwrap().contains("coalesced"));
    }
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one origin request"
    );
    assert_eq!(coalesced, 19);
}

#[tokio::test]
async fn answers_cached_over_tls_are_not_served_over_plain_http() {
    let (mut svc, origin) = cache(|_, n| ok("max-age=60", if n == 1 { "tls" } else { "plain" }));
    let over = |tls: bool| {
        let mut req = Request::get("/page")
            .header("host", "shop")
            .body(Full::default())
            .unwrap();
        req.extensions_mut().insert(
            gateway_core::ConnectionInfo::new("127.0.0.1:1".parse().unwrap()).with_tls(tls),
        );
        req
    };
    let res = svc.ready().await.unwrap().call(over(true)).await.unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "tls");
    let res = svc.ready().await.unwrap().call(over(false)).await.unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "plain");
    assert_eq!(calls(&origin), 2);
}

#[tokio::test]
async fn range_requests_bypass_the_cache_and_partial_content_is_never_stored() {
    let (mut svc, origin) = cache(|req, _| {
        if req.headers().contains_key("range") {
            Response::builder()
                .status(206)
                .header("cache-control", "max-age=60")
                .header("content-range", "bytes 0-1/10")
                .body(Full::new(Bytes::from_static(b"ab")))
                .unwrap()
        } else {
            ok("max-age=60", "abcdefghij")
        }
    });
    let (status, h, body) = send(&mut svc, Method::GET, "/file", &[("range", "bytes=0-1")]).await;
    assert_eq!(
        (status, body.as_ref()),
        (StatusCode::PARTIAL_CONTENT, &b"ab"[..])
    );
    assert!(h["cache-status"].to_str().unwrap().contains("bypass"));
    let (status, _, body) = send(&mut svc, Method::GET, "/file", &[]).await;
    assert_eq!(
        (status, body.as_ref()),
        (StatusCode::OK, &b"abcdefghij"[..]),
        "never the partial"
    );
    assert_eq!(calls(&origin), 2);
}

/// Waits (yielding to the runtime, never sleeping) until `done` holds, for work the cache does
/// in a task of its own.
async fn until(mut done: impl FnMut() -> bool) {
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while !done() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the background work finished");
}

#[tokio::test]
async fn stale_while_revalidate_serves_at_once_and_refreshes_once_in_the_background() {
    let (mut svc, origin) = cache(|req, n| match n {
        1 => {
            let mut res = ok("max-age=0, stale-while-revalidate=60", "v1");
            res.headers_mut().insert("etag", "\"1\"".parse().unwrap());
            res
        }
        _ => {
            assert_eq!(
                req.headers()["if-none-match"],
                "\"1\"",
                "the refresh is conditional"
            );
            ok("max-age=60", "v2")
        }
    });
    send(&mut svc, Method::GET, "/swr", &[]).await;
    // Two requests in the window: both get the stale answer at once, one refresh starts.
    for _ in 0..2 {
        let (_, h, body) = send(&mut svc, Method::GET, "/swr", &[]).await;
        assert_eq!(body, "v1");
        assert_eq!(
            h["cache-status"],
            "gateway; hit; fwd=stale; detail=stale-while-revalidate"
        );
    }
    until(|| calls(&origin) == 2).await;
    // The refreshed entry arrives; after that, fresh hits of it.
    let mut body = Bytes::new();
    until(|| {
        // Polled without awaiting: the memory store answers at once.
        let mut svc = svc.clone();
        let res = futures_now(async move { send(&mut svc, Method::GET, "/swr", &[]).await });
        if let Some((_, _, b)) = res {
            body = b;
        }
        body == "v2"
    })
    .await;
    let (_, h, body) = send(&mut svc, Method::GET, "/swr", &[]).await;
    assert_eq!(
        (body.as_ref(), h["cache-status"].to_str().unwrap()),
        (&b"v2"[..], "gateway; hit")
    );
    assert_eq!(calls(&origin), 2, "one background refresh");
}

/// Runs a future that does not wait on anything external to completion in one poll.
fn futures_now<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// A body of unknown length, one chunk per poll.
struct Chunks(std::collections::VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|c| Ok(http_body::Frame::data(c))))
    }
}

#[tokio::test]
async fn bodies_of_unknown_length_stream_through_and_are_stored_when_complete_and_small() {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = calls.clone();
    let origin = service_fn(move |req: Request<Full<Bytes>>| {
        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let chunk = if req.uri().path() == "/big" { 600 } else { 3 };
        let chunks = (0..3).map(|i| Bytes::from(vec![b'a' + i; chunk])).collect();
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("cache-control", "max-age=60")
                    .body(Chunks(chunks))
                    .unwrap(),
            )
        }
    });
    let svc = CacheLayer::new(MemoryStore::new(1 << 20))
        .max_body(1024)
        .layer(origin);
    let get = |path: &'static str| {
        let mut svc = svc.clone();
        async move {
            let req = Request::get(format!("http://example.com{path}"))
                .body(Full::default())
                .unwrap();
            svc.ready().await.unwrap().call(req).await.unwrap()
        }
    };
    let count = || calls.load(std::sync::atomic::Ordering::SeqCst);
    // Streamed to the client and stored once complete.
    let res = get("/small").await;
    assert_eq!(res.headers()["cache-status"], "gateway; fwd=miss; stored");
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "aaabbbccc"
    );
    let res = get("/small").await;
    assert_eq!(res.headers()["cache-status"], "gateway; hit");
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "aaabbbccc"
    );
    assert_eq!(count(), 1);
    // Over the cap once streaming: the client gets all of it, nothing is stored.
    let res = get("/big").await;
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes().len(),
        1800
    );
    let res = get("/big").await;
    assert!(
        res.headers()["cache-status"]
            .to_str()
            .unwrap()
            .contains("fwd=miss")
    );
    drop(res);
    assert_eq!(count(), 3);
    // A client that goes away mid-body stores nothing (a truncated body is never served).
    let res = get("/cut").await;
    let mut body = Box::pin(res.into_body());
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        "aaa"
    );
    drop(body);
    let res = get("/cut").await;
    assert!(
        res.headers()["cache-status"]
            .to_str()
            .unwrap()
            .contains("fwd=miss")
    );
    assert_eq!(count(), 5);
}

#[tokio::test]
async fn conditional_clients_get_304_from_the_cache_and_their_validators_are_not_forwarded() {
    let (mut svc, origin) = cache(|_, _| {
        let mut res = ok("max-age=60", "body");
        res.headers_mut()
            .insert("etag", "W/\"v1\"".parse().unwrap());
        res.headers_mut().insert(
            "last-modified",
            "Tue, 01 Jan 2030 00:00:00 GMT".parse().unwrap(),
        );
        res
    });
    // A conditional miss: the origin is asked unconditionally (so the entry can be stored),
    // and the client still gets its 304.
    let (status, h, body) = send(
        &mut svc,
        Method::GET,
        "/doc",
        &[("if-none-match", "\"v1\"")],
    )
    .await;
    assert_eq!((status, body.len()), (StatusCode::NOT_MODIFIED, 0));
    assert_eq!(h["etag"], "W/\"v1\"");
    assert!(!h.contains_key("content-length"));
    {
        let seen = origin.seen.lock().unwrap();
        assert!(!seen[0].2.contains_key("if-none-match"));
    }
    // Stored all the same: hits, conditional or not.
    let (status, _, body) = send(&mut svc, Method::GET, "/doc", &[]).await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, &b"body"[..]));
    let (status, h, _) = send(
        &mut svc,
        Method::GET,
        "/doc",
        &[("if-modified-since", "Wed, 02 Jan 2030 00:00:00 GMT")],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert_eq!(h["cache-status"], "gateway; hit");
    // A validator that does not match gets the body.
    let (status, _, body) = send(
        &mut svc,
        Method::GET,
        "/doc",
        &[("if-none-match", "\"v0\", \"v2\"")],
    )
    .await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, &b"body"[..]));
    assert_eq!(calls(&origin), 1);
}

#[tokio::test]
async fn unkeyed_headers_and_parameters_never_reach_the_origin_so_they_cannot_poison() {
    let origin = Origin::default();
    let seen = origin.seen.clone();
    let reflect = service_fn(move |req: Request<Full<Bytes>>| {
        seen.lock().unwrap().push((
            req.method().clone(),
            req.uri().to_string(),
            req.headers().clone(),
        ));
        // A careless origin: builds links from whatever host it is told.
        let host = req
            .headers()
            .get("x-forwarded-host")
            .or(req.headers().get("host"))
            .map(|h| h.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = format!("<a href=\"https://{host}/next\"> {}", req.uri());
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("cache-control", "max-age=60")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap(),
            )
        }
    });
    let key = gateway_cache::CacheKey::new()
        .query(gateway_cache::QueryKey::Except(vec!["utm_source".into()]))
        .header(http::HeaderName::from_static("x-tenant"));
    let mut svc = CacheLayer::new(MemoryStore::new(1 << 20))
        .key(key)
        .layer(reflect);
    let (_, _, poisoned) = send(
        &mut svc,
        Method::GET,
        "/page?utm_source=evil&a=1",
        &[
            ("host", "shop.example"),
            ("x-forwarded-host", "evil.example"),
            ("x-original-url", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("x-tenant", "blue"),
        ],
    )
    .await;
    assert!(
        !String::from_utf8_lossy(&poisoned).contains("evil"),
        "{poisoned:?}"
    );
    {
        let seen = origin.seen.lock().unwrap();
        let (_, uri, headers) = &seen[0];
        assert_eq!(
            uri, "http://example.com/page?a=1",
            "the unkeyed parameter is not forwarded"
        );
        for h in [
            "x-forwarded-host",
            "x-original-url",
            "x-http-method-override",
        ] {
            assert!(!headers.contains_key(h), "{h} forwarded");
        }
        assert_eq!(headers["x-tenant"], "blue", "a keyed header is forwarded");
    }
    // Another tracking value shares the entry; another tenant does not.
    let (_, h, _) = send(
        &mut svc,
        Method::GET,
        "/page?a=1&utm_source=mail",
        &[("x-tenant", "blue")],
    )
    .await;
    assert_eq!(h["cache-status"], "gateway; hit");
    let (_, h, _) = send(&mut svc, Method::GET, "/page?a=1", &[("x-tenant", "red")]).await;
    assert!(h["cache-status"].to_str().unwrap().contains("fwd=miss"));
    assert_eq!(origin.seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn cache_status_can_be_renamed_or_left_out_and_the_outcome_is_an_extension() {
    let origin = service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(ok("max-age=60", "x"))
    });
    let named = CacheLayer::new(MemoryStore::new(1 << 20)).cache_status(Some("edge-1"));
    let mut svc = named.layer(origin);
    let get = || Request::get("http://h/x").body(Full::default()).unwrap();
    let res = svc.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(res.headers()["cache-status"], "edge-1; fwd=miss; stored");
    assert_eq!(
        res.extensions().get(),
        Some(&gateway_cache::CacheOutcome::Miss)
    );
    drop(res.into_body().collect().await);
    let res = svc.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(
        res.extensions().get(),
        Some(&gateway_cache::CacheOutcome::Hit)
    );
    let mut quiet = CacheLayer::new(MemoryStore::new(1 << 20))
        .cache_status(None)
        .layer(origin);
    let res = quiet.ready().await.unwrap().call(get()).await.unwrap();
    assert!(!res.headers().contains_key("cache-status"));
    assert_eq!(
        res.extensions().get(),
        Some(&gateway_cache::CacheOutcome::Miss)
    );
}
