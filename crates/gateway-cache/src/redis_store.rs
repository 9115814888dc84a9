//! [`RedisStore`]: cache entries in Redis, shared by every gateway instance using it (feature
//! `redis`).
//!
//! Each URL's variants are one Redis string (`{prefix}e:{key}`) with an expiry: the longest
//! freshness among them plus an hour for revalidation and stale serving, at most a day. Tags
//! (`Surrogate-Key`, `Cache-Tag`) are sets (`{prefix}t:{tag}`) of the keys that carry them. A
//! Redis error or a call slower than the timeout is a miss (and a dropped write), counted, never
//! a failed request.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use crate::{CacheStore, Entry, StoreFuture, policy::Timing};

/// A cache store in Redis, shared by every instance using it: each URL's variants in one key with
/// an expiry, tag sets for purges, and every failure a miss (never a failed request).
#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    conn: Arc<OnceCell<ConnectionManager>>,
    /// After a failed first connection, when to try again (no attempt per request meanwhile).
    retry_at: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
    prefix: Arc<str>,
    timeout: Duration,
    errors: Arc<AtomicU64>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store at `url` (`redis://host:port/db`) under keys starting with `prefix`; calls
    /// slower than `timeout` are misses.
    ///
    /// # Errors
    ///
    /// When the URL does not parse (the connection is made on first use).
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, String> {
        Ok(Self {
            client: redis::Client::open(url).map_err(|e| e.to_string())?,
            conn: Arc::new(OnceCell::new()),
            retry_at: Arc::default(),
            prefix: Arc::from(prefix),
            timeout,
            errors: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Calls that failed or timed out (each one a miss or a dropped write).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    async fn conn(&self) -> Option<ConnectionManager> {
        if let Some(c) = self.conn.get() {
            return Some(c.clone());
        }
        let now = tokio::time::Instant::now();
        if self
            .retry_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| now < at)
        {
            return None;
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let made = self
            .conn
            .get_or_try_init(|| async {
                tokio::time::timeout(
                    self.timeout * 4,
                    ConnectionManager::new_with_config(self.client.clone(), config),
                )
                .await
                .map_err(|_| ())?
                .map_err(|_| ())
            })
            .await;
        if made.is_err() {
            // Leave Redis alone for a second: requests are misses meanwhile, not waits.
            *self.retry_at.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(now + Duration::from_secs(1));
        }
        made.ok().cloned()
    }

    /// Runs `cmd`, or counts an error and returns `None`.
    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        let Some(mut conn) = self.conn().await else {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        match tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Some(v),
            _ => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn entry_key(&self, key: &str) -> String {
        format!("{}e:{key}", self.prefix)
    }

    fn tag_key(&self, tag: &str) -> String {
        format!("{}t:{tag}", self.prefix)
    }

    async fn load(&self, key: &str) -> Vec<Entry> {
        let raw: Option<Vec<u8>> = self
            .run(redis::cmd("GET").arg(self.entry_key(key)))
            .await
            .flatten();
        raw.and_then(|b| decode(&b)).unwrap_or_default()
    }
}

/// Glob-escapes `s` for `SCAN MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn tags(entry: &Entry) -> Vec<String> {
    ["surrogate-key", "cache-tag"]
        .iter()
        .flat_map(|h| entry.headers.get_all(*h).iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([' ', ',']))
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

impl CacheStore for RedisStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<Entry>> {
        Box::pin(self.load(key))
    }

    fn put<'a>(&'a self, key: &'a str, entry: Entry) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut variants = self.load(key).await;
            variants.retain(|v| v.vary != entry.vary);
            let tags = tags(&entry);
            variants.push(entry);
            let longest = variants
                .iter()
                .map(|v| v.lifetime)
                .max()
                .unwrap_or_default();
            let ttl = (longest + Duration::from_secs(3600)).min(Duration::from_secs(86_400));
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let _: Option<()> = self
                .run(
                    redis::cmd("SET")
                        .arg(self.entry_key(key))
                        .arg(encode(&variants))
                        .arg("PX")
                        .arg(ttl_ms),
                )
                .await;
            for tag in tags {
                let set = self.tag_key(&tag);
                let _: Option<i64> = self.run(redis::cmd("SADD").arg(&set).arg(key)).await;
                let _: Option<i64> = self
                    .run(redis::cmd("PEXPIRE").arg(&set).arg(ttl_ms).arg("GT"))
                    .await;
                let _: Option<i64> = self
                    .run(redis::cmd("PEXPIRE").arg(&set).arg(ttl_ms).arg("NX"))
                    .await;
            }
        })
    }

    fn remove<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            self.run::<i64>(redis::cmd("DEL").arg(self.entry_key(key)))
                .await
                .is_some_and(|n| n > 0)
        })
    }

    fn purge_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, usize> {
        Box::pin(async move {
            let pattern = format!("{}*", glob_escape(&self.entry_key(prefix)));
            let mut cursor: u64 = 0;
            let mut purged = 0;
            loop {
                let Some((next, keys)): Option<(u64, Vec<String>)> = self
                    .run(
                        redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(1000),
                    )
                    .await
                else {
                    return purged;
                };
                if !keys.is_empty() {
                    purged += self
                        .run::<usize>(redis::cmd("DEL").arg(&keys))
                        .await
                        .unwrap_or(0);
                }
                if next == 0 {
                    return purged;
                }
                cursor = next;
            }
        })
    }

    fn purge_tag<'a>(&'a self, tag: &'a str) -> StoreFuture<'a, usize> {
        Box::pin(async move {
            let set = self.tag_key(tag);
            let keys: Vec<String> = self
                .run(redis::cmd("SMEMBERS").arg(&set))
                .await
                .unwrap_or_default();
            let _: Option<i64> = self.run(redis::cmd("DEL").arg(&set)).await;
            if keys.is_empty() {
                return 0;
            }
            let entries: Vec<String> = keys.iter().map(|k| self.entry_key(k)).collect();
            self.run::<usize>(redis::cmd("DEL").arg(&entries))
                .await
                .unwrap_or(0)
        })
    }
}

// A small length-prefixed binary format: version, then per variant its status, lifetime,
// timing, vary pairs, headers and body.

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(b);
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn encode(variants: &[Entry]) -> Vec<u8> {
    let mut out = vec![1u8];
    put_u64(&mut out, variants.len() as u64);
    for e in variants {
        out.extend_from_slice(&e.status.as_u16().to_be_bytes());
        put_u64(
            &mut out,
            u64::try_from(e.lifetime.as_millis()).unwrap_or(u64::MAX),
        );
        for t in [e.timing.request_time, e.timing.response_time, e.timing.date] {
            put_u64(&mut out, secs(t));
        }
        put_u64(&mut out, e.timing.age);
        put_u64(&mut out, e.vary.len() as u64);
        for (name, value) in &e.vary {
            put_bytes(&mut out, name.as_str().as_bytes());
            put_bytes(&mut out, value.as_bytes());
        }
        put_u64(&mut out, e.headers.len() as u64);
        for (name, value) in e.headers.iter() {
            put_bytes(&mut out, name.as_str().as_bytes());
            put_bytes(&mut out, value.as_bytes());
        }
        put_bytes(&mut out, &e.body);
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = u32::from_be_bytes(self.take(4)?.try_into().ok()?);
        Some(self.take(usize::try_from(n).ok()?)?.to_vec())
    }
}

fn time(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// Decodes what [`encode`] wrote; anything malformed is `None` (a miss).
fn decode(b: &[u8]) -> Option<Vec<Entry>> {
    let mut r = Reader(b);
    if r.take(1)? != [1] {
        return None;
    }
    let n = r.u64()?;
    let mut out = Vec::new();
    for _ in 0..n.min(1024) {
        let status = StatusCode::from_u16(u16::from_be_bytes(r.take(2)?.try_into().ok()?)).ok()?;
        let lifetime = Duration::from_millis(r.u64()?);
        let (request_time, response_time, date) = (time(r.u64()?), time(r.u64()?), time(r.u64()?));
        let age = r.u64()?;
        let mut vary = Vec::new();
        for _ in 0..r.u64()?.min(64) {
            let name = HeaderName::from_bytes(&r.bytes()?).ok()?;
            vary.push((name, String::from_utf8(r.bytes()?).ok()?));
        }
        let mut headers = HeaderMap::new();
        for _ in 0..r.u64()?.min(1024) {
            let name = HeaderName::from_bytes(&r.bytes()?).ok()?;
            headers.append(name, HeaderValue::from_bytes(&r.bytes()?).ok()?);
        }
        let body = Bytes::from(r.bytes()?);
        out.push(Entry {
            status,
            headers: std::sync::Arc::new(headers),
            body,
            timing: Timing {
                request_time,
                response_time,
                date,
                age,
            },
            lifetime,
            vary,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_garbage_is_a_miss() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("surrogate-key", HeaderValue::from_static("a b"));
        let now = time(1_800_000_000_123);
        let e = Entry {
            status: StatusCode::OK,
            headers: std::sync::Arc::new(headers),
            body: Bytes::from_static(b"hello"),
            timing: Timing {
                request_time: now,
                response_time: now,
                date: now,
                age: 3,
            },
            lifetime: Duration::from_secs(60),
            vary: vec![(HeaderName::from_static("accept"), String::from("text/html"))],
        };
        let back = decode(&encode(std::slice::from_ref(&e))).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].body, e.body);
        assert_eq!(back[0].headers, e.headers);
        assert_eq!(back[0].timing, e.timing);
        assert_eq!(back[0].vary, e.vary);
        assert_eq!(tags(&back[0]), ["a", "b"]);
        assert!(decode(b"\x01garbage").is_none());
        assert!(decode(b"").is_none());
        assert_eq!(glob_escape("a*b?[c]"), "a\\*b\\?\\[c\\]");
    }
}
