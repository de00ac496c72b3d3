//! Every default in one place: the embedded defaults (a Forge on 127.0.0.1:7860, the proxy on
//! 7870, no config file needed), and the embedded profiles.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::backend::nvml::GpuSelector;
use crate::config::raw::*;
use forge_schema::path;

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
/// nginx's `client_header_timeout`, `client_body_timeout` and `keepalive_timeout` are 60 s,
/// 60 s and 75 s: long enough for any real client, short enough that a slow one cannot
/// hold a connection for ever.
pub const DEFAULT_CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_CLIENT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(75);
/// Four bodies of the largest inspected size at once.
pub const DEFAULT_MAX_INSPECTED_TOTAL: &str = "1GiB";
/// Each client connection may need a backend connection: two descriptors each, within the
/// descriptor limit the proxy raises to its hard limit at start.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Connections to one backend at once, in use and idle: at least the 256 concurrent small
/// requests the benchmark measures, well under uvicorn's and the system's limits.
pub const DEFAULT_BACKEND_CONNECTIONS: usize = 512;
/// img2img bodies carry base64 images (megabytes each); a GiB is far beyond any real request.
pub const DEFAULT_MAX_REQUEST_BODY: &str = "1GiB";
/// An img2img with four large init images is some tens of MiB of base64.
pub const DEFAULT_MAX_INSPECTED_BODY: &str = "256MiB";
/// Forge's generation routes: the ones the proxy inspects before forwarding.
pub const DEFAULT_GENERATION_ROUTES: [&str; 2] = [path::TXT2IMG, path::IMG2IMG];
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
            access: RawAccess::default(),
            tls: RawTls::default(),
            profiles: Vec::new(),
        }
    }
}

impl Default for RawScheduler {
    fn default() -> Self {
        Self {
            routing: Routing::Affinity,
            max_bypass: DEFAULT_MAX_BYPASS,
            max_wait: format_duration(Some(DEFAULT_MAX_WAIT)),
            queue_per_backend: DEFAULT_QUEUE_PER_BACKEND,
            queue_total: DEFAULT_QUEUE_TOTAL,
            pass_through: PassThroughRouting::First,
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
            client_memory_options: ClientMemoryOptions::Strip,
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
            vram_source: VramPreference::Auto,
            auth: None,
            auth_env: None,
            auth_file: None,
            profiles: Vec::new(),
            weight: 1.0,
            tls_ca_file: None,
            tls_insecure_skip_verify: false,
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
            client_header: format_duration(Some(DEFAULT_CLIENT_HEADER_TIMEOUT)),
            client_body_idle: format_duration(Some(DEFAULT_CLIENT_BODY_IDLE_TIMEOUT)),
            keep_alive: format_duration(Some(DEFAULT_KEEP_ALIVE_TIMEOUT)),
            routes: BTreeMap::from([(
                path::PROGRESS.to_owned(),
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
            max_inspected_total: DEFAULT_MAX_INSPECTED_TOTAL.to_owned(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            backend_connections: DEFAULT_BACKEND_CONNECTIONS,
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
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

/// A duration as the config file writes it: humantime, or `"off"`.
pub(super) fn format_duration(value: Option<Duration>) -> String {
    match value {
        Some(d) => humantime::format_duration(d).to_string(),
        None => "off".to_owned(),
    }
}
