//! Listeners, workers, connection limits, idle timeouts and graceful shutdown.
//!
//! One worker thread per core, each with a single-threaded tokio runtime and its own accepting
//! socket on every listener (`SO_REUSEPORT`, so the kernel spreads connections), its own
//! [`Pipeline`] and its own upstream connection pools: a request never leaves the core that
//! accepted it, and nothing on the request path takes a lock.

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    thread::JoinHandle,
    time::Duration,
};

use gateway_core::ConnectionInfo;
use gateway_lb::ResponseBody;
use hyper::{Request, body::Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use pin_project_lite::pin_project;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::{Semaphore, mpsc, watch},
};

use arc_swap::ArcSwap;

use crate::{admin, compile::Compiled, pipeline::Pipeline};

/// State shared by all workers and the admin listener.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The configuration being served; workers follow it (see [`crate::reload`]).
    pub(crate) current: watch::Sender<Arc<Compiled>>,
    /// Reload bookkeeping: the file, counters, the last error.
    pub(crate) reload: crate::reload::ReloadState,
    /// Request ids, metrics and the access log (built at start; they outlive reloads).
    pub(crate) observer: gateway_observe::Observer,
    /// The gateway's own metrics.
    pub(crate) metrics: crate::observe::GatewayMetrics,
    /// This process among instances sharing state (for the purge channel).
    pub(crate) instance: u64,
    shutdown: watch::Sender<bool>,
    /// Set once every worker has drained: the admin listener stops then, so `/readyz` answers
    /// `draining` for the whole drain.
    stopped: watch::Sender<bool>,
    connections: Arc<Semaphore>,
}

impl Shared {
    /// The configuration being served now.
    pub(crate) fn compiled(&self) -> Arc<Compiled> {
        self.current.borrow().clone()
    }

    /// Whether shutdown has begun. (The admin listener starts only after every worker accepts,
    /// so before that there is no one to ask.)
    pub(crate) fn is_draining(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub(crate) fn stopped_signal(&self) -> watch::Receiver<bool> {
        self.stopped.subscribe()
    }
}

/// A running gateway. Dropping it begins a graceful shutdown without waiting for it.
#[derive(Debug)]
pub struct RunningGateway {
    listen: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    admin_thread: Option<JoinHandle<()>>,
}

impl RunningGateway {
    /// The bound address of each public listener, in configuration order (port 0 resolved).
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Begins a graceful shutdown: stop accepting, let in-flight requests finish (up to the
    /// drain timeout), close idle connections.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }

    /// Waits (blocking) until every worker has drained and stopped, then stops the admin
    /// listener.
    pub fn join(mut self) {
        for t in self.workers.drain(..) {
            let _ = t.join();
        }
        self.shared.stopped.send_replace(true);
        if let Some(t) = self.admin_thread.take() {
            let _ = t.join();
        }
    }

    /// The configuration being served now.
    pub fn compiled(&self) -> Arc<Compiled> {
        self.shared.compiled()
    }

    /// Remembers the file this gateway was loaded from: `SIGHUP` (see the binary), the admin
    /// API's `POST /config/reload` and, with `reload.watch`, a file watch reload from it.
    pub fn set_config_file(&self, path: impl Into<std::path::PathBuf>) {
        self.shared.reload.set_file(path.into());
        crate::reload::watch(&self.shared);
    }

    /// Serves `next` from now on: new requests (also on open connections) use it, in-flight
    /// requests finish on the old one. State is kept where [`Compiled::reload`] kept it.
    pub fn apply(&self, next: Arc<Compiled>) -> crate::reload::ReloadReport {
        crate::reload::apply(&self.shared, next)
    }

    /// Reads, validates and applies the configuration file given to
    /// [`RunningGateway::set_config_file`]; on any error the running configuration stays.
    ///
    /// # Errors
    ///
    /// The file's problems (file, line, field), or that no file was set.
    pub fn reload(&self) -> Result<crate::reload::ReloadReport, crate::ConfigError> {
        crate::reload::from_file(&self.shared)
    }

    /// Begins a graceful shutdown and waits for it without blocking the async runtime.
    pub async fn shutdown_and_wait(self) {
        self.shutdown();
        let _ = tokio::task::spawn_blocking(move || self.join()).await;
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        self.shutdown();
        self.shared.stopped.send_replace(true);
    }
}

/// Binds every listener and starts the workers and the admin listener.
///
/// Errors are bind failures (address in use, permission denied), returned before anything
/// runs.
pub fn start(compiled: Arc<Compiled>) -> io::Result<RunningGateway> {
    let workers = compiled.workers.max(1);
    // Bind every listener once per worker; port 0 is resolved by the first bind.
    let mut per_worker: Vec<Vec<std::net::TcpListener>> =
        (0..workers).map(|_| Vec::new()).collect();
    let mut listen = Vec::with_capacity(compiled.listeners.len());
    for addr in &compiled.listeners {
        let first = bind_reuseport(*addr)?;
        let bound = first.local_addr()?;
        listen.push(bound);
        per_worker[0].push(first);
        for sockets in per_worker.iter_mut().skip(1) {
            sockets.push(bind_reuseport(bound)?);
        }
    }
    let admin_listener = match compiled.admin {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Some(l)
        }
        None => None,
    };
    let admin = admin_listener
        .as_ref()
        .map(std::net::TcpListener::local_addr)
        .transpose()?;

    let (observer, metrics) = crate::observe::build(&compiled.observe)?;
    let (shutdown, _) = watch::channel(false);
    let (stopped, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        stopped,
        connections: Arc::new(Semaphore::new(compiled.limits.max_connections)),
        current: watch::channel(compiled).0,
        reload: crate::reload::ReloadState::default(),
        observer,
        metrics,
        instance: crate::purge::instance_id(),
        shutdown,
    });

    crate::discovery::watch_changes(&shared);
    let mut threads = Vec::with_capacity(workers);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    for (i, sockets) in per_worker.into_iter().enumerate() {
        let shared = shared.clone();
        let started = started_tx.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("gateway-worker-{i}"))
                .spawn(move || run_worker(i, sockets, &shared, &started))?,
        );
    }
    drop(started_tx);
    // Return only once every worker accepts, so readiness is true as soon as `start` returns.
    for _ in 0..workers {
        match started_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shared.shutdown.send_replace(true);
                return Err(e);
            }
            Err(_) => {
                shared.shutdown.send_replace(true);
                return Err(io::Error::other("a worker thread stopped while starting"));
            }
        }
    }
    let admin_thread = match admin_listener {
        Some(listener) => {
            let shared = shared.clone();
            Some(
                std::thread::Builder::new()
                    .name("gateway-admin".into())
                    .spawn(move || admin::run(listener, &shared))?,
            )
        }
        None => None,
    };
    crate::purge::subscribe(&shared);
    tracing::info!(listeners = ?listen, admin = ?admin, workers, "gateway started");
    Ok(RunningGateway {
        listen,
        admin,
        shared,
        workers: threads,
        admin_thread,
    })
}

fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

fn run_worker(
    index: usize,
    sockets: Vec<std::net::TcpListener>,
    shared: &Arc<Shared>,
    started: &std::sync::mpsc::Sender<io::Result<()>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = index, error = %e, "cannot start worker runtime");
            let _ = started.send(Err(e));
            return;
        }
    };
    rt.block_on(worker(index, sockets, shared.clone(), started));
}

fn http_builder(compiled: &Compiled) -> auto::Builder<TokioExecutor> {
    let limits = &compiled.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own buffer limit backs up the pipeline's checks, which answer with problem+json;
    // it must leave room for the largest allowed head.
    let head = usize::try_from(limits.max_header_bytes.0 + limits.max_uri_bytes.0)
        .unwrap_or(usize::MAX)
        .saturating_add(16 * 1024)
        .max(8192);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.0)
        .max_buf_size(head)
        .max_headers(limits.max_headers.saturating_add(32))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        // Streams reset before the server accepted them (h2's own rapid-reset counter) and
        // streams the server had to reset for protocol errors are bounded; beyond, GOAWAY.
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024)
        .max_header_list_size(
            u32::try_from(limits.max_header_bytes.0.saturating_add(4096)).unwrap_or(u32::MAX),
        );
    builder
}

async fn worker(
    index: usize,
    sockets: Vec<std::net::TcpListener>,
    shared: Arc<Shared>,
    started: &std::sync::mpsc::Sender<io::Result<()>>,
) {
    let mut configs = shared.current.subscribe();
    let first = configs.borrow_and_update().clone();
    let slot = Arc::new(ArcSwap::from_pointee(Generation {
        builder: Arc::new(http_builder(&first)),
        pipeline: Arc::new(Pipeline::new(first)),
        observer: shared.observer.clone(),
    }));
    // Every connection task holds a sender; when all are gone, the worker has drained.
    let (drain_tx, mut drain_rx) = mpsc::channel::<()>(1);
    let mut accept_tasks = Vec::new();
    for (position, std_listener) in sockets.into_iter().enumerate() {
        let listener = match TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(worker = index, error = %e, "cannot register listener");
                let _ = started.send(Err(e));
                return;
            }
        };
        accept_tasks.push(tokio::spawn(accept_loop(
            listener,
            position,
            shared.clone(),
            slot.clone(),
            drain_tx.clone(),
        )));
    }
    drop(drain_tx);
    let _ = started.send(Ok(()));

    let mut shutdown = shared.shutdown_signal();
    // Follow reloads until shutdown: this worker's next generation keeps the clients (and pools)
    // of every upstream the reload kept.
    loop {
        tokio::select! {
            () = shutting_down(&mut shutdown) => break,
            changed = configs.changed() => {
                if changed.is_err() {
                    break;
                }
                let next = configs.borrow_and_update().clone();
                let old = slot.load_full();
                slot.store(Arc::new(Generation {
                    builder: Arc::new(http_builder(&next)),
                    pipeline: Arc::new(old.pipeline.reloaded(next)),
                    observer: old.observer.clone(),
                }));
                tracing::debug!(worker = index, "worker switched to the reloaded configuration");
            }
        }
    }
    // Listeners close when their accept loops return; connections are told to finish up.
    for t in accept_tasks {
        let _ = t.await;
    }
    let drain = shared.compiled().drain_timeout;
    if tokio::time::timeout(drain, drain_rx.recv()).await.is_err() {
        tracing::warn!(
            worker = index,
            ?drain,
            "drain timeout reached; closing remaining connections"
        );
    }
}

/// Resolves once shutdown has been requested.
pub(crate) async fn shutting_down(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// One worker's view of one configuration: its pipeline (with this worker's upstream clients)
/// and its HTTP settings.
struct Generation {
    pipeline: Arc<Pipeline>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    observer: gateway_observe::Observer,
}

/// A connection's place in `max_connections` and in the worker's drain.
struct ConnectionSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _drain: mpsc::Sender<()>,
}

/// In the extensions of requests that ask for an upgrade: keeps the connection counted while a
/// tunnel made from it is open, and tells the tunnel when shutdown begins.
#[derive(Clone)]
pub(crate) struct TunnelHold {
    _slot: Arc<ConnectionSlot>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// What a TLS handshake established that requests need.
#[derive(Clone, Debug, Default)]
struct TlsFacts {
    cert: Option<gateway_core::ClientCertificate>,
    required_sni: Option<crate::tls::RequiredSni>,
    /// The listener's `trust_trace_context`.
    trust_trace: Option<gateway_core::trace::TrustTraceContext>,
}

async fn accept_loop(
    listener: TcpListener,
    position: usize,
    shared: Arc<Shared>,
    slot: Arc<ArcSwap<Generation>>,
    drain: mpsc::Sender<()>,
) {
    let local = listener.local_addr().ok();
    let mut shutdown = shared.shutdown_signal();
    // Whether this listener terminates TLS is fixed at start (a reload that adds or removes
    // `tls` needs a restart); its certificates and client CAs follow reloads.
    let (bind, mut tls) = {
        let compiled = shared.compiled();
        (
            compiled.listeners[position],
            compiled.tls.get(position).cloned().flatten(),
        )
    };
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = shutting_down(&mut shutdown) => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "max_connections reached; closing new connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut info = ConnectionInfo::new(peer);
        if let Some(local) = local {
            info = info.with_local(local);
        }
        let generation = slot.load_full();
        let compiled = generation.pipeline.compiled();
        if tls.is_some()
            && compiled.listeners.get(position) == Some(&bind)
            && let Some(Some(next)) = compiled.tls.get(position)
            && !tls.as_ref().is_some_and(|t| Arc::ptr_eq(t, next))
        {
            tls = Some(next.clone());
        }
        let idle = compiled.limits.idle_timeout.0;
        let trust_trace = (compiled.listeners.get(position) == Some(&bind))
            .then(|| compiled.trust_trace.get(position).copied().flatten())
            .flatten()
            .map(gateway_core::trace::TrustTraceContext);
        let handshake_timeout = compiled.limits.header_read_timeout.0;
        let shutdown = shared.shutdown_signal();
        let slot = slot.clone();
        let hold = Arc::new(ConnectionSlot {
            _permit: permit,
            _drain: drain.clone(),
        });
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => {
                    serve_connection(
                        stream,
                        info,
                        slot,
                        generation.builder.clone(),
                        shutdown,
                        idle,
                        (
                            TlsFacts {
                                trust_trace,
                                ..TlsFacts::default()
                            },
                            hold,
                        ),
                    )
                    .await;
                }
                Some(tls) => {
                    // The handshake has the header read timeout to finish.
                    let accepted =
                        tokio::time::timeout(handshake_timeout, tls.acceptor.accept(stream)).await;
                    match accepted {
                        Ok(Ok(stream)) => {
                            let session = stream.get_ref().1;
                            let facts = TlsFacts {
                                cert: session
                                    .peer_certificates()
                                    .and_then(|chain| chain.first())
                                    .map(|c| gateway_core::ClientCertificate::new(c.as_ref())),
                                trust_trace,
                                required_sni: tls.client_auth.then(|| {
                                    crate::tls::RequiredSni(Arc::from(
                                        session.server_name().unwrap_or_default(),
                                    ))
                                }),
                            };
                            serve_connection(
                                stream,
                                info.with_tls(true),
                                slot,
                                generation.builder.clone(),
                                shutdown,
                                idle,
                                (facts, hold),
                            )
                            .await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %info.peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(peer = %info.peer, "TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
}

/// Per-connection activity, for the idle timeout.
#[derive(Debug, Default)]
struct Activity {
    /// Requests whose response has not been produced yet.
    in_flight: AtomicUsize,
    /// Requests received.
    started: AtomicU64,
    /// Requests the client abandoned before their response head was ready (HTTP/2 resets).
    cancelled: AtomicU64,
    /// Told when cancellations say the connection is abusive.
    abusive: tokio::sync::Notify,
}

/// Counts a request as cancelled by the client if it is dropped before its response is ready.
struct Answering {
    activity: Arc<Activity>,
    max_resets: u64,
    done: bool,
}

impl Drop for Answering {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let cancelled = self.activity.cancelled.fetch_add(1, Ordering::Relaxed) + 1;
        let started = self.activity.started.load(Ordering::Relaxed);
        if cancelled > self.max_resets && cancelled * 2 > started {
            self.activity.abusive.notify_one();
        }
    }
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_connection<S>(
    stream: S,
    info: ConnectionInfo,
    slot: Arc<ArcSwap<Generation>>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut shutdown: watch::Receiver<bool>,
    idle_timeout: Duration,
    (tls, hold): (TlsFacts, Arc<ConnectionSlot>),
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(stream);
    let svc_activity = activity.clone();
    let tunnel_shutdown = shutdown.clone();
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        // Each request takes the configuration current when it arrives and keeps it to the end.
        let generation = slot.load();
        let pipeline = generation.pipeline.clone();
        if let Some(trust) = tls.trust_trace {
            req.extensions_mut().insert(trust);
        }
        let observation = generation.observer.start(&mut req);
        svc_activity.started.fetch_add(1, Ordering::Relaxed);
        let answering = Answering {
            activity: svc_activity.clone(),
            max_resets: pipeline.compiled().limits.max_client_resets,
            done: false,
        };
        if let Some(cert) = &tls.cert {
            req.extensions_mut().insert(cert.clone());
        }
        if let Some(sni) = &tls.required_sni {
            req.extensions_mut().insert(sni.clone());
        }
        if req.headers().contains_key(http::header::UPGRADE) {
            req.extensions_mut().insert(TunnelHold {
                _slot: hold.clone(),
                shutdown: tunnel_shutdown.clone(),
            });
        }
        svc_activity.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(svc_activity.clone());
        async move {
            // The request stays in flight until its response body has been sent.
            let mut answering = answering;
            let res = pipeline.handle(req, info).await;
            answering.done = true;
            Ok::<_, Infallible>(observation.finish(res.map(|body| GuardedBody {
                inner: body,
                _guard: guard,
            })))
        }
    });
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let mut last_started = 0;
    let mut closing = false;
    let mut idle_closing = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(peer = %info.peer, error = %e, "connection ended with error");
                }
                return;
            }
            () = shutting_down(&mut shutdown), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = activity.abusive.notified() => {
                // Dropped, not drained: a graceful HTTP/2 close waits for the client to answer a
                // PING, which an attacker never does, and keeps accepting streams meanwhile.
                tracing::warn!(peer = %info.peer, cancelled = activity.cancelled.load(Ordering::Relaxed), "client cancels most of its requests (rapid reset?); dropping the connection");
                return;
            }
            () = idle.as_mut() => {
                // Idle means no request in flight and none begun since the last check. Bytes
                // alone do not count: HTTP/2 PINGs, or a HEADERS frame dribbled one byte at a
                // time, must not hold a connection open forever.
                let started = activity.started.load(Ordering::Relaxed);
                let quiet =
                    started == last_started && activity.in_flight.load(Ordering::Relaxed) == 0;
                if idle_closing && quiet {
                    // The peer did not finish the graceful close (an HTTP/2 client that never
                    // answers the GOAWAY ping, say): drop the connection.
                    tracing::debug!(peer = %info.peer, "idle connection did not close gracefully; dropping it");
                    return;
                }
                if quiet && !idle_closing {
                    tracing::debug!(peer = %info.peer, "closing idle connection");
                    idle_closing = true;
                    if !closing {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
                last_started = started;
                idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
            }
        }
    }
}

pin_project! {
    /// A response body that keeps its request counted as in flight until it is done or dropped.
    struct GuardedBody {
        #[pin]
        inner: ResponseBody,
        _guard: InFlight,
    }
}

impl http_body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = gateway_core::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
