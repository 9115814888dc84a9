//! Hot reload: a new configuration is read, validated and compiled while the old one keeps
//! serving, then swapped in atomically. Workers follow the swap (see `server.rs`): new requests,
//! also on connections that are already open, use the new pipeline, and in-flight requests finish
//! on the one they started with. An invalid configuration changes nothing.
//!
//! Three triggers share one path ([`from_file`]): `SIGHUP` (the binary), the admin API's
//! `POST /config/reload`, and, with `reload.watch`, a poll of the configuration file and the
//! files it names.

use std::{
    hash::{Hash, Hasher},
    path::PathBuf,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use serde_json::{Value, json};

use crate::{
    compile::Compiled,
    config::{Config, ConfigError, ConfigIssue},
    server::Shared,
};

/// Reload bookkeeping, shared by the triggers and the admin API.
#[derive(Debug, Default)]
pub(crate) struct ReloadState {
    file: Mutex<Option<PathBuf>>,
    /// One reload at a time: two triggers at once must not race to swap.
    lock: Mutex<()>,
    generation: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
    watching: AtomicBool,
}

impl ReloadState {
    pub(crate) fn set_file(&self, path: PathBuf) {
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
    }

    fn file(&self) -> Option<PathBuf> {
        self.file.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The reload counters, for the admin API.
    pub(crate) fn describe(&self) -> Value {
        json!({
            "file": self.file().map(|p| p.display().to_string()),
            "generation": self.generation.load(Ordering::Relaxed),
            "failed": self.failed.load(Ordering::Relaxed),
            "last_error": *self.last_error.lock().unwrap_or_else(|e| e.into_inner()),
            "watching": self.watching.load(Ordering::Relaxed),
        })
    }
}

/// What a reload did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReloadReport {
    /// Configurations applied since start (the first one is generation 0).
    pub generation: u64,
    /// Upstreams whose state (breaker, retry budget, bulkhead, pools) carried over.
    pub kept_upstreams: Vec<String>,
    /// Whether rate-limit counters carried over (`state` unchanged).
    pub kept_rate_limit_state: bool,
    /// Whether the authentication providers carried over (fetched JWK sets, token caches).
    pub kept_auth_providers: bool,
    /// Settings that changed but take effect only on restart (listeners, admin, workers,
    /// `limits.max_connections`); the running values stay.
    pub restart_required: Vec<&'static str>,
}

/// Serves `next` from now on.
pub(crate) fn apply(shared: &Shared, next: Arc<Compiled>) -> ReloadReport {
    let prev = shared.compiled();
    let mut restart_required = Vec::new();
    let tls_on = |c: &Compiled| c.tls.iter().map(Option::is_some).collect::<Vec<_>>();
    if prev.listeners != next.listeners || tls_on(&prev) != tls_on(&next) {
        restart_required.push("listeners");
    }
    if prev.admin != next.admin {
        restart_required.push("admin");
    }
    if prev.workers != next.workers {
        restart_required.push("workers");
    }
    if prev.limits.max_connections != next.limits.max_connections {
        restart_required.push("limits.max_connections");
    }
    if prev.source.get("observe") != next.source.get("observe") {
        restart_required.push("observe");
    }
    let kept_upstreams = next
        .upstreams
        .iter()
        .filter(|u| prev.upstreams.iter().any(|p| Arc::ptr_eq(p, u)))
        .map(|u| u.name.clone())
        .collect();
    let report = ReloadReport {
        generation: shared.reload.generation.fetch_add(1, Ordering::Relaxed) + 1,
        kept_upstreams,
        kept_rate_limit_state: prev.source.get("state") == next.source.get("state"),
        kept_auth_providers: Arc::ptr_eq(&prev.providers, &next.providers),
        restart_required,
    };
    shared.current.send_replace(next);
    shared.metrics.reloads.inc();
    if report.restart_required.is_empty() {
        tracing::info!(generation = report.generation, kept_upstreams = ?report.kept_upstreams, "configuration reloaded");
    } else {
        tracing::warn!(generation = report.generation, restart_required = ?report.restart_required, "configuration reloaded; some changes take effect only on restart");
    }
    report
}

/// Reads, validates and applies the configuration file; on error nothing changes.
pub(crate) fn from_file(shared: &Shared) -> Result<ReloadReport, ConfigError> {
    let _one_at_a_time = shared.reload.lock.lock().unwrap_or_else(|e| e.into_inner());
    let result = match shared.reload.file() {
        None => Err(ConfigError {
            file: String::from("<none>"),
            issues: vec![ConfigIssue {
                line: 0,
                column: 0,
                field: String::new(),
                message: String::from(
                    "this gateway was not started from a configuration file; nothing to reload",
                ),
            }],
        }),
        Some(path) => {
            let file = path.display().to_string();
            Config::load(&path).and_then(|c| Compiled::reload(&c, &file, &shared.compiled()))
        }
    };
    finish(shared, result)
}

/// Applies a compiled configuration, or records why there is none (the running one stays).
fn finish(
    shared: &Shared,
    result: Result<Arc<Compiled>, ConfigError>,
) -> Result<ReloadReport, ConfigError> {
    match result {
        Ok(next) => {
            *shared
                .reload
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = None;
            Ok(apply(shared, next))
        }
        Err(e) => {
            shared.reload.failed.fetch_add(1, Ordering::Relaxed);
            shared.metrics.reload_failures.inc();
            for line in e.to_string().lines() {
                tracing::error!("reload refused, the running configuration stays: {line}");
            }
            *shared
                .reload
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
            Err(e)
        }
    }
}

/// Re-applies the running configuration (the text it was loaded from, not the file as it is
/// now): discovered endpoints changed. Everything else compiles to what runs, so only the
/// upstreams whose endpoints moved are rebuilt.
pub(crate) fn refresh(shared: &Shared) -> Result<ReloadReport, ConfigError> {
    let _one_at_a_time = shared.reload.lock.lock().unwrap_or_else(|e| e.into_inner());
    let current = shared.compiled();
    let next = Config::parse(&current.text, &current.file)
        .and_then(|c| Compiled::reload(&c, &current.file, &current));
    finish(shared, next)
}

/// With `reload.watch`, starts (once) a thread that polls the configuration file and the files
/// it names, and reloads when their contents change.
pub(crate) fn watch(shared: &Arc<Shared>) {
    let Some(interval) = shared.compiled().watch else {
        return;
    };
    if shared.reload.watching.swap(true, Ordering::Relaxed) {
        return;
    }
    // The baseline is taken now, before this returns: a change made right after is not missed.
    let mut last = fingerprint(shared);
    let weak: Weak<Shared> = Arc::downgrade(shared);
    let mut stopped = shared.stopped_signal();
    let spawned = std::thread::Builder::new()
        .name("gateway-config-watch".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            else {
                tracing::error!("cannot start the configuration watcher");
                return;
            };
            rt.block_on(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = crate::server::shutting_down(&mut stopped) => return,
                        _ = tick.tick() => {}
                    }
                    let Some(shared) = weak.upgrade() else { return };
                    let now = fingerprint(&shared);
                    if last != now {
                        tracing::info!("configuration files changed; reloading");
                        // A half-written file fails validation and is retried at the next change.
                        let _ = from_file(&shared);
                        last = now;
                    }
                }
            });
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the configuration watcher");
    }
}

/// A hash of the contents of the configuration file and every file it names.
fn fingerprint(shared: &Shared) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut files: Vec<PathBuf> = shared.reload.file().into_iter().collect();
    files.extend(shared.compiled().files.iter().cloned());
    for f in files {
        f.hash(&mut h);
        std::fs::read(&f).ok().hash(&mut h);
    }
    h.finish()
}

/// Keys whose values are never shown by the admin API: key digests, secrets, and the private
/// members of JWKs.
const SECRET_KEYS: &[&str] = &[
    "api_keys", "digest", "secret", "password", "token", "d", "p", "q", "dp", "dq", "qi", "k",
    "oth",
];

/// The configuration document with secrets replaced by `"[redacted]"`, and passwords in URLs
/// (`redis://:pw@host`) removed.
pub(crate) fn redacted(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let shown = if SECRET_KEYS.contains(&k.as_str()) {
                        Value::from("[redacted]")
                    } else {
                        redacted(v)
                    };
                    (k.clone(), shown)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redacted).collect()),
        Value::String(s) => Value::String(without_userinfo(s)),
        other => other.clone(),
    }
}

/// `scheme://user:pw@host/...` -> `scheme://[redacted]@host/...`.
fn without_userinfo(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        return s.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://[redacted]{}", &rest[at..]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_url_passwords_are_redacted() {
        let v = json!({
            "state": { "redis": { "url": "redis://:hunter2@10.0.0.1:6379/0" } },
            "consumers": [ { "id": "acme", "api_keys": ["sha256:abcd"] } ],
            "auth_providers": { "j": { "jwt": { "jwks": { "keys": [ { "kty": "oct", "k": "c2VjcmV0" } ] } } } },
            "routes": [ { "name": "r", "auth": { "ext_authz": { "url": "http://u:p@pdp/allow?x=@" } } } ],
        });
        let text = redacted(&v).to_string();
        for secret in ["hunter2", "sha256:abcd", "c2VjcmV0", "u:p"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(
            text.contains("10.0.0.1:6379") && text.contains("\"acme\""),
            "{text}"
        );
        assert_eq!(
            without_userinfo("http://pdp/allow?x=a@b"),
            "http://pdp/allow?x=a@b"
        );
    }
}
