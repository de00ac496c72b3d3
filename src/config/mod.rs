//! Configuration: embedded defaults, then the TOML file, then `FORGE_VRAM_PROXY_*`
//! environment variables, then command-line flags.
//!
//! - [`raw`] — what serde reads: [`RawConfig`], unknown keys rejected by name.
//! - [`defaults`] — every default, and the embedded profiles.
//! - `validate` — `TryFrom<RawConfig> for Config`, one function per section.
//!
//! [`Config`] is the validated form the proxy runs on.

pub mod defaults;
pub mod raw;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use http::uri::{Authority, Scheme};
use serde::Serialize;

use crate::backend::nvml::GpuSelector;
use crate::decide::policy::MemoryPolicy;
use crate::decide::profile::{Pattern, ProfileMatch};
use forge_schema::key;

pub use crate::decide::profile::ProfileId;

pub use defaults::*;
pub use raw::*;

/// The validated configuration the proxy runs on.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub backends: Vec<BackendConfig>,
    pub timeouts: Timeouts,
    pub max_request_body: u64,
    pub max_inspected_body: u64,
    pub max_inspected_total: u64,
    pub max_connections: usize,
    /// Connections to one backend open at once, in use and idle.
    pub backend_connections: usize,
    pub generation_routes: Vec<String>,
    pub on_client_disconnect: OnClientDisconnect,
    pub log_format: LogFormat,
    pub log_level: String,
    pub nvml_library: Option<std::path::PathBuf>,
    pub memory: Memory,
    pub scheduler: Scheduler,
    pub health: Health,
    /// Client keys and trusted proxies.
    pub access: Access,
    /// The listener's certificate and key, when it speaks HTTPS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Embedded and configured profiles, in matching order.
    pub profiles: Vec<Profile>,
    /// Index of `memory.default_profile` in `profiles`.
    pub default_profile: ProfileId,
    /// What it was built from, for `check-config` and the status page.
    pub raw: RawConfig,
}

/// Who may call the proxy.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Empty: no keys, every client may do everything.
    pub keys: Vec<std::sync::Arc<ClientKey>>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// A validated client key: its name, role and limit, and the SHA-256 of the key (the key
/// itself is not kept).
#[derive(Clone)]
pub struct ClientKey {
    pub name: String,
    pub digest: [u8; 32],
    pub role: Role,
    pub max_queued: Option<usize>,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("max_queued", &self.max_queued)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct Memory {
    pub min_change_mib: u64,
    pub verify_before_generation: bool,
    pub count_other_processes: bool,
    pub client_memory_options: ClientMemoryOptions,
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
        match self.options.get(key::PRESET).and_then(|v| v.as_str()) {
            Some("flux") => Some(key::FLUX_GPU_WEIGHTS),
            Some("xl") => Some(key::XL_GPU_WEIGHTS),
            _ => None,
        }
    }
}

/// One of `Config::backends`, by its place: the proxy's backends are kept in the same order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub usize);

impl std::fmt::Display for BackendId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "backends[{}]", self.0)
    }
}

/// One backend as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
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
    pub profiles: Vec<ProfileId>,
    pub weight: f64,
    /// How an `https://` backend's certificate is checked.
    pub tls: BackendTls,
}

/// The crypto provider of every TLS connection, listener and backends: *ring*, which builds
/// with nothing but a C compiler (no CMake), at the price of no post-quantum key exchange.
pub fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How the proxy checks an `https://` backend's certificate.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendTls {
    /// An `http://` backend.
    Off,
    /// Against the system's roots.
    SystemRoots,
    /// Against the certificates of `tls_ca_file` (read when the configuration was loaded).
    CaFile {
        path: std::path::PathBuf,
        roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    },
    /// Not at all (`tls_insecure_skip_verify`).
    SkipVerify,
}

impl BackendConfig {
    /// Whether this backend may serve `profile` (`None`: whatever its checkpoint is).
    pub fn serves(&self, profile: Option<ProfileId>) -> bool {
        profile.is_none_or(|p| self.profiles.is_empty() || self.profiles.contains(&p))
    }
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
    pub client_header: Option<Duration>,
    pub client_body_idle: Option<Duration>,
    pub keep_alive: Option<Duration>,
    pub routes: BTreeMap<String, Option<Duration>>,
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
        // CONFIG, BACKEND and KEY (`status`'s client key) are read by the command line parser.
        .merge(
            Env::prefixed(ENV_PREFIX)
                .ignore(&["CONFIG", "BACKEND", "KEY"])
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
                let key = key_of(&e.path);
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
                    Kind::UnknownVariant(actual, expected) => {
                        format!("{actual:?} is not valid: expected {}", one_of(expected))
                    }
                    other => other.to_string(),
                };
                format!("config key `{key}`: {what}{source}")
            })
            .collect(),
    )
}

/// A key as the proxy's own messages write it: `backends[0].vram_source`.
fn key_of(path: &[String]) -> String {
    let mut key = String::new();
    for part in path {
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
    }
    key
}

/// `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
fn one_of(choices: &[&str]) -> String {
    let quoted: Vec<String> = choices.iter().map(|c| format!("{c:?}")).collect();
    match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

impl Config {
    /// The effective configuration as TOML, for `check-config`.
    /// Backend passwords are shown as `user:***`, client keys as `***`.
    pub fn to_toml(&self) -> String {
        let mut raw = self.raw.clone();
        for key in &mut raw.access.keys {
            for secret in [&mut key.key, &mut key.key_sha256] {
                if secret.is_some() {
                    *secret = Some("***".to_owned());
                }
            }
        }
        for backend in &mut raw.backends {
            if let Some(auth) = backend.auth.as_mut() {
                let user = auth.split(':').next().unwrap_or_default().to_owned();
                *auth = format!("{user}:***");
            }
        }
        toml::to_string_pretty(&raw).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }

    /// Every backend's id, in order.
    pub fn backend_ids(&self) -> impl Iterator<Item = BackendId> {
        (0..self.backends.len()).map(BackendId)
    }

    pub fn backend(&self, id: BackendId) -> &BackendConfig {
        &self.backends[id.0]
    }

    pub fn profile(&self, id: ProfileId) -> &Profile {
        &self.profiles[id.0]
    }

    pub fn profile_named(&self, name: &str) -> Option<ProfileId> {
        self.profiles
            .iter()
            .position(|p| p.name == name)
            .map(ProfileId)
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
    fn backend_schemes_other_than_http_and_https_are_refused() {
        let err = from_toml_str("[[backends]]\nurl = \"ftp://gpu:7860\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "config key `backends[0].url`: \"ftp://gpu:7860\" is not valid: expected an http:// or https:// URL like http://127.0.0.1:7860"
        );
        let config = from_toml_str("[[backends]]\nurl = \"https://gpu:7860\"\n").unwrap();
        assert_eq!(config.backends[0].tls, BackendTls::SystemRoots);
    }

    #[test]
    fn tls_keys_of_a_backend_must_fit_its_url() {
        let err = |toml: &str| from_toml_str(toml).unwrap_err().to_string();
        assert_eq!(
            err("[[backends]]\nurl = \"http://gpu:7860\"\ntls_insecure_skip_verify = true\n"),
            "config key `backends[0].tls_insecure_skip_verify`: \"true\" is not valid: expected false for an http:// backend (use an https:// URL)"
        );
        assert_eq!(
            err("[[backends]]\nurl = \"http://gpu:7860\"\ntls_ca_file = \"ca.pem\"\n"),
            "config key `backends[0].tls_ca_file`: \"ca.pem\" is not valid: expected no tls_ca_file for an http:// backend (use an https:// URL)"
        );
        assert_eq!(
            err("[[backends]]\nurl = \"https://gpu:7860\"\ntls_ca_file = \"ca.pem\"\ntls_insecure_skip_verify = true\n"),
            "config key `backends[0].tls_ca_file`: \"ca.pem\" is not valid: expected either tls_ca_file or tls_insecure_skip_verify, not both"
        );
        let missing = err(
            "[[backends]]\nurl = \"https://gpu:7860\"\ntls_ca_file = \"/nonexistent/ca.pem\"\n",
        );
        assert!(
            missing.starts_with("config key `backends[0].tls_ca_file`: \"/nonexistent/ca.pem\" is not valid: expected a readable PEM file of certificates"),
            "{missing}"
        );
        let config = from_toml_str(
            "[[backends]]\nurl = \"https://gpu:7860\"\ntls_insecure_skip_verify = true\n",
        )
        .unwrap();
        assert_eq!(config.backends[0].tls, BackendTls::SkipVerify);
    }

    #[test]
    fn backend_credentials_come_from_auth_auth_env_or_auth_file_and_one_only() {
        let dir = std::env::temp_dir().join(format!("fvp-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("forge-auth");
        std::fs::write(&file, "forge:from-a-file\n").unwrap();
        let config = from_toml_str(&format!(
            "[[backends]]\nurl = \"http://gpu:7860\"\nauth_file = \"{}\"\n",
            file.display()
        ))
        .unwrap();
        use base64::Engine as _;
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("forge:from-a-file")
        );
        assert_eq!(
            config.backends[0].authorization.as_ref().unwrap(),
            &expected
        );
        let err = from_toml_str(&format!(
            "[[backends]]\nurl = \"http://gpu:7860\"\nauth = \"a:b\"\nauth_file = \"{}\"\n",
            file.display()
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config key `backends[0]`: \"http://gpu:7860\" is not valid: expected at most one of auth, auth_env, auth_file"
        );
        std::fs::write(&file, "no-colon\n").unwrap();
        let err = from_toml_str(&format!(
            "[[backends]]\nurl = \"http://gpu:7860\"\nauth_file = \"{}\"\n",
            file.display()
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config key `backends[0].auth_file`: \"(hidden)\" is not valid: expected user:password"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_listener_needs_both_tls_files() {
        let err = from_toml_str("[tls]\ncert_file = \"cert.pem\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "config key `tls.key_file`: \"(missing)\" is not valid: expected a PEM private key file with tls.cert_file"
        );
    }

    #[test]
    fn backend_url_with_credentials_is_refused_without_showing_them() {
        let err = from_toml_str("[[backends]]\nurl = \"http://forge:hunter2@gpu:7860/\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config key `backends[0].url`: \"http://***@gpu:7860/\" is not valid: expected a URL without credentials: give Forge's --api-auth pair as backends[0].auth = \"user:password\""
        );
        assert!(!err.contains("hunter2"));
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
        assert_eq!(config.default_profile, ProfileId(3));
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
