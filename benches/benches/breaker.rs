//! Per-request overhead of the circuit breaker, against the same service without it.
//!
//! Run with `cargo bench -p gateway-benches --bench breaker`.

use std::{convert::Infallible, future::ready, hint::black_box};

use criterion::{Criterion, criterion_group, criterion_main};
use gateway_benches::now;
use gateway_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
use http::{Request, Response};
use tower::{Layer, Service, service_fn};

fn bench_breaker(c: &mut Criterion) {
    let mut g = c.benchmark_group("breaker");
    let inner =
        service_fn(|_req: Request<()>| ready(Ok::<_, Infallible>(Response::new(String::new()))));
    let mut baseline = inner;
    g.bench_function("baseline_service_call", |b| {
        b.iter(|| now(baseline.call(black_box(Request::new(())))).unwrap());
    });
    let mut guarded = CircuitBreakerLayer::new(CircuitBreakerConfig::default()).layer(inner);
    g.bench_function("closed_breaker_call", |b| {
        b.iter(|| now(guarded.call(black_box(Request::new(())))).unwrap());
    });
    let open = CircuitBreakerLayer::new(CircuitBreakerConfig::default());
    open.handle().force_open();
    let mut rejecting = open.layer(inner);
    g.bench_function("open_breaker_rejection", |b| {
        b.iter(|| now(rejecting.call(black_box(Request::new(())))).unwrap());
    });
    g.finish();
}

criterion_group!(benches, bench_breaker);
criterion_main!(benches);
