//! The HTTP API of vshard moves: one move (answered when it is done), and the
//! rebalance job (started in the background; its progress; a stop between moves).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::http_maps::error;
use crate::app::App;
use crate::moves::rebalance::{self, By};
use crate::moves::{move_vshard, MoveError};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/move", post(move_one))
        .route("/api/rebalance", get(progress).post(start))
        .route("/api/rebalance/stop", post(stop))
}

#[derive(serde::Deserialize)]
struct MoveRequest {
    vshard: u32,
    to: String,
}

async fn move_one(State(app): State<Arc<App>>, Json(request): Json<MoveRequest>) -> Response {
    // In a task of its own: a client that hangs up does not cut the move short.
    let moving = tokio::spawn(async move { move_vshard(&app, request.vshard, &request.to).await });
    let result = match moving.await {
        Ok(result) => result,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    match result {
        Ok(report) => Json(json!(report)).into_response(),
        Err(e @ MoveError::Invalid(_)) => error(StatusCode::BAD_REQUEST, e),
        Err(e @ MoveError::Busy(_)) => error(StatusCode::CONFLICT, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(serde::Deserialize)]
struct RebalanceRequest {
    #[serde(default = "count")]
    by: By,
    #[serde(default = "unlimited")]
    max_moves: usize,
    #[serde(default)]
    dry_run: bool,
}

fn count() -> By {
    By::Count
}

fn unlimited() -> usize {
    usize::MAX
}

async fn start(State(app): State<Arc<App>>, Json(request): Json<RebalanceRequest>) -> Response {
    match rebalance::start(&app, request.by, request.max_moves, request.dry_run) {
        Ok(plan) => Json(json!(plan)).into_response(),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}

async fn progress(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(json!(app.rebalancer.progress()))
}

async fn stop(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    app.rebalancer.stop();
    Json(json!(app.rebalancer.progress()))
}
