//! The whole HTTP surface as a `Router`: Forge's API, the simulator's own
//! `/sim/` endpoints, and the traits of a uvicorn/FastAPI server every
//! answer carries (`server: uvicorn`, FastAPI's 404 / 405 / trailing-slash
//! redirect). Every request is logged.

use std::time::Instant;

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::json;

use crate::api;
use crate::error::ApiError;
use crate::state::SimState;
use crate::testbed;

/// The simulator's router, ready to serve (tests can also `oneshot` it).
pub fn app(state: SimState) -> Router {
    Router::new()
        .merge(api::router(state.clone()))
        .merge(testbed::router())
        .fallback(not_found)
        .layer(middleware::map_response(fastapi_method_not_allowed))
        .layer(middleware::map_response(uvicorn_headers))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// FastAPI's answer for an unknown path, after its trailing-slash redirect:
/// `/sdapi/v1/options/` is a 307 to `/sdapi/v1/options`.
async fn not_found(uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path();
    let other = match path.strip_suffix('/') {
        Some(stripped) => stripped.to_owned(),
        None => format!("{path}/"),
    };
    if path != "/" && api::PATHS.contains(&other.as_str()) {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        let location = format!("http://{host}{other}{query}");
        if let Ok(location) = HeaderValue::from_str(&location) {
            let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
            response.headers_mut().insert(header::LOCATION, location);
            return response;
        }
    }
    ApiError::NotFound.into_response()
}

/// A known path with another method: FastAPI's JSON 405, `allow` listing
/// the route's methods (FastAPI routes do not add HEAD).
async fn fastapi_method_not_allowed(response: Response) -> Response {
    if response.status() != StatusCode::METHOD_NOT_ALLOWED {
        return response;
    }
    let allow = response
        .headers()
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .map(|methods| {
            methods
                .split(',')
                .map(str::trim)
                .filter(|m| *m != "HEAD")
                .collect::<Vec<_>>()
                .join(", ")
        });
    let mut answer = (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({ "detail": "Method Not Allowed" })),
    )
        .into_response();
    if let Some(allow) = allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
        answer.headers_mut().insert(header::ALLOW, allow);
    }
    answer
}

/// uvicorn's `server` header (hyper adds `date` and `content-length`).
async fn uvicorn_headers(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::SERVER, HeaderValue::from_static("uvicorn"));
    response
}

/// One log line per request, like uvicorn's access log, with the time taken.
async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let line = format!(
        "\"{} {} {:?}\"",
        request.method(),
        request.uri().path_and_query().map_or("/", |p| p.as_str()),
        request.version()
    );
    let response = next.run(request).await;
    tracing::info!(
        "{line} {} ({:.1} ms)",
        response.status(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    response
}
