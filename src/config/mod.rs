//! `gateway.toml`: the raw TOML document (`raw`), the checked value types
//! (`types`), secret reading (`secrets`) and the validated [`Config`] that the
//! rest of the gateway consumes.
//!
//! Loading is parse → check every key → read secrets and certificates. Every
//! problem found is reported at once, each naming its key and line. No
//! function here touches the network or binds a socket, so `check` and
//! tests can call [`Config::from_toml_str`] freely.

pub mod error;
mod raw;
pub mod secrets;
pub mod types;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use http::Method;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use toml::Spanned;

use error::line_of;
pub use error::{ConfigError, Problem};
pub use secrets::{ApiKey, Env, ProcessEnv, WebhookSecret};
pub use types::{ByteSize, Cidr, Duration, HttpsUrl, ListenAddr, SecretRef};

use crate::outbound::allowlist::Allowlist;

/// Most secrets one webhook endpoint may list (current + previous, with room to spare).
const MAX_WEBHOOK_SECRETS: usize = 4;

/// How long PayMongo waits for a webhook answer before it counts a failure.
const PAYMONGO_DELIVERY_TIMEOUT: StdDuration = StdDuration::from_secs(30);

/// Whether the gateway talks to PayMongo's test or live environment. Keys and
/// webhook events of the other kind are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `sk_test_` keys; webhooks verified against `te`.
    Test,
    /// `sk_live_` keys; webhooks verified against `li`.
    Live,
}

/// Log line encoding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable `key=value` lines (default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Where idempotency records and seen webhook event ids live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In this process, bounded by `max_memory` (default).
    #[default]
    Memory,
    /// Shared by every replica through Redis.
    Redis,
}

/// What a duplicate request does while the first is still in flight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InFlight {
    /// Wait up to `wait_timeout` for the first to finish, then replay it (default).
    #[default]
    Wait,
    /// Answer 409 `idempotency_key_in_use` at once.
    Reject,
}

/// What to do with an idempotent request when the store cannot be reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Forward anyway; PayMongo still dedupes on the forwarded key (default).
    #[default]
    Forward,
    /// Answer 503 `idempotency_store_unavailable`.
    Reject,
}

/// How a webhook endpoint's signature header is checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureScheme {
    /// `Paymongo-Signature: t=..,te=..,li=..` over `"<t>.<body>"` (default).
    #[default]
    Paymongo,
    /// `Paymongo-Signature: <hex HMAC-SHA256(secret, body)>`, no timestamp.
    HmacHex,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// `mode`: `"test"` or `"live"`. Required.
    pub mode: Mode,
    /// `drain_timeout`: how long shutdown (and a removed listener) waits for
    /// in-flight requests. Default `"30s"`.
    pub drain_timeout: StdDuration,
    /// `[upstream]`.
    pub upstream: UpstreamConfig,
    /// `[[service]]`, in file order.
    pub services: Vec<ServiceConfig>,
    /// `[log]`.
    pub log: LogConfig,
    /// `[idempotency]`.
    pub idempotency: IdempotencyConfig,
    /// `[webhooks]`, if present.
    pub webhooks: Option<WebhooksConfig>,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// Every file read while loading (secrets, CA, certificates): the
    /// reloader watches their directories as well as the config's.
    pub files: Vec<PathBuf>,
}

/// `[upstream]`: the PayMongo API and how to reach it.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// `url`: `https://host[:port]`. Default `"https://api.paymongo.com"`.
    pub url: HttpsUrl,
    /// `ca_file`: PEM certificates *added* to the webpki roots. Default none.
    pub ca_file: Option<PathBuf>,
    /// The certificates read from `ca_file`.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// `connect_timeout`: TCP connect limit. Default `"5s"`.
    pub connect_timeout: StdDuration,
    /// `timeout`: limit from sending the request to the end of the response
    /// head (whole response for idempotent requests). Default `"30s"`.
    pub timeout: StdDuration,
    /// `pool_idle_timeout`: idle pooled connections are closed after this. Default `"90s"`.
    pub pool_idle_timeout: StdDuration,
    /// `pool_max_idle`: idle connections kept to the upstream. Default `256`.
    pub pool_max_idle: usize,
}

/// One `[[service]]`: an internal caller, identified by the listener it uses.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// `name`: unique, used in logs, metrics and the idempotency scope. Required.
    pub name: Arc<str>,
    /// `listen`: `IP:PORT` or `unix:/path`. Required; loopback unless `allow_remote`.
    pub listen: ListenAddr,
    /// `secret_key`: `{ env = ".." }` or `{ file = ".." }`. Required.
    pub key_source: SecretRef,
    /// The key read from `secret_key`.
    pub key: ApiKey,
    /// `allow`: `"METHOD /path"` rules, `*` = one segment. Default: all of `/v1/**` and `/v2/**`.
    pub allow: Allowlist,
    /// `allow_remote` + `allow_from`: for a non-loopback listener, the CIDR
    /// networks whose peers are admitted. `None` for local listeners.
    pub allow_from: Option<Vec<Cidr>>,
    /// `max_body`: request body limit in bytes. Default `"1MiB"`.
    pub max_body: u64,
}

/// `[log]`.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// `format`: `"text"` or `"json"`. Default `"text"`.
    pub format: LogFormat,
    /// `level`: a tracing filter such as `"info"` or `"info,paymongo_gateway=debug"`. Default `"info"`.
    pub level: String,
}

/// `[idempotency]`. `store`, `max_memory` and the `redis_*` keys are read
/// once at start (the store outlives reloads); the rest applies per request
/// and reloads. With `store = "redis"` the same Redis also holds the seen
/// webhook event ids: it is the gateway's one shared-state backend.
#[derive(Clone, Debug)]
pub struct IdempotencyConfig {
    /// `store`: `"memory"` or `"redis"`. Default `"memory"`.
    pub store: StoreKind,
    /// `ttl`: how long a completed response is replayed, from when it was
    /// stored (replays do not extend it). Duration. Default `"24h"`.
    pub ttl: StdDuration,
    /// `max_memory`: bound of the memory store in bytes (records and their
    /// overhead; least recently used records are evicted). Default `"64MiB"`.
    pub max_memory: u64,
    /// `max_response`: larger upstream responses are passed through but not
    /// stored, bytes; at most `max_memory`. Default `"1MiB"`.
    pub max_response: u64,
    /// `methods`: methods deduplicated when they carry `Idempotency-Key`
    /// (POST, PUT, PATCH, DELETE). Default `["POST"]`.
    pub methods: Vec<Method>,
    /// `in_flight`: `"wait"` or `"reject"`. Default `"wait"`.
    pub in_flight: InFlight,
    /// `wait_timeout`: how long a duplicate waits in `"wait"` mode before a
    /// 409. Duration. Default `"35s"` (longer than `upstream.timeout`).
    pub wait_timeout: StdDuration,
    /// `lease`: a claim whose owner vanished expires after this; must exceed
    /// `upstream.timeout`. Duration. Default `"60s"`.
    pub lease: StdDuration,
    /// `on_store_error`: `"forward"` or `"reject"`. Default `"forward"`.
    pub on_store_error: OnStoreError,
    /// `redis_url` (required when `store = "redis"`): a URL without a password,
    /// or `{ env = .. }` / `{ file = .. }`. `rediss://` for TLS.
    pub redis_url: Option<SecretString>,
    /// `redis_timeout`: limit for each Redis command (including waiting for
    /// a connection) and for each connection attempt. Duration. Default `"1s"`.
    pub redis_timeout: StdDuration,
    /// `redis_connections`: multiplexed connections to Redis, each pipelining
    /// any number of concurrent commands; commands are spread round-robin.
    /// Count, 1 to 64. Default `2`.
    pub redis_connections: u32,
    /// `redis_ca_file`: PEM trust anchors for a `rediss://` server with a
    /// private CA. When set, Redis certificates are verified against these
    /// *instead of* the webpki roots. Default none (webpki roots).
    pub redis_ca_file: Option<PathBuf>,
    /// The PEM text read from `redis_ca_file`.
    pub redis_ca_pem: Option<Vec<u8>>,
    /// `redis_cache`: byte bound of the in-process cache of completed records
    /// in front of Redis (`"0B"` disables it). Bytes. Default `"16MiB"`.
    pub redis_cache: u64,
}

/// A TLS certificate chain and its private key, read from PEM files.
#[derive(Clone)]
pub struct TlsIdentity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: Arc<PrivateKeyDer<'static>>,
    /// Where the certificate came from (for messages).
    pub cert_path: PathBuf,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("cert_path", &self.cert_path)
            .field("chain_len", &self.chain.len())
            .field("key", &"[REDACTED]")
            .finish()
    }
}

/// `[webhooks]`: the listener PayMongo delivers events to.
#[derive(Clone, Debug)]
pub struct WebhooksConfig {
    /// `listen`: `IP:PORT` (usually public) or `unix:/path`. Required.
    pub listen: ListenAddr,
    /// `tls_cert` + `tls_key`: PEM files. Required unless `plaintext = true`.
    pub tls: Option<TlsIdentity>,
    /// `max_body`: largest event body accepted, bytes. Default `"1MiB"`.
    pub max_body: u64,
    /// `tolerance`: allowed |now - t| of a `paymongo` signature. Default `"300s"`.
    pub tolerance: StdDuration,
    /// `dedupe_ttl`: how long a delivered event id is remembered. Default `"24h"`.
    pub dedupe_ttl: StdDuration,
    /// `read_timeout`: limit for the TLS handshake and request head, and
    /// separately for the request body. Default `"10s"`.
    pub read_timeout: StdDuration,
    /// `[[webhooks.endpoint]]`, at least one.
    pub endpoints: Vec<EndpointConfig>,
}

/// One `[[webhooks.endpoint]]`.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// `path`: the URL path registered with PayMongo, e.g. `/webhooks/paymongo`. Required, unique.
    pub path: String,
    /// `secrets`: current secret first, during a rotation the previous one second. Required, 1 to 4.
    pub secrets: Vec<WebhookSecret>,
    /// `forward_to`: the inward URL. `http://` only to loopback or with `forward_socket`.
    pub forward_to: http::Uri,
    /// `forward_socket`: deliver over this Unix socket instead of TCP. Default none.
    pub forward_socket: Option<PathBuf>,
    /// `forward_ca_file`: PEM certificates *added* to the webpki roots for an
    /// `https://` `forward_to` (an internal CA). Default none.
    pub forward_ca_file: Option<PathBuf>,
    /// The certificates read from `forward_ca_file`.
    pub forward_extra_roots: Vec<CertificateDer<'static>>,
    /// `signature`: `"paymongo"` or `"hmac-hex"`. Default `"paymongo"`.
    pub signature: SignatureScheme,
    /// `forward_timeout`: limit for the inward delivery, up to its response
    /// head. Default `"10s"`; under `"30s"` for `signature = "paymongo"`
    /// (PayMongo waits 30 s for the answer).
    pub forward_timeout: StdDuration,
}

/// `[admin]`: health, readiness and metrics.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// `listen`. Default `"127.0.0.1:9901"`.
    pub listen: ListenAddr,
    /// `allow_from`: CIDRs admitted when `listen` is not loopback (then required).
    pub allow_from: Option<Vec<Cidr>>,
    /// `probe_interval`: how often readiness re-checks upstream and store. Default `"10s"`.
    pub probe_interval: StdDuration,
}

/// Where relative paths resolve and where `{ env = .. }` is looked up.
pub struct LoadContext<'a> {
    /// Relative `file`, `ca_file`, `tls_*` paths are taken from here.
    pub base_dir: PathBuf,
    /// Environment for `{ env = .. }`.
    pub env: &'a dyn Env,
}

impl Config {
    /// Parses and checks a config text; relative paths resolve from the
    /// current directory and secrets come from the process environment.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::parse(
            text,
            &LoadContext {
                base_dir: PathBuf::from("."),
                env: &ProcessEnv,
            },
        )
    }

    /// Reads `path`; relative paths inside resolve from its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::parse(
            &text,
            &LoadContext {
                base_dir,
                env: &ProcessEnv,
            },
        )
    }

    /// Parses and checks `text` in the given context.
    pub fn parse(text: &str, ctx: &LoadContext<'_>) -> Result<Self, ConfigError> {
        let raw = parse_raw(text)?;
        let mut b = Builder {
            text,
            ctx,
            problems: Vec::new(),
            files: Vec::new(),
        };
        let config = b.build(raw);
        match config {
            Some(c) if b.problems.is_empty() => Ok(c),
            _ => Err(ConfigError::Invalid(b.problems)),
        }
    }

    /// The service with this name.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| &*s.name == name)
    }
}

fn parse_raw(text: &str) -> Result<raw::RawConfig, ConfigError> {
    let de = toml::de::Deserializer::parse(text).map_err(|e| {
        ConfigError::Invalid(vec![Problem::new(
            "",
            e.span().map(|s| line_of(text, s.start)),
            e.message().trim().to_owned(),
        )])
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = key_path(e.path());
        let inner = e.inner();
        ConfigError::Invalid(vec![Problem::new(
            key,
            inner.span().map(|s| line_of(text, s.start)),
            inner.message().trim().to_owned(),
        )])
    })
}

/// `service[0].secret_key`, without the internal segments `toml::Spanned` adds.
fn key_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } if key.starts_with("$__serde_spanned") => {}
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

struct Builder<'a, 'c> {
    text: &'a str,
    ctx: &'a LoadContext<'c>,
    problems: Vec<Problem>,
    files: Vec<PathBuf>,
}

impl Builder<'_, '_> {
    fn line<T>(&self, s: &Spanned<T>) -> Option<usize> {
        Some(line_of(self.text, s.span().start))
    }

    fn problem(&mut self, key: impl Into<String>, line: Option<usize>, msg: impl Into<String>) {
        self.problems.push(Problem::new(key, line, msg));
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.ctx.base_dir.join(p)
        }
    }

    /// Reads a secret (relative file paths from the base dir), remembering the file.
    fn read_secret(&mut self, r: &SecretRef) -> Result<SecretString, String> {
        let r = self.secret_ref(r);
        if let SecretRef::File(p) = &r {
            self.files.push(p.clone());
        }
        secrets::read_secret(&r, self.ctx.env)
    }

    fn secret_ref(&self, r: &SecretRef) -> SecretRef {
        match r {
            SecretRef::File(p) => SecretRef::File(self.path(&p.to_string_lossy())),
            env => env.clone(),
        }
    }

    fn build(&mut self, raw: raw::RawConfig) -> Option<Config> {
        let mode = raw.mode;
        let upstream = self.upstream(raw.upstream.unwrap_or_default());
        let services = self.services(mode, raw.services, raw.webhooks.is_some());
        let log = self.log(raw.log);
        let idempotency = self.idempotency(raw.idempotency, upstream.as_ref().map(|u| u.timeout));
        let webhooks = match raw.webhooks {
            Some(w) => self.webhooks(w).map(Some),
            None => Some(None),
        };
        let admin = self.admin(raw.admin);
        let config = Config {
            mode,
            drain_timeout: raw
                .drain_timeout
                .map_or(StdDuration::from_secs(30), Duration::get),
            upstream: upstream?,
            services,
            log,
            idempotency: idempotency?,
            webhooks: webhooks?,
            admin: admin?,
            files: std::mem::take(&mut self.files),
        };
        self.check_listeners(&config);
        Some(config)
    }

    fn upstream(&mut self, u: raw::RawUpstream) -> Option<UpstreamConfig> {
        let mut extra_roots = Vec::new();
        let ca_file = u.ca_file.as_deref().map(|p| self.path(p));
        if let Some(path) = &ca_file {
            self.files.push(path.clone());
            match crate::tls::load_certs(path) {
                Ok(c) => extra_roots = c,
                Err(e) => self.problem("upstream.ca_file", None, e),
            }
        }
        let timeout = u.timeout.map_or(StdDuration::from_secs(30), Duration::get);
        if timeout.is_zero() {
            self.problem("upstream.timeout", None, "must be greater than 0");
        }
        Some(UpstreamConfig {
            url: u.url.unwrap_or_else(HttpsUrl::paymongo),
            ca_file,
            extra_roots,
            connect_timeout: u
                .connect_timeout
                .map_or(StdDuration::from_secs(5), Duration::get),
            timeout,
            pool_idle_timeout: u
                .pool_idle_timeout
                .map_or(StdDuration::from_secs(90), Duration::get),
            pool_max_idle: u.pool_max_idle.unwrap_or(256),
        })
    }

    fn services(
        &mut self,
        mode: Mode,
        raw: Vec<Spanned<raw::RawService>>,
        has_webhooks: bool,
    ) -> Vec<ServiceConfig> {
        // A webhook-only gateway (an edge receiver) needs no service.
        if raw.is_empty() && !has_webhooks {
            self.problem(
                "service",
                None,
                "no [[service]] (and no [webhooks]) is defined; add one with name, listen and secret_key",
            );
        }
        let mut names = HashSet::new();
        let mut out = Vec::with_capacity(raw.len());
        for (i, s) in raw.into_iter().enumerate() {
            let key = |k: &str| format!("service[{i}].{k}");
            let table_line = self.line(&s);
            let s = s.into_inner();
            let name = s.name.get_ref().trim().to_owned();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                self.problem(
                    key("name"),
                    self.line(&s.name),
                    "must be non-empty letters, digits, '-', '_' or '.'",
                );
            } else if !names.insert(name.clone()) {
                self.problem(
                    key("name"),
                    self.line(&s.name),
                    format!("duplicate service name `{name}`"),
                );
            }
            let listen = s.listen.get_ref().clone();
            let allow_from = if listen.is_local() {
                if s.allow_remote || !s.allow_from.is_empty() {
                    // Harmless but misleading: say so rather than silently ignore it.
                    self.problem(
                        key("allow_remote"),
                        table_line,
                        format!("`{listen}` is local; allow_remote/allow_from only apply to non-loopback listeners"),
                    );
                }
                None
            } else if !s.allow_remote || s.allow_from.is_empty() {
                self.problem(
                    key("listen"),
                    self.line(&s.listen),
                    format!(
                        "`{listen}` is not a loopback address; anyone who reaches it can spend the account's money. \
                         Listen on 127.0.0.1/[::1]/unix:, or set allow_remote = true and a non-empty allow_from CIDR list"
                    ),
                );
                None
            } else {
                Some(s.allow_from.clone())
            };
            let key_source = self.secret_ref(s.secret_key.get_ref());
            let api_key = match self.read_secret(&key_source) {
                Ok(v) => match ApiKey::new(v, mode) {
                    Ok(k) => Some(k),
                    Err(e) => {
                        self.problem(
                            key("secret_key"),
                            self.line(&s.secret_key),
                            format!("the key in {key_source} {e}"),
                        );
                        None
                    }
                },
                Err(e) => {
                    self.problem(key("secret_key"), self.line(&s.secret_key), e);
                    None
                }
            };
            let max_body = s.max_body.map_or(1 << 20, ByteSize::bytes);
            if max_body == 0 {
                self.problem(key("max_body"), table_line, "must be greater than 0");
            }
            if let Some(k) = api_key {
                out.push(ServiceConfig {
                    name: name.into(),
                    listen,
                    key_source,
                    key: k,
                    allow: s.allow.map(Allowlist::new).unwrap_or_default(),
                    allow_from,
                    max_body,
                });
            }
        }
        out
    }

    fn log(&mut self, l: raw::RawLog) -> LogConfig {
        let level = l.level.unwrap_or_else(|| "info".to_owned());
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&level) {
            self.problem(
                "log.level",
                None,
                format!("`{level}` is not a log filter: {e}"),
            );
        }
        LogConfig {
            format: l.format.unwrap_or_default(),
            level,
        }
    }

    fn idempotency(
        &mut self,
        r: raw::RawIdempotency,
        upstream_timeout: Option<StdDuration>,
    ) -> Option<IdempotencyConfig> {
        let store = r.store.unwrap_or_default();
        let methods = r.methods.unwrap_or_else(|| vec!["POST".to_owned()]);
        let mut parsed = Vec::with_capacity(methods.len());
        for m in &methods {
            match m.as_str() {
                "POST" | "PUT" | "PATCH" | "DELETE" => {
                    if let Ok(m) = Method::from_bytes(m.as_bytes()) {
                        parsed.push(m);
                    }
                }
                other => self.problem(
                    "idempotency.methods",
                    None,
                    format!("`{other}` cannot be deduplicated; use POST, PUT, PATCH or DELETE (reads are never deduplicated)"),
                ),
            }
        }
        let lease = r.lease.map_or(StdDuration::from_secs(60), Duration::get);
        if let Some(t) = upstream_timeout {
            if lease <= t {
                self.problem(
                    "idempotency.lease",
                    None,
                    format!(
                        "{lease:?} must exceed upstream.timeout ({t:?}), or a claim could expire while its request is still in flight"
                    ),
                );
            }
        }
        let redis_url = match r.redis_url {
            None => {
                if store == StoreKind::Redis {
                    self.problem(
                        "idempotency.redis_url",
                        None,
                        "required when store = \"redis\"",
                    );
                }
                None
            }
            Some(u) => {
                let line = self.line(&u);
                let url = match u.into_inner() {
                    raw::RedisUrlRef::Literal(s) => {
                        if redis_url_has_password(&s) {
                            self.problem(
                                "idempotency.redis_url",
                                line,
                                "this URL carries a password; reference it instead: { env = \"REDIS_URL\" } or { file = \"/run/secrets/redis_url\" }",
                            );
                            None
                        } else {
                            Some(SecretString::from(s))
                        }
                    }
                    raw::RedisUrlRef::Secret(r) => match self.read_secret(&r) {
                        Ok(v) => Some(v),
                        Err(e) => {
                            self.problem("idempotency.redis_url", line, e);
                            None
                        }
                    },
                };
                if let Some(u) = &url {
                    let s = u.expose_secret();
                    if !(s.starts_with("redis://")
                        || s.starts_with("rediss://")
                        || s.starts_with("redis+unix://")
                        || s.starts_with("unix://"))
                    {
                        self.problem(
                            "idempotency.redis_url",
                            line,
                            "expected a redis://, rediss:// or unix:// URL",
                        );
                    } else if s.contains('#') {
                        self.problem(
                            "idempotency.redis_url",
                            line,
                            "URL fragments such as #insecure are not supported: Redis TLS certificates are always verified (use redis_ca_file for a private CA)",
                        );
                    } else if let Err(e) = redis::IntoConnectionInfo::into_connection_info(s) {
                        // Only the error kind: the message could quote the URL.
                        self.problem(
                            "idempotency.redis_url",
                            line,
                            format!("not a usable Redis URL ({:?})", e.kind()),
                        );
                    }
                }
                url
            }
        };
        let ttl = r
            .ttl
            .map_or(StdDuration::from_secs(24 * 3600), Duration::get);
        if ttl.is_zero() {
            self.problem("idempotency.ttl", None, "must be greater than 0");
        }
        let redis_connections = r.redis_connections.unwrap_or(2);
        if !(1..=64).contains(&redis_connections) {
            self.problem(
                "idempotency.redis_connections",
                None,
                format!("{redis_connections} is out of range; expected 1 to 64"),
            );
        }
        let redis_timeout = r
            .redis_timeout
            .map_or(StdDuration::from_secs(1), Duration::get);
        if redis_timeout.is_zero() {
            self.problem(
                "idempotency.redis_timeout",
                None,
                "must be greater than 0, or a dead Redis could hang requests",
            );
        }
        let redis_ca_file = r.redis_ca_file.as_deref().map(|p| self.path(p));
        let mut redis_ca_pem = None;
        if let Some(path) = &redis_ca_file {
            self.files.push(path.clone());
            let tls = redis_url
                .as_ref()
                .is_some_and(|u| u.expose_secret().starts_with("rediss://"));
            if !tls {
                self.problem(
                    "idempotency.redis_ca_file",
                    None,
                    "only applies to a rediss:// (TLS) redis_url",
                );
            }
            // Parsed here so a bad file is a configuration error, not a
            // connection failure later; Redis gets the PEM text itself.
            match crate::tls::load_certs(path).and_then(|_| {
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
            }) {
                Ok(pem) => redis_ca_pem = Some(pem),
                Err(e) => self.problem("idempotency.redis_ca_file", None, e),
            }
        }
        let max_memory = r.max_memory.map_or(64 << 20, ByteSize::bytes);
        let max_response = r.max_response.map_or(1 << 20, ByteSize::bytes);
        if store == StoreKind::Memory && max_memory == 0 {
            self.problem("idempotency.max_memory", None, "must be greater than 0");
        } else if store == StoreKind::Memory
            && max_response + crate::idempotency::memory::ENTRY_OVERHEAD as u64
                > crate::idempotency::memory::record_budget(max_memory)
        {
            self.problem(
                "idempotency.max_response",
                None,
                format!(
                    "{max_response} bytes does not fit the memory store's record budget (2/3 of max_memory = {max_memory} bytes, \
                     less per-record overhead); a response that large would be evicted at once. Raise max_memory or lower max_response"
                ),
            );
        }
        Some(IdempotencyConfig {
            store,
            ttl,
            max_memory,
            max_response,
            methods: parsed,
            in_flight: r.in_flight.unwrap_or_default(),
            wait_timeout: r
                .wait_timeout
                .map_or(StdDuration::from_secs(35), Duration::get),
            lease,
            on_store_error: r.on_store_error.unwrap_or_default(),
            redis_url,
            redis_timeout,
            redis_connections,
            redis_ca_file,
            redis_ca_pem,
            redis_cache: r.redis_cache.map_or(16 << 20, ByteSize::bytes),
        })
    }

    fn webhooks(&mut self, w: Spanned<raw::RawWebhooks>) -> Option<WebhooksConfig> {
        let line = self.line(&w);
        let w = w.into_inner();
        let tls = match (w.plaintext, w.tls_cert, w.tls_key) {
            (true, None, None) => None,
            (true, _, _) => {
                self.problem(
                    "webhooks.plaintext",
                    line,
                    "plaintext = true cannot be combined with tls_cert/tls_key",
                );
                None
            }
            (false, Some(cert), Some(key)) => {
                let cert_path = self.path(&cert);
                let key_path = self.path(&key);
                self.files.push(cert_path.clone());
                self.files.push(key_path.clone());
                match crate::tls::load_identity(&cert_path, &key_path) {
                    Ok(id) => Some(id),
                    Err(e) => {
                        self.problem("webhooks.tls_cert", line, e);
                        None
                    }
                }
            }
            (false, _, _) => {
                self.problem(
                    "webhooks.tls_cert",
                    line,
                    "tls_cert and tls_key are required (PayMongo delivers over HTTPS); \
                     set plaintext = true only behind a TLS-terminating load balancer",
                );
                None
            }
        };
        if w.endpoints.is_empty() {
            self.problem(
                "webhooks.endpoint",
                line,
                "at least one [[webhooks.endpoint]] is required",
            );
        }
        let mut paths = HashSet::new();
        let mut endpoints = Vec::new();
        for (i, e) in w.endpoints.into_iter().enumerate() {
            let key = |k: &str| format!("webhooks.endpoint[{i}].{k}");
            let table_line = self.line(&e);
            let e = e.into_inner();
            let path = e.path.get_ref().clone();
            if !path.starts_with('/')
                || !crate::outbound::allowlist::is_canonical(&path)
                || path.contains(['?', '#'])
            {
                self.problem(
                    key("path"),
                    self.line(&e.path),
                    format!("`{path}` must be an absolute path such as /webhooks/paymongo"),
                );
            } else if !paths.insert(path.clone()) {
                self.problem(
                    key("path"),
                    self.line(&e.path),
                    format!("duplicate endpoint path `{path}`"),
                );
            }
            let mut secrets = Vec::new();
            let secrets_line = self.line(&e.secrets);
            match e.secrets.get_ref().0.len() {
                0 => self.problem(key("secrets"), secrets_line, "at least one secret reference is required"),
                1..=MAX_WEBHOOK_SECRETS => {}
                n => self.problem(
                    key("secrets"),
                    secrets_line,
                    format!(
                        "{n} secrets listed; list the current one and, during a rotation, the previous one \
                         (at most {MAX_WEBHOOK_SECRETS})"
                    ),
                ),
            }
            for r in &e.secrets.get_ref().0 {
                let r = self.secret_ref(r);
                match self.read_secret(&r) {
                    Ok(v) => {
                        let api_key = ["sk_", "pk_"]
                            .iter()
                            .any(|p| v.expose_secret().starts_with(p));
                        if api_key {
                            self.problem(
                                key("secrets"),
                                secrets_line,
                                format!(
                                    "the value in {r} is an API key, not a webhook signing secret; \
                                     use the secret_key returned when the webhook was created (whsk_...)"
                                ),
                            );
                        } else {
                            secrets.push(WebhookSecret::new(v));
                        }
                    }
                    Err(msg) => self.problem(key("secrets"), secrets_line, msg),
                }
            }
            let forward_socket = e.forward_socket.as_deref().map(|p| self.path(p));
            let forward_to =
                match check_forward_to(e.forward_to.get_ref(), forward_socket.is_some()) {
                    Ok(u) => Some(u),
                    Err(msg) => {
                        self.problem(key("forward_to"), self.line(&e.forward_to), msg);
                        None
                    }
                };
            let forward_ca_file = e.forward_ca_file.as_deref().map(|p| self.path(p));
            let mut forward_extra_roots = Vec::new();
            if let Some(ca) = &forward_ca_file {
                self.files.push(ca.clone());
                if forward_to
                    .as_ref()
                    .is_some_and(|u| u.scheme_str() != Some("https"))
                {
                    self.problem(
                        key("forward_ca_file"),
                        table_line,
                        "only applies to an https:// forward_to",
                    );
                }
                match crate::tls::load_certs(ca) {
                    Ok(c) => forward_extra_roots = c,
                    Err(msg) => self.problem(key("forward_ca_file"), table_line, msg),
                }
            }
            let signature = e.signature.unwrap_or_default();
            let forward_timeout = e
                .forward_timeout
                .map_or(StdDuration::from_secs(10), Duration::get);
            if forward_timeout.is_zero() {
                self.problem(key("forward_timeout"), table_line, "must be greater than 0");
            } else if signature == SignatureScheme::Paymongo
                && forward_timeout >= PAYMONGO_DELIVERY_TIMEOUT
            {
                self.problem(
                    key("forward_timeout"),
                    table_line,
                    format!(
                        "{forward_timeout:?} must be under 30s: PayMongo gives up on a delivery after 30 s \
                         and retries it while the first is still being forwarded"
                    ),
                );
            }
            if let Some(forward_to) = forward_to {
                endpoints.push(EndpointConfig {
                    path,
                    secrets,
                    forward_to,
                    forward_socket,
                    forward_ca_file,
                    forward_extra_roots,
                    signature,
                    forward_timeout,
                });
            }
        }
        let max_body = w.max_body.map_or(1 << 20, ByteSize::bytes);
        let tolerance = w
            .tolerance
            .map_or(StdDuration::from_secs(300), Duration::get);
        let dedupe_ttl = w
            .dedupe_ttl
            .map_or(StdDuration::from_secs(24 * 3600), Duration::get);
        let read_timeout = w
            .read_timeout
            .map_or(StdDuration::from_secs(10), Duration::get);
        for (k, zero) in [
            ("webhooks.max_body", max_body == 0),
            ("webhooks.tolerance", tolerance.as_secs() == 0),
            ("webhooks.dedupe_ttl", dedupe_ttl.is_zero()),
            ("webhooks.read_timeout", read_timeout.is_zero()),
        ] {
            if zero {
                let what = if k == "webhooks.tolerance" {
                    "at least 1s"
                } else {
                    "greater than 0"
                };
                self.problem(k, line, format!("must be {what}"));
            }
        }
        // PayMongo waits 30 s for the whole exchange: reading the delivery
        // and forwarding it inward must fit, or it retries a delivery that
        // is still being handled.
        for (i, e) in endpoints.iter().enumerate() {
            if e.signature == SignatureScheme::Paymongo
                && read_timeout + e.forward_timeout >= PAYMONGO_DELIVERY_TIMEOUT
            {
                self.problem(
                    format!("webhooks.endpoint[{i}].forward_timeout"),
                    line,
                    format!(
                        "read_timeout ({read_timeout:?}) + forward_timeout ({:?}) must stay under PayMongo's 30 s delivery window",
                        e.forward_timeout
                    ),
                );
            }
        }
        if !w.plaintext && tls.is_none() {
            return None;
        }
        Some(WebhooksConfig {
            listen: w.listen,
            tls,
            max_body,
            tolerance,
            dedupe_ttl,
            read_timeout,
            endpoints,
        })
    }

    fn admin(&mut self, a: raw::RawAdmin) -> Option<AdminConfig> {
        let (listen, line) = match &a.listen {
            Some(l) => (l.get_ref().clone(), self.line(l)),
            None => (
                ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 9901))),
                None,
            ),
        };
        let allow_from = if listen.is_local() {
            None
        } else if a.allow_from.is_empty() {
            self.problem(
                "admin.listen",
                line,
                format!("`{listen}` is not loopback; set a non-empty admin.allow_from CIDR list to expose it"),
            );
            None
        } else {
            Some(a.allow_from)
        };
        Some(AdminConfig {
            listen,
            allow_from,
            probe_interval: a
                .probe_interval
                .map_or(StdDuration::from_secs(10), Duration::get),
        })
    }

    /// Two listeners may not bind the same socket (port 0 always gets a fresh one).
    fn check_listeners(&mut self, c: &Config) {
        let mut seen: Vec<(String, &ListenAddr)> = Vec::new();
        let mut all: Vec<(String, &ListenAddr)> = c
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("service[{i}].listen"), &s.listen))
            .collect();
        if let Some(w) = &c.webhooks {
            all.push(("webhooks.listen".into(), &w.listen));
        }
        all.push(("admin.listen".into(), &c.admin.listen));
        for (key, addr) in all {
            if let Some((other, _)) = seen.iter().find(|(_, a)| listeners_clash(a, addr)) {
                self.problem(
                    key.clone(),
                    None,
                    format!("`{addr}` is already used by {other}"),
                );
            }
            seen.push((key, addr));
        }
    }
}

pub(crate) fn listeners_clash(a: &ListenAddr, b: &ListenAddr) -> bool {
    match (a, b) {
        (ListenAddr::Unix(x), ListenAddr::Unix(y)) => x == y,
        (ListenAddr::Tcp(x), ListenAddr::Tcp(y)) => {
            x.port() != 0
                && x.port() == y.port()
                && (x.ip() == y.ip() || x.ip().is_unspecified() || y.ip().is_unspecified())
        }
        _ => false,
    }
}

/// Whether a Redis URL carries a password: user info in the authority
/// (`redis://:pw@host`), or a `pass=` query parameter (how `redis+unix://`
/// URLs carry one).
fn redis_url_has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let in_authority = rest.split(['/', '?']).next().unwrap_or("").contains('@');
    let in_query = rest.split_once('?').is_some_and(|(_, q)| {
        q.split('&')
            .any(|kv| kv.split('=').next().is_some_and(|k| k == "pass"))
    });
    in_authority || in_query
}

/// `forward_to` must be absolute http(s); plain http only to loopback or over a Unix socket.
fn check_forward_to(s: &str, via_socket: bool) -> Result<http::Uri, String> {
    let uri: http::Uri = s.parse().map_err(|_| {
        format!("`{s}` is not a URL; expected e.g. http://127.0.0.1:9000/paymongo/events")
    })?;
    let host = uri.host().ok_or_else(|| format!("`{s}` has no host"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") => {
            let host_ip = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host == "localhost"
                || host_ip
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !(loopback || via_socket) {
                return Err(format!(
                    "`{s}`: plain http:// is only allowed to a loopback address or with forward_socket; \
                     use https:// for other hosts (events carry payment data)"
                ));
            }
        }
        _ => return Err(format!("`{s}` must be an http:// or https:// URL")),
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(format!("`{s}` must not carry user info"));
    }
    Ok(uri)
}
