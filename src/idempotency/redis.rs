//! The Redis idempotency store: claims and records shared by every replica.
//!
//! **Keys** are `pmgw:idem:<64 hex>`, the hex of the [`RecordKey`] (the
//! SHA-256 of the scope), so raw idempotency keys never reach Redis.
//!
//! **Values** are compact binary, one of two kinds, told apart by the first
//! byte and versioned by the second:
//!
//! ```text
//! claim:  'C' 0x01 owner(16, u128 BE) fingerprint(32)                    50 bytes, PX lease
//! record: 'R' 0x01 fingerprint(32) status(u16 BE) count(u16 BE)
//!         { flags(u8: 1 = sensitive) name_len(u16 BE) name value_len(u32 BE) value }*count
//!         body (the rest)                                                   PX ttl
//! ```
//!
//! The first 18 bytes of a claim (kind, version, owner) identify it; the
//! scripts compare exactly that prefix, and a record (which starts with
//! `R`) can never match it.
//!
//! **Operations**, each one round trip and atomic (a Lua script runs alone):
//!
//! * `claim` = [`CLAIM`]: `SET key claim NX PX lease`; if the key exists,
//!   return its value and `PTTL` instead. One round trip also for replays.
//! * `complete` = [`COMPLETE`]: replace the value with the record,
//!   `PX ttl`, only if it is still our claim.
//! * `release` = [`RELEASE`]: delete the value only if it is still our claim.
//!
//! **Waiting.** A duplicate that finds a live claim waits without spinning:
//! duplicates on this replica are woken at once when this replica completes
//! or releases the claim (an in-process registry), and every waiter also
//! polls the claim's first 18 bytes (`GETRANGE`) with exponential backoff
//! from [`POLL_FIRST`] to [`POLL_MAX`] (a claim owned by another replica),
//! never past the claim's remaining lease. `decide` bounds it all by
//! `wait_timeout`.
//!
//! **Replay cache.** Completed records are immutable: `complete` writes one
//! only over our own claim, nothing overwrites or deletes a record, and it
//! ends only by expiring. So a copy kept in this process for at most the
//! record's *remaining* TTL (Redis's `PTTL` when read, or the full ttl when
//! this replica wrote it) can only ever answer what Redis would have
//! answered, give or take the round trip that reported the `PTTL`. The cache
//! turns repeated replays into in-process lookups with no Redis round trip;
//! it is bounded in bytes (`redis_cache`, `"0B"` disables it) and evicts
//! least recently used records. If Redis *loses* a record (restart without
//! persistence, `FLUSHALL`), a cached copy may outlive it on one replica;
//! that copy is still PayMongo's answer to that very key, which is what
//! PayMongo itself would replay for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use moka::future::Cache;
use moka::policy::{EvictionPolicy, Expiry};
use redis::{Script, Value};
use tokio::sync::watch;

use super::memory::ENTRY_OVERHEAD;
use super::store::{
    ClaimOutcome, Fingerprint, IdempotencyStore, OwnerId, Record, RecordKey, Settled, StoreError,
    StoredResponse,
};
use crate::metrics::StoreErrors;
use crate::redis_backend::{BackendError, RedisBackend};

/// Key prefix: one namespace per kind of shared state.
pub const KEY_PREFIX: &str = "pmgw:idem:";

const CLAIM_TAG: u8 = b'C';
const RECORD_TAG: u8 = b'R';
const VERSION: u8 = 1;
/// Kind + version + owner: what identifies a claim.
const CLAIM_ID_LEN: usize = 18;
const CLAIM_LEN: usize = CLAIM_ID_LEN + 32;
/// Record header before the headers: kind, version, fingerprint, status, count.
const RECORD_FIXED: usize = 2 + 32 + 2 + 2;

/// First poll of another replica's claim, then doubling.
pub const POLL_FIRST: Duration = Duration::from_millis(4);
/// Longest gap between polls: what a duplicate waiting on another replica
/// may add to its latency, and what bounds its poll rate (20/s).
pub const POLL_MAX: Duration = Duration::from_millis(50);

/// `KEYS[1]` record key; `ARGV[1]` our claim; `ARGV[2]` lease in ms.
/// `{1}`: claimed. `{0, value, pttl}`: what is there instead.
/// Inside a script Redis's clock stands still, so the key cannot expire
/// between the `SET` and the `GET`.
pub const CLAIM: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1}
end
return {0, redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
";

/// `KEYS[1]`; `ARGV[1]` our claim's first 18 bytes; `ARGV[2]` the record;
/// `ARGV[3]` ttl in ms. 1: stored. 0: the claim is no longer ours (its lease
/// ran out, and maybe another owner took over): nothing is written.
pub const COMPLETE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 18) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// `KEYS[1]`; `ARGV[1]` our claim's first 18 bytes. 1: our claim was
/// deleted. 0: nothing of ours was there (a record is never deleted).
pub const RELEASE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 18) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The Redis key of a record.
pub fn redis_key(key: &RecordKey) -> String {
    let mut s = String::with_capacity(KEY_PREFIX.len() + 64);
    s.push_str(KEY_PREFIX);
    s.push_str(&hex::encode(key.0));
    s
}

/// A claim's value.
pub fn encode_claim(owner: OwnerId, fingerprint: &Fingerprint) -> [u8; CLAIM_LEN] {
    let mut v = [0u8; CLAIM_LEN];
    v[0] = CLAIM_TAG;
    v[1] = VERSION;
    v[2..CLAIM_ID_LEN].copy_from_slice(&owner.0.to_be_bytes());
    v[CLAIM_ID_LEN..].copy_from_slice(&fingerprint.0);
    v
}

/// What identifies `owner`'s claim (the prefix the scripts compare).
fn claim_id(owner: OwnerId) -> [u8; CLAIM_ID_LEN] {
    let mut v = [0u8; CLAIM_ID_LEN];
    v[0] = CLAIM_TAG;
    v[1] = VERSION;
    v[2..].copy_from_slice(&owner.0.to_be_bytes());
    v
}

/// A record's value. `None` if a header is too long to encode (a name over
/// 64 KiB or a value over 4 GiB: not a real response).
pub fn encode_record(r: &Record) -> Option<Vec<u8>> {
    let resp = &r.response;
    let headers: usize = resp
        .headers
        .iter()
        .map(|(n, v)| 7 + n.as_str().len() + v.len())
        .sum();
    let mut out = Vec::with_capacity(RECORD_FIXED + headers + resp.body.len());
    out.push(RECORD_TAG);
    out.push(VERSION);
    out.extend_from_slice(&r.fingerprint.0);
    out.extend_from_slice(&resp.status.as_u16().to_be_bytes());
    out.extend_from_slice(&u16::try_from(resp.headers.len()).ok()?.to_be_bytes());
    for (n, v) in resp.headers.iter() {
        out.push(u8::from(v.is_sensitive()));
        out.extend_from_slice(&u16::try_from(n.as_str().len()).ok()?.to_be_bytes());
        out.extend_from_slice(n.as_str().as_bytes());
        out.extend_from_slice(&u32::try_from(v.len()).ok()?.to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out.extend_from_slice(&resp.body);
    Some(out)
}

/// What a key held.
#[derive(Debug)]
pub enum Stored {
    /// A live claim: who holds it (its first 18 bytes) and for what.
    Claim {
        /// Kind, version and owner.
        id: [u8; CLAIM_ID_LEN],
        /// The fingerprint it was claimed with.
        fingerprint: Fingerprint,
    },
    /// A completed record.
    Record(Record),
}

/// Reads a value. `None` for anything this version did not write (another
/// version's format, or a foreign value under our prefix).
pub fn decode(v: Bytes) -> Option<Stored> {
    match (v.first(), v.get(1)) {
        (Some(&CLAIM_TAG), Some(&VERSION)) if v.len() == CLAIM_LEN => Some(Stored::Claim {
            id: v[..CLAIM_ID_LEN].try_into().ok()?,
            fingerprint: Fingerprint(v[CLAIM_ID_LEN..].try_into().ok()?),
        }),
        (Some(&RECORD_TAG), Some(&VERSION)) => decode_record(v).map(Stored::Record),
        _ => None,
    }
}

fn decode_record(v: Bytes) -> Option<Record> {
    let mut at: usize = 2;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = v.get(at..at.checked_add(n)?)?;
        at += n;
        Some(s)
    };
    let fingerprint = Fingerprint(take(32)?.try_into().ok()?);
    let status = StatusCode::from_u16(u16::from_be_bytes(take(2)?.try_into().ok()?)).ok()?;
    let count = u16::from_be_bytes(take(2)?.try_into().ok()?);
    let mut headers = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let sensitive = take(1)?[0] & 1 == 1;
        let n = usize::from(u16::from_be_bytes(take(2)?.try_into().ok()?));
        let name = HeaderName::from_bytes(take(n)?).ok()?;
        let n = usize::try_from(u32::from_be_bytes(take(4)?.try_into().ok()?)).ok()?;
        let mut value = HeaderValue::from_bytes(take(n)?).ok()?;
        value.set_sensitive(sensitive);
        headers.push((name, value));
    }
    // The body shares the buffer Redis's answer arrived in: no copy.
    let body = v.slice(at..);
    Some(Record {
        fingerprint,
        response: StoredResponse {
            status,
            headers: headers.into_boxed_slice(),
            body,
        },
    })
}

/// A cached completed record and how long it still lives.
#[derive(Clone)]
struct Cached {
    record: Arc<Record>,
    ttl: Duration,
}

struct RemainingTtl;

impl Expiry<RecordKey, Cached> for RemainingTtl {
    fn expire_after_create(&self, _: &RecordKey, v: &Cached, _: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
    fn expire_after_update(
        &self,
        _: &RecordKey,
        v: &Cached,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
}

fn weigh(_: &RecordKey, c: &Cached) -> u32 {
    let bytes = ENTRY_OVERHEAD + c.record.response.heap_bytes();
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// Duplicates on this replica waiting for a key to settle, so a settle by
/// this replica wakes them without a poll. A counter per key: each settle
/// bumps it. Entries exist only while someone waits.
#[derive(Default)]
struct Waiters(Mutex<HashMap<RecordKey, watch::Sender<u64>>>);

impl Waiters {
    fn subscribe(self: &Arc<Self>, key: RecordKey) -> Subscription {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let rx = map
            .entry(key)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Subscription {
            rx: Some(rx),
            key,
            waiters: self.clone(),
        }
    }

    fn wake(&self, key: &RecordKey) {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = map.get(key) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// One waiter's registration; removes the key's entry when the last waiter goes.
struct Subscription {
    rx: Option<watch::Receiver<u64>>,
    key: RecordKey,
    waiters: Arc<Waiters>,
}

impl Subscription {
    /// Resolves on the next local settle of this key.
    async fn woken(&mut self) {
        match self.rx.as_mut() {
            // An error means the sender is gone: nothing to wait for.
            Some(rx) => {
                let _ = rx.changed().await;
            }
            None => std::future::pending().await,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Our receiver first, so the count below no longer includes it.
        drop(self.rx.take());
        let mut map = self
            .waiters
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map
            .get(&self.key)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            map.remove(&self.key);
        }
    }
}

/// The Redis store. Cheap to share behind an `Arc`.
pub struct RedisStore {
    backend: Arc<RedisBackend>,
    cache: Option<Cache<RecordKey, Cached>>,
    waiters: Arc<Waiters>,
    errors: StoreErrors,
    claim: Script,
    complete: Script,
    release: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("backend", &self.backend)
            .field("cached", &self.cache.as_ref().map(Cache::entry_count))
            .finish()
    }
}

impl RedisStore {
    /// A store on `backend` with a replay cache of about `cache_bytes`
    /// (0: none). Failures are counted in `errors`.
    pub fn new(backend: Arc<RedisBackend>, cache_bytes: u64, errors: StoreErrors) -> Self {
        let cache = (cache_bytes > 0).then(|| {
            Cache::builder()
                .name("idempotency-redis-replays")
                .max_capacity(cache_bytes)
                .weigher(weigh)
                .eviction_policy(EvictionPolicy::lru())
                .expire_after(RemainingTtl)
                .build()
        });
        Self {
            backend,
            cache,
            waiters: Arc::default(),
            errors,
            claim: Script::new(CLAIM),
            complete: Script::new(COMPLETE),
            release: Script::new(RELEASE),
        }
    }

    /// Records in the replay cache (after pending maintenance).
    pub fn cached(&self) -> u64 {
        self.cache.as_ref().map_or(0, Cache::entry_count)
    }

    /// Keys that duplicates on this replica are waiting on right now.
    pub fn waiting_keys(&self) -> usize {
        self.waiters.len()
    }

    fn failed(&self, op: &'static str, e: BackendError) -> StoreError {
        self.errors.inc("idempotency", op);
        match e {
            BackendError::Timeout { timeout, .. } => StoreError::Timeout(timeout),
            e @ BackendError::Failed { .. } => StoreError::Unavailable(e.to_string()),
        }
    }

    async fn remember(&self, key: &RecordKey, record: Arc<Record>, ttl: Duration) {
        if let Some(cache) = &self.cache {
            if !ttl.is_zero() {
                cache.insert(*key, Cached { record, ttl }).await;
            }
        }
    }

    /// Resolves when the claim `id` on `key` is gone (completed, released,
    /// or taken over), woken locally or found by polling, and no later than
    /// `remaining` from now (the claim's own lease).
    fn waiter(&self, key: RecordKey, id: [u8; CLAIM_ID_LEN], remaining: Duration) -> Settled {
        let mut sub = self.waiters.subscribe(key);
        let backend = self.backend.clone();
        let errors = self.errors.clone();
        let rkey = redis_key(&key);
        let deadline = tokio::time::Instant::now() + remaining;
        Settled::new(async move {
            let mut delay = POLL_FIRST;
            loop {
                let next = (tokio::time::Instant::now() + delay).min(deadline);
                tokio::select! {
                    () = sub.woken() => return,
                    () = tokio::time::sleep_until(next) => {}
                }
                if tokio::time::Instant::now() >= deadline {
                    return;
                }
                let mut cmd = redis::cmd("GETRANGE");
                cmd.arg(&rkey).arg(0).arg(CLAIM_ID_LEN - 1);
                match backend.query::<Vec<u8>>(&cmd).await {
                    Ok(now) if now[..] == id[..] => {}
                    Ok(_) => return,
                    // Redis unreachable: the owner is most likely still at
                    // work. Keep waiting (the lease bounds it) rather than
                    // claim again and risk a duplicate execution.
                    Err(_) => errors.inc("idempotency", "wait"),
                }
                delay = (delay * 2).min(POLL_MAX);
            }
        })
    }
}

/// The `{0, value, pttl}` answer of [`CLAIM`].
fn existing(v: Value) -> Option<(Bytes, Option<Duration>)> {
    let Value::Array(items) = v else {
        return None;
    };
    let mut items = items.into_iter();
    match (items.next(), items.next(), items.next()) {
        (Some(Value::Int(0)), Some(Value::BulkString(value)), Some(Value::Int(pttl))) => {
            // -1: no expiry (not ours to set); -2: gone.
            let remaining = u64::try_from(pttl).ok().map(Duration::from_millis);
            Some((Bytes::from(value), remaining))
        }
        _ => None,
    }
}

fn millis(d: Duration) -> u64 {
    // At least 1: `PX 0` is an error, and a sub-millisecond lease is none.
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl IdempotencyStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn claim(
        &self,
        key: &RecordKey,
        fingerprint: &Fingerprint,
        owner: OwnerId,
        lease: Duration,
    ) -> Result<ClaimOutcome, StoreError> {
        if let Some(c) = &self.cache {
            if let Some(hit) = c.get(key).await {
                return Ok(ClaimOutcome::Completed(hit.record));
            }
        }
        let mut inv = self.claim.key(redis_key(key));
        inv.arg(&encode_claim(owner, fingerprint)[..])
            .arg(millis(lease));
        let answer: Value = self
            .backend
            .invoke(&inv)
            .await
            .map_err(|e| self.failed("claim", e))?;
        if let Value::Array(a) = &answer {
            if matches!(a.first(), Some(Value::Int(1))) {
                return Ok(ClaimOutcome::Claimed);
            }
        }
        let (value, remaining) = existing(answer).ok_or_else(|| {
            self.errors.inc("idempotency", "claim");
            StoreError::Unavailable("redis answered the claim with something unexpected".into())
        })?;
        match decode(value) {
            Some(Stored::Record(r)) => {
                let r = Arc::new(r);
                if let Some(ttl) = remaining {
                    self.remember(key, r.clone(), ttl).await;
                }
                Ok(ClaimOutcome::Completed(r))
            }
            Some(Stored::Claim { id, fingerprint }) => Ok(ClaimOutcome::InFlight {
                fingerprint,
                // A claim without expiry was not written by a gateway; our
                // own lease bounds the wait for it.
                settled: self.waiter(*key, id, remaining.unwrap_or(lease)),
            }),
            None => {
                self.errors.inc("idempotency", "claim");
                Err(StoreError::Unavailable(
                    "a value under this key was written by another version or program".into(),
                ))
            }
        }
    }

    async fn complete(
        &self,
        key: &RecordKey,
        owner: OwnerId,
        record: Record,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let value = encode_record(&record)
            .ok_or_else(|| StoreError::Unavailable("response headers too large to store".into()))?;
        let mut inv = self.complete.key(redis_key(key));
        inv.arg(&claim_id(owner)[..]).arg(value).arg(millis(ttl));
        let stored: i64 = self
            .backend
            .invoke(&inv)
            .await
            .map_err(|e| self.failed("complete", e))?;
        let stored = stored == 1;
        if stored {
            // Cache first, then wake: a woken local waiter finds it here.
            self.remember(key, Arc::new(record), ttl).await;
            self.waiters.wake(key);
        }
        Ok(stored)
    }

    async fn release(&self, key: &RecordKey, owner: OwnerId) -> Result<bool, StoreError> {
        let mut inv = self.release.key(redis_key(key));
        inv.arg(&claim_id(owner)[..]);
        let released: i64 = self
            .backend
            .invoke(&inv)
            .await
            .map_err(|e| self.failed("release", e))?;
        if released == 1 {
            self.waiters.wake(key);
        }
        Ok(released == 1)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.backend
            .ping()
            .await
            .map_err(|e| self.failed("ping", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn record() -> Record {
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        h.append("x-multi", HeaderValue::from_static("1"));
        h.append("x-multi", HeaderValue::from_static("2"));
        let mut secret = HeaderValue::from_static("s");
        secret.set_sensitive(true);
        h.insert("x-token", secret);
        Record {
            fingerprint: Fingerprint([9; 32]),
            response: StoredResponse::capture(
                StatusCode::CREATED,
                &h,
                b"{\"data\":{\"id\":\"pi_1\"}}\x00\xff",
            ),
        }
    }

    #[test]
    fn record_round_trips_byte_for_byte() {
        let r = record();
        let v = encode_record(&r).unwrap();
        assert_eq!(v[0], b'R');
        let Some(Stored::Record(back)) = decode(Bytes::from(v)) else {
            panic!("not a record")
        };
        assert_eq!(back, r);
        assert!(
            back.response
                .headers
                .iter()
                .any(|(n, v)| n == "x-token" && v.is_sensitive())
        );
    }

    #[test]
    fn claim_round_trips_and_its_id_is_its_prefix() {
        let owner = OwnerId(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10);
        let fp = Fingerprint([7; 32]);
        let v = encode_claim(owner, &fp);
        assert_eq!(v.len(), 50);
        assert_eq!(&v[..18], &claim_id(owner)[..]);
        let Some(Stored::Claim { id, fingerprint }) = decode(Bytes::copy_from_slice(&v)) else {
            panic!("not a claim")
        };
        assert_eq!((id, fingerprint), (claim_id(owner), fp));
        assert_ne!(claim_id(owner), claim_id(OwnerId(owner.0 + 1)));
    }

    #[test]
    fn foreign_or_truncated_values_are_refused() {
        let v = encode_record(&record()).unwrap();
        for cut in [0, 1, 2, 20, RECORD_FIXED, RECORD_FIXED + 3] {
            assert!(decode(Bytes::copy_from_slice(&v[..cut])).is_none(), "{cut}");
        }
        let mut other_version = v.clone();
        other_version[1] = 2;
        assert!(decode(Bytes::from(other_version)).is_none());
        assert!(decode(Bytes::from_static(b"OK")).is_none());
        let claim = encode_claim(OwnerId(1), &Fingerprint([0; 32]));
        assert!(decode(Bytes::copy_from_slice(&claim[..49])).is_none());
    }

    #[test]
    fn keys_are_namespaced_hex() {
        let k = redis_key(&RecordKey([0xab; 32]));
        assert_eq!(k.len(), KEY_PREFIX.len() + 64);
        assert!(k.starts_with("pmgw:idem:abab"));
    }

    #[test]
    fn claim_answers_are_parsed() {
        let v = Value::Array(vec![
            Value::Int(0),
            Value::BulkString(b"x".to_vec()),
            Value::Int(1500),
        ]);
        let (b, ttl) = existing(v).unwrap();
        assert_eq!(
            (&b[..], ttl),
            (&b"x"[..], Some(Duration::from_millis(1500)))
        );
        let v = Value::Array(vec![
            Value::Int(0),
            Value::BulkString(vec![]),
            Value::Int(-1),
        ]);
        assert_eq!(existing(v).unwrap().1, None);
        assert!(existing(Value::Array(vec![Value::Int(1)])).is_none());
        assert!(existing(Value::Nil).is_none());
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_secs(2)), 2000);
    }

    #[tokio::test]
    async fn local_waiters_are_woken_and_cleaned_up() {
        let w = Arc::new(Waiters::default());
        let k = RecordKey([1; 32]);
        let mut a = w.subscribe(k);
        let b = w.subscribe(k);
        assert_eq!(w.len(), 1);
        w.wake(&k);
        tokio::time::timeout(Duration::from_secs(5), a.woken())
            .await
            .unwrap();
        drop(a);
        assert_eq!(w.len(), 1, "b still waits");
        drop(b);
        assert_eq!(w.len(), 0);
        w.wake(&k); // nobody waits: a no-op
    }
}
