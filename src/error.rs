//! Errors the proxy itself answers with, mapped to status codes in one place.
//!
//! The body follows the shape of Forge's own 500 answers (`error`, `detail`, `body`,
//! `message`) plus A1111's `errors`, so existing clients show the text to their users.

use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use serde_json::json;

use crate::access::Denied;
use crate::backend::forge::ForgeError;
use crate::decide::client_memory::Rejected;
use crate::decide::plan::PlanError;
use crate::decide::profile::UnknownProfile;
use crate::forward::client_body::ClientBodyError;
use crate::forward::{CallAnswer, ForwardError};
use crate::scheduler::Refused;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A forwarded request the backend did not answer, or a body over the limit.
    #[error(transparent)]
    Forward(#[from] ForwardError),

    #[error("request body is larger than the limit of {limit} bytes for bodies the proxy inspects (limits.max_inspected_body)")]
    InspectedBodyTooLarge { limit: u64 },

    #[error("no route {path} under the proxy's reserved prefix /proxy/")]
    UnknownProxyRoute { path: String },

    #[error("{0}")]
    UnknownModelType(#[from] UnknownProfile),

    #[error("{0}")]
    ClientMemoryOptions(#[from] Rejected),

    #[error(
        "could not prepare backend {backend} for the generation, which was not sent: {source}"
    )]
    OptionsFailed { backend: String, source: ForgeError },

    /// The client's body failed while the proxy read it.
    #[error("{0}")]
    ClientBodyFailed(ClientBodyError),

    /// `limits.max_inspected_total` is held by other bodies.
    #[error("the proxy holds {limit} bytes of request bodies for inspection, its limit (limits.max_inspected_total); try again in {}s", .retry_after.as_secs())]
    Busy {
        limit: u64,
        retry_after: std::time::Duration,
    },

    #[error("the client closed its side of the connection while its generation waited: it left the queue, and nothing was sent to Forge")]
    ClientClosedWhileQueued,

    /// A request no server should take (RFC 9112).
    #[error("{reason}")]
    Malformed { reason: String },

    #[error("{method} is not forwarded: this is a reverse proxy for Forge, not a tunnel")]
    NotForwarded { method: String },

    #[error("reading the request body failed: {reason}")]
    ClientBody { reason: String },

    #[error("{0}")]
    Refused(Refused),

    /// No key, an unknown key (401), or a role too low (403).
    #[error("{0}")]
    Denied(#[from] Denied),

    /// Forge refused the client's credentials to one of the calls the proxy made for it:
    /// the client gets Forge's own answer, as it would without the proxy.
    #[error("backend {backend} refused the client's credentials: {}", .answer.status)]
    BackendDenied {
        backend: String,
        answer: Box<CallAnswer>,
    },
}

impl From<PlanError> for ProxyError {
    fn from(error: PlanError) -> Self {
        match error {
            PlanError::UnknownModelType(unknown) => Self::UnknownModelType(unknown),
            PlanError::ClientMemoryOptions(refused) => Self::ClientMemoryOptions(refused),
        }
    }
}

/// A handler's result as a response; the proxy's own errors are logged with `what`.
pub fn respond(result: Result<Response, ProxyError>, what: &str) -> Response {
    result.unwrap_or_else(|error| {
        tracing::warn!(error = %error, "{what}");
        error.into_response()
    })
}

impl ProxyError {
    /// A failed call of the proxy's own before a generation: a backend that is down is
    /// reported as such, anything else as the options call that failed.
    pub fn preparing(backend: &str, source: ForgeError) -> Self {
        match source {
            ForgeError::Call {
                source: crate::forward::CallError::Unreachable(reason),
                ..
            } => Self::Forward(ForwardError::Unreachable {
                backend: backend.to_owned(),
                reason,
            }),
            ForgeError::Denied { answer, .. } => Self::BackendDenied {
                backend: backend.to_owned(),
                answer,
            },
            source => Self::OptionsFailed {
                backend: backend.to_owned(),
                source,
            },
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Forward(ForwardError::Unreachable { .. } | ForwardError::Failed { .. }) => {
                StatusCode::BAD_GATEWAY
            }
            Self::Forward(ForwardError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            Self::Forward(ForwardError::ClientBody(e)) | Self::ClientBodyFailed(e) => match e {
                ClientBodyError::Idle(_) => StatusCode::REQUEST_TIMEOUT,
                ClientBodyError::Broken(_) => StatusCode::BAD_REQUEST,
            },
            Self::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::ClientClosedWhileQueued | Self::Malformed { .. } => StatusCode::BAD_REQUEST,
            Self::NotForwarded { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Forward(ForwardError::BodyTooLarge { .. })
            | Self::InspectedBodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnknownProxyRoute { .. } => StatusCode::NOT_FOUND,
            Self::UnknownModelType(_) | Self::ClientMemoryOptions(_) | Self::ClientBody { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::OptionsFailed { .. } => StatusCode::BAD_GATEWAY,
            Self::Refused(Refused::KeyQueueFull { .. }) => StatusCode::TOO_MANY_REQUESTS,
            Self::Refused(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Denied(Denied::Role { .. }) => StatusCode::FORBIDDEN,
            Self::Denied(_) => StatusCode::UNAUTHORIZED,
            Self::BackendDenied { answer, .. } => answer.status,
        }
    }

    /// The `error` field: a stable name clients can match on, like Forge's exception names.
    fn kind(&self) -> &'static str {
        match self {
            Self::Forward(ForwardError::Unreachable { .. }) => "BackendUnreachable",
            Self::Forward(ForwardError::Timeout { .. }) => "BackendTimeout",
            Self::Forward(ForwardError::Failed { .. }) => "BackendFailed",
            Self::Forward(ForwardError::ClientBody(e)) | Self::ClientBodyFailed(e) => match e {
                ClientBodyError::Idle(_) => "RequestTimeout",
                ClientBodyError::Broken(_) => "BadRequestBody",
            },
            Self::Busy { .. } => "Busy",
            Self::ClientClosedWhileQueued => "ClientClosed",
            Self::Malformed { .. } => "BadRequest",
            Self::NotForwarded { .. } => "MethodNotAllowed",
            Self::Forward(ForwardError::BodyTooLarge { .. })
            | Self::InspectedBodyTooLarge { .. } => "PayloadTooLarge",
            Self::UnknownProxyRoute { .. } => "NotFound",
            Self::UnknownModelType(_) => "UnknownModelType",
            Self::ClientMemoryOptions(_) => "ClientMemoryOptions",
            Self::OptionsFailed { .. } => "OptionsCallFailed",
            Self::ClientBody { .. } => "BadRequestBody",
            Self::Refused(Refused::QueueFull { .. }) => "QueueFull",
            Self::Refused(Refused::NoBackend { .. }) => "NoHealthyBackend",
            Self::Refused(Refused::KeyQueueFull { .. }) => "KeyQueueFull",
            Self::Denied(Denied::Role { .. }) => "Forbidden",
            Self::Denied(_) => "Unauthorized",
            Self::BackendDenied { .. } => "BackendDenied",
        }
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        if let Self::BackendDenied { answer, .. } = self {
            return verbatim(*answer);
        }
        let message = format!("forge-vram-proxy: {self}");
        let body = json!({
            "error": self.kind(),
            "detail": message,
            "body": "",
            "message": message,
            "errors": message,
        });
        let retry_after = match &self {
            Self::Refused(
                Refused::QueueFull { retry_after, .. } | Refused::KeyQueueFull { retry_after, .. },
            ) => Some(retry_after.as_secs()),
            Self::Busy { retry_after, .. } => Some(retry_after.as_secs()),
            // An unhealthy backend comes back after its next good health check.
            Self::Refused(Refused::NoBackend { .. }) => Some(5),
            _ => None,
        };
        let mut response = (self.status(), Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            "x-forge-proxy-error",
            http::HeaderValue::from_static("true"),
        );
        if matches!(self, Self::Denied(Denied::NoKey | Denied::UnknownKey)) {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static(crate::access::CHALLENGE),
            );
        }
        if let Some(seconds) = retry_after {
            headers.insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(seconds.max(1)),
            );
        }
        response
    }
}

/// Forge's own answer, as Forge sent it: status, the headers a client acts on
/// (`WWW-Authenticate`, the body's type), and the body.
fn verbatim(answer: CallAnswer) -> Response {
    let mut response = Response::new(axum::body::Body::from(answer.body));
    *response.status_mut() = answer.status;
    for name in [
        http::header::WWW_AUTHENTICATE,
        http::header::CONTENT_TYPE,
        http::header::CONTENT_ENCODING,
    ] {
        for value in answer.headers.get_all(&name) {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(error: ProxyError) -> (StatusCode, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn timeout_is_504_in_forge_error_shape() {
        let (status, body) = body_of(ProxyError::Forward(ForwardError::Timeout {
            backend: "http://gpu:7860".into(),
            method: "GET".into(),
            path: "/sdapi/v1/progress".into(),
            after: std::time::Duration::from_millis(1500),
        }))
        .await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        let text = "forge-vram-proxy: backend http://gpu:7860 did not answer GET /sdapi/v1/progress within 1s 500ms";
        assert_eq!(
            body,
            json!({"error": "BackendTimeout", "detail": text, "body": "", "message": text, "errors": text})
        );
    }

    #[tokio::test]
    async fn each_error_has_its_status() {
        let unreachable = ProxyError::Forward(ForwardError::Unreachable {
            backend: "b".into(),
            reason: "connection refused".into(),
        });
        assert_eq!(body_of(unreachable).await.0, StatusCode::BAD_GATEWAY);
        assert_eq!(
            body_of(ProxyError::Forward(ForwardError::BodyTooLarge {
                limit: 10
            }))
            .await
            .0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let unknown = ProxyError::UnknownProxyRoute {
            path: "/proxy/x".into(),
        };
        assert_eq!(body_of(unknown).await.0, StatusCode::NOT_FOUND);
    }
}
