//! The HTTP cache through the real gateway: hits, `HEAD` from `GET`, invalidation by unsafe
//! methods, per-caller entries on authenticated routes, admin purges, and a cache that survives
//! a reload.

mod support;

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use gateway_auth::ApiKeyHash;
use gateway_test::{TestUpstream, raw_exchange};
use support::{addr, free_ports};

async fn origin() -> (TestUpstream, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    let counter = n.clone();
    let up = TestUpstream::start(move |req: http::Request<hyper::body::Incoming>| {
        let i = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let who = req
            .headers()
            .get("x-api-key")
            .map_or("nobody", |_| "leaked")
            .to_owned();
        async move {
            let mut res = http::Response::new(gateway_test::full(format!("answer {i} for {who}")));
            res.headers_mut().insert(
                "cache-control",
                http::HeaderValue::from_static("max-age=60"),
            );
            res.headers_mut()
                .insert("surrogate-key", http::HeaderValue::from_static("orders"));
            res
        }
    })
    .await;
    (up, n)
}

fn config(up: std::net::SocketAddr) -> String {
    format!(
        "listeners:\n  - bind: 127.0.0.1:0\nadmin:\n  bind: 127.0.0.1:0\nworkers: 1\nupstreams:\n  up:\n    endpoints: [\"{up}\"]\nroutes:\n  - name: mine\n    match: {{ path_prefix: /mine }}\n    upstream: up\n    auth: {{ any_of: [api_key] }}\n    cache: {{}}\n  - name: orders\n    upstream: up\n    cache: {{ max_body: 64KiB }}\nconsumers:\n  - id: acme\n    api_keys: [\"{}\"]\n  - id: bob\n    api_keys: [\"{}\"]\n",
        ApiKeyHash::of("acme-key"),
        ApiKeyHash::of("bob-key"),
    )
}

async fn request(gw: std::net::SocketAddr, method: &str, path: &str, extra: &str) -> String {
    raw_exchange(
        gw,
        format!("{method} {path} HTTP/1.1\r\nhost: shop\r\ncontent-length: 0\r\n{extra}connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
}

fn body(res: &str) -> &str {
    res.split("\r\n\r\n").nth(1).unwrap_or_default()
}

#[tokio::test]
async fn the_gateway_caches_invalidates_keeps_callers_apart_and_purges() {
    let (up, calls) = origin().await;
    let file = std::env::temp_dir().join(format!("gateway-cache-{}.yaml", std::process::id()));
    std::fs::write(&file, config(up.addr())).unwrap();
    let name = file.display().to_string();
    let compiled = gateway::Compiled::new(&gateway::Config::load(&file).unwrap(), &name).unwrap();
    let gw = gateway::start(compiled).unwrap();
    gw.set_config_file(&file);
    let a = addr(&gw);

    let first = request(a, "GET", "/orders/1", "").await;
    assert!(
        first.contains("cache-status: gateway; fwd=miss; stored"),
        "{first}"
    );
    let second = request(a, "GET", "/orders/1", "").await;
    assert!(second.contains("cache-status: gateway; hit"), "{second}");
    assert_eq!(body(&first), body(&second));
    assert!(second.contains("\r\nage: "));
    let head = request(a, "HEAD", "/orders/1", "").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "hits never reach the upstream"
    );

    // An unsafe method on the URL invalidates it.
    request(a, "POST", "/orders/1", "").await;
    let after = request(a, "GET", "/orders/1", "").await;
    assert!(after.contains("fwd=miss"), "{after}");

    // Authenticated callers each have their own entries, and keys never reach the upstream.
    let acme = request(a, "GET", "/mine", "x-api-key: acme-key\r\n").await;
    let bob = request(a, "GET", "/mine", "x-api-key: bob-key\r\n").await;
    assert_ne!(body(&acme), body(&bob), "bob is not served acme's answer");
    assert!(body(&acme).ends_with("for nobody"), "{acme}");
    let acme_again = request(a, "GET", "/mine", "x-api-key: acme-key\r\n").await;
    assert_eq!(body(&acme), body(&acme_again));
    assert!(acme_again.contains("cache-status: gateway; hit"));
    let anonymous = request(a, "GET", "/mine", "").await;
    assert!(
        anonymous.starts_with("HTTP/1.1 401"),
        "the cache sits behind auth: {anonymous}"
    );

    // The cache survives a reload that leaves `cache` alone.
    std::fs::write(&file, format!("{}# touched\n", config(up.addr()))).unwrap();
    gw.reload().unwrap();
    assert!(
        request(a, "GET", "/orders/1", "")
            .await
            .contains("gateway; hit")
    );

    // Purges through the admin API: by tag, then by prefix.
    let admin = gw.admin_addr().unwrap();
    let purge = |json: &'static str| {
        raw_exchange(
            admin,
            format!("POST /cache/purge HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}", json.len())
                .into_bytes()
                .leak(),
        )
    };
    let res = purge(r#"{"tag": "orders"}"#).await;
    assert!(
        res.contains("\"purged\":3"),
        "orders/1 and both callers' /mine: {res}"
    );
    assert!(
        request(a, "GET", "/orders/1", "")
            .await
            .contains("fwd=miss")
    );
    let res = purge(r#"{"prefix": "http://shop/orders"}"#).await;
    assert!(res.contains("\"purged\":1"), "{res}");
    let res = purge(r#"{}"#).await;
    assert!(res.starts_with("HTTP/1.1 422"), "{res}");
    let _ = std::fs::remove_file(&file);
}

/// A gateway process (the real binary), killed on drop.
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_purge_through_one_instance_reaches_every_instance() {
    let redis = gateway_test::TestRedis::start().await;
    let (up, _) = origin().await;
    let dir = std::env::temp_dir().join(format!("gw-purge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut procs = Vec::new();
    let mut instances = Vec::new();
    let ports = free_ports(6);
    for i in 0..3 {
        let (port, admin) = (ports[2 * i], ports[2 * i + 1]);
        let yaml = format!(
            "listeners:\n  - bind: 127.0.0.1:{port}\nadmin:\n  bind: 127.0.0.1:{admin}\nworkers: 1\nstate:\n  redis: \"{}\"\n  prefix: \"{}\"\nupstreams:\n  up:\n    endpoints: [\"{}\"]\nroutes:\n  - name: orders\n    upstream: up\n    cache: {{}}\n",
            redis.url(),
            redis.prefix(),
            up.addr()
        );
        let file = dir.join(format!("gw{i}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        procs.push(Process(
            std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
                .arg("--config")
                .arg(&file)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        ));
        instances.push((
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            std::net::SocketAddr::from(([127, 0, 0, 1], admin)),
        ));
    }
    // Wait until all three listen and have subscribed to the purge channel.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let channel = format!("{}cache-purge", redis.prefix());
    let ready = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            let subs: (String, i64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async(&mut conn)
                .await
                .unwrap();
            let listening = futures_ready(&instances).await;
            if subs.1 == 3 && listening {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(ready.is_ok(), "three instances up and subscribed");
    for (public, _) in &instances {
        request(*public, "GET", "/orders/9", "").await;
        assert!(
            request(*public, "GET", "/orders/9", "")
                .await
                .contains("gateway; hit")
        );
    }
    let admin = instances[0].1;
    let json = r#"{"url": "http://shop/orders/9"}"#;
    let res = raw_exchange(
        admin,
        format!("POST /cache/purge HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}", json.len()).as_bytes(),
    )
    .await;
    assert!(res.contains("\"published\":true"), "{res}");
    assert!(res.contains("\"purged\":1"), "the URL was there: {res}");
    // Every instance misses now (the others apply the purge as it arrives).
    for (i, (public, _)) in instances.iter().enumerate() {
        let purged = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                if request(
                    *public,
                    "GET",
                    "/orders/9",
                    "cache-control: only-if-cached\r\n",
                )
                .await
                .starts_with("HTTP/1.1 504")
                {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(purged.is_ok(), "instance {i} still serves the purged entry");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

async fn futures_ready(instances: &[(std::net::SocketAddr, std::net::SocketAddr)]) -> bool {
    for (public, admin) in instances {
        if tokio::net::TcpStream::connect(public).await.is_err()
            || tokio::net::TcpStream::connect(admin).await.is_err()
        {
            return false;
        }
    }
    true
}

#[tokio::test]
async fn with_a_redis_store_instances_share_entries() {
    let redis = gateway_test::TestRedis::start().await;
    let (up, calls) = origin().await;
    let yaml = format!(
        "listeners:\n  - bind: 127.0.0.1:0\nworkers: 1\nstate:\n  redis: \"{}\"\n  prefix: \"{}\"\n  timeout: 2s\ncache:\n  store: redis\nupstreams:\n  up:\n    endpoints: [\"{{UPSTREAM}}\"]\nroutes:\n  - name: orders\n    upstream: up\n    cache: {{}}\n",
        redis.url(),
        redis.prefix()
    );
    let one = support::start(&yaml, up.addr());
    let two = support::start(&yaml, up.addr());
    let first = request(addr(&one), "GET", "/orders/5", "").await;
    assert!(first.contains("fwd=miss; stored"), "{first}");
    // A Redis store finishes the write in a task after the answer: wait for the key to land.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pattern = format!("{}*", redis.prefix());
    for _ in 0..1000 {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async(&mut conn)
            .await
            .unwrap();
        if !keys.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let second = request(addr(&two), "GET", "/orders/5", "").await;
    assert!(
        second.contains("cache-status: gateway; hit"),
        "the other instance hits: {second}"
    );
    assert_eq!(body(&first), body(&second));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Without state.redis, `store: redis` is refused.
    let e = gateway::Config::parse(
        "listeners:\n  - bind: 127.0.0.1:0\ncache:\n  store: redis\n",
        "gw.yaml",
    )
    .and_then(|c| gateway::Compiled::new(&c, "gw.yaml"))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("cache.store") && e.contains("state.redis"),
        "{e}"
    );
}

#[tokio::test]
async fn unkeyed_input_targeted_fields_conditionals_and_background_refresh_through_the_gateway() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<http::HeaderMap>::new()));
    let log = seen.clone();
    let up = TestUpstream::start(move |req: http::Request<hyper::body::Incoming>| {
        let n = {
            let mut log = log.lock().unwrap();
            log.push(req.headers().clone());
            log.len()
        };
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or_default().to_owned();
        let host = req
            .headers()
            .get("x-forwarded-host")
            .map(|h| h.to_str().unwrap().to_owned())
            .unwrap_or_default();
        async move {
            let (cc, body) = match path.as_str() {
                // Browsers: do not keep it; this cache: ten minutes.
                "/cdn" => ("no-store", format!("cdn {n}")),
                "/swr" if n <= 4 => ("max-age=0, stale-while-revalidate=60", "old".to_owned()),
                "/swr" => ("max-age=60", "new".to_owned()),
                _ => ("max-age=60", format!("https://{host}/next?{query}")),
            };
            let mut res = http::Response::new(gateway_test::full(body));
            let h = res.headers_mut();
            h.insert("cache-control", http::HeaderValue::from_static(cc));
            h.insert("etag", http::HeaderValue::from_static("\"e1\""));
            if path == "/cdn" {
                h.insert(
                    "cdn-cache-control",
                    http::HeaderValue::from_static("max-age=600"),
                );
            }
            res
        }
    })
    .await;
    let yaml = format!(
        "listeners:\n  - bind: 127.0.0.1:0\nadmin:\n  bind: 127.0.0.1:0\nworkers: 1\nupstreams:\n  up:\n    endpoints: [\"{}\"]\nroutes:\n  - name: pages\n    upstream: up\n    cache:\n      key: {{ query_except: [utm_source] }}\n      targeted: [cdn-cache-control]\n      cache_status: edge\n",
        up.addr()
    );
    let file = std::env::temp_dir().join(format!("gateway-cache-key-{}.yaml", std::process::id()));
    std::fs::write(&file, yaml).unwrap();
    let compiled =
        gateway::Compiled::new(&gateway::Config::load(&file).unwrap(), "cache.yaml").unwrap();
    let gw = gateway::start(compiled).unwrap();
    let a = addr(&gw);

    // Poisoning: the override headers and the tracking parameter never reach the upstream, so
    // the stored page links to the real host.
    let first = request(
        a,
        "GET",
        "/page?utm_source=evil&id=1",
        "x-forwarded-host: evil.example\r\nx-original-url: /admin\r\n",
    )
    .await;
    assert!(
        body(&first).starts_with("https://shop/next?id=1"),
        "{first}"
    );
    {
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen[0]["x-forwarded-host"], "shop",
            "the gateway's own value"
        );
        assert!(!seen[0].contains_key("x-original-url"));
    }
    let shared = request(a, "GET", "/page?id=1&utm_source=mail", "").await;
    assert!(shared.contains("cache-status: edge; hit"), "{shared}");

    // A conditional client gets 304 from the stored answer.
    let cond = request(a, "GET", "/page?id=1", "if-none-match: \"e1\"\r\n").await;
    assert!(cond.starts_with("HTTP/1.1 304"), "{cond}");

    // CDN-Cache-Control decides for this cache; Cache-Control still reaches the client.
    request(a, "GET", "/cdn", "").await;
    let cdn = request(a, "GET", "/cdn", "").await;
    assert!(cdn.contains("cache-status: edge; hit"), "{cdn}");
    assert!(cdn.contains("cache-control: no-store"), "{cdn}");
    assert_eq!(seen.lock().unwrap().len(), 2);

    // stale-while-revalidate: answered at once from the stale entry, refreshed in the
    // background through the upstream client (requests 3 and 4 reached the upstream).
    let stale = request(a, "GET", "/swr", "").await;
    assert_eq!(body(&stale), "old");
    let mut refreshed = String::new();
    for _ in 0..200 {
        refreshed = request(a, "GET", "/swr", "").await;
        if body(&refreshed) == "new" {
            break;
        }
    }
    assert_eq!(body(&refreshed), "new", "{refreshed}");

    // Every outcome is counted.
    let metrics = raw_exchange(
        gw.admin_addr().unwrap(),
        b"GET /metrics HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    for outcome in ["hit", "miss", "stale"] {
        assert!(
            metrics.contains(&format!(
                "gateway_cache_requests_total{{outcome=\"{outcome}\",http_route=\"pages\"}}"
            )),
            "{outcome}: {metrics}"
        );
    }
    let _ = std::fs::remove_file(&file);
}
