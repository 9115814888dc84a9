//! The upstream proxy service.

mod body;
mod endpoint;
mod future;
pub(crate) mod headers;
mod pool;
mod service;
#[cfg(feature = "tls")]
mod tls;
mod tracked;

pub use body::ResponseBody;
pub use endpoint::{Endpoint, EndpointError};
pub use future::ResponseFuture;
pub use service::{HostHeader, Protocol, Upstream, UpstreamBuilder};
#[cfg(feature = "tls")]
pub use tls::UpstreamTls;
