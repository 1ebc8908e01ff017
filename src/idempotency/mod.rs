//! Idempotency: one upstream execution per `Idempotency-Key`, exact replays.
//!
//! This module owns the *semantics*; [`store`] owns the storage contract,
//! [`memory`] the in-process store and [`redis`] the store several replicas
//! share. The semantics are:
//!
//! * **Which requests**: methods in `idempotency.methods` (default `POST`)
//!   that carry `Idempotency-Key`. Reads are never deduplicated; requests
//!   without the header pass untouched.
//! * **Key**: 1–255 visible ASCII characters (0x21–0x7E), exactly one header.
//! * **Scope**: (service, method, path, key), hashed into a [`RecordKey`].
//! * **Fingerprint**: SHA-256 over content type, query and body. The same
//!   scoped key with another fingerprint is refused (422), also in flight.
//! * **State machine**: `claim` (with a lease) → forward → `complete` (store
//!   the response) or `release` (store nothing). A [`ClaimGuard`] releases
//!   the claim if its owner is dropped or panics before finishing.
//! * **What is stored**: upstream 2xx and 4xx except 408, 409 and 429
//!   ([`storable`]). Never 5xx, never errors the gateway made itself.
//!
//! The outbound side (`outbound::idempotent`) strings these together around
//! the upstream call.

pub mod memory;
pub mod redis;
pub mod store;

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use sha2::{Digest, Sha256};
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::config::{IdempotencyConfig, InFlight, Mode, OnStoreError};
use crate::log::Abbrev;
pub use memory::MemoryStore;
pub use redis::RedisStore;
pub use store::{
    ClaimOutcome, Fingerprint, IdempotencyStore, OwnerId, Record, RecordKey, Settled, StoreError,
    StoredResponse,
};

/// The request header carrying the key. Forwarded upstream unchanged.
pub const KEY_HEADER: HeaderName = HeaderName::from_static("idempotency-key");

/// Set to `true` on every replayed response.
pub const REPLAYED_HEADER: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Longest accepted key, in bytes (= characters: keys are ASCII).
pub const MAX_KEY_LEN: usize = 255;

/// Why the idempotency layer refused a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The header is empty, too long, repeated, or not visible ASCII.
    #[error("idempotency key must be one header of 1 to 255 visible ascii characters")]
    InvalidKey,
    /// The scoped key was first used for a different request.
    #[error("idempotency key was already used with a different request")]
    KeyReused,
    /// A request with this key is in flight (reject mode, or the wait timed out).
    #[error("a request with this idempotency key is still in flight")]
    InUse,
    /// The store failed and `on_store_error = "reject"`.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The validated key of a request, borrowed from its header.
#[derive(Clone, Copy, Debug)]
pub struct Key<'a>(&'a str);

impl<'a> Key<'a> {
    /// Validates one header value: 1–255 bytes, each 0x21..=0x7E.
    pub fn parse(v: &'a HeaderValue) -> Result<Self, Error> {
        let b = v.as_bytes();
        if b.is_empty() || b.len() > MAX_KEY_LEN || !b.iter().all(|c| (0x21..=0x7E).contains(c)) {
            return Err(Error::InvalidKey);
        }
        // All bytes are ASCII, so this cannot fail.
        std::str::from_utf8(b)
            .map(Key)
            .map_err(|_| Error::InvalidKey)
    }

    /// The key text.
    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

/// Who a request is to the idempotency layer: where its record lives and
/// what it must look like to be replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The scoped key.
    pub key: RecordKey,
    /// The request fingerprint.
    pub fingerprint: Fingerprint,
}

/// The request as the idempotency layer sees it.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// Test or live: part of the scope.
    pub mode: Mode,
    /// Service name (the listener the request arrived on).
    pub service: &'a str,
    /// Request method.
    pub method: &'a Method,
    /// Path, without the query.
    pub path: &'a str,
    /// Query, if any.
    pub query: Option<&'a str>,
    /// The caller's headers.
    pub headers: &'a HeaderMap,
    /// The whole body.
    pub body: &'a [u8],
}

/// Decides whether a request is deduplicated and computes its identity.
/// `Ok(None)`: pass it through untouched.
pub fn identify(cfg: &IdempotencyConfig, req: &RequestView<'_>) -> Result<Option<Identity>, Error> {
    if !applies(cfg, req.method) {
        return Ok(None);
    }
    let mut values = req.headers.get_all(KEY_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Error::InvalidKey);
    }
    let key = Key::parse(value)?;
    let content_type = req
        .headers
        .get(header::CONTENT_TYPE)
        .map(HeaderValue::as_bytes);
    Ok(Some(Identity {
        key: record_key(req.mode, req.service, req.method, req.path, key),
        fingerprint: fingerprint(content_type, req.query, req.body),
    }))
}

/// Whether requests with this method are deduplicated. Safe methods never are.
pub fn applies(cfg: &IdempotencyConfig, method: &Method) -> bool {
    !method.is_safe() && cfg.methods.contains(method)
}

fn put_field(h: &mut Sha256, field: &[u8]) {
    h.update((field.len() as u64).to_be_bytes());
    h.update(field);
}

/// The store key of a scope. Fields are length-prefixed, so no two scopes
/// can hash the same input.
pub fn record_key(
    mode: Mode,
    service: &str,
    method: &Method,
    path: &str,
    key: Key<'_>,
) -> RecordKey {
    let mut h = Sha256::new();
    h.update(b"paymongo-gateway/idempotency/scope/v1\0");
    // Test and live never share records, even through one Redis database
    // or across a reload that switches `mode`.
    put_field(
        &mut h,
        match mode {
            Mode::Test => b"test",
            Mode::Live => b"live",
        },
    );
    put_field(&mut h, service.as_bytes());
    put_field(&mut h, method.as_str().as_bytes());
    put_field(&mut h, path.as_bytes());
    put_field(&mut h, key.as_str().as_bytes());
    RecordKey(h.finalize().into())
}

/// The fingerprint of a request. An absent content type or query differs
/// from an empty one.
pub fn fingerprint(content_type: Option<&[u8]>, query: Option<&str>, body: &[u8]) -> Fingerprint {
    let mut h = Sha256::new();
    h.update(b"paymongo-gateway/idempotency/fingerprint/v1\0");
    for part in [content_type, query.map(str::as_bytes)] {
        match part {
            None => h.update([0u8]),
            Some(p) => {
                h.update([1u8]);
                put_field(&mut h, p);
            }
        }
    }
    put_field(&mut h, body);
    Fingerprint(h.finalize().into())
}

/// Whether an upstream response with this status is stored and replayed.
///
/// 2xx and 4xx are PayMongo's final word on the request. 408, 409 and 429
/// say "try again" (409 is PayMongo's own concurrent-key answer), and 5xx
/// means the outcome is unknown; replaying those would freeze a transient
/// failure for the whole ttl.
pub fn storable(status: StatusCode) -> bool {
    status.is_success() || (status.is_client_error() && !matches!(status.as_u16(), 408 | 409 | 429))
}

/// Response headers that are not replayed: hyper sets `date` and
/// `content-length` for the replay; cookies, `age` and `alt-svc` describe the
/// moment and the upstream connection, not the answer. Hop-by-hop headers
/// are already gone (stripped before storing).
fn replayable(name: &HeaderName) -> bool {
    !(name == header::DATE
        || name == header::CONTENT_LENGTH
        || name == header::SET_COOKIE
        || name == header::AGE
        || name == header::ALT_SVC
        || name == REPLAYED_HEADER)
}

impl StoredResponse {
    /// Captures an upstream response for storage. Everything is copied into
    /// its own exact-size allocation: slices of a connection's read buffer
    /// would keep the whole buffer alive and make the byte bound a lie.
    pub fn capture(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Self {
        let headers = headers
            .iter()
            .filter(|(n, _)| replayable(n))
            .filter_map(|(n, v)| {
                let name = HeaderName::from_bytes(n.as_str().as_bytes()).ok()?;
                let mut value = HeaderValue::from_bytes(v.as_bytes()).ok()?;
                value.set_sensitive(v.is_sensitive());
                Some((name, value))
            })
            .collect();
        StoredResponse {
            status,
            headers,
            body: Bytes::copy_from_slice(body),
        }
    }

    /// The replay: stored status, headers and body, plus `Idempotent-Replayed: true`.
    /// The body is shared, not copied.
    pub fn replay(&self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(self.body.clone()));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.reserve(self.headers.len() + 1);
        for (n, v) in self.headers.iter() {
            h.append(n.clone(), v.clone());
        }
        h.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
        resp
    }
}

/// A claim held by this request. Dropping it unfinished (the request future
/// was dropped, or the task panicked) releases the claim in the background,
/// so a duplicate need not wait out the lease.
pub struct ClaimGuard {
    store: Arc<dyn IdempotencyStore>,
    tasks: TaskTracker,
    id: Identity,
    owner: OwnerId,
    armed: bool,
}

impl std::fmt::Debug for ClaimGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimGuard")
            .field("key", &self.id.key)
            .field("owner", &self.owner)
            .field("armed", &self.armed)
            .finish()
    }
}

impl ClaimGuard {
    /// Armed before the claim is even attempted: if the caller is dropped
    /// while `claim` is running, the claim may or may not have landed, and
    /// `release` is safe either way (it only deletes this owner's claim).
    fn new(
        store: Arc<dyn IdempotencyStore>,
        tasks: TaskTracker,
        id: Identity,
        owner: OwnerId,
    ) -> Self {
        Self {
            store,
            tasks,
            id,
            owner,
            armed: true,
        }
    }

    /// This claim's identity.
    pub fn identity(&self) -> &Identity {
        &self.id
    }

    /// Stores `response` for `ttl` in place of the claim. `Ok(false)` means
    /// the claim was lost (its lease ran out) and nothing was stored.
    pub async fn complete(
        mut self,
        response: StoredResponse,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let record = Record {
            fingerprint: self.id.fingerprint,
            response,
        };
        let r = self
            .store
            .complete(&self.id.key, self.owner, record, ttl)
            .await;
        // On a store error the claim may still be there: Drop releases it.
        self.armed = r.is_err();
        r
    }

    /// Gives the key up without storing anything.
    pub async fn release(mut self) -> Result<bool, StoreError> {
        self.armed = false;
        self.store.release(&self.id.key, self.owner).await
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Outside a runtime (process teardown) the lease is the fallback.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.store.clone();
        let (key, owner) = (self.id.key, self.owner);
        self.tasks.spawn_on(
            async move {
                if let Err(e) = store.release(&key, owner).await {
                    warn!(error = %e, "could not release an abandoned idempotency claim; it expires with its lease");
                }
            },
            &rt,
        );
    }
}

/// What to do with a deduplicated request.
#[derive(Debug)]
pub enum Decision {
    /// This request owns the key: forward it, then finish the guard.
    Execute(ClaimGuard),
    /// Answer with the stored response. `waited`: a duplicate waited for it.
    Replay {
        /// The completed record.
        record: Arc<Record>,
        /// Whether this request waited for an in-flight duplicate.
        waited: bool,
    },
    /// The store failed and `on_store_error = "forward"`: forward without
    /// deduplication (PayMongo still sees the key).
    Bypass(StoreError),
}

/// Claims, waits or replays, per `cfg`. Loops only when a claim it waited on
/// settled without a record (released or expired): then it tries to claim
/// again, and the store's atomic claim lets exactly one waiter win.
pub async fn decide(
    store: &Arc<dyn IdempotencyStore>,
    tasks: &TaskTracker,
    cfg: &IdempotencyConfig,
    id: Identity,
) -> Result<Decision, Error> {
    let owner = OwnerId::new();
    let deadline = tokio::time::Instant::now() + cfg.wait_timeout;
    let mut waited = false;
    loop {
        let guard = ClaimGuard::new(store.clone(), tasks.clone(), id, owner);
        let outcome = store
            .claim(&id.key, &id.fingerprint, owner, cfg.lease)
            .await;
        let settled = match outcome {
            Ok(ClaimOutcome::Claimed) => return Ok(Decision::Execute(guard)),
            Err(e) => {
                // The guard stays armed: a claim that timed out may still
                // have landed, and left alone it would block this key for a
                // whole lease. Releasing is safe either way (only our claim).
                drop(guard);
                return match cfg.on_store_error {
                    OnStoreError::Forward => Ok(Decision::Bypass(e)),
                    OnStoreError::Reject => Err(Error::Store(e)),
                };
            }
            Ok(ClaimOutcome::Completed(record)) => {
                guard.disarm();
                if record.fingerprint != id.fingerprint {
                    return Err(Error::KeyReused);
                }
                return Ok(Decision::Replay { record, waited });
            }
            Ok(ClaimOutcome::InFlight {
                fingerprint,
                settled,
            }) => {
                guard.disarm();
                if fingerprint != id.fingerprint {
                    return Err(Error::KeyReused);
                }
                if cfg.in_flight == InFlight::Reject {
                    return Err(Error::InUse);
                }
                settled
            }
        };
        waited = true;
        if tokio::time::timeout_at(deadline, settled).await.is_err() {
            return Err(Error::InUse);
        }
    }
}

/// Shortened key for log lines: never the whole key.
pub fn abbrev(v: &HeaderValue) -> Option<Abbrev<'_>> {
    v.to_str().ok().map(Abbrev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn key_rules() {
        assert!(Key::parse(&hv("a")).is_ok());
        assert!(Key::parse(&hv(&"k".repeat(255))).is_ok());
        assert!(Key::parse(&hv("!~")).is_ok());
        assert!(Key::parse(&hv(&"k".repeat(256))).is_err());
        assert!(Key::parse(&hv("")).is_err());
        assert!(Key::parse(&hv("has space")).is_err());
        assert!(Key::parse(&hv("tab\there")).is_err());
        assert!(Key::parse(&HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()).is_err());
        assert!(Key::parse(&HeaderValue::from_bytes(b"\x80abc").unwrap()).is_err());
    }

    #[test]
    fn scope_parts_cannot_run_into_each_other() {
        let k = |s: &str, p: &str, key: &str| record_key(Mode::Test, s, &Method::POST, p, Key(key));
        assert_ne!(k("ab", "/c", "k"), k("a", "b/c", "k"));
        assert_ne!(k("a", "/v1/x", "k"), k("a", "/v1/x", "k2"));
        assert_ne!(
            record_key(Mode::Test, "a", &Method::POST, "/v1/x", Key("k")),
            record_key(Mode::Test, "a", &Method::PUT, "/v1/x", Key("k"))
        );
        assert_eq!(k("a", "/v1/x", "k"), k("a", "/v1/x", "k"));
        // Test and live never share a record.
        assert_ne!(
            record_key(Mode::Test, "a", &Method::POST, "/v1/x", Key("k")),
            record_key(Mode::Live, "a", &Method::POST, "/v1/x", Key("k"))
        );
    }

    #[test]
    fn fingerprint_covers_body_type_and_query() {
        let base = fingerprint(Some(b"application/json"), None, b"{}");
        assert_eq!(base, fingerprint(Some(b"application/json"), None, b"{}"));
        assert_ne!(base, fingerprint(Some(b"application/json"), None, b"{ }"));
        assert_ne!(base, fingerprint(Some(b"text/plain"), None, b"{}"));
        assert_ne!(base, fingerprint(None, None, b"{}"));
        assert_ne!(
            base,
            fingerprint(Some(b"application/json"), Some(""), b"{}")
        );
        assert_ne!(
            base,
            fingerprint(Some(b"application/json"), Some("a=1"), b"{}")
        );
    }

    #[test]
    fn storable_statuses() {
        for s in [200, 201, 204, 400, 401, 402, 403, 404, 422] {
            assert!(storable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [100, 301, 304, 408, 409, 429, 500, 502, 503, 504] {
            assert!(!storable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }

    #[test]
    fn capture_and_replay_keep_what_matters() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, hv("application/json"));
        h.insert(header::DATE, hv("Mon, 01 Jan 2024 00:00:00 GMT"));
        h.insert(header::CONTENT_LENGTH, hv("2"));
        h.insert(header::SET_COOKIE, hv("a=b"));
        h.append("x-request-id", hv("req_1"));
        h.append("x-multi", hv("1"));
        h.append("x-multi", hv("2"));
        let s = StoredResponse::capture(StatusCode::CREATED, &h, b"{}");
        let r = s.replay();
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(r.headers()[REPLAYED_HEADER], "true");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(r.headers()["x-request-id"], "req_1");
        assert_eq!(r.headers().get_all("x-multi").iter().count(), 2);
        assert!(r.headers().get(header::DATE).is_none());
        assert!(r.headers().get(header::CONTENT_LENGTH).is_none());
        assert!(r.headers().get(header::SET_COOKIE).is_none());
        assert!(s.heap_bytes() > 2);
    }

    fn config(extra: &str) -> IdempotencyConfig {
        try_config(extra).unwrap()
    }

    fn try_config(extra: &str) -> Result<IdempotencyConfig, crate::config::ConfigError> {
        let text = format!(
            "mode = \"test\"\n[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n\
             secret_key = {{ env = \"SK\" }}\n[idempotency]\n{extra}"
        );
        let env = |_: &str| Some("sk_test_unit".to_owned());
        let ctx = crate::config::LoadContext {
            base_dir: ".".into(),
            env: &env,
        };
        crate::config::Config::parse(&text, &ctx).map(|c| c.idempotency)
    }

    #[test]
    fn config_bounds_are_checked() {
        let e = try_config("max_memory = \"1MiB\"\nmax_response = \"2MiB\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("idempotency.max_response"), "{e}");
        let e = try_config("max_memory = \"0B\"").unwrap_err().to_string();
        assert!(e.contains("idempotency.max_memory"), "{e}");
        let e = try_config("lease = \"10s\"").unwrap_err().to_string();
        assert!(e.contains("idempotency.lease"), "{e}");
        let c = config("ttl = \"300ms\"\nin_flight = \"reject\"\non_store_error = \"reject\"");
        assert_eq!(c.ttl, std::time::Duration::from_millis(300));
        assert_eq!(c.in_flight, InFlight::Reject);
        assert_eq!(c.on_store_error, OnStoreError::Reject);
        let d = config("");
        assert_eq!((d.max_memory, d.max_response), (64 << 20, 1 << 20));
        assert_eq!(d.ttl, std::time::Duration::from_secs(24 * 3600));
    }

    #[test]
    fn redis_keys_have_defaults_and_bounds() {
        let c = config("store = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"");
        assert_eq!(c.store, crate::config::StoreKind::Redis);
        assert_eq!(c.redis_timeout, std::time::Duration::from_secs(1));
        assert_eq!((c.redis_connections, c.redis_cache), (2, 16 << 20));
        assert!(c.redis_ca_file.is_none());
        let c = config(
            "store = \"redis\"\nredis_url = \"redis://h\"\nredis_connections = 4\n\
             redis_cache = \"0B\"\nredis_timeout = \"250ms\"",
        );
        assert_eq!((c.redis_connections, c.redis_cache), (4, 0));
        assert_eq!(c.redis_timeout, std::time::Duration::from_millis(250));
        for (extra, key) in [
            ("redis_connections = 0", "idempotency.redis_connections"),
            ("redis_connections = 65", "idempotency.redis_connections"),
            ("redis_timeout = \"0s\"", "idempotency.redis_timeout"),
            (
                "redis_ca_file = \"/nonexistent/ca.pem\"",
                "idempotency.redis_ca_file",
            ),
        ] {
            let e = try_config(&format!(
                "store = \"redis\"\nredis_url = \"redis://h\"\n{extra}"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
        // A CA file only makes sense with TLS.
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca.cert.pem()).unwrap();
        let line = format!("redis_ca_file = \"{}\"", path.display());
        let e = try_config(&format!(
            "store = \"redis\"\nredis_url = \"redis://h\"\n{line}"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("rediss://"), "{e}");
        let c = config(&format!(
            "store = \"redis\"\nredis_url = \"rediss://h\"\n{line}"
        ));
        assert!(c.redis_ca_pem.is_some_and(|p| p.starts_with(b"-----BEGIN")));
    }

    #[test]
    fn only_configured_unsafe_methods_apply() {
        let cfg = config("");
        assert!(applies(&cfg, &Method::POST));
        assert!(!applies(&cfg, &Method::GET));
        assert!(!applies(&cfg, &Method::PUT));
        let cfg = config("methods = [\"POST\", \"PUT\"]");
        assert!(applies(&cfg, &Method::PUT));
        assert!(!applies(&cfg, &Method::DELETE));
    }
}
