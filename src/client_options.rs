//! A client's own `POST /sdapi/v1/options`.
//!
//! The proxy owns the memory keys: a client that posts them (Open WebUI posts back the whole
//! options dict, stale memory value included, to change the checkpoint) has them removed,
//! honoured or refused as configured. A checkpoint change goes through the backend's
//! critical section, with the new profile's memory added to the same call.

use std::net::IpAddr;

use axum::body::Body;
use axum::response::Response;
use http::Request;
use serde_json::{Map, Value};

use crate::backend::forge::Forge;
use crate::config::ClientMemoryOptions;
use crate::decide::body::{read_body, set_length, GenerationBody, Head};
use crate::decide::plan::{self, same_value, Inputs, PROXY_OWNED, RELOAD_ON_PRESENCE};
use crate::decisions::Decision;
use crate::error::{respond, ProxyError};
use crate::generation::{current_options, note_profile, read_vram};
use crate::proxy::observe::request_id;
use crate::proxy::{forward_to, forward_to_backend, RouteKind};
use crate::state::AppState;

pub async fn handle(
    state: AppState,
    client_ip: Option<IpAddr>,
    request: Request<Body>,
) -> Response {
    respond(
        set_options(&state, client_ip, request).await,
        "options call refused",
    )
}

async fn set_options(
    state: &AppState,
    client_ip: Option<IpAddr>,
    request: Request<Body>,
) -> Result<Response, ProxyError> {
    let (parts, body) = request.into_parts();
    let bytes = read_body(&parts.headers, body, state.config.inspect_limit()).await?;
    let Ok(Value::Object(mut changes)) = serde_json::from_slice::<Value>(&bytes) else {
        let request = Request::from_parts(parts, Body::from(bytes));
        return Ok(forward_to_backend(state, client_ip, request, RouteKind::PassThrough).await);
    };
    let posted = changes.len();
    let owned: Vec<String> = PROXY_OWNED
        .iter()
        .filter(|key| changes.contains_key(**key))
        .map(|key| (*key).to_owned())
        .collect();
    match state.config.memory.client_memory_options {
        _ if owned.is_empty() => {}
        ClientMemoryOptions::Reject => {
            return Err(ProxyError::ClientMemoryOptions {
                keys: owned,
                place: "the options call",
            })
        }
        ClientMemoryOptions::Strip => {
            tracing::info!(keys = ?owned, "removed the client's memory options");
            for key in &owned {
                changes.remove(key);
            }
        }
        ClientMemoryOptions::Honor => {}
    }

    // Every healthy backend gets the change, as one Forge would: a client that sets options
    // means "the server", and behind the proxy that is all of them. The first backend's
    // answer goes back to the client.
    let head = Head::of(&parts);
    let mut targets: Vec<usize> = (0..state.backends.len())
        .filter(|i| state.scheduler.is_healthy(*i))
        .collect();
    if targets.is_empty() {
        targets.push(
            state
                .scheduler
                .pass_through_backend(head.uri.path(), client_ip),
        );
    }
    let mut first = None;
    for index in targets {
        let answer = apply_to(
            state,
            client_ip,
            &head,
            &bytes,
            changes.clone(),
            posted,
            index,
        )
        .await;
        match (&first, answer) {
            (None, answer) => first = Some(answer),
            (Some(_), Ok(response)) if !response.status().is_success() => {
                tracing::warn!(backend = %state.backends[index].config.url, status = %response.status(), "options call failed on a further backend");
            }
            (Some(_), Err(error)) => {
                tracing::warn!(backend = %state.backends[index].config.url, error = %error, "options call failed on a further backend");
            }
            (Some(_), Ok(_)) => {}
        }
    }
    first.unwrap_or_else(|| {
        Err(ProxyError::ClientBody {
            reason: "no backend".to_owned(),
        })
    })
}

/// The client's options call on backend `index`.
async fn apply_to(
    state: &AppState,
    client_ip: Option<IpAddr>,
    head: &Head,
    bytes: &bytes::Bytes,
    mut changes: Map<String, Value>,
    posted: usize,
    index: usize,
) -> Result<Response, ProxyError> {
    let backend = &state.backends[index];
    let forge = Forge::for_client(&state.forwarder, &backend.config, &head.headers);
    let known = backend.known_options();
    let checkpoint = changes
        .get("sd_model_checkpoint")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let checkpoint_changes = match (&checkpoint, &known) {
        (None, _) => false,
        (Some(new), Some(known)) => {
            known.get("sd_model_checkpoint").and_then(Value::as_str) != Some(new)
        }
        (Some(_), None) => true,
    };

    if !checkpoint_changes {
        if let Some(known) = &known {
            drop_unchanged_reload_keys(&mut changes, known);
        }
        let modified = changes.len() != posted;
        let sent = changes.clone();
        let response = send(state, client_ip, head, bytes, changes, modified, index).await?;
        if response.status().is_success() {
            backend.applied(&sent);
        }
        return Ok(response);
    }

    // A checkpoint change: the proxy's options and this call form one critical section.
    let _critical = backend.generation_lock.lock().await;
    let current = current_options(state, backend, &forge).await?;
    drop_unchanged_reload_keys(&mut changes, &current);
    let reading = read_vram(state, backend, &forge).await;
    let probe = serde_json::json!({"override_settings": {"sd_model_checkpoint": checkpoint}});
    let probe = probe.to_string();
    let body = GenerationBody::parse(probe.as_bytes()).ok_or_else(|| ProxyError::ClientBody {
        reason: "cannot describe the checkpoint change".to_owned(),
    })?;
    let plan = plan::plan(
        &state.config,
        &Inputs {
            header: None,
            body: &body,
            current: &current,
            reading: reading.as_ref(),
        },
    )?;
    // The profile's options replace values the client merely echoed (unchanged from the
    // backend's); a value the client really changes wins.
    for (key, value) in &plan.options {
        let echoed = match (changes.get(key), current.get(key)) {
            (None, _) => true,
            (Some(posted), Some(now)) => same_value(posted, now),
            (Some(_), None) => false,
        };
        if echoed {
            changes.insert(key.clone(), value.clone());
        }
    }
    let request_id = request_id(&head.headers).to_owned();
    let sent = changes.clone();
    let modified = sent.len() != posted || !plan.options.is_empty();
    let response = send(state, client_ip, head, bytes, changes, modified, index).await?;
    let ok = response.status().is_success();
    if ok {
        backend.applied(&sent);
        note_profile(state, backend, &plan);
        state.scheduler.note_loaded(index, plan.profile);
    } else {
        backend.forget_options();
    }
    state.metrics.options_call(
        &backend.config.url,
        if ok { plan.outcome } else { "failed" },
        if ok {
            plan.reason
        } else {
            "options_call_failed"
        },
    );
    let decision = Decision::of(&plan, "options", &request_id, &backend.config.url, reading);
    state.decisions.record(if ok {
        decision
    } else {
        decision.failed(format!("backend answered {}", response.status()))
    });
    Ok(response)
}

/// `forge_async_loading` / `forge_pin_shared_memory` posted back unchanged would still make
/// Forge reload the model (their presence triggers its memory refresh).
fn drop_unchanged_reload_keys(changes: &mut Map<String, Value>, current: &Map<String, Value>) {
    for key in RELOAD_ON_PRESENCE {
        if let (Some(new), Some(now)) = (changes.get(key), current.get(key)) {
            if same_value(new, now) {
                changes.remove(key);
            }
        }
    }
}

/// Forwards the client's call to backend `index`, with its original bytes unless the
/// proxy changed them.
async fn send(
    state: &AppState,
    client_ip: Option<IpAddr>,
    head: &Head,
    original: &bytes::Bytes,
    changes: Map<String, Value>,
    modified: bool,
    index: usize,
) -> Result<Response, ProxyError> {
    let mut headers = head.headers.clone();
    let body = if !modified {
        original.clone()
    } else {
        let bytes = bytes::Bytes::from(Value::Object(changes).to_string());
        set_length(&mut headers, bytes.len());
        bytes
    };
    let request = head.request(headers, Body::from(body));
    forward_to(state, index, client_ip, request, RouteKind::PassThrough).await
}
