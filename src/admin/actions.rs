//! What an admin may do to a backend from the dashboard or a script, each a route under
//! `/proxy/backends/{n}/` and a record in the decisions:
//!
//! - `drain` — out of rotation: no new work, its queued generations move to the others, the
//!   running one finishes;
//! - `resume` — back in rotation;
//! - `unload` — Forge frees the model's memory (`unload-checkpoint`), in the backend's turn,
//!   never under a running generation;
//! - `interrupt` — Forge stops the generation it runs.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http::{HeaderMap, StatusCode};
use serde_json::json;

use crate::access::Caller;
use crate::admin::decisions::{Action, Asked};
use crate::backend::forge::Forge;
use crate::config::BackendId;
use crate::proxy::observe::request_id;
use crate::state::AppState;

/// `POST /proxy/backends/{n}/{action}`.
pub async fn act(
    State(state): State<AppState>,
    Extension(client): Extension<Caller>,
    Path((n, action)): Path<(usize, String)>,
    headers: HeaderMap,
) -> Response {
    let id = BackendId(n);
    let Some(backend) = state.backends.all().get(n).cloned() else {
        return refused(StatusCode::NOT_FOUND, format!("no backend {n}"));
    };
    let result = match action.as_str() {
        "drain" => state.scheduler.set_drained(id, true),
        "resume" => state.scheduler.set_drained(id, false),
        "unload" => unload(&state, id, &client).await,
        "interrupt" => Forge::reading_for(&state.forwarder, &backend.config, &client)
            .interrupt()
            .await
            .map_err(|e| e.to_string()),
        _ => {
            return refused(
                StatusCode::NOT_FOUND,
                format!("no action {action:?}: drain, resume, unload or interrupt"),
            )
        }
    };
    let asked = Asked {
        route: &action,
        request_id: request_id(&headers),
        key: client.key_name(),
    };
    let record = Action::new(asked, &backend.config.url, result.clone());
    state.decisions.record_action(record.clone());
    match result {
        Ok(()) => Json(json!({"backend": n, "action": action, "outcome": "done"})).into_response(),
        Err(error) => refused(StatusCode::BAD_GATEWAY, error),
    }
}

/// `unload-checkpoint` in the backend's turn (after what runs, before what waits); its
/// options are read again before the next use.
async fn unload(state: &AppState, id: BackendId, client: &Caller) -> Result<(), String> {
    let ticket = state.scheduler.enqueue_on(id, None, client);
    let (grant, _) = ticket.granted().await.map_err(|e| e.to_string())?;
    let backend = state.backends.get(id);
    let forge = Forge::reading_for(&state.forwarder, &backend.config, client);
    let result = forge.unload_checkpoint().await.map_err(|e| e.to_string());
    backend.forget_options();
    grant.unloaded();
    result
}

fn refused(status: StatusCode, message: String) -> Response {
    let message = format!("forge-vram-proxy: {message}");
    (
        status,
        [("x-forge-proxy-error", "true")],
        Json(json!({
            "error": if status == StatusCode::NOT_FOUND { "NotFound" } else { "ActionFailed" },
            "detail": message, "body": "", "message": message, "errors": message,
        })),
    )
        .into_response()
}
