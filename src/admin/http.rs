//! The HTTP API: `/metrics` (Prometheus text) and JSON views of what the console shows.

use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use super::tables;
use crate::app::App;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/api/shards",
            get(|State(app): State<Arc<App>>| async move { Json(tables::shards(&app).to_json()) }),
        )
        .route(
            "/api/pools",
            get(|State(app): State<Arc<App>>| async move { Json(tables::pools(&app).to_json()) }),
        )
        .route(
            "/api/clients",
            get(|State(app): State<Arc<App>>| async move { Json(tables::clients(&app).to_json()) }),
        )
        .route(
            "/api/stats",
            get(|State(app): State<Arc<App>>| async move { Json(tables::stats(&app).to_json()) }),
        )
        .route(
            "/api/version",
            get(|| async { Json(tables::version().to_json()) }),
        )
        .merge(super::http_maps::routes())
        .merge(super::http_moves::routes())
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::limits::MAP_BYTES_MAX,
        ))
        .with_state(app)
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        app.stats.render(),
    )
}

pub async fn serve(app: Arc<App>, listener: TcpListener) {
    let shutdown = app.shutdown.clone();
    let result = axum::serve(listener, router(app))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin HTTP server failed");
    }
}
