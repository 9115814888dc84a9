use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use gateway_core::{ClassifyFailure, Problem, RejectReason, ResponseFlags};
use http::{HeaderValue, Request, Response, StatusCode, header};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{
    CircuitBreakerHandle,
    breaker::{Breaker, CallPermit},
};

/// A static response served while the breaker is open.
#[derive(Debug)]
pub(crate) struct Fallback {
    pub(crate) status: StatusCode,
    pub(crate) content_type: HeaderValue,
    pub(crate) body: String,
}

/// A service guarded by a circuit breaker; see [`CircuitBreakerLayer`](super::CircuitBreakerLayer).
#[derive(Clone, Debug)]
pub struct CircuitBreaker<S, C> {
    inner: S,
    breaker: Arc<Breaker>,
    classifier: C,
    fallback: Option<Arc<Fallback>>,
}

impl<S, C> CircuitBreaker<S, C> {
    pub(crate) fn new(
        inner: S,
        breaker: Arc<Breaker>,
        classifier: C,
        fallback: Option<Arc<Fallback>>,
    ) -> Self {
        Self {
            inner,
            breaker,
            classifier,
            fallback,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

fn rejection<B: From<String>>(retry_after: Duration, fallback: Option<&Fallback>) -> Response<B> {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let mut res = match fallback {
        Some(f) => {
            let mut res = Response::new(B::from(f.body.clone()));
            *res.status_mut() = f.status;
            res.headers_mut()
                .insert(header::CONTENT_TYPE, f.content_type.clone());
            res.extensions_mut().insert(gateway_core::Rejection {
                reason: RejectReason::CircuitOpen,
                flags: ResponseFlags::UPSTREAM_OVERFLOW,
            });
            res
        }
        None => Problem::new(StatusCode::SERVICE_UNAVAILABLE)
            .detail("the upstream is failing; the circuit breaker is open")
            .reason(RejectReason::CircuitOpen, ResponseFlags::UPSTREAM_OVERFLOW)
            .into_response(),
    };
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    res
}

impl<S, C, ReqBody, ResBody> Service<Request<ReqBody>> for CircuitBreaker<S, C>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    C: ClassifyFailure + Clone,
    ResBody: From<String>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let handle = CircuitBreakerHandle {
            breaker: self.breaker.clone(),
        };
        match handle.try_acquire() {
            Ok(permit) => ResponseFuture {
                state: State::Called {
                    fut: self.inner.call(req),
                    permit: Some(permit),
                    classifier: self.classifier.clone(),
                },
            },
            Err(retry_after) => ResponseFuture {
                state: State::Rejected {
                    retry_after,
                    fallback: self.fallback.clone(),
                },
            },
        }
    }
}

pin_project! {
    /// Response future of [`CircuitBreaker`].
    pub struct ResponseFuture<F, C> {
        #[pin]
        state: State<F, C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, C> {
        Called {
            #[pin]
            fut: F,
            permit: Option<CallPermit>,
            classifier: C,
        },
        Rejected {
            retry_after: Duration,
            fallback: Option<Arc<Fallback>>,
        },
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, C, ResBody, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    C: ClassifyFailure,
    ResBody: From<String>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called {
                fut,
                permit,
                classifier,
            } => {
                let result = ready!(fut.poll(cx));
                let failed = match &result {
                    Ok(res) => classifier
                        .classify_response(res.status(), res.headers(), res.extensions())
                        .is_some(),
                    Err(_) => true,
                };
                if let Some(permit) = permit.take() {
                    permit.record(failed);
                }
                Poll::Ready(result)
            }
            StateProj::Rejected {
                retry_after,
                fallback,
            } => Poll::Ready(Ok(rejection(*retry_after, fallback.as_deref()))),
        }
    }
}
