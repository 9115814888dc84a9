//! Request ids, `/metrics` and the access log through the real gateway.

mod support;

use std::time::Duration;

use gateway_auth::ApiKeyHash;
use gateway_test::{TestUpstream, get, raw_exchange};
use support::{addr, start};

fn config(log: &std::path::Path, bad: std::net::SocketAddr, good: std::net::SocketAddr) -> String {
    format!(
        "listeners:\n  - bind: 127.0.0.1:0\nadmin:\n  bind: 127.0.0.1:0\nworkers: 1\nupstreams:\n  up:\n    endpoints: [\"{{UPSTREAM}}\"]\n  flaky:\n    endpoints: [\"{bad}\", \"{good}\"]\n    retry: {{ attempts: 2, backoff: 1ms, max_backoff: 2ms }}\nroutes:\n  - name: flaky\n    match: {{ path: /flaky }}\n    upstream: flaky\n  - name: health\n    match: {{ path: /healthz }}\n    upstream: up\n  - name: api\n    match: {{ path_prefix: /api }}\n    upstream: up\n    auth: {{ any_of: [api_key] }}\n    rate_limit: {{ by: consumer, rate: 2/h }}\nconsumers:\n  - id: acme\n    api_keys: [\"{}\"]\nobserve:\n  access_log:\n    to: \"{}\"\n    headers: [user-agent, x-api-key]\n    exclude_routes: [health]\n",
        ApiKeyHash::of("acme-key"),
        log.display()
    )
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

async fn with_key(gw: std::net::SocketAddr, path: &str) -> String {
    raw_exchange(
        gw,
        format!(
            "GET {path} HTTP/1.1\r\nhost: x\r\nx-api-key: acme-key\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
}

#[tokio::test]
async fn metrics_logs_and_request_ids_through_the_gateway() {
    let up = TestUpstream::echo().await;
    let log = std::env::temp_dir().join(format!("gateway-observe-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let bad = TestUpstream::status(503, "unavailable").await;
    let good = TestUpstream::fixed("ok").await;
    let gw = start(&config(&log, bad.addr(), good.addr()), up.addr());
    let admin = gw.admin_addr().unwrap();

    // Request ids: a client's is replaced (not trusted by default), the upstream sees ours.
    let res = raw_exchange(
        addr(&gw),
        b"GET /api/orders?api_key=no HTTP/1.1\r\nhost: x\r\nx-api-key: acme-key\r\nx-request-id: forged\r\nuser-agent: test\"\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    let id = res
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("a request id")
        .trim()
        .to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(up.last_request().headers["x-request-id"], id.as_str());

    // A known mix: one more admitted, one rate limited, one unauthenticated, scanners, health.
    assert!(
        with_key(addr(&gw), "/api/a")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        with_key(addr(&gw), "/api/a")
            .await
            .starts_with("HTTP/1.1 429")
    );
    assert_eq!(get(addr(&gw), "/api/a").await.status, 401);
    for i in 0..500 {
        assert_eq!(
            get(addr(&gw), &format!("/wp-admin/{i}.php")).await.status,
            404
        );
    }
    assert_eq!(get(addr(&gw), "/healthz").await.status, 200);
    // Retried once: the 503 endpoint first, then the good one.
    assert_eq!(get(addr(&gw), "/flaky").await.status, 200);

    let res = get(admin, "/metrics").await;
    assert!(
        res.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = res.text();
    let count = |status: &str, route: &str| {
        metric(
            text,
            &format!(
                r#"http_server_request_duration_seconds_count{{http_request_method="GET",http_response_status_code="{status}",http_route="{route}"}}"#
            ),
        )
    };
    assert_eq!(count("200", "api"), 2.0);
    assert_eq!(count("429", "api"), 1.0);
    assert_eq!(count("401", "api"), 1.0);
    assert_eq!(
        count("404", "unmatched"),
        500.0,
        "one series for every scanner path"
    );
    assert!(!text.contains("wp-admin"));
    assert_eq!(
        metric(
            text,
            r#"gateway_auth_failures_total{provider="any",reason="no credential",http_route="api"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            text,
            r#"gateway_ratelimit_decisions_total{decision="allowed",http_route="api"}"#
        ),
        2.0
    );
    assert_eq!(
        metric(
            text,
            r#"gateway_ratelimit_decisions_total{decision="limited",http_route="api"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            text,
            &format!(
                r#"http_client_request_duration_seconds_count{{server_address="{}",http_response_status_code="200",http_route="api"}}"#,
                up.addr()
            )
        ),
        2.0,
        "upstream time by endpoint"
    );
    assert_eq!(
        metric(
            text,
            r#"gateway_rejections_total{reason="rate_limited",http_route="api"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            text,
            r#"gateway_rejections_total{reason="unauthenticated",http_route="api"}"#
        ),
        1.0
    );

    // The access log: JSON lines, the health route left out, credentials redacted.
    let lines = {
        let mut lines = Vec::new();
        for _ in 0..100 {
            lines = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect();
            if lines.len() >= 505 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        lines
    };
    assert_eq!(lines.len(), 505, "every request but the health check");
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["request_id"], id.as_str());
    assert_eq!(first["route"], "api");
    assert_eq!(first["consumer"], "acme");
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert_eq!(first["path"], "/api/orders");
    assert_eq!(first["header.x-api-key"], "[redacted]");
    assert_eq!(first["header.user-agent"], "test\"");
    assert!(!lines.iter().any(|l| l.contains("acme-key")));
    assert_eq!(first["upstream"], up.addr().to_string());
    assert!(first["upstream_duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(first["retries"], 0);
    assert_eq!(first["rate_limit"], "allowed");
    let flaky: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(flaky["route"], "flaky");
    assert_eq!(flaky["retries"], 1);
    assert_eq!(flaky["upstream"], good.addr().to_string());
    let limited: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
    assert_eq!(limited["status"], 429);
    assert_eq!(limited["flags"], "RL");
    assert_eq!(limited["rate_limit"], "limited");
    let _ = std::fs::remove_file(&log);
}
