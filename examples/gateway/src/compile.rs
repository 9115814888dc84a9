//! Turning a parsed [`Config`] into the immutable structures the request path reads.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use gateway_breaker::{
    BulkheadLayer, CircuitBreakerConfig, CircuitBreakerLayer, HedgeLayer, RetryConfig, RetryLayer,
    Window,
};
use gateway_core::{DefaultClassifier, ForwardedHeader, RouteId, TrustedProxies};
use gateway_lb::{Endpoint, HostHeader, Protocol, Upstream, UpstreamBuilder};
use http::{HeaderName, HeaderValue, Method};
use tokio::sync::Semaphore;

/// What route `rate_limit` blocks compile against.
struct RouteLimits<'a> {
    providers: &'a Providers,
    config: &'a Config,
    tiers: &'a TierLimits,
    state: &'a LimitState,
    cache_store: &'a Arc<dyn gateway_cache::CacheStore>,
}

use crate::{
    auth::{
        Providers, compile_ext_authz, compile_ip_filter, compile_providers, compile_route_auth,
    },
    config::{
        Config, ConfigError, ForwardedHeaderConfig, HostConfig, Issues, Limits, ProtocolConfig,
        WindowConfig, check_unique_names,
    },
    ratelimit::{LimitState, TierLimits, compile_route_limit, compile_state, compile_tiers},
    router::{
        HostMatch, PathMatch, Rewrite, Route, Router, Segment, ValueMatch, parse_rewrite_template,
        parse_template,
    },
};

/// A validated configuration, compiled for the request path. Shared read-only by all workers.
#[derive(Debug)]
pub struct Compiled {
    /// Public listener addresses.
    pub listeners: Vec<SocketAddr>,
    /// Each public listener's `trust_trace_context` (by position in `listeners`).
    pub(crate) trust_trace: Vec<Option<bool>>,
    /// Each public listener's TLS settings (by position in `listeners`).
    pub(crate) tls: Vec<Option<Arc<crate::tls::ListenerTls>>>,
    /// Admin listener address.
    pub admin: Option<SocketAddr>,
    /// Worker threads.
    pub workers: usize,
    /// The routing table.
    pub router: Router,
    /// Upstreams, indexed by [`Route::upstream`]. A reload keeps the very same spec (breaker
    /// state, retry budget, bulkhead, connection pools) for an upstream whose configuration did
    /// not change.
    pub upstreams: Vec<Arc<UpstreamSpec>>,
    /// Limits.
    pub limits: Limits,
    /// Lower-case header name prefixes stripped at ingress.
    pub internal_prefixes: Vec<String>,
    /// Trusted proxies.
    pub trusted: TrustedProxies,
    /// Drain deadline on shutdown.
    pub drain_timeout: Duration,
    /// Where rate-limit state lives (shared by every route and worker).
    pub limit_state: LimitState,
    /// The HTTP cache's store (kept by a reload when `cache` is unchanged).
    pub cache_store: Arc<dyn gateway_cache::CacheStore>,
    /// The authentication providers (kept by a reload when unchanged: JWK sets stay fetched).
    pub(crate) providers: Arc<Providers>,
    /// The configuration document as JSON, to compare on reload and show (redacted) on the admin
    /// API.
    pub source: serde_json::Value,
    /// The digest of the admin API's bearer token (`admin.token_env`).
    pub admin_token: Option<gateway_auth::ApiKeyHash>,
    /// The `observe` block (used at start).
    pub(crate) observe: crate::observe::ObservePlan,
    /// The configuration text and its file name, re-applied when discovered endpoints change.
    pub(crate) text: Arc<str>,
    pub(crate) file: String,
    /// The names followed by `discovery` blocks (kept by every reload).
    pub(crate) discovery: Arc<crate::discovery::Discovery>,
    /// With `reload.watch`, how often to poll the files (read at start).
    pub watch: Option<Duration>,
    /// Files the configuration names (CA bundles, certificates): a watched reload also follows
    /// them.
    pub files: Vec<std::path::PathBuf>,
}

/// An upstream's name and how to build its client (one per worker).
#[derive(Debug)]
pub struct UpstreamSpec {
    /// The configured name.
    pub name: String,
    /// The endpoints.
    pub endpoints: Vec<Endpoint>,
    /// The builder.
    pub builder: UpstreamBuilder,
    /// The circuit breaker, shared by every worker's client for this upstream.
    pub breaker: Option<CircuitBreakerLayer>,
    /// The bulkhead, shared by every worker.
    pub bulkhead: Option<BulkheadLayer>,
    /// Retries, with one budget shared by every worker.
    pub retry: Option<RetryLayer>,
    /// Overall deadline for the response headers, retries included.
    pub deadline: Option<Duration>,
    /// Active health checks and success-rate sweeps, started by the first worker that builds
    /// a client; stopped when this spec goes (a reload that changes the upstream).
    pub health: std::sync::OnceLock<Option<gateway_lb::health::HealthTasks>>,
    /// Hedging of slow idempotent requests, with one budget shared by every worker.
    pub hedge: Option<HedgeLayer>,
    /// The discovered endpoints' source (`discovery`), kept alive by the specs that use it.
    pub(crate) discovered: Option<Arc<crate::discovery::Followed>>,
}

impl UpstreamSpec {
    /// Builds this worker's client.
    pub fn build(&self) -> Upstream<crate::pipeline::RequestBody> {
        self.builder.clone().build()
    }
}

impl Compiled {
    /// Every route in precedence order, with the stages a request it matches goes through, in
    /// order: `ip_filter`, `auth`, `ext_authz`, `rate_limit`, `rewrite`, `upstream` (each with its
    /// configuration, secrets redacted). What `gateway routes` prints and `GET /routes` shows.
    pub fn route_table(&self) -> Vec<serde_json::Value> {
        use serde_json::{Value, json};
        let routes = self.source.get("routes").and_then(Value::as_array);
        self.router
            .routes()
            .iter()
            .zip(self.router.views())
            .map(|(route, view)| {
                let src = routes
                    .and_then(|r| r.get(route.order))
                    .cloned()
                    .unwrap_or_default();
                let mut stages = Vec::new();
                let mut stage = |name: &str, config: Option<&Value>| {
                    if let Some(config) = config {
                        stages.push(
                            json!({ "stage": name, "config": crate::reload::redacted(config) }),
                        );
                    }
                };
                stage("ip_filter", src.get("ip_filter"));
                let mut auth = src.get("auth").cloned();
                let ext_authz = auth
                    .as_mut()
                    .and_then(Value::as_object_mut)
                    .and_then(|a| a.remove("ext_authz"));
                stage("auth", auth.as_ref());
                stage("ext_authz", ext_authz.as_ref());
                stage("rate_limit", src.get("rate_limit"));
                let rewrite = match (src.get("strip_prefix"), src.get("rewrite")) {
                    (_, Some(r)) => Some(json!({ "rewrite": r })),
                    (Some(Value::Bool(true)), None) => Some(json!({ "strip_prefix": true })),
                    _ => None,
                };
                stage("rewrite", rewrite.as_ref());
                let upstream = json!({
                    "name": route.upstream_name,
                    "config": self
                        .source
                        .get("upstreams")
                        .and_then(|u| u.get(&route.upstream_name))
                        .cloned()
                        .unwrap_or_default(),
                });
                stage("upstream", Some(&upstream));
                let mut v = serde_json::to_value(view).unwrap_or_default();
                v["stages"] = Value::Array(stages);
                v
            })
            .collect()
    }

    /// Validates and compiles `config`; `file` names it in errors. Every problem found is
    /// reported, not just the first.
    pub fn new(config: &Config, file: &str) -> Result<Arc<Self>, ConfigError> {
        Self::build(config, file, None)
    }

    /// Like [`Compiled::new`], for a reload of a gateway running `previous`: state that must
    /// survive is taken over where its configuration did not change — each unchanged upstream
    /// (by name) keeps its breaker, retry budget, bulkhead and pools, an unchanged `state` keeps
    /// every rate-limit counter, and unchanged `auth_providers` and `consumers` keep their
    /// providers (fetched JWK sets, token caches).
    pub fn reload(config: &Config, file: &str, previous: &Self) -> Result<Arc<Self>, ConfigError> {
        Self::build(config, file, Some(previous))
    }

    fn build(
        config: &Config,
        file: &str,
        previous: Option<&Self>,
    ) -> Result<Arc<Self>, ConfigError> {
        // Whether `keys` of the document are the same as in the previous one.
        let same = |keys: &[&str]| {
            previous.is_some_and(|p| keys.iter().all(|k| p.source.get(k) == config.source.get(k)))
        };
        let mut issues = Issues::default();
        if config.listeners.is_empty() {
            issues.nowhere("listeners", "at least one listener is required");
        }
        if config.workers == Some(0) {
            issues.nowhere("workers", "must be at least 1");
        }
        check_limits(config, &mut issues);
        let mut trusted = Vec::new();
        for (i, entry) in config.trusted_proxies.iter().enumerate() {
            match TrustedProxies::parse_entry(&entry.value) {
                Ok(net) => trusted.push(net),
                Err(e) => issues.at(entry, format!("trusted_proxies[{i}]"), e.to_string()),
            }
        }
        let trusted = TrustedProxies::new(trusted).header(match config.forwarded_header {
            ForwardedHeaderConfig::XForwardedFor => ForwardedHeader::XForwardedFor,
            ForwardedHeaderConfig::Forwarded => ForwardedHeader::Forwarded,
        });
        let mut internal_prefixes = Vec::new();
        for (i, p) in config.internal_header_prefixes.iter().enumerate() {
            let lower = p.to_ascii_lowercase();
            if lower.is_empty() || HeaderName::from_bytes(lower.as_bytes()).is_err() {
                issues.nowhere(
                    format!("internal_header_prefixes[{i}]"),
                    format!("`{p}` is not a valid header name prefix"),
                );
            }
            internal_prefixes.push(lower);
        }

        let discovery = previous.map_or_else(Arc::default, |p| p.discovery.clone());
        // Every followed name starts now; each is waited for below, from this instant.
        let mut following = std::collections::HashMap::new();
        for (name, spanned) in &config.upstreams {
            let Some(d) = &spanned.value.discovery else {
                continue;
            };
            let field = format!("upstreams.{name}");
            if let Some((key, target, discover, wait)) = dns_discovery(&field, name, d, &mut issues)
            {
                match discovery.start(&key, target, discover) {
                    Ok(followed) => {
                        following.insert(name.clone(), (followed, wait));
                    }
                    Err(e) => issues.at(d, format!("{field}.discovery.dns"), e),
                }
            }
        }
        // The real clock: the first answers are awaited on a condition variable.
        #[allow(clippy::disallowed_types)]
        let started = std::time::Instant::now();
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        for (name, spanned) in &config.upstreams {
            let up = &spanned.value;
            let field = format!("upstreams.{name}");
            let mut endpoints = Vec::new();
            let mut weights = Vec::new();
            // Lines of the endpoints file, reported against the `endpoints_file` key with the
            // file's own line number.
            let mut listed: Vec<(&serde_saphyr::Spanned<String>, String, String)> = up
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| (e, format!("{field}.endpoints[{i}]"), e.value.clone()))
                .collect();
            if let Some(file) = &up.endpoints_file {
                match std::fs::read_to_string(&file.value) {
                    Ok(text) => {
                        for (n, line) in text.lines().enumerate() {
                            let line = line.split('#').next().unwrap_or_default().trim();
                            if !line.is_empty() {
                                listed.push((
                                    file,
                                    format!("{field}.endpoints_file ({}:{})", file.value, n + 1),
                                    line.to_owned(),
                                ));
                            }
                        }
                    }
                    Err(e) => issues.at(
                        file,
                        format!("{field}.endpoints_file"),
                        format!("cannot read `{}`: {e}", file.value),
                    ),
                }
            }
            for (e, at, value) in &listed {
                let mut words = value.split_whitespace();
                let address = words.next().unwrap_or_default();
                let mut weight = 1;
                for word in words {
                    match word.strip_prefix("weight=").map(str::parse::<u32>) {
                        Some(Ok(w)) if w > 0 => weight = w,
                        _ => issues.at(
                            *e,
                            at.clone(),
                            format!("`{word}`: expected `weight=N` with N at least 1"),
                        ),
                    }
                }
                match address.parse::<Endpoint>() {
                    Ok(ep) => {
                        endpoints.push(ep);
                        weights.push(weight);
                    }
                    Err(err) => issues.at(*e, at.clone(), err.to_string()),
                }
            }
            let discovered = up.discovery.as_ref().and_then(|d| {
                let (followed, wait) = following.remove(name)?;
                match followed.wait_first(started, wait) {
                    Ok(()) => {
                        for (e, w) in followed.endpoints().iter() {
                            endpoints.push(e.clone());
                            weights.push(*w);
                        }
                        Some(followed)
                    }
                    Err(e) => {
                        issues.at(d, format!("{field}.discovery.dns"), e);
                        None
                    }
                }
            });
            if listed.is_empty() && up.discovery.is_none() {
                issues.at(
                    spanned,
                    format!("{field}.endpoints"),
                    "at least one endpoint is required (in `endpoints`, `endpoints_file` or `discovery`)",
                );
            }
            let host = match &up.host {
                HostConfig::Preserve => HostHeader::Preserve,
                HostConfig::Endpoint => HostHeader::Endpoint,
                HostConfig::Set(v) => match HeaderValue::from_str(v) {
                    Ok(v) => HostHeader::Fixed(v),
                    Err(_) => {
                        issues.at(
                            spanned,
                            format!("{field}.host.set"),
                            format!("`{v}` is not a valid Host value"),
                        );
                        HostHeader::Preserve
                    }
                },
            };
            let via = up.forwarding.via.trim();
            if !via.is_empty() && HeaderValue::from_str(via).is_err() {
                issues.at(
                    spanned,
                    format!("{field}.forwarding.via"),
                    "not a valid header value",
                );
            }
            let tls = up
                .tls
                .as_ref()
                .and_then(|t| upstream_tls(&field, t, &endpoints, &mut issues));
            let builder = Upstream::builder(endpoints.clone())
                .connect_timeout(up.timeouts.connect.0)
                .request_timeout(Some(up.timeouts.request.0))
                .body_timeout(up.timeouts.body.map(|d| d.0))
                .host(host)
                .protocol(match up.protocol {
                    ProtocolConfig::Http1 => Protocol::Http1,
                    ProtocolConfig::Http2 => Protocol::Http2,
                })
                .via((!via.is_empty()).then_some(via))
                .x_forwarded(up.forwarding.x_forwarded)
                .forwarded(up.forwarding.forwarded);
            let builder = match tls {
                Some(tls) => builder.tls(tls),
                None => builder,
            };
            let builder = balancing(&field, spanned, builder, weights.clone(), &mut issues);
            let per_endpoint = up.breaker.as_ref().is_some_and(|b| b.value.per_endpoint);
            let breaker = up
                .breaker
                .as_ref()
                .filter(|_| !per_endpoint)
                .map(|b| breaker_layer(&b.value));
            let builder = match up.breaker.as_ref().filter(|_| per_endpoint) {
                Some(b) => builder.endpoint_breakers(
                    &breaker_config(&b.value),
                    DefaultClassifier::new()
                        .rate_limited_is_failure(b.value.rate_limited_is_failure),
                ),
                None => builder,
            };
            if let Some(b) = &up.breaker
                && (b.value.open_for.0.is_zero()
                    || b.value.half_open_probes == 0
                    || b.value.minimum_calls == 0)
            {
                issues.at(
                    b,
                    format!("{field}.breaker"),
                    "open_for, half_open_probes and minimum_calls must be greater than zero",
                );
            }
            if up.max_concurrent == Some(0) {
                issues.at(
                    spanned,
                    format!("{field}.max_concurrent"),
                    "must be at least 1",
                );
            }
            let retry = up.retry.as_ref().and_then(|r| match retry_layer(&r.value) {
                Ok(layer) => Some(layer),
                Err(e) => {
                    issues.at(r, format!("{field}.retry.on"), e);
                    None
                }
            });
            let unchanged = previous.is_some_and(|p| {
                p.source.get("upstreams").and_then(|u| u.get(name))
                    == config.source.get("upstreams").and_then(|u| u.get(name))
            });
            let kept = previous.and_then(|p| {
                // With an endpoints file, the YAML can be unchanged while the endpoints are not.
                p.upstreams
                    .iter()
                    .find(|u| {
                        unchanged
                            && u.name == *name
                            && u.endpoints == endpoints
                            && u.builder
                                .balancer()
                                .status()
                                .iter()
                                .map(|s| s.weight)
                                .eq(weights.iter().copied())
                    })
                    .cloned()
            });
            if let Some(kept) = kept {
                upstreams.push(kept);
                continue;
            }
            let old = previous.and_then(|p| p.upstreams.iter().find(|u| u.name == *name));
            // Only the endpoints moved (a file or DNS change): the same upstream over the new
            // list. Breakers, budgets and the bulkhead carry over; the balancer and per-endpoint
            // breakers keep what they knew of the endpoints still there.
            if let Some(old) = old.filter(|_| unchanged) {
                let list: Vec<(Endpoint, u32)> = endpoints
                    .iter()
                    .cloned()
                    .zip(weights.iter().copied())
                    .collect();
                upstreams.push(Arc::new(UpstreamSpec {
                    name: name.clone(),
                    endpoints,
                    builder: old.builder.with_endpoints(&list),
                    breaker: old.breaker.clone(),
                    bulkhead: old.bulkhead.clone(),
                    retry: old.retry.clone(),
                    deadline: old.deadline,
                    health: std::sync::OnceLock::new(),
                    discovered,
                    hedge: old.hedge.clone(),
                }));
                continue;
            }
            // A changed upstream keeps what was learnt about the endpoints it still has.
            if let Some(old) = old {
                let pairs: Vec<(usize, usize)> = endpoints
                    .iter()
                    .enumerate()
                    .filter_map(|(i, e)| old.endpoints.iter().position(|o| o == e).map(|j| (i, j)))
                    .collect();
                builder
                    .balancer()
                    .inherit(&old.builder.balancer(), &pairs, up.health.is_some());
            }
            upstreams.push(Arc::new(UpstreamSpec {
                name: name.clone(),
                endpoints,
                builder,
                breaker,
                bulkhead: up.max_concurrent.map(BulkheadLayer::new),
                retry,
                deadline: up.timeouts.total.map(|d| d.0),
                health: std::sync::OnceLock::new(),
                discovered,
                hedge: up.hedge.as_ref().map(|h| {
                    HedgeLayer::new(h.after.0).budget(
                        h.budget.0 as f32,
                        h.min_per_sec,
                        Duration::from_secs(10),
                    )
                }),
            }));
        }

        let cache_store = match previous {
            // A Redis store also depends on `state` (its URL, prefix and timeout).
            Some(p)
                if same(&["cache"])
                    && (config.cache.store == crate::config::CacheStoreKind::Memory
                        || same(&["state"])) =>
            {
                p.cache_store.clone()
            }
            _ => cache_store(config, &mut issues),
        };
        let limit_state = match previous {
            Some(p) if same(&["state"]) => p.limit_state.clone(),
            _ => compile_state(config, &mut issues),
        };
        let providers = match previous {
            Some(p) if same(&["auth_providers", "consumers", "internal_header_prefixes"]) => {
                p.providers.clone()
            }
            _ => Arc::new(compile_providers(config, &mut issues)),
        };
        let tiers = compile_tiers(config, &mut issues);
        check_unique_names(&config.routes, &mut issues);
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, spanned) in config.routes.iter().enumerate() {
            let limits = RouteLimits {
                providers: &providers,
                config,
                tiers: &tiers,
                state: &limit_state,
                cache_store: &cache_store,
            };
            if let Some(route) = compile_route(i, spanned, &upstreams, &limits, &mut issues) {
                routes.push(route);
            }
        }

        let tls = config
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| {
                l.value.tls.as_ref().and_then(|t| {
                    crate::tls::compile(&format!("listeners[{i}].tls"), l, t, &mut issues)
                })
            })
            .collect();
        let observe = crate::observe::compile(config, &mut issues);
        let admin_token = config
            .admin
            .as_ref()
            .and_then(|a| a.token_file.as_deref())
            .and_then(|file| match std::fs::read_to_string(file) {
                Ok(token)
                    if token.trim().len() >= 16 && !token.trim().contains(char::is_whitespace) =>
                {
                    Some(gateway_auth::ApiKeyHash::of(token.trim()))
                }
                Ok(_) => {
                    issues.nowhere(
                        "admin.token_file",
                        format!("`{file}` must hold one token of at least 16 characters"),
                    );
                    None
                }
                Err(e) => {
                    issues.nowhere("admin.token_file", format!("cannot read `{file}`: {e}"));
                    None
                }
            });
        if !issues.0.is_empty() {
            return Err(ConfigError {
                file: file.to_owned(),
                issues: issues.0,
            });
        }
        let workers = config
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        Ok(Arc::new(Self {
            listeners: config.listeners.iter().map(|l| l.value.bind).collect(),
            trust_trace: config
                .listeners
                .iter()
                .map(|l| l.value.trust_trace_context)
                .collect(),
            tls,
            admin: config.admin.as_ref().map(|a| a.bind),
            workers,
            router: Router::new(routes),
            upstreams,
            limits: config.limits.clone(),
            internal_prefixes,
            trusted,
            drain_timeout: config.shutdown.drain_timeout.0,
            limit_state,
            cache_store,
            providers,
            admin_token,
            observe,
            source: config.source.clone(),
            text: config.text.clone(),
            file: file.to_owned(),
            discovery,
            watch: config.reload.watch.then_some(config.reload.interval.0),
            files: named_files(config),
        }))
    }
}

fn compile_route(
    i: usize,
    spanned: &serde_saphyr::Spanned<crate::config::RouteConfig>,
    upstreams: &[Arc<UpstreamSpec>],
    limits: &RouteLimits<'_>,
    issues: &mut Issues,
) -> Option<Route> {
    let rc = &spanned.value;
    let field = format!("routes[{i}]");
    let before = issues.0.len();
    if rc.name.is_empty() || rc.name.len() > 128 || !rc.name.bytes().all(|b| b.is_ascii_graphic()) {
        issues.at(
            spanned,
            format!("{field}.name"),
            "route names are 1 to 128 visible ASCII characters",
        );
    }
    let m = &rc.matches;
    let host = match &m.host {
        None => HostMatch::Any,
        Some(h) => {
            let v = h.value.to_ascii_lowercase();
            if let Some(suffix) = v.strip_prefix('*') {
                if !suffix.starts_with('.') || suffix.len() < 2 || suffix.contains('*') {
                    issues.at(
                        h,
                        format!("{field}.match.host"),
                        format!("`{}`: a wildcard host looks like `*.example.com`", h.value),
                    );
                }
                HostMatch::Wildcard(suffix.to_owned())
            } else {
                if v.is_empty() || v.contains(['*', '/', ' ']) || v.contains(':') {
                    issues.at(
                        h,
                        format!("{field}.match.host"),
                        format!("`{}` is not a host name (no port, scheme or path)", h.value),
                    );
                }
                HostMatch::Exact(v)
            }
        }
    };
    let kinds = [
        m.path.is_some(),
        m.path_prefix.is_some(),
        m.path_template.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() > 1 {
        issues.at(
            spanned,
            format!("{field}.match"),
            "use only one of `path`, `path_prefix` and `path_template`",
        );
    }
    let check_normal = |p: &serde_saphyr::Spanned<String>, key: &str, issues: &mut Issues| {
        if let Some(problem) = path_problem(&p.value) {
            issues.at(p, format!("{field}.match.{key}"), problem);
        }
    };
    let path = if let Some(p) = &m.path {
        check_normal(p, "path", issues);
        PathMatch::Exact(p.value.clone())
    } else if let Some(t) = &m.path_template {
        check_normal(t, "path_template", issues);
        match parse_template(&t.value) {
            Ok(segs) => PathMatch::Template(segs),
            Err(e) => {
                issues.at(t, format!("{field}.match.path_template"), e);
                PathMatch::Template(Vec::new())
            }
        }
    } else if let Some(p) = &m.path_prefix {
        check_normal(p, "path_prefix", issues);
        PathMatch::Prefix(p.value.clone())
    } else {
        PathMatch::Prefix("/".to_owned())
    };
    let mut methods = Vec::new();
    for (j, meth) in m.methods.iter().enumerate() {
        let upper = meth.value.to_ascii_uppercase();
        match Method::from_bytes(upper.as_bytes()) {
            Ok(mm) => methods.push(mm),
            Err(_) => issues.at(
                meth,
                format!("{field}.match.methods[{j}]"),
                format!("`{}` is not an HTTP method", meth.value),
            ),
        }
    }
    let mut headers = Vec::new();
    for (j, h) in m.headers.iter().enumerate() {
        match HeaderName::from_bytes(h.value.name.as_bytes()) {
            Ok(name) => headers.push(ValueMatch {
                name,
                value: h.value.value.clone(),
            }),
            Err(_) => issues.at(
                h,
                format!("{field}.match.headers[{j}].name"),
                format!("`{}` is not a header name", h.value.name),
            ),
        }
    }
    let query = m
        .query
        .iter()
        .map(|q| ValueMatch {
            name: q.value.name.clone(),
            value: q.value.value.clone(),
        })
        .collect();
    let upstream = upstreams.iter().position(|u| u.name == rc.upstream.value);
    if upstream.is_none() {
        let known: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
        issues.at(
            &rc.upstream,
            format!("{field}.upstream"),
            format!(
                "unknown upstream `{}` (defined: {})",
                rc.upstream.value,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        );
    }
    let split = rc
        .split
        .as_ref()
        .and_then(|s| compile_split(&field, s, upstream, &rc.upstream.value, upstreams, issues))
        .map(Arc::new);
    let rewrite = match (&rc.rewrite, rc.strip_prefix, &path) {
        (Some(r), true, _) => {
            issues.at(
                r,
                format!("{field}.rewrite"),
                "use either `strip_prefix` or `rewrite`, not both",
            );
            Rewrite::None
        }
        (None, true, PathMatch::Prefix(_)) => Rewrite::Prefix(String::new()),
        (None, true, _) => {
            issues.at(
                spanned,
                format!("{field}.strip_prefix"),
                "`strip_prefix` needs a `path_prefix` match",
            );
            Rewrite::None
        }
        (Some(r), false, PathMatch::Prefix(_)) => {
            check_rewrite_target(r, &field, issues);
            Rewrite::Prefix(r.value.clone())
        }
        (Some(r), false, PathMatch::Exact(_) | PathMatch::Template(_)) => {
            let names: Vec<&str> = match &path {
                PathMatch::Template(segs) => segs
                    .iter()
                    .filter_map(|s| match s {
                        Segment::Param(n) | Segment::CatchAll(n) => Some(n.as_str()),
                        Segment::Literal(_) => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            check_rewrite_target(r, &field, issues);
            match parse_rewrite_template(&r.value, &names) {
                Ok(parts) => Rewrite::Template(parts),
                Err(e) => {
                    issues.at(r, format!("{field}.rewrite"), e);
                    Rewrite::None
                }
            }
        }
        (None, false, _) => Rewrite::None,
    };
    let rate_limit = rc.rate_limit.as_ref().and_then(|rl| {
        compile_route_limit(
            &field,
            &rc.name,
            rl,
            limits.config,
            limits.tiers,
            limits.state,
            issues,
        )
    });
    let auth = rc
        .auth
        .as_ref()
        .and_then(|a| compile_route_auth(&field, a, limits.providers, issues));
    let ext_authz = rc
        .auth
        .as_ref()
        .and_then(|a| a.value.ext_authz.as_ref())
        .and_then(|x| compile_ext_authz(&field, x, limits.providers, issues));
    let ip_filter = rc
        .ip_filter
        .as_ref()
        .map(|f| compile_ip_filter(&field, f, issues));
    let cache = rc.cache.as_ref().map(|c| {
        let v = &c.value;
        let policy = gateway_cache::policy::CachePolicy {
            default_ttl: v.default_ttl.map(|d| d.0),
            ttl_floor: v.ttl_floor.map_or(Duration::ZERO, |d| d.0),
            ttl_ceiling: v.ttl_ceiling.map_or(Duration::from_secs(86_400), |d| d.0),
            ..gateway_cache::policy::CachePolicy::default()
        };
        if policy.ttl_floor > policy.ttl_ceiling {
            issues.at(
                c,
                format!("{field}.cache"),
                "ttl_floor is above ttl_ceiling",
            );
        }
        let mut header_list = |names: &[String], what: &str| -> Vec<HeaderName> {
            names
                .iter()
                .filter_map(|n| {
                    let parsed = HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes());
                    if parsed.is_err() {
                        issues.at(
                            c,
                            format!("{field}.cache.{what}"),
                            format!("`{n}` is not a header name"),
                        );
                    }
                    parsed.ok()
                })
                .collect()
        };
        let targeted = header_list(&v.targeted, "targeted");
        let keyed = header_list(&v.key.headers, "key.headers");
        let unkeyed = v
            .unkeyed_headers
            .as_ref()
            .map(|names| header_list(names, "unkeyed_headers"));
        let policy = gateway_cache::policy::CachePolicy { targeted, ..policy };
        let query = match (&v.key.query_only, &v.key.query_except, v.key.query) {
            (None, None, crate::config::QueryKeyMode::AsSent) => gateway_cache::QueryKey::AsSent,
            (None, None, crate::config::QueryKeyMode::Sorted) => gateway_cache::QueryKey::Sorted,
            (None, None, crate::config::QueryKeyMode::Ignored) => gateway_cache::QueryKey::Ignored,
            (Some(only), None, crate::config::QueryKeyMode::AsSent) => {
                gateway_cache::QueryKey::Only(only.clone())
            }
            (None, Some(except), crate::config::QueryKeyMode::AsSent) => {
                gateway_cache::QueryKey::Except(except.clone())
            }
            _ => {
                issues.at(
                    c,
                    format!("{field}.cache.key"),
                    "use one of `query`, `query_only` and `query_except`",
                );
                gateway_cache::QueryKey::AsSent
            }
        };
        let key = keyed
            .into_iter()
            .fold(gateway_cache::CacheKey::new().query(query), |k, h| {
                k.header(h)
            });
        let status = v.cache_status.trim();
        if !status
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_.:/".contains(ch))
        {
            issues.at(
                c,
                format!("{field}.cache.cache_status"),
                "a cache name is letters, digits and `-_.:/`",
            );
        }
        let store = limits.cache_store.clone();
        let mut layer = gateway_cache::CacheLayer::shared(store)
            .policy(policy)
            .key(key)
            .cache_status(Some(status).filter(|n| !n.is_empty()))
            .max_body(
                v.max_body
                    .map_or(1 << 20, |b| usize::try_from(b.0).unwrap_or(usize::MAX)),
            );
        if let Some(unkeyed) = unkeyed {
            layer = layer.unkeyed_headers(unkeyed);
        }
        (layer, v.shared)
    });
    let mut upgrades = Vec::new();
    for u in &rc.upgrades {
        let lower = u.trim().to_ascii_lowercase();
        if lower == "h2c" {
            issues.at(
                spanned,
                format!("{field}.upgrades"),
                "`h2c` upgrades are never proxied (use HTTP/2 with prior knowledge or TLS)",
            );
        } else if lower.is_empty()
            || !lower
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b))
        {
            issues.at(
                spanned,
                format!("{field}.upgrades"),
                format!("`{u}` is not an Upgrade protocol token"),
            );
        } else {
            upgrades.push(lower);
        }
    }
    if issues.0.len() > before {
        return None;
    }
    Some(Route {
        id: RouteId::new(rc.name.as_str()),
        host,
        path,
        methods,
        headers,
        query,
        upstream: upstream?,
        upstream_name: rc.upstream.value.clone(),
        split,
        transform: rc
            .transform
            .as_ref()
            .and_then(|t| compile_transform(&field, t, issues))
            .map(Arc::new),
        request_body: rc
            .transform
            .as_ref()
            .and_then(|t| {
                t.value.request_body.as_ref().and_then(|b| {
                    compile_body_rules(&format!("{field}.transform.request_body"), t, b, issues)
                })
            })
            .map(Arc::new),
        response_body: rc
            .transform
            .as_ref()
            .and_then(|t| {
                t.value.response_body.as_ref().and_then(|b| {
                    compile_body_rules(&format!("{field}.transform.response_body"), t, b, issues)
                })
            })
            .map(Arc::new),
        validation: rc
            .validate
            .as_ref()
            .and_then(|v| compile_validation(&field, v, issues))
            .map(Arc::new),
        aggregate: rc
            .aggregate
            .as_ref()
            .and_then(|a| compile_aggregate(&field, a, rc, upstreams, issues))
            .map(Arc::new),
        versions: rc
            .versions
            .as_ref()
            .and_then(|v| compile_versions(&field, v, rc, upstreams, issues))
            .map(Arc::new),
        uri_rewrite: rc
            .transform
            .as_ref()
            .and_then(|t| compile_uri_rewrite(&field, t, issues))
            .map(Arc::new),
        lifecycle: rc
            .version
            .as_ref()
            .and_then(|v| compile_lifecycle(&format!("{field}.version"), &v.value, v, issues))
            .map(Arc::new),
        rewrite,
        rate_limit,
        auth,
        ext_authz,
        ip_filter,
        upgrades,
        cache,
        order: i,
    })
}

/// A route's `transform` block: request and response header rules.
fn compile_transform(
    field: &str,
    spanned: &serde_saphyr::Spanned<crate::config::TransformConfig>,
    issues: &mut Issues,
) -> Option<(
    gateway_transform::headers::HeaderRules,
    gateway_transform::headers::HeaderRules,
)> {
    let rules = |c: &crate::config::HeaderRulesConfig,
                 what: &str,
                 issues: &mut Issues|
     -> Option<gateway_transform::headers::HeaderRules> {
        let mut b = gateway_transform::headers::HeaderRules::builder();
        let fail = |e: gateway_transform::headers::RuleError, issues: &mut Issues| {
            issues.at(spanned, format!("{field}.transform.{what}"), e.0);
        };
        for h in &c.remove {
            b = match b.remove(h) {
                Ok(b) => b,
                Err(e) => {
                    fail(e, issues);
                    return None;
                }
            };
        }
        for (from, to) in &c.rename {
            b = match b.rename(from, to) {
                Ok(b) => b,
                Err(e) => {
                    fail(e, issues);
                    return None;
                }
            };
        }
        for (op, map) in [("set", &c.set), ("add", &c.add), ("append", &c.append)] {
            for (h, v) in map {
                let next = match op {
                    "set" => b.set(h, v),
                    "add" => b.add(h, v),
                    _ => b.append(h, v),
                };
                b = match next {
                    Ok(b) => b,
                    Err(e) => {
                        issues.at(spanned, format!("{field}.transform.{what}.{op}.{h}"), e.0);
                        return None;
                    }
                };
            }
        }
        Some(b.build())
    };
    let v = &spanned.value;
    let request = rules(&v.request_headers, "request_headers", issues);
    let response = rules(&v.response_headers, "response_headers", issues);
    Some((request?, response?))
}

/// A route's `transform.path` and `transform.query`; `None` when neither is given (or on error).
fn compile_uri_rewrite(
    field: &str,
    spanned: &serde_saphyr::Spanned<crate::config::TransformConfig>,
    issues: &mut Issues,
) -> Option<gateway_transform::rewrite::Rewrite> {
    use crate::config::{OnNoMatchConfig, PathRewriteConfig};
    use gateway_transform::rewrite::{OnNoMatch, PathRewrite, QueryRules, RegexRewrite, Rewrite};
    let v = &spanned.value;
    let path = match &v.path {
        None => None,
        Some(PathRewriteConfig::Template(t)) => match PathRewrite::template(t) {
            Ok(p) => Some(p),
            Err(e) => {
                issues.at(spanned, format!("{field}.transform.path"), e.to_string());
                return None;
            }
        },
        Some(PathRewriteConfig::Regex {
            regex,
            replace,
            on_no_match,
        }) => {
            let on = match on_no_match {
                OnNoMatchConfig::Keep => OnNoMatch::Keep,
                OnNoMatchConfig::Reject => OnNoMatch::Reject,
            };
            match RegexRewrite::new(regex, replace, on) {
                Ok(r) => Some(PathRewrite::Regex(r)),
                Err(e) => {
                    issues.at(
                        spanned,
                        format!("{field}.transform.path.regex"),
                        e.to_string(),
                    );
                    return None;
                }
            }
        }
    };
    let q = &v.query;
    let mut b = QueryRules::builder();
    let mut failed = None;
    let mut step =
        |name: String,
         r: Result<
            gateway_transform::rewrite::QueryRulesBuilder,
            gateway_transform::rewrite::RewriteError,
        >,
         b: &mut Option<gateway_transform::rewrite::QueryRulesBuilder>| {
            match r {
                Ok(next) => *b = Some(next),
                Err(e) => {
                    failed.get_or_insert((name, e.to_string()));
                }
            }
        };
    let mut cur = Some(b);
    for n in &q.remove {
        if let Some(b) = cur.take() {
            step(format!("remove.{n}"), b.remove(n), &mut cur);
        }
    }
    for (from, to) in &q.rename {
        if let Some(b) = cur.take() {
            step(format!("rename.{from}"), b.rename(from, to), &mut cur);
        }
    }
    for (n, t) in &q.set {
        if let Some(b) = cur.take() {
            step(format!("set.{n}"), b.set(n, t), &mut cur);
        }
    }
    for (n, t) in &q.add {
        if let Some(b) = cur.take() {
            step(format!("add.{n}"), b.add(n, t), &mut cur);
        }
    }
    if let Some(keep) = &q.keep_only
        && let Some(b) = cur.take()
    {
        step(String::from("keep_only"), b.keep_only(keep), &mut cur);
    }
    if let Some((at, e)) = failed {
        issues.at(spanned, format!("{field}.transform.query.{at}"), e);
        return None;
    }
    b = cur?;
    let query = b.build();
    (path.is_some() || !query.is_empty()).then_some(Rewrite { path, query })
}

/// A `transform.request_body` / `transform.response_body` block.
fn compile_body_rules<T>(
    at: &str,
    spanned: &serde_saphyr::Spanned<T>,
    c: &crate::config::BodyTransformConfig,
    issues: &mut Issues,
) -> Option<crate::body::BodyRules> {
    use crate::{body::Convert, config::ConvertConfig};
    let mut b = gateway_transform::json::JsonEdits::builder();
    let fail = |what: String, e: gateway_transform::json::JsonError, issues: &mut Issues| {
        issues.at(spanned, format!("{at}.json.{what}"), e.to_string());
        None::<crate::body::BodyRules>
    };
    for p in &c.json.remove {
        b = match b.remove(p) {
            Ok(b) => b,
            Err(e) => return fail(format!("remove.{p}"), e, issues),
        };
    }
    for (from, to) in &c.json.rename {
        b = match b.rename(from, to) {
            Ok(b) => b,
            Err(e) => return fail(format!("rename.{from}"), e, issues),
        };
    }
    for (p, v) in &c.json.set {
        b = match b.set(p, v.clone()) {
            Ok(b) => b,
            Err(e) => return fail(format!("set.{p}"), e, issues),
        };
    }
    for (p, v) in &c.json.add {
        b = match b.add(p, v.clone()) {
            Ok(b) => b,
            Err(e) => return fail(format!("add.{p}"), e, issues),
        };
    }
    let edits = b.build();
    let convert = c.convert.map(|k| match k {
        ConvertConfig::XmlToJson => Convert::XmlToJson,
        ConvertConfig::JsonToXml => Convert::JsonToXml,
    });
    if edits.is_empty() && convert.is_none() {
        issues.at(spanned, at.to_owned(), "give `json` edits or a `convert`");
        return None;
    }
    let mut to_xml = gateway_transform::xml::JsonToXml::default();
    if let Some(root) = &c.xml_root {
        to_xml.root.clone_from(root);
    }
    let max_bytes = c
        .max_bytes
        .map_or(1024 * 1024, |b| usize::try_from(b.0).unwrap_or(usize::MAX));
    Some(crate::body::BodyRules {
        edits,
        convert,
        to_xml,
        max_bytes,
    })
}

/// A route's `aggregate` block.
fn compile_aggregate(
    field: &str,
    spanned: &serde_saphyr::Spanned<crate::config::AggregateConfig>,
    rc: &crate::config::RouteConfig,
    upstreams: &[Arc<UpstreamSpec>],
    issues: &mut Issues,
) -> Option<crate::router::Aggregation> {
    use gateway_transform::{
        aggregate::{Aggregate, Part, Policy},
        rewrite::{PathRewrite, Rewrite},
    };
    let a = &spanned.value;
    let at = format!("{field}.aggregate");
    if rc.split.is_some() || rc.versions.is_some() || rc.cache.is_some() || !rc.upgrades.is_empty()
    {
        issues.at(
            spanned,
            at,
            "an aggregating route answers itself: it has no `split`, `versions`, `cache` or `upgrades`",
        );
        return None;
    }
    let mut b = Aggregate::builder().policy(match a.on_failure {
        crate::config::AggregateFailureConfig::Fail => Policy::FailWhole,
        crate::config::AggregateFailureConfig::Omit => Policy::OmitFailed,
    });
    if let Some(max) = a.max_bytes {
        b = b.max_body(usize::try_from(max.0).unwrap_or(usize::MAX));
    }
    let mut calls = Vec::new();
    let mut ok = true;
    for (i, p) in a.parts.iter().enumerate() {
        let timeout = p.timeout.map_or(Duration::from_secs(5), |t| t.0);
        b = b.part(Part::new(p.name.clone(), timeout).required(p.required));
        let Some(up) = upstreams.iter().position(|u| u.name == p.upstream) else {
            issues.at(
                spanned,
                format!("{at}.parts[{i}].upstream"),
                format!("unknown upstream `{}`", p.upstream),
            );
            ok = false;
            continue;
        };
        match PathRewrite::template(&p.path) {
            Ok(path) => calls.push((
                up,
                Rewrite {
                    path: Some(path),
                    ..Rewrite::default()
                },
            )),
            Err(e) => {
                issues.at(spanned, format!("{at}.parts[{i}].path"), e.to_string());
                ok = false;
            }
        }
    }
    let aggregate = match b.build() {
        Ok(agg) => agg,
        Err(e) => {
            issues.at(spanned, at, e.to_string());
            return None;
        }
    };
    ok.then_some(crate::router::Aggregation { aggregate, calls })
}

/// A route's `validate` block.
fn compile_validation(
    field: &str,
    spanned: &serde_saphyr::Spanned<crate::config::ValidateConfig>,
    issues: &mut Issues,
) -> Option<crate::body::Validation> {
    use crate::config::ParamInConfig;
    use gateway_transform::validate::{ParamLocation, ParamSpec, Schema};
    let v = &spanned.value;
    let at = format!("{field}.validate");
    let mut ok = true;
    let body = v.body.as_ref().and_then(|s| match Schema::compile(s) {
        Ok(s) => Some(s),
        Err(e) => {
            issues.at(spanned, format!("{at}.body"), e.to_string());
            ok = false;
            None
        }
    });
    let mut params = Vec::new();
    for (i, p) in v.params.iter().enumerate() {
        match Schema::compile(&p.schema) {
            Ok(schema) => {
                let location = match p.location {
                    ParamInConfig::Query => ParamLocation::Query,
                    ParamInConfig::Header => ParamLocation::Header,
                    ParamInConfig::Path => ParamLocation::Path,
                };
                params.push(ParamSpec::new(p.name.clone(), location, schema).required(p.required));
            }
            Err(e) => {
                issues.at(spanned, format!("{at}.params[{i}].schema"), e.to_string());
                ok = false;
            }
        }
    }
    let openapi = match &v.openapi {
        None => None,
        Some(file) => {
            let doc = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read `{file}`: {e}"))
                .and_then(|text| {
                    serde_saphyr::from_str::<serde_json::Value>(&text)
                        .map_err(|e| format!("`{file}` is not JSON or YAML: {e}"))
                })
                .and_then(|doc| {
                    gateway_transform::openapi::OpenApi::from_value(&doc)
                        .map_err(|e| format!("`{file}`: {e}"))
                });
            match doc {
                Ok(api) => Some(api),
                Err(e) => {
                    issues.at(spanned, format!("{at}.openapi"), e);
                    ok = false;
                    None
                }
            }
        }
    };
    if ok && body.is_none() && params.is_empty() && openapi.is_none() {
        issues.at(
            spanned,
            at,
            "give a `body` schema, `params` or an `openapi` document",
        );
        return None;
    }
    let max_bytes = v
        .max_bytes
        .map_or(1024 * 1024, |b| usize::try_from(b.0).unwrap_or(usize::MAX));
    ok.then_some(crate::body::Validation {
        body,
        params,
        openapi,
        max_bytes,
    })
}

/// A route's `versions` block.
fn compile_versions(
    field: &str,
    spanned: &serde_saphyr::Spanned<crate::config::VersionsConfig>,
    rc: &crate::config::RouteConfig,
    upstreams: &[Arc<UpstreamSpec>],
    issues: &mut Issues,
) -> Option<crate::router::Versions> {
    use crate::config::VersionSourceConfig;
    use gateway_transform::version::{VersionSelector, VersionSource};
    let v = &spanned.value;
    let at = format!("{field}.versions");
    if rc.split.is_some() {
        issues.at(
            spanned,
            at,
            "a route has either `versions` or `split`, not both",
        );
        return None;
    }
    let mut b = VersionSelector::builder().versions(v.map.keys().cloned());
    let mut vary: Vec<&str> = Vec::new();
    for (i, source) in v.from.iter().enumerate() {
        let made = match source {
            VersionSourceConfig::Path { pattern, strip } => VersionSource::path(pattern, *strip),
            VersionSourceConfig::Header(name) => {
                vary.push(name);
                VersionSource::header(name)
            }
            VersionSourceConfig::Query(name) => VersionSource::query(name),
            VersionSourceConfig::Accept(pattern) => {
                vary.push("accept");
                VersionSource::accept(pattern)
            }
        };
        match made {
            Ok(s) => b = b.source(s),
            Err(e) => {
                issues.at(spanned, format!("{at}.from[{i}]"), e.to_string());
                return None;
            }
        }
    }
    if let Some(d) = &v.default {
        b = b.default_version(d.clone());
    }
    let selector = match b.build() {
        Ok(s) => s,
        Err(e) => {
            issues.at(spanned, at, e.to_string());
            return None;
        }
    };
    let mut entries = Vec::new();
    for (name, e) in &v.map {
        let upstream = match &e.upstream {
            None => upstreams.iter().position(|u| u.name == rc.upstream.value),
            Some(up) => {
                let found = upstreams.iter().position(|u| u.name == *up);
                if found.is_none() {
                    issues.at(
                        spanned,
                        format!("{at}.map.{name}.upstream"),
                        format!("unknown upstream `{up}`"),
                    );
                }
                found
            }
        };
        let lifecycle_config = crate::config::VersionConfig {
            deprecated_at: e.deprecated_at.clone(),
            sunset_at: e.sunset_at.clone(),
            successor: e.successor.clone(),
            after_sunset: e.after_sunset,
        };
        let has_lifecycle =
            e.deprecated_at.is_some() || e.sunset_at.is_some() || e.successor.is_some();
        let lifecycle = has_lifecycle
            .then(|| {
                compile_lifecycle(
                    &format!("{at}.map.{name}"),
                    &lifecycle_config,
                    spanned,
                    issues,
                )
            })
            .flatten();
        entries.push((name.clone(), upstream?, lifecycle));
    }
    let vary = (!vary.is_empty())
        .then(|| HeaderValue::from_str(&vary.join(", ")).ok())
        .flatten();
    Some(crate::router::Versions {
        selector,
        entries,
        vary,
    })
}

/// A route's `version` block.
fn compile_lifecycle<T>(
    field: &str,
    v: &crate::config::VersionConfig,
    spanned: &serde_saphyr::Spanned<T>,
    issues: &mut Issues,
) -> Option<gateway_transform::lifecycle::Lifecycle> {
    use gateway_transform::lifecycle::{AfterSunset, Lifecycle, parse_date};
    let mut date = |s: &Option<String>, what: &str| match s.as_deref().map(parse_date) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            issues.at(spanned, format!("{field}.{what}"), e);
            None
        }
    };
    let deprecated_at = date(&v.deprecated_at, "deprecated_at");
    let sunset_at = date(&v.sunset_at, "sunset_at");
    if let (Some(d), Some(s)) = (deprecated_at, sunset_at)
        && s < d
    {
        issues.at(
            spanned,
            format!("{field}.sunset_at"),
            "the sunset comes before the deprecation",
        );
    }
    if let Some(next) = &v.successor
        && HeaderValue::from_str(next).is_err()
    {
        issues.at(
            spanned,
            format!("{field}.successor"),
            "not a valid URL or path",
        );
    }
    let after_sunset = match v.after_sunset {
        crate::config::AfterSunsetConfig::Gone => AfterSunset::Gone,
        crate::config::AfterSunsetConfig::Redirect => {
            if v.successor.is_none() {
                issues.at(
                    spanned,
                    format!("{field}.after_sunset"),
                    "`redirect` needs a `successor`",
                );
            }
            AfterSunset::Redirect
        }
    };
    Some(Lifecycle {
        deprecated_at,
        sunset_at,
        successor: v.successor.clone(),
        after_sunset,
    })
}

/// A route's `split` block.
fn compile_split(
    field: &str,
    spanned: &serde_saphyr::Spanned<crate::config::SplitConfig>,
    rest: Option<usize>,
    rest_name: &str,
    upstreams: &[Arc<UpstreamSpec>],
    issues: &mut Issues,
) -> Option<crate::router::Split> {
    use crate::config::StickyConfig;
    use gateway_lb::balance::HashOn;
    let s = &spanned.value;
    let mut buckets = Vec::new();
    let mut upper = 0u32;
    let mut names = vec![(rest_name.to_owned(), rest?)];
    for (i, t) in s.to.iter().enumerate() {
        let Some(idx) = upstreams.iter().position(|u| u.name == t.upstream.value) else {
            issues.at(
                &t.upstream,
                format!("{field}.split.to[{i}].upstream"),
                format!("unknown upstream `{}`", t.upstream.value),
            );
            continue;
        };
        if !(0.0..=1.0).contains(&t.share.0) {
            issues.at(
                &t.upstream,
                format!("{field}.split.to[{i}].share"),
                "a share is between 0% and 100%",
            );
            continue;
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let width = (t.share.0 * f64::from(crate::router::Split::SCALE)).round() as u32;
        upper = upper.saturating_add(width);
        buckets.push((idx, upper));
        names.push((t.upstream.value.clone(), idx));
    }
    if upper > crate::router::Split::SCALE {
        issues.at(
            spanned,
            format!("{field}.split.to"),
            "the shares add up to more than 100%",
        );
    }
    if s.to.is_empty() {
        issues.at(
            spanned,
            format!("{field}.split.to"),
            "name at least one upstream",
        );
    }
    let header = |name: &str, what: &str, issues: &mut Issues| {
        let parsed = HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes());
        if parsed.is_err() {
            issues.at(
                spanned,
                format!("{field}.split.{what}"),
                format!("`{name}` is not a header name"),
            );
        }
        parsed.ok()
    };
    let sticky = match &s.sticky {
        None => None,
        Some(StickyConfig::ClientIp) => Some(HashOn::ClientIp),
        Some(StickyConfig::Cookie(c)) => Some(HashOn::Cookie(c.clone())),
        Some(StickyConfig::Header(h)) => header(h, "sticky.header", issues).map(HashOn::Header),
    };
    let override_header = s
        .override_header
        .as_ref()
        .and_then(|h| header(h, "override_header", issues))
        .map(|h| (h, names));
    Some(crate::router::Split {
        buckets,
        rest: rest?,
        sticky,
        override_header,
        rng: gateway_lb::balance::SeqRng::from_clock(),
    })
}

/// The HTTP cache's store: in memory, or in `state.redis` (keys under `{state.prefix}cache:`).
fn cache_store(config: &Config, issues: &mut Issues) -> Arc<dyn gateway_cache::CacheStore> {
    let memory = || -> Arc<dyn gateway_cache::CacheStore> {
        Arc::new(gateway_cache::MemoryStore::new(
            usize::try_from(config.cache.max_size.0).unwrap_or(usize::MAX),
        ))
    };
    if config.cache.store == crate::config::CacheStoreKind::Memory {
        return memory();
    }
    let Some(url) = &config.state.redis else {
        issues.nowhere("cache.store", "`redis` needs `state.redis`");
        return memory();
    };
    let prefix = format!(
        "{}cache:",
        config.state.prefix.as_deref().unwrap_or("gateway:rl:")
    );
    let timeout = config
        .state
        .timeout
        .map_or(Duration::from_millis(50), |d| d.0);
    match gateway_cache::RedisStore::new(&url.value, &prefix, timeout) {
        Ok(store) => Arc::new(store),
        Err(e) => {
            issues.at(url, "state.redis", e);
            memory()
        }
    }
}

/// Every file the configuration names (certificates, keys, CA bundles, the admin token): a
/// watched reload follows them.
fn named_files(config: &Config) -> Vec<std::path::PathBuf> {
    let mut files: Vec<String> = Vec::new();
    for l in &config.listeners {
        if let Some(t) = &l.value.tls {
            for c in &t.certificates {
                files.extend([c.cert.clone(), c.key.clone()]);
            }
            files.extend(t.client_auth.iter().map(|c| c.ca.clone()));
        }
    }
    for u in config.upstreams.values() {
        files.extend(u.value.endpoints_file.as_ref().map(|f| f.value.clone()));
        if let Some(t) = &u.value.tls {
            let t = &t.value;
            files.extend([&t.ca_file, &t.cert, &t.key].into_iter().flatten().cloned());
        }
    }
    files.extend(config.admin.iter().filter_map(|a| a.token_file.clone()));
    for p in config.auth_providers.values() {
        if let crate::config::AuthProviderConfig::Jwt(j) = &p.value {
            files.extend(j.ca_file.clone());
        }
    }
    files.into_iter().map(std::path::PathBuf::from).collect()
}

/// An upstream's `discovery.dns` block: the registry key, a description, the source, and how
/// long to wait for its first answer.
fn dns_discovery(
    field: &str,
    name: &str,
    spanned: &serde_saphyr::Spanned<crate::config::DiscoveryConfig>,
    issues: &mut Issues,
) -> Option<(String, String, gateway_lb::discover::DnsDiscover, Duration)> {
    use gateway_lb::discover::{
        DnsDiscover, DnsTarget,
        dns::{DnsResolver, Family},
    };
    let d = &spanned.value.dns;
    let at = format!("{field}.discovery.dns");
    let target = match (&d.name, d.port, &d.srv) {
        (Some(name), Some(port), None) => DnsTarget::Host {
            name: name.clone(),
            port,
        },
        (None, None, Some(srv)) => DnsTarget::Srv { name: srv.clone() },
        (Some(_), None, None) => {
            issues.at(spanned, at, "`name` needs a `port`");
            return None;
        }
        _ => {
            issues.at(
                spanned,
                at,
                "give either `name` and `port` (A/AAAA records) or `srv`",
            );
            return None;
        }
    };
    let mut servers = Vec::new();
    for (i, s) in d.servers.iter().enumerate() {
        let parsed = s
            .parse::<std::net::SocketAddr>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()));
        match parsed {
            Ok(addr) => servers.push(addr),
            Err(_) => issues.at(
                spanned,
                format!("{at}.servers[{i}]"),
                format!("`{s}` is not an IP address (with an optional port)"),
            ),
        }
    }
    if servers.len() != d.servers.len() {
        return None;
    }
    let resolver = if servers.is_empty() {
        match DnsResolver::from_system() {
            Ok(r) => r,
            Err(e) => {
                issues.at(spanned, format!("{at}.servers"), e.to_string());
                return None;
            }
        }
    } else {
        DnsResolver::new(servers)
    };
    let timeout = d.timeout.map_or(Duration::from_secs(2), |t| t.0);
    let min_ttl = d.min_ttl.map_or(Duration::from_secs(1), |t| t.0);
    let max_ttl = d.max_ttl.map_or(Duration::from_secs(300), |t| t.0);
    if timeout.is_zero() || min_ttl.is_zero() || min_ttl > max_ttl {
        issues.at(
            spanned,
            at,
            "`timeout` and `min_ttl` must be above zero and `min_ttl` at most `max_ttl`",
        );
        return None;
    }
    // Each server is asked twice per question (and again over TCP when truncated); a host name
    // is two questions (A and AAAA), an SRV name one plus two per target without addresses.
    let wait = (timeout * 8 * u32::try_from(resolver.servers().len()).unwrap_or(u32::MAX))
        .min(Duration::from_secs(30))
        + Duration::from_secs(1);
    let described = match &target {
        DnsTarget::Host { name, port } => format!("dns {name}:{port}"),
        DnsTarget::Srv { name } => format!("srv {name}"),
    };
    // The configured servers, not the ones read from /etc/resolv.conf: the same block is the
    // same follower even if that file changes.
    let key = format!(
        "{name} {described} {:?} {:?} {timeout:?} {min_ttl:?} {max_ttl:?} {}",
        d.family, d.servers, d.https
    );
    let discover = DnsDiscover::new(resolver.timeout(timeout), target)
        .family(match d.family {
            crate::config::FamilyConfig::Any => Family::Any,
            crate::config::FamilyConfig::Ipv4 => Family::V4,
            crate::config::FamilyConfig::Ipv6 => Family::V6,
        })
        .tls(d.https)
        .min_ttl(min_ttl)
        .max_ttl(max_ttl);
    Some((key, described, discover, wait))
}

/// Compiles an upstream's `tls` block.
fn upstream_tls(
    field: &str,
    spanned: &serde_saphyr::Spanned<crate::config::UpstreamTlsConfig>,
    endpoints: &[Endpoint],
    issues: &mut Issues,
) -> Option<gateway_lb::UpstreamTls> {
    let t = &spanned.value;
    let field = format!("{field}.tls");
    if !endpoints.iter().any(Endpoint::is_tls) {
        issues.at(
            spanned,
            &field,
            "no endpoint is https://, so this block would do nothing",
        );
    }
    let read = |key: &str, file: &str, issues: &mut Issues| match std::fs::read(file) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            issues.at(
                spanned,
                format!("{field}.{key}"),
                format!("cannot read `{file}`: {e}"),
            );
            None
        }
    };
    let mut tls = match &t.ca_file {
        None => gateway_lb::UpstreamTls::system_roots(),
        Some(file) => {
            let pem = read("ca_file", file, issues)?;
            match gateway_lb::UpstreamTls::with_roots_pem(&pem) {
                Ok(tls) => tls,
                Err(e) => {
                    issues.at(
                        spanned,
                        format!("{field}.ca_file"),
                        format!("`{file}`: {e}"),
                    );
                    return None;
                }
            }
        }
    };
    match (&t.cert, &t.key) {
        (None, None) => {}
        (Some(cert), Some(key)) => {
            let chain = read("cert", cert, issues)?;
            let key_pem = read("key", key, issues)?;
            match tls.client_auth_pem(&chain, &key_pem) {
                Ok(with) => tls = with,
                Err(e) => {
                    issues.at(spanned, format!("{field}.cert"), e);
                    return None;
                }
            }
        }
        _ => {
            issues.at(spanned, &field, "`cert` and `key` go together");
            return None;
        }
    }
    if let Some(name) = &t.server_name {
        if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
            issues.at(
                spanned,
                format!("{field}.server_name"),
                format!("`{name}` is not a DNS name or IP address"),
            );
        }
        tls = tls.server_name(name.as_str());
    }
    Some(tls)
}

fn retry_layer(r: &crate::config::RetryConfigYaml) -> Result<RetryLayer, String> {
    let mut statuses = Vec::new();
    let (mut timeout, mut reset) = (false, false);
    for token in &r.on {
        match token.as_str() {
            "connect_error" => {}
            "timeout" => timeout = true,
            "reset" => reset = true,
            code => match code
                .parse::<u16>()
                .ok()
                .and_then(|c| http::StatusCode::from_u16(c).ok())
            {
                Some(status) => statuses.push(status),
                None => {
                    return Err(format!(
                        "`{token}`: expected a status code, `timeout`, `reset` or `connect_error`"
                    ));
                }
            },
        }
    }
    let mut config = RetryConfig::default()
        .attempts(r.attempts)
        .budget(r.budget.0 as f32, r.min_per_sec, Duration::from_secs(10))
        .backoff(r.backoff.0, r.max_backoff.0)
        .on_statuses(statuses)
        .on_timeouts_and_resets(timeout, reset)
        .retry_after_cap(r.retry_after_cap.0)
        .max_body_bytes(r.max_body_bytes.0);
    if let Some(deadline) = r.deadline {
        config = config.deadline(deadline.0);
    }
    Ok(RetryLayer::new(config))
}

fn breaker_layer(b: &crate::config::BreakerConfig) -> CircuitBreakerLayer {
    CircuitBreakerLayer::new(breaker_config(b))
        .classifier(DefaultClassifier::new().rate_limited_is_failure(b.rate_limited_is_failure))
}

fn breaker_config(b: &crate::config::BreakerConfig) -> CircuitBreakerConfig {
    let mut config = CircuitBreakerConfig::default()
        .window(match b.window {
            WindowConfig::Calls(n) => Window::Count(n),
            WindowConfig::Time(d) => Window::Time(d),
        })
        .minimum_calls(b.minimum_calls)
        .failure_rate(b.failure_rate.0)
        .open_for(b.open_for.0)
        .backoff(2.0, b.max_open_for.0)
        .half_open_probes(b.half_open_probes);
    if let Some(slow) = b.slow_call_duration {
        config = config.slow_calls(slow.0, b.slow_call_rate.0);
    }
    if let Some(n) = b.consecutive_failures {
        config = config.consecutive_failures(n);
    }
    config
}

fn check_rewrite_target(r: &serde_saphyr::Spanned<String>, field: &str, issues: &mut Issues) {
    if !r.value.is_empty()
        && let Some(problem) = path_problem(&r.value)
    {
        issues.at(r, format!("{field}.rewrite"), problem);
    }
}

/// Why a path written in the config could never equal a normalized request path, if it could
/// not. `{...}` template parameters count as one ordinary segment.
fn path_problem(path: &str) -> Option<String> {
    if path.contains(['?', '#']) {
        return Some(format!("`{path}`: a path cannot contain '?' or '#'"));
    }
    let mut plain = String::with_capacity(path.len());
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => in_param = true,
            '}' if in_param => {
                in_param = false;
                plain.push('x');
            }
            _ if in_param => {}
            c => plain.push(c),
        }
    }
    match gateway_core::normalize_path(&plain) {
        Ok(n) if n == plain => None,
        Ok(n) => Some(format!(
            "`{path}` is not normalized (requests are matched on `{n}`)"
        )),
        Err(e) => Some(format!("`{path}`: {e}")),
    }
}

/// Checks limits and timeouts that would make the gateway misbehave rather than just be strict.
fn check_limits(config: &Config, issues: &mut Issues) {
    let l = &config.limits;
    for (name, d) in [
        ("limits.header_read_timeout", l.header_read_timeout.0),
        ("limits.idle_timeout", l.idle_timeout.0),
    ] {
        if d.is_zero() {
            issues.nowhere(name, "must be greater than zero");
        }
    }
    for (name, n) in [
        ("limits.max_headers", l.max_headers),
        ("limits.max_connections", l.max_connections),
        (
            "limits.max_concurrent_streams",
            l.max_concurrent_streams as usize,
        ),
    ] {
        if n == 0 {
            issues.nowhere(name, "must be at least 1");
        }
    }
    if l.max_connections > Semaphore::MAX_PERMITS {
        issues.nowhere("limits.max_connections", "is too large");
    }
    if config.workers.is_some_and(|w| w > 1024) {
        issues.nowhere("workers", "at most 1024");
    }
    for (name, spanned) in &config.upstreams {
        let t = &spanned.value.timeouts;
        if t.connect.0.is_zero()
            || t.request.0.is_zero()
            || t.body.is_some_and(|d| d.0.is_zero())
            || t.total.is_some_and(|d| d.0.is_zero())
        {
            issues.at(
                spanned,
                format!("upstreams.{name}.timeouts"),
                "timeouts must be greater than zero",
            );
        }
    }
}

/// An upstream's `balance`, `panic_threshold`, `slow_start`, `health` and `outlier` blocks.
fn balancing(
    field: &str,
    spanned: &serde_saphyr::Spanned<crate::config::UpstreamConfig>,
    builder: UpstreamBuilder,
    weights: Vec<u32>,
    issues: &mut Issues,
) -> UpstreamBuilder {
    use crate::config::{BalanceConfig as B, HashConfig as H};
    use gateway_lb::balance::{Balance, HashOn};
    use gateway_lb::health::{CheckKind, HealthCheck, OutlierDetection, SuccessRate};
    let up = &spanned.value;
    let balance = match &up.balance {
        B::RoundRobin => Balance::RoundRobin,
        B::WeightedRoundRobin => Balance::WeightedRoundRobin,
        B::Random => Balance::Random,
        B::LeastRequest => Balance::LeastRequest,
        B::PeakEwma => Balance::PeakEwma,
        B::LeastConnections => Balance::LeastConnections,
        B::Hash(H::ClientIp) => Balance::Hash(HashOn::ClientIp),
        B::Hash(H::Path) => Balance::Hash(HashOn::Path),
        B::Hash(H::Cookie(name)) => Balance::Hash(HashOn::Cookie(name.clone())),
        B::Hash(H::Header(name)) => {
            match HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes()) {
                Ok(h) => Balance::Hash(HashOn::Header(h)),
                Err(_) => {
                    issues.at(
                        spanned,
                        format!("{field}.balance.hash.header"),
                        format!("`{name}` is not a header name"),
                    );
                    Balance::RoundRobin
                }
            }
        }
    };
    let health = up.health.as_ref().map(|h| {
        let v = &h.value;
        let mut expect = Vec::new();
        for e in &v.expect {
            let (lo, hi) = e.split_once('-').unwrap_or((e, e));
            match (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) {
                (Ok(lo), Ok(hi)) if (100..=599).contains(&lo) && lo <= hi && hi <= 599 => {
                    expect.push(lo..=hi);
                }
                _ => issues.at(
                    h,
                    format!("{field}.health.expect"),
                    format!("`{e}`: expected a status or a range like 200-299"),
                ),
            }
        }
        if let Some(path) = &v.path
            && !path.starts_with('/')
        {
            issues.at(h, format!("{field}.health.path"), "must start with `/`");
        }
        let defaults = HealthCheck::default();
        let check = HealthCheck {
            kind: match &v.path {
                Some(path) => CheckKind::Http {
                    path: path.clone(),
                    expect,
                },
                None => CheckKind::Tcp,
            },
            interval: v.interval.map_or(defaults.interval, |d| d.0),
            timeout: v.timeout.map_or(defaults.timeout, |d| d.0),
            healthy_threshold: v.healthy_threshold.unwrap_or(defaults.healthy_threshold),
            unhealthy_threshold: v
                .unhealthy_threshold
                .unwrap_or(defaults.unhealthy_threshold),
            jitter: v.jitter.map_or(defaults.jitter, |r| r.0),
        };
        if check.interval.is_zero() || check.timeout.is_zero() {
            issues.at(
                h,
                format!("{field}.health"),
                "interval and timeout must be greater than zero",
            );
        }
        check
    });
    let outlier = up.outlier.as_ref().map(|o| {
        let v = &o.value;
        let d = OutlierDetection::default();
        let count = |n: Option<u32>, default: Option<u32>| match n {
            Some(0) => None,
            Some(n) => Some(n),
            None => default,
        };
        let success_rate = v.success_rate.as_ref().map(|r| {
            let d = SuccessRate::default();
            SuccessRate {
                interval: r.interval.map_or(d.interval, |i| i.0),
                min_requests: r.min_requests.unwrap_or(d.min_requests),
                min_endpoints: r.min_endpoints.unwrap_or(d.min_endpoints),
                stdev_factor: r.stdev_factor.unwrap_or(d.stdev_factor),
            }
        });
        if success_rate.as_ref().is_some_and(|r| r.interval.is_zero()) {
            issues.at(
                o,
                format!("{field}.outlier.success_rate.interval"),
                "must be greater than zero",
            );
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let percent = v.max_ejection_percent.map_or(d.max_ejection_percent, |r| {
            (r.0 * 100.0).round().clamp(0.0, 100.0) as u8
        });
        OutlierDetection {
            consecutive_5xx: count(v.consecutive_5xx, d.consecutive_5xx),
            consecutive_gateway_errors: count(
                v.consecutive_gateway_errors,
                d.consecutive_gateway_errors,
            ),
            base_ejection: v.base_ejection.map_or(d.base_ejection, |x| x.0),
            max_ejection: v.max_ejection.map_or(d.max_ejection, |x| x.0),
            max_ejection_percent: percent,
            success_rate,
        }
    });
    let sticky = up.sticky.as_ref().and_then(|s| {
        let name = s.value.cookie.trim();
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            issues.at(
                s,
                format!("{field}.sticky.cookie"),
                format!("`{name}` is not a cookie name"),
            );
            return None;
        }
        Some(gateway_lb::balance::StickyCookie {
            name: name.to_owned(),
            max_age: s.value.max_age.map(|d| d.0),
        })
    });
    builder
        .sticky_cookie(sticky)
        .balance(balance)
        .weights(weights)
        .panic_threshold(up.panic_threshold.map_or(0.5, |r| r.0))
        .slow_start(up.slow_start.map(|d| d.0))
        .health_check(health)
        .outlier_detection(outlier)
}
