//! What every request handler shares.

use std::sync::Arc;

use crate::config::Config;
use crate::forward::Forwarder;

/// Cheap to clone: `Arc`s and the pooled client (itself an `Arc` inside).
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub forwarder: Forwarder,
}

impl AppState {
    pub fn new(config: Config) -> Self {
        let forwarder = Forwarder::new(&config);
        Self {
            config: Arc::new(config),
            forwarder,
        }
    }
}
