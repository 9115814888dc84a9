//! The reference API gateway, built from the `gateway-*` crates.
//!
//! One YAML file ([`Config`]) describes listeners, upstreams and routes; [`Compiled`] validates it
//! (errors name file, line and field) and [`start`] runs it: one single-threaded runtime per
//! core, each accepting on its own `SO_REUSEPORT` socket, with its own upstream connection pools.
//!
//! Per request ([`Pipeline`]): limits (414, 431, 413) -> path normalization (400 for ambiguous
//! encodings) -> client-sent internal headers removed -> client IP resolved from trusted proxies
//! -> routing (404 problem+json when nothing matches) -> rewrite -> upstream.
//!
//! # Example
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = gateway::Config::load("gateway.yaml".as_ref())?;
//! let compiled = gateway::Compiled::new(&config, "gateway.yaml")?;
//! let running = gateway::start(compiled)?;
//! println!("listening on {:?}", running.listen_addrs());
//! running.join();
//! # Ok(())
//! # }
//! ```

mod admin;
mod auth;
mod body;
mod compile;
pub mod config;
mod demo;
mod discovery;
mod observe;
mod pipeline;
mod purge;
pub mod ratelimit;
mod reload;
pub mod router;
mod server;
mod tls;
mod tunnel;

pub use compile::{Compiled, UpstreamSpec};
pub use config::{Config, ConfigError, ConfigIssue};
pub use demo::{DEMO_CONFIG, DEMO_UPSTREAM_ADDR, bind_demo_upstream, serve_demo_upstream};
pub use pipeline::{ClientBody, Pipeline, RequestBody};
pub use reload::ReloadReport;
pub use server::{RunningGateway, start};
