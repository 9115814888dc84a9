//! Cache purges shared by every instance: with `state.redis`, a purge made through one
//! instance's admin API is applied there and published on a Redis channel
//! (`{state.prefix}cache-purge`); every instance subscribes and applies the purges of the
//! others. A subscriber that loses Redis reconnects with backoff; purges published meanwhile are
//! missed by it (its entries still expire), which is logged.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use futures_util::StreamExt;

use crate::server::Shared;

/// A purge, as published.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Purge {
    /// One URL, every caller's copy.
    Url(String),
    /// Every URL with this prefix.
    Prefix(String),
    /// Every entry with this tag.
    Tag(String),
}

impl Purge {
    /// Applies the purge to this instance's store; how many URLs went (for a URL: its shared
    /// copy and every caller's).
    pub(crate) async fn apply(&self, store: &dyn gateway_cache::CacheStore) -> usize {
        match self {
            Self::Url(url) => {
                usize::from(store.remove(url).await) + store.purge_prefix(&format!("{url}#")).await
            }
            Self::Prefix(p) => store.purge_prefix(p).await,
            Self::Tag(t) => store.purge_tag(t).await,
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Message {
    /// The publishing instance, so it skips its own purges.
    from: u64,
    purge: Purge,
}

/// Where purges are shared: the Redis URL and channel, from `state`.
pub(crate) fn channel(compiled: &crate::Compiled) -> Option<(String, String)> {
    let state = compiled.source.get("state")?;
    let url = state.get("redis")?.as_str()?.to_owned();
    let prefix = state
        .get("prefix")
        .and_then(|p| p.as_str())
        .unwrap_or("gateway:rl:");
    Some((url, format!("{prefix}cache-purge")))
}

/// This process's id among instances.
pub(crate) fn instance_id() -> u64 {
    gateway_core::trace::new_span_id()
}

/// Publishes `purge` for the other instances (best effort: a failure is logged and returned).
pub(crate) async fn publish(shared: &Shared, purge: &Purge) -> Result<(), String> {
    let Some((url, channel)) = channel(&shared.compiled()) else {
        return Ok(());
    };
    let message = serde_json::to_string(&Message {
        from: shared.instance,
        purge: purge.clone(),
    })
    .map_err(|e| e.to_string())?;
    let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
    let publish = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(message)
            .query_async::<i64>(&mut conn)
            .await
    };
    match tokio::time::timeout(Duration::from_secs(2), publish).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(String::from("Redis did not answer in time")),
    }
}

/// Starts the subscriber thread when the configuration shares state through Redis.
pub(crate) fn subscribe(shared: &Arc<Shared>) {
    if channel(&shared.compiled()).is_none() {
        return;
    }
    let weak: Weak<Shared> = Arc::downgrade(shared);
    let mut stopped = shared.stopped_signal();
    let spawned = std::thread::Builder::new()
        .name("gateway-cache-purges".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                tracing::error!("cannot start the purge subscriber");
                return;
            };
            rt.block_on(async move {
                tokio::select! {
                    () = crate::server::shutting_down(&mut stopped) => {}
                    () = listen(weak) => {}
                }
            });
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the purge subscriber");
    }
}

async fn listen(weak: Weak<Shared>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some((url, channel, me)) = weak.upgrade().and_then(|s| {
            let (url, channel) = channel(&s.compiled())?;
            Some((url, channel, s.instance))
        }) else {
            return;
        };
        let subscribed = async {
            let client = redis::Client::open(url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match subscribed.await {
            Ok(pubsub) => {
                backoff = Duration::from_millis(100);
                tracing::info!(channel = %channel, "listening for cache purges from other instances");
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    let Ok(m) = serde_json::from_slice::<Message>(msg.get_payload_bytes()) else {
                        continue;
                    };
                    if m.from == me {
                        continue;
                    }
                    let Some(shared) = weak.upgrade() else { return };
                    let store = shared.compiled().cache_store.clone();
                    let purged = m.purge.apply(&*store).await;
                    tracing::info!(purged, "applied a cache purge from another instance");
                }
                tracing::warn!(
                    "lost the purge subscription; reconnecting (purges meanwhile are missed)"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to cache purges; retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
