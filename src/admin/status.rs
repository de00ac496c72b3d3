//! `GET /proxy/status`: each backend (its reading and why, checkpoint, loaded profile,
//! applied memory, running work, queue, health, credentials), the scheduler's estimates, and
//! the last decisions.

use axum::extract::State;
use axum::{Extension, Json};
use serde_json::{json, Value};

use crate::access::Caller;
use crate::backend::forge::key;
use crate::decide::plan::INFERENCE_MEMORY;
use crate::scheduler::{RunningStatus, WaitingStatus};
use crate::state::AppState;

/// Each backend: where its readings come from, what it has loaded, what is waiting; and
/// the last decisions.
pub async fn status(
    State(state): State<AppState>,
    Extension(client): Extension<Caller>,
) -> Json<Value> {
    Json(snapshot(&state, &client))
}

/// What `/proxy/status` shows `client` now (`/proxy/events` sends the same).
pub fn snapshot(state: &AppState, client: &Caller) -> Value {
    let scheduler = state.scheduler.snapshot();
    let config = state.config();
    let backends: Vec<Value> = state
        .backends
        .all()
        .iter()
        .zip(&scheduler.backends)
        // A backend a reload removed shows until it has finished its work.
        .filter(|(_, lane)| !lane.retired || lane.running.is_some() || !lane.queue.is_empty())
        .map(|(backend, lane)| {
            let view = backend.view();
            let option = |key: &str| view.options.as_ref().and_then(|o| o.get(key).cloned());
            json!({
                // The backend's id: `/proxy/backends/{id}/...` acts on it.
                "id": backend.id.0,
                "url": backend.config.url,
                "gpu": backend.config.gpu.to_string(),
                "vram_source": backend.vram.kind(),
                "vram_source_why": match &backend.vram {
                    crate::backend::vram::VramSource::Backend { why } => Some(why.clone()),
                    crate::backend::vram::VramSource::Nvml { .. } => None,
                },
                "last_reading": view.last_reading,
                "reading_error": view.reading_error,
                "checkpoint": option(key::CHECKPOINT),
                "profile": lane.loaded_profile,
                "inference_memory_mib": option(INFERENCE_MEMORY),
                "options_known": view.options.is_some(),
                "generation_running": lane.running.is_some(),
                "queue_length": lane.queue.len(),
                "healthy": lane.healthy,
                "health": lane.health,
                "retired": lane.retired,
                "drained": lane.drained,
                "forge_progress": view.progress,
                "credentials": view.credentials.as_str(),
                "loaded_profile": lane.loaded_profile,
                "running": lane.running.as_ref().map(|running| running_as_seen_by(running, client)),
                "queue": lane.queue.iter().map(|waiting| waiting_as_seen_by(waiting, client)).collect::<Vec<_>>(),
                "serves": if backend.config.profiles.is_empty() {
                    Value::String("all".to_owned())
                } else {
                    backend.config.profiles.iter().map(|p| Value::String(config.profile(*p).name.clone())).collect()
                },
                "weight": backend.config.weight,
            })
        })
        .collect();
    let loaded = state.loaded.load();
    json!({
        // Who asks: the page shows admin actions to those who may take them.
        "you": {
            "keys_configured": !config.access.keys.is_empty(),
            "key": client.key_name(),
            "role": client.key.as_ref().map(|k| k.role),
            "admin": client.is_admin(),
        },
        "config": {
            "loaded_at": humantime::format_rfc3339_seconds(loaded.at).to_string(),
            "file": loaded.file,
        },
        "nvml": {"available": state.nvml_error.is_none(), "error": state.nvml_error},
        "backends": backends,
        "scheduler": {
            "estimates": scheduler.estimates,
            "reloads_avoided": scheduler.reloads_avoided,
            "retries": scheduler.retries,
            "max_bypassed": scheduler.max_bypassed,
        },
        "decisions": state.decisions.recent(client),
    })
}

/// A waiting work, its key's name shown to an admin or to that key only.
fn waiting_as_seen_by(waiting: &WaitingStatus, client: &Caller) -> WaitingStatus {
    WaitingStatus {
        key: waiting.key.clone().filter(|key| client.sees(Some(key))),
        ..waiting.clone()
    }
}

/// The running work, its key's name shown to an admin or to that key only (as decisions are).
fn running_as_seen_by(running: &RunningStatus, client: &Caller) -> RunningStatus {
    let key = running.key.clone().filter(|key| client.sees(Some(key)));
    RunningStatus {
        key,
        ..running.clone()
    }
}
