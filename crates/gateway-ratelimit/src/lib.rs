//! Rate limiting for tower services: GCRA rates, calendar quotas, tiers, per-key concurrency
//! caps, in one process or shared through Redis.
//!
//! - [`RateLimitLayer`] evaluates one or more [`Limit`]s per request. Each limit has a policy (a
//!   GCRA [`Rate`] with a burst, or a calendar [`Quota`] such as `1000/day`), a key ([`KeyBy`]:
//!   client IP with IPv6 aggregated per /64, header, route, consumer, composites, or any
//!   closure), and optionally depends on the caller's tier. A request is admitted only when every
//!   limit admits it, and only then is every limit charged. A refusal is `429 Too Many Requests`
//!   with `Retry-After` and an RFC 9457 problem body naming the limit; the limit that decided is
//!   reported in `RateLimit`/`RateLimit-Policy` (or legacy `X-RateLimit-*`) headers and in a
//!   [`RateLimitReport`] response extension.
//! - Options: request cost (weight), throttling (hold a request up to a maximum wait instead of
//!   refusing it), shadow mode (report, never refuse).
//! - [`ConcurrencyLimitLayer`] caps requests in flight per key.
//! - Stores: [`MemoryStore`] (sharded, bounded, evicts idle keys) and, with the `redis` feature,
//!   `RedisStore` (one atomic Lua script per decision, every key with a TTL, a timeout, and a
//!   fail-open / fail-closed / local-fallback policy) and `HybridStore` (local buckets leasing
//!   tokens from Redis in batches, for high request rates).
//!
//! `100/s` means one hundred requests per second. The rules, in microseconds, are in
//! `algorithm.rs`; the Redis script is a transcription of them and a conformance test runs the
//! same sequence against both stores.
//!
//! # Example
//!
//! ```
//! use gateway_core::ClientIp;
//! use gateway_ratelimit::{Limit, Quota, RateLimitLayer};
//! use http::{Request, Response, StatusCode};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = RateLimitLayer::per_second(10)
//!     .burst(2)
//!     .limit(Limit::quota("daily", Quota::per_day(1000)));
//! let mut svc = ServiceBuilder::new().layer(layer).service(service_fn(|_req: Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(String::from("hello")))
//! }));
//! let request = || {
//!     let mut req = Request::new(());
//!     req.extensions_mut().insert(ClientIp::direct([192, 0, 2, 1].into()));
//!     req
//! };
//! for remaining in [1, 0] {
//!     let res = svc.ready().await.unwrap().call(request()).await.unwrap();
//!     assert_eq!(res.status(), StatusCode::OK);
//!     assert_eq!(res.headers()["ratelimit"], format!("\"default\";r={remaining};t=1").as_str());
//! }
//! let res = svc.ready().await.unwrap().call(request()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(res.headers()["retry-after"], "1");
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//! # }
//! ```
//!
//! # Security considerations
//! Keys may hold credential-derived values (an API key header): they are never logged or used as
//! metric labels, and the in-memory store keeps only a seeded hash of them. Key on the client IP
//! only behind [`gateway_core::ResolveClientIpLayer`] with the right trusted proxies, or every
//! client behind a proxy shares one bucket (or, worse, spoofs its own). A header key is only as
//! good as the header: combine with authentication or fall back to the IP. The in-memory store
//! is bounded (see [`MemoryStore`]); the Redis store sets a TTL on every key it writes.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

mod algorithm;
mod clock;
pub mod concurrency;
mod key;
mod layer;
mod rate;
pub mod store;

pub use algorithm::{Outcome, Policy};
pub use clock::Clock;
pub use concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer};
pub use key::{KeyBy, KeyContext, MakeRateLimitKey, RateLimitKey};
pub use layer::{
    Admission, HeaderStyle, Limit, RateLimit, RateLimitLayer, RateLimitReport, ResponseFuture,
};
pub use rate::{ParseRateError, Quota, QuotaWindow, Rate};
pub use store::{Check, Decided, Decision, MemoryStore, Store, StoreError};
#[cfg(feature = "redis")]
pub use store::{FailurePolicy, HybridStore, RedisStore, TimeSource};
