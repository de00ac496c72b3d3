//! The subcommands that ask a running proxy: `health` (the container health check) and
//! [`status`] (`/proxy/status` as a table in the terminal); where they find the proxy, and
//! the one request each makes.
//!
//! Built in so the runtime image needs no shell or curl.

pub mod status;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::Config;
use crate::server::runtime_file::{self, Listening};

/// The most a health check or a status request may take.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// A running proxy to ask: its base URL, and how its certificate is taken.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://` or `https://`, an authority, and any path prefix (no trailing slash).
    pub base: String,
    pub trust: Trust,
    pub found: Found,
}

/// How an HTTPS target's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Not checked: the proxy on this machine, asked by its own address.
    Itself,
    /// Against the system's root certificates: a URL given by hand, beyond loopback.
    SystemRoots,
}

/// Where the target's address came from, said when it does not answer.
#[derive(Debug, Clone)]
pub enum Found {
    /// `--url`.
    Url,
    /// `--listen`.
    ListenFlag,
    /// The runtime file the serving proxy wrote.
    RuntimeFile(PathBuf),
    /// The configured `listen` (flags, environment, file): no live proxy announced itself.
    Configured { runtime_file: PathBuf },
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Url => f.write_str("given by --url"),
            Found::ListenFlag => f.write_str("given by --listen"),
            Found::RuntimeFile(path) => {
                write!(
                    f,
                    "where the running proxy said it listens, in {}",
                    path.display()
                )
            }
            Found::Configured { runtime_file } => write!(
                f,
                "the configured listen address; no running proxy announced itself in {}",
                runtime_file.display()
            ),
        }
    }
}

impl Target {
    /// The proxy of this machine: `listen_flag` when `--listen` was given; else the address
    /// the serving proxy wrote in its runtime file; else the configured one. HTTPS when it
    /// speaks TLS.
    pub fn locate(listen_flag: Option<SocketAddr>, config: &Config) -> Self {
        let configured_tls = config.tls.is_some();
        if let Some(listen) = listen_flag {
            return Self::local(listen, configured_tls, Found::ListenFlag);
        }
        let path = runtime_file::path();
        match Listening::read(&path) {
            Some(listening) => {
                Self::local(listening.listen, listening.tls, Found::RuntimeFile(path))
            }
            None => Self::local(
                config.listen,
                configured_tls,
                Found::Configured { runtime_file: path },
            ),
        }
    }

    fn local(listen: SocketAddr, tls: bool, found: Found) -> Self {
        let mut target = listen;
        if target.ip().is_unspecified() {
            target.set_ip(match target {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let scheme = if tls { "https" } else { "http" };
        Self {
            base: format!("{scheme}://{target}"),
            trust: Trust::Itself,
            found,
        }
    }

    /// A URL given by hand: `http://HOST:PORT`, `https://HOST:PORT[/PREFIX]`, or `HOST:PORT`
    /// (plain HTTP). Its certificate is checked unless its host is this machine's loopback.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let url = url.trim_end_matches('/');
        let url = if url.contains("://") {
            url.to_owned()
        } else {
            format!("http://{url}")
        };
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("--url {url}: not a URL ({e})"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(format!("--url {url}: expected http:// or https://"));
        }
        let host = uri.host().unwrap_or_default();
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        Ok(Self {
            base: url,
            trust: if loopback {
                Trust::Itself
            } else {
                Trust::SystemRoots
            },
            found: Found::Url,
        })
    }

    /// `GET {base}{path}`, with `key` as a bearer token: the answer's status and body.
    pub async fn get(&self, path: &str, key: Option<&str>) -> Result<(StatusCode, Bytes), Asked> {
        let url = format!("{}{path}", self.base);
        let uri: Uri = url.parse().map_err(|e| Asked::Unreachable {
            url: url.clone(),
            why: format!("not a URL ({e})"),
        })?;
        let unreachable = |why: String| Asked::Unreachable {
            url: url.clone(),
            why,
        };
        let tls = match self.trust {
            Trust::Itself => crate::forward::tls::unchecked(),
            Trust::SystemRoots => crate::forward::tls::system_roots().map_err(unreachable)?,
        };
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(ASK_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
        let mut request = http::Request::get(uri)
            .body(Empty::new())
            .map_err(|e| unreachable(e.to_string()))?;
        if let Some(key) = key {
            let value = HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| unreachable("the key is not a valid header value".to_owned()))?;
            request.headers_mut().insert(header::AUTHORIZATION, value);
        }
        let answer = async {
            let response = client.request(request).await.map_err(|e| {
                // The connector's own error says why (refused, TLS, DNS), not hyper's wrapper.
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(inner) = source {
                    why = inner.to_string();
                    source = inner.source();
                }
                why
            })?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        match tokio::time::timeout(ASK_TIMEOUT, answer).await {
            Ok(Ok(answered)) => Ok(answered),
            Ok(Err(why)) => Err(unreachable(why)),
            Err(_) => Err(unreachable(format!("no answer within {ASK_TIMEOUT:?}"))),
        }
    }
}

/// Why a request to the proxy got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// Nothing answered (refused, timed out, a failed handshake).
    Unreachable { url: String, why: String },
    /// The proxy wants a client key, or a key with a higher role.
    Unauthorized { url: String, status: StatusCode },
    /// Something answered, but not as the proxy does.
    Unexpected { url: String, why: String },
}

impl fmt::Display for Asked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Asked::Unreachable { url, why } => write!(f, "unreachable: {url}: {why}"),
            Asked::Unauthorized { url, status } => write!(
                f,
                "unauthorized: {url} answered {status}; give a client key with a role of read or more (--key KEY or FORGE_VRAM_PROXY_KEY)"
            ),
            Asked::Unexpected { url, why } => write!(f, "unexpected answer: {url}: {why}"),
        }
    }
}

/// Asks the proxy at `target` for `/proxy/health` (the container health check).
pub async fn health(target: &Target) -> Result<(), String> {
    match target.get("/proxy/health", None).await {
        Ok((status, _)) if status.is_success() => Ok(()),
        Ok((status, _)) => Err(format!(
            "{}/proxy/health answered {status} ({})",
            target.base, target.found
        )),
        Err(e) => Err(format!("{e} ({})", target.found)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_address_is_asked_on_loopback() {
        let target = Target::local("0.0.0.0:7870".parse().unwrap(), false, Found::ListenFlag);
        assert_eq!(target.base, "http://127.0.0.1:7870");
        let target = Target::local("[::]:7870".parse().unwrap(), true, Found::ListenFlag);
        assert_eq!(target.base, "https://[::1]:7870");
        assert_eq!(target.trust, Trust::Itself);
    }

    #[test]
    fn a_url_by_hand_is_checked_unless_it_is_loopback() {
        let local = Target::from_url("https://localhost:7870/").unwrap();
        assert_eq!(local.base, "https://localhost:7870");
        assert_eq!(local.trust, Trust::Itself);
        let v6 = Target::from_url("https://[::1]:7870").unwrap();
        assert_eq!(v6.trust, Trust::Itself);
        let bare = Target::from_url("127.0.0.1:7870").unwrap();
        assert_eq!(bare.base, "http://127.0.0.1:7870");
        let remote = Target::from_url("https://gpu-a.internal/forge").unwrap();
        assert_eq!(remote.base, "https://gpu-a.internal/forge");
        assert_eq!(remote.trust, Trust::SystemRoots);
        assert!(Target::from_url("ftp://gpu-a:21").is_err());
    }
}
