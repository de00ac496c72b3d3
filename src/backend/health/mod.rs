//! Backend health: the counter that says when a backend crosses a threshold, fed by
//! [`check`]: active checks on a timer, and what requests observe on the way.
//!
//! Active: a `GET /sdapi/v1/progress` (cheap) every `health.interval`, with the backend's
//! configured `auth` (Forge's `--api-auth` protects progress too); an answer below 500 is
//! healthy. A 401/403 keeps the backend in rotation (clients' own credentials still pass)
//! but is told apart: `/proxy/status` says the credentials are needed, or refused. Passive:
//! a refused connection makes a backend unhealthy at once; a 502/503/504 from it counts like
//! a failed check. An unhealthy backend gets no new work and its queue moves to the others;
//! it comes back after `health.healthy_after` good checks.

pub mod check;

use crate::config;

/// One observation of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthEvent {
    /// A check passed; the note says what it saw.
    Passed(String),
    /// A check failed, or a forwarded request saw a 502/503/504: counted towards
    /// `health.unhealthy_after`.
    Failed(String),
    /// The backend refused a connection: unhealthy at once.
    Refused(String),
}

/// What an observation changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Back in rotation.
    Recovered,
    /// Out of rotation: no new work, its queue moves to the others.
    Lost,
}

/// A backend's health as counted from observations.
#[derive(Debug, Clone)]
pub struct HealthCounter {
    healthy: bool,
    /// Why the backend is unhealthy, or the last observation's note.
    note: String,
    failures: u32,
    successes: u32,
}

impl Default for HealthCounter {
    fn default() -> Self {
        HealthCounter {
            healthy: true,
            note: "not checked yet".to_owned(),
            failures: 0,
            successes: 0,
        }
    }
}

impl HealthCounter {
    /// A backend a reload added: out of rotation until its first check passes.
    pub fn joining() -> Self {
        HealthCounter {
            healthy: false,
            note: "joining: waits for its first health check".to_owned(),
            failures: 0,
            successes: 0,
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    pub fn note(&self) -> &str {
        &self.note
    }

    /// Counts `event` against `thresholds`; answers the transition it causes. Without active
    /// checks nothing would bring a backend back, so it is never taken out.
    pub fn observe(
        &mut self,
        event: HealthEvent,
        thresholds: &config::Health,
    ) -> Option<Transition> {
        let (failed, at_once, note) = match event {
            HealthEvent::Passed(note) => (false, false, note),
            HealthEvent::Failed(note) => (true, false, note),
            HealthEvent::Refused(note) => (true, true, note),
        };
        self.note = note;
        if !failed {
            self.failures = 0;
            self.successes += 1;
            if !self.healthy && self.successes >= thresholds.healthy_after {
                self.healthy = true;
                return Some(Transition::Recovered);
            }
            return None;
        }
        self.successes = 0;
        self.failures += 1;
        let can_return = thresholds.interval.is_some();
        if can_return && self.healthy && (at_once || self.failures >= thresholds.unhealthy_after) {
            self.healthy = false;
            return Some(Transition::Lost);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn thresholds(checks: bool) -> config::Health {
        config::Health {
            interval: checks.then_some(Duration::from_secs(5)),
            timeout: Duration::from_secs(3),
            unhealthy_after: 2,
            healthy_after: 2,
        }
    }

    #[test]
    fn the_counter_crosses_its_thresholds_once_each_way() {
        let mut counter = HealthCounter::default();
        let limits = thresholds(true);
        let failed = || HealthEvent::Failed("answered 502 Bad Gateway".into());
        let passed = || HealthEvent::Passed("check answered 200 OK".into());
        assert_eq!(counter.observe(failed(), &limits), None);
        assert_eq!(counter.observe(failed(), &limits), Some(Transition::Lost));
        assert_eq!(counter.observe(failed(), &limits), None, "told once");
        assert!(!counter.is_healthy());
        assert_eq!(counter.note(), "answered 502 Bad Gateway");
        assert_eq!(counter.observe(passed(), &limits), None);
        assert_eq!(
            counter.observe(passed(), &limits),
            Some(Transition::Recovered)
        );
        assert!(counter.is_healthy());
        // A refused connection needs no second observation.
        let refused = HealthEvent::Refused("unreachable: Connection refused".into());
        assert_eq!(counter.observe(refused, &limits), Some(Transition::Lost));
    }

    #[test]
    fn without_active_checks_a_backend_stays_in_rotation() {
        let mut counter = HealthCounter::default();
        let refused = HealthEvent::Refused("unreachable: Connection refused".into());
        assert_eq!(counter.observe(refused, &thresholds(false)), None);
        assert!(counter.is_healthy());
    }
}
