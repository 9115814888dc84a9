//! An RFC 9111 shared cache for tower API gateways — in progress.
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
//! Not built yet: the `CacheLayer` (keys, `Vary` variants, conditional revalidation, coalescing,
//! streaming storage, invalidation), the memory and Redis stores, purge, and the gateway's
//! `cache` block.

pub mod policy;
