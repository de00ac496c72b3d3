//! Every error answer the simulator gives, in Forge's shapes, mapped to
//! status codes in one place.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::{json, Value};

/// What a client sees when a request fails.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// FastAPI's request validation failure: 422 `{"detail": [errors]}`.
    #[error("request validation failed")]
    Validation(Vec<Value>),
    /// A raised `HTTPException`: `{"detail": "..."}` with its status.
    #[error("{status}: {detail}")]
    Http { status: StatusCode, detail: String },
    /// FastAPI `HTTPBasic` / Forge's `auth`: 401 with `WWW-Authenticate: Basic`.
    #[error("401: {0}")]
    Unauthorized(&'static str),
    /// An unhandled Python exception: 500
    /// `{"error": type, "detail": "", "body": "", "message": str(e)}`.
    #[error("{error}: {message}")]
    Exception {
        error: &'static str,
        message: String,
    },
    /// No route: 404 `{"detail": "Not Found"}`.
    #[error("not found")]
    NotFound,
}

impl ApiError {
    pub fn http(status: StatusCode, detail: impl Into<String>) -> ApiError {
        ApiError::Http {
            status,
            detail: detail.into(),
        }
    }

    /// `RuntimeError(message)`, e.g. an unknown checkpoint.
    pub fn runtime(message: impl Into<String>) -> ApiError {
        ApiError::Exception {
            error: "RuntimeError",
            message: message.into(),
        }
    }

    /// A single FastAPI validation error.
    pub fn validation(error: Value) -> ApiError {
        ApiError::Validation(vec![error])
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Validation(errors) => {
                let detail: Vec<Ordered<'_>> = errors
                    .iter()
                    .map(|error| Ordered(error, &["type", "loc", "msg", "input", "ctx"]))
                    .collect();
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Json(ValidationBody { detail }),
                )
                    .into_response()
            }
            ApiError::Http { status, detail } => {
                (status, Json(json!({ "detail": detail }))).into_response()
            }
            ApiError::Unauthorized(detail) => {
                let mut response =
                    (StatusCode::UNAUTHORIZED, Json(json!({ "detail": detail }))).into_response();
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
                response
            }
            ApiError::Exception { error, message } => {
                let body = json!({ "error": error, "detail": "", "body": "", "message": message });
                let mut response = (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(Ordered(&body, &["error", "detail", "body", "message"])),
                )
                    .into_response();
                response.extensions_mut().insert(CloseConnection);
                response
            }
            ApiError::NotFound => (
                StatusCode::NOT_FOUND,
                Json(json!({ "detail": "Not Found" })),
            )
                .into_response(),
        }
    }
}

/// Marks an answer after which the connection closes. Forge answers an exception through
/// Starlette's `ServerErrorMiddleware`, which sends the handler's 500 and then raises the
/// exception again; uvicorn then drops the connection (no `connection: close` header), so a
/// client that reuses it sees it reset.
#[derive(Clone, Copy, Debug)]
pub struct CloseConnection;

/// FastAPI's 422 body.
#[derive(Serialize)]
struct ValidationBody<'a> {
    detail: Vec<Ordered<'a>>,
}

/// A JSON object written with the given keys first, in that order, as
/// Python writes its dicts (serde_json's map would sort them).
struct Ordered<'a>(&'a Value, &'static [&'static str]);

impl Serialize for Ordered<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Value::Object(map) = self.0 else {
            return self.0.serialize(serializer);
        };
        let mut out = serializer.serialize_map(Some(map.len()))?;
        for key in self.1 {
            if let Some(value) = map.get(*key) {
                out.serialize_entry(key, value)?;
            }
        }
        for (key, value) in map {
            if !self.1.contains(&key.as_str()) {
                out.serialize_entry(key, value)?;
            }
        }
        out.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthorized_carries_www_authenticate_basic() {
        let response = ApiError::Unauthorized("Not authenticated").into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Basic");
    }

    #[test]
    fn bodies_keep_pythons_key_order() {
        let error = json!({"input": 1, "loc": ["body"], "msg": "m", "type": "t"});
        let body = ValidationBody {
            detail: vec![Ordered(&error, &["type", "loc", "msg", "input", "ctx"])],
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"detail":[{"type":"t","loc":["body"],"msg":"m","input":1}]}"#
        );
    }

    #[test]
    fn exceptions_are_500() {
        let response = ApiError::runtime("model 'x' not found").into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
