//! Discovered endpoints (`upstreams.<name>.discovery.dns`).
//!
//! Each followed name gets a thread with a small runtime that runs
//! [`gateway_lb::discover::EndpointSet`] over a [`DnsDiscover`]. Compiling a configuration
//! starts every name it follows ([`Discovery::start`]) and then waits, bounded, for the first
//! answers ([`Followed::wait_first`]), so names resolve at the same time; an error there is a
//! configuration error. When a
//! followed set changes, [`watch_changes`] re-applies the running configuration (the text it
//! was loaded from, see [`crate::reload::refresh`]): the upstream is rebuilt with the new
//! endpoints, keeping what was learnt about those it still has, and requests in flight finish
//! on the endpoints they had.
//!
//! Failure policy: after the first answer, DNS failures and empty answers keep the last
//! endpoints (counted and shown by `GET /upstreams`); only an answer naming other endpoints
//! changes them.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use gateway_lb::{
    Endpoint,
    discover::{DiscoveryState, DnsDiscover, EndpointSet},
};
use tokio::sync::{oneshot, watch};

use crate::server::Shared;

/// The names being followed, shared by a configuration and every reload of it.
#[derive(Debug)]
pub(crate) struct Discovery {
    entries: Mutex<HashMap<String, Weak<Followed>>>,
    changed: watch::Sender<u64>,
}

impl Default for Discovery {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }
}

/// One followed name; its thread stops when the last configuration using it goes.
#[derive(Debug)]
pub(crate) struct Followed {
    /// What is followed (`srv _api._tcp.example`, `dns api.example:8080`).
    pub(crate) target: String,
    state: Mutex<Arc<DiscoveryState>>,
    /// The first outcome: the first endpoints, or the error that came before them.
    first: Mutex<Option<Result<(), String>>>,
    first_known: std::sync::Condvar,
    _stop: oneshot::Sender<()>,
}

impl Followed {
    /// The current endpoints and weights.
    pub(crate) fn endpoints(&self) -> Arc<[(Endpoint, u32)]> {
        self.state()
            .endpoints
            .clone()
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }

    /// What is known: endpoints, errors.
    pub(crate) fn state(&self) -> Arc<DiscoveryState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits (until `wait` after `started`) for the first answer: `Ok` once there are
    /// endpoints.
    // A blocking wait on a condition variable: the real clock, not tokio's (pausable) one.
    #[allow(clippy::disallowed_types)]
    pub(crate) fn wait_first(
        &self,
        started: std::time::Instant,
        wait: Duration,
    ) -> Result<(), String> {
        let deadline = started + wait;
        let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(outcome) = first.as_ref() {
                return outcome.clone();
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(format!("no answer within {wait:?}"));
            }
            first = self
                .first_known
                .wait_timeout(first, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn settle(&self, outcome: Result<(), String>) {
        *self.first.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
        self.first_known.notify_all();
    }
}

impl Discovery {
    /// The followed entry for `key`, started if nobody follows it yet. It does not wait: see
    /// [`Followed::wait_first`] (every name of a configuration is started before any is waited
    /// for, so they resolve at the same time).
    pub(crate) fn start(
        self: &Arc<Self>,
        key: &str,
        target: String,
        discover: DnsDiscover,
    ) -> Result<Arc<Followed>, String> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, w| w.strong_count() > 0);
        if let Some(live) = entries.get(key).and_then(Weak::upgrade) {
            return Ok(live);
        }
        let (stop_tx, stop_rx) = oneshot::channel();
        let followed = Arc::new(Followed {
            target,
            state: Mutex::default(),
            first: Mutex::new(None),
            first_known: std::sync::Condvar::new(),
            _stop: stop_tx,
        });
        let weak = Arc::downgrade(&followed);
        let registry = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("gateway-discovery".into())
            .spawn(move || run(discover, weak, registry, stop_rx))
            .map_err(|e| format!("cannot start discovery: {e}"))?;
        entries.insert(key.to_owned(), Arc::downgrade(&followed));
        Ok(followed)
    }
}

fn run(
    discover: DnsDiscover,
    followed: Weak<Followed>,
    registry: Weak<Discovery>,
    mut stop: oneshot::Receiver<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            if let Some(f) = followed.upgrade() {
                f.settle(Err(format!("cannot start discovery: {e}")));
            }
            return;
        }
    };
    rt.block_on(async move {
        let mut set = EndpointSet::follow(discover);
        let ready = set.ready().await;
        let Some(f) = followed.upgrade() else { return };
        *f.state.lock().unwrap_or_else(|e| e.into_inner()) = set.state();
        let failed = ready.is_err();
        f.settle(ready.map(|_| ()).map_err(|e| e.to_string()));
        drop(f);
        if failed {
            return;
        }
        loop {
            let state = tokio::select! {
                _ = &mut stop => return,
                s = set.updated() => match s {
                    Some(s) => s,
                    None => return,
                },
            };
            let Some(f) = followed.upgrade() else { return };
            let moved = {
                let mut held = f.state.lock().unwrap_or_else(|e| e.into_inner());
                let moved = match (&held.endpoints, &state.endpoints) {
                    (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                    _ => false,
                };
                *held = state;
                moved
            };
            if moved {
                tracing::info!(target = %f.target, "discovered endpoints changed");
                if let Some(r) = registry.upgrade() {
                    r.changed.send_modify(|g| *g += 1);
                }
            }
        }
    });
}

/// Re-applies the running configuration whenever a followed set changes (a thread that stops
/// with the gateway). A refresh that fails (it also re-reads the files the configuration names)
/// is recorded like a failed reload and retried every 5 s until one succeeds.
pub(crate) fn watch_changes(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    let mut stopped = shared.stopped_signal();
    let mut registry = shared.compiled().discovery.clone();
    let spawned = std::thread::Builder::new()
        .name("gateway-discovery-apply".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                tracing::error!("cannot start the discovery follower");
                return;
            };
            rt.block_on(async move {
                let mut changed = registry.changed.subscribe();
                let mut retry: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
                loop {
                    let retry_due = async {
                        match retry.as_mut() {
                            Some(sleep) => sleep.await,
                            None => std::future::pending().await,
                        }
                    };
                    let owner_gone = tokio::select! {
                        () = crate::server::shutting_down(&mut stopped) => return,
                        r = changed.changed() => r.is_err(),
                        () = retry_due => false,
                    };
                    let Some(shared) = weak.upgrade() else { return };
                    // A configuration applied with a registry of its own (a fresh
                    // `Compiled::new`): follow that one from now on.
                    let now = shared.compiled().discovery.clone();
                    if !Arc::ptr_eq(&now, &registry) {
                        registry = now;
                        changed = registry.changed.subscribe();
                    }
                    if owner_gone {
                        continue;
                    }
                    retry = None;
                    if let Err(e) = crate::reload::refresh(&shared) {
                        for line in e.to_string().lines() {
                            tracing::error!(
                                "discovered endpoints not applied (retrying in 5s): {line}"
                            );
                        }
                        retry = Some(Box::pin(tokio::time::sleep(Duration::from_secs(5))));
                    }
                }
            });
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the discovery follower");
    }
}
