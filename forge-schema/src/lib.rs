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
//! - [`path`], [`key`] — Forge's API paths and option keys, named once.

pub mod body;
pub mod model;

/// Forge's API paths that the proxy and the simulator name.
pub mod path {
    pub const OPTIONS: &str = "/sdapi/v1/options";
    pub const MEMORY: &str = "/sdapi/v1/memory";
    pub const SD_MODELS: &str = "/sdapi/v1/sd-models";
    pub const REFRESH_CHECKPOINTS: &str = "/sdapi/v1/refresh-checkpoints";
    pub const PROGRESS: &str = "/sdapi/v1/progress";
    pub const INTERRUPT: &str = "/sdapi/v1/interrupt";
    pub const UNLOAD_CHECKPOINT: &str = "/sdapi/v1/unload-checkpoint";
    pub const SKIP: &str = "/sdapi/v1/skip";
    pub const TXT2IMG: &str = "/sdapi/v1/txt2img";
    pub const IMG2IMG: &str = "/sdapi/v1/img2img";
    pub const EXTRA_SINGLE_IMAGE: &str = "/sdapi/v1/extra-single-image";
    pub const EXTRA_BATCH_IMAGES: &str = "/sdapi/v1/extra-batch-images";
    pub const PNG_INFO: &str = "/sdapi/v1/png-info";
    pub const INTERROGATE: &str = "/sdapi/v1/interrogate";
}

/// Forge's option keys that the proxy and the simulator name.
pub mod key {
    /// The memory kept free for computation (MiB); GPU Weights = total - this.
    pub const INFERENCE_MEMORY: &str = "forge_inference_memory";
    pub const CHECKPOINT: &str = "sd_model_checkpoint";
    pub const PRESET: &str = "forge_preset";
    pub const FLUX_GPU_WEIGHTS: &str = "flux_GPU_MB";
    pub const XL_GPU_WEIGHTS: &str = "xl_GPU_MB";
    pub const ASYNC_LOADING: &str = "forge_async_loading";
    pub const PIN_SHARED_MEMORY: &str = "forge_pin_shared_memory";
}
