//! Observability for tower API gateways: what operators look at when something goes wrong.
//!
//! - [`RequestIds`]: accept a trusted inbound id or generate one; in the request's extensions
//!   ([`RequestId`]), forwarded upstream and returned on the response.
//! - [`HttpMetrics`]: `http_server_request_duration_seconds` and friends (OpenTelemetry HTTP
//!   semantic-convention names), labelled only with bounded values (route name or `unmatched`,
//!   method or `_OTHER`, status code or class, rejection reason), as Prometheus/OpenMetrics text.
//! - [`AccessLog`]: one JSON (or templated) line per request from a writer thread, with
//!   redaction, escaping, route exclusion, sampling that keeps every error, and a drop counter.
//! - [`Tracer`] and [`OtlpExporter`]: a server span per request (client spans per upstream
//!   attempt come from `gateway-lb`), W3C trace context, ratio sampling, OTLP/HTTP export that
//!   never blocks a request.
//! - [`Observer`] ties them together; [`ObserveLayer`] is it as a tower layer. Durations and
//!   sizes are taken when the response body ends, not when its head is sent.
//!
//! # Example
//!
//! ```
//! use gateway_observe::{HttpMetrics, MetricsConfig, ObserveLayer, Observer, RequestIds};
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let observer = Observer::new(RequestIds::default(), HttpMetrics::new(&MetricsConfig::default()));
//! let svc = ServiceBuilder::new()
//!     .layer(ObserveLayer::new(observer.clone()))
//!     .service_fn(|req: Request<Full<bytes::Bytes>>| async move {
//!         // Set by the layer, before the service runs.
//!         assert!(req.extensions().get::<gateway_observe::RequestId>().is_some());
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::new(bytes::Bytes::from("hi"))))
//!     });
//! let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
//! assert_eq!(res.headers()["x-request-id"].len(), 32);
//! res.into_body().collect().await.unwrap(); // recorded when the body ends
//! let text = observer.metrics().encode();
//! assert!(text.contains(
//!     r#"http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="200",http_route="unmatched"} 1"#
//! ));
//! # }
//! ```

mod access_log;
mod layer;
mod metrics;
mod metrics_export;
mod observer;
mod request_id;
mod trace;

pub use access_log::{AccessLog, AccessLogConfig, LogFormat, LogSink};
pub use layer::{Observe, ObserveFuture, ObserveLayer};
pub use metrics::{CONTENT_TYPE, DEFAULT_DURATION_BUCKETS, HttpMetrics, MetricsConfig, UNMATCHED};
pub use metrics_export::{MetricsExportStats, OtlpMetricsExporter};
pub use observer::{Observation, ObservedBody, Observer};
/// The metric types [`HttpMetrics`] hands out (`Counter`, `Gauge`, `Family`).
pub use prometheus_client;
pub use request_id::{RequestId, RequestIds};
pub use trace::{ExportStats, OtlpExporter, Tracer};
