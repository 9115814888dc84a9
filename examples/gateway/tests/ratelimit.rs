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
use support::{addr, simple, start};

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

#[tokio::test]
async fn path_spellings_of_one_route_share_one_bucket() {
    let up = TestUpstream::fixed("ok").await;
    let yaml = "listeners:\n  - bind: 127.0.0.1:0\nworkers: 1\nupstreams:\n  up:\n    endpoints: [\"{UPSTREAM}\"]\nroutes:\n  - name: orders\n    match: { path_prefix: /api/orders }\n    upstream: up\n    rate_limit: { by: route, rate: 3/min }\n";
    let gw = start(yaml, up.addr());
    let mut codes = Vec::new();
    for path in [
        "/api/orders",
        "/api//orders/",
        "/api/./orders",
        "/%61pi/orders",
        "/api/x/../orders",
    ] {
        let res = raw_exchange(
            addr(&gw),
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        codes.push(res[9..12].to_owned());
    }
    assert_eq!(codes, ["200", "200", "200", "429", "429"]);
}

#[tokio::test]
async fn consumer_limits_use_tiers_and_anonymous_callers_get_the_default_tier_per_ip() {
    let up = TestUpstream::fixed("ok").await;
    let yaml = simple(
        "    rate_limit: { by: consumer }\ntiers:\n  gold: { rate: 100/s }\n  free: { rate: 2/min, quota: 1000/day }\ndefault_tier: free\n",
    );
    let gw = start(&yaml, up.addr());
    let codes: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(get(addr(&gw), "/").await.status.as_u16());
        }
        v
    };
    assert_eq!(codes, [200, 200, 429]);
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
    let e = bad("    rate_limit: { rate: 100 per second }\n");
    assert!(
        e.contains("gw.yaml:14:25: routes[0].rate_limit.rate: invalid rate `100 per second`"),
        "{e}"
    );
    let e = bad("    rate_limit: { by: consumer }\n");
    assert!(
        e.contains("routes[0].rate_limit") && e.contains("no `tiers` are configured"),
        "{e}"
    );
    let e = bad("    rate_limit: { rate: 10/s, burst: 2, cost: 3 }\n");
    assert!(
        e.contains("routes[0].rate_limit.burst") && e.contains("no request could pass"),
        "{e}"
    );
    let e = bad("    rate_limit: { by: cookie, rate: 10/s }\n");
    assert!(
        e.contains("routes[0].rate_limit.by") && e.contains("unknown key `cookie`"),
        "{e}"
    );
    let e = bad("    rate_limit: { rate: 10/s }\nstate: { mode: hybrid }\n");
    assert!(
        e.contains("state.mode") && e.contains("needs `state.redis`"),
        "{e}"
    );
    let e = bad("tiers:\n  gold: { burst: 5 }\ndefault_tier: silver\n");
    assert!(
        e.contains("tiers.gold") && e.contains("unknown tier `silver`"),
        "{e}"
    );
}

/// A gateway process (the real binary), killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
async fn two_gateway_processes_share_one_global_limit_through_redis() {
    let redis = TestRedis::start().await;
    let up = TestUpstream::fixed("ok").await;
    let dir = std::env::temp_dir().join(format!("gw-rl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut gateways = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..2 {
        let port = free_port();
        let yaml = format!(
            "listeners:\n  - bind: 127.0.0.1:{port}\nworkers: 1\nstate:\n  redis: \"{}\"\n  prefix: \"{}\"\n  timeout: 2s\n  on_failure: closed\nupstreams:\n  up:\n    endpoints: [\"{}\"]\nroutes:\n  - name: all\n    upstream: up\n    rate_limit: {{ by: global, rate: 10/h }}\n",
            redis.url(),
            redis.prefix(),
            up.addr()
        );
        let file = dir.join(format!("gw{i}.yaml"));
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
    let mut admitted = [0; 2];
    for n in 0..30 {
        let res = get(addrs[n % 2], "/").await;
        match res.status {
            StatusCode::OK => admitted[n % 2] += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}: {:?}", res.body),
        }
    }
    assert_eq!(
        admitted[0] + admitted[1],
        10,
        "one global limit: {admitted:?}"
    );
    assert_eq!(admitted, [5, 5], "both instances draw on it");
    assert_eq!(up.requests().len(), 10);
    let _ = std::fs::remove_dir_all(&dir);
}
