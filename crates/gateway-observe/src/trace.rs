//! Traces: a server span per request (named `{METHOD} {route}`, OpenTelemetry HTTP attributes,
//! ended when the response body ends), W3C `traceparent` extracted (when trusted) and passed on,
//! parent-based ratio sampling, and an OTLP/HTTP exporter (JSON encoding) that runs on a thread
//! of its own: a slow or dead collector only drops spans, and counts them.
//!
//! Client spans, one per upstream attempt, are made by `gateway-lb`'s `Upstream` from the
//! [`ActiveTrace`] this puts in the request's extensions.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, SystemTime},
};

use gateway_core::trace::{
    ActiveTrace, AttributeValue, SpanKind, SpanRecord, SpanRecorder, TraceContext, new_span_id,
    new_trace_id,
};

/// Trace settings.
#[derive(Clone)]
pub struct Tracer {
    pub(crate) recorder: Arc<dyn SpanRecorder>,
    ratio: f64,
    trust_inbound: bool,
    b3: bool,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("ratio", &self.ratio)
            .field("trust_inbound", &self.trust_inbound)
            .finish_non_exhaustive()
    }
}

impl Tracer {
    /// Spans go to `recorder` (an [`OtlpExporter`], say). Defaults: every trace sampled, inbound
    /// context not trusted.
    pub fn new(recorder: Arc<dyn SpanRecorder>) -> Self {
        Self {
            recorder,
            ratio: 1.0,
            trust_inbound: false,
            b3: false,
        }
    }

    /// Also read B3 context (when trusted, after `traceparent`) and send the `b3` header upstream.
    #[must_use]
    pub fn b3(mut self, yes: bool) -> Self {
        self.b3 = yes;
        self
    }

    /// The share of new traces recorded (0.0 to 1.0); a trusted inbound parent's decision is
    /// followed instead (parent-based sampling).
    #[must_use]
    pub fn sample_ratio(mut self, ratio: f64) -> Self {
        self.ratio = ratio.clamp(0.0, 1.0);
        self
    }

    /// Continue the client's trace (its `traceparent`), for a gateway behind your own services.
    /// Untrusted (the default), inbound `traceparent`, `tracestate`, `baggage` and B3 headers are
    /// ignored and removed, and every request starts a new trace. A request's
    /// [`TrustTraceContext`](gateway_core::trace::TrustTraceContext) extension overrides this
    /// (per listener).
    #[must_use]
    pub fn trust_inbound(mut self, yes: bool) -> Self {
        self.trust_inbound = yes;
        self
    }

    /// Starts the server span of a request with these headers.
    pub(crate) fn start(&self, headers: &mut http::HeaderMap, trust: Option<bool>) -> ServerSpan {
        let parent = if trust.unwrap_or(self.trust_inbound) {
            headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .and_then(TraceContext::parse)
                .or_else(|| self.b3.then(|| TraceContext::from_b3(headers)).flatten())
        } else {
            for h in gateway_core::trace::CONTEXT_HEADERS {
                headers.remove(*h);
            }
            None
        };
        let trace_id = parent.map_or_else(new_trace_id, |p| p.trace_id);
        let sampled = parent.map_or_else(|| sample(trace_id, self.ratio), |p| p.sampled);
        ServerSpan {
            context: TraceContext {
                trace_id,
                span_id: new_span_id(),
                sampled,
            },
            parent_span_id: parent.map(|p| p.span_id),
            start: SystemTime::now(),
        }
    }

    pub(crate) fn active(&self, span: &ServerSpan) -> ActiveTrace {
        ActiveTrace {
            context: span.context,
            recorder: self.recorder.clone(),
            b3: self.b3,
        }
    }
}

/// The ratio decision from the trace id's low bits (the same everywhere for one trace).
fn sample(trace_id: u128, ratio: f64) -> bool {
    #[allow(clippy::cast_precision_loss)]
    let draw = (trace_id as u64 >> 11) as f64 / (1u64 << 53) as f64;
    draw < ratio
}

/// A request's server span, until it ends.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ServerSpan {
    pub(crate) context: TraceContext,
    pub(crate) parent_span_id: Option<u64>,
    pub(crate) start: SystemTime,
}

/// Counters of an [`OtlpExporter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Spans the collector accepted.
    pub exported: u64,
    /// Spans dropped: the queue was full or an export failed.
    pub dropped: u64,
}

/// Sends spans to an OpenTelemetry collector over OTLP/HTTP with JSON encoding
/// (`POST {endpoint}/v1/traces`), in batches (512 spans, or what arrived within a second), from
/// a thread of its own. Recording never blocks: beyond the queue, spans are dropped and counted.
#[derive(Debug)]
pub struct OtlpExporter {
    tx: mpsc::SyncSender<SpanRecord>,
    stats: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    exported: AtomicU64,
    dropped: AtomicU64,
}

impl OtlpExporter {
    /// Starts exporting to `endpoint` (`http://host:4318`) as service `service_name`.
    ///
    /// # Errors
    ///
    /// When the endpoint is not `http://host:port`, or the thread cannot start.
    pub fn start(endpoint: &str, service_name: &str, queue: usize) -> std::io::Result<Arc<Self>> {
        let authority = authority(endpoint)?;
        let (tx, rx) = mpsc::sync_channel::<SpanRecord>(queue.max(1));
        let stats = Arc::new(Counters::default());
        let counters = stats.clone();
        let service = service_name.to_owned();
        std::thread::Builder::new()
            .name("gateway-otlp".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    let deadline = SystemTime::now() + Duration::from_secs(1);
                    while batch.len() < 512 {
                        let left = deadline
                            .duration_since(SystemTime::now())
                            .unwrap_or_default();
                        match rx.recv_timeout(left) {
                            Ok(span) => batch.push(span),
                            Err(_) => break,
                        }
                    }
                    let n = batch.len() as u64;
                    match post(&authority, "/v1/traces", &encode(&service, &batch)) {
                        Ok(()) => counters.exported.fetch_add(n, Ordering::Relaxed),
                        Err(e) => {
                            tracing::debug!(error = %e, spans = n, "OTLP export failed; spans dropped");
                            counters.dropped.fetch_add(n, Ordering::Relaxed)
                        }
                    };
                }
            })?;
        Ok(Arc::new(Self { tx, stats }))
    }

    /// Spans exported and dropped so far.
    pub fn stats(&self) -> ExportStats {
        ExportStats {
            exported: self.stats.exported.load(Ordering::Relaxed),
            dropped: self.stats.dropped.load(Ordering::Relaxed),
        }
    }
}

impl SpanRecorder for OtlpExporter {
    fn record(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The `host:port` of an `http://host:port` OTLP endpoint.
pub(crate) fn authority(endpoint: &str) -> std::io::Result<String> {
    endpoint
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|a| !a.is_empty() && !a.contains('/') && !a.contains('@'))
        .map(str::to_owned)
        .ok_or_else(|| std::io::Error::other("the OTLP endpoint must be http://host:port"))
}

/// One blocking POST with short timeouts; `Ok` on a 2xx answer.
pub(crate) fn post(authority: &str, path: &str, body: &str) -> std::io::Result<()> {
    let addr: SocketAddr = authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("the OTLP endpoint does not resolve"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    if head.starts_with(b"HTTP/1.1 2") || head.starts_with(b"HTTP/1.0 2") {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "collector answered {}",
            String::from_utf8_lossy(&head[9..12])
        )))
    }
}

/// The OTLP/JSON `ExportTraceServiceRequest` for `spans`.
fn encode(service: &str, spans: &[SpanRecord]) -> String {
    let json_str = |s: &str| serde_json::Value::from(s).to_string();
    let mut out = String::with_capacity(256 + spans.len() * 512);
    let _ = write!(
        out,
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":{}}}}}]}},"scopeSpans":[{{"scope":{{"name":"gateway-observe"}},"spans":["#,
        json_str(service)
    );
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let nanos = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        };
        let _ = write!(
            out,
            r#"{{"traceId":"{:032x}","spanId":"{:016x}","#,
            s.context.trace_id, s.context.span_id
        );
        if let Some(p) = s.parent_span_id {
            let _ = write!(out, r#""parentSpanId":"{p:016x}","#);
        }
        let _ = write!(
            out,
            r#""name":{},"kind":{},"startTimeUnixNano":"{}","endTimeUnixNano":"{}","attributes":["#,
            json_str(&s.name),
            match s.kind {
                SpanKind::Server => 2,
                SpanKind::Client => 3,
            },
            nanos(s.start),
            nanos(s.end)
        );
        for (j, (k, v)) in s.attributes.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            let value = match v {
                AttributeValue::Str(x) => format!(r#"{{"stringValue":{}}}"#, json_str(x)),
                AttributeValue::Int(x) => format!(r#"{{"intValue":"{x}"}}"#),
                AttributeValue::Bool(x) => format!(r#"{{"boolValue":{x}}}"#),
            };
            let _ = write!(out, r#"{{"key":{},"value":{value}}}"#, json_str(k));
        }
        let _ = write!(
            out,
            r#"],"status":{{"code":{}}}}}"#,
            if s.error { 2 } else { 0 }
        );
    }
    out.push_str("]}]}]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_sampling_is_per_trace_and_roughly_the_ratio() {
        let kept = (0..10_000u128)
            .filter(|i| {
                sample(
                    i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835),
                    0.25,
                )
            })
            .count();
        assert!((2_000..3_000).contains(&kept), "{kept}");
        assert!(!sample(12345, 0.0));
        assert!(sample(12345, 1.0));
    }

    #[test]
    fn otlp_json_is_valid_and_carries_links() {
        let span = SpanRecord {
            context: TraceContext {
                trace_id: 0xabc,
                span_id: 0x12,
                sampled: true,
            },
            parent_span_id: Some(0x34),
            name: String::from("GET \"orders\""),
            kind: SpanKind::Server,
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH + Duration::from_millis(5),
            attributes: vec![
                ("http.route", AttributeValue::Str(String::from("orders"))),
                ("http.response.status_code", AttributeValue::Int(200)),
            ],
            error: false,
        };
        let v: serde_json::Value = serde_json::from_str(&encode("gw", &[span])).unwrap();
        let s = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "00000000000000000000000000000abc");
        assert_eq!(s["parentSpanId"], "0000000000000034");
        assert_eq!(s["name"], "GET \"orders\"");
        assert_eq!(s["endTimeUnixNano"], "5000000");
        assert_eq!(s["attributes"][1]["value"]["intValue"], "200");
    }
}
