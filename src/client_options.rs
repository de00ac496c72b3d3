//! A client's own `POST /sdapi/v1/options`.
//!
//! The proxy owns the memory keys: a client that posts them (Open WebUI posts back the whole
//! options dict, stale memory value included, to change the checkpoint) has them removed,
//! honoured or refused as configured. Every backend gets the change, as one Forge would.
//!
//! On each backend the call takes its turn like a generation (the scheduler's grant, shown
//! in `/proxy/status`): nothing a client changes lands between the proxy's options call and
//! the generation it prepared. A checkpoint is resolved as Forge resolves it; a change to
//! another checkpoint carries the new profile's memory in the same call. A name Forge does
//! not know goes to Forge as posted, which answers its 500, and the proxy adds nothing.

use std::sync::Arc;

use crate::config::Config;
use axum::body::Body;
use axum::response::Response;
use forge_schema::body::{self as python, NonFinite, RawObject};
use http::Request;
use serde_json::{Map, Value};

use crate::access::Caller;
use crate::admin::decisions::{Asked, Decision};
use crate::backend::catalog::Catalog;
use crate::backend::forge::{key, Forge};
use crate::config::BackendId;
use crate::decide::body::GenerationBody;
use crate::decide::client_memory::{ClientMemory, Place};
use crate::decide::plan::{self, same_value, Inputs, Named, Outcome, Why, RELOAD_ON_PRESENCE};
use crate::decide::profile;
use crate::error::{respond, ProxyError};
use crate::generation::prepare::{current_options, observe_preparing, read_vram};
use crate::generation::respond::note_profile;
use crate::proxy::observe::request_id;
use crate::proxy::pass_through;
use crate::proxy::request::{read_body, set_length, Head};
use crate::scheduler::{Follow, Grant};
use crate::state::AppState;

pub async fn handle(state: AppState, client: Caller, request: Request<Body>) -> Response {
    respond(
        set_options(&state, &client, request).await,
        "options call refused",
    )
}

/// The posted changes, in the order Forge applies them, when Forge reads the body as an
/// object of plain values; `None` leaves the body to Forge as it is.
fn read_changes(head: &Head, bytes: &[u8]) -> Option<Map<String, Value>> {
    if !python::is_json_content_type(head.content_type()) {
        return None;
    }
    let text = python::decode_text(bytes).ok()?;
    let object = RawObject::parse(&text).ok()??;
    let mut changes = Map::new();
    for (name, span) in object.members() {
        let (value, non_finite) = python::to_value(&text[span]).ok()?;
        if non_finite != NonFinite::None {
            return None;
        }
        changes.insert(name.to_owned(), value);
    }
    Some(changes)
}

async fn set_options(
    state: &AppState,
    client: &Caller,
    request: Request<Body>,
) -> Result<Response, ProxyError> {
    let (parts, body) = request.into_parts();
    let head = Head::of(&parts);
    let held = read_body(state, &parts.headers, body).await?;
    let bytes = &held.bytes;
    let Some(mut changes) = read_changes(&head, bytes) else {
        let request = head.request(head.headers.clone(), Body::from(bytes.clone()));
        return Ok(pass_through::forward(state, client, request, Follow::Any).await);
    };
    let posted = changes.clone();
    let config = state.config();
    let rule = config.memory.client_memory_options;
    let stripped = ClientMemory::judge(rule, &changes, Place::OptionsCall)?
        .stripped()
        .to_vec();
    if !stripped.is_empty() {
        tracing::info!(keys = ?stripped, "removed the client's memory options");
        for key in &stripped {
            changes.remove(key);
        }
    }
    let call = Call {
        state,
        config,
        client,
        head: &head,
        original: bytes,
        posted,
    };

    // Every healthy backend gets the change, as one Forge would: a client that sets options
    // means "the server", and behind the proxy that is all of them. The first backend's
    // answer goes back to the client.
    let mut targets: Vec<BackendId> = state
        .backends
        .ids()
        .filter(|id| state.scheduler.is_healthy(*id))
        .collect();
    if targets.is_empty() {
        targets.push(state.scheduler.pass_through_backend(Follow::Any, client));
    }
    let mut first = None;
    for id in targets {
        let answer = call.apply_to(id, changes.clone()).await;
        let url = state.backends.get(id).config.url.clone();
        match (&first, answer) {
            (None, answer) => first = Some(answer),
            (Some(_), Ok(response)) if !response.status().is_success() => {
                tracing::warn!(backend = %url, status = %response.status(), "options call failed on a further backend");
            }
            (Some(_), Err(error)) => {
                tracing::warn!(backend = %url, error = %error, "options call failed on a further backend");
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

/// One backend's part of a client's options call, inside its turn.
struct Change<'a> {
    id: BackendId,
    /// What goes to Forge: what the client posted, less the keys dropped.
    changes: Map<String, Value>,
    /// The backend's options now.
    current: &'a Map<String, Value>,
    catalog: Option<&'a Catalog>,
}

/// One client's options call, sent to each backend in turn.
struct Call<'a> {
    state: &'a AppState,
    /// The configuration as the call arrived.
    config: Arc<Config>,
    client: &'a Caller,
    head: &'a Head,
    /// The client's body, sent as it is when the proxy changes nothing in it.
    original: &'a bytes::Bytes,
    /// The keys and values the client posted.
    posted: Map<String, Value>,
}

impl Call<'_> {
    /// The call on backend `id`, in its turn.
    async fn apply_to(
        &self,
        id: BackendId,
        mut changes: Map<String, Value>,
    ) -> Result<Response, ProxyError> {
        let state = self.state;
        let backend = &*state.backends.get(id);
        let reader = Forge::reading_for(&state.forwarder, &backend.config, self.client);
        let name = changes
            .get(key::CHECKPOINT)
            .and_then(Value::as_str)
            .map(str::to_owned);
        let catalog = match &name {
            Some(name) => backend.catalog_knowing(&reader, &[name]).await,
            None => None,
        };
        let named = name
            .as_deref()
            .map(|name| Named::resolve(catalog.as_deref(), name));
        if named == Some(Named::Unknown) || changes.is_empty() {
            // Nothing to hold the backend for; an unknown checkpoint: Forge applies the keys
            // before it in order, then answers 500, and what it has afterwards is not known.
            let response = self.send(id, changes).await;
            backend.forget_options();
            return response;
        }
        let profile = named
            .as_ref()
            .and_then(Named::matchable)
            .and_then(|title| profile::profile_for_checkpoint(&self.config.profiles, title));

        let ticket = state
            .scheduler
            .enqueue_on_as(&self.config, id, profile, self.client);
        let (mut grant, waited) = ticket.granted().await.map_err(ProxyError::Refused)?;
        state
            .metrics
            .queue_wait(&backend.config.url, waited.as_secs_f64());
        let forge = Forge::for_client(&state.forwarder, &backend.config, self.client);
        let current = current_options(state, backend, &forge)
            .await
            .inspect_err(|error| observe_preparing(state, id, error))?;
        drop_unchanged_reload_keys(&mut changes, &current);
        let now = current.get(key::CHECKPOINT).and_then(Value::as_str);
        let changes_checkpoint = match (&name, now) {
            (None, _) => false,
            (Some(new), Some(now)) => {
                new != now
                    && catalog
                        .as_deref()
                        .is_none_or(|c| c.resolve(new) != c.resolve(now))
            }
            (Some(_), None) => true,
        };
        let change = Change {
            id,
            changes,
            current: &current,
            catalog: catalog.as_deref(),
        };
        if changes_checkpoint {
            self.change_checkpoint(change, &mut grant, &reader).await
        } else {
            self.change_options(change).await
        }
    }

    /// A call that leaves the checkpoint as it is: sent as posted (less the keys dropped).
    async fn change_options(&self, change: Change<'_>) -> Result<Response, ProxyError> {
        let backend = &*self.state.backends.get(change.id);
        let sent = change.changes.clone();
        let response = self.send(change.id, change.changes).await?;
        if response.status().is_success() {
            backend.applied(&sent);
        } else {
            backend.forget_options();
        }
        Ok(response)
    }

    /// A change to another checkpoint: the new profile's memory goes in the same call, and
    /// the decision is recorded as a generation's is.
    async fn change_checkpoint(
        &self,
        mut change: Change<'_>,
        grant: &mut Grant,
        reader: &Forge<'_>,
    ) -> Result<Response, ProxyError> {
        let state = self.state;
        let backend = &*state.backends.get(change.id);
        let reading = read_vram(state, backend, reader).await;
        let name = change.changes.get(key::CHECKPOINT).cloned();
        let probe = serde_json::json!({"override_settings": {"sd_model_checkpoint": name}});
        let probe = probe.to_string();
        let body =
            GenerationBody::parse(probe.as_bytes()).ok_or_else(|| ProxyError::ClientBody {
                reason: "cannot describe the checkpoint change".to_owned(),
            })?;
        let plan = plan::plan(
            &self.config,
            &Inputs {
                model_type: None,
                body: &body,
                current: change.current,
                catalog: change.catalog,
                reading: reading.as_ref(),
            },
        )?;
        // The profile's options replace values the client merely echoed (unchanged from the
        // backend's); a value the client really changes wins.
        for (key, value) in &plan.options {
            let echoed = match (change.changes.get(key), change.current.get(key)) {
                (None, _) => true,
                (Some(posted), Some(now)) => same_value(posted, now),
                (Some(_), None) => false,
            };
            if echoed {
                change.changes.insert(key.clone(), value.clone());
            }
        }
        let sent = change.changes.clone();
        let response = self.send(change.id, change.changes).await?;
        let asked = Asked {
            route: "options",
            request_id: request_id(&self.head.headers),
            key: self.client.key_name(),
        };
        let decision = Decision::of(&plan, asked, &backend.config.url, reading);
        if response.status().is_success() {
            backend.applied(&sent);
            let had = grant.planned_as(&self.config, plan.profile);
            note_profile(state, &self.config, backend, &plan, had);
            state
                .metrics
                .options_call(&backend.config.url, plan.outcome, plan.reason);
            state.decisions.record(decision);
        } else {
            backend.forget_options();
            state.metrics.options_call(
                &backend.config.url,
                Outcome::Failed,
                Why::OptionsCallFailed,
            );
            let failed = decision.failed(format!("backend answered {}", response.status()));
            state.decisions.record(failed);
        }
        Ok(response)
    }

    /// Forwards the call to backend `id`: the client's original bytes, unless the proxy
    /// changed the keys.
    async fn send(
        &self,
        id: BackendId,
        changes: Map<String, Value>,
    ) -> Result<Response, ProxyError> {
        let mut headers = self.head.headers.clone();
        let body = if changes == self.posted {
            self.original.clone()
        } else {
            let bytes = bytes::Bytes::from(Value::Object(changes).to_string());
            set_length(&mut headers, bytes.len());
            bytes
        };
        let request = self.head.request(headers, Body::from(body));
        let timeout = self
            .config
            .pass_through_timeout(crate::backend::forge::path::OPTIONS);
        pass_through::forward_to(self.state, id, self.client, request, timeout).await
    }
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
