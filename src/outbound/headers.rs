//! Header rewriting toward PayMongo and back.
//!
//! Order matters: hop-by-hop headers (including every header the caller names
//! in `Connection`) are removed *first*, then the caller's credentials, then
//! the service key is set. A caller therefore cannot make the gateway drop
//! the header it injects, and cannot smuggle its own.

use http::header::{self, HeaderMap, HeaderName};

use crate::config::ApiKey;

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the legacy `Proxy-Connection`.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

/// Headers that would tell PayMongo about the internal network.
const TOPOLOGY: [HeaderName; 3] = [
    header::FORWARDED,
    header::VIA,
    HeaderName::from_static("x-real-ip"),
];

/// Removes hop-by-hop headers: those listed above, every `Proxy-*`, and every
/// header named in `Connection`. Used in both directions.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Collect the names first: `Connection` itself is removed below.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if headers.keys().any(|k| k.as_str().starts_with("proxy-")) {
        let proxy: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in proxy {
            headers.remove(name);
        }
    }
}

/// Prepares a caller's request headers for PayMongo: strips hop-by-hop and
/// topology headers, the caller's credentials and `Host` (the client sets
/// the upstream's), then injects the service key.
pub fn rewrite_request(headers: &mut HeaderMap, key: &ApiKey) {
    strip_hop_by_hop(headers);
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::PROXY_AUTHORIZATION);
    headers.remove(header::HOST);
    // The body was buffered; hyper sets the length of what is actually sent.
    headers.remove(header::CONTENT_LENGTH);
    for name in &TOPOLOGY {
        headers.remove(name);
    }
    if headers
        .keys()
        .any(|k| k.as_str().starts_with("x-forwarded-"))
    {
        let xf: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("x-forwarded-"))
            .cloned()
            .collect();
        for name in xf {
            headers.remove(name);
        }
    }
    headers.insert(header::AUTHORIZATION, key.authorization().clone());
}

/// Prepares PayMongo's response headers for the caller.
pub fn rewrite_response(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;
    use http::HeaderValue;
    use secrecy::SecretString;

    fn key() -> ApiKey {
        ApiKey::new(SecretString::from("sk_test_k1".to_owned()), Mode::Test).unwrap()
    }

    #[test]
    fn caller_cannot_strip_the_injected_key() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("authorization, x-foo"),
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic evil"),
        );
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        rewrite_request(&mut h, &key());
        assert_eq!(h.get(header::AUTHORIZATION), Some(key().authorization()));
        assert!(h.get(header::AUTHORIZATION).unwrap().is_sensitive());
        assert!(h.get("x-foo").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get("x-keep").is_some());
    }

    #[test]
    fn strips_hop_by_hop_proxy_and_topology_headers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("proxy-foo", "1"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-host", "internal"),
            ("forwarded", "for=10.0.0.1"),
            ("via", "1.1 internal"),
            ("host", "127.0.0.1:8080"),
            ("content-length", "5"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h.insert("idempotency-key", HeaderValue::from_static("abc"));
        rewrite_request(&mut h, &key());
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(h.contains_key("idempotency-key"));
        assert!(h.contains_key(header::AUTHORIZATION));
    }

    #[test]
    fn response_named_connection_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-internal"),
        );
        h.insert("x-internal", HeaderValue::from_static("1"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        rewrite_response(&mut h);
        assert_eq!(h.len(), 1);
    }
}
