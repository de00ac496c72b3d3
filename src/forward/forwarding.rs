//! `X-Forwarded-*` and `Host` on the way to the backend.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

// Names made once: a custom header name given as `&str` is copied into a new allocation on
// every insert.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Appends the client to `X-Forwarded-For`; sets `-Proto` and `-Host` unless a proxy in front
/// of this one already did (then they describe the original request, which is what Forge wants).
pub fn add_forwarded_headers(headers: &mut HeaderMap, client: Option<IpAddr>) {
    if let Some(ip) = client {
        let value = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(earlier) if !earlier.trim().is_empty() => format!("{earlier}, {ip}"),
            _ => ip.to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(X_FORWARDED_FOR, value);
        }
    }
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if !headers.contains_key(X_FORWARDED_HOST) {
        if let Some(host) = headers.get(header::HOST).cloned() {
            headers.insert(X_FORWARDED_HOST, host);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_client_to_existing_forwarded_for() {
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.7"));
        headers.insert(header::HOST, HeaderValue::from_static("proxy:7870"));
        add_forwarded_headers(&mut headers, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(headers[X_FORWARDED_FOR], "203.0.113.7, 127.0.0.1");
        assert_eq!(headers[X_FORWARDED_PROTO], "http");
        assert_eq!(headers[X_FORWARDED_HOST], "proxy:7870");
    }

    #[test]
    fn keeps_proto_and_host_set_by_a_proxy_in_front() {
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        headers.insert(X_FORWARDED_HOST, HeaderValue::from_static("sd.example.org"));
        headers.insert(header::HOST, HeaderValue::from_static("proxy:7870"));
        add_forwarded_headers(&mut headers, None);
        assert_eq!(headers[X_FORWARDED_PROTO], "https");
        assert_eq!(headers[X_FORWARDED_HOST], "sd.example.org");
        assert!(!headers.contains_key(X_FORWARDED_FOR));
    }
}
