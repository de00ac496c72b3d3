//! Stage 4: the backend prepared for the generation, inside its critical section (the
//! scheduler's grant): Forge's options read again (its UI resets them on page reload), the
//! checkpoint names resolved through the backend's catalog, a VRAM reading, the plan, and
//! the options call when something must change. If that call fails, the generation is not
//! sent. The reads and the call carry the client's credentials: a client Forge refuses gets
//! Forge's own refusal, and nothing is changed for it.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::admin::decisions::{Asked, Decision};
use crate::backend::forge::{key, Forge};
use crate::backend::health::HealthEvent;
use crate::backend::vram::VramReading;
use crate::backend::Backend;
use crate::config::BackendId;
use crate::decide::plan::{self, Inputs, Outcome, Plan, Why, INFERENCE_MEMORY};
use crate::error::ProxyError;
use crate::forward::ForwardError;
use crate::generation::{respond, unsent_backend_failure, Generation};
use crate::proxy::request::set_length;
use crate::scheduler::Grant;
use crate::state::AppState;

/// What the generation goes to Forge with.
pub struct Prepared {
    pub plan: Plan,
    pub reading: Option<VramReading>,
    /// The request's headers, with the length of a rewritten body.
    pub headers: http::HeaderMap,
    /// The client's bytes, or the body with the profile's request defaults and without the
    /// memory keys the proxy owns: in pieces that share the client's bytes.
    pub body: Vec<Bytes>,
    /// Forge keeps the request's `override_settings` after it (the client turned the
    /// restore off): the backend's options are unknown afterwards.
    pub leaves_changes: bool,
}

/// Prepares the backend `grant` holds for the generation.
pub async fn prepare(
    generation: &Generation<'_>,
    grant: &mut Grant,
) -> Result<Prepared, ProxyError> {
    let state = generation.state;
    let id = grant.backend();
    let backend = &*state.backends.get(id);
    let forge = Forge::for_client(&state.forwarder, &backend.config, &generation.client);
    // Dropped before the end (the client left mid-call): the options may have changed.
    let mut unsure = Unsure {
        backend,
        armed: true,
    };

    let current = current_options(state, backend, &forge)
        .await
        .inspect_err(|error| observe_preparing(state, id, error))?;
    let overrides = generation.body.override_settings();
    let reader = Forge::reading_for(&state.forwarder, &backend.config, &generation.client);
    let catalog = backend
        .catalog_knowing(&reader, &checkpoint_names(&overrides, &current))
        .await;
    let reading = read_vram(state, backend, &reader).await;
    let plan = plan::plan(
        &generation.config,
        &Inputs {
            model_type: generation.model_type.as_deref(),
            body: &generation.body,
            current: &current,
            catalog: catalog.as_deref(),
            reading: reading.as_ref(),
        },
    )?;
    let route = crate::proxy::route::Route::Generation(generation.route)
        .label(&generation.config.generation_routes);
    let asked = Asked {
        route: &route,
        request_id: &generation.request_id,
        key: generation.client.key_name(),
    };
    let decision = Decision::of(&plan, asked, &backend.config.url, reading.clone());
    apply(state, id, &forge, &plan, decision).await?;
    let had = grant.planned_as(&generation.config, plan.profile);
    respond::note_profile(state, &generation.config, backend, &plan, had);

    let mut headers = generation.head.headers.clone();
    let body = if plan.edits.is_empty() {
        vec![generation.bytes.clone()]
    } else {
        let rendered = generation
            .body
            .render(generation.bytes, &plan.edits)
            .map_err(|e| ProxyError::ClientBody {
                reason: e.to_string(),
            })?;
        set_length(&mut headers, rendered.iter().map(Bytes::len).sum());
        rendered
    };
    let leaves_changes = !overrides.is_empty() && !generation.body.restores_overrides();
    unsure.armed = false;
    Ok(Prepared {
        plan,
        reading,
        headers,
        body,
        leaves_changes,
    })
}

/// The checkpoint names a plan resolves: the request's override and the one Forge stores.
pub fn checkpoint_names<'a>(
    overrides: &'a Map<String, Value>,
    current: &'a Map<String, Value>,
) -> Vec<&'a str> {
    [overrides.get(key::CHECKPOINT), current.get(key::CHECKPOINT)]
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// Sends the plan's options (when there are any) and records the decision. A failed call
/// leaves the backend's options unknown, and the generation unsent.
pub async fn apply(
    state: &AppState,
    id: BackendId,
    forge: &Forge<'_>,
    plan: &Plan,
    decision: Decision,
) -> Result<(), ProxyError> {
    let backend = &*state.backends.get(id);
    let url = &backend.config.url;
    if !plan.options.is_empty() {
        if let Err(source) = forge.set_options(&plan.options).await {
            backend.forget_options();
            state.decisions.record(decision.failed(source.to_string()));
            state
                .metrics
                .options_call(url, Outcome::Failed, Why::OptionsCallFailed);
            let error = ProxyError::preparing(url, source);
            observe_preparing(state, id, &error);
            return Err(error);
        }
        backend.applied(&plan.options);
    }
    state.metrics.options_call(url, plan.outcome, plan.reason);
    state.decisions.record(decision);
    Ok(())
}

/// Forgets the backend's options when dropped armed: a prepare stage cut short (its client
/// left while the options call was under way) cannot tell what Forge has now.
struct Unsure<'a> {
    backend: &'a Backend,
    armed: bool,
}

impl Drop for Unsure<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.backend.forget_options();
        }
    }
}

/// Tells health that `backend` failed one of the proxy's own calls while a generation was
/// prepared on it (a forwarded request's failures are told where it is forwarded).
pub fn observe_preparing(state: &AppState, backend: BackendId, error: &ProxyError) {
    match (error, unsent_backend_failure(error)) {
        (ProxyError::Forward(ForwardError::Unreachable { reason, .. }), _) => {
            crate::backend::health::check::observe_unreachable(state, backend, reason)
        }
        (_, Some(reason)) => state
            .scheduler
            .report_health(backend, HealthEvent::Failed(reason)),
        (_, None) => {}
    }
}

/// The backend's options: read again when verifying (Forge's UI resets them on page
/// reload) or when unknown; else what the proxy last saw and applied.
pub async fn current_options(
    state: &AppState,
    backend: &Backend,
    forge: &Forge<'_>,
) -> Result<Map<String, Value>, ProxyError> {
    if !state.config().memory.verify_before_generation {
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
    backend: &Backend,
    forge: &Forge<'_>,
) -> Option<VramReading> {
    match backend.vram.read(forge).await {
        Ok(reading) => {
            state.metrics.vram(
                &backend.config.url,
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
