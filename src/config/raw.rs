//! The configuration as written: the serde schema of the TOML file (every key optional,
//! unknown keys rejected by name), with its enums derived rather than matched by hand.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::backend::nvml::GpuSelector;

/// The configuration as written: every key optional, unknown keys rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// Address and port the proxy listens on.
    pub listen: String,
    /// The Forge servers behind the proxy.
    pub backends: Vec<RawBackend>,
    pub timeouts: RawTimeouts,
    pub limits: RawLimits,
    pub generation: RawGeneration,
    pub log: RawLog,
    /// Path of the NVML library; the system's `libnvidia-ml.so.1` when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nvml_library: Option<String>,
    pub memory: RawMemory,
    pub scheduler: RawScheduler,
    pub health: RawHealth,
    /// Who may call the proxy: client keys with roles.
    pub access: RawAccess,
    /// HTTPS for the proxy's own port.
    pub tls: RawTls,
    /// Profiles added to, or replacing by name, the embedded `flux`, `sdxl` and `sd15`.
    pub profiles: Vec<RawProfile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBackend {
    pub url: String,
    /// Send the client's `Host` header instead of the backend's.
    pub preserve_host: bool,
    /// The backend's GPU for NVML on this host: an index or a UUID.
    pub gpu: GpuSelector,
    /// `auto`: NVML, else the backend's `/sdapi/v1/memory`; `backend`: always the latter
    /// (the proxy runs on another host than the GPU).
    pub vram_source: VramPreference,
    /// `user:pass` for Forge's `--api-auth`, used by the proxy's own calls when the client
    /// sent no credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// The same pair from an environment variable, or from a file (a mounted secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_file: Option<String>,
    /// Profiles this backend may serve (empty: all), e.g. only the 24 GiB card takes Flux.
    pub profiles: Vec<String>,
    /// Relative speed: a backend with weight 2 is expected to finish in half the time.
    pub weight: f64,
    /// For an `https://` backend: a PEM file of the certificates to trust instead of the
    /// system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<String>,
    /// For an `https://` backend: accept any certificate (tests, self-signed set-ups).
    pub tls_insecure_skip_verify: bool,
}

/// The `[tls]` section: the proxy listens with HTTPS when both files are given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {
    /// PEM certificate chain, the server's certificate first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawScheduler {
    /// `affinity`: the backend with the profile loaded and the shortest expected wait, or
    /// the lowest wait plus reload; `random`: any allowed healthy backend.
    pub routing: Routing,
    /// How many times a waiting generation may be passed over by later ones of the loaded
    /// profile (0: first come, first served).
    pub max_bypass: u32,
    /// No reordering past a generation that has waited this long.
    pub max_wait: String,
    /// Waiting generations per backend, and in all; beyond them: 503 with Retry-After.
    pub queue_per_backend: usize,
    pub queue_total: usize,
    /// Pass-through requests: `first` healthy backend, or `round_robin`.
    pub pass_through: PassThroughRouting,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHealth {
    /// Active checks: a cheap GET to each backend this often.
    pub interval: String,
    pub timeout: String,
    /// Consecutive failures that make a backend unhealthy, and successes that bring it back.
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMemory {
    /// A new value closer than this to the backend's current one is not applied: every
    /// change costs Forge a full model reload.
    pub min_change_mib: u64,
    /// Re-read the backend's options before each generation (Forge's UI resets them on page
    /// reload); `false` trusts what the proxy last applied.
    pub verify_before_generation: bool,
    /// Leave other processes' VRAM (NVML) out of the card size.
    pub count_other_processes: bool,
    /// What to do with a client's own memory keys: `strip`, `honor` or `reject`.
    pub client_memory_options: ClientMemoryOptions,
    /// Profile for requests nothing else identifies.
    pub default_profile: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAccess {
    /// Client keys; none: every client may do everything, as with Forge itself.
    pub keys: Vec<RawKey>,
    /// Addresses or CIDR ranges of proxies in front of this one: only from these is
    /// `X-Forwarded-For` believed when the proxy names a client.
    pub trusted_proxies: Vec<String>,
}

/// One client key as written: the key itself, its SHA-256, the environment variable or
/// the file that holds it (exactly one of them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    /// Shown in logs, metrics and `/proxy/status`; never the key.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    pub role: Role,
    /// This key's generations waiting at once; beyond: 429 with Retry-After.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<usize>,
}

/// What a client key may do; each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// `GET`/`HEAD` of `/sdapi/*`, `/proxy/status`, `/proxy/metrics`.
    Read,
    /// Read, plus generations, the image tools, the dry-run plan, and `interrupt`/`skip` of
    /// its own generations.
    Generate,
    /// Everything: Forge's options, server control, model management, the web UI.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Generate => "generate",
            Role::Admin => "admin",
        }
    }
}

/// A profile as written. Policy keys: `inference_memory_mib` (fixed), `gpu_weights_mib`,
/// `gpu_weights_percent`, or the auto policy's `weights_mib` (+ `min_inference_mib`,
/// `inference_per_megapixel_mib`, `reference_megapixels`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    pub name: String,
    /// Case-insensitive globs on checkpoint names, or regexes after `re:`.
    #[serde(default)]
    pub patterns: Vec<String>,
    /// `forge_preset` values that mean this profile (`flux`, `xl`, `sd`).
    #[serde(default)]
    pub presets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_memory_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_weights_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_weights_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_inference_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_per_megapixel_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_megapixels: Option<f64>,
    /// Forge options set with the memory (only those that differ from the backend's).
    #[serde(default)]
    pub options: serde_json::Map<String, serde_json::Value>,
    /// Request fields filled in when the client left them out.
    #[serde(default)]
    pub request_defaults: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTimeouts {
    pub connect: String,
    /// Time allowed for a backend's response headers on pass-through routes.
    pub request: String,
    /// The same for generation routes: none by default, a Flux batch can take many minutes.
    pub generation: String,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: String,
    /// Time a client has to send a request's head, from its first byte (or from the
    /// connection's opening, for the first request); beyond it the connection is closed.
    pub client_header: String,
    /// Longest pause in a request body while the proxy reads it; beyond it: 408.
    pub client_body_idle: String,
    /// An idle connection between requests is closed after this long.
    pub keep_alive: String,
    /// Per-path overrides of `request`, e.g. `"/sdapi/v1/progress" = "30s"`.
    pub routes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// Largest request body accepted, e.g. `"1GiB"`, `"64MiB"`.
    pub max_request_body: String,
    /// Largest body the proxy reads into memory to inspect (generations, options calls):
    /// those are held whole, pass-through bodies never are.
    pub max_inspected_body: String,
    /// The bytes of every body held for inspection at once, queued ones included; beyond
    /// it a new one gets 503 with Retry-After.
    pub max_inspected_total: String,
    /// Client connections open at once; beyond it a new one gets 503 and is closed.
    pub max_connections: usize,
    /// Connections to one backend open at once, in use and idle; a request beyond it
    /// waits for one.
    pub backend_connections: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawGeneration {
    /// Paths handled as generations (POST only).
    pub routes: Vec<String>,
    /// When a client goes away from a generation Forge is running: `finish` (Forge goes on,
    /// as it does without the proxy) or `interrupt` (the proxy asks Forge to stop). Either
    /// way the backend stays held until Forge has answered.
    pub on_client_disconnect: OnClientDisconnect,
}

/// What the proxy does when a client leaves a generation Forge is running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnClientDisconnect {
    /// Forge finishes it, as it does when its own client goes away.
    #[default]
    Finish,
    /// The proxy sends `POST /sdapi/v1/interrupt` to the backend, then waits for the end.
    Interrupt,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `forge_vram_proxy=debug`; `RUST_LOG` wins over it.
    pub level: String,
}

/// What happens to memory keys a client sends itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientMemoryOptions {
    /// Removed (the default): the proxy owns them.
    Strip,
    /// Used: in a generation's `override_settings` the value becomes that generation's.
    Honor,
    /// Refused with 400.
    Reject,
}

/// Where a backend's VRAM readings come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VramPreference {
    /// NVML on this host, else the backend's `/sdapi/v1/memory`.
    Auto,
    /// Always the backend's `/sdapi/v1/memory`.
    Backend,
}

/// How the scheduler picks a backend for a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    Affinity,
    Random,
}

/// Where requests that are not generations go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PassThroughRouting {
    First,
    RoundRobin,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}
