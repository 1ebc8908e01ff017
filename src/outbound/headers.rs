//! Header rewriting toward PayMongo and back.
//!
//! Order matters: hop-by-hop headers (including every header the caller names
//! in `Connection`) are removed *first*, then the caller's credentials, then
//! the service key is set. A caller therefore cannot make the gateway drop
//! the header it injects, and cannot smuggle its own.

use http::header::{self, HeaderMap, HeaderName};

use crate::config::ApiKey;

/// Hop-by-hop headers (RFC 9110 §7.6.1), the legacy `Proxy-Connection`,
/// and every `Proxy-*` header.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    ) || name.starts_with("proxy-")
}

/// Headers a caller's request must not carry to PayMongo besides hop-by-hop
/// ones: its own credentials, its `Host` (the client sets PayMongo's), its
/// `Content-Length` (the body was buffered; hyper sets the real one) and
/// anything describing the internal network.
fn is_caller_only(name: &str) -> bool {
    matches!(
        name,
        "authorization" | "host" | "content-length" | "forwarded" | "via" | "x-real-ip"
    ) || name.starts_with("x-forwarded-")
}

/// Removes every header `drop` selects, plus every header named in
/// `Connection`. One pass over the names actually present: requests carry
/// a handful of headers, the deny lists are longer.
fn strip(headers: &mut HeaderMap, drop: impl Fn(&str) -> bool) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if drop(name.as_str()) {
            doomed.push(name.clone());
        }
    }
    if headers.contains_key(header::CONNECTION) {
        for v in headers.get_all(header::CONNECTION) {
            for token in v.to_str().unwrap_or("").split(',') {
                if let Ok(n) = HeaderName::from_bytes(token.trim().as_bytes()) {
                    doomed.push(n);
                }
            }
        }
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// Removes hop-by-hop headers, every `Proxy-*`, and every header named in
/// `Connection`. Used in both directions.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip(headers, is_hop_by_hop);
}

/// Prepares a caller's request headers for PayMongo: strips hop-by-hop
/// headers (including any the caller names in `Connection`) and caller-only
/// headers, *then* injects the service key, so no caller header can remove
/// or shadow it.
pub fn rewrite_request(headers: &mut HeaderMap, key: &ApiKey) {
    sanitize_request(headers);
    inject_key(headers, key);
}

/// The first half of [`rewrite_request`]: what the caller sent, minus what
/// must not travel on. Runs before idempotency looks at the headers, so the
/// key and content type it fingerprints are exactly what PayMongo receives
/// (a caller naming `Idempotency-Key` in `Connection` drops it everywhere).
pub fn sanitize_request(headers: &mut HeaderMap) {
    strip(headers, |n| is_hop_by_hop(n) || is_caller_only(n));
}

/// The second half: set the service's key. Nothing is stripped after this.
pub fn inject_key(headers: &mut HeaderMap, key: &ApiKey) {
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
