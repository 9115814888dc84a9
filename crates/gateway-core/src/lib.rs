//! Shared vocabulary for the `gateway-*` tower middleware crates.
//!
//! Layers from different crates interoperate through [`http::Extensions`] with zero glue: one layer
//! writes a value, the next reads it. This crate holds only the types two or more crates must agree
//! on:
//!
//! - [`ClientIp`] and [`ResolveClientIpLayer`]: the client address, with `Forwarded` (RFC 7239) and
//!   `X-Forwarded-For` believed only from [`TrustedProxies`] (rightmost untrusted hop wins);
//! - [`Principal`]: who the caller is after authentication;
//! - [`RouteId`]: the matched route's name, a bounded label for metrics and per-route policy;
//! - [`Problem`], [`Rejection`] and [`ResponseFlags`]: RFC 9457 `application/problem+json`
//!   rejections that carry their reason in the response extensions;
//! - [`ClassifyFailure`]: one answer to "was this a failure?" for breakers, retries, outlier
//!   detection and metrics;
//! - [`normalize_path`]: the one normalized path used for routing, policy and forwarding.
//!
//! # Example
//!
//! ```
//! use gateway_core::{ClientIp, ConnectionInfo, ResolveClientIpLayer, TrustedProxies};
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let trusted: TrustedProxies = "10.0.0.0/8".parse().unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(ResolveClientIpLayer::new(trusted))
//!     .service(service_fn(|req: Request<()>| async move {
//!         let ip = req.extensions().get::<ClientIp>().unwrap().ip();
//!         Ok::<_, std::convert::Infallible>(Response::new(ip.to_string()))
//!     }));
//!
//! // The peer is a trusted proxy, so the hop it reports is believed.
//! let mut req = Request::builder()
//!     .header("x-forwarded-for", "203.0.113.7")
//!     .body(())
//!     .unwrap();
//! req.extensions_mut().insert(ConnectionInfo::new("10.1.2.3:40000".parse().unwrap()));
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.body(), "203.0.113.7");
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

mod classify;
mod client_ip;
mod cookie;
pub mod grpc;
mod path;
mod principal;
mod problem;
mod route;
mod tls;
pub mod trace;

pub use classify::{ClassifyFailure, DefaultClassifier, FailureKind};
pub use client_ip::{
    ClientIp, ConnectionInfo, ForwardedHeader, ResolveClientIp, ResolveClientIpLayer,
    TrustedProxies, TrustedProxiesError,
};
pub use cookie::cookie;
pub use path::{PathError, normalize_path};
pub use principal::{AuthFailureReason, AuthMethod, Principal};
pub use problem::{PROBLEM_JSON, Problem, ProblemValue, RejectReason, Rejection, ResponseFlags};
pub use route::{CacheOutcome, NormalizedPath, RateLimitDecision, RouteId, UpstreamCall};
pub use tls::ClientCertificate;

/// The boxed error type used where errors from several sources meet.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
