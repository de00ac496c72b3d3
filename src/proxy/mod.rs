//! The door: every request is classified once, observed (id, metrics, access log), then
//! answered by the proxy's own routes under `/proxy/` or proxied.
//!
//! - [`route`] — the one classification of a request, on its percent-decoded path.
//! - [`dispatch`] — [`Proxy`]: observe, then hand the request to its stage.
//! - [`observe`] — request ids, the metrics count, the access log.
//! - [`pass_through`] — requests the proxy does not manage, forwarded as they are.
//! - [`request`] — reading a request the proxy inspects, and its head to send it again.
//! - [`budget`] — the bytes held for inspection at once, resized by a reload.

pub mod budget;
pub mod dispatch;
pub mod observe;
pub mod pass_through;
pub mod request;
pub mod route;

pub use dispatch::{app, Proxy};
pub use route::OWN_PREFIX;
