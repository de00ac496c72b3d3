//! One Forge server behind the proxy: what the proxy knows of it, and how it talks to it.
//!
//! - [`forge`] — the proxy's own calls to Forge (options, memory).
//! - [`vram`], [`nvml`] — live VRAM readings: NVML on this host, else the backend's.
//! - [`health`] — active and passive health checks.

pub mod forge;
pub mod health;
pub mod nvml;
pub mod vram;

use std::sync::Mutex;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::backend::vram::{VramReading, VramSource};
use crate::config::Backend;

pub struct BackendState {
    pub config: Backend,
    pub vram: VramSource,
    /// Held from the proxy's options call to the end of the generation it prepared, so no
    /// other generation or options change of the proxy's slips in between. Pass-through
    /// traffic never takes it.
    pub generation_lock: tokio::sync::Mutex<()>,
    view: Mutex<View>,
}

/// The proxy's picture of the backend; a short `std` lock, never held across `.await`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct View {
    /// The backend's options as last read or set; `None` when unknown (re-read before use).
    #[serde(skip)]
    pub options: Option<Map<String, Value>>,
    /// The profile of the backend's last generation or checkpoint change.
    pub profile: Option<String>,
    pub last_reading: Option<VramReading>,
    /// Why the last reading failed, when it did.
    pub reading_error: Option<String>,
    /// What the last health check learned of Forge's `--api-auth`.
    pub credentials: Credentials,
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

impl BackendState {
    pub fn new(config: Backend, vram: VramSource) -> Self {
        Self {
            config,
            vram,
            generation_lock: tokio::sync::Mutex::new(()),
            view: Mutex::new(View::default()),
        }
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
        // A panic while holding this lock leaves a plain data snapshot: still usable.
        self.view
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
