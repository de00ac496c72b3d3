//! `POST /proxy/plan/txt2img` (or another generation route): the decision the proxy would
//! take for a body, without changing anything on Forge (it reads Forge's options, catalog
//! and memory).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use forge_schema::model::GenerationRoute;
use http::Request;
use serde_json::{json, Value};

use crate::access::Caller;
use crate::backend::forge::{key, Forge};
use crate::config::BackendId;
use crate::decide::body::GenerationBody;
use crate::decide::plan::{self, Inputs, INFERENCE_MEMORY};
use crate::error::ProxyError;
use crate::generation::prepare::{checkpoint_names, current_options, read_vram};
use crate::generation::MODEL_TYPE_HEADER;
use crate::proxy::request::{read_body, Head};
use crate::state::AppState;

/// What the proxy would do for this generation body, without changing anything on Forge
/// (it may read the backend's options and memory).
pub async fn plan(
    State(state): State<AppState>,
    Path(route): Path<String>,
    Extension(client): Extension<Caller>,
    request: Request<Body>,
) -> Result<Json<Value>, ProxyError> {
    let (parts, body) = request.into_parts();
    let path = format!("/sdapi/v1/{route}");
    if !state.config().generation_routes.contains(&path) {
        return Err(ProxyError::UnknownProxyRoute {
            path: parts.uri.path().to_owned(),
        });
    }
    let model_type = parts
        .headers
        .get(MODEL_TYPE_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let head = Head::of(&parts);
    let held = read_body(&state, &parts.headers, body).await?;
    let bytes = &held.bytes;
    let body = match GenerationBody::read(head.content_type(), bytes) {
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
    let backend = &*state.backends.get(id);
    let forge = Forge::for_client(&state.forwarder, &backend.config, &client);
    let current = current_options(&state, backend, &forge).await?;
    let reader = Forge::reading_for(&state.forwarder, &backend.config, &client);
    let overrides = body.override_settings();
    let catalog = backend
        .catalog_knowing(&reader, &checkpoint_names(&overrides, &current))
        .await;
    let reading = read_vram(&state, backend, &reader).await;
    let plan = plan::plan(
        &state.config(),
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
            "sd_model_checkpoint": current.get(key::CHECKPOINT),
            "forge_inference_memory": current.get(INFERENCE_MEMORY),
        },
        "plan": plan,
    })))
}
