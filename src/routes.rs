//! The router: the proxy's own routes under `/proxy/`, generation routes, and pass-through
//! for everything else (any method, any path).

use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{middleware, Json, Router};
use http::{Method, Request, StatusCode};
use serde_json::json;

use crate::error::{respond, ProxyError};
use crate::forward::Route;
use crate::{client_options, generation, health, status};

/// Forge's options route: a client's POST there is inspected (memory keys, checkpoint).
pub const OPTIONS_PATH: &str = "/sdapi/v1/options";
use crate::observe::observe;
use crate::state::AppState;

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/proxy/health", get(health))
        .route("/proxy/ready", get(ready))
        .route("/proxy/status", get(status::status))
        .route("/proxy/metrics", get(status::metrics))
        .route("/proxy/plan/{route}", post(status::plan))
        .route("/proxy/{*rest}", any(unknown_proxy_route))
        .fallback(proxy_request)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Whether a request is a generation (inspected, no timeout by default) or plain traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Generation,
    PassThrough,
}

async fn proxy_request(State(state): State<AppState>, request: Request<Body>) -> Response {
    let client_ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let is_generation = request.method() == Method::POST
        && state
            .config
            .generation_routes
            .iter()
            .any(|route| route == request.uri().path());
    if is_generation {
        generation::handle(state, client_ip, request).await
    } else if request.method() == Method::POST && request.uri().path() == OPTIONS_PATH {
        client_options::handle(state, client_ip, request).await
    } else {
        forward_to_backend(&state, client_ip, request, RouteKind::PassThrough).await
    }
}

/// Forwards to a backend with the route's timeout; the proxy's own errors become responses.
/// Requests that are not generations go where `Scheduler::pass_through_backend` says.
pub async fn forward_to_backend(
    state: &AppState,
    client_ip: Option<IpAddr>,
    request: Request<Body>,
    kind: RouteKind,
) -> Response {
    let index = state
        .scheduler
        .pass_through_backend(request.uri().path(), client_ip);
    respond(
        forward_to(state, index, client_ip, request, kind).await,
        "answered with the proxy's own error",
    )
}

/// Forwards to backend `index`, telling health what it saw.
pub async fn forward_to(
    state: &AppState,
    index: usize,
    client_ip: Option<IpAddr>,
    request: Request<Body>,
    kind: RouteKind,
) -> Result<Response, ProxyError> {
    let backend = &state.backends[index].config;
    let route = Route {
        backend,
        timeout: state
            .config
            .timeout_for(request.uri().path(), kind == RouteKind::Generation),
        client_ip,
    };
    let result = state.forwarder.forward(route, request).await;
    match &result {
        Ok(response) => health::observe_status(state, index, response.status()),
        Err(ProxyError::BackendUnreachable { reason, .. }) => {
            health::observe_unreachable(state, index, reason)
        }
        Err(_) => {}
    }
    result
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
        .iter()
        .zip(&status.backends)
        .map(|(backend, lane)| {
            json!({"url": backend.config.url, "healthy": lane.healthy, "health": lane.health})
        })
        .collect();
    let (code, word) = if status.backends.iter().any(|l| l.healthy) {
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
