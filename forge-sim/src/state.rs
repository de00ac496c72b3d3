//! The shared state of one simulated Forge, cheap to clone into handlers.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, UnknownCheckpoint};
use crate::checkpoint::Catalog;
use crate::config::{CheckpointSpec, SimConfig};
use crate::error::ApiError;
use crate::images::{ImageCache, SplitMix64};
use crate::journal::{Journal, Source};
use crate::progress::JobState;

/// How many requests `GET /sim/requests` keeps.
pub const REQUESTS_KEPT: usize = 2000;

/// One simulated Forge: its options and loaded model, the running job, the
/// generation queue and the journal. `Clone` shares it.
#[derive(Clone)]
pub struct SimState {
    inner: Arc<Inner>,
}

struct Inner {
    config: SimConfig,
    credentials: Vec<(String, String)>,
    /// The checkpoint files in the models folder; the catalog is built from them at start
    /// and again by `refresh-checkpoints`.
    disk: Mutex<Vec<CheckpointSpec>>,
    backend: Mutex<Backend>,
    journal: Mutex<Journal>,
    /// The last requests received, with their headers, oldest first.
    requests: Mutex<std::collections::VecDeque<Value>>,
    job: Mutex<JobState>,
    /// Forge's `queue_lock`: one generation at a time, the others wait.
    queue: tokio::sync::Mutex<()>,
    images: ImageCache,
    started: Instant,
    rng: Mutex<SplitMix64>,
    /// Cancelled when the server stops, so long-lived work (websockets,
    /// generations) ends with it.
    shutdown: CancellationToken,
}

impl SimState {
    pub fn new(config: SimConfig) -> SimState {
        let catalog = Arc::new(Catalog::new(&config.checkpoints));
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        SimState {
            inner: Arc::new(Inner {
                credentials: config.credentials(),
                backend: Mutex::new(Backend::new(config.vram_mib, catalog)),
                images: ImageCache::new(config.image_bytes),
                disk: Mutex::new(config.checkpoints.clone()),
                journal: Mutex::new(Journal::default()),
                requests: Mutex::default(),
                job: Mutex::new(JobState::default()),
                queue: tokio::sync::Mutex::new(()),
                started: Instant::now(),
                rng: Mutex::new(SplitMix64(seed)),
                shutdown: CancellationToken::new(),
                config,
            }),
        }
    }

    /// The journal's entries, in order (what `GET /sim/journal` returns).
    pub fn journal(&self) -> Vec<Value> {
        lock(&self.inner.journal).entries()
    }

    /// The last requests received (at most [`REQUESTS_KEPT`]), oldest first: method, path
    /// and every header, as `GET /sim/requests` returns them.
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.inner.requests).iter().cloned().collect()
    }

    pub(crate) fn record_request(&self, method: &str, path: &str, headers: &axum::http::HeaderMap) {
        let headers: Map<String, Value> = headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), Value::String(value))
            })
            .collect();
        let entry = serde_json::json!({"method": method, "path": path, "headers": headers});
        let mut requests = lock(&self.inner.requests);
        if requests.len() == REQUESTS_KEPT {
            requests.pop_front();
        }
        requests.push_back(entry);
    }

    /// Every option, as `GET /sdapi/v1/options` returns them.
    pub fn options(&self) -> Value {
        self.backend().options().to_json()
    }

    /// `GET /sdapi/v1/options`'s body: serialized under the backend lock, not cloned.
    pub fn options_json(&self) -> Vec<u8> {
        self.backend().options().to_json_bytes()
    }

    pub fn config(&self) -> &SimConfig {
        &self.inner.config
    }

    /// Applies options like Forge's `set_config` and journals what changed.
    /// The backend lock is held while journaling, so the journal's order is
    /// the order the changes took effect.
    pub(crate) fn set_config(
        &self,
        request: &Map<String, Value>,
        unknown_checkpoint: UnknownCheckpoint,
        source: Source,
    ) -> Result<(), ApiError> {
        let mut backend = self.backend();
        let (change, error) = backend.set_config(request, unknown_checkpoint);
        self.journal_mut()
            .push_options(source, &change, self.now_ms());
        drop(backend);
        error.map_or(Ok(()), Err)
    }

    pub(crate) fn credentials(&self) -> &[(String, String)] {
        &self.inner.credentials
    }

    /// The checkpoints Forge lists now.
    pub(crate) fn catalog(&self) -> Arc<Catalog> {
        self.backend().catalog()
    }

    /// A checkpoint file put in the models folder: Forge lists it after
    /// `refresh-checkpoints` (or a restart), not before.
    pub fn add_checkpoint_file(&self, spec: CheckpointSpec) {
        lock(&self.inner.disk).push(spec);
    }

    /// `POST /sdapi/v1/refresh-checkpoints` (`sd_models.list_models`): the catalog and its
    /// aliases are built again from the folder.
    pub(crate) fn refresh_checkpoints(&self) {
        let specs = lock(&self.inner.disk).clone();
        self.backend().set_catalog(Arc::new(Catalog::new(&specs)));
    }

    pub(crate) fn backend(&self) -> MutexGuard<'_, Backend> {
        lock(&self.inner.backend)
    }

    pub(crate) fn journal_mut(&self) -> MutexGuard<'_, Journal> {
        lock(&self.inner.journal)
    }

    pub(crate) fn job(&self) -> MutexGuard<'_, JobState> {
        lock(&self.inner.job)
    }

    pub(crate) fn queue(&self) -> &tokio::sync::Mutex<()> {
        &self.inner.queue
    }

    pub(crate) fn images(&self) -> &ImageCache {
        &self.inner.images
    }

    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Milliseconds since the simulator started (journal timestamps).
    pub(crate) fn now_ms(&self) -> f64 {
        self.inner.started.elapsed().as_secs_f64() * 1000.0
    }

    pub(crate) fn random(&self) -> u64 {
        lock(&self.inner.rng).next()
    }
}

impl std::fmt::Debug for SimState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimState")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// A panicking handler must not wedge the simulator: ignore poisoning.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
