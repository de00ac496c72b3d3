//! Reading a JSON request body the way FastAPI does before any field is
//! validated: which bodies count as JSON, and the exact errors for a missing
//! body, undecodable bytes and malformed JSON.

use axum::http::{header, HeaderMap, StatusCode};
use forge_schema::body::{self, NonFinite};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::json_error;

/// A decoded JSON body, with the members that held `NaN` or an infinity (which the value
/// carries as `null`, as Forge echoes them).
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub value: Value,
    pub non_finite: Vec<(String, NonFinite)>,
}

impl From<Value> for Decoded {
    fn from(value: Value) -> Self {
        Decoded {
            value,
            non_finite: Vec::new(),
        }
    }
}

/// The decoded body: JSON when it was sent as JSON (or without a content type), read as
/// Python's `json.loads(bytes)` reads it (a UTF-8 byte-order mark, UTF-16 and UTF-32,
/// `NaN` and `Infinity`), else the raw text, which then fails validation as not an object,
/// as in FastAPI. `None` for an empty body, which fails later, at validation (after auth),
/// with [`require`].
pub fn decode(headers: &HeaderMap, bytes: &[u8]) -> Result<Option<Decoded>, ApiError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let content_type = headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes());
    if !body::is_json_content_type(content_type) {
        return Ok(Some(
            Value::String(String::from_utf8_lossy(bytes).into_owned()).into(),
        ));
    }
    let text = body::decode_text(bytes).map_err(|_| {
        ApiError::http(
            StatusCode::BAD_REQUEST,
            "There was an error parsing the body",
        )
    })?;
    // serde_json reads the common case; Python's extra tokens take the slower reader.
    if let Ok(value) = serde_json::from_str::<Value>(&text) {
        return Ok(Some(value.into()));
    }
    if let Ok((value, non_finite)) = body::to_value_with_members(&text) {
        return Ok(Some(Decoded { value, non_finite }));
    }
    let (msg, pos) = match json_error::locate(&text) {
        Some(error) => (error.msg, error.pos),
        None => ("Expecting value", 0),
    };
    Err(ApiError::validation(json!({
        "type": "json_invalid",
        "loc": ["body", pos],
        "msg": "JSON decode error",
        "input": {},
        "ctx": { "error": msg },
    })))
}

/// A required body that was empty: FastAPI's `missing` error.
pub fn require(body: Option<Decoded>) -> Result<Decoded, ApiError> {
    body.ok_or_else(|| {
        ApiError::validation(json!({
            "type": "missing",
            "loc": ["body"],
            "msg": "Field required",
            "input": null,
        }))
    })
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
            Some(json!({"a": 1}).into())
        );
    }

    #[test]
    fn text_plain_body_is_kept_as_text() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert_eq!(
            decode(&headers, b"{\"a\": 1}").unwrap(),
            Some(json!("{\"a\": 1}").into())
        );
    }

    #[test]
    fn pythons_encodings_and_non_finite_tokens_are_json() {
        let utf16: Vec<u8> = b"\xff\xfe"
            .iter()
            .copied()
            .chain("{\"a\": 1}".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        assert_eq!(
            decode(&json_headers(), &utf16).unwrap(),
            Some(json!({"a": 1}).into())
        );
        assert_eq!(
            decode(&json_headers(), b"\xef\xbb\xbf{\"a\": 1}").unwrap(),
            Some(json!({"a": 1}).into())
        );
        assert_eq!(
            decode(&json_headers(), b"{\"cfg_scale\": NaN, \"a\": [Infinity]}").unwrap(),
            Some(Decoded {
                value: json!({"cfg_scale": null, "a": [null]}),
                non_finite: vec![
                    ("cfg_scale".into(), NonFinite::Itself),
                    ("a".into(), NonFinite::Inside)
                ],
            })
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
