//! The proxy's own routes, under `/proxy/`: never forwarded.
//!
//! - `/proxy/health`, `/proxy/ready` — liveness and readiness (here).
//! - [`status`] — `/proxy/status`.
//! - [`plan`] — `/proxy/plan/{route}`, the dry run.
//! - [`metrics`] — the Prometheus registry and `/proxy/metrics`.
//! - [`decisions`] — the last decisions and admin actions, shown by the status and logged.
//! - [`actions`] — `/proxy/backends/{n}/{drain,resume,unload,interrupt}`.
//! - [`history`] — the last hour in memory, for `/proxy/history`.
//! - [`live`] — `/proxy/events` (server-sent events), Forge's progress while watched,
//!   `/proxy/history` (the last hour).
//! - [`ui`] — `/proxy/ui`, the dashboard page.

pub mod actions;
pub mod decisions;
pub mod history;
pub mod live;
pub mod metrics;
pub mod plan;
pub mod status;
pub mod ui;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{header, HeaderValue, Request, StatusCode};
use serde_json::json;

use crate::error::ProxyError;
use crate::state::AppState;

/// The proxy's own routes: health, readiness, status, metrics and the dry-run plan.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/proxy/health", get(health))
        .route("/proxy/ready", get(ready))
        .route("/proxy/status", get(status::status))
        .route("/proxy/metrics", get(metrics_text))
        .route("/proxy/plan/{route}", post(plan::plan))
        .route("/proxy/backends/{n}/{action}", post(actions::act))
        .route("/proxy/events", get(live::events))
        .route("/proxy/ui", get(ui::page))
        .route("/proxy/history", get(live::history))
        .fallback(unknown_proxy_route)
        .with_state(state)
}

/// Liveness: the process answers.
async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: at least one backend is healthy.
async fn ready(State(state): State<AppState>) -> Response {
    let status = state.scheduler.snapshot();
    let backends: Vec<serde_json::Value> = state
        .backends
        .all()
        .iter()
        .zip(&status.backends)
        .filter(|(_, lane)| !lane.retired)
        .map(|(backend, lane)| {
            json!({"url": backend.config.url, "healthy": lane.healthy, "health": lane.health, "drained": lane.drained})
        })
        .collect();
    let (code, word) = if status
        .backends
        .iter()
        .any(|l| l.healthy && !l.retired && !l.drained)
    {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    (code, Json(json!({"status": word, "backends": backends}))).into_response()
}

async fn unknown_proxy_route(request: Request<Body>) -> ProxyError {
    ProxyError::UnknownProxyRoute {
        path: request.uri().path().to_owned(),
    }
}

/// `GET /proxy/metrics`: Prometheus text format 0.0.4.
async fn metrics_text(State(state): State<AppState>) -> Response {
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    response
}
