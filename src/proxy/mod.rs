//! The door: every request is classified once ([`route`]), observed (id, metrics, access
//! log), then answered by the proxy's own routes under `/proxy/` (an axum router) or
//! proxied: generations, a client's options call, and pass-through for everything else
//! (any method, any path). `X-Forge-Model-Type` never reaches Forge, on any route.

pub mod observe;
pub mod pass_through;
pub mod request;
pub mod route;

use std::net::IpAddr;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{Request, StatusCode};
use serde_json::json;
use tower::ServiceExt;

use crate::error::ProxyError;
use crate::generation::MODEL_TYPE_HEADER;
use crate::proxy::observe::observe;
use crate::proxy::route::Route;
use crate::scheduler::Follow;
use crate::state::AppState;
use crate::{client_options, generation, status};

pub use route::OWN_PREFIX;

/// The whole proxy as one service: `handle` answers any request.
#[derive(Clone)]
pub struct Proxy {
    state: AppState,
    own_routes: Router,
}

/// The proxy over `state`: [`run`](crate::run) serves it on a socket; a test can call
/// [`Proxy::handle`] directly.
pub fn app(state: AppState) -> Proxy {
    Proxy {
        own_routes: own_routes(state.clone()),
        state,
    }
}

/// The proxy's own routes: health, readiness, status, metrics and the dry-run plan.
fn own_routes(state: AppState) -> Router {
    Router::new()
        .route("/proxy/health", get(health))
        .route("/proxy/ready", get(ready))
        .route("/proxy/status", get(status::status))
        .route("/proxy/metrics", get(status::metrics))
        .route("/proxy/plan/{route}", post(status::plan))
        .fallback(unknown_proxy_route)
        .with_state(state)
}

impl Proxy {
    /// Answers one request from `client` (its address, when known: progress calls follow
    /// the client's running generation).
    ///
    /// Proxied requests are dispatched here rather than through axum's router and
    /// middleware: on a small pass-through request those layers (boxed futures, cloned
    /// services, request extensions) cost about a tenth of the proxy's CPU time (measured
    /// with `bench/run --only small`).
    pub async fn handle(&self, client: Option<IpAddr>, request: Request<Body>) -> Response {
        let routes = &self.state.config.generation_routes;
        let route = Route::classify(request.method(), request.uri().path(), routes);
        observe(&self.state, route.label(routes), request, |request| {
            self.dispatch(route, client, request)
        })
        .await
    }

    async fn dispatch(
        &self,
        route: Route,
        client: Option<IpAddr>,
        mut request: Request<Body>,
    ) -> Response {
        let state = &self.state;
        if route == Route::Own {
            return match self.own_routes.clone().oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
        }
        let model_type = request.headers_mut().remove(MODEL_TYPE_HEADER);
        match route {
            Route::Generation(generation) => {
                generation::handle(state.clone(), client, generation, model_type, request).await
            }
            Route::Options => client_options::handle(state.clone(), client, request).await,
            Route::RefreshCheckpoints => {
                pass_through::refresh_checkpoints(state, client, request).await
            }
            Route::FollowsGeneration => {
                pass_through::forward(state, client, request, Follow::ClientsGeneration).await
            }
            Route::Own | Route::PassThrough => {
                pass_through::forward(state, client, request, Follow::Any).await
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use http_body_util::BodyExt;

    async fn proxy() -> Proxy {
        app(AppState::build(Config::default()).await.unwrap())
    }

    #[tokio::test]
    async fn an_unknown_proxy_route_is_the_proxys_404_and_never_reaches_a_backend() {
        // The default backend (127.0.0.1:7860) is not running: a forwarded request would be
        // a 502, not this 404.
        let request = Request::get("/proxy/nope").body(Body::empty()).unwrap();
        let response = proxy().await.handle(None, request).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert!(response.headers().contains_key("x-request-id"));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "NotFound");
    }

    #[tokio::test]
    async fn a_request_id_sent_by_the_client_is_kept_and_every_request_is_counted() {
        let proxy = proxy().await;
        let request = Request::get("/proxy/health")
            .header("x-request-id", "client-7")
            .body(Body::empty())
            .unwrap();
        let response = proxy.handle(None, request).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-request-id"], "client-7");
        let request = Request::get("/proxy/metrics").body(Body::empty()).unwrap();
        let metrics = proxy.handle(None, request).await.into_body();
        let metrics = metrics.collect().await.unwrap().to_bytes();
        let metrics = String::from_utf8_lossy(&metrics);
        assert!(
            metrics.contains(r#"forge_proxy_requests_total{route="proxy",status="200"} 1"#),
            "{metrics}"
        );
    }
}
