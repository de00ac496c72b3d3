//! Generation requests (`txt2img`, `img2img` and any other configured route): decide the
//! profile and memory, send Forge the options that must change, then forward, all inside
//! the backend's critical section.

use std::net::IpAddr;
use std::time::Instant;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::Request;
use serde_json::{Map, Value};

use crate::backend::forge::{Forge, ForgeError};
use crate::backend::vram::VramReading;
use crate::backend::BackendState;
use crate::decide::body::Head;
use crate::decide::body::{read_body, set_length, GenerationBody};
use crate::decide::plan::{self, Inputs, Plan, INFERENCE_MEMORY};
use crate::decisions::Decision;
use crate::error::{respond, ProxyError};
use crate::proxy::observe::request_id;
use crate::proxy::{forward_to, forward_to_backend, RouteKind};
use crate::state::AppState;

/// The client's explicit profile; removed before forwarding.
pub const MODEL_TYPE_HEADER: &str = "x-forge-model-type";
pub const PROFILE_HEADER: &str = "x-forge-proxy-profile";
pub const INFERENCE_MEMORY_HEADER: &str = "x-forge-proxy-inference-memory";
pub const GPU_WEIGHTS_HEADER: &str = "x-forge-proxy-gpu-weights";
pub const OPTIONS_APPLIED_HEADER: &str = "x-forge-proxy-options-applied";
pub const VRAM_SOURCE_HEADER: &str = "x-forge-proxy-vram-source";

pub async fn handle(
    state: AppState,
    client_ip: Option<IpAddr>,
    request: Request<Body>,
) -> Response {
    respond(
        generate(&state, client_ip, request).await,
        "generation refused",
    )
}

async fn generate(
    state: &AppState,
    client_ip: Option<IpAddr>,
    request: Request<Body>,
) -> Result<Response, ProxyError> {
    let (mut parts, body) = request.into_parts();
    let header = parts
        .headers
        .remove(MODEL_TYPE_HEADER)
        .and_then(|v| v.to_str().ok().map(str::to_owned));
    let bytes = read_body(&parts.headers, body, state.config.inspect_limit()).await?;
    let Some(body) = GenerationBody::parse(&bytes) else {
        tracing::info!(path = %parts.uri.path(), "generation body is not a JSON object: forwarded untouched");
        let request = Request::from_parts(parts, Body::from(bytes.clone()));
        return Ok(forward_to_backend(state, client_ip, request, RouteKind::Generation).await);
    };
    let head = Head::of(&parts);
    // The profile as far as the request alone tells (an unknown header is refused here,
    // before waiting); `None` leaves it to the chosen backend's checkpoint.
    let wanted = request_profile(state, header.as_deref(), &body)?;
    let mut exclude = Vec::new();
    loop {
        let ticket = match state.scheduler.enqueue(wanted, client_ip, &exclude) {
            Ok(ticket) => ticket,
            Err(refused) => return Err(ProxyError::Refused(refused)),
        };
        let (grant, waited) = ticket.granted().await.map_err(ProxyError::Refused)?;
        let index = grant.backend();
        let backend = &state.backends[index];
        state
            .metrics
            .queue_wait(&backend.config.url, waited.as_secs_f64());
        let attempt = run_on(
            state,
            client_ip,
            &head,
            &bytes,
            &body,
            header.as_deref(),
            index,
        )
        .await;
        match attempt {
            Ok((response, took)) => {
                grant.completed(took);
                return Ok(response);
            }
            Err(error) => {
                // The backend failed before the generation was sent: another may take it.
                // Health has heard of it already (`forward_to`, `observe_preparing`).
                let Some(reason) = unsent_backend_failure(&error) else {
                    return Err(error);
                };
                drop(grant);
                exclude.push(index);
                let others = (0..state.backends.len())
                    .any(|i| !exclude.contains(&i) && state.scheduler.is_healthy(i));
                if !others {
                    return Err(error);
                }
                let url = &backend.config.url;
                tracing::warn!(backend = %url, reason = %reason, "backend failed before the generation was sent: trying another");
                state.scheduler.note_retry();
            }
        }
    }
}

/// A failure of the backend itself (not an answer of Forge's) before the generation was
/// sent, with its reason.
fn unsent_backend_failure(error: &ProxyError) -> Option<String> {
    match error {
        ProxyError::BackendUnreachable { reason, .. } => Some(reason.clone()),
        ProxyError::OptionsFailed {
            source: ForgeError::Call { source, .. },
            ..
        } => Some(source.to_string()),
        _ => None,
    }
}

/// Tells health that backend `index` failed one of the proxy's own calls while a generation
/// was prepared on it (a forwarded request's failures are told in `forward_to`).
fn observe_preparing(state: &AppState, index: usize, error: &ProxyError) {
    match (error, unsent_backend_failure(error)) {
        (ProxyError::BackendUnreachable { reason, .. }, _) => {
            crate::backend::health::observe_unreachable(state, index, reason)
        }
        (_, Some(reason)) => state.scheduler.report_health(index, false, reason, false),
        (_, None) => {}
    }
}

/// The profile the request names itself (header, override checkpoint or preset).
fn request_profile(
    state: &AppState,
    header: Option<&str>,
    body: &GenerationBody<'_>,
) -> Result<Option<usize>, ProxyError> {
    let overrides = body.override_settings();
    let text = |key: &str| overrides.get(key).and_then(Value::as_str);
    let (index, reason) = crate::decide::profile::resolve(
        &state.config.profiles,
        state.config.default_profile,
        &crate::decide::profile::Hints {
            header,
            override_checkpoint: text("sd_model_checkpoint"),
            override_preset: text("forge_preset"),
            backend_checkpoint: None,
        },
    )?;
    Ok((reason != crate::decide::profile::Reason::Default).then_some(index))
}

/// One attempt on backend `index`: inside its critical section, prepare and forward.
/// Returns the response and how long the backend was busy with it.
async fn run_on(
    state: &AppState,
    client_ip: Option<IpAddr>,
    head: &Head,
    bytes: &Bytes,
    body: &GenerationBody<'_>,
    header: Option<&str>,
    index: usize,
) -> Result<(Response, std::time::Duration), ProxyError> {
    let backend = &state.backends[index];
    let mut parts_headers = head.headers.clone();
    let forge = Forge::for_client(&state.forwarder, &backend.config, &parts_headers);

    let _critical = backend.generation_lock.lock().await;
    let started = Instant::now();

    let current = current_options(state, backend, &forge)
        .await
        .inspect_err(|error| observe_preparing(state, index, error))?;
    let reading = read_vram(state, backend, &forge).await;
    let plan = plan::plan(
        &state.config,
        &Inputs {
            header,
            body,
            current: &current,
            reading: reading.as_ref(),
        },
    )?;
    let route = head.uri.path().rsplit('/').next().unwrap_or_default();
    let decision = Decision::of(
        &plan,
        route,
        request_id(&parts_headers),
        &backend.config.url,
        reading.clone(),
    );

    if !plan.options.is_empty() {
        if let Err(source) = forge.set_options(&plan.options).await {
            backend.forget_options();
            state.decisions.record(decision.failed(source.to_string()));
            state
                .metrics
                .options_call(&backend.config.url, "failed", "options_call_failed");
            let error = ProxyError::preparing(&backend.config.url, source);
            observe_preparing(state, index, &error);
            return Err(error);
        }
        backend.applied(&plan.options);
    }
    state
        .metrics
        .options_call(&backend.config.url, plan.outcome, plan.reason);
    note_profile(state, backend, &plan);
    state.decisions.record(decision);

    let outgoing = if plan.edits.is_empty() {
        bytes.clone()
    } else {
        let rendered = body
            .render(&plan.edits)
            .map_err(|e| ProxyError::ClientBody {
                reason: e.to_string(),
            })?;
        set_length(&mut parts_headers, rendered.len());
        rendered
    };
    // Settings Forge changes for this generation and does not restore are then unknown.
    let leaves_changes = !body.override_settings().is_empty()
        && !body
            .get::<bool>("override_settings_restore_afterwards")
            .unwrap_or(true);
    let request = head.request(parts_headers, Body::from(outgoing));
    let result = forward_to(state, index, client_ip, request, RouteKind::Generation).await;
    let took = started.elapsed();
    state
        .metrics
        .generation_seconds(&backend.config.url, &plan.profile_name, took.as_secs_f64());
    // After a failure the request may still have reached Forge: its state is not known.
    if leaves_changes || result.is_err() {
        backend.forget_options();
    }
    let mut response = result?;
    describe(response.headers_mut(), &plan, reading.as_ref());
    Ok((response, took))
}

/// Tells the client what the proxy decided.
fn describe(headers: &mut http::HeaderMap, plan: &Plan, reading: Option<&VramReading>) {
    put(headers, PROFILE_HEADER, &plan.profile_name);
    if let Some(mib) = plan.inference_memory_mib {
        put(headers, INFERENCE_MEMORY_HEADER, &mib.to_string());
    }
    if let Some(mib) = plan.gpu_weights_mib {
        put(headers, GPU_WEIGHTS_HEADER, &mib.to_string());
    }
    let applied = if plan.options.is_empty() {
        "false"
    } else {
        "true"
    };
    put(headers, OPTIONS_APPLIED_HEADER, applied);
    put(
        headers,
        VRAM_SOURCE_HEADER,
        reading.map_or("none", |r| r.source),
    );
}

fn put(headers: &mut http::HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

/// The backend's options: read again when verifying (Forge's UI resets them on page
/// reload) or when unknown; else what the proxy last saw and applied.
pub async fn current_options(
    state: &AppState,
    backend: &BackendState,
    forge: &Forge<'_>,
) -> Result<Map<String, Value>, ProxyError> {
    if !state.config.memory.verify_before_generation {
        if let Some(known) = backend.known_options() {
            return Ok(known);
        }
    }
    match forge.options().await {
        Ok(options) => {
            if let Some(value) = options.get(INFERENCE_MEMORY).and_then(Value::as_f64) {
                state
                    .metrics
                    .inference_memory(&backend.config.url, value.max(0.0) as u64);
            }
            backend.update_view(|view| view.options = Some(options.clone()));
            Ok(options)
        }
        Err(source) => {
            backend.forget_options();
            Err(ProxyError::preparing(&backend.config.url, source))
        }
    }
}

/// A fresh reading, kept for the status page; `None` (and the reason logged) when neither
/// NVML nor the backend can say.
pub async fn read_vram(
    state: &AppState,
    backend: &BackendState,
    forge: &Forge<'_>,
) -> Option<VramReading> {
    match backend.vram.read(forge).await {
        Ok(reading) => {
            state.metrics.vram(
                &backend.config.gpu.to_string(),
                reading.source,
                reading.total_mib,
                reading.used_mib,
            );
            backend.update_view(|view| {
                view.last_reading = Some(reading.clone());
                view.reading_error = None;
            });
            Some(reading)
        }
        Err(reason) => {
            tracing::warn!(backend = %backend.config.url, reason = %reason, "no VRAM reading");
            backend.update_view(|view| view.reading_error = Some(reason));
            None
        }
    }
}

/// Keeps the loaded profile and the applied memory for the status page and metrics.
pub fn note_profile(state: &AppState, backend: &BackendState, plan: &Plan) {
    let previous = backend.update_view(|view| view.profile.replace(plan.profile_name.clone()));
    if let Some(previous) = previous.filter(|p| *p != plan.profile_name) {
        state
            .metrics
            .profile_switch(&backend.config.url, &previous, &plan.profile_name);
    }
    if let Some(mib) = plan.inference_memory_mib {
        state.metrics.inference_memory(&backend.config.url, mib);
    }
}
