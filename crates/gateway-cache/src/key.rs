//! Cache keys: which parts of a request select a stored response.
//!
//! A key starts with the absolute URL (`scheme://host/path?query`): purges by URL prefix and the
//! invalidation by unsafe methods match on it. Whatever else selects an entry (keyed request
//! headers, the caller's scope) follows after a `#`, which a request target never contains.
//!
//! Anything the key leaves out must not reach the origin either, or one client's input could
//! shape the answer stored for everyone (cache poisoning). So a key that drops query parameters
//! also drops them from the request that is forwarded, and [`CacheLayer`](crate::CacheLayer)
//! removes the usual unkeyed override headers ([`UNKEYED_HEADERS`]) before it forwards.
//!
//! ```
//! use gateway_cache::{CacheKey, MakeCacheKey, QueryKey};
//! use http::Request;
//!
//! let key = CacheKey::new()
//!     .query(QueryKey::Except(vec!["utm_source".into()]))
//!     .header(http::header::ACCEPT_LANGUAGE);
//! let (mut parts, ()) = Request::get("http://shop.example/items?page=2&utm_source=ad&a=1")
//!     .header("accept-language", "fr")
//!     .body(())
//!     .unwrap()
//!     .into_parts();
//! assert_eq!(
//!     key.make_key(&mut parts),
//!     "http://shop.example/items?a=1&page=2#h:accept-language=fr"
//! );
//! // The dropped parameter is not forwarded either.
//! assert_eq!(parts.uri, "http://shop.example/items?a=1&page=2");
//! ```

use http::{HeaderName, Uri, header, request::Parts};

/// Request headers that change what an origin answers but are not part of the default key, so
/// they are removed from requests the cache may store the answer of: host and scheme overrides
/// (`X-Forwarded-Host`, `X-Forwarded-Scheme`, `X-Forwarded-Proto`, `X-Forwarded-Port`,
/// `X-Forwarded-Server`, `X-Forwarded-Prefix`, `X-Host`, `X-Original-Host`, `Forwarded`), URL
/// overrides (`X-Original-URL`, `X-Rewrite-URL`) and method overrides
/// (`X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`). A reverse proxy behind the
/// cache (the reference gateway's upstream client) sets its own forwarding headers afterwards.
pub const UNKEYED_HEADERS: &[&str] = &[
    "x-forwarded-host",
    "x-forwarded-scheme",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-prefix",
    "x-host",
    "x-original-host",
    "forwarded",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// How requests map to cache keys (see the [module docs](self) for the shape a key must have).
pub trait MakeCacheKey: Send + Sync + 'static {
    /// The key of a `GET` or `HEAD` request. It may rewrite the request (drop a query parameter
    /// it does not key on, say): what is forwarded is the rewritten request.
    fn make_key(&self, req: &mut Parts) -> String;

    /// Request headers the key includes: they are kept even when they are in the unkeyed list.
    fn keyed_headers(&self) -> &[HeaderName] {
        &[]
    }
}

/// Which query parameters are part of the key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum QueryKey {
    /// The query as sent.
    #[default]
    AsSent,
    /// Every parameter, sorted by name (stable), so `?b=1&a=2` and `?a=2&b=1` share an entry.
    Sorted,
    /// Only these parameters, sorted; the others are not forwarded.
    Only(Vec<String>),
    /// Every parameter but these (tracking parameters, say), sorted; those are not forwarded.
    Except(Vec<String>),
    /// No query at all; it is not forwarded.
    Ignored,
}

/// The default key: scheme, host, path and query (per [`QueryKey`]), plus selected request
/// headers. The scheme is the request target's, else `https` when the connection is TLS
/// ([`gateway_core::ConnectionInfo`]), else `http`: an answer cached for one scheme is never
/// served on the other. The method is not part of it (`HEAD` is answered from `GET`).
#[derive(Clone, Debug, Default)]
pub struct CacheKey {
    query: QueryKey,
    headers: Vec<HeaderName>,
}

impl CacheKey {
    /// Scheme, host, path and the query as sent.
    pub fn new() -> Self {
        Self::default()
    }

    /// Which query parameters are keyed (and forwarded).
    #[must_use]
    pub fn query(mut self, query: QueryKey) -> Self {
        self.query = query;
        self
    }

    /// Adds a request header to the key (values normalized as `Vary` compares them).
    #[must_use]
    pub fn header(mut self, name: HeaderName) -> Self {
        if !self.headers.contains(&name) {
            self.headers.push(name);
        }
        self
    }
}

impl MakeCacheKey for CacheKey {
    fn make_key(&self, req: &mut Parts) -> String {
        let host = req
            .uri
            .authority()
            .map(http::uri::Authority::as_str)
            .or_else(|| req.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
            .unwrap_or_default();
        let tls = req
            .extensions
            .get::<gateway_core::ConnectionInfo>()
            .is_some_and(|c| c.tls);
        let scheme = req
            .uri
            .scheme_str()
            .unwrap_or(if tls { "https" } else { "http" });
        let path = req.uri.path();
        let mut key = String::with_capacity(scheme.len() + 3 + host.len() + path.len() + 16);
        key.push_str(scheme);
        key.push_str("://");
        let at = key.len();
        key.push_str(host);
        key[at..].make_ascii_lowercase();
        key.push_str(path);
        if let Some(query) = req.uri.query() {
            let (kept, rewrite) = self.keyed_query(query);
            if !kept.is_empty() {
                key.push('?');
                key.push_str(&kept);
            }
            if rewrite {
                rewrite_query(&mut req.uri, &kept);
            }
        }
        for name in &self.headers {
            key.push_str("#h:");
            key.push_str(name.as_str());
            key.push('=');
            key.push_str(&crate::layer::vary_value(&req.headers, name).replace('#', "%23"));
        }
        key
    }

    fn keyed_headers(&self) -> &[HeaderName] {
        &self.headers
    }
}

impl CacheKey {
    /// The query as keyed, and whether the forwarded request must change to match it.
    fn keyed_query(&self, query: &str) -> (String, bool) {
        let params = || query.split('&').filter(|p| !p.is_empty());
        let name = |p: &str| p.split('=').next().unwrap_or_default().to_owned();
        let sorted = |mut kept: Vec<&str>| {
            kept.sort_by_key(|p| name(p));
            kept.join("&")
        };
        match &self.query {
            QueryKey::AsSent => (query.to_owned(), false),
            QueryKey::Sorted => (sorted(params().collect()), false),
            QueryKey::Only(names) => {
                let kept: Vec<&str> = params().filter(|p| names.contains(&name(p))).collect();
                (sorted(kept), true)
            }
            QueryKey::Except(names) => {
                let kept: Vec<&str> = params().filter(|p| !names.contains(&name(p))).collect();
                (sorted(kept), true)
            }
            QueryKey::Ignored => (String::new(), true),
        }
    }
}

fn rewrite_query(uri: &mut Uri, query: &str) {
    let pq = if query.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{query}", uri.path())
    };
    let mut parts = std::mem::take(uri).into_parts();
    if let Ok(pq) = pq.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(rebuilt) = Uri::from_parts(parts) {
            *uri = rebuilt;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn key(k: &CacheKey, uri: &str, headers: &[(&str, &str)]) -> (String, String) {
        let mut b = Request::get(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        let (mut parts, ()) = b.body(()).unwrap().into_parts();
        let key = k.make_key(&mut parts);
        (key, parts.uri.to_string())
    }

    #[test]
    fn the_default_key_is_the_url_as_sent_with_the_host_lowercased() {
        let (k, fwd) = key(&CacheKey::new(), "/a?b=1&a=2", &[("host", "Shop.Example")]);
        assert_eq!(k, "http://shop.example/a?b=1&a=2");
        assert_eq!(fwd, "/a?b=1&a=2");
    }

    #[test]
    fn sorted_queries_share_an_entry_and_are_forwarded_as_sent() {
        let sorted = CacheKey::new().query(QueryKey::Sorted);
        let (a, fwd) = key(&sorted, "http://h/p?b=1&a=2&a=1", &[]);
        let (b, _) = key(&sorted, "http://h/p?a=2&a=1&b=1", &[]);
        assert_eq!(
            a, "http://h/p?a=2&a=1&b=1",
            "stable: repeated names keep their order"
        );
        assert_eq!(a, b);
        assert_eq!(fwd, "http://h/p?b=1&a=2&a=1");
    }

    #[test]
    fn filtered_parameters_leave_the_key_and_the_forwarded_request() {
        let only = CacheKey::new().query(QueryKey::Only(vec!["page".into()]));
        let (k, fwd) = key(&only, "http://h/p?x=evil&page=2", &[]);
        assert_eq!(k, "http://h/p?page=2");
        assert_eq!(fwd, "http://h/p?page=2");
        let except = CacheKey::new().query(QueryKey::Except(vec!["utm_source".into()]));
        let (k, fwd) = key(&except, "http://h/p?utm_source=x", &[]);
        assert_eq!(k, "http://h/p");
        assert_eq!(fwd, "http://h/p");
        let ignored = CacheKey::new().query(QueryKey::Ignored);
        let (k, fwd) = key(&ignored, "/p?q=1", &[("host", "h")]);
        assert_eq!(k, "http://h/p");
        assert_eq!(fwd, "/p");
    }

    #[test]
    fn keyed_headers_follow_the_url_after_a_hash() {
        let k = CacheKey::new().header(HeaderName::from_static("x-tenant"));
        let (a, _) = key(&k, "http://h/p", &[("x-tenant", "a#b")]);
        let (none, _) = key(&k, "http://h/p", &[]);
        assert_eq!(a, "http://h/p#h:x-tenant=a%23b");
        assert_eq!(none, "http://h/p#h:x-tenant=");
        assert_eq!(k.keyed_headers(), [HeaderName::from_static("x-tenant")]);
    }
}
