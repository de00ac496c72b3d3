//! `GET /sim/ws`: a websocket that echoes text and binary messages.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use tokio_util::sync::CancellationToken;

use crate::state::SimState;

pub async fn echo(upgrade: WebSocketUpgrade, State(state): State<SimState>) -> Response {
    let shutdown = state.shutdown_token().clone();
    upgrade.on_upgrade(move |socket| echo_until_closed(socket, shutdown))
}

/// Echoes until the client closes or the server stops (an upgraded
/// connection is no longer the HTTP server's, so it watches shutdown itself).
async fn echo_until_closed(mut socket: WebSocket, shutdown: CancellationToken) {
    loop {
        let message = tokio::select! {
            message = socket.recv() => message,
            () = shutdown.cancelled() => break,
        };
        match message {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                if socket.send(message).await.is_err() {
                    break;
                }
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(_)) | Err(_)) | None => break,
        }
    }
}
