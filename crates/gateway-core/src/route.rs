use std::{fmt, sync::Arc};

/// The name of the route that matched a request.
///
/// Written into request extensions by the router; read by metrics (as a bounded label: route names
/// come from configuration, never from the client), per-route policies and logs. Cloning is a
/// reference-count increment.
///
/// # Example
///
/// ```
/// use gateway_core::RouteId;
///
/// let id = RouteId::new("orders-v2");
/// assert_eq!(id.as_str(), "orders-v2");
/// assert_eq!(id.to_string(), "orders-v2");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId(Arc<str>);

impl RouteId {
    /// Creates a route id from its configured name.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self(name.into())
    }

    /// The route name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The route name, shared (a metric label without a copy).
    pub fn shared(&self) -> &Arc<str> {
        &self.0
    }
}

impl fmt::Display for RouteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for RouteId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The normalized request path the route matched, before any rewrite: the one path routing,
/// policy (rules, external authorization) and logs agree on. The reference gateway inserts it;
/// layers fall back to the request's own path without it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NormalizedPath(Arc<str>);

impl NormalizedPath {
    /// Wraps a normalized path.
    pub fn new(path: impl Into<Arc<str>>) -> Self {
        Self(path.into())
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// In a response's extensions: the upstream call that produced it (the last attempt's endpoint
/// and time to its response head) and how many retries came before. Set by `gateway-lb` (and the
/// retry count by the stack above it); read by observability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamCall {
    /// The endpoint, `host:port` (`https://host:port` over TLS).
    pub endpoint: Arc<str>,
    /// From sending the request to the response head (or the failure).
    pub duration: std::time::Duration,
    /// Retries before this attempt.
    pub retries: u32,
}

/// In a response's extensions: what rate limiting decided for its request (for metrics and
/// logs, without knowing the rate-limiting crate).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RateLimitDecision {
    /// Within every limit.
    Allowed,
    /// Refused (`429`).
    Limited,
    /// Over a limit, let through by shadow mode.
    ShadowLimited,
}

impl RateLimitDecision {
    /// `allowed`, `limited` or `shadow_limited`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Limited => "limited",
            Self::ShadowLimited => "shadow_limited",
        }
    }
}

/// What an HTTP cache did with a request, in the extensions of its response (set by
/// `gateway-cache`, read by metrics and the access log).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheOutcome {
    /// Answered from a fresh stored response.
    Hit,
    /// Answered from a stale stored response (`stale-while-revalidate`, `stale-if-error`).
    Stale,
    /// A stored response the origin confirmed with `304`.
    Revalidated,
    /// Went to the origin (the answer may have been stored).
    Miss,
    /// Not a request the cache answers (an unsafe method, a range).
    Bypass,
}

impl CacheOutcome {
    /// `hit`, `stale`, `revalidated`, `miss` or `bypass`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Stale => "stale",
            Self::Revalidated => "revalidated",
            Self::Miss => "miss",
            Self::Bypass => "bypass",
        }
    }
}
