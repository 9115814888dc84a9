//! API keys: stored as SHA-256 digests, looked up by digest, compared in constant time, several
//! per consumer (rotation), each with an optional expiry and a revocation flag.

use std::{collections::HashMap, fmt, sync::Arc, time::SystemTime};

use gateway_core::{AuthMethod, Principal};
use http::{HeaderName, header::COOKIE, request::Parts};
use sha2::{Digest, Sha256};

use crate::{AuthFailure, Authenticate, Credential};

/// The SHA-256 digest of an API key: what configuration and stores hold instead of the key.
///
/// Written `sha256:` followed by 64 hex digits (`ApiKeyHash::of("secret").to_string()` prints it,
/// for putting a new key into a config file).
///
/// ```
/// use gateway_auth::ApiKeyHash;
///
/// let stored: ApiKeyHash = "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
///     .parse()
///     .unwrap();
/// assert_eq!(ApiKeyHash::of("secret"), stored);
/// assert!("md5:abc".parse::<ApiKeyHash>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApiKeyHash([u8; 32]);

impl ApiKeyHash {
    /// The digest of a raw key.
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Constant-time equality: the time taken does not depend on where two digests differ.
    pub fn ct_eq(&self, other: &Self) -> bool {
        let diff = self
            .0
            .iter()
            .zip(&other.0)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for ApiKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A digest is not a secret, but there is no reason to print it whole.
        write!(f, "ApiKeyHash(sha256:{:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

impl fmt::Display for ApiKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Why a stored key digest did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseApiKeyHashError;

impl fmt::Display for ParseApiKeyHashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "expected `sha256:` and 64 hex digits (the digest of the key, never the key itself)",
        )
    }
}

impl std::error::Error for ParseApiKeyHashError {}

impl std::str::FromStr for ApiKeyHash {
    type Err = ParseApiKeyHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s
            .trim()
            .strip_prefix("sha256:")
            .ok_or(ParseApiKeyHashError)?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseApiKeyHashError);
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte =
                u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| ParseApiKeyHashError)?;
        }
        Ok(Self(out))
    }
}

/// Who a key belongs to: becomes the [`Principal`] of requests carrying it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumer {
    /// The consumer id (`Principal::consumer` and its subject).
    pub id: String,
    /// The consumer's tier (rate limits, quotas).
    pub tier: Option<String>,
    /// The consumer's roles.
    pub roles: Vec<String>,
}

impl Consumer {
    /// A consumer without tier or roles.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            tier: None,
            roles: Vec::new(),
        }
    }

    /// Sets the tier.
    pub fn tier(mut self, tier: impl Into<String>) -> Self {
        self.tier = Some(tier.into());
        self
    }

    /// Sets the roles.
    pub fn roles<I: IntoIterator<Item = S>, S: Into<String>>(mut self, roles: I) -> Self {
        self.roles = roles.into_iter().map(Into::into).collect();
        self
    }

    fn principal(&self) -> Principal {
        let mut p = Principal::new(self.id.as_str(), AuthMethod::ApiKey)
            .with_consumer(self.id.as_str())
            .with_roles(self.roles.iter().map(String::as_str));
        if let Some(t) = &self.tier {
            p = p.with_tier(t.as_str());
        }
        p
    }
}

/// One stored key.
#[derive(Clone, Debug)]
pub struct ApiKeyRecord {
    /// Its owner.
    pub consumer: Arc<Consumer>,
    /// When it stops being accepted (`None`: never).
    pub not_after: Option<SystemTime>,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// Where API keys are looked up. Implement it over a database or a secrets service; it is called
/// with the digest of the presented key, never the key.
pub trait ApiKeyStore: Send + Sync + fmt::Debug + 'static {
    /// The record of the key with this digest, if any.
    fn find(&self, digest: &ApiKeyHash) -> Option<ApiKeyRecord>;
}

impl<S: ApiKeyStore + ?Sized> ApiKeyStore for Arc<S> {
    fn find(&self, digest: &ApiKeyHash) -> Option<ApiKeyRecord> {
        (**self).find(digest)
    }
}

/// An in-memory key store (the reference gateway's `consumers` block).
///
/// Several keys per consumer allow rotation: add the new key, move clients over, revoke or let the
/// old one expire.
#[derive(Clone, Debug, Default)]
pub struct StaticApiKeys {
    keys: HashMap<ApiKeyHash, ApiKeyRecord>,
}

impl StaticApiKeys {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key (by digest) for `consumer`. A digest added twice keeps the last record.
    pub fn insert(&mut self, digest: ApiKeyHash, record: ApiKeyRecord) {
        self.keys.insert(digest, record);
    }

    /// Adds a key that never expires.
    pub fn with_key(mut self, digest: ApiKeyHash, consumer: Arc<Consumer>) -> Self {
        self.insert(
            digest,
            ApiKeyRecord {
                consumer,
                not_after: None,
                revoked: false,
            },
        );
        self
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl ApiKeyStore for StaticApiKeys {
    fn find(&self, digest: &ApiKeyHash) -> Option<ApiKeyRecord> {
        // The table is keyed by digest (uniformly distributed whatever the client sends); the
        // final comparison is constant-time anyway.
        self.keys
            .get_key_value(digest)
            .filter(|(stored, _)| stored.ct_eq(digest))
            .map(|(_, r)| r.clone())
    }
}

/// Where a request carries its API key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiKeySource {
    /// A header (`x-api-key`).
    Header(HeaderName),
    /// A query parameter (`?api_key=`); the parameter is removed before forwarding.
    Query(String),
    /// A cookie; the cookie is removed before forwarding.
    Cookie(String),
}

/// Authenticates requests by API key; see the [crate docs](crate).
///
/// Looks in every configured source. No key anywhere is [`Credential::Absent`]; a key that is
/// unknown, expired or revoked is [`Credential::Invalid`] with one public reason for all three (no
/// hint which), and the audit log says which. Two keys in one request (two headers, or a header
/// and a query parameter) are invalid, never "first wins". The key is removed from the request
/// before it goes anywhere else.
#[derive(Clone, Debug)]
pub struct ApiKeyAuth {
    store: Arc<dyn ApiKeyStore>,
    sources: Vec<ApiKeySource>,
}

/// Longest key accepted (longer ones are refused without hashing).
const MAX_KEY_LEN: usize = 512;

impl ApiKeyAuth {
    /// Keys from `store`, read from the `x-api-key` header.
    pub fn new(store: impl ApiKeyStore) -> Self {
        Self {
            store: Arc::new(store),
            sources: vec![ApiKeySource::Header(HeaderName::from_static("x-api-key"))],
        }
    }

    /// Reads keys from these sources instead.
    pub fn sources(mut self, sources: impl IntoIterator<Item = ApiKeySource>) -> Self {
        self.sources = sources.into_iter().collect();
        self
    }

    /// Takes every key the request carries out of it (so none is forwarded).
    fn take_keys(&self, parts: &mut Parts) -> Vec<String> {
        let mut found = Vec::new();
        for source in &self.sources {
            match source {
                ApiKeySource::Header(name) => {
                    for v in parts.headers.get_all(name) {
                        // Not UTF-8: an empty (malformed) credential, never a lossy lookalike.
                        found.push(v.to_str().map(str::to_owned).unwrap_or_default());
                    }
                    parts.headers.remove(name);
                }
                ApiKeySource::Query(param) => take_query(parts, param, &mut found),
                ApiKeySource::Cookie(name) => take_cookie(parts, name, &mut found),
            }
        }
        found
    }
}

fn take_query(parts: &mut Parts, param: &str, found: &mut Vec<String>) {
    let Some(query) = parts.uri.query() else {
        return;
    };
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_encoding::percent_decode_str(name).decode_utf8_lossy() == param {
            // `+` is not decoded (keys are not form data); not UTF-8: malformed.
            let value = percent_encoding::percent_decode_str(value).decode_utf8();
            found.push(value.map(|v| v.into_owned()).unwrap_or_default());
        } else {
            kept.push(pair);
        }
    }
    if kept.len() == query.split('&').count() {
        return;
    }
    let path = parts.uri.path();
    let pq = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut uri = http::uri::Builder::new();
    if let Some(s) = parts.uri.scheme() {
        uri = uri.scheme(s.clone());
    }
    if let Some(a) = parts.uri.authority() {
        uri = uri.authority(a.clone());
    }
    match uri.path_and_query(pq).build() {
        Ok(new) => parts.uri = new,
        // The key could not be removed from the target: refuse rather than forward it.
        Err(_) => found.push(String::new()),
    }
}

/// Takes every cookie called `name` out of the `Cookie` headers (several headers, any bytes).
/// Names and values are trimmed and one pair of surrounding quotes is removed; a value that is not
/// UTF-8 is taken as an empty (malformed) credential, so it refuses rather than passes.
pub(crate) fn take_cookie(parts: &mut Parts, name: &str, found: &mut Vec<String>) {
    let mut rewritten = Vec::new();
    let mut touched = false;
    for v in parts.headers.get_all(COOKIE) {
        let mut kept: Vec<&[u8]> = Vec::new();
        for c in v.as_bytes().split(|&b| b == b';') {
            let c = c.trim_ascii();
            let (n, value) = match c.iter().position(|&b| b == b'=') {
                Some(i) => (c[..i].trim_ascii(), c[i + 1..].trim_ascii()),
                None => (c, &[][..]),
            };
            if n == name.as_bytes() {
                let value = match value {
                    [b'"', inner @ .., b'"'] => inner,
                    other => other,
                };
                found.push(
                    std::str::from_utf8(value)
                        .map(str::to_owned)
                        .unwrap_or_default(),
                );
                touched = true;
            } else if !c.is_empty() {
                kept.push(c);
            }
        }
        if !kept.is_empty()
            && let Ok(v) = http::HeaderValue::from_bytes(&kept.join(&b"; "[..]))
        {
            rewritten.push(v);
        }
    }
    if touched {
        parts.headers.remove(COOKIE);
        for v in rewritten {
            parts.headers.append(COOKIE, v);
        }
    }
}

impl Authenticate for ApiKeyAuth {
    fn authenticate(&self, parts: &mut Parts) -> Credential {
        let mut keys = self.take_keys(parts);
        let key = match keys.len() {
            0 => return Credential::Absent,
            1 => keys.pop().unwrap_or_default(),
            _ => {
                return Credential::Invalid(AuthFailure::new(
                    "api_key",
                    "several API keys in one request",
                ));
            }
        };
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Credential::Invalid(AuthFailure::new("api_key", "malformed API key"));
        }
        let Some(record) = self.store.find(&ApiKeyHash::of(&key)) else {
            return Credential::Invalid(AuthFailure::new("api_key", "unknown API key"));
        };
        if record.revoked {
            return Credential::Invalid(AuthFailure::new("api_key", "revoked API key"));
        }
        if record.not_after.is_some_and(|t| SystemTime::now() >= t) {
            return Credential::Invalid(AuthFailure::new("api_key", "expired API key"));
        }
        Credential::Valid(record.consumer.principal())
    }

    fn challenge(&self, _invalid: bool) -> &'static str {
        "ApiKey realm=\"gateway\""
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn auth() -> ApiKeyAuth {
        let acme = Arc::new(Consumer::new("acme").tier("gold").roles(["orders.read"]));
        let mut keys = StaticApiKeys::new().with_key(ApiKeyHash::of("k-new"), acme.clone());
        keys.insert(
            ApiKeyHash::of("k-old"),
            ApiKeyRecord {
                consumer: acme.clone(),
                not_after: Some(SystemTime::now() - Duration::from_secs(1)),
                revoked: false,
            },
        );
        keys.insert(
            ApiKeyHash::of("k-revoked"),
            ApiKeyRecord {
                consumer: acme,
                not_after: None,
                revoked: true,
            },
        );
        ApiKeyAuth::new(keys).sources([
            ApiKeySource::Header(HeaderName::from_static("x-api-key")),
            ApiKeySource::Query(String::from("api_key")),
            ApiKeySource::Cookie(String::from("key")),
        ])
    }

    #[test]
    fn digests_round_trip_and_compare_in_constant_time() {
        let h = ApiKeyHash::of("secret");
        assert_eq!(h.to_string().parse::<ApiKeyHash>().unwrap(), h);
        assert!(h.ct_eq(&h));
        assert!(!h.ct_eq(&ApiKeyHash::of("secreT")));
        for bad in [
            "sha256:",
            "sha256:zz",
            "sha256:+f+f+f+f+f+f+f+f+f+f+f+f+f+f+f+f+f+f+f+f+f+f+f+f+f+f+f+f+f+f+f+f",
            "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b",
            "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25",
        ] {
            assert!(bad.parse::<ApiKeyHash>().is_err(), "{bad}");
        }
        assert!(!format!("{h:?}").contains(&h.to_string()[7..20]));
    }

    #[test]
    fn a_valid_key_becomes_the_consumers_principal_and_is_removed() {
        let mut p = parts("/x?a=1", &[("x-api-key", "k-new")]);
        let Credential::Valid(principal) = auth().authenticate(&mut p) else {
            panic!("not valid")
        };
        assert_eq!(principal.consumer(), Some("acme"));
        assert_eq!(principal.tier(), Some("gold"));
        assert!(principal.has_role("orders.read"));
        assert!(p.headers.get("x-api-key").is_none());
        // From the query, with the parameter removed and the rest kept.
        let mut p = parts("/x?a=1&api_key=k-new&b=2", &[]);
        assert!(matches!(auth().authenticate(&mut p), Credential::Valid(_)));
        assert_eq!(p.uri, "/x?a=1&b=2");
        let mut p = parts("/x?api_key=k%2Dnew", &[]);
        assert!(matches!(auth().authenticate(&mut p), Credential::Valid(_)));
        assert_eq!(p.uri, "/x");
        // From a cookie, with the other cookies kept.
        let mut p = parts("/x", &[("cookie", "a=1; key=k-new; b=2")]);
        assert!(matches!(auth().authenticate(&mut p), Credential::Valid(_)));
        assert_eq!(p.headers["cookie"], "a=1; b=2");
        // Spaces around the name, quotes, other Cookie headers with non-ASCII bytes.
        let mut b = http::Request::builder().uri("/x");
        b = b.header(
            "cookie",
            http::HeaderValue::from_bytes(b"n=Jos\xc3\xa9").unwrap(),
        );
        b = b.header("cookie", "key = \"k-new\" ; c=3");
        let mut p = b.body(()).unwrap().into_parts().0;
        assert!(matches!(auth().authenticate(&mut p), Credential::Valid(_)));
        let rest: Vec<&[u8]> = p
            .headers
            .get_all("cookie")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(rest, [&b"n=Jos\xc3\xa9"[..], &b"c=3"[..]]);
        // A cookie header holding only the key disappears.
        let mut p = parts("/x", &[("cookie", "key=k-new")]);
        assert!(matches!(auth().authenticate(&mut p), Credential::Valid(_)));
        assert!(p.headers.get("cookie").is_none());
    }

    #[test]
    fn unknown_expired_revoked_and_ambiguous_keys_are_invalid() {
        for (uri, headers, reason) in [
            ("/", vec![("x-api-key", "nope")], "unknown API key"),
            ("/", vec![("x-api-key", "k-old")], "expired API key"),
            ("/", vec![("x-api-key", "k-revoked")], "revoked API key"),
            (
                "/",
                vec![("x-api-key", "k-new"), ("x-api-key", "k-new")],
                "several API keys in one request",
            ),
            (
                "/?api_key=k-new",
                vec![("x-api-key", "k-new")],
                "several API keys in one request",
            ),
            ("/", vec![("x-api-key", "")], "malformed API key"),
        ] {
            let mut p = parts(uri, &headers);
            match auth().authenticate(&mut p) {
                Credential::Invalid(f) => assert_eq!(f.reason(), reason),
                other => panic!("{uri} {headers:?}: {other:?}"),
            }
            assert!(
                p.headers.get("x-api-key").is_none(),
                "stripped even when invalid"
            );
            assert!(
                !p.uri.to_string().contains("api_key"),
                "stripped even when invalid"
            );
        }
        let mut p = parts("/", &[]);
        assert!(matches!(auth().authenticate(&mut p), Credential::Absent));
    }
}
