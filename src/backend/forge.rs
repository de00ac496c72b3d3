//! The proxy's own calls to Forge, and every Forge path and option key the proxy names.
//!
//! Whose credentials a call carries decides what Forge lets it do. A call made for a client
//! (reading the options before its generation, changing them for it) carries that client's
//! `Authorization` and nothing else: with Forge's `--api-auth`, a client Forge would refuse
//! is refused, with Forge's own answer, before anything is changed for it. The backend's
//! configured `auth` serves the proxy's own calls: health checks, and reads that change
//! nothing (the checkpoint catalog, the status page's readings).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method};
use serde_json::{Map, Value};

use crate::access::Caller;
use crate::config::BackendConfig;
use crate::forward::{CallAnswer, CallError, Forwarder};

/// `GET`/`POST /sdapi/v1/options` answer in milliseconds; a backend that takes longer is stuck.
pub const OPTIONS_TIMEOUT: Duration = Duration::from_secs(30);
const MIB: f64 = 1024.0 * 1024.0;

/// Why a call to Forge failed, as the client's error message says it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ForgeError {
    #[error("{method} {path}: {source}")]
    Call {
        method: Method,
        path: &'static str,
        source: CallError,
    },
    /// Forge refused the credentials (401/403): its answer goes to the client as it is.
    #[error("{method} {path}: backend answered {}", .answer.status)]
    Denied {
        method: Method,
        path: &'static str,
        answer: Box<CallAnswer>,
    },
    #[error("{method} {path}: backend answered {status}: {detail}")]
    Status {
        method: Method,
        path: &'static str,
        status: u16,
        detail: String,
    },
    #[error("{method} {path}: unexpected answer: {detail}")]
    Invalid {
        method: Method,
        path: &'static str,
        detail: String,
    },
}

/// The memory a backend reports at `/sdapi/v1/memory`, in MiB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackendMemory {
    pub total_mib: u64,
    pub used_mib: u64,
    pub free_mib: u64,
}

/// One backend, as seen by the proxy's own calls.
pub struct Forge<'a> {
    pub forwarder: &'a Forwarder,
    pub backend: &'a BackendConfig,
    /// What the calls carry in `Authorization`.
    pub authorization: Option<HeaderValue>,
}

impl<'a> Forge<'a> {
    /// Calls made for a client: the credentials it may use ([`Caller::authorization_for`]).
    pub fn for_client(
        forwarder: &'a Forwarder,
        backend: &'a BackendConfig,
        client: &Caller,
    ) -> Self {
        Self {
            forwarder,
            backend,
            authorization: client.authorization_for(backend).cloned(),
        }
    }

    /// The proxy's own calls: the backend's configured credentials.
    pub fn own(forwarder: &'a Forwarder, backend: &'a BackendConfig) -> Self {
        Self {
            forwarder,
            backend,
            authorization: backend.authorization.clone(),
        }
    }

    /// Reads that change nothing, made while serving a client: the configured credentials,
    /// else the client's.
    pub fn reading_for(
        forwarder: &'a Forwarder,
        backend: &'a BackendConfig,
        client: &Caller,
    ) -> Self {
        let authorization = backend
            .authorization
            .clone()
            .or_else(|| client.authorization_for(backend).cloned());
        Self {
            forwarder,
            backend,
            authorization,
        }
    }
}

pub use forge_schema::{key, path};

const OPTIONS: &str = path::OPTIONS;
const MEMORY: &str = path::MEMORY;

impl Forge<'_> {
    /// Every option with its current value.
    pub async fn options(&self) -> Result<Map<String, Value>, ForgeError> {
        let body = self.exchange(Method::GET, OPTIONS, None).await?;
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(options)) => Ok(options),
            Ok(_) | Err(_) => Err(ForgeError::Invalid {
                method: Method::GET,
                path: OPTIONS,
                detail: "not a JSON object".to_owned(),
            }),
        }
    }

    /// Sets `changes`; Forge answers `null` on success.
    pub async fn set_options(&self, changes: &Map<String, Value>) -> Result<(), ForgeError> {
        let body = serde_json::to_vec(changes).map_err(|e| ForgeError::Invalid {
            method: Method::POST,
            path: OPTIONS,
            detail: e.to_string(),
        })?;
        self.exchange(Method::POST, OPTIONS, Some(body.into()))
            .await
            .map(drop)
    }

    /// The checkpoint catalog (`GET /sdapi/v1/sd-models`).
    pub async fn sd_models(&self) -> Result<Value, ForgeError> {
        let body = self.exchange(Method::GET, path::SD_MODELS, None).await?;
        serde_json::from_slice(&body).map_err(|e| ForgeError::Invalid {
            method: Method::GET,
            path: path::SD_MODELS,
            detail: format!("not JSON: {e}"),
        })
    }

    /// `POST /sdapi/v1/interrupt`: Forge stops the generation it is running.
    pub async fn interrupt(&self) -> Result<(), ForgeError> {
        self.exchange(Method::POST, path::INTERRUPT, None)
            .await
            .map(drop)
    }

    /// `POST /sdapi/v1/unload-checkpoint`: Forge frees the model's memory.
    pub async fn unload_checkpoint(&self) -> Result<(), ForgeError> {
        self.exchange(Method::POST, path::UNLOAD_CHECKPOINT, None)
            .await
            .map(drop)
    }

    /// Forge's progress of what it runs (without the preview image).
    pub async fn progress(&self) -> Result<Value, ForgeError> {
        const WITHOUT_IMAGE: &str = "/sdapi/v1/progress?skip_current_image=true";
        let body = self.exchange(Method::GET, WITHOUT_IMAGE, None).await?;
        serde_json::from_slice(&body).map_err(|e| ForgeError::Invalid {
            method: Method::GET,
            path: WITHOUT_IMAGE,
            detail: format!("not JSON: {e}"),
        })
    }

    /// `cuda.system` of `/sdapi/v1/memory`: the whole device, in bytes, converted to MiB.
    pub async fn memory(&self) -> Result<BackendMemory, ForgeError> {
        let body = self.exchange(Method::GET, MEMORY, None).await?;
        let invalid = |detail: String| ForgeError::Invalid {
            method: Method::GET,
            path: MEMORY,
            detail,
        };
        let value: Value =
            serde_json::from_slice(&body).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let cuda = &value["cuda"];
        if let Some(error) = cuda.get("error") {
            return Err(invalid(format!(
                "no CUDA device ({})",
                error.as_str().unwrap_or("?")
            )));
        }
        let system = &cuda["system"];
        let mib = |key: &str| {
            system[key]
                .as_f64()
                .map(|bytes| (bytes / MIB).floor() as u64)
                .ok_or_else(|| invalid(format!("cuda.system.{key} missing")))
        };
        Ok(BackendMemory {
            total_mib: mib("total")?,
            used_mib: mib("used")?,
            free_mib: mib("free")?,
        })
    }

    async fn exchange(
        &self,
        method: Method,
        path: &'static str,
        body: Option<Bytes>,
    ) -> Result<Bytes, ForgeError> {
        let answer = self
            .forwarder
            .call(
                self.backend,
                method.clone(),
                path,
                body,
                self.authorization.as_ref(),
                Some(OPTIONS_TIMEOUT),
            )
            .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(source) => {
                return Err(ForgeError::Call {
                    method,
                    path,
                    source,
                })
            }
        };
        let status = answer.status;
        if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN {
            return Err(ForgeError::Denied {
                method,
                path,
                answer: Box::new(answer),
            });
        }
        if !status.is_success() {
            return Err(ForgeError::Status {
                method,
                path,
                status: status.as_u16(),
                detail: error_detail(&answer.body),
            });
        }
        Ok(answer.body)
    }
}

/// The readable part of a Forge error body (`message`, `errors` or `detail`), else its start.
fn error_detail(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        for key in ["message", "errors", "detail"] {
            match &value[key] {
                Value::String(text) if !text.is_empty() => return text.clone(),
                Value::Null => {}
                Value::String(_) => {}
                other => return other.to_string(),
            }
        }
    }
    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_detail_prefers_forge_message_then_a1111_errors_then_fastapi_detail() {
        let forge = br#"{"error": "RuntimeError", "detail": "", "body": "", "message": "model 'nope' not found"}"#;
        assert_eq!(error_detail(forge), "model 'nope' not found");
        assert_eq!(error_detail(br#"{"errors": "boom"}"#), "boom");
        assert_eq!(error_detail(br#"{"detail": "Not Found"}"#), "Not Found");
        assert_eq!(
            error_detail(br#"{"detail": [{"type": "json_invalid"}]}"#),
            r#"[{"type":"json_invalid"}]"#
        );
        assert_eq!(
            error_detail(b"Internal Server Error"),
            "Internal Server Error"
        );
    }
}
