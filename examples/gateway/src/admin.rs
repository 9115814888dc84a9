//! The admin listener: `/healthz`, `/readyz`, `/routes`. It runs on its own thread and socket,
//! never on a public listener, so no path or header trick on the public side can reach it.

use std::sync::Arc;

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
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
        .fallback(|| async {
            let res: axum::http::Response<String> = Problem::new(StatusCode::NOT_FOUND)
                .detail("unknown admin endpoint")
                .into_response();
            res.into_response()
        })
        .with_state(shared)
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if shared.is_ready() {
        (
            StatusCode::OK,
            Json(serde_json::json!({ "status": "ready" })),
        )
    } else {
        let status = if shared.draining.load(std::sync::atomic::Ordering::Acquire) {
            "draining"
        } else {
            "starting"
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": status })),
        )
    }
}

async fn routes(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(shared.compiled.router.views())
}
