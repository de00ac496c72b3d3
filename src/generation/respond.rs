//! Stage 6: what the client is told of the decision (response headers), and what the proxy
//! keeps of it: the backend's loaded profile and applied memory, and the metrics.

use std::time::Duration;

use http::header::{HeaderName, HeaderValue};

use crate::backend::vram::{ReadingSource, VramReading};
use crate::backend::Backend;
use crate::config::Config;
use crate::config::ProfileId;
use crate::decide::plan::Plan;
use crate::state::AppState;

/// The client's explicit profile; removed before forwarding, on every route.
pub const MODEL_TYPE_HEADER: HeaderName = HeaderName::from_static("x-forge-model-type");
pub const PROFILE_HEADER: &str = "x-forge-proxy-profile";
pub const INFERENCE_MEMORY_HEADER: &str = "x-forge-proxy-inference-memory";
pub const GPU_WEIGHTS_HEADER: &str = "x-forge-proxy-gpu-weights";
pub const OPTIONS_APPLIED_HEADER: &str = "x-forge-proxy-options-applied";
pub const VRAM_SOURCE_HEADER: &str = "x-forge-proxy-vram-source";

/// What the response tells the client of the decision.
#[derive(Debug, Clone)]
pub struct Told {
    profile: String,
    inference_memory_mib: Option<u64>,
    gpu_weights_mib: Option<u64>,
    options_applied: bool,
    vram_source: Option<ReadingSource>,
}

impl Told {
    pub fn of(plan: &Plan, reading: Option<&VramReading>) -> Self {
        Told {
            profile: plan.profile_name.clone(),
            inference_memory_mib: plan.inference_memory_mib,
            gpu_weights_mib: plan.gpu_weights_mib,
            options_applied: !plan.options.is_empty(),
            vram_source: reading.map(|r| r.source),
        }
    }

    /// Puts the decision in the response's headers.
    pub fn describe(&self, headers: &mut http::HeaderMap) {
        put(headers, PROFILE_HEADER, &self.profile);
        if let Some(mib) = self.inference_memory_mib {
            put(headers, INFERENCE_MEMORY_HEADER, &mib.to_string());
        }
        if let Some(mib) = self.gpu_weights_mib {
            put(headers, GPU_WEIGHTS_HEADER, &mib.to_string());
        }
        let applied = if self.options_applied {
            "true"
        } else {
            "false"
        };
        put(headers, OPTIONS_APPLIED_HEADER, applied);
        let source = self.vram_source.map_or("none", ReadingSource::as_str);
        put(headers, VRAM_SOURCE_HEADER, source);
    }

    /// Forge answered after `took`: the generation's duration, by profile.
    pub fn finished(&self, state: &AppState, backend: &Backend, took: Duration) {
        state
            .metrics
            .generation_seconds(&backend.config.url, &self.profile, took.as_secs_f64());
        state.history.generation(&self.profile, took.as_secs_f64());
    }
}

fn put(headers: &mut http::HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

/// Counts a move of `backend` from the profile it `had` to the plan's, and keeps the
/// applied memory for the metrics.
pub fn note_profile(
    state: &AppState,
    config: &Config,
    backend: &Backend,
    plan: &Plan,
    had: Option<ProfileId>,
) {
    if let Some(had) = had.filter(|had| *had != plan.profile) {
        let previous = &config.profile(had).name;
        state
            .metrics
            .profile_switch(&backend.config.url, previous, &plan.profile_name);
        state.history.reload();
    }
    if let Some(mib) = plan.inference_memory_mib {
        state.metrics.inference_memory(&backend.config.url, mib);
    }
}
