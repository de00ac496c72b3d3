//! `SIGHUP`: the configuration file (and the key files it names) read again and put in force
//! without dropping a connection or a running generation.
//!
//! A file that does not validate changes nothing: the error is logged and counted. Otherwise
//! the new configuration replaces the old one everywhere at once for new requests; requests
//! under way keep the one they started with. Backends are matched by URL and GPU: a kept
//! one keeps its id, queue and health; a removed one takes no new work, finishes what it has
//! and then leaves `/proxy/status`; a new one joins after its first health check. `listen`,
//! `nvml_library` and `log.format` need a restart: a change to them is logged and ignored.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::config::{self, BackendConfig, BackendId, Config, Overrides};
use crate::state::{probe_backends, AppState};

/// Where the configuration comes from: the file and the command line's overrides.
#[derive(Debug, Clone)]
pub struct Source {
    pub file: Option<PathBuf>,
    pub overrides: Overrides,
}

/// The connection limit, which a reload may change.
pub struct Connections {
    pub slots: Arc<Semaphore>,
    pub limit: usize,
    /// What the descriptors allow (`None`: unknown).
    pub fits: Option<usize>,
}

pub struct Reloader {
    source: Source,
    state: AppState,
    /// The health checks' parent: new backends' checks are its children.
    checks: CancellationToken,
    connections: std::sync::Mutex<Connections>,
    /// One reload at a time; a signal during one runs another after it.
    running: tokio::sync::Mutex<()>,
}

impl Reloader {
    pub fn new(
        source: Source,
        state: AppState,
        checks: CancellationToken,
        connections: Connections,
    ) -> Self {
        Reloader {
            source,
            state,
            checks,
            connections: std::sync::Mutex::new(connections),
            running: tokio::sync::Mutex::new(()),
        }
    }

    pub fn connection_limit(&self) -> usize {
        self.lock_connections().limit
    }

    fn lock_connections(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the configuration again and puts it in force, or logs why not.
    pub async fn reload(&self) {
        let _one_at_a_time = self.running.lock().await;
        let source = self.source.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            config::load(source.file.as_deref(), &source.overrides)
        })
        .await;
        let result = match loaded {
            Ok(Ok(config)) => self.install(config).await,
            Ok(Err(errors)) => Err(errors.0.join("; ")),
            Err(e) => Err(format!("reading the configuration failed: {e}")),
        };
        match result {
            Ok(summary) => {
                self.state.metrics.config_reload("ok");
                tracing::info!(
                    file = ?self.source.file,
                    backends_added = summary.added,
                    backends_removed = summary.removed,
                    keys = summary.keys,
                    "configuration reloaded"
                );
            }
            Err(error) => {
                self.state.metrics.config_reload("error");
                tracing::error!(file = ?self.source.file, error = %error, "configuration not reloaded: the running one stays in force");
            }
        }
    }

    async fn install(&self, mut config: Config) -> Result<Summary, String> {
        let state = &self.state;
        let old = state.config();
        keep_what_needs_a_restart(&old, &mut config);
        let retired_before: Vec<bool> = state
            .scheduler
            .snapshot()
            .backends
            .iter()
            .map(|lane| lane.retired)
            .collect();
        let slots = slots(&old.backends, &retired_before, config.backends.clone());
        config.backends = slots.backends;
        let config = Arc::new(config);
        state.forwarder.reconfigure(&config)?;

        // The backends' objects: kept as they are when unchanged; a changed one starts from
        // what the proxy knew of it, its options read again before use.
        let current = state.backends.all();
        let mut backends: Vec<Arc<Backend>> = Vec::with_capacity(config.backends.len());
        for (i, backend) in config.backends.iter().enumerate() {
            let id = BackendId(i);
            match current.get(i) {
                Some(old) if old.config == *backend => backends.push(old.clone()),
                old => {
                    let probed = probe_backends(vec![(id, backend.clone())], &state.nvml).await;
                    let fresh = probed.map_err(|e| e.to_string())?.remove(0);
                    backends.push(Arc::new(match old {
                        Some(old) => fresh.taking_over(old),
                        None => fresh,
                    }));
                }
            }
        }
        state.backends.replace(backends);
        state.scheduler.reconfigure(config.clone(), &slots.retired);
        state.inspect_budget.resize(config.max_inspected_total);
        crate::logs::set_log_level(&config.log_level);
        {
            let mut connections = self.lock_connections();
            let limit = config
                .max_connections
                .min(connections.fits.unwrap_or(usize::MAX));
            crate::proxy::budget::resize(&connections.slots, connections.limit, limit);
            connections.limit = limit;
        }
        state.install(config.clone(), self.source.file.clone());
        for id in slots.added.iter().copied() {
            crate::backend::health::check::spawn_check(state, id, &self.checks);
        }
        Ok(Summary {
            added: slots.added.len(),
            removed: slots.retired.len(),
            keys: config.access.keys.len(),
        })
    }
}

struct Summary {
    added: usize,
    removed: usize,
    keys: usize,
}

/// `listen`, `nvml_library` and `log.format` stay as they are until a restart.
fn keep_what_needs_a_restart(old: &Config, new: &mut Config) {
    if new.listen != old.listen {
        tracing::warn!(running = %old.listen, file = %new.listen, "listen changes at the next restart");
        new.listen = old.listen;
        new.raw.listen.clone_from(&old.raw.listen);
    }
    if new.nvml_library != old.nvml_library {
        tracing::warn!("nvml_library changes at the next restart");
        new.nvml_library.clone_from(&old.nvml_library);
        new.raw.nvml_library.clone_from(&old.raw.nvml_library);
    }
    if new.log_format != old.log_format {
        tracing::warn!("log.format changes at the next restart");
        new.log_format = old.log_format;
        new.raw.log.format = old.raw.log.format;
    }
}

/// The backends of a reloaded configuration, by id.
struct Slots {
    /// Every id known before keeps its index (a removed backend's old configuration stays
    /// there while it drains); new backends come after.
    backends: Vec<BackendConfig>,
    retired: Vec<BackendId>,
    added: Vec<BackendId>,
}

/// The same backend: same URL, same GPU.
fn same(a: &BackendConfig, b: &BackendConfig) -> bool {
    a.url == b.url && a.gpu == b.gpu
}

fn slots(old: &[BackendConfig], retired_before: &[bool], mut new: Vec<BackendConfig>) -> Slots {
    let mut backends = Vec::with_capacity(old.len() + new.len());
    let mut retired = Vec::new();
    for (i, before) in old.iter().enumerate() {
        let was_retired = retired_before.get(i).copied().unwrap_or(false);
        match new
            .iter()
            .position(|b| same(b, before))
            .filter(|_| !was_retired)
        {
            Some(found) => backends.push(new.remove(found)),
            None => {
                if !was_retired {
                    retired.push(BackendId(i));
                }
                backends.push(before.clone());
            }
        }
    }
    let added = (backends.len()..backends.len() + new.len())
        .map(BackendId)
        .collect();
    backends.extend(new);
    Slots {
        backends,
        retired,
        added,
    }
}

/// `SIGHUP`, when reloading is on; never otherwise.
pub struct Hangups(Option<tokio::signal::unix::Signal>);

impl Hangups {
    pub fn listen(on: bool) -> Self {
        if !on {
            return Hangups(None);
        }
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Hangups(Some(signal)),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP: no reloads");
                Hangups(None)
            }
        }
    }

    pub async fn next(&mut self) {
        match &mut self.0 {
            Some(signal) => {
                if signal.recv().await.is_none() {
                    self.0 = None;
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_toml_str;

    fn backends(urls: &[&str]) -> Vec<BackendConfig> {
        let toml: String = urls
            .iter()
            .map(|u| format!("[[backends]]\nurl = \"{u}\"\n"))
            .collect();
        from_toml_str(&toml).unwrap().backends
    }

    #[test]
    fn kept_backends_keep_their_ids_removed_ones_drain_new_ones_come_last() {
        let old = backends(&["http://a:1", "http://b:1", "http://c:1"]);
        let new = backends(&["http://c:1", "http://d:1", "http://a:1"]);
        let s = slots(&old, &[false, false, false], new);
        let urls: Vec<&str> = s.backends.iter().map(|b| b.url.as_str()).collect();
        assert_eq!(
            urls,
            ["http://a:1", "http://b:1", "http://c:1", "http://d:1"]
        );
        assert_eq!(s.retired, [BackendId(1)]);
        assert_eq!(s.added, [BackendId(3)]);
    }

    #[test]
    fn a_backend_removed_before_and_added_again_gets_a_new_id() {
        let old = backends(&["http://a:1", "http://b:1"]);
        let new = backends(&["http://a:1", "http://b:1"]);
        let s = slots(&old, &[false, true], new);
        let urls: Vec<&str> = s.backends.iter().map(|b| b.url.as_str()).collect();
        assert_eq!(urls, ["http://a:1", "http://b:1", "http://b:1"]);
        assert!(s.retired.is_empty());
        assert_eq!(s.added, [BackendId(2)]);
    }
}
