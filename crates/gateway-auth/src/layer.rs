//! [`RequireAuthLayer`]: authentication by one of several providers, and required roles.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use gateway_core::{ClientIp, Principal, Problem, RejectReason, ResponseFlags, RouteId};
use http::{HeaderValue, Request, Response, StatusCode, header::WWW_AUTHENTICATE};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::{AuthFailure, Authenticate, Credential, Rules};

struct Config {
    providers: Vec<Arc<dyn Authenticate>>,
    optional: bool,
    roles: Vec<String>,
    scopes: Vec<String>,
    cors_preflight: bool,
    rules: Option<Rules>,
    all_of: bool,
}

/// Layer requiring an authenticated caller; see the [crate docs](crate).
///
/// Every provider looks at (and strips) its own credential. Any invalid credential refuses the
/// request (`401`), even beside a valid one; otherwise the first valid one decides who the caller
/// is. Without any credential the request is refused (`401`), unless the layer is
/// [`optional`](Self::optional), in which case it passes anonymously. With
/// [`roles`](Self::roles), the caller needs at least one of them (`403` otherwise). The service
/// stays ready; clones share the providers.
#[derive(Clone)]
pub struct RequireAuthLayer {
    cfg: Arc<Config>,
}

impl fmt::Debug for RequireAuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireAuthLayer")
            .field("providers", &self.cfg.providers.len())
            .field("optional", &self.cfg.optional)
            .field("roles", &self.cfg.roles)
            .finish()
    }
}

impl RequireAuthLayer {
    /// Requires a credential `provider` accepts.
    pub fn new(provider: impl Authenticate) -> Self {
        Self {
            cfg: Arc::new(Config {
                providers: vec![Arc::new(provider)],
                optional: false,
                roles: Vec::new(),
                scopes: Vec::new(),
                cors_preflight: false,
                rules: None,
                all_of: false,
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Config)) -> Self {
        match Arc::get_mut(&mut self.cfg) {
            Some(cfg) => f(cfg),
            None => {
                let mut cfg = Config {
                    providers: self.cfg.providers.clone(),
                    optional: self.cfg.optional,
                    roles: self.cfg.roles.clone(),
                    scopes: self.cfg.scopes.clone(),
                    cors_preflight: self.cfg.cors_preflight,
                    rules: self.cfg.rules.clone(),
                    all_of: self.cfg.all_of,
                };
                f(&mut cfg);
                self.cfg = Arc::new(cfg);
            }
        }
        self
    }

    /// Requires a valid credential of *every* provider (for example a client certificate and a
    /// token), instead of any one of them. The principal is the first provider's.
    pub fn all_of(self, all: bool) -> Self {
        self.edit(|c| c.all_of = all)
    }

    /// Also accepts credentials of `provider` (any of the providers may authenticate).
    pub fn or(self, provider: impl Authenticate) -> Self {
        let provider: Arc<dyn Authenticate> = Arc::new(provider);
        self.edit(|c| c.providers.push(provider))
    }

    /// Lets requests without any credential through anonymously (no `Principal`). Requests with
    /// an invalid credential are still refused.
    pub fn optional(self, optional: bool) -> Self {
        self.edit(|c| c.optional = optional)
    }

    /// Requires at least one of these roles (`403` otherwise; `401` for anonymous callers).
    pub fn roles<I: IntoIterator<Item = S>, S: Into<String>>(self, roles: I) -> Self {
        let roles: Vec<String> = roles.into_iter().map(Into::into).collect();
        self.edit(|c| c.roles = roles)
    }

    /// Requires every one of these scopes (`403` otherwise; `401` for anonymous callers).
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(self, scopes: I) -> Self {
        let scopes: Vec<String> = scopes.into_iter().map(Into::into).collect();
        self.edit(|c| c.scopes = scopes)
    }

    /// Applies attribute rules after authentication (`403` when they refuse; logged only in
    /// their shadow mode). Anonymous callers of an optional route are evaluated too.
    pub fn rules(self, rules: Rules) -> Self {
        self.edit(|c| c.rules = Some(rules))
    }

    /// Lets CORS preflight requests (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`) through without credentials: browsers never send
    /// credentials on a preflight. Off by default.
    pub fn cors_preflight(self, pass: bool) -> Self {
        self.edit(|c| c.cors_preflight = pass)
    }

    /// Authenticates `req` outside tower: the request with its credentials stripped and its
    /// `Principal` inserted, or the refusal to send instead.
    #[allow(clippy::result_large_err)]
    pub fn check<B, ResBody: From<String>>(
        &self,
        req: Request<B>,
    ) -> Result<Request<B>, Response<ResBody>> {
        let (mut parts, body) = req.into_parts();
        decide(&self.cfg, &mut parts)?;
        Ok(Request::from_parts(parts, body))
    }
}

/// The provider outcomes combined; on success the principal (if any) is in the extensions. A
/// refusal carries the [`AuthFailureReason`](gateway_core::AuthFailureReason) the audit log got.
fn decide<ResBody: From<String>>(
    cfg: &Config,
    parts: &mut http::request::Parts,
) -> Result<(), Response<ResBody>> {
    let last = std::cell::Cell::new(None);
    decide_audited(cfg, parts, &last).map_err(|mut res| {
        if let Some((provider, reason)) = last.get() {
            res.extensions_mut()
                .insert(gateway_core::AuthFailureReason { provider, reason });
        }
        res
    })
}

fn decide_audited<ResBody: From<String>>(
    cfg: &Config,
    parts: &mut http::request::Parts,
    last: &std::cell::Cell<Option<(&'static str, &'static str)>>,
) -> Result<(), Response<ResBody>> {
    if cfg.cors_preflight
        && parts.method == http::Method::OPTIONS
        && parts.headers.contains_key(http::header::ORIGIN)
        && parts
            .headers
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        // Browsers send no credentials on a preflight; anything credential-like is still
        // stripped (never forwarded), and deny rules still apply.
        for p in &cfg.providers {
            let _ = p.authenticate(parts);
        }
        if let Some(rules) = &cfg.rules
            && !rules.is_shadow()
            && rules.denies(parts, None, crate::rules::second_of_day_now())
        {
            return Err(Problem::new(StatusCode::FORBIDDEN)
                .detail("the request is not allowed by the route's rules")
                .reason(RejectReason::Forbidden, ResponseFlags::empty())
                .into_response());
        }
        return Ok(());
    }
    let mut valid: Option<Principal> = None;
    let mut failure: Option<AuthFailure> = None;
    let mut valid_count = 0;
    let mut absent = 0;
    // Every provider runs, so every credential is stripped and none is ignored.
    for p in &cfg.providers {
        match p.authenticate(parts) {
            Credential::Absent => absent += 1,
            Credential::Valid(principal) => {
                valid_count += 1;
                valid.get_or_insert(principal);
            }
            Credential::Invalid(f) => {
                failure.get_or_insert(f);
            }
        }
    }
    let audit = |reason: &'static str, provider: &'static str| {
        last.set(Some((provider, reason)));
        let ip = parts.extensions.get::<ClientIp>().map(ClientIp::ip);
        let route = parts
            .extensions
            .get::<RouteId>()
            .map(|r| r.as_str().to_owned());
        tracing::info!(target: "gateway_auth::audit", reason, provider, client_ip = ?ip, route = ?route, "authentication failed");
    };
    if cfg.all_of && absent > 0 && failure.is_none() {
        // Every provider's credential is required: one missing is like none at all.
        audit("a required credential is missing", "all_of");
        return Err(unauthorized(cfg, "authentication is required", false));
    }
    if valid_count > 1 && !cfg.all_of && failure.is_none() {
        // Two credentials (say a key in a link's query and another in the browser's cookie):
        // never pick one by order.
        failure = Some(AuthFailure::new(
            "any",
            "several credentials in one request",
        ));
    }
    if let Some(f) = failure {
        audit(f.reason(), f.provider());
        return Err(unauthorized(cfg, "the credential is not valid", true));
    }
    match valid {
        Some(principal) => {
            if !cfg.roles.is_empty() && !cfg.roles.iter().any(|r| principal.has_role(r)) {
                audit("missing role", "roles");
                return Err(Problem::new(StatusCode::FORBIDDEN)
                    .detail("the caller lacks a role this route requires")
                    .reason(RejectReason::Forbidden, ResponseFlags::empty())
                    .into_response());
            }
            if !cfg.scopes.iter().all(|s| principal.has_scope(s)) {
                audit("missing scope", "scopes");
                return Err(Problem::new(StatusCode::FORBIDDEN)
                    .detail("the credential lacks a scope this route requires")
                    .reason(RejectReason::Forbidden, ResponseFlags::empty())
                    .into_response());
            }
            check_rules(cfg, parts, Some(&principal), &audit)?;
            parts.extensions.insert(principal);
            Ok(())
        }
        None if cfg.optional && cfg.roles.is_empty() && cfg.scopes.is_empty() => {
            check_rules(cfg, parts, None, &audit)
        }
        None => {
            audit("no credential", "any");
            Err(unauthorized(cfg, "authentication is required", false))
        }
    }
}

fn check_rules<ResBody: From<String>>(
    cfg: &Config,
    parts: &http::request::Parts,
    principal: Option<&Principal>,
    audit: &dyn Fn(&'static str, &'static str),
) -> Result<(), Response<ResBody>> {
    let Some(rules) = &cfg.rules else {
        return Ok(());
    };
    if rules.permits(parts, principal, crate::rules::second_of_day_now()) {
        return Ok(());
    }
    if rules.is_shadow() {
        audit("refused by the rules (shadow mode: allowed)", "rules");
        return Ok(());
    }
    audit("refused by the rules", "rules");
    Err(Problem::new(StatusCode::FORBIDDEN)
        .detail("the request is not allowed by the route's rules")
        .reason(RejectReason::Forbidden, ResponseFlags::empty())
        .into_response())
}

fn unauthorized<ResBody: From<String>>(
    cfg: &Config,
    detail: &str,
    invalid: bool,
) -> Response<ResBody> {
    let mut res: Response<ResBody> = Problem::new(StatusCode::UNAUTHORIZED)
        .detail(detail)
        .reason(RejectReason::Unauthenticated, ResponseFlags::empty())
        .into_response();
    for p in &cfg.providers {
        res.headers_mut().append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(p.challenge(invalid)),
        );
    }
    res
}

impl<S> Layer<S> for RequireAuthLayer {
    type Service = RequireAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireAuth {
            inner,
            cfg: self.cfg.clone(),
        }
    }
}

/// Service applying a [`RequireAuthLayer`].
#[derive(Clone)]
pub struct RequireAuth<S> {
    inner: S,
    cfg: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for RequireAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireAuth")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequireAuth<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<String>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        match decide(&self.cfg, &mut parts) {
            Ok(()) => ResponseFuture::inner(self.inner.call(Request::from_parts(parts, body))),
            Err(res) => ResponseFuture::answer(res),
        }
    }
}

pin_project! {
    /// Response future of [`RequireAuth`] and [`IpFilter`](crate::IpFilter): the inner service's,
    /// or the layer's own answer.
    pub struct ResponseFuture<F, B> {
        #[pin]
        inner: Option<F>,
        answer: Option<Response<B>>,
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn inner(fut: F) -> Self {
        Self {
            inner: Some(fut),
            answer: None,
        }
    }

    pub(crate) fn answer(res: Response<B>) -> Self {
        Self {
            inner: None,
            answer: Some(res),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.as_pin_mut() {
            Some(fut) => fut.poll(cx),
            None => Poll::Ready(Ok(this
                .answer
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}
