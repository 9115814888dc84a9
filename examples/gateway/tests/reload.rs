//! Hot reload through the real gateway: under load, with state kept where the config did not
//! change, with invalid configs refused, from the admin API and from a file watch.

mod support;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use gateway::{Compiled, Config, RunningGateway};
use gateway_test::{TestUpstream, client, full, get, raw_exchange, send};
use support::addr;

/// A configuration file in the temp directory, removed on drop.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(name: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!(
            "gateway-reload-{}-{name}-{n}.yaml",
            std::process::id()
        )))
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap();
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Version A: everything to `one`. Version B adds `/new` to `two`. `extra_route` goes into the
/// catch-all route.
fn version(
    b: bool,
    one: SocketAddr,
    two: SocketAddr,
    extra_route: &str,
    extra_top: &str,
) -> String {
    let new_route = if b {
        "  - name: new\n    match: { path: /new }\n    upstream: two\n"
    } else {
        ""
    };
    format!(
        "listeners:\n  - bind: 127.0.0.1:0\nadmin:\n  bind: 127.0.0.1:0\nworkers: 2\nupstreams:\n  one:\n    endpoints: [\"{one}\"]\n  two:\n    endpoints: [\"{two}\"]\nroutes:\n{new_route}  - name: all\n    match: {{ path_prefix: / }}\n    upstream: one\n{extra_route}{extra_top}"
    )
}

fn start_from(file: &TempConfig) -> RunningGateway {
    let name = file.0.display().to_string();
    let config = Config::load(&file.0).unwrap_or_else(|e| panic!("{e}"));
    let compiled = Compiled::new(&config, &name).unwrap_or_else(|e| panic!("{e}"));
    let gw = gateway::start(compiled).expect("gateway starts");
    gw.set_config_file(&file.0);
    gw
}

async fn admin(gw: &RunningGateway, method: &str, path: &str, headers: &str) -> String {
    let body = if method == "POST" { "{}" } else { "" };
    raw_exchange(
        gw.admin_addr().unwrap(),
        format!(
            "{method} {path} HTTP/1.1\r\nhost: admin\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{headers}connection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_no_request_and_open_connections_follow() {
    let one = TestUpstream::fixed("one").await;
    let two = TestUpstream::fixed("two").await;
    let file = TempConfig::new("load");
    file.write(&version(false, one.addr(), two.addr(), "", ""));
    let gw = Arc::new(start_from(&file));
    let gw_addr = addr(&gw);

    // Four keep-alive clients send requests back to back for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(tokio::sync::Notify::new());
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, done, progress) = (stop.clone(), done.clone(), progress.clone());
        clients.push(tokio::spawn(async move {
            let c = client();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let req = http::Request::get(format!("http://{gw_addr}/x"))
                    .body(full(Bytes::new()))
                    .unwrap();
                match c.request(req).await {
                    Ok(res) if res.status() == 200 => {
                        let _ = http_body_util::BodyExt::collect(res.into_body()).await;
                    }
                    Ok(res) => failures.push(res.status().to_string()),
                    Err(e) => failures.push(e.to_string()),
                }
                done.fetch_add(1, Ordering::Relaxed);
                progress.notify_waiters();
            }
            failures
        }));
    }

    let reloads = 40;
    let mut last = None;
    for i in 0..reloads {
        // Let some requests through on the current configuration first.
        let target = done.load(Ordering::Relaxed) + 8;
        while done.load(Ordering::Relaxed) < target {
            let notified = progress.notified();
            if done.load(Ordering::Relaxed) >= target {
                break;
            }
            notified.await;
        }
        file.write(&version(i % 2 == 0, one.addr(), two.addr(), "", ""));
        let gw2 = gw.clone();
        let report = tokio::task::spawn_blocking(move || gw2.reload())
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(report.kept_upstreams, ["one", "two"]);
        assert!(report.restart_required.is_empty(), "{report:?}");
        last = Some(report);
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    assert_eq!(failures, Vec::<String>::new(), "no request failed");
    assert!(done.load(Ordering::Relaxed) >= reloads * 8);
    assert_eq!(last.unwrap().generation, reloads);

    // The last version (i = 39, odd) is A: `/new` goes to `one`. A connection opened before the
    // next reload follows it.
    let c = client();
    let get_new = || {
        http::Request::get(format!("http://{gw_addr}/new"))
            .body(full(Bytes::new()))
            .unwrap()
    };
    assert_eq!(send(&c, get_new()).await.text(), "one");
    file.write(&version(true, one.addr(), two.addr(), "", ""));
    gw.reload().unwrap();
    assert_eq!(
        send(&c, get_new()).await.text(),
        "two",
        "the open connection uses the new routes"
    );
}

#[tokio::test]
async fn state_survives_a_reload_where_its_config_is_unchanged() {
    let one = TestUpstream::fixed("one").await;
    let two = TestUpstream::fixed("two").await;
    let file = TempConfig::new("state");
    let limited = "    rate_limit: { by: ip, rate: 3/min }\n";
    file.write(&version(false, one.addr(), two.addr(), limited, ""));
    let gw = start_from(&file);
    for _ in 0..2 {
        assert_eq!(get(addr(&gw), "/x").await.status, 200);
    }
    // Adding a route changes neither `state` nor the route's limit: the counter carries over.
    file.write(&version(true, one.addr(), two.addr(), limited, ""));
    let report = gw.reload().unwrap();
    assert!(report.kept_rate_limit_state);
    assert_eq!(get(addr(&gw), "/x").await.status, 200);
    assert_eq!(
        get(addr(&gw), "/x").await.status,
        429,
        "3/min spans the reload"
    );

    // A breaker forced open stays open across a reload that keeps its upstream ...
    let yaml = |timeout: &str| {
        version(true, one.addr(), two.addr(), "", "")
            .replace(
                &format!("  one:\n    endpoints: [\"{}\"]\n", one.addr()),
                &format!(
                    "  one:\n    endpoints: [\"{}\"]\n    timeouts: {{ connect: {timeout} }}\n    breaker: {{ consecutive_failures: 3, open_for: 1h }}\n",
                    one.addr()
                ),
            )
    };
    file.write(&yaml("1s"));
    gw.reload().unwrap();
    let res = raw_exchange(
        gw.admin_addr().unwrap(),
        b"POST /upstreams/one/breaker HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\ncontent-length: 16\r\nconnection: close\r\n\r\n{\"state\":\"open\"}",
    )
    .await;
    assert!(res.contains("\"forced_open\""), "{res}");
    assert_eq!(get(addr(&gw), "/x").await.status, 503);
    file.write(&format!("{}# a comment changes nothing\n", yaml("1s")));
    let report = gw.reload().unwrap();
    assert!(report.kept_upstreams.contains(&String::from("one")));
    assert_eq!(get(addr(&gw), "/x").await.status, 503, "still open");
    // ... and a changed upstream starts afresh.
    file.write(&yaml("2s"));
    let report = gw.reload().unwrap();
    assert_eq!(report.kept_upstreams, ["two"]);
    assert_eq!(get(addr(&gw), "/x").await.status, 200);
}

#[tokio::test]
async fn an_invalid_config_is_refused_and_the_running_one_stays() {
    let one = TestUpstream::fixed("one").await;
    let two = TestUpstream::fixed("two").await;
    let file = TempConfig::new("invalid");
    file.write(&version(false, one.addr(), two.addr(), "", ""));
    let gw = start_from(&file);
    // Line 14 names an upstream that does not exist.
    file.write(
        &version(true, one.addr(), two.addr(), "", "").replace("upstream: two", "upstream: three"),
    );
    let e = gw.reload().unwrap_err().to_string();
    assert!(
        e.contains(":14:") && e.contains("routes[0].upstream"),
        "{e}"
    );
    let res = admin(&gw, "POST", "/config/reload", "").await;
    assert!(res.starts_with("HTTP/1.1 400"), "{res}");
    assert!(res.contains("application/problem+json"), "{res}");
    assert!(res.contains("\"field\":\"routes[0].upstream\""), "{res}");
    assert!(res.contains("\"line\":14"), "{res}");
    // Still the old routes: `/new` goes to `one`.
    assert_eq!(get(addr(&gw), "/new").await.text(), "one");
    let status = admin(&gw, "GET", "/config", "").await;
    assert!(status.contains("\"failed\":2"), "{status}");
    assert!(
        status.contains("three"),
        "the last error is shown: {status}"
    );
    // A YAML syntax error too.
    file.write("listeners: [\n");
    assert!(gw.reload().is_err());
    assert_eq!(get(addr(&gw), "/x").await.text(), "one");
    // Fixed: applied.
    file.write(&version(true, one.addr(), two.addr(), "", ""));
    let res = admin(&gw, "POST", "/config/reload", "").await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert_eq!(get(addr(&gw), "/new").await.text(), "two");
}

#[tokio::test]
async fn the_admin_token_guards_everything_but_probes_and_secrets_are_redacted() {
    let one = TestUpstream::fixed("one").await;
    let two = TestUpstream::fixed("two").await;
    let token = TempConfig::new("token");
    token.write("0123456789abcdef-admin\n");
    let file = TempConfig::new("admin");
    let top = format!(
        "consumers:\n  - id: acme\n    api_keys: [\"{}\"]\nstate:\n  redis: \"redis://:hunter2@127.0.0.1:1/0\"\n",
        gateway_auth::ApiKeyHash::of("acme-key"),
    );
    let with_token = |v: bool| {
        version(v, one.addr(), two.addr(), "", &top).replace(
            "admin:\n  bind: 127.0.0.1:0\n",
            &format!(
                "admin:\n  bind: 127.0.0.1:0\n  token_file: \"{}\"\n",
                token.0.display()
            ),
        )
    };
    file.write(&with_token(false));
    let gw = start_from(&file);
    assert!(
        admin(&gw, "GET", "/healthz", "")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        admin(&gw, "GET", "/readyz", "")
            .await
            .starts_with("HTTP/1.1 200")
    );
    for path in ["/config", "/routes", "/upstreams"] {
        let res = admin(&gw, "GET", path, "").await;
        assert!(res.starts_with("HTTP/1.1 401"), "{path}: {res}");
        assert!(res.contains("www-authenticate: Bearer"), "{res}");
        let res = admin(
            &gw,
            "GET",
            path,
            "authorization: Bearer wrong-token-000000\r\n",
        )
        .await;
        assert!(res.starts_with("HTTP/1.1 401"), "{path}: {res}");
    }
    let bearer = "authorization: Bearer 0123456789abcdef-admin\r\n";
    let res = admin(&gw, "POST", "/config/reload", "").await;
    assert!(res.starts_with("HTTP/1.1 401"), "reload is guarded: {res}");
    let res = admin(&gw, "GET", "/config", bearer).await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert!(
        !res.contains("hunter2") && !res.contains("sha256:"),
        "{res}"
    );
    assert!(
        res.contains("[redacted]") && res.contains("127.0.0.1:1/0"),
        "{res}"
    );

    // Rotating the token file and reloading changes the token.
    token.write("fedcba9876543210-rotated");
    let res = admin(&gw, "POST", "/config/reload", bearer).await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert!(
        admin(&gw, "GET", "/config", bearer)
            .await
            .starts_with("HTTP/1.1 401")
    );
    let rotated = "authorization: Bearer fedcba9876543210-rotated\r\n";
    assert!(
        admin(&gw, "GET", "/config", rotated)
            .await
            .starts_with("HTTP/1.1 200")
    );
}

#[tokio::test]
async fn a_watched_file_reloads_when_it_changes() {
    let one = TestUpstream::fixed("one").await;
    let two = TestUpstream::fixed("two").await;
    let file = TempConfig::new("watch");
    let watch = "reload: { watch: true, interval: 20ms }\n";
    file.write(&version(false, one.addr(), two.addr(), "", watch));
    let gw = start_from(&file);
    assert_eq!(get(addr(&gw), "/new").await.text(), "one");
    file.write(&version(true, one.addr(), two.addr(), "", watch));
    // Poll through the gateway until the watcher has applied the change (bounded).
    let applied = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while get(addr(&gw), "/new").await.text() != "two" {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(applied.is_ok(), "the watcher applied the new file");
    let status = admin(&gw, "GET", "/config", "").await;
    assert!(status.contains("\"watching\":true"), "{status}");
}

#[tokio::test]
async fn reloads_reuse_the_connections_to_a_decision_point() {
    let one = TestUpstream::fixed("one").await;
    let two = TestUpstream::fixed("two").await;
    let pdp = TestUpstream::start(|_req: http::Request<hyper::body::Incoming>| async move {
        http::Response::new(full(r#"{"result": true}"#))
    })
    .await;
    let file = TempConfig::new("pdp");
    let route = format!(
        "    auth:\n      optional: true\n      ext_authz: {{ url: \"http://{}/allow\" }}\n",
        pdp.addr()
    );
    file.write(&version(false, one.addr(), two.addr(), &route, ""));
    let gw = start_from(&file);
    let c = client();
    for i in 0..6 {
        let res = send(
            &c,
            http::Request::get(format!("http://{}/x", addr(&gw)))
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(res.status, 200);
        // Reloaded with a change elsewhere: the routes (and their decision point) are rebuilt.
        file.write(&format!(
            "{}# reload {i}\n",
            version(i % 2 == 0, one.addr(), two.addr(), &route, "")
        ));
        gw.reload().unwrap();
    }
    assert_eq!(pdp.requests().len(), 6);
    assert!(
        pdp.connections() <= 2,
        "one pooled connection per worker across reloads, not one per reload: {}",
        pdp.connections()
    );
}
