//! The per-request path: limits, normalization, ingress hygiene, client IP, routing, upstream.

use std::sync::Arc;

use bytes::Bytes;
use gateway_breaker::{
    BulkheadLayer, CircuitBreaker, Hedge, HedgeLayer, ReplayBody, Retry, RetryConfig, RetryLayer,
};
use gateway_core::{
    ConnectionInfo, DefaultClassifier, PathError, Problem, RejectReason, ResponseFlags,
    normalize_path,
};
use gateway_lb::{ResponseBody, Upstream, strip_hop_by_hop};
use http::{
    HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version,
    header::{CONNECTION, CONTENT_LENGTH, HOST, UPGRADE},
    uri::{Authority, PathAndQuery},
};
use hyper::body::Incoming;
use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    compile::Compiled,
    router::{Route, rewrite_path},
};

/// A request body on its way upstream: the client's, streamed (limited to
/// `limits.max_body_bytes`), or one a route read whole (validated, transformed). The retry
/// layer's body is exactly that choice, so it serves here too.
pub type ClientBody = ReplayBody<http_body_util::Limited<Incoming>>;

/// The request body type forwarded upstream: the client's body, streamed through, or buffered by
/// the retry layer for replay.
pub type RequestBody = ReplayBody<ClientBody>;

type Client = Upstream<RequestBody>;
type Guarded = CircuitBreaker<Client, DefaultClassifier>;

/// The stack in front of one upstream. A bare upstream calls its client directly; one with any
/// resilience setting goes through retries -> hedging -> breaker (each a pass-through when not
/// configured) -> client.
#[derive(Debug)]
enum Dispatch {
    Bare(Client),
    Stacked(Retry<Hedge<Guard>>, Client),
}

impl Dispatch {
    /// The upstream client itself (for upgrades, which bypass the resilience stack).
    fn client(&self) -> &Client {
        match self {
            Self::Bare(c) | Self::Stacked(_, c) => c,
        }
    }
}

/// In the extensions of an HTTP/1.1 request that asked for a protocol upgrade: the `Upgrade`
/// field, kept when the hop-by-hop fields are removed.
#[derive(Clone, Debug)]
struct UpgradeRequest(HeaderValue);

/// The `Upgrade` field of an HTTP/1.1 request whose `Connection` names `upgrade`.
fn upgrade_request(headers: &http::HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let mut values = headers.get_all(UPGRADE).iter();
    let first = values.next()?.clone();
    (asks && values.next().is_none()).then_some(first)
}

/// The protocol name an `Upgrade` value asks for first (`websocket` of `WebSocket/13, h2c`).
fn upgrade_protocol(v: &HeaderValue) -> Option<String> {
    let first = v.to_str().ok()?.split(',').next()?.trim();
    let name = first.split('/').next()?.trim();
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

/// The client, behind the upstream's circuit breaker when it has one.
#[derive(Clone, Debug)]
enum Guard {
    Plain(Client),
    Breaker(Guarded),
}

impl Service<Request<RequestBody>> for Guard {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = GuardFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self {
            Self::Plain(client) => client.poll_ready(cx),
            Self::Breaker(guarded) => guarded.poll_ready(cx),
        }
    }

    fn call(&mut self, req: Request<RequestBody>) -> GuardFuture {
        match self {
            Self::Plain(client) => GuardFuture::Plain {
                fut: client.send(req),
            },
            Self::Breaker(guarded) => GuardFuture::Breaker {
                fut: guarded.call(req),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`Guard`].
    #[project = GuardProj]
    enum GuardFuture {
        Plain { #[pin] fut: gateway_lb::ResponseFuture },
        Breaker { #[pin] fut: gateway_breaker::ResponseFuture<gateway_lb::ResponseFuture, DefaultClassifier> },
    }
}

impl Future for GuardFuture {
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GuardProj::Plain { fut } => fut.poll(cx),
            GuardProj::Breaker { fut } => fut.poll(cx),
        }
    }
}

/// One worker's request pipeline: the shared compiled config plus this worker's upstream
/// clients (connection pools stay on the core that uses them).
#[derive(Debug)]
pub struct Pipeline {
    compiled: Arc<Compiled>,
    dispatch: Vec<Arc<Dispatch>>,
}

fn reject(
    status: StatusCode,
    reason: RejectReason,
    flags: ResponseFlags,
    detail: &str,
) -> Response<ResponseBody> {
    Problem::new(status)
        .detail(detail)
        .reason(reason, flags)
        .into_response()
}

impl Pipeline {
    /// Builds the pipeline, creating this worker's upstream clients.
    pub fn new(compiled: Arc<Compiled>) -> Self {
        Self::build(compiled, None)
    }

    /// The pipeline for a reloaded configuration: upstreams the reload kept (the same
    /// [`crate::compile::UpstreamSpec`]) keep this worker's clients and their connection pools.
    #[must_use]
    pub fn reloaded(&self, compiled: Arc<Compiled>) -> Self {
        Self::build(compiled, Some(self))
    }

    fn build(compiled: Arc<Compiled>, previous: Option<&Self>) -> Self {
        let dispatch = compiled
            .upstreams
            .iter()
            .map(|spec| {
                let kept = previous.and_then(|p| {
                    p.compiled
                        .upstreams
                        .iter()
                        .position(|old| Arc::ptr_eq(old, spec))
                        .map(|i| p.dispatch[i].clone())
                });
                kept.unwrap_or_else(|| Arc::new(Self::dispatch(spec)))
            })
            .collect();
        Self { compiled, dispatch }
    }

    fn dispatch(spec: &crate::compile::UpstreamSpec) -> Dispatch {
        let client = spec.build();
        // One set of health checks per upstream, whichever worker gets here first; every
        // worker's client reads their results through the shared balancer.
        spec.health.get_or_init(|| client.spawn_health_checks());
        let direct = client.clone();
        if spec.retry.is_none() && spec.hedge.is_none() && spec.breaker.is_none() {
            return Dispatch::Bare(client);
        }
        let guard = match &spec.breaker {
            Some(breaker) => Guard::Breaker(breaker.layer(client)),
            None => Guard::Plain(client),
        };
        let hedge = spec.hedge.clone().unwrap_or_else(HedgeLayer::off);
        let retry = spec
            .retry
            .clone()
            .unwrap_or_else(|| RetryLayer::new(RetryConfig::default().attempts(0)));
        Dispatch::Stacked(retry.layer(hedge.layer(guard)), direct)
    }

    /// The compiled configuration.
    pub fn compiled(&self) -> &Arc<Compiled> {
        &self.compiled
    }

    /// Handles one request from a client connection.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        conn: ConnectionInfo,
    ) -> Response<ResponseBody> {
        // gRPC clients cannot read problem+json: the gateway's own refusals become trailers-only
        // gRPC replies (upstream answers pass through untouched, trailers included).
        if gateway_core::grpc::is_grpc(&req) {
            let res = self.handle_http(req, conn).await;
            if res.extensions().get::<gateway_core::Rejection>().is_some() {
                return gateway_core::grpc::local_reply(res);
            }
            return res;
        }
        self.handle_http(req, conn).await
    }

    async fn handle_http(
        &self,
        req: Request<Incoming>,
        conn: ConnectionInfo,
    ) -> Response<ResponseBody> {
        let (route, req) = match self.prepare(req, conn) {
            Ok(prepared) => prepared,
            Err(res) => return res,
        };
        // What the access log and metrics need, from the request, onto the response.
        let client_ip = req.extensions().get::<gateway_core::ClientIp>().copied();
        let path = req
            .extensions()
            .get::<gateway_core::NormalizedPath>()
            .cloned();
        let (mut res, principal) = self.serve_route(route, req).await;
        let ext = res.extensions_mut();
        ext.insert(route.id.clone());
        if let Some(ip) = client_ip {
            ext.insert(ip);
        }
        // A transform's rewritten path, when there is one, is the one logged.
        if let Some(path) = path
            && ext.get::<gateway_core::NormalizedPath>().is_none()
        {
            ext.insert(path);
        }
        if let Some(principal) = principal {
            ext.insert(principal);
        }
        res
    }

    /// The route's policies, then its upstream; also returns the principal, once known.
    async fn serve_route(
        &self,
        route: &Route,
        mut req: Request<ClientBody>,
    ) -> (Response<ResponseBody>, Option<gateway_core::Principal>) {
        // A retired API version is answered here, whatever else the route says.
        if let Some(lifecycle) = &route.lifecycle
            && let Some(gone) = lifecycle.refusal(std::time::SystemTime::now())
        {
            return (gone, None);
        }
        // The API version asked for: its upstream, its lifecycle, and the path without it.
        let version = match &route.versions {
            Some(versions) => match select_version(versions, &mut req) {
                Ok(entry) => Some(entry),
                Err(res) => return (res, None),
            },
            None => None,
        };
        // Client IP lists, then authentication (credentials stripped, `Principal` inserted), then
        // the limits that may key on the principal.
        if let Some(filter) = &route.ip_filter
            && let Some(refusal) = filter.refusal(&req)
        {
            return (refusal, None);
        }
        if let Some(auth) = &route.auth {
            req = match auth.check(req) {
                Ok(req) => req,
                Err(refusal) => return (refusal, None),
            };
        }
        // The principal moves to the response (for logs) once nothing after needs it on the
        // request: the decision point and the limits read it, the upstream call does not.
        let take = |req: &mut Request<ClientBody>| {
            req.extensions_mut().remove::<gateway_core::Principal>()
        };
        if let Some(pdp) = &route.ext_authz {
            match Box::pin(pdp.authorize(&req)).await {
                Ok(grant) => grant.apply(&mut req),
                Err(refusal) => return (refusal, take(&mut req)),
            }
        }
        // Rate limits and quotas, before any upstream resource is taken.
        let admission = match &route.rate_limit {
            Some(limit) => match Box::pin(limit.admit(&req)).await {
                Ok(admission) => Some(admission),
                Err(refusal) => return (refusal, take(&mut req)),
            },
            None => None,
        };
        let principal = take(&mut req);
        // A split picks the upstream (after the policies: a tester's override header does not
        // skip them).
        let upstream = match (&route.split, version) {
            (_, Some((up, _, _))) => up,
            (Some(split), None) => split.choose(&mut req),
            (None, None) => route.upstream,
        };
        // Validation sees the request as the client sent it (before any transform).
        if let Some(validation) = &route.validation {
            let (parts, body) = req.into_parts();
            let params = parts
                .extensions
                .get::<crate::router::PathParams>()
                .map_or(&[][..], |p| p.0.as_slice());
            let mut body = Some(body);
            match Box::pin(validation.check(&parts, params, &mut body)).await {
                crate::body::Checked::Refused(problem) => {
                    return (problem.into_response(), principal);
                }
                crate::body::Checked::Valid(read) => {
                    let body = match (read, body) {
                        (Some(bytes), _) => ClientBody::buffered(bytes),
                        (None, Some(body)) => body,
                        (None, None) => ClientBody::buffered(Bytes::new()),
                    };
                    req = Request::from_parts(parts, body);
                }
            }
        }
        // Header transforms, after every policy: they never decide who gets in.
        if let Some(rules) = &route.transform
            && !rules.0.is_empty()
        {
            let (mut parts, body) = req.into_parts();
            let mut headers = std::mem::take(&mut parts.headers);
            let ctx = transform_context(route, &parts, principal.as_ref());
            let applied = rules.0.apply(&mut headers, &ctx);
            parts.headers = headers;
            if applied.is_err() {
                return (transform_failed(), principal);
            }
            req = Request::from_parts(parts, body);
        }
        // Path and query rewrites, after every policy: the rewritten path is the one forwarded
        // and logged.
        let mut rewritten = None;
        if let Some(rw) = &route.uri_rewrite {
            let (mut parts, body) = req.into_parts();
            let ctx = transform_context(route, &parts, principal.as_ref());
            match rw.apply(parts.uri.path(), parts.uri.query(), &ctx) {
                Ok(pq) => {
                    rewritten = Some(gateway_core::NormalizedPath::new(pq.path()));
                    parts.uri = Uri::from(pq);
                }
                Err(e) => {
                    let detail = if e.status().is_client_error() {
                        e.to_string()
                    } else {
                        String::from("the request could not be rewritten")
                    };
                    let flags = ResponseFlags::empty();
                    return (
                        reject(e.status(), RejectReason::TransformFailed, flags, &detail),
                        principal,
                    );
                }
            }
            req = Request::from_parts(parts, body);
        }
        if let Some(rules) = &route.request_body
            && (rules.applies(req.headers().get(http::header::CONTENT_TYPE))
                || req
                    .headers()
                    .get_all(http::header::CONTENT_TYPE)
                    .iter()
                    .count()
                    > 1)
        {
            req = match Box::pin(transform_request_body(rules, req)).await {
                Ok(req) => req,
                Err(res) => return (res, principal),
            };
        }
        // A response body to transform must come whole and uncompressed.
        if route.response_body.is_some() {
            let headers = req.headers_mut();
            headers.insert(
                http::header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
            headers.remove(http::header::RANGE);
            headers.remove(http::header::IF_RANGE);
        }
        // A `HEAD` answer has no body to transform (its headers describe the `GET` one).
        let head = req.method() == http::Method::HEAD;
        let upgrade = req
            .extensions()
            .get::<UpgradeRequest>()
            .and_then(|u| upgrade_protocol(&u.0))
            .filter(|p| route.upgrades.contains(p));
        let mut res = match (upgrade, &route.cache) {
            _ if route.aggregate.is_some() => {
                Box::pin(self.aggregate(route, req, principal.as_ref())).await
            }
            (Some(_), _) => Box::pin(self.tunnel(upstream, req)).await,
            (None, Some((cache, shared))) => {
                // Owned, so a `stale-while-revalidate` refresh can run after the answer.
                let (compiled, dispatch) = (self.compiled.clone(), self.dispatch[upstream].clone());
                let origin =
                    move |req| async move { forward(&compiled, &dispatch, upstream, req).await };
                // Answers for an authenticated caller are that caller's: kept apart unless the
                // route says they are the same for everyone.
                // On a split route each side has its own entries: a canary's answer is never
                // served to the stable side.
                let caller = principal.as_ref().filter(|_| !shared).map(|p| p.subject());
                // Each API version has its own entries too (the key may not show it: a
                // stripped path segment, a header, `Accept`).
                let side = match (version, &route.split) {
                    (Some((_, _, name)), _) => Some(format!("v={name}")),
                    (None, Some(_)) => Some(upstream.to_string()),
                    (None, None) => None,
                };
                let res = match (caller, side) {
                    (None, None) => Box::pin(cache.serve(req, origin)).await,
                    (Some(p), None) => Box::pin(cache.serve_scoped(req, p, origin)).await,
                    (caller, Some(side)) => {
                        let scope = format!("{}@{side}", caller.unwrap_or_default());
                        Box::pin(cache.serve_scoped(req, &scope, origin)).await
                    }
                };
                res.map(|body| match body.into_cached() {
                    Ok(stored) => ResponseBody::full(stored),
                    Err(streamed) => ResponseBody::boxed(streamed),
                })
            }
            (None, None) => self.forward(upstream, req).await,
        };
        if let Some(rules) = &route.response_body
            && res.extensions().get::<gateway_core::Rejection>().is_none()
        {
            if !head {
                res = Box::pin(transform_response_body(rules, res)).await;
            } else if let Some(converted) = rules.converted_type()
                && rules.applies(res.headers().get(http::header::CONTENT_TYPE))
            {
                // The headers a `GET` would get: the converted type, and no length or
                // validators of the unconverted body.
                let headers = res.headers_mut();
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static(converted),
                );
                headers.remove(http::header::CONTENT_LENGTH);
                for h in DESCRIBE_THE_UNTRANSFORMED_BODY {
                    headers.remove(h);
                }
            }
        }
        // Whatever the answer (the upstream's, or the gateway's own 503/504), the request was
        // charged, so it carries the rate-limit headers.
        if let Some(admission) = admission {
            admission.apply(&mut res);
        }
        if let Some(rules) = &route.transform
            && !rules.1.is_empty()
        {
            let ctx = gateway_transform::template::Context {
                route: Some(route.id.as_str()),
                ..gateway_transform::template::Context::default()
            }
            .with_principal(principal.as_ref());
            if rules.1.apply(res.headers_mut(), &ctx).is_err() {
                res = transform_failed();
            }
        }
        if let Some(lifecycle) = &route.lifecycle {
            lifecycle.annotate(res.headers_mut());
        }
        if let Some((_, lifecycle, _)) = version {
            if let Some(lifecycle) = lifecycle {
                lifecycle.annotate(res.headers_mut());
            }
            if let Some(vary) = route.versions.as_ref().and_then(|v| v.vary.clone()) {
                res.headers_mut().append(http::header::VARY, vary);
            }
        }
        if let Some(path) = rewritten {
            res.extensions_mut().insert(path);
        }
        (res, principal)
    }

    /// Answers with the route's aggregation: every part's `GET` at once, through its upstream's
    /// own stack (bulkhead, breaker, retries), composed into one JSON object.
    async fn aggregate(
        &self,
        route: &Route,
        req: Request<ClientBody>,
        principal: Option<&gateway_core::Principal>,
    ) -> Response<ResponseBody> {
        let Some(aggregation) = &route.aggregate else {
            return self.forward(route.upstream, req).await;
        };
        if !matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
            let mut res = reject(
                StatusCode::METHOD_NOT_ALLOWED,
                RejectReason::BadRequest,
                ResponseFlags::empty(),
                "this route composes its answer from GET requests: use GET or HEAD",
            );
            res.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return res;
        }
        let (parts, _body) = req.into_parts();
        let ctx = transform_context(route, &parts, principal);
        let mut headers = parts.headers.clone();
        // Each part is a request of its own to another service: no body, no conditions or
        // ranges meant for the composed answer, no client `Host`.
        for h in [
            http::header::HOST,
            http::header::CONTENT_LENGTH,
            http::header::CONTENT_TYPE,
            http::header::CONTENT_ENCODING,
            http::header::TRANSFER_ENCODING,
            http::header::EXPECT,
            http::header::RANGE,
            http::header::IF_RANGE,
            http::header::IF_MATCH,
            http::header::IF_NONE_MATCH,
            http::header::IF_MODIFIED_SINCE,
            http::header::IF_UNMODIFIED_SINCE,
        ] {
            headers.remove(h);
        }
        // Parts are read and re-encoded here: ask for them uncompressed.
        headers.insert(
            http::header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        let composed = aggregation
            .aggregate
            .run(|i, _part| {
                let target = aggregation
                    .calls
                    .get(i)
                    .map(|(up, rw)| (*up, rw.apply("/", None, &ctx)));
                let mut call = Request::new(ClientBody::buffered(Bytes::new()));
                *call.headers_mut() = headers.clone();
                *call.extensions_mut() = parts.extensions.clone();
                async move {
                    let (upstream, path) = match target {
                        Some((up, Ok(path))) => (up, path),
                        Some((_, Err(e))) => return Err(e.to_string()),
                        None => return Err(String::from("no such part")),
                    };
                    *call.uri_mut() = Uri::from(path);
                    Ok::<_, String>(self.forward(upstream, call).await)
                }
            })
            .await;
        composed.into_response().map(ResponseBody::boxed)
    }

    /// Proxies an upgrade request the route allows: the upstream gets it on a connection of its
    /// own; once it answers `101`, bytes are copied both ways (see [`crate::tunnel`]).
    async fn tunnel(
        &self,
        upstream: usize,
        mut req: Request<ClientBody>,
    ) -> Response<ResponseBody> {
        let Some(UpgradeRequest(protocol)) = req.extensions_mut().remove::<UpgradeRequest>() else {
            return self.forward(upstream, req).await;
        };
        let client_side = hyper::upgrade::on(&mut req);
        let hold = req.extensions_mut().remove::<crate::server::TunnelHold>();
        req.headers_mut().insert(UPGRADE, protocol);
        let slot = match &self.compiled.upstreams[upstream].bulkhead {
            Some(bulkhead) => match bulkhead.try_admit() {
                Some(slot) => Some(slot),
                None => return BulkheadLayer::rejection(),
            },
            None => None,
        };
        let client = self.dispatch[upstream].client();
        let mut res = client.upgrade(req.map(ReplayBody::streaming)).await;
        if res.status() != StatusCode::SWITCHING_PROTOCOLS {
            return res;
        }
        let (Some(hold), upstream_side) = (hold, hyper::upgrade::on(&mut res)) else {
            return res;
        };
        let idle = self.compiled.limits.idle_timeout.0;
        // The tunnel keeps its bulkhead slot for as long as it is open.
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::try_join!(client_side, upstream_side) {
                Ok((client, upstream)) => {
                    crate::tunnel::pump(
                        hyper_util::rt::TokioIo::new(client),
                        hyper_util::rt::TokioIo::new(upstream),
                        idle,
                        hold.shutdown.clone(),
                    )
                    .await;
                }
                Err(e) => tracing::debug!(error = %e, "protocol upgrade failed"),
            }
            drop(hold);
        });
        res
    }

    /// Sends an admitted request through its upstream's bulkhead, resilience stack and client.
    async fn forward(&self, upstream: usize, req: Request<ClientBody>) -> Response<ResponseBody> {
        forward(&self.compiled, &self.dispatch[upstream], upstream, req).await
    }

    /// Everything before the upstream call; `Err` is an immediate answer.
    #[allow(clippy::result_large_err)]
    fn prepare(
        &self,
        req: Request<Incoming>,
        conn: ConnectionInfo,
    ) -> Result<(&Route, Request<ClientBody>), Response<ResponseBody>> {
        let c = &*self.compiled;
        let limits = &c.limits;
        let (mut parts, body) = req.into_parts();

        let uri_len = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len())
            + parts.uri.authority().map_or(0, |a| a.as_str().len());
        if uri_len as u64 > limits.max_uri_bytes.0 {
            return Err(reject(
                StatusCode::URI_TOO_LONG,
                RejectReason::UriTooLong,
                ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                "the request target is longer than allowed",
            ));
        }
        if parts.headers.len() > limits.max_headers {
            return Err(reject(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                RejectReason::HeadersTooLarge,
                ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                "too many header fields",
            ));
        }
        let header_bytes: usize = parts
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum();
        if header_bytes as u64 > limits.max_header_bytes.0 {
            return Err(reject(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                RejectReason::HeadersTooLarge,
                ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                "the header fields are larger than allowed",
            ));
        }
        if let Some(len) = parts.headers.get(CONTENT_LENGTH)
            && len
                .to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|n| n > limits.max_body_bytes.0)
        {
            return Err(reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                RejectReason::PayloadTooLarge,
                ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                "the request body is larger than allowed",
            ));
        }

        let raw_path = parts.uri.path();
        let path = match normalize_path(raw_path) {
            Ok(p) => p,
            Err(e) => return Err(bad_path(e)),
        };

        // Hop-by-hop fields go first, so a client cannot name a header that a later layer adds
        // in `Connection` and have it removed on the way out.
        // An upgrade request is remembered before its hop-by-hop fields go: a route that proxies
        // that protocol puts the `Upgrade` field back for the upstream.
        let upgrade = (parts.version == Version::HTTP_11)
            .then(|| upgrade_request(&parts.headers))
            .flatten();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(u) = upgrade {
            parts.extensions.insert(UpgradeRequest(u));
        }
        strip_internal(&mut parts.headers, &c.internal_prefixes);

        let client_ip = c.trusted.resolve(conn.peer.ip(), &parts.headers);

        let host = request_host(&parts.uri, parts.version, &mut parts.headers)?;
        // On a listener that asks for client certificates, a connection is only good for the
        // name its handshake was made for.
        if let Some(crate::tls::RequiredSni(sni)) = parts.extensions.get()
            && !host
                .as_ref()
                .is_some_and(|h| crate::tls::host_matches_sni(h.as_str(), sni))
        {
            return Err(reject(
                StatusCode::MISDIRECTED_REQUEST,
                RejectReason::BadRequest,
                ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                "this connection was made for another host name",
            ));
        }
        let query = parts.uri.query();
        let Some(matched) = c.router.find(
            host.as_ref().map(Authority::host),
            &parts.method,
            &path,
            query,
            &parts.headers,
        ) else {
            return Err(reject(
                StatusCode::NOT_FOUND,
                RejectReason::NoRoute,
                ResponseFlags::NO_ROUTE,
                "no route matches this request",
            ));
        };
        let route = matched.route;
        // The path policy sees (rules, external authorization): the one the route matched.
        parts
            .extensions
            .insert(gateway_core::NormalizedPath::new(path.as_ref()));
        let forward_path = rewrite_path(route, &path, &matched.params);
        if forward_path != raw_path {
            let pq = match query {
                Some(q) => {
                    let mut s = String::with_capacity(forward_path.len() + q.len() + 1);
                    s.push_str(&forward_path);
                    s.push('?');
                    s.push_str(q);
                    s
                }
                None => forward_path.into_owned(),
            };
            match PathAndQuery::from_maybe_shared(Bytes::from(pq)) {
                Ok(pq) => parts.uri = Uri::from(pq),
                Err(_) => {
                    return Err(reject(
                        StatusCode::BAD_REQUEST,
                        RejectReason::BadRequest,
                        ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                        "the rewritten path is not a valid request target",
                    ));
                }
            }
        }
        parts.extensions.insert(route.id.clone());
        if !matched.params.0.is_empty() {
            parts.extensions.insert(matched.params);
        }
        parts.extensions.insert(client_ip);
        parts.extensions.insert(conn);
        let max = usize::try_from(limits.max_body_bytes.0).unwrap_or(usize::MAX);
        Ok((
            route,
            Request::from_parts(parts, crate::body::streamed(body, max)),
        ))
    }
}

fn bad_host(detail: &str) -> Response<ResponseBody> {
    reject(
        StatusCode::BAD_REQUEST,
        RejectReason::BadRequest,
        ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
        detail,
    )
}

/// The one host that decides routing and is forwarded: the request target's authority when it
/// has one (absolute-form, where `Host` is replaced by it as RFC 9112 §3.2.2 says; HTTP/2's
/// `:authority`, where a differing `Host` is refused as RFC 9113 §8.3.1 allows), else `Host`.
/// Several `Host` fields, userinfo, an unparseable host, or no host on HTTP/1.1 are 400.
#[allow(clippy::result_large_err)]
fn request_host(
    uri: &Uri,
    version: Version,
    headers: &mut http::HeaderMap,
) -> Result<Option<Authority>, Response<ResponseBody>> {
    let mut fields = headers.get_all(HOST).iter();
    let field = fields.next().cloned();
    if fields.next().is_some() {
        return Err(bad_host("more than one Host field"));
    }
    let authority = match (uri.authority(), &field) {
        (Some(target), field) => {
            if version == Version::HTTP_2
                && field
                    .as_ref()
                    .is_some_and(|f| f.as_bytes() != target.as_str().as_bytes())
            {
                return Err(bad_host("Host differs from :authority"));
            }
            target.clone()
        }
        (None, Some(field)) => match Authority::try_from(field.as_bytes()) {
            Ok(a) => a,
            Err(_) => return Err(bad_host("invalid Host header")),
        },
        (None, None) if version == Version::HTTP_11 => {
            return Err(bad_host("HTTP/1.1 requests need a Host field"));
        }
        (None, None) => return Ok(None),
    };
    if authority.as_str().contains('@') {
        return Err(bad_host("userinfo is not allowed in the request target"));
    }
    if uri.authority().is_some() && version != Version::HTTP_2 {
        match HeaderValue::from_str(authority.as_str()) {
            Ok(v) => {
                headers.insert(HOST, v);
            }
            Err(_) => return Err(bad_host("invalid request target authority")),
        }
    }
    Ok(Some(authority))
}

fn bad_path(e: PathError) -> Response<ResponseBody> {
    reject(
        StatusCode::BAD_REQUEST,
        RejectReason::BadRequest,
        ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
        e.as_str(),
    )
}

/// Removes client-sent fields whose names start with a reserved prefix.
fn strip_internal(headers: &mut http::HeaderMap, prefixes: &[String]) {
    if prefixes.is_empty() {
        return;
    }
    let mut doomed: Option<Vec<HeaderName>> = None;
    for name in headers.keys() {
        if prefixes
            .iter()
            .any(|p| name.as_str().starts_with(p.as_str()))
        {
            doomed.get_or_insert_with(Vec::new).push(name.clone());
        }
    }
    for name in doomed.into_iter().flatten() {
        headers.remove(&name);
    }
}

/// What a request's header templates can read.
fn transform_context<'a>(
    route: &'a Route,
    parts: &'a http::request::Parts,
    principal: Option<&'a gateway_core::Principal>,
) -> gateway_transform::template::Context<'a> {
    gateway_transform::template::Context {
        client_ip: parts
            .extensions
            .get::<gateway_core::ClientIp>()
            .map(gateway_core::ClientIp::ip),
        route: Some(route.id.as_str()),
        // The id the observer assigned (whatever header carries it).
        request_id: parts
            .extensions
            .get::<gateway_observe::RequestId>()
            .map(gateway_observe::RequestId::as_str),
        method: Some(parts.method.as_str()),
        path: parts
            .extensions
            .get::<gateway_core::NormalizedPath>()
            .map(gateway_core::NormalizedPath::as_str),
        params: parts
            .extensions
            .get::<crate::router::PathParams>()
            .map_or(&[], |p| p.0.as_slice()),
        ..gateway_transform::template::Context::default()
    }
    .with_principal(principal)
}

/// Picks the request's API version (`versions`): its upstream and lifecycle; a retired
/// version or an unknown one is answered here. A path version segment with `strip` is removed
/// from the forwarded path.
#[allow(clippy::result_large_err)]
fn select_version<'r>(
    versions: &'r crate::router::Versions,
    req: &mut Request<ClientBody>,
) -> Result<
    (
        usize,
        Option<&'r gateway_transform::lifecycle::Lifecycle>,
        &'r str,
    ),
    Response<ResponseBody>,
> {
    let selected = versions
        .selector
        .select(req.uri().path(), req.uri().query(), req.headers())
        .map_err(|e| versions.selector.problem(&e).into_response())?;
    let Some((name, upstream, lifecycle)) = versions
        .entries
        .iter()
        .find(|(name, _, _)| *name == selected.version)
    else {
        return Err(reject(
            StatusCode::INTERNAL_SERVER_ERROR,
            RejectReason::BadRequest,
            ResponseFlags::empty(),
            "the API version could not be selected",
        ));
    };
    if let Some(gone) = lifecycle
        .as_ref()
        .and_then(|l| l.refusal(std::time::SystemTime::now()))
    {
        return Err(gone);
    }
    if selected.strip_path_prefix.is_some() {
        let path = selected.forward_path(req.uri().path());
        let pq = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        match PathAndQuery::from_maybe_shared(Bytes::from(pq)) {
            Ok(pq) => *req.uri_mut() = Uri::from(pq),
            Err(_) => {
                return Err(reject(
                    StatusCode::BAD_REQUEST,
                    RejectReason::BadRequest,
                    ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                    "the path without its version is not a valid request target",
                ));
            }
        }
    }
    Ok((*upstream, lifecycle.as_ref(), name.as_str()))
}

/// Reads, edits or converts a request body (`transform.request_body`).
async fn transform_request_body(
    rules: &crate::body::BodyRules,
    req: Request<ClientBody>,
) -> Result<Request<ClientBody>, Response<ResponseBody>> {
    let (mut parts, body) = req.into_parts();
    if crate::body::single_content_type(&parts.headers).is_err() {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            RejectReason::BadRequest,
            ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
            "several Content-Type fields",
        ));
    }
    if crate::body::is_coded(&parts.headers) {
        return Err(reject(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RejectReason::TransformFailed,
            ResponseFlags::empty(),
            "coded (compressed) request bodies are not accepted on this route",
        ));
    }
    let bytes = match crate::body::read_whole(body, rules.max_bytes).await {
        Ok(bytes) => bytes,
        Err(crate::body::ReadError::TooLarge) => {
            return Err(reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                RejectReason::PayloadTooLarge,
                ResponseFlags::empty(),
                &format!("the body is larger than {} bytes", rules.max_bytes),
            ));
        }
        Err(crate::body::ReadError::Failed) => {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                RejectReason::BadRequest,
                ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                "the body could not be read",
            ));
        }
    };
    // No body (a GET with a JSON type, say): nothing to transform.
    if bytes.is_empty() {
        return Ok(Request::from_parts(parts, ClientBody::buffered(bytes)));
    }
    match rules.apply(&bytes) {
        Ok((body, content_type)) => {
            set_body_headers(&mut parts.headers, body.len(), content_type);
            // Nothing to wait for: the body is already here.
            parts.headers.remove(http::header::EXPECT);
            Ok(Request::from_parts(parts, ClientBody::buffered(body)))
        }
        Err(e) => Err(reject(
            StatusCode::BAD_REQUEST,
            RejectReason::TransformFailed,
            ResponseFlags::empty(),
            &format!("the body could not be transformed: {}", e.detail()),
        )),
    }
}

/// Reads, edits or converts an upstream's answer (`transform.response_body`); one that cannot
/// be is `502` (a configured edit is never skipped).
async fn transform_response_body(
    rules: &crate::body::BodyRules,
    res: Response<ResponseBody>,
) -> Response<ResponseBody> {
    let status = res.status();
    let failed = |detail: &str| {
        reject(
            StatusCode::BAD_GATEWAY,
            RejectReason::TransformFailed,
            ResponseFlags::empty(),
            detail,
        )
    };
    // Nothing to transform: no body.
    if matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
        || res
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|l| l == "0")
    {
        return res;
    }
    // `Range` was not forwarded: a partial answer cannot be transformed, nor passed unedited.
    if status == StatusCode::PARTIAL_CONTENT {
        return failed("the upstream answered part of a body, which cannot be transformed");
    }
    if !rules.applies(res.headers().get(http::header::CONTENT_TYPE)) {
        // Edits (a removed secret, say) are never skipped on a successful answer because the
        // upstream chose another type (`Accept: application/xml`); errors pass as they are.
        if status.is_success() && !rules.edits.is_empty() {
            return failed("the upstream answered a type this route cannot edit");
        }
        return res;
    }
    let (mut parts, body) = res.into_parts();
    if parts
        .headers
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|e| e != "identity")
    {
        return failed("the upstream's answer is compressed and cannot be transformed");
    }
    let bytes = match crate::body::read_whole(body, rules.max_bytes).await {
        Ok(bytes) => bytes,
        Err(crate::body::ReadError::TooLarge) => {
            return failed("the upstream's answer is too large to transform");
        }
        Err(crate::body::ReadError::Failed) => {
            return failed("the upstream's answer could not be read");
        }
    };
    if bytes.is_empty() {
        return Response::from_parts(parts, ResponseBody::full(bytes));
    }
    match rules.apply(&bytes) {
        Ok((body, content_type)) => {
            set_body_headers(&mut parts.headers, body.len(), content_type);
            // The representation changed: the upstream's validators and digests no longer
            // describe it, and ranges of it are not offered.
            for h in DESCRIBE_THE_UNTRANSFORMED_BODY {
                parts.headers.remove(h);
            }
            Response::from_parts(parts, ResponseBody::full(body))
        }
        // An error answer that cannot be transformed stays the upstream's error.
        Err(_) if !status.is_success() => Response::from_parts(parts, ResponseBody::full(bytes)),
        Err(_) => failed("the upstream's answer could not be transformed"),
    }
}

/// Response fields that describe an upstream's body and are wrong for a transformed one: its
/// validators, digests, and the ranges it offered.
const DESCRIBE_THE_UNTRANSFORMED_BODY: [&str; 6] = [
    "etag",
    "last-modified",
    "accept-ranges",
    "content-md5",
    "content-digest",
    "repr-digest",
];

/// After a body was replaced: its length, its type, no transfer coding.
fn set_body_headers(headers: &mut http::HeaderMap, len: usize, content_type: Option<&'static str>) {
    headers.remove(http::header::TRANSFER_ENCODING);
    headers.remove(http::header::CONTENT_ENCODING);
    headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(ct) = content_type {
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
}

/// A transform that would have sent a split header: the request fails instead.
fn transform_failed() -> Response<ResponseBody> {
    reject(
        StatusCode::INTERNAL_SERVER_ERROR,
        RejectReason::TransformFailed,
        ResponseFlags::empty(),
        "a configured header transform could not be applied safely",
    )
}

/// Sends an admitted request through its upstream's bulkhead, resilience stack and client.
async fn forward(
    compiled: &Compiled,
    dispatch: &Dispatch,
    upstream: usize,
    req: Request<ClientBody>,
) -> Response<ResponseBody> {
    // The bulkhead comes first: shed requests never count against the breaker.
    let _slot = match &compiled.upstreams[upstream].bulkhead {
        Some(bulkhead) => match bulkhead.try_admit() {
            Some(slot) => Some(slot),
            None => return BulkheadLayer::rejection(),
        },
        None => None,
    };
    // Clones are a few reference-count increments; breaker state and retry budget are
    // shared by all of them.
    let call = async {
        match dispatch {
            Dispatch::Bare(client) => client.send(req.map(ReplayBody::streaming)).await,
            Dispatch::Stacked(stack, _) => Box::pin(stack.clone().oneshot(req)).await,
        }
    };
    let sent = match compiled.upstreams[upstream].deadline {
        None => call.await,
        Some(deadline) => match tokio::time::timeout(deadline, call).await {
            Ok(sent) => sent,
            Err(_) => {
                return reject(
                    StatusCode::GATEWAY_TIMEOUT,
                    RejectReason::UpstreamTimeout,
                    ResponseFlags::UPSTREAM_TIMEOUT,
                    "the upstream did not answer within the request deadline",
                );
            }
        },
    };
    let mut res = match sent {
        Ok(res) => res,
        Err(never) => match never {},
    };
    // The retry count, for logs: on the upstream call the client finally got.
    if let Some(gateway_breaker::RetryCount(n)) = res.extensions().get().copied()
        && let Some(call) = res.extensions_mut().get_mut::<gateway_core::UpstreamCall>()
    {
        call.retries = n;
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_headers_are_stripped_by_prefix() {
        let mut h = http::HeaderMap::new();
        h.insert("x-gateway-consumer", "admin".parse().unwrap());
        h.insert("x-gateway-internal-auth", "1".parse().unwrap());
        h.insert("x-gatewayish", "kept".parse().unwrap());
        h.insert("accept", "kept".parse().unwrap());
        strip_internal(&mut h, &["x-gateway-".to_owned()]);
        assert_eq!(h.len(), 2);
        assert!(h.contains_key("x-gatewayish"));
    }
}

/// hyper moves each request's future into its connection state: every kilobyte of future is
/// copied per request. Before the optional stages were boxed, the request future was 9.6 KiB
/// and `memcpy` was 23% of the gateway's instructions on a bare route (callgrind).
#[cfg(test)]
mod future_size {
    fn size<A, Fut: std::future::Future>(_: impl Fn(A) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn the_request_future_stays_small_enough_to_move_cheaply() {
        let yaml = "listeners:\n  - bind: 127.0.0.1:0\nupstreams:\n  up:\n    endpoints: [\"127.0.0.1:1\"]\nroutes:\n  - name: all\n    upstream: up\n";
        let config = crate::Config::parse(yaml, "t.yaml").unwrap();
        let compiled = crate::Compiled::new(&config, "t.yaml").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _runtime = rt.enter();
        let p = super::Pipeline::new(compiled);
        let conn = gateway_core::ConnectionInfo {
            peer: "127.0.0.1:1".parse().unwrap(),
            local: None,
            tls: false,
        };
        let handle = size(|r: http::Request<hyper::body::Incoming>| p.handle(r, conn));
        let forward = size(|r: http::Request<super::ClientBody>| p.forward(0, r));
        assert!(handle <= 4096, "the request future grew to {handle} bytes");
        assert!(forward <= 2048, "the upstream call grew to {forward} bytes");
    }
}
