//! forge-vram-proxy: a reverse proxy in front of Stable Diffusion WebUI Forge.
//!
//! Clients talk to the proxy exactly as they would to Forge. Everything passes through
//! unchanged and streaming; generation requests (`txt2img`, `img2img`) have their own
//! route, where the proxy sets Forge's GPU memory for the model before forwarding.
//!
//! # Layout
//! In the order a request meets them:
//! - [`server`] — [`run`]: the accept loop, hyper HTTP/1.1 connections (TLS when configured),
//!   graceful shutdown, the configuration reloaded on `SIGHUP`, and the runtime file that
//!   says where the proxy listens.
//! - [`config`] — defaults, TOML file, environment and flags, validated into [`Config`].
//! - [`state`] — [`AppState`], shared by every handler.
//! - [`proxy`] — the door: one route classification, observation (id, metrics, access log),
//!   dispatch, and pass-through for everything the proxy does not manage.
//! - [`access`] — who is calling: client keys, their roles, and what each route needs.
//! - [`generation`] — a generation's named stages: inspect, resolve, queue, prepare, send,
//!   respond.
//! - [`client_options`] — a client's own `POST /sdapi/v1/options`.
//! - [`decide`] — the pure decisions: what a body says, which profile, what memory, the plan,
//!   and the memory keys the proxy owns.
//! - [`scheduler`] — which backend runs a generation, and in which order.
//! - [`backend`] — one Forge server: what the proxy knows of it, its calls, catalog, VRAM,
//!   health.
//! - [`forward`] — the streaming forwarder (hop-by-hop headers, `X-Forwarded-*`, upgrades,
//!   TLS to `https://` backends).
//! - [`admin`] — the `/proxy/*` routes: health, readiness, status, the dry-run plan, metrics,
//!   and the record of decisions.
//! - [`logs`] — the log's set-up: text or JSON, its level changed by a reload.
//! - [`error`] — the proxy's own errors and their status codes, in Forge's error shape.
//!
//! And beside the server, [`cli`] — the subcommands that ask a running proxy: `health`, and
//! `status` (`/proxy/status` as a table for a terminal).

pub mod access;
pub mod admin;
pub mod backend;
pub mod cli;
pub mod client_options;
pub mod config;
pub mod decide;
pub mod error;
pub mod forward;
pub mod generation;
pub mod logs;
pub mod proxy;
pub mod scheduler;
pub mod server;
pub mod state;

pub use config::Config;
pub use proxy::app;
pub use server::run;
pub use state::AppState;
