//! Compiling the `observe` block, and the observer the server runs with (built once at start:
//! metrics continue across reloads, and `observe` changes need a restart).

use std::time::Duration;

use gateway_observe::{
    AccessLog, AccessLogConfig, HttpMetrics, LogFormat, LogSink, MetricsConfig, Observer,
    OtlpExporter, RequestIds, Tracer,
    prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge},
};
use http::HeaderName;

use crate::config::{Config, Issues};

/// The validated `observe` block.
#[derive(Clone, Debug)]
pub(crate) struct ObservePlan {
    header: HeaderName,
    trust_inbound: bool,
    metrics: MetricsConfig,
    metrics_push: Option<(String, Duration)>,
    log: Option<AccessLogConfig>,
    tracing: Option<TracePlan>,
}

#[derive(Clone, Debug)]
struct TracePlan {
    b3: bool,
    endpoint: String,
    ratio: f64,
    trust_inbound: bool,
    service: String,
}

fn header_names(field: &str, names: &[String], issues: &mut Issues) -> Vec<HeaderName> {
    names
        .iter()
        .filter_map(
            |n| match HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()) {
                Ok(h) => Some(h),
                Err(_) => {
                    issues.nowhere(field, format!("`{n}` is not a header name"));
                    None
                }
            },
        )
        .collect()
}

fn gateway_observe_endpoint_ok(e: &str) -> bool {
    e.strip_prefix("http://")
        .map(|a| a.trim_end_matches('/'))
        .is_some_and(|a| !a.is_empty() && !a.contains('/') && !a.contains('@'))
}

pub(crate) fn compile(config: &Config, issues: &mut Issues) -> ObservePlan {
    let o = &config.observe;
    let header = match HeaderName::from_bytes(o.request_id.header.to_ascii_lowercase().as_bytes()) {
        Ok(h) => h,
        Err(_) => {
            issues.nowhere(
                "observe.request_id.header",
                format!("`{}` is not a header name", o.request_id.header),
            );
            HeaderName::from_static("x-request-id")
        }
    };
    let mut metrics = MetricsConfig {
        status_class: o.metrics.status_class,
        ..MetricsConfig::default()
    };
    if let Some(b) = &o.metrics.duration_buckets {
        if b.is_empty()
            || b.iter().any(|x| !x.is_finite() || *x <= 0.0)
            || b.windows(2).any(|w| w[0] >= w[1])
        {
            issues.nowhere(
                "observe.metrics.duration_buckets",
                "bounds must be positive, finite and increasing",
            );
        } else {
            metrics.duration_buckets.clone_from(b);
        }
    }
    let log = o.access_log.as_ref().map(|spanned| {
        let l = &spanned.value;
        if !(0.0..=1.0).contains(&l.sample) {
            issues.at(
                spanned,
                "observe.access_log.sample",
                "must be between 0 and 1",
            );
        }
        let routes: Vec<&str> = config
            .routes
            .iter()
            .map(|r| r.value.name.as_str())
            .collect();
        for r in &l.exclude_routes {
            if !routes.contains(&r.as_str()) {
                issues.at(
                    spanned,
                    "observe.access_log.exclude_routes",
                    format!("no route is named `{r}`"),
                );
            }
        }
        AccessLogConfig {
            sink: match l.to.as_str() {
                "stdout" => LogSink::Stdout,
                "stderr" => LogSink::Stderr,
                path => LogSink::File(path.into()),
            },
            format: if l.format == "json" {
                LogFormat::Json
            } else {
                LogFormat::Template(l.format.clone())
            },
            headers: header_names("observe.access_log.headers", &l.headers, issues),
            redact: header_names("observe.access_log.redact", &l.redact, issues),
            exclude_routes: l.exclude_routes.clone(),
            sample: l.sample,
            slower_than: l.slower_than.map(|d| d.0),
            min_status: l.min_status,
            ..AccessLogConfig::default()
        }
    });
    let tracing = o.tracing.as_ref().map(|spanned| {
        let t = &spanned.value;
        if !gateway_observe_endpoint_ok(&t.otlp_endpoint) {
            issues.at(
                spanned,
                "observe.tracing.otlp_endpoint",
                "must be http://host:port (OTLP/HTTP; keep the collector on a private network)",
            );
        }
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            issues.at(
                spanned,
                "observe.tracing.sample_ratio",
                "must be between 0 and 1",
            );
        }
        TracePlan {
            b3: t.b3,
            endpoint: t.otlp_endpoint.clone(),
            ratio: t.sample_ratio,
            trust_inbound: t.trust_inbound,
            service: t.service_name.clone(),
        }
    });
    let metrics_push = o.metrics.otlp_endpoint.as_ref().map(|e| {
        if gateway_observe_endpoint_ok(e) {
            (
                e.clone(),
                o.metrics
                    .otlp_interval
                    .map_or(Duration::from_secs(10), |d| {
                        d.0.max(Duration::from_millis(100))
                    }),
            )
        } else {
            issues.nowhere(
                "observe.metrics.otlp_endpoint",
                "must be http://host:port (OTLP/HTTP)",
            );
            (e.clone(), Duration::from_secs(10))
        }
    });
    ObservePlan {
        header,
        trust_inbound: o.request_id.trust_inbound,
        metrics,
        metrics_push,
        log,
        tracing,
    }
}

/// The gateway's own metrics beside the HTTP ones, updated at each scrape.
#[derive(Debug)]
pub(crate) struct GatewayMetrics {
    pub(crate) reloads: Counter,
    pub(crate) reload_failures: Counter,
    pub(crate) log_dropped: Gauge,
    pub(crate) breaker_open: Family<Vec<(String, String)>, Gauge>,
    pub(crate) breaker_transitions: Family<Vec<(String, String)>, Gauge>,
    pub(crate) endpoint_available: Family<Vec<(String, String)>, Gauge>,
    pub(crate) endpoint_ejections: Family<Vec<(String, String)>, Gauge>,
    pub(crate) endpoint_in_flight: Family<Vec<(String, String)>, Gauge>,
    pub(crate) spans_exported: Gauge,
    pub(crate) spans_dropped: Gauge,
    pub(crate) exporter: Option<std::sync::Arc<OtlpExporter>>,
}

/// Starts the observer (and the access log's writer).
pub(crate) fn build(plan: &ObservePlan) -> std::io::Result<(Observer, GatewayMetrics)> {
    let mut metrics = HttpMetrics::new(&plan.metrics);
    let none = || std::io::Error::other("metrics registry already shared");
    let extra = GatewayMetrics {
        reloads: metrics
            .counter(
                "gateway_config_reloads",
                "Configurations applied by a reload",
            )
            .ok_or_else(none)?,
        reload_failures: metrics
            .counter(
                "gateway_config_reload_failures",
                "Reloads refused (the running configuration stayed)",
            )
            .ok_or_else(none)?,
        log_dropped: metrics
            .gauge(
                "gateway_access_log_dropped",
                "Access log lines dropped because the writer fell behind",
            )
            .ok_or_else(none)?,
        breaker_open: metrics
            .gauge_family(
                "gateway_upstream_breaker_state",
                "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open",
            )
            .ok_or_else(none)?,
        breaker_transitions: metrics
            .gauge_family(
                "gateway_upstream_breaker_transitions",
                "Circuit breaker transitions per upstream and target state, since start (monotonic)",
            )
            .ok_or_else(none)?,
        endpoint_available: metrics
            .gauge_family(
                "gateway_upstream_endpoint_available",
                "1 when the endpoint can be picked (healthy, not ejected, not backing off)",
            )
            .ok_or_else(none)?,
        endpoint_ejections: metrics
            .gauge_family(
                "gateway_upstream_endpoint_ejections",
                "Outlier ejections of the endpoint in its current streak (the next one's multiplier)",
            )
            .ok_or_else(none)?,
        endpoint_in_flight: metrics
            .gauge_family(
                "gateway_upstream_endpoint_in_flight",
                "Requests waiting for the endpoint's response head",
            )
            .ok_or_else(none)?,
        spans_exported: metrics
            .gauge(
                "gateway_otlp_spans_exported",
                "Spans the OTLP collector accepted",
            )
            .ok_or_else(none)?,
        spans_dropped: metrics
            .gauge(
                "gateway_otlp_spans_dropped",
                "Spans dropped (export queue full, or the collector failed)",
            )
            .ok_or_else(none)?,
        exporter: None,
    };
    let mut extra = extra;
    if let Some((endpoint, every)) = &plan.metrics_push {
        gateway_observe::OtlpMetricsExporter::start(endpoint, "gateway", *every, metrics.clone())?;
    }
    let ids = RequestIds::new(plan.header.clone()).trust_inbound(plan.trust_inbound);
    let observer = Observer::new(ids, metrics);
    let observer = match &plan.log {
        None => observer,
        Some(l) => observer.with_access_log(AccessLog::start(l.clone())?),
    };
    let observer = match &plan.tracing {
        None => observer,
        Some(t) => {
            let exporter = OtlpExporter::start(&t.endpoint, &t.service, 8192)?;
            extra.exporter = Some(exporter.clone());
            observer.with_tracing(
                Tracer::new(exporter)
                    .b3(t.b3)
                    .sample_ratio(t.ratio)
                    .trust_inbound(t.trust_inbound),
            )
        }
    };
    Ok((observer, extra))
}
