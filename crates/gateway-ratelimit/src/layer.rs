//! [`RateLimitLayer`]: the middleware that evaluates a request's limits and answers `429`.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use gateway_core::{Principal, Problem, RejectReason, ResponseFlags};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header::RETRY_AFTER};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    Outcome, Policy, Quota, Rate,
    key::{KeyBy, KeyContext, MakeRateLimitKey},
    store::{Check, Decided, Decision, MemoryStore, Store, StoreError},
};

/// One limit: a name, what it enforces, and what it counts per.
///
/// ```
/// use gateway_ratelimit::{KeyBy, Limit, Rate};
///
/// let per_ip = Limit::rate("per-ip", Rate::per_second(50)).burst(100).key(KeyBy::client_ip());
/// assert_eq!(per_ip.name(), "per-ip");
/// ```
#[derive(Clone)]
pub struct Limit {
    name: Arc<str>,
    policy: LimitPolicy,
    key: Arc<dyn MakeRateLimitKey>,
}

#[derive(Clone, Debug)]
enum LimitPolicy {
    Fixed(Policy, Arc<Meta>),
    Tiered(Arc<Tiers>),
}

/// One tier's policy: the name it is counted under, the policy, its header text.
type TierPolicy = (Arc<str>, Policy, Arc<Meta>);

#[derive(Debug)]
struct Tiers {
    /// `None`: the tier exists and this limit does not apply to it.
    by_name: HashMap<String, Option<TierPolicy>>,
    default: Option<TierPolicy>,
}

/// Header text that depends only on a limit's name and policy, prepared once.
#[derive(Debug)]
struct Meta {
    /// The name as a structured-field string.
    quoted: Box<str>,
    /// `"name";q=Q;w=W`, unless it changes over time (monthly quotas).
    item: Option<Box<str>>,
    /// `RateLimit-Policy` when this is the request's only limit.
    header: Option<HeaderValue>,
}

impl Meta {
    fn new(name: &str, policy: &Policy) -> Arc<Self> {
        let quoted: Box<str> = sf_string(name).into();
        let fixed_window =
            !matches!(policy, Policy::Quota(q) if q.window() == crate::QuotaWindow::Month);
        let item = fixed_window.then(|| {
            let (limit, window) = policy.shape(0);
            let (q, w) = quota_units(limit, window);
            format!("{quoted};q={q};w={w}").into_boxed_str()
        });
        let header = item.as_deref().and_then(|i| HeaderValue::from_str(i).ok());
        Arc::new(Self {
            quoted,
            item,
            header,
        })
    }
}

impl fmt::Debug for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limit")
            .field("name", &self.name)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Limit {
    /// A GCRA rate, with a burst equal to the rate's count (`100/s` admits 100 at once from an
    /// idle key, then one every 10 ms), counted per client IP.
    pub fn rate(name: impl Into<Arc<str>>, rate: Rate) -> Self {
        let burst = u32::try_from(rate.count()).unwrap_or(u32::MAX);
        Self::policy(name, Policy::rate(rate, burst))
    }

    /// A calendar quota, counted per client IP.
    pub fn quota(name: impl Into<Arc<str>>, quota: Quota) -> Self {
        Self::policy(name, Policy::Quota(quota))
    }

    /// Any policy, counted per client IP.
    pub fn policy(name: impl Into<Arc<str>>, policy: Policy) -> Self {
        let name: Arc<str> = name.into();
        let meta = Meta::new(&name, &policy);
        Self {
            name,
            policy: LimitPolicy::Fixed(policy, meta),
            key: Arc::new(KeyBy::client_ip()),
        }
    }

    /// A policy chosen by the caller's tier ([`Principal::tier`]), counted per consumer, falling
    /// back to the client IP for anonymous callers. Panics if a tier is named `default`: callers
    /// that get `default` are counted as `NAME@default`. A tier listed with `None` is not limited by
    /// this limit. Callers without a tier, or with a tier not listed, get `default` (or are not
    /// limited by this limit when it is `None`). Each tier counts separately, so moving a
    /// consumer to another tier starts it on a fresh bucket.
    pub fn tiered<P: Into<Option<Policy>>>(
        name: impl Into<Arc<str>>,
        tiers: impl IntoIterator<Item = (String, P)>,
        default: Option<Policy>,
    ) -> Self {
        let name: Arc<str> = name.into();
        let by_name = tiers
            .into_iter()
            .map(|(tier, p)| {
                assert!(
                    tier != "default",
                    "a tier may not be named `default` (the scope of callers without a tier)"
                );
                let scoped: Arc<str> = format!("{name}@{tier}").into();
                let p: Option<Policy> = p.into();
                (tier, p.map(|p| (scoped.clone(), p, Meta::new(&scoped, &p))))
            })
            .collect();
        let default = default.map(|p| {
            let scoped = Arc::<str>::from(format!("{name}@default"));
            let meta = Meta::new(&scoped, &p);
            (scoped, p, meta)
        });
        Self {
            name,
            policy: LimitPolicy::Tiered(Arc::new(Tiers { by_name, default })),
            key: Arc::new(KeyBy::consumer().or(KeyBy::client_ip())),
        }
    }

    /// Sets the burst of a fixed rate limit (ignored for quotas and tiered limits).
    pub fn burst(mut self, burst: u32) -> Self {
        if let LimitPolicy::Fixed(Policy::Rate { rate, .. }, _) = self.policy {
            let policy = Policy::rate(rate, burst);
            self.policy = LimitPolicy::Fixed(policy, Meta::new(&self.name, &policy));
        }
        self
    }

    /// Sets what the limit counts per.
    pub fn key(mut self, key: impl MakeRateLimitKey) -> Self {
        self.key = Arc::new(key);
        self
    }

    /// The limit's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn check(&self, cx: &KeyContext<'_>, cost: u32) -> Option<(Check, Arc<Meta>)> {
        let (name, policy, meta) = match &self.policy {
            LimitPolicy::Fixed(p, meta) => (self.name.clone(), *p, meta.clone()),
            LimitPolicy::Tiered(t) => {
                let tier = cx.extensions.get::<Principal>().and_then(Principal::tier);
                let (n, p, meta) = match tier.and_then(|name| t.by_name.get(name)) {
                    Some(listed) => listed.as_ref()?,
                    None => t.default.as_ref()?,
                };
                (n.clone(), *p, meta.clone())
            }
        };
        let check = Check {
            name,
            key: self.key.make_key(cx)?,
            policy,
            cost,
        };
        Some((check, meta))
    }
}

/// Which rate-limit response headers to send.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderStyle {
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-09):
    /// `RateLimit-Policy: "per-ip";q=100;w=1` and `RateLimit: "per-ip";r=42;t=1`.
    #[default]
    Ietf,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (seconds).
    Legacy,
    /// No headers (a `429` still carries `Retry-After`).
    None,
}

/// What the layer decided, as a response extension for metrics and access logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitReport {
    /// The reported limit's name (the refusing one, or the one with the fewest requests left).
    pub limit: Arc<str>,
    /// Whether the request was admitted.
    pub allowed: bool,
    /// Whether shadow mode let through a request the limits refused.
    pub shadow_refused: bool,
    /// How long the request was held by throttling.
    pub delayed: Duration,
    /// Requests left under the reported limit.
    pub remaining: u64,
}

#[derive(Clone)]
struct Config {
    limits: Vec<Limit>,
    store: Arc<dyn Store>,
    headers: HeaderStyle,
    max_wait: Duration,
    shadow: bool,
    cost: u32,
}

/// Layer applying one or more limits; see the [crate docs](crate).
///
/// The service stays ready (it refuses in `call`); clones share the limits and the store, and the
/// service is `Clone` when the inner service is. The inner service must be `Clone` because a
/// decision that waits (Redis, throttling) calls it later.
#[derive(Clone)]
pub struct RateLimitLayer {
    cfg: Arc<Config>,
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limits", &self.cfg.limits)
            .field("store", &self.cfg.store)
            .field("headers", &self.cfg.headers)
            .field("max_wait", &self.cfg.max_wait)
            .field("shadow", &self.cfg.shadow)
            .field("cost", &self.cfg.cost)
            .finish()
    }
}

impl RateLimitLayer {
    /// A layer enforcing `limit`, with an in-memory store.
    pub fn new(limit: Limit) -> Self {
        Self {
            cfg: Arc::new(Config {
                limits: vec![limit],
                store: Arc::new(MemoryStore::new()),
                headers: HeaderStyle::default(),
                max_wait: Duration::ZERO,
                shadow: false,
                cost: 1,
            }),
        }
    }

    /// `count` requests per second per client IP, burst `count`.
    pub fn per_second(count: u64) -> Self {
        Self::new(Limit::rate("default", Rate::per_second(count)))
    }

    /// `count` requests per minute per client IP, burst `count`.
    pub fn per_minute(count: u64) -> Self {
        Self::new(Limit::rate("default", Rate::per_minute(count)))
    }

    fn edit(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.cfg));
        self
    }

    /// Adds another limit; every limit must admit a request.
    ///
    /// # Panics
    /// If a limit with the same name was already added: names partition the store, so two limits
    /// sharing one would share state.
    pub fn limit(self, limit: Limit) -> Self {
        assert!(
            self.cfg.limits.iter().all(|l| l.name != limit.name),
            "duplicate rate limit name `{}`",
            limit.name
        );
        self.edit(|c| c.limits.push(limit))
    }

    /// Sets the burst of the most recently added limit (see [`Limit::burst`]).
    pub fn burst(self, burst: u32) -> Self {
        self.edit(|c| {
            if let Some(last) = c.limits.pop() {
                c.limits.push(last.burst(burst));
            }
        })
    }

    /// Sets what the most recently added limit counts per.
    pub fn key(self, key: impl MakeRateLimitKey) -> Self {
        self.edit(|c| {
            if let Some(last) = c.limits.pop() {
                c.limits.push(last.key(key));
            }
        })
    }

    /// Uses `store` for the limit state (shared by everything holding the same store).
    pub fn store(self, store: impl Store) -> Self {
        let store: Arc<dyn Store> = Arc::new(store);
        self.edit(|c| c.store = store)
    }

    /// Which headers to send (default [`HeaderStyle::Ietf`]).
    pub fn headers(self, style: HeaderStyle) -> Self {
        self.edit(|c| c.headers = style)
    }

    /// Throttling: hold a request for up to `max_wait` when that lets it conform to its rate
    /// limits, instead of refusing it (the slot is reserved, so held requests leave in order).
    /// Quotas never hold. Default zero (refuse at once).
    pub fn throttle(self, max_wait: Duration) -> Self {
        self.edit(|c| c.max_wait = max_wait)
    }

    /// Shadow mode: decide and report (headers, [`RateLimitReport`], a log line) but never
    /// refuse. Refused requests charge nothing, so shadow mode shows what enforcement would do.
    pub fn shadow(self, shadow: bool) -> Self {
        self.edit(|c| c.shadow = shadow)
    }

    /// The cost (weight) of each request, at least 1 (default 1).
    pub fn cost(self, cost: u32) -> Self {
        self.edit(|c| c.cost = cost.max(1))
    }
}

impl RateLimitLayer {
    /// Decides `req` outside tower (a hand-written pipeline): `Ok` with the headers and report to
    /// add to the eventual response (after any throttling delay), or `Err` with the refusal to
    /// send instead. The returned future owns what it needs, so `req` can be moved on at once.
    ///
    /// ```
    /// use gateway_ratelimit::RateLimitLayer;
    /// use http::{Request, Response};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limit = RateLimitLayer::per_minute(1);
    /// let admitted = limit.admit::<_, String>(&Request::new(())).await.unwrap();
    /// let mut res = Response::new(String::from("from the upstream"));
    /// admitted.apply(&mut res);
    /// assert_eq!(res.headers()["ratelimit"], "\"default\";r=0;t=60");
    /// let refused: Response<String> = limit.admit(&Request::new(())).await.unwrap_err();
    /// assert_eq!(refused.status(), 429);
    /// # }
    /// ```
    pub fn admit<B, ResBody>(
        &self,
        req: &Request<B>,
    ) -> impl Future<Output = Result<Admission, Response<ResBody>>> + Send + 'static + use<B, ResBody>
    where
        ResBody: From<String>,
    {
        let (checks, metas) = self.cfg.checks(&KeyContext::of(req));
        let decided =
            (!checks.is_empty()).then(|| self.cfg.store.decide(&checks, self.cfg.max_wait));
        let cfg = self.cfg.clone();
        async move {
            let decision = match decided {
                None => return Ok(Admission::default()),
                Some(Decided::Ready(r)) => r,
                Some(Decided::Pending(f)) => f.await,
            };
            let (delay, headers) = match resolve::<ResBody>(&cfg, &checks, &metas, decision) {
                Verdict::Refuse(res) => return Err(res),
                Verdict::Forward { delay, headers } => (delay, headers),
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(Admission { headers })
        }
    }
}

/// A request admitted by [`RateLimitLayer::admit`]: the headers and report for its response.
#[derive(Debug, Default)]
pub struct Admission {
    headers: Headers,
}

impl Admission {
    /// Adds the rate-limit headers and the [`RateLimitReport`] extension to `res`.
    pub fn apply<B>(self, res: &mut Response<B>) {
        self.headers.apply(res);
    }
}

impl Config {
    /// The checks a request is subject to, with their prepared header text.
    fn checks(&self, cx: &KeyContext<'_>) -> (Vec<Check>, Vec<Arc<Meta>>) {
        let mut checks = Vec::with_capacity(self.limits.len());
        let mut metas = Vec::with_capacity(self.limits.len());
        for (check, meta) in self.limits.iter().filter_map(|l| l.check(cx, self.cost)) {
            checks.push(check);
            metas.push(meta);
        }
        (checks, metas)
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            cfg: self.cfg.clone(),
        }
    }
}

/// Service applying a [`RateLimitLayer`]'s limits.
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    cfg: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> RateLimit<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the layer, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// What to do with a request once the store has decided.
enum Verdict<B> {
    Forward { delay: Duration, headers: Headers },
    Refuse(Response<B>),
}

/// Up to three response headers and the report, added to the upstream's response.
#[derive(Debug, Default)]
struct Headers {
    fields: Vec<(HeaderName, HeaderValue)>,
    report: Option<RateLimitReport>,
}

impl Headers {
    fn apply<B>(self, res: &mut Response<B>) {
        for (name, value) in self.fields {
            res.headers_mut().insert(name, value);
        }
        if let Some(report) = self.report {
            res.extensions_mut()
                .insert(match (report.allowed, report.shadow_refused) {
                    (false, _) => gateway_core::RateLimitDecision::Limited,
                    (true, true) => gateway_core::RateLimitDecision::ShadowLimited,
                    (true, false) => gateway_core::RateLimitDecision::Allowed,
                });
            res.extensions_mut().insert(report);
        }
    }
}

fn secs_ceil(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn sf_string(name: &str) -> String {
    // An sf-string: printable ASCII with `"` and `\` escaped; anything else replaced.
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
    out
}

/// A limit as `(q, w)`: `q` requests per `w` whole seconds. A quota is its count per window; a
/// rate is its burst scaled to a window of at least one second (`100/s` with burst 1 is
/// advertised as `q=100;w=1`, not `q=1`).
fn quota_units(limit: u64, window: Duration) -> (u64, u64) {
    let window_us = window.as_micros().max(1);
    let w = secs_ceil(window).max(1);
    let q = (u128::from(limit) * u128::from(w) * 1_000_000 + window_us / 2) / window_us;
    (u64::try_from(q).unwrap_or(u64::MAX).max(1), w)
}

/// Appends `n` in decimal (without `fmt`'s machinery: this is on every response).
fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &b in &buf[i..] {
        out.push(char::from(b));
    }
}

fn header_fields(
    style: HeaderStyle,
    metas: &[Arc<Meta>],
    d: &Decision,
    at: usize,
) -> Vec<(HeaderName, HeaderValue)> {
    let o = &d.outcomes[at];
    // `t` points at the same moment as `Retry-After` on a refusal.
    let t = secs_ceil(o.retry_after.filter(|_| !o.allowed).unwrap_or(o.reset));
    let mut fields = Vec::with_capacity(3);
    match style {
        HeaderStyle::Ietf => {
            let policy = match metas {
                [only] if only.header.is_some() => only.header.clone(),
                _ => {
                    let mut v = String::with_capacity(48 * metas.len());
                    for (i, (meta, o)) in metas.iter().zip(&d.outcomes).enumerate() {
                        if i > 0 {
                            v.push_str(", ");
                        }
                        match &meta.item {
                            Some(item) => v.push_str(item),
                            None => {
                                let (q, w) = quota_units(o.limit, o.window);
                                v.push_str(&meta.quoted);
                                v.push_str(";q=");
                                push_u64(&mut v, q);
                                v.push_str(";w=");
                                push_u64(&mut v, w);
                            }
                        }
                    }
                    HeaderValue::try_from(v).ok()
                }
            };
            if let Some(policy) = policy {
                fields.push((HeaderName::from_static("ratelimit-policy"), policy));
            }
            let quoted = &metas[at].quoted;
            let mut v = String::with_capacity(quoted.len() + 32);
            v.push_str(quoted);
            v.push_str(";r=");
            push_u64(&mut v, o.remaining);
            v.push_str(";t=");
            push_u64(&mut v, t);
            if let Ok(v) = HeaderValue::try_from(v) {
                fields.push((HeaderName::from_static("ratelimit"), v));
            }
        }
        HeaderStyle::Legacy => {
            let (q, _) = quota_units(o.limit, o.window);
            fields.push((
                HeaderName::from_static("x-ratelimit-limit"),
                HeaderValue::from(q),
            ));
            fields.push((
                HeaderName::from_static("x-ratelimit-remaining"),
                HeaderValue::from(o.remaining),
            ));
            fields.push((
                HeaderName::from_static("x-ratelimit-reset"),
                HeaderValue::from(t),
            ));
        }
        HeaderStyle::None => {}
    }
    fields
}

/// Turns a store's answer into what to do: a refusal, or the request forwarded (after a delay)
/// with its headers. In shadow mode nothing is ever refused or held, and a failed store only
/// logs.
fn resolve<B: From<String>>(
    cfg: &Config,
    checks: &[Check],
    metas: &[Arc<Meta>],
    decided: Result<Decision, StoreError>,
) -> Verdict<B> {
    let d = match decided {
        Ok(d) if d.outcomes.is_empty() || d.outcomes.len() == checks.len() => d,
        Ok(d) => {
            let e = StoreError::new(format!(
                "{} outcomes for {} checks",
                d.outcomes.len(),
                checks.len()
            ));
            return store_failed(cfg, &e);
        }
        Err(e) => return store_failed(cfg, &e),
    };
    let Some(at) = d.deciding() else {
        // A store that failed open: forward without headers.
        return Verdict::Forward {
            delay: Duration::ZERO,
            headers: Headers::default(),
        };
    };
    let o: &Outcome = &d.outcomes[at];
    let name = checks[at].name.clone();
    let fields = header_fields(cfg.headers, metas, &d, at);
    let mut report = RateLimitReport {
        limit: name.clone(),
        allowed: true,
        shadow_refused: false,
        delayed: Duration::ZERO,
        remaining: o.remaining,
    };
    if d.allowed() {
        let delay = if cfg.shadow {
            Duration::ZERO
        } else {
            d.delay()
        };
        report.delayed = delay;
        return Verdict::Forward {
            delay,
            headers: Headers {
                fields,
                report: Some(report),
            },
        };
    }
    if cfg.shadow {
        // Per request, so debug: the report extension is what metrics count.
        tracing::debug!(limit = %name, "rate limit would refuse this request (shadow mode)");
        report.shadow_refused = true;
        return Verdict::Forward {
            delay: Duration::ZERO,
            headers: Headers {
                fields,
                report: Some(report),
            },
        };
    }
    report.allowed = false;
    let mut problem = Problem::new(StatusCode::TOO_MANY_REQUESTS)
        .detail(match o.retry_after {
            Some(_) => "rate limit exceeded",
            None => "the request costs more than the limit allows in one window",
        })
        .extension("limit", name.as_ref().to_owned())
        .reason(RejectReason::RateLimited, ResponseFlags::RATE_LIMITED);
    let retry = o.retry_after.map(secs_ceil);
    if let Some(secs) = retry {
        problem = problem.extension("retry_after", secs);
    }
    let mut res: Response<B> = problem.into_response();
    if let Some(secs) = retry {
        res.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    Headers {
        fields,
        report: Some(report),
    }
    .apply(&mut res);
    Verdict::Refuse(res)
}

fn store_failed<B: From<String>>(cfg: &Config, e: &StoreError) -> Verdict<B> {
    if cfg.shadow {
        tracing::debug!(error = %e, "rate-limit store failed; forwarding (shadow mode)");
        return Verdict::Forward {
            delay: Duration::ZERO,
            headers: Headers::default(),
        };
    }
    // Per request, so debug: the store logs the failure itself (the Redis store once per pause).
    tracing::debug!(error = %e, "rate-limit store failed; refusing (fail closed)");
    Verdict::Refuse(
        Problem::new(StatusCode::SERVICE_UNAVAILABLE)
            .detail("rate limiting is unavailable")
            .reason(
                RejectReason::DependencyFailed,
                ResponseFlags::RATE_LIMIT_SERVICE_ERROR,
            )
            .into_response(),
    )
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: From<String>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (checks, metas) = self.cfg.checks(&KeyContext::of(&req));
        if checks.is_empty() {
            return ResponseFuture::calling(self.inner.call(req), Headers::default());
        }
        match self.cfg.store.decide(&checks, self.cfg.max_wait) {
            Decided::Ready(decided) => match resolve(&self.cfg, &checks, &metas, decided) {
                Verdict::Refuse(res) => ResponseFuture::done(res),
                Verdict::Forward { delay, headers } if delay.is_zero() => {
                    ResponseFuture::calling(self.inner.call(req), headers)
                }
                // Held: the readied inner service stays here for the next request; the held one
                // readies a clone when its time comes, so it takes no downstream capacity while
                // it waits.
                Verdict::Forward { delay, headers } => ResponseFuture {
                    state: State::Sleeping {
                        sleep: tokio::time::sleep(delay),
                        rest: Some((self.inner.clone(), req, headers)),
                    },
                },
            },
            Decided::Pending(fut) => ResponseFuture {
                state: State::Deciding {
                    fut,
                    rest: Some(Deferred {
                        svc: self.inner.clone(),
                        req,
                        checks,
                        metas,
                        cfg: self.cfg.clone(),
                    }),
                },
            },
        }
    }
}

struct Deferred<S, R> {
    svc: S,
    req: Request<R>,
    checks: Vec<Check>,
    metas: Vec<Arc<Meta>>,
    cfg: Arc<Config>,
}

pin_project! {
    /// Response future of [`RateLimit`].
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Deciding {
            fut: Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>,
            rest: Option<Deferred<S, ReqBody>>,
        },
        Sleeping {
            #[pin]
            sleep: tokio::time::Sleep,
            rest: Option<(S, Request<ReqBody>, Headers)>,
        },
        Readying {
            rest: Option<(S, Request<ReqBody>, Headers)>,
        },
        Calling {
            #[pin]
            fut: S::Future,
            headers: Option<Headers>,
        },
        Done {
            res: Option<S::Response>,
        },
    }
}

impl<S, R> fmt::Debug for ResponseFuture<S, R>
where
    S: Service<Request<R>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<S, R> ResponseFuture<S, R>
where
    S: Service<Request<R>>,
{
    fn calling(fut: S::Future, headers: Headers) -> Self {
        Self {
            state: State::Calling {
                fut,
                headers: Some(headers),
            },
        }
    }

    fn done(res: S::Response) -> Self {
        Self {
            state: State::Done { res: Some(res) },
        }
    }
}

const POLLED_AFTER_DONE: &str = "ResponseFuture polled after completion";

impl<S, R, ResBody> Future for ResponseFuture<S, R>
where
    S: Service<Request<R>, Response = Response<ResBody>>,
    ResBody: From<String>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            let next = match this.state.as_mut().project() {
                StateProj::Deciding { fut, rest } => {
                    let decided = ready!(fut.as_mut().poll(cx));
                    let Deferred {
                        svc,
                        req,
                        checks,
                        metas,
                        cfg,
                    } = rest.take().expect(POLLED_AFTER_DONE);
                    match resolve::<ResBody>(&cfg, &checks, &metas, decided) {
                        Verdict::Refuse(res) => State::Done { res: Some(res) },
                        Verdict::Forward { delay, headers } if delay.is_zero() => State::Readying {
                            rest: Some((svc, req, headers)),
                        },
                        Verdict::Forward { delay, headers } => State::Sleeping {
                            sleep: tokio::time::sleep(delay),
                            rest: Some((svc, req, headers)),
                        },
                    }
                }
                StateProj::Sleeping { sleep, rest } => {
                    ready!(sleep.poll(cx));
                    State::Readying {
                        rest: Some(rest.take().expect(POLLED_AFTER_DONE)),
                    }
                }
                StateProj::Readying { rest } => {
                    let (svc, _, _) = rest.as_mut().expect(POLLED_AFTER_DONE);
                    ready!(svc.poll_ready(cx))?;
                    let (mut svc, req, headers) = rest.take().expect(POLLED_AFTER_DONE);
                    State::Calling {
                        fut: svc.call(req),
                        headers: Some(headers),
                    }
                }
                StateProj::Calling { fut, headers } => {
                    let mut res = ready!(fut.poll(cx))?;
                    if let Some(h) = headers.take() {
                        h.apply(&mut res);
                    }
                    return Poll::Ready(Ok(res));
                }
                StateProj::Done { res } => {
                    return Poll::Ready(Ok(res.take().expect(POLLED_AFTER_DONE)));
                }
            };
            this.state.set(next);
        }
    }
}
