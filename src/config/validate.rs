//! From what was written to what the proxy runs on: one function per section, each naming
//! the key and the value it refuses and what it expected.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use http::uri::Scheme;
use http::Uri;

use crate::config::defaults::*;
use crate::config::raw::*;
use crate::config::{
    Access, BackendConfig, BackendTls, ClientKey, Config, ConfigError, Health, Memory, Profile,
    ProfileId, Scheduler, Timeouts,
};
use crate::decide::policy::MemoryPolicy;
use crate::decide::profile::Pattern;

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(mut raw: RawConfig) -> Result<Self, Self::Error> {
        let listen = raw.listen.parse().map_err(|_| {
            invalid(
                "listen",
                &raw.listen,
                "an address and port like 127.0.0.1:7870",
            )
        })?;
        let mut backends = backends(&raw.backends)?;
        let timeouts = timeouts(&raw.timeouts)?;
        let limits = limits(&raw.limits)?;
        generation_routes(&raw.generation)?;
        raw.profiles = effective_profiles(&raw.profiles);
        let profiles = raw
            .profiles
            .iter()
            .enumerate()
            .map(|(i, p)| Profile::parse(i, p))
            .collect::<Result<Vec<_>, _>>()?;
        let default_profile =
            profile_index(&profiles, &raw.memory.default_profile).ok_or_else(|| {
                invalid(
                    "memory.default_profile",
                    &raw.memory.default_profile,
                    &format!("one of the profiles: {}", profile_names(&profiles)),
                )
            })?;
        backend_profiles(&mut backends, &raw.backends, &profiles)?;
        Ok(Self {
            listen,
            backends,
            timeouts,
            max_request_body: limits.max_request_body,
            max_inspected_body: limits.max_inspected_body,
            max_inspected_total: limits.max_inspected_total,
            max_connections: limits.max_connections,
            backend_connections: limits.backend_connections,
            generation_routes: raw.generation.routes.clone(),
            on_client_disconnect: raw.generation.on_client_disconnect,
            log_format: raw.log.format,
            log_level: raw.log.level.clone(),
            nvml_library: raw.nvml_library.as_ref().map(std::path::PathBuf::from),
            memory: memory(&raw.memory),
            scheduler: scheduler(&raw.scheduler)?,
            health: health(&raw.health)?,
            access: access(&raw.access)?,
            tls: listener_tls(&raw.tls)?,
            profiles,
            default_profile,
            raw,
        })
    }
}

fn backends(raw: &[RawBackend]) -> Result<Vec<BackendConfig>, ConfigError> {
    if raw.is_empty() {
        return Err(invalid("backends", "[]", "at least one backend with a url"));
    }
    raw.iter()
        .enumerate()
        .map(|(i, b)| BackendConfig::parse(i, b))
        .collect()
}

fn timeouts(t: &RawTimeouts) -> Result<Timeouts, ConfigError> {
    Ok(Timeouts {
        connect: parse_duration("timeouts.connect", &t.connect)?,
        request: parse_duration("timeouts.request", &t.request)?,
        generation: parse_duration("timeouts.generation", &t.generation)?,
        shutdown_grace: parse_duration("timeouts.shutdown_grace", &t.shutdown_grace)?,
        client_header: parse_duration("timeouts.client_header", &t.client_header)?,
        client_body_idle: parse_duration("timeouts.client_body_idle", &t.client_body_idle)?,
        keep_alive: parse_duration("timeouts.keep_alive", &t.keep_alive)?,
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
    })
}

/// The `[limits]` section, sizes in bytes.
struct Limits {
    max_request_body: u64,
    max_inspected_body: u64,
    max_inspected_total: u64,
    max_connections: usize,
    backend_connections: usize,
}

fn limits(raw: &RawLimits) -> Result<Limits, ConfigError> {
    let size = |key: &str, value: &str| {
        value
            .parse::<ByteSize>()
            .map(|size| size.as_u64())
            .map_err(|_| invalid(key, value, "a size like \"64MiB\" or \"1GiB\""))
    };
    let limits = Limits {
        max_request_body: size("limits.max_request_body", &raw.max_request_body)?,
        max_inspected_body: size("limits.max_inspected_body", &raw.max_inspected_body)?,
        max_inspected_total: size("limits.max_inspected_total", &raw.max_inspected_total)?,
        max_connections: raw.max_connections,
        backend_connections: raw.backend_connections,
    };
    if limits.max_connections == 0 {
        return Err(invalid("limits.max_connections", 0, "at least 1"));
    }
    if limits.backend_connections == 0 {
        return Err(invalid("limits.backend_connections", 0, "at least 1"));
    }
    if limits.max_inspected_total < limits.max_inspected_body.min(limits.max_request_body) {
        return Err(invalid(
            "limits.max_inspected_total",
            &raw.max_inspected_total,
            "at least limits.max_inspected_body, or one body of that size could never be read",
        ));
    }
    Ok(limits)
}

fn generation_routes(raw: &RawGeneration) -> Result<(), ConfigError> {
    match raw.routes.iter().find(|path| !path.starts_with('/')) {
        Some(path) => Err(invalid("generation.routes", path, "a path starting with /")),
        None => Ok(()),
    }
}

fn memory(raw: &RawMemory) -> Memory {
    Memory {
        min_change_mib: raw.min_change_mib,
        verify_before_generation: raw.verify_before_generation,
        count_other_processes: raw.count_other_processes,
        client_memory_options: raw.client_memory_options,
    }
}

fn profile_index(profiles: &[Profile], name: &str) -> Option<ProfileId> {
    profiles.iter().position(|p| p.name == name).map(ProfileId)
}

fn profile_names(profiles: &[Profile]) -> String {
    let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
    names.join(", ")
}

/// `backends[i].profiles`: names of profiles, as indexes.
fn backend_profiles(
    backends: &mut [BackendConfig],
    raw: &[RawBackend],
    profiles: &[Profile],
) -> Result<(), ConfigError> {
    for (i, (backend, raw_backend)) in backends.iter_mut().zip(raw).enumerate() {
        for name in &raw_backend.profiles {
            let index = profile_index(profiles, name).ok_or_else(|| {
                invalid(
                    format!("backends[{i}].profiles"),
                    name,
                    &format!("names of profiles: {}", profile_names(profiles)),
                )
            })?;
            backend.profiles.push(index);
        }
    }
    Ok(())
}

fn scheduler(raw: &RawScheduler) -> Result<Scheduler, ConfigError> {
    Ok(Scheduler {
        routing: raw.routing,
        max_bypass: raw.max_bypass,
        max_wait: parse_duration("scheduler.max_wait", &raw.max_wait)?,
        queue_per_backend: raw.queue_per_backend,
        queue_total: raw.queue_total,
        pass_through: raw.pass_through,
    })
}

fn health(raw: &RawHealth) -> Result<Health, ConfigError> {
    Ok(Health {
        interval: parse_duration("health.interval", &raw.interval)?,
        timeout: parse_duration("health.timeout", &raw.timeout)?.unwrap_or(DEFAULT_HEALTH_TIMEOUT),
        unhealthy_after: raw.unhealthy_after.max(1),
        healthy_after: raw.healthy_after.max(1),
    })
}

/// `access.keys` (each key read from where it is kept, and only its SHA-256 kept) and
/// `access.trusted_proxies`.
fn access(raw: &RawAccess) -> Result<Access, ConfigError> {
    let mut keys: Vec<std::sync::Arc<ClientKey>> = Vec::with_capacity(raw.keys.len());
    for (i, key) in raw.keys.iter().enumerate() {
        let parsed = client_key(i, key)?;
        if keys.iter().any(|k| k.name == parsed.name) {
            return Err(invalid(
                format!("access.keys[{i}].name"),
                &key.name,
                "a name no other key has",
            ));
        }
        if let Some(other) = keys.iter().find(|k| k.digest == parsed.digest) {
            return Err(invalid(
                format!("access.keys[{i}]"),
                "(hidden)",
                &format!("a key other than key {:?}'s", other.name),
            ));
        }
        keys.push(std::sync::Arc::new(parsed));
    }
    let trusted_proxies = raw
        .trusted_proxies
        .iter()
        .enumerate()
        .map(|(i, text)| {
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    invalid(
                        format!("access.trusted_proxies[{i}]"),
                        text,
                        "an address or CIDR range like 10.0.0.0/8",
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(Access {
        keys,
        trusted_proxies,
    })
}

fn client_key(i: usize, raw: &RawKey) -> Result<ClientKey, ConfigError> {
    use sha2::{Digest, Sha256};
    let key = |field: &str| format!("access.keys[{i}].{field}");
    let name = raw.name.trim();
    if name.is_empty() || name.chars().any(|c| c.is_control()) {
        return Err(invalid(
            key("name"),
            &raw.name,
            "a name to show in logs and metrics",
        ));
    }
    let given = [
        raw.key.is_some(),
        raw.key_sha256.is_some(),
        raw.key_env.is_some(),
        raw.key_file.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(invalid(
            format!("access.keys[{i}]"),
            name,
            "exactly one of key, key_sha256, key_env, key_file",
        ));
    }
    let secret = |text: String, field: &str| -> Result<[u8; 32], ConfigError> {
        let text = text.trim().to_owned();
        if text.is_empty() {
            return Err(invalid(
                key(field),
                "(empty)",
                "a key of at least one character",
            ));
        }
        Ok(Sha256::digest(text.as_bytes()).into())
    };
    let digest = match (&raw.key, &raw.key_sha256, &raw.key_env, &raw.key_file) {
        (Some(text), ..) => secret(text.clone(), "key")?,
        (_, Some(hex), ..) => parse_sha256(hex).ok_or_else(|| {
            invalid(
                key("key_sha256"),
                "(hidden)",
                "64 hexadecimal digits: the SHA-256 of the key",
            )
        })?,
        (_, _, Some(var), _) => secret(from_env(&key("key_env"), var)?, "key_env")?,
        (_, _, _, Some(path)) => secret(from_file(&key("key_file"), path)?, "key_file")?,
        _ => unreachable!("exactly one source was checked above"),
    };
    Ok(ClientKey {
        name: name.to_owned(),
        digest,
        role: raw.role,
        max_queued: raw.max_queued,
    })
}

/// A secret kept in the environment variable `var` (named by config key `key`).
fn from_env(key: &str, var: &str) -> Result<String, ConfigError> {
    std::env::var(var).map_err(|_| invalid(key, var, "an environment variable that is set"))
}

/// A secret kept in the file `path` (named by config key `key`).
fn from_file(key: &str, path: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| invalid(key, path, &format!("a readable file ({e})")))
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(digest)
}

/// `url` with whatever stands before an `@` in its authority replaced by `***`.
pub(super) fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return match url.rfind('@') {
            Some(at) => format!("***{}", &url[at..]),
            None => url.to_owned(),
        };
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_owned(),
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

impl BackendConfig {
    fn parse(index: usize, raw: &RawBackend) -> Result<Self, ConfigError> {
        let key = format!("backends[{index}].url");
        let expected = "an http:// or https:// URL like http://127.0.0.1:7860";
        // The URL as messages show it: never a password written into it.
        let shown = redacted_url(&raw.url);
        let uri: Uri = raw
            .url
            .parse()
            .map_err(|_| invalid(&key, &shown, expected))?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(invalid(&key, &shown, expected));
        };
        if authority.as_str().contains('@') {
            return Err(invalid(
                &key,
                &shown,
                &format!("a URL without credentials: give Forge's --api-auth pair as backends[{index}].auth = \"user:password\""),
            ));
        }
        if scheme != &Scheme::HTTP && scheme != &Scheme::HTTPS {
            return Err(invalid(&key, &shown, expected));
        }
        let tls = backend_tls(index, raw, scheme == &Scheme::HTTPS)?;
        if uri.query().is_some() {
            return Err(invalid(&key, &shown, "a URL without a query string"));
        }
        let host = http::HeaderValue::from_str(authority.as_str())
            .map_err(|_| invalid(&key, &shown, expected))?;
        Ok(Self {
            scheme: scheme.clone(),
            authority: authority.clone(),
            host,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            preserve_host: raw.preserve_host,
            url: raw.url.clone(),
            gpu: raw.gpu.clone(),
            authorization: backend_auth(index, raw)?,
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
            vram: raw.vram_source,
            tls,
        })
    }
}

/// `Authorization: Basic …` from `auth`, `auth_env` or `auth_file` (at most one): Forge's
/// `--api-auth` pair.
fn backend_auth(index: usize, raw: &RawBackend) -> Result<Option<http::HeaderValue>, ConfigError> {
    let key = |field: &str| format!("backends[{index}].{field}");
    let (field, pair) = match (&raw.auth, &raw.auth_env, &raw.auth_file) {
        (None, None, None) => return Ok(None),
        (Some(pair), None, None) => ("auth", pair.clone()),
        (None, Some(var), None) => ("auth_env", from_env(&key("auth_env"), var)?),
        (None, None, Some(path)) => ("auth_file", from_file(&key("auth_file"), path)?),
        _ => {
            return Err(invalid(
                format!("backends[{index}]"),
                &raw.url,
                "at most one of auth, auth_env, auth_file",
            ))
        }
    };
    let pair = pair.trim();
    if !pair.contains(':') {
        return Err(invalid(key(field), "(hidden)", "user:password"));
    }
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    http::HeaderValue::from_str(&format!("Basic {encoded}"))
        .map(Some)
        .map_err(|_| invalid(key(field), "(hidden)", "user:password"))
}

/// How an `https://` backend's certificate is checked; the TLS keys of an `http://` one are
/// refused (they would do nothing).
fn backend_tls(index: usize, raw: &RawBackend, https: bool) -> Result<BackendTls, ConfigError> {
    let ca_key = format!("backends[{index}].tls_ca_file");
    match (&raw.tls_ca_file, raw.tls_insecure_skip_verify) {
        (Some(_), true) => Err(invalid(
            &ca_key,
            raw.tls_ca_file.as_deref().unwrap_or_default(),
            "either tls_ca_file or tls_insecure_skip_verify, not both",
        )),
        (Some(path), false) if !https => Err(invalid(
            &ca_key,
            path,
            "no tls_ca_file for an http:// backend (use an https:// URL)",
        )),
        (None, true) if !https => Err(invalid(
            format!("backends[{index}].tls_insecure_skip_verify"),
            true,
            "false for an http:// backend (use an https:// URL)",
        )),
        _ if !https => Ok(BackendTls::Off),
        (None, true) => Ok(BackendTls::SkipVerify),
        (None, false) => Ok(BackendTls::SystemRoots),
        (Some(path), false) => {
            let roots = read_certificates(path).map_err(|e| invalid(&ca_key, path, &e))?;
            Ok(BackendTls::CaFile {
                path: path.into(),
                roots,
            })
        }
    }
}

/// The certificates of a PEM file, at least one.
fn read_certificates(path: &str) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("a readable PEM file of certificates ({e})"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("a PEM file of certificates ({e})"))?;
    if certificates.is_empty() {
        return Err("a PEM file with at least one CERTIFICATE block".to_owned());
    }
    Ok(certificates)
}

/// `[tls]`: both files or neither; the key must match the certificate.
fn listener_tls(raw: &RawTls) -> Result<Option<Arc<rustls::ServerConfig>>, ConfigError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivateKeyDer;
    let (cert_file, key_file) = match (&raw.cert_file, &raw.key_file) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => {
            return Err(invalid(
                "tls.key_file",
                "(missing)",
                "a PEM private key file with tls.cert_file",
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                "tls.cert_file",
                "(missing)",
                "a PEM certificate file with tls.key_file",
            ))
        }
    };
    let chain =
        read_certificates(cert_file).map_err(|e| invalid("tls.cert_file", cert_file, &e))?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        invalid(
            "tls.key_file",
            key_file,
            &format!("a readable PEM private key ({e})"),
        )
    })?;
    let provider = crate::config::tls_provider();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| {
            invalid(
                "tls.key_file",
                key_file,
                &format!("the private key of tls.cert_file's certificate ({e})"),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
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

pub(super) fn invalid(
    key: impl Into<String>,
    value: impl fmt::Display,
    expected: &str,
) -> ConfigError {
    ConfigError {
        key: key.into(),
        value: format!("{:?}", value.to_string()),
        expected: expected.to_owned(),
    }
}
