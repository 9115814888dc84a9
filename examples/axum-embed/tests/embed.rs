//! The README's axum tour, run for real.

use std::net::SocketAddr;

use gateway_test::{TestUpstream, client, full, send};
use http::Request;

async fn serve(upstream: SocketAddr, trusted: &str) -> SocketAddr {
    serve_limited(upstream, trusted, "100/s").await
}

async fn serve_limited(upstream: SocketAddr, trusted: &str, per_ip: &str) -> SocketAddr {
    let app = axum_embed::app(
        upstream.to_string().parse().unwrap(),
        trusted.parse().unwrap(),
        per_ip.parse().unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

fn get(url: String, xff: &str) -> Request<gateway_test::TestBody> {
    Request::get(url)
        .header("x-forwarded-for", xff)
        .body(full(""))
        .unwrap()
}

#[tokio::test]
async fn whoami_reads_the_client_ip_resolved_through_a_trusted_proxy() {
    let up = TestUpstream::echo().await;
    let addr = serve(up.addr(), "127.0.0.1").await;
    let res = send(
        &client(),
        get(format!("http://{addr}/whoami"), "203.0.113.9"),
    )
    .await;
    assert_eq!(res.text(), "you are 203.0.113.9\n");
}

#[tokio::test]
async fn untrusted_peers_cannot_spoof_their_address() {
    let up = TestUpstream::echo().await;
    let addr = serve(up.addr(), "10.0.0.0/8").await;
    let res = send(
        &client(),
        get(format!("http://{addr}/whoami"), "203.0.113.9"),
    )
    .await;
    assert_eq!(res.text(), "you are 127.0.0.1\n");
}

#[tokio::test]
async fn other_paths_are_proxied_with_forwarding_headers() {
    let up = TestUpstream::echo().await;
    let addr = serve(up.addr(), "10.0.0.0/8").await;
    let res = send(
        &client(),
        get(format!("http://{addr}/orders/7?x=1"), "203.0.113.9"),
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.headers["x-echo-uri"], "/orders/7?x=1");
    let seen = up.last_request().headers;
    assert_eq!(
        seen["x-forwarded-for"], "127.0.0.1",
        "the spoofed hop was replaced"
    );
}

#[tokio::test]
async fn each_client_ip_is_rate_limited_on_its_own() {
    let up = TestUpstream::echo().await;
    // Behind a trusted proxy (127.0.0.1), each X-Forwarded-For client gets its own bucket.
    let addr = serve_limited(up.addr(), "127.0.0.1", "2/min").await;
    let c = client();
    for _ in 0..2 {
        let res = send(&c, get(format!("http://{addr}/x"), "203.0.113.9")).await;
        assert_eq!(res.status, 200);
    }
    let refused = send(&c, get(format!("http://{addr}/x"), "203.0.113.9")).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.headers["retry-after"], "30");
    assert_eq!(refused.headers["content-type"], "application/problem+json");
    let other = send(&c, get(format!("http://{addr}/x"), "203.0.113.10")).await;
    assert_eq!(other.status, 200);
    assert_eq!(up.requests().len(), 3);
}
