//! A client's request body as the proxy reads and forwards it: its errors say they are the
//! client's ([`ClientBodyError`]), so a forward that fails on them is a 400 or 408 about the
//! client, not a 502 about the backend, and a pause longer than `timeouts.client_body_idle`
//! is one of them.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

/// Why a client's request body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientBodyError {
    /// Nothing came for `timeouts.client_body_idle`.
    #[error("the request body stalled: nothing came for {} (timeouts.client_body_idle)", humantime::format_duration(*.0))]
    Idle(Duration),
    /// The client broke it off: a bad chunk, fewer bytes than its Content-Length.
    #[error("the request body broke off: {0}")]
    Broken(String),
}

/// A client's request body: its errors are [`ClientBodyError`]s (so a failed forward is
/// told apart from a failing backend), and a pause longer than `idle` is one.
pub struct ClientBody {
    inner: Incoming,
    idle: Option<Duration>,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl ClientBody {
    pub fn new(inner: Incoming, idle: Option<Duration>) -> Self {
        Self {
            inner,
            idle,
            stalled: None,
        }
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.stalled = None;
                Poll::Ready(frame.map(|f| f.map_err(|e| ClientBodyError::Broken(e.to_string()))))
            }
            Poll::Pending => {
                let Some(idle) = self.idle else {
                    return Poll::Pending;
                };
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match stalled.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(ClientBodyError::Idle(idle)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl ClientBodyError {
    /// The client-body error somewhere in `error`'s chain of sources, if any.
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a ClientBodyError> {
        let mut current = Some(error);
        while let Some(e) = current {
            if let Some(found) = e.downcast_ref::<ClientBodyError>() {
                return Some(found);
            }
            current = e.source();
        }
        None
    }
}
