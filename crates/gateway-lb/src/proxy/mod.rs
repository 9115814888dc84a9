//! The upstream proxy service.

mod body;
mod endpoint;
mod future;
pub(crate) mod headers;
mod pool;
mod service;
mod tracked;

pub use body::ResponseBody;
pub use endpoint::{Endpoint, EndpointError};
pub use future::ResponseFuture;
pub use service::{HostHeader, Protocol, Upstream, UpstreamBuilder};
