//! Header rules of the HTTP proxy: hop-by-hop headers removed (RFC 9110 §7.6.1), forwarding
//! headers set, upgrade requests recognised.
//!
//! ## Guarantees
//! - `X-Forwarded-For` gets the client address appended; `X-Forwarded-Proto` (`http`) and
//!   `X-Forwarded-Host` are set when absent. These are set once, at the entry point the client
//!   reached; a mesh hop does not add the entry node's address.
//! - Hop-by-hop headers, including any named in `Connection`, are not forwarded; an upgrade
//!   request keeps `Upgrade` and `Connection: upgrade`.

use std::net::{IpAddr, SocketAddr};

use http::Uri;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Whether the request asks for a protocol upgrade (WebSocket).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The request target in origin form (`/path?query`), as a proxy sends it on its own connection;
/// `None` when it has no path.
pub fn origin_form(uri: &Uri) -> Option<Uri> {
    if uri.scheme().is_none() && uri.authority().is_none() {
        return Some(uri.clone());
    }
    uri.path_and_query().map(|pq| Uri::from(pq.clone()))
}

/// Sets the forwarding headers for a client at `remote` and removes hop-by-hop ones.
pub fn rewrite_headers(headers: &mut HeaderMap, remote: SocketAddr, keep_upgrade: bool) {
    strip_hop_by_hop(headers, keep_upgrade);
    let ip: IpAddr = remote.ip();
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {ip}"),
        None => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("http"),
        );
    }
    if !headers.contains_key("x-forwarded-host")
        && let Some(host) = headers.get(header::HOST).cloned()
    {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including any named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    for name in named {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(&name);
        }
    }
    for name in [
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if !keep_upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_and_forwarding_headers_set() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::HOST, HeaderValue::from_static("example.org"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        rewrite_headers(&mut h, "192.0.2.7:5000".parse().unwrap(), false);
        assert!(!h.contains_key(header::CONNECTION));
        assert!(!h.contains_key("x-secret-hop"));
        assert!(!h.contains_key("keep-alive"));
        assert!(!h.contains_key(header::TE));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.org");
    }

    #[test]
    fn upgrade_requests_keep_their_upgrade_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        rewrite_headers(&mut h, "127.0.0.1:1".parse().unwrap(), true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }
}
