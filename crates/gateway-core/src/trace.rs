//! Trace context shared by the layers that make spans: W3C `traceparent`, the active trace of a
//! request (in its extensions), and finished spans handed to a [`SpanRecorder`].
//!
//! `gateway-observe` starts the server span and records spans; `gateway-lb` makes a client span
//! per upstream attempt (so retries are visible) and propagates `traceparent` to the upstream.
//!
//! ```
//! use gateway_core::trace::TraceContext;
//!
//! let ctx = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
//! assert!(ctx.sampled);
//! let child = ctx.child(0x1234);
//! assert_eq!(child.trace_id, ctx.trace_id);
//! assert_eq!(child.to_traceparent(), "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000001234-01");
//! assert!(TraceContext::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
//! ```

use std::{
    collections::hash_map::RandomState,
    fmt,
    hash::{BuildHasher, Hasher},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

/// The headers that carry trace context: W3C Trace Context and Baggage, and B3 (single and
/// multiple headers). A gateway that does not trust a client's context removes them all.
pub const CONTEXT_HEADERS: &[&str] = &[
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// A position in a trace: the trace, the current span, and whether it is sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The trace id (never all zero).
    pub trace_id: u128,
    /// The span id (never zero).
    pub span_id: u64,
    /// Whether the trace is recorded.
    pub sampled: bool,
}

impl TraceContext {
    /// Parses a version-00 `traceparent` (lower-case hex, non-zero ids); anything else is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let mut parts = s.split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |p: &str, n: usize| {
            p.len() == n
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if version != "00"
            || parts.next().is_some()
            || !hex(trace, 32)
            || !hex(span, 16)
            || !hex(flags, 2)
        {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The `traceparent` value.
    pub fn to_traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }

    /// Parses B3 propagation: the single `b3` header (`{trace}-{span}[-{sampled}[-{parent}]]`)
    /// or the `x-b3-traceid` / `x-b3-spanid` / `x-b3-sampled` headers. 64-bit trace ids are
    /// widened; anything malformed is `None`.
    pub fn from_b3(headers: &http::HeaderMap) -> Option<Self> {
        let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
        let (trace, span, sampled) = match get("b3") {
            Some(single) => {
                let mut p = single.split('-');
                let (t, s) = (p.next()?, p.next()?);
                (t, s, p.next())
            }
            None => (
                get("x-b3-traceid")?,
                get("x-b3-spanid")?,
                get("x-b3-sampled"),
            ),
        };
        let hex = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !(trace.len() == 16 || trace.len() == 32)
            || span.len() != 16
            || !hex(trace)
            || !hex(span)
        {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let sampled = matches!(sampled, Some("1" | "d" | "true"));
        (trace_id != 0 && span_id != 0).then_some(Self {
            trace_id,
            span_id,
            sampled,
        })
    }

    /// The single-header `b3` value.
    pub fn to_b3(&self) -> String {
        format!(
            "{:032x}-{:016x}-{}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }

    /// The context of a child span with id `span_id`.
    #[must_use]
    pub fn child(&self, span_id: u64) -> Self {
        Self { span_id, ..*self }
    }
}

/// New random ids: unique in the process, unpredictable across processes.
pub fn new_span_id() -> u64 {
    loop {
        let id = next_random();
        if id != 0 {
            return id;
        }
    }
}

/// A new random trace id.
pub fn new_trace_id() -> u128 {
    (u128::from(new_span_id()) << 64) | u128::from(next_random())
}

fn next_random() -> u64 {
    static SEED: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = SEED.get_or_init(RandomState::new).build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// Whether a span is the server side of a request or a call the gateway made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// The request the gateway received.
    Server,
    /// A request the gateway sent (one per upstream attempt).
    Client,
}

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttributeValue {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
}

/// A finished span.
#[derive(Clone, Debug)]
pub struct SpanRecord {
    /// The span's own context.
    pub context: TraceContext,
    /// The parent span's id, if any.
    pub parent_span_id: Option<u64>,
    /// The name (`GET orders`).
    pub name: String,
    /// Server or client.
    pub kind: SpanKind,
    /// Start and end.
    pub start: SystemTime,
    /// The end.
    pub end: SystemTime,
    /// Attributes (OpenTelemetry semantic-convention keys).
    pub attributes: Vec<(&'static str, AttributeValue)>,
    /// Whether the span ended in error (a 5xx, a connect failure).
    pub error: bool,
}

/// Receives finished spans (an exporter). Must not block.
pub trait SpanRecorder: Send + Sync + 'static {
    /// Takes a finished span.
    fn record(&self, span: SpanRecord);
}

/// The trace a request belongs to, in its extensions: its current span's context and where
/// finished spans go. Layers that make child spans read it.
#[derive(Clone)]
pub struct ActiveTrace {
    /// The current (server) span's context.
    pub context: TraceContext,
    /// Where spans go.
    pub recorder: Arc<dyn SpanRecorder>,
    /// Also propagate B3 (`b3` single header) to upstreams.
    pub b3: bool,
}

/// In a request's extensions: whether its inbound trace context may be continued, overriding the
/// tracer's setting (a server sets it per listener).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrustTraceContext(pub bool);

impl fmt::Debug for ActiveTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActiveTrace")
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}
