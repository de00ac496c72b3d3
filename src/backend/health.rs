//! Backend health: active checks on a timer, what requests observe on the way, and the
//! counter that says when a backend crosses a threshold.
//!
//! Active: a `GET /sdapi/v1/progress` (cheap) every `health.interval`, with the backend's
//! configured `auth` (Forge's `--api-auth` protects progress too); an answer below 500 is
//! healthy. A 401/403 keeps the backend in rotation (clients' own credentials still pass)
//! but is told apart: `/proxy/status` says the credentials are needed, or refused. Passive:
//! a refused connection makes a backend unhealthy at once; a 502/503/504 from it counts like
//! a failed check. An unhealthy backend gets no new work and its queue moves to the others;
//! it comes back after `health.healthy_after` good checks.

use http::{Method, StatusCode};
use tokio_util::sync::CancellationToken;

use crate::backend::forge::path;
use crate::backend::Credentials;
use crate::config::{self, BackendId};
use crate::forward::CallError;
use crate::state::AppState;

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

/// Starts one checking task per backend; they end with `stop`.
pub fn spawn_checks(state: &AppState, stop: &CancellationToken) {
    let Some(interval) = state.config.health.interval else {
        return;
    };
    for id in state.backends.ids() {
        let state = state.clone();
        let stop = stop.child_token();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                let event = check(&state, id).await;
                state.scheduler.report_health(id, event);
            }
        });
    }
}

async fn check(state: &AppState, id: BackendId) -> HealthEvent {
    let backend = &state.backends[id];
    let config = &backend.config;
    let timeout = Some(state.config.health.timeout);
    let answer = state
        .forwarder
        .call(
            config,
            Method::GET,
            path::PROGRESS,
            None,
            config.authorization.as_ref(),
            timeout,
        )
        .await;
    let (event, credentials) = judge(
        answer.map(|answer| answer.status),
        config.authorization.is_some(),
        id,
    );
    if let Some(credentials) = credentials {
        backend.update_view(|view| view.credentials = credentials);
    }
    event
}

/// What one check's answer says: the event, and what it learned of the credentials (nothing
/// when the backend could not answer).
fn judge(
    answer: Result<StatusCode, CallError>,
    auth_configured: bool,
    id: BackendId,
) -> (HealthEvent, Option<Credentials>) {
    match answer {
        Ok(status) if status.is_server_error() => {
            (HealthEvent::Failed(format!("check answered {status}")), None)
        }
        Ok(status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)) if auth_configured => (
            HealthEvent::Passed(format!("credentials refused: check answered {status}; {id}.auth is not one of Forge's --api-auth pairs")),
            Some(Credentials::Refused),
        ),
        Ok(status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)) => (
            HealthEvent::Passed(format!("credentials needed: check answered {status}; set {id}.auth to Forge's --api-auth user:pass")),
            Some(Credentials::Needed),
        ),
        Ok(status) => (
            HealthEvent::Passed(format!("check answered {status}")),
            Some(Credentials::Accepted),
        ),
        Err(e) => (HealthEvent::Failed(format!("check failed: {e}")), None),
    }
}

/// What a forwarded request saw of its backend.
pub fn observe_status(state: &AppState, id: BackendId, status: StatusCode) {
    if matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    ) {
        state
            .scheduler
            .report_health(id, HealthEvent::Failed(format!("answered {status}")));
    }
}

/// The backend refused a connection: unhealthy at once.
pub fn observe_unreachable(state: &AppState, id: BackendId, reason: &str) {
    state
        .scheduler
        .report_health(id, HealthEvent::Refused(format!("unreachable: {reason}")));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn is_ok(event: &HealthEvent) -> bool {
        matches!(event, HealthEvent::Passed(_))
    }

    fn note(event: &HealthEvent) -> &str {
        match event {
            HealthEvent::Passed(note) | HealthEvent::Failed(note) | HealthEvent::Refused(note) => {
                note
            }
        }
    }

    #[test]
    fn unauthorized_without_auth_configured_says_credentials_needed() {
        let (event, credentials) = judge(Ok(StatusCode::UNAUTHORIZED), false, BackendId(1));
        assert!(
            is_ok(&event),
            "still in rotation: clients' own credentials pass"
        );
        assert_eq!(credentials, Some(Credentials::Needed));
        assert_eq!(note(&event), "credentials needed: check answered 401 Unauthorized; set backends[1].auth to Forge's --api-auth user:pass");
    }

    #[test]
    fn unauthorized_with_auth_configured_says_credentials_refused() {
        let (event, credentials) = judge(Ok(StatusCode::UNAUTHORIZED), true, BackendId(0));
        assert!(is_ok(&event));
        assert_eq!(credentials, Some(Credentials::Refused));
        assert!(note(&event).starts_with("credentials refused: check answered 401 Unauthorized"));
    }

    #[test]
    fn a_good_answer_accepts_and_a_server_error_is_unhealthy() {
        assert_eq!(
            judge(Ok(StatusCode::OK), true, BackendId(0)),
            (
                HealthEvent::Passed("check answered 200 OK".to_owned()),
                Some(Credentials::Accepted)
            )
        );
        let (event, credentials) =
            judge(Ok(StatusCode::INTERNAL_SERVER_ERROR), false, BackendId(0));
        assert!(!is_ok(&event));
        assert_eq!(credentials, None);
    }

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
