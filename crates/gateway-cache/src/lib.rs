//! An RFC 9111 shared cache for tower API gateways.
//!
//! [`policy`] holds the cache's decisions as pure functions, tested section by section:
//! storability for a shared cache (§3, with §3.5 for requests with `Authorization`, `Set-Cookie`
//! not stored by default, `Vary: *` never reused, `must-understand`), the freshness lifetime
//! (`s-maxage`, `max-age`, `Expires`/`Date`, the `Last-Modified` heuristic where the RFC allows
//! it, a default TTL, floor and ceiling, targeted fields such as `CDN-Cache-Control` from
//! RFC 9213), age (§4.2.3), and reuse of a stored response (request and response `no-cache`,
//! `Pragma`, `max-age`, `min-fresh`, `max-stale`, `must-revalidate`/`proxy-revalidate`/
//! `s-maxage`, `stale-while-revalidate` and `stale-if-error` from RFC 5861).
//!
//! [`CacheLayer`] puts that policy in front of any tower HTTP service, over a [`CacheStore`]
//! ([`MemoryStore`]: bounded by total size, CLOCK eviction): `GET` and `HEAD` looked up (`HEAD`
//! from a stored `GET`), `Vary` variants with normalized values, fresh hits with `Age` and
//! `Cache-Status` (RFC 9211), `304` answers to conditional clients, conditional revalidation
//! (`304` refreshes the stored headers), `stale-while-revalidate` with one background refresh
//! per key, `stale-if-error`, `only-if-cached`, invalidation of the target URI and a same-host
//! `Location`/`Content-Location` by unsafe methods, and purges by key prefix or by
//! `Surrogate-Key`/`Cache-Tag` tag. Concurrent misses for one key are coalesced (one origin
//! request; the others wait, bounded by `coalesce_wait`). Bodies are stored while they stream
//! to the client, when they end complete and within the size cap. Keys come from a
//! [`MakeCacheKey`] ([`CacheKey`]: sorted or filtered queries, keyed headers), and whatever the
//! key leaves out is not forwarded ([`UNKEYED_HEADERS`], dropped query parameters), so unkeyed
//! input cannot poison a stored answer. Every response carries a [`CacheOutcome`] extension for
//! metrics and logs. [`CacheLayer::serve`] runs the cache around one origin call for servers
//! that do not use tower. With the `redis` feature, [`RedisStore`] keeps entries in Redis,
//! shared by every instance (a Redis failure is a miss).
//!
//! Not built: ranges cut from stored bodies (requests with `Range` bypass the cache, and `206`
//! is never stored).

pub mod key;
mod layer;
pub mod policy;
#[cfg(feature = "redis")]
mod redis_store;

pub use gateway_core::CacheOutcome;
pub use key::{CacheKey, MakeCacheKey, QueryKey, UNKEYED_HEADERS};
pub use layer::{Cache, CacheBody, CacheLayer, CacheStore, Entry, MemoryStore, StoreFuture};
#[cfg(feature = "redis")]
pub use redis_store::RedisStore;
