//! Streaming in both directions: server-sent events that go out as they are
//! produced, an arbitrarily large response generated on the fly, and a sink
//! that reads an arbitrarily large request without buffering it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Query;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use http_body::{Frame, SizeHint};
use serde_json::{json, Value};

use super::param;
use crate::error::ApiError;

/// `GET /sim/sse?count=N&interval_ms=M`: N events `data: {"n": i}`, the
/// first at once, then one every M ms, each flushed when produced.
pub async fn sse(Query(query): Query<HashMap<String, String>>) -> Result<Response, ApiError> {
    let count: u64 = param(&query, "count", 5)?;
    let interval = Duration::from_millis(param(&query, "interval_ms", 100)?);
    let events = futures_util::stream::unfold(0u64, move |n| async move {
        if n >= count {
            return None;
        }
        if n > 0 {
            tokio::time::sleep(interval).await;
        }
        let event = Bytes::from(format!("data: {{\"n\": {n}}}\n\n"));
        Some((Ok::<_, Infallible>(event), n + 1))
    });
    let mut response = Body::from_stream(events).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// Size of the chunks `/sim/bytes` sends.
const CHUNK: usize = 64 * 1024;

/// The repeating pattern: byte `i` of the response is `i % 256`.
fn pattern() -> Bytes {
    static PATTERN: OnceLock<Bytes> = OnceLock::new();
    PATTERN
        .get_or_init(|| (0..CHUNK).map(|i| i as u8).collect::<Vec<u8>>().into())
        .clone()
}

/// `GET /sim/bytes?n=N`: exactly N bytes with `content-length: N`, made
/// chunk by chunk as the client reads, so memory stays flat for any N.
pub async fn bytes(Query(query): Query<HashMap<String, String>>) -> Result<Response, ApiError> {
    let n: u64 = param(&query, "n", 0)?;
    let mut response = Body::new(PatternBody { remaining: n }).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

/// A body of `remaining` pattern bytes with an exact size hint (which
/// becomes the content-length).
struct PatternBody {
    remaining: u64,
}

impl http_body::Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let len = self.remaining.min(CHUNK as u64);
        self.remaining -= len;
        Poll::Ready(Some(Ok(Frame::data(pattern().slice(..len as usize)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// `POST /sim/sink`: reads the whole body as it streams in and answers
/// `{"bytes": N, "checksum": sum of all bytes mod 2^64}`.
pub async fn sink(body: Body) -> Result<Json<Value>, ApiError> {
    let mut stream = body.into_data_stream();
    let mut total: u64 = 0;
    let mut checksum: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            ApiError::http(
                axum::http::StatusCode::BAD_REQUEST,
                format!("body: {error}"),
            )
        })?;
        total += chunk.len() as u64;
        checksum = chunk
            .iter()
            .fold(checksum, |sum, &b| sum.wrapping_add(u64::from(b)));
    }
    Ok(Json(json!({ "bytes": total, "checksum": checksum })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn pattern_body_has_exact_size_and_pattern() {
        let body = PatternBody { remaining: 200_000 };
        assert_eq!(body.size_hint().exact(), Some(200_000));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 200_000);
        assert!(bytes.iter().enumerate().all(|(i, &b)| b == i as u8));
    }
}
