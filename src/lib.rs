//! forge-vram-proxy: a reverse proxy in front of Stable Diffusion WebUI Forge.
//!
//! Clients talk to the proxy exactly as they would to Forge. Everything passes through
//! unchanged and streaming; generation requests (`txt2img`, `img2img`) have their own
//! route, where the proxy sets Forge's GPU memory for the model before forwarding.
//!
//! # Layout
//! Following a request's path:
//! - [`config`] — defaults, TOML file, environment and flags, validated into [`Config`].
//! - [`proxy`] — the door: every request observed (id, metrics, access log), classified,
//!   and dispatched: `/proxy/*` own routes, generations, client options, pass-through.
//! - [`generation`] — a generation's stages, inside the backend's critical section.
//! - [`client_options`] — a client's own `POST /sdapi/v1/options` (memory keys, checkpoint).
//! - [`decide`] — the pure decisions: what the body says, which profile, what memory, the plan.
//! - [`scheduler`] — which backend runs a generation, and each backend's queue order.
//! - [`backend`] — one Forge server: what the proxy knows of it, its calls, VRAM, health.
//! - [`forward`] — the streaming forwarder (hop-by-hop headers, `X-Forwarded-*`, upgrades).
//! - [`error`] — the proxy's own errors and their status codes, in Forge's error shape.
//! - [`metrics`], [`decisions`], [`status`] — Prometheus metrics, the last decisions, and the
//!   `/proxy/status`, `/proxy/plan/*`, `/proxy/metrics` routes.
//! - [`server`] — [`run`]: the accept loop, hyper HTTP/1.1 connections, graceful shutdown.
//! - [`state`] — [`AppState`], shared by every handler.

pub mod backend;
pub mod client_options;
pub mod config;
pub mod decide;
pub mod decisions;
pub mod error;
pub mod forward;
pub mod generation;
pub mod metrics;
pub mod proxy;
pub mod scheduler;
pub mod server;
pub mod state;
pub mod status;

pub use config::Config;
pub use proxy::app;
pub use server::run;
pub use state::AppState;
