//! Decision cost of the rate limiter: the in-memory store against `governor`'s keyed limiter
//! (hot key, and 1M distinct keys), the layer against a bare service, and decisions through
//! Redis (exact and hybrid) against a plain Redis `PING` round trip.
//!
//! Run with `cargo bench -p gateway-benches --bench ratelimit` (starts a private `redis-server`;
//! see `gateway_test::TestRedis`).

use std::{convert::Infallible, future::ready, hint::black_box, num::NonZeroU32, time::Duration};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gateway_benches::now;
use gateway_core::ClientIp;
use gateway_ratelimit::{
    Check, Decided, HybridStore, MemoryStore, Policy, Rate, RateLimitKey, RateLimitLayer,
    RedisStore, Store,
};
use http::{Request, Response};
use tower::{Layer, Service, service_fn};

const MANY: usize = 1_000_000;

fn check(key: &str) -> Check {
    Check {
        name: "bench".into(),
        key: RateLimitKey::new(key),
        // Generous, so every decision admits and writes (the common, more expensive path).
        policy: Policy::rate(Rate::per_second(1_000_000), u32::MAX),
        cost: 1,
    }
}

fn bench_memory(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("ratelimit_decision");
    let quota = governor::Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap())
        .allow_burst(NonZeroU32::new(1_000_000).unwrap());

    let keys: Vec<String> = (0..MANY)
        .map(|i| format!("ip:10.{}.{}.{}/32", i >> 16, (i >> 8) & 255, i & 255))
        .collect();
    let governor = governor::RateLimiter::keyed(quota);
    let memory = MemoryStore::with_capacity(2 * MANY);
    let hot = check("ip:192.0.2.1/32");
    g.bench_function(BenchmarkId::new("governor_keyed", "hot_key"), |b| {
        let key = String::from("ip:192.0.2.1/32");
        b.iter(|| governor.check_key(black_box(&key)).is_ok());
    });
    g.bench_function(BenchmarkId::new("memory_store", "hot_key"), |b| {
        b.iter(
            || match memory.decide(black_box(std::slice::from_ref(&hot)), Duration::ZERO) {
                Decided::Ready(d) => d.unwrap().allowed(),
                Decided::Pending(_) => unreachable!(),
            },
        );
    });
    for key in &keys {
        let _ = governor.check_key(key);
    }
    let checks: Vec<Check> = keys.iter().map(|k| check(k)).collect();
    for c in &checks {
        let _ = memory.decide(std::slice::from_ref(c), Duration::ZERO);
    }
    assert!(memory.len() >= MANY);
    g.bench_function(BenchmarkId::new("governor_keyed", "1m_keys"), |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 7919) % MANY;
            governor.check_key(black_box(&keys[i])).is_ok()
        });
    });
    g.bench_function(BenchmarkId::new("memory_store", "1m_keys"), |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 7919) % MANY;
            match memory.decide(black_box(std::slice::from_ref(&checks[i])), Duration::ZERO) {
                Decided::Ready(d) => d.unwrap().allowed(),
                Decided::Pending(_) => unreachable!(),
            }
        });
    });
    g.finish();

    let mut g = c.benchmark_group("ratelimit_layer");
    let inner =
        service_fn(|_req: Request<()>| ready(Ok::<_, Infallible>(Response::new(String::new()))));
    let request = || {
        let mut req = Request::new(());
        req.extensions_mut()
            .insert(ClientIp::direct([192, 0, 2, 1].into()));
        req
    };
    let mut bare = inner;
    g.bench_function("baseline_service_call", |b| {
        b.iter(|| now(bare.call(black_box(request()))).unwrap());
    });
    let mut limited = RateLimitLayer::per_second(1_000_000)
        .burst(u32::MAX)
        .layer(inner);
    g.bench_function("rate_limited_call", |b| {
        b.iter(|| now(limited.call(black_box(request()))).unwrap());
    });
    g.finish();
}

fn bench_redis(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let redis = rt.block_on(gateway_test::TestRedis::start());
    let mut g = c.benchmark_group("ratelimit_redis");
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = rt
        .block_on(client.get_multiplexed_async_connection())
        .unwrap();
    g.bench_function("baseline_redis_ping", |b| {
        b.iter(|| {
            rt.block_on(redis::cmd("PING").query_async::<String>(&mut conn))
                .unwrap()
        });
    });
    let exact = {
        let _guard = rt.enter();
        RedisStore::builder(redis.url())
            .prefix(redis.prefix())
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    let hybrid = {
        let _guard = rt.enter();
        HybridStore::new(exact.clone(), Duration::from_millis(50))
    };
    let one = [Check {
        name: "bench".into(),
        key: RateLimitKey::new("k"),
        policy: Policy::rate(Rate::per_second(1_000_000), u32::MAX),
        cost: 1,
    }];
    g.bench_function("exact_decision", |b| {
        b.iter(|| rt.block_on(decide(&exact, &one)));
    });
    g.bench_function("hybrid_decision", |b| {
        b.iter(|| rt.block_on(decide(&hybrid, &one)));
    });
    g.finish();
}

async fn decide(store: &dyn Store, checks: &[Check]) -> bool {
    match store.decide(checks, Duration::ZERO) {
        Decided::Ready(d) => d.unwrap().allowed(),
        Decided::Pending(f) => f.await.unwrap().allowed(),
    }
}

criterion_group!(benches, bench_memory, bench_redis);
criterion_main!(benches);
