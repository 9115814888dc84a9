//! External authorization: ask a policy decision point (OPA-style JSON, or ext_authz-style
//! status codes) whether a request may go on.
//!
//! The request is described as JSON — `{"input": {"method", "path", "query", "headers",
//! "client_ip", "principal": {"subject", "consumer", "tier", "roles", "scopes", "method"}}}` —
//! with credentials (`authorization`, `cookie`, `x-api-key`, `proxy-authorization`) never
//! included, and POSTed through a [`PolicyClient`]. The answer allows the request when it is a
//! `2xx` with an empty body (ext_authz style) or a JSON body `{"result": true}`,
//! `{"result": {"allow": true}}` or `{"allow": true}` (OPA style); any `4xx`, or any other `2xx`
//! body, refuses it (`403`). Anything else (a `5xx`, a redirect, a timeout, a transport error) is
//! a failure, decided by the failure policy: closed (`503`, the default) or open (allowed), both
//! logged to the audit target. Header values are sent in full (every field, comma-joined, bytes
//! that are not printable ASCII as `\xNN`); forwarding headers are left out (`client_ip` is the
//! resolved address) and so are the credentials of other providers named with
//! [`ExtAuthz::withhold`]. The path is the one the route matched ([`NormalizedPath`]), before any
//! rewrite. Decisions can be cached for a short time (keyed by the SHA-256 of the input without
//! request ids and trace context, bounded).
//!
//! An allowing answer may also hand headers to the upstream (an identity the decision point
//! resolved, say): only names listed with [`ExtAuthz::upstream_headers`] are taken, from the
//! body's `result.headers` (OPA style) or, for an empty-body answer, from the response headers
//! (ext_authz style); [`Grant::apply`] sets them after removing any client-sent copies.
//!
//! ```
//! use gateway_auth::{ExtAuthz, PolicyAnswer, PolicyFuture};
//! use http::{HeaderName, Request, Response};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // A decision point in-process; the gateway's client POSTs over HTTP instead.
//! let pdp = ExtAuthz::new(|input: String| -> PolicyFuture {
//!     Box::pin(async move {
//!         let allow = input.contains(r#""method":"GET""#);
//!         Ok(PolicyAnswer {
//!             status: 200,
//!             body: format!(r#"{{"result": {{"allow": {allow}, "headers": {{"x-user-id": "42"}}}}}}"#)
//!                 .into_bytes(),
//!             ..PolicyAnswer::default()
//!         })
//!     })
//! })
//! .upstream_headers([HeaderName::from_static("x-user-id")]);
//!
//! let mut req = Request::get("/orders").header("x-user-id", "forged").body(()).unwrap();
//! let grant = pdp.authorize::<_, String>(&req).await.unwrap();
//! grant.apply(&mut req);
//! assert_eq!(req.headers()["x-user-id"], "42");
//!
//! let refused: Response<String> = pdp
//!     .authorize(&Request::delete("/orders").body(()).unwrap())
//!     .await
//!     .unwrap_err();
//! assert_eq!(refused.status(), 403);
//! # }
//! ```

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use gateway_core::{
    NormalizedPath, Principal, Problem, RejectReason, ResponseFlags, trace::CONTEXT_HEADERS,
};
use http::{Request, Response, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The decision point's answer.
#[derive(Clone, Debug, Default)]
pub struct PolicyAnswer {
    /// The status code.
    pub status: u16,
    /// The response headers (ext_authz style: some may go to the upstream).
    pub headers: http::HeaderMap,
    /// The body.
    pub body: Vec<u8>,
}

/// The future a [`PolicyClient`] returns.
pub type PolicyFuture = Pin<Box<dyn Future<Output = Result<PolicyAnswer, String>> + Send>>;

/// Headers an allowed request gets from the decision point (see [`ExtAuthz::upstream_headers`]);
/// apply them with [`Grant::apply`].
#[derive(Clone, Debug, Default)]
pub struct Grant {
    set: Vec<(http::HeaderName, http::HeaderValue)>,
    allowlist: Arc<[http::HeaderName]>,
}

impl Grant {
    /// Removes client-sent copies of every allowlisted header (so a client cannot pose as the
    /// decision point) and sets the ones the decision point returned.
    pub fn apply<B>(self, req: &mut Request<B>) {
        for name in self.allowlist.iter() {
            req.headers_mut().remove(name);
        }
        for (name, value) in self.set {
            req.headers_mut().append(name, value);
        }
    }
}

/// Sends a JSON body to the policy decision point.
pub trait PolicyClient: Send + Sync + 'static {
    /// POSTs `body` and returns the answer's status and body.
    fn query(&self, body: String) -> PolicyFuture;
}

impl<F> PolicyClient for F
where
    F: Fn(String) -> PolicyFuture + Send + Sync + 'static,
{
    fn query(&self, body: String) -> PolicyFuture {
        self(body)
    }
}

/// Never in the input: credentials, and forwarding headers a client may have forged
/// (`client_ip` is the resolved address).
const WITHHELD_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "forwarded",
    "via",
];

/// A decision: allowed, and the headers granted to the upstream request.
type Decision = (bool, Vec<(http::HeaderName, http::HeaderValue)>);

struct Cache {
    ttl: Duration,
    max: usize,
    entries: Mutex<HashMap<[u8; 32], (Decision, tokio::time::Instant)>>,
}

/// External authorization; see the [module docs](self). Clones share the client and the cache.
#[derive(Clone)]
pub struct ExtAuthz {
    client: Arc<dyn PolicyClient>,
    timeout: Duration,
    fail_open: bool,
    cache: Arc<Cache>,
    withheld_headers: Arc<[String]>,
    withheld_params: Arc<[String]>,
    upstream_headers: Arc<[http::HeaderName]>,
}

impl fmt::Debug for ExtAuthz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtAuthz")
            .field("timeout", &self.timeout)
            .field("fail_open", &self.fail_open)
            .field("cache_ttl", &self.cache.ttl)
            .finish_non_exhaustive()
    }
}

impl ExtAuthz {
    /// Decisions from `client`, within 200 ms, failing closed, not cached.
    pub fn new(client: impl PolicyClient) -> Self {
        Self {
            client: Arc::new(client),
            timeout: Duration::from_millis(200),
            fail_open: false,
            cache: Arc::new(Cache {
                ttl: Duration::ZERO,
                max: 10_000,
                entries: Mutex::new(HashMap::new()),
            }),
            withheld_headers: Arc::from([]),
            withheld_params: Arc::from([]),
            upstream_headers: Arc::from([]),
        }
    }

    /// Also leaves these headers and query parameters out of the input (the credentials of
    /// every other authentication provider in use, so none reaches the decision point or its
    /// logs).
    pub fn withhold<H, P>(mut self, headers: H, query_params: P) -> Self
    where
        H: IntoIterator<Item = String>,
        P: IntoIterator<Item = String>,
    {
        self.withheld_headers = headers
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        self.withheld_params = query_params.into_iter().collect();
        self
    }

    /// How long to wait for a decision.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Allow requests when the decision point fails (default: refuse with `503`).
    pub fn fail_open(mut self, open: bool) -> Self {
        self.fail_open = open;
        self
    }

    /// Headers the decision point may add to the upstream request when it allows it: from an
    /// OPA-style body (`{"result": {"allow": true, "headers": {"x-user-id": "42"}}}`) or, in
    /// ext_authz style, from its response headers. Only these names are taken; client-sent
    /// copies of them are always removed.
    pub fn upstream_headers(mut self, names: impl IntoIterator<Item = http::HeaderName>) -> Self {
        self.upstream_headers = names.into_iter().collect();
        self
    }

    /// Keeps decisions for `ttl` (at most `max` of them; 0 turns the cache off).
    pub fn cache(mut self, ttl: Duration, max: usize) -> Self {
        self.cache = Arc::new(Cache {
            ttl,
            max,
            entries: Mutex::new(HashMap::new()),
        });
        self
    }

    /// Decides `req` (call after authentication, so the principal is in its extensions): `Ok`
    /// to go on, or the refusal to send.
    pub fn authorize<B, ResBody>(
        &self,
        req: &Request<B>,
    ) -> impl Future<Output = Result<Grant, Response<ResBody>>> + Send + 'static + use<B, ResBody>
    where
        ResBody: From<String>,
    {
        let described = describe(req, &self.withheld_headers, &self.withheld_params);
        let input = described.to_string();
        let key = cache_key(described);
        let this = self.clone();
        async move {
            let now = tokio::time::Instant::now();
            let cached = if this.cache.ttl.is_zero() {
                None
            } else {
                this.cache
                    .entries
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&key)
                    .filter(|(_, until)| *until > now)
                    .map(|(decision, _)| decision.clone())
            };
            let (allowed, set) = match cached {
                Some(decision) => decision,
                None => match tokio::time::timeout(this.timeout, this.client.query(input)).await {
                    Ok(Ok(answer)) => match verdict(answer.status, &answer.body) {
                        Some(allowed) => {
                            let set = if allowed {
                                granted_headers(&answer, &this.upstream_headers)
                            } else {
                                Vec::new()
                            };
                            this.remember(key, (allowed, set.clone()), now);
                            (allowed, set)
                        }
                        None => {
                            let status = answer.status;
                            return this.failed(&format!("unexpected answer (status {status})"));
                        }
                    },
                    Ok(Err(e)) => return this.failed(&e),
                    Err(_) => return this.failed("no decision within the timeout"),
                },
            };
            if allowed {
                Ok(Grant {
                    set,
                    allowlist: this.upstream_headers.clone(),
                })
            } else {
                tracing::info!(target: "gateway_auth::audit", reason = "refused by the policy decision point", "authorization failed");
                Err(Problem::new(StatusCode::FORBIDDEN)
                    .detail("the request is not allowed by the authorization policy")
                    .reason(RejectReason::Forbidden, ResponseFlags::UNAUTHORIZED)
                    .into_response())
            }
        }
    }

    fn remember(&self, key: [u8; 32], decision: Decision, now: tokio::time::Instant) {
        if self.cache.ttl.is_zero() || self.cache.max == 0 {
            return;
        }
        let mut entries = self.cache.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.cache.max {
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= self.cache.max {
                entries.clear();
            }
        }
        entries.insert(key, (decision, now + self.cache.ttl));
    }

    fn failed<ResBody: From<String>>(&self, why: &str) -> Result<Grant, Response<ResBody>> {
        if self.fail_open {
            tracing::warn!(target: "gateway_auth::audit", error = why, "policy decision point failed; allowing (fail open)");
            return Ok(Grant {
                set: Vec::new(),
                allowlist: self.upstream_headers.clone(),
            });
        }
        tracing::warn!(target: "gateway_auth::audit", error = why, "policy decision point failed; refusing (fail closed)");
        Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE)
            .detail("authorization is unavailable")
            .reason(RejectReason::DependencyFailed, ResponseFlags::UNAUTHORIZED)
            .into_response())
    }
}

/// The allowlisted headers an allowing answer grants: from the JSON body's `result.headers` (or
/// top-level `headers`), else from the response headers (ext_authz style).
fn granted_headers(
    answer: &PolicyAnswer,
    allowlist: &[http::HeaderName],
) -> Vec<(http::HeaderName, http::HeaderValue)> {
    if allowlist.is_empty() {
        return Vec::new();
    }
    let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    let from_body = body
        .get("result")
        .and_then(|r| r.get("headers"))
        .or_else(|| body.get("headers"))
        .and_then(Value::as_object);
    let mut out = Vec::new();
    for name in allowlist {
        match from_body {
            Some(map) => {
                if let Some(v) = map.get(name.as_str()).and_then(Value::as_str)
                    && let Ok(v) = http::HeaderValue::from_str(v)
                {
                    out.push((name.clone(), v));
                }
            }
            None => {
                for v in answer.headers.get_all(name) {
                    out.push((name.clone(), v.clone()));
                }
            }
        }
    }
    out
}

/// `Some(allowed)` from a decision point's answer, `None` when it is not an answer (a failure).
fn verdict(status: u16, body: &[u8]) -> Option<bool> {
    match status {
        // ext_authz style: any 4xx is a denial, never a failure (so never failed open).
        400..=499 => Some(false),
        // ext_authz style: 200 with no body allows.
        200..=299 if body.iter().all(u8::is_ascii_whitespace) => Some(true),
        200..=299 => {
            let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let allow = match &v {
                Value::Object(o) => match o.get("result") {
                    Some(Value::Bool(b)) => Some(*b),
                    Some(Value::Object(r)) => r.get("allow").and_then(Value::as_bool),
                    _ => o.get("allow").and_then(Value::as_bool),
                },
                _ => None,
            };
            // Only an explicit `true` allows.
            Some(allow == Some(true))
        }
        _ => None,
    }
}

/// A header value as text without losing bytes: bytes that are not printable ASCII (and `\`)
/// are written `\xNN`.
fn header_text(v: &http::HeaderValue) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(v.len());
    for &b in v.as_bytes() {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// Request-id headers: like trace context ([`CONTEXT_HEADERS`]), they differ on every request, so
/// they are sent to the decision point but left out of the cache key, or no decision would ever
/// be reused.
const REQUEST_ID_HEADERS: &[&str] = &["x-request-id", "request-id", "x-correlation-id"];

/// The SHA-256 of the input without its volatile headers.
fn cache_key(mut input: Value) -> [u8; 32] {
    if let Some(headers) = input
        .get_mut("input")
        .and_then(|i| i.get_mut("headers"))
        .and_then(Value::as_object_mut)
    {
        for h in REQUEST_ID_HEADERS.iter().chain(CONTEXT_HEADERS) {
            headers.remove(*h);
        }
    }
    Sha256::digest(input.to_string().as_bytes()).into()
}

fn describe<B>(req: &Request<B>, withheld_headers: &[String], withheld_params: &[String]) -> Value {
    // Every value of every header (comma-joined in order), so the decision point sees what the
    // upstream will see, duplicates included.
    let mut headers = serde_json::Map::new();
    for name in req.headers().keys() {
        let n = name.as_str();
        if WITHHELD_HEADERS.contains(&n) || withheld_headers.iter().any(|w| w == n) {
            continue;
        }
        let values: Vec<String> = req
            .headers()
            .get_all(name)
            .iter()
            .map(header_text)
            .collect();
        headers.insert(n.to_owned(), Value::String(values.join(", ")));
    }
    let query = req.uri().query().map(|q| {
        q.split('&')
            .filter(|pair| {
                let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
                let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
                !withheld_params.iter().any(|w| *w == name)
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    let ip = crate::client_ip(req.extensions()).map(|ip| ip.to_string());
    let principal = req.extensions().get::<Principal>().map(|p| {
        json!({
            "subject": p.subject(),
            "consumer": p.consumer(),
            "tier": p.tier(),
            "roles": p.roles(),
            "scopes": p.scopes(),
            "method": format!("{:?}", p.method()).to_ascii_lowercase(),
            "attributes": p.attributes(),
        })
    });
    // The path the route matched (before any rewrite), as every policy sees it.
    let path = req
        .extensions()
        .get::<NormalizedPath>()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    json!({ "input": {
        "method": req.method().as_str(),
        "path": path,
        "query": query,
        "headers": headers,
        "client_ip": ip,
        "principal": principal,
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_explicit_true_allows() {
        assert_eq!(verdict(200, br#"{"result": true}"#), Some(true));
        assert_eq!(verdict(200, br#"{"result": {"allow": true}}"#), Some(true));
        assert_eq!(verdict(200, br#"{"allow": true}"#), Some(true));
        assert_eq!(
            verdict(200, br#"{"result": "true"}"#),
            Some(false),
            "no coercion"
        );
        assert_eq!(verdict(200, br#"{}"#), Some(false));
        assert_eq!(verdict(200, b"not json"), Some(false));
        assert_eq!(verdict(403, b""), Some(false));
        assert_eq!(verdict(401, b""), Some(false), "any 4xx denies");
        assert_eq!(verdict(404, br#"{"result": true}"#), Some(false));
        assert_eq!(verdict(200, b""), Some(true), "ext_authz style");
        assert_eq!(verdict(500, br#"{"result": true}"#), None);
        assert_eq!(verdict(302, b""), None);
    }

    #[test]
    fn request_ids_and_trace_context_do_not_split_the_cache() {
        let req = |id: &str| {
            Request::get("/orders")
                .header("x-request-id", id)
                .header("traceparent", format!("00-{id}-01"))
                .header("x-tenant", "acme")
                .body(())
                .unwrap()
        };
        let key = |r: &Request<()>| cache_key(describe(r, &[], &[]));
        assert_eq!(key(&req("a")), key(&req("b")));
        let other = Request::get("/orders")
            .header("x-tenant", "other")
            .body(())
            .unwrap();
        assert_ne!(key(&req("a")), key(&other));
        assert!(
            describe(&req("a"), &[], &[])
                .to_string()
                .contains("x-request-id"),
            "still sent"
        );
    }

    #[test]
    fn credentials_never_reach_the_decision_point() {
        let req = Request::get("/orders?x=1")
            .header("authorization", "Bearer secret")
            .header("cookie", "s=secret")
            .header("x-api-key", "secret")
            .header("x-tenant", "acme")
            .body(())
            .unwrap();
        let input = describe(
            &req,
            &[String::from("x-partner-key")],
            &[String::from("api_key")],
        )
        .to_string();
        assert!(!input.contains("secret"), "{input}");
        assert!(input.contains("\"x-tenant\":\"acme\""), "{input}");
        let req = Request::get("/orders?api_key=secret&x=1")
            .header("x-partner-key", "secret")
            .header("x-forwarded-for", "1.2.3.4")
            .header("x-tenant", "victim")
            .header("x-tenant", "mine")
            .header("x-odd", http::HeaderValue::from_bytes(b"a\xff").unwrap())
            .body(())
            .unwrap();
        let input = describe(
            &req,
            &[String::from("x-partner-key")],
            &[String::from("api_key")],
        );
        let text = input.to_string();
        assert!(
            !text.contains("secret") && !text.contains("1.2.3.4"),
            "{text}"
        );
        assert_eq!(input["input"]["query"], "x=1");
        assert_eq!(
            input["input"]["headers"]["x-tenant"], "victim, mine",
            "every value"
        );
        assert_eq!(
            input["input"]["headers"]["x-odd"], "a\\xff",
            "nothing dropped"
        );
    }
}
