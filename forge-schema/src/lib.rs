//! How Stable Diffusion WebUI Forge reads a request body and validates a generation request,
//! written once for the two programs that must agree with it: the proxy, which must know
//! which bodies Forge accepts before it changes anything on Forge's behalf, and forge-sim,
//! which must answer them as Forge does.
//!
//! # Layout
//! - [`body`] — the bytes FastAPI reads as JSON: the content types it takes, Python's
//!   encoding detection (UTF-8 with or without a byte-order mark, UTF-16, UTF-32), the
//!   `NaN` / `Infinity` tokens of Python's `json`, and a top-level object kept as raw fields.
//! - [`model`] — the fields of Forge's txt2img / img2img API models and pydantic v2's lax
//!   coercion of each value.

pub mod body;
pub mod model;
