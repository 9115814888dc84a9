//! The cost of picking an endpoint, per algorithm, at 10, 100 and 1000 endpoints; against the
//! baseline of an atomic counter modulo the endpoint count (what plain round robin costs
//! without health state).
//!
//! Run with `cargo bench -p gateway-benches --bench balance`.

use std::{
    hint::black_box,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gateway_lb::balance::{Balance, Balancer, HashOn, SeqRng, stable_hash};

fn bench_pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("balance");
    for n in [10usize, 100, 1000] {
        let counter = AtomicUsize::new(0);
        g.bench_with_input(BenchmarkId::new("baseline_counter", n), &n, |b, n| {
            b.iter(|| black_box(counter.fetch_add(1, Ordering::Relaxed) % n));
        });
        let weights: Vec<u32> = (0..n).map(|i| 1 + u32::try_from(i % 3).unwrap()).collect();
        for (name, algorithm) in [
            ("round_robin", Balance::RoundRobin),
            ("weighted_round_robin", Balance::WeightedRoundRobin),
            ("random", Balance::Random),
            ("least_request", Balance::LeastRequest),
            ("peak_ewma", Balance::PeakEwma),
            ("least_connections", Balance::LeastConnections),
            ("maglev_hash", Balance::Hash(HashOn::Path)),
        ] {
            let b = Balancer::new(algorithm, &weights, Arc::new(SeqRng::new(1)));
            let mut key = 0u64;
            g.bench_with_input(BenchmarkId::new(name, n), &n, |bench, _| {
                bench.iter(|| {
                    key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    black_box(b.pick(Some(key), &[]))
                });
            });
        }
    }
    g.bench_function("stable_hash_of_a_path", |b| {
        b.iter(|| stable_hash(black_box(b"/api/v2/orders/12345/items")));
    });
    g.finish();
}

criterion_group!(benches, bench_pick);
criterion_main!(benches);
