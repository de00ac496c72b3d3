//! `X-Forwarded-*` and `Host` on the way to the backend.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

// Names made once: a custom header name given as `&str` is copied into a new allocation on
// every insert.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Appends the peer to `X-Forwarded-For` (several lines of it joined in order, as RFC 9110
/// §5.3 reads them); sets `-Proto` and `-Host` unless a proxy in front of this one already
/// did (then they describe the original request, which is what Forge wants).
pub fn add_forwarded_headers(headers: &mut HeaderMap, peer: Option<IpAddr>) {
    if let Some(ip) = peer {
        let earlier: Vec<&str> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        let value = match earlier.is_empty() {
            // The common case, written on the stack: one allocation, the header's own.
            true => {
                use std::io::Write as _;
                let mut text = [0u8; 64];
                let mut cursor = std::io::Cursor::new(&mut text[..]);
                let _ = write!(cursor, "{ip}");
                let written = cursor.position() as usize;
                HeaderValue::from_bytes(&text[..written])
            }
            false => HeaderValue::from_str(&format!("{}, {ip}", earlier.join(", "))),
        };
        if let Ok(value) = value {
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

/// The client's address: the peer's, unless the peer is one of `trusted` proxies; then the
/// last address in `X-Forwarded-For` that is not one of them (the one the first trusted
/// proxy saw). A malformed entry stops the walk at the peer's word.
pub fn client_address(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &[ipnet::IpNet],
) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let peer_ip = peer?;
    if !is_trusted(&peer_ip) {
        return Some(peer_ip);
    }
    let named: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer_ip;
    for entry in named.iter().rev() {
        match entry.parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => client = ip,
            Ok(ip) => return Some(ip),
            Err(_) => break,
        }
    }
    Some(client)
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
    fn several_forwarded_for_lines_are_joined_in_order() {
        let mut headers = HeaderMap::new();
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.7"));
        headers.append(
            X_FORWARDED_FOR,
            HeaderValue::from_static("198.51.100.2, 10.0.0.1"),
        );
        add_forwarded_headers(&mut headers, Some("127.0.0.1".parse().unwrap()));
        let lines: Vec<_> = headers.get_all(X_FORWARDED_FOR).iter().collect();
        assert_eq!(lines, ["203.0.113.7, 198.51.100.2, 10.0.0.1, 127.0.0.1"]);
    }

    /// The client a trusted proxy names: the last address before the trusted ones.
    #[test]
    fn the_client_is_the_last_untrusted_address() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.append(
            X_FORWARDED_FOR,
            HeaderValue::from_static("1.2.3.4, 203.0.113.7"),
        );
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.5"));
        let from_trusted = client_address(Some("10.1.1.1".parse().unwrap()), &headers, &trusted);
        assert_eq!(from_trusted, Some("203.0.113.7".parse().unwrap()));
        let from_untrusted = client_address(Some("192.0.2.9".parse().unwrap()), &headers, &trusted);
        assert_eq!(from_untrusted, Some("192.0.2.9".parse().unwrap()));
        let all_trusted = HeaderMap::new();
        let peer = client_address(Some("10.1.1.1".parse().unwrap()), &all_trusted, &trusted);
        assert_eq!(peer, Some("10.1.1.1".parse().unwrap()));
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
