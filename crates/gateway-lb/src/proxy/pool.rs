//! The connection pool of one `Upstream` (so of one core, in the reference gateway), over hyper's
//! connection API.
//!
//! HTTP/1.1: idle connections per endpoint, most recently used first. A connection goes back to
//! the pool when its response body has been read to the end, and is dropped (closed) on any error
//! or when the body is abandoned half-read. A request that a reused connection could not even
//! start (the upstream closed it while it sat idle) is retried once on a fresh connection.
//! HTTP/2: one multiplexed connection per endpoint, replaced when it closes.
//!
//! Compared with hyper-util's general-purpose pool (a shared map keyed by scheme and authority,
//! checkout futures, a background idle reaper) this one is indexed by endpoint position and does a
//! `Vec` pop and push per request: about 11% less CPU per proxied request on the load harness
//! (docs/benchmarks.md).

use std::{
    io,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Request, Response, uri::Authority};
use http_body::Body;
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{net::TcpStream, time::Instant};

use super::Protocol;

/// Why an upstream exchange failed.
#[derive(Debug)]
pub(crate) enum ProxyError {
    /// TCP connect failed.
    Connect(io::Error),
    /// TCP connect did not finish in time.
    ConnectTimeout,
    /// The HTTP/2 handshake failed.
    Handshake(hyper::Error),
    /// Sending the request or reading the response head failed.
    Request(hyper::Error),
}

#[derive(Clone, Debug)]
pub(crate) struct PoolConfig {
    /// The TLS client configuration (ALPN set for the protocol), for `https://` endpoints.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<(Arc<rustls::ClientConfig>, super::tls::UpstreamTls)>,
    pub(crate) connect_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_idle: usize,
    pub(crate) protocol: Protocol,
}

pub(crate) struct Pool<B> {
    slots: Box<[Slot<B>]>,
    cfg: PoolConfig,
}

struct Slot<B> {
    authority: Authority,
    /// Over TLS (`https://`).
    tls: bool,
    idle: Mutex<Vec<Idle<B>>>,
    h2: Mutex<Option<http2::SendRequest<B>>>,
}

struct Idle<B> {
    sender: http1::SendRequest<B>,
    since: Instant,
}

/// Called when a pooled response body has been read to the end.
pub(crate) type OnEnd = Box<dyn FnOnce() + Send>;

/// The result of one exchange: the response and, for HTTP/1.1, the hook that returns the
/// connection to the pool once the body is done.
pub(crate) type Exchanged = (Response<Incoming>, Option<OnEnd>);

impl<B> Pool<B> {
    pub(crate) fn new(
        authorities: impl IntoIterator<Item = (Authority, bool)>,
        cfg: PoolConfig,
    ) -> Self {
        Self {
            slots: authorities
                .into_iter()
                .map(|(authority, tls)| Slot {
                    authority,
                    tls,
                    idle: Mutex::new(Vec::new()),
                    h2: Mutex::new(None),
                })
                .collect(),
            cfg,
        }
    }

    fn checkout(&self, idx: usize) -> Option<http1::SendRequest<B>> {
        let mut idle = self.slots[idx]
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(entry) = idle.pop() {
            if entry.sender.is_closed() || entry.since.elapsed() > self.cfg.idle_timeout {
                continue;
            }
            return Some(entry.sender);
        }
        None
    }

    fn push_idle(&self, idx: usize, sender: http1::SendRequest<B>) {
        let mut idle = self.slots[idx]
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < self.cfg.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Idle HTTP/1.1 connections currently pooled for endpoint `idx`.
    #[cfg(test)]
    fn idle_count(&self, idx: usize) -> usize {
        self.slots[idx].idle.lock().map_or(0, |v| v.len())
    }
}

impl<B> Pool<B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Returns a connection whose response has been read. One that is not ready for another
    /// request yet (the upstream answered before the request body was fully sent) waits off the
    /// request path, at most the idle timeout, so nobody checks out a connection that is still
    /// busy uploading.
    fn release(self: &Arc<Self>, idx: usize, mut sender: http1::SendRequest<B>) {
        if sender.is_closed() {
            return;
        }
        if sender.is_ready() {
            self.push_idle(idx, sender);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = self.clone();
        runtime.spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(pool.cfg.idle_timeout, sender.ready()).await {
                pool.push_idle(idx, sender);
            }
        });
    }

    /// Sends `req` to endpoint `idx`.
    pub(crate) async fn send(
        self: Arc<Self>,
        idx: usize,
        req: Request<B>,
    ) -> Result<Exchanged, ProxyError> {
        match self.cfg.protocol {
            Protocol::Http1 => self.send_h1(idx, req).await,
            Protocol::Http2 => self.send_h2(idx, req).await.map(|res| (res, None)),
        }
    }

    pub(crate) async fn connect(&self, idx: usize) -> Result<TokioIo<Conn>, ProxyError> {
        let slot = &self.slots[idx];
        let authority = slot.authority.as_str();
        // The connect timeout covers the TLS handshake too.
        let connect = async {
            let stream = TcpStream::connect(authority)
                .await
                .map_err(ProxyError::Connect)?;
            let _ = stream.set_nodelay(true);
            if !slot.tls {
                return Ok(Conn::Plain(stream));
            }
            self.handshake(slot, stream).await
        };
        tokio::time::timeout(self.cfg.connect_timeout, connect)
            .await
            .map_err(|_| ProxyError::ConnectTimeout)?
            .map(TokioIo::new)
    }

    #[cfg(feature = "tls")]
    async fn handshake(&self, slot: &Slot<B>, stream: TcpStream) -> Result<Conn, ProxyError> {
        let Some((config, tls)) = &self.cfg.tls else {
            return Err(ProxyError::Connect(std::io::Error::other(
                "no TLS configuration for an https:// endpoint",
            )));
        };
        let name = tls.name_for(slot.authority.host()).ok_or_else(|| {
            ProxyError::Connect(std::io::Error::other("the endpoint has no usable TLS name"))
        })?;
        let tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, stream)
            .await
            .map_err(|e| {
                tracing::debug!(endpoint = %slot.authority, error = %e, "upstream TLS handshake failed");
                ProxyError::Connect(e)
            })?;
        Ok(Conn::Tls(Box::new(tls)))
    }

    #[cfg(not(feature = "tls"))]
    #[allow(clippy::unused_async)]
    async fn handshake(&self, _slot: &Slot<B>, _stream: TcpStream) -> Result<Conn, ProxyError> {
        Err(ProxyError::Connect(std::io::Error::other(
            "https:// endpoints need the `tls` feature",
        )))
    }

    async fn connect_h1(&self, idx: usize) -> Result<http1::SendRequest<B>, ProxyError> {
        let io = self.connect(idx).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(ProxyError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection closed with error");
            }
        });
        Ok(sender)
    }

    /// Sends an `Upgrade` request on a new HTTP/1.1 connection of its own, never pooled: after a
    /// `101` the connection belongs to the upgraded stream.
    pub(crate) async fn send_upgrade(
        &self,
        idx: usize,
        req: Request<B>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let io = self.connect(idx).await?;
        let (mut sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(ProxyError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upgraded upstream connection closed with error");
            }
        });
        sender.send_request(req).await.map_err(ProxyError::Request)
    }

    async fn send_h1(
        self: Arc<Self>,
        idx: usize,
        mut req: Request<B>,
    ) -> Result<Exchanged, ProxyError> {
        let mut allow_reuse = true;
        loop {
            let pooled = if allow_reuse {
                self.checkout(idx)
            } else {
                None
            };
            let reused = pooled.is_some();
            let mut sender = match pooled {
                Some(s) => s,
                None => self.connect_h1(idx).await?,
            };
            if let Err(e) = sender.ready().await {
                if reused {
                    continue;
                }
                return Err(ProxyError::Request(e));
            }
            match sender.try_send_request(req).await {
                Ok(res) => {
                    if res.body().is_end_stream() {
                        self.release(idx, sender);
                        return Ok((res, None));
                    }
                    let pool = self.clone();
                    let on_end: OnEnd = Box::new(move || pool.release(idx, sender));
                    return Ok((res, Some(on_end)));
                }
                Err(mut e) => match e.take_message() {
                    // Not started on a connection the upstream closed while idle: use a new one.
                    Some(unsent) if reused => {
                        req = unsent;
                        allow_reuse = false;
                    }
                    _ => return Err(ProxyError::Request(e.into_error())),
                },
            }
        }
    }

    async fn send_h2(&self, idx: usize, req: Request<B>) -> Result<Response<Incoming>, ProxyError> {
        let slot = &self.slots[idx];
        let existing = slot
            .h2
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .filter(|s| !s.is_closed())
            .cloned();
        let mut sender = match existing {
            Some(s) => s,
            None => {
                let io = self.connect(idx).await?;
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    // Find a blackholed upstream instead of sending it requests forever.
                    .keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .handshake(io)
                    .await
                    .map_err(ProxyError::Handshake)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "upstream h2 connection closed with error");
                    }
                });
                *slot
                    .h2
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(sender.clone());
                sender
            }
        };
        let result = match sender.ready().await {
            Ok(()) => sender.send_request(req).await,
            Err(e) => Err(e),
        };
        if result.is_err() && sender.is_closed() {
            // Forget the dead connection so the next request opens a new one.
            let mut cached = slot
                .h2
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if cached.as_ref().is_some_and(http2::SendRequest::is_closed) {
                *cached = None;
            }
        }
        result.map_err(ProxyError::Request)
    }
}

/// A connection to an endpoint: plain TCP or TLS over it.
pub(crate) enum Conn {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            Self::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Conn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_write(cx, data),
            #[cfg(feature = "tls")]
            Self::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(feature = "tls")]
            Self::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            Self::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            Self::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};

    fn pool(
        addr: std::net::SocketAddr,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Arc<Pool<Empty<Bytes>>> {
        Arc::new(Pool::new(
            [(addr.to_string().parse().unwrap(), false)],
            PoolConfig {
                #[cfg(feature = "tls")]
                tls: None,
                connect_timeout: Duration::from_secs(1),
                idle_timeout,
                max_idle,
                protocol: Protocol::Http1,
            },
        ))
    }

    async fn exchange(pool: &Arc<Pool<Empty<Bytes>>>) {
        let req = Request::get("/")
            .header("host", "x")
            .body(Empty::new())
            .unwrap();
        let (res, on_end) = pool.clone().send(0, req).await.unwrap();
        let body = crate::ResponseBody::upstream(res.into_body(), on_end, None);
        body.collect().await.unwrap();
    }

    #[tokio::test]
    async fn connections_return_after_the_body_and_the_idle_cap_holds() {
        let backend = gateway_test::TestUpstream::fixed("hello").await;
        let p = pool(backend.addr(), 1, Duration::from_secs(60));
        exchange(&p).await;
        assert_eq!(p.idle_count(0), 1);
        // Two requests at once need two connections; only one may stay idle afterwards.
        tokio::join!(exchange(&p), exchange(&p));
        assert_eq!(p.idle_count(0), 1);
        assert_eq!(backend.connections(), 2);
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let backend = gateway_test::TestUpstream::fixed("hello").await;
        let p = pool(backend.addr(), 8, Duration::from_secs(30));
        exchange(&p).await;
        assert_eq!(p.idle_count(0), 1);
        // The exchange ran on real sockets; now freeze the clock and move it past the idle timeout.
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(
            p.checkout(0).is_none(),
            "an expired connection is not handed out"
        );
        assert_eq!(p.idle_count(0), 0);
    }
}
