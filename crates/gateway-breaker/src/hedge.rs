//! Hedged requests: when an idempotent request with a replayable body has not been answered
//! after a delay, send a second copy and take whichever answer comes first.
//!
//! Hedging trims the latency tail caused by one slow endpoint (a GC pause, a cold cache) at the
//! cost of extra load, so hedges are drawn from a budget (tower's `TpsBudget`, a share of recent
//! requests) shared by every clone. Only idempotent methods (RFC 9110 §9.2.2) with a buffered
//! [`ReplayBody`] are hedged; the hedge waits for the inner service's `poll_ready` like any call.
//! The first *good* answer wins (not a 5xx and not a gateway rejection such as an open breaker or a
//! refused connection); when a leg fails, the other is awaited, and when both fail the first
//! attempt's answer is returned. The loser is dropped (its connection is closed, not reused). With
//! a balancer below, the hedge usually goes to another endpoint. A response that came from the
//! hedge carries a [`Hedged`] extension.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use gateway_core::{ClassifyFailure, DefaultClassifier, Rejection};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::retry::budget::{Budget, TpsBudget};
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    ReplayBody,
    retry::{body::clone_request, policy::idempotent},
};

/// Marks a response that the hedge, not the first attempt, produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hedged;

/// Layer that hedges slow idempotent requests; see the [module docs](self).
///
/// # Example
///
/// ```
/// use std::{sync::{Arc, atomic::{AtomicUsize, Ordering}}, time::Duration};
/// use bytes::Bytes;
/// use gateway_breaker::{HedgeLayer, Hedged, ReplayBody};
/// use http::{Request, Response};
/// use http_body_util::Empty;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// // The first call takes 10 s, the second 1 ms.
/// let calls = Arc::new(AtomicUsize::new(0));
/// let upstream = service_fn({
///     let calls = calls.clone();
///     move |_req: Request<ReplayBody<Empty<Bytes>>>| {
///         let n = calls.fetch_add(1, Ordering::SeqCst);
///         async move {
///             let wait = if n == 0 { 10_000 } else { 1 };
///             tokio::time::sleep(Duration::from_millis(wait)).await;
///             Ok::<_, std::convert::Infallible>(Response::new(format!("call {n}")))
///         }
///     }
/// });
/// let svc = HedgeLayer::new(Duration::from_millis(50)).layer(upstream);
/// let req = Request::get("/").body(ReplayBody::buffered(Bytes::new())).unwrap();
/// let res = svc.oneshot(req).await.unwrap();
/// assert_eq!(res.body(), "call 1");
/// assert!(res.extensions().get::<Hedged>().is_some());
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct HedgeLayer {
    delay: Option<Duration>,
    budget: Arc<TpsBudget>,
}

impl HedgeLayer {
    /// Hedges requests still unanswered after `delay`; the budget allows hedges for 10% of the
    /// requests of the last 10 s plus 1 per second.
    pub fn new(delay: Duration) -> Self {
        Self {
            delay: Some(delay),
            budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 1, 0.1)),
        }
    }

    /// A layer that never hedges: requests pass through untouched, for stacks that are built the
    /// same way whether hedging is configured or not.
    pub fn off() -> Self {
        Self {
            delay: None,
            budget: Arc::new(TpsBudget::new(Duration::from_secs(1), 0, 0.0)),
        }
    }

    /// The hedge budget: `ratio` of the requests of the last `ttl` (1 to 60 s), plus
    /// `min_per_sec` per second.
    #[must_use]
    pub fn budget(mut self, ratio: f32, min_per_sec: u32, ttl: Duration) -> Self {
        self.budget = Arc::new(TpsBudget::new(
            ttl.clamp(Duration::from_secs(1), Duration::from_secs(60)),
            min_per_sec,
            ratio.clamp(0.0, 10.0),
        ));
        self
    }
}

impl<S> Layer<S> for HedgeLayer {
    type Service = Hedge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Hedge {
            inner,
            delay: self.delay,
            budget: self.budget.clone(),
        }
    }
}

/// A service whose slow idempotent requests are hedged; see [`HedgeLayer`].
#[derive(Clone, Debug)]
pub struct Hedge<S> {
    inner: S,
    delay: Option<Duration>,
    budget: Arc<TpsBudget>,
}

impl<S, B, ResBody> Service<Request<ReplayBody<B>>> for Hedge<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = HedgeFuture<S, ReplayBody<B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReplayBody<B>>) -> Self::Future {
        let Some(delay) = self.delay else {
            return HedgeFuture {
                primary: self.inner.call(req),
                timer: None,
                spare: None,
                service: None,
                hedge: None,
                readying: false,
                primary_done: None,
                hedge_done: None,
                budget: self.budget.clone(),
            };
        };
        self.budget.deposit();
        let spare = if idempotent(req.method()) {
            clone_request(&req)
        } else {
            None
        };
        let spare_service = spare.as_ref().map(|_| self.inner.clone());
        HedgeFuture {
            primary: self.inner.call(req),
            timer: spare.as_ref().map(|_| Box::pin(tokio::time::sleep(delay))),
            spare,
            service: spare_service,
            hedge: None,
            readying: false,
            primary_done: None,
            hedge_done: None,
            budget: self.budget.clone(),
        }
    }
}

pin_project! {
    /// Response future of [`Hedge`].
    pub struct HedgeFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        primary: S::Future,
        #[pin]
        hedge: Option<S::Future>,
        timer: Option<Pin<Box<Sleep>>>,
        spare: Option<Request<B>>,
        service: Option<S>,
        // The timer fired and the budget allowed a hedge: waiting for the service to be ready.
        readying: bool,
        primary_done: Option<Result<S::Response, S::Error>>,
        hedge_done: Option<Result<S::Response, S::Error>>,
        budget: Arc<TpsBudget>,
    }
}

impl<S, B> std::fmt::Debug for HedgeFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HedgeFuture")
            .field("hedged", &self.hedge.is_some())
            .finish_non_exhaustive()
    }
}

/// Whether an answer is worth returning while the other leg may still do better: a response that
/// is not a failure (5xx, a gateway rejection such as an open breaker or a refused connection).
fn good<B, E>(result: &Result<Response<B>, E>) -> bool {
    result.as_ref().is_ok_and(|res| {
        DefaultClassifier::new()
            .classify_response(res.status(), res.headers(), res.extensions())
            .is_none()
            && res.extensions().get::<Rejection>().is_none()
    })
}

fn mark_hedged<B, E>(result: Result<Response<B>, E>) -> Result<Response<B>, E> {
    result.map(|mut res| {
        res.extensions_mut().insert(Hedged);
        res
    })
}

impl<S, B, ResBody> Future for HedgeFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // Start the hedge when its time has come, the budget allows it and the service is ready.
        if this.hedge.is_none() && this.primary_done.is_none() {
            if let Some(timer) = this.timer.as_mut()
                && timer.as_mut().poll(cx).is_ready()
            {
                *this.timer = None;
                *this.readying = this.spare.is_some() && this.budget.withdraw();
                if !*this.readying {
                    *this.spare = None;
                    *this.service = None;
                }
            }
            if *this.readying
                && let Some(service) = this.service.as_mut()
            {
                match service.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        *this.readying = false;
                        let req = this.spare.take().expect("a spare request while readying");
                        let call = service.call(req);
                        this.hedge.set(Some(call));
                    }
                    Poll::Ready(Err(_)) => {
                        *this.readying = false;
                        *this.spare = None;
                        *this.service = None;
                    }
                    Poll::Pending => {}
                }
            }
        }
        let hedge_running = this.hedge.is_some() && this.hedge_done.is_none();
        if this.primary_done.is_none()
            && let Poll::Ready(out) = this.primary.poll(cx)
        {
            // A good answer wins; so does any answer when no hedge is running.
            if good(&out) || !hedge_running {
                return Poll::Ready(out);
            }
            *this.primary_done = Some(out);
        }
        if hedge_running
            && let Some(hedge) = this.hedge.as_mut().as_pin_mut()
            && let Poll::Ready(out) = hedge.poll(cx)
        {
            if good(&out) {
                return Poll::Ready(mark_hedged(out));
            }
            if let Some(primary) = this.primary_done.take() {
                // Both failed: the first attempt's answer is the one to report.
                return Poll::Ready(primary);
            }
            *this.hedge_done = Some(out);
        }
        if this.hedge_done.is_some()
            && let Some(primary) = this.primary_done.take()
        {
            return Poll::Ready(primary);
        }
        Poll::Pending
    }
}
