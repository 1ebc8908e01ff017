//! Checked value types that the raw TOML is parsed into.
//!
//! Each type validates itself while deserializing, so an invalid value is
//! reported by the TOML layer with the key path and line where it appears,
//! and code past `config/` never holds an unchecked value.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use http::uri::{Authority, Scheme};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

/// An `https://host[:port]` base URL with nothing after the authority.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpsUrl {
    authority: Authority,
}

impl HttpsUrl {
    /// `https://api.paymongo.com`, the default upstream.
    pub fn paymongo() -> Self {
        Self {
            authority: Authority::from_static("api.paymongo.com"),
        }
    }

    /// The `host[:port]` part, used for the `Host`/`:authority` and SNI.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Host name without the port (the TLS server name).
    pub fn host(&self) -> &str {
        self.authority.host()
    }

    /// Scheme: always `https`.
    pub fn scheme(&self) -> Scheme {
        Scheme::HTTPS
    }
}

impl fmt::Debug for HttpsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}", self.authority)
    }
}

impl fmt::Display for HttpsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}", self.authority)
    }
}

impl FromStr for HttpsUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let uri: http::Uri = s
            .parse()
            .map_err(|_| format!("`{s}` is not a valid URL; expected https://host[:port]"))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") => {
                return Err(format!(
                    "`{s}` is plain http; the upstream must be https:// (certificates are always verified)"
                ));
            }
            _ => return Err(format!("`{s}` is not an https:// URL")),
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("`{s}` has no host; expected https://host[:port]"))?;
        if authority.as_str().contains('@') {
            return Err(format!("`{s}` must not carry user info"));
        }
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
        if !(path.is_empty() || path == "/") {
            return Err(format!(
                "`{s}` has a path; give only https://host[:port], request paths are appended as sent"
            ));
        }
        Ok(Self { authority })
    }
}

impl<'de> Deserialize<'de> for HttpsUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// Where a listener binds: a TCP socket address or a Unix socket path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// `IP:PORT`, e.g. `127.0.0.1:8080` or `[::1]:8080`. Port 0 asks the OS for one.
    Tcp(SocketAddr),
    /// `unix:/path/to.sock`.
    Unix(PathBuf),
}

impl ListenAddr {
    /// Whether only this host can connect (loopback IP or a Unix socket).
    pub fn is_local(&self) -> bool {
        match self {
            ListenAddr::Tcp(a) => a.ip().is_loopback(),
            ListenAddr::Unix(_) => true,
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!(
                    "`{s}`: a unix socket path must be absolute (unix:/run/x.sock)"
                ));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
            format!("`{s}` is not a listen address; expected IP:PORT (127.0.0.1:8080, [::1]:8080) or unix:/path.sock")
        })
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// A reference to a secret kept outside the config text.
///
/// Only the *name* of the variable or the *path* of the file is held here; the
/// value is read when the config is built. A literal string is refused with a
/// message that says how to write the reference instead, and never echoes the
/// literal back (it may be a live key).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SecretRef {
    /// `{ env = "NAME" }`: read from an environment variable.
    Env(String),
    /// `{ file = "/run/secrets/x" }`: read from a file; surrounding whitespace is trimmed.
    File(PathBuf),
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(n) => write!(f, "env {n}"),
            SecretRef::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

/// Message for a secret written literally into the config.
pub(crate) const LITERAL_SECRET: &str = "secrets must not be written in the config file; \
     reference them instead: { env = \"PAYMONGO_SECRET_KEY\" } or { file = \"/run/secrets/paymongo_sk\" }";

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SecretRef;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("{ env = \"NAME\" } or { file = \"/path\" }")
            }

            fn visit_str<E: de::Error>(self, _v: &str) -> Result<SecretRef, E> {
                Err(E::custom(LITERAL_SECRET))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretRef, A::Error> {
                let mut found: Option<SecretRef> = None;
                while let Some(key) = map.next_key::<String>()? {
                    let value: String = map.next_value()?;
                    let r = match key.as_str() {
                        "env" => {
                            if super::error::looks_like_secret(&value) {
                                return Err(de::Error::custom(
                                    "`env` takes the NAME of an environment variable, and this looks like \
                                     the secret itself; move the value into the environment \
                                     (e.g. env = \"PAYMONGO_SECRET_KEY\")",
                                ));
                            }
                            if value.is_empty()
                                || !value
                                    .bytes()
                                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                            {
                                return Err(de::Error::custom(format!(
                                    "`{value}` is not an environment variable name (letters, digits, _)"
                                )));
                            }
                            SecretRef::Env(value)
                        }
                        "file" => {
                            if value.is_empty() {
                                return Err(de::Error::custom("file path is empty"));
                            }
                            SecretRef::File(PathBuf::from(value))
                        }
                        other => {
                            return Err(de::Error::custom(format!(
                                "unknown key `{other}` in secret reference; expected exactly one of `env` or `file`"
                            )));
                        }
                    };
                    if found.is_some() {
                        return Err(de::Error::custom(
                            "a secret reference takes exactly one of `env` or `file`",
                        ));
                    }
                    found = Some(r);
                }
                found.ok_or_else(|| {
                    de::Error::custom("empty secret reference; expected { env = \"NAME\" } or { file = \"/path\" }")
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A list of secret references (`secrets = [{ env = .. }, { file = .. }]`).
/// A bare string is refused like a literal secret, without echoing it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretList(pub Vec<SecretRef>);

impl<'de> Deserialize<'de> for SecretList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SecretList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of { env = \"NAME\" } / { file = \"/path\" } references")
            }
            fn visit_str<E: de::Error>(self, _v: &str) -> Result<SecretList, E> {
                Err(E::custom(LITERAL_SECRET))
            }
            fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<SecretList, A::Error> {
                Err(de::Error::custom(
                    "expected a list: secrets = [{ env = \"NAME\" }] (brackets around the reference)",
                ))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<SecretList, A::Error> {
                let mut v = Vec::new();
                while let Some(r) = seq.next_element::<SecretRef>()? {
                    v.push(r);
                }
                Ok(SecretList(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// A byte count: an integer, or a string with a unit (`"512KiB"`, `"1 MiB"`, `"64MB"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Bytes as `u64`.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("`{s}` is not a size; expected e.g. 1048576, \"512KiB\" or \"64MiB\"")
        })?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" => 1_000,
            "KiB" => 1 << 10,
            "MB" => 1_000_000,
            "MiB" => 1 << 20,
            "GB" => 1_000_000_000,
            "GiB" => 1 << 30,
            other => {
                return Err(format!(
                    "`{s}`: unknown size unit `{other}`; use B, KB, KiB, MB, MiB, GB or GiB"
                ));
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 1048576 or \"1MiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A span of time written with a unit: `"250ms"`, `"5s"`, `"10m"`, `"24h"`, `"7d"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// The value as a `std::time::Duration`.
    pub fn get(self) -> std::time::Duration {
        self.0
    }

    /// Shorthand for whole seconds.
    pub const fn secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("`{s}` is not a duration; expected e.g. \"250ms\", \"5s\", \"10m\", \"24h\"")
        })?;
        let ms_per: u64 = match unit.trim() {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => {
                return Err(format!(
                    "`{s}` has no unit; write e.g. \"{n}s\" or \"{n}ms\""
                ));
            }
            other => {
                return Err(format!(
                    "`{s}`: unknown time unit `{other}`; use ms, s, m, h or d"
                ));
            }
        };
        n.checked_mul(ms_per)
            .map(|ms| Duration(std::time::Duration::from_millis(ms)))
            .ok_or_else(|| format!("`{s}` is too long"))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `::1/128`); a bare IP means a single host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl Cidr {
    /// Whether `ip` lies inside this network. IPv4-mapped IPv6 peers are compared as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(net) = s.parse::<ipnet::IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        s.parse::<IpAddr>()
            .map(|ip| Cidr(ipnet::IpNet::from(ip)))
            .map_err(|_| {
                format!(
                    "`{s}` is not a CIDR network; expected e.g. \"10.0.0.0/8\" or \"192.168.1.7\""
                )
            })
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_url_accepts_host_and_port_only() {
        let u: HttpsUrl = "https://api.paymongo.com".parse().unwrap();
        assert_eq!(u.host(), "api.paymongo.com");
        let u: HttpsUrl = "https://127.0.0.1:8443/".parse().unwrap();
        assert_eq!(u.authority().as_str(), "127.0.0.1:8443");
        for bad in [
            "http://api.paymongo.com",
            "ftp://x",
            "https://x/v1",
            "https://u:p@x",
            "nonsense",
        ] {
            assert!(bad.parse::<HttpsUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn listen_addr_forms() {
        assert_eq!(
            "127.0.0.1:8080".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("127.0.0.1:8080".parse().unwrap())
        );
        assert!("[::1]:0".parse::<ListenAddr>().unwrap().is_local());
        assert!(!"0.0.0.0:80".parse::<ListenAddr>().unwrap().is_local());
        assert!("unix:/tmp/x.sock".parse::<ListenAddr>().unwrap().is_local());
        assert!("unix:relative.sock".parse::<ListenAddr>().is_err());
        assert!("localhost:80".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!("1MiB".parse::<ByteSize>().unwrap().0, 1 << 20);
        assert_eq!("512 KiB".parse::<ByteSize>().unwrap().0, 512 << 10);
        assert_eq!("10".parse::<ByteSize>().unwrap().0, 10);
        assert!("1 parsec".parse::<ByteSize>().is_err());
        assert!("99999999999999999999GiB".parse::<ByteSize>().is_err());
        assert_eq!("250ms".parse::<Duration>().unwrap().get().as_millis(), 250);
        assert_eq!("24h".parse::<Duration>().unwrap().get().as_secs(), 86_400);
        assert!("5".parse::<Duration>().is_err());
        assert!("5 fortnights".parse::<Duration>().is_err());
    }

    #[test]
    fn cidr_matches_v4_mapped_peers() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        let host: Cidr = "192.168.1.7".parse().unwrap();
        assert!(host.contains("192.168.1.7".parse().unwrap()));
        assert!(!host.contains("192.168.1.8".parse().unwrap()));
    }
}
