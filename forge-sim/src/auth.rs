//! `--api-auth`: FastAPI's `HTTPBasic` followed by Forge's credential check,
//! with their exact 401 answers.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use crate::error::ApiError;
use crate::state::SimState;

/// Checks HTTP Basic credentials against `credentials`; no credentials
/// configured means no auth, as in Forge without `--api-auth`.
pub fn check(credentials: &[(String, String)], headers: &HeaderMap) -> Result<(), ApiError> {
    if credentials.is_empty() {
        return Ok(());
    }
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let (scheme, param) = authorization.split_once(' ').unwrap_or((authorization, ""));
    if authorization.is_empty() || !scheme.eq_ignore_ascii_case("basic") {
        return Err(ApiError::Unauthorized("Not authenticated"));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(param.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|text| text.is_ascii());
    let Some((user, pass)) = decoded.as_deref().and_then(|text| text.split_once(':')) else {
        return Err(ApiError::Unauthorized("Invalid authentication credentials"));
    };
    // Forge keeps one password per user name, the last one given.
    let expected = credentials
        .iter()
        .rev()
        .find(|(known_user, _)| known_user == user)
        .map(|(_, known_pass)| known_pass);
    match expected {
        Some(known_pass) if constant_time_eq(known_pass.as_bytes(), pass.as_bytes()) => Ok(()),
        _ => Err(ApiError::Unauthorized("Incorrect username or password")),
    }
}

/// Route layer for the /sdapi routes that need auth and have no JSON body
/// (those with a body check auth themselves, after decoding it, as FastAPI
/// does).
pub async fn require_auth(State(state): State<SimState>, request: Request, next: Next) -> Response {
    match check(state.credentials(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

/// `secrets.compare_digest`.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn creds() -> Vec<(String, String)> {
        vec![("user".into(), "pass".into())]
    }

    fn with_auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn basic(user_pass: &str) -> HeaderMap {
        with_auth(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        ))
    }

    fn detail(result: Result<(), ApiError>) -> &'static str {
        match result {
            Err(ApiError::Unauthorized(detail)) => detail,
            other => panic!("expected 401, got {other:?}"),
        }
    }

    #[test]
    fn no_auth_configured_lets_everything_through() {
        assert!(check(&[], &HeaderMap::new()).is_ok());
    }

    #[test]
    fn right_credentials_pass() {
        assert!(check(&creds(), &basic("user:pass")).is_ok());
    }

    #[test]
    fn missing_or_other_scheme_is_not_authenticated() {
        assert_eq!(
            detail(check(&creds(), &HeaderMap::new())),
            "Not authenticated"
        );
        assert_eq!(
            detail(check(&creds(), &with_auth("Bearer x"))),
            "Not authenticated"
        );
    }

    #[test]
    fn wrong_credentials_are_incorrect() {
        assert_eq!(
            detail(check(&creds(), &basic("user:nope"))),
            "Incorrect username or password"
        );
        assert_eq!(
            detail(check(&creds(), &basic("who:pass"))),
            "Incorrect username or password"
        );
    }

    #[test]
    fn undecodable_credentials_are_invalid() {
        assert_eq!(
            detail(check(&creds(), &with_auth("Basic !!!"))),
            "Invalid authentication credentials"
        );
        assert_eq!(
            detail(check(&creds(), &basic("nocolon"))),
            "Invalid authentication credentials"
        );
    }
}
