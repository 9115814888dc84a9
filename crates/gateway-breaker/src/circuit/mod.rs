//! The circuit breaker.
//!
//! Closed: calls pass and their outcomes accrue in a sliding window (the last N calls, or the
//! calls of the last T). The breaker trips to open when, with at least `minimum_calls` in the
//! window, the failure rate or the slow-call rate reaches its threshold, or, in
//! consecutive-failures mode, after N failures in a row. Open: calls are answered at once with
//! `503`, `Retry-After` and flag `UO` (or a fallback), for `open_for`, growing by
//! `backoff_multiplier` on each trip that follows a failed probe, up to `max_open_for`, with
//! jitter. Then half-open: up to `half_open_probes` calls go through; if they all succeed the
//! breaker closes, if one fails it opens again.
//!
//! The state is shared by every clone of the service and of the layer (axum clones per route and
//! per connection), and can be read, watched and forced through a [`CircuitBreakerHandle`].

mod breaker;
mod layer;
mod service;
mod window;

pub use breaker::{
    BreakerMetrics, BreakerState, CallPermit, CircuitBreakerConfig, CircuitBreakerHandle, Window,
};
pub use layer::CircuitBreakerLayer;
pub use service::{CircuitBreaker, ResponseFuture};
