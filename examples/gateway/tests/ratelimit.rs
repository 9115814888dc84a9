//! Rate limits through the real gateway: in process, and shared by two gateway processes
//! through one Redis.

mod support;

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use gateway_test::{TestRedis, TestUpstream, get, raw_exchange};
use http::StatusCode;
use support::{addr, free_ports, simple, start};

#[tokio::test]
async fn a_route_limit_refuses_with_429_and_reports_headers() {
    let up = TestUpstream::fixed("ok").await;
    let yaml = simple("    rate_limit: { by: ip, rate: 3/min, headers: ietf }\n");
    let gw = start(&yaml, up.addr());
    for remaining in [2, 1, 0] {
        let res = get(addr(&gw), "/a").await;
        assert_eq!(res.status, StatusCode::OK);
        assert_eq!(
            res.headers["ratelimit-policy"],
            "\"route:all:0:rate\";q=3;w=60"
        );
        let rl = res.headers["ratelimit"].to_str().unwrap();
        assert!(
            rl.starts_with(&format!("\"route:all:0:rate\";r={remaining};t=")),
            "{rl}"
        );
    }
    let refused = get(addr(&gw), "/a").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers["content-type"], "application/problem+json");
    assert_eq!(refused.headers["retry-after"], "20");
    let body: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(body["limit"], "route:all:0:rate");
    assert_eq!(
        up.requests().len(),
        3,
        "refused requests never reach the upstream"
    );
}

/// Sends `GET path` with `X-Forwarded-For: client` (the gateways here trust 127.0.0.1) and returns
/// the status code.
async fn status_from(gw: SocketAddr, path: &str, client: &str) -> String {
    let res = raw_exchange(
        gw,
        format!("GET {path} HTTP/1.1\r\nhost: x\r\nx-forwarded-for: {client}\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    res[9..12].to_owned()
}

#[tokio::test]
async fn path_spellings_from_different_clients_share_one_route_bucket() {
    let up = TestUpstream::fixed("ok").await;
    let config = |by: &str| {
        format!(
            "listeners:\n  - bind: 127.0.0.1:0\nworkers: 1\ntrusted_proxies: [127.0.0.1]\nupstreams:\n  up:\n    endpoints: [\"{{UPSTREAM}}\"]\nroutes:\n  - name: orders\n    match: {{ path_prefix: /api/orders }}\n    upstream: up\n    rate_limit: {{ by: {by}, rate: 3/min }}\n"
        )
    };
    let spellings = [
        "/api/orders",
        "/api//orders/",
        "/api/./orders",
        "/%61pi/orders",
        "/api/x/../orders",
    ];
    let gw = start(&config("route"), up.addr());
    let mut codes = Vec::new();
    for (i, path) in spellings.iter().enumerate() {
        codes.push(status_from(addr(&gw), path, &format!("203.0.113.{i}")).await);
    }
    assert_eq!(
        codes,
        ["200", "200", "200", "429", "429"],
        "one bucket for the route"
    );
    // The contrast: counted per client, five clients pass.
    let gw = start(&config("ip"), up.addr());
    let mut codes = Vec::new();
    for (i, path) in spellings.iter().enumerate() {
        codes.push(status_from(addr(&gw), path, &format!("203.0.113.{i}")).await);
    }
    assert_eq!(codes, ["200"; 5]);
}

#[tokio::test]
async fn without_authentication_consumer_and_tier_limits_count_per_ip_under_the_default_tier() {
    let up = TestUpstream::fixed("ok").await;
    for by in ["consumer", "tier"] {
        let limit = if by == "consumer" {
            String::from("{ by: consumer }")
        } else {
            String::from("{ by: tier, rate: 2/min }")
        };
        let yaml = format!(
            "listeners:\n  - bind: 127.0.0.1:0\nworkers: 1\ntrusted_proxies: [127.0.0.1]\nupstreams:\n  up:\n    endpoints: [\"{{UPSTREAM}}\"]\nroutes:\n  - name: all\n    upstream: up\n    rate_limit: {limit}\ntiers:\n  gold: {{ rate: 100/s }}\n  free: {{ rate: 2/min, quota: 1000/day }}\ndefault_tier: free\n"
        );
        let gw = start(&yaml, up.addr());
        let mut codes = Vec::new();
        for _ in 0..3 {
            codes.push(status_from(addr(&gw), "/", "198.51.100.1").await);
        }
        assert_eq!(codes, ["200", "200", "429"], "by: {by}");
        // Another client has its own bucket.
        assert_eq!(
            status_from(addr(&gw), "/", "198.51.100.2").await,
            "200",
            "by: {by}"
        );
    }
    let yaml = simple(
        "    rate_limit: { by: consumer }\ntiers:\n  free: { rate: 1/min }\ndefault_tier: free\n",
    );
    let gw = start(&yaml, up.addr());
    get(addr(&gw), "/").await;
    let refused = get(addr(&gw), "/").await;
    let body: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(body["limit"], "tier-rate@default");
}

#[tokio::test]
async fn invalid_rate_limit_config_names_file_line_and_field() {
    let bad = |extra: &str| {
        let yaml = simple(extra).replace("{UPSTREAM}", "127.0.0.1:1");
        let config = gateway::Config::parse(&yaml, "gw.yaml");
        match config.and_then(|c| gateway::Compiled::new(&c, "gw.yaml")) {
            Ok(_) => panic!("accepted: {extra}"),
            Err(e) => e.to_string(),
        }
    };
    let expect = |extra: &str, field: &str, msg: &str| {
        let e = bad(extra);
        assert!(e.contains(field) && e.contains(msg), "{extra}\n=> {e}");
    };
    let e = bad("    rate_limit: { rate: 100 per second }\n");
    assert!(
        e.contains("gw.yaml:14:25: routes[0].rate_limit.rate: invalid rate `100 per second`"),
        "{e}"
    );
    expect(
        "    rate_limit: { by: consumer }\n",
        "routes[0].rate_limit",
        "no `tiers` are configured",
    );
    expect(
        "    rate_limit: { rate: 10/s, burst: 2, cost: 3 }\n",
        "routes[0].rate_limit.burst",
        "no request could pass",
    );
    expect(
        "    rate_limit: { quota: 2/day, cost: 3 }\n",
        "routes[0].rate_limit.quota",
        "no request could pass",
    );
    expect(
        "    rate_limit: { rate: 10/s, cost: 0 }\n",
        "routes[0].rate_limit.cost",
        "at least 1",
    );
    expect(
        "    rate_limit: { by: cookie, rate: 10/s }\n",
        "routes[0].rate_limit.by",
        "unknown key `cookie`",
    );
    expect(
        "    rate_limit: { by: \"header:x-gateway-user\", rate: 10/s }\n",
        "routes[0].rate_limit.by",
        "internal header",
    );
    expect(
        "    rate_limit: { by: \"header:bad header\", rate: 10/s }\n",
        "routes[0].rate_limit.by",
        "not a header name",
    );
    expect(
        "    rate_limit: { rate: 10/s, ipv6_prefix: 129 }\n",
        "routes[0].rate_limit.ipv6_prefix",
        "0 to 128",
    );
    expect(
        "    rate_limit: { by: route, rate: 10/s, ipv6_prefix: 48 }\n",
        "routes[0].rate_limit.ipv6_prefix",
        "only applies",
    );
    expect(
        "    rate_limit: { quota: 10/day, burst: 5 }\n",
        "routes[0].rate_limit.burst",
        "needs a `rate`",
    );
    expect(
        "    rate_limit: { rate: 2000000/s }\n",
        "routes[0].rate_limit.rate",
        "faster than one request per microsecond",
    );
    expect(
        "    rate_limit: { rate: 1/day, burst: 100000 }\n",
        "routes[0].rate_limit.rate",
        "spans more than",
    );
    expect(
        "    rate_limit: { quota: 10/day, throttle: 1s }\n",
        "routes[0].rate_limit.throttle",
        "only quotas",
    );
    expect(
        "    rate_limit: { rate: 10/s, throttle: 2m }\n",
        "routes[0].rate_limit.throttle",
        "at most 60s",
    );
    expect(
        "    rate_limit: { by: ip, rate: 1/s, limits: [ { rate: 2/s } ] }\n",
        "routes[0].rate_limit",
        "not both",
    );
    expect(
        "    rate_limit: { limits: [ { by: consumer }, { by: consumer } ] }\ntiers:\n  free: { rate: 1/s }\n",
        "routes[0].rate_limit.limits[1].by",
        "once per route",
    );
    expect(
        "    rate_limit: { by: consumer, cost: 5 }\ntiers:\n  free: { rate: 2/min }\n",
        "routes[0].rate_limit.cost",
        "tier `free`",
    );
    expect(
        "    rate_limit: { rate: 10/s }\nstate: { mode: hybrid }\n",
        "state.mode",
        "needs `state.redis`",
    );
    expect(
        "    rate_limit: { rate: 10/s }\nstate: { on_failure: closed }\n",
        "state.on_failure",
        "needs `state.redis`",
    );
    expect(
        "    rate_limit: { rate: 10/s }\nstate: { redis: \"redis://127.0.0.1:6379\", lease: 10ms }\n",
        "state.lease",
        "only applies to `mode: hybrid`",
    );
    expect(
        "    rate_limit: { rate: 10/s }\nstate: { max_keys: 0 }\n",
        "state.max_keys",
        "at least 1",
    );
    expect(
        "tiers:\n  gold: { burst: 5 }\ndefault_tier: silver\n",
        "tiers.gold",
        "needs a `rate`",
    );
    expect(
        "tiers:\n  gold: { burst: 5 }\ndefault_tier: silver\n",
        "default_tier",
        "unknown tier `silver`",
    );
    expect(
        "tiers:\n  default: { rate: 1/s }\n",
        "tiers.default",
        "not `default`",
    );
    expect(
        "default_tier: free\n",
        "default_tier",
        "no tiers are configured",
    );
    // A bad Redis URL is reported without echoing the URL (it may hold a password).
    let e = bad("state: { redis: \"redis://:s3cret@/\" }\n");
    assert!(e.contains("state.redis") && !e.contains("s3cret"), "{e}");
}

#[tokio::test]
async fn the_admin_api_reports_the_store() {
    let up = TestUpstream::fixed("ok").await;
    let gw = start(&simple("    rate_limit: { rate: 1/min }\n"), up.addr());
    get(addr(&gw), "/").await;
    let admin = gw.admin_addr().unwrap();
    let res = get(admin, "/ratelimit").await;
    let v: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
    assert_eq!(v["store"], "memory");
    assert_eq!(v["keys"], 1);
    assert_eq!(v["evictions"], 0);
}

#[tokio::test]
async fn a_failed_redis_with_on_failure_closed_answers_503_and_hybrid_mode_shares_limits() {
    let up = TestUpstream::fixed("ok").await;
    // Nothing listens on the port: every decision fails, and `closed` refuses.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = simple(&format!(
        "    rate_limit: {{ rate: 10/s }}\nstate: {{ redis: \"redis://127.0.0.1:{port}/\", on_failure: closed }}\n"
    ));
    let gw = start(&yaml, up.addr());
    let res = get(addr(&gw), "/").await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers["content-type"], "application/problem+json");
    assert!(up.requests().is_empty());
    let v: serde_json::Value =
        serde_json::from_slice(&get(gw.admin_addr().unwrap(), "/ratelimit").await.body).unwrap();
    assert_eq!(v["store"], "redis");
    assert_eq!(v["redis"]["failed_closed"], 1);
    assert_eq!(v["redis"]["degraded"], true);

    // Hybrid mode against a real Redis: the same limit, decided from leases.
    let redis = TestRedis::start().await;
    let yaml = simple(&format!(
        "    rate_limit: {{ by: global, rate: 5/h }}\nstate: {{ redis: \"{}\", prefix: \"{}\", mode: hybrid, timeout: 2s }}\n",
        redis.url(),
        redis.prefix()
    ));
    let gw = start(&yaml, up.addr());
    let mut ok = 0;
    for _ in 0..10 {
        ok += usize::from(get(addr(&gw), "/").await.status == StatusCode::OK);
    }
    assert_eq!(ok, 5);
    let v: serde_json::Value =
        serde_json::from_slice(&get(gw.admin_addr().unwrap(), "/ratelimit").await.body).unwrap();
    assert_eq!(v["store"], "hybrid");
    assert!(v["refills"].as_u64().unwrap() >= 1, "{v}");
}

/// A gateway process (the real binary), killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_ready(addr: SocketAddr) {
    // Readiness polling: the process binds its listener shortly after starting.
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway at {addr} did not start");
}

#[tokio::test]
async fn three_gateway_processes_share_one_global_limit_and_reload_on_sighup() {
    let redis = TestRedis::start().await;
    let up = TestUpstream::fixed("ok").await;
    let dir = TempDir(std::env::temp_dir().join(format!("gw-rl-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let mut gateways = Vec::new();
    let mut addrs = Vec::new();
    let yaml = |port: u16, extra: &str| {
        format!(
            "listeners:\n  - bind: 127.0.0.1:{port}\nworkers: 1\nstate:\n  redis: \"{}\"\n  prefix: \"{}\"\n  timeout: 2s\n  on_failure: closed\nupstreams:\n  up:\n    endpoints: [\"{}\"]\nroutes:\n{extra}  - name: all\n    upstream: up\n    rate_limit: {{ by: global, rate: 10/h }}\n",
            redis.url(),
            redis.prefix(),
            up.addr()
        )
    };
    let ports = free_ports(3);
    for (i, port) in ports.into_iter().enumerate() {
        let yaml = yaml(port, "");
        let file = dir.0.join(format!("gw{i}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .arg("--config")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        gateways.push(Process(child));
        addrs.push(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    for a in &addrs {
        wait_ready(*a).await;
    }
    let mut admitted = [0; 3];
    for n in 0..30 {
        let res = get(addrs[n % 3], "/").await;
        match res.status {
            StatusCode::OK => admitted[n % 3] += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}: {:?}", res.body),
        }
    }
    assert_eq!(
        admitted.iter().sum::<usize>(),
        10,
        "one global limit: {admitted:?}"
    );
    assert_eq!(admitted, [4, 3, 3], "every instance draws on it");
    assert_eq!(up.requests().len(), 10);

    // SIGHUP reloads the first process's file: a new unlimited route appears, the shared limit
    // stays spent on the others.
    assert_eq!(
        get(addrs[0], "/free").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    std::fs::write(
        dir.0.join("gw0.yaml"),
        yaml(
            addrs[0].port(),
            "  - name: free\n    match: { path: /free }\n    upstream: up\n",
        ),
    )
    .unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &gateways[0].0.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let reloaded = tokio::time::timeout(Duration::from_secs(20), async {
        while get(addrs[0], "/free").await.status != StatusCode::OK {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(reloaded.is_ok(), "SIGHUP applied the new file");
    assert_eq!(
        get(addrs[1], "/free").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// A directory removed when dropped, even if the test panics (the configs in it name Redis).
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
