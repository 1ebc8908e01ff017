//! The storage contract of the idempotency layer: one async trait,
//! [`IdempotencyStore`], and the values that cross it.
//!
//! The trait is shaped after what Redis can do atomically, so a Redis store
//! can sit behind it without the semantics in [`super`] changing:
//!
//! * [`claim`](IdempotencyStore::claim) is `SET key <owner, fingerprint> NX PX
//!   lease`, falling back to reading what is there: a completed record, or
//!   somebody else's live claim plus a way to wait for it to settle.
//! * [`complete`](IdempotencyStore::complete) replaces the claim with the
//!   record (`PX ttl`) only if the claim is still this owner's.
//! * [`release`](IdempotencyStore::release) deletes the claim only if it is
//!   still this owner's.
//!
//! Every state change is keyed by [`OwnerId`], so a late `complete` or
//! `release` from an owner whose lease already ran out can never clobber the
//! claim of whoever took over. Fingerprint comparison and the decision what
//! to do with each outcome are *not* the store's job.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

/// Where a record lives: SHA-256 of the scope (service, method, path, key).
///
/// Hashing gives a fixed-size key (cheap to hash and weigh, no ambiguity
/// between scope parts) and keeps callers' raw keys out of the store.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordKey(pub [u8; 32]);

impl fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordKey({}…)", hex::encode(&self.0[..6]))
    }
}

/// SHA-256 of what makes two requests "the same": body, content type, query.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({}…)", hex::encode(&self.0[..6]))
    }
}

/// Who holds a claim. Unique across processes (random high half) and within
/// one (counter low half), so several replicas sharing Redis never confuse
/// each other's claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OwnerId(pub u128);

impl OwnerId {
    /// A fresh owner id; no two calls in any process return the same one.
    pub fn new() -> Self {
        static PROCESS: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let process = *PROCESS.get_or_init(|| {
            let mut b = [0u8; 8];
            // Without OS randomness fall back to the pid and clock: still
            // unique enough to tell replicas apart.
            if getrandom::fill(&mut b).is_err() {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                b = (nanos ^ (u64::from(std::process::id()) << 32)).to_be_bytes();
            }
            u64::from_be_bytes(b)
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        OwnerId((u128::from(process) << 64) | u128::from(n))
    }
}

impl Default for OwnerId {
    fn default() -> Self {
        Self::new()
    }
}

/// An upstream response as it is replayed: status, the headers that matter,
/// and the body byte-for-byte. Everything is owned compactly (no slices of
/// connection read buffers), so its size is what [`heap_bytes`] says.
///
/// [`heap_bytes`]: StoredResponse::heap_bytes
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    /// Upstream status.
    pub status: StatusCode,
    /// Headers in upstream order, repeated names kept.
    pub headers: Box<[(HeaderName, HeaderValue)]>,
    /// The body.
    pub body: Bytes,
}

/// Allocator bookkeeping per heap block (size class rounding and header).
const ALLOC_OVERHEAD: usize = 16;

impl StoredResponse {
    /// Heap bytes this response holds beyond its inline fields: body,
    /// the header slice, and every header name and value allocation.
    pub fn heap_bytes(&self) -> usize {
        let pair = std::mem::size_of::<(HeaderName, HeaderValue)>();
        let headers: usize = self
            .headers
            .iter()
            // Standard names are static; custom ones and every value own a block.
            .map(|(n, v)| pair + n.as_str().len() + v.len() + 2 * ALLOC_OVERHEAD)
            .sum();
        // The body's shared-refcount block appears on first replay.
        let body = self.body.len() + 2 * ALLOC_OVERHEAD + 32;
        headers + ALLOC_OVERHEAD + body
    }
}

/// A completed request: what it looked like and what PayMongo answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The fingerprint of the request that produced the response.
    pub fingerprint: Fingerprint,
    /// The response to replay.
    pub response: StoredResponse,
}

/// Resolves when an in-flight claim has settled: completed, released, or
/// its lease ran out. The caller then claims again to learn which.
pub struct Settled(Pin<Box<dyn Future<Output = ()> + Send>>);

impl Settled {
    /// Wraps the store's way of waiting.
    pub fn new(f: impl Future<Output = ()> + Send + 'static) -> Self {
        Settled(Box::pin(f))
    }
}

impl Future for Settled {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for Settled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Settled")
    }
}

/// What [`IdempotencyStore::claim`] found.
#[derive(Debug)]
pub enum ClaimOutcome {
    /// Nothing was there (or only an expired claim): the caller now owns the
    /// key until its lease runs out, and must complete or release it.
    Claimed,
    /// Another owner's claim is live.
    InFlight {
        /// The fingerprint that owner claimed with.
        fingerprint: Fingerprint,
        /// Resolves when that claim settles (no later than its lease).
        settled: Settled,
    },
    /// A completed record.
    Completed(Arc<Record>),
}

/// The store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed or could not be reached.
    #[error("idempotency store unavailable: {0}")]
    Unavailable(String),
    /// The backend did not answer in time.
    #[error("idempotency store timed out after {0:?}")]
    Timeout(Duration),
}

/// Storage for idempotency claims and records. Each method is one atomic
/// step per key; none takes a lock across keys.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Short name for logs and readiness (`memory`, `redis`).
    fn kind(&self) -> &'static str;

    /// Atomically: if `key` holds a completed record, return it; if it holds
    /// a live claim, return that claim's fingerprint and a way to wait for
    /// it; otherwise record a claim by `owner` for `fingerprint` that
    /// expires after `lease`, and return [`ClaimOutcome::Claimed`].
    async fn claim(
        &self,
        key: &RecordKey,
        fingerprint: &Fingerprint,
        owner: OwnerId,
        lease: Duration,
    ) -> Result<ClaimOutcome, StoreError>;

    /// Replaces `owner`'s live claim with `record`, kept for `ttl`, and wakes
    /// waiters. Returns `false` (storing nothing) if the claim is no longer
    /// `owner`'s: its lease ran out, and someone else may be executing.
    async fn complete(
        &self,
        key: &RecordKey,
        owner: OwnerId,
        record: Record,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Deletes `owner`'s claim, if it is still there, and wakes waiters.
    /// Returns whether there was one. Never touches a completed record or
    /// another owner's claim, so it is always safe to call.
    async fn release(&self, key: &RecordKey, owner: OwnerId) -> Result<bool, StoreError>;

    /// Checks that the store answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
}
