//! # forge-sim: a simulator of Stable Diffusion WebUI Forge's HTTP API
//!
//! **This is not Forge.** It answers Forge's API the way Forge does (status
//! codes, error bodies, headers, option and memory semantics, one generation
//! at a time) without a GPU or a model, so that clients and proxies can be
//! tested and benchmarked against it. Generations take simulated time from a
//! timing and memory model of an RTX 3090-class card (see the README), and
//! return noise PNGs.
//!
//! Every options change and every generation is journaled (`GET
//! /sim/journal`, [`SimState::journal`]) with the memory settings in effect,
//! whether the model had to reload, and how long it took.
//!
//! ## Layout
//! - [`config`]: the command line / [`SimConfig`] and checkpoint specs.
//! - `app`: the router, with uvicorn's and FastAPI's traits (404, 405, headers).
//! - `api`: the `/sdapi/v1` routes; `auth`: `--api-auth`.
//! - `body`, `json_error`, `request`: reading and validating bodies like FastAPI and pydantic.
//! - `backend`: options (`set_config`), memory settings, the loaded model; `options`: the settings store.
//! - `memory`, `family`, `timing`: the memory and timing model, as pure functions.
//! - `generation`: one generation end to end; `progress`: the running job and `/progress`.
//! - `response`, `images`, `init_images`: answers, noise PNGs, img2img inputs.
//! - `journal`: what happened, for tests; `testbed`: the `/sim/` endpoints.
//! - `server`: [`run`], [`start`] and [`SimServer`].

mod api;
mod app;
mod auth;
mod backend;
mod body;
mod checkpoint;
pub mod config;
mod error;
mod family;
mod generation;
mod images;
mod init_images;
mod journal;
mod json_error;
mod listings;
mod memory;
mod options;
mod progress;
mod python;
mod request;
mod response;
mod server;
mod state;
mod testbed;
mod timing;

pub use app::app;
pub use config::{CheckpointSpec, SimConfig};
pub use family::Family;
pub use server::{run, start, SimServer};
pub use state::SimState;
