//! Endpoint discovery: where an upstream's endpoints come from when they are not a fixed list.
//!
//! A source of endpoints is anything that implements tower's [`Discover`] with [`Endpoint`]s
//! as keys and weights (`u32`) as values: a stream of [`Change::Insert`] (a new endpoint, or a
//! new weight for a known one) and [`Change::Remove`]. That is the trait to implement for
//! Consul, etcd or Kubernetes endpoint slices. This crate brings one for DNS:
//! [`DnsDiscover`] follows A/AAAA records (with a configured port) or SRV records (ports and
//! weights from the records), re-resolving when the answer's TTL runs out.
//!
//! [`EndpointSet::follow`] turns any such source into snapshots: it applies changes as they
//! come and publishes the whole set after each batch (the changes that were ready together),
//! sorted, so every consumer sees the same order. To serve a new set, rebuild the upstream with
//! [`UpstreamBuilder::with_endpoints`](crate::UpstreamBuilder::with_endpoints): the new
//! builder keeps what was learnt about the endpoints it still has (health, ejections, latency,
//! slow start), and requests in flight finish on the `Upstream` they started with.
//!
//! # Failure policy
//! A source's errors (DNS timeouts, `SERVFAIL`, `NXDOMAIN`, an answer with no records) never
//! empty the set: the last endpoints stay in use, the error is logged (`warn`) and counted
//! ([`EndpointSet::state`]), and [`DnsDiscover`] asks again after a back-off that doubles from
//! `min_ttl` up to `max_ttl`. A set only changes when an answer names other endpoints.
//!
//! # Example
//!
//! ```
//! use gateway_lb::discover::{DnsDiscover, DnsTarget, EndpointSet, dns::DnsResolver};
//! use gateway_test::dns::{Record, TestDns};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // A real DNS server on 127.0.0.1 with one SRV record.
//! let dns = TestDns::start().await;
//! let srv = |port| Record::Srv { priority: 0, weight: 5, port, target: "a.test".into() };
//! dns.set("_api._tcp.test", 0, vec![srv(8080)]);
//! dns.set("a.test", 0, vec![Record::A("127.0.0.1".parse().unwrap())]);
//!
//! let discover = DnsDiscover::new(
//!     DnsResolver::new(vec![dns.addr()]),
//!     DnsTarget::Srv { name: "_api._tcp.test".into() },
//! )
//! .min_ttl(Duration::from_millis(20));
//! let mut set = EndpointSet::follow(discover);
//! let first = set.changed().await.unwrap();
//! assert_eq!(first[0].0.to_string(), "127.0.0.1:8080");
//! assert_eq!(first[0].1, 5);
//!
//! // The record changes; the set follows at the next resolution.
//! dns.set("_api._tcp.test", 0, vec![srv(9090)]);
//! let next = set.changed().await.unwrap();
//! assert_eq!(next[0].0.to_string(), "127.0.0.1:9090");
//! # }
//! ```

pub mod dns;

use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

pub use tower::discover::{Change, Discover};

use crate::Endpoint;
use dns::{DnsError, DnsResolver, Family};

/// What [`DnsDiscover`] looks up.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DnsTarget {
    /// A/AAAA records of `name`; every address is an endpoint on `port`, weight 1.
    Host {
        /// The host name.
        name: String,
        /// The port every address is reached on.
        port: u16,
    },
    /// SRV records of `name` (`_service._proto.domain`): each target's addresses on the
    /// record's port, with the record's weight (0 counts as 1). Only the records of the lowest
    /// priority are used (RFC 2782's fallback tiers are not modelled).
    Srv {
        /// The service name.
        name: String,
    },
}

type Resolution = Result<(Vec<(Endpoint, u32)>, Option<Duration>), DnsError>;

enum State {
    Resolving(Pin<Box<dyn Future<Output = Resolution> + Send>>),
    Waiting(Pin<Box<tokio::time::Sleep>>),
}

/// A [`Discover`] source that follows DNS: see the [module docs](self).
pub struct DnsDiscover {
    resolver: Arc<DnsResolver>,
    target: Arc<DnsTarget>,
    family: Family,
    tls: bool,
    min_ttl: Duration,
    max_ttl: Duration,
    backoff: Duration,
    current: BTreeMap<String, (Endpoint, u32)>,
    pending: VecDeque<Change<Endpoint, u32>>,
    state: Option<State>,
}

impl fmt::Debug for DnsDiscover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsDiscover")
            .field("target", &self.target)
            .field("servers", &self.resolver.servers())
            .field("endpoints", &self.current.len())
            .finish_non_exhaustive()
    }
}

impl DnsDiscover {
    /// Follows `target`, asking `resolver`. Resolution starts at the first poll.
    pub fn new(resolver: DnsResolver, target: DnsTarget) -> Self {
        Self {
            resolver: Arc::new(resolver),
            target: Arc::new(target),
            family: Family::Any,
            tls: false,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
            backoff: Duration::ZERO,
            current: BTreeMap::new(),
            pending: VecDeque::new(),
            state: None,
        }
    }

    /// Which address records to use (default both A and AAAA).
    #[must_use]
    pub fn family(mut self, family: Family) -> Self {
        self.family = family;
        self
    }

    /// Endpoints are `https://` (feature `tls`; the TLS server name is the upstream's, see
    /// `UpstreamTls::server_name`).
    #[must_use]
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Re-resolve no sooner than this after an answer, whatever its TTL (default 1 s); also
    /// the first back-off after a failure.
    #[must_use]
    pub fn min_ttl(mut self, ttl: Duration) -> Self {
        self.min_ttl = ttl;
        self
    }

    /// Re-resolve no later than this (default 300 s); also the longest back-off.
    #[must_use]
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        self.max_ttl = ttl;
        self
    }

    fn resolve(&self) -> Pin<Box<dyn Future<Output = Resolution> + Send>> {
        let (resolver, target, family, tls) = (
            self.resolver.clone(),
            self.target.clone(),
            self.family,
            self.tls,
        );
        Box::pin(async move { resolve(&resolver, &target, family, tls).await })
    }

    /// Queues the changes from the current set to `next`.
    fn diff(&mut self, next: Vec<(Endpoint, u32)>) {
        let next: BTreeMap<String, (Endpoint, u32)> = next
            .into_iter()
            .map(|(e, w)| (e.to_string(), (e, w)))
            .collect();
        for (key, (e, _)) in &self.current {
            if !next.contains_key(key) {
                self.pending.push_back(Change::Remove(e.clone()));
            }
        }
        for (key, (e, w)) in &next {
            if self.current.get(key).map(|(_, old)| old) != Some(w) {
                self.pending.push_back(Change::Insert(e.clone(), *w));
            }
        }
        self.current = next;
    }
}

async fn resolve(
    resolver: &DnsResolver,
    target: &DnsTarget,
    family: Family,
    tls: bool,
) -> Resolution {
    let endpoint = |ip: std::net::IpAddr, port: u16| {
        let addr = std::net::SocketAddr::new(ip, port);
        let text = if tls {
            format!("https://{addr}")
        } else {
            addr.to_string()
        };
        text.parse::<Endpoint>()
            .map_err(|_| DnsError::Malformed("address is not an endpoint"))
    };
    let mut out = Vec::new();
    let (ttl, name) = match target {
        DnsTarget::Host { name, port } => {
            let found = resolver.lookup_ip(name, family).await?;
            for ip in found.addrs {
                out.push((endpoint(ip, *port)?, 1));
            }
            (found.ttl, name)
        }
        DnsTarget::Srv { name } => {
            let found = resolver.lookup_srv(name, family).await?;
            let best = found.targets.iter().map(|t| t.priority).min();
            for t in found.targets.iter().filter(|t| Some(t.priority) == best) {
                for ip in &t.addrs {
                    let e = endpoint(*ip, t.port)?;
                    // The same address from two records counts once, with the larger weight.
                    let w = u32::from(t.weight.max(1));
                    match out.iter_mut().find(|(o, _)| *o == e) {
                        Some((_, ow)) => *ow = (*ow).max(w),
                        None => out.push((e, w)),
                    }
                }
            }
            (found.ttl, name)
        }
    };
    if out.is_empty() {
        return Err(DnsError::NoRecords(name.clone()));
    }
    Ok((out, ttl))
}

impl futures_core::Stream for DnsDiscover {
    type Item = Result<Change<Endpoint, u32>, DnsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(change) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            match &mut this.state {
                None => this.state = Some(State::Resolving(this.resolve())),
                Some(State::Waiting(sleep)) => {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.state = Some(State::Resolving(this.resolve()));
                }
                Some(State::Resolving(fut)) => {
                    let result = match fut.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(r) => r,
                    };
                    match result {
                        Ok((next, ttl)) => {
                            this.backoff = Duration::ZERO;
                            let wait = ttl
                                .unwrap_or(this.min_ttl)
                                .clamp(this.min_ttl, this.max_ttl.max(this.min_ttl));
                            this.diff(next);
                            this.state = Some(State::Waiting(Box::pin(tokio::time::sleep(wait))));
                        }
                        Err(e) => {
                            // At least 10 ms: an error that comes at once must not spin.
                            let floor = this.min_ttl.max(Duration::from_millis(10));
                            this.backoff = this
                                .backoff
                                .saturating_mul(2)
                                .clamp(floor, this.max_ttl.max(floor));
                            this.state =
                                Some(State::Waiting(Box::pin(tokio::time::sleep(this.backoff))));
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
            }
        }
    }
}

/// What an [`EndpointSet`] knows: the endpoints and the source's errors.
#[derive(Clone, Debug, Default)]
pub struct DiscoveryState {
    /// The endpoints (sorted by address); `None` until the source named any.
    pub endpoints: Option<Arc<[(Endpoint, u32)]>>,
    /// Errors the source reported so far (each one kept the last endpoints).
    pub errors: u64,
    /// The last error, if any.
    pub last_error: Option<Arc<str>>,
}

/// The endpoints a [`Discover`] source names now, kept by a task that follows it: see the
/// [module docs](self). The task stops when this is dropped.
#[derive(Debug)]
pub struct EndpointSet {
    rx: tokio::sync::watch::Receiver<Arc<DiscoveryState>>,
    /// The set [`changed`](Self::changed) last returned.
    last: Option<Arc<[(Endpoint, u32)]>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EndpointSet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EndpointSet {
    /// Follows `source` on a task of the current runtime. A source that ends leaves the last
    /// set in place.
    pub fn follow<D>(source: D) -> Self
    where
        D: Discover<Key = Endpoint, Service = u32> + Send + 'static,
        D::Error: fmt::Display,
    {
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(DiscoveryState::default()));
        let task = tokio::spawn(async move {
            let mut source = Box::pin(source);
            let mut set: BTreeMap<String, (Endpoint, u32)> = BTreeMap::new();
            loop {
                // One batch: wait for a change, then take every change that is ready with it.
                let mut changed = false;
                let mut errors: Vec<String> = Vec::new();
                let ended = std::future::poll_fn(|cx| {
                    loop {
                        match source.as_mut().poll_discover(cx) {
                            Poll::Ready(Some(Ok(Change::Insert(e, w)))) => {
                                set.insert(e.to_string(), (e, w));
                                changed = true;
                            }
                            Poll::Ready(Some(Ok(Change::Remove(e)))) => {
                                set.remove(&e.to_string());
                                changed = true;
                            }
                            Poll::Ready(Some(Err(e))) => {
                                errors.push(e.to_string());
                                return Poll::Ready(false);
                            }
                            Poll::Ready(None) => return Poll::Ready(true),
                            Poll::Pending if changed => return Poll::Ready(false),
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                })
                .await;
                if changed && set.is_empty() {
                    errors.push(String::from("the source named no endpoints"));
                }
                let mut state = DiscoveryState::clone(&tx.borrow());
                for e in errors {
                    tracing::warn!(error = %e, "endpoint discovery failed; the last endpoints stay");
                    state.errors += 1;
                    state.last_error = Some(e.into());
                }
                if changed && !set.is_empty() {
                    state.endpoints = Some(set.values().cloned().collect());
                }
                tx.send_replace(Arc::new(state));
                if ended {
                    return;
                }
            }
        });
        Self {
            rx,
            last: None,
            task,
        }
    }

    /// What is known now.
    pub fn state(&self) -> Arc<DiscoveryState> {
        self.rx.borrow().clone()
    }

    /// The current set (sorted by address); `None` until the source named any endpoint.
    pub fn current(&self) -> Option<Arc<[(Endpoint, u32)]>> {
        self.rx.borrow().endpoints.clone()
    }

    /// Waits for the next set (the first one, when there is none yet); errors in between
    /// are counted, not returned. `None` when the source ended.
    pub async fn changed(&mut self) -> Option<Arc<[(Endpoint, u32)]>> {
        loop {
            let now = self.rx.borrow_and_update().endpoints.clone();
            let new = match (&now, &self.last) {
                (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                (Some(_), None) => true,
                (None, _) => false,
            };
            if new {
                self.last.clone_from(&now);
                return now;
            }
            self.rx.changed().await.ok()?;
        }
    }

    /// Waits for any news: a new set or an error. `None` when the source ended.
    pub async fn updated(&mut self) -> Option<Arc<DiscoveryState>> {
        self.rx.changed().await.ok()?;
        Some(self.rx.borrow_and_update().clone())
    }

    /// Waits for the first outcome: the first set, or the error that came before it.
    pub async fn ready(&mut self) -> Result<Arc<[(Endpoint, u32)]>, Arc<str>> {
        loop {
            let state = self.rx.borrow_and_update().clone();
            if let Some(set) = &state.endpoints {
                return Ok(set.clone());
            }
            if let Some(e) = &state.last_error {
                return Err(e.clone());
            }
            if self.rx.changed().await.is_err() {
                return Err(Arc::from("the discovery source ended"));
            }
        }
    }

    /// Errors the source reported (each one kept the last set).
    pub fn errors(&self) -> u64 {
        self.rx.borrow().errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_test::dns::{Record, TestDns};

    fn a(ip: &str) -> Record {
        Record::A(ip.parse().unwrap())
    }

    fn names(set: &[(Endpoint, u32)]) -> Vec<String> {
        set.iter().map(|(e, w)| format!("{e} w{w}")).collect()
    }

    async fn next_change(d: &mut DnsDiscover) -> Result<Change<Endpoint, u32>, DnsError> {
        std::future::poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut *d), cx))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn address_records_become_endpoints_and_changes_are_diffs() {
        let dns = TestDns::start().await;
        dns.set("api.test", 0, vec![a("10.0.0.1"), a("10.0.0.2")]);
        let mut d = DnsDiscover::new(
            DnsResolver::new(vec![dns.addr()]),
            DnsTarget::Host {
                name: "api.test".into(),
                port: 8080,
            },
        )
        .family(Family::V4)
        .min_ttl(Duration::from_millis(10));
        let mut first = vec![];
        for _ in 0..2 {
            match next_change(&mut d).await.unwrap() {
                Change::Insert(e, w) => first.push(format!("{e} w{w}")),
                Change::Remove(e) => panic!("removed {e}"),
            }
        }
        assert_eq!(first, ["10.0.0.1:8080 w1", "10.0.0.2:8080 w1"]);
        // One address goes, one comes: exactly one removal and one insertion.
        dns.set("api.test", 0, vec![a("10.0.0.2"), a("10.0.0.3")]);
        let mut seen = vec![];
        while seen.len() < 2 {
            match next_change(&mut d).await.unwrap() {
                Change::Insert(e, _) => seen.push(format!("+{e}")),
                Change::Remove(e) => seen.push(format!("-{e}")),
            }
        }
        seen.sort();
        assert_eq!(seen, ["+10.0.0.3:8080", "-10.0.0.1:8080"]);
    }

    #[tokio::test]
    async fn failures_keep_the_last_set_and_are_counted() {
        let dns = TestDns::start().await;
        dns.set("api.test", 0, vec![a("10.0.0.1")]);
        let d = DnsDiscover::new(
            DnsResolver::new(vec![dns.addr()]),
            DnsTarget::Host {
                name: "api.test".into(),
                port: 80,
            },
        )
        .family(Family::V4)
        .min_ttl(Duration::from_millis(10))
        .max_ttl(Duration::from_millis(40));
        let mut set = EndpointSet::follow(d);
        assert_eq!(names(&set.changed().await.unwrap()), ["10.0.0.1:80 w1"]);
        // The name disappears, then the server fails, then the name has no records.
        dns.remove("api.test");
        let queries = dns.queries();
        for _ in 0..1000 {
            if set.errors() >= 1 {
                break;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        dns.fail_with(Some(2));
        let errors = set.errors();
        for _ in 0..1000 {
            if set.errors() > errors {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        dns.fail_with(None);
        dns.set("api.test", 0, vec![]);
        let errors = set.errors();
        for _ in 0..1000 {
            if set.errors() > errors {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(set.errors() >= 3, "errors: {}", set.errors());
        assert!(dns.queries() > queries);
        assert_eq!(names(&set.current().unwrap()), ["10.0.0.1:80 w1"]);
        // And an answer with records moves it again.
        dns.set("api.test", 0, vec![a("10.0.0.7")]);
        assert_eq!(names(&set.changed().await.unwrap()), ["10.0.0.7:80 w1"]);
    }

    #[tokio::test]
    async fn the_first_outcome_is_the_set_or_the_error_before_it() {
        let dns = TestDns::start().await;
        let host = |name: &str| DnsTarget::Host {
            name: name.into(),
            port: 80,
        };
        let mut missing = EndpointSet::follow(DnsDiscover::new(
            DnsResolver::new(vec![dns.addr()]),
            host("missing.test"),
        ));
        let err = missing.ready().await.unwrap_err();
        assert!(
            err.contains("missing.test") && err.contains("NXDOMAIN"),
            "{err}"
        );
        assert_eq!(missing.state().errors, 1);
        dns.set("here.test", 30, vec![a("10.0.0.1")]);
        let mut here = EndpointSet::follow(
            DnsDiscover::new(DnsResolver::new(vec![dns.addr()]), host("here.test"))
                .family(Family::V4),
        );
        assert_eq!(names(&here.ready().await.unwrap()), ["10.0.0.1:80 w1"]);
    }

    #[tokio::test]
    async fn srv_uses_the_lowest_priority_and_record_weights() {
        let dns = TestDns::start().await;
        let srv = |priority, weight, port| Record::Srv {
            priority,
            weight,
            port,
            target: "a.test".into(),
        };
        dns.set(
            "_x._tcp.test",
            30,
            vec![srv(10, 3, 8001), srv(10, 0, 8002), srv(20, 9, 8003)],
        );
        dns.set("a.test", 30, vec![a("127.0.0.1")]);
        let mut set = EndpointSet::follow(DnsDiscover::new(
            DnsResolver::new(vec![dns.addr()]),
            DnsTarget::Srv {
                name: "_x._tcp.test".into(),
            },
        ));
        assert_eq!(
            names(&set.changed().await.unwrap()),
            ["127.0.0.1:8001 w3", "127.0.0.1:8002 w1"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_resolution_waits_for_the_ttl_within_bounds() {
        // Resolution is real I/O; the waits in between run on paused time. Each `diff` is one
        // resolution: count queries at each step.
        let dns = TestDns::start().await;
        dns.set("api.test", 120, vec![a("10.0.0.1")]);
        let mut d = DnsDiscover::new(
            DnsResolver::new(vec![dns.addr()]).timeout(Duration::from_secs(3600)),
            DnsTarget::Host {
                name: "api.test".into(),
                port: 80,
            },
        )
        .family(Family::V4)
        .max_ttl(Duration::from_secs(60));
        let _ = next_change(&mut d).await.unwrap();
        assert_eq!(dns.queries(), 1);
        dns.set("api.test", 120, vec![a("10.0.0.2")]);
        let before = tokio::time::Instant::now();
        let mut got = vec![];
        while got.len() < 2 {
            got.push(next_change(&mut d).await.unwrap());
        }
        // The TTL (120 s) was capped at max_ttl.
        let waited = before.elapsed();
        assert!(
            waited >= Duration::from_secs(60) && waited < Duration::from_secs(61),
            "{waited:?}"
        );
    }
}
