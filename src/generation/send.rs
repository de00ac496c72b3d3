//! Stage 5: the generation sent to Forge, in a task of its own that holds the backend's
//! grant until Forge has answered and the answer has been read to its end.
//!
//! Forge runs a generation to its end whether or not its client is still there. If the
//! proxy let the backend go when the client did (a timeout, a closed tab, `curl -m`), the
//! next client's options call would land inside the abandoned generation, and its
//! generation would wait inside Forge, invisible to the proxy's queue. So the upstream
//! request lives on in this task: a client that goes away is noted (`/proxy/status` shows
//! the backend still busy), Forge is asked to stop when `on_client_disconnect = "interrupt"`,
//! and the answer is read to its end before the backend takes its next work.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot};

use crate::access::Caller;
use crate::backend::forge::Forge;
use crate::config::OnClientDisconnect;
use crate::error::ProxyError;
use crate::forward::ForwardError;
use crate::generation::prepare::Prepared;
use crate::generation::respond::Told;
use crate::generation::{closed_side, Generation};
use crate::proxy::pass_through;
use crate::proxy::request::{Chunks, ClientClosed};
use crate::scheduler::Grant;
use crate::state::AppState;

/// Sends the prepared generation and answers with Forge's response head; its body follows
/// as Forge sends it. A configured `timeouts.generation` ends the client's wait, not the
/// backend's.
pub async fn send(
    generation: &Generation<'_>,
    grant: Grant,
    prepared: Prepared,
) -> Result<Response, ProxyError> {
    let state = generation.state.clone();
    let id = grant.backend();
    let request = generation
        .head
        .request(prepared.headers, Body::new(Chunks::new(prepared.body)));
    let held = Held {
        told: Told::of(&prepared.plan, prepared.reading.as_ref()),
        leaves_changes: prepared.leaves_changes,
        client: generation.client.clone(),
        closed: generation.closed.clone(),
        state: state.clone(),
        grant,
    };
    let (answer, answered) = oneshot::channel();
    state.work.spawn(held.run(request, answer));
    let answered = match state.config().timeouts.generation {
        Some(after) => tokio::time::timeout(after, answered).await.map_err(|_| {
            ProxyError::Forward(ForwardError::Timeout {
                backend: state.backends.get(id).config.url.clone(),
                method: generation.head.method.to_string(),
                path: generation.head.uri.path().to_owned(),
                after,
            })
        })?,
        None => answered.await,
    };
    answered.unwrap_or_else(|_| {
        Err(ProxyError::Forward(ForwardError::Failed {
            backend: state.backends.get(id).config.url.clone(),
            method: generation.head.method.to_string(),
            path: generation.head.uri.path().to_owned(),
            reason: "the generation's task ended without an answer".to_owned(),
        }))
    })
}

/// What the task holding the backend keeps.
struct Held {
    state: AppState,
    grant: Grant,
    told: Told,
    leaves_changes: bool,
    /// Who sent it: where progress polls go, the credentials of an interrupt.
    client: Caller,
    /// Cancelled when the client closes its side of the connection.
    closed: Option<ClientClosed>,
}

type Answer = oneshot::Sender<Result<Response, ProxyError>>;

impl Held {
    async fn run(self, request: http::Request<Body>, mut answer: Answer) {
        let id = self.grant.backend();
        let started = Instant::now();
        let forwarded = pass_through::forward_to(&self.state, id, &self.client, request, None);
        tokio::pin!(forwarded);
        let mut gone = false;
        let closed = closed_side(self.closed.as_ref());
        let result = tokio::select! {
            result = &mut forwarded => result,
            () = answer.closed() => {
                gone = true;
                self.client_left().await;
                forwarded.await
            }
            // The client closed its side: it left, or it half-closed and still reads; the
            // answer goes to it either way.
            () = closed => {
                gone = true;
                self.client_left().await;
                forwarded.await
            }
        };
        let backend = &*self.state.backends.get(id);
        let mut response = match result {
            Ok(response) => response,
            Err(error) => {
                // It may have reached Forge: what Forge has now is not known.
                backend.forget_options();
                let _ = answer.send(Err(error));
                return;
            }
        };
        let took = started.elapsed();
        self.grant.completed(took);
        self.told.finished(&self.state, backend, took);
        if self.leaves_changes {
            backend.forget_options();
        }
        self.told.describe(response.headers_mut());
        let (parts, body) = response.into_parts();
        let (frames, relayed) = Relayed::new(body.size_hint());
        if answer
            .send(Ok(Response::from_parts(parts, Body::new(relayed))))
            .is_err()
        {
            if !gone {
                self.client_left().await;
            }
            drain(body).await;
            return;
        }
        if !relay(body, frames).await && !gone {
            self.client_left().await;
        }
        // The grant drops here: the backend takes its next work.
    }

    /// The client went away before Forge's answer was read.
    async fn client_left(&self) {
        let backend = &*self.state.backends.get(self.grant.backend());
        self.grant.note_client_left();
        self.state.metrics.client_gone();
        let interrupt = self.state.config().on_client_disconnect == OnClientDisconnect::Interrupt;
        tracing::info!(backend = %backend.config.url, interrupt, "the client left its generation: the backend stays held until Forge has finished it");
        if interrupt {
            let forge = Forge::reading_for(&self.state.forwarder, &backend.config, &self.client);
            if let Err(error) = forge.interrupt().await {
                tracing::warn!(backend = %backend.config.url, error = %error, "could not interrupt the abandoned generation");
            }
        }
    }
}

/// Passes Forge's answer to the client frame by frame; `false` when the client went away,
/// in which case the rest is read and dropped.
async fn relay(mut body: Body, frames: mpsc::Sender<Result<Frame<Bytes>, axum::Error>>) -> bool {
    while let Some(frame) = body.frame().await {
        let failed = frame.is_err();
        if frames.send(frame).await.is_err() {
            drain(body).await;
            return false;
        }
        if failed {
            return true;
        }
    }
    true
}

/// Reads an answer nobody waits for to its end, so Forge's connection finishes cleanly.
async fn drain(mut body: Body) {
    while let Some(Ok(_)) = body.frame().await {}
}

/// The response body the client reads: frames handed over by the task holding the backend.
struct Relayed {
    frames: mpsc::Receiver<Result<Frame<Bytes>, axum::Error>>,
    size: SizeHint,
}

impl Relayed {
    fn new(size: SizeHint) -> (mpsc::Sender<Result<Frame<Bytes>, axum::Error>>, Relayed) {
        let (sender, frames) = mpsc::channel(1);
        (sender, Relayed { frames, size })
    }
}

impl http_body::Body for Relayed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.frames.poll_recv(cx)
    }

    fn size_hint(&self) -> SizeHint {
        self.size
    }
}
