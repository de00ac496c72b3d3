//! Backend health: active checks on a timer, and what requests observe on the way.
//!
//! Active: a `GET /sdapi/v1/progress` (cheap, and open even with `--api-auth`) every
//! `health.interval`; an answer below 500 is healthy. Passive: a refused connection makes a
//! backend unhealthy at once; a 502/503/504 from it counts like a failed check. An
//! unhealthy backend gets no new work and its queue moves to the others; it comes back
//! after `health.healthy_after` good checks.

use http::{Method, StatusCode};
use tokio_util::sync::CancellationToken;

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
    let backend = &state.backends[index].config;
    let timeout = Some(state.config.health.timeout);
    match state
        .forwarder
        .call(backend, Method::GET, CHECK_PATH, None, None, timeout)
        .await
    {
        Ok((status, _)) if status.is_server_error() => (false, format!("check answered {status}")),
        Ok((status, _)) => (true, format!("check answered {status}")),
        Err(e) => (false, format!("check failed: {e}")),
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
