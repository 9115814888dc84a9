//! Authentication and authorization for tower services.
//!
//! Every authenticator turns a credential into the same [`gateway_core::Principal`] in the request
//! extensions, so rate limits, caches, transforms and logs read one type whatever authenticated
//! the caller.
//!
//! - [`RequireAuthLayer`]: runs one or more [`Authenticate`] providers (any of them may
//!   authenticate the request), optionally requires roles, answers `401` with
//!   `WWW-Authenticate` or `403`, with RFC 9457 problem bodies.
//! - [`ApiKeyAuth`]: API keys stored as SHA-256 digests ([`ApiKeyHash`]), compared in constant
//!   time, several per consumer (rotation), expiring and revocable, read from a header, a query
//!   parameter or a cookie and removed before the request goes on; [`ApiKeyStore`] is the trait
//!   for other key stores.
//! - [`IpFilterLayer`]: allow and deny lists of networks over the resolved client IP.
//! - [`Rules`]: attribute rules (allow/deny over the principal, the request and the time of day,
//!   deny wins, a shadow mode), applied by [`RequireAuthLayer::rules`].
//!
//! - With the `jwt` feature, `JwtAuth`: bearer JWTs verified against an inline JWK set or an
//!   HMAC secret, with an algorithm allowlist and the checks of RFC 8725.
//!
//! - With the `mtls` feature, `MtlsAuth`: the verified client certificate (a
//!   [`gateway_core::ClientCertificate`] put in the extensions by the TLS layer) becomes the
//!   principal (SPIFFE URI, DNS name, e-mail or common name), optionally mapped to a consumer.
//! - With the `ext-authz` feature, `ExtAuthz`: a policy decision point asked after
//!   authentication.
//!
//! - With the `jwks` feature, `JwtAuth` fetches its keys from a `jwks_uri` or through OpenID
//!   Connect discovery (see the `jwks` module).
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use gateway_auth::{ApiKeyAuth, ApiKeyHash, Consumer, RequireAuthLayer, StaticApiKeys};
//! use gateway_core::Principal;
//! use http::{Request, Response, StatusCode};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let keys = StaticApiKeys::new()
//!     .with_key(ApiKeyHash::of("s3cret"), Arc::new(Consumer::new("acme").tier("gold")));
//! let mut svc = ServiceBuilder::new()
//!     .layer(RequireAuthLayer::new(ApiKeyAuth::new(keys)))
//!     .service(service_fn(|req: Request<()>| async move {
//!         let who = req.extensions().get::<Principal>().unwrap().consumer().unwrap().to_owned();
//!         // The key itself never reaches the service.
//!         assert!(req.headers().get("x-api-key").is_none());
//!         Ok::<_, std::convert::Infallible>(Response::new(who))
//!     }));
//!
//! let req = Request::builder().header("x-api-key", "s3cret").body(()).unwrap();
//! let res = svc.ready().await.unwrap().call(req).await.unwrap();
//! assert_eq!(res.body(), "acme");
//!
//! let res = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//! assert_eq!(res.headers()["www-authenticate"], "ApiKey realm=\"gateway\"");
//! # }
//! ```
//!
//! # Security considerations
//! Keys are never stored, logged or echoed: configuration holds digests, failures are logged as
//! audit events (reason, client IP, route) without the credential, and the `401` body is the same
//! for an unknown, expired or revoked key. A request carrying two credentials (two key headers, a
//! header and a query parameter) is refused rather than resolved by order. An invalid credential
//! is refused even on a route where authentication is optional: it never degrades to anonymous.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

mod apikey;
#[cfg(feature = "ext-authz")]
pub mod extauthz;
pub mod ip;
#[cfg(feature = "jwks")]
pub mod jwks;
#[cfg(feature = "jwt")]
pub mod jwt;
mod layer;
#[cfg(feature = "mtls")]
pub mod mtls;
pub mod rules;

pub use apikey::{
    ApiKeyAuth, ApiKeyHash, ApiKeyRecord, ApiKeySource, ApiKeyStore, Consumer,
    ParseApiKeyHashError, StaticApiKeys,
};
#[cfg(feature = "ext-authz")]
pub use extauthz::{ExtAuthz, Grant, PolicyAnswer, PolicyClient, PolicyFuture};
pub use ip::{IpFilter, IpFilterLayer};
#[cfg(feature = "jwt")]
pub use jwt::{JwtAuth, JwtAuthBuilder, JwtConfigError};
pub use layer::{RequireAuth, RequireAuthLayer, ResponseFuture};
#[cfg(feature = "mtls")]
pub use mtls::MtlsAuth;
pub use rules::{Condition, Effect, Rule, Rules};

use gateway_core::Principal;
use http::request::Parts;

impl<A: Authenticate + ?Sized> Authenticate for std::sync::Arc<A> {
    fn authenticate(&self, parts: &mut Parts) -> Credential {
        (**self).authenticate(parts)
    }

    fn challenge(&self, invalid: bool) -> &'static str {
        (**self).challenge(invalid)
    }
}

/// The client's address: the resolved [`gateway_core::ClientIp`], else the socket peer, in its
/// canonical form (IPv4-mapped IPv6 as IPv4). Shared by the IP filter, the rules and external
/// authorization, so they judge the same address.
pub(crate) fn client_ip(ext: &http::Extensions) -> Option<std::net::IpAddr> {
    ext.get::<gateway_core::ClientIp>()
        .map(gateway_core::ClientIp::ip)
        .or_else(|| {
            ext.get::<gateway_core::ConnectionInfo>()
                .map(|c| c.peer.ip())
        })
        .map(|ip| ip.to_canonical())
}

/// What a provider found in a request.
#[derive(Debug)]
#[non_exhaustive]
pub enum Credential {
    /// No credential of this provider's kind.
    Absent,
    /// A valid credential: who the caller is.
    Valid(Principal),
    /// A credential that is present but not valid (unknown, expired, revoked, malformed).
    Invalid(AuthFailure),
}

/// Why a credential was refused: for the audit log, never for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthFailure {
    provider: &'static str,
    reason: &'static str,
}

impl AuthFailure {
    /// A failure of `provider` (a short name such as `api_key`) for `reason`.
    pub fn new(provider: &'static str, reason: &'static str) -> Self {
        Self { provider, reason }
    }

    /// The provider.
    pub fn provider(&self) -> &'static str {
        self.provider
    }

    /// The reason (never containing the credential).
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

/// An authentication provider: reads its credential from a request, removes it (so it is never
/// forwarded), and says who the caller is.
pub trait Authenticate: Send + Sync + 'static {
    /// Examines (and strips) this provider's credential.
    fn authenticate(&self, parts: &mut Parts) -> Credential;

    /// The `WWW-Authenticate` challenge for a `401` (e.g. `Bearer realm="api"`); `invalid` when
    /// a credential was presented and refused (RFC 6750 then adds `error="invalid_token"`).
    fn challenge(&self, invalid: bool) -> &'static str;
}
