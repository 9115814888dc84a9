use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderMap, Request, header::FORWARDED};
use ipnet::IpNet;
use tower_layer::Layer;
use tower_service::Service;

/// Facts about the connection a request arrived on, put in request extensions by the server.
///
/// The reference gateway inserts one per request. With axum, enable this crate's `axum` feature
/// and serve with `into_make_service_with_connect_info::<SocketAddr>()`; [`ResolveClientIp`] then
/// reads the peer from axum's `ConnectInfo` as well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The socket peer (the client, or the last proxy in front of us).
    pub peer: SocketAddr,
    /// The local address the connection was accepted on, when known.
    pub local: Option<SocketAddr>,
    /// Whether the connection is TLS.
    pub tls: bool,
}

impl ConnectionInfo {
    /// Info for a plain-text connection from `peer`.
    pub fn new(peer: SocketAddr) -> Self {
        Self {
            peer,
            local: None,
            tls: false,
        }
    }

    /// Sets the local address.
    #[must_use]
    pub fn with_local(mut self, local: SocketAddr) -> Self {
        self.local = Some(local);
        self
    }

    /// Marks the connection as TLS.
    #[must_use]
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }
}

/// The resolved address of the client, in request extensions.
///
/// It is the socket peer unless the peer is a [trusted proxy](TrustedProxies), in which case the
/// forwarding header is walked from the right and the first address that is not a trusted proxy
/// wins. Rate limiting by IP, IP allow/deny lists and access logs all read this one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientIp {
    ip: IpAddr,
    /// The header that was believed, when the peer is a trusted proxy.
    believed: Option<ForwardedHeader>,
}

impl ClientIp {
    /// A client address taken directly from the socket peer.
    pub fn direct(ip: IpAddr) -> Self {
        Self {
            ip: ip.to_canonical(),
            believed: None,
        }
    }

    /// The client address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// Whether the socket peer was a trusted proxy, so the forwarding headers it sent were
    /// believed (and a proxy should append to them rather than replace them).
    pub fn via_trusted_proxy(&self) -> bool {
        self.believed.is_some()
    }

    /// The forwarding header that was believed, when the peer is a trusted proxy. A proxy should
    /// append to that one and replace the other, which nobody checked.
    pub fn believed_header(&self) -> Option<ForwardedHeader> {
        self.believed
    }
}

impl fmt::Display for ClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.ip.fmt(f)
    }
}

/// Which header carries the forwarding chain from trusted proxies.
///
/// Pick the one your proxies actually append to: a header the proxy passes through untouched is
/// entirely client-controlled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

/// The networks whose connections may tell us who the client is.
///
/// # Example
///
/// ```
/// use gateway_core::TrustedProxies;
/// use http::HeaderMap;
///
/// let trusted: TrustedProxies = "10.0.0.0/8, 192.168.1.1".parse().unwrap();
/// let mut headers = HeaderMap::new();
/// // A client forged the first entry; the trusted proxy 10.0.0.2 appended the real client.
/// headers.insert("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.0.0.2".parse().unwrap());
/// let client = trusted.resolve("10.0.0.1".parse().unwrap(), &headers);
/// assert_eq!(client.ip().to_string(), "203.0.113.9");
///
/// // An untrusted peer's headers are ignored.
/// let client = trusted.resolve("198.51.100.1".parse().unwrap(), &headers);
/// assert_eq!(client.ip().to_string(), "198.51.100.1");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    header: ForwardedHeader,
}

/// Error parsing a [`TrustedProxies`] entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedProxiesError {
    entry: String,
}

impl fmt::Display for TrustedProxiesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid trusted proxy `{}`: expected an IP address or CIDR network",
            self.entry
        )
    }
}

impl std::error::Error for TrustedProxiesError {}

impl TrustedProxies {
    /// Trusts nobody: the client is always the socket peer.
    pub fn none() -> Self {
        Self::default()
    }

    /// Trusts the given networks.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            nets: nets.into_iter().collect(),
            header: ForwardedHeader::default(),
        }
    }

    /// Parses one entry: an address (`10.0.0.1`, `::1`) or a network (`10.0.0.0/8`).
    pub fn parse_entry(entry: &str) -> Result<IpNet, TrustedProxiesError> {
        let entry = entry.trim();
        entry
            .parse::<IpNet>()
            .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| TrustedProxiesError {
                entry: entry.to_owned(),
            })
    }

    /// Selects the header that carries the forwarding chain.
    #[must_use]
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// The trusted networks.
    pub fn networks(&self) -> &[IpNet] {
        &self.nets
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// Resolves the client address of a request from socket peer `peer`.
    ///
    /// When the peer is trusted, the configured header is read right to left: each trusted hop is
    /// skipped, the first untrusted address is the client. An unparseable entry (`unknown`, an
    /// obfuscated identifier, garbage) stops the walk at the last address that was believed; when
    /// every hop is trusted the leftmost one is the client.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> ClientIp {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return ClientIp::direct(peer);
        }
        let mut client = peer;
        let mut walk = |entry: Option<IpAddr>| -> bool {
            match entry {
                Some(ip) => {
                    client = ip.to_canonical();
                    self.contains(client)
                }
                None => false,
            }
        };
        match self.header {
            ForwardedHeader::XForwardedFor => {
                'outer: for line in headers.get_all("x-forwarded-for").iter().rev() {
                    let Ok(line) = line.to_str() else { break };
                    for entry in line.rsplit(',') {
                        if !walk(parse_node(entry.trim())) {
                            break 'outer;
                        }
                    }
                }
            }
            ForwardedHeader::Forwarded => {
                'outer: for line in headers.get_all(FORWARDED).iter().rev() {
                    let Ok(line) = line.to_str() else { break };
                    let elements: Vec<&str> = split_unquoted(line, b',').collect();
                    for element in elements.into_iter().rev() {
                        if !walk(forwarded_for(element)) {
                            break 'outer;
                        }
                    }
                }
            }
        }
        ClientIp {
            ip: client,
            believed: Some(self.header),
        }
    }
}

impl FromStr for TrustedProxies {
    type Err = TrustedProxiesError;

    /// Parses a comma-separated list of addresses and networks.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .filter(|e| !e.trim().is_empty())
            .map(Self::parse_entry)
            .collect::<Result<Vec<_>, _>>()
            .map(Self::new)
    }
}

/// The `for` parameter of one `Forwarded` element (RFC 7239 §4), as an address.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    split_unquoted(element, b';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        parse_node(value)
    })
}

/// Splits `s` on `sep` outside RFC 7230 quoted strings (`"..."` with `\\` escapes), so a
/// quoted `host="a,b"` stays one element.
fn split_unquoted(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut pos = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut quoted = false;
        while pos < bytes.len() {
            match bytes[pos] {
                b'\\' if quoted => pos += 1,
                b'"' => quoted = !quoted,
                b if b == sep && !quoted => {
                    let part = &s[start..pos];
                    pos += 1;
                    start = pos;
                    return Some(part);
                }
                _ => {}
            }
            pos += 1;
        }
        done = true;
        Some(&s[start.min(s.len())..])
    })
}

/// Parses a node: `192.0.2.1`, `192.0.2.1:8080`, `2001:db8::1`, `[2001:db8::1]:8080`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        let (inner, _) = rest.split_once(']')?;
        return inner.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let (host, port) = node.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// Layer that resolves the [`ClientIp`] of each request into its extensions.
///
/// The peer comes from [`ConnectionInfo`] (or, with the `axum` feature, axum's
/// `ConnectInfo<SocketAddr>`). A request with neither passes through without a `ClientIp`, and
/// layers that need one treat it as unknown.
///
/// This layer never rejects and is always ready when the inner service is. It is `Clone` and the
/// trusted list is shared between clones.
#[derive(Clone, Debug)]
pub struct ResolveClientIpLayer {
    trusted: Arc<TrustedProxies>,
}

impl ResolveClientIpLayer {
    /// Resolves client addresses believing forwarding headers only from `trusted`.
    pub fn new(trusted: TrustedProxies) -> Self {
        Self {
            trusted: Arc::new(trusted),
        }
    }
}

impl<S> Layer<S> for ResolveClientIpLayer {
    type Service = ResolveClientIp<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ResolveClientIp {
            inner,
            trusted: self.trusted.clone(),
        }
    }
}

/// Service that resolves the [`ClientIp`]; see [`ResolveClientIpLayer`].
#[derive(Clone, Debug)]
pub struct ResolveClientIp<S> {
    inner: S,
    trusted: Arc<TrustedProxies>,
}

impl<S> ResolveClientIp<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// The socket peer of `req`. With the `axum` feature, a peer found only in axum's `ConnectInfo`
/// is also recorded as a [`ConnectionInfo`], so every later layer reads one type.
fn peer_of<B>(req: &mut Request<B>) -> Option<SocketAddr> {
    if let Some(info) = req.extensions().get::<ConnectionInfo>() {
        return Some(info.peer);
    }
    #[cfg(feature = "axum")]
    if let Some(info) = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        let peer = info.0;
        req.extensions_mut().insert(ConnectionInfo::new(peer));
        return Some(peer);
    }
    None
}

impl<S, B> Service<Request<B>> for ResolveClientIp<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(peer) = peer_of(&mut req) {
            let client = self.trusted.resolve(peer.ip(), req.headers());
            req.extensions_mut().insert(client);
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name, v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_wins_over_any_header() {
        let t: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let h = headers("x-forwarded-for", &["1.2.3.4"]);
        let c = t.resolve(ip("8.8.8.8"), &h);
        assert_eq!(c.ip(), ip("8.8.8.8"));
        assert!(!c.via_trusted_proxy());
    }

    #[test]
    fn rightmost_untrusted_hop_wins_across_header_lines() {
        let t: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let h = headers(
            "x-forwarded-for",
            &["6.6.6.6, 5.5.5.5", "10.0.0.9, 10.0.0.8"],
        );
        let c = t.resolve(ip("10.0.0.1"), &h);
        assert_eq!(c.ip(), ip("5.5.5.5"));
        assert!(c.via_trusted_proxy());
    }

    #[test]
    fn all_trusted_hops_give_the_leftmost() {
        let t: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let h = headers("x-forwarded-for", &["10.0.0.3, 10.0.0.2"]);
        assert_eq!(t.resolve(ip("10.0.0.1"), &h).ip(), ip("10.0.0.3"));
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_believed_hop() {
        let t: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let h = headers("x-forwarded-for", &["1.1.1.1, not-an-ip, 10.0.0.2"]);
        assert_eq!(t.resolve(ip("10.0.0.1"), &h).ip(), ip("10.0.0.2"));
    }

    #[test]
    fn no_header_from_trusted_peer_gives_the_peer() {
        let t: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        assert_eq!(
            t.resolve(ip("10.0.0.1"), &HeaderMap::new()).ip(),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn forwarded_header_with_ports_quotes_and_ipv6() {
        let t = TrustedProxies::new([TrustedProxies::parse_entry("2001:db8::/32").unwrap()])
            .header(ForwardedHeader::Forwarded);
        let h = headers(
            "forwarded",
            &["for=192.0.2.43;proto=https, For=\"[2001:db8:cafe::17]:4711\""],
        );
        // The peer and the last hop are trusted; 192.0.2.43 is the client.
        let c = t.resolve(ip("2001:db8::1"), &h);
        assert_eq!(c.ip(), ip("192.0.2.43"));
        // Obfuscated identifiers stop the walk.
        let h = headers("forwarded", &["for=_hidden, for=\"[2001:db8::5]\""]);
        assert_eq!(t.resolve(ip("2001:db8::1"), &h).ip(), ip("2001:db8::5"));
    }

    #[test]
    fn forwarded_elements_split_outside_quotes_only() {
        let t = TrustedProxies::new([TrustedProxies::parse_entry("10.0.0.0/8").unwrap()])
            .header(ForwardedHeader::Forwarded);
        // A client-controlled quoted host with a comma must not become a hop of its own.
        let h = headers(
            "forwarded",
            &["for=198.51.100.4;host=\"a,for=10.9.9.9\", for=10.0.0.2;host=\"x;y\""],
        );
        let c = t.resolve(ip("10.0.0.1"), &h);
        assert_eq!(c.ip(), ip("198.51.100.4"));
        assert_eq!(c.believed_header(), Some(ForwardedHeader::Forwarded));
        let parts: Vec<&str> = split_unquoted(r#"a="x\"," , b"#, b',').collect();
        assert_eq!(parts, [r#"a="x\"," "#, " b"]);
    }

    #[test]
    fn forwarded_header_is_ignored_when_xff_is_configured() {
        let t: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let h = headers("forwarded", &["for=1.2.3.4"]);
        assert_eq!(t.resolve(ip("10.0.0.1"), &h).ip(), ip("10.0.0.1"));
    }

    #[test]
    fn ipv4_mapped_peers_are_canonicalized() {
        let t: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let h = headers("x-forwarded-for", &["7.7.7.7:1234"]);
        assert_eq!(t.resolve(ip("::ffff:10.0.0.1"), &h).ip(), ip("7.7.7.7"));
    }

    #[test]
    fn bad_entries_are_reported() {
        let err = "10.0.0.0/8, nope".parse::<TrustedProxies>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid trusted proxy `nope`: expected an IP address or CIDR network"
        );
    }
}
