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
use gateway_core::CacheOutcome;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header,
};
use http_body::Body;
use http_body_util::BodyExt;
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    key::{CacheKey, MakeCacheKey, UNKEYED_HEADERS},
    policy::{CacheControl, CachePolicy, Reuse, Storable, Timing, reuse},
};

/// A stored response.
#[derive(Clone, Debug)]
pub struct Entry {
    pub(crate) status: StatusCode,
    /// Shared: a hit clones the entry out of the store, and only the response's own copy of
    /// the header map is a deep clone.
    pub(crate) headers: Arc<HeaderMap>,
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

/// An in-memory store bounded by total size (bodies and headers). When full, entries leave
/// in insertion order, except that an entry read since it was last considered gets a second
/// chance (the CLOCK approximation of least-recently-used): hot entries stay.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Mem>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Mem {
    map: HashMap<String, Slot>,
    /// Keys in eviction order, with the generation they were queued at (older records of a
    /// key are skipped).
    order: std::collections::VecDeque<(String, u64)>,
    size: usize,
    generation: u64,
}

#[derive(Debug)]
struct Slot {
    variants: Vec<Entry>,
    generation: u64,
    referenced: bool,
}

impl Mem {
    fn drop_key(&mut self, key: &str) -> bool {
        let Some(gone) = self.map.remove(key) else {
            return false;
        };
        self.size -= gone.variants.iter().map(Entry::weight).sum::<usize>();
        true
    }

    fn queue(&mut self, key: String) -> u64 {
        self.generation += 1;
        self.order.push_back((key, self.generation));
        // Records of re-stored keys pile up: rebuild the queue when most are stale.
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(k, g)| map.get(k).is_some_and(|s| s.generation == *g));
        }
        self.generation
    }

    fn evict_until(&mut self, capacity: usize) {
        while self.size > capacity {
            let Some((key, generation)) = self.order.pop_front() else {
                break;
            };
            let Some(slot) = self.map.get_mut(&key) else {
                continue;
            };
            if slot.generation != generation {
                continue;
            }
            if slot.referenced {
                slot.referenced = false;
                self.order.push_back((key, generation));
                continue;
            }
            self.drop_key(&key);
        }
    }
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
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.map.get_mut(key).map_or_else(Vec::new, |slot| {
            slot.referenced = true;
            slot.variants.clone()
        })
    }

    /// Stores `entry` under `key`, replacing the variant with the same `Vary` values.
    pub fn put(&self, key: &str, entry: Entry) {
        let weight = entry.weight();
        if weight > self.capacity {
            return;
        }
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let generation = m.queue(key.to_owned());
        let slot = m.map.entry(key.to_owned()).or_insert_with(|| Slot {
            variants: Vec::new(),
            generation,
            referenced: false,
        });
        slot.generation = generation;
        let mut freed = 0;
        slot.variants.retain(|v| {
            let same = v.vary == entry.vary;
            if same {
                freed += v.weight();
            }
            !same
        });
        slot.variants.push(entry);
        m.size = m.size - freed + weight;
        m.evict_until(self.capacity);
    }

    /// Removes every variant under `key`; whether there were any.
    pub fn remove(&self, key: &str) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drop_key(key)
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
            .filter(|(k, v)| doomed(k, &v.variants))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            m.drop_key(k);
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
    inflight: Inflight,
    coalesce_wait: Duration,
    key: Arc<dyn MakeCacheKey>,
    unkeyed: Arc<[HeaderName]>,
    status_name: Option<Arc<str>>,
    status_values: Arc<[(&'static str, HeaderValue)]>,
}

type Inflight = Arc<Mutex<HashMap<String, tokio::sync::watch::Sender<()>>>>;

const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The `Cache-Status` parameters this cache writes.
const STATUS_PARAMS: &[&str] = &[
    "hit",
    "hit; detail=coalesced",
    "hit; fwd=stale; detail=stale-while-revalidate",
    "hit; fwd=stale; fwd-status=304",
    "hit; fwd=stale; detail=stale-if-error",
    "fwd=miss",
    "fwd=stale",
    "fwd=miss; stored",
    "fwd=stale; stored",
    "fwd=bypass; detail=range",
    "fwd=miss; detail=only-if-cached",
];

/// Every `Cache-Status` value for the cache called `name`, made once.
fn status_values(name: Option<&str>) -> Arc<[(&'static str, HeaderValue)]> {
    name.map_or_else(
        || Arc::from(Vec::new()),
        |name| {
            STATUS_PARAMS
                .iter()
                .filter_map(|p| {
                    HeaderValue::from_str(&format!("{name}; {p}"))
                        .ok()
                        .map(|v| (*p, v))
                })
                .collect()
        },
    )
}

/// The one request for a key at the origin (a miss, or a background refresh): others wait for
/// it, or do not start another, until this is dropped.
struct Leader {
    inflight: Inflight,
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
            .field("unkeyed", &self.unkeyed)
            .field("status_name", &self.status_name)
            .finish_non_exhaustive()
    }
}

impl CacheLayer {
    /// A cache over `store` with the default policy and a 1 MiB body cap.
    pub fn new(store: impl CacheStore) -> Self {
        Self::shared(Arc::new(store))
    }

    /// A cache over a store shared with other layers (one store for every route, say).
    pub fn shared(store: Arc<dyn CacheStore>) -> Self {
        Self {
            store,
            policy: Arc::new(CachePolicy::default()),
            max_body: 1 << 20,
            inflight: Arc::default(),
            coalesce_wait: Duration::from_secs(5),
            key: Arc::new(CacheKey::new()),
            unkeyed: UNKEYED_HEADERS
                .iter()
                .map(|h| HeaderName::from_static(h))
                .collect(),
            status_name: Some(Arc::from("gateway")),
            status_values: status_values(Some("gateway")),
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

    /// How requests map to keys (default [`CacheKey::new`]: the URL as sent).
    #[must_use]
    pub fn key(mut self, key: impl MakeCacheKey) -> Self {
        self.key = Arc::new(key);
        self
    }

    /// Request headers removed before a cacheable request is forwarded, unless the key includes
    /// them (default [`UNKEYED_HEADERS`]); replaces the list.
    #[must_use]
    pub fn unkeyed_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.unkeyed = names.into_iter().collect();
        self
    }

    /// The cache's name in `Cache-Status` (RFC 9211; default `gateway`), or `None` for no
    /// `Cache-Status` field at all.
    #[must_use]
    pub fn cache_status(mut self, name: Option<&str>) -> Self {
        self.status_values = status_values(name);
        self.status_name = name.map(Arc::from);
        self
    }

    /// Records what the cache did: the [`CacheOutcome`] extension, and `Cache-Status` with
    /// `params` when enabled.
    fn mark<B>(&self, res: &mut Response<B>, outcome: CacheOutcome, params: &str) {
        res.extensions_mut().insert(outcome);
        let Some(name) = &self.status_name else {
            return;
        };
        // The usual values are made once, not per response.
        let made = self
            .status_values
            .iter()
            .find(|(p, _)| *p == params)
            .map(|(_, v)| v.clone());
        if let Some(v) = made.or_else(|| HeaderValue::from_str(&format!("{name}; {params}")).ok()) {
            res.headers_mut().append(CACHE_STATUS, v);
        }
    }

    /// The URL part of the key of a `GET` to `uri` (for invalidation).
    fn url_key(&self, uri: Uri, like: &http::request::Parts) -> String {
        let mut probe = Request::get(uri)
            .body(())
            .unwrap_or_default()
            .into_parts()
            .0;
        if let Some(host) = like.headers.get(header::HOST) {
            probe.headers.insert(header::HOST, host.clone());
        }
        for name in self.key.keyed_headers() {
            for v in like.headers.get_all(name) {
                probe.headers.append(name.clone(), v.clone());
            }
        }
        if let Some(info) = like.extensions.get::<gateway_core::ConnectionInfo>() {
            probe.extensions.insert(*info);
        }
        let key = self.key.make_key(&mut probe);
        key.split('#').next().unwrap_or_default().to_owned()
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

/// A request header's value as `Vary` compares it: every field line joined, whitespace around
/// commas and at the ends removed, case kept.
pub(crate) fn vary_value(headers: &HeaderMap, name: &HeaderName) -> String {
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

/// The client's own validators (`If-None-Match`, `If-Modified-Since`): the cache answers them
/// itself, so they are not forwarded on cacheable requests.
#[derive(Debug, Default)]
struct Conditions {
    none_match: Option<String>,
    modified_since: Option<SystemTime>,
}

impl Conditions {
    fn take(headers: &mut HeaderMap) -> Self {
        if !headers.contains_key(header::IF_NONE_MATCH)
            && !headers.contains_key(header::IF_MODIFIED_SINCE)
        {
            return Self::default();
        }
        let none_match = headers.remove(header::IF_NONE_MATCH);
        let modified_since = headers.remove(header::IF_MODIFIED_SINCE);
        Self {
            none_match: none_match.and_then(|v| v.to_str().ok().map(str::to_owned)),
            modified_since: modified_since
                .and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok()),
        }
    }

    /// Whether a `200` with these headers answers the client `304` (RFC 9110 §13.2.2: with
    /// `If-None-Match`, a weak `ETag` comparison; else `If-Modified-Since` against
    /// `Last-Modified`).
    fn not_modified(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        if status != StatusCode::OK {
            return false;
        }
        let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
        if let Some(list) = &self.none_match {
            let Some(etag) = headers.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
                return false;
            };
            let etag = opaque(etag);
            return list
                .split(',')
                .any(|t| t.trim() == "*" || opaque(t) == etag);
        }
        match (self.modified_since, headers.get(header::LAST_MODIFIED)) {
            (Some(since), Some(lm)) => lm
                .to_str()
                .ok()
                .and_then(|v| httpdate::parse_http_date(v).ok())
                .is_some_and(|lm| lm <= since),
            _ => false,
        }
    }
}

/// Turns a `200` into the `304` a conditional client asked for (no body, no length).
fn into_not_modified<B>(res: Response<CacheBody<B>>) -> Response<CacheBody<B>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = res.into_parts();
    parts.status = StatusCode::NOT_MODIFIED;
    parts.headers.remove(header::CONTENT_LENGTH);
    drain_in_background(body);
    Response::from_parts(parts, CacheBody::cached(Bytes::new()))
}

/// Reads a body being stored to its end (the client does not want it), so the entry is kept.
fn drain_in_background<B>(body: CacheBody<B>)
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if matches!(body.inner, Inner::Tee { .. })
        && let Ok(rt) = tokio::runtime::Handle::try_current()
    {
        rt.spawn(drain(body));
    }
}

/// Reads a body being stored to its end; any other body is just dropped.
async fn drain<B>(body: CacheBody<B>)
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if matches!(body.inner, Inner::Tee { .. }) {
        let mut body = std::pin::pin!(body);
        while let Some(Ok(_)) = body.frame().await {}
    }
}

fn serve<B>(entry: &Entry, head: bool, now: SystemTime) -> Response<CacheBody<B>> {
    let mut res = Response::new(CacheBody::cached(if head {
        Bytes::new()
    } else {
        entry.body.clone()
    }));
    *res.status_mut() = entry.status;
    *res.headers_mut() = (*entry.headers).clone();
    res.headers_mut().insert(
        header::AGE,
        HeaderValue::from(entry.timing.current_age(now).as_secs()),
    );
    res
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project_lite::pin_project! {
    /// The body of a [`Cache`] response: a stored body, or the origin's streamed through (and
    /// stored as it goes, when it may be).
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
        Tee { #[pin] body: B, sink: Option<Box<Sink>> },
    }
}

/// A response being stored while it streams to the client: kept only if it ends within the size
/// cap, without an error and without trailers.
struct Sink {
    store: Arc<dyn CacheStore>,
    key: String,
    entry: Entry,
    chunks: Vec<Bytes>,
    len: usize,
    cap: usize,
    _leader: Option<Leader>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("key", &self.key)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Sink {
    /// Stores the complete body; the leader is released once it is stored, so waiting
    /// requests find it.
    fn finish(self) {
        let Self {
            store,
            key,
            mut entry,
            chunks,
            _leader,
            ..
        } = self;
        entry.body = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.into_iter().next().unwrap_or_default(),
            _ => chunks.concat().into(),
        };
        let mut put = Box::pin(async move {
            store.put(&key, entry).await;
            drop(_leader);
        });
        // A store that answers at once (memory) has the entry before the client sees the end
        // of the body; a remote one (Redis) finishes in a task of its own.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if put.as_mut().poll(&mut cx).is_pending()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(put);
        }
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

    /// The stored bytes of a body served from the cache, or the body itself.
    ///
    /// # Errors
    ///
    /// The body itself when it is not a stored one.
    pub fn into_cached(self) -> Result<Bytes, Self> {
        match self.inner {
            Inner::Cached { data } => Ok(data.unwrap_or_default()),
            inner => Err(Self { inner }),
        }
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.project().inner.project() {
            InnerProj::Cached { data } => {
                Poll::Ready(data.take().map(|d| Ok(http_body::Frame::data(d))))
            }
            InnerProj::Origin { body } => body.poll_frame(cx).map_err(Into::into),
            InnerProj::Tee { mut body, sink } => {
                match std::task::ready!(body.as_mut().poll_frame(cx)) {
                    Some(Ok(frame)) => {
                        match (frame.data_ref(), sink.as_mut()) {
                            (Some(data), Some(s)) if s.len + data.len() <= s.cap => {
                                s.len += data.len();
                                s.chunks.push(data.clone());
                            }
                            // Too large, or trailers: not stored.
                            _ => *sink = None,
                        }
                        if body.is_end_stream()
                            && let Some(s) = sink.take()
                        {
                            s.finish();
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Some(Err(e)) => {
                        *sink = None;
                        Poll::Ready(Some(Err(e.into())))
                    }
                    None => {
                        if let Some(s) = sink.take() {
                            s.finish();
                        }
                        Poll::Ready(None)
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Cached { data } => data.is_none(),
            Inner::Origin { body } => body.is_end_stream(),
            // Polled once more after the last frame, so the entry is stored.
            Inner::Tee { body, sink } => sink.is_none() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.inner {
            Inner::Cached { data } => {
                http_body::SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Inner::Origin { body } | Inner::Tee { body, .. } => body.size_hint(),
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Cache<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Default + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let inner = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, inner);
        let layer = self.layer.clone();
        Box::pin(async move {
            let origin = move |req| {
                let fut = inner.call(req);
                async move {
                    match fut.await {
                        Ok(res) => res,
                        Err(never) => match never {},
                    }
                }
            };
            Ok(layer.serve(req, origin).await)
        })
    }
}

impl CacheLayer {
    /// The cache around one origin call, for servers that drive requests themselves (the
    /// reference gateway): `origin` is called at most once, with the request (conditional
    /// when revalidating), unless the cache answers. For a `stale-while-revalidate` answer it is
    /// called in a background task, which stores the refreshed entry.
    pub async fn serve<ReqBody, ResBody, F, Fut>(
        &self,
        req: Request<ReqBody>,
        origin: F,
    ) -> Response<CacheBody<ResBody>>
    where
        F: FnOnce(Request<ReqBody>) -> Fut + Send + 'static,
        Fut: Future<Output = Response<ResBody>> + Send + 'static,
        ReqBody: Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<BoxError>,
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
        F: FnOnce(Request<ReqBody>) -> Fut + Send + 'static,
        Fut: Future<Output = Response<ResBody>> + Send + 'static,
        ReqBody: Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        serve_with(self, req, Some(scope), origin).await
    }

    /// Unsafe methods invalidate what they may have changed (RFC 9111 §4.4): the target URI
    /// and a same-host `Location` / `Content-Location`, in every scope and keyed variant.
    async fn invalidate(&self, parts: &http::request::Parts, locations: Vec<HeaderValue>) {
        let forget = |k: String| async move {
            self.store.remove(&k).await;
            self.store.purge_prefix(&format!("{k}#")).await;
        };
        let target = self.url_key(parts.uri.clone(), parts);
        let origin = target.split('/').take(3).collect::<Vec<_>>().join("/");
        forget(target).await;
        for location in &locations {
            let Ok(location) = location.to_str() else {
                continue;
            };
            let absolute = if location.starts_with('/') && !location.starts_with("//") {
                format!("{origin}{location}")
            } else if location.starts_with(&format!("{origin}/")) {
                location.to_owned()
            } else {
                continue;
            };
            if let Ok(uri) = absolute.parse::<Uri>() {
                forget(self.url_key(uri, parts)).await;
            }
        }
    }
}

async fn serve_with<ReqBody, ResBody, F, Fut>(
    layer: &CacheLayer,
    req: Request<ReqBody>,
    scope: Option<&str>,
    origin: F,
) -> Response<CacheBody<ResBody>>
where
    F: FnOnce(Request<ReqBody>) -> Fut + Send + 'static,
    Fut: Future<Output = Response<ResBody>> + Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let method = req.method().clone();
    if method != Method::GET && method != Method::HEAD {
        let (parts, body) = req.into_parts();
        let mut probe = Request::new(());
        *probe.uri_mut() = parts.uri.clone();
        *probe.headers_mut() = parts.headers.clone();
        if let Some(info) = parts.extensions.get::<gateway_core::ConnectionInfo>() {
            probe.extensions_mut().insert(*info);
        }
        let mut res = origin(Request::from_parts(parts, body))
            .await
            .map(CacheBody::origin);
        if !method.is_safe() && (res.status().is_success() || res.status().is_redirection()) {
            let locations = [header::LOCATION, header::CONTENT_LOCATION]
                .iter()
                .filter_map(|h| res.headers().get(h).cloned())
                .collect();
            layer.invalidate(&probe.into_parts().0, locations).await;
        }
        res.extensions_mut().insert(CacheOutcome::Bypass);
        return res;
    }
    // Range requests go to the origin untouched: this cache neither stores partial content nor
    // cuts ranges out of stored bodies.
    if req.headers().contains_key(header::RANGE) {
        let mut res = origin(req).await.map(CacheBody::origin);
        layer.mark(&mut res, CacheOutcome::Bypass, "fwd=bypass; detail=range");
        return res;
    }
    // The key; what it leaves out is not forwarded (no unkeyed input shapes a stored answer).
    let (mut parts, body) = req.into_parts();
    let mut key = layer.key.make_key(&mut parts);
    let keyed = layer.key.keyed_headers();
    // Most requests carry none of them: look before removing each.
    let suspect = parts
        .headers
        .keys()
        .any(|k| layer.unkeyed.contains(k) && !keyed.contains(k));
    if suspect {
        for name in layer.unkeyed.iter().filter(|n| !keyed.contains(n)) {
            parts.headers.remove(name);
        }
    }
    if let Some(s) = scope {
        // A scope goes after a `#` (never part of a request target), so a prefix purge of the
        // URL reaches every scope.
        key.push_str("#~");
        key.push_str(&s.replace('#', "%23"));
    }
    let conditions = Conditions::take(&mut parts.headers);
    let mut req = Request::from_parts(parts, body);
    let now = SystemTime::now();
    let head = method == Method::HEAD;
    let req_cc = CacheControl::parse(req.headers());
    let lookup = |found: Vec<Entry>, headers: &HeaderMap| {
        found.into_iter().find(|e| {
            e.vary
                .iter()
                .all(|(name, value)| vary_value(headers, name) == *value)
        })
    };
    let answer = |entry: &Entry, at: SystemTime, outcome: CacheOutcome, params: &str| {
        let mut res = serve(entry, head, at);
        layer.mark(&mut res, outcome, params);
        if conditions.not_modified(res.status(), res.headers()) {
            res = into_not_modified(res);
        }
        res
    };
    let mut stored = lookup(layer.store.get(&key).await, req.headers());
    // Coalescing: while one miss for this key is at the origin, the others wait for its answer
    // (bounded) and look again. Keys are per scope, so this never crosses callers.
    let mut leader = None;
    if stored.is_none() && !req_cc.only_if_cached {
        match layer.join(&key) {
            Ok(l) => leader = Some(l),
            Err(mut done) => {
                let _ = tokio::time::timeout(layer.coalesce_wait, done.changed()).await;
                stored = lookup(layer.store.get(&key).await, req.headers());
                if let Some(entry) = &stored {
                    let (res_cc, _) = layer.policy.response_directives(&entry.headers);
                    let now = SystemTime::now();
                    let age = entry.timing.current_age(now);
                    if matches!(
                        reuse(&req_cc, req.headers(), &res_cc, entry.lifetime, age),
                        Reuse::Fresh | Reuse::StaleWhileRevalidate
                    ) {
                        return answer(entry, now, CacheOutcome::Hit, "hit; detail=coalesced");
                    }
                }
            }
        }
    }
    let mut revalidating = None;
    if let Some(entry) = stored {
        let (res_cc, _) = layer.policy.response_directives(&entry.headers);
        let age = entry.timing.current_age(now);
        let validate = |req: &mut Request<ReqBody>| {
            if let Some(etag) = entry.headers.get(header::ETAG) {
                req.headers_mut()
                    .insert(header::IF_NONE_MATCH, etag.clone());
            } else if let Some(lm) = entry.headers.get(header::LAST_MODIFIED) {
                req.headers_mut()
                    .insert(header::IF_MODIFIED_SINCE, lm.clone());
            }
        };
        match reuse(&req_cc, req.headers(), &res_cc, entry.lifetime, age) {
            Reuse::Fresh => return answer(&entry, now, CacheOutcome::Hit, "hit"),
            Reuse::StaleWhileRevalidate => {
                // One background refresh per key: none while another request for the key is
                // at the origin.
                if let Ok(refresh) = layer.join(&key) {
                    validate(&mut req);
                    let (layer, key, stale) = (layer.clone(), key.clone(), entry.clone());
                    tokio::spawn(async move {
                        let res = fetch(
                            &layer,
                            key,
                            req,
                            Some((stale, false)),
                            Some(refresh),
                            origin,
                            false,
                        )
                        .await;
                        drain(res.into_body()).await;
                    });
                }
                return answer(
                    &entry,
                    now,
                    CacheOutcome::Stale,
                    "hit; fwd=stale; detail=stale-while-revalidate",
                );
            }
            Reuse::Revalidate { stale_if_error } => {
                validate(&mut req);
                revalidating = Some((entry, stale_if_error));
            }
        }
    }
    if req_cc.only_if_cached {
        let mut res = Response::new(CacheBody::cached(Bytes::new()));
        *res.status_mut() = StatusCode::GATEWAY_TIMEOUT;
        layer.mark(
            &mut res,
            CacheOutcome::Miss,
            "fwd=miss; detail=only-if-cached",
        );
        return res;
    }
    let res = fetch(layer, key, req, revalidating, leader, origin, head).await;
    if conditions.not_modified(res.status(), res.headers()) {
        return into_not_modified(res);
    }
    res
}

/// Goes to the origin for a `GET` or `HEAD` the cache could not answer, and stores what it may
/// (a `HEAD` answer never is). `revalidating`: the stale entry the request is conditional on,
/// and whether it may be served if the origin fails.
async fn fetch<ReqBody, ResBody, F, Fut>(
    layer: &CacheLayer,
    key: String,
    req: Request<ReqBody>,
    revalidating: Option<(Entry, bool)>,
    leader: Option<Leader>,
    origin: F,
    head: bool,
) -> Response<CacheBody<ResBody>>
where
    F: FnOnce(Request<ReqBody>) -> Fut,
    Fut: Future<Output = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
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
                    Arc::make_mut(&mut fresh.headers).insert(name.clone(), value.clone());
                }
            }
            fresh.timing = Timing::of(&res, sent_at, received_at);
            let mut as_stored = Response::new(());
            *as_stored.status_mut() = fresh.status;
            *as_stored.headers_mut() = (*fresh.headers).clone();
            fresh.lifetime = layer
                .policy
                .freshness_lifetime(&as_stored)
                .unwrap_or_default();
            layer.store.put(&key, fresh.clone()).await;
            drop(leader);
            let mut out = serve(&fresh, head, received_at);
            layer.mark(
                &mut out,
                CacheOutcome::Revalidated,
                "hit; fwd=stale; fwd-status=304",
            );
            return out;
        }
        if res.status().is_server_error() && stale_if_error {
            let mut out = serve(&entry, head, received_at);
            layer.mark(
                &mut out,
                CacheOutcome::Stale,
                "hit; fwd=stale; detail=stale-if-error",
            );
            return out;
        }
    }
    // Stored as it streams when its length is unknown or within the cap; a longer declared
    // length passes through untouched.
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
        && declared.is_none_or(|n| n <= layer.max_body)
        && lifetime.is_some();
    let Some(lifetime) = lifetime.filter(|_| storable) else {
        let mut out = res.map(CacheBody::origin);
        let params = if fwd == "stale" {
            "fwd=stale"
        } else {
            "fwd=miss"
        };
        layer.mark(&mut out, CacheOutcome::Miss, params);
        return out;
    };
    let timing = Timing::of(&res, sent_at, received_at);
    let (parts, body) = res.into_parts();
    let names = vary_names(&parts.headers);
    let entry = Entry {
        status: parts.status,
        headers: Arc::new(parts.headers.clone()),
        body: Bytes::new(),
        timing,
        lifetime,
        vary: names
            .iter()
            .map(|n| (n.clone(), vary_value(probe.headers(), n)))
            .collect(),
    };
    let sink = Sink {
        store: layer.store.clone(),
        key,
        entry,
        chunks: Vec::new(),
        len: 0,
        cap: layer.max_body,
        _leader: leader,
    };
    let body = if body.is_end_stream() {
        // Nothing will be polled: store the empty body now.
        sink.finish();
        CacheBody::origin(body)
    } else {
        CacheBody {
            inner: Inner::Tee {
                body,
                sink: Some(Box::new(sink)),
            },
        }
    };
    let mut out = Response::from_parts(parts, body);
    let params = if fwd == "stale" {
        "fwd=stale; stored"
    } else {
        "fwd=miss; stored"
    };
    layer.mark(&mut out, CacheOutcome::Miss, params);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &'static str) -> Entry {
        let now = SystemTime::now();
        Entry {
            status: StatusCode::OK,
            headers: Arc::new(HeaderMap::new()),
            body: Bytes::from_static(body.as_bytes()),
            timing: Timing::of(&Response::new(()), now, now),
            lifetime: Duration::from_secs(60),
            vary: Vec::new(),
        }
    }

    #[test]
    fn the_memory_store_keeps_entries_read_since_they_were_stored() {
        let weight = entry("x").weight();
        let store = MemoryStore::new(3 * weight);
        for k in ["a", "b", "c"] {
            store.put(k, entry("x"));
        }
        assert_eq!(store.get("a").len(), 1, "read: gets a second chance");
        store.put("d", entry("x"));
        assert_eq!(store.get("b").len(), 0, "the oldest unread one went");
        for k in ["a", "c", "d"] {
            assert_eq!(store.get(k).len(), 1, "{k}");
        }
        assert_eq!(store.size(), 3 * weight);
    }

    #[test]
    fn storing_one_key_over_and_over_keeps_the_queue_bounded() {
        let store = MemoryStore::new(1 << 20);
        for _ in 0..10_000 {
            store.put("hot", entry("x"));
        }
        let m = store.inner.lock().unwrap();
        assert!(m.order.len() <= 66, "{}", m.order.len());
        assert_eq!(m.size, entry("x").weight());
    }
}
