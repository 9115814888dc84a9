use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use gateway_breaker::CallPermit;
use std::time::SystemTime;

use gateway_core::{
    ClassifyFailure, DefaultClassifier, Rejection, UpstreamCall,
    trace::{ActiveTrace, AttributeValue, SpanKind, SpanRecord, TraceContext},
};
use http::Response;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::balance::InFlight;

use super::{
    ResponseBody,
    headers::strip_hop_by_hop,
    pool::{Exchanged, ProxyError},
    service::{error_response, slow_client_response, timeout_response},
};

/// The boxed upstream exchange. hyper's connection futures cannot be named, so this is the one
/// allocation per proxied request that remains.
pub(crate) type Exchange =
    std::pin::Pin<Box<dyn Future<Output = Result<Exchanged, ProxyError>> + Send>>;

pin_project! {
    /// Response future of [`Upstream`](crate::Upstream).
    pub struct ResponseFuture {
        #[pin]
        state: State,
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        Ready { response: Option<Response<ResponseBody>> },
        Waiting {
            #[pin]
            fut: Exchange,
            #[pin]
            sleep: Option<Sleep>,
            body_timeout: Option<Duration>,
            permit: Option<(CallPermit, DefaultClassifier)>,
            load: Option<InFlight>,
            set_cookie: Option<http::HeaderValue>,
            uploaded: Option<Arc<AtomicBool>>,
            span: Option<ClientSpan>,
            endpoint: Arc<str>,
            start: tokio::time::Instant,
        },
    }
}

/// The client span of one upstream attempt, recorded when its response head arrives (or the
/// attempt fails).
pub(crate) struct ClientSpan {
    pub(crate) trace: ActiveTrace,
    pub(crate) context: TraceContext,
    pub(crate) start: SystemTime,
    pub(crate) method: http::Method,
    pub(crate) endpoint: http::uri::Authority,
}

impl ClientSpan {
    fn finish(self, res: &Response<ResponseBody>) {
        let rejection = res.extensions().get::<Rejection>();
        let status = res.status().as_u16();
        let mut attributes = vec![
            (
                "http.request.method",
                AttributeValue::Str(self.method.as_str().to_owned()),
            ),
            (
                "server.address",
                AttributeValue::Str(self.endpoint.host().to_owned()),
            ),
            (
                "server.port",
                AttributeValue::Int(i64::from(self.endpoint.port_u16().unwrap_or(0))),
            ),
        ];
        match rejection {
            // The gateway's own answer: no response came from the upstream.
            Some(r) => attributes.push((
                "error.type",
                AttributeValue::Str(r.reason.as_str().to_owned()),
            )),
            None => attributes.push((
                "http.response.status_code",
                AttributeValue::Int(i64::from(status)),
            )),
        }
        self.trace.recorder.record(SpanRecord {
            context: self.context,
            parent_span_id: Some(self.trace.context.span_id),
            name: self.method.as_str().to_owned(),
            kind: SpanKind::Client,
            start: self.start,
            end: SystemTime::now(),
            attributes,
            error: rejection.is_some() || status >= 500,
        });
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl ResponseFuture {
    pub(crate) fn ready(response: Response<ResponseBody>) -> Self {
        Self {
            state: State::Ready {
                response: Some(response),
            },
        }
    }

    pub(crate) fn upstream(
        fut: Exchange,
        timeout: Option<Duration>,
        body_timeout: Option<Duration>,
        (permit, load, set_cookie): (
            Option<(CallPermit, DefaultClassifier)>,
            Option<InFlight>,
            Option<http::HeaderValue>,
        ),
        uploaded: Option<Arc<AtomicBool>>,
        span: Option<ClientSpan>,
        endpoint: Arc<str>,
    ) -> Self {
        Self {
            state: State::Waiting {
                fut,
                sleep: timeout.map(tokio::time::sleep),
                body_timeout,
                permit,
                load,
                set_cookie,
                uploaded,
                span,
                endpoint,
                start: tokio::time::Instant::now(),
            },
        }
    }
}

/// Tags a response with the upstream call that produced it.
fn tag(res: &mut Response<ResponseBody>, endpoint: &Arc<str>, start: tokio::time::Instant) {
    res.extensions_mut().insert(UpstreamCall {
        endpoint: endpoint.clone(),
        duration: start.elapsed(),
        retries: 0,
    });
}

/// Records an exchange's outcome on the endpoint's breaker, when it has one.
fn record(permit: Option<(CallPermit, DefaultClassifier)>, res: &Response<ResponseBody>) {
    if let Some((permit, classifier)) = permit {
        let failed = classifier
            .classify_response(res.status(), res.headers(), res.extensions())
            .is_some();
        permit.record(failed);
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<ResponseBody>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Ready { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
            StateProj::Waiting {
                fut,
                sleep,
                body_timeout,
                permit,
                load,
                set_cookie,
                uploaded,
                span,
                endpoint,
                start,
            } => {
                if let Poll::Ready(result) = fut.poll(cx) {
                    let mut res = match result {
                        Ok((res, on_end)) => {
                            let (mut parts, body) = res.into_parts();
                            strip_hop_by_hop(&mut parts.headers);
                            Response::from_parts(
                                parts,
                                ResponseBody::upstream(body, on_end, *body_timeout),
                            )
                        }
                        Err(err) => {
                            tracing::debug!(error = ?err, "upstream request failed");
                            error_response(&err)
                        }
                    };
                    record(permit.take(), &res);
                    if let Some(load) = load.take() {
                        load.finish(&res);
                    }
                    if let Some(cookie) = set_cookie.take()
                        && res.extensions().get::<Rejection>().is_none()
                    {
                        res.headers_mut().append(http::header::SET_COOKIE, cookie);
                    }
                    tag(&mut res, endpoint, *start);
                    if let Some(span) = span.take() {
                        span.finish(&res);
                    }
                    return Poll::Ready(Ok(res));
                }
                if let Some(sleep) = sleep.as_pin_mut() {
                    ready!(sleep.poll(cx));
                    if uploaded
                        .as_ref()
                        .is_some_and(|done| !done.load(Ordering::Acquire))
                    {
                        // Still waiting for the client's body: not the upstream's failure, so
                        // the permit is given back unrecorded.
                        permit.take();
                        load.take();
                        let mut res = slow_client_response();
                        tag(&mut res, endpoint, *start);
                        if let Some(span) = span.take() {
                            span.finish(&res);
                        }
                        return Poll::Ready(Ok(res));
                    }
                    let mut res = timeout_response();
                    record(permit.take(), &res);
                    if let Some(load) = load.take() {
                        load.finish(&res);
                    }
                    tag(&mut res, endpoint, *start);
                    if let Some(span) = span.take() {
                        span.finish(&res);
                    }
                    return Poll::Ready(Ok(res));
                }
                Poll::Pending
            }
        }
    }
}
