//! How long a generation and a model reload take: learned from the generations that
//! finished, with priors until something is learned.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, ProfileId};

/// Before the first generations are measured: a generation.
const INITIAL_DURATION: Duration = Duration::from_secs(10);
/// Until a reload has been measured it is taken to cost this share of the profile's
/// generation (an estimate in the backends' own time scale, not a fixed number of seconds).
/// A reload moves weights where a generation samples many steps, so below one: with nothing
/// learned, an idle backend, even one that must reload, is preferred to a queue.
const PRIOR_RELOAD_SHARE: f64 = 0.25;
/// Weight of a new measurement in the running estimates.
const LEARNING_RATE: f64 = 0.3;

/// Running estimates per profile of a generation's duration, and of a reload (seconds).
#[derive(Debug, Clone)]
pub struct Estimates {
    durations: Vec<Option<f64>>,
    reload: Option<f64>,
}

impl Estimates {
    pub fn new(profiles: usize) -> Self {
        Estimates {
            durations: vec![None; profiles],
            reload: None,
        }
    }

    /// A generation of `profile`: what was learned for it, else the average of what was
    /// learned for the others (the backends' own time scale), else [`INITIAL_DURATION`].
    pub fn duration(&self, profile: Option<ProfileId>) -> Duration {
        let learned = profile.and_then(|p| self.durations[p.0]).or_else(|| {
            let (sum, count) = self
                .durations
                .iter()
                .flatten()
                .fold((0.0, 0u32), |(sum, count), d| (sum + d, count + 1));
            (count > 0).then(|| sum / f64::from(count))
        });
        learned.map_or(INITIAL_DURATION, Duration::from_secs_f64)
    }

    /// A model reload to `profile`: what was learned of reloads, else a share of the
    /// profile's generation ([`PRIOR_RELOAD_SHARE`]).
    pub fn reload(&self, profile: Option<ProfileId>) -> Duration {
        self.reload.map_or_else(
            || self.duration(profile).mul_f64(PRIOR_RELOAD_SHARE),
            Duration::from_secs_f64,
        )
    }

    /// A generation of `profile` took `took`; when it `switched` profile, what it took beyond
    /// the profile's usual time was the reload.
    pub fn learn(&mut self, profile: Option<ProfileId>, took: Duration, switched: Switched) {
        let seconds = took.as_secs_f64();
        let blend = |old: Option<f64>, new: f64| {
            Some(old.map_or(new, |old| old + LEARNING_RATE * (new - old)))
        };
        let Some(ProfileId(p)) = profile else {
            return;
        };
        match switched {
            Switched::No => self.durations[p] = blend(self.durations[p], seconds),
            Switched::Yes => {
                let usual = self.durations[p].unwrap_or(seconds);
                self.reload = blend(self.reload, (seconds - usual).max(0.0));
                if self.durations[p].is_none() {
                    self.durations[p] = Some(seconds);
                }
            }
        }
    }

    /// The same estimates for the profiles of `new`, matched by name with those of `old`.
    pub fn renamed(&self, old: &Config, new: &Config) -> Estimates {
        Estimates {
            durations: new
                .profiles
                .iter()
                .map(|profile| {
                    old.profile_named(&profile.name)
                        .and_then(|p| self.durations.get(p.0).copied().flatten())
                })
                .collect(),
            reload: self.reload,
        }
    }

    /// What was learned, by profile name, for `/proxy/status`.
    pub fn learned(&self, config: &Config) -> Learned {
        Learned {
            duration_s: config
                .profiles
                .iter()
                .zip(&self.durations)
                .filter_map(|(profile, d)| d.map(|d| (profile.name.clone(), d)))
                .collect(),
            reload_s: self.reload,
        }
    }

    #[cfg(test)]
    pub fn set(&mut self, profile: ProfileId, duration_s: f64, reload_s: f64) {
        self.durations[profile.0] = Some(duration_s);
        self.reload = Some(reload_s);
    }
}

/// Whether a generation had to load another profile first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switched {
    No,
    Yes,
}

/// The learned estimates, as `/proxy/status` shows them.
#[derive(Debug, Clone, Serialize)]
pub struct Learned {
    /// Learned duration of a generation per profile, in seconds.
    pub duration_s: BTreeMap<String, f64>,
    /// Learned cost of a model reload, in seconds.
    pub reload_s: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SD15: Option<ProfileId> = Some(ProfileId(2));
    const FLUX: Option<ProfileId> = Some(ProfileId(0));

    #[test]
    fn priors_stand_until_something_is_learned() {
        let estimates = Estimates::new(3);
        assert_eq!(estimates.duration(SD15), INITIAL_DURATION);
        assert_eq!(estimates.reload(SD15), INITIAL_DURATION / 4);
    }

    #[test]
    fn an_unlearned_profile_takes_the_others_average_and_a_reload_is_what_a_switch_adds() {
        let mut estimates = Estimates::new(3);
        estimates.learn(SD15, Duration::from_secs(2), Switched::No);
        assert_eq!(estimates.duration(FLUX), Duration::from_secs(2));
        estimates.learn(SD15, Duration::from_secs(12), Switched::Yes);
        assert_eq!(estimates.reload(FLUX), Duration::from_secs(10));
        estimates.learn(SD15, Duration::from_secs(12), Switched::No);
        assert_eq!(estimates.duration(SD15), Duration::from_secs(5));
    }
}
