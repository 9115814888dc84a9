//! Request validation (JSON Schema, parameters, OpenAPI), body transforms (JSON edits,
//! XML <-> JSON) and API version routing through the real gateway.

mod support;

use gateway_test::{TestUpstream, raw_exchange};
use support::addr;

fn start(upstreams: &str, routes: &str) -> gateway::RunningGateway {
    let yaml = format!(
        "listeners:\n  - bind: 127.0.0.1:0\nworkers: 1\nupstreams:\n{upstreams}routes:\n{routes}"
    );
    support::launch(&yaml)
}

fn one_upstream(up: std::net::SocketAddr) -> String {
    format!("  up:\n    endpoints: [\"{up}\"]\n")
}

async fn send(
    gw: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> String {
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: shop\r\n{headers}");
    if !body.is_empty() {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("connection: close\r\n\r\n");
    req.push_str(body);
    raw_exchange(gw, req.as_bytes()).await
}

fn status(res: &str) -> u16 {
    res.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn body_of(res: &str) -> &str {
    res.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn problem(res: &str) -> serde_json::Value {
    assert!(res.contains("application/problem+json"), "{res}");
    serde_json::from_str(body_of(res)).unwrap_or_else(|e| panic!("{e}: {res}"))
}

const JSON: &str = "content-type: application/json\r\n";

#[tokio::test]
async fn bodies_and_parameters_are_validated_and_every_error_is_listed() {
    let up = TestUpstream::echo().await;
    let gw = start(
        &one_upstream(up.addr()),
        "  - name: orders\n    upstream: up\n    validate:\n      max_bytes: 256\n      body: { type: object, required: [name], additionalProperties: false, properties: { name: { type: string }, qty: { type: integer, minimum: 1 } } }\n      params:\n        - { name: page, in: query, schema: { type: integer, minimum: 1 } }\n",
    );
    let a = addr(&gw);
    let ok = send(
        a,
        "POST",
        "/orders?page=2",
        JSON,
        r#"{"name":"tea","qty":2}"#,
    )
    .await;
    assert_eq!(status(&ok), 200, "{ok}");
    assert_eq!(
        body_of(&ok),
        r#"{"name":"tea","qty":2}"#,
        "forwarded as sent"
    );
    // JSON whatever the parameters.
    let ok = send(
        a,
        "POST",
        "/orders",
        "content-type: Application/JSON; charset=\"UTF-8\"\r\n",
        r#"{"name":"tea"}"#,
    )
    .await;
    assert_eq!(status(&ok), 200, "{ok}");
    let served = up.requests().len();

    // Three problems, three errors, each with its pointer.
    let res = send(
        a,
        "POST",
        "/orders",
        JSON,
        r#"{"name":1,"qty":0,"extra":true}"#,
    )
    .await;
    assert_eq!(status(&res), 422, "{res}");
    let p = problem(&res);
    let errors = p["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 3, "{p}");
    let pointers: Vec<&str> = errors
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert!(
        pointers.contains(&"/name") && pointers.contains(&"/qty"),
        "{p}"
    );
    // A bad parameter is the request's shape: 400.
    let res = send(a, "POST", "/orders?page=0", JSON, r#"{"name":"tea"}"#).await;
    assert_eq!(status(&res), 400, "{res}");
    assert_eq!(problem(&res)["errors"][0]["in"], "query");
    // Duplicate keys (parser differentials), deep nesting, huge integers: refused.
    for hostile in [
        r#"{"name":"tea","name":"admin"}"#.to_owned(),
        format!("{}{}", "[".repeat(100), "]".repeat(100)),
        r#"{"name":"tea","qty":18446744073709551616}"#.to_owned(),
        r#"{"name":"\ud800"}"#.to_owned(),
    ] {
        let res = send(a, "POST", "/orders", JSON, &hostile).await;
        assert_eq!(status(&res), 400, "{hostile}: {res}");
    }
    // Not JSON: 415; too large: 413; no body: 400.
    let res = send(
        a,
        "POST",
        "/orders",
        "content-type: text/plain\r\n",
        "name=tea",
    )
    .await;
    assert_eq!(status(&res), 415, "{res}");
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(300));
    let res = send(a, "POST", "/orders", JSON, &big).await;
    assert_eq!(status(&res), 413, "{res}");
    let res = send(a, "POST", "/orders", "", "").await;
    assert_eq!(status(&res), 400, "{res}");
    assert_eq!(
        up.requests().len(),
        served,
        "nothing refused reached the upstream"
    );
}

#[tokio::test]
async fn an_openapi_document_drives_validation() {
    let up = TestUpstream::echo().await;
    let dir = std::env::temp_dir().join(format!("gateway-openapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let doc = dir.join("petstore.yaml");
    std::fs::write(
        &doc,
        "openapi: 3.0.3\ninfo: { title: pets, version: '1' }\npaths:\n  /pets/{petId}:\n    get:\n      parameters:\n        - { name: petId, in: path, required: true, schema: { type: integer } }\n      responses: { '200': { description: ok } }\n  /pets:\n    post:\n      requestBody:\n        required: true\n        content:\n          application/json:\n            schema: { $ref: '#/components/schemas/Pet' }\n      responses: { '201': { description: ok } }\ncomponents:\n  schemas:\n    Pet:\n      type: object\n      required: [name]\n      properties:\n        name: { type: string }\n        tag: { type: string, nullable: true }\n",
    )
    .unwrap();
    let gw = start(
        &one_upstream(up.addr()),
        &format!(
            "  - name: pets\n    upstream: up\n    validate: {{ openapi: \"{}\" }}\n",
            doc.display()
        ),
    );
    let a = addr(&gw);
    assert_eq!(status(&send(a, "GET", "/pets/7", "", "").await), 200);
    let res = send(a, "GET", "/pets/seven", "", "").await;
    assert_eq!(status(&res), 400, "{res}");
    assert_eq!(problem(&res)["errors"][0]["in"], "path");
    let ok = send(a, "POST", "/pets", JSON, r#"{"name":"rex","tag":null}"#).await;
    assert_eq!(status(&ok), 200, "{ok}");
    let res = send(a, "POST", "/pets", JSON, r#"{"tag":"x"}"#).await;
    assert_eq!(status(&res), 422, "{res}");
    let res = send(
        a,
        "POST",
        "/pets",
        "content-type: application/xml\r\n",
        "<pet/>",
    )
    .await;
    assert_eq!(status(&res), 415, "{res}");
    let res = send(a, "GET", "/owners", "", "").await;
    assert_eq!(status(&res), 404, "{res}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn json_bodies_are_edited_and_converted_to_and_from_xml() {
    let echo = TestUpstream::echo().await;
    let json_api = TestUpstream::start(|_req: http::Request<hyper::body::Incoming>| async {
        let mut res = http::Response::new(gateway_test::full(
            r#"{"order":{"id":"7","secret":"s3cr3t","items":["a","b"]}}"#,
        ));
        res.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        res.headers_mut()
            .insert("etag", http::HeaderValue::from_static("\"v1\""));
        res
    })
    .await;
    let gw = start(
        &format!(
            "  echo:\n    endpoints: [\"{}\"]\n  api:\n    endpoints: [\"{}\"]\n",
            echo.addr(),
            json_api.addr()
        ),
        "  - name: edit\n    match: { path_prefix: /edit }\n    upstream: echo\n    transform:\n      request_body: { json: { remove: [/debug], set: { /source: gateway, /meta/v: 2 } } }\n  - name: soap\n    match: { path_prefix: /soap }\n    upstream: echo\n    transform:\n      request_body: { convert: xml_to_json }\n  - name: legacy\n    match: { path_prefix: /legacy }\n    upstream: api\n    transform:\n      response_body: { json: { remove: [/order/secret] }, convert: json_to_xml }\n",
    );
    let a = addr(&gw);
    let res = send(a, "POST", "/edit", JSON, r#"{"debug":true,"name":"tea"}"#).await;
    assert_eq!(status(&res), 200, "{res}");
    let forwarded: serde_json::Value = serde_json::from_str(body_of(&res)).unwrap();
    assert_eq!(
        forwarded,
        serde_json::json!({"name": "tea", "source": "gateway", "meta": {"v": 2}})
    );
    // A body the edits cannot read is the client's error.
    let res = send(a, "POST", "/edit", JSON, r#"{"a":1,"a":2}"#).await;
    assert_eq!(status(&res), 400, "{res}");
    // Other content types pass through untouched.
    let res = send(a, "POST", "/edit", "content-type: text/plain\r\n", "as is").await;
    assert_eq!(body_of(&res), "as is");

    let res = send(
        a,
        "POST",
        "/soap",
        "content-type: text/xml\r\n",
        r#"<order id="7"><item>a</item><item>b</item></order>"#,
    )
    .await;
    assert_eq!(status(&res), 200, "{res}");
    let forwarded: serde_json::Value = serde_json::from_str(body_of(&res)).unwrap();
    assert_eq!(
        forwarded,
        serde_json::json!({"order": {"@id": "7", "item": ["a", "b"]}})
    );
    // XXE and billion laughs never reach the parser's entity expansion: refused.
    for hostile in [
        r#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>"#,
        r#"<!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><l>&b;</l>"#,
        "<x>&undefined;</x>",
    ] {
        let res = send(
            a,
            "POST",
            "/soap",
            "content-type: application/xml\r\n",
            hostile,
        )
        .await;
        assert_eq!(status(&res), 400, "{hostile}: {res}");
        assert!(!res.contains("root:"), "{res}");
    }

    let res = send(a, "GET", "/legacy", "", "").await;
    assert_eq!(status(&res), 200, "{res}");
    let lower = res.to_ascii_lowercase();
    assert!(lower.contains("content-type: application/xml"), "{res}");
    assert!(
        !lower.contains("etag:"),
        "the upstream's validator no longer applies: {res}"
    );
    let xml = body_of(&res);
    assert!(
        xml.contains("<id>7</id>") && xml.contains("<items>a</items><items>b</items>"),
        "{xml}"
    );
    assert!(!xml.contains("s3cr3t"), "{xml}");
    // HEAD has no body to transform: answered with the headers a GET would get.
    let head = send(a, "HEAD", "/legacy", "", "").await;
    assert_eq!(status(&head), 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/xml"),
        "{head}"
    );
    assert_eq!(
        json_api.last_request().headers["accept-encoding"],
        "identity",
        "a body to transform is asked for uncompressed"
    );
}

#[tokio::test]
async fn versions_pick_the_upstream_and_lifecycle_from_path_header_or_accept() {
    let v1 = TestUpstream::fixed("v1").await;
    let v2 = TestUpstream::fixed("v2").await;
    let gw = start(
        &format!(
            "  v1:\n    endpoints: [\"{}\"]\n  v2:\n    endpoints: [\"{}\"]\n",
            v1.addr(),
            v2.addr()
        ),
        "  - name: orders\n    upstream: v2\n    versions:\n      from:\n        - path: { pattern: \"v{version}\", strip: true }\n        - header: api-version\n        - accept: application/vnd.shop.v{version}+json\n      default: \"2\"\n      map:\n        \"1\": { upstream: v1, deprecated_at: 2026-01-01, sunset_at: 2099-01-01, successor: /v2/orders }\n        \"2\": {}\n        \"0\": { upstream: v1, sunset_at: 2020-01-01 }\n",
    );
    let a = addr(&gw);
    let res = send(a, "GET", "/v1/orders?x=1", "", "").await;
    assert_eq!(body_of(&res), "v1", "{res}");
    assert_eq!(
        v1.last_request().uri,
        "/orders?x=1",
        "the version segment is stripped"
    );
    let lower = res.to_ascii_lowercase();
    assert!(lower.contains("deprecation: @1767225600"), "{res}");
    assert!(
        lower.contains("sunset:") && lower.contains("successor-version"),
        "{res}"
    );
    assert!(lower.contains("vary: api-version, accept"), "{res}");

    assert_eq!(
        body_of(&send(a, "GET", "/orders", "api-version: 1\r\n", "").await),
        "v1"
    );
    let accept = "accept: application/vnd.shop.v1+json;q=0.4, application/vnd.shop.v2+json\r\n";
    assert_eq!(body_of(&send(a, "GET", "/orders", accept, "").await), "v2");
    let res = send(a, "GET", "/orders", "", "").await;
    assert_eq!(body_of(&res), "v2", "the default");
    assert!(!res.to_ascii_lowercase().contains("deprecation:"), "{res}");
    assert_eq!(v2.last_request().uri, "/orders");

    // Unknown versions: 404 in the path, 400 in a header, 406 in Accept; retired: 410.
    assert_eq!(status(&send(a, "GET", "/v9/orders", "", "").await), 404);
    let res = send(a, "GET", "/orders", "api-version: 9\r\n", "").await;
    assert_eq!(status(&res), 400, "{res}");
    assert!(problem(&res)["versions"].is_array(), "{res}");
    let res = send(
        a,
        "GET",
        "/orders",
        "accept: application/vnd.shop.v9+json\r\n",
        "",
    )
    .await;
    assert_eq!(status(&res), 406, "{res}");
    assert_eq!(status(&send(a, "GET", "/v0/orders", "", "").await), 410);
}

#[test]
fn bad_validation_transform_and_version_config_names_the_field() {
    for (route, want) in [
        (
            "    validate: { body: { type: nope } }",
            "routes[0].validate.body",
        ),
        (
            "    validate: { body: { $ref: \"https://example.com/s.json\" } }",
            "routes[0].validate.body",
        ),
        (
            "    validate: { openapi: /nonexistent/api.yaml }",
            "routes[0].validate.openapi",
        ),
        ("    validate: {}", "routes[0].validate"),
        (
            "    transform: { request_body: { json: { set: { \"no-slash\": 1 } } } }",
            "routes[0].transform.request_body.json.set.no-slash",
        ),
        (
            "    transform: { response_body: {} }",
            "routes[0].transform.response_body",
        ),
        (
            "    versions: { from: [ { header: \"bad header\" } ], map: { \"1\": {} } }",
            "routes[0].versions.from[0]",
        ),
        (
            "    versions: { from: [ { header: v } ], map: { \"1\": { upstream: nope } } }",
            "routes[0].versions.map.1.upstream",
        ),
        (
            "    versions: { from: [ { header: v } ], default: \"3\", map: { \"1\": {} } }",
            "routes[0].versions",
        ),
        (
            "    versions: { from: [ { header: v } ], map: { \"1\": { sunset_at: soon } } }",
            "routes[0].versions.map.1.sunset_at",
        ),
        (
            "    cache: {}\n    aggregate: { parts: [ { name: a, upstream: up, path: /a } ] }",
            "routes[0].aggregate",
        ),
        (
            "    aggregate: { parts: [ { name: a, upstream: nope, path: /a } ] }",
            "routes[0].aggregate.parts[0].upstream",
        ),
        (
            "    aggregate: { parts: [ { name: a, upstream: up, path: \"/a?b\" } ] }",
            "routes[0].aggregate.parts[0].path",
        ),
        (
            "    aggregate: { parts: [ { name: a, upstream: up, path: /a }, { name: a, upstream: up, path: /b } ] }",
            "routes[0].aggregate",
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
async fn aggregation_fans_out_and_composes_or_reports_failed_parts() {
    let json = |body: &'static str| {
        move |_req: http::Request<hyper::body::Incoming>| async move {
            let mut res = http::Response::new(gateway_test::full(body));
            res.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/json"),
            );
            res
        }
    };
    let users = TestUpstream::start(json(r#"{"id":"42","name":"Ada"}"#)).await;
    let orders = TestUpstream::start(json(r#"[{"id":1},{"id":2}]"#)).await;
    let (stuck, _gate) = TestUpstream::gated().await;
    let broken = TestUpstream::fixed("not json").await;
    let gw = start(
        &format!(
            "  users:\n    endpoints: [\"{}\"]\n  orders:\n    endpoints: [\"{}\"]\n  stuck:\n    endpoints: [\"{}\"]\n  broken:\n    endpoints: [\"{}\"]\n",
            users.addr(),
            orders.addr(),
            stuck.addr(),
            broken.addr()
        ),
        "  - name: dashboard\n    match: { path_template: \"/dashboard/{id}\" }\n    upstream: users\n    aggregate:\n      on_failure: omit\n      parts:\n        - { name: user, upstream: users, path: \"/users/${path.id}\", required: true }\n        - { name: orders, upstream: orders, path: \"/users/${path.id}/orders\" }\n        - { name: recommendations, upstream: stuck, path: /recs, timeout: 200ms }\n  - name: strict\n    match: { path_template: \"/strict/{id}\" }\n    upstream: users\n    aggregate:\n      parts:\n        - { name: user, upstream: users, path: \"/users/${path.id}\" }\n        - { name: extra, upstream: broken, path: /x }\n",
    );
    let a = addr(&gw);
    let res = send(a, "GET", "/dashboard/42", "x-trace-me: 1\r\n", "").await;
    assert_eq!(status(&res), 200, "{res}");
    let v: serde_json::Value = serde_json::from_str(body_of(&res)).unwrap();
    assert_eq!(v["user"]["name"], "Ada");
    assert_eq!(v["orders"][1]["id"], 2);
    assert!(v.get("recommendations").is_none(), "{v}");
    assert_eq!(v["_errors"]["recommendations"]["status"], 504, "{v}");
    assert_eq!(users.last_request().uri, "/users/42");
    assert_eq!(orders.last_request().uri, "/users/42/orders");
    assert_eq!(
        users.last_request().headers["x-trace-me"],
        "1",
        "the caller's headers go along"
    );

    // Under `fail`, one bad part fails the answer: a problem naming it, no upstream body echoed.
    let res = send(a, "GET", "/strict/42", "", "").await;
    assert_eq!(status(&res), 502, "{res}");
    let p = problem(&res);
    assert!(p["detail"].as_str().unwrap().contains("extra"), "{p}");
    assert!(!res.contains("not json"), "{res}");
}

/// A request whose body is sent chunked (no `Content-Length`).
async fn send_chunked(gw: std::net::SocketAddr, path: &str, headers: &str, body: &str) -> String {
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: shop\r\n{headers}transfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    raw_exchange(gw, req.as_bytes()).await
}

#[tokio::test]
async fn validation_cannot_be_sidestepped_by_framing_coding_or_content_type() {
    let up = TestUpstream::echo().await;
    let dir = std::env::temp_dir().join(format!("gateway-openapi-bypass-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let doc = dir.join("api.json");
    std::fs::write(
        &doc,
        r#"{"openapi":"3.1.0","info":{"title":"t","version":"1"},"paths":{"/notes":{"post":{"requestBody":{"required":false,"content":{"application/json":{"schema":{"type":"object","required":["text"]}}}},"responses":{"200":{"description":"ok"}}}}}}"#,
    )
    .unwrap();
    let gw = start(
        &one_upstream(up.addr()),
        &format!(
            "  - name: orders\n    match: {{ path_prefix: /orders }}\n    upstream: up\n    validate:\n      body: {{ type: object, required: [name] }}\n  - name: notes\n    match: {{ path_prefix: /notes }}\n    upstream: up\n    validate: {{ openapi: \"{}\" }}\n",
            doc.display()
        ),
    );
    let a = addr(&gw);
    // Chunked bodies are validated like any other.
    let res = send_chunked(a, "/orders", JSON, r#"{"other":1}"#).await;
    assert_eq!(status(&res), 422, "{res}");
    let res = send_chunked(a, "/orders", JSON, r#"{"name":"tea"}"#).await;
    assert_eq!(status(&res), 200, "{res}");
    assert!(res.ends_with(r#"{"name":"tea"}"#), "{res}");
    let res = send_chunked(a, "/notes", JSON, r#"{"other":1}"#).await;
    assert_eq!(
        status(&res),
        422,
        "an optional body is still checked when sent: {res}"
    );
    // A coded body, a second Content-Type, JSON in another charset: refused, not waved through.
    let res = send(
        a,
        "POST",
        "/orders",
        "content-type: application/json\r\ncontent-encoding: br\r\n",
        r#"{"name":"tea"}"#,
    )
    .await;
    assert_eq!(status(&res), 415, "{res}");
    let res = send(
        a,
        "POST",
        "/orders",
        "content-type: application/json\r\ncontent-type: text/plain\r\n",
        r#"{"name":"tea"}"#,
    )
    .await;
    assert_eq!(status(&res), 400, "{res}");
    let res = send(
        a,
        "POST",
        "/notes",
        "content-type: application/json; charset=latin1\r\n",
        r#"{"other":1}"#,
    )
    .await;
    assert_eq!(status(&res), 415, "{res}");
    // A declared length over the cap is refused before anything is read.
    let res = raw_exchange(
        a,
        b"POST /orders HTTP/1.1\r\nhost: shop\r\ncontent-type: application/json\r\ncontent-length: 99999999\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&res), 413, "{res}");
    // Methods without a body may go without one.
    assert_eq!(status(&send(a, "GET", "/orders", JSON, "").await), 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn response_edits_are_never_skipped_and_versions_keep_their_own_cache_entries() {
    let json_api = TestUpstream::start(|req: http::Request<hyper::body::Incoming>| async move {
        // An upstream that honours `Accept` and ranges, as many frameworks do.
        let xml = req
            .headers()
            .get("accept")
            .is_some_and(|a| a.as_bytes().starts_with(b"application/xml"));
        let mut res = http::Response::new(gateway_test::full(if xml {
            "<order><secret>s3cr3t</secret></order>"
        } else {
            r#"{"order":{"id":"7","secret":"s3cr3t"}}"#
        }));
        if req.headers().contains_key("range") {
            *res.status_mut() = http::StatusCode::PARTIAL_CONTENT;
        }
        res.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static(if xml {
                "application/xml"
            } else {
                "application/json"
            }),
        );
        res.headers_mut().insert(
            "cache-control",
            http::HeaderValue::from_static("max-age=60"),
        );
        res
    })
    .await;
    let v1 = TestUpstream::fixed("v1").await;
    let v2 = TestUpstream::fixed("v2").await;
    let gw = start(
        &format!(
            "  api:\n    endpoints: [\"{}\"]\n  v1:\n    endpoints: [\"{}\"]\n  v2:\n    endpoints: [\"{}\"]\n",
            json_api.addr(),
            v1.addr(),
            v2.addr()
        ),
        "  - name: redacted\n    match: { path_prefix: /orders }\n    upstream: api\n    transform:\n      response_body: { json: { remove: [/order/secret] } }\n  - name: versioned\n    match: { path_prefix: /api }\n    upstream: v2\n    cache: { default_ttl: 1h }\n    versions:\n      from: [ { header: api-version } ]\n      default: \"2\"\n      map: { \"1\": { upstream: v1 }, \"2\": {} }\n  - name: fanout\n    match: { path_prefix: /dash }\n    upstream: api\n    aggregate: { parts: [ { name: o, upstream: api, path: /orders } ] }\n",
    );
    let a = addr(&gw);
    let res = send(a, "GET", "/orders", "range: bytes=0-\r\n", "").await;
    assert_eq!(status(&res), 200, "{res}");
    assert!(!res.contains("s3cr3t"), "{res}");
    assert!(!json_api.last_request().headers.contains_key("range"));
    let res = send(a, "GET", "/orders", "accept: application/xml\r\n", "").await;
    assert_eq!(status(&res), 502, "{res}");
    assert!(!res.contains("s3cr3t"), "{res}");

    assert_eq!(
        body_of(&send(a, "GET", "/api/x", "api-version: 1\r\n", "").await),
        "v1"
    );
    assert_eq!(
        body_of(&send(a, "GET", "/api/x", "api-version: 2\r\n", "").await),
        "v2"
    );
    assert_eq!(
        body_of(&send(a, "GET", "/api/x", "api-version: 1\r\n", "").await),
        "v1"
    );

    let res = send(a, "POST", "/dash", JSON, "{}").await;
    assert_eq!(status(&res), 405, "{res}");
    assert!(
        res.to_ascii_lowercase().contains("allow: get, head"),
        "{res}"
    );
}
