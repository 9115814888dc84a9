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
        .fallback(|| async {
            let res: axum::http::Response<String> = Problem::new(StatusCode::NOT_FOUND)
                .detail("unknown admin endpoint")
                .into_response();
            res.into_response()
        })
        .with_state(shared)
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
    Json(shared.compiled.limit_state.describe())
}

async fn routes(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(shared.compiled.router.views())
}

async fn upstreams(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let list: Vec<serde_json::Value> = shared
        .compiled
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
            serde_json::json!({
                "name": u.name,
                "bulkhead": bulkhead,
                "endpoint_breakers": endpoint_breakers,
                "endpoints": u.endpoints.iter().map(ToString::to_string).collect::<Vec<_>>(),
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
    let Some(upstream) = shared.compiled.upstreams.iter().find(|u| u.name == name) else {
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
