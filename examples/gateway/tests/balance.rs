//! Upstream balancing, health checks and outlier ejection through the real gateway, and the
//! admin view of every endpoint.

mod support;

use std::sync::atomic::Ordering;

use gateway_test::{TestUpstream, get};
use support::addr;

fn compile_error(upstream_block: &str) -> String {
    let yaml = format!(
        "listeners:\n  - bind: 127.0.0.1:0\nupstreams:\n  up:\n{upstream_block}\nroutes:\n  - name: all\n    upstream: up\n"
    );
    match gateway::Config::parse(&yaml, "t.yaml") {
        Err(e) => e.to_string(),
        Ok(config) => gateway::Compiled::new(&config, "t.yaml")
            .map(|_| String::from("compiled"))
            .unwrap_or_else(|e| e.to_string()),
    }
}

async fn view(admin: std::net::SocketAddr) -> serde_json::Value {
    serde_json::from_str(get(admin, "/upstreams").await.text()).unwrap()
}

#[tokio::test]
async fn weights_health_checks_and_ejections_through_the_gateway() {
    let good = TestUpstream::fixed("good").await;
    let (flaky, status) = TestUpstream::switchable(200).await;
    let yaml = format!(
        "listeners:\n  - bind: 127.0.0.1:0\nadmin:\n  bind: 127.0.0.1:0\nworkers: 2\nupstreams:\n  up:\n    endpoints: [\"{} weight=3\", \"{}\"]\n    balance: weighted_round_robin\n    health: {{ path: /healthz, expect: [200-299], interval: 20ms, timeout: 500ms, healthy_threshold: 1, unhealthy_threshold: 1, jitter: 0% }}\n    outlier: {{ consecutive_5xx: 2, max_ejection_percent: 50% }}\nroutes:\n  - name: all\n    upstream: up\n",
        good.addr(),
        flaky.addr()
    );
    let config = gateway::Config::parse(&yaml, "t.yaml").unwrap_or_else(|e| panic!("{e}"));
    let gw = gateway::start(gateway::Compiled::new(&config, "t.yaml").unwrap()).unwrap();
    let (a, admin) = (addr(&gw), gw.admin_addr().unwrap());

    let v = view(admin).await;
    assert_eq!(v[0]["balance"], "WeightedRoundRobin");
    assert_eq!(v[0]["endpoints"][0]["weight"], 3);
    assert_eq!(v[0]["endpoints"][1]["available"], true);

    // The flaky endpoint fails its checks: out of rotation for every worker.
    status.store(503, Ordering::SeqCst);
    let waited = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while view(admin).await[0]["endpoints"][1]["healthy"] != false {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "the health check never failed the endpoint");
    for _ in 0..8 {
        assert_eq!(get(a, "/x").await.text(), "good");
    }
    let v = view(admin).await;
    assert_eq!(v[0]["endpoints"][1]["available"], false);
    assert_eq!(v[0]["endpoints"][0]["in_flight"], 0);
    assert!(v[0]["endpoints"][0]["latency_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_balancing_config_names_the_field() {
    for (block, want) in [
        (
            "    endpoints: [\"127.0.0.1:1 weight=0\"]",
            "upstreams.up.endpoints[0]",
        ),
        (
            "    endpoints: [\"127.0.0.1:1\"]\n    balance: { hash: { header: \"no spaces\" } }",
            "upstreams.up.balance.hash.header",
        ),
        (
            "    endpoints: [\"127.0.0.1:1\"]\n    health: { path: healthz }",
            "upstreams.up.health.path",
        ),
        (
            "    endpoints: [\"127.0.0.1:1\"]\n    health: { path: /h, expect: [\"2xx\"] }",
            "upstreams.up.health.expect",
        ),
        (
            "    endpoints: [\"127.0.0.1:1\"]\n    balance: fastest",
            "balance",
        ),
    ] {
        let err = compile_error(block);
        assert!(err.contains(want), "{block}: {err}");
        assert!(err.contains("t.yaml"), "{err}");
    }
    assert_eq!(
        compile_error(
            "    endpoints: [\"127.0.0.1:1 weight=5\"]\n    balance: { hash: client_ip }\n    slow_start: 30s\n    panic_threshold: 0%\n    outlier: { success_rate: { min_requests: 10 } }"
        ),
        "compiled"
    );
}
