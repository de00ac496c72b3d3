//! Reading a JSON request body the way FastAPI does before any field is
//! validated: which bodies count as JSON, and the exact errors for a missing
//! body, undecodable bytes and malformed JSON.

use axum::http::{header, HeaderMap, StatusCode};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::json_error;

/// The decoded body: JSON when it was sent as JSON (or without a content
/// type), else the raw text, which then fails validation as not an object,
/// as in FastAPI. `None` for an empty body, which fails later, at
/// validation (after auth), with [`require`].
pub fn decode(headers: &HeaderMap, bytes: &[u8]) -> Result<Option<Value>, ApiError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    if !is_json_content_type(headers) {
        return Ok(Some(Value::String(
            String::from_utf8_lossy(bytes).into_owned(),
        )));
    }
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|_| {
        ApiError::http(
            StatusCode::BAD_REQUEST,
            "There was an error parsing the body",
        )
    })?;
    serde_json::from_str(text).map(Some).map_err(|_| {
        let (msg, pos) = match json_error::locate(text) {
            Some(error) => (error.msg, error.pos),
            None => ("Expecting value", 0),
        };
        ApiError::validation(json!({
            "type": "json_invalid",
            "loc": ["body", pos],
            "msg": "JSON decode error",
            "input": {},
            "ctx": { "error": msg },
        }))
    })
}

/// A required body that was empty: FastAPI's `missing` error.
pub fn require(body: Option<Value>) -> Result<Value, ApiError> {
    body.ok_or_else(|| {
        ApiError::validation(json!({
            "type": "missing",
            "loc": ["body"],
            "msg": "Field required",
            "input": null,
        }))
    })
}

/// FastAPI parses the body as JSON when there is no content type, or when
/// it is `application/json` or `application/*+json`.
fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let mime = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match mime.split_once('/') {
        Some(("application", subtype)) => subtype == "json" || subtype.ends_with("+json"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn json_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers
    }

    fn detail(error: ApiError) -> Value {
        match error {
            ApiError::Validation(errors) => json!(errors),
            other => panic!("not a validation error: {other:?}"),
        }
    }

    #[test]
    fn non_json_is_json_invalid_at_its_position() {
        let error = decode(&json_headers(), b"not json").unwrap_err();
        assert_eq!(
            detail(error),
            json!([{"type": "json_invalid", "loc": ["body", 0], "msg": "JSON decode error",
                    "input": {}, "ctx": {"error": "Expecting value"}}])
        );
        let error = decode(&json_headers(), br#"{"steps": 20"#).unwrap_err();
        assert_eq!(detail(error)[0]["loc"], json!(["body", 12]));
    }

    #[test]
    fn empty_body_is_missing() {
        let body = decode(&json_headers(), b"").unwrap();
        assert_eq!(detail(require(body).unwrap_err())[0]["type"], "missing");
    }

    #[test]
    fn body_without_content_type_is_still_json() {
        assert_eq!(
            decode(&HeaderMap::new(), b"{\"a\": 1}").unwrap(),
            Some(json!({"a": 1}))
        );
    }

    #[test]
    fn text_plain_body_is_kept_as_text() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert_eq!(
            decode(&headers, b"{\"a\": 1}").unwrap(),
            Some(json!("{\"a\": 1}"))
        );
    }

    #[test]
    fn invalid_utf8_is_a_400() {
        let error = decode(&json_headers(), b"{\"a\": \"\xff\"}").unwrap_err();
        assert!(
            matches!(error, ApiError::Http { status, .. } if status == StatusCode::BAD_REQUEST)
        );
    }
}
