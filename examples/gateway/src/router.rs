//! Route matching.
//!
//! # Precedence
//!
//! Routes are sorted once, at compile time, from most to least specific; the first route whose
//! every condition holds wins:
//!
//! 1. host: exact host, then wildcard hosts (longer suffix first), then routes without a host;
//! 2. path: exact path, then templates (more literal segments first, then more segments), then
//!    prefixes (longer first);
//! 3. routes with more method, header and query conditions first;
//! 4. configuration order.

use std::{borrow::Cow, cmp::Reverse};

use gateway_core::RouteId;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Serialize;

/// How a route matches the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMatch {
    /// Any host.
    Any,
    /// One host, lower-case, without port.
    Exact(String),
    /// Any subdomain of a suffix: `*.example.com` is stored as `.example.com`.
    Wildcard(String),
}

/// How a route matches the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// A prefix on segment boundaries.
    Prefix(String),
    /// A template of literal segments and `{param}`s, optionally ending in `{*rest}`.
    Template(Vec<Segment>),
}

/// One segment of a path template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Must equal this text.
    Literal(String),
    /// Matches one non-empty segment, captured under this name.
    Param(String),
    /// Matches the rest of the path (zero or more segments), captured under this name.
    CatchAll(String),
}

/// How the forwarded path is derived from the matched one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// Forward the normalized path as it is.
    None,
    /// Replace the matched prefix with this (empty for `strip_prefix`).
    Prefix(String),
    /// Replace the whole path with a template (`{name}` takes a parameter).
    Template(Vec<TemplatePart>),
}

/// A piece of a rewrite template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplatePart {
    /// Literal text.
    Text(String),
    /// A captured parameter.
    Param(String),
}

/// A header or query condition.
#[derive(Clone, Debug)]
pub struct ValueMatch<N> {
    /// Header name or query parameter name.
    pub name: N,
    /// Required value; `None` means present.
    pub value: Option<String>,
}

/// A compiled route.
#[derive(Clone, Debug)]
pub struct Route {
    /// The route's name.
    pub id: RouteId,
    /// Host condition.
    pub host: HostMatch,
    /// Path condition.
    pub path: PathMatch,
    /// Allowed methods (empty: any).
    pub methods: Vec<Method>,
    /// Header conditions.
    pub headers: Vec<ValueMatch<HeaderName>>,
    /// Query conditions.
    pub query: Vec<ValueMatch<String>>,
    /// Index of the upstream in the compiled upstream list.
    pub upstream: usize,
    /// The upstream's name.
    pub upstream_name: String,
    /// A weighted split of the route's traffic across upstreams.
    pub split: Option<std::sync::Arc<Split>>,
    /// Header rules for the request and the response.
    pub transform: Option<std::sync::Arc<(HeaderRules, HeaderRules)>>,
    /// Request body edits and conversion (`transform.request_body`).
    pub(crate) request_body: Option<std::sync::Arc<crate::body::BodyRules>>,
    /// Response body edits and conversion (`transform.response_body`).
    pub(crate) response_body: Option<std::sync::Arc<crate::body::BodyRules>>,
    /// Request validation (`validate`).
    pub(crate) validation: Option<std::sync::Arc<crate::body::Validation>>,
    /// Response aggregation (`aggregate`): the calls, their upstreams and paths.
    pub(crate) aggregate: Option<std::sync::Arc<Aggregation>>,
    /// API versions (`versions`): selection, an upstream and a lifecycle per version.
    pub(crate) versions: Option<std::sync::Arc<Versions>>,
    /// Path and query rewrite (`transform.path`, `transform.query`), after every policy.
    pub uri_rewrite: Option<std::sync::Arc<gateway_transform::rewrite::Rewrite>>,
    /// The API version's lifecycle.
    pub lifecycle: Option<std::sync::Arc<gateway_transform::lifecycle::Lifecycle>>,
    /// Path rewrite.
    pub rewrite: Rewrite,
    /// Rate limits and quotas.
    pub rate_limit: Option<gateway_ratelimit::RateLimitLayer>,
    /// Authentication and roles.
    pub auth: Option<gateway_auth::RequireAuthLayer>,
    /// External authorization, after authentication.
    pub ext_authz: Option<gateway_auth::ExtAuthz>,
    /// Client IP allow/deny lists.
    pub ip_filter: Option<gateway_auth::IpFilterLayer>,
    /// `Upgrade` protocols proxied (lower case); empty: upgrades are not proxied.
    pub upgrades: Vec<String>,
    /// The HTTP cache, and whether its entries are shared between callers.
    pub cache: Option<(gateway_cache::CacheLayer, bool)>,
    /// Position in the configuration file.
    pub order: usize,
}

use gateway_transform::headers::HeaderRules;

/// A weighted split of a route's traffic across upstreams (canary releases, A/B tests).
#[derive(Debug)]
pub struct Split {
    /// Upstream indices with the upper bound of their bucket, out of [`Split::SCALE`], in order;
    /// the route's own upstream takes what is left.
    pub buckets: Vec<(usize, u32)>,
    /// The route's own upstream.
    pub rest: usize,
    /// What keeps a caller on one side; random without it.
    pub sticky: Option<gateway_lb::balance::HashOn>,
    /// A request header naming the upstream to use, with the names it accepts.
    pub override_header: Option<(HeaderName, Vec<(String, usize)>)>,
    /// Random numbers for non-sticky choices.
    pub rng: gateway_lb::balance::SeqRng,
}

impl Split {
    /// Buckets are in millionths of the route's traffic.
    pub const SCALE: u32 = 1_000_000;

    /// The upstream for a request; the override header, if any, is removed.
    pub fn choose<B>(&self, req: &mut http::Request<B>) -> usize {
        use gateway_lb::balance::BalanceRng;
        if let Some((name, targets)) = &self.override_header
            && let Some(value) = req.headers_mut().remove(name)
            && let Some((_, idx)) = value
                .to_str()
                .ok()
                .and_then(|v| targets.iter().find(|(n, _)| n == v.trim()))
        {
            return *idx;
        }
        let key = self
            .sticky
            .as_ref()
            .and_then(|on| on.key(req.uri(), req.headers(), req.extensions()));
        let roll = key.unwrap_or_else(|| self.rng.next_u64()) % u64::from(Self::SCALE);
        self.buckets
            .iter()
            .find(|(_, upper)| roll < u64::from(*upper))
            .map_or(self.rest, |(idx, _)| *idx)
    }
}

/// Template parameters captured by the matched route, in request extensions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathParams(pub Vec<(String, String)>);

impl PathParams {
    /// The value of parameter `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The routing table: routes sorted by precedence.
#[derive(Clone, Debug, Default)]
pub struct Router {
    routes: Vec<Route>,
}

/// A successful match.
#[derive(Debug)]
pub struct Matched<'r> {
    /// The route.
    pub route: &'r Route,
    /// Captured parameters.
    pub params: PathParams,
}

impl Router {
    /// Builds a router, sorting `routes` by precedence.
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(|r| {
            let host = match &r.host {
                HostMatch::Exact(_) => (0, Reverse(0)),
                HostMatch::Wildcard(s) => (1, Reverse(s.len())),
                HostMatch::Any => (2, Reverse(0)),
            };
            let path = match &r.path {
                PathMatch::Exact(_) => (0, Reverse(0), Reverse(0)),
                // A template ending in `{*rest}` is a prefix match on its literal head, and ranks
                // among prefixes by that head's length, so `/files/{*rest}` does not shadow
                // `path_prefix: /files/private`.
                PathMatch::Template(segs) if matches!(segs.last(), Some(Segment::CatchAll(_))) => {
                    (2, Reverse(template_prefix_len(segs)), Reverse(1))
                }
                PathMatch::Template(segs) => {
                    let literals = segs
                        .iter()
                        .filter(|s| matches!(s, Segment::Literal(_)))
                        .count();
                    (1, Reverse(literals), Reverse(segs.len()))
                }
                PathMatch::Prefix(p) => (2, Reverse(p.len()), Reverse(0)),
            };
            let conditions = usize::from(!r.methods.is_empty()) + r.headers.len() + r.query.len();
            (host, path, Reverse(conditions), r.order)
        });
        Self { routes }
    }

    /// The routes in precedence order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Finds the route for a request. `host` is the `Host` (or `:authority`) value, `path` the
    /// normalized path.
    pub fn find(
        &self,
        host: Option<&str>,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Option<Matched<'_>> {
        let host = host.map(normalize_host);
        for route in &self.routes {
            if !host_matches(&route.host, host.as_deref()) {
                continue;
            }
            let Some(params) = path_matches(&route.path, path) else {
                continue;
            };
            if !route.methods.is_empty() && !route.methods.contains(method) {
                continue;
            }
            if !route.headers.iter().all(|m| header_matches(m, headers)) {
                continue;
            }
            if !route.query.iter().all(|m| query_matches(m, query)) {
                continue;
            }
            return Some(Matched { route, params });
        }
        None
    }
}

/// The length of a catch-all template's path up to its first parameter (`/files/{*rest}`: 6).
fn template_prefix_len(segments: &[Segment]) -> usize {
    segments
        .iter()
        .take_while(|s| matches!(s, Segment::Literal(_)))
        .map(|s| match s {
            Segment::Literal(l) => l.len() + 1,
            _ => 0,
        })
        .sum()
}

/// Lower-cases a host and strips the port and a trailing dot.
fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = if host.starts_with('[') {
        host.split_once(']')
            .map_or(host, |(h, _)| &host[..=h.len()])
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

fn host_matches(m: &HostMatch, host: Option<&str>) -> bool {
    match (m, host) {
        (HostMatch::Any, _) => true,
        (HostMatch::Exact(want), Some(h)) => want == h,
        (HostMatch::Wildcard(suffix), Some(h)) => {
            h.len() > suffix.len() && h.ends_with(suffix.as_str())
        }
        (_, None) => false,
    }
}

fn path_matches(m: &PathMatch, path: &str) -> Option<PathParams> {
    match m {
        PathMatch::Exact(p) => (p == path).then(PathParams::default),
        PathMatch::Prefix(p) => prefix_matches(p, path).then(PathParams::default),
        PathMatch::Template(segments) => template_matches(segments, path),
    }
}

/// Whether `prefix` matches `path` on a segment boundary.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
}

fn template_matches(segments: &[Segment], path: &str) -> Option<PathParams> {
    let mut params = Vec::new();
    let mut rest = path.strip_prefix('/')?;
    for (i, seg) in segments.iter().enumerate() {
        if let Segment::CatchAll(name) = seg {
            params.push((name.clone(), rest.to_owned()));
            return Some(PathParams(params));
        }
        let (part, tail, had_slash) = match rest.split_once('/') {
            Some((p, t)) => (p, t, true),
            None => (rest, "", false),
        };
        match seg {
            Segment::Literal(l) if l == part => {}
            Segment::Param(name) if !part.is_empty() => {
                params.push((name.clone(), part.to_owned()));
            }
            _ => return None,
        }
        let last = i + 1 == segments.len();
        if last {
            // A trailing slash after the last segment does not match.
            return (!had_slash).then_some(PathParams(params));
        }
        if !had_slash {
            // Path ran out before the template; only a catch-all may follow.
            return matches!(segments.get(i + 1), Some(Segment::CatchAll(_))).then(|| {
                if let Some(Segment::CatchAll(name)) = segments.get(i + 1) {
                    params.push((name.clone(), String::new()));
                }
                PathParams(std::mem::take(&mut params))
            });
        }
        rest = tail;
    }
    (segments.is_empty() && rest.is_empty()).then_some(PathParams(params))
}

fn header_matches(m: &ValueMatch<HeaderName>, headers: &HeaderMap) -> bool {
    match &m.value {
        None => headers.contains_key(&m.name),
        Some(want) => headers
            .get_all(&m.name)
            .iter()
            .any(|v: &HeaderValue| v.as_bytes() == want.as_bytes()),
    }
}

fn query_matches(m: &ValueMatch<String>, query: Option<&str>) -> bool {
    let Some(query) = query else { return false };
    query.split('&').any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        // Compare decoded forms, so `%76=%32` is `v=2` here exactly as it is to the upstream.
        percent_decoded(name) == m.name.as_str()
            && m.value
                .as_deref()
                .is_none_or(|want| percent_decoded(value) == want)
    })
}

/// Percent-decodes a query component (lossily, for comparison only); borrows when there is
/// nothing to decode.
fn percent_decoded(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|b| (*b as char).to_digit(16)),
                bytes.get(i + 2).and_then(|b| (*b as char).to_digit(16)),
            )
        {
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Applies a rewrite to the matched normalized path.
pub fn rewrite_path<'p>(route: &Route, path: &'p str, params: &PathParams) -> Cow<'p, str> {
    match &route.rewrite {
        Rewrite::None => Cow::Borrowed(path),
        Rewrite::Prefix(replacement) => {
            let PathMatch::Prefix(prefix) = &route.path else {
                return Cow::Borrowed(path);
            };
            let rest = &path[prefix.len().min(path.len())..];
            if rest.is_empty() {
                return Cow::Owned(if replacement.is_empty() {
                    "/".to_owned()
                } else {
                    replacement.clone()
                });
            }
            let base = replacement.trim_end_matches('/');
            let mut out = String::with_capacity(base.len() + rest.len() + 1);
            out.push_str(base);
            if !rest.starts_with('/') {
                out.push('/');
            }
            out.push_str(rest);
            Cow::Owned(out)
        }
        Rewrite::Template(parts) => {
            let mut out = String::with_capacity(path.len());
            for part in parts {
                match part {
                    TemplatePart::Text(t) => out.push_str(t),
                    TemplatePart::Param(name) => out.push_str(params.get(name).unwrap_or_default()),
                }
            }
            Cow::Owned(out)
        }
    }
}

/// Parses a path template; errors are messages for the config file.
pub fn parse_template(template: &str) -> Result<Vec<Segment>, String> {
    let body = template
        .strip_prefix('/')
        .ok_or_else(|| format!("path template `{template}` must start with '/'"))?;
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = body.split('/').collect();
    let mut names = std::collections::HashSet::new();
    let mut segments = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            let (catch_all, name) = match inner.strip_prefix('*') {
                Some(n) => (true, n),
                None => (false, inner),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "invalid parameter `{part}` in `{template}`: names are letters, digits and '_'"
                ));
            }
            if !names.insert(name) {
                return Err(format!("parameter `{name}` appears twice in `{template}`"));
            }
            if catch_all {
                if i + 1 != parts.len() {
                    return Err(format!("`{part}` must be the last segment of `{template}`"));
                }
                segments.push(Segment::CatchAll(name.to_owned()));
            } else {
                segments.push(Segment::Param(name.to_owned()));
            }
        } else if part.contains(['{', '}']) {
            return Err(format!(
                "segment `{part}` of `{template}` mixes text and a parameter; a parameter must be a whole segment"
            ));
        } else if part.is_empty() || *part == "." || *part == ".." {
            return Err(format!(
                "template `{template}` is not a normalized path (empty or dot segment)"
            ));
        } else {
            segments.push(Segment::Literal((*part).to_owned()));
        }
    }
    Ok(segments)
}

/// Parses a rewrite template (`/internal/{id}`) against the parameter names available.
pub fn parse_rewrite_template(
    template: &str,
    params: &[&str],
) -> Result<Vec<TemplatePart>, String> {
    if !template.starts_with('/') {
        return Err(format!("rewrite `{template}` must start with '/'"));
    }
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(TemplatePart::Text(rest[..open].to_owned()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in rewrite `{template}`"))?
            + open;
        let name = rest[open + 1..close].trim_start_matches('*');
        if !params.contains(&name) {
            return Err(format!(
                "rewrite `{template}` uses `{{{name}}}`, which the route's path template does not capture"
            ));
        }
        parts.push(TemplatePart::Param(name.to_owned()));
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Text(rest.to_owned()));
    }
    Ok(parts)
}

/// The JSON view of a route for the admin API.
#[derive(Debug, Serialize)]
pub struct RouteView {
    /// Name.
    pub name: String,
    /// Host condition.
    pub host: Option<String>,
    /// `exact`, `prefix` or `template`.
    pub path_kind: &'static str,
    /// The path, prefix or template.
    pub path: String,
    /// Methods.
    pub methods: Vec<String>,
    /// Header conditions.
    pub headers: Vec<String>,
    /// Query conditions.
    pub query: Vec<String>,
    /// Upstream name.
    pub upstream: String,
    /// Precedence (0 is tried first).
    pub precedence: usize,
}

impl Router {
    /// The route table as the admin API shows it.
    pub fn views(&self) -> Vec<RouteView> {
        self.routes
            .iter()
            .enumerate()
            .map(|(i, r)| RouteView {
                name: r.id.to_string(),
                host: match &r.host {
                    HostMatch::Any => None,
                    HostMatch::Exact(h) => Some(h.clone()),
                    HostMatch::Wildcard(s) => Some(format!("*{s}")),
                },
                path_kind: match r.path {
                    PathMatch::Exact(_) => "exact",
                    PathMatch::Prefix(_) => "prefix",
                    PathMatch::Template(_) => "template",
                },
                path: match &r.path {
                    PathMatch::Exact(p) | PathMatch::Prefix(p) => p.clone(),
                    PathMatch::Template(segs) => {
                        let mut s = String::new();
                        for seg in segs {
                            s.push('/');
                            match seg {
                                Segment::Literal(l) => s.push_str(l),
                                Segment::Param(n) => {
                                    s.push('{');
                                    s.push_str(n);
                                    s.push('}');
                                }
                                Segment::CatchAll(n) => {
                                    s.push_str("{*");
                                    s.push_str(n);
                                    s.push('}');
                                }
                            }
                        }
                        if s.is_empty() {
                            s.push('/');
                        }
                        s
                    }
                },
                methods: r.methods.iter().map(ToString::to_string).collect(),
                headers: r
                    .headers
                    .iter()
                    .map(|m| describe(m.name.as_str(), m.value.as_deref()))
                    .collect(),
                query: r
                    .query
                    .iter()
                    .map(|m| describe(&m.name, m.value.as_deref()))
                    .collect(),
                upstream: r.upstream_name.clone(),
                precedence: i,
            })
            .collect()
    }
}

fn describe(name: &str, value: Option<&str>) -> String {
    match value {
        Some(v) => format!("{name}={v}"),
        None => format!("{name} present"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, host: HostMatch, path: PathMatch, order: usize) -> Route {
        Route {
            id: RouteId::new(name),
            host,
            path,
            methods: Vec::new(),
            headers: Vec::new(),
            query: Vec::new(),
            upstream: 0,
            upstream_name: "u".into(),
            split: None,
            transform: None,
            request_body: None,
            response_body: None,
            validation: None,
            versions: None,
            aggregate: None,
            uri_rewrite: None,
            lifecycle: None,
            rewrite: Rewrite::None,
            rate_limit: None,
            auth: None,
            ext_authz: None,
            ip_filter: None,
            upgrades: Vec::new(),
            cache: None,
            order,
        }
    }

    fn find<'r>(r: &'r Router, host: &str, path: &str) -> Option<&'r str> {
        r.find(Some(host), &Method::GET, path, None, &HeaderMap::new())
            .map(|m| m.route.id.as_str())
    }

    #[test]
    fn prefix_matches_on_segment_boundaries() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(!prefix_matches("/api/", "/api"));
    }

    #[test]
    fn templates_capture_params_and_catch_alls() {
        let t = parse_template("/users/{id}/posts/{post}").unwrap();
        let p = template_matches(&t, "/users/42/posts/7").unwrap();
        assert_eq!(p.get("id"), Some("42"));
        assert_eq!(p.get("post"), Some("7"));
        assert!(template_matches(&t, "/users/42/posts").is_none());
        assert!(template_matches(&t, "/users/42/posts/7/extra").is_none());
        assert!(template_matches(&t, "/users//posts/7").is_none());
        assert!(template_matches(&t, "/users/42/posts/7/").is_none());
        let t = parse_template("/files/{*rest}").unwrap();
        assert_eq!(
            template_matches(&t, "/files/a/b.txt").unwrap().get("rest"),
            Some("a/b.txt")
        );
        assert_eq!(
            template_matches(&t, "/files").unwrap().get("rest"),
            Some("")
        );
        assert!(template_matches(&t, "/filesx").is_none());
        assert_eq!(template_matches(&[], "/").unwrap(), PathParams::default());
    }

    #[test]
    fn template_errors_are_explained() {
        assert!(
            parse_template("users")
                .unwrap_err()
                .contains("must start with '/'")
        );
        assert!(
            parse_template("/a/{*x}/b")
                .unwrap_err()
                .contains("must be the last segment")
        );
        assert!(
            parse_template("/a/{x}/{x}")
                .unwrap_err()
                .contains("appears twice")
        );
        assert!(
            parse_template("/a/x{y}")
                .unwrap_err()
                .contains("whole segment")
        );
        assert!(parse_template("/a//b").unwrap_err().contains("normalized"));
    }

    #[test]
    fn precedence_exact_host_then_wildcard_then_any_and_exact_path_then_template_then_prefix() {
        let r = Router::new(vec![
            route("any-root", HostMatch::Any, PathMatch::Prefix("/".into()), 0),
            route(
                "any-api",
                HostMatch::Any,
                PathMatch::Prefix("/api".into()),
                1,
            ),
            route(
                "any-users-tpl",
                HostMatch::Any,
                PathMatch::Template(parse_template("/api/users/{id}").unwrap()),
                2,
            ),
            route(
                "any-users-me",
                HostMatch::Any,
                PathMatch::Exact("/api/users/me".into()),
                3,
            ),
            route(
                "wild",
                HostMatch::Wildcard(".example.com".into()),
                PathMatch::Prefix("/".into()),
                4,
            ),
            route(
                "wild-longer",
                HostMatch::Wildcard(".eu.example.com".into()),
                PathMatch::Prefix("/".into()),
                5,
            ),
            route(
                "exact",
                HostMatch::Exact("api.example.com".into()),
                PathMatch::Prefix("/".into()),
                6,
            ),
        ]);
        assert_eq!(
            find(&r, "other.test", "/api/users/me"),
            Some("any-users-me")
        );
        assert_eq!(
            find(&r, "other.test", "/api/users/42"),
            Some("any-users-tpl")
        );
        assert_eq!(find(&r, "other.test", "/api/orders"), Some("any-api"));
        assert_eq!(find(&r, "other.test", "/x"), Some("any-root"));
        assert_eq!(find(&r, "shop.example.com", "/api/users/me"), Some("wild"));
        assert_eq!(find(&r, "a.eu.example.com", "/"), Some("wild-longer"));
        assert_eq!(find(&r, "API.Example.com:8080", "/"), Some("exact"));
        assert_eq!(
            find(&r, "example.com", "/x"),
            Some("any-root"),
            "a wildcard needs a subdomain"
        );
    }

    #[test]
    fn more_conditions_win_then_config_order() {
        let mut post_only = route(
            "post-only",
            HostMatch::Any,
            PathMatch::Prefix("/a".into()),
            1,
        );
        post_only.methods = vec![Method::POST];
        let mut with_header = route("canary", HostMatch::Any, PathMatch::Prefix("/a".into()), 2);
        with_header.headers = vec![ValueMatch {
            name: HeaderName::from_static("x-canary"),
            value: Some("1".into()),
        }];
        let mut with_query = route("v2", HostMatch::Any, PathMatch::Prefix("/a".into()), 3);
        with_query.query = vec![ValueMatch {
            name: "v".into(),
            value: Some("2".into()),
        }];
        let r = Router::new(vec![
            route("first", HostMatch::Any, PathMatch::Prefix("/a".into()), 0),
            post_only,
            with_header,
            with_query,
            route("second", HostMatch::Any, PathMatch::Prefix("/a".into()), 4),
        ]);
        let mut h = HeaderMap::new();
        assert_eq!(
            r.find(None, &Method::GET, "/a", None, &h)
                .unwrap()
                .route
                .id
                .as_str(),
            "first"
        );
        assert_eq!(
            r.find(None, &Method::POST, "/a", None, &h)
                .unwrap()
                .route
                .id
                .as_str(),
            "post-only"
        );
        assert_eq!(
            r.find(None, &Method::GET, "/a", Some("x=1&v=2"), &h)
                .unwrap()
                .route
                .id
                .as_str(),
            "v2"
        );
        assert_eq!(
            r.find(None, &Method::GET, "/a", Some("v=3"), &h)
                .unwrap()
                .route
                .id
                .as_str(),
            "first"
        );
        h.insert("x-canary", "1".parse().unwrap());
        assert_eq!(
            r.find(None, &Method::GET, "/a", None, &h)
                .unwrap()
                .route
                .id
                .as_str(),
            "canary"
        );
    }

    #[test]
    fn catch_all_templates_rank_among_prefixes_by_their_literal_head() {
        let r = Router::new(vec![
            route(
                "files",
                HostMatch::Any,
                PathMatch::Template(parse_template("/files/{*rest}").unwrap()),
                0,
            ),
            route(
                "private",
                HostMatch::Any,
                PathMatch::Prefix("/files/private".into()),
                1,
            ),
            route("root", HostMatch::Any, PathMatch::Prefix("/".into()), 2),
        ]);
        assert_eq!(find(&r, "h", "/files/private/x"), Some("private"));
        assert_eq!(find(&r, "h", "/files/public/x"), Some("files"));
        assert_eq!(find(&r, "h", "/other"), Some("root"));
    }

    #[test]
    fn query_conditions_compare_decoded_names_and_values() {
        let m = ValueMatch {
            name: "v".to_owned(),
            value: Some("2".to_owned()),
        };
        assert!(query_matches(&m, Some("a=1&v=2")));
        assert!(query_matches(&m, Some("%76=%32")));
        assert!(!query_matches(&m, Some("v=3")));
        assert!(!query_matches(&m, None));
        let present = ValueMatch {
            name: "debug".to_owned(),
            value: None,
        };
        assert!(query_matches(&present, Some("x=1&debug")));
    }

    #[test]
    fn rewrites() {
        let mut r = route(
            "r",
            HostMatch::Any,
            PathMatch::Prefix("/v2/orders".into()),
            0,
        );
        r.rewrite = Rewrite::Prefix("/orders".into());
        assert_eq!(
            rewrite_path(&r, "/v2/orders/7", &PathParams::default()),
            "/orders/7"
        );
        assert_eq!(
            rewrite_path(&r, "/v2/orders", &PathParams::default()),
            "/orders"
        );
        r.rewrite = Rewrite::Prefix(String::new());
        assert_eq!(
            rewrite_path(&r, "/v2/orders/7", &PathParams::default()),
            "/7"
        );
        assert_eq!(rewrite_path(&r, "/v2/orders", &PathParams::default()), "/");
        let mut t = route(
            "t",
            HostMatch::Any,
            PathMatch::Template(parse_template("/u/{id}").unwrap()),
            0,
        );
        t.rewrite = Rewrite::Template(
            parse_rewrite_template("/internal/users/{id}/profile", &["id"]).unwrap(),
        );
        let params = PathParams(vec![("id".into(), "42".into())]);
        assert_eq!(
            rewrite_path(&t, "/u/42", &params),
            "/internal/users/42/profile"
        );
        assert!(
            parse_rewrite_template("/x/{nope}", &["id"])
                .unwrap_err()
                .contains("does not capture")
        );
    }
}

/// A route's API versions.
#[derive(Debug)]
pub(crate) struct Versions {
    /// Reads the version from the request.
    pub(crate) selector: gateway_transform::version::VersionSelector,
    /// Each known version: (name, upstream index, lifecycle).
    pub(crate) entries: Vec<(
        String,
        usize,
        Option<gateway_transform::lifecycle::Lifecycle>,
    )>,
    /// Request headers the version is read from (`Vary` on every answer).
    pub(crate) vary: Option<http::HeaderValue>,
}

/// A route's aggregation: the composition and, per part, its upstream and path.
#[derive(Debug)]
pub(crate) struct Aggregation {
    pub(crate) aggregate: gateway_transform::aggregate::Aggregate,
    /// (upstream index, path) per part, in part order.
    pub(crate) calls: Vec<(usize, gateway_transform::rewrite::Rewrite)>,
}
