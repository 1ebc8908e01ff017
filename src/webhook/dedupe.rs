//! Which events were already delivered inward, so PayMongo's retries and
//! duplicate deliveries are acknowledged without a second inward call.
//!
//! A record goes through two states: *claimed* (a delivery is in flight,
//! held for a lease) and *delivered* (kept for `dedupe_ttl`). The claim is
//! what makes concurrent duplicates safe: of two deliveries of the same
//! event racing each other, exactly one wins the claim and forwards; the
//! other is told the event is in progress (the receiver answers 409 so
//! PayMongo retries later and then finds it delivered). A failed delivery
//! releases its claim, so the retry forwards again. Only an inward 2xx turns
//! a claim into *delivered*.
//!
//! The store sits behind [`EventStore`]: [`MemoryEventStore`] here for one
//! gateway, and [`super::redis_events::RedisEventStore`] (`SET key token NX
//! PX lease`, then `SET key delivered PX ttl`) for several replicas sharing
//! Redis, used when `[idempotency] store = "redis"`.
//! Only ids of events whose signature verified ever reach the store, so
//! unauthenticated traffic cannot fill it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::Expiry;
use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};

/// Proof of a claim; only its holder may release it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimToken(pub u128);

/// The answer to a claim attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This caller owns the delivery now.
    Acquired(ClaimToken),
    /// Another delivery of this event is in flight.
    InProgress,
    /// Already delivered inward within the TTL.
    Delivered,
}

/// The store could not answer. The receiver then forwards without
/// deduplication: a duplicate inward delivery is better than a lost event.
#[derive(Debug, thiserror::Error)]
#[error("event store unavailable: {0}")]
pub struct StoreError(pub String);

/// Seen-event records, shared by every endpoint and surviving reloads.
/// Keys are opaque strings built by the receiver (endpoint path + event id).
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Short name for logs and readiness (`memory`, `redis`).
    fn kind(&self) -> &'static str {
        "memory"
    }
    /// Claims `key` for `lease` unless it is delivered or claimed (and unexpired).
    async fn claim(&self, key: &str, lease: Duration) -> Result<Claim, StoreError>;
    /// Records `key` as delivered for `ttl`, whoever holds the claim now:
    /// the event did reach the inward service.
    async fn mark_delivered(
        &self,
        key: &str,
        token: ClaimToken,
        ttl: Duration,
    ) -> Result<(), StoreError>;
    /// Drops the claim if `token` still holds it, so a retry may forward.
    async fn release(&self, key: &str, token: ClaimToken) -> Result<(), StoreError>;
    /// Checks that the store answers (readiness). In-process stores always do.
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[derive(Clone, Debug)]
enum Record {
    Claimed {
        token: u128,
        ttl: Duration,
        until: Instant,
    },
    Delivered {
        ttl: Duration,
        until: Instant,
    },
}

impl Record {
    fn ttl(&self) -> Duration {
        match self {
            Record::Claimed { ttl, .. } | Record::Delivered { ttl, .. } => *ttl,
        }
    }

    /// moka expires lazily; the store also checks the deadline itself so an
    /// expired claim can never block a retry.
    fn live(&self, now: Instant) -> bool {
        match self {
            Record::Claimed { until, .. } | Record::Delivered { until, .. } => *until > now,
        }
    }
}

struct PerRecord;

impl Expiry<String, Record> for PerRecord {
    fn expire_after_create(&self, _key: &String, value: &Record, _at: Instant) -> Option<Duration> {
        Some(value.ttl())
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Record,
        _at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl())
    }
}

/// The in-process store: a bounded moka cache with per-record expiry.
pub struct MemoryEventStore {
    records: Cache<String, Record>,
    next_token: AtomicU64,
}

impl std::fmt::Debug for MemoryEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryEventStore")
            .field("entries", &self.records.entry_count())
            .finish()
    }
}

impl MemoryEventStore {
    /// Records kept at most. An evicted record can only cause a duplicate
    /// inward delivery (never a lost one); 500k covers far more than a
    /// day of events for one PayMongo account in a few tens of MB.
    pub const MAX_RECORDS: u64 = 500_000;

    /// An empty store.
    pub fn new() -> Self {
        Self::with_capacity(Self::MAX_RECORDS)
    }

    /// An empty store holding at most `max` records.
    pub fn with_capacity(max: u64) -> Self {
        Self {
            records: Cache::builder()
                .max_capacity(max)
                .expire_after(PerRecord)
                .build(),
            next_token: AtomicU64::new(1),
        }
    }
}

impl Default for MemoryEventStore {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl EventStore for MemoryEventStore {
    async fn claim(&self, key: &str, lease: Duration) -> Result<Claim, StoreError> {
        let token = u128::from(self.next_token.fetch_add(1, Ordering::Relaxed));
        let now = Instant::now();
        let fresh = Record::Claimed {
            token,
            ttl: lease,
            until: now + lease,
        };
        // and_compute_with serialises calls per key, so check-and-set is atomic.
        let result = self
            .records
            .entry(key.to_owned())
            .and_compute_with(|current| {
                let op = match current.map(|e| e.into_value()) {
                    Some(r) if r.live(now) => Op::Nop,
                    _ => Op::Put(fresh),
                };
                std::future::ready(op)
            })
            .await;
        Ok(match result {
            CompResult::Inserted(_) | CompResult::ReplacedWith(_) => {
                Claim::Acquired(ClaimToken(token))
            }
            CompResult::Unchanged(e) => match e.value() {
                Record::Delivered { .. } => Claim::Delivered,
                Record::Claimed { .. } => Claim::InProgress,
            },
            // Put always yields Inserted/ReplacedWith; treat anything else as busy.
            CompResult::StillNone(_) | CompResult::Removed(_) => Claim::InProgress,
        })
    }

    async fn mark_delivered(
        &self,
        key: &str,
        _token: ClaimToken,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let record = Record::Delivered {
            ttl,
            until: Instant::now() + ttl,
        };
        self.records.insert(key.to_owned(), record).await;
        Ok(())
    }

    async fn release(&self, key: &str, token: ClaimToken) -> Result<(), StoreError> {
        self.records
            .entry(key.to_owned())
            .and_compute_with(|current| {
                let op = match current.map(|e| e.into_value()) {
                    Some(Record::Claimed { token: t, .. }) if t == token.0 => Op::Remove,
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(60);
    const TTL: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn claim_deliver_then_duplicate() {
        let s = MemoryEventStore::new();
        let Claim::Acquired(t) = s.claim("k", LEASE).await.unwrap() else {
            panic!()
        };
        assert_eq!(s.claim("k", LEASE).await.unwrap(), Claim::InProgress);
        s.mark_delivered("k", t, TTL).await.unwrap();
        assert_eq!(s.claim("k", LEASE).await.unwrap(), Claim::Delivered);
        assert!(matches!(
            s.claim("other", LEASE).await.unwrap(),
            Claim::Acquired(_)
        ));
    }

    #[tokio::test]
    async fn release_lets_a_retry_claim_and_only_the_holder_releases() {
        let s = MemoryEventStore::new();
        let Claim::Acquired(t1) = s.claim("k", LEASE).await.unwrap() else {
            panic!()
        };
        s.release("k", ClaimToken(t1.0 + 1000)).await.unwrap();
        assert_eq!(
            s.claim("k", LEASE).await.unwrap(),
            Claim::InProgress,
            "a stranger's release is ignored"
        );
        s.release("k", t1).await.unwrap();
        let Claim::Acquired(t2) = s.claim("k", LEASE).await.unwrap() else {
            panic!()
        };
        assert_ne!(t1, t2);
        // Releasing after delivery does not forget the delivery.
        s.mark_delivered("k", t2, TTL).await.unwrap();
        s.release("k", t2).await.unwrap();
        assert_eq!(s.claim("k", LEASE).await.unwrap(), Claim::Delivered);
    }

    #[tokio::test]
    async fn an_expired_claim_or_record_does_not_block() {
        let s = MemoryEventStore::new();
        assert!(matches!(
            s.claim("k", Duration::ZERO).await.unwrap(),
            Claim::Acquired(_)
        ));
        assert!(
            matches!(s.claim("k", LEASE).await.unwrap(), Claim::Acquired(_)),
            "zero lease already expired"
        );
        let s = MemoryEventStore::new();
        let Claim::Acquired(t) = s.claim("k", LEASE).await.unwrap() else {
            panic!()
        };
        s.mark_delivered("k", t, Duration::ZERO).await.unwrap();
        assert!(matches!(
            s.claim("k", LEASE).await.unwrap(),
            Claim::Acquired(_)
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_claims_have_exactly_one_winner() {
        let s = std::sync::Arc::new(MemoryEventStore::new());
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.claim("evt", LEASE).await.unwrap() })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            match t.await.unwrap() {
                Claim::Acquired(_) => won += 1,
                Claim::InProgress => {}
                Claim::Delivered => panic!("nothing was delivered"),
            }
        }
        assert_eq!(won, 1);
    }
}
