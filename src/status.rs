//! The proxy's own read-only routes: `/proxy/status`, `/proxy/plan/*`, `/proxy/metrics`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{header, HeaderValue, Request};
use serde_json::{json, Value};

use crate::backend::forge::key;
use crate::backend::forge::Forge;
use crate::config::BackendId;
use crate::decide::body::GenerationBody;
use crate::decide::plan::{self, Inputs, INFERENCE_MEMORY};
use crate::error::ProxyError;
use crate::generation::MODEL_TYPE_HEADER;
use crate::metrics::CONTENT_TYPE;
use crate::proxy::request::{read_body, Head};
use crate::state::AppState;
use forge_schema::model::GenerationRoute;

/// Each backend: where its readings come from, what it has loaded, what is waiting; and
/// the last decisions.
pub async fn status(State(state): State<AppState>) -> Json<Value> {
    let scheduler = state.scheduler.snapshot();
    let backends: Vec<Value> = state
        .backends
        .iter()
        .zip(&scheduler.backends)
        .map(|(backend, lane)| {
            let view = backend.view();
            let option = |key: &str| view.options.as_ref().and_then(|o| o.get(key).cloned());
            json!({
                "url": backend.config.url,
                "gpu": backend.config.gpu.to_string(),
                "vram_source": backend.vram.kind(),
                "vram_source_why": match &backend.vram {
                    crate::backend::vram::VramSource::Backend { why } => Some(why.clone()),
                    crate::backend::vram::VramSource::Nvml { .. } => None,
                },
                "last_reading": view.last_reading,
                "reading_error": view.reading_error,
                "checkpoint": option("sd_model_checkpoint"),
                "profile": lane.loaded_profile,
                "inference_memory_mib": option(INFERENCE_MEMORY),
                "options_known": view.options.is_some(),
                "generation_running": lane.running.is_some(),
                "queue_length": lane.queue.len(),
                "healthy": lane.healthy,
                "health": lane.health,
                "credentials": view.credentials.as_str(),
                "loaded_profile": lane.loaded_profile,
                "running": lane.running,
                "queue": lane.queue,
                "serves": if backend.config.profiles.is_empty() {
                    Value::String("all".to_owned())
                } else {
                    backend.config.profiles.iter().map(|p| Value::String(state.config.profile(*p).name.clone())).collect()
                },
                "weight": backend.config.weight,
            })
        })
        .collect();
    Json(json!({
        "nvml": {"available": state.nvml_error.is_none(), "error": state.nvml_error},
        "backends": backends,
        "scheduler": {
            "estimates": scheduler.estimates,
            "reloads_avoided": scheduler.reloads_avoided,
            "retries": scheduler.retries,
            "max_bypassed": scheduler.max_bypassed,
        },
        "decisions": state.decisions.recent(),
    }))
}

/// What the proxy would do for this generation body, without changing anything on Forge
/// (it may read the backend's options and memory).
pub async fn plan(
    State(state): State<AppState>,
    Path(route): Path<String>,
    request: Request<Body>,
) -> Result<Json<Value>, ProxyError> {
    let (parts, body) = request.into_parts();
    let path = format!("/sdapi/v1/{route}");
    if !state.config.generation_routes.contains(&path) {
        return Err(ProxyError::UnknownProxyRoute {
            path: parts.uri.path().to_owned(),
        });
    }
    let model_type = parts
        .headers
        .get(MODEL_TYPE_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let head = Head::of(&parts);
    let bytes = read_body(&parts.headers, body, state.config.inspect_limit()).await?;
    let body = match GenerationBody::read(head.content_type(), &bytes) {
        Ok(body) => body,
        Err(unread) => {
            return Ok(Json(json!({
                "forwarded_untouched": true,
                "why": format!("the body is {}; Forge answers it as it would without the proxy", unread.as_str()),
            })))
        }
    };
    if let Some(refusal) = body.refusal(GenerationRoute::of_path(&path)) {
        return Ok(Json(json!({
            "forwarded_untouched": true,
            "why": format!("Forge will refuse it ({refusal}); nothing is changed for it"),
            "refusal": refusal,
        })));
    }
    // The first healthy backend (else the first): the plan is for one Forge.
    let id = state
        .backends
        .ids()
        .find(|id| state.scheduler.is_healthy(*id))
        .unwrap_or(BackendId(0));
    let backend = &state.backends[id];
    let forge = Forge::for_client(&state.forwarder, &backend.config, &parts.headers);
    let current = match backend.known_options() {
        Some(known) if !state.config.memory.verify_before_generation => known,
        _ => forge
            .options()
            .await
            .map_err(|source| ProxyError::preparing(&backend.config.url, source))?,
    };
    let reader = Forge::reading_for(&state.forwarder, &backend.config, &parts.headers);
    let overrides = body.override_settings();
    let names: Vec<&str> = [overrides.get(key::CHECKPOINT), current.get(key::CHECKPOINT)]
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let catalog = backend.catalog_knowing(&reader, &names).await;
    let reading = backend.vram.read(&reader).await.ok();
    let plan = plan::plan(
        &state.config,
        &Inputs {
            model_type: model_type.as_deref(),
            body: &body,
            current: &current,
            catalog: catalog.as_deref(),
            reading: reading.as_ref(),
        },
    )?;
    Ok(Json(json!({
        "backend": backend.config.url,
        "route": path,
        "vram_source": reading.as_ref().map_or("none", |r| r.source.as_str()),
        "reading": reading,
        "current": {
            "sd_model_checkpoint": current.get("sd_model_checkpoint"),
            "forge_inference_memory": current.get(INFERENCE_MEMORY),
        },
        "plan": plan,
    })))
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = state.metrics.render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}
