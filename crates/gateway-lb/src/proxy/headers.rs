//! Hop-by-hop stripping and forwarding headers.

use std::{fmt::Write as _, net::IpAddr};

use gateway_core::ForwardedHeader;
use http::{
    HeaderMap, HeaderName, HeaderValue, Version,
    header::{self, CONNECTION, FORWARDED, TE, TRAILER, TRANSFER_ENCODING, UPGRADE, VIA},
};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Removes hop-by-hop fields (RFC 9110 §7.6.1) from `headers`.
///
/// Removes every field named in `Connection`, then `Connection`, `Proxy-Connection`,
/// `Keep-Alive`, `Transfer-Encoding`, `Upgrade`, `Trailer`, `Proxy-Authorization` and `TE`;
/// `TE: trailers` is kept because gRPC over HTTP/2 needs it and it only says the recipient accepts
/// trailers.
///
/// # Example
///
/// ```
/// use gateway_lb::strip_hop_by_hop;
/// use http::HeaderMap;
///
/// let mut h = HeaderMap::new();
/// h.insert("connection", "close, x-secret".parse().unwrap());
/// h.insert("x-secret", "1".parse().unwrap());
/// h.insert("keep-alive", "timeout=5".parse().unwrap());
/// h.insert("accept", "*/*".parse().unwrap());
/// strip_hop_by_hop(&mut h);
/// assert_eq!(h.len(), 1);
/// assert!(h.contains_key("accept"));
/// ```
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the (usually few) field names finds out whether there is anything to do;
    // most messages carry no hop-by-hop field at all.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // RFC 9112 §6.3: with Transfer-Encoding present, Content-Length is wrong and must go, or the
    // next hop would frame the (decoded) body by a stale length.
    if headers.contains_key(TRANSFER_ENCODING) {
        headers.remove(http::header::CONTENT_LENGTH);
    }
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(&name);
        }
        headers.remove(CONNECTION);
    }
    for name in [
        &PROXY_CONNECTION,
        &KEEP_ALIVE,
        &TRANSFER_ENCODING,
        &UPGRADE,
        &TRAILER,
        &header::PROXY_AUTHORIZATION,
    ] {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
    if let Some(te) = headers.get(TE)
        && !te.as_bytes().eq_ignore_ascii_case(b"trailers")
    {
        headers.remove(TE);
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == CONNECTION
        || *name == TE
        || *name == TRANSFER_ENCODING
        || *name == UPGRADE
        || *name == TRAILER
        || *name == header::PROXY_AUTHORIZATION
        || *name == KEEP_ALIVE
        || *name == PROXY_CONNECTION
}

/// What the proxy knows about the inbound request, for the forwarding headers.
pub(crate) struct Forwarding<'a> {
    /// The socket peer, if known.
    pub(crate) peer: Option<IpAddr>,
    /// The forwarding header believed from a trusted peer (kept and appended to); every other
    /// client-sent forwarding header is replaced.
    pub(crate) believed: Option<ForwardedHeader>,
    /// Whether the inbound connection was TLS.
    pub(crate) tls: bool,
    /// The host the client asked for.
    pub(crate) host: Option<&'a HeaderValue>,
    /// The inbound HTTP version.
    pub(crate) version: Version,
}

/// Sets `X-Forwarded-For/-Proto/-Host`, `Forwarded` and `Via` on an outbound request.
pub(crate) fn apply_forwarding(
    headers: &mut HeaderMap,
    fwd: &Forwarding<'_>,
    via: Option<&Via>,
    x_forwarded: bool,
    forwarded: bool,
) {
    let proto = if fwd.tls { "https" } else { "http" };
    if fwd.believed != Some(ForwardedHeader::XForwardedFor) {
        headers.remove(&X_FORWARDED_FOR);
        headers.remove(&X_FORWARDED_PROTO);
        headers.remove(&X_FORWARDED_HOST);
    }
    if fwd.believed != Some(ForwardedHeader::Forwarded) {
        headers.remove(FORWARDED);
    }
    if let Some(peer) = fwd.peer {
        if x_forwarded {
            append_list(headers, &X_FORWARDED_FOR, |b| push_ip(b, peer));
        }
        if forwarded {
            append_list(headers, &FORWARDED, |b| {
                match peer {
                    IpAddr::V4(_) => {
                        b.push_str("for=");
                        push_ip(b, peer);
                    }
                    IpAddr::V6(_) => {
                        b.push_str("for=\"[");
                        push_ip(b, peer);
                        b.push_str("]\"");
                    }
                }
                b.push_str(";proto=");
                b.push_str(proto);
                if let Some(host) = fwd.host.and_then(|h| h.to_str().ok())
                    && host
                        .bytes()
                        .all(|c| c.is_ascii_graphic() && !matches!(c, b'"' | b'\\' | b',' | b';'))
                {
                    b.push_str(";host=\"");
                    b.push_str(host);
                    b.push('"');
                }
            });
        }
    }
    if x_forwarded {
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
        if !headers.contains_key(&X_FORWARDED_HOST)
            && let Some(host) = fwd.host
        {
            headers.insert(&X_FORWARDED_HOST, host.clone());
        }
    }
    if let Some(via) = via {
        let value = via.for_version(fwd.version);
        if headers.contains_key(VIA) {
            append_list(headers, &VIA, |b| {
                b.push_str(value.to_str().unwrap_or_default());
            });
        } else {
            headers.insert(VIA, value.clone());
        }
    }
}

/// The `Via` values this proxy adds, made once per upstream: `1.1 gateway`, `2 gateway`, ...
#[derive(Clone, Debug)]
pub(crate) struct Via {
    v10: HeaderValue,
    v11: HeaderValue,
    v2: HeaderValue,
    v3: HeaderValue,
}

impl Via {
    /// `None` when `pseudonym` is not a valid header value.
    pub(crate) fn new(pseudonym: &str) -> Option<Self> {
        let make = |v: &str| HeaderValue::from_str(&format!("{v} {pseudonym}")).ok();
        Some(Self {
            v10: make("1.0")?,
            v11: make("1.1")?,
            v2: make("2")?,
            v3: make("3")?,
        })
    }

    fn for_version(&self, version: Version) -> &HeaderValue {
        match version {
            Version::HTTP_10 | Version::HTTP_09 => &self.v10,
            Version::HTTP_2 => &self.v2,
            Version::HTTP_3 => &self.v3,
            _ => &self.v11,
        }
    }
}

/// Writes an address without the formatting machinery (IPv4, the common case, by hand).
fn push_ip(buf: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push('.');
                }
                if octet >= 100 {
                    buf.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    buf.push(char::from(b'0' + octet / 10 % 10));
                }
                buf.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(buf, "{v6}");
        }
    }
}

/// Appends an element to a comma-separated list header, folding existing lines into one.
fn append_list(headers: &mut HeaderMap, name: &HeaderName, element: impl FnOnce(&mut String)) {
    let mut buf = String::with_capacity(48);
    for existing in headers.get_all(name) {
        if let Ok(s) = existing.to_str() {
            buf.push_str(s);
            buf.push_str(", ");
        }
    }
    element(&mut buf);
    // Hands the String's buffer to the header value without copying it.
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(buf)) {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(trusted: bool, host: Option<&HeaderValue>) -> Forwarding<'_> {
        Forwarding {
            peer: Some("10.0.0.1".parse().unwrap()),
            believed: trusted.then_some(ForwardedHeader::XForwardedFor),
            tls: false,
            host,
            version: Version::HTTP_11,
        }
    }

    #[test]
    fn untrusted_peers_forwarding_headers_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        h.insert("x-forwarded-host", "evil.example".parse().unwrap());
        h.insert("forwarded", "for=6.6.6.6".parse().unwrap());
        let host = HeaderValue::from_static("api.example.com");
        apply_forwarding(
            &mut h,
            &fwd(false, Some(&host)),
            Via::new("gateway").as_ref(),
            true,
            true,
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert_eq!(
            h["forwarded"],
            "for=10.0.0.1;proto=http;host=\"api.example.com\""
        );
        assert_eq!(h["via"], "1.1 gateway");
    }

    #[test]
    fn trusted_peers_forwarding_headers_are_appended_to() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1".parse().unwrap());
        h.append("x-forwarded-for", "2.2.2.2".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        h.insert("via", "1.1 edge".parse().unwrap());
        apply_forwarding(
            &mut h,
            &fwd(true, None),
            Via::new("gateway").as_ref(),
            true,
            false,
        );
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["via"], "1.1 edge, 1.1 gateway");
        assert!(!h.contains_key("forwarded"));
    }

    #[test]
    fn ipv6_peers_are_quoted_in_forwarded() {
        let mut h = HeaderMap::new();
        let f = Forwarding {
            peer: Some("2001:db8::1".parse().unwrap()),
            believed: None,
            tls: true,
            host: None,
            version: Version::HTTP_2,
        };
        apply_forwarding(&mut h, &f, None, false, true);
        assert_eq!(h["forwarded"], "for=\"[2001:db8::1]\";proto=https");
        assert!(!h.contains_key("via"));
    }

    #[test]
    fn ipv4_is_written_like_display() {
        for ip in [
            "0.0.0.0",
            "10.0.0.1",
            "192.168.100.255",
            "1.20.3.40",
            "255.255.255.255",
        ] {
            let mut s = String::new();
            push_ip(&mut s, ip.parse().unwrap());
            assert_eq!(s, ip);
        }
    }

    #[test]
    fn a_trusted_proxys_unchecked_header_is_replaced_not_kept() {
        // X-Forwarded-For was the believed header; a client-sent Forwarded was never checked.
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "198.51.100.7".parse().unwrap());
        h.insert("forwarded", "for=6.6.6.6".parse().unwrap());
        apply_forwarding(&mut h, &fwd(true, None), None, true, true);
        assert_eq!(h["x-forwarded-for"], "198.51.100.7, 10.0.0.1");
        assert_eq!(h["forwarded"], "for=10.0.0.1;proto=http");
    }

    #[test]
    fn hosts_with_list_separators_are_left_out_of_forwarded() {
        let mut h = HeaderMap::new();
        let host = HeaderValue::from_static("a,for=1.2.3.4");
        apply_forwarding(&mut h, &fwd(false, Some(&host)), None, false, true);
        assert_eq!(h["forwarded"], "for=10.0.0.1;proto=http");
    }

    #[test]
    fn transfer_encoding_removes_a_stale_content_length() {
        let mut h = HeaderMap::new();
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("content-length", "5".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn te_trailers_survives_other_te_values_do_not() {
        let mut h = HeaderMap::new();
        h.insert("te", "trailers".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h["te"], "trailers");
        h.insert("te", "gzip, trailers".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(!h.contains_key("te"));
    }

    #[test]
    fn all_fixed_hop_by_hop_fields_go() {
        let mut h = HeaderMap::new();
        for name in [
            "proxy-connection",
            "keep-alive",
            "transfer-encoding",
            "upgrade",
            "trailer",
            "proxy-authorization",
            "connection",
        ] {
            h.insert(HeaderName::from_static(name), "x".parse().unwrap());
        }
        h.insert("x", "kept? no: named in Connection".parse().unwrap());
        h.insert("y", "kept".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["y"], "kept");
    }
}
