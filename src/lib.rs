//! forge-vram-proxy: a reverse proxy in front of Stable Diffusion WebUI Forge.
//!
//! Clients talk to the proxy exactly as they would to Forge. Everything passes through
//! unchanged and streaming; generation requests (`txt2img`, `img2img`) have their own
//! route, where the proxy sets Forge's GPU memory for the model before forwarding.
//!
//! # Layout
//! Following a request's path:
//! - [`config`] — defaults, TOML file, environment and flags, validated into [`Config`].
//! - [`routes`] — dispatch: `/proxy/*` own routes (axum), generations, client options, pass-through.
//! - [`inspect`] — reading only what is needed of a body, writing back only what changes.
//! - [`profile`] — which profile (model family) a generation needs; pure.
//! - [`nvml`], [`vram`] — live VRAM readings: NVML on this host, else the backend's.
//! - [`policy`] — what `forge_inference_memory` a profile needs on a card; pure.
//! - [`plan`] — the whole decision for one generation (profile, memory, options, body); pure.
//! - [`generation`] — carries the plan out inside the backend's critical section.
//! - [`client_options`] — a client's own `POST /sdapi/v1/options` (memory keys, checkpoint).
//! - [`forge`] — the proxy's own calls to Forge (options, memory).
//! - [`forward`] — the streaming forwarder (hop-by-hop headers, `X-Forwarded-*`, upgrades).
//! - [`scheduler`] — which backend runs a generation, and each backend's queue order.
//! - [`health`] — active and passive backend health checks.
//! - [`backend`] — per-backend state and its critical section.
//! - [`error`] — the proxy's own errors and their status codes, in Forge's error shape.
//! - [`observe`], [`metrics`], [`decisions`], [`status`] — logs, Prometheus metrics, the
//!   last decisions, and the `/proxy/status`, `/proxy/plan/*`, `/proxy/metrics` routes.
//! - [`server`] — [`run`]: the accept loop, hyper HTTP/1.1 connections, graceful shutdown.
//! - [`state`] — [`AppState`], shared by every handler.

pub mod backend;
pub mod client_options;
pub mod config;
pub mod decisions;
pub mod error;
pub mod forge;
pub mod forward;
pub mod generation;
pub mod health;
pub mod inspect;
pub mod metrics;
pub mod nvml;
pub mod observe;
pub mod plan;
pub mod policy;
pub mod profile;
pub mod routes;
pub mod scheduler;
pub mod server;
pub mod state;
pub mod status;
pub mod vram;

pub use config::Config;
pub use routes::app;
pub use server::run;
pub use state::AppState;
