//! A cap on requests in flight per key (per client IP, per consumer, ...).
//!
//! A request counts from `call` until its response body has been fully sent (or dropped), so a
//! client cannot exceed its share with slow downloads. Over the cap, the layer answers `429`
//! with a problem body at once (it never queues). Requests whose key is absent are not counted.
//!
//! # Example
//!
//! ```
//! use gateway_core::ClientIp;
//! use gateway_ratelimit::{ConcurrencyLimitLayer, KeyBy};
//! use http::{Request, Response, StatusCode};
//! use tower::{Service, ServiceExt, Layer, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = ConcurrencyLimitLayer::new(1, KeyBy::client_ip());
//! let mut svc = layer.layer(service_fn(|_req: Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(String::from("streamed body")))
//! }));
//! let request = |ip: [u8; 4]| {
//!     let mut req = Request::new(());
//!     req.extensions_mut().insert(ClientIp::direct(ip.into()));
//!     req
//! };
//! let first = svc.ready().await.unwrap().call(request([192, 0, 2, 1])).await.unwrap();
//! // The first response's body has not been consumed: that client is still at its cap.
//! let second = svc.ready().await.unwrap().call(request([192, 0, 2, 1])).await.unwrap();
//! assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
//! // Another client is not affected.
//! let other = svc.ready().await.unwrap().call(request([192, 0, 2, 2])).await.unwrap();
//! assert_eq!(other.status(), StatusCode::OK);
//! drop(first);
//! assert_eq!(layer.in_flight(), 1);
//! # }
//! ```

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    hash::{BuildHasher, RandomState},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
};

use bytes::Buf;
use gateway_core::{Problem, RejectReason, ResponseFlags};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::key::{KeyContext, MakeRateLimitKey};

const SHARDS: usize = 32;

struct Counts {
    shards: [Mutex<HashMap<u64, u32>>; SHARDS],
    seed: RandomState,
    max: u32,
    key: Box<dyn MakeRateLimitKey>,
}

impl Counts {
    fn acquire(self: &Arc<Self>, hash: u64) -> Option<Slot> {
        let mut map = self.shards[hash as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = map.entry(hash).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            counts: self.clone(),
            hash,
        })
    }
}

/// One request's place under the cap; released when dropped.
struct Slot {
    counts: Arc<Counts>,
    hash: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.counts.shards[self.hash as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.hash) {
            *n -= 1;
            if *n == 0 {
                // Keys hold memory only while they have requests in flight.
                map.remove(&self.hash);
            }
        }
    }
}

/// Layer capping requests in flight per key; see the [module docs](self).
///
/// The service stays ready and refuses in `call`; clones share the counts.
#[derive(Clone)]
pub struct ConcurrencyLimitLayer {
    counts: Arc<Counts>,
}

impl fmt::Debug for ConcurrencyLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimitLayer")
            .field("max", &self.counts.max)
            .finish_non_exhaustive()
    }
}

impl ConcurrencyLimitLayer {
    /// At most `max` (at least 1) requests in flight per key.
    pub fn new(max: u32, key: impl MakeRateLimitKey) -> Self {
        Self {
            counts: Arc::new(Counts {
                shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
                seed: RandomState::new(),
                max: max.max(1),
                key: Box::new(key),
            }),
        }
    }

    /// Requests in flight now, over all keys.
    pub fn in_flight(&self) -> u64 {
        self.counts
            .shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .map(|&n| u64::from(n))
                    .sum::<u64>()
            })
            .sum()
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit {
            inner,
            counts: self.counts.clone(),
        }
    }
}

/// Service applying a [`ConcurrencyLimitLayer`].
#[derive(Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    counts: Arc<Counts>,
}

impl<S: fmt::Debug> fmt::Debug for ConcurrencyLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ConcurrencyLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<String>,
{
    type Response = Response<SlotBody<ResBody>>;
    type Error = S::Error;
    type Future = ConcurrencyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let Some(key) = self.counts.key.make_key(&KeyContext::of(&req)) else {
            return ConcurrencyFuture {
                inner: Some(self.inner.call(req)),
                slot: None,
            };
        };
        let hash = self.counts.seed.hash_one(key.as_str());
        match self.counts.acquire(hash) {
            Some(slot) => ConcurrencyFuture {
                inner: Some(self.inner.call(req)),
                slot: Some(slot),
            },
            None => ConcurrencyFuture {
                inner: None,
                slot: None,
            },
        }
    }
}

pin_project! {
    /// Response future of [`ConcurrencyLimit`].
    pub struct ConcurrencyFuture<F> {
        #[pin]
        inner: Option<F>,
        slot: Option<Slot>,
    }
}

impl<F> fmt::Debug for ConcurrencyFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConcurrencyFuture")
    }
}

impl<F, B, E> Future for ConcurrencyFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: From<String>,
{
    type Output = Result<Response<SlotBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let res: Response<B> = Problem::new(StatusCode::TOO_MANY_REQUESTS)
                .detail("too many concurrent requests")
                .reason(RejectReason::RateLimited, ResponseFlags::RATE_LIMITED)
                .into_response();
            return Poll::Ready(Ok(res.map(|body| SlotBody {
                inner: body,
                slot: None,
            })));
        };
        let res = ready!(inner.poll(cx))?;
        let slot = this.slot.take();
        Poll::Ready(Ok(res.map(|body| SlotBody { inner: body, slot })))
    }
}

pin_project! {
    /// A response body that holds its request's place under the cap until it ends or is dropped.
    pub struct SlotBody<B> {
        #[pin]
        inner: B,
        slot: Option<Slot>,
    }
}

impl<B> fmt::Debug for SlotBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotBody")
            .field("counted", &self.slot.is_some())
            .finish()
    }
}

impl<B: From<String>> From<String> for SlotBody<B> {
    fn from(s: String) -> Self {
        Self {
            inner: B::from(s),
            slot: None,
        }
    }
}

impl<B> Body for SlotBody<B>
where
    B: Body,
    B::Data: Buf,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if frame.is_none() || matches!(frame, Some(Err(_))) {
            this.slot.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
