//! Resilience middleware for tower services.
//!
//! - [`CircuitBreakerLayer`]: stops calling an upstream that keeps failing, answers `503` +
//!   `Retry-After` (or a fallback) without calling it while open, and probes it before closing
//!   again.
//! - [`BulkheadLayer`]: caps concurrent calls to an upstream and sheds the excess with `503`
//!   instead of queueing it in the gateway.
//!
//! The breaker and the bulkhead decide in `call`; their `poll_ready` is the inner service's, so an
//! inner service that applies backpressure still does.
//! - [`RetryLayer`]: budgeted retries with backoff, safe by default (idempotent methods, replayable
//!   bodies, connect failures for any method).
//! - [`HedgeLayer`]: a budgeted second copy of a slow idempotent request; the first answer wins.
//!
//! What counts as a failure comes from [`gateway_core::ClassifyFailure`], the classification
//! shared with retries, outlier detection and metrics.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use gateway_breaker::{BreakerState, CircuitBreakerConfig, CircuitBreakerLayer};
//! use http::{Request, Response, StatusCode};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = CircuitBreakerLayer::new(
//!     CircuitBreakerConfig::default()
//!         .consecutive_failures(3)
//!         .open_for(Duration::from_secs(30))
//!         .jitter(0.0),
//! );
//! let handle = layer.handle();
//! let mut svc = ServiceBuilder::new().layer(layer).service(service_fn(|_req: Request<()>| async {
//!     let mut res = Response::new(String::from("upstream down"));
//!     *res.status_mut() = StatusCode::BAD_GATEWAY;
//!     Ok::<_, std::convert::Infallible>(res)
//! }));
//!
//! for _ in 0..3 {
//!     let res = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
//!     assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
//! }
//! assert_eq!(handle.state(), BreakerState::Open);
//! // While open, the upstream is not called: an immediate 503 with Retry-After.
//! let res = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(res.headers()["retry-after"], "30");
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

pub mod bulkhead;
mod circuit;
pub mod hedge;
pub mod retry;

pub use bulkhead::{Bulkhead, BulkheadFuture, BulkheadLayer, BulkheadPermit};
pub use circuit::{
    BreakerMetrics, BreakerState, CallPermit, CircuitBreaker, CircuitBreakerConfig,
    CircuitBreakerHandle, CircuitBreakerLayer, ResponseFuture, Window,
};
pub use hedge::{Hedge, HedgeFuture, HedgeLayer, Hedged};
pub use retry::{ReplayBody, Retry, RetryConfig, RetryCount, RetryFuture, RetryLayer};
