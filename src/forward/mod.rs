//! Forwarding a request to a Forge backend and its answer back, streaming both ways.
//!
//! - [`hop`] — hop-by-hop headers (RFC 9110 §7.6.1).
//! - [`forwarding`] — `X-Forwarded-*`.
//! - [`upgrade`] — websocket and other `Upgrade` tunnels.
//! - [`client_body`] — a client's request body, whose failures are the client's.

pub mod client_body;
pub mod forwarding;
pub mod hop;
pub mod pool;
pub mod tls;
pub mod upgrade;

use std::error::Error as StdError;
use std::net::IpAddr;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{BackendConfig, BackendTls, Config};

use client_body::ClientBodyError;
use pool::{Figures, Pool, SendError};

/// The connection pool, shared by every request.
#[derive(Clone)]
pub struct Forwarder {
    link: Arc<ArcSwap<Link>>,
    tunnels: upgrade::Tunnels,
    figures: Figures,
}

/// What a reload may change: the pool (its connect timeout, the backends, their TLS, the
/// bound) and the body limit. A request keeps the one it started with.
struct Link {
    pool: Arc<Pool>,
    max_request_body: u64,
    /// What the pool was made from: a reload that changes none of it keeps the pool.
    made_from: MadeFrom,
}

type MadeFrom = (Option<Duration>, usize, Vec<(String, BackendTls)>);

impl Link {
    fn new(config: &Config, figures: &Figures) -> Result<Self, String> {
        let pool = Arc::new(Pool::new(
            config,
            tls::Connector::new(config)?,
            figures.clone(),
        ));
        pool::keep_swept(&pool);
        Ok(Link {
            pool,
            max_request_body: config.max_request_body,
            made_from: Self::made_from(config),
        })
    }

    fn made_from(config: &Config) -> MadeFrom {
        let backends = config
            .backends
            .iter()
            .map(|b| (b.url.clone(), b.tls.clone()))
            .collect();
        (
            config.timeouts.connect,
            config.backend_connections,
            backends,
        )
    }
}

/// What a single forward needs besides the request.
pub struct Route<'a> {
    pub backend: &'a BackendConfig,
    /// Limit for the backend's response headers; `None` waits as long as it takes.
    pub timeout: Option<Duration>,
    pub client_ip: Option<IpAddr>,
}

impl Forwarder {
    /// Fails when an `https://` backend needs the system's root certificates and none can
    /// be read.
    pub fn new(
        config: &Config,
        tunnels: upgrade::Tunnels,
        figures: Figures,
    ) -> Result<Self, String> {
        Ok(Self {
            link: Arc::new(ArcSwap::from_pointee(Link::new(config, &figures)?)),
            tunnels,
            figures,
        })
    }

    /// A reloaded configuration: a new pool only when what it was made from changed;
    /// requests under way finish on the old one.
    pub fn reconfigure(&self, config: &Config) -> Result<(), String> {
        let now = self.link.load();
        if now.made_from == Link::made_from(config) {
            if now.max_request_body != config.max_request_body {
                self.link.store(Arc::new(Link {
                    pool: now.pool.clone(),
                    max_request_body: config.max_request_body,
                    made_from: Link::made_from(config),
                }));
            }
            return Ok(());
        }
        self.link.store(Arc::new(Link::new(config, &self.figures)?));
        Ok(())
    }

    /// Sends `request` to the route's backend and returns its response with a streaming body.
    pub async fn forward(
        &self,
        route: Route<'_>,
        mut request: Request<Body>,
    ) -> Result<Response<Body>, ForwardError> {
        let link = self.link.load_full();
        let declared = content_length(request.headers());
        if declared.is_some_and(|n| n > link.max_request_body) {
            return Err(ForwardError::BodyTooLarge {
                limit: link.max_request_body,
            });
        }

        let upgrade = hop::requested_upgrade(request.headers());
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));

        let (mut parts, body) = request.into_parts();
        let method = parts.method.clone();
        // The client's URI stays for error messages; the backend's goes out.
        let outbound_uri = backend_uri(route.backend, &parts.uri)?;
        let client_uri = std::mem::replace(&mut parts.uri, outbound_uri);
        let path = client_uri.path();
        parts.version = Version::HTTP_11;
        hop::strip_hop_by_hop(&mut parts.headers);
        forwarding::add_forwarded_headers(&mut parts.headers, route.client_ip);
        if !route.backend.preserve_host {
            parts
                .headers
                .insert(header::HOST, route.backend.host.clone());
        }
        if let Some(protocol) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol.clone());
        }
        // A declared length was checked above and hyper holds the body to it; only a body
        // of unknown length (chunked) needs counting on the way.
        let body = if declared.is_some() || body.is_end_stream() {
            body
        } else {
            Body::new(Limited::new(body, to_usize(link.max_request_body)))
        };
        let outbound = Request::from_parts(parts, body);

        let sent = link.pool.send(route.backend, outbound);
        let result = match route.timeout {
            Some(after) => {
                tokio::time::timeout(after, sent)
                    .await
                    .map_err(|_| ForwardError::Timeout {
                        backend: route.backend.url.clone(),
                        method: method.to_string(),
                        path: path.to_owned(),
                        after,
                    })?
            }
            None => sent.await,
        };
        let mut response = result.map_err(|e| classify(&link, route.backend, &method, path, e))?;

        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                self.tunnels
                    .open(client_upgrade, hyper::upgrade::on(&mut response));
                return Ok(response.map(Body::new));
            }
        }
        hop::strip_hop_by_hop(response.headers_mut());
        relative_location(route.backend, response.headers_mut());
        Ok(response.map(Body::new))
    }

    /// A small call of the proxy's own (options, memory): the whole answer is read, up to
    /// [`OWN_CALL_MAX_BODY`] bytes.
    pub async fn call(
        &self,
        backend: &BackendConfig,
        method: Method,
        path: &'static str,
        body: Option<Bytes>,
        authorization: Option<&HeaderValue>,
        timeout: Option<Duration>,
    ) -> Result<CallAnswer, CallError> {
        let uri = backend_uri(backend, &Uri::from_static(path))
            .map_err(|e| CallError::Failed(e.to_string()))?;
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, backend.host.clone());
        if let Some(auth) = authorization {
            request = request.header(header::AUTHORIZATION, auth);
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body)),
            None => request.body(Body::empty()),
        }
        .map_err(|e| CallError::Failed(e.to_string()))?;
        let exchange = async {
            let pool = self.link.load().pool.clone();
            let response = pool.send(backend, request).await.map_err(|e| match e {
                SendError::Connect(e) => CallError::Unreachable(root_cause(&*e)),
                SendError::Request(e) => CallError::Failed(root_cause(&e)),
            })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, OWN_CALL_MAX_BODY)
                .collect()
                .await
                .map_err(|e| CallError::Failed(e.to_string()))?
                .to_bytes();
            Ok(CallAnswer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match timeout {
            Some(after) => tokio::time::timeout(after, exchange)
                .await
                .map_err(|_| CallError::Timeout(after))?,
            None => exchange.await,
        }
    }
}

/// Why a forwarded request got no response from its backend.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("backend {backend} is unreachable: {reason}")]
    Unreachable { backend: String, reason: String },
    #[error("backend {backend} did not answer {method} {path} within {}", humantime::format_duration(*.after))]
    Timeout {
        backend: String,
        method: String,
        path: String,
        after: Duration,
    },
    #[error("backend {backend} failed while answering {method} {path}: {reason}")]
    Failed {
        backend: String,
        method: String,
        path: String,
        reason: String,
    },
    #[error("request body is larger than the limit of {limit} bytes (limits.max_request_body)")]
    BodyTooLarge { limit: u64 },
    /// The client's body failed on the way: the client's fault, not the backend's.
    #[error("{0}")]
    ClientBody(ClientBodyError),
}

/// The whole answer to one of the proxy's own calls.
#[derive(Debug, Clone)]
pub struct CallAnswer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// The declared `Content-Length`, when it is a number.
pub fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// A `Location` that points at the backend itself (Starlette builds absolute redirects from
/// the `Host` it was sent, e.g. its 307 for a trailing slash) becomes a path, so a client that
/// follows it comes back through the proxy instead of going around it; what nginx's
/// `proxy_redirect default` does. Other locations are left alone.
fn relative_location(backend: &BackendConfig, headers: &mut http::HeaderMap) {
    let Some(location) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
        return;
    };
    let origin = format!("{}://{}", backend.scheme, backend.authority);
    let Some(rest) = location.strip_prefix(&origin) else {
        return;
    };
    let Some(rest) = rest.strip_prefix(backend.base_path.as_str()) else {
        return;
    };
    let path = match rest {
        "" => "/",
        rest if rest.starts_with(['/', '?']) => rest,
        _ => return,
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    if let Ok(value) = HeaderValue::from_str(&path) {
        headers.insert(header::LOCATION, value);
    }
}

/// Answers of Forge's own endpoints are small (options: ~11 KB); anything near this is wrong.
pub const OWN_CALL_MAX_BODY: usize = 16 << 20;

/// Why one of the proxy's own calls to a backend got no usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}

fn failed(backend: &BackendConfig, method: &str, path: &str, error: &dyn StdError) -> ForwardError {
    ForwardError::Failed {
        backend: backend.url.clone(),
        method: method.to_owned(),
        path: path.to_owned(),
        reason: root_cause(error),
    }
}

/// The backend URI for a request URI, in origin form (the connection is the backend's):
/// the backend's path prefix, then the request's path and query exactly as the client
/// sent them.
fn backend_uri(backend: &BackendConfig, uri: &Uri) -> Result<Uri, ForwardError> {
    let path_and_query = match (uri.path_and_query(), backend.base_path.is_empty()) {
        // The common case, no prefix: the client's bytes, shared rather than copied.
        (Some(path_and_query), true) => Ok(path_and_query.clone()),
        (path_and_query, _) => PathAndQuery::try_from(format!(
            "{}{}",
            backend.base_path,
            path_and_query.map_or("/", |p| p.as_str())
        )),
    };
    path_and_query
        .map(Uri::from)
        .map_err(|e| ForwardError::Failed {
            backend: backend.url.clone(),
            method: String::new(),
            path: uri.path().to_owned(),
            reason: e.to_string(),
        })
}

fn source_is<E: StdError + 'static>(error: &(dyn StdError + 'static)) -> bool {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = current {
        if e.is::<E>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// The innermost cause's text, e.g. "Connection refused (os error 111)".
fn root_cause(error: &dyn StdError) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn classify(
    link: &Link,
    backend: &BackendConfig,
    method: &Method,
    path: &str,
    error: SendError,
) -> ForwardError {
    let error = match error {
        SendError::Connect(e) => {
            return ForwardError::Unreachable {
                backend: backend.url.clone(),
                reason: root_cause(&*e),
            }
        }
        SendError::Request(e) => e,
    };
    if let Some(client) = ClientBodyError::find(&error) {
        return ForwardError::ClientBody(client.clone());
    }
    if source_is::<LengthLimitError>(&error) {
        return ForwardError::BodyTooLarge {
            limit: link.max_request_body,
        };
    }
    tracing::warn!(backend = %backend.url, error = ?error, "backend request failed");
    failed(backend, method.as_str(), path, &error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_toml_str;

    #[test]
    fn locations_on_the_backend_become_paths_through_the_proxy() {
        let config = from_toml_str("[[backends]]\nurl = \"http://gpu:7861/forge\"\n").unwrap();
        let backend = &config.backends[0];
        let located = |location: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(header::LOCATION, HeaderValue::from_str(location).unwrap());
            relative_location(backend, &mut headers);
            headers[header::LOCATION].to_str().unwrap().to_owned()
        };
        assert_eq!(
            located("http://gpu:7861/forge/sdapi/v1/txt2img?a=1"),
            "/sdapi/v1/txt2img?a=1"
        );
        assert_eq!(located("http://gpu:7861/forge"), "/");
        assert_eq!(
            located("http://gpu:7861/forgery"),
            "http://gpu:7861/forgery"
        );
        assert_eq!(located("http://elsewhere/x"), "http://elsewhere/x");
        assert_eq!(located("/already/relative"), "/already/relative");
    }

    #[test]
    fn backend_uri_keeps_path_and_query_bytes_and_adds_prefix() {
        let config = from_toml_str("[[backends]]\nurl = \"http://gpu:7861/forge\"\n").unwrap();
        let uri: Uri = "/sdapi/v1/options?a=1&b=%20x".parse().unwrap();
        assert_eq!(
            backend_uri(&config.backends[0], &uri).unwrap().to_string(),
            "/forge/sdapi/v1/options?a=1&b=%20x"
        );
    }
}
