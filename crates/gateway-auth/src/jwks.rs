//! JWK sets fetched over HTTPS (`jwks_uri`, or found through OpenID Connect discovery), kept
//! fresh in the background.
//!
//! - The first request through a provider starts a refresher task on its tokio runtime; it
//!   fetches at once, then again when the document's `Cache-Control: max-age` says (clamped to
//!   1 minute .. 1 day; 5 minutes without one), or 30 seconds after a failure.
//! - A token whose `kid` no key has asks for an early refetch, at most once per cooldown
//!   (30 seconds by default), so a flood of random `kid`s costs one fetch per cooldown, not one
//!   per request. The request itself is refused; the next ones use the new keys.
//! - When the endpoint is down or answers garbage, the last good keys stay in use (stale keys
//!   beat no keys); the failure is logged.
//! - Documents are capped (1 MiB, 100 keys), fetched with a timeout (5 seconds), over HTTPS only,
//!   verified against the system roots plus any configured extra roots.
//! - With discovery, `{issuer}/.well-known/openid-configuration` must name the same `issuer` and
//!   an `https` `jwks_uri`.

use std::{
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use jsonwebtoken::jwk::JwkSet;
use tokio::sync::Notify;

use crate::jwt::{Key, key_from_jwk};

const MAX_DOCUMENT: usize = 1 << 20;
const MAX_KEYS: usize = 100;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the keys come from.
#[derive(Clone, Debug)]
pub(crate) enum Location {
    /// A `jwks_uri`.
    Jwks(String),
    /// An issuer whose discovery document names the `jwks_uri`.
    Issuer(String),
}

struct State {
    started: bool,
    /// When the last fetch attempt began (tokio clock).
    last_attempt: Option<tokio::time::Instant>,
}

/// Remote keys and their refresher.
pub(crate) struct RemoteKeys {
    location: Location,
    keys: RwLock<Arc<Vec<Key>>>,
    state: Mutex<State>,
    wake: Arc<Notify>,
    cooldown: Duration,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    fetches: std::sync::atomic::AtomicU64,
    refetches_requested: std::sync::atomic::AtomicU64,
}

impl RemoteKeys {
    pub(crate) fn new(
        location: Location,
        extra_roots: &[Vec<u8>],
        cooldown: Duration,
    ) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        for der in extra_roots {
            roots
                .add(rustls::pki_types::CertificateDer::from(der.clone()))
                .map_err(|e| format!("unusable extra root certificate: {e}"))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(Self {
            location,
            keys: RwLock::new(Arc::new(Vec::new())),
            state: Mutex::new(State {
                started: false,
                last_attempt: None,
            }),
            wake: Arc::new(Notify::new()),
            cooldown,
            client: Client::builder(TokioExecutor::new()).build(https),
            fetches: std::sync::atomic::AtomicU64::new(0),
            refetches_requested: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The keys now (possibly stale, possibly none yet).
    pub(crate) fn snapshot(&self) -> Arc<Vec<Key>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Fetches made so far (for tests and metrics).
    pub(crate) fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Early refetches asked for by unknown `kid`s (past the cooldown).
    pub(crate) fn refetches_requested(&self) -> u64 {
        self.refetches_requested
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts the refresher on the current tokio runtime if it is not running yet.
    pub(crate) fn ensure_started(self: &Arc<Self>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.started {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        st.started = true;
        // The first fetch starts now: the cooldown counts from it.
        st.last_attempt = Some(tokio::time::Instant::now());
        // The task holds a weak reference: it ends when the provider is dropped.
        let weak = Arc::downgrade(self);
        handle.spawn(async move {
            loop {
                let Some(this) = weak.upgrade() else { return };
                let next = this.refresh().await;
                let wake = this.wake.clone();
                drop(this);
                tokio::select! {
                    () = tokio::time::sleep(next) => {}
                    () = wake.notified() => {}
                }
            }
        });
    }

    /// Asks for an early refetch (an unknown `kid`), at most once per cooldown.
    pub(crate) fn request_refresh(&self) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let due = st.last_attempt.is_none_or(|t| t.elapsed() >= self.cooldown);
        drop(st);
        if due {
            self.refetches_requested
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    /// One fetch; returns when to fetch next.
    async fn refresh(&self) -> Duration {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_attempt = Some(tokio::time::Instant::now());
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await {
            Ok(Ok((keys, max_age))) => {
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
                max_age
                    .unwrap_or(Duration::from_secs(300))
                    .clamp(Duration::from_secs(60), Duration::from_secs(86_400))
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "JWK set fetch failed; keeping the last keys");
                Duration::from_secs(30)
            }
            Err(_) => {
                tracing::warn!("JWK set fetch timed out; keeping the last keys");
                Duration::from_secs(30)
            }
        }
    }

    async fn get(&self, url: &str) -> Result<(Bytes, Option<Duration>), String> {
        let uri: http::Uri = url.parse().map_err(|_| format!("invalid URL `{url}`"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("`{url}` is not https"));
        }
        let res = self
            .client
            .get(uri)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !res.status().is_success() {
            return Err(format!("{url}: status {}", res.status()));
        }
        let max_age = res
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.split(',')
                    .find_map(|d| d.trim().strip_prefix("max-age="))
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
            .map(Duration::from_secs);
        let body = Limited::new(res.into_body(), MAX_DOCUMENT)
            .collect()
            .await
            .map_err(|e| format!("{url}: {e}"))?
            .to_bytes();
        Ok((body, max_age))
    }

    async fn fetch(&self) -> Result<(Vec<Key>, Option<Duration>), String> {
        let jwks_uri = match &self.location {
            Location::Jwks(u) => u.clone(),
            Location::Issuer(issuer) => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let (doc, _) = self.get(&url).await?;
                let doc: serde_json::Value =
                    serde_json::from_slice(&doc).map_err(|e| format!("discovery: {e}"))?;
                if doc.get("issuer").and_then(|v| v.as_str()) != Some(issuer.as_str()) {
                    return Err(String::from("discovery: the document names another issuer"));
                }
                doc.get("jwks_uri")
                    .and_then(|v| v.as_str())
                    .ok_or("discovery: no jwks_uri")?
                    .to_owned()
            }
        };
        let (body, max_age) = self.get(&jwks_uri).await?;
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("JWK set: {e}"))?;
        if set.keys.len() > MAX_KEYS {
            return Err(format!(
                "JWK set has {} keys (at most {MAX_KEYS})",
                set.keys.len()
            ));
        }
        let keys: Vec<Key> = set
            .keys
            .iter()
            .filter_map(|j| key_from_jwk(j).ok().flatten())
            .collect();
        if keys.is_empty() {
            return Err(String::from("JWK set has no usable signing key"));
        }
        Ok((keys, max_age))
    }
}
