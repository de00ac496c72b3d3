//! Generation requests (`txt2img`, `img2img` and any other configured route).
//!
//! For now they are forwarded like any other request, with the generation timeout (none
//! by default: a batch of Flux images can take many minutes). This is where the request
//! will be inspected and the backend's memory settings applied before forwarding.

use std::net::IpAddr;

use axum::body::Body;
use axum::response::Response;
use http::Request;

use crate::routes::{forward_to_backend, RouteKind};
use crate::state::AppState;

pub async fn handle(
    state: AppState,
    client_ip: Option<IpAddr>,
    request: Request<Body>,
) -> Response {
    forward_to_backend(&state, client_ip, request, RouteKind::Generation).await
}
