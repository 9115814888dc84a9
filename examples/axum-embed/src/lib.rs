//! An existing axum app that adds gateway layers in a few lines: the client IP resolved from
//! trusted proxies, a rate limit per client IP, and everything it does not handle itself proxied
//! to an upstream.
//!
//! Run with `cargo run -p axum-embed -- 127.0.0.1:9000` (the upstream), then
//! `curl localhost:3000/whoami` and `curl -i localhost:3000/anything-else`.

use axum::{Extension, Router, body::Body, routing::get};
use gateway_core::{ClientIp, ResolveClientIpLayer, TrustedProxies};
use gateway_lb::{Endpoint, Upstream};
use gateway_ratelimit::{Limit, Rate, RateLimitLayer};

/// The app: `/whoami` is served here, every other path goes to `upstream`, at most `per_ip` per
/// client (answered `429` with `Retry-After` beyond it).
pub fn app(upstream: Endpoint, trusted: TrustedProxies, per_ip: Rate) -> Router {
    let proxy = Upstream::builder([upstream]).build::<Body>();
    Router::new()
        .route("/whoami", get(whoami))
        .fallback_service(proxy)
        // Runs after the client IP is resolved (layers added later run first).
        .layer(RateLimitLayer::new(Limit::rate("per-ip", per_ip)))
        .layer(ResolveClientIpLayer::new(trusted))
}

async fn whoami(Extension(ip): Extension<ClientIp>) -> String {
    format!("you are {ip}\n")
}
