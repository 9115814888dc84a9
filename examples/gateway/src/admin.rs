//! The admin listener: `/healthz`, `/readyz`, `/routes`, `/upstreams`, `/ratelimit`. It runs on its own thread and socket,
//! never on a public listener, so no path or header trick on the public side can reach it.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use gateway_core::Problem;

use crate::server::Shared;

pub(crate) fn run(listener: std::net::TcpListener, shared: &Arc<Shared>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start admin runtime");
            return;
        }
    };
    let shared = shared.clone();
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot register admin listener");
                return;
            }
        };
        let mut stopped = shared.stopped_signal();
        let app = router(shared);
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                crate::server::shutting_down(&mut stopped).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin listener failed");
        }
    });
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(readyz))
        .route("/routes", get(routes))
        .route("/upstreams", get(upstreams))
        .route("/upstreams/{name}/breaker", post(force_breaker))
        .route("/ratelimit", get(ratelimit))
        .route("/config", get(config))
        .route("/metrics", get(metrics))
        .route("/cache/purge", post(purge))
        .route("/config/reload", post(reload))
        .fallback(|| async {
            let res: axum::http::Response<String> = Problem::new(StatusCode::NOT_FOUND)
                .detail("unknown admin endpoint")
                .into_response();
            res.into_response()
        })
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            require_token,
        ))
        .with_state(shared)
}

/// With `admin.token_env`, every endpoint but `/healthz` and `/readyz` (probes) needs
/// `Authorization: Bearer <token>`.
async fn require_token(
    State(shared): State<Arc<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(want) = shared.compiled().admin_token else {
        return next.run(req).await;
    };
    if matches!(req.uri().path(), "/healthz" | "/readyz") {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if given.is_some_and(|g| gateway_auth::ApiKeyHash::of(g).ct_eq(&want)) {
        return next.run(req).await;
    }
    let mut res = admin_problem(
        StatusCode::UNAUTHORIZED,
        "the admin API needs a bearer token",
    );
    res.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer realm=\"gateway-admin\""),
    );
    res
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Purge {
    /// An exact URL (`http://host/path?query`): every caller's copy.
    #[serde(default)]
    url: Option<String>,
    /// Every URL starting with this.
    #[serde(default)]
    prefix: Option<String>,
    /// Every entry tagged this by its `Surrogate-Key` / `Cache-Tag`.
    #[serde(default)]
    tag: Option<String>,
}

/// `POST /cache/purge` with one of `{"url"}`, `{"prefix"}`, `{"tag"}`: the number of URLs purged
/// here; with `state.redis` the purge is also published to every other instance.
async fn purge(State(shared): State<Arc<Shared>>, Json(body): Json<Purge>) -> Response {
    use crate::purge::Purge as P;
    let purge = match (body.url, body.prefix, body.tag) {
        (Some(url), None, None) if !url.is_empty() => P::Url(url),
        (None, Some(prefix), None) if !prefix.is_empty() => P::Prefix(prefix),
        (None, None, Some(tag)) if !tag.is_empty() => P::Tag(tag),
        _ => {
            return admin_problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "give exactly one of a non-empty \"url\", \"prefix\" or \"tag\"",
            );
        }
    };
    let store = shared.compiled().cache_store.clone();
    let purged = purge.apply(&*store).await;
    let shared_with_others = match crate::purge::publish(&shared, &purge).await {
        Ok(()) => crate::purge::channel(&shared.compiled()).is_some(),
        Err(e) => {
            tracing::warn!(error = %e, "the purge was applied here but not published to other instances");
            false
        }
    };
    tracing::info!(
        purged,
        shared_with_others,
        "cache purged through the admin API"
    );
    Json(serde_json::json!({ "purged": purged, "published": shared_with_others })).into_response()
}

/// `GET /metrics`: Prometheus (OpenMetrics) text.
async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let m = &shared.metrics;
    if let Some(log) = shared.observer.access_log() {
        m.log_dropped
            .set(i64::try_from(log.dropped()).unwrap_or(i64::MAX));
    }
    if let Some(exporter) = &m.exporter {
        let stats = exporter.stats();
        m.spans_exported
            .set(i64::try_from(stats.exported).unwrap_or(i64::MAX));
        m.spans_dropped
            .set(i64::try_from(stats.dropped).unwrap_or(i64::MAX));
    }
    for u in &shared.compiled().upstreams {
        for (e, s) in u.endpoints.iter().zip(u.builder.balancer().status()) {
            let labels = vec![
                (String::from("upstream"), u.name.clone()),
                (String::from("endpoint"), e.to_string()),
            ];
            m.endpoint_available
                .get_or_create(&labels)
                .set(i64::from(s.available));
            m.endpoint_ejections
                .get_or_create(&labels)
                .set(i64::from(s.ejections));
            m.endpoint_in_flight
                .get_or_create(&labels)
                .set(i64::from(s.in_flight));
        }
        if let Some(b) = &u.breaker {
            let state = match b.handle().state().as_str() {
                "closed" | "forced_closed" => 0,
                "half_open" => 1,
                _ => 2,
            };
            m.breaker_open
                .get_or_create(&vec![(String::from("upstream"), u.name.clone())])
                .set(state);
            let counts = b.handle().metrics();
            for (to, n) in [
                ("open", counts.opened),
                ("half_open", counts.half_opened),
                ("closed", counts.closed),
            ] {
                m.breaker_transitions
                    .get_or_create(&vec![
                        (String::from("upstream"), u.name.clone()),
                        (String::from("to"), String::from(to)),
                    ])
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            gateway_observe::CONTENT_TYPE,
        )],
        shared.observer.metrics().encode(),
    )
        .into_response()
}

/// `GET /config`: the configuration being served (secrets redacted) and the reload counters.
async fn config(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(serde_json::json!({
        "reload": shared.reload.describe(),
        "config": crate::reload::redacted(&shared.compiled().source),
    }))
}

/// `POST /config/reload`: reload the configuration file; `400` with every problem (the running
/// configuration stays), `409` when the gateway was not started from a file.
async fn reload(State(shared): State<Arc<Shared>>) -> Response {
    let done = tokio::task::spawn_blocking(move || crate::reload::from_file(&shared)).await;
    match done {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(e)) if e.file == "<none>" => admin_problem(StatusCode::CONFLICT, &e.to_string()),
        Ok(Err(e)) => {
            let issues: Vec<serde_json::Value> = e
                .issues
                .iter()
                .map(|i| serde_json::json!({ "line": i.line, "column": i.column, "field": i.field, "message": i.message }))
                .collect();
            let res: axum::http::Response<String> = Problem::new(StatusCode::BAD_REQUEST)
                .title("Invalid configuration")
                .detail(format!("{}: the running configuration stays", e.file))
                .extension("file", e.file)
                .extension_json("errors", serde_json::Value::Array(issues).to_string())
                .into_response();
            res.into_response()
        }
        Err(_) => admin_problem(StatusCode::INTERNAL_SERVER_ERROR, "the reload task failed"),
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if shared.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "draining" })),
        )
    } else {
        (
            StatusCode::OK,
            Json(serde_json::json!({ "status": "ready" })),
        )
    }
}

async fn ratelimit(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(shared.compiled().limit_state.describe())
}

async fn routes(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(shared.compiled().route_table())
}

async fn upstreams(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let list: Vec<serde_json::Value> = shared
        .compiled()
        .upstreams
        .iter()
        .map(|u| {
            let breaker = u.breaker.as_ref().map(|layer| {
                let h = layer.handle();
                let m = h.metrics();
                serde_json::json!({
                    "state": h.state().as_str(),
                    "opened": m.opened,
                    "half_opened": m.half_opened,
                    "closed": m.closed,
                    "rejected": m.rejected,
                })
            });
            let bulkhead = u
                .bulkhead
                .as_ref()
                .map(|b| serde_json::json!({ "in_flight": b.in_flight() }));
            let endpoint_breakers = u.builder.endpoint_breaker_handles().map(|handles| {
                handles
                    .iter()
                    .zip(&u.endpoints)
                    .map(|(h, e)| {
                        serde_json::json!({ "endpoint": e.to_string(), "state": h.state().as_str() })
                    })
                    .collect::<Vec<_>>()
            });
            let balancer = u.builder.balancer();
            let ms = |d: Option<std::time::Duration>| {
                d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            };
            let endpoints: Vec<serde_json::Value> = u
                .endpoints
                .iter()
                .zip(balancer.status())
                .map(|(e, s)| {
                    serde_json::json!({
                        "endpoint": e.to_string(),
                        "weight": s.weight,
                        "available": s.available,
                        "healthy": s.healthy,
                        "ejected_for_ms": ms(s.ejected_for),
                        "ejections": s.ejections,
                        "backing_off_for_ms": ms(s.backing_off_for),
                        "in_flight": s.in_flight,
                        "latency_ms": s.latency.map(|d| d.as_secs_f64() * 1000.0),
                    })
                })
                .collect();
            let discovery = u.discovered.as_ref().map(|f| {
                let state = f.state();
                serde_json::json!({
                    "source": f.target,
                    "endpoints": state.endpoints.as_ref().map_or(0, |e| e.len()),
                    "errors": state.errors,
                    "last_error": state.last_error.as_deref(),
                })
            });
            serde_json::json!({
                "name": u.name,
                "discovery": discovery,
                "balance": format!("{:?}", balancer.algorithm()),
                "bulkhead": bulkhead,
                "endpoint_breakers": endpoint_breakers,
                "endpoints": endpoints,
                "breaker": breaker,
            })
        })
        .collect();
    Json(list)
}

#[derive(serde::Deserialize)]
struct ForceBreaker {
    /// `open`, `closed` or `reset`.
    state: String,
    /// With per-endpoint breakers: the endpoint (`host:port`); all endpoints when absent.
    #[serde(default)]
    endpoint: Option<String>,
}

fn admin_problem(status: StatusCode, detail: &str) -> Response {
    let res: axum::http::Response<String> = Problem::new(status).detail(detail).into_response();
    res.into_response()
}

/// `POST /upstreams/{name}/breaker` with `{"state": "open" | "closed" | "reset"}` and, for
/// per-endpoint breakers, an optional `"endpoint": "host:port"`.
async fn force_breaker(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Json(body): Json<ForceBreaker>,
) -> Response {
    let compiled = shared.compiled();
    let Some(upstream) = compiled.upstreams.iter().find(|u| u.name == name) else {
        return admin_problem(StatusCode::NOT_FOUND, "no upstream by that name");
    };
    let handles: Vec<gateway_breaker::CircuitBreakerHandle> = match (
        &upstream.breaker,
        upstream.builder.endpoint_breaker_handles(),
    ) {
        (Some(layer), _) => vec![layer.handle()],
        (None, Some(per_endpoint)) => per_endpoint
            .iter()
            .zip(&upstream.endpoints)
            .filter(|(_, e)| {
                body.endpoint
                    .as_deref()
                    .is_none_or(|want| e.to_string() == want)
            })
            .map(|(h, _)| h.clone())
            .collect(),
        (None, None) => Vec::new(),
    };
    if handles.is_empty() {
        return admin_problem(
            StatusCode::NOT_FOUND,
            "that upstream (or endpoint) has no circuit breaker",
        );
    }
    for handle in &handles {
        match body.state.as_str() {
            "open" => handle.force_open(),
            "closed" => handle.force_closed(),
            "reset" => handle.reset(),
            _ => {
                return admin_problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "state must be \"open\", \"closed\" or \"reset\"",
                );
            }
        }
    }
    tracing::warn!(upstream = %name, endpoint = ?body.endpoint, state = %body.state, "circuit breaker forced through the admin API");
    let states: Vec<&str> = handles.iter().map(|h| h.state().as_str()).collect();
    Json(serde_json::json!({ "name": name, "states": states })).into_response()
}
