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
    let err = support::config_error(&yaml);
    if err.is_empty() {
        String::from("compiled")
    } else {
        err
    }
}

async fn view(admin: std::net::SocketAddr) -> serde_json::Value {
    serde_json::from_str(get(admin, "/upstreams").await.text()).unwrap()
}

/// Polls `GET /upstreams` until `done` holds, for at most 10 s: background work (a health
/// check, a reload, a DNS answer) lands on its own schedule. Panics with `what` otherwise.
async fn view_until(
    admin: std::net::SocketAddr,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let v = view(admin).await;
            if done(&v) {
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}"))
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
    let gw = support::launch(&yaml);
    let (a, admin) = (addr(&gw), gw.admin_addr().unwrap());

    let v = view(admin).await;
    assert_eq!(v[0]["balance"], "WeightedRoundRobin");
    assert_eq!(v[0]["endpoints"][0]["weight"], 3);
    assert_eq!(v[0]["endpoints"][1]["available"], true);

    // The flaky endpoint fails its checks: out of rotation for every worker.
    status.store(503, Ordering::SeqCst);
    view_until(admin, "the health check never failed the endpoint", |v| {
        v[0]["endpoints"][1]["healthy"] == false
    })
    .await;
    for _ in 0..8 {
        assert_eq!(get(a, "/x").await.text(), "good");
    }
    let v = view(admin).await;
    assert_eq!(v[0]["endpoints"][1]["available"], false);
    assert_eq!(v[0]["endpoints"][0]["in_flight"], 0);
    assert!(v[0]["endpoints"][0]["latency_ms"].as_f64().unwrap() > 0.0);
    let metrics = get(admin, "/metrics").await;
    let flaky_label = format!("upstream=\"up\",endpoint=\"{}\"", flaky.addr());
    assert!(
        metrics.text().contains(&format!(
            "gateway_upstream_endpoint_available{{{flaky_label}}} 0"
        )),
        "{}",
        metrics.text()
    );
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
        (
            "    endpoints: [\"127.0.0.1:1\"]\n    sticky: { cookie: \"a b\" }",
            "upstreams.up.sticky.cookie",
        ),
    ] {
        let err = compile_error(block);
        assert!(err.contains(want), "{block}: {err}");
        assert!(err.contains("t.yaml"), "{err}");
    }
    assert_eq!(
        compile_error(
            "    endpoints: [\"127.0.0.1:1 weight=5\"]\n    balance: { hash: client_ip }\n    slow_start: 30s\n    sticky: { cookie: gw, max_age: 1h }\n    panic_threshold: 0%\n    outlier: { success_rate: { min_requests: 10 } }"
        ),
        "compiled"
    );
}

#[tokio::test]
async fn a_split_sends_its_share_keeps_callers_sticky_and_honours_the_override_header() {
    let stable = TestUpstream::fixed("stable").await;
    let canary = TestUpstream::fixed("canary").await;
    let yaml = format!(
        "listeners:\n  - bind: 127.0.0.1:0\nworkers: 1\nupstreams:\n  v1:\n    endpoints: [\"{}\"]\n  v2:\n    endpoints: [\"{}\"]\nroutes:\n  - name: sticky\n    match: {{ path_prefix: /sticky }}\n    upstream: v1\n    split: {{ to: [{{ upstream: v2, share: 20% }}], sticky: {{ header: x-user }}, override_header: x-canary }}\n    cache: {{ default_ttl: 60s }}\n  - name: random\n    upstream: v1\n    split: {{ to: [{{ upstream: v2, share: 25% }}] }}\n",
        stable.addr(),
        canary.addr()
    );
    let gw = support::launch(&yaml);
    let a = addr(&gw);
    let send = |path: &'static str, headers: Vec<(String, String)>| async move {
        let mut req = http::Request::get(format!("http://{a}{path}"));
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        gateway_test::send(
            &gateway_test::client(),
            req.body(gateway_test::full("")).unwrap(),
        )
        .await
        .text()
        .to_owned()
    };

    // Without stickiness: about a quarter goes to the canary.
    let mut canaries = 0;
    for _ in 0..400 {
        canaries += usize::from(send("/r", vec![]).await == "canary");
    }
    assert!((60..=140).contains(&canaries), "{canaries} of 400");

    // Sticky by user: each user always lands on the same side, and about 20% of users are
    // canaries.
    let mut canary_users = 0;
    for user in 0..200 {
        let h = || vec![("x-user".to_owned(), user.to_string())];
        let first = send("/sticky/a", h()).await;
        for _ in 0..2 {
            assert_eq!(send("/sticky/a", h()).await, first, "user {user} moved");
        }
        canary_users += usize::from(first == "canary");
    }
    assert!((20..=60).contains(&canary_users), "{canary_users} of 200");

    // A tester forces a side; the header does not reach the upstream, and each side's cached
    // answers stay its own.
    let forced = vec![
        ("x-canary".to_owned(), "v2".to_owned()),
        ("x-user".to_owned(), "tester".to_owned()),
    ];
    assert_eq!(send("/sticky/b", forced.clone()).await, "canary");
    assert_eq!(send("/sticky/b", forced).await, "canary");
    assert!(
        canary
            .requests()
            .iter()
            .all(|r| !r.headers.contains_key("x-canary"))
    );
    let back = vec![("x-canary".to_owned(), "v1".to_owned())];
    assert_eq!(send("/sticky/b", back).await, "stable");
    let unknown = vec![
        ("x-canary".to_owned(), "v9".to_owned()),
        ("x-user".to_owned(), "1".to_owned()),
    ];
    let plain = send("/sticky/a", vec![("x-user".to_owned(), "1".to_owned())]).await;
    assert_eq!(
        send("/sticky/a", unknown).await,
        plain,
        "an unknown name changes nothing"
    );
}

#[test]
fn bad_split_config_names_the_field() {
    let base = "listeners:\n  - bind: 127.0.0.1:0\nupstreams:\n  v1:\n    endpoints: [\"127.0.0.1:1\"]\n  v2:\n    endpoints: [\"127.0.0.1:2\"]\nroutes:\n  - name: r\n    upstream: v1\n";
    for (split, want) in [
        (
            "    split: { to: [{ upstream: v3, share: 5% }] }",
            "routes[0].split.to[0].upstream",
        ),
        (
            "    split: { to: [{ upstream: v2, share: 60% }, { upstream: v2, share: 50% }] }",
            "routes[0].split.to",
        ),
        (
            "    split: { to: [{ upstream: v2, share: 5% }], sticky: { header: \"a b\" } }",
            "routes[0].split.sticky.header",
        ),
    ] {
        let yaml = format!("{base}{split}\n");
        let err = support::config_error(&yaml);
        assert!(err.contains(want), "{split}: {err}");
    }
}

#[tokio::test]
async fn an_endpoints_file_moves_traffic_without_dropping_requests_in_flight() {
    let (old, mut gate) = TestUpstream::gated().await;
    let new = TestUpstream::fixed("new").await;
    let dir = std::env::temp_dir().join(format!("gateway-discovery-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let list = dir.join("endpoints.txt");
    std::fs::write(&list, format!("# the orders pool\n{}\n", old.addr())).unwrap();
    let yaml = format!(
        "listeners:\n  - bind: 127.0.0.1:0\nadmin:\n  bind: 127.0.0.1:0\nworkers: 1\nreload: {{ watch: true, interval: 20ms }}\nupstreams:\n  up:\n    endpoints_file: \"{}\"\nroutes:\n  - name: all\n    upstream: up\n",
        list.display()
    );
    let file = dir.join("gateway.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let config = gateway::Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
    let name = file.display().to_string();
    let gw = gateway::start(gateway::Compiled::new(&config, &name).unwrap()).unwrap();
    gw.set_config_file(&file);
    let a = addr(&gw);

    // A request is held by the old endpoint while the file moves the pool to the new one.
    let held = tokio::spawn(async move { get(a, "/slow").await });
    gate.arrived().await;
    std::fs::write(&list, format!("{} weight=2\n", new.addr())).unwrap();
    let moved = view_until(
        gw.admin_addr().unwrap(),
        "the file change was not applied",
        |v| v[0]["endpoints"][0]["endpoint"] == new.addr().to_string(),
    )
    .await;
    assert_eq!(moved[0]["endpoints"][0]["weight"], 2);
    assert_eq!(get(a, "/x").await.text(), "new");
    gate.open();
    assert_eq!(
        held.await.unwrap().text(),
        "done",
        "the request in flight finished"
    );

    // A broken file is refused: the running endpoints stay, and the error names the line.
    std::fs::write(&list, format!("{}\nnot an endpoint!\n", new.addr())).unwrap();
    let err = support::config_error(&yaml);
    assert!(
        err.contains("endpoints_file") && err.contains(":2)"),
        "{err}"
    );
    assert_eq!(get(a, "/x").await.text(), "new");
    let _ = std::fs::remove_dir_all(&dir);
}

// Compiling waits (bounded) for the first DNS answer: the test's DNS server runs on another
// worker thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_discovery_follows_srv_records_and_keeps_endpoints_through_dns_failures() {
    use gateway_test::dns::{Record, TestDns};
    let (old, mut gate) = TestUpstream::gated().await;
    let new = TestUpstream::fixed("new").await;
    let dns = TestDns::start().await;
    let srv = |port, weight| Record::Srv {
        priority: 0,
        weight,
        port,
        target: "pool.test".into(),
    };
    dns.set(
        "pool.test",
        0,
        vec![Record::A("127.0.0.1".parse().unwrap())],
    );
    dns.set("_orders._tcp.test", 0, vec![srv(old.addr().port(), 1)]);
    let yaml = format!(
        "listeners:\n  - bind: 127.0.0.1:0\nadmin:\n  bind: 127.0.0.1:0\nworkers: 1\nupstreams:\n  up:\n    discovery:\n      dns: {{ srv: _orders._tcp.test, servers: [\"{}\"], family: ipv4, min_ttl: 20ms }}\n    breaker: {{ consecutive_failures: 3, open_for: 1h }}\nroutes:\n  - name: all\n    upstream: up\n",
        dns.addr()
    );
    let gw = support::launch(&yaml);
    let (a, admin) = (addr(&gw), gw.admin_addr().unwrap());
    let v = view(admin).await;
    assert_eq!(v[0]["endpoints"][0]["endpoint"], old.addr().to_string());
    assert_eq!(v[0]["discovery"]["source"], "srv _orders._tcp.test");

    // A request is held by the old endpoint while DNS moves the pool to the new one.
    let held = tokio::spawn(async move { get(a, "/slow").await });
    gate.arrived().await;
    dns.set("_orders._tcp.test", 0, vec![srv(new.addr().port(), 4)]);
    let moved = view_until(admin, "the DNS change was not applied", |v| {
        v[0]["endpoints"][0]["endpoint"] == new.addr().to_string()
    })
    .await;
    assert_eq!(moved[0]["endpoints"][0]["weight"], 4);
    assert_eq!(moved[0]["endpoints"].as_array().unwrap().len(), 1);
    assert_eq!(get(a, "/x").await.text(), "new");
    gate.open();
    assert_eq!(
        held.await.unwrap().text(),
        "done",
        "the request in flight finished"
    );

    // Answers that name the same endpoints change nothing: no re-apply.
    let generation = |v: serde_json::Value| v["reload"]["generation"].as_u64().unwrap();
    let config = |admin| async move {
        serde_json::from_str::<serde_json::Value>(get(admin, "/config").await.text()).unwrap()
    };
    let applied = generation(config(admin).await);
    let queries = dns.queries();
    while dns.queries() < queries + 10 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(generation(config(admin).await), applied);
    // The upstream is the same one over a new list: its breaker state carries over.
    let force = |state: &'static str| {
        let body = format!("{{\"state\":\"{state}\"}}");
        let req = format!(
            "POST /upstreams/up/breaker HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        async move { gateway_test::raw_exchange(admin, req.as_bytes()).await }
    };
    let forced = force("open").await;
    assert!(forced.contains("\"forced_open\""), "{forced}");
    dns.set(
        "_orders._tcp.test",
        0,
        vec![srv(new.addr().port(), 4), srv(old.addr().port(), 1)],
    );
    view_until(admin, "the second endpoint was not added", |v| {
        v[0]["endpoints"].as_array().is_some_and(|e| e.len() == 2)
    })
    .await;
    assert_eq!(view(admin).await[0]["breaker"]["state"], "forced_open");
    assert_eq!(
        get(a, "/x").await.status,
        503,
        "the forced-open breaker still refuses"
    );
    force("reset").await;

    // DNS fails: the endpoints stay, the errors are counted and shown.
    dns.fail_with(Some(2));
    let failing = view_until(admin, "the DNS failure was not seen", |v| {
        v[0]["discovery"]["errors"].as_u64().unwrap_or(0) > 0
    })
    .await;
    assert!(
        failing[0]["discovery"]["last_error"]
            .as_str()
            .unwrap()
            .contains("SERVFAIL"),
        "{failing}"
    );
    assert_eq!(failing[0]["endpoints"].as_array().unwrap().len(), 2);
    assert_eq!(get(a, "/x").await.status, 200);
}

// Compiling waits (bounded) for the first DNS answer: the test's DNS server runs on another
// worker thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_discovery_config_errors_name_the_field() {
    use gateway_test::dns::TestDns;
    let dns = TestDns::start().await;
    let server = dns.addr();
    // NXDOMAIN at start is a configuration error, with the name.
    let err = compile_error(&format!(
        "    discovery:\n      dns: {{ name: missing.test, port: 80, servers: [\"{server}\"] }}"
    ));
    assert!(
        err.contains("upstreams.up.discovery.dns") && err.contains("missing.test"),
        "{err}"
    );
    for (block, want) in [
        ("dns: { name: a.test }", "needs a `port`"),
        (
            "dns: { name: a.test, port: 80, srv: _x._tcp.test }",
            "either",
        ),
        (
            "dns: { srv: _x._tcp.test, servers: [\"nope\"] }",
            "servers[0]",
        ),
        (
            "dns: { srv: _x._tcp.test, min_ttl: 10s, max_ttl: 1s }",
            "min_ttl",
        ),
    ] {
        let err = compile_error(&format!("    discovery:\n      {block}"));
        assert!(err.contains(want), "{block}: {err}");
    }
}

// Compiling waits (bounded) for the first DNS answers: the test's DNS server runs on another
// worker thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_upstreams_follow_their_own_names() {
    use gateway_test::dns::{Record, TestDns};
    let (one, two) = (
        TestUpstream::fixed("one").await,
        TestUpstream::fixed("two").await,
    );
    let dns = TestDns::start().await;
    dns.set("a.test", 30, vec![Record::A("127.0.0.1".parse().unwrap())]);
    dns.set("b.test", 30, vec![Record::A("127.0.0.1".parse().unwrap())]);
    let yaml = format!(
        "listeners:\n  - bind: 127.0.0.1:0\nadmin:\n  bind: 127.0.0.1:0\nworkers: 1\nupstreams:\n  one:\n    discovery: {{ dns: {{ name: a.test, port: {}, family: ipv4, servers: [\"{s}\"] }} }}\n  two:\n    discovery: {{ dns: {{ name: b.test, port: {}, family: ipv4, servers: [\"{s}\"] }} }}\nroutes:\n  - name: one\n    match: {{ path_prefix: /one }}\n    upstream: one\n  - name: two\n    upstream: two\n",
        one.addr().port(),
        two.addr().port(),
        s = dns.addr()
    );
    let gw = support::launch(&yaml);
    assert_eq!(get(addr(&gw), "/one").await.text(), "one");
    assert_eq!(get(addr(&gw), "/two").await.text(), "two");
    let v = view(gw.admin_addr().unwrap()).await;
    assert_eq!(
        v[0]["discovery"]["source"],
        format!("dns a.test:{}", one.addr().port())
    );
    assert_eq!(
        v[1]["discovery"]["source"],
        format!("dns b.test:{}", two.addr().port())
    );
}
