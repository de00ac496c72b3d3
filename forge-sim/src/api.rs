//! The `/sdapi/v1` routes: Forge's API as clients use it, and FastAPI's own
//! `/openapi.json` and `/docs`. Handlers only gather inputs and answer; the
//! rules live in `backend`, `request`, `response` and `generation`.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::auth;
use crate::backend::UnknownCheckpoint;
use crate::body;
use crate::error::ApiError;
use crate::generation;
use crate::init_images;
use crate::journal::Source;
use crate::listings;
use crate::progress::Progress;
use crate::request::{self, GenerationRequest, Route};
use crate::response::{self, GenerationResponse, InfotextOptions};
use crate::state::SimState;

type Answer = Result<Json<Value>, ApiError>;

/// Every `/sdapi/v1` route. Forge registers them all with its
/// `add_api_route`, which puts `Depends(self.auth)` on each under
/// `--api-auth` (api.py `add_api_route`), `/progress` included. Routes
/// without a body sit behind the auth layer; those with a JSON body check
/// auth themselves after decoding it, which is FastAPI's order (a malformed
/// body is a 422 even without credentials). Only what extensions register
/// themselves (`/loras`, `/refresh-loras`) and FastAPI's `/openapi.json` and
/// `/docs` are open.
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
        .route("/sdapi/v1/extra-single-image", post(extra_single_image))
        .route("/sdapi/v1/png-info", post(png_info))
        .route("/sdapi/v1/progress", authed(get(progress)))
        .route("/sdapi/v1/interrogate", post(interrogate))
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
        .route(
            "/sdapi/v1/refresh-checkpoints",
            authed(post(refresh_checkpoints)),
        )
        .route("/sdapi/v1/refresh-vae", authed(post(null)))
        .route("/sdapi/v1/refresh-embeddings", authed(post(null)))
        .route("/sdapi/v1/loras", get(empty_list))
        .route("/sdapi/v1/refresh-loras", post(null))
        .route(OPENAPI_PATH, get(openapi))
        .route(DOCS_PATH, get(docs))
        // Forge takes init images of many megabytes; it has no body limit.
        .layer(DefaultBodyLimit::disable())
}

const OPENAPI_PATH: &str = "/openapi.json";
const DOCS_PATH: &str = "/docs";

/// One route as FastAPI documents it: its method and path, the name of the
/// Forge function that serves it (FastAPI's `summary` and `operationId` come
/// from it), the schema of its JSON body and of its answer.
struct RouteDoc {
    method: &'static str,
    path: &'static str,
    endpoint: &'static str,
    body: Option<&'static str>,
    response: Response,
}

/// What `/openapi.json` says a route answers.
enum Response {
    /// No `response_model`: `{}`.
    Any,
    /// A model: `{"$ref": ...}`.
    Model(&'static str),
    /// `list[Model]`.
    List(&'static str),
}

const fn doc(
    method: &'static str,
    path: &'static str,
    endpoint: &'static str,
    body: Option<&'static str>,
    response: Response,
) -> RouteDoc {
    RouteDoc {
        method,
        path,
        endpoint,
        body,
        response,
    }
}

/// The routes `router` serves under `/sdapi`, in Forge's registration order
/// (api.py `Api.__init__`, then the LoRA extension's).
#[rustfmt::skip]
const ROUTES: &[RouteDoc] = &[
    doc("post", "/sdapi/v1/txt2img", "text2imgapi", Some("StableDiffusionProcessingTxt2Img"), Response::Model("TextToImageResponse")),
    doc("post", "/sdapi/v1/img2img", "img2imgapi", Some("StableDiffusionProcessingImg2Img"), Response::Model("ImageToImageResponse")),
    doc("post", "/sdapi/v1/extra-single-image", "extras_single_image_api", Some("ExtrasSingleImageRequest"), Response::Model("ExtrasSingleImageResponse")),
    doc("post", "/sdapi/v1/png-info", "pnginfoapi", Some("PNGInfoRequest"), Response::Model("PNGInfoResponse")),
    doc("get", "/sdapi/v1/progress", "progressapi", None, Response::Model("ProgressResponse")),
    doc("post", "/sdapi/v1/interrogate", "interrogateapi", Some("InterrogateRequest"), Response::Any),
    doc("post", "/sdapi/v1/interrupt", "interruptapi", None, Response::Any),
    doc("post", "/sdapi/v1/skip", "skip", None, Response::Any),
    doc("get", "/sdapi/v1/options", "get_config", None, Response::Model("Options")),
    doc("post", "/sdapi/v1/options", "set_config", Some("Req"), Response::Any),
    doc("get", "/sdapi/v1/cmd-flags", "get_cmd_flags", None, Response::Model("Flags")),
    doc("get", "/sdapi/v1/samplers", "get_samplers", None, Response::List("SamplerItem")),
    doc("get", "/sdapi/v1/schedulers", "get_schedulers", None, Response::List("SchedulerItem")),
    doc("get", "/sdapi/v1/upscalers", "get_upscalers", None, Response::List("UpscalerItem")),
    doc("get", "/sdapi/v1/latent-upscale-modes", "get_latent_upscale_modes", None, Response::List("LatentUpscalerModeItem")),
    doc("get", "/sdapi/v1/sd-models", "get_sd_models", None, Response::List("SDModelItem")),
    doc("get", "/sdapi/v1/sd-modules", "get_sd_vaes_and_text_encoders", None, Response::List("SDModuleItem")),
    doc("get", "/sdapi/v1/hypernetworks", "get_hypernetworks", None, Response::List("HypernetworkItem")),
    doc("get", "/sdapi/v1/face-restorers", "get_face_restorers", None, Response::List("FaceRestorerItem")),
    doc("get", "/sdapi/v1/realesrgan-models", "get_realesrgan_models", None, Response::List("RealesrganItem")),
    doc("get", "/sdapi/v1/prompt-styles", "get_prompt_styles", None, Response::List("PromptStyleItem")),
    doc("get", "/sdapi/v1/embeddings", "get_embeddings", None, Response::Model("EmbeddingsResponse")),
    doc("post", "/sdapi/v1/refresh-embeddings", "refresh_embeddings", None, Response::Any),
    doc("post", "/sdapi/v1/refresh-checkpoints", "refresh_checkpoints", None, Response::Any),
    doc("post", "/sdapi/v1/refresh-vae", "refresh_vae", None, Response::Any),
    doc("get", "/sdapi/v1/memory", "get_memory", None, Response::Model("MemoryResponse")),
    doc("post", "/sdapi/v1/unload-checkpoint", "unloadapi", None, Response::Any),
    doc("post", "/sdapi/v1/reload-checkpoint", "reloadapi", None, Response::Any),
    doc("get", "/sdapi/v1/scripts", "get_scripts_list", None, Response::Model("ScriptsList")),
    doc("get", "/sdapi/v1/script-info", "get_script_info", None, Response::List("ScriptInfo")),
    doc("get", "/sdapi/v1/extensions", "get_extensions_list", None, Response::List("ExtensionItem")),
    doc("get", "/sdapi/v1/loras", "get_loras", None, Response::Any),
    doc("post", "/sdapi/v1/refresh-loras", "refresh_loras", None, Response::Any),
];

/// Routes the extensions register themselves: open under `--api-auth`.
const OPEN_ROUTES: &[&str] = &["/sdapi/v1/loras", "/sdapi/v1/refresh-loras"];

/// Whether `router` serves `path` (for FastAPI's trailing-slash redirect).
pub fn is_route(path: &str) -> bool {
    path == OPENAPI_PATH || path == DOCS_PATH || ROUTES.iter().any(|route| route.path == path)
}

/// The `allow` of a 405 on `path`: the methods of the first route
/// registered for it. Starlette's own docs routes list `HEAD, GET` (checked
/// on a running Forge).
pub fn first_route_method(path: &str) -> Option<&'static str> {
    if path == OPENAPI_PATH || path == DOCS_PATH {
        return Some("head, get");
    }
    ROUTES
        .iter()
        .find(|route| route.path == path)
        .map(|route| route.method)
}

/// Whether `HEAD` is answered on `path`: Starlette's own routes (the docs)
/// and the simulator's `/sim/` ones; FastAPI's API routes answer 405.
pub fn takes_head(path: &str) -> bool {
    path == OPENAPI_PATH || path == DOCS_PATH || path.starts_with("/sim/")
}

/// `GET /openapi.json`: FastAPI's document of the routes the simulator
/// serves (Forge's has more: batch extras, training, ControlNet's).
async fn openapi(State(state): State<SimState>) -> Json<Value> {
    Json(openapi_document(&state))
}

fn openapi_document(state: &SimState) -> Value {
    let secured = state.config().api_auth.is_some();
    let mut paths = Map::new();
    for route in ROUTES {
        let operation = operation(route, secured && !OPEN_ROUTES.contains(&route.path));
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        entry[route.method] = operation;
    }
    let mut components = json!({ "schemas": schemas(state) });
    if secured {
        components["securitySchemes"] = json!({"HTTPBasic": {"type": "http", "scheme": "basic"}});
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "FastAPI", "version": "0.1.0"},
        "paths": paths,
        "components": components,
    })
}

/// One operation the way FastAPI 0.104 writes it.
fn operation(route: &RouteDoc, secured: bool) -> Value {
    let reference = |name: &str| json!({ "$ref": format!("#/components/schemas/{name}") });
    let operation_id = format!(
        "{}{}_{}",
        route.endpoint,
        route
            .path
            .chars()
            .map(|c| if c.is_alphanumeric() { c } else { '_' })
            .collect::<String>(),
        route.method
    );
    let answer = match route.response {
        Response::Any => json!({}),
        Response::Model(name) => reference(name),
        Response::List(item) => json!({
            "items": reference(item),
            "type": "array",
            "title": format!("Response {}", python_title(&operation_id.replace('_', " "))),
        }),
    };
    let mut op = json!({ "summary": python_title(&route.endpoint.replace('_', " ")), "operationId": operation_id });
    if secured {
        op["security"] = json!([{"HTTPBasic": []}]);
    }
    let has_query = route.path == "/sdapi/v1/progress";
    if has_query {
        op["parameters"] = json!([{
            "name": "skip_current_image", "in": "query", "required": false,
            "schema": {"type": "boolean", "default": false, "title": "Skip Current Image"},
        }]);
    }
    if let Some(body) = route.body {
        let schema = match body {
            "Req" => json!({"type": "object", "title": "Req"}),
            model => reference(model),
        };
        op["requestBody"] =
            json!({"content": {"application/json": {"schema": schema}}, "required": true});
    }
    let mut responses = json!({
        "200": {"description": "Successful Response", "content": {"application/json": {"schema": answer}}},
    });
    if route.body.is_some() || has_query {
        responses["422"] = json!({
            "description": "Validation Error",
            "content": {"application/json": {"schema": reference("HTTPValidationError")}},
        });
    }
    op["responses"] = responses;
    op
}

/// Python's `str.title()`: `get_sd_models` is `Get Sd Models`, `text2imgapi`
/// is `Text2Imgapi`.
fn python_title(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut previous_cased = false;
    for c in text.chars() {
        if previous_cased {
            out.extend(c.to_lowercase());
        } else {
            out.extend(c.to_uppercase());
        }
        previous_cased = c.is_alphabetic();
    }
    out
}

/// Every schema the operations refer to. The request models and the
/// answers clients read are spelled out; the listings' items are objects.
fn schemas(state: &SimState) -> Value {
    let object = |title: &str| json!({"type": "object", "title": title});
    let nullable = |kind: &str, title: &str| json!({"anyOf": [{"type": kind}, {"type": "null"}], "title": title});
    let options: Map<String, Value> = match state.options() {
        Value::Object(options) => options
            .into_iter()
            .map(|(key, value)| {
                let kind = match &value {
                    Value::Bool(_) => json!({"type": "boolean"}),
                    Value::Number(n) if n.is_f64() => json!({"type": "number"}),
                    Value::Number(_) => json!({"type": "integer"}),
                    Value::String(_) => json!({"type": "string"}),
                    Value::Array(_) => json!({"items": {}, "type": "array"}),
                    _ => json!({}),
                };
                let title = python_title(&key.replace('_', " "));
                (
                    key,
                    json!({"anyOf": [kind, {"type": "null"}], "title": title, "default": value}),
                )
            })
            .collect(),
        _ => Map::new(),
    };
    let images = json!({
        "anyOf": [{"items": {"type": "string"}, "type": "array"}, {"type": "null"}],
        "title": "Image", "description": "The generated image in base64 format.",
    });
    let generation_answer = |title: &str| {
        json!({
            "properties": {
                "images": images,
                "parameters": {"type": "object", "title": "Parameters"},
                "info": {"type": "string", "title": "Info"},
            },
            "type": "object", "required": ["parameters", "info"], "title": title,
        })
    };
    let mut schemas = json!({
        "HTTPValidationError": {
            "properties": {"detail": {"items": {"$ref": "#/components/schemas/ValidationError"}, "type": "array", "title": "Detail"}},
            "type": "object", "title": "HTTPValidationError",
        },
        "ValidationError": {
            "properties": {
                "loc": {"items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}, "type": "array", "title": "Location"},
                "msg": {"type": "string", "title": "Message"},
                "type": {"type": "string", "title": "Error Type"},
            },
            "type": "object", "required": ["loc", "msg", "type"], "title": "ValidationError",
        },
        "StableDiffusionProcessingTxt2Img": request::openapi_schema(Route::Txt2Img, "StableDiffusionProcessingTxt2Img"),
        "StableDiffusionProcessingImg2Img": request::openapi_schema(Route::Img2Img, "StableDiffusionProcessingImg2Img"),
        "TextToImageResponse": generation_answer("TextToImageResponse"),
        "ImageToImageResponse": generation_answer("ImageToImageResponse"),
        "ExtrasSingleImageRequest": request::openapi_model_schema(request::EXTRAS_SINGLE_IMAGE, "ExtrasSingleImageRequest"),
        "ExtrasSingleImageResponse": {
            "properties": {
                "html_info": {"type": "string", "title": "HTML info", "description": "A series of HTML tags containing the process info."},
                "image": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Image", "description": "The generated image in base64 format."},
            },
            "type": "object", "required": ["html_info"], "title": "ExtrasSingleImageResponse",
        },
        "PNGInfoRequest": request::openapi_model_schema(request::PNG_INFO, "PNGInfoRequest"),
        "PNGInfoResponse": {
            "properties": {
                "info": {"type": "string", "title": "Image info"},
                "items": {"type": "object", "title": "Items"},
                "parameters": {"type": "object", "title": "Parameters"},
            },
            "type": "object", "required": ["info", "items", "parameters"], "title": "PNGInfoResponse",
        },
        "InterrogateRequest": request::openapi_model_schema(request::INTERROGATE, "InterrogateRequest"),
        "ProgressResponse": {
            "properties": {
                "progress": {"type": "number", "title": "Progress", "description": "The progress with a range of 0 to 1"},
                "eta_relative": {"type": "number", "title": "ETA in secs"},
                "state": {"type": "object", "title": "State", "description": "The current state snapshot"},
                "current_image": nullable("string", "Current image"),
                "textinfo": nullable("string", "Info text"),
            },
            "type": "object", "required": ["progress", "eta_relative", "state"], "title": "ProgressResponse",
        },
        "Options": {"properties": options, "type": "object", "title": "Options"},
        "SamplerItem": {
            "properties": {
                "name": {"type": "string", "title": "Name"},
                "aliases": {"items": {"type": "string"}, "type": "array", "title": "Aliases"},
                "options": {"type": "object", "title": "Options"},
            },
            "type": "object", "required": ["name", "aliases", "options"], "title": "SamplerItem",
        },
        "SDModelItem": {
            "properties": {
                "title": {"type": "string", "title": "Title"},
                "model_name": {"type": "string", "title": "Model Name"},
                "hash": nullable("string", "Short hash"),
                "sha256": nullable("string", "sha256 hash"),
                "filename": {"type": "string", "title": "Filename"},
                "config": nullable("string", "Config file"),
            },
            "type": "object", "required": ["title", "model_name", "hash", "sha256", "filename"], "title": "SDModelItem",
        },
        "MemoryResponse": {
            "properties": {
                "ram": {"type": "object", "title": "RAM", "description": "System memory stats"},
                "cuda": {"type": "object", "title": "CUDA", "description": "nVidia CUDA memory stats"},
            },
            "type": "object", "required": ["ram", "cuda"], "title": "MemoryResponse",
        },
    });
    for name in [
        "Flags",
        "SchedulerItem",
        "UpscalerItem",
        "LatentUpscalerModeItem",
        "SDModuleItem",
        "HypernetworkItem",
        "FaceRestorerItem",
        "RealesrganItem",
        "PromptStyleItem",
        "EmbeddingsResponse",
        "ScriptsList",
        "ScriptInfo",
        "ExtensionItem",
    ] {
        schemas[name] = object(name);
    }
    schemas
}

/// `GET /docs`: FastAPI's Swagger UI page (fastapi/openapi/docs.py
/// `get_swagger_ui_html`, FastAPI 0.104), byte for byte; the browser loads
/// Swagger UI from its CDN and the document from `/openapi.json`.
async fn docs() -> Html<&'static str> {
    Html(SWAGGER_UI_HTML)
}

const SWAGGER_UI_HTML: &str = r##"
    <!DOCTYPE html>
    <html>
    <head>
    <link type="text/css" rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5.9.0/swagger-ui.css">
    <link rel="shortcut icon" href="https://fastapi.tiangolo.com/img/favicon.png">
    <title>FastAPI - Swagger UI</title>
    </head>
    <body>
    <div id="swagger-ui">
    </div>
    <script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5.9.0/swagger-ui-bundle.js"></script>
    <!-- `SwaggerUIBundle` is now available on the page -->
    <script>
    const ui = SwaggerUIBundle({
        url: '/openapi.json',
    "dom_id": "#swagger-ui",
"layout": "BaseLayout",
"deepLinking": true,
"showExtensions": true,
"showCommonExtensions": true,
oauth2RedirectUrl: window.location.origin + '/docs/oauth2-redirect',
    presets: [
        SwaggerUIBundle.presets.apis,
        SwaggerUIBundle.SwaggerUIStandalonePreset
        ],
    })
    </script>
    </body>
    </html>
    "##;

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
    let request = match require(decoded)?.value {
        Value::Object(request) => request,
        other => {
            return Err(request::with_pydantic_urls(ApiError::validation(json!({
                "type": "dict_type",
                "loc": ["body"],
                "msg": "Input should be a valid dictionary",
                "input": other,
            }))))
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
    let body = require(decoded)?;
    let request = GenerationRequest::validate_decoded(route, body.value, &body.non_finite)?;
    drop(bytes);
    if route == Route::Img2Img && !request.is_set("init_images") {
        return Err(ApiError::http(
            StatusCode::NOT_FOUND,
            "Init image not found",
        ));
    }
    if route == Route::Img2Img
        && request
            .get("init_images")
            .as_array()
            .is_some_and(Vec::is_empty)
    {
        return Err(no_init_images(&state, &request).await);
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

/// A required body: FastAPI's `missing` when empty, with pydantic's `url`.
fn require(decoded: Option<body::Decoded>) -> Result<body::Decoded, ApiError> {
    body::require(decoded).map_err(request::with_pydantic_urls)
}

/// img2img with `init_images: []`: Forge takes the queue, begins the job and
/// fails in processing on the empty batch of images, with torch's message
/// (checked on a running Forge: `IndexError: Dimension out of range
/// (expected to be in range of [-1, 0], but got 1)`). The mask is decoded
/// first, before the queue, as in api.py `img2imgapi`. The simulator does not
/// apply the `override_settings` or load the model before failing.
async fn no_init_images(state: &SimState, request: &GenerationRequest) -> ApiError {
    let mask = request.get("mask");
    if mask.as_str().is_some_and(|m| !m.is_empty()) {
        if let Err(error) = init_images::check(&mask) {
            return error;
        }
    }
    let _queue = state.queue().lock().await;
    state.job().begin_and_end("scripts_img2img");
    ApiError::Exception {
        error: "IndexError",
        message: "Dimension out of range (expected to be in range of [-1, 0], but got 1)".into(),
    }
}

/// `GET /sdapi/v1/progress`; `skip_current_image` is validated as pydantic's
/// bool (a 422 for `maybe`), after auth.
async fn progress(
    State(state): State<SimState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Progress>, ApiError> {
    let query = query.map(|Query(pairs)| pairs).unwrap_or_default();
    let value = query
        .iter()
        .rev()
        .find(|(name, _)| name == "skip_current_image")
        .map(|(_, value)| value.as_str());
    let skip_current_image = request::query_bool("skip_current_image", value)?;
    let progress = state.job().progress(Instant::now(), skip_current_image);
    Ok(Json(progress))
}

/// Decode, auth and validate one of the image endpoints' bodies.
fn image_request(
    state: &SimState,
    headers: &HeaderMap,
    bytes: &[u8],
    model: &[request::ModelField],
) -> Result<Map<String, Value>, ApiError> {
    let decoded = body::decode(headers, bytes)?;
    auth::check(state.credentials(), headers)?;
    request::validate_model(model, require(decoded)?.value)
}

fn image_field(request: &Map<String, Value>) -> &str {
    request
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// `POST /sdapi/v1/png-info` (api.py `pnginfoapi`): the image's infotext.
async fn png_info(State(state): State<SimState>, headers: HeaderMap, bytes: Bytes) -> Answer {
    let request = image_request(&state, &headers, &bytes, request::PNG_INFO)?;
    drop(bytes);
    let image = init_images::decode(image_field(&request).trim())?;
    let options = {
        let backend = state.backend();
        let options = backend.options();
        let strings = |key: &str| -> Vec<String> {
            options
                .get(key)
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|item| item.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        InfotextOptions {
            checkpoint: options
                .str("sd_model_checkpoint")
                .unwrap_or_default()
                .to_owned(),
            additional_modules: strings("forge_additional_modules"),
            skip_fields: strings("infotext_skip_pasting"),
            prompt_comments: options
                .get("enable_prompt_comments")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            known_modules: listings::sd_modules()
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["model_name"].as_str().map(str::to_owned))
                .collect(),
        }
    };
    Ok(Json(response::png_info(&image, &options)?))
}

/// `POST /sdapi/v1/extra-single-image` (api.py `extras_single_image_api`):
/// the image decoded, then upscaled inside the queue; the answer's image has
/// the output size (the input itself when a PNG keeps its size, else noise).
async fn extra_single_image(
    State(state): State<SimState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Answer {
    let request = image_request(&state, &headers, &bytes, request::EXTRAS_SINGLE_IMAGE)?;
    drop(bytes);
    let image = init_images::decode(image_field(&request))?;
    let Some(size) = image.size else {
        return Err(ApiError::http(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Invalid encoded image",
        ));
    };
    let _queue = state.queue().lock().await;
    let names = listings::upscalers();
    let upscalers: Vec<&str> = names
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u["name"].as_str())
        .collect();
    let result = response::extras(&request, size, &upscalers);
    state.job().extras();
    let extras = result?;
    let encoded = if extras.size == size && image.format == init_images::Format::Png {
        image.base64
    } else {
        state
            .images()
            .get(extras.size.0, extras.size.1)
            .await
            .to_string()
    };
    Ok(Json(
        json!({ "html_info": extras.html_info, "image": encoded }),
    ))
}

/// `POST /sdapi/v1/interrogate` (api.py `interrogateapi`): the image is
/// decoded first, then the model chosen inside the queue.
async fn interrogate(State(state): State<SimState>, headers: HeaderMap, bytes: Bytes) -> Answer {
    let request = image_request(&state, &headers, &bytes, request::INTERROGATE)?;
    drop(bytes);
    init_images::decode(image_field(&request))?;
    let _queue = state.queue().lock().await;
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("clip");
    let caption = response::interrogate_caption(model)
        .ok_or_else(|| ApiError::http(StatusCode::NOT_FOUND, "Model not found"))?;
    state.job().begin_and_end("interrogate");
    Ok(Json(json!({ "caption": caption })))
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

/// `sd_models.list_models()`: files added to the folder since start are listed from now.
async fn refresh_checkpoints(State(state): State<SimState>) -> Json<Value> {
    state.refresh_checkpoints();
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
