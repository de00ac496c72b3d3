//! The `/sdapi/v1` routes: Forge's API as clients use it. Handlers only
//! gather inputs and answer; the rules live in `backend`, `request` and
//! `generation`.

use std::collections::HashMap;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::auth;
use crate::backend::UnknownCheckpoint;
use crate::body;
use crate::error::ApiError;
use crate::generation;
use crate::journal::Source;
use crate::listings;
use crate::progress::Progress;
use crate::request::{GenerationRequest, Route};
use crate::response::GenerationResponse;
use crate::state::SimState;

type Answer = Result<Json<Value>, ApiError>;

/// Every `/sdapi/v1` route. Routes without a body sit behind the auth layer;
/// those with a JSON body check auth themselves after decoding it, which is
/// FastAPI's order (a malformed body is a 422 even without credentials).
/// `/loras` and `/refresh-loras` are open, as in Forge (its Lora extension registers them
/// itself); `/progress` is behind auth like the rest (`api.py` adds it with
/// `add_api_route`, which puts every route behind `--api-auth`).
pub fn router(state: SimState) -> Router<SimState> {
    let authed = |route: MethodRouter<SimState>| {
        route.route_layer(from_fn_with_state(state.clone(), auth::require_auth))
    };
    Router::new()
        .route(
            "/sdapi/v1/options",
            authed(get(get_options)).post(post_options),
        )
        .route("/sdapi/v1/txt2img", post(txt2img))
        .route("/sdapi/v1/img2img", post(img2img))
        .route("/sdapi/v1/progress", authed(get(progress)))
        .route("/sdapi/v1/interrupt", authed(post(interrupt)))
        .route("/sdapi/v1/skip", authed(post(skip)))
        .route("/sdapi/v1/sd-models", authed(get(sd_models)))
        .route("/sdapi/v1/sd-modules", authed(get(sd_modules)))
        .route("/sdapi/v1/memory", authed(get(memory)))
        .route("/sdapi/v1/samplers", authed(get(samplers)))
        .route("/sdapi/v1/schedulers", authed(get(schedulers)))
        .route("/sdapi/v1/upscalers", authed(get(upscalers)))
        .route(
            "/sdapi/v1/latent-upscale-modes",
            authed(get(latent_upscale_modes)),
        )
        .route("/sdapi/v1/scripts", authed(get(scripts)))
        .route("/sdapi/v1/script-info", authed(get(empty_list)))
        .route("/sdapi/v1/cmd-flags", authed(get(cmd_flags)))
        .route("/sdapi/v1/embeddings", authed(get(embeddings)))
        .route("/sdapi/v1/hypernetworks", authed(get(empty_list)))
        .route("/sdapi/v1/face-restorers", authed(get(face_restorers)))
        .route(
            "/sdapi/v1/realesrgan-models",
            authed(get(realesrgan_models)),
        )
        .route("/sdapi/v1/prompt-styles", authed(get(empty_list)))
        .route("/sdapi/v1/extensions", authed(get(empty_list)))
        .route(
            "/sdapi/v1/unload-checkpoint",
            authed(post(unload_checkpoint)),
        )
        .route("/sdapi/v1/reload-checkpoint", authed(post(empty_object)))
        .route("/sdapi/v1/refresh-checkpoints", authed(post(null)))
        .route("/sdapi/v1/refresh-vae", authed(post(null)))
        .route("/sdapi/v1/refresh-embeddings", authed(post(null)))
        .route("/sdapi/v1/loras", get(empty_list))
        .route("/sdapi/v1/refresh-loras", post(null))
        // Forge takes init images of many megabytes; it has no body limit.
        .layer(DefaultBodyLimit::disable())
}

/// Every path `router` serves (for FastAPI's trailing-slash redirect).
pub const PATHS: &[&str] = &[
    "/sdapi/v1/options",
    "/sdapi/v1/txt2img",
    "/sdapi/v1/img2img",
    "/sdapi/v1/progress",
    "/sdapi/v1/interrupt",
    "/sdapi/v1/skip",
    "/sdapi/v1/sd-models",
    "/sdapi/v1/sd-modules",
    "/sdapi/v1/memory",
    "/sdapi/v1/samplers",
    "/sdapi/v1/schedulers",
    "/sdapi/v1/upscalers",
    "/sdapi/v1/latent-upscale-modes",
    "/sdapi/v1/scripts",
    "/sdapi/v1/script-info",
    "/sdapi/v1/cmd-flags",
    "/sdapi/v1/embeddings",
    "/sdapi/v1/hypernetworks",
    "/sdapi/v1/face-restorers",
    "/sdapi/v1/realesrgan-models",
    "/sdapi/v1/prompt-styles",
    "/sdapi/v1/extensions",
    "/sdapi/v1/unload-checkpoint",
    "/sdapi/v1/reload-checkpoint",
    "/sdapi/v1/refresh-checkpoints",
    "/sdapi/v1/refresh-vae",
    "/sdapi/v1/refresh-embeddings",
    "/sdapi/v1/loras",
    "/sdapi/v1/refresh-loras",
];

async fn get_options(State(state): State<SimState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.options_json(),
    )
}

/// Forge's `set_config`: 500 and nothing applied for an unknown checkpoint;
/// otherwise each changed key stored, and the memory refresh when a memory
/// key is present. Answers `null`.
async fn post_options(State(state): State<SimState>, headers: HeaderMap, bytes: Bytes) -> Answer {
    let decoded = body::decode(&headers, &bytes)?;
    auth::check(state.credentials(), &headers)?;
    let request = match body::require(decoded)? {
        Value::Object(request) => request,
        other => {
            return Err(ApiError::validation(json!({
                "type": "dict_type",
                "loc": ["body"],
                "msg": "Input should be a valid dictionary",
                "input": other,
            })))
        }
    };
    state.set_config(&request, UnknownCheckpoint::Reject, Source::Api)?;
    Ok(Json(Value::Null))
}

async fn txt2img(
    State(state): State<SimState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<GenerationResponse>, ApiError> {
    generate(Route::Txt2Img, state, headers, bytes).await
}

async fn img2img(
    State(state): State<SimState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<GenerationResponse>, ApiError> {
    generate(Route::Img2Img, state, headers, bytes).await
}

/// Decode, auth, validate, then run the generation in its own task, so it
/// completes (and holds the queue) even if the client disconnects, as in
/// Forge. The server's shutdown ends it.
async fn generate(
    route: Route,
    state: SimState,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<GenerationResponse>, ApiError> {
    let decoded = body::decode(&headers, &bytes)?;
    auth::check(state.credentials(), &headers)?;
    let request = GenerationRequest::validate(route, body::require(decoded)?)?;
    drop(bytes);
    if route == Route::Img2Img && !request.is_set("init_images") {
        return Err(ApiError::http(
            StatusCode::NOT_FOUND,
            "Init image not found",
        ));
    }
    let shutdown = state.shutdown_token().clone();
    let task = tokio::spawn(async move {
        tokio::select! {
            result = generation::generate(state, request) => Some(result),
            () = shutdown.cancelled() => None,
        }
    });
    match task.await {
        Ok(Some(result)) => result.map(Json),
        Ok(None) => Err(ApiError::runtime("the simulator is shutting down")),
        Err(error) => {
            tracing::error!("generation task failed: {error}");
            Err(ApiError::runtime("generation failed"))
        }
    }
}

async fn progress(
    State(state): State<SimState>,
    Query(query): Query<HashMap<String, String>>,
) -> Json<Progress> {
    let skip_current_image = query.get("skip_current_image").is_some_and(|v| {
        matches!(
            v.to_ascii_lowercase().as_str(),
            "true" | "1" | "yes" | "on" | "t" | "y"
        )
    });
    let progress = state.job().progress(Instant::now(), skip_current_image);
    Json(progress)
}

/// The running generation stops at its next step; answers `{}`.
async fn interrupt(State(state): State<SimState>) -> Json<Value> {
    state.job().interrupt();
    Json(json!({}))
}

/// The running iteration ends at its next step; answers `null`.
async fn skip(State(state): State<SimState>) -> Json<Value> {
    state.job().skip();
    Json(Value::Null)
}

async fn sd_models(State(state): State<SimState>) -> Json<Value> {
    Json(Value::Array(
        state.catalog().iter().map(|c| c.to_json()).collect(),
    ))
}

async fn sd_modules() -> Json<Value> {
    Json(listings::sd_modules())
}

async fn memory(State(state): State<SimState>) -> Json<Value> {
    Json(state.backend().memory_json())
}

async fn samplers() -> Json<Value> {
    Json(listings::samplers())
}

async fn schedulers() -> Json<Value> {
    Json(listings::schedulers())
}

async fn upscalers() -> Json<Value> {
    Json(listings::upscalers())
}

async fn latent_upscale_modes() -> Json<Value> {
    Json(listings::latent_upscale_modes())
}

async fn scripts() -> Json<Value> {
    Json(listings::scripts())
}

async fn cmd_flags(State(state): State<SimState>) -> Json<Value> {
    let config = state.config();
    Json(listings::cmd_flags(
        config.listen,
        config.api_auth.is_some(),
    ))
}

async fn embeddings() -> Json<Value> {
    Json(json!({ "loaded": {}, "skipped": {} }))
}

async fn face_restorers() -> Json<Value> {
    Json(listings::face_restorers())
}

async fn realesrgan_models() -> Json<Value> {
    Json(json!([
        { "name": "R-ESRGAN General 4xV3", "path": "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.5.0/realesr-general-x4v3.pth", "scale": 4 },
        { "name": "R-ESRGAN 4x+", "path": "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth", "scale": 4 },
        { "name": "R-ESRGAN 4x+ Anime6B", "path": "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth", "scale": 4 },
    ]))
}

/// Drops the loaded model: the next generation loads it again.
async fn unload_checkpoint(State(state): State<SimState>) -> Json<Value> {
    state.backend().unload();
    Json(json!({}))
}

async fn empty_list() -> Json<Value> {
    Json(json!([]))
}

async fn empty_object() -> Json<Value> {
    Json(json!({}))
}

async fn null() -> Json<Value> {
    Json(Value::Null)
}
