//! The last hour in memory, one sample every ten seconds, for the dashboard's charts
//! (`/proxy/history`): what each backend looked like, and what happened in between.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// Samples kept: an hour at [`SAMPLE_EVERY`].
const SAMPLES: usize = 360;
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// The last hour, one sample every ten seconds, for the dashboard's charts.
#[derive(Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
    /// Since the last sample: model reloads, and generation seconds by profile.
    pending: Mutex<Pending>,
}

#[derive(Default)]
pub struct Pending {
    pub reloads: u64,
    generations: BTreeMap<String, (f64, u32)>,
}

impl Pending {
    /// Mean generation seconds by profile.
    pub fn mean_generation_s(self) -> BTreeMap<String, f64> {
        self.generations
            .into_iter()
            .map(|(profile, (sum, n))| (profile, sum / f64::from(n.max(1))))
            .collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub at_ms: u128,
    /// By backend, in `/proxy/status` order.
    pub backends: Vec<BackendSample>,
    /// Model reloads (profile switches) since the sample before.
    pub reloads: u64,
    /// Mean generation time (seconds) by profile since the sample before.
    pub generation_s: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackendSample {
    pub url: String,
    pub inference_mib: Option<f64>,
    pub vram_used_mib: Option<u64>,
    pub vram_total_mib: Option<u64>,
    pub queue: usize,
}

impl History {
    /// A generation of `profile` took `seconds` (to its response headers).
    pub fn generation(&self, profile: &str, seconds: f64) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let entry = pending
            .generations
            .entry(profile.to_owned())
            .or_insert((0.0, 0));
        entry.0 += seconds;
        entry.1 += 1;
    }

    /// A backend moved to another profile (a model reload).
    pub fn reload(&self) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reloads += 1;
    }

    /// What happened since the last sample, handed over.
    pub fn take_pending(&self) -> Pending {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A new sample; the oldest goes beyond an hour.
    pub fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    pub fn all(&self) -> Vec<Sample> {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.iter().cloned().collect()
    }
}
