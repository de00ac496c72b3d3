//! Reading a request the proxy inspects: its body, bounded, and its head, kept to send it
//! again (to another backend after a failure, or to each backend in turn).

use axum::body::Body;
use bytes::Bytes;
use http::header;
use http_body_util::{BodyExt, Limited};

use crate::error::ProxyError;
use crate::forward::content_length;

/// Reads a body the proxy must inspect, refusing more than `limit` bytes.
pub async fn read_body(
    headers: &http::HeaderMap,
    body: Body,
    limit: u64,
) -> Result<Bytes, ProxyError> {
    if content_length(headers).is_some_and(|n| n > limit) {
        return Err(ProxyError::InspectedBodyTooLarge { limit });
    }
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::InspectedBodyTooLarge { limit })
        }
        Err(e) => Err(ProxyError::ClientBody {
            reason: e.to_string(),
        }),
    }
}

/// A request's method, URI, version and headers, to send it again with a body.
#[derive(Debug, Clone)]
pub struct Head {
    pub method: http::Method,
    pub uri: http::Uri,
    pub version: http::Version,
    pub headers: http::HeaderMap,
}

impl Head {
    pub fn of(parts: &http::request::Parts) -> Self {
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
        }
    }

    pub fn request(&self, headers: http::HeaderMap, body: Body) -> http::Request<Body> {
        let mut request = http::Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = headers;
        request
    }

    /// The `Content-Type` header's bytes, as FastAPI reads them.
    pub fn content_type(&self) -> Option<&[u8]> {
        self.headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes())
    }
}

/// Sets `Content-Length` for a body the proxy rewrote.
pub fn set_length(headers: &mut http::HeaderMap, length: usize) {
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, http::HeaderValue::from(length));
}
