//! Traces through the real gateway to a real OTLP/HTTP receiver (a local server decoding the
//! OTLP JSON it is sent): parent/child links from the client's `traceparent` through the server
//! span to one client span per upstream attempt, propagation to the upstream, and a dead
//! collector that only costs spans.

mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use gateway_test::{TestUpstream, get, raw_exchange};
use http_body_util::BodyExt;
use serde_json::Value;
use support::{addr, start};

/// An OTLP/HTTP receiver: every span of every `POST /v1/traces`, flattened.
async fn receiver() -> (TestUpstream, Arc<Mutex<Vec<Value>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let sink = spans.clone();
    let server = TestUpstream::start(move |req: http::Request<hyper::body::Incoming>| {
        let sink = sink.clone();
        async move {
            assert_eq!(req.uri().path(), "/v1/traces");
            assert_eq!(req.headers()["content-type"], "application/json");
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let v: Value = serde_json::from_slice(&body).expect("OTLP JSON");
            for rs in v["resourceSpans"].as_array().unwrap() {
                assert_eq!(
                    rs["resource"]["attributes"][0]["value"]["stringValue"],
                    "edge"
                );
                for ss in rs["scopeSpans"].as_array().unwrap() {
                    sink.lock()
                        .unwrap()
                        .extend(ss["spans"].as_array().unwrap().iter().cloned());
                }
            }
            http::Response::new(gateway_test::full("{}"))
        }
    })
    .await;
    (server, spans)
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == key)
        .map_or(&Value::Null, |a| &a["value"])
}

async fn wait_for(spans: &Arc<Mutex<Vec<Value>>>, n: usize) -> Vec<Value> {
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let now = spans.lock().unwrap().clone();
            if now.len() >= n {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    got.unwrap_or_else(|_| panic!("{} spans arrived, wanted {n}", spans.lock().unwrap().len()))
}

#[tokio::test]
async fn spans_link_client_server_and_every_upstream_attempt() {
    let (collector, spans) = receiver().await;
    let bad = TestUpstream::status(503, "unavailable").await;
    let good = TestUpstream::echo().await;
    let yaml = format!(
        "listeners:\n  - bind: 127.0.0.1:0\nworkers: 1\nupstreams:\n  up:\n    endpoints: [\"{}\", \"{}\"]\n    retry: {{ attempts: 2, backoff: 1ms, max_backoff: 2ms }}\nroutes:\n  - name: orders\n    upstream: up\nobserve:\n  tracing: {{ otlp_endpoint: \"http://{}\", trust_inbound: true, service_name: edge }}\n",
        bad.addr(),
        good.addr(),
        collector.addr()
    );
    let gw = start(&yaml, bad.addr());
    // The first attempt goes to the 503 endpoint (round robin starts there), the retry to the
    // echo: two client spans under one server span, under the client's span.
    let res = raw_exchange(
        addr(&gw),
        b"GET /orders/7 HTTP/1.1\r\nhost: x\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    let got = wait_for(&spans, 3).await;
    let server: Vec<&Value> = got.iter().filter(|s| s["kind"] == 2).collect();
    let clients: Vec<&Value> = got.iter().filter(|s| s["kind"] == 3).collect();
    assert_eq!((server.len(), clients.len()), (1, 2), "{got:#?}");
    let server = server[0];
    assert_eq!(server["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(server["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(server["name"], "GET orders");
    assert_eq!(attr(server, "http.route")["stringValue"], "orders");
    assert_eq!(attr(server, "http.response.status_code")["intValue"], "200");
    assert_eq!(attr(server, "url.path")["stringValue"], "/orders/7");
    for c in &clients {
        assert_eq!(c["traceId"], server["traceId"]);
        assert_eq!(
            c["parentSpanId"], server["spanId"],
            "attempts are children of the server span"
        );
        assert!(
            c["startTimeUnixNano"].as_str().unwrap()
                >= server["startTimeUnixNano"].as_str().unwrap()
        );
    }
    let statuses: Vec<&str> = clients
        .iter()
        .map(|c| {
            attr(c, "http.response.status_code")["intValue"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert!(
        statuses.contains(&"503") && statuses.contains(&"200"),
        "{statuses:?}"
    );
    let failed = clients
        .iter()
        .find(|c| attr(c, "http.response.status_code")["intValue"] == "503")
        .unwrap();
    assert_eq!(failed["status"]["code"], 2, "a 5xx attempt is an error");
    // The upstream saw the successful attempt's span as its parent.
    let ok = clients
        .iter()
        .find(|c| attr(c, "http.response.status_code")["intValue"] == "200")
        .unwrap();
    let sent = good.last_request().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        sent,
        format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
            ok["spanId"].as_str().unwrap()
        )
    );
}

#[tokio::test]
async fn untrusted_context_is_replaced_and_a_dead_collector_only_drops_spans() {
    let up = TestUpstream::echo().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let yaml = format!(
        "listeners:\n  - bind: 127.0.0.1:0\n  - bind: 127.0.0.1:0\n    trust_trace_context: true\nadmin:\n  bind: 127.0.0.1:0\nworkers: 1\nupstreams:\n  up:\n    endpoints: [\"{{UPSTREAM}}\"]\nroutes:\n  - name: all\n    upstream: up\nobserve:\n  tracing: {{ otlp_endpoint: \"http://{dead}\", b3: true }}\n"
    );
    let gw = start(&yaml, up.addr());
    for _ in 0..20 {
        let res = raw_exchange(
            addr(&gw),
            b"GET / HTTP/1.1\r\nhost: x\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ntracestate: vendor=x\r\nbaggage: user=alice\r\nx-b3-traceid: 463ac35c9f6413ad\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(
            res.starts_with("HTTP/1.1 200"),
            "requests never wait for the collector"
        );
    }
    let seen = up.last_request().headers;
    let sent = seen["traceparent"].to_str().unwrap();
    assert!(
        !sent.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
        "a new trace: {sent}"
    );
    assert!(seen.get("tracestate").is_none());
    assert!(seen.get("baggage").is_none() && seen.get("x-b3-traceid").is_none());
    // B3 goes out too, with the same ids.
    let b3 = seen["b3"].to_str().unwrap();
    assert!(
        sent.contains(&b3[..32]) && sent.contains(&b3[33..49]),
        "{sent} {b3}"
    );
    // The second listener trusts inbound context: its trace continues (B3 accepted as well).
    let trusted = gw.listen_addrs()[1];
    raw_exchange(
        trusted,
        b"GET / HTTP/1.1\r\nhost: x\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nbaggage: user=alice\r\nconnection: close\r\n\r\n",
    )
    .await;
    let seen = up.last_request().headers;
    assert!(
        seen["traceparent"]
            .to_str()
            .unwrap()
            .contains("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(seen["baggage"], "user=alice");
    raw_exchange(
        trusted,
        b"GET / HTTP/1.1\r\nhost: x\r\nb3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1\r\nconnection: close\r\n\r\n",
    )
    .await;
    let seen = up.last_request().headers;
    assert!(
        seen["traceparent"]
            .to_str()
            .unwrap()
            .contains("80f198ee56343ba864fe8b2a57d3eff7")
    );
    // Every span is eventually counted as dropped (22 server + 22 client).
    let dropped = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let text = get(gw.admin_addr().unwrap(), "/metrics")
                .await
                .text()
                .to_owned();
            let n: f64 = text
                .lines()
                .find(|l| l.starts_with("gateway_otlp_spans_dropped "))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            if n >= 40.0 {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(dropped.is_ok(), "the drops are counted");
}

#[tokio::test]
async fn metrics_are_pushed_over_otlp_too() {
    let batches = Arc::new(Mutex::new(Vec::<Value>::new()));
    let sink = batches.clone();
    let collector = TestUpstream::start(move |req: http::Request<hyper::body::Incoming>| {
        let sink = sink.clone();
        async move {
            assert_eq!(req.uri().path(), "/v1/metrics");
            let body = req.into_body().collect().await.unwrap().to_bytes();
            sink.lock()
                .unwrap()
                .push(serde_json::from_slice(&body).expect("OTLP JSON"));
            http::Response::new(gateway_test::full("{}"))
        }
    })
    .await;
    let up = TestUpstream::fixed("ok").await;
    let yaml = format!(
        "listeners:\n  - bind: 127.0.0.1:0\nworkers: 1\nupstreams:\n  up:\n    endpoints: [\"{{UPSTREAM}}\"]\nroutes:\n  - name: all\n    upstream: up\nobserve:\n  metrics: {{ otlp_endpoint: \"http://{}\", otlp_interval: 100ms }}\n",
        collector.addr()
    );
    let gw = start(&yaml, up.addr());
    for _ in 0..3 {
        assert_eq!(get(addr(&gw), "/x").await.status, 200);
    }
    // Wait for a push that includes the three requests.
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let pushed = batches.lock().unwrap().clone();
            for b in pushed.iter().rev() {
                let metrics = &b["resourceMetrics"][0]["scopeMetrics"][0]["metrics"];
                let Some(h) = metrics
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|m| m["name"] == "http.server.request.duration")
                else {
                    continue;
                };
                let point = &h["histogram"]["dataPoints"][0];
                if point["count"] == "3" {
                    return point.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a push with the three requests");
    assert_eq!(found["bucketCounts"].as_array().unwrap().len(), 15);
    let route = found["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == "http.route")
        .unwrap();
    assert_eq!(route["value"]["stringValue"], "all");
}
