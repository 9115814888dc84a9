//! An RFC 9111 shared cache for tower API gateways (in progress).
//!
//! What exists: [`policy`], the cache's decisions as pure functions, tested section by section:
//! storability for a shared cache (§3, with §3.5 for requests with `Authorization`, `Set-Cookie`
//! not stored by default, `Vary: *` never reused, `must-understand`), the freshness lifetime
//! (`s-maxage`, `max-age`, `Expires`/`Date`, the `Last-Modified` heuristic where the RFC allows
//! it, a default TTL, floor and ceiling), age (§4.2.3), and reuse of a stored response
//! (request and response `no-cache`, `Pragma`, `max-age`, `min-fresh`, `max-stale`,
//! `must-revalidate`/`proxy-revalidate`/`s-maxage`, `stale-while-revalidate` and
//! `stale-if-error` from RFC 5861).
//!
//! [`CacheLayer`] puts that policy in front of any tower HTTP service, over a [`CacheStore`]
//! ([`MemoryStore`]: bounded by total size, oldest first out): `GET` and `HEAD` looked up
//! (`HEAD` from a stored `GET`), `Vary` variants with normalized values, fresh hits with `Age`
//! and `Cache-Status`, conditional revalidation (`304` refreshes the stored headers),
//! `stale-if-error`, `only-if-cached`, invalidation of the target URI and a same-host
//! `Location`/`Content-Location` by unsafe methods, and purges by key prefix or by
//! `Surrogate-Key`/`Cache-Tag` tag. [`CacheLayer::serve`] runs the cache around one origin call
//! for servers that do not use tower. With the `redis` feature, [`RedisStore`] keeps entries in
//! Redis, shared by every instance (a Redis failure is a miss). Concurrent misses for one key are coalesced: one request
//! goes to the origin, the others wait for its answer (bounded by `coalesce_wait`). Only responses with a declared length within
//! the body cap are buffered and stored; everything else streams through untouched.
//!
//! Not built yet: a background refresh for `stale-while-revalidate` (within the window such entries
//! are served stale; after it they are revalidated), storing while streaming, keys with
//! sorted/filtered queries, unkeyed-header stripping, `CDN-Cache-Control`, ranges
//! served from stored bodies (requests with `Range` bypass the cache, and `206` is never
//! stored).

mod layer;
pub mod policy;
#[cfg(feature = "redis")]
mod redis_store;

pub use layer::{Cache, CacheBody, CacheLayer, CacheStore, Entry, MemoryStore, StoreFuture};
#[cfg(feature = "redis")]
pub use redis_store::RedisStore;
