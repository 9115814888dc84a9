//! OTLP export of [`HttpMetrics`]: every interval, the current values are sent to a collector
//! over OTLP/HTTP (JSON encoding, `POST {endpoint}/v1/metrics`) as cumulative sums, gauges and
//! explicit-bucket histograms, under their OpenTelemetry names (`http.server.request.duration`,
//! attribute `http.route`, ...). A thread of its own does it; a dead collector only costs the
//! export, which is counted.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use crate::{HttpMetrics, trace::post};

/// Counters of an [`OtlpMetricsExporter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsExportStats {
    /// Exports the collector accepted.
    pub exported: u64,
    /// Exports that failed (their values are sent again, cumulative, next time).
    pub failed: u64,
}

/// Pushes [`HttpMetrics`] to an OTLP/HTTP collector every interval.
#[derive(Debug)]
pub struct OtlpMetricsExporter {
    exported: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl OtlpMetricsExporter {
    /// Starts exporting `metrics` to `endpoint` (`http://host:4318`) every `interval`.
    ///
    /// # Errors
    ///
    /// When the endpoint is not `http://host:port`, or the thread cannot start.
    pub fn start(
        endpoint: &str,
        service_name: &str,
        interval: Duration,
        metrics: HttpMetrics,
    ) -> std::io::Result<Arc<Self>> {
        let authority = crate::trace::authority(endpoint)?;
        let exported = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (ok, bad) = (exported.clone(), failed.clone());
        let service = service_name.to_owned();
        let started = SystemTime::now();
        std::thread::Builder::new()
            .name("gateway-otlp-metrics".into())
            .spawn(move || {
                loop {
                    park(interval);
                    let body = encode(&service, &metrics.encode(), started, SystemTime::now());
                    match post(&authority, "/v1/metrics", &body) {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            tracing::debug!(error = %e, "OTLP metrics export failed");
                            bad.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })?;
        Ok(Arc::new(Self { exported, failed }))
    }

    /// Exports so far.
    pub fn stats(&self) -> MetricsExportStats {
        MetricsExportStats {
            exported: self.exported.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// Waits `d` on this thread (a dedicated exporter thread, never a runtime worker).
fn park(d: Duration) {
    let until = SystemTime::now() + d;
    while let Ok(left) = until.duration_since(SystemTime::now()) {
        if left.is_zero() {
            break;
        }
        std::thread::park_timeout(left);
    }
}

/// OpenTelemetry names of the Prometheus names this crate registers.
fn otel_name(prom: &str) -> (String, &'static str) {
    match prom {
        "http_server_request_duration_seconds" => ("http.server.request.duration".into(), "s"),
        "http_client_request_duration_seconds" => ("http.client.request.duration".into(), "s"),
        "http_server_request_body_size_bytes" => ("http.server.request.body.size".into(), "By"),
        "http_server_response_body_size_bytes" => ("http.server.response.body.size".into(), "By"),
        "http_server_active_requests" => ("http.server.active_requests".into(), "{request}"),
        other => (other.trim_end_matches("_total").to_owned(), ""),
    }
}

fn otel_label(prom: &str) -> &str {
    match prom {
        "http_request_method" => "http.request.method",
        "http_response_status_code" => "http.response.status_code",
        "http_route" => "http.route",
        "server_address" => "server.address",
        other => other,
    }
}

/// `{a="x",b="y"}` into pairs (OpenMetrics escapes `\\`, `\"`, `\n`).
fn labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',').trim().to_owned();
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = rest.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = eq + 2 + i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key, value));
        rest = &rest[end.min(rest.len())..];
    }
    out
}

#[derive(Default)]
struct Family {
    kind: String,
    /// Series by their labels (without `le`): value, or histogram (bounds, cumulative counts,
    /// sum, count).
    series: BTreeMap<Vec<(String, String)>, Series>,
}

#[derive(Default)]
struct Series {
    value: f64,
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

/// The OTLP/JSON `ExportMetricsServiceRequest` for an OpenMetrics exposition.
fn encode(service: &str, text: &str, start: SystemTime, now: SystemTime) -> String {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut p = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (p.next(), p.next()) {
                families.entry(name.to_owned()).or_default().kind = kind.to_owned();
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((head, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, label_text) = match head.find('{') {
            Some(i) => (&head[..i], &head[i + 1..head.len() - 1]),
            None => (head, ""),
        };
        let mut ls = labels(label_text);
        let (family, part) = [("_bucket", 1), ("_sum", 2), ("_count", 3), ("_total", 4)]
            .iter()
            .find_map(|(suffix, part)| {
                let base = name.strip_suffix(suffix)?;
                families.contains_key(base).then_some((base, *part))
            })
            .unwrap_or((name, 0));
        let le = ls
            .iter()
            .position(|(k, _)| k == "le")
            .map(|i| ls.remove(i).1);
        let Some(f) = families.get_mut(family) else {
            continue;
        };
        let s = f.series.entry(ls).or_default();
        match part {
            1 => {
                let bound = le.map_or(f64::INFINITY, |l| l.parse().unwrap_or(f64::INFINITY));
                s.buckets.push((bound, value));
            }
            2 => s.sum = value,
            3 => s.count = value,
            _ => s.value = value,
        }
    }
    let nanos = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    };
    let (start, now) = (nanos(start), nanos(now));
    let json_str = |s: &str| serde_json::Value::from(s).to_string();
    let mut out = String::new();
    let _ = write!(
        out,
        r#"{{"resourceMetrics":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":{}}}}}]}},"scopeMetrics":[{{"scope":{{"name":"gateway-observe"}},"metrics":["#,
        json_str(service)
    );
    let mut first_metric = true;
    for (prom, f) in &families {
        if f.series.is_empty() {
            continue;
        }
        let (name, unit) = otel_name(prom);
        if !first_metric {
            out.push(',');
        }
        first_metric = false;
        let _ = write!(
            out,
            r#"{{"name":{},"unit":{},"#,
            json_str(&name),
            json_str(unit)
        );
        let attrs = |ls: &Vec<(String, String)>| {
            let items: Vec<String> = ls
                .iter()
                .map(|(k, v)| {
                    format!(
                        r#"{{"key":{},"value":{{"stringValue":{}}}}}"#,
                        json_str(otel_label(k)),
                        json_str(v)
                    )
                })
                .collect();
            format!("[{}]", items.join(","))
        };
        let points: Vec<String> = f
            .series
            .iter()
            .map(|(ls, s)| match f.kind.as_str() {
                "histogram" => {
                    let mut buckets = s.buckets.clone();
                    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                    let bounds: Vec<String> = buckets
                        .iter()
                        .filter(|(b, _)| b.is_finite())
                        .map(|(b, _)| format!("{b}"))
                        .collect();
                    // Cumulative counts per upper bound into counts per bucket.
                    let mut prev = 0.0;
                    let counts: Vec<String> = buckets
                        .iter()
                        .map(|(_, c)| {
                            let n = c - prev;
                            prev = *c;
                            format!(r#""{n:.0}""#)
                        })
                        .collect();
                    format!(
                        r#"{{"attributes":{},"startTimeUnixNano":"{start}","timeUnixNano":"{now}","count":"{:.0}","sum":{},"bucketCounts":[{}],"explicitBounds":[{}]}}"#,
                        attrs(ls),
                        s.count,
                        s.sum,
                        counts.join(","),
                        bounds.join(",")
                    )
                }
                _ => format!(
                    r#"{{"attributes":{},"startTimeUnixNano":"{start}","timeUnixNano":"{now}","asDouble":{}}}"#,
                    attrs(ls),
                    s.value
                ),
            })
            .collect();
        let points = points.join(",");
        let _ = match f.kind.as_str() {
            "histogram" => write!(
                out,
                r#""histogram":{{"aggregationTemporality":2,"dataPoints":[{points}]}}}}"#
            ),
            "counter" => write!(
                out,
                r#""sum":{{"aggregationTemporality":2,"isMonotonic":true,"dataPoints":[{points}]}}}}"#
            ),
            _ => write!(out, r#""gauge":{{"dataPoints":[{points}]}}}}"#),
        };
    }
    out.push_str("]}]}]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exposition_becomes_otlp_json() {
        let text = "# HELP http_server_request_duration_seconds d.\n# TYPE http_server_request_duration_seconds histogram\n# UNIT http_server_request_duration_seconds seconds\nhttp_server_request_duration_seconds_sum{http_request_method=\"GET\",http_route=\"a \\\"b\\\"\"} 0.5\nhttp_server_request_duration_seconds_count{http_request_method=\"GET\",http_route=\"a \\\"b\\\"\"} 3\nhttp_server_request_duration_seconds_bucket{le=\"0.1\",http_request_method=\"GET\",http_route=\"a \\\"b\\\"\"} 1\nhttp_server_request_duration_seconds_bucket{le=\"1.0\",http_request_method=\"GET\",http_route=\"a \\\"b\\\"\"} 3\nhttp_server_request_duration_seconds_bucket{le=\"+Inf\",http_request_method=\"GET\",http_route=\"a \\\"b\\\"\"} 3\n# TYPE gateway_rejections counter\ngateway_rejections_total{reason=\"no_route\",http_route=\"unmatched\"} 7\n# EOF\n";
        let v: serde_json::Value = serde_json::from_str(&encode(
            "gw",
            text,
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH,
        ))
        .unwrap();
        let metrics = &v["resourceMetrics"][0]["scopeMetrics"][0]["metrics"];
        let rejections = &metrics[0];
        assert_eq!(rejections["name"], "gateway_rejections");
        assert_eq!(rejections["sum"]["dataPoints"][0]["asDouble"], 7.0);
        let h = &metrics[1];
        assert_eq!(h["name"], "http.server.request.duration");
        assert_eq!(h["unit"], "s");
        let p = &h["histogram"]["dataPoints"][0];
        assert_eq!(p["count"], "3");
        assert_eq!(p["bucketCounts"], serde_json::json!(["1", "2", "0"]));
        let bounds: Vec<f64> = p["explicitBounds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_f64().unwrap())
            .collect();
        assert_eq!(bounds, [0.1, 1.0]);
        let route = p["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == "http.route")
            .unwrap();
        assert_eq!(route["value"]["stringValue"], "a \"b\"");
    }
}
