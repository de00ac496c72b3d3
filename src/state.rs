//! What every request handler shares.

use std::sync::Arc;

use arc_swap::ArcSwap;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::decisions::Decisions;
use crate::admin::metrics::Metrics;
use crate::backend::nvml::{Nvml, NvmlError};
use crate::backend::vram::VramSource;
use crate::backend::{Backend, Backends};
use crate::config::{BackendConfig, BackendId, Config};
use crate::forward::upgrade::Tunnels;
use crate::forward::Forwarder;
use crate::proxy::budget::InspectBudget;
use crate::scheduler::Scheduler;

/// What every handler shares, behind one `Arc`: a clone (axum's `State` makes one per
/// extractor, several per request) is a single reference count.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    /// The configuration in force; a reload replaces it ([`AppState::config`]).
    config: ArcSwap<Config>,
    /// When it was loaded, and from where: `/proxy/status` shows them.
    pub loaded: ArcSwap<Loaded>,
    /// NVML as loaded at start (a reload probes new backends' GPUs with it).
    pub nvml: Result<Nvml, String>,
    pub forwarder: Forwarder,
    pub backends: Backends,
    pub decisions: Arc<Decisions>,
    pub metrics: Metrics,
    pub scheduler: Arc<Scheduler>,
    /// `limits.max_inspected_total`, shared by every body held for inspection.
    pub inspect_budget: InspectBudget,
    /// Why NVML is not used, when it is not (shown on `/proxy/status`).
    pub nvml_error: Option<String>,
    /// Work that outlives the request that started it: a generation Forge is still running
    /// after its client left, an upgraded connection. Shutdown waits for it, within the
    /// grace period.
    pub work: TaskTracker,
    /// Cancelled when the server stops: upgraded connections close.
    pub stopping: CancellationToken,
    /// How many watch `/proxy/events` now.
    pub watchers: std::sync::atomic::AtomicUsize,
    /// The last hour, for the dashboard's charts.
    pub history: crate::admin::history::History,
}

impl AppState {
    /// Loads NVML (off the async threads) and picks each backend's VRAM source, saying once
    /// why NVML is not used when it is not. Fails only if that probe itself fails (its task
    /// panicked): the proxy does not start without its backends.
    pub async fn build(config: Config) -> std::io::Result<Self> {
        let library = config.nvml_library.clone();
        let nvml: Result<Nvml, String> =
            match tokio::task::spawn_blocking(move || Nvml::load(library.as_deref())).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(e) => Err(NvmlError::Interrupted(e.to_string()).to_string()),
            };
        let nvml_error = nvml.as_ref().err().cloned();
        let probe = nvml.clone();
        if let Some(reason) = &nvml_error {
            tracing::warn!(
                reason = %reason,
                "NVML is not available: VRAM is read from each backend's /sdapi/v1/memory"
            );
        }
        let configs: Vec<_> = config.backend_ids().zip(config.backends.clone()).collect();
        let backends = probe_backends(configs, &probe).await?;
        let config = Arc::new(config);
        let work = TaskTracker::new();
        let stopping = CancellationToken::new();
        let tunnels = Tunnels {
            tracker: work.clone(),
            stop: stopping.clone(),
        };
        let metrics = Metrics::new();
        let forwarder = Forwarder::new(&config, tunnels, {
            let metrics = metrics.clone();
            Arc::new(move |url: &str| metrics.backend_connections(url))
        })
        .map_err(std::io::Error::other)?;
        let scheduler = Scheduler::new(config.clone(), metrics.clone());
        let inspect_budget = InspectBudget::new(config.max_inspected_total);
        Ok(Self(Arc::new(Shared {
            inspect_budget,
            config: ArcSwap::new(config),
            loaded: ArcSwap::from_pointee(Loaded::now(None)),
            nvml: probe,
            forwarder,
            backends: Backends::new(backends),
            decisions: Arc::default(),
            metrics,
            scheduler,
            nvml_error,
            work,
            stopping,
            watchers: std::sync::atomic::AtomicUsize::new(0),
            history: crate::admin::history::History::default(),
        })))
    }
}

impl AppState {
    /// The configuration in force. A request takes it once and keeps it: a reload meanwhile
    /// does not change its rules halfway.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Puts `config` in force (after the scheduler and the backends have taken it).
    pub fn install(&self, config: Arc<Config>, file: Option<std::path::PathBuf>) {
        self.config.store(config);
        self.loaded.store(Arc::new(Loaded::now(file)));
    }
}

/// When the configuration in force was loaded, and from which file.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub at: std::time::SystemTime,
    pub file: Option<std::path::PathBuf>,
}

impl Loaded {
    fn now(file: Option<std::path::PathBuf>) -> Self {
        Loaded {
            at: std::time::SystemTime::now(),
            file,
        }
    }
}

/// Each backend's VRAM source, chosen off the async threads (NVML calls block); says why
/// NVML is not used for one where it is loaded but cannot serve that backend.
pub async fn probe_backends(
    configs: Vec<(BackendId, BackendConfig)>,
    nvml: &Result<Nvml, String>,
) -> std::io::Result<Vec<Backend>> {
    let nvml = nvml.clone();
    tokio::task::spawn_blocking(move || {
        configs
            .into_iter()
            .map(|(id, backend)| {
                let vram = VramSource::choose(&backend, &nvml);
                if let VramSource::Backend { why } = &vram {
                    if nvml.is_ok() {
                        tracing::warn!(backend = %backend.url, reason = %why, "not using NVML for this backend");
                    }
                }
                Backend::new(id, backend, vram)
            })
            .collect()
    })
    .await
    .map_err(|e| std::io::Error::other(format!("probing the backends' GPUs failed: {e}")))
}
