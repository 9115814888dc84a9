//! The per-request bookkeeping shared by [`ObserveLayer`](crate::ObserveLayer) and servers that
//! drive requests themselves (the reference gateway): [`Observer::start`] when a request
//! arrives, [`Observation::finish`] with its response; the numbers are recorded when the
//! response body ends (or is dropped), not when its head is sent.

use std::{
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::SystemTime,
};

use bytes::Buf;
use gateway_core::{ClientIp, NormalizedPath, Principal, Rejection, RouteId};
use http::{HeaderValue, Method, Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use gateway_core::trace::{AttributeValue, SpanKind, SpanRecord};

use crate::{
    AccessLog, HttpMetrics, RequestId, RequestIds, Tracer, access_log::Entry, metrics::Sample,
    trace::ServerSpan,
};

fn protocol_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Request ids, metrics and the access log together. Clones share everything.
#[derive(Clone, Debug)]
pub struct Observer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ids: RequestIds,
    metrics: HttpMetrics,
    log: Option<AccessLog>,
    tracer: Option<Tracer>,
}

impl Observer {
    /// An observer with these parts (no access log: see [`Observer::with_access_log`]).
    pub fn new(ids: RequestIds, metrics: HttpMetrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                ids,
                metrics,
                log: None,
                tracer: None,
            }),
        }
    }

    /// Adds tracing: a server span per request, in the request's extensions as an
    /// [`ActiveTrace`](gateway_core::trace::ActiveTrace) for client spans below.
    #[must_use]
    pub fn with_tracing(self, tracer: Tracer) -> Self {
        let inner = self.take_inner();
        Self {
            inner: Arc::new(Inner {
                tracer: Some(tracer),
                ..inner
            }),
        }
    }

    fn take_inner(self) -> Inner {
        Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Inner {
            ids: shared.ids.clone(),
            metrics: shared.metrics.clone(),
            log: None,
            tracer: shared.tracer.clone(),
        })
    }

    /// Adds an access log.
    #[must_use]
    pub fn with_access_log(self, log: AccessLog) -> Self {
        let inner = self.take_inner();
        Self {
            inner: Arc::new(Inner {
                log: Some(log),
                ..inner
            }),
        }
    }

    /// The metrics (for a `/metrics` endpoint: [`HttpMetrics::encode`]).
    pub fn metrics(&self) -> &HttpMetrics {
        &self.inner.metrics
    }

    /// The access log, when there is one (for its drop counter).
    pub fn access_log(&self) -> Option<&AccessLog> {
        self.inner.log.as_ref()
    }

    /// Begins observing `req`: assigns its [`RequestId`] (extension and header) and counts it
    /// as active. Call [`Observation::finish`] with the response.
    pub fn start<B: Body>(&self, req: &mut Request<B>) -> Observation {
        let id = self.inner.ids.assign(req);
        // The header value made by `assign`, reused on the response (no second validation and
        // copy).
        let id_value = req.headers().get(self.inner.ids.header()).cloned();
        self.inner.metrics.started(req.method());
        let span = self.inner.tracer.as_ref().map(|t| {
            let trust = req
                .extensions()
                .get::<gateway_core::trace::TrustTraceContext>()
                .map(|t| t.0);
            let span = t.start(req.headers_mut(), trust);
            req.extensions_mut().insert(t.active(&span));
            span
        });
        let headers = self.inner.log.as_ref().map(|log| {
            log.headers()
                .iter()
                .filter_map(|name| {
                    let v = req.headers().get(name)?;
                    let shown = if log.is_secret(name) {
                        String::from("[redacted]")
                    } else {
                        String::from_utf8_lossy(v.as_bytes()).into_owned()
                    };
                    Some((name.as_str().to_owned(), shown))
                })
                .collect()
        });
        Observation {
            observer: self.clone(),
            started: Instant::now(),
            time: SystemTime::now(),
            id,
            id_value,
            method: req.method().clone(),
            version: req.version(),
            raw_path: self
                .inner
                .log
                .is_some()
                .then(|| req.uri().path().to_owned()),
            client_ip: req.extensions().get::<ClientIp>().map(|c| c.ip()),
            trace_id: match &span {
                Some(s) => Some(format!("{:032x}", s.context.trace_id)),
                None => trace_id(req.headers().get(&TRACEPARENT)),
            },
            span,
            bytes_in: req.body().size_hint().exact().unwrap_or(0),
            headers: headers.unwrap_or_default(),
            recorded: false,
        }
    }
}

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// The trace id of a well-formed W3C `traceparent`, as 32 hex digits.
fn trace_id(v: Option<&HeaderValue>) -> Option<String> {
    let ctx = gateway_core::trace::TraceContext::parse(v?.to_str().ok()?)?;
    Some(format!("{:032x}", ctx.trace_id))
}

/// One request being observed; see [`Observer::start`].
#[derive(Debug)]
pub struct Observation {
    observer: Observer,
    started: Instant,
    time: SystemTime,
    id: RequestId,
    id_value: Option<HeaderValue>,
    method: Method,
    version: Version,
    raw_path: Option<String>,
    client_ip: Option<IpAddr>,
    trace_id: Option<String>,
    span: Option<ServerSpan>,
    bytes_in: u64,
    headers: Vec<(String, String)>,
    /// Recorded already (through its response body).
    recorded: bool,
}

impl Drop for Observation {
    /// A request dropped before it had a response (the client went away, or the service
    /// failed) is recorded as status 499, not completed.
    fn drop(&mut self) {
        if self.recorded {
            return;
        }
        let facts = Facts {
            upstream: None,
            rate_limit: None,
            cache: None,
            auth_failure: None,
            status: 499,
            rejection: None,
            client_ip: self.client_ip,
            consumer: None,
            path: None,
            route: None,
        };
        record(self, &facts, 0, false);
    }
}

impl Observation {
    /// The request's id.
    pub fn id(&self) -> &RequestId {
        &self.id
    }

    /// Sets the number of request body bytes read (servers that count them).
    pub fn set_bytes_in(&mut self, n: u64) {
        self.bytes_in = n;
    }

    /// Ends the observation with `res`: adds the request id header and wraps the body so the
    /// numbers are recorded when it ends. Route, client IP, principal and normalized path are
    /// read from the response's extensions ([`RouteId`], [`ClientIp`], [`Principal`],
    /// [`NormalizedPath`]) when the service put them there.
    pub fn finish<B: Body>(self, res: Response<B>) -> Response<ObservedBody<B>> {
        let (mut parts, body) = res.into_parts();
        let value = self
            .id_value
            .clone()
            .or_else(|| HeaderValue::from_str(self.id.as_str()).ok());
        if let Some(v) = value {
            parts
                .headers
                .insert(self.observer.inner.ids.header().clone(), v);
        }
        let route = parts.extensions.get::<RouteId>().cloned();
        let wanted = self
            .observer
            .inner
            .log
            .as_ref()
            .is_some_and(|log| log.wants_route(route.as_ref().map(RouteId::as_str)));
        let facts = Facts {
            upstream: parts
                .extensions
                .get::<gateway_core::UpstreamCall>()
                .cloned(),
            rate_limit: parts
                .extensions
                .get::<gateway_core::RateLimitDecision>()
                .copied(),
            cache: parts
                .extensions
                .get::<gateway_core::CacheOutcome>()
                .copied(),
            auth_failure: parts
                .extensions
                .get::<gateway_core::AuthFailureReason>()
                .copied(),
            status: parts.status.as_u16(),
            rejection: parts.extensions.get::<Rejection>().copied(),
            client_ip: parts
                .extensions
                .get::<ClientIp>()
                .map(|c| c.ip())
                .or(self.client_ip),
            consumer: wanted
                .then(|| {
                    parts
                        .extensions
                        .get::<Principal>()
                        .and_then(|p| p.consumer().map(str::to_owned))
                })
                .flatten(),
            path: (wanted || self.span.is_some_and(|s| s.context.sampled))
                .then(|| {
                    parts
                        .extensions
                        .get::<NormalizedPath>()
                        .map(|p| p.as_str().to_owned())
                })
                .flatten(),
            route,
        };
        Response::from_parts(
            parts,
            ObservedBody {
                empty: body.is_end_stream(),
                inner: body,
                record: Some(Record {
                    obs: self,
                    facts,
                    bytes_out: 0,
                }),
            },
        )
    }
}

#[derive(Debug)]
struct Facts {
    upstream: Option<gateway_core::UpstreamCall>,
    rate_limit: Option<gateway_core::RateLimitDecision>,
    cache: Option<gateway_core::CacheOutcome>,
    auth_failure: Option<gateway_core::AuthFailureReason>,
    status: u16,
    rejection: Option<Rejection>,
    client_ip: Option<IpAddr>,
    consumer: Option<String>,
    path: Option<String>,
    route: Option<RouteId>,
}

#[derive(Debug)]
struct Record {
    obs: Observation,
    facts: Facts,
    bytes_out: u64,
}

impl Record {
    fn done(mut self, completed: bool) {
        record(&mut self.obs, &self.facts, self.bytes_out, completed);
    }
}

/// Records a finished (or abandoned) request once.
fn record(obs: &mut Observation, facts: &Facts, bytes_out: u64, completed: bool) {
    obs.recorded = true;
    let duration = obs.started.elapsed();
    let inner = &obs.observer.inner;
    inner.metrics.finished(&Sample {
        method: &obs.method,
        route: facts.route.as_ref().map(RouteId::shared),
        status: facts.status,
        duration,
        bytes_in: obs.bytes_in,
        bytes_out,
        rejection: facts.rejection.map(|r| r.reason),
        upstream: facts.upstream.as_ref(),
        rate_limit: facts.rate_limit,
        cache: facts.cache,
        auth_failure: facts.auth_failure,
    });
    if let (Some(span), Some(tracer)) = (obs.span, &inner.tracer)
        && span.context.sampled
    {
        let route = facts.route.as_ref().map(RouteId::as_str);
        let mut attributes = vec![
            (
                "http.request.method",
                AttributeValue::Str(obs.method.as_str().to_owned()),
            ),
            (
                "http.response.status_code",
                AttributeValue::Int(i64::from(facts.status)),
            ),
            (
                "network.protocol.version",
                AttributeValue::Str(protocol_version(obs.version).to_owned()),
            ),
        ];
        if let Some(r) = route {
            attributes.push(("http.route", AttributeValue::Str(r.to_owned())));
        }
        if let Some(p) = &facts.path {
            attributes.push(("url.path", AttributeValue::Str(p.clone())));
        }
        if let Some(ip) = facts.client_ip {
            attributes.push(("client.address", AttributeValue::Str(ip.to_string())));
        }
        if let Some(r) = facts.rejection {
            attributes.push((
                "error.type",
                AttributeValue::Str(r.reason.as_str().to_owned()),
            ));
        }
        tracer.recorder.record(SpanRecord {
            context: span.context,
            parent_span_id: span.parent_span_id,
            name: route.map_or_else(
                || obs.method.as_str().to_owned(),
                |r| format!("{} {r}", obs.method),
            ),
            kind: SpanKind::Server,
            start: span.start,
            end: SystemTime::now(),
            attributes,
            error: facts.status >= 500 || !completed,
        });
    }
    let Some(log) = &inner.log else { return };
    log.log(&Entry {
        time: Some(obs.time),
        request_id: Some(obs.id.as_str().to_owned()),
        trace_id: obs.trace_id.take(),
        client_ip: facts.client_ip.map(|ip| ip.to_string()),
        consumer: facts.consumer.clone(),
        route: facts.route.as_ref().map(|r| r.as_str().to_owned()),
        method: obs.method.as_str().to_owned(),
        path: facts
            .path
            .clone()
            .or_else(|| obs.raw_path.take())
            .unwrap_or_default(),
        protocol: format!("{:?}", obs.version),
        status: facts.status,
        flags: facts
            .rejection
            .map(|r| r.flags.to_string())
            .unwrap_or_default(),
        reason: facts.rejection.map(|r| r.reason.as_str()),
        upstream: facts.upstream.as_ref().map(|u| u.endpoint.to_string()),
        upstream_duration: facts.upstream.as_ref().map(|u| u.duration),
        retries: facts.upstream.as_ref().map_or(0, |u| u.retries),
        auth_failure: facts.auth_failure.map(|f| f.reason),
        rate_limit: facts
            .rate_limit
            .map(gateway_core::RateLimitDecision::as_str),
        cache: facts.cache.map(gateway_core::CacheOutcome::as_str),
        bytes_in: obs.bytes_in,
        bytes_out,
        duration,
        headers: std::mem::take(&mut obs.headers),
        completed,
    });
}

pin_project! {
    /// A response body that records its request when it ends (or when it is dropped early, which
    /// is logged as `completed: false`).
    #[derive(Debug)]
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        record: Option<Record>,
        empty: bool,
    }

    impl<B> PinnedDrop for ObservedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(record) = this.record.take() {
                // A body that was empty from the start is complete even if never polled.
                record.done(*this.empty);
            }
        }
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(r)) = (frame.data_ref(), this.record.as_mut()) {
                    r.bytes_out += data.remaining() as u64;
                }
            }
            Poll::Ready(None) => {
                if let Some(r) = this.record.take() {
                    r.done(true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(r) = this.record.take() {
                    r.done(false);
                }
            }
            Poll::Pending => {}
        }
        if this.inner.is_end_stream()
            && let Some(r) = this.record.take()
        {
            r.done(true);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
