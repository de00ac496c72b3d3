//! The last decisions the proxy took, for `/proxy/status`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::access::Caller;
use crate::backend::vram::VramReading;
use crate::decide::plan::{Outcome, Plan, Why};
use crate::decide::policy::MemoryDecision;
use crate::decide::profile::Reason;

/// How many decisions `/proxy/status` shows.
pub const KEPT: usize = 50;

/// One generation's (or checkpoint change's) decision.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u128,
    pub request_id: String,
    /// The client key's name, when keys are configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub route: String,
    pub backend: String,
    pub profile: String,
    pub why_profile: Reason,
    /// A checkpoint name the request gave that Forge does not know (Forge ignores it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_checkpoint: Option<String>,
    pub reading: Option<VramReading>,
    /// The computed split, when there was a reading (or a fixed policy).
    pub computed: Option<MemoryDecision>,
    /// The options sent to Forge (empty when none were needed).
    pub options_sent: Map<String, Value>,
    pub outcome: Outcome,
    pub reason: Why,
    /// What went wrong, when the options call failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Which request a decision was for.
pub struct Asked<'a> {
    /// The metrics' route label: `txt2img`, `options`, ...
    pub route: &'a str,
    pub request_id: &'a str,
    pub key: Option<&'a str>,
}

impl Decision {
    /// The decision `plan` describes, taken now for the request `asked` on `backend`.
    pub fn of(plan: &Plan, asked: Asked<'_>, backend: &str, reading: Option<VramReading>) -> Self {
        Self {
            at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default(),
            request_id: asked.request_id.to_owned(),
            key: asked.key.map(str::to_owned),
            route: asked.route.to_owned(),
            backend: backend.to_owned(),
            profile: plan.profile_name.clone(),
            why_profile: plan.why_profile.clone(),
            unknown_checkpoint: plan.unknown_checkpoint.clone(),
            reading,
            computed: plan.computed.clone(),
            options_sent: plan.options.clone(),
            outcome: plan.outcome,
            reason: plan.reason,
            error: None,
        }
    }

    /// The same decision, whose options call failed.
    pub fn failed(mut self, error: String) -> Self {
        self.outcome = Outcome::Failed;
        self.reason = Why::OptionsCallFailed;
        self.error = Some(error);
        self
    }
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

    /// Oldest first: every decision for an admin (or without keys), else the caller's own.
    pub fn recent(&self, caller: &Caller) -> Vec<Decision> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent
            .iter()
            .filter(|d| caller.is_admin() || d.key.as_deref() == caller.key_name())
            .cloned()
            .collect()
    }
}
