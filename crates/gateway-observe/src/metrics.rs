//! HTTP server metrics with OpenTelemetry semantic-convention names, exposed as Prometheus
//! (OpenMetrics) text, with labels that can only take bounded values: the route's configured
//! name (`unmatched` when no route matched, never the raw path), the method (unknown methods are
//! `_OTHER`), the status code (or class), and the gateway's rejection reasons.

use std::{borrow::Cow, sync::Arc, time::Duration};

use gateway_core::RejectReason;
use http::Method;
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        gauge::Gauge,
        histogram::Histogram,
    },
    registry::{Registry, Unit},
};

/// A label value shared without copying (route names).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Shared(Arc<str>);

impl EncodeLabelValue for Shared {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, &self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    http_request_method: Cow<'static, str>,
    http_response_status_code: Cow<'static, str>,
    http_route: Shared,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientLabels {
    server_address: Shared,
    http_response_status_code: Cow<'static, str>,
    http_route: Shared,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    provider: Cow<'static, str>,
    reason: Cow<'static, str>,
    http_route: Shared,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: Cow<'static, str>,
    http_route: Shared,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    outcome: Cow<'static, str>,
    http_route: Shared,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    http_request_method: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectionLabels {
    reason: Cow<'static, str>,
    http_route: Shared,
}

#[derive(Clone)]
struct Buckets(Arc<[f64]>);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

/// The OpenTelemetry default buckets for `http.server.request.duration`, in seconds.
pub const DEFAULT_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Body size buckets, in bytes (100 B to 100 MB, ×10).
const SIZE_BUCKETS: &[f64] = &[100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8];

/// The route label of requests no route matched.
pub const UNMATCHED: &str = "unmatched";

/// How metrics are labelled.
#[derive(Clone, Debug)]
pub struct MetricsConfig {
    /// Upper bounds of the request-duration histogram, in seconds.
    pub duration_buckets: Vec<f64>,
    /// Label status codes by class (`2xx`) instead of code (`200`).
    pub status_class: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            duration_buckets: DEFAULT_DURATION_BUCKETS.to_vec(),
            status_class: false,
        }
    }
}

/// What one finished request contributes.
#[derive(Debug)]
pub(crate) struct Sample<'a> {
    pub(crate) method: &'a Method,
    pub(crate) route: Option<&'a Arc<str>>,
    pub(crate) status: u16,
    pub(crate) duration: Duration,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) rejection: Option<RejectReason>,
    pub(crate) upstream: Option<&'a gateway_core::UpstreamCall>,
    pub(crate) rate_limit: Option<gateway_core::RateLimitDecision>,
    pub(crate) cache: Option<gateway_core::CacheOutcome>,
    pub(crate) auth_failure: Option<gateway_core::AuthFailureReason>,
}

/// The metrics of an HTTP server (OpenTelemetry names, bounded labels). Build one, register extra
/// counters with [`HttpMetrics::counter`], then share it (clones share the values).
#[derive(Clone)]
pub struct HttpMetrics {
    registry: Arc<Registry>,
    duration: Family<ServerLabels, Histogram, Buckets>,
    request_size: Family<ServerLabels, Histogram, Buckets>,
    response_size: Family<ServerLabels, Histogram, Buckets>,
    client_duration: Family<ClientLabels, Histogram, Buckets>,
    rate_limit: Family<DecisionLabels, Counter>,
    cache: Family<CacheLabels, Counter>,
    auth_failures: Family<AuthLabels, Counter>,
    rejections: Family<RejectionLabels, Counter>,
    status_class: bool,
    unmatched: Shared,
    /// The active-request gauge of each method label, made once (no label lookup per request).
    active_by_method: Arc<[Gauge]>,
    /// Tells this registry's entries apart in the per-thread handle cache.
    id: u64,
}

/// Method labels, in the order of [`method_index`].
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "_OTHER",
];

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

/// The three server histograms of one (registry, method, status, route), cached per thread so
/// a request costs one cheap hash instead of three `Family` lookups (each a lock and a SipHash
/// of the label set).
#[derive(Clone)]
struct ServerHandles {
    duration: Histogram,
    request_size: Histogram,
    response_size: Histogram,
}

#[derive(PartialEq, Eq, Hash)]
struct HandleKey {
    registry: u64,
    method: u8,
    status: u16,
    route: Arc<str>,
}

/// FNV-1a: the key is a few bytes and never attacker-chosen beyond a route name.
#[derive(Default)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type HandleCache =
    std::collections::HashMap<HandleKey, ServerHandles, std::hash::BuildHasherDefault<Fnv>>;

thread_local! {
    static HANDLES: std::cell::RefCell<HandleCache> = std::cell::RefCell::default();
}

/// Registries made so far (each gets its own id).
static REGISTRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpMetrics")
            .field("status_class", &self.status_class)
            .finish_non_exhaustive()
    }
}

impl HttpMetrics {
    /// The standard HTTP server metrics.
    pub fn new(config: &MetricsConfig) -> Self {
        let mut registry = Registry::default();
        let durations = Buckets(config.duration_buckets.iter().copied().collect());
        let sizes = Buckets(SIZE_BUCKETS.into());
        let duration = Family::new_with_constructor(durations.clone());
        let client_duration = Family::new_with_constructor(durations);
        registry.register_with_unit(
            "http_client_request_duration",
            "Time from sending a request upstream to its response head, for the attempt the client got (OpenTelemetry http.client.request.duration), by endpoint",
            Unit::Seconds,
            client_duration.clone(),
        );
        registry.register_with_unit(
            "http_server_request_duration",
            "Duration of HTTP server requests (OpenTelemetry http.server.request.duration), until the response body ended",
            Unit::Seconds,
            duration.clone(),
        );
        let request_size = Family::new_with_constructor(sizes.clone());
        registry.register_with_unit(
            "http_server_request_body_size",
            "Size of HTTP server request bodies (http.server.request.body.size)",
            Unit::Bytes,
            request_size.clone(),
        );
        let response_size = Family::new_with_constructor(sizes);
        registry.register_with_unit(
            "http_server_response_body_size",
            "Size of HTTP server response bodies (http.server.response.body.size)",
            Unit::Bytes,
            response_size.clone(),
        );
        let active = Family::<MethodLabels, Gauge>::default();
        let active_by_method: Arc<[Gauge]> = METHODS
            .iter()
            .map(|m| {
                active
                    .get_or_create(&MethodLabels {
                        http_request_method: Cow::Borrowed(m),
                    })
                    .clone()
            })
            .collect();
        registry.register(
            "http_server_active_requests",
            "HTTP server requests in flight (http.server.active_requests)",
            active,
        );
        let rate_limit = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "gateway_ratelimit_decisions",
            "Rate-limit decisions by route: allowed, limited, shadow_limited",
            rate_limit.clone(),
        );
        let cache = Family::<CacheLabels, Counter>::default();
        registry.register(
            "gateway_cache_requests",
            "Requests on cached routes by outcome: hit, stale, revalidated, miss, bypass",
            cache.clone(),
        );
        let auth_failures = Family::<AuthLabels, Counter>::default();
        registry.register(
            "gateway_auth_failures",
            "Refused authentications and authorizations by provider and reason",
            auth_failures.clone(),
        );
        let rejections = Family::<RejectionLabels, Counter>::default();
        registry.register(
            "gateway_rejections",
            "Requests the gateway answered itself, by reason",
            rejections.clone(),
        );
        Self {
            registry: Arc::new(registry),
            duration,
            request_size,
            response_size,
            client_duration,
            rate_limit,
            cache,
            auth_failures,
            rejections,
            status_class: config.status_class,
            unmatched: Shared(Arc::from(UNMATCHED)),
            active_by_method,
            id: REGISTRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Registers a counter of your own (`name` without the `_total` suffix). Call before sharing
    /// this value: afterwards the registry is shared and this returns `None`.
    pub fn counter(&mut self, name: &str, help: &str) -> Option<Counter> {
        let registry = Arc::get_mut(&mut self.registry)?;
        let c = Counter::default();
        registry.register(name, help, c.clone());
        Some(c)
    }

    /// Registers a gauge of your own; see [`HttpMetrics::counter`].
    pub fn gauge(&mut self, name: &str, help: &str) -> Option<Gauge> {
        let registry = Arc::get_mut(&mut self.registry)?;
        let g = Gauge::default();
        registry.register(name, help, g.clone());
        Some(g)
    }

    /// Registers a family of gauges labelled by your own (bounded!) label sets, such as
    /// `[("upstream", name)]`; see [`HttpMetrics::counter`].
    pub fn gauge_family(
        &mut self,
        name: &str,
        help: &str,
    ) -> Option<Family<Vec<(String, String)>, Gauge>> {
        let registry = Arc::get_mut(&mut self.registry)?;
        let f = Family::<Vec<(String, String)>, Gauge>::default();
        registry.register(name, help, f.clone());
        Some(f)
    }

    /// Every metric as OpenMetrics text (what Prometheus scrapes; serve it with
    /// [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub(crate) fn started(&self, method: &Method) {
        self.active_by_method[method_index(method)].inc();
    }

    /// The server histograms for these labels, from the per-thread cache when possible.
    fn server_handles(&self, method: &Method, status: u16, route: &Shared) -> ServerHandles {
        let status_key = if self.status_class {
            status / 100
        } else {
            status
        };
        let key = HandleKey {
            registry: self.id,
            method: u8::try_from(method_index(method)).unwrap_or(9),
            status: status_key,
            route: route.0.clone(),
        };
        if let Some(h) = HANDLES.with(|c| c.borrow().get(&key).cloned()) {
            return h;
        }
        let labels = ServerLabels {
            http_request_method: method_label(method),
            http_response_status_code: self.status_label(status),
            http_route: route.clone(),
        };
        let handles = ServerHandles {
            duration: self.duration.get_or_create(&labels).clone(),
            request_size: self.request_size.get_or_create(&labels).clone(),
            response_size: self.response_size.get_or_create(&labels).clone(),
        };
        HANDLES.with(|c| {
            let mut c = c.borrow_mut();
            // Bounded like the label sets themselves; a flood of new routes just starts over.
            if c.len() >= 4096 {
                c.clear();
            }
            c.insert(key, handles.clone());
        });
        handles
    }

    pub(crate) fn finished(&self, s: &Sample<'_>) {
        self.active_by_method[method_index(s.method)].dec();
        let route = s
            .route
            .map_or_else(|| self.unmatched.clone(), |r| Shared(r.clone()));
        let handles = self.server_handles(s.method, s.status, &route);
        handles.duration.observe(s.duration.as_secs_f64());
        #[allow(clippy::cast_precision_loss)]
        {
            handles.request_size.observe(s.bytes_in as f64);
            handles.response_size.observe(s.bytes_out as f64);
        }
        if let Some(call) = s.upstream {
            self.client_duration
                .get_or_create(&ClientLabels {
                    server_address: Shared(call.endpoint.clone()),
                    http_response_status_code: self.status_label(s.status),
                    http_route: route.clone(),
                })
                .observe(call.duration.as_secs_f64());
        }
        if let Some(f) = s.auth_failure {
            self.auth_failures
                .get_or_create(&AuthLabels {
                    provider: Cow::Borrowed(f.provider),
                    reason: Cow::Borrowed(f.reason),
                    http_route: route.clone(),
                })
                .inc();
        }
        if let Some(d) = s.rate_limit {
            self.rate_limit
                .get_or_create(&DecisionLabels {
                    decision: Cow::Borrowed(d.as_str()),
                    http_route: route.clone(),
                })
                .inc();
        }
        if let Some(outcome) = s.cache {
            self.cache
                .get_or_create(&CacheLabels {
                    outcome: Cow::Borrowed(outcome.as_str()),
                    http_route: route.clone(),
                })
                .inc();
        }
        if let Some(reason) = s.rejection {
            self.rejections
                .get_or_create(&RejectionLabels {
                    reason: Cow::Borrowed(reason.as_str()),
                    http_route: route,
                })
                .inc();
        }
    }

    fn status_label(&self, status: u16) -> Cow<'static, str> {
        if self.status_class {
            Cow::Borrowed(match status / 100 {
                1 => "1xx",
                2 => "2xx",
                3 => "3xx",
                4 => "4xx",
                _ => "5xx",
            })
        } else {
            // Made once: a label per request without an allocation.
            static CODES: std::sync::OnceLock<Box<[String]>> = std::sync::OnceLock::new();
            let codes = CODES.get_or_init(|| (0..1000u16).map(|c| c.to_string()).collect());
            match codes.get(usize::from(status)) {
                Some(code) => Cow::Borrowed(code.as_str()),
                None => Cow::Owned(status.to_string()),
            }
        }
    }
}

/// The content type of [`HttpMetrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The method as a bounded label: the standard methods, else `_OTHER`.
fn method_label(m: &Method) -> Cow<'static, str> {
    Cow::Borrowed(match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(route: &'a Arc<str>, status: u16, method: &'a Method) -> Sample<'a> {
        Sample {
            method,
            route: Some(route),
            status,
            duration: Duration::from_millis(3),
            bytes_in: 0,
            bytes_out: 10,
            rejection: None,
            upstream: None,
            rate_limit: None,
            cache: None,
            auth_failure: None,
        }
    }

    fn count(text: &str, labels: &str) -> Option<String> {
        text.lines()
            .find(|l| {
                l.starts_with("http_server_request_duration_seconds_count") && l.contains(labels)
            })
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
    }

    #[test]
    fn cached_handles_never_mix_registries_statuses_or_routes() {
        let (a, b) = (
            HttpMetrics::new(&MetricsConfig::default()),
            HttpMetrics::new(&MetricsConfig {
                status_class: true,
                ..MetricsConfig::default()
            }),
        );
        let (orders, users): (Arc<str>, Arc<str>) = (Arc::from("orders"), Arc::from("users"));
        let get = Method::GET;
        for _ in 0..3 {
            a.finished(&sample(&orders, 200, &get));
        }
        a.finished(&sample(&orders, 404, &get));
        a.finished(&sample(&users, 200, &get));
        b.finished(&sample(&orders, 201, &get));
        b.finished(&sample(&orders, 204, &get));
        let (ta, tb) = (a.encode(), b.encode());
        let code =
            |c: &str, r: &str| format!("http_response_status_code=\"{c}\",http_route=\"{r}\"");
        assert_eq!(count(&ta, &code("200", "orders")).as_deref(), Some("3"));
        assert_eq!(count(&ta, &code("404", "orders")).as_deref(), Some("1"));
        assert_eq!(count(&ta, &code("200", "users")).as_deref(), Some("1"));
        assert_eq!(
            count(&tb, &code("2xx", "orders")).as_deref(),
            Some("2"),
            "{tb}"
        );
        assert_eq!(
            count(&tb, &code("200", "orders")),
            None,
            "no leak from the other registry"
        );
    }
}
