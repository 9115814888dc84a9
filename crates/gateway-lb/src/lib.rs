//! Upstream proxying and load balancing as tower services.
//!
//! [`Upstream`] forwards requests to a set of endpoints over pooled keep-alive connections
//! (HTTP/1.1, or HTTP/2 with prior knowledge), streaming bodies both ways. Each `Upstream` (and
//! its clones) owns its pool, built on hyper's connection API: build one per runtime to keep
//! connections on the core that uses them. It is the last service
//! of a gateway's stack: everything in front of it (auth, rate limits, caching) is a layer.
//!
//! Endpoints are picked by a [`balance::Balancer`] that every upstream built from one builder
//! shares: the algorithm ([`balance::Balance`]: round robin, smooth weighted round robin,
//! random, power of two choices over requests in flight or peak-EWMA latency, least
//! connections, Maglev hashing) chooses among endpoints that pass their active health checks,
//! are not ejected by outlier detection and are not backing off after `Retry-After` (see
//! [`health`]).
//!
//! Why not tower's `p2c::Balance` over a `Discover` stream: it is driven through `&mut
//! poll_ready` by one owner, so sharing it between connections needs a `Buffer` (a channel hop
//! and a task per request), and it has no weights, hashing, health or ejection. The balancer
//! here is lock-free (atomics per endpoint) and is read through `&self` by every connection of
//! every core. Endpoint sources still are tower [`Discover`](discover::Discover) streams (see
//! [`discover`]: DNS A/AAAA/SRV built in): a change rebuilds the upstream with
//! [`UpstreamBuilder::with_endpoints`], which keeps what was learnt about the endpoints it still
//! has.
//!
//! # Example
//!
//! ```
//! use gateway_lb::Upstream;
//! use http::{Request, StatusCode};
//! use http_body_util::{BodyExt, Empty};
//! use bytes::Bytes;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // A real upstream on 127.0.0.1 that answers "hello".
//! let backend = gateway_test::TestUpstream::fixed("hello").await;
//!
//! let upstream = Upstream::builder([backend.addr().to_string().parse().unwrap()])
//!     .build::<Empty<Bytes>>();
//! let res = upstream
//!     .oneshot(Request::get("/greeting").body(Empty::new()).unwrap())
//!     .await
//!     .unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "hello");
//! assert_eq!(backend.requests()[0].uri, "/greeting");
//! # }
//! ```
//!
//! # Security considerations
//!
//! - Hop-by-hop fields (RFC 9110 §7.6.1) are removed in both directions, including every field
//!   named in `Connection`, plus `Proxy-Connection`, `Keep-Alive`, `TE` (except `TE: trailers`),
//!   `Trailer`, `Transfer-Encoding`, `Upgrade` and `Proxy-Authorization`.
//! - `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded` (RFC 7239) sent by
//!   a client are replaced unless its peer is a trusted proxy (see
//!   [`gateway_core::ClientIp::via_trusted_proxy`]); from a trusted proxy they are appended to.
//! - Connections that saw a protocol error are closed, never returned to the pool.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

pub mod balance;
pub mod discover;
pub mod health;
mod proxy;

#[cfg(feature = "tls")]
pub use proxy::UpstreamTls;
pub use proxy::{
    Endpoint, EndpointError, HostHeader, Protocol, ResponseBody, ResponseFuture, Upstream,
    UpstreamBuilder, headers::strip_hop_by_hop,
};
