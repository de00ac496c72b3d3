//! One Forge server behind the proxy: what the proxy knows of it, and how it talks to it.
//!
//! - [`forge`] — the proxy's own calls to Forge (options, memory, catalog), Forge's paths and
//!   option keys.
//! - [`catalog`] — its checkpoints and every name Forge accepts for each.
//! - [`vram`], [`nvml`] — live VRAM readings: NVML on this host, else the backend's.
//! - [`health`] — active and passive health checks.

pub mod catalog;
pub mod forge;
pub mod health;
pub mod nvml;
pub mod vram;

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::backend::catalog::Catalog;
use crate::backend::forge::Forge;
use crate::backend::vram::{VramReading, VramSource};
use crate::config::{BackendConfig, BackendId};

/// One backend: the one owner of what the proxy knows of it. Its queue and health live in
/// the scheduler, which places work under one lock.
pub struct Backend {
    pub id: BackendId,
    pub config: BackendConfig,
    pub vram: VramSource,
    view: Mutex<View>,
    catalog: Mutex<CatalogCache>,
}

/// Every backend, by id: those of the configuration in its order, then those a reload
/// added. A reload replaces the list whole; a request holds the [`Backend`] it took.
pub struct Backends(ArcSwap<Vec<Arc<Backend>>>);

impl Backends {
    pub fn new(backends: Vec<Backend>) -> Self {
        Backends(ArcSwap::from_pointee(
            backends.into_iter().map(Arc::new).collect(),
        ))
    }

    pub fn get(&self, id: BackendId) -> Arc<Backend> {
        self.0.load()[id.0].clone()
    }

    /// The list as it is now.
    pub fn all(&self) -> Arc<Vec<Arc<Backend>>> {
        self.0.load_full()
    }

    pub fn ids(&self) -> impl Iterator<Item = BackendId> + use<> {
        (0..self.0.load().len()).map(BackendId)
    }

    /// After a reload: `backends` keeps every id of the list it replaces.
    pub fn replace(&self, backends: Vec<Arc<Backend>>) {
        debug_assert!(backends.len() >= self.0.load().len());
        self.0.store(Arc::new(backends));
    }
}

/// A name the catalog lacks makes the proxy read it again, at most this often: a client
/// sending unknown names costs Forge one `sd-models` call per interval, not one per request.
pub const CATALOG_REREAD: Duration = Duration::from_secs(2);

/// The backend's checkpoint catalog as last read.
#[derive(Default)]
struct CatalogCache {
    catalog: Option<Arc<Catalog>>,
    read_at: Option<tokio::time::Instant>,
    /// A `refresh-checkpoints` went through: read again before the next use.
    stale: bool,
}

/// The proxy's picture of the backend; a short `std` lock, never held across `.await`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct View {
    /// The backend's options as last read or set; `None` when unknown (re-read before use).
    #[serde(skip)]
    pub options: Option<Map<String, Value>>,
    pub last_reading: Option<VramReading>,
    /// Why the last reading failed, when it did.
    pub reading_error: Option<String>,
    /// What the last health check learned of Forge's `--api-auth`.
    pub credentials: Credentials,
    /// Forge's progress of the generation it runs, as last polled while someone watches
    /// `/proxy/events`.
    pub progress: Option<ForgeProgress>,
}

/// The part of Forge's `/sdapi/v1/progress` the dashboard shows.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ForgeProgress {
    /// 0 to 1.
    pub progress: f64,
    pub eta_relative: f64,
    pub job: String,
    pub sampling_step: i64,
    pub sampling_steps: i64,
}

impl ForgeProgress {
    pub fn of(answer: &Value) -> Self {
        let state = &answer["state"];
        ForgeProgress {
            progress: answer["progress"].as_f64().unwrap_or(0.0),
            eta_relative: answer["eta_relative"].as_f64().unwrap_or(0.0),
            job: state["job"].as_str().unwrap_or_default().to_owned(),
            sampling_step: state["sampling_step"].as_i64().unwrap_or(0),
            sampling_steps: state["sampling_steps"].as_i64().unwrap_or(0),
        }
    }
}

/// Whether the backend wants credentials the proxy's own calls can give, as the health check
/// (which carries the configured `auth`) last saw it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Credentials {
    #[default]
    NotChecked,
    /// The check passed: no `--api-auth`, or the configured `auth` was accepted.
    Accepted,
    /// Forge answered 401/403 and no `auth` is configured: clients' own credentials still pass
    /// through, but the proxy's background calls cannot read it.
    Needed,
    /// Forge answered 401/403 to the configured `auth`: it is wrong.
    Refused,
}

impl Credentials {
    pub fn as_str(self) -> &'static str {
        match self {
            Credentials::NotChecked => "not_checked",
            Credentials::Accepted => "accepted",
            Credentials::Needed => "needed",
            Credentials::Refused => "refused",
        }
    }
}

impl Backend {
    pub fn new(id: BackendId, config: BackendConfig, vram: VramSource) -> Self {
        Self {
            id,
            config,
            vram,
            view: Mutex::new(View::default()),
            catalog: Mutex::new(CatalogCache::default()),
        }
    }

    /// This backend's new configuration (a reload) starting from what the proxy knew under
    /// the old one: its catalog and last reading; its options are read again before use.
    pub fn taking_over(self, old: &Backend) -> Self {
        let mut view = old.view();
        view.options = None;
        *self.lock_view() = view;
        {
            let old = lock(&old.catalog);
            let mut cache = lock(&self.catalog);
            cache.catalog.clone_from(&old.catalog);
            cache.read_at = old.read_at;
            cache.stale = old.stale;
        }
        self
    }

    /// The catalog as last read, if it was.
    pub fn catalog(&self) -> Option<Arc<Catalog>> {
        lock(&self.catalog).catalog.clone()
    }

    /// Forge re-read its models folder (`refresh-checkpoints`): read the catalog again.
    pub fn catalog_changed(&self) {
        lock(&self.catalog).stale = true;
    }

    /// The catalog, read again first when it was never read or is stale, or when it lacks
    /// one of `names` and was not read in the last [`CATALOG_REREAD`]. `None` when it cannot
    /// be read (the reason is logged): names are then matched as they are spelled.
    pub async fn catalog_knowing(&self, forge: &Forge<'_>, names: &[&str]) -> Option<Arc<Catalog>> {
        let (cached, due) = {
            let cache = lock(&self.catalog);
            let lacks = |catalog: &Catalog| names.iter().any(|n| catalog.resolve(n).is_none());
            let recent = cache
                .read_at
                .is_some_and(|at| at.elapsed() < CATALOG_REREAD);
            let due = match &cache.catalog {
                None => !recent,
                Some(catalog) => cache.stale || (lacks(catalog) && !recent),
            };
            (cache.catalog.clone(), due)
        };
        if !due {
            return cached;
        }
        let read = forge
            .sd_models()
            .await
            .map_err(|e| e.to_string())
            .and_then(|answer| Catalog::from_sd_models(&answer));
        let mut cache = lock(&self.catalog);
        cache.read_at = Some(tokio::time::Instant::now());
        match read {
            Ok(catalog) => {
                cache.stale = false;
                cache.catalog = Some(Arc::new(catalog));
            }
            Err(reason) => {
                tracing::warn!(backend = %self.config.url, reason = %reason, "checkpoint catalog not read: names are matched as spelled");
            }
        }
        cache.catalog.clone()
    }

    /// A copy of the current view.
    pub fn view(&self) -> View {
        self.lock_view().clone()
    }

    /// Changes the view under its lock.
    pub fn update_view<R>(&self, change: impl FnOnce(&mut View) -> R) -> R {
        change(&mut self.lock_view())
    }

    /// Options known to the proxy, if it trusts them.
    pub fn known_options(&self) -> Option<Map<String, Value>> {
        self.lock_view().options.clone()
    }

    /// Forget the options: the next use reads them again (after a failed options call, or
    /// when the backend may have changed them).
    pub fn forget_options(&self) {
        self.lock_view().options = None;
    }

    /// Records `changes` as applied.
    pub fn applied(&self, changes: &Map<String, Value>) {
        let mut view = self.lock_view();
        if let Some(options) = view.options.as_mut() {
            for (key, value) in changes {
                options.insert(key.clone(), value.clone());
            }
        }
    }

    fn lock_view(&self) -> std::sync::MutexGuard<'_, View> {
        lock(&self.view)
    }
}

/// A short `std` lock; a panic while holding it leaves plain data: still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
