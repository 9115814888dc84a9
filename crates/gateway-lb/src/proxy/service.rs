use std::{
    fmt,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use crate::{
    balance::{Balance, BalanceRng, Balancer, InFlight, SeqRng, StickyCookie, stable_hash},
    health::{CheckKind, HealthCheck, HealthTasks, OutlierDetection, Streak},
};

use gateway_breaker::{CallPermit, CircuitBreakerHandle};
use gateway_core::{
    ClientIp, ConnectionInfo, DefaultClassifier, Problem, RejectReason, ResponseFlags,
};
use http::{
    HeaderValue, Request, Response, StatusCode, Uri, Version,
    header::{CONNECTION, HOST, UPGRADE},
    uri::{PathAndQuery, Scheme},
};
use http_body::Body;
use tower_service::Service;

use super::{
    Endpoint, ResponseBody, ResponseFuture,
    headers::{Forwarding, Via, apply_forwarding, strip_hop_by_hop},
    pool::{Pool, PoolConfig, ProxyError},
    tracked::TrackedBody,
};

/// What `Host` the upstream sees.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostHeader {
    /// The client's host (the default): the request target's authority when it has one
    /// (absolute-form, HTTP/2 `:authority`), else its `Host`; so virtual hosting behind the
    /// gateway keeps working. Over HTTP/2 to the upstream it is sent as `:authority`.
    #[default]
    Preserve,
    /// The endpoint's `host:port`.
    Endpoint,
    /// A fixed value.
    Fixed(HeaderValue),
}

/// The protocol spoken to the upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive (the default).
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (h2c), multiplexed on one connection.
    Http2,
}

/// Builder for [`Upstream`].
#[derive(Clone, Debug)]
pub struct UpstreamBuilder {
    endpoints: Vec<Endpoint>,
    endpoint_breakers: Option<Arc<[CircuitBreakerHandle]>>,
    endpoint_breaker_config: Option<gateway_breaker::CircuitBreakerConfig>,
    endpoint_classifier: DefaultClassifier,
    connect_timeout: Duration,
    request_timeout: Option<Duration>,
    body_timeout: Option<Duration>,
    pool_idle_timeout: Duration,
    pool_max_idle_per_host: usize,
    host: HostHeader,
    protocol: Protocol,
    via: Option<String>,
    x_forwarded: bool,
    forwarded: bool,
    #[cfg(feature = "tls")]
    tls: Option<super::tls::UpstreamTls>,
    balancing: Balancing,
}

/// How endpoints are chosen, and the state that choice reads: made once per builder and
/// shared by every `Upstream` built from it (and its clones), so health and load are seen by
/// every worker and route.
#[derive(Clone, Debug)]
struct Balancing {
    balance: Balance,
    weights: Option<Vec<u32>>,
    panic_threshold: f64,
    slow_start: Option<Duration>,
    outlier: Option<OutlierDetection>,
    health: Option<HealthCheck>,
    rng: Option<Arc<dyn BalanceRng>>,
    sticky: Option<StickyCookie>,
    made: Arc<OnceLock<Arc<Balancer>>>,
}

impl Default for Balancing {
    fn default() -> Self {
        Self {
            balance: Balance::RoundRobin,
            weights: None,
            panic_threshold: 0.5,
            slow_start: None,
            outlier: None,
            health: None,
            rng: None,
            sticky: None,
            made: Arc::default(),
        }
    }
}

impl UpstreamBuilder {
    fn balancing(mut self, change: impl FnOnce(&mut Balancing)) -> Self {
        change(&mut self.balancing);
        // A changed configuration is a new balancer (set these before cloning the builder).
        self.balancing.made = Arc::default();
        self
    }

    /// How an endpoint is picked (default round robin).
    #[must_use]
    pub fn balance(self, balance: Balance) -> Self {
        self.balancing(|b| b.balance = balance)
    }

    /// Each endpoint's weight, in endpoint order (default 1 each).
    #[must_use]
    pub fn weights(self, weights: Vec<u32>) -> Self {
        self.balancing(|b| b.weights = Some(weights))
    }

    /// Below this share of available endpoints, balance over all of them (default 0.5; 0: never,
    /// answer `503` when none is available).
    #[must_use]
    pub fn panic_threshold(self, share: f64) -> Self {
        self.balancing(|b| b.panic_threshold = share)
    }

    /// Ramp returning endpoints up over this long (default none).
    #[must_use]
    pub fn slow_start(self, window: Option<Duration>) -> Self {
        self.balancing(|b| b.slow_start = window)
    }

    /// Passive outlier detection (default off).
    #[must_use]
    pub fn outlier_detection(self, outlier: Option<OutlierDetection>) -> Self {
        self.balancing(|b| b.outlier = outlier)
    }

    /// Active health checks, run by [`Upstream::spawn_health_checks`] (default none).
    #[must_use]
    pub fn health_check(self, check: Option<HealthCheck>) -> Self {
        self.balancing(|b| b.health = check)
    }

    /// Sticky sessions by cookie (default off).
    #[must_use]
    pub fn sticky_cookie(mut self, sticky: Option<StickyCookie>) -> Self {
        self.balancing.sticky = sticky;
        self
    }

    /// The random numbers balancing uses (default [`SeqRng::from_clock`]); for tests.
    #[must_use]
    pub fn rng(self, rng: Arc<dyn BalanceRng>) -> Self {
        self.balancing(|b| b.rng = Some(rng))
    }

    /// The balancer every upstream built from this builder (or its clones) shares: endpoint
    /// health, ejections and load.
    pub fn balancer(&self) -> Arc<Balancer> {
        let b = &self.balancing;
        b.made
            .get_or_init(|| {
                let n = self.endpoints.len();
                let weights = b
                    .weights
                    .clone()
                    .filter(|w| w.len() == n)
                    .unwrap_or_else(|| vec![1; n]);
                let names: Vec<String> = self.endpoints.iter().map(ToString::to_string).collect();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let rng = b
                    .rng
                    .clone()
                    .unwrap_or_else(|| Arc::new(SeqRng::from_clock()));
                Arc::new(
                    Balancer::with_names(b.balance.clone(), &weights, &refs, rng)
                        .panic_threshold(b.panic_threshold)
                        .slow_start(b.slow_start)
                        .outlier(b.outlier.clone()),
                )
            })
            .clone()
    }

    /// How to speak TLS to `https://` endpoints (feature `tls`; default: the system's roots,
    /// each endpoint's host as the name).
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn tls(mut self, tls: super::tls::UpstreamTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Timeout for establishing a TCP connection (default 1 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Timeout from handing the request to the upstream (connecting, or waiting for a pooled
    /// connection, and sending the body are included) until the response headers arrive (default
    /// 15 s; `None` disables it). The response body is not covered. When it expires while the
    /// client is still sending its request body, the answer is `408` (the client's fault, not
    /// recorded against an endpoint breaker) instead of `504`.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Longest pause between two pieces of a response body (default none). When the upstream
    /// stalls longer, the stream to the client is aborted instead of hanging; the response
    /// headers are covered by [`request_timeout`](Self::request_timeout).
    #[must_use]
    pub fn body_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// Gives every endpoint a circuit breaker of its own (shared by every `Upstream` built from
    /// this builder and their clones): an endpoint whose breaker is open is skipped by the
    /// balancer, and when every endpoint is open the answer is `503` with flag `UH`. Outcomes are
    /// classified by `classifier`.
    #[must_use]
    pub fn endpoint_breakers(
        mut self,
        config: &gateway_breaker::CircuitBreakerConfig,
        classifier: DefaultClassifier,
    ) -> Self {
        self.endpoint_classifier = classifier;
        self.endpoint_breaker_config = Some(config.clone());
        self.endpoint_breakers = Some(
            self.endpoints
                .iter()
                .map(|_| CircuitBreakerHandle::new(config.clone()))
                .collect(),
        );
        self
    }

    /// A builder like this one over another endpoint list (with weights), for a discovery
    /// change: what was learnt about endpoints both lists have (health when actively checked,
    /// ejections, `Retry-After` back-off, slow start, latency, per-endpoint breakers) carries
    /// over; new endpoints start fresh. Upstreams built from this builder keep their own
    /// balancer, so requests in flight on them finish where they are.
    ///
    /// ```
    /// use gateway_lb::Upstream;
    ///
    /// let a = "10.0.0.1:80".parse().unwrap();
    /// let b = "10.0.0.2:80".parse().unwrap();
    /// let old = Upstream::builder([a]);
    /// let new = old.with_endpoints(&[(b, 3)]);
    /// assert_eq!(new.balancer().status()[0].weight, 3);
    /// assert_eq!(old.balancer().status().len(), 1);
    /// ```
    #[must_use]
    pub fn with_endpoints(&self, endpoints: &[(Endpoint, u32)]) -> Self {
        let mut next = self.clone();
        next.endpoints = endpoints.iter().map(|(e, _)| e.clone()).collect();
        let pairs: Vec<(usize, usize)> = next
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, e)| self.endpoints.iter().position(|o| o == e).map(|j| (i, j)))
            .collect();
        if let (Some(old), Some(config)) = (&self.endpoint_breakers, &self.endpoint_breaker_config)
        {
            next.endpoint_breakers = Some({
                next.endpoints
                    .iter()
                    .map(|e| {
                        self.endpoints
                            .iter()
                            .position(|o| o == e)
                            .and_then(|j| old.get(j).cloned())
                            .unwrap_or_else(|| CircuitBreakerHandle::new(config.clone()))
                    })
                    .collect()
            });
        }
        let next = next.weights(endpoints.iter().map(|(_, w)| (*w).max(1)).collect());
        let with_health = self.balancing.health.is_some();
        next.balancer()
            .inherit(&self.balancer(), &pairs, with_health);
        next
    }

    /// The per-endpoint breakers set by [`endpoint_breakers`](Self::endpoint_breakers).
    pub fn endpoint_breaker_handles(&self) -> Option<&[CircuitBreakerHandle]> {
        self.endpoint_breakers.as_deref()
    }

    /// How long an idle pooled connection is kept (default 90 s).
    #[must_use]
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// How many idle connections are kept per endpoint (default 256).
    #[must_use]
    pub fn pool_max_idle_per_endpoint(mut self, max: usize) -> Self {
        self.pool_max_idle_per_host = max;
        self
    }

    /// What `Host` the upstream sees (default: the client's).
    #[must_use]
    pub fn host(mut self, host: HostHeader) -> Self {
        self.host = host;
        self
    }

    /// The protocol spoken to the upstream (default HTTP/1.1).
    #[must_use]
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The pseudonym in the `Via` header this proxy adds (default `gateway`; `None` adds none).
    #[must_use]
    pub fn via(mut self, pseudonym: Option<&str>) -> Self {
        self.via = pseudonym.map(str::to_owned);
        self
    }

    /// Whether `X-Forwarded-For/-Proto/-Host` are set (default `true`).
    #[must_use]
    pub fn x_forwarded(mut self, yes: bool) -> Self {
        self.x_forwarded = yes;
        self
    }

    /// Whether the RFC 7239 `Forwarded` header is set (default `true`).
    #[must_use]
    pub fn forwarded(mut self, yes: bool) -> Self {
        self.forwarded = yes;
        self
    }

    /// Builds the service for request bodies of type `B`.
    ///
    /// Call once per runtime (per core): the connection pool belongs to the `Upstream` and its
    /// clones, so a per-core `Upstream` keeps connections on the core that uses them.
    pub fn build<B>(self) -> Upstream<B>
    where
        B: Body + Send + 'static + Unpin,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        #[cfg(feature = "tls")]
        let tls = self.endpoints.iter().any(Endpoint::is_tls).then(|| {
            let tls = self
                .tls
                .clone()
                .unwrap_or_else(super::tls::UpstreamTls::system_roots);
            let alpn: &[u8] = match self.protocol {
                Protocol::Http1 => b"http/1.1",
                Protocol::Http2 => b"h2",
            };
            (tls.client_config(alpn), tls)
        });
        let balancer = self.balancer();
        let health = self.balancing.health.clone();
        let sticky = self
            .balancing
            .sticky
            .as_ref()
            .map(|s| Sticky::new(s, &self.endpoints));
        let pool = Pool::new(
            self.endpoints
                .iter()
                .map(|e| (e.authority().clone(), e.is_tls())),
            PoolConfig {
                #[cfg(feature = "tls")]
                tls,
                connect_timeout: self.connect_timeout,
                idle_timeout: self.pool_idle_timeout,
                max_idle: self.pool_max_idle_per_host,
                protocol: self.protocol,
            },
        );
        Upstream {
            shared: Arc::new(Shared {
                breakers: self.endpoint_breakers.clone(),
                classifier: self.endpoint_classifier,
                host_values: self
                    .endpoints
                    .iter()
                    .map(|e| {
                        HeaderValue::from_str(e.authority().as_str())
                            .expect("an authority is a valid header value")
                    })
                    .collect(),
                endpoint_names: self
                    .endpoints
                    .iter()
                    .map(|e| Arc::from(e.to_string()))
                    .collect(),
                endpoints: self.endpoints.into_boxed_slice(),
                balancer,
                health,
                sticky,
                request_timeout: self.request_timeout,
                body_timeout: self.body_timeout,
                host: self.host,
                protocol: self.protocol,
                via: self.via.as_deref().and_then(Via::new),
                x_forwarded: self.x_forwarded,
                forwarded: self.forwarded,
            }),
            pool: Arc::new(pool),
        }
    }
}

struct Shared {
    endpoints: Box<[Endpoint]>,
    /// Each endpoint as shown in `UpstreamCall`, made once.
    endpoint_names: Box<[Arc<str>]>,
    /// One breaker per endpoint, when configured, and how their outcomes are classified.
    breakers: Option<Arc<[CircuitBreakerHandle]>>,
    classifier: DefaultClassifier,
    /// Each endpoint's `host:port` as a `Host` value, made once.
    host_values: Box<[HeaderValue]>,
    balancer: Arc<Balancer>,
    health: Option<HealthCheck>,
    sticky: Option<Sticky>,
    request_timeout: Option<Duration>,
    body_timeout: Option<Duration>,
    host: HostHeader,
    protocol: Protocol,
    via: Option<Via>,
    x_forwarded: bool,
    forwarded: bool,
}

/// A tower service that forwards requests to one of a set of endpoints.
///
/// - Endpoints are picked by the builder's [`Balance`] (round robin by default) among available
///   ones (see [`crate::balance`] and [`crate::health`]). With none, the answer is `503` with
///   flag `UH`, at once.
/// - Connections are pooled and kept alive; request and response bodies stream both ways.
/// - The request's path and query are forwarded as they are: normalize and route before this
///   service.
/// - Errors become responses with an RFC 9457 body and a [`Rejection`](gateway_core::Rejection):
///   `502` (`UF` connect failure, `UPE` protocol error, `UC` connection reset), `504` (`UT`
///   timeout), `413` when a length-limited request body (`http_body_util::Limited`) overflows.
///
/// Always ready (`poll_ready` never waits): the pool opens connections on demand. `Clone` shares
/// the endpoints, the round-robin position and the connection pool.
pub struct Upstream<B> {
    shared: Arc<Shared>,
    pool: Arc<Pool<TrackedBody<B>>>,
}

impl<B> Clone for Upstream<B> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            pool: self.pool.clone(),
        }
    }
}

impl<B> fmt::Debug for Upstream<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("endpoints", &self.shared.endpoints)
            .field("protocol", &self.shared.protocol)
            .finish_non_exhaustive()
    }
}

impl Upstream<()> {
    /// A builder for an upstream over `endpoints`.
    pub fn builder(endpoints: impl IntoIterator<Item = Endpoint>) -> UpstreamBuilder {
        UpstreamBuilder {
            endpoints: endpoints.into_iter().collect(),
            endpoint_breakers: None,
            endpoint_breaker_config: None,
            endpoint_classifier: DefaultClassifier::new(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Some(Duration::from_secs(15)),
            body_timeout: None,
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
            host: HostHeader::Preserve,
            protocol: Protocol::Http1,
            via: Some("gateway".to_owned()),
            x_forwarded: true,
            forwarded: true,
            #[cfg(feature = "tls")]
            tls: None,
            balancing: Balancing::default(),
        }
    }
}

impl<B> Upstream<B> {
    /// The endpoints.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.shared.endpoints
    }

    /// The endpoints' circuit breakers, when configured (in endpoint order).
    pub fn endpoint_breakers(&self) -> Option<&[CircuitBreakerHandle]> {
        self.shared.breakers.as_deref()
    }

    /// The balancer (endpoint health, ejections, load), shared with every clone and every
    /// upstream built from the same builder.
    pub fn balancer(&self) -> &Arc<Balancer> {
        &self.shared.balancer
    }

    /// The endpoint for a request, skipping endpoints whose breaker refuses the call.
    fn pick(&self, parts: &http::request::Parts) -> Option<(usize, Option<CallPermit>)> {
        let balancer = &self.shared.balancer;
        if let Some(sticky) = &self.shared.sticky
            && let Some(i) = sticky.endpoint(parts)
            && balancer.usable(i)
        {
            match &self.shared.breakers {
                None => return Some((i, None)),
                Some(breakers) => {
                    if let Ok(permit) = breakers[i].try_acquire() {
                        return Some((i, Some(permit)));
                    }
                }
            }
        }
        let key = match balancer.algorithm() {
            Balance::Hash(on) => on.key(&parts.uri, &parts.headers, &parts.extensions),
            _ => None,
        };
        let Some(breakers) = &self.shared.breakers else {
            return balancer.pick(key, &[]).map(|i| (i, None));
        };
        let mut refused = Vec::new();
        while let Some(i) = balancer.pick(key, &refused) {
            if let Ok(permit) = breakers[i].try_acquire() {
                return Some((i, Some(permit)));
            }
            refused.push(i);
        }
        None
    }

    /// Starts this upstream's active health checks and success-rate sweeps, when configured;
    /// they stop when the returned handle is dropped. Call once per builder (one set of checks
    /// serves every worker's upstream, through the shared balancer).
    pub fn spawn_health_checks(&self) -> Option<HealthTasks>
    where
        B: Body + Send + 'static + Unpin,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let balancer = self.shared.balancer.clone();
        let mut tasks = Vec::new();
        if let Some(check) = self.shared.health.clone() {
            for idx in 0..self.shared.endpoints.len() {
                let (pool, balancer, check) = (self.pool.clone(), balancer.clone(), check.clone());
                let host = self.shared.host_values[idx].clone();
                tasks.push(tokio::spawn(async move {
                    let mut streak = Streak::default();
                    let rng = SeqRng::from_clock();
                    loop {
                        let passed = tokio::time::timeout(
                            check.timeout,
                            probe(&pool, idx, &check.kind, &host),
                        )
                        .await
                        .unwrap_or(false);
                        if let Some(healthy) = streak.add(passed, &check) {
                            balancer.checked(idx, healthy);
                        }
                        let wait = crate::health::jittered(
                            check.interval,
                            check.jitter,
                            crate::balance::BalanceRng::next_u64(&rng),
                        );
                        tokio::time::sleep(wait).await;
                    }
                }));
            }
        }
        if let Some(outlier) = balancer.outlier.clone()
            && let Some(rule) = outlier.success_rate.clone()
        {
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(rule.interval);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    balancer.sweep_success_rate(&rule, &outlier);
                }
            }));
        }
        (!tasks.is_empty()).then(|| HealthTasks::new(tasks))
    }
}

impl<B> Service<Request<B>> for Upstream<B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<ResponseBody>;
    type Error = std::convert::Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.send(req)
    }
}

impl<B> Upstream<B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Forwards `req`; the same as [`Service::call`] but through a shared reference, so one
    /// `Upstream` can serve many connections without cloning per request.
    pub fn send(&self, req: Request<B>) -> ResponseFuture {
        let (mut parts, body) = req.into_parts();
        let Some((idx, permit)) = self.pick(&parts) else {
            return ResponseFuture::ready(
                Problem::new(StatusCode::SERVICE_UNAVAILABLE)
                    .detail("no upstream endpoint is available")
                    .reason(
                        RejectReason::NoHealthyUpstream,
                        ResponseFlags::NO_HEALTHY_UPSTREAM,
                    )
                    .into_response(),
            );
        };
        // A client not (or no longer) pinned to this endpoint gets the cookie that pins it.
        let set_cookie = self
            .shared
            .sticky
            .as_ref()
            .filter(|s| s.endpoint(&parts) != Some(idx))
            .map(|s| s.set_cookie[idx].clone());
        self.prepare(idx, &mut parts, self.shared.protocol);
        let span = client_span(&mut parts, &self.shared.endpoints[idx]);
        let load = InFlight::start(&self.shared.balancer, idx);
        let shared = &*self.shared;
        let (body, uploaded) = TrackedBody::new(body);
        let fut = self
            .pool
            .clone()
            .send(idx, Request::from_parts(parts, body));
        ResponseFuture::upstream(
            Box::pin(fut),
            shared.request_timeout,
            shared.body_timeout,
            (permit.map(|p| (p, shared.classifier)), load, set_cookie),
            uploaded,
            span,
            shared.endpoint_names[idx].clone(),
        )
    }

    /// Forwards an HTTP/1.1 `Upgrade` request (a WebSocket handshake, say) on a new connection of
    /// its own, keeping its `Upgrade` field. After `101 Switching Protocols` (with its
    /// `Connection: upgrade` and `Upgrade` fields), `hyper::upgrade::on(&mut res)` yields the
    /// upstream side of the tunnel; any other status is an ordinary response: the upstream's
    /// refusal, or the gateway's own problem (no endpoint, connect failure or timeout, an HTTP/2
    /// upstream, no answer within the request timeout). Retries, hedging and the upstream's
    /// breaker do not apply; per-endpoint breakers still steer the choice of endpoint.
    pub async fn upgrade(&self, req: Request<B>) -> Response<ResponseBody> {
        let (mut parts, body) = req.into_parts();
        let Some((idx, _permit)) = self.pick(&parts) else {
            return Problem::new(StatusCode::SERVICE_UNAVAILABLE)
                .detail("no upstream endpoint is available")
                .reason(
                    RejectReason::NoHealthyUpstream,
                    ResponseFlags::NO_HEALTHY_UPSTREAM,
                )
                .into_response();
        };
        if self.shared.protocol != Protocol::Http1 {
            return Problem::new(StatusCode::BAD_GATEWAY)
                .detail("protocol upgrades need an HTTP/1.1 upstream")
                .reason(
                    RejectReason::UpstreamProtocol,
                    ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
                )
                .into_response();
        }
        let upgrade = parts.headers.get(UPGRADE).cloned();
        self.prepare(idx, &mut parts, Protocol::Http1);
        if let Some(upgrade) = upgrade {
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(UPGRADE, upgrade);
        }
        let (body, _uploaded) = TrackedBody::new(body);
        let sent = self
            .pool
            .send_upgrade(idx, Request::from_parts(parts, body));
        let res = match self.shared.request_timeout {
            Some(t) => match tokio::time::timeout(t, sent).await {
                Ok(res) => res,
                Err(_) => {
                    return Problem::new(StatusCode::GATEWAY_TIMEOUT)
                        .detail("the upstream did not answer in time")
                        .reason(
                            RejectReason::UpstreamTimeout,
                            ResponseFlags::UPSTREAM_TIMEOUT,
                        )
                        .into_response();
                }
            },
            None => sent.await,
        };
        let res = match res {
            Ok(res) => res,
            Err(e) => return error_response(&e),
        };
        let switched = res.status() == StatusCode::SWITCHING_PROTOCOLS;
        let (mut parts, body) = res.into_parts();
        let upgrade = parts.headers.get(UPGRADE).cloned();
        strip_hop_by_hop(&mut parts.headers);
        if switched && let Some(upgrade) = upgrade {
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(UPGRADE, upgrade);
        }
        Response::from_parts(
            parts,
            ResponseBody::upstream(body, None, self.shared.body_timeout),
        )
    }

    /// Rewrites the request head for endpoint `idx`: hop-by-hop fields removed, forwarding
    /// headers, the `Host` policy, and the target in the form `protocol` needs.
    fn prepare(&self, idx: usize, parts: &mut http::request::Parts, protocol: Protocol) {
        let shared = &*self.shared;
        let endpoint = &shared.endpoints[idx];

        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        // The request target's authority wins over `Host` (RFC 9112 §3.2.2 for absolute-form,
        // `:authority` for HTTP/2), so the host a router saw is the host forwarded.
        let client_host = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .or_else(|| parts.headers.get(HOST).cloned());
        strip_hop_by_hop(&mut parts.headers);
        let conn = parts.extensions.get::<ConnectionInfo>();
        let client_ip = parts.extensions.get::<ClientIp>();
        let fwd = Forwarding {
            peer: conn.map(|c| c.peer.ip().to_canonical()),
            believed: client_ip.and_then(ClientIp::believed_header),
            tls: conn.is_some_and(|c| c.tls),
            host: client_host.as_ref(),
            version: parts.version,
        };
        apply_forwarding(
            &mut parts.headers,
            &fwd,
            shared.via.as_ref(),
            shared.x_forwarded,
            shared.forwarded,
        );
        let host = match &shared.host {
            HostHeader::Preserve => client_host.unwrap_or_else(|| shared.host_values[idx].clone()),
            HostHeader::Endpoint => shared.host_values[idx].clone(),
            HostHeader::Fixed(v) => v.clone(),
        };
        match protocol {
            Protocol::Http1 => {
                // Origin-form: the connection already goes to the endpoint.
                parts.uri = Uri::from(path_and_query);
                parts.version = Version::HTTP_11;
                parts.headers.insert(HOST, host);
            }
            Protocol::Http2 => {
                // The chosen host travels as `:authority`; a `Host` field too could conflict.
                let authority = http::uri::Authority::try_from(host.as_bytes())
                    .unwrap_or_else(|_| endpoint.authority().clone());
                let mut uri = http::uri::Parts::default();
                uri.scheme = Some(Scheme::HTTP);
                uri.authority = Some(authority);
                uri.path_and_query = Some(path_and_query);
                parts.uri = Uri::from_parts(uri).expect("scheme, authority and path are valid");
                parts.version = Version::HTTP_2;
                parts.headers.remove(HOST);
            }
        }
    }
}

/// With a trace on the request: a client span for this attempt, whose context goes upstream in
/// `traceparent` (an unsampled trace still propagates its context, without a span).
fn client_span(
    parts: &mut http::request::Parts,
    endpoint: &Endpoint,
) -> Option<super::future::ClientSpan> {
    let trace = parts.extensions.get::<gateway_core::trace::ActiveTrace>()?;
    let context = if trace.context.sampled {
        trace.context.child(gateway_core::trace::new_span_id())
    } else {
        trace.context
    };
    if let Ok(v) = HeaderValue::from_str(&context.to_traceparent()) {
        parts.headers.insert("traceparent", v);
    }
    if trace.b3 {
        for h in [
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-parentspanid",
            "x-b3-sampled",
            "x-b3-flags",
        ] {
            parts.headers.remove(h);
        }
        if let Ok(v) = HeaderValue::from_str(&context.to_b3()) {
            parts.headers.insert("b3", v);
        }
    }
    trace.context.sampled.then(|| super::future::ClientSpan {
        trace: trace.clone(),
        context,
        start: std::time::SystemTime::now(),
        method: parts.method.clone(),
        endpoint: endpoint.authority().clone(),
    })
}

/// Builds the response for a failed upstream exchange.
pub(crate) fn error_response(err: &ProxyError) -> Response<ResponseBody> {
    use std::error::Error as _;
    let connect_failed = |timeout: bool| {
        if timeout {
            Problem::new(StatusCode::GATEWAY_TIMEOUT)
                .detail("timed out connecting to the upstream")
                .reason(
                    RejectReason::UpstreamTimeout,
                    ResponseFlags::UPSTREAM_CONNECTION_FAILURE | ResponseFlags::UPSTREAM_TIMEOUT,
                )
                .into_response()
        } else {
            Problem::new(StatusCode::BAD_GATEWAY)
                .detail("could not connect to the upstream")
                .reason(
                    RejectReason::UpstreamConnect,
                    ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
                )
                .into_response()
        }
    };
    let hyper_err = match err {
        ProxyError::ConnectTimeout => return connect_failed(true),
        ProxyError::Connect(io) => {
            return connect_failed(io.kind() == std::io::ErrorKind::TimedOut);
        }
        ProxyError::Handshake(h) | ProxyError::Request(h) => h,
    };
    // The client's request body failing surfaces as the inbound side's own error in the chain.
    let mut client_body_failed = hyper_err.is_body_write_aborted();
    let mut source = hyper_err.source();
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return Problem::new(StatusCode::PAYLOAD_TOO_LARGE)
                .detail("request body exceeds the configured limit")
                .reason(
                    RejectReason::PayloadTooLarge,
                    ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                )
                .into_response();
        }
        client_body_failed |= e.is::<hyper::Error>();
        source = e.source();
    }
    if client_body_failed {
        // The client went away or sent a malformed body mid-stream.
        return Problem::new(StatusCode::BAD_REQUEST)
            .detail("the request body could not be read")
            .reason(
                RejectReason::BadRequest,
                ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
            )
            .into_response();
    }
    let flags = if hyper_err.is_parse() || matches!(err, ProxyError::Handshake(_)) {
        ResponseFlags::UPSTREAM_PROTOCOL_ERROR
    } else {
        ResponseFlags::UPSTREAM_CONNECTION_TERMINATION
    };
    Problem::new(StatusCode::BAD_GATEWAY)
        .detail("the upstream connection failed")
        .reason(RejectReason::UpstreamProtocol, flags)
        .into_response()
}

/// The client did not send its request body in time: its fault, not the upstream's.
pub(crate) fn slow_client_response() -> Response<ResponseBody> {
    Problem::new(StatusCode::REQUEST_TIMEOUT)
        .detail("the request body was not received in time")
        .reason(
            RejectReason::BadRequest,
            ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
        )
        .into_response()
}

pub(crate) fn timeout_response() -> Response<ResponseBody> {
    Problem::new(StatusCode::GATEWAY_TIMEOUT)
        .detail("the upstream did not answer in time")
        .reason(
            RejectReason::UpstreamTimeout,
            ResponseFlags::UPSTREAM_TIMEOUT,
        )
        .into_response()
}

/// One active check of endpoint `idx`.
async fn probe<B>(pool: &Pool<B>, idx: usize, kind: &CheckKind, host: &HeaderValue) -> bool
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Ok(io) = pool.connect(idx).await else {
        return false;
    };
    let CheckKind::Http { path, expect } = kind else {
        return true;
    };
    let Ok((mut sender, conn)) =
        hyper::client::conn::http1::handshake::<_, http_body_util::Empty<bytes::Bytes>>(io).await
    else {
        return false;
    };
    let conn = tokio::spawn(conn);
    let req = Request::get(path.as_str())
        .header(HOST, host.clone())
        .header(http::header::USER_AGENT, "gateway-health-check")
        .header(CONNECTION, "close")
        .body(http_body_util::Empty::new());
    let passed = match req {
        Ok(req) => sender
            .send_request(req)
            .await
            .is_ok_and(|res| crate::health::expected(expect, res.status())),
        Err(_) => false,
    };
    conn.abort();
    passed
}

/// Sticky sessions: each endpoint's opaque id and its `Set-Cookie` value, made once.
#[derive(Debug)]
struct Sticky {
    name: String,
    ids: Box<[String]>,
    set_cookie: Box<[HeaderValue]>,
}

impl Sticky {
    fn new(config: &StickyCookie, endpoints: &[Endpoint]) -> Self {
        let ids: Box<[String]> = endpoints
            .iter()
            .map(|e| format!("{:016x}", stable_hash(e.to_string().as_bytes())))
            .collect();
        let set_cookie = ids
            .iter()
            .map(|id| {
                let mut v = format!("{}={id}; Path=/; HttpOnly; SameSite=Lax", config.name);
                if let Some(age) = config.max_age {
                    v.push_str(&format!("; Max-Age={}", age.as_secs()));
                }
                HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
            })
            .collect();
        Self {
            name: config.name.clone(),
            ids,
            set_cookie,
        }
    }

    /// The endpoint the request's cookie pins it to, if any.
    fn endpoint(&self, parts: &http::request::Parts) -> Option<usize> {
        let value = gateway_core::cookie(&parts.headers, &self.name)?;
        self.ids.iter().position(|id| id == value)
    }
}
