//! forge-vram-proxy: a reverse proxy in front of Stable Diffusion WebUI Forge.
//!
//! Clients talk to the proxy exactly as they would to Forge. Everything passes through
//! unchanged and streaming; generation requests (`txt2img`, `img2img`) have their own
//! route, where the proxy sets Forge's GPU memory for the model before forwarding.
//!
//! # Layout
//! - [`config`] — defaults, TOML file, environment and flags, validated into [`Config`].
//! - [`routes`] — the router: `/proxy/*` own routes, generations, pass-through.
//! - [`profile`] — which profile (model family) a generation needs; pure.
//! - [`policy`] — what `forge_inference_memory` it needs on a given card; pure.
//! - [`generation`] — what happens to a generation request before it is forwarded.
//! - [`forward`] — the streaming forwarder (hop-by-hop headers, `X-Forwarded-*`, upgrades).
//! - [`error`] — the proxy's own errors and their status codes, in Forge's error shape.
//! - [`observe`] — tracing set-up and the access log.
//! - [`server`] — [`run`] with graceful shutdown.
//! - [`state`] — [`AppState`], shared by every handler.

pub mod backend;
pub mod client_options;
pub mod config;
pub mod decisions;
pub mod error;
pub mod forge;
pub mod forward;
pub mod generation;
pub mod inspect;
pub mod metrics;
pub mod nvml;
pub mod observe;
pub mod plan;
pub mod policy;
pub mod profile;
pub mod routes;
pub mod server;
pub mod state;
pub mod status;
pub mod vram;

pub use config::Config;
pub use routes::app;
pub use server::run;
pub use state::AppState;
