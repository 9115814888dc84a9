//! Budgeted retries.
//!
//! [`RetryLayer`] retries failed calls so that a blip does not become an error, and never so that
//! a failure becomes a storm:
//!
//! - **budgeted**: retries are drawn from tower's [`TpsBudget`](tower::retry::budget::TpsBudget)
//!   (a fraction of recent requests plus a minimum per second), shared by every clone, so under
//!   100% failure the extra load is capped at that fraction;
//! - **safe by default**: idempotent methods (RFC 9110 §9.2.2: `GET`, `HEAD`, `OPTIONS`, `TRACE`,
//!   `PUT`, `DELETE`) are retried on the configured statuses, timeouts and resets; any method is
//!   retried when the connection could not be made (flag `UF`: nothing was sent); a breaker or
//!   bulkhead rejection (flag `UO`) is never retried;
//! - **bodies replayed only when buffered**: a request body with a known length up to
//!   `max_body_bytes` (64 KiB by default) is buffered and replayed; larger or unknown-length
//!   bodies stream through and are not retried;
//! - **exponential backoff with full jitter**, `Retry-After` honoured up to a cap (a longer
//!   `Retry-After` ends the retries), and a deadline after which no retry starts;
//! - a retry goes through the inner service again, so with a balancer below it usually reaches
//!   another endpoint;
//! - nothing a client sends can raise the number of attempts or the timeouts.
//!
//! The final response carries a [`RetryCount`] extension.

pub(crate) mod body;
pub(crate) mod policy;
mod service;

pub use body::ReplayBody;
pub use policy::{RetryConfig, RetryCount};
pub use service::{Retry, RetryFuture, RetryLayer};
