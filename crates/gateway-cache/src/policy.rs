//! RFC 9111 decisions for a **shared** cache, as pure functions: may this response be stored
//! (§3, §3.5), how long is it fresh (§4.2.1, §4.2.2), how old is it (§4.2.3), and may a stored
//! response answer this request without going to the origin (§4, RFC 5861 for stale serving).
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use gateway_cache::policy::{CachePolicy, Storable};
//! use http::{Request, Response};
//!
//! let now = SystemTime::now();
//! let req = Request::get("/orders").body(()).unwrap();
//! let res = Response::builder()
//!     .header("cache-control", "public, max-age=60")
//!     .header("date", httpdate::fmt_http_date(now))
//!     .body(())
//!     .unwrap();
//! let policy = CachePolicy::default();
//! assert_eq!(policy.storable(&req, &res), Storable::Yes);
//! assert_eq!(policy.freshness_lifetime(&res), Some(Duration::from_secs(60)));
//! ```

use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, Request, Response, StatusCode, header};

/// The directives of one or more `Cache-Control` fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `max-age` (the smallest when repeated).
    pub max_age: Option<u64>,
    /// `s-maxage` (the smallest when repeated).
    pub s_maxage: Option<u64>,
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` (with or without field names: either way a shared cache revalidates).
    pub no_cache: bool,
    /// `private` (with or without field names: a shared cache does not store it).
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate`.
    pub proxy_revalidate: bool,
    /// `must-understand`.
    pub must_understand: bool,
    /// `no-transform`.
    pub no_transform: bool,
    /// `immutable` (RFC 8246).
    pub immutable: bool,
    /// `stale-while-revalidate` (RFC 5861).
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error` (RFC 5861).
    pub stale_if_error: Option<u64>,
    /// Request: `max-stale` (`Some(u64::MAX)` without a value).
    pub max_stale: Option<u64>,
    /// Request: `min-fresh`.
    pub min_fresh: Option<u64>,
    /// Request: `only-if-cached`.
    pub only_if_cached: bool,
}

/// Seconds as RFC 9111 §1.2.2 reads them: digits only; values past 2^31 are 2^31.
fn delta_seconds(v: &str) -> Option<u64> {
    let v = v.trim().trim_matches('"');
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(v.parse::<u64>().unwrap_or(u64::MAX).min(1 << 31))
}

fn smallest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

impl CacheControl {
    /// Parses every `Cache-Control` field in `headers`. Unknown directives are ignored;
    /// a malformed `max-age`/`s-maxage` makes the response stale (as if `0`), the safe reading.
    pub fn parse(headers: &HeaderMap) -> Self {
        Self::parse_field(headers, &header::CACHE_CONTROL)
    }

    /// Parses every `name` field in `headers` with the `Cache-Control` directives: for targeted
    /// fields such as `CDN-Cache-Control` (RFC 9213), which share its syntax.
    pub fn parse_field(headers: &HeaderMap, name: &header::HeaderName) -> Self {
        let mut cc = Self::default();
        for v in headers.get_all(name) {
            let Ok(v) = v.to_str() else { continue };
            for directive in split_directives(v) {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim().to_ascii_lowercase(), Some(a.trim())),
                    None => (directive.trim().to_ascii_lowercase(), None),
                };
                let secs = || arg.and_then(delta_seconds);
                match name.as_str() {
                    "max-age" => cc.max_age = smallest(cc.max_age, Some(secs().unwrap_or(0))),
                    "s-maxage" => cc.s_maxage = smallest(cc.s_maxage, Some(secs().unwrap_or(0))),
                    "no-store" => cc.no_store = true,
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "must-revalidate" => cc.must_revalidate = true,
                    "proxy-revalidate" => cc.proxy_revalidate = true,
                    "must-understand" => cc.must_understand = true,
                    "no-transform" => cc.no_transform = true,
                    "immutable" => cc.immutable = true,
                    "stale-while-revalidate" => cc.stale_while_revalidate = secs(),
                    "stale-if-error" => cc.stale_if_error = secs(),
                    "max-stale" => {
                        cc.max_stale = Some(arg.map_or(u64::MAX, |_| secs().unwrap_or(0)));
                    }
                    "min-fresh" => cc.min_fresh = secs(),
                    "only-if-cached" => cc.only_if_cached = true,
                    _ => {}
                }
            }
        }
        cc
    }
}

/// Splits on commas outside quoted strings.
fn split_directives(v: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in v.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&v[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&v[start..]);
    out.into_iter().filter(|d| !d.trim().is_empty()).collect()
}

/// Why a response is not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storable {
    /// It may be stored.
    Yes,
    /// The method is not cacheable here (only GET and HEAD are).
    Method,
    /// The status is not final, or not one this cache understands.
    Status,
    /// `no-store` on the request or the response.
    NoStore,
    /// `private`: a shared cache never stores it.
    Private,
    /// The request had `Authorization` and the response did not allow sharing it (§3.5).
    Authorization,
    /// `Set-Cookie` on the response (stored only when configured).
    SetCookie,
    /// `Vary: *`: never reusable.
    VaryStar,
    /// No explicit freshness and not heuristically cacheable.
    NoFreshness,
}

/// Statuses heuristically cacheable by default (RFC 9110 §15.1).
const HEURISTIC: &[u16] = &[200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// Final statuses this cache understands (for `must-understand`, and what it stores at all).
/// Not `206`: this cache does not combine partial content, so it never stores any.
const UNDERSTOOD: &[u16] = &[
    200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501,
];

/// The shared-cache policy knobs.
#[derive(Clone, Debug)]
pub struct CachePolicy {
    /// Freshness for responses with none of their own that may be stored anyway (`None`: do
    /// not store them unless a heuristic applies).
    pub default_ttl: Option<Duration>,
    /// Freshness lifetimes are raised to at least this.
    pub ttl_floor: Duration,
    /// Freshness lifetimes are cut to at most this.
    pub ttl_ceiling: Duration,
    /// Store responses that set cookies (off by default: the cookie would go to everyone).
    pub store_set_cookie: bool,
    /// Heuristic freshness: this share of the time since `Last-Modified` (RFC 9111 §4.2.2),
    /// at most `heuristic_max`.
    pub heuristic_fraction: f64,
    /// The longest heuristic freshness.
    pub heuristic_max: Duration,
    /// Targeted cache-control fields this cache obeys, first match wins (RFC 9213): when a
    /// response carries one with a non-empty value, its directives replace `Cache-Control` and
    /// `Expires` for storing and freshness. Empty by default; `CDN-Cache-Control` is the
    /// registered one. The fields are forwarded downstream unchanged.
    pub targeted: Vec<header::HeaderName>,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            default_ttl: None,
            ttl_floor: Duration::ZERO,
            ttl_ceiling: Duration::from_secs(365 * 86_400),
            store_set_cookie: false,
            heuristic_fraction: 0.1,
            heuristic_max: Duration::from_secs(86_400),
            targeted: Vec::new(),
        }
    }
}

fn date(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None; // several: unusable
    }
    httpdate::parse_http_date(first.to_str().ok()?).ok()
}

impl CachePolicy {
    /// The response directives this cache obeys, and whether they came from a targeted field
    /// (RFC 9213 §2.1: then `Cache-Control` and `Expires` are ignored).
    pub fn response_directives(&self, headers: &HeaderMap) -> (CacheControl, bool) {
        for name in &self.targeted {
            let present = headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| !v.trim().is_empty()));
            if present {
                return (CacheControl::parse_field(headers, name), true);
            }
        }
        (CacheControl::parse(headers), false)
    }

    /// Whether a shared cache may store `res`, the answer to `req` (RFC 9111 §3, §3.5).
    pub fn storable<A, B>(&self, req: &Request<A>, res: &Response<B>) -> Storable {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Storable::Method;
        }
        let status = res.status().as_u16();
        let understood = UNDERSTOOD.contains(&status);
        if !understood {
            return Storable::Status;
        }
        let req_cc = CacheControl::parse(req.headers());
        let (cc, targeted) = self.response_directives(res.headers());
        // §5.2.2.3: with must-understand and an understood status, no-store is overridden.
        if req_cc.no_store || (cc.no_store && !cc.must_understand) {
            return Storable::NoStore;
        }
        if cc.private {
            return Storable::Private;
        }
        if req.headers().contains_key(header::AUTHORIZATION)
            && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate)
        {
            return Storable::Authorization;
        }
        if res.headers().contains_key(header::SET_COOKIE) && !self.store_set_cookie {
            return Storable::SetCookie;
        }
        if vary_star(res.headers()) {
            return Storable::VaryStar;
        }
        let explicit = cc.max_age.is_some()
            || cc.s_maxage.is_some()
            || (!targeted && res.headers().contains_key(header::EXPIRES));
        if explicit || cc.public || HEURISTIC.contains(&status) || self.default_ttl.is_some() {
            Storable::Yes
        } else {
            Storable::NoFreshness
        }
    }

    /// How long `res` is fresh (RFC 9111 §4.2.1): `s-maxage`, else `max-age`, else
    /// `Expires - Date`, else a heuristic from `Last-Modified` (only where allowed), else the
    /// default TTL; then floored and capped. `None`: never fresh without revalidation.
    pub fn freshness_lifetime<B>(&self, res: &Response<B>) -> Option<Duration> {
        let (cc, targeted) = self.response_directives(res.headers());
        let h = res.headers();
        let explicit = cc
            .s_maxage
            .or(cc.max_age)
            .map(Duration::from_secs)
            .or_else(|| {
                (!targeted && h.contains_key(header::EXPIRES)).then(|| {
                    // An invalid Expires (or several) means "already expired" (§5.3).
                    let expires = date(h, header::EXPIRES);
                    let served = date(h, header::DATE).unwrap_or_else(SystemTime::now);
                    expires
                        .and_then(|e| e.duration_since(served).ok())
                        .unwrap_or(Duration::ZERO)
                })
            });
        let lifetime = explicit
            .or_else(|| {
                let allowed = cc.public || HEURISTIC.contains(&res.status().as_u16());
                let modified = date(h, header::LAST_MODIFIED)?;
                let served = date(h, header::DATE).unwrap_or_else(SystemTime::now);
                let since = served.duration_since(modified).ok()?;
                allowed.then(|| {
                    since
                        .mul_f64(self.heuristic_fraction)
                        .min(self.heuristic_max)
                })
            })
            .or(self.default_ttl)?;
        Some(lifetime.clamp(self.ttl_floor, self.ttl_ceiling.max(self.ttl_floor)))
    }
}

/// Whether `Vary` names `*`.
pub fn vary_star(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|f| f.trim() == "*")
}

/// A stored response's clock facts, to compute its age (RFC 9111 §4.2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// When the request that got it was sent.
    pub request_time: SystemTime,
    /// When its head arrived.
    pub response_time: SystemTime,
    /// Its `Date` (or `response_time` without one).
    pub date: SystemTime,
    /// Its `Age` field, in seconds (0 without one).
    pub age: u64,
}

impl Timing {
    /// The facts of a response received now, for a request sent at `request_time`.
    pub fn of<B>(res: &Response<B>, request_time: SystemTime, response_time: SystemTime) -> Self {
        let h = res.headers();
        Self {
            request_time,
            response_time,
            date: date(h, header::DATE).unwrap_or(response_time),
            age: h
                .get(header::AGE)
                .and_then(|v| v.to_str().ok())
                .and_then(delta_seconds)
                .unwrap_or(0),
        }
    }

    /// The current age at `now` (§4.2.3).
    pub fn current_age(&self, now: SystemTime) -> Duration {
        let apparent = self
            .response_time
            .duration_since(self.date)
            .unwrap_or(Duration::ZERO);
        let delay = self
            .response_time
            .duration_since(self.request_time)
            .unwrap_or(Duration::ZERO);
        let corrected = Duration::from_secs(self.age) + delay;
        let initial = apparent.max(corrected);
        initial
            + now
                .duration_since(self.response_time)
                .unwrap_or(Duration::ZERO)
    }
}

/// What a stored response may do for a request (RFC 9111 §4, RFC 5861).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reuse {
    /// Serve it as it is.
    Fresh,
    /// Serve it stale now and refresh it in the background (`stale-while-revalidate`).
    StaleWhileRevalidate,
    /// Ask the origin first (conditionally); if that fails, `stale_if_error` says whether it may
    /// still be served.
    Revalidate {
        /// Whether it may be served when the origin fails or answers 5xx.
        stale_if_error: bool,
    },
}

/// Whether a stored response, `lifetime` fresh and `age` old, with response directives `res_cc`,
/// may answer a request with directives `req_cc`.
pub fn reuse(
    req_cc: &CacheControl,
    req_headers: &HeaderMap,
    res_cc: &CacheControl,
    lifetime: Duration,
    age: Duration,
) -> Reuse {
    let pragma_no_cache = req_headers
        .get_all(header::PRAGMA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("no-cache"))
        && !req_headers.contains_key(header::CACHE_CONTROL);
    let must_revalidate =
        res_cc.must_revalidate || res_cc.proxy_revalidate || res_cc.s_maxage.is_some();
    let staleness = age.saturating_sub(lifetime);
    let stale = age >= lifetime;
    let stale_if_error = !must_revalidate
        && res_cc
            .stale_if_error
            .is_some_and(|s| staleness <= Duration::from_secs(s));
    if req_cc.no_cache
        || pragma_no_cache
        || res_cc.no_cache
        || req_cc.max_age.is_some_and(|m| age > Duration::from_secs(m))
    {
        return Reuse::Revalidate { stale_if_error };
    }
    let min_fresh = Duration::from_secs(req_cc.min_fresh.unwrap_or(0));
    if !stale && lifetime - age >= min_fresh {
        return Reuse::Fresh;
    }
    if stale && !must_revalidate {
        if req_cc
            .max_stale
            .is_some_and(|m| m == u64::MAX || staleness <= Duration::from_secs(m))
        {
            return Reuse::Fresh;
        }
        if res_cc
            .stale_while_revalidate
            .is_some_and(|s| staleness <= Duration::from_secs(s))
        {
            return Reuse::StaleWhileRevalidate;
        }
    }
    Reuse::Revalidate { stale_if_error }
}

/// Whether `status` is a final status a cache may keep at all.
pub fn understood(status: StatusCode) -> bool {
    UNDERSTOOD.contains(&status.as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(headers: &[(&str, &str)]) -> Response<()> {
        let mut b = Response::builder();
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn get() -> Request<()> {
        Request::get("/").body(()).unwrap()
    }

    #[test]
    fn directives_parse_with_quotes_repeats_and_junk() {
        let mut h = HeaderMap::new();
        h.append(
            "cache-control",
            "max-age=60, private=\"set-cookie, x\"".parse().unwrap(),
        );
        h.append(
            "cache-control",
            "MAX-AGE=30, s-maxage=abc, stale-if-error=5"
                .parse()
                .unwrap(),
        );
        let cc = CacheControl::parse(&h);
        assert_eq!(cc.max_age, Some(30), "the smallest of repeats");
        assert_eq!(cc.s_maxage, Some(0), "malformed is stale");
        assert!(cc.private);
        assert_eq!(cc.stale_if_error, Some(5));
        assert!(
            !cc.no_cache,
            "no-cache inside the quoted field list is not a directive"
        );
    }

    #[test]
    fn storability_section_3() {
        let p = CachePolicy::default();
        assert_eq!(
            p.storable(&get(), &res(&[("cache-control", "max-age=5")])),
            Storable::Yes
        );
        assert_eq!(
            p.storable(
                &Request::post("/").body(()).unwrap(),
                &res(&[("cache-control", "max-age=5")])
            ),
            Storable::Method
        );
        assert_eq!(
            p.storable(&get(), &res(&[("cache-control", "no-store, max-age=5")])),
            Storable::NoStore
        );
        assert_eq!(
            p.storable(&get(), &res(&[("cache-control", "private, max-age=5")])),
            Storable::Private
        );
        assert_eq!(
            p.storable(
                &get(),
                &res(&[("cache-control", "max-age=5"), ("set-cookie", "s=1")])
            ),
            Storable::SetCookie
        );
        assert_eq!(
            p.storable(
                &get(),
                &res(&[("cache-control", "max-age=5"), ("vary", "accept, *")])
            ),
            Storable::VaryStar
        );
        let created = Response::builder()
            .status(201)
            .header("cache-control", "max-age=5")
            .body(())
            .unwrap();
        assert_eq!(p.storable(&get(), &created), Storable::Status);
        let moved = Response::builder().status(302).body(()).unwrap();
        assert_eq!(
            p.storable(&get(), &moved),
            Storable::NoFreshness,
            "302 is not heuristically cacheable"
        );
        assert_eq!(
            p.storable(&get(), &res(&[])),
            Storable::Yes,
            "200 is, heuristically"
        );
        // must-understand with an understood status overrides no-store (§5.2.2.3).
        assert_eq!(
            p.storable(
                &get(),
                &res(&[("cache-control", "no-store, must-understand, max-age=5")])
            ),
            Storable::Yes
        );
        let no_store_req = Request::get("/")
            .header("cache-control", "no-store")
            .body(())
            .unwrap();
        assert_eq!(
            p.storable(&no_store_req, &res(&[("cache-control", "max-age=5")])),
            Storable::NoStore
        );
    }

    #[test]
    fn authorization_needs_the_response_to_allow_sharing_section_3_5() {
        let p = CachePolicy::default();
        let authed = Request::get("/")
            .header("authorization", "Bearer x")
            .body(())
            .unwrap();
        assert_eq!(
            p.storable(&authed, &res(&[("cache-control", "max-age=60")])),
            Storable::Authorization
        );
        for allowed in [
            "public, max-age=60",
            "s-maxage=60",
            "must-revalidate, max-age=60",
        ] {
            assert_eq!(
                p.storable(&authed, &res(&[("cache-control", allowed)])),
                Storable::Yes,
                "{allowed}"
            );
        }
    }

    #[test]
    fn freshness_lifetime_section_4_2_1() {
        let p = CachePolicy::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let d = |t: SystemTime| httpdate::fmt_http_date(t);
        let r = res(&[("cache-control", "max-age=60, s-maxage=10")]);
        assert_eq!(
            p.freshness_lifetime(&r),
            Some(Duration::from_secs(10)),
            "s-maxage wins in a shared cache"
        );
        let r = res(&[
            ("date", &d(now)),
            ("expires", &d(now + Duration::from_secs(300))),
        ]);
        assert_eq!(p.freshness_lifetime(&r), Some(Duration::from_secs(300)));
        let r = res(&[("date", &d(now)), ("expires", "0")]);
        assert_eq!(
            p.freshness_lifetime(&r),
            Some(Duration::ZERO),
            "an invalid Expires is expired"
        );
        let r = res(&[
            ("date", &d(now)),
            ("last-modified", &d(now - Duration::from_secs(1000))),
        ]);
        assert_eq!(
            p.freshness_lifetime(&r),
            Some(Duration::from_secs(100)),
            "10% heuristic"
        );
        let r = Response::builder()
            .status(302)
            .header("date", d(now))
            .header("last-modified", d(now - Duration::from_secs(1000)))
            .body(())
            .unwrap();
        assert_eq!(p.freshness_lifetime(&r), None, "no heuristic for 302");
        let bounded = CachePolicy {
            ttl_floor: Duration::from_secs(30),
            ttl_ceiling: Duration::from_secs(120),
            ..CachePolicy::default()
        };
        assert_eq!(
            bounded.freshness_lifetime(&res(&[("cache-control", "max-age=5")])),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            bounded.freshness_lifetime(&res(&[("cache-control", "max-age=500")])),
            Some(Duration::from_secs(120))
        );
        let default = CachePolicy {
            default_ttl: Some(Duration::from_secs(7)),
            ..CachePolicy::default()
        };
        assert_eq!(
            default.freshness_lifetime(&Response::builder().status(302).body(()).unwrap()),
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn age_calculation_section_4_2_3() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let r = res(&[
            (
                "date",
                &httpdate::fmt_http_date(t0 - Duration::from_secs(5)),
            ),
            ("age", "10"),
        ]);
        let timing = Timing::of(&r, t0 - Duration::from_secs(2), t0);
        // apparent 5, corrected 10 + 2 delay = 12: initial 12, plus 30 resident.
        assert_eq!(
            timing.current_age(t0 + Duration::from_secs(30)),
            Duration::from_secs(42)
        );
    }

    #[test]
    fn reuse_section_4_and_rfc_5861() {
        let none = CacheControl::default();
        let h = HeaderMap::new();
        let s = Duration::from_secs;
        assert_eq!(reuse(&none, &h, &none, s(60), s(10)), Reuse::Fresh);
        assert_eq!(
            reuse(&none, &h, &none, s(60), s(61)),
            Reuse::Revalidate {
                stale_if_error: false
            }
        );
        let swr = CacheControl {
            stale_while_revalidate: Some(30),
            stale_if_error: Some(300),
            ..CacheControl::default()
        };
        assert_eq!(
            reuse(&none, &h, &swr, s(60), s(80)),
            Reuse::StaleWhileRevalidate
        );
        assert_eq!(
            reuse(&none, &h, &swr, s(60), s(100)),
            Reuse::Revalidate {
                stale_if_error: true
            }
        );
        let strict = CacheControl {
            must_revalidate: true,
            stale_while_revalidate: Some(30),
            stale_if_error: Some(300),
            ..CacheControl::default()
        };
        assert_eq!(
            reuse(&none, &h, &strict, s(60), s(80)),
            Reuse::Revalidate {
                stale_if_error: false
            },
            "must-revalidate forbids stale"
        );
        let no_cache_req = CacheControl {
            no_cache: true,
            ..CacheControl::default()
        };
        assert_eq!(
            reuse(&no_cache_req, &h, &none, s(60), s(1)),
            Reuse::Revalidate {
                stale_if_error: false
            }
        );
        let mut pragma = HeaderMap::new();
        pragma.insert("pragma", "no-cache".parse().unwrap());
        assert_eq!(
            reuse(&none, &pragma, &none, s(60), s(1)),
            Reuse::Revalidate {
                stale_if_error: false
            }
        );
        let min_fresh = CacheControl {
            min_fresh: Some(30),
            ..CacheControl::default()
        };
        assert_eq!(
            reuse(&min_fresh, &h, &none, s(60), s(40)),
            Reuse::Revalidate {
                stale_if_error: false
            }
        );
        let max_stale = CacheControl {
            max_stale: Some(u64::MAX),
            ..CacheControl::default()
        };
        assert_eq!(reuse(&max_stale, &h, &none, s(60), s(600)), Reuse::Fresh);
        let max_age0 = CacheControl {
            max_age: Some(0),
            ..CacheControl::default()
        };
        assert_eq!(
            reuse(&max_age0, &h, &none, s(60), s(1)),
            Reuse::Revalidate {
                stale_if_error: false
            }
        );
    }

    #[test]
    fn a_targeted_field_replaces_cache_control_and_expires_rfc9213() {
        let cdn = header::HeaderName::from_static("cdn-cache-control");
        let policy = CachePolicy {
            targeted: vec![cdn],
            ..CachePolicy::default()
        };
        // The browser may keep it 10s; this cache (a CDN-class one) keeps it 600s.
        let both = res(&[
            ("cache-control", "max-age=10"),
            ("cdn-cache-control", "max-age=600"),
        ]);
        assert_eq!(
            policy.freshness_lifetime(&both),
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            CachePolicy::default().freshness_lifetime(&both),
            Some(Duration::from_secs(10)),
            "not on the target list: ignored"
        );
        // `no-store` in the targeted field wins over a storable Cache-Control ...
        let refused = res(&[
            ("cache-control", "public, max-age=60"),
            ("cdn-cache-control", "no-store"),
        ]);
        assert_eq!(policy.storable(&get(), &refused), Storable::NoStore);
        // ... and Expires is ignored when the targeted field decides.
        let expires = res(&[
            ("expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
            ("cdn-cache-control", "no-cache"),
        ]);
        assert_eq!(policy.freshness_lifetime(&expires), None);
        // An empty targeted field does not count: Cache-Control applies.
        let empty = res(&[("cache-control", "max-age=5"), ("cdn-cache-control", " ")]);
        assert_eq!(
            policy.freshness_lifetime(&empty),
            Some(Duration::from_secs(5))
        );
        assert!(policy.response_directives(both.headers()).1);
        assert!(!policy.response_directives(empty.headers()).1);
    }
}
