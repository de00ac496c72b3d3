//! Backend health: active checks on a timer, and what requests observe on the way.
//!
//! Active: a `GET /sdapi/v1/progress` (cheap) every `health.interval`, with the backend's
//! configured `auth` (Forge's `--api-auth` protects progress too); an answer below 500 is
//! healthy. A 401/403 keeps the backend in rotation (clients' own credentials still pass) but
//! is told apart: `/proxy/status` says the credentials are needed, or refused. Passive: a refused connection makes a
//! backend unhealthy at once; a 502/503/504 from it counts like a failed check. An
//! unhealthy backend gets no new work and its queue moves to the others; it comes back
//! after `health.healthy_after` good checks.

use http::{Method, StatusCode};
use tokio_util::sync::CancellationToken;

use crate::backend::Credentials;
use crate::forward::CallError;
use crate::state::AppState;

const CHECK_PATH: &str = "/sdapi/v1/progress";

/// Starts one checking task per backend; they end with `stop`.
pub fn spawn_checks(state: &AppState, stop: &CancellationToken) {
    let Some(interval) = state.config.health.interval else {
        return;
    };
    for index in 0..state.backends.len() {
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
                let (ok, note) = check(&state, index).await;
                state.scheduler.report_health(index, ok, note, false);
            }
        });
    }
}

async fn check(state: &AppState, index: usize) -> (bool, String) {
    let backend = &state.backends[index];
    let config = &backend.config;
    let timeout = Some(state.config.health.timeout);
    let answer = state
        .forwarder
        .call(
            config,
            Method::GET,
            CHECK_PATH,
            None,
            config.authorization.as_ref(),
            timeout,
        )
        .await;
    let (ok, note, credentials) = judge(
        answer.map(|answer| answer.status),
        config.authorization.is_some(),
        index,
    );
    if let Some(credentials) = credentials {
        backend.update_view(|view| view.credentials = credentials);
    }
    (ok, note)
}

/// What one check's answer says: healthy or not, the note for `/proxy/status`, and what it
/// learned of the credentials (nothing when the backend could not answer).
fn judge(
    answer: Result<StatusCode, CallError>,
    auth_configured: bool,
    index: usize,
) -> (bool, String, Option<Credentials>) {
    match answer {
        Ok(status) if status.is_server_error() => {
            (false, format!("check answered {status}"), None)
        }
        Ok(status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)) if auth_configured => (
            true,
            format!("credentials refused: check answered {status}; backends[{index}].auth is not one of Forge's --api-auth pairs"),
            Some(Credentials::Refused),
        ),
        Ok(status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)) => (
            true,
            format!("credentials needed: check answered {status}; set backends[{index}].auth to Forge's --api-auth user:pass"),
            Some(Credentials::Needed),
        ),
        Ok(status) => (
            true,
            format!("check answered {status}"),
            Some(Credentials::Accepted),
        ),
        Err(e) => (false, format!("check failed: {e}"), None),
    }
}

/// What a forwarded request saw of its backend.
pub fn observe_status(state: &AppState, index: usize, status: StatusCode) {
    if matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    ) {
        state
            .scheduler
            .report_health(index, false, format!("answered {status}"), false);
    }
}

/// The backend refused a connection: unhealthy at once.
pub fn observe_unreachable(state: &AppState, index: usize, reason: &str) {
    state
        .scheduler
        .report_health(index, false, format!("unreachable: {reason}"), true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthorized_without_auth_configured_says_credentials_needed() {
        let (ok, note, credentials) = judge(Ok(StatusCode::UNAUTHORIZED), false, 1);
        assert!(ok, "still in rotation: clients' own credentials pass");
        assert_eq!(credentials, Some(Credentials::Needed));
        assert_eq!(note, "credentials needed: check answered 401 Unauthorized; set backends[1].auth to Forge's --api-auth user:pass");
    }

    #[test]
    fn unauthorized_with_auth_configured_says_credentials_refused() {
        let (ok, note, credentials) = judge(Ok(StatusCode::UNAUTHORIZED), true, 0);
        assert!(ok);
        assert_eq!(credentials, Some(Credentials::Refused));
        assert!(note.starts_with("credentials refused: check answered 401 Unauthorized"));
    }

    #[test]
    fn a_good_answer_accepts_and_a_server_error_is_unhealthy() {
        assert_eq!(
            judge(Ok(StatusCode::OK), true, 0),
            (
                true,
                "check answered 200 OK".to_owned(),
                Some(Credentials::Accepted)
            )
        );
        let (ok, _, credentials) = judge(Ok(StatusCode::INTERNAL_SERVER_ERROR), false, 0);
        assert!(!ok);
        assert_eq!(credentials, None);
    }
}
