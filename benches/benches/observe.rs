//! Per-request cost of the observe stack (request id, metrics, and the access log writing JSON
//! lines to a discarding sink) around a service that answers at once, against the bare service.
//! The response body is consumed, since that is when the numbers are recorded.
//!
//! Run with `cargo bench -p gateway-benches --bench observe`.

use std::{
    convert::Infallible,
    future::{Future, ready},
    hint::black_box,
};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use gateway_benches::now;
use gateway_core::RouteId;
use gateway_observe::{
    AccessLog, AccessLogConfig, HttpMetrics, LogSink, MetricsConfig, ObserveLayer, Observer,
    RequestIds,
};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, service_fn};

fn app(
    _req: Request<Full<Bytes>>,
) -> impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> {
    let mut res = Response::new(Full::new(Bytes::from_static(b"hello")));
    res.extensions_mut().insert(RouteId::new("orders"));
    ready(Ok(res))
}

fn request() -> Request<Full<Bytes>> {
    Request::get("/orders/42")
        .header("user-agent", "bench")
        .body(Full::default())
        .unwrap()
}

#[allow(clippy::print_stderr)]
fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("observe");
    let mut bare = service_fn(app);
    g.bench_function("baseline", |b| {
        b.iter(|| {
            let res = now(bare.call(request())).unwrap();
            black_box(now(res.into_body().collect()).unwrap());
        });
    });
    let metrics_only = Observer::new(
        RequestIds::default(),
        HttpMetrics::new(&MetricsConfig::default()),
    );
    let mut svc = ObserveLayer::new(metrics_only).layer(service_fn(app));
    g.bench_function("ids_and_metrics", |b| {
        b.iter(|| {
            let res = now(svc.call(request())).unwrap();
            black_box(now(res.into_body().collect()).unwrap());
        });
    });
    // Lines go to /dev/null through the writer thread, as a file sink would.
    let log = AccessLog::start(AccessLogConfig {
        sink: LogSink::File("/dev/null".into()),
        headers: vec![http::header::USER_AGENT],
        ..AccessLogConfig::default()
    })
    .unwrap();
    let full = Observer::new(
        RequestIds::default(),
        HttpMetrics::new(&MetricsConfig::default()),
    )
    .with_access_log(log);
    let mut svc = ObserveLayer::new(full.clone()).layer(service_fn(app));
    g.bench_function("ids_metrics_and_access_log", |b| {
        b.iter(|| {
            let res = now(svc.call(request())).unwrap();
            black_box(now(res.into_body().collect()).unwrap());
        });
    });
    // Everything, plus a server span per request exported over OTLP/HTTP to a closed port: the
    // request side builds the span and queues it; the exporter's failures only drop spans.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let exporter =
        gateway_observe::OtlpExporter::start(&format!("http://{closed}"), "bench", 8192).unwrap();
    let log = AccessLog::start(AccessLogConfig {
        sink: LogSink::File("/dev/null".into()),
        headers: vec![http::header::USER_AGENT],
        ..AccessLogConfig::default()
    })
    .unwrap();
    let traced = Observer::new(
        RequestIds::default(),
        HttpMetrics::new(&MetricsConfig::default()),
    )
    .with_access_log(log)
    .with_tracing(gateway_observe::Tracer::new(exporter));
    let mut svc = ObserveLayer::new(traced).layer(service_fn(app));
    g.bench_function("everything_with_tracing_exported", |b| {
        b.iter(|| {
            let res = now(svc.call(request())).unwrap();
            black_box(now(res.into_body().collect()).unwrap());
        });
    });
    g.finish();
    eprintln!(
        "access log lines dropped during the run: {}",
        full.access_log().map_or(0, AccessLog::dropped)
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
