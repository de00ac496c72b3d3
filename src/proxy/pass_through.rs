//! Requests the proxy does not manage: forwarded to a backend as they are, streaming, with
//! the route's timeout; and the one forwarding step every request shares, which tells
//! health what it saw.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::Request;

use crate::access::Caller;
use crate::backend::health::check as health;
use crate::config::BackendId;
use crate::error::{respond, ProxyError};
use crate::forward::{ForwardError, Route as Forwarding};
use crate::proxy::route;
use crate::scheduler::Follow;
use crate::state::AppState;

/// Forwards to the backend `follow` points at, with the path's timeout; the proxy's own
/// errors become responses.
pub async fn forward(
    state: &AppState,
    client: &Caller,
    request: Request<Body>,
    follow: Follow,
) -> Response {
    let index = state.scheduler.pass_through_backend(follow, client);
    let timeout = state
        .config()
        .pass_through_timeout(&route::decode(request.uri().path()));
    respond(
        forward_to(state, index, client, request, timeout).await,
        "answered with the proxy's own error",
    )
}

/// `progress`: while the client's generation waits in the proxy's queue, the proxy answers
/// in Forge's shape (`progress` 0, `eta_relative` the expected wait, `state.job` saying how
/// much is ahead) rather than let it see another client's job; otherwise to the backend
/// running its generation.
pub async fn progress(state: &AppState, client: &Caller, request: Request<Body>) -> Response {
    let Some((ahead, wait)) = state.scheduler.queued_for(client) else {
        return forward(state, client, request, Follow::ClientsGeneration).await;
    };
    let answer = serde_json::json!({
        "progress": 0.0,
        "eta_relative": wait.as_secs_f64(),
        "state": {
            "skipped": false,
            "interrupted": false,
            "stopping_generation": false,
            "job": format!("queued: {ahead} ahead"),
            "job_count": 0,
            "job_timestamp": "0",
            "job_no": 0,
            "sampling_step": 0,
            "sampling_steps": 0,
        },
        "current_image": null,
        "textinfo": format!("Waiting in forge-vram-proxy's queue: {ahead} ahead"),
    });
    let mut response = Response::new(Body::from(answer.to_string()));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        "x-forge-proxy-queued",
        http::HeaderValue::from_static("true"),
    );
    response
}

/// `interrupt` / `skip`: to the backend running the client's generation. A key that is not
/// an admin's acts on its own generations only: when none runs, the proxy answers as Forge
/// answers when nothing runs, and another key's generation is left alone.
pub async fn stop(
    state: &AppState,
    client: &Caller,
    request: Request<Body>,
    stop: route::Stop,
) -> Response {
    if client.is_admin() {
        return forward(state, client, request, Follow::ClientsGeneration).await;
    }
    let Some(backend) = state.scheduler.running_for_key(client) else {
        tracing::info!(
            key = client.key_name().unwrap_or("-"),
            ?stop,
            "none of the key's generations runs: nothing to stop"
        );
        let mut response = Response::new(Body::from(stop.idle_answer()));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        return response;
    };
    let timeout = state.config().pass_through_timeout(request.uri().path());
    respond(
        forward_to(state, backend, client, request, timeout).await,
        "answered with the proxy's own error",
    )
}

/// `POST /sdapi/v1/refresh-checkpoints`: forwarded, and once Forge has re-read its models
/// folder, the backend's catalog is read again before its next use.
pub async fn refresh_checkpoints(
    state: &AppState,
    client: &Caller,
    request: Request<Body>,
) -> Response {
    let index = state.scheduler.pass_through_backend(Follow::Any, client);
    let timeout = state.config().pass_through_timeout(request.uri().path());
    let result = forward_to(state, index, client, request, timeout).await;
    if result.as_ref().is_ok_and(|r| r.status().is_success()) {
        state.backends.get(index).catalog_changed();
    }
    respond(result, "answered with the proxy's own error")
}

/// A generation the proxy leaves to Forge (one Forge refuses), with the generation timeout.
pub async fn forward_untouched_generation(
    state: &AppState,
    client: &Caller,
    request: Request<Body>,
) -> Response {
    let index = state.scheduler.pass_through_backend(Follow::Any, client);
    let timeout = state.config().timeouts.generation;
    respond(
        forward_to(state, index, client, request, timeout).await,
        "answered with the proxy's own error",
    )
}

/// Forwards to `backend`, waiting `timeout` at most for its response headers, and
/// tells health what it saw.
pub async fn forward_to(
    state: &AppState,
    backend: BackendId,
    client: &Caller,
    mut request: Request<Body>,
    timeout: Option<Duration>,
) -> Result<Response, ProxyError> {
    let held = state.backends.get(backend);
    let config = &held.config;
    if client.key.is_some() {
        // The client's key stopped at the door; Forge gets the backend's own credentials.
        if let Some(authorization) = &config.authorization {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, authorization.clone());
        }
    }
    let forwarding = Forwarding {
        backend: config,
        timeout,
        client_ip: client.peer,
    };
    let result = state
        .forwarder
        .forward(forwarding, request)
        .await
        .map_err(ProxyError::from);
    match &result {
        Ok(response) => health::observe_status(state, backend, response.status()),
        Err(ProxyError::Forward(ForwardError::Unreachable { reason, .. })) => {
            health::observe_unreachable(state, backend, reason)
        }
        Err(_) => {}
    }
    result
}
