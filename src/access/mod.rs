//! Who is calling, and what they may do.
//!
//! Without `[[access.keys]]` every client may do everything, as with Forge itself. With
//! keys, every request but `/proxy/health` and `/proxy/ready` carries one, as
//! `Authorization: Bearer KEY`, HTTP Basic with the key as password (any user name), or
//! `X-Api-Key: KEY`; the key's role decides what it may do ([`need`]). The client's
//! credentials then stop here: calls to Forge carry the backend's configured `auth`.

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Access, BackendConfig, ClientKey, Role};
use crate::proxy::route::Route;
use forge_schema::path;

/// The header a client may carry its key in instead of `Authorization`.
pub const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");
/// The challenge of a 401: a browser opening the web UI shows its login prompt.
pub const CHALLENGE: &str = "Basic realm=\"forge-vram-proxy\"";

/// Who sent a request.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The client's address: the peer's, or the one a trusted proxy names.
    pub addr: Option<IpAddr>,
    /// The address the connection came from (appended to `X-Forwarded-For`).
    pub peer: Option<IpAddr>,
    /// The key it presented, when keys are configured.
    pub key: Option<Arc<ClientKey>>,
    /// Without keys: the client's own `Authorization`, carried by the calls made for it.
    pub authorization: Option<HeaderValue>,
}

impl Caller {
    /// A caller known by its address alone (no keys configured).
    pub fn anonymous(addr: Option<IpAddr>, peer: Option<IpAddr>, headers: &HeaderMap) -> Self {
        Self {
            addr,
            peer,
            key: None,
            authorization: headers.get(header::AUTHORIZATION).cloned(),
        }
    }

    /// What a call made for this caller to `backend` carries in `Authorization`: with keys,
    /// the backend's configured `auth` (Forge never sees a client key); without, the
    /// client's own.
    pub fn authorization_for<'a>(&'a self, backend: &'a BackendConfig) -> Option<&'a HeaderValue> {
        match &self.key {
            Some(_) => backend.authorization.as_ref(),
            None => self.authorization.as_ref(),
        }
    }

    /// The key's name, for logs, metrics and decision records.
    pub fn key_name(&self) -> Option<&str> {
        self.key.as_deref().map(|k| k.name.as_str())
    }

    /// May act on anything, whoever started it: no keys, or an admin key.
    pub fn is_admin(&self) -> bool {
        self.key.as_ref().is_none_or(|k| k.role == Role::Admin)
    }

    /// May see what the key named `owner` did (a decision, its running or queued work):
    /// an admin (or anyone without keys) everything, a key its own.
    pub fn sees(&self, owner: Option<&str>) -> bool {
        self.is_admin() || owner == self.key_name()
    }

    /// Whether a piece of work started by `other` is this caller's own.
    pub fn same_key(&self, other: &Caller) -> bool {
        match (&self.key, &other.key) {
            (Some(a), Some(b)) => a.name == b.name,
            (None, None) => true,
            _ => false,
        }
    }
}

/// What a request needs to be let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Liveness and readiness: open to anyone.
    Open,
    /// A key of at least this role.
    Role(Role),
}

/// Why a request was not let in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("this proxy needs a client key: send it as Authorization: Bearer KEY, as the password of HTTP Basic, or as X-Api-Key")]
    NoKey,
    #[error("the client key is not one of this proxy's keys")]
    UnknownKey,
    #[error("key {name:?} (role {}) may not {method} {path}: that needs role {}", .role.as_str(), .needs.as_str())]
    Role {
        name: String,
        role: Role,
        needs: Role,
        method: String,
        path: String,
    },
}

/// What a request needs, from its route, method and percent-decoded path
/// (`generation_routes`: the configured ones).
pub fn need(
    route: Route,
    method: &Method,
    decoded_path: &str,
    generation_routes: &[String],
) -> Need {
    // `/sdapi/v1/txt2img/` is Forge's redirect to `/sdapi/v1/txt2img`: same need.
    let path = match decoded_path.strip_suffix('/') {
        Some(trimmed) if !trimmed.is_empty() => trimmed,
        _ => decoded_path,
    };
    let read_only = method == Method::GET || method == Method::HEAD;
    match route {
        Route::Own => match path {
            "/proxy/health" | "/proxy/ready" => Need::Open,
            _ if path.starts_with("/proxy/plan/") => Need::Role(Role::Generate),
            _ if read_only => Need::Role(Role::Read),
            // The admin actions: drain, resume, unload, interrupt.
            _ => Need::Role(Role::Admin),
        },
        Route::Generation(_) => Need::Role(Role::Generate),
        _ if method == Method::POST
            && (GENERATE_POSTS.contains(&path) || generation_routes.iter().any(|r| r == path)) =>
        {
            Need::Role(Role::Generate)
        }
        _ if read_only && path.starts_with("/sdapi/") => Need::Role(Role::Read),
        _ => Need::Role(Role::Admin),
    }
}

/// `POST`s a `generate` key may make besides the generation routes.
const GENERATE_POSTS: [&str; 6] = [
    path::EXTRA_SINGLE_IMAGE,
    path::EXTRA_BATCH_IMAGES,
    path::PNG_INFO,
    path::INTERROGATE,
    path::INTERRUPT,
    path::SKIP,
];

/// The request being let in: who sent it, from where, and what it asks.
pub struct Knock<'a> {
    /// The client's address (the peer's, or the one a trusted proxy names) and the peer's.
    pub addr: Option<IpAddr>,
    pub peer: Option<IpAddr>,
    pub method: &'a Method,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

/// Who is calling, and whether they may: `Ok` with the caller, or why not.
pub fn admit(access: &Access, need: Need, knock: Knock<'_>) -> Result<Caller, Denied> {
    let Knock {
        addr,
        peer,
        method,
        path,
        headers,
    } = knock;
    if access.keys.is_empty() {
        return Ok(Caller::anonymous(addr, peer, headers));
    }
    let key = match (need, identify(&access.keys, headers)) {
        (Need::Open, found) => found.ok(),
        (Need::Role(needs), found) => {
            let key = found?;
            if key.role < needs {
                return Err(Denied::Role {
                    name: key.name.clone(),
                    role: key.role,
                    needs,
                    method: method.to_string(),
                    path: path.to_owned(),
                });
            }
            Some(key)
        }
    };
    Ok(Caller {
        addr,
        peer,
        key,
        authorization: None,
    })
}

/// The key a request presents, compared with every configured key in constant time.
fn identify(keys: &[Arc<ClientKey>], headers: &HeaderMap) -> Result<Arc<ClientKey>, Denied> {
    let presented = presented_key(headers).ok_or(Denied::NoKey)?;
    let digest: [u8; 32] = Sha256::digest(&presented).into();
    // Every key is compared, whichever matches: the time taken says nothing of which.
    let mut found = None;
    for key in keys {
        if bool::from(key.digest.ct_eq(&digest)) {
            found = Some(key.clone());
        }
    }
    found.ok_or(Denied::UnknownKey)
}

/// The key in `Authorization` (Bearer, or Basic's password) or `X-Api-Key`.
fn presented_key(headers: &HeaderMap) -> Option<Vec<u8>> {
    let from_authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| from_authorization(value.as_bytes()));
    from_authorization.or_else(|| {
        headers
            .get(API_KEY_HEADER)
            .map(|v| v.as_bytes().trim_ascii().to_vec())
            .filter(|k| !k.is_empty())
    })
}

fn from_authorization(value: &[u8]) -> Option<Vec<u8>> {
    let value = value.trim_ascii();
    let split = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(split);
    let credentials = rest.trim_ascii();
    if scheme.eq_ignore_ascii_case(b"bearer") {
        return (!credentials.is_empty()).then(|| credentials.to_vec());
    }
    if scheme.eq_ignore_ascii_case(b"basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()?;
        let colon = decoded.iter().position(|b| *b == b':')?;
        let password = &decoded[colon + 1..];
        return (!password.is_empty()).then(|| password.to_vec());
    }
    None
}

/// With keys, the client's credentials stop at the proxy.
pub fn remove_credentials(headers: &mut HeaderMap) {
    headers.remove(header::AUTHORIZATION);
    headers.remove(API_KEY_HEADER);
}

#[cfg(test)]
mod tests;
