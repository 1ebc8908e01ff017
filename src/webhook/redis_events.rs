//! The Redis event store: which webhook events were delivered inward,
//! shared by every replica, so a delivery PayMongo makes (or retries) to
//! any replica is forwarded inward once.
//!
//! **Keys** are `pmgw:evt:<endpoint path>:<event id>`. Event ids are
//! letters, digits, `_` and `-` only (checked before an event gets here),
//! so the last `:` always separates the id from the path.
//!
//! **Values**: a claim is `'C' 0x01 token(16, u128 BE)` with `PX lease`;
//! a delivered event is `D` with `PX dedupe_ttl`.
//!
//! * `claim` = [`CLAIM`]: `SET key claim NX PX lease`, else report
//!   whether the event is delivered or still being delivered. One round trip.
//! * `mark_delivered` = `SET key D PX ttl`, whoever holds the claim: the
//!   event did reach the inward service.
//! * `release` = [`RELEASE`]: delete the value only if it is still our claim.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::dedupe::{Claim, ClaimToken, EventStore, StoreError};
use crate::idempotency::OwnerId;
use crate::metrics::StoreErrors;
use crate::redis_backend::{BackendError, RedisBackend};

/// Key prefix of event records.
pub const KEY_PREFIX: &str = "pmgw:evt:";

/// The value of a delivered event.
const DELIVERED: &[u8] = b"D";

/// `KEYS[1]`; `ARGV[1]` our claim; `ARGV[2]` lease in ms.
/// 1: claimed by us. 2: already delivered. 0: another delivery holds it.
pub const CLAIM: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
if redis.call('GET', KEYS[1]) == 'D' then
  return 2
end
return 0
";

/// `KEYS[1]`; `ARGV[1]` our claim. Deletes it only if it is still ours.
pub const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

fn claim_value(token: ClaimToken) -> [u8; 18] {
    let mut v = [0u8; 18];
    v[0] = b'C';
    v[1] = 1;
    v[2..].copy_from_slice(&token.0.to_be_bytes());
    v
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The Redis key of an event record (`key` is `<endpoint path>:<event id>`).
pub fn redis_key(key: &str) -> String {
    format!("{KEY_PREFIX}{key}")
}

/// Seen-event records in Redis.
pub struct RedisEventStore {
    backend: Arc<RedisBackend>,
    errors: StoreErrors,
    claim: Arc<Script>,
    release: Arc<Script>,
}

impl std::fmt::Debug for RedisEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEventStore")
            .field("backend", &self.backend)
            .finish()
    }
}

impl RedisEventStore {
    /// A store on `backend`; failures are counted in `errors`.
    pub fn new(backend: Arc<RedisBackend>, errors: StoreErrors) -> Self {
        Self {
            backend,
            errors,
            claim: Arc::new(Script::new(CLAIM)),
            release: Arc::new(Script::new(RELEASE)),
        }
    }

    fn failed(&self, op: &'static str, e: BackendError) -> StoreError {
        self.errors.inc("events", op);
        StoreError(e.to_string())
    }
}

async fn release(
    backend: &RedisBackend,
    script: &Script,
    key: &str,
    token: ClaimToken,
) -> Result<(), BackendError> {
    let mut inv = script.key(redis_key(key));
    inv.arg(&claim_value(token)[..]);
    backend.invoke::<i64>(&inv).await.map(drop)
}

#[async_trait]
impl EventStore for RedisEventStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn claim(&self, key: &str, lease: Duration) -> Result<Claim, StoreError> {
        let token = ClaimToken(OwnerId::new().0);
        let mut inv = self.claim.key(redis_key(key));
        inv.arg(&claim_value(token)[..]).arg(millis(lease));
        match self.backend.invoke::<i64>(&inv).await {
            Ok(1) => Ok(Claim::Acquired(token)),
            Ok(2) => Ok(Claim::Delivered),
            Ok(_) => Ok(Claim::InProgress),
            Err(e) => {
                // A timed-out claim may still have landed; the receiver
                // forwards without it, so take it back (best effort: the
                // lease is the fallback) rather than make PayMongo's
                // retries wait out the lease for nothing.
                if matches!(e, BackendError::Timeout { .. }) {
                    let (backend, script, key) =
                        (self.backend.clone(), self.release.clone(), key.to_owned());
                    tokio::spawn(async move {
                        let _ = release(&backend, &script, &key, token).await;
                    });
                }
                Err(self.failed("claim", e))
            }
        }
    }

    async fn mark_delivered(
        &self,
        key: &str,
        _token: ClaimToken,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(redis_key(key))
            .arg(DELIVERED)
            .arg("PX")
            .arg(millis(ttl));
        self.backend
            .query::<()>(&cmd)
            .await
            .map_err(|e| self.failed("deliver", e))
    }

    async fn release(&self, key: &str, token: ClaimToken) -> Result<(), StoreError> {
        release(&self.backend, &self.release, key, token)
            .await
            .map_err(|e| self.failed("release", e))
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

    #[test]
    fn keys_and_values() {
        assert_eq!(
            redis_key("/webhooks/paymongo:evt_1"),
            "pmgw:evt:/webhooks/paymongo:evt_1"
        );
        let v = claim_value(ClaimToken(1));
        assert_eq!((v[0], v[1], v[17]), (b'C', 1, 1));
        assert_ne!(&v[..], DELIVERED);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
    }
}
