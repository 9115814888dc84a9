//! Criterion benchmarks of the per-request work the gateway does before the upstream call.
//!
//! Run with `cargo bench -p gateway-benches`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use gateway::{Compiled, Config};
use gateway_core::{TrustedProxies, normalize_path};
use http::{HeaderMap, Method};

fn routes_config(n: usize) -> String {
    let mut yaml = String::from(
        "listeners:\n  - bind: 127.0.0.1:0\nupstreams:\n  up:\n    endpoints: [\"127.0.0.1:1\"]\nroutes:\n",
    );
    for i in 0..n {
        yaml.push_str(&format!(
            "  - name: r{i}\n    match: {{ path_prefix: /svc{i}/api, methods: [GET, POST] }}\n    upstream: up\n"
        ));
    }
    yaml.push_str("  - name: users\n    match: { path_template: \"/users/{id}/orders/{order}\" }\n    upstream: up\n");
    yaml.push_str("  - name: fallback\n    match: { path_prefix: / }\n    upstream: up\n");
    yaml
}

fn bench_normalize(c: &mut Criterion) {
    let mut g = c.benchmark_group("normalize_path");
    g.bench_function("clean", |b| {
        b.iter(|| normalize_path(black_box("/api/v1/users/42/orders")));
    });
    g.bench_function("dirty", |b| {
        b.iter(|| normalize_path(black_box("/api/v1//users/./42/%2e%2e/43/%6Frders")));
    });
    g.finish();
}

fn bench_router(c: &mut Criterion) {
    let mut g = c.benchmark_group("router_find");
    let headers = HeaderMap::new();
    for n in [10, 100] {
        let config = Config::parse(&routes_config(n), "bench.yaml").unwrap();
        let compiled = Compiled::new(&config, "bench.yaml").unwrap();
        let router = &compiled.router;
        g.bench_function(format!("{n}_routes_prefix_hit_last"), |b| {
            let path = format!("/svc{}/api/items", n - 1);
            b.iter(|| {
                router
                    .find(
                        Some("api.example.com"),
                        &Method::GET,
                        black_box(&path),
                        None,
                        &headers,
                    )
                    .is_some()
            });
        });
        g.bench_function(format!("{n}_routes_template"), |b| {
            b.iter(|| {
                router
                    .find(
                        Some("api.example.com"),
                        &Method::GET,
                        black_box("/users/42/orders/7"),
                        None,
                        &headers,
                    )
                    .is_some()
            });
        });
    }
    g.finish();
}

fn bench_headers(c: &mut Criterion) {
    let mut g = c.benchmark_group("headers");
    let mut base = HeaderMap::new();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
        ("connection", "keep-alive"),
        ("x-forwarded-for", "203.0.113.9, 10.0.0.2"),
        ("authorization", "Bearer abc"),
    ] {
        base.insert(k, v.parse().unwrap());
    }
    // Baseline for ratios: cloning the request's header map, which any proxy does at least once.
    g.bench_function("baseline_clone_header_map", |b| {
        b.iter(|| black_box(&base).clone());
    });
    g.bench_function("strip_hop_by_hop", |b| {
        b.iter_batched_ref(
            || base.clone(),
            gateway_lb::strip_hop_by_hop,
            criterion::BatchSize::SmallInput,
        );
    });
    let trusted: TrustedProxies = "10.0.0.0/8".parse().unwrap();
    g.bench_function("resolve_client_ip_trusted_peer", |b| {
        b.iter(|| trusted.resolve(black_box("10.0.0.1".parse().unwrap()), &base));
    });
    g.bench_function("resolve_client_ip_untrusted_peer", |b| {
        b.iter(|| trusted.resolve(black_box("198.51.100.1".parse().unwrap()), &base));
    });
    g.finish();
}

criterion_group!(benches, bench_normalize, bench_router, bench_headers);
criterion_main!(benches);
