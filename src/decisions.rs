//! The last decisions the proxy took, for `/proxy/status`.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::policy::MemoryDecision;
use crate::profile::Reason;
use crate::vram::VramReading;

/// How many decisions `/proxy/status` shows.
pub const KEPT: usize = 50;

/// One generation's (or checkpoint change's) decision.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u128,
    pub request_id: String,
    pub route: String,
    pub backend: String,
    pub profile: String,
    pub why_profile: Reason,
    pub reading: Option<VramReading>,
    /// The computed split, when there was a reading (or a fixed policy).
    pub computed: Option<MemoryDecision>,
    /// The options sent to Forge (empty when none were needed).
    pub options_sent: Map<String, Value>,
    /// `applied`, `skipped` or `failed`.
    pub outcome: &'static str,
    /// Why: `changed`, `same`, `within_hysteresis`, `no_vram_reading`, `client_value`, or the error.
    pub reason: String,
}

#[derive(Default)]
pub struct Decisions {
    recent: Mutex<VecDeque<Decision>>,
}

impl Decisions {
    pub fn record(&self, decision: Decision) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == KEPT {
            recent.pop_front();
        }
        recent.push_back(decision);
    }

    /// Oldest first.
    pub fn recent(&self) -> Vec<Decision> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().cloned().collect()
    }
}
