//! Header transforms and API version lifecycles through the real gateway.

mod support;

use gateway_test::{TestUpstream, raw_exchange};
use support::addr;

fn start(routes: &str, up: std::net::SocketAddr) -> gateway::RunningGateway {
    let yaml = format!(
        "listeners:\n  - bind: 127.0.0.1:0\nworkers: 1\nupstreams:\n  up:\n    endpoints: [\"{up}\"]\nconsumers:\n  - id: acme\n    api_keys: [\"{}\"]\nroutes:\n{routes}",
        gateway_auth::ApiKeyHash::of("acme-key")
    );
    support::launch(&yaml)
}

async fn request(gw: std::net::SocketAddr, path: &str, extra: &str) -> String {
    raw_exchange(
        gw,
        format!("GET {path} HTTP/1.1\r\nhost: shop\r\n{extra}connection: close\r\n\r\n").as_bytes(),
    )
    .await
}

#[tokio::test]
async fn request_and_response_headers_are_transformed_from_the_caller_and_route() {
    let up = TestUpstream::start(|_req: http::Request<hyper::body::Incoming>| async {
        let mut res = http::Response::new(gateway_test::full("ok"));
        res.headers_mut()
            .insert("server", http::HeaderValue::from_static("internal/1.2.3"));
        res.headers_mut()
            .insert("x-old", http::HeaderValue::from_static("v"));
        res
    })
    .await;
    let gw = start(
        "  - name: orders\n    match: { path_template: \"/orders/{id}\" }\n    upstream: up\n    auth: { any_of: [api_key] }\n    transform:\n      request_headers:\n        set: { x-consumer: \"${principal.consumer}\", x-order: \"${path.id}\", x-route: \"${route}\", x-rid: \"${request_id}\" }\n        remove: [x-debug]\n      response_headers:\n        remove: [server]\n        rename: { x-old: x-new }\n        add: { x-served-to: \"${principal.consumer}\" }\n",
        up.addr(),
    );
    let res = request(
        addr(&gw),
        "/orders/42",
        "x-api-key: acme-key\r\nx-debug: 1\r\nx-consumer: forged\r\n",
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    let seen = up.last_request();
    assert_eq!(
        seen.headers["x-consumer"], "acme",
        "the client's copy is replaced"
    );
    assert_eq!(seen.headers["x-order"], "42");
    assert_eq!(seen.headers["x-route"], "orders");
    assert_eq!(
        seen.headers["x-rid"], seen.headers["x-request-id"],
        "the assigned id"
    );
    assert!(!seen.headers.contains_key("x-debug"));
    let lower = res.to_ascii_lowercase();
    assert!(!lower.contains("internal/1.2.3"), "{res}");
    assert!(
        lower.contains("x-new: v") && !lower.contains("x-old"),
        "{res}"
    );
    assert!(lower.contains("x-served-to: acme"), "{res}");
}

#[tokio::test]
async fn templates_copy_request_headers_and_encoded_crlf_stays_encoded() {
    let up = TestUpstream::fixed("ok").await;
    let gw = start(
        "  - name: users\n    match: { path_template: \"/users/{name}\" }\n    upstream: up\n    transform:\n      request_headers:\n        set: { x-user: \"${path.name}\", x-tenant: \"t=${header.x-tenant-in}\" }\n",
        up.addr(),
    );
    let ok = request(addr(&gw), "/users/alice", "x-tenant-in: blue\r\n").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let seen = up.last_request();
    assert_eq!(seen.headers["x-tenant"], "t=blue");
    assert_eq!(seen.headers["x-user"], "alice");
    // A header-splitting attempt through the path: parameters are not percent-decoded, so the
    // CR LF never becomes one (a decoded one would fail the request: see the crate's tests).
    let res = request(addr(&gw), "/users/a%0d%0ax-admin:%20true", "").await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    let seen = up.last_request();
    assert_eq!(
        seen.headers["x-user"], "a%0D%0Ax-admin:%20true",
        "normalized, still encoded"
    );
    assert!(!seen.headers.contains_key("x-admin"));
}

#[tokio::test]
async fn deprecated_versions_are_annotated_and_retired_ones_are_gone_or_redirected() {
    let up = TestUpstream::fixed("v1").await;
    let gw = start(
        "  - name: v1\n    match: { path_prefix: /v1 }\n    upstream: up\n    version: { deprecated_at: 2020-01-01, sunset_at: 2999-01-01, successor: /v2 }\n  - name: v0\n    match: { path_prefix: /v0 }\n    upstream: up\n    version: { deprecated_at: 2019-01-01, sunset_at: 2020-01-01, successor: /v2 }\n  - name: beta\n    match: { path_prefix: /beta }\n    upstream: up\n    version: { sunset_at: 2020-06-01, successor: /v2, after_sunset: redirect }\n",
        up.addr(),
    );
    let a = addr(&gw);
    let v1 = request(a, "/v1/orders", "").await.to_ascii_lowercase();
    assert!(v1.starts_with("http/1.1 200"), "{v1}");
    assert!(v1.contains("deprecation: @1577836800"), "{v1}");
    assert!(v1.contains("sunset: tue, 01 jan 2999 00:00:00 gmt"), "{v1}");
    assert!(
        v1.contains("link: </v2>; rel=\"successor-version\""),
        "{v1}"
    );
    let seen = up.requests().len();
    let v0 = request(a, "/v0/orders", "").await;
    assert!(v0.starts_with("HTTP/1.1 410"), "{v0}");
    assert!(
        v0.contains("application/problem+json") && v0.contains("/v2"),
        "{v0}"
    );
    let beta = request(a, "/beta/x", "").await.to_ascii_lowercase();
    assert!(beta.starts_with("http/1.1 308"), "{beta}");
    assert!(beta.contains("location: /v2"), "{beta}");
    assert_eq!(
        up.requests().len(),
        seen,
        "retired versions never reach the upstream"
    );
}

#[test]
fn bad_transform_and_version_config_names_the_field() {
    for (route, want) in [
        (
            "    transform: { request_headers: { set: { content-length: \"1\" } } }",
            "routes[0].transform.request_headers.set.content-length",
        ),
        (
            "    transform: { response_headers: { set: { x-a: \"${nope}\" } } }",
            "routes[0].transform.response_headers.set.x-a",
        ),
        (
            "    version: { sunset_at: tomorrow }",
            "routes[0].version.sunset_at",
        ),
        (
            "    transform: { path: { regex: \"(a\", replace: \"/\" } }",
            "routes[0].transform.path.regex",
        ),
        (
            "    transform: { path: \"no-slash/${path.id}\" }",
            "routes[0].transform.path",
        ),
        (
            "    transform: { query: { set: { tenant: \"${nope}\" } } }",
            "routes[0].transform.query.set.tenant",
        ),
        (
            "    version: { sunset_at: 2020-01-01, after_sunset: redirect }",
            "routes[0].version.after_sunset",
        ),
    ] {
        let yaml = format!(
            "listeners:\n  - bind: 127.0.0.1:0\nupstreams:\n  up:\n    endpoints: [\"127.0.0.1:1\"]\nroutes:\n  - name: r\n    upstream: up\n{route}\n"
        );
        let err = support::config_error(&yaml);
        assert!(err.contains(want), "{route}: {err}");
    }
}

#[tokio::test]
async fn paths_and_queries_are_rewritten_after_policy_and_the_rewritten_path_is_forwarded() {
    let up = TestUpstream::fixed("ok").await;
    let gw = start(
        "  - name: users\n    match: { path_template: \"/users/{id}\" }\n    upstream: up\n    auth: { any_of: [api_key] }\n    transform:\n      path: \"/internal/accounts/${path.id}\"\n      query: { remove: [debug], rename: { q: search }, set: { tenant: \"${principal.consumer}\" } }\n  - name: legacy\n    match: { path_prefix: /api/v1 }\n    upstream: up\n    transform:\n      path: { regex: \"^/api/v1/(?P<rest>.+)$\", replace: \"/v2/${rest}\" }\n",
        up.addr(),
    );
    let a = addr(&gw);
    // Authentication still applies: the rewrite never runs for a refused request.
    let res = request(a, "/users/42?q=x", "").await;
    assert!(res.starts_with("HTTP/1.1 401"), "{res}");
    assert!(up.requests().is_empty());

    let res = request(
        a,
        "/users/42?q=a%20b&debug=1&tenant=forged",
        "x-api-key: acme-key\r\n",
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert_eq!(
        up.last_request().uri,
        "/internal/accounts/42?search=a%20b&tenant=acme"
    );

    // A parameter keeps its escapes; one that would climb once decoded is refused with a
    // problem, and nothing is forwarded.
    let res = request(a, "/users/john%20doe", "x-api-key: acme-key\r\n").await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert_eq!(
        up.last_request().uri,
        "/internal/accounts/john%20doe?tenant=acme"
    );
    let before = up.requests().len();
    let res = request(a, "/users/a%2F..%2Fadmin", "x-api-key: acme-key\r\n").await;
    assert!(res.starts_with("HTTP/1.1 400"), "{res}");
    assert!(res.contains("application/problem+json"), "{res}");
    assert_eq!(up.requests().len(), before);

    let res = request(a, "/api/v1/orders/7", "").await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert_eq!(up.last_request().uri, "/v2/orders/7");
}

#[tokio::test]
async fn the_access_log_shows_the_rewritten_path() {
    let up = TestUpstream::fixed("ok").await;
    let log = std::env::temp_dir().join(format!("gateway-rewrite-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let yaml = format!(
        "listeners:\n  - bind: 127.0.0.1:0\nworkers: 1\nupstreams:\n  up:\n    endpoints: [\"{}\"]\nroutes:\n  - name: users\n    match: {{ path_template: \"/users/{{id}}\" }}\n    upstream: up\n    transform: {{ path: \"/internal/accounts/${{path.id}}\" }}\nobserve:\n  access_log:\n    to: \"{}\"\n",
        up.addr(),
        log.display()
    );
    let gw = support::launch(&yaml);
    let res = request(addr(&gw), "/users/42", "").await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    let mut line = String::new();
    for _ in 0..200 {
        line = std::fs::read_to_string(&log).unwrap_or_default();
        if !line.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let entry: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(entry["path"], "/internal/accounts/42");
    assert_eq!(entry["route"], "users");
    let _ = std::fs::remove_file(&log);
}
