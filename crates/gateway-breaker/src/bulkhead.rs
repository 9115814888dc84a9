//! A bulkhead: a cap on concurrent calls to one upstream, shedding the excess with `503` instead
//! of queueing it.
//!
//! Unlike tower's `ConcurrencyLimit`, which makes callers wait in `poll_ready` (an unbounded queue
//! in front of a slow upstream), a full bulkhead answers `503` in `call`: the client can retry
//! elsewhere and the gateway's memory stays flat. (`poll_ready` is the inner service's.) The limit
//! is shared by every clone of the service.
//!
//! A call counts from `call` until its response future completes (the response headers are in);
//! a streamed response body is not counted.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use gateway_core::{Problem, RejectReason, ResponseFlags};
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_layer::Layer;
use tower_service::Service;

/// Layer that caps concurrent calls; see the [module docs](self).
///
/// The service stays ready (it rejects in `call`) and is `Clone` when the inner service is.
///
/// # Example
///
/// ```
/// use gateway_breaker::BulkheadLayer;
/// use http::{Request, Response, StatusCode};
/// use tower::{Service, ServiceExt, Layer, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (release, wait) = tokio::sync::oneshot::channel::<()>();
/// let wait = std::sync::Arc::new(tokio::sync::Mutex::new(Some(wait)));
/// let slow = service_fn(move |_req: Request<()>| {
///     let wait = wait.clone();
///     async move {
///         if let Some(w) = wait.lock().await.take() {
///             let _ = w.await;
///         }
///         Ok::<_, std::convert::Infallible>(Response::new(String::from("done")))
///     }
/// });
/// let layer = BulkheadLayer::new(1);
/// let mut svc = layer.layer(slow);
/// let first = svc.ready().await.unwrap().call(Request::new(()));
/// // The first call holds the only slot: the second is shed at once.
/// let second = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
/// assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
/// release.send(()).unwrap();
/// assert_eq!(first.await.unwrap().status(), StatusCode::OK);
/// assert_eq!(layer.in_flight(), 0);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct BulkheadLayer {
    slots: Arc<Semaphore>,
    max: usize,
}

impl BulkheadLayer {
    /// At most `max` concurrent calls (at least 1).
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// Takes a slot for a call made without the tower service (a gateway's own dispatch loop):
    /// `None` when the bulkhead is full. The slot is freed when the permit is dropped.
    pub fn try_admit(&self) -> Option<BulkheadPermit> {
        self.slots
            .clone()
            .try_acquire_owned()
            .ok()
            .map(BulkheadPermit)
    }

    /// The response a full bulkhead answers with: `503` problem+json, reason `Overloaded`, flag
    /// `UO`.
    pub fn rejection<B: From<String>>() -> Response<B> {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE)
            .detail("too many concurrent requests to this upstream")
            .reason(RejectReason::Overloaded, ResponseFlags::UPSTREAM_OVERFLOW)
            .into_response()
    }
}

/// A slot in a [`BulkheadLayer`], held for the length of one call.
#[derive(Debug)]
pub struct BulkheadPermit(#[allow(dead_code)] OwnedSemaphorePermit);

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead {
            inner,
            slots: self.slots.clone(),
        }
    }
}

/// A service behind a bulkhead; see [`BulkheadLayer`].
#[derive(Clone, Debug)]
pub struct Bulkhead<S> {
    inner: S,
    slots: Arc<Semaphore>,
}

impl<S> Bulkhead<S> {
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Bulkhead<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<String>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BulkheadFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => BulkheadFuture {
                inner: Some(self.inner.call(req)),
                permit: Some(permit),
            },
            Err(_) => BulkheadFuture {
                inner: None,
                permit: None,
            },
        }
    }
}

pin_project! {
    /// Response future of [`Bulkhead`].
    pub struct BulkheadFuture<F> {
        #[pin]
        inner: Option<F>,
        permit: Option<OwnedSemaphorePermit>,
    }
}

impl<F> std::fmt::Debug for BulkheadFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkheadFuture")
            .field("admitted", &self.permit.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for BulkheadFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: From<String>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.as_pin_mut() {
            Some(fut) => {
                let out = ready!(fut.poll(cx));
                this.permit.take();
                Poll::Ready(out)
            }
            None => Poll::Ready(Ok(BulkheadLayer::rejection())),
        }
    }
}
