//! The TOML document exactly as written: serde structs that refuse unknown
//! keys. Field-level checks happen in the value types; cross-field checks and
//! secret reading happen in `config::build`.

use serde::Deserialize;
use toml::Spanned;

use super::Mode;
use super::types::{ByteSize, Cidr, Duration, HttpsUrl, ListenAddr, SecretList, SecretRef};
use crate::outbound::allowlist::Route;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub mode: Mode,
    pub drain_timeout: Option<Duration>,
    pub upstream: Option<RawUpstream>,
    #[serde(default, rename = "service")]
    pub services: Vec<Spanned<RawService>>,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub idempotency: RawIdempotency,
    pub webhooks: Option<Spanned<RawWebhooks>>,
    #[serde(default)]
    pub admin: RawAdmin,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub url: Option<HttpsUrl>,
    pub ca_file: Option<String>,
    pub connect_timeout: Option<Duration>,
    pub timeout: Option<Duration>,
    pub pool_idle_timeout: Option<Duration>,
    pub pool_max_idle: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub name: Spanned<String>,
    pub listen: Spanned<ListenAddr>,
    pub secret_key: Spanned<SecretRef>,
    pub allow: Option<Vec<Route>>,
    #[serde(default)]
    pub allow_remote: bool,
    #[serde(default)]
    pub allow_from: Vec<Cidr>,
    pub max_body: Option<ByteSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub format: Option<super::LogFormat>,
    pub level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdempotency {
    pub store: Option<super::StoreKind>,
    pub ttl: Option<Duration>,
    pub max_memory: Option<ByteSize>,
    pub max_response: Option<ByteSize>,
    pub methods: Option<Vec<String>>,
    pub in_flight: Option<super::InFlight>,
    pub wait_timeout: Option<Duration>,
    pub lease: Option<Duration>,
    pub on_store_error: Option<super::OnStoreError>,
    pub redis_url: Option<Spanned<RedisUrlRef>>,
    pub redis_timeout: Option<Duration>,
    pub redis_connections: Option<u32>,
    pub redis_ca_file: Option<String>,
    pub redis_cache: Option<ByteSize>,
}

/// `redis_url` may be a literal URL without a password, or a secret reference.
#[derive(Debug)]
pub(super) enum RedisUrlRef {
    Literal(String),
    Secret(SecretRef),
}

impl<'de> Deserialize<'de> for RedisUrlRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RedisUrlRef;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a redis:// URL, or { env = \"NAME\" } / { file = \"/path\" }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RedisUrlRef, E> {
                Ok(RedisUrlRef::Literal(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RedisUrlRef, A::Error> {
                SecretRef::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RedisUrlRef::Secret)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhooks {
    pub listen: ListenAddr,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    #[serde(default)]
    pub plaintext: bool,
    pub max_body: Option<ByteSize>,
    pub tolerance: Option<Duration>,
    pub dedupe_ttl: Option<Duration>,
    pub read_timeout: Option<Duration>,
    #[serde(default, rename = "endpoint")]
    pub endpoints: Vec<Spanned<RawEndpoint>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEndpoint {
    pub path: Spanned<String>,
    pub secrets: Spanned<SecretList>,
    pub forward_to: Spanned<String>,
    pub forward_socket: Option<String>,
    pub forward_ca_file: Option<String>,
    pub signature: Option<super::SignatureScheme>,
    pub forward_timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub listen: Option<Spanned<ListenAddr>>,
    #[serde(default)]
    pub allow_from: Vec<Cidr>,
    pub probe_interval: Option<Duration>,
}
