//! The proxy's decisions, as plain functions of data: no I/O here.
//!
//! - [`body`] — what a generation body says, read as Forge reads it, and its rewriting.
//! - [`client_memory`] — the memory keys the proxy owns, and a client that sends them.
//! - [`profile`] — which profile (model family) a generation needs.
//! - [`policy`] — what `forge_inference_memory` a profile needs on a card.
//! - [`plan`] — the whole decision for one generation: profile, memory, options, body edits.

pub mod body;
pub mod client_memory;
pub mod plan;
pub mod policy;
pub mod profile;
