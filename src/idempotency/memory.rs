//! The in-process idempotency store, on moka.
//!
//! Two caches, one per state, because they need different eviction rules:
//!
//! * `done`: completed records. Byte-weighted (the weigher counts the
//!   response plus the real per-entry overhead of moka, the key and our
//!   allocations), bounded by [`record_budget`] of `max_memory` (the rest is
//!   allocator headroom, so RSS stays near `max_memory`), LRU eviction, and each record
//!   expires `ttl` after it was stored (per entry, so a reloaded `ttl`
//!   applies to new records). Reads do not extend the life of a record.
//! * `inflight`: live claims. Never evicted for size: dropping a live claim
//!   would let a duplicate through to PayMongo. Their number is bounded by
//!   the requests in flight, and each expires after its own `lease`.
//!
//! Every state change runs inside moka's per-key `and_compute_with` on the
//! `inflight` cache, which serialises operations on one key and nothing
//! else: there is no lock across keys. Replays of completed records take no
//! lock at all (a plain `done.get`). Waiters are woken through a
//! `tokio::sync::watch` in the claim, never by polling.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::future::Cache;
use moka::ops::compute::Op;
use moka::policy::{EvictionPolicy, Expiry};
use tokio::sync::watch;

use super::store::{
    ClaimOutcome, Fingerprint, IdempotencyStore, OwnerId, Record, RecordKey, Settled, StoreError,
};

/// Bytes one `done` entry costs besides its [`StoredResponse::heap_bytes`]:
/// moka's bucket, entry, entry-info and deque/timer nodes, the `Arc`'d key,
/// the `Arc<Record>` block, and what the allocator makes of them.
///
/// Measured (moka 0.12, mimalloc, x86_64): those blocks request 219 bytes
/// in 8 allocations per entry, but a store filled with ~600-byte records
/// grows RSS by ~1.45 KiB per record, about 500 bytes more than the
/// requested sizes (size-class rounding, per-thread heaps, moka's deferred
/// reclamation of removed claims). The constant charges for that, because
/// `max_memory` is a promise about RSS; [`record_budget`] adds headroom for
/// multi-threaded churn. `tests/idempotency_memory.rs` checks real growth
/// against the weights.
///
/// [`StoredResponse::heap_bytes`]: super::store::StoredResponse::heap_bytes
pub const ENTRY_OVERHEAD: usize = 512;

/// A completed record and how long it lives.
#[derive(Clone)]
struct Done {
    record: Arc<Record>,
    ttl: Duration,
}

/// A live claim. Cloned out of the cache by waiters, hence the `Arc`.
#[derive(Clone)]
struct Claim(Arc<ClaimInner>);

struct ClaimInner {
    owner: OwnerId,
    fingerprint: Fingerprint,
    lease: Duration,
    /// The claim's own deadline. Authoritative: moka's expiry only collects
    /// the garbage, a little later.
    expires: Instant,
    /// Flipped to `true` when the claim completes or is released.
    settled: watch::Sender<bool>,
}

impl Claim {
    fn new(owner: OwnerId, fingerprint: Fingerprint, lease: Duration, now: Instant) -> Self {
        Claim(Arc::new(ClaimInner {
            owner,
            fingerprint,
            lease,
            expires: now + lease,
            settled: watch::channel(false).0,
        }))
    }

    fn live(&self, now: Instant) -> bool {
        self.0.expires > now
    }

    fn settle(&self) {
        self.0.settled.send_replace(true);
    }

    /// A future that resolves when this claim settles or its lease ends.
    fn waiter(&self) -> Settled {
        let mut rx = self.0.settled.subscribe();
        let deadline = tokio::time::Instant::from_std(self.0.expires);
        Settled::new(async move {
            // An error means the claim was dropped: settled as well.
            let _ = tokio::time::timeout_at(deadline, rx.wait_for(|settled| *settled)).await;
        })
    }
}

/// Per-entry lifetimes come from the values, so `ttl` and `lease` are
/// per-request settings (reloadable) rather than cache-wide ones. Replacing
/// an entry restarts its clock from the new value.
struct Lifetimes;

impl Expiry<RecordKey, Done> for Lifetimes {
    fn expire_after_create(&self, _: &RecordKey, v: &Done, _: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
    fn expire_after_update(
        &self,
        _: &RecordKey,
        v: &Done,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
}

impl Expiry<RecordKey, Claim> for Lifetimes {
    fn expire_after_create(&self, _: &RecordKey, v: &Claim, _: Instant) -> Option<Duration> {
        Some(v.0.lease)
    }
    fn expire_after_update(
        &self,
        _: &RecordKey,
        v: &Claim,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.0.lease)
    }
}

/// The share of `max_memory` that record weights may fill (2/3); the rest
/// is left to the allocator. A record is allocated by whichever worker
/// thread completed it and freed by whichever evicts it, and per-thread
/// heaps do not hand such memory back at once. Measured under sustained
/// churn on 2 workers with mimalloc: with a 3/4 budget, peak RSS reached
/// 1.6x the charged bytes (88 MiB for `max_memory` = 64 MiB), and it varied
/// a lot from run to run. With 2/3 it stays at 62–67 MiB. On one thread
/// RSS is ~1.0x the charged bytes. `tests/idempotency_memory.rs` checks
/// that RSS stays under `max_memory` + 30 MiB with this budget.
pub fn record_budget(max_memory: u64) -> u64 {
    max_memory / 3 * 2
}

/// What one `done` entry weighs, in bytes.
fn weigh(_: &RecordKey, d: &Done) -> u32 {
    let bytes = ENTRY_OVERHEAD + d.record.response.heap_bytes();
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// The memory store. Cheap to share behind an `Arc`.
pub struct MemoryStore {
    done: Cache<RecordKey, Done>,
    inflight: Cache<RecordKey, Claim>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("records", &self.done.entry_count())
            .field("weighted_bytes", &self.done.weighted_size())
            .field("claims", &self.inflight.entry_count())
            .finish()
    }
}

impl MemoryStore {
    /// A store whose completed records take at most about `max_memory` bytes.
    pub fn new(max_memory: u64) -> Self {
        let done = Cache::builder()
            .name("idempotency-records")
            .max_capacity(record_budget(max_memory))
            .weigher(weigh)
            // Recent records are the ones retried; LRU also never refuses
            // admission of a fresh record the way TinyLFU may.
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(Lifetimes)
            .build();
        let inflight = Cache::builder()
            .name("idempotency-claims")
            .expire_after(Lifetimes)
            .build();
        Self { done, inflight }
    }

    /// Completed records held (after pending maintenance; see [`sync`](Self::sync)).
    pub fn records(&self) -> u64 {
        self.done.entry_count()
    }

    /// Weighted bytes of the completed records (after pending maintenance).
    pub fn weighted_bytes(&self) -> u64 {
        self.done.weighted_size()
    }

    /// Live or not-yet-collected claims.
    pub fn claims(&self) -> u64 {
        self.inflight.entry_count()
    }

    /// Runs moka's pending maintenance (evictions, expirations) now. Only
    /// tests and measurements need this; the caches do it as they are used.
    pub async fn sync(&self) {
        self.done.run_pending_tasks().await;
        self.inflight.run_pending_tasks().await;
    }
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn claim(
        &self,
        key: &RecordKey,
        fingerprint: &Fingerprint,
        owner: OwnerId,
        lease: Duration,
    ) -> Result<ClaimOutcome, StoreError> {
        // Replays, the hot path: no per-key lock.
        if let Some(d) = self.done.get(key).await {
            return Ok(ClaimOutcome::Completed(d.record));
        }
        let done = &self.done;
        let mut outcome = None;
        let out = &mut outcome;
        self.inflight
            .entry(*key)
            .and_compute_with(|current| async move {
                // Completed between the fast path and taking the key's lock.
                if let Some(d) = done.get(key).await {
                    *out = Some(ClaimOutcome::Completed(d.record));
                    return Op::Nop;
                }
                let now = Instant::now();
                if let Some(c) = current.map(|e| e.into_value()).filter(|c| c.live(now)) {
                    *out = Some(ClaimOutcome::InFlight {
                        fingerprint: c.0.fingerprint,
                        settled: c.waiter(),
                    });
                    return Op::Nop;
                }
                *out = Some(ClaimOutcome::Claimed);
                Op::Put(Claim::new(owner, *fingerprint, lease, now))
            })
            .await;
        outcome.ok_or_else(|| StoreError::Unavailable("claim computation did not run".to_owned()))
    }

    async fn complete(
        &self,
        key: &RecordKey,
        owner: OwnerId,
        record: Record,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let done = &self.done;
        let mut stored = false;
        let out = &mut stored;
        self.inflight
            .entry(*key)
            .and_compute_with(|current| async move {
                match current.map(|e| e.into_value()) {
                    Some(c) if c.0.owner == owner && c.live(Instant::now()) => {
                        // Record first, then wake: a woken waiter finds it.
                        let record = Arc::new(record);
                        done.insert(*key, Done { record, ttl }).await;
                        c.settle();
                        *out = true;
                        Op::Remove
                    }
                    _ => Op::Nop,
                }
            })
            .await;
        Ok(stored)
    }

    async fn release(&self, key: &RecordKey, owner: OwnerId) -> Result<bool, StoreError> {
        let mut released = false;
        let out = &mut released;
        self.inflight
            .entry(*key)
            .and_compute_with(|current| async move {
                match current.map(|e| e.into_value()) {
                    Some(c) if c.0.owner == owner => {
                        c.settle();
                        *out = true;
                        Op::Remove
                    }
                    _ => Op::Nop,
                }
            })
            .await;
        Ok(released)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::store::StoredResponse;
    use bytes::Bytes;
    use http::StatusCode;

    fn key(n: u32) -> RecordKey {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&n.to_be_bytes());
        RecordKey(k)
    }

    fn record(fp: u8, body: &'static [u8]) -> Record {
        Record {
            fingerprint: Fingerprint([fp; 32]),
            response: StoredResponse {
                status: StatusCode::OK,
                headers: Box::new([]),
                body: Bytes::from_static(body),
            },
        }
    }

    const LEASE: Duration = Duration::from_secs(60);
    const TTL: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn claim_complete_replay() {
        let s = MemoryStore::new(1 << 20);
        let (a, b) = (OwnerId::new(), OwnerId::new());
        let fp = Fingerprint([1; 32]);
        assert!(matches!(
            s.claim(&key(1), &fp, a, LEASE).await.unwrap(),
            ClaimOutcome::Claimed
        ));
        match s.claim(&key(1), &fp, b, LEASE).await.unwrap() {
            ClaimOutcome::InFlight { fingerprint, .. } => assert_eq!(fingerprint, fp),
            other => panic!("{other:?}"),
        }
        assert!(
            !s.complete(&key(1), b, record(1, b"x"), TTL).await.unwrap(),
            "not b's claim"
        );
        assert!(s.complete(&key(1), a, record(1, b"ok"), TTL).await.unwrap());
        match s.claim(&key(1), &fp, b, LEASE).await.unwrap() {
            ClaimOutcome::Completed(r) => assert_eq!(&r.response.body[..], b"ok"),
            other => panic!("{other:?}"),
        }
        // Release never removes a completed record.
        assert!(!s.release(&key(1), a).await.unwrap());
        assert!(matches!(
            s.claim(&key(1), &fp, b, LEASE).await.unwrap(),
            ClaimOutcome::Completed(_)
        ));
    }

    #[tokio::test]
    async fn release_wakes_waiters_and_frees_the_key() {
        let s = MemoryStore::new(1 << 20);
        let (a, b) = (OwnerId::new(), OwnerId::new());
        let fp = Fingerprint([2; 32]);
        assert!(matches!(
            s.claim(&key(2), &fp, a, LEASE).await.unwrap(),
            ClaimOutcome::Claimed
        ));
        let ClaimOutcome::InFlight { settled, .. } = s.claim(&key(2), &fp, b, LEASE).await.unwrap()
        else {
            panic!("expected in flight");
        };
        assert!(!s.release(&key(2), b).await.unwrap(), "b holds nothing");
        assert!(s.release(&key(2), a).await.unwrap());
        tokio::time::timeout(Duration::from_secs(5), settled)
            .await
            .unwrap();
        assert!(matches!(
            s.claim(&key(2), &fp, b, LEASE).await.unwrap(),
            ClaimOutcome::Claimed
        ));
    }

    #[tokio::test]
    async fn expired_claim_is_taken_over_and_its_owner_cannot_complete() {
        let s = MemoryStore::new(1 << 20);
        let (a, b) = (OwnerId::new(), OwnerId::new());
        let fp = Fingerprint([3; 32]);
        let short = Duration::from_millis(30);
        assert!(matches!(
            s.claim(&key(3), &fp, a, short).await.unwrap(),
            ClaimOutcome::Claimed
        ));
        let ClaimOutcome::InFlight { settled, .. } = s.claim(&key(3), &fp, b, LEASE).await.unwrap()
        else {
            panic!("expected in flight");
        };
        // Nobody settles it: the waiter is released by the lease itself.
        tokio::time::timeout(Duration::from_secs(5), settled)
            .await
            .unwrap();
        assert!(matches!(
            s.claim(&key(3), &fp, b, LEASE).await.unwrap(),
            ClaimOutcome::Claimed
        ));
        assert!(
            !s.complete(&key(3), a, record(3, b"late"), TTL)
                .await
                .unwrap()
        );
        assert!(s.complete(&key(3), b, record(3, b"b"), TTL).await.unwrap());
    }
}
