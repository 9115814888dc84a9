//! [`CacheLayer`]: a shared cache in front of any tower HTTP service, with an in-memory store.
//!
//! Per request: `GET` and `HEAD` are looked up (a `HEAD` is answered from a stored `GET`);
//! a fresh variant is served with `Age` and `Cache-Status: gateway; hit`; a stale one is
//! revalidated with `If-None-Match` / `If-Modified-Since` (a `304` refreshes the stored headers
//! and the stored body is served), or served stale when the origin fails and `stale-if-error`
//! allows it; a miss goes to the service and is stored when [`CachePolicy::storable`] says so
//! and its body is within the size cap. Unsafe methods invalidate the target URI (and a
//! same-host `Location` / `Content-Location`) when their answer is not an error. Variants follow
//! `Vary`, with header values normalized.
//!
//! ```
//! use std::{convert::Infallible, sync::{Arc, atomic::{AtomicUsize, Ordering}}};
//! use bytes::Bytes;
//! use gateway_cache::{CacheLayer, MemoryStore};
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{Layer, Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let counter = calls.clone();
//! let origin = service_fn(move |_req: Request<Full<Bytes>>| {
//!     counter.fetch_add(1, Ordering::Relaxed);
//!     async {
//!         Ok::<_, Infallible>(
//!             Response::builder()
//!                 .header("cache-control", "max-age=60")
//!                 .body(Full::new(Bytes::from("hello")))
//!                 .unwrap(),
//!         )
//!     }
//! });
//! let mut svc = CacheLayer::new(MemoryStore::new(64 << 20)).layer(origin);
//! for _ in 0..3 {
//!     let req = Request::get("http://example.com/greeting").body(Full::default()).unwrap();
//!     let res = svc.ready().await.unwrap().call(req).await.unwrap();
//!     assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "hello");
//! }
//! assert_eq!(calls.load(Ordering::Relaxed), 1, "two hits");
//! # }
//! ```

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use tower_layer::Layer;
use tower_service::Service;

use crate::policy::{CacheControl, CachePolicy, Reuse, Storable, Timing, reuse};

/// A stored response.
#[derive(Clone, Debug)]
pub struct Entry {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) timing: Timing,
    pub(crate) lifetime: Duration,
    /// The request header values its `Vary` names, normalized.
    pub(crate) vary: Vec<(HeaderName, String)>,
}

impl Entry {
    fn weight(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len() + 32)
                .sum::<usize>()
            + 128
    }
}

/// Where entries live.
/// A boxed future of a store operation.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where entries live. Operations never fail: a store that cannot answer reports a miss (and
/// drops a write), so the cache degrades to the origin, never to an error.
pub trait CacheStore: Send + Sync + std::fmt::Debug + 'static {
    /// The variants stored under `key`.
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<Entry>>;
    /// Stores `entry` under `key`, replacing the variant with the same `Vary` values.
    fn put<'a>(&'a self, key: &'a str, entry: Entry) -> StoreFuture<'a, ()>;
    /// Removes every variant under `key`; whether there were any.
    fn remove<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool>;
    /// Removes every entry whose key starts with `prefix`; returns how many keys went.
    fn purge_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, usize>;
    /// Removes every entry tagged `tag` by its `Surrogate-Key` (or `Cache-Tag`) header; returns
    /// how many keys went.
    fn purge_tag<'a>(&'a self, tag: &'a str) -> StoreFuture<'a, usize>;
}

fn tagged(entry: &Entry, tag: &str) -> bool {
    ["surrogate-key", "cache-tag"].iter().any(|h| {
        entry
            .headers
            .get_all(*h)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([' ', ',']))
            .any(|t| t == tag)
    })
}

/// An in-memory store bounded by total size (bodies and headers); when full, the oldest
/// insertions go first.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Mem>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Mem {
    map: HashMap<String, Vec<Entry>>,
    order: std::collections::VecDeque<String>,
    size: usize,
}

impl MemoryStore {
    /// A store holding at most `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Mem::default()),
            capacity,
        }
    }

    /// Bytes held.
    pub fn size(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).size
    }
}

impl CacheStore for MemoryStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<Entry>> {
        Box::pin(std::future::ready(MemoryStore::get(self, key)))
    }

    fn put<'a>(&'a self, key: &'a str, entry: Entry) -> StoreFuture<'a, ()> {
        MemoryStore::put(self, key, entry);
        Box::pin(std::future::ready(()))
    }

    fn remove<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(std::future::ready(MemoryStore::remove(self, key)))
    }

    fn purge_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, usize> {
        Box::pin(std::future::ready(MemoryStore::purge_prefix(self, prefix)))
    }

    fn purge_tag<'a>(&'a self, tag: &'a str) -> StoreFuture<'a, usize> {
        Box::pin(std::future::ready(MemoryStore::purge_tag(self, tag)))
    }
}

impl MemoryStore {
    /// The variants stored under `key`.
    pub fn get(&self, key: &str) -> Vec<Entry> {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.map.get(key).cloned().unwrap_or_default()
    }

    /// Stores `entry` under `key`, replacing the variant with the same `Vary` values.
    pub fn put(&self, key: &str, entry: Entry) {
        let weight = entry.weight();
        if weight > self.capacity {
            return;
        }
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let variants = m.map.entry(key.to_owned()).or_default();
        let mut freed = 0;
        variants.retain(|v| {
            let same = v.vary == entry.vary;
            if same {
                freed += v.weight();
            }
            !same
        });
        variants.push(entry);
        m.size = m.size - freed + weight;
        m.order.push_back(key.to_owned());
        while m.size > self.capacity {
            let Some(oldest) = m.order.pop_front() else {
                break;
            };
            if let Some(gone) = m.map.remove(&oldest) {
                m.size -= gone.iter().map(Entry::weight).sum::<usize>();
            }
        }
    }

    /// Removes every variant under `key`; whether there were any.
    pub fn remove(&self, key: &str) -> bool {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(gone) = m.map.remove(key) else {
            return false;
        };
        m.size -= gone.iter().map(Entry::weight).sum::<usize>();
        true
    }

    /// Removes every entry whose key starts with `prefix`; returns how many keys went.
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        self.purge_where(|key, _| key.starts_with(prefix))
    }

    /// Removes every entry tagged `tag`; returns how many keys went.
    pub fn purge_tag(&self, tag: &str) -> usize {
        self.purge_where(|_, variants| variants.iter().any(|e| tagged(e, tag)))
    }

    fn purge_where(&self, doomed: impl Fn(&str, &[Entry]) -> bool) -> usize {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<String> = m
            .map
            .iter()
            .filter(|(k, v)| doomed(k, v))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            if let Some(gone) = m.map.remove(k) {
                m.size -= gone.iter().map(Entry::weight).sum::<usize>();
            }
        }
        keys.len()
    }
}

/// A shared cache in front of a service; see the [crate docs](crate).
#[derive(Clone)]
pub struct CacheLayer {
    store: Arc<dyn CacheStore>,
    policy: Arc<CachePolicy>,
    max_body: usize,
    inflight: Arc<Mutex<HashMap<String, tokio::sync::watch::Sender<()>>>>,
    coalesce_wait: Duration,
}

/// The first miss for a key: others wait for it until this is dropped.
struct Leader {
    inflight: Arc<Mutex<HashMap<String, tokio::sync::watch::Sender<()>>>>,
    key: String,
}

impl Drop for Leader {
    fn drop(&mut self) {
        // Dropping the sender wakes every follower.
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

impl CacheLayer {
    /// Becomes the leader for `key`, or gets a receiver that closes when the leader is done.
    fn join(&self, key: &str) -> Result<Leader, tokio::sync::watch::Receiver<()>> {
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = map.get(key) {
            return Err(tx.subscribe());
        }
        map.insert(key.to_owned(), tokio::sync::watch::channel(()).0);
        Ok(Leader {
            inflight: self.inflight.clone(),
            key: key.to_owned(),
        })
    }
}

impl std::fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLayer")
            .field("policy", &self.policy)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl CacheLayer {
    /// A cache over `store` with the default policy and a 1 MiB body cap.
    pub fn new(store: impl CacheStore) -> Self {
        Self {
            store: Arc::new(store),
            policy: Arc::new(CachePolicy::default()),
            max_body: 1 << 20,
            inflight: Arc::default(),
            coalesce_wait: Duration::from_secs(5),
        }
    }

    /// The storage and freshness policy.
    #[must_use]
    pub fn policy(mut self, policy: CachePolicy) -> Self {
        self.policy = Arc::new(policy);
        self
    }

    /// The store (for purges).
    pub fn store(&self) -> &Arc<dyn CacheStore> {
        &self.store
    }

    /// A cache over a store shared with other layers (one store for every route, say).
    pub fn shared(store: Arc<dyn CacheStore>) -> Self {
        Self {
            store,
            policy: Arc::new(CachePolicy::default()),
            max_body: 1 << 20,
            inflight: Arc::default(),
            coalesce_wait: Duration::from_secs(5),
        }
    }

    /// Concurrent misses for one key send one request to the origin; the others wait for its
    /// answer at most this long (default 5s), then go to the origin themselves.
    #[must_use]
    pub fn coalesce_wait(mut self, wait: Duration) -> Self {
        self.coalesce_wait = wait;
        self
    }

    /// Responses with larger bodies are passed through, not stored.
    #[must_use]
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Cache {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`CacheLayer`].
#[derive(Clone, Debug)]
pub struct Cache<S> {
    inner: S,
    layer: CacheLayer,
}

/// The cache key: scheme, host and path with query (the method is not part of it: `HEAD` is
/// answered from `GET`). The scheme is the request target's, else `https` when the connection is
/// TLS ([`gateway_core::ConnectionInfo`]), else `http`: an answer cached for one scheme is never
/// served on the other.
fn key<B>(req: &Request<B>) -> String {
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_ascii_lowercase())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_ascii_lowercase)
        })
        .unwrap_or_default();
    let tls = req
        .extensions()
        .get::<gateway_core::ConnectionInfo>()
        .is_some_and(|c| c.tls);
    let scheme = req
        .uri()
        .scheme_str()
        .unwrap_or(if tls { "https" } else { "http" });
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    format!("{scheme}://{host}{pq}")
}

/// A request header's value as `Vary` compares it: every field line joined, whitespace around
/// commas and at the ends removed, case kept.
fn vary_value(headers: &HeaderMap, name: &HeaderName) -> String {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(",")
}

fn vary_names(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|f| HeaderName::from_bytes(f.trim().to_ascii_lowercase().as_bytes()).ok())
        .collect()
}

fn status_header<B>(res: &mut Response<B>, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        res.headers_mut().append("cache-status", v);
    }
}

fn serve<B>(entry: &Entry, head: bool, now: SystemTime, status: &str) -> Response<CacheBody<B>> {
    let mut res = Response::new(CacheBody::cached(if head {
        Bytes::new()
    } else {
        entry.body.clone()
    }));
    *res.status_mut() = entry.status;
    *res.headers_mut() = entry.headers.clone();
    res.headers_mut().insert(
        header::AGE,
        HeaderValue::from(entry.timing.current_age(now).as_secs()),
    );
    status_header(&mut res, status);
    res
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project_lite::pin_project! {
    /// The body of a [`Cache`] response: a stored body, or the origin's streamed through.
    #[derive(Debug)]
    pub struct CacheBody<B> {
        #[pin]
        inner: Inner<B>,
    }
}

pin_project_lite::pin_project! {
    #[project = InnerProj]
    #[derive(Debug)]
    enum Inner<B> {
        Cached { data: Option<Bytes> },
        Origin { #[pin] body: B },
    }
}

impl<B> CacheBody<B> {
    fn cached(bytes: Bytes) -> Self {
        Self {
            inner: Inner::Cached {
                data: (!bytes.is_empty()).then_some(bytes),
            },
        }
    }

    fn origin(body: B) -> Self {
        Self {
            inner: Inner::Origin { body },
        }
    }

    /// Whether the body comes from the cache.
    pub fn is_cached(&self) -> bool {
        matches!(self.inner, Inner::Cached { .. })
    }

    /// The body as one of two types: the cached bytes, or the origin's body.
    pub fn either<C>(self, cached: impl FnOnce(Bytes) -> C, origin: impl FnOnce(B) -> C) -> C {
        match self.inner {
            Inner::Cached { data } => cached(data.unwrap_or_default()),
            Inner::Origin { body } => origin(body),
        }
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.project().inner.project() {
            InnerProj::Cached { data } => {
                Poll::Ready(data.take().map(|d| Ok(http_body::Frame::data(d))))
            }
            InnerProj::Origin { body } => body.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Cached { data } => data.is_none(),
            Inner::Origin { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.inner {
            Inner::Cached { data } => {
                http_body::SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Inner::Origin { body } => body.size_hint(),
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Cache<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    ReqBody: Default + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let inner = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, inner);
        let layer = self.layer.clone();
        Box::pin(handle(layer, inner, req))
    }
}

async fn handle<S, ReqBody, ResBody>(
    layer: CacheLayer,
    mut inner: S,
    req: Request<ReqBody>,
) -> Result<Response<CacheBody<ResBody>>, Infallible>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = Infallible>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Ok(layer
        .serve(req, |req| async move {
            match inner.call(req).await {
                Ok(res) => res,
                Err(never) => match never {},
            }
        })
        .await)
}

impl CacheLayer {
    /// The cache around one origin call, for servers that drive requests themselves (the
    /// reference gateway): `origin` is called at most once, with the request (conditional
    /// when revalidating), unless the cache answers.
    pub async fn serve<ReqBody, ResBody, F, Fut>(
        &self,
        req: Request<ReqBody>,
        origin: F,
    ) -> Response<CacheBody<ResBody>>
    where
        F: FnOnce(Request<ReqBody>) -> Fut,
        Fut: Future<Output = Response<ResBody>>,
        ResBody: Body<Data = Bytes>,
        ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        serve_with(self, req, None, origin).await
    }

    /// Like [`CacheLayer::serve`], with entries kept apart per `scope` (the caller's identity on
    /// routes whose answers depend on who asks): one caller's stored answer is never served to
    /// another. Invalidations and purges by prefix reach every scope.
    pub async fn serve_scoped<ReqBody, ResBody, F, Fut>(
        &self,
        req: Request<ReqBody>,
        scope: &str,
        origin: F,
    ) -> Response<CacheBody<ResBody>>
    where
        F: FnOnce(Request<ReqBody>) -> Fut,
        Fut: Future<Output = Response<ResBody>>,
        ResBody: Body<Data = Bytes>,
        ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        serve_with(self, req, Some(scope), origin).await
    }
}

async fn serve_with<ReqBody, ResBody, F, Fut>(
    layer: &CacheLayer,
    mut req: Request<ReqBody>,
    scope: Option<&str>,
    origin: F,
) -> Response<CacheBody<ResBody>>
where
    F: FnOnce(Request<ReqBody>) -> Fut,
    Fut: Future<Output = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let method = req.method().clone();
    let unscoped = key(&req);
    // A scope goes after a `#` (never part of a request target), so a prefix purge of the URL
    // reaches every scope.
    let key = match scope {
        Some(s) => format!("{unscoped}#{}", s.replace('#', "%23")),
        None => unscoped.clone(),
    };
    let now = SystemTime::now();
    if method != Method::GET && method != Method::HEAD {
        let res = origin(req).await.map(|body| CacheBody::origin(body));
        // Unsafe methods invalidate what they may have changed (RFC 9111 §4.4).
        if !method.is_safe() && (res.status().is_success() || res.status().is_redirection()) {
            // Every scope's copy goes.
            let forget = |k: String| async move {
                layer.store.remove(&k).await;
                layer.store.purge_prefix(&format!("{k}#")).await;
            };
            forget(unscoped.clone()).await;
            let host_prefix = unscoped.split('/').take(3).collect::<Vec<_>>().join("/");
            for h in [header::LOCATION, header::CONTENT_LOCATION] {
                if let Some(target) = res.headers().get(&h).and_then(|v| v.to_str().ok()) {
                    let same_host = if target.starts_with('/') {
                        Some(format!("{host_prefix}{target}"))
                    } else {
                        target
                            .starts_with(&format!("{host_prefix}/"))
                            .then(|| target.to_owned())
                    };
                    if let Some(k) = same_host {
                        forget(k).await;
                    }
                }
            }
        }
        return res;
    }
    // Range requests go to the origin untouched: this cache neither stores partial content nor
    // cuts ranges out of stored bodies.
    if req.headers().contains_key(header::RANGE) {
        let mut res = origin(req).await.map(|body| CacheBody::origin(body));
        status_header(&mut res, "gateway; fwd=bypass; detail=range");
        return res;
    }
    let head = method == Method::HEAD;
    let req_cc = CacheControl::parse(req.headers());
    let lookup = |found: Vec<Entry>, headers: &HeaderMap| {
        found.into_iter().find(|e| {
            e.vary
                .iter()
                .all(|(name, value)| vary_value(headers, name) == *value)
        })
    };
    let mut stored = lookup(layer.store.get(&key).await, req.headers());
    // Coalescing: while one miss for this key is at the origin, the others wait for its answer
    // (bounded) and look again. Keys are per scope, so this never crosses callers.
    let mut _leader = None;
    if stored.is_none() && !req_cc.only_if_cached {
        match layer.join(&key) {
            Ok(leader) => _leader = Some(leader),
            Err(mut done) => {
                let _ = tokio::time::timeout(layer.coalesce_wait, done.changed()).await;
                stored = lookup(layer.store.get(&key).await, req.headers());
                if let Some(entry) = &stored {
                    let res_cc = CacheControl::parse(&entry.headers);
                    let age = entry.timing.current_age(SystemTime::now());
                    if matches!(
                        reuse(&req_cc, req.headers(), &res_cc, entry.lifetime, age),
                        Reuse::Fresh | Reuse::StaleWhileRevalidate
                    ) {
                        return serve(
                            entry,
                            head,
                            SystemTime::now(),
                            "gateway; hit; detail=coalesced",
                        );
                    }
                }
            }
        }
    }
    let mut revalidating = None;
    if let Some(entry) = stored {
        let res_cc = CacheControl::parse(&entry.headers);
        let age = entry.timing.current_age(now);
        match reuse(&req_cc, req.headers(), &res_cc, entry.lifetime, age) {
            Reuse::Fresh | Reuse::StaleWhileRevalidate => {
                return serve(&entry, head, now, "gateway; hit");
            }
            Reuse::Revalidate { stale_if_error } => {
                if let Some(etag) = entry.headers.get(header::ETAG) {
                    req.headers_mut()
                        .insert(header::IF_NONE_MATCH, etag.clone());
                } else if let Some(lm) = entry.headers.get(header::LAST_MODIFIED) {
                    req.headers_mut()
                        .insert(header::IF_MODIFIED_SINCE, lm.clone());
                }
                revalidating = Some((entry, stale_if_error));
            }
        }
    }
    if req_cc.only_if_cached {
        let mut res = Response::new(CacheBody::cached(Bytes::new()));
        *res.status_mut() = StatusCode::GATEWAY_TIMEOUT;
        status_header(&mut res, "gateway; fwd=miss; detail=only-if-cached");
        return res;
    }
    // HEAD misses are forwarded as they are; only GET answers are stored.
    let mut probe = Request::new(());
    *probe.uri_mut() = req.uri().clone();
    *probe.headers_mut() = req.headers().clone();
    let fwd = if revalidating.is_some() {
        "stale"
    } else {
        "miss"
    };
    let sent_at = SystemTime::now();
    let res = origin(req).await;
    let received_at = SystemTime::now();
    if let Some((entry, stale_if_error)) = revalidating {
        if res.status() == StatusCode::NOT_MODIFIED {
            // Refresh the stored headers from the 304 (RFC 9111 §4.3.4) and serve the body.
            let mut fresh = entry;
            for (name, value) in res.headers() {
                if name != header::CONTENT_LENGTH {
                    fresh.headers.insert(name.clone(), value.clone());
                }
            }
            fresh.timing = Timing::of(&res, sent_at, received_at);
            let as_stored = Response::from_parts(
                {
                    let mut p = Response::new(()).into_parts().0;
                    p.status = fresh.status;
                    p.headers = fresh.headers.clone();
                    p
                },
                (),
            );
            fresh.lifetime = layer
                .policy
                .freshness_lifetime(&as_stored)
                .unwrap_or_default();
            layer.store.put(&key, fresh.clone()).await;
            return serve(
                &fresh,
                head,
                received_at,
                "gateway; hit; fwd=stale; fwd-status=304",
            );
        }
        if res.status().is_server_error() && stale_if_error {
            return serve(
                &entry,
                head,
                received_at,
                "gateway; hit; fwd=stale; detail=stale-if-error",
            );
        }
    }
    // Stored only with a declared length within the cap: anything else streams through.
    let declared = res
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .or_else(|| {
            res.body()
                .size_hint()
                .exact()
                .and_then(|n| usize::try_from(n).ok())
        });
    let lifetime = layer.policy.freshness_lifetime(&res);
    let storable = !head
        && layer.policy.storable(&probe, &res) == Storable::Yes
        && declared.is_some_and(|n| n <= layer.max_body)
        && lifetime.is_some();
    let Some(lifetime) = lifetime.filter(|_| storable) else {
        let mut out = res.map(|body| CacheBody::origin(body));
        status_header(&mut out, &format!("gateway; fwd={fwd}"));
        return out;
    };
    let (parts, body) = res.into_parts();
    let body = match Limited::new(body, layer.max_body).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            // The origin failed mid-body (or sent more than it declared): not stored.
            let mut r = Response::new(CacheBody::cached(Bytes::new()));
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            status_header(&mut r, "gateway; fwd=miss; detail=origin-body-failed");
            return r;
        }
    };
    let mut out = Response::from_parts(parts, CacheBody::cached(body.clone()));
    let names = vary_names(out.headers());
    layer
        .store
        .put(
            &key,
            Entry {
                status: out.status(),
                headers: out.headers().clone(),
                body,
                timing: Timing::of(&out, sent_at, received_at),
                lifetime,
                vary: names
                    .iter()
                    .map(|n| (n.clone(), vary_value(probe.headers(), n)))
                    .collect(),
            },
        )
        .await;
    status_header(&mut out, &format!("gateway; fwd={fwd}; stored"));
    out
}
