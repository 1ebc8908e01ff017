//! Per-service route allowlist: which `METHOD /path` pairs a service may call.
//!
//! A rule is `"POST /v1/payment_intents/*/attach"`: `*` matches exactly one
//! non-empty path segment, a final `**` matches one or more remaining
//! segments, and the method may be `*` for any. Matching is done on the path
//! as received, so a path that another hop could read differently (`..`,
//! `//`, percent-encoded `/`, `\` or `.`) matches nothing: the allowlist must
//! see the same path PayMongo will.

use std::fmt;
use std::str::FromStr;

use http::Method;
use serde::Deserialize;
use serde::de::{self, Deserializer};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    /// `*`: any one segment.
    One,
    /// `**` at the end: one or more segments.
    Rest,
}

/// One allowlist rule, parsed from `"METHOD /path"`.
#[derive(Clone, PartialEq, Eq)]
pub struct Route {
    method: Option<Method>,
    segments: Box<[Segment]>,
    text: Box<str>,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Route({})", self.text)
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Route {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expected = "expected \"METHOD /path\" such as \"GET /v1/payment_intents/*\"";
        let mut parts = s.split_whitespace();
        let (Some(m), Some(path), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("`{s}`: {expected}"));
        };
        let method = if m == "*" {
            None
        } else {
            if !m.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(format!(
                    "`{s}`: method `{m}` must be upper case (GET, POST, ...) or *"
                ));
            }
            Some(Method::from_bytes(m.as_bytes()).map_err(|_| format!("`{s}`: bad method `{m}`"))?)
        };
        let Some(rest) = path.strip_prefix('/') else {
            return Err(format!("`{s}`: the path must start with /"));
        };
        if path.contains(['?', '#', '%', '\\']) {
            return Err(format!(
                "`{s}`: the path must be plain segments, without ?, #, % or \\"
            ));
        }
        let raw: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(raw.len());
        for (i, seg) in raw.iter().enumerate() {
            let seg = match *seg {
                "" => {
                    return Err(format!(
                        "`{s}`: empty path segment (no // and no trailing /)"
                    ));
                }
                "." | ".." => return Err(format!("`{s}`: . and .. segments are not allowed")),
                "*" => Segment::One,
                "**" if i + 1 == raw.len() => Segment::Rest,
                "**" => return Err(format!("`{s}`: ** is only allowed as the last segment")),
                lit if lit.contains('*') => {
                    return Err(format!("`{s}`: * must be a whole segment"));
                }
                lit => Segment::Literal(lit.into()),
            };
            segments.push(seg);
        }
        Ok(Route {
            method,
            segments: segments.into(),
            text: s.into(),
        })
    }
}

impl<'de> Deserialize<'de> for Route {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

impl Route {
    fn matches(&self, method: &Method, segs: &[&str]) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        let mut segs = segs.iter();
        for pat in self.segments.iter() {
            match pat {
                // Segments are never empty (canonical paths only).
                Segment::Rest => {
                    let mut any = false;
                    for s in segs.by_ref() {
                        if !wildcard_ok(s) {
                            return false;
                        }
                        any = true;
                    }
                    return any;
                }
                Segment::One => {
                    if !segs.next().is_some_and(|s| wildcard_ok(s)) {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if segs.next().is_none_or(|s| *s != &**l) {
                        return false;
                    }
                }
            }
        }
        segs.next().is_none()
    }
}

/// What a wildcard may stand for: the characters of PayMongo resource names
/// and ids (`pi_3Pb9xYz`, `payment_intents`). Anything else (`;`, `..;`,
/// percent-escapes, bytes that some servers normalise) is not a resource id,
/// and letting `*` match it would let a rule cover paths nobody meant.
fn wildcard_ok(seg: &str) -> bool {
    seg.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Longest path, in segments, that can match a rule. PayMongo paths have at
/// most five; anything deeper matches nothing (it is not an API route).
const MAX_SEGMENTS: usize = 16;

/// The routes one service may call.
#[derive(Clone, Debug)]
pub struct Allowlist {
    routes: Box<[Route]>,
}

impl Default for Allowlist {
    /// Every method on every path under `/v1/` and `/v2/`.
    fn default() -> Self {
        let routes = ["* /v1/**", "* /v2/**"]
            .iter()
            .filter_map(|r| r.parse().ok())
            .collect();
        Self { routes }
    }
}

impl Allowlist {
    /// An allowlist of exactly these routes.
    pub fn new(routes: Vec<Route>) -> Self {
        Self {
            routes: routes.into(),
        }
    }

    /// The configured rules.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Whether `method path` may be forwarded. Non-canonical paths never match.
    pub fn permits(&self, method: &Method, path: &str) -> bool {
        if !is_canonical(path) {
            return false;
        }
        // Split once, on the stack, and compare every rule against the slice.
        let mut buf = [""; MAX_SEGMENTS];
        let mut n = 0;
        for seg in path[1..].split('/') {
            if n == MAX_SEGMENTS {
                return false;
            }
            buf[n] = seg;
            n += 1;
        }
        let segs = &buf[..n];
        self.routes.iter().any(|r| r.matches(method, segs))
    }
}

/// A path that every HTTP hop reads the same way: absolute, no empty, `.` or
/// `..` segments, no backslash, and no percent-encoding of `/`, `\`, `.` or NUL
/// (which a server might decode into one of the former after our check).
pub fn is_canonical(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let b = path.as_bytes();
    if b.contains(&b'\\') {
        return false;
    }
    if !b.contains(&b'%') {
        return rest
            .split('/')
            .all(|s| !(s.is_empty() || s == "." || s == ".."));
    }
    for (i, _) in path.match_indices('%') {
        let hex = b.get(i + 1..i + 3);
        match hex {
            Some([a, c]) => {
                let v = match (hex_val(*a), hex_val(*c)) {
                    (Some(h), Some(l)) => h << 4 | l,
                    _ => return false,
                };
                if matches!(v, b'/' | b'\\' | b'.' | 0) {
                    return false;
                }
            }
            _ => return false,
        }
    }
    rest.split('/')
        .all(|s| !(s.is_empty() || s == "." || s == ".."))
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(rules: &[&str]) -> Allowlist {
        Allowlist::new(rules.iter().map(|r| r.parse().unwrap()).collect())
    }

    #[test]
    fn star_is_exactly_one_segment() {
        let a = list(&[
            "GET /v1/payment_intents/*",
            "POST /v1/payment_intents/*/attach",
        ]);
        assert!(a.permits(&Method::GET, "/v1/payment_intents/pi_123"));
        assert!(!a.permits(&Method::GET, "/v1/payment_intents"));
        assert!(!a.permits(&Method::GET, "/v1/payment_intents/pi_1/attach"));
        assert!(!a.permits(&Method::POST, "/v1/payment_intents/pi_1"));
        assert!(a.permits(&Method::POST, "/v1/payment_intents/pi_1/attach"));
        assert!(!a.permits(&Method::POST, "/v1/payment_intents//attach"));
        assert!(!a.permits(&Method::GET, "/v1/payment_intents/pi_1/"));
    }

    #[test]
    fn default_allows_v1_and_v2_only() {
        let a = Allowlist::default();
        assert!(a.permits(&Method::POST, "/v1/payment_intents"));
        assert!(a.permits(&Method::DELETE, "/v2/x/y"));
        assert!(!a.permits(&Method::GET, "/v1"));
        assert!(!a.permits(&Method::GET, "/v1/"));
        assert!(!a.permits(&Method::GET, "/v3/x"));
        assert!(!a.permits(&Method::GET, "/admin"));
    }

    #[test]
    fn non_canonical_paths_never_match() {
        let a = Allowlist::default();
        for p in [
            "/v1/../admin",
            "/v1/./x",
            "/v1//x",
            "/v1/%2e%2e/admin",
            "/v1/x%2Fy",
            "/v1/x%5cy",
            "/v1/x\\y",
            "/v1/x%00",
            "/v1/x%zz",
            "/v1/x%",
            "v1/x",
        ] {
            assert!(!a.permits(&Method::GET, p), "{p}");
        }
        // Wildcards only stand for resource-name characters.
        assert!(!a.permits(&Method::GET, "/v1/customers/cus%20x"));
        assert!(!a.permits(&Method::GET, "/v1/payment_intents/..;/attach"));
        assert!(!a.permits(&Method::GET, "/v1/payment_intents/pi;x"));
        assert!(a.permits(&Method::GET, "/v1/payment_intents/pi_3Pb-9"));
    }

    #[test]
    fn rule_syntax_errors() {
        for bad in [
            "get /v1/x",
            "GET",
            "GET v1/x",
            "GET /v1/x y",
            "GET /v1//x",
            "GET /v1/x/",
            "GET /v1/../x",
            "GET /v1/pi_*",
            "GET /**/x",
            "GET /v1/x?y=1",
        ] {
            assert!(bad.parse::<Route>().is_err(), "{bad}");
        }
    }
}
