//! The simulator's own endpoints under `/sim/`, for testing what sits in
//! front of it (a proxy): the journal, streams in both directions, a
//! websocket echo, a request echo and a fixed delay. Never behind auth.

mod echo;
mod streams;
mod ws;

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{any, get};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::state::SimState;

pub fn router() -> Router<SimState> {
    Router::new()
        .route("/sim/journal", get(journal).delete(clear_journal))
        .route("/sim/requests", get(requests))
        .route("/sim/sse", get(streams::sse))
        .route("/sim/bytes", get(streams::bytes))
        .route("/sim/sink", axum::routing::post(streams::sink))
        .route("/sim/ws", get(ws::echo))
        .route("/sim/echo", any(echo::echo))
        .route("/sim/echo/{*rest}", any(echo::echo))
        .route("/sim/delay", any(delay))
        .route("/sim/checkpoints", axum::routing::post(add_checkpoint))
}

/// `POST /sim/checkpoints` with `FILE[:FAMILY[:WEIGHTS_MIB]]` as the body: a checkpoint file
/// put in the models folder. Forge lists it after `POST /sdapi/v1/refresh-checkpoints`.
async fn add_checkpoint(
    State(state): State<SimState>,
    body: String,
) -> Result<Json<Value>, ApiError> {
    let spec: crate::config::CheckpointSpec = body
        .parse()
        .map_err(|e: String| ApiError::http(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let added = spec.to_string();
    state.add_checkpoint_file(spec);
    Ok(Json(json!({ "added": added })))
}

/// `GET /sim/journal`: every options change and generation so far.
async fn journal(State(state): State<SimState>) -> Json<Value> {
    Json(Value::Array(state.journal()))
}

/// `GET /sim/requests`: the last requests received, with their headers.
async fn requests(State(state): State<SimState>) -> Json<Value> {
    Json(Value::Array(state.requests()))
}

/// `DELETE /sim/journal`: forgets the entries (`seq` keeps counting).
async fn clear_journal(State(state): State<SimState>) -> Json<Value> {
    let mut journal = state.journal_mut();
    let cleared = journal.entries().len();
    journal.clear();
    Json(json!({ "cleared": cleared }))
}

/// `/sim/delay?ms=N`: answers `{"ok": true}` after N real milliseconds (not
/// scaled by `--time-scale`).
async fn delay(Query(query): Query<HashMap<String, String>>) -> Result<Json<Value>, ApiError> {
    let ms: u64 = param(&query, "ms", 0)?;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(Json(json!({ "ok": true })))
}

/// A numeric query parameter, or its default; 422 when malformed.
fn param<T: FromStr>(
    query: &HashMap<String, String>,
    name: &str,
    default: T,
) -> Result<T, ApiError> {
    match query.get(name) {
        None => Ok(default),
        Some(text) => text.parse().map_err(|_| {
            ApiError::http(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("query parameter {name}: expected a number, got {text:?}"),
            )
        }),
    }
}
