//! IP allow and deny lists over the resolved client IP.
//!
//! The address is the [`ClientIp`](gateway_core::ClientIp) in the request extensions (put there
//! by [`gateway_core::ResolveClientIpLayer`] or the reference gateway), else the socket peer from
//! [`ConnectionInfo`](gateway_core::ConnectionInfo); a request with neither is refused (fail
//! closed). Deny wins over allow; an empty allow list allows every address not denied. Refusals
//! are `403` problem bodies.
//!
//! # Example
//!
//! ```
//! use gateway_auth::IpFilterLayer;
//! use gateway_core::ClientIp;
//! use http::{Request, Response, StatusCode};
//! use tower::{Layer, Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = IpFilterLayer::new()
//!     .allow(["10.0.0.0/8".parse().unwrap(), "2001:db8::/32".parse().unwrap()])
//!     .deny(["10.66.0.0/16".parse().unwrap()]);
//! let mut svc = layer.layer(service_fn(|_req: Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(String::from("hi")))
//! }));
//! let from = |ip: &str| {
//!     let mut req = Request::new(());
//!     req.extensions_mut().insert(ClientIp::direct(ip.parse().unwrap()));
//!     req
//! };
//! assert_eq!(svc.ready().await.unwrap().call(from("10.1.2.3")).await.unwrap().status(), 200);
//! assert_eq!(svc.ready().await.unwrap().call(from("10.66.0.1")).await.unwrap().status(), 403);
//! assert_eq!(svc.ready().await.unwrap().call(from("192.0.2.1")).await.unwrap().status(), 403);
//! assert_eq!(svc.ready().await.unwrap().call(from("::ffff:10.1.2.3")).await.unwrap().status(), 200);
//! // Lists written in IPv4-mapped form mean the same IPv4 networks.
//! let mapped = IpFilterLayer::new().deny(["::ffff:192.0.2.0/120".parse().unwrap()]);
//! assert!(!mapped.permits("192.0.2.9".parse().unwrap()));
//! # }
//! ```

use std::{
    net::IpAddr,
    sync::Arc,
    task::{Context, Poll},
};

use gateway_core::{Problem, RejectReason, ResponseFlags};
use http::{Request, Response, StatusCode};
use ipnet::IpNet;
use tower_layer::Layer;
use tower_service::Service;

use crate::layer::ResponseFuture;

/// Layer applying allow/deny lists; see the [module docs](self). Stays ready; clones share the
/// lists.
#[derive(Clone, Debug, Default)]
pub struct IpFilterLayer {
    lists: Arc<Lists>,
}

#[derive(Clone, Debug, Default)]
struct Lists {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl IpFilterLayer {
    /// A filter that allows everything (until lists are added).
    pub fn new() -> Self {
        Self::default()
    }

    /// Only addresses in these networks are allowed (added to any already allowed).
    pub fn allow(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        Arc::make_mut(&mut self.lists)
            .allow
            .extend(nets.into_iter().map(canonical));
        self
    }

    /// Addresses in these networks are refused, even when also allowed.
    pub fn deny(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        Arc::make_mut(&mut self.lists)
            .deny
            .extend(nets.into_iter().map(canonical));
        self
    }

    /// The `403` to answer `req` with, or `None` when its client may pass. For pipelines outside
    /// tower.
    pub fn refusal<B, ResBody: From<String>>(&self, req: &Request<B>) -> Option<Response<ResBody>> {
        let ip = crate::client_ip(req.extensions());
        if ip.is_some_and(|ip| self.permits(ip)) {
            return None;
        }
        tracing::info!(target: "gateway_auth::audit", client_ip = ?ip, "client IP refused by the IP filter");
        Some(
            Problem::new(StatusCode::FORBIDDEN)
                .detail("this client address is not allowed")
                .reason(RejectReason::Forbidden, ResponseFlags::empty())
                .into_response(),
        )
    }

    /// Whether `ip` passes the lists.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let l = &self.lists;
        !l.deny.iter().any(|n| n.contains(&ip))
            && (l.allow.is_empty() || l.allow.iter().any(|n| n.contains(&ip)))
    }
}

/// An IPv4-mapped IPv6 network (`::ffff:198.51.100.0/120`) as the IPv4 network it is, since
/// client addresses are compared in their IPv4 form.
fn canonical(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        other => other,
    }
}

impl<S> Layer<S> for IpFilterLayer {
    type Service = IpFilter<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IpFilter {
            inner,
            filter: self.clone(),
        }
    }
}

/// Service applying an [`IpFilterLayer`].
#[derive(Clone, Debug)]
pub struct IpFilter<S> {
    inner: S,
    filter: IpFilterLayer,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for IpFilter<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<String>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        match self.filter.refusal(&req) {
            None => ResponseFuture::inner(self.inner.call(req)),
            Some(res) => ResponseFuture::answer(res),
        }
    }
}
