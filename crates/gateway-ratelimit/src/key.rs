//! What a limit counts per: client IP, header, route, consumer, or a composite of them.

use std::{
    fmt::{self, Write as _},
    net::IpAddr,
    sync::Arc,
};

use gateway_core::{ClientIp, ConnectionInfo, Principal, RouteId, normalize_path};
use http::{Extensions, HeaderMap, HeaderName, Method, Uri};

/// The parts of a request a key is made from.
#[derive(Clone, Copy, Debug)]
pub struct KeyContext<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request target.
    pub uri: &'a Uri,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The request extensions (`ClientIp`, `Principal`, `RouteId`, ...).
    pub extensions: &'a Extensions,
}

impl<'a> KeyContext<'a> {
    /// The context of a request.
    pub fn of<B>(req: &'a http::Request<B>) -> Self {
        Self {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extensions: req.extensions(),
        }
    }
}

/// A rate-limit key: the partition a request is counted in. Opaque text; it reaches a store (and
/// Redis key names) but never a log line or a metric label, since it may hold a credential-derived
/// value.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RateLimitKey(String);

impl RateLimitKey {
    /// A key from text.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RateLimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RateLimitKey(..)")
    }
}

/// Makes the key a request is counted under, or `None` when the limit does not apply to it.
///
/// Implemented by [`KeyBy`] and by closures `Fn(&KeyContext<'_>) -> Option<RateLimitKey>`.
pub trait MakeRateLimitKey: Send + Sync + 'static {
    /// The key for this request, or `None` to skip the limit for it.
    fn make_key(&self, cx: &KeyContext<'_>) -> Option<RateLimitKey>;
}

impl<F> MakeRateLimitKey for F
where
    F: Fn(&KeyContext<'_>) -> Option<RateLimitKey> + Send + Sync + 'static,
{
    fn make_key(&self, cx: &KeyContext<'_>) -> Option<RateLimitKey> {
        self(cx)
    }
}

/// The built-in keys.
///
/// ```
/// use gateway_core::ClientIp;
/// use gateway_ratelimit::{KeyBy, KeyContext, MakeRateLimitKey};
///
/// let by = KeyBy::header(http::HeaderName::from_static("x-api-key")).or(KeyBy::client_ip());
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(ClientIp::direct("2001:db8::1".parse().unwrap()));
/// let anon = by.make_key(&KeyContext::of(&req)).unwrap();
/// // IPv6 clients are aggregated per /64 by default.
/// req.extensions_mut().insert(ClientIp::direct("2001:db8::ffff".parse().unwrap()));
/// assert_eq!(by.make_key(&KeyContext::of(&req)).unwrap(), anon);
/// req.headers_mut().insert("x-api-key", "k1".parse().unwrap());
/// assert_ne!(by.make_key(&KeyContext::of(&req)).unwrap(), anon);
/// ```
#[derive(Clone, Debug)]
pub struct KeyBy(Kind);

#[derive(Clone, Debug)]
enum Kind {
    Global,
    ClientIp { v4_prefix: u8, v6_prefix: u8 },
    Header(HeaderName),
    Route,
    Consumer,
    Tier,
    All(Arc<[KeyBy]>),
    Or(Arc<(KeyBy, KeyBy)>),
}

impl KeyBy {
    /// One shared key for every request.
    pub fn global() -> Self {
        Self(Kind::Global)
    }

    /// The client IP ([`ClientIp`] from the request extensions, else the socket peer from
    /// [`ConnectionInfo`]). IPv6 addresses are aggregated per /64 (one customer's allocation),
    /// IPv4 per address. A request carrying neither extension is counted under one shared
    /// "unknown" key, so a stack missing the client-IP layer limits too much rather than not at
    /// all.
    pub fn client_ip() -> Self {
        Self(Kind::ClientIp {
            v4_prefix: 32,
            v6_prefix: 64,
        })
    }

    /// Sets the IPv6 aggregation prefix of a [`client_ip`](Self::client_ip) key (0 to 128).
    pub fn ipv6_prefix(self, prefix: u8) -> Self {
        match self.0 {
            Kind::ClientIp { v4_prefix, .. } => Self(Kind::ClientIp {
                v4_prefix,
                v6_prefix: prefix.min(128),
            }),
            other => Self(other),
        }
    }

    /// Sets the IPv4 aggregation prefix of a [`client_ip`](Self::client_ip) key (0 to 32).
    pub fn ipv4_prefix(self, prefix: u8) -> Self {
        match self.0 {
            Kind::ClientIp { v6_prefix, .. } => Self(Kind::ClientIp {
                v4_prefix: prefix.min(32),
                v6_prefix,
            }),
            other => Self(other),
        }
    }

    /// The value of a request header; requests without it are not limited by this key (combine
    /// with [`or`](Self::or) to fall back to another key).
    pub fn header(name: HeaderName) -> Self {
        Self(Kind::Header(name))
    }

    /// The matched route ([`RouteId`]); without one, the normalized path, lower-cased and without
    /// a trailing slash, so spelling variants of one path share a bucket.
    pub fn route() -> Self {
        Self(Kind::Route)
    }

    /// The authenticated consumer ([`Principal::consumer`], else its subject); anonymous requests
    /// are not limited by this key (combine with [`or`](Self::or)).
    pub fn consumer() -> Self {
        Self(Kind::Consumer)
    }

    /// The caller's tier ([`Principal::tier`]): every consumer of a tier shares one bucket.
    /// Callers without a tier are not limited by this key (combine with [`or`](Self::or)).
    pub fn tier() -> Self {
        Self(Kind::Tier)
    }

    /// A composite key: all parts must be present.
    pub fn all(parts: impl IntoIterator<Item = KeyBy>) -> Self {
        Self(Kind::All(parts.into_iter().collect()))
    }

    /// This key, or `other` when this one is absent.
    pub fn or(self, other: KeyBy) -> Self {
        Self(Kind::Or(Arc::new((self, other))))
    }

    fn write(&self, cx: &KeyContext<'_>, out: &mut String) -> Option<()> {
        match &self.0 {
            Kind::Global => out.push('*'),
            Kind::ClientIp {
                v4_prefix,
                v6_prefix,
            } => {
                let ip = cx
                    .extensions
                    .get::<ClientIp>()
                    .map(ClientIp::ip)
                    .or_else(|| cx.extensions.get::<ConnectionInfo>().map(|c| c.peer.ip()));
                match ip.map(|ip| ip.to_canonical()) {
                    Some(IpAddr::V4(v4)) => {
                        let mask = u32::MAX
                            .checked_shl(32 - u32::from(*v4_prefix))
                            .unwrap_or(0);
                        // Written by hand: this runs on every request.
                        let octets = (u32::from(v4) & mask).to_be_bytes();
                        out.push_str("ip:");
                        for (i, o) in octets.into_iter().enumerate() {
                            if i > 0 {
                                out.push('.');
                            }
                            push_small(out, o);
                        }
                        out.push('/');
                        push_small(out, *v4_prefix);
                    }
                    Some(IpAddr::V6(v6)) => {
                        let mask = u128::MAX
                            .checked_shl(128 - u32::from(*v6_prefix))
                            .unwrap_or(0);
                        let _ = write!(
                            out,
                            "ip:{}/{v6_prefix}",
                            std::net::Ipv6Addr::from(u128::from(v6) & mask)
                        );
                    }
                    None => out.push_str("ip:unknown"),
                }
            }
            Kind::Header(name) => {
                let value = cx.headers.get(name)?.as_bytes();
                // Length-prefixed, so a value cannot forge the boundary of a composite key.
                let _ = write!(out, "h:{}:{}:", name.as_str(), value.len());
                out.push_str(&String::from_utf8_lossy(value));
            }
            Kind::Route => {
                if let Some(route) = cx.extensions.get::<RouteId>() {
                    let _ = write!(out, "r:{}:{}", route.as_str().len(), route.as_str());
                } else {
                    let path = normalize_path(cx.uri.path())
                        .map(|p| p.to_ascii_lowercase())
                        .unwrap_or_else(|_| String::from("<invalid>"));
                    let path = path
                        .strip_suffix('/')
                        .filter(|p| !p.is_empty())
                        .unwrap_or(&path);
                    let _ = write!(out, "p:{}:{path}", path.len());
                }
            }
            Kind::Consumer => {
                let p = cx.extensions.get::<Principal>()?;
                // A subject never shares a bucket with a consumer id that happens to be equal.
                match p.consumer() {
                    Some(id) => {
                        let _ = write!(out, "c:{}:{id}", id.len());
                    }
                    None => {
                        let _ = write!(out, "s:{}:{}", p.subject().len(), p.subject());
                    }
                }
            }
            Kind::Tier => {
                let tier = cx.extensions.get::<Principal>()?.tier()?;
                let _ = write!(out, "t:{}:{tier}", tier.len());
            }
            Kind::All(parts) => {
                for (i, part) in parts.iter().enumerate() {
                    if i > 0 {
                        out.push('|');
                    }
                    part.write(cx, out)?;
                }
            }
            Kind::Or(pair) => {
                let len = out.len();
                if pair.0.write(cx, out).is_none() {
                    out.truncate(len);
                    pair.1.write(cx, out)?;
                }
            }
        }
        Some(())
    }
}

/// Appends a number below 256 in decimal.
fn push_small(out: &mut String, n: u8) {
    if n >= 100 {
        out.push(char::from(b'0' + n / 100));
    }
    if n >= 10 {
        out.push(char::from(b'0' + n / 10 % 10));
    }
    out.push(char::from(b'0' + n % 10));
}

impl MakeRateLimitKey for KeyBy {
    fn make_key(&self, cx: &KeyContext<'_>) -> Option<RateLimitKey> {
        let mut out = String::with_capacity(48);
        self.write(cx, &mut out)?;
        Some(RateLimitKey(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(by: &KeyBy, req: &http::Request<()>) -> Option<String> {
        by.make_key(&KeyContext::of(req)).map(|k| k.0)
    }

    #[test]
    fn client_ip_falls_back_to_the_peer_then_to_one_shared_key() {
        let mut req = http::Request::new(());
        assert_eq!(key(&KeyBy::client_ip(), &req).unwrap(), "ip:unknown");
        req.extensions_mut()
            .insert(ConnectionInfo::new("192.0.2.7:5000".parse().unwrap()));
        assert_eq!(key(&KeyBy::client_ip(), &req).unwrap(), "ip:192.0.2.7/32");
        req.extensions_mut()
            .insert(ClientIp::direct("::ffff:198.51.100.9".parse().unwrap()));
        assert_eq!(
            key(&KeyBy::client_ip(), &req).unwrap(),
            "ip:198.51.100.9/32"
        );
        assert_eq!(
            key(&KeyBy::client_ip().ipv4_prefix(24), &req).unwrap(),
            "ip:198.51.100.0/24"
        );
        req.extensions_mut()
            .insert(ClientIp::direct("2001:db8:1:2:3::9".parse().unwrap()));
        assert_eq!(
            key(&KeyBy::client_ip(), &req).unwrap(),
            "ip:2001:db8:1:2::/64"
        );
        assert_eq!(
            key(&KeyBy::client_ip().ipv6_prefix(128), &req).unwrap(),
            "ip:2001:db8:1:2:3::9/128"
        );
        assert_eq!(
            key(&KeyBy::client_ip().ipv6_prefix(0), &req).unwrap(),
            "ip:::/0"
        );
    }

    #[test]
    fn route_variants_share_a_key() {
        let by = KeyBy::route();
        let k = |p: &str| key(&by, &http::Request::get(p).body(()).unwrap()).unwrap();
        assert_eq!(k("/api/orders"), k("/API/Orders/"));
        assert_eq!(k("/api/orders"), k("/api//%6frders"));
        assert_eq!(k("/api/orders"), k("/api/x/../orders"));
        assert_ne!(k("/api/orders"), k("/api/orders2"));
        let mut req = http::Request::get("/whatever").body(()).unwrap();
        req.extensions_mut().insert(RouteId::new("orders"));
        assert_eq!(key(&by, &req).unwrap(), "r:6:orders");
    }

    #[test]
    fn composite_parts_cannot_be_forged_by_a_value() {
        let by = KeyBy::all([
            KeyBy::header(HeaderName::from_static("a")),
            KeyBy::header(HeaderName::from_static("b")),
        ]);
        let mut one = http::Request::new(());
        one.headers_mut().insert("a", "x|h:b:1:y".parse().unwrap());
        one.headers_mut().insert("b", "z".parse().unwrap());
        let mut two = http::Request::new(());
        two.headers_mut().insert("a", "x".parse().unwrap());
        two.headers_mut().insert("b", "y|h:b:1:z".parse().unwrap());
        assert_ne!(key(&by, &one), key(&by, &two));
        // A missing part makes the whole composite absent.
        two.headers_mut().remove("b");
        assert_eq!(key(&by, &two), None);
    }

    #[test]
    fn consumer_is_absent_for_anonymous_requests() {
        let mut req = http::Request::new(());
        assert_eq!(key(&KeyBy::consumer(), &req), None);
        let fallback = KeyBy::consumer().or(KeyBy::global());
        assert_eq!(key(&fallback, &req).unwrap(), "*");
        req.extensions_mut().insert(
            Principal::new("user-1", gateway_core::AuthMethod::ApiKey).with_consumer("acme"),
        );
        assert_eq!(key(&fallback, &req).unwrap(), "c:4:acme");
        let mut req = http::Request::new(());
        req.extensions_mut()
            .insert(Principal::new("acme", gateway_core::AuthMethod::Jwt));
        assert_eq!(
            key(&fallback, &req).unwrap(),
            "s:4:acme",
            "a subject is not a consumer id"
        );
        assert_eq!(key(&KeyBy::tier(), &req), None, "no tier");
        req.extensions_mut()
            .insert(Principal::new("acme", gateway_core::AuthMethod::Jwt).with_tier("gold"));
        assert_eq!(key(&KeyBy::tier(), &req).unwrap(), "t:4:gold");
    }
}
