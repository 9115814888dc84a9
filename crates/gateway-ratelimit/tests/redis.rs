//! The Redis and hybrid stores against a real, private Redis.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use gateway_ratelimit::{
    Check, Clock, Decided, Decision, MemoryStore, Policy, Quota, QuotaWindow, Rate, RateLimitKey,
    Store,
    store::{FailurePolicy, HybridStore, RedisStore, TimeSource},
};
use gateway_test::{TestRedis, silent_listener};

async fn decide(
    store: &dyn Store,
    checks: &[Check],
    max_wait: Duration,
) -> Result<Decision, String> {
    match store.decide(checks, max_wait) {
        Decided::Ready(r) => r.map_err(|e| e.to_string()),
        Decided::Pending(f) => f.await.map_err(|e| e.to_string()),
    }
}

fn check(name: &str, key: &str, policy: Policy, cost: u32) -> Check {
    Check {
        name: name.into(),
        key: RateLimitKey::new(key),
        policy,
        cost,
    }
}

/// One gateway instance's hybrid store (50 ms leases) on the test's Redis and manual clock.
fn hybrid(redis: &TestRedis, clock: &Clock, timeout: Duration) -> HybridStore {
    let shared = RedisStore::builder(redis.url())
        .prefix(redis.prefix())
        .time(TimeSource::Local(clock.clone()))
        .timeout(timeout)
        .build()
        .unwrap();
    HybridStore::with_clock(shared, Duration::from_millis(50), clock.clone())
}

/// A small deterministic generator (xorshift), so a failing sequence can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::test]
async fn redis_and_memory_stores_make_the_same_decisions() {
    let redis = TestRedis::start().await;
    // Start ten seconds before a month ends, so quota windows roll over during the run.
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_083_190); // 2026-11-30T23:59:50Z
    let clock = Clock::manual(start);
    let memory = MemoryStore::with_clock(10_000, clock.clone());
    let shared = RedisStore::builder(redis.url())
        .prefix(redis.prefix())
        .time(TimeSource::Local(clock.clone()))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let policies = [
        Policy::rate(Rate::per_second(10), 5),
        Policy::rate("3/s".parse().unwrap(), 2),
        Policy::rate(Rate::per_minute(100), 20),
        Policy::Quota(Quota::new(7, QuotaWindow::Minute)),
        Policy::Quota(Quota::per_month(40)),
        Policy::Quota(Quota::per_day(25)),
        // Smaller than the largest cost: some requests can never pass.
        Policy::Quota(Quota::new(3, QuotaWindow::Hour)),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut admitted = 0;
    for step in 0..3000 {
        clock.advance(Duration::from_micros(rng.below(40_000)));
        let n = 1 + rng.below(3) as usize;
        let checks: Vec<Check> = (0..n)
            .map(|_| {
                let p = rng.below(policies.len() as u64) as usize;
                let cost = 1 + rng.below(4) as u32;
                // Rates and quotas share names (l0 is a rate and a quota): kinds keep them apart.
                let name = if p < 6 { p % 3 } else { p };
                check(
                    &format!("l{name}"),
                    &format!("k{}", rng.below(3)),
                    policies[p],
                    cost,
                )
            })
            .collect();
        // Duplicate (limit, key) pairs within one request are decided independently by both.
        let mut seen = std::collections::HashSet::new();
        let checks: Vec<Check> = checks
            .into_iter()
            .filter(|c| {
                let rate = matches!(c.policy, Policy::Rate { .. });
                seen.insert((c.name.clone(), c.key.clone(), rate))
            })
            .collect();
        let max_wait = Duration::from_micros(if rng.below(4) == 0 {
            rng.below(300_000)
        } else {
            0
        });
        let a = decide(&memory, &checks, max_wait).await.unwrap();
        let b = decide(&shared, &checks, max_wait).await.unwrap();
        assert_eq!(a, b, "step {step}: {checks:?} max_wait {max_wait:?}");
        admitted += usize::from(a.allowed());
    }
    // The sequence exercised both outcomes.
    assert!(admitted > 500 && admitted < 2800, "{admitted}");
}

#[tokio::test]
async fn every_key_written_has_an_expiry() {
    let redis = TestRedis::start().await;
    let store = RedisStore::builder(redis.url())
        .prefix(redis.prefix())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let checks = [
        check("r", "client", Policy::rate(Rate::per_second(10), 10), 1),
        check("q", "client", Policy::Quota(Quota::per_month(100)), 1),
    ];
    assert!(
        decide(&store, &checks, Duration::ZERO)
            .await
            .unwrap()
            .allowed()
    );
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", redis.prefix()))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        !keys.iter().any(|k| k.contains("client")),
        "keys are hashed: {keys:?}"
    );
    for key in keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0, "{key} has no expiry ({ttl})");
        if key.contains(":g:") {
            assert!(
                ttl <= 100,
                "a rate key lives until its bucket is full again: {ttl} ms"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_decisions_against_a_limit_of_100_admit_exactly_100() {
    let redis = TestRedis::start().await;
    let store = Arc::new(
        RedisStore::builder(redis.url())
            .prefix(redis.prefix())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    );
    let policy = Policy::rate(Rate::per_hour(100), 100);
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let d = decide(&*store, &[check("r", "global", policy, 1)], Duration::ZERO)
                    .await
                    .unwrap();
                d.allowed()
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap());
    }
    assert_eq!(ok, 100);
    assert_eq!(store.stats().errors, 0);
}

#[tokio::test]
async fn outage_applies_the_failure_policy_and_recovery_resumes_shared_limits() {
    let mut redis = TestRedis::start().await;
    assert!(redis.is_private(), "outage tests stop the server");
    let build = |failure| {
        RedisStore::builder(redis.url())
            .prefix(redis.prefix())
            .timeout(Duration::from_secs(2))
            .retry_after_failure(Duration::ZERO)
            .on_failure(failure)
            .build()
            .unwrap()
    };
    let open = build(FailurePolicy::Open);
    let closed = build(FailurePolicy::Closed);
    let local = build(FailurePolicy::Local(MemoryStore::new()));
    let limit = |name: &str| [check(name, "k", Policy::rate(Rate::per_hour(2), 2), 1)];
    for (store, name) in [(&open, "open"), (&closed, "closed"), (&local, "local")] {
        assert!(
            decide(store, &limit(name), Duration::ZERO)
                .await
                .unwrap()
                .allowed()
        );
    }

    redis.stop();
    // Fail open: admitted, counted.
    for _ in 0..3 {
        assert!(
            decide(&open, &limit("open"), Duration::ZERO)
                .await
                .unwrap()
                .allowed()
        );
    }
    assert_eq!(open.stats().failed_open, 3);
    assert_eq!(open.stats().errors, 3);
    // Fail closed: an error, which the layer answers with 503.
    assert!(
        decide(&closed, &limit("closed"), Duration::ZERO)
            .await
            .is_err()
    );
    assert_eq!(closed.stats().failed_closed, 1);
    // Local fallback: a local limiter of the same shape (2 per hour) decides.
    let local_results: Vec<bool> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(
                decide(&local, &limit("local"), Duration::ZERO)
                    .await
                    .unwrap()
                    .allowed(),
            );
        }
        v
    };
    assert_eq!(local_results, [true, true, false]);
    assert_eq!(local.stats().fell_back, 3);

    redis.restart().await;
    // Redis is back (and empty: it saves nothing): shared decisions resume.
    let calls = closed.stats().calls;
    let mut recovered = false;
    for _ in 0..50 {
        if decide(&closed, &limit("closed"), Duration::ZERO)
            .await
            .is_ok()
        {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "the store reconnects after the restart");
    assert!(closed.stats().calls > calls);
    assert!(
        decide(&closed, &limit("closed"), Duration::ZERO)
            .await
            .unwrap()
            .allowed()
    );
    assert!(
        !decide(&closed, &limit("closed"), Duration::ZERO)
            .await
            .unwrap()
            .allowed(),
        "limit enforced again"
    );
}

#[tokio::test]
async fn the_server_clock_decides_by_default() {
    let redis = TestRedis::start().await;
    let store = RedisStore::builder(redis.url())
        .prefix(redis.prefix())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let c = [check("r", "k", Policy::rate(Rate::per_hour(1), 1), 1)];
    assert!(decide(&store, &c, Duration::ZERO).await.unwrap().allowed());
    let refused = decide(&store, &c, Duration::ZERO).await.unwrap();
    let wait = refused.outcomes[0].retry_after.unwrap();
    assert!(
        wait > Duration::from_secs(3590) && wait <= Duration::from_secs(3600),
        "{wait:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_leases_are_single_flight_and_never_overshoot_under_concurrency() {
    let redis = TestRedis::start().await;
    // A frozen clock: nothing refills during the test, so the bucket's 1000 tokens are all
    // there is.
    let clock = Clock::manual(SystemTime::now());
    let instances: Vec<Arc<HybridStore>> = (0..3)
        .map(|_| Arc::new(hybrid(&redis, &clock, Duration::from_secs(10))))
        .collect();
    let policy = Policy::rate(Rate::per_second(1000), 1000);
    let tasks: Vec<_> = (0..3000)
        .map(|i| {
            let store = instances[i % 3].clone();
            tokio::spawn(async move {
                decide(
                    &*store,
                    &[check("api", "global", policy, 1)],
                    Duration::ZERO,
                )
                .await
                .unwrap()
                .allowed()
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    let calls: u64 = instances.iter().map(|s| s.redis().stats().calls).sum();
    assert!(admitted <= 1000, "overshoot: {admitted}");
    // Undershoot is bounded by the unspent part of one lease (50 tokens) per instance.
    assert!(admitted >= 1000 - 3 * 50, "undershoot: {admitted}");
    // One call per lease of 50, plus the calls that learned the bucket was empty.
    assert!(
        calls <= 1000 / 50 + 3 * 3,
        "{calls} Redis calls for 3000 decisions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_waiters_never_fail_open_while_redis_is_healthy() {
    let redis = TestRedis::start().await;
    let clock = Clock::manual(SystemTime::now());
    // Small leases (100/s × 50 ms = 5 tokens) and the default 50 ms timeout: 200 concurrent
    // requests for one key wait through many refills; those that run out of patience must be
    // decided exactly, never admitted by the (default, fail-open) failure policy.
    let store = Arc::new(hybrid(&redis, &clock, Duration::from_millis(50)));
    let policy = Policy::rate(Rate::per_second(100), 100);
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                decide(&*store, &[check("api", "k", policy, 1)], Duration::ZERO)
                    .await
                    .unwrap()
                    .allowed()
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    assert!(
        admitted <= 100,
        "admitted {admitted} against a bucket of 100"
    );
    assert_eq!(store.redis().stats().failed_open, 0);
}

#[tokio::test]
async fn a_hanging_redis_is_cut_off_by_the_timeout() {
    let addr = silent_listener().await;
    let store = RedisStore::builder(format!("redis://{addr}/"))
        .timeout(Duration::from_millis(50))
        .on_failure(FailurePolicy::Closed)
        .build()
        .unwrap();
    let c = [check("r", "k", Policy::rate(Rate::per_second(1), 1), 1)];
    let err = decide(&store, &c, Duration::ZERO).await.unwrap_err();
    assert!(err.contains("unavailable"), "{err}");
    assert_eq!(store.stats().errors, 1);
    assert!(store.is_degraded());
}

#[tokio::test(start_paused = true)]
async fn after_a_failure_redis_is_left_alone_for_the_pause_then_probed() {
    // A port with nothing listening: every call fails at once.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let store = RedisStore::builder(format!("redis://127.0.0.1:{port}/"))
        .retry_after_failure(Duration::from_secs(1))
        .build()
        .unwrap();
    let c = [check("r", "k", Policy::rate(Rate::per_second(1), 1), 1)];
    assert!(
        decide(&store, &c, Duration::ZERO).await.unwrap().allowed(),
        "fails open by default"
    );
    assert_eq!(store.stats().calls, 1);
    for _ in 0..10 {
        decide(&store, &c, Duration::ZERO).await.unwrap();
    }
    assert_eq!(store.stats().calls, 1, "paused: no call while degraded");
    assert_eq!(store.stats().failed_open, 11);
    tokio::time::advance(Duration::from_secs(1)).await;
    decide(&store, &c, Duration::ZERO).await.unwrap();
    assert_eq!(store.stats().calls, 2, "probed again after the pause");
}

#[tokio::test]
#[allow(
    clippy::print_stderr,
    reason = "the measured figures are the test's report"
)]
async fn hybrid_leasing_overshoots_under_one_percent_with_few_redis_calls() {
    let redis = TestRedis::start().await;
    let clock = Clock::manual(SystemTime::now());
    let rate = Rate::per_second(1000);
    let policy = Policy::rate(rate, 100);
    let instances: Vec<HybridStore> = (0..3)
        .map(|_| hybrid(&redis, &clock, Duration::from_secs(5)))
        .collect();
    // Three instances each offered 1500 requests/s (4.5x the limit) for 20 simulated seconds.
    let seconds = 20;
    let mut admitted = 0u64;
    let mut offered = 0u64;
    // Admission times (µs), to find the busiest one-second window.
    let mut window = std::collections::VecDeque::new();
    let mut busiest = 0usize;
    let mut now = 0u64;
    for _ in 0..seconds * 1500 {
        clock.advance(Duration::from_micros(666));
        now += 666;
        for store in &instances {
            offered += 1;
            let d = decide(store, &[check("api", "global", policy, 1)], Duration::ZERO)
                .await
                .unwrap();
            if d.allowed() {
                admitted += 1;
                window.push_back(now);
                while window.front().is_some_and(|&t| t + 1_000_000 <= now) {
                    window.pop_front();
                }
                busiest = busiest.max(window.len());
            }
        }
    }
    // Any one-second window: at most rate × 1 s + burst, plus one lease (rate × 50 ms).
    assert!(
        busiest <= 1000 + 100 + 50,
        "busiest second admitted {busiest}"
    );
    let elapsed = 20 * 1500 * 666 / 1000; // ms
    let allowed_max = rate.count() * elapsed / 1000 + 100;
    let overshoot = admitted as f64 / allowed_max as f64 - 1.0;
    let calls: u64 = instances.iter().map(|s| s.redis().stats().calls).sum();
    let calls_per_request = calls as f64 / offered as f64;
    eprintln!(
        "hybrid: offered {offered}, admitted {admitted}, exact maximum {allowed_max}, overshoot {:.3}%, busiest second {busiest}, {calls} Redis calls ({calls_per_request:.4}/request)",
        overshoot * 100.0
    );
    assert!(overshoot <= 0.01, "overshoot {:.3}%", overshoot * 100.0);
    assert!(
        overshoot > -0.05,
        "undershoot {:.3}% is too large",
        -overshoot * 100.0
    );
    assert!(calls_per_request <= 0.05, "{calls_per_request}");
}
