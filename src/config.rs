//! Configuration: embedded defaults, then the TOML file, then `FORGE_VRAM_PROXY_*`
//! environment variables, then command-line flags.
//!
//! [`RawConfig`] is what serde reads (unknown keys rejected by name); [`Config`] is the
//! validated form the proxy runs on, built with `TryFrom`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytesize::ByteSize;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use http::uri::{Authority, Scheme};
use http::Uri;
use serde::{Deserialize, Serialize};

use crate::backend::nvml::GpuSelector;
use crate::decide::policy::MemoryPolicy;
use crate::decide::profile::{Pattern, ProfileMatch};

/// Prefix of every environment variable the proxy reads.
pub const ENV_PREFIX: &str = "FORGE_VRAM_PROXY_";
/// Where the proxy listens by default: beside Forge's 7860.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7870";
/// Forge's own default address.
pub const DEFAULT_BACKEND_URL: &str = "http://127.0.0.1:7860";
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most Forge calls answer in milliseconds; model refreshes and upscalers can take minutes.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// A progress poll that hangs is worse than one that fails: clients poll again.
pub const DEFAULT_PROGRESS_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(60);
/// img2img bodies carry base64 images (megabytes each); a GiB is far beyond any real request.
pub const DEFAULT_MAX_REQUEST_BODY: &str = "1GiB";
/// An img2img with four large init images is some tens of MiB of base64.
pub const DEFAULT_MAX_INSPECTED_BODY: &str = "256MiB";
/// Forge's generation routes: the ones the proxy inspects before forwarding.
pub const DEFAULT_GENERATION_ROUTES: [&str; 2] = ["/sdapi/v1/txt2img", "/sdapi/v1/img2img"];
/// A generation may be passed over this often by later ones of the loaded profile.
pub const DEFAULT_MAX_BYPASS: u32 = 4;
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(120);
pub const DEFAULT_QUEUE_PER_BACKEND: usize = 64;
pub const DEFAULT_QUEUE_TOTAL: usize = 256;
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(3);
/// Below this a memory change is not worth a model reload.
pub const DEFAULT_MIN_CHANGE_MIB: u64 = 256;
/// The auto policy's defaults for a user profile that gives only `weights_mib`.
pub const DEFAULT_MIN_INFERENCE_MIB: u64 = 1024;
pub const DEFAULT_INFERENCE_PER_MEGAPIXEL_MIB: u64 = 1024;
pub const DEFAULT_REFERENCE_MEGAPIXELS: f64 = 1.0;

/// The embedded profiles, in matching order. On a 12 GiB card at 512×512 they give the
/// seed article's values: Flux 4096, SDXL 5632, SD 1.5 10240 (see `policy` tests).
pub fn default_profiles() -> Vec<RawProfile> {
    use serde_json::json;
    let profile =
        |name: &str, patterns: &[&str], preset: &str, auto: [u64; 3], reference: f64| RawProfile {
            name: name.to_owned(),
            patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
            presets: vec![preset.to_owned()],
            inference_memory_mib: None,
            gpu_weights_mib: None,
            gpu_weights_percent: None,
            weights_mib: Some(auto[0]),
            min_inference_mib: Some(auto[1]),
            inference_per_megapixel_mib: Some(auto[2]),
            reference_megapixels: Some(reference),
            options: serde_json::Map::from_iter([("forge_preset".to_owned(), json!(preset))]),
            request_defaults: serde_json::Map::new(),
        };
    let mut flux = profile("flux", &["*flux*"], "flux", [12288, 4096, 1536], 1.0);
    // Flux is distilled: CFG 1 with distilled CFG 3.5, and black images with schedulers
    // other than Simple (Forge issues #1221, #1977).
    flux.request_defaults = serde_json::Map::from_iter([
        ("cfg_scale".to_owned(), json!(1.0)),
        ("distilled_cfg_scale".to_owned(), json!(3.5)),
        ("scheduler".to_owned(), json!("Simple")),
    ]);
    vec![
        flux,
        profile(
            "sdxl",
            &["*xl*", "*pony*", "*illustrious*", "*noob*"],
            "xl",
            [6656, 2048, 1024],
            1.0,
        ),
        profile("sd15", &["*"], "sd", [2048, 1024, 768], 0.25),
    ]
}

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
    pub vram_source: String,
    /// `user:pass` for Forge's `--api-auth`, used by the proxy's own calls when the client
    /// sent no credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// Profiles this backend may serve (empty: all), e.g. only the 24 GiB card takes Flux.
    pub profiles: Vec<String>,
    /// Relative speed: a backend with weight 2 is expected to finish in half the time.
    pub weight: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawScheduler {
    /// `affinity`: the backend with the profile loaded and the shortest expected wait, or
    /// the lowest wait plus reload; `random`: any allowed healthy backend.
    pub routing: String,
    /// How many times a waiting generation may be passed over by later ones of the loaded
    /// profile (0: first come, first served).
    pub max_bypass: u32,
    /// No reordering past a generation that has waited this long.
    pub max_wait: String,
    /// Waiting generations per backend, and in all; beyond them: 503 with Retry-After.
    pub queue_per_backend: usize,
    pub queue_total: usize,
    /// Pass-through requests: `first` healthy backend, or `round_robin`.
    pub pass_through: String,
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
    pub client_memory_options: String,
    /// Profile for requests nothing else identifies.
    pub default_profile: String,
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
    pub format: String,
    /// A tracing filter such as `info` or `forge_vram_proxy=debug`; `RUST_LOG` wins over it.
    pub level: String,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_owned(),
            backends: vec![RawBackend::default()],
            timeouts: RawTimeouts::default(),
            limits: RawLimits::default(),
            generation: RawGeneration::default(),
            log: RawLog::default(),
            nvml_library: None,
            memory: RawMemory::default(),
            scheduler: RawScheduler::default(),
            health: RawHealth::default(),
            profiles: Vec::new(),
        }
    }
}

impl Default for RawScheduler {
    fn default() -> Self {
        Self {
            routing: "affinity".to_owned(),
            max_bypass: DEFAULT_MAX_BYPASS,
            max_wait: format_duration(Some(DEFAULT_MAX_WAIT)),
            queue_per_backend: DEFAULT_QUEUE_PER_BACKEND,
            queue_total: DEFAULT_QUEUE_TOTAL,
            pass_through: "first".to_owned(),
        }
    }
}

impl Default for RawHealth {
    fn default() -> Self {
        Self {
            interval: format_duration(Some(DEFAULT_HEALTH_INTERVAL)),
            timeout: format_duration(Some(DEFAULT_HEALTH_TIMEOUT)),
            unhealthy_after: 2,
            healthy_after: 1,
        }
    }
}

impl Default for RawMemory {
    fn default() -> Self {
        Self {
            min_change_mib: DEFAULT_MIN_CHANGE_MIB,
            verify_before_generation: true,
            count_other_processes: false,
            client_memory_options: "strip".to_owned(),
            default_profile: "sd15".to_owned(),
        }
    }
}

impl Default for RawBackend {
    fn default() -> Self {
        Self {
            url: DEFAULT_BACKEND_URL.to_owned(),
            preserve_host: false,
            gpu: GpuSelector::Index(0),
            vram_source: "auto".to_owned(),
            auth: None,
            profiles: Vec::new(),
            weight: 1.0,
        }
    }
}

impl Default for RawTimeouts {
    fn default() -> Self {
        Self {
            connect: format_duration(Some(DEFAULT_CONNECT_TIMEOUT)),
            request: format_duration(Some(DEFAULT_REQUEST_TIMEOUT)),
            generation: format_duration(None),
            shutdown_grace: format_duration(Some(DEFAULT_SHUTDOWN_GRACE)),
            routes: BTreeMap::from([(
                "/sdapi/v1/progress".to_owned(),
                format_duration(Some(DEFAULT_PROGRESS_TIMEOUT)),
            )]),
        }
    }
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_request_body: DEFAULT_MAX_REQUEST_BODY.to_owned(),
            max_inspected_body: DEFAULT_MAX_INSPECTED_BODY.to_owned(),
        }
    }
}

impl Default for RawGeneration {
    fn default() -> Self {
        Self {
            routes: DEFAULT_GENERATION_ROUTES.map(str::to_owned).to_vec(),
            on_client_disconnect: OnClientDisconnect::default(),
        }
    }
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: "text".to_owned(),
            level: "info".to_owned(),
        }
    }
}

/// The validated configuration the proxy runs on.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub backends: Vec<Backend>,
    pub timeouts: Timeouts,
    pub max_request_body: u64,
    pub max_inspected_body: u64,
    pub generation_routes: Vec<String>,
    pub on_client_disconnect: OnClientDisconnect,
    pub log_format: LogFormat,
    pub log_level: String,
    pub nvml_library: Option<std::path::PathBuf>,
    pub memory: Memory,
    pub scheduler: Scheduler,
    pub health: Health,
    /// Embedded and configured profiles, in matching order.
    pub profiles: Vec<Profile>,
    /// Index of `memory.default_profile` in `profiles`.
    pub default_profile: usize,
    /// What it was built from, for `check-config` and the status page.
    pub raw: RawConfig,
}

#[derive(Debug, Clone)]
pub struct Memory {
    pub min_change_mib: u64,
    pub verify_before_generation: bool,
    pub count_other_processes: bool,
    pub client_memory_options: ClientMemoryOptions,
}

/// What happens to memory keys a client sends itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VramPreference {
    /// NVML on this host, else the backend's `/sdapi/v1/memory`.
    Auto,
    /// Always the backend's `/sdapi/v1/memory`.
    Backend,
}

/// A validated profile.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub patterns: Vec<Pattern>,
    pub presets: Vec<String>,
    pub policy: MemoryPolicy,
    pub options: serde_json::Map<String, serde_json::Value>,
    pub request_defaults: serde_json::Map<String, serde_json::Value>,
}

impl ProfileMatch for Profile {
    fn name(&self) -> &str {
        &self.name
    }
    fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }
    fn presets(&self) -> &[String] {
        &self.presets
    }
}

impl Profile {
    /// The stored "GPU Weights" option Forge's UI applies for this profile's preset
    /// (`flux_GPU_MB`, `xl_GPU_MB`); the proxy keeps it equal to its own value so a page
    /// reload lands on it.
    pub fn preset_weights_key(&self) -> Option<&'static str> {
        match self.options.get("forge_preset").and_then(|v| v.as_str()) {
            Some("flux") => Some("flux_GPU_MB"),
            Some("xl") => Some("xl_GPU_MB"),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Backend {
    /// Scheme and authority; a path prefix, when the URL has one, is in `base_path`.
    pub scheme: Scheme,
    pub authority: Authority,
    /// The `Host` header sent to it (its authority), made once rather than per request.
    pub host: http::HeaderValue,
    /// Path prefix without a trailing slash (`""` for none).
    pub base_path: String,
    pub preserve_host: bool,
    /// The URL as configured, for logs and messages.
    pub url: String,
    pub gpu: GpuSelector,
    pub vram: VramPreference,
    /// `Authorization: Basic …` for the proxy's own calls when the client sent none.
    pub authorization: Option<http::HeaderValue>,
    /// Indexes into `Config::profiles`; empty: every profile.
    pub profiles: Vec<usize>,
    pub weight: f64,
}

impl Backend {
    /// Whether this backend may serve `profile` (an index into `Config::profiles`).
    pub fn serves(&self, profile: usize) -> bool {
        self.profiles.is_empty() || self.profiles.contains(&profile)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    Affinity,
    Random,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PassThroughRouting {
    First,
    RoundRobin,
}

#[derive(Debug, Clone)]
pub struct Scheduler {
    pub routing: Routing,
    pub max_bypass: u32,
    pub max_wait: Option<Duration>,
    pub queue_per_backend: usize,
    pub queue_total: usize,
    pub pass_through: PassThroughRouting,
}

#[derive(Debug, Clone)]
pub struct Health {
    pub interval: Option<Duration>,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

#[derive(Debug, Clone)]
pub struct Timeouts {
    pub connect: Option<Duration>,
    pub request: Option<Duration>,
    pub generation: Option<Duration>,
    pub shutdown_grace: Option<Duration>,
    pub routes: BTreeMap<String, Option<Duration>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A configuration value that is not what the proxy expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {value} is not valid: expected {expected}")]
pub struct ConfigError {
    pub key: String,
    pub value: String,
    pub expected: String,
}

/// Config problems found while loading, one line each.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

fn invalid(key: impl Into<String>, value: impl fmt::Display, expected: &str) -> ConfigError {
    ConfigError {
        key: key.into(),
        value: format!("{:?}", value.to_string()),
        expected: expected.to_owned(),
    }
}

/// Values given on the command line; they win over the file and the environment.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<RawBackend>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<OverrideLog>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nvml_library: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct OverrideLog {
    pub format: String,
}

impl Overrides {
    pub fn backend_urls(urls: &[String]) -> Option<Vec<RawBackend>> {
        (!urls.is_empty()).then(|| {
            urls.iter()
                .map(|url| RawBackend {
                    url: url.clone(),
                    ..RawBackend::default()
                })
                .collect()
        })
    }
}

/// Loads defaults, then `file` (if any), then the environment, then `overrides`, and validates.
pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigErrors> {
    let mut figment = Figment::from(Serialized::defaults(RawConfig::default()));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigErrors(vec![format!(
                "config file {}: not found or not a file",
                path.display()
            )]));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    let figment = figment
        // CONFIG and BACKEND are read by the command line parser itself.
        .merge(
            Env::prefixed(ENV_PREFIX)
                .ignore(&["CONFIG", "BACKEND"])
                .split("__"),
        )
        .merge(Serialized::defaults(overrides));
    let raw: RawConfig = figment.extract().map_err(describe_figment_error)?;
    Config::try_from(raw).map_err(|e| ConfigErrors(vec![e.to_string()]))
}

/// Loads a configuration from TOML text alone (no environment), as tests and tools need.
pub fn from_toml_str(text: &str) -> Result<Config, ConfigErrors> {
    let raw: RawConfig = Figment::from(Serialized::defaults(RawConfig::default()))
        .merge(Toml::string(text))
        .extract()
        .map_err(describe_figment_error)?;
    Config::try_from(raw).map_err(|e| ConfigErrors(vec![e.to_string()]))
}

fn describe_figment_error(error: figment::Error) -> ConfigErrors {
    use figment::error::Kind;
    ConfigErrors(
        error
            .into_iter()
            .map(|e| {
                let key = e.path.join(".");
                let source = e
                    .metadata
                    .as_ref()
                    .and_then(|m| m.source.as_ref().map(|s| format!(" (in {s})")))
                    .unwrap_or_default();
                let what = match &e.kind {
                    Kind::UnknownField(field, expected) => {
                        let key = if key.is_empty() { field.clone() } else { key };
                        return format!(
                            "config key `{key}` is not a known key{source}: expected one of {}",
                            expected.join(", ")
                        );
                    }
                    Kind::InvalidType(actual, expected) => {
                        format!("{actual} is not valid: expected {expected}")
                    }
                    Kind::InvalidValue(actual, expected) => {
                        format!("{actual} is not valid: expected {expected}")
                    }
                    other => other.to_string(),
                };
                format!("config key `{key}`: {what}{source}")
            })
            .collect(),
    )
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, Self::Error> {
        let listen = raw.listen.parse().map_err(|_| {
            invalid(
                "listen",
                &raw.listen,
                "an address and port like 127.0.0.1:7870",
            )
        })?;
        if raw.backends.is_empty() {
            return Err(invalid("backends", "[]", "at least one backend with a url"));
        }
        let backends = raw
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| Backend::parse(i, b))
            .collect::<Result<Vec<_>, _>>()?;
        let t = &raw.timeouts;
        let timeouts = Timeouts {
            connect: parse_duration("timeouts.connect", &t.connect)?,
            request: parse_duration("timeouts.request", &t.request)?,
            generation: parse_duration("timeouts.generation", &t.generation)?,
            shutdown_grace: parse_duration("timeouts.shutdown_grace", &t.shutdown_grace)?,
            routes: t
                .routes
                .iter()
                .map(|(path, v)| {
                    if !path.starts_with('/') {
                        return Err(invalid("timeouts.routes", path, "a path starting with /"));
                    }
                    Ok((
                        path.clone(),
                        parse_duration(&format!("timeouts.routes.\"{path}\""), v)?,
                    ))
                })
                .collect::<Result<_, _>>()?,
        };
        let size = |key: &str, value: &str| {
            value
                .parse::<ByteSize>()
                .map(|size| size.as_u64())
                .map_err(|_| invalid(key, value, "a size like \"64MiB\" or \"1GiB\""))
        };
        let max_request_body = size("limits.max_request_body", &raw.limits.max_request_body)?;
        let max_inspected_body = size("limits.max_inspected_body", &raw.limits.max_inspected_body)?;
        for path in &raw.generation.routes {
            if !path.starts_with("/") {
                return Err(invalid("generation.routes", path, "a path starting with /"));
            }
        }
        let log_format = match raw.log.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(invalid("log.format", other, "\"text\" or \"json\"")),
        };
        let memory = Memory {
            min_change_mib: raw.memory.min_change_mib,
            verify_before_generation: raw.memory.verify_before_generation,
            count_other_processes: raw.memory.count_other_processes,
            client_memory_options: match raw.memory.client_memory_options.as_str() {
                "strip" => ClientMemoryOptions::Strip,
                "honor" => ClientMemoryOptions::Honor,
                "reject" => ClientMemoryOptions::Reject,
                other => {
                    return Err(invalid(
                        "memory.client_memory_options",
                        other,
                        "\"strip\", \"honor\" or \"reject\"",
                    ))
                }
            },
        };
        let mut raw = raw;
        raw.profiles = effective_profiles(&raw.profiles);
        let profiles = raw
            .profiles
            .iter()
            .enumerate()
            .map(|(i, p)| Profile::parse(i, p))
            .collect::<Result<Vec<_>, _>>()?;
        let default_profile = profiles
            .iter()
            .position(|p| p.name == raw.memory.default_profile)
            .ok_or_else(|| {
                let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
                invalid(
                    "memory.default_profile",
                    &raw.memory.default_profile,
                    &format!("one of the profiles: {}", names.join(", ")),
                )
            })?;
        let mut backends = backends;
        for (i, (backend, raw_backend)) in backends.iter_mut().zip(&raw.backends).enumerate() {
            for name in &raw_backend.profiles {
                let index = profiles
                    .iter()
                    .position(|p| p.name == *name)
                    .ok_or_else(|| {
                        let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
                        invalid(
                            format!("backends[{i}].profiles"),
                            name,
                            &format!("names of profiles: {}", names.join(", ")),
                        )
                    })?;
                backend.profiles.push(index);
            }
        }
        let sched = &raw.scheduler;
        let scheduler = Scheduler {
            routing: match sched.routing.as_str() {
                "affinity" => Routing::Affinity,
                "random" => Routing::Random,
                other => {
                    return Err(invalid(
                        "scheduler.routing",
                        other,
                        "\"affinity\" or \"random\"",
                    ))
                }
            },
            max_bypass: sched.max_bypass,
            max_wait: parse_duration("scheduler.max_wait", &sched.max_wait)?,
            queue_per_backend: sched.queue_per_backend,
            queue_total: sched.queue_total,
            pass_through: match sched.pass_through.as_str() {
                "first" => PassThroughRouting::First,
                "round_robin" => PassThroughRouting::RoundRobin,
                other => {
                    return Err(invalid(
                        "scheduler.pass_through",
                        other,
                        "\"first\" or \"round_robin\"",
                    ))
                }
            },
        };
        let health = Health {
            interval: parse_duration("health.interval", &raw.health.interval)?,
            timeout: parse_duration("health.timeout", &raw.health.timeout)?
                .unwrap_or(DEFAULT_HEALTH_TIMEOUT),
            unhealthy_after: raw.health.unhealthy_after.max(1),
            healthy_after: raw.health.healthy_after.max(1),
        };
        Ok(Self {
            listen,
            backends,
            timeouts,
            max_request_body,
            max_inspected_body,
            generation_routes: raw.generation.routes.clone(),
            on_client_disconnect: raw.generation.on_client_disconnect,
            log_format,
            log_level: raw.log.level.clone(),
            nvml_library: raw.nvml_library.as_ref().map(std::path::PathBuf::from),
            memory,
            scheduler,
            health,
            profiles,
            default_profile,
            raw,
        })
    }
}

/// User profiles first (so they win over the catch-all `sd15`), then the embedded ones;
/// a user profile named like an embedded one takes its place instead.
fn effective_profiles(user: &[RawProfile]) -> Vec<RawProfile> {
    let mut defaults = default_profiles();
    let mut added = Vec::new();
    for profile in user {
        match defaults.iter_mut().find(|d| d.name == profile.name) {
            Some(slot) => *slot = profile.clone(),
            None => added.push(profile.clone()),
        }
    }
    added.extend(defaults);
    added
}

impl Profile {
    fn parse(index: usize, raw: &RawProfile) -> Result<Self, ConfigError> {
        let key = |field: &str| format!("profiles[{index}].{field}");
        if raw.name.trim().is_empty() {
            return Err(invalid(key("name"), &raw.name, "a profile name"));
        }
        let patterns = raw
            .patterns
            .iter()
            .map(|p| {
                Pattern::parse(p)
                    .map_err(|e| invalid(key("patterns"), p, &format!("a glob or re:REGEX ({e})")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let chosen: Vec<&str> = [
            raw.inference_memory_mib.map(|_| "inference_memory_mib"),
            raw.gpu_weights_mib.map(|_| "gpu_weights_mib"),
            raw.gpu_weights_percent.map(|_| "gpu_weights_percent"),
            raw.weights_mib.map(|_| "weights_mib"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let policy = match (chosen.as_slice(), raw) {
            ([], _) => {
                return Err(invalid(
                    key("weights_mib"),
                    "(none)",
                    "one of inference_memory_mib, gpu_weights_mib, gpu_weights_percent or weights_mib",
                ))
            }
            ([_, _, ..], _) => {
                return Err(invalid(
                    key("policy"),
                    chosen.join(" + "),
                    "only one of inference_memory_mib, gpu_weights_mib, gpu_weights_percent or weights_mib",
                ))
            }
            (_, RawProfile { inference_memory_mib: Some(mib), .. }) => {
                MemoryPolicy::Fixed { inference_mib: *mib }
            }
            (_, RawProfile { gpu_weights_mib: Some(mib), .. }) => MemoryPolicy::Weights {
                gpu_weights_mib: *mib,
            },
            (_, RawProfile { gpu_weights_percent: Some(p), .. }) => {
                if !(0.0..=100.0).contains(p) {
                    return Err(invalid(key("gpu_weights_percent"), p, "a percentage from 0 to 100"));
                }
                MemoryPolicy::WeightsPercent {
                    gpu_weights_percent: *p,
                }
            }
            (_, raw) => MemoryPolicy::Auto {
                weights_mib: raw.weights_mib.unwrap_or_default(),
                min_inference_mib: raw.min_inference_mib.unwrap_or(DEFAULT_MIN_INFERENCE_MIB),
                inference_per_megapixel_mib: raw
                    .inference_per_megapixel_mib
                    .unwrap_or(DEFAULT_INFERENCE_PER_MEGAPIXEL_MIB),
                reference_megapixels: raw
                    .reference_megapixels
                    .unwrap_or(DEFAULT_REFERENCE_MEGAPIXELS),
            },
        };
        Ok(Self {
            name: raw.name.clone(),
            patterns,
            presets: raw.presets.clone(),
            policy,
            options: raw.options.clone(),
            request_defaults: raw.request_defaults.clone(),
        })
    }
}

impl Backend {
    fn parse(index: usize, raw: &RawBackend) -> Result<Self, ConfigError> {
        let key = format!("backends[{index}].url");
        let expected = "an http URL like http://127.0.0.1:7860";
        let uri: Uri = raw
            .url
            .parse()
            .map_err(|_| invalid(&key, &raw.url, expected))?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(invalid(&key, &raw.url, expected));
        };
        if scheme != &Scheme::HTTP {
            return Err(invalid(
                &key,
                &raw.url,
                "an http:// URL (https backends are not supported)",
            ));
        }
        if uri.query().is_some() {
            return Err(invalid(&key, &raw.url, "a URL without a query string"));
        }
        let host = http::HeaderValue::from_str(authority.as_str())
            .map_err(|_| invalid(&key, &raw.url, expected))?;
        Ok(Self {
            scheme: scheme.clone(),
            authority: authority.clone(),
            host,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            preserve_host: raw.preserve_host,
            url: raw.url.clone(),
            gpu: raw.gpu.clone(),
            authorization: match &raw.auth {
                None => None,
                Some(auth) if auth.contains(':') => {
                    use base64::Engine as _;
                    let encoded = base64::engine::general_purpose::STANDARD.encode(auth);
                    http::HeaderValue::from_str(&format!("Basic {encoded}")).ok()
                }
                Some(_) => {
                    return Err(invalid(
                        format!("backends[{index}].auth"),
                        "(hidden)",
                        "user:password",
                    ))
                }
            },
            profiles: Vec::new(),
            weight: if raw.weight.is_finite() && raw.weight > 0.0 {
                raw.weight
            } else {
                return Err(invalid(
                    format!("backends[{index}].weight"),
                    raw.weight,
                    "a number above 0",
                ));
            },
            vram: match raw.vram_source.as_str() {
                "auto" => VramPreference::Auto,
                "backend" => VramPreference::Backend,
                other => {
                    return Err(invalid(
                        format!("backends[{index}].vram_source"),
                        other,
                        "\"auto\" or \"backend\"",
                    ))
                }
            },
        })
    }
}

impl Config {
    /// The effective configuration as TOML, for `check-config`.
    /// Backend passwords are shown as `user:***`.
    pub fn to_toml(&self) -> String {
        let mut raw = self.raw.clone();
        for backend in &mut raw.backends {
            if let Some(auth) = backend.auth.as_mut() {
                let user = auth.split(':').next().unwrap_or_default().to_owned();
                *auth = format!("{user}:***");
            }
        }
        toml::to_string_pretty(&raw).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }

    /// The most the proxy reads into memory of a body it inspects: the smaller limit.
    pub fn inspect_limit(&self) -> u64 {
        self.max_inspected_body.min(self.max_request_body)
    }

    /// How long to wait for the backend's response headers on `path` (percent-decoded),
    /// for a request that is not a generation (those wait `timeouts.generation`).
    pub fn pass_through_timeout(&self, path: &str) -> Option<Duration> {
        match self.timeouts.routes.get(path) {
            Some(t) => *t,
            None => self.timeouts.request,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        // The embedded defaults are valid; a test pins that.
        Self::try_from(RawConfig::default()).unwrap_or_else(|e| panic!("embedded defaults: {e}"))
    }
}

/// `"off"` means no limit; anything else is a humantime duration such as `"30s"` or `"2m"`.
fn parse_duration(key: &str, value: &str) -> Result<Option<Duration>, ConfigError> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    match humantime::parse_duration(value) {
        Ok(d) if d.is_zero() => Ok(None),
        Ok(d) => Ok(Some(d)),
        Err(_) => Err(invalid(
            key,
            value,
            "a duration like \"30s\", \"500ms\", \"10m\", or \"off\"",
        )),
    }
}

fn format_duration(value: Option<Duration>) -> String {
    match value {
        Some(d) => humantime::format_duration(d).to_string(),
        None => "off".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_serve_forge_on_7860_from_7870() {
        let config = Config::default();
        assert_eq!(config.listen.to_string(), "127.0.0.1:7870");
        assert_eq!(config.backends.len(), 1);
        assert_eq!(config.backends[0].authority.as_str(), "127.0.0.1:7860");
        assert_eq!(config.timeouts.generation, None);
        assert_eq!(config.max_request_body, 1 << 30);
    }

    #[test]
    fn unknown_key_is_named_with_its_section() {
        let err = from_toml_str("[timeouts]\nconect = \"5s\"\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("`timeouts.conect` is not a known key"),
            "{text}"
        );
        assert!(text.contains("connect"), "{text}");
    }

    #[test]
    fn bad_duration_names_key_value_and_expectation() {
        let err = from_toml_str("[timeouts]\nconnect = \"soon\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "config key `timeouts.connect`: \"soon\" is not valid: expected a duration like \"30s\", \"500ms\", \"10m\", or \"off\""
        );
    }

    #[test]
    fn wrong_type_names_key_and_types() {
        let err = from_toml_str("listen = 7870\n").unwrap_err().to_string();
        assert!(err.starts_with("config key `listen`:"), "{err}");
        assert!(err.contains("7870") && err.contains("string"), "{err}");
    }

    #[test]
    fn https_backend_is_refused_with_reason() {
        let err = from_toml_str("[[backends]]\nurl = \"https://gpu:7860\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "config key `backends[0].url`: \"https://gpu:7860\" is not valid: expected an http:// URL (https backends are not supported)"
        );
    }

    #[test]
    fn backend_path_prefix_is_kept_without_trailing_slash() {
        let config = from_toml_str("[[backends]]\nurl = \"http://gpu:7860/forge/\"\n").unwrap();
        assert_eq!(config.backends[0].base_path, "/forge");
    }

    #[test]
    fn off_and_zero_mean_no_timeout_and_routes_override_request() {
        let config = from_toml_str(
            "[timeouts]\nrequest = \"off\"\n[timeouts.routes]\n\"/sdapi/v1/progress\" = \"2s\"\n\"/slow\" = \"0s\"\n",
        )
        .unwrap();
        assert_eq!(config.pass_through_timeout("/anything"), None);
        assert_eq!(
            config.pass_through_timeout("/sdapi/v1/progress"),
            Some(Duration::from_secs(2))
        );
        assert_eq!(config.pass_through_timeout("/slow"), None);
        assert_eq!(config.timeouts.generation, None);
    }

    #[test]
    fn body_limit_accepts_human_sizes() {
        let config = from_toml_str("[limits]\nmax_request_body = \"64MiB\"\n").unwrap();
        assert_eq!(config.max_request_body, 64 << 20);
        let err = from_toml_str("[limits]\nmax_request_body = \"lots\"\n").unwrap_err();
        assert!(err
            .to_string()
            .contains("`limits.max_request_body`: \"lots\""));
    }

    #[test]
    fn user_profiles_come_first_and_replace_embedded_ones_by_name() {
        let config = from_toml_str(
            "[[profiles]]\nname = \"sd35\"\npatterns = [\"re:^sd3\"]\nweights_mib = 9000\n\n\
             [[profiles]]\nname = \"flux\"\npatterns = [\"*flux*\"]\ninference_memory_mib = 4096\n",
        )
        .unwrap();
        let names: Vec<&str> = config.profiles.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["sd35", "flux", "sdxl", "sd15"]);
        assert_eq!(
            config.profiles[1].policy,
            MemoryPolicy::Fixed {
                inference_mib: 4096
            }
        );
        assert_eq!(
            config.profiles[0].policy,
            MemoryPolicy::Auto {
                weights_mib: 9000,
                min_inference_mib: DEFAULT_MIN_INFERENCE_MIB,
                inference_per_megapixel_mib: DEFAULT_INFERENCE_PER_MEGAPIXEL_MIB,
                reference_megapixels: DEFAULT_REFERENCE_MEGAPIXELS,
            }
        );
        assert_eq!(config.default_profile, 3);
    }

    #[test]
    fn a_profile_takes_exactly_one_policy() {
        let both = "[[profiles]]\nname = \"x\"\ninference_memory_mib = 1\ngpu_weights_mib = 2\n";
        assert_eq!(
            from_toml_str(both).unwrap_err().to_string(),
            "config key `profiles[0].policy`: \"inference_memory_mib + gpu_weights_mib\" is not valid: \
             expected only one of inference_memory_mib, gpu_weights_mib, gpu_weights_percent or weights_mib"
        );
        let none = "[[profiles]]\nname = \"x\"\n";
        assert!(from_toml_str(none)
            .unwrap_err()
            .to_string()
            .starts_with("config key `profiles[0].weights_mib`: \"(none)\" is not valid"));
        let bad_glob = "[[profiles]]\nname = \"x\"\npatterns = [\"[\"]\nweights_mib = 1\n";
        assert!(from_toml_str(bad_glob)
            .unwrap_err()
            .to_string()
            .starts_with(
            "config key `profiles[0].patterns`: \"[\" is not valid: expected a glob or re:REGEX"
        ));
    }

    #[test]
    fn memory_settings_are_checked() {
        let err = from_toml_str("[memory]\ndefault_profile = \"sd9\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "config key `memory.default_profile`: \"sd9\" is not valid: expected one of the profiles: flux, sdxl, sd15"
        );
        let err = from_toml_str("[memory]\nclient_memory_options = \"ignore\"\n").unwrap_err();
        assert!(err
            .to_string()
            .contains("expected \"strip\", \"honor\" or \"reject\""));
        let err = from_toml_str("[[backends]]\nurl = \"http://a:1\"\nvram_source = \"gpu\"\n")
            .unwrap_err();
        assert!(err
            .to_string()
            .starts_with("config key `backends[0].vram_source`"));
    }

    #[test]
    fn gpu_is_an_index_or_a_uuid() {
        let config =
            from_toml_str("[[backends]]\nurl = \"http://a:1\"\ngpu = \"GPU-1234\"\n").unwrap();
        assert_eq!(config.backends[0].gpu, GpuSelector::Uuid("GPU-1234".into()));
        let config = from_toml_str("[[backends]]\nurl = \"http://a:1\"\ngpu = 2\n").unwrap();
        assert_eq!(config.backends[0].gpu, GpuSelector::Index(2));
    }

    #[test]
    fn effective_config_round_trips_through_toml() {
        let config = Config::default();
        let again = from_toml_str(&config.to_toml()).unwrap();
        assert_eq!(again.raw, config.raw);
    }
}
