//! The last decisions the proxy took and the actions an admin took: for `/proxy/status`,
//! as they happen for `/proxy/events`, and one readable line each in the log.

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
    /// Forge's `forge_inference_memory` before, and the one the generation runs with.
    pub inference_before_mib: Option<u64>,
    pub inference_mib: Option<u64>,
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
            at_ms: now_ms(),
            request_id: asked.request_id.to_owned(),
            key: asked.key.map(str::to_owned),
            route: asked.route.to_owned(),
            backend: backend.to_owned(),
            profile: plan.profile_name.clone(),
            why_profile: plan.why_profile.clone(),
            unknown_checkpoint: plan.unknown_checkpoint.clone(),
            reading,
            computed: plan.computed.clone(),
            inference_before_mib: plan.inference_before_mib,
            inference_mib: plan.inference_memory_mib,
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

/// What an admin did to a backend (`/proxy/backends/{n}/...`).
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    pub at_ms: u128,
    pub request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `drain`, `resume`, `unload`, `interrupt`.
    pub route: String,
    pub backend: String,
    /// `done`, or `failed` with the error.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Action {
    pub fn new(asked: Asked<'_>, backend: &str, result: Result<(), String>) -> Self {
        Action {
            at_ms: now_ms(),
            request_id: asked.request_id.to_owned(),
            key: asked.key.map(str::to_owned),
            route: asked.route.to_owned(),
            backend: backend.to_owned(),
            outcome: if result.is_ok() { "done" } else { "failed" },
            error: result.err(),
        }
    }
}

/// One entry of the record: a decision, or an admin's action.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Decision(Box<Decision>),
    Action(Action),
}

impl Record {
    fn key(&self) -> Option<&str> {
        match self {
            Record::Decision(d) => d.key.as_deref(),
            Record::Action(a) => a.key.as_deref(),
        }
    }
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

/// Records kept for `/proxy/status`, and sent to `/proxy/events` as they come.
pub struct Decisions {
    recent: Mutex<VecDeque<Record>>,
    live: tokio::sync::broadcast::Sender<Record>,
}

impl Default for Decisions {
    fn default() -> Self {
        Decisions {
            recent: Mutex::default(),
            live: tokio::sync::broadcast::channel(LIVE_BACKLOG).0,
        }
    }
}

/// Records a slow `/proxy/events` reader may fall behind by before it skips some.
const LIVE_BACKLOG: usize = 64;

impl Decisions {
    pub fn record(&self, decision: Decision) {
        log_decision(&decision);
        self.keep(Record::Decision(Box::new(decision)));
    }

    pub fn record_action(&self, action: Action) {
        tracing::info!(
            route = %action.route,
            request_id = %action.request_id,
            key = action.key.as_deref(),
            backend = %action.backend,
            outcome = action.outcome,
            error = action.error.as_deref(),
            "{} backend={}: {}{}",
            action.route,
            action.backend,
            action.outcome,
            action.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
        );
        self.keep(Record::Action(action));
    }

    fn keep(&self, record: Record) {
        let _ = self.live.send(record.clone());
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == KEPT {
            recent.pop_front();
        }
        recent.push_back(record);
    }

    /// Oldest first: every record for an admin (or without keys), else the caller's own.
    pub fn recent(&self, caller: &Caller) -> Vec<Record> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent
            .iter()
            .filter(|r| visible(caller, r))
            .cloned()
            .collect()
    }

    /// Records as they come, from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Record> {
        self.live.subscribe()
    }
}

/// Whether `caller` may see `record`: an admin (or anyone without keys) every one, a key
/// its own.
pub fn visible(caller: &Caller, record: &Record) -> bool {
    caller.sees(record.key())
}

/// One readable line per decision at `info`, its parts as fields too (JSON logs carry
/// them), e.g. `txt2img req=… profile=flux (checkpoint flux1-dev-Q4_0.gguf) card 12288 MiB:
/// inference 10240 -> 4096, options sent (reload expected)`.
fn log_decision(d: &Decision) {
    let why = why_profile(&d.why_profile);
    let card = d.reading.as_ref().map(|r| r.total_mib);
    let line = decision_line(d, &why, card);
    if !crate::logs::json_logs() {
        tracing::info!("{line}");
        return;
    }
    tracing::info!(
        route = %d.route,
        request_id = %d.request_id,
        key = d.key.as_deref(),
        backend = %d.backend,
        profile = %d.profile,
        why_profile = %why,
        card_mib = card,
        inference_before_mib = d.inference_before_mib,
        inference_mib = d.inference_mib,
        outcome = d.outcome.as_str(),
        reason = d.reason.as_str(),
        "{line}"
    );
}

fn decision_line(d: &Decision, why: &str, card: Option<u64>) -> String {
    let mib = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
    let card = card.map_or_else(|| "card unknown".to_owned(), |c| format!("card {c} MiB"));
    let inference = match (d.inference_before_mib, d.inference_mib) {
        (before, Some(after)) if before != Some(after) => {
            format!("inference {} -> {after}", mib(before))
        }
        (_, Some(after)) => format!("inference {after}"),
        (before, None) => format!("inference {} (not computed)", mib(before)),
    };
    let key = d
        .key
        .as_deref()
        .map(|k| format!(" key={k}"))
        .unwrap_or_default();
    let what = match (d.outcome, d.reason) {
        (Outcome::Applied, Why::Changed) => "options sent (reload expected)".to_owned(),
        (Outcome::Applied, Why::OptionsChanged) => "options sent (profile options only)".to_owned(),
        (Outcome::Applied, Why::ClientValue) => "options sent (the client's own value)".to_owned(),
        (Outcome::Failed, _) => format!(
            "options call failed: {}",
            d.error.as_deref().unwrap_or("unknown error")
        ),
        (_, reason) => format!("options skipped ({})", reason.as_str().replace('_', " ")),
    };
    format!(
        "{} req={}{key} profile={} ({why}) {card}: {inference}, {what}",
        d.route, d.request_id, d.profile
    )
}

fn why_profile(reason: &Reason) -> String {
    match reason {
        Reason::Header(v) => format!("header {v}"),
        Reason::OverrideCheckpoint(v) => format!("checkpoint {v}"),
        Reason::OverridePreset(v) => format!("preset {v}"),
        Reason::BackendCheckpoint(v) => format!("loaded checkpoint {v}"),
        Reason::Default => "default profile".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::vram::ReadingSource;

    fn decision(outcome: Outcome, reason: Why) -> Decision {
        Decision {
            at_ms: 0,
            request_id: "r-1".to_owned(),
            key: None,
            route: "txt2img".to_owned(),
            backend: "http://127.0.0.1:7860".to_owned(),
            profile: "flux".to_owned(),
            why_profile: Reason::OverrideCheckpoint("flux1-dev-Q4_0.gguf".to_owned()),
            unknown_checkpoint: None,
            reading: Some(VramReading {
                source: ReadingSource::Nvml,
                total_mib: 12288,
                used_mib: 600,
                free_mib: 11688,
                other_processes_mib: 0,
                gpu_name: None,
            }),
            computed: None,
            inference_before_mib: Some(10240),
            inference_mib: Some(4096),
            options_sent: Map::new(),
            outcome,
            reason,
            error: None,
        }
    }

    #[test]
    fn a_decision_reads_as_one_line() {
        let d = decision(Outcome::Applied, Why::Changed);
        assert_eq!(
            decision_line(&d, &why_profile(&d.why_profile), Some(12288)),
            "txt2img req=r-1 profile=flux (checkpoint flux1-dev-Q4_0.gguf) card 12288 MiB: inference 10240 -> 4096, options sent (reload expected)"
        );
        let mut same = decision(Outcome::Skipped, Why::Same);
        same.inference_before_mib = Some(4096);
        same.key = Some("discord-bot".to_owned());
        assert_eq!(
            decision_line(&same, "default profile", None),
            "txt2img req=r-1 key=discord-bot profile=flux (default profile) card unknown: inference 4096, options skipped (same)"
        );
        let failed =
            decision(Outcome::Applied, Why::Changed).failed("backend answered 500".to_owned());
        assert!(decision_line(&failed, "x", Some(1))
            .ends_with("inference 10240 -> 4096, options call failed: backend answered 500"));
    }
}
