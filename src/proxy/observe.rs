//! One access-log line per request, written when its response body has been sent (so the
//! line carries the real byte count and duration), with the request's id and its count in
//! the metrics.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use http_body::{Frame, SizeHint};
use uuid::Uuid;

use crate::state::AppState;

/// Request ids travel in this header: accepted from the client, else generated, and forwarded.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id (set by [`observe`] before any handler runs), or "-".
pub fn request_id(headers: &http::HeaderMap) -> &str {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

/// The outermost stage of every request, around `next` (the rest of its handling): its id,
/// its count in the metrics, and its access-log line.
///
/// - The id is the client's `x-request-id`, else a new UUID; it is forwarded to the backend
///   and returned in the response (unless the response carries one already).
/// - Counted by `route` (the label of the request's [`Route`](crate::proxy::route::Route))
///   and status for `/proxy/metrics` once the response head is ready.
/// - One access-log line, written when the body has been sent (so it carries the real byte
///   count and duration). It logs the path without its query string and no headers, so
///   credentials, cookies and tokens never reach the log.
pub async fn observe<Next, Handled>(
    state: &AppState,
    route: Cow<'static, str>,
    key: Option<String>,
    mut request: Request,
    next: Next,
) -> Response
where
    Next: FnOnce(Request) -> Handled,
    Handled: Future<Output = Response>,
{
    let id = match request.headers().get(REQUEST_ID_HEADER) {
        Some(id) => id.clone(),
        None => {
            let id = new_request_id();
            request.headers_mut().insert(REQUEST_ID_HEADER, id.clone());
            id
        }
    };
    // With the access log filtered out (e.g. `level = "warn"`), nothing is kept for it.
    let entry = tracing::enabled!(target: "access", tracing::Level::INFO).then(|| AccessEntry {
        started: Instant::now(),
        method: request.method().clone(),
        path: request.uri().path().to_owned(),
        request_id: id.clone(),
        status: StatusCode::OK,
        bytes: 0,
        complete: false,
        key: key.clone(),
    });
    let mut response = next(request).await;
    state
        .metrics
        .request(route, key, response.status().as_u16());
    if !response.headers().contains_key(REQUEST_ID_HEADER) {
        response.headers_mut().insert(REQUEST_ID_HEADER, id);
    }
    let Some(mut entry) = entry else {
        return response;
    };
    entry.status = response.status();
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // The tunnel's bytes are not HTTP body bytes; the upgrade itself is the request.
        entry.complete = true;
        return response;
    }
    response.map(|inner| Body::new(LoggedBody { inner, entry }))
}

/// A fresh request id: a random (v4) UUID, in one allocation its clones share (the
/// request's header, the response's, the access log's).
fn new_request_id() -> HeaderValue {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    Uuid::new_v4().hyphenated().encode_lower(&mut text);
    HeaderValue::from_maybe_shared(Bytes::from_owner(text)).expect("a UUID is a valid header value")
}

struct AccessEntry {
    started: Instant,
    method: Method,
    path: String,
    request_id: HeaderValue,
    status: StatusCode,
    bytes: u64,
    /// False when the client went away before the whole body was sent.
    complete: bool,
    /// The client key's name, when keys are configured.
    key: Option<String>,
}

impl Drop for AccessEntry {
    fn drop(&mut self) {
        tracing::info!(
            target: "access",
            method = %self.method,
            path = %self.path,
            status = self.status.as_u16(),
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            bytes = self.bytes,
            complete = self.complete,
            request_id = self.request_id.to_str().unwrap_or("-"),
            key = self.key.as_deref().unwrap_or("-"),
            "request"
        );
    }
}

/// A response body that counts what passes through it; its [`AccessEntry`] logs on drop.
struct LoggedBody {
    inner: Body,
    entry: AccessEntry,
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // hyper stops polling a body that says it has ended, so check here as well.
        self.entry.complete |= http_body::Body::is_end_stream(&self.inner);
    }
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        // `Body` is Unpin, so no pin projection is needed.
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.entry.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => self.entry.complete = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_request_id_is_a_v4_uuid_and_nothing_more() {
        let id = new_request_id();
        let parsed = Uuid::parse_str(id.to_str().unwrap()).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(id.len(), 36);
        assert_ne!(new_request_id(), id);
    }
}
