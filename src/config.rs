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
/// Forge's generation routes: the ones the proxy inspects before forwarding.
pub const DEFAULT_GENERATION_ROUTES: [&str; 2] = ["/sdapi/v1/txt2img", "/sdapi/v1/img2img"];

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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBackend {
    pub url: String,
    /// Send the client's `Host` header instead of the backend's.
    pub preserve_host: bool,
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawGeneration {
    /// Paths handled as generations (POST only).
    pub routes: Vec<String>,
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
        }
    }
}

impl Default for RawBackend {
    fn default() -> Self {
        Self {
            url: DEFAULT_BACKEND_URL.to_owned(),
            preserve_host: false,
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
        }
    }
}

impl Default for RawGeneration {
    fn default() -> Self {
        Self {
            routes: DEFAULT_GENERATION_ROUTES.map(str::to_owned).to_vec(),
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
    pub generation_routes: Vec<String>,
    pub log_format: LogFormat,
    pub log_level: String,
    /// What it was built from, for `check-config` and the status page.
    pub raw: RawConfig,
}

#[derive(Debug, Clone)]
pub struct Backend {
    /// Scheme and authority; a path prefix, when the URL has one, is in `base_path`.
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix without a trailing slash (`""` for none).
    pub base_path: String,
    pub preserve_host: bool,
    /// The URL as configured, for logs and messages.
    pub url: String,
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
        let max_request_body = raw
            .limits
            .max_request_body
            .parse::<ByteSize>()
            .map_err(|_| {
                invalid(
                    "limits.max_request_body",
                    &raw.limits.max_request_body,
                    "a size like \"64MiB\" or \"1GiB\"",
                )
            })?
            .as_u64();
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
        Ok(Self {
            listen,
            backends,
            timeouts,
            max_request_body,
            generation_routes: raw.generation.routes.clone(),
            log_format,
            log_level: raw.log.level.clone(),
            raw,
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
        Ok(Self {
            scheme: scheme.clone(),
            authority: authority.clone(),
            base_path: uri.path().trim_end_matches('/').to_owned(),
            preserve_host: raw.preserve_host,
            url: raw.url.clone(),
        })
    }
}

impl Config {
    /// The effective configuration as TOML, for `check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(&self.raw).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }

    /// How long to wait for the backend's response headers on `path`.
    pub fn timeout_for(&self, path: &str, generation: bool) -> Option<Duration> {
        if generation {
            return self.timeouts.generation;
        }
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
        assert_eq!(config.timeout_for("/anything", false), None);
        assert_eq!(
            config.timeout_for("/sdapi/v1/progress", false),
            Some(Duration::from_secs(2))
        );
        assert_eq!(config.timeout_for("/slow", false), None);
        assert_eq!(config.timeout_for("/sdapi/v1/progress", true), None);
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
    fn effective_config_round_trips_through_toml() {
        let config = Config::default();
        let again = from_toml_str(&config.to_toml()).unwrap();
        assert_eq!(again.raw, config.raw);
    }
}
