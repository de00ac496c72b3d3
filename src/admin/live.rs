//! What the dashboard watches: `/proxy/events` (server-sent events: the status whenever it
//! changes, each decision as it is taken), Forge's progress of running generations while
//! someone watches, and the samples behind `/proxy/history`.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::{Extension, Json};
use futures_util::Stream;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::access::Caller;
use crate::admin::decisions::{visible, Record};
use crate::admin::history::{BackendSample, Sample, SAMPLE_EVERY};
use crate::admin::status::snapshot;
use crate::backend::forge::Forge;
use crate::backend::ForgeProgress;
use crate::state::AppState;

/// A watcher gets the status again at least this often while something runs (elapsed time,
/// Forge's progress), and this often when all is idle.
const BUSY_REFRESH: Duration = Duration::from_secs(1);
const IDLE_REFRESH: Duration = Duration::from_secs(5);
/// Changes closer together than this make one status event.
const COALESCE: Duration = Duration::from_millis(100);

/// `GET /proxy/events`: `status` events (the `/proxy/status` JSON this caller may see) at
/// once, on each change and on a timer; `decision` events (a decision or an admin's action)
/// as they come. The browser's `EventSource` reconnects by itself.
pub async fn events(
    State(state): State<AppState>,
    Extension(client): Extension<Caller>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let watcher = Watcher {
        changes: state.scheduler.changes(),
        records: state.decisions.subscribe(),
        _counted: Counted::new(&state),
        state,
        client,
        first: true,
    };
    let stream = futures_util::stream::unfold(watcher, |mut watcher| async move {
        let stopping = watcher.state.stopping.clone();
        // The stream ends when the server stops: it does not hold shutdown.
        tokio::select! {
            event = watcher.next() => Some((Ok(event), watcher)),
            () = stopping.cancelled() => None,
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

struct Watcher {
    state: AppState,
    client: Caller,
    changes: tokio::sync::watch::Receiver<u64>,
    records: tokio::sync::broadcast::Receiver<Record>,
    first: bool,
    _counted: Counted,
}

impl Watcher {
    async fn next(&mut self) -> Event {
        if std::mem::take(&mut self.first) {
            return self.status();
        }
        let refresh = if self.state.scheduler.is_active() {
            BUSY_REFRESH
        } else {
            IDLE_REFRESH
        };
        loop {
            tokio::select! {
                record = self.records.recv() => match record {
                    Ok(record) if visible(&self.client, &record) => return decision(&record),
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => std::future::pending::<()>().await,
                },
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        std::future::pending::<()>().await;
                    }
                    tokio::time::sleep(COALESCE).await;
                    self.changes.mark_unchanged();
                    return self.status();
                }
                () = tokio::time::sleep(refresh) => return self.status(),
            }
        }
    }

    fn status(&self) -> Event {
        let status = snapshot(&self.state, &self.client);
        Event::default()
            .event("status")
            .json_data(status)
            .unwrap_or_else(|_| Event::default().comment("status not serialisable"))
    }
}

fn decision(record: &Record) -> Event {
    Event::default()
        .event("decision")
        .json_data(record)
        .unwrap_or_else(|_| Event::default().comment("decision not serialisable"))
}

/// One watcher of `/proxy/events`, counted while its stream lives: Forge's progress is
/// polled only while someone watches.
struct Counted(AppState);

impl Counted {
    fn new(state: &AppState) -> Self {
        state.watchers.fetch_add(1, Ordering::Relaxed);
        Counted(state.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How often Forge's progress is asked for while someone watches.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// While someone watches `/proxy/events`, asks each busy backend for Forge's progress (with
/// the backend's `auth`) and keeps it in its view; an idle backend's is cleared.
pub fn spawn_progress_poller(state: &AppState, stop: &CancellationToken) {
    let state = state.clone();
    let stop = stop.child_token();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(PROGRESS_EVERY) => {}
            }
            if state.watchers.load(Ordering::Relaxed) == 0 {
                continue;
            }
            poll_progress(&state).await;
        }
    });
}

async fn poll_progress(state: &AppState) {
    let lanes = state.scheduler.snapshot().backends;
    let backends = state.backends.all();
    let nobody = Caller::default();
    for (backend, lane) in backends.iter().zip(&lanes) {
        let generating = lane
            .running
            .as_ref()
            .is_some_and(|r| r.work == crate::scheduler::Work::Generation);
        if !generating {
            backend.update_view(|view| view.progress = None);
            continue;
        }
        let forge = Forge::reading_for(&state.forwarder, &backend.config, &nobody);
        match forge.progress().await {
            Ok(answer) => {
                let progress = ForgeProgress::of(&answer);
                backend.update_view(|view| view.progress = Some(progress));
            }
            Err(e) => tracing::debug!(backend = %backend.config.url, error = %e, "no progress"),
        }
    }
}

/// Samples the history every [`SAMPLE_EVERY`], the first at once.
pub fn spawn_sampler(state: &AppState, stop: &CancellationToken) {
    let state = state.clone();
    let stop = stop.child_token();
    tokio::spawn(async move {
        loop {
            read_nvml(&state).await;
            state.history.push(sample(&state));
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(SAMPLE_EVERY) => {}
            }
        }
    });
}

/// A fresh reading of each backend read through NVML (no call to Forge), so the cards and
/// charts follow the card between generations too.
async fn read_nvml(state: &AppState) {
    let nobody = Caller::default();
    for backend in state.backends.all().iter() {
        if let crate::backend::vram::VramSource::Nvml { .. } = backend.vram {
            let forge = Forge::reading_for(&state.forwarder, &backend.config, &nobody);
            crate::generation::prepare::read_vram(state, backend, &forge).await;
        }
    }
}

/// What the backends look like now, with what happened since the sample before.
fn sample(state: &AppState) -> Sample {
    let pending = state.history.take_pending();
    let lanes = state.scheduler.snapshot().backends;
    let backends = state
        .backends
        .all()
        .iter()
        .zip(&lanes)
        .filter(|(_, lane)| !lane.retired)
        .map(|(backend, lane)| {
            let view = backend.view();
            BackendSample {
                url: backend.config.url.clone(),
                inference_mib: view
                    .options
                    .as_ref()
                    .and_then(|o| o.get(crate::backend::forge::key::INFERENCE_MEMORY))
                    .and_then(Value::as_f64),
                vram_used_mib: view.last_reading.as_ref().map(|r| r.used_mib),
                vram_total_mib: view.last_reading.as_ref().map(|r| r.total_mib),
                queue: lane.queue.len(),
            }
        })
        .collect();
    Sample {
        at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default(),
        backends,
        reloads: pending.reloads,
        generation_s: pending.mean_generation_s(),
    }
}

/// `GET /proxy/history`: the samples of the last hour, oldest first.
pub async fn history(State(state): State<AppState>) -> Json<Value> {
    Json(serde_json::json!({
        "every_s": SAMPLE_EVERY.as_secs(),
        "samples": state.history.all(),
    }))
}
