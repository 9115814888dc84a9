use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use gateway_core::{Problem, RejectReason, ResponseFlags};
use http::{Request, Response, StatusCode, header::CONTENT_LENGTH};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited, combinators::Collect};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};
use tower_layer::Layer;
use tower_service::Service;

use super::{
    ReplayBody, RetryConfig,
    policy::{RetryCount, RetryPolicy},
};

/// Layer that retries failed calls within a budget; see the [module docs](super).
///
/// Every service made by this layer, and every clone, shares one budget: build one layer per
/// upstream. The service is as ready as the inner one and `Clone` when the inner one is.
///
/// # Example
///
/// ```
/// use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
/// use gateway_breaker::{ReplayBody, RetryConfig, RetryCount, RetryLayer};
/// use http::{Request, Response, StatusCode};
/// use http_body_util::Empty;
/// use bytes::Bytes;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // An upstream that fails once with 503, then answers.
/// let calls = Arc::new(AtomicUsize::new(0));
/// let upstream = service_fn({
///     let calls = calls.clone();
///     move |_req: Request<ReplayBody<Empty<Bytes>>>| {
///         let n = calls.fetch_add(1, Ordering::SeqCst);
///         async move {
///             let mut res = Response::new(String::from("hi"));
///             if n == 0 {
///                 *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
///             }
///             Ok::<_, std::convert::Infallible>(res)
///         }
///     }
/// });
/// let svc = RetryLayer::new(RetryConfig::default()).layer(upstream);
/// let res = svc.oneshot(Request::get("/").body(Empty::<Bytes>::new()).unwrap()).await.unwrap();
/// assert_eq!(res.status(), StatusCode::OK);
/// assert_eq!(res.extensions().get::<RetryCount>(), Some(&RetryCount(1)));
/// assert_eq!(calls.load(Ordering::SeqCst), 2);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct RetryLayer {
    cfg: Arc<RetryConfig>,
    budget: Arc<TpsBudget>,
}

impl RetryLayer {
    /// Retries with `config`, and a new budget.
    pub fn new(config: RetryConfig) -> Self {
        Self {
            budget: Arc::new(config.budget_instance()),
            cfg: Arc::new(config),
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            cfg: self.cfg.clone(),
            budget: self.budget.clone(),
        }
    }
}

/// A service whose failed calls are retried; see [`RetryLayer`].
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    cfg: Arc<RetryConfig>,
    budget: Arc<TpsBudget>,
}

impl<S> Retry<S> {
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

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::from(d.subsec_nanos()));
    nanos | 1
}

type Tower<S> = tower::retry::Retry<RetryPolicy, S>;
type TowerFuture<S, B> =
    tower::retry::future::ResponseFuture<RetryPolicy, S, Request<ReplayBody<B>>>;

impl<S, B, ResBody> Service<Request<B>> for Retry<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
    B: Body<Data = Bytes>,
    B::Error: Into<gateway_core::BoxError>,
    ResBody: From<String>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = RetryFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let enabled = self.cfg.attempts > 0;
        if enabled {
            self.budget.deposit();
        }
        // The readied service serves this call; a fresh clone waits for the next poll_ready.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let policy = RetryPolicy {
            cfg: self.cfg.clone(),
            budget: self.budget.clone(),
            retries: 0,
            started: Instant::now(),
            rng: seed(),
        };
        let mut tower = Tower::new(policy, ready);
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .or_else(|| req.body().size_hint().exact());
        let (parts, body) = req.into_parts();
        let state = if body.is_end_stream() {
            // Nothing to buffer: an empty body is replayable for free (hedges use it too).
            RetryState::Calling {
                fut: tower.call(Request::from_parts(
                    parts,
                    ReplayBody::buffered(Bytes::new()),
                )),
            }
        } else if !enabled {
            // Retries off: nothing is buffered, the body streams through.
            RetryState::Calling {
                fut: tower.call(Request::from_parts(parts, ReplayBody::streaming(body))),
            }
        } else if declared.is_some_and(|n| n <= self.cfg.max_body_bytes) {
            RetryState::Collecting {
                // Never trust the declared length: a body longer than the cap is an error, not
                // a bigger buffer.
                collect: Limited::new(
                    body,
                    usize::try_from(self.cfg.max_body_bytes).unwrap_or(usize::MAX),
                )
                .collect(),
                parts: Some(parts),
                tower: Some(tower),
            }
        } else {
            RetryState::Calling {
                fut: tower.call(Request::from_parts(parts, ReplayBody::streaming(body))),
            }
        };
        RetryFuture { state }
    }
}

pin_project! {
    /// Response future of [`Retry`].
    pub struct RetryFuture<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
        B: Body,
        B::Error: Into<gateway_core::BoxError>,
        RetryPolicy: tower::retry::Policy<Request<ReplayBody<B>>, S::Response, S::Error>,
    {
        #[pin]
        state: RetryState<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum RetryState<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
        B: Body,
        B::Error: Into<gateway_core::BoxError>,
        RetryPolicy: tower::retry::Policy<Request<ReplayBody<B>>, S::Response, S::Error>,
    {
        Collecting {
            #[pin]
            collect: Collect<Limited<B>>,
            parts: Option<http::request::Parts>,
            tower: Option<Tower<S>>,
        },
        Calling {
            #[pin]
            fut: TowerFuture<S, B>,
        },
    }
}

impl<S, B> std::fmt::Debug for RetryFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
    B: Body,
    B::Error: Into<gateway_core::BoxError>,
    RetryPolicy: tower::retry::Policy<Request<ReplayBody<B>>, S::Response, S::Error>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryFuture").finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Future for RetryFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
    B: Body<Data = Bytes>,
    B::Error: Into<gateway_core::BoxError>,
    ResBody: From<String>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Collecting {
                    collect,
                    parts,
                    tower,
                } => {
                    let collected = ready!(collect.poll(cx));
                    let collected = match collected {
                        Ok(collected) => collected,
                        Err(e) => {
                            let mut res: Response<ResBody> = if e.is::<LengthLimitError>() {
                                Problem::new(StatusCode::PAYLOAD_TOO_LARGE)
                                    .detail("the request body is longer than it declared")
                                    .reason(
                                        RejectReason::PayloadTooLarge,
                                        ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                                    )
                                    .into_response()
                            } else {
                                Problem::new(StatusCode::BAD_REQUEST)
                                    .detail("the request body could not be read")
                                    .reason(
                                        RejectReason::BadRequest,
                                        ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
                                    )
                                    .into_response()
                            };
                            res.extensions_mut().insert(RetryCount(0));
                            return Poll::Ready(Ok(res));
                        }
                    };
                    let parts = parts.take().expect("polled after completion");
                    let mut tower = tower.take().expect("polled after completion");
                    let req =
                        Request::from_parts(parts, ReplayBody::buffered(collected.to_bytes()));
                    let fut = tower.call(req);
                    this.state.set(RetryState::Calling { fut });
                }
                StateProj::Calling { fut } => {
                    // tower's future skips the policy when the request could not be cloned (a
                    // streamed body): every final answer still says how many retries it took.
                    return fut.poll(cx).map(|out| {
                        out.map(|mut res| {
                            if res.extensions().get::<RetryCount>().is_none() {
                                res.extensions_mut().insert(RetryCount(0));
                            }
                            res
                        })
                    });
                }
            }
        }
    }
}
