//! A generation (`txt2img`, `img2img`, or another configured generation route), in the
//! stages it passes through, each in its own file:
//!
//! 1. [`inspect`] — the body read as Forge reads it. A body Forge cannot read, or will
//!    refuse, is forwarded untouched: nothing is changed for it, Forge answers it.
//! 2. [`resolve`] — the profile the request names itself (header, override checkpoint
//!    resolved through the backends' catalogs, preset), to choose a backend.
//! 3. queue — a place in the scheduler; a client that leaves while waiting leaves the queue.
//! 4. [`prepare`] — inside the backend's critical section: Forge's options read again, the
//!    checkpoint names resolved, a VRAM reading, the plan, and the options call.
//! 5. [`send`] — the generation goes to Forge in a task that holds the backend until Forge
//!    has answered, whatever the client does meanwhile.
//! 6. [`respond`] — what the client is told of the decision, the decision record, metrics.
//!
//! A failure of the backend before the generation was sent (it refuses connections, its
//! options call fails) moves the generation to another backend, when there is one.

pub mod inspect;
pub mod prepare;
pub mod resolve;
pub mod respond;
pub mod send;

use std::sync::Arc;

use crate::config::Config;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, Request};

use crate::access::Caller;
use crate::backend::forge::ForgeError;
use crate::decide::body::GenerationBody;
use crate::error::{respond as answer, ProxyError};
use crate::forward::ForwardError;
use crate::proxy::observe::request_id;
use crate::proxy::pass_through;
use crate::proxy::request::{read_body, ClientClosed, Head};
use crate::proxy::route;
use crate::state::AppState;

pub use respond::{
    GPU_WEIGHTS_HEADER, INFERENCE_MEMORY_HEADER, MODEL_TYPE_HEADER, OPTIONS_APPLIED_HEADER,
    PROFILE_HEADER, VRAM_SOURCE_HEADER,
};

/// One generation request, carried through the stages.
pub struct Generation<'a> {
    pub state: &'a AppState,
    /// The configuration as the request arrived: its rules hold for it to the end.
    pub config: Arc<Config>,
    pub client: Caller,
    /// Cancelled when the client closes its side of the connection.
    pub closed: Option<ClientClosed>,
    pub route: route::Generation,
    /// The request's head, without `X-Forge-Model-Type`.
    pub head: Head,
    /// The client's body, as sent.
    pub bytes: &'a Bytes,
    pub body: GenerationBody<'a>,
    /// `X-Forge-Model-Type`, as sent.
    pub model_type: Option<String>,
    pub request_id: String,
}

/// Answers one generation request. `model_type` is the `X-Forge-Model-Type` header, already
/// taken off the request.
pub async fn handle(
    state: AppState,
    client: Caller,
    route: route::Generation,
    model_type: Option<HeaderValue>,
    request: Request<Body>,
) -> Response {
    answer(
        run(&state, client, route, model_type, request).await,
        "generation refused",
    )
}

async fn run(
    state: &AppState,
    client: Caller,
    route: route::Generation,
    model_type: Option<HeaderValue>,
    request: Request<Body>,
) -> Result<Response, ProxyError> {
    let (parts, body) = request.into_parts();
    let head = Head::of(&parts);
    let closed = parts.extensions.get::<ClientClosed>().cloned();
    let held = read_body(state, &parts.headers, body).await?;
    let bytes = &held.bytes;
    let body = match inspect::inspect(state, route, &head, bytes) {
        inspect::Inspected::Managed(body) => body,
        inspect::Inspected::LeftToForge => {
            let request = head.request(head.headers.clone(), Body::from(bytes.clone()));
            return Ok(pass_through::forward_untouched_generation(state, &client, request).await);
        }
    };
    let generation = Generation {
        state,
        config: state.config(),
        client,
        closed,
        route,
        request_id: request_id(&head.headers).to_owned(),
        head,
        bytes,
        body,
        // Any bytes count: a value that is not ASCII names no profile, and is refused.
        model_type: model_type.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
    };
    let wanted = resolve::wanted_profile(&generation).await?;
    let mut exclude = Vec::new();
    loop {
        let ticket = state
            .scheduler
            .enqueue_as(&generation.config, wanted, &generation.client, &exclude)
            .map_err(ProxyError::Refused)?;
        // A client that closes its side while waiting leaves the queue: nothing reaches
        // Forge for it (TCP cannot tell a half-close from a client that left).
        let granted = tokio::select! {
            granted = ticket.granted() => granted,
            () = closed_side(generation.closed.as_ref()) => {
                return Err(ProxyError::ClientClosedWhileQueued);
            }
        };
        let (mut grant, waited) = granted.map_err(ProxyError::Refused)?;
        let backend = grant.backend();
        state.metrics.queue_wait(
            &state.backends.get(backend).config.url,
            waited.as_secs_f64(),
        );
        let attempt = match prepare::prepare(&generation, &mut grant).await {
            Ok(prepared) => send::send(&generation, grant, prepared).await,
            Err(error) => Err(error),
        };
        let error = match attempt {
            Ok(response) => return Ok(response),
            Err(error) => error,
        };
        // The backend failed before the generation was sent: another may take it. Health
        // has heard of it already.
        let Some(reason) = unsent_backend_failure(&error) else {
            return Err(error);
        };
        exclude.push(backend);
        let others = state
            .backends
            .ids()
            .any(|id| !exclude.contains(&id) && state.scheduler.is_healthy(id));
        if !others {
            return Err(error);
        }
        let url = state.backends.get(backend).config.url.clone();
        tracing::warn!(backend = %url, reason = %reason, "backend failed before the generation was sent: trying another");
        state.scheduler.note_retry();
    }
}

/// Completes when the client closes its side of the connection; never without a watch.
pub async fn closed_side(closed: Option<&ClientClosed>) {
    match closed {
        Some(ClientClosed(token)) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

/// A failure of the backend itself (not an answer of Forge's) before the generation was
/// sent, with its reason.
pub fn unsent_backend_failure(error: &ProxyError) -> Option<String> {
    match error {
        ProxyError::Forward(ForwardError::Unreachable { reason, .. }) => Some(reason.clone()),
        ProxyError::OptionsFailed {
            source: ForgeError::Call { source, .. },
            ..
        } => Some(source.to_string()),
        _ => None,
    }
}
