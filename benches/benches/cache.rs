//! Per-request cost of the cache layer around an origin that answers at once with a 1 KiB body:
//! a hit, a miss that stores, and a response the cache must not store (streamed through), each
//! against the bare origin in the same run.
//!
//! Run with `cargo bench -p gateway-benches --bench cache`.

use std::{
    convert::Infallible,
    future::{Future, ready},
    hint::black_box,
};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use gateway_benches::now;
use gateway_cache::{CacheLayer, MemoryStore};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, service_fn};

fn origin(
    req: Request<Full<Bytes>>,
) -> impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> {
    let (parts, _) = req.into_parts();
    let cc = if parts.uri.path().starts_with("/private") {
        "private"
    } else {
        "max-age=600"
    };
    ready(Ok(Response::builder()
        .header("cache-control", cc)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(vec![b'x'; 1024])))
        .unwrap()))
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://shop.example{path}"))
        .header("accept", "application/json")
        .body(Full::default())
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("cache");
    let mut bare = service_fn(origin);
    g.bench_function("baseline_origin", |b| {
        b.iter(|| {
            let res = now(bare.call(get("/orders/1"))).unwrap();
            black_box(now(res.into_body().collect()).unwrap());
        });
    });
    let mut cached = CacheLayer::new(MemoryStore::new(64 << 20)).layer(service_fn(origin));
    now(cached.call(get("/orders/1"))).unwrap();
    g.bench_function("hit", |b| {
        b.iter(|| {
            let res = now(cached.call(get("/orders/1"))).unwrap();
            black_box(now(res.into_body().collect()).unwrap());
        });
    });
    // Every iteration a new URL: a miss that is stored (the store evicts the oldest).
    let mut storing = CacheLayer::new(MemoryStore::new(8 << 20)).layer(service_fn(origin));
    let mut n = 0u64;
    g.bench_function("miss_and_store", |b| {
        b.iter(|| {
            n += 1;
            let res = now(storing.call(get(&format!("/orders/{n}")))).unwrap();
            black_box(now(res.into_body().collect()).unwrap());
        });
    });
    let mut passing = CacheLayer::new(MemoryStore::new(8 << 20)).layer(service_fn(origin));
    g.bench_function("not_storable_passthrough", |b| {
        b.iter(|| {
            let res = now(passing.call(get("/private/me"))).unwrap();
            black_box(now(res.into_body().collect()).unwrap());
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
