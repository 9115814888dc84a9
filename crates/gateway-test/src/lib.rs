//! Test support for the gateway workspace (unpublished).
//!
//! Real parts, not mocks: [`TestUpstream`] is a hyper server on `127.0.0.1:0` speaking HTTP/1.1
//! and HTTP/2 (prior knowledge) that records every request and counts connections; [`client`]
//! and [`raw_exchange`] talk to servers over real sockets. [`TestRedis`] is a private
//! `redis-server` per test. [`TestDns`] is a DNS server whose records a test changes.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

pub mod dns;
pub mod pki;
pub mod redis;
pub use dns::TestDns;
pub use pki::TestCa;
pub use redis::{TestRedis, silent_listener};

/// The error type of test bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type test upstreams answer with.
pub type TestBody = BoxBody<Bytes, BoxError>;
type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>
        + Send
        + Sync,
>;

/// What a [`TestUpstream`] saw of one request (the body is left to the handler).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// The method.
    pub method: Method,
    /// The request target as received (path and query for origin-form).
    pub uri: String,
    /// The HTTP version.
    pub version: Version,
    /// The header fields.
    pub headers: HeaderMap,
}

/// A real upstream server on `127.0.0.1:0`. Stops when dropped.
#[derive(Debug)]
pub struct TestUpstream {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Holds the requests of a [`TestUpstream::gated`] server.
#[derive(Debug)]
pub struct Gate {
    release: tokio::sync::watch::Sender<bool>,
    arrived: tokio::sync::mpsc::Receiver<()>,
}

impl Gate {
    /// Waits until a request has reached the server.
    pub async fn arrived(&mut self) {
        self.arrived.recv().await.expect("the server is running");
    }

    /// Lets every waiting and future request answer.
    pub fn open(&self) {
        self.release.send_replace(true);
    }
}

/// Wraps a complete body as a [`TestBody`].
pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

impl TestUpstream {
    /// Starts a server whose responses come from `handler`.
    pub async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind test upstream");
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let requests = requests.clone();
            let connections = connections.clone();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let handler = handler.clone();
                    let requests = requests.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            requests.lock().unwrap().push(RecordedRequest {
                                method: req.method().clone(),
                                uri: req.uri().to_string(),
                                version: req.version(),
                                headers: req.headers().clone(),
                            });
                            let fut = handler(req);
                            async move { Ok::<_, Infallible>(fut.await) }
                        });
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            }
        });
        Self {
            addr,
            requests,
            connections,
            task,
        }
    }

    /// A server that answers every request `200` with `body`.
    pub async fn fixed(body: &'static str) -> Self {
        Self::start(move |_req| async move { Response::new(full(body)) }).await
    }

    /// A server that answers every request with `status` and `body`.
    pub async fn status(status: u16, body: &'static str) -> Self {
        let status = StatusCode::from_u16(status).expect("a valid status code");
        Self::start(move |_req| async move {
            let mut res = Response::new(full(body));
            *res.status_mut() = status;
            res
        })
        .await
    }

    /// A server whose answer status the test switches at run time (body `upstream`).
    pub async fn switchable(initial: u16) -> (Self, Arc<std::sync::atomic::AtomicU16>) {
        let status = Arc::new(std::sync::atomic::AtomicU16::new(initial));
        let server = Self::start({
            let status = status.clone();
            move |_req| {
                let code = status.load(Ordering::SeqCst);
                async move {
                    let mut res = Response::new(full("upstream"));
                    *res.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
                    res
                }
            }
        })
        .await;
        (server, status)
    }

    /// A server whose requests wait at a [`Gate`] until the test opens it, then answer `200`
    /// `done`.
    pub async fn gated() -> (Self, Gate) {
        let (release, released) = tokio::sync::watch::channel(false);
        let (arrived_tx, arrived) = tokio::sync::mpsc::channel::<()>(16);
        let server = Self::start(move |_req| {
            let mut released = released.clone();
            let arrived = arrived_tx.clone();
            async move {
                let _ = arrived.send(()).await;
                let _ = released.wait_for(|r| *r).await;
                Response::new(full("done"))
            }
        })
        .await;
        (server, Gate { release, arrived })
    }

    /// A server that streams each request body back as the response body, with the method and
    /// target in `x-echo-method` / `x-echo-uri`. `/status/{code}` answers that status instead.
    pub async fn echo() -> Self {
        Self::start(|req: Request<Incoming>| async move {
            if let Some(code) = req.uri().path().strip_prefix("/status/") {
                let status = code
                    .parse::<u16>()
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok());
                let mut res = Response::new(full(format!("status {code}")));
                *res.status_mut() = status.unwrap_or(StatusCode::BAD_REQUEST);
                return res;
            }
            let method = req.method().to_string();
            let uri = req.uri().to_string();
            let mut res = Response::new(req.into_body().map_err(BoxError::from).boxed());
            res.headers_mut()
                .insert("x-echo-method", method.parse().unwrap());
            res.headers_mut().insert("x-echo-uri", uri.parse().unwrap());
            res
        })
        .await
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// The last request received.
    pub fn last_request(&self) -> RecordedRequest {
        self.requests()
            .pop()
            .expect("the upstream received no request")
    }

    /// How many TCP connections it has accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A streaming body fed through a channel: each `Bytes` sent is one data frame; dropping the
/// sender ends the body.
pub fn channel_body(capacity: usize) -> (tokio::sync::mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    (tx, ChannelBody { rx }.boxed())
}

struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// An HTTP/1.1 client for tests (pooled, keep-alive).
pub fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A connector that sends every connection to `addr`, whatever the request's authority: for
/// requests whose `Host`/`:authority` is a name that does not resolve.
pub fn resolve_to(addr: SocketAddr) -> HttpConnector<FixedResolver> {
    HttpConnector::new_with_resolver(FixedResolver(addr))
}

/// A resolver that answers every name with one address (see [`resolve_to`]).
#[derive(Clone, Copy, Debug)]
pub struct FixedResolver(SocketAddr);

impl tower_service::Service<hyper_util::client::legacy::connect::dns::Name> for FixedResolver {
    type Response = std::iter::Once<SocketAddr>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        std::future::ready(Ok(std::iter::once(self.0)))
    }
}

/// An HTTP/2 prior-knowledge (h2c) client for tests.
pub fn h2_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A collected response.
#[derive(Debug)]
pub struct Collected {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The version.
    pub version: Version,
    /// The whole body.
    pub body: Bytes,
}

impl Collected {
    /// The body as UTF-8 text.
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }
}

/// Sends `req` with `client` and collects the response.
pub async fn send<C>(client: &Client<C, TestBody>, req: Request<TestBody>) -> Collected
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let res = client.request(req).await.expect("request failed");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Collected {
        status: parts.status,
        headers: parts.headers,
        version: parts.version,
        body,
    }
}

/// `GET http://{addr}{path_and_query}` with an empty body.
pub async fn get(addr: SocketAddr, path_and_query: &str) -> Collected {
    let req = Request::get(format!("http://{addr}{path_and_query}"))
        .body(full(Bytes::new()))
        .unwrap();
    send(&client(), req).await
}

/// Writes `bytes` on a fresh TCP connection and reads until the server closes it (at most 10 s).
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Installs a test tracing subscriber once (honours `RUST_LOG`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
