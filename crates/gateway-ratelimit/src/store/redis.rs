//! The shared store: one Lua script call per decision.

use std::{
    fmt,
    sync::{
        Arc, Weak,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use redis::{
    Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use super::{Check, Decided, Decision, MemoryStore, Store, StoreError};
use crate::{Policy, algorithm::Outcome, clock::Clock};

const SCRIPT: &str = include_str!("redis.lua");

static NEXT_STORE: AtomicU64 = AtomicU64::new(0);

/// A store's connection on one thread.
struct ThreadConnection {
    id: u64,
    store: Weak<Inner>,
    conn: ConnectionManager,
}

thread_local! {
    static CONNECTIONS: std::cell::RefCell<Vec<ThreadConnection>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What a [`RedisStore`] does when Redis fails or answers too slowly.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Admit the request (availability first). Counted in [`StoreStats::failed_open`].
    Open,
    /// Refuse it with `503` and a problem body (`RLSE` flag). Counted in
    /// [`StoreStats::failed_closed`].
    Closed,
    /// Decide with this in-process store instead (each instance then enforces the full limit on
    /// its own, so N instances admit up to N times the limit during the outage). Counted in
    /// [`StoreStats::fell_back`].
    Local(MemoryStore),
}

/// Where the Redis script reads "now".
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum TimeSource {
    /// The Redis server's clock (`TIME`): one clock for every gateway instance. The default.
    #[default]
    Server,
    /// This process's clock, sent with each call (tests, or Redis servers whose clock is not
    /// trusted).
    Local(Clock),
}

/// Counters of a [`RedisStore`] (for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Script calls made.
    pub calls: u64,
    /// Calls that failed or timed out.
    pub errors: u64,
    /// Decisions admitted by [`FailurePolicy::Open`].
    pub failed_open: u64,
    /// Decisions refused by [`FailurePolicy::Closed`].
    pub failed_closed: u64,
    /// Decisions made by the [`FailurePolicy::Local`] store.
    pub fell_back: u64,
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    errors: AtomicU64,
    failed_open: AtomicU64,
    failed_closed: AtomicU64,
    fell_back: AtomicU64,
}

/// Builder of a [`RedisStore`].
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    timeout: Duration,
    retry_after_failure: Duration,
    failure: FailurePolicy,
    time: TimeSource,
}

/// A Redis URL with any password replaced, for `Debug` output.
fn redacted(url: &str) -> String {
    // A query may carry credentials too (`?password=`): never shown.
    let url = url.split_once('?').map_or(url, |(base, _)| base);
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://<redacted>@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("url", &redacted(&self.url))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("failure", &self.failure)
            .field("time", &self.time)
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    /// Prefix of every key the store writes (default `gateway:rl:`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a decision may wait for Redis, connecting included (default 50 ms). Past it,
    /// the failure policy decides.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// After a failure, how long decisions go straight to the failure policy before Redis is
    /// tried again (default 1 s), so an outage does not add the timeout to every request. The
    /// first request after it probes Redis; success resumes normal operation.
    pub fn retry_after_failure(mut self, pause: Duration) -> Self {
        self.retry_after_failure = pause;
        self
    }

    /// What to do when Redis fails (default [`FailurePolicy::Open`]).
    pub fn on_failure(mut self, policy: FailurePolicy) -> Self {
        self.failure = policy;
        self
    }

    /// Where "now" comes from (default [`TimeSource::Server`]).
    pub fn time(mut self, time: TimeSource) -> Self {
        self.time = time;
        self
    }

    /// Builds the store. It connects on first use (and reconnects by itself), so a Redis that is
    /// down at start-up is handled by the failure policy like any later outage. Fails only on a
    /// bad URL. The connection is driven by the tokio runtime of the first decision.
    pub fn build(self) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(self.url.as_str())
            // redis-rs's URL errors are fixed texts: they never contain the URL or its password.
            .map_err(|e| StoreError(format!("invalid Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(RedisStore(Arc::new(Inner {
            client,
            config,
            id: NEXT_STORE.fetch_add(1, Ordering::Relaxed),
            script: Script::new(SCRIPT),
            prefix: self.prefix,
            timeout: self.timeout,
            pause: i64::try_from(self.retry_after_failure.as_micros()).unwrap_or(i64::MAX),
            failure: self.failure,
            time: self.time,
            local: Clock::system(),
            down_until: AtomicI64::new(i64::MIN),
            counters: Counters::default(),
        })))
    }
}

/// Limit state in Redis, shared by every gateway instance using the same Redis and prefix.
///
/// Each decision is one `EVALSHA` of a Lua script that reads, decides and writes every limit of
/// the request atomically (GCRA state and quota counters alike) and sets an expiry on every key
/// it writes: a rate key lives until its bucket is full again, a quota key until its window ends
/// (plus a minute). A call that fails or exceeds the timeout is decided by the
/// [`FailurePolicy`]; after a failure Redis is left alone for a pause, then probed again.
///
/// Keys are `{prefix}{g|q}:{name length}:{name}:{key}`. With Redis Cluster, the limits of one
/// decision must hash to one slot; this store targets a single Redis (or a primary with
/// replicas).
///
/// Clones share the connection and the counters. Every limit's decision costs one round trip
/// (about 64 µs locally, and ~8 µs of Redis CPU): use [`HybridStore`](super::HybridStore) for
/// high rates.
#[derive(Clone)]
pub struct RedisStore(Arc<Inner>);

struct Inner {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// Identifies this store's connections in the per-thread cache.
    id: u64,
    script: Script,
    prefix: String,
    timeout: Duration,
    pause: i64,
    failure: FailurePolicy,
    time: TimeSource,
    local: Clock,
    down_until: AtomicI64,
    counters: Counters,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.0.prefix)
            .field("timeout", &self.0.timeout)
            .field("failure", &self.0.failure)
            .field("time", &self.0.time)
            .finish_non_exhaustive()
    }
}

/// The arguments of one script call.
pub(super) struct ScriptCall {
    keys: Vec<String>,
    args: Vec<String>,
}

impl ScriptCall {
    /// A call deciding (`lease` = false) or leasing `want[i]` tokens for each check.
    pub(super) fn new(
        prefix: &str,
        checks: &[Check],
        max_wait: Duration,
        now: Option<i64>,
        want: Option<&[u64]>,
    ) -> Self {
        let mut keys = Vec::with_capacity(checks.len());
        let mut args = Vec::with_capacity(3 + 5 * checks.len());
        args.push(now.map(|n| n.to_string()).unwrap_or_default());
        args.push(max_wait.as_micros().min(1 << 52).to_string());
        args.push(if want.is_some() { "l" } else { "d" }.to_owned());
        for (i, c) in checks.iter().enumerate() {
            let need = u64::from(c.cost.max(1));
            let want = want.map_or(need, |w| w[i].max(need));
            let (kind, a, b) = match c.policy {
                Policy::Rate { rate, burst } => {
                    ("g", rate.emission_interval_micros(), burst.to_string())
                }
                Policy::Quota(q) => ("q", q.limit(), window_name(q.window()).to_owned()),
            };
            keys.push(redis_key(prefix, kind, c));
            args.extend([
                kind.to_owned(),
                a.to_string(),
                b,
                need.to_string(),
                want.to_string(),
            ]);
        }
        Self { keys, args }
    }
}

/// `{prefix}{kind}:{name length}:{name}:{digest}`: the key's text is hashed (SHA-256, first 16
/// bytes, hex), so a credential-derived key never appears in Redis (`KEYS`, `MONITOR`, dumps) and
/// every key has the same bounded length whatever the client sent.
fn redis_key(prefix: &str, kind: &str, c: &Check) -> String {
    use sha2::{Digest, Sha256};
    use std::fmt::Write as _;
    let digest = Sha256::digest(c.key.as_str().as_bytes());
    let mut key = format!("{prefix}{kind}:{}:{}:", c.name.len(), c.name);
    for b in &digest[..16] {
        let _ = write!(key, "{b:02x}");
    }
    key
}

fn window_name(w: crate::QuotaWindow) -> &'static str {
    match w {
        crate::QuotaWindow::Minute => "min",
        crate::QuotaWindow::Hour => "h",
        crate::QuotaWindow::Day => "day",
        crate::QuotaWindow::Month => "month",
    }
}

/// One limit's row of a script reply, with the tokens it charged.
pub(super) struct Row {
    pub(super) outcome: Outcome,
    pub(super) granted: u64,
    /// For a lease granted short: when a full lease will be free.
    pub(super) full_lease_in: Option<Duration>,
}

fn parse_reply(reply: &[i64], n: usize) -> Result<(i64, Vec<Row>), StoreError> {
    if reply.len() != 1 + 8 * n {
        return Err(StoreError(format!(
            "unexpected script reply of {} values",
            reply.len()
        )));
    }
    let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    let rows = reply[1..]
        .chunks_exact(8)
        .map(|r| Row {
            outcome: Outcome {
                allowed: r[0] == 1,
                limit: u64::try_from(r[1]).unwrap_or(0),
                window: us(r[2]),
                remaining: u64::try_from(r[3]).unwrap_or(0),
                reset: us(r[4]),
                retry_after: (r[5] >= 0 && r[0] != 1).then(|| us(r[5])),
                delay: us(r[6]),
            },
            granted: u64::try_from(r[7]).unwrap_or(0),
            full_lease_in: (r[5] >= 0 && r[0] == 1).then(|| us(r[5])),
        })
        .collect();
    Ok((reply[0], rows))
}

impl RedisStore {
    /// A builder for a store at `url` (`redis://host:port/db`, `redis://:password@host`).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            prefix: String::from("gateway:rl:"),
            timeout: Duration::from_millis(50),
            retry_after_failure: Duration::from_secs(1),
            failure: FailurePolicy::Open,
            time: TimeSource::Server,
        }
    }

    /// The store's counters.
    pub fn stats(&self) -> StoreStats {
        let c = &self.0.counters;
        StoreStats {
            calls: c.calls.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            failed_open: c.failed_open.load(Ordering::Relaxed),
            failed_closed: c.failed_closed.load(Ordering::Relaxed),
            fell_back: c.fell_back.load(Ordering::Relaxed),
        }
    }

    /// Whether the last call failed and the store is pausing (or probing) before it uses Redis
    /// for every decision again.
    pub fn is_degraded(&self) -> bool {
        self.0.down_until.load(Ordering::Relaxed) != i64::MIN
    }

    /// Whether a failure's pause is still running (no call is made, no probe is due).
    fn paused(&self) -> bool {
        let until = self.0.down_until.load(Ordering::Acquire);
        until != i64::MIN && self.0.local.now_micros() < until
    }

    /// Whether this decision may call Redis: always when healthy; after a failure, only once the
    /// pause is over, and then only for the one caller that claims the probe.
    fn may_call(&self) -> bool {
        let until = self.0.down_until.load(Ordering::Acquire);
        if until == i64::MIN {
            return true;
        }
        let now = self.0.local.now_micros();
        if now < until {
            return false;
        }
        // Claim the probe: others keep using the failure policy until it answers.
        let timeout = i64::try_from(self.0.timeout.as_micros()).unwrap_or(i64::MAX);
        self.0
            .down_until
            .compare_exchange(
                until,
                now.saturating_add(timeout),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    pub(super) fn timeout(&self) -> Duration {
        self.0.timeout
    }

    pub(super) fn prefix(&self) -> &str {
        &self.0.prefix
    }

    pub(super) fn now_arg(&self) -> Option<i64> {
        match &self.0.time {
            TimeSource::Server => None,
            TimeSource::Local(clock) => Some(clock.now_micros()),
        }
    }

    /// Runs one script call with the timeout; on failure, starts the pause. `Ok(None)` means
    /// Redis is being left alone (paused after a failure).
    pub(super) async fn run(
        &self,
        call: ScriptCall,
    ) -> Result<Option<(i64, Vec<Row>)>, StoreError> {
        let inner = &self.0;
        if !self.may_call() {
            return Ok(None);
        }
        inner.counters.calls.fetch_add(1, Ordering::Relaxed);
        let mut conn = match self.connection() {
            Ok(c) => c,
            Err(e) => return Err(self.failed(e)),
        };
        let mut invocation = inner.script.prepare_invoke();
        for k in &call.keys {
            invocation.key(k);
        }
        for a in &call.args {
            invocation.arg(a);
        }
        let result = tokio::time::timeout(
            inner.timeout,
            invocation.invoke_async::<Vec<i64>>(&mut conn),
        )
        .await;
        let error = match result {
            Ok(Ok(reply)) => match parse_reply(&reply, call.keys.len()) {
                Ok(parsed) => {
                    if inner.down_until.load(Ordering::Relaxed) != i64::MIN {
                        inner.down_until.store(i64::MIN, Ordering::Release);
                        tracing::info!("rate-limit store recovered");
                    }
                    return Ok(Some(parsed));
                }
                Err(e) => e.0,
            },
            Ok(Err(e)) => format!("redis: {e}"),
            Err(_) => format!("redis did not answer within {:?}", inner.timeout),
        };
        Err(self.failed(error))
    }

    /// Counts a failure, starts the pause and logs (at most once per pause).
    fn failed(&self, error: String) -> StoreError {
        let inner = &self.0;
        inner.counters.errors.fetch_add(1, Ordering::Relaxed);
        let until = inner.local.now_micros().saturating_add(inner.pause);
        inner.down_until.store(until, Ordering::Relaxed);
        tracing::warn!(error = %error, "rate-limit store failed; applying the failure policy");
        StoreError(error)
    }

    /// This thread's connection to Redis, made on first use.
    ///
    /// One connection per thread: the reference gateway runs one single-threaded runtime per
    /// core, and a connection is driven by the runtime that made it, so a shared connection
    /// would tie every core's Redis latency to the one core driving it (and fail when that
    /// core's runtime stops first).
    fn connection(&self) -> Result<ConnectionManager, String> {
        CONNECTIONS.with(|cell| {
            let mut conns = cell.borrow_mut();
            // Forget connections of stores that no longer exist.
            conns.retain(|c| c.store.strong_count() > 0);
            if let Some(c) = conns.iter().find(|c| c.id == self.0.id) {
                return Ok(c.conn.clone());
            }
            let conn = ConnectionManager::new_lazy_with_config(
                self.0.client.clone(),
                self.0.config.clone(),
            )
            .map_err(|e| format!("redis: {e}"))?;
            conns.push(ThreadConnection {
                id: self.0.id,
                store: Arc::downgrade(&self.0),
                conn: conn.clone(),
            });
            Ok(conn)
        })
    }

    /// Decides through the failure policy (Redis failed or is paused).
    pub(super) fn fail(
        &self,
        checks: &[Check],
        max_wait: Duration,
    ) -> Result<Decision, StoreError> {
        let c = &self.0.counters;
        match &self.0.failure {
            FailurePolicy::Open => {
                c.failed_open.fetch_add(1, Ordering::Relaxed);
                Ok(Decision {
                    outcomes: Vec::new(),
                })
            }
            FailurePolicy::Closed => {
                c.failed_closed.fetch_add(1, Ordering::Relaxed);
                Err(StoreError(String::from("redis unavailable (fail closed)")))
            }
            FailurePolicy::Local(store) => {
                c.fell_back.fetch_add(1, Ordering::Relaxed);
                Ok(store.decide_at(checks, max_wait, store.clock().now_micros()))
            }
        }
    }
}

impl Store for RedisStore {
    fn decide(&self, checks: &[Check], max_wait: Duration) -> Decided {
        if self.paused() {
            return Decided::Ready(self.fail(checks, max_wait));
        }
        let call = ScriptCall::new(&self.0.prefix, checks, max_wait, self.now_arg(), None);
        let store = self.clone();
        let checks = checks.to_vec();
        Decided::Pending(Box::pin(async move {
            match store.run(call).await {
                Ok(Some((_, rows))) => Ok(Decision {
                    outcomes: rows.into_iter().map(|r| r.outcome).collect(),
                }),
                Ok(None) | Err(_) => store.fail(&checks, max_wait),
            }
        }))
    }
}
