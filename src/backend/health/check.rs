//! The observations that feed a backend's health counter: an active check on a timer (a
//! `GET /sdapi/v1/progress` with the backend's configured `auth`), and what forwarded
//! requests see of their backend.

use http::{Method, StatusCode};
use tokio_util::sync::CancellationToken;

use crate::backend::forge::path;
use crate::backend::health::HealthEvent;
use crate::backend::Credentials;
use crate::config::BackendId;
use crate::forward::CallError;
use crate::state::AppState;

/// Starts one checking task per backend; they end with `stop`.
pub fn spawn_checks(state: &AppState, stop: &CancellationToken) {
    for id in state.backends.ids() {
        spawn_check(state, id, stop);
    }
}

/// With `health.interval = "off"`, how often a check task looks whether a reload turned
/// checks on.
const CHECKS_OFF_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Checks backend `id` at once, then every `health.interval` as configured at each turn,
/// until `stop`, or until a reload removed the backend and it has finished its work.
pub fn spawn_check(state: &AppState, id: BackendId, stop: &CancellationToken) {
    let state = state.clone();
    let stop = stop.child_token();
    tokio::spawn(async move {
        loop {
            let interval = state.config().health.interval;
            if interval.is_some() {
                let event = tokio::select! {
                    () = stop.cancelled() => return,
                    event = check(&state, id) => event,
                };
                state.scheduler.report_health(id, event);
            }
            if state.scheduler.is_drained(id) {
                return;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval.unwrap_or(CHECKS_OFF_POLL)) => {}
            }
        }
    });
}

async fn check(state: &AppState, id: BackendId) -> HealthEvent {
    let backend = &*state.backends.get(id);
    let config = &backend.config;
    let timeout = Some(state.config().health.timeout);
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
}
