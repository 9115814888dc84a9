//! An existing axum app that adds gateway layers in a few lines: the client IP resolved from
//! trusted proxies, and everything it does not handle itself proxied to an upstream.
//!
//! Run with `cargo run -p axum-embed -- 127.0.0.1:9000` (the upstream), then
//! `curl localhost:3000/whoami` and `curl localhost:3000/anything-else`.

use axum::{Extension, Router, body::Body, routing::get};
use gateway_core::{ClientIp, ResolveClientIpLayer, TrustedProxies};
use gateway_lb::{Endpoint, Upstream};

/// The app: `/whoami` is served here, every other path goes to `upstream`.
pub fn app(upstream: Endpoint, trusted: TrustedProxies) -> Router {
    let proxy = Upstream::builder([upstream]).build::<Body>();
    Router::new()
        .route("/whoami", get(whoami))
        .fallback_service(proxy)
        .layer(ResolveClientIpLayer::new(trusted))
}

async fn whoami(Extension(ip): Extension<ClientIp>) -> String {
    format!("you are {ip}\n")
}
