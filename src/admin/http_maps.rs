//! The HTTP API of shard maps: show, history, diff, apply, rollback, reload, and the
//! vshard table. Bodies are TOML documents; answers are JSON, errors
//! `{"error": "..."}` with status 400.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::app::App;
use crate::maps::{diff, ApplyError, How};
use crate::router::ShardMap;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/map", get(show))
        .route("/api/map/history", get(history))
        .route("/api/map/diff", post(diff_map))
        .route("/api/map/apply", post(apply))
        .route("/api/map/rollback", post(rollback))
        .route("/api/map/reload", post(reload))
        .route("/api/vshards", get(vshards))
}

/// `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

async fn show(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let topology = app.topology.load();
    let map = &topology.map;
    let backends: Vec<_> = map
        .backends
        .iter()
        .zip(map.vshard_counts())
        .map(
            |(b, n)| json!({ "name": b.name, "vshards": n, "primary": format!("{:?}", b.primary) }),
        )
        .collect();
    Json(json!({
        "version": map.version,
        "vshards": map.vshards(),
        "default_backend": map.backends[map.default_backend].name,
        "backends": backends,
        "moving": app.gate.moving(),
        "text": &*map.text.0,
    }))
}

async fn history(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(json!(app.history.list()))
}

async fn diff_map(State(app): State<Arc<App>>, body: String) -> Response {
    match ShardMap::parse(&body) {
        Ok(new) => {
            let running = app.topology.load();
            Json(json!({ "changes": diff::lines(&running.map, &new) })).into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn apply(
    State(app): State<Arc<App>>,
    Query(query): Query<HashMap<String, String>>,
    body: String,
) -> Response {
    let force = query.get("force").is_some_and(|v| v == "true" || v == "1");
    swapped(app.apply_map(&body, force, How::Apply).await)
}

async fn rollback(State(app): State<Arc<App>>) -> Response {
    swapped(app.rollback_map().await)
}

async fn reload(State(app): State<Arc<App>>) -> Response {
    match app.reload_map().await {
        Ok(Some(done)) => Json(json!(done)).into_response(),
        Ok(None) => {
            let version = app.topology.load().map.version;
            Json(json!({ "version": version, "changes": [] })).into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

fn swapped(result: Result<crate::maps::Swapped, ApplyError>) -> Response {
    match result {
        Ok(done) => Json(json!(done)).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn vshards(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(crate::admin::tables::vshards(&app).to_json())
}
