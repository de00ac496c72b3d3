//! Reading a request the proxy inspects: its body, bounded, and its head, kept to send it
//! again (to another backend after a failure, or to each backend in turn).

use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::header;
use http_body_util::BodyExt;
use tokio::sync::OwnedSemaphorePermit;

use crate::error::ProxyError;
use crate::forward::client_body::ClientBodyError;
use crate::forward::content_length;
use crate::state::AppState;

/// A body held for inspection, with its share of `limits.max_inspected_total`: the share is
/// given back when this is dropped.
pub struct Inspected {
    pub bytes: Bytes,
    _share: Option<OwnedSemaphorePermit>,
}

/// Reads a body the proxy must inspect into one buffer, refusing more than
/// `limits.max_inspected_body` bytes (413), and more than `limits.max_inspected_total`
/// held at once with the others (503 `Busy`, before its bytes are read when its length is
/// declared).
pub async fn read_body(
    state: &AppState,
    headers: &http::HeaderMap,
    mut body: Body,
) -> Result<Inspected, ProxyError> {
    let limit = state.config().inspect_limit();
    let budget = &state.inspect_budget;
    let busy = || {
        state.metrics.inspect_refused();
        ProxyError::Busy {
            limit: budget.limit(),
            retry_after: state
                .scheduler
                .shortest_wait()
                .clamp(BUSY_RETRY_MIN, BUSY_RETRY_MAX),
        }
    };
    let declared = content_length(headers);
    if declared.is_some_and(|n| n > limit) {
        return Err(ProxyError::InspectedBodyTooLarge { limit });
    }
    let mut share = match declared {
        Some(n) => Some(budget.take(n).ok_or_else(busy)?),
        None => None,
    };
    let mut buffer = BytesMut::with_capacity(usize::try_from(declared.unwrap_or(0)).unwrap_or(0));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(read_error)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buffer.len() as u64 + data.len() as u64 > limit {
            return Err(ProxyError::InspectedBodyTooLarge { limit });
        }
        if declared.is_none() {
            // Counted as it comes: the bytes of this frame, now held.
            let more = budget.take(data.len() as u64).ok_or_else(busy)?;
            match share.as_mut() {
                Some(held) => held.merge(more),
                None => share = Some(more),
            }
        }
        buffer.extend_from_slice(&data);
    }
    Ok(Inspected {
        bytes: buffer.freeze(),
        _share: share,
    })
}

/// Retry-After for a body refused for want of room: the shortest wait for a backend,
/// within these bounds.
const BUSY_RETRY_MIN: Duration = Duration::from_secs(1);
const BUSY_RETRY_MAX: Duration = Duration::from_secs(60);

/// A failure while reading a client's body.
fn read_error(error: axum::Error) -> ProxyError {
    match ClientBodyError::find(&error) {
        Some(client) => ProxyError::ClientBodyFailed(client.clone()),
        None => ProxyError::ClientBody {
            reason: error.to_string(),
        },
    }
}

/// Cancelled when the client closes its side of the connection while its request is in
/// flight (a request extension the server adds): it left, or it half-closed and still reads.
#[derive(Clone, Debug)]
pub struct ClientClosed(pub tokio_util::sync::CancellationToken);

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

/// A body sent as the pieces it was built from, none copied into one buffer.
pub struct Chunks {
    pieces: std::collections::VecDeque<Bytes>,
    left: u64,
}

impl Chunks {
    pub fn new(pieces: Vec<Bytes>) -> Self {
        let left = pieces.iter().map(|p| p.len() as u64).sum();
        Self {
            pieces: pieces.into_iter().filter(|p| !p.is_empty()).collect(),
            left,
        }
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let piece = self.pieces.pop_front();
        if let Some(piece) = &piece {
            self.left -= piece.len() as u64;
        }
        std::task::Poll::Ready(piece.map(|p| Ok(http_body::Frame::data(p))))
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

/// Sets `Content-Length` for a body the proxy rewrote.
pub fn set_length(headers: &mut http::HeaderMap, length: usize) {
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, http::HeaderValue::from(length));
}
